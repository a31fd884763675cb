//! Data buffers an application hands to the disk, zero-copy.
//!
//! Two kinds, both reached only through copies (the backend may access the
//! memory while it is granted):
//!
//! - a buffer of a queue's pool of persistent grants
//!   ([`crate::Blkfront::buffer`]): one 4 KiB page granted read-write to the
//!   backend once, for the life of the pool. The application writes its
//!   data into it in place, submits, and gets it back with the completion;
//!   no grant operation per request.
//! - the application's own pages ([`Buffer::from_pages`], any allocation of
//!   the platform's shareable pages). On a connection without persistent
//!   grants they are granted to the backend for each request (read-only
//!   for a write, as Linux's blkfront does) and the grants end when it
//!   completes; if the backend still maps a page then, the pages stay in
//!   the grant table's quarantine and do not come back (the completion
//!   says so). On a connection with persistent grants the backend would
//!   keep such pages mapped, so their data is copied through pages of the
//!   queue's pool instead (one copy, as Linux's blkfront does).
//!
//! A [`Span`] is a range of one buffer: where a read lands or a write comes
//! from. Offsets and lengths are checked against the disk's logical sector
//! size when the I/O is submitted.

use core::fmt;

use grant_tables::abi::PAGE_SIZE;
use grant_tables::shared_mem::{self, OutOfRange};
use grant_tables::{DomId, Platform, PoolBuffer, SharedPages};

/// A data buffer: a pool buffer or the application's own pages.
pub struct Buffer<P: Platform>
where
    P::Pages: 'static,
{
    pub(crate) kind: Kind<P>,
}

pub(crate) enum Kind<P: Platform>
where
    P::Pages: 'static,
{
    /// A page of a pool persistently granted to `peer`.
    Pool { buf: PoolBuffer<P>, peer: DomId },
    /// The application's pages, granted per request.
    Pages(P::Pages),
}

impl<P: Platform> fmt::Debug for Buffer<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Pool { buf, peer } => f
                .debug_struct("Buffer::Pool")
                .field("gref", &buf.gref())
                .field("peer", peer)
                .finish(),
            Kind::Pages(p) => f
                .debug_struct("Buffer::Pages")
                .field("pages", &p.page_count())
                .finish(),
        }
    }
}

impl<P: Platform> Buffer<P>
where
    P::Pages: 'static,
{
    pub(crate) fn pool(buf: PoolBuffer<P>, peer: DomId) -> Self {
        Buffer {
            kind: Kind::Pool { buf, peer },
        }
    }

    /// The application's own pages (from the platform's
    /// [`PageAllocator`](grant_tables::PageAllocator)), granted to the
    /// backend for each request that carries them.
    pub fn from_pages(pages: P::Pages) -> Self {
        Buffer {
            kind: Kind::Pages(pages),
        }
    }

    /// Length in bytes (a page for a pool buffer).
    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Pool { buf, .. } => buf.len(),
            Kind::Pages(p) => p.len_bytes(),
        }
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it comes from a pool of persistent grants.
    pub fn is_pooled(&self) -> bool {
        matches!(self.kind, Kind::Pool { .. })
    }

    /// Copies `data` into the buffer at `offset`.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), OutOfRange> {
        match &mut self.kind {
            Kind::Pool { buf, .. } => buf.write_at(offset, data),
            // SAFETY: `SharedPages` makes `as_ptr()` valid for reads and
            // writes of `len_bytes()` while the pages live, and never
            // referenced; `&mut self` means the driver does not hold them
            // (they are only granted while an I/O owns the buffer).
            Kind::Pages(p) => unsafe { shared_mem::write(p.as_ptr(), p.len_bytes(), offset, data) },
        }
    }

    /// Copies bytes at `offset` out of the buffer.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), OutOfRange> {
        match &self.kind {
            Kind::Pool { buf, .. } => buf.read_at(offset, out),
            // SAFETY: as in `write_at`, for reads.
            Kind::Pages(p) => unsafe { shared_mem::read(p.as_ptr(), p.len_bytes(), offset, out) },
        }
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub fn fill(&mut self, offset: usize, len: usize, byte: u8) -> Result<(), OutOfRange> {
        match &mut self.kind {
            Kind::Pool { buf, .. } => buf.fill(offset, len, byte),
            // SAFETY: as in `write_at`.
            Kind::Pages(p) => unsafe {
                shared_mem::fill(p.as_ptr(), p.len_bytes(), offset, len, byte)
            },
        }
    }

    /// The application's pages back, or the buffer if it is a pool buffer.
    pub fn into_pages(self) -> Result<P::Pages, Self> {
        match self.kind {
            Kind::Pages(p) => Ok(p),
            kind => Err(Buffer { kind }),
        }
    }

    /// The pool buffer back, or the buffer if it is the application's pages.
    pub fn into_pool_buffer(self) -> Result<PoolBuffer<P>, Self> {
        match self.kind {
            Kind::Pool { buf, .. } => Ok(buf),
            kind => Err(Buffer { kind }),
        }
    }
}

/// A range of a buffer: what one I/O reads into or writes from.
pub struct Span<P: Platform>
where
    P::Pages: 'static,
{
    /// The buffer.
    pub buffer: Buffer<P>,
    /// First byte of the range.
    pub offset: usize,
    /// Bytes in the range.
    pub len: usize,
}

impl<P: Platform> fmt::Debug for Span<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Span")
            .field("buffer", &self.buffer)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl<P: Platform> Span<P>
where
    P::Pages: 'static,
{
    /// The whole buffer.
    pub fn whole(buffer: Buffer<P>) -> Self {
        let len = buffer.len();
        Span {
            buffer,
            offset: 0,
            len,
        }
    }

    /// `len` bytes of `buffer` from `offset`.
    pub fn new(buffer: Buffer<P>, offset: usize, len: usize) -> Self {
        Span {
            buffer,
            offset,
            len,
        }
    }

    /// Whether the range lies inside the buffer.
    pub(crate) fn in_bounds(&self) -> bool {
        self.offset
            .checked_add(self.len)
            .is_some_and(|end| end <= self.buffer.len())
    }

    /// The pages of the buffer the range touches: `first..=last`.
    pub(crate) fn page_range(&self) -> (usize, usize) {
        let first = self.offset / PAGE_SIZE;
        let last = (self.offset + self.len.max(1) - 1) / PAGE_SIZE;
        (first, last)
    }
}
