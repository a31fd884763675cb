//! A bump allocator over a fixed arena (the runtime's heap, `rt::heap`),
//! with free lists that recycle small blocks.
//!
//! Blocks: an allocation of at most [`MAX_CLASS_SIZE`] bytes with an
//! alignment of at most 16 gets a block of its size class (the next power
//! of two, at least 16 bytes); anything larger or more aligned gets a
//! block of exactly its size. Every block starts 16-aligned (or at its
//! alignment, if larger).
//!
//! What it reclaims, exactly:
//!
//! - freeing the block at the top of the arena moves the top back to that
//!   block's start;
//! - freeing a size-class block below the top puts it on its class's free
//!   list; the next allocation of that class takes it (most recently freed
//!   first). Blocks of one class are never split or merged into another;
//! - `realloc` within a block's size class keeps the block; the top block
//!   grows or shrinks in place; a size-class block below the top moves
//!   (its old block goes to its free list); a larger block below the top
//!   shrinks in place (its tail is lost) and grows by moving to the top
//!   (its old place is lost);
//! - when every allocation has been freed, the arena starts over.
//!
//! So a program whose live data stays bounded runs in bounded memory
//! whatever order it frees in, as long as its blocks are small (a driver's
//! per-request bookkeeping: map nodes, vectors of descriptors, messages):
//! each class holds at most as many blocks as were ever live in it at
//! once. Blocks above [`MAX_CLASS_SIZE`] are reclaimed only at the top:
//! allocating and freeing such blocks out of order slowly uses the arena
//! up, then allocation fails.
//!
//! Allocation is not re-entrant: an allocation attempted while another is
//! in progress (from a trap handler) fails with a null pointer instead of
//! touching the state twice.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

#[repr(C, align(4096))]
struct Arena<const N: usize>(UnsafeCell<[u8; N]>);

/// The smallest size class, and the alignment of every block.
const MIN_BLOCK: usize = 16;
/// The largest size class: bigger blocks are not recycled.
pub const MAX_CLASS_SIZE: usize = 64 * 1024;
/// Size classes: 16, 32, ..., [`MAX_CLASS_SIZE`] bytes.
const CLASSES: usize = (MAX_CLASS_SIZE.trailing_zeros() - MIN_BLOCK.trailing_zeros() + 1) as usize;

struct State {
    /// Offset of the top: everything from here on is free.
    next: usize,
    /// Allocations not freed yet.
    live: usize,
    /// Per size class, the offset + 1 of the first free block (0: none);
    /// each free block holds the offset + 1 of the next in its first word.
    free: [usize; CLASSES],
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

/// The block a layout gets: its size, and its size class if it has one.
fn block(layout: Layout) -> (usize, Option<usize>) {
    let size = layout.size();
    if layout.align() <= MIN_BLOCK && size <= MAX_CLASS_SIZE {
        let bs = size.max(MIN_BLOCK).next_power_of_two();
        (bs, Some((bs.trailing_zeros() - MIN_BLOCK.trailing_zeros()) as usize))
    } else {
        (size, None)
    }
}

impl<const N: usize> BumpHeap<N> {
    /// An empty heap.
    pub const fn new() -> Self {
        BumpHeap {
            arena: Arena(UnsafeCell::new([0; N])),
            busy: AtomicBool::new(false),
            state: UnsafeCell::new(State { next: 0, live: 0, free: [0; CLASSES] }),
        }
    }

    fn base(&self) -> *mut u8 {
        self.arena.0.get().cast()
    }

    /// Runs `f` with the state, or returns `None` if another call is in
    /// progress.
    fn with_state<R>(&self, f: impl FnOnce(&mut State, *mut u8) -> R) -> Option<R> {
        self.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).ok()?;
        // SAFETY: `busy` is held: this is the only reference to the state.
        let r = f(unsafe { &mut *self.state.get() }, self.base());
        self.busy.store(false, Ordering::Release);
        Some(r)
    }

    /// Bytes from the start of the arena to the top (for tests and
    /// diagnostics).
    pub fn used(&self) -> Option<usize> {
        self.with_state(|st, _| st.next)
    }

    /// Blocks waiting on the free lists (for tests and diagnostics).
    pub fn free_blocks(&self) -> Option<usize> {
        self.with_state(|st, base| {
            let mut n = 0;
            for &head in &st.free {
                let mut at = head;
                while at != 0 {
                    n += 1;
                    // SAFETY: free-list entries are offsets + 1 of free
                    // blocks inside the arena, 16-aligned, whose first word
                    // holds the next entry (written by `dealloc`).
                    at = unsafe { base.add(at - 1).cast::<usize>().read() };
                }
            }
            n
        })
    }
}

