//! Truncation of watched files: truncate(2), ftruncate(2); open(O_TRUNC) is seen in
//! lifecycle.rs and reported through the same body.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use collector_common::{EventKind, InodeKey};

use crate::{
    args::{fentry_arg, fexit_slot, kprobe_arg},
    emit,
    kernel::{self, KPtr},
    maps::offsets,
    pending::{self, Op, PendingCall},
    write::{arg, ret, watched_inode},
};

/// One hook body for every attach mode: a watched file went from `size_before` bytes to
/// `size_after`. `counted`: the truncation was counted as it began (`begin_truncation`),
/// where the hook saw the file before the cut; otherwise it is counted now, and a write cut
/// by it whose hook ran in between names the one before (the daemon counts its bytes lost).
#[inline(always)]
pub fn on_truncate(inode: InodeKey, size_before: u64, size_after: u64, counted: Counted) {
    if counted == Counted::No {
        emit::begin_truncation(&inode);
    }
    let truncation = emit::end_truncation(&inode, size_after);
    emit::range(EventKind::Truncate, inode, size_before, size_after, InodeKey::default(), truncation);
}

/// Whether a truncation was counted as it began (kept in `PendingCall::flags`).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Counted {
    No = 0,
    AtEntry = 1,
}

impl Counted {
    fn of(call: &PendingCall) -> Counted {
        if call.flags == Counted::AtEntry as u32 { Counted::AtEntry } else { Counted::No }
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_ftruncate")]
pub fn tp_sys_enter_ftruncate(ctx: TracePointContext) {
    let Some(file) = kernel::file_of_fd(arg(&ctx, 0)) else { return };
    let Some(inode) = watched_inode(file) else { return };
    emit::begin_truncation(&inode);
    let mut call = PendingCall::new(Op::Truncate);
    call.flags = Counted::AtEntry as u32;
    call.file = file;
    call.captured_inode = kernel::file_inode(file).unwrap_or(0);
    call.size_before = kernel::inode_size(call.captured_inode).unwrap_or(0);
    call.pos = arg(&ctx, 1);
    pending::begin(&call);
}

/// The path is not resolved here: capture.rs learns the inode from inside the call.
#[tracepoint(category = "syscalls", name = "sys_enter_truncate")]
pub fn tp_sys_enter_truncate(ctx: TracePointContext) {
    let mut call = PendingCall::new(Op::Truncate);
    call.pos = arg(&ctx, 1);
    pending::begin(&call);
}

/// The size a truncation left: the length asked for. The size read after the call is not
/// it when a writer appended in between (the new contents would pass for old ones).
#[inline(always)]
fn size_left(call: &PendingCall) -> u64 {
    if call.pos >= 0 { call.pos as u64 } else { kernel::inode_size(call.captured_inode).unwrap_or(0) }
}

#[inline(always)]
fn end(ctx: &TracePointContext) {
    let Some(call) = pending::finish(Op::Truncate) else { return };
    if ret(ctx) != 0 {
        return;
    }
    let Some(inode) = kernel::inode_key(call.captured_inode) else { return };
    if !emit::is_watched(&inode) {
        return;
    }
    // By path the size before is not readable in time (filesystems differ in whether
    // ctime is set before or after i_size); the end of the last write seen stands in.
    let size_before = if call.file != 0 { call.size_before } else { emit::known_end(&inode) };
    on_truncate(inode, size_before, size_left(&call), Counted::of(&call));
}

#[tracepoint(category = "syscalls", name = "sys_exit_ftruncate")]
pub fn tp_sys_exit_ftruncate(ctx: TracePointContext) {
    end(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_truncate")]
pub fn tp_sys_exit_truncate(ctx: TracePointContext) {
    end(&ctx);
}

/// do_truncate([idmap,] dentry, length, time_attrs, filp): truncate(2), ftruncate(2) and
/// open(O_TRUNC) all come through here.
#[inline(always)]
fn do_truncate_begin(dentry: KPtr, length: i64) {
    let Some(inode_ptr) = kernel::dentry_inode(dentry) else { return };
    let Some(inode) = kernel::inode_key(inode_ptr) else { return };
    if !emit::is_watched(&inode) {
        return;
    }
    emit::begin_truncation(&inode);
    let mut call = PendingCall::new(Op::Truncate);
    call.flags = Counted::AtEntry as u32;
    call.captured_inode = inode_ptr;
    call.size_before = kernel::inode_size(inode_ptr).unwrap_or(0);
    call.pos = length;
    pending::begin(&call);
}

#[inline(always)]
fn do_truncate_end(result: i64) {
    let Some(call) = pending::finish(Op::Truncate) else { return };
    if result != 0 {
        return;
    }
    let Some(inode) = kernel::inode_key(call.captured_inode) else { return };
    on_truncate(inode, call.size_before, size_left(&call), Counted::of(&call));
}

#[fentry(function = "do_truncate")]
pub fn fentry_do_truncate(ctx: FEntryContext) -> i32 {
    let o = offsets();
    do_truncate_begin(fentry_arg(&ctx, o.do_truncate_dentry), fentry_arg(&ctx, o.do_truncate_length) as i64);
    0
}
#[fexit(function = "do_truncate")]
pub fn fexit_do_truncate(ctx: FExitContext) -> i32 {
    do_truncate_end(fexit_slot(&ctx, offsets().do_truncate_params) as i32 as i64);
    0
}
#[kprobe(function = "do_truncate")]
pub fn kprobe_do_truncate(ctx: ProbeContext) -> u32 {
    let o = offsets();
    do_truncate_begin(kprobe_arg(&ctx, o.do_truncate_dentry), kprobe_arg(&ctx, o.do_truncate_length) as i64);
    0
}
#[kretprobe(function = "do_truncate")]
pub fn kretprobe_do_truncate(ctx: RetProbeContext) -> u32 {
    do_truncate_end(ctx.ret::<i32>() as i64);
    0
}

/// notify_change([idmap,] dentry, attr, delegated): do_truncate calls it with the inode lock
/// held, so no write can land between here and the size change. The size read at
/// do_truncate's entry may miss writes that took the lock first; the one read here is the
/// size the truncation really cut from.
#[inline(always)]
fn size_change_begins(dentry: KPtr) {
    let Some(call) = pending::current() else { return };
    // SAFETY: `call` is this thread's PENDING value pointer from a map lookup, valid for this
    // program's run; the verifier checks the access.
    if unsafe { (*call).op } != Op::Truncate {
        return;
    }
    let Some(inode_ptr) = kernel::dentry_inode(dentry) else { return };
    // SAFETY: `call` is the PENDING value pointer from above, still valid in this program run.
    if unsafe { (*call).captured_inode } != inode_ptr {
        return;
    }
    if let Some(size) = kernel::inode_size(inode_ptr) {
        // SAFETY: `call` is the PENDING value pointer from above, still valid in this program run.
        unsafe { (*call).size_before = size };
    }
}

#[fentry(function = "notify_change")]
pub fn fentry_notify_change(ctx: FEntryContext) -> i32 {
    size_change_begins(fentry_arg(&ctx, offsets().notify_change_dentry));
    0
}
#[kprobe(function = "notify_change")]
pub fn kprobe_notify_change(ctx: ProbeContext) -> u32 {
    size_change_begins(kprobe_arg(&ctx, offsets().notify_change_dentry));
    0
}
