//! A deterministic simulation of the engine against a model filesystem and a model of the
//! kernel's event stream: random histories from a seed, each checked for what the
//! collector promises (../SEMANTICS.md): every byte written to a shipped file is shipped
//! exactly once and in order, copies and derived files are never shipped, and bytes are
//! reported lost only where the history made them unrecoverable, and then exactly.
//!
//! The model, and what it takes from the kernel programs:
//! - one watched directory, `/logs`; the flow ships `/logs/app.log`;
//! - writers append whole lines (O_APPEND) to the inode they hold open; after a rotation
//!   by rename they reopen the name a little later, as after a HUP;
//! - every write is reported as it lands (its event carries its first `CAPTURE_LEN` bytes
//!   within a capture window that another task's read opens), or, for a slow one, after
//!   a truncation that may have cut it (then as a cut write naming that truncation);
//! - logrotate's copytruncate: create the copy, 8 KiB read/write rounds (the reads carry
//!   the bytes past the collector's read position), then ftruncate, with or without
//!   compress (the copy read into a .gz, then deleted);
//! - rotation by rename and create, delete and recreate, truncation in place;
//! - events are taken by the engine in order, any number at a time (its budget), and late:
//!   reads see the files as they are, with events of earlier changes still in the ring;
//!   after the reads, every event in the ring is taken (an event is in the ring once its
//!   change is made);
//! - the sink refuses batches, or takes only their first records.
//!
//! `SIMULATION_SEED=<seed>` replays one history and prints it; `SIMULATION_HISTORIES=<n>`
//! runs more (or fewer) than the default.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use collector_common::{CAPTURE_LEN, InodeKey, READ_CAPTURE_PIECES, READ_CAPTURE_REACH};

use super::{Delivery, Effect, Engine, Event, FlowRules, ReadFrom};
use crate::{framer::FramerConfig, truncation::CutWrite};

const HISTORIES: u64 = 20_000;
const LOG: &str = "/logs/app.log";
const LOGROTATE: u32 = 900;
const GZIP: u32 = 901;
/// logrotate copies in rounds of this size.
const COPY_ROUND: usize = 8192;

/// splitmix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    /// Names it has.
    links: u32,
    /// Until this time, writes carry their bytes (another task read it).
    capture_until: u64,
    /// The collector's read position, as the engine last said.
    read_position: Option<u64>,
    truncations: u64,
    /// When it was last truncated.
    truncated_ns: u64,
    /// Where writes landed that carried no bytes (no capture window), since its last
    /// truncation.
    uncaptured: Vec<u64>,
    /// It held the flow's name at some point: a shipped file.
    original: bool,
    /// The lines that landed in it, in order.
    lines: Vec<Vec<u8>>,
}

/// A write that landed and whose event comes later.
struct SlowWrite {
    inode: usize,
    pos: u64,
    bytes: Vec<u8>,
    pid: u32,
    truncations_then: u64,
}

struct Writer {
    pid: u32,
    inode: usize,
    /// Reopens the log's name at this many steps from now (after a rotation by rename).
    reopen_in: Option<u32>,
}

/// One step of a rotation in progress.
#[derive(Clone, Debug)]
enum Step {
    CreateCopy,
    CopyRound,
    Truncate,
    Compress,
    DeleteCopy,
}

struct Model {
    rng: Rng,
    now_ns: u64,
    inodes: Vec<Inode>,
    names: BTreeMap<String, usize>,
    /// Events not taken yet, with when they happened.
    queue: VecDeque<(u64, Event)>,
    writers: Vec<Writer>,
    slow: Vec<SlowWrite>,
    script: VecDeque<Step>,
    /// The rotation in progress: the original, its copy, how far the copy got.
    rotating: Option<(usize, usize, usize)>,
    lines_written: u64,
    /// Where rotation puts the log (logrotate's default, `dateext`, `olddir`).
    rotated: String,
    /// The kernel reads a truncation's size before under the inode lock (fentry, kprobe
    /// modes) or as the syscall begins (tracepoint mode: a write can land in between).
    exact: bool,
    /// Something happened that can lose bytes for good (a truncation in place, a write
    /// longer than a capture): loss is allowed, but must be counted exactly.
    may_lose: bool,
    /// Bytes may be lost without the collector being able to know how many (an event
    /// that carried the only copy of them was lost).
    uncounted: bool,
    log: Vec<String>,
    verbose: bool,
}

