//! The engine's steps for a truncation of a held original, from its event to the verdict
//! carried out (see `truncation` for the pure pieces): hold it for the writes it cut, read
//! the unread tail from the copy a copytruncate made, then take the captured bytes, count
//! what is lost, and resume in the new contents.

use std::time::Instant;

use collector_common::InodeKey;

use super::{CopiedTail, Effect, Engine};
use crate::{
    framer::Framed,
    truncation::{self, CutWrite, Held, Placed, Truncation},
};

impl Engine {
    /// An original shrank from `size_before` to `size_after`. What it held beyond what was
    /// read is read from the copy, when a copytruncate made one (see `CopiedTail`), then
    /// taken from the bytes the kernel captured with the writes after the copy; reading
    /// resumes where the file still holds unread bytes, or at its new end.
    ///
    /// What was read may be nothing of a whole generation: when the sink is slow, several
    /// rotations can pass between two reads.
    ///
    /// First it is held while writes it cut may still report their bytes: unless nothing
    /// can be missing (the size before is exact in fentry and kprobe modes, and what was
    /// read, the copy and the captured bytes reach it), or it was inferred (no write names
    /// it). `truncation`: the kernel's number for it, `None` when inferred.
    pub(super) fn truncated(
        &mut self,
        inode: InodeKey,
        size_before: u64,
        size_after: u64,
        recover_from: Option<(InodeKey, u64)>,
        reported: Option<(u64, u64)>,
        now: Instant,
    ) {
        let truncation = reported.map(|(n, _)| n);
        // One at a time: an earlier held truncation is settled first.
        self.settle_held(inode, now);
        let Some(f) = self.files.get_mut(&inode) else { return };
        f.truncations += 1;
        // Every write reported before its event landed before the cut (one that did not is
        // a cut write).
        let size_before = size_before.max(std::mem::replace(&mut f.written_to, size_after));
        let exact = self.exact_size_before && !f.behind();
        let cuts = truncation.map(|n| f.cuts.take(n)).unwrap_or_default();
        let mut held = Held {
            read_to: f.framer.next_offset(),
            truncation,
            size_before,
            size_after,
            recover_from,
            // Taken now: what is captured from here on belongs to the new contents.
            captured: std::mem::take(&mut f.captured),
            cuts,
            due: now + truncation::HOLD,
            cut_by_ns: reported.map_or(0, |(_, at)| at + truncation::HOLD.as_nanos() as u64),
        };
        // The copy is pinned now, as the event is taken: logrotate's `compress` may delete it
        // while the truncation is held or waits its turn, and its inode number may then go
        // to another file. One that cannot be pinned now (not held) is none of its bytes.
        if let Some((copy, _)) = recover_from
            && !self.pin(inode, copy)
        {
            held.recover_from = None;
        }
        if truncation.is_none() || exact && held.is_filled() {
            self.apply_truncation(inode, held, now);
            return;
        }
        tracing::debug!(ino = inode.ino, ?truncation, "truncation held for the writes it cut");
        self.deferred.insert(inode, held.due);
        let f = self.files.get_mut(&inode).expect("checked");
        f.held = Some(Box::new(held));
    }

    /// Pins `copy` for `inode`'s truncation, if the copy is held and not pinned yet; true
    /// when it is pinned.
    fn pin(&mut self, inode: InodeKey, copy: InodeKey) -> bool {
        let copy_held = self.files.contains_key(&copy);
        let Some(f) = self.files.get_mut(&inode) else { return false };
        if f.pinned.contains(&copy) {
            return true;
        }
        if !copy_held {
            return false;
        }
        f.pinned.push(copy);
        self.effects.push_back(Effect::PinCopy { inode, copy });
        true
    }

    fn unpin(&mut self, inode: InodeKey, copy: InodeKey) {
        let Some(f) = self.files.get_mut(&inode) else { return };
        // Still wanted by a truncation that waits its turn.
        let wanted = f.copied_tail.as_ref().is_some_and(|t| t.copy == copy)
            || f.held.as_deref().into_iter().chain(&f.queued).any(|h| h.recover_from.is_some_and(|(c, _)| c == copy));
        if !wanted && let Some(i) = f.pinned.iter().position(|c| *c == copy) {
            f.pinned.swap_remove(i);
            self.effects.push_back(Effect::UnpinCopy { inode, copy });
        }
    }

