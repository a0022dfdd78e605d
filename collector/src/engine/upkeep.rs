//! The engine's upkeep, on the caller's ticks: checkpoints, letting files go, the sweep,
//! recovering from lost events, pauses that end, and stopping.

use std::time::Instant;

use collector_common::InodeKey;

use super::{
    CHECKPOINT_EVERY, CheckpointDue, Engine, FileLookup, Found, KernelTruncations, Replaces, Shrunk, UnseenTruncation,
};
use crate::sweep::Look;

impl Engine {
    /// Whether a checkpoint of `inode` is to be saved now (unless `force`, at most every
    /// CHECKPOINT_EVERY, and only when it moved). The caller makes the sink durable first
    /// (`made_durable`, or `durability_failed`), then saves it (`checkpoint_saved`).
    pub fn checkpoint_due(&self, inode: &InodeKey, force: bool, now: Instant) -> Option<CheckpointDue> {
        let f = self.files.get(inode)?;
        self.tracker.get(inode)?;
        // In old contents, `acknowledged` is an offset of bytes a truncation replaced: saved
        // with the bytes now before it, a restart would resume mid-line in the new ones.
        // The checkpoint saved before the truncation stays (its bytes no longer match, so a
        // restart reads the new contents from their start). While the unread tail is read
        // from a copy, it is the copy's (`checkpoint_record`).
        if f.derived || f.held.is_some() {
            return None;
        }
        match f.checkpointed {
            Some((_, at)) if at == f.acknowledged => return None,
            Some((when, _)) if !force && now.saturating_duration_since(when) < CHECKPOINT_EVERY => return None,
            _ => {}
        }
        Some(CheckpointDue { flow: f.flow, acknowledged: f.acknowledged, record: self.checkpoint_record(inode) })
    }

    /// The file whose record in the state directory stands for where reading of `inode`
    /// is: itself, or, while a copytruncated file's unread tail is read from its copy, the
    /// copy (saved as a log of its own at the offset reached, the same in both: a restart
    /// reads the rest of the tail from the copy, and the new contents from their start).
    pub fn checkpoint_record(&self, inode: &InodeKey) -> InodeKey {
        self.files.get(inode).and_then(|f| f.copied_tail.as_ref()).map_or(*inode, |t| t.copy)
    }

    /// The sink made durable what it took: the checkpoint of `inode` at `acknowledged` is
    /// to be saved, with the bytes before that offset as the caller found them in the file
    /// (`found`). The offset the checkpoint replaces, when it is to be saved; `None` when not.
    ///
    /// Not saved when the file may have been truncated since it was read, its event still
    /// on its way: the bytes are missing (the file is shorter), or the kernel has counted a
    /// truncation whose event was not taken (counted as it begins, and looked at after the
    /// bytes: so none began before they were read). Saved then, the checkpoint would hold
    /// the new contents' bytes at an offset of the old ones, and a restart would take it
    /// as is, mid-line. The checkpoint before stays (its bytes no longer match, so a
    /// restart reads from 0), and this one is tried again after CHECKPOINT_EVERY.
    ///
    /// A counted truncation whose event has not come once every event made up to
    /// UNSEEN_TRUNCATION_WAIT after the count was first seen has been taken never will (the
    /// call failed): it counts as taken. So does one when stopping: the ring was drained,
    /// so the call failed or is still under way (and then its cut came after the bytes were
    /// read but for the call's own microseconds).
    pub fn made_durable(
        &mut self,
        inode: &InodeKey,
        acknowledged: u64,
        found: Found,
        now: Instant,
    ) -> Option<Replaces> {
        let (drained_ns, stopping) = (self.drained_ns, self.stopping);
        let f = self.files.get_mut(inode)?;
        f.durable = acknowledged;
        // u64::MAX: tried and none saved yet.
        let before = f.checkpointed.map(|(_, at)| at).filter(|&at| at != u64::MAX);
        let missing = !found.bytes_before && acknowledged > 0;
        // A copy's record (`checkpoint_record`): the copy is never truncated.
        let counted = if f.copied_tail.is_some() { f.truncations_taken } else { found.truncations.unwrap_or(0) };
        if !f.truncations_settle(counted, found.looked_ns, drained_ns, stopping) || missing {
            f.checkpointed = Some((now, before.unwrap_or(u64::MAX)));
            return None;
        }
        f.checkpointed = Some((now, acknowledged));
        Some(Replaces(before))
    }

