//! The tracker as a state machine: kernel event sequences of real rotations in, actions out.

use std::path::{Path, PathBuf};

use super::*;

const APP: InodeKey = InodeKey::new(1, 10);
const COPY: InodeKey = InodeKey::new(1, 11);
const GZ: InodeKey = InodeKey::new(1, 12);
const NEW: InodeKey = InodeKey::new(1, 13);
const APP_PID: u32 = 100;
const LOGROTATE: u32 = 200;
const GZIP: u32 = 201;

/// One flow: `/log/app.log*`.
fn flow_of(p: &Path) -> Option<usize> {
    p.to_str().is_some_and(|s| s.starts_with("/log/app.log")).then_some(0)
}

fn started() -> Tracker {
    let mut t = Tracker::default();
    t.discovered(APP, 0, "/log/app.log".into(), 0, 0);
    t
}

fn path(s: &str) -> PathBuf {
    PathBuf::from(s)
}

#[test]
fn copytruncate_copy_is_derived_and_recovers_the_unread_tail() {
    let mut t = started();
    assert_eq!(
        t.on_event(Event::Write { inode: APP, pid: APP_PID, end: 100 }, 1, &flow_of),
        [Action::Read { inode: APP }]
    );
    let created = t.on_event(Event::Created { inode: COPY, path: path("/log/app.log.1"), pid: LOGROTATE }, 2, &flow_of);
    assert_eq!(
        created,
        [Action::Track { inode: COPY, flow: 0, path: path("/log/app.log.1"), from: 0 }],
        "not read before its writer is known"
    );
    assert!(t.on_event(Event::Read { inode: APP, pid: LOGROTATE }, 3, &flow_of).is_empty());
    assert_eq!(
        t.on_event(Event::Write { inode: COPY, pid: LOGROTATE, end: 100 }, 4, &flow_of),
        [Action::HoldDerived { inode: COPY, source: APP }]
    );
    assert_eq!(t.on_event(Event::Write { inode: COPY, pid: LOGROTATE, end: 150 }, 5, &flow_of), []);
    assert_eq!(
        t.on_event(Event::Truncate { inode: APP, size_before: 150, size_after: 0 }, 6, &flow_of),
        [Action::Truncated { inode: APP, size_before: 150, size_after: 0, recover_from: Some((COPY, 150)) }]
    );
}

#[test]
fn gzip_output_is_derived_even_when_its_name_matches() {
    let mut t = started();
    t.on_event(Event::Renamed { inode: APP, path: path("/log/app.log.1") }, 1, &flow_of);
    t.on_event(Event::Created { inode: GZ, path: path("/log/app.log.1.gz"), pid: LOGROTATE }, 2, &flow_of);
    t.on_event(Event::Read { inode: APP, pid: GZIP }, 3, &flow_of);
    assert_eq!(
        t.on_event(Event::Write { inode: GZ, pid: GZIP, end: 40 }, 4, &flow_of),
        [Action::HoldDerived { inode: GZ, source: APP }]
    );
    assert!(matches!(t.get(&GZ).unwrap().role, Role::Derived { source: APP, copied: 40, current: true }));
}

#[test]
fn rename_and_create_rotation_keeps_the_old_inode_until_drained_and_idle() {
    let mut t = started();
    assert_eq!(
        t.on_event(Event::Renamed { inode: APP, path: path("/log/app.log.1") }, 1, &flow_of),
        [Action::Moved { inode: APP, path: path("/log/app.log.1") }]
    );
    t.on_event(Event::Created { inode: NEW, path: path("/log/app.log"), pid: LOGROTATE }, 2, &flow_of);
    assert_eq!(
        t.on_event(Event::Write { inode: NEW, pid: APP_PID, end: 5 }, 3, &flow_of),
        [Action::Read { inode: NEW }]
    );
    assert_eq!(
        t.on_event(Event::Write { inode: APP, pid: APP_PID, end: 205 }, 4, &flow_of),
        [Action::Read { inode: APP }],
        "late write"
    );
    let idle = |_: usize| 10;
    assert!(t.expired(13, &idle, &|_| true).is_empty(), "not idle long enough");
    assert!(t.expired(20, &idle, &|_| false).is_empty(), "not drained");
    assert_eq!(t.expired(20, &idle, &|_| true), [Action::Untrack { inode: APP }]);
    assert!(t.get(&NEW).is_some(), "the live file stays");
}

