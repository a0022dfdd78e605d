//! Sending the records of many files through an API that takes many records per call and
//! answers per record (Kinesis PutRecords, Firehose PutRecordBatch).
//!
//! `Sending` decides (no clock, no I/O: time comes in): requests are packed with records of
//! every file that has some, up to the API's limits; up to `in_flight` requests are out at
//! once, but a file is in at most one of them, so its records never overtake each other,
//! across requests and retries alike (inside one request a record refused and sent again
//! lands after the ones that followed it: PutRecords does not keep order across a partial
//! failure, the envelope's offset does). Only refused records are sent again, first, after
//! a jittered exponential backoff of their file's own: a throttled shard slows the files on
//! it, not the others. Once nothing is out and only throttled files are left, they end
//! (`Refused::alone`: each waits a pause of its own while the daemon goes on with the
//! rest). A file whose failures last RETRY_FOR, or fail in a way no retry fixes, ends with
//! the count of its leading records the destination holds.
//!
//! `send_files` carries it out: each request runs as a task on the sink's runtime (its
//! long-lived worker thread); the caller's thread waits for answers, calling `idle` (the
//! daemon drains the kernel's ring there) at least every IDLE_EVERY.

use std::{
    collections::VecDeque,
    sync::mpsc,
    time::{Duration, Instant},
};

use super::Refused;
use crate::aws::SinkRuntime;

/// How long retryable failures (throttling, 5xx, timeouts) of a file's records are retried
/// before the daemon is told to pause its flow and come back.
pub const RETRY_FOR: Duration = Duration::from_secs(20);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The longest the caller's thread waits without calling `idle`.
const IDLE_EVERY: Duration = Duration::from_millis(2);

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

/// A call's answer: per entry of its request, None when accepted, or the error.
pub type Answer = Result<Vec<Option<String>>, CallFailed>;

/// How one file's records ended: all accepted, or how many leading ones the destination
/// holds and why the rest is not.
pub type Outcome = Result<(), Refused>;

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub records_sent: u64,
    pub bytes_sent: u64,
    pub requests: u64,
    /// Records a response marked as failed and that were sent again.
    pub records_retried: u64,
    pub records_cut: u64,
}

/// A request on its way: its entries, and which file each run of them is from.
pub struct Request {
    pub entries: Vec<Entry>,
    /// (file, entries of it), in the order of `entries`.
    files: Vec<(usize, usize)>,
}

/// One file's records: those given back after a failure first, then the rest, encoded only
/// as requests take them (a megabyte of short lines is tens of thousands of entries).
struct Queue<I> {
    source: std::iter::Fuse<I>,
    pending: VecDeque<Entry>,
    total: usize,
    in_flight: bool,
    /// Since when its records fail, and the next backoff.
    failing: Option<(Instant, Duration)>,
    /// Its last failure: records refused in an answered call (throttling), with the error.
    throttled: Option<String>,
    /// The batch index of the last entry accepted: when past the first one left, records
    /// after a refused one were taken (a partial failure), which ending the file with its
    /// accepted prefix would send again.
    last_accepted: Option<usize>,
    not_before: Option<Instant>,
    outcome: Option<Outcome>,
}

impl<I: Iterator<Item = Entry>> Queue<I> {
    /// The next entry, taken from the queue.
    fn pop(&mut self) -> Option<Entry> {
        self.pending.pop_front().or_else(|| self.source.next())
    }

    /// The batch index of the first record not accepted.
    fn first_left(&mut self) -> usize {
        if self.pending.is_empty()
            && let Some(e) = self.source.next()
        {
            self.pending.push_back(e);
        }
        self.pending.front().map_or(self.total, |e| e.index)
    }

    /// Ends it if nothing is left to send.
    fn settle(&mut self) {
        if self.outcome.is_none() && !self.in_flight && self.first_left() == self.total {
            self.outcome = Some(Ok(()));
        }
    }

    fn end(&mut self, error: String, alone: bool) {
        let accepted = self.first_left();
        self.outcome = Some(Err(Refused { accepted, error: anyhow::anyhow!("{error}"), alone }));
    }

