//! Writing events into the ring buffer, counting what does not fit, and the watched-set
//! lookups every hook starts with.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes,
    bpf_probe_read_user_buf, bpf_probe_read_user_str_bytes, generated,
};
use collector_common::{
    CAPTURE_CLASSES, CAPTURE_LEN, COMM_LEN, CapturedWrite, Counter, EventHeader, EventKind, InodeKey, NameEvent,
    READ_CAPTURE_PIECES, READ_CAPTURE_REACH, RangeEvent, WatchedInode,
};

use aya_ebpf::bindings::{BPF_NOEXIST, BPF_RB_CONS_POS, BPF_RB_PROD_POS};

use crate::{
    kernel::{Access, KPtr},
    maps::{COUNTERS, EVENTS, READ_POSITIONS, WATCHED_DIRS, WATCHED_INODES, coalesce_appends},
};

#[inline(always)]
pub fn is_watched(key: &InodeKey) -> bool {
    watched_entry(key).is_some()
}

/// The watched-set entry of a watched file: one lookup for the check and the write's
/// bookkeeping (`note_write`), where a hook has both at hand.
#[inline(always)]
pub fn watched_entry(key: &InodeKey) -> Option<*mut WatchedInode> {
    let w = WATCHED_INODES.get_ptr_mut(key)?;
    // SAFETY: `w` is a WATCHED_INODES value pointer from a map lookup, valid for this program's
    // run; the verifier checks the access.
    (unsafe { (*w).flags } & WatchedInode::WATCHED != 0).then_some(w)
}

#[inline(always)]
pub fn is_watched_dir(key: &InodeKey) -> bool {
    // SAFETY: the value is a plain u8 read once: an entry the daemon removes meanwhile can only
    // give a stale or reused value, not a bad access (the verifier checks it).
    unsafe { WATCHED_DIRS.get(key) }.is_some_and(|v| *v != 0)
}

/// Starts watching a file the kernel saw created in a watched directory, so none of its
/// first writes slip by before the daemon decides whether it wants it. A new inode: an
/// entry left under its number belonged to an earlier file and is replaced. Other tasks'
/// reads of it carry their bytes from 0 until the daemon says where it reads it: logrotate
/// can copy and truncate a new log before the daemon has taken its creation's event.
#[inline(always)]
pub fn watch_created(key: &InodeKey) {
    let _ = WATCHED_INODES.insert(key, WatchedInode::new(0), 0);
    let _ = READ_POSITIONS.insert(key, &0, 0);
}

/// Starts watching a file moved into (or within) a watched directory, `size` bytes long.
/// An entry it has is kept as it is: its known end, capture window and fold state still
/// describe this file (a rotated log renamed app.log.1 -> app.log.2 stays the same inode).
#[inline(always)]
pub fn watch_moved(key: &InodeKey, size: u64) {
    let _ = WATCHED_INODES.insert(key, WatchedInode::new(size), BPF_NOEXIST as u64);
}

#[inline(always)]
pub fn known_end(key: &InodeKey) -> u64 {
    // SAFETY: only the plain u64 known_end is read: an entry the daemon removes meanwhile can only
    // give a stale or reused value, not a bad access (the verifier checks it).
    unsafe { WATCHED_INODES.get(key) }.map_or(0, |w| w.known_end)
}

#[inline(always)]
pub fn set_known_end(key: &InodeKey, end: u64, only_grow: bool) {
    if let Some(w) = WATCHED_INODES.get_ptr_mut(key) {
        // SAFETY: `w` is a WATCHED_INODES value pointer from a map lookup, valid for this program's
        // run; the verifier checks each access.
        unsafe {
            if !only_grow || end > (*w).known_end {
                (*w).known_end = end;
            }
        }
    }
}

