//! The engine's reading: which files to read now and where, what a read gave, framing
//! it, and the sink's answer to what was shipped.

use std::{ops::Range, time::Instant};

use collector_common::InodeKey;

use super::{
    Chunk, Delivery, Effect, Engine, FILE_RETRY_PAUSE, KernelTruncations, READ_PER_PASS, READ_PER_TURN, ReadFrom,
    ReadRequest, SINK_RETRY_PAUSE, UnseenTruncation, is_compressed_or_binary,
};
use crate::framer::Framed;

/// A pass's reads as they are planned.
#[derive(Default)]
struct Plan {
    reads: Vec<ReadRequest>,
    planned: usize,
    tails_done: Vec<InodeKey>,
    /// Files that wait for max_batch_age: when it is due, and their flow.
    aged: Vec<(InodeKey, Instant, usize)>,
    /// Flows that send something this pass.
    departing: Vec<bool>,
}

impl Engine {
    /// The reads to make now, among the dirty files; `size_of` gives a held file's size.
    /// Held truncations whose time came are settled first.
    pub fn plan_reads(&mut self, now: Instant, size_of: &dyn Fn(&InodeKey) -> Option<u64>) -> Vec<ReadRequest> {
        self.resolve_unseen_truncations(now);
        self.resolve_shrunk(now, size_of);
        let dirty = std::mem::take(&mut self.dirty);
        self.settle_due(&dirty, now);
        // Settling may have marked files dirty again.
        self.dirty.extend(dirty);
        let mut plan = Plan { departing: vec![false; self.flows.len()], ..Plan::default() };
        // Files left over by the last pass's budget go first (a set's order is the same
        // from pass to pass: they would be left over again).
        let mut order: Vec<InodeKey> = std::mem::take(&mut self.left_over);
        order.retain(|inode| self.dirty.remove(inode));
        order.extend(self.dirty.drain());
        for inode in order {
            self.plan_file(inode, false, now, size_of, &mut plan);
        }
        // A flow that sends now takes along its files still within max_batch_age: the
        // request goes anyway, and waiting would only add to their latency.
        let mut along: Vec<InodeKey> = std::mem::take(&mut plan.aged)
            .into_iter()
            .filter_map(|(inode, due, flow)| {
                if plan.departing[flow] {
                    return Some(inode);
                }
                self.deferred.insert(inode, due);
                None
            })
            .collect();
        along.extend(self.deferred.keys().filter(|inode| {
            self.files.get(inode).is_some_and(|f| plan.departing[f.flow] && f.held.is_none() && f.copied_tail.is_none())
        }));
        for inode in along {
            self.plan_file(inode, true, now, size_of, &mut plan);
        }
        for (inode, due, _) in plan.aged {
            self.deferred.insert(inode, due);
        }
        for inode in plan.tails_done {
            self.finish_copied_tail(inode, now);
        }
        plan.reads
    }

    /// Plans the read of one file, if it is to be read now; `along`: its flow sends now,
    /// so `max_batch_age` does not hold it back.
    fn plan_file(
        &mut self,
        inode: InodeKey,
        along: bool,
        now: Instant,
        size_of: &dyn Fn(&InodeKey) -> Option<u64>,
        plan: &mut Plan,
    ) {
        if plan.planned >= READ_PER_PASS {
            self.dirty.insert(inode);
            self.left_over.push(inode);
            return;
        }
        // Deferred again below if it still waits; gone otherwise.
        let due = self.deferred.remove(&inode);
        let Some(f) = self.files.get_mut(&inode) else { return };
        if f.copied_tail.is_none()
            && let Some(held) = &f.held
        {
            // Its truncation waits for the writes it cut.
            self.deferred.insert(inode, held.due);
            return;
        }
        if self.paused_until[f.flow].is_some() || f.paused_until.is_some() {
            self.waiting.insert(inode);
            return;
        }
        if f.unseen_truncation.is_some() {
            // Read once it is known whether its truncation's event was lost (marked dirty
            // then).
            return;
        }
        if let Some(unshipped) = f.unshipped.take() {
            let (framed, old) = *unshipped;
            // Recovered records the sink refused go first; the file is read after.
            f.shipping = true;
            self.effects.push_back(Effect::Ship { inode, framed, old });
            plan.departing[f.flow] = true;
            return;
        }
        let f = &*f;
        let at = f.framer.next_offset();
        // A copied tail is read first, from the copy, at once.
        let (from, size) = match &f.copied_tail {
            Some(tail) if at >= tail.end => {
                plan.tails_done.push(inode);
                return;
            }
            Some(tail) => (ReadFrom::Copy(tail.copy), tail.end),
            None => (ReadFrom::Original, size_of(&inode).unwrap_or(0)),
        };
        if size < at {
            // Truncated: its event is on its way and says what to recover.
            return;
        }
        let want = ((size - at) as usize).min(READ_PER_TURN);
        if want == 0 {
            return;
        }
        // A small amount of new bytes waits on disk for more, up to max_batch_age after
        // the oldest of them was written.
        let flow = f.flow;
        let rules = &self.flows[flow];
        if !along
            && from == ReadFrom::Original
            && !rules.max_batch_age.is_zero()
            && !f.framer.holds()
            && (want as u64) < rules.full_batch_bytes
        {
            let due = due.unwrap_or(f.unread_since.unwrap_or(now) + rules.max_batch_age);
            if now < due {
                plan.aged.push((inode, due, flow));
                return;
            }
        }
        if from == ReadFrom::Original && want as u64 == size - at {
            self.files.get_mut(&inode).expect("held").unread_since = None;
        }
        plan.planned += want;
        plan.departing[flow] = true;
        plan.reads.push(ReadRequest { inode, from, at, want, size });
    }

