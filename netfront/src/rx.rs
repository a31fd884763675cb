//! Receive: posted buffers, how many to keep posted, and parsing the
//! backend's response chains.
//!
//! - [`RxBuffers`] is the slab of posted buffers. The request posted at ring
//!   index `i` has id `i mod ring size`, and the backend answers it in the
//!   same ring slot (`netif.h` requires this, because an extra-info slot
//!   overlays the response id); so the slot a response sits in names its
//!   buffer, and a data response must also echo that id.
//! - [`RxRefill`] says how many buffers to post: the ring full, never fewer
//!   than a maximal packet needs.
//! - [`RxBuffers::take_packet`] reads one packet's slots (each exactly once,
//!   through a closure over the ring), validates the whole chain, and only
//!   then takes the buffers out of the slab.
//! - [`ProdTracker`] checks that the backend's producer index never moves
//!   backwards or past what was posted.
//!
//! # The chain
//! A packet is a first data response; if it has `NETRXF_extra_info`,
//! extra-info slots follow (each with `XEN_NETIF_EXTRA_FLAG_MORE` but the
//! last); then, while the previous data response has `NETRXF_more_data`,
//! further data responses. Linux's netback publishes whole packets only, so
//! a chain running past the producer index is a violation. The checksum and
//! extra-info flags count on the first data response only; on the others
//! they are ignored, as Linux's netfront ignores them, and so are unknown
//! flag bits (such as the deprecated `NETRXF_gso_prefix`).
//!
//! # What is a violation
//! Anything Linux's netback never produces breaks the device
//! ([`RxViolation`]): a slot with no posted buffer, a data response whose id
//! is not its slot's, `offset + status` beyond the page, more than 18 data
//! slots (19 when the first is at most 256 bytes, as Linux's netfront
//! allows), an extra type other than GSO, hash or XDP, a repeated extra
//! type, a GSO extra that was not negotiated or has size 0 or an unknown
//! type, an XDP extra whose headroom is not the negotiated one (or missing
//! when one was negotiated), a multi-slot frame when scatter-gather was not
//! negotiated. A negative status is not a violation: netback reports a
//! failed grant copy that way; the packet is dropped and its buffers come
//! back for reposting ([`RxDrop`]).
//!
//! # The XDP headroom
//! When the frontend writes `xdp-headroom` = `h` > 0, Linux's netback (6.1)
//! adds an XDP extra carrying `h` to every packet, copies each data slot's
//! bytes starting `h` bytes into its page, and writes `offset = 0` and
//! `status = h + length`: the status is the end of the data in the page,
//! not its length (`xenvif_rx_data_slot` starts its copy offset at the
//! headroom and stores the final offset as the status). Linux's netfront
//! reads the first slot as starting at `h` with `status` bytes, which is
//! `h` bytes too long (harmless for IP, which trims to its own length).
//! This parser takes netback's layout exactly: with the XDP extra, every
//! data slot's bytes are `[h, status)` of its page, `offset` must be 0 and
//! `h <= status <= 4096`.

use alloc::vec::Vec;
use core::fmt;

use crate::abi::{
    GrantRefNum, NetifExtraInfo, NetifRxRequest, NetifRxResponse, RingIdx, RxSlotBytes, ETH_HLEN,
    NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, PAGE_SIZE,
    XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_HASH,
    XEN_NETIF_EXTRA_TYPE_XDP, XEN_NETIF_NR_SLOTS_MIN,
};
use crate::features::Negotiated;
use crate::inline::InlineVec;
use crate::tx::{Gso, GsoKind};

/// Most data slots in one received packet (18, plus one when the first
/// slot holds at most [`RX_COPY_THRESHOLD`] bytes, as Linux's netfront).
pub const MAX_RX_DATA_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN + 1;
/// Most extra-info slots in one received packet: one each of GSO, hash and
/// XDP.
pub const MAX_RX_EXTRAS: usize = 3;
/// Most ring slots one received packet takes.
pub const MAX_RX_SLOTS: usize = MAX_RX_DATA_SLOTS + MAX_RX_EXTRAS;
/// A first slot of at most this many bytes allows one more data slot
/// (Linux's `RX_COPY_THRESHOLD`).
pub const RX_COPY_THRESHOLD: i16 = 256;
/// The largest frame the backend may send with scatter-gather: a 64 KiB
/// GSO packet plus an Ethernet and a VLAN header.
pub const MAX_RX_FRAME: usize = 65536 + 18;