    fn ready(&self, now: Instant) -> bool {
        self.outcome.is_none() && !self.in_flight && self.not_before.is_none_or(|t| t <= now)
    }
}

/// The sending of one delivery's files, as decisions: which request to make next, and what
/// an answer means.
pub struct Sending<I> {
    files: Vec<Queue<I>>,
    limits: Limits,
    in_flight: usize,
    max_in_flight: usize,
    /// The file the next request starts with: requests take files in turn.
    cursor: usize,
    pub stats: Stats,
    /// Retried failures, for the caller to log.
    pub notes: Vec<String>,
}

impl<I: Iterator<Item = Entry>> Sending<I> {
    /// `files`: each file's entries and its record count.
    pub fn new(files: Vec<(I, usize)>, limits: Limits, max_in_flight: usize) -> Sending<I> {
        let mut files: Vec<Queue<I>> = files
            .into_iter()
            .map(|(source, total)| Queue {
                source: source.fuse(),
                pending: VecDeque::new(),
                total,
                in_flight: false,
                failing: None,
                throttled: None,
                last_accepted: None,
                not_before: None,
                outcome: None,
            })
            .collect();
        files.iter_mut().for_each(Queue::settle);
        Sending {
            files,
            limits,
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            cursor: 0,
            stats: Stats::default(),
            notes: Vec::new(),
        }
    }

