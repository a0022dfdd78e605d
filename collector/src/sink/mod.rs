//! Where records go. `deliver` takes the batches of many files at once and says, per file,
//! whether the destination accepted all of its records or how many of the first ones; the
//! caller advances checkpoints on that alone.

#[cfg(feature = "kinesis")]
pub mod batch;
pub mod envelope;
pub mod file;
#[cfg(feature = "kinesis")]
pub mod firehose;
#[cfg(feature = "kinesis")]
pub mod kinesis;
#[cfg(feature = "kinesis")]
pub mod kpl;
pub mod null;

use std::path::Path;

use collector_common::InodeKey;

use crate::framer::Framed;

/// Records on their way out, all from one file (read at once).
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    pub origin: Source<'a>,
    records: Records<'a>,
}

#[derive(Clone, Copy)]
enum Records<'a> {
    /// As the framer cut them: the usual case, passed on without building a list.
    Framed(&'a Framed),
    /// As transforms made them.
    Listed(&'a [Outgoing<'a>]),
}

impl<'a> Batch<'a> {
    pub fn framed(origin: Source<'a>, framed: &'a Framed) -> Batch<'a> {
        Batch { origin, records: Records::Framed(framed) }
    }

    pub fn listed(origin: Source<'a>, records: &'a [Outgoing<'a>]) -> Batch<'a> {
        Batch { origin, records: Records::Listed(records) }
    }

    pub fn len(&self) -> usize {
        match self.records {
            Records::Framed(f) => f.records().len(),
            Records::Listed(l) => l.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `index`th record.
    pub fn get(&self, index: usize) -> Option<Outgoing<'a>> {
        match self.records {
            Records::Framed(f) => {
                f.records().get(index).map(|r| Outgoing { offset: r.offset, data: f.data(r), json: false })
            }
            Records::Listed(l) => l.get(index).copied(),
        }
    }

    pub fn records(&self) -> impl Iterator<Item = Outgoing<'a>> + use<'a> {
        let batch = *self;
        (0..self.len()).map_while(move |i| batch.get(i))
    }

    /// Bytes of the first `count` records.
    pub fn data_bytes(&self, count: usize) -> u64 {
        match self.records {
            Records::Framed(f) if count >= f.records().len() => f.data_bytes(),
            _ => self.records().take(count).map(|r| r.data.len() as u64).sum(),
        }
    }
}

/// Where a batch's records come from.
#[derive(Clone, Copy)]
pub struct Source<'a> {
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
    /// The destination answers, refusing only this file's records (its shard is over its
    /// limits): the file waits, the rest of its flow goes on.
    pub alone: bool,
}

impl From<anyhow::Error> for Refused {
    fn from(error: anyhow::Error) -> Refused {
        Refused { accepted: 0, error, alone: false }
    }
}

/// `lines` as records of one file, each followed by a newline in it (tests).
#[cfg(test)]
pub fn outgoing(lines: &[Vec<u8>]) -> Vec<Outgoing<'_>> {
    let mut offset = 0;
    lines
        .iter()
        .map(|data| {
            let r = Outgoing { offset, data, json: false };
            offset += data.len() as u64 + 1;
            r
        })
        .collect()
}

/// One batch through `sink` (tests).
#[cfg(test)]
pub fn deliver_one(sink: &mut dyn Sink, batch: &Batch<'_>) -> Result<(), Refused> {
    sink.deliver(std::slice::from_ref(batch), &mut || {}).pop().unwrap_or(Ok(()))
}

pub trait Sink {
    /// Sends `batches` (one per file, no file twice); the answer for each, in order. A sink
    /// that waits on the network calls `idle` at least every few milliseconds meanwhile
    /// (the daemon drains the kernel's events there).
    fn deliver(&mut self, batches: &[Batch<'_>], idle: &mut dyn FnMut()) -> Vec<Result<(), Refused>>;

    /// Whether `deliver` can block without calling `idle` (a write to a slow disk): the
    /// daemon then runs it on a thread of its own and drains the kernel's events beside it.
    fn may_block(&self) -> bool {
        false
    }

    /// Unread bytes that make a full batch: read and sent at once, whatever `max_batch_age`
    /// says. About what one call of the sink takes well.
    fn full_batch_bytes(&self) -> u64 {
        512 << 10
    }

    /// Makes what `deliver` took durable, where the destination needs a step of its own for
    /// that (the file sink's fsync). Called before a checkpoint passes delivered records:
    /// one fsync then covers every batch since the last checkpoint, not one per batch.
    fn make_durable(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Records sent again after a partial failure, so far.
    fn retried(&self) -> u64 {
        0
    }

    /// SIGHUP: a sink writing to a path opens it again (its file was rotated away); the
    /// caller made what it wrote durable first. Returns what was reopened, if anything; on
    /// an error it writes on where it did.
    fn reopen(&mut self) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
}
