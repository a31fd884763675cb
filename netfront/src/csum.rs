//! Completing the partial TCP/UDP checksums of received frames.
//!
//! A backend sends a frame with `NETRXF_csum_blank` when its sender left the
//! checksum to the hardware: the TCP or UDP checksum field holds only the
//! folded sum of the pseudo-header, and whoever delivers the frame must sum
//! the transport header and payload on top of it. Linux does this in two
//! steps, `skb_checksum_setup` (find the transport header and its checksum
//! field by parsing the Ethernet and IP headers) and `skb_checksum_help`
//! (sum and store). [`complete`] does both on the frame's bytes, with
//! Linux's rules:
//! - IPv4 or IPv6 directly after the Ethernet header (a VLAN tag or another
//!   protocol is refused, as `skb_checksum_setup` refuses it);
//! - IPv4: the header of `ihl` words within the first 128 bytes; a fragment
//!   is refused;
//! - IPv6: hop-by-hop, routing, destination-options, authentication and
//!   fragment headers are skipped while they lie within the first 256
//!   bytes; a fragment (non-zero offset or more-fragments) is refused;
//! - TCP (checksum at byte 16) or UDP (byte 6), anything else refused;
//! - with `recompute_pseudo` (a GSO frame that came without the flag), the
//!   pseudo-header sum is recomputed into the field first, as
//!   `skb_checksum_setup(skb, true)` does.
//!
//! One departure: the transport length is the IP header's (total length, or
//! payload length), where Linux uses what is left of the buffer; the two
//! differ only for frames padded after the IP packet, where the IP length is
//! the right one.
//!
//! A frame may be spread over several buffers (a multi-slot frame): the
//! headers are read from a copy of the first bytes, and the sum runs over
//! every buffer.

use core::fmt;

use crate::abi::ETH_HLEN;

/// What a received frame needs before its checksums can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsumAction {
    /// Complete checksums the application (or its stack) should verify.
    Verify,
    /// The backend vouches for the checksums (`NETRXF_data_validated`).
    Validated,
    /// Complete the partial checksum with [`complete`].
    Complete {
        /// Recompute the pseudo-header sum first.
        recompute_pseudo: bool,
    },
}

/// Most header bytes parsed: Ethernet, then IPv6 extension headers whose
/// fixed part starts within 256 bytes but whose last one may run 2048 bytes
/// further (a length byte of 255 in 8-byte units), then a TCP header's fixed
/// part.
pub const MAX_HEADER_BYTES: usize = ETH_HLEN + MAX_IPV6_HDR_LEN + 2048 + 20;
/// IPv4 headers must end within this many bytes (Linux's `MAX_IP_HDR_LEN`).
pub const MAX_IP_HDR_LEN: usize = 128;
/// IPv6 extension headers must lie within this many bytes (Linux's
/// `MAX_IPV6_HDR_LEN`).
pub const MAX_IPV6_HDR_LEN: usize = 256;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// The network protocol of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// The transport protocol of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Where a frame's transport checksum is, as `skb_checksum_setup` finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsumLocation {
    /// IPv4 or IPv6.
    pub l3: L3,
    /// TCP or UDP.
    pub l4: L4,
    /// Offset of the transport header in the frame (`csum_start`).
    pub start: usize,
    /// Offset of the checksum field in the frame (`csum_start +
    /// csum_offset`).
    pub field: usize,
    /// Bytes of transport header and payload.
    pub l4_len: usize,
    /// The folded pseudo-header sum (not complemented).
    pub pseudo: u16,
}

/// Why a frame's checksum cannot be completed. The frame should be dropped
/// (Linux's netfront drops it and counts an RX error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsumError {
    /// Neither IPv4 nor IPv6 directly after the Ethernet header.
    NotIp {
        /// The EtherType.
        ethertype: u16,
    },
    /// A header is cut short, inconsistent, or beyond the parsed limits.
    BadHeader(&'static str),
    /// An IP fragment.
    Fragment,
    /// Neither TCP nor UDP.
    NotTcpUdp {
        /// The protocol number.
        proto: u8,
    },
}

impl fmt::Display for CsumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsumError::NotIp { ethertype } => write!(
                f,
                "partial checksum on a frame of EtherType {ethertype:#06x}, not IPv4 or IPv6; drop it"
            ),
            CsumError::BadHeader(what) => {
                write!(f, "partial checksum on a malformed frame ({what}); drop it")
            }
            CsumError::Fragment => write!(f, "partial checksum on an IP fragment; drop it"),
            CsumError::NotTcpUdp { proto } => write!(
                f,
                "partial checksum on IP protocol {proto}, not TCP or UDP; drop it"
            ),
        }
    }
}

