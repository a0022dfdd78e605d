//! `collector run`: the loop that ties the kernel events, the tracker, the files it holds
//! open, the framer, the sinks and the checkpoints together. All I/O lives here; decisions
//! about inodes live in the tracker.
//!
//! Each turn: take every kernel event there is and apply it; read what the events said is
//! new (pread from held descriptors, never by path); take the events that arrived during
//! the reads (a truncation among them voids what was just read of that file); frame and
//! deliver; checkpoint what the sinks accepted.

use std::{
    fs::File,
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirEntryExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use collector_common::InodeKey;

use anyhow::Context as _;

use crate::{
    cgroup::CgroupNames,
    checkpoint::{self, Checkpoint, Identity, Loaded, Store},
    config::{Config, InitialPosition, SinkConfig},
    devices,
    event_queue::EventQueue,
    framer::{Framed, Framer, FramerConfig},
    inode_map::{InodeMap, InodeSet},
    metrics::{self, FileStatus, FlowCounters, FlowStatus, Snapshot},
    probe::{AttachMode, Probe, event::KernelEvent},
    sink::{Batch, Outgoing, Refused, Sink, Source, Writer, file::FileSink, null::NullSink},
    sweep::{Look, Sweep},
    tracker::{self, Action, Tracker},
    transform,
    truncation::{self, Captures, CutWrite, Cuts, Held, Placed, Truncation},
    watch::WatchSet,
};

/// How far reading must move before the kernel is told (`publish_read_position`).
const READ_POSITION_STEP: u64 = 64 << 10;
/// Bytes read from one file per turn, so one busy file cannot starve the others.
const READ_PER_TURN: usize = 1 << 20;
/// Checkpoints of a busy file are written at most this often (and always on truncation,
/// release and shutdown): after a crash, at most this much is sent again.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// After a sink refused a batch, its flow reads nothing for this long, then tries again.
const SINK_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// How long a stopping collector waits for its last CloudWatch metrics to be sent.
const LAST_METRICS_SEND: Duration = Duration::from_secs(5);
/// Housekeeping (checkpoints, flushes, releases, the sweep, the /metrics snapshot) runs this
/// often while anything happens...
const TICK: Duration = Duration::from_millis(100);
/// ... and this often once nothing has for `QUIET_AFTER`, with nothing held, deferred or
/// paused: an idle collector wakes once a second, whatever the number of files it holds.
const QUIET_TICK: Duration = Duration::from_secs(1);
const QUIET_AFTER: Duration = Duration::from_secs(2);
/// How often the patterns are globbed again for new directories and links (`rescan`).
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Bytes just read from a file, and when the read ended (CLOCK_BOOTTIME, the clock of the
/// kernel events), to tell whether a truncation reported afterwards came before them.
struct Chunk {
    inode: InodeKey,
    at: u64,
    bytes: Vec<u8>,
    read_end_ns: u64,
}

/// Up to `want` bytes of `file` from `at`, read straight into fresh memory: records are
/// slices of it, so it is not reused, and zeroing a megabyte per read only to overwrite it
/// showed in profiles.
fn read_new(file: &File, at: u64, want: usize) -> std::io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(want);
    let n = loop {
        // SAFETY: pread writes at most `want` bytes into the spare capacity, and only the
        // `n` bytes it reports are then marked initialised.
        let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), want, at as libc::off_t) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: pread reported writing `n` bytes (n <= want <= capacity) into the spare
    // capacity, so the first `n` bytes are initialised.
    unsafe { buf.set_len(n) };
    Ok(buf)
}

fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a local timespec that clock_gettime fills in; no other memory is passed.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct OpenFile {
    file: File,
    flow: usize,
    framer: Framer,
    /// Every byte before this was accepted by the sink (or skipped on purpose).
    acknowledged: u64,
    /// Every byte before this is durable in the sink (made so before its checkpoint was
    /// saved): where reading starts again if the sink loses what it took since
    /// (`durability_failed`).
    durable: u64,
    identity: Identity,
    /// A derived file (copy, .gz): held for recovery, never shipped.
    derived: bool,
    last_input: Instant,
    /// When the checkpoint was last written, and at which offset.
    checkpointed: Option<(Instant, u64)>,
    /// Bytes the kernel carried with writes during a capture window, by file offset: what
    /// a copytruncate's truncation would otherwise take before they are read.
    captured: Captures,
    /// The process that last wrote the file, as the kernel reported it.
    writer: Option<Writer>,
    /// Found by the sweep with bytes no event announced: the next read counts them.
    swept: bool,
    /// After a copytruncate: the unread tail, read from the copy before the file itself.
    copied_tail: Option<CopiedTail>,
    /// A truncation waiting for the writes it cut (see `truncation`); nothing is read
    /// meanwhile.
    held: Option<Held>,
    /// The copy that held truncation recovers from, its descriptor taken when the
    /// truncation came: logrotate's `compress` deletes the copy (and the daemon releases it)
    /// within the hold, on tmpfs well within it.
    held_copy: Option<File>,
    /// Writes cut by a truncation whose event has not come yet.
    cuts: Cuts,
    /// The kernel's number of the truncation being reported (`KernelEvent::Truncate`),
    /// from the event until the tracker's action for it.
    reported_truncation: Option<u64>,
    /// The read position last given to the kernel (`Probe::set_read_position`).
    read_position: Option<u64>,
}

impl OpenFile {
    /// Keeps bytes the kernel captured at `pos` unless they were read already. While a
    /// copied tail is read or a truncation held, reading is at offsets of the old contents;
    /// the bytes captured then belong to the new ones, for the next truncation.
    fn keep_captured(&mut self, pos: u64, bytes: Vec<u8>) {
        if !bytes.is_empty()
            && (self.copied_tail.is_some()
                || self.held.is_some()
                || pos + bytes.len() as u64 > self.framer.next_offset())
        {
            self.captured.keep(pos, bytes);
        }
    }
}

/// The bytes a copytruncate cut from an original before they were read, up to `end`, are in
/// the copy: they are read from there like any file (in pieces, and again after a sink
/// refused them), so a long tail takes no memory and a sink that is down loses none of it.
/// Then the rest of the truncation is done (`Truncation::verdict`).
struct CopiedTail {
    /// The copy's own handle: the copy may be released, renamed or deleted meanwhile.
    copy: File,
    end: u64,
    truncation: Truncation,
}

pub struct Daemon {
    config: Config,
    probe: Probe,
    events: EventQueue,
    tracker: Tracker,
    open: InodeMap<OpenFile>,
    dirty: InodeSet,
    store: Store,
    sinks: Vec<Box<dyn Sink + Send>>,
    patterns: Vec<WatchSet>,
    dirs: InodeMap<PathBuf>,
    started: Instant,
    last_rescan: Instant,
    lost_seen: u64,
    /// Per flow: while its sink refuses batches, no reading until this time.
    paused_until: Vec<Option<Instant>>,
    /// Files with unshipped bytes whose flow is paused.
    waiting: InodeSet,
    /// Per flow: the sink error last logged, so a lasting failure is logged once.
    sink_error: Vec<Option<String>>,
    /// Files whose new bytes wait for more (`max_batch_age`), with when they are due.
    deferred: InodeMap<Instant>,
    /// Per flow: what it read, sent, retried and lost, for /metrics.
    counters: Vec<FlowCounters>,
    /// Per flow: since when its sink refuses batches.
    failing_since: Vec<Option<Instant>>,
    /// Checkpoints that could not be saved (a full or read-only state directory), and since
    /// when they fail with which cause, logged once per cause.
    checkpoint_failures: u64,
    checkpoints_failing: Option<(Instant, String)>,
    /// Where the snapshot for /metrics, /health and /status goes, when they are served.
    metrics: Option<metrics::Shared>,
    /// Writers' cgroup paths, for flows that add them to records.
    cgroups: CgroupNames,
    /// The instance's identity, for flows that add it (read at start-up).
    ec2: Option<serde_json::Map<String, serde_json::Value>>,
    /// The records of the read being shipped; kept to reuse its buffers.
    framed: Framed,
    /// The safety sweep for writes the kernel hooks do not see.
    sweep: Sweep,
}

