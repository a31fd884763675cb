//! RoCE v2 frames: Ethernet, IPv4, UDP to port 4791, the InfiniBand
//! transport headers, the payload with its pad, and the ICRC (IBA vol. 1,
//! annex A17).
//!
//! [`build`] writes a frame into a caller's buffer (a frame device's
//! transmit buffer); [`parse`] reads one. The parser is meant for bytes the
//! caller owns (a private copy of a received frame, never memory a device
//! or peer can still write): it reads each byte once, checks every length
//! with checked arithmetic, and returns a [`ParseError`] for anything the
//! specification does not allow, never panicking.
//!
//! What the parser checks:
//! - Ethernet: EtherType IPv4 (no VLAN tag); bytes after the IP packet only
//!   as padding of a minimum-size (60-byte) frame.
//! - IPv4: version 4, no options, total length within the frame, not
//!   fragmented, reserved flag clear, protocol UDP, header checksum.
//! - UDP: destination port 4791, length equal to the IP payload, checksum
//!   when it is not zero.
//! - The transport: an RC opcode (the other services, CNPs and reserved
//!   values are [`ParseError::UnsupportedOpcode`]), transport version 0, the
//!   opcode's extended headers present and well-formed (AETH syndromes),
//!   a transport packet that is a multiple of four bytes, no payload for
//!   opcodes that carry none, a pad of zero on first and middle packets and
//!   no longer than the payload, and the ICRC.
//!
//! Checks that need a queue pair's state (the expected PSN and its window,
//! the destination QP, the P_Key, the path MTU, remote keys and bounds) are
//! the queue pair's.

use core::fmt;

use crate::headers::{Aeth, AtomicAckEth, AtomicEth, Bth, Ieth, ImmDt, Reth, QPN_MASK};
use crate::icrc::{icrc, ICRC_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN};
use crate::opcode::{
    Opcode, Position, AETH_LEN, ATOMIC_ACK_ETH_LEN, ATOMIC_ETH_LEN, BTH_LEN, IETH_LEN, IMM_LEN,
    RETH_LEN,
};

/// The UDP destination port of RoCE v2.
pub const ROCE_V2_PORT: u16 = 4791;
/// The Ethernet header length (no VLAN tag).
pub const ETH_HEADER_LEN: usize = 14;
/// The IPv4 EtherType.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// The shortest Ethernet frame without its FCS; shorter frames are padded.
pub const MIN_FRAME_LEN: usize = 60;
/// The IPv4 protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Bytes of a frame besides the transport headers and the payload.
pub const FRAME_OVERHEAD: usize =
    ETH_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN + BTH_LEN + ICRC_LEN;

/// The addressing of a RoCE v2 frame: what the layers below the transport
/// carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Destination Ethernet address.
    pub dst_mac: [u8; 6],
    /// Source Ethernet address.
    pub src_mac: [u8; 6],
    /// Source IPv4 address.
    pub src_ip: [u8; 4],
    /// Destination IPv4 address.
    pub dst_ip: [u8; 4],
    /// UDP source port (flow entropy; the destination is always 4791).
    pub src_port: u16,
    /// IPv4 type of service (DSCP and ECN).
    pub tos: u8,
    /// IPv4 time to live.
    pub ttl: u8,
    /// IPv4 identification.
    pub ip_id: u16,
}

/// The transport headers of one packet: a BTH and the extended headers
/// its opcode carries (and no others).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportHeaders {
    /// The base transport header.
    pub bth: Bth,
    /// RDMA extended transport header.
    pub reth: Option<Reth>,
    /// Atomic extended transport header.
    pub atomic_eth: Option<AtomicEth>,
    /// ACK extended transport header.
    pub aeth: Option<Aeth>,
    /// Atomic-acknowledge extended transport header.
    pub atomic_ack_eth: Option<AtomicAckEth>,
    /// Immediate data.
    pub imm: Option<ImmDt>,
    /// Invalidate extended transport header.
    pub ieth: Option<Ieth>,
}

