//! Files appearing and disappearing: creation in a watched directory (open/openat/openat2/
//! creat that created the file), open(O_TRUNC) of a watched file, unlink/unlinkat.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use collector_common::{EventKind, FMODE_CREATED, InodeKey, O_TRUNC};

use crate::{
    args::{fentry_arg, fexit_slot, kprobe_arg},
    emit::{self, Dirs, Name},
    kernel::{self, KPtr},
    maps::offsets,
    pending::{self, Op, PendingCall},
    truncate::{Counted, on_truncate},
    write::{arg, ret},
};

const O_CREAT: u32 = 0o100;
const O_WRONLY: u32 = 0o1;

/// One hook body for every attach mode: `inode` was created as `name` in `parent`, a
/// watched directory. It is watched from this moment, so no first write is missed.
#[inline(always)]
pub fn on_create(inode: InodeKey, parent: InodeKey, name: Name) {
    emit::watch_created(&inode);
    emit::named(EventKind::Create, inode, Dirs { new_parent: parent, ..Dirs::default() }, name);
}

/// One hook body for every attach mode: the watched `inode` lost the name `name` (relative
/// to `parent`).
#[inline(always)]
pub fn on_unlink(inode: InodeKey, parent: InodeKey, name: Name) {
    emit::named(EventKind::Unlink, inode, Dirs { old_parent: parent, ..Dirs::default() }, name);
}

#[inline(always)]
fn begin_open(flags: u32) {
    if flags & (O_CREAT | O_TRUNC) == 0 {
        return;
    }
    let mut call = PendingCall::new(Op::Open);
    call.flags = flags;
    pending::begin(&call);
}

#[inline(always)]
fn end_open(ctx: &TracePointContext) {
    let Some(call) = pending::finish(Op::Open) else { return };
    let fd = ret(ctx);
    if fd < 0 {
        return;
    }
    let Some(file) = kernel::file_of_fd(fd) else { return };
    if opened(file) {
        return;
    }
    let Some(inode_ptr) = kernel::file_inode(file) else { return };
    let Some(inode) = kernel::inode_key(inode_ptr) else { return };
    if call.flags & O_TRUNC != 0 && emit::is_watched(&inode) {
        on_truncate(inode, emit::known_end(&inode), kernel::inode_size(inode_ptr).unwrap_or(0), Counted::No);
    }
}

/// Every mode, once an open has returned `file`: reports it if the open created it in a
/// watched directory. Returns whether it was created.
#[inline(always)]
fn opened(file: KPtr) -> bool {
    if kernel::file_mode(file).unwrap_or(0) & FMODE_CREATED == 0 {
        return false;
    }
    let (Some(inode_ptr), Some(dentry)) = (kernel::file_inode(file), kernel::file_dentry(file)) else {
        return true;
    };
    let Some(parent) = kernel::dentry_parent(dentry).and_then(kernel::dentry_key) else { return true };
    if let Some(inode) = kernel::inode_key(inode_ptr)
        && emit::is_watched_dir(&parent)
        && kernel::inode_is_regular(inode_ptr)
    {
        on_create(inode, parent, Name::Kernel(kernel::dentry_name(dentry).unwrap_or(0)));
    }
    true
}

/// do_filp_open(dfd, pathname, op) returns the opened `struct file *` or an error pointer.
#[inline(always)]
fn do_filp_open_done(file: KPtr) {
    const MAX_ERRNO: u64 = 4095;
    if file != 0 && file < u64::MAX - MAX_ERRNO {
        opened(file);
    }
}

#[fexit(function = "do_filp_open")]
pub fn fexit_do_filp_open(ctx: FExitContext) -> i32 {
    do_filp_open_done(ctx.arg(3));
    0
}
#[kretprobe(function = "do_filp_open")]
pub fn kretprobe_do_filp_open(ctx: RetProbeContext) -> u32 {
    do_filp_open_done(ctx.ret());
    0
}

/// vfs_unlink([idmap,] dir, dentry, delegated_inode): remember the victim and its directory.
#[inline(always)]
fn vfs_unlink_begin(dir: KPtr, dentry: KPtr) {
    let Some(inode_ptr) = kernel::dentry_inode(dentry) else { return };
    let Some(inode) = kernel::inode_key(inode_ptr) else { return };
    if !emit::is_watched(&inode) {
        return;
    }
    let mut call = PendingCall::new(Op::Unlink);
    call.captured_inode = inode_ptr;
    call.base_dir = kernel::inode_key(dir).unwrap_or_default();
    call.user_name = kernel::dentry_name(dentry).unwrap_or(0);
    pending::begin(&call);
}

