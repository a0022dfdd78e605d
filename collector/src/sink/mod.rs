//! Where records go. A sink returns from `deliver` only once the destination has accepted
//! the whole batch; the caller advances checkpoints on that alone.

#[cfg(feature = "kinesis")]
pub mod batch;
pub mod envelope;
pub mod file;
#[cfg(feature = "kinesis")]
pub mod firehose;
#[cfg(feature = "kinesis")]
pub mod kinesis;
pub mod null;

use std::path::Path;

use collector_common::InodeKey;

/// Records on their way out, all from one file (read at once).
pub struct Batch<'a> {
    pub origin: Origin<'a>,
    pub records: &'a [Outgoing<'a>],
}

/// Where a batch's records come from.
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    pub flow: &'a str,
    pub path: &'a Path,
    pub inode: InodeKey,
    /// The process that last wrote the file before the records were read, when the kernel
    /// reported one: the writer of the records for a file with one writer.
    pub writer: Option<&'a Writer>,
}

/// One record on its way out.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub offset: u64,
    pub data: &'a [u8],
    /// `data` is a JSON object made by a transform (an envelope embeds it as one).
    pub json: bool,
}

/// A process that wrote a file, from the kernel's write events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writer {
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The cgroup's path under /sys/fs/cgroup, and the container id in it, when resolved.
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
}

/// A batch the destination did not take whole: its first `accepted` records are held there
/// (so the file's checkpoint may pass them), the rest is not.
#[derive(Debug)]
pub struct Refused {
    pub accepted: usize,
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for Refused {
    fn from(error: anyhow::Error) -> Refused {
        Refused { accepted: 0, error }
    }
}

pub trait Sink {
    fn deliver(&mut self, batch: &Batch<'_>) -> Result<(), Refused>;

    /// Whether `deliver` can wait on I/O (the daemon then drains the kernel's events
    /// beside it); a sink that returns at once says no and saves a thread hand-off.
    fn may_block(&self) -> bool {
        true
    }

    /// Unread bytes that make a full batch: read and sent at once, whatever `max_batch_age`
    /// says. About what one call of the sink takes well.
    fn full_batch_bytes(&self) -> u64 {
        512 << 10
    }

    /// Records sent again after a partial failure, so far.
    fn retried(&self) -> u64 {
        0
    }
}
