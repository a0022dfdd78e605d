//! SEMANTICS.md rows about the collector's own life: SIGKILL and restart while logs rotate,
//! and a checkpoint that must not apply to a new file that got a freed inode number.

use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use collector_tests::{
    Running, Scratch, assert_every_line_at_least_once, assert_every_line_once_in_order, config, rotate_repeatedly,
    shipped, wait_for_records, writer_process,
};

fn writer(path: &Path, tag: &str, lines: u64, rate: u64, reopen: bool) -> Child {
    writer_process(env!("CARGO_BIN_EXE_log_writer"), path, tag, lines, rate, reopen)
}

#[test]
fn sigkill_and_restart_while_rotating_loses_nothing() {
    const LINES: u64 = 10_000;
    let scratch = Scratch::new("sigkill");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    // `app.log*`: generations created and rotated while the collector is down are found by
    // the scan; those it had seen resume from their checkpoints.
    let cfg = config(&scratch.path("state"), &[scratch.pattern("app.log*")], &out, "");
    let mut collector = Running::start(&scratch.dir, &cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let rotator =
        rotate_repeatedly(log.clone(), "create\nrotate 1000".into(), Duration::from_millis(300), stop.clone());
    let mut w = writer(&log, "w", LINES, 2_500, true);
    let mut kills = 0;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1_200));
        let status = collector.kill(libc::SIGKILL);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        kills += 1;
        // Down for several rotations.
        std::thread::sleep(Duration::from_millis(1_000));
        collector = Running::start_with(&scratch.path("collector.toml"));
    }
    assert!(w.wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    let rotations = rotator.join().unwrap();
    assert!(rotations >= collector_tests::min_rotations(), "{rotations} rotations");
    let records = wait_for_records(&out, LINES as usize);
    let again = assert_every_line_at_least_once(&records, "w", LINES);
    // Sent twice: only what was shipped after the last checkpoint before each kill
    // (checkpoints are written at most every 200 ms: ~500 lines at this rate).
    assert!(again <= kills * 1_000, "{again} lines sent twice after {kills} kills");
    drop(collector);
}

#[test]
fn an_output_torn_by_a_kill_during_a_write_is_cut_back_to_its_last_whole_record() {
    // What a kill -9 in the middle of the file sink's write leaves (the kernel ends a write
    // to a regular file between pages when the process must die): a whole record, then part
    // of one. The next run's records must not follow it on the same line.
    let scratch = Scratch::new("torn-output");
    let log = scratch.path("app.log");
    let out = scratch.path("out.jsonl");
    std::fs::write(
        &out,
        br#"{"host":"test","flow":"app","path":"/x","dev":1,"ino":2,"offset":0,"data":"old 1"}
{"host":"test","flow":"app","path":"/x","dev":1,"ino":2,"offset":6,"pid":185"#,
    )
    .unwrap();
    assert!(writer(&log, "w", 500, 10_000, false).wait().unwrap().success());
    let cfg = config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, "");
    let _collector = Running::start(&scratch.dir, &cfg);
    let records = wait_for_records(&out, 501);
    assert_every_line_once_in_order(&records, "old", 1);
    assert_every_line_once_in_order(&records, "w", 500);
}

/// Inode number `old_ino` was freed: the file the filesystem gives it to next is made and
/// put at `to` (ext4 hands a freed number to the next file created nearby).
fn give_freed_inode_number(scratch: &Scratch, old_ino: u64, to: &Path) {
    let mut spares = Vec::new();
    let mut reused = false;
    for i in 0..200 {
        let p = scratch.path(&format!("spare{i}"));
        std::fs::write(&p, b"").unwrap();
        if std::fs::metadata(&p).unwrap().ino() == old_ino {
            std::fs::rename(&p, to).unwrap();
            reused = true;
            break;
        }
        spares.push(p);
    }
    for p in spares {
        std::fs::remove_file(p).unwrap();
    }
    assert!(reused, "the filesystem did not reuse inode {old_ino}; this test needs it to");
}

