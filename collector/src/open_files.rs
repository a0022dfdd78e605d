//! The open-files limit. The collector holds one descriptor per file it reads (until the
//! file is drained), and systemd and most shells start services with a soft limit of 1,024:
//! a host or node with more logs than that would fail to open the rest. The soft limit is
//! raised to the hard one at start-up (the unit sets the hard one: LimitNOFILE), and the
//! hard one, where it is below what `max_files` needs, as far as the kernel lets root
//! (fs.nr_open).

/// Descriptors beside the files held: the ring, the maps, sockets, the state directory.
const SPARE: u64 = 1024;

/// Raises the soft RLIMIT_NOFILE to the hard limit, and the hard limit first to what
/// `max_files` held files need if it is lower (and may be raised); returns (before, after).
pub fn raise_for(max_files: u64) -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a local rlimit for getrlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(limit.rlim_max);
    let wanted = (max_files + SPARE).min(nr_open);
    if limit.rlim_max < wanted {
        let raised = libc::rlimit { rlim_cur: wanted, rlim_max: wanted };
        // SAFETY: setrlimit only reads `raised`, a local rlimit. Refused without
        // CAP_SYS_RESOURCE: the hard limit then stays as it is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads `limit`, a local rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// How many files may be held with `limit` descriptors: the rest stay for what the
/// collector needs besides (the kernel's maps and ring, sockets to the sink, the state
/// directory). Past it, an open that fails would take those down with it.
pub fn files_within(limit: u64) -> u64 {
    limit.saturating_sub((limit / 4).min(256))
}

/// The soft RLIMIT_NOFILE now.
pub fn soft_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a local rlimit for getrlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    #[test]
    fn some_descriptors_stay_for_the_rest() {
        assert_eq!([1024, 20_000, 100].map(super::files_within), [768, 19_744, 75]);
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let (_, after) = super::raise_for(0).unwrap();
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `limit` is a local rlimit for getrlimit to fill in.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!((limit.rlim_cur, after), (limit.rlim_max, limit.rlim_max));
    }
}
