//! Parsing one packet off a frontend's TX ring, with Linux 6.1's netback
//! checks (`xenvif_tx_build_gops`, `xenvif_get_extras`,
//! `xenvif_count_requests`, `xenvif_set_skb_gso` in
//! `drivers/net/xen-netback/netback.c`).
//!
//! [`parse_packet`] reads the packet's slots (each exactly once, through a
//! closure over the ring) and gives a [`TxVerdict`]:
//! - [`TxVerdict::Forward`]: a packet to copy out and forward; every request
//!   slot is answered `NETIF_RSP_OKAY` once copied;
//! - [`TxVerdict::Reject`]: a packet netback drops with `NETIF_RSP_ERROR`
//!   for every request slot ([`TxReject`]: more than 18 slots, a fragment
//!   larger than what remains of the packet, a first slot shorter than an
//!   Ethernet header);
//! - [`TxVerdict::Mcast`]: a multicast filter update (answered on its own);
//! - `Err(`[`TxFatal`]`)`: a frontend error Linux treats as malicious: the
//!   vif is disabled (no more responses, no state change).
//!
//! Every extra-info slot is answered with `NETIF_RSP_NULL` right after the
//! first request's response.
//!
//! # Counting slots as Linux does
//! `xenvif_count_requests` counts the slots *after* the first: with `n`
//! of them read so far and another announced (`more_data`), it is fatal
//! when `n` reaches `fatal_skb_slots` (20 by default, never below 18) and
//! drops the packet when `n` reaches 18. So a packet of up to 19 slots in
//! all is accepted, one of 20 or 21 is answered with errors, and one that
//! announces a 22nd slot disables the vif. (Frontends never send more than
//! 18, `XEN_NETIF_NR_SLOTS_MIN`.)

use std::fmt;

use netfront::abi::{
    NetifExtraInfo, NetifTxRequest, TxSlotBytes, ETH_HLEN, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
    PAGE_SIZE, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
};
use netfront::tx::{Gso, GsoKind};

/// Slots after the first beyond which a packet is dropped with errors
/// (`XEN_NETBK_LEGACY_SLOTS_MAX`).
pub const LEGACY_SLOTS_MAX: u32 = 18;
/// Linux's default `fatal_skb_slots`.
pub const FATAL_SKB_SLOTS: u32 = 20;
/// Extra-info types a packet can carry (`XEN_NETIF_EXTRA_TYPE_MAX - 1`).
pub const EXTRA_TYPES: usize = XEN_NETIF_EXTRA_TYPE_MAX as usize - 1;

/// A frontend error that disables the vif (Linux's `xenvif_fatal_tx_err`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxFatal {
    /// The frontend published more requests than the ring holds.
    RingOverflow {
        /// What the ring said.
        detail: String,
    },
    /// A request announced an extra-info slot that is not queued.
    MissingExtra,
    /// An extra-info slot of type 0 or above the known types.
    BadExtraType {
        /// The type.
        type_: u8,
    },
    /// A packet claims more slots than the frontend queued.
    MoreSlotsThanQueued {
        /// Slots after the first that were queued.
        queued: u32,
    },
    /// A packet announces `fatal_skb_slots` or more slots after the first.
    TooManySlots {
        /// Slots after the first read so far.
        slots: u32,
        /// The threshold.
        threshold: u32,
    },
    /// A slot's data runs past its page (`offset + size > 4096`).
    CrossesPage {
        /// The slot's offset.
        offset: u16,
        /// Its size.
        size: u16,
    },
    /// A GSO extra with size 0.
    GsoSizeZero,
    /// A GSO extra of a type other than TCPv4 or TCPv6.
    BadGsoType {
        /// The type.
        type_: u8,
    },
}

impl fmt::Display for TxFatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxFatal::RingOverflow { detail } => {
                write!(f, "impossible number of TX requests: {detail}")
            }
            TxFatal::MissingExtra => write!(f, "missing extra info"),
            TxFatal::BadExtraType { type_ } => write!(f, "invalid extra type {type_}"),
            TxFatal::MoreSlotsThanQueued { queued } => write!(
                f,
                "a packet asks for more slots than the {queued} queued after its first"
            ),
            TxFatal::TooManySlots { slots, threshold } => write!(
                f,
                "malicious frontend using {slots} slots, threshold {threshold}"
            ),
            TxFatal::CrossesPage { offset, size } => {
                write!(f, "cross page boundary, offset {offset}, size {size}")
            }
            TxFatal::GsoSizeZero => write!(f, "GSO size must not be zero"),
            TxFatal::BadGsoType { type_ } => write!(f, "bad GSO type {type_}"),
        }
    }
}

