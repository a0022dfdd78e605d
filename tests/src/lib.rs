//! Harness for the integration tests: runs the real collector binary as a root process,
//! reads the JSON lines it prints, and waits for sentinel events instead of sleeping.

pub mod acceptor;
#[cfg(feature = "kinesis")]
pub mod fault_proxy;
#[cfg(feature = "kinesis")]
pub mod kinesis_server;
pub mod memory_cgroup;
#[cfg(feature = "kinesis")]
pub mod moto_server;
pub mod mounts;
pub mod servers;
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

/// A running `collector run` with a config written for the test.
pub struct Running {
    child: Child,
    log: Receiver<String>,
    history: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub config: PathBuf,
}

impl Running {
    /// Starts `collector run --config <dir>/collector.toml` and waits until it runs.
    pub fn start(dir: &Path, config: &str) -> Running {
        let path = dir.join("collector.toml");
        std::fs::write(&path, config).expect("write config");
        Running::start_with(&path)
    }

    pub fn start_with(config: &Path) -> Running {
        Running::start_with_env(config, &[])
    }

    /// With extra environment variables for the collector process.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Running {
        Running::start_in(config, env, None, None)
    }

    /// With RLIMIT_NOFILE at (`soft`, `hard`), as a service manager may start it.
    pub fn start_with_open_files(config: &Path, soft: u64, hard: u64) -> Running {
        Running::start_in(config, &[], None, Some((soft, hard, false)))
    }

    /// With RLIMIT_NOFILE at `limit` and no way to raise it: a unit's LimitNOFILE= without
    /// CAP_SYS_RESOURCE (dropped from the bounding set, so root cannot raise a hard limit).
    pub fn start_held_to_open_files(config: &Path, limit: u64) -> Running {
        Running::start_in(config, &[], None, Some((limit, limit, true)))
    }

    /// In `cgroup` (its `cgroup.procs`) from its first instruction, so all it allocates,
    /// the kernel's maps included, counts against that cgroup's limits.
    pub fn start_in_cgroup(config: &Path, env: &[(&str, &str)], cgroup: &memory_cgroup::MemoryCgroup) -> Running {
        Running::start_in(config, env, Some(cgroup), None)
    }

    fn start_in(
        config: &Path,
        env: &[(&str, &str)],
        cgroup: Option<&memory_cgroup::MemoryCgroup>,
        open_files: Option<(u64, u64, bool)>,
    ) -> Running {
        let mut command = Command::new(collector_bin());
        command.args(["--attach-mode", &attach_mode(), "run", "--config"]).arg(config).envs(env.iter().copied());
        if let Some(cgroup) = cgroup {
            cgroup.join_on_exec(&mut command);
        }
        if let Some((soft, hard, fixed)) = open_files {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // CAP_SYS_RESOURCE (linux/capability.h; not in the libc crate).
                    const CAP_SYS_RESOURCE: libc::c_ulong = 24;
                    if fixed && libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_RESOURCE, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.stderr(Stdio::piped()).spawn().expect("start collector");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, log) = channel();
        let history = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = history.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("collector: {line}");
                kept.lock().expect("log history").push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let running = Running { child, log, history, config: config.to_owned() };
        running.wait_for_log("collector running");
        running
    }

    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("collector never logged `{needle}`: {e}"),
            }
        }
    }

    /// Every log line so far (after waiting `settle` for stragglers).
    pub fn log_lines(&self, settle: Duration) -> Vec<String> {
        std::thread::sleep(settle);
        self.history.lock().expect("log history").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(mut self, signal: i32) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().expect("wait")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A file-sink config for one flow.
pub fn config(state_dir: &Path, paths: &[String], out: &Path, extra: &str) -> String {
    let paths: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "[collector]\nstate_dir = {:?}\nhost = \"test\"\n\n[[flow]]\nname = \"app\"\npaths = [{}]\nrotated_idle = \"2s\"\n{extra}\n[flow.sink]\nkind = \"file\"\npath = {:?}\n",
        state_dir.display(),
        paths.join(", "),
        out.display()
    )
}