    /// The held truncation of `inode`, if any, is carried out now.
    pub(super) fn settle_held(&mut self, inode: InodeKey, now: Instant) {
        if let Some(held) = self.files.get_mut(&inode).and_then(|f| f.held.take()).map(|held| *held) {
            self.apply_truncation(inode, held, now);
        }
    }

    /// Held truncations whose time came, among `inodes`, are carried out: every event
    /// made within `HOLD` of the truncation has been taken (however late the collector
    /// is with its events), or, should the events never catch up, `HOLD` after that.
    pub(super) fn settle_due(&mut self, inodes: &crate::inode_map::InodeSet, now: Instant) {
        let drained = self.drained_ns;
        let due: Vec<InodeKey> = inodes
            .iter()
            .filter(|k| {
                self.files
                    .get(k)
                    .and_then(|f| f.held.as_ref())
                    .is_some_and(|h| h.cut_by_ns <= drained && h.due <= now || h.due + truncation::HOLD <= now)
            })
            .copied()
            .collect();
        for inode in due {
            self.settle_held(inode, now);
        }
    }

    /// A write cut by truncation `n` reported its bytes.
    pub(super) fn cut_write(&mut self, inode: InodeKey, n: u64, cut: CutWrite, now: Instant) {
        let Some(f) = self.files.get_mut(&inode) else { return };
        let exact = self.exact_size_before && !f.behind();
        let (pos, len) = (cut.pos, cut.len);
        // The held truncation it names, or one that waits its turn.
        let target = f.held.as_deref_mut().into_iter().chain(f.queued.iter_mut()).find(|h| h.truncation == Some(n));
        let placed = f.cuts.place(target, n, cut);
        // Where the size before is exact, a truncation whose gap is filled has nothing more
        // to wait for.
        if placed == Placed::Held && exact && f.held.as_deref().is_some_and(Held::is_filled) {
            self.settle_held(inode, now);
            return;
        }
        if placed == Placed::TooLate {
            // What lay past the size before its verdict used was not counted lost then.
            let uncounted = match f.last_settled {
                Some((settled, size_before)) if settled == n => (pos + len).saturating_sub(pos.max(size_before)),
                _ => 0,
            };
            self.counters[f.flow].bytes_lost += uncounted;
            tracing::warn!(path = %self.path_of(&inode), truncation = n, pos, len, "a write cut by a truncation reported its bytes after the truncation was settled; they are lost");
        }
    }

    /// The truncation's steps once the writes it cut had their time: the copy's bytes,
    /// then the captured ones, loss accounting, and where reading resumes. One copied tail
    /// at a time: while one is read, a later truncation waits for it (in order).
    pub(super) fn apply_truncation(&mut self, inode: InodeKey, held: Held, now: Instant) {
        let Some(f) = self.files.get_mut(&inode) else { return };
        if f.behind() {
            f.queued.push_back(held);
            self.dirty.insert(inode);
            return;
        }
        self.carry_out(inode, held, now);
    }

    /// The truncation that waited its turn longest, once the one before is done.
    pub(super) fn next_truncation(&mut self, inode: InodeKey, now: Instant) {
        let Some(f) = self.files.get_mut(&inode) else { return };
        if f.copied_tail.is_some() || f.unshipped.is_some() || f.shipping {
            return;
        }
        if let Some(next) = f.queued.pop_front() {
            self.carry_out(inode, next, now);
        }
    }

