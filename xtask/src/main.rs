//! Project procedures, in Rust, one subcommand each: `cargo xtask <command> --help`.

mod bench;
mod bench_guest;
mod bench_kinesis;
mod bench_ops;
mod build;
mod guest;
mod image;
mod package;
mod run;
mod setup;
mod shell;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "collector's procedures: setup, build-ebpf, run, test, bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything builds and tests need (idempotent): nightly rust-src, bpf-linker
    /// 0.10, tracefs/bpffs mounts, logrotate, qemu and the guest kernels.
    Setup {
        /// Skip qemu and the guest kernels.
        #[arg(long)]
        no_guest: bool,
    },
    /// Build the kernel programs alone (they are also built by `cargo build -p collector`).
    BuildEbpf,
    /// Set up, build, and run the collector on a demo log that a writer appends to and
    /// logrotate rotates; prints each record shipped. Ctrl-C stops it.
    Run {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Set up and run every test: unit, native integration (tracepoint mode on this kernel),
    /// and the guest kernels (fentry and kprobe modes under QEMU; arm64 too).
    Test {
        /// Only the tests that run on this kernel.
        #[arg(long, conflicts_with = "guest_only")]
        native_only: bool,
        /// Only the guest-kernel runs.
        #[arg(long)]
        guest_only: bool,
        /// Also the guest runs too long for CI (every arm64 guest and mode).
        #[arg(long, conflicts_with = "native_only")]
        extended: bool,
    },
    /// Run benchmarks and print figures with ratios against a baseline from the same run.
    Bench {
        /// Which benchmark (default: all).
        name: Option<String>,
    },
    /// Build the Debian package: target/package/collector_<version>_<arch>.deb.
    Package {
        /// amd64 (this host's build) or arm64 (the static cross build).
        #[arg(long, default_value = "amd64")]
        arch: String,
    },
    /// Build the Debian package, then the container image from its binary:
    /// target/package/collector-<version>-<arch>.tar (OCI archive).
    Image {
        /// amd64 or arm64, as for package.
        #[arg(long, default_value = "amd64")]
        arch: String,
    },
    /// Serve one guest connection on stdin/stdout: start a test server on this host, or run
    /// a boto3 script (QEMU runs this for the guests; tests/src/servers.rs).
    #[command(hide = true)]
    GuestAgent,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup { no_guest } => setup::run(!no_guest),
        Command::BuildEbpf => build::ebpf(),
        Command::Run { seconds } => run::run(seconds),
        Command::Test { native_only, guest_only, extended } => test::run(!guest_only, !native_only, extended),
        Command::Bench { name } => bench::run(name.as_deref()),
        Command::Package { arch } => package::run(guest::Arch::from_debian(&arch)?).map(|_| ()),
        Command::Image { arch } => {
            let arch = guest::Arch::from_debian(&arch)?;
            package::run(arch)?;
            image::run(arch).map(|_| ())
        }
        Command::GuestAgent => Ok(collector_tests::servers::serve(std::io::stdin(), std::io::stdout())?),
    }
}
