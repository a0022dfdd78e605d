//! The Kinesis Data Streams sink against a real Kinesis-compatible server (kinesis-mock,
//! started here on 127.0.0.1): every line exactly once under rotation, and nothing lost
//! while the server is down.

use std::{
    path::Path,
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use collector_tests::{
    Running, Scratch, assert_every_line_at_least_once, assert_every_line_once_in_order,
    fault_proxy::{Fault, FaultProxy},
    kinesis_server::KinesisServer,
    rotate_repeatedly, writer_process,
};

fn writer(path: &Path, tag: &str, lines: u64, rate: u64, reopen: bool) -> Child {
    writer_process(env!("CARGO_BIN_EXE_log_writer"), path, tag, lines, rate, reopen)
}

fn kinesis_config(scratch: &Scratch, pattern: &str, endpoint: &str, stream: &str) -> String {
    format!(
        "[collector]\nstate_dir = {:?}\nhost = \"test\"\n\n[[flow]]\nname = \"app\"\npaths = [{:?}]\nrotated_idle = \"2s\"\n\n\
         [flow.sink]\nkind = \"kinesis\"\nstream = {stream:?}\nregion = \"us-east-1\"\nendpoint_url = {endpoint:?}\nenvelope = \"json\"\n",
        scratch.path("state"),
        scratch.pattern(pattern)
    )
}

/// Static credentials for the local server (it does not check them), so the SDK's chain
/// never reaches for instance metadata.
const TEST_CREDENTIALS: &[(&str, &str)] =
    &[("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_EC2_METADATA_DISABLED", "true")];

fn start_collector(scratch: &Scratch, config: &str) -> Running {
    let path = scratch.path("collector.toml");
    std::fs::write(&path, config).unwrap();
    Running::start_with_env(&path, TEST_CREDENTIALS)
}

/// kinesis-mock takes ~750 records/s: one of these tests at a time, each at a rate the
/// server can follow. (The collector's loop waits while a sink call is in progress; a
/// server this slow would otherwise make the kernel's ring buffer overflow, see README.)
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ship_under_rotation(name: &str, directives: &str, reopen: bool) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const LINES: u64 = 4_000;
    let server = KinesisServer::start("logs");
    let scratch = Scratch::new(name);
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let _collector = start_collector(&scratch, &kinesis_config(&scratch, "app.log*", &server.endpoint(), "logs"));
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = rotate_repeatedly(log.clone(), directives.into(), Duration::from_millis(300), stop.clone());
    let mut w = writer(&log, "w", LINES, 1_000, reopen);
    assert!(w.wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    let rotations = rotator.join().unwrap();
    assert!(rotations >= collector_tests::min_rotations(), "{rotations} rotations");
    let records = server.wait_for_records(LINES as usize);
    assert_every_line_once_in_order(&records, "w", LINES);
    assert!(
        records
            .iter()
            .all(|r| r["path"].as_str().unwrap().ends_with("/app.log") || !directives.contains("copytruncate"))
    );
    // The envelope names the writing process, from the kernel's write events.
    let writer = w.id();
    assert!(
        records.iter().all(|r| r["pid"].as_u64() == Some(u64::from(writer)) && r["comm"] == "log_writer"),
        "every record names its writer (pid {writer}, log_writer): {:?}",
        records.iter().find(|r| r["pid"].as_u64() != Some(u64::from(writer)))
    );
}

#[test]
fn rename_and_create_rotation_reaches_kinesis_once() {
    ship_under_rotation("kinesis-create", "create\nrotate 100", true);
}

#[test]
fn copytruncate_rotation_reaches_kinesis_once() {
    ship_under_rotation("kinesis-copytruncate", "copytruncate\nrotate 100", false);
}

#[test]
fn a_server_down_for_thirty_seconds_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const LINES: u64 = 3_000;
    let port = collector_tests::servers::free_port();
    let scratch = Scratch::new("kinesis-down");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let endpoint = collector_tests::servers::endpoint(port);
    let collector = start_collector(&scratch, &kinesis_config(&scratch, "app.log", &endpoint, "logs"));
    assert!(writer(&log, "w", LINES, 1_000, false).wait().unwrap().success());
    // Down: the collector keeps failing, logs it once, and holds the bytes on disk only.
    let down_until = Instant::now() + Duration::from_secs(30);
    let mut peak_rss_kib = 0;
    while Instant::now() < down_until {
        let status = std::fs::read_to_string(format!("/proc/{}/status", collector.pid())).unwrap();
        let rss: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        peak_rss_kib = peak_rss_kib.max(rss);
        std::thread::sleep(Duration::from_millis(500));
    }
    let log_lines = collector.log_lines(Duration::ZERO);
    let refusals = log_lines.iter().filter(|l| l.contains("sink refused a batch")).count();
    assert!(refusals >= 1, "the failure is logged");
    assert!(refusals <= 2, "a lasting failure is logged once, not per attempt ({refusals} times)");
    assert!(peak_rss_kib < 64 * 1024, "RSS while the server was down: {peak_rss_kib} KiB");
    let server = KinesisServer::start_on(port, "logs");
    let records = server.wait_for_records(LINES as usize);
    assert_every_line_once_in_order(&records, "w", LINES);
    assert!(
        collector.log_lines(Duration::ZERO).iter().any(|l| l.contains("accepts batches again")),
        "recovery is logged"
    );
}

