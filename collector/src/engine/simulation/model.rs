//! The model of the files and of the kernel's event stream (see the module's header).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use collector_common::{CAPTURE_LEN, InodeKey, READ_CAPTURE_PIECES, READ_CAPTURE_REACH};

use super::{COPY_ROUND, GZIP, LOG, LOGROTATE};
use crate::{engine::Event, truncation::CutWrite};

/// splitmix64: small, fast, and the same on every machine.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Default)]
pub(super) struct Inode {
    pub(super) data: Vec<u8>,
    /// Names it has.
    pub(super) links: u32,
    /// Until this time, writes carry their bytes (another task read it).
    pub(super) capture_until: u64,
    /// The collector's read position, as the engine last said.
    pub(super) read_position: Option<u64>,
    /// Truncations done to it.
    pub(super) truncations: u64,
    /// The kernel's number of each of them (`WatchedInode::truncations`), which also counts
    /// calls that failed.
    pub(super) kernel_numbers: Vec<u64>,
    /// Truncating calls that failed: counted by the kernel as they began, with no event.
    pub(super) failed_truncations: u64,
    /// The size before the last truncation done (each cuts to 0).
    pub(super) last_cut_from: u64,
    /// When it was last truncated.
    pub(super) truncated_ns: u64,
    /// Where writes landed that carried no bytes (no capture window), since its last
    /// truncation.
    pub(super) uncaptured: Vec<u64>,
    /// It held the flow's name at some point: a shipped file.
    pub(super) original: bool,
    /// The lines that landed in it, in order.
    pub(super) lines: Vec<Vec<u8>>,
    /// A copy the collector cannot tell from a new log: what says it is one (the copier's
    /// read of the original before its first write) never reached the collector, or
    /// reached one that died before saving it. It may be shipped as a file of its own.
    pub(super) unclassified: bool,
    /// When logrotate created it, if it is a copy.
    pub(super) copied_at: Option<u64>,
    /// The original it is a copy of: its inode number, and which file had it (`born`).
    pub(super) copy_of: Option<(usize, u64)>,
    /// Which file it is, of those that had its inode number (as a birth time tells).
    pub(super) born: u64,
    /// A copy a restart found saved as where reading of its original's unread tail stood
    /// (`Engine::checkpoint_record`): it ships that tail as a file of its own.
    pub(super) ships_tail: bool,
}

impl Inode {
    /// Bytes of lines that landed in it, each with its newline.
    pub(super) fn written(&self) -> u64 {
        self.lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>()
    }

    /// What the kernel counts: every truncating call as it began.
    pub(super) fn counted_truncations(&self) -> u64 {
        self.truncations + self.failed_truncations
    }

    /// The kernel's record of its truncations (`WatchedInode`).
    pub(super) fn kernel_truncations(&self) -> crate::engine::KernelTruncations {
        crate::engine::KernelTruncations {
            counted: self.counted_truncations(),
            last_done: self.kernel_numbers.last().copied().unwrap_or(0),
            size_before: self.last_cut_from,
            size_after: 0,
        }
    }
}

/// A write that landed and whose event comes later.
pub(super) struct SlowWrite {
    pub(super) inode: usize,
    pub(super) pos: u64,
    pub(super) bytes: Vec<u8>,
    pub(super) pid: u32,
    pub(super) truncations_then: u64,
    /// A writev: the kernel carries none of its bytes.
    pub(super) iovec: bool,
}

pub(super) struct Writer {
    pub(super) pid: u32,
    pub(super) inode: usize,
    /// Reopens the log's name at this many steps from now (after a rotation by rename).
    pub(super) reopen_in: Option<u32>,
}

/// One step of a rotation in progress.
#[derive(Clone, Debug)]
pub(super) enum Step {
    CreateCopy,
    CopyRound,
    Truncate,
    Compress,
    DeleteCopy,
}

