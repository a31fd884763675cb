//! Frames in pooled, persistently granted pages: the zero-copy buffers the
//! driver lends to the application.
//!
//! - [`TxBuf`]: one outgoing frame, in 1 to 18 pages of the connection's TX
//!   pool (granted read-only to the backend once, for the connection's
//!   life). The application writes the frame in place; the driver puts the
//!   pages' refs on the ring; when the backend answers, the pages go back
//!   to the pool. A frame up to a page is one contiguous slice.
//! - [`NetRxFrame`]: one received frame, in the pages of the connection's
//!   RX pool the backend copied it into (a chain when it spans several
//!   slots). Dropping it recycles the pages: the driver posts them again
//!   without granting them again.
//!
//! # Lending granted pages as slices
//! The backend may access these pages (a hostile one at any time), so the
//! driver's own code reaches them only through copies
//! ([`PoolBuffer::read_at`], [`PoolBuffer::write_at`]). The slices lent to
//! the application ([`TxBuf::as_mut_slice`], [`NetRxFrame::as_slice`]) are
//! the one exception, made in `lend` and `lend_mut`, on the same terms
//! as DMA buffers handed to a device driver:
//! - TX pages are granted read-only: the backend cannot write them at all.
//! - An RX page is lent only after the backend answered it and before it is
//!   posted again: the protocol gives the backend no right to write it
//!   then. A backend that writes it anyway (it keeps its grant, which is
//!   persistent) can only change the values the application reads; the
//!   slice's bounds are the driver's own, so nothing the backend does
//!   moves them. Applications treat frame bytes as untrusted input anyway.

use core::slice;

use grant_tables::{Platform, PoolBuffer};

use crate::abi::PAGE_SIZE;
use crate::frame::{FrameError, RxFrame, TxFrame};
use crate::inline::{InlineVec, PageList};
use crate::rx::{RxHash, MAX_RX_DATA_SLOTS};
use crate::tx::{Gso, TxOffload, MAX_TX_REQUESTS};

/// The bytes `[offset, offset + len)` of a pool buffer, as a slice.
///
/// Returns `None` when the range is outside the buffer.
pub(crate) fn lend<P: Platform>(buf: &PoolBuffer<P>, offset: usize, len: usize) -> Option<&[u8]>
where
    P::Pages: 'static,
{
    let end = offset.checked_add(len)?;
    if end > buf.len() {
        return None;
    }
    // SAFETY: `as_ptr()` is valid for `buf.len()` bytes of the pool's
    // pages for as long as `buf` lives (the buffer holds the pool, which
    // holds the pages), and `offset + len <= buf.len()` (checked above).
    // The returned slice borrows `buf`, so it cannot outlive it. Nothing in
    // this domain writes the buffer while it is lent: `PoolBuffer` hands
    // each buffer to one owner and its writers take `&mut self`. The
    // backend may not write it either (see the module docs: TX pages are
    // read-only, RX pages are answered and not posted); a backend that
    // breaks that rule can change only the bytes' values.
    Some(unsafe { slice::from_raw_parts(buf.as_ptr().as_ptr().add(offset), len) })
}

/// The bytes `[offset, offset + len)` of a pool buffer, as a mutable slice.
///
/// Returns `None` when the range is outside the buffer.
pub(crate) fn lend_mut<P: Platform>(
    buf: &mut PoolBuffer<P>,
    offset: usize,
    len: usize,
) -> Option<&mut [u8]>
where
    P::Pages: 'static,
{
    let end = offset.checked_add(len)?;
    if end > buf.len() {
        return None;
    }
    // SAFETY: as in `lend`; the slice borrows `buf` mutably, so it is the
    // only reference to these bytes in this domain while it lives.
    Some(unsafe { slice::from_raw_parts_mut(buf.as_ptr().as_ptr().add(offset), len) })
}

/// An outgoing frame in pooled TX pages (see the module docs).
pub struct TxBuf<P: Platform>
where
    P::Pages: 'static,
{
    pub(crate) bufs: PageList<PoolBuffer<P>, MAX_TX_REQUESTS>,
    pub(crate) len: usize,
    pub(crate) offload: TxOffload,
    pub(crate) queue: Option<u16>,
    /// The connection whose pool the pages belong to.
    pub(crate) connection: u64,
    /// More frames follow at once: publish later (see [`TxBuf::set_more`]).
    pub(crate) more: bool,
}