/// Another task read the file: writes carry their bytes for a while (copytruncate window).
#[inline(always)]
pub fn open_capture_window(key: &InodeKey) {
    if let Some(w) = WATCHED_INODES.get_ptr_mut(key) {
        // SAFETY: `w` is a WATCHED_INODES value pointer from a map lookup, valid for this program's
        // run; the verifier checks the access.
        unsafe { (*w).capture_until_ns = bpf_ktime_get_boot_ns() + WatchedInode::CAPTURE_WINDOW_NS };
    }
}

/// A truncation of the file begins: counted, so a write whose bytes it cuts can name it.
/// Returns its number (0 when the file is not watched).
#[inline(always)]
pub fn begin_truncation(key: &InodeKey) -> u64 {
    let Some(w) = WATCHED_INODES.get_ptr_mut(key) else { return 0 };
    // Two truncations of one file at once are not told apart anyway: a plain increment.
    // SAFETY: `w` is a WATCHED_INODES value pointer from a map lookup, valid for this program's
    // run; the verifier checks each access.
    unsafe {
        (*w).truncations += 1;
        (*w).truncations
    }
}

/// A truncation of the file is done: its known end is the new size, the capture window is
/// closed, and for a while writes are checked for bytes it cut (`cut_watch_until_ns`).
/// The daemon's read position is lowered to the new size: what other tasks read of the new
/// contents carries its bytes at once, not only once the daemon has taken this event (a
/// second copytruncate can copy and cut the new contents before then). Returns which
/// truncation it was.
#[inline(always)]
pub fn end_truncation(key: &InodeKey, size_after: u64) -> u64 {
    if let Some(p) = READ_POSITIONS.get_ptr_mut(key) {
        // SAFETY: `p` is a READ_POSITIONS value pointer from a map lookup, valid for this
        // program's run; the verifier checks the access. A racing update by the daemon leaves
        // one of the two values, as without this.
        unsafe {
            if size_after < *p {
                *p = size_after;
            }
        }
    }
    let Some(w) = WATCHED_INODES.get_ptr_mut(key) else { return 0 };
    // SAFETY: `w` is a WATCHED_INODES value pointer from a map lookup, valid for this program's
    // run; the verifier checks each access.
    unsafe {
        (*w).truncated_number = (*w).truncations;
        (*w).truncated_from = (*w).known_end;
        (*w).truncated_to = size_after;
        (*w).known_end = size_after;
        (*w).capture_until_ns = 0;
        (*w).cut_watch_until_ns = bpf_ktime_get_boot_ns() + WatchedInode::CUT_WATCH_NS;
        (*w).truncations
    }
}

/// What a write to a watched file makes.
pub enum WriteNote {
    /// A capture window is open: an event with the bytes.
    Capture,
    /// A truncation cut the bytes before this hook ran (seen in a capture window or just
    /// after a truncation): a `WriteCut` event naming it.
    Cut(CutBy),
    /// Folded into the writer's last event, still unread.
    Folded,
    /// An event, which later appends may fold into unless `Foldable::NOT`.
    Event(Foldable),
}

/// Where a write event later appends of the same process may be folded into is recorded.
/// Every field is set on every path: 5.10's verifier refuses a read of a stack slot not
/// written before, and the compiler loads these after the event whether they are used or
/// not (with an `Option` here the `None` path left them unwritten).
pub struct Foldable {
    /// The file's entry; null when the event takes no appends.
    entry: *mut WatchedInode,
    tgid: u32,
    /// The ring's producer position before the event is reserved: at most where it starts.
    at: u64,
}

impl Foldable {
    pub const NOT: Foldable = Foldable { entry: core::ptr::null_mut(), tgid: 0, at: 0 };
}

