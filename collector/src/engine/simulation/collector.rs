//! The collector's side: the engine, and an executor of its effects over the model (as
//! the daemon is over real files), with what outlives a crash.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use collector_common::InodeKey;

use super::model::{Model, index, key, pattern_matches};
use crate::engine::{Delivery, Effect, Engine, Event, FINISH_ON_STOP, FileLookup, FlowRules, Found, ReadFrom};

/// What outlives a collector: what the sink took, and the state directory.
#[derive(Default)]
pub(super) struct Durable {
    /// Per inode: the records the sink took (file range and bytes).
    pub(super) shipped: HashMap<InodeKey, Vec<(u64, u64, Vec<u8>)>>,
    /// Per inode: its checkpoint (acknowledged offset, and the bytes just before it then),
    /// or that it is derived, and which file it was (`Inode::born`, as an identity).
    pub(super) store: HashMap<usize, (u64, bool, Vec<u8>, u64)>,
    /// Per inode: records taken past its checkpoint (end, bytes): sent again after a
    /// crash.
    pub(super) unsaved: HashMap<usize, Vec<(u64, Vec<u8>)>>,
    /// Per inode: lines that may be shipped twice (taken past the checkpoint before a
    /// crash).
    pub(super) may_repeat: HashMap<usize, Vec<Vec<u8>>>,
    /// Originals a crash left behind (deleted while the collector held them, or renamed
    /// away before their first checkpoint): a restart cannot find them, and nothing says
    /// how much of them was unread.
    pub(super) abandoned: Vec<usize>,
    pub(super) crashes: u32,
    /// Clean stops (SIGTERM) so far.
    pub(super) stops: u32,
    /// Bytes counted lost by collectors since killed (their counters died with them).
    pub(super) lost_before: u64,
    /// Of each file in `Model::retired`, in the same order: what `retire` kept.
    pub(super) retired: Vec<RetiredFile>,
}

pub(super) struct Collector {
    pub(super) engine: Engine,
    pub(super) base: Instant,
    /// Copies pinned per (original, copy): the copy's contents stay readable.
    pub(super) pins: Vec<(usize, usize)>,
    pub(super) held: Vec<usize>,
    pub(super) durable: Durable,
    pub(super) refuse_percent: u64,
    /// The ring was emptied by a take at this time.
    pub(super) drained: Option<u64>,
    /// Events were lost since the last tick.
    pub(super) lost: bool,
}

impl Durable {
    /// What outlives collectors of the file that had inode number `i`, which a new file
    /// gets: its shipped records, those it may ship twice, whether a crash abandoned it.
    /// Its checkpoint stays, as the state directory's would.
    pub(super) fn retire(&mut self, i: usize) {
        let mut may_repeat = self.may_repeat.remove(&i).unwrap_or_default();
        may_repeat.extend(self.unsaved.remove(&i).unwrap_or_default().into_iter().map(|(_, data)| data));
        let abandoned = self.abandoned.iter().position(|a| *a == i).map(|at| self.abandoned.swap_remove(at)).is_some();
        let shipped = self.shipped.remove(&key(i)).unwrap_or_default();
        self.retired.push(RetiredFile { shipped, may_repeat, abandoned });
    }
}

/// What `Durable::retire` kept of a file whose inode number a later file got.
pub(super) struct RetiredFile {
    pub(super) shipped: Vec<(u64, u64, Vec<u8>)>,
    pub(super) may_repeat: Vec<Vec<u8>>,
    pub(super) abandoned: bool,
}

impl Collector {
    /// A freed inode number a new file may get: no name, and nothing holds it open (the
    /// collector, a pin, a writer, logrotate), so the kernel may give it again. Only once
    /// the collector has taken every event of the file that had it (see ARCHITECTURE.md:
    /// not modeled otherwise).
    pub(super) fn reusable(&self, m: &Model) -> Option<usize> {
        let named = |e: &Event, k: InodeKey| match e {
            Event::Write { inode, .. }
            | Event::Read { inode, .. }
            | Event::CutWrite { inode, .. }
            | Event::Truncate { inode, .. }
            | Event::Created { inode, .. }
            | Event::Renamed { inode, .. }
            | Event::Unlinked { inode } => *inode == k,
            Event::Copy { source, destination, .. } => *source == k || *destination == k,
        };
        (0..m.inodes.len()).find(|&i| {
            m.inodes[i].links == 0
                && m.inodes[i].born > 0
                && !self.engine.knows(&key(i))
                && !m.queue.iter().any(|(_, e)| named(e, key(i)))
                && !self.held.contains(&i)
                && !self.pins.iter().any(|(o, c)| *o == i || *c == i)
                && !m.writers.iter().any(|w| w.inode == i)
                && !m.slow.iter().any(|s| s.inode == i)
                && m.rotating.is_none_or(|(o, c, _)| o != i && c != i)
        })
    }