    /// The checkpoint could not be saved: tried again after CHECKPOINT_EVERY, also when no
    /// byte moves it further (`replaced`: what `made_durable` returned).
    pub fn checkpoint_failed(&mut self, inode: &InodeKey, replaced: Replaces, now: Instant) {
        if let Some(f) = self.files.get_mut(inode) {
            f.checkpointed = Some((now, replaced.0.unwrap_or(u64::MAX)));
        }
    }

    /// The sink could not make what it took durable (an fsync failed): the records it took
    /// since the last checkpoints may never reach its disk. Every file of the flow is read
    /// again from its checkpoint after a pause: records may be written twice, none is lost.
    pub fn durability_failed(&mut self, flow: usize, now: Instant) {
        let mut reset = Vec::new();
        for (inode, f) in &mut self.files {
            if f.flow == flow && !f.derived && f.acknowledged > f.durable {
                f.acknowledged = f.durable;
                f.framer.reset(f.durable);
                self.waiting.insert(*inode);
                reset.push(*inode);
            }
        }
        for inode in reset {
            self.publish_read_position(inode);
        }
        self.pause(flow, now);
    }

    /// Files whose acknowledged offset moved since their last checkpoint (usually none, so
    /// an idle collector with many files does nothing per file).
    pub fn unsaved(&self) -> Vec<InodeKey> {
        self.files
            .iter()
            .filter(|(_, f)| !f.derived && f.checkpointed.is_none_or(|(_, at)| at != f.acknowledged))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Files to let go (`Effect::Release`, after their checkpoint): originals rotated away
    /// or unlinked, idle and read to their end, idle derived files.
    ///
    /// Not while the kernel counts a truncation of it whose event has not been taken: its
    /// checkpoint is held back then (`made_durable`), and let go with an older one on
    /// disk, it would be read again from there after a restart. `look`: its size and that
    /// count now.
    pub fn expire(&mut self, now: Instant, look: FileLookup<'_>) {
        let idle: Vec<u64> = self.flows.iter().map(|f| f.rotated_idle.as_nanos() as u64).collect();
        let (files, drained_ns, stopping) = (&self.files, self.drained_ns, self.stopping);
        let held_back = std::cell::RefCell::new(Vec::new());
        let drained = |inode: &InodeKey| {
            files.get(inode).is_none_or(|f| {
                f.derived
                    || f.copied_tail.is_none()
                        && f.unshipped.is_none()
                        && !f.shipping
                        && (look.size_of)(inode).is_some_and(|size| size <= f.framer.next_offset() && !f.framer.holds())
                        && {
                            let counted = (look.truncations_of)(inode).unwrap_or(0);
                            let settled = f.truncations_settled(counted, drained_ns, stopping);
                            if !settled {
                                held_back.borrow_mut().push((*inode, counted));
                            }
                            settled
                        }
            })
        };
        let now_ns = self.ns(now);
        let actions = self.tracker.expired(now_ns, &|flow| idle[flow], &drained);
        for (inode, counted) in held_back.into_inner() {
            if let Some(f) = self.files.get_mut(&inode) {
                f.truncations_settle(counted, look.boot_ns, drained_ns, stopping);
            }
        }
        for a in actions {
            self.apply(a, now);
        }
    }

    /// After the ring buffer dropped events: every held file may have news, and one
    /// shorter than what was read may have been truncated among them. Its sizes were
    /// taken at `boot_ns`: a truncation whose event is still in the ring is not one that
    /// was lost, so such a file is taken as truncated only once every event made before
    /// then has been taken, and none was its truncation (`resolve_shrunk`).
    ///
    /// A file the kernel finished a truncation of (`truncations_of`) that no event said
    /// may have been written past where reading is since: its size says nothing then, and
    /// reading it would take new contents for old ones. It is not read until every event
    /// made before `boot_ns` is taken; if that truncation's event was not among them, the
    /// truncation is taken as the kernel recorded it (`resolve_unseen_truncations`).
    pub fn events_lost(
        &mut self,
        boot_ns: u64,
        size_of: &dyn Fn(&InodeKey) -> Option<u64>,
        truncations_of: &dyn Fn(&InodeKey) -> Option<KernelTruncations>,
    ) {
        // Not a file still waiting for its first write event: that event may show it is a
        // copy (a lost one leaves it to the sweep).
        let tracker = &self.tracker;
        self.dirty.extend(
            self.files.iter().filter(|(k, f)| !f.derived && !tracker.get(k).is_some_and(|t| t.fresh)).map(|(k, _)| *k),
        );
        for (inode, f) in &mut self.files {
            if let Some(kernel) = truncations_of(inode).filter(|k| k.counted > f.truncations_taken) {
                if kernel.last_done > f.truncations_taken && !f.derived && !f.in_old_contents() {
                    f.unseen_truncation = Some(UnseenTruncation { kernel, seen_ns: boot_ns });
                    continue;
                }
                // Failed calls, or events lost that change nothing here: they never come,
                // so they count as taken (`made_durable` would otherwise wait forever).
                f.truncations_taken = kernel.counted;
            }
            if !f.derived && !f.in_old_contents() && size_of(inode).is_some_and(|size| size < f.framer.next_offset()) {
                self.shrunk.push(Shrunk {
                    inode: *inode,
                    read_to: f.framer.next_offset(),
                    truncations: f.truncations,
                    seen_ns: boot_ns,
                });
            }
        }
    }

    /// Files with a truncation the kernel counted after lost events (`events_lost`), once
    /// every event made before is taken: if the last truncation's event came, it was dealt
    /// with as any; if not, it was lost, and the truncation is taken from the kernel's
    /// record (sizes before and after). What was written between it and an earlier lost
    /// truncation was cut unseen; the old contents' unread bytes are counted lost (their
    /// copy, if any, was not seen either).
    pub(super) fn resolve_unseen_truncations(&mut self, now: Instant) {
        let drained = self.drained_ns;
        let due: Vec<(InodeKey, KernelTruncations)> = self
            .files
            .iter_mut()
            .filter_map(|(inode, f)| {
                let unseen = f.unseen_truncation.filter(|u| u.seen_ns < drained)?;
                f.unseen_truncation = None;
                Some((*inode, unseen.kernel))
            })
            .collect();
        for (inode, kernel) in due {
            self.dirty.insert(inode);
            let Some(f) = self.files.get_mut(&inode) else { continue };
            if f.truncations_taken >= kernel.last_done {
                f.truncations_taken = f.truncations_taken.max(kernel.counted);
                continue;
            }
            f.truncations_taken = kernel.counted;
            if f.derived || f.in_old_contents() {
                continue;
            }
            // The writes reported since may have landed in the new contents, and what the
            // kernel captured cannot be placed on either side of the cut: the old contents
            // end where the kernel recorded, and their unread bytes are lost.
            f.written_to = 0;
            f.captured = Default::default();
            let read_to = f.framer.next_offset();
            tracing::warn!(
                ino = inode.ino,
                read_to,
                size_before = kernel.size_before,
                size_after = kernel.size_after,
                "a truncation's event was lost with others; taking it as the kernel recorded it"
            );
            self.truncated(inode, kernel.size_before.max(read_to), kernel.size_after, None, None, now);
        }
    }

    /// Files found shorter than what was read after lost events (`events_lost`), once
    /// every event made before is taken: still shorter, with no truncation reported since,
    /// they are taken as truncated to their size now.
    pub(super) fn resolve_shrunk(&mut self, now: Instant, size_of: &dyn Fn(&InodeKey) -> Option<u64>) {
        let drained = self.drained_ns;
        let (ready, waiting): (Vec<Shrunk>, Vec<Shrunk>) =
            std::mem::take(&mut self.shrunk).into_iter().partition(|s| s.seen_ns < drained);
        self.shrunk = waiting;
        for s in ready {
            let Some(f) = self.files.get(&s.inode) else { continue };
            if f.truncations != s.truncations || f.framer.next_offset() != s.read_to || f.in_old_contents() {
                continue;
            }
            if let Some(size) = size_of(&s.inode).filter(|size| *size < s.read_to) {
                self.truncated(s.inode, s.read_to, size, None, None, now);
            }
        }
    }

    /// The safety sweep (see `sweep`): last sweep's suspects that nothing has read or
    /// truncated since are dealt with now; then each due flow's files are looked at.
    pub fn sweep(&mut self, now: Instant, size_of: &dyn Fn(&InodeKey) -> Option<u64>) {
        for (inode, first) in self.sweep.take_suspects(now) {
            let Some(look) = self.sweep_look(&inode, size_of) else { continue };
            if look.size > look.read_to && look.read_to < first.size {
                if self.sweep.first_report(inode) {
                    tracing::warn!(path = %self.path_of(&inode), bytes = look.size - look.read_to, "new bytes no write event announced (written past the kernel hooks, by io_uring for one); the periodic sweep reads them");
                }
                if let Some(f) = self.files.get_mut(&inode) {
                    f.swept = true;
                }
                self.tracker.no_first_write(&inode);
                self.dirty.insert(inode);
            } else if look.size < look.read_to && look.read_to == first.read_to {
                tracing::warn!(path = %self.path_of(&inode), read_to = look.read_to, size = look.size, "shorter than what was read, and no truncation event came (truncated past the kernel hooks); reading resumes at its size");
                self.truncated(inode, look.read_to, look.size, None, None, now);
            }
        }
        for flow in 0..self.flows.len() {
            if !self.sweep.due(flow, self.flows[flow].sweep_interval, now) {
                continue;
            }
            let held: Vec<InodeKey> = self.files.iter().filter(|(_, f)| f.flow == flow).map(|(k, _)| *k).collect();
            for inode in held {
                if let Some(look) = self.sweep_look(&inode, size_of).filter(|l| l.size != l.read_to) {
                    self.sweep.suspect(inode, look, now);
                }
            }
        }
    }

    /// For the sweep: where reading of a held original stands and its size, unless
    /// something is about to read it anyway (dirty, deferred, or waiting for its sink) or
    /// reading is in old contents. A file created while running that still waits for its
    /// first write event (which would tell whether it is a copy) is looked at too.
    pub(super) fn sweep_look(&self, inode: &InodeKey, size_of: &dyn Fn(&InodeKey) -> Option<u64>) -> Option<Look> {
        let f = self.files.get(inode)?;
        if f.derived || f.in_old_contents() || self.tracker.get(inode).is_none() {
            return None;
        }
        if self.dirty.contains(inode) || self.deferred.contains_key(inode) || self.waiting.contains(inode) {
            return None;
        }
        Some(Look { read_to: f.framer.next_offset(), size: size_of(inode)? })
    }

    /// Nothing waits for a tick: no file deferred, waiting for its sink, holding a partial
    /// record or in old contents, no flow paused.
    pub fn has_nothing_pending(&self) -> bool {
        self.dirty.is_empty()
            && self.deferred.is_empty()
            && self.waiting.is_empty()
            && self.paused_until.iter().all(Option::is_none)
            && self.files.values().all(|f| !f.framer.holds() && !f.in_old_contents() && f.unshipped.is_none())
    }

    /// When the first deferred file is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.deferred.values().min().copied()
    }

