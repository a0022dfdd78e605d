//! A truncation of a tracked original, from the kernel's report to its verdict: pure (no
//! I/O, no clock: times come in). The daemon carries the verdict out.
//!
//! Writes a truncation cut before their exit hook ran, and the hold that waits for them.
//! A write lands, a truncation cuts the file below the write's end, and only then does the
//! write's exit hook run (the writer was preempted, or its O_DSYNC flush was still going).
//! Its bytes lay in the old contents after what the copy (if any) got, and they exist only
//! in the writer's buffer, which the hook carries (`KernelEvent::CutWrite`). That event can
//! come before or after the truncation's own. So a truncation's verdict (what is recovered,
//! what is lost, where reading resumes) is held for `HOLD`; a cut write that comes before
//! its truncation's event waits for it; one that comes after the hold is too late (its
//! bytes were counted lost). The kernel numbers each file's truncations, and a cut write
//! names the one that cut it, so its bytes never fill another truncation's gap.
//!
//! Once settled (`Held::settle`), a `Truncation`'s unread bytes come first from the copy a
//! copytruncate made (`Truncation::copied_tail_end`; the daemon reads it like any file),
//! then from the bytes the kernel captured (`Truncation::verdict`).

use std::{
    collections::BTreeMap,
    ops::Range,
    time::{Duration, Instant},
};

use collector_common::{CAPTURE_LEN, InodeKey, WatchedInode};

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
    /// The bytes the kernel captured with the writes before it.
    pub captured: Captures,
    pub cuts: Vec<CutWrite>,
    /// When to look at it again (the caller's clock).
    pub due: Instant,
    /// The writes it cut report their bytes in events made before this (CLOCK_BOOTTIME):
    /// once every event up to then is taken, nothing more can come for it.
    pub cut_by_ns: u64,
}

impl Held {
    /// What was read, the copy and the captured bytes (the cut writes' among them) reach
    /// the size before: where that size is exact, nothing is missing.
    pub fn is_filled(&self) -> bool {
        let copied = self.recover_from.map_or(0, |(_, copied)| copied);
        // Where each known piece ends, by start (the bytes themselves are not needed).
        let mut ends: BTreeMap<u64, u64> = self.captured.0.iter().map(|(at, b)| (*at, at + b.len() as u64)).collect();
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
    /// they are reported lost rather than silently missing. Also gives where the cut
    /// writes' carried bytes lie (for the count of what they saved). `read_to`: where
    /// reading has got to now.
    pub fn settle(self, read_to: u64) -> Truncation {
        let mut size_before = self.size_before;
        let mut captured = self.captured;
        let mut cut = Vec::new();
        for write in self.cuts {
            size_before = size_before.max(write.pos + write.len);
            if write.bytes.is_empty() {
                continue;
            }
            cut.push(write.pos..write.pos + write.bytes.len() as u64);
            captured.keep(write.pos, write.bytes);
        }
        Truncation { read_to, size_before, size_after: self.size_after, captured, cut }
    }
}

/// Bytes the kernel carried with writes and with other tasks' reads of a file, by offset:
/// where a truncation's unread bytes come from when no copy has them. At one offset the
/// longer capture is kept.
#[derive(Debug, Default)]
pub struct Captures(BTreeMap<u64, Vec<u8>>);

impl Captures {
    pub fn keep(&mut self, pos: u64, bytes: Vec<u8>) {
        let slot = self.0.entry(pos).or_default();
        if bytes.len() > slot.len() {
            *slot = bytes;
        }
    }

    /// Forgets the pieces that end by `read_to`: what was read needs no recovery.
    pub fn forget_read(&mut self, read_to: u64) {
        self.0.retain(|at, bytes| at + bytes.len() as u64 > read_to);
    }

