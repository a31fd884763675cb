//! Cache hints for code that shares lines with a peer on another core: ask
//! for a line ahead of the read or write that needs it, so that its
//! transfer overlaps with other work instead of stalling that access.
//! Hints only: they never fault and have no architectural effect, so any
//! address may be given (a stale one costs nothing but the hint).

/// Asks for the cache line holding `p` ahead of a read (x86 PREFETCHT0).
#[inline(always)]
pub fn prefetch_line(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: PREFETCHT0 is a cache hint that neither reads nor writes
    // memory architecturally, never faults (whatever `p` is) and changes no
    // register or flag; the asm touches no stack.
    unsafe {
        core::arch::asm!(
            "prefetcht0 [{0}]",
            in(reg) p,
            options(nostack, preserves_flags, readonly)
        );
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}

/// Asks for the cache line holding `p` in a writable state (x86
/// PREFETCHW), ahead of a write; processors without it execute the
/// encoding as a NOP.
///
/// Why: x86 makes stores visible in program order, so a store that
/// publishes (a ring's producer index) waits for the stores before it, and
/// each of those waits for its line to be taken back from the peer that
/// last held it. Asked for ahead, those transfers overlap.
#[inline(always)]
pub fn prefetch_line_for_write(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: `0f 0d /1` (PREFETCHW) is a cache hint that neither reads
    // nor writes memory architecturally, never faults (whatever `p` is)
    // and changes no register or flag; the asm touches no stack.
    unsafe {
        core::arch::asm!(
            "prefetchw [{0}]",
            in(reg) p,
            options(nostack, preserves_flags, readonly)
        );
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}