    pub(super) fn new(base: Instant, exact: bool) -> Collector {
        let rules = FlowRules::for_tests(Duration::ZERO);
        Collector {
            engine: Engine::new(vec![rules], exact, base),
            base,
            pins: Vec::new(),
            held: Vec::new(),
            durable: Durable::default(),
            refuse_percent: 0,
            drained: None,
            lost: false,
        }
    }

    pub(super) fn now(&self, m: &Model) -> Instant {
        self.base + Duration::from_nanos(m.now_ns)
    }

    pub(super) fn effects(&mut self, m: &mut Model) {
        let now = self.now(m);
        while let Some(effect) = self.engine.next_effect() {
            match effect {
                Effect::Track { inode, flow, from, .. } => {
                    let i = index(&inode);
                    // Opened by inode: it must still be there (a name, or held already).
                    if m.inodes[i].links > 0 || self.held.contains(&i) {
                        self.held.push(i);
                        let size = m.inodes[i].data.len() as u64;
                        self.engine.tracked(inode, flow, from, size, m.inodes[i].counted_truncations(), now);
                    } else {
                        m.note(format!("inode {} is gone before it could be opened", i + 1));
                        self.engine.gone_before_opened(inode, flow);
                        // What was written to it is lost, and counted.
                        m.may_lose = true;
                    }
                }
                Effect::HoldDerived { inode, open } => {
                    let i = index(&inode);
                    if open && m.inodes[i].links > 0 {
                        self.held.push(i);
                        self.engine.derived_opened(inode, now);
                    }
                    if self.held.contains(&i) || self.pins.iter().any(|(_, c)| *c == i) {
                        self.durable.store.insert(i, (0, true, Vec::new(), m.inodes[i].born));
                    }
                }
                Effect::Release { inode } => {
                    let i = index(&inode);
                    self.held.retain(|h| *h != i);
                    self.pins.retain(|(original, _)| *original != i);
                    if m.inodes[i].links == 0 {
                        self.durable.store.remove(&i);
                    }
                    self.engine.released(&inode);
                }
                Effect::ReadPosition { inode, at } => m.inodes[index(&inode)].read_position = at,
                Effect::PinCopy { inode, copy } => {
                    assert!(self.held.contains(&index(&copy)), "pinned a copy that is not held");
                    self.pins.push((index(&inode), index(&copy)));
                }
                Effect::UnpinCopy { inode, copy } => {
                    let pin = (index(&inode), index(&copy));
                    let at = self.pins.iter().position(|p| *p == pin).expect("unpinned a copy that was not pinned");
                    self.pins.swap_remove(at);
                }
                Effect::Ship { inode, framed, old } => {
                    let outcome = self.ship(m, inode, &framed);
                    self.engine.recovered_delivered(inode, outcome, framed, old, now);
                }
                Effect::Checkpoint { inode, force } => self.checkpoint(m, inode, force, now),
            }
        }
    }

