//! The engine: every decision about which bytes of which inode are shipped, with no I/O and
//! no clock. Kernel events (paths resolved), sizes, read results and sink results come in;
//! what to do comes out, as return values and as `Effect`s the caller carries out in order
//! (`next_effect`). The daemon is one such caller, over real files, the kernel and real
//! sinks; the simulation (`simulation/`) is another, over a model filesystem.
//!
//! It holds the tracker (which inode plays which role), and per file: the framer, what the
//! sink acknowledged and made durable, the bytes the kernel captured, a truncation held for
//! the writes it cut (`truncation::Held`), a copied tail being read from a copy, and when
//! the file was checkpointed. Per flow: whether its sink is paused after a refusal.
//!
//! Times are `Instant`s passed in by the caller (the simulation makes its own).

mod reading;
mod truncate;
mod upkeep;

use std::{
    collections::VecDeque,
    ops::Range,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use collector_common::InodeKey;

use crate::{
    framer::{Framed, Framer, FramerConfig},
    inode_map::{InodeMap, InodeSet},
    metrics::FlowCounters,
    sweep::Sweep,
    tracker::{self, Action, Tracker},
    truncation::{Captures, CutWrite, Cuts, Held, Truncation},
};

/// How far reading must move before the kernel is told (`Effect::ReadPosition`).
const READ_POSITION_STEP: u64 = 64 << 10;
/// Bytes read from one file per turn, so one busy file cannot starve the others.
pub const READ_PER_TURN: usize = 1 << 20;
/// At most this much is read in one pass of the loop, over all files: what a pass reads is
/// in memory until the sink took it (files left over are read in the next pass).
pub const READ_PER_PASS: usize = 16 << 20;
/// A truncation the kernel counted whose event has not come this long after the count was
/// seen never will: the call failed (it is counted as it begins; a failed one makes no
/// event). Its checkpoint then goes on.
const UNSEEN_TRUNCATION_WAIT: Duration = Duration::from_secs(1);
/// Checkpoints of a busy file are written at most this often (and always on truncation,
/// release and shutdown): after a crash, at most this much is sent again.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// How long a stopping collector goes on shipping rotations under way (a copytruncated
/// file's unread tail, read from its copy): after it, what is left of them is lost.
pub const FINISH_ON_STOP: Duration = Duration::from_secs(5);
/// After a sink refused a batch, its flow reads nothing for this long, then tries again.
pub const SINK_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// After a sink refused only one file's records (its shard throttled), that file waits this
/// long: a shard's limits are per second.
pub const FILE_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What a flow's settings say about reading and framing its files.
#[derive(Clone, Debug)]
pub struct FlowRules {
    pub name: String,
    pub framer: FramerConfig,
    /// New bytes fewer than `full_batch_bytes` wait on disk up to this long for more.
    pub max_batch_age: Duration,
    pub full_batch_bytes: u64,
    /// A rotated or unlinked original, read to its end and idle this long, is let go.
    pub rotated_idle: Duration,
    /// How often the flow's files are swept (zero: never).
    pub sweep_interval: Duration,
}

#[cfg(test)]
impl FlowRules {
    /// One flow of lines (no multiline, 1 MiB records), no sweep: the engine's tests and
    /// the simulation.
    pub fn for_tests(max_batch_age: Duration) -> FlowRules {
        FlowRules {
            name: "app".into(),
            framer: FramerConfig {
                multiline_start: None,
                multiline_flush: Duration::from_millis(500),
                skip_header_lines: 0,
                max_record_bytes: 1 << 20,
                truncated_terminator: Vec::new(),
            },
            max_batch_age,
            full_batch_bytes: 1 << 20,
            rotated_idle: Duration::from_secs(60),
            sweep_interval: Duration::ZERO,
        }
    }
}

/// A kernel event in the engine's terms (paths resolved by the caller).
#[derive(Clone, Debug)]
pub enum Event {
    /// `len` bytes written at `pos`; `captured`: the first of them, as the kernel carried
    /// them; `at_ns`: when (CLOCK_BOOTTIME, as `Engine::ring_drained`).
    Write {
        inode: InodeKey,
        pid: u32,
        pos: u64,
        len: u64,
        captured: Vec<u8>,
        at_ns: u64,
    },
    /// Another task read the file at `pos` (bytes carried past the read position).
    Read {
        inode: InodeKey,
        pid: u32,
        pos: u64,
        captured: Vec<u8>,
    },
    Copy {
        source: InodeKey,
        destination: InodeKey,
        destination_end: u64,
    },
    /// A write cut by the kernel's truncation number `truncation` reported its bytes.
    CutWrite {
        inode: InodeKey,
        truncation: u64,
        cut: CutWrite,
    },
    /// `at_ns`: when it was made (CLOCK_BOOTTIME, as `Engine::ring_drained`).
    Truncate {
        inode: InodeKey,
        size_before: u64,
        size_after: u64,
        truncation: u64,
        at_ns: u64,
    },
    Created {
        inode: InodeKey,
        path: PathBuf,
        pid: u32,
    },
    Renamed {
        inode: InodeKey,
        path: PathBuf,
    },
    Unlinked {
        inode: InodeKey,
    },
}

/// What the caller carries out, in order, after each call (`Engine::next_effect`).
pub enum Effect {
    /// Open the original (by inode, at `path` or wherever it moved), watch it in the
    /// kernel, and call `Engine::tracked` with where to read from: `from`, or further when
    /// a checkpoint of that very file says so. Nothing when it cannot be opened.
    Track {
        inode: InodeKey,
        flow: usize,
        path: PathBuf,
        from: u64,
    },
    /// A derived file: never shipped, held open for recovery and remembered as derived
    /// (again, after its record stood for a copytruncated file's tail: see
    /// `Engine::checkpoint_record`). `open`: not held yet (open it and call
    /// `Engine::derived_opened`).
    HoldDerived {
        inode: InodeKey,
        open: bool,
    },
    /// Unwatch and close the file, then call `Engine::released`.
    Release {
        inode: InodeKey,
    },
    /// Tell the kernel where reading of an original stands (`None`: forget it).
    ReadPosition {
        inode: InodeKey,
        at: Option<u64>,
    },
    /// Keep a descriptor of `copy` for `inode`'s truncation: the copy may be released,
    /// renamed or deleted before its bytes are read (`ReadFrom::Copy`).
    PinCopy {
        inode: InodeKey,
        copy: InodeKey,
    },
    UnpinCopy {
        inode: InodeKey,
        copy: InodeKey,
    },
    /// Ship records recovered from a truncation (`Engine::recovered_delivered` with the
    /// outcome). They hold `old` of the contents the truncation cut, which now exist only
    /// in memory: what the sink does not take of them is lost.
    Ship {
        inode: InodeKey,
        framed: Framed,
        old: Range<u64>,
    },
    /// Save the file's checkpoint if due (`Engine::checkpoint_due`).
    Checkpoint {
        inode: InodeKey,
        force: bool,
    },
}

/// Where a read takes bytes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The file itself, by its held descriptor.
    Original,
    /// The copy a copytruncate made (its pinned descriptor): the unread tail of the old
    /// contents.
    Copy(InodeKey),
}

