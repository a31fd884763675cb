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

/// Slicing-by-8 tables: `CRC_TABLES[0]` is the classic bytewise table of the
/// reflected polynomial; `CRC_TABLES[k][b]` is the CRC of byte `b` followed
/// by `k` zero bytes, so eight input bytes fold into the state with eight
/// independent lookups instead of eight dependent ones.
const fn crc_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
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
        tables[0][i] = c;
        i += 1;
    }
    let mut t = 1;
    while t < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[t - 1][i];
            tables[t][i] = tables[0][(prev & 0xff) as usize] ^ (prev >> 8);
            i += 1;
        }
        t += 1;
    }
    tables
}

static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

/// Feeds `bytes` to a running (non-complemented) CRC-32 state, one byte at
/// a time (the reference the sliced version is tested against).
pub fn crc32_update_bytewise(mut state: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        state = CRC_TABLES[0][usize::from((state as u8) ^ b)] ^ (state >> 8);
    }
    state
}

/// Feeds `bytes` to a running (non-complemented) CRC-32 state, eight bytes
/// per step (slicing-by-8), the tail bytewise.
pub fn crc32_update(mut state: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let lo = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ state;
        let hi = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        let [l0, l1, l2, l3] = lo.to_le_bytes();
        let [h0, h1, h2, h3] = hi.to_le_bytes();
        state = CRC_TABLES[7][usize::from(l0)]
            ^ CRC_TABLES[6][usize::from(l1)]
            ^ CRC_TABLES[5][usize::from(l2)]
            ^ CRC_TABLES[4][usize::from(l3)]
            ^ CRC_TABLES[3][usize::from(h0)]
            ^ CRC_TABLES[2][usize::from(h1)]
            ^ CRC_TABLES[1][usize::from(h2)]
            ^ CRC_TABLES[0][usize::from(h3)];
    }
    crc32_update_bytewise(state, chunks.remainder())
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
    fn bytewise_check_value() {
        assert_eq!(!crc32_update_bytewise(!0, b"123456789"), 0xcbf4_3926);
    }

    proptest::proptest! {
        #[test]
        fn sliced_matches_bytewise(
            state in proptest::prelude::any::<u32>(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            split in 0usize..300,
        ) {
            let split = split.min(bytes.len());
            let (a, b) = bytes.split_at(split);
            let reference = crc32_update_bytewise(state, &bytes);
            proptest::prop_assert_eq!(crc32_update(state, &bytes), reference);
            // Feeding in two pieces at any boundary gives the same state.
            proptest::prop_assert_eq!(crc32_update(crc32_update(state, a), b), reference);
        }
    }

    #[test]
    fn short_or_optioned_packets_have_no_icrc() {
        assert_eq!(icrc(&[0x45; 39]), None);
        assert!(icrc(&[0x45; 40]).is_some());
        assert_eq!(icrc(&[0x46; 44]), None);
    }
}
