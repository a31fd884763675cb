//! Xen system time (nanoseconds since the hypervisor booted) from the
//! vCPU's time record in the shared info page.

use core::sync::atomic::{fence, Ordering};

use super::shared_info;

fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `rdtsc` reads the time stamp counter; it has no memory
    // effects.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Nanoseconds of Xen system time.
pub fn now_ns() -> u64 {
    // vcpu_info[0].time (struct vcpu_time_info) at offset 32.
    let t = shared_info().wrapping_add(32);
    loop {
        // SAFETY: `t` is inside the mapped shared info page; Xen updates
        // the record concurrently, so every field is read volatile and the
        // version check below discards torn reads.
        let (v1, tsc0, sys, mul, shift, v2) = unsafe {
            let v1 = t.cast::<u32>().read_volatile();
            fence(Ordering::Acquire);
            let tsc0 = t.add(8).cast::<u64>().read_volatile();
            let sys = t.add(16).cast::<u64>().read_volatile();
            let mul = t.add(24).cast::<u32>().read_volatile();
            let shift = t.add(28).cast::<i8>().read_volatile();
            fence(Ordering::Acquire);
            let v2 = t.cast::<u32>().read_volatile();
            (v1, tsc0, sys, mul, shift, v2)
        };
        if v1 & 1 != 0 || v1 != v2 {
            continue;
        }
        let mut delta = rdtsc().wrapping_sub(tsc0);
        if shift >= 0 {
            delta <<= shift as u32;
        } else {
            delta >>= (-(shift as i32)) as u32;
        }
        return sys.wrapping_add(((u128::from(delta) * u128::from(mul)) >> 32) as u64);
    }
}
