//! Writes into watched files: write, pwrite64, writev, pwritev, pwritev2. (In-kernel copies
//! into a watched file are in copy.rs.)
//!
//! fentry mode: fexit on vfs_write/vfs_writev/vfs_iter_write sees the file, the bytes
//! written and `*pos` after them. kprobe mode: the same, the kprobe keeping the arguments
//! for the kretprobe. Syscall-tracepoint mode: the enter hook resolves fd -> file -> inode and, only for a
//! watched inode, remembers the call; the exit hook knows how many bytes landed and where.

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe, tracepoint},
    programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use collector_common::{EventKind, InodeKey, O_APPEND, RWF_APPEND, WatchedInode};

use crate::{
    emit::{self, CutBy, Foldable, WriteNote},
    kernel::{self, Access, KPtr, Probe, Typed},
    maps::{tp_enter_args, tp_exit_ret},
    pending::{self, Op, PendingCall},
};

#[inline(always)]
pub fn arg(ctx: &TracePointContext, n: usize) -> i64 {
    // SAFETY: the offset is inside the tracepoint record (from its format file), and read_at
    // copies with bpf_probe_read_kernel, which returns an error on a fault.
    unsafe { ctx.read_at::<i64>(tp_enter_args() + 8 * n) }.unwrap_or(-1)
}

#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: the offset is inside the tracepoint record (from its format file), and read_at
    // copies with bpf_probe_read_kernel, which returns an error on a fault.
    unsafe { ctx.read_at::<i64>(tp_exit_ret()) }.unwrap_or(-1)
}

/// The watched inode behind `file`, if it is watched.
#[inline(always)]
pub fn watched_inode(file: KPtr) -> Option<InodeKey> {
    watched_inode_via::<Probe>(file)
}

/// `watched_inode`, loading through `file` as `A` does (`Typed` for fentry's arguments).
#[inline(always)]
pub fn watched_inode_via<A: Access>(file: KPtr) -> Option<InodeKey> {
    let key = regular_inode_key::<A>(file)?;
    emit::is_watched(&key).then_some(key)
}

/// `watched_inode_via`, with the file's watched-set entry.
#[inline(always)]
fn watched_entry_via<A: Access>(file: KPtr) -> Option<(InodeKey, *mut WatchedInode)> {
    let key = regular_inode_key::<A>(file)?;
    Some((key, emit::watched_entry(&key)?))
}

#[inline(always)]
fn regular_inode_key<A: Access>(file: KPtr) -> Option<InodeKey> {
    let inode = A::file_inode(file)?;
    // Only regular files are watched. Where loads are cheap, checking that first spares
    // pipes, sockets and terminals (most writes of a host) the lookup.
    if A::CHEAP && !A::inode_is_regular(inode) {
        return None;
    }
    A::inode_key(inode)
}

/// Where `len` bytes just transferred through `file` started: the caller's offset, or the
/// file position they advanced. A write with O_APPEND/RWF_APPEND lands at the end whatever
/// offset was passed, and the end is then `i_size`.
#[inline(always)]
pub fn start_of_transfer(file: KPtr, explicit_pos: i64, append: bool, len: u64) -> u64 {
    if explicit_pos >= 0 && !append {
        return explicit_pos as u64;
    }
    let end = if explicit_pos >= 0 {
        kernel::file_inode(file).and_then(kernel::inode_size).unwrap_or(0)
    } else {
        kernel::file_pos(file).unwrap_or(0) as u64
    };
    end.saturating_sub(len)
}

/// One hook body for every attach mode: `len` bytes were written to `file` at `pos`, from
/// the writer's buffer `buf` (user memory, 0 when not a plain buffer). In a capture window
/// (see `WatchedInode::capture_until_ns`) the event carries the bytes. When the file is
/// already shorter than their end, a truncation came between the write and this hook: the
/// bytes belong to the contents before it, and go in a `WriteCut` event naming that
/// truncation, so they fill only its gap. `entry`: the inode's watched-set entry, if the
/// caller has it.
#[inline(always)]
pub fn on_write<A: Access>(
    inode: InodeKey,
    entry: Option<*mut WatchedInode>,
    file: KPtr,
    pos: u64,
    len: u64,
    buf: u64,
) {
    // One call of each emitter: each is inlined (three record classes for the bytes), and a
    // second copy makes the program far longer.
    let (kind, cut_by) = match emit::note_write::<A>(&inode, entry, file, pos, pos + len) {
        WriteNote::Folded => return,
        WriteNote::Capture if buf != 0 => (EventKind::WriteCaptured, CutBy(0)),
        WriteNote::Cut(cut_by) => (EventKind::WriteCut, cut_by),
        WriteNote::Capture => return emit::range_of_write(inode, pos, len, Foldable::NOT),
        WriteNote::Event(foldable) => return emit::range_of_write(inode, pos, len, foldable),
    };
    emit::captured_write(kind, inode, pos, len, buf, cut_by);
}