    /// Of the pieces that start by `at`, the one reaching furthest: a read's capture
    /// overlaps the writes' captures of the same bytes. No piece is longer than
    /// CAPTURE_LEN, so none starting earlier can reach it.
    fn furthest_from(&self, at: u64) -> Option<(u64, &[u8])> {
        self.0
            .range(at.saturating_sub(CAPTURE_LEN as u64)..=at)
            .max_by_key(|(start, bytes)| *start + bytes.len() as u64)
            .map(|(start, bytes)| (*start, bytes.as_slice()))
    }
}

/// A truncation with the writes it cut taken in: what its verdict is made of.
#[derive(Debug)]
pub struct Truncation {
    /// Where reading had got to when it was settled.
    pub read_to: u64,
    pub size_before: u64,
    pub size_after: u64,
    /// The bytes the kernel captured with writes and other tasks' reads before it.
    pub captured: Captures,
    /// Where the cut writes' bytes lie among `captured`.
    pub cut: Vec<Range<u64>>,
}

/// What follows from a truncation once the copy (if any) was read: the bytes recovered
/// from the kernel's captures, what is lost, and where reading resumes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Captured bytes to frame after what was read, in order, by offset.
    pub recovered: Vec<(u64, Vec<u8>)>,
    /// Where the recovered bytes end (where reading was, if none).
    pub recovered_to: u64,
    /// Bytes among `recovered` that came from writes the truncation cut.
    pub cut_recovered: u64,
    /// Bytes of the old contents no copy, capture or read reached: gone.
    pub lost: u64,
    /// Where reading resumes in the new contents.
    pub resume: u64,
    /// Reading does not simply go on where it was: what the framer holds ends with the
    /// recovered bytes, and it starts again at `resume`.
    pub restart: bool,
}

impl Truncation {
    /// Where the unread bytes a copy holds end, when the copy (`copied` bytes of the old
    /// contents from 0) holds any.
    pub fn copied_tail_end(&self, copied: u64) -> Option<u64> {
        let end = copied.min(self.size_before);
        (self.read_to < self.size_before && end > self.read_to).then_some(end)
    }

