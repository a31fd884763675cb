//! Transmit: turning a frame into ring slots, and checking the backend's
//! answers.
//!
//! Two steps, both pure:
//! - [`plan_tx`] turns a frame, given as buffer pieces in granted pages,
//!   into a [`TxPlan`]: the data split so that no slot crosses a 4 KiB page,
//!   at most [`XEN_NETIF_NR_SLOTS_MIN`] request slots, the first slot holding
//!   at least an Ethernet header, the checksum flags and a GSO extra as asked.
//!   Every rule Linux's netback enforces on a packet is checked here, so a
//!   plan never makes netback disable the interface.
//! - [`TxQueue`] gives each request slot an id below the ring size, tracks
//!   the packets in flight, and validates each [`NetifTxResponse`]: the id
//!   below the ring size, in flight (published, not yet answered), the
//!   status known. A violation is a [`TxViolation`]: the driver marks the
//!   device broken.
//!
//! Netback answers every request slot with one response carrying the slot's
//! id (in any order across packets) and every extra-info slot with a
//! [`NETIF_RSP_NULL`] response whose id is meaningless. A packet completes
//! when all its request slots are answered.

use alloc::vec::Vec;
use core::fmt;

use crate::abi::{
    ExtraGso, GrantRefNum, NetifExtraInfo, NetifTxRequest, NetifTxResponse, TxSlotBytes, ETH_HLEN,
    NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETTXF_CSUM_BLANK,
    NETTXF_DATA_VALIDATED, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, PAGE_SIZE,
    XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6, XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
};
use crate::features::Negotiated;
use crate::inline::InlineVec;

/// Most request slots in one packet.
pub const MAX_TX_REQUESTS: usize = XEN_NETIF_NR_SLOTS_MIN;
/// Most slots (requests and extras) one packet takes on the ring.
pub const MAX_TX_SLOTS: usize = MAX_TX_REQUESTS + 1;

/// A piece of a frame: `len` bytes starting `offset` bytes into a buffer
/// made of the pages `grefs` grant, in order. A piece that crosses a page
/// boundary needs the grant of every page it touches; such a piece is split
/// into one slot per page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxPiece<'a> {
    /// Grant references of the buffer's consecutive pages.
    pub grefs: &'a [GrantRefNum],
    /// Offset of the piece from the start of the first page.
    pub offset: usize,
    /// Length of the piece in bytes (empty pieces are skipped).
    pub len: usize,
}

/// The checksum state of a frame being sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TxChecksum {
    /// The frame carries complete checksums (no flag).
    #[default]
    Complete,
    /// The frame's checksums are known good (`data_validated`).
    Validated,
    /// The TCP or UDP checksum field holds only the pseudo-header sum; the
    /// backend completes it (`csum_blank | data_validated`).
    Partial,
}

/// The protocol of a GSO frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4.
    TcpV4,
    /// TCP over IPv6.
    TcpV6,
}

impl GsoKind {
    /// The wire value (`XEN_NETIF_GSO_TYPE_*`).
    pub fn wire(self) -> u8 {
        match self {
            GsoKind::TcpV4 => XEN_NETIF_GSO_TYPE_TCPV4,
            GsoKind::TcpV6 => XEN_NETIF_GSO_TYPE_TCPV6,
        }
    }

    /// From the wire value.
    pub fn from_wire(v: u8) -> Option<Self> {
        match v {
            XEN_NETIF_GSO_TYPE_TCPV4 => Some(GsoKind::TcpV4),
            XEN_NETIF_GSO_TYPE_TCPV6 => Some(GsoKind::TcpV6),
            _ => None,
        }
    }
}

/// Segmentation offload: the backend cuts the frame into segments of at
/// most `mss` payload bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    /// The protocol.
    pub kind: GsoKind,
    /// Payload bytes per segment (the TCP MSS); not 0.
    pub mss: u16,
}

