//! A bump allocator over a fixed arena (the runtime's heap, `rt::heap`).
//!
//! What it reclaims, exactly:
//!
//! - freeing the most recent allocation still at the top of the arena
//!   moves the top back to that block's start (space below it that was
//!   freed earlier, out of order, is not reclaimed by this);
//! - `realloc` of the top block grows or shrinks it in place; a block
//!   that is not at the top shrinks in place (its tail is lost) and grows
//!   by moving to the top (its old place is lost);
//! - when every allocation has been freed, the arena starts over.
//!
//! So a loop whose allocations are freed in reverse order of allocation
//! (LIFO), and a growing buffer that is the latest allocation, run in
//! bounded memory. Anything else leaves holes that are reused only once
//! every allocation is freed, which in a guest program does not happen
//! after boot (the runtime keeps the domain's name allocated): such a
//! pattern slowly uses the arena up, then allocation fails.
//!
//! Allocation is not re-entrant: an allocation attempted while another is
//! in progress (from a trap handler) fails with a null pointer instead of
//! touching the state twice.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

#[repr(C, align(4096))]
struct Arena<const N: usize>(UnsafeCell<[u8; N]>);

struct State {
    /// Offset of the top: everything from here on is free.
    next: usize,
    /// Allocations not freed yet.
    live: usize,
}

/// A bump allocator over an arena of `N` bytes (4096-aligned).
pub struct BumpHeap<const N: usize> {
    arena: Arena<N>,
    busy: AtomicBool,
    state: UnsafeCell<State>,
}

// SAFETY: the state is touched only while holding `busy` (acquire
// compare-exchange, release store), so by one caller at a time; the arena's
// bytes are handed out as distinct ranges, each used by its owner only.
unsafe impl<const N: usize> Sync for BumpHeap<N> {}

impl<const N: usize> Default for BumpHeap<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> BumpHeap<N> {
    /// An empty heap.
    pub const fn new() -> Self {
        BumpHeap { arena: Arena(UnsafeCell::new([0; N])), busy: AtomicBool::new(false), state: UnsafeCell::new(State { next: 0, live: 0 }) }
    }

    fn base(&self) -> *mut u8 {
        self.arena.0.get().cast()
    }

    /// Runs `f` with the state, or returns `None` if another call is in
    /// progress.
    fn with_state<R>(&self, f: impl FnOnce(&mut State, usize) -> R) -> Option<R> {
        // Addresses are compared as integers; pointers handed out are
        // derived from the arena's pointer (`alloc`), keeping provenance.
        self.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).ok()?;
        // SAFETY: `busy` is held: this is the only reference to the state.
        let r = f(unsafe { &mut *self.state.get() }, self.base().addr());
        self.busy.store(false, Ordering::Release);
        Some(r)
    }

    /// Bytes from the start of the arena to the top (for tests and
    /// diagnostics).
    pub fn used(&self) -> Option<usize> {
        self.with_state(|st, _| st.next)
    }
}

/// Takes a block off the top; returns its offset in the arena.
fn bump(st: &mut State, base: usize, n: usize, layout: Layout) -> Option<usize> {
    let start = (base + st.next).checked_next_multiple_of(layout.align())? - base;
    let end = start.checked_add(layout.size())?;
    if end > n {
        return None;
    }
    st.next = end;
    st.live += 1;
    Some(start)
}