impl TransportHeaders {
    /// A BTH and no extended header.
    pub const fn new(bth: Bth) -> TransportHeaders {
        TransportHeaders {
            bth,
            reth: None,
            atomic_eth: None,
            aeth: None,
            atomic_ack_eth: None,
            imm: None,
            ieth: None,
        }
    }

    /// Checks that exactly the opcode's extended headers are present.
    pub fn check(&self) -> Result<(), BuildError> {
        let l = self.bth.opcode.layout();
        // The common case in one comparison; the walk below names the
        // header that does not match.
        let wanted = [
            l.reth,
            l.atomic_eth,
            l.aeth,
            l.atomic_ack_eth,
            l.imm,
            l.ieth,
        ];
        let present = [
            self.reth.is_some(),
            self.atomic_eth.is_some(),
            self.aeth.is_some(),
            self.atomic_ack_eth.is_some(),
            self.imm.is_some(),
            self.ieth.is_some(),
        ];
        if wanted == present {
            return Ok(());
        }
        let pairs: [(&'static str, bool, bool); 6] = [
            ("RETH", l.reth, self.reth.is_some()),
            ("AtomicETH", l.atomic_eth, self.atomic_eth.is_some()),
            ("AETH", l.aeth, self.aeth.is_some()),
            (
                "AtomicAckETH",
                l.atomic_ack_eth,
                self.atomic_ack_eth.is_some(),
            ),
            ("ImmDt", l.imm, self.imm.is_some()),
            ("IETH", l.ieth, self.ieth.is_some()),
        ];
        for (header, wanted, present) in pairs {
            if wanted != present {
                return Err(BuildError::HeaderMismatch {
                    opcode: self.bth.opcode,
                    header,
                    present,
                });
            }
        }
        Ok(())
    }
}

/// A parsed RoCE v2 packet. `payload` borrows the parsed bytes and excludes
/// the pad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Addresses and IP fields.
    pub endpoints: Endpoints,
    /// The transport headers (consistent with the opcode).
    pub headers: TransportHeaders,
    /// The payload, without its pad.
    pub payload: &'a [u8],
}

/// Why a packet could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// An extended header is missing, or present for an opcode that does
    /// not carry it.
    HeaderMismatch {
        /// The opcode.
        opcode: Opcode,
        /// The header's name.
        header: &'static str,
        /// Whether it was given.
        present: bool,
    },
    /// A payload for an opcode that carries none.
    PayloadNotAllowed {
        /// The opcode.
        opcode: Opcode,
        /// The payload length given.
        len: usize,
    },
    /// A first or middle packet whose payload is not a multiple of four
    /// bytes (they carry a full path MTU and no pad).
    UnalignedPayload {
        /// The opcode.
        opcode: Opcode,
        /// The payload length given.
        len: usize,
    },
    /// A destination QP number above 24 bits.
    QpnTooLarge(u32),
    /// The packet does not fit an IPv4 datagram.
    TooLarge {
        /// The payload length given.
        len: usize,
    },
    /// The output buffer is too small.
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::HeaderMismatch {
                opcode,
                header,
                present: true,
            } => {
                write!(f, "{opcode:?} carries no {header}; leave it out")
            }
            BuildError::HeaderMismatch {
                opcode,
                header,
                present: false,
            } => {
                write!(f, "{opcode:?} needs a {header}; give one")
            }
            BuildError::PayloadNotAllowed { opcode, len } => {
                write!(
                    f,
                    "{opcode:?} carries no payload, but {len} bytes were given"
                )
            }
            BuildError::UnalignedPayload { opcode, len } => write!(
                f,
                "{opcode:?} must carry a multiple of 4 bytes (a full path MTU), not {len}"
            ),
            BuildError::QpnTooLarge(qpn) => {
                write!(f, "destination QP {qpn:#x} does not fit in 24 bits")
            }
            BuildError::TooLarge { len } => {
                write!(
                    f,
                    "a {len}-byte payload does not fit an IPv4 datagram; segment it"
                )
            }
            BuildError::BufferTooSmall { need, have } => {
                write!(f, "the frame needs {need} bytes but the buffer has {have}")
            }
        }
    }
}

