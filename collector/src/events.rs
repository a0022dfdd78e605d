//! `collector events`: prints the kernel's file events for the files matching `--path`, one
//! JSON object per line. An operator's debugging tool, and what the probe tests read.
//!
//! What a file is comes from the engine's own inode table (`tracker`), fed as `run` feeds
//! it: a file is shown while `run` would hold it, as an original (shipped) or as a derived
//! file (a copy or archive of one, never shipped), with its `role`. Files created in a
//! watched directory under names no pattern matches are shown once a write makes them
//! derived, and never otherwise.
//!
//! The first line is `{"kind":"ready",...}` once the programs are attached and the files
//! are watched; a `{"kind":"lost",...}` line reports events the ring buffer dropped, followed
//! by `{"kind":"resync",...}` with the size of each original as it is now.

use std::{
    io::Write as _,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use collector_common::InodeKey;
use serde_json::{Map, Value, json};
use tokio::io::unix::AsyncFd;

use crate::{
    config::DEFAULT_ROTATED_IDLE,
    devices::{self, user_dev},
    probe::{Probe, event::KernelEvent},
    tracker::{self, Action, Role, Tracker},
    watch::WatchSet,
};

pub async fn run(probe: Probe, patterns: &[String]) -> anyhow::Result<()> {
    let mut shown =
        Shown { probe, watch: WatchSet::new(patterns)?, tracker: Tracker::default(), started: Instant::now() };
    let scan = shown.watch.scan();
    for dir in &scan.dirs {
        shown.probe.watch_dir(*dir)?;
    }
    let found: Vec<_> = shown.watch.found_files().map(|(k, p)| (*k, p.clone())).collect();
    for (inode, path) in found {
        let action = shown.tracker.discovered(inode, 0, path, 0, 0);
        shown.apply(action)?;
    }
    let mut out = std::io::stdout().lock();
    let ready = json!({
        "kind": "ready",
        "attach_mode": shown.probe.mode().name(),
        "hooks": shown.probe.attachment().by_hook().into_iter().map(|(h, m)| (h.to_owned(), m.into())).collect::<serde_json::Map<_, _>>(),
        "files": scan.files.len(),
        "dirs": scan.dirs.len(),
    });
    writeln!(out, "{ready}")?;
    out.flush()?;

    // SAFETY: the RingBuf owns its map fd, which stays open and the same until it is dropped
    // together with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register(shown.probe.take_events()?) }
        .map_err(|e| e.into_parts().1)
        .context("polling the ring buffer")?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut lost_seen = 0;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let events = guard.get_inner_mut();
                while let Some(record) = events.next() {
                    match KernelEvent::decode(&record) {
                        Ok(event) => {
                            if let Some(line) = shown.handle(event)? {
                                writeln!(out, "{line}")?;
                            }
                        }
                        Err(e) => tracing::warn!("skipping a kernel record: {e}"),
                    }
                }
                guard.clear_ready();
                out.flush()?;
            }
            _ = tick.tick() => {
                shown.expire()?;
                let lost = shown.probe.counters()?.lost;
                if lost > lost_seen {
                    tracing::warn!(lost = lost - lost_seen, "the kernel ring buffer overflowed; re-checking tracked files");
                    writeln!(out, "{}", json!({"kind": "lost", "count": lost - lost_seen}))?;
                    lost_seen = lost;
                    for line in shown.resync() {
                        writeln!(out, "{line}")?;
                    }
                    out.flush()?;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    Ok(())
}

/// The files shown: the patterns' directories (`watch`), and the engine's inode table over
/// them, kept as `run` keeps it.
struct Shown {
    probe: Probe,
    watch: WatchSet,
    tracker: Tracker,
    started: Instant,
}

impl Shown {
    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Where `inode` is, if it is shown (an original or a derived file).
    fn path(&self, inode: &InodeKey) -> Option<String> {
        self.tracker.get(inode).filter(|t| t.role != Role::Candidate).map(|t| t.path.to_string_lossy().into_owned())
    }

    fn role(&self, inode: &InodeKey) -> Option<&'static str> {
        self.tracker.get(inode).and_then(|t| match t.role {
            Role::Original => Some("original"),
            Role::Derived { .. } => Some("derived"),
            Role::Candidate => None,
        })
    }

    /// The kernel watches what the table tracks, as in `run` (which also opens it).
    fn apply(&mut self, action: Action) -> anyhow::Result<()> {
        match action {
            Action::Track { inode, path, .. } => {
                let size = devices::of_path(&path).ok().filter(|id| id.key == inode).map_or(0, |id| id.size);
                self.probe.watch_inode(inode, size)
            }
            Action::Untrack { inode } => self.probe.unwatch_inode(inode),
            Action::HoldDerived { .. } | Action::Read { .. } | Action::Truncated { .. } | Action::Moved { .. } => {
                Ok(())
            }
        }
    }

    fn feed(&mut self, event: tracker::Event) -> anyhow::Result<()> {
        let now_ns = self.now_ns();
        let watch = &self.watch;
        let actions = self.tracker.on_event(event, now_ns, &|p: &Path| watch.matches(p).then_some(0));
        actions.into_iter().try_for_each(|a| self.apply(a))
    }

    /// What `run` lets go (rotated originals idle for the default `rotated_idle`, derived
    /// files and candidates idle), the kernel stops watching here too.
    fn expire(&mut self) -> anyhow::Result<()> {
        let idle = DEFAULT_ROTATED_IDLE.as_nanos() as u64;
        let now_ns = self.now_ns();
        let actions = self.tracker.expired(now_ns, &|_| idle, &|_| true);
        actions.into_iter().try_for_each(|a| self.apply(a))
    }

    /// After lost events: the size of every original as it is now.
    fn resync(&self) -> Vec<Value> {
        self.tracker
            .iter()
            .filter(|(_, t)| t.role == Role::Original)
            .filter_map(|(key, t)| {
                let id = devices::of_path(&t.path).ok().filter(|id| id.key == *key)?;
                Some(json!({
                    "kind": "resync", "dev": user_dev(key.dev), "ino": key.ino,
                    "path": t.path.to_string_lossy(), "size": id.size,
                }))
            })
            .collect()
    }

    /// Applies one event to the table and returns its JSON line, if it concerns a file
    /// shown.
    fn handle(&mut self, event: KernelEvent) -> anyhow::Result<Option<Value>> {
        let mut line = base(&event);
        let inode = event.inode();
        let pid = event.origin().pid;
        match &event {
            KernelEvent::Write { pos, len, captured, .. } => {
                self.feed(tracker::Event::Write { inode, pid, end: pos + len })?;
                if !captured.is_empty() {
                    line.insert("captured".into(), captured.len().into());
                }
                line.insert("pos".into(), (*pos).into());
                line.insert("len".into(), (*len).into());
            }
            KernelEvent::Read { pos, len, .. } => {
                self.feed(tracker::Event::Read { inode, pid })?;
                line.insert("pos".into(), (*pos).into());
                line.insert("len".into(), (*len).into());
            }
            KernelEvent::CutWrite { pos, len, captured, truncation, .. } => {
                // The engine joins it to its truncation; the table has nothing to learn.
                line.insert("pos".into(), (*pos).into());
                line.insert("len".into(), (*len).into());
                line.insert("captured".into(), captured.len().into());
                line.insert("truncation".into(), (*truncation).into());
            }
            KernelEvent::Truncate { size_before, size_after, .. } => {
                let (size_before, size_after) = (*size_before, *size_after);
                self.feed(tracker::Event::Truncate { inode, size_before, size_after })?;
                line.insert("size_before".into(), size_before.into());
                line.insert("size_after".into(), size_after.into());
            }
            KernelEvent::Copy { pos, len, destination, destination_pos, .. } => {
                let destination = *destination;
                let destination_end = destination_pos + len;
                self.feed(tracker::Event::Copy { source: inode, destination, destination_end })?;
                let (source_path, destination_path) = (self.path(&inode), self.path(&destination));
                if source_path.is_none() && destination_path.is_none() {
                    return Ok(None);
                }
                line.insert("path".into(), source_path.into());
                line.insert("role".into(), self.role(&inode).into());
                line.insert("pos".into(), (*pos).into());
                line.insert("len".into(), (*len).into());
                line.insert("dest_dev".into(), user_dev(destination.dev).into());
                line.insert("dest_ino".into(), destination.ino.into());
                line.insert("dest_pos".into(), (*destination_pos).into());
                line.insert("dest_path".into(), destination_path.into());
                line.insert("dest_role".into(), self.role(&destination).into());
                return Ok(Some(Value::Object(line)));
            }
            KernelEvent::Create { parent, name, .. } => {
                let Some(path) = self.watch.in_dir(parent, name) else { return Ok(None) };
                self.feed(tracker::Event::Created { inode, path: path.clone(), pid })?;
                line.insert("parent".into(), parent.ino.into());
                line.insert("name".into(), file_name(&path).into());
            }
            KernelEvent::Rename { old_parent, base_dir, dfd, name, origin, .. } => {
                let Some(path) = self.watch.resolve(base_dir, *dfd, name, origin.tid) else { return Ok(None) };
                let inode = if inode.is_unknown() {
                    // Kernels without ctime tracepoints: the moved inode is the one now at `path`.
                    match devices::key_of_path(&path) {
                        Some(key) => key,
                        None => return Ok(None),
                    }
                } else {
                    inode
                };
                let old_path = self.path(&inode);
                self.feed(tracker::Event::Renamed { inode, path: path.clone() })?;
                let Some(role) = self.role(&inode) else { return Ok(None) };
                line.insert("ino".into(), inode.ino.into());
                line.insert("dev".into(), user_dev(inode.dev).into());
                line.insert("path".into(), path.to_string_lossy().into());
                line.insert("role".into(), role.into());
                line.insert("old_path".into(), old_path.clone().into());
                line.insert("name".into(), file_name(&path).into());
                line.insert("parent".into(), parent_ino(&path).into());
                // Tracepoint mode only knows the directory the old name was relative to.
                let old_parent = old_path.as_deref().and_then(|p| parent_ino(Path::new(p))).unwrap_or(old_parent.ino);
                line.insert("old_parent".into(), old_parent.into());
                return Ok(Some(Value::Object(line)));
            }
            KernelEvent::Unlink { .. } => {
                self.feed(tracker::Event::Unlinked { inode })?;
                if let Some(path) = self.path(&inode) {
                    line.insert("name".into(), file_name(Path::new(&path)).into());
                    line.insert("parent".into(), parent_ino(Path::new(&path)).into());
                }
            }
        }
        let (Some(path), Some(role)) = (self.path(&inode), self.role(&inode)) else { return Ok(None) };
        line.insert("path".into(), path.into());
        line.insert("role".into(), role.into());
        Ok(Some(Value::Object(line)))
    }
}

fn base(event: &KernelEvent) -> Map<String, Value> {
    let kind = match event {
        KernelEvent::Write { .. } => "write",
        KernelEvent::CutWrite { .. } => "write_cut",
        KernelEvent::Read { .. } => "read",
        KernelEvent::Copy { .. } => "copy",
        KernelEvent::Truncate { .. } => "truncate",
        KernelEvent::Rename { .. } => "rename",
        KernelEvent::Create { .. } => "create",
        KernelEvent::Unlink { .. } => "unlink",
    };
    let origin = event.origin();
    let inode = event.inode();
    let mut m = Map::new();
    m.insert("kind".into(), kind.into());
    m.insert("dev".into(), user_dev(inode.dev).into());
    m.insert("ino".into(), inode.ino.into());
    m.insert("pid".into(), origin.pid.into());
    m.insert("tid".into(), origin.tid.into());
    m.insert("comm".into(), origin.comm.clone().into());
    m.insert("cgroup_id".into(), origin.cgroup_id.into());
    m.insert("boot_ns".into(), origin.boot_ns.into());
    m
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned()).unwrap_or_default()
}

fn parent_ino(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path.parent()?).ok().map(|m| m.ino())
}
