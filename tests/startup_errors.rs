//! What the host lacks is reported in one line that names it, with exit status 2, before
//! anything is attached.

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
fn missing_capabilities_are_named_and_exit_2() {
    // An unprivileged user: no CAP_BPF, CAP_PERFMON or CAP_DAC_READ_SEARCH.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(collector_bin())
        .args(["events", "--path", "/var/log/*.log"])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("missing capabilities CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "one line: {}", stderr(&out));
}

#[test]
fn a_kernel_without_btf_is_named_and_exits_2() {
    // This kernel has BTF; pointing the collector elsewhere is how the case is reached here.
    let out = collector(&["events", "--path", "/var/log/*.log"])
        .env("COLLECTOR_BTF_PATH", "/nonexistent/btf")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("this kernel has no BTF (/nonexistent/btf is missing)"), "{}", stderr(&out));
}

#[test]
fn version_lists_each_attach_mode_and_forcing_one_agrees_with_it() {
    let out = collector(&["--version"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("collector "), "{text}");
    for mode in ["fentry", "kprobe", "tracepoint"] {
        let line =
            text.lines().find(|l| l.starts_with(&format!("attach mode {mode}: "))).unwrap_or_else(|| panic!("{text}"));
        if line.ends_with(": supported") {
            continue;
        }
        // Forcing a mode the kernel refuses fails the same way, with the kernel's reason.
        let forced = collector(&["--attach-mode", mode, "events", "--path", "/var/log/*.log"]).output().unwrap();
        assert_eq!(forced.status.code(), Some(2), "{line}: {}", stderr(&forced));
        let err = stderr(&forced);
        assert!(err.contains(&format!("no attach mode works on this kernel: {mode}: ")), "{err}");
    }
    assert!(text.contains(&format!("attach mode {}: supported", attach_mode())), "{text}");
}