/// SIGKILL while the server is down, with a rename + create rotation in the outage, then a
/// restart once it is back: nothing was accepted before the kill, so every line arrives
/// exactly once (the rotated file found again by its inode).
#[test]
fn a_sigkill_during_an_outage_then_a_restart_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const LINES: u64 = 2_000;
    let port = collector_tests::servers::free_port();
    let scratch = Scratch::new("kinesis-down-kill");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let endpoint = collector_tests::servers::endpoint(port);
    let config = kinesis_config(&scratch, "app.log*", &endpoint, "logs");
    let collector = start_collector(&scratch, &config);
    let mut w = writer(&log, "w", LINES, 1_000, true);
    std::thread::sleep(Duration::from_secs(1));
    collector_tests::logrotate_once(&scratch, "create\nrotate 5");
    assert!(w.wait().unwrap().success());
    collector.wait_for_log("sink refused a batch");
    let status = collector.kill(libc::SIGKILL);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    let server = KinesisServer::start_on(port, "logs");
    let _collector = start_collector(&scratch, &config);
    let records = server.wait_for_records(LINES as usize);
    assert_every_line_once_in_order(&records, "w", LINES);
}

/// A copytruncate while the server is down: the bytes not yet shipped (more than one read's
/// worth) are gone from the original and only in the copy. They are read from the copy once
/// the server is back, not held in memory and dropped when the sink refuses them.
#[test]
fn a_copytruncate_while_the_server_is_down_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Lines of ~107 bytes: 10,500 make 1.1 MB, more than the collector reads at once (1 MiB).
    const BEFORE: u64 = 10_500;
    const AFTER: u64 = 500;
    let before_tag = "b".repeat(100);
    let port = collector_tests::servers::free_port();
    let scratch = Scratch::new("kinesis-down-copytruncate");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let endpoint = collector_tests::servers::endpoint(port);
    let collector = start_collector(&scratch, &kinesis_config(&scratch, "app.log", &endpoint, "logs"));
    assert!(writer(&log, &before_tag, BEFORE, 100_000, false).wait().unwrap().success());
    collector.wait_for_log("sink refused a batch");
    collector_tests::logrotate_once(&scratch, "copytruncate\nrotate 5");
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "copytruncate emptied the original");
    assert!(writer(&log, "a", AFTER, 1_000, false).wait().unwrap().success());
    // Down for longer than one sink call retries (20 s): a call made at the truncation fails.
    std::thread::sleep(Duration::from_secs(25));
    let server = KinesisServer::start_on(port, "logs");
    let records = server.wait_for_records((BEFORE + AFTER) as usize);
    assert_every_line_once_in_order(&records, &before_tag, BEFORE);
    assert_every_line_once_in_order(&records, "a", AFTER);
    let lines = collector.log_lines(Duration::ZERO);
    assert!(
        !lines.iter().any(|l| l.contains("gone from disk")),
        "nothing is reported lost: {:?}",
        lines.iter().find(|l| l.contains("gone from disk"))
    );
}