/// What the receive side accepts (from [`Negotiated`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxConfig {
    /// Multi-slot frames (the frontend wrote `feature-sg=1`).
    pub sg: bool,
    /// TCPv4 GSO extras (the frontend wrote `feature-gso-tcpv4=1`).
    pub gso_tcpv4: bool,
    /// TCPv6 GSO extras.
    pub gso_tcpv6: bool,
    /// The headroom written in `xdp-headroom` (0: none; no XDP extra may
    /// come).
    pub headroom: u16,
}

impl RxConfig {
    /// The receive configuration of a negotiated connection.
    pub fn from_negotiated(n: &Negotiated) -> Self {
        Self {
            sg: n.rx_sg,
            gso_tcpv4: n.rx_gso_tcpv4,
            gso_tcpv6: n.rx_gso_tcpv6,
            headroom: n.rx_headroom,
        }
    }
}

/// A buffer posted to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Posted<B> {
    /// The grant of its page (granted to the backend, writable).
    pub gref: GrantRefNum,
    /// The driver's handle on the buffer (its page in the pool).
    pub buf: B,
}

/// One data slot of a received frame: `len` bytes at `offset` in the page
/// of `posted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxFrag<B> {
    /// The buffer.
    pub posted: Posted<B>,
    /// Where the data starts in the page.
    pub offset: u16,
    /// Bytes of data; `offset + len <= 4096`.
    pub len: u16,
}

/// The hash extra of a received packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxHash {
    /// `_XEN_NETIF_CTRL_HASH_TYPE_*`.
    pub kind: u8,
    /// `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
    pub algorithm: u8,
    /// The hash value.
    pub value: u32,
}

/// A received frame, its bytes in the fragments' pages.
#[derive(Debug, PartialEq, Eq)]
pub struct RxFrame<B> {
    /// The data slots, in order.
    pub frags: InlineVec<RxFrag<B>, MAX_RX_DATA_SLOTS>,
    /// Total bytes.
    pub len: usize,
    /// `NETRXF_csum_blank`: the TCP/UDP checksum field holds only the
    /// pseudo-header sum; complete it (`csum`) before trusting the frame.
    pub csum_blank: bool,
    /// `NETRXF_data_validated`: the backend vouches for the checksums.
    pub data_validated: bool,
    /// The GSO extra: the frame is a TCP segment larger than the MSS.
    pub gso: Option<Gso>,
    /// The hash extra.
    pub hash: Option<RxHash>,
}

impl<B> RxFrame<B> {
    /// What checksum work the frame needs, as Linux's netfront decides it:
    /// a checksum-blank frame is completed; a GSO frame without the flag
    /// (a buggy backend) gets its pseudo-header sum recomputed first.
    pub fn checksum_action(&self) -> crate::csum::CsumAction {
        checksum_action(self.csum_blank, self.data_validated, self.gso.is_some())
    }
}

/// [`RxFrame::checksum_action`] from the first data response's flags and
/// whether a GSO extra came.
#[inline]
pub fn checksum_action(
    csum_blank: bool,
    data_validated: bool,
    gso: bool,
) -> crate::csum::CsumAction {
    use crate::csum::CsumAction;
    if csum_blank {
        CsumAction::Complete {
            recompute_pseudo: false,
        }
    } else if gso {
        CsumAction::Complete {
            recompute_pseudo: true,
        }
    } else if data_validated {
        CsumAction::Validated
    } else {
        CsumAction::Verify
    }
}

/// Why a well-formed packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// A data slot's status is negative: a `NETIF_RSP_*` error or a grant
    /// copy error (the first such status).
    BackendStatus {
        /// The status.
        status: i16,
    },
    /// Shorter than an Ethernet header.
    Runt {
        /// Its length.
        len: usize,
    },
}

/// What a packet became.
#[derive(Debug, PartialEq, Eq)]
pub enum RxKind<B> {
    /// A frame for the application.
    Frame(RxFrame<B>),
    /// Dropped; every buffer is in [`RxPacket::spare`].
    Dropped(RxDrop),
}