#[test]
fn a_new_file_with_a_reused_inode_number_is_read_from_its_start() {
    let scratch = Scratch::new("reuse");
    let log = scratch.path("app.log");
    let out = scratch.path("out.jsonl");
    let cfg = config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, "");
    let collector = Running::start(&scratch.dir, &cfg);
    assert!(writer(&log, "a", 2_000, 2_500, false).wait().unwrap().success());
    wait_for_records(&out, 2_000);
    drop(collector); // SIGTERM: its checkpoint says "2,000 lines read".
    let old_ino = std::fs::metadata(&log).unwrap().ino();
    std::fs::remove_file(&log).unwrap();
    give_freed_inode_number(&scratch, old_ino, &log);
    // Longer than the old checkpoint's offset, so only the identity check can tell.
    assert!(writer(&log, "b", 3_000, 10_000, false).wait().unwrap().success());
    let _collector = Running::start_with(&scratch.path("collector.toml"));
    let records = wait_for_records(&out, 5_000);
    assert_every_line_once_in_order(&records, "a", 2_000);
    assert_every_line_once_in_order(&records, "b", 3_000);
    assert_eq!(shipped(&out).len(), 5_000);
}

/// A checkpointed file deleted while the collector is stopped, whose inode number a file
/// under a name no pattern matches then gets: that file is not taken for the rotated log
/// (which would ship it), and the stale checkpoint is removed.
#[test]
fn a_checkpoint_whose_inode_number_another_file_got_does_not_ship_that_file() {
    let scratch = Scratch::new("reuse-other");
    let log = scratch.path("app.log");
    let out = scratch.path("out.jsonl");
    let state = scratch.path("state");
    let cfg = config(&state, &[scratch.pattern("app.log")], &out, "");
    let collector = Running::start(&scratch.dir, &cfg);
    assert!(writer(&log, "a", 100, 2_500, false).wait().unwrap().success());
    wait_for_records(&out, 100);
    drop(collector);
    let old_ino = std::fs::metadata(&log).unwrap().ino();
    std::fs::remove_file(&log).unwrap();
    let other = scratch.path("notes.txt");
    give_freed_inode_number(&scratch, old_ino, &other);
    std::fs::write(&other, "not a log line\n".repeat(50)).unwrap();
    let collector = Running::start_with(&scratch.path("collector.toml"));
    std::fs::write(&log, "b 000001 after\n").unwrap();
    let records = wait_for_records(&out, 101);
    std::thread::sleep(Duration::from_millis(500));
    let records = if records.len() > 101 { records } else { shipped(&out) };
    assert!(
        records.iter().all(|r| !r["data"].as_str().unwrap_or_default().contains("not a log line")),
        "notes.txt was shipped"
    );
    let said = collector.log_lines(Duration::from_millis(500)).join("\n");
    assert!(said.contains("its inode number is another file's: checkpoint removed"), "{said}");
    assert!(
        collector_tests::checkpoints(&state)
            .iter()
            .all(|c| c["ino"] != old_ino || c["path"].as_str().unwrap().ends_with("app.log")),
        "the stale checkpoint stays"
    );
    drop(collector);
}

