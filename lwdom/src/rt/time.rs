//! Xen system time (nanoseconds since the hypervisor booted) from the
//! vCPU's time record (`vcpu_info[0].time`, a `vcpu_time_info`) in the
//! shared info page.
//!
//! Each reading extrapolates the record with the TSC. When Xen refreshes
//! the record, the new one can start slightly before where the old one's
//! extrapolation had got to, so readings are clamped to never go back
//! (as Linux's pvclock does without a stable TSC): the platform's `Clock`
//! promises a monotonic clock.

use core::mem::offset_of;
use core::sync::atomic::{fence, AtomicU64, Ordering};

use super::shared_info;
use crate::abi::{vcpu_time_info, VCPU0_TIME};

const VERSION: usize = offset_of!(vcpu_time_info, version);
const TSC_TIMESTAMP: usize = offset_of!(vcpu_time_info, tsc_timestamp);
const SYSTEM_TIME: usize = offset_of!(vcpu_time_info, system_time);
const TSC_TO_SYSTEM_MUL: usize = offset_of!(vcpu_time_info, tsc_to_system_mul);
const TSC_SHIFT: usize = offset_of!(vcpu_time_info, tsc_shift);

/// The latest reading handed out.
static LAST: AtomicU64 = AtomicU64::new(0);

fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `rdtsc` reads the time stamp counter; it has no memory
    // effects.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Nanoseconds of Xen system time; never less than an earlier reading.
pub fn now_ns() -> u64 {
    let t = read();
    let last = LAST.fetch_max(t, Ordering::Relaxed);
    t.max(last)
}

/// One reading of the time record, extrapolated with the TSC.
fn read() -> u64 {
    let t = shared_info().wrapping_add(VCPU0_TIME);
    loop {
        // SAFETY: `t` is inside the mapped shared info page; Xen updates
        // the record concurrently, so every field is read volatile and the
        // version check below discards torn reads.
        let (v1, tsc0, sys, mul, shift, v2) = unsafe {
            let v1 = t.add(VERSION).cast::<u32>().read_volatile();
            fence(Ordering::Acquire);
            let tsc0 = t.add(TSC_TIMESTAMP).cast::<u64>().read_volatile();
            let sys = t.add(SYSTEM_TIME).cast::<u64>().read_volatile();
            let mul = t.add(TSC_TO_SYSTEM_MUL).cast::<u32>().read_volatile();
            let shift = t.add(TSC_SHIFT).cast::<i8>().read_volatile();
            fence(Ordering::Acquire);
            let v2 = t.add(VERSION).cast::<u32>().read_volatile();
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