impl<P: Platform> core::fmt::Debug for TxBuf<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TxBuf")
            .field("len", &self.len)
            .field("pages", &self.bufs.len())
            .field("offload", &self.offload)
            .field("queue", &self.queue)
            .finish()
    }
}

impl<P: Platform> TxBuf<P>
where
    P::Pages: 'static,
{
    /// Asks the backend for checksum completion or segmentation of this
    /// frame (the connection must have negotiated them; see
    /// [`crate::Netfront::tx_caps`]). Without it the frame goes as written,
    /// its checksums complete.
    pub fn set_offload(&mut self, offload: TxOffload) {
        self.offload = offload;
    }

    /// The offloads asked for.
    pub fn offload(&self) -> TxOffload {
        self.offload
    }

    /// Sends the frame on queue `queue` (taken modulo the queue count)
    /// instead of the one the driver picks from the frame's addresses.
    pub fn set_queue(&mut self, queue: u16) {
        self.queue = Some(queue);
    }

    /// Marks that more frames follow at once (as Linux's `xmit_more`):
    /// when sent, the frame goes on the ring, but the ring's producer index
    /// is published (and the backend notified, if it asked) only with the
    /// next send of a frame without the mark, or at the next
    /// [`crate::Netfront::flush`], poll or wait, or receive that finds no
    /// frame already waiting, whichever comes first. A burst then costs one publication (a full fence, and a cache
    /// line the backend reads) instead of one per frame.
    pub fn set_more(&mut self, more: bool) {
        self.more = more;
    }

    /// Pages the frame occupies.
    pub fn pages(&self) -> usize {
        self.bufs.len()
    }

    /// Fragment `index` (one per page) as a mutable slice, to write in
    /// place.
    pub fn fragment_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        let start = index.checked_mul(PAGE_SIZE)?;
        if start >= self.len {
            return None;
        }
        let len = (self.len - start).min(PAGE_SIZE);
        let buf = self.bufs.get_mut(index)?;
        lend_mut(buf, 0, len)
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), FrameError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(FrameError::OutOfRange {
                offset,
                len,
                frame_len: self.len,
            }),
        }
    }
}

impl<P: Platform> TxFrame for TxBuf<P>
where
    P::Pages: 'static,
{
    fn len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            // Pages past the new end go back to the pool now.
            let keep = len.div_ceil(PAGE_SIZE).max(1);
            if self.bufs.len() > keep {
                let mut rest = PageList::new();
                for (i, b) in self.bufs.drain().enumerate() {
                    if i < keep {
                        let _ = rest.push(b);
                    }
                }
                self.bufs = rest;
            }
        }
    }

    fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if self.bufs.len() != 1 {
            return None;
        }
        let len = self.len;
        lend_mut(self.bufs.get_mut(0)?, 0, len)
    }

    fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), FrameError> {
        self.check(offset, data.len())?;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done;
            let (page, in_page) = (at / PAGE_SIZE, at % PAGE_SIZE);
            let n = (data.len() - done).min(PAGE_SIZE - in_page);
            let Some(buf) = self.bufs.get_mut(page) else {
                break;
            };
            buf.write_at(in_page, &data[done..done + n])
                .map_err(|_| FrameError::OutOfRange {
                    offset,
                    len: data.len(),
                    frame_len: self.len,
                })?;
            done += n;
        }
        Ok(())
    }

    fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), FrameError> {
        self.check(offset, out.len())?;
        let mut done = 0usize;
        while done < out.len() {
            let at = offset + done;
            let (page, in_page) = (at / PAGE_SIZE, at % PAGE_SIZE);
            let n = (out.len() - done).min(PAGE_SIZE - in_page);
            let Some(buf) = self.bufs.get(page) else {
                break;
            };
            buf.read_at(in_page, &mut out[done..done + n])
                .map_err(|_| FrameError::OutOfRange {
                    offset,
                    len: n,
                    frame_len: self.len,
                })?;
            done += n;
        }
        Ok(())
    }
}

/// What the backend said about a received frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxMeta {
    /// The TCP/UDP checksum can be trusted without verifying it: the
    /// backend vouched for it (`data_validated`), or the driver completed a
    /// partial checksum the backend sent.
    pub checksum_ok: bool,
    /// The driver completed a partial checksum (`csum_blank`) in place.
    pub checksum_completed: bool,
    /// The frame is a TCP segment larger than the MSS (GSO).
    pub gso: Option<Gso>,
    /// The backend's hash of the frame's flow.
    pub hash: Option<RxHash>,
    /// The queue the frame came in on.
    pub queue: u16,
}