/// What [`RxBuffers::take_next`] took off the ring.
#[derive(Debug, PartialEq, Eq)]
pub enum RxNext<B> {
    /// A frame in one data slot (one ring slot, no extras, no spare
    /// buffer): `frag` holds all of it.
    Single {
        /// Its one fragment (at least an Ethernet header).
        frag: RxFrag<B>,
        /// `NETRXF_csum_blank`, as [`RxFrame::csum_blank`].
        csum_blank: bool,
        /// `NETRXF_data_validated`, as [`RxFrame::data_validated`].
        data_validated: bool,
    },
    /// Any other packet.
    Packet(RxPacket<B>),
}

/// One packet taken off the ring.
#[derive(Debug, PartialEq, Eq)]
pub struct RxPacket<B> {
    /// Ring slots consumed: advance the consumer index by this.
    pub slots: u32,
    /// The frame, or why it was dropped.
    pub kind: RxKind<B>,
    /// Buffers free for reposting now (the extra-info slots' buffers, and
    /// all of a dropped packet's).
    pub spare: InlineVec<Posted<B>, MAX_RX_SLOTS>,
}

/// A backend response chain that breaks the protocol. The device must be
/// marked broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxViolation {
    /// A response sits in a slot with no posted buffer.
    NotPosted {
        /// The ring index.
        idx: RingIdx,
    },
    /// A data response's id is not the id posted in its slot.
    IdMismatch {
        /// The ring index.
        idx: RingIdx,
        /// The id posted there.
        expected: u16,
        /// The id in the response.
        got: u16,
    },
    /// `offset + status` is beyond the page (or, with the XDP headroom, the
    /// offset is not 0 or the status is below the headroom).
    BadRange {
        /// The ring index.
        idx: RingIdx,
        /// The response's offset.
        offset: u16,
        /// The response's status.
        status: i16,
    },
    /// More data slots than a packet may have.
    TooManySlots {
        /// The most allowed for this packet.
        max: usize,
    },
    /// The chain continues past the producer index.
    Truncated {
        /// Slots the chain had when the published ones ran out.
        slots: u32,
    },
    /// An extra type this frontend never asked for (none, multicast,
    /// unknown).
    BadExtraType {
        /// The type.
        type_: u8,
    },
    /// The same extra type twice in one packet.
    DuplicateExtra {
        /// The type.
        type_: u8,
    },
    /// A GSO extra that was not negotiated, or has size 0 or an unknown
    /// type.
    BadGso {
        /// Its size.
        size: u16,
        /// Its type.
        type_: u8,
    },
    /// An XDP extra whose headroom is not the negotiated one (or one when
    /// none was negotiated).
    BadHeadroom {
        /// The extra's headroom.
        got: u16,
        /// The negotiated headroom.
        expected: u16,
    },
    /// A headroom was negotiated but the packet has no XDP extra.
    MissingHeadroom {
        /// The negotiated headroom.
        expected: u16,
    },
    /// A multi-slot frame though scatter-gather was not negotiated.
    UnexpectedMultiSlot,
}

impl fmt::Display for RxViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("backend fault: ")?;
        match self {
            RxViolation::NotPosted { idx } => {
                write!(f, "RX response at ring index {idx} has no posted buffer")
            }
            RxViolation::IdMismatch { idx, expected, got } => write!(
                f,
                "RX response at ring index {idx} has id {got}, the request there had id {expected}"
            ),
            RxViolation::BadRange { idx, offset, status } => write!(
                f,
                "RX response at ring index {idx}: offset {offset} and status {status} do not describe data within the page"
            ),
            RxViolation::TooManySlots { max } => {
                write!(f, "RX packet with more than {max} data slots")
            }
            RxViolation::Truncated { slots } => write!(
                f,
                "RX packet chain of {slots} slot(s) continues past the published responses"
            ),
            RxViolation::BadExtraType { type_ } => {
                write!(f, "RX extra-info slot of type {type_}")
            }
            RxViolation::DuplicateExtra { type_ } => {
                write!(f, "RX packet with two extra-info slots of type {type_}")
            }
            RxViolation::BadGso { size, type_ } => write!(
                f,
                "RX GSO extra with size {size} and type {type_} (not negotiated, or invalid)"
            ),
            RxViolation::BadHeadroom { got, expected } => write!(
                f,
                "RX XDP extra with headroom {got}, the frontend asked for {expected}"
            ),
            RxViolation::MissingHeadroom { expected } => write!(
                f,
                "RX packet without the XDP extra though a headroom of {expected} was negotiated"
            ),
            RxViolation::UnexpectedMultiSlot => write!(
                f,
                "RX packet over several slots though scatter-gather was not negotiated"
            ),
        }?;
        f.write_str("; the device is broken, reconnect it")
    }
}