/// A read to make: `want` bytes at `at`.
#[derive(Clone, Copy, Debug)]
pub struct ReadRequest {
    pub inode: InodeKey,
    pub from: ReadFrom,
    pub at: u64,
    pub want: usize,
    /// The size the read was planned against.
    pub size: u64,
}

/// Bytes just read from a file, and when the read ended (CLOCK_BOOTTIME, the clock of the
/// kernel events), to tell whether a truncation reported afterwards came before them.
pub struct Chunk {
    pub inode: InodeKey,
    pub at: u64,
    pub bytes: Vec<u8>,
    pub read_end_ns: u64,
}

/// What a sink did with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Accepted,
    /// Refused; when it took the first records, it holds every byte before `holds_to`.
    /// `alone`: only this file's records were refused (its shard throttled): the file
    /// pauses, not its flow.
    Refused {
        holds_to: Option<u64>,
        alone: bool,
    },
}

/// A checkpoint to save: the file's flow, the offset every byte before which the sink
/// acknowledged, and the file whose record it is saved as (`Engine::checkpoint_record`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointDue {
    pub flow: usize,
    pub acknowledged: u64,
    pub record: InodeKey,
}

/// What the caller found as it saved a checkpoint (`Engine::made_durable`): whether the file
/// still holds the bytes before the offset, and then how many truncations of it the kernel
/// has counted, where it knows (`WatchedInode::truncations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub bytes_before: bool,
    pub truncations: Option<u64>,
    /// When the kernel's count was looked up (CLOCK_BOOTTIME, as `Engine::ring_drained`).
    pub looked_ns: u64,
}

