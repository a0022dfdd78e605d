//! `cargo xtask bench kinesis`: the Kinesis sink's throughput and latency.
//!
//! Against a minimal PutRecords acceptor (collector_tests::acceptor: it answers every
//! record as accepted and keeps nothing), because kinesis-mock takes ~750 records/s and
//! moto ~10k/s: the figures are the collector's, not a test server's. Each line the bench
//! writes carries the wall-clock time of its write(2); the acceptor subtracts it from the
//! time it accepts the record, so latency is write() → PutRecords accepted.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use collector_tests::acceptor::Acceptor;

use crate::shell;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// write() → accepted, nanoseconds, of the lines that carry a timestamp (`t=<ns> `).
pub(crate) type Latencies = Arc<Mutex<Vec<u64>>>;

/// The shared acceptor (collector_tests::acceptor), taking each line's latency.
pub(crate) fn acceptor() -> anyhow::Result<(Acceptor, Latencies)> {
    let latencies = Latencies::default();
    let taken = latencies.clone();
    let acceptor = Acceptor::start(Box::new(move |data: &[u8]| {
        if let Some(t) = data.strip_prefix(b"t=")
            && let Some(end) = t.iter().position(|b| *b == b' ')
            && let Some(written) = std::str::from_utf8(&t[..end]).ok().and_then(|s| s.parse::<u64>().ok())
        {
            taken.lock().expect("latencies").push(now_ns().saturating_sub(written));
        }
    }))?;
    Ok((acceptor, latencies))
}

pub(crate) struct Collector {
    child: Child,
    /// The attach mode it reported when it started.
    pub(crate) mode: String,
    /// CPU-seconds it spent starting (loading the programs, the first scan).
    pub(crate) startup_cpu: f64,
    _stderr: std::thread::JoinHandle<()>,
}

impl Collector {
    /// `flow`: extra keys of the flow (`max_batch_age = ...`).
    pub(crate) fn start(collector: &Path, dir: &Path, flow: &str, sink: &str) -> anyhow::Result<Collector> {
        let state = dir.join("state");
        let _ = fs::remove_dir_all(&state);
        let config = dir.join("collector.toml");
        fs::write(
            &config,
            format!(
                "[collector]\nstate_dir = {state:?}\n[[flow]]\nname = \"bench\"\npaths = [{:?}]\n{flow}\n[flow.sink]\n{sink}",
                dir.join("logs/*.log")
            ),
        )?;
        let mut child = Command::new(collector)
            .args(["run", "--config"])
            .arg(&config)
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the collector")?;
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("ERROR") || line.contains("WARN") {
                    eprintln!("collector: {line}");
                }
                let _ = tx.send(line);
            }
        });
        let mode = loop {
            let line = rx.recv_timeout(Duration::from_secs(60)).context("the collector did not start")?;
            if line.contains("collector running") {
                break line
                    .split_once("mode=")
                    .map_or("?", |(_, m)| m.split_whitespace().next().unwrap_or("?"))
                    .to_owned();
            }
        };
        crate::bench::note_mode(&mode);
        let (startup_cpu, _) = crate::bench::process_usage(child.id())?;
        Ok(Collector { child, mode, startup_cpu, _stderr: reader })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub(crate) fn kinesis_sink(port: u16) -> String {
    format!(
        "kind = \"kinesis\"\nstream = \"bench\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{port}\"\n"
    )
}

const THROUGHPUT_LINES: u64 = 1_000_000;
const LATENCY_SECONDS: u64 = 5;

