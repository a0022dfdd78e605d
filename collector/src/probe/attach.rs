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

/// The oldest kernel series where fentry/kprobe passed the guest tests. On Debian 11's 5.10,
/// with `--attach-mode fentry`, the rename, unlink, truncate and open families take fentry,
/// but write, read and copy fall back to kprobe (that verifier refuses a `loff_t *`
/// argument to fentry programs), and kprobe on 5.10 misses logrotate's reads: 8 of the 19
/// rotation tests (every copytruncate) fail there, while tracepoint mode passes them. 5.11
/// to 5.19 were not run (no archive reachable here has them). Below 6.1 the collector,
/// choosing on its own, takes tracepoint mode; `--attach-mode` still forces the others.
const VFS_MODES_VERIFIED_FROM: (u32, u32) = (6, 1);

/// Why the collector, choosing on its own, does not try fentry/kprobe on kernel `release`
/// (`uname -r`), if it does not.
pub fn unverified_release(release: &str) -> Option<String> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    let (from_major, from_minor) = VFS_MODES_VERIFIED_FROM;
    ((major, minor) < VFS_MODES_VERIFIED_FROM).then(|| {
        format!(
            "fentry/kprobe not verified on Linux {major}.{minor} (tested from {from_major}.{from_minor}; on 5.10 \
             kprobe misses the reads copytruncate depends on); --attach-mode forces them"
        )
    })
}

/// Whether folding appends (see `ProbeOptions::coalesce_appends`) is safe here: it needs
/// the programs' atomic add to be a full barrier, which it is as x86-64's JIT emits it
/// (`lock add`) and is not on arm64.
pub const FOLDING_IS_ORDERED: bool = cfg!(target_arch = "x86_64");

/// The families of hooks that choose their mechanism together: each family's programs
/// share a call's state from entry to exit (do_renameat2 brackets vfs_rename; do_truncate's
/// call is annotated by notify_change), so they attach the same way. Across families,
/// fentry and kprobe programs keep the same per-thread state (`PENDING`), so a family on
/// kprobe works beside families on fentry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Write,
    Read,
    Copy,
    Rename,
    Unlink,
    Truncate,
    Open,
}

impl Hook {
    pub const ALL: [Hook; 7] =
        [Hook::Write, Hook::Read, Hook::Copy, Hook::Rename, Hook::Unlink, Hook::Truncate, Hook::Open];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Write => "write",
            Hook::Read => "read",
            Hook::Copy => "copy",
            Hook::Rename => "rename",
            Hook::Unlink => "unlink",
            Hook::Truncate => "truncate",
            Hook::Open => "open",
        }
    }

    /// The family of a kernel function the fentry/kprobe programs hook.
    fn of_function(function: &str) -> Option<Hook> {
        Some(match function {
            "vfs_write" | "vfs_writev" | "vfs_iter_write" => Hook::Write,
            "vfs_read" | "vfs_readv" => Hook::Read,
            "vfs_copy_file_range" | "do_splice_direct" => Hook::Copy,
            "do_renameat2" | "vfs_rename" => Hook::Rename,
            "vfs_unlink" => Hook::Unlink,
            "do_truncate" | "notify_change" => Hook::Truncate,
            "do_filp_open" => Hook::Open,
            _ => return None,
        })
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The mechanisms a hook family tries, in order, when `first` is asked for or chosen.
/// Syscall tracepoints are a mode of their own, never one family's fallback: they resolve
/// fds themselves and bracket whole syscalls, and are proven only as a whole.
pub fn mechanisms_from(first: AttachMode) -> &'static [AttachMode] {
    match first {
        AttachMode::Fentry => &[AttachMode::Fentry, AttachMode::Kprobe],
        AttachMode::Kprobe => &[AttachMode::Kprobe],
        AttachMode::Tracepoint => &[AttachMode::Tracepoint],
    }
}

/// What one hook family attached with, and why the better mechanisms it tried were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookChoice {
    pub hook: Hook,
    pub mode: AttachMode,
    pub refused: Vec<(AttachMode, String)>,
}

/// How the programs are attached: one mechanism per hook family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// The best mechanism any family took: what `attach_mode` reports.
    pub mode: AttachMode,
    pub hooks: Vec<HookChoice>,
}

impl Attached {
    /// Every family on `mode`, `refused` saying why better modes were not taken.
    pub fn whole(mode: AttachMode, refused: &[(AttachMode, String)]) -> Attached {
        let hooks = Hook::ALL.iter().map(|&hook| HookChoice { hook, mode, refused: refused.to_vec() }).collect();
        Attached { mode, hooks }
    }

    /// From each family's choice (none may be empty).
    pub fn per_hook(hooks: Vec<HookChoice>) -> Attached {
        let mode = AttachMode::BEST_FIRST
            .into_iter()
            .find(|m| hooks.iter().any(|h| h.mode == *m))
            .unwrap_or(AttachMode::Tracepoint);
        Attached { mode, hooks }
    }

    /// Whether every family took the same mode after the same refusals (one mode for all:
    /// said once, not per family).
    pub fn alike(&self) -> bool {
        self.hooks.windows(2).all(|w| w[0].mode == w[1].mode && w[0].refused == w[1].refused)
    }

    /// (family, mode) pairs, for /status and /metrics.
    pub fn by_hook(&self) -> Vec<(&'static str, &'static str)> {
        self.hooks.iter().map(|h| (h.hook.name(), h.mode.name())).collect()
    }