impl Daemon {
    pub fn new(config: Config, mut probe: Probe) -> anyhow::Result<Daemon> {
        let events = EventQueue::new(probe.take_events()?)?;
        let flows = config.flows.len();
        let store = Store::open(&config.state_dir)?;
        let sweep = Sweep::new(config.flows.iter().map(|f| f.sweep_interval));
        let mut sinks: Vec<Box<dyn Sink + Send>> = Vec::new();
        let mut patterns = Vec::new();
        for flow in &config.flows {
            sinks.push(match &flow.sink {
                SinkConfig::File { path, format } => Box::new(FileSink::open(path, *format, &config.host)?),
                SinkConfig::Null => Box::new(NullSink::default()),
                #[cfg(feature = "kinesis")]
                SinkConfig::Kinesis(k) => Box::new(crate::sink::kinesis::KinesisSink::open(k, &config.host)?),
                #[cfg(feature = "kinesis")]
                SinkConfig::Firehose(f) => Box::new(crate::sink::firehose::FirehoseSink::open(f, &config.host)?),
                #[cfg(not(feature = "kinesis"))]
                SinkConfig::Kinesis(_) | SinkConfig::Firehose(_) => {
                    anyhow::bail!("this collector was built without the AWS sinks")
                }
            });
            patterns.push(WatchSet::with_exclude(&flow.paths, &flow.exclude)?);
        }
        let ec2 = match config.flows.iter().find(|f| f.transforms.needs_ec2()) {
            Some(flow) => {
                let endpoint = crate::transform::ec2::endpoint();
                let identity = crate::transform::ec2::fetch(&endpoint).with_context(|| {
                    format!("flow `{}`: add_ec2_metadata: the instance metadata service at {endpoint}", flow.name)
                })?;
                tracing::info!(instance = %identity.get("instanceId").and_then(|v| v.as_str()).unwrap_or("?"), "instance metadata read");
                Some(identity)
            }
            None => None,
        };
        Ok(Daemon {
            config,
            probe,
            events,
            tracker: Tracker::default(),
            open: InodeMap::default(),
            dirty: InodeSet::default(),
            store,
            sinks,
            framed: Framed::default(),
            sweep,
            patterns,
            dirs: InodeMap::default(),
            started: Instant::now(),
            last_rescan: Instant::now(),
            lost_seen: 0,
            paused_until: vec![None; flows],
            waiting: InodeSet::default(),
            sink_error: vec![None; flows],
            deferred: InodeMap::default(),
            counters: vec![FlowCounters::default(); flows],
            failing_since: vec![None; flows],
            checkpoint_failures: 0,
            checkpoints_failing: None,
            metrics: None,
            cgroups: CgroupNames::default(),
            ec2,
        })
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn flow_of(patterns: &[WatchSet]) -> impl Fn(&Path) -> Option<usize> {
        move |path: &Path| patterns.iter().position(|p| p.matches(path))
    }

    /// Start-up: watch the flows' directories, pick up matching files at their
    /// checkpoints, and find by inode the files that rotated while the collector was down.
    fn start(&mut self) -> anyhow::Result<()> {
        let mut found = Vec::new();
        for i in 0..self.patterns.len() {
            let scan = self.patterns[i].scan();
            for dir in scan.dirs {
                self.probe.watch_dir(dir)?;
            }
            self.dirs.extend(self.patterns[i].dirs().map(|(k, p)| (*k, p.clone())));
            found.extend(self.patterns[i].tracked_files().map(|(k, t)| (*k, i, t.path.clone())));
        }
        for (inode, flow, path) in found {
            if self.open.contains_key(&inode) {
                continue;
            }
            self.pick_up(inode, flow, path, false, false);
        }
        for c in self.store.all() {
            let inode = InodeKey::new(c.dev, c.ino);
            if self.open.contains_key(&inode) {
                continue;
            }
            match self.find_moved(&c) {
                Some(path) => {
                    tracing::info!(path = %path.display(), was = %c.path.display(), "resuming a file that was rotated while stopped");
                    let flow = self.config.flows.iter().position(|f| f.name == c.flow).unwrap_or(0);
                    self.pick_up(inode, flow, path, true, false);
                }
                None => self.store.remove(inode),
            }
        }
        Ok(())
    }

    /// Where a checkpointed inode lives now: its old directory and the watched ones.
    fn find_moved(&self, c: &Checkpoint) -> Option<PathBuf> {
        self.locate(InodeKey::new(c.dev, c.ino), &c.path)
    }

    /// Where `inode`, last known at `last_path`, lives now: its old directory first, then
    /// the watched ones. A directory that cannot be read, or an entry gone meanwhile, is
    /// skipped.
    fn locate(&self, inode: InodeKey, last_path: &Path) -> Option<PathBuf> {
        let dirs = last_path.parent().map(Path::to_owned).into_iter().chain(self.dirs.values().cloned());
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.ino() == inode.ino
                    && let Ok(id) = devices::of_path(&entry.path())
                    && id.is_file()
                    && id.key == inode
                {
                    return Some(entry.path());
                }
            }
        }
        None
    }

    /// Directories and links that appeared under the patterns since the last scan: the
    /// kernel programs see no mkdir or symlink, so they are looked for every `RESCAN_EVERY`
    /// (a new pod's directory under /var/log/pods/**, a new link in /var/log/containers).
    /// Their files are picked up from their start (from a checkpoint if one is found).
    fn rescan(&mut self) {
        for i in 0..self.patterns.len() {
            for dir in self.patterns[i].prune() {
                // Another flow may watch it still.
                if self.patterns.iter().all(|p| p.dir_path(&dir).is_none()) {
                    self.dirs.remove(&dir);
                    if let Err(e) = self.probe.unwatch_dir(dir) {
                        tracing::warn!("cannot unwatch a removed directory: {e:#}");
                    }
                }
            }
        }
        let mut late = Vec::new();
        for i in 0..self.patterns.len() {
            let scan = self.patterns[i].scan();
            for dir in &scan.dirs {
                if let Err(e) = self.probe.watch_dir(*dir) {
                    tracing::warn!(dir = %self.patterns[i].dir_path(dir).unwrap_or_default(), "cannot watch a new directory: {e:#}");
                }
            }
            if !scan.dirs.is_empty() {
                self.dirs.extend(self.patterns[i].dirs().map(|(k, p)| (*k, p.clone())));
            }
            late.extend(scan.late.into_iter().map(|(k, p)| (k, i, p)));
        }
        for (inode, flow, path) in late {
            if self.open.contains_key(&inode) || self.tracker.get(&inode).is_some() {
                continue;
            }
            tracing::info!(path = %path.display(), "a file in a new directory or behind a new link");
            self.pick_up(inode, flow, path, false, true);
        }
    }

    /// Opens a file found on disk and starts tracking it from its checkpoint; `appeared`: it
    /// appeared while running (read from its start, whatever `initial_position` says).
    fn pick_up(&mut self, inode: InodeKey, flow: usize, path: PathBuf, rotated: bool, appeared: bool) {
        let Some(file) = open_safely(&path) else { return };
        // The inode the scan checked (a trusted link's target, say), not one put there since.
        if devices::of_file(&file).map_or(true, |id| id.key != inode) {
            tracing::info!(path = %path.display(), "replaced while it was picked up; its new file is picked up by its events");
            return;
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let from = match self.store.load(inode) {
            Loaded::Found(c) if c.derived && c.identity.matches(&file).unwrap_or(false) => {
                tracing::debug!(path = %path.display(), "a copy or archive of a log, not shipped");
                self.tracker.remembered_derived(inode, path, self.now_ns());
                return;
            }
            Loaded::Found(c) if c.identity.matches(&file).unwrap_or(false) && c.acknowledged <= size => c.acknowledged,
            Loaded::Found(c) if c.identity.matches(&file).unwrap_or(false) => {
                tracing::warn!(path = %path.display(), checkpoint = c.acknowledged, size, "file shrank while stopped; reading from its start");
                0
            }
            Loaded::Found(_) => {
                tracing::info!(path = %path.display(), "inode number reused by a new file: its old checkpoint does not apply");
                0
            }
            Loaded::Corrupt { moved_to, error } => {
                tracing::error!(checkpoint = %moved_to.display(), %error, path = %path.display(), "corrupt checkpoint set aside; reading this file from its current end (nothing is sent twice)");
                size
            }
            Loaded::Missing if !appeared && self.config.flows[flow].initial_position == InitialPosition::End => size,
            Loaded::Missing => 0,
        };
        let action = self.tracker.discovered(inode, flow, path.clone(), from, self.now_ns());
        if rotated {
            let _ = self.tracker.on_event(tracker::Event::Renamed { inode, path }, self.now_ns(), &|_| Some(flow));
        }
        self.apply(action, Some(file));
    }

    fn apply(&mut self, action: Action, opened: Option<File>) {
        match action {
            Action::Track { inode, flow, path, from } => {
                let Some(file) = opened.or_else(|| self.open_inode(inode, &path)) else { return };
                let identity = Identity::of(&file).unwrap_or_default();
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                // A file released earlier and renamed into a matching name again (logrotate
                // shifting app.log.1 to app.log.2): its checkpoint says what was shipped.
                let from = match self.store.load(inode) {
                    Loaded::Found(c)
                        if !c.derived
                            && c.acknowledged > from
                            && c.acknowledged <= size
                            && c.identity.matches(&file).unwrap_or(false) =>
                    {
                        c.acknowledged
                    }
                    _ => from,
                };
                if let Err(e) = self.probe.watch_inode(inode, size) {
                    tracing::error!(path = %path.display(), "cannot watch: {e:#}");
                    return;
                }
                let framer = Framer::new(framer_config(&self.config, flow), from);
                let entry = OpenFile {
                    file,
                    flow,
                    framer,
                    acknowledged: from,
                    durable: from,
                    identity,
                    derived: false,
                    last_input: Instant::now(),
                    checkpointed: None,
                    captured: Default::default(),
                    copied_tail: None,
                    writer: None,
                    swept: false,
                    held: None,
                    cuts: Cuts::default(),
                    reported_truncation: None,
                    held_copy: None,
                    read_position: None,
                };
                // A file created while running is read on its first write: that write's
                // task may show it is a copy, which must never be shipped.
                let fresh = self.tracker.get(&inode).is_some_and(|t| t.fresh);
                if from < size && !fresh {
                    self.dirty.insert(inode);
                }
                self.open.insert(inode, entry);
                self.publish_read_position(inode);
            }
            Action::HoldDerived { inode, .. } => {
                if let Some(f) = self.open.get_mut(&inode) {
                    f.derived = true;
                    self.dirty.remove(&inode);
                    if f.read_position.take().is_some() {
                        let _ = self.probe.forget_read_position(inode);
                    }
                } else if let Some(path) = self.tracker.get(&inode).map(|t| t.path.clone())
                    && let Some(file) = self.open_inode(inode, &path).or_else(|| {
                        // logrotate's copy, compress and delete can all pass before the
                        // create event is taken (about 1 ms on tmpfs).
                        tracing::debug!(path = %path.display(), "a copy was gone before it could be opened");
                        None
                    })
                {
                    let framer = Framer::new(framer_config(&self.config, 0), 0);
                    let identity = Identity::default();
                    self.open.insert(
                        inode,
                        OpenFile {
                            file,
                            flow: 0,
                            framer,
                            acknowledged: 0,
                            durable: 0,
                            identity,
                            derived: true,
                            last_input: Instant::now(),
                            checkpointed: None,
                            captured: Default::default(),
                            copied_tail: None,
                            writer: None,
                            swept: false,
                            held: None,
                            cuts: Cuts::default(),
                            reported_truncation: None,
                            held_copy: None,
                            read_position: None,
                        },
                    );
                }
                self.remember_derived(inode);
            }
            Action::Untrack { inode } => {
                self.settle_held(inode);
                let _ = self.probe.unwatch_inode(inode);
                self.dirty.remove(&inode);
                self.sweep.forget(&inode);
                // Its checkpoint outlives it while the file exists (see Track).
                self.checkpoint(inode, true);
                if let Some(f) = self.open.remove(&inode)
                    && f.file.metadata().is_ok_and(|m| m.nlink() == 0)
                {
                    self.store.remove(inode);
                }
            }
            Action::Read { inode } => {
                if self.open.get(&inode).is_some_and(|f| !f.derived) {
                    self.dirty.insert(inode);
                }
            }
            Action::Truncated { inode, size_before, size_after, recover_from } => {
                let number = self.open.get_mut(&inode).and_then(|f| f.reported_truncation.take());
                self.truncated(inode, size_before, size_after, recover_from, number);
            }
            Action::Moved { .. } => {}
        }
    }

    /// An original shrank from `size_before` to `size_after`. What it held beyond what was
    /// read (`read_to`) is read from the copy, when a copytruncate made one (see
    /// `CopiedTail`), then taken from the bytes the kernel captured with the writes after the
    /// copy; reading resumes where the file still holds unread bytes, or at its new end.
    ///
    /// `read_to` may be 0 with a whole generation unread: when the sink is slow, several
    /// rotations can pass between two reads.
    ///
    /// First it is held (see `cut`) while writes it cut may still report their bytes:
    /// unless nothing can be missing (the size before is exact in fentry and kprobe modes,
    /// and what was read, the copy and the captured bytes reach it), or the daemon inferred
    /// it (no write names it).
    /// `truncation`: the kernel's number for it, `None` when the daemon inferred it.
    fn truncated(
        &mut self,
        inode: InodeKey,
        size_before: u64,
        size_after: u64,
        recover_from: Option<(InodeKey, u64)>,
        truncation: Option<u64>,
    ) {
        // One at a time: an earlier held truncation is settled first.
        self.settle_held(inode);
        let exact = self.size_before_is_exact();
        let Some(f) = self.open.get_mut(&inode) else { return };
        let cuts = truncation.map(|n| f.cuts.take(n)).unwrap_or_default();
        let read_to = f.framer.next_offset();
        let held = Held {
            read_to,
            truncation,
            size_before,
            size_after,
            recover_from,
            // Taken now: what is captured from here on belongs to the new contents.
            captured: std::mem::take(&mut f.captured),
            cuts,
            due: Instant::now() + truncation::HOLD,
        };
        if truncation.is_none() || exact && held.is_filled() {
            self.apply_truncation(inode, held);
            return;
        }
        tracing::debug!(ino = inode.ino, ?truncation, "truncation held for the writes it cut");
        self.deferred.insert(inode, held.due);
        let copy = recover_from.and_then(|(copy, _)| self.open.get(&copy)).and_then(|c| c.file.try_clone().ok());
        let f = self.open.get_mut(&inode).expect("checked");
        f.held = Some(held);
        f.held_copy = copy;
    }

    /// Tells the kernel where an original is read to, when that moved: what another task
    /// reads past it comes with its bytes (see `collector_common::READ_CAPTURE_REACH`).
    /// Not while a truncation is held or its copied tail read: offsets are the old
    /// contents' then, and the kernel keeps 0 from the truncation's event.
    ///
    /// A map update is a syscall, and a file is read many times a second: the position is
    /// raised only by READ_POSITION_STEP or more (one lower than the truth only makes other
    /// tasks' reads carry a little more), and lowered at once.
    fn publish_read_position(&mut self, inode: InodeKey) {
        let Some(f) = self.open.get_mut(&inode) else { return };
        let at = f.framer.next_offset();
        if f.derived
            || f.held.is_some()
            || f.copied_tail.is_some()
            || f.read_position.is_some_and(|p| p <= at && at - p < READ_POSITION_STEP)
        {
            return;
        }
        f.read_position = Some(at);
        if let Err(e) = self.probe.set_read_position(inode, at) {
            tracing::debug!(ino = inode.ino, "{e:#}");
        }
    }

    /// Whether the kernel reads a truncation's size before under the inode lock (fentry and
    /// kprobe modes; tracepoint mode reads it as the syscall begins).
    fn size_before_is_exact(&self) -> bool {
        self.probe.mode() != AttachMode::Tracepoint
    }

    /// The held truncation of `inode`, if any, is carried out now.
    fn settle_held(&mut self, inode: InodeKey) {
        if let Some(held) = self.open.get_mut(&inode).and_then(|f| f.held.take()) {
            self.apply_truncation(inode, held);
        }
    }

    /// Held truncations whose time came, among `inodes`, are carried out.
    fn settle_due(&mut self, inodes: &InodeSet) {
        let now = Instant::now();
        let due: Vec<InodeKey> = inodes
            .iter()
            .filter(|k| self.open.get(k).and_then(|f| f.held.as_ref()).is_some_and(|h| h.due <= now))
            .copied()
            .collect();
        for inode in due {
            self.settle_held(inode);
        }
    }

    /// A write cut by truncation `n` reported its bytes.
    fn cut_write(&mut self, inode: InodeKey, n: u64, cut: CutWrite) {
        let exact = self.size_before_is_exact();
        let Some(f) = self.open.get_mut(&inode) else { return };
        let (pos, len) = (cut.pos, cut.len);
        let placed = f.cuts.place(f.held.as_mut(), n, cut);
        // Where the size before is exact, a truncation whose gap is filled has nothing more
        // to wait for.
        if placed == Placed::Held && exact && f.held.as_ref().is_some_and(Held::is_filled) {
            self.settle_held(inode);
            return;
        }
        if placed == Placed::TooLate {
            let path = self.path_of(&inode);
            tracing::warn!(%path, truncation = n, pos, len, "a write cut by a truncation reported its bytes after the truncation was settled; they are lost");
        }
    }

    /// The truncation's steps once the writes it cut had their time: the copy's bytes,
    /// then the captured ones, loss accounting, and where reading resumes.
    fn apply_truncation(&mut self, inode: InodeKey, held: Held) {
        // One copied tail at a time: what is left of an earlier one is sent now (what the
        // sink refuses of it then is counted as lost).
        if self.open.get(&inode).is_some_and(|f| f.copied_tail.is_some()) {
            self.send_copied_tail(inode);
            self.finish_copied_tail(inode);
        }
        let Some(f) = self.open.get_mut(&inode) else { return };
        let read_to = f.framer.next_offset();
        let pinned_copy = f.held_copy.take();
        let (recover_from, cuts) = (held.recover_from, held.cuts.len());
        let truncation = held.settle(read_to);
        let (size_before, size_after) = (truncation.size_before, truncation.size_after);
        tracing::debug!(ino = inode.ino, size_before, size_after, read_to, ?recover_from, cuts, "truncated");
        if let Some((copy, copied)) = recover_from
            && let Some(end) = truncation.copied_tail_end(copied)
            && let Some(copy) = pinned_copy.map(Ok).or_else(|| self.open.get(&copy).map(|c| c.file.try_clone()))
        {
            match copy {
                Ok(copy) => {
                    let f = self.open.get_mut(&inode).expect("checked");
                    f.copied_tail = Some(CopiedTail { copy, end, truncation });
                    // Sent at once while the sink takes it (the usual case); if it refuses,
                    // the rest waits in the copy and is read like any file after the pause.
                    if self.send_copied_tail(inode) {
                        tracing::info!(
                            bytes = end - read_to,
                            "recovered the unread tail of a copytruncated file from its copy"
                        );
                        self.finish_copied_tail(inode);
                    } else {
                        tracing::info!(
                            bytes = end - read_to,
                            "the unread tail of a copytruncated file waits in its copy for the sink"
                        );
                    }
                    return;
                }
                Err(e) => tracing::warn!("cannot read the copy of a copytruncated file: {e}"),
            }
        }
        self.finish_truncation(inode, truncation);
    }

    /// A copied tail read to its end is done: the truncation's remaining steps follow.
    fn finish_copied_tail_if_read(&mut self, inode: InodeKey) {
        let Some(f) = self.open.get(&inode) else { return };
        if f.copied_tail.as_ref().is_some_and(|t| f.framer.next_offset() >= t.end) {
            self.finish_copied_tail(inode);
        }
    }

    fn finish_copied_tail(&mut self, inode: InodeKey) {
        if let Some(tail) = self.open.get_mut(&inode).and_then(|f| f.copied_tail.take()) {
            self.finish_truncation(inode, tail.truncation);
        }
    }

    /// Reads what is left of a copied tail and sends it, piece by piece. False when the sink
    /// refused a piece: the rest (from the acknowledged offset) is still in the copy. True
    /// when the tail was read to its end, or to where the copy ends.
    fn send_copied_tail(&mut self, inode: InodeKey) -> bool {
        loop {
            let Some(f) = self.open.get_mut(&inode) else { return true };
            let Some(tail) = &f.copied_tail else { return true };
            let at = f.framer.next_offset();
            let want = (tail.end.saturating_sub(at) as usize).min(READ_PER_TURN);
            let buf = match read_new(&tail.copy, at, want) {
                Ok(buf) if !buf.is_empty() => buf,
                _ => return true,
            };
            let mut records = Framed::default();
            f.framer.push(at, buf, &mut records);
            if !self.deliver(inode, &records) {
                return false;
            }
        }
    }

    /// The steps of a truncation after the copy's bytes (if any) were read: the bytes the
    /// kernel captured, loss accounting, and where reading resumes (`Truncation::verdict`).
    fn finish_truncation(&mut self, inode: InodeKey, t: Truncation) {
        let Some(f) = self.open.get_mut(&inode) else { return };
        let read_to = t.read_to;
        // Only these bytes are in memory alone if the sink refuses them below.
        let in_memory_from = f.framer.settled_offset();
        let verdict = t.verdict(f.framer.next_offset());
        let mut records = Framed::default();
        let mut from_writes = 0;
        for (at, bytes) in verdict.recovered {
            from_writes += bytes.len();
            f.framer.push(at, bytes, &mut records);
        }
        self.counters[f.flow].bytes_cut_recovered += verdict.cut_recovered;
        if from_writes > 0 {
            tracing::info!(
                bytes = from_writes,
                "recovered bytes written just before a truncation from the kernel's capture"
            );
        }
        if verdict.restart {
            f.framer.flush(&mut records);
        }
        let lost = verdict.lost;
        self.counters[f.flow].bytes_lost += lost;
        if lost > 0 {
            let path = self.path_of(&inode);
            tracing::warn!(%path, lost, "truncated before these bytes could be read; they are gone from disk");
        }
        let recovered_to = verdict.recovered_to;
        if !self.deliver(inode, &records) && recovered_to > in_memory_from.max(read_to) {
            // Known gap: these bytes (captured by the kernel, or the last line of the copy
            // without its newline) exist only in memory.
            let lost = recovered_to - in_memory_from.max(read_to);
            let path = self.path_of(&inode);
            tracing::error!(%path, lost, "the sink refused bytes recovered from a truncation; they are gone from disk");
        }
        if verdict.restart
            && let Some(f) = self.open.get_mut(&inode)
        {
            f.framer.reset(verdict.resume);
            f.acknowledged = verdict.resume;
            // Offsets start again below: nothing after `resume` is durable yet.
            f.durable = f.durable.min(verdict.resume);
        }
        self.publish_read_position(inode);
        self.checkpoint(inode, true);
        self.dirty.insert(inode);
    }

    /// Opens `inode`, last known at `path`. Events can be handled well after they happened
    /// (a slow sink), and the name may hold another file by then (logrotate shifting its
    /// copies): the file is checked to be that inode, and otherwise looked for by inode
    /// number in its directory and the watched ones.
    fn open_inode(&self, inode: InodeKey, path: &Path) -> Option<File> {
        let is_it = |f: &File| devices::of_file(f).is_ok_and(|id| id.key == inode);
        open_safely(path).filter(is_it).or_else(|| open_safely(&self.locate(inode, path)?).filter(is_it))
    }

    /// Applies kernel events to the tracker and carries out what follows.
    fn on_events(&mut self, events: Vec<KernelEvent>) {
        for event in events {
            if !matches!(event, KernelEvent::Write { .. } | KernelEvent::Read { .. }) {
                tracing::trace!(?event, "kernel event");
            }
            let Some(e) = self.translate(event) else { continue };
            let now = self.now_ns();
            let actions = {
                let flow_of = Self::flow_of(&self.patterns);
                self.tracker.on_event(e, now, &flow_of)
            };
            for a in actions {
                self.apply(a, None);
            }
        }
    }

    /// A kernel event in the tracker's terms, with its path resolved.
    fn translate(&mut self, event: KernelEvent) -> Option<tracker::Event> {
        use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _};
        Some(match event {
            KernelEvent::Write { inode, origin, pos, len, captured } => {
                if let Some(f) = self.open.get_mut(&inode) {
                    if f.writer
                        .as_ref()
                        .is_none_or(|w| w.pid != origin.pid || w.comm != origin.comm || w.cgroup_id != origin.cgroup_id)
                    {
                        // The cgroup's name only for flows that ship it (it may walk the tree).
                        let cgroup = self.config.flows[f.flow]
                            .transforms
                            .needs_writer()
                            .then(|| self.cgroups.path(origin.cgroup_id))
                            .flatten();
                        f.writer = Some(Writer {
                            pid: origin.pid,
                            comm: origin.comm.clone(),
                            cgroup_id: origin.cgroup_id,
                            container_id: cgroup.as_deref().and_then(crate::cgroup::container_id),
                            cgroup,
                        });
                    }
                    f.keep_captured(pos, captured);
                }
                tracker::Event::Write { inode, pid: origin.pid, end: pos + len }
            }
            KernelEvent::Read { inode, origin, pos, captured, .. } => {
                // Bytes another task read before the daemon did (logrotate copying the file
                // it is about to truncate): kept as the writes' captured bytes are.
                if let Some(f) = self.open.get_mut(&inode)
                    && !f.derived
                {
                    f.keep_captured(pos, captured);
                }
                tracker::Event::Read { inode, pid: origin.pid }
            }
            KernelEvent::Copy { source, destination, destination_pos, len, .. } => {
                tracker::Event::Copy { source, destination, destination_end: destination_pos + len }
            }
            KernelEvent::CutWrite { inode, pos, len, captured, truncation, .. } => {
                self.cut_write(inode, truncation, CutWrite { pos, len, bytes: captured });
                return None;
            }
            KernelEvent::Truncate { inode, size_before, size_after, truncation, .. } => {
                if let Some(f) = self.open.get_mut(&inode) {
                    f.reported_truncation = Some(truncation);
                    // Reads from here on are of the new contents: all their bytes count
                    // until reading resumes in them (`finish_truncation`).
                    if f.read_position.is_some_and(|at| at > 0) && !f.derived {
                        f.read_position = Some(0);
                        let _ = self.probe.set_read_position(inode, 0);
                    }
                }
                // A copy's writes after its first may have been folded into earlier events
                // (see COALESCE_APPENDS): how far it got is the kernel's known end of it.
                for copy in self.tracker.copies_of(&inode) {
                    if let Some(end) = self.probe.known_end(copy) {
                        self.tracker.copied_up_to(&copy, end);
                    }
                }
                tracker::Event::Truncate { inode, size_before, size_after }
            }
            KernelEvent::Create { inode, parent, name, origin } => {
                let path = self.dirs.get(&parent)?.join(OsStr::from_bytes(&name));
                tracker::Event::Created { inode, path, pid: origin.pid }
            }
            KernelEvent::Rename { inode, base_dir, dfd, name, origin, .. } => {
                let name = Path::new(OsStr::from_bytes(&name));
                let path = if name.is_absolute() {
                    name.to_owned()
                } else if let Some(dir) = self.dirs.get(&base_dir) {
                    dir.join(name)
                } else if dfd == libc::AT_FDCWD {
                    std::fs::read_link(format!("/proc/{}/cwd", origin.tid)).ok()?.join(name)
                } else {
                    std::fs::read_link(format!("/proc/{}/fd/{dfd}", origin.tid)).ok()?.join(name)
                };
                let inode = if inode.is_unknown() { devices::key_of_path(&path)? } else { inode };
                tracker::Event::Renamed { inode, path }
            }
            KernelEvent::Unlink { inode, .. } => tracker::Event::Unlinked { inode },
        })
    }

    /// Reads what is new in every dirty file.
    fn read_dirty(&mut self) -> Vec<Chunk> {
        let dirty = std::mem::take(&mut self.dirty);
        self.settle_due(&dirty);
        // Settling may have marked files dirty again.
        self.dirty.extend(dirty);
        let mut chunks = Vec::new();
        let mut copies_short = Vec::new();
        for inode in std::mem::take(&mut self.dirty) {
            // Deferred again below if it still waits; gone otherwise.
            let due = self.deferred.remove(&inode);
            let Some(f) = self.open.get_mut(&inode) else { continue };
            if let Some(held) = &f.held {
                // Its truncation waits for the writes it cut (settled above once due).
                self.deferred.insert(inode, held.due);
                continue;
            }
            if self.paused_until[f.flow].is_some() {
                self.waiting.insert(inode);
                continue;
            }
            let at = f.framer.next_offset();
            // A copied tail is read first, from the copy, at once.
            let (file, size) = match &f.copied_tail {
                Some(tail) => (&tail.copy, tail.end),
                None => (&f.file, f.file.metadata().map(|m| m.len()).unwrap_or(0)),
            };
            if size < at {
                // Truncated: its event is on its way and says what to recover.
                continue;
            }
            let want = ((size - at) as usize).min(READ_PER_TURN);
            if want == 0 {
                continue;
            }
            // A small amount of new bytes waits on disk for more, up to max_batch_age.
            let age = self.config.flows[f.flow].max_batch_age;
            if f.copied_tail.is_none()
                && !age.is_zero()
                && !f.framer.holds()
                && (want as u64) < self.sinks[f.flow].full_batch_bytes()
            {
                let due = due.unwrap_or_else(|| Instant::now() + age);
                if Instant::now() < due {
                    self.deferred.insert(inode, due);
                    continue;
                }
            }
            match read_new(file, at, want) {
                Ok(buf) if buf.is_empty() && f.copied_tail.is_some() => {
                    // The copy is shorter than it was: what it lacks is counted as lost.
                    copies_short.push(inode);
                }
                Ok(buf) => {
                    let n = buf.len();
                    if n == want && (size - at) as usize > want {
                        self.dirty.insert(inode);
                    }
                    if at == 0 && is_compressed_or_binary(&buf) {
                        let path = self.tracker.get(&inode).map(|t| t.path.display().to_string()).unwrap_or_default();
                        // Rotation with `compress` makes one an hour forever: said once per flow.
                        let counters = &mut self.counters[f.flow];
                        if counters.files_skipped_binary == 0 {
                            tracing::warn!(%path, flow = %self.config.flows[f.flow].name, "skipping a compressed or binary file that matches a pattern (further ones are logged at debug and counted in collector_skipped_binary_files_total)");
                        } else {
                            tracing::debug!(%path, "skipping a compressed or binary file that matches a pattern");
                        }
                        counters.files_skipped_binary += 1;
                        f.derived = true;
                        continue;
                    }
                    f.last_input = Instant::now();
                    self.counters[f.flow].bytes_read += n as u64;
                    if std::mem::take(&mut f.swept) {
                        self.counters[f.flow].bytes_swept += n as u64;
                    }
                    chunks.push(Chunk { inode, at, bytes: buf, read_end_ns: boot_ns() });
                }
                Err(e) => {
                    tracing::warn!(inode = inode.ino, "read failed: {e}");
                    if f.copied_tail.is_some() {
                        copies_short.push(inode);
                    }
                }
            }
        }
        for inode in copies_short {
            self.finish_copied_tail(inode);
        }
        chunks
    }

    /// Frames and ships what was read. `truncated_at` holds, per inode, the time of a
    /// truncation reported since: a chunk read after it may hold the file's new bytes at old
    /// offsets, so it is dropped (the file is read again from its new start).
    fn frame_and_deliver(&mut self, chunks: Vec<Chunk>, truncated_at: &InodeMap<u64>) {
        for c in chunks {
            if truncated_at.get(&c.inode).is_some_and(|t| *t <= c.read_end_ns) {
                continue;
            }
            let Some(f) = self.open.get_mut(&c.inode) else { continue };
            if f.framer.next_offset() != c.at {
                continue;
            }
            if self.paused_until[f.flow].is_some() {
                // Its sink failed on an earlier chunk of this turn: read again after the pause.
                self.waiting.insert(c.inode);
                continue;
            }
            // Reused: its buffers keep their capacity from one batch to the next.
            let mut framed = std::mem::take(&mut self.framed);
            framed.clear();
            f.framer.push(c.at, c.bytes, &mut framed);
            let read_to = f.framer.next_offset();
            if f.copied_tail.is_none() {
                f.captured.forget_read(read_to);
            }
            let _ = self.deliver(c.inode, &framed);
            self.framed = framed;
            self.finish_copied_tail_if_read(c.inode);
            self.publish_read_position(c.inode);
            self.checkpoint(c.inode, false);
        }
    }

    /// Held-back records whose flush timeout passed.
    fn flush_idle(&mut self) {
        let due: Vec<InodeKey> = self
            .open
            .iter()
            .filter(|(_, f)| !f.derived && f.framer.holds() && f.last_input.elapsed() >= f.framer.flush_after())
            .map(|(k, _)| *k)
            .collect();
        for inode in due {
            let mut records = Framed::default();
            if let Some(f) = self.open.get_mut(&inode) {
                f.framer.flush(&mut records);
            }
            let _ = self.deliver(inode, &records);
            self.checkpoint(inode, false);
        }
    }

    /// Sends records of one file to its flow's sink; on success they count as acknowledged.
    /// On failure they are kept on disk: the file is re-read from its acknowledged offset.
    /// Returns whether the sink took them.
    fn deliver(&mut self, inode: InodeKey, framed: &Framed) -> bool {
        let Some(f) = self.open.get_mut(&inode) else { return false };
        if framed.is_empty() {
            f.acknowledged = f.acknowledged.max(f.framer.settled_offset());
            return true;
        }
        let records = framed.records();
        let flow = &self.config.flows[f.flow];
        let path = self.tracker.get(&inode).map(|t| t.path.clone()).unwrap_or_default();
        // Per record: what the transforms made of it (None: shipped as read).
        let mut transformed: Vec<Option<(Vec<u8>, bool)>> = Vec::new();
        if !flow.transforms.is_empty() {
            let cx = transform::Context { path: &path, writer: f.writer.as_ref(), ec2: self.ec2.as_ref() };
            let counters = &mut self.counters[f.flow];
            for r in records {
                transformed.push(match flow.transforms.apply(framed.data(r), &cx) {
                    transform::Output::Text(text) => Some((text, false)),
                    transform::Output::Json(object) => Some((object, true)),
                    transform::Output::Unparsed => {
                        counters.records_unparsed += 1;
                        counters.records_dropped += u64::from(flow.transforms.drop_unparsed);
                        None
                    }
                });
            }
        }
        // Records to send: as framed, unless transforms changed them.
        let mut outgoing = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let (data, json) = match transformed.get(i) {
                Some(Some((data, json))) => (data.as_slice(), *json),
                Some(None) if flow.transforms.drop_unparsed => continue,
                Some(None) => (framed.data(r), false),
                None => break,
            };
            outgoing.push(Outgoing { offset: r.offset, data, json });
        }
        let origin = Source { flow: &flow.name, path: &path, inode, writer: f.writer.as_ref() };
        let batch =
            if transformed.is_empty() { Batch::framed(origin, framed) } else { Batch::listed(origin, &outgoing) };
        let sink = &mut self.sinks[f.flow];
        // Sink calls can take seconds: the ring buffer is drained meanwhile.
        let result = if batch.is_empty() {
            Ok(())
        } else if sink.may_block() {
            self.events.while_waiting(|| sink.deliver(&batch))
        } else {
            sink.deliver(&batch)
        };
        match result {
            Ok(()) => {
                if self.sink_error[f.flow].take().is_some() {
                    tracing::info!(flow = %flow.name, "the sink accepts batches again");
                }
                self.failing_since[f.flow] = None;
                let counters = &mut self.counters[f.flow];
                counters.records_sent += batch.len() as u64;
                counters.bytes_sent += batch.data_bytes(batch.len());
                let cut = framed.cut();
                counters.records_cut += cut as u64;
                f.acknowledged = f.acknowledged.max(f.framer.settled_offset());
                if cut > 0 {
                    tracing::warn!(flow = %flow.name, path = %path.display(), records = cut, limit = flow.max_record_bytes, dropped_bytes_total = f.framer.dropped_bytes, "records longer than max_record_bytes were cut");
                }
                true
            }
            Err(Refused { accepted, error }) => {
                let counters = &mut self.counters[f.flow];
                counters.records_sent += accepted as u64;
                counters.bytes_sent += batch.data_bytes(accepted);
                // What the destination holds is not sent again: the checkpoint passes it.
                if let Some(first_refused) = batch.get(accepted)
                    && accepted > 0
                {
                    f.acknowledged = f.acknowledged.max(first_refused.offset);
                }
                let acknowledged = f.acknowledged;
                f.framer.reset(acknowledged);
                let flow = f.flow;
                self.waiting.insert(inode);
                let e = format!("{error:#}");
                if self.sink_failed(flow, &e) {
                    tracing::error!(flow = %self.config.flows[flow].name, path = %path.display(), pause = ?SINK_RETRY_PAUSE, "sink refused a batch; the bytes stay on disk and are read again: {e}");
                }
                false
            }
        }
    }

    /// Saves the acknowledged offset; unless `force`, at most every CHECKPOINT_EVERY.
    fn checkpoint(&mut self, inode: InodeKey, force: bool) {
        let (Some(f), Some(t)) = (self.open.get_mut(&inode), self.tracker.get(&inode)) else { return };
        if f.derived {
            return;
        }
        match f.checkpointed {
            Some((_, at)) if at == f.acknowledged => return,
            Some((when, _)) if !force && when.elapsed() < CHECKPOINT_EVERY => return,
            _ => {}
        }
        // What the checkpoint passes must be in the sink for good first.
        if let Err(e) = self.sinks[f.flow].make_durable() {
            let flow = f.flow;
            self.durability_failed(flow, e);
            return;
        }
        f.durable = f.acknowledged;
        let before = f.checkpointed.map_or(u64::MAX, |(_, at)| at);
        f.checkpointed = Some((Instant::now(), f.acknowledged));
        let c = Checkpoint {
            version: checkpoint::FORMAT_VERSION,
            dev: inode.dev,
            ino: inode.ino,
            identity: f.identity.clone(),
            flow: self.config.flows[f.flow].name.clone(),
            path: t.path.clone(),
            acknowledged: f.acknowledged,
            derived: false,
        };
        let saved = self.store.save(&c);
        if saved.is_err()
            && let Some(f) = self.open.get_mut(&inode)
        {
            // Tried again after CHECKPOINT_EVERY, also when no byte moves it further.
            f.checkpointed = Some((Instant::now(), before));
        }
        self.checkpoint_saved(saved);
    }

    /// Counts and says (once per cause) that a checkpoint could not be saved, and when they
    /// are saved again.
    fn checkpoint_saved(&mut self, saved: anyhow::Result<()>) {
        match saved {
            Ok(()) => {
                if let Some((since, _)) = self.checkpoints_failing.take() {
                    tracing::info!(dir = %self.store.dir().display(), after = ?since.elapsed(), "checkpoints are saved again");
                }
            }
            Err(e) => {
                self.checkpoint_failures += 1;
                let cause = e.root_cause().to_string();
                if self.checkpoints_failing.as_ref().is_some_and(|(_, c)| *c == cause) {
                    return;
                }
                tracing::error!(dir = %self.store.dir().display(), "cannot save checkpoints: {e:#}. Shipping goes on; until they are saved again, a restart sends again what was shipped since the last one saved");
                let since = self.checkpoints_failing.take().map_or_else(Instant::now, |(since, _)| since);
                self.checkpoints_failing = Some((since, cause));
            }
        }
    }

    /// The sink could not make what it took durable (an fsync failed): the records it took
    /// since the last checkpoints may never reach its disk. Every file of the flow is read
    /// again from its checkpoint after a pause, as after a refused batch: records may be
    /// written twice, none is lost.
    fn durability_failed(&mut self, flow: usize, error: anyhow::Error) {
        let mut reset = Vec::new();
        for (inode, f) in self.open.iter_mut() {
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
        let e = format!("{error:#}");
        if self.sink_failed(flow, &e) {
            tracing::error!(flow = %self.config.flows[flow].name, pause = ?SINK_RETRY_PAUSE, "the sink could not make records durable; its files are read again from their checkpoints: {e}");
        }
    }

    /// `flow`'s sink failed with `error`: counted, and the flow paused for SINK_RETRY_PAUSE.
    /// True when the error is not the one last reported, so the caller logs it (once).
    fn sink_failed(&mut self, flow: usize, error: &str) -> bool {
        self.counters[flow].batches_failed += 1;
        self.failing_since[flow].get_or_insert_with(Instant::now);
        self.paused_until[flow] = Some(Instant::now() + SINK_RETRY_PAUSE);
        let new = self.sink_error[flow].as_deref() != Some(error);
        if new {
            self.sink_error[flow] = Some(error.to_owned());
        }
        new
    }

    /// A derived file is recorded in the state directory, so a restart does not take it
    /// for a log of its own.
    fn remember_derived(&mut self, inode: InodeKey) {
        let (Some(f), Some(t)) = (self.open.get(&inode), self.tracker.get(&inode)) else { return };
        let c = Checkpoint {
            version: checkpoint::FORMAT_VERSION,
            dev: inode.dev,
            ino: inode.ino,
            identity: Identity::of(&f.file).unwrap_or_default(),
            flow: String::new(),
            path: t.path.clone(),
            acknowledged: 0,
            derived: true,
        };
        let saved = self.store.save(&c);
        self.checkpoint_saved(saved);
    }

    fn expire(&mut self) {
        let now = self.now_ns();
        let idle: Vec<u64> = self.config.flows.iter().map(|f| f.rotated_idle.as_nanos() as u64).collect();
        let open = &self.open;
        let drained = |inode: &InodeKey| {
            open.get(inode).is_none_or(|f| {
                f.derived
                    || f.copied_tail.is_none()
                        && f.file.metadata().is_ok_and(|m| m.len() <= f.framer.next_offset() && !f.framer.holds())
            })
        };
        let actions = self.tracker.expired(now, &|flow| idle[flow], &drained);
        for a in actions {
            self.apply(a, None);
        }
    }

    /// After the ring buffer dropped events: every held file may have news.
    fn recheck_after_loss(&mut self) -> anyhow::Result<()> {
        let lost = self.probe.counters()?.lost;
        if lost > self.lost_seen {
            tracing::warn!(
                lost = lost - self.lost_seen,
                "kernel ring buffer overflowed; re-reading every tracked file"
            );
            self.lost_seen = lost;
            self.dirty.extend(self.open.iter().filter(|(_, f)| !f.derived).map(|(k, _)| *k));
            // A truncation among the lost events: the file is now shorter than what was read.
            let shrunk: Vec<(InodeKey, u64, u64)> = self
                .open
                .iter()
                .filter(|(_, f)| !f.derived && f.copied_tail.is_none() && f.held.is_none())
                .filter_map(|(k, f)| {
                    let size = f.file.metadata().ok()?.len();
                    (size < f.framer.next_offset()).then_some((*k, f.framer.next_offset(), size))
                })
                .collect();
            for (inode, read_to, size) in shrunk {
                self.truncated(inode, read_to, size, None, None);
            }
        }
        Ok(())
    }

    /// The safety sweep (see `sweep`): last sweep's suspects that nothing has read or
    /// truncated since are dealt with now; then each due flow's files are looked at.
    fn sweep(&mut self) {
        let now = Instant::now();
        for (inode, first) in self.sweep.take_suspects(now) {
            let Some(look) = self.sweep_look(&inode) else { continue };
            if look.size > look.read_to && look.read_to < first.size {
                if self.sweep.first_report(inode) {
                    tracing::warn!(path = %self.path_of(&inode), bytes = look.size - look.read_to, "new bytes no write event announced (written past the kernel hooks, by io_uring for one); the periodic sweep reads them");
                }
                if let Some(f) = self.open.get_mut(&inode) {
                    f.swept = true;
                }
                self.tracker.no_first_write(&inode);
                self.dirty.insert(inode);
            } else if look.size < look.read_to && look.read_to == first.read_to {
                tracing::warn!(path = %self.path_of(&inode), read_to = look.read_to, size = look.size, "shorter than what was read, and no truncation event came (truncated past the kernel hooks); reading resumes at its size");
                self.truncated(inode, look.read_to, look.size, None, None);
            }
        }
        for flow in 0..self.config.flows.len() {
            if !self.sweep.due(flow, self.config.flows[flow].sweep_interval, now) {
                continue;
            }
            let held: Vec<InodeKey> = self.open.iter().filter(|(_, f)| f.flow == flow).map(|(k, _)| *k).collect();
            for inode in held {
                if let Some(look) = self.sweep_look(&inode).filter(|l| l.size != l.read_to) {
                    self.sweep.suspect(inode, look, now);
                }
            }
        }
    }

    /// For the sweep: where reading of a held original stands and its size, unless something
    /// is about to read it anyway (dirty, deferred, or waiting for its sink) or it is being
    /// read from its copy. A file created while running that still waits for its first write
    /// event (which would tell whether it is a copy) is looked at too.
    fn sweep_look(&self, inode: &InodeKey) -> Option<Look> {
        let f = self.open.get(inode)?;
        if f.derived || f.copied_tail.is_some() || f.held.is_some() || self.tracker.get(inode).is_none() {
            return None;
        }
        if self.dirty.contains(inode) || self.deferred.contains_key(inode) || self.waiting.contains(inode) {
            return None;
        }
        Some(Look { read_to: f.framer.next_offset(), size: f.file.metadata().ok()?.len() })
    }

    /// Where `inode` was last seen, for the log.
    fn path_of(&self, inode: &InodeKey) -> String {
        self.tracker.get(inode).map(|t| t.path.display().to_string()).unwrap_or_default()
    }

    /// Nothing waits for a tick: no file deferred, waiting for its sink or holding a partial
    /// record, no flow paused, no copied tail being read.
    fn has_nothing_pending(&self) -> bool {
        self.dirty.is_empty()
            && self.deferred.is_empty()
            && self.waiting.is_empty()
            && self.paused_until.iter().all(Option::is_none)
            && self.open.values().all(|f| !f.framer.holds() && f.copied_tail.is_none() && f.held.is_none())
    }

    /// When the first deferred file is due.
    fn next_due(&self) -> Option<Instant> {
        self.deferred.values().min().copied()
    }

    /// Deferred files whose time came are read.
    fn read_due(&mut self) {
        let now = Instant::now();
        self.dirty.extend(self.deferred.iter().filter(|(_, due)| **due <= now).map(|(k, _)| *k));
    }

    /// The snapshot /metrics, /health and /status answer from (when they are served).
    fn publish(&mut self) -> anyhow::Result<()> {
        let Some(shared) = &self.metrics else { return Ok(()) };
        let mut flows: Vec<FlowStatus> = self
            .config
            .flows
            .iter()
            .enumerate()
            .map(|(i, f)| FlowStatus {
                name: f.name.clone(),
                sink: f.sink.kind(),
                counters: FlowCounters { records_retried: self.sinks[i].retried(), ..self.counters[i] },
                lag_bytes: 0,
                files: 0,
                failing: self.failing_since[i].map(|t| (t, self.sink_error[i].clone().unwrap_or_default())),
            })
            .collect();
        let mut files = Vec::new();
        for (inode, f) in &self.open {
            let Some(t) = self.tracker.get(inode) else { continue };
            let size = f.file.metadata().map(|m| m.len()).unwrap_or(0);
            let state = match t.role {
                tracker::Role::Derived { .. } => "copy",
                _ if f.derived => "copy",
                _ if t.rotated || t.unlinked => "rotated",
                _ => "tracking",
            };
            if state != "copy" {
                flows[f.flow].files += 1;
                flows[f.flow].lag_bytes += size.saturating_sub(f.acknowledged);
            }
            files.push(FileStatus {
                path: t.path.display().to_string(),
                flow: if state == "copy" { String::new() } else { self.config.flows[f.flow].name.clone() },
                dev: crate::devices::user_dev(inode.dev),
                ino: inode.ino,
                state,
                size,
                shipped: if state == "copy" { 0 } else { f.acknowledged },
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let counters = self.probe.counters()?;
        let snapshot = Snapshot {
            published: Instant::now(),
            attach_mode: self.probe.mode().to_string(),
            ring_buffer_lost: counters.lost,
            kernel_events: counters.emitted,
            flows,
            files,
            checkpoint_failures: self.checkpoint_failures,
            checkpoints_failing: self
                .checkpoints_failing
                .as_ref()
                .map(|(since, cause)| (*since, format!("{}: {cause}", self.store.dir().display()))),
        };
        *shared.lock().expect("metrics snapshot") = Some(snapshot);
        Ok(())
    }

    /// SIGHUP: sinks that write to a path open it again (logrotate's `create` rotated it,
    /// then `postrotate` sent the signal, as for rsyslog or nginx).
    fn reopen_sinks(&mut self) {
        for flow in 0..self.sinks.len() {
            // Checkpoints may pass what went to the file being let go.
            if let Err(e) = self.sinks[flow].make_durable() {
                self.durability_failed(flow, e);
                continue;
            }
            let name = &self.config.flows[flow].name;
            match self.sinks[flow].reopen() {
                Ok(Some(path)) => tracing::info!(flow = %name, %path, "SIGHUP: reopened the output"),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(flow = %name, "SIGHUP: cannot reopen the output, writing on to the file it had: {e:#}")
                }
            }
        }
    }

    /// Flows whose pause after a sink failure is over read again.
    fn resume_paused(&mut self) {
        let now = Instant::now();
        for pause in &mut self.paused_until {
            if pause.is_some_and(|until| until <= now) {
                *pause = None;
            }
        }
        let open = &self.open;
        let paused = &self.paused_until;
        let ready: Vec<InodeKey> =
            self.waiting.iter().filter(|k| open.get(k).is_none_or(|f| paused[f.flow].is_none())).copied().collect();
        for inode in ready {
            self.waiting.remove(&inode);
            self.dirty.insert(inode);
        }
    }

    /// Checkpoints that waited for CHECKPOINT_EVERY.
    /// Every tick: the files whose acknowledged offset moved since their last checkpoint
    /// (usually none, so an idle collector with many files does nothing per file).
    fn checkpoint_all(&mut self) {
        let moved: Vec<InodeKey> = self
            .open
            .iter()
            .filter(|(_, f)| !f.derived && f.checkpointed.is_none_or(|(_, at)| at != f.acknowledged))
            .map(|(k, _)| *k)
            .collect();
        for inode in moved {
            self.checkpoint(inode, false);
        }
    }

    fn shutdown(&mut self) {
        let inodes: Vec<InodeKey> = self.open.keys().copied().collect();
        for inode in &inodes {
            self.settle_held(*inode);
        }
        for inode in inodes {
            self.checkpoint(inode, true);
        }
    }
}

pub async fn run(config: Config, probe: Probe) -> anyhow::Result<()> {
    // Before anything can say it runs: a SIGTERM from then on stops it cleanly.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    match crate::open_files::raise_to_hard_limit() {
        Ok((before, after)) if after > before => {
            tracing::info!(before, after, "raised the open-files limit (one descriptor per file held)")
        }
        Ok((_, limit)) => tracing::debug!(limit, "open-files limit"),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
    let mut daemon = Daemon::new(config, probe)?;
    if daemon.config.metrics_listen.is_some() || daemon.config.cloudwatch.is_some() {
        daemon.metrics = Some(metrics::Shared::default());
    }
    if let (Some(listen), Some(shared)) = (daemon.config.metrics_listen, &daemon.metrics) {
        metrics::serve(listen, shared.clone()).await?;
    }
    let cloudwatch = cloudwatch(&daemon);
    daemon.start()?;
    daemon.publish()?;
    // Loading parsed the kernel's BTF (megabytes of it); give the freed heap back.
    // SAFETY: malloc_trim takes no pointers; it only hands free heap pages back to the
    // system, and glibc allows it from any thread.
    unsafe { libc::malloc_trim(0) };
    tracing::info!(files = daemon.open.len(), mode = %daemon.probe.mode(), "collector running");
    let mut next_tick = Instant::now() + TICK;
    let mut last_event = Instant::now();
    loop {
        let events = daemon.events.take();
        woken_by(&events, &mut last_event, &mut next_tick);
        daemon.on_events(events);
        let chunks = daemon.read_dirty();
        // Events that came while reading: what was read before a truncation is kept and
        // shipped before the truncation is applied; what may have been read after, dropped.
        let late = daemon.events.take();
        woken_by(&late, &mut last_event, &mut next_tick);
        let mut truncated_at = InodeMap::default();
        for e in &late {
            if let KernelEvent::Truncate { inode, origin, .. } = e {
                truncated_at.entry(*inode).or_insert(origin.boot_ns);
            }
        }
        daemon.frame_and_deliver(chunks, &truncated_at);
        daemon.on_events(late);
        if !daemon.dirty.is_empty() || daemon.events.has_backlog() {
            continue;
        }
        let due = daemon.next_due();
        tokio::select! {
            ready = daemon.events.readable() => ready?,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => daemon.read_due(),
            _ = tokio::time::sleep_until(next_tick.into()) => {
                daemon.checkpoint_all();
                daemon.resume_paused();
                daemon.flush_idle();
                daemon.expire();
                daemon.recheck_after_loss()?;
                daemon.sweep();
                if daemon.last_rescan.elapsed() >= RESCAN_EVERY {
                    daemon.last_rescan = Instant::now();
                    daemon.rescan();
                }
                daemon.publish()?;
                let quiet = last_event.elapsed() >= QUIET_AFTER && daemon.has_nothing_pending();
                next_tick = Instant::now() + if quiet { QUIET_TICK } else { TICK };
            }
            _ = hangup.recv() => daemon.reopen_sinks(),
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    daemon.shutdown();
    tracing::info!("collector stopped; checkpoints written");
    if let Some((stop, task)) = cloudwatch {
        daemon.publish()?;
        let _ = stop.send(());
        if tokio::time::timeout(LAST_METRICS_SEND, task).await.is_err() {
            tracing::warn!("the last CloudWatch metrics were not sent in time");
        }
    }
    Ok(())
}

/// Events came: housekeeping is back to every `TICK`.
fn woken_by(events: &[KernelEvent], last_event: &mut Instant, next_tick: &mut Instant) {
    if !events.is_empty() {
        *last_event = Instant::now();
        *next_tick = (*next_tick).min(*last_event + TICK);
    }
}

/// The CloudWatch sender, when configured: its stop signal and task.
#[cfg(feature = "kinesis")]
fn cloudwatch(daemon: &Daemon) -> Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)> {
    let (config, shared) = (daemon.config.cloudwatch.clone()?, daemon.metrics.clone()?);
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tracing::info!(namespace = %config.namespace, interval = ?config.interval, "metrics sent to CloudWatch");
    Some((stop, tokio::spawn(crate::cloudwatch::run(config, shared, stopped))))
}

#[cfg(not(feature = "kinesis"))]
fn cloudwatch(daemon: &Daemon) -> Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)> {
    if daemon.config.cloudwatch.is_some() {
        tracing::warn!("this collector was built without the AWS SDK: [metrics.cloudwatch] is ignored");
    }
    None
}

fn framer_config(config: &Config, flow: usize) -> FramerConfig {
    let f = &config.flows[flow];
    FramerConfig {
        multiline_start: f.multiline_start.clone(),
        multiline_flush: f.multiline_flush,
        skip_header_lines: f.skip_header_lines,
        max_record_bytes: f.max_record_bytes,
        truncated_terminator: f.truncated_terminator.clone(),
    }
}

/// Opens a log file for reading without following a symlink, and refuses a hard link that
/// someone other than root placed in a directory others can write to: the collector is
/// root and must not read, through a link, what the link's creator could not.
fn open_safely(path: &Path) -> Option<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            // Gone before its event was handled (a temporary file): nothing to say.
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), "cannot open: {e}");
            }
        })
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    if meta.nlink() > 1 {
        let dir = path.parent().and_then(|d| std::fs::metadata(d).ok())?;
        let others_can_write = dir.mode() & 0o022 != 0 || dir.uid() != 0;
        let owners_own_dir = meta.uid() == dir.uid() && dir.uid() != 0 && dir.mode() & 0o022 == 0;
        if others_can_write && !owners_own_dir {
            tracing::warn!(path = %path.display(), owner = meta.uid(), links = meta.nlink(), "skipping a hard-linked file in a directory others can write to (it may link to a file they cannot read)");
            return None;
        }
    }
    Some(file)
}

/// Compressed archives and executables are not logs.
fn is_compressed_or_binary(head: &[u8]) -> bool {
    const MAGICS: &[&[u8]] = &[b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00", b"BZh", b"\x7fELF", b"PK\x03\x04"];
    MAGICS.iter().any(|m| head.starts_with(m))
}
