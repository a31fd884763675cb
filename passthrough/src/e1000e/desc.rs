//! Descriptor formats, and the parsing of what the device writes back.
//!
//! # Which descriptors
//! - **RX: extended descriptors** (`RFCTL.EXTEN`, one buffer each, not
//!   packet split). The driver writes the *read* format (buffer address,
//!   then eight zero bytes) and the device overwrites all 16 bytes with the
//!   *write-back* format (RSS/IP-id dword, status and errors, length,
//!   VLAN). Because posting rewrites the whole descriptor, a slot never
//!   holds a stale done bit from its last round, and the device's status
//!   (20 bits) and errors (12 bits) come in one dword with the length in
//!   the same 8 bytes, read in one load. This is the format Linux's e1000e
//!   driver uses, so it is the path of QEMU's model that Linux guests
//!   exercise. Legacy descriptors would give the same checksum status bits
//!   (QEMU writes them for both) but leave the device's write-back over the
//!   driver's buffer address.
//! - **TX: legacy descriptors** for frames without offload, and an
//!   extended **data descriptor** after a **context descriptor** for frames
//!   that ask the device to insert checksums ([`TxChecksum`]): QEMU 7.2
//!   ignores the checksum fields of legacy TX descriptors (its
//!   `e1000e_process_tx_desc` reads offloads only from context and data
//!   descriptors).
//!
//! # Parsing write-backs
//! The device is untrusted (DESIGN.md, "The peer is hostile"): the driver
//! copies a descriptor out of DMA memory once ([`RxWriteback::from_bytes`])
//! and every decision comes from that copy. [`parse_rx`] turns a copy into
//! a typed result or a [`DescError`] that breaks the device; it never
//! panics on any input (fuzzed: `fuzz/fuzz_targets/e1000e_rx_writeback.rs`).

use core::fmt;

/// Bytes in every descriptor (legacy, extended, context, data).
pub const DESC_LEN: usize = 16;
/// The length of an Ethernet header.
pub const ETH_HLEN: usize = 14;

// Extended RX write-back: status (bits 0-19) and errors (bits 20-31) of the
// third dword.
/// Descriptor done.
pub const RXD_STAT_DD: u32 = 1 << 0;
/// End of packet.
pub const RXD_STAT_EOP: u32 = 1 << 1;
/// Ignore the checksum indications.
pub const RXD_STAT_IXSM: u32 = 1 << 2;
/// The frame had a VLAN tag, stripped into the VLAN field.
pub const RXD_STAT_VP: u32 = 1 << 3;
/// UDP checksum calculated.
pub const RXD_STAT_UDPCS: u32 = 1 << 4;
/// TCP (or UDP, with [`RXD_STAT_UDPCS`]) checksum calculated.
pub const RXD_STAT_TCPCS: u32 = 1 << 5;
/// IPv4 header checksum calculated.
pub const RXD_STAT_IPCS: u32 = 1 << 6;
/// The packet type (bits 16-19).
pub const RXD_STAT_PKTTYPE_SHIFT: u32 = 16;
/// CRC or alignment error.
pub const RXD_ERR_CE: u32 = 1 << 24;
/// Symbol error.
pub const RXD_ERR_SE: u32 = 1 << 25;
/// Sequence error.
pub const RXD_ERR_SEQ: u32 = 1 << 26;
/// Carrier extension error.
pub const RXD_ERR_CXE: u32 = 1 << 28;
/// TCP/UDP checksum error.
pub const RXD_ERR_TCPE: u32 = 1 << 29;
/// IPv4 header checksum error.
pub const RXD_ERR_IPE: u32 = 1 << 30;
/// RX data error.
pub const RXD_ERR_RXE: u32 = 1 << 31;
/// The errors that spoil the frame itself (not just a checksum).
pub const RXD_ERR_FRAME: u32 = RXD_ERR_CE | RXD_ERR_SE | RXD_ERR_SEQ | RXD_ERR_CXE | RXD_ERR_RXE;