/// Takes a block of `size` bytes aligned to `align` off the top; returns
/// its offset in the arena.
fn bump(st: &mut State, base: *mut u8, n: usize, size: usize, align: usize) -> Option<usize> {
    let base = base.addr();
    let start = (base + st.next).checked_next_multiple_of(align.max(MIN_BLOCK))? - base;
    let end = start.checked_add(size)?;
    if end > n {
        return None;
    }
    st.next = end;
    st.live += 1;
    Some(start)
}

/// Allocates a block for `layout`: from its class's free list, else off
/// the top.
fn take(st: &mut State, base: *mut u8, n: usize, layout: Layout) -> Option<usize> {
    let (size, class) = block(layout);
    if let Some(c) = class {
        let head = st.free[c];
        if head != 0 {
            // SAFETY: as in `free_blocks`: a free block of this class
            // whose first word links the list.
            st.free[c] = unsafe { base.add(head - 1).cast::<usize>().read() };
            st.live += 1;
            return Some(head - 1);
        }
    }
    bump(st, base, n, size, layout.align())
}

/// Frees the block at `offset` that was allocated for `layout`.
fn give(st: &mut State, base: *mut u8, offset: usize, layout: Layout) {
    st.live = st.live.saturating_sub(1);
    if st.live == 0 {
        st.next = 0;
        st.free = [0; CLASSES];
        return;
    }
    let (size, class) = block(layout);
    if offset + size == st.next {
        st.next = offset;
    } else if let Some(c) = class {
        // SAFETY: the block is inside the arena, 16-aligned and at least
        // 16 bytes long (a size-class block), and free from now on: its
        // first word may hold the list link.
        unsafe { base.add(offset).cast::<usize>().write(st.free[c]) };
        st.free[c] = offset + 1;
    }
}

