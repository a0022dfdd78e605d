//! `kind = "kinesis"`: Kinesis Data Streams through PutRecords.
//!
//! The batches of many files from the daemon go out in requests of at most 500 records and
//! 5 MiB that mix files, `requests_in_flight` of them at once, a file in one at a time (see
//! batch.rs); only the records a response marks as failed (throttled, internal errors) are
//! sent again, and retries are logged once per cause at WARN. Per file, `deliver` says Ok
//! once every record was accepted, or how many leading records Kinesis holds, so the file's
//! checkpoint never passes a record Kinesis does not hold and never stops short of one it
//! does. Errors that no retry fixes (stream missing, access denied, no credentials), and
//! failures lasting RETRY_FOR, are returned: the daemon logs them once, pauses the flow and
//! reads the same bytes again later — the data waits on disk.
//!
//! PutRecords does not keep order across a partial failure: a retried record lands after
//! records of its request that followed it. The JSON envelope's offset lets consumers
//! restore file order.
//!
//! The SDK runs on the sink's own runtime (aws.rs); the daemon's thread waits for the
//! answers and drains the kernel's events meanwhile.

use std::{borrow::Cow, cell::Cell};

use aws_sdk_kinesis::{Client, primitives::Blob, types::PutRecordsRequestEntry};

use super::{
    Batch, Outgoing, Refused, Sink, Source,
    batch::{CallFailed, Entry, Limits, Stats, send_files},
    envelope::{self, Head},
    kpl::Aggregated,
};
use crate::aws::{RetryLog, SinkRuntime, call_failed, describe, report_destination, sdk_config};
use crate::{
    config::{KINESIS_RECORD_LIMIT, KinesisConfig, PartitionKey},
    devices::user_dev,
};

const fn limits() -> Limits {
    Limits { records: 500, bytes: 5 * 1024 * 1024 }
}

pub struct KinesisSink {
    runtime: SinkRuntime,
    client: Client,
    config: KinesisConfig,
    host: String,
    retries: RetryLog,
    random: u64,
    pub stats: Stats,
}

impl KinesisSink {
    pub fn open(config: &KinesisConfig, host: &str) -> anyhow::Result<KinesisSink> {
        let runtime = SinkRuntime::new()?;
        let client = Client::new(&runtime.block_on(sdk_config(&config.access))?);
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let sink = KinesisSink {
            runtime,
            client,
            config: config.clone(),
            host: host.to_owned(),
            retries: RetryLog::default(),
            random: seed | 1,
            stats: Stats::default(),
        };
        sink.check_stream();
        Ok(sink)
    }

    /// Says at start-up whether the stream is there, so a typo shows at once; the collector
    /// starts either way (the stream may be created later; data waits on disk).
    fn check_stream(&self) {
        let stream = &self.config.stream;
        let checked = self.runtime.block_on(async {
            self.client
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await
                .map(|out| {
                    let shards = out.stream_description_summary().map(|d| d.open_shard_count()).unwrap_or(0);
                    format!("{shards} open shards")
                })
                .map_err(|e| describe(&e))
        });
        report_destination("kinesis stream", stream, checked);
    }
}

