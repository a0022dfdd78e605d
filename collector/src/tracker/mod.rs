//! The inode table: which flow owns which inode, what role each tracked inode plays, and
//! what follows from each kernel event. A pure state machine — kernel events (with paths
//! already resolved) in, actions out; no I/O, no clock (times come in with the calls).
//!
//! Roles: an *original* is a file the flow ships. A *derived* file was written by a task
//! that had just read a tracked original (logrotate's copytruncate copy, gzip's .gz, cp's
//! copy): it is never shipped, but a copy is kept open, because when the original is then
//! truncated the copy holds the bytes the collector had not read yet.

use std::{collections::HashMap, path::PathBuf};

use collector_common::InodeKey;

use crate::inode_map::InodeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Original,
    /// Written by a task that read `source`; `copied` bytes of it mirror `source` from 0.
    /// `current` until `source` is truncated: after that it mirrors contents that are gone,
    /// and must never fill a gap of a later generation.
    Derived {
        source: InodeKey,
        copied: u64,
        current: bool,
    },
    /// Created in a watched directory under a name no flow matches: kept until its first
    /// writer shows whether it derives from a tracked file.
    Candidate,
}

#[derive(Clone, Debug)]
pub struct Tracked {
    pub flow: Option<usize>,
    pub path: PathBuf,
    pub role: Role,
    /// Created while running and not yet written: the first writer decides its role.
    pub fresh: bool,
    pub unlinked: bool,
    /// Renamed since it was picked up: a rotated file, let go once drained and idle.
    pub rotated: bool,
    pub last_activity_ns: u64,
    /// A derived file no longer held open. The entry stays while the inode exists, so a
    /// later rename of the copy into a matching name does not make it look like a new log.
    pub released: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start tracking an original: hold it open, watch it in the kernel, read from `from`.
    Track { inode: InodeKey, flow: usize, path: PathBuf, from: u64 },
    /// Hold a derived file open (for recovery), never ship it.
    HoldDerived { inode: InodeKey, source: InodeKey },
    /// Stop: unwatch and close.
    Untrack { inode: InodeKey },
    /// New bytes may be there.
    Read { inode: InodeKey },
    /// The original shrank from `size_before` to `size_after`; what was not read yet may be
    /// in `recover_from` (a copy holding that many bytes of it from offset 0).
    Truncated { inode: InodeKey, size_before: u64, size_after: u64, recover_from: Option<(InodeKey, u64)> },
    /// Only for the record: where it lives now.
    Moved { inode: InodeKey, path: PathBuf },
}

/// What the daemon tells the tracker about a kernel event (paths resolved by the caller).
#[derive(Clone, Debug)]
pub enum Event {
    Write { inode: InodeKey, pid: u32, end: u64 },
    Read { inode: InodeKey, pid: u32 },
    Copy { source: InodeKey, destination: InodeKey, destination_end: u64 },
    Truncate { inode: InodeKey, size_before: u64, size_after: u64 },
    Created { inode: InodeKey, path: PathBuf, pid: u32 },
    Renamed { inode: InodeKey, path: PathBuf },
    Unlinked { inode: InodeKey },
}

/// A task's recent read of a tracked original.
#[derive(Clone, Copy, Debug)]
struct Reading {
    source: InodeKey,
    at_ns: u64,
}

/// How long a read makes the reader's later writes count as derived.
const READ_MEMORY_NS: u64 = 30_000_000_000;

#[derive(Default)]
pub struct Tracker {
    files: InodeMap<Tracked>,
    readers: HashMap<u32, Reading>,
}

impl Tracker {
    pub fn get(&self, inode: &InodeKey) -> Option<&Tracked> {
        self.files.get(inode)
    }

    /// A file found by scanning (start-up): an original read from `from`.
    pub fn discovered(&mut self, inode: InodeKey, flow: usize, path: PathBuf, from: u64, now_ns: u64) -> Action {
        self.files.insert(
            inode,
            Tracked {
                flow: Some(flow),
                path: path.clone(),
                role: Role::Original,
                fresh: false,
                unlinked: false,
                rotated: false,
                last_activity_ns: now_ns,
                released: false,
            },
        );
        Action::Track { inode, flow, path, from }
    }

