//! The kernel probes, end to end: a real workload on real files, the collector's `events`
//! output compared with exactly what the workload did (inode, offsets, lengths, sizes).
//! Runs in tracepoint mode on this host and in fentry/kprobe modes in the guest kernels
//! (`COLLECTOR_TEST_ATTACH_MODE`, set by `cargo xtask test`).

use std::{
    fs::{File, OpenOptions},
    io::{Seek as _, SeekFrom, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    process::Command,
};

use collector_tests::{Events, Scratch, ino, of, ranges};
use serde_json::Value;

fn pid() -> u64 {
    u64::from(std::process::id())
}

fn write_at(f: &File, data: &[u8], pos: u64) {
    let n = unsafe { libc::pwrite(f.as_raw_fd(), data.as_ptr().cast(), data.len(), pos as i64) };
    assert_eq!(n, data.len() as isize);
}

fn writev(f: &File, parts: &[&[u8]]) {
    let iov: Vec<libc::iovec> =
        parts.iter().map(|p| libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() }).collect();
    let n = unsafe { libc::writev(f.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
    assert_eq!(n as usize, parts.iter().map(|p| p.len()).sum::<usize>());
}

fn pwritev2(f: &File, data: &[u8], pos: i64) {
    let iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    let n = unsafe { libc::pwritev2(f.as_raw_fd(), &iov, 1, pos, 0) };
    assert_eq!(n as usize, data.len());
}

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().expect("sh");
    assert!(status.success(), "{script}: {status}");
}

fn setup(name: &str, glob: &str) -> (Scratch, Events, std::path::PathBuf) {
    let scratch = Scratch::new(name);
    let sentinel = scratch.path("zz-sentinel.log");
    std::fs::write(&sentinel, b"").unwrap();
    std::fs::write(scratch.path("app.log"), b"0123456789").unwrap();
    let events = Events::start(&[scratch.pattern(glob), sentinel.display().to_string()]);
    (scratch, events, sentinel)
}

#[test]
fn every_write_syscall_reports_inode_offset_and_length() {
    let (scratch, events, sentinel) = setup("writes", "*.log");
    let log = scratch.path("app.log");
    let f = OpenOptions::new().write(true).open(&log).unwrap();
    (&f).write_all(b"abcdef").unwrap(); // write at 0
    (&f).seek(SeekFrom::End(0)).unwrap();
    (&f).write_all(b"ghij").unwrap(); // at 10
    write_at(&f, b"kl", 100); // pwrite64
    writev(&f, &[b"mno", b"pqrs"]); // at the file position: 14
    pwritev2(&f, b"tu", 50); // explicit offset
    pwritev2(&f, b"vw", -1); // -1: the file position, 21
    let appender = OpenOptions::new().append(true).open(&log).unwrap();
    (&appender).write_all(b"xyz").unwrap(); // O_APPEND: at the end, 102
    write_at(&appender, b"!!", 0); // pwrite on O_APPEND lands at the end too: 105

    let seen = events.drain(&sentinel);
    let writes = of(&seen, "write", ino(&log));
    assert_eq!(
        ranges(&writes),
        [(0, 6), (10, 4), (100, 2), (14, 7), (50, 2), (21, 2), (102, 3), (105, 2)],
        "{seen:#?}"
    );
    assert!(writes.iter().all(|w| w["pid"] == pid() && w["path"] == log.to_str().unwrap()));
    assert_eq!(seen.len(), writes.len(), "nothing but these writes: {seen:#?}");
}

#[test]
fn writes_to_unwatched_files_yield_no_events() {
    let (scratch, events, sentinel) = setup("unwatched", "app.log");
    std::fs::write(scratch.path("other.txt"), b"not watched").unwrap();
    let f = OpenOptions::new().append(true).open(scratch.path("app.log")).unwrap();
    let elsewhere = std::env::temp_dir().join(format!("collector-unwatched-{}", std::process::id()));
    std::fs::write(&elsewhere, b"x".repeat(100)).unwrap();
    std::fs::remove_file(&elsewhere).unwrap();
    (&f).write_all(b"watched\n").unwrap();
    let seen = events.drain(&sentinel);
    assert_eq!(seen.len(), 1, "only the write to app.log: {seen:#?}");
    assert_eq!(ranges(&seen), [(10, 8)]);
}

#[test]
fn renamed_files_are_followed_by_inode_and_late_writes_reported() {
    let (scratch, events, sentinel) = setup("rename", "*.log");
    let log = scratch.path("app.log");
    let inode = ino(&log);
    let f = OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::rename(&log, scratch.path("app.log.1")).unwrap(); // out of the pattern
    (&f).write_all(b"late\n").unwrap(); // write after rename
    let elsewhere = Scratch::new("rename-away");
    std::fs::rename(scratch.path("app.log.1"), elsewhere.path("moved")).unwrap(); // out of the dir
    (&f).write_all(b"later\n").unwrap();

    let seen = events.drain(&sentinel);
    let renames = of(&seen, "rename", inode);
    assert_eq!(renames.len(), 2, "{seen:#?}");
    assert_eq!(renames[0]["path"], scratch.path("app.log.1").to_str().unwrap());
    assert_eq!(renames[0]["old_path"], log.to_str().unwrap());
    assert_eq!(renames[0]["name"], "app.log.1");
    assert_eq!(renames[0]["parent"], ino(&scratch.dir));
    assert_eq!(renames[1]["path"], elsewhere.path("moved").to_str().unwrap());
    assert_eq!(renames[1]["parent"], ino(&elsewhere.dir));
    assert_eq!(ranges(&of(&seen, "write", inode)), [(10, 5), (15, 6)]);
    assert_eq!(seen.len(), 4, "{seen:#?}");
}

#[test]
fn a_file_renamed_into_the_pattern_is_picked_up() {
    let (scratch, events, sentinel) = setup("rename-in", "*.log");
    let outside = Scratch::new("rename-in-src");
    let src = outside.path("incoming");
    std::fs::write(&src, b"abc").unwrap();
    let inode = ino(&src);
    let f = OpenOptions::new().append(true).open(&src).unwrap();
    (&f).write_all(b"unseen").unwrap(); // not watched yet
    let dst = scratch.path("incoming.log");
    std::fs::rename(&src, &dst).unwrap();
    (&f).write_all(b"seen").unwrap();
    let seen = events.drain(&sentinel);
    let renames = of(&seen, "rename", inode);
    assert_eq!(renames.len(), 1, "{seen:#?}");
    assert_eq!(renames[0]["path"], dst.to_str().unwrap());
    assert_eq!(renames[0]["old_path"], Value::Null, "it was not tracked before");
    assert_eq!(ranges(&of(&seen, "write", inode)), [(9, 4)]);
}

#[test]
fn truncations_report_size_before_and_after() {
    let (scratch, events, sentinel) = setup("truncate", "*.log");
    let log = scratch.path("app.log");
    let inode = ino(&log);
    let f = OpenOptions::new().write(true).open(&log).unwrap();
    write_at(&f, &[b'x'; 90], 10); // size 100
    let c_path = std::ffi::CString::new(log.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::truncate(c_path.as_ptr(), 40) }, 0); // truncate(2)
    f.set_len(0).unwrap(); // ftruncate(2)
    write_at(&f, b"12345", 0);
    sh(&format!(": > '{}'", log.display())); // open(O_TRUNC) by the shell
    OpenOptions::new().write(true).truncate(true).open(&log).unwrap(); // O_TRUNC of an empty file

    let seen = events.drain(&sentinel);
    let truncates = of(&seen, "truncate", inode);
    let sizes: Vec<(u64, u64)> =
        truncates.iter().map(|t| (t["size_before"].as_u64().unwrap(), t["size_after"].as_u64().unwrap())).collect();
    assert_eq!(sizes, [(100, 40), (40, 0), (5, 0), (0, 0)], "{seen:#?}");
    assert_eq!(truncates[2]["comm"], "sh");
    assert_eq!(truncates[3]["pid"], pid());
}