/// Why a packet is answered with `NETIF_RSP_ERROR` (and dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxReject {
    /// More than [`LEGACY_SLOTS_MAX`] slots after the first.
    TooManySlots {
        /// Slots after the first.
        slots: u32,
    },
    /// A slot larger than what remains of the packet's announced size.
    FragTooLarge {
        /// The slot's size.
        size: u16,
        /// What remained.
        remaining: u16,
    },
    /// The first slot holds fewer bytes than an Ethernet header.
    FirstSlotShort {
        /// Bytes in the first slot.
        size: u16,
    },
}

impl fmt::Display for TxReject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxReject::TooManySlots { slots } => write!(
                f,
                "too many slots ({slots} after the first, limit {LEGACY_SLOTS_MAX})"
            ),
            TxReject::FragTooLarge { size, remaining } => write!(
                f,
                "slot size {size} larger than the remaining packet size {remaining}"
            ),
            TxReject::FirstSlotShort { size } => write!(f, "bad packet size {size}"),
        }
    }
}

/// What to do with a parsed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxVerdict {
    /// Copy the data out of [`TxPacket::requests`] and forward it.
    Forward,
    /// Answer every request with `NETIF_RSP_ERROR`.
    Reject(TxReject),
    /// A multicast filter update; answer the first request (only) with
    /// `NETIF_RSP_OKAY`, or `NETIF_RSP_ERROR` when the filter is full.
    Mcast {
        /// Add (or remove).
        add: bool,
        /// The address.
        addr: [u8; 6],
    },
}

/// The slots of one packet, as read. Reused from packet to packet (no
/// allocation once grown).
#[derive(Clone, Debug, Default)]
pub struct TxPacket {
    /// The request slots in ring order: the first, then the slots after it.
    pub requests: Vec<NetifTxRequest>,
    /// The extra-info slots by type (index `type - 1`).
    pub extras: [Option<NetifExtraInfo>; EXTRA_TYPES],
    /// Extra-info slots consumed (each answered with `NETIF_RSP_NULL`).
    pub extra_count: u32,
    /// Bytes in the first slot (its `size` less the other slots').
    pub first_size: u16,
    /// The packet's announced length (the first slot's `size`).
    pub total: u16,
}

impl TxPacket {
    /// The first request's flags (`NETTXF_*`).
    pub fn flags(&self) -> u16 {
        self.requests.first().map_or(0, |r| r.flags)
    }

    /// The GSO extra, validated by [`parse_packet`].
    pub fn gso(&self) -> Option<Gso> {
        let e = self.extras[usize::from(XEN_NETIF_EXTRA_TYPE_GSO - 1)]?;
        let g = e.gso();
        GsoKind::from_wire(g.type_).map(|kind| Gso { kind, mss: g.size })
    }

    /// Ring slots the packet took (requests and extras).
    pub fn slots(&self) -> u32 {
        self.requests.len() as u32 + self.extra_count
    }

    /// The data of each request slot: `(gref, offset, len)`, the first
    /// slot's length being [`Self::first_size`].
    pub fn chunks(&self) -> impl Iterator<Item = (u32, u16, u16)> + '_ {
        self.requests.iter().enumerate().map(|(i, r)| {
            let len = if i == 0 { self.first_size } else { r.size };
            (r.gref, r.offset, len)
        })
    }
}

