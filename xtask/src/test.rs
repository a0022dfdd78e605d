//! `cargo xtask test`: every test. Unit and integration tests on this kernel (tracepoint
//! mode: the only one it allows), then the integration tests again inside each guest
//! kernel in fentry and kprobe modes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{build, guest, setup, shell};

/// Integration tests that run in the guests (they need only the kernel, busybox,
/// logrotate and the test writer there).
const GUEST_TESTS: &[&str] = &["kernel_events", "ring_buffer_loss", "rotation"];
const GUEST_MODES: &[&str] = &["fentry", "kprobe"];

pub fn run(native: bool, with_guest: bool) -> anyhow::Result<()> {
    setup::run(with_guest)?;
    if native {
        let collector = build::collector()?;
        let mut tests = Command::new("cargo");
        tests
            .args(["test", "--release"])
            .current_dir(shell::root())
            .env("COLLECTOR_BIN", &collector)
            .env("KINESIS_LOCAL_MAIN", setup::kinesis_local_main())
            .env("MOTO_VENV", setup::moto_venv())
            .env("HELM_VENV", shell::work_dir().join("helm"));
        // The offsets unit test reads the 6.12 guest's BTF: with the guests in the run, a
        // vmlinux that could not be extracted is an error, not a skipped check.
        let guest_elf = guest::kernel_elf("6.12");
        if with_guest {
            if !guest_elf.exists() {
                bail!("{} was not extracted from the guest kernel image (setup)", guest_elf.display());
            }
            tests.env("COLLECTOR_GUEST_VMLINUX", &guest_elf);
        }
        shell::run(&mut tests)?;
    }
    if !with_guest {
        return Ok(());
    }
    let root = guest_payload()?;
    let mut failed = Vec::new();
    // XTASK_GUEST_ONLY=6.1/fentry runs one combination (debugging a guest failure).
    let only = std::env::var("XTASK_GUEST_ONLY").ok();
    let only_pair = only.as_deref().and_then(|o| o.split_once('/'));
    // It may also name a mode outside the matrix (5.10/tracepoint).
    let extra = only_pair.map(|(_, m)| m).filter(|m| !GUEST_MODES.contains(m));
    // XTASK_GUEST_ONLY=5.10/kprobe fetches and runs a kernel outside the matrix; any other
    // series runs if its image was put in target/xtask/guest/kernels/<series>/vmlinuz by hand.
    let mut series_list: Vec<&str> = guest::KERNELS.iter().map(|(s, _)| *s).collect();
    if let Some((series, _)) = only_pair
        && !series_list.contains(&series)
    {
        if let Some((_, meta)) = guest::ON_DEMAND.iter().find(|(s, _)| *s == series) {
            guest::prepare_kernel(series, meta)?;
        }
        if !guest::kernel_image(series).exists() {
            bail!("no kernel image for {series}: {}", guest::kernel_image(series).display());
        }
        series_list.push(series);
    }
    for series in series_list {
        for mode in GUEST_MODES.iter().copied().chain(extra) {
            if only.as_deref().is_some_and(|o| o != format!("{series}/{mode}")) {
                continue;
            }
            let started = Instant::now();
            let script = guest_script(mode);
            let run = guest::run(series, &root, &script, Duration::from_secs(900))?;
            print!("{}", run.output);
            eprintln!("guest {series} {mode}: status {} in {:.0?}", run.status, started.elapsed());
            if run.status != 0 {
                failed.push(format!("{series}/{mode}"));
            }
        }
    }
    if !failed.is_empty() {
        bail!("guest tests failed: {}", failed.join(", "));
    }
    Ok(())
}

fn guest_script(mode: &str) -> String {
    let mut s = format!(
        "export PATH=/t:/usr/sbin:/usr/bin:/sbin:/bin COLLECTOR_BIN=/t/collector COLLECTOR_TEST_ATTACH_MODE={mode} \
         COLLECTOR_TEST_LOG_WRITER=/t/log_writer COLLECTOR_TEST_SLOW=1 \
         COLLECTOR_TEST_SCRATCH=/tmp/scratch RUST_BACKTRACE=1\nset -e\nuname -r\n"
    );
    // XTASK_GUEST_TESTS=rotation:copytruncate runs one test binary, filtered (debugging).
    let only = std::env::var("XTASK_GUEST_TESTS").ok();
    for test in GUEST_TESTS {
        let filter = match only.as_deref().map(|o| o.split_once(':').unwrap_or((o, ""))) {
            Some((name, _)) if name != *test => continue,
            Some((_, filter)) => filter,
            None => "",
        };
        s.push_str(&format!("echo '== {test} ({mode})'\n/t/{test} --test-threads=1 {filter}\n"));
        // The guest's root and /tmp are in its RAM: what is left shows how close it ran.
        s.push_str("grep -E '^(MemAvailable|Shmem):' /proc/meminfo | tr -s ' ' | tr '\\n' ' '; echo\n");
    }
    s
}

/// A root tree for the guests: static builds of the collector and the guest tests in /t,
/// and logrotate with its libraries.
fn guest_payload() -> anyhow::Result<PathBuf> {
    eprintln!("+ building static collector and guest tests");
    let collector = guest::static_collector()?;
    let messages = guest::static_build(&["test", "-p", "collector-tests", "--no-default-features", "--no-run"])?;
    let root = guest::dir().join("payload");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("t"))?;
    let release = collector.parent().expect("release dir");
    fs::copy(&collector, root.join("t/collector"))?;
    fs::copy(release.join("log_writer"), root.join("t/log_writer"))?;
    for test in GUEST_TESTS {
        let exe = test_executable(&messages, test).with_context(|| format!("no test executable for {test}"))?;
        fs::copy(exe, root.join("t").join(test))?;
    }
    // The guest's root lives in its RAM: debug info (most of each binary) would take
    // hundreds of megabytes of it.
    for entry in fs::read_dir(root.join("t"))? {
        shell::run(Command::new("strip").arg("--strip-debug").arg(entry?.path()))?;
    }
    guest::add_program(&root, Path::new("/usr/sbin/logrotate"))?;
    Ok(root)
}

/// The executable of integration test `name` among cargo's JSON messages.
fn test_executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["reason"] == "compiler-artifact" && v["target"]["name"] == name && v["profile"]["test"] == true)
            .then(|| v["executable"].as_str().map(PathBuf::from))?
    })
}