fn key(inode: usize) -> InodeKey {
    InodeKey::new(1, inode as u64 + 1)
}

fn index(key: &InodeKey) -> usize {
    key.ino as usize - 1
}

impl Model {
    fn new(seed: u64, verbose: bool) -> Model {
        let mut m = Model {
            rng: Rng(seed),
            now_ns: 1_000_000_000,
            inodes: Vec::new(),
            names: BTreeMap::new(),
            queue: VecDeque::new(),
            writers: Vec::new(),
            slow: Vec::new(),
            script: VecDeque::new(),
            rotating: None,
            lines_written: 0,
            rotated: String::new(),
            exact: true,
            may_lose: false,
            uncounted: false,
            log: Vec::new(),
            verbose,
        };
        m.rotated =
            ["/logs/app.log.1", "/logs/app.log-20261203", "/logs/old/app.log.1"][m.rng.below(3) as usize].into();
        m.exact = m.rng.chance(50);
        let log = m.create(LOG, 100, false);
        for pid in [100, 101] {
            m.writers.push(Writer { pid, inode: log, reopen_in: None });
        }
        m
    }

    fn note(&mut self, what: String) {
        if self.verbose {
            println!("{:>8} µs  {what}", self.now_ns / 1000);
        }
        self.log.push(what);
    }

    fn emit(&mut self, event: Event) {
        self.queue.push_back((self.now_ns, event));
    }

    fn create(&mut self, name: &str, pid: u32, report: bool) -> usize {
        if let Some(old) = self.names.remove(name) {
            self.unlink_inode(old, report);
        }
        self.inodes.push(Inode { links: 1, original: name == LOG, ..Inode::default() });
        let inode = self.inodes.len() - 1;
        self.names.insert(name.to_owned(), inode);
        if report {
            self.emit(Event::Created { inode: key(inode), path: PathBuf::from(name), pid });
        }
        inode
    }

    fn unlink_inode(&mut self, inode: usize, report: bool) {
        self.inodes[inode].links -= 1;
        if report {
            self.emit(Event::Unlinked { inode: key(inode) });
        }
    }

    fn rename(&mut self, from: &str, to: &str) {
        let Some(inode) = self.names.remove(from) else { return };
        if let Some(old) = self.names.insert(to.to_owned(), inode) {
            self.unlink_inode(old, true);
        }
        if to == LOG {
            self.inodes[inode].original = true;
        }
        self.emit(Event::Renamed { inode: key(inode), path: PathBuf::from(to) });
    }

    /// A writer appends one line.
    fn write(&mut self, w: usize) {
        let (pid, inode) = (self.writers[w].pid, self.writers[w].inode);
        self.lines_written += 1;
        let mut line = format!("w{pid} line {} ", self.lines_written).into_bytes();
        // Mostly short lines; now and then one longer than a capture.
        let pad = if self.rng.chance(1) { CAPTURE_LEN + 100 } else { self.rng.below(200) as usize };
        if pad > CAPTURE_LEN {
            self.may_lose = true;
        }
        line.extend(std::iter::repeat_n(b'x', pad));
        line.push(b'\n');
        let f = &mut self.inodes[inode];
        let pos = f.data.len() as u64;
        f.data.extend_from_slice(&line);
        f.lines.push(line[..line.len() - 1].to_vec());
        let truncations_then = f.truncations;
        self.note(format!("w{pid} writes {} bytes at {pos} of inode {}", line.len(), inode + 1));
        if self.rng.chance(5) {
            self.slow.push(SlowWrite { inode, pos, bytes: line, pid, truncations_then });
        } else {
            self.report_write(inode, pos, line, pid);
        }
    }

