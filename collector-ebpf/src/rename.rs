//! Renames: rename, renameat, renameat2. The event names the moved inode, the directories
//! the old and new names resolve against, and the new name as the caller passed it, so the
//! daemon knows the new path without looking at the filesystem again.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use collector_common::{EventKind, InodeKey};

use crate::{
    emit::{self, Name},
    kernel::{self, KPtr},
    pending::{self, Op, PendingCall},
    write::{arg, ret},
};

/// One hook body for every attach mode. A file renamed into a watched directory is watched
/// from now on, like a created one, so no write right after the rename slips by (the
/// daemon drops it again if its new name does not match).
#[inline(always)]
pub fn on_rename(inode: InodeKey, new_parent: InodeKey, old_parent: InodeKey, into_watched_dir: bool, name: Name) {
    if !inode.is_unknown() && into_watched_dir {
        emit::watch(&inode);
    }
    emit::named(EventKind::Rename, inode, new_parent, old_parent, name);
}

#[inline(always)]
fn begin(old_dfd: i64, new_dfd: i64, new_name: i64) {
    let mut call = PendingCall::new(Op::Rename);
    call.user_name = new_name as u64;
    call.base_dir = kernel::base_dir_of(new_dfd).unwrap_or_default();
    call.old_base_dir = kernel::base_dir_of(old_dfd).unwrap_or_default();
    pending::begin(&call);
}

#[inline(always)]
fn end(ctx: &TracePointContext) {
    let Some(call) = pending::finish(Op::Rename) else { return };
    if ret(ctx) != 0 {
        return;
    }
    let inode = kernel::inode_key(call.captured_inode).unwrap_or_default();
    // A name with a directory part lands where this side cannot resolve; a watched
    // directory touched by the call stands in (it may be the old one: the daemon sorts
    // that out).
    let into_watched_dir = emit::is_watched_dir(&call.base_dir) || call.touched_watched_dir;
    let relevant = inode.is_unknown()
        || emit::is_watched(&inode)
        || into_watched_dir
        || emit::is_watched_dir(&call.old_base_dir);
    if relevant {
        on_rename(inode, call.base_dir, call.old_base_dir, into_watched_dir, Name::User(call.user_name));
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

/// vfs_rename(struct renamedata *rd): at entry, the moving dentry, its inode and old
/// directory; on success the same dentry carries the new name and parent (d_move).
#[inline(always)]
fn vfs_rename_begin(rd: KPtr) {
    let Some(dentry) = kernel::renamedata_old_dentry(rd) else { return };
    let Some(inode_ptr) = kernel::dentry_inode(dentry) else { return };
    if !kernel::inode_is_regular(inode_ptr) {
        return;
    }
    let mut call = PendingCall::new(Op::Rename);
    call.file = dentry;
    call.captured_inode = inode_ptr;
    call.old_base_dir = kernel::dentry_parent(dentry).and_then(kernel::dentry_key).unwrap_or_default();
    pending::begin(&call);
}

#[inline(always)]
fn vfs_rename_end(result: i64) {
    let Some(call) = pending::finish(Op::Rename) else { return };
    if result != 0 {
        return;
    }
    let Some(inode) = kernel::inode_key(call.captured_inode) else { return };
    let new_parent = kernel::dentry_parent(call.file).and_then(kernel::dentry_key).unwrap_or_default();
    let into_watched_dir = emit::is_watched_dir(&new_parent);
    if emit::is_watched(&inode) || into_watched_dir || emit::is_watched_dir(&call.old_base_dir) {
        let name = Name::Kernel(kernel::dentry_name(call.file).unwrap_or(0));
        on_rename(inode, new_parent, call.old_base_dir, into_watched_dir, name);
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
