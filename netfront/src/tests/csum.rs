use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use crate::csum::*;

// ---- An independent reference: RFC 1071 word by word ----------------------

fn naive_sum(bytes: &[u8]) -> u32 {
    let mut s: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let hi = u32::from(bytes[i]) << 8;
        let lo = if i + 1 < bytes.len() {
            u32::from(bytes[i + 1])
        } else {
            0
        };
        s += hi | lo;
        i += 2;
    }
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s
}

fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

fn pseudo_v6(src: [u8; 16], dst: [u8; 16], next: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, next]);
    p
}

/// Whether `segment` (with its checksum field) verifies under `pseudo`.
fn verifies(pseudo: &[u8], segment: &[u8]) -> bool {
    let mut all = pseudo.to_vec();
    all.extend_from_slice(segment);
    naive_sum(&all) == 0xFFFF
}

/// The checksum a sender computes: the complement of the sum with the field
/// zero (0xFFFF for 0 in UDP).
fn reference(pseudo: &[u8], segment: &[u8], field: usize) -> u16 {
    let mut seg = segment.to_vec();
    seg[field] = 0;
    seg[field + 1] = 0;
    let mut all = pseudo.to_vec();
    all.extend_from_slice(&seg);
    let c = !(naive_sum(&all) as u16);
    if c == 0 {
        0xFFFF
    } else {
        c
    }
}

// ---- Packet construction --------------------------------------------------

const SRC4: [u8; 4] = [192, 168, 0, 1];
const DST4: [u8; 4] = [10, 1, 2, 3];
const SRC6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
];
const DST6: [u8; 16] = [
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x16, 0x3e, 0xff, 0xfe, 0x5a, 0x0b, 0xcd,
];

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![
        0x00, 0x16, 0x3e, 0x00, 0x00, 0x01, 0x00, 0x16, 0x3e, 0x00, 0x00, 0x02,
    ];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn tcp(payload: &[u8]) -> Vec<u8> {
    // Ports 49152 -> 80, seq, ack, data offset 8 words (12 option bytes),
    // ACK|PSH, window, checksum 0, urgent 0, options (NOP NOP timestamp).
    let mut t = vec![
        0xc0, 0x00, 0x00, 0x50, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x80, 0x18, 0x01,
        0xf6, 0, 0, 0, 0, 0x01, 0x01, 0x08, 0x0a, 0, 0, 0, 1, 0, 0, 0, 2,
    ];
    t.extend_from_slice(payload);
    t
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = vec![0x13, 0x88, 0x00, 0x35];
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn ipv4(proto: u8, l4: &[u8], frag: u16, options: &[u8]) -> Vec<u8> {
    let hlen = 20 + options.len();
    let total = (hlen + l4.len()) as u16;
    let mut h = vec![0x40 | (hlen / 4) as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x1c, 0x46]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&SRC4);
    h.extend_from_slice(&DST4);
    h.extend_from_slice(options);
    let c = !(naive_sum(&h) as u16);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

/// An IPv6 packet; `ext` is a list of (header type, header bytes) in order,
/// each header's first byte (next header) filled in here.
fn ipv6(proto: u8, l4: &[u8], ext: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut chain: Vec<u8> = Vec::new();
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |e| e.0);
        let mut b = bytes.clone();
        b[0] = next;
        chain.extend_from_slice(&b);
    }
    let first = ext.first().map_or(proto, |e| e.0);
    let plen = (chain.len() + l4.len()) as u16;
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&plen.to_be_bytes());
    h.extend_from_slice(&[first, 64]);
    h.extend_from_slice(&SRC6);
    h.extend_from_slice(&DST6);
    h.extend_from_slice(&chain);
    h.extend_from_slice(l4);
    h
}

/// A frame whose checksum field holds the pseudo-header sum, as a sender
/// offloading its checksum leaves it; returns (frame, pseudo, l4 offset,
/// field offset within l4).
fn partial_v4(proto: u8, l4: Vec<u8>) -> (Vec<u8>, Vec<u8>, usize, usize) {
    let field = if proto == 6 { 16 } else { 6 };
    let pseudo = pseudo_v4(SRC4, DST4, proto, l4.len());
    let mut l4 = l4;
    l4[field..field + 2].copy_from_slice(&(naive_sum(&pseudo) as u16).to_be_bytes());
    let mut f = eth(0x0800);
    f.extend_from_slice(&ipv4(proto, &l4, 0x4000, &[]));
    (f, pseudo, 34, field)
}

