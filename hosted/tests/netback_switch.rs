//! The switch between several frontends, the host port and a TAP device:
//! learning, flooding, unicast to the right port only, checksum completion
//! for a frontend that takes no blank checksums, GSO only where
//! negotiated; and, when `/dev/net/tun` can be opened, the host's own
//! network stack through a TAP device (ARP and UDP both ways).

#[path = "netback_common/mod.rs"]
mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use grant_tables::DomId;
use hosted::netback::ringfront::{RingFront, RingFrontConfig};
use hosted::netback::{FrameMeta, HostFrame, NetbackConfig, TapConfig};
use netfront::tx::{Gso, GsoKind, TxChecksum, TxOffload};

const A: DomId = DomId(1);
const B: DomId = DomId(2);
const C: DomId = DomId(3);
const SHORT: Duration = Duration::from_millis(100);

fn nothing(f: &mut RingFront, who: &str) {
    if let Some(r) = f.recv_timeout(SHORT, false).unwrap() {
        panic!("{who} got an unexpected frame of {} bytes", r.data.len());
    }
}

#[test]
fn learning_flooding_and_unicast() {
    let mut w = World::new("switch", NetbackConfig::new());
    let (pa, pb) = (w.domain(A), w.domain(B));
    let mut fa = w.front(&pa, 0, RingFrontConfig::default());
    let mut fb = w.front(&pb, 0, RingFrontConfig::default());
    let host = w.nb().host_port();
    let (ma, mb) = (mac(A, 0), mac(B, 0));

    // A broadcasts: B and the host get it.
    let f1 = frame(BCAST, ma, 100, 1);
    fa.send(&f1).unwrap();
    assert_eq!(recv(&mut fb).data, f1);
    assert_eq!(host.recv_timeout(T).unwrap().data, f1);
    nothing(&mut fa, "A (its own broadcast)");

    // A to an unknown address: flooded.
    let x = [0x02, 0, 0, 0, 0, 0x99];
    let f2 = frame(x, ma, 100, 2);
    fa.send(&f2).unwrap();
    assert_eq!(recv(&mut fb).data, f2);
    assert_eq!(host.recv_timeout(T).unwrap().data, f2);

    // B to A (learned): only A.
    let f3 = frame(ma, mb, 1500, 3);
    fb.send(&f3).unwrap();
    assert_eq!(recv(&mut fa).data, f3);
    assert!(
        host.recv_timeout(SHORT).is_none(),
        "the host got B's unicast to A"
    );

    // The host to B (learned): only B.
    let f4 = frame(mb, HOST_MAC, 800, 4);
    host.send(&f4).unwrap();
    assert_eq!(recv(&mut fb).data, f4);
    nothing(&mut fa, "A (the host's unicast to B)");

    // A to the host (learned from its frame): only the host.
    let f5 = frame(HOST_MAC, ma, 64, 5);
    fa.send(&f5).unwrap();
    assert_eq!(host.recv_timeout(T).unwrap().data, f5);
    nothing(&mut fb, "B (A's unicast to the host)");

    // A multicast frame floods.
    let f6 = frame([0x01, 0x00, 0x5e, 0, 0, 1], mb, 90, 6);
    fb.send(&f6).unwrap();
    assert_eq!(recv(&mut fa).data, f6);
    assert_eq!(host.recv_timeout(T).unwrap().data, f6);

    // A frontend that goes is forgotten: frames to it flood again, and
    // nothing breaks.
    fb.close(T).unwrap();
    assert!(until(|| w.nb().vif(B, 0).is_none()));
    let f7 = frame(mb, HOST_MAC, 60, 7);
    host.send(&f7).unwrap();
    assert_eq!(recv(&mut fa).data, f7);
    tx_done(&mut fa, 3);
}

