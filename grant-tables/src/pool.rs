//! A pool of persistent grants: N pages granted once to one peer for the
//! life of a connection, cut into buffers that requests carry by ref and
//! offset.
//!
//! blkfront's persistent grants and netfront's TX and RX buffers are the
//! same thing: the application writes its data straight into a buffer
//! ([`PoolBuffer::write_at`]; no bounce copy, no grant per request), the
//! driver puts the buffer's [`gref`](PoolBuffer::gref) and
//! [`offset`](PoolBuffer::offset) in a ring request and keeps the buffer
//! until the response; dropping the buffer gives it back to the pool.
//!
//! - Lock-free: free buffers sit in a bounded `crossbeam` queue, so several
//!   queues (threads) take and give back concurrently; [`BufferPool`] is a
//!   cheap `Clone` handle.
//! - Buffers are a page, or an equal power-of-two slice of one (64 bytes
//!   up), and never cross a page, as blkif segments and netif slots require.
//! - Untrusted peers (XSA-403): the pool's pages hold nothing but the
//!   payload the driver puts there, and in [`PoolMode::Untrusted`] every
//!   buffer is zeroed when it comes back, so the peer never sees a previous
//!   request's data in a buffer it is handed for a new one.
//! - Teardown: the pages are one allocation under a [`GrantedPages`]. When
//!   the pool and all its buffers are gone, every grant is ended; if the peer
//!   still maps a page, the whole allocation goes to the grant table's
//!   quarantine and is freed only once the peer lets go (never freed while
//!   mapped).

use alloc::sync::Arc;
use core::fmt;
use core::ptr::NonNull;

use crossbeam_queue::ArrayQueue;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::abi::{GrantRefNum, PAGE_SIZE};
use crate::granted::GrantedPages;
use crate::platform::{DomId, Platform, PlatformError, SharedPages};
use crate::shared_mem::{self, OutOfRange};
use crate::table::{Access, GrantError};

/// Smallest buffer: one cache line.
pub const MIN_BUFFER_SIZE: usize = 64;

/// Whether the peer is trusted with stale data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// Buffers come back as the peer or the application left them.
    Trusted,
    /// Buffers are zeroed when they come back (XSA-403): a peer only ever
    /// sees the payload of requests it is handed.
    Untrusted,
}

/// What a pool is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Pages to allocate and grant (1 or more).
    pub pages: usize,
    /// Bytes per buffer: a power of two from [`MIN_BUFFER_SIZE`] to
    /// [`PAGE_SIZE`].
    pub buffer_size: usize,
    /// How the peer may access the pages (blkback maps persistent grants
    /// read-write; a TX-only pool may be read-only).
    pub access: Access,
    /// Trusted or untrusted peer.
    pub mode: PoolMode,
}

/// Why a pool could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The configuration is impossible.
    BadConfig(&'static str),
    /// No pages.
    Platform(PlatformError),
    /// No refs (or the platform's grant table is not usable).
    Grant(GrantError),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::BadConfig(why) => write!(f, "bad buffer pool configuration: {why}"),
            PoolError::Platform(e) => write!(f, "cannot allocate the buffer pool's pages: {e}"),
            PoolError::Grant(e) => write!(f, "cannot grant the buffer pool's pages: {e}"),
        }
    }
}

impl core::error::Error for PoolError {}

struct PoolInner<P: Platform>
where
    P::Pages: 'static,
{
    granted: GrantedPages<P::GrantFrames, P::Pages>,
    free: ArrayQueue<u32>,
    /// log2 of the buffer size.
    shift: u32,
    count: u32,
    mode: PoolMode,
}

/// A pool of buffers in pages persistently granted to one peer. Cheap to
/// clone (all clones are the same pool); `Send` and `Sync` when the
/// platform's pages and grant frames are.
pub struct BufferPool<P: Platform>
where
    P::Pages: 'static,
{
    inner: Arc<PoolInner<P>>,
}

