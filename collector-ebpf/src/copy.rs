//! Reads of watched files and in-kernel copies: read, readv, pread64, preadv, preadv2,
//! copy_file_range, sendfile, splice. A read tells the daemon which task has seen a watched
//! file's bytes, so that task's later writes elsewhere can be recognised as a copy or a
//! derivative (logrotate copytruncate, gzip, cp). The daemon's own reads are not reported.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use collector_common::{EventKind, InodeKey, O_APPEND};

use crate::{
    emit,
    kernel::{self, Access, KPtr, Probe, Typed},
    maps::self_tgid,
    pending::{self, Op, PendingCall},
    write::{arg, kprobe_begin, on_write, ret, start_of_transfer, watched_inode, watched_inode_via},
};

#[inline(always)]
fn is_self() -> bool {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32 == self_tgid()
}

/// One hook body for every attach mode: a task read `len` bytes of a watched file at `pos`
/// into `buf` (user memory; 0 when not a plain buffer). Bytes the daemon has not read yet
/// come with the event (see `emit::captured_read`).
#[inline(always)]
pub fn on_read(inode: InodeKey, pos: u64, len: u64, buf: u64) {
    emit::open_capture_window(&inode);
    if buf != 0 && emit::captured_read(inode, pos, len, buf) {
        return;
    }
    emit::range(EventKind::Read, inode, pos, len, InodeKey::default(), 0);
}

/// One hook body for every attach mode: `len` bytes went from `source` at `pos` to
/// `destination` at `destination_pos` without passing through userspace.
#[inline(always)]
/// `source` and `destination` are zero keys when unknown (plain keys, not Options: the
/// payload of a None is uninitialised stack, which verifiers before 6.x refuse to read).
pub fn on_copy(source: InodeKey, pos: u64, destination: InodeKey, destination_pos: u64, len: u64) {
    if source.ino != 0 {
        emit::set_known_end(&destination, destination_pos + len, true);
        emit::range(EventKind::Copy, source, pos, len, destination, destination_pos);
    } else if destination.ino != 0 {
        on_write::<Probe>(destination, None, 0, destination_pos, len, 0);
    }
}

/// `rest` reads the offset argument and the reader's buffer (0 for an iovec): helper
/// calls, only for a watched file.
#[inline(always)]
fn begin_read(fd: i64, rest: impl FnOnce() -> (i64, u64)) {
    if is_self() {
        return;
    }
    let Some(file) = kernel::file_of_fd(fd) else { return };
    if watched_inode(file).is_none() {
        return;
    }
    let mut call = PendingCall::new(Op::Read);
    call.file = file;
    (call.pos, call.buf) = rest();
    pending::begin(&call);
}

#[inline(always)]
fn end_read(ctx: &TracePointContext) {
    let Some(call) = pending::finish(Op::Read) else { return };
    let n = ret(ctx);
    if n <= 0 {
        return;
    }
    let Some(inode) = watched_inode(call.file) else { return };
    on_read(inode, start_of_transfer(call.file, call.pos, false, n as u64), n as u64, call.buf);
}

/// `*offset` of copy_file_range/sendfile/splice, or -1 when the pointer is NULL.
#[inline(always)]
fn user_offset(ptr: i64) -> i64 {
    if ptr == 0 {
        return -1;
    }
    // SAFETY: bpf_probe_read_user accepts any user address (here the syscall's offset pointer) and
    // returns an error on a fault, read as -1.
    unsafe { bpf_probe_read_user(ptr as *const i64) }.unwrap_or(-1)
}

/// `into_watched_only`: splice(2) counts only when it fills a watched file from a pipe;
/// splicing a watched file into a pipe is not reported in any mode.
#[inline(always)]
fn begin_copy(in_fd: i64, in_off_ptr: i64, out_fd: i64, out_off_ptr: i64, into_watched_only: bool) {
    if is_self() {
        return;
    }
    let (Some(source), Some(destination)) = (kernel::file_of_fd(in_fd), kernel::file_of_fd(out_fd)) else {
        return;
    };
    let destination_watched = watched_inode(destination).is_some();
    if !destination_watched && (into_watched_only || watched_inode(source).is_none()) {
        return;
    }
    let mut call = PendingCall::new(Op::Copy);
    call.file = source;
    call.peer_file = destination;
    call.pos = user_offset(in_off_ptr);
    call.peer_pos = user_offset(out_off_ptr);
    call.flags = ((kernel::file_flags(destination).unwrap_or(0) & O_APPEND) != 0) as u32;
    pending::begin(&call);
}

#[inline(always)]
fn end_copy(ctx: &TracePointContext) {
    let Some(call) = pending::finish(Op::Copy) else { return };
    let n = ret(ctx);
    if n <= 0 {
        return;
    }
    let len = n as u64;
    let pos = start_of_transfer(call.file, call.pos, false, len);
    let destination_pos = start_of_transfer(call.peer_file, call.peer_pos, call.flags != 0, len);
    let destination = watched_inode(call.peer_file).or_else(|| peer_key(call.peer_file)).unwrap_or_default();
    on_copy(watched_inode(call.file).unwrap_or_default(), pos, destination, destination_pos, len);
}

