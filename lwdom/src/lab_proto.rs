//! What the lab's guest programs and dom0 programs agree on: the xenstore
//! keys they exchange refs and ports through, the page pattern of the
//! `grant` scenario, the request and response of the `ring` scenario, and
//! the disk pattern of the `blk` scenario.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `grant`: the two grant refs, "A B" (relative to the guest's home).
pub const GRANT_REFS_KEY: &str = "data/grant-refs";
/// `grant`: the unbound port dom0 binds to.
pub const GRANT_PORT_KEY: &str = "data/grant-port";
/// `grant`: the guest tried ending access while dom0 maps: dom0 may unmap.
pub const GRANT_STEP_KEY: &str = "data/grant-step";
/// `grant`: the guest's verdict.
pub const GRANT_RESULT_KEY: &str = "data/grant-result";
/// `ring`: the ring's grant ref.
pub const RING_REF_KEY: &str = "data/ring-ref";
/// `ring`: the unbound port dom0 binds to.
pub const RING_PORT_KEY: &str = "data/ring-port";
/// `ring`: the guest's verdict.
pub const RING_RESULT_KEY: &str = "data/ring-result";
/// `ring`: round trips the guest makes.
pub const RING_ROUND_TRIPS: u64 = 100_000;

/// Bytes of the pattern the guest writes at the start of each granted
/// page in `grant`.
pub const PATTERN_LEN: usize = 2048;
/// Where in page A dom0 writes its reply.
pub const REPLY_OFFSET: usize = 2048;
/// dom0's reply.
pub const REPLY: &[u8] = b"dom0 mapped this page and checked the pattern";

/// The pattern byte at `offset` of page `page` (0 for A, 1 for B).
pub fn pattern(page: u8, offset: usize) -> u8 {
    (offset as u8).wrapping_mul(7).wrapping_add(3).wrapping_add(page.wrapping_mul(101))
}

/// A `ring` request: dom0 answers `value` with [`answer`]`(value)`.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoReq {
    /// Sequence number.
    pub id: u64,
    /// Payload.
    pub value: u64,
}

/// A `ring` response.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoRsp {
    /// The request's sequence number.
    pub id: u64,
    /// [`answer`] of the request's value.
    pub value: u64,
}

/// What dom0 answers to a request's value.
pub fn answer(value: u64) -> u64 {
    value.rotate_left(13) ^ 0x5a5a_5a5a_5a5a_5a5a
}

/// The value of request `id`.
pub fn request_value(id: u64) -> u64 {
    id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// `pci-nic`: dom0's address on its e1000 (on the QEMU hub the guest's
/// passed-through e1000e is on).
pub const NIC_DOM0_IP: [u8; 4] = [10, 0, 12, 1];
/// `pci-nic`: the guest's address on its e1000e.
pub const NIC_GUEST_IP: [u8; 4] = [10, 0, 12, 2];
/// `pci-nic`: the prefix length of the hub's network.
pub const NIC_PREFIX: u8 = 24;
/// `pci-nic`: the guest's UDP echo port.
pub const NIC_UDP_ECHO_PORT: u16 = 7;
/// `pci-nic`: the largest UDP payload in one 1500-byte IPv4 packet.
pub const NIC_UDP_MAX: usize = 1472;
/// `pci-nic`: written by the guest: `ready` once smoltcp answers on the
/// e1000e (dom0 may ping and send datagrams).
pub const NIC_STAGE_KEY: &str = "data/pcinic-stage";
/// `pci-nic`: written by dom0 when its checks ended: `done`, or
/// `failed <why>`; the guest then reports its counters and powers off.
pub const NIC_DONE_KEY: &str = "data/pcinic-done";
/// `pci-nic`: the guest's verdict.
pub const NIC_RESULT_KEY: &str = "data/pcinic-result";

/// `pci-nic`: the payload of the UDP datagram of `size` bytes: the size
/// (big-endian `u16`) then a pattern seeded by it, so that an echo of the
/// wrong datagram, a cut one or a shifted one shows.
pub fn nic_udp_payload(size: usize, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = match i {
            0 => (size >> 8) as u8,
            1 => size as u8,
            _ => {
                (i as u8).wrapping_mul(11).wrapping_add(size as u8)
                    ^ ((i >> 8) as u8).wrapping_mul(0x35)
            }
        };
    }
}

