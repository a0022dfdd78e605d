//! The only place that knows kernel struct layout: every read goes through the offsets the
//! daemon took from the running kernel's BTF, so no layout is compiled in.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use collector_common::{InodeKey, S_IFMT, S_IFREG};

use crate::maps::offsets;

/// A kernel pointer (`struct file *`, `struct inode *`, ...), as an address.
pub type KPtr = u64;

#[inline(always)]
fn read<T>(base: KPtr, offset: u32) -> Option<T> {
    Probe::read(base, offset)
}

/// How a program loads through a kernel pointer. The reads of the hot paths (is this file
/// watched, how long is it) are generic over it.
pub trait Access {
    /// Whether a load costs next to nothing (so a check that spares a lookup pays).
    const CHEAP: bool;

    fn read<T>(base: KPtr, offset: u32) -> Option<T>;

    #[inline(always)]
    fn inode_is_regular(inode: KPtr) -> bool {
        Self::read::<u16>(inode, offsets().inode_mode).is_some_and(|m| m & S_IFMT == S_IFREG)
    }

    #[inline(always)]
    fn file_inode(file: KPtr) -> Option<KPtr> {
        Self::read(file, offsets().file_inode)
    }

    #[inline(always)]
    fn inode_key(inode: KPtr) -> Option<InodeKey> {
        let o = offsets();
        let ino: u64 = Self::read(inode, o.inode_ino)?;
        let sb: KPtr = Self::read(inode, o.inode_sb)?;
        let dev: u32 = Self::read(sb, o.sb_dev)?;
        Some(InodeKey::new(dev, ino))
    }

    #[inline(always)]
    fn inode_size(inode: KPtr) -> Option<u64> {
        Self::read(inode, offsets().inode_size)
    }

    /// The file behind `file` is known to be shorter than `end` bytes (a size that cannot
    /// be read is not: a write is called cut only on evidence). Inlined: a trusted kernel
    /// pointer (fentry's arguments) cannot be passed to a BPF subprogram.
    #[inline(always)]
    fn file_short_of(file: KPtr, end: u64) -> bool {
        Self::file_inode(file).and_then(Self::inode_size).is_some_and(|size| size < end)
    }
}

/// A copy through bpf_probe_read_kernel: works on any address, and is a helper call (some
/// 80 instructions each, measured in the 6.12 guest).
pub enum Probe {}

impl Access for Probe {
    const CHEAP: bool = false;

    #[inline(always)]
    fn read<T>(base: KPtr, offset: u32) -> Option<T> {
        if base == 0 {
            return None;
        }
        // SAFETY: bpf_probe_read_kernel accepts any address and returns an error on a fault, which
        // becomes None here.
        unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
    }

    /// i_sb and i_ino lie a few words apart (i_mapping and, with LSMs, i_security between):
    /// one read of the words from i_sb takes both, a helper call less on every write of the
    /// host in tracepoint mode.
    #[inline(always)]
    fn inode_key(inode: KPtr) -> Option<InodeKey> {
        let o = offsets();
        let (sb, ino) = match o.inode_ino.wrapping_sub(o.inode_sb) {
            8 => words::<2>(inode, o.inode_sb).map(|w| (w[0], w[1]))?,
            16 => words::<3>(inode, o.inode_sb).map(|w| (w[0], w[2]))?,
            24 => words::<4>(inode, o.inode_sb).map(|w| (w[0], w[3]))?,
            _ => (Self::read::<KPtr>(inode, o.inode_sb)?, Self::read::<u64>(inode, o.inode_ino)?),
        };
        let dev: u32 = Self::read(sb, o.sb_dev)?;
        Some(InodeKey::new(dev, ino))
    }
}

/// `N` consecutive 64-bit words at `base + offset`, in one read.
#[inline(always)]
fn words<const N: usize>(base: KPtr, offset: u32) -> Option<[u64; N]> {
    Probe::read(base, offset)
}

/// A plain load through a pointer the verifier knows the BTF type of: the struct arguments
/// of fentry/fexit programs, and the struct pointers loaded through those. It checks each
/// load against the type (the offset is a constant to it: OFFSETS is a frozen read-only
/// global) and the JIT makes it a load that reads 0 on a fault. Only for such pointers:
/// the verifier refuses a load through a plain number.
pub enum Typed {}

impl Access for Typed {
    const CHEAP: bool = true;

    #[inline(always)]
    fn read<T>(base: KPtr, offset: u32) -> Option<T> {
        if base == 0 {
            return None;
        }
        // SAFETY: only used on BTF-typed kernel pointers: the verifier checks the load against the
        // type, and the JIT makes it a load that reads 0 on a fault.
        Some(unsafe { core::ptr::read((base + offset as u64) as *const T) })
    }
}

