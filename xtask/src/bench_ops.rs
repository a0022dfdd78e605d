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
         rotation. Tracepoint mode. Target: 0 lost.\n\n\
         | run | lines | rotations | time | lines/s shipped | lost | duplicated | peak RSS | rate vs baseline |\n\
         |---|---|---|---|---|---|---|---|---|\n{rows}"
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
    Ok(format!(
        "\n## scale\n\n`cargo xtask bench scale`: files of one line under one glob, null sink, tracepoint mode. Idle: CPU \
         of the collector over {} s with nothing written (target ~0: nothing is polled). Load: {SCALE_WRITERS} files written \
         at {SCALE_RATE} lines/s each (one write(2) per line) for {} s; the ratio compares the CPU with {SCALE_WRITERS} \
         files watched (baseline) and {SCALE_FILES}. Start-up: from exec to running (programs loaded, files scanned).\n\n\
         | files watched | start-up | idle CPU | CPU under load | CPU vs baseline | RSS |\n|---|---|---|---|---|---|\n{rows}",
        IDLE.as_secs(),
        LOAD.as_secs()
    ))
}