/// A port nothing listens on now, on 127.0.0.1 here (test servers: `servers::free_port`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `config` with `[metrics]` served on a free port of 127.0.0.1, and that port.
pub fn with_metrics(config: &str) -> (String, u16) {
    let port = free_port();
    (format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{config}"), port)
}

/// The records the file sink wrote so far.
pub fn shipped(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    // A line the sink is still writing is not complete yet.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad sink line ({e}): {l}"))).collect()
}

/// Waits until the sink holds at least `count` records (or a minute passes).
pub fn wait_for_records(out: &Path, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = shipped(out);
        if records.len() >= count || Instant::now() > deadline {
            // A moment more: anything beyond `count` would be a duplicate.
            std::thread::sleep(Duration::from_millis(500));
            return shipped(out);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A test program built with the tests (`exe`, from `env!("CARGO_BIN_EXE_...")`), unless the
/// environment variable `var` names another copy (the guest runs, where the build's path does
/// not exist).
pub fn program(exe: &str, var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| exe.to_owned())
}

/// Runs the test writer (a separate process): `exe` is `env!("CARGO_BIN_EXE_log_writer")`
/// of the calling test, unless `COLLECTOR_TEST_LOG_WRITER` names another copy (the guest
/// runs, where the build's path does not exist).
pub fn writer_process(exe: &str, path: &Path, tag: &str, lines: u64, rate: u64, reopen: bool) -> Child {
    writer_process_with(exe, path, tag, lines, rate, if reopen { &["--reopen"] } else { &[] })
}

/// `writer_process` with log_writer's options (`--reopen`, `--dsync`).
pub fn writer_process_with(exe: &str, path: &Path, tag: &str, lines: u64, rate: u64, options: &[&str]) -> Child {
    let exe = program(exe, "COLLECTOR_TEST_LOG_WRITER");
    let mut cmd = Command::new(exe);
    cmd.arg(path).arg(tag).arg(lines.to_string()).arg(rate.to_string()).args(options);
    cmd.spawn().expect("start writer")
}

/// Line numbers of `tag` in the records, in shipping order, with each record's inode and offset.
pub fn numbered(records: &[Value], tag: &str) -> Vec<(u64, u64, u64)> {
    records
        .iter()
        .filter_map(|r| {
            let (t, n) = r["data"].as_str()?.split_once(' ')?;
            if t != tag {
                return None;
            }
            Some((n.parse().ok()?, r["ino"].as_u64()?, r["offset"].as_u64()?))
        })
        .collect()
}

/// Appends lines `tag n` (the writer's format) for each n of `lines` to `log`, one write(2)
/// each.
pub fn append_lines(log: &Path, tag: &str, lines: std::ops::RangeInclusive<u64>) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().append(true).open(log).expect("open the log to append");
    for n in lines {
        f.write_all(format!("{tag} {n}\n").as_bytes()).expect("append a line");
    }
}

/// Every line 1..=lines of `tag` shipped exactly once; within each inode, in file order.
pub fn assert_every_line_once_in_order(records: &[Value], tag: &str, lines: u64) {
    let got = numbered(records, tag);
    let mut counts = std::collections::BTreeMap::new();
    for (n, _, _) in &got {
        *counts.entry(*n).or_insert(0u32) += 1;
    }
    let missing: Vec<u64> = (1..=lines).filter(|n| !counts.contains_key(n)).collect();
    let duplicated: Vec<u64> = counts.iter().filter(|(_, c)| **c > 1).map(|(n, _)| *n).collect();
    if let Some(first) = missing.first().or(duplicated.first()) {
        // What was shipped around the first problem, to tell a lost range from a misread one.
        let at = records.iter().position(|r| {
            r["data"]
                .as_str()
                .and_then(|d| d.split_once(' '))
                .is_some_and(|(t, n)| t == tag && n.parse::<u64>().is_ok_and(|n| n + 3 >= *first))
        });
        for r in &records[at.unwrap_or(0).saturating_sub(3)..(at.unwrap_or(0) + 6).min(records.len())] {
            eprintln!("shipped: {} {} {} {:?}", r["path"], r["ino"], r["offset"], r["data"]);
        }
    }
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "{tag}: {} missing {:?}, {} duplicated {:?}",
        missing.len(),
        &missing[..missing.len().min(20)],
        duplicated.len(),
        &duplicated[..duplicated.len().min(20)]
    );
    let mut last: std::collections::HashMap<u64, (u64, u64)> = std::collections::HashMap::new();
    for (n, ino, offset) in got {
        if let Some((prev_n, prev_offset)) = last.insert(ino, (n, offset)) {
            // Offsets restart at a truncation (copytruncate); line numbers never go back.
            assert!(
                n > prev_n && offset != prev_offset,
                "{tag}: line {n} at {offset} after line {prev_n} at {prev_offset} in inode {ino}"
            );
        }
    }
}

