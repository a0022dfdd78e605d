//! Builds: the kernel programs alone, and the daemon (which embeds them).

use std::{path::PathBuf, process::Command};

use crate::{guest, shell};

/// `cargo xtask build-ebpf`: the eBPF object, as aya-build makes it for the daemon.
pub fn ebpf() -> anyhow::Result<()> {
    shell::run(
        Command::new("cargo")
            .args([
                "+nightly",
                "build",
                "--release",
                "-p",
                "collector-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--bins",
            ])
            .current_dir(shell::root()),
    )?;
    eprintln!("built {}", shell::root().join("target/bpfel-unknown-none/release/collector-ebpf").display());
    Ok(())
}

/// The release daemon; returns its path.
pub fn collector() -> anyhow::Result<PathBuf> {
    release_all()?;
    Ok(shell::root().join("target/release/collector"))
}

/// The release daemon for `arch`: this host's build (x86-64), or the static arm64 cross build.
pub fn collector_for(arch: guest::Arch) -> anyhow::Result<PathBuf> {
    match arch {
        guest::Arch::X86_64 => collector(),
        guest::Arch::Arm64 => {
            guest::cross_build(arch, guest::ARM64_SELECTION)?;
            Ok(shell::root().join("target").join(arch.rust_target()).join("release/collector"))
        }
    }
}

/// Builds every release target; returns cargo's JSON messages (where each artifact is).
pub fn release_all() -> anyhow::Result<String> {
    // The same selection `cargo test --release` builds (every default member, tests
    // included): one feature resolution, so the AWS stack is compiled once, not twice.
    eprintln!("+ cargo build --release --all-targets");
    shell::output(
        Command::new("cargo")
            .args(["build", "--release", "--all-targets", "--message-format=json-render-diagnostics"])
            // Progress and errors as they come.
            .stderr(std::process::Stdio::inherit())
            .current_dir(shell::root()),
    )
}
