//! Frame buffers in DMA memory, lent to the application in place.
//!
//! A [`BufPool`] cuts DMA pages into buffers of [`BUF_LEN`] bytes (two per
//! 4 KiB page: a buffer never crosses a page, so it never needs more than
//! one contiguous DMA allocation). The driver posts free RX buffers to the
//! device and lends free TX buffers to the application; an
//! [`E1000eRxFrame`] or an unsent [`E1000eTxFrame`] gives its buffer back
//! to the pool's free queue when dropped, and the driver takes it from
//! there (the frames hold the pool, not the device, so they can be kept
//! while the device is used).
//!
//! # Lending DMA memory as slices
//! When the platform's DMA buffers expose their mapping
//! ([`DmaBuffer::base_ptr`]), `as_slice`/`as_mut_slice` lend the bytes in
//! place; otherwise frames are reached through copies (`read_at`,
//! `write_at`), and stacks that want one slice copy (netfront's smoltcp
//! adaptor does). A buffer is lent only while the device does not own it:
//! an RX buffer after the device wrote it back and before it is posted
//! again, a TX buffer before it is posted and never after. A device that
//! writes a buffer it does not own (a hostile one can) changes only the
//! values the application reads; the bounds are the driver's own.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use core::slice;
use core::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;
use netfront::frame::{FrameError, RxFrame, TxFrame};

use super::desc::{RxChecksum, TxChecksum};
use crate::dma::DmaBuffer;

/// Bytes per frame buffer (the receiver's 2048-byte buffer size).
pub const BUF_LEN: usize = 2048;
/// Bytes per DMA page of buffers.
pub const PAGE_LEN: usize = 4096;
const PER_PAGE: usize = PAGE_LEN / BUF_LEN;

/// Buffers in DMA pages with a free queue (see the module docs).
pub struct BufPool<D: DmaBuffer> {
    pages: Vec<D>,
    ptrs: Vec<Option<NonNull<u8>>>,
    free: ArrayQueue<u16>,
    /// Per buffer: taken from the free queue and not given back yet.
    lent: Vec<AtomicBool>,
    count: u16,
}

// SAFETY: the pool's pages are reached through `DmaBuffer` (which the
// platform makes safe to call from the thread that owns the pool) and
// through the pointers in `ptrs`, only for buffers a single owner holds
// (the driver, or one frame); the free queue is a lock-free MPMC queue.
// Sending the pool (inside an `Arc` held by frames) to another thread
// moves that ownership along with it when `D` may be sent.
unsafe impl<D: DmaBuffer + Send> Send for BufPool<D> {}
// SAFETY: shared access goes through the free queue (thread-safe) and
// through buffers each held by exactly one owner, as above; `D` must be
// `Sync` for its methods to be called from several threads.
unsafe impl<D: DmaBuffer + Sync> Sync for BufPool<D> {}

impl<D: DmaBuffer> fmt::Debug for BufPool<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("buffers", &self.count)
            .field("free", &self.free.len())
            .finish()
    }
}

