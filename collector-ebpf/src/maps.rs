//! Maps shared with the daemon, and the globals it sets before load. Their names (the
//! statics' identifiers) are the daemon's `collector_common::names`: renaming one here
//! means renaming it there (the daemon's tests check the built object has each).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use collector_common::{COUNTER_SLOTS, InodeKey, KernelOffsets, WatchedInode};

use crate::pending::PendingCall;

/// Struct member offsets of the running kernel, from its BTF (set by the daemon).
#[unsafe(no_mangle)]
// SAFETY: KernelOffsets is only u32 fields, for which all-zero bytes are a valid value.
static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };
/// The daemon's own process: its reads of watched files are not events.
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;
/// Offset of the first argument in a `syscalls/sys_enter_*` record and of `ret` in a
/// `sys_exit_*` record, read by the daemon from tracefs format files.
#[unsafe(no_mangle)]
static TP_ENTER_ARGS: u32 = 0;
#[unsafe(no_mangle)]
static TP_EXIT_RET: u32 = 0;
/// Non-zero: a process's appends may be folded into its last unread write event (see
/// `collector_common::WatchedInode::notified_at`). Set by the daemon on x86-64, where the
/// atomic add this needs is a full barrier; `collector events`, which shows every write,
/// leaves it 0.
#[unsafe(no_mangle)]
static COALESCE_APPENDS: u8 = 0;

#[inline(always)]
pub fn offsets() -> &'static KernelOffsets {
    // The value is patched into the object at load time: the compiler must not fold the
    // zero initialiser. Its address goes through a volatile load, which hides what it points
    // to, so only the members a program uses are loaded (a volatile read of the whole struct
    // loaded all 28 at every call, on every hot path).
    let at: *const KernelOffsets = &OFFSETS;
    // SAFETY: `at` is a local holding the address of the static OFFSETS, so the pointer read
    // back is valid, aligned and lives for 'static.
    unsafe { &*core::ptr::read_volatile(&at) }
}
#[inline(always)]
pub fn self_tgid() -> u32 {
    // SAFETY: a volatile read of a static, valid and aligned; volatile because the loader sets
    // it before the programs run, so the compiler must not fold it to its initial 0.
    unsafe { core::ptr::read_volatile(&SELF_TGID) }
}
#[inline(always)]
pub fn coalesce_appends() -> bool {
    // SAFETY: a volatile read of a static, valid and aligned; volatile because the loader sets
    // it before the programs run, so the compiler must not fold it to its initial 0.
    unsafe { core::ptr::read_volatile(&COALESCE_APPENDS) != 0 }
}
#[inline(always)]
pub fn tp_enter_args() -> usize {
    // SAFETY: a volatile read of a static, valid and aligned; volatile because the loader sets
    // it before the programs run, so the compiler must not fold it to its initial 0.
    unsafe { core::ptr::read_volatile(&TP_ENTER_ARGS) as usize }
}
#[inline(always)]
pub fn tp_exit_ret() -> usize {
    // SAFETY: a volatile read of a static, valid and aligned; volatile because the loader sets
    // it before the programs run, so the compiler must not fold it to its initial 0.
    unsafe { core::ptr::read_volatile(&TP_EXIT_RET) as usize }
}

/// Files whose changes are reported, keyed by kernel (dev, ino).
#[map]
pub static WATCHED_INODES: HashMap<InodeKey, WatchedInode> = HashMap::with_max_entries(65536, 0);
/// Where the daemon has read each watched original to (it alone updates it): reads by
/// other tasks past it carry their bytes (`EventKind::ReadCaptured`). No entry: none do.
#[map]
pub static READ_POSITIONS: HashMap<InodeKey, u64> = HashMap::with_max_entries(65536, 0);
/// Directories where creations (and renames into) are reported.
#[map]
pub static WATCHED_DIRS: HashMap<InodeKey, u8> = HashMap::with_max_entries(16384, 0);
/// A syscall in progress on a watched file, keyed by pid_tgid, from enter to exit.
#[map]
pub static PENDING: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);
/// Every event, in order per CPU.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);
/// See `collector_common::Counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
