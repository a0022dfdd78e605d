//! `cargo xtask bench`: figures, each beside a baseline measured in the same run (absolute
//! times drift on shared machines; ratios hold). Rewrites BENCHMARKS.md.

use std::{
    ffi::CString,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{build, setup, shell};

const BENCHES: &[&str] = &["writer-overhead", "ingest", "kinesis", "rotation", "scale"];

pub fn run(name: Option<&str>) -> anyhow::Result<()> {
    if let Some(name) = name
        && !BENCHES.contains(&name)
    {
        bail!("unknown benchmark {name}; known: {}", BENCHES.join(", "));
    }
    // The guest kernel is for writer-overhead's fentry and kprobe rows.
    setup::run(true)?;
    // The peer the ingest benchmark runs beside; perf enables the syscall tracepoints alone
    // for writer-overhead's floor.
    setup::apt_install(&["rsyslog", "linux-perf"])?;
    // XTASK_BENCH_COLLECTOR: measure that binary (an earlier build, to compare) instead.
    let collector = match std::env::var_os("XTASK_BENCH_COLLECTOR") {
        Some(path) => PathBuf::from(path),
        None => build::collector()?,
    };
    // XTASK_BENCH_ACTIVE=<files>/<delay ms>: that row of the scale bench's many-active-files
    // table alone, printed, BENCHMARKS.md left as it is (a quick look while tuning).
    if let Ok(row) = std::env::var("XTASK_BENCH_ACTIVE") {
        let parse = || -> Option<(usize, u64)> {
            let (files, delay) = row.split_once('/')?;
            Some((files.parse().ok()?, delay.parse().ok()?))
        };
        let (files, delay) = parse().with_context(|| format!("XTASK_BENCH_ACTIVE={row:?}: want <files>/<delay ms>"))?;
        println!("{}", crate::bench_ops::active_table(&collector, Some((files, Duration::from_millis(delay))))?);
        return Ok(());
    }
    // XTASK_BENCH_AGGREGATION=1: the kinesis bench's aggregation tables alone, printed.
    if std::env::var_os("XTASK_BENCH_AGGREGATION").is_some() {
        println!("{}", crate::bench_kinesis::aggregation_alone(&collector)?);
        return Ok(());
    }
    let when = format!(
        "{} on {}, {} CPUs",
        shell::output(Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC"))?.trim(),
        shell::output(Command::new("uname").arg("-sr"))?.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let header = "# Benchmarks\n\nWritten by `cargo xtask bench`. Each section names its command and when it was run \
                  (a section not run again keeps its date); ratios compare with a baseline measured in the same run.\n";
    // Sections of benchmarks not run this time stay as they were.
    let path = shell::root().join("BENCHMARKS.md");
    let old = fs::read_to_string(&path).unwrap_or_default();
    // Files written before sections carried their own date said it once, in the header.
    let old_when = old.split_once("(last run ").and_then(|(_, rest)| rest.split_once(").")).map(|(w, _)| w.to_owned());
    let mut sections: Vec<(String, String)> = old
        .split("\n## ")
        .skip(1)
        .filter_map(|s| {
            let section = format!("\n## {}", s.trim_end());
            let section = match &old_when {
                // A section written by hand says its own date in its title.
                Some(w) if !section.contains(RUN_STAMP) && !section.contains("by hand") => stamped(&section, w),
                _ => section,
            };
            Some((s.lines().next()?.trim().to_owned(), section))
        })
        .collect();
    for bench in BENCHES.iter().filter(|b| name.is_none_or(|n| n == **b)) {
        reported_modes();
        let section = match *bench {
            "writer-overhead" => writer_overhead(&collector)?,
            "ingest" => ingest(&collector)?,
            "kinesis" => crate::bench_kinesis::run(&collector)?,
            "rotation" => crate::bench_ops::rotation(&collector)?,
            "scale" => crate::bench_ops::scale(&collector)?,
            _ => unreachable!(),
        };
        let section = stamped(&section, &when);
        println!("{section}");
        match sections.iter_mut().find(|(title, _)| title == bench) {
            Some(s) => s.1 = section.trim_end().to_owned(),
            None => sections.push((bench.to_string(), section.trim_end().to_owned())),
        }
    }
    let mut report = header.to_owned();
    for (_, s) in sections {
        report.push_str(&s);
        report.push('\n');
    }
    fs::write(&path, &report)?;
    Ok(())
}

const RUN_STAMP: &str = "\n\n_Run ";

/// `section` with the line that says when it was run under its title.
fn stamped(section: &str, when: &str) -> String {
    let section = section.trim_start_matches('\n');
    let (title, rest) = section.split_once('\n').unwrap_or((section, ""));
    format!("\n{title}{RUN_STAMP}{when}._\n\n{}", rest.trim_start_matches('\n'))
}

/// The attach modes the collectors started by a benchmark reported, since the last call.
static MODES: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

pub(crate) fn note_mode(mode: &str) {
    MODES.lock().expect("modes").insert(mode.to_owned());
}

/// "tracepoint mode" (or "fentry and tracepoint mode"), as the collectors reported it; clears.
pub(crate) fn reported_modes() -> String {
    let modes = std::mem::take(&mut *MODES.lock().expect("modes"));
    let names: Vec<String> = modes.into_iter().collect();
    format!(
        "{} mode (as the collector reported it)",
        if names.is_empty() { "?".to_owned() } else { names.join(" and ") }
    )
}

/// Lines in the ingest data set (~100 bytes each, numbered, like an access log).
const INGEST_LINES: usize = 10_000_000;

/// Reading an existing, cached log from its start to the last byte acknowledged, with the
/// null sink and with the file sink (json and raw), beside `wc -l` on the same cached file: the
/// page-cache + line-split limit.
fn ingest(collector: &Path) -> anyhow::Result<String> {
    let dir = shell::work_dir().join("bench-ingest");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("logs"))?;
    let log = dir.join("logs/access.log");
    {
        use std::io::Write as _;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(&log)?);
        for n in 0..INGEST_LINES {
            writeln!(
                w,
                "10.0.{}.{} - - [27/Nov/2026:20:00:00 +0000] \"GET /api/v1/items/{n} HTTP/1.1\" 200 {} \"-\" \"bench\"",
                n % 251,
                n % 253,
                n % 9973
            )?;
        }
    }
    let bytes = fs::metadata(&log)?.len();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    // Cache it, then the baseline.
    shell::output(Command::new("cat").arg(&log).stdout(Stdio::null()))?;
    let mut wc_runs = Vec::new();
    for _ in 0..3 {
        let cpu_before = children_cpu_seconds();
        let started = Instant::now();
        let out = shell::output(Command::new("wc").arg("-l").arg(&log))?;
        wc_runs.push((started.elapsed(), children_cpu_seconds() - cpu_before));
        let counted: usize = out.split_whitespace().next().unwrap_or("0").parse()?;
        if counted != INGEST_LINES {
            bail!("wc -l counted {counted} lines, expected {INGEST_LINES}");
        }
    }
    wc_runs.sort_by_key(|run| run.0);
    let (wc, wc_cpu) = wc_runs[1];
    let baseline = Baseline { elapsed: wc, cpu_seconds: wc_cpu };
    let mut rows = vec![figures_row("`wc -l` (baseline)", INGEST_LINES, bytes, wc, Some((wc_cpu, None)), &baseline)];
    let rsyslog = ingest_rsyslog(&dir, &log, bytes)?;
    rows.push(figures_row(
        "rsyslog imfile → omfile (peer)",
        INGEST_LINES,
        bytes,
        rsyslog.elapsed,
        Some((rsyslog.cpu_seconds, Some(rsyslog.peak_rss_kib))),
        &baseline,
    ));
    // The raw file sink writes what rsyslog's template writes (each line and a newline); the
    // json one writes twice the bytes (the envelope).
    let mut file_sinks = Vec::new();
    let mut startup_cpu = Vec::new();
    for (sink, what) in [
        ("null", "null sink"),
        ("file", "file sink (json)"),
        ("raw", "file sink (raw, as rsyslog)"),
        // The regex engine on every line: its cost is these rows against the null sink's.
        ("log_to_json", "null sink, each line parsed by `log_to_json` (format `combined`)"),
        ("multiline", "null sink, each line matched against `multiline_start`"),
    ] {
        let run = ingest_once(collector, &dir, &log, sink)?;
        if matches!(sink, "file" | "raw") {
            file_sinks.push((what, run.elapsed, run.cpu_seconds, run.out_bytes));
        }
        startup_cpu.push(run.startup_cpu_seconds);
        rows.push(figures_row(
            &format!("collector, {what}"),
            INGEST_LINES,
            bytes,
            run.elapsed,
            Some((run.cpu_seconds - run.startup_cpu_seconds, Some(run.peak_rss_kib))),
            &baseline,
        ));
    }
    let mut s = format!(
        "\n## ingest\n\n`cargo xtask bench ingest`: one cached {:.2} GiB log of {INGEST_LINES} lines (~{} bytes each) read from its \
         start until the checkpoint acknowledges its last byte (checkpoints of a busy file are written every 200 ms, so times \
         are up to 0.2 s long), and rsyslog's imfile → omfile (Debian's rsyslog, inotify mode, one line per output line) on \
         the same file until its output holds every line. The json file sink wraps each line in its envelope (about twice the \
         bytes out); the raw one writes each line and a newline, as rsyslog's template does. {}. Targets (issue 6): null sink \
         >= 50% of the `wc -l` rate per core; file sink >= 10x rsyslog's rate at <= 1/10 its CPU-seconds per GiB. A collector row's CPU is what it \
         spent reading, after start-up (loading the programs, parsing the kernel's BTF: {:.2}-{:.2} CPU-seconds here); \
         rsyslog's includes its start-up. The rate per core is bytes per CPU-second, against `wc -l`'s.\n\n\
         | reader | time | lines/s | MB/s | CPU s per GiB | peak RSS | rate vs `wc -l` | rate per core vs `wc -l` |\n\
         |---|---|---|---|---|---|---|---|\n",
        gib,
        bytes / INGEST_LINES as u64,
        reported_modes(),
        startup_cpu.iter().copied().fold(f64::INFINITY, f64::min),
        startup_cpu.iter().copied().fold(0.0, f64::max),
    );
    for r in rows {
        s.push_str(&r);
    }
    s.push('\n');
    for (what, elapsed, cpu, out_bytes) in file_sinks {
        // The disk's limit for this file sink: as many bytes as it wrote, written and
        // fdatasync'ed by dd.
        let disk = disk_write_rate(&dir, out_bytes)?;
        s.push_str(&format!(
            "- {what} vs rsyslog: {:.1}x its rate, {:.2}x its CPU-seconds per GiB (target: >= 10x the rate at <= 0.1x the CPU). \
             It wrote {:.0} MB at {:.0} MB/s, {:.2}x the disk's rate (`dd ... conv=fdatasync` of as many bytes: {:.0} MB/s).\n",
            rsyslog.elapsed.as_secs_f64() / elapsed.as_secs_f64(),
            cpu / rsyslog.cpu_seconds,
            out_bytes as f64 / 1e6,
            out_bytes as f64 / 1e6 / elapsed.as_secs_f64(),
            out_bytes as f64 / 1e6 / elapsed.as_secs_f64() / disk,
            disk,
        ));
    }
    Ok(s)
}

/// rsyslog (Debian's) reading the same cached log with imfile from its start and writing each
/// line to a file with omfile: the peer a log shipper is usually compared with. Timed from
/// rsyslogd's start until the output holds every line.
fn ingest_rsyslog(dir: &Path, log: &Path, bytes: u64) -> anyhow::Result<IngestRun> {
    let work = dir.join("rsyslog");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let out = work.join("out.log");
    let conf = work.join("rsyslog.conf");
    fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{work}\")\n\
             module(load=\"imfile\" mode=\"inotify\")\n\
             template(name=\"line\" type=\"string\" string=\"%msg%\\n\")\n\
             input(type=\"imfile\" file=\"{log}\" tag=\"bench\" freshStartTail=\"off\")\n\
             action(type=\"omfile\" file=\"{out}\" template=\"line\")\n",
            work = work.display(),
            log = log.display(),
            out = out.display()
        ),
    )?;
    let started = Instant::now();
    let mut child = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(work.join("rsyslogd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting rsyslogd (apt package rsyslog)")?;
    // imfile drops the newline and %msg%\n puts it back: done when the sizes match.
    let elapsed = loop {
        if fs::metadata(&out).is_ok_and(|m| m.len() >= bytes) {
            break started.elapsed();
        }
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            use std::io::Read as _;
            child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            bail!("rsyslogd exited ({status}): {err}");
        }
        if started.elapsed() > Duration::from_secs(900) {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            bail!("rsyslog did not copy {} in 15 minutes", log.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (cpu_seconds, peak_rss_kib) = process_usage(child.id())?;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    let copied = BufReader::new(fs::File::open(&out)?).lines().count();
    if copied != INGEST_LINES {
        bail!("rsyslog wrote {copied} lines, expected {INGEST_LINES}");
    }
    let _ = fs::remove_dir_all(&work);
    Ok(IngestRun { elapsed, cpu_seconds, startup_cpu_seconds: 0.0, peak_rss_kib, out_bytes: bytes })
}

/// MB/s of `dd` writing `bytes` (rounded up to MiB) into `dir` with one fdatasync at the end.
fn disk_write_rate(dir: &Path, bytes: u64) -> anyhow::Result<f64> {
    let target = dir.join("dd.out");
    let mib = bytes.div_ceil(1 << 20);
    let started = Instant::now();
    shell::output(Command::new("dd").arg("if=/dev/zero").arg(format!("of={}", target.display())).args([
        "bs=1M",
        &format!("count={mib}"),
        "conv=fdatasync",
    ]))?;
    let secs = started.elapsed().as_secs_f64();
    fs::remove_file(&target)?;
    Ok((mib << 20) as f64 / 1e6 / secs)
}

/// What a reader's rates are set against: `wc -l`'s time and CPU-seconds on the same data.
struct Baseline {
    elapsed: Duration,
    cpu_seconds: f64,
}

/// One table row; `usage` is the CPU-seconds spent on the data and the peak RSS.
fn figures_row(
    what: &str,
    lines: usize,
    bytes: u64,
    elapsed: Duration,
    usage: Option<(f64, Option<u64>)>,
    baseline: &Baseline,
) -> String {
    let secs = elapsed.as_secs_f64();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let cpu = usage.map(|u| u.0);
    format!(
        "| {what} | {secs:.2} s | {:.0} | {:.0} | {} | {} | {:.3}x | {} |\n",
        lines as f64 / secs,
        bytes as f64 / 1e6 / secs,
        cpu.map_or("-".into(), |c| format!("{:.2}", c / gib)),
        usage.and_then(|u| u.1).map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        baseline.elapsed.as_secs_f64() / secs,
        cpu.map_or("-".into(), |c| format!("{:.3}x", baseline.cpu_seconds / c)),
    )
}

/// User + system CPU-seconds of the children waited for so far.
fn children_cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

struct IngestRun {
    elapsed: Duration,
    cpu_seconds: f64,
    /// CPU-seconds spent before reading began (rsyslog: not measured, 0).
    startup_cpu_seconds: f64,
    peak_rss_kib: u64,
    /// What a file sink (or rsyslog) wrote.
    out_bytes: u64,
}

fn ingest_once(collector: &Path, dir: &Path, log: &Path, sink: &str) -> anyhow::Result<IngestRun> {
    let state = dir.join(format!("state-{sink}"));
    let out = dir.join("out.jsonl");
    let _ = fs::remove_dir_all(&state);
    let _ = fs::remove_file(&out);
    let sink_toml = match sink {
        "file" => format!("kind = \"file\"\npath = {:?}\n", out),
        "raw" => format!("kind = \"file\"\nformat = \"raw\"\npath = {:?}\n", out),
        _ => "kind = \"null\"\n".to_owned(),
    };
    // Each line of the bench's log starts with an address: every line starts a record.
    let flow_toml = match sink {
        "log_to_json" => "[[flow.transform]]\nkind = \"log_to_json\"\nformat = \"combined\"\n",
        "multiline" => "multiline_start = '^\\d+\\.\\d+\\.'\n",
        _ => "",
    };
    let config = dir.join(format!("{sink}.toml"));
    fs::write(
        &config,
        format!(
            "[collector]\nstate_dir = {:?}\n[[flow]]\nname = \"bench\"\npaths = [{:?}]\n{flow_toml}[flow.sink]\n{sink_toml}",
            state,
            dir.join("logs/*.log")
        ),
    )?;
    let size = fs::metadata(log)?.len();
    let mut child = Command::new(collector)
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the collector")?;
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Timing starts once the programs are attached and the scan is done.
    loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).context("the collector did not start")?;
        if line.contains("collector running") {
            note_mode(line.split_once("mode=").map_or("?", |(_, m)| m.split_whitespace().next().unwrap_or("?")));
            break;
        }
    }
    let (startup_cpu_seconds, _) = process_usage(child.id())?;
    let started = Instant::now();
    if let Err(e) = wait_acknowledged(&state, size) {
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        return Err(e.context(format!("reading {}", log.display())));
    }
    let elapsed = started.elapsed();
    let (cpu_seconds, peak_rss_kib) = process_usage(child.id())?;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    let mut out_bytes = 0;
    if matches!(sink, "file" | "raw") {
        out_bytes = fs::metadata(&out)?.len();
        let shipped = BufReader::new(fs::File::open(&out)?).lines().count();
        if shipped != INGEST_LINES {
            bail!("the file sink holds {shipped} records, expected {INGEST_LINES}");
        }
        let _ = fs::remove_file(&out);
    }
    Ok(IngestRun { elapsed, cpu_seconds, startup_cpu_seconds, peak_rss_kib, out_bytes })
}