/// What the application asks of the backend for one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOffload {
    /// Checksum state.
    pub checksum: TxChecksum,
    /// Segmentation, if any (needs [`TxChecksum::Partial`]).
    pub gso: Option<Gso>,
}

/// What the connection allows on TX (from [`Negotiated`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxCaps {
    /// Frames over several slots.
    pub sg: bool,
    /// Checksum-blank frames (IPv4, or IPv6 when the backend offers
    /// `feature-ipv6-csum-offload`; the caller marks only frames whose
    /// protocol the connection allows).
    pub partial_csum: bool,
    /// TCPv4 GSO.
    pub gso_tcpv4: bool,
    /// TCPv6 GSO.
    pub gso_tcpv6: bool,
}

impl TxCaps {
    /// The TX capabilities of a negotiated connection.
    pub fn from_negotiated(n: &Negotiated) -> Self {
        Self {
            sg: n.tx_sg,
            partial_csum: n.tx_csum_ipv4 || n.tx_csum_ipv6,
            gso_tcpv4: n.tx_gso_tcpv4,
            gso_tcpv6: n.tx_gso_tcpv6,
        }
    }
}

/// Why a frame cannot be sent as given. None of these is the backend's
/// fault; the frame is refused before anything reaches the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxBuildError {
    /// The frame is shorter than an Ethernet header.
    TooShort {
        /// Its length.
        len: usize,
    },
    /// The frame is longer than the wire format allows (65535 bytes).
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Piece `piece` runs past the last page it has a grant for: its buffer
    /// is not contiguous across the page boundary it crosses.
    PieceCrossesPage {
        /// Index of the piece.
        piece: usize,
        /// Pages the piece touches (counted from its first page).
        pages_needed: usize,
        /// Grants given for it.
        grefs: usize,
    },
    /// The frame needs more than 18 request slots.
    TooManySlots {
        /// Slots it would need.
        needed: usize,
    },
    /// The frame needs several slots but scatter-gather was not negotiated.
    NeedsScatterGather {
        /// Slots it would need.
        needed: usize,
    },
    /// The first slot holds fewer bytes than an Ethernet header (netback
    /// answers such a packet with an error).
    FirstSlotShort {
        /// Bytes in the first slot.
        len: usize,
    },
    /// Checksum-blank frames were not negotiated.
    PartialChecksumNotNegotiated,
    /// GSO of this kind was not negotiated.
    GsoNotNegotiated {
        /// The kind asked for.
        kind: GsoKind,
    },
    /// GSO with an MSS of 0.
    GsoZeroMss,
    /// GSO without [`TxChecksum::Partial`] (a segmented frame's checksums are
    /// computed per segment by the backend).
    GsoNeedsPartialChecksum,
}

impl fmt::Display for TxBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxBuildError::TooShort { len } => write!(
                f,
                "frame of {len} bytes is shorter than an Ethernet header (14); send whole Ethernet frames"
            ),
            TxBuildError::TooLarge { len } => write!(
                f,
                "frame of {len} bytes is larger than the netif wire format allows (65535); send smaller frames or use GSO with a smaller total"
            ),
            TxBuildError::PieceCrossesPage { piece, pages_needed, grefs } => write!(
                f,
                "piece {piece} spans {pages_needed} page(s) but has {grefs} grant(s): a slot cannot cross a page, so give the grant of every page a piece touches, or split it at the page boundary"
            ),
            TxBuildError::TooManySlots { needed } => write!(
                f,
                "frame needs {needed} slots, more than the 18 a packet may use; linearize it into fewer, page-aligned buffers"
            ),
            TxBuildError::NeedsScatterGather { needed } => write!(
                f,
                "frame needs {needed} slots but scatter-gather is off for this connection; put the frame in one buffer within one page"
            ),
            TxBuildError::FirstSlotShort { len } => write!(
                f,
                "the first slot holds {len} bytes, less than an Ethernet header (14); start the frame with its whole header in one page"
            ),
            TxBuildError::PartialChecksumNotNegotiated => write!(
                f,
                "checksum-blank frames are off for this connection; compute checksums before sending"
            ),
            TxBuildError::GsoNotNegotiated { kind } => write!(
                f,
                "{kind:?} segmentation offload is off for this connection; segment the data before sending"
            ),
            TxBuildError::GsoZeroMss => write!(f, "GSO with an MSS of 0; give the path MSS"),
            TxBuildError::GsoNeedsPartialChecksum => write!(
                f,
                "GSO frames must have a partial checksum (TxChecksum::Partial)"
            ),
        }
    }
}