#[test]
fn checksums_completed_for_a_frontend_without_offload() {
    let mut w = World::new("csum", NetbackConfig::new());
    let (pa, pb, pc) = (w.domain(A), w.domain(B), w.domain(C));
    let mut fa = w.front(&pa, 0, RingFrontConfig::default());
    let mut fb = w.front(&pb, 0, RingFrontConfig::default());
    let mut cfg = RingFrontConfig::default();
    cfg.net.csum_offload = false;
    cfg.net.ipv6_csum_offload = false;
    let mut fc = w.front(&pc, 0, cfg);
    assert!(!w.wait_vif(C, 0, 1).request.csum_ipv4);
    let (ma, mb, mc) = (mac(A, 0), mac(B, 0), mac(C, 0));
    // Let the switch learn the host, B and C.
    let host = w.nb().host_port();
    let hello = frame(BCAST, HOST_MAC, 60, 0);
    host.send(&hello).unwrap();
    for f in [&mut fa, &mut fb, &mut fc] {
        assert_eq!(recv(f).data, hello);
    }
    fb.send(&frame(HOST_MAC, mb, 60, 1)).unwrap();
    fc.send(&frame(HOST_MAC, mc, 60, 2)).unwrap();
    host.recv_timeout(T).unwrap();
    host.recv_timeout(T).unwrap();

    let partial = TxOffload {
        checksum: TxChecksum::Partial,
        gso: None,
    };
    // To B, which takes blank checksums: as sent, flagged.
    let t = tcp4_frame(mb, ma, 1200);
    fa.send_with(0, &t, partial).unwrap();
    let r = recv(&mut fb);
    assert_eq!(r.data, t);
    assert!(r.csum_blank && r.data_validated);
    // To C, which does not: completed, unflagged.
    let t = tcp4_frame(mc, ma, 1200);
    fa.send_with(0, &t, partial).unwrap();
    let r = recv(&mut fc);
    assert!(!r.csum_blank);
    assert_eq!(r.data[..50], t[..50]);
    assert_ne!(
        r.data[50..52],
        t[50..52],
        "the checksum field was not completed"
    );
    assert_eq!(r.data[52..], t[52..]);
    // The completed checksum verifies: pseudo-header + segment sums to 0xffff.
    let mut sum = Vec::new();
    sum.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 6]);
    sum.extend_from_slice(&((1200 - 34) as u16).to_be_bytes());
    sum.extend_from_slice(&r.data[34..]);
    assert_eq!(netfront::csum::ones_complement_sum(&sum), 0xffff);

    // A GSO frame goes to B (negotiated) but not to C.
    let g = TxOffload {
        checksum: TxChecksum::Partial,
        gso: Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 1000,
        }),
    };
    let big = tcp4_frame(mb, ma, 9000);
    fa.send_with(0, &big, g).unwrap();
    let r = recv(&mut fb);
    assert_eq!(r.data, big);
    assert_eq!(r.gso.map(|g| g.mss), Some(1000));
    let before = w.nb().vif(C, 0).unwrap().rx_dropped;
    host.send_frame(HostFrame {
        data: tcp4_frame(mc, HOST_MAC, 9000),
        meta: FrameMeta {
            csum_blank: true,
            data_validated: true,
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                mss: 1000,
            }),
        },
    })
    .unwrap();
    assert!(until(|| w.nb().vif(C, 0).unwrap().rx_dropped == before + 1));
    nothing(&mut fc, "C (a GSO frame it did not negotiate)");
    // Without scatter-gather, frames over one slot are dropped too.
    let mut cfg = RingFrontConfig::default();
    cfg.net.sg = false;
    let pd = w.domain(DomId(4));
    let mut fd = w.front(&pd, 0, cfg);
    assert!(!w.wait_vif(DomId(4), 0, 1).request.sg);
    let md = mac(DomId(4), 0);
    fd.send(&frame(HOST_MAC, md, 60, 3)).unwrap();
    host.recv_timeout(T).unwrap();
    host.send(&frame(md, HOST_MAC, 5000, 4)).unwrap();
    assert!(until(|| w.nb().vif(DomId(4), 0).unwrap().rx_dropped == 1));
    let one = frame(md, HOST_MAC, 1514, 5);
    host.send(&one).unwrap();
    assert_eq!(recv(&mut fd).data, one);
}

/// Parts of the frames the test builds and reads through the TAP device.
mod pkt {
    pub fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    pub fn arp_reply(
        src_mac: [u8; 6],
        src_ip: [u8; 4],
        dst_mac: [u8; 6],
        dst_ip: [u8; 4],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&src_ip);
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&dst_ip);
        f.resize(60, 0);
        f
    }

    pub fn udp(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: ([u8; 4], u16),
        dst: ([u8; 4], u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        ip.extend_from_slice(&src.0);
        ip.extend_from_slice(&dst.0);
        let c = !netfront::csum::ones_complement_sum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&src.1.to_be_bytes());
        f.extend_from_slice(&dst.1.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]); // no UDP checksum (IPv4 allows it)
        f.extend_from_slice(payload);
        f
    }
}