    fn report_write(&mut self, inode: usize, pos: u64, bytes: Vec<u8>, pid: u32) {
        let f = &mut self.inodes[inode];
        let captured =
            if self.now_ns < f.capture_until { bytes[..bytes.len().min(CAPTURE_LEN)].to_vec() } else { Vec::new() };
        if captured.is_empty() {
            f.uncaptured.push(pos);
        }
        self.emit(Event::Write { inode: key(inode), pid, pos, len: bytes.len() as u64, captured });
    }

    /// A slow write's exit hook runs: cut by a truncation since it landed, or not.
    fn finish_slow(&mut self, i: usize) {
        let s = self.slow.swap_remove(i);
        let (cut, truncated_ns) =
            (self.inodes[s.inode].truncations > s.truncations_then, self.inodes[s.inode].truncated_ns);
        self.note(format!("w{} write at {} of inode {} reports (cut: {cut})", s.pid, s.pos, s.inode + 1));
        if cut {
            // The kernel checks writes for cut bytes for CUT_WATCH_NS, and the engine holds
            // a truncation for half that: a later one is too late, its bytes lost.
            if self.now_ns - truncated_ns >= crate::truncation::HOLD.as_nanos() as u64 {
                self.may_lose = true;
            }
            let captured = s.bytes[..s.bytes.len().min(CAPTURE_LEN)].to_vec();
            let cut = CutWrite { pos: s.pos, len: s.bytes.len() as u64, bytes: captured };
            self.emit(Event::CutWrite { inode: key(s.inode), truncation: s.truncations_then + 1, cut });
        } else {
            self.report_write(s.inode, s.pos, s.bytes, s.pid);
        }
    }

    /// Another task reads `len` bytes at `pos`: it opens the capture window, and carries
    /// what lies past the collector's read position.
    fn other_read(&mut self, inode: usize, pos: usize, len: usize, pid: u32) {
        let now = self.now_ns;
        let f = &mut self.inodes[inode];
        if pos >= f.data.len() {
            // A read at the end returns nothing: the kernel reports nothing.
            return;
        }
        if f.original && f.read_position.is_none() {
            // The collector has not said where it reads this file yet (it has not taken
            // its creation's event): the kernel carries none of the bytes read, and if the
            // copy is gone before it can be opened, they are lost.
            self.may_lose = true;
        }
        f.capture_until = now + collector_common::WatchedInode::CAPTURE_WINDOW_NS;
        let end = (pos + len).min(f.data.len());
        let captured = match f.read_position {
            Some(at) if (end as u64) > at && (pos as u64) < at + READ_CAPTURE_REACH => {
                let from = pos.max(at as usize);
                f.data[from..end].to_vec()
            }
            _ => Vec::new(),
        };
        if captured.is_empty() {
            self.emit(Event::Read { inode: key(inode), pid, pos: pos as u64, captured });
            return;
        }
        // In pieces of at most CAPTURE_LEN, and at most READ_CAPTURE_PIECES of them.
        let from = end - captured.len();
        for (i, piece) in captured.chunks(CAPTURE_LEN).take(READ_CAPTURE_PIECES).enumerate() {
            let at = (from + i * CAPTURE_LEN) as u64;
            self.emit(Event::Read { inode: key(inode), pid, pos: at, captured: piece.to_vec() });
        }
    }