#[test]
fn unmatched_new_files_are_dropped_at_their_first_unrelated_write() {
    let mut t = started();
    assert_eq!(t.on_event(Event::Created { inode: NEW, path: path("/log/other.txt"), pid: APP_PID }, 1, &flow_of), []);
    assert_eq!(
        t.on_event(Event::Write { inode: NEW, pid: APP_PID, end: 3 }, 2, &flow_of),
        [Action::Untrack { inode: NEW }]
    );
    assert!(t.get(&NEW).is_none());
}

#[test]
fn a_copy_by_cp_is_derived_and_never_read() {
    let mut t = started();
    t.on_event(Event::Created { inode: COPY, path: path("/log/app.log.bak"), pid: 300 }, 1, &flow_of);
    assert_eq!(
        t.on_event(Event::Copy { source: APP, destination: COPY, destination_end: 100 }, 2, &flow_of),
        [Action::HoldDerived { inode: COPY, source: APP }]
    );
}

/// Found under load: a copy from an earlier rotation, longer than this rotation's copy,
/// filled the gap with lines of a generation already shipped.
#[test]
fn only_the_copy_of_the_current_contents_recovers_a_truncation() {
    let mut t = started();
    let second = InodeKey::new(1, 14);
    t.on_event(Event::Created { inode: COPY, path: path("/log/app.log.1"), pid: LOGROTATE }, 1, &flow_of);
    t.on_event(Event::Read { inode: APP, pid: LOGROTATE }, 2, &flow_of);
    t.on_event(Event::Write { inode: COPY, pid: LOGROTATE, end: 500 }, 3, &flow_of);
    t.on_event(Event::Truncate { inode: APP, size_before: 500, size_after: 0 }, 4, &flow_of);
    assert!(matches!(t.get(&COPY).unwrap().role, Role::Derived { current: false, .. }));
    assert_eq!(
        t.on_event(Event::Truncate { inode: APP, size_before: 90, size_after: 0 }, 5, &flow_of),
        [Action::Truncated { inode: APP, size_before: 90, size_after: 0, recover_from: None }],
        "a truncation in place: the old copy holds other bytes"
    );
    t.on_event(Event::Created { inode: second, path: path("/log/app.log.1"), pid: LOGROTATE }, 6, &flow_of);
    t.on_event(Event::Read { inode: APP, pid: LOGROTATE }, 7, &flow_of);
    t.on_event(Event::Write { inode: second, pid: LOGROTATE, end: 300 }, 8, &flow_of);
    assert_eq!(
        t.on_event(Event::Truncate { inode: APP, size_before: 320, size_after: 0 }, 9, &flow_of),
        [Action::Truncated { inode: APP, size_before: 320, size_after: 0, recover_from: Some((second, 300)) }]
    );
}

/// Found under load (events handled seconds late): logrotate writes its state file after
/// reading the log, so the state file looks like a copy; when it was longer than the next
/// rotation's real copy, the truncation was recovered from it — and the tail was lost.
#[test]
fn the_copy_written_last_recovers_a_truncation() {
    let mut t = started();
    let state = InodeKey::new(1, 15);
    let copy = InodeKey::new(1, 16);
    let other_run = LOGROTATE + 1;
    t.on_event(Event::Read { inode: APP, pid: LOGROTATE }, 1, &flow_of);
    t.on_event(Event::Created { inode: state, path: path("/log/logrotate.state.tmp"), pid: LOGROTATE }, 2, &flow_of);
    t.on_event(Event::Write { inode: state, pid: LOGROTATE, end: 116 }, 3, &flow_of);
    t.on_event(Event::Created { inode: copy, path: path("/log/app.log.1"), pid: other_run }, 4, &flow_of);
    t.on_event(Event::Read { inode: APP, pid: other_run }, 5, &flow_of);
    t.on_event(Event::Write { inode: copy, pid: other_run, end: 98 }, 6, &flow_of);
    assert_eq!(
        t.on_event(Event::Truncate { inode: APP, size_before: 98, size_after: 0 }, 7, &flow_of),
        [Action::Truncated { inode: APP, size_before: 98, size_after: 0, recover_from: Some((copy, 98)) }]
    );
}