    /// The verdict, reading having got to `read_to` (past `self.read_to` once a copied
    /// tail was read).
    ///
    /// What was written after the copy was made comes from the bytes the kernel carried.
    /// They may go on past `size_before`: in tracepoint mode it is read at the syscall's
    /// entry, and a write can land before the truncation itself takes the inode lock. Such
    /// writes continue the old contents exactly; the new contents start at `size_after`, so
    /// only what lies beyond it is taken. Captured bytes belong to the contents that were
    /// just cut, never to a later gap. Unread bytes below the new size are still on disk:
    /// reading resumes there.
    pub fn verdict(self, read_to: u64) -> Verdict {
        let Truncation { size_before, size_after, captured, cut, .. } = self;
        let mut recovered = Vec::new();
        let mut cut_recovered = 0;
        let mut recovered_to = read_to;
        while recovered_to < size_before || recovered_to > size_after {
            let Some((at, bytes)) = captured.furthest_from(recovered_to) else { break };
            let end = at + bytes.len() as u64;
            if end <= recovered_to {
                break;
            }
            cut_recovered += overlap(recovered_to..end, &cut);
            recovered.push((recovered_to, bytes[(recovered_to - at) as usize..].to_vec()));
            recovered_to = end;
        }
        let resume = recovered_to.min(size_after);
        Verdict {
            recovered,
            recovered_to,
            cut_recovered,
            lost: size_before.saturating_sub(recovered_to.max(size_after)),
            resume,
            restart: recovered_to > read_to || resume < read_to,
        }
    }
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
            captured: Captures(BTreeMap::from([(0, b"a 1\n".to_vec())])),
            cuts: Vec::new(),
            due: Instant::now(),
            cut_by_ns: 0,
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
        let Truncation { size_before, captured, cut, .. } = h.settle(0);
        assert_eq!(size_before, 108);
        assert_eq!(captured.0.get(&4).map(Vec::as_slice), Some(&b"a 2\n"[..]));
        assert_eq!(captured.0.get(&8).map(Vec::len), Some(17));
        assert_eq!(captured.0.get(&0).map(Vec::as_slice), Some(&b"a 1\n"[..]));
        assert_eq!(cut, vec![4..8, 8..25]);
        assert_eq!(overlap(0..10, &cut), 6);
        assert_eq!(overlap(30..40, &cut), 0);
    }

    #[test]
    fn the_longer_capture_at_an_offset_is_kept_and_read_ones_are_forgotten() {
        let mut c = Captures::default();
        c.keep(4, b"ab".to_vec());
        c.keep(4, b"abcd".to_vec());
        c.keep(4, b"a".to_vec());
        c.keep(0, b"wxyz".to_vec());
        assert_eq!(c.0.get(&4).map(Vec::as_slice), Some(&b"abcd"[..]));
        c.forget_read(4);
        assert_eq!(c.0.keys().collect::<Vec<_>>(), vec![&4], "0..4 was read");
        c.forget_read(7);
        assert_eq!(c.0.len(), 1, "4..8 reaches past 7");
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

    fn truncation(read_to: u64, size_before: u64, size_after: u64, captured: &[(u64, &[u8])]) -> Truncation {
        Truncation {
            read_to,
            size_before,
            size_after,
            captured: Captures(captured.iter().map(|(at, b)| (*at, b.to_vec())).collect()),
            cut: Vec::new(),
        }
    }

    #[test]
    fn unread_bytes_nothing_captured_are_lost_and_reading_restarts_at_the_new_end() {
        let v = truncation(4, 12, 0, &[]).verdict(4);
        assert_eq!(
            v,
            Verdict { recovered: vec![], recovered_to: 4, cut_recovered: 0, lost: 8, resume: 0, restart: true }
        );
    }

    #[test]
    fn captured_bytes_fill_the_gap_in_order_and_nothing_is_lost() {
        let v = truncation(4, 12, 0, &[(0, b"a 1\n"), (4, b"a 2\n"), (8, b"a 3\n")]).verdict(4);
        assert_eq!(v.recovered, vec![(4, b"a 2\n".to_vec()), (8, b"a 3\n".to_vec())]);
        assert_eq!((v.recovered_to, v.lost, v.resume, v.restart), (12, 0, 0, true));
    }

    #[test]
    fn of_overlapping_captures_the_one_reaching_furthest_is_taken() {
        // A reader's capture (0..8) overlaps the writes' (4..6, 6..10): from 4, the read's
        // reaches 8, then the write at 6 reaches 10.
        let v = truncation(4, 10, 0, &[(0, b"abcdefgh"), (4, b"ef"), (6, b"ghij")]).verdict(4);
        assert_eq!(v.recovered, vec![(4, b"efgh".to_vec()), (8, b"ij".to_vec())]);
        assert_eq!(v.lost, 0);
    }

    #[test]
    fn a_gap_in_the_captures_ends_the_recovery_and_what_is_past_it_is_lost() {
        let v = truncation(0, 12, 0, &[(0, b"a 1\n"), (8, b"a 3\n")]).verdict(0);
        assert_eq!(v.recovered, vec![(0, b"a 1\n".to_vec())]);
        assert_eq!((v.recovered_to, v.lost), (4, 8));
    }

    #[test]
    fn captures_past_the_size_before_are_taken_when_they_continue_the_old_contents() {
        // Tracepoint mode: the size before (8) was read as the syscall began; a write of
        // 8..12 landed before the cut.
        let v = truncation(4, 8, 0, &[(4, b"a 2\n"), (8, b"a 3\n")]).verdict(4);
        assert_eq!(v.recovered_to, 12);
        assert_eq!(v.lost, 0);
    }

    #[test]
    fn a_truncation_above_what_was_read_keeps_reading_where_it_was() {
        // Read to 4 of 12, cut to 8: 4..8 is still on disk.
        let v = truncation(4, 12, 8, &[]).verdict(4);
        assert_eq!((v.lost, v.resume, v.restart), (4, 4, false));
        // Read to 10 of 12, cut to 8: 10..12 is gone, reading goes back to the new end.
        let v = truncation(10, 12, 8, &[]).verdict(10);
        assert_eq!((v.lost, v.resume, v.restart), (2, 8, true));
    }

    #[test]
    fn the_bytes_of_cut_writes_among_those_recovered_are_counted() {
        let mut t = truncation(0, 12, 0, &[(0, b"a 1\n"), (4, b"a 2\n"), (8, b"a 3\n")]);
        t.cut = vec![4..6, 8..12];
        assert_eq!(t.verdict(0).cut_recovered, 6);
    }

    #[test]
    fn a_copy_holds_a_tail_only_past_what_was_read_and_up_to_the_size_before() {
        let t = truncation(4, 12, 0, &[]);
        assert_eq!(t.copied_tail_end(20), Some(12));
        assert_eq!(t.copied_tail_end(8), Some(8));
        assert_eq!(t.copied_tail_end(4), None, "the copy ends where reading is");
        assert_eq!(truncation(12, 12, 0, &[]).copied_tail_end(20), None, "everything was read");
    }

    #[test]
    fn a_cut_write_without_bytes_still_counts_toward_the_size_before() {
        let mut h = held(1, 4);
        h.cuts = vec![CutWrite { pos: 4, len: 50, bytes: Vec::new() }];
        let Truncation { size_before, captured, cut, .. } = h.settle(0);
        assert_eq!(size_before, 54);
        assert_eq!(captured.0.len(), 1);
        assert!(cut.is_empty());
    }
}