    /// A checkpoint saved, if one is due, as the daemon's `checkpoint`.
    fn checkpoint(&mut self, m: &Model, inode: InodeKey, force: bool, now: Instant) {
        if let Some(due) = self.engine.checkpoint_due(&inode, force, now) {
            // The file's own record, or its copy's while its tail is read from there.
            let i = index(&due.record);
            // As the daemon: a copy neither held nor pinned yet (its pin is among the effects
            // still to come, with a checkpoint after it) is not read.
            if due.record != inode && !self.held.contains(&i) && !self.pins.iter().any(|(_, c)| *c == i) {
                return;
            }
            let data = &m.inodes[i].data;
            let end = due.acknowledged as usize;
            // As `LastBytes::of`: none when the file is shorter by then.
            let last =
                (end <= data.len()).then(|| data[end.saturating_sub(crate::checkpoint::LAST_BYTES)..end].to_vec());
            let found = Found {
                bytes_before: last.is_some(),
                truncations: Some(m.inodes[i].counted_truncations()),
                looked_ns: m.now_ns,
            };
            if self.engine.made_durable(&inode, due.acknowledged, found, now).is_none() {
                return;
            }
            let last = last.unwrap_or_default();
            self.durable.store.insert(i, (due.acknowledged, false, last, m.inodes[i].born));
            self.durable.unsaved.entry(i).or_default().retain(|(end, _)| *end > due.acknowledged);
        }
    }

    pub(super) fn ship(&mut self, m: &mut Model, inode: InodeKey, framed: &crate::framer::Framed) -> Delivery {
        let records = framed.records();
        if records.is_empty() {
            return Delivery::Accepted;
        }
        let take =
            if m.rng.chance(self.refuse_percent) { m.rng.below(records.len() as u64) as usize } else { records.len() };
        let out = self.durable.shipped.entry(inode).or_default();
        let unsaved = self.durable.unsaved.entry(index(&inode)).or_default();
        for r in &records[..take] {
            out.push((r.offset, r.end, framed.data(r).to_vec()));
            unsaved.push((r.end, framed.data(r).to_vec()));
        }
        if take == records.len() {
            Delivery::Accepted
        } else {
            m.note(format!("sink takes {take} of {} records of inode {}", records.len(), inode.ino));
            // Half the refusals are one file's (a throttled shard): it pauses alone.
            Delivery::Refused { holds_to: (take > 0).then(|| records[take].offset), alone: m.rng.chance(50) }
        }
    }

    /// The events the collector takes at once (all, or as many as its budget allows).
    pub(super) fn take_events(&mut self, m: &mut Model, all: bool) -> Vec<(u64, Event)> {
        // The ring overflowed: a write or read event is lost (the collector learns it from
        // the kernel's counter, at its next tick).
        // Rarely, a truncation's: the kernel's record of it stands in (`events_lost`). Only
        // with SIMULATION_LOSE_TRUNCATIONS=1: with earlier rotations still carried out, a
        // later truncation is paired with the lost one's copy (ARCHITECTURE.md).
        if !all
            && lose_truncations()
            && m.rng.chance(1)
            && let Some(i) = m.queue.iter().position(|(_, e)| matches!(e, Event::Truncate { .. }))
        {
            let (_, removed) = m.queue.remove(i).expect("found");
            if let Event::Truncate { inode, size_before, .. } = removed {
                m.note(format!("an event is lost: the truncation of inode {} from {size_before}", inode.ino));
            }
            // What it cut that was not read is lost, and counted (the kernel's record has
            // the size before); its copy, if any, goes unread.
            m.may_lose = true;
            self.lost = true;
        }
        if !all
            && m.rng.chance(3)
            && let Some(i) = m.queue.iter().position(|(_, e)| matches!(e, Event::Write { .. } | Event::Read { .. }))
        {
            let (at, removed) = m.queue.remove(i).expect("found");
            match &removed {
                Event::Write { inode, pid, pos, .. } => {
                    m.note(format!("an event is lost: w{pid}'s write at {pos} of inode {}", inode.ino));
                    // A write the collector never hears of: a truncation may cut its bytes
                    // before they are read, and nothing says how many there were.
                    m.may_lose = true;
                    m.uncounted = true;
                    // A copy's first write tells the collector it is one; without it, the
                    // sweep finds its bytes and takes it as it is.
                    if m.inodes[index(inode)].copied_at.is_some() {
                        m.inodes[index(inode)].unclassified = true;
                    }
                }
                Event::Read { inode, pid, pos, captured } => {
                    m.note(format!("an event is lost: pid {pid}'s read at {pos} of inode {}", inode.ino));
                    if !captured.is_empty() {
                        m.may_lose = true;
                        m.uncounted = true;
                    }
                    if *pid == super::LOGROTATE {
                        m.copier_read_lost(at);
                    }
                }
                _ => unreachable!("only writes and reads are dropped"),
            }
            self.lost = true;
        }
        let n = if all { m.queue.len() } else { m.rng.below(m.queue.len() as u64 + 1) as usize };
        let events = m.queue.drain(..n).collect();
        if m.queue.is_empty() {
            self.drained = Some(m.now_ns);
        }
        events
    }