    pub fn mode_of(&self, hook: Hook) -> AttachMode {
        self.hooks.iter().find(|h| h.hook == hook).map_or(self.mode, |h| h.mode)
    }

    /// The families not on `mode`.
    pub fn exceptions(&self) -> impl Iterator<Item = &HookChoice> {
        self.hooks.iter().filter(|h| h.mode != self.mode)
    }

    /// `fentry`, or `fentry (copy on kprobe)` where families differ.
    pub fn summary(&self) -> String {
        let exceptions: Vec<String> = self.exceptions().map(|h| format!("{} on {}", h.hook, h.mode)).collect();
        if exceptions.is_empty() { self.mode.to_string() } else { format!("{} ({})", self.mode, exceptions.join(", ")) }
    }
}

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

impl Target {
    /// The hook family of a kernel function's program (None for tracepoints).
    fn hook(&self) -> Option<Hook> {
        match self {
            Target::Fentry(f) | Target::Fexit(f) | Target::Kprobe(f) | Target::Kretprobe(f) => Hook::of_function(f),
            Target::SyscallTracepoint(_) | Target::RawTracepoint(_) => None,
        }
    }
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

/// The programs of `mode` among `program_names` that hook `hook`'s kernel functions.
pub fn plan_hook<'a>(mode: AttachMode, hook: Hook, program_names: impl IntoIterator<Item = &'a str>) -> Vec<Planned> {
    plan(mode, program_names).into_iter().filter(|p| p.target.hook() == Some(hook)).collect()
}

/// The programs of `mode` that belong to no hook family (a program added without a family:
/// per-hook attaching would leave it out).
pub fn without_hook<'a>(mode: AttachMode, program_names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    plan(mode, program_names).into_iter().filter(|p| p.target.hook().is_none()).map(|p| p.program).collect()
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
        assert!(unverified_release("5.4.0-1").is_some());
        assert_eq!(
            unverified_release("5.15.0-204-generic").unwrap(),
            "fentry/kprobe not verified on Linux 5.15 (tested from 6.1; on 5.10 kprobe misses the reads copytruncate \
             depends on); --attach-mode forces them"
        );
        assert!(unverified_release("4.19.0").is_some());
        assert!(unverified_release("6.0.9").is_some());
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

    /// Every kernel function collector-ebpf hooks belongs to a family (else per-hook
    /// attaching would leave its program out; the loader refuses such a build too).
    #[test]
    fn every_hooked_kernel_function_has_a_family() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../collector-ebpf/src");
        let mut functions = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == "floor.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for attribute in [
                "#[fentry(function = \"",
                "#[fexit(function = \"",
                "#[kprobe(function = \"",
                "#[kretprobe(function = \"",
            ] {
                for (at, _) in text.match_indices(attribute) {
                    let rest = &text[at + attribute.len()..];
                    functions.push(rest[..rest.find('"').unwrap()].to_owned());
                }
            }
        }
        assert!(functions.len() > 30, "{functions:?}");
        for f in &functions {
            assert!(Hook::of_function(f).is_some(), "{f} has no hook family");
        }
        for hook in Hook::ALL {
            assert!(functions.iter().any(|f| Hook::of_function(f) == Some(hook)), "{hook} hooks nothing");
        }
        assert!(without_hook(AttachMode::Fentry, NAMES).is_empty());
    }

    #[test]
    fn a_family_falls_back_to_kprobe_only_from_fentry() {
        assert_eq!(mechanisms_from(AttachMode::Fentry), [AttachMode::Fentry, AttachMode::Kprobe]);
        assert_eq!(mechanisms_from(AttachMode::Kprobe), [AttachMode::Kprobe]);
        assert_eq!(mechanisms_from(AttachMode::Tracepoint), [AttachMode::Tracepoint]);
        let renames = plan_hook(AttachMode::Kprobe, Hook::Rename, NAMES);
        assert_eq!(renames.iter().map(|p| p.program.as_str()).collect::<Vec<_>>(), ["kprobe_do_renameat2"]);
        assert!(plan_hook(AttachMode::Tracepoint, Hook::Write, NAMES).is_empty());
    }

    #[test]
    fn attached_reports_the_best_mode_taken_and_each_exception() {
        let choice = |hook, mode| HookChoice { hook, mode, refused: Vec::new() };
        let mut hooks: Vec<HookChoice> = Hook::ALL.iter().map(|&h| choice(h, AttachMode::Fentry)).collect();
        hooks[2] = HookChoice {
            hook: Hook::Copy,
            mode: AttachMode::Kprobe,
            refused: vec![(AttachMode::Fentry, "fentry_do_splice_direct: load: EACCES".into())],
        };
        let attached = Attached::per_hook(hooks);
        assert_eq!(attached.mode, AttachMode::Fentry);
        assert_eq!(attached.mode_of(Hook::Copy), AttachMode::Kprobe);
        assert_eq!(attached.mode_of(Hook::Read), AttachMode::Fentry);
        assert_eq!(attached.summary(), "fentry (copy on kprobe)");
        assert!(!attached.alike());
        let all_kprobe = Attached::per_hook(Hook::ALL.iter().map(|&h| choice(h, AttachMode::Kprobe)).collect());
        assert_eq!(all_kprobe.summary(), "kprobe");
        let whole = Attached::whole(AttachMode::Tracepoint, &[(AttachMode::Fentry, "EPERM".into())]);
        assert_eq!(whole.summary(), "tracepoint");
        assert!(whole.hooks.iter().all(|h| h.refused.len() == 1) && whole.alike());
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