/// What the executor looks up about a held file when the engine asks (`Engine::expire`):
/// its size, and how many truncations of it the kernel has counted, at `boot_ns`
/// (CLOCK_BOOTTIME, as `Engine::ring_drained`).
#[derive(Clone, Copy)]
pub struct FileLookup<'a> {
    pub size_of: &'a dyn Fn(&InodeKey) -> Option<u64>,
    pub truncations_of: &'a dyn Fn(&InodeKey) -> Option<u64>,
    pub boot_ns: u64,
}

/// What the kernel counted of a held file's truncations (`WatchedInode`): how many calls
/// began (failed ones too), and the number and sizes before and after of the last one done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelTruncations {
    pub counted: u64,
    pub last_done: u64,
    pub size_before: u64,
    pub size_after: u64,
}

/// A checkpoint being saved replaces this offset (none before it): what it goes back to if
/// the save fails (`Engine::checkpoint_failed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replaces(pub Option<u64>);

/// After a copytruncate: the unread tail of the old contents, read from the copy (pinned
/// for it) like any file, up to `end`, before the truncation's remaining steps.
#[derive(Debug)]
struct CopiedTail {
    copy: InodeKey,
    end: u64,
    truncation: Truncation,
}

/// A file found shorter than what was read after lost events (see `Engine::events_lost`).
struct Shrunk {
    inode: InodeKey,
    read_to: u64,
    /// The file's truncations so far then.
    truncations: u64,
    /// When its size was taken (CLOCK_BOOTTIME).
    seen_ns: u64,
}

/// After lost events, a file the kernel truncated more often than its events said, at
/// `seen_ns` (CLOCK_BOOTTIME): not read until every event made before then is taken; if its
/// truncation's event was not among them, it was lost (see `Engine::events_lost`).
#[derive(Clone, Copy, Debug)]
struct UnseenTruncation {
    kernel: KernelTruncations,
    seen_ns: u64,
}

/// One held file's state.
struct FileState {
    flow: usize,
    framer: Framer,
    /// Every byte before this was accepted by the sink (or skipped on purpose).
    acknowledged: u64,
    /// Every byte before this is durable in the sink (made so before its checkpoint was
    /// saved): where reading starts again if the sink loses what it took since.
    durable: u64,
    /// A derived file (copy, .gz) or one found binary: held, never shipped.
    derived: bool,
    last_input: Instant,
    /// When the checkpoint was last saved (or tried), and at which offset.
    checkpointed: Option<(Instant, u64)>,
    /// Bytes the kernel carried with writes and other tasks' reads, by file offset: what a
    /// truncation would otherwise take before they are read.
    captured: Captures,
    /// Found by the sweep with bytes no event announced: the next read counts them.
    swept: bool,
    copied_tail: Option<Box<CopiedTail>>,
    /// A truncation waiting for the writes it cut; nothing is read meanwhile.
    held: Option<Box<Held>>,
    /// Records recovered from a truncation that the sink refused, and the range of the old
    /// contents they hold: they exist only here, and are sent again, before anything
    /// else of the file, once the flow's pause is over.
    unshipped: Option<Box<(Framed, Range<u64>)>>,
    /// Recovered records are with the sink (`Effect::Ship`), its answer not in yet.
    shipping: bool,
    /// Until when it reads nothing: the sink refused only its records (FILE_RETRY_PAUSE).
    paused_until: Option<Instant>,
    /// Truncations settled while a copied tail is read or recovered records wait for the
    /// sink: carried out, in order, after them.
    queued: VecDeque<Held>,
    /// Copies pinned for this file's truncations.
    pinned: Vec<InodeKey>,
    /// Writes cut by a truncation whose event has not come yet.
    cuts: Cuts,
    /// The kernel's number of the truncation being reported and when it was made, from
    /// its event until the tracker's action for it.
    reported_truncation: Option<(u64, u64)>,
    /// The kernel's number of the last truncation whose event was taken.
    truncations_taken: u64,
    /// A count of truncations the kernel had and no event has come for yet, and when it
    /// was first looked up (CLOCK_BOOTTIME): see `Engine::made_durable`.
    truncations_unseen: Option<(u64, u64)>,
    /// The read position last given to the kernel.
    read_position: Option<u64>,
    /// A truncation whose event may have been lost with others: reading waits.
    unseen_truncation: Option<UnseenTruncation>,
    /// Truncations of it so far (reported or inferred).
    truncations: u64,
    /// The furthest end of a write reported since its last truncation: in tracepoint mode
    /// a truncation's size before is read as its syscall begins, and a write can land
    /// before the cut.
    written_to: u64,
    /// The kernel's number of the last truncation settled, and its size before.
    last_settled: Option<(u64, u64)>,
    /// When the oldest write not read yet was made: `max_batch_age` counts from there,
    /// not from when the collector got to it.
    unread_since: Option<Instant>,
}