    pub(super) fn apply(&mut self, m: &mut Model, events: Vec<(u64, Event)>) {
        let glob = m.glob;
        let flow_of = |p: &Path| pattern_matches(glob, &p.to_string_lossy()).then_some(0);
        for (_, event) in events {
            let now = self.now(m);
            self.engine.on_event(event, now, &flow_of);
            self.effects(m);
        }
        if let Some(at) = self.drained.take() {
            self.engine.ring_drained(at, self.base + std::time::Duration::from_nanos(at));
        }
    }

    /// One turn of the daemon's loop, with changes to the files racing its reads.
    pub(super) fn turn(&mut self, m: &mut Model, settle: bool) {
        let events = self.take_events(m, settle);
        self.apply(m, events);
        let now = self.now(m);
        let inodes = &m.inodes;
        let reads = self.engine.plan_reads(now, &|k: &InodeKey| Some(inodes[index(k)].data.len() as u64));
        self.effects(m);
        let mut chunks = Vec::new();
        for read in reads {
            let source = match read.from {
                ReadFrom::Original => index(&read.inode),
                ReadFrom::Copy(copy) => {
                    assert!(self.pins.contains(&(index(&read.inode), index(&copy))), "read from a copy not pinned");
                    index(&copy)
                }
            };
            let data = &m.inodes[source].data;
            let from = (read.at as usize).min(data.len());
            let bytes = data[from..(from + read.want).min(data.len())].to_vec();
            let now = self.now(m);
            let kernel = Some(m.inodes[index(&read.inode)].kernel_truncations());
            chunks.extend(self.engine.read_done(read, Ok(bytes), m.now_ns, kernel, now));
            self.effects(m);
        }
        // Changes while the reads were made: their events come late.
        if !settle {
            for _ in 0..m.rng.below(3) {
                m.act();
            }
        }
        // Everything in the ring by now: a change made before a read ended has its event
        // there (its hook ran as the change was made), so a read that may have seen a
        // truncation's new contents is always dropped.
        let late = self.take_events(m, true);
        let mut truncated_at: HashMap<InodeKey, u64> = HashMap::new();
        for (at, e) in &late {
            if let Event::Truncate { inode, .. } = e {
                truncated_at.entry(*inode).or_insert(*at);
            }
        }
        // As the daemon does: every chunk framed, all shipped in one delivery, then the
        // outcomes handed back.
        let mut framed_all = Vec::new();
        for chunk in chunks {
            let inode = chunk.inode;
            let mut framed = crate::framer::Framed::default();
            if self.engine.frame(chunk, truncated_at.get(&inode).copied(), &mut framed) {
                framed_all.push((inode, framed));
            }
        }
        let outcomes: Vec<Delivery> = framed_all.iter().map(|(inode, framed)| self.ship(m, *inode, framed)).collect();
        let now = self.now(m);
        for ((inode, _), outcome) in framed_all.into_iter().zip(outcomes) {
            self.engine.delivered(inode, outcome, now);
            self.engine.after_delivery(inode, now);
        }
        self.effects(m);
        self.apply(m, late);
    }

