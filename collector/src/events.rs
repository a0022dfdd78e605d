//! `collector events`: prints the kernel's file events for the files matching `--path`, one
//! JSON object per line. An operator's debugging tool, and what the probe tests read.
//!
//! The first line is `{"kind":"ready",...}` once the programs are attached and the files
//! are watched; a `{"kind":"lost",...}` line reports events the ring buffer dropped, followed
//! by `{"kind":"resync",...}` for each tracked file whose size moved unseen.

use std::{
    io::Write as _,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use collector_common::InodeKey;
use serde_json::{Map, Value, json};
use tokio::io::unix::AsyncFd;

use crate::{
    devices::{self, user_dev},
    probe::{Probe, event::KernelEvent},
    watch::WatchSet,
};

pub async fn run(mut probe: Probe, patterns: &[String]) -> anyhow::Result<()> {
    let mut watch = WatchSet::new(patterns)?;
    let scan = watch.scan();
    for dir in &scan.dirs {
        probe.watch_dir(*dir)?;
    }
    for (inode, size) in &scan.files {
        probe.watch_inode(*inode, *size)?;
    }
    let mut out = std::io::stdout().lock();
    let ready = json!({
        "kind": "ready",
        "attach_mode": probe.mode().name(),
        "files": scan.files.len(),
        "dirs": scan.dirs.len(),
    });
    writeln!(out, "{ready}")?;
    out.flush()?;

    // SAFETY: the RingBuf owns its map fd, which stays open and the same until it is dropped
    // together with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register(probe.take_events()?) }
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
                            if let Some(line) = handle(&mut probe, &mut watch, event)? {
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
                let lost = probe.counters()?.lost;
                if lost > lost_seen {
                    tracing::warn!(lost = lost - lost_seen, "the kernel ring buffer overflowed; re-checking tracked files");
                    writeln!(out, "{}", json!({"kind": "lost", "count": lost - lost_seen}))?;
                    lost_seen = lost;
                    for line in resync(&mut watch) {
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

/// After lost events: the size of every tracked file, where it differs from what events said.
fn resync(watch: &mut WatchSet) -> Vec<Value> {
    let mut lines = Vec::new();
    let keys: Vec<InodeKey> = watch.tracked_files().map(|(k, _)| *k).collect();
    for key in keys {
        let Some(tracked) = watch.tracked_mut(&key) else { continue };
        let Ok(id) = devices::of_path(&tracked.path) else { continue };
        if id.key == key && id.size != tracked.known_size {
            tracked.known_size = id.size;
            lines.push(json!({
                "kind": "resync", "dev": user_dev(key.dev), "ino": key.ino,
                "path": tracked.path.to_string_lossy(), "size": id.size,
            }));
        }
    }
    lines
}

/// Updates the watch set from one event and returns its JSON line, if the event concerns a
/// file the patterns cover.
fn handle(probe: &mut Probe, watch: &mut WatchSet, event: KernelEvent) -> anyhow::Result<Option<Value>> {
    let mut line = base(&event);
    let inode = event.inode();
    let path_of =
        |watch: &WatchSet, inode: &InodeKey| watch.tracked(inode).map(|t| t.path.to_string_lossy().into_owned());
    match &event {
        KernelEvent::Write { pos, len, .. } | KernelEvent::Read { pos, len, .. } => {
            let Some(tracked) = watch.tracked_mut(&inode) else { return Ok(None) };
            if let KernelEvent::Write { captured, .. } = &event {
                tracked.known_size = tracked.known_size.max(pos + len);
                if !captured.is_empty() {
                    line.insert("captured".into(), captured.len().into());
                }
            }
            line.insert("path".into(), tracked.path.to_string_lossy().into());
            line.insert("pos".into(), (*pos).into());
            line.insert("len".into(), (*len).into());
        }
        KernelEvent::CutWrite { pos, len, captured, truncation, .. } => {
            let Some(tracked) = watch.tracked(&inode) else { return Ok(None) };
            line.insert("path".into(), tracked.path.to_string_lossy().into());
            line.insert("pos".into(), (*pos).into());
            line.insert("len".into(), (*len).into());
            line.insert("captured".into(), captured.len().into());
            line.insert("truncation".into(), (*truncation).into());
        }
        KernelEvent::Truncate { size_before, size_after, .. } => {
            let Some(tracked) = watch.tracked_mut(&inode) else { return Ok(None) };
            tracked.known_size = *size_after;
            line.insert("path".into(), tracked.path.to_string_lossy().into());
            line.insert("size_before".into(), (*size_before).into());
            line.insert("size_after".into(), (*size_after).into());
        }
        KernelEvent::Copy { pos, len, destination, destination_pos, .. } => {
            let (source_path, destination_path) = (path_of(watch, &inode), path_of(watch, destination));
            if source_path.is_none() && destination_path.is_none() {
                return Ok(None);
            }
            line.insert("path".into(), source_path.into());
            line.insert("pos".into(), (*pos).into());
            line.insert("len".into(), (*len).into());
            line.insert("dest_dev".into(), user_dev(destination.dev).into());
            line.insert("dest_ino".into(), destination.ino.into());
            line.insert("dest_pos".into(), (*destination_pos).into());
            line.insert("dest_path".into(), destination_path.into());
        }
        KernelEvent::Create { parent, name, .. } => {
            let Some(path) = watch.in_dir(parent, name) else { return Ok(None) };
            if !watch.matches(&path) {
                // The kernel side watches every file created in a watched directory.
                probe.unwatch_inode(inode)?;
                return Ok(None);
            }
            watch.track(inode, path.clone(), 0);
            line.insert("path".into(), path.to_string_lossy().into());
            line.insert("parent".into(), parent.ino.into());
            line.insert("name".into(), file_name(&path).into());
        }
        KernelEvent::Rename { old_parent, base_dir, dfd, name, origin, .. } => {
            let Some(path) = watch.resolve(base_dir, *dfd, name, origin.tid) else { return Ok(None) };
            let inode = if inode.is_unknown() {
                // Kernels without ctime tracepoints: the moved inode is the one now at `path`.
                match devices::key_of_path(&path) {
                    Some(key) => key,
                    None => return Ok(None),
                }
            } else {
                inode
            };
            let old_path = path_of(watch, &inode);
            if let Some(tracked) = watch.tracked_mut(&inode) {
                tracked.path = path.clone();
            } else if watch.matches(&path) {
                let size = std::fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
                watch.track(inode, path.clone(), size);
                probe.watch_inode(inode, size)?;
            } else {
                // The kernel side may have started watching it on its way into a watched
                // directory.
                probe.unwatch_inode(inode)?;
                return Ok(None);
            }
            line.insert("ino".into(), inode.ino.into());
            line.insert("dev".into(), user_dev(inode.dev).into());
            line.insert("path".into(), path.to_string_lossy().into());
            line.insert("old_path".into(), old_path.clone().into());
            line.insert("name".into(), file_name(&path).into());
            line.insert("parent".into(), parent_ino(&path).into());
            // Tracepoint mode only knows the directory the old name was relative to.
            let old_parent = old_path.as_deref().and_then(|p| parent_ino(Path::new(p))).unwrap_or(old_parent.ino);
            line.insert("old_parent".into(), old_parent.into());
        }
        KernelEvent::Unlink { .. } => {
            let Some(tracked) = watch.tracked_mut(&inode) else { return Ok(None) };
            tracked.unlinked = true;
            let path = tracked.path.clone();
            line.insert("path".into(), path.to_string_lossy().into());
            line.insert("name".into(), file_name(&path).into());
            line.insert("parent".into(), parent_ino(&path).into());
        }
    }
    Ok(Some(Value::Object(line)))
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
