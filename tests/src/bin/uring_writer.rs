//! A writer the collector's kernel hooks cannot see: appends `<tag> <n>` lines
//! (n = 1..=lines) to each of PATHS with io_uring write requests, which reach the file
//! system without passing vfs_write or the write syscalls. One request per line and file,
//! `PAUSE_MS` apart.
//!
//! Usage: uring_writer TAG LINES PAUSE_MS PATH...
//!        uring_writer --truncate LEN PATH  (an io_uring ftruncate, Linux 6.9+)

use std::{fs::OpenOptions, os::fd::AsRawFd as _, time::Duration};

use io_uring::{IoUring, opcode, types};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args[1] == "--truncate" {
        return truncate(args[2].parse().expect("length"), &args[3]);
    }
    let tag = &args[1];
    let lines: u64 = args[2].parse().expect("lines");
    let pause = Duration::from_millis(args[3].parse().expect("pause"));
    let files: Vec<_> = args[4..].iter().map(|p| OpenOptions::new().append(true).open(p).expect("open log")).collect();
    let mut ring = IoUring::new(8).expect("io_uring_setup (is io_uring disabled?)");
    for n in 1..=lines {
        let line = format!("{tag} {n}\n");
        for file in &files {
            // Offset -1: at the file's position (O_APPEND: its end).
            let write = opcode::Write::new(types::Fd(file.as_raw_fd()), line.as_ptr(), line.len() as u32)
                .offset(u64::MAX)
                .build();
            unsafe { ring.submission().push(&write).expect("submission queue full") };
            ring.submit_and_wait(1).expect("io_uring_enter");
            let done = ring.completion().next().expect("a completion");
            assert_eq!(done.result(), line.len() as i32, "io_uring write of line {n}");
        }
        std::thread::sleep(pause);
    }
}

fn truncate(len: u64, path: &str) {
    let file = OpenOptions::new().write(true).open(path).expect("open log");
    let mut ring = IoUring::new(2).expect("io_uring_setup (is io_uring disabled?)");
    let op = opcode::Ftruncate::new(types::Fd(file.as_raw_fd()), len).build();
    unsafe { ring.submission().push(&op).expect("submission queue full") };
    ring.submit_and_wait(1).expect("io_uring_enter");
    let done = ring.completion().next().expect("a completion");
    assert_eq!(done.result(), 0, "io_uring ftruncate (Linux 6.9+)");
}
