//! The rows of SEMANTICS.md, each with a real writer process at >= 2,000 numbered lines/s,
//! real logrotate rotating every few hundred milliseconds, and the collector as a real root
//! process shipping to the file sink; every line must arrive exactly once and in order.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use std::{path::Path, process::Child};

use collector_tests::{
    Running, Scratch, append_lines, assert_every_line_once_in_order, config, rotate_repeatedly, shipped,
    wait_for_records, writer_process, writer_process_with,
};

fn writer(path: &Path, tag: &str, lines: u64, rate: u64, reopen: bool) -> Child {
    writer_process(env!("CARGO_BIN_EXE_log_writer"), path, tag, lines, rate, reopen)
}

const LINES: u64 = 8_000;
const RATE: u64 = 2_500;

/// Writer + logrotate every 300 ms with `directives`; returns the records and rotations.
fn under_rotation(name: &str, pattern: &str, directives: &str, reopen: bool) -> (Vec<serde_json::Value>, u32) {
    under_rotation_every(name, pattern, directives, reopen, Duration::from_millis(300))
}

fn under_rotation_every(
    name: &str,
    pattern: &str,
    directives: &str,
    reopen: bool,
    every: Duration,
) -> (Vec<serde_json::Value>, u32) {
    let (records, rotations, _) = under_rotation_at(name, pattern, directives, reopen, every, LINES, RATE);
    (records, rotations)
}

/// As `under_rotation_every`, with `lines` written at `rate` lines/s; also returns the sizes
/// of the rotated files (`app.log.N`) left at the end.
fn under_rotation_at(
    name: &str,
    pattern: &str,
    directives: &str,
    reopen: bool,
    every: Duration,
    lines: u64,
    rate: u64,
) -> (Vec<serde_json::Value>, u32, Vec<u64>) {
    let _serial = directives.contains("copytruncate").then(copytruncate_one_at_a_time);
    let scratch = Scratch::new(name);
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let _collector =
        Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern(pattern)], &out, ""));
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = rotate_repeatedly(log.clone(), directives.into(), every, stop.clone());
    let mut w = writer(&log, "w", lines, rate, reopen);
    assert!(w.wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    let rotations = rotator.join().unwrap();
    let records = wait_for_records(&out, lines as usize);
    let rotated = std::fs::read_dir(&scratch.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("app.log."))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .collect();
    (records, rotations, rotated)
}

/// copytruncate tests take this, so they run one at a time: each runs logrotate every few
/// hundred milliseconds, and on two cores shared with the other tests its copy can fall
/// far behind.
fn copytruncate_one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The collector shipping `app.log*` to `out`, serving /metrics on the port returned.
fn collector_with_metrics(scratch: &Scratch, out: &Path) -> (Running, u16) {
    let (text, port) =
        collector_tests::with_metrics(&config(&scratch.path("state"), &[scratch.pattern("app.log*")], out, ""));
    (Running::start(&scratch.dir, &text), port)
}