#[inline(always)]
fn vfs_unlink_end(result: i64) {
    let Some(call) = pending::finish(Op::Unlink) else { return };
    if result != 0 {
        return;
    }
    if let Some(inode) = kernel::inode_key(call.captured_inode) {
        on_unlink(inode, call.base_dir, Name::Kernel(call.user_name));
    }
}

#[fentry(function = "vfs_unlink")]
pub fn fentry_vfs_unlink(ctx: FEntryContext) -> i32 {
    let o = offsets();
    vfs_unlink_begin(fentry_arg(&ctx, o.vfs_unlink_dir), fentry_arg(&ctx, o.vfs_unlink_dentry));
    0
}
#[fexit(function = "vfs_unlink")]
pub fn fexit_vfs_unlink(ctx: FExitContext) -> i32 {
    vfs_unlink_end(fexit_slot(&ctx, offsets().vfs_unlink_params) as i32 as i64);
    0
}
#[kprobe(function = "vfs_unlink")]
pub fn kprobe_vfs_unlink(ctx: ProbeContext) -> u32 {
    let o = offsets();
    vfs_unlink_begin(kprobe_arg(&ctx, o.vfs_unlink_dir), kprobe_arg(&ctx, o.vfs_unlink_dentry));
    0
}
#[kretprobe(function = "vfs_unlink")]
pub fn kretprobe_vfs_unlink(ctx: RetProbeContext) -> u32 {
    vfs_unlink_end(ctx.ret::<i32>() as i64);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn tp_sys_enter_open(ctx: TracePointContext) {
    begin_open(arg(&ctx, 1) as u32);
}
#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn tp_sys_enter_openat(ctx: TracePointContext) {
    begin_open(arg(&ctx, 2) as u32);
}
/// openat2(dfd, filename, struct open_how *how, size): flags are `how->flags`.
#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn tp_sys_enter_openat2(ctx: TracePointContext) {
    let how = arg(&ctx, 2) as *const u64;
    // SAFETY: bpf_probe_read_user accepts any user address (here the syscall's `how` argument) and
    // returns an error on a fault, read as no flags.
    begin_open(unsafe { bpf_probe_read_user(how) }.unwrap_or(0) as u32);
}
#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn tp_sys_enter_creat(_ctx: TracePointContext) {
    begin_open(O_CREAT | O_WRONLY | O_TRUNC);
}
#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn tp_sys_exit_open(ctx: TracePointContext) {
    end_open(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn tp_sys_exit_openat(ctx: TracePointContext) {
    end_open(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn tp_sys_exit_openat2(ctx: TracePointContext) {
    end_open(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn tp_sys_exit_creat(ctx: TracePointContext) {
    end_open(&ctx);
}

#[inline(always)]
fn begin_unlink(dfd: i64, path: i64) {
    let mut call = PendingCall::new(Op::Unlink);
    call.user_name = path as u64;
    call.base_dir = kernel::base_dir_of(dfd).unwrap_or_default();
    pending::begin(&call);
}

#[inline(always)]
fn end_unlink(ctx: &TracePointContext) {
    let Some(call) = pending::finish(Op::Unlink) else { return };
    if ret(ctx) != 0 {
        return;
    }
    let Some(inode) = kernel::inode_key(call.captured_inode) else { return };
    if emit::is_watched(&inode) {
        on_unlink(inode, call.base_dir, Name::User(call.user_name));
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_unlink")]
pub fn tp_sys_enter_unlink(ctx: TracePointContext) {
    begin_unlink(-100, arg(&ctx, 0));
}
#[tracepoint(category = "syscalls", name = "sys_enter_unlinkat")]
pub fn tp_sys_enter_unlinkat(ctx: TracePointContext) {
    begin_unlink(arg(&ctx, 0), arg(&ctx, 1));
}
#[tracepoint(category = "syscalls", name = "sys_exit_unlink")]
pub fn tp_sys_exit_unlink(ctx: TracePointContext) {
    end_unlink(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_unlinkat")]
pub fn tp_sys_exit_unlinkat(ctx: TracePointContext) {
    end_unlink(&ctx);
}