impl<P: Platform> Clone for BufferPool<P>
where
    P::Pages: 'static,
{
    fn clone(&self) -> Self {
        BufferPool {
            inner: self.inner.clone(),
        }
    }
}

impl<P: Platform> fmt::Debug for BufferPool<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("peer", &self.inner.granted.peer())
            .field("buffers", &self.inner.count)
            .field("buffer_size", &self.buffer_size())
            .field("available", &self.available())
            .field("mode", &self.inner.mode)
            .finish()
    }
}

impl<P: Platform> BufferPool<P>
where
    P::Pages: 'static,
{
    /// Allocates `config.pages` zeroed pages, grants them to `peer`, and
    /// cuts them into buffers.
    pub fn new(platform: &P, peer: DomId, config: PoolConfig) -> Result<Self, PoolError> {
        let size = config.buffer_size;
        if !size.is_power_of_two() || !(MIN_BUFFER_SIZE..=PAGE_SIZE).contains(&size) {
            return Err(PoolError::BadConfig(
                "the buffer size must be a power of two from 64 bytes to a page",
            ));
        }
        if config.pages == 0 {
            return Err(PoolError::BadConfig("a pool needs at least one page"));
        }
        let per_page = PAGE_SIZE / size;
        let count = config
            .pages
            .checked_mul(per_page)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(PoolError::BadConfig("too many buffers (more than 2^32)"))?;
        let table = platform.grant_table().map_err(PoolError::Platform)?;
        let pages = platform
            .alloc_zeroed_pages(config.pages)
            .map_err(PoolError::Platform)?;
        if pages.page_count() != config.pages {
            return Err(PoolError::Platform(PlatformError::OutOfMemory {
                pages: config.pages,
            }));
        }
        let granted =
            GrantedPages::new(table, pages, peer, config.access).map_err(PoolError::Grant)?;
        let free = ArrayQueue::new(count as usize);
        for i in 0..count {
            // Cannot fail: the queue holds exactly `count` entries.
            let _ = free.push(i);
        }
        Ok(BufferPool {
            inner: Arc::new(PoolInner {
                granted,
                free,
                shift: size.trailing_zeros(),
                count,
                mode: config.mode,
            }),
        })
    }

    /// A free buffer, or `None` when every buffer is out.
    pub fn take(&self) -> Option<PoolBuffer<P>> {
        let index = self.inner.free.pop()?;
        Some(PoolBuffer {
            pool: self.inner.clone(),
            index,
        })
    }

    /// Buffers free now.
    pub fn available(&self) -> usize {
        self.inner.free.len()
    }

    /// Buffers in the pool.
    pub fn capacity(&self) -> usize {
        self.inner.count as usize
    }

    /// Bytes per buffer.
    pub fn buffer_size(&self) -> usize {
        1 << self.inner.shift
    }

    /// The peer the pages are granted to.
    pub fn peer(&self) -> DomId {
        self.inner.granted.peer()
    }

    /// Trusted or untrusted.
    pub fn mode(&self) -> PoolMode {
        self.inner.mode
    }

    /// The refs of the pool's pages, in page order (for a protocol that
    /// announces its persistent grants up front).
    pub fn grefs(&self) -> impl ExactSizeIterator<Item = GrantRefNum> + '_ {
        self.inner.granted.grefs()
    }
}

/// A buffer of a [`BufferPool`], lent out: the application writes and reads
/// it in place, the driver hands its ref and offset to the peer. Back to the
/// pool on drop (zeroed first in [`PoolMode::Untrusted`]).
///
/// The peer may access the buffer at any time (it holds a persistent
/// mapping), so its bytes are reached through copies, never references.
pub struct PoolBuffer<P: Platform>
where
    P::Pages: 'static,
{
    pool: Arc<PoolInner<P>>,
    index: u32,
}

impl<P: Platform> fmt::Debug for PoolBuffer<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuffer")
            .field("index", &self.index)
            .field("gref", &self.gref())
            .field("offset", &self.offset())
            .field("len", &self.len())
            .finish()
    }
}