impl FileState {
    fn new(flow: usize, framer: Framer, from: u64, derived: bool, now: Instant) -> FileState {
        FileState {
            flow,
            framer,
            acknowledged: from,
            durable: from,
            derived,
            last_input: now,
            checkpointed: None,
            captured: Captures::default(),
            swept: false,
            copied_tail: None,
            held: None,
            unshipped: None,
            shipping: false,
            paused_until: None,
            queued: VecDeque::new(),
            pinned: Vec::new(),
            cuts: Cuts::default(),
            reported_truncation: None,
            truncations_taken: 0,
            truncations_unseen: None,
            read_position: None,
            unseen_truncation: None,
            truncations: 0,
            written_to: 0,
            last_settled: None,
            unread_since: None,
        }
    }

    /// Reading is at offsets of contents a truncation replaced: a held truncation, or a
    /// copied tail being read.
    fn in_old_contents(&self) -> bool {
        self.copied_tail.is_some() || self.held.is_some()
    }

    /// An earlier truncation is still being carried out (its copied tail read, its
    /// recovered records with the sink or waiting for it, or it waits its turn): a new one
    /// waits for it, and where reading stands says nothing of the contents it cut, so it
    /// cannot be known to be filled early.
    fn behind(&self) -> bool {
        self.copied_tail.is_some() || self.unshipped.is_some() || self.shipping || !self.queued.is_empty()
    }

    /// Whether the `counted` truncations the kernel has of it have all been taken (see
    /// `Engine::made_durable`): their events were, or one without an event never comes (the
    /// call failed) since every event made up to UNSEEN_TRUNCATION_WAIT after the count
    /// was first seen is taken, or the collector is stopping (the ring drained).
    fn truncations_settled(&self, counted: u64, drained_ns: u64, stopping: bool) -> bool {
        let wait = UNSEEN_TRUNCATION_WAIT.as_nanos() as u64;
        counted <= self.truncations_taken
            || stopping
            || self.truncations_unseen.is_some_and(|(c, since)| c == counted && drained_ns >= since + wait)
    }

    /// `truncations_settled`, taking them as taken if so, else noting when this count was
    /// first seen (`looked_ns`).
    fn truncations_settle(&mut self, counted: u64, looked_ns: u64, drained_ns: u64, stopping: bool) -> bool {
        if self.truncations_settled(counted, drained_ns, stopping) {
            self.truncations_taken = self.truncations_taken.max(counted);
            return true;
        }
        if self.truncations_unseen.is_none_or(|(c, _)| c != counted) {
            self.truncations_unseen = Some((counted, looked_ns));
        }
        false
    }