#[test]
fn a_released_copy_renamed_into_the_pattern_is_still_not_a_log() {
    let mut t = started();
    t.on_event(Event::Created { inode: COPY, path: path("/log/app.log.1"), pid: LOGROTATE }, 1, &flow_of);
    t.on_event(Event::Read { inode: APP, pid: LOGROTATE }, 2, &flow_of);
    t.on_event(Event::Write { inode: COPY, pid: LOGROTATE, end: 500 }, 3, &flow_of);
    let later = 3 + READ_MEMORY_NS;
    let gone = t.expired(later, &|_| 10, &|_| true);
    assert_eq!(gone, [Action::Untrack { inode: COPY }], "its descriptor is closed");
    assert!(t.expired(later + 1, &|_| 10, &|_| true).is_empty(), "released once");
    assert_eq!(
        t.on_event(Event::Renamed { inode: COPY, path: path("/log/app.log.2") }, later + 2, &flow_of),
        [Action::Moved { inode: COPY, path: path("/log/app.log.2") }],
        "logrotate shifting its copies must not make the copy a new log"
    );
}

#[test]
fn the_archive_of_a_copy_is_derived_too() {
    let mut t = started();
    t.on_event(Event::Created { inode: COPY, path: path("/log/app.log.1"), pid: LOGROTATE }, 1, &flow_of);
    t.on_event(Event::Read { inode: APP, pid: LOGROTATE }, 2, &flow_of);
    t.on_event(Event::Write { inode: COPY, pid: LOGROTATE, end: 100 }, 3, &flow_of);
    // logrotate's compress: gzip reads the copy and writes the .gz, which the glob matches.
    t.on_event(Event::Created { inode: GZ, path: path("/log/app.log.1.gz"), pid: GZIP }, 4, &flow_of);
    t.on_event(Event::Read { inode: COPY, pid: GZIP }, 5, &flow_of);
    assert_eq!(
        t.on_event(Event::Write { inode: GZ, pid: GZIP, end: 20 }, 6, &flow_of),
        [Action::HoldDerived { inode: GZ, source: COPY }]
    );
}

#[test]
fn nothing_derived_from_a_gone_file_recovers_a_new_file_that_got_its_inode_number() {
    let mut t = started();
    t.on_event(Event::Created { inode: COPY, path: path("/log/app.log.1"), pid: LOGROTATE }, 1, &flow_of);
    t.on_event(Event::Read { inode: APP, pid: LOGROTATE }, 2, &flow_of);
    t.on_event(Event::Write { inode: COPY, pid: LOGROTATE, end: 100 }, 3, &flow_of);
    t.on_event(Event::Created { inode: GZ, path: path("/log/app.log.1.gz"), pid: GZIP }, 4, &flow_of);
    t.on_event(Event::Read { inode: COPY, pid: GZIP }, 5, &flow_of);
    t.on_event(Event::Write { inode: GZ, pid: GZIP, end: 20 }, 6, &flow_of);
    t.on_event(Event::Unlinked { inode: COPY }, 7, &flow_of);
    // The copy's number goes to a new log, later truncated in place.
    t.on_event(Event::Created { inode: COPY, path: path("/log/app.log"), pid: APP_PID }, 8, &flow_of);
    t.on_event(Event::Write { inode: COPY, pid: APP_PID, end: 50 }, 9, &flow_of);
    assert_eq!(
        t.on_event(Event::Truncate { inode: COPY, size_before: 50, size_after: 0 }, 10, &flow_of),
        [Action::Truncated { inode: COPY, size_before: 50, size_after: 0, recover_from: None }],
        "the archive of the copy that had the number is no copy of the new file"
    );
}
