//! What the host lacks is reported in one line that names it, with exit status 69
//! (EX_UNAVAILABLE), before anything is attached. `--version` has no side effects;
//! `collector doctor` says what the host supports.

use std::process::{Command, Output};

use collector_tests::{attach_mode, collector_bin};

fn collector(args: &[&str]) -> Command {
    let mut cmd = Command::new(collector_bin());
    cmd.args(args);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn missing_capabilities_are_named_and_exit_69() {
    // An unprivileged user: no CAP_BPF, CAP_PERFMON or CAP_DAC_READ_SEARCH.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(collector_bin())
        .args(["events", "--path", "/var/log/*.log"])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("missing capabilities CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "one line: {}", stderr(&out));
}

#[test]
fn a_kernel_without_btf_is_named_and_exits_69() {
    // This kernel has BTF; pointing the collector elsewhere is how the case is reached here.
    let out = collector(&["events", "--path", "/var/log/*.log"])
        .env("COLLECTOR_BTF_PATH", "/nonexistent/btf")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert!(stderr(&out).contains("this kernel has no BTF (/nonexistent/btf is missing)"), "{}", stderr(&out));
}

/// `--version` prints one line and loads nothing: it works without privileges, BTF or a
/// tracefs, and leaves no log line.
#[test]
fn version_is_one_line_and_touches_nothing() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(collector_bin())
        .arg("--version")
        .env("COLLECTOR_BTF_PATH", "/nonexistent/btf")
        .output()
        .expect("setpriv (util-linux)");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("collector {}\n", env!("CARGO_PKG_VERSION")));
    assert_eq!(stderr(&out), "");
}

#[test]
fn doctor_lists_each_attach_mode_and_forcing_one_agrees_with_it() {
    let out = collector(&["doctor"]).output().unwrap();
    assert!(out.status.success(), "a mode works here: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("collector "), "{text}");
    assert!(text.contains("\nkernel: ") && text.contains("\nbtf: "), "{text}");
    assert!(text.contains("\ncapabilities: enough\n") && text.contains("\nlockdown: "), "{text}");
    let mut supported = Vec::new();
    for mode in ["fentry", "kprobe", "tracepoint"] {
        let line =
            text.lines().find(|l| l.starts_with(&format!("attach mode {mode}: "))).unwrap_or_else(|| panic!("{text}"));
        // "supported", or "supported, as fentry (copy on kprobe)": families fentry cannot
        // take fall back to kprobe.
        if line.contains(": supported") {
            supported.push(mode);
            continue;
        }
        // Forcing a mode the kernel refuses fails the same way, with the kernel's reason.
        let forced = collector(&["--attach-mode", mode, "events", "--path", "/var/log/*.log"]).output().unwrap();
        assert_eq!(forced.status.code(), Some(69), "{line}: {}", stderr(&forced));
        let err = stderr(&forced);
        assert!(err.contains(&format!("this kernel refuses attach mode {mode}: ")), "{err}");
    }
    assert!(text.contains(&format!("attach mode {}: supported", attach_mode())), "{text}");
    // Choosing on its own, the collector takes syscall tracepoints only where neither fentry
    // nor kprobe loads, or on a kernel they were not verified on (doctor says which).
    let automatic = text.lines().find_map(|l| l.strip_prefix("automatic: ")).unwrap_or_else(|| panic!("{text}"));
    if automatic.contains("not verified on Linux") {
        assert!(automatic.starts_with("tracepoint"), "{text}");
    } else if supported.contains(&"fentry") {
        assert!(automatic.starts_with("fentry"), "{text}");
    } else if supported.contains(&"kprobe") {
        assert!(automatic.starts_with("kprobe"), "{text}");
    } else {
        assert!(automatic.starts_with("tracepoint"), "{text}");
    }
}

/// With a config, doctor names the filesystem under each of its patterns (a known one here).
#[test]
fn doctor_names_the_filesystem_of_each_configured_path() {
    let scratch = collector_tests::Scratch::new("doctor");
    let path = scratch.path("collector.toml");
    let pattern = scratch.pattern("*.log");
    std::fs::write(
        &path,
        collector_tests::config(&scratch.path("state"), std::slice::from_ref(&pattern), &scratch.path("o"), ""),
    )
    .unwrap();
    let out = collector(&["doctor", "--config", path.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains(&format!("path {pattern}: "))).unwrap_or_else(|| panic!("{text}"));
    assert!(!line.contains("unknown"), "{line}");
    assert!(line.ends_with(&format!("({})", scratch.dir.display())), "{line}");
    // A wrong config: its status, and the report still printed.
    std::fs::write(&path, "[[flow]\n").unwrap();
    let out = collector(&["doctor", "--config", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stdout).contains("attach mode tracepoint: "));
}
