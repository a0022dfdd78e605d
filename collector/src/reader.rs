//! The reader: how the collector opens and reads log files. Files are opened without
//! following links planted by others, held by descriptor, found again by inode when their
//! name moved, and read with pread at the offsets the engine asks for.

use std::{
    fs::File,
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirEntryExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use collector_common::InodeKey;

use crate::devices;

/// Up to `want` bytes of `file` from `at`, read straight into fresh memory: records are
/// slices of it, so it is not reused, and zeroing a megabyte per read only to overwrite it
/// showed in profiles.
pub fn read_new(file: &File, at: u64, want: usize) -> std::io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(want);
    let n = loop {
        // SAFETY: pread writes at most `want` bytes into the spare capacity, and only the
        // `n` bytes it reports are then marked initialised.
        let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), want, at as libc::off_t) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: pread reported writing `n` bytes (n <= want <= capacity) into the spare
    // capacity, so the first `n` bytes are initialised.
    unsafe { buf.set_len(n) };
    Ok(buf)
}

/// CLOCK_BOOTTIME in nanoseconds: the clock of the kernel events.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a local timespec that clock_gettime fills in; no other memory is passed.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The size of a held file (`None` when fstat fails). Plain fstat: std's metadata is a
/// statx by empty path, which looks the empty name up on every call (the sweep asks for
/// every held file's size).
pub fn size_of(file: &File) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` into `st` when it returns 0, and reads nothing.
    let done = unsafe { libc::fstat(file.as_raw_fd(), st.as_mut_ptr()) } == 0;
    // SAFETY: initialized by the fstat that succeeded.
    done.then(|| unsafe { st.assume_init() }.st_size as u64)
}

/// Where `inode`, last known at `last_path`, lives now: its old directory first, then
/// `dirs` (the watched ones). A directory that cannot be read, or an entry gone meanwhile,
/// is skipped.
pub fn locate<'a>(inode: InodeKey, last_path: &Path, dirs: impl Iterator<Item = &'a PathBuf>) -> Option<PathBuf> {
    let dirs = last_path.parent().map(Path::to_owned).into_iter().chain(dirs.cloned());
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if entry.ino() == inode.ino
                && let Ok(id) = devices::of_path(&entry.path())
                && id.is_file()
                && id.key == inode
            {
                return Some(entry.path());
            }
        }
    }
    None
}

/// Opens `inode`, last known at `path`. Events can be handled well after they happened (a
/// slow sink), and the name may hold another file by then (logrotate shifting its copies):
/// the file is checked to be that inode, and otherwise looked for by inode number in its
/// directory and `dirs`.
pub fn open_inode<'a>(inode: InodeKey, path: &Path, dirs: impl Iterator<Item = &'a PathBuf>) -> Option<File> {
    let is_it = |f: &File| devices::of_file(f).is_ok_and(|id| id.key == inode);
    open_safely(path).filter(is_it).or_else(|| open_safely(&locate(inode, path, dirs)?).filter(is_it))
}

/// Opens a log file for reading without following a symlink, and refuses a hard link that
/// someone other than root placed in a directory others can write to: the collector is
/// root and must not read, through a link, what the link's creator could not.
pub fn open_safely(path: &Path) -> Option<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            // Gone before its event was handled (a temporary file): nothing to say.
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), "cannot open: {e}");
            }
        })
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    if meta.nlink() > 1 {
        let dir = path.parent().and_then(|d| std::fs::metadata(d).ok())?;
        let others_can_write = dir.mode() & 0o022 != 0 || dir.uid() != 0;
        let owners_own_dir = meta.uid() == dir.uid() && dir.uid() != 0 && dir.mode() & 0o022 == 0;
        if others_can_write && !owners_own_dir {
            tracing::warn!(path = %path.display(), owner = meta.uid(), links = meta.nlink(), "skipping a hard-linked file in a directory others can write to (it may link to a file they cannot read)");
            return None;
        }
    }
    Some(file)
}
