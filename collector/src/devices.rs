//! The kernel's identity of a file, found from user space: its superblock's device
//! (`s_dev`) and inode number, which is what the kernel programs see and report.
//!
//! `stat`'s `st_dev` is not always the superblock's device: btrfs gives each subvolume an
//! anonymous device of its own, and overlayfs may give a file the pseudo device of the layer
//! it comes from. The superblock's device is the one /proc/self/mountinfo shows for the
//! file's mount, which statx names (STATX_MNT_ID, 5.8+). Without it, `st_dev` is used.

use std::{
    collections::HashMap,
    ffi::CString,
    fs::File,
    io,
    os::unix::{ffi::OsStrExt as _, io::AsRawFd as _},
    path::Path,
    sync::Mutex,
};

use collector_common::InodeKey;

/// The kernel's `s_dev` encoding (`major << 20 | minor`) of a userspace `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    (libc::major(st_dev) << 20) | (libc::minor(st_dev) & 0xfffff)
}

/// The userspace `st_dev` (as `stat` prints it) of a kernel `s_dev`.
pub fn user_dev(s_dev: u32) -> u64 {
    libc::makedev(s_dev >> 20, s_dev & 0xfffff)
}

/// A file as the kernel programs know it, and as `stat` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    pub key: InodeKey,
    /// `stat`'s device: differs from the key's on btrfs (one per subvolume).
    pub st_dev: u64,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub nlink: u32,
}

impl FileId {
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// The file at `path` itself (a symlink is not followed).
pub fn of_path(path: &Path) -> io::Result<FileId> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    statx(libc::AT_FDCWD, &name, libc::AT_SYMLINK_NOFOLLOW)
}

/// The file `file` has open.
pub fn of_file(file: &File) -> io::Result<FileId> {
    statx(file.as_raw_fd(), c"", libc::AT_EMPTY_PATH)
}

/// The kernel's key of `path`'s file, or None if it cannot be looked at.
pub fn key_of_path(path: &Path) -> Option<InodeKey> {
    of_path(path).ok().map(|f| f.key)
}

fn statx(dirfd: i32, name: &std::ffi::CStr, flags: i32) -> io::Result<FileId> {
    // SAFETY: statx is plain data, valid when zeroed.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let mask = libc::STATX_BASIC_STATS | libc::STATX_MNT_ID;
    // SAFETY: `name` is NUL-terminated and `stx` is a valid buffer for the call.
    if unsafe { libc::statx(dirfd, name.as_ptr(), flags, mask, &mut stx) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let st_dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    let sb_dev = if stx.stx_mask & libc::STATX_MNT_ID != 0 { mount_dev(stx.stx_mnt_id, st_dev) } else { None };
    Ok(FileId {
        key: InodeKey::new(kernel_dev(sb_dev.unwrap_or(st_dev)), stx.stx_ino),
        st_dev,
        size: stx.stx_size,
        mode: u32::from(stx.stx_mode),
        uid: stx.stx_uid,
        nlink: stx.stx_nlink,
    })
}

/// The superblock device of mount `mnt_id`, as /proc/self/mountinfo shows it. Cached per
/// (mount, `st_dev`): a mount id reused by a later mount of another filesystem comes with
/// another `st_dev`, and so is looked up again.
fn mount_dev(mnt_id: u64, st_dev: u64) -> Option<u64> {
    static SEEN: Mutex<Option<HashMap<(u64, u64), u64>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(HashMap::new);
    if let Some(dev) = seen.get(&(mnt_id, st_dev)) {
        return Some(*dev);
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dev = parse_mountinfo(&mounts).find(|(id, _)| *id == mnt_id)?.1;
    seen.insert((mnt_id, st_dev), dev);
    Some(dev)
}

/// Each mount's id and superblock device (`st_dev` encoding) in mountinfo's text:
/// `36 35 98:0 /mnt1 /mnt/parent rw,... - ext3 /dev/root rw` (proc(5)).
fn parse_mountinfo(text: &str) -> impl Iterator<Item = (u64, u64)> + '_ {
    text.lines().filter_map(|line| {
        let mut fields = line.split(' ');
        let id = fields.next()?.parse().ok()?;
        let (major, minor) = fields.nth(1)?.split_once(':')?;
        Some((id, libc::makedev(major.parse().ok()?, minor.parse().ok()?)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip_between_kernel_and_user_encodings() {
        let st_dev = libc::makedev(259, 3);
        assert_eq!(kernel_dev(st_dev), (259 << 20) | 3);
        assert_eq!(user_dev(kernel_dev(st_dev)), st_dev);
    }

    #[test]
    fn mountinfo_lines_give_each_mount_its_superblock_device() {
        let text = "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    41 36 0:52 /@sub /mnt/sub rw - btrfs /dev/loop3 rw,subvol=/@sub\n";
        let mounts: Vec<_> = parse_mountinfo(text).collect();
        assert_eq!(mounts, vec![(36, libc::makedev(98, 0)), (41, libc::makedev(0, 52))]);
    }

    #[test]
    fn a_file_on_this_hosts_root_has_the_device_its_mount_shows() {
        // On ext4/xfs the two agree; what matters is that the mount was found.
        let id = of_path(Path::new("/proc/self/mountinfo")).unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(parse_mountinfo(&mounts).any(|(_, dev)| kernel_dev(dev) == id.key.dev), "{id:?}");
        let file = File::open("/proc/self/mountinfo").unwrap();
        assert_eq!(of_file(&file).unwrap().key, id.key);
    }
}