/// A writer as fast as it can go (one write(2) per line) under rename + create every 100 ms:
/// on x86-64 its appends fold into the write event the daemon has not taken yet, so
/// there are far fewer kernel events than writes (/metrics), and still every line arrives
/// once and in order, the last ones too (the daemon reads a file to its end after taking
/// an event), on the renamed files and on each new one (whose first write decides its role).
#[test]
fn a_writer_at_full_speed_folds_its_appends_into_few_events_and_loses_nothing() {
    let lines: u64 = if std::env::var_os("COLLECTOR_TEST_SLOW").is_some() { 20_000 } else { 300_000 };
    let scratch = Scratch::new("full-speed");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let (_collector, port) = collector_with_metrics(&scratch, &out);
    let events = || {
        let metrics = collector_tests::http_get(port, "/metrics");
        collector_tests::sample(&metrics, "collector_kernel_events_total").expect("collector_kernel_events_total")
    };
    let before = events();
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = rotate_repeatedly(log.clone(), "create\nrotate 3".into(), Duration::from_millis(100), stop.clone());
    // No pacing: line n is due at n / u64::MAX seconds.
    let mut w = writer(&log, "w", lines, u64::MAX, true);
    assert!(w.wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    let rotations = rotator.join().unwrap();
    let records = wait_for_records(&out, lines as usize);
    assert_every_line_once_in_order(&records, "w", lines);
    assert!(rotations >= 2, "{rotations} rotations");
    // The snapshot /metrics shows is refreshed every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    let kernel_events = events() - before;
    if collector_tests::kernel_folds_appends() {
        assert!(kernel_events < lines / 4, "{kernel_events} kernel events for {lines} writes: appends were not folded");
    } else {
        assert!(kernel_events >= lines, "{kernel_events} kernel events for {lines} writes without folding");
    }
}

#[test]
fn rename_and_create_rotation_ships_every_line_once() {
    let (records, rotations) = under_rotation("create", "app.log", "create\nrotate 100", true);
    assert!(rotations >= collector_tests::min_rotations(), "{rotations} rotations");
    assert_every_line_once_in_order(&records, "w", LINES);
}

#[test]
fn dateext_and_olddir_rotations_ship_every_line_once() {
    // dateext names have one-second resolution: one rotation a second.
    let directives = "create\nrotate 100\ndateext\ndateformat -%s\nolddir old\ncreateolddir";
    let (records, rotations) =
        under_rotation_every("dateext", "app.log", directives, true, Duration::from_millis(1100));
    assert!(rotations >= 2, "{rotations} rotations");
    assert_every_line_once_in_order(&records, "w", LINES);
}

#[test]
fn copytruncate_rotation_never_ships_the_copy_and_loses_nothing() {
    let (records, rotations) = under_rotation("copytruncate", "app.log*", "copytruncate\nrotate 100", false);
    assert!(rotations >= collector_tests::min_rotations(), "{rotations} rotations");
    assert_every_line_once_in_order(&records, "w", LINES);
    assert!(records.iter().all(|r| r["path"].as_str().unwrap().ends_with("/app.log")), "only the live file is shipped");
}

/// logrotate copies through an 8 KiB buffer, so the copy of a larger file is several writes,
/// and those after the first fold into the first one's event: how far the copy got is the
/// kernel's count of its writes, which must survive the daemon starting to watch the copy
/// while it is being written (it once put back the size it had seen a moment before, and
/// the unread tail beyond the copy's first 8 KiB was lost).
#[test]
fn copytruncate_of_files_larger_than_the_copy_buffer_loses_nothing() {
    // ~20 KB per copy at the siblings' rate: a rotation a second.
    let (lines, rate) = (24_000, RATE);
    let (records, rotations, rotated) = under_rotation_at(
        "copytruncate-large",
        "app.log*",
        "copytruncate\nrotate 100",
        false,
        Duration::from_millis(1000),
        lines,
        rate,
    );
    assert!(rotations >= collector_tests::min_rotations(), "{rotations} rotations");
    assert_every_line_once_in_order(&records, "w", lines);
    assert!(records.iter().all(|r| r["path"].as_str().unwrap().ends_with("/app.log")), "only the live file is shipped");
    let large = rotated.iter().filter(|&&n| n > 8192).count();
    assert!(large >= 2, "copies larger than logrotate's 8 KiB buffer: {large} of {rotated:?}");
}

/// A write the truncation cuts before it returns: logrotate fsyncs its copy (milliseconds on
/// a disk), then truncates, while the writer's O_DSYNC write has landed and still waits for
/// the disk. Its bytes are in neither the copy nor the file; only its exit hook, which runs
/// after the truncation's, can carry them, and the truncation's verdict waits for it. On a
/// disk-backed filesystem most rotations cut a write in flight (without the hold, each lost
/// one line); on tmpfs (the guests) O_DSYNC costs nothing and this is a plain copytruncate.
#[test]
fn copytruncate_cutting_a_write_in_flight_loses_nothing() {
    let _serial = copytruncate_one_at_a_time();
    let scratch = Scratch::new("cut-in-flight");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let (_collector, port) = collector_with_metrics(&scratch, &out);
    let stop = Arc::new(AtomicBool::new(false));
    let rotator =
        rotate_repeatedly(log.clone(), "copytruncate\nrotate 200".into(), Duration::from_millis(150), stop.clone());
    let mut w = writer_process_with(env!("CARGO_BIN_EXE_log_writer"), &log, "w", LINES, RATE, &["--dsync"]);
    assert!(w.wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    let rotations = rotator.join().unwrap();
    let records = wait_for_records(&out, LINES as usize);
    assert!(rotations >= collector_tests::min_rotations(), "{rotations} rotations");
    assert_every_line_once_in_order(&records, "w", LINES);
    assert!(records.iter().all(|r| r["path"].as_str().unwrap().ends_with("/app.log")), "only the live file is shipped");
    let metrics = collector_tests::http_get(port, "/metrics");
    let lost = collector_tests::sample(&metrics, "collector_lost_bytes_total{flow=\"app\",sink=\"file\"}");
    assert_eq!(lost, Some(0), "{metrics}");
    if !collector_tests::on_tmpfs(&scratch.dir) {
        // Shows the race was met: the bytes of cut writes were recovered.
        let recovered =
            collector_tests::sample(&metrics, "collector_cut_write_recovered_bytes_total{flow=\"app\",sink=\"file\"}");
        assert!(recovered.is_some_and(|n| n > 0), "no write was cut in flight in {rotations} rotations: {metrics}");
    }
}

/// A copytruncate whose copy is deleted at once (logrotate's `compress` on tmpfs deletes it
/// within a millisecond; here it is gone microseconds after the truncation, before the
/// collector can open it): the bytes the collector had not read when the truncation came
/// are taken from what the kernel saw the copier read. The collector batches small
/// amounts for up to `max_batch_age`, so most rotations find an unread tail.
#[test]
fn copytruncate_whose_copy_is_deleted_at_once_loses_nothing() {
    let _serial = copytruncate_one_at_a_time();
    let scratch = Scratch::new("copy-deleted");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let (_collector, port) = collector_with_metrics(&scratch, &out);
    let copier = collector_tests::program(env!("CARGO_BIN_EXE_fast_copytruncate"), "COLLECTOR_TEST_FAST_COPYTRUNCATE");
    // Rotations every 150 ms for as long as the writer writes.
    let rotations = LINES * 1000 / RATE / 150;
    let mut copier = std::process::Command::new(copier)
        .arg(&log)
        .arg(rotations.to_string())
        .arg("150")
        .spawn()
        .expect("start fast_copytruncate");
    let mut w = writer(&log, "w", LINES, RATE, false);
    assert!(w.wait().unwrap().success());
    assert!(copier.wait().unwrap().success());
    let records = wait_for_records(&out, LINES as usize);
    assert_every_line_once_in_order(&records, "w", LINES);
    assert!(records.iter().all(|r| r["path"].as_str().unwrap().ends_with("/app.log")), "only the live file is shipped");
    let metrics = collector_tests::http_get(port, "/metrics");
    let lost = collector_tests::sample(&metrics, "collector_lost_bytes_total{flow=\"app\",sink=\"file\"}");
    assert_eq!(lost, Some(0), "{metrics}");
}

/// One copytruncate whose copy is deleted at once (`fast_copytruncate`).
fn copytruncate_now(log: &Path) {
    let copier = collector_tests::program(env!("CARGO_BIN_EXE_fast_copytruncate"), "COLLECTOR_TEST_FAST_COPYTRUNCATE");
    let status = std::process::Command::new(copier).arg(log).arg("1").arg("0").status().expect("fast_copytruncate");
    assert!(status.success());
}

/// Stops the collector with SIGSTOP for as long as `f` runs: the kernel programs go on
/// reporting, and nothing is taken from the ring until SIGCONT.
/// `append_lines`, all in one write(2).
fn append_lines_in_one_write(log: &Path, tag: &str, lines: std::ops::RangeInclusive<u64>) {
    use std::io::Write as _;
    let text: String = lines.map(|n| format!("{tag} {n}\n")).collect();
    let mut f = std::fs::OpenOptions::new().append(true).open(log).expect("open the log to append");
    f.write_all(text.as_bytes()).expect("append the lines");
}

fn while_stopped(collector: &Running, f: impl FnOnce()) {
    let pid = collector.pid() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    f();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
}

/// SIGTERM just after a copytruncate whose unread tail (more than one pass reads) is only
/// in the copy: a checkpoint cannot say "the rest is in that copy", so the collector reads
/// and ships the tail before it stops; restarted, it goes on with the new contents.
#[test]
fn a_clean_stop_during_a_copytruncate_ships_the_unread_tail_first() {
    let _serial = copytruncate_one_at_a_time();
    let scratch = Scratch::new("stop-during-copytruncate");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let text = config(&scratch.path("state"), &[scratch.pattern("app.log*")], &out, "");
    let collector = Running::start(&scratch.dir, &text);
    append_lines(&log, "w", 1..=10);
    wait_for_records(&out, 10);
    // 2.3 MB: more than two passes read (1 MiB per file per turn). In writes of 1,000
    // lines: the ring holds their events where appends do not fold (arm64).
    const LINES: u64 = 250_000;
    while_stopped(&collector, || {
        for first in (11..=LINES).step_by(1_000) {
            append_lines_in_one_write(&log, "w", first..=(first + 999).min(LINES));
        }
        collector_tests::logrotate_once(&scratch, "copytruncate\nrotate 5");
        append_lines(&log, "w", LINES + 1..=LINES + 10);
    });
    assert!(collector.kill(libc::SIGTERM).success());
    let _collector = Running::start(&scratch.dir, &text);
    let records = wait_for_records(&out, (LINES + 10) as usize);
    assert_every_line_once_in_order(&records, "w", LINES + 10);
}

/// A copytruncate while the kernel's ring buffer is full: its events (the copier's reads,
/// the copy's writes, the truncation) are dropped, and the log grows past where reading
/// was before the collector looks again. Its size then says nothing; the kernel's record
/// of the truncation stands in for the lost event: the new contents are shipped from their
/// first byte, and the old contents' unread lines (whose copy was not seen either) are
/// counted lost, to the byte. Without it, the new contents were read from the old offset:
/// their first lines vanished, uncounted.
#[test]
fn a_copytruncate_whose_events_the_full_ring_dropped_ships_the_new_contents_whole() {
    let _serial = copytruncate_one_at_a_time();
    let scratch = Scratch::new("truncation-event-lost");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let noise = scratch.path("noise.log");
    std::fs::write(&noise, b"n\n").unwrap();
    let out = scratch.path("out.jsonl");
    // Not the copy's name: what was not read of it is lost here, not shipped twice.
    let patterns = [scratch.pattern("app.log"), scratch.pattern("noise.log")];
    let (text, port) = collector_tests::with_metrics(&config(&scratch.path("state"), &patterns, &out, ""));
    let collector = Running::start(&scratch.dir, &text);
    append_lines(&log, "w", 1..=10);
    wait_for_records(&out, 11);
    while_stopped(&collector, || {
        // Rewrites of one byte in place fold into nothing: an event each, far more than
        // the 8 MiB ring holds while the collector is stopped.
        let f = std::fs::OpenOptions::new().write(true).open(&noise).unwrap();
        for _ in 0..400_000 {
            std::os::unix::fs::FileExt::write_at(&f, b"n", 0).unwrap();
        }
        append_lines(&log, "w", 11..=1_000);
        collector_tests::logrotate_once(&scratch, "copytruncate\nrotate 1");
        // Longer than what was read before: past the old offset.
        append_lines(&log, "w", 1_001..=1_010);
    });
    wait_for_records(&out, 21);
    // Anything sent twice would come after.
    std::thread::sleep(Duration::from_secs(2));
    let records = shipped(&out);
    let lines: Vec<serde_json::Value> =
        records.iter().filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("app.log"))).cloned().collect();
    let numbers: Vec<String> = lines.iter().map(|r| r["data"].as_str().unwrap_or("").to_owned()).collect();
    let expected: Vec<String> = (1..=10).chain(1_001..=1_010).map(|n| format!("w {n}")).collect();
    assert_eq!(numbers, expected);
    let metrics = collector_tests::http_get(port, "/metrics");
    let dropped = collector_tests::sample(&metrics, "collector_ring_buffer_lost_events_total");
    assert!(dropped.is_some_and(|d| d > 0), "the ring did not overflow: {metrics}");
    let unread: u64 = (11..=1_000u64).map(|n| format!("w {n}\n").len() as u64).sum();
    let lost = collector_tests::sample(&metrics, "collector_lost_bytes_total{flow=\"app\",sink=\"file\"}");
    assert_eq!(lost, Some(unread), "{metrics}");
}

