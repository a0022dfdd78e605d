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
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use collector_common::InodeKey;

use crate::{
    cgroup::CgroupNames,
    checkpoint::Identity,
    config::Config,
    delivery::{About, Delivery},
    engine::{self, Effect, Engine, FlowRules, ReadFrom},
    event_queue::EventQueue,
    framer::{Framed, FramerConfig},
    inode_map::InodeMap,
    metrics,
    probe::{AttachMode, Probe, event::KernelEvent},
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
    /// The records of the read being shipped; kept to reuse its buffers.
    framed: Framed,
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
        let exact = probe.mode() != AttachMode::Tracepoint;
        Ok(Daemon {
            engine: Engine::new(rules, exact, Instant::now()),
            config,
            probe,
            events,
            handles: InodeMap::default(),
            pins: HashMap::new(),
            delivery,
            framed: Framed::default(),
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

    /// Carries out what the engine decided, in order. `opened`: a file just opened for the
    /// `Track` of its inode.
    fn run_effects(&mut self, mut opened: Option<(InodeKey, File)>) {
        while let Some(effect) = self.engine.next_effect() {
            match effect {
                Effect::Track { inode, flow, path, from } => {
                    let file = match opened.take() {
                        Some((k, file)) if k == inode => Some(file),
                        other => {
                            opened = other;
                            self.open_inode(inode, &path)
                        }
                    };
                    let Some(file) = file else { continue };
                    self.track(inode, flow, &path, from, file);
                }
                Effect::HoldDerived { inode, open } => {
                    if open && let Some(path) = self.engine.path(&inode).map(Path::to_owned) {
                        match self.open_inode(inode, &path) {
                            Some(file) => {
                                let identity = Identity::default();
                                self.handles.insert(inode, Handle { file, identity, writer: None });
                                self.engine.derived_opened(inode, Instant::now());
                            }
                            // logrotate's copy, compress and delete can all pass before the
                            // create event is taken (about 1 ms on tmpfs).
                            None => {
                                tracing::debug!(path = %path.display(), "a copy was gone before it could be opened")
                            }
                        }
                    }
                    if let (Some(h), Some(path)) = (self.handles.get(&inode), self.engine.path(&inode)) {
                        let identity = Identity::of(&h.file).unwrap_or_default();
                        self.delivery.remember_derived(inode, path, identity);
                    }
                }
                Effect::Release { inode } => {
                    let _ = self.probe.unwatch_inode(inode);
                    // Copies pinned for its truncations go with it.
                    self.pins.retain(|(original, _), _| *original != inode);
                    if let Some(h) = self.handles.remove(&inode)
                        && h.file.metadata().is_ok_and(|m| m.nlink() == 0)
                    {
                        self.delivery.store.remove(inode);
                    }
                    self.engine.released(&inode);
                }
                Effect::ReadPosition { inode, at: Some(at) } => {
                    if let Err(e) = self.probe.set_read_position(inode, at) {
                        tracing::debug!(ino = inode.ino, "{e:#}");
                    }
                }
                Effect::ReadPosition { inode, at: None } => {
                    let _ = self.probe.forget_read_position(inode);
                }
                Effect::PinCopy { inode, copy } => match self.handles.get(&copy).map(|h| h.file.try_clone()) {
                    Some(Ok(file)) => {
                        self.pins.insert((inode, copy), file);
                    }
                    Some(Err(e)) => tracing::warn!("cannot hold the copy of a copytruncated file: {e}"),
                    None => {}
                },
                Effect::UnpinCopy { inode, copy } => {
                    self.pins.remove(&(inode, copy));
                }
                Effect::Ship { inode, framed, old } => {
                    let outcome = self.deliver(inode, &framed);
                    self.engine.recovered_delivered(inode, outcome, framed, old, Instant::now());
                }
                Effect::Checkpoint { inode, force } => self.checkpoint(inode, force),
            }
        }
    }

    fn checkpoint(&mut self, inode: InodeKey, force: bool) {
        let Some(h) = self.handles.get(&inode) else { return };
        self.delivery.checkpoint(&mut self.engine, &self.config, inode, &h.identity, force);
        self.run_effects(None);
    }

    /// Sends records of one file to its flow's sink.
    fn deliver(&mut self, inode: InodeKey, framed: &Framed) -> engine::Delivery {
        let Some(flow) = self.engine.flow_of(&inode) else { return engine::Delivery::Accepted };
        let path = self.engine.path(&inode).map(Path::to_owned).unwrap_or_default();
        let writer = self.handles.get(&inode).and_then(|h| h.writer.as_ref());
        let dropped_bytes = self.engine.dropped_bytes(&inode);
        self.delivery.deliver(
            flow,
            &self.config.flows[flow],
            About { inode, path: &path, writer, dropped_bytes },
            framed,
            &mut self.engine.counters[flow],
            &mut self.events,
        )
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
            chunks.extend(self.engine.read_done(read, result, reader::boot_ns(), now));
            self.run_effects(None);
        }
        chunks
    }

    /// Frames and ships what was read. `truncated_at` holds, per inode, the time of a
    /// truncation reported since: a chunk read after it may hold the file's new bytes at old
    /// offsets, so it is dropped (the file is read again from its new start).
    fn frame_and_deliver(&mut self, chunks: Vec<engine::Chunk>, truncated_at: &InodeMap<u64>) {
        for c in chunks {
            let inode = c.inode;
            // Reused: its buffers keep their capacity from one batch to the next.
            let mut framed = std::mem::take(&mut self.framed);
            if self.engine.frame(c, truncated_at.get(&inode).copied(), &mut framed) {
                let outcome = self.deliver(inode, &framed);
                let now = Instant::now();
                self.engine.delivered(inode, outcome, now);
                self.engine.after_delivery(inode, now);
            }
            self.framed = framed;
            self.run_effects(None);
        }
    }

    /// Held-back records whose flush timeout passed.
    fn flush_idle(&mut self) {
        for (inode, records) in self.engine.flush_idle(Instant::now()) {
            let outcome = self.deliver(inode, &records);
            self.engine.delivered(inode, outcome, Instant::now());
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
            self.engine.events_lost(reader::boot_ns(), &Self::sizes(&self.handles));
            self.run_effects(None);
        }
        Ok(())
    }

    /// Housekeeping, every tick.
    fn tick(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        for inode in self.engine.unsaved() {
            self.checkpoint(inode, false);
        }
        self.engine.resume_paused(now);
        self.flush_idle();
        self.engine.expire(now, &Self::sizes(&self.handles));
        self.run_effects(None);
        self.recheck_after_loss()?;
        self.engine.sweep(now, &Self::sizes(&self.handles));
        self.run_effects(None);
        if self.last_rescan.elapsed() >= RESCAN_EVERY {
            self.last_rescan = Instant::now();
            self.rescan();
        }
        self.publish()
    }

    fn shutdown(&mut self) {
        self.engine.settle_all(Instant::now());
        self.run_effects(None);
        let inodes: Vec<InodeKey> = self.engine.held().collect();
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
    tracing::info!(files = daemon.engine.held_count(), mode = %daemon.probe.mode(), "collector running");
    let mut next_tick = Instant::now() + TICK;
    let mut last_event = Instant::now();
    loop {
        // take() empties the ring: every event made before it began is among those taken.
        daemon.engine.ring_drained(reader::boot_ns());
        let events = daemon.events.take();
        woken_by(&events, &mut last_event, &mut next_tick);
        daemon.on_events(events);
        let chunks = daemon.read_dirty();
        // Events that came while reading: what was read before a truncation is kept and
        // shipped before the truncation is applied; what may have been read after, dropped.
        let late_from = reader::boot_ns();
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
        daemon.engine.ring_drained(late_from);
        if daemon.engine.has_dirty() || daemon.events.has_backlog() {
            continue;
        }
        let due = daemon.engine.next_due();
        tokio::select! {
            ready = daemon.events.readable() => ready?,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => daemon.engine.read_due(Instant::now()),
            _ = tokio::time::sleep_until(next_tick.into()) => {
                daemon.tick()?;
                let quiet = last_event.elapsed() >= QUIET_AFTER && daemon.engine.has_nothing_pending();
                next_tick = Instant::now() + if quiet { QUIET_TICK } else { TICK };
            }
            _ = hangup.recv() => {
                daemon.delivery.reopen(&mut daemon.engine, &daemon.config);
                daemon.run_effects(None);
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
