//! The kernel's ring buffer as the daemon consumes it: drained into memory also while the
//! daemon waits on a sink. A PutRecords call can take seconds (throttling, a slow server);
//! meanwhile writers go on, and a copytruncate's capture window makes every write carry its
//! bytes. Left in the 8 MiB ring, those events would overflow it and a truncation's tail
//! would be lost. Events are only ever taken in the order the kernel wrote them.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::probe::event::KernelEvent;

/// Ring bytes of the events set aside during sink calls; beyond it they stay in the ring
/// (which then counts what it drops, and the daemon re-reads every file). Appends that
/// continue the previous one are merged into it and take no more room.
const BACKLOG_LIMIT: usize = 64 << 20;
/// How often the ring is drained while a sink works. The ring fills at most at the rate
/// writers write; 2 ms of that fits in it many times over.
const DRAIN_EVERY: Duration = Duration::from_millis(2);
/// The kernel wakes the daemon (an inter-processor interrupt raised from inside the
/// writer's write(2)) for each event that finds the ring drained. Against a busy writer a
/// daemon draining at once drains after every event, and the interrupts cost the writer
/// more than the rest of the hook (measured: 31% of its time). So when the ring woke the
/// daemon within `BUSY_WITHIN` of the last time (events coming at more than ~500/s), it
/// lets events gather for `GATHER` first: at most one wake-up per turn. Slower events are
/// taken at once (with 10 ms here, `max_batch_age = "0s"` at 100 lines/s had its p50
/// latency go from 0.8 to 2.0 ms, and an interrupt per event costs little at that rate).
const GATHER: Duration = Duration::from_millis(1);
const BUSY_WITHIN: Duration = Duration::from_millis(2);

pub struct EventQueue {
    ring: AsyncFd<RingBuf<MapData>>,
    backlog: VecDeque<KernelEvent>,
    backlog_bytes: usize,
    last_woken: Option<Instant>,
}

impl EventQueue {
    /// Needs a tokio runtime (the ring's fd is polled by it).
    pub fn new(ring: RingBuf<MapData>) -> anyhow::Result<EventQueue> {
        // SAFETY: the RingBuf owns its map fd until it is dropped with the AsyncFd.
        let ring =
            unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1).context("polling the ring buffer")?;
        Ok(EventQueue { ring, backlog: VecDeque::new(), backlog_bytes: 0, last_woken: None })
    }

    /// Every event there is, oldest first.
    pub fn take(&mut self) -> Vec<KernelEvent> {
        let mut events: Vec<KernelEvent> = std::mem::take(&mut self.backlog).into();
        self.backlog_bytes = 0;
        drain(self.ring.get_mut(), &mut events, usize::MAX);
        // The ring's consumer position (advanced as each record was taken) before any read
        // of the files these events name: the kernel folds a process's appends into its
        // last event only while that event is untaken, and then this side's coming read
        // must see them (the other half of the barrier pair in the programs' emit.rs).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        events
    }

    /// Whether events wait in memory (the daemon must not sleep on the ring then).
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Until the ring has something, or the backlog does.
    pub async fn readable(&mut self) -> std::io::Result<()> {
        if self.has_backlog() {
            return Ok(());
        }
        self.ring.readable_mut().await?.clear_ready();
        let now = Instant::now();
        let busy = self.last_woken.is_some_and(|t| now.duration_since(t) < BUSY_WITHIN);
        self.last_woken = Some(now);
        if busy {
            tokio::time::sleep(GATHER).await;
        }
        Ok(())
    }

    /// Runs `work` (a sink call) on its own thread and drains the ring into the backlog
    /// until it returns.
    pub fn while_waiting<T: Send>(&mut self, work: impl FnOnce() -> T + Send) -> T {
        let waiter = std::thread::current();
        std::thread::scope(|s| {
            let worker = s.spawn(move || {
                let result = work();
                waiter.unpark();
                result
            });
            while !worker.is_finished() {
                self.stash();
                std::thread::park_timeout(DRAIN_EVERY);
            }
            self.stash();
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Takes what the ring holds into the backlog: called by a sink that waits on the
    /// network from this thread.
    pub fn drain_meanwhile(&mut self) {
        self.stash();
    }

    fn stash(&mut self) {
        let ring = self.ring.get_mut();
        while self.backlog_bytes < BACKLOG_LIMIT {
            let Some(record) = ring.next() else { break };
            let size = record.len();
            let event = KernelEvent::decode(&record);
            drop(record);
            match event {
                Ok(e) if merge(self.backlog.back_mut(), &e) => {}
                Ok(e) => {
                    self.backlog.push_back(e);
                    self.backlog_bytes += size;
                }
                Err(e) => tracing::warn!("skipping a kernel record: {e}"),
            }
        }
    }
}

/// Folds `next` into `last` when it is the same process appending right after it to the
/// same file without captured bytes: the daemon reads such a pair as one write (it keeps
/// the file's end and its writer). A writer going on during a minute-long sink outage
/// then costs one event, not one per write.
fn merge(last: Option<&mut KernelEvent>, next: &KernelEvent) -> bool {
    match (last, next) {
        (
            Some(KernelEvent::Write { origin: a, inode: i, pos: p, len: l, captured: c }),
            KernelEvent::Write { origin: b, inode: j, pos: q, len: m, captured: d },
        ) if i == j
            && c.is_empty()
            && d.is_empty()
            && *p + *l == *q
            && (a.pid, &a.comm, a.cgroup_id) == (b.pid, &b.comm, b.cgroup_id) =>
        {
            *l += m;
            true
        }
        _ => false,
    }
}

/// Decodes ring records into `out` until the ring is empty or `budget` bytes of records
/// were taken; returns the bytes taken.
fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<KernelEvent>, budget: usize) -> usize {
    let mut taken = 0;
    while taken < budget {
        let Some(record) = ring.next() else { break };
        taken += record.len();
        match KernelEvent::decode(&record) {
            Ok(e) => out.push(e),
            Err(e) => tracing::warn!("skipping a kernel record: {e}"),
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use collector_common::InodeKey;

    use super::*;
    use crate::probe::event::Task;

    fn write(pid: u32, ino: u64, pos: u64, len: u64, captured: &[u8]) -> KernelEvent {
        let origin = Task { tid: pid, pid, comm: "app".into(), cgroup_id: 1, boot_ns: pos };
        KernelEvent::Write { origin, inode: InodeKey::new(1, ino), pos, len, captured: captured.to_vec() }
    }

    #[test]
    fn only_a_continuing_append_of_the_same_writer_is_merged() {
        let mut last = write(7, 42, 0, 10, b"");
        assert!(merge(Some(&mut last), &write(7, 42, 10, 5, b"")));
        assert!(matches!(last, KernelEvent::Write { pos: 0, len: 15, .. }));
        for other in [
            write(8, 42, 15, 5, b""),      // another process
            write(7, 43, 15, 5, b""),      // another file
            write(7, 42, 20, 5, b""),      // a gap
            write(7, 42, 15, 5, b"bytes"), // captured bytes are kept as they came
        ] {
            assert!(!merge(Some(&mut last), &other), "{other:?}");
        }
        assert!(!merge(None, &write(7, 42, 15, 5, b"")));
    }
}
