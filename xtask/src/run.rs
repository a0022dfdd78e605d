//! `cargo xtask run`: the collector on a demo log, in one command. A writer appends numbered
//! lines, logrotate rotates the log every few seconds (copytruncate and create in turn, with
//! compress), `collector run` ships to a file sink, and each record is printed as it arrives;
//! on exit a tally says whether every line arrived exactly once.

use std::{
    fs,
    io::Write as _,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{build, setup, shell};

pub fn run(seconds: Option<u64>) -> anyhow::Result<()> {
    setup::run(false)?;
    let collector = build::collector()?;
    let demo = shell::work_dir().join("demo");
    let _ = fs::remove_dir_all(&demo);
    fs::create_dir_all(&demo)?;
    let log = demo.join("app.log");
    fs::write(&log, b"")?;
    let conf = demo.join("logrotate.conf");
    let shipped = demo.join("shipped.jsonl");
    let config = demo.join("collector.toml");
    fs::write(
        &config,
        format!(
            "[collector]\nstate_dir = {:?}\n\n[[flow]]\nname = \"demo\"\npaths = [{:?}]\nrotated_idle = \"10s\"\n\n\
             [flow.sink]\nkind = \"file\"\npath = {:?}\n",
            demo.join("state"),
            demo.join("app.log*"),
            shipped
        ),
    )?;

    let mut child = Command::new(&collector).arg("run").arg("--config").arg(&config).spawn()?;
    eprintln!(
        "demo: collector (pid {}) shipping {}/app.log* to {}; Ctrl-C to stop",
        child.id(),
        demo.display(),
        shipped.display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let writer = {
        let (stop, log, written) = (stop.clone(), log.clone(), written.clone());
        thread::spawn(move || {
            let mut line = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Reopen each time, as an app would after logrotate's create (no SIGHUP here).
                if let Ok(mut f) = fs::OpenOptions::new().append(true).create(true).open(&log) {
                    line += 1;
                    if f.write_all(format!("demo line {line}\n").as_bytes()).is_ok() {
                        written.store(line, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let rotator = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_secs(3));
                round += 1;
                let how = if round % 2 == 0 { "create" } else { "copytruncate" };
                let body = format!("{} {{\n  {how}\n  rotate 3\n  compress\n  delaycompress\n}}\n", log.display());
                if fs::write(&conf, body).is_ok() {
                    eprintln!("demo: logrotate ({how})");
                    let _ = Command::new("logrotate")
                        .arg("-f")
                        .arg("-s")
                        .arg(conf.with_extension("state"))
                        .arg(&conf)
                        .status();
                }
            }
        })
    };

    let started = Instant::now();
    let mut printed = 0;
    let mut seen = std::collections::BTreeMap::<u64, u32>::new();
    let mut show = |seen: &mut std::collections::BTreeMap<u64, u32>| {
        let text = fs::read_to_string(&shipped).unwrap_or_default();
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        for line in text[printed.min(complete)..complete].lines() {
            let Ok(r) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let data = r["data"].as_str().unwrap_or("");
            println!(
                "shipped: {:<40} ino {:<9} offset {:<6} {data}",
                r["path"].as_str().unwrap_or(""),
                r["ino"],
                r["offset"]
            );
            if let Some(n) = data.strip_prefix("demo line ").and_then(|n| n.parse().ok()) {
                *seen.entry(n).or_default() += 1;
            }
        }
        printed = complete;
    };
    loop {
        if let Some(status) = child.try_wait()? {
            stop.store(true, Ordering::Relaxed);
            anyhow::bail!("collector exited: {status}");
        }
        show(&mut seen);
        if seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = (writer.join(), rotator.join());
    // A moment to ship the last lines, then a clean stop (checkpoints written).
    thread::sleep(Duration::from_secs(2));
    show(&mut seen);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait()?;
    let total = written.load(Ordering::Relaxed);
    let missing = (1..=total).filter(|n| !seen.contains_key(n)).count();
    let twice = seen.values().filter(|c| **c > 1).count();
    eprintln!("demo: stopped ({status}); {total} lines written, {missing} missing, {twice} shipped more than once");
    Ok(())
}
