//! `cargo xtask run`: the collector on a demo log, in one command. A writer appends numbered
//! lines, logrotate rotates the log every few seconds (copytruncate and create in turn), and
//! the collector prints the kernel's events for it as JSON lines.

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

    let mut child =
        Command::new(&collector).arg("events").arg("--path").arg(format!("{}/app.log*", demo.display())).spawn()?;
    eprintln!("demo: collector (pid {}) watching {}/app.log*; Ctrl-C to stop", child.id(), demo.display());
    let stop = Arc::new(AtomicBool::new(false));

    let writer = {
        let (stop, log) = (stop.clone(), log.clone());
        thread::spawn(move || {
            let mut line = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Reopen each time, as an app would after logrotate's create (no SIGHUP here).
                if let Ok(mut f) = fs::OpenOptions::new().append(true).create(true).open(&log) {
                    line += 1;
                    let _ = f.write_all(format!("demo line {line}\n").as_bytes());
                }
                thread::sleep(Duration::from_millis(500));
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
    loop {
        if let Some(status) = child.try_wait()? {
            stop.store(true, Ordering::Relaxed);
            anyhow::bail!("collector exited: {status}");
        }
        if seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait()?;
    let _ = (writer.join(), rotator.join());
    eprintln!("demo: stopped ({status})");
    Ok(())
}