    /// Deferred files whose time came are read.
    pub fn read_due(&mut self, now: Instant) {
        self.dirty.extend(self.deferred.iter().filter(|(_, due)| **due <= now).map(|(k, _)| *k));
    }

    /// Flows and files whose pause after a sink failure is over read again.
    pub fn resume_paused(&mut self, now: Instant) {
        for pause in &mut self.paused_until {
            if pause.is_some_and(|until| until <= now) {
                *pause = None;
            }
        }
        for inode in &self.waiting {
            if let Some(f) = self.files.get_mut(inode)
                && f.paused_until.is_some_and(|until| until <= now)
            {
                f.paused_until = None;
            }
        }
        let (files, paused) = (&self.files, &self.paused_until);
        let ready: Vec<InodeKey> = self
            .waiting
            .iter()
            .filter(|k| files.get(k).is_none_or(|f| paused[f.flow].is_none() && f.paused_until.is_none()))
            .copied()
            .collect();
        for inode in ready {
            self.waiting.remove(&inode);
            self.dirty.insert(inode);
        }
    }

    /// Whether a truncation is being carried out (held, queued, its copied tail read or its
    /// recovered records with the sink): what it holds in memory is gone if the process
    /// dies now.
    pub fn truncating(&self) -> bool {
        self.files.values().any(|f| f.in_old_contents() || f.behind())
    }