#[test]
fn tap_device_reaches_the_host_stack() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        eprintln!("SKIPPED tap_device_reaches_the_host_stack: cannot open /dev/net/tun ({e}); run as root on a host with the tun module");
        return;
    }
    let name = format!("nbt{}", std::process::id() % 100_000);
    let mut w = World::new("tap", NetbackConfig::new().tap(TapConfig::new(&name)));
    let ok = Command::new("ip")
        .args(["addr", "add", "10.231.7.1/24", "dev", &name])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED tap_device_reaches_the_host_stack: `ip addr add` on {name} failed");
        return;
    }
    let pa = w.domain(A);
    let mut fa = w.front(&pa, 0, RingFrontConfig::default());
    let ma = mac(A, 0);
    let my_ip = [10, 231, 7, 2];
    let host_ip = [10, 231, 7, 1];

    let sock = UdpSocket::bind("10.231.7.1:0").unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    let host_port = sock.local_addr().unwrap().port();
    sock.send_to(b"hello from the host", "10.231.7.2:7777")
        .unwrap();

    // The host asks who has 10.231.7.2 (ARP over the TAP device); answer,
    // then the datagram comes.
    let end = Instant::now() + T;
    let mut host_mac = None;
    let mut got = None;
    while got.is_none() {
        assert!(Instant::now() < end, "nothing came from the host stack");
        let Some(r) = fa.recv_timeout(Duration::from_millis(200), false).unwrap() else {
            continue;
        };
        let d = &r.data;
        if d.len() >= 42
            && pkt::be16(d, 12) == 0x0806
            && pkt::be16(d, 20) == 1
            && d[38..42] == my_ip
        {
            let src: [u8; 6] = d[6..12].try_into().unwrap();
            host_mac = Some(src);
            fa.send(&pkt::arp_reply(ma, my_ip, src, host_ip)).unwrap();
        } else if d.len() >= 42
            && pkt::be16(d, 12) == 0x0800
            && d[23] == 17
            && pkt::be16(d, 36) == 7777
        {
            got = Some(d[42..].to_vec());
        }
        let _ = fa.poll_tx();
    }
    assert_eq!(got.unwrap(), b"hello from the host");
    let hm = host_mac.expect("the host's ARP request");

    // And back: a datagram from the frontend to the host's socket.
    fa.send(&pkt::udp(
        ma,
        hm,
        (my_ip, 7777),
        (host_ip, host_port),
        b"hello from the guest",
    ))
    .unwrap();
    let mut buf = [0u8; 100];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello from the guest");
    assert_eq!(from.to_string(), "10.231.7.2:7777");
    drop(w);
}

/// Echoes every frame back in place, and also sends a copy of its first
/// 14 bytes followed by `0xee` (a new frame written in place).
struct Echo;

impl hosted::netback::HostHandler for Echo {
    fn frame(
        &mut self,
        frame: &mut [u8],
        _meta: &FrameMeta,
        out: &mut hosted::netback::HostOut<'_>,
    ) {
        let (dst, rest) = frame.split_at_mut(6);
        dst.swap_with_slice(&mut rest[..6]);
        let head: Vec<u8> = frame[..14].to_vec();
        assert!(out.send_with(60, FrameMeta::default(), |b| {
            b[..14].copy_from_slice(&head);
            b[14..].fill(0xee);
        }));
        out.send_back();
        // Too short for Ethernet: refused.
        assert!(!out.send(&[1, 2, 3]));
    }
}

#[test]
fn a_host_handler_answers_on_the_data_plane() {
    let mut w = World::new("handler", NetbackConfig::new().host_handler(Echo));
    let pa = w.domain(A);
    let mut fa = w.front(&pa, 0, RingFrontConfig::default());
    let ma = mac(A, 0);
    for (i, len) in [60usize, 1514, 9000].into_iter().enumerate() {
        let out = frame(HOST_MAC, ma, len, i as u32);
        fa.send(&out).unwrap();
        let mut want = out.clone();
        want[..6].copy_from_slice(&ma);
        want[6..12].copy_from_slice(&HOST_MAC);
        let first = recv(&mut fa);
        let second = recv(&mut fa);
        // The new frame went out first, then the frame itself.
        assert_eq!(first.data.len(), 60);
        assert_eq!(first.data[..14], want[..14]);
        assert!(first.data[14..].iter().all(|&b| b == 0xee));
        assert_eq!(second.data, want, "frame of {len} bytes");
    }
    assert!(
        w.nb().host_port().recv_timeout(SHORT).is_none(),
        "the handler replaces the host port"
    );
    assert_eq!(w.nb().host_dropped(), 3, "the three short frames");
    assert!(until(|| {
        let b = w.nb().frame_buffers().unwrap();
        b[0] == b[2] && b[1] == b[3]
    }));
}
