//! Where records go. A sink returns from `deliver` only once the destination has accepted
//! the whole batch; the caller advances checkpoints on that alone.

pub mod envelope;
pub mod file;
#[cfg(feature = "kinesis")]
pub mod kinesis;
pub mod null;

use std::path::Path;

use collector_common::InodeKey;

/// One record on its way out, with where it came from.
pub struct Outgoing<'a> {
    pub flow: &'a str,
    pub path: &'a Path,
    pub inode: InodeKey,
    pub offset: u64,
    pub data: &'a [u8],
}

pub trait Sink {
    fn deliver(&mut self, batch: &[Outgoing<'_>]) -> anyhow::Result<()>;
}