    /// What a planned read gave: the chunk to frame once the events that came meanwhile
    /// are applied (`frame`), if any. `read_end_ns`: when the read ended (CLOCK_BOOTTIME);
    /// `kernel`: the kernel's record of the file's truncations, looked up after the read.
    pub fn read_done(
        &mut self,
        read: ReadRequest,
        result: std::io::Result<Vec<u8>>,
        read_end_ns: u64,
        kernel: Option<KernelTruncations>,
        now: Instant,
    ) -> Option<Chunk> {
        let ReadRequest { inode, from, at, want, size } = read;
        let f = self.files.get_mut(&inode)?;
        let copy = matches!(from, ReadFrom::Copy(_));
        if !copy
            && !f.derived
            && !f.in_old_contents()
            && let Some(kernel) = kernel.filter(|k| k.last_done > f.truncations_taken)
        {
            // A truncation done before the read ended that no event said yet (its event is
            // on its way, or the full ring dropped it): the read may hold new contents at
            // old offsets. The file is read again once its event is taken, or taken as
            // lost (`resolve_unseen_truncations`).
            f.unseen_truncation.get_or_insert(UnseenTruncation { kernel, seen_ns: read_end_ns });
            return None;
        }
        let buf = match result {
            Ok(buf) if buf.is_empty() && copy => {
                // The copy is shorter than it was: what it lacks is counted as lost.
                self.finish_copied_tail(inode, now);
                return None;
            }
            Ok(buf) => buf,
            Err(e) => {
                tracing::warn!(inode = inode.ino, "read failed: {e}");
                if copy {
                    self.finish_copied_tail(inode, now);
                }
                return None;
            }
        };
        let n = buf.len();
        if n == want && (size - at) as usize > want {
            self.dirty.insert(inode);
        }
        let counters = &mut self.counters[f.flow];
        if at == 0 && is_compressed_or_binary(&buf) {
            let path = self.tracker.get(&inode).map(|t| t.path.display().to_string()).unwrap_or_default();
            // Rotation with `compress` makes one an hour forever: said once per flow.
            if counters.files_skipped_binary == 0 {
                tracing::warn!(%path, flow = %self.flows[f.flow].name, "skipping a compressed or binary file that matches a pattern (further ones are logged at debug and counted in collector_skipped_binary_files_total)");
            } else {
                tracing::debug!(%path, "skipping a compressed or binary file that matches a pattern");
            }
            counters.files_skipped_binary += 1;
            f.derived = true;
            return None;
        }
        f.last_input = now;
        counters.bytes_read += n as u64;
        if std::mem::take(&mut f.swept) {
            counters.bytes_swept += n as u64;
        }
        Some(Chunk { inode, at, bytes: buf, read_end_ns })
    }

