//! CPU exceptions: a trap table (`set_trap_table`) whose entries print what
//! happened on the console and end the domain as crashed, so a faulting
//! guest says why instead of vanishing.
//!
//! Xen delivers an exception to a 64-bit PV guest through a bounce frame on
//! the kernel stack: `rcx`, `r11`, then (for vectors that have one) the
//! error code, then `rip`, `cs`, `rflags`, `rsp`, `ss`.

use super::hypercall::hypercall;
use super::{shared_info, shutdown, ShutdownReason};
use crate::abi::{trap_info, FLAT_KERNEL_CS, HYPERVISOR_SET_TRAP_TABLE};

core::arch::global_asm!(
    // In a text section of their own, whatever section other module-level
    // assembly left current.
    ".pushsection .text.lwdom_traps, \"ax\"",
    ".macro lwdom_trap_stub vec, err",
    ".globl lwdom_trap_\\vec",
    "lwdom_trap_\\vec:",
    "    mov %rsp, %rdi",
    "    mov $\\vec, %esi",
    "    mov $\\err, %edx",
    "    and $-16, %rsp",
    "    call lwdom_trap",
    "    ud2",
    ".endm",
    "lwdom_trap_stub 0, 0",
    "lwdom_trap_stub 3, 0",
    "lwdom_trap_stub 4, 0",
    "lwdom_trap_stub 5, 0",
    "lwdom_trap_stub 6, 0",
    "lwdom_trap_stub 7, 0",
    "lwdom_trap_stub 10, 1",
    "lwdom_trap_stub 11, 1",
    "lwdom_trap_stub 12, 1",
    "lwdom_trap_stub 13, 1",
    "lwdom_trap_stub 14, 1",
    "lwdom_trap_stub 16, 0",
    "lwdom_trap_stub 17, 1",
    "lwdom_trap_stub 19, 0",
    ".popsection",
    options(att_syntax)
);

extern "C" {
    fn lwdom_trap_0();
    fn lwdom_trap_3();
    fn lwdom_trap_4();
    fn lwdom_trap_5();
    fn lwdom_trap_6();
    fn lwdom_trap_7();
    fn lwdom_trap_10();
    fn lwdom_trap_11();
    fn lwdom_trap_12();
    fn lwdom_trap_13();
    fn lwdom_trap_14();
    fn lwdom_trap_16();
    fn lwdom_trap_17();
    fn lwdom_trap_19();
}

fn name(vector: u32) -> &'static str {
    match vector {
        0 => "divide error",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating point error",
        17 => "alignment check",
        19 => "SIMD floating point error",
        _ => "exception",
    }
}

/// Registers the trap table; returns Xen's error code on failure.
pub(super) fn init() -> Result<(), isize> {
    // `flags` bits 0-1: the lowest privilege level that may raise the
    // vector with `int` (3 for `int3`).
    let entry = |vector: u8, f: unsafe extern "C" fn()| trap_info { vector, flags: if vector == 3 { 3 } else { 0 }, cs: FLAT_KERNEL_CS, address: f as usize as u64 };
    let table = [
        entry(0, lwdom_trap_0),
        entry(3, lwdom_trap_3),
        entry(4, lwdom_trap_4),
        entry(5, lwdom_trap_5),
        entry(6, lwdom_trap_6),
        entry(7, lwdom_trap_7),
        entry(10, lwdom_trap_10),
        entry(11, lwdom_trap_11),
        entry(12, lwdom_trap_12),
        entry(13, lwdom_trap_13),
        entry(14, lwdom_trap_14),
        entry(16, lwdom_trap_16),
        entry(17, lwdom_trap_17),
        entry(19, lwdom_trap_19),
        trap_info { vector: 0, flags: 0, cs: 0, address: 0 },
    ];
    // SAFETY: set_trap_table reads the array up to the entry whose address
    // is 0; Xen copies it, so the local array may go away afterwards. The
    // handlers are the stubs above.
    let rc = unsafe { hypercall(HYPERVISOR_SET_TRAP_TABLE, table.as_ptr() as usize, 0, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

/// Reports a CPU exception and ends the domain.
///
/// # Safety
/// Called only by the trap stubs, with `frame` pointing at Xen's bounce
/// frame.
#[no_mangle]
unsafe extern "C" fn lwdom_trap(frame: *const u64, vector: u32, has_error: u32) -> ! {
    // SAFETY: the bounce frame holds rcx, r11, [error code], rip, ...
    let (error, rip) = unsafe {
        if has_error != 0 {
            (frame.add(2).read(), frame.add(3).read())
        } else {
            (0, frame.add(2).read())
        }
    };
    // vcpu_info[0].arch.cr2 at offset 16 of the shared info page.
    // SAFETY: the shared info page is mapped before the trap table is set.
    let cr2 = unsafe { shared_info().add(16).cast::<u64>().read_volatile() };
    crate::println!(
        "lwdom: CPU exception: {} (vector {vector}) at rip {rip:#x}, error code {error:#x}, cr2 {cr2:#x}",
        name(vector)
    );
    shutdown(ShutdownReason::Crash)
}