/// Two copytruncates before the collector took the first one's event (it is stopped), each
/// copy deleted at once: the lines written between them exist only in what the second
/// copier read, below where the collector had read the old contents to. The kernel lowers
/// the read position at the truncation itself, so that read carries them.
#[test]
fn two_copytruncates_before_the_collector_takes_either_lose_nothing() {
    let _serial = copytruncate_one_at_a_time();
    let scratch = Scratch::new("two-copytruncates");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let (collector, port) = collector_with_metrics(&scratch, &out);
    // Past READ_POSITION_STEP (64 KiB), so the kernel has a read position well past 0.
    append_lines(&log, "w", 1..=20_000);
    wait_for_records(&out, 20_000);
    while_stopped(&collector, || {
        append_lines(&log, "w", 20_001..=20_050);
        copytruncate_now(&log);
        append_lines(&log, "w", 20_051..=20_080);
        copytruncate_now(&log);
        append_lines(&log, "w", 20_081..=20_090);
    });
    let records = wait_for_records(&out, 20_090);
    assert_every_line_once_in_order(&records, "w", 20_090);
    let metrics = collector_tests::http_get(port, "/metrics");
    let lost = collector_tests::sample(&metrics, "collector_lost_bytes_total{flow=\"app\",sink=\"file\"}");
    assert_eq!(lost, Some(0), "{metrics}");
}

