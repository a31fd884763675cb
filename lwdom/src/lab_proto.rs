//! What the lab's guest programs and dom0 programs agree on: the xenstore
//! keys they exchange refs and ports through, the page pattern of the
//! `grant` scenario, the request and response of the `ring` scenario, the
//! disk pattern of the `blk` scenario, and the addresses, ports, payloads
//! and stream checksum of the `net` scenario.

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

/// `net`: dom0's address on its bridge (`xenbr0`).
pub const NET_DOM0_IP: [u8; 4] = [10, 0, 9, 1];
/// `net`: the guest's address.
pub const NET_GUEST_IP: [u8; 4] = [10, 0, 9, 2];
/// `net`: the prefix length of the lab's network.
pub const NET_PREFIX: u8 = 24;
/// `net`: the guest's UDP echo port.
pub const NET_UDP_ECHO_PORT: u16 = 7;
/// `net`: the guest's TCP port that receives a stream from dom0 (and
/// answers with its checksum).
pub const NET_TCP_SINK_PORT: u16 = 5001;
/// `net`: the guest's TCP port that sends a stream to dom0 (followed by its
/// checksum).
pub const NET_TCP_SOURCE_PORT: u16 = 5002;
/// `net`: as [`NET_TCP_SOURCE_PORT`], the stream during which dom0 unbinds
/// and rebinds the vif's backend.
pub const NET_TCP_REBIND_PORT: u16 = 5003;
/// `net`: bytes of each TCP stream.
pub const NET_TCP_BYTES: u64 = 16 << 20;
/// `net`: the largest UDP payload in one 1500-byte IPv4 packet.
pub const NET_UDP_MAX: usize = 1472;
/// `net`: where the guest is (`ready`: dom0 may ping and connect;
/// `rebind`: the rebind stream reached its gate, dom0 may unbind).
pub const NET_STAGE_KEY: &str = "data/net-stage";
/// `net`: written by dom0: `unbound`, then `rebound` (or `failed <why>`).
pub const NET_REBIND_KEY: &str = "data/net-rebind";
/// `net`: the guest's verdict.
pub const NET_RESULT_KEY: &str = "data/net-result";
/// `net`: where the rebind stream waits for dom0's unbind: it goes on
/// past this offset only slowly until dom0 says the backend is unbound, so
/// the unbind always falls in the middle of the stream.
pub const NET_REBIND_GATE: u64 = 6 << 20;

/// `net`: byte `offset` of TCP stream `stream` (the port it runs on): a
/// function of the offset within the page, of the page and of the stream,
/// so that a byte out of place or from the wrong stream shows.
pub fn net_stream_byte(stream: u16, offset: u64) -> u8 {
    let x = offset ^ (offset >> 12).wrapping_mul(0x9E37);
    (x as u8).wrapping_mul(31) ^ ((x >> 8) as u8) ^ (stream as u8).wrapping_mul(0x5B)
}

/// `net`: fills `out` with stream `stream` from byte `offset` on.
pub fn net_stream_fill(stream: u16, offset: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = net_stream_byte(stream, offset.wrapping_add(i as u64));
    }
}

/// `net`: the first offset in `data` (which starts at stream offset
/// `offset`) that does not hold stream `stream`'s pattern.
pub fn net_stream_mismatch(stream: u16, offset: u64, data: &[u8]) -> Option<u64> {
    data.iter()
        .enumerate()
        .find(|&(i, &b)| b != net_stream_byte(stream, offset.wrapping_add(i as u64)))
        .map(|(i, _)| offset.wrapping_add(i as u64))
}

/// `net`: the payload of the UDP datagram of `size` bytes: the size
/// (little-endian `u16`) then a pattern seeded by it, so an echo of the
/// wrong datagram, or a cut one, shows.
pub fn net_udp_payload(size: usize, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = match i {
            0 => size as u8,
            1 => (size >> 8) as u8,
            _ => (i as u8).wrapping_mul(7) ^ (size as u8).wrapping_mul(13) ^ ((i >> 8) as u8),
        };
    }
}

/// `net`: whether `data` is the payload of the UDP datagram of its own
/// length.
pub fn net_udp_check(data: &[u8]) -> bool {
    let mut want = [0u8; NET_UDP_MAX];
    match want.get_mut(..data.len()) {
        Some(w) => {
            net_udp_payload(data.len(), w);
            w == data
        }
        None => false,
    }
}

/// `net`: the checksum both ends of a TCP stream compute over the bytes
/// they sent or received (64-bit FNV-1a), and exchange after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetSum(pub u64);

impl Default for NetSum {
    fn default() -> Self {
        NetSum(0xcbf2_9ce4_8422_2325)
    }
}

impl NetSum {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }

    /// The checksum of the whole of stream `stream` ([`NET_TCP_BYTES`]).
    pub fn of_stream(stream: u16) -> NetSum {
        let mut s = NetSum::default();
        let mut buf = [0u8; 4096];
        let mut at = 0;
        while at < NET_TCP_BYTES {
            net_stream_fill(stream, at, &mut buf);
            s.update(&buf);
            at += buf.len() as u64;
        }
        s
    }
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

    #[test]
    fn net_patterns_differ_by_stream_and_offset_and_check() {
        let mut a = [0u8; 4096];
        let mut b = [0u8; 4096];
        net_stream_fill(5001, 0, &mut a);
        net_stream_fill(5002, 0, &mut b);
        assert_ne!(a, b);
        net_stream_fill(5001, 4096, &mut b);
        assert_ne!(a, b);
        assert_eq!(net_stream_mismatch(5001, 0, &a), None);
        a[100] ^= 1;
        assert_eq!(net_stream_mismatch(5001, 0, &a), Some(100));
        assert_eq!(net_stream_mismatch(5001, 4096, &b), None);

        let mut p = [0u8; NET_UDP_MAX];
        for size in [1, 2, 3, 300, NET_UDP_MAX] {
            net_udp_payload(size, &mut p[..size]);
            assert!(net_udp_check(&p[..size]));
        }
        net_udp_payload(300, &mut p[..300]);
        assert!(!net_udp_check(&p[..299]));
        assert!(!net_udp_check(&[0u8; NET_UDP_MAX + 1]));

        let mut s1 = NetSum::default();
        s1.update(b"abc");
        let mut s2 = NetSum::default();
        s2.update(b"ab");
        s2.update(b"c");
        assert_eq!(s1, s2);
        s2.update(b"d");
        assert_ne!(s1, s2);
        // Two whole 16 MiB streams: too long for Miri's interpreter (the
        // parts above exercise the same code).
        if !cfg!(miri) {
            assert_ne!(NetSum::of_stream(5001), NetSum::of_stream(5002));
        }
    }
}