pub(super) struct Model {
    pub(super) rng: Rng,
    pub(super) now_ns: u64,
    pub(super) inodes: Vec<Inode>,
    pub(super) names: BTreeMap<String, usize>,
    /// Events not taken yet, with when they happened.
    pub(super) queue: VecDeque<(u64, Event)>,
    pub(super) writers: Vec<Writer>,
    pub(super) slow: Vec<SlowWrite>,
    pub(super) script: VecDeque<Step>,
    /// The rotation in progress: the original, its copy, how far the copy got.
    pub(super) rotating: Option<(usize, usize, usize)>,
    pub(super) lines_written: u64,
    /// Where rotation puts the log (logrotate's default, `dateext`, `olddir`).
    pub(super) rotated: String,
    /// The flow's pattern is `/logs/app.log*`, which also matches the rotated names in
    /// `/logs` (what the Kinesis Agent's users write), not `/logs/app.log` alone.
    pub(super) glob: bool,
    /// The kernel reads a truncation's size before under the inode lock (fentry, kprobe
    /// modes) or as the syscall begins (tracepoint mode: a write can land in between).
    pub(super) exact: bool,
    /// Something happened that can lose bytes for good (a truncation in place, a write
    /// longer than a capture): loss is allowed, but must be counted exactly.
    pub(super) may_lose: bool,
    /// Bytes may be lost without the collector being able to know how many (an event
    /// that carried the only copy of them was lost).
    pub(super) uncounted: bool,
    pub(super) log: Vec<String>,
    pub(super) verbose: bool,
    /// Files made so far (each one's `born`).
    pub(super) files_made: u64,
    /// The inode number the next file gets: a freed one (`Inode::reusable`), or a new one.
    pub(super) reuse_next: Option<usize>,
    /// Files whose inode number a later file got: what they were, at their number.
    pub(super) retired: Vec<(usize, Inode)>,
}

/// Whether the flow's pattern (`/logs/app.log`, or `/logs/app.log*` with `glob`) matches.
pub(super) fn pattern_matches(glob: bool, path: &str) -> bool {
    path == LOG || glob && path.starts_with(LOG) && !path[LOG.len()..].contains('/')
}

pub(super) fn key(inode: usize) -> InodeKey {
    InodeKey::new(1, inode as u64 + 1)
}

pub(super) fn index(key: &InodeKey) -> usize {
    key.ino as usize - 1
}

