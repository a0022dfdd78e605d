//! `kind = "null"`: accepts every record and keeps nothing. For measuring the collector
//! without a destination's cost, and for trying a config without shipping anything.

use super::{Batch, Refused, Sink};

#[derive(Default)]
pub struct NullSink {
    pub records: u64,
}

impl Sink for NullSink {
    fn deliver(&mut self, batches: &[Batch<'_>], _idle: &mut dyn FnMut()) -> Vec<Result<(), Refused>> {
        batches.iter().map(|b| self.records += b.len() as u64).map(Ok).collect()
    }
}