// TX descriptors: the command byte (bits 24-31 of the second dword).
/// End of packet.
pub const TXD_CMD_EOP: u8 = 1 << 0;
/// Insert the FCS.
pub const TXD_CMD_IFCS: u8 = 1 << 1;
/// Report status: write the done bit back.
pub const TXD_CMD_RS: u8 = 1 << 3;
/// Extended descriptor (context or data).
pub const TXD_CMD_DEXT: u8 = 1 << 5;
/// Interrupt delay enable.
pub const TXD_CMD_IDE: u8 = 1 << 7;
/// Descriptor type "data" (bits 20-23 of the second dword, with DEXT).
pub const TXD_DTYP_D: u32 = 1 << 20;
/// Context descriptor TUCMD: the L4 protocol is TCP (clear: UDP).
pub const TXD_TUCMD_TCP: u8 = 1 << 0;
/// Context descriptor TUCMD: the packet is IPv4.
pub const TXD_TUCMD_IP: u8 = 1 << 1;
/// Data descriptor POPTS: insert the IP header checksum.
pub const TXD_POPTS_IXSM: u8 = 1 << 0;
/// Data descriptor POPTS: insert the TCP/UDP checksum.
pub const TXD_POPTS_TXSM: u8 = 1 << 1;
/// TX status (byte 12 of every TX descriptor): descriptor done.
pub const TXD_STAT_DD: u8 = 1 << 0;
/// TX status: excess collisions (the frame was not sent).
pub const TXD_STAT_EC: u8 = 1 << 1;
/// TX status: late collision (the frame was not sent).
pub const TXD_STAT_LC: u8 = 1 << 2;

/// A device-written descriptor that makes no sense: the device is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DescError {
    /// A write-back without end-of-packet: the driver's buffers hold the
    /// largest frame the receiver accepts (long packets off), so a frame
    /// never spans descriptors.
    NoEndOfPacket {
        /// The ring slot.
        slot: u16,
    },
    /// A length of zero, shorter than an Ethernet header, or longer than
    /// the buffer or the largest frame.
    BadLength {
        /// The ring slot.
        slot: u16,
        /// The length the device wrote.
        len: u16,
        /// The most it may be.
        max: u16,
    },
    /// Status bits that contradict each other or the configuration (an
    /// error bit for a check not made, a VLAN strip never enabled).
    BadStatus {
        /// The ring slot.
        slot: u16,
        /// The status and error dword.
        status: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// The done bit on a descriptor the driver never posted (or already
    /// took back).
    DoneNotPosted {
        /// Which ring.
        ring: &'static str,
        /// The ring slot.
        slot: u16,
    },
    /// The device's head register outside the ring, or outside the part of
    /// it the driver posted.
    BadHead {
        /// Which ring.
        ring: &'static str,
        /// The head the device reported.
        head: u32,
        /// Descriptors in the ring.
        size: u16,
        /// The next descriptor the driver expects back.
        next: u16,
        /// The driver's tail.
        tail: u16,
    },
}

impl fmt::Display for DescError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DescError::NoEndOfPacket { slot } => write!(
                f,
                "RX descriptor {slot} written back without end-of-packet, though every buffer holds the largest frame; reset the device"
            ),
            DescError::BadLength { slot, len, max } => write!(
                f,
                "RX descriptor {slot} written back with length {len}, outside {ETH_HLEN}..={max}; reset the device"
            ),
            DescError::BadStatus { slot, status, why } => {
                write!(f, "RX descriptor {slot} written back with status {status:#010x}: {why}; reset the device")
            }
            DescError::DoneNotPosted { ring, slot } => write!(
                f,
                "the device marked {ring} descriptor {slot} done, but the driver never posted it; reset the device"
            ),
            DescError::BadHead { ring, head, size, next, tail } => write!(
                f,
                "the device's {ring} head is {head}, outside the posted descriptors {next}..{tail} of a {size}-descriptor ring; reset the device"
            ),
        }
    }
}

impl core::error::Error for DescError {}

