//! `collector doctor`: what this host offers the collector, in the order an operator would
//! fix it: the kernel and its BTF, the process's capabilities, kernel lockdown, which attach
//! modes load, what `run` attaches each hook family with and why not better, and (given a
//! config) the filesystem under each of its patterns.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path, process::ExitCode};

use crate::{
    exit,
    probe::{AttachMode, Probe, ProbeOptions, preflight},
};

/// Prints the report; 0 when the automatic choice loads, else `exit::UNAVAILABLE` (or the config's
/// status when a config was given and is wrong).
pub fn run(config: Option<&Path>) -> ExitCode {
    println!("collector {}", env!("CARGO_PKG_VERSION"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel: {} {}", release.trim(), std::env::consts::ARCH);
    let btf = preflight::btf_path();
    println!("btf: {} ({})", btf.display(), if btf.exists() { "present" } else { "missing" });
    match preflight::capabilities() {
        Ok(()) => println!("capabilities: enough"),
        Err(e) => println!("capabilities: {e}"),
    }
    println!("lockdown: {}", lockdown().unwrap_or_else(|| "unknown (no /sys/kernel/security/lockdown)".into()));
    for mode in AttachMode::BEST_FIRST {
        match Probe::start(&ProbeOptions { mode: Some(mode), ..ProbeOptions::default() }) {
            Ok(probe) if probe.attachment().summary() == mode.name() => println!("attach mode {mode}: supported"),
            // Forced fentry: the families fentry cannot take fall back to kprobe.
            Ok(probe) => println!("attach mode {mode}: supported, as {}", probe.attachment().summary()),
            Err(e) => println!("attach mode {mode}: not supported ({e})"),
        }
    }
    // What `run` chooses on its own, and why each family is not on a better mechanism.
    let any = match Probe::start(&ProbeOptions::default()) {
        Ok(probe) => {
            let attached = probe.attachment();
            let refused = |hook: &crate::probe::attach::HookChoice| -> String {
                let each: Vec<String> = hook.refused.iter().map(|(m, why)| format!("{m}: {why}")).collect();
                if each.is_empty() { String::new() } else { format!(" (refused {})", each.join("; ")) }
            };
            // Every family alike (one mode for all): one line.
            match attached.hooks.first() {
                Some(first) if attached.alike() => println!("automatic: {}{}", attached.mode, refused(first)),
                _ => {
                    println!("automatic: {}", attached.summary());
                    for hook in &attached.hooks {
                        println!("hook {}: {}{}", hook.hook, hook.mode, refused(hook));
                    }
                }
            }
            true
        }
        Err(e) => {
            println!("automatic: none ({e})");
            false
        }
    };
    if let Some(source) = config {
        match crate::config::Config::load(source) {
            Ok(config) => {
                for flow in &config.flows {
                    for pattern in &flow.paths {
                        println!("flow {} path {pattern}: {}", flow.name, filesystem_of_pattern(pattern));
                    }
                }
            }
            Err(e) => {
                println!("config: {e}");
                return ExitCode::from(exit::of_config_error(&e));
            }
        }
    }
    if any { ExitCode::SUCCESS } else { ExitCode::from(exit::UNAVAILABLE) }
}

/// The active lockdown mode: the bracketed word of /sys/kernel/security/lockdown. Under
/// `confidentiality`, BPF programs cannot read kernel memory: fentry and kprobe modes fail.
fn lockdown() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    let active = text.split_whitespace().find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))?;
    Some(active.to_owned())
}

/// The filesystem of the deepest existing directory a pattern starts with.
fn filesystem_of_pattern(pattern: &str) -> String {
    let literal: String = pattern.chars().take_while(|c| !matches!(c, '*' | '?' | '[')).collect();
    // The directory part: up to the last `/` before the first wildcard.
    let cut = literal.rfind('/').unwrap_or(0);
    let mut dir = Path::new(if cut == 0 { "/" } else { &literal[..cut] });
    while !dir.is_dir() {
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return "unknown (no such directory)".into(),
        }
    }
    match filesystem_type(dir) {
        Some(magic) => describe(magic, dir),
        None => format!("unknown (statfs {} failed)", dir.display()),
    }
}

fn filesystem_type(dir: &Path) -> Option<i64> {
    let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed local `st` and reads only the NUL-terminated `path`.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// The filesystem's name from its magic number (include/uapi/linux/magic.h), with what it
/// means for the collector.
fn describe(magic: i64, dir: &Path) -> String {
    let name = match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x858458F6 => "ramfs",
        0x794C_7630 => "overlayfs",
        0x6969 => return format!("nfs ({}): writes made on other hosts are not seen", dir.display()),
        0x6573_5546 => return format!("fuse ({}): writes made through the FUSE server are not seen", dir.display()),
        other => return format!("unknown type {other:#x} ({}): not tested", dir.display()),
    };
    format!("{name} ({})", dir.display())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pattern_is_looked_up_from_its_literal_directory() {
        assert!(super::filesystem_of_pattern("/proc/*/status").starts_with("unknown type"), "procfs is not a log fs");
        assert!(super::filesystem_of_pattern("/nonexistent/dir/*.log").contains("(/)"), "the nearest existing dir");
        assert_eq!(super::describe(0x9123_683E, std::path::Path::new("/d")), "btrfs (/d)");
        assert!(super::describe(0x6969, std::path::Path::new("/n")).contains("other hosts"));
    }
}
