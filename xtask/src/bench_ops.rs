//! Benchmarks of what operations bring: rotation under load (`rotation`) and many watched
//! files (`scale`). Each beside a baseline from the same run.

use std::{
    fs,
    io::Write as _,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{current_rss_kib, process_usage},
    shell,
};

const ROTATION_SECONDS: u64 = 5;
/// Writer rates with rotation; None: as fast as the writer can.
const ROTATION_RATES: [Option<u64>; 4] = [Some(10_000), Some(30_000), Some(100_000), None];

/// One writer (one write(2) per ~100-byte line, O_APPEND) for 5 s at each rate while
/// logrotate copytruncates the file every 100 ms, until the file sink holds every line;
/// beside the fastest writer without rotation. Every line is checked: lost and duplicated
/// are counted, so the table shows the highest rate sustained with 0 loss.
pub fn rotation(collector: &Path) -> anyhow::Result<String> {
    let dir = shell::work_dir().join("bench-rotation");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("logs"))?;
    let baseline = rotation_run(collector, &dir, None, false)?;
    let rate_of = |r: &RotationRun| r.lines as f64 / r.elapsed.as_secs_f64();
    let row = |name: String, r: &RotationRun| {
        format!(
            "| {name} | {} | {} | {:.2} s | {:.0} | {} | {} | {:.1} MiB | {:.3}x |\n",
            r.lines,
            r.rotations,
            r.elapsed.as_secs_f64(),
            rate_of(r),
            r.lost,
            r.duplicated,
            r.rss_kib as f64 / 1024.0,
            rate_of(r) / rate_of(&baseline)
        )
    };
    let mut rows = row("no rotation, fastest writer (baseline)".into(), &baseline);
    for rate in ROTATION_RATES {
        let r = rotation_run(collector, &dir, rate, true)?;
        let name = rate.map_or("copytruncate every 100 ms, fastest writer".into(), |n| {
            format!("copytruncate every 100 ms, {n} lines/s")
        });
        rows.push_str(&row(name, &r));
    }
    Ok(format!(
        "\n## rotation\n\n`cargo xtask bench rotation`: one writer appends lines of ~100 bytes (one write(2) each) to a \
         watched file for {ROTATION_SECONDS} s at a set rate, or as fast as it can; `logrotate -f` with `copytruncate` and \
         `rotate 3` runs every 100 ms meanwhile; time from the first write until the file sink (raw) holds every line \
         (or nothing more arrives for 10 s). Every line is checked by its number. Baseline: the fastest writer without \
         rotation. {}. Target: 0 lost.\n\n\
         | run | lines | rotations | time | lines/s shipped | lost | duplicated | peak RSS | rate vs baseline |\n\
         |---|---|---|---|---|---|---|---|---|\n{rows}",
        crate::bench::reported_modes()
    ))
}

struct RotationRun {
    lines: u64,
    elapsed: Duration,
    rotations: u64,
    lost: u64,
    duplicated: u64,
    rss_kib: u64,
}

