//! The rotation contract on each filesystem a host keeps logs on, not only this machine's
//! ext4: loop-mounted xfs and btrfs (its top level and a subvolume, whose files `stat` shows
//! on a device of their own), tmpfs, overlayfs (a container's merged directory, upper layer
//! on another filesystem) and a bind mount watched through both of its paths. On each, a
//! real writer at 2,500 lines/s under real logrotate every 300 ms, rotating by rename and
//! create and by copytruncate, each with and without `compress`: every line once, in order.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use collector_tests::{
    Running, Scratch, assert_every_line_once_in_order, config, mounts, rotate_repeatedly, wait_for_records,
    writer_process,
};

const LINES: u64 = 8_000;
const RATE: u64 = 2_500;

/// (name, logrotate directives, whether the writer reopens its file after each line).
const ROTATIONS: &[(&str, &str, bool)] = &[
    ("create", "create\nrotate 100", true),
    ("create-compress", "create\nrotate 100\ncompress", true),
    ("copytruncate", "copytruncate\nrotate 100", false),
    ("copytruncate-compress", "copytruncate\nrotate 100\ncompress", false),
];

/// The tests of this file run one at a time: each runs logrotate every 300 ms, and two at
/// once on two cores let the copies fall far behind.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every kind of rotation of a log in (a fresh directory under) `dir`, watched there and,
/// if given, through `also` (the same directory by another path).
///
/// On tmpfs, logrotate's copy, truncate, compress and delete of the copy take about a
/// millisecond together, less than the collector takes to open the copy it was told of:
/// there the bytes it had not read come from what the kernel saw logrotate read.
fn every_rotation_ships_every_line_once(scratch: &Scratch, dir: &Path, also: Option<&Path>) {
    // One collector for the four kinds, each in a directory of its own, one after another.
    let mut patterns = Vec::new();
    for (name, _, _) in ROTATIONS {
        let logs = dir.join(name);
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("app.log"), b"").unwrap();
        patterns.push(format!("{}/app.log*", logs.display()));
        if let Some(also) = also {
            patterns.push(format!("{}/{name}/app.log*", also.display()));
        }
    }
    let out = scratch.path("out.jsonl");
    let collector = Running::start(&scratch.dir, &config(&scratch.path("state"), &patterns, &out, ""));
    for (done, (name, directives, reopen)) in ROTATIONS.iter().enumerate() {
        eprintln!("== {name} in {}", dir.display());
        let log = dir.join(name).join("app.log");
        let stop = Arc::new(AtomicBool::new(false));
        let rotator = rotate_repeatedly(log.clone(), directives.to_string(), Duration::from_millis(300), stop.clone());
        let mut writer = writer_process(env!("CARGO_BIN_EXE_log_writer"), &log, name, LINES, RATE, *reopen);
        assert!(writer.wait().unwrap().success());
        stop.store(true, Ordering::Relaxed);
        let rotations = rotator.join().unwrap();
        let all = wait_for_records(&out, (done as u64 + 1) as usize * LINES as usize);
        let records: Vec<_> = all
            .into_iter()
            .filter(|r| r["data"].as_str().is_some_and(|d| d.starts_with(&format!("{name} "))))
            .collect();
        assert!(rotations >= collector_tests::min_rotations(), "{name}: {rotations} rotations");
        assert_every_line_once_in_order(&records, name, LINES);
        // Renamed files are followed (and named by their new path); copies and archives
        // are never shipped.
        let live_only = directives.contains("copytruncate");
        assert!(
            records.iter().all(|r| {
                let path = r["path"].as_str().unwrap();
                !path.ends_with(".gz") && (!live_only || path.ends_with("/app.log"))
            }),
            "{name}: a copy or an archive was shipped"
        );
    }
    // Every compress made a .gz that matches `app.log*`: said at most once (one flow), then
    // only counted.
    let log = collector.log_lines(Duration::from_millis(100));
    let warned = log.iter().filter(|l| l.contains("WARN") && l.contains("skipping a compressed")).count();
    assert!(warned <= 1, "the skipped archives are warned about {warned} times, not once per flow");
}

#[test]
fn xfs() {
    let _serial = one_at_a_time();
    let scratch = Scratch::new("fs-xfs");
    // mkfs.xfs refuses less than 300 MiB; the image is sparse.
    let fs = mounts::loop_image(&scratch.dir, "mkfs.xfs", 300);
    every_rotation_ships_every_line_once(&scratch, &fs.dir, None);
}

#[test]
fn btrfs_top_level() {
    let _serial = one_at_a_time();
    let scratch = Scratch::new("fs-btrfs");
    let fs = mounts::loop_image(&scratch.dir, "mkfs.btrfs", 256);
    every_rotation_ships_every_line_once(&scratch, &fs.dir, None);
}

#[test]
fn btrfs_subvolume() {
    let _serial = one_at_a_time();
    let scratch = Scratch::new("fs-btrfs-sub");
    let fs = mounts::btrfs_subvolume(&scratch.dir);
    every_rotation_ships_every_line_once(&scratch, &fs.dir, None);
}

#[test]
fn tmpfs() {
    let _serial = one_at_a_time();
    let scratch = Scratch::new("fs-tmpfs");
    let fs = mounts::tmpfs(&scratch.dir);
    every_rotation_ships_every_line_once(&scratch, &fs.dir, None);
}

#[test]
fn overlayfs_upper_layer() {
    let _serial = one_at_a_time();
    let scratch = Scratch::new("fs-overlay");
    let fs = mounts::overlay(&scratch.dir);
    // Its upper layer is a tmpfs.
    every_rotation_ships_every_line_once(&scratch, &fs.dir, None);
}

/// The same directory by two paths: each file is one inode, shipped once.
#[test]
fn a_bind_mount_watched_through_both_paths() {
    let _serial = one_at_a_time();
    let scratch = Scratch::new("fs-bind");
    let source = scratch.path("logs");
    std::fs::create_dir_all(&source).unwrap();
    for (name, _, _) in ROTATIONS {
        std::fs::create_dir_all(source.join(name)).unwrap();
    }
    let bound = mounts::bind(&scratch.dir, &source);
    every_rotation_ships_every_line_once(&scratch, &source, Some(&bound.dir));
}