#[test]
fn a_missing_stream_is_reported_once_and_the_data_waits_until_it_exists() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const LINES: u64 = 1_000;
    let mut server = KinesisServer::start("some-other-stream");
    let scratch = Scratch::new("kinesis-missing");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let collector = start_collector(&scratch, &kinesis_config(&scratch, "app.log", &server.endpoint(), "logs"));
    assert!(writer(&log, "w", LINES, 1_000, false).wait().unwrap().success());
    std::thread::sleep(Duration::from_secs(6));
    let lines = collector.log_lines(Duration::ZERO);
    let refused: Vec<&String> = lines.iter().filter(|l| l.contains("sink refused a batch")).collect();
    assert_eq!(refused.len(), 1, "one error for a lasting failure: {refused:?}");
    assert!(refused[0].contains("ResourceNotFoundException"), "the AWS error is named: {}", refused[0]);
    server.create_stream("logs");
    let records = server.wait_for_records(LINES as usize);
    assert_every_line_once_in_order(&records, "w", LINES);
}

/// What Kinesis and the network do to a shipper, injected by a proxy between the collector
/// and the server (tests/src/fault_proxy.rs): 500s, connection resets, partial failures,
/// throttling, a hang past the client's timeout, and responses dropped after the server
/// stored the records. Under create rotation: every line arrives; the only duplicates are
/// the records of dropped responses, which no client can tell from lost ones. (PutRecords
/// does not keep order across a partial failure's retry; the envelope's offsets do.)
#[test]
fn injected_faults_lose_nothing_and_duplicate_only_unanswered_records() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const LINES: u64 = 3_000;
    let server = KinesisServer::start("logs");
    let proxy = FaultProxy::start(server.port, Duration::from_secs(11));
    let scratch = Scratch::new("kinesis-faults");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let collector = start_collector(&scratch, &kinesis_config(&scratch, "app.log*", &proxy.endpoint(), "logs"));
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = rotate_repeatedly(log.clone(), "create\nrotate 100".into(), Duration::from_millis(500), stop.clone());
    assert!(writer(&log, "w", LINES, 500, true).wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    rotator.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let records = loop {
        let records = server.records();
        let distinct: std::collections::HashSet<u64> =
            collector_tests::numbered(&records, "w").into_iter().map(|(n, _, _)| n).collect();
        if distinct.len() as u64 >= LINES || Instant::now() > deadline {
            // Retries still in flight would show as duplicates now: let them land.
            std::thread::sleep(Duration::from_secs(3));
            break server.records();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let stats = proxy.stats();
    eprintln!("proxy: {stats:?}");
    assert_every_line_at_least_once(&records, "w", LINES);
    for fault in [Fault::ServerError, Fault::Reset, Fault::Partial, Fault::Throttle, Fault::DropResponse, Fault::Hang] {
        assert!(stats.count(fault) >= 1, "{fault:?} was never injected: {stats:?}");
    }
    let extra = collector_tests::numbered(&records, "w").len() as u64 - LINES;
    assert!(
        extra <= stats.dropped_response_records,
        "{extra} records sent twice, but only {} were in responses the proxy dropped",
        stats.dropped_response_records
    );
    let log_lines = collector.log_lines(Duration::ZERO);
    for code in ["ProvisionedThroughputExceededException", "InternalFailure"] {
        assert!(log_lines.iter().any(|l| l.contains(code)), "the collector names {code} in its log");
    }
}