/// Why a received frame is not a valid RoCE v2 RC packet. The packet is
/// to be dropped and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The frame ends before a header does.
    Truncated {
        /// The header being read.
        what: &'static str,
        /// Bytes needed up to the header's end.
        need: usize,
        /// Bytes there are.
        have: usize,
    },
    /// Not an IPv4 frame (VLAN tags and IPv6 are not supported).
    NotIpv4 {
        /// The EtherType found.
        ethertype: u16,
    },
    /// The IPv4 version field is not 4.
    BadIpVersion(u8),
    /// IPv4 options (header length in 32-bit words, not 5).
    IpOptions {
        /// The IHL found.
        ihl: u8,
    },
    /// The IPv4 total length is shorter than its headers or longer than the
    /// frame.
    BadIpLength {
        /// The total length field.
        total: u16,
        /// Bytes after the Ethernet header.
        available: usize,
    },
    /// A fragment (RoCE v2 packets are never fragmented).
    Fragmented,
    /// The reserved IPv4 flag is set.
    IpReservedFlag,
    /// Not UDP.
    NotUdp {
        /// The IPv4 protocol found.
        protocol: u8,
    },
    /// The IPv4 header checksum is wrong.
    BadIpChecksum,
    /// The UDP destination port is not 4791.
    NotRoce {
        /// The port found.
        port: u16,
    },
    /// The UDP length disagrees with the IPv4 total length.
    BadUdpLength {
        /// The UDP length field.
        udp: u16,
        /// The IPv4 payload length.
        ip_payload: usize,
    },
    /// The UDP checksum is present and wrong.
    BadUdpChecksum,
    /// Bytes after the IP packet in a frame longer than the minimum.
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// Not an RC opcode (another transport service, a CNP, or reserved).
    UnsupportedOpcode(u8),
    /// A transport header version other than 0.
    UnsupportedTransportVersion(u8),
    /// An AETH syndrome with the reserved bit, type or NAK code.
    BadSyndrome(u8),
    /// The transport packet (BTH to ICRC) is not a multiple of 4 bytes.
    Misaligned {
        /// Its length.
        len: usize,
    },
    /// A payload (or pad) on an opcode that carries none.
    UnexpectedPayload {
        /// The opcode.
        opcode: Opcode,
        /// Payload and pad bytes found.
        len: usize,
    },
    /// A pad on a first or middle packet, or longer than the payload.
    BadPad {
        /// The opcode.
        opcode: Opcode,
        /// The pad count.
        pad: u8,
        /// Payload and pad bytes.
        len: usize,
    },
    /// The ICRC does not match.
    BadIcrc {
        /// The ICRC computed, in wire order.
        computed: [u8; 4],
        /// The ICRC found, in wire order.
        found: [u8; 4],
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated { what, need, have } => {
                write!(f, "truncated {what}: needs {need} bytes, the frame has {have}")
            }
            ParseError::NotIpv4 { ethertype } => {
                write!(f, "EtherType {ethertype:#06x} is not IPv4 (VLAN tags and IPv6 are not supported)")
            }
            ParseError::BadIpVersion(v) => write!(f, "IP version {v}, expected 4"),
            ParseError::IpOptions { ihl } => {
                write!(f, "IPv4 header of {ihl} words: options are not supported in RoCE v2 packets")
            }
            ParseError::BadIpLength { total, available } => write!(
                f,
                "IPv4 total length {total} does not fit the {available} bytes after the Ethernet header"
            ),
            ParseError::Fragmented => write!(f, "IPv4 fragment: RoCE v2 packets are never fragmented"),
            ParseError::IpReservedFlag => write!(f, "reserved IPv4 flag set"),
            ParseError::NotUdp { protocol } => write!(f, "IP protocol {protocol} is not UDP"),
            ParseError::BadIpChecksum => write!(f, "wrong IPv4 header checksum"),
            ParseError::NotRoce { port } => {
                write!(f, "UDP port {port} is not RoCE v2 ({ROCE_V2_PORT})")
            }
            ParseError::BadUdpLength { udp, ip_payload } => {
                write!(f, "UDP length {udp} disagrees with the {ip_payload}-byte IPv4 payload")
            }
            ParseError::BadUdpChecksum => write!(f, "wrong UDP checksum"),
            ParseError::TrailingBytes { extra } => {
                write!(f, "{extra} bytes after the IP packet in a frame longer than the minimum")
            }
            ParseError::UnsupportedOpcode(op) => {
                write!(f, "opcode {op:#04x} is not a reliable-connected opcode")
            }
            ParseError::UnsupportedTransportVersion(v) => {
                write!(f, "transport header version {v}, expected 0")
            }
            ParseError::BadSyndrome(s) => write!(f, "reserved AETH syndrome {s:#04x}"),
            ParseError::Misaligned { len } => {
                write!(f, "transport packet of {len} bytes is not a multiple of 4")
            }
            ParseError::UnexpectedPayload { opcode, len } => {
                write!(f, "{opcode:?} carries no payload, but {len} bytes follow its headers")
            }
            ParseError::BadPad { opcode, pad, len } => {
                write!(f, "pad count {pad} on {opcode:?} with {len} payload bytes")
            }
            ParseError::BadIcrc { computed, found } => {
                write!(f, "ICRC {found:02x?} found, {computed:02x?} computed")
            }
        }
    }
}