impl<P: Platform> PoolBuffer<P>
where
    P::Pages: 'static,
{
    /// The buffer's number in its pool (`0..capacity`): stable, unique among
    /// the buffers lent out, usable as a request id.
    pub fn index(&self) -> u32 {
        self.index
    }

    fn per_page_shift(&self) -> u32 {
        PAGE_SIZE.trailing_zeros() - self.pool.shift
    }

    /// The page of the pool the buffer lies in.
    pub fn page(&self) -> usize {
        (self.index >> self.per_page_shift()) as usize
    }

    /// The grant ref of the buffer's page (what a ring request carries).
    pub fn gref(&self) -> GrantRefNum {
        // `page() < page_count`, since `index < count`; a missing ref
        // cannot happen while the pool lives.
        self.pool.granted.gref(self.page()).unwrap_or(u32::MAX)
    }

    /// The buffer's offset in its page.
    pub fn offset(&self) -> u16 {
        let mask = (1u32 << self.per_page_shift()) - 1;
        // Below PAGE_SIZE: fits.
        ((self.index & mask) << self.pool.shift) as u16
    }

    /// The buffer's size in bytes.
    pub fn len(&self) -> usize {
        1 << self.pool.shift
    }

    /// Never empty; for symmetry with [`Self::len`].
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The buffer's first byte, for callers that move bytes themselves
    /// (volatile or atomic accesses only: the peer may write it).
    pub fn as_ptr(&self) -> NonNull<u8> {
        let off = self.page() * PAGE_SIZE + usize::from(self.offset());
        // SAFETY: `off + len() <= len_bytes()` (index < count), inside the
        // pool's allocation, so the result is in bounds and non-null.
        unsafe { self.pool.granted.as_ptr().add(off) }
    }

    /// Copies `data` into the buffer at `offset` (the one copy of a
    /// zero-copy path: straight into the granted page).
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), OutOfRange> {
        // SAFETY: the buffer's `len()` bytes are inside the pool's granted
        // pages, valid while `self.pool` lives; no Rust reference points
        // into them, and `&mut self` (the buffer is lent to one owner) keeps
        // this domain's other threads off them.
        unsafe { shared_mem::write(self.as_ptr(), self.len(), offset, data) }
    }

    /// Copies bytes at `offset` out of the buffer (what the peer wrote:
    /// validate the copy).
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfRange> {
        // SAFETY: as in `write_at`, for reads.
        unsafe { shared_mem::read(self.as_ptr(), self.len(), offset, buf) }
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub fn fill(&mut self, offset: usize, len: usize, byte: u8) -> Result<(), OutOfRange> {
        // SAFETY: as in `write_at`.
        unsafe { shared_mem::fill(self.as_ptr(), self.len(), offset, len, byte) }
    }

    /// Writes a wire structure at `offset`.
    pub fn write_obj<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: &T,
    ) -> Result<(), OutOfRange> {
        self.write_at(offset, value.as_bytes())
    }

    /// Reads a wire structure at `offset` (a copy; every bit pattern is a
    /// valid `T`).
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, OutOfRange> {
        let mut value = T::new_zeroed();
        self.read_at(offset, value.as_mut_bytes())?;
        Ok(value)
    }
}

impl<P: Platform> Drop for PoolBuffer<P>
where
    P::Pages: 'static,
{
    fn drop(&mut self) {
        if self.pool.mode == PoolMode::Untrusted {
            let len = self.len();
            // Cannot fail: the whole buffer is in range.
            let _ = self.fill(0, len, 0);
        }
        if self.pool.free.push(self.index).is_err() {
            // Cannot happen: each index is lent once and the queue holds
            // them all. Losing a buffer is the safe failure.
            log::error!(
                "buffer pool free list overflow returning buffer {}; buffer dropped",
                self.index
            );
        }
    }
}
