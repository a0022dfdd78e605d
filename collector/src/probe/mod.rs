//! The kernel side, seen from the daemon: checks the kernel, reads its layout, loads the
//! programs, attaches each hook family with the best mechanism that works (attach.rs), and
//! gives access to the watch maps, the event ring buffer and the counters. This is the only
//! module that makes bpf syscalls.

pub mod attach;
pub mod btf;
pub mod event;
pub mod offsets;
pub mod preflight;

use std::path::Path;

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::Program,
};
use collector_common::{Counter, InodeKey, WatchedInode, names};

pub use attach::{AttachMode, Attached, Hook};
use attach::{HookChoice, Planned, Target};

/// The kernel programs, built by build.rs (collector-ebpf through aya-build).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector-ebpf"));

#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    /// Force one mode instead of the best that works.
    pub mode: Option<AttachMode>,
    /// Ring buffer size (bytes, a power of two multiple of the page size).
    pub ring_buffer_bytes: Option<u32>,
    /// Let a process's appends fold into its last write event while the daemon has not
    /// read that event yet (the daemon reads files to their end; `collector events` shows
    /// every write and leaves this off). Only where the programs' atomic add is a barrier.
    pub coalesce_appends: bool,
    /// Entries of the tables of watched files (`[collector] max_files`); None: the
    /// object's own (65,536).
    pub max_files: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    #[error("reading the kernel's struct layout from its BTF: {0}")]
    Layout(#[from] btf::BtfError),
    #[error("no attach mode works on this kernel: {0}")]
    NoMode(String),
    /// The one mode asked for (`--attach-mode`) does not load.
    #[error("this kernel refuses attach mode {0}")]
    Refused(String),
    #[error("{0:#}")]
    Load(anyhow::Error),
}

impl StartError {
    /// Exit status: `exit::UNAVAILABLE` for what the host lacks (kernel features,
    /// capabilities), `exit::FAILURE` otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Preflight(_) | StartError::Layout(_) | StartError::NoMode(_) | StartError::Refused(_) => {
                crate::exit::UNAVAILABLE
            }
            StartError::Load(_) => crate::exit::FAILURE,
        }
    }
}

/// Events emitted and lost by the kernel side since load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub emitted: u64,
    pub lost: u64,
}

pub struct Probe {
    ebpf: Ebpf,
    attached: Attached,
}

/// `BPF_NOEXIST` (include/uapi/linux/bpf.h): insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

impl Probe {
    pub fn start(options: &ProbeOptions) -> Result<Probe, StartError> {
        preflight::check()?;
        let kernel_btf = btf::KernelBtf::from_raw_file(&preflight::btf_path())?;
        let kernel_offsets = offsets::kernel_offsets(&kernel_btf)?;
        // Megabytes once parsed: gone before the loader parses the kernel's BTF again.
        drop(kernel_btf);
        let layout = offsets::syscall_record_layout(Path::new(preflight::TRACEFS)).map_err(StartError::Load)?;
        let self_tgid = std::process::id();
        let coalesce_appends = u8::from(options.coalesce_appends && attach::FOLDING_IS_ORDERED);

        let mut loader = EbpfLoader::new();
        loader
            .override_global(names::OFFSETS, &kernel_offsets, true)
            .override_global(names::SELF_TGID, &self_tgid, true)
            .override_global(names::TP_ENTER_ARGS, &layout.enter_args, true)
            .override_global(names::TP_EXIT_RET, &layout.exit_ret, true)
            .override_global(names::COALESCE_APPENDS, &coalesce_appends, true);
        if let Some(bytes) = options.ring_buffer_bytes {
            loader.map_max_entries(names::EVENTS, bytes);
        }
        if let Some(files) = options.max_files {
            loader.map_max_entries(names::WATCHED_INODES, files).map_max_entries(names::READ_POSITIONS, files);
        }
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object").map_err(StartError::Load)?;

        // Why fentry/kprobe are not tried on this kernel, if they are not.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let vfs_unusable = offsets::unusable_reason(&kernel_offsets)
            .or_else(|| attach::unverified_release(release.trim()).filter(|_| options.mode.is_none()));
        let mut rejected: Vec<(AttachMode, String)> = Vec::new();
        if options.mode != Some(AttachMode::Tracepoint) {
            let first = options.mode.unwrap_or(AttachMode::Fentry);
            let attached = match vfs_unusable {
                Some(why) => Err(why),
                // Forced, the mode must take at least one family; chosen, kprobe alone will do.
                None => attach_per_hook(&mut ebpf, first, options.mode.is_some()),
            };
            match attached {
                Ok(attached) => return Ok(Probe::attached(ebpf, attached, coalesce_appends)),
                Err(why) if options.mode.is_some() => return Err(StartError::Refused(format!("{first}: {why}"))),
                Err(why) => rejected.push((first, why)),
            }
        }
        match attach_mode(&mut ebpf, AttachMode::Tracepoint) {
            Ok(()) => Ok(Probe::attached(ebpf, Attached::whole(AttachMode::Tracepoint, &rejected), coalesce_appends)),
            Err(why) => {
                rejected.push((AttachMode::Tracepoint, why));
                let reasons: Vec<String> = rejected.iter().map(|(m, why)| format!("{m}: {why}")).collect();
                if options.mode.is_some() {
                    return Err(StartError::Refused(reasons.join("; ")));
                }
                Err(StartError::NoMode(reasons.join("; ")))
            }
        }
    }