/// A state directory as the previous release left it (one `<dev>-<ino>.json` per inode,
/// format version 1, the format its own test pinned): the upgraded collector resumes each
/// file where that checkpoint says, sends nothing twice, and takes the file into its store.
#[test]
fn a_state_directory_of_the_previous_release_is_upgraded_without_resending() {
    let scratch = Scratch::new("upgrade");
    let log = scratch.path("app.log");
    let out = scratch.path("out.jsonl");
    let state = scratch.path("state");
    let lines: String = (1..=1000).map(|n| format!("a {n}\n")).collect();
    std::fs::write(&log, &lines).unwrap();
    let acknowledged: usize = (1..=600).map(|n| format!("a {n}\n").len()).sum();
    // What the previous release recorded of this file: kernel dev (major << 20 | minor),
    // inode, birth time and the FNV-1a hash of its first 64 bytes.
    let meta = std::fs::metadata(&log).unwrap();
    let dev = (libc::major(meta.dev()) << 20) | libc::minor(meta.dev());
    let birth_ns = meta.created().ok().map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let head = &lines.as_bytes()[..64];
    let head_hash =
        head.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let birth = birth_ns.map_or("null".to_string(), |n| n.to_string());
    let old = state.join("checkpoints").join(format!("{dev}-{}.json", meta.ino()));
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(
        &old,
        format!(
            r#"{{"version":1,"dev":{dev},"ino":{},"identity":{{"birth_ns":{birth},"head_hash":{head_hash},"head_len":64}},"flow":"app","path":"{}","acknowledged":{acknowledged}}}"#,
            meta.ino(),
            log.display()
        ),
    )
    .unwrap();
    let _collector = Running::start(&scratch.dir, &config(&state, &[scratch.pattern("app.log")], &out, ""));
    let records = wait_for_records(&out, 400);
    std::thread::sleep(Duration::from_millis(500));
    let records_now = shipped(&out);
    assert_eq!(records_now.len(), 400, "only what the old checkpoint had not acknowledged");
    let numbers: Vec<u64> = collector_tests::numbered(&records, "a").iter().map(|(n, _, _)| *n).collect();
    assert_eq!(numbers, (601..=1000).collect::<Vec<_>>());
    assert!(!old.exists(), "the previous format's file is gone once the store holds it");
    let saved = collector_tests::checkpoints(&state);
    assert!(
        saved.iter().any(|c| c["ino"] == meta.ino() && c["acknowledged"].as_u64() >= Some(acknowledged as u64)),
        "{saved:?}"
    );
}

/// Truncated while the collector was stopped, and written past its checkpoint since: the
/// bytes before the checkpoint's offset are not the ones it recorded, so the file is read
/// from its start (not from the middle of a line of its new contents).
#[test]
fn a_file_truncated_while_stopped_and_written_past_its_checkpoint_is_read_from_its_start() {
    let scratch = Scratch::new("truncated-while-stopped");
    let log = scratch.path("app.log");
    let out = scratch.path("out.jsonl");
    let cfg = config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, "");
    let collector = Running::start(&scratch.dir, &cfg);
    assert!(writer(&log, "a", 200, 10_000, false).wait().unwrap().success());
    wait_for_records(&out, 200);
    drop(collector); // SIGTERM: its checkpoint says "200 lines read".
    let old_size = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    assert!(writer(&log, "bb", 300, 10_000, false).wait().unwrap().success());
    assert!(std::fs::metadata(&log).unwrap().len() > old_size, "written past the checkpoint");
    let _collector = Running::start_with(&scratch.path("collector.toml"));
    let records = wait_for_records(&out, 500);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(shipped(&out).len(), 500, "nothing but the 200 lines before and the 300 after");
    assert_every_line_once_in_order(&records, "a", 200);
    assert_every_line_once_in_order(&records, "bb", 300);
}

/// SEMANTICS.md (nothing lost): a checkpoint passes records only once the sink made them
/// durable. A FIFO as the file sink's path is a real destination whose fsync fails
/// (EINVAL: a pipe cannot be synchronised), while every write to it succeeds.
#[test]
fn records_a_sink_could_not_make_durable_are_sent_again_and_never_checkpointed() {
    const LINES: u64 = 200;
    let scratch = Scratch::new("unsynced");
    let log = scratch.path("app.log");
    let lines: String = (1..=LINES).map(|n| format!("w {n:06} line\n")).collect();
    std::fs::write(&log, &lines).unwrap();
    let out = scratch.path("out.fifo");
    let fifo = std::ffi::CString::new(out.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo {}", out.display());
    // The reader: opening a FIFO waits for its writer, the collector's sink.
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let (out, received) = (out.clone(), received.clone());
        std::thread::spawn(move || {
            let mut fifo = std::fs::File::open(out).unwrap();
            let mut buf = [0u8; 65536];
            loop {
                match std::io::Read::read(&mut fifo, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        })
    };
    let state = scratch.path("state");
    let collector = Running::start(&scratch.dir, &config(&state, &[scratch.pattern("app.log")], &out, ""));
    let error = collector.wait_for_log("could not make records durable");
    assert!(error.contains("fsync of the file sink"), "the error names what failed: {error}");
    // Read again from the checkpoint after the flow's pause: every line comes twice.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let count_of = |n: u64| {
        let text = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
        text.matches(&format!("\"w {n:06} line\"")).count()
    };
    while (count_of(1) < 2 || count_of(LINES) < 2) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        count_of(1) >= 2 && count_of(LINES) >= 2,
        "sent again: first line {}x, last {}x",
        count_of(1),
        count_of(LINES)
    );
    drop(collector); // SIGTERM: its last checkpoint needs an fsync too.
    reader.join().unwrap();
    let checkpoints = collector_tests::checkpoints(&state);
    assert!(!checkpoints.is_empty(), "the file was checkpointed when picked up");
    for c in &checkpoints {
        assert_eq!(c["acknowledged"], 0, "no checkpoint passes records that were never made durable: {c}");
    }
}

