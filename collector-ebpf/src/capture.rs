//! Which inode a path-based syscall (rename, unlink, truncate) touched, without a path walk.
//!
//! Syscall tracepoints see only the path strings. Inside the call the filesystem sets the
//! ctime of the inode it changes, and kernels from 6.13 on trace that (`timestamp` events,
//! raw tracepoints with the `struct inode *`). Every filesystem sets the moved/removed/
//! truncated file's ctime before the victim's of a replacing rename (ext4, xfs, tmpfs,
//! btrfs), and directories are skipped, so the first regular file seen is the one the call
//! is about. A rename also touches both parent directories: whether one of them is watched
//! tells a move into a watched directory even when the new name was absolute. Without these tracepoints the inode stays unknown and the daemon resolves it
//! from the path.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{
    emit, kernel,
    pending::{self, Op},
};

#[inline(always)]
fn capture(inode: u64) {
    let Some(call) = pending::current() else { return };
    // SAFETY: `call` is this thread's PENDING value pointer from a map lookup, valid for this
    // program's run; the verifier checks each access.
    unsafe {
        if !matches!((*call).op, Op::Rename | Op::Unlink | Op::Truncate) {
            return;
        }
        if kernel::inode_is_regular(inode) {
            if (*call).captured_inode == 0 {
                (*call).captured_inode = inode;
            }
        } else if (*call).op == Op::Rename
            && let Some(dir) = kernel::inode_key(inode)
            && emit::is_watched_dir(&dir)
        {
            (*call).touched_watched_dir = true;
        }
    }
}

#[raw_tracepoint(tracepoint = "inode_set_ctime_to_ts")]
pub fn raw_tp_inode_set_ctime_to_ts(ctx: RawTracePointContext) -> i32 {
    capture(ctx.arg::<*const u8>(0) as u64);
    0
}

#[raw_tracepoint(tracepoint = "ctime_ns_xchg")]
pub fn raw_tp_ctime_ns_xchg(ctx: RawTracePointContext) -> i32 {
    capture(ctx.arg::<*const u8>(0) as u64);
    0
}

#[raw_tracepoint(tracepoint = "ctime_xchg_skip")]
pub fn raw_tp_ctime_xchg_skip(ctx: RawTracePointContext) -> i32 {
    capture(ctx.arg::<*const u8>(0) as u64);
    0
}