impl core::error::Error for RxViolation {}

/// Why a buffer could not be posted: the driver's bookkeeping is wrong
/// (not the backend's fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxPostError {
    /// The slot of that ring index still holds a posted buffer.
    SlotBusy {
        /// The ring index.
        idx: RingIdx,
    },
}

impl fmt::Display for RxPostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RxPostError::SlotBusy { idx } => write!(
                f,
                "ring index {idx} still has a posted buffer; post at the ring's private producer index, at most ring-size requests ahead of the consumer"
            ),
        }
    }
}

/// A refused post and the buffer it carried.
#[derive(Debug)]
pub struct RxPostRejected<B> {
    /// Why.
    pub error: RxPostError,
    /// The buffer.
    pub buf: B,
}

/// The slab of posted receive buffers, indexed by ring slot.
pub struct RxBuffers<B> {
    mask: u32,
    slots: Vec<Option<Posted<B>>>,
    posted: u32,
}

impl<B> RxBuffers<B> {
    /// A slab for an RX ring of `ring_size` slots (a power of two from 1 to
    /// 32768; a one-page netif RX ring has 256).
    pub fn new(ring_size: u32) -> Option<Self> {
        if !ring_size.is_power_of_two() || ring_size > 32768 {
            return None;
        }
        let mut slots = Vec::with_capacity(ring_size as usize);
        slots.resize_with(ring_size as usize, || None);
        Some(Self {
            mask: ring_size - 1,
            slots,
            posted: 0,
        })
    }

    /// The ring size.
    pub fn ring_size(&self) -> u32 {
        self.mask + 1
    }

    /// Buffers posted and not yet answered.
    pub fn posted(&self) -> u32 {
        self.posted
    }

    /// The id of the request posted at ring index `idx`.
    pub fn id_of(&self, idx: RingIdx) -> u16 {
        (idx & self.mask) as u16
    }

    /// Records `buf` (granted as `gref`) as posted at ring index `idx` (the
    /// ring's private request producer) and returns the request to write
    /// there.
    pub fn post(
        &mut self,
        idx: RingIdx,
        gref: GrantRefNum,
        buf: B,
    ) -> Result<NetifRxRequest, RxPostRejected<B>> {
        let slot = &mut self.slots[(idx & self.mask) as usize];
        if slot.is_some() {
            return Err(RxPostRejected {
                error: RxPostError::SlotBusy { idx },
                buf,
            });
        }
        *slot = Some(Posted { gref, buf });
        self.posted += 1;
        Ok(NetifRxRequest {
            id: (idx & self.mask) as u16,
            pad: 0,
            gref,
        })
    }

    /// Takes every posted buffer out (teardown: the backend is gone or the
    /// device is broken). Their grants must still be ended.
    pub fn drain(&mut self) -> Vec<Posted<B>> {
        self.posted = 0;
        self.slots.iter_mut().filter_map(Option::take).collect()
    }

    /// The buffer posted at ring index `idx`, if one is.
    pub fn posted_at(&self, idx: RingIdx) -> Option<&B> {
        self.slots[(idx & self.mask) as usize]
            .as_ref()
            .map(|p| &p.buf)
    }

    fn is_posted(&self, idx: RingIdx) -> bool {
        self.slots[(idx & self.mask) as usize].is_some()
    }

    fn take(&mut self, idx: RingIdx) -> Option<Posted<B>> {
        let p = self.slots[(idx & self.mask) as usize].take();
        if p.is_some() {
            self.posted -= 1;
        }
        p
    }

    /// Parses the packet starting at ring index `cons`, given `avail`
    /// published responses from there (validated against the ring), reading
    /// each slot once with `read`. `Ok(None)` when `avail` is 0. On success
    /// the packet's buffers leave the slab; on a violation nothing changes
    /// and the device must be marked broken.
    pub fn take_packet(
        &mut self,
        cons: RingIdx,
        avail: u32,
        cfg: &RxConfig,
        mut read: impl FnMut(RingIdx) -> RxSlotBytes,
    ) -> Result<Option<RxPacket<B>>, RxViolation> {
        if avail == 0 {
            return Ok(None);
        }
        let first = read(cons);
        self.take_packet_from(cons, avail, cfg, first, read)
            .map(Some)
    }