    fn truncate(&mut self, inode: usize, pid: u32) {
        let size_before = self.inodes[inode].data.len() as u64;
        if !self.exact
            && self.rng.chance(30)
            && let Some(w) = self.writers.iter().position(|w| w.inode == inode)
        {
            // Tracepoint mode reads the size as the syscall begins; a write lands before
            // the cut. Without a capture window, its bytes are gone with the cut.
            self.write(w);
            if self.now_ns >= self.inodes[inode].capture_until {
                self.may_lose = true;
            }
        }
        let f = &mut self.inodes[inode];
        f.truncations += 1;
        f.data.clear();
        // The truncation closes the capture window.
        f.capture_until = 0;
        f.truncated_ns = self.now_ns;
        f.uncaptured.clear();
        let truncation = f.truncations;
        self.note(format!("pid {pid} truncates inode {} from {size_before}", inode + 1));
        // The truncation's own event is made at its exit hook: writes it cut may report
        // theirs first (their exit hooks run on other CPUs meanwhile).
        if self.rng.chance(50) {
            while let Some(i) = self.slow.iter().position(|w| w.inode == inode) {
                self.finish_slow(i);
            }
        }
        let at_ns = self.now_ns;
        self.emit(Event::Truncate { inode: key(inode), size_before, size_after: 0, truncation, at_ns });
    }

    /// The next step of the rotation in progress.
    fn rotation_step(&mut self) {
        let Some(step) = self.script.pop_front() else { return };
        match step {
            Step::CreateCopy => {
                let original = self.names[LOG];
                let copy = self.create(&self.rotated.clone(), LOGROTATE, true);
                self.note(format!("logrotate creates copy inode {}", copy + 1));
                self.rotating = Some((original, copy, 0));
            }
            Step::CopyRound => {
                let Some((original, copy, done)) = self.rotating else { return };
                let end = (done + COPY_ROUND).min(self.inodes[original].data.len());
                if done < end {
                    self.other_read(original, done, end - done, LOGROTATE);
                    let bytes = self.inodes[original].data[done..end].to_vec();
                    self.inodes[copy].data.extend_from_slice(&bytes);
                    self.emit(Event::Write {
                        inode: key(copy),
                        pid: LOGROTATE,
                        pos: done as u64,
                        len: bytes.len() as u64,
                        captured: Vec::new(),
                    });
                    self.note(format!("logrotate copies {done}..{end}"));
                }
                self.rotating = Some((original, copy, end));
                // Rounds go on until the copy reaches the file's end, as logrotate's do.
                if end < self.inodes[original].data.len() {
                    self.script.push_front(Step::CopyRound);
                }
            }
            Step::Truncate => {
                let Some((original, _, copied)) = self.rotating else { return };
                // Bytes written after the copy with no capture window open (the copy read
                // nothing, so none was opened) exist nowhere once truncated.
                if self.inodes[original].uncaptured.iter().any(|pos| *pos >= copied as u64) {
                    self.may_lose = true;
                }
                self.truncate(original, LOGROTATE);
            }
            Step::Compress => {
                let Some((_, copy, _)) = self.rotating else { return };
                let len = self.inodes[copy].data.len();
                self.other_read(copy, 0, len, GZIP);
                let gz = self.create(&format!("{}.gz", self.rotated), GZIP, true);
                self.inodes[gz].data = b"\x1f\x8bcompressed".to_vec();
                self.emit(Event::Write { inode: key(gz), pid: GZIP, pos: 0, len: 12, captured: Vec::new() });
                self.note("gzip compresses the copy".into());
            }
            Step::DeleteCopy => {
                if let Some(copy) = self.names.remove(&self.rotated.clone()) {
                    self.unlink_inode(copy, true);
                    self.note("the copy is deleted".into());
                }
                self.rotating = None;
            }
        }
        if self.script.is_empty() {
            self.rotating = None;
        }
    }