    /// The request to send now, if one may go: records of the files in turn that are not
    /// in flight nor backing off.
    pub fn next_request(&mut self, now: Instant) -> Option<Request> {
        if self.in_flight >= self.max_in_flight {
            return None;
        }
        let mut request = Request { entries: Vec::new(), files: Vec::new() };
        let mut bytes = 0;
        let count = self.files.len();
        let mut next_cursor = self.cursor;
        'files: for turn in 0..count {
            let i = (self.cursor + turn) % count;
            let file = &mut self.files[i];
            if !file.ready(now) {
                continue;
            }
            let mut taken = 0;
            while request.entries.len() < self.limits.records {
                let Some(e) = file.pop() else { break };
                // One entry over the byte limit goes alone.
                if bytes + e.size() > self.limits.bytes && !request.entries.is_empty() {
                    file.pending.push_front(e);
                    if taken > 0 {
                        request.files.push((i, taken));
                        file.in_flight = true;
                    }
                    next_cursor = i;
                    break 'files;
                }
                bytes += e.size();
                request.entries.push(e);
                taken += 1;
            }
            if taken > 0 {
                request.files.push((i, taken));
                file.in_flight = true;
                next_cursor = i + 1;
            } else {
                file.settle();
            }
            if request.entries.len() == self.limits.records {
                break;
            }
        }
        if request.entries.is_empty() {
            return None;
        }
        self.cursor = next_cursor % count;
        self.in_flight += 1;
        self.stats.requests += 1;
        Some(request)
    }

    /// What the destination said to `request`.
    pub fn answered(&mut self, request: Request, answer: Answer, now: Instant) {
        self.in_flight -= 1;
        let sent = request.entries.len();
        let (results, failure) = match answer {
            Ok(results) if results.len() == sent => (results, None),
            Ok(results) => {
                let what = format!("{} results for {sent} records", results.len());
                (vec![Some(what.clone()); sent], Some(CallFailed { what, retryable: false }))
            }
            Err(failed) => (vec![Some(failed.what.clone()); sent], Some(failed)),
        };
        let mut entries = request.entries.into_iter().zip(results);
        let mut refused = 0;
        let mut first_error = None;
        let mut retry_files = Vec::new();
        for (i, n) in request.files {
            let file = &mut self.files[i];
            file.in_flight = false;
            let mut back = Vec::new();
            for (entry, result) in entries.by_ref().take(n) {
                match result {
                    None => {
                        self.stats.records_sent += 1;
                        self.stats.bytes_sent += entry.data.len() as u64;
                        file.last_accepted = file.last_accepted.max(Some(entry.index));
                    }
                    Some(error) => {
                        first_error.get_or_insert(error);
                        back.push(entry);
                    }
                }
            }
            if back.is_empty() {
                file.failing = None;
                file.throttled = None;
                file.settle();
                continue;
            }
            refused += back.len();
            // Given back first, in their order.
            for e in back.into_iter().rev() {
                file.pending.push_front(e);
            }
            retry_files.push(i);
        }
        let Some(first_error) = first_error else { return };
        let what = match &failure {
            Some(f) => f.what.clone(),
            None => format!("{first_error} ({refused} of {sent} records not accepted)"),
        };
        if failure.as_ref().is_some_and(|f| !f.retryable) {
            for i in retry_files {
                self.files[i].end(what.clone(), false);
            }
            return;
        }
        if failure.is_none() {
            self.stats.records_retried += refused as u64;
        }
        self.notes.push(what.clone());
        for i in retry_files {
            let file = &mut self.files[i];
            let (since, backoff) = *file.failing.get_or_insert((now, BACKOFF_FIRST));
            file.throttled = failure.is_none().then(|| what.clone());
            if now.duration_since(since) > RETRY_FOR {
                file.end(
                    format!("{what} (retried for {RETRY_FOR:?}; the flow pauses and the data waits on disk)"),
                    false,
                );
                continue;
            }
            file.not_before = Some(now + jitter(backoff));
            file.failing = Some((since, (backoff * 2).min(BACKOFF_MAX)));
        }
    }

    /// When nothing is out and every file left waits out a throttle, they end now: the
    /// daemon goes on with the other files, each of these tried again after a pause of
    /// its own (a shard's limits are per second). Not a file that had records taken after
    /// a refused one: read again from its accepted prefix, they would be sent twice; its
    /// refused records are retried here first.
    pub fn end_throttled(&mut self) {
        if self.in_flight > 0 {
            return;
        }
        let ends = |f: &mut Queue<I>| f.throttled.is_some() && f.last_accepted.is_none_or(|i| i < f.first_left());
        let mut left = self.files.iter_mut().filter(|f| f.outcome.is_none()).peekable();
        if left.peek().is_none() || !left.all(ends) {
            return;
        }
        for file in self.files.iter_mut().filter(|f| f.outcome.is_none()) {
            let what = file.throttled.take().unwrap_or_default();
            file.end(format!("{what}; this file waits, the others go on"), true);
        }
    }

    /// Whether every file's records ended.
    pub fn finished(&self) -> bool {
        self.files.iter().all(|f| f.outcome.is_some())
    }

    /// When a file backing off may be sent again, the earliest.
    pub fn next_retry(&self) -> Option<Instant> {
        self.files.iter().filter(|f| f.outcome.is_none() && !f.in_flight).filter_map(|f| f.not_before).min()
    }

    /// Each file's outcome, in the order given. Only once `finished`.
    pub fn outcomes(self) -> Vec<Outcome> {
        self.files.into_iter().map(|f| f.outcome.unwrap_or(Ok(()))).collect()
    }
}

