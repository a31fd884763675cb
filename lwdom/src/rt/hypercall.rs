//! Hypercalls through the hypercall page, and the few Xen ABI structures
//! the runtime passes to them.

use core::arch::asm;

/// `__HYPERVISOR_mmu_update`.
pub const MMU_UPDATE: usize = 1;
/// `__HYPERVISOR_update_va_mapping`.
pub const UPDATE_VA_MAPPING: usize = 14;
/// `__HYPERVISOR_grant_table_op`.
pub const GRANT_TABLE_OP: usize = 20;
/// `__HYPERVISOR_sched_op`.
pub const SCHED_OP: usize = 29;
/// `__HYPERVISOR_event_channel_op`.
pub const EVENT_CHANNEL_OP: usize = 32;

/// `SCHEDOP_yield`.
pub const SCHEDOP_YIELD: usize = 0;
/// `SCHEDOP_shutdown`.
pub const SCHEDOP_SHUTDOWN: usize = 2;
/// `SCHEDOP_poll`.
pub const SCHEDOP_POLL: usize = 3;

/// `UVMF_INVLPG`: flush the one mapping from this vCPU's TLB.
pub const UVMF_INVLPG: usize = 2;

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

/// `struct sched_shutdown`.
#[repr(C)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

/// `struct sched_poll`.
#[repr(C)]
pub struct SchedPoll {
    /// Guest handle of the ports array.
    pub ports: *const u32,
    /// How many ports.
    pub nr_ports: u32,
    /// Absolute system time (ns) to give up at; 0 waits forever.
    pub timeout: u64,
}

/// `sched_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point at the structure `cmd` expects.
pub unsafe fn sched_op(cmd: usize, arg: *const u8) -> isize {
    // SAFETY: forwarded contract.
    unsafe { hypercall(SCHED_OP, cmd, arg as usize, 0, 0, 0) }
}

/// `event_channel_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point at the structure `cmd` expects, valid for writes.
pub unsafe fn event_channel_op(cmd: usize, arg: *mut u8) -> isize {
    // SAFETY: forwarded contract.
    unsafe { hypercall(EVENT_CHANNEL_OP, cmd, arg as usize, 0, 0, 0) }
}

/// `grant_table_op(cmd, arg, count)`.
///
/// # Safety
/// `arg` must point at `count` structures of the kind `cmd` expects.
pub unsafe fn grant_table_op(cmd: usize, arg: *mut u8, count: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { hypercall(GRANT_TABLE_OP, cmd, arg as usize, count, 0, 0) }
}

/// `update_va_mapping(va, pte, flags)`: points the page at `va` at a
/// machine frame.
///
/// # Safety
/// Nothing in this domain may rely on what `va` mapped before.
pub unsafe fn update_va_mapping(va: usize, pte: u64, flags: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { hypercall(UPDATE_VA_MAPPING, va, pte as usize, flags, 0, 0) }
}