pub fn run(collector: &Path) -> anyhow::Result<String> {
    let dir = shell::work_dir().join("bench-kinesis");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("logs"))?;
    let (accepted, latencies) = acceptor()?;
    let port = accepted.port;

    // Throughput: an existing log read from its start, null sink (baseline) then kinesis.
    let log = dir.join("logs/app.log");
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(&log)?);
        for n in 0..THROUGHPUT_LINES {
            writeln!(w, "n={n} 10.0.0.1 - - \"GET /api/v1/items/{n} HTTP/1.1\" 200 {} \"-\" \"bench\"", n % 9973)?;
        }
    }
    let bytes = fs::metadata(&log)?.len();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let baseline = throughput_null(collector, &dir, bytes)?;
    let started_records = accepted.records();
    let running = Collector::start(collector, &dir, "", &kinesis_sink(port))?;
    let started = Instant::now();
    while accepted.records() - started_records < THROUGHPUT_LINES {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the acceptor got {} of {THROUGHPUT_LINES} records in 10 minutes", accepted.records());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    let (cpu, rss) = crate::bench::process_usage(running.pid())?;
    let cpu = cpu - running.startup_cpu;
    let rss_end = crate::bench::current_rss_kib(running.pid())?;
    drop(running);
    let calls = accepted.take_calls();
    let secs = elapsed.as_secs_f64();
    let mode = crate::bench::reported_modes();
    let mut s = format!(
        "\n## kinesis\n\n`cargo xtask bench kinesis`: the Kinesis sink against a minimal local PutRecords acceptor written for \
         the bench (it answers every record as accepted and keeps nothing; kinesis-mock takes ~750 records/s and moto ~10k/s, \
         too slow to measure the collector). {mode}, default settings (`partition_key = \"file\"`, no envelope). \
         Targets (issue 4): p99 <= 50 ms; RSS <= 32 MiB.\n\n\
         Throughput: a cached log of {THROUGHPUT_LINES} lines ({:.0} MB) read from its start until the acceptor holds every \
         record, beside the null sink on the same file (until its checkpoint acknowledges the last byte); CPU after \
         start-up.\n\n\
         | sink | time | lines/s | MB/s | CPU s per GiB | peak RSS | RSS at the end | PutRecords calls | rate vs null sink |\n|---|---|---|---|---|---|---|---|---|\n\
         | null (baseline) | {:.2} s | {:.0} | {:.0} | {:.2} | {:.1} MiB | - | - | 1.000x |\n\
         | kinesis | {secs:.2} s | {:.0} | {:.0} | {:.2} | {:.1} MiB | {:.1} MiB | {calls} | {:.3}x |\n\n\
         Peak RSS includes start-up (parsing the kernel's BTF); RSS counts the 8 MiB kernel ring buffer twice (it is \
         mapped twice so records never wrap).\n",
        bytes as f64 / 1e6,
        baseline.0.as_secs_f64(),
        THROUGHPUT_LINES as f64 / baseline.0.as_secs_f64(),
        bytes as f64 / 1e6 / baseline.0.as_secs_f64(),
        baseline.1 / gib,
        baseline.2 as f64 / 1024.0,
        THROUGHPUT_LINES as f64 / secs,
        bytes as f64 / 1e6 / secs,
        cpu / gib,
        rss as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        baseline.0.as_secs_f64() / secs,
    );

    // Latency: lines written at a steady rate to a watched file, each carrying its write time,
    // with the default max_batch_age and with none (each read sent at once) as the baseline.
    s.push_str(&format!(
        "\nLatency, write(2) → PutRecords accepted: one writer at a steady rate for {LATENCY_SECONDS} s, one write(2) per \
         line of ~100 bytes; the default `max_batch_age` (20 ms) beside `max_batch_age = \"0s\"` (every read sent at once).\n\n\
         | rate | max_batch_age | lines | p50 | p99 | max | PutRecords calls | collector CPU | RSS at the end |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    ));
    fs::remove_file(&log)?;
    for rate in [100u64, 1_000, 10_000, 100_000] {
        for (age, flow) in [("20ms (default)", ""), ("0s", "max_batch_age = \"0s\"")] {
            accepted.take_calls();
            let run = latency_run(collector, &dir, &latencies, rate, flow, &kinesis_sink(port))?;
            let [p50, p99, max] = run.quantiles;
            s.push_str(&format!(
                "| {rate}/s | {age} | {} | {p50:.1?} | {p99:.1?} | {max:.1?} | {} | {:.2} s | {:.1} MiB |\n",
                run.lines,
                accepted.take_calls(),
                run.cpu,
                run.rss_kib as f64 / 1024.0
            ));
        }
    }
    s.push_str(
        "\nIn the latency tables the collector's CPU includes its start-up (loading the programs, ~0.4 s). At 100,000 \
         lines/s the writer, the collector and the acceptor share the machine's 2 cores.\n",
    );
    s.push_str(&aggregation(collector, &dir, &accepted, &latencies)?);
    s.push_str(&file_sink_latency(collector, &dir)?);
    s.push_str(&stalled(collector, &dir, &accepted, &latencies)?);
    Ok(s)
}

pub fn aggregation_alone(collector: &Path) -> anyhow::Result<String> {
    let dir = shell::work_dir().join("bench-kinesis");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("logs"))?;
    let (accepted, latencies) = acceptor()?;
    aggregation(collector, &dir, &accepted, &latencies)
}

/// Line sizes (bytes, newline included) and how many of each the throughput runs read.
const AGGREGATION_LINES: [(usize, u64); 2] = [(100, 3_000_000), (1_000, 300_000)];
/// What a shard takes: 1 MiB/s and 1,000 records/s.
const SHARD_BYTES: f64 = 1_048_576.0;
const SHARD_RECORDS: f64 = 1_000.0;

/// One record per line (what the Kinesis Agent sends) beside KPL aggregated records, each
/// beside the null sink on the same file: rate, CPU, and what Kinesis bills.
fn aggregation(collector: &Path, dir: &Path, accepted: &Acceptor, latencies: &Latencies) -> anyhow::Result<String> {
    let port = accepted.port;
    let mut s = String::from(
        "\nAggregation (`aggregate = true`, default `aggregate_max_bytes`, 100,000) beside one Kinesis record per \
         line: a cached log read from its start until the acceptor holds every line (it unpacks the aggregated \
         records), beside the null sink on the same file; CPU after start-up. The null sink reads these files in about \
         0.1 s, and its time is until a checkpoint (every 200 ms) acknowledges the last byte: its rate is a lower bound. \
         Payload units: each Kinesis record's data and key in 25 KB \
         steps. Shards for 10 MB/s of such lines: what the record count needs (1,000 records/s a shard) and what the \
         bytes need (1 MiB/s). Targets (issue 18): aggregated <= 2 CPU s/GiB and >= 0.5x the null sink's rate, >= 100 \
         lines per record for 100-byte lines; one per line <= 8 CPU s/GiB.\n\n\
         | line | sink | lines/s | CPU s per GiB | rate vs null sink | Kinesis records per GiB | lines per record | \
         payload units per GiB | shards for 10 MB/s: by records / by bytes |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    // Only this table's log under the pattern (the latency runs leave theirs).
    fs::remove_dir_all(dir.join("logs"))?;
    fs::create_dir_all(dir.join("logs"))?;
    let log = dir.join("logs/app.log");
    for (size, lines) in AGGREGATION_LINES {
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(&log)?);
            for n in 0..lines {
                let head = format!("n={n} ");
                writeln!(w, "{head}{}", "x".repeat(size - 1 - head.len()))?;
            }
        }
        let bytes = fs::metadata(&log)?.len();
        let gib = bytes as f64 / (1u64 << 30) as f64;
        let null = throughput_null(collector, dir, bytes)?;
        let null_rate = lines as f64 / null.0.as_secs_f64();
        s.push_str(&format!("| {size} B | null | {null_rate:.0} | {:.2} | 1.000x | - | - | - | - |\n", null.1 / gib));
        for (name, extra) in [("one record per line", ""), ("aggregated", "aggregate = true\n")] {
            let (records, kinesis_records, units) =
                (accepted.records(), accepted.kinesis_records(), accepted.payload_units());
            let running = Collector::start(collector, dir, "", &(kinesis_sink(port) + extra))?;
            let started = Instant::now();
            while accepted.records() - records < lines {
                if started.elapsed() > Duration::from_secs(600) {
                    bail!("{name}: the acceptor got {} of {lines} lines in 10 minutes", accepted.records() - records);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let secs = started.elapsed().as_secs_f64();
            let cpu = crate::bench::process_usage(running.pid())?.0 - running.startup_cpu;
            drop(running);
            let sent = (accepted.kinesis_records() - kinesis_records) as f64;
            let units = (accepted.payload_units() - units) as f64;
            let by_records = (sent / bytes as f64 * 10e6 / SHARD_RECORDS).ceil();
            let by_bytes = (10e6 / SHARD_BYTES).ceil();
            s.push_str(&format!(
                "| {size} B | {name} | {:.0} | {:.2} | {:.3}x | {:.0} | {:.1} | {:.0} | {by_records} / {by_bytes} |\n",
                lines as f64 / secs,
                cpu / gib,
                lines as f64 / secs / null_rate,
                sent / gib,
                lines as f64 / sent,
                units / gib,
            ));
        }
    }
    fs::remove_file(&log)?;
    s.push_str(&format!(
        "\nLatency with aggregation, write(2) → accepted, default settings: one writer for {LATENCY_SECONDS} s as above.\n\n\
         | rate | lines | p50 | p99 | max | PutRecords calls | Kinesis records | collector CPU |\n|---|---|---|---|---|---|---|---|\n"
    ));
    for rate in [1_000u64, 10_000] {
        accepted.take_calls();
        let kinesis_records = accepted.kinesis_records();
        let run = latency_run(collector, dir, latencies, rate, "", &(kinesis_sink(port) + "aggregate = true\n"))?;
        let [p50, p99, max] = run.quantiles;
        s.push_str(&format!(
            "| {rate}/s | {} | {p50:.1?} | {p99:.1?} | {max:.1?} | {} | {} | {:.2} s |\n",
            run.lines,
            accepted.take_calls(),
            accepted.kinesis_records() - kinesis_records,
            run.cpu
        ));
    }
    Ok(s)
}

/// One latency run: a collector with `flow` and `sink`, and a writer on a new log at `rate`
/// for LATENCY_SECONDS.
struct LatencyRun {
    lines: u64,
    /// p50, p99, max.
    quantiles: [Duration; 3],
    /// The collector's CPU-seconds, start-up included, and its RSS at the end.
    cpu: f64,
    rss_kib: u64,
}

fn latency_run(
    collector: &Path,
    dir: &Path,
    latencies: &Latencies,
    rate: u64,
    flow: &str,
    sink: &str,
) -> anyhow::Result<LatencyRun> {
    let live = dir.join("logs/live.log");
    let _ = fs::remove_file(&live);
    fs::File::create(&live)?;
    latencies.lock().expect("latencies").clear();
    let running = Collector::start(collector, dir, flow, sink)?;
    let lines = write_at_rate(&live, rate, Duration::from_secs(LATENCY_SECONDS))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (latencies.lock().expect("latencies").len() as u64) < lines && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (cpu, _) = crate::bench::process_usage(running.pid())?;
    let rss_kib = crate::bench::current_rss_kib(running.pid())?;
    drop(running);
    let mut l = std::mem::take(&mut *latencies.lock().expect("latencies"));
    if (l.len() as u64) < lines {
        bail!("{} of {lines} lines reached the acceptor at {rate} lines/s ({sink:?})", l.len());
    }
    Ok(LatencyRun { lines, quantiles: quantiles(&mut l, [0.5, 0.99, 1.0]), cpu, rss_kib })
}

/// write(2) → the record written by the file sink: a reader follows the sink's
/// file and stamps each line when it appears (so the figure includes up to ~0.2 ms of
/// polling).
fn file_sink_latency(collector: &Path, dir: &Path) -> anyhow::Result<String> {
    let mut s = format!(
        "\nLatency, write(2) → the file sink's line written (raw format; the sink fsyncs before each \
         checkpoint, not per line): the same writer for {LATENCY_SECONDS} s, default `max_batch_age`; a reader \
         follows the sink's file.\n\n\
         | rate | lines | p50 | p99 | max | collector CPU |\n|---|---|---|---|---|---|\n"
    );
    for rate in [100u64, 10_000, 100_000] {
        let live = dir.join("logs/live.log");
        let _ = fs::remove_file(&live);
        fs::File::create(&live)?;
        let out = dir.join("latency.out");
        fs::write(&out, b"")?;
        let running =
            Collector::start(collector, dir, "", &format!("kind = \"file\"\nformat = \"raw\"\npath = {out:?}\n"))?;
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (out, done) = (out.clone(), done.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
                let mut file = fs::File::open(&out)?;
                let (mut pending, mut latencies, mut buf) = (Vec::new(), Vec::new(), vec![0u8; 1 << 20]);
                while !done.load(Ordering::Relaxed) {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    let now = now_ns();
                    pending.extend_from_slice(&buf[..n]);
                    let complete = pending.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                    for line in pending[..complete].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        let written = line.strip_prefix(b"t=").and_then(|t| {
                            std::str::from_utf8(&t[..t.iter().position(|b| *b == b' ')?]).ok()?.parse::<u64>().ok()
                        });
                        if let Some(written) = written {
                            latencies.push(now.saturating_sub(written));
                        }
                    }
                    pending.drain(..complete);
                }
                Ok(latencies)
            })
        };
        let lines = write_at_rate(&live, rate, Duration::from_secs(LATENCY_SECONDS))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut counted = crate::bench::LineCount::default();
        while counted.of(&out)? < lines && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        done.store(true, Ordering::Relaxed);
        let (cpu, _) = crate::bench::process_usage(running.pid())?;
        drop(running);
        let mut l = reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))??;
        if (l.len() as u64) < lines {
            bail!("{} of {lines} lines reached the file sink at {rate} lines/s", l.len());
        }
        let [p50, p99, max] = quantiles(&mut l, [0.5, 0.99, 1.0]);
        s.push_str(&format!("| {rate}/s | {lines} | {p50:.1?} | {p99:.1?} | {max:.1?} | {cpu:.2} s |\n"));
    }
    Ok(s)
}