fn rotation_run(collector: &Path, dir: &Path, rate: Option<u64>, rotate: bool) -> anyhow::Result<RotationRun> {
    for e in fs::read_dir(dir.join("logs"))? {
        fs::remove_file(e?.path())?;
    }
    let log = dir.join("logs/app.log");
    fs::File::create(&log)?;
    let out = dir.join("out.log");
    let _ = fs::remove_file(&out);
    let running = crate::bench_kinesis::Collector::start(
        collector,
        dir,
        "",
        &format!("kind = \"file\"\nformat = \"raw\"\npath = {out:?}\n"),
    )?;
    let conf = dir.join("logrotate.conf");
    fs::write(&conf, format!("{} {{\n  copytruncate\n  rotate 3\n  missingok\n  nocompress\n}}\n", log.display()))?;
    let done = Arc::new(AtomicBool::new(false));
    let rotations = Arc::new(AtomicU64::new(0));
    let rotator = rotate.then(|| {
        let (done, rotations, conf, state) =
            (done.clone(), rotations.clone(), conf.clone(), dir.join("logrotate.state"));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let ok = Command::new("logrotate").arg("-f").arg("-s").arg(&state).arg(&conf).status();
                if ok.is_ok_and(|s| s.success()) {
                    rotations.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    });
    let started = Instant::now();
    let mut lines = 0u64;
    {
        let mut f = fs::OpenOptions::new().append(true).open(&log)?;
        let end = Duration::from_secs(ROTATION_SECONDS);
        while started.elapsed() < end {
            // On schedule: line n is due at n / rate seconds.
            if let Some(rate) = rate
                && let Some(wait) = Duration::from_nanos(lines * 1_000_000_000 / rate).checked_sub(started.elapsed())
            {
                std::thread::sleep(wait);
            }
            let n = lines;
            f.write_all(
                format!("n={n:08} 10.0.0.1 - - \"GET /api/v1/items/{n} HTTP/1.1\" 200 512 \"-\" \"bench\"\n")
                    .as_bytes(),
            )?;
            lines += 1;
        }
    }
    // Until the sink holds as many lines as were written (or nothing more comes for 10 s).
    let mut last = (0, Instant::now());
    let mut counted = crate::bench::LineCount::default();
    let elapsed = loop {
        let shipped = counted.of(&out)?;
        if shipped >= lines {
            break started.elapsed();
        }
        if shipped != last.0 {
            last = (shipped, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            break last.1.duration_since(started);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    done.store(true, Ordering::Relaxed);
    if let Some(r) = rotator {
        r.join().map_err(|_| anyhow::anyhow!("the rotator panicked"))?;
    }
    let (_, rss_kib) = process_usage(running.pid())?;
    drop(running);
    let mut seen = vec![0u32; lines as usize];
    for line in fs::read_to_string(&out)?.lines() {
        let n: usize =
            line.get(2..10).and_then(|n| n.parse().ok()).with_context(|| format!("not a bench line: {line}"))?;
        *seen.get_mut(n).with_context(|| format!("line {n} was never written"))? += 1;
    }
    let lost = seen.iter().filter(|c| **c == 0).count() as u64;
    let duplicated = seen.iter().map(|c| c.saturating_sub(1) as u64).sum();
    Ok(RotationRun { lines, elapsed, rotations: rotations.load(Ordering::Relaxed), lost, duplicated, rss_kib })
}

const SCALE_FILES: usize = 1_000;
const SCALE_WRITERS: usize = 10;
const SCALE_RATE: u64 = 100;
const IDLE: Duration = Duration::from_secs(30);
const LOAD: Duration = Duration::from_secs(20);

/// 1,000 watched files of which 10 are written at 100 lines/s each; the collector's CPU
/// then, and while nothing is written (no polling: it should be ~0); beside the same with
/// only the 10 written files watched.
pub fn scale(collector: &Path) -> anyhow::Result<String> {
    let dir = shell::work_dir().join("bench-scale");
    let mut rows = String::new();
    let mut baseline_cpu = None;
    for files in [SCALE_WRITERS, SCALE_FILES] {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("logs"))?;
        for i in 0..files {
            fs::write(dir.join(format!("logs/f{i:04}.log")), b"first line\n")?;
        }
        let t0 = Instant::now();
        let running = crate::bench_kinesis::Collector::start(collector, &dir, "", "kind = \"null\"\n")?;
        let start_up = t0.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let (cpu_before_idle, _) = process_usage(running.pid())?;
        std::thread::sleep(IDLE);
        let (cpu_after_idle, _) = process_usage(running.pid())?;
        let writers: Vec<_> = (0..SCALE_WRITERS)
            .map(|i| {
                let path = dir.join(format!("logs/f{i:04}.log"));
                std::thread::spawn(move || crate::bench_kinesis::write_at_rate(&path, SCALE_RATE, LOAD))
            })
            .collect();
        let mut written = 0;
        for w in writers {
            written += w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        }
        let (cpu_after_load, _) = process_usage(running.pid())?;
        let rss = current_rss_kib(running.pid())?;
        drop(running);
        if written != SCALE_WRITERS as u64 * SCALE_RATE * LOAD.as_secs() {
            bail!("the writers wrote {written} lines");
        }
        let idle_pct = (cpu_after_idle - cpu_before_idle) / IDLE.as_secs_f64() * 100.0;
        let load_cpu = cpu_after_load - cpu_after_idle;
        let base = *baseline_cpu.get_or_insert(load_cpu);
        rows.push_str(&format!(
            "| {files} | {:.2} s | {idle_pct:.3} % | {load_cpu:.2} s ({:.2} % of a core) | {:.2}x | {:.1} MiB |\n",
            start_up.as_secs_f64(),
            load_cpu / LOAD.as_secs_f64() * 100.0,
            load_cpu / base,
            rss as f64 / 1024.0
        ));
    }
    let active = active_table(collector, None)?;
    let startup = startup_table(collector)?;
    Ok(format!(
        "\n## scale\n\n`cargo xtask bench scale`: files of one line under one glob, null sink, {}. Idle: CPU \
         of the collector over {} s with nothing written (target ~0: nothing is polled). Load: {SCALE_WRITERS} files written \
         at {SCALE_RATE} lines/s each (one write(2) per line) for {} s; the ratio compares the CPU with {SCALE_WRITERS} \
         files watched (baseline) and {SCALE_FILES}. Start-up: from exec to running (programs loaded, files scanned).\n\n\
         | files watched | start-up | idle CPU | CPU under load | CPU vs baseline | RSS |\n|---|---|---|---|---|---|\n{rows}{active}{startup}",
        crate::bench::reported_modes(),
        IDLE.as_secs(),
        LOAD.as_secs()
    ))
}

/// The same lines per second written to one file (the baseline) and spread over many.
const ACTIVE_FILES: [usize; 3] = [1, 100, 1_000];
const ACTIVE_RATE: u64 = 20_000;
const ACTIVE_LOAD: Duration = Duration::from_secs(20);

/// Many files written at once to Kinesis (the acceptor, answering at once or after 20 ms as
/// a regional endpoint does): how long after the writers stop the last line is accepted
/// (a collector that keeps up: about `max_batch_age` plus a round trip), PutRecords calls
/// made, CPU and RSS. One file at the same total rate is the baseline; XTASK_BENCH_PREVIOUS
/// adds a previous build's rows, in the same run. `only`: that one row (files, delay).
pub fn active_table(collector: &Path, only: Option<(usize, Duration)>) -> anyhow::Result<String> {
    let dir = shell::work_dir().join("bench-active");
    let previous = std::env::var_os("XTASK_BENCH_PREVIOUS").map(std::path::PathBuf::from);
    let mut rows = String::new();
    for delay in [Duration::ZERO, Duration::from_millis(20)] {
        for files in ACTIVE_FILES {
            if only.is_some_and(|row| row != (files, delay)) {
                continue;
            }
            let mut runs = vec![("this build", collector.to_owned())];
            runs.extend(previous.clone().map(|p| ("previous", p)));
            for (label, binary) in runs {
                let _ = fs::remove_dir_all(&dir);
                fs::create_dir_all(dir.join("logs"))?;
                for i in 0..files {
                    fs::write(dir.join(format!("logs/f{i:04}.log")), b"")?;
                }
                let (acceptor, latencies) = crate::bench_kinesis::acceptor()?;
                acceptor.set_delay(delay);
                let running = crate::bench_kinesis::Collector::start(
                    &binary,
                    &dir,
                    "",
                    &crate::bench_kinesis::kinesis_sink(acceptor.port),
                )?;
                let (cpu_before, _) = process_usage(running.pid())?;
                acceptor.take_calls();
                let rate = ACTIVE_RATE / files as u64;
                let writers: Vec<_> = (0..files)
                    .map(|i| {
                        let path = dir.join(format!("logs/f{i:04}.log"));
                        std::thread::spawn(move || crate::bench_kinesis::write_at_rate(&path, rate, ACTIVE_LOAD))
                    })
                    .collect();
                let mut written = 0;
                for w in writers {
                    written += w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))??;
                }
                let stopped = Instant::now();
                while acceptor.records() < written && stopped.elapsed() < Duration::from_secs(120) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let lag = stopped.elapsed();
                let shipped = acceptor.records();
                let calls = acceptor.take_calls();
                let (cpu_after, _) = process_usage(running.pid())?;
                let rss = current_rss_kib(running.pid())?;
                drop(running);
                let shipped_per_s = shipped as f64 / (ACTIVE_LOAD + lag).as_secs_f64();
                let lag = if shipped >= written {
                    format!("{:.2} s", lag.as_secs_f64())
                } else {
                    format!("> 120 s ({shipped} of {written} lines)")
                };
                let [p50, p99] =
                    crate::bench_kinesis::quantiles(&mut latencies.lock().expect("latencies"), [0.5, 0.99]);
                rows.push_str(&format!(
                    "| {files} | {} ms | {label} | {shipped_per_s:.0} | {lag} | {:.1} / {:.1} ms | {calls} | {:.1} | {:.2} s | {:.1} MiB |\n",
                    delay.as_millis(),
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3,
                    shipped as f64 / calls.max(1) as f64,
                    cpu_after - cpu_before,
                    rss as f64 / 1024.0
                ));
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(format!(
        "\nMany files written at once: {ACTIVE_RATE} lines/s in total (one write(2) per line, ~100 bytes) for {} s, \
         into one file (the baseline) or spread over {} or {} files; kinesis sink (default settings) to the local acceptor, \
         answering at once or after 20 ms (a regional endpoint's round trip). Catch-up: from the writers' end until the \
         acceptor holds every line (keeping up: about `max_batch_age`, 20 ms, plus a round trip); lines/s shipped \
         over the load and the catch-up; latency from each line's write(2) to the acceptor's taking it, p50 / p99. \
         \"previous\": the build named by XTASK_BENCH_PREVIOUS, in the same run.\n\n\
         | files | endpoint delay | collector | lines/s shipped | catch-up | latency p50 / p99 | PutRecords calls | \
         records per call | CPU | RSS |\n|---|---|---|---|---|---|---|---|---|---|\n{rows}",
        ACTIVE_LOAD.as_secs(),
        ACTIVE_FILES[1],
        ACTIVE_FILES[2]
    ))
}

const STARTUP_FILES: [usize; 2] = [1_000, 10_000];
const STARTUP_IDLE: Duration = Duration::from_secs(60);

/// CPU time of every thread of `pid` so far, in nanoseconds (the scheduler's own count:
/// /proc's tick counts are 10 ms steps, too coarse for an idle process).
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat.split_whitespace().next().context("schedstat")?.parse::<u64>()?;
    }
    Ok(total)
}

/// Start-up with many one-line files present: from exec until the file sink holds every
/// line, and the CPU-seconds and RSS then; beside `cat` of the same files into one (the
/// baseline: reading them is all there is to do). With XTASK_BENCH_PREVIOUS=<binary>, the
/// same rows for that collector too (a build before a change, side by side in one run).
fn startup_table(collector: &Path) -> anyhow::Result<String> {
    let dir = shell::work_dir().join("bench-startup");
    let previous = std::env::var_os("XTASK_BENCH_PREVIOUS").map(std::path::PathBuf::from);
    let mut rows = String::new();
    for files in STARTUP_FILES {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("logs"))?;
        for i in 0..files {
            fs::write(dir.join(format!("logs/f{i:06}.log")), format!("line of file {i}\n"))?;
        }
        let t0 = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("cat {}/logs/*.log > {}/cat.out", dir.display(), dir.display()))
            .status()?;
        if !status.success() {
            bail!("cat: {status}");
        }
        let cat = t0.elapsed().as_secs_f64();
        let mut runs = vec![("this build", collector.to_owned())];
        runs.extend(previous.clone().map(|p| ("previous", p)));
        for (label, binary) in runs {
            let out = dir.join("out.raw");
            let _ = fs::remove_file(&out);
            let t0 = Instant::now();
            let running = crate::bench_kinesis::Collector::start(
                &binary,
                &dir,
                "",
                &format!("kind = \"file\"\nformat = \"raw\"\npath = {out:?}\n"),
            )?;
            loop {
                let shipped = fs::read(&out).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count());
                if shipped >= files {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(600) {
                    bail!("{label}: {shipped} of {files} files shipped in 10 minutes");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let elapsed = t0.elapsed().as_secs_f64();
            let (cpu, _) = process_usage(running.pid())?;
            let rss = current_rss_kib(running.pid())?;
            // Then idle: every file held, nothing written.
            std::thread::sleep(Duration::from_secs(3));
            let before = cpu_ns(running.pid())?;
            std::thread::sleep(STARTUP_IDLE);
            let idle = (cpu_ns(running.pid())? - before) as f64 / STARTUP_IDLE.as_nanos() as f64 * 100.0;
            drop(running);
            rows.push_str(&format!(
                "| {files} | {label} | {elapsed:.2} s | {cpu:.2} s | {:.1} MiB | {cat:.3} s | {:.0}x | {idle:.3} % |\n",
                rss as f64 / 1024.0,
                elapsed / cat
            ));
        }
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(format!(
        "\nStart-up with many files: one-line files present when the collector starts, file sink (raw), until the \
         sink holds every line (time from exec, so it includes loading the programs, ~0.4-1 s here); CPU-seconds and \
         RSS of the collector then; beside `cat` of the same files into one file. Idle: then, with nothing written, \
         the collector's CPU over {} s (all its threads' run time, from /proc/<pid>/task/*/schedstat), in % of a \
         core. \"previous\": the build named by XTASK_BENCH_PREVIOUS, in the same run.\n\n\
         | files | collector | all shipped | CPU | RSS | `cat` | vs `cat` | idle CPU |\n|---|---|---|---|---|---|---|---|\n{rows}",
        STARTUP_IDLE.as_secs()
    ))
}
