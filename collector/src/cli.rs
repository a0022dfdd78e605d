//! Command-line interface: subcommands and their arguments only.

use clap::{Parser, Subcommand};

use crate::probe::AttachMode;

#[derive(Parser, Debug)]
#[command(
    name = "collector",
    about = "Ships log files, told by eBPF which inode every write, rename and truncate touched.",
    disable_version_flag = true
)]
pub struct Cli {
    /// Print the version, then exit (`collector doctor` checks the host).
    #[arg(long, short = 'V')]
    pub version: bool,
    /// Force an attach mode instead of the best one that loads (fentry, then kprobe, then tracepoint).
    #[arg(long, global = true, value_enum)]
    pub attach_mode: Option<AttachMode>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `collector=debug`; default:
    /// $RUST_LOG, or `info`.
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// Log lines as text for people, or one JSON object per line (timestamp, level, target,
    /// fields) for a log pipeline.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Where the config comes from.
#[derive(clap::Args, Debug)]
pub struct ConfigArg {
    /// A TOML file (with the *.toml files of a `<stem>.d` directory beside it), a directory
    /// of *.toml files, a Kinesis Agent agent.json, or ssm:/parameter/name (SSM Parameter
    /// Store).
    #[arg(long, env = "COLLECTOR_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: std::path::PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the collector: ship every flow of the config.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a config and exit: 0 if good; 78 with file:line: key: message if not; 75 if it
    /// could not be fetched (SSM).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a config equivalent to an Amazon Kinesis Agent's (agent.json, then any agent.d
    /// files), listing on stderr what could not be carried over. `run --config agent.json`
    /// also takes one directly.
    ImportKinesisAgent {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Print a running collector's flows (sink, state, last error, lag) and the files it
    /// tracks (path, inode, state, size, shipped, lag); asks its `[metrics] listen` address.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Ask this address instead of the config's (the config is then not read).
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// Print the collector's answer as JSON (`{attach_mode, flows, files}`).
        #[arg(long)]
        json: bool,
    },
    /// Check this host: the kernel, its BTF, capabilities, lockdown, which attach modes load
    /// here (and why the others do not), and with --config the filesystem under each path.
    /// Exits 0 if `run` can work, 69 if not (78 for a wrong config).
    Doctor {
        /// A config whose paths to check (any form --config takes).
        #[arg(long, env = "COLLECTOR_CONFIG")]
        config: Option<std::path::PathBuf>,
    },
    /// Print kernel file events for matching files as JSON lines (debugging; used by tests).
    Events {
        /// Absolute glob of files to watch (`*` stays in one directory, `**` crosses them). Repeatable.
        #[arg(long = "path", required = true)]
        paths: Vec<String>,
        /// Ring buffer size in bytes (power of two, at least a page).
        #[arg(long, hide = true)]
        ring_buffer_bytes: Option<u32>,
    },
    /// Attach only empty programs on the hooks --attach-mode puts on every write, until
    /// SIGTERM: what the hooking alone costs a write (the writer-overhead benchmark's floor).
    #[command(hide = true)]
    Floor,
    /// Print the kernel struct offsets the programs would use, read from BTF: the running
    /// kernel's, a raw BTF file, or a vmlinux image (debugging a kernel before deploying).
    Layout {
        /// A raw BTF file (like /sys/kernel/btf/vmlinux).
        #[arg(long, conflicts_with = "vmlinux")]
        btf: Option<std::path::PathBuf>,
        /// A vmlinux ELF image with a .BTF section.
        #[arg(long)]
        vmlinux: Option<std::path::PathBuf>,
    },
}