/// `rest` reads the other arguments (explicit offset, RWF flags, buffer): each is a helper
/// call, so only for a watched file (most writes on a host are not).
#[inline(always)]
fn begin(fd: i64, rest: impl FnOnce() -> (i64, u32, u64)) {
    let Some(file) = kernel::file_of_fd(fd) else { return };
    let Some(inode) = watched_inode(file) else { return };
    let (explicit_pos, rwf_flags, buf) = rest();
    let append = (kernel::file_flags(file).unwrap_or(0) & O_APPEND) != 0 || (rwf_flags & RWF_APPEND) != 0;
    let mut call = PendingCall::new(Op::Write);
    call.file = file;
    call.inode = inode;
    call.pos = explicit_pos;
    call.flags = append as u32;
    call.buf = buf;
    pending::begin(&call);
}

#[inline(always)]
fn end(ctx: &TracePointContext) {
    let Some(call) = pending::finish(Op::Write) else { return };
    let written = ret(ctx);
    if written <= 0 {
        return;
    }
    // The inode found watched at entry: resolving it again costs four kernel reads and a
    // lookup on every write, and an unwatch in between only makes one event the daemon
    // ignores.
    let pos = start_of_transfer(call.file, call.pos, call.flags != 0, written as u64);
    on_write::<Probe>(call.inode, None, call.file, pos, written as u64, call.buf);
}

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn tp_sys_enter_write(ctx: TracePointContext) {
    begin(arg(&ctx, 0), || (-1, 0, arg(&ctx, 1) as u64));
}
#[tracepoint(category = "syscalls", name = "sys_enter_writev")]
pub fn tp_sys_enter_writev(ctx: TracePointContext) {
    begin(arg(&ctx, 0), || (-1, 0, 0));
}
#[tracepoint(category = "syscalls", name = "sys_enter_pwrite64")]
pub fn tp_sys_enter_pwrite64(ctx: TracePointContext) {
    begin(arg(&ctx, 0), || (arg(&ctx, 3), 0, arg(&ctx, 1) as u64));
}
#[tracepoint(category = "syscalls", name = "sys_enter_pwritev")]
pub fn tp_sys_enter_pwritev(ctx: TracePointContext) {
    begin(arg(&ctx, 0), || (arg(&ctx, 3), 0, 0));
}
/// pwritev2 with offset -1 writes at the file position.
#[tracepoint(category = "syscalls", name = "sys_enter_pwritev2")]
pub fn tp_sys_enter_pwritev2(ctx: TracePointContext) {
    begin(arg(&ctx, 0), || (arg(&ctx, 3), arg(&ctx, 5) as u32, 0));
}