/// A copytruncate's copy whose name matches the pattern is known as a copy from the kernel's
/// events while running; after a restart, the state directory still knows it, and it is not
/// shipped then either (the scan would otherwise find a matching file with no checkpoint).
#[test]
fn copies_are_remembered_in_the_state_directory_across_restarts() {
    let scratch = Scratch::new("copy-memory");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let cfg = config(&scratch.path("state"), &[scratch.pattern("app.log*")], &out, "");
    let collector = Running::start(&scratch.dir, &cfg);
    let mut w = writer(&log, "a", 500, 2_500, false);
    assert!(w.wait().unwrap().success());
    wait_for_records(&out, 500);
    collector_tests::logrotate_once(&scratch, "copytruncate\nrotate 3");
    assert!(scratch.path("app.log.1").exists(), "logrotate made its copy");
    let mut w = writer(&log, "b", 100, 2_500, false);
    assert!(w.wait().unwrap().success());
    wait_for_records(&out, 600);
    drop(collector);
    let collector = Running::start_with(&scratch.path("collector.toml"));
    let mut w = writer(&log, "c", 100, 2_500, false);
    assert!(w.wait().unwrap().success());
    let records = wait_for_records(&out, 700);
    std::thread::sleep(Duration::from_secs(1));
    let records = if records.len() > 700 { records } else { shipped(&out) };
    assert_every_line_once_in_order(&records, "a", 500);
    assert_every_line_once_in_order(&records, "b", 100);
    assert_every_line_once_in_order(&records, "c", 100);
    assert!(
        records.iter().all(|r| r["path"].as_str().unwrap().ends_with("/app.log")),
        "the copy app.log.1 was shipped after the restart"
    );
    drop(collector);
}

/// A way of truncating a file to nothing.
type Truncation<'a> = &'a dyn Fn(&Path);

