//! Renames: rename, renameat, renameat2. The event names the moved inode, the new name as
//! the caller passed it with the directory it resolves against, and the directories, so the
//! daemon knows the new path without looking at the filesystem again.
//!
//! Something brackets the call and carries the name as the caller passed it: the syscall
//! tracepoints in tracepoint mode, do_renameat2 (the body of every rename syscall and of
//! io_uring's) in fentry/kprobe modes. Inside it, vfs_rename's fentry/fexit or
//! kprobe/kretprobe fill in the exact inode and parents, and in tracepoint mode capture.rs
//! fills in the inode from the ctime it sets.
//!
//! fentry/kprobe modes attach no syscall tracepoint: one attached puts every syscall of every
//! task on the tracing path (BENCHMARKS.md, writer-overhead: the floor rows).

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use collector_common::{EventKind, InodeKey};

use crate::{
    args::{fentry_arg, fexit_slot, kprobe_arg},
    emit::{self, Dirs, Name},
    kernel::{self, KPtr},
    maps::offsets,
    pending::{self, Op, PendingCall},
    write::{arg, ret},
};

/// One body for every attach mode. A file moved into a watched directory is watched from
/// now on, like a created one, so no write right after the rename slips by (the daemon
/// drops it again if its new name does not match). `inode_ptr` is its `struct inode`.
#[inline(always)]
pub fn on_rename(inode: InodeKey, inode_ptr: KPtr, into_watched_dir: bool, dirs: Dirs, name: Name) {
    if !inode.is_unknown() && into_watched_dir {
        emit::watch_moved(&inode, kernel::inode_size(inode_ptr).unwrap_or(0));
    }
    emit::named(EventKind::Rename, inode, dirs, name);
}

#[inline(always)]
fn begin(old_dfd: i64, new_dfd: i64, new_name: i64) {
    let mut call = PendingCall::new(Op::Rename);
    call.user_name = new_name as u64;
    call.dfd = new_dfd as i32;
    call.base_dir = kernel::base_dir_of(new_dfd).unwrap_or_default();
    call.old_parent = kernel::base_dir_of(old_dfd).unwrap_or_default();
    pending::begin(&call);
}

