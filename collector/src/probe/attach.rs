//! Attach planning, pure: which program of the object attaches where in which mode, derived
//! from the program's name (`<mode>_<kernel function or tracepoint>`). The loader (mod.rs)
//! is the only code that makes bpf syscalls.

use std::fmt;

/// How the programs hook the kernel, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum AttachMode {
    /// fentry/fexit on the VFS functions: cheapest, needs BPF trampolines (and no lockdown).
    Fentry,
    /// kprobe/kretprobe on the same functions: needs CONFIG_KPROBES.
    Kprobe,
    /// Syscall tracepoints, resolving fd -> file -> inode in the program: works everywhere.
    Tracepoint,
}

impl AttachMode {
    pub const BEST_FIRST: [AttachMode; 3] = [AttachMode::Fentry, AttachMode::Kprobe, AttachMode::Tracepoint];

    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Fentry => "fentry",
            AttachMode::Kprobe => "kprobe",
            AttachMode::Tracepoint => "tracepoint",
        }
    }
}

/// The oldest kernel series where the fentry and kprobe modes passed the guest tests. On
/// 5.10 and 5.15 kprobe mode loads but misses reads that copytruncate depends on (and fentry
/// is refused), while tracepoint mode ships every rotation correctly: there, choosing on
/// its own, the collector takes tracepoint mode. `--attach-mode` still forces either.
pub const VFS_MODES_VERIFIED_FROM: (u32, u32) = (6, 1);

/// Why the collector, choosing on its own, does not try fentry/kprobe on kernel `release`
/// (`uname -r`), if it does not.
pub fn unverified_release(release: &str) -> Option<String> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    let (want_major, want_minor) = VFS_MODES_VERIFIED_FROM;
    ((major, minor) < VFS_MODES_VERIFIED_FROM).then(|| {
        format!(
            "not verified on Linux {major}.{minor} (tested from {want_major}.{want_minor}; on 5.10 and 5.15 kprobe mode \
             misses the reads copytruncate depends on); --attach-mode forces it"
        )
    })
}

/// Whether folding appends (see `ProbeOptions::coalesce_appends`) is safe here: it needs
/// the programs' atomic add to be a full barrier, which it is as x86-64's JIT emits it
/// (`lock add`) and is not on arm64.
pub const FOLDING_IS_ORDERED: bool = cfg!(target_arch = "x86_64");

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one program attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `syscalls/<name>` tracepoint.
    SyscallTracepoint(String),
    /// Raw tracepoint by name; `optional` ones may be missing on older kernels.
    RawTracepoint(String),
    Fentry(String),
    Fexit(String),
    Kprobe(String),
    Kretprobe(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub program: String,
    pub target: Target,
    /// The mode still works without it (it only sharpens events; see capture.rs).
    pub optional: bool,
}

/// The programs of `mode` among `program_names`, with their targets.
pub fn plan<'a>(mode: AttachMode, program_names: impl IntoIterator<Item = &'a str>) -> Vec<Planned> {
    plan_named(mode, program_names, Some)
}

/// The empty programs of `mode` (collector-ebpf's floor.rs), named `floor_<a name of that
/// mode>`: what `collector floor` attaches.
pub fn plan_floor<'a>(mode: AttachMode, program_names: impl IntoIterator<Item = &'a str>) -> Vec<Planned> {
    plan_named(mode, program_names, |name| name.strip_prefix(FLOOR_PREFIX))
}

/// The programs whose `attach_name` (None: not one of this plan's) belongs to `mode`.
fn plan_named<'a>(
    mode: AttachMode,
    program_names: impl IntoIterator<Item = &'a str>,
    attach_name: impl Fn(&'a str) -> Option<&'a str>,
) -> Vec<Planned> {
    let mut planned: Vec<Planned> = program_names
        .into_iter()
        .filter_map(|name| {
            let (program_mode, target, optional) = target_of(attach_name(name)?)?;
            (program_mode == mode && !absent_here(&target, ABSENT_SYSCALLS)).then(|| Planned {
                program: name.to_owned(),
                target,
                optional,
            })
        })
        .collect();
    planned.sort_by(|a, b| a.program.cmp(&b.program));
    planned
}

const FLOOR_PREFIX: &str = "floor_";

/// Syscalls this architecture does not have, so neither their tracepoints: arm64 has only
/// the *at forms (asm-generic's table), and its C libraries call those.
pub const ABSENT_SYSCALLS: &[&str] =
    if cfg!(target_arch = "aarch64") { &["open", "creat", "rename", "unlink"] } else { &[] };

/// Whether `target` is the tracepoint of a syscall in `absent`.
fn absent_here(target: &Target, absent: &[&str]) -> bool {
    let Target::SyscallTracepoint(tp) = target else { return false };
    let syscall = tp.strip_prefix("sys_enter_").or_else(|| tp.strip_prefix("sys_exit_"));
    syscall.is_some_and(|s| absent.contains(&s))
}

