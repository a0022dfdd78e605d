//! `collector run`: the loop that carries out what the engine decides, over the kernel's
//! events, the files held open, the sinks and the checkpoints.
//!
//! Each turn: take every kernel event there is and hand it to the engine; make the reads it
//! plans (pread from held descriptors, never by path); take the events that arrived during
//! the reads (a truncation among them voids what was just read of that file); frame and
//! deliver; checkpoint what the sinks accepted.

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use collector_common::InodeKey;

use crate::{
    cgroup::CgroupNames,
    checkpoint::Identity,
    config::Config,
    delivery::{About, Delivery, HeldFile},
    engine::{self, Engine, FINISH_ON_STOP, FlowRules, ReadFrom},
    event_queue::EventQueue,
    framer::{Framed, FramerConfig},
    inode_map::InodeMap,
    metrics,
    probe::{AttachMode, Hook, Probe, event::KernelEvent},
    reader,
    sink::Writer,
    watch::WatchSet,
};

/// How long a stopping collector waits for its last CloudWatch metrics to be sent.
const LAST_METRICS_SEND: Duration = Duration::from_secs(5);
/// Housekeeping (checkpoints, flushes, releases, the sweep, the /metrics snapshot) runs this
/// often while anything happens...
const TICK: Duration = Duration::from_millis(100);
/// ... and this often once nothing has for `QUIET_AFTER`, with nothing held, deferred or
/// paused: an idle collector wakes once a second, whatever the number of files it holds.
const QUIET_TICK: Duration = Duration::from_secs(1);
const QUIET_AFTER: Duration = Duration::from_secs(2);
/// While quiet, what looks at every held file (checkpoints due, held-back records,
/// releases) runs this often; each tick keeps the rest (lost events, the sweep, the
/// rescan, the metrics). Looking at 10,000 files every second was a third of an idle
/// collector's CPU.
const QUIET_HOUSEKEEPING: Duration = Duration::from_secs(10);
/// Framing buffers kept for reuse between passes: each keeps the capacity of the largest
/// read it held (up to a megabyte), so only a few are kept.
const SPARE_BUFFERS: usize = 8;
/// How often the patterns are globbed again for new directories and links (`rescan`).
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// A file held open, and what the engine does not need to know of it.
struct Handle {
    file: File,
    identity: Identity,
    /// The process that last wrote the file, as the kernel reported it.
    writer: Option<Writer>,
}

mod discovery;
mod effects;
mod snapshot;
mod translate;

pub struct Daemon {
    config: Config,
    probe: Probe,
    events: EventQueue,
    engine: Engine,
    handles: InodeMap<Handle>,
    /// Copies pinned for an original's truncation, by (original, copy).
    pins: HashMap<(InodeKey, InodeKey), File>,
    delivery: Delivery,
    patterns: Vec<WatchSet>,
    dirs: InodeMap<PathBuf>,
    last_rescan: Instant,
    lost_seen: u64,
    /// Where the snapshot for /metrics, /health and /status goes, when they are served.
    metrics: Option<metrics::Shared>,
    /// Writers' cgroup paths, for flows that add them to records.
    cgroups: CgroupNames,
    /// Records of reads shipped before, kept to reuse their buffers (a few).
    spare: Vec<Framed>,
    /// Files that may be held at once (`open_files::files_within`), and how many were not
    /// opened for it.
    may_hold: usize,
    not_held: u64,
}

impl Daemon {
    pub fn new(config: Config, mut probe: Probe) -> anyhow::Result<Daemon> {
        let events = EventQueue::new(probe.take_events()?)?;
        let delivery = Delivery::open(&config)?;
        let mut patterns = Vec::new();
        let mut rules = Vec::new();
        for (i, flow) in config.flows.iter().enumerate() {
            patterns.push(WatchSet::with_exclude(&flow.paths, &flow.exclude)?);
            rules.push(FlowRules {
                name: flow.name.clone(),
                framer: framer_config(&config, i),
                max_batch_age: flow.max_batch_age,
                full_batch_bytes: delivery.flows[i].sink.full_batch_bytes(),
                rotated_idle: flow.rotated_idle,
                sweep_interval: flow.sweep_interval,
            });
        }
        // The size before a truncation is exact where do_truncate's hooks read it under the lock.
        let exact = probe.attachment().mode_of(Hook::Truncate) != AttachMode::Tracepoint;
        Ok(Daemon {
            engine: Engine::new(rules, exact, Instant::now()),
            config,
            probe,
            events,
            handles: InodeMap::default(),
            pins: HashMap::new(),
            delivery,
            spare: Vec::new(),
            may_hold: crate::open_files::files_within(crate::open_files::soft_limit()) as usize,
            not_held: 0,
            patterns,
            dirs: InodeMap::default(),
            last_rescan: Instant::now(),
            lost_seen: 0,
            metrics: None,
            cgroups: CgroupNames::default(),
        })
    }

