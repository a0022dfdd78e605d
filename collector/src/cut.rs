//! Writes a truncation cut before their exit hook ran, and the hold that waits for them.
//!
//! A write lands, a truncation cuts the file below the write's end, and only then does the
//! write's exit hook run (the writer was preempted, or its O_DSYNC flush was still going).
//! Its bytes lay in the old contents after what the copy (if any) got, and they exist only
//! in the writer's buffer, which the hook carries (`KernelEvent::CutWrite`). That event can
//! come before or after the truncation's own. So a truncation's verdict (what is recovered,
//! what is lost, where reading resumes) is held for `HOLD`; a cut write that comes before
//! its truncation's event waits for it; one that comes after the hold is too late (its
//! bytes were counted lost). The kernel numbers each file's truncations, and a cut write
//! names the one that cut it, so its bytes never fill another truncation's gap.

use std::{
    collections::BTreeMap,
    ops::Range,
    time::{Duration, Instant},
};

use collector_common::{InodeKey, WatchedInode};

/// How long a truncation's verdict waits for the writes it cut: far longer than a write
/// takes from landing to its exit hook, short enough that the new contents are barely
/// delayed.
/// (The kernel checks writes for cut bytes twice as long, `WatchedInode::CUT_WATCH_NS`.)
pub const HOLD: Duration = Duration::from_nanos(WatchedInode::CUT_WATCH_NS / 2);

/// At most this many cut writes wait for their truncation's event (each is one write's
/// bytes; far fewer come in practice).
const EARLY_LIMIT: usize = 64;

/// A write's bytes at `pos` in the contents a truncation cut: `len` bytes written, the
/// first `bytes.len()` of them carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutWrite {
    pub pos: u64,
    pub len: u64,
    pub bytes: Vec<u8>,
}

/// Per file: the cut writes whose truncation's event has not come yet, and the last
/// truncation taken.
#[derive(Default)]
pub struct Cuts {
    last_taken: u64,
    early: Vec<(u64, CutWrite)>,
}

/// What became of a cut write.
#[derive(Debug, PartialEq, Eq)]
pub enum Placed {
    /// Added to the held truncation that cut it.
    Held,
    /// Waits for its truncation's event.
    Early,
    /// Its truncation was settled already, or too many wait.
    TooLate,
}

impl Cuts {
    /// A write cut by truncation `n` came; `held` is the file's held truncation, if any.
    pub fn place(&mut self, held: Option<&mut Held>, n: u64, cut: CutWrite) -> Placed {
        match held {
            Some(h) if h.truncation == Some(n) => {
                h.cuts.push(cut);
                Placed::Held
            }
            _ if n > self.last_taken && self.early.len() < EARLY_LIMIT => {
                self.early.push((n, cut));
                Placed::Early
            }
            _ => Placed::TooLate,
        }
    }

    /// Truncation `n`'s event came: the cut writes of it that came first. Those of earlier
    /// truncations are dropped (they can no longer be placed).
    pub fn take(&mut self, n: u64) -> Vec<CutWrite> {
        self.last_taken = self.last_taken.max(n);
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.early).into_iter().partition(|(m, _)| *m == n);
        self.early = rest.into_iter().filter(|(m, _)| *m > n).collect();
        mine.into_iter().map(|(_, c)| c).collect()
    }
}

/// A truncation whose verdict waits until `due` for the writes it cut.
pub struct Held {
    /// Where reading of the file had got to.
    pub read_to: u64,
    /// The kernel's number for it; `None` for one the daemon inferred (the sweep, lost
    /// events), which no cut write names.
    pub truncation: Option<u64>,
    pub size_before: u64,
    pub size_after: u64,
    /// The copy a copytruncate made, and how far it got.
    pub recover_from: Option<(InodeKey, u64)>,
    /// The bytes the kernel captured with the writes before it, by offset.
    pub captured: BTreeMap<u64, Vec<u8>>,
    pub cuts: Vec<CutWrite>,
    pub due: Instant,
}

impl Held {
    /// What was read, the copy and the captured bytes (the cut writes' among them) reach
    /// the size before: where that size is exact, nothing is missing.
    pub fn is_filled(&self) -> bool {
        let copied = self.recover_from.map_or(0, |(_, copied)| copied);
        // Where each known piece ends, by start (the bytes themselves are not needed).
        let mut ends: BTreeMap<u64, u64> = self.captured.iter().map(|(at, b)| (*at, at + b.len() as u64)).collect();
        for write in &self.cuts {
            let end = ends.entry(write.pos).or_default();
            *end = (*end).max(write.pos + write.bytes.len() as u64);
        }
        known_to(self.read_to.max(copied), &ends) >= self.size_before
    }

    /// The truncation's size before and the bytes known to have preceded it, the cut
    /// writes included. A cut write may end past the size reported: in tracepoint mode that
    /// size is read as the syscall begins, and a write can land before the cut itself. Bytes
    /// written but not carried (past the capture size, or from an iovec) still count, so
    /// they are reported lost rather than silently missing. Also returns where the cut
    /// writes' carried bytes lie (for the count of what they saved).
    pub fn settle(self) -> Settled {
        let mut size_before = self.size_before;
        let mut captured = self.captured;
        let mut cut = Vec::new();
        for write in self.cuts {
            size_before = size_before.max(write.pos + write.len);
            if write.bytes.is_empty() {
                continue;
            }
            cut.push(write.pos..write.pos + write.bytes.len() as u64);
            let slot = captured.entry(write.pos).or_default();
            if write.bytes.len() > slot.len() {
                *slot = write.bytes;
            }
        }
        Settled { size_before, captured, cut }
    }
}

