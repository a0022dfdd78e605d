//! `cargo xtask test`: every test. Unit and integration tests on this kernel (tracepoint
//! mode: the only one it allows), then the integration tests again inside each guest
//! kernel in fentry and kprobe modes.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{build, guest, package, setup, shell};

/// Integration tests that run in the guests: the core suites in every guest mode; the
/// others in fentry mode, the one production kernels pick. Each with a libtest filter
/// ("" = all). Not there: helm and packaging, which load no kernel program.
const GUEST_TESTS: &[GuestSuite] = &[
    // Not in tracepoint mode: its rows for rename, unlink and truncate by path need the ctime
    // tracepoints of 6.13 (README, Requirements); the rotation suite covers those there.
    GuestSuite { name: "kernel_events", modes: GUEST_MODES, filter: "", before_6_9: "" },
    GuestSuite { name: "ring_buffer_loss", modes: EVERY_MODE, filter: "", before_6_9: "" },
    GuestSuite { name: "rotation", modes: EVERY_MODE, filter: "", before_6_9: "" },
    // The guest's root is in RAM (tmpfs), which never hands a freed inode number out again:
    // the inode-reuse rows run on this host's ext4 only.
    GuestSuite {
        name: "restart",
        modes: &["fentry"],
        filter: "--skip a_new_file_with_a_reused_inode_number --skip a_checkpoint_whose_inode_number",
        before_6_9: "",
    },
    GuestSuite { name: "records", modes: &["fentry"], filter: "", before_6_9: "" },
    GuestSuite { name: "paths", modes: &["fentry"], filter: "", before_6_9: "" },
    // io_uring's ftruncate came in 6.9.
    GuestSuite {
        name: "sweep",
        modes: &["fentry"],
        filter: "",
        before_6_9: "--skip a_truncation_the_kernel_hooks_do_not_see",
    },
    GuestSuite { name: "security", modes: &["fentry"], filter: "", before_6_9: "" },
    GuestSuite { name: "observability", modes: &["fentry"], filter: "", before_6_9: "" },
    GuestSuite { name: "startup_errors", modes: &["fentry"], filter: "", before_6_9: "" },
    // Not the memory-limit row: 700,000 lines in 70 s are beyond a TCG guest.
    GuestSuite {
        name: "resource_faults",
        modes: &["fentry"],
        filter: "full_output state_directory output_rotated open_files descriptors",
        before_6_9: "",
    },
    // Every row: the payload carries mkfs.xfs, mkfs.btrfs and the modules (loop, xfs, btrfs,
    // overlay are modules of Debian's cloud kernels).
    GuestSuite { name: "filesystems", modes: &["fentry"], filter: "", before_6_9: "" },
    // The suites with a server: kinesis-local and moto run on this host, started for the
    // guest by `xtask guest-agent` (tests/src/servers.rs) over QEMU's user network.
    GuestSuite { name: "kinesis", modes: &["fentry"], filter: "", before_6_9: "" },
    GuestSuite { name: "firehose", modes: &["fentry"], filter: "", before_6_9: "" },
    GuestSuite { name: "transforms", modes: &["fentry"], filter: "", before_6_9: "" },
    GuestSuite { name: "config_sources", modes: &["fentry"], filter: "", before_6_9: "" },
    GuestSuite { name: "cloudwatch", modes: &["fentry"], filter: "", before_6_9: "" },
];
/// The modes of the x86-64 matrix (this host runs tracepoint mode).
const GUEST_MODES: &[&str] = &["fentry", "kprobe"];
/// The core suites run in whichever mode a guest runs.
const EVERY_MODE: &[&str] = &["fentry", "kprobe", "tracepoint"];

/// The suites the arm64 payload carries: those that need no program beyond logrotate (the
/// others' tools would be arm64 packages too).
const ARM64_SUITES: &[&str] = &["kernel_events", "ring_buffer_loss", "rotation"];

/// A guest run: a guest (guest.rs names them) in one attach mode, with the suites it runs
/// (None: every suite of that mode the guest's payload carries).
#[derive(Clone, Debug, PartialEq)]
struct Run {
    series: String,
    mode: String,
    suites: Option<Vec<&'static str>>,
}

