//! The collector's kernel programs. They watch a set of inodes and directories (maps filled
//! by the daemon) and report, for those only, every write, read, copy, rename, truncate,
//! unlink and creation as a record in one ring buffer.
//!
//! Layout knowledge lives in `kernel.rs` alone; each hook family has its own file, with one
//! body shared by every attach mode and thin entry points per mode.
#![no_std]
// The fully ordered increment of a folded write (emit.rs) is written as BPF assembly.
#![feature(asm_experimental_arch)]
#![no_main]

mod args;
mod capture;
mod copy;
mod emit;
mod floor;
mod kernel;
mod lifecycle;
mod maps;
mod pending;
mod rename;
mod truncate;
mod write;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