    fn carry_out(&mut self, inode: InodeKey, held: Held, now: Instant) {
        let Some(f) = self.files.get_mut(&inode) else { return };
        let read_to = f.framer.next_offset();
        let (recover_from, cuts) = (held.recover_from, held.cuts.len());
        let number = held.truncation;
        let truncation = held.settle(read_to);
        let (size_before, size_after) = (truncation.size_before, truncation.size_after);
        if let Some(n) = number {
            f.last_settled = Some((n, size_before));
        }
        tracing::debug!(ino = inode.ino, size_before, size_after, read_to, ?recover_from, cuts, "truncated");
        if let Some((copy, copied)) = recover_from {
            if let Some(end) = truncation.copied_tail_end(copied)
                && self.pin(inode, copy)
            {
                tracing::info!(bytes = end - read_to, "reading the unread tail of a copytruncated file from its copy");
                let f = self.files.get_mut(&inode).expect("checked");
                f.copied_tail = Some(Box::new(CopiedTail { copy, end, truncation }));
                // From now on the copy's record says where reading is (`checkpoint_record`),
                // saved at once: a restart then reads the rest of the tail from the copy.
                Self::checkpoint_moved_record(f);
                self.effects.push_back(Effect::Checkpoint { inode, force: true });
                self.dirty.insert(inode);
                return;
            }
            self.unpin(inode, copy);
        }
        self.finish_truncation(inode, truncation, now);
    }

    /// The record that stands for where reading of a file is changed (`checkpoint_record`):
    /// the offset saved in the one before is none of the new one's.
    fn checkpoint_moved_record(f: &mut super::FileState) {
        if let Some((_, at)) = &mut f.checkpointed {
            *at = u64::MAX;
        }
    }

    /// A copied tail read to its end (or to where the copy ends) is done: the
    /// truncation's remaining steps follow.
    pub(super) fn finish_copied_tail(&mut self, inode: InodeKey, now: Instant) {
        if let Some(f) = self.files.get_mut(&inode)
            && let Some(tail) = f.copied_tail.take().map(|tail| *tail)
        {
            // The copy is a copy again in the state directory; the file's own record
            // follows the truncation's verdict.
            Self::checkpoint_moved_record(f);
            self.effects.push_back(Effect::HoldDerived { inode: tail.copy, open: false });
            self.unpin(inode, tail.copy);
            self.finish_truncation(inode, tail.truncation, now);
        }
    }

    /// The steps of a truncation after the copy's bytes (if any) were read: the bytes the
    /// kernel captured, loss accounting, and where reading resumes (`Truncation::verdict`).
    /// Then the next truncation waiting for this one, if any.
    fn finish_truncation(&mut self, inode: InodeKey, t: Truncation, now: Instant) {
        let Some(f) = self.files.get_mut(&inode) else { return };
        // Where the records made below start: of the old contents, which are now gone from
        // disk, they hold what the framer held back and what is recovered.
        let records_from = f.framer.settled_offset();
        let verdict = t.verdict(f.framer.next_offset());
        let mut records = Framed::default();
        let mut from_writes = 0;
        for (at, bytes) in verdict.recovered {
            from_writes += bytes.len();
            f.framer.push(at, bytes, &mut records);
        }
        let counters = &mut self.counters[f.flow];
        counters.bytes_cut_recovered += verdict.cut_recovered;
        if from_writes > 0 {
            tracing::info!(
                bytes = from_writes,
                "recovered bytes written just before a truncation from the kernel's capture"
            );
        }
        if verdict.restart {
            f.framer.flush(&mut records);
        }
        counters.bytes_lost += verdict.lost;
        if verdict.lost > 0 {
            tracing::warn!(path = %self.path_of(&inode), lost = verdict.lost, "truncated before these bytes could be read; they are gone from disk");
        }
        let f = self.files.get_mut(&inode).expect("checked");
        let shipping = !records.is_empty();
        if !shipping {
            f.acknowledged = f.acknowledged.max(f.framer.settled_offset());
        } else {
            let old = records_from..verdict.recovered_to;
            f.shipping = true;
            self.effects.push_back(Effect::Ship { inode, framed: records, old });
        }
        if verdict.restart {
            f.framer.reset(verdict.resume);
            f.acknowledged = verdict.resume;
            // Offsets start again below: nothing after `resume` is durable yet, and the
            // checkpoint saved is at an offset of the old contents, whatever its number
            // (u64::MAX: none saved of the new ones).
            f.durable = f.durable.min(verdict.resume);
            Self::checkpoint_moved_record(f);
        }
        self.publish_read_position(inode);
        self.effects.push_back(Effect::Checkpoint { inode, force: true });
        self.dirty.insert(inode);
        // The next truncation waits for the sink's answer to these records, if any
        // (`recovered_delivered`).
        if shipping {
            return;
        }
        self.next_truncation(inode, now);
    }
}