// SAFETY: `alloc` returns distinct, suitably aligned ranges inside the
// arena, above the top, that stay valid until freed. A range is handed out
// again only when it is above the top, which moves down only over blocks
// that were freed (the top block on dealloc; everything when nothing is
// live) or over a tail that `realloc` gave up. `realloc` keeps the block's
// start and contents when it resizes in place and otherwise copies
// `min(old, new)` bytes to a fresh block.
unsafe impl<const N: usize> GlobalAlloc for BumpHeap<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let arena = self.base();
        match self.with_state(|st, base| bump(st, base, N, layout)) {
            Some(Some(offset)) => arena.wrapping_add(offset),
            // Out of room, or busy (re-entered).
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = self.with_state(|st, base| {
            st.live = st.live.saturating_sub(1);
            if st.live == 0 {
                st.next = 0;
            } else if ptr as usize + layout.size() == base + st.next {
                st.next = ptr as usize - base;
            }
        });
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let in_place = self.with_state(|st, base| {
            let start = ptr as usize - base;
            if ptr as usize + layout.size() == base + st.next {
                // The top block: move the top.
                match start.checked_add(new_size) {
                    Some(end) if end <= N => {
                        st.next = end;
                        true
                    }
                    _ => false,
                }
            } else {
                // Below the top: only a shrink stays in place.
                new_size <= layout.size()
            }
        });
        match in_place {
            Some(true) => ptr,
            // Busy (re-entered): fail rather than touch the state twice.
            None => core::ptr::null_mut(),
            Some(false) => {
                // SAFETY: `GlobalAlloc::realloc`'s contract: `new_size` is
                // non-zero and does not overflow when rounded to the
                // alignment.
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: a non-zero-sized layout.
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks are live, distinct (the new one is
                    // above the top, the old one below it), and at least
                    // `min(old, new)` bytes long.
                    unsafe {
                        core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 64 * 1024;

    fn heap() -> Box<BumpHeap<N>> {
        Box::new(BumpHeap::new())
    }

    fn l(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn growing_the_top_block_stays_in_place_and_uses_no_extra_space() {
        let h = heap();
        // SAFETY: layouts are non-zero-sized, and every pointer freed or
        // resized is live and comes from this heap with the layout given.
        unsafe {
            let keep = h.alloc(l(16));
            let mut p = h.alloc(l(8));
            p.write(0xAB);
            let mut size = 8;
            while size < 8192 {
                let q = h.realloc(p, l(size), size * 2);
                assert_eq!(q, p, "the top block grows in place");
                p = q;
                size *= 2;
            }
            assert_eq!(p.read(), 0xAB);
            assert_eq!(h.used(), Some(16 + 8192));
            // Shrinking the top block gives the tail back.
            let q = h.realloc(p, l(size), 100);
            assert_eq!(q, p);
            assert_eq!(h.used(), Some(16 + 100));
            h.dealloc(q, l(100));
            assert_eq!(h.used(), Some(16));
            h.dealloc(keep, l(16));
            assert_eq!(h.used(), Some(0));
        }
    }

    #[test]
    fn a_buffer_that_grows_while_another_block_stays_live_runs_in_bounded_memory() {
        let h = heap();
        // SAFETY: layouts are non-zero-sized, and every pointer freed or
        // resized is live and comes from this heap with the layout given.
        unsafe {
            let _identity = h.alloc(l(24));
            for _ in 0..10_000 {
                // A message buffer that grows, then is freed.
                let mut p = h.alloc(l(8));
                let mut size = 8;
                while size < 1024 {
                    p = h.realloc(p, l(size), size * 2);
                    assert!(!p.is_null());
                    size *= 2;
                }
                h.dealloc(p, l(size));
            }
            assert_eq!(h.used(), Some(24));
        }
    }

    #[test]
    fn a_block_below_the_top_moves_to_grow_and_keeps_its_bytes() {
        let h = heap();
        // SAFETY: layouts are non-zero-sized, and every pointer freed or
        // resized is live and comes from this heap with the layout given.
        unsafe {
            let p = h.alloc(l(16));
            for i in 0..16 {
                p.add(i).write(i as u8);
            }
            let above = h.alloc(l(16));
            // Shrink below the top: in place.
            assert_eq!(h.realloc(p, l(16), 12), p);
            let q = h.realloc(p, l(12), 64);
            assert!(!q.is_null() && q != p);
            assert!(q as usize >= above as usize + 16);
            for i in 0..12 {
                assert_eq!(q.add(i).read(), i as u8);
            }
            h.dealloc(q, l(64));
            h.dealloc(above, l(16));
            assert_eq!(h.used(), Some(0), "everything freed: the arena starts over");
        }
    }

    #[test]
    fn allocation_beyond_the_arena_fails() {
        let h = heap();
        // SAFETY: layouts are non-zero-sized, and every pointer freed or
        // resized is live and comes from this heap with the layout given.
        unsafe {
            let p = h.alloc(l(N - 8));
            assert!(!p.is_null());
            assert!(h.realloc(p, l(N - 8), N + 8).is_null());
            assert_eq!(h.realloc(p, l(N - 8), N), p);
            assert!(h.alloc(l(1)).is_null());
        }
    }
}