    fn attached(ebpf: Ebpf, attached: Attached, coalesce_appends: u8) -> Probe {
        match attached.hooks.first() {
            Some(first) if attached.alike() => {
                for (better, why) in &first.refused {
                    tracing::info!(mode = %better, reason = %why, "attach mode not usable");
                }
            }
            _ => {
                for hook in &attached.hooks {
                    for (better, why) in &hook.refused {
                        tracing::info!(hook = %hook.hook, mode = %better, reason = %why, "attach mode not usable for this hook");
                    }
                }
            }
        }
        tracing::info!(
            mode = %attached.mode,
            hooks = %attached.summary(),
            coalesce_appends = coalesce_appends != 0,
            "kernel programs attached"
        );
        Probe { ebpf, attached }
    }

    /// The best mode any hook family took (what `attach_mode` reports).
    pub fn mode(&self) -> AttachMode {
        self.attached.mode
    }

    /// What each hook family uses, and why better mechanisms were refused.
    pub fn attachment(&self) -> &Attached {
        &self.attached
    }

    /// Reports changes to this inode from now on; `known_end` is its current size.
    ///
    /// An entry the kernel side made already (the file was created in, or moved into, a
    /// watched directory) is kept: it has counted every write since, and replacing it would
    /// race with the writes landing while the daemon looked at the file (a copy's known end
    /// set back to the size the daemon saw, the folded writes after it forgotten).
    pub fn watch_inode(&mut self, inode: InodeKey, known_end: u64) -> anyhow::Result<()> {
        let mut map: HashMap<_, InodeKey, WatchedInode> = self.map(names::WATCHED_INODES)?;
        match map.insert(inode, WatchedInode::new(known_end), BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                anyhow::bail!("the kernel's table of watched files is full (raise [collector] max_files)")
            }
            Err(e) => Err(e).context("adding a watched inode"),
        }
    }

    /// The highest end the kernel saw written to a watched inode (`WatchedInode::known_end`).
    pub fn known_end(&self, inode: InodeKey) -> Option<u64> {
        let map: HashMap<_, InodeKey, WatchedInode> = HashMap::try_from(self.ebpf.map(names::WATCHED_INODES)?).ok()?;
        map.get(&inode, 0).ok().map(|w| w.known_end)
    }

    /// How many truncations of a watched inode the kernel has counted, each as it began
    /// (`WatchedInode::truncations`).
    pub fn truncations(&self, inode: InodeKey) -> Option<u64> {
        let map: HashMap<_, InodeKey, WatchedInode> = HashMap::try_from(self.ebpf.map(names::WATCHED_INODES)?).ok()?;
        map.get(&inode, 0).ok().map(|w| w.truncations)
    }

    /// The kernel's record of a watched inode's truncations: how many began, and the last
    /// one done (`WatchedInode::truncated_number` and its sizes).
    pub fn kernel_truncations(&self, inode: InodeKey) -> Option<crate::engine::KernelTruncations> {
        let map: HashMap<_, InodeKey, WatchedInode> = HashMap::try_from(self.ebpf.map(names::WATCHED_INODES)?).ok()?;
        map.get(&inode, 0).ok().map(|w| crate::engine::KernelTruncations {
            counted: w.truncations,
            last_done: w.truncated_number,
            size_before: w.truncated_from,
            size_after: w.truncated_to,
        })
    }

    pub fn unwatch_inode(&mut self, inode: InodeKey) -> anyhow::Result<()> {
        self.forget_read_position(inode)?;
        let mut map: HashMap<_, InodeKey, WatchedInode> = self.map(names::WATCHED_INODES)?;
        absent_is_removed(map.remove(&inode)).context("removing a watched inode")
    }

    /// Where the daemon has read `inode` to: what other tasks read past it comes with its
    /// bytes (a copytruncate's copy may be deleted before the daemon can open it).
    pub fn set_read_position(&mut self, inode: InodeKey, offset: u64) -> anyhow::Result<()> {
        let mut map: HashMap<_, InodeKey, u64> = self.map(names::READ_POSITIONS)?;
        map.insert(inode, offset, 0).context("setting a read position (map full?)")
    }

    /// Reads of `inode` by other tasks carry no bytes any more (a derived file).
    pub fn forget_read_position(&mut self, inode: InodeKey) -> anyhow::Result<()> {
        let mut map: HashMap<_, InodeKey, u64> = self.map(names::READ_POSITIONS)?;
        absent_is_removed(map.remove(&inode)).context("removing a read position")
    }

    /// Reports files created in (or renamed into) this directory.
    pub fn unwatch_dir(&mut self, dir: InodeKey) -> anyhow::Result<()> {
        let mut map: HashMap<_, InodeKey, u8> = self.map(names::WATCHED_DIRS)?;
        absent_is_removed(map.remove(&dir)).context("removing a watched directory")
    }

    pub fn watch_dir(&mut self, dir: InodeKey) -> anyhow::Result<()> {
        let mut map: HashMap<_, InodeKey, u8> = self.map(names::WATCHED_DIRS)?;
        map.insert(dir, 1, 0).context("adding a watched directory (map full?)")
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        let map = self.ebpf.map(names::COUNTERS).context("COUNTERS map")?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let sum = |c: Counter| -> anyhow::Result<u64> { Ok(counters.get(&(c as u32), 0)?.iter().sum()) };
        Ok(Counters { emitted: sum(Counter::Emitted)?, lost: sum(Counter::RingBufferLost)? })
    }

    /// The event stream; can be taken once.
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(names::EVENTS).context("EVENTS map already taken")?;
        Ok(RingBuf::try_from(map)?)
    }

    fn map<'a, V: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>>(
        &'a mut self,
        name: &str,
    ) -> anyhow::Result<V> {
        let map = self.ebpf.map_mut(name).with_context(|| format!("map {name} missing from the object"))?;
        Ok(V::try_from(map)?)
    }
}