/// The extended RX descriptor in the format the driver writes: the buffer's
/// bus address, and zeros where the device will write its status.
pub fn rx_read_format(buffer_bus_addr: u64) -> [u8; DESC_LEN] {
    let mut d = [0u8; DESC_LEN];
    d[..8].copy_from_slice(&buffer_bus_addr.to_le_bytes());
    d
}

/// A copy of an extended RX descriptor in the write-back format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxWriteback {
    /// MRQ dword (RSS type and queue; zero without RSS).
    pub mrq: u32,
    /// The IP id (low half) and packet checksum (high half), or the RSS
    /// hash when `RXCSUM.PCSD` is set.
    pub hi_dword: u32,
    /// Status (bits 0-19) and errors (bits 20-31).
    pub status_error: u32,
    /// Bytes written into the buffer.
    pub length: u16,
    /// The stripped VLAN tag, when [`RXD_STAT_VP`] is set.
    pub vlan: u16,
}

impl RxWriteback {
    /// Decodes a 16-byte copy.
    pub fn from_bytes(b: &[u8; DESC_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        RxWriteback {
            mrq: u32_at(0),
            hi_dword: u32_at(4),
            status_error: u32_at(8),
            length: u16::from_le_bytes([b[12], b[13]]),
            vlan: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// Encodes it (the device side: the hosted model and tests).
    pub fn to_bytes(&self) -> [u8; DESC_LEN] {
        let mut d = [0u8; DESC_LEN];
        d[0..4].copy_from_slice(&self.mrq.to_le_bytes());
        d[4..8].copy_from_slice(&self.hi_dword.to_le_bytes());
        d[8..12].copy_from_slice(&self.status_error.to_le_bytes());
        d[12..14].copy_from_slice(&self.length.to_le_bytes());
        d[14..16].copy_from_slice(&self.vlan.to_le_bytes());
        d
    }

    /// Whether the device is done with the descriptor.
    pub fn done(&self) -> bool {
        self.status_error & RXD_STAT_DD != 0
    }
}

/// What the device says about a frame's checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxChecksum {
    /// The IPv4 header checksum: `None` when not checked, `Some(true)`
    /// when good.
    pub ip: Option<bool>,
    /// The TCP or UDP checksum: `None` when not checked, `Some(true)` when
    /// good.
    pub l4: Option<bool>,
    /// The checked L4 protocol is UDP (else TCP), when `l4` is `Some`.
    pub udp: bool,
}

/// A parsed RX write-back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxParsed {
    /// The device has not written the descriptor back yet.
    NotDone,
    /// A frame of `len` bytes.
    Frame {
        /// Its length (no FCS: the receiver strips it).
        len: u16,
        /// The device's checksum verdicts.
        csum: RxChecksum,
    },
    /// A frame the device received with errors (CRC, symbol, sequence,
    /// carrier extension, data): dropped, its buffer re-posted.
    Errored {
        /// The error bits.
        errors: u32,
    },
}

/// Parses the write-back `wb` of RX slot `slot`, for buffers of
/// `buf_len` bytes and frames of at most `max_frame` bytes. Never panics.
pub fn parse_rx(
    slot: u16,
    wb: &RxWriteback,
    buf_len: u16,
    max_frame: u16,
) -> Result<RxParsed, DescError> {
    let s = wb.status_error;
    if s & RXD_STAT_DD == 0 {
        return Ok(RxParsed::NotDone);
    }
    if s & RXD_STAT_EOP == 0 {
        return Err(DescError::NoEndOfPacket { slot });
    }
    let max = buf_len.min(max_frame);
    if s & RXD_ERR_FRAME != 0 {
        // The frame is spoiled; its length is not used, but it is still
        // the device's word about a buffer it wrote.
        if wb.length > max {
            return Err(DescError::BadLength {
                slot,
                len: wb.length,
                max,
            });
        }
        return Ok(RxParsed::Errored {
            errors: s & RXD_ERR_FRAME,
        });
    }
    if usize::from(wb.length) < ETH_HLEN || wb.length > max {
        return Err(DescError::BadLength {
            slot,
            len: wb.length,
            max,
        });
    }
    if s & RXD_STAT_VP != 0 {
        return Err(DescError::BadStatus {
            slot,
            status: s,
            why: "a stripped VLAN tag, but VLAN stripping is off",
        });
    }
    if s & RXD_ERR_IPE != 0 && s & RXD_STAT_IPCS == 0 {
        return Err(DescError::BadStatus {
            slot,
            status: s,
            why: "an IP checksum error for a checksum not checked",
        });
    }
    if s & RXD_ERR_TCPE != 0 && s & RXD_STAT_TCPCS == 0 {
        return Err(DescError::BadStatus {
            slot,
            status: s,
            why: "a TCP/UDP checksum error for a checksum not checked",
        });
    }
    if s & RXD_STAT_UDPCS != 0 && s & RXD_STAT_TCPCS == 0 {
        return Err(DescError::BadStatus {
            slot,
            status: s,
            why: "a UDP checksum checked without the L4 checksum bit",
        });
    }
    let csum = if s & RXD_STAT_IXSM != 0 {
        RxChecksum::default()
    } else {
        RxChecksum {
            ip: (s & RXD_STAT_IPCS != 0).then_some(s & RXD_ERR_IPE == 0),
            l4: (s & RXD_STAT_TCPCS != 0).then_some(s & RXD_ERR_TCPE == 0),
            udp: s & RXD_STAT_UDPCS != 0,
        }
    };
    Ok(RxParsed::Frame {
        len: wb.length,
        csum,
    })
}

/// Checksums the device is asked to insert into a frame it sends (a TX
/// context descriptor). Offsets count from the frame's first byte (the
/// Ethernet header).
///
/// As on the hardware, the TCP/UDP checksum is the ones'-complement sum
/// from `l4_start` to the end (or `l4_end`, inclusive) *including* the
/// checksum field, so the sender puts the pseudo-header's folded sum in
/// the field first (as Linux does for `CHECKSUM_PARTIAL`). The IPv4 header
/// checksum is computed over `ip_start..=ip_end` with the field zeroed
/// first by the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxChecksum {
    /// Insert the IPv4 header checksum: (start of the header, offset of the
    /// checksum field, last byte of the header).
    pub ip: Option<(u8, u8, u16)>,
    /// Insert the TCP/UDP checksum: (start of the L4 header, offset of the
    /// checksum field, last byte summed or 0 for the end of the frame).
    pub l4: Option<(u8, u8, u16)>,
    /// The L4 protocol is TCP (else UDP); for the descriptor's TUCMD.
    pub tcp: bool,
    /// The packet is IPv4 (else IPv6); for the descriptor's TUCMD.
    pub ipv4: bool,
}

