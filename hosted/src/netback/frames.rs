//! Frame buffers in the backend domain's own memory.
//!
//! Grant copies move data between a frontend's granted page and a frame of
//! the backend's memory (`DOMID_SELF`), so frames in flight through the
//! backend live in pages the backend allocated from its domain: a TX packet
//! is grant-copied from the frontend straight into a frame buffer, and a
//! frame is grant-copied from its buffer straight into the receiving
//! frontend's posted pages. Nothing else copies the data (the host side
//! reads and writes the buffers in place).
//!
//! The pool is one allocation of pages, cut into one-page buffers (frames
//! up to 4096 bytes) and a few 17-page buffers (frames up to 69632 bytes:
//! a 64 KiB GSO frame with its headers). These pages are never granted to
//! anyone.

use std::ptr::NonNull;

use grant_tables::abi::PAGE_SIZE;
use grant_tables::{Gfn, PageAllocator, PlatformError, SharedPages};
use netfront::tx::Gso;

use crate::{HostedPages, HostedPlatform};

/// Pages of a large buffer.
const BIG_PAGES: u32 = 17;
/// The largest frame a buffer holds.
pub const MAX_FRAME: usize = BIG_PAGES as usize * PAGE_SIZE;

/// What a frame carries besides its bytes: the offloads its sender asked
/// for (from the TX request's flags and extras, or from the host side).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// The TCP/UDP checksum holds only the pseudo-header sum: whoever
    /// delivers the frame completes it, or passes the flag on
    /// (`NETTXF_csum_blank`, `NETRXF_csum_blank`).
    pub csum_blank: bool,
    /// The checksums are known good (`NETTXF_data_validated`).
    pub data_validated: bool,
    /// Segmentation offload: a TCP frame larger than its MSS.
    pub gso: Option<Gso>,
}

/// A frame in the pool: a unique token for a range of pages (never cloned,
/// so `&mut FrameBuf` is exclusive access to its bytes). Give it back with
/// [`FramePool::free`].
#[derive(Debug)]
pub(crate) struct FrameBuf {
    page: u32,
    pages: u32,
    len: usize,
    /// Its offloads.
    pub meta: FrameMeta,
}

impl FrameBuf {
    /// Bytes of frame.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Sets the frame's length (at most the buffer's capacity).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.pages as usize * PAGE_SIZE);
    }
}

/// The pool's memory: where the buffers' bytes are.
pub(crate) struct FrameMem {
    pages: HostedPages,
    base: NonNull<u8>,
}

/// The pool's free lists.
pub(crate) struct FreeLists {
    small: Vec<u32>,
    big: Vec<u32>,
    n_small: usize,
    n_big: usize,
}

/// The pool (owned by the data-plane thread): its memory and its free
/// lists, apart, so that a frame can be read while another is allocated.
pub(crate) struct FramePool {
    /// The memory.
    pub mem: FrameMem,
    /// The free lists.
    pub free: FreeLists,
}

impl FramePool {
    /// `small` one-page buffers and `big` 17-page buffers from `platform`'s
    /// memory.
    pub fn new(platform: &HostedPlatform, small: u32, big: u32) -> Result<Self, PlatformError> {
        let total = small as usize + big as usize * BIG_PAGES as usize;
        let pages = platform.alloc_zeroed_pages(total.max(1))?;
        let base = pages.as_ptr();
        Ok(FramePool {
            mem: FrameMem { base, pages },
            free: FreeLists {
                small: (0..small).rev().collect(),
                big: (0..big).rev().map(|i| small + i * BIG_PAGES).collect(),
                n_small: small as usize,
                n_big: big as usize,
            },
        })
    }

    /// See [`FreeLists::alloc`].
    pub fn alloc(&mut self, len: usize) -> Option<FrameBuf> {
        self.free.alloc(len)
    }

    /// See [`FreeLists::free`].
    pub fn free(&mut self, buf: FrameBuf) {
        self.free.free(buf)
    }

