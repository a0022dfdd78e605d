//! The snapshot /metrics, /health and /status answer from.

use std::time::Instant;

use super::Daemon;
use crate::{
    metrics::{FileStatus, FlowCounters, FlowStatus, Snapshot},
    reader, tracker,
};

impl Daemon {
    /// The snapshot /metrics, /health and /status answer from (when they are served).
    pub(super) fn publish(&mut self) -> anyhow::Result<()> {
        let Some(shared) = &self.metrics else { return Ok(()) };
        let mut flows: Vec<FlowStatus> = self
            .config
            .flows
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let sink = &self.delivery.flows[i];
                FlowStatus {
                    name: f.name.clone(),
                    sink: f.sink.kind(),
                    counters: FlowCounters { records_retried: sink.sink.retried(), ..self.engine.counters[i] },
                    lag_bytes: 0,
                    files: 0,
                    failing: sink.failing_since.map(|t| (t, sink.error.clone().unwrap_or_default())),
                }
            })
            .collect();
        let mut files = Vec::new();
        for v in self.engine.view() {
            let Some(h) = self.handles.get(&v.inode) else { continue };
            let size = reader::size_of(&h.file).unwrap_or(0);
            let state = match v.tracked.role {
                tracker::Role::Derived { .. } => "copy",
                _ if v.derived => "copy",
                _ if v.tracked.rotated || v.tracked.unlinked => "rotated",
                _ => "tracking",
            };
            if state != "copy" {
                flows[v.flow].files += 1;
                flows[v.flow].lag_bytes += size.saturating_sub(v.acknowledged);
            }
            files.push(FileStatus {
                path: v.tracked.path.display().to_string(),
                flow: if state == "copy" { String::new() } else { self.config.flows[v.flow].name.clone() },
                dev: crate::devices::user_dev(v.inode.dev),
                ino: v.inode.ino,
                state,
                size,
                shipped: if state == "copy" { 0 } else { v.acknowledged },
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let counters = self.probe.counters()?;
        let snapshot = Snapshot {
            published: Instant::now(),
            attach_mode: self.probe.mode().to_string(),
            hooks: self.probe.attachment().by_hook(),
            ring_buffer_lost: counters.lost,
            kernel_events: counters.emitted,
            flows,
            files,
            checkpoint_failures: self.delivery.checkpoint_failures,
            checkpoints_failing: self
                .delivery
                .checkpoints_failing
                .as_ref()
                .map(|(since, cause)| (*since, format!("{}: {cause}", self.delivery.store.dir().display()))),
        };
        *shared.lock().expect("metrics snapshot") = Some(snapshot);
        Ok(())
    }
}
