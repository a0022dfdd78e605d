//! Sending a batch through an API that takes many records per call and answers per record
//! (Kinesis PutRecords, Firehose PutRecordBatch): requests sized to the API's limits, only
//! the failed records sent again, first, with jittered exponential backoff, for at most
//! RETRY_FOR. On failure it says how many leading records the destination holds: pending
//! entries stay in batch order (failed ones go back to the front), so that is the index of
//! the first one left.

use std::{collections::VecDeque, time::Duration};

// tokio's clock: the tests run it paused.
use tokio::time::Instant;

use anyhow::bail;

/// How long retryable failures (throttling, 5xx, timeouts) are retried inside one delivery
/// before the daemon is told to pause this flow and come back.
pub const RETRY_FOR: Duration = Duration::from_secs(20);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One record as the API takes it.
pub struct Entry {
    /// The daemon's batch index of the first record it carries (an aggregated entry
    /// carries several).
    pub index: usize,
    pub key: String,
    pub data: Vec<u8>,
}

impl Entry {
    pub fn size(&self) -> usize {
        self.key.len() + self.data.len()
    }
}

/// What one request may hold.
pub struct Limits {
    pub records: usize,
    pub bytes: usize,
}

/// A call that failed as a whole.
pub struct CallFailed {
    pub what: String,
    pub retryable: bool,
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

/// Sends every entry with `call`, which answers, per entry of its request, None when
/// accepted or the error. `notes` collects retried failures for the caller to log.
///
/// Entries are taken from `entries` as requests need them, about one request's worth at a
/// time: a large batch (a megabyte of short lines is tens of thousands of records) is never
/// encoded whole. `total`: the batch's record count, returned when all are accepted.
pub async fn send_all<F, Fut>(
    entries: impl Iterator<Item = Entry>,
    total: usize,
    limits: &Limits,
    mut call: F,
    stats: &mut Stats,
    notes: &mut Vec<String>,
) -> Result<(), (usize, anyhow::Error)>
where
    F: FnMut(&[Entry]) -> Fut,
    Fut: Future<Output = Result<Vec<Option<String>>, CallFailed>>,
{
    let mut entries = entries.fuse();
    let mut pending: VecDeque<Entry> = VecDeque::new();
    let mut retry = Retry { started: Instant::now(), backoff: BACKOFF_FIRST };
    top_up(&mut pending, &mut entries, limits);
    while !pending.is_empty() {
        let request = take_request(&mut pending, limits);
        top_up(&mut pending, &mut entries, limits);
        stats.requests += 1;
        let what = match call(&request).await {
            Ok(results) if results.len() == request.len() => {
                let sent = request.len();
                let mut failed = Vec::new();
                let mut first_error = None;
                for (entry, result) in request.into_iter().zip(results) {
                    match result {
                        None => {
                            stats.records_sent += 1;
                            stats.bytes_sent += entry.data.len() as u64;
                        }
                        Some(error) => {
                            first_error.get_or_insert(error);
                            failed.push(entry);
                        }
                    }
                }
                if failed.is_empty() {
                    retry.backoff = BACKOFF_FIRST;
                    continue;
                }
                stats.records_retried += failed.len() as u64;
                let what =
                    format!("{} ({} of {sent} records not accepted)", first_error.unwrap_or_default(), failed.len());
                give_back(&mut pending, failed);
                what
            }
            Ok(results) => {
                let what = format!("{} results for {} records", results.len(), request.len());
                give_back(&mut pending, request);
                return Err((first_index(&pending, total), anyhow::anyhow!("{what}")));
            }
            Err(CallFailed { what, retryable }) => {
                give_back(&mut pending, request);
                if !retryable {
                    return Err((first_index(&pending, total), anyhow::anyhow!("{what}")));
                }
                what
            }
        };
        match retry.next(what, notes) {
            Ok(wait) => tokio::time::sleep(wait).await,
            Err(e) => return Err((first_index(&pending, total), e)),
        }
    }
    Ok(())
}

fn first_index(pending: &VecDeque<Entry>, total: usize) -> usize {
    pending.front().map_or(total, |e| e.index)
}

/// Entries from `source` until `pending` holds a request's worth.
fn top_up(pending: &mut VecDeque<Entry>, source: &mut impl Iterator<Item = Entry>, limits: &Limits) {
    let mut bytes: usize = pending.iter().map(Entry::size).sum();
    while pending.len() < limits.records && bytes < limits.bytes {
        let Some(e) = source.next() else { break };
        bytes += e.size();
        pending.push_back(e);
    }
}

/// A request's worth from the front.
fn take_request(pending: &mut VecDeque<Entry>, limits: &Limits) -> Vec<Entry> {
    let mut request = Vec::new();
    let mut bytes = 0;
    while let Some(e) = pending.front() {
        if request.len() == limits.records || (bytes + e.size() > limits.bytes && !request.is_empty()) {
            break;
        }
        bytes += e.size();
        request.push(pending.pop_front().expect("front"));
    }
    request
}

/// Entries not accepted go first again, in their order.
fn give_back(pending: &mut VecDeque<Entry>, entries: Vec<Entry>) {
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
    fn next(&mut self, what: String, notes: &mut Vec<String>) -> anyhow::Result<Duration> {
        if self.started.elapsed() > RETRY_FOR {
            bail!("{what} (retried for {RETRY_FOR:?}; the flow pauses and the data waits on disk)");
        }
        notes.push(what);
        let wait = jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Ok(wait)
    }
}

/// Between half and all of `d`, so many collectors do not retry in step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
    d / 2 + d.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<Entry> {
        (0..n).map(|index| Entry { index, key: "k".into(), data: vec![b'x'; 10] }).collect()
    }

