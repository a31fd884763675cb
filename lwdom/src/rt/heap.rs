//! The heap behind `alloc`: a bump allocator over a static arena that
//! starts over when every allocation has been freed, and gives back the
//! most recent allocation on free. Enough for a guest program's setup
//! (grant table free lists, xenstore messages) and steady-state loops that
//! free what they allocate.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

const HEAP_SIZE: usize = 4 << 20;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; HEAP_SIZE]>);

struct State {
    next: usize,
    live: usize,
}

/// The global allocator.
pub struct BumpHeap {
    arena: Arena,
    state: UnsafeCell<State>,
}

// SAFETY: the runtime runs on one vCPU without upcalls: allocation is never
// concurrent (see the module docs of `rt`).
unsafe impl Sync for BumpHeap {}

// SAFETY: `alloc` returns distinct, suitably aligned ranges inside the arena
// that stay valid until freed; ranges are reused only after every
// allocation was freed, or when the range freed is the latest one.
unsafe impl GlobalAlloc for BumpHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single flow of control; no other reference to the state.
        let st = unsafe { &mut *self.state.get() };
        let base = self.arena.0.get() as usize;
        let start = (base + st.next).next_multiple_of(layout.align()) - base;
        let Some(end) = start.checked_add(layout.size()) else { return core::ptr::null_mut() };
        if end > HEAP_SIZE {
            return core::ptr::null_mut();
        }
        st.next = end;
        st.live += 1;
        (base + start) as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: single flow of control.
        let st = unsafe { &mut *self.state.get() };
        let base = self.arena.0.get() as usize;
        st.live = st.live.saturating_sub(1);
        if st.live == 0 {
            st.next = 0;
        } else if ptr as usize + layout.size() == base + st.next {
            st.next = ptr as usize - base;
        }
    }
}

#[global_allocator]
static HEAP: BumpHeap = BumpHeap { arena: Arena(UnsafeCell::new([0; HEAP_SIZE])), state: UnsafeCell::new(State { next: 0, live: 0 }) };