    /// Starts a rotation, or does another change to the log's name or size.
    fn rotate(&mut self) {
        match self.rng.below(10) {
            0..=4 => {
                let compress = self.rng.chance(50);
                self.note(format!("copytruncate (compress: {compress})"));
                self.script.extend([Step::CreateCopy, Step::CopyRound, Step::Truncate]);
                if compress {
                    self.script.extend([Step::Compress, Step::DeleteCopy]);
                }
            }
            5..=7 => {
                let delaycompress = self.rng.chance(50);
                self.note(format!("rotation by rename and create (delaycompress: {delaycompress})"));
                let (rotated, older) = (self.rotated.clone(), format!("{}.2", self.rotated));
                self.rename(&rotated, &older);
                self.rename(LOG, &rotated);
                self.create(LOG, LOGROTATE, true);
                // delaycompress: the rotation before this one is compressed now, and deleted.
                if delaycompress && let Some(&old) = self.names.get(&older) {
                    let len = self.inodes[old].data.len();
                    self.other_read(old, 0, len, GZIP);
                    let gz = self.create(&format!("{older}.gz"), GZIP, true);
                    self.inodes[gz].data = b"\x1f\x8bcompressed".to_vec();
                    self.emit(Event::Write { inode: key(gz), pid: GZIP, pos: 0, len: 12, captured: Vec::new() });
                    self.names.remove(&older);
                    self.unlink_inode(old, true);
                }
                for w in &mut self.writers {
                    w.reopen_in = Some(self.rng.below(4) as u32);
                }
            }
            8 => {
                self.note("delete and recreate".into());
                if let Some(old) = self.names.remove(LOG) {
                    self.unlink_inode(old, true);
                }
                self.create(LOG, 102, true);
                for w in &mut self.writers {
                    w.reopen_in = Some(self.rng.below(4) as u32);
                }
            }
            _ => {
                let log = self.names[LOG];
                self.may_lose = true;
                self.truncate(log, 102);
            }
        }
    }

    /// One change to the files, or none.
    fn act(&mut self) {
        self.now_ns += self.rng.below(2_000_000);
        for w in 0..self.writers.len() {
            match self.writers[w].reopen_in {
                Some(0) => {
                    self.writers[w].reopen_in = None;
                    self.writers[w].inode = self.names[LOG];
                }
                Some(n) => self.writers[w].reopen_in = Some(n - 1),
                None => {}
            }
        }
        match self.rng.below(20) {
            0..=11 => {
                let w = self.rng.below(self.writers.len() as u64) as usize;
                self.write(w);
            }
            12..=15 if !self.script.is_empty() => self.rotation_step(),
            16 if !self.slow.is_empty() => {
                let i = self.rng.below(self.slow.len() as u64) as usize;
                self.finish_slow(i);
            }
            17 if self.script.is_empty() && self.slow.is_empty() => self.rotate(),
            _ => {}
        }
    }
}

/// What the sink took: per inode, the records (file range and bytes).
#[derive(Default)]
struct Shipped {
    records: HashMap<InodeKey, Vec<(u64, u64, Vec<u8>)>>,
}

struct Collector {
    engine: Engine,
    base: Instant,
    /// Copies pinned per (original, copy): the copy's contents stay readable.
    pins: Vec<(usize, usize)>,
    held: Vec<usize>,
    /// Originals gone before they could be opened (created and deleted within the
    /// events' lag): nothing of them can be read, and nothing says how much was written.
    unopened: Vec<usize>,
    shipped: Shipped,
    refuse_percent: u64,
    /// The ring was emptied by a take at this time.
    drained: Option<u64>,
    /// Events were lost since the last tick.
    lost: bool,
}

impl Collector {
    fn new(base: Instant, exact: bool) -> Collector {
        let rules = FlowRules {
            name: "app".into(),
            framer: FramerConfig {
                multiline_start: None,
                multiline_flush: Duration::from_millis(500),
                skip_header_lines: 0,
                max_record_bytes: 1 << 20,
                truncated_terminator: Vec::new(),
            },
            max_batch_age: Duration::ZERO,
            full_batch_bytes: 1 << 20,
            rotated_idle: Duration::from_secs(60),
            sweep_interval: Duration::ZERO,
        };
        Collector {
            engine: Engine::new(vec![rules], exact, base),
            base,
            pins: Vec::new(),
            held: Vec::new(),
            unopened: Vec::new(),
            shipped: Shipped::default(),
            refuse_percent: 0,
            drained: None,
            lost: false,
        }
    }

    fn now(&self, m: &Model) -> Instant {
        self.base + Duration::from_nanos(m.now_ns)
    }