/// `pci-nic`: whether `data` is the payload of the UDP datagram of its own
/// length (at most [`NIC_UDP_MAX`] bytes).
pub fn nic_udp_check(data: &[u8]) -> bool {
    let mut want = [0u8; NIC_UDP_MAX];
    match want.get_mut(..data.len()) {
        Some(w) => {
            nic_udp_payload(data.len(), w);
            w == data
        }
        None => false,
    }
}

/// `blk`: bytes of a disk sector.
pub const BLK_SECTOR: usize = 512;

/// `blk`: the bytes of sector `sector` in the pattern of pass `pass`: the
/// sector number and the pass (little-endian `u64`s), then a stream seeded
/// by both, so a sector found in the wrong place or from the wrong pass
/// says where it came from ([`blk_describe`]).
pub fn blk_sector(out: &mut [u8; BLK_SECTOR], sector: u64, pass: u64) {
    let (head, rest) = out.split_at_mut(16);
    head[..8].copy_from_slice(&sector.to_le_bytes());
    head[8..].copy_from_slice(&pass.to_le_bytes());
    let mut x = sector.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pass.wrapping_mul(0xD1B5_4A32_D192_ED03);
    for w in rest.chunks_exact_mut(8) {
        // splitmix64
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

/// `blk`: what a sector that does not hold the expected pattern holds, for
/// messages: zeroes, or the sector and pass its first 16 bytes claim.
pub fn blk_describe(data: &[u8]) -> alloc::string::String {
    if data.iter().all(|&b| b == 0) {
        return "zeroes".into();
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        if let Some(src) = data.get(i..i + 8) {
            b.copy_from_slice(src);
        }
        u64::from_le_bytes(b)
    };
    alloc::format!("a sector claiming to be sector {} of pass {}", word(0), word(8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_udp_payloads_say_their_size() {
        let mut p = [0u8; NIC_UDP_MAX];
        for size in [1, 2, 3, 255, 256, 1000, NIC_UDP_MAX] {
            nic_udp_payload(size, &mut p[..size]);
            assert!(nic_udp_check(&p[..size]), "size {size}");
        }
        nic_udp_payload(300, &mut p[..300]);
        assert!(!nic_udp_check(&p[..299]));
        assert!(!nic_udp_check(&p[1..300]));
        p[200] ^= 0x40;
        assert!(!nic_udp_check(&p[..300]));
        assert!(!nic_udp_check(&[0u8; NIC_UDP_MAX + 1]));
    }

    #[test]
    fn entries_have_the_c_layout() {
        assert_eq!(core::mem::size_of::<EchoReq>(), 16);
        assert_eq!(core::mem::size_of::<EchoRsp>(), 16);
        assert_ne!(pattern(0, 5), pattern(1, 5));
        assert_ne!(answer(request_value(1)), request_value(1));
    }

    #[test]
    fn blk_sectors_differ_by_place_and_pass_and_say_where_they_come_from() {
        let (mut a, mut b, mut c) = ([0u8; BLK_SECTOR], [0u8; BLK_SECTOR], [0u8; BLK_SECTOR]);
        blk_sector(&mut a, 7, 1);
        blk_sector(&mut b, 8, 1);
        blk_sector(&mut c, 7, 2);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a[16..], b[16..]);
        assert_eq!(blk_describe(&c), "a sector claiming to be sector 7 of pass 2");
        assert_eq!(blk_describe(&[0u8; BLK_SECTOR]), "zeroes");
    }
}