/// The empty programs on the write hooks of one mode, and nothing else (collector-ebpf's
/// floor.rs): what hooking alone costs a write. Attached until dropped.
pub struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    pub fn attach(mode: AttachMode) -> Result<Floor, StartError> {
        preflight::check()?;
        let mut ebpf = EbpfLoader::new().load(OBJECT).context("loading the eBPF object").map_err(StartError::Load)?;
        let names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_owned()).collect();
        let planned = attach::plan_floor(mode, names.iter().map(String::as_str));
        if planned.is_empty() {
            return Err(StartError::Refused(format!("{mode}: this build has no empty programs for it")));
        }
        let mut btf = None;
        for p in &planned {
            attach_one(&mut ebpf, p, &mut btf)
                .map_err(|e| StartError::Refused(format!("{mode}: {}: {e:#}", p.program)))?;
        }
        Ok(Floor { _ebpf: ebpf })
    }
}

/// Loads and attaches every program of `mode`; on failure unloads what it attached and says
/// which program failed and why.
fn attach_mode(ebpf: &mut Ebpf, mode: AttachMode) -> Result<(), String> {
    let names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_owned()).collect();
    let planned = attach::plan(mode, names.iter().map(String::as_str));
    if planned.is_empty() {
        return Err("this build has no programs for it".into());
    }
    attach_all(ebpf, &planned, &mut None).map(drop)
}