    /// `flow_of` says which flow (if any) a path belongs to.
    pub fn on_event(
        &mut self,
        event: Event,
        now_ns: u64,
        flow_of: &dyn Fn(&std::path::Path) -> Option<usize>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Read { inode, pid } => {
                // A derived file read makes another (gzip of logrotate's copy).
                if self.files.get(&inode).is_some_and(|t| matches!(t.role, Role::Original | Role::Derived { .. })) {
                    self.readers.insert(pid, Reading { source: inode, at_ns: now_ns });
                }
            }
            Event::Write { inode, pid, end } => {
                let source = self.recent_read(pid, &inode, now_ns);
                let Some(t) = self.files.get_mut(&inode) else { return actions };
                t.last_activity_ns = now_ns;
                let fresh = std::mem::take(&mut t.fresh);
                let derived_from = source.filter(|_| fresh || t.role == Role::Candidate);
                match (&mut t.role, derived_from) {
                    (Role::Derived { copied, .. }, _) => *copied = (*copied).max(end),
                    (role, Some(source)) => {
                        *role = Role::Derived { source, copied: end, current: true };
                        actions.push(Action::HoldDerived { inode, source });
                    }
                    (Role::Candidate, None) => {
                        self.files.remove(&inode);
                        actions.push(Action::Untrack { inode });
                    }
                    (Role::Original, None) => actions.push(Action::Read { inode }),
                }
            }
            Event::Copy { source, destination, destination_end } => {
                if !self.is_original(&source) {
                    return actions;
                }
                match self.files.get_mut(&destination) {
                    Some(t) if matches!(t.role, Role::Derived { .. }) => {
                        if let Role::Derived { copied, .. } = &mut t.role {
                            *copied = (*copied).max(destination_end);
                        }
                    }
                    Some(t) if t.fresh || t.role == Role::Candidate => {
                        t.fresh = false;
                        t.role = Role::Derived { source, copied: destination_end, current: true };
                        actions.push(Action::HoldDerived { inode: destination, source });
                    }
                    // A copy into a file that is shipped on its own: its bytes are its own.
                    Some(_) => actions.push(Action::Read { inode: destination }),
                    None => {}
                }
            }
            Event::Truncate { inode, size_before, size_after } => {
                if !self.is_original(&inode) {
                    return actions;
                }
                // The copy written last: logrotate also writes its state file after reading
                // the log, which looks like a copy too, and can be longer than the real one.
                let recover_from = self
                    .files
                    .iter()
                    .filter_map(|(k, t)| match t.role {
                        Role::Derived { source, copied, current: true } if source == inode => {
                            Some((t.last_activity_ns, *k, copied))
                        }
                        _ => None,
                    })
                    .max_by_key(|(last, _, copied)| (*last, *copied))
                    .map(|(_, k, copied)| (k, copied));
                for t in self.files.values_mut() {
                    if let Role::Derived { source, current, .. } = &mut t.role
                        && *source == inode
                    {
                        *current = false;
                    }
                }
                actions.push(Action::Truncated { inode, size_before, size_after, recover_from });
            }
            Event::Created { inode, path, pid } => {
                // The number names a new file now: what was derived from the file that had
                // it mirrors none of this one's bytes.
                for t in self.files.values_mut() {
                    if let Role::Derived { source, current, .. } = &mut t.role
                        && *source == inode
                    {
                        *current = false;
                    }
                }
                let flow = flow_of(&path);
                let role = if flow.is_some() { Role::Original } else { Role::Candidate };
                let _ = pid;
                self.files.insert(
                    inode,
                    Tracked {
                        flow,
                        path: path.clone(),
                        role: role.clone(),
                        fresh: true,
                        unlinked: false,
                        rotated: false,
                        last_activity_ns: now_ns,
                        released: false,
                    },
                );
                if let Some(flow) = flow {
                    // Not read yet: its first writer may show it is a derived file.
                    actions.push(Action::Track { inode, flow, path, from: 0 });
                }
            }
            Event::Renamed { inode, path } => {
                let flow = flow_of(&path);
                match self.files.get_mut(&inode) {
                    Some(t) => {
                        t.path = path.clone();
                        t.rotated = true;
                        t.last_activity_ns = now_ns;
                        if t.role == Role::Candidate
                            && let Some(flow) = flow
                        {
                            t.role = Role::Original;
                            t.flow = Some(flow);
                            t.rotated = false;
                            actions.push(Action::Track { inode, flow, path: path.clone(), from: 0 });
                            actions.push(Action::Read { inode });
                        }
                        actions.push(Action::Moved { inode, path });
                    }
                    None => match flow {
                        Some(flow) => {
                            self.files.insert(
                                inode,
                                Tracked {
                                    flow: Some(flow),
                                    path: path.clone(),
                                    role: Role::Original,
                                    fresh: false,
                                    unlinked: false,
                                    rotated: false,
                                    last_activity_ns: now_ns,
                                    released: false,
                                },
                            );
                            actions.push(Action::Track { inode, flow, path, from: 0 });
                            actions.push(Action::Read { inode });
                        }
                        None => actions.push(Action::Untrack { inode }),
                    },
                }
            }
            Event::Unlinked { inode } => {
                if let Some(t) = self.files.get_mut(&inode) {
                    t.unlinked = true;
                    t.last_activity_ns = now_ns;
                }
            }
        }
        actions
    }

    /// Files to let go: originals rotated away or unlinked, idle for `rotated_idle` and fully
    /// read (`drained`); derived files idle for a while; candidates nobody wrote.
    pub fn expired(
        &mut self,
        now_ns: u64,
        rotated_idle_ns: &dyn Fn(usize) -> u64,
        drained: &dyn Fn(&InodeKey) -> bool,
    ) -> Vec<Action> {
        let mut gone = Vec::new();
        let mut forgotten = Vec::new();
        for (inode, t) in &mut self.files {
            let idle = now_ns.saturating_sub(t.last_activity_ns);
            match t.role {
                Role::Original => {
                    if (t.unlinked || t.rotated) && idle >= t.flow.map_or(0, rotated_idle_ns) && drained(inode) {
                        forgotten.push(*inode);
                        gone.push(*inode);
                    }
                }
                // Released but remembered until the inode is gone.
                Role::Derived { .. } if t.released => {
                    if t.unlinked {
                        forgotten.push(*inode);
                    }
                }
                Role::Derived { .. } => {
                    if idle >= READ_MEMORY_NS {
                        t.released = true;
                        gone.push(*inode);
                    }
                }
                Role::Candidate => {
                    if idle >= READ_MEMORY_NS {
                        forgotten.push(*inode);
                        gone.push(*inode);
                    }
                }
            }
        }
        self.readers.retain(|_, r| now_ns.saturating_sub(r.at_ns) < READ_MEMORY_NS);
        for inode in forgotten {
            self.files.remove(&inode);
        }
        gone.into_iter().map(|inode| Action::Untrack { inode }).collect()
    }

    /// A file the state directory remembers as derived (found again at start-up): known, so
    /// that it is never shipped, but not held open.
    pub fn remembered_derived(&mut self, inode: InodeKey, path: PathBuf, now_ns: u64) {
        self.files.insert(
            inode,
            Tracked {
                flow: None,
                path,
                role: Role::Derived { source: InodeKey::default(), copied: 0, current: false },
                fresh: false,
                unlinked: false,
                rotated: true,
                last_activity_ns: now_ns,
                released: true,
            },
        );
    }

    /// Every inode in the table, whatever its role.
    pub fn iter(&self) -> impl Iterator<Item = (&InodeKey, &Tracked)> {
        self.files.iter()
    }

    /// The current copies of `source` (derived files that mirror it now).
    pub fn copies_of(&self, source: &InodeKey) -> Vec<InodeKey> {
        self.files
            .iter()
            .filter(|(_, t)| matches!(t.role, Role::Derived { source: s, current: true, .. } if s == *source))
            .map(|(k, _)| *k)
            .collect()
    }

    /// A copy holds at least `end` bytes of its source (its own writes, as the kernel counted
    /// them).
    pub fn copied_up_to(&mut self, copy: &InodeKey, end: u64) {
        if let Some(Tracked { role: Role::Derived { copied, .. }, .. }) = self.files.get_mut(copy) {
            *copied = (*copied).max(end);
        }
    }

    /// A file created while running got bytes and never a write event (its writer is past
    /// the hooks): no first write will tell it is a copy, so it is taken as it is.
    pub fn no_first_write(&mut self, inode: &InodeKey) {
        if let Some(t) = self.files.get_mut(inode) {
            t.fresh = false;
        }
    }

    fn is_original(&self, inode: &InodeKey) -> bool {
        self.files.get(inode).is_some_and(|t| t.role == Role::Original)
    }

    /// The tracked original or derived file `pid` read lately, other than `written`.
    fn recent_read(&self, pid: u32, written: &InodeKey, now_ns: u64) -> Option<InodeKey> {
        self.readers
            .get(&pid)
            .filter(|r| r.source != *written && now_ns.saturating_sub(r.at_ns) < READ_MEMORY_NS)
            .map(|r| r.source)
    }
}

#[cfg(test)]
mod tests;