/// A log created, written and copytruncated (copy deleted at once) before the collector
/// took its creation's event: the kernel carries other tasks' reads of a new file from its
/// first byte, so the copier's read brings every line.
#[test]
fn a_new_log_copytruncated_before_its_creation_is_taken_loses_nothing() {
    let _serial = copytruncate_one_at_a_time();
    let scratch = Scratch::new("new-copytruncated");
    let log = scratch.path("app.log");
    let out = scratch.path("out.jsonl");
    let (collector, port) = collector_with_metrics(&scratch, &out);
    while_stopped(&collector, || {
        std::fs::write(&log, b"").unwrap();
        append_lines(&log, "w", 1..=100);
        copytruncate_now(&log);
        append_lines(&log, "w", 101..=110);
    });
    let records = wait_for_records(&out, 110);
    assert_every_line_once_in_order(&records, "w", 110);
    let metrics = collector_tests::http_get(port, "/metrics");
    let lost = collector_tests::sample(&metrics, "collector_lost_bytes_total{flow=\"app\",sink=\"file\"}");
    assert_eq!(lost, Some(0), "{metrics}");
}

/// A log created, written and deleted before the collector took its creation's event: it
/// can never be read, and what its write events say was written to it is counted lost
/// (exactly where each write is an event; where the kernel folds appends into the first
/// event, x86-64, at least that event's bytes).
#[test]
fn a_log_deleted_before_it_could_be_opened_is_counted_lost() {
    let scratch = Scratch::new("gone-unopened");
    let log = scratch.path("app.log");
    let out = scratch.path("out.jsonl");
    let (collector, port) = collector_with_metrics(&scratch, &out);
    while_stopped(&collector, || {
        std::fs::write(&log, b"").unwrap();
        append_lines(&log, "w", 1..=10);
        std::fs::remove_file(&log).unwrap();
    });
    let written: u64 = (1..=10u64).map(|n| format!("w {n}\n").len() as u64).sum();
    let first = "w 1\n".len() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let lost = loop {
        let metrics = collector_tests::http_get(port, "/metrics");
        let lost = collector_tests::sample(&metrics, "collector_lost_bytes_total{flow=\"app\",sink=\"file\"}");
        if lost.is_some_and(|l| l > 0) || std::time::Instant::now() > deadline {
            break lost.unwrap_or(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!((first..=written).contains(&lost), "{lost} bytes counted lost of {written} written");
    assert!(shipped(&out).is_empty(), "nothing of it could be read");
    let line = collector.wait_for_log("deleted before it could be opened");
    assert!(line.contains(log.to_str().unwrap()), "the log names the file: {line}");
}

#[test]
fn copytruncate_with_compress_and_delaycompress_ships_neither_copy_nor_archive() {
    let (records, _) =
        under_rotation("compress", "app.log*", "copytruncate\nrotate 100\ncompress\ndelaycompress", false);
    assert_every_line_once_in_order(&records, "w", LINES);
    assert!(records.iter().all(|r| r["path"].as_str().unwrap().ends_with("/app.log")));
}

#[test]
fn a_file_deleted_while_open_is_read_to_its_end() {
    let scratch = Scratch::new("deleted");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let _collector =
        Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern("*.log")], &out, ""));
    let mut w = writer(&log, "w", 4_000, RATE, false);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(&log).unwrap();
    assert!(w.wait().unwrap().success());
    assert_every_line_once_in_order(&wait_for_records(&out, 4_000), "w", 4_000);
}