/// Each hook family on the first of `mechanisms_from(first)` that takes all its programs.
/// Fails, with everything unloaded, when a family takes none of them, or when `first` must
/// be taken (forced) and no family takes it.
fn attach_per_hook(ebpf: &mut Ebpf, first: AttachMode, first_required: bool) -> Result<Attached, String> {
    let names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_owned()).collect();
    let modes = attach::mechanisms_from(first);
    if let Some(program) = modes.iter().find_map(|&m| attach::without_hook(m, names.iter().map(String::as_str)).pop()) {
        return Err(format!("{program}: belongs to no hook family (this build is wrong)"));
    }
    let mut btf = None;
    let mut attached: Vec<String> = Vec::new();
    let mut hooks = Vec::new();
    let mut failure = None;
    for hook in attach::Hook::ALL {
        let mut refused = Vec::new();
        for &mode in modes {
            let planned = attach::plan_hook(mode, hook, names.iter().map(String::as_str));
            if planned.is_empty() {
                refused.push((mode, "this build has no programs for it".to_owned()));
                continue;
            }
            match attach_all(ebpf, &planned, &mut btf) {
                Ok(programs) => {
                    attached.extend(programs);
                    hooks.push(HookChoice { hook, mode, refused: std::mem::take(&mut refused) });
                    break;
                }
                Err(why) => refused.push((mode, why)),
            }
        }
        // A family that took a mechanism left `refused` empty.
        if !refused.is_empty() {
            let reasons: Vec<String> = refused.iter().map(|(m, why)| format!("{m}: {why}")).collect();
            failure = Some(format!("the {hook} hooks: {}", reasons.join("; ")));
            break;
        }
    }
    let attachment = Attached::per_hook(hooks);
    if failure.is_none() && first_required && attachment.mode != first {
        let why = attachment.hooks.iter().find_map(|h| h.refused.iter().find(|(m, _)| *m == first)).map(|(_, w)| w);
        failure = Some(format!("no hook takes it ({})", why.map_or("", String::as_str)));
    }
    match failure {
        None => Ok(attachment),
        Some(why) => {
            for name in &attached {
                unload(ebpf, name);
            }
            Err(why)
        }
    }
}

/// Loads and attaches `planned`, all or nothing: the programs attached, or which one failed
/// and why (with the others unloaded).
fn attach_all(ebpf: &mut Ebpf, planned: &[Planned], btf: &mut Option<aya::Btf>) -> Result<Vec<String>, String> {
    let mut attached = Vec::new();
    for p in planned {
        match attach_one(ebpf, p, btf) {
            Ok(()) => attached.push(p.program.clone()),
            Err(e) if p.optional => {
                tracing::debug!(program = %p.program, error = %format!("{e:#}"), "optional program not attached");
            }
            Err(e) => {
                for name in &attached {
                    unload(ebpf, name);
                }
                unload(ebpf, &p.program);
                return Err(format!("{}: {e:#}", p.program));
            }
        }
    }
    Ok(attached)
}

fn attach_one(ebpf: &mut Ebpf, planned: &Planned, btf: &mut Option<aya::Btf>) -> anyhow::Result<()> {
    let program = ebpf.program_mut(&planned.program).context("program vanished from the object")?;
    let kernel_btf = |btf: &mut Option<aya::Btf>| -> anyhow::Result<aya::Btf> {
        if btf.is_none() {
            *btf = Some(aya::Btf::from_sys_fs().context("reading kernel BTF for fentry")?);
        }
        Ok(btf.clone().expect("set above"))
    };
    match (&planned.target, program) {
        (Target::SyscallTracepoint(name), Program::TracePoint(p)) => {
            load(p.load())?;
            p.attach("syscalls", name).context("attach")?;
        }
        (Target::RawTracepoint(name), Program::RawTracePoint(p)) => {
            load(p.load())?;
            p.attach(name).context("attach")?;
        }
        (Target::Fentry(func), Program::FEntry(p)) => {
            load(p.load(func, &kernel_btf(btf)?))?;
            p.attach().context("attach")?;
        }
        (Target::Fexit(func), Program::FExit(p)) => {
            load(p.load(func, &kernel_btf(btf)?))?;
            p.attach().context("attach")?;
        }
        (Target::Kprobe(func) | Target::Kretprobe(func), Program::KProbe(p)) => {
            load(p.load())?;
            p.attach(func, 0).context("attach")?;
        }
        (target, _) => anyhow::bail!("program type does not fit {target:?}"),
    }
    Ok(())
}

fn load(result: Result<(), aya::programs::ProgramError>) -> anyhow::Result<()> {
    result.context("load")
}

fn unload(ebpf: &mut Ebpf, name: &str) {
    let Some(program) = ebpf.program_mut(name) else { return };
    let _ = match program {
        Program::TracePoint(p) => p.unload(),
        Program::RawTracePoint(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        _ => Ok(()),
    };
}

/// A map entry removed, or never there: the same outcome.
fn absent_is_removed(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    /// Each name the daemon looks up is a symbol of the built object: the ELF string table
    /// holds it whole, between NULs.
    #[test]
    fn the_object_defines_every_map_and_global_the_daemon_names() {
        for name in collector_common::names::ALL {
            let symbol = [b"\0", name.as_bytes(), b"\0"].concat();
            assert!(super::OBJECT.windows(symbol.len()).any(|w| w == symbol), "the kernel programs define no {name}");
        }
        // And the check can fail.
        assert!(!super::OBJECT.windows(9).any(|w| w == b"\0NO_SUCH\0"));
    }
}
