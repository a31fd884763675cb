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
//!
//! # Two implementations
//! The portable one is slicing-by-8 (eight table lookups per eight bytes).
//! On x86-64 targets with SSE2 (hosted builds; not the kernel-style
//! `x86_64-unknown-none`, which keeps the vector registers off), a CPU
//! with PCLMULQDQ and SSSE3 (detected once with CPUID) folds 16 bytes per
//! step with carry-less multiplications and ends with a Barrett
//! reduction, the method of Intel's white paper "Fast CRC Computation for
//! Generic Polynomials Using PCLMULQDQ Instruction"; a last partial block
//! is shifted in with PSHUFB. Both give the same CRC (tested against each
//! other and the bytewise reference on random inputs and masks). The
//! masked fields are ORed in as the bytes are loaded: no copy of the
//! headers is made.

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
/// per step (slicing-by-8), the tail bytewise: the portable
/// implementation.
pub fn crc32_update_portable(mut state: u32, bytes: &[u8]) -> u32 {
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

/// Feeds `bytes` to a running (non-complemented) CRC-32 state, with the
/// fastest implementation this CPU has (see the [module docs](self)).
pub fn crc32_update(state: u32, bytes: &[u8]) -> u32 {
    crc32_update_masked(state, bytes, &[0; MASK_LEN])
}

/// Bytes at the start of a packet that [`crc32_update_masked`] can mask.
pub const MASK_LEN: usize = 48;

/// The ICRC's mask over the start of the IPv4 packet: ones over the type
/// of service, the time to live, the header checksum, the UDP checksum,
/// and the BTH's FECN, BECN and reserved bits.
const ICRC_MASK: [u8; MASK_LEN] = {
    let mut m = [0u8; MASK_LEN];
    m[1] = 0xff;
    m[8] = 0xff;
    m[10] = 0xff;
    m[11] = 0xff;
    m[IPV4_HEADER_LEN + 6] = 0xff;
    m[IPV4_HEADER_LEN + 7] = 0xff;
    m[IPV4_HEADER_LEN + UDP_HEADER_LEN + 4] = 0xff;
    m
};

/// Feeds `bytes`, each of its first [`MASK_LEN`] bytes ORed with the byte
/// of `mask` at the same offset, to a running (non-complemented) CRC-32
/// state.
pub fn crc32_update_masked(state: u32, bytes: &[u8], mask: &[u8; MASK_LEN]) -> u32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if bytes.len() >= clmul::MIN_LEN && clmul::available() {
        // SAFETY: `available` found PCLMULQDQ and SSSE3 (SSE2 is in the
        // target's baseline, so the OS keeps the vector registers).
        return unsafe { clmul::update_masked(state, bytes, mask) };
    }
    crc32_update_masked_portable(state, bytes, mask)
}

/// [`crc32_update_masked`] with the portable implementation.
pub fn crc32_update_masked_portable(state: u32, bytes: &[u8], mask: &[u8; MASK_LEN]) -> u32 {
    let n = bytes.len().min(MASK_LEN);
    let mut head = [0u8; MASK_LEN];
    for ((h, b), m) in head.iter_mut().zip(bytes).zip(mask) {
        *h = b | m;
    }
    let state = crc32_update_portable(state, head.get(..n).unwrap_or(&[]));
    crc32_update_portable(state, bytes.get(n..).unwrap_or(&[]))
}

/// The ICRC, in wire byte order, of an IPv4 packet (20-byte header, no
/// options) carrying UDP and an InfiniBand transport packet, given
/// without its trailing ICRC. `None` when `ipv4_packet` is too short to
/// hold the IPv4, UDP and base transport headers or has IPv4 options.
pub fn icrc(ipv4_packet: &[u8]) -> Option<[u8; ICRC_LEN]> {
    const MASKED: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN + BTH_LEN;
    if ipv4_packet.len() < MASKED || ipv4_packet.first() != Some(&0x45) {
        return None;
    }
    let state = crc32_update_masked(SEED_AFTER_LRH, ipv4_packet, &ICRC_MASK);
    Some((!state).to_le_bytes())
}