#[test]
fn a_file_deleted_while_open_keeps_reporting_writes() {
    let (scratch, events, sentinel) = setup("unlink", "*.log");
    let log = scratch.path("app.log");
    let inode = ino(&log);
    let f = OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    (&f).write_all(b"after unlink\n").unwrap();
    let seen = events.drain(&sentinel);
    let unlinks = of(&seen, "unlink", inode);
    assert_eq!(unlinks.len(), 1, "{seen:#?}");
    assert_eq!(unlinks[0]["path"], log.to_str().unwrap());
    assert_eq!(unlinks[0]["name"], "app.log");
    assert_eq!(ranges(&of(&seen, "write", inode)), [(10, 13)]);
}

#[test]
fn files_created_in_a_watched_directory_are_reported_from_offset_zero() {
    let (scratch, events, sentinel) = setup("create", "*.log");
    let created = scratch.path("new.log");
    let f = OpenOptions::new().create_new(true).append(true).mode(0o644).open(&created).unwrap();
    (&f).write_all(b"first line\n").unwrap();
    std::fs::write(scratch.path("new.txt"), b"not matching").unwrap();
    let seen = events.drain(&sentinel);
    let inode = ino(&created);
    let creates = of(&seen, "create", inode);
    assert_eq!(creates.len(), 1, "{seen:#?}");
    assert_eq!(creates[0]["name"], "new.log");
    assert_eq!(creates[0]["parent"], ino(&scratch.dir));
    assert_eq!(ranges(&of(&seen, "write", inode)), [(0, 11)]);
    assert_eq!(seen.len(), 2, "nothing about new.txt: {seen:#?}");
}