/// Syscall tracepoints are tracepoint mode's alone: one attached puts every syscall of
/// every task on the tracing path, so fentry/kprobe modes bracket renames with
/// do_renameat2 instead (see rename.rs).
fn target_of(program: &str) -> Option<(AttachMode, Target, bool)> {
    let split = |prefix: &str| program.strip_prefix(prefix).map(str::to_owned);
    if let Some(tp) = split("tp_") {
        return Some((AttachMode::Tracepoint, Target::SyscallTracepoint(tp), false));
    }
    if let Some(tp) = split("raw_tp_") {
        return Some((AttachMode::Tracepoint, Target::RawTracepoint(tp), true));
    }
    if let Some(f) = split("fentry_") {
        return Some((AttachMode::Fentry, Target::Fentry(f), false));
    }
    if let Some(f) = split("fexit_") {
        return Some((AttachMode::Fentry, Target::Fexit(f), false));
    }
    if let Some(f) = split("kprobe_") {
        return Some((AttachMode::Kprobe, Target::Kprobe(f), false));
    }
    if let Some(f) = split("kretprobe_") {
        return Some((AttachMode::Kprobe, Target::Kretprobe(f), false));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfs_modes_are_chosen_only_on_verified_kernels() {
        assert!(unverified_release("5.15.0-204-generic").is_some());
        assert!(unverified_release("5.10.0-46-cloud-amd64").is_some());
        assert_eq!(
            unverified_release("5.15.0-204-generic").unwrap(),
            "not verified on Linux 5.15 (tested from 6.1; on 5.10 and 5.15 kprobe mode misses the reads copytruncate \
             depends on); --attach-mode forces it"
        );
        assert!(unverified_release("4.19.0").is_some());
        assert!(unverified_release("6.1.0-41-cloud-amd64").is_none());
        assert!(unverified_release("6.12.117+deb12-cloud-amd64").is_none());
        assert!(unverified_release("6.18.0").is_none());
        assert!(unverified_release("7.0.1").is_none());
        // Unparseable: nothing is ruled out (the loader and verifier still decide).
        assert!(unverified_release("weird").is_none());
    }

    const NAMES: [&str; 11] = [
        "floor_fexit_vfs_write",
        "floor_tp_sys_exit_write",
        "tp_sys_enter_renameat2",
        "tp_sys_exit_write",
        "tp_sys_enter_write",
        "raw_tp_inode_set_ctime_to_ts",
        "fexit_vfs_write",
        "kretprobe_vfs_write",
        "kprobe_vfs_write",
        "fentry_do_renameat2",
        "kprobe_do_renameat2",
    ];

    #[test]
    fn each_mode_takes_only_its_own_programs() {
        let tp = plan(AttachMode::Tracepoint, NAMES);
        assert_eq!(
            tp.iter().map(|p| p.program.as_str()).collect::<Vec<_>>(),
            ["raw_tp_inode_set_ctime_to_ts", "tp_sys_enter_renameat2", "tp_sys_enter_write", "tp_sys_exit_write"]
        );
        assert_eq!(tp[2].target, Target::SyscallTracepoint("sys_enter_write".into()));
        assert!(tp[0].optional && !tp[1].optional);
        let kp = plan(AttachMode::Kprobe, NAMES);
        assert_eq!(
            kp.iter().map(|p| &p.target).collect::<Vec<_>>(),
            [
                &Target::Kprobe("do_renameat2".into()),
                &Target::Kprobe("vfs_write".into()),
                &Target::Kretprobe("vfs_write".into())
            ]
        );
        let fentry = plan(AttachMode::Fentry, NAMES);
        assert_eq!(
            fentry.iter().map(|p| &p.target).collect::<Vec<_>>(),
            [&Target::Fentry("do_renameat2".into()), &Target::Fexit("vfs_write".into())]
        );
    }

    #[test]
    fn tracepoints_of_syscalls_an_architecture_lacks_are_not_planned() {
        let tp = |name: &str| Target::SyscallTracepoint(name.into());
        let arm64 = ["open", "creat", "rename", "unlink"];
        assert!(absent_here(&tp("sys_enter_rename"), &arm64) && absent_here(&tp("sys_exit_open"), &arm64));
        assert!(!absent_here(&tp("sys_enter_renameat2"), &arm64) && !absent_here(&tp("sys_exit_openat"), &arm64));
        assert!(!absent_here(&tp("sys_enter_rename"), &[]));
        assert!(!absent_here(&Target::Kprobe("rename".into()), &arm64));
        // This build's own list: x86-64 has every legacy syscall, arm64 none of these.
        let planned = plan(AttachMode::Tracepoint, ["tp_sys_enter_rename", "tp_sys_enter_renameat"]);
        let names: Vec<&str> = planned.iter().map(|p| p.program.as_str()).collect();
        if cfg!(target_arch = "aarch64") {
            assert_eq!(names, ["tp_sys_enter_renameat"]);
        } else {
            assert_eq!(names, ["tp_sys_enter_rename", "tp_sys_enter_renameat"]);
        }
    }

    #[test]
    fn the_floor_takes_only_the_empty_programs_of_its_mode() {
        let floor = plan_floor(AttachMode::Fentry, NAMES);
        assert_eq!(floor.iter().map(|p| p.program.as_str()).collect::<Vec<_>>(), ["floor_fexit_vfs_write"]);
        assert_eq!(floor[0].target, Target::Fexit("vfs_write".into()));
        let floor = plan_floor(AttachMode::Tracepoint, NAMES);
        assert_eq!(
            floor.iter().map(|p| &p.target).collect::<Vec<_>>(),
            [&Target::SyscallTracepoint("sys_exit_write".into())]
        );
        assert!(plan_floor(AttachMode::Kprobe, NAMES).is_empty());
    }
}