    fn flow_of(patterns: &[WatchSet]) -> impl Fn(&Path) -> Option<usize> {
        move |path: &Path| patterns.iter().position(|p| p.matches(path))
    }

    /// Saves the checkpoint of `inode` if due, and carries out what follows from it.
    fn checkpoint(&mut self, inode: InodeKey, force: bool) {
        self.save_checkpoint(inode, force);
        self.run_effects(None);
    }

    fn save_checkpoint(&mut self, inode: InodeKey, force: bool) {
        let record = self.engine.checkpoint_record(&inode);
        if record != inode {
            // A copytruncated file's tail read from its copy: saved as the copy's record.
            let Some(file) = Self::copy_file(&self.handles, &self.pins, record) else { return };
            let identity = Identity::of(file).unwrap_or_default();
            let held = HeldFile { file, identity: &identity, truncations: &|| None };
            self.delivery.checkpoint(&mut self.engine, &self.config, inode, held, force);
            return;
        }
        let Some(h) = self.handles.get(&inode) else { return };
        let probe = &self.probe;
        let held = HeldFile { file: &h.file, identity: &h.identity, truncations: &|| probe.truncations(inode) };
        self.delivery.checkpoint(&mut self.engine, &self.config, inode, held, force);
    }

    /// A copy held or pinned (released as idle, it may still be pinned for a truncation).
    fn copy_file<'a>(
        handles: &'a InodeMap<Handle>,
        pins: &'a HashMap<(InodeKey, InodeKey), File>,
        copy: InodeKey,
    ) -> Option<&'a File> {
        handles.get(&copy).map(|h| &h.file).or_else(|| pins.iter().find(|((_, c), _)| *c == copy).map(|(_, f)| f))
    }

    /// Sends records of many files (no file twice), each flow's in one delivery: requests
    /// then carry records of many files. The outcome per file, in order.
    fn deliver(&mut self, files: &[(InodeKey, Framed)]) -> Vec<engine::Delivery> {
        let mut outcomes = vec![engine::Delivery::Accepted; files.len()];
        let flows: Vec<Option<usize>> = files.iter().map(|(inode, _)| self.engine.flow_of(inode)).collect();
        for flow in 0..self.config.flows.len() {
            let members: Vec<usize> = (0..files.len()).filter(|&i| flows[i] == Some(flow)).collect();
            if members.is_empty() {
                continue;
            }
            let paths: Vec<PathBuf> = members
                .iter()
                .map(|&i| self.engine.path(&files[i].0).map(Path::to_owned).unwrap_or_default())
                .collect();
            let group: Vec<(About<'_>, &Framed)> = members
                .iter()
                .zip(&paths)
                .map(|(&i, path)| {
                    let (inode, framed) = &files[i];
                    let writer = self.handles.get(inode).and_then(|h| h.writer.as_ref());
                    let dropped_bytes = self.engine.dropped_bytes(inode);
                    (About { inode: *inode, path, writer, dropped_bytes }, framed)
                })
                .collect();
            let answers = self.delivery.deliver(
                flow,
                &self.config.flows[flow],
                &group,
                &mut self.engine.counters[flow],
                &mut self.events,
            );
            for (&i, answer) in members.iter().zip(answers) {
                outcomes[i] = answer;
            }
        }
        outcomes
    }

    /// The size of a held file, for the engine.
    fn sizes(handles: &InodeMap<Handle>) -> impl Fn(&InodeKey) -> Option<u64> + '_ {
        move |inode| handles.get(inode).and_then(|h| reader::size_of(&h.file))
    }

    /// Makes the reads the engine plans.
    fn read_dirty(&mut self) -> Vec<engine::Chunk> {
        let now = Instant::now();
        let reads = self.engine.plan_reads(now, &Self::sizes(&self.handles));
        self.run_effects(None);
        let mut chunks = Vec::new();
        for read in reads {
            let file = match read.from {
                ReadFrom::Original => self.handles.get(&read.inode).map(|h| &h.file),
                ReadFrom::Copy(copy) => self.pins.get(&(read.inode, copy)),
            };
            let result = match file {
                Some(file) => reader::read_new(file, read.at, read.want),
                None => Err(std::io::Error::other("not held")),
            };
            // Looked up after the read: a truncation done before it ended is in it.
            let kernel = self.probe.kernel_truncations(read.inode);
            chunks.extend(self.engine.read_done(read, result, reader::boot_ns(), kernel, now));
            self.run_effects(None);
        }
        chunks
    }

    /// Frames and ships what was read, every file's records in one delivery. `truncated_at`
    /// holds, per inode, the time of a truncation reported since: a chunk read after it may
    /// hold the file's new bytes at old offsets, so it is dropped (the file is read again
    /// from its new start).
    fn frame_and_deliver(&mut self, chunks: Vec<engine::Chunk>, truncated_at: &InodeMap<u64>) {
        let mut files = Vec::with_capacity(chunks.len());
        for c in chunks {
            let inode = c.inode;
            let mut framed = self.spare.pop().unwrap_or_default();
            if self.engine.frame(c, truncated_at.get(&inode).copied(), &mut framed) {
                files.push((inode, framed));
            } else if self.spare.len() < SPARE_BUFFERS {
                self.spare.push(framed);
            }
        }
        let outcomes = self.deliver(&files);
        let now = Instant::now();
        for ((inode, framed), outcome) in files.into_iter().zip(outcomes) {
            self.engine.delivered(inode, outcome, now);
            self.engine.after_delivery(inode, now);
            if self.spare.len() < SPARE_BUFFERS {
                self.spare.push(framed);
            }
        }
        self.run_effects(None);
    }

    /// Held-back records whose flush timeout passed.
    fn flush_idle(&mut self) {
        let files = self.engine.flush_idle(Instant::now(), &Self::sizes(&self.handles));
        let outcomes = self.deliver(&files);
        let now = Instant::now();
        for ((inode, _), outcome) in files.into_iter().zip(outcomes) {
            self.engine.delivered(inode, outcome, now);
            self.checkpoint(inode, false);
        }
        self.run_effects(None);
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
            let probe = &self.probe;
            self.engine
                .events_lost(reader::boot_ns(), &Self::sizes(&self.handles), &|inode| probe.kernel_truncations(*inode));
            self.run_effects(None);
        }
        Ok(())
    }

    /// Housekeeping, every tick; `every_file`: also what looks at every held file
    /// (`QUIET_HOUSEKEEPING`).
    fn tick(&mut self, every_file: bool) -> anyhow::Result<()> {
        let now = Instant::now();
        if every_file {
            for inode in self.engine.unsaved() {
                self.checkpoint(inode, false);
            }
            self.engine.resume_paused(now);
            self.flush_idle();
            {
                let (probe, sizes) = (&self.probe, Self::sizes(&self.handles));
                let look = engine::FileLookup {
                    size_of: &sizes,
                    truncations_of: &|inode| probe.truncations(*inode),
                    boot_ns: reader::boot_ns(),
                };
                self.engine.expire(now, look);
            }
            self.run_effects(None);
        }
        self.recheck_after_loss()?;
        self.engine.sweep(now, &Self::sizes(&self.handles));
        self.run_effects(None);
        if self.last_rescan.elapsed() >= RESCAN_EVERY {
            self.last_rescan = Instant::now();
            self.rescan();
        }
        self.publish()
    }

    /// One pass of the loop: take every kernel event there is, make the reads the engine
    /// plans, ship what they gave, commit the checkpoints. Whether any event came.
    fn pass(&mut self) -> bool {
        // take() empties the ring: every event made before it began is among those taken.
        self.engine.ring_drained(reader::boot_ns(), Instant::now());
        let events = self.events.take();
        let mut woken = !events.is_empty();
        self.on_events(events);
        let chunks = self.read_dirty();
        // Events that came while reading: what was read before a truncation is kept and
        // shipped before the truncation is applied; what may have been read after, dropped.
        let late_from = (reader::boot_ns(), Instant::now());
        let late = self.events.take();
        woken |= !late.is_empty();
        let mut truncated_at = InodeMap::default();
        for e in &late {
            if let KernelEvent::Truncate { inode, origin, .. } = e {
                truncated_at.entry(*inode).or_insert(origin.boot_ns);
            }
        }
        self.frame_and_deliver(chunks, &truncated_at);
        self.on_events(late);
        self.engine.ring_drained(late_from.0, late_from.1);
        self.delivery.commit(&mut self.engine);
        woken
    }

    fn shutdown(&mut self) {
        // A copytruncate's unread tail is only in its copy, which a checkpoint does not
        // name: a restart would find the original at its new contents. So the events that
        // came are taken, and a rotation under way is carried on (its tail read and shipped)
        // while the sink takes it, for at most FINISH_ON_STOP after a pass. Nothing else
        // is shipped: a stop does not wait on a sink that is down.
        self.engine.ring_drained(reader::boot_ns(), Instant::now());
        let events = self.events.take();
        self.on_events(events);
        let deadline = Instant::now() + FINISH_ON_STOP;
        while self.engine.truncating() && Instant::now() < deadline {
            // Held truncations and paused flows come due as in the loop.
            let now = Instant::now();
            self.engine.resume_paused(now);
            self.engine.read_due(now);
            if self.engine.has_dirty() {
                self.pass();
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if self.engine.truncating() {
            tracing::error!(after = ?FINISH_ON_STOP, "stopping with a copytruncated file's unread tail not shipped from its copy; a restart cannot find it there");
        }
        self.engine.settle_all(Instant::now());
        self.run_effects(None);
        let inodes: Vec<InodeKey> = self.engine.held().collect();
        for inode in inodes {
            self.checkpoint(inode, true);
        }
        self.delivery.commit(&mut self.engine);
    }
}

pub async fn run(config: Config, probe: Probe) -> anyhow::Result<()> {
    // Before anything can say it runs: a SIGTERM from then on stops it cleanly.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    match crate::open_files::raise_for(u64::from(config.max_files)) {
        Ok((before, after)) if after > before => {
            tracing::info!(before, after, "raised the open-files limit (one descriptor per file held)")
        }
        Ok((_, limit)) => tracing::debug!(limit, "open-files limit"),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
    let may_hold = crate::open_files::files_within(crate::open_files::soft_limit());
    if may_hold < u64::from(config.max_files) {
        tracing::warn!(
            files = may_hold,
            max_files = config.max_files,
            "the open-files limit lets fewer files be held than max_files says, and it could not be raised (raise LimitNOFILE)"
        );
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
    daemon.delivery.commit(&mut daemon.engine);
    daemon.publish()?;
    // Loading parsed the kernel's BTF (megabytes of it); give the freed heap back.
    // SAFETY: malloc_trim takes no pointers; it only hands free heap pages back to the
    // system, and glibc allows it from any thread.
    unsafe { libc::malloc_trim(0) };
    tracing::info!(files = daemon.engine.held_count(), mode = %daemon.probe.mode(), "collector running");
    let mut next_tick = Instant::now() + TICK;
    let mut last_event = Instant::now();
    // Nothing came for QUIET_AFTER and nothing was pending then; until something is read.
    let mut quiet = false;
    let mut last_every_file = Instant::now();
    loop {
        if daemon.pass() {
            // Events came: housekeeping is back to every `TICK`.
            last_event = Instant::now();
            next_tick = next_tick.min(last_event + TICK);
            quiet = false;
        }
        if daemon.engine.has_dirty() || daemon.events.has_backlog() {
            quiet = false;
            continue;
        }
        let due = daemon.engine.next_due();
        tokio::select! {
            ready = daemon.events.readable() => ready?,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => daemon.engine.read_due(Instant::now()),
            _ = tokio::time::sleep_until(next_tick.into()) => {
                let every_file = !quiet || last_every_file.elapsed() >= QUIET_HOUSEKEEPING;
                daemon.tick(every_file)?;
                daemon.delivery.commit(&mut daemon.engine);
                if every_file {
                    last_every_file = Instant::now();
                    // What is pending changes only with what is read: known while quiet.
                    let was_quiet = quiet;
                    quiet = last_event.elapsed() >= QUIET_AFTER && daemon.engine.has_nothing_pending();
                    if quiet && !was_quiet {
                        // A burst (start-up's thousands of files) freed its buffers: give
                        // the heap's free pages back rather than keep them for the next.
                        // SAFETY: malloc_trim takes no pointers and may run on any thread.
                        unsafe { libc::malloc_trim(0) };
                    }
                }
                next_tick = Instant::now() + if quiet { QUIET_TICK } else { TICK };
            }
            _ = hangup.recv() => {
                daemon.delivery.reopen(&mut daemon.engine, &daemon.config);
                daemon.run_effects(None);
                daemon.delivery.commit(&mut daemon.engine);
            }
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