impl TxChecksum {
    /// The checksums of an IPv4 UDP or TCP frame with an untagged Ethernet
    /// header and an IPv4 header of `ip_hdr_len` bytes: both the IP header
    /// checksum and the L4 checksum. The caller stores the pseudo-header
    /// sum in the L4 checksum field.
    pub fn ipv4(ip_hdr_len: u8, tcp: bool) -> Self {
        let ip_start = ETH_HLEN as u8;
        let l4_start = ip_start.saturating_add(ip_hdr_len);
        let l4_field = if tcp { 16 } else { 6 };
        TxChecksum {
            ip: Some((
                ip_start,
                ip_start + 10,
                u16::from(l4_start).saturating_sub(1),
            )),
            l4: Some((l4_start, l4_start.saturating_add(l4_field), 0)),
            tcp,
            ipv4: true,
        }
    }

    /// Checks that the offsets lie within a frame of `len` bytes and in
    /// order.
    pub fn check(&self, len: usize) -> Result<(), &'static str> {
        for (start, field, end) in self.ip.iter().chain(self.l4.iter()) {
            let (start, field, end) = (usize::from(*start), usize::from(*field), usize::from(*end));
            if field < start || field.saturating_add(2) > len {
                return Err("the checksum field lies before its start or past the frame");
            }
            if end != 0 && (end < field.saturating_add(1) || end >= len) {
                return Err("the checksum range ends before its field or past the frame");
            }
        }
        Ok(())
    }
}