impl core::error::Error for TxBuildError {}

/// One request slot's data: a range within one granted page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxChunk {
    /// The page's grant.
    pub gref: GrantRefNum,
    /// Offset in the page.
    pub offset: u16,
    /// Bytes; `offset + len <= 4096`.
    pub len: u16,
}

/// A frame laid out in slots, ready for [`TxQueue::submit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxPlan {
    chunks: InlineVec<TxChunk, MAX_TX_REQUESTS>,
    total: u16,
    first_flags: u16,
    extra: Option<NetifExtraInfo>,
}

impl TxPlan {
    /// The data chunks, one per request slot, in frame order.
    pub fn chunks(&self) -> impl Iterator<Item = &TxChunk> + '_ {
        self.chunks.iter()
    }

    /// Number of request slots.
    pub fn requests(&self) -> usize {
        self.chunks.len()
    }

    /// Number of ring slots (requests and extras).
    pub fn slots(&self) -> usize {
        self.chunks.len() + usize::from(self.extra.is_some())
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        usize::from(self.total)
    }

    /// Always false: a plan holds at least an Ethernet header.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// Lays a frame out in slots (see the module docs for the rules).
pub fn plan_tx(
    pieces: &[TxPiece<'_>],
    offload: &TxOffload,
    caps: &TxCaps,
) -> Result<TxPlan, TxBuildError> {
    let mut total: usize = 0;
    for p in pieces {
        total = total.saturating_add(p.len);
    }
    if total < ETH_HLEN {
        return Err(TxBuildError::TooShort { len: total });
    }
    if total > XEN_NETIF_MAX_TX_SIZE {
        return Err(TxBuildError::TooLarge { len: total });
    }

    let mut chunks = InlineVec::<TxChunk, MAX_TX_REQUESTS>::new();
    let mut needed = 0usize;
    for (i, p) in pieces.iter().enumerate() {
        if p.len == 0 {
            continue;
        }
        // `total` fits in 16 bits, so `p.len` does; the offset is the
        // caller's and may be anything.
        let end = p.offset.checked_add(p.len);
        let pages_needed =
            end.map_or(usize::MAX, |e| (e - 1) / PAGE_SIZE + 1) - p.offset / PAGE_SIZE;
        let last_page = end.map(|e| (e - 1) / PAGE_SIZE);
        if last_page.is_none_or(|last| last >= p.grefs.len()) {
            return Err(TxBuildError::PieceCrossesPage {
                piece: i,
                pages_needed,
                grefs: p.grefs.len().saturating_sub(p.offset / PAGE_SIZE),
            });
        }
        let mut at = p.offset;
        let mut left = p.len;
        while left > 0 {
            let page = at / PAGE_SIZE;
            let in_page = at % PAGE_SIZE;
            let n = left.min(PAGE_SIZE - in_page);
            needed += 1;
            // Past 18 the frame is refused; keep counting for the message.
            let _ = chunks.push(TxChunk {
                gref: p.grefs[page],
                offset: in_page as u16,
                len: n as u16,
            });
            at += n;
            left -= n;
        }
    }
    if needed > MAX_TX_REQUESTS {
        return Err(TxBuildError::TooManySlots { needed });
    }
    if needed > 1 && !caps.sg {
        return Err(TxBuildError::NeedsScatterGather { needed });
    }
    let first_len = chunks.get(0).map_or(0, |c| usize::from(c.len));
    if first_len < ETH_HLEN {
        return Err(TxBuildError::FirstSlotShort { len: first_len });
    }

    let mut first_flags = match offload.checksum {
        TxChecksum::Complete => 0,
        TxChecksum::Validated => NETTXF_DATA_VALIDATED,
        TxChecksum::Partial => {
            if !caps.partial_csum {
                return Err(TxBuildError::PartialChecksumNotNegotiated);
            }
            NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED
        }
    };
    let extra = match offload.gso {
        None => None,
        Some(gso) => {
            let allowed = match gso.kind {
                GsoKind::TcpV4 => caps.gso_tcpv4,
                GsoKind::TcpV6 => caps.gso_tcpv6,
            };
            if !allowed {
                return Err(TxBuildError::GsoNotNegotiated { kind: gso.kind });
            }
            if gso.mss == 0 {
                return Err(TxBuildError::GsoZeroMss);
            }
            if offload.checksum != TxChecksum::Partial {
                return Err(TxBuildError::GsoNeedsPartialChecksum);
            }
            first_flags |= NETTXF_EXTRA_INFO;
            Some(NetifExtraInfo::new_gso(
                0,
                ExtraGso {
                    size: gso.mss,
                    type_: gso.kind.wire(),
                    pad: 0,
                    features: 0,
                },
            ))
        }
    };
    Ok(TxPlan {
        chunks,
        total: total as u16,
        first_flags,
        extra,
    })
}

/// [`plan_tx`]'s plan for the common frame, without building one: a single
/// piece of `len` bytes at `offset` in the page granted as `gref`, with no
/// GSO. Returns the request's data and its flags when the frame is valid
/// (`plan_tx` would give a plan of this one chunk, these flags and no
/// extra); `None` for anything else (GSO, a piece crossing its page, a
/// runt, a partial checksum the connection did not negotiate), which
/// [`plan_tx`] then lays out or refuses.
#[inline]
pub fn plan_single(
    gref: GrantRefNum,
    offset: usize,
    len: usize,
    offload: &TxOffload,
    caps: &TxCaps,
) -> Option<(TxChunk, u16)> {
    if offload.gso.is_some() || len < ETH_HLEN || offset.checked_add(len)? > PAGE_SIZE {
        return None;
    }
    let flags = match offload.checksum {
        TxChecksum::Complete => 0,
        TxChecksum::Validated => NETTXF_DATA_VALIDATED,
        TxChecksum::Partial if caps.partial_csum => NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED,
        TxChecksum::Partial => return None,
    };
    Some((
        TxChunk {
            gref,
            offset: offset as u16,
            len: len as u16,
        },
        flags,
    ))
}

/// One slot of a submitted packet, in ring order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxSlot {
    /// A request slot.
    Request(NetifTxRequest),
    /// An extra-info slot.
    Extra(NetifExtraInfo),
}