/// The call returned `result`.
#[inline(always)]
fn end(result: i64) {
    let Some(call) = pending::finish(Op::Rename) else { return };
    if result != 0 {
        return;
    }
    let inode = kernel::inode_key(call.captured_inode).unwrap_or_default();
    // Where the new directory is not known exactly, a watched directory the call touched
    // stands in (it may be the old one: the daemon sorts that out).
    let into_watched_dir = emit::is_watched_dir(&call.base_dir) || call.touched_watched_dir;
    let relevant =
        inode.is_unknown() || emit::is_watched(&inode) || into_watched_dir || emit::is_watched_dir(&call.old_parent);
    if relevant {
        let dirs =
            Dirs { new_parent: call.new_parent, old_parent: call.old_parent, base_dir: call.base_dir, dfd: call.dfd };
        on_rename(inode, call.captured_inode, into_watched_dir, dirs, Name::User(call.user_name));
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_rename")]
pub fn tp_sys_enter_rename(ctx: TracePointContext) {
    begin(-100, -100, arg(&ctx, 1));
}
#[tracepoint(category = "syscalls", name = "sys_enter_renameat")]
pub fn tp_sys_enter_renameat(ctx: TracePointContext) {
    begin(arg(&ctx, 0), arg(&ctx, 2), arg(&ctx, 3));
}
#[tracepoint(category = "syscalls", name = "sys_enter_renameat2")]
pub fn tp_sys_enter_renameat2(ctx: TracePointContext) {
    begin(arg(&ctx, 0), arg(&ctx, 2), arg(&ctx, 3));
}
#[tracepoint(category = "syscalls", name = "sys_exit_rename")]
pub fn tp_sys_exit_rename(ctx: TracePointContext) {
    end(ret(&ctx));
}
#[tracepoint(category = "syscalls", name = "sys_exit_renameat")]
pub fn tp_sys_exit_renameat(ctx: TracePointContext) {
    end(ret(&ctx));
}
#[tracepoint(category = "syscalls", name = "sys_exit_renameat2")]
pub fn tp_sys_exit_renameat2(ctx: TracePointContext) {
    end(ret(&ctx));
}

/// do_renameat2(olddfd, from, newdfd, to, flags): `to` is a `struct filename *`, freed
/// before the call returns, so the user pointer it was copied from is kept, as the syscall
/// tracepoints keep theirs.
#[inline(always)]
fn renameat2_begin(olddfd: u64, newdfd: u64, to: KPtr) {
    let name = kernel::filename_uptr(to).unwrap_or(0);
    begin(olddfd as i64, newdfd as i64, name as i64);
}

#[fentry(function = "do_renameat2")]
pub fn fentry_do_renameat2(ctx: FEntryContext) -> i32 {
    let o = offsets();
    renameat2_begin(
        fentry_arg(&ctx, o.do_renameat2_olddfd),
        fentry_arg(&ctx, o.do_renameat2_newdfd),
        fentry_arg(&ctx, o.do_renameat2_to),
    );
    0
}
#[fexit(function = "do_renameat2")]
pub fn fexit_do_renameat2(ctx: FExitContext) -> i32 {
    end(fexit_slot(&ctx, offsets().do_renameat2_params) as i32 as i64);
    0
}
#[kprobe(function = "do_renameat2")]
pub fn kprobe_do_renameat2(ctx: ProbeContext) -> u32 {
    let o = offsets();
    renameat2_begin(
        kprobe_arg(&ctx, o.do_renameat2_olddfd),
        kprobe_arg(&ctx, o.do_renameat2_newdfd),
        kprobe_arg(&ctx, o.do_renameat2_to),
    );
    0
}
#[kretprobe(function = "do_renameat2")]
pub fn kretprobe_do_renameat2(ctx: RetProbeContext) -> u32 {
    end(ctx.ret::<i32>() as i64);
    0
}

/// vfs_rename(struct renamedata *rd), inside a rename call: the moving dentry, its inode
/// and old directory.
#[inline(always)]
fn vfs_rename_begin(rd: KPtr) {
    let Some(call) = pending::current() else { return };
    let Some(dentry) = kernel::renamedata_old_dentry(rd) else { return };
    let Some(inode) = kernel::dentry_inode(dentry) else { return };
    // SAFETY: `call` is this thread's PENDING value pointer from a map lookup, valid for this
    // program's run; the verifier checks each access.
    unsafe {
        if (*call).op != Op::Rename || !kernel::inode_is_regular(inode) {
            return;
        }
        (*call).file = dentry;
        (*call).captured_inode = inode;
        if let Some(old_parent) = kernel::dentry_parent(dentry).and_then(kernel::dentry_key) {
            (*call).old_parent = old_parent;
        }
    }
}

/// On success the same dentry carries the new name and parent (d_move).
#[inline(always)]
fn vfs_rename_end(result: i64) {
    let Some(call) = pending::current() else { return };
    // SAFETY: `call` is this thread's PENDING value pointer from a map lookup, valid for this
    // program's run; the verifier checks each access.
    unsafe {
        if (*call).op != Op::Rename || (*call).file == 0 || result != 0 {
            return;
        }
        if let Some(new_parent) = kernel::dentry_parent((*call).file).and_then(kernel::dentry_key) {
            (*call).new_parent = new_parent;
            (*call).touched_watched_dir = emit::is_watched_dir(&new_parent);
        }
    }
}

#[fentry(function = "vfs_rename")]
pub fn fentry_vfs_rename(ctx: FEntryContext) -> i32 {
    vfs_rename_begin(ctx.arg(0));
    0
}
#[fexit(function = "vfs_rename")]
pub fn fexit_vfs_rename(ctx: FExitContext) -> i32 {
    vfs_rename_end(ctx.arg::<i32>(1) as i64);
    0
}
#[kprobe(function = "vfs_rename")]
pub fn kprobe_vfs_rename(ctx: ProbeContext) -> u32 {
    if let Some(rd) = ctx.arg(0) {
        vfs_rename_begin(rd);
    }
    0
}
#[kretprobe(function = "vfs_rename")]
pub fn kretprobe_vfs_rename(ctx: RetProbeContext) -> u32 {
    vfs_rename_end(ctx.ret::<i32>() as i64);
    0
}