/// A legacy TX descriptor for one whole frame in one buffer.
pub fn tx_legacy(bus_addr: u64, len: u16) -> [u8; DESC_LEN] {
    let mut d = [0u8; DESC_LEN];
    d[0..8].copy_from_slice(&bus_addr.to_le_bytes());
    d[8..10].copy_from_slice(&len.to_le_bytes());
    // d[10]: CSO, unused; d[11]: command.
    d[11] = TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS;
    d
}

/// A TX context descriptor for the checksums in `c`.
pub fn tx_context(c: &TxChecksum) -> [u8; DESC_LEN] {
    let mut d = [0u8; DESC_LEN];
    let (ipcss, ipcso, ipcse) = c.ip.unwrap_or((0, 0, 0));
    let (tucss, tucso, tucse) = c.l4.unwrap_or((0, 0, 0));
    d[0] = ipcss;
    d[1] = ipcso;
    d[2..4].copy_from_slice(&ipcse.to_le_bytes());
    d[4] = tucss;
    d[5] = tucso;
    d[6..8].copy_from_slice(&tucse.to_le_bytes());
    // cmd_and_length: no payload length (no TSO), DTYP 0 (context), TUCMD.
    let mut tucmd = TXD_CMD_DEXT | TXD_CMD_RS;
    if c.tcp {
        tucmd |= TXD_TUCMD_TCP;
    }
    if c.ipv4 {
        tucmd |= TXD_TUCMD_IP;
    }
    d[11] = tucmd;
    d
}

/// A TX data descriptor (after a context descriptor) for one whole frame
/// with the checksums of `c` inserted.
pub fn tx_data(bus_addr: u64, len: u16, c: &TxChecksum) -> [u8; DESC_LEN] {
    let mut d = [0u8; DESC_LEN];
    d[0..8].copy_from_slice(&bus_addr.to_le_bytes());
    let lower = u32::from(len)
        | TXD_DTYP_D
        | (u32::from(TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS | TXD_CMD_DEXT) << 24);
    d[8..12].copy_from_slice(&lower.to_le_bytes());
    let mut popts = 0;
    if c.ip.is_some() {
        popts |= TXD_POPTS_IXSM;
    }
    if c.l4.is_some() {
        popts |= TXD_POPTS_TXSM;
    }
    d[13] = popts;
    d
}

