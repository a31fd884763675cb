//! The frame-device interface: what moves Ethernet frames, whatever the path.
//!
//! netfront (the paravirtual path), a passed-through NIC driven by the
//! domain itself (e1000e) and a hosted test link all offer this one small
//! interface, so that a network stack (the smoltcp adaptor in
//! [`crate::phy`], or an RDMA transport) runs unchanged over any of them:
//!
//! - **Transmit in place.** [`FrameDevice::tx_buffer`] lends a buffer for a
//!   frame of a given length, in the memory the device sends from (for
//!   netfront: pages persistently granted to the backend; for a NIC: DMA
//!   memory). The application writes the frame straight into it
//!   ([`TxFrame::as_mut_slice`] when it is contiguous, [`TxFrame::write_at`]
//!   otherwise) and hands it to [`FrameDevice::send`]. No copy between the
//!   application and the device.
//! - **Receive in place.** [`FrameDevice::receive`] lends a received frame
//!   in the memory the device received it into ([`RxFrame::as_slice`] when
//!   it is contiguous, [`RxFrame::read_at`] or [`RxFrame::fragment`]
//!   otherwise). Dropping the frame recycles its memory for the next
//!   receive: there is no explicit give-back call to forget.
//! - **Progress.** [`FrameDevice::poll`] does the device's work without
//!   blocking (completions, refilling receive buffers, link changes);
//!   [`FrameDevice::wait`] blocks until something may have happened or a
//!   timeout passes, with the platform's event mechanism (event channels,
//!   interrupts) and the platform's clock.
//!
//! Frames and buffers are owned values that do not borrow the device, so
//! an application may keep several in hand; the device bounds how many
//! exist (its buffer pools), and `tx_buffer` or `receive` return `None`
//! when none is free.
//!
//! # Implementing it
//! A device implements the three traits. Its buffer types should put each
//! frame in one contiguous region whenever the frame fits one (then
//! `as_mut_slice`/`as_slice` return `Some`, the zero-copy path of stacks
//! that want one slice); larger frames may be chains of fragments. A
//! device that breaks (a hostile peer, a hardware fault) returns
//! [`FrameError::Broken`] from then on, with a message that says what
//! happened; it never panics.

use alloc::string::String;
use core::fmt;

/// The state of a link, as a frame device reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Frames can be sent and received now.
    pub up: bool,
    /// The device's Ethernet address.
    pub mac: [u8; 6],
    /// The MTU: the largest IP packet, without the Ethernet header.
    pub mtu: usize,
    /// The largest frame [`FrameDevice::tx_buffer`] accepts, Ethernet header
    /// included (no FCS).
    pub max_frame: usize,
}

/// Why a frame-device operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The device is broken: its peer (backend, device) violated the
    /// protocol, or the platform failed. The message says what happened
    /// and what to do; every later call fails the same way.
    Broken(String),
    /// The link is down (not connected yet, or reconnecting); retry after
    /// [`FrameDevice::poll`] reports it up again.
    LinkDown,
    /// A frame longer than the device takes.
    TooLarge {
        /// The length asked for.
        len: usize,
        /// The most the device takes ([`LinkInfo::max_frame`]).
        max: usize,
    },
    /// A frame the device refuses as given (too short, offloads the
    /// connection does not have, ...); the message says why.
    Invalid(String),
    /// A read or write outside a frame.
    OutOfRange {
        /// First byte.
        offset: usize,
        /// Bytes.
        len: usize,
        /// The frame's length.
        frame_len: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Broken(why) => write!(f, "the network device is broken: {why}"),
            FrameError::LinkDown => write!(
                f,
                "the link is down (connecting or reconnecting); keep polling and retry"
            ),
            FrameError::TooLarge { len, max } => write!(
                f,
                "a frame of {len} bytes is larger than the {max} bytes the device takes; send smaller frames"
            ),
            FrameError::Invalid(why) => write!(f, "frame refused: {why}"),
            FrameError::OutOfRange {
                offset,
                len,
                frame_len,
            } => write!(
                f,
                "{len} byte(s) at offset {offset} are outside a frame of {frame_len} bytes"
            ),
        }
    }
}

impl core::error::Error for FrameError {}

/// A buffer lent for one outgoing frame, in the memory the device sends
/// from. Its length is fixed when it is lent ([`FrameDevice::tx_buffer`]);
/// it may be shortened ([`TxFrame::truncate`]). Dropping it without sending
/// gives it back.
pub trait TxFrame {
    /// The frame's length in bytes.
    fn len(&self) -> usize;

    /// Whether the frame is empty (never, for a lent buffer).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shortens the frame to `len` bytes (no effect when `len` is not
    /// shorter).
    fn truncate(&mut self, len: usize);

    /// The whole frame as one slice to write in place, when it lies in one
    /// contiguous region (frames up to a page, for netfront); `None` for a
    /// chain of fragments.
    fn as_mut_slice(&mut self) -> Option<&mut [u8]>;

    /// Copies `data` into the frame at `offset`, across fragments.
    fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), FrameError>;

    /// Copies bytes at `offset` out of the frame, across fragments.
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), FrameError>;
}

/// A received frame, lent in the memory it was received into. Dropping it
/// recycles that memory.
pub trait RxFrame {
    /// The frame's length in bytes.
    fn len(&self) -> usize;

    /// Whether the frame is empty (never, for a received frame).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole frame as one slice, when it lies in one contiguous region;
    /// `None` for a chain of fragments.
    fn as_slice(&self) -> Option<&[u8]>;

    /// Fragment `index` of the frame, in order (fragment 0 is the whole
    /// frame when it is contiguous); `None` past the last.
    fn fragment(&self, index: usize) -> Option<&[u8]>;

    /// Copies bytes at `offset` out of the frame, across fragments.
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), FrameError>;
}

/// A device that moves Ethernet frames (see the [module docs](self)).
pub trait FrameDevice {
    /// A buffer lent for an outgoing frame.
    type Tx: TxFrame;
    /// A received frame, lent in place.
    type Rx: RxFrame;

    /// The link's state, address and sizes.
    fn link(&self) -> LinkInfo;

    /// Lends a buffer for a frame of `len` bytes (an Ethernet header and
    /// payload, no FCS). `Ok(None)` when every buffer is in use (poll, and
    /// retry once sends complete); [`FrameError::TooLarge`] above
    /// [`LinkInfo::max_frame`]; [`FrameError::LinkDown`] while the link is
    /// down.
    fn tx_buffer(&mut self, len: usize) -> Result<Option<Self::Tx>, FrameError>;

    /// Sends a frame written into a lent buffer. The buffer comes back to
    /// the device when the send completes; on an error it is dropped (and
    /// so recycled) with the frame unsent.
    fn send(&mut self, frame: Self::Tx) -> Result<(), FrameError>;

    /// The next received frame, if any.
    fn receive(&mut self) -> Result<Option<Self::Rx>, FrameError>;

    /// Does the device's pending work without blocking. `Ok(true)` when
    /// something happened (a frame arrived, a send completed, the link
    /// changed).
    fn poll(&mut self) -> Result<bool, FrameError>;

    /// Waits until something may have happened (a frame arrived, sends
    /// completed, the link changed) or `timeout_ns` nanoseconds of the
    /// platform's clock pass (`None`: no limit). `Ok(true)` when woken by
    /// the device, `Ok(false)` on timeout. Call [`FrameDevice::poll`] or
    /// [`FrameDevice::receive`] after it.
    fn wait(&mut self, timeout_ns: Option<u64>) -> Result<bool, FrameError>;
}
