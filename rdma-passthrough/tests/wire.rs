//! RoCE v2 frames: exact bytes, a captured packet, independent reference
//! computations of the checksums, round trips of every opcode, and every
//! kind of malformed frame.

use rdma_passthrough::headers::{
    Aeth, AtomicAckEth, AtomicEth, Bth, Ieth, ImmDt, NakCode, Reth, Syndrome,
};
use rdma_passthrough::icrc::icrc;
use rdma_passthrough::opcode::{Opcode, Position};
use rdma_passthrough::packet::{
    build, frame_len, parse, BuildError, Endpoints, ParseError, TransportHeaders, ETH_HEADER_LEN,
};
use rdma_passthrough::psn::Psn;

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// A straightforward bitwise CRC-32 over an explicitly masked copy of the
/// IP packet, written from the specification's description and sharing no
/// code with the crate.
fn reference_icrc(ip_packet_without_icrc: &[u8]) -> [u8; 4] {
    let mut data = vec![0xffu8; 8];
    data.extend_from_slice(ip_packet_without_icrc);
    let ip = 8;
    data[ip + 1] = 0xff; // TOS
    data[ip + 8] = 0xff; // TTL
    data[ip + 10] = 0xff; // header checksum
    data[ip + 11] = 0xff;
    data[ip + 20 + 6] = 0xff; // UDP checksum
    data[ip + 20 + 7] = 0xff;
    data[ip + 28 + 4] = 0xff; // BTH FECN, BECN, resv6a
    let mut crc: u32 = 0xffff_ffff;
    for byte in data {
        for bit in 0..8 {
            let b = u32::from((byte >> bit) & 1);
            let top = (crc & 1) ^ b;
            crc >>= 1;
            if top == 1 {
                crc ^= 0xedb8_8320;
            }
        }
    }
    (!crc).to_le_bytes()
}

