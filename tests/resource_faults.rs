//! The host's own resources failing under the collector: the file sink's filesystem full,
//! the state directory full, read-only or removed. Each on a real tmpfs of a few hundred
//! KiB or a few MiB that the test fills with a file of its own and frees again.

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use collector_tests::{
    Running, Scratch, append_lines, assert_every_line_once_in_order, config, http_get, mounts, sample, shipped,
    writer_process,
};
use serde_json::{Value, json};

fn writer(path: &Path, tag: &str, lines: u64, rate: u64) -> std::process::Child {
    writer_process(env!("CARGO_BIN_EXE_log_writer"), path, tag, lines, rate, false)
}

/// Fills the filesystem of `dir` with `dir/filler` until it has no space left.
fn fill(dir: &Path) {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![b'x'; 64 << 10];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // What the last block left: a few bytes, filled too.
    while f.write(b"x").is_ok_and(|n| n > 0) {}
}

/// Fills all but `free` bytes of the filesystem of `dir` with `dir/filler`.
fn fill_but(dir: &Path, free: u64) {
    fill(dir);
    let f = std::fs::OpenOptions::new().write(true).open(dir.join("filler")).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(free)).unwrap();
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The records of a raw-format output: each line must be a whole `<tag> <n>` line.
fn raw_records(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let (tag, n) = l.split_once(' ').unwrap_or_else(|| panic!("a torn record in the output: {l:?}"));
            assert!(tag == "disk" && n.parse::<u64>().is_ok(), "a torn record in the output: {l:?}");
            json!({"data": l, "ino": 1, "offset": i})
        })
        .collect()
}

/// The file sink's filesystem fills up mid-stream, then space is freed: the output ends at
/// the last whole record while full (a write cut short is cut back), what it holds whole is
/// not written again, and every line arrives once and in order. The error is logged once,
/// with the output's path.
fn a_full_output_disk(format: &str) {
    const LINES: u64 = 60_000;
    let scratch = Scratch::new(&format!("full-output-{format}"));
    let disk = mounts::tmpfs_of_size(&scratch.dir, "out-disk", 16 << 10);
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = disk.dir.join("out");
    // Room for a few thousand records: the disk fills well before the writer is done.
    fill_but(&disk.dir, 200 << 10);
    let text = config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, "")
        .replace("kind = \"file\"\n", &format!("kind = \"file\"\nformat = \"{format}\"\n"));
    let collector = Running::start(&scratch.dir, &text);
    let mut w = writer(&log, "disk", LINES, 20_000);
    collector.wait_for_log("No space left on device");
    std::thread::sleep(Duration::from_secs(2));
    // While full, the output holds only whole records.
    let records = |out: &Path| if format == "raw" { raw_records(out) } else { shipped(out) };
    let held = records(&out).len();
    assert!(held > 0 && (held as u64) < LINES, "{held} records before the disk filled");
    std::fs::remove_file(disk.dir.join("filler")).unwrap();
    assert!(w.wait().unwrap().success());
    wait_until("every line", || records(&out).len() as u64 >= LINES);
    std::thread::sleep(Duration::from_millis(500));
    let all = records(&out);
    let text = std::fs::read(&out).unwrap();
    assert_eq!(text.last(), Some(&b'\n'), "the output ends with a torn record");
    assert_every_line_once_in_order(&all, "disk", LINES);
    let log = collector.log_lines(Duration::ZERO);
    let said: Vec<_> = log.iter().filter(|l| l.contains("No space left on device")).collect();
    assert_eq!(said.len(), 1, "the full disk is logged once: {said:#?}");
    assert!(said[0].contains(&out.display().to_string()), "the error names the output: {}", said[0]);
}

#[test]
fn a_full_output_disk_loses_and_repeats_nothing_in_raw_format() {
    a_full_output_disk("raw");
}

#[test]
fn a_full_output_disk_loses_and_repeats_nothing_in_json_format() {
    a_full_output_disk("json");
}