    /// Keeps bytes the kernel captured at `pos` unless the sink took them already (bytes
    /// read but not taken yet are read again after a refusal, when a truncation may have
    /// taken them from disk). While a copied tail is read or a truncation held, reading is
    /// at offsets of the old contents; the bytes captured then belong to the new ones, for
    /// the next truncation.
    fn keep_captured(&mut self, pos: u64, bytes: Vec<u8>) {
        if !bytes.is_empty() && (self.in_old_contents() || pos + bytes.len() as u64 > self.acknowledged) {
            self.captured.keep(pos, bytes);
        }
    }
}

/// A held file as reported for /status and /metrics.
pub struct FileView<'a> {
    pub inode: InodeKey,
    pub tracked: &'a tracker::Tracked,
    pub flow: usize,
    pub derived: bool,
    pub acknowledged: u64,
}

pub struct Engine {
    flows: Vec<FlowRules>,
    /// Each flow's framing settings, shared by its files' framers.
    framer_configs: Vec<std::sync::Arc<FramerConfig>>,
    /// The kernel reads a truncation's size before under the inode lock (fentry and kprobe
    /// modes; tracepoint mode reads it as the syscall begins).
    exact_size_before: bool,
    started: Instant,
    tracker: Tracker,
    /// Boxed: a table of thousands of them grows by doubling, and the boxes stay put.
    files: InodeMap<Box<FileState>>,
    /// Files that may have new bytes to read.
    dirty: InodeSet,
    /// Dirty files the last pass had no room for (READ_PER_PASS), to read first.
    left_over: Vec<InodeKey>,
    /// Files whose reading waits (for more bytes, `max_batch_age`, or a held truncation),
    /// with when it is due.
    deferred: InodeMap<Instant>,
    /// Files with unshipped bytes whose flow is paused.
    waiting: InodeSet,
    /// Per flow: while its sink refuses batches, no reading until this time.
    paused_until: Vec<Option<Instant>>,
    /// Every kernel event made before this (CLOCK_BOOTTIME) has been taken.
    drained_ns: u64,
    /// Stopping (`settle_all`): every event made was taken.
    stopping: bool,
    /// The last `ring_drained`'s CLOCK_BOOTTIME and the `Instant` it was taken at: kernel
    /// times in the engine's clock.
    boot_clock: Option<(u64, Instant)>,
    /// Files found shorter than what was read after lost events, not yet taken as
    /// truncated.
    shrunk: Vec<Shrunk>,
    /// Originals gone before they could be opened (created and deleted before their
    /// creation's event was taken): their flow, and the end of what their write events
    /// say was written to them since their last truncation, counted lost. A lower bound
    /// where the kernel folds appends
    /// into one event (x86-64): the kernel's own known end cannot be trusted here, as the
    /// inode number may be another file's by then.
    gone_unopened: InodeMap<(usize, u64)>,
    sweep: Sweep,
    /// Per flow: what was read, recovered, lost (the caller adds what it sent).
    pub counters: Vec<FlowCounters>,
    effects: VecDeque<Effect>,
}

impl Engine {
    pub fn new(flows: Vec<FlowRules>, exact_size_before: bool, now: Instant) -> Engine {
        let n = flows.len();
        Engine {
            sweep: Sweep::new(flows.iter().map(|f| f.sweep_interval), now),
            framer_configs: flows.iter().map(|f| std::sync::Arc::new(f.framer.clone())).collect(),
            flows,
            exact_size_before,
            started: now,
            tracker: Tracker::default(),
            files: InodeMap::default(),
            dirty: InodeSet::default(),
            left_over: Vec::new(),
            deferred: InodeMap::default(),
            waiting: InodeSet::default(),
            paused_until: vec![None; n],
            drained_ns: 0,
            stopping: false,
            boot_clock: None,
            shrunk: Vec::new(),
            gone_unopened: InodeMap::default(),
            counters: vec![FlowCounters::default(); n],
            effects: VecDeque::new(),
        }
    }

    /// Every kernel event made before `boot_ns` (CLOCK_BOOTTIME, taken at `now`) has been
    /// handed in: held truncations whose cut writes would have come by then can be settled.
    pub fn ring_drained(&mut self, boot_ns: u64, now: Instant) {
        self.drained_ns = self.drained_ns.max(boot_ns);
        self.boot_clock = Some((boot_ns, now));
    }