impl Model {
    pub(super) fn new(seed: u64, verbose: bool) -> Model {
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
            glob: false,
            exact: true,
            may_lose: false,
            uncounted: false,
            log: Vec::new(),
            verbose,
            files_made: 0,
            reuse_next: None,
            retired: Vec::new(),
        };
        m.rotated =
            ["/logs/app.log.1", "/logs/app.log-20261203", "/logs/old/app.log.1"][m.rng.below(3) as usize].into();
        m.exact = m.rng.chance(50);
        m.glob = m.rng.chance(50);
        let log = m.create(LOG, 100, false);
        for pid in [100, 101] {
            m.writers.push(Writer { pid, inode: log, reopen_in: None });
        }
        m
    }

    /// Frees inode number `i` for the next file: what the file that had it was is kept
    /// for the check (`retired`).
    pub(super) fn retire(&mut self, i: usize) {
        let old = std::mem::take(&mut self.inodes[i]);
        self.retired.push((i, old));
        self.reuse_next = Some(i);
    }

    /// A read by logrotate at `at_ns` never reaches the collector: the copy it fed (the
    /// last one made by then) cannot be told from a new log.
    pub(super) fn copier_read_lost(&mut self, at_ns: u64) {
        let fed = self
            .inodes
            .iter()
            .enumerate()
            .filter(|(_, f)| f.copied_at.is_some_and(|t| t <= at_ns))
            .max_by_key(|(_, f)| f.copied_at);
        if let Some((copy, _)) = fed {
            self.inodes[copy].unclassified = true;
        }
    }

    /// The file that had inode number `i` and was `born` so: there now, or retired.
    pub(super) fn file(&self, i: usize, born: u64) -> &Inode {
        let now = &self.inodes[i];
        if now.born == born {
            return now;
        }
        self.retired.iter().find(|(j, f)| *j == i && f.born == born).map(|(_, f)| f).expect("a file that was")
    }

    /// Whether the flow's pattern matches `path`.
    pub(super) fn matches(&self, path: &str) -> bool {
        pattern_matches(self.glob, path)
    }

    pub(super) fn note(&mut self, what: String) {
        if self.verbose {
            println!("{:>8} µs  {what}", self.now_ns / 1000);
        }
        self.log.push(what);
    }

    pub(super) fn emit(&mut self, event: Event) {
        self.queue.push_back((self.now_ns, event));
    }

    pub(super) fn create(&mut self, name: &str, pid: u32, report: bool) -> usize {
        if let Some(old) = self.names.remove(name) {
            self.unlink_inode(old, report);
        }
        // The kernel watches a file created in a watched directory from its first byte,
        // and carries other tasks' reads of it from 0 until the collector says otherwise.
        let read_position = report.then_some(0);
        self.files_made += 1;
        let file = Inode { links: 1, original: name == LOG, read_position, born: self.files_made, ..Inode::default() };
        let inode = match self.reuse_next.take() {
            Some(i) => {
                self.note(format!("a new file gets the freed inode number {}", i + 1));
                self.inodes[i] = file;
                i
            }
            None => {
                self.inodes.push(file);
                self.inodes.len() - 1
            }
        };
        self.names.insert(name.to_owned(), inode);
        if report {
            self.emit(Event::Created { inode: key(inode), path: PathBuf::from(name), pid });
        }
        inode
    }

    pub(super) fn unlink_inode(&mut self, inode: usize, report: bool) {
        self.inodes[inode].links -= 1;
        if report {
            self.emit(Event::Unlinked { inode: key(inode) });
        }
    }

    pub(super) fn rename(&mut self, from: &str, to: &str) {
        let Some(inode) = self.names.remove(from) else { return };
        if let Some(old) = self.names.insert(to.to_owned(), inode) {
            self.unlink_inode(old, true);
        }
        if to == LOG {
            self.inodes[inode].original = true;
        }
        self.emit(Event::Renamed { inode: key(inode), path: PathBuf::from(to) });
    }

    /// A writer appends one line (write), or a few in one call (writev).
    pub(super) fn write(&mut self, w: usize) {
        let (pid, inode) = (self.writers[w].pid, self.writers[w].inode);
        // writev: one event for its lines, and the kernel carries none of an iovec's bytes
        // (a truncation that cuts it, or one after it with no copy, loses them).
        let iovec = self.rng.chance(10);
        let count = if iovec { 2 + self.rng.below(3) } else { 1 };
        let mut bytes = Vec::new();
        let mut lines = Vec::new();
        for _ in 0..count {
            self.lines_written += 1;
            let mut line = format!("w{pid} line {} ", self.lines_written).into_bytes();
            // Mostly short lines; now and then one longer than a capture.
            let pad = if self.rng.chance(1) { CAPTURE_LEN + 100 } else { self.rng.below(200) as usize };
            if pad > CAPTURE_LEN {
                self.may_lose = true;
            }
            line.extend(std::iter::repeat_n(b'x', pad));
            lines.push(line.clone());
            line.push(b'\n');
            bytes.extend_from_slice(&line);
        }
        let line = bytes;
        let f = &mut self.inodes[inode];
        let pos = f.data.len() as u64;
        f.data.extend_from_slice(&line);
        f.lines.extend(lines);
        let truncations_then = f.truncations;
        let how = if iovec { "writev" } else { "write" };
        self.note(format!("w{pid} {how}s {} bytes at {pos} of inode {}", line.len(), inode + 1));
        if iovec {
            if self.rng.chance(5) {
                self.may_lose = true;
                self.slow.push(SlowWrite { inode, pos, bytes: line, pid, truncations_then, iovec });
            } else {
                self.report(inode, pos, line, pid, iovec);
            }
        } else if self.rng.chance(5) {
            self.slow.push(SlowWrite { inode, pos, bytes: line, pid, truncations_then, iovec });
        } else if self.rng.chance(10) {
            // A line written by two syscalls at once (a short write and the rest, or a
            // writer that writes a line in pieces): two events, the first ending mid-line.
            let k = 1 + self.rng.below(line.len() as u64 - 1) as usize;
            let rest = line[k..].to_vec();
            self.report_write(inode, pos, line[..k].to_vec(), pid);
            self.report_write(inode, pos + k as u64, rest, pid);
        } else {
            self.report_write(inode, pos, line, pid);
        }
    }

    pub(super) fn report_write(&mut self, inode: usize, pos: u64, bytes: Vec<u8>, pid: u32) {
        self.report(inode, pos, bytes, pid, false);
    }

    /// A write's event; `iovec`: its bytes are never carried.
    fn report(&mut self, inode: usize, pos: u64, bytes: Vec<u8>, pid: u32, iovec: bool) {
        let f = &mut self.inodes[inode];
        let captured = if self.now_ns < f.capture_until && !iovec {
            bytes[..bytes.len().min(CAPTURE_LEN)].to_vec()
        } else {
            Vec::new()
        };
        if captured.is_empty() {
            f.uncaptured.push(pos);
        }
        self.emit(Event::Write { inode: key(inode), pid, pos, len: bytes.len() as u64, captured, at_ns: self.now_ns });
    }

    /// A slow write's exit hook runs: cut by a truncation since it landed, or not.
    pub(super) fn finish_slow(&mut self, i: usize) {
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
            let captured = if s.iovec { Vec::new() } else { s.bytes[..s.bytes.len().min(CAPTURE_LEN)].to_vec() };
            let cut = CutWrite { pos: s.pos, len: s.bytes.len() as u64, bytes: captured };
            let truncation = self.inodes[s.inode].kernel_numbers[s.truncations_then as usize];
            self.emit(Event::CutWrite { inode: key(s.inode), truncation, cut });
        } else {
            self.report(s.inode, s.pos, s.bytes, s.pid, s.iovec);
        }
    }

    /// Another task reads `len` bytes at `pos`: it opens the capture window, and carries
    /// what lies past the collector's read position.
    /// gzip reads `source` whole and writes its archive `name`.
    fn gzip(&mut self, source: usize, name: &str) {
        let len = self.inodes[source].data.len();
        self.other_read(source, 0, len, GZIP);
        let gz = self.create(name, GZIP, true);
        self.inodes[gz].data = b"\x1f\x8bcompressed".to_vec();
        // Reading an empty file reports nothing: nothing says the archive is derived. Read,
        // it is skipped (compressed); gone before it could be opened, it is counted lost.
        self.inodes[gz].unclassified = len == 0;
        self.emit(Event::Write {
            inode: key(gz),
            pid: GZIP,
            pos: 0,
            len: 12,
            captured: Vec::new(),
            at_ns: self.now_ns,
        });
    }

    pub(super) fn other_read(&mut self, inode: usize, pos: usize, len: usize, pid: u32) {
        let now = self.now_ns;
        let f = &mut self.inodes[inode];
        if pos >= f.data.len() {
            // A read at the end returns nothing: the kernel reports nothing.
            return;
        }
        if f.original && f.read_position.is_none() {
            // No read position: the kernel carries none of the bytes read, and if the copy
            // is gone before it can be opened, they are lost.
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

    pub(super) fn truncate(&mut self, inode: usize, pid: u32) {
        let size_before = self.inodes[inode].data.len() as u64;
        if !self.exact
            && self.rng.chance(30)
            && let Some(w) = self.writers.iter().position(|w| w.inode == inode)
        {
            // Tracepoint mode reads the size as the syscall begins; a write lands before
            // the cut. Without a capture window (or from an iovec), its bytes are gone with
            // the cut.
            let at = self.inodes[inode].data.len() as u64;
            self.write(w);
            let f = &self.inodes[inode];
            if self.now_ns >= f.capture_until || f.uncaptured.iter().any(|p| *p >= at) {
                self.may_lose = true;
            }
        }
        let f = &mut self.inodes[inode];
        f.truncations += 1;
        f.last_cut_from = f.data.len() as u64;
        f.data.clear();
        // The truncation closes the capture window, and lowers the read position to the
        // new size (other tasks' reads of the new contents carry their bytes).
        f.capture_until = 0;
        if let Some(at) = &mut f.read_position {
            *at = 0;
        }
        f.truncated_ns = self.now_ns;
        f.uncaptured.clear();
        let truncation = f.counted_truncations();
        f.kernel_numbers.push(truncation);
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
    pub(super) fn rotation_step(&mut self) {
        let Some(step) = self.script.pop_front() else { return };
        match step {
            Step::CreateCopy => {
                let original = self.names[LOG];
                let copy = self.create(&self.rotated.clone(), LOGROTATE, true);
                self.inodes[copy].copied_at = Some(self.now_ns);
                self.inodes[copy].copy_of = Some((original, self.inodes[original].born));
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
                        at_ns: self.now_ns,
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
                self.gzip(copy, &format!("{}.gz", self.rotated));
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
    pub(super) fn rotate(&mut self) {
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
                    self.gzip(old, &format!("{older}.gz"));
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
    pub(super) fn act(&mut self) {
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
            // An ftruncate that fails (a read-only descriptor): the kernel counted it as it
            // began, and no event comes.
            18 if self.rng.chance(10) => {
                let log = self.names[LOG];
                self.inodes[log].failed_truncations += 1;
                self.note(format!("an ftruncate of inode {} fails", log + 1));
            }
            _ => {}
        }
    }
}