    /// Frames a chunk into `out` (cleared first); false when there is nothing to ship: the
    /// file was truncated before the read ended (`truncated_ns`: the first truncation
    /// reported since reading began; the file is read again from its new start), moved on
    /// meanwhile, or its flow is paused (read again after the pause).
    pub fn frame(&mut self, chunk: Chunk, truncated_ns: Option<u64>, out: &mut Framed) -> bool {
        if truncated_ns.is_some_and(|t| t <= chunk.read_end_ns) {
            return false;
        }
        let Some(f) = self.files.get_mut(&chunk.inode) else { return false };
        if f.framer.next_offset() != chunk.at {
            return false;
        }
        if self.paused_until[f.flow].is_some() || f.paused_until.is_some() {
            self.waiting.insert(chunk.inode);
            return false;
        }
        out.clear();
        f.framer.push(chunk.at, chunk.bytes, out);
        true
    }

    /// The sink's answer to records of `inode` (framed from its reads, or flushed). On
    /// refusal the records stay on disk: the file is read again from its acknowledged
    /// offset once the flow's pause is over.
    pub fn delivered(&mut self, inode: InodeKey, outcome: Delivery, now: Instant) {
        let Some(f) = self.files.get_mut(&inode) else { return };
        match outcome {
            Delivery::Accepted => {
                f.acknowledged = f.acknowledged.max(f.framer.settled_offset());
                // What the sink took needs no recovery.
                if f.copied_tail.is_none() {
                    f.captured.forget_read(f.acknowledged);
                }
            }
            Delivery::Refused { holds_to, alone } => {
                // What the destination holds is not sent again: the checkpoint passes it.
                if let Some(to) = holds_to {
                    f.acknowledged = f.acknowledged.max(to);
                }
                f.framer.reset(f.acknowledged);
                let flow = f.flow;
                self.waiting.insert(inode);
                if alone {
                    f.paused_until = Some(now + FILE_RETRY_PAUSE);
                    self.counters[flow].batches_failed += 1;
                } else {
                    self.pause(flow, now);
                }
            }
        }
    }

    /// After a read's records were delivered: a copied tail read to its end is done, the
    /// kernel learns where reading is, and the checkpoint follows when due.
    pub fn after_delivery(&mut self, inode: InodeKey, now: Instant) {
        if let Some(f) = self.files.get(&inode)
            && f.copied_tail.as_ref().is_some_and(|t| f.framer.next_offset() >= t.end)
        {
            self.finish_copied_tail(inode, now);
        }
        self.publish_read_position(inode);
        self.effects.push_back(Effect::Checkpoint { inode, force: false });
    }

    /// The sink's answer to records recovered from a truncation (`Effect::Ship`, given
    /// back): reading has moved on to the new contents already, so what it refused waits
    /// in memory and is sent again first once the flow's pause is over.
    pub fn recovered_delivered(
        &mut self,
        inode: InodeKey,
        outcome: Delivery,
        mut framed: Framed,
        old: Range<u64>,
        now: Instant,
    ) {
        let Some(f) = self.files.get_mut(&inode) else { return };
        let flow = f.flow;
        f.shipping = false;
        match outcome {
            Delivery::Accepted => {
                self.dirty.insert(inode);
                self.next_truncation(inode, now);
            }
            Delivery::Refused { holds_to, alone } => {
                let from = holds_to.unwrap_or(old.start).max(old.start);
                framed.drop_before(from);
                if !framed.is_empty() {
                    f.unshipped = Some(Box::new((framed, from..old.end)));
                }
                self.waiting.insert(inode);
                if alone {
                    f.paused_until = Some(now + FILE_RETRY_PAUSE);
                    self.counters[flow].batches_failed += 1;
                } else {
                    self.pause(flow, now);
                }
            }
        }
    }

    pub(super) fn pause(&mut self, flow: usize, now: Instant) {
        self.counters[flow].batches_failed += 1;
        self.paused_until[flow] = Some(now + SINK_RETRY_PAUSE);
    }

