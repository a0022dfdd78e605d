//! Exit statuses (README, "Exit statuses"). The unit's `RestartPreventExitStatus=78` keeps
//! systemd from restarting a collector whose config is wrong; every other failure restarts.

/// `run` stopped on an error at run time; also any other failure not listed here.
pub const FAILURE: u8 = 1;
/// The command line is wrong (clap's own status).
pub const USAGE: u8 = 2;
/// EX_NOINPUT: a file named on the command line cannot be read.
pub const NO_INPUT: u8 = 66;
/// EX_UNAVAILABLE: the host lacks what the kernel programs need (BTF, a capability, an
/// attach mode that loads).
pub const UNAVAILABLE: u8 = 69;
/// EX_TEMPFAIL: the config could not be fetched (SSM unreachable or throttling): a later
/// try may work.
pub const TEMPORARY: u8 = 75;
/// EX_CONFIG: the config is wrong; nothing changes until it is fixed.
pub const CONFIG: u8 = 78;

pub fn of_config_error(e: &crate::config::ConfigError) -> u8 {
    if e.temporary { TEMPORARY } else { CONFIG }
}
