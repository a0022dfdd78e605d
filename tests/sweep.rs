//! The safety sweep (SEMANTICS: "a slow periodic sweep (fstat of held files) exists only as
//! a safety net for writes the hooks cannot see"). io_uring writes reach the file system
//! without passing vfs_write or the write syscalls, so no write event announces them.

use std::{process::Command, time::Duration};

use collector_tests::{
    Running, Scratch, assert_every_line_once_in_order, http_get, sample, shipped, wait_for_records, writer_process,
};

/// Files appended only by io_uring, in two flows: one swept every second, one never. The
/// swept ones arrive whole, once and in order (one was there at start-up, one is created
/// while running, with no write event ever to show it is no copy), and /metrics counts all
/// their bytes as found by the sweep; the unswept one stays unread, which shows the hooks indeed missed
/// those writes (without that, the first half would prove nothing). A third file, swept
/// every second too, is written with write(2) all the while: the sweep finds nothing
/// there, though it looks while the writes' events are on their way.
#[test]
fn appends_the_kernel_hooks_do_not_see_are_read_by_the_periodic_sweep() {
    let scratch = Scratch::new("sweep");
    let (swept, unswept) = (scratch.path("swept.log"), scratch.path("unswept.log"));
    let created = scratch.path("swept-created.log");
    std::fs::write(&swept, b"").unwrap();
    std::fs::write(&unswept, b"").unwrap();
    let announced = scratch.path("announced.log");
    std::fs::write(&announced, b"").unwrap();
    let (swept_out, unswept_out) = (scratch.path("swept.jsonl"), scratch.path("unswept.jsonl"));
    let announced_out = scratch.path("announced.jsonl");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let flow = |name: &str, path: &std::path::Path, every: &str, out: &std::path::Path| {
        format!(
            "[[flow]]\nname = \"{name}\"\npaths = [{:?}]\nsweep_interval = \"{every}\"\n\n[flow.sink]\nkind = \"file\"\npath = {:?}\n\n",
            path.display().to_string(),
            out.display().to_string()
        )
    };
    let text = format!(
        "[collector]\nstate_dir = {:?}\nhost = \"test\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{}{}{}",
        scratch.path("state").display().to_string(),
        flow("swept", &scratch.path("swept*.log"), "1s", &swept_out),
        flow("unswept", &unswept, "0s", &unswept_out),
        flow("announced", &announced, "1s", &announced_out),
    );
    let collector = Running::start(&scratch.dir, &text);
    let announced_lines = 6_000;
    let mut writer = writer_process(env!("CARGO_BIN_EXE_log_writer"), &announced, "a", announced_lines, 2_000, false);

    let lines = 300;
    // Created empty (no write(2)): only its Create event is seen.
    std::fs::write(&created, b"").unwrap();
    let status =
        Command::new(collector_tests::program(env!("CARGO_BIN_EXE_uring_writer"), "COLLECTOR_TEST_URING_WRITER"))
            .args(["w", &lines.to_string(), "5"])
            .arg(&swept)
            .arg(&unswept)
            .arg(&created)
            .status()
            .expect("start uring_writer");
    assert!(status.success(), "uring_writer: {status}");
    let size = std::fs::metadata(&swept).unwrap().len();
    assert_eq!(size, std::fs::metadata(&unswept).unwrap().len());

    let records = wait_for_records(&swept_out, 2 * lines as usize);
    for path in [&swept, &created] {
        let path = path.display().to_string();
        let of_file: Vec<_> = records.iter().filter(|r| r["path"] == path.as_str()).cloned().collect();
        assert_every_line_once_in_order(&of_file, "w", lines);
    }
    assert!(writer.wait().unwrap().success());
    let records = wait_for_records(&announced_out, announced_lines as usize);
    assert_every_line_once_in_order(&records, "a", announced_lines);
    // Two more sweep intervals: the unswept flow would have had its events by now.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        shipped(&unswept_out).len(),
        0,
        "the hooks saw io_uring writes: this test shows nothing about the sweep"
    );
    let metrics = http_get(port, "/metrics");
    let swept_bytes = sample(&metrics, "collector_swept_bytes_total{flow=\"swept\",sink=\"file\"}");
    assert_eq!(swept_bytes, Some(2 * size), "every byte was found by the sweep\n{metrics}");
    assert_eq!(sample(&metrics, "collector_swept_bytes_total{flow=\"unswept\",sink=\"file\"}"), Some(0));
    assert_eq!(sample(&metrics, "collector_swept_bytes_total{flow=\"announced\",sink=\"file\"}"), Some(0), "{metrics}");
    let log = collector.log_lines(Duration::ZERO);
    let named: Vec<_> = log.iter().filter(|l| l.contains("no write event announced")).collect();
    assert_eq!(named.len(), 2, "each file is named once in the log: {named:?}");
    assert!(named.iter().any(|l| l.contains("swept.log")) && named.iter().any(|l| l.contains("swept-created.log")));
}

/// A truncation through io_uring: tracepoint mode has no hook on its path (fentry and kprobe
/// modes see it in do_truncate). The sweep finds the file shorter than what was read with no
/// truncation event, takes it as truncated to its size, and says so; the lines written
/// after that arrive, though they end below the old offset.
#[test]
fn a_truncation_the_kernel_hooks_do_not_see_is_noticed_by_the_sweep() {
    let scratch = Scratch::new("sweep-truncate");
    let log = scratch.path("app.log");
    let before: String = (1..=200).map(|n| format!("a {n}\n")).collect();
    std::fs::write(&log, &before).unwrap();
    let out = scratch.path("out.jsonl");
    let collector = Running::start(
        &scratch.dir,
        &collector_tests::config(
            &scratch.path("state"),
            &[scratch.pattern("app.log")],
            &out,
            "sweep_interval = \"1s\"\n",
        ),
    );
    assert_every_line_once_in_order(&wait_for_records(&out, 200), "a", 200);
    let status =
        Command::new(collector_tests::program(env!("CARGO_BIN_EXE_uring_writer"), "COLLECTOR_TEST_URING_WRITER"))
            .args(["--truncate", "0"])
            .arg(&log)
            .status()
            .expect("start uring_writer");
    assert!(status.success(), "uring_writer --truncate: {status}");
    let tracepoint_mode = collector.log_lines(Duration::ZERO).iter().any(|l| l.contains("mode=tracepoint"));
    let noticed = |log: &[String]| log.iter().any(|l| l.contains("no truncation event came"));
    if tracepoint_mode {
        // Two sweep intervals at most.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !noticed(&collector.log_lines(Duration::ZERO)) {
            assert!(std::time::Instant::now() < deadline, "the sweep did not notice the truncation");
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        std::thread::sleep(Duration::from_secs(1));
    }
    // Fewer bytes than before the truncation: without the sweep they would wait unread.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for n in 1..=50 {
        std::io::Write::write_all(&mut f, format!("b {n}\n").as_bytes()).unwrap();
    }
    let records = wait_for_records(&out, 250);
    let (a, b): (Vec<_>, Vec<_>) =
        records.into_iter().partition(|r| r["data"].as_str().is_some_and(|d| d.starts_with("a ")));
    assert_every_line_once_in_order(&a, "a", 200);
    assert_every_line_once_in_order(&b, "b", 50);
    assert_eq!(noticed(&collector.log_lines(Duration::ZERO)), tracepoint_mode, "warned only where the hooks miss it");
}