/// The one's-complement sum of 16-bit big-endian words (an odd last byte
/// is padded with zero), folded, not complemented; `sum` is a folded sum
/// to continue. The words are added up in 64 bits and the carries folded
/// back once at the end (the same sum: one's-complement addition is
/// associative).
fn ones_sum(sum: u32, bytes: &[u8]) -> u32 {
    let mut acc = u64::from(sum);
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    // At most 2^15 words of 16 bits and the start: 2^32 at most, so two
    // folds and a last carry bring it below 2^16.
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u32
}

/// The Internet checksum of `bytes` (RFC 1071).
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    !(ones_sum(0, bytes) as u16)
}

/// The UDP checksum of a datagram (header with its checksum field, and
/// payload) between two IPv4 addresses. A computed zero is sent as all
/// ones (RFC 768).
pub fn udp_checksum(src: [u8; 4], dst: [u8; 4], datagram: &[u8]) -> u16 {
    // Callers bound the datagram to an IPv4 payload, below 65536 bytes.
    let pseudo = udp_pseudo(src, dst, datagram.len() as u16);
    let sum = ones_sum(ones_sum(0, &pseudo), datagram);
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

/// The frame length for a packet with these headers and payload
/// (padded to [`MIN_FRAME_LEN`]); `None` when it does not fit an IPv4
/// datagram.
pub fn frame_len(opcode: Opcode, payload_len: usize) -> Option<usize> {
    let pad = pad_for(payload_len);
    let len = FRAME_OVERHEAD
        .checked_add(opcode.layout().ext_len())?
        .checked_add(payload_len)?
        .checked_add(pad)?;
    if len - ETH_HEADER_LEN > usize::from(u16::MAX) {
        return None;
    }
    Some(len.max(MIN_FRAME_LEN))
}

/// The pad that brings `payload_len` to a multiple of four.
pub const fn pad_for(payload_len: usize) -> usize {
    (4 - payload_len % 4) % 4
}

/// Writes a RoCE v2 frame into `out` and returns its length.
///
/// The BTH's pad count is computed from the payload (the given one is
/// ignored); pad bytes are zero. The IPv4 header gets Don't Fragment and its
/// checksum; the UDP checksum is zero (allowed for IPv4, and what Linux's
/// `rdma_rxe` sends); the ICRC is computed. Frames shorter than 60 bytes
/// are padded with zeros to 60.
pub fn build(
    endpoints: &Endpoints,
    headers: &TransportHeaders,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, BuildError> {
    headers.check()?;
    let opcode = headers.bth.opcode;
    let layout = opcode.layout();
    if !layout.payload && !payload.is_empty() {
        return Err(BuildError::PayloadNotAllowed {
            opcode,
            len: payload.len(),
        });
    }
    if !layout.position.ends_message() && payload.len() % 4 != 0 {
        return Err(BuildError::UnalignedPayload {
            opcode,
            len: payload.len(),
        });
    }
    if headers.bth.dest_qp > QPN_MASK {
        return Err(BuildError::QpnTooLarge(headers.bth.dest_qp));
    }
    let len =
        frame_len(opcode, payload.len()).ok_or(BuildError::TooLarge { len: payload.len() })?;
    let have = out.len();
    let out = out
        .get_mut(..len)
        .ok_or(BuildError::BufferTooSmall { need: len, have })?;
    // Every byte of `out` is written below (no fill of the whole frame
    // first): the fields that are zero, the pad and a short frame's tail
    // explicitly.
    let pad = pad_for(payload.len());
    // Lengths below 65536 (frame_len checked the IPv4 total).
    let ip_total = FRAME_OVERHEAD - ETH_HEADER_LEN + layout.ext_len() + payload.len() + pad;
    let ip_end = ETH_HEADER_LEN + ip_total;

    // Ethernet.
    out[0..6].copy_from_slice(&endpoints.dst_mac);
    out[6..12].copy_from_slice(&endpoints.src_mac);
    out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    // IPv4.
    let ip = ETH_HEADER_LEN;
    out[ip] = 0x45;
    out[ip + 1] = endpoints.tos;
    out[ip + 2..ip + 4].copy_from_slice(&(ip_total as u16).to_be_bytes());
    out[ip + 4..ip + 6].copy_from_slice(&endpoints.ip_id.to_be_bytes());
    out[ip + 6] = 0x40; // Don't Fragment.
    out[ip + 7] = 0;
    out[ip + 8] = endpoints.ttl;
    out[ip + 9] = IPPROTO_UDP;
    out[ip + 10..ip + 12].fill(0);
    out[ip + 12..ip + 16].copy_from_slice(&endpoints.src_ip);
    out[ip + 16..ip + 20].copy_from_slice(&endpoints.dst_ip);
    let csum = internet_checksum(&out[ip..ip + IPV4_HEADER_LEN]);
    out[ip + 10..ip + 12].copy_from_slice(&csum.to_be_bytes());
    // UDP.
    let udp = ip + IPV4_HEADER_LEN;
    out[udp..udp + 2].copy_from_slice(&endpoints.src_port.to_be_bytes());
    out[udp + 2..udp + 4].copy_from_slice(&ROCE_V2_PORT.to_be_bytes());
    out[udp + 4..udp + 6].copy_from_slice(&((ip_total - IPV4_HEADER_LEN) as u16).to_be_bytes());
    out[udp + 6..udp + 8].fill(0);
    // Transport headers, in wire order.
    let mut at = udp + UDP_HEADER_LEN;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    let mut bth = headers.bth;
    bth.pad = pad as u8;
    put(&bth.encode());
    if let Some(h) = headers.reth {
        put(&h.encode());
    }
    if let Some(h) = headers.atomic_eth {
        put(&h.encode());
    }
    if let Some(h) = headers.aeth {
        put(&h.encode());
    }
    if let Some(h) = headers.atomic_ack_eth {
        put(&h.encode());
    }
    if let Some(h) = headers.imm {
        put(&h.0);
    }
    if let Some(h) = headers.ieth {
        put(&h.encode());
    }
    put(payload);
    out[at..at + pad].fill(0);
    at += pad;
    let icrc_at = ip_end - ICRC_LEN;
    debug_assert_eq!(at, icrc_at);
    let crc = icrc(&out[ip..icrc_at]).ok_or(BuildError::TooLarge { len: payload.len() })?;
    out[icrc_at..ip_end].copy_from_slice(&crc);
    // A frame shorter than the Ethernet minimum: zeros to 60 bytes.
    out[ip_end..].fill(0);
    Ok(len)
}

/// Sets the AckReq bit of a frame [`build`] wrote and writes its ICRC
/// again (the bit is not masked out of it): what a requester does to a
/// packet it resends when the packet left without asking for an ACK.
/// Returns `true` when the bit is set (already, or now); `false`, the
/// frame unchanged, when `frame` is not a frame [`build`] writes (no
/// 20-byte IPv4 header, or shorter than its IPv4 length and a BTH).
pub fn set_ack_req(frame: &mut [u8]) -> bool {
    const BTH_AT: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN;
    const ACK_REQ_AT: usize = BTH_AT + 8;
    let Some(&[vihl, _, hi, lo]) = frame.get(ETH_HEADER_LEN..ETH_HEADER_LEN + 4) else {
        return false;
    };
    let ip_end = ETH_HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo]));
    if vihl != 0x45 || ip_end > frame.len() || ip_end < BTH_AT + BTH_LEN + ICRC_LEN {
        return false;
    }
    let icrc_at = ip_end - ICRC_LEN;
    match frame.get_mut(ACK_REQ_AT) {
        Some(b) if *b & 0x80 != 0 => return true,
        Some(b) => *b |= 0x80,
        None => return false,
    }
    let Some(crc) = frame.get(ETH_HEADER_LEN..icrc_at).and_then(icrc) else {
        return false;
    };
    match frame.get_mut(icrc_at..ip_end) {
        Some(dst) => {
            dst.copy_from_slice(&crc);
            true
        }
        None => false,
    }
}