impl TxSlot {
    /// The slot's bytes as they go on the ring.
    pub fn to_bytes(&self) -> TxSlotBytes {
        match self {
            TxSlot::Request(r) => TxSlotBytes::from_request(r),
            TxSlot::Extra(e) => TxSlotBytes::from_extra(e),
        }
    }
}

/// The slots of one packet, in ring order.
pub type TxSlots = InlineVec<TxSlot, MAX_TX_SLOTS>;

/// Why [`TxQueue::submit`] refused a packet (the token comes back in
/// [`TxRejected`]). Not a fault: retry after completions free room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxSubmitError {
    /// The ring has fewer free slots than the packet needs.
    RingFull {
        /// Slots needed.
        needed: usize,
        /// Slots free.
        free: u32,
    },
    /// Fewer free ids than request slots (every id is in flight).
    NoIds {
        /// Ids needed.
        needed: usize,
        /// Ids free.
        free: usize,
    },
}

impl fmt::Display for TxSubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxSubmitError::RingFull { needed, free } => write!(
                f,
                "the TX ring has {free} free slot(s), the packet needs {needed}; collect completions and retry"
            ),
            TxSubmitError::NoIds { needed, free } => write!(
                f,
                "{free} TX id(s) free, the packet needs {needed}; collect completions and retry"
            ),
        }
    }
}