/// A checkpoint is saved only once every truncation the kernel counted for the file has had
/// its event taken (else it could name an offset of the old contents with the new contents'
/// bytes before it: a restart would resume mid-line). This checks the other side: after
/// each way of truncating a file (ftruncate, truncate(2) by path, open with O_TRUNC, and a
/// call that fails), the checkpoint still moves to the file's end.
#[test]
fn checkpoints_move_on_after_each_kind_of_truncation() {
    let scratch = Scratch::new("checkpoint-after-truncation");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let state = scratch.path("state");
    let out = scratch.path("out.jsonl");
    let cfg = config(&state, &[scratch.pattern("app.log")], &out, "");
    let _collector = Running::start(&scratch.dir, &cfg);
    let truncations: [(&str, Truncation); 4] = [
        ("ftruncate", &|p| std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(0).unwrap()),
        ("truncate", &|p| {
            let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
            assert_eq!(unsafe { libc::truncate(path.as_ptr(), 0) }, 0);
        }),
        ("O_TRUNC", &|p| drop(std::fs::OpenOptions::new().write(true).truncate(true).open(p).unwrap())),
        // Fails (EINVAL): tracepoint mode counts it as the syscall begins, and no event
        // comes; the checkpoint waits a second for one, then moves on.
        ("a failing ftruncate", &|p| assert!(std::fs::File::open(p).unwrap().set_len(0).is_err())),
    ];
    let mut lines = 0;
    for (i, (how, truncate)) in truncations.iter().enumerate() {
        let tag = format!("t{i}");
        assert!(writer(&log, &tag, 100, 10_000, false).wait().unwrap().success());
        lines += 100;
        wait_for_records(&out, lines);
        truncate(&log);
        // The new contents, shorter than the old: a checkpoint at their end is a new one.
        let tag = format!("n{i}");
        assert!(writer(&log, &tag, 50, 10_000, false).wait().unwrap().success());
        lines += 50;
        wait_for_records(&out, lines);
        let size = std::fs::metadata(&log).unwrap().len();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let at: Vec<u64> =
                collector_tests::checkpoints(&state).iter().filter_map(|c| c["acknowledged"].as_u64()).collect();
            if at == [size] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "after {how}: the checkpoint stays at {at:?}, the file is {size} bytes and every line was shipped"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Killed (SIGKILL) while the unread tail of a copytruncated file is read from its copy, the
/// collector reads the rest of that tail from the copy after its restart: the copy's record
/// in the state directory stands for where reading was. The endpoint stalls (requests read
/// and never answered) from before the rotation to the kill, so the tail is unread then.
/// The endpoint is collector_tests::acceptor: kinesis-mock cannot stall on demand.
#[test]
fn a_kill_while_a_copytruncated_tail_is_read_from_its_copy_loses_nothing() {
    const FIRST: u64 = 1_000;
    const LINES: u64 = 100_000;
    let scratch = Scratch::new("kill-in-tail");
    let log = scratch.path("app.log");
    let line = |n: u64| format!("tail {n:06} {}\n", "x".repeat(28));
    std::fs::write(&log, (1..=FIRST).map(line).collect::<String>()).unwrap();
    let accepted = Arc::new(std::sync::Mutex::new(vec![0u32; LINES as usize + 1]));
    let taken = accepted.clone();
    let endpoint = collector_tests::acceptor::Acceptor::start(Box::new(move |data: &[u8]| {
        let r: serde_json::Value = serde_json::from_slice(data).expect("a json envelope");
        let n: usize = r["data"].as_str().and_then(|d| d.get(5..11)?.parse().ok()).expect("a numbered line");
        taken.lock().unwrap()[n] += 1;
    }))
    .unwrap();
    let state = scratch.path("state");
    let config = format!(
        "[collector]\nstate_dir = {state:?}\nhost = \"test\"\n\n[[flow]]\nname = \"app\"\npaths = [{log:?}]\n\n\
         [flow.sink]\nkind = \"kinesis\"\nstream = \"s\"\nregion = \"us-east-1\"\nendpoint_url = {:?}\nenvelope = \"json\"\n",
        endpoint.endpoint()
    );
    let config_path = scratch.path("collector.toml");
    std::fs::write(&config_path, config).unwrap();
    let credentials =
        [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_EC2_METADATA_DISABLED", "true")];
    let count = |accepted: &std::sync::Mutex<Vec<u32>>| accepted.lock().unwrap().iter().filter(|c| **c > 0).count();
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            let got = count(&accepted);
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}: {got} of {LINES} lines");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let collector = Running::start_with_env(&config_path, &credentials);
    wait("the first lines", &|| count(&accepted) as u64 >= FIRST);
    // More than one turn's read (1 MiB), then the copytruncate while nothing is answered.
    endpoint.set_stalled(true);
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, (FIRST + 1..=LINES).map(line).collect::<String>().as_bytes()).unwrap();
    drop(f);
    collector_tests::logrotate_once(&scratch, "copytruncate\nrotate 1");
    let copy = collector_tests::ino(&scratch.path("app.log.1"));
    collector.wait_for_log("reading the unread tail of a copytruncated file from its copy");
    let record_of_copy =
        || collector_tests::checkpoints(&state).iter().any(|c| c["ino"] == copy && c["derived"] != true);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !record_of_copy() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let copy_had_a_record = record_of_copy();
    let status = collector.kill(libc::SIGKILL);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    assert!((count(&accepted) as u64) < LINES, "the tail was still unread when killed");
    endpoint.set_stalled(false);
    let collector = Running::start_with_env(&config_path, &credentials);
    wait("every line", &|| count(&accepted) as u64 >= LINES);
    assert!(copy_had_a_record, "the copy's record stood for the tail");
    let log_text = collector.log_lines(Duration::from_millis(500)).join("\n");
    assert!(log_text.contains("app.log.1"), "the restart resumed the copy: {log_text}");
    drop(collector);
}
