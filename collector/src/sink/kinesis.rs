//! `kind = "kinesis"`: Kinesis Data Streams through PutRecords.
//!
//! A batch from the daemon is sent in requests of at most 500 records and 5 MiB; only the
//! records a response marks as failed (throttled, internal errors) are sent again (see
//! batch.rs), and retries are logged once per cause at WARN. `deliver` returns Ok only once
//! every record was accepted; otherwise it says how many leading records Kinesis holds, so
//! the file's checkpoint never passes a record Kinesis does not hold and never stops short
//! of one it does. Errors that no retry fixes (stream missing, access denied, no
//! credentials), and failures lasting RETRY_FOR, are returned: the daemon logs them once,
//! pauses the flow and reads the same bytes again later — the data waits on disk.
//!
//! PutRecords does not keep order across a partial failure: a retried record lands after
//! records that followed it. The JSON envelope's offset lets consumers restore file order.
//!
//! The daemon calls sinks from a thread of their own (it drains the kernel's events
//! meanwhile); the SDK runs on the sink's own runtime (aws.rs).

use aws_sdk_kinesis::{Client, primitives::Blob, types::PutRecordsRequestEntry};

use super::{
    Batch, Outgoing, Refused, Sink, Source,
    batch::{CallFailed, Entry, Limits, Stats, send_all},
    envelope::{self, Head},
};
use crate::aws::{RetryLog, SinkRuntime, call_failed, describe, report_destination, sdk_config};
use crate::{
    config::{KINESIS_RECORD_LIMIT, KinesisConfig, PartitionKey},
    devices::user_dev,
};

const LIMITS: Limits = Limits { records: 500, bytes: 5 * 1024 * 1024 };

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
    random: &mut u64,
    records_cut: &mut u64,
    (index, origin, head, file_key): (usize, &Source<'_>, Option<&Head>, &str),
    r: &Outgoing<'_>,
) -> Entry {
    let key = match config.partition_key {
        PartitionKey::File => file_key.to_owned(),
        PartitionKey::Deterministic => format!("{:016x}", fnv1a(r.data)),
        PartitionKey::Random => {
            // xorshift64: spread, not secrecy.
            *random ^= *random << 13;
            *random ^= *random >> 7;
            *random ^= *random << 17;
            format!("{:016x}", *random)
        }
    };
    let data = envelope::encode_within(origin, head, r, KINESIS_RECORD_LIMIT - key.len(), records_cut);
    Entry { index, key, data }
}

impl Sink for KinesisSink {
    fn deliver(&mut self, batch: &Batch<'_>) -> Result<(), Refused> {
        let origin = &batch.origin;
        let head = self.config.envelope.then(|| Head::new(&self.host, origin));
        let file_key = format!("{}-{}", user_dev(origin.inode.dev), origin.inode.ino);
        let KinesisSink { runtime, client, config, stats, random, .. } = &mut *self;
        let mut records_cut = 0;
        let entries = batch
            .records()
            .enumerate()
            .map(|(i, r)| entry(config, random, &mut records_cut, (i, origin, head.as_ref(), &file_key), &r));
        let config = &*config;
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
        let result = runtime.block_on(send_all(entries, batch.len(), &LIMITS, call, stats, &mut notes))?;
        self.stats.records_cut += records_cut;
        self.retries.outcome(&self.config.stream, &notes, result)
    }

    /// Sent as soon as one request's worth waits (500 records of ~100-byte lines): at high
    /// rates the requests then follow each other instead of queueing behind a 20 ms wait.
    fn full_batch_bytes(&self) -> u64 {
        64 << 10
    }

    fn retried(&self) -> u64 {
        self.stats.records_retried
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
