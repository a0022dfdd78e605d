//! Kernel events in the engine's terms: paths resolved, the writer noted, how far each
//! copy got taken from the kernel.

use std::time::Instant;

use super::Daemon;
use crate::{devices, engine, probe::event::KernelEvent, sink::Writer, watch};

impl Daemon {
    /// Hands kernel events to the engine and carries out what follows.
    pub(super) fn on_events(&mut self, events: Vec<KernelEvent>) {
        for event in events {
            if !matches!(event, KernelEvent::Write { .. } | KernelEvent::Read { .. }) {
                tracing::trace!(?event, "kernel event");
            }
            let Some(e) = self.translate(event) else { continue };
            {
                let flow_of = Self::flow_of(&self.patterns);
                self.engine.on_event(e, Instant::now(), &flow_of);
            }
            self.run_effects(None);
        }
    }

    /// A kernel event in the engine's terms, with its path resolved.
    pub(super) fn translate(&mut self, event: KernelEvent) -> Option<engine::Event> {
        use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _};
        Some(match event {
            KernelEvent::Write { inode, origin, pos, len, captured } => {
                if let Some(flow) = self.engine.flow_of(&inode)
                    && let Some(h) = self.handles.get_mut(&inode)
                    && h.writer
                        .as_ref()
                        .is_none_or(|w| w.pid != origin.pid || w.comm != origin.comm || w.cgroup_id != origin.cgroup_id)
                {
                    // The cgroup's name only for flows that ship it (it may walk the tree).
                    let cgroup = self.config.flows[flow]
                        .transforms
                        .needs_writer()
                        .then(|| self.cgroups.path(origin.cgroup_id))
                        .flatten();
                    h.writer = Some(Writer {
                        pid: origin.pid,
                        comm: origin.comm.clone(),
                        cgroup_id: origin.cgroup_id,
                        container_id: cgroup.as_deref().and_then(crate::cgroup::container_id),
                        cgroup,
                    });
                }
                engine::Event::Write { inode, pid: origin.pid, pos, len, captured, at_ns: origin.boot_ns }
            }
            KernelEvent::Read { inode, origin, pos, captured, .. } => {
                engine::Event::Read { inode, pid: origin.pid, pos, captured }
            }
            KernelEvent::Copy { source, destination, destination_pos, len, .. } => {
                engine::Event::Copy { source, destination, destination_end: destination_pos + len }
            }
            KernelEvent::CutWrite { inode, pos, len, captured, truncation, .. } => {
                let cut = crate::truncation::CutWrite { pos, len, bytes: captured };
                engine::Event::CutWrite { inode, truncation, cut }
            }
            KernelEvent::Truncate { inode, size_before, size_after, truncation, origin } => {
                // A copy's writes after its first may have been folded into earlier events
                // (see COALESCE_APPENDS): how far it got is the kernel's known end of it.
                for copy in self.engine.copies_of(&inode) {
                    if let Some(end) = self.probe.known_end(copy) {
                        self.engine.copied_up_to(&copy, end);
                    }
                }
                engine::Event::Truncate { inode, size_before, size_after, truncation, at_ns: origin.boot_ns }
            }
            KernelEvent::Create { inode, parent, name, origin } => {
                let path = self.dirs.get(&parent)?.join(OsStr::from_bytes(&name));
                engine::Event::Created { inode, path, pid: origin.pid }
            }
            KernelEvent::Rename { inode, base_dir, dfd, name, origin, .. } => {
                let path = watch::resolve(&self.dirs, &base_dir, dfd, &name, origin.tid)?;
                let inode = if inode.is_unknown() { devices::key_of_path(&path)? } else { inode };
                engine::Event::Renamed { inode, path }
            }
            KernelEvent::Unlink { inode, .. } => engine::Event::Unlinked { inode },
        })
    }
}
