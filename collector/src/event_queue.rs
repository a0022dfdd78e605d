//! The kernel's ring buffer as the daemon consumes it: drained into memory also while the
//! daemon waits on a sink. A PutRecords call can take seconds (throttling, a slow server);
//! meanwhile writers go on, and a copytruncate's capture window makes every write carry its
//! bytes. Left in the 8 MiB ring, those events would overflow it and a truncation's tail
//! would be lost. Events are only ever taken in the order the kernel wrote them.

use std::{collections::VecDeque, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::probe::event::KernelEvent;

/// Memory the events set aside during sink calls may take; beyond it they stay in the ring
/// (which then counts what it drops, and the daemon re-reads every file).
const BACKLOG_LIMIT: usize = 64 << 20;
/// How often the ring is drained while a sink works. The ring fills at most at the rate
/// writers write; 2 ms of that fits in it many times over.
const DRAIN_EVERY: Duration = Duration::from_millis(2);

pub struct EventQueue {
    ring: AsyncFd<RingBuf<MapData>>,
    backlog: VecDeque<KernelEvent>,
    backlog_bytes: usize,
}

impl EventQueue {
    /// Needs a tokio runtime (the ring's fd is polled by it).
    pub fn new(ring: RingBuf<MapData>) -> anyhow::Result<EventQueue> {
        // SAFETY: the RingBuf owns its map fd until it is dropped with the AsyncFd.
        let ring =
            unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1).context("polling the ring buffer")?;
        Ok(EventQueue { ring, backlog: VecDeque::new(), backlog_bytes: 0 })
    }

    /// Every event there is, oldest first.
    pub fn take(&mut self) -> Vec<KernelEvent> {
        let mut events: Vec<KernelEvent> = std::mem::take(&mut self.backlog).into();
        self.backlog_bytes = 0;
        drain(self.ring.get_mut(), &mut events, usize::MAX);
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

    fn stash(&mut self) {
        let room = BACKLOG_LIMIT.saturating_sub(self.backlog_bytes);
        let mut events = Vec::new();
        self.backlog_bytes += drain(self.ring.get_mut(), &mut events, room);
        self.backlog.extend(events);
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