impl<D: DmaBuffer> BufPool<D> {
    /// A pool over `pages` (each at least [`PAGE_LEN`] bytes), with every
    /// buffer free.
    pub fn new(pages: Vec<D>) -> Result<Self, &'static str> {
        if pages.iter().any(|p| p.len() < PAGE_LEN) {
            return Err("a DMA page of the buffer pool is smaller than 4096 bytes");
        }
        let count = pages
            .len()
            .checked_mul(PER_PAGE)
            .and_then(|n| u16::try_from(n).ok());
        let Some(count) = count.filter(|c| *c > 0) else {
            return Err("a buffer pool holds 1 to 65535 buffers");
        };
        let free = ArrayQueue::new(usize::from(count));
        for b in 0..count {
            let _ = free.push(b);
        }
        let ptrs = pages.iter().map(DmaBuffer::base_ptr).collect();
        let lent = (0..count).map(|_| AtomicBool::new(false)).collect();
        Ok(BufPool {
            pages,
            ptrs,
            free,
            lent,
            count,
        })
    }

    /// Buffers in the pool.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Buffers free now.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes a free buffer (marked lent until given back).
    pub fn take(&self) -> Option<u16> {
        let buf = self.free.pop()?;
        // The id is off the queue, so no one else can mark it meanwhile.
        if let Some(l) = self.lent.get(usize::from(buf)) {
            l.store(true, Ordering::Release);
        }
        Some(buf)
    }

    /// Whether `buf` is lent now (taken and not given back).
    pub fn is_lent(&self, buf: u16) -> bool {
        self.lent
            .get(usize::from(buf))
            .is_some_and(|l| l.load(Ordering::Acquire))
    }

    /// Gives a lent buffer back. Returns whether it was taken: an id out of
    /// range, one not lent now (never taken, or given back already) is
    /// refused and logged, so an id never sits in the free queue twice and
    /// a buffer is never lent to two owners.
    pub fn give_back(&self, buf: u16) -> bool {
        let Some(l) = self.lent.get(usize::from(buf)) else {
            log::error!("e1000e: buffer {buf} given back is not in the pool; ignored");
            return false;
        };
        if l.compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            log::error!("e1000e: buffer {buf} given back is not lent (given back twice?); ignored");
            return false;
        }
        if self.free.push(buf).is_err() {
            // Cannot happen: a lent id is not in the queue, which holds
            // every other id at most once.
            log::error!("e1000e: the free queue of the buffer pool is full; buffer {buf} lost");
            return false;
        }
        true
    }

    fn locate(&self, buf: u16) -> Option<(&D, Option<NonNull<u8>>, usize)> {
        let b = usize::from(buf);
        let page = b / PER_PAGE;
        let off = (b % PER_PAGE) * BUF_LEN;
        Some((
            self.pages.get(page)?,
            self.ptrs.get(page).copied().flatten(),
            off,
        ))
    }

    /// The bus address of a buffer.
    pub fn bus_addr(&self, buf: u16) -> Option<u64> {
        let (d, _, off) = self.locate(buf)?;
        d.bus_addr_at(off).ok()
    }

    fn read(&self, buf: u16, offset: usize, out: &mut [u8]) -> bool {
        let Some((d, _, off)) = self.locate(buf) else {
            return false;
        };
        offset
            .checked_add(out.len())
            .is_some_and(|end| end <= BUF_LEN)
            && d.read_into(off + offset, out).is_ok()
    }

    fn write(&self, buf: u16, offset: usize, data: &[u8]) -> bool {
        let Some((d, _, off)) = self.locate(buf) else {
            return false;
        };
        offset
            .checked_add(data.len())
            .is_some_and(|end| end <= BUF_LEN)
            && d.write_from(off + offset, data).is_ok()
    }

    /// The first `len` bytes of a buffer as a pointer, when the platform
    /// maps DMA memory (`len <= BUF_LEN`).
    fn ptr(&self, buf: u16, len: usize) -> Option<NonNull<u8>> {
        if len > BUF_LEN {
            return None;
        }
        let (_, base, off) = self.locate(buf)?;
        // SAFETY: `base` is the start of a page of at least PAGE_LEN bytes
        // (checked in `new`) and `off + BUF_LEN <= PAGE_LEN`, so the
        // result stays inside the page's mapping.
        base.map(|p| unsafe { p.add(off) })
    }
}

/// A frame received into a DMA buffer, lent in place. Dropping it gives
/// the buffer back for the driver to post again.
pub struct E1000eRxFrame<D: DmaBuffer> {
    pool: Arc<BufPool<D>>,
    buf: u16,
    len: usize,
    csum: RxChecksum,
}

impl<D: DmaBuffer> fmt::Debug for E1000eRxFrame<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E1000eRxFrame")
            .field("buf", &self.buf)
            .field("len", &self.len)
            .field("csum", &self.csum)
            .finish()
    }
}

impl<D: DmaBuffer> E1000eRxFrame<D> {
    pub(crate) fn new(pool: Arc<BufPool<D>>, buf: u16, len: usize, csum: RxChecksum) -> Self {
        E1000eRxFrame {
            pool,
            buf,
            len: len.min(BUF_LEN),
            csum,
        }
    }

    /// What the device said about the frame's checksums (receive checksum
    /// offload): the IPv4 header checksum and the TCP/UDP checksum, each
    /// checked good, checked bad, or not checked.
    pub fn checksum(&self) -> RxChecksum {
        self.csum
    }
}

impl<D: DmaBuffer> Drop for E1000eRxFrame<D> {
    fn drop(&mut self) {
        self.pool.give_back(self.buf);
    }
}

impl<D: DmaBuffer> RxFrame for E1000eRxFrame<D> {
    fn len(&self) -> usize {
        self.len
    }

    fn as_slice(&self) -> Option<&[u8]> {
        let p = self.pool.ptr(self.buf, self.len)?;
        // SAFETY: `p` points at `len <= BUF_LEN` bytes inside one mapped
        // DMA page (`BufPool::ptr`), which lives as long as the pool this
        // frame holds, and the slice borrows the frame. The buffer belongs
        // to this frame alone: the device wrote it back and the driver does
        // not post it again before the frame is dropped, so nothing in this
        // domain writes it meanwhile. A device breaking the protocol can
        // change only the bytes' values (see the module docs).
        Some(unsafe { slice::from_raw_parts(p.as_ptr(), self.len) })
    }

    fn fragment(&self, index: usize) -> Option<&[u8]> {
        if index == 0 {
            self.as_slice()
        } else {
            None
        }
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), FrameError> {
        let oor = FrameError::OutOfRange {
            offset,
            len: buf.len(),
            frame_len: self.len,
        };
        if offset
            .checked_add(buf.len())
            .is_none_or(|end| end > self.len)
        {
            return Err(oor);
        }
        if self.pool.read(self.buf, offset, buf) {
            Ok(())
        } else {
            Err(oor)
        }
    }
}

