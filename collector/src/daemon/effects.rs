//! Carrying out the engine's effects: opening and holding files, the kernel's watch and
//! read positions, pinned copies, recovered records shipped, checkpoints.

use std::{fs::File, os::unix::fs::MetadataExt as _, path::Path, time::Instant};

use collector_common::InodeKey;

use super::{Daemon, Handle};
use crate::{checkpoint::Identity, engine::Effect, reader};

impl Daemon {
    /// Carries out what the engine decided, in order. `opened`: a file just opened for the
    /// `Track` of its inode.
    pub(super) fn run_effects(&mut self, mut opened: Option<(InodeKey, File)>) {
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
                    let Some(file) = file else {
                        if reader::locate(inode, &path, self.dirs.values()).is_none() {
                            self.engine.gone_before_opened(inode, flow);
                        }
                        continue;
                    };
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
                    if let (Some(file), Some(path)) =
                        (Self::copy_file(&self.handles, &self.pins, inode), self.engine.path(&inode))
                    {
                        let identity = Identity::of(file).unwrap_or_default();
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
                    let files = [(inode, framed)];
                    let outcome = self.deliver(&files)[0];
                    let [(_, framed)] = files;
                    self.engine.recovered_delivered(inode, outcome, framed, old, Instant::now());
                }
                // Not `checkpoint`, which runs the effects: a pass that shipped 10,000 files
                // queues 10,000 of these, and each nesting the next overflowed the stack.
                Effect::Checkpoint { inode, force } => self.save_checkpoint(inode, force),
            }
        }
    }
}
