//! The invariant CRC (ICRC) of a RoCE v2 packet (IBA vol. 1, annex A17.4.5
//! and 7.8.1).
//!
//! The ICRC is the CRC-32 of Ethernet (polynomial 0x04C11DB7, bit-reflected,
//! initial value all ones, final complement) computed over the fields that
//! do not change in flight, with those that may change replaced by ones:
//!
//! 1. eight bytes of `0xff`, standing for the InfiniBand local route header
//!    RoCE v2 does not have;
//! 2. the IPv4 header with the type of service (DSCP and ECN), the time to
//!    live and the header checksum set to all ones;
//! 3. the UDP header with its checksum set to all ones;
//! 4. the BTH with its eighth to fifteenth bits of the second word (FECN,
//!    BECN and the six reserved bits in front of the destination QP) set to
//!    all ones;
//! 5. every following byte up to the ICRC: the extended headers, the
//!    payload and its pad.
//!
//! The 32-bit result goes on the wire least significant byte first, like
//! the Ethernet FCS.

use crate::opcode::BTH_LEN;

/// IPv4 header length without options (the only length RoCE v2 uses here).
pub const IPV4_HEADER_LEN: usize = 20;
/// UDP header length.
pub const UDP_HEADER_LEN: usize = 8;
/// ICRC length.
pub const ICRC_LEN: usize = 4;

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// Feeds `bytes` to a running (non-complemented) CRC-32 state.
pub fn crc32_update(mut state: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        state = CRC_TABLE[usize::from((state as u8) ^ b)] ^ (state >> 8);
    }
    state
}

/// The CRC state after the initial all-ones value and the eight `0xff`
/// bytes that stand for the masked local route header.
pub const SEED_AFTER_LRH: u32 = 0xdebb_20e3;

/// The ICRC, in wire byte order, of an IPv4 packet (20-byte header, no
/// options) carrying UDP and an InfiniBand transport packet, given
/// without its trailing ICRC. `None` when `ipv4_packet` is too short to
/// hold the IPv4, UDP and base transport headers or has IPv4 options.
pub fn icrc(ipv4_packet: &[u8]) -> Option<[u8; ICRC_LEN]> {
    const MASKED: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN + BTH_LEN;
    let head = ipv4_packet.get(..MASKED)?;
    let rest = ipv4_packet.get(MASKED..)?;
    if head[0] != 0x45 {
        return None;
    }
    let mut pseudo = [0u8; MASKED];
    pseudo.copy_from_slice(head);
    // IPv4: type of service, time to live, header checksum.
    pseudo[1] = 0xff;
    pseudo[8] = 0xff;
    pseudo[10] = 0xff;
    pseudo[11] = 0xff;
    // UDP checksum.
    pseudo[IPV4_HEADER_LEN + 6] = 0xff;
    pseudo[IPV4_HEADER_LEN + 7] = 0xff;
    // BTH: FECN, BECN and reserved bits in front of the destination QP.
    pseudo[IPV4_HEADER_LEN + UDP_HEADER_LEN + 4] = 0xff;
    let state = crc32_update(SEED_AFTER_LRH, &pseudo);
    let state = crc32_update(state, rest);
    Some((!state).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        // The catalogued check value of CRC-32/ISO-HDLC.
        assert_eq!(!crc32_update(!0, b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn seed_is_eight_ones_bytes() {
        assert_eq!(crc32_update(!0, &[0xff; 8]), SEED_AFTER_LRH);
    }

    #[test]
    fn short_or_optioned_packets_have_no_icrc() {
        assert_eq!(icrc(&[0x45; 39]), None);
        assert!(icrc(&[0x45; 40]).is_some());
        assert_eq!(icrc(&[0x46; 44]), None);
    }
}