// SAFETY: `alloc` returns distinct, suitably aligned ranges inside the
// arena that stay valid until freed: either above the top, or a block of a
// free list. A range is handed out again only when it is above the top,
// which moves down only over blocks that were freed (the top block on
// dealloc; everything when nothing is live) or over a tail that `realloc`
// gave up, or when it is a freed size-class block taken off its list
// (every block of a class has the class's size and 16-byte alignment, so
// it fits any layout of that class; a block on a list is never also below
// the top's free space, since the top only moves down over the block being
// freed). `realloc` keeps the block's start and contents when it resizes
// in place and otherwise copies `min(old, new)` bytes to a fresh block.
unsafe impl<const N: usize> GlobalAlloc for BumpHeap<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let arena = self.base();
        match self.with_state(|st, base| take(st, base, N, layout)) {
            Some(Some(offset)) => arena.wrapping_add(offset),
            // Out of room, or busy (re-entered).
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = self.with_state(|st, base| give(st, base, ptr.addr() - base.addr(), layout));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `GlobalAlloc::realloc`'s contract: `new_size` is non-zero
        // and does not overflow when rounded to the alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old_bs, old_class) = block(layout);
        let (new_bs, _) = block(new_layout);
        let in_place = self.with_state(|st, base| {
            let start = ptr.addr() - base.addr();
            if new_bs == old_bs {
                // The block already has the new size's room.
                true
            } else if start + old_bs == st.next {
                // The top block: move the top.
                match start.checked_add(new_bs) {
                    Some(end) if end <= N => {
                        st.next = end;
                        true
                    }
                    _ => false,
                }
            } else {
                // Below the top: a larger block shrinks in place; a
                // size-class block moves, so that it goes back to its list.
                old_class.is_none() && new_bs < old_bs
            }
        });
        match in_place {
            Some(true) => ptr,
            // Busy (re-entered): fail rather than touch the state twice.
            None => core::ptr::null_mut(),
            Some(false) => {
                // SAFETY: a non-zero-sized layout.
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks are live and distinct (the new one
                    // is above the top or a free block, the old one is
                    // live), and at least `min(old, new)` bytes long.
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

    /// A heap too large to build on the test's stack.
    fn big_heap<const M: usize>() -> Box<BumpHeap<M>> {
        // SAFETY: all zeroes is a valid empty heap: a zeroed arena, `busy`
        // false, the top at 0, nothing live, every free list empty.
        unsafe { Box::<BumpHeap<M>>::new_zeroed().assume_init() }
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
            // Shrinking the top block gives the tail back (down to the
            // size class of 100 bytes).
            let q = h.realloc(p, l(size), 100);
            assert_eq!(q, p);
            assert_eq!(h.used(), Some(16 + 128));
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
            // Miri interprets every byte each reallocation copies.
            let rounds = if cfg!(miri) { 300 } else { 10_000 };
            for _ in 0..rounds {
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
            // The 24-byte block's size class.
            assert_eq!(h.used(), Some(32));
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

    #[test]
    fn blocks_freed_out_of_order_are_reused_and_memory_stays_bounded() {
        let h = big_heap::<{ 512 * 1024 }>();
        // SAFETY: layouts are non-zero-sized, and every pointer freed or
        // resized is live and comes from this heap with the layout given.
        unsafe {
            let _identity = h.alloc(l(24));
            // A driver's pattern: per request a few blocks, freed in the
            // order the requests complete (FIFO), several in flight.
            let mut queue: std::collections::VecDeque<[(*mut u8, usize); 3]> = Default::default();
            let mut peak = 0;
            // The sizes repeat every `period` requests.
            let (period, rounds) = if cfg!(miri) { (100, 500) } else { (3_000, 20_000) };
            for i in 0..rounds {
                let sizes = [40 + i % 50, 200 + i % 300, 1000 + (i % period) * (3000 / period)];
                let req = sizes.map(|s| (h.alloc(l(s)), s));
                assert!(req.iter().all(|(p, _)| !p.is_null()));
                queue.push_back(req);
                if queue.len() > 8 {
                    for (p, s) in queue.pop_front().unwrap() {
                        h.dealloc(p, l(s));
                    }
                }
                // The arena's high-water mark is reached in the first
                // periods.
                let used = h.used().unwrap();
                if i < 2 * period {
                    peak = peak.max(used);
                } else {
                    assert!(used <= peak, "the arena grew to {used} bytes at request {i}, above {peak}");
                }
            }
            // Without reuse the requests would have taken about 60 MB.
            assert!(peak < 128 * 1024, "{peak} bytes used");
            assert!(h.free_blocks().unwrap() > 0);
        }
    }

    #[test]
    fn live_blocks_never_overlap_under_random_alloc_free_and_realloc() {
        let h = big_heap::<{ 1 << 20 }>();
        let mut live: Vec<(*mut u8, usize, usize, u8)> = Vec::new();
        let mut x: u64 = 0x1234_5678;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        // SAFETY: layouts are non-zero-sized, and every pointer freed or
        // resized is live and comes from this heap with the layout given;
        // each block is written only within its size.
        unsafe {
            let check = |p: *mut u8, size: usize, tag: u8| {
                for k in 0..size {
                    assert_eq!(p.add(k).read(), tag, "a block was overwritten");
                }
            };
            // Miri interprets every byte written and checked: fewer steps
            // and smaller big blocks keep its run to seconds.
            let steps = if cfg!(miri) { 150 } else { 20_000 };
            let big_max = if cfg!(miri) { 4_000 } else { 100_000 };
            for step in 0..steps {
                let tag = (step % 251) as u8;
                match rnd(4) {
                    0 | 1 => {
                        let big = rnd(10) == 0;
                        let size = 1 + rnd(if big { big_max } else { 2000 }) as usize;
                        let align = 1 << rnd(6);
                        let p = h.alloc(Layout::from_size_align(size, align).unwrap());
                        if p.is_null() {
                            continue;
                        }
                        assert_eq!(p as usize % align, 0);
                        p.write_bytes(tag, size);
                        live.push((p, size, align, tag));
                    }
                    2 if !live.is_empty() => {
                        let (p, size, align, t) = live.swap_remove(rnd(live.len() as u64) as usize);
                        check(p, size, t);
                        h.dealloc(p, Layout::from_size_align(size, align).unwrap());
                    }
                    _ if !live.is_empty() => {
                        let i = rnd(live.len() as u64) as usize;
                        let (p, size, align, t) = live[i];
                        let new = 1 + rnd(4000) as usize;
                        let q = h.realloc(p, Layout::from_size_align(size, align).unwrap(), new);
                        if q.is_null() {
                            continue;
                        }
                        assert_eq!(q as usize % align, 0);
                        check(q, size.min(new), t);
                        q.write_bytes(tag, new);
                        live[i] = (q, new, align, tag);
                    }
                    _ => {}
                }
            }
            for &(p, size, _, t) in &live {
                check(p, size, t);
            }
            for (p, size, align, _) in live.drain(..) {
                h.dealloc(p, Layout::from_size_align(size, align).unwrap());
            }
            assert_eq!(h.used(), Some(0));
            assert_eq!(h.free_blocks(), Some(0));
        }
    }
}
