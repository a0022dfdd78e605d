//! A writer's cgroup id (from the kernel's events) as a cgroup path and the container id in
//! it. The id is the inode number of the cgroup's directory in the cgroup v2 hierarchy
//! (mounted at /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts): the tree is
//! walked once and again only when an id is not in it (a new container), at most every
//! RESCAN_AFTER.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

const RESCAN_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct CgroupNames {
    paths: HashMap<u64, String>,
    scanned: Option<Instant>,
}

impl CgroupNames {
    /// The cgroup's path (as /proc/PID/cgroup writes it: from the root, "/" for the root).
    pub fn path(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if !self.paths.contains_key(&id) && self.scanned.is_none_or(|t| t.elapsed() >= RESCAN_AFTER) {
            self.paths.clear();
            if let Some(root) = v2_root() {
                scan(&root, &root, &mut self.paths, 0);
            }
            self.scanned = Some(Instant::now());
        }
        self.paths.get(&id).cloned()
    }
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn v2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut found: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then_some(dir)
        })
        .collect();
    found.sort_by_key(|d| d.len());
    found.first().map(PathBuf::from)
}

fn scan(root: &Path, dir: &Path, out: &mut HashMap<u64, String>, depth: usize) {
    // Deep enough for systemd slices and kubelet's pod/container nesting.
    if depth > 12 {
        return;
    }
    let Ok(meta) = std::fs::symlink_metadata(dir) else { return };
    let relative = dir.strip_prefix(root).map(|p| PathBuf::from("/").join(p)).unwrap_or_default();
    out.insert(meta.ino(), relative.to_string_lossy().into_owned());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            scan(root, &entry.path(), out, depth + 1);
        }
    }
}

/// The 64-hex-digit container id a runtime puts in its cgroup's name: `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`, or `<id>` alone
/// (cgroupfs driver).
pub fn container_id(cgroup: &str) -> Option<String> {
    let name = cgroup.rsplit('/').next()?;
    let name = name.strip_suffix(".scope").unwrap_or(name);
    let id = name.rsplit('-').next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_come_from_each_runtimes_naming() {
        let id = "4f1c3c8e0a2b9d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e";
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope"),
            format!("/kubepods/besteffort/pod7f0e/{id}"),
            format!("/machine.slice/libpod-{id}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id), "{path}");
        }
        assert_eq!(container_id("/user.slice/user-0.slice/session-3.scope"), None);
        assert_eq!(container_id("/"), None);
    }

    #[test]
    fn this_process_cgroup_is_found_by_its_id() {
        // Our own cgroup, as the kernel names it in /proc/self/cgroup (v2: "0::/path").
        let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else { return };
        let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) else { return };
        let root = v2_root().expect("a cgroup v2 mount");
        let ino = std::fs::metadata(root.join(path.trim_start_matches('/'))).expect("our cgroup's directory").ino();
        assert_eq!(CgroupNames::default().path(ino).as_deref(), Some(path));
    }
}
