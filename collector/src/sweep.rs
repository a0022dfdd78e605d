//! The safety sweep: every `sweep_interval`, a flow's held files are checked (one fstat
//! each) for bytes beyond what was read. The kernel hooks see write(2) and its relatives,
//! but not io_uring writes, so a file appended that way is read only because of this. It is
//! no substitute for the hooks (a sweep every few seconds is latency, and it sees sizes
//! only).
//!
//! A file found longer than what was read is a suspect, not yet a miss: the event of a
//! write that just landed may still be on its way. It is looked at again `SECOND_LOOK`
//! later, when every event put in the ring before has long been taken; if nothing read it
//! by then, no event announced those bytes, and the sweep has them read. Such a file is
//! named once in the log, and the bytes are counted.
//!
//! Likewise a file found shorter than what was read, whose truncation event has not come
//! by the second look (tracepoint mode does not see an io_uring ftruncate): it is taken as
//! truncated to its size then, as after lost events, rather than waiting until it outgrows
//! the old offset.

use std::time::{Duration, Instant};

use collector_common::InodeKey;

use crate::inode_map::{InodeMap, InodeSet};

/// How long after a sweep its suspects are looked at again.
pub const SECOND_LOOK: Duration = Duration::from_millis(100);

/// A held file as a sweep saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Look {
    /// Where reading stood.
    pub read_to: u64,
    pub size: u64,
}

#[derive(Default)]
pub struct Sweep {
    /// Per flow: when its next sweep is due (`None`: never).
    next: Vec<Option<Instant>>,
    /// Files whose size was not where reading stood, as first seen, and when.
    suspects: InodeMap<Look>,
    suspected_at: Option<Instant>,
    /// Files already named in the log as written past the hooks.
    reported: InodeSet,
}

impl Sweep {
    /// One interval per flow; zero: that flow is never swept.
    pub fn new(intervals: impl Iterator<Item = Duration>, now: Instant) -> Sweep {
        let next = intervals.map(|every| (!every.is_zero()).then(|| now + every)).collect();
        Sweep { next, ..Sweep::default() }
    }

    /// Whether `flow` is due for a sweep at `now`; if so, its next one is scheduled.
    pub fn due(&mut self, flow: usize, every: Duration, now: Instant) -> bool {
        match self.next.get_mut(flow) {
            Some(Some(at)) if *at <= now => {
                *at = now + every;
                true
            }
            _ => false,
        }
    }

    pub fn suspect(&mut self, inode: InodeKey, look: Look, now: Instant) {
        self.suspects.insert(inode, look);
        self.suspected_at.get_or_insert(now);
    }

    /// The suspects for their second look, once `SECOND_LOOK` has passed since the first.
    pub fn take_suspects(&mut self, now: Instant) -> InodeMap<Look> {
        match self.suspected_at {
            Some(at) if now.duration_since(at) >= SECOND_LOOK => {
                self.suspected_at = None;
                std::mem::take(&mut self.suspects)
            }
            _ => InodeMap::default(),
        }
    }

    /// True the first time `inode` is found written past the hooks.
    pub fn first_report(&mut self, inode: InodeKey) -> bool {
        self.reported.insert(inode)
    }

    /// A file let go is forgotten.
    pub fn forget(&mut self, inode: &InodeKey) {
        self.reported.remove(inode);
        self.suspects.remove(inode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_is_due_once_per_interval_and_never_with_a_zero_interval() {
        let every = Duration::from_secs(10);
        let start = Instant::now();
        let mut s = Sweep::new([every, Duration::ZERO].into_iter(), start);
        assert!(!s.due(0, every, start));
        assert!(s.due(0, every, start + every));
        assert!(!s.due(0, every, start + every + Duration::from_secs(1)));
        assert!(s.due(0, every, start + 2 * every + Duration::from_secs(1)));
        assert!(!s.due(1, Duration::ZERO, start + 100 * every));
        assert!(!s.due(2, every, start + 100 * every), "no such flow");
    }

    #[test]
    fn suspects_are_taken_once_and_a_file_is_reported_once() {
        let now = Instant::now();
        let mut s = Sweep::new([Duration::from_secs(1)].into_iter(), now);
        let (a, b) = (InodeKey::new(1, 2), InodeKey::new(1, 3));
        let look = Look { read_to: 0, size: 10 };
        s.suspect(a, look, now);
        s.suspect(b, Look { read_to: 0, size: 20 }, now);
        s.forget(&b);
        assert!(s.take_suspects(now + SECOND_LOOK / 2).is_empty(), "too early for the second look");
        assert_eq!(s.take_suspects(now + SECOND_LOOK).into_iter().collect::<Vec<_>>(), vec![(a, look)]);
        assert!(s.take_suspects(now + 2 * SECOND_LOOK).is_empty());
        assert!(s.first_report(a));
        assert!(!s.first_report(a));
        s.forget(&a);
        assert!(s.first_report(a), "a file let go and found again is named again");
    }
}