    /// See [`FrameMem::bytes`].
    pub fn bytes<'a>(&'a self, buf: &'a FrameBuf) -> &'a [u8] {
        self.mem.bytes(buf)
    }

    /// See [`FrameMem::bytes_mut`].
    pub fn bytes_mut<'a>(&'a self, buf: &'a mut FrameBuf) -> &'a mut [u8] {
        self.mem.bytes_mut(buf)
    }

    /// See [`FrameMem::locate`].
    pub fn locate(&self, buf: &FrameBuf, offset: usize) -> Option<(Gfn, u16, usize)> {
        self.mem.locate(buf, offset)
    }

    /// A copy of `buf` in a new buffer (for flooding), or `None` when no
    /// buffer is free.
    pub fn duplicate(&mut self, buf: &FrameBuf) -> Option<FrameBuf> {
        let mut copy = self.free.alloc(buf.len())?;
        copy.meta = buf.meta;
        self.mem
            .bytes_mut(&mut copy)
            .copy_from_slice(self.mem.bytes(buf));
        Some(copy)
    }
}

impl FreeLists {
    /// A buffer for a frame of `len` bytes (its length set), or `None` when
    /// none is free or `len` is above [`MAX_FRAME`].
    pub fn alloc(&mut self, len: usize) -> Option<FrameBuf> {
        let (page, pages) = if len <= PAGE_SIZE {
            match self.small.pop() {
                Some(p) => (p, 1),
                None => (self.big.pop()?, BIG_PAGES),
            }
        } else if len <= MAX_FRAME {
            (self.big.pop()?, BIG_PAGES)
        } else {
            return None;
        };
        Some(FrameBuf {
            page,
            pages,
            len,
            meta: FrameMeta::default(),
        })
    }

    /// Gives a buffer back.
    pub fn free(&mut self, buf: FrameBuf) {
        if buf.pages == 1 {
            self.small.push(buf.page);
        } else {
            self.big.push(buf.page);
        }
    }

    /// Buffers free now (small, big).
    pub fn available(&self) -> (usize, usize) {
        (self.small.len(), self.big.len())
    }

    /// Buffers in all (small, big).
    pub fn capacity(&self) -> (usize, usize) {
        (self.n_small, self.n_big)
    }
}

impl FrameMem {
    /// The frame's bytes.
    pub fn bytes<'a>(&'a self, buf: &'a FrameBuf) -> &'a [u8] {
        let start = buf.page as usize * PAGE_SIZE;
        // SAFETY: `buf` was cut from this pool's pages by `alloc`: pages
        // `page..page + pages` lie inside the allocation (built so in
        // `new`), which `self.pages` keeps mapped while `self` lives, and
        // `len <= pages * PAGE_SIZE` (`alloc`, `set_len`). Buffers cover
        // disjoint pages and a `FrameBuf` is a unique token, so the only
        // other access to these bytes goes through this same token: a
        // `bytes_mut` (needs `&mut FrameBuf`, excluded while this borrow
        // lives) or a grant copy into the buffer (`Vif` issues those only
        // with `&mut FrameBuf` in hand). The pages are never granted, so
        // no other domain writes them through the hypervisor.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), buf.len) }
    }

    /// The frame's bytes, writable.
    pub fn bytes_mut<'a>(&'a self, buf: &'a mut FrameBuf) -> &'a mut [u8] {
        let start = buf.page as usize * PAGE_SIZE;
        // SAFETY: as in `bytes`; `&mut FrameBuf` makes this the only access
        // to the buffer's bytes while the borrow lives.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), buf.len) }
    }

    /// Where byte `offset` of the buffer is: its frame number, its offset in
    /// that page, and the bytes left in the page.
    pub fn locate(&self, buf: &FrameBuf, offset: usize) -> Option<(Gfn, u16, usize)> {
        let page = offset / PAGE_SIZE;
        if page >= buf.pages as usize {
            return None;
        }
        let gfn = self.pages.gfn(buf.page as usize + page)?;
        let in_page = offset % PAGE_SIZE;
        Some((gfn, in_page as u16, PAGE_SIZE - in_page))
    }
}