fn partial_v6(proto: u8, l4: Vec<u8>, ext: &[(u8, Vec<u8>)]) -> (Vec<u8>, Vec<u8>, usize, usize) {
    let field = if proto == 6 { 16 } else { 6 };
    let pseudo = pseudo_v6(SRC6, DST6, proto, l4.len());
    let mut l4 = l4;
    l4[field..field + 2].copy_from_slice(&(naive_sum(&pseudo) as u16).to_be_bytes());
    let ext_len: usize = ext.iter().map(|e| e.1.len()).sum();
    let mut f = eth(0x86DD);
    f.extend_from_slice(&ipv6(proto, &l4, ext));
    (f, pseudo, 14 + 40 + ext_len, field)
}

fn check_completed(frame: &[u8], pseudo: &[u8], start: usize, field: usize) {
    let seg = &frame[start..];
    assert!(
        verifies(pseudo, seg),
        "the completed segment does not verify"
    );
    let got = u16::from_be_bytes([seg[field], seg[field + 1]]);
    assert_eq!(got, reference(pseudo, seg, field));
}

#[test]
fn the_sum_matches_a_known_ipv4_header() {
    // The IPv4 header of RFC 1071-style worked examples: checksum 0xb861.
    let h = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(!ones_complement_sum(&h), 0xb861);
    // Odd lengths take the last byte as a high byte.
    assert_eq!(ones_complement_sum(&[0x12]), 0x1200);
    assert_eq!(ones_complement_sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    // End-around carry.
    assert_eq!(ones_complement_sum(&[0xff, 0xff, 0x00, 0x02]), 0x0002);
    for n in 0..64 {
        let p = payload(n, 7);
        assert_eq!(
            u32::from(ones_complement_sum(&p)),
            naive_sum(&p),
            "length {n}"
        );
    }
}

#[test]
fn ipv4_tcp() {
    let (mut f, pseudo, start, field) = partial_v4(6, tcp(&payload(1001, 3)));
    let loc = complete_frame(&mut f, false).unwrap();
    assert_eq!((loc.l3, loc.l4), (L3::V4, L4::Tcp));
    assert_eq!((loc.start, loc.field), (34, 50));
    assert_eq!(loc.l4_len, 32 + 1001);
    assert_eq!(u32::from(loc.pseudo), naive_sum(&pseudo));
    check_completed(&f, &pseudo, start, field);
}

#[test]
fn ipv4_udp_and_options() {
    let (mut f, pseudo, start, field) = partial_v4(17, udp(&payload(512, 9)));
    complete_frame(&mut f, false).unwrap();
    check_completed(&f, &pseudo, start, field);

    // With 8 bytes of IPv4 options the transport header moves.
    let mut l4 = udp(&payload(100, 1));
    let pseudo = pseudo_v4(SRC4, DST4, 17, l4.len());
    l4[6..8].copy_from_slice(&(naive_sum(&pseudo) as u16).to_be_bytes());
    let mut f = eth(0x0800);
    f.extend_from_slice(&ipv4(
        17,
        &l4,
        0,
        &[0x01, 0x01, 0x01, 0x00, 0x94, 0x04, 0, 0],
    ));
    let loc = complete_frame(&mut f, false).unwrap();
    assert_eq!((loc.start, loc.field), (42, 48));
    check_completed(&f, &pseudo, 42, 6);
}

#[test]
fn ipv6_with_extension_headers() {
    let (mut f, pseudo, start, field) = partial_v6(6, tcp(&payload(777, 5)), &[]);
    let loc = complete_frame(&mut f, false).unwrap();
    assert_eq!((loc.l3, loc.l4, loc.start), (L3::V6, L4::Tcp, 54));
    check_completed(&f, &pseudo, start, field);

    // Hop-by-hop (8 bytes), routing (24), an atomic fragment header (offset
    // 0, no more fragments), destination options (16), then UDP.
    let ext = [
        (0u8, vec![0, 0, 1, 4, 0, 0, 0, 0]),
        (43u8, {
            let mut r = vec![0, 2, 0, 0, 0, 0, 0, 0];
            r.extend_from_slice(&[0; 16]);
            r
        }),
        (44u8, vec![0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]),
        (60u8, {
            let mut d = vec![0, 1, 1, 12];
            d.extend_from_slice(&[0; 12]);
            d
        }),
    ];
    let (mut f, pseudo, start, field) = partial_v6(17, udp(&payload(300, 2)), &ext);
    let loc = complete_frame(&mut f, false).unwrap();
    assert_eq!((loc.l4, loc.start), (L4::Udp, 14 + 40 + 56));
    check_completed(&f, &pseudo, start, field);

    // An authentication header: (len + 2) * 4 bytes.
    let ah = [(51u8, {
        let mut a = vec![0, 4, 0, 0];
        a.extend_from_slice(&[0xaa; 20]);
        a
    })];
    let (mut f, pseudo, start, field) = partial_v6(6, tcp(&payload(10, 2)), &ah);
    assert_eq!(complete_frame(&mut f, false).unwrap().start, 14 + 40 + 24);
    check_completed(&f, &pseudo, start, field);
}

#[test]
fn the_pseudo_header_is_recomputed_when_asked() {
    // A GSO frame that came without csum_blank: the field holds anything.
    let (mut f, pseudo, start, field) = partial_v4(6, tcp(&payload(3000, 8)));
    f[start + field] = 0xde;
    f[start + field + 1] = 0xad;
    complete_frame(&mut f, true).unwrap();
    check_completed(&f, &pseudo, start, field);

    let (mut f, pseudo, start, field) = partial_v6(17, udp(&payload(33, 8)), &[]);
    f[start + field] = 0x55;
    complete_frame(&mut f, true).unwrap();
    check_completed(&f, &pseudo, start, field);
}

#[test]
fn a_zero_udp_checksum_is_sent_as_all_ones() {
    // Choose the last two payload bytes so that the checksum comes out 0.
    let mut l4 = udp(&payload(20, 4));
    let pseudo = pseudo_v4(SRC4, DST4, 17, l4.len());
    let n = l4.len();
    l4[n - 2] = 0;
    l4[n - 1] = 0;
    let mut all = pseudo.clone();
    all.extend_from_slice(&l4);
    let s = naive_sum(&all) as u16;
    l4[n - 2..].copy_from_slice(&(0xFFFF - s).to_be_bytes());
    l4[6..8].copy_from_slice(&(naive_sum(&pseudo) as u16).to_be_bytes());
    let mut f = eth(0x0800);
    f.extend_from_slice(&ipv4(17, &l4, 0, &[]));
    complete_frame(&mut f, false).unwrap();
    assert_eq!(&f[40..42], &[0xFF, 0xFF]);
    assert!(verifies(&pseudo, &f[34..]));
}

#[test]
fn frames_over_several_buffers() {
    let (frame, pseudo, start, field) = partial_v4(6, tcp(&payload(5000, 1)));
    let mut whole = frame.clone();
    complete_frame(&mut whole, false).unwrap();
    // Splits inside the Ethernet header, inside the checksum field, and at
    // odd offsets in the payload.
    for cuts in [
        vec![7],
        vec![51],
        vec![34, 51, 52],
        vec![1, 2, 3, 101, 1001, 4097],
        vec![60, 61, 63, 3333],
    ] {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(core::iter::once(&frame.len())) {
            parts.push(frame[prev..c].to_vec());
            prev = c;
        }
        let mut refs: Vec<&mut [u8]> = parts.iter_mut().map(|p| p.as_mut_slice()).collect();
        let loc = complete(&mut refs, false).unwrap();
        assert_eq!(loc.start, start);
        let joined: Vec<u8> = parts.concat();
        assert_eq!(joined, whole, "cuts {cuts:?}");
    }
    check_completed(&whole, &pseudo, start, field);
}

#[test]
fn frames_that_cannot_be_completed_are_refused_unchanged() {
    let refuse = |mut f: Vec<u8>, want: CsumError| {
        let before = f.clone();
        assert_eq!(complete_frame(&mut f, true), Err(want));
        assert_eq!(f, before, "unchanged on error");
    };
    let (tcp4, ..) = partial_v4(6, tcp(&payload(100, 1)));

    // Not IP: ARP, a VLAN tag.
    let mut arp = tcp4.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    refuse(arp, CsumError::NotIp { ethertype: 0x0806 });
    let mut vlan = eth(0x8100);
    vlan.extend_from_slice(&[0, 5, 0x08, 0x00]);
    vlan.extend_from_slice(&tcp4[14..]);
    refuse(vlan, CsumError::NotIp { ethertype: 0x8100 });
    refuse(
        vec![0; 13],
        CsumError::BadHeader("shorter than an Ethernet header"),
    );

    // IPv4 fragments: more fragments, or an offset.
    for frag in [0x2000u16, 0x0001, 0x3fff] {
        let mut f = eth(0x0800);
        f.extend_from_slice(&ipv4(6, &tcp(&payload(10, 0)), frag, &[]));
        refuse(f, CsumError::Fragment);
    }
    // Not TCP or UDP.
    let mut f = eth(0x0800);
    f.extend_from_slice(&ipv4(1, &[8, 0, 0, 0, 0, 0, 0, 0], 0, &[]));
    refuse(f, CsumError::NotTcpUdp { proto: 1 });
    // Header lengths that do not fit.
    let mut f = tcp4.clone();
    f[14] = 0x44;
    refuse(f, CsumError::BadHeader("IPv4 header length below 20"));
    let mut f = tcp4.clone();
    f[16..18].copy_from_slice(&5000u16.to_be_bytes());
    refuse(
        f,
        CsumError::BadHeader("IPv4 total length inconsistent with the frame"),
    );
    let mut f = tcp4.clone();
    f[14] = 0x65;
    refuse(
        f,
        CsumError::BadHeader("IPv4 EtherType without an IPv4 header"),
    );
    // A transport header cut short by the IP length.
    let mut f = eth(0x0800);
    f.extend_from_slice(&ipv4(6, &[0; 19], 0, &[]));
    refuse(f, CsumError::BadHeader("transport header cut short"));

    // IPv6: a real fragment, an extension chain beyond 256 bytes, an
    // unknown upper protocol.
    let frag = [(44u8, vec![0, 0, 0x00, 0x08, 1, 2, 3, 4])];
    let (f, ..) = partial_v6(17, udp(&payload(10, 0)), &frag);
    refuse(f, CsumError::Fragment);
    let frag_more = [(44u8, vec![0, 0, 0x00, 0x01, 1, 2, 3, 4])];
    let (f, ..) = partial_v6(17, udp(&payload(10, 0)), &frag_more);
    refuse(f, CsumError::Fragment);
    let long: Vec<(u8, Vec<u8>)> = (0..5)
        .map(|_| {
            (60u8, {
                let mut d = vec![0, 7];
                d.extend_from_slice(&[1, 60]);
                d.extend_from_slice(&[0; 60]);
                d
            })
        })
        .collect();
    let (f, ..) = partial_v6(6, tcp(&payload(10, 0)), &long);
    refuse(
        f,
        CsumError::BadHeader("IPv6 extension headers beyond 256 bytes or the packet"),
    );
    let mut f = eth(0x86DD);
    f.extend_from_slice(&ipv6(58, &[128, 0, 0, 0, 0, 1, 0, 1], &[]));
    refuse(f, CsumError::NotTcpUdp { proto: 58 });
    let (mut f, ..) = partial_v6(6, tcp(&payload(10, 0)), &[]);
    f[18..20].copy_from_slice(&9999u16.to_be_bytes());
    refuse(
        f,
        CsumError::BadHeader("IPv6 payload length inconsistent with the frame"),
    );
}

#[test]
fn a_transport_header_far_behind_a_long_extension_header() {
    // The last extension header starts within 256 bytes but runs on for
    // 2 KiB: allowed, as Linux allows it; the TCP header lies beyond the
    // parsed minimum.
    let mut dst = vec![0, 255];
    dst.extend_from_slice(&[1, 255]);
    dst.extend_from_slice(&vec![0; 2048 - 4]);
    let (mut f, pseudo, start, field) = partial_v6(6, tcp(&payload(100, 4)), &[(60u8, dst)]);
    let loc = complete_frame(&mut f, false).unwrap();
    assert_eq!(loc.start, 14 + 40 + 2048);
    check_completed(&f, &pseudo, start, field);
}

proptest! {
    #[test]
    fn splitting_never_changes_the_result(
        len in 0usize..3000,
        seed: u8,
        v6: bool,
        udp_: bool,
        cuts in prop::collection::vec(0usize..4000, 0..6),
    ) {
        let l4 = if udp_ { udp(&payload(len, seed)) } else { tcp(&payload(len, seed)) };
        let proto = if udp_ { 17 } else { 6 };
        let (frame, pseudo, start, field) = if v6 {
            partial_v6(proto, l4, &[])
        } else {
            partial_v4(proto, l4)
        };
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (frame.len() + 1)).collect();
        cuts.sort_unstable();
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut prev = 0;
        for c in cuts.into_iter().chain(core::iter::once(frame.len())) {
            parts.push(frame[prev..c].to_vec());
            prev = c;
        }
        let mut refs: Vec<&mut [u8]> = parts.iter_mut().map(|p| p.as_mut_slice()).collect();
        complete(&mut refs, false).unwrap();
        let joined = parts.concat();
        prop_assert!(verifies(&pseudo, &joined[start..]));
        let got = u16::from_be_bytes([joined[start + field], joined[start + field + 1]]);
        prop_assert_eq!(got, reference(&pseudo, &joined[start..], field));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), recompute: bool) {
        let mut f = bytes.clone();
        if complete_frame(&mut f, recompute).is_err() {
            prop_assert_eq!(f, bytes);
        }
    }
}