/// The state directory full, then freed, then read-only, then writable, then removed:
/// shipping goes on throughout; each failure is logged once naming the directory and what it
/// means, shows in /health and /metrics, and checkpoints are saved again by themselves when
/// it is writable. A restart after that sends nothing again.
#[test]
fn a_state_directory_full_read_only_or_removed_stops_nothing_and_recovers() {
    const LINES: u64 = 24_000;
    let scratch = Scratch::new("state-faults");
    let disk = mounts::tmpfs_of_size(&scratch.dir, "state-disk", 512);
    let state = disk.dir.join("state");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let (text, port) = collector_tests::with_metrics(&config(&state, &[scratch.pattern("app.log")], &out, ""));
    let collector = Running::start(&scratch.dir, &text);
    let checkpoints = state.join("checkpoints");
    let health = || http_get(port, "/health");
    let failures = || sample(&http_get(port, "/metrics"), "collector_checkpoint_failures_total").unwrap_or(0);
    // 1,000 lines/s for the whole test.
    let mut w = writer(&log, "state", LINES, 1_000);
    let shipped_count = |out: &Path| shipped(out).len();
    wait_until("the first lines", || shipped_count(&out) > 0);

    // Full.
    fill(&disk.dir);
    let said = collector.wait_for_log("cannot save checkpoints");
    assert!(said.contains(&checkpoints.display().to_string()) && said.contains("No space left"), "{said}");
    assert!(said.contains("a restart sends again"), "the consequence is said: {said}");
    wait_until("/health to say so", || health().contains("checkpoints not saved"));
    let before = shipped_count(&out);
    wait_until("shipping while full", || shipped_count(&out) > before + 1_000);
    assert!(failures() > 0);
    std::fs::remove_file(disk.dir.join("filler")).unwrap();
    collector.wait_for_log("checkpoints are saved again");
    wait_until("/health to recover", || health().contains("ok"));

    // Read-only.
    mounts::run(std::process::Command::new("mount").args(["-o", "remount,ro"]).arg(&disk.dir));
    let said = collector.wait_for_log("cannot save checkpoints");
    assert!(said.contains(&checkpoints.display().to_string()) && said.contains("Read-only"), "{said}");
    let before = shipped_count(&out);
    wait_until("shipping while read-only", || shipped_count(&out) > before + 1_000);
    mounts::run(std::process::Command::new("mount").args(["-o", "remount,rw"]).arg(&disk.dir));
    collector.wait_for_log("checkpoints are saved again");

    // Removed.
    std::fs::remove_dir_all(&state).unwrap();
    wait_until("the checkpoint directory made again", || std::fs::read_dir(&checkpoints).is_ok_and(|d| d.count() > 0));
    assert!(w.wait().unwrap().success());
    wait_until("every line", || shipped_count(&out) as u64 >= LINES);
    // The last checkpoint written covers everything: a restart sends nothing again.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(collector.kill(libc::SIGKILL).signal_of(), Some(libc::SIGKILL));
    let collector = Running::start(&scratch.dir, &text);
    std::thread::sleep(Duration::from_secs(2));
    drop(collector);
    assert_every_line_once_in_order(&shipped(&out), "state", LINES);
}

trait SignalOf {
    fn signal_of(&self) -> Option<i32>;
}
impl SignalOf for std::process::ExitStatus {
    fn signal_of(&self) -> Option<i32> {
        std::os::unix::process::ExitStatusExt::signal(self)
    }
}

/// The records in `out`'s rotated files (`out.N`, oldest first) and then in `out` itself.
fn records_across_rotations(out: &Path) -> Vec<Value> {
    let dir = out.parent().unwrap();
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let mut rotated: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_string_lossy().strip_prefix(&format!("{name}."))?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    rotated.iter().map(|(_, p)| p.as_path()).chain([out]).flat_map(shipped).collect()
}

fn sizes_of_rotated(out: &Path) -> Vec<(String, u64)> {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let mut sizes: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{name}.")))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    sizes.sort();
    sizes
}