/// Identity of a copy's unwatched destination, so the daemon can tell what was copied where.
#[inline(always)]
fn peer_key(file: KPtr) -> Option<InodeKey> {
    kernel::inode_key(kernel::file_inode(file)?)
}

#[tracepoint(category = "syscalls", name = "sys_enter_read")]
pub fn tp_sys_enter_read(ctx: TracePointContext) {
    begin_read(arg(&ctx, 0), || (-1, arg(&ctx, 1) as u64));
}
#[tracepoint(category = "syscalls", name = "sys_enter_readv")]
pub fn tp_sys_enter_readv(ctx: TracePointContext) {
    begin_read(arg(&ctx, 0), || (-1, 0));
}
#[tracepoint(category = "syscalls", name = "sys_enter_pread64")]
pub fn tp_sys_enter_pread64(ctx: TracePointContext) {
    begin_read(arg(&ctx, 0), || (arg(&ctx, 3), arg(&ctx, 1) as u64));
}
#[tracepoint(category = "syscalls", name = "sys_enter_preadv")]
pub fn tp_sys_enter_preadv(ctx: TracePointContext) {
    begin_read(arg(&ctx, 0), || (arg(&ctx, 3), 0));
}
#[tracepoint(category = "syscalls", name = "sys_enter_preadv2")]
pub fn tp_sys_enter_preadv2(ctx: TracePointContext) {
    begin_read(arg(&ctx, 0), || (arg(&ctx, 3), 0));
}
#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub fn tp_sys_exit_read(ctx: TracePointContext) {
    end_read(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_readv")]
pub fn tp_sys_exit_readv(ctx: TracePointContext) {
    end_read(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_pread64")]
pub fn tp_sys_exit_pread64(ctx: TracePointContext) {
    end_read(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_preadv")]
pub fn tp_sys_exit_preadv(ctx: TracePointContext) {
    end_read(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_preadv2")]
pub fn tp_sys_exit_preadv2(ctx: TracePointContext) {
    end_read(&ctx);
}

/// copy_file_range(fd_in, off_in, fd_out, off_out, len, flags)
#[tracepoint(category = "syscalls", name = "sys_enter_copy_file_range")]
pub fn tp_sys_enter_copy_file_range(ctx: TracePointContext) {
    begin_copy(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2), arg(&ctx, 3), false);
}
/// splice(fd_in, off_in, fd_out, off_out, len, flags): one side is a pipe.
#[tracepoint(category = "syscalls", name = "sys_enter_splice")]
pub fn tp_sys_enter_splice(ctx: TracePointContext) {
    begin_copy(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2), arg(&ctx, 3), true);
}
/// sendfile(out_fd, in_fd, offset, count)
#[tracepoint(category = "syscalls", name = "sys_enter_sendfile64")]
pub fn tp_sys_enter_sendfile64(ctx: TracePointContext) {
    begin_copy(arg(&ctx, 1), arg(&ctx, 2), arg(&ctx, 0), 0, false);
}
#[tracepoint(category = "syscalls", name = "sys_exit_copy_file_range")]
pub fn tp_sys_exit_copy_file_range(ctx: TracePointContext) {
    end_copy(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_splice")]
pub fn tp_sys_exit_splice(ctx: TracePointContext) {
    end_copy(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_sendfile64")]
pub fn tp_sys_exit_sendfile64(ctx: TracePointContext) {
    end_copy(&ctx);
}

/// vfs_read family: `n` bytes read through `file` into `buf` (0 for an iovec), `*pos` now
/// just past them.
#[inline(always)]
fn vfs_read_done<A: Access>(file: KPtr, pos_ptr: KPtr, n: i64, buf: u64) {
    if n <= 0 || is_self() {
        return;
    }
    // Watched first, as for writes: it rules out most reads of the host.
    let Some(inode) = watched_inode_via::<A>(file) else { return };
    if pending::copy_in_progress() {
        return;
    }
    let Some(end) = kernel::deref_pos(pos_ptr) else { return };
    on_read(inode, (end as u64).saturating_sub(n as u64), n as u64, buf);
}

/// vfs_read(file, buf, count, pos)
#[fexit(function = "vfs_read")]
pub fn fexit_vfs_read(ctx: FExitContext) -> i32 {
    vfs_read_done::<Typed>(ctx.arg(0), ctx.arg(3), ctx.arg(4), ctx.arg(1));
    0
}
/// vfs_readv(file, vec, vlen, pos, flags)
#[fexit(function = "vfs_readv")]
pub fn fexit_vfs_readv(ctx: FExitContext) -> i32 {
    vfs_read_done::<Typed>(ctx.arg(0), ctx.arg(3), ctx.arg(5), 0);
    0
}

#[inline(always)]
fn kretprobe_read(ctx: &RetProbeContext) {
    if let Some(call) = pending::finish(Op::Read) {
        vfs_read_done::<Probe>(call.file, call.user_name, ctx.ret(), call.buf);
    }
}

#[kprobe(function = "vfs_read")]
pub fn kprobe_vfs_read(ctx: ProbeContext) -> u32 {
    if !is_self() {
        kprobe_begin(Op::Read, ctx.arg(0), || (ctx.arg(3), ctx.arg(1).unwrap_or(0)));
    }
    0
}
#[kretprobe(function = "vfs_read")]
pub fn kretprobe_vfs_read(ctx: RetProbeContext) -> u32 {
    kretprobe_read(&ctx);
    0
}
#[kprobe(function = "vfs_readv")]
pub fn kprobe_vfs_readv(ctx: ProbeContext) -> u32 {
    if !is_self() {
        kprobe_begin(Op::Read, ctx.arg(0), || (ctx.arg(3), 0));
    }
    0
}
#[kretprobe(function = "vfs_readv")]
pub fn kretprobe_vfs_readv(ctx: RetProbeContext) -> u32 {
    kretprobe_read(&ctx);
    0
}

/// Entry of an in-kernel copy: remember both files and where they stood, and mark the
/// thread so the copy's own inner reads and writes are not reported twice.
#[inline(always)]
fn vfs_copy_begin(source: KPtr, pos: i64, destination: KPtr, destination_pos: i64) {
    if is_self() || pending::copy_in_progress() {
        return;
    }
    if watched_inode(source).is_none() && watched_inode(destination).is_none() {
        return;
    }
    let mut call = PendingCall::new(Op::Copy);
    call.file = source;
    call.peer_file = destination;
    call.pos = pos;
    call.peer_pos = destination_pos;
    pending::begin(&call);
}

#[inline(always)]
fn vfs_copy_end(n: i64) {
    let Some(call) = pending::finish(Op::Copy) else { return };
    if n <= 0 {
        return;
    }
    let destination = watched_inode(call.peer_file).or_else(|| peer_key(call.peer_file)).unwrap_or_default();
    let source = watched_inode(call.file).unwrap_or_default();
    on_copy(source, call.pos as u64, destination, call.peer_pos as u64, n as u64);
}

/// vfs_copy_file_range(file_in, pos_in, file_out, pos_out, len, flags)
#[fentry(function = "vfs_copy_file_range")]
pub fn fentry_vfs_copy_file_range(ctx: FEntryContext) -> i32 {
    vfs_copy_begin(ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    0
}
#[fexit(function = "vfs_copy_file_range")]
pub fn fexit_vfs_copy_file_range(ctx: FExitContext) -> i32 {
    vfs_copy_end(ctx.arg(6));
    0
}
/// do_splice_direct(in, ppos, out, opos, len, flags): sendfile(2).
#[fentry(function = "do_splice_direct")]
pub fn fentry_do_splice_direct(ctx: FEntryContext) -> i32 {
    let pos = kernel::deref_pos(ctx.arg(1)).unwrap_or(0);
    let destination_pos = kernel::deref_pos(ctx.arg(3)).unwrap_or(0);
    vfs_copy_begin(ctx.arg(0), pos, ctx.arg(2), destination_pos);
    0
}
#[fexit(function = "do_splice_direct")]
pub fn fexit_do_splice_direct(ctx: FExitContext) -> i32 {
    vfs_copy_end(ctx.arg(6));
    0
}
#[kprobe(function = "vfs_copy_file_range")]
pub fn kprobe_vfs_copy_file_range(ctx: ProbeContext) -> u32 {
    let (Some(source), Some(pos), Some(destination), Some(destination_pos)) =
        (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3))
    else {
        return 0;
    };
    vfs_copy_begin(source, pos, destination, destination_pos);
    0
}
#[kretprobe(function = "vfs_copy_file_range")]
pub fn kretprobe_vfs_copy_file_range(ctx: RetProbeContext) -> u32 {
    vfs_copy_end(ctx.ret());
    0
}
#[kprobe(function = "do_splice_direct")]
pub fn kprobe_do_splice_direct(ctx: ProbeContext) -> u32 {
    let (Some(source), Some(pos_ptr), Some(destination), Some(destination_pos_ptr)) =
        (ctx.arg::<KPtr>(0), ctx.arg::<KPtr>(1), ctx.arg::<KPtr>(2), ctx.arg::<KPtr>(3))
    else {
        return 0;
    };
    let pos = kernel::deref_pos(pos_ptr).unwrap_or(0);
    let destination_pos = kernel::deref_pos(destination_pos_ptr).unwrap_or(0);
    vfs_copy_begin(source, pos, destination, destination_pos);
    0
}
#[kretprobe(function = "do_splice_direct")]
pub fn kretprobe_do_splice_direct(ctx: RetProbeContext) -> u32 {
    vfs_copy_end(ctx.ret());
    0
}
