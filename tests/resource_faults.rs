//! The host's own resources failing under the collector: the file sink's filesystem full,
//! the state directory full, read-only or removed. Each on a real tmpfs of a few hundred
//! KiB or a few MiB that the test fills with a file of its own and frees again.

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use collector_tests::{
    Running, Scratch, assert_every_line_once_in_order, config, http_get, mounts, sample, shipped, writer_process,
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
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
        config(&state, &[scratch.pattern("app.log")], &out, "")
    );
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