/// A refused submission and the token it carried.
#[derive(Debug)]
pub struct TxRejected<T> {
    /// Why.
    pub error: TxSubmitError,
    /// The token given to [`TxQueue::submit`].
    pub token: T,
}

/// A backend answer that breaks the protocol. The device must be marked
/// broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxViolation {
    /// The response's id is not below the ring size.
    IdOutOfRange {
        /// The id.
        id: u16,
        /// The ring size.
        ring_size: u16,
    },
    /// The response answers an id that is not in flight (never used,
    /// already answered, or not yet published).
    NotInFlight {
        /// The id.
        id: u16,
    },
    /// The response's status is none of `NETIF_RSP_*`.
    UnknownStatus {
        /// The id.
        id: u16,
        /// The status.
        status: i16,
    },
    /// A `NETIF_RSP_NULL` response when no extra-info slot is unanswered.
    UnexpectedNull,
}

impl fmt::Display for TxViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxViolation::IdOutOfRange { id, ring_size } => write!(
                f,
                "backend fault: TX response id {id} is not below the ring size {ring_size}; the device is broken, reconnect it"
            ),
            TxViolation::NotInFlight { id } => write!(
                f,
                "backend fault: TX response for id {id}, which is not in flight; the device is broken, reconnect it"
            ),
            TxViolation::UnknownStatus { id, status } => write!(
                f,
                "backend fault: TX response for id {id} has unknown status {status}; the device is broken, reconnect it"
            ),
            TxViolation::UnexpectedNull => write!(
                f,
                "backend fault: a NULL TX response with no extra-info slot unanswered; the device is broken, reconnect it"
            ),
        }
    }
}

impl core::error::Error for TxViolation {}

/// How the backend ended a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// Sent (`NETIF_RSP_OKAY` for every slot).
    Okay,
    /// Dropped by the backend (`NETIF_RSP_DROPPED`).
    Dropped,
    /// Refused as malformed (`NETIF_RSP_ERROR`).
    Error,
}

/// A packet whose request slots have all been answered.
#[derive(Debug, PartialEq, Eq)]
pub struct TxCompletion<T> {
    /// The token given to [`TxQueue::submit`]: the buffers can be reused.
    pub token: T,
    /// The packet's outcome (the worst status of its slots).
    pub status: TxStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdState {
    Free,
    /// Written to the ring, not yet published.
    Queued {
        packet: u16,
    },
    /// Published; a response may come.
    InFlight {
        packet: u16,
    },
}

struct PacketState<T> {
    token: T,
    /// Request slots not yet answered.
    remaining: u8,
    status: TxStatus,
}

/// The TX side's in-flight state: ids and packets.
///
/// Each request slot takes an id below the ring size; an id is reused only
/// after its response. Ids of a submitted packet are `Queued` until
/// [`Self::mark_published`] (call it right before pushing the ring's
/// producer index), so a response for a slot the backend cannot have seen
/// yet is a violation, as in Linux's netfront.
pub struct TxQueue<T> {
    ring_size: u16,
    ids: Vec<IdState>,
    free_ids: Vec<u16>,
    packets: Vec<Option<PacketState<T>>>,
    free_packets: Vec<u16>,
    queued: Vec<u16>,
    queued_extras: u32,
    unanswered_extras: u32,
    live_packets: usize,
}

impl<T> TxQueue<T> {
    /// State for a TX ring of `ring_size` slots (1 to 32768; a one-page
    /// netif TX ring has 256).
    pub fn new(ring_size: u32) -> Option<Self> {
        if !(1..=32768).contains(&ring_size) {
            return None;
        }
        let n = ring_size as u16;
        let mut packets = Vec::with_capacity(usize::from(n));
        packets.resize_with(usize::from(n), || None);
        Some(Self {
            ring_size: n,
            ids: alloc::vec![IdState::Free; usize::from(n)],
            free_ids: (0..n).rev().collect(),
            packets,
            free_packets: (0..n).rev().collect(),
            queued: Vec::with_capacity(usize::from(n)),
            queued_extras: 0,
            unanswered_extras: 0,
            live_packets: 0,
        })
    }