/// `current->files->fdt->fd[fd]`, or None for a closed or out-of-range descriptor.
#[inline(always)]
pub fn file_of_fd(fd: i64) -> Option<KPtr> {
    let fd = fd as i32;
    if fd < 0 {
        return None;
    }
    let o = offsets();
    // SAFETY: the helper takes no arguments; the task address it returns is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let files: KPtr = read(task, o.task_files)?;
    let fdt: KPtr = read(files, o.files_fdt)?;
    // Every write of the host in tracepoint mode comes here, and each read is a helper
    // call: where max_fds and fd sit side by side (unsigned int, then the array pointer, as
    // on every kernel so far) one read takes both.
    let (max_fds, fd_array) = if o.fdtable_fd == o.fdtable_max_fds + 8 {
        let pair: [u64; 2] = read(fdt, o.fdtable_max_fds)?;
        (pair[0] as u32, pair[1])
    } else {
        (read::<u32>(fdt, o.fdtable_max_fds)?, read::<KPtr>(fdt, o.fdtable_fd)?)
    };
    if fd as u64 >= max_fds as u64 {
        return None;
    }
    let file: KPtr = read(fd_array, (fd as u32).wrapping_mul(8))?;
    (file != 0).then_some(file)
}

#[inline(always)]
pub fn file_inode(file: KPtr) -> Option<KPtr> {
    Probe::file_inode(file)
}

#[inline(always)]
pub fn file_pos(file: KPtr) -> Option<i64> {
    read(file, offsets().file_pos)
}

#[inline(always)]
pub fn file_mode(file: KPtr) -> Option<u32> {
    read(file, offsets().file_mode)
}

#[inline(always)]
pub fn file_flags(file: KPtr) -> Option<u32> {
    read(file, offsets().file_flags)
}

#[inline(always)]
pub fn file_dentry(file: KPtr) -> Option<KPtr> {
    read(file, offsets().file_dentry)
}

#[inline(always)]
pub fn inode_key(inode: KPtr) -> Option<InodeKey> {
    Probe::inode_key(inode)
}

#[inline(always)]
pub fn inode_size(inode: KPtr) -> Option<u64> {
    Probe::inode_size(inode)
}

#[inline(always)]
pub fn inode_is_regular(inode: KPtr) -> bool {
    Probe::inode_is_regular(inode)
}

#[inline(always)]
pub fn dentry_inode(dentry: KPtr) -> Option<KPtr> {
    read(dentry, offsets().dentry_inode)
}

#[inline(always)]
pub fn dentry_parent(dentry: KPtr) -> Option<KPtr> {
    read(dentry, offsets().dentry_parent)
}

/// `dentry->d_name.name`: a NUL-terminated kernel string.
#[inline(always)]
pub fn dentry_name(dentry: KPtr) -> Option<KPtr> {
    read(dentry, offsets().dentry_name)
}

/// The directory a `*at()` call resolves relative names against: `dfd`'s directory, or the
/// task's cwd for AT_FDCWD.
#[inline(always)]
pub fn base_dir_of(dfd: i64) -> Option<InodeKey> {
    const AT_FDCWD: i32 = -100;
    // An `int` argument: only the low 32 bits of the register are meaningful.
    let dfd = dfd as i32;
    let dentry = if dfd == AT_FDCWD {
        let o = offsets();
        // SAFETY: the helper takes no arguments; the task address it returns is only read through
        // bpf_probe_read_kernel.
        let task = unsafe { bpf_get_current_task() };
        let fs: KPtr = read(task, o.task_fs)?;
        read::<KPtr>(fs, o.fs_pwd_dentry)?
    } else {
        file_dentry(file_of_fd(dfd as i64)?)?
    };
    inode_key(dentry_inode(dentry)?)
}

/// A `loff_t` the kernel keeps behind a pointer (vfs_write's `*pos`, ...).
#[inline(always)]
pub fn deref_pos(ptr: KPtr) -> Option<i64> {
    read(ptr, 0)
}

#[inline(always)]
pub fn dentry_key(dentry: KPtr) -> Option<InodeKey> {
    inode_key(dentry_inode(dentry)?)
}

/// `rd->old_dentry` of vfs_rename's `struct renamedata *rd`.
#[inline(always)]
pub fn renamedata_old_dentry(rd: KPtr) -> Option<KPtr> {
    read(rd, offsets().renamedata_old_dentry)
}

/// `name->uptr` of a `struct filename *`: the user string it was copied from.
#[inline(always)]
pub fn filename_uptr(name: KPtr) -> Option<u64> {
    read(name, offsets().filename_uptr)
}