/// Sends `files` (each one file's entries and record count) with `call`, requests running
/// on `runtime`; calls `idle` while it waits. Each file's outcome, in order.
#[allow(clippy::too_many_arguments)]
pub fn send_files<I, F, Fut>(
    files: Vec<(I, usize)>,
    limits: Limits,
    in_flight: usize,
    runtime: &SinkRuntime,
    mut call: F,
    stats: &mut Stats,
    notes: &mut Vec<String>,
    idle: &mut dyn FnMut(),
) -> Vec<Outcome>
where
    I: Iterator<Item = Entry>,
    F: FnMut(&[Entry]) -> Fut,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let mut sending = Sending::new(files, limits, in_flight);
    let (answers, answered) = mpsc::channel();
    // Requests out, by slot (the slot is the task's name for it).
    let mut out: Vec<Option<Request>> = Vec::new();
    while !sending.finished() {
        while let Some(request) = sending.next_request(Instant::now()) {
            let work = call(&request.entries);
            let slot = out.iter().position(Option::is_none).unwrap_or(out.len());
            if slot == out.len() {
                out.push(None);
            }
            out[slot] = Some(request);
            let reply = Reply { slot, to: Some(answers.clone()) };
            runtime.spawn(async move { reply.send(work.await) });
        }
        sending.end_throttled();
        if sending.finished() {
            break;
        }
        let now = Instant::now();
        let wait = sending.next_retry().map_or(IDLE_EVERY, |t| t.saturating_duration_since(now).min(IDLE_EVERY));
        let mut got = answered.recv_timeout(wait).ok();
        while let Some((slot, answer)) = got {
            let request = out[slot].take().expect("an answer for a request out");
            sending.answered(request, answer, Instant::now());
            got = answered.try_recv().ok();
        }
        idle();
    }
    *stats = Stats {
        records_sent: stats.records_sent + sending.stats.records_sent,
        bytes_sent: stats.bytes_sent + sending.stats.bytes_sent,
        requests: stats.requests + sending.stats.requests,
        records_retried: stats.records_retried + sending.stats.records_retried,
        records_cut: stats.records_cut,
    };
    notes.append(&mut sending.notes);
    sending.outcomes()
}

/// A request's answer on its way back; a task that ends without one (it panicked) answers
/// with a retryable failure, so the caller never waits for it forever.
struct Reply {
    slot: usize,
    to: Option<mpsc::Sender<(usize, Answer)>>,
}

