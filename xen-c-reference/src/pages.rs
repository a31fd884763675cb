//! Page-aligned, zero-filled memory to put a shared ring in.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// Bytes in a Xen page.
pub const PAGE_SIZE: usize = 4096;

/// Zero-filled, page-aligned pages on the heap, for a ring shared by two
/// threads (one playing each end). The memory is handed out only as a raw
/// pointer: the two ends access it with atomic and volatile operations,
/// never through Rust references. Freed on drop.
///
/// This crate does not depend on `grant-tables`; a caller implements its
/// `RingMemory` for a wrapper around this type (usually in an `Arc`).
#[derive(Debug)]
pub struct SharedPages {
    ptr: NonNull<u8>,
    pages: usize,
}

impl SharedPages {
    /// Allocates `pages` zero-filled pages.
    ///
    /// # Panics
    /// If `pages` is 0 or the size overflows.
    pub fn new(pages: usize) -> Self {
        let layout = Self::layout(pages);
        // SAFETY: the layout has a non-zero size (checked in `layout`).
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        SharedPages { ptr, pages }
    }

    fn layout(pages: usize) -> Layout {
        assert!(pages > 0, "SharedPages needs at least one page");
        let size = pages
            .checked_mul(PAGE_SIZE)
            .expect("SharedPages size overflows");
        Layout::from_size_align(size, PAGE_SIZE).expect("page-aligned layout")
    }

    /// The first byte; page-aligned.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The first byte, as a `NonNull`.
    pub fn as_non_null(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    /// Always false: there is at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Length in pages.
    pub fn pages(&self) -> usize {
        self.pages
    }
}

impl Drop for SharedPages {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this same layout and
        // is freed only here.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.pages)) }
    }
}

// SAFETY: the pages are plain heap memory owned by this value; it can be
// dropped on any thread.
unsafe impl Send for SharedPages {}
// SAFETY: `&SharedPages` only gives out the raw pointer and the length;
// every access to the memory is an unsafe operation whose caller upholds
// the sharing contract (atomic/volatile accesses only).
unsafe impl Sync for SharedPages {}
