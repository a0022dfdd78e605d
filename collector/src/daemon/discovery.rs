//! Finding files: at start-up (the patterns, then every checkpointed inode wherever it
//! moved), in directories and behind links that appear later, and opening what the engine
//! tracks.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Instant,
};

use collector_common::InodeKey;

use super::{Daemon, Handle};
use crate::{
    checkpoint::{Identity, Loaded},
    config::InitialPosition,
    devices, reader,
};

impl Daemon {
    /// Start-up: watch the flows' directories, pick up matching files at their
    /// checkpoints, and find by inode the files that rotated while the collector was down.
    pub(super) fn start(&mut self) -> anyhow::Result<()> {
        let mut found = Vec::new();
        for i in 0..self.patterns.len() {
            let scan = self.patterns[i].scan();
            for dir in scan.dirs {
                self.probe.watch_dir(dir)?;
            }
            self.dirs.extend(self.patterns[i].dirs().map(|(k, p)| (*k, p.clone())));
            found.extend(self.patterns[i].found_files().map(|(k, path)| (*k, i, path.clone())));
        }
        for (inode, flow, path) in found {
            if !self.engine.holds(&inode) {
                self.pick_up(inode, flow, path, false, false);
            }
        }
        for c in self.delivery.store.all() {
            let inode = InodeKey::new(c.dev, c.ino);
            if self.engine.holds(&inode) {
                continue;
            }
            match reader::locate(inode, &c.path, self.dirs.values()) {
                // Its number went to another file since (the checkpoint's file was deleted):
                // that file is no rotated log of a flow, whatever directory it is in.
                Some(path) if !Self::same_file(&c, &path) => {
                    tracing::info!(path = %path.display(), was = %c.path.display(), "a checkpointed file is gone and its inode number is another file's: checkpoint removed");
                    self.delivery.store.remove(inode);
                }
                Some(path) => {
                    // A copy or archive is only remembered (`pick_up` says so at debug).
                    if c.derived {
                        tracing::debug!(path = %path.display(), "a copy or archive remembered in the state directory");
                    } else if path == c.path {
                        tracing::info!(path = %path.display(), "resuming a checkpointed file the patterns no longer match (it is read to its end, then let go)");
                    } else {
                        tracing::info!(path = %path.display(), was = %c.path.display(), "resuming a file that was rotated while stopped");
                    }
                    let flow = self.config.flows.iter().position(|f| f.name == c.flow).unwrap_or(0);
                    self.pick_up(inode, flow, path, true, false);
                }
                None => self.delivery.store.remove(inode),
            }
        }
        Ok(())
    }

    /// Whether the file at `path` is the one checkpoint `c` was saved for.
    fn same_file(c: &crate::checkpoint::Checkpoint, path: &Path) -> bool {
        reader::open_safely(path).is_some_and(|file| c.identity.matches(&file).unwrap_or(false))
    }

    /// Directories and links that appeared under the patterns since the last scan: the
    /// kernel programs see no mkdir or symlink, so they are looked for every `RESCAN_EVERY`
    /// (a new pod's directory under /var/log/pods/**, a new link in /var/log/containers).
    /// Their files are picked up from their start (from a checkpoint if one is found).
    pub(super) fn rescan(&mut self) {
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
            if self.engine.knows(&inode) {
                continue;
            }
            tracing::info!(path = %path.display(), "a file in a new directory or behind a new link");
            self.pick_up(inode, flow, path, false, true);
        }
    }

    /// Opens a file found on disk and starts tracking it from its checkpoint; `appeared`: it
    /// appeared while running (read from its start, whatever `initial_position` says).
    pub(super) fn pick_up(&mut self, inode: InodeKey, flow: usize, path: PathBuf, rotated: bool, appeared: bool) {
        if !self.may_hold_another(&path) {
            return;
        }
        let Some(file) = reader::open_safely(&path) else { return };
        // The inode the scan checked (a trusted link's target, say), not one put there since.
        if devices::of_file(&file).map_or(true, |id| id.key != inode) {
            tracing::info!(path = %path.display(), "replaced while it was picked up; its new file is picked up by its events");
            return;
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let from = match self.delivery.store.load(inode) {
            Loaded::Found(c) if c.derived && c.identity.matches(&file).unwrap_or(false) => {
                tracing::debug!(path = %path.display(), "a copy or archive of a log, not shipped");
                self.engine.remembered_derived(inode, path, Instant::now());
                return;
            }
            Loaded::Found(c)
                if c.identity.matches(&file).unwrap_or(false)
                    && c.acknowledged <= size
                    && c.last_bytes.is_none_or(|b| b.still_in(&file, c.acknowledged)) =>
            {
                c.acknowledged
            }
            Loaded::Found(c) if c.identity.matches(&file).unwrap_or(false) && c.acknowledged <= size => {
                tracing::warn!(path = %path.display(), checkpoint = c.acknowledged, size, "truncated while stopped and written past its checkpoint since (the bytes before it changed); reading from its start");
                0
            }
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
        self.engine.discovered(inode, flow, path, from, rotated, Instant::now());
        self.run_effects(Some((inode, file)));
    }

    /// `Effect::Track`: the original is watched in the kernel and read from `from`, or from
    /// its checkpoint when that is further (a file released earlier and renamed into a
    /// matching name again: logrotate shifting app.log.1 to app.log.2).
    pub(super) fn track(&mut self, inode: InodeKey, flow: usize, path: &Path, from: u64, file: File) {
        let identity = Identity::of(&file).unwrap_or_default();
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let from = match self.delivery.store.load(inode) {
            Loaded::Found(c)
                if !c.derived
                    && c.acknowledged > from
                    && c.acknowledged <= size
                    && c.identity.matches(&file).unwrap_or(false)
                    && c.last_bytes.is_none_or(|b| b.still_in(&file, c.acknowledged)) =>
            {
                c.acknowledged
            }
            _ => from,
        };
        if let Err(e) = self.probe.watch_inode(inode, size) {
            tracing::error!(path = %path.display(), "cannot watch: {e:#}");
            return;
        }
        self.handles.insert(inode, Handle { file, identity, writer: None });
        let truncations = self.probe.truncations(inode).unwrap_or(0);
        self.engine.tracked(inode, flow, from, size, truncations, Instant::now());
    }

    pub(super) fn open_inode(&mut self, inode: InodeKey, path: &Path) -> Option<File> {
        if !self.may_hold_another(path) {
            return None;
        }
        reader::open_inode(inode, path, self.dirs.values())
    }

    /// Whether another file can be held open, the descriptors the collector needs besides
    /// kept (`open_files::files_within`); says so in the log when not (the first time, then
    /// every thousandth).
    pub(super) fn may_hold_another(&mut self, path: &Path) -> bool {
        if self.handles.len() + self.pins.len() < self.may_hold {
            return true;
        }
        if self.not_held.is_multiple_of(1000) {
            tracing::error!(
                path = %path.display(),
                held = self.handles.len(),
                not_held = self.not_held + 1,
                "not watched: as many files are held as the open-files limit allows (raise LimitNOFILE, and [collector] max_files)"
            );
        }
        self.not_held += 1;
        false
    }
}
