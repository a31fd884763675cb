//! A smoltcp [`phy::Device`] over any [`FrameDevice`] (feature `smoltcp`).
//!
//! [`SmolDevice`] lends the frame device's own buffers to smoltcp: a
//! received frame is handed to smoltcp's `RxToken::consume` as the slice it
//! was received into (netfront: the granted RX page), and smoltcp writes an
//! outgoing frame through `TxToken::consume` straight into the lent TX
//! buffer (netfront: the granted TX page), which is then sent. No copy
//! between smoltcp and the ring for frames that fit one page; a frame that
//! spans several (an MTU above a page's worth, or a GSO frame from the
//! backend) goes through a heap copy, since smoltcp wants one slice.
//!
//! smoltcp computes and verifies every checksum itself
//! (`ChecksumCapabilities::default()`): the frames it sends carry complete
//! checksums, so no offload is asked of the backend.
//!
//! A device that fails (broken, link down) makes `receive` and `transmit`
//! return `None`: smoltcp sees a quiet link, and the application sees the
//! error from the device's own [`FrameDevice::poll`].

use alloc::vec;

/// The smoltcp this adaptor is built for (so that applications use the
/// same version).
pub use smoltcp;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::abi::PAGE_SIZE;
use crate::frame::{FrameDevice, RxFrame, TxFrame};

/// smoltcp's view of a [`FrameDevice`] (see the [module docs](self)).
pub struct SmolDevice<D: FrameDevice> {
    dev: D,
}

impl<D: FrameDevice> SmolDevice<D> {
    /// Wraps `dev`.
    pub fn new(dev: D) -> Self {
        SmolDevice { dev }
    }

    /// The frame device.
    pub fn inner(&self) -> &D {
        &self.dev
    }

    /// The frame device, to poll or wait on it.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Unwraps the frame device.
    pub fn into_inner(self) -> D {
        self.dev
    }
}

/// A received frame lent to smoltcp.
pub struct SmolRxToken<F: RxFrame> {
    frame: F,
}

impl<F: RxFrame> phy::RxToken for SmolRxToken<F> {
    fn consume<R, G>(self, f: G) -> R
    where
        G: FnOnce(&[u8]) -> R,
    {
        if let Some(s) = self.frame.as_slice() {
            return f(s);
        }
        let mut copy = vec![0u8; self.frame.len()];
        if self.frame.read_at(0, &mut copy).is_err() {
            copy.clear();
        }
        f(&copy)
        // The frame drops here: its pages are recycled.
    }
}

/// A TX buffer lent to smoltcp (taken when smoltcp asks to transmit).
pub struct SmolTxToken<'a, D: FrameDevice> {
    dev: &'a mut D,
    /// A buffer taken ahead (in `transmit`, to say whether one is free).
    buf: Option<D::Tx>,
}

impl<D: FrameDevice> phy::TxToken for SmolTxToken<'_, D> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let SmolTxToken { dev, buf } = self;
        let mut buf = match buf {
            Some(mut b) if b.len() >= len => {
                b.truncate(len);
                Some(b)
            }
            other => {
                drop(other);
                dev.tx_buffer(len).ok().flatten()
            }
        };
        let Some(b) = buf.as_mut() else {
            log::debug!("netfront: no TX buffer for a {len}-byte frame from smoltcp; dropped");
            let mut scratch = vec![0u8; len];
            return f(&mut scratch);
        };
        let r = match b.as_mut_slice() {
            Some(s) => f(s),
            None => {
                let mut scratch = vec![0u8; len];
                let r = f(&mut scratch);
                if b.write_at(0, &scratch).is_err() {
                    return r;
                }
                r
            }
        };
        if let Some(b) = buf {
            if let Err(e) = dev.send(b) {
                log::debug!("netfront: sending a frame from smoltcp: {e}");
            }
        }
        r
    }
}

impl<D: FrameDevice> phy::Device for SmolDevice<D> {
    type RxToken<'a>
        = SmolRxToken<D::Rx>
    where
        Self: 'a;
    type TxToken<'a>
        = SmolTxToken<'a, D>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.dev.receive().ok().flatten()?;
        Some((
            SmolRxToken { frame },
            SmolTxToken {
                dev: &mut self.dev,
                buf: None,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        let link = self.dev.link();
        if !link.up {
            return None;
        }
        // One page says whether buffers are free; frames up to a page use
        // it as is.
        let buf = self
            .dev
            .tx_buffer(link.max_frame.min(PAGE_SIZE))
            .ok()
            .flatten()?;
        Some(SmolTxToken {
            dev: &mut self.dev,
            buf: Some(buf),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let link = self.dev.link();
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = if link.max_frame > 0 {
            link.max_frame
        } else {
            1514
        };
        caps.max_burst_size = None;
        caps
    }
}
