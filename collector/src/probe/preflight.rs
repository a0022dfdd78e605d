//! What the kernel and the process must offer before anything is loaded. Each failure is one
//! line that names what is missing, and the daemon exits with status 69.

use std::path::{Path, PathBuf};

use aya::maps::MapType;

/// Where the running kernel's BTF is read from. `COLLECTOR_BTF_PATH` overrides it, so the
/// "no BTF" path can be exercised on a kernel that has BTF.
pub fn btf_path() -> PathBuf {
    std::env::var_os("COLLECTOR_BTF_PATH").map_or_else(|| PathBuf::from("/sys/kernel/btf/vmlinux"), PathBuf::from)
}

pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("this kernel has no BTF ({0} is missing): collector needs Linux >= 5.8 built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf(PathBuf),
    #[error(
        "missing capabilities {missing}: run as root, or grant CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH (or CAP_SYS_ADMIN)"
    )]
    Capabilities { missing: String },
    #[error("this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux >= 5.8): {0}")]
    NoRingBuffer(String),
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed: {0}")]
    Tracefs(std::io::Error),
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Checks in the order an operator would fix them.
pub fn check() -> Result<(), PreflightError> {
    let btf = btf_path();
    if !btf.exists() {
        return Err(PreflightError::NoBtf(btf));
    }
    check_capabilities(effective_capabilities())?;
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => {}
        Ok(false) => return Err(PreflightError::NoRingBuffer("map type not supported".into())),
        Err(e) => return Err(PreflightError::NoRingBuffer(e.to_string())),
    }
    mount_tracefs()
}

/// Whether this process has the capabilities the programs and the file reading need.
pub fn capabilities() -> Result<(), PreflightError> {
    check_capabilities(effective_capabilities())
}

fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .unwrap_or(0)
}

fn check_capabilities(effective: u64) -> Result<(), PreflightError> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        missing.extend(["CAP_BPF", "CAP_PERFMON"]);
    }
    if !has(CAP_DAC_READ_SEARCH) {
        missing.push("CAP_DAC_READ_SEARCH");
    }
    if missing.is_empty() { Ok(()) } else { Err(PreflightError::Capabilities { missing: missing.join(", ") }) }
}

/// Tracepoints are attached through tracefs; a fresh container or VM may not have it.
fn mount_tracefs() -> Result<(), PreflightError> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    // SAFETY: all three strings are NUL-terminated C literals, and `data` may be null for tracefs.
    let ok = unsafe {
        libc::mount(c"tracefs".as_ptr(), c"/sys/kernel/tracing".as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null())
    } == 0;
    if ok { Ok(()) } else { Err(PreflightError::Tracefs(std::io::Error::last_os_error())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_errors_name_what_is_missing() {
        let all = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_DAC_READ_SEARCH);
        assert!(check_capabilities(all).is_ok());
        assert!(check_capabilities((1 << CAP_SYS_ADMIN) | (1 << CAP_DAC_READ_SEARCH)).is_ok());
        let err = check_capabilities(1 << CAP_BPF).unwrap_err().to_string();
        assert!(err.contains("CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH"), "{err}");
        let err = check_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).unwrap_err().to_string();
        assert!(err.contains("missing capabilities CAP_DAC_READ_SEARCH:"), "{err}");
    }
}