    /// [`Self::take_packet`], with a short way for the common packet: a
    /// frame in one data slot with no extra-info slot and no headroom
    /// negotiated comes back as [`RxNext::Single`], without the lists a
    /// packet of many slots needs; any other packet (and any violation) is
    /// parsed exactly as [`Self::take_packet`] parses it, from the first
    /// slot already read. Each slot is still read once, and the outcome is
    /// the same as [`Self::take_packet`]'s for every input (the single frame
    /// being the packet whose only fragment is `frag`).
    #[inline]
    pub fn take_next(
        &mut self,
        cons: RingIdx,
        avail: u32,
        cfg: &RxConfig,
        mut read: impl FnMut(RingIdx) -> RxSlotBytes,
    ) -> Result<Option<RxNext<B>>, RxViolation> {
        if avail == 0 {
            return Ok(None);
        }
        let bytes = read(cons);
        let first = bytes.response();
        if first.flags & (NETRXF_EXTRA_INFO | NETRXF_MORE_DATA) == 0
            && cfg.headroom == 0
            && first.status >= ETH_HLEN as i16
        {
            self.check_data_slot(cons, &first)?;
            if let Ok(Some((offset, len))) = data_range(&first, 0) {
                if let Some(posted) = self.take(cons) {
                    return Ok(Some(RxNext::Single {
                        frag: RxFrag {
                            posted,
                            offset,
                            len,
                        },
                        csum_blank: first.flags & NETRXF_CSUM_BLANK != 0,
                        data_validated: first.flags & NETRXF_DATA_VALIDATED != 0,
                    }));
                }
            }
        }
        self.take_packet_from(cons, avail, cfg, bytes, read)
            .map(|p| Some(RxNext::Packet(p)))
    }

    /// The body of [`Self::take_packet`]: the packet whose first slot, at
    /// `cons`, was read as `first_bytes` (`avail` is at least 1).
    fn take_packet_from(
        &mut self,
        cons: RingIdx,
        avail: u32,
        cfg: &RxConfig,
        first_bytes: RxSlotBytes,
        mut read: impl FnMut(RingIdx) -> RxSlotBytes,
    ) -> Result<RxPacket<B>, RxViolation> {
        let mut n: u32 = 1;
        let mut next = |n: &mut u32| -> Result<(RingIdx, RxSlotBytes), RxViolation> {
            if *n >= avail {
                return Err(RxViolation::Truncated { slots: *n });
            }
            let idx = cons.wrapping_add(*n);
            *n += 1;
            Ok((idx, read(idx)))
        };

        // The first data response.
        let first_idx = cons;
        let first = first_bytes.response();
        self.check_data_slot(first_idx, &first)?;

        // Its extras.
        let mut gso = None;
        let mut hash = None;
        let mut xdp = None;
        let mut seen = [false; 8];
        if first.flags & NETRXF_EXTRA_INFO != 0 {
            loop {
                let (idx, bytes) = next(&mut n)?;
                if !self.is_posted(idx) {
                    return Err(RxViolation::NotPosted { idx });
                }
                let e: NetifExtraInfo = bytes.extra();
                let ty = e.type_;
                match ty {
                    XEN_NETIF_EXTRA_TYPE_GSO
                    | XEN_NETIF_EXTRA_TYPE_HASH
                    | XEN_NETIF_EXTRA_TYPE_XDP => {}
                    _ => return Err(RxViolation::BadExtraType { type_: ty }),
                }
                if core::mem::replace(&mut seen[usize::from(ty)], true) {
                    return Err(RxViolation::DuplicateExtra { type_: ty });
                }
                match ty {
                    XEN_NETIF_EXTRA_TYPE_GSO => {
                        let g = e.gso();
                        let kind = GsoKind::from_wire(g.type_);
                        let allowed = match kind {
                            Some(GsoKind::TcpV4) => cfg.gso_tcpv4,
                            Some(GsoKind::TcpV6) => cfg.gso_tcpv6,
                            None => false,
                        };
                        match kind {
                            Some(kind) if allowed && g.size != 0 => {
                                gso = Some(Gso { kind, mss: g.size })
                            }
                            _ => {
                                return Err(RxViolation::BadGso {
                                    size: g.size,
                                    type_: g.type_,
                                })
                            }
                        }
                    }
                    XEN_NETIF_EXTRA_TYPE_HASH => {
                        let h = e.hash();
                        hash = Some(RxHash {
                            kind: h.type_,
                            algorithm: h.algorithm,
                            value: u32::from_le_bytes(h.value),
                        });
                    }
                    _ => {
                        let got = e.xdp().headroom;
                        if cfg.headroom == 0 || got != cfg.headroom {
                            return Err(RxViolation::BadHeadroom {
                                got,
                                expected: cfg.headroom,
                            });
                        }
                        xdp = Some(got);
                    }
                }
                if e.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
                    break;
                }
            }
        }
        if cfg.headroom != 0 && xdp.is_none() {
            return Err(RxViolation::MissingHeadroom {
                expected: cfg.headroom,
            });
        }
        let headroom = xdp.unwrap_or(0);