/// Quantiles of latencies in nanoseconds (sorted here; not empty).
pub(crate) fn quantiles<const N: usize>(latencies: &mut [u64], q: [f64; N]) -> [Duration; N] {
    latencies.sort_unstable();
    q.map(|q| Duration::from_nanos(latencies[((latencies.len() - 1) as f64 * q) as usize]))
}

const STALL_RATE: u64 = 10_000;
const STALL: Duration = Duration::from_secs(60);

/// Memory while the endpoint hangs for a minute and a writer goes on at 10,000 lines/s:
/// the bytes wait on disk, not in memory; then the time to catch up once it answers.
fn stalled(collector: &Path, dir: &Path, accepted: &Acceptor, latencies: &Latencies) -> anyhow::Result<String> {
    let port = accepted.port;
    let live = dir.join("logs/live.log");
    let _ = fs::remove_file(&live);
    fs::File::create(&live)?;
    latencies.lock().expect("latencies").clear();
    let running = Collector::start(collector, dir, "", &kinesis_sink(port))?;
    let seconds = STALL.as_secs() + 10;
    let writer = {
        let live = live.clone();
        std::thread::spawn(move || write_at_rate(&live, STALL_RATE, Duration::from_secs(seconds)))
    };
    std::thread::sleep(Duration::from_secs(5));
    let before = crate::bench::current_rss_kib(running.pid())?;
    accepted.set_stalled(true);
    let mut peak = before;
    let stalled_at = Instant::now();
    while stalled_at.elapsed() < STALL {
        std::thread::sleep(Duration::from_secs(1));
        peak = peak.max(crate::bench::current_rss_kib(running.pid())?);
    }
    accepted.set_stalled(false);
    let resumed = Instant::now();
    let lines = writer.join().map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    let deadline = Instant::now() + Duration::from_secs(300);
    while (latencies.lock().expect("latencies").len() as u64) < lines {
        if Instant::now() > deadline {
            bail!("{} of {lines} lines accepted 5 minutes after the stall", latencies.lock().expect("l").len());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let caught_up = resumed.elapsed();
    let after = crate::bench::current_rss_kib(running.pid())?;
    drop(running);
    let got = latencies.lock().expect("latencies").len() as u64;
    Ok(format!(
        "\nStalled endpoint: a writer at {STALL_RATE} lines/s for {seconds} s; after 5 s the endpoint reads requests and \
         never answers for {} s (the collector's calls time out after 10 s and are retried), then answers again.\n\n\
         | lines | RSS before the stall | peak RSS during it | RSS after catching up | catching up after the stall | records accepted |\n\
         |---|---|---|---|---|---|\n\
         | {lines} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} s | {got} ({} more than written) |\n",
        STALL.as_secs(),
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        after as f64 / 1024.0,
        caught_up.as_secs_f64(),
        got.saturating_sub(lines),
    ))
}

/// The null sink reading the same log: (time, CPU seconds after start-up, peak RSS KiB).
fn throughput_null(collector: &Path, dir: &Path, bytes: u64) -> anyhow::Result<(Duration, f64, u64)> {
    let running = Collector::start(collector, dir, "", "kind = \"null\"\n")?;
    let started = Instant::now();
    crate::bench::wait_acknowledged(&dir.join("state"), bytes)?;
    let elapsed = started.elapsed();
    let (cpu, rss) = crate::bench::process_usage(running.pid())?;
    Ok((elapsed, cpu - running.startup_cpu, rss))
}

/// Appends timestamped lines, one write(2) each, at `rate` per second for `duration`;
/// returns how many.
pub(crate) fn write_at_rate(path: &Path, rate: u64, duration: Duration) -> anyhow::Result<u64> {
    let mut file = fs::OpenOptions::new().append(true).open(path)?;
    let started = Instant::now();
    let total = rate * duration.as_secs();
    for n in 0..total {
        // On schedule: line n is due at n / rate seconds.
        let due = Duration::from_nanos(n * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let line =
            format!("t={} n={n} 10.0.0.1 - - \"GET /api/v1/items/{n} HTTP/1.1\" 200 512 \"-\" \"bench\"\n", now_ns());
        file.write_all(line.as_bytes())?;
    }
    Ok(total)
}