#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn tp_sys_exit_write(ctx: TracePointContext) {
    end(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_writev")]
pub fn tp_sys_exit_writev(ctx: TracePointContext) {
    end(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_pwrite64")]
pub fn tp_sys_exit_pwrite64(ctx: TracePointContext) {
    end(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_pwritev")]
pub fn tp_sys_exit_pwritev(ctx: TracePointContext) {
    end(&ctx);
}
#[tracepoint(category = "syscalls", name = "sys_exit_pwritev2")]
pub fn tp_sys_exit_pwritev2(ctx: TracePointContext) {
    end(&ctx);
}

/// Whether a write function runs inside sendfile/copy_file_range, which copy.rs reports
/// whole: only vfs_iter_write does (do_splice_direct writes through it). The others skip
/// the pending-call lookup, a hash lookup on every watched write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InCopies {
    Never,
    Maybe,
}

/// vfs_* write functions: `len` bytes written through `file` from `buf` (0: an iovec or
/// iterator, not captured), `*pos` now just past them.
#[inline(always)]
fn vfs_written<A: Access>(
    file: KPtr,
    pos_ptr: KPtr,
    written: i64,
    buf: u64,
    known: Option<InodeKey>,
    in_copies: InCopies,
) {
    if written <= 0 {
        return;
    }
    // The watched check first: this runs on every write of the host, and the pending-call
    // lookup costs as much as the watched one, which rules out most writes.
    let Some((inode, entry)) =
        known.map(|k| (k, None)).or_else(|| watched_entry_via::<A>(file).map(|(k, e)| (k, Some(e))))
    else {
        return;
    };
    if in_copies == InCopies::Maybe && pending::copy_in_progress() {
        return;
    }
    let Some(end) = kernel::deref_pos(pos_ptr) else { return };
    on_write::<A>(inode, entry, file, (end as u64).saturating_sub(written as u64), written as u64, buf);
}

/// vfs_write(file, buf, count, pos)
#[fexit(function = "vfs_write")]
pub fn fexit_vfs_write(ctx: FExitContext) -> i32 {
    vfs_written::<Typed>(ctx.arg(0), ctx.arg(3), ctx.arg(4), ctx.arg(1), None, InCopies::Never);
    0
}
/// vfs_writev(file, vec, vlen, pos, flags)
#[fexit(function = "vfs_writev")]
pub fn fexit_vfs_writev(ctx: FExitContext) -> i32 {
    vfs_written::<Typed>(ctx.arg(0), ctx.arg(3), ctx.arg(5), 0, None, InCopies::Never);
    0
}
/// vfs_iter_write(file, iter, pos, flags): splice(2) from a pipe into a file.
#[fexit(function = "vfs_iter_write")]
pub fn fexit_vfs_iter_write(ctx: FExitContext) -> i32 {
    vfs_written::<Typed>(ctx.arg(0), ctx.arg(2), ctx.arg(4), 0, None, InCopies::Maybe);
    0
}

/// kprobe mode keeps (file, pos pointer) from entry to return. `rest` reads the pos pointer
/// and the buffer (helper calls), only for a watched file.
#[inline(always)]
pub fn kprobe_begin(op: Op, file: Option<KPtr>, rest: impl FnOnce() -> (Option<KPtr>, u64)) {
    let Some(file) = file else { return };
    let Some(inode) = watched_inode(file) else { return };
    if pending::copy_in_progress() {
        return;
    }
    let (pos_ptr, buf) = rest();
    let mut call = PendingCall::new(op);
    call.file = file;
    call.inode = inode;
    call.user_name = pos_ptr.unwrap_or(0);
    call.buf = buf;
    pending::begin(&call);
}

#[inline(always)]
fn kretprobe_written(ctx: &RetProbeContext) {
    if let Some(call) = pending::finish(Op::Write) {
        // kprobe_begin already left copies out.
        vfs_written::<Probe>(call.file, call.user_name, ctx.ret(), call.buf, Some(call.inode), InCopies::Never);
    }
}

#[kprobe(function = "vfs_write")]
pub fn kprobe_vfs_write(ctx: ProbeContext) -> u32 {
    kprobe_begin(Op::Write, ctx.arg(0), || (ctx.arg(3), ctx.arg(1).unwrap_or(0)));
    0
}
#[kretprobe(function = "vfs_write")]
pub fn kretprobe_vfs_write(ctx: RetProbeContext) -> u32 {
    kretprobe_written(&ctx);
    0
}
#[kprobe(function = "vfs_writev")]
pub fn kprobe_vfs_writev(ctx: ProbeContext) -> u32 {
    kprobe_begin(Op::Write, ctx.arg(0), || (ctx.arg(3), 0));
    0
}
#[kretprobe(function = "vfs_writev")]
pub fn kretprobe_vfs_writev(ctx: RetProbeContext) -> u32 {
    kretprobe_written(&ctx);
    0
}
#[kprobe(function = "vfs_iter_write")]
pub fn kprobe_vfs_iter_write(ctx: ProbeContext) -> u32 {
    kprobe_begin(Op::Write, ctx.arg(0), || (ctx.arg(2), 0));
    0
}
#[kretprobe(function = "vfs_iter_write")]
pub fn kretprobe_vfs_iter_write(ctx: RetProbeContext) -> u32 {
    kretprobe_written(&ctx);
    0
}
