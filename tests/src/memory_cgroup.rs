//! A memory cgroup with a limit, for running the collector under one: cgroup v2 where its
//! memory controller is there (`/sys/fs/cgroup/cgroup.controllers`), else v1's memory
//! hierarchy (`/sys/fs/cgroup/memory`, as on hosts that mount both). Removed when dropped.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

pub struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// A new cgroup `name` whose processes may use `limit` bytes, without swap.
    pub fn new(name: &str, limit: u64) -> MemoryCgroup {
        let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let root = if v2 { Path::new("/sys/fs/cgroup") } else { Path::new("/sys/fs/cgroup/memory") };
        assert!(root.is_dir(), "no memory cgroup controller: neither cgroup v2's nor v1's is mounted");
        let dir = root.join(name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let cgroup = MemoryCgroup { dir, v2 };
        if v2 {
            cgroup.set("memory.max", limit);
            // Where the kernel has no swap this file may be missing: no swap to forbid then.
            let _ = std::fs::write(cgroup.dir.join("memory.swap.max"), "0");
        } else {
            cgroup.set("memory.limit_in_bytes", limit);
            let _ = std::fs::write(cgroup.dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
        }
        cgroup
    }

    fn set(&self, file: &str, value: u64) {
        let path = self.dir.join(file);
        std::fs::write(&path, value.to_string()).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    fn read(&self, file: &str) -> String {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// The spawned process moves itself into the cgroup before it execs.
    pub fn join_on_exec(&self, command: &mut Command) {
        let procs = CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes()).expect("path");
        // SAFETY: only async-signal-safe calls between fork and exec (open, write, close).
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Processes of the cgroup the OOM killer killed.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 { ("memory.events", "oom_kill") } else { ("memory.oom_control", "oom_kill") };
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {file}"))
    }

    /// The most memory its processes used at once, in bytes.
    pub fn peak(&self) -> u64 {
        let file = if self.v2 { "memory.peak" } else { "memory.max_usage_in_bytes" };
        self.read(file).trim().parse().unwrap_or_else(|e| panic!("{file}: {e}"))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