/// The status byte of a TX descriptor copy (every TX format has it at byte
/// 12).
pub fn tx_status(d: &[u8; DESC_LEN]) -> u8 {
    d[12]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wb(status: u32, len: u16) -> RxWriteback {
        RxWriteback {
            mrq: 0,
            hi_dword: 0,
            status_error: status,
            length: len,
            vlan: 0,
        }
    }

    #[test]
    fn round_trip_and_not_done() {
        let w = RxWriteback {
            mrq: 1,
            hi_dword: 2,
            status_error: 3,
            length: 4,
            vlan: 5,
        };
        assert_eq!(RxWriteback::from_bytes(&w.to_bytes()), w);
        assert_eq!(parse_rx(0, &wb(0, 60), 2048, 1522), Ok(RxParsed::NotDone));
        // A posted descriptor reads as not done.
        let posted = RxWriteback::from_bytes(&rx_read_format(0xdead_beef_0000));
        assert!(!posted.done());
    }

    #[test]
    fn frames_and_checksums() {
        let s = RXD_STAT_DD | RXD_STAT_EOP | RXD_STAT_IPCS | RXD_STAT_TCPCS | RXD_STAT_UDPCS;
        assert_eq!(
            parse_rx(3, &wb(s, 60), 2048, 1522),
            Ok(RxParsed::Frame {
                len: 60,
                csum: RxChecksum {
                    ip: Some(true),
                    l4: Some(true),
                    udp: true
                }
            })
        );
        assert_eq!(
            parse_rx(3, &wb(s | RXD_ERR_TCPE, 1514), 2048, 1522),
            Ok(RxParsed::Frame {
                len: 1514,
                csum: RxChecksum {
                    ip: Some(true),
                    l4: Some(false),
                    udp: true
                }
            })
        );
        assert_eq!(
            parse_rx(
                3,
                &wb(
                    RXD_STAT_DD | RXD_STAT_EOP | RXD_STAT_IXSM | RXD_STAT_IPCS,
                    100
                ),
                2048,
                1522
            ),
            Ok(RxParsed::Frame {
                len: 100,
                csum: RxChecksum::default()
            })
        );
        assert_eq!(
            parse_rx(
                3,
                &wb(RXD_STAT_DD | RXD_STAT_EOP | RXD_ERR_CE, 64),
                2048,
                1522
            ),
            Ok(RxParsed::Errored { errors: RXD_ERR_CE })
        );
    }

    #[test]
    fn nonsense_is_an_error() {
        let ok = RXD_STAT_DD | RXD_STAT_EOP;
        assert!(matches!(
            parse_rx(1, &wb(RXD_STAT_DD, 60), 2048, 1522),
            Err(DescError::NoEndOfPacket { slot: 1 })
        ));
        assert!(matches!(
            parse_rx(1, &wb(ok, 0), 2048, 1522),
            Err(DescError::BadLength { .. })
        ));
        assert!(matches!(
            parse_rx(1, &wb(ok, 13), 2048, 1522),
            Err(DescError::BadLength { .. })
        ));
        assert!(matches!(
            parse_rx(1, &wb(ok, 1523), 2048, 1522),
            Err(DescError::BadLength { .. })
        ));
        assert!(matches!(
            parse_rx(1, &wb(ok, 65535), 2048, 1522),
            Err(DescError::BadLength { .. })
        ));
        assert!(matches!(
            parse_rx(1, &wb(ok | RXD_ERR_CE, 4000), 2048, 1522),
            Err(DescError::BadLength { .. })
        ));
        assert!(matches!(
            parse_rx(1, &wb(ok | RXD_STAT_VP, 60), 2048, 1522),
            Err(DescError::BadStatus { .. })
        ));
        assert!(matches!(
            parse_rx(1, &wb(ok | RXD_ERR_IPE, 60), 2048, 1522),
            Err(DescError::BadStatus { .. })
        ));
        assert!(matches!(
            parse_rx(1, &wb(ok | RXD_ERR_TCPE, 60), 2048, 1522),
            Err(DescError::BadStatus { .. })
        ));
        assert!(matches!(
            parse_rx(1, &wb(ok | RXD_STAT_UDPCS, 60), 2048, 1522),
            Err(DescError::BadStatus { .. })
        ));
        // The buffer bounds the length when it is the smaller.
        assert!(matches!(
            parse_rx(1, &wb(ok, 1100), 1024, 1522),
            Err(DescError::BadLength { max: 1024, .. })
        ));
    }

    #[test]
    fn tx_formats() {
        let d = tx_legacy(0x1234_5678_9abc, 1514);
        assert_eq!(&d[0..8], &0x1234_5678_9abcu64.to_le_bytes());
        assert_eq!(u16::from_le_bytes([d[8], d[9]]), 1514);
        assert_eq!(d[11], TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS);
        assert_eq!(tx_status(&d), 0);
        let c = TxChecksum::ipv4(20, false);
        assert_eq!(c.ip, Some((14, 24, 33)));
        assert_eq!(c.l4, Some((34, 40, 0)));
        assert!(c.check(42).is_ok());
        assert!(c.check(41).is_err());
        let ctx = tx_context(&c);
        assert_eq!(ctx[11] & TXD_CMD_DEXT, TXD_CMD_DEXT);
        assert_eq!(
            u32::from_le_bytes([ctx[8], ctx[9], ctx[10], ctx[11]]) & (0xf << 20),
            0
        );
        let data = tx_data(0x1000, 60, &c);
        let lower = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
        assert_eq!(lower & 0xfffff, 60);
        assert_eq!(lower & (0xf << 20), TXD_DTYP_D);
        assert_eq!(data[13], TXD_POPTS_IXSM | TXD_POPTS_TXSM);
    }
}