    fn effects(&mut self, m: &mut Model) {
        let now = self.now(m);
        while let Some(effect) = self.engine.next_effect() {
            match effect {
                Effect::Track { inode, flow, from, .. } => {
                    let i = index(&inode);
                    // Opened by inode: it must still be there (a name, or held already).
                    if m.inodes[i].links > 0 || self.held.contains(&i) {
                        self.held.push(i);
                        let size = m.inodes[i].data.len() as u64;
                        self.engine.tracked(inode, flow, from, size, now);
                    } else {
                        m.note(format!("inode {} is gone before it could be opened", i + 1));
                        self.unopened.push(i);
                    }
                }
                Effect::HoldDerived { inode, open } => {
                    let i = index(&inode);
                    if open && m.inodes[i].links > 0 {
                        self.held.push(i);
                        self.engine.derived_opened(inode, now);
                    }
                }
                Effect::Release { inode } => {
                    self.held.retain(|h| *h != index(&inode));
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
                Effect::Checkpoint { inode, force } => {
                    if let Some(due) = self.engine.checkpoint_due(&inode, force, now) {
                        self.engine.made_durable(&inode, due.acknowledged, now);
                    }
                }
            }
        }
    }

    fn ship(&mut self, m: &mut Model, inode: InodeKey, framed: &crate::framer::Framed) -> Delivery {
        let records = framed.records();
        if records.is_empty() {
            return Delivery::Accepted;
        }
        let take =
            if m.rng.chance(self.refuse_percent) { m.rng.below(records.len() as u64) as usize } else { records.len() };
        let out = self.shipped.records.entry(inode).or_default();
        for r in &records[..take] {
            out.push((r.offset, r.end, framed.data(r).to_vec()));
        }
        if take == records.len() {
            Delivery::Accepted
        } else {
            m.note(format!("sink takes {take} of {} records of inode {}", records.len(), inode.ino));
            Delivery::Refused { holds_to: (take > 0).then(|| records[take].offset) }
        }
    }

    /// The events the collector takes at once (all, or as many as its budget allows).
    fn take_events(&mut self, m: &mut Model, all: bool) -> Vec<(u64, Event)> {
        // The ring overflowed: a write or read event is lost (the collector learns it from
        // the kernel's counter, at its next tick).
        if !all
            && m.rng.chance(3)
            && let Some(i) = m.queue.iter().position(|(_, e)| matches!(e, Event::Write { .. } | Event::Read { .. }))
        {
            match m.queue.remove(i) {
                // A write the collector never hears of: a truncation may cut its bytes
                // before they are read, and nothing says how many there were.
                Some((_, Event::Write { .. })) => {
                    m.may_lose = true;
                    m.uncounted = true;
                }
                Some((_, Event::Read { captured, .. })) if !captured.is_empty() => {
                    m.may_lose = true;
                    m.uncounted = true;
                }
                _ => {}
            }
            m.note("an event is lost".into());
            self.lost = true;
        }
        let n = if all { m.queue.len() } else { m.rng.below(m.queue.len() as u64 + 1) as usize };
        let events = m.queue.drain(..n).collect();
        if m.queue.is_empty() {
            self.drained = Some(m.now_ns);
        }
        events
    }

    fn apply(&mut self, m: &mut Model, events: Vec<(u64, Event)>) {
        let flow_of = |p: &Path| (p == Path::new(LOG)).then_some(0);
        for (_, event) in events {
            let now = self.now(m);
            self.engine.on_event(event, now, &flow_of);
            self.effects(m);
        }
        if let Some(at) = self.drained.take() {
            self.engine.ring_drained(at);
        }
    }

    /// One turn of the daemon's loop, with changes to the files racing its reads.
    fn turn(&mut self, m: &mut Model, settle: bool) {
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
            chunks.extend(self.engine.read_done(read, Ok(bytes), m.now_ns, now));
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
        for chunk in chunks {
            let inode = chunk.inode;
            let mut framed = crate::framer::Framed::default();
            if self.engine.frame(chunk, truncated_at.get(&inode).copied(), &mut framed) {
                let outcome = self.ship(m, inode, &framed);
                let now = self.now(m);
                self.engine.delivered(inode, outcome, now);
                self.engine.after_delivery(inode, now);
            }
            self.effects(m);
        }
        self.apply(m, late);
    }

    fn tick(&mut self, m: &mut Model) {
        let now = self.now(m);
        self.engine.resume_paused(now);
        for (inode, framed) in self.engine.flush_idle(now) {
            let outcome = self.ship(m, inode, &framed);
            self.engine.delivered(inode, outcome, now);
        }
        let inodes = &m.inodes;
        self.engine.expire(now, &|k: &InodeKey| Some(inodes[index(k)].data.len() as u64));
        self.effects(m);
        if std::mem::take(&mut self.lost) {
            let inodes = &m.inodes;
            self.engine.events_lost(m.now_ns, &|k: &InodeKey| Some(inodes[index(k)].data.len() as u64));
            self.effects(m);
        }
        self.engine.read_due(now);
    }
}

/// What one history did.
struct Outcome {
    events: u64,
    violations: Vec<String>,
}

fn history(seed: u64, verbose: bool) -> Outcome {
    let mut m = Model::new(seed, verbose);
    let mut c = Collector::new(Instant::now(), m.exact);
    c.refuse_percent = [0, 5, 20][m.rng.below(3) as usize];
    c.engine.discovered(key(m.names[LOG]), 0, PathBuf::from(LOG), 0, false, c.now(&m));
    c.effects(&mut m);
    let steps = 20 + m.rng.below(200);
    let mut events = 0;
    for _ in 0..steps {
        m.act();
        if m.rng.chance(30) {
            events += m.queue.len() as u64;
            c.turn(&mut m, false);
        }
        if m.rng.chance(10) {
            c.tick(&mut m);
        }
    }
    // The end: the writers stop, rotations finish, slow writes report, and the collector
    // catches up with a sink that takes everything.
    while !m.script.is_empty() {
        m.rotation_step();
    }
    while !m.slow.is_empty() {
        m.finish_slow(0);
    }
    c.refuse_percent = 0;
    for _ in 0..20 {
        events += m.queue.len() as u64;
        m.now_ns += 300_000_000;
        c.tick(&mut m);
        c.turn(&mut m, true);
    }
    let violations = check(&m, &c);
    Outcome { events, violations }
}

/// The promises, checked against what the model wrote and the sink took.
fn check(m: &Model, c: &Collector) -> Vec<String> {
    let mut violations = Vec::new();
    let mut written = 0u64;
    let mut shipped_bytes = 0u64;
    for (i, f) in m.inodes.iter().enumerate() {
        let shipped = c.shipped.records.get(&key(i)).map(Vec::as_slice).unwrap_or_default();
        if c.unopened.contains(&i) {
            continue;
        }
        if !f.original {
            if !shipped.is_empty() {
                violations.push(format!(
                    "inode {} is a copy or derived file, and {} of its records were shipped",
                    i + 1,
                    shipped.len()
                ));
            }
            continue;
        }
        written += f.lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
        shipped_bytes += shipped.iter().map(|(at, end, _)| end - at).sum::<u64>();
        if m.verbose {
            let w: u64 = f.lines.iter().map(|l| l.len() as u64 + 1).sum();
            let sh: u64 = shipped.iter().map(|(at, end, _)| end - at).sum();
            println!("  inode {}: {w} bytes written, {sh} shipped", i + 1);
            for (at, end, data) in shipped {
                println!(
                    "  inode {} shipped {at}..{end} {:?}",
                    i + 1,
                    String::from_utf8_lossy(&data[..data.len().min(24)])
                );
            }
        }
        // Whole lines shipped, in the order they landed, none twice. Where bytes may be
        // lost, lines may be missing, and a line may be cut short where a gap begins.
        let show = |data: &[u8]| String::from_utf8_lossy(&data[..data.len().min(40)]).into_owned();
        let mut next = 0;
        for (at, end, data) in shipped {
            let matches = |line: &Vec<u8>| line == data || m.may_lose && line.starts_with(data);
            match f.lines[next..].iter().position(matches) {
                Some(0) => next += 1,
                Some(skipped) => {
                    if !m.may_lose {
                        violations.push(format!(
                            "inode {}: shipped {:?} at {at}..{end}, but {:?} came before it and was never shipped",
                            i + 1,
                            show(data),
                            show(&f.lines[next])
                        ));
                        break;
                    }
                    next += skipped + 1;
                }
                None if f.lines[..next].iter().any(matches) => {
                    violations.push(format!(
                        "inode {}: {:?} (at {at}..{end}) shipped twice or out of order",
                        i + 1,
                        show(data)
                    ));
                    break;
                }
                None => {
                    violations.push(format!(
                        "inode {}: shipped {:?} at {at}..{end}, which was never written",
                        i + 1,
                        show(data)
                    ));
                    break;
                }
            }
        }
        if m.verbose {
            let w: u64 = f.lines.iter().map(|l| l.len() as u64 + 1).sum();
            let sh: u64 = shipped.iter().map(|(at, end, _)| end - at).sum();
            println!("  inode {}: {w} bytes written, {sh} shipped", i + 1);
            for (at, end, data) in shipped {
                if end - at != data.len() as u64 + 1 {
                    println!("  inode {}: record {at}..{end} holds {} bytes", i + 1, data.len());
                }
            }
            let shipped_lines: Vec<&[u8]> = shipped.iter().map(|(_, _, d)| d.as_slice()).collect();
            for line in &f.lines {
                if !shipped_lines.iter().any(|d| line.starts_with(d) && !d.is_empty()) {
                    println!("  inode {}: never shipped: {:?} ({} bytes)", i + 1, show(line), line.len() + 1);
                }
            }
        }
        if !m.may_lose && next < f.lines.len() {
            violations.push(format!(
                "inode {}: {} lines were never shipped, the first {:?}",
                i + 1,
                f.lines.len() - next,
                show(&f.lines[next])
            ));
        }
    }
    let lost = c.engine.counters[0].bytes_lost;
    if !m.may_lose && lost > 0 {
        violations.push(format!("{lost} bytes counted lost in a history that loses none"));
    }
    if written != shipped_bytes + lost && !m.uncounted {
        violations.push(format!("{written} bytes written, {shipped_bytes} shipped and {lost} counted lost"));
    }
    violations
}

#[test]
fn simulation() {
    let replay: Option<u64> =
        std::env::var("SIMULATION_SEED").ok().map(|s| s.parse().expect("SIMULATION_SEED: a number"));
    let histories: u64 = match (replay, std::env::var("SIMULATION_HISTORIES")) {
        (Some(_), _) => 1,
        (None, Ok(n)) => n.parse().expect("SIMULATION_HISTORIES: a number"),
        (None, Err(_)) => HISTORIES,
    };
    if replay.is_some() {
        // The engine's own account of the history, with the model's.
        let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_test_writer().try_init();
    }
    let first = replay.unwrap_or_else(|| {
        // A different start each run, printed so a failure can be replayed.
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let (mut events, mut violations, mut failing) = (0, 0, None);
    for n in 0..histories {
        let seed = first.wrapping_add(n);
        let outcome = history(seed, replay.is_some());
        events += outcome.events;
        if !outcome.violations.is_empty() {
            violations += outcome.violations.len();
            failing.get_or_insert((seed, outcome.violations));
        }
    }
    println!("simulation: {histories} histories, {events} events, {violations} violations (seed {first})");
    if let Some((seed, found)) = failing {
        let m = Model::new(seed, false);
        drop(m);
        for v in &found {
            println!("  {v}");
        }
        panic!(
            "history {seed} breaks a promise; replay it with SIMULATION_SEED={seed} cargo test -p collector simulation -- --nocapture"
        );
    }
}