/// A bounds-checked reader over the parsed bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ParseError> {
        let end = self.at.checked_add(N).ok_or(ParseError::Truncated {
            what,
            need: usize::MAX,
            have: self.bytes.len(),
        })?;
        let b = self.bytes.get(self.at..end).ok_or(ParseError::Truncated {
            what,
            need: end,
            have: self.bytes.len(),
        })?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        self.at = end;
        Ok(a)
    }
}

/// Parses and validates a RoCE v2 RC frame (see the module docs for the
/// checks). `frame` starts at the Ethernet header and has no FCS.
pub fn parse(frame: &[u8]) -> Result<Packet<'_>, ParseError> {
    let mut r = Reader {
        bytes: frame,
        at: 0,
    };
    let eth: [u8; ETH_HEADER_LEN] = r.take("Ethernet header")?;
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    if ethertype != ETHERTYPE_IPV4 {
        return Err(ParseError::NotIpv4 { ethertype });
    }
    let iph: [u8; IPV4_HEADER_LEN] = r.take("IPv4 header")?;
    if iph[0] >> 4 != 4 {
        return Err(ParseError::BadIpVersion(iph[0] >> 4));
    }
    if iph[0] & 0x0f != 5 {
        return Err(ParseError::IpOptions { ihl: iph[0] & 0x0f });
    }
    let total = u16::from_be_bytes([iph[2], iph[3]]);
    let available = frame.len() - ETH_HEADER_LEN;
    let min_total = IPV4_HEADER_LEN + UDP_HEADER_LEN;
    if usize::from(total) < min_total || usize::from(total) > available {
        return Err(ParseError::BadIpLength { total, available });
    }
    let extra = available - usize::from(total);
    if extra > 0 && frame.len() > MIN_FRAME_LEN {
        return Err(ParseError::TrailingBytes { extra });
    }
    if iph[6] & 0x80 != 0 {
        return Err(ParseError::IpReservedFlag);
    }
    if iph[6] & 0x20 != 0 || (iph[6] & 0x1f) != 0 || iph[7] != 0 {
        return Err(ParseError::Fragmented);
    }
    if iph[9] != IPPROTO_UDP {
        return Err(ParseError::NotUdp { protocol: iph[9] });
    }
    if ones_sum(0, &iph) != 0xffff {
        return Err(ParseError::BadIpChecksum);
    }
    let ip_end = ETH_HEADER_LEN + usize::from(total);
    // The IP packet: everything the ICRC and the UDP checksum cover.
    let ip_packet = &frame[ETH_HEADER_LEN..ip_end];
    let src_ip = [iph[12], iph[13], iph[14], iph[15]];
    let dst_ip = [iph[16], iph[17], iph[18], iph[19]];

    let udph: [u8; UDP_HEADER_LEN] = r.take("UDP header")?;
    let port = u16::from_be_bytes([udph[2], udph[3]]);
    if port != ROCE_V2_PORT {
        return Err(ParseError::NotRoce { port });
    }
    let udp_len = u16::from_be_bytes([udph[4], udph[5]]);
    let ip_payload = usize::from(total) - IPV4_HEADER_LEN;
    if usize::from(udp_len) != ip_payload {
        return Err(ParseError::BadUdpLength {
            udp: udp_len,
            ip_payload,
        });
    }
    if u16::from_be_bytes([udph[6], udph[7]]) != 0
        && ones_sum(
            ones_sum(0, &udp_pseudo(src_ip, dst_ip, udp_len)),
            &ip_packet[IPV4_HEADER_LEN..],
        ) != 0xffff
    {
        return Err(ParseError::BadUdpChecksum);
    }

    // The transport packet: BTH to the ICRC, inside the IP packet. The ICRC
    // is checked first, so that a corrupted packet is reported as such.
    let transport_len = ip_payload - UDP_HEADER_LEN;
    if transport_len < BTH_LEN + ICRC_LEN {
        return Err(ParseError::Truncated {
            what: "BTH and ICRC",
            need: BTH_LEN + ICRC_LEN,
            have: transport_len,
        });
    }
    if transport_len % 4 != 0 {
        return Err(ParseError::Misaligned { len: transport_len });
    }
    let icrc_at = ip_packet.len() - ICRC_LEN;
    let computed =
        icrc(&ip_packet[..icrc_at]).ok_or(ParseError::IpOptions { ihl: iph[0] & 0x0f })?;
    let mut found = [0u8; ICRC_LEN];
    found.copy_from_slice(&ip_packet[icrc_at..]);
    if computed != found {
        return Err(ParseError::BadIcrc { computed, found });
    }
    let transport = &ip_packet[IPV4_HEADER_LEN + UDP_HEADER_LEN..icrc_at];
    let mut t = Reader {
        bytes: transport,
        at: 0,
    };
    let bth = Bth::decode(&t.take::<BTH_LEN>("BTH")?)?;
    let opcode = bth.opcode;
    let layout = opcode.layout();
    let mut headers = TransportHeaders::new(bth);
    if layout.reth {
        headers.reth = Some(Reth::decode(&t.take::<RETH_LEN>("RETH")?));
    }
    if layout.atomic_eth {
        headers.atomic_eth = Some(AtomicEth::decode(&t.take::<ATOMIC_ETH_LEN>("AtomicETH")?));
    }
    if layout.aeth {
        headers.aeth = Some(Aeth::decode(&t.take::<AETH_LEN>("AETH")?)?);
    }
    if layout.atomic_ack_eth {
        headers.atomic_ack_eth = Some(AtomicAckEth::decode(
            &t.take::<ATOMIC_ACK_ETH_LEN>("AtomicAckETH")?,
        ));
    }
    if layout.imm {
        headers.imm = Some(ImmDt(t.take::<IMM_LEN>("ImmDt")?));
    }
    if layout.ieth {
        headers.ieth = Some(Ieth::decode(&t.take::<IETH_LEN>("IETH")?));
    }
    let headers_end = t.at;
    // Reader::take kept headers_end within the transport bytes.
    let body_len = transport.len() - headers_end;
    if !layout.payload && body_len != 0 {
        return Err(ParseError::UnexpectedPayload {
            opcode,
            len: body_len,
        });
    }
    let pad = usize::from(bth.pad);
    let pad_ok = match layout.position {
        Position::First | Position::Middle => pad == 0,
        Position::Last | Position::Only => pad <= body_len,
    };
    if !pad_ok {
        return Err(ParseError::BadPad {
            opcode,
            pad: bth.pad,
            len: body_len,
        });
    }
    let payload = &transport[headers_end..transport.len() - pad];
    Ok(Packet {
        endpoints: Endpoints {
            dst_mac: [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]],
            src_mac: [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]],
            src_ip,
            dst_ip,
            src_port: u16::from_be_bytes([udph[0], udph[1]]),
            tos: iph[1],
            ttl: iph[8],
            ip_id: u16::from_be_bytes([iph[4], iph[5]]),
        },
        headers,
        payload,
    })
}

fn udp_pseudo(src: [u8; 4], dst: [u8; 4], udp_len: u16) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&src);
    p[4..8].copy_from_slice(&dst);
    p[9] = IPPROTO_UDP;
    p[10..12].copy_from_slice(&udp_len.to_be_bytes());
    p
}