/// A record as PutRecords takes it. `file_key`: the batch's file as a partition key (all
/// its records share it); `random`: the state of the random keys.
fn entry(
    config: &KinesisConfig,
    (random, records_cut): (&Cell<u64>, &Cell<u64>),
    (index, origin, head, file_key): (usize, &Source<'_>, Option<&Head>, &str),
    r: &Outgoing<'_>,
) -> Entry {
    let key = match config.partition_key {
        PartitionKey::File => file_key.to_owned(),
        PartitionKey::Deterministic => format!("{:016x}", fnv1a(r.data)),
        PartitionKey::Random => {
            // xorshift64: spread, not secrecy.
            let mut x = random.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            random.set(x);
            format!("{x:016x}")
        }
    };
    let mut cut = records_cut.get();
    let data = envelope::encode_within(origin, head, r, KINESIS_RECORD_LIMIT - key.len(), &mut cut);
    records_cut.set(cut);
    Entry { index, key, data }
}

impl Sink for KinesisSink {
    fn deliver(&mut self, batches: &[Batch<'_>], idle: &mut dyn FnMut()) -> Vec<Result<(), Refused>> {
        let heads: Vec<Option<Head>> =
            batches.iter().map(|b| self.config.envelope.then(|| Head::new(&self.host, &b.origin))).collect();
        let keys: Vec<String> =
            batches.iter().map(|b| format!("{}-{}", user_dev(b.origin.inode.dev), b.origin.inode.ino)).collect();
        let KinesisSink { runtime, client, config, stats, random, .. } = &mut *self;
        let (state, records_cut) = (Cell::new(*random), Cell::new(0));
        let config = &*config;
        let files = batches
            .iter()
            .zip(heads.iter().zip(&keys))
            .map(|(batch, (head, key))| {
                let (state, records_cut) = (&state, &records_cut);
                let entries: Box<dyn Iterator<Item = Entry>> = match config.aggregate {
                    Some(max) => Box::new(aggregated(batch, head.as_ref(), key, max, records_cut)),
                    None => Box::new(batch.records().enumerate().map(move |(i, r)| {
                        entry(config, (state, records_cut), (i, &batch.origin, head.as_ref(), key), &r)
                    })),
                };
                (entries, batch.len())
            })
            .collect();
        let mut notes = Vec::new();
        let call = |request: &[Entry]| {
            let records = request
                .iter()
                .map(|e| {
                    PutRecordsRequestEntry::builder().data(Blob::new(e.data.clone())).partition_key(&e.key).build()
                })
                .collect::<Result<Vec<_>, _>>();
            let put = client.put_records().stream_name(&config.stream);
            async move {
                let records =
                    records.map_err(|e| CallFailed { what: format!("building PutRecords: {e}"), retryable: false })?;
                let out = put.set_records(Some(records)).send().await.map_err(|e| call_failed(&e))?;
                Ok(out
                    .records()
                    .iter()
                    .map(|r| r.error_code().map(|code| format!("{code}: {}", r.error_message().unwrap_or_default())))
                    .collect())
            }
        };
        let outcomes = send_files(files, limits(), config.requests_in_flight, runtime, call, stats, &mut notes, idle);
        *random = state.get();
        self.stats.records_cut += records_cut.get();
        self.retries.outcomes(&self.config.stream, &notes, outcomes)
    }

    /// Sent as soon as one request's worth waits (500 records of ~100-byte lines): at high
    /// rates the requests then follow each other instead of queueing behind a 20 ms wait.
    /// Aggregated, a full aggregated record's worth.
    fn full_batch_bytes(&self) -> u64 {
        self.config.aggregate.map_or(64 << 10, |max| max as u64)
    }

    fn retried(&self) -> u64 {
        self.stats.records_retried
    }
}

/// The batch as KPL aggregated records of at most `max` bytes (key included), each holding
/// consecutive whole records under the file's key; a record that does not fit one alone goes
/// as a plain Kinesis record, as the KPL sends it (consumers' deaggregators pass those on).
fn aggregated<'a>(
    batch: &'a Batch<'a>,
    head: Option<&'a Head>,
    key: &'a str,
    max: usize,
    records_cut: &'a Cell<u64>,
) -> impl Iterator<Item = Entry> + 'a {
    let mut records = batch.records().enumerate();
    let data_max = max - key.len();
    let limit = KINESIS_RECORD_LIMIT - key.len();
    // A raw record goes into the aggregated record as it was read (max_record_bytes keeps
    // it within the limit): no copy of its own per record.
    let encode = move |r: Outgoing<'a>| -> Cow<'a, [u8]> {
        if head.is_none() && r.data.len() <= limit {
            return Cow::Borrowed(r.data);
        }
        let mut cut = records_cut.get();
        let data = envelope::encode_within(&batch.origin, head, &r, limit, &mut cut);
        records_cut.set(cut);
        Cow::Owned(data)
    };
    // A record that did not fit the aggregated record before it: it starts the next one.
    let mut carried: Option<(usize, Cow<'a, [u8]>)> = None;
    std::iter::from_fn(move || {
        let (index, first) = carried.take().or_else(|| records.next().map(|(i, r)| (i, encode(r))))?;
        let mut packed = Aggregated::new(key, (first.len() * 2).min(data_max));
        if packed.size_with(first.len()) > data_max {
            return Some(Entry { index, key: key.to_owned(), data: first.into_owned() });
        }
        packed.push(&first);
        for (i, r) in records.by_ref() {
            let data = encode(r);
            if packed.size_with(data.len()) > data_max {
                carried = Some((i, data));
                break;
            }
            packed.push(&data);
        }
        Some(Entry { index, key: key.to_owned(), data: packed.finish() })
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use collector_common::InodeKey;

    use super::*;
    use crate::sink::{kpl::MAGIC, outgoing as records};

    fn packed(lines: &[Vec<u8>], max: usize) -> Vec<Entry> {
        let records = records(lines);
        let batch = Batch::listed(
            Source { flow: "f", path: Path::new("/x"), inode: InodeKey::new(1, 2), writer: None },
            &records,
        );
        aggregated(&batch, None, "1-2", max, &Cell::new(0)).collect()
    }

    #[test]
    fn whole_records_are_packed_up_to_the_limit_and_a_record_too_big_goes_alone_and_plain() {
        // 1,000-byte records take 1,008 bytes each in an aggregated record; with the magic,
        // the key table and the digest, three fit in 4,000 bytes, not four.
        let mut lines = vec![vec![b'a'; 1_000]; 5];
        lines.insert(3, vec![b'b'; 5_000]);
        let entries = packed(&lines, 4_000);
        let shape: Vec<(usize, bool)> = entries.iter().map(|e| (e.index, e.data.starts_with(&MAGIC))).collect();
        assert_eq!(shape, vec![(0, true), (3, false), (4, true)]);
        assert!(entries.iter().all(|e| e.size() <= 4_000 || e.index == 3), "within the limit, key included");
        assert_eq!(entries[1].data, lines[3], "the big one as it is");
        assert!(entries.iter().all(|e| e.key == "1-2"));
        assert_eq!(entries[0].size(), 3 + 4 + 5 + 3 * 1_008 + 16);
    }

    #[test]
    fn the_first_record_that_does_not_fit_starts_the_next_aggregated_record() {
        let lines: Vec<Vec<u8>> = (0..100).map(|i| format!("line {i}").into_bytes()).collect();
        let entries = packed(&lines, 1_024);
        assert!(entries.len() > 1);
        assert!(entries.iter().all(|e| e.data.starts_with(&MAGIC) && e.size() <= 1_024));
        assert_eq!(entries[0].index, 0);
        assert!(entries.windows(2).all(|w| w[0].index < w[1].index));
        // Every record once: the entries' bodies hold the lines in order.
        let all: Vec<u8> = entries.iter().flat_map(|e| e.data.clone()).collect();
        let mut at = 0;
        for line in &lines {
            let found = memchr::memmem::find(&all[at..], line).expect("each line, in order");
            at += found + line.len();
        }
    }
}
