//! `cargo xtask bench`: figures, each beside a baseline measured in the same run (absolute
//! times drift on shared machines; ratios hold). Rewrites BENCHMARKS.md.

use std::{
    ffi::CString,
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{build, setup, shell};

const BENCHES: &[&str] = &["writer-overhead"];

pub fn run(name: Option<&str>) -> anyhow::Result<()> {
    if let Some(name) = name
        && !BENCHES.contains(&name)
    {
        bail!("unknown benchmark {name}; known: {}", BENCHES.join(", "));
    }
    setup::run(false)?;
    let collector = build::collector()?;
    let mut report = format!(
        "# Benchmarks\n\nWritten by `cargo xtask bench` on {} ({}, {} CPUs). Ratios compare with a baseline measured in the same run.\n",
        shell::output(Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC"))?.trim(),
        shell::output(Command::new("uname").arg("-sr"))?.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    report.push_str(&writer_overhead(&collector)?);
    fs::write(shell::root().join("BENCHMARKS.md"), &report)?;
    println!("{report}");
    Ok(())
}

const WRITES: usize = 2_000_000;
const RUNS: usize = 5;

/// A 64-byte write() loop to a watched and to an unwatched file, with the collector
/// attached (running `collector events` on the watched file) and detached.
fn writer_overhead(collector: &Path) -> anyhow::Result<String> {
    let dir = shell::work_dir().join("bench");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("watched"))?;
    fs::create_dir_all(dir.join("unwatched"))?;
    let watched = dir.join("watched/app.log");
    let unwatched = dir.join("unwatched/other.log");

    let detached = (median_loop(&watched)?, median_loop(&unwatched)?);
    let mut child = Command::new(collector)
        .args(["events", "--path"])
        .arg(dir.join("watched/*.log"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next().context("collector printed nothing")??;
    let mode = serde_json::from_str::<serde_json::Value>(&ready)?["attach_mode"].as_str().unwrap_or("?").to_owned();
    // Drain events as the collector prints them, as a consumer would.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let attached = (median_loop(&watched)?, median_loop(&unwatched)?);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    let events = drain.join().unwrap_or(0);

    let per_write = |d: Duration| d.as_nanos() as f64 / WRITES as f64;
    let row = |what: &str, off: Duration, on: Duration| {
        format!(
            "| {what} | {:.0} ns | {:.0} ns | {:.3}x |\n",
            per_write(off),
            per_write(on),
            on.as_secs_f64() / off.as_secs_f64()
        )
    };
    let mut s = format!(
        "\n## writer-overhead\n\n`cargo xtask bench writer-overhead`: {WRITES} write(2) calls of 64 bytes, median of {RUNS} runs, \
         collector detached vs attached ({mode} mode; it printed {events} event lines). Targets: <= 1.05x watched, <= 1.01x unwatched.\n\n\
         | file | detached | attached | ratio |\n|---|---|---|---|\n"
    );
    s.push_str(&row("watched", detached.0, attached.0));
    s.push_str(&row("unwatched", detached.1, attached.1));
    if mode == "tracepoint" {
        s.push_str(
            "\nIn tracepoint mode every write(2) on the host takes the syscall-tracepoint path (enabled \
             for all tasks once a program is attached) and runs the enter and exit programs, watched \
             file or not; fentry mode runs one fexit program on vfs_write. This host refuses fentry, \
             and timings under QEMU's TCG are not comparable, so the fentry figure is still to be \
             measured on a kernel that allows it.\n",
        );
    }
    Ok(s)
}

fn median_loop(path: &Path) -> anyhow::Result<Duration> {
    let mut times: Vec<Duration> = (0..RUNS).map(|_| write_loop(path)).collect::<anyhow::Result<_>>()?;
    times.sort();
    Ok(times[RUNS / 2])
}

/// The loop itself calls write(2) directly: nothing but the syscall is measured.
fn write_loop(path: &Path) -> anyhow::Result<Duration> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())?;
    let fd =
        unsafe { libc::open(c_path.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND, 0o644) };
    if fd < 0 {
        bail!("open {}: {}", path.display(), std::io::Error::last_os_error());
    }
    let line = [b'x'; 64];
    let started = Instant::now();
    for _ in 0..WRITES {
        let n = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
        if n != 64 {
            bail!("write: {}", std::io::Error::last_os_error());
        }
    }
    let elapsed = started.elapsed();
    unsafe { libc::close(fd) };
    Ok(elapsed)
}