impl core::error::Error for CsumError {}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Finds the checksum of the frame whose first bytes are `head` (at least
/// [`MAX_HEADER_BYTES`] of them, or the whole frame) and whose length is
/// `frame_len`.
pub fn locate(head: &[u8], frame_len: usize) -> Result<CsumLocation, CsumError> {
    let ethertype =
        be16(head, 12).ok_or(CsumError::BadHeader("shorter than an Ethernet header"))?;
    let ip = ETH_HLEN;
    match ethertype {
        ETHERTYPE_IPV4 => locate_v4(head, frame_len, ip),
        ETHERTYPE_IPV6 => locate_v6(head, frame_len, ip),
        _ => Err(CsumError::NotIp { ethertype }),
    }
}

fn locate_v4(head: &[u8], frame_len: usize, ip: usize) -> Result<CsumLocation, CsumError> {
    let short = CsumError::BadHeader("IPv4 header cut short");
    let vihl = *head.get(ip).ok_or(short)?;
    if vihl >> 4 != 4 {
        return Err(CsumError::BadHeader(
            "IPv4 EtherType without an IPv4 header",
        ));
    }
    let hlen = usize::from(vihl & 0xF) * 4;
    if hlen < 20 {
        return Err(CsumError::BadHeader("IPv4 header length below 20"));
    }
    if hlen > MAX_IP_HDR_LEN || head.len() < ip + hlen {
        return Err(short);
    }
    let total = usize::from(be16(head, ip + 2).ok_or(short)?);
    if total < hlen || ip + total > frame_len {
        return Err(CsumError::BadHeader(
            "IPv4 total length inconsistent with the frame",
        ));
    }
    let frag = be16(head, ip + 6).ok_or(short)?;
    // More fragments (0x2000) or a fragment offset (0x1FFF).
    if frag & 0x3FFF != 0 {
        return Err(CsumError::Fragment);
    }
    let proto = head[ip + 9];
    let mut pseudo = PseudoSum::default();
    pseudo.add(&head[ip + 12..ip + 20]);
    let l4_len = total - hlen;
    pseudo.add_u32(u32::from(proto));
    pseudo.add_u32(l4_len as u32);
    transport(head, ip + hlen, ip + total, proto, L3::V4, pseudo.fold())
}

fn locate_v6(head: &[u8], frame_len: usize, ip: usize) -> Result<CsumLocation, CsumError> {
    let short = CsumError::BadHeader("IPv6 header cut short");
    if head.len() < ip + 40 {
        return Err(short);
    }
    if head[ip] >> 4 != 6 {
        return Err(CsumError::BadHeader(
            "IPv6 EtherType without an IPv6 header",
        ));
    }
    let payload = usize::from(be16(head, ip + 4).ok_or(short)?);
    let end = ip + 40 + payload;
    if end > frame_len {
        return Err(CsumError::BadHeader(
            "IPv6 payload length inconsistent with the frame",
        ));
    }
    let mut next = head[ip + 6];
    let mut off = 40usize;
    let mut fragment = false;
    loop {
        let needs = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => 2,
            IPPROTO_FRAGMENT => 8,
            _ => break,
        };
        if off + needs > MAX_IPV6_HDR_LEN || ip + off + needs > end {
            return Err(CsumError::BadHeader(
                "IPv6 extension headers beyond 256 bytes or the packet",
            ));
        }
        let h = ip + off;
        let hdr_next = *head.get(h).ok_or(short)?;
        let hdr_len = usize::from(*head.get(h + 1).ok_or(short)?);
        off += match next {
            IPPROTO_AH => (hdr_len + 2) * 4,
            IPPROTO_FRAGMENT => {
                let frag = be16(head, h + 2).ok_or(short)?;
                // Offset (0xFFF8) or more fragments (0x0001).
                if frag & 0xFFF9 != 0 {
                    fragment = true;
                }
                8
            }
            _ => (hdr_len + 1) * 8,
        };
        next = hdr_next;
    }
    if fragment {
        return Err(CsumError::Fragment);
    }
    let start = ip + off;
    if start > end {
        return Err(CsumError::BadHeader(
            "IPv6 extension headers beyond the packet",
        ));
    }
    let l4_len = end - start;
    let mut pseudo = PseudoSum::default();
    pseudo.add(&head[ip + 8..ip + 40]);
    pseudo.add_u32(l4_len as u32);
    pseudo.add_u32(u32::from(next));
    transport(head, start, end, next, L3::V6, pseudo.fold())
}