/// A held truncation with the writes it cut taken in.
pub struct Settled {
    pub size_before: u64,
    pub captured: BTreeMap<u64, Vec<u8>>,
    /// Where the cut writes' bytes lie among `captured`.
    pub cut: Vec<Range<u64>>,
}

/// How far the bytes known from `from` on reach without a gap, through pieces given as
/// start -> end.
fn known_to(from: u64, ends: &BTreeMap<u64, u64>) -> u64 {
    let mut to = from;
    while let Some((_, &end)) = ends.range(..=to).next_back() {
        if end <= to {
            break;
        }
        to = end;
    }
    to
}

/// Bytes of `piece` that lie in one of `ranges` (which do not overlap: one write each).
pub fn overlap(piece: Range<u64>, ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| piece.end.min(r.end).saturating_sub(piece.start.max(r.start))).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(pos: u64, bytes: &[u8]) -> CutWrite {
        CutWrite { pos, len: bytes.len() as u64, bytes: bytes.to_vec() }
    }

    fn held(truncation: u64, size_before: u64) -> Held {
        Held {
            read_to: 0,
            truncation: Some(truncation),
            size_before,
            size_after: 0,
            recover_from: None,
            captured: BTreeMap::from([(0, b"a 1\n".to_vec())]),
            cuts: Vec::new(),
            due: Instant::now(),
        }
    }

    #[test]
    fn a_cut_write_joins_the_held_truncation_that_cut_it_only() {
        let mut cuts = Cuts::default();
        let mut h = held(3, 8);
        assert_eq!(cuts.place(Some(&mut h), 3, cut(4, b"a 2\n")), Placed::Held);
        assert_eq!(h.cuts, vec![cut(4, b"a 2\n")]);
        // Cut by the one before the held one: settled long ago.
        cuts.take(3);
        assert_eq!(cuts.place(Some(&mut h), 2, cut(0, b"old\n")), Placed::TooLate);
        assert_eq!(h.cuts.len(), 1);
    }

    #[test]
    fn a_cut_write_ahead_of_its_truncation_waits_for_that_truncation() {
        let mut cuts = Cuts::default();
        assert_eq!(cuts.take(1), vec![]);
        assert_eq!(cuts.place(None, 2, cut(8, b"b\n")), Placed::Early);
        assert_eq!(cuts.place(None, 3, cut(0, b"c\n")), Placed::Early);
        assert_eq!(cuts.take(2), vec![cut(8, b"b\n")]);
        // Once taken, a late one of truncation 2 cannot wait for it again.
        assert_eq!(cuts.place(None, 2, cut(10, b"d\n")), Placed::TooLate);
        // A number whose event never came (lost): its early cuts are dropped once a later
        // one is taken.
        assert_eq!(cuts.take(4), vec![]);
        assert_eq!(cuts.take(3), vec![]);
    }

    #[test]
    fn settling_adds_the_cut_bytes_and_extends_the_size_before_to_their_end() {
        let mut h = held(1, 4);
        h.cuts = vec![cut(4, b"a 2\n"), CutWrite { pos: 8, len: 100, bytes: b"a 3 (first bytes)".to_vec() }];
        let Settled { size_before, captured, cut } = h.settle();
        assert_eq!(size_before, 108);
        assert_eq!(captured.get(&4).map(Vec::as_slice), Some(&b"a 2\n"[..]));
        assert_eq!(captured.get(&8).map(Vec::len), Some(17));
        assert_eq!(captured.get(&0).map(Vec::as_slice), Some(&b"a 1\n"[..]));
        assert_eq!(cut, vec![4..8, 8..25]);
        assert_eq!(overlap(0..10, &cut), 6);
        assert_eq!(overlap(30..40, &cut), 0);
    }

    #[test]
    fn known_bytes_reach_through_adjacent_and_overlapping_captures_up_to_a_gap() {
        let ends = BTreeMap::from([(10, 15), (15, 20), (18, 22), (30, 31)]);
        assert_eq!(known_to(12, &ends), 22);
        assert_eq!(known_to(22, &ends), 22);
        assert_eq!(known_to(5, &ends), 5);
    }

    #[test]
    fn a_held_truncation_is_filled_once_its_cut_writes_close_the_gap() {
        // Read to 4 (the captured "a 1\n" is below it), size before 12.
        let mut h = held(1, 12);
        h.read_to = 4;
        assert!(!h.is_filled());
        h.cuts.push(cut(8, b"a 3\n"));
        assert!(!h.is_filled(), "4..8 is still missing");
        h.cuts.push(cut(4, b"a 2\n"));
        assert!(h.is_filled());
        h.recover_from = Some((InodeKey::new(1, 2), 12));
        h.cuts.clear();
        assert!(h.is_filled(), "the copy reaches it");
    }

    #[test]
    fn a_cut_write_without_bytes_still_counts_toward_the_size_before() {
        let mut h = held(1, 4);
        h.cuts = vec![CutWrite { pos: 4, len: 50, bytes: Vec::new() }];
        let Settled { size_before, captured, cut } = h.settle();
        assert_eq!(size_before, 54);
        assert_eq!(captured.len(), 1);
        assert!(cut.is_empty());
    }
}