    /// Held-back records whose flush timeout passed: each file's records to deliver. Not
    /// while the file has bytes past them not read yet (the flow paused, say): those may
    /// end the line, which is not idle, only unread. Nor in old contents: the truncation
    /// flushes them when done.
    pub fn flush_idle(&mut self, now: Instant, size_of: &dyn Fn(&InodeKey) -> Option<u64>) -> Vec<(InodeKey, Framed)> {
        let mut out = Vec::new();
        for (inode, f) in &mut self.files {
            let unread = || f.in_old_contents() || size_of(inode).is_some_and(|size| size > f.framer.next_offset());
            if !f.derived
                && f.framer.holds()
                && now.saturating_duration_since(f.last_input) >= f.framer.flush_after()
                && !unread()
            {
                let mut records = Framed::default();
                f.framer.flush(&mut records);
                out.push((*inode, records));
            }
        }
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::{path::PathBuf, time::Duration};

    use super::*;
    use crate::engine::{Event, FlowRules};

    const AGE: Duration = Duration::from_millis(20);

    /// An engine with one flow (max_batch_age 20 ms) holding files 1..=n, empty.
    pub(in crate::engine) fn engine(n: u64, t0: Instant) -> Engine {
        let rules = FlowRules::for_tests(AGE);
        let mut e = Engine::new(vec![rules], true, t0);
        for ino in 1..=n {
            e.discovered(InodeKey::new(1, ino), 0, PathBuf::from(format!("/logs/{ino}.log")), 0, false, t0);
            while let Some(effect) = e.next_effect() {
                if let Effect::Track { inode, flow, from, .. } = effect {
                    e.tracked(inode, flow, from, 0, 0, t0);
                }
            }
        }
        e
    }

    /// A 10-byte write to file `ino`, made `ago` before `now`.
    pub(in crate::engine) fn write(e: &mut Engine, ino: u64, ago: Duration, now: Instant) {
        let at_ns = 10_000_000_000 - ago.as_nanos() as u64;
        let event = Event::Write { inode: InodeKey::new(1, ino), pid: 7, pos: 0, len: 10, captured: Vec::new(), at_ns };
        e.on_event(event, now, &|_| Some(0));
    }

    fn read_inodes(reads: &[ReadRequest]) -> Vec<u64> {
        let mut inodes: Vec<u64> = reads.iter().map(|r| r.inode.ino).collect();
        inodes.sort();
        inodes
    }

    #[test]
    fn a_line_held_unfinished_is_flushed_when_idle_but_not_while_its_rest_is_unread() {
        let t0 = Instant::now();
        let mut e = engine(1, t0);
        let now = t0 + Duration::from_secs(1);
        e.ring_drained(10_000_000_000, now);
        write(&mut e, 1, Duration::from_secs(1), now);
        let reads = e.plan_reads(now, &|_| Some(4));
        let chunk = e.read_done(reads[0], Ok(b"abcd".to_vec()), 10_000_000_000, None, now).expect("read");
        let mut framed = Framed::default();
        assert!(e.frame(chunk, None, &mut framed));
        assert!(framed.records().is_empty(), "no newline yet");
        let later = now + Duration::from_secs(1);
        // The writer wrote the rest, which waits to be read (the flow paused, say).
        assert!(e.flush_idle(later, &|_| Some(10)).is_empty(), "the rest is on disk");
        let flushed = e.flush_idle(later, &|_| Some(4));
        assert_eq!(flushed.len(), 1, "nothing more was written: idle");
        assert_eq!(flushed[0].1.data(&flushed[0].1.records()[0]), b"abcd");
    }

    #[test]
    fn max_batch_age_counts_from_the_write_not_from_when_the_collector_got_to_it() {
        let t0 = Instant::now();
        let mut e = engine(1, t0);
        let now = t0 + Duration::from_secs(1);
        e.ring_drained(10_000_000_000, now);
        write(&mut e, 1, Duration::from_millis(15), now);
        assert!(e.plan_reads(now, &|_| Some(10)).is_empty(), "written 15 ms ago: it waits");
        assert_eq!(e.next_due(), Some(now + Duration::from_millis(5)), "due 20 ms after the write");
    }

    #[test]
    fn a_flow_that_sends_takes_along_its_files_still_within_max_batch_age() {
        let t0 = Instant::now();
        let mut e = engine(3, t0);
        let now = t0 + Duration::from_secs(1);
        e.ring_drained(10_000_000_000, now);
        // Written before this pass: one deferred already, one in this pass's events.
        write(&mut e, 1, Duration::from_millis(1), now);
        assert!(e.plan_reads(now, &|_| Some(10)).is_empty());
        write(&mut e, 2, Duration::ZERO, now);
        // 25 ms old: due, so the flow sends now, and the others go with it.
        write(&mut e, 3, Duration::from_millis(25), now);
        assert_eq!(read_inodes(&e.plan_reads(now, &|_| Some(10))), [1, 2, 3]);
        assert_eq!(e.next_due(), None, "nothing left waiting");
    }
}
