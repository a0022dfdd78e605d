//! A real writer process for the rotation tests: appends `<tag> <n>` lines (n = 1..=lines)
//! at a steady rate. With `--reopen` it behaves like an app that notices rotation and
//! reopens its log by name (as after logrotate's postrotate signal); without, it keeps its
//! descriptor (the copytruncate case, and late writes after a rename). With `--dsync` every
//! write waits for the disk (O_DSYNC): on a disk-backed filesystem it then returns well
//! after its bytes landed, as a write of a busy host does when it is preempted.
//!
//! Usage: log_writer PATH TAG LINES RATE_PER_SEC [--reopen] [--dsync]

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    time::{Duration, Instant},
};

fn open(path: &str, dsync: bool) -> File {
    let flags = if dsync { libc::O_DSYNC } else { 0 };
    OpenOptions::new().append(true).create(true).custom_flags(flags).open(path).expect("open log")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, tag) = (&args[1], &args[2]);
    let lines: u64 = args[3].parse().expect("lines");
    let rate: u64 = args[4].parse().expect("rate");
    let reopen = args.iter().any(|a| a == "--reopen");
    let dsync = args.iter().any(|a| a == "--dsync");
    let mut file = open(path, dsync);
    let started = Instant::now();
    for n in 1..=lines {
        if reopen {
            // Reopen once the rotator has put a new file in place; while the name is
            // missing, keep writing to the old file (creating it here would race logrotate).
            if let Ok(current) = std::fs::metadata(path)
                && current.ino() != file.metadata().expect("fstat").ino()
            {
                file = open(path, dsync);
            }
        }
        file.write_all(format!("{tag} {n}\n").as_bytes()).expect("write");
        // Pace: line n is due at n / rate seconds.
        let due = Duration::from_micros(n * 1_000_000 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}
