//! Types that cross the kernel/user boundary: map keys and values, the ring-buffer event
//! records and the kernel struct offsets handed to the programs as a global.
//!
//! This crate is the only definition of each of them (both sides compile it), so the layout
//! cannot drift. Everything is `#[repr(C)]` with explicit padding: the kernel side writes
//! these bytes, the daemon reads them back as the same struct.
#![no_std]

/// The names of the kernel programs' maps and globals: collector-ebpf's statics, whose
/// names aya takes from their identifiers. The daemon finds them by these; its tests check
/// that the built object defines each (`probe::tests`).
pub mod names {
    /// Maps.
    pub const WATCHED_INODES: &str = "WATCHED_INODES";
    pub const READ_POSITIONS: &str = "READ_POSITIONS";
    pub const WATCHED_DIRS: &str = "WATCHED_DIRS";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    /// Globals, set at load time.
    pub const OFFSETS: &str = "OFFSETS";
    pub const SELF_TGID: &str = "SELF_TGID";
    pub const TP_ENTER_ARGS: &str = "TP_ENTER_ARGS";
    pub const TP_EXIT_RET: &str = "TP_EXIT_RET";
    pub const COALESCE_APPENDS: &str = "COALESCE_APPENDS";

    pub const ALL: &[&str] = &[
        WATCHED_INODES,
        READ_POSITIONS,
        WATCHED_DIRS,
        EVENTS,
        COUNTERS,
        OFFSETS,
        SELF_TGID,
        TP_ENTER_ARGS,
        TP_EXIT_RET,
        COALESCE_APPENDS,
    ];
}

/// Bytes of a name carried in an event (rename target, created file, unlinked path).
pub const NAME_LEN: usize = 256;
/// Length of a task's `comm`, as the kernel keeps it.
pub const COMM_LEN: usize = 16;

/// Identity of an inode as the kernel sees it: `dev` is the kernel-internal `s_dev`
/// (`major << 20 | minor`), not the userspace `st_dev` encoding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

impl InodeKey {
    pub const fn new(dev: u32, ino: u64) -> Self {
        Self { dev, _pad: 0, ino }
    }
    pub const fn is_unknown(&self) -> bool {
        self.ino == 0
    }
}

/// Value of the watched-inode map: what the kernel side keeps per watched file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchedInode {
    /// Highest `pos + len` written through a hook (seeded by the daemon with the size at the
    /// time the watch was added); reported as the size before a path-based truncate, and
    /// how far a copy got (its writes may be coalesced, see `notified_at`).
    pub known_end: u64,
    /// Always `WATCHED`: the programs test a loaded value, not the lookup's pointer (the
    /// verifier refuses arithmetic on pointers that the compiler may fold such tests into).
    pub flags: u32,
    /// The process (tgid) of the last write event of this file.
    pub notified_tgid: u32,
    /// Until this time (boot clock) writes carry their bytes: another task has just read the
    /// file, which is how a copytruncate starts, and what is written between its copy and
    /// its truncation exists nowhere else once the truncation is done.
    pub capture_until_ns: u64,
    /// Where the ring's producer stood just before the last write event of this file was
    /// put in it. While the daemon's consumer position has not passed it, that event is
    /// unread, and the daemon reads the file to its end once it takes it: a write by the
    /// same process right after (at `notified_end`) is then folded into that event instead
    /// of making another one (when the daemon asked for it, see `COALESCE_APPENDS`).
    pub notified_at: u64,
    /// End of the last write reported or folded in; `u64::MAX` before the first.
    pub notified_end: u64,
    /// Writes folded into an earlier event. Incremented atomically, which is also the full
    /// barrier between the write's new size and the test of the consumer position.
    pub coalesced: u64,
    /// Truncations of this file so far, counted as each begins (where the hook sees the
    /// file before the cut), so a write whose hook finds its bytes cut names the truncation
    /// that cut them (`WriteCut`).
    pub truncations: u64,
    /// Until this time (boot clock) writes are checked for bytes the last truncation cut:
    /// one that landed just before it may reach its exit hook only after the truncation's,
    /// and its bytes exist nowhere else (see `CUT_WATCH_NS`).
    pub cut_watch_until_ns: u64,
    /// The number (as `truncations`) of the last truncation done, and the size before and
    /// after it: what the daemon takes for it when the ring buffer dropped its event.
    pub truncated_number: u64,
    pub truncated_from: u64,
    pub truncated_to: u64,
}

