//! The netif wire format of Xen's `public/io/netif.h`, as zerocopy types.
//!
//! Every type derives `FromBytes, IntoBytes, KnownLayout, Immutable`: any
//! bytes a backend writes are a valid value, and nothing uninitialised is
//! ever written into a shared ring. Sizes, alignments, field offsets and
//! constants are checked against Xen's own header by `tests/abi_layout.rs`.
//!
//! # Slots of two shapes
//! A netif ring slot holds one of two structures:
//! - a TX ring slot is 12 bytes (`union netif_tx_sring_entry`): a
//!   [`NetifTxRequest`] (12 bytes) or a [`NetifExtraInfo`] (8 bytes, the last
//!   4 bytes unused) on the request side, a [`NetifTxResponse`] (4 bytes) on
//!   the response side;
//! - an RX ring slot is 8 bytes: a [`NetifRxRequest`] on the request side, a
//!   [`NetifRxResponse`] or a [`NetifExtraInfo`] on the response side.
//!
//! [`TxSlotBytes`] and [`RxSlotBytes`] are those slots as raw bytes, with
//! conversions to and from each shape.
//!
//! The XDP extra ([`XEN_NETIF_EXTRA_TYPE_XDP`], [`ExtraXdp`],
//! [`XEN_NETIF_MAX_XDP_HEADROOM`]) is not in Xen 4.17's `netif.h`; it comes
//! from Linux's copy of the header (`include/xen/interface/io/netif.h`), which
//! Linux's netback and netfront speak.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub use grant_tables::abi::{GrantRefNum, RingIdx, PAGE_SIZE};

/// The number of slots a backend must accept for one packet: a frontend
/// never uses more request slots than this for a packet
/// (`XEN_NETIF_NR_SLOTS_MIN`). Extra-info slots are not counted.
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;

/// Largest packet the TX wire format can describe: the first slot's `size`
/// is 16 bits (`XEN_NETIF_MAX_TX_SIZE`).
pub const XEN_NETIF_MAX_TX_SIZE: usize = 0xFFFF;

/// Largest `xdp-headroom` Linux's netback accepts (`XEN_NETIF_MAX_XDP_HEADROOM`).
pub const XEN_NETIF_MAX_XDP_HEADROOM: u16 = 0x7FFF;

/// Length of an Ethernet header (`ETH_HLEN`).
pub const ETH_HLEN: usize = 14;

// ---- TX flags (netif_tx_request.flags) -------------------------------------

/// The protocol checksum field is blank: the backend (or the NIC) must
/// complete it (`NETTXF_csum_blank`).
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// The packet's data has been validated against its checksum
/// (`NETTXF_data_validated`).
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// The packet continues in the next request slot (`NETTXF_more_data`).
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// Extra-info slots follow this request (`NETTXF_extra_info`).
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

// ---- RX flags (netif_rx_response.flags) ------------------------------------

/// The packet's data has been validated against its checksum
/// (`NETRXF_data_validated`).
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// The protocol checksum field is blank (holds only the pseudo-header sum):
/// the frontend must complete it (`NETRXF_csum_blank`).
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// The packet continues in the next response slot (`NETRXF_more_data`).
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// Extra-info slots follow this response (`NETRXF_extra_info`).
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// Deprecated GSO prefix (`NETRXF_gso_prefix`); Linux's netback never sets it.
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

// ---- Extra info -----------------------------------------------------------

/// Never used; invalid (`XEN_NETIF_EXTRA_TYPE_NONE`).
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// GSO parameters, [`ExtraGso`] (`XEN_NETIF_EXTRA_TYPE_GSO`).
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// Add a multicast address to the backend's filter, [`ExtraMcast`]
/// (`XEN_NETIF_EXTRA_TYPE_MCAST_ADD`).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// Remove a multicast address from the backend's filter, [`ExtraMcast`]
/// (`XEN_NETIF_EXTRA_TYPE_MCAST_DEL`).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// A packet hash, [`ExtraHash`] (`XEN_NETIF_EXTRA_TYPE_HASH`).
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// The XDP headroom the backend left in front of the data, [`ExtraXdp`]
/// (`XEN_NETIF_EXTRA_TYPE_XDP`, Linux's header only).
pub const XEN_NETIF_EXTRA_TYPE_XDP: u8 = 5;
/// One past the largest extra type Linux knows (`XEN_NETIF_EXTRA_TYPE_MAX`
/// in Linux's header; Xen 4.17's header stops at 5, before XDP).
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 6;

/// Another extra-info slot follows this one (`XEN_NETIF_EXTRA_FLAG_MORE`).
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

/// No GSO (`XEN_NETIF_GSO_TYPE_NONE`).
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// TCP over IPv4 segmentation (`XEN_NETIF_GSO_TYPE_TCPV4`).
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// TCP over IPv6 segmentation (`XEN_NETIF_GSO_TYPE_TCPV6`).
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