    fn run<F, Fut>(entries: Vec<Entry>, limits: Limits, call: F) -> (Result<(), (usize, anyhow::Error)>, Stats)
    where
        F: FnMut(&[Entry]) -> Fut,
        Fut: Future<Output = Result<Vec<Option<String>>, CallFailed>>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let mut stats = Stats::default();
        let total = entries.len();
        let result = runtime.block_on(send_all(entries.into_iter(), total, &limits, call, &mut stats, &mut Vec::new()));
        (result, stats)
    }

    #[test]
    fn entries_are_taken_a_request_at_a_time() {
        // 10,000 entries, 500 a request: when a request goes out, at most one more
        // request's worth has been encoded beyond it.
        let pulled = std::cell::Cell::new(0usize);
        let source = (0..10_000).map(|index| {
            pulled.set(pulled.get() + 1);
            Entry { index, key: "k".into(), data: vec![b'x'; 10] }
        });
        let mut sent = 0;
        let limits = Limits { records: 500, bytes: 1 << 20 };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let result = runtime.block_on(send_all(
            source,
            10_000,
            &limits,
            |request: &[Entry]| {
                sent += request.len();
                assert!(pulled.get() <= sent + 500, "{} encoded when {sent} were sent", pulled.get());
                let answers = vec![None; request.len()];
                async move { Ok(answers) }
            },
            &mut Stats::default(),
            &mut Vec::new(),
        ));
        assert!(result.is_ok());
        assert_eq!(sent, 10_000);
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(j >= Duration::from_millis(50) && j <= Duration::from_millis(100), "{j:?}");
        }
    }

    #[test]
    fn requests_respect_record_and_byte_limits() {
        let mut sizes = Vec::new();
        let (result, stats) = run(entries(25), Limits { records: 10, bytes: 50 }, |req: &[Entry]| {
            sizes.push(req.len());
            let n = req.len();
            async move { Ok(vec![None; n]) }
        });
        assert!(result.is_ok());
        // 11 bytes each: 4 fit in 50.
        assert_eq!(sizes, vec![4, 4, 4, 4, 4, 4, 1]);
        assert_eq!(stats.records_sent, 25);
    }

    #[test]
    fn only_failed_records_are_sent_again_first_and_in_order() {
        let mut seen: Vec<Vec<usize>> = Vec::new();
        let (result, stats) = run(entries(6), Limits { records: 4, bytes: 1 << 20 }, |req: &[Entry]| {
            let indices: Vec<usize> = req.iter().map(|e| e.index).collect();
            let first_call = seen.is_empty();
            seen.push(indices.clone());
            // The first call refuses records 1 and 3.
            let answer = indices
                .iter()
                .map(|i| (first_call && (*i == 1 || *i == 3)).then(|| "Throttled: slow down".to_owned()))
                .collect();
            async move { Ok(answer) }
        });
        assert!(result.is_ok());
        assert_eq!(seen, vec![vec![0, 1, 2, 3], vec![1, 3, 4, 5]]);
        assert_eq!(stats.records_retried, 2);
    }

    #[test]
    fn a_lasting_failure_reports_the_accepted_prefix() {
        // Record 2 is always refused: 0 and 1 are held, 3 too, but the prefix ends at 2.
        let (result, _) = run(entries(4), Limits { records: 4, bytes: 1 << 20 }, |req: &[Entry]| {
            let answer = req.iter().map(|e| (e.index == 2).then(|| "Throttled".to_owned())).collect();
            async move { Ok(answer) }
        });
        let (accepted, error) = result.unwrap_err();
        assert_eq!(accepted, 2);
        assert!(format!("{error}").contains("retried for"), "{error}");
    }

    #[test]
    fn a_non_retryable_failure_returns_at_once() {
        let mut calls = 0;
        let (result, _) = run(entries(3), Limits { records: 2, bytes: 1 << 20 }, |req: &[Entry]| {
            calls += 1;
            let n = req.len();
            let first = calls == 1;
            async move {
                if first {
                    Ok(vec![None; n])
                } else {
                    Err(CallFailed { what: "AccessDenied".into(), retryable: false })
                }
            }
        });
        let (accepted, error) = result.unwrap_err();
        assert_eq!((accepted, calls), (2, 2));
        assert_eq!(format!("{error}"), "AccessDenied");
    }
}