/// A DMA buffer lent for one outgoing frame. Dropping it unsent gives it
/// back.
pub struct E1000eTxFrame<D: DmaBuffer> {
    pool: Arc<BufPool<D>>,
    /// `None` once sent.
    buf: Option<u16>,
    len: usize,
    csum: Option<TxChecksum>,
}

impl<D: DmaBuffer> fmt::Debug for E1000eTxFrame<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E1000eTxFrame")
            .field("buf", &self.buf)
            .field("len", &self.len)
            .field("csum", &self.csum)
            .finish()
    }
}

impl<D: DmaBuffer> E1000eTxFrame<D> {
    pub(crate) fn new(pool: Arc<BufPool<D>>, buf: u16, len: usize) -> Self {
        E1000eTxFrame {
            pool,
            buf: Some(buf),
            len: len.min(BUF_LEN),
            csum: None,
        }
    }

    /// Asks the device to insert checksums into this frame when it sends it
    /// (transmit checksum offload; see [`TxChecksum`] for what the frame
    /// must hold). Checked against the frame's length when sent.
    pub fn set_checksum(&mut self, csum: Option<TxChecksum>) {
        self.csum = csum;
    }

    /// The checksums asked for.
    pub fn checksum(&self) -> Option<TxChecksum> {
        self.csum
    }

    /// Whether the frame's buffer comes from `pool` (the same allocation).
    pub(crate) fn is_from(&self, pool: &Arc<BufPool<D>>) -> bool {
        Arc::ptr_eq(&self.pool, pool)
    }

    /// Hands the buffer to the driver to send: (buffer, length, bus
    /// address, checksums).
    pub(crate) fn take(mut self) -> Option<(u16, usize, u64, Option<TxChecksum>)> {
        let buf = self.buf.take()?;
        let Some(bus) = self.pool.bus_addr(buf) else {
            self.pool.give_back(buf);
            return None;
        };
        Some((buf, self.len, bus, self.csum))
    }
}

impl<D: DmaBuffer> Drop for E1000eTxFrame<D> {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pool.give_back(b);
        }
    }
}

impl<D: DmaBuffer> TxFrame for E1000eTxFrame<D> {
    fn len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
        }
    }

    fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        let p = self.pool.ptr(self.buf?, self.len)?;
        // SAFETY: `p` points at `len <= BUF_LEN` bytes inside one mapped
        // DMA page that lives as long as the pool this frame holds; the
        // slice borrows the frame mutably. The buffer is this frame's
        // alone: the driver lent it and posts it only when the frame is
        // consumed by `send`, so neither the driver nor the device accesses
        // it while the slice lives.
        Some(unsafe { slice::from_raw_parts_mut(p.as_ptr(), self.len) })
    }

    fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), FrameError> {
        let oor = FrameError::OutOfRange {
            offset,
            len: data.len(),
            frame_len: self.len,
        };
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > self.len)
        {
            return Err(oor);
        }
        match self.buf {
            Some(b) if self.pool.write(b, offset, data) => Ok(()),
            _ => Err(oor),
        }
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), FrameError> {
        let oor = FrameError::OutOfRange {
            offset,
            len: buf.len(),
            frame_len: self.len,
        };
        if offset
            .checked_add(buf.len())
            .is_none_or(|end| end > self.len)
        {
            return Err(oor);
        }
        match self.buf {
            Some(b) if self.pool.read(b, offset, buf) => Ok(()),
            _ => Err(oor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::MemDma;
    use alloc::vec;

    #[test]
    fn give_back_takes_only_lent_ids() {
        let mut backing = vec![0u64; PAGE_LEN / 8];
        let base = NonNull::new(backing.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `backing` outlives the pool, is 8-aligned and is reached
        // only through the pool meanwhile.
        let page = unsafe { MemDma::new(base, PAGE_LEN, 0x10_0000) };
        let pool = BufPool::new(vec![page]).unwrap();
        assert_eq!(pool.count(), 2);
        // Never lent: refused, the queue keeps each id once.
        assert!(!pool.give_back(0));
        assert!(!pool.give_back(2));
        assert_eq!(pool.free_count(), 2);
        let a = pool.take().unwrap();
        assert!(pool.is_lent(a));
        assert!(pool.give_back(a));
        assert!(!pool.is_lent(a));
        // Given back twice: refused.
        assert!(!pool.give_back(a));
        assert_eq!(pool.free_count(), 2);
        let x = pool.take().unwrap();
        let y = pool.take().unwrap();
        assert_ne!(x, y);
        assert!(pool.take().is_none());
        drop(pool);
        drop(backing);
    }
}