#[test]
fn in_kernel_copies_of_a_watched_file_are_reported_as_copies() {
    let (scratch, events, sentinel) = setup("copy", "app.log");
    let log = scratch.path("app.log");
    let copy = scratch.path("copy-by-cp");
    sh(&format!("cp '{}' '{}'", log.display(), copy.display()));
    let by_sendfile = scratch.path("copy-by-sendfile");
    let out = File::create(&by_sendfile).unwrap();
    let src = File::open(&log).unwrap();
    let mut offset: libc::off_t = 2;
    let n = unsafe { libc::sendfile(out.as_raw_fd(), src.as_raw_fd(), &mut offset, 5) };
    assert_eq!(n, 5);

    let seen = events.drain(&sentinel);
    let inode = ino(&log);
    let copies = of(&seen, "copy", inode);
    let cp: Vec<&Value> = copies.iter().filter(|c| c["comm"] == "cp").collect();
    let reads_by_cp: u64 =
        of(&seen, "read", inode).iter().filter(|r| r["comm"] == "cp").map(|r| r["len"].as_u64().unwrap()).sum();
    let copied_by_cp: u64 = cp.iter().map(|c| c["len"].as_u64().unwrap()).sum();
    assert_eq!(copied_by_cp + reads_by_cp, 10, "cp moved all 10 bytes, by copy_file_range or read: {seen:#?}");
    assert!(cp.iter().all(|c| c["dest_ino"] == ino(&copy)));
    let sf: Vec<&Value> = copies.iter().filter(|c| c["pid"] == pid()).collect();
    assert_eq!(sf.len(), 1, "{seen:#?}");
    assert_eq!((sf[0]["pos"].as_u64(), sf[0]["len"].as_u64(), sf[0]["dest_pos"].as_u64()), (Some(2), Some(5), Some(0)));
    assert_eq!(sf[0]["dest_ino"], ino(&by_sendfile));
    assert_eq!((sf[0]["role"].as_str(), sf[0]["dest_role"].as_str()), (Some("original"), Some("derived")), "{seen:#?}");
}

#[test]
fn logrotate_create_renames_the_old_inode_and_creates_a_new_one() {
    let (scratch, events, sentinel) = setup("logrotate-create", "app.log*");
    let log = scratch.path("app.log");
    let old = ino(&log);
    let writer = OpenOptions::new().append(true).open(&log).unwrap();
    collector_tests::logrotate_once(&scratch, "create 0644\nrotate 3");
    (&writer).write_all(b"late\n").unwrap(); // the app has not reopened yet
    let seen = events.drain(&sentinel);
    let renames = of(&seen, "rename", old);
    assert_eq!(renames.len(), 1, "{seen:#?}");
    assert_eq!(renames[0]["path"], scratch.path("app.log.1").to_str().unwrap());
    assert_eq!(renames[0]["comm"], "logrotate");
    let new = ino(&log);
    assert_ne!(new, old);
    assert_eq!(of(&seen, "create", new).len(), 1, "{seen:#?}");
    assert_eq!(ranges(&of(&seen, "write", old)), [(10, 5)]);
}

