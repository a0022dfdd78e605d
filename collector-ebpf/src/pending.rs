//! Syscalls in progress: what the enter hook learned (which file, which explicit offset,
//! which path argument), kept by pid_tgid until the exit hook knows the result.

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use collector_common::InodeKey;

use crate::{kernel::KPtr, maps::PENDING};

#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Write = 1,
    Read = 2,
    /// copy_file_range, sendfile, splice: `file` is the source, `peer_file` the destination.
    Copy = 3,
    /// truncate(2) by path, ftruncate(2) by fd.
    Truncate = 4,
    /// open*(2) with O_TRUNC (creations are seen at exit whatever the flags).
    Open = 5,
    Rename = 6,
    Unlink = 7,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    pub op: Op,
    /// open flags, or RWF_* flags of pwritev2.
    pub flags: u32,
    pub file: KPtr,
    /// The watched inode behind `file`, found at entry (write).
    pub inode: InodeKey,
    pub peer_file: KPtr,
    /// Offset given by the caller (pwrite, *off_in, ...), or -1 to use the file position.
    pub pos: i64,
    pub peer_pos: i64,
    /// User pointer to the path argument (rename target, unlinked path, truncated path).
    pub user_name: u64,
    /// Directory the path argument resolves against (rename: the new name's), and the
    /// descriptor it came from.
    pub base_dir: InodeKey,
    pub dfd: i32,
    /// Padding spelled out: the struct goes to bpf_map_update_elem from the stack, and
    /// verifiers before 6.x (5.15 here) refuse to let a helper read uninitialised bytes.
    pub _pad0: u32,
    /// rename: the old parent directory (exact once the VFS hook saw it, else the
    /// directory the old name resolves against) and the new one (VFS hook only).
    pub old_parent: InodeKey,
    pub new_parent: InodeKey,
    /// First regular file whose ctime changed during the call (see capture.rs).
    pub captured_inode: KPtr,
    /// write: the writer's buffer (user memory), for captured writes.
    pub buf: u64,
    /// rename: a watched directory is involved (ctime changed during the call, or the
    /// VFS hook saw it as the new parent).
    pub touched_watched_dir: bool,
    pub _pad1: [u8; 7],
    pub size_before: u64,
}

impl PendingCall {
    pub const fn new(op: Op) -> Self {
        Self {
            op,
            flags: 0,
            file: 0,
            inode: InodeKey::new(0, 0),
            peer_file: 0,
            pos: -1,
            peer_pos: -1,
            user_name: 0,
            base_dir: InodeKey::new(0, 0),
            dfd: 0,
            _pad0: 0,
            old_parent: InodeKey::new(0, 0),
            new_parent: InodeKey::new(0, 0),
            captured_inode: 0,
            buf: 0,
            touched_watched_dir: false,
            _pad1: [0; 7],
            size_before: 0,
        }
    }
}

#[inline(always)]
pub fn begin(call: &PendingCall) {
    let _ = PENDING.insert(bpf_get_current_pid_tgid(), call, 0);
}

/// Takes the `op` call this thread began, if that is what it began (a nested call of
/// another kind leaves the outer one in place).
#[inline(always)]
pub fn finish(op: Op) -> Option<PendingCall> {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the entry is keyed by this thread's pid_tgid, and only this thread inserts or
    // removes it, so it cannot be removed or reused while it is copied out.
    let call = unsafe { PENDING.get(id) }.copied()?;
    if call.op != op {
        return None;
    }
    let _ = PENDING.remove(id);
    Some(call)
}

/// The call in progress on this thread, to annotate from a hook inside it.
#[inline(always)]
pub fn current() -> Option<*mut PendingCall> {
    PENDING.get_ptr_mut(bpf_get_current_pid_tgid())
}

/// Whether this thread is inside a sendfile/copy_file_range that copy.rs reports whole.
#[inline(always)]
pub fn copy_in_progress() -> bool {
    // SAFETY: the entry is keyed by this thread's pid_tgid, and only this thread inserts or
    // removes it, so it cannot be removed or reused while `op` is read.
    unsafe { PENDING.get(bpf_get_current_pid_tgid()) }.is_some_and(|c| c.op == Op::Copy)
}
