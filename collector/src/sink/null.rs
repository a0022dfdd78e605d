//! `kind = "null"`: accepts every record and keeps nothing. For measuring the collector
//! without a destination's cost, and for trying a config without shipping anything.

use super::{Batch, Refused, Sink};

#[derive(Default)]
pub struct NullSink {
    pub records: u64,
}

impl Sink for NullSink {
    fn deliver(&mut self, batch: &Batch<'_>) -> Result<(), Refused> {
        self.records += batch.len() as u64;
        Ok(())
    }

    fn may_block(&self) -> bool {
        false
    }
}