    /// Stopped cleanly (SIGTERM) and started again, as the daemon's `shutdown`: the events
    /// there are taken, a rotation under way is carried on for at most FINISH_ON_STOP
    /// (writers and logrotate go on meanwhile), then every held file's checkpoint is
    /// saved. Nothing is sent twice after it; only a rotation still under way then may
    /// lose bytes (the daemon says so in its log, uncounted).
    pub(super) fn stop(mut self, m: &mut Model) -> Collector {
        m.note("the collector is stopped (SIGTERM)".into());
        let events = self.take_events(m, true);
        self.apply(m, events);
        let deadline = m.now_ns + FINISH_ON_STOP.as_nanos() as u64;
        while self.engine.truncating() && m.now_ns < deadline {
            m.now_ns += 10_000_000;
            let now = self.now(m);
            self.engine.resume_paused(now);
            self.engine.read_due(now);
            self.turn(m, false);
        }
        if self.engine.truncating() {
            m.note("stopping with a rotation under way: its unread tail is lost".into());
            m.may_lose = true;
            m.uncounted = true;
        }
        let now = self.now(m);
        self.engine.settle_all(now);
        self.effects(m);
        let held: Vec<InodeKey> = self.engine.held().collect();
        for inode in held {
            self.checkpoint(m, inode, true, now);
        }
        self.effects(m);
        let mut durable = std::mem::take(&mut self.durable);
        durable.stops += 1;
        durable.lost_before += self.engine.counters[0].bytes_lost;
        // Taken past a checkpoint and not saved: sent again after the restart, which a
        // clean stop must not do; `check` finds them as duplicates.
        durable.unsaved.clear();
        self.start_again(m, durable)
    }

    /// Killed and started again: what the sink took past each checkpoint may be sent
    /// again; the kernel's state (read positions, capture windows, the ring) starts
    /// afresh.
    pub(super) fn restart(mut self, m: &mut Model) -> Collector {
        // A rotation under way dies with what the collector held of it in memory: captured
        // bytes, a held truncation, a copy's unread tail. Lost, and nothing counts them.
        if self.engine.truncating() || !m.script.is_empty() || !m.slow.is_empty() {
            m.note("killed with a rotation under way".into());
            m.may_lose = true;
            m.uncounted = true;
        }
        let mut durable = std::mem::take(&mut self.durable);
        for (i, unsaved) in std::mem::take(&mut durable.unsaved) {
            durable.may_repeat.entry(i).or_default().extend(unsaved.into_iter().map(|(_, data)| data));
        }
        durable.crashes += 1;
        durable.lost_before += self.engine.counters[0].bytes_lost;
        m.note("the collector is killed and started again".into());
        self.start_again(m, durable)
    }

    /// A new collector over what outlived this one.
    fn start_again(self, m: &mut Model, durable: Durable) -> Collector {
        // A truncation whose event the dead collector never took happened, for the new
        // one, while it was stopped: what it had not read of the old contents is lost, and
        // nothing counts it. If the new contents have grown past the checkpoint, the bytes
        // before it tell (`checkpoint::LastBytes`): reading starts from 0, not mid-line.
        // So is a cut write whose event it never took: the truncation took its bytes, and
        // only that event could have counted them.
        for (_, e) in &m.queue {
            if let Event::Truncate { .. } | Event::CutWrite { .. } = e {
                m.may_lose = true;
                m.uncounted = true;
            }
        }
        m.queue.clear();
        // A copy the dead collector had not saved as one (its events died with it, or
        // were still in the ring) is, for the new one, a file matching the pattern.
        for (name, &i) in &m.names {
            if !m.inodes[i].original
                && m.matches(name)
                && !durable.store.get(&i).is_some_and(|(_, derived, _, born)| *derived && *born == m.inodes[i].born)
            {
                m.inodes[i].unclassified = true;
            }
        }
        // A copytruncate whose copy was made before the restart: the new collector never
        // took its creation, so it cannot tell the copy, and its truncation loses what was
        // unread (counted: the new collector takes the truncation).
        if m.rotating.is_some() && m.script.iter().any(|s| matches!(s, super::model::Step::Truncate)) {
            m.note("restarted with a copytruncate's copy made: the new collector cannot know it".into());
            m.may_lose = true;
        }
        // Likewise a write the truncation already cut whose exit hook has not run: its
        // state from entry to exit was in the dead collector's maps, so no event comes.
        if m.slow.iter().any(|s| m.inodes[s.inode].truncations > s.truncations_then) {
            m.may_lose = true;
            m.uncounted = true;
        }
        for f in &mut m.inodes {
            f.read_position = None;
            f.capture_until = 0;
        }
        let mut c = Collector::new(self.base, m.exact);
        c.durable = durable;
        c.refuse_percent = self.refuse_percent;
        c.start(m);
        c
    }

