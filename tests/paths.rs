//! Which files the patterns pick up: `exclude` (at start-up and while running, `*` staying
//! within one directory as in `paths`), and symlinks, followed when they can be trusted as
//! Kubernetes' `/var/log/containers/*.log` links into `/var/log/pods/` are: the target is
//! tracked by its own inode, so rotation and truncation through the link behave as on the
//! target, and a file reached by several names is shipped once.

use std::{os::unix::fs::symlink, path::Path, process::Command, time::Duration};

use collector_tests::{Running, Scratch, assert_every_line_once_in_order, config, shipped, wait_for_records};

/// Appends `tag from..=to` lines to `path`, one write each.
fn append(path: &Path, tag: &str, from: u64, to: u64) {
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
    for n in from..=to {
        std::io::Write::write_all(&mut f, format!("{tag} {n}\n").as_bytes()).unwrap();
    }
}

/// The distinct tags among the records, sorted.
fn tags(records: &[serde_json::Value]) -> Vec<String> {
    let tags: std::collections::BTreeSet<String> =
        records.iter().filter_map(|r| Some(r["data"].as_str()?.split_once(' ')?.0.to_owned())).collect();
    tags.into_iter().collect()
}

#[test]
fn exclude_applies_at_start_up_and_while_running_and_its_star_stays_in_one_directory() {
    let scratch = Scratch::new("exclude");
    let logs = scratch.path("logs");
    std::fs::create_dir_all(logs.join("sub")).unwrap();
    append(&logs.join("top.log"), "top-before", 1, 3);
    append(&logs.join("sub/deep.log"), "deep-before", 1, 3);
    let out = scratch.path("out.jsonl");
    let text = config(
        &scratch.path("state"),
        &[scratch.pattern("logs/**/*.log")],
        &out,
        // `logs/*.log` excludes logs/top.log only: `*` does not cross `/`.
        &format!("exclude = [{:?}]\n", scratch.pattern("logs/*.log")),
    );
    let collector = Running::start(&scratch.dir, &text);
    append(&logs.join("top.log"), "top-running", 1, 3);
    append(&logs.join("new.log"), "new-running", 1, 3);
    append(&logs.join("sub/deep.log"), "deep-running", 1, 3);
    append(&logs.join("sub/other.log"), "other-running", 1, 3);
    let records = wait_for_records(&out, 9);
    assert_eq!(
        tags(&records),
        ["deep-before", "deep-running", "other-running"],
        "only files below logs/ are shipped; logs/top.log and logs/new.log are excluded"
    );
    assert_eq!(records.len(), 9);
    drop(collector);
}

/// Fluent Bit's `rotate_link` and `truncate_link` cases: a log reached through a symlink is
/// rotated by rename and create, then truncated, with lines written before and after each:
/// 300 lines in, 300 out, once each.
#[test]
fn rotation_and_truncation_through_a_trusted_link_ship_every_line_once() {
    let scratch = Scratch::new("link-rotate");
    let pods = scratch.path("pods/ns_pod_uid/app");
    let containers = scratch.path("containers");
    std::fs::create_dir_all(&pods).unwrap();
    std::fs::create_dir_all(&containers).unwrap();
    let target = pods.join("0.log");
    append(&target, "w", 1, 50);
    let link = containers.join("pod_ns_app.log");
    symlink(&target, &link).unwrap();
    let out = scratch.path("out.jsonl");
    let collector =
        Running::start(&scratch.dir, &config(&scratch.path("state"), &[scratch.pattern("containers/*.log")], &out, ""));
    append(&link, "w", 51, 100);
    wait_for_records(&out, 100);
    // Rotated by rename and create (as the kubelet does): the link now leads to a new file.
    std::fs::rename(&target, pods.join("0.log.20261203-080000")).unwrap();
    append(&target, "w", 101, 150);
    append(&link, "w", 151, 200);
    wait_for_records(&out, 200);
    // Truncated through the link (copytruncate's second half), then written again.
    let status = Command::new("truncate").args(["-s", "0"]).arg(&link).status().unwrap();
    assert!(status.success());
    append(&link, "w", 201, 300);
    let records = wait_for_records(&out, 300);
    assert_every_line_once_in_order(&records, "w", 300);
    assert_eq!(shipped(&out).len(), 300, "nothing twice");
    assert!(
        records.iter().all(|r| r["path"].as_str().unwrap().starts_with(&*pods.to_string_lossy())),
        "records name the target's path"
    );
    drop(collector);
}

#[test]
fn a_file_reached_by_two_links_and_its_own_name_is_shipped_once() {
    let scratch = Scratch::new("link-twice");
    let pods = scratch.path("pods");
    let containers = scratch.path("containers");
    std::fs::create_dir_all(&pods).unwrap();
    std::fs::create_dir_all(&containers).unwrap();
    let target = pods.join("0.log");
    append(&target, "w", 1, 100);
    symlink(&target, containers.join("a.log")).unwrap();
    symlink("../pods/0.log", containers.join("b.log")).unwrap();
    let out = scratch.path("out.jsonl");
    let patterns = [scratch.pattern("containers/*.log"), scratch.pattern("pods/*.log")];
    let collector = Running::start(&scratch.dir, &config(&scratch.path("state"), &patterns, &out, ""));
    append(&target, "w", 101, 200);
    let records = wait_for_records(&out, 200);
    std::thread::sleep(Duration::from_millis(500));
    assert_every_line_once_in_order(&shipped(&out), "w", 200);
    assert_eq!(records.len(), 200);
    drop(collector);
}

/// The kernel programs see no mkdir or symlink: a pod's directory created under a `**`
/// pattern while running, and a link added to /var/log/containers while running, are found
/// by the rescan (every second), and their files shipped from their first line.
#[test]
fn a_directory_and_a_link_created_while_running_are_picked_up_from_their_start() {
    let scratch = Scratch::new("late-dirs");
    let pods = scratch.path("pods");
    let containers = scratch.path("containers");
    let other = scratch.path("other-pods");
    for d in [&pods, &containers, &other] {
        std::fs::create_dir_all(d).unwrap();
    }
    let out = scratch.path("out.jsonl");
    let patterns = [scratch.pattern("pods/**/*.log"), scratch.pattern("containers/*.log")];
    let collector = Running::start(&scratch.dir, &config(&scratch.path("state"), &patterns, &out, ""));
    // A new pod: its directory, then its log, written before and after it is found.
    let pod = pods.join("ns_web_1/app");
    std::fs::create_dir_all(&pod).unwrap();
    append(&pod.join("0.log"), "pod", 1, 100);
    // A new link to a log outside the patterns.
    let target = other.join("ns_db_2/db/0.log");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    append(&target, "link", 1, 100);
    symlink(&target, containers.join("db.log")).unwrap();
    wait_for_records(&out, 200);
    append(&pod.join("0.log"), "pod", 101, 200);
    append(&target, "link", 101, 200);
    // A second file in the pod's directory, watched by now: its create event brings it.
    append(&pod.join("1.log"), "second", 1, 50);
    let records = wait_for_records(&out, 450);
    assert_every_line_once_in_order(&records, "pod", 200);
    assert_every_line_once_in_order(&records, "link", 200);
    assert_every_line_once_in_order(&records, "second", 50);
    assert_eq!(records.len(), 450);
    drop(collector);
}
