//! Empty programs on the hooks each attach mode puts on every write(2): `collector floor`
//! attaches one mode's set instead of the real programs, so the writer-overhead benchmark
//! measures what the hooking itself costs a write (trampoline, kprobe, tracing path) with
//! no program work at all: the least any program on those hooks can cost. `run` never
//! attaches them (their names carry no mode prefix, see attach.rs).

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe, tracepoint},
    programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};

#[fexit(function = "vfs_write")]
pub fn floor_fexit_vfs_write(_ctx: FExitContext) -> i32 {
    0
}
#[kprobe(function = "vfs_write")]
pub fn floor_kprobe_vfs_write(_ctx: ProbeContext) -> u32 {
    0
}
#[kretprobe(function = "vfs_write")]
pub fn floor_kretprobe_vfs_write(_ctx: RetProbeContext) -> u32 {
    0
}
#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn floor_tp_sys_enter_write(_ctx: TracePointContext) {}
#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn floor_tp_sys_exit_write(_ctx: TracePointContext) {}
