//! When the kernel's ring buffer overflows, the loss is counted and reported, and the
//! collector re-checks the size of tracked files: no event vanishes without a trace.

use std::{fs::OpenOptions, io::Write as _};

use collector_tests::{Events, Scratch, ino};

#[test]
fn every_write_is_either_delivered_or_counted_as_lost() {
    const WRITES: u64 = 20_000;
    let scratch = Scratch::new("loss");
    let log = scratch.path("burst.log");
    std::fs::write(&log, b"").unwrap();
    // One page of ring buffer holds a few dozen events: a burst must overflow it.
    let events = Events::start_with(&[log.display().to_string()], &["--ring-buffer-bytes", "4096"]);
    let f = OpenOptions::new().append(true).open(&log).unwrap();
    for _ in 0..WRITES {
        (&f).write_all(b"x").unwrap();
    }
    let inode = ino(&log);
    let (mut delivered, mut lost, mut resynced_to) = (0u64, 0u64, None);
    events.until(|v| {
        match v["kind"].as_str() {
            Some("write") if v["ino"] == inode => delivered += 1,
            Some("lost") => lost += v["count"].as_u64().unwrap(),
            Some("resync") if v["ino"] == inode => resynced_to = v["size"].as_u64(),
            _ => {}
        }
        delivered + lost == WRITES
    });
    assert!(lost > 0, "a 4 KiB ring buffer cannot hold {WRITES} events");
    assert!(delivered > 0);
    if let Some(size) = resynced_to {
        assert!(size <= WRITES, "resync reports the file's real size");
    }
}