/// The Internet checksum, summed in 32 bits then folded.
fn reference_ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for (i, b) in header.iter().enumerate() {
        if i != 10 && i != 11 {
            sum += if i % 2 == 0 {
                u32::from(*b) << 8
            } else {
                u32::from(*b)
            };
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recomputes the IPv4 checksum and the ICRC after a test edits a frame.
fn fix_up(frame: &mut [u8]) {
    let ip = ETH_HEADER_LEN;
    let total = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
    let c = reference_ip_checksum(&frame[ip..ip + 20]);
    frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    let end = (ip + total).min(frame.len());
    if end >= ip + 44 {
        let crc = reference_icrc(&frame[ip..end - 4]);
        frame[end - 4..end].copy_from_slice(&crc);
    }
}

/// A RoCE v2 congestion notification packet captured on a ConnectX-4 Lx
/// (published with Scapy's RoCE tests): real hardware computed its IPv4
/// checksum and ICRC.
const CX4_CNP: &str = "e41d 2dab 2bc2 7cfe 9064 3b32 0800 45c2
    003c 718c 4000 4011 9161 0a00 1101 0a00
    1201 0000 12b7 0028 0000 8100 ffff 4000
    0118 0000 0000 0000 0000 0000 0000 0000
    0000 0000 0000 82fd 002a";

#[test]
fn icrc_matches_a_hardware_capture() {
    let frame = hex(CX4_CNP);
    assert_eq!(frame.len(), 74);
    let ip = &frame[ETH_HEADER_LEN..];
    let (body, crc) = ip.split_at(ip.len() - 4);
    assert_eq!(icrc(body), Some([0x82, 0xfd, 0x00, 0x2a]));
    assert_eq!(crc, [0x82, 0xfd, 0x00, 0x2a]);
    assert_eq!(reference_icrc(body), [0x82, 0xfd, 0x00, 0x2a]);
    // The parser gets past the IPv4 checksum, UDP and the ICRC, and stops
    // at the opcode: a CNP is not an RC packet.
    assert_eq!(parse(&frame), Err(ParseError::UnsupportedOpcode(0x81)));
}

/// Scapy's example UC SEND-only packet; Scapy computed its ICRC
/// (0x78f353f3, wire order) and IPv4 checksum (0xb4d5).
#[test]
fn icrc_matches_scapys_uc_example() {
    let mut frame = hex("248a07a8fa22 248a07a8fa22 0800
         4501 0040 0478 4000 4011 0000 c0a80007 c0a80007
         c000 12b7 002c 0000
         2460 ffff 000000d3 00cf1710");
    frame.extend_from_slice(b"F0\x81\x8b\xe2\x895\xd9\x0e\x9a\x95PT\x01\xbe\x88^P\x00\x00");
    let ip = ETH_HEADER_LEN;
    assert_eq!(reference_ip_checksum(&frame[ip..ip + 20]), 0xb4d5);
    assert_eq!(
        rdma_passthrough::packet::internet_checksum(&frame[ip..ip + 20]),
        0xb4d5
    );
    assert_eq!(icrc(&frame[ip..]), Some([0x78, 0xf3, 0x53, 0xf3]));
}

fn endpoints() -> Endpoints {
    Endpoints {
        dst_mac: [0x02, 0, 0, 0, 0, 0x02],
        src_mac: [0x02, 0, 0, 0, 0, 0x01],
        src_ip: [10, 0, 0, 1],
        dst_ip: [10, 0, 0, 2],
        src_port: 0xc123,
        tos: 0,
        ttl: 64,
        ip_id: 0x0102,
    }
}

fn bth(opcode: Opcode, psn: u32) -> Bth {
    Bth {
        opcode,
        solicited: false,
        mig_req: false,
        pad: 0,
        pkey: 0xffff,
        fecn: false,
        becn: false,
        dest_qp: 0x11,
        ack_req: false,
        psn: Psn::from_masked(psn),
    }
}

/// Every opcode with plausible headers.
fn headers_for(opcode: Opcode) -> TransportHeaders {
    let l = opcode.layout();
    let mut h = TransportHeaders::new(bth(opcode, 0xfffffe));
    if l.reth {
        h.reth = Some(Reth {
            va: 0x1000_2000,
            rkey: 0x42,
            dma_len: 4096,
        });
    }
    if l.atomic_eth {
        h.atomic_eth = Some(AtomicEth {
            va: 0x8,
            rkey: 0x43,
            swap_add: 7,
            compare: 9,
        });
    }
    if l.aeth {
        h.aeth = Some(Aeth {
            syndrome: Syndrome::Ack { credits: 0x1f },
            msn: 77,
        });
    }
    if l.atomic_ack_eth {
        h.atomic_ack_eth = Some(AtomicAckEth { orig: 0xfeed });
    }
    if l.imm {
        h.imm = Some(ImmDt([1, 2, 3, 4]));
    }
    if l.ieth {
        h.ieth = Some(Ieth { rkey: 0x99 });
    }
    h
}

#[test]
fn write_only_with_immediate_exact_bytes() {
    let mut h = TransportHeaders::new(Bth {
        ack_req: true,
        solicited: true,
        ..bth(Opcode::RdmaWriteOnlyWithImmediate, 0x123456)
    });
    h.reth = Some(Reth {
        va: 0x0000_7f00_dead_b000,
        rkey: 0x0000_1234,
        dma_len: 5,
    });
    h.imm = Some(ImmDt([0xca, 0xfe, 0xba, 0xbe]));
    let payload = b"hello";
    let mut out = [0u8; 128];
    let n = build(&endpoints(), &h, payload, &mut out).unwrap();
    // 14 + 20 + 8 + 12 + 16 + 4 + 5 + 3 (pad) + 4 (ICRC)
    assert_eq!(n, 86);
    assert_eq!(frame_len(Opcode::RdmaWriteOnlyWithImmediate, 5), Some(86));
    let mut want = hex("020000000002 020000000001 0800
         4500 0048 0102 4000 4011 0000 0a000001 0a000002
         c123 12b7 0034 0000
         0bb0 ffff 00000011 80123456
         00007f00deadb000 00001234 00000005
         cafebabe
         68656c6c6f 000000");
    let c = reference_ip_checksum(&want[14..34]);
    want[24..26].copy_from_slice(&c.to_be_bytes());
    let crc = reference_icrc(&want[14..]);
    want.extend_from_slice(&crc);
    assert_eq!(&out[..n], &want[..]);

    let p = parse(&out[..n]).unwrap();
    assert_eq!(p.payload, payload);
    assert_eq!(p.headers.bth.pad, 3);
    assert_eq!(p.endpoints, endpoints());
    assert_eq!(p.headers.reth, h.reth);
    assert_eq!(p.headers.imm, h.imm);
}

#[test]
fn ack_exact_bytes_and_minimum_frame() {
    let mut h = TransportHeaders::new(bth(Opcode::Acknowledge, 5));
    h.aeth = Some(Aeth {
        syndrome: Syndrome::Nak(NakCode::PsnSequenceError),
        msn: 3,
    });
    let mut out = [0u8; 64];
    let n = build(&endpoints(), &h, &[], &mut out).unwrap();
    assert_eq!(n, 62);
    assert_eq!(
        &out[42..58],
        &hex("1100ffff 00000011 00000005 60000003")[..]
    );
    assert_eq!(&out[58..62], &reference_icrc(&out[14..58]));
    assert_eq!(parse(&out[..n]).unwrap().headers, {
        let mut w = h;
        w.bth.pad = 0;
        w
    });

    // An empty SEND only is 58 bytes: padded to 60, and the padding parses.
    let h = TransportHeaders::new(bth(Opcode::SendOnly, 9));
    let n = build(&endpoints(), &h, &[], &mut out).unwrap();
    assert_eq!(n, 60);
    assert_eq!(&out[58..60], &[0, 0]);
    assert_eq!(u16::from_be_bytes([out[16], out[17]]), 44);
    assert_eq!(parse(&out[..n]).unwrap().payload, b"");
    // But not with bytes beyond the minimum frame.
    let mut long = out[..n].to_vec();
    long.push(0);
    assert_eq!(parse(&long), Err(ParseError::TrailingBytes { extra: 3 }));
}

#[test]
fn every_opcode_round_trips_with_every_payload_length() {
    for op in Opcode::ALL {
        let l = op.layout();
        let lens: &[usize] = if !l.payload {
            &[0]
        } else if l.position.ends_message() {
            &[0, 1, 2, 3, 4, 5, 1023, 1024]
        } else {
            &[0, 4, 256, 1024]
        };
        for &len in lens {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let h = headers_for(op);
            let mut out = vec![0u8; 2048];
            let n = build(&endpoints(), &h, &payload, &mut out).unwrap();
            assert_eq!(Some(n), frame_len(op, len));
            let p = parse(&out[..n]).unwrap_or_else(|e| panic!("{op:?} {len}: {e}"));
            let mut want = h;
            want.bth.pad = ((4 - len % 4) % 4) as u8;
            assert_eq!(p.headers, want, "{op:?} {len}");
            assert_eq!(p.payload, &payload[..]);
            // The ICRC agrees with the reference.
            let total = usize::from(u16::from_be_bytes([out[16], out[17]]));
            let end = ETH_HEADER_LEN + total;
            assert_eq!(
                out[end - 4..end],
                reference_icrc(&out[ETH_HEADER_LEN..end - 4])
            );
        }
    }
}

/// The builder writes every byte of the frame (it does not clear the
/// buffer first): a frame built over old bytes is the frame built over
/// zeros, pad, zero fields and a short frame's tail included, and the
/// bytes past the frame are left as they were.
#[test]
fn a_frame_built_over_old_bytes_is_the_same_frame() {
    for op in Opcode::ALL {
        let l = op.layout();
        let lens: &[usize] = if !l.payload {
            &[0]
        } else if l.position.ends_message() {
            &[0, 1, 2, 3, 5, 7, 64, 1023]
        } else {
            &[0, 4, 64, 1024]
        };
        for &len in lens {
            let payload: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
            let h = headers_for(op);
            let mut clean = vec![0u8; 2048];
            let n = build(&endpoints(), &h, &payload, &mut clean).unwrap();
            for old in [0xffu8, 0xa5, 0x01] {
                let mut dirty = vec![old; 2048];
                let m = build(&endpoints(), &h, &payload, &mut dirty).unwrap();
                assert_eq!(m, n, "{op:?} {len}");
                assert_eq!(dirty[..n], clean[..n], "{op:?} {len} over {old:#x}");
                assert!(
                    dirty[n..].iter().all(|&b| b == old),
                    "{op:?} {len}: wrote past the frame"
                );
                parse(&dirty[..n]).unwrap_or_else(|e| panic!("{op:?} {len}: {e}"));
            }
        }
    }
}

#[test]
fn builder_refuses_inconsistent_packets() {
    let mut out = [0u8; 256];
    let ep = endpoints();
    let h = TransportHeaders::new(bth(Opcode::RdmaWriteOnly, 0));
    assert!(matches!(
        build(&ep, &h, b"x", &mut out),
        Err(BuildError::HeaderMismatch {
            header: "RETH",
            present: false,
            ..
        })
    ));
    let mut h = headers_for(Opcode::SendOnly);
    h.imm = Some(ImmDt([0; 4]));
    assert!(matches!(
        build(&ep, &h, b"x", &mut out),
        Err(BuildError::HeaderMismatch {
            header: "ImmDt",
            present: true,
            ..
        })
    ));
    let h = headers_for(Opcode::Acknowledge);
    assert_eq!(
        build(&ep, &h, b"x", &mut out),
        Err(BuildError::PayloadNotAllowed {
            opcode: Opcode::Acknowledge,
            len: 1
        })
    );
    let h = headers_for(Opcode::SendMiddle);
    assert_eq!(
        build(&ep, &h, b"abc", &mut out),
        Err(BuildError::UnalignedPayload {
            opcode: Opcode::SendMiddle,
            len: 3
        })
    );
    let mut h = headers_for(Opcode::SendOnly);
    h.bth.dest_qp = 1 << 24;
    assert_eq!(
        build(&ep, &h, b"", &mut out),
        Err(BuildError::QpnTooLarge(1 << 24))
    );
    let h = headers_for(Opcode::SendOnly);
    assert_eq!(
        build(&ep, &h, &[0; 100], &mut out[..100]),
        Err(BuildError::BufferTooSmall {
            need: 158,
            have: 100
        })
    );
    let big = vec![0u8; 70_000];
    let mut big_out = vec![0u8; 80_000];
    assert_eq!(
        build(&ep, &h, &big, &mut big_out),
        Err(BuildError::TooLarge { len: 70_000 })
    );
}

fn good_send() -> Vec<u8> {
    let mut out = vec![0u8; 256];
    let n = build(
        &endpoints(),
        &headers_for(Opcode::SendLast),
        b"payload!",
        &mut out,
    )
    .unwrap();
    out.truncate(n);
    out
}

/// Edits a valid frame, fixes its checksums, and expects `want`.
fn expect(edit: impl FnOnce(&mut Vec<u8>), want: ParseError) {
    let mut f = good_send();
    edit(&mut f);
    fix_up(&mut f);
    assert_eq!(parse(&f), Err(want));
}

#[test]
fn malformed_frames_are_typed_errors() {
    expect(
        |f| f[12..14].copy_from_slice(&[0x86, 0xdd]),
        ParseError::NotIpv4 { ethertype: 0x86dd },
    );
    expect(|f| f[14] = 0x65, ParseError::BadIpVersion(6));
    expect(|f| f[14] = 0x46, ParseError::IpOptions { ihl: 6 });
    expect(
        |f| f[17] = 0xff,
        ParseError::BadIpLength {
            total: 0xff,
            available: 52,
        },
    );
    expect(
        |f| f[17] = 27,
        ParseError::BadIpLength {
            total: 27,
            available: 52,
        },
    );
    expect(|f| f[20] = 0x20, ParseError::Fragmented);
    expect(|f| f[21] = 0x08, ParseError::Fragmented);
    expect(|f| f[20] = 0xc0, ParseError::IpReservedFlag);
    expect(|f| f[23] = 6, ParseError::NotUdp { protocol: 6 });
    expect(
        |f| f[36..38].copy_from_slice(&4792u16.to_be_bytes()),
        ParseError::NotRoce { port: 4792 },
    );
    expect(
        |f| f[39] -= 4,
        ParseError::BadUdpLength {
            udp: 28,
            ip_payload: 32,
        },
    );
    expect(|f| f[41] = 1, ParseError::BadUdpChecksum);
    expect(|f| f[42] = 0x40, ParseError::UnsupportedOpcode(0x40));
    expect(|f| f[42] = 0x15, ParseError::UnsupportedOpcode(0x15));
    expect(
        |f| f[43] |= 0x01,
        ParseError::UnsupportedTransportVersion(1),
    );
    // SEND middle with a pad; SEND last with a pad longer than its payload.
    expect(
        |f| {
            f[42] = Opcode::SendMiddle as u8;
            f[43] = 0x10;
        },
        ParseError::BadPad {
            opcode: Opcode::SendMiddle,
            pad: 1,
            len: 8,
        },
    );
    // An ACK with 8 bytes after its AETH.
    expect(
        |f| {
            f[42] = Opcode::Acknowledge as u8;
            f[54] = 0;
        },
        ParseError::UnexpectedPayload {
            opcode: Opcode::Acknowledge,
            len: 4,
        },
    );
    expect(
        |f| {
            f[42] = Opcode::Acknowledge as u8;
            f[54] = 0x40;
        },
        ParseError::BadSyndrome(0x40),
    );
    // An atomic whose AtomicETH runs into the ICRC.
    expect(
        |f| f[42] = Opcode::CompareSwap as u8,
        ParseError::Truncated {
            what: "AtomicETH",
            need: 40,
            have: 20,
        },
    );
    // A transport packet that is not a multiple of four bytes.
    expect(
        |f| {
            f.truncate(f.len() - 1);
            f[17] -= 1;
            f[39] -= 1;
        },
        ParseError::Misaligned { len: 23 },
    );
    // The ICRC itself.
    let mut f = good_send();
    let last = f.len() - 1;
    f[last] ^= 1;
    assert!(matches!(parse(&f), Err(ParseError::BadIcrc { .. })));
    // The IPv4 checksum.
    let mut f = good_send();
    f[30] ^= 1;
    assert_eq!(parse(&f), Err(ParseError::BadIpChecksum));
}

#[test]
fn a_valid_udp_checksum_is_accepted() {
    let mut f = good_send();
    let ip = ETH_HEADER_LEN;
    let c = rdma_passthrough::packet::udp_checksum([10, 0, 0, 1], [10, 0, 0, 2], &f[ip + 20..]);
    f[ip + 26..ip + 28].copy_from_slice(&c.to_be_bytes());
    assert!(parse(&f).is_ok());
}

/// Every truncation of a valid frame is an error.
#[test]
fn every_truncation_fails() {
    let f = good_send();
    for n in 0..f.len() {
        assert!(parse(&f[..n]).is_err(), "{n}");
    }
}

/// Flipping any bit is detected, except in the fields nothing covers (the
/// Ethernet addresses) and the BTH bits the ICRC masks (FECN, BECN and
/// the reserved bits in front of the destination QP).
#[test]
fn every_bit_flip_is_detected_or_harmless() {
    let f = good_send();
    for byte in 0..f.len() {
        for bit in 0..8 {
            let mut g = f.clone();
            g[byte] ^= 1 << bit;
            let uncovered = byte < 12 || byte == 46;
            match parse(&g) {
                Err(_) => assert!(!uncovered, "byte {byte} bit {bit} was rejected"),
                Ok(p) => {
                    assert!(uncovered, "byte {byte} bit {bit} went unnoticed");
                    assert_eq!(p.payload, b"payload!");
                }
            }
        }
    }
}

#[test]
fn positions() {
    assert_eq!(Opcode::SendFirst.layout().position, Position::First);
    assert!(Opcode::RdmaWriteOnly.layout().position.starts_message());
    assert!(!Opcode::RdmaWriteMiddle.layout().position.ends_message());
}

/// RFC 1071's checksum the plain way: each 16-bit word added with its
/// carry folded back at once.
fn reference_checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for w in bytes.chunks(2) {
        let word = u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0));
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

proptest::proptest! {
    #[test]
    fn internet_checksum_matches_the_plain_sum(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
        ones in 0usize..3000,
    ) {
        use rdma_passthrough::packet::internet_checksum;
        proptest::prop_assert_eq!(internet_checksum(&bytes), reference_checksum(&bytes));
        // Long runs of 0xff bytes carry the most.
        let all_ones = vec![0xffu8; ones];
        proptest::prop_assert_eq!(internet_checksum(&all_ones), reference_checksum(&all_ones));
    }
}

/// `set_ack_req` sets the bit of a built frame and writes a valid ICRC
/// again (the frame parses, everything else unchanged), also on a frame
/// padded to the minimum length; it refuses what `build` does not write.
#[test]
fn set_ack_req_rewrites_the_icrc() {
    use rdma_passthrough::packet::set_ack_req;
    let ep = Endpoints {
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_mac: [2, 0, 0, 0, 0, 1],
        src_ip: [10, 0, 0, 1],
        dst_ip: [10, 0, 0, 2],
        src_port: 0xc001,
        tos: 0,
        ttl: 64,
        ip_id: 0,
    };
    for payload in [&b""[..], &b"abc"[..], &[7u8; 64][..]] {
        let bth = Bth {
            opcode: Opcode::SendOnly,
            solicited: false,
            mig_req: false,
            pad: 0,
            pkey: 0xffff,
            fecn: false,
            becn: false,
            dest_qp: 0x12,
            ack_req: false,
            psn: Psn::from_masked(0xff_ffff),
        };
        let h = TransportHeaders::new(bth);
        let mut f = vec![0; frame_len(Opcode::SendOnly, payload.len()).unwrap()];
        build(&ep, &h, payload, &mut f).unwrap();
        let before = parse(&f).unwrap();
        assert!(!before.headers.bth.ack_req);
        let (before_headers, before_payload) = (before.headers, before.payload.to_vec());
        assert!(set_ack_req(&mut f));
        let after = parse(&f).unwrap();
        assert!(after.headers.bth.ack_req);
        let mut want = before_headers;
        want.bth.ack_req = true;
        assert_eq!(after.headers, want);
        assert_eq!(after.payload, &before_payload[..]);
        // Again: nothing changes.
        let once = f.clone();
        assert!(set_ack_req(&mut f));
        assert_eq!(f, once);
        // A frame cut short of its IPv4 length, or with IPv4 options.
        let mut short = f[..f.len() - 5].to_vec();
        let keep = short.clone();
        assert!(!set_ack_req(&mut short));
        assert_eq!(short, keep);
        let mut opts = f.clone();
        opts[ETH_HEADER_LEN] = 0x46;
        assert!(!set_ack_req(&mut opts));
    }
    assert!(!set_ack_req(&mut []));
}