impl Run {
    fn new(series: &str, mode: &str, suites: Option<&[&'static str]>) -> Run {
        Run { series: series.to_owned(), mode: mode.to_owned(), suites: suites.map(<[_]>::to_vec) }
    }

    /// Whether this run runs `suite` (before XTASK_GUEST_TESTS narrows it).
    fn runs(&self, suite: &GuestSuite) -> bool {
        let carried = guest::Arch::of(&self.series) == guest::Arch::X86_64 || ARM64_SUITES.contains(&suite.name);
        match &self.suites {
            Some(names) => names.contains(&suite.name),
            None => carried && suite.modes.contains(&self.mode.as_str()),
        }
    }
}

/// Beyond the 6.1/6.12 matrix, `cargo xtask test` runs Graviton's kernel in the mode EC2
/// picks, and Debian 11's 5.10 in the mode the collector picks there (tracepoint: see
/// `attach::VFS_MODES_VERIFIED_FROM`): the rotation suite (CI's time allows that much).
const MATRIX_BEYOND: &[(&str, &str, Option<&[&str]>)] =
    &[("arm64-6.12", "fentry", Some(&["rotation"])), ("5.10", "tracepoint", Some(&["rotation"]))];

/// `--extended`: guest runs too long for CI, run and reported by hand.
const EXTENDED: &[(&str, &str, Option<&[&str]>)] = &[
    ("arm64-6.12", "fentry", None),
    ("arm64-6.12", "kprobe", None),
    ("arm64-6.12", "tracepoint", None),
    // arm64's fentry on kernel functions needs ftrace direct calls, which came in 6.4: 6.1
    // refuses it (ENOTSUPP), and the collector picks kprobe mode there.
    ("arm64-6.1", "kprobe", None),
];

/// The guest runs of a `cargo xtask test`: x86-64's matrix and the runs beyond it, the
/// extended ones too if asked; or those `only` names ("6.1/fentry,arm64-6.12/kprobe").
fn planned_runs(only: Option<&str>, extended: bool) -> anyhow::Result<Vec<Run>> {
    if let Some(only) = only {
        let mut runs = Vec::new();
        for one in only.split(',') {
            let (series, mode) =
                one.split_once('/').with_context(|| format!("XTASK_GUEST_ONLY={only}: {one} is not <guest>/<mode>"))?;
            if !EVERY_MODE.contains(&mode) {
                bail!("XTASK_GUEST_ONLY={only}: no attach mode {mode} ({})", EVERY_MODE.join(", "));
            }
            if guest::meta_package(series).is_none() && !guest::kernel_image(series).exists() {
                bail!(
                    "XTASK_GUEST_ONLY={only}: no guest {series}, and no kernel image at {}",
                    guest::kernel_image(series).display()
                );
            }
            runs.push(Run::new(series, mode, None));
        }
        return Ok(runs);
    }
    let mut runs = Vec::new();
    for (series, _) in guest::KERNELS {
        for mode in GUEST_MODES {
            runs.push(Run::new(series, mode, None));
        }
    }
    let beyond = MATRIX_BEYOND.iter().chain(if extended { EXTENDED } else { &[] });
    for (series, mode, suites) in beyond {
        // An extended run of the same guest and mode takes the place of the matrix's.
        runs.retain(|r| !(r.series == *series && r.mode == *mode));
        runs.push(Run::new(series, mode, *suites));
    }
    // Longest first, two at a time: x86-64's fentry runs of every suite, then arm64's, then
    // the others.
    runs.sort_by_key(|r| match (guest::Arch::of(&r.series), r.mode.as_str()) {
        (guest::Arch::X86_64, "fentry") if r.suites.is_none() => 0,
        (guest::Arch::X86_64, _) => 2,
        _ => 1,
    });
    Ok(runs)
}
/// Guests run at once (each has one virtual CPU).
const GUESTS_AT_ONCE: usize = 2;
/// A whole guest run: every suite of its mode, under TCG.
const GUEST_TIMEOUT: Duration = Duration::from_secs(2400);

struct GuestSuite {
    name: &'static str,
    modes: &'static [&'static str],
    filter: &'static str,
    /// Added to the filter on kernels before 6.9 (tests of what they lack).
    before_6_9: &'static str,
}

/// Whether a guest series ("6.1", "6.12", "5.10") is older than 6.9.
fn before_6_9(series: &str) -> bool {
    let mut parts = series.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (6, 9)
}