/// Until a checkpoint in `state` acknowledges `size` bytes (ten minutes at most).
pub(crate) fn wait_acknowledged(state: &Path, size: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let store = state.join("checkpoints/store.jsonl");
    loop {
        // One line per checkpoint saved (the store's log): any that acknowledges `size`.
        let done = fs::read_to_string(&store).is_ok_and(|text| {
            text.lines().any(|line| {
                serde_json::from_str::<serde_json::Value>(line).is_ok_and(|c| c["acknowledged"].as_u64() == Some(size))
            })
        });
        if done {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the collector did not acknowledge {size} bytes in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Lines in a growing file, reading only what was appended since the last call (polling a
/// sink's output must not take the CPU the collector is measured on).
#[derive(Default)]
pub(crate) struct LineCount {
    file: Option<fs::File>,
    lines: u64,
}

impl LineCount {
    pub(crate) fn of(&mut self, path: &Path) -> anyhow::Result<u64> {
        use std::io::Read as _;
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(fs::File::open(path)?),
        };
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(self.lines);
            }
            self.lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
}

/// RSS of a running process now, KiB.
pub(crate) fn current_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

/// CPU seconds (user + system) and peak RSS of a running process, from /proc.
pub(crate) fn process_usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("/proc stat")?.1.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (fields[11].parse::<f64>()? + fields[12].parse::<f64>()?) / ticks;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok((cpu, hwm))
}

const WRITES: usize = 2_000_000;
const RUNS: usize = 5;

/// A 64-byte write() loop to a watched and to an unwatched file, with the collector
/// attached (`collector run` shipping the watched file to the null sink) and detached.
fn writer_overhead(collector: &Path) -> anyhow::Result<String> {
    // XTASK_BENCH_NO_HOST=1: the guest rows only.
    if std::env::var_os("XTASK_BENCH_NO_HOST").is_some() {
        return Ok(format!("\n## writer-overhead\n\n{}", guest_writer_overhead()?));
    }
    let dir = shell::work_dir().join("bench");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("logs"))?;
    fs::create_dir_all(dir.join("unwatched"))?;
    let watched = dir.join("logs/app.log");
    let unwatched = dir.join("unwatched/other.log");

    let before = (loops(&watched)?, loops(&unwatched)?);
    let floor = tracepoints_alone(&unwatched)?;
    let running = crate::bench_kinesis::Collector::start(collector, &dir, "", "kind = \"null\"\n")?;
    let mode = running.mode.clone();
    let (cpu_before, _) = process_usage(running.pid())?;
    let watched_on = median_loop(&watched)?;
    let (cpu_watched, _) = process_usage(running.pid())?;
    let unwatched_on = median_loop(&unwatched)?;
    let (cpu_unwatched, _) = process_usage(running.pid())?;
    let in_programs =
        (program_time_per_write(running.pid(), &watched)?, program_time_per_write(running.pid(), &unwatched)?);
    drop(running);
    let empty = empty_programs(collector, &mode, &unwatched)?;
    // The detached baseline is measured before and after: this shared host's speed drifts
    // over minutes, and a baseline on one side only skewed the ratios.
    let after = (loops(&watched)?, loops(&unwatched)?);
    let detached = (median([before.0, after.0].concat()), median([before.1, after.1].concat()));

    let per_write = |d: Duration| d.as_nanos() as f64 / WRITES as f64;
    let row = |what: &str, off: Duration, on: Duration, cpu: f64, programs: f64| {
        format!(
            "| {what} | {:.0} ns | {:.0} ns | {:.3}x | {programs:.0} ns | {cpu:.2} s |\n",
            per_write(off),
            per_write(on),
            on.as_secs_f64() / off.as_secs_f64()
        )
    };
    let mut s = format!(
        "\n## writer-overhead\n\n`cargo xtask bench writer-overhead`: {WRITES} write(2) calls of 64 bytes (one line each), \
         the writer's CPU time per call (user + system, median of {RUNS} runs), collector detached (runs before and after the attached ones) vs attached (`collector run` shipping the watched file to the null \
         sink, {mode} mode; its CPU is what it spent over all {RUNS} runs of that row). Targets: <= 1.05x watched, \
         <= 1.01x unwatched. \"in the programs\" is the time the kernel's BPF statistics (`kernel.bpf_stats_enabled`) \
         count in the collector's programs per write, in one more attached run (the statistics cost time of their \
         own, so that run is not in the ratio).\n\n\
         | file | detached | attached | ratio | in the programs | collector CPU |\n|---|---|---|---|---|---|\n"
    );
    s.push_str(&row("watched", detached.0, watched_on, cpu_watched - cpu_before, in_programs.0));
    s.push_str(&row("unwatched", detached.1, unwatched_on, cpu_unwatched - cpu_watched, in_programs.1));
    s.push_str(&format!(
        "| unwatched, sys_enter_write/sys_exit_write enabled with no program (`perf stat -a` counting them; no collector) | {:.0} ns | {:.0} ns | {:.3}x | - | - |\n",
        per_write(detached.1),
        per_write(floor),
        floor.as_secs_f64() / detached.1.as_secs_f64()
    ));
    s.push_str(&format!(
        "| unwatched, empty programs on the same hooks (`collector floor`: programs that return at once, nothing else attached) | {:.0} ns | {:.0} ns | {:.3}x | - | - |\n",
        per_write(detached.1),
        per_write(empty),
        empty.as_secs_f64() / detached.1.as_secs_f64()
    ));
    if mode == "tracepoint" {
        s.push_str(
            "\nIn tracepoint mode every write(2) on the host takes the syscall-tracepoint path (enabled \
             for all tasks once a program is attached) and runs the enter and exit programs, watched \
             file or not; the third row is that path alone, the part no program can avoid, and the \
             last one adds the two programs doing nothing: the least any program there can cost. A watched \
             write also keeps its call in a hash map from entry to exit, resolves its inode and puts \
             an event in the ring buffer (unless it folds into the writer's last event, which the \
             daemon has not taken yet), and the collector's reading and framing shares the 2 cores \
             with the writer. fentry mode runs one fexit program on vfs_write instead; this host \
             refuses it, so it is measured in a guest kernel below. Absolute times on this shared VM \
             drift by up to 2x within minutes; compare the ratios.\n",
        );
    }
    // XTASK_BENCH_NO_GUEST=1: the host rows only.
    if std::env::var_os("XTASK_BENCH_NO_GUEST").is_none() {
        s.push('\n');
        s.push_str(&guest_writer_overhead()?);
    }
    Ok(s)
}

/// writer-overhead's rows from each guest kernel (x86-64 and arm64), a table each.
fn guest_writer_overhead() -> anyhow::Result<String> {
    let mut s = String::new();
    for (n, series) in crate::bench_guest::guests().iter().enumerate() {
        let guest = crate::bench_guest::writer_overhead(series)?;
        if n > 0 {
            s.push('\n');
        }
        s.push_str(&crate::bench_guest::describe(&guest.release));
        s.push_str(&guest.table);
    }
    Ok(s)
}

/// Nanoseconds per write spent in the collector's programs (pid `collector`), as the
/// kernel's BPF statistics count them over one write loop to `path`: the run time of every
/// program whose descriptor the collector holds (/proc/PID/fdinfo).
fn program_time_per_write(collector: u32, path: &Path) -> anyhow::Result<f64> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let was = fs::read_to_string(STATS).context("reading kernel.bpf_stats_enabled")?;
    fs::write(STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
    let before = programs_run_time_ns(collector);
    let looped = write_loop(path);
    let after = programs_run_time_ns(collector);
    fs::write(STATS, was.trim())?;
    looped?;
    Ok((after? - before?) as f64 / WRITES as f64)
}

/// The summed `run_time_ns` of the BPF programs among a process's descriptors.
fn programs_run_time_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = fs::read_to_string(entry?.path()) else { continue };
        // Programs' descriptors have it; links name a prog_id too, but not this.
        if let Some(run_time) = info.lines().find_map(|l| l.strip_prefix("run_time_ns:")) {
            total += run_time.trim().parse::<u64>().context("run_time_ns in a program's fdinfo")?;
        }
    }
    Ok(total)
}