#[test]
fn writes_after_a_rename_out_of_the_pattern_are_shipped() {
    let scratch = Scratch::new("late");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let _collector =
        Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, ""));
    let mut w = writer(&log, "w", 4_000, RATE, false);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::rename(&log, scratch.path("renamed.old")).unwrap();
    assert!(w.wait().unwrap().success());
    let records = wait_for_records(&out, 4_000);
    assert_every_line_once_in_order(&records, "w", 4_000);
    assert!(
        records.last().unwrap()["path"].as_str().unwrap().ends_with("renamed.old"),
        "followed by inode to its new name"
    );
}

#[test]
fn ten_active_files_under_one_glob_are_all_shipped() {
    let scratch = Scratch::new("ten");
    let out = scratch.path("out.jsonl");
    let _collector =
        Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern("*.log")], &out, ""));
    let writers: Vec<_> =
        (0..10).map(|i| writer(&scratch.path(&format!("app{i}.log")), &format!("w{i}"), 1_000, 500, false)).collect();
    for mut w in writers {
        assert!(w.wait().unwrap().success());
    }
    let records = wait_for_records(&out, 10_000);
    for i in 0..10 {
        assert_every_line_once_in_order(&records, &format!("w{i}"), 1_000);
    }
}

#[test]
fn delete_and_recreate_ships_the_old_file_then_the_new_one() {
    let scratch = Scratch::new("recreate");
    let log = scratch.path("app.log");
    let out = scratch.path("out.jsonl");
    let _collector =
        Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, ""));
    let mut first = writer(&log, "a", 2_000, RATE, false);
    assert!(first.wait().unwrap().success());
    std::fs::remove_file(&log).unwrap();
    let mut second = writer(&log, "b", 2_000, RATE, false);
    assert!(second.wait().unwrap().success());
    let records = wait_for_records(&out, 4_000);
    assert_every_line_once_in_order(&records, "a", 2_000);
    assert_every_line_once_in_order(&records, "b", 2_000);
    assert_eq!(shipped(&out).len(), 4_000);
}