impl WatchedInode {
    pub const WATCHED: u32 = 1;
    /// How long a read by another task opens the capture window.
    pub const CAPTURE_WINDOW_NS: u64 = 5_000_000_000;
    /// How long after a truncation writes are checked for bytes it cut: twice the time the
    /// daemon holds the truncation's verdict for them (a later one is too late anyway).
    pub const CUT_WATCH_NS: u64 = 100_000_000;
    pub const fn new(known_end: u64) -> Self {
        Self {
            known_end,
            flags: Self::WATCHED,
            notified_tgid: 0,
            capture_until_ns: 0,
            notified_at: 0,
            notified_end: u64::MAX,
            coalesced: 0,
            truncations: 0,
            cut_watch_until_ns: 0,
            truncated_number: 0,
            truncated_from: 0,
            truncated_to: 0,
        }
    }
}

/// Kinds of event, in the order the JSON output names them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Write = 1,
    Rename = 2,
    Truncate = 3,
    Unlink = 4,
    Create = 5,
    Read = 6,
    Copy = 7,
    /// A write with its bytes (see `WatchedInode::capture_until_ns`).
    WriteCaptured = 8,
    /// A write whose bytes a truncation cut before the write's exit hook ran: they were
    /// at `pos` in the contents before it, and are carried (as far as they were read).
    WriteCut = 9,
    /// Bytes another task read past where the daemon had read (see `READ_CAPTURE_REACH`):
    /// the file's contents at `pos`, for a copytruncate whose copy is gone before the
    /// daemon can open it. Laid out as a `CapturedWrite`.
    ReadCaptured = 10,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Write,
            2 => Self::Rename,
            3 => Self::Truncate,
            4 => Self::Unlink,
            5 => Self::Create,
            6 => Self::Read,
            7 => Self::Copy,
            8 => Self::WriteCaptured,
            9 => Self::WriteCut,
            10 => Self::ReadCaptured,
            _ => return None,
        })
    }
    pub const fn name(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Rename => "rename",
            Self::Truncate => "truncate",
            Self::Unlink => "unlink",
            Self::Create => "create",
            Self::Read => "read",
            Self::Copy => "copy",
            Self::WriteCaptured => "write",
            Self::WriteCut => "write_cut",
            Self::ReadCaptured => "read",
        }
    }
}