/// One fragment of a received frame.
pub(crate) struct RxPiece<P: Platform>
where
    P::Pages: 'static,
{
    pub(crate) buf: PoolBuffer<P>,
    pub(crate) offset: u16,
    pub(crate) len: u16,
}

/// A received frame in pooled RX pages (see the module docs). Dropping it
/// recycles the pages.
pub struct NetRxFrame<P: Platform>
where
    P::Pages: 'static,
{
    pub(crate) pieces: PageList<RxPiece<P>, MAX_RX_DATA_SLOTS>,
    pub(crate) len: usize,
    pub(crate) meta: RxMeta,
}

impl<P: Platform> core::fmt::Debug for NetRxFrame<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NetRxFrame")
            .field("len", &self.len)
            .field("fragments", &self.pieces.len())
            .field("meta", &self.meta)
            .finish()
    }
}

impl<P: Platform> NetRxFrame<P>
where
    P::Pages: 'static,
{
    /// What the backend said about the frame.
    pub fn meta(&self) -> RxMeta {
        self.meta
    }

    /// Fragments in the chain.
    pub fn fragments(&self) -> usize {
        self.pieces.len()
    }

    /// Fragment `index` as a mutable slice.
    pub fn fragment_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        let p = self.pieces.get_mut(index)?;
        let (off, len) = (usize::from(p.offset), usize::from(p.len));
        lend_mut(&mut p.buf, off, len)
    }

    /// Every fragment as a mutable slice, in order (for in-place work on
    /// the whole frame, such as completing its checksum).
    pub(crate) fn with_fragments_mut<R>(&mut self, f: impl FnOnce(&mut [&mut [u8]]) -> R) -> R {
        let mut slices: InlineVec<&mut [u8], MAX_RX_DATA_SLOTS> = InlineVec::new();
        for p in self.pieces.iter_mut() {
            let (off, len) = (usize::from(p.offset), usize::from(p.len));
            if let Some(s) = lend_mut(&mut p.buf, off, len) {
                let _ = slices.push(s);
            }
        }
        let mut arr: [&mut [u8]; MAX_RX_DATA_SLOTS] = Default::default();
        let n = slices.len();
        for (dst, s) in arr.iter_mut().zip(slices.drain()) {
            *dst = s;
        }
        f(&mut arr[..n])
    }

    /// Copies the whole frame into `out` (at least [`RxFrame::len`] bytes)
    /// and returns its length.
    pub fn copy_to(&self, out: &mut [u8]) -> Result<usize, FrameError> {
        let len = self.len;
        let dst = out.get_mut(..len).ok_or(FrameError::OutOfRange {
            offset: 0,
            len,
            frame_len: len,
        })?;
        self.read_at(0, dst)?;
        Ok(len)
    }
}

impl<P: Platform> RxFrame for NetRxFrame<P>
where
    P::Pages: 'static,
{
    fn len(&self) -> usize {
        self.len
    }

    fn as_slice(&self) -> Option<&[u8]> {
        if self.pieces.len() != 1 {
            return None;
        }
        self.fragment(0)
    }

    fn fragment(&self, index: usize) -> Option<&[u8]> {
        let p = self.pieces.get(index)?;
        lend(&p.buf, usize::from(p.offset), usize::from(p.len))
    }

    fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), FrameError> {
        let oob = FrameError::OutOfRange {
            offset,
            len: out.len(),
            frame_len: self.len,
        };
        match offset.checked_add(out.len()) {
            Some(end) if end <= self.len => {}
            _ => return Err(oob),
        }
        let mut pos = 0usize;
        let mut done = 0usize;
        for p in self.pieces.iter() {
            let (fstart, flen) = (pos, usize::from(p.len));
            pos += flen;
            let at = offset + done;
            if done == out.len() {
                break;
            }
            if at >= pos {
                continue;
            }
            let in_frag = at - fstart;
            let n = (out.len() - done).min(flen - in_frag);
            p.buf
                .read_at(usize::from(p.offset) + in_frag, &mut out[done..done + n])
                .map_err(|_| oob.clone())?;
            done += n;
        }
        if done == out.len() {
            Ok(())
        } else {
            Err(oob)
        }
    }
}