/// A write of `pos..end` landed through `file`: grows the known end and tells what the
/// write must make. `entry` is the file's entry when the caller looked it up already.
/// Whether the file still reaches `end` is checked only in a capture window or just after
/// a truncation (each a load and a helper call on the way there).
///
/// Folding: the daemon takes an event off the ring (advancing the consumer position) before
/// it reads the file to its end. So when the consumer has not passed the writer's last event
/// yet, and the write continues it, the daemon's coming read gets these bytes too. That
/// needs this write's new size to be visible before the consumer position is tested, and
/// the daemon's position update before its read (a full barrier on each side: here the
/// atomic increment; in the daemon a fence). Otherwise one of
/// the two sees the other: either the event is still unread when the daemon reads, or the
/// test here sees it taken and a new event is made.
#[inline(always)]
pub fn note_write<A: Access>(
    key: &InodeKey,
    entry: Option<*mut WatchedInode>,
    file: KPtr,
    pos: u64,
    end: u64,
) -> WriteNote {
    let Some(w) = entry.or_else(|| WATCHED_INODES.get_ptr_mut(key)) else { return WriteNote::Event(Foldable::NOT) };
    // SAFETY: `w` is a WATCHED_INODES value pointer from a map lookup, valid for this program's
    // run (the verifier checks each access), so `coalesced` is a valid u64 for locked_increment.
    unsafe {
        let (capture_until, cut_watch_until) = ((*w).capture_until_ns, (*w).cut_watch_until_ns);
        if capture_until != 0 || cut_watch_until != 0 {
            let now = bpf_ktime_get_boot_ns();
            let capturing = capture_until > now;
            if (capturing || cut_watch_until > now) && A::file_short_of(file, end) {
                return WriteNote::Cut(CutBy((*w).truncations));
            }
            if capturing {
                grow_known_end(w, end);
                return WriteNote::Capture;
            }
            // The cut watch is over: cleared, so later writes skip the clock (a helper call;
            // every truncation leaves it set). A truncation ending at this very moment may
            // lose its watch (its late writes then count as lost, as without it); the capture
            // window is left alone, as a read opening it now must not be undone.
            if cut_watch_until != 0 && cut_watch_until <= now {
                (*w).cut_watch_until_ns = 0;
            }
        }
        grow_known_end(w, end);
        if !coalesce_appends() {
            return WriteNote::Event(Foldable::NOT);
        }
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if (*w).notified_end == pos && (*w).notified_tgid == tgid {
            locked_increment(&raw mut (*w).coalesced);
            if EVENTS.query(BPF_RB_CONS_POS as u64) <= (*w).notified_at {
                (*w).notified_end = end;
                return WriteNote::Folded;
            }
        }
        WriteNote::Event(Foldable { entry: w, tgid, at: EVENTS.query(BPF_RB_PROD_POS as u64) })
    }
}

/// A write ending at `end` landed in the file as it is now.
///
/// # Safety
/// `w` is a WATCHED_INODES value pointer from a map lookup in this program run.
#[inline(always)]
unsafe fn grow_known_end(w: *mut WatchedInode, end: u64) {
    // SAFETY: `w` is a map value pointer (the caller's promise); the verifier checks each
    // access.
    unsafe {
        if end > (*w).known_end {
            (*w).known_end = end;
        }
    }
}

/// `*counter += 1` as BPF_ATOMIC | BPF_ADD, which x86's JIT emits as `lock add`, a full
/// barrier. (arm64's JIT emits an unordered add, so the daemon folds only on x86-64; the
/// fully ordered BPF_FETCH form would do there, but 5.10's verifier refuses it even on a
/// path it never takes.) Written out so the compiler keeps it as it is.
///
/// # Safety
///
/// `counter` must point to a u64 writable for the program's run (a map value's field).
#[inline(always)]
unsafe fn locked_increment(counter: *mut u64) {
    // SAFETY: the caller passes a valid u64 pointer; the asm only adds 1 to it atomically and
    // does not touch the stack.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({at} + 0) += {one}",
            at = in(reg) counter,
            one = in(reg) 1u64,
            options(nostack),
        );
    }
}

/// A write's event (no bytes); once it is in the ring, later appends may fold into it.
#[inline(always)]
pub fn range_of_write(inode: InodeKey, pos: u64, len: u64, foldable: Foldable) {
    if range(EventKind::Write, inode, pos, len, InodeKey::default(), 0) && !foldable.entry.is_null() {
        // SAFETY: a non-null `entry` is the WATCHED_INODES value pointer note_write looked up in this
        // same program run, still valid; the verifier checks each access.
        unsafe {
            (*foldable.entry).notified_at = foldable.at;
            (*foldable.entry).notified_end = pos + len;
            (*foldable.entry).notified_tgid = foldable.tgid;
        }
    }
}