    /// The ring size ids are checked against.
    pub fn ring_size(&self) -> u16 {
        self.ring_size
    }

    /// Packets submitted and not completed (queued or in flight).
    pub fn in_flight(&self) -> usize {
        self.live_packets
    }

    /// Ids free for new request slots.
    pub fn free_ids(&self) -> usize {
        self.free_ids.len()
    }

    /// Assigns ids to `plan`'s request slots and returns the packet's slots
    /// in ring order, for the driver to write at consecutive ring indices.
    /// `free_slots` is the ring's free request slot count. Nothing changes
    /// on refusal.
    pub fn submit(
        &mut self,
        plan: &TxPlan,
        token: T,
        free_slots: u32,
    ) -> Result<TxSlots, TxRejected<T>> {
        let needed = plan.slots();
        if needed > free_slots as usize {
            return Err(TxRejected {
                error: TxSubmitError::RingFull {
                    needed,
                    free: free_slots,
                },
                token,
            });
        }
        let requests = plan.requests();
        if requests > self.free_ids.len() || self.free_packets.is_empty() {
            return Err(TxRejected {
                error: TxSubmitError::NoIds {
                    needed: requests,
                    free: self.free_ids.len(),
                },
                token,
            });
        }
        // Checked above: both pops succeed.
        let Some(packet) = self.free_packets.pop() else {
            return Err(TxRejected {
                error: TxSubmitError::NoIds {
                    needed: requests,
                    free: 0,
                },
                token,
            });
        };
        let mut slots = TxSlots::new();
        for (i, c) in plan.chunks().enumerate() {
            let Some(id) = self.free_ids.pop() else {
                break;
            };
            self.ids[usize::from(id)] = IdState::Queued { packet };
            self.queued.push(id);
            let last = i + 1 == requests;
            let (flags, size) = if i == 0 {
                let more = if last { 0 } else { NETTXF_MORE_DATA };
                (plan.first_flags | more, plan.total)
            } else {
                (if last { 0 } else { NETTXF_MORE_DATA }, c.len)
            };
            let _ = slots.push(TxSlot::Request(NetifTxRequest {
                gref: c.gref,
                offset: c.offset,
                flags,
                id,
                size,
            }));
            if i == 0 {
                if let Some(extra) = plan.extra {
                    let _ = slots.push(TxSlot::Extra(extra));
                }
            }
        }
        self.packets[usize::from(packet)] = Some(PacketState {
            token,
            remaining: requests as u8,
            status: TxStatus::Okay,
        });
        self.queued_extras += u32::from(plan.extra.is_some());
        self.live_packets += 1;
        Ok(slots)
    }

    /// [`Self::submit`] for a packet of one request slot and no extra (the
    /// frame [`plan_single`] lays out: `chunk` holds all of its bytes, the
    /// first slot's flags are `flags`): the same checks and state, the one
    /// request returned instead of a list of slots.
    pub fn submit_single(
        &mut self,
        chunk: TxChunk,
        flags: u16,
        token: T,
        free_slots: u32,
    ) -> Result<NetifTxRequest, TxRejected<T>> {
        if free_slots == 0 {
            return Err(TxRejected {
                error: TxSubmitError::RingFull {
                    needed: 1,
                    free: free_slots,
                },
                token,
            });
        }
        let (Some(&packet), Some(&id)) = (self.free_packets.last(), self.free_ids.last()) else {
            return Err(TxRejected {
                error: TxSubmitError::NoIds {
                    needed: 1,
                    free: self.free_ids.len(),
                },
                token,
            });
        };
        self.free_packets.pop();
        self.free_ids.pop();
        self.ids[usize::from(id)] = IdState::Queued { packet };
        self.queued.push(id);
        self.packets[usize::from(packet)] = Some(PacketState {
            token,
            remaining: 1,
            status: TxStatus::Okay,
        });
        self.live_packets += 1;
        Ok(NetifTxRequest {
            gref: chunk.gref,
            offset: chunk.offset,
            flags,
            id,
            size: chunk.len,
        })
    }