// ---- Hash extra contents (control ring hash types, algorithms) ------------

/// Hash over the IPv4 addresses (`_XEN_NETIF_CTRL_HASH_TYPE_IPV4`).
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4: u8 = 0;
/// Hash over the IPv4 addresses and TCP ports (`_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP`).
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u8 = 1;
/// Hash over the IPv6 addresses (`_XEN_NETIF_CTRL_HASH_TYPE_IPV6`).
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6: u8 = 2;
/// Hash over the IPv6 addresses and TCP ports (`_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP`).
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u8 = 3;
/// No hash algorithm (`XEN_NETIF_CTRL_HASH_ALGORITHM_NONE`).
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_NONE: u8 = 0;
/// The Toeplitz hash (`XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ`).
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ: u8 = 1;

// ---- Response status ------------------------------------------------------

/// The packet was dropped (`NETIF_RSP_DROPPED`).
pub const NETIF_RSP_DROPPED: i16 = -2;
/// The request failed (`NETIF_RSP_ERROR`).
pub const NETIF_RSP_ERROR: i16 = -1;
/// The request succeeded (`NETIF_RSP_OKAY`).
pub const NETIF_RSP_OKAY: i16 = 0;
/// No response: the slot answered an extra-info request (`NETIF_RSP_NULL`).
pub const NETIF_RSP_NULL: i16 = 1;

// ---- Structures -----------------------------------------------------------

/// A transmit request (`struct netif_tx_request`): one slot of a packet.
///
/// In the first slot of a packet `size` is the size of the whole packet; in
/// the others it is the slot's own size.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct NetifTxRequest {
    /// Grant reference of the page holding the data.
    pub gref: GrantRefNum,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETTXF_*` flags.
    pub flags: u16,
    /// Request id, echoed in the response.
    pub id: u16,
    /// Size in bytes (see the type's docs).
    pub size: u16,
}

/// A transmit response (`struct netif_tx_response`).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct NetifTxResponse {
    /// The id of the request answered (meaningless when `status` is
    /// [`NETIF_RSP_NULL`]).
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

/// A receive request (`struct netif_rx_request`): a granted page posted for
/// the backend to copy a packet (or part of one) into.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct NetifRxRequest {
    /// Request id, echoed in the response.
    pub id: u16,
    /// Padding (written as zero).
    pub pad: u16,
    /// Grant reference of the posted page.
    pub gref: GrantRefNum,
}

/// A receive response (`struct netif_rx_response`).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct NetifRxResponse {
    /// The id of the request answered.
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*` flags.
    pub flags: u16,
    /// Negative: a `NETIF_RSP_*` error (or a grant copy error); otherwise
    /// the number of bytes (see `rx` for the XDP headroom case).
    pub status: i16,
}

/// An extra-info slot (`struct netif_extra_info`), following a request or a
/// response that has the `extra_info` flag, or another extra with
/// [`XEN_NETIF_EXTRA_FLAG_MORE`].
///
/// `u` is the C union; read it as the member `type_` names with
/// [`Self::gso`], [`Self::mcast`], [`Self::hash`] or [`Self::xdp`].
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub type_: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union `u` (`uint16_t pad[3]` is its widest member, which also
    /// gives the structure C's 2-byte alignment).
    pub u: [u16; 3],
}

/// The GSO member of the extra-info union (`u.gso`).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct ExtraGso {
    /// Maximum payload of each segment (the TCP MSS).
    pub size: u16,
    /// `XEN_NETIF_GSO_TYPE_*`.
    pub type_: u8,
    /// Padding (zero).
    pub pad: u8,
    /// `XEN_NETIF_GSO_FEAT_*` (none are defined; zero).
    pub features: u16,
}

/// The multicast member of the extra-info union (`u.mcast`).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct ExtraMcast {
    /// The Ethernet address to add or remove.
    pub addr: [u8; 6],
}

/// The hash member of the extra-info union (`u.hash`).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct ExtraHash {
    /// `_XEN_NETIF_CTRL_HASH_TYPE_*` (a bit number, not a mask).
    pub type_: u8,
    /// `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
    pub algorithm: u8,
    /// The hash value, least significant byte first.
    pub value: [u8; 4],
}

/// The XDP member of the extra-info union (`u.xdp`, Linux's header only).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct ExtraXdp {
    /// Bytes the backend left free in front of the data in every data slot.
    pub headroom: u16,
    /// Padding (zero).
    pub pad: [u16; 2],
}

impl NetifExtraInfo {
    /// The union's 6 bytes.
    pub fn union_bytes(&self) -> [u8; 6] {
        let mut out = [0u8; 6];
        out.copy_from_slice(self.u.as_bytes());
        out
    }

    fn with_union(type_: u8, flags: u8, bytes: &[u8]) -> Self {
        let mut u = [0u16; 3];
        let dst = u.as_mut_bytes();
        dst[..bytes.len()].copy_from_slice(bytes);
        Self { type_, flags, u }
    }

