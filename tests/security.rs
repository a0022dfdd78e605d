//! The collector runs as root: a link must never let it read what the link's creator could
//! not. An unprivileged user (nobody, through setpriv) plants links in a world-writable
//! watched directory, before start-up (found by the scan) and while running (seen created),
//! and in a directory of its own that only it can write to (a link there is still its own,
//! and leads to root's file: not followed).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use collector_tests::{Running, Scratch, config, shipped};

fn as_nobody(args: &[&str]) {
    let status = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .status()
        .expect("setpriv");
    assert!(status.success(), "as nobody: {args:?}");
}

fn plant(scratch: &Scratch, public: &Path, round: &str) {
    let secret_file = scratch.path("secret/token.log");
    // A symlink to the root-only file, and one to the root-only directory.
    as_nobody(&["ln", "-s", secret_file.to_str().unwrap(), public.join(format!("evil-{round}.log")).to_str().unwrap()]);
    as_nobody(&[
        "ln",
        "-s",
        scratch.path("secret").to_str().unwrap(),
        public.join(format!("dir-{round}")).to_str().unwrap(),
    ]);
    // fs.protected_hardlinks=1 (the default, and set here) stops nobody from making a hard
    // link to a file it cannot read; root plants it, standing for a host where that
    // protection is off. The collector must not depend on the sysctl.
    std::fs::hard_link(&secret_file, public.join(format!("hard-{round}.log"))).unwrap();
    // And a legitimate log of nobody's own, which must be shipped.
    as_nobody(&["sh", "-c", &format!("echo 'fine {round}' >> {}", public.join(format!("ok-{round}.log")).display())]);
}

#[test]
fn links_planted_by_an_unprivileged_user_never_ship_a_root_only_file() {
    let scratch = Scratch::new("links");
    std::fs::set_permissions(&scratch.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = scratch.path("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(secret.join("token.log"), b"TOP-SECRET root only\n").unwrap();
    std::fs::set_permissions(secret.join("token.log"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let public = scratch.path("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();
    // Sanity: nobody really cannot read the secret.
    let denied = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(secret.join("token.log"))
        .output()
        .unwrap();
    assert!(!denied.status.success(), "the secret must be unreadable for nobody");

    plant(&scratch, &public, "before");
    let own = scratch.path("nobody");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(65534), Some(65534)).unwrap();
    as_nobody(&["ln", "-s", secret.join("token.log").to_str().unwrap(), own.join("mine.log").to_str().unwrap()]);
    let out = scratch.path("out.jsonl");
    let patterns =
        [scratch.pattern("public/*.log"), scratch.pattern("public/**/*.log"), scratch.pattern("nobody/*.log")];
    let collector = Running::start(&scratch.dir, &config(&scratch.path("state"), &patterns, &out, ""));
    plant(&scratch, &public, "running");
    // The secret grows too: a followed link would have new bytes to ship.
    std::fs::OpenOptions::new()
        .append(true)
        .open(secret.join("token.log"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"TOP-SECRET more\n"))
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = shipped(&out);
        let fine = records.iter().filter(|r| r["data"].as_str().is_some_and(|d| d.starts_with("fine"))).count();
        if fine == 2 || Instant::now() > deadline {
            std::thread::sleep(Duration::from_secs(1));
            break shipped(&out);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let data: Vec<&str> = records.iter().filter_map(|r| r["data"].as_str()).collect();
    assert!(data.contains(&"fine before") && data.contains(&"fine running"), "nobody's own logs are shipped: {data:?}");
    assert!(!data.iter().any(|d| d.contains("SECRET")), "a root-only file leaked: {data:?}");
    assert!(records.iter().all(|r| r.get("data_base64").is_none()));
    let log = collector.log_lines(Duration::from_millis(300));
    assert!(log.iter().any(|l| l.contains("skipping a hard-linked file")), "the hard link is reported");
    // Each untrusted link found is named once, with why.
    let warned = |name: &str, why: &str| {
        log.iter().filter(|l| l.contains("skipping a symlink") && l.contains(name) && l.contains(why)).count()
    };
    assert_eq!(warned("evil-before.log", "can be written by others (mode 1777)"), 1, "{log:#?}");
    assert_eq!(warned("mine.log", "is owned by uid 65534, neither root nor the target's owner (uid 0)"), 1, "{log:#?}");
}