#[test]
fn logrotate_copytruncate_and_compress_show_copy_truncate_and_derivative() {
    let (scratch, events, sentinel) = setup("logrotate-copytruncate", "app.log*");
    let log = scratch.path("app.log");
    let inode = ino(&log);
    std::fs::write(&log, b"line 1\nline 2\nline 3\n").unwrap(); // 21 bytes
    collector_tests::logrotate_once(&scratch, "copytruncate\ncompress\nrotate 3");
    let seen = events.drain(&sentinel);

    let by = |comm: &str, kind: &str, ino: u64| -> Vec<Value> {
        of(&seen, kind, ino).into_iter().filter(|v| v["comm"] == comm).collect()
    };
    let total = |evs: &[Value]| -> u64 { evs.iter().map(|v| v["len"].as_u64().unwrap()).sum() };
    // logrotate read app.log to its end, wrote app.log.1 (a new file), then truncated app.log.
    let copied: u64 = total(&by("logrotate", "read", inode)) + total(&by("logrotate", "copy", inode));
    assert_eq!(copied, 21, "{seen:#?}");
    let rotated = seen.iter().find(|v| v["kind"] == "create" && v["name"] == "app.log.1").expect("app.log.1 created");
    let rotated_ino = rotated["ino"].as_u64().unwrap();
    assert_eq!(rotated["comm"], "logrotate");
    // Only while app.log.1 exists: once gzip removed it, logrotate's state file may get its
    // inode number (ext4 reuses it at once) and its writes would count here.
    let removed_at =
        seen.iter().position(|v| v["kind"] == "unlink" && v["ino"].as_u64() == Some(rotated_ino)).unwrap_or(seen.len());
    let writes_before_removal: Vec<Value> = seen[..removed_at]
        .iter()
        .filter(|v| v["kind"] == "write" && v["ino"].as_u64() == Some(rotated_ino) && v["comm"] == "logrotate")
        .cloned()
        .collect();
    let into_rotated: u64 = total(&writes_before_removal)
        + total(
            &by("logrotate", "copy", inode).into_iter().filter(|c| c["dest_ino"] == rotated_ino).collect::<Vec<_>>(),
        );
    assert_eq!(into_rotated, 21, "the copy holds every byte: {seen:#?}");
    // The story `run` tells (the same inode table): app.log is shipped, its copy never.
    assert!(of(&seen, "truncate", inode).iter().all(|v| v["role"] == "original"), "{seen:#?}");
    assert!(
        writes_before_removal.iter().all(|v| v["role"] == "derived"),
        "logrotate's copy is derived from its first write: {seen:#?}"
    );
    let truncates = of(&seen, "truncate", inode);
    let sizes: Vec<_> = truncates.iter().map(|t| (t["size_before"].as_u64(), t["size_after"].as_u64())).collect();
    // fs::write above opened with O_TRUNC first.
    assert_eq!(sizes, [(Some(10), Some(0)), (Some(21), Some(0))], "{seen:#?}");
    assert_eq!((truncates[0]["pid"].as_u64(), truncates[1]["comm"].as_str()), (Some(pid()), Some("logrotate")));
    // gzip read app.log.1 and wrote app.log.1.gz; app.log.1 was then removed.
    assert_eq!(total(&by("gzip", "read", rotated_ino)), 21, "{seen:#?}");
    let gz = seen.iter().find(|v| v["kind"] == "create" && v["name"] == "app.log.1.gz").expect("app.log.1.gz created");
    assert!(total(&by("gzip", "write", gz["ino"].as_u64().unwrap())) > 0);
    assert_eq!(of(&seen, "unlink", rotated_ino).len(), 1);
}
