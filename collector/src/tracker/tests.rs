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
    assert!(matches!(t.get(&GZ).unwrap().role, Role::Derived { source: APP, copied: 40 }));
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
