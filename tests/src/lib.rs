//! Harness for the integration tests: runs the real collector binary as a root process,
//! reads the JSON lines it prints, and waits for sentinel events instead of sleeping.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The collector binary: `COLLECTOR_BIN`, else the workspace's release or debug build.
pub fn collector_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("COLLECTOR_BIN") {
        return bin.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    for profile in ["release", "debug"] {
        let bin = root.join("target").join(profile).join("collector");
        if bin.exists() {
            return bin;
        }
    }
    panic!("no collector binary: run `cargo xtask test`, or build it and set COLLECTOR_BIN");
}

/// The attach mode under test: `COLLECTOR_TEST_ATTACH_MODE`, tracepoint by default (the
/// only mode this host allows; the guest runs set fentry and kprobe).
pub fn attach_mode() -> String {
    std::env::var("COLLECTOR_TEST_ATTACH_MODE").unwrap_or_else(|_| "tracepoint".into())
}

/// A fresh directory on the disk filesystem (not tmpfs), removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let base = std::env::var_os("COLLECTOR_TEST_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-scratch"));
        let dir = base.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch { dir: std::fs::canonicalize(&dir).expect("canonical scratch dir") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The pattern `<dir>/<glob>`.
    pub fn pattern(&self, glob: &str) -> String {
        format!("{}/{glob}", self.dir.display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn ino(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).ino()
}

/// A running `collector events` process.
pub struct Events {
    child: Child,
    lines: Receiver<Value>,
    pub ready: Value,
}

impl Events {
    pub fn start(patterns: &[String]) -> Events {
        Events::start_with(patterns, &[])
    }

    pub fn start_with(patterns: &[String], extra: &[&str]) -> Events {
        let mut cmd = Command::new(collector_bin());
        cmd.arg("events").arg("--attach-mode").arg(attach_mode());
        for p in patterns {
            cmd.arg("--path").arg(p);
        }
        cmd.args(extra).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start collector");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let ready = match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(v) => v,
            Err(e) => panic!("collector printed no ready line ({e}); status {:?}", child.try_wait()),
        };
        assert_eq!(ready["kind"], "ready", "first line must be ready: {ready}");
        assert_eq!(ready["attach_mode"], attach_mode().as_str());
        Events { child, lines, ready }
    }

    /// Every line up to and including the first one for which `last` holds.
    pub fn until(&self, mut last: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(v) => {
                    let done = last(&v);
                    seen.push(v);
                    if done {
                        return seen;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("timed out; lines so far: {seen:#?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("collector exited; lines so far: {seen:#?}"),
            }
        }
    }

    /// Writes one line to `sentinel` (which must be watched) and returns every event before
    /// that write's event: the kernel reports in order, so everything earlier is in.
    pub fn drain(&self, sentinel: &Path) -> Vec<Value> {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(sentinel)
            .and_then(|mut f| {
                use std::io::Write as _;
                f.write_all(b"sentinel\n")
            })
            .expect("write sentinel");
        let sentinel_ino = ino(sentinel);
        let mut events = self.until(|v| v["kind"] == "write" && v["ino"] == sentinel_ino);
        events.pop();
        // Creating the sentinel may itself be reported; it is not part of the scenario.
        events.retain(|v| v["ino"] != sentinel_ino);
        events
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Only the events of `kind` about inode `ino`.
pub fn of(events: &[Value], kind: &str, ino: u64) -> Vec<Value> {
    events.iter().filter(|v| v["kind"] == kind && v["ino"] == ino).cloned().collect()
}

/// `(pos, len)` of write/read events.
pub fn ranges(events: &[Value]) -> Vec<(u64, u64)> {
    events.iter().map(|v| (v["pos"].as_u64().unwrap(), v["len"].as_u64().unwrap())).collect()
}