/// Fields every event starts with. `kind` comes first so the reader can tell the record
/// type (and size) before interpreting the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    /// Thread id (`pid` in kernel terms).
    pub tid: u32,
    /// Process id (`tgid` in kernel terms).
    pub tgid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns()` when the hook ran.
    pub boot_ns: u64,
    pub comm: [u8; COMM_LEN],
    /// `bpf_get_current_cgroup_id()`: the writer's cgroup v2 (the inode number of its
    /// directory under /sys/fs/cgroup), which names its container.
    pub cgroup_id: u64,
    /// The file the event is about.
    pub inode: InodeKey,
}

/// write, read, truncate and copy: an inode and a byte range.
///
/// - write/read: `pos`, `len` in `inode`;
/// - truncate: `pos` = size before, `len` = size after, `peer_pos` = which truncation of
///   the file it is (`WatchedInode::truncations`);
/// - copy: `pos`, `len` read from `inode` (the source), written to `peer` at `peer_pos`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RangeEvent {
    pub header: EventHeader,
    pub pos: u64,
    pub len: u64,
    pub peer: InodeKey,
    pub peer_pos: u64,
}

/// Bytes of a write carried in a `WriteCaptured` event; longer writes carry their start.
pub const CAPTURE_LEN: usize = 4096;
/// The data sizes a `WriteCaptured` record comes in. A ring-buffer reservation has a size
/// fixed at load time, so a write takes the smallest class its bytes fit: a 100-byte log
/// line then costs ~200 ring bytes, not 4 KiB (at 400k lines/s in a capture window the
/// 4 KiB records overflowed the 8 MiB ring within milliseconds).
pub const CAPTURE_CLASSES: [usize; 3] = [128, 512, CAPTURE_LEN];
// The kernel side bounds a captured length by masking with (class - 1).
const _: () = assert!(
    CAPTURE_CLASSES[0].is_power_of_two()
        && CAPTURE_CLASSES[1].is_power_of_two()
        && CAPTURE_CLASSES[2].is_power_of_two()
);

/// How far past the daemon's read position (`READ_POSITIONS`) a read by another task has
/// its bytes carried: the unread tail a copytruncate copies, when the daemon lags by less.
/// Bounded so that a copy of a file the daemon is far behind on cannot flood the ring (the
/// copy on disk, when it can be opened, holds the rest).
pub const READ_CAPTURE_REACH: u64 = 1 << 20;
/// Records one read's captured bytes may take (`CAPTURE_LEN` each): logrotate copies in
/// 8 KiB reads.
pub const READ_CAPTURE_PIECES: usize = 2;

/// A write with its first `captured` bytes, in one of the `CAPTURE_CLASSES` sizes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CapturedWrite<const N: usize> {
    pub header: EventHeader,
    pub pos: u64,
    pub len: u64,
    pub captured: u64,
    /// `WriteCut`: the truncation that cut the bytes (`WatchedInode::truncations`).
    pub truncation: u64,
    pub data: [u8; N],
}

/// Bytes of a `CapturedWrite` before its data.
pub const CAPTURED_WRITE_HEAD: usize = core::mem::size_of::<CapturedWrite<0>>();

/// rename, create and unlink: an inode, directories and a name.
///
/// - rename: `name` = the new name as the caller passed it, relative to `base_dir` (its
///   `dfd`, or the cwd when `dfd` is AT_FDCWD) unless absolute; `new_parent` and
///   `old_parent` are the exact directories where the attach mode sees them (fentry,
///   kprobe), else zero / the directory the old name resolved against;
/// - create: `new_parent` = directory it was created in, `name` = its name;
/// - unlink: `old_parent` = directory it was removed from, `name` = the name removed.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NameEvent {
    pub header: EventHeader,
    pub new_parent: InodeKey,
    pub old_parent: InodeKey,
    pub base_dir: InodeKey,
    pub dfd: i32,
    /// Bytes of `name` used, without the terminating NUL.
    pub name_len: u32,
    pub name: [u8; NAME_LEN],
}

/// Kernel struct member offsets (bytes), read from the running kernel's BTF by the daemon
/// and set as the programs' `OFFSETS` global before load. Never hard-coded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_fs: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    pub fs_pwd_dentry: u32,
    pub file_inode: u32,
    pub file_pos: u32,
    pub file_mode: u32,
    pub file_flags: u32,
    pub file_dentry: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_mode: u32,
    pub inode_size: u32,
    pub sb_dev: u32,
    pub dentry_name: u32,
    pub dentry_parent: u32,
    pub dentry_inode: u32,
    /// `struct renamedata` (vfs_rename's argument since 5.12); fentry/kprobe modes only,
    /// `ABSENT` on older kernels.
    pub renamedata_old_dentry: u32,
    pub renamedata_new_dentry: u32,
    /// Argument positions (from 0) of functions whose parameters moved between kernels
    /// (5.12 put a user namespace first, 6.3 an idmap; distribution kernels backport parts),
    /// and their parameter counts (fexit finds the return value after the parameters).
    /// fentry/kprobe modes only, `ABSENT` when the kernel's BTF lacks the function.
    pub do_truncate_dentry: u32,
    pub do_truncate_length: u32,
    pub do_truncate_params: u32,
    pub vfs_unlink_dir: u32,
    pub vfs_unlink_dentry: u32,
    pub vfs_unlink_params: u32,
    pub notify_change_dentry: u32,
    /// do_renameat2(olddfd, from, newdfd, to, flags), the body of every rename (and of
    /// io_uring's) since 5.11, when its names became `struct filename`: it brackets
    /// vfs_rename in fentry/kprobe modes, and `filename.uptr` is the new name as the caller
    /// passed it.
    pub do_renameat2_olddfd: u32,
    pub do_renameat2_newdfd: u32,
    pub do_renameat2_to: u32,
    pub do_renameat2_params: u32,
    pub filename_uptr: u32,
}

impl KernelOffsets {
    pub const ABSENT: u32 = u32::MAX;
}

/// Counters the programs keep in the `COUNTERS` array map, by index.
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    /// Events that did not fit in the ring buffer.
    RingBufferLost = 0,
    /// Events emitted.
    Emitted = 1,
}
pub const COUNTER_SLOTS: u32 = 2;

/// `f_mode` bit set when `open()` created the file (include/linux/fs.h, stable since 4.19).
pub const FMODE_CREATED: u32 = 0x10_0000;
/// `O_APPEND` (open flags) and `RWF_APPEND` (pwritev2 flags): a write lands at the end,
/// whatever offset was passed.
pub const O_APPEND: u32 = 0o2000;
pub const RWF_APPEND: u32 = 0x10;
pub const O_TRUNC: u32 = 0o1000;

/// `S_IFMT` and `S_IFREG` from the kernel's `i_mode`.
pub const S_IFMT: u16 = 0o170000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFDIR: u16 = 0o040000;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)] plain-old-data with explicit padding fields.
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::WatchedInode {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
