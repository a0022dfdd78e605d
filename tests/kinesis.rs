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
    Running, Scratch, append_lines, assert_every_line_at_least_once, assert_every_line_once_in_order,
    fault_proxy::{Fault, FaultProxy},
    kinesis_server::{KinesisServer, consume},
    moto_server::MotoServer,
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

/// `lines` lines (`w N`, 1,000 a second) written to app.log while logrotate rotates it with
/// `directives` every 300 ms, shipped to `server` by a collector whose sink has `sink_extra`
/// too; the collector (still running) and the writer's pid.
fn write_under_rotation(
    scratch: &Scratch,
    server: &KinesisServer,
    sink_extra: &str,
    directives: &str,
    reopen: bool,
    lines: u64,
) -> (Running, u32) {
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let collector =
        start_collector(scratch, &(kinesis_config(scratch, "app.log*", &server.endpoint(), "logs") + sink_extra));
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = rotate_repeatedly(log.clone(), directives.into(), Duration::from_millis(300), stop.clone());
    let mut w = writer(&log, "w", lines, 1_000, reopen);
    assert!(w.wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    let rotations = rotator.join().unwrap();
    assert!(rotations >= collector_tests::min_rotations(), "{rotations} rotations");
    (collector, w.id())
}

fn ship_under_rotation(name: &str, directives: &str, reopen: bool) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const LINES: u64 = 4_000;
    let server = KinesisServer::start("logs");
    let scratch = Scratch::new(name);
    let (_collector, writer) = write_under_rotation(&scratch, &server, "", directives, reopen, LINES);
    let records = server.wait_for_records(LINES as usize);
    assert_every_line_once_in_order(&records, "w", LINES);
    assert!(
        records
            .iter()
            .all(|r| r["path"].as_str().unwrap().ends_with("/app.log") || !directives.contains("copytruncate"))
    );
    // The envelope names the writing process, from the kernel's write events.
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

/// 500 files written at once, as on a Kubernetes node: half rotated by create, half by
/// copytruncate, twice, with a restart between; every line of every file arrives once and
/// in order (requests carry many files' records, several are out at once).
#[test]
fn five_hundred_files_through_rotation_and_a_restart_reach_kinesis_once() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const FILES: usize = 500;
    // Per file and phase: kinesis-mock takes ~750 records/s.
    const LINES: u64 = 4;
    let server = KinesisServer::start("logs");
    let scratch = Scratch::new("kinesis-500-files");
    let logs = scratch.path("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let name = |i: usize| format!("{}{i:03}", if i.is_multiple_of(2) { "c" } else { "t" });
    for i in 0..FILES {
        std::fs::write(logs.join(format!("{}.log", name(i))), b"").unwrap();
    }
    let conf = logs.join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{dir}/c*.log {{\ncreate\nrotate 5\n}}\n{dir}/t*.log {{\ncopytruncate\nrotate 5\n}}\n",
            dir = logs.display()
        ),
    )
    .unwrap();
    // kinesis-mock in an emulated guest can take more than the default 10 s to answer the
    // requests out at once; one given up and sent again may have been stored, which is a
    // duplicate the contract allows (injected_faults... covers it). This test is about
    // rotation and restart, so it waits for the answer.
    let config = kinesis_config(&scratch, "logs/*.log*", &server.endpoint(), "logs") + "request_timeout = \"2m\"\n";
    let write_phase = |phase: u64| {
        let first = phase * LINES + 1;
        for i in 0..FILES {
            append_lines(&logs.join(format!("{}.log", name(i))), &name(i), first..=first + LINES - 1);
        }
    };
    let collector = start_collector(&scratch, &config);
    write_phase(0);
    collector_tests::logrotate(&conf);
    write_phase(1);
    // Stopped with some of it shipped, some not; more written while it is down.
    std::thread::sleep(Duration::from_millis(500));
    assert!(collector.kill(libc::SIGTERM).success());
    write_phase(2);
    let _collector = start_collector(&scratch, &config);
    collector_tests::logrotate(&conf);
    write_phase(3);
    let records = server.wait_for_records(FILES * 4 * LINES as usize);
    for i in 0..FILES {
        assert_every_line_once_in_order(&records, &name(i), 4 * LINES);
    }
    assert_eq!(records.len(), FILES * 4 * LINES as usize, "no other records");
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

/// With `aggregate = true`: a file's lines packed into KPL aggregated records, which AWS's
/// own deaggregator (aws-kinesis-agg, reading the stream with boto3) unpacks into every line
/// once and in order, each under its file's key.
fn aggregate_under_rotation(name: &str, directives: &str, reopen: bool) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const LINES: u64 = 4_000;
    let server = KinesisServer::start("logs");
    let scratch = Scratch::new(name);
    let (_collector, _) = write_under_rotation(&scratch, &server, "aggregate = true\n", directives, reopen, LINES);
    let consumed = server.wait_for_consumed(LINES as usize);
    assert_every_line_once_in_order(&consumed.records, "w", LINES);
    eprintln!("{} lines in {} Kinesis records, {} aggregated", LINES, consumed.kinesis_records, consumed.aggregated);
    assert!(
        consumed.kinesis_records * 5 <= LINES as usize && consumed.aggregated * 2 >= consumed.kinesis_records,
        "lines are packed: {} lines in {} Kinesis records ({} aggregated)",
        LINES,
        consumed.kinesis_records,
        consumed.aggregated
    );
    for (r, (_, key)) in consumed.records.iter().zip(&consumed.carried_by) {
        assert_eq!(key, &format!("{}-{}", r["dev"], r["ino"]), "each line under its file's key: {r}");
    }
}