/// `truncate -s 0` while the writer goes on: what was read before each truncation is shipped
/// once, reading restarts at the new end, and whatever was cut before the collector read it
/// is reported as lost (it is gone from disk), never silently.
#[test]
fn truncate_in_place_restarts_at_the_new_end_and_reports_what_was_cut() {
    let scratch = Scratch::new("truncate");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let collector =
        Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, ""));
    let mut w = writer(&log, "w", LINES, RATE, false);
    let mut truncations = 0;
    while w.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(300));
        let status = std::process::Command::new("truncate").args(["-s", "0"]).arg(&log).status().unwrap();
        assert!(status.success());
        truncations += 1;
    }
    assert!(truncations >= collector_tests::min_rotations(), "{truncations} truncations");
    // The last truncation may fall after the writer's last line (and cut it, reported below), so
    // "lines after the last truncation are shipped" is checked with lines written after it.
    let mut tail = writer(&log, "t", 200, RATE, false);
    assert!(tail.wait().unwrap().success());
    std::thread::sleep(Duration::from_secs(2));
    let records = shipped(&out);
    assert_every_line_once_in_order(&records, "t", 200);
    let got = collector_tests::numbered(&records, "w");
    let mut seen = std::collections::HashSet::new();
    let mut last = 0;
    for (n, _, _) in &got {
        assert!(seen.insert(*n), "line {n} shipped twice");
        assert!(*n > last, "line {n} after line {last}");
        last = *n;
    }
    // Lines are "w N\n": at most 7 bytes each here.
    let missing = LINES as usize - seen.len();
    let reported: u64 = collector
        .log_lines(Duration::from_millis(300))
        .iter()
        .filter(|l| l.contains("they are gone from disk"))
        .filter_map(|l| l.split("lost=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(reported as usize >= missing * 5, "{missing} lines missing but only {reported} bytes reported lost");
    assert!(records.iter().all(|r| !r["data"].as_str().unwrap().is_empty()), "no empty records from cut lines");
}

/// `cp` (copy_file_range in coreutils 9) and a read/write copy through the shell, both into
/// names the pattern matches: neither copy is shipped as new data.
#[test]
fn copies_of_a_log_are_not_shipped() {
    let scratch = Scratch::new("copies");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let _collector =
        Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern("app.log*")], &out, ""));
    let mut w = writer(&log, "w", 4_000, RATE, false);
    std::thread::sleep(Duration::from_millis(600));
    let cp = std::process::Command::new("cp").arg(&log).arg(scratch.path("app.log.bak")).status().unwrap();
    assert!(cp.success());
    let cat = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cat {} > {}", log.display(), scratch.path("app.log.copy").display()))
        .status()
        .unwrap();
    assert!(cat.success());
    assert!(w.wait().unwrap().success());
    let records = wait_for_records(&out, 4_000);
    assert_every_line_once_in_order(&records, "w", 4_000);
    assert!(records.iter().all(|r| r["path"].as_str().unwrap().ends_with("/app.log")), "a copy was shipped");
    assert!(std::fs::metadata(scratch.path("app.log.bak")).unwrap().len() > 0, "cp copied something");
}