/// The file sink's output rotated by logrotate with `create` and a postrotate `kill -HUP`,
/// as rsyslog's and nginx's are: SIGHUP reopens the output path; every line is in the
/// rotated files or the new one, once and in order, and nothing is written into a rotated
/// file after the reopen.
#[test]
fn an_output_rotated_with_create_and_sighup_loses_and_repeats_nothing() {
    const LINES: u64 = 16_000;
    let scratch = Scratch::new("output-hup");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out/out.jsonl");
    let collector =
        Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, ""));
    let directives = format!("create\nrotate 1000\npostrotate\n  kill -HUP {}\nendscript", collector.pid());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rotator = collector_tests::rotate_repeatedly(out.clone(), directives, Duration::from_millis(300), stop.clone());
    let mut w = writer(&log, "hup", LINES, 4_000);
    assert!(w.wait().unwrap().success());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rotations = rotator.join().unwrap();
    assert!(rotations >= collector_tests::min_rotations(), "{rotations} rotations");
    wait_until("every line", || records_across_rotations(&out).len() as u64 >= LINES);
    // Nothing more goes to a rotated file: the next lines land in the new one.
    let rotated = sizes_of_rotated(&out);
    let mut more = writer(&log, "more", 200, 1_000);
    assert!(more.wait().unwrap().success());
    wait_until("the next lines", || collector_tests::numbered(&shipped(&out), "more").len() >= 200);
    assert_eq!(sizes_of_rotated(&out), rotated, "a rotated output was written to after SIGHUP");
    std::thread::sleep(Duration::from_millis(500));
    let all = records_across_rotations(&out);
    assert_every_line_once_in_order(&all, "hup", LINES);
    assert_every_line_once_in_order(&all, "more", 200);
    let log = collector.log_lines(Duration::ZERO);
    let reopened = log.iter().filter(|l| l.contains("SIGHUP: reopened the output")).count();
    assert_eq!(reopened as u32, rotations, "one reopen per rotation");
}

/// The output rotated by logrotate's copytruncate: the sink appends, so after each
/// truncation it writes at the file's new start, never at its old offset (which would
/// leave a hole of NUL bytes in front). What lands between logrotate's copy and its
/// truncation is lost by logrotate itself, as for any writer (the README says so): this
/// checks only that every file holds whole records from its start.
#[test]
fn an_output_rotated_by_copytruncate_is_written_from_its_new_start() {
    let scratch = Scratch::new("output-copytruncate");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out/out.jsonl");
    let _collector =
        Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, ""));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rotator = collector_tests::rotate_repeatedly(
        out.clone(),
        "copytruncate\nrotate 1000".into(),
        Duration::from_millis(300),
        stop.clone(),
    );
    let mut w = writer(&log, "ct", 8_000, 2_500);
    assert!(w.wait().unwrap().success());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rotations = rotator.join().unwrap();
    // Lines written after the last rotation are in the live output, from its start.
    let mut tail = writer(&log, "tail", 10, 100);
    assert!(tail.wait().unwrap().success());
    wait_until("the last lines", || collector_tests::numbered(&shipped(&out), "tail").len() >= 10);
    for (name, _) in sizes_of_rotated(&out).into_iter().chain([("out.jsonl".to_owned(), 0)]) {
        let bytes = std::fs::read(out.with_file_name(&name)).unwrap();
        assert!(!bytes.contains(&0), "NUL bytes in {name} after {rotations} copytruncates: written at an old offset");
    }
    // shipped() parses every line of the live output: each is a whole record.
    assert_every_line_once_in_order(&shipped(&out), "tail", 10);
}