/// Reads one packet. `work_to_do` is the number of requests queued from
/// the packet's first slot (the frontend's `req_prod` less the consumer
/// index, read once when the packet starts, at least 1). `next` returns the
/// next slot (consuming it); it is called at most `work_to_do` times, and
/// `None` from it counts as a slot that is not there. On return the slots
/// read are consumed; `out` describes them.
pub fn parse_packet(
    work_to_do: u32,
    fatal_skb_slots: u32,
    next: &mut dyn FnMut() -> Option<TxSlotBytes>,
    out: &mut TxPacket,
) -> Result<TxVerdict, TxFatal> {
    out.requests.clear();
    out.extras = [None; EXTRA_TYPES];
    out.extra_count = 0;
    let fatal_skb_slots = fatal_skb_slots.max(LEGACY_SLOTS_MAX);

    if work_to_do == 0 {
        return Err(TxFatal::MoreSlotsThanQueued { queued: 0 });
    }
    let first = next()
        .ok_or(TxFatal::MoreSlotsThanQueued { queued: 0 })?
        .request();
    let mut work = work_to_do - 1;
    out.requests.push(first);
    out.total = first.size;

    // xenvif_get_extras.
    if first.flags & NETTXF_EXTRA_INFO != 0 {
        loop {
            if work == 0 {
                return Err(TxFatal::MissingExtra);
            }
            let e = next().ok_or(TxFatal::MissingExtra)?.extra();
            work -= 1;
            out.extra_count += 1;
            if e.type_ == 0 || e.type_ >= XEN_NETIF_EXTRA_TYPE_MAX {
                return Err(TxFatal::BadExtraType { type_: e.type_ });
            }
            out.extras[usize::from(e.type_ - 1)] = Some(e);
            if e.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
                break;
            }
        }
    }

    for (ty, add) in [
        (XEN_NETIF_EXTRA_TYPE_MCAST_ADD, true),
        (XEN_NETIF_EXTRA_TYPE_MCAST_DEL, false),
    ] {
        if let Some(e) = out.extras[usize::from(ty - 1)] {
            out.first_size = first.size;
            return Ok(TxVerdict::Mcast {
                add,
                addr: e.mcast().addr,
            });
        }
    }

    // xenvif_count_requests.
    let mut remaining = first.size;
    let mut reject = None;
    if first.flags & NETTXF_MORE_DATA != 0 {
        let mut slots: u32 = 0;
        loop {
            if slots >= work {
                return Err(TxFatal::MoreSlotsThanQueued { queued: work });
            }
            if slots >= fatal_skb_slots {
                return Err(TxFatal::TooManySlots {
                    slots,
                    threshold: fatal_skb_slots,
                });
            }
            if reject.is_none() && slots >= LEGACY_SLOTS_MAX {
                reject = Some(TxReject::TooManySlots { slots: slots + 1 });
            }
            let s = next()
                .ok_or(TxFatal::MoreSlotsThanQueued { queued: work })?
                .request();
            if reject.is_none() && s.size > remaining {
                reject = Some(TxReject::FragTooLarge {
                    size: s.size,
                    remaining,
                });
            }
            // A 16-bit field in Linux: wraps as it does.
            remaining = remaining.wrapping_sub(s.size);
            slots += 1;
            if usize::from(s.offset) + usize::from(s.size) > PAGE_SIZE {
                return Err(TxFatal::CrossesPage {
                    offset: s.offset,
                    size: s.size,
                });
            }
            out.requests.push(s);
            if s.flags & NETTXF_MORE_DATA == 0 {
                break;
            }
        }
        if let Some(TxReject::TooManySlots { .. }) = reject {
            reject = Some(TxReject::TooManySlots { slots });
        }
    }
    out.first_size = remaining;
    if let Some(r) = reject {
        return Ok(TxVerdict::Reject(r));
    }
    if usize::from(remaining) < ETH_HLEN {
        return Ok(TxVerdict::Reject(TxReject::FirstSlotShort {
            size: remaining,
        }));
    }
    if usize::from(first.offset) + usize::from(remaining) > PAGE_SIZE {
        return Err(TxFatal::CrossesPage {
            offset: first.offset,
            size: remaining,
        });
    }
    if let Some(e) = out.extras[usize::from(XEN_NETIF_EXTRA_TYPE_GSO - 1)] {
        let g = e.gso();
        if g.size == 0 {
            return Err(TxFatal::GsoSizeZero);
        }
        if g.type_ != XEN_NETIF_GSO_TYPE_TCPV4 && g.type_ != XEN_NETIF_GSO_TYPE_TCPV6 {
            return Err(TxFatal::BadGsoType { type_: g.type_ });
        }
    }
    Ok(TxVerdict::Forward)
}
