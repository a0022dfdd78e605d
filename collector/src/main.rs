//! collector: ships log files to AWS Kinesis, told by eBPF exactly which inode every write,
//! rename and truncate touched.

#[cfg(feature = "kinesis")]
mod aws;
mod cgroup;
mod checkpoint;
mod cli;
#[cfg(feature = "kinesis")]
mod cloudwatch;
mod config;
mod daemon;
mod delivery;
mod devices;
mod doctor;
mod engine;
mod event_queue;
mod events;
mod exit;
mod framer;
mod inode_map;
mod line_regex;
mod links;
mod metrics;
mod newlines;
mod open_files;
mod probe;
mod reader;
mod sink;
mod status;
mod sweep;
mod tracker;
mod transform;
mod truncation;
mod watch;

use std::process::ExitCode;

use clap::Parser as _;

use crate::{
    cli::{Cli, Command},
    probe::{Probe, ProbeOptions},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        &cli.log.clone().or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| "info".into()),
        cli.log_format,
    );
    if cli.version {
        println!("collector {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("collector: no command given; see `collector --help`");
        return ExitCode::from(exit::USAGE);
    };
    match command {
        Command::CheckConfig { config: cli::ConfigArg { config } } => match config::Config::load(&config) {
            Ok(c) => {
                println!("{}: ok ({} flows)", config.display(), c.flows.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("collector: {e}");
                ExitCode::from(exit::of_config_error(&e))
            }
        },
        Command::Run { config: cli::ConfigArg { config } } => {
            // The config is checked before anything is attached.
            let config = match config::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    fatal(cli.log_format, &e.to_string());
                    return ExitCode::from(exit::of_config_error(&e));
                }
            };
            let probe = match Probe::start(&ProbeOptions {
                mode: cli.attach_mode,
                ring_buffer_bytes: None,
                coalesce_appends: true,
                max_files: Some(config.max_files),
            }) {
                Ok(probe) => probe,
                Err(e) => {
                    fatal(cli.log_format, &e.to_string());
                    return ExitCode::from(e.exit_code());
                }
            };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            match runtime.block_on(daemon::run(config, probe)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    fatal(cli.log_format, &format!("{e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::ImportKinesisAgent { files } => {
            let mut texts = Vec::new();
            for f in &files {
                match std::fs::read_to_string(f) {
                    Ok(t) => texts.push((f.display().to_string(), t)),
                    Err(e) => {
                        eprintln!("collector: {}: cannot read: {e}", f.display());
                        return ExitCode::from(exit::NO_INPUT);
                    }
                }
            }
            match config::kinesis_agent::import(&texts) {
                Ok(imported) => {
                    print!("{}", imported.toml);
                    for d in &imported.dropped {
                        eprintln!("not carried over: {d}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("collector: {e}");
                    ExitCode::from(exit::CONFIG)
                }
            }
        }
        Command::Status { config: cli::ConfigArg { config }, addr, json } => match status::print(&config, addr, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(status::Error::Config(e)) => {
                eprintln!("collector: {e}");
                ExitCode::from(exit::of_config_error(&e))
            }
            Err(status::Error::NoAddress) => {
                eprintln!("collector: {}", status::Error::NoAddress);
                ExitCode::from(exit::CONFIG)
            }
            Err(e) => {
                eprintln!("collector: {e:#}");
                ExitCode::from(exit::FAILURE)
            }
        },
        Command::Doctor { config } => doctor::run(config.as_deref()),
        Command::Layout { btf, vmlinux } => {
            let btf = match (btf, vmlinux) {
                (_, Some(image)) => probe::btf::KernelBtf::from_elf_file(&image),
                (file, None) => probe::btf::KernelBtf::from_raw_file(&file.unwrap_or_else(probe::preflight::btf_path)),
            };
            match btf.and_then(|btf| probe::offsets::kernel_offsets(&btf)) {
                Ok(offsets) => {
                    println!("{offsets:#?}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("collector: {e}");
                    ExitCode::from(exit::UNAVAILABLE)
                }
            }
        }
        Command::Floor => {
            let Some(mode) = cli.attach_mode else {
                eprintln!("collector: floor needs --attach-mode");
                return ExitCode::from(exit::USAGE);
            };
            let floor = match probe::Floor::attach(mode) {
                Ok(floor) => floor,
                Err(e) => {
                    eprintln!("collector: {e}");
                    return ExitCode::from(e.exit_code());
                }
            };
            eprintln!("empty programs attached mode={mode}");
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let stopped = runtime.block_on(async {
                let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = terminate.recv() => Ok(()),
                    r = tokio::signal::ctrl_c() => r,
                }
            });
            drop(floor);
            match stopped {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("collector: waiting for a signal: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Events { paths, ring_buffer_bytes } => {
            let options = ProbeOptions { mode: cli.attach_mode, ring_buffer_bytes, ..ProbeOptions::default() };
            let probe = match Probe::start(&options) {
                Ok(probe) => probe,
                Err(e) => {
                    eprintln!("collector: {e}");
                    return ExitCode::from(e.exit_code());
                }
            };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            match runtime.block_on(events::run(probe, &paths)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("collector: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(filter: &str, format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Json => logs.json().flatten_event(true).init(),
        // Colours only for a person at a terminal; journald and log files get plain text.
        cli::LogFormat::Human => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
}

/// Why `run` stops: a log line in JSON when logs are JSON (a log pipeline must see it),
/// else plain text on stderr.
fn fatal(format: cli::LogFormat, message: &str) {
    match format {
        cli::LogFormat::Json => tracing::error!("{message}"),
        cli::LogFormat::Human => eprintln!("collector: {message}"),
    }
}
