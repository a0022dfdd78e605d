//! Arguments of kernel functions whose parameters moved between kernels: their positions
//! come from the kernel's BTF (OFFSETS). A program may load from its context only at an
//! offset fixed in the instruction, and LLVM folds one-load-per-position code into a single
//! load at a computed offset, which the verifier refuses ("dereference of modified ctx
//! ptr"). So the slot is read with bpf_probe_read_kernel; the position is a load-time
//! constant, so the verifier knows the address is inside the context.

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_probe_read_kernel,
    programs::{FEntryContext, FExitContext, ProbeContext},
};

/// Argument slots readable by position (the daemon refuses kernels that need more).
const SLOTS: u32 = 6;

#[inline(always)]
fn read_slot(ctx: *mut core::ffi::c_void, byte_offset: usize) -> u64 {
    // SAFETY: the offset is an argument slot or a pt_regs register of the context, and
    // bpf_probe_read_kernel accepts any address, returning an error on a fault.
    unsafe { bpf_probe_read_kernel((ctx as *const u8).add(byte_offset) as *const u64).unwrap_or(0) }
}

/// Argument `n` (from 0) of an fentry program's function; 0 past the sixth.
#[inline(always)]
pub fn fentry_arg(ctx: &FEntryContext, n: u32) -> u64 {
    if n >= SLOTS {
        return 0;
    }
    read_slot(ctx.as_ptr(), n as usize * 8)
}

/// Slot `n` of an fexit program: the arguments, then the return value.
#[inline(always)]
pub fn fexit_slot(ctx: &FExitContext, n: u32) -> u64 {
    if n > SLOTS {
        return 0;
    }
    read_slot(ctx.as_ptr(), n as usize * 8)
}

/// Argument `n` (from 0) of a kprobe's function, from the registers its calling convention
/// passes it in; 0 past the sixth.
#[inline(always)]
pub fn kprobe_arg(ctx: &ProbeContext, n: u32) -> u64 {
    match register_of_arg(n) {
        Some(offset) => read_slot(ctx.as_ptr(), offset),
        None => 0,
    }
}

/// x86-64: rdi, rsi, rdx, rcx, r8, r9.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn register_of_arg(n: u32) -> Option<usize> {
    use aya_ebpf::bindings::pt_regs;
    Some(match n {
        0 => core::mem::offset_of!(pt_regs, rdi),
        1 => core::mem::offset_of!(pt_regs, rsi),
        2 => core::mem::offset_of!(pt_regs, rdx),
        3 => core::mem::offset_of!(pt_regs, rcx),
        4 => core::mem::offset_of!(pt_regs, r8),
        5 => core::mem::offset_of!(pt_regs, r9),
        _ => return None,
    })
}

/// arm64: x0 to x5, the first registers of the context (struct pt_regs begins with
/// user_pt_regs).
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn register_of_arg(n: u32) -> Option<usize> {
    use aya_ebpf::bindings::user_pt_regs;
    (n < SLOTS).then(|| core::mem::offset_of!(user_pt_regs, regs) + n as usize * 8)
}