/// Every line 1..=lines of `tag` shipped at least once (a restart after SIGKILL may send
/// again what was in flight); returns how many were sent more than once.
pub fn assert_every_line_at_least_once(records: &[Value], tag: &str, lines: u64) -> usize {
    let mut counts = std::collections::BTreeMap::new();
    for (n, _, _) in numbered(records, tag) {
        *counts.entry(n).or_insert(0u32) += 1;
    }
    let missing: Vec<u64> = (1..=lines).filter(|n| !counts.contains_key(n)).collect();
    assert!(missing.is_empty(), "{tag}: {} missing {:?}", missing.len(), &missing[..missing.len().min(20)]);
    counts.values().filter(|c| **c > 1).count()
}

/// How many rotations a test under rotation must see: fewer under QEMU's TCG
/// (`COLLECTOR_TEST_SLOW`), where each logrotate run takes far longer.
pub fn min_rotations() -> u32 {
    if std::env::var_os("COLLECTOR_TEST_SLOW").is_some() { 3 } else { 8 }
}

/// Whether `dir` is on tmpfs (the guests' root), where fsync and O_DSYNC cost nothing.
pub fn on_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("path");
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0;
    // RAMFS_MAGIC (include/uapi/linux/magic.h), which the libc crate lacks.
    const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;
    ok && (st.f_type == libc::TMPFS_MAGIC || st.f_type == RAMFS_MAGIC)
}

/// Runs `logrotate -f` with `directives` for `log` every `every` until `stop` is set.
pub fn rotate_repeatedly(
    log: PathBuf,
    directives: String,
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let conf = logrotate_conf(&log, &directives);
        let mut rotations = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(every);
            logrotate(&conf);
            rotations += 1;
        }
        rotations
    })
}

/// Runs logrotate once, forced, on the scratch directory's `app.log` with `directives`.
pub fn logrotate_once(scratch: &Scratch, directives: &str) {
    logrotate(&logrotate_conf(&scratch.path("app.log"), directives));
}

/// A logrotate.conf beside `log` that rotates it with `directives`.
fn logrotate_conf(log: &Path, directives: &str) -> PathBuf {
    let conf = log.parent().expect("dir").join("logrotate.conf");
    std::fs::write(&conf, format!("{} {{\n{directives}\n}}\n", log.display())).expect("logrotate.conf");
    conf
}

/// One forced rotation with `conf`, its state file beside it.
pub fn logrotate(conf: &Path) {
    let status = Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(conf.with_file_name("logrotate.state"))
        .arg(conf)
        .status()
        .expect("logrotate (cargo xtask setup installs it)");
    assert!(status.success(), "logrotate failed");
}

/// GET with curl (a real HTTP client): (status, body).
pub fn curl(url: &str) -> (u32, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "5", url])
        .output()
        .expect("curl (installed by cargo xtask setup)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), body.to_owned())
}

/// GET `path` from 127.0.0.1:`port` with a plain socket (the guests have no curl): the body.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics address");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// Whether the collector folds a process's appends into one kernel event here (x86-64,
/// where the programs' atomic add is a full barrier).
pub fn kernel_folds_appends() -> bool {
    cfg!(target_arch = "x86_64")
}

/// The value of one sample line of the Prometheus text, by its exact name and labels.
pub fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// /metrics of the collector at `base` once `series` reads `want` (or after 20 s).
pub fn wait_for_metric(base: &str, series: &str, want: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = curl(&format!("{base}/metrics"));
        if sample(&text, series) == Some(want) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The checkpoints in the store of `state` (`<state>/checkpoints/store.jsonl`): the latest
/// line of each inode still held, as JSON.
pub fn checkpoints(state: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(state.join("checkpoints/store.jsonl")).unwrap_or_default();
    let mut latest: std::collections::BTreeMap<(u64, u64), Option<Value>> = Default::default();
    for line in text.lines().skip(1) {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let key = (v["dev"].as_u64().unwrap_or(0), v["ino"].as_u64().unwrap_or(0));
        let removed = v["removed"] == true;
        latest.insert(key, (!removed).then_some(v));
    }
    latest.into_values().flatten().collect()
}
