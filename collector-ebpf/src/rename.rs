//! Renames: rename, renameat, renameat2. The event names the moved inode, the new name as
//! the caller passed it with the directory it resolves against, and the directories, so the
//! daemon knows the new path without looking at the filesystem again.
//!
//! In every mode the syscall tracepoints bracket the call (they carry the name); inside it,
//! vfs_rename's fentry/fexit or kprobe/kretprobe fill in the exact inode and parents, and in
//! tracepoint mode capture.rs fills in the inode from the ctime it sets.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use collector_common::{EventKind, InodeKey};

use crate::{
    emit::{self, Dirs, Name},
    kernel::{self, KPtr},
    pending::{self, Op, PendingCall},
    write::{arg, ret},
};

/// One body for every attach mode. A file moved into a watched directory is watched from
/// now on, like a created one, so no write right after the rename slips by (the daemon
/// drops it again if its new name does not match).
#[inline(always)]
pub fn on_rename(inode: InodeKey, into_watched_dir: bool, dirs: Dirs, name: Name) {
    if !inode.is_unknown() && into_watched_dir {
        emit::watch(&inode);
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

#[inline(always)]
fn end(ctx: &TracePointContext) {
    let Some(call) = pending::finish(Op::Rename) else { return };
    if ret(ctx) != 0 {
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
        on_rename(inode, into_watched_dir, dirs, Name::User(call.user_name));
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
    end(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_renameat")]
pub fn tp_sys_exit_renameat(ctx: TracePointContext) {
    end(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_renameat2")]
pub fn tp_sys_exit_renameat2(ctx: TracePointContext) {
    end(&ctx);
}

/// vfs_rename(struct renamedata *rd), inside a rename syscall: the moving dentry, its inode
/// and old directory.
#[inline(always)]
fn vfs_rename_begin(rd: KPtr) {
    let Some(call) = pending::current() else { return };
    let Some(dentry) = kernel::renamedata_old_dentry(rd) else { return };
    let Some(inode) = kernel::dentry_inode(dentry) else { return };
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