impl Reply {
    fn send(mut self, answer: Answer) {
        if let Some(to) = self.to.take() {
            let _ = to.send((self.slot, answer));
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            let failed = CallFailed { what: "the request's task ended without an answer".into(), retryable: true };
            let _ = to.send((self.slot, Err(failed)));
        }
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

    fn entries(n: usize) -> std::vec::IntoIter<Entry> {
        (0..n).map(|index| Entry { index, key: "k".into(), data: vec![b'x'; 10] }).collect::<Vec<_>>().into_iter()
    }

    fn files(counts: &[usize]) -> Vec<(std::vec::IntoIter<Entry>, usize)> {
        counts.iter().map(|&n| (entries(n), n)).collect()
    }

    /// (file, first index, count) of each file's run in `request`.
    fn runs(request: &Request) -> Vec<(usize, usize, usize)> {
        let mut at = 0;
        request
            .files
            .iter()
            .map(|&(file, n)| {
                let first = request.entries[at].index;
                at += n;
                (file, first, n)
            })
            .collect()
    }

    fn all_accepted(request: &Request) -> Answer {
        Ok(vec![None; request.entries.len()])
    }

    #[test]
    fn a_request_carries_records_of_many_files() {
        let t = Instant::now();
        let mut s = Sending::new(files(&[3, 0, 2, 4]), Limits { records: 500, bytes: 1 << 20 }, 4);
        let r = s.next_request(t).unwrap();
        assert_eq!(runs(&r), vec![(0, 0, 3), (2, 0, 2), (3, 0, 4)]);
        assert!(s.next_request(t).is_none(), "every file is in the request out");
        let answer = all_accepted(&r);
        s.answered(r, answer, t);
        assert!(s.finished());
        assert!(s.outcomes().iter().all(Result::is_ok));
    }

    #[test]
    fn requests_respect_record_and_byte_limits_and_a_file_is_in_one_at_a_time() {
        // 11 bytes an entry: 4 fit in 50.
        let t = Instant::now();
        let mut s = Sending::new(files(&[6, 3]), Limits { records: 10, bytes: 50 }, 8);
        let first = s.next_request(t).unwrap();
        assert_eq!(runs(&first), vec![(0, 0, 4)]);
        // File 0 is out: the next request takes file 1 only, though 0 has more.
        let second = s.next_request(t).unwrap();
        assert_eq!(runs(&second), vec![(1, 0, 3)]);
        assert!(s.next_request(t).is_none());
        let answer = all_accepted(&first);
        s.answered(first, answer, t);
        let third = s.next_request(t).unwrap();
        assert_eq!(runs(&third), vec![(0, 4, 2)]);
        for r in [second, third] {
            let answer = all_accepted(&r);
            s.answered(r, answer, t);
        }
        assert!(s.finished());
        assert_eq!(s.stats.records_sent, 9);
    }

    #[test]
    fn at_most_the_bound_of_requests_is_out() {
        let t = Instant::now();
        let mut s = Sending::new(files(&[1, 1, 1, 1, 1]), Limits { records: 1, bytes: 1 << 20 }, 2);
        let out: Vec<Request> = std::iter::from_fn(|| s.next_request(t)).collect();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_file_refused_in_part_goes_on_after_its_backoff_with_the_refused_first() {
        let t = Instant::now();
        let mut s = Sending::new(files(&[6, 2]), Limits { records: 4, bytes: 1 << 20 }, 4);
        let r = s.next_request(t).unwrap();
        assert_eq!(runs(&r), vec![(0, 0, 4)]);
        // Records 1 and 3 of file 0 are throttled.
        s.answered(r, Ok(vec![None, Some("Throttled: slow".into()), None, Some("Throttled: slow".into())]), t);
        assert_eq!(s.stats.records_retried, 2);
        assert_eq!(s.notes, vec!["Throttled: slow (2 of 4 records not accepted)".to_owned()]);
        // Backing off: file 1 goes meanwhile, alone.
        let r = s.next_request(t).unwrap();
        assert_eq!(runs(&r), vec![(1, 0, 2)]);
        let answer = all_accepted(&r);
        s.answered(r, answer, t);
        assert!(s.next_request(t).is_none(), "file 0 waits for its backoff");
        let later = s.next_retry().unwrap();
        assert!(later > t && later <= t + BACKOFF_FIRST);
        let r = s.next_request(later).unwrap();
        let indices: Vec<usize> = r.entries.iter().map(|e| e.index).collect();
        assert_eq!(indices, vec![1, 3, 4, 5], "the refused first, in order, then the rest");
        let answer = all_accepted(&r);
        s.answered(r, answer, later);
        assert!(s.finished());
        assert!(s.outcomes().iter().all(Result::is_ok));
    }

    #[test]
    fn a_lasting_failure_ends_its_file_with_the_accepted_prefix_and_not_the_others() {
        let mut t = Instant::now();
        let mut s = Sending::new(files(&[4, 200]), Limits { records: 5, bytes: 1 << 20 }, 4);
        let mut rounds = 0;
        while !s.finished() {
            rounds += 1;
            while let Some(r) = s.next_request(t) {
                // Record 2 of file 0 is always refused; everything else taken.
                let answer = r
                    .entries
                    .iter()
                    .zip(r.files.iter().flat_map(|&(f, n)| std::iter::repeat_n(f, n)))
                    .map(|(e, f)| (f == 0 && e.index == 2).then(|| "Throttled".to_owned()))
                    .collect();
                s.answered(r, Ok(answer), t);
            }
            t = s.next_retry().unwrap_or(t + Duration::from_millis(1));
        }
        assert!(rounds > 10);
        let outcomes = s.outcomes();
        let refused = outcomes[0].as_ref().unwrap_err();
        assert_eq!((refused.accepted, refused.alone), (2, false));
        assert!(format!("{}", refused.error).contains("retried for"), "{}", refused.error);
        assert!(outcomes[1].is_ok(), "a throttled file does not hold the others back");
    }

    #[test]
    fn throttled_files_end_alone_once_nothing_else_is_left_to_send() {
        let t = Instant::now();
        let mut s = Sending::new(files(&[3, 2]), Limits { records: 500, bytes: 1 << 20 }, 4);
        let r = s.next_request(t).unwrap();
        // File 0's last record is throttled; file 1 is taken whole.
        s.answered(r, Ok(vec![None, None, Some("Throttled: over".into()), None, None]), t);
        s.end_throttled();
        assert!(s.finished(), "nothing else to send: the throttled file ends now");
        let outcomes = s.outcomes();
        let refused = outcomes[0].as_ref().unwrap_err();
        assert_eq!((refused.accepted, refused.alone), (2, true));
        assert!(outcomes[1].is_ok());
        // Not a file with records taken after a refused one: re-read from its accepted
        // prefix, they would go twice. Its refused record is retried here.
        let mut s = Sending::new(files(&[3]), Limits { records: 500, bytes: 1 << 20 }, 4);
        let r = s.next_request(t).unwrap();
        s.answered(r, Ok(vec![None, Some("Throttled: over".into()), None]), t);
        s.end_throttled();
        assert!(!s.finished());
        let later = s.next_retry().unwrap();
        let r = s.next_request(later).unwrap();
        assert_eq!(r.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1]);
        s.answered(r, Ok(vec![None]), later);
        assert!(s.finished() && s.outcomes()[0].is_ok());
        // Not while a whole call failed (the endpoint, not a shard): that is retried here.
        let mut s = Sending::new(files(&[3]), Limits { records: 500, bytes: 1 << 20 }, 4);
        let r = s.next_request(t).unwrap();
        s.answered(r, Err(CallFailed { what: "dispatch failure".into(), retryable: true }), t);
        s.end_throttled();
        assert!(!s.finished());
    }

    #[test]
    fn a_non_retryable_failure_ends_the_files_of_its_request_at_once() {
        let t = Instant::now();
        let mut s = Sending::new(files(&[3, 1]), Limits { records: 2, bytes: 1 << 20 }, 1);
        let r = s.next_request(t).unwrap();
        assert_eq!(runs(&r), vec![(0, 0, 2)]);
        let answer = all_accepted(&r);
        s.answered(r, answer, t);
        let r = s.next_request(t).unwrap();
        assert_eq!(runs(&r), vec![(1, 0, 1), (0, 2, 1)]);
        s.answered(r, Err(CallFailed { what: "AccessDenied".into(), retryable: false }), t);
        assert!(s.finished());
        let outcomes = s.outcomes();
        let refused = outcomes[0].as_ref().unwrap_err();
        assert_eq!((refused.accepted, format!("{}", refused.error)), (2, "AccessDenied".to_owned()));
        assert_eq!(outcomes[1].as_ref().unwrap_err().accepted, 0);
    }

    #[test]
    fn entries_are_encoded_only_as_requests_take_them() {
        let pulled = std::cell::Cell::new(0usize);
        let source = (0..10_000).map(|index| {
            pulled.set(pulled.get() + 1);
            Entry { index, key: "k".into(), data: vec![b'x'; 10] }
        });
        let t = Instant::now();
        let mut s = Sending::new(vec![(source, 10_000)], Limits { records: 500, bytes: 1 << 20 }, 4);
        let mut sent = 0;
        while let Some(r) = s.next_request(t) {
            sent += r.entries.len();
            assert!(pulled.get() <= sent + 1, "{} encoded when {sent} were sent", pulled.get());
            let answer = all_accepted(&r);
            s.answered(r, answer, t);
        }
        assert_eq!(sent, 10_000);
        assert!(s.finished());
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(j >= Duration::from_millis(50) && j <= Duration::from_millis(100), "{j:?}");
        }
    }

    #[test]
    fn send_files_runs_requests_on_the_runtime_and_calls_idle_while_it_waits() {
        let runtime = SinkRuntime::new().unwrap();
        let mut idled = 0;
        let mut stats = Stats::default();
        let outcomes = send_files(
            files(&[700, 3]),
            Limits { records: 500, bytes: 1 << 20 },
            4,
            &runtime,
            |request: &[Entry]| {
                let n = request.len();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(vec![None; n])
                }
            },
            &mut stats,
            &mut Vec::new(),
            &mut || idled += 1,
        );
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(Result::is_ok));
        assert_eq!((stats.records_sent, stats.requests), (703, 3));
        assert!(idled >= 5, "idle called while waiting: {idled}");
    }
}