/// 15,000 one-line files present at start-up (under the 20,000 descriptors CI allows), as
/// on a node with many containers' logs: one pass reads and ships them all (null sink: the
/// fastest, so one pass takes every file), and the collector counts each record once. A
/// pass that shipped this many queued a checkpoint per file, and carrying them out nested
/// one call per file: the collector died of a stack overflow.
#[test]
fn fifteen_thousand_files_at_start_up_are_shipped_once() {
    const FILES: u64 = 15_000;
    let scratch = Scratch::new("many-files");
    let logs = scratch.path("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for i in 1..=FILES {
        std::fs::write(logs.join(format!("f{i}.log")), format!("many {i}\n")).unwrap();
    }
    let (text, port) = collector_tests::with_metrics(&format!(
        "[collector]\nstate_dir = {:?}\n\n[[flow]]\nname = \"app\"\npaths = [{:?}]\n\n[flow.sink]\nkind = \"null\"\n",
        scratch.path("state"),
        scratch.pattern("logs/*.log")
    ));
    let collector = Running::start(&scratch.dir, &text);
    let sent = || sample(&http_get(port, "/metrics"), "collector_sent_records_total{flow=\"app\",sink=\"null\"}");
    wait_until("every file shipped", || {
        assert_eq!(unsafe { libc::kill(collector.pid() as i32, 0) }, 0, "the collector died");
        sent() >= Some(FILES)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sent(), Some(FILES), "each record once");
}

/// One shard throttled (every record of one file refused as over its limits, as Kinesis
/// does per shard) while another file is written: the other file's lines are accepted
/// within a second or two, not after the throttled file's 20 s of retries; the throttled
/// file's lines all arrive, once and in order, when its shard takes them again. The
/// endpoint is collector_tests::acceptor: kinesis-mock cannot throttle one shard on demand.
#[test]
fn a_throttled_shard_does_not_hold_back_the_other_files() {
    let scratch = Scratch::new("throttled-shard");
    let (slow, fast) = (scratch.path("slow.log"), scratch.path("fast.log"));
    std::fs::write(&slow, b"").unwrap();
    std::fs::write(&fast, b"").unwrap();
    // (line, when it was accepted) of each record.
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Instant)>::new()));
    let taken = accepted.clone();
    let endpoint = collector_tests::acceptor::Acceptor::start(Box::new(move |data: &[u8]| {
        taken.lock().unwrap().push((String::from_utf8_lossy(data).into_owned(), Instant::now()));
    }))
    .unwrap();
    endpoint.set_throttled(Some(b"slow "));
    let config = format!(
        "[collector]\nstate_dir = {:?}\nhost = \"test\"\n\n[[flow]]\nname = \"app\"\npaths = [{:?}]\n\n\
         [flow.sink]\nkind = \"kinesis\"\nstream = \"bench\"\nregion = \"us-east-1\"\nendpoint_url = {:?}\n",
        scratch.path("state"),
        scratch.pattern("*.log"),
        endpoint.endpoint()
    );
    let config_path = scratch.path("collector.toml");
    std::fs::write(&config_path, config).unwrap();
    let credentials =
        [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_EC2_METADATA_DISABLED", "true")];
    let collector = Running::start_with_env(&config_path, &credentials);
    append_lines(&slow, "slow", 1..=100);
    std::thread::sleep(Duration::from_secs(1));
    // A line of the other file every 100 ms for 5 s, while the throttle lasts.
    let mut written = Vec::new();
    for n in 1..=50 {
        append_lines(&fast, "fast", n..=n);
        written.push((format!("fast {n}"), Instant::now()));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let got = accepted.lock().unwrap().clone();
    for (line, at) in &written {
        let when = got.iter().find(|(l, _)| l == line).map(|(_, when)| when.duration_since(*at));
        assert!(when.is_some_and(|w| w < Duration::from_secs(2)), "{line} accepted after {when:?}");
    }
    assert!(!got.iter().any(|(l, _)| l.starts_with("slow ")), "the throttled file's records were refused");
    assert!(
        collector.log_lines(Duration::ZERO).iter().any(|l| l.contains("ProvisionedThroughputExceededException")),
        "the throttling is logged"
    );
    endpoint.set_throttled(None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().iter().filter(|(l, _)| l.starts_with("slow ")).count() < 100
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let slow_lines: Vec<String> =
        accepted.lock().unwrap().iter().filter(|(l, _)| l.starts_with("slow ")).map(|(l, _)| l.clone()).collect();
    let expected: Vec<String> = (1..=100).map(|n| format!("slow {n}")).collect();
    assert_eq!(slow_lines, expected, "every line of the throttled file once, in order");
}

/// The collector in a memory cgroup limited to 64 MiB (the kernel's maps count in it too),
/// its Kinesis endpoint stalled for 60 s (requests read and never answered) while a writer
/// appends 10,000 lines/s: no OOM kill, and every line accepted exactly once when the
/// endpoint answers again. The endpoint is collector_tests::acceptor, not kinesis-mock,
/// which would take 15 minutes to store 700,000 records.
#[test]
fn a_stalled_endpoint_under_a_64_mib_memory_limit_loses_nothing() {
    const RATE: u64 = 10_000;
    const SECONDS: u64 = 70;
    const LINES: u64 = RATE * SECONDS;
    let scratch = Scratch::new("memory-limit");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    // (line number, inode, offset) of each record accepted.
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, u64, u64)>::new()));
    let taken = accepted.clone();
    let endpoint = collector_tests::acceptor::Acceptor::start(Box::new(move |data: &[u8]| {
        let r: Value = serde_json::from_slice(data).expect("a json envelope");
        let n = r["data"].as_str().and_then(|d| d.strip_prefix("mem ")?.parse().ok()).expect("a numbered line");
        taken.lock().unwrap().push((n, r["ino"].as_u64().unwrap(), r["offset"].as_u64().unwrap()));
    }))
    .unwrap();
    let config = format!(
        "[collector]\nstate_dir = {:?}\nhost = \"test\"\n\n[[flow]]\nname = \"app\"\npaths = [{:?}]\n\n\
         [flow.sink]\nkind = \"kinesis\"\nstream = \"bench\"\nregion = \"us-east-1\"\nendpoint_url = {:?}\nenvelope = \"json\"\n",
        scratch.path("state"),
        log,
        endpoint.endpoint()
    );
    let config_path = scratch.path("collector.toml");
    std::fs::write(&config_path, config).unwrap();
    let cgroup =
        collector_tests::memory_cgroup::MemoryCgroup::new(&format!("collector-test-{}", std::process::id()), 64 << 20);
    let credentials =
        [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_EC2_METADATA_DISABLED", "true")];
    let collector = Running::start_in_cgroup(&config_path, &credentials, &cgroup);
    let mut w = writer(&log, "mem", LINES, RATE);
    std::thread::sleep(Duration::from_secs(5));
    endpoint.set_stalled(true);
    std::thread::sleep(Duration::from_secs(60));
    endpoint.set_stalled(false);
    assert!(w.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(180);
    while (accepted.lock().unwrap().len() as u64) < LINES && Instant::now() < deadline && cgroup.oom_kills() == 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("peak memory of the collector's cgroup: {:.1} MiB", cgroup.peak() as f64 / (1 << 20) as f64);
    assert_eq!(cgroup.oom_kills(), 0, "the collector was OOM-killed");
    assert_eq!(unsafe { libc::kill(collector.pid() as i32, 0) }, 0, "the collector is gone");
    let got = std::mem::take(&mut *accepted.lock().unwrap());
    let mut seen = vec![0u8; LINES as usize + 1];
    for (n, _, _) in &got {
        seen[*n as usize] = seen[*n as usize].saturating_add(1);
    }
    let missing = (1..=LINES).filter(|n| seen[*n as usize] == 0).count();
    let twice = (1..=LINES).filter(|n| seen[*n as usize] > 1).count();
    assert!(missing == 0 && twice == 0, "{missing} lines missing, {twice} accepted twice, of {LINES}");
    let mut last = std::collections::HashMap::new();
    for (n, ino, offset) in got {
        if let Some((m, at)) = last.insert(ino, (n, offset)) {
            assert!(n > m && offset > at, "line {n} at {offset} after line {m} at {at}");
        }
    }
}

/// Started with a soft open-files limit of 256 (hard 4,096), as a shell or a service manager
/// may start it, the collector raises it and ships 600 files, each held open.
#[test]
fn a_low_soft_open_files_limit_is_raised_for_six_hundred_files() {
    const FILES: usize = 600;
    let scratch = Scratch::new("open-files");
    let logs = scratch.path("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for i in 0..FILES {
        std::fs::write(logs.join(format!("f{i}.log")), format!("files {i}\n")).unwrap();
    }
    let out = scratch.path("out.jsonl");
    let config_path = scratch.path("collector.toml");
    std::fs::write(&config_path, config(&scratch.path("state"), &[format!("{}/*.log", logs.display())], &out, ""))
        .unwrap();
    let collector = Running::start_with_open_files(&config_path, 256, 4096);
    wait_until("every file", || collector_tests::numbered(&shipped(&out), "files").len() >= FILES);
    let records = shipped(&out);
    let mut got: Vec<u64> = collector_tests::numbered(&records, "files").into_iter().map(|(n, _, _)| n).collect();
    got.sort_unstable();
    assert_eq!(got, (0..FILES as u64).collect::<Vec<_>>(), "each file's line once");
    let log = collector.log_lines(Duration::ZERO);
    assert!(log.iter().any(|l| l.contains("raised the open-files limit")), "the raise is logged");
}

/// Held to 512 open files (and unable to raise it), the collector holds as many files as
/// leave it the descriptors it needs besides, says which it cannot watch, and goes on
/// shipping the ones it holds. (It used to open files until none were left, then fail to
/// save checkpoints and die on its next map lookup, EMFILE.)
#[test]
fn at_the_open_files_limit_it_holds_what_it_can_and_goes_on() {
    const FILES: usize = 600;
    let scratch = Scratch::new("open-files-limit");
    let logs = scratch.path("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for i in 0..FILES {
        std::fs::write(logs.join(format!("f{i:03}.log")), format!("files {i}\n")).unwrap();
    }
    let out = scratch.path("out.jsonl");
    let config_path = scratch.path("collector.toml");
    std::fs::write(&config_path, config(&scratch.path("state"), &[format!("{}/*.log", logs.display())], &out, ""))
        .unwrap();
    let collector = Running::start_held_to_open_files(&config_path, 512);
    // 512 less what stays for the rest (a quarter, up to 256).
    const HELD: usize = 384;
    wait_until("the files it may hold", || collector_tests::numbered(&shipped(&out), "files").len() >= HELD);
    std::thread::sleep(Duration::from_secs(1));
    let records = shipped(&out);
    let got = collector_tests::numbered(&records, "files");
    assert_eq!(got.len(), HELD, "each file held shipped once, no other");
    let log = collector.log_lines(Duration::ZERO);
    let not_watched = log.iter().filter(|l| l.contains("not watched: as many files are held")).count();
    // Said for the first file not held, then every thousandth.
    assert_eq!(not_watched, 1, "{log:#?}");
    assert!(log.iter().any(|l| l.contains("the open-files limit lets fewer files be held than max_files")));
    // Still working: a held file's new line goes out, and checkpoints are saved.
    let held = got[0].0;
    collector_tests::append_lines(&logs.join(format!("f{held:03}.log")), "more", 1..=1);
    wait_until("the new line", || collector_tests::numbered(&shipped(&out), "more").len() == 1);
    let state = std::fs::read_to_string(format!("/proc/{}/stat", collector.pid())).unwrap();
    let state = state.rsplit_once(')').unwrap().1.split_whitespace().next().unwrap().to_owned();
    assert_ne!(state, "Z", "the collector is still running");
}

/// CPU seconds (user + system) the process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Out of descriptors, the metrics server cannot accept a connection: it says so once and
/// tries again every 100 ms, instead of spinning on accept (the connection waits in the
/// backlog, so accept fails again at once).
#[test]
fn the_metrics_server_out_of_descriptors_does_not_spin() {
    let scratch = Scratch::new("metrics-emfile");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let (text, port) =
        collector_tests::with_metrics(&config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, ""));
    let collector = Running::start(&scratch.dir, &text);
    let pid = collector.pid();
    // Room for three more descriptors.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let limit = libc::rlimit { rlim_cur: open + 3, rlim_max: open + 3 };
    assert_eq!(unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) }, 0);
    // Connections that send nothing: each accepted one holds a descriptor for 5 s.
    let _connections: Vec<_> = (0..20).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(pid) - before;
    assert!(used < 0.5, "the collector used {used:.2} CPU seconds in 2 s, out of descriptors");
    collector.wait_for_log("metrics: cannot accept a connection");
}