pub fn run(native: bool, with_guest: bool, extended: bool) -> anyhow::Result<()> {
    setup::run(with_guest)?;
    // XTASK_GUEST_ONLY=6.1/fentry runs one guest in one mode (debugging a guest failure),
    // or several, comma-separated; a guest outside the matrix (5.10, arm64-6.1) is fetched.
    let runs = if with_guest {
        planned_runs(std::env::var("XTASK_GUEST_ONLY").ok().as_deref(), extended)?
    } else {
        Vec::new()
    };
    // arm64's package and image: checked by tests/packaging.rs, and their binary is the one
    // the arm64 guests run (the cross build is theirs).
    let arm64 = native && with_guest || runs.iter().any(|r| guest::Arch::of(&r.series) == guest::Arch::Arm64);
    let arm64_artifacts = if arm64 {
        let deb = package::run(guest::Arch::Arm64)?;
        Some((deb, crate::image::run(guest::Arch::Arm64)?))
    } else {
        None
    };
    if native {
        let collector = build::collector()?;
        // tests/packaging.rs installs the one and runs the other.
        let deb = package::run(guest::Arch::X86_64)?;
        let image = crate::image::run(guest::Arch::X86_64)?;
        let mut tests = Command::new("cargo");
        tests
            .args(["test", "--release"])
            .current_dir(shell::root())
            .env("COLLECTOR_BIN", &collector)
            .env("KINESIS_LOCAL_MAIN", setup::kinesis_local_main())
            .env("MOTO_VENV", setup::moto_venv())
            .env("HELM_VENV", shell::work_dir().join("helm"))
            .env("COLLECTOR_DEB", &deb)
            .env("COLLECTOR_IMAGE", &image);
        // The offsets unit test reads the 6.12 guest's BTF: with the guests in the run, a
        // vmlinux that could not be extracted is an error, not a skipped check.
        let guest_elf = guest::kernel_elf("6.12");
        if with_guest {
            if !guest_elf.exists() {
                bail!("{} was not extracted from the guest kernel image (setup)", guest_elf.display());
            }
            tests.env("COLLECTOR_GUEST_VMLINUX", &guest_elf);
        }
        match &arm64_artifacts {
            Some((deb, image)) => {
                tests.env("COLLECTOR_DEB_ARM64", deb).env("COLLECTOR_IMAGE_ARM64", image);
            }
            // Without the guests there is no arm64 build: its checks are left out, by name.
            None => {
                eprintln!("+ no arm64 build (--native-only): the arm64 package and image are not checked");
                tests.args(["--", "--skip", "arm64"]);
            }
        }
        shell::run(&mut tests)?;
    }
    if !with_guest {
        return Ok(());
    }
    for run in &runs {
        // (Fetched, or its modules extracted again, unless they are as wanted.)
        if let Some(meta) = guest::meta_package(&run.series) {
            guest::prepare_kernel(&run.series, meta)?;
        }
    }
    // XTASK_GUEST_TESTS=rotation:copytruncate runs one suite, filtered (debugging).
    let only_tests = std::env::var("XTASK_GUEST_TESTS").ok();
    let suites_of = |run: &Run| -> Vec<(&'static GuestSuite, &str)> {
        GUEST_TESTS
            .iter()
            .filter_map(|suite| match only_tests.as_deref().map(|o| o.split_once(':').unwrap_or((o, ""))) {
                Some((name, filter)) => (name == suite.name).then_some((suite, filter)),
                None => run.runs(suite).then_some((suite, suite.filter)),
            })
            .collect()
    };
    // One payload per architecture, with the suites its runs need.
    let mut payloads = std::collections::HashMap::new();
    for arch in [guest::Arch::X86_64, guest::Arch::Arm64] {
        let mut needed: Vec<&str> = Vec::new();
        for run in runs.iter().filter(|r| guest::Arch::of(&r.series) == arch) {
            for (suite, _) in suites_of(run) {
                if !needed.contains(&suite.name) {
                    needed.push(suite.name);
                }
            }
        }
        if runs.iter().any(|r| guest::Arch::of(&r.series) == arch) {
            let root = match arch {
                guest::Arch::X86_64 => guest_payload()?,
                guest::Arch::Arm64 => arm64_payload(&needed)?,
            };
            payloads.insert(arch, root);
        }
    }
    let mut failed = Vec::new();
    // Each guest has one virtual CPU: two at once keep this machine's two cores busy.
    let queue = std::sync::Mutex::new(runs.into_iter());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..GUESTS_AT_ONCE {
            scope.spawn(|| {
                loop {
                    let Some(planned) = queue.lock().expect("queue").next() else { break };
                    let (series, mode) = (planned.series.as_str(), planned.mode.as_str());
                    let started = Instant::now();
                    let script = guest_script(series, mode, &suites_of(&planned));
                    let root = &payloads[&guest::Arch::of(series)];
                    let run = guest::run(series, root, &script, GUEST_TIMEOUT, guest::Network::TestServers);
                    // Printed whole, one guest at a time.
                    let mut out = std::io::stdout().lock();
                    let status = match run {
                        Ok(run) => {
                            let _ = write!(out, "{}", run.output);
                            run.status
                        }
                        Err(e) => {
                            let _ = writeln!(out, "guest {series} {mode}: {e:#}");
                            -1
                        }
                    };
                    eprintln!("guest {series} {mode}: status {status} in {:.0?}", started.elapsed());
                    results.lock().expect("results").push((format!("{series}/{mode}"), status));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    results.sort();
    failed.extend(results.into_iter().filter(|(_, status)| *status != 0).map(|(name, _)| name));
    if !failed.is_empty() {
        bail!("guest tests failed: {}", failed.join(", "));
    }
    Ok(())
}

fn guest_script(series: &str, mode: &str, suites: &[(&GuestSuite, &str)]) -> String {
    let mut s = format!(
        "export PATH=/t:/usr/sbin:/usr/bin:/sbin:/bin COLLECTOR_BIN=/t/collector COLLECTOR_TEST_ATTACH_MODE={mode} \
         COLLECTOR_TEST_LOG_WRITER=/t/log_writer COLLECTOR_TEST_URING_WRITER=/t/uring_writer \
         COLLECTOR_TEST_FAST_COPYTRUNCATE=/t/fast_copytruncate COLLECTOR_TEST_SLOW=1 \
         COLLECTOR_TEST_SCRATCH=/var/scratch RUST_BACKTRACE=1 \
         COLLECTOR_TEST_SERVER_AGENT={agent} COLLECTOR_TEST_SERVER_HOST=10.0.2.2\nset -e\nuname -r -m\n\
         mkdir -p /var/scratch\n\
         ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2\n\
         mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup\n",
        agent = guest::AGENT_ADDRESS
    );
    // (/init loaded the modules: without them, eth0 is missing and the run fails.)
    for (suite, filter) in suites {
        let test = suite.name;
        let old = if before_6_9(guest::kernel_series(series)) { suite.before_6_9 } else { "" };
        s.push_str(&format!("echo '== {test} ({mode})'\n/t/{test} --test-threads=1 {filter} {old}\n"));
        // The guest's root and /tmp are in its RAM: what is left shows how close it ran.
        s.push_str("grep -E '^(MemAvailable|Shmem):' /proc/meminfo | tr -s ' ' | tr '\\n' ' '; echo\n");
    }
    s
}

/// A root tree for the guests: the release collector, the test programs and the guest
/// suites in /t (as built for the native run: the libraries they load come along), and
/// logrotate, rsyslog, the mkfs tools, setpriv and curl with theirs.
fn guest_payload() -> anyhow::Result<PathBuf> {
    let messages = build::release_all()?;
    let root = guest::dir().join("payload");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("t"))?;
    let release = shell::root().join("target/release");
    let mut programs: Vec<(String, PathBuf)> = ["collector", "log_writer", "uring_writer", "fast_copytruncate"]
        .map(|p| (p.to_owned(), release.join(p)))
        .into();
    for suite in GUEST_TESTS {
        let exe =
            test_executable(&messages, suite.name).with_context(|| format!("no test executable for {}", suite.name))?;
        programs.push((suite.name.to_owned(), exe));
    }
    for (name, program) in &programs {
        let target = root.join("t").join(name);
        fs::copy(program, &target).with_context(|| format!("copying {}", program.display()))?;
        guest::add_libraries(&root, program)?;
        // The guest's root lives in its RAM: debug info (most of each binary) would take
        // hundreds of megabytes of it.
        shell::run(Command::new("strip").arg("--strip-debug").arg(&target))?;
    }
    guest::add_program(&root, Path::new("/usr/sbin/logrotate"))?;
    // The filesystem matrix: its mkfs tools, and each series' modules for loop, xfs, btrfs
    // and overlay (loaded by the guest script), and the network card's.
    for program in ["/usr/sbin/mkfs.xfs", "/usr/sbin/mkfs.btrfs", "/usr/bin/btrfs"] {
        guest::add_program(&root, Path::new(program))?;
    }
    fs::create_dir_all(root.join("lib/guest-modules"))?;
    for (series, _) in guest::KERNELS.iter().chain(guest::ON_DEMAND) {
        let modules = guest::kernel_modules(series);
        if modules.exists() {
            shell::run(Command::new("cp").arg("-a").arg(modules).arg(root.join("lib/guest-modules").join(series)))?;
        }
    }
    // security and startup_errors run as nobody through setpriv; observability's HTTP client.
    guest::add_program(&root, Path::new("/usr/bin/setpriv"))?;
    guest::add_program(&root, Path::new("/usr/bin/curl"))?;
    // transforms: rsyslogd, its plugins (loaded at run time, so not in its ldd), and logger.
    guest::add_program(&root, Path::new("/usr/sbin/rsyslogd"))?;
    guest::add_program(&root, Path::new("/usr/bin/logger"))?;
    for plugin in fs::read_dir(RSYSLOG_PLUGINS).with_context(|| format!("reading {RSYSLOG_PLUGINS} (rsyslog)"))? {
        guest::add_program(&root, &plugin?.path())?;
    }
    Ok(root)
}

/// Debian's arm64 packages the arm64 payload carries: logrotate and what it loads.
const ARM64_USERLAND: &[&str] = &["logrotate", "libacl1", "libc6", "libpopt0", "libselinux1", "libpcre2-8-0"];

/// The root tree of the arm64 guests: the arm64 package's collector (built first), the test
/// programs and `suites`, built for arm64 (static), in /t; Debian's arm64 logrotate with its
/// libraries; the arm64 guests' modules.
fn arm64_payload(suites: &[&str]) -> anyhow::Result<PathBuf> {
    let arch = guest::Arch::Arm64;
    let mut args = guest::ARM64_SELECTION.to_vec();
    for suite in suites {
        args.extend(["--test", suite]);
    }
    let messages = guest::cross_build(arch, &args)?;
    let root = guest::dir().join("payload-arm64");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("t"))?;
    let release = shell::root().join("target").join(arch.rust_target()).join("release");
    let mut programs: Vec<(String, PathBuf)> =
        ["log_writer", "uring_writer", "fast_copytruncate"].map(|p| (p.to_owned(), release.join(p))).into();
    programs.push(("collector".to_owned(), package::tree(arch).join("usr/bin/collector")));
    for suite in suites {
        let exe = test_executable(&messages, suite).with_context(|| format!("no arm64 test executable for {suite}"))?;
        programs.push(((*suite).to_owned(), exe));
    }
    let strip = arch.binutil("strip");
    for (name, program) in &programs {
        let target = root.join("t").join(name);
        fs::copy(program, &target).with_context(|| format!("copying {}", program.display()))?;
        shell::run(Command::new(&strip).arg("--strip-debug").arg(&target))?;
    }
    guest::unpack_packages("arm64-6.12", ARM64_USERLAND, &root)?;
    // Not needed in a guest that runs tests, and tens of megabytes of its RAM.
    for unused in ["usr/share", "usr/lib/aarch64-linux-gnu/gconv"] {
        let _ = fs::remove_dir_all(root.join(unused));
    }
    fs::create_dir_all(root.join("lib/guest-modules"))?;
    for (series, _) in guest::ON_DEMAND.iter().filter(|(s, _)| guest::Arch::of(s) == arch) {
        let modules = guest::kernel_modules(series);
        if modules.exists() {
            shell::run(Command::new("cp").arg("-a").arg(modules).arg(root.join("lib/guest-modules").join(series)))?;
        }
    }
    Ok(root)
}

const RSYSLOG_PLUGINS: &str = "/usr/lib/x86_64-linux-gnu/rsyslog";

/// The executable of integration test `name` among cargo's JSON messages.
fn test_executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["reason"] == "compiler-artifact"
            && v["package_id"].as_str().is_some_and(|p| p.contains("collector-tests"))
            && v["target"]["name"] == name
            && v["profile"]["test"] == true)
            .then(|| v["executable"].as_str().map(PathBuf::from))?
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_series_compare_by_number() {
        assert!(super::before_6_9("6.1") && super::before_6_9("5.10") && super::before_6_9("5.15"));
        assert!(!super::before_6_9("6.12") && !super::before_6_9("6.9"));
    }
}