    /// Marks every submitted slot as published: call right before pushing
    /// the producer index.
    pub fn mark_published(&mut self) {
        for id in self.queued.drain(..) {
            if let IdState::Queued { packet } = self.ids[usize::from(id)] {
                self.ids[usize::from(id)] = IdState::InFlight { packet };
            }
        }
        self.unanswered_extras += core::mem::take(&mut self.queued_extras);
    }

    /// Validates one response (copied out of the ring) and applies it.
    /// Returns the packet when this response was its last unanswered slot.
    pub fn complete(
        &mut self,
        rsp: NetifTxResponse,
    ) -> Result<Option<TxCompletion<T>>, TxViolation> {
        if rsp.status == NETIF_RSP_NULL {
            if self.unanswered_extras == 0 {
                return Err(TxViolation::UnexpectedNull);
            }
            self.unanswered_extras -= 1;
            return Ok(None);
        }
        let id = rsp.id;
        if id >= self.ring_size {
            return Err(TxViolation::IdOutOfRange {
                id,
                ring_size: self.ring_size,
            });
        }
        let status = match rsp.status {
            NETIF_RSP_OKAY => TxStatus::Okay,
            NETIF_RSP_DROPPED => TxStatus::Dropped,
            NETIF_RSP_ERROR => TxStatus::Error,
            other => return Err(TxViolation::UnknownStatus { id, status: other }),
        };
        let IdState::InFlight { packet } = self.ids[usize::from(id)] else {
            return Err(TxViolation::NotInFlight { id });
        };
        self.ids[usize::from(id)] = IdState::Free;
        self.free_ids.push(id);
        let p = usize::from(packet);
        let Some(state) = self.packets[p].as_mut() else {
            // An in-flight id always names a live packet.
            return Err(TxViolation::NotInFlight { id });
        };
        state.status = worse(state.status, status);
        state.remaining = state.remaining.saturating_sub(1);
        if state.remaining > 0 {
            return Ok(None);
        }
        let Some(done) = self.packets[p].take() else {
            return Ok(None);
        };
        self.free_packets.push(packet);
        self.live_packets -= 1;
        Ok(Some(TxCompletion {
            token: done.token,
            status: done.status,
        }))
    }

    /// Ends every packet without an answer (the connection is gone) and
    /// returns their tokens; the state is then as new.
    pub fn abort_all(&mut self) -> Vec<T> {
        let mut tokens = Vec::with_capacity(self.live_packets);
        for (i, p) in self.packets.iter_mut().enumerate() {
            if let Some(state) = p.take() {
                tokens.push(state.token);
                self.free_packets.push(i as u16);
            }
        }
        let n = self.ring_size;
        self.ids.iter_mut().for_each(|s| *s = IdState::Free);
        self.free_ids.clear();
        self.free_ids.extend((0..n).rev());
        self.free_packets.clear();
        self.free_packets.extend((0..n).rev());
        self.queued.clear();
        self.queued_extras = 0;
        self.unanswered_extras = 0;
        self.live_packets = 0;
        tokens
    }
}

fn worse(a: TxStatus, b: TxStatus) -> TxStatus {
    let rank = |s| match s {
        TxStatus::Okay => 0,
        TxStatus::Dropped => 1,
        TxStatus::Error => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}
