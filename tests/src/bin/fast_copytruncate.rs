//! copytruncate as logrotate does it (read(2) and write(2) of 8 KiB into a new `PATH.1`,
//! then ftruncate of PATH to 0), with the copy deleted at once: what logrotate's `compress`
//! does on tmpfs within a millisecond, here within microseconds, before any reader told of
//! the copy could open it. The unread tail then exists only in what the copier read.
//!
//! Usage: fast_copytruncate PATH ROTATIONS EVERY_MS

use std::{
    fs::OpenOptions,
    io::{Read as _, Write as _},
    time::Duration,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = &args[1];
    let rotations: u32 = args[2].parse().expect("rotations");
    let every = Duration::from_millis(args[3].parse().expect("every_ms"));
    let copy_path = format!("{path}.1");
    for _ in 0..rotations {
        std::thread::sleep(every);
        let mut original = OpenOptions::new().read(true).write(true).open(path).expect("open the log");
        let mut copy = OpenOptions::new().write(true).create_new(true).open(&copy_path).expect("create the copy");
        let mut buf = [0u8; 8192];
        loop {
            let n = original.read(&mut buf).expect("read the log");
            if n == 0 {
                break;
            }
            copy.write_all(&buf[..n]).expect("write the copy");
        }
        original.set_len(0).expect("truncate the log");
        std::fs::remove_file(&copy_path).expect("delete the copy");
    }
}