/// Which truncation cut a `WriteCut`'s bytes; 0 for a `WriteCaptured`.
#[derive(Clone, Copy)]
pub struct CutBy(pub u64);

/// A write with its bytes, read from the writer's buffer `buf` (user memory; 0: none, the
/// event says only where the write was), in the smallest record class they fit (see
/// `CAPTURE_CLASSES`). `kind`: `WriteCaptured`, or `WriteCut` with the truncation in `cut`.
#[inline(always)]
pub fn captured_write(kind: EventKind, inode: InodeKey, pos: u64, len: u64, buf: u64, cut: CutBy) {
    let [small, medium, _] = CAPTURE_CLASSES;
    if len <= small as u64 || buf == 0 {
        captured_write_in::<{ CAPTURE_CLASSES[0] }>(kind, inode, pos, len, buf, cut);
    } else if len <= medium as u64 {
        captured_write_in::<{ CAPTURE_CLASSES[1] }>(kind, inode, pos, len, buf, cut);
    } else {
        captured_write_in::<{ CAPTURE_CLASSES[2] }>(kind, inode, pos, len, buf, cut);
    }
}

#[inline(always)]
fn captured_write_in<const N: usize>(kind: EventKind, inode: InodeKey, pos: u64, len: u64, buf: u64, cut: CutBy) {
    let Some(mut entry) = EVENTS.reserve::<CapturedWrite<N>>(0) else {
        bump(Counter::RingBufferLost);
        return;
    };
    let p = entry.as_mut_ptr();
    if len == 0 {
        entry.discard(0);
        return;
    }
    // The size must be provably within 1..=N at the helper call, and older verifiers (6.1)
    // lose a compared bound when the compiler checks one copy of `n` and passes another.
    // So the bound is a mask on the very value passed: an opaque reload (the compiler
    // cannot fold the mask away), then ((n - 1) & (N - 1)) + 1, which is n for n <= N
    // (N is a power of two).
    let n = if len > N as u64 { N } else { len as usize };
    // SAFETY: `&n` refers to a local, valid and aligned; the volatile read only hides its value.
    let n = unsafe { core::ptr::read_volatile(&n) };
    let n = (n.wrapping_sub(1) & (N - 1)) + 1;
    // SAFETY: `p` points to the CapturedWrite<N> reserved above, writable until submitted; the
    // helper fills at most `n` <= N bytes of `data` and returns an error on a bad user address.
    unsafe {
        fill_header(&raw mut (*p).header, kind, inode);
        (*p).pos = pos;
        (*p).len = len;
        (*p).truncation = cut.0;
        let data = &mut (*p).data;
        let ok = buf != 0 && bpf_probe_read_user_buf(buf as *const u8, &mut data[..n]).is_ok();
        (*p).captured = if ok { n as u64 } else { 0 };
    }
    entry.submit(0);
    bump(Counter::Emitted);
}

/// Another task read `pos..pos + len` of a watched original into `buf` (user memory): what
/// of it lies past the daemon's read position (and within `READ_CAPTURE_REACH` of it) goes
/// in `ReadCaptured` events. False when nothing was captured.
#[inline(always)]
pub fn captured_read(inode: InodeKey, pos: u64, len: u64, buf: u64) -> bool {
    // SAFETY: the value is a plain u64 copied at once: an entry the daemon removes meanwhile can
    // only give a stale or reused value, not a bad access (the verifier checks it).
    let Some(read_to) = (unsafe { READ_POSITIONS.get(&inode) }).copied() else { return false };
    let from = if pos > read_to { pos } else { read_to };
    let end = pos + len;
    let reach = read_to + READ_CAPTURE_REACH;
    let to = if end < reach { end } else { reach };
    if from >= to {
        return false;
    }
    let mut at = from;
    for _ in 0..READ_CAPTURE_PIECES {
        if at < to {
            let n = if to - at < CAPTURE_LEN as u64 { to - at } else { CAPTURE_LEN as u64 };
            captured_write_in::<CAPTURE_LEN>(EventKind::ReadCaptured, inode, at, n, buf + (at - pos), CutBy(0));
            at += n;
        }
    }
    true
}