#[test]
fn aggregated_records_unpack_to_every_line_once_through_create_rotation() {
    aggregate_under_rotation("kinesis-agg-create", "create\nrotate 100", true);
}

#[test]
fn aggregated_records_unpack_to_every_line_once_through_copytruncate_rotation() {
    aggregate_under_rotation("kinesis-agg-copytruncate", "copytruncate\nrotate 100", false);
}

/// The same against moto's Kinesis (a second implementation of the service): what the
/// collector aggregates there, AWS's deaggregator reads back, every line once and in order.
#[test]
fn aggregated_records_through_moto_unpack_to_every_line_once() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const LINES: u64 = 2_000;
    let moto = MotoServer::start();
    moto.python(
        "k = boto3.client('kinesis', **kw)\n\
         k.create_stream(StreamName='logs', ShardCount=2)\n\
         k.get_waiter('stream_exists').wait(StreamName='logs')\n",
    );
    let scratch = Scratch::new("kinesis-agg-moto");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let config = kinesis_config(&scratch, "app.log*", &moto.endpoint(), "logs") + "aggregate = true\n";
    let _collector = start_collector(&scratch, &config);
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = rotate_repeatedly(log.clone(), "create\nrotate 100".into(), Duration::from_millis(300), stop.clone());
    assert!(writer(&log, "w", LINES, 1_000, true).wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    rotator.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let consumed = loop {
        let consumed = consume(moto.port, "logs");
        if consumed.records.len() as u64 >= LINES || Instant::now() > deadline {
            std::thread::sleep(Duration::from_secs(1));
            break consume(moto.port, "logs");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_every_line_once_in_order(&consumed.records, "w", LINES);
    assert!(
        consumed.aggregated > 0 && consumed.kinesis_records * 5 <= LINES as usize,
        "{LINES} lines in {} Kinesis records ({} aggregated)",
        consumed.kinesis_records,
        consumed.aggregated
    );
}

/// What Kinesis and the network do to a shipper, injected by a proxy between the collector
/// and the server (tests/src/fault_proxy.rs): 500s, connection resets, partial failures,
/// throttling, a hang past the client's timeout, and responses dropped after the server
/// stored the records. Under create rotation: every line arrives; the only duplicates are
/// the records of dropped responses, which no client can tell from lost ones. (PutRecords
/// does not keep order across a partial failure's retry; the envelope's offsets do.)
#[test]
fn injected_faults_lose_nothing_and_duplicate_only_unanswered_records() {
    ship_through_faults("kinesis-faults", false);
}

/// The same faults with aggregated records: a refused aggregated record is sent again whole,
/// so the duplicates are whole Kinesis records whose answer was dropped.
#[test]
fn injected_faults_with_aggregated_records_lose_nothing_and_duplicate_only_unanswered_records() {
    ship_through_faults("kinesis-agg-faults", true);
}

fn ship_through_faults(name: &str, aggregate: bool) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const LINES: u64 = 3_000;
    let server = KinesisServer::start("logs");
    let proxy = FaultProxy::start(server.port, Duration::from_secs(11));
    let scratch = Scratch::new(name);
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let mut config = kinesis_config(&scratch, "app.log*", &proxy.endpoint(), "logs");
    if aggregate {
        config += "aggregate = true\n";
    }
    let collector = start_collector(&scratch, &config);
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = rotate_repeatedly(log.clone(), "create\nrotate 100".into(), Duration::from_millis(500), stop.clone());
    assert!(writer(&log, "w", LINES, 500, true).wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    rotator.join().unwrap();
    // The records, and per record the Kinesis record that carried it (aggregated only).
    let read = || match aggregate {
        true => {
            let consumed = server.consumed();
            (consumed.records, consumed.carried_by.into_iter().map(|(seq, _)| seq).collect::<Vec<_>>())
        }
        false => (server.records(), Vec::new()),
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let (records, carried_by) = loop {
        let (records, _) = read();
        let distinct: std::collections::HashSet<u64> =
            collector_tests::numbered(&records, "w").into_iter().map(|(n, _, _)| n).collect();
        if distinct.len() as u64 >= LINES || Instant::now() > deadline {
            // Retries still in flight would show as duplicates now: let them land.
            std::thread::sleep(Duration::from_secs(3));
            break read();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let stats = proxy.stats();
    eprintln!("proxy: {stats:?}");
    assert_every_line_at_least_once(&records, "w", LINES);
    for fault in [Fault::ServerError, Fault::Reset, Fault::Partial, Fault::Throttle, Fault::DropResponse, Fault::Hang] {
        assert!(stats.count(fault) >= 1, "{fault:?} was never injected: {stats:?}");
    }
    // Kinesis records sent twice: per record, with aggregation each Kinesis record that
    // carried a line already carried by an earlier one.
    let extra = if aggregate {
        let mut seen = std::collections::HashSet::new();
        let again: std::collections::HashSet<&String> = records
            .iter()
            .zip(&carried_by)
            .filter(|(r, _)| r["data"].as_str().is_some_and(|d| d.starts_with("w ")))
            .filter(|(r, _)| !seen.insert(r["data"].as_str().unwrap().to_owned()))
            .map(|(_, seq)| seq)
            .collect();
        again.len() as u64
    } else {
        collector_tests::numbered(&records, "w").len() as u64 - LINES
    };
    assert!(
        extra <= stats.dropped_response_records,
        "{extra} Kinesis records sent twice, but only {} were in responses the proxy dropped",
        stats.dropped_response_records
    );
    let log_lines = collector.log_lines(Duration::ZERO);
    for code in ["ProvisionedThroughputExceededException", "InternalFailure"] {
        assert!(log_lines.iter().any(|l| l.contains(code)), "the collector names {code} in its log");
    }
}
