//! The host's own resources failing under the collector: the file sink's filesystem full.
//! On a real tmpfs of a few MiB that the test fills with a file of its own and frees again.

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use collector_tests::{
    Running, Scratch, assert_every_line_once_in_order, config, mounts, shipped, writer_process,
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