    /// Stopping: held truncations are carried out (their checkpoints follow). Recovered
    /// records the sink still refuses exist only in memory: counted lost.
    pub fn settle_all(&mut self, now: Instant) {
        self.stopping = true;
        let inodes: Vec<InodeKey> = self.files.keys().copied().collect();
        for inode in inodes {
            self.settle_held(inode, now);
            if let Some(f) = self.files.get_mut(&inode)
                && let Some(unshipped) = f.unshipped.take()
            {
                let old = &unshipped.1;
                let lost = old.end - old.start;
                self.counters[f.flow].bytes_lost += lost;
                tracing::error!(path = %self.path_of(&inode), lost, "stopping with bytes recovered from a truncation that the sink refused; they are gone from disk");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use super::*;
    use crate::{
        engine::{
            Delivery, Effect, Event, UNSEEN_TRUNCATION_WAIT,
            reading::tests::{engine, write},
        },
        framer::Framed,
    };

    #[test]
    fn a_checkpoint_is_not_saved_while_a_truncation_may_have_replaced_the_bytes_before_it() {
        let t0 = Instant::now();
        let mut e = engine(1, t0);
        let inode = InodeKey::new(1, 1);
        let now = t0 + Duration::from_secs(1);
        e.ring_drained(10_000_000_000, now);
        ship_ten(&mut e, 0, now);

        let due = e.checkpoint_due(&inode, false, now).expect("due");
        assert_eq!(due.acknowledged, 10);
        // Truncated since the read: the bytes before offset 10 are not there.
        let found = Found { bytes_before: true, truncations: Some(0), looked_ns: 10_000_000_000 };
        assert_eq!(e.made_durable(&inode, 10, Found { bytes_before: false, ..found }, now), None, "not saved");
        assert_eq!(e.checkpoint_due(&inode, false, now + Duration::from_millis(1)), None, "tried again later");
        let later = now + CHECKPOINT_EVERY;
        assert_eq!(e.checkpoint_due(&inode, false, later), Some(due), "tried again");
        // Truncated and written past 10 again: the bytes are there, the event is not.
        assert_eq!(e.made_durable(&inode, 10, Found { truncations: Some(1), ..found }, later), None, "not saved");
        let later = later + CHECKPOINT_EVERY;
        assert_eq!(e.made_durable(&inode, 10, found, later), Some(Replaces(None)), "saved, replacing none");
        assert_eq!(e.checkpoint_due(&inode, true, later), None, "saved where it is");
    }

    /// File 1's next 10 bytes ("123456789\n" at `pos`) written, read and taken by the sink.
    fn ship_ten(e: &mut Engine, pos: u64, now: Instant) {
        let inode = InodeKey::new(1, 1);
        write(e, 1, Duration::from_secs(1), now);
        let reads = e.plan_reads(now, &|_| Some(pos + 10));
        assert_eq!(reads[0].at, pos);
        let chunk = e.read_done(reads[0], Ok(b"123456789\n".to_vec()), 10_000_000_000, None, now).expect("read");
        let mut framed = Framed::default();
        assert!(e.frame(chunk, None, &mut framed));
        e.delivered(inode, Delivery::Accepted, now);
        while e.next_effect().is_some() {}
    }

    #[test]
    fn after_a_truncation_the_checkpoint_of_the_old_contents_is_not_taken_for_one_of_the_new() {
        let t0 = Instant::now();
        let mut e = engine(1, t0);
        let inode = InodeKey::new(1, 1);
        let now = t0 + Duration::from_secs(1);
        e.ring_drained(10_000_000_000, now);
        ship_ten(&mut e, 0, now);
        let found = Found { bytes_before: true, truncations: Some(0), looked_ns: 10_000_000_000 };
        assert_eq!(e.made_durable(&inode, 10, found, now), Some(Replaces(None)), "saved at 10");
        let event = Event::Truncate { inode, size_before: 10, size_after: 0, truncation: 1, at_ns: 10_000_000_001 };
        e.on_event(event, now, &|_| Some(0));
        e.ring_drained(10_000_000_002, now);
        while e.next_effect().is_some() {}
        // Its checkpoint at 0 held back: a second truncation is counted (a failed call).
        let due = e.checkpoint_due(&inode, true, now).expect("due at 0");
        assert_eq!(due.acknowledged, 0);
        let found = Found { truncations: Some(2), looked_ns: 10_000_000_002, ..found };
        assert_eq!(e.made_durable(&inode, 0, found, now), None, "held back");
        // The new contents reach 10: the checkpoint saved there is of the old ones.
        ship_ten(&mut e, 0, now);
        let due = e.checkpoint_due(&inode, true, now).expect("the new contents' 10 is not saved");
        assert_eq!(due.acknowledged, 10);
        assert_eq!(e.unsaved(), vec![inode]);
    }

    #[test]
    fn a_truncation_whose_event_was_lost_is_taken_from_the_kernels_record_before_reading() {
        let t0 = Instant::now();
        let mut e = engine(1, t0);
        let now = t0 + Duration::from_secs(1);
        e.ring_drained(10_000_000_000, now);
        ship_ten(&mut e, 0, now);
        // Events lost: truncated from 30 to 0 meanwhile, and written to 15 since.
        let kernel = KernelTruncations { counted: 1, last_done: 1, size_before: 30, size_after: 0 };
        e.events_lost(10_000_000_005, &|_| Some(15), &|_| Some(kernel));
        write(&mut e, 1, Duration::from_secs(1), now);
        assert!(e.plan_reads(now, &|_| Some(15)).is_empty(), "not read from 10 before the ring is drained");
        e.ring_drained(10_000_000_006, now);
        // Its verdict is held a moment for writes it cut; a later write's event comes.
        let later = now + Duration::from_secs(1);
        write(&mut e, 1, Duration::from_secs(1), later);
        let reads = e.plan_reads(later, &|_| Some(15));
        assert_eq!(reads[0].at, 0, "the new contents from their start");
        assert_eq!(e.counters[0].bytes_lost, 20, "the old contents' unread 20 bytes");
        // Counted but not done (a failed call), or its event came: read as it is.
        let mut e = engine(1, t0);
        e.ring_drained(10_000_000_000, now);
        ship_ten(&mut e, 0, now);
        let failed = KernelTruncations { counted: 1, last_done: 0, size_before: 0, size_after: 0 };
        e.events_lost(10_000_000_005, &|_| Some(15), &|_| Some(failed));
        write(&mut e, 1, Duration::from_secs(1), now);
        assert_eq!(e.plan_reads(now, &|_| Some(15))[0].at, 10);
    }

    #[test]
    fn a_rotated_file_is_not_let_go_while_a_counted_truncation_holds_its_checkpoint_back() {
        let t0 = Instant::now();
        let mut e = engine(1, t0);
        let inode = InodeKey::new(1, 1);
        let now = t0 + Duration::from_secs(1);
        let at_ns = 10_000_000_000;
        e.ring_drained(at_ns, now);
        ship_ten(&mut e, 0, now);
        e.on_event(Event::Renamed { inode, path: PathBuf::from("/logs/1.log.1") }, now, &|_| None);
        while e.next_effect().is_some() {}
        let released = |e: &mut Engine, counted: u64, boot_ns: u64, now: Instant| {
            let look = FileLookup { size_of: &|_| Some(10), truncations_of: &|_| Some(counted), boot_ns };
            e.expire(now, look);
            std::iter::from_fn(|| e.next_effect()).any(|effect| matches!(effect, Effect::Release { .. }))
        };
        let idle = now + Duration::from_secs(61);
        assert!(!released(&mut e, 1, at_ns, idle), "a truncation counted, its event not taken");
        let wait = UNSEEN_TRUNCATION_WAIT.as_nanos() as u64;
        e.ring_drained(at_ns + wait - 1, idle);
        assert!(!released(&mut e, 1, at_ns + wait - 1, idle), "every event until then not taken yet");
        e.ring_drained(at_ns + wait, idle);
        assert!(released(&mut e, 1, at_ns + wait, idle), "never coming: let go");
    }

    #[test]
    fn a_counted_truncation_that_never_reports_stops_holding_checkpoints_back() {
        let t0 = Instant::now();
        let mut e = engine(1, t0);
        let inode = InodeKey::new(1, 1);
        let now = t0 + Duration::from_secs(1);
        let at_ns = 10_000_000_000;
        e.ring_drained(at_ns, now);
        // A failed ftruncate: counted as it began, no event.
        let found = Found { bytes_before: true, truncations: Some(1), looked_ns: at_ns };
        assert_eq!(e.made_durable(&inode, 0, found, now), None, "its event may be on its way");
        let wait = UNSEEN_TRUNCATION_WAIT.as_nanos() as u64;
        let later = now + UNSEEN_TRUNCATION_WAIT;
        e.ring_drained(at_ns + wait - 1, later);
        let found = Found { looked_ns: at_ns + wait - 1, ..found };
        assert_eq!(e.made_durable(&inode, 0, found, later), None, "every event until then not taken yet");
        e.ring_drained(at_ns + wait, later);
        assert_eq!(e.made_durable(&inode, 0, found, later), Some(Replaces(None)), "never coming: saved");
    }
}