        // The data responses: validate the whole chain before taking any
        // buffer.
        let max = XEN_NETIF_NR_SLOTS_MIN + usize::from(first.status <= RX_COPY_THRESHOLD);
        let mut data: InlineVec<(RingIdx, u16, u16), MAX_RX_DATA_SLOTS> = InlineVec::new();
        let mut drop_status = None;
        let mut cur_idx = first_idx;
        let mut cur = first;
        loop {
            match data_range(&cur, headroom) {
                Err(()) => {
                    return Err(RxViolation::BadRange {
                        idx: cur_idx,
                        offset: cur.offset,
                        status: cur.status,
                    })
                }
                Ok(None) => {
                    drop_status.get_or_insert(cur.status);
                    let _ = data.push((cur_idx, 0, 0));
                }
                Ok(Some((off, len))) => {
                    let _ = data.push((cur_idx, off, len));
                }
            }
            if cur.flags & NETRXF_MORE_DATA == 0 {
                break;
            }
            if !cfg.sg {
                return Err(RxViolation::UnexpectedMultiSlot);
            }
            if data.len() >= max {
                return Err(RxViolation::TooManySlots { max });
            }
            let (idx, bytes) = next(&mut n)?;
            cur_idx = idx;
            cur = bytes.response();
            self.check_data_slot(idx, &cur)?;
        }

        // The chain is valid: take the buffers.
        let mut spare = InlineVec::new();
        let mut frags = InlineVec::new();
        let mut len = 0usize;
        for i in 0..n {
            let idx = cons.wrapping_add(i);
            let Some(p) = self.take(idx) else {
                // Checked above for every slot of the chain.
                return Err(RxViolation::NotPosted { idx });
            };
            match data.iter().find(|d| d.0 == idx) {
                Some(&(_, offset, flen)) if drop_status.is_none() => {
                    len += usize::from(flen);
                    let _ = frags.push(RxFrag {
                        posted: p,
                        offset,
                        len: flen,
                    });
                }
                _ => {
                    let _ = spare.push(p);
                }
            }
        }
        let kind = if let Some(status) = drop_status {
            RxKind::Dropped(RxDrop::BackendStatus { status })
        } else if len < ETH_HLEN {
            for f in frags.drain() {
                let _ = spare.push(f.posted);
            }
            RxKind::Dropped(RxDrop::Runt { len })
        } else {
            RxKind::Frame(RxFrame {
                frags,
                len,
                csum_blank: first.flags & NETRXF_CSUM_BLANK != 0,
                data_validated: first.flags & NETRXF_DATA_VALIDATED != 0,
                gso,
                hash,
            })
        };
        Ok(RxPacket {
            slots: n,
            kind,
            spare,
        })
    }

    fn check_data_slot(&self, idx: RingIdx, rsp: &NetifRxResponse) -> Result<(), RxViolation> {
        if !self.is_posted(idx) {
            return Err(RxViolation::NotPosted { idx });
        }
        let expected = self.id_of(idx);
        if rsp.id != expected {
            return Err(RxViolation::IdMismatch {
                idx,
                expected,
                got: rsp.id,
            });
        }
        Ok(())
    }
}

/// The data of one response: `Ok(Some((offset, len)))`, `Ok(None)` for a
/// negative status, `Err` for a range outside the page.
fn data_range(rsp: &NetifRxResponse, headroom: u16) -> Result<Option<(u16, u16)>, ()> {
    if rsp.status < 0 {
        return Ok(None);
    }
    let status = rsp.status as u16 as usize;
    if headroom == 0 {
        let end = usize::from(rsp.offset) + status;
        if end > PAGE_SIZE {
            return Err(());
        }
        Ok(Some((rsp.offset, status as u16)))
    } else {
        let h = usize::from(headroom);
        if rsp.offset != 0 || status < h || status > PAGE_SIZE {
            return Err(());
        }
        Ok(Some((headroom, (status - h) as u16)))
    }
}