/// The PCLMULQDQ implementation (x86-64 with SSE2).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod clmul {
    use core::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_clmulepi64_si128, _mm_cvtsi128_si32, _mm_cvtsi32_si128,
        _mm_loadu_si128, _mm_or_si128, _mm_set_epi32, _mm_set_epi64x, _mm_shuffle_epi8,
        _mm_srli_si128, _mm_xor_si128,
    };
    use core::sync::atomic::{AtomicU8, Ordering};

    use super::MASK_LEN;

    /// The shortest input folded (one block); shorter ones go the
    /// portable way.
    pub const MIN_LEN: usize = 16;

    // The constants of the bit-reflected polynomial 0x04C11DB7 (Intel's
    // white paper, in the form Linux and zlib use): K3 and K4 fold 128 bits
    // over the next 128 (x^(128+32) and x^(128-32) mod P, reflected and
    // shifted once), K5 takes the last 96 bits to 64 (x^64 mod P), and the
    // Barrett reduction uses P (with its x^32 term) and floor(x^64 / P).
    const K3: i64 = 0x1_7519_97d0;
    const K4: i64 = 0x0_ccaa_009e;
    const K5: i64 = 0x1_63cd_6124;
    const P_X: i64 = 0x1_db71_0641;
    const U_PRIME: i64 = 0x1_f701_1641;

    /// PSHUFB controls for byte shifts by a variable count `r` (1..=15):
    /// the 16 bytes at `r` shift left (towards later bytes) by `16 - r`,
    /// those at `16 + r` shift right by `r` (0x80 selects a zero).
    static SHIFTS: [u8; 48] = {
        let mut t = [0x80u8; 48];
        let mut i = 0;
        while i < 16 {
            t[16 + i] = i as u8;
            i += 1;
        }
        t
    };
    /// At `r`: a mask keeping the last `r` bytes of 16.
    static LAST: [u8; 32] = {
        let mut t = [0u8; 32];
        let mut i = 16;
        while i < 32 {
            t[i] = 0xff;
            i += 1;
        }
        t
    };

    /// 0: not probed yet, 1: absent, 2: present.
    static FEATURES: AtomicU8 = AtomicU8::new(0);

    /// Whether the CPU has PCLMULQDQ and SSSE3 (CPUID leaf 1, ECX bits 1
    /// and 9), probed once.
    #[inline]
    pub fn available() -> bool {
        match FEATURES.load(Ordering::Relaxed) {
            0 => {
                // Every x86-64 CPU has CPUID and its leaf 1.
                let ecx = core::arch::x86_64::__cpuid(1).ecx;
                let has = ecx & (1 << 1) != 0 && ecx & (1 << 9) != 0;
                FEATURES.store(if has { 2 } else { 1 }, Ordering::Relaxed);
                has
            }
            v => v == 2,
        }
    }

    /// The 16 bytes at `at` of `s` (zeros if `s` is shorter).
    #[inline]
    #[target_feature(enable = "sse2")]
    fn load(s: &[u8], at: usize) -> __m128i {
        match s.get(at..at.saturating_add(16)) {
            // SAFETY: 16 readable bytes; the load is unaligned.
            Some(b) => unsafe { _mm_loadu_si128(b.as_ptr().cast()) },
            None => _mm_set_epi64x(0, 0),
        }
    }

    /// The 16 bytes at `at` of `bytes` (`at + 16 <= bytes.len()`), each
    /// ORed with the mask's byte at the same offset.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn block(bytes: &[u8], at: usize, mask: &[u8; MASK_LEN]) -> __m128i {
        let v = load(bytes, at);
        if at >= MASK_LEN {
            return v;
        }
        if at + 16 <= MASK_LEN {
            return _mm_or_si128(v, load(mask, at));
        }
        // Straddling the mask's end (not at the ICRC's offsets).
        let mut m = [0u8; 16];
        for (i, b) in m.iter_mut().enumerate() {
            *b = mask.get(at + i).copied().unwrap_or(0);
        }
        _mm_or_si128(v, load(&m, 0))
    }

    /// `a` times x^128 (folded with the constants `k`), plus `b`.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2")]
    fn fold(a: __m128i, b: __m128i, k: __m128i) -> __m128i {
        let lo = _mm_clmulepi64_si128(a, k, 0x00);
        let hi = _mm_clmulepi64_si128(a, k, 0x11);
        _mm_xor_si128(_mm_xor_si128(b, lo), hi)
    }

    /// The masked update of [`super::crc32_update_masked`], for inputs of
    /// at least [`MIN_LEN`] bytes: 16-byte blocks folded into one 128-bit
    /// remainder; a last partial block of `r` bytes joins by splitting
    /// the remainder (its first `r` bytes folded over the other `16 - r`
    /// followed by the `r` new ones); then the remainder reduced to 32
    /// bits.
    ///
    /// # Safety
    /// The CPU must have PCLMULQDQ, SSE2 and SSSE3 ([`available`]).
    #[target_feature(enable = "pclmulqdq,sse2,ssse3")]
    pub unsafe fn update_masked(state: u32, bytes: &[u8], mask: &[u8; MASK_LEN]) -> u32 {
        let len = bytes.len();
        let blocks = len / 16;
        if blocks == 0 {
            return super::crc32_update_masked_portable(state, bytes, mask);
        }
        let k3k4 = _mm_set_epi64x(K4, K3);
        let mut x = _mm_xor_si128(block(bytes, 0, mask), _mm_cvtsi32_si128(state as i32));
        for i in 1..blocks {
            x = fold(x, block(bytes, i * 16, mask), k3k4);
        }
        let r = len % 16;
        if r > 0 {
            // The last 16 bytes of the input, of which the last `r` are new.
            let t = _mm_and_si128(block(bytes, len - 16, mask), load(&LAST, r));
            let first = _mm_shuffle_epi8(x, load(&SHIFTS, r));
            let rest = _mm_or_si128(_mm_shuffle_epi8(x, load(&SHIFTS, 16 + r)), t);
            x = fold(first, rest, k3k4);
        }
        // 128 bits to 96: the low half times K4 onto the high one...
        let x = _mm_xor_si128(_mm_clmulepi64_si128(x, k3k4, 0x10), _mm_srli_si128(x, 8));
        // ... 96 to 64 with K5 ...
        let low32 = _mm_set_epi32(0, 0, 0, !0);
        let x = _mm_xor_si128(
            _mm_clmulepi64_si128(_mm_and_si128(x, low32), _mm_set_epi64x(0, K5), 0x00),
            _mm_srli_si128(x, 4),
        );
        // ... and a Barrett reduction to the 32-bit remainder (reflected:
        // it ends in bits 32..64).
        let pu = _mm_set_epi64x(U_PRIME, P_X);
        let t1 = _mm_clmulepi64_si128(_mm_and_si128(x, low32), pu, 0x10);
        let t2 = _mm_clmulepi64_si128(_mm_and_si128(t1, low32), pu, 0x00);
        _mm_cvtsi128_si32(_mm_srli_si128(_mm_xor_si128(x, t2), 4)) as u32
    }
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
        fn masked_matches_portable_and_bytewise(
            state in proptest::prelude::any::<u32>(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            mask in proptest::collection::vec(proptest::prelude::any::<u8>(), MASK_LEN),
        ) {
            let mut m = [0u8; MASK_LEN];
            m.copy_from_slice(&mask);
            let masked: alloc::vec::Vec<u8> = bytes
                .iter()
                .enumerate()
                .map(|(i, b)| b | m.get(i).copied().unwrap_or(0))
                .collect();
            let reference = crc32_update_bytewise(state, &masked);
            proptest::prop_assert_eq!(crc32_update_masked_portable(state, &bytes, &m), reference);
            proptest::prop_assert_eq!(crc32_update_masked(state, &bytes, &m), reference);
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            if clmul::available() && bytes.len() >= clmul::MIN_LEN {
                // SAFETY: PCLMULQDQ and SSSE3 are there.
                let c = unsafe { clmul::update_masked(state, &bytes, &m) };
                proptest::prop_assert_eq!(c, reference);
            }
        }

        #[test]
        fn sliced_matches_bytewise(
            state in proptest::prelude::any::<u32>(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            split in 0usize..300,
        ) {
            let split = split.min(bytes.len());
            let (a, b) = bytes.split_at(split);
            let reference = crc32_update_bytewise(state, &bytes);
            proptest::prop_assert_eq!(crc32_update_portable(state, &bytes), reference);
            proptest::prop_assert_eq!(crc32_update(state, &bytes), reference);
            // Feeding in two pieces at any boundary gives the same state.
            proptest::prop_assert_eq!(crc32_update(crc32_update(state, a), b), reference);
        }
    }

    /// The CPU this runs on has PCLMULQDQ when CPUID says so, and the
    /// folded path agrees with the portable one on the catalogued check
    /// value (padded to a block).
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    #[test]
    fn clmul_check_value() {
        if !clmul::available() {
            return;
        }
        let input = b"123456789abcdefghijklmnopqrstuvwxyz";
        // SAFETY: PCLMULQDQ and SSSE3 are there.
        let c = unsafe { clmul::update_masked(!0, input, &[0; MASK_LEN]) };
        assert_eq!(c, crc32_update_bytewise(!0, input));
        // SAFETY: as above.
        let c = unsafe { clmul::update_masked(!0, &input[..16], &[0; MASK_LEN]) };
        assert_eq!(!crc32_update_bytewise(!0, &input[..16]), !c);
    }

    #[test]
    fn short_or_optioned_packets_have_no_icrc() {
        assert_eq!(icrc(&[0x45; 39]), None);
        assert!(icrc(&[0x45; 40]).is_some());
        assert_eq!(icrc(&[0x46; 44]), None);
    }
}