    /// The union read as [`ExtraGso`].
    pub fn gso(&self) -> ExtraGso {
        zerocopy::transmute!(self.u)
    }

    /// The union read as [`ExtraMcast`].
    pub fn mcast(&self) -> ExtraMcast {
        zerocopy::transmute!(self.u)
    }

    /// The union read as [`ExtraHash`].
    pub fn hash(&self) -> ExtraHash {
        zerocopy::transmute!(self.u)
    }

    /// The union read as [`ExtraXdp`].
    pub fn xdp(&self) -> ExtraXdp {
        zerocopy::transmute!(self.u)
    }

    /// A GSO extra.
    pub fn new_gso(flags: u8, gso: ExtraGso) -> Self {
        Self::with_union(XEN_NETIF_EXTRA_TYPE_GSO, flags, gso.as_bytes())
    }

    /// A multicast add or delete extra (`type_` is
    /// [`XEN_NETIF_EXTRA_TYPE_MCAST_ADD`] or [`XEN_NETIF_EXTRA_TYPE_MCAST_DEL`]).
    pub fn new_mcast(type_: u8, flags: u8, mcast: ExtraMcast) -> Self {
        Self::with_union(type_, flags, mcast.as_bytes())
    }

    /// A hash extra.
    pub fn new_hash(flags: u8, hash: ExtraHash) -> Self {
        Self::with_union(XEN_NETIF_EXTRA_TYPE_HASH, flags, hash.as_bytes())
    }

    /// An XDP extra.
    pub fn new_xdp(flags: u8, xdp: ExtraXdp) -> Self {
        Self::with_union(XEN_NETIF_EXTRA_TYPE_XDP, flags, xdp.as_bytes())
    }
}

/// Size in bytes of a TX ring slot (`sizeof(union netif_tx_sring_entry)`).
pub const TX_SLOT_SIZE: usize = 12;
/// Size in bytes of an RX ring slot (`sizeof(union netif_rx_sring_entry)`).
pub const RX_SLOT_SIZE: usize = 8;

/// One TX ring slot's request side as bytes: a [`NetifTxRequest`] or a
/// [`NetifExtraInfo`] followed by 4 zero bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct TxSlotBytes(pub [u8; TX_SLOT_SIZE]);

impl TxSlotBytes {
    /// The slot holding a request.
    pub fn from_request(req: &NetifTxRequest) -> Self {
        Self(zerocopy::transmute!(*req))
    }

    /// The slot holding an extra info (the last 4 bytes zero).
    pub fn from_extra(extra: &NetifExtraInfo) -> Self {
        let mut b = [0u8; TX_SLOT_SIZE];
        b[..8].copy_from_slice(extra.as_bytes());
        Self(b)
    }

    /// The slot read as a request.
    pub fn request(&self) -> NetifTxRequest {
        zerocopy::transmute!(self.0)
    }

    /// The slot read as an extra info (its first 8 bytes).
    pub fn extra(&self) -> NetifExtraInfo {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        zerocopy::transmute!(b)
    }
}

/// One RX ring slot's response side as bytes: a [`NetifRxResponse`] or a
/// [`NetifExtraInfo`].
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct RxSlotBytes(pub [u8; RX_SLOT_SIZE]);

impl RxSlotBytes {
    /// The slot holding a response.
    pub fn from_response(rsp: &NetifRxResponse) -> Self {
        Self(zerocopy::transmute!(*rsp))
    }

    /// The slot holding an extra info.
    pub fn from_extra(extra: &NetifExtraInfo) -> Self {
        Self(zerocopy::transmute!(*extra))
    }

    /// The slot read as a response.
    pub fn response(&self) -> NetifRxResponse {
        zerocopy::transmute!(self.0)
    }

    /// The slot read as an extra info.
    pub fn extra(&self) -> NetifExtraInfo {
        zerocopy::transmute!(self.0)
    }
}

const _: () = assert!(core::mem::size_of::<NetifTxRequest>() == TX_SLOT_SIZE);
const _: () = assert!(core::mem::size_of::<NetifTxResponse>() == 4);
const _: () = assert!(core::mem::size_of::<NetifRxRequest>() == RX_SLOT_SIZE);
const _: () = assert!(core::mem::size_of::<NetifRxResponse>() == RX_SLOT_SIZE);
const _: () = assert!(core::mem::size_of::<NetifExtraInfo>() == 8);
const _: () = assert!(core::mem::size_of::<ExtraGso>() == 6);
const _: () = assert!(core::mem::size_of::<ExtraMcast>() == 6);
const _: () = assert!(core::mem::size_of::<ExtraHash>() == 6);
const _: () = assert!(core::mem::size_of::<ExtraXdp>() == 6);
// The union members are read from and written into the native-endian
// 16-bit words of `u`; the wire format is little-endian x86.
const _: () = assert!(cfg!(target_endian = "little"));
