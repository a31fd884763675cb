//! Hypercalls through the hypercall page.
//!
//! The entry is this crate's own, not `xen-sys`'s: xen-sys 0.0.0-pre2's
//! stubs do not declare the `rcx`/`r11` clobbers of the hypercall page
//! (its stubs use `syscall`, which overwrites both), mark the `call` as
//! `nostack` although it pushes a return address, and pass a fifth argument
//! in `r9` instead of `r8` (see `crate::abi`). The structures and numbers
//! passed come from `crate::abi`.

use core::arch::asm;

use crate::abi::{
    HYPERVISOR_EVENT_CHANNEL_OP, HYPERVISOR_GRANT_TABLE_OP, HYPERVISOR_MEMORY_OP,
    HYPERVISOR_PHYSDEV_OP, HYPERVISOR_SCHED_OP, HYPERVISOR_UPDATE_VA_MAPPING,
};
pub use crate::abi::UVMF_INVLPG;

extern "C" {
    /// The hypercall page (Xen writes a 32-byte stub per hypercall).
    static lwdom_hypercall_page: [u8; 4096];
}

/// Makes hypercall `op` with up to five arguments.
///
/// # Safety
/// The arguments must be what hypercall `op` expects; pointers among them
/// must be valid for what Xen reads and writes through them.
#[inline(always)]
pub unsafe fn hypercall(op: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize) -> isize {
    let entry = core::ptr::addr_of!(lwdom_hypercall_page) as usize + op * 32;
    let ret: isize;
    // SAFETY: the hypercall page holds Xen's stub for `op` at `op * 32`;
    // it clobbers rcx and r11 (and may clobber the argument registers),
    // all declared; the stack is ours (the target has no red zone); the
    // caller vouches for the arguments.
    unsafe {
        asm!(
            "call {entry}",
            entry = in(reg) entry,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rax") ret,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// `sched_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point at the structure `cmd` expects.
pub unsafe fn sched_op(cmd: usize, arg: *const u8) -> isize {
    // SAFETY: forwarded contract.
    unsafe { hypercall(HYPERVISOR_SCHED_OP, cmd, arg as usize, 0, 0, 0) }
}

/// `event_channel_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point at the structure `cmd` expects, valid for writes.
pub unsafe fn event_channel_op(cmd: usize, arg: *mut u8) -> isize {
    // SAFETY: forwarded contract.
    unsafe { hypercall(HYPERVISOR_EVENT_CHANNEL_OP, cmd, arg as usize, 0, 0, 0) }
}

/// `grant_table_op(cmd, arg, count)`.
///
/// # Safety
/// `arg` must point at `count` structures of the kind `cmd` expects.
pub unsafe fn grant_table_op(cmd: usize, arg: *mut u8, count: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { hypercall(HYPERVISOR_GRANT_TABLE_OP, cmd, arg as usize, count, 0, 0) }
}

/// `update_va_mapping(va, pte, flags)`: points the page at `va` at a
/// machine frame.
///
/// # Safety
/// Nothing in this domain may rely on what `va` mapped before.
pub unsafe fn update_va_mapping(va: usize, pte: u64, flags: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { hypercall(HYPERVISOR_UPDATE_VA_MAPPING, va, pte as usize, flags, 0, 0) }
}

/// `memory_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point at the structure `cmd` expects (or be null where it
/// takes none), valid for writes, with any guest handles in it valid for
/// what Xen reads and writes through them.
pub unsafe fn memory_op(cmd: usize, arg: *mut u8) -> isize {
    // SAFETY: forwarded contract.
    unsafe { hypercall(HYPERVISOR_MEMORY_OP, cmd, arg as usize, 0, 0, 0) }
}

/// `physdev_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point at the structure `cmd` expects, valid for writes.
pub unsafe fn physdev_op(cmd: usize, arg: *mut u8) -> isize {
    // SAFETY: forwarded contract.
    unsafe { hypercall(HYPERVISOR_PHYSDEV_OP, cmd, arg as usize, 0, 0, 0) }
}