    /// A kernel time (CLOCK_BOOTTIME) as an `Instant`; `now` before any `ring_drained`.
    fn instant_of(&self, boot_ns: u64, now: Instant) -> Instant {
        match self.boot_clock {
            Some((ns, at)) if boot_ns <= ns => at.checked_sub(Duration::from_nanos(ns - boot_ns)).unwrap_or(at),
            Some((ns, at)) => at + Duration::from_nanos(boot_ns - ns),
            None => now,
        }
    }

    /// The next thing to carry out, in order.
    pub fn next_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    fn ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_nanos() as u64
    }

    /// Whether the tracker or the held files know `inode`.
    pub fn knows(&self, inode: &InodeKey) -> bool {
        self.files.contains_key(inode) || self.tracker.get(inode).is_some()
    }

    pub fn holds(&self, inode: &InodeKey) -> bool {
        self.files.contains_key(inode)
    }

    pub fn held_count(&self) -> usize {
        self.files.len()
    }

    /// The held files (every one for `flow`, or all).
    pub fn held(&self) -> impl Iterator<Item = InodeKey> + '_ {
        self.files.keys().copied()
    }

    /// Where `inode` was last seen, for the log.
    pub fn path_of(&self, inode: &InodeKey) -> String {
        self.tracker.get(inode).map(|t| t.path.display().to_string()).unwrap_or_default()
    }

    pub fn path(&self, inode: &InodeKey) -> Option<&Path> {
        self.tracker.get(inode).map(|t| t.path.as_path())
    }

    /// The flow of a held original (`None`: not held, or derived).
    pub fn flow_of(&self, inode: &InodeKey) -> Option<usize> {
        self.files.get(inode).filter(|f| !f.derived).map(|f| f.flow)
    }

    pub fn dropped_bytes(&self, inode: &InodeKey) -> u64 {
        self.files.get(inode).map_or(0, |f| f.framer.dropped_bytes)
    }

    pub fn view(&self) -> impl Iterator<Item = FileView<'_>> {
        self.files.iter().filter_map(|(inode, f)| {
            Some(FileView {
                inode: *inode,
                tracked: self.tracker.get(inode)?,
                flow: f.flow,
                derived: f.derived,
                acknowledged: f.acknowledged,
            })
        })
    }

    fn framer(&self, flow: usize, from: u64) -> Framer {
        Framer::new(self.framer_configs[flow].clone(), from)
    }

    /// A file found on disk (start-up, a new directory or link): an original read from
    /// `from` (`Effect::Track`). `rotated`: found by inode under another name.
    pub fn discovered(&mut self, inode: InodeKey, flow: usize, path: PathBuf, from: u64, rotated: bool, now: Instant) {
        let now_ns = self.ns(now);
        let action = self.tracker.discovered(inode, flow, path.clone(), from, now_ns);
        if rotated {
            let _ = self.tracker.on_event(tracker::Event::Renamed { inode, path }, now_ns, &|_| Some(flow));
        }
        self.apply(action, now);
    }

    /// A file the state directory remembers as derived: never shipped, not held.
    pub fn remembered_derived(&mut self, inode: InodeKey, path: PathBuf, now: Instant) {
        let now_ns = self.ns(now);
        self.tracker.remembered_derived(inode, path, now_ns);
    }

    /// `Effect::Track` was carried out: the file is open and watched, `size` long, read
    /// from `from`; `truncations`: the kernel's count of its truncations once watched (it
    /// counts from when the file was created in, or first watched from, a watched
    /// directory; `made_durable` compares with it).
    pub fn tracked(&mut self, inode: InodeKey, flow: usize, from: u64, size: u64, truncations: u64, now: Instant) {
        // A file created while running is read on its first write: that write's task may
        // show it is a copy, which must never be shipped.
        let fresh = self.tracker.get(&inode).is_some_and(|t| t.fresh);
        let framer = self.framer(flow, from);
        let mut state = Box::new(FileState::new(flow, framer, from, false, now));
        state.truncations_taken = truncations;
        self.files.insert(inode, state);
        if from < size && !fresh {
            self.dirty.insert(inode);
        }
        self.publish_read_position(inode);
    }

    /// `Effect::Track` could not be carried out: the file is gone (deleted before its
    /// creation's event was taken). What was written to it is lost: the bytes its events
    /// report are counted so, unless its first write shows it was a copy.
    pub fn gone_before_opened(&mut self, inode: InodeKey, flow: usize) {
        tracing::debug!(path = %self.path_of(&inode), "gone before it could be opened");
        self.gone_unopened.insert(inode, (flow, 0));
    }

    /// Bytes up to `end` were written to an original gone before it could be opened.
    fn gone_unopened_written_to(&mut self, inode: InodeKey, end: u64) {
        let Some((flow, counted_to)) = self.gone_unopened.get_mut(&inode) else { return };
        if end <= *counted_to {
            return;
        }
        if *counted_to == 0 {
            tracing::warn!(path = %self.tracker.get(&inode).map(|t| t.path.display().to_string()).unwrap_or_default(),
                "a log was deleted before it could be opened: what was written to it is counted lost");
        }
        self.counters[*flow].bytes_lost += end - *counted_to;
        *counted_to = end;
    }

    /// `Effect::HoldDerived` opened the file.
    pub fn derived_opened(&mut self, inode: InodeKey, now: Instant) {
        let framer = self.framer(0, 0);
        self.files.insert(inode, Box::new(FileState::new(0, framer, 0, true, now)));
    }

    /// `Effect::Release` was carried out.
    pub fn released(&mut self, inode: &InodeKey) {
        self.files.remove(inode);
        self.gone_unopened.remove(inode);
        self.dirty.remove(inode);
        self.deferred.remove(inode);
        self.waiting.remove(inode);
        self.sweep.forget(inode);
    }

    /// The copies of `source` a truncation of it would recover from: the caller raises how
    /// far each got to what the kernel counted (`copied_up_to`) before the truncation.
    pub fn copies_of(&self, source: &InodeKey) -> Vec<InodeKey> {
        self.tracker.copies_of(source)
    }

    pub fn copied_up_to(&mut self, copy: &InodeKey, end: u64) {
        self.tracker.copied_up_to(copy, end);
    }

    /// Applies a kernel event; `flow_of` says which flow (if any) a path belongs to.
    pub fn on_event(&mut self, event: Event, now: Instant, flow_of: &dyn Fn(&Path) -> Option<usize>) {
        // A write to an original gone before it was opened, counted lost unless the write
        // shows it was a copy after all (its first writer had just read a tracked file).
        let mut unopened_write = None;
        let tracker_event = match event {
            Event::Write { inode, pid, pos, len, captured, at_ns } => {
                let at = self.instant_of(at_ns, now).min(now);
                if let Some(f) = self.files.get_mut(&inode) {
                    f.keep_captured(pos, captured);
                    f.written_to = f.written_to.max(pos + len);
                    f.unread_since.get_or_insert(at);
                } else if self.gone_unopened.contains_key(&inode) {
                    unopened_write = Some((inode, pos + len));
                }
                tracker::Event::Write { inode, pid, end: pos + len }
            }
            Event::Read { inode, pid, pos, captured } => {
                // Bytes another task read before the collector did (logrotate copying the
                // file it is about to truncate): kept as the writes' captured bytes are.
                if let Some(f) = self.files.get_mut(&inode)
                    && !f.derived
                {
                    f.keep_captured(pos, captured);
                }
                tracker::Event::Read { inode, pid }
            }
            Event::Copy { source, destination, destination_end } => {
                tracker::Event::Copy { source, destination, destination_end }
            }
            Event::CutWrite { inode, truncation, cut } => {
                self.gone_unopened_written_to(inode, cut.pos + cut.len);
                self.cut_write(inode, truncation, cut, now);
                return;
            }
            Event::Truncate { inode, size_before, size_after, truncation, at_ns } => {
                if let Some((_, counted_to)) = self.gone_unopened.get_mut(&inode) {
                    *counted_to = (*counted_to).min(size_after);
                }
                if let Some(f) = self.files.get_mut(&inode) {
                    f.reported_truncation = Some((truncation, at_ns));
                    f.truncations_taken = f.truncations_taken.max(truncation);
                    // Reads from here on are of the new contents: all their bytes count
                    // until reading resumes in them (`finish_truncation`).
                    if f.read_position.is_some_and(|at| at > 0) && !f.derived {
                        f.read_position = Some(0);
                        self.effects.push_back(Effect::ReadPosition { inode, at: Some(0) });
                    }
                }
                tracker::Event::Truncate { inode, size_before, size_after }
            }
            Event::Created { inode, path, pid } => tracker::Event::Created { inode, path, pid },
            Event::Renamed { inode, path } => tracker::Event::Renamed { inode, path },
            Event::Unlinked { inode } => tracker::Event::Unlinked { inode },
        };
        let now_ns = self.ns(now);
        for action in self.tracker.on_event(tracker_event, now_ns, flow_of) {
            self.apply(action, now);
        }
        if let Some((inode, end)) = unopened_write {
            self.gone_unopened_written_to(inode, end);
        }
    }

    fn apply(&mut self, action: Action, now: Instant) {
        match action {
            Action::Track { inode, flow, path, from } => {
                self.effects.push_back(Effect::Track { inode, flow, path, from })
            }
            Action::HoldDerived { inode, .. } => {
                self.gone_unopened.remove(&inode);
                let open = match self.files.get_mut(&inode) {
                    Some(f) => {
                        f.derived = true;
                        if f.read_position.take().is_some() {
                            self.effects.push_back(Effect::ReadPosition { inode, at: None });
                        }
                        self.dirty.remove(&inode);
                        false
                    }
                    None => {
                        // Not held yet: the kernel may carry reads of it from 0 (a file
                        // created in a watched directory), which nothing needs.
                        self.effects.push_back(Effect::ReadPosition { inode, at: None });
                        true
                    }
                };
                self.effects.push_back(Effect::HoldDerived { inode, open });
            }
            Action::Untrack { inode } => {
                self.settle_held(inode, now);
                self.dirty.remove(&inode);
                self.sweep.forget(&inode);
                // Its checkpoint outlives it while the file exists.
                self.effects.push_back(Effect::Checkpoint { inode, force: true });
                self.effects.push_back(Effect::Release { inode });
            }
            Action::Read { inode } => {
                if self.files.get(&inode).is_some_and(|f| !f.derived) {
                    self.dirty.insert(inode);
                }
            }
            Action::Truncated { inode, size_before, size_after, recover_from } => {
                let number = self.files.get_mut(&inode).and_then(|f| f.reported_truncation.take());
                self.truncated(inode, size_before, size_after, recover_from, number, now);
            }
            Action::Moved { .. } => {}
        }
    }

    /// Tells the kernel where an original is read to, when that moved: what another task
    /// reads past it comes with its bytes (see `collector_common::READ_CAPTURE_REACH`).
    /// Not while reading is in old contents: the kernel keeps 0 from the truncation's
    /// event then.
    ///
    /// A map update is a syscall, and a file is read many times a second: the position is
    /// raised only by READ_POSITION_STEP or more (one lower than the truth only makes other
    /// tasks' reads carry a little more), and lowered at once.
    fn publish_read_position(&mut self, inode: InodeKey) {
        let Some(f) = self.files.get_mut(&inode) else { return };
        let at = f.framer.next_offset();
        if f.derived || f.in_old_contents() || f.read_position.is_some_and(|p| p <= at && at - p < READ_POSITION_STEP) {
            return;
        }
        f.read_position = Some(at);
        self.effects.push_back(Effect::ReadPosition { inode, at: Some(at) });
    }

    /// Whether anything is to be read now.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }
}

/// Compressed archives and executables are not logs.
fn is_compressed_or_binary(head: &[u8]) -> bool {
    const MAGICS: &[&[u8]] = &[b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00", b"BZh", b"\x7fELF", b"PK\x03\x04"];
    MAGICS.iter().any(|m| head.starts_with(m))
}
#[cfg(test)]
mod simulation;