/// How many receive buffers to keep posted.
///
/// Linux's netback queues a packet only once enough requests are posted for
/// it (one per 4 KiB of data plus one per extra) and declares the frontend
/// stalled after 60 s without; posting only a few buffers stalls large
/// packets for good (iPXE's experience). So: keep the ring full, refill in
/// batches, and never let the posted count fall below what a maximal packet
/// takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxRefill {
    target: u32,
    min: u32,
    batch: u32,
}

impl RxRefill {
    /// The policy for an RX ring of `ring_size` slots under `cfg`.
    pub fn new(ring_size: u32, cfg: &RxConfig) -> Self {
        let per_slot = PAGE_SIZE - usize::from(cfg.headroom.min(PAGE_SIZE as u16 - 1));
        let data_slots = if cfg.sg {
            MAX_RX_FRAME.div_ceil(per_slot)
        } else {
            1
        };
        let extras = 1 // a hash extra can come with any packet
            + usize::from(cfg.gso_tcpv4 || cfg.gso_tcpv6)
            + usize::from(cfg.headroom > 0);
        let min = (data_slots + extras) as u32;
        Self {
            target: ring_size,
            min: min.min(ring_size),
            batch: (ring_size / 8).max(1),
        }
    }

    /// Posted buffers a maximal packet needs; fewer can stall the backend.
    pub fn min_posted(&self) -> u32 {
        self.min
    }

    /// Posted buffers aimed for: the whole ring.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// How many buffers to post now, with `outstanding` requests posted and
    /// unanswered (`req_prod_pvt - rsp_cons`): none while the deficit is
    /// below a batch (an eighth of the ring) and the minimum is met, else
    /// enough to fill the ring.
    pub fn to_post(&self, outstanding: u32) -> u32 {
        let deficit = self.target.saturating_sub(outstanding);
        if outstanding < self.min || deficit >= self.batch {
            deficit
        } else {
            0
        }
    }
}

/// The backend moved its producer index in a way the protocol forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProdViolation {
    /// Behind the last value seen.
    Backwards {
        /// The last value seen.
        last: RingIdx,
        /// The new value.
        new: RingIdx,
    },
    /// More responses than requests outstanding.
    TooFar {
        /// The new value.
        new: RingIdx,
        /// The consumer index.
        cons: RingIdx,
        /// Requests outstanding from `cons`.
        limit: u32,
    },
}

impl fmt::Display for ProdViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProdViolation::Backwards { last, new } => write!(
                f,
                "backend fault: response producer index went backwards from {last} to {new}; the device is broken, reconnect it"
            ),
            ProdViolation::TooFar { new, cons, limit } => write!(
                f,
                "backend fault: response producer index {new} is more than the {limit} outstanding request(s) past the consumer index {cons}; the device is broken, reconnect it"
            ),
        }
    }
}

impl core::error::Error for ProdViolation {}

/// Checks each new response producer index against the last one seen:
/// indices are free-running 32-bit counters, compared modulo 2^32.
///
/// With `grant_tables`' `FrontRing`, the value to observe is
/// `rsp_cons() + unconsumed_responses()?` with `limit` the requests
/// published and unanswered; the ring itself refuses a producer index past
/// `limit`, this adds the check Linux's netfront makes that it never moves
/// back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProdTracker {
    last: RingIdx,
}

impl ProdTracker {
    /// Starting from `start` (the consumer index when the ring was set up).
    pub fn new(start: RingIdx) -> Self {
        Self { last: start }
    }

    /// The last accepted value.
    pub fn last(&self) -> RingIdx {
        self.last
    }

    /// Accepts `new` if it is not behind the last value and at most `limit`
    /// (the requests outstanding) past `cons`; returns the responses
    /// available from `cons`.
    pub fn observe(
        &mut self,
        new: RingIdx,
        cons: RingIdx,
        limit: u32,
    ) -> Result<u32, ProdViolation> {
        if (new.wrapping_sub(self.last) as i32) < 0 {
            return Err(ProdViolation::Backwards {
                last: self.last,
                new,
            });
        }
        let avail = new.wrapping_sub(cons);
        if avail > limit {
            return Err(ProdViolation::TooFar { new, cons, limit });
        }
        self.last = new;
        Ok(avail)
    }
}