fn transport(
    head: &[u8],
    start: usize,
    end: usize,
    proto: u8,
    l3: L3,
    pseudo: u16,
) -> Result<CsumLocation, CsumError> {
    let (l4, hdr, field) = match proto {
        IPPROTO_TCP => (L4::Tcp, 20, 16),
        IPPROTO_UDP => (L4::Udp, 8, 6),
        _ => return Err(CsumError::NotTcpUdp { proto }),
    };
    if start + hdr > end || start + hdr > head.len() {
        return Err(CsumError::BadHeader("transport header cut short"));
    }
    Ok(CsumLocation {
        l3,
        l4,
        start,
        field: start + field,
        l4_len: end - start,
        pseudo,
    })
}

/// A ones' complement sum in progress (RFC 1071), over big-endian 16-bit
/// words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PseudoSum(u64);

impl PseudoSum {
    fn add(&mut self, data: &[u8]) {
        self.0 += raw_sum(data);
    }

    fn add_u32(&mut self, v: u32) {
        self.0 += u64::from(v >> 16) + u64::from(v & 0xFFFF);
    }

    fn fold(self) -> u16 {
        fold(self.0)
    }
}

/// Sum of `data` as big-endian 16-bit words (a last odd byte is the high
/// byte of a word), not folded.
fn raw_sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 32) + (w & 0xFFFF_FFFF);
    }
    let mut words = chunks.remainder().chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits with end-around carries.
fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s as u16
}

/// The folded ones' complement sum of `data` (not complemented): the
/// Internet checksum of `data` is its complement.
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    fold(raw_sum(data))
}

/// Completes the partial checksum of a frame held in one buffer.
pub fn complete_frame(frame: &mut [u8], recompute_pseudo: bool) -> Result<CsumLocation, CsumError> {
    complete(&mut [frame], recompute_pseudo)
}

/// Completes the partial TCP/UDP checksum of the frame made of `frags` in
/// order (see the module docs). On error the frame is unchanged.
pub fn complete(
    frags: &mut [&mut [u8]],
    recompute_pseudo: bool,
) -> Result<CsumLocation, CsumError> {
    let frame_len: usize = frags.iter().map(|f| f.len()).sum();
    let head_len = frame_len.min(MAX_HEADER_BYTES);
    let loc = match frags.first() {
        // The headers are in the first buffer: parse them in place.
        Some(first) if first.len() >= head_len => locate(&first[..head_len], frame_len)?,
        _ => {
            let mut head = [0u8; MAX_HEADER_BYTES];
            read_at(frags, 0, &mut head[..head_len]);
            locate(&head[..head_len], frame_len)?
        }
    };

    if recompute_pseudo {
        write_at(frags, loc.field, &loc.pseudo.to_be_bytes());
    }
    // Sum [start, start + l4_len) across the fragments; a fragment that
    // starts at an odd distance from `start` contributes its sum byte-swapped.
    let end = loc.start + loc.l4_len;
    let mut acc: u64 = 0;
    let mut pos = 0usize;
    for f in frags.iter() {
        let (f_start, f_end) = (pos, pos + f.len());
        pos = f_end;
        let lo = f_start.max(loc.start);
        let hi = f_end.min(end);
        if lo >= hi {
            continue;
        }
        let s = fold(raw_sum(&f[lo - f_start..hi - f_start]));
        acc += u64::from(if (lo - loc.start) % 2 == 1 {
            s.swap_bytes()
        } else {
            s
        });
    }
    let mut csum = !fold(acc);
    if csum == 0 {
        // Zero means "no checksum" to UDP; 0xFFFF is the same sum.
        csum = 0xFFFF;
    }
    write_at(frags, loc.field, &csum.to_be_bytes());
    Ok(loc)
}

/// Copies frame bytes from `at` into `out` (as many as exist).
fn read_at(frags: &[&mut [u8]], at: usize, out: &mut [u8]) {
    let mut pos = 0usize;
    for f in frags {
        let (f_start, f_end) = (pos, pos + f.len());
        pos = f_end;
        let lo = f_start.max(at);
        let hi = f_end.min(at + out.len());
        if lo < hi {
            out[lo - at..hi - at].copy_from_slice(&f[lo - f_start..hi - f_start]);
        }
    }
}

/// Writes `bytes` into the frame at `at` (within the frame: `locate` checked
/// that the transport header lies inside it).
fn write_at(frags: &mut [&mut [u8]], at: usize, bytes: &[u8]) {
    let mut pos = 0usize;
    for f in frags.iter_mut() {
        let (f_start, f_end) = (pos, pos + f.len());
        pos = f_end;
        let lo = f_start.max(at);
        let hi = f_end.min(at + bytes.len());
        if lo < hi {
            f[lo - f_start..hi - f_start].copy_from_slice(&bytes[lo - at..hi - at]);
        }
    }
}