fn bump(counter: Counter) {
    // Per-CPU slots: a plain increment is race-free, the daemon sums the CPUs.
    if let Some(c) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: `c` is this CPU's slot from the per-CPU array lookup, valid for this program's run;
        // the verifier checks the access.
        unsafe { *c += 1 };
    }
}

/// Fills an event's header where it lies in the ring (no copy through the stack, and the
/// comm is written by the helper, which pads it, so it needs no zeroing first).
///
/// # Safety
///
/// `h` must point to memory writable as an EventHeader (a record reserved in the ring).
#[inline(always)]
unsafe fn fill_header(h: *mut EventHeader, kind: EventKind, inode: InodeKey) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the caller guarantees `h` is writable for an EventHeader; only its fields are
    // written, and the comm helper writes at most COMM_LEN bytes into `comm`.
    unsafe {
        (*h).kind = kind as u32;
        (*h).tid = id as u32;
        (*h).tgid = (id >> 32) as u32;
        (*h)._pad = 0;
        (*h).boot_ns = bpf_ktime_get_boot_ns();
        if generated::bpf_get_current_comm((*h).comm.as_mut_ptr().cast(), COMM_LEN as u32) != 0 {
            (*h).comm = [0; COMM_LEN];
        }
        (*h).cgroup_id = bpf_get_current_cgroup_id();
        (*h).inode = inode;
    }
}

/// Puts a range event in the ring; false when it did not fit.
#[inline(always)]
pub fn range(kind: EventKind, inode: InodeKey, pos: u64, len: u64, peer: InodeKey, peer_pos: u64) -> bool {
    let Some(mut entry) = EVENTS.reserve::<RangeEvent>(0) else {
        bump(Counter::RingBufferLost);
        return false;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: `p` points to the RangeEvent reserved above, writable until submitted, so its
    // header field is a valid place for fill_header.
    unsafe {
        fill_header(&raw mut (*p).header, kind, inode);
        (*p).pos = pos;
        (*p).len = len;
        (*p).peer = peer;
        (*p).peer_pos = peer_pos;
    }
    entry.submit(0);
    bump(Counter::Emitted);
    true
}

/// Where an event's name comes from.
pub enum Name {
    User(u64),
    Kernel(u64),
}

/// The directories a name event carries (see `collector_common::NameEvent`).
#[derive(Default)]
pub struct Dirs {
    pub new_parent: InodeKey,
    pub old_parent: InodeKey,
    pub base_dir: InodeKey,
    pub dfd: i32,
}

#[inline(always)]
pub fn named(kind: EventKind, inode: InodeKey, dirs: Dirs, name: Name) {
    let Some(mut entry) = EVENTS.reserve::<NameEvent>(0) else {
        bump(Counter::RingBufferLost);
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: `p` points to the NameEvent reserved above, writable until submitted; the string
    // helpers write at most NAME_LEN bytes into `name` and return an error on a bad address.
    unsafe {
        fill_header(&raw mut (*p).header, kind, inode);
        (*p).new_parent = dirs.new_parent;
        (*p).old_parent = dirs.old_parent;
        (*p).base_dir = dirs.base_dir;
        (*p).dfd = dirs.dfd;
        let read = match name {
            Name::User(ptr) => bpf_probe_read_user_str_bytes(ptr as *const u8, &mut (*p).name),
            Name::Kernel(ptr) => bpf_probe_read_kernel_str_bytes(ptr as *const u8, &mut (*p).name),
        };
        (*p).name_len = read.map_or(0, |s| s.len() as u32);
    }
    entry.submit(0);
    bump(Counter::Emitted);
}
