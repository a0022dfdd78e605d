//! Records as README documents them: multiline joining with its flush timeout, the size
//! limit with its terminator, header skipping, and bytes that are not UTF-8.

use std::{io::Write as _, time::Duration};

use collector_tests::{Running, Scratch, config, wait_for_records};

fn append(path: &std::path::Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn multiline_records_join_continuations_and_flush_after_the_timeout() {
    let scratch = Scratch::new("multiline");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let extra = "multiline_start = '^\\d{4}-\\d{2}-\\d{2} '\nmultiline_flush = \"500ms\"\nskip_header_lines = 1\n";
    let _c = Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, extra));
    append(&log, b"# header line\n2026-11-27 first\n  at a.b(c)\n  at d.e(f)\n2026-11-27 second\n");
    // The second record is complete only when the next start line comes, or after 500 ms.
    let records = wait_for_records(&out, 2);
    let data: Vec<&str> = records.iter().map(|r| r["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["2026-11-27 first\n  at a.b(c)\n  at d.e(f)", "2026-11-27 second"]);
    assert_eq!(records[0]["offset"], 14, "the header is skipped, offsets stay file offsets");
    // A record split across writes is still one record.
    append(&log, b"2026-11-27 third\n  more");
    std::thread::sleep(Duration::from_millis(100));
    append(&log, b" of it\n2026-11-27 fourth\n");
    let records = wait_for_records(&out, 4);
    let data: Vec<&str> = records.iter().map(|r| r["data"].as_str().unwrap()).collect();
    assert_eq!(data[2..], ["2026-11-27 third\n  more of it", "2026-11-27 fourth"]);
    assert_eq!(records.len(), 4);
}

#[test]
fn long_lines_are_cut_at_max_record_bytes_with_the_terminator_and_reported() {
    let scratch = Scratch::new("maxrecord");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let extra = "max_record_bytes = 64\ntruncated_terminator = \"...\"\n";
    let c = Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, extra));
    let long = "x".repeat(100_000);
    append(&log, format!("short\n{long}\nafter\n").as_bytes());
    let records = wait_for_records(&out, 3);
    let data: Vec<&str> = records.iter().map(|r| r["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["short", &format!("{}...", &long[..61]), "after"]);
    assert_eq!(records[2]["offset"], 6 + 100_001, "the cut line still counts in file offsets");
    assert!(
        c.log_lines(Duration::from_millis(300)).iter().any(|l| l.contains("longer than max_record_bytes were cut")),
        "a cut record is reported"
    );
}

#[test]
fn bytes_that_are_not_utf8_are_shipped_as_they_are() {
    let scratch = Scratch::new("bytes");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let raw_out = scratch.path("out.raw");
    let cfg = format!(
        "[collector]\nstate_dir = {:?}\n[[flow]]\nname = \"raw\"\npaths = [{:?}]\n[flow.sink]\nkind = \"file\"\npath = {:?}\nformat = \"raw\"\n",
        scratch.path("state"),
        scratch.pattern("app.log"),
        raw_out
    );
    let _c = Running::start(&scratch.dir, &cfg);
    append(&log, b"text first\nlatin1 caf\xe9 and a NUL \x00 byte\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let want: &[u8] = b"text first\nlatin1 caf\xe9 and a NUL \x00 byte\n";
    loop {
        let got = std::fs::read(&raw_out).unwrap_or_default();
        if got.len() >= want.len() || std::time::Instant::now() > deadline {
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(std::fs::read(&raw_out).unwrap_or_default(), want);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