/// The write loop while only the two syscall tracepoints a tracepoint-mode write passes
/// are enabled (perf counting them, no BPF program): the part of the overhead that is the
/// mode's, not the collector's.
fn tracepoints_alone(path: &Path) -> anyhow::Result<Duration> {
    let mut perf = Command::new("perf")
        .args(["stat", "-a", "-e", "syscalls:sys_enter_write,syscalls:sys_exit_write"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf")?;
    std::thread::sleep(Duration::from_millis(500));
    // Debian's perf is a wrapper that exits at once when no perf matches the running kernel:
    // the loop would then measure nothing enabled and report a floor of ~1.0x.
    if let Some(status) = perf.try_wait()? {
        bail!("perf stat -a -e syscalls:sys_enter_write,syscalls:sys_exit_write exited at once ({status})");
    }
    let time = median_loop(path);
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    let status = perf.wait()?;
    // perf stat ends by the SIGINT it was sent.
    if !status.success() && std::os::unix::process::ExitStatusExt::signal(&status) != Some(libc::SIGINT) {
        bail!("perf stat (the tracepoint floor) failed: {status}");
    }
    time
}

/// The loop on `path` while `collector floor` holds empty programs on the hooks `mode`
/// puts on every write: what the hooking alone costs.
fn empty_programs(collector: &Path, mode: &str, path: &Path) -> anyhow::Result<Duration> {
    let mut floor = Command::new(collector)
        .args(["--attach-mode", mode, "floor"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting collector floor")?;
    let stderr = std::io::BufReader::new(floor.stderr.take().context("collector floor's stderr")?);
    let (mut said, mut attached) = (String::new(), false);
    for line in std::io::BufRead::lines(stderr) {
        let line = line?;
        attached = line.contains("empty programs attached");
        if attached {
            break;
        }
        said.push_str(&line);
        said.push('\n');
    }
    if !attached {
        let _ = floor.kill();
        bail!("collector floor did not attach its programs: {said}");
    }
    let time = median_loop(path);
    unsafe { libc::kill(floor.id() as i32, libc::SIGTERM) };
    let status = floor.wait()?;
    if !status.success() {
        bail!("collector floor failed: {status}");
    }
    time
}

fn median_loop(path: &Path) -> anyhow::Result<Duration> {
    Ok(median(loops(path)?))
}

fn loops(path: &Path) -> anyhow::Result<Vec<Duration>> {
    (0..RUNS).map(|_| write_loop(path)).collect()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The loop itself calls write(2) directly: nothing but the syscall is measured, in the
/// thread's CPU time (user + system), not wall time: on a shared VM the wall clock also
/// counts the time other guests took the core, which swamped the difference measured.
fn write_loop(path: &Path) -> anyhow::Result<Duration> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())?;
    let fd =
        unsafe { libc::open(c_path.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND, 0o644) };
    if fd < 0 {
        bail!("open {}: {}", path.display(), std::io::Error::last_os_error());
    }
    let mut line = [b'x'; 64];
    line[63] = b'\n';
    let started = thread_cpu_time();
    for _ in 0..WRITES {
        let n = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
        if n != 64 {
            bail!("write: {}", std::io::Error::last_os_error());
        }
    }
    let elapsed = thread_cpu_time() - started;
    unsafe { libc::close(fd) };
    Ok(elapsed)
}

fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
