//! RoCE v2 frame parsing: every header (Ethernet, IPv4, UDP, BTH, RETH,
//! AETH, AtomicETH, AtomicAckETH, ImmDt, IETH), the pad and the ICRC.
//!
//! The first input byte picks a mode: raw bytes, or bytes whose IPv4
//! lengths, IPv4 checksum and ICRC are made consistent first so that the
//! fuzzer reaches the transport headers. Never panics; whatever parses
//! rebuilds into a frame that parses to the same headers and payload, and
//! rebuilds over old bytes into the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdma_passthrough::icrc::icrc;
use rdma_passthrough::packet::{build, internet_checksum, parse, ETH_HEADER_LEN};

fn fix_up(frame: &mut [u8]) {
    let ip = ETH_HEADER_LEN;
    if frame.len() < ip + 44 {
        return;
    }
    frame[12] = 0x08;
    frame[13] = 0x00;
    frame[ip] = 0x45;
    let total = (frame.len() - ip) as u16;
    frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    frame[ip + 6] &= 0x40;
    frame[ip + 7] = 0;
    frame[ip + 9] = 17;
    frame[ip + 10] = 0;
    frame[ip + 11] = 0;
    let c = internet_checksum(&frame[ip..ip + 20]);
    frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    frame[ip + 22..ip + 24].copy_from_slice(&4791u16.to_be_bytes());
    frame[ip + 24..ip + 26].copy_from_slice(&(total - 20).to_be_bytes());
    frame[ip + 26] = 0;
    frame[ip + 27] = 0;
    let end = frame.len();
    if let Some(crc) = icrc(&frame[ip..end - 4]) {
        frame[end - 4..].copy_from_slice(&crc);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut frame = rest.to_vec();
    if mode & 1 == 1 {
        fix_up(&mut frame);
    }
    let Ok(p) = parse(&frame) else {
        return;
    };
    // What parsed is consistent: it builds, and the rebuilt frame parses
    // to the same transport headers and payload.
    let mut out = vec![0u8; frame.len().max(64)];
    let n = build(&p.endpoints, &p.headers, p.payload, &mut out)
        .expect("a parsed packet must rebuild");
    let q = parse(&out[..n]).expect("a rebuilt packet must parse");
    assert_eq!(q.headers, p.headers);
    assert_eq!(q.payload, p.payload);
    assert_eq!(q.endpoints, p.endpoints);
    // The builder writes every byte of the frame: built over old bytes
    // (the input's, then ones), it is the same frame, and nothing past it
    // is written.
    for fill in [None, Some(0xffu8)] {
        let mut dirty: Vec<u8> = match fill {
            None => data.iter().copied().cycle().take(out.len() + 8).collect(),
            Some(b) => vec![b; out.len() + 8],
        };
        let before = dirty.clone();
        let m = build(&p.endpoints, &p.headers, p.payload, &mut dirty)
            .expect("a parsed packet must rebuild over old bytes");
        assert_eq!(m, n);
        assert_eq!(dirty[..n], out[..n]);
        assert_eq!(dirty[n..], before[n..]);
    }
});
