//! `kind = "kinesis"`: Kinesis Data Streams through PutRecords.
//!
//! A batch from the daemon is sent in requests of at most 500 records and 5 MiB. Only the
//! records a response marks as failed (throttled, internal errors) are sent again, first in
//! the next request, with jittered exponential backoff; the retries are logged once per
//! cause at WARN. `deliver` returns Ok only once every record was accepted; otherwise it
//! says how many leading records Kinesis holds, so the file's checkpoint never passes a
//! record Kinesis does not hold and never stops short of one it does. Errors that no retry
//! fixes (stream missing, access denied, no credentials), and failures lasting RETRY_FOR,
//! are returned: the daemon logs them once, pauses the flow and reads the same bytes again
//! later — the data waits on disk.
//!
//! PutRecords does not keep order across a partial failure: a retried record lands after
//! records that followed it. The JSON envelope's offset lets consumers restore file order.
//!
//! The daemon calls sinks from a thread of their own (it drains the kernel's events
//! meanwhile); this sink drives the SDK on its own runtime from a scoped thread, so it
//! never blocks inside a tokio runtime whatever thread calls it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aws_sdk_kinesis::{Client, error::SdkError, primitives::Blob, types::PutRecordsRequestEntry};

use super::{Outgoing, Refused, Sink, envelope};
use crate::{
    config::{KINESIS_RECORD_LIMIT, KinesisConfig, PartitionKey},
    watch::user_dev,
};

const MAX_RECORDS_PER_REQUEST: usize = 500;
const MAX_BYTES_PER_REQUEST: usize = 5 * 1024 * 1024;
/// How long retryable failures (throttling, 5xx, timeouts) are retried inside one delivery
/// before the daemon is told to pause this flow and come back.
const RETRY_FOR: Duration = Duration::from_secs(20);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct KinesisSink {
    /// Always Some until dropped (see Drop).
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    config: KinesisConfig,
    host: String,
    /// The last error logged, so a lasting failure is logged once, not per attempt.
    last_error: Option<String>,
    random: u64,
    pub stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub records_sent: u64,
    pub bytes_sent: u64,
    pub requests: u64,
    /// Records a response marked as failed and that were sent again.
    pub records_retried: u64,
    pub records_cut: u64,
}

/// One record ready for PutRecords.
struct Entry {
    /// Its place in the daemon's batch.
    index: usize,
    key: String,
    data: Vec<u8>,
}

impl Entry {
    fn size(&self) -> usize {
        self.key.len() + self.data.len()
    }
}

impl KinesisSink {
    pub fn open(config: &KinesisConfig, host: &str) -> anyhow::Result<KinesisSink> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
        let client = std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(client_for(config))).join().map_err(|_| anyhow::anyhow!("AWS config panicked"))
        })?;
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let mut sink = KinesisSink {
            runtime: Some(runtime),
            client,
            config: config.clone(),
            host: host.to_owned(),
            last_error: None,
            random: seed | 1,
            stats: Stats::default(),
        };
        sink.check_stream();
        Ok(sink)
    }

    /// Says at start-up whether the stream is there, so a typo shows at once; the collector
    /// starts either way (the stream may be created later; data waits on disk).
    fn check_stream(&mut self) {
        let (client, stream) = (&self.client, &self.config.stream);
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                let runtime = self.runtime.as_ref().expect("runtime");
                runtime
                    .block_on(client.describe_stream_summary().stream_name(stream).send())
                    .map(|out| out.stream_description_summary().map(|d| d.open_shard_count()).unwrap_or(0))
                    .map_err(|e| describe(&e))
            })
            .join()
        });
        match result {
            Ok(Ok(shards)) => tracing::info!(stream = %stream, shards, "kinesis stream reachable"),
            Ok(Err(e)) => {
                tracing::error!(stream = %stream, "kinesis stream not usable yet (records wait on disk): {e}");
                self.last_error = Some(e);
            }
            Err(_) => tracing::error!(stream = %stream, "checking the kinesis stream panicked"),
        }
    }

    fn entry(&mut self, index: usize, r: &Outgoing<'_>) -> Entry {
        let key = match self.config.partition_key {
            PartitionKey::File => format!("{}-{}", user_dev(r.inode.dev), r.inode.ino),
            PartitionKey::Deterministic => format!("{:016x}", fnv1a(r.data)),
            PartitionKey::Random => {
                // xorshift64: spread, not secrecy.
                self.random ^= self.random << 13;
                self.random ^= self.random >> 7;
                self.random ^= self.random << 17;
                format!("{:016x}", self.random)
            }
        };
        let limit = KINESIS_RECORD_LIMIT - key.len();
        let mut data = self.encode(r, r.data.len());
        if data.len() > limit {
            // Only an envelope can grow a record past the limit (max_record_bytes keeps raw
            // records under it): cut the record's bytes until the envelope fits.
            let mut keep = r.data.len();
            while data.len() > limit && keep > 0 {
                keep = keep.saturating_sub(data.len() - limit + 64);
                data = self.encode(r, keep);
            }
            self.stats.records_cut += 1;
            tracing::warn!(path = %r.path.display(), offset = r.offset, "record cut to fit Kinesis' 1 MiB limit with its envelope");
        }
        Entry { index, key, data }
    }

    fn encode(&self, r: &Outgoing<'_>, keep: usize) -> Vec<u8> {
        if self.config.envelope {
            let mut out = Vec::with_capacity(keep + 160);
            envelope::write_json(&mut out, &self.host, r, &r.data[..keep]);
            out
        } else {
            r.data[..keep].to_vec()
        }
    }

    /// A retried failure, logged when its cause (the AWS error code, or the transport
    /// failure) differs from the last one: lasting throttling is one line, not one per call.
    fn note_retry(&mut self, what: String) {
        let cause = what.split(':').next().unwrap_or_default().to_owned();
        if self.last_error.as_deref() != Some(&cause) {
            tracing::warn!(stream = %self.config.stream, "kinesis: {what}; retrying with backoff");
            self.last_error = Some(cause);
        }
    }
}