    /// Start-up, as the daemon's: the log at its name from its checkpoint, then every
    /// checkpointed inode found again in the directory.
    pub(super) fn start(&mut self, m: &mut Model) {
        // What the pattern matches (the log's name, and more with a glob), then what the
        // state directory remembers.
        let found: Vec<(String, usize)> =
            m.names.iter().filter(|(name, _)| m.matches(name)).map(|(n, i)| (n.clone(), *i)).collect();
        for (name, i) in found {
            self.pick_up(m, i, name, false);
        }
        let mut known: Vec<usize> = self.durable.store.keys().copied().collect();
        known.sort();
        for i in known {
            if self.engine.knows(&key(i)) {
                continue;
            }
            match m.names.iter().find(|(_, n)| **n == i).map(|(name, _)| name.clone()) {
                // As the daemon: a checkpoint of a file whose number another file has now.
                Some(_) if self.durable.store.get(&i).is_some_and(|(.., born)| *born != m.inodes[i].born) => {
                    self.durable.store.remove(&i);
                }
                Some(name) => self.pick_up(m, i, name, true),
                None => {
                    self.durable.store.remove(&i);
                }
            }
        }
        // Originals the new collector does not hold are lost to it.
        for (i, f) in m.inodes.iter().enumerate() {
            if f.original && !self.engine.holds(&key(i)) && !self.durable.abandoned.contains(&i) {
                self.durable.abandoned.push(i);
            }
        }
    }

    pub(super) fn pick_up(&mut self, m: &mut Model, i: usize, path: String, rotated: bool) {
        let now = self.now(m);
        let size = m.inodes[i].data.len() as u64;
        let data = &m.inodes[i].data;
        let born = m.inodes[i].born;
        let from = match self.durable.store.get(&i) {
            // As `Identity::matches`: a checkpoint of another file with this number.
            Some((.., was)) if *was != born => {
                m.note(format!("inode number {} reused by a new file: its old checkpoint does not apply", i + 1));
                0
            }
            Some((_, true, _, _)) => {
                self.engine.remembered_derived(key(i), PathBuf::from(path), now);
                return;
            }
            Some((ack, false, last, _))
                if *ack <= size && data[*ack as usize - last.len()..*ack as usize] == last[..] =>
            {
                if !m.inodes[i].original {
                    m.note(format!("inode {} holds an unread tail: read from {ack}", i + 1));
                    m.inodes[i].ships_tail = true;
                }
                *ack
            }
            Some((ack, false, _, _)) if *ack <= size => {
                m.note(format!("inode {} was truncated and written past its checkpoint: from 0", i + 1));
                0
            }
            _ => 0,
        };
        self.engine.discovered(key(i), 0, PathBuf::from(path), from, rotated, now);
        self.effects(m);
    }

    pub(super) fn tick(&mut self, m: &mut Model) {
        let now = self.now(m);
        // As the daemon's: checkpoints not where their files were acknowledged to.
        for inode in self.engine.unsaved() {
            self.checkpoint(m, inode, false, now);
        }
        self.effects(m);
        self.engine.resume_paused(now);
        let inodes = &m.inodes;
        let files = self.engine.flush_idle(now, &|k: &InodeKey| Some(inodes[index(k)].data.len() as u64));
        for (inode, framed) in files {
            let outcome = self.ship(m, inode, &framed);
            self.engine.delivered(inode, outcome, now);
        }
        let inodes = &m.inodes;
        let look = FileLookup {
            size_of: &|k: &InodeKey| Some(inodes[index(k)].data.len() as u64),
            truncations_of: &|k: &InodeKey| Some(inodes[index(k)].counted_truncations()),
            boot_ns: m.now_ns,
        };
        self.engine.expire(now, look);
        self.effects(m);
        if std::mem::take(&mut self.lost) {
            let inodes = &m.inodes;
            self.engine.events_lost(
                m.now_ns,
                &|k: &InodeKey| Some(inodes[index(k)].data.len() as u64),
                &|k: &InodeKey| Some(inodes[index(k)].kernel_truncations()),
            );
            self.effects(m);
        }
        self.engine.read_due(now);
    }
}

/// Whether histories may lose truncation events (SIMULATION_LOSE_TRUNCATIONS=1).
fn lose_truncations() -> bool {
    static LOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOSE.get_or_init(|| std::env::var("SIMULATION_LOSE_TRUNCATIONS").is_ok_and(|v| v == "1"))
}