impl Sink for KinesisSink {
    fn deliver(&mut self, batch: &[Outgoing<'_>]) -> Result<(), Refused> {
        let entries: Vec<Entry> = batch.iter().enumerate().map(|(i, r)| self.entry(i, r)).collect();
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                let KinesisSink { runtime, client, config, stats, .. } = &mut *self;
                let mut errors = Vec::new();
                let runtime = runtime.as_ref().expect("runtime");
                let result = runtime.block_on(put_all(client, &config.stream, entries, stats, &mut errors));
                (result, errors)
            })
            .join()
        });
        let (result, errors) = result.map_err(|_| anyhow::anyhow!("the kinesis sink panicked"))?;
        let result = result.map_err(|(accepted, error)| Refused { accepted, error });
        for e in errors {
            self.note_retry(e);
        }
        if result.is_ok() && self.last_error.take().is_some() {
            tracing::info!(stream = %self.config.stream, "kinesis accepts records again");
        }
        result
    }
}

impl Drop for KinesisSink {
    fn drop(&mut self) {
        // Dropped from inside the daemon's runtime, where a runtime may not block to shut down.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Sends every entry, in order, retrying only what failed. `errors` collects what to log.
/// On failure, says how many leading entries Kinesis holds: `pending` stays in batch order
/// (failed records go back to its front), so that is the index of its first entry.
async fn put_all(
    client: &Client,
    stream: &str,
    entries: Vec<Entry>,
    stats: &mut Stats,
    errors: &mut Vec<String>,
) -> Result<(), (usize, anyhow::Error)> {
    let total = entries.len();
    let mut pending: std::collections::VecDeque<Entry> = entries.into();
    let result = put_pending(client, stream, &mut pending, stats, errors).await;
    result.map_err(|e| (pending.front().map_or(total, |p| p.index), e))
}

async fn put_pending(
    client: &Client,
    stream: &str,
    pending: &mut std::collections::VecDeque<Entry>,
    stats: &mut Stats,
    errors: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut retry = Retry { started: Instant::now(), backoff: BACKOFF_FIRST };
    while !pending.is_empty() {
        // Take a request's worth from the front.
        let mut request = Vec::new();
        let mut bytes = 0;
        while let Some(e) = pending.front() {
            if request.len() == MAX_RECORDS_PER_REQUEST
                || (bytes + e.size() > MAX_BYTES_PER_REQUEST && !request.is_empty())
            {
                break;
            }
            bytes += e.size();
            request.push(pending.pop_front().expect("front"));
        }
        let records = request
            .iter()
            .map(|e| PutRecordsRequestEntry::builder().data(Blob::new(e.data.clone())).partition_key(&e.key).build())
            .collect::<Result<Vec<_>, _>>()
            .context("building PutRecords entries");
        let records = match records {
            Ok(records) => records,
            Err(e) => {
                give_back(pending, request);
                return Err(e);
            }
        };
        stats.requests += 1;
        match client.put_records().stream_name(stream).set_records(Some(records)).send().await {
            Ok(out) => {
                let results = out.records();
                if results.len() != request.len() {
                    let what = format!("PutRecords answered {} results for {} records", results.len(), request.len());
                    give_back(pending, request);
                    bail!("{what}");
                }
                let sent = request.len();
                let mut failed = Vec::new();
                let mut first_error = None;
                for (entry, result) in request.into_iter().zip(results) {
                    match result.error_code() {
                        None => {
                            stats.records_sent += 1;
                            stats.bytes_sent += entry.data.len() as u64;
                        }
                        Some(code) => {
                            first_error.get_or_insert_with(|| {
                                format!("{code}: {}", result.error_message().unwrap_or_default())
                            });
                            failed.push(entry);
                        }
                    }
                }
                if failed.is_empty() {
                    retry.backoff = BACKOFF_FIRST;
                    continue;
                }
                stats.records_retried += failed.len() as u64;
                let what = format!(
                    "{} ({} of {sent} records not accepted)",
                    first_error.unwrap_or_default(),
                    failed.len()
                );
                give_back(pending, failed);
                let wait = retry.next(what, errors)?;
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                let what = describe(&e);
                give_back(pending, request);
                if !is_retryable(&e) {
                    bail!("{what}");
                }
                let wait = retry.next(what, errors)?;
                tokio::time::sleep(wait).await;
            }
        }
    }
    Ok(())
}

/// Entries not accepted go first again, in their order.
fn give_back(pending: &mut std::collections::VecDeque<Entry>, entries: Vec<Entry>) {
    for e in entries.into_iter().rev() {
        pending.push_front(e);
    }
}

/// Backoff for one delivery: doubling from BACKOFF_FIRST to BACKOFF_MAX, jittered, for at
/// most RETRY_FOR.
struct Retry {
    started: Instant,
    backoff: Duration,
}

impl Retry {
    fn next(&mut self, what: String, errors: &mut Vec<String>) -> anyhow::Result<Duration> {
        if self.started.elapsed() > RETRY_FOR {
            bail!("{what} (retried for {RETRY_FOR:?}; the flow pauses and the data waits on disk)");
        }
        errors.push(what);
        let wait = jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Ok(wait)
    }
}

/// The AWS error as the operator needs it: code and message, or the transport failure.
fn describe<E: std::error::Error + aws_sdk_kinesis::error::ProvideErrorMetadata + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            format!("{}: {}", err.code().unwrap_or("ServiceError"), err.message().unwrap_or("(no message)"))
        }
        other => {
            // The source chain says what really failed (connection refused, no credentials...).
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

fn is_retryable<E: aws_sdk_kinesis::error::ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("");
            matches!(
                code,
                "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "LimitExceededException"
                    | "KMSThrottlingException"
                    | "InternalFailure"
                    | "InternalFailureException"
                    | "ServiceUnavailable"
                    | "ServiceUnavailableException"
            ) || code.is_empty()
        }
        // Construction failures (no credentials resolved, bad request) need the operator.
        _ => false,
    }
}

/// Between half and all of `d`, so many collectors do not retry in step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
    d / 2 + d.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The SDK client: aws-config's default chain (environment, profile, web identity / IRSA,
/// ECS, IMDSv2), with the sink's region, endpoint and assumed role on top. The SDK's own
/// retries are off: this sink retries per record.
async fn client_for(config: &KinesisConfig) -> Client {
    use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let base = loader.load().await;
    let mut builder =
        aws_sdk_kinesis::config::Builder::from(&base).retry_config(RetryConfig::disabled()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        );
    if let Some(url) = &config.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    if let Some(role) = &config.role_arn {
        let mut assume = aws_config::sts::AssumeRoleProvider::builder(role).session_name("collector").configure(&base);
        if let Some(id) = &config.external_id {
            assume = assume.external_id(id);
        }
        builder = builder.credentials_provider(assume.build().await);
    }
    Client::from_conf(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(j >= Duration::from_millis(50) && j <= Duration::from_millis(100), "{j:?}");
        }
    }
}
