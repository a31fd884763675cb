//! The e1000e driver (`passthrough::e1000e`) against the hosted 82574L
//! model: reset, link and MAC; TX and RX of every frame size from 60 to
//! 1514 bytes in polling and interrupt modes; checksum offload both ways;
//! frames lent in place and recycled; smoltcp over the driver (ARP, ICMP
//! echo, a UDP echo of every payload size) with a smoltcp peer on the
//! model's wire; and devices that write nonsense, which break the driver
//! with a clear error and no panic.

#[path = "platform_common/mod.rs"]
mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::TestDir;
use grant_tables::DomId;
use hosted::pci::e1000e::{E1000eFaults, E1000eModel, E1000eWire};
use hosted::pci::HostedPci;
use hosted::{DomainConfig, HostedHypervisor, HostedPlatform};
use netfront::frame::{FrameDevice, FrameError, RxFrame, TxFrame};
use netfront::phy::smoltcp;
use netfront::phy::SmolDevice;
use passthrough::e1000e::{Config, E1000e, IrqMode, RxChecksum, TxChecksum};
use passthrough::Bdf;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr};

const NIC: Bdf = match Bdf::new(0, 0, 4, 0) {
    Some(b) => b,
    None => panic!("a valid address"),
};
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PEER: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
const SEC: u64 = 1_000_000_000;

/// A bus for dom1 with an e1000e (dropped before the hypervisor and the
/// directory).
struct Setup {
    pci: HostedPci,
    wire: E1000eWire,
    _hv: HostedHypervisor,
    _dir: TestDir,
}

fn setup(tag: &str, faults: E1000eFaults) -> Setup {
    let dir = TestDir::new(tag);
    let hv = HostedHypervisor::create(&dir.0).expect("hypervisor");
    let dom = HostedPlatform::join_with(&dir.0, DomId(1), DomainConfig::default()).expect("dom1");
    let pci = HostedPci::new(dom);
    let (model, wire) = E1000eModel::new(MAC);
    wire.set_faults(faults);
    pci.plug(NIC, model).expect("plug e1000e");
    Setup {
        pci,
        wire,
        _hv: hv,
        _dir: dir,
    }
}

fn config(mode: IrqMode) -> Config {
    Config {
        mode,
        link_timeout_ns: SEC / 2,
        ..Config::default()
    }
}

fn open(s: &Setup, mode: IrqMode) -> E1000e<HostedPci> {
    E1000e::new(s.pci.clone(), NIC, config(mode)).expect("bring-up")
}

fn frame(len: usize, dst: [u8; 6], src: [u8; 6], seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    // A local experimental EtherType: no IP, no checksums.
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// Sends `data` through the driver, writing it in place.
fn send(dev: &mut E1000e<HostedPci>, data: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tx = loop {
        if let Some(tx) = dev.tx_buffer(data.len()).expect("tx_buffer") {
            break tx;
        }
        assert!(Instant::now() < deadline, "no TX buffer came back");
        dev.poll().expect("poll");
    };
    assert_eq!(tx.len(), data.len());
    tx.as_mut_slice()
        .expect("a TX buffer lent in place")
        .copy_from_slice(data);
    dev.send(tx).expect("send");
}

/// The next frame the driver receives, waiting with the driver's `wait`.
fn receive(dev: &mut E1000e<HostedPci>) -> <E1000e<HostedPci> as FrameDevice>::Rx {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(f) = dev.receive().expect("receive") {
            return f;
        }
        assert!(Instant::now() < deadline, "no frame arrived");
        dev.wait(Some(SEC / 10)).expect("wait");
    }
}

#[test]
fn reset_link_and_mac_address() {
    let s = setup("e1k-up", E1000eFaults::default());
    let dev = open(&s, IrqMode::Interrupts);
    let link = dev.link();
    assert!(link.up);
    assert_eq!(link.mac, MAC);
    assert_eq!((link.mtu, link.max_frame), (1500, 1514));
    assert_eq!(dev.mac(), MAC);
    assert!(dev.broken().is_none());
    // Every RX buffer the ring holds is posted (one slot stays empty), the
    // rest wait in the pool.
    assert_eq!(dev.rx_buffers_free(), 320 - 255);
    drop(dev);

    // Receive address 0 empty: the address comes from the EEPROM.
    let s = setup(
        "e1k-eeprom",
        E1000eFaults {
            receive_address_unset: true,
            ..Default::default()
        },
    );
    let dev = open(&s, IrqMode::Polling);
    assert_eq!(dev.mac(), MAC);
}

#[test]
fn the_link_comes_up_later_and_goes_down() {
    let s = setup("e1k-link", E1000eFaults::default());
    s.wire.set_link(false);
    // The model notices the cable on its next look; bring-up waits at most
    // half a second for the link and goes on without it.
    let mut dev = open(&s, IrqMode::Interrupts);
    let deadline = Instant::now() + Duration::from_secs(5);
    while dev.link().up {
        assert!(Instant::now() < deadline, "the link never went down");
        dev.wait(Some(SEC / 10)).unwrap();
        dev.poll().unwrap();
    }
    assert_eq!(dev.tx_buffer(60).unwrap_err(), FrameError::LinkDown);
    s.wire.set_link(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dev.link().up {
        assert!(Instant::now() < deadline, "the link never came up");
        dev.wait(Some(SEC / 10)).unwrap();
        dev.poll().unwrap();
    }
    // Down then up, or (when bring-up already saw the cable out) just up.
    assert!(dev.stats().link_changes >= 1);
    // A link change is an interrupt on the "other" vector.
    assert!(dev.stats().interrupts >= 1);
    send(&mut dev, &frame(60, PEER, MAC, 1));
    assert!(s.wire.recv_timeout(Duration::from_secs(5)).is_some());
}

fn every_size(mode: IrqMode, tag: &str) {
    let s = setup(tag, E1000eFaults::default());
    let mut dev = open(&s, mode);
    for len in 60..=1514 {
        // TX: written in place, seen byte for byte on the wire.
        let out = frame(len, PEER, MAC, len as u8);
        send(&mut dev, &out);
        let got = s
            .wire
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("TX of {len} bytes lost"));
        assert_eq!(got, out, "TX of {len} bytes");
        // RX: lent in place, byte for byte.
        let inbound = frame(len, MAC, PEER, !(len as u8));
        assert!(s.wire.send(&inbound));
        let f = receive(&mut dev);
        assert_eq!(f.len(), len);
        assert_eq!(
            f.as_slice().expect("an RX frame lent in place"),
            &inbound[..],
            "RX of {len} bytes"
        );
        let mut tail = [0u8; 4];
        f.read_at(len - 4, &mut tail).unwrap();
        assert_eq!(tail, inbound[len - 4..]);
        assert!(matches!(
            f.read_at(len - 3, &mut tail),
            Err(FrameError::OutOfRange { .. })
        ));
        assert_eq!(f.checksum(), RxChecksum::default(), "no IP, nothing checked");
    }
    dev.poll().unwrap();
    let st = dev.stats();
    assert_eq!((st.tx_frames, st.rx_frames), (1455, 1455));
    assert_eq!((st.tx_errors, st.rx_errors), (0, 0));
    assert!(dev.broken().is_none());
    assert_eq!(
        s.pci.msix_table_writes(NIC),
        0,
        "the driver wrote the MSI-X table, which faults a PV domain on Xen"
    );
    match mode {
        IrqMode::Interrupts => {
            assert!(s.pci.interrupts_delivered(NIC) > 0);
            assert!(st.interrupts > 0);
        }
        IrqMode::Polling => {
            assert_eq!(
                s.pci.interrupts_delivered(NIC),
                0,
                "every interrupt is masked in polling mode"
            );
            assert_eq!(st.interrupts, 0);
        }
    }
}

#[test]
fn tx_and_rx_of_every_size_with_interrupts() {
    every_size(IrqMode::Interrupts, "e1k-sizes-irq");
}

#[test]
fn tx_and_rx_of_every_size_polling() {
    every_size(IrqMode::Polling, "e1k-sizes-poll");
}

#[test]
fn modes_switch_and_short_frames_are_padded() {
    let s = setup("e1k-modes", E1000eFaults::default());
    let mut dev = open(&s, IrqMode::Polling);
    // A frame shorter than 60 bytes arrives padded with zeros.
    let mut short = frame(42, MAC, PEER, 7);
    assert!(s.wire.send(&short));
    let f = receive(&mut dev);
    short.resize(60, 0);
    assert_eq!(f.as_slice().unwrap(), &short[..]);
    drop(f);
    // Frames not for us are filtered by the device.
    assert!(s.wire.send(&frame(60, PEER, PEER, 1)));
    // Interrupts from now on: a frame wakes a blocked wait.
    dev.set_mode(IrqMode::Interrupts).unwrap();
    assert!(s.wire.send(&frame(100, MAC, PEER, 2)));
    let f = receive(&mut dev);
    assert_eq!(f.len(), 100);
    assert!(s.pci.interrupts_delivered(NIC) > 0);
    assert!(s.wire.frames_dropped() >= 1);
    drop(f);
    // Nothing more arrives: wait times out (after at most a few wake-ups
    // left from the frames above).
    let mut wakeups = 0;
    loop {
        let t = Instant::now();
        if !dev.wait(Some(SEC / 20)).unwrap() {
            assert!(t.elapsed() >= Duration::from_millis(40));
            break;
        }
        wakeups += 1;
        assert!(wakeups < 5, "woken with nothing to do");
    }
    dev.set_mode(IrqMode::Polling).unwrap();
    assert!(!dev.wait(Some(SEC / 20)).unwrap());
}

#[test]
fn rx_frames_are_recycled_when_dropped() {
    let s = setup("e1k-recycle", E1000eFaults::default());
    let mut dev = open(&s, IrqMode::Interrupts);
    let free_at_start = dev.rx_buffers_free();
    // Hold 40 frames: the pool lends them, the ring is refilled from the
    // spare buffers.
    let mut held = Vec::new();
    for i in 0..40u8 {
        assert!(s.wire.send(&frame(64 + usize::from(i), MAC, PEER, i)));
        held.push(receive(&mut dev));
    }
    for (i, f) in held.iter().enumerate() {
        assert_eq!(f.len(), 64 + i);
        assert_eq!(f.as_slice().unwrap()[14], frame(64 + i, MAC, PEER, i as u8)[14]);
    }
    dev.poll().unwrap();
    assert_eq!(dev.rx_buffers_free(), free_at_start - 40);
    drop(held);
    dev.poll().unwrap();
    assert_eq!(dev.rx_buffers_free(), free_at_start);
    // Many more frames than buffers, each dropped after reading.
    for i in 0..1000u32 {
        let f = frame(60 + (i as usize % 1400), MAC, PEER, i as u8);
        assert!(s.wire.send(&f));
        let r = receive(&mut dev);
        assert_eq!(r.as_slice().unwrap(), &f[..]);
    }
    // TX buffers dropped unsent go back too.
    let before = dev.tx_buffers_free();
    let tx = dev.tx_buffer(100).unwrap().unwrap();
    assert_eq!(dev.tx_buffers_free(), before - 1);
    drop(tx);
    assert_eq!(dev.tx_buffers_free(), before);
    assert_eq!(
        dev.tx_buffer(1515).unwrap_err(),
        FrameError::TooLarge { len: 1515, max: 1514 }
    );
}

/// The ones'-complement sum of big-endian 16-bit words.
fn csum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// An IPv4 UDP frame from the peer to us with `payload`; checksums filled
/// in when `valid`, left zero in the IP header and wrong in UDP otherwise.
fn udp_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8], valid: bool) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut f = vec![0u8; 14 + 20 + udp_len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    if valid {
        let c = !fold(csum(&f[14..34], 0));
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
    f[34..36].copy_from_slice(&5000u16.to_be_bytes());
    f[36..38].copy_from_slice(&7u16.to_be_bytes());
    f[38..40].copy_from_slice(&(udp_len as u16).to_be_bytes());
    f[42..].copy_from_slice(payload);
    let pseudo = csum(&f[26..34], 17 + udp_len as u32);
    let c = !fold(csum(&f[34..], pseudo));
    let c = if valid {
        if c == 0 {
            0xffff
        } else {
            c
        }
    } else {
        c ^ 0x5555
    };
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn checksum_offload_both_ways() {
    let s = setup("e1k-csum", E1000eFaults::default());
    let mut dev = open(&s, IrqMode::Interrupts);
    // RX: the device checks IPv4 and UDP checksums.
    let good = udp_frame(MAC, PEER, b"hello, checksums", true);
    assert!(s.wire.send(&good));
    let f = receive(&mut dev);
    assert_eq!(
        f.checksum(),
        RxChecksum {
            ip: Some(true),
            l4: Some(true),
            udp: true
        }
    );
    drop(f);
    let bad = udp_frame(MAC, PEER, b"hello, checksums", false);
    assert!(s.wire.send(&bad));
    let f = receive(&mut dev);
    assert_eq!(
        f.checksum(),
        RxChecksum {
            ip: Some(false),
            l4: Some(false),
            udp: true
        }
    );
    drop(f);

    // TX: the device inserts both; the UDP field holds the pseudo-header
    // sum, as the hardware expects.
    for payload_len in [0usize, 1, 17, 1000, 1472] {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7) as u8).collect();
        let want = udp_frame(PEER, MAC, &payload, true);
        let mut out = want.clone();
        out[24..26].copy_from_slice(&[0, 0]);
        let pseudo = fold(csum(&out[26..34], 17 + (8 + payload_len) as u32));
        out[40..42].copy_from_slice(&pseudo.to_be_bytes());
        let mut tx = dev.tx_buffer(out.len()).unwrap().unwrap();
        tx.write_at(0, &out).unwrap();
        tx.set_checksum(Some(TxChecksum::ipv4(20, false)));
        dev.send(tx).unwrap();
        let got = s.wire.recv_timeout(Duration::from_secs(5)).expect("sent");
        assert_eq!(
            fold(csum(&got[14..34], 0)),
            0xffff,
            "IP header checksum, payload {payload_len}"
        );
        let pseudo = csum(&got[26..34], 17 + (8 + payload_len) as u32);
        assert_eq!(
            fold(csum(&got[34..], pseudo)),
            0xffff,
            "UDP checksum, payload {payload_len}"
        );
        if fold(csum(&want[34..], pseudo)) == 0xffff {
            assert_eq!(got[24..26], want[24..26]);
        }
    }
    // Offsets outside the frame are refused, and the buffer comes back.
    let free = dev.tx_buffers_free();
    let mut tx = dev.tx_buffer(30).unwrap().unwrap();
    tx.set_checksum(Some(TxChecksum::ipv4(20, true)));
    assert!(matches!(dev.send(tx), Err(FrameError::Invalid(_))));
    assert_eq!(dev.tx_buffers_free(), free);
    assert!(dev.broken().is_none());
}

/// The peer's end of the wire as a smoltcp device.
struct WirePhy {
    wire: E1000eWire,
    pending: VecDeque<Vec<u8>>,
}

struct WireRx(Vec<u8>);

impl phy::RxToken for WireRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct WireTx<'a>(&'a E1000eWire);

impl phy::TxToken for WireTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        let _ = self.0.send(&buf);
        r
    }
}

impl phy::Device for WirePhy {
    type RxToken<'a> = WireRx;
    type TxToken<'a> = WireTx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(WireRx, WireTx<'_>)> {
        while let Some(f) = self.wire.recv() {
            self.pending.push_back(f);
        }
        let f = self.pending.pop_front()?;
        Some((WireRx(f), WireTx(&self.wire)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<WireTx<'_>> {
        Some(WireTx(&self.wire))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

fn iface<D: phy::Device>(dev: &mut D, mac: [u8; 6], ip: [u8; 4]) -> Interface {
    let mut iface = Interface::new(
        IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac))),
        dev,
        SmolInstant::ZERO,
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(ip[0], ip[1], ip[2], ip[3]), 24))
            .unwrap();
    });
    iface
}

fn byte(i: usize, seed: u8) -> u8 {
    ((i * 131) >> 3) as u8 ^ seed
}

#[test]
fn smoltcp_ping_and_udp_echo_of_every_size() {
    let s = setup("e1k-smol", E1000eFaults::default());
    let dev = open(&s, IrqMode::Interrupts);
    let mut guest = SmolDevice::new(dev);
    let mut peer = WirePhy {
        wire: s.wire.clone(),
        pending: VecDeque::new(),
    };
    let mut gif = iface(&mut guest, MAC, [10, 0, 0, 2]);
    let mut pif = iface(&mut peer, PEER, [10, 0, 0, 1]);
    let peer_ip = IpAddress::v4(10, 0, 0, 1);

    let mut gs = SocketSet::new(vec![]);
    let mut ps = SocketSet::new(vec![]);
    let ping = gs.add(icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    ));
    let udp_buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 64 * 1024]);
    let gudp = gs.add(udp::Socket::new(udp_buf(), udp_buf()));
    let pudp = ps.add(udp::Socket::new(udp_buf(), udp_buf()));
    gs.get_mut::<udp::Socket>(gudp).bind(4000).unwrap();
    ps.get_mut::<udp::Socket>(pudp).bind(7).unwrap();

    let start = Instant::now();
    let now = || SmolInstant::from_micros(start.elapsed().as_micros() as i64);
    let mut pongs = 0u16;
    let mut ping_out = false;
    let mut udp_size = 1usize;
    let mut udp_sent = false;
    let end = start + Duration::from_secs(120);
    while Instant::now() < end && (pongs < 10 || udp_size <= 1472) {
        gif.poll(now(), &mut guest, &mut gs);
        pif.poll(now(), &mut peer, &mut ps);
        guest.inner_mut().poll().unwrap();

        let sock = gs.get_mut::<icmp::Socket>(ping);
        if !sock.is_open() {
            sock.bind(icmp::Endpoint::Ident(0x44)).unwrap();
        }
        if pongs < 10 && !ping_out && sock.can_send() {
            let repr = Icmpv4Repr::EchoRequest {
                ident: 0x44,
                seq_no: pongs,
                data: b"e1000e ping",
            };
            let buf = sock.send(repr.buffer_len(), peer_ip).unwrap();
            repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &ChecksumCapabilities::default());
            ping_out = true;
        }
        if sock.can_recv() {
            let (data, _) = sock.recv().unwrap();
            let repr = Icmpv4Repr::parse(
                &Icmpv4Packet::new_checked(data).unwrap(),
                &ChecksumCapabilities::default(),
            )
            .unwrap();
            assert!(
                matches!(repr, Icmpv4Repr::EchoReply { ident: 0x44, seq_no, data: b"e1000e ping" } if seq_no == pongs)
            );
            pongs += 1;
            ping_out = false;
        }

        let p = ps.get_mut::<udp::Socket>(pudp);
        while let Ok((data, meta)) = p.recv() {
            let copy = data.to_vec();
            p.send_slice(&copy, meta.endpoint).unwrap();
        }
        let g = gs.get_mut::<udp::Socket>(gudp);
        if pongs >= 10 && udp_size <= 1472 {
            if !udp_sent && g.can_send() {
                let payload: Vec<u8> = (0..udp_size).map(|i| byte(i, udp_size as u8)).collect();
                g.send_slice(&payload, (peer_ip, 7)).unwrap();
                udp_sent = true;
            }
            if let Ok((data, _)) = g.recv() {
                assert_eq!(data.len(), udp_size);
                for (i, &b) in data.iter().enumerate() {
                    assert_eq!(b, byte(i, udp_size as u8), "UDP size {udp_size} byte {i}");
                }
                udp_size += 1;
                udp_sent = false;
            }
        }
        if !guest.inner_mut().wait(Some(SEC / 1000)).unwrap() {
            std::thread::yield_now();
        }
    }
    assert_eq!(pongs, 10, "pings answered");
    assert_eq!(udp_size, 1473, "UDP echo reached every size");
    let st = guest.inner().stats();
    assert!(st.rx_frames >= 1482 && st.tx_frames >= 1482, "{st:?}");
    assert!(guest.inner().broken().is_none());
}

/// Runs traffic until the driver breaks; returns the error.
fn break_with(tag: &str, faults: E1000eFaults, mode: IrqMode) -> String {
    let s = setup(tag, E1000eFaults::default());
    let mut dev = open(&s, mode);
    s.wire.set_faults(faults);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0u8;
    let why = loop {
        assert!(Instant::now() < deadline, "{tag}: the driver never noticed {faults:?}");
        i = i.wrapping_add(1);
        let _ = s.wire.send(&frame(80, MAC, PEER, i));
        let step = (|| -> Result<(), FrameError> {
            if let Some(tx) = dev.tx_buffer(60)? {
                dev.send(tx)?;
            }
            while let Some(f) = dev.receive()? {
                drop(f);
            }
            dev.poll()?;
            dev.wait(Some(SEC / 100))?;
            Ok(())
        })();
        match step {
            Ok(()) => {}
            Err(FrameError::Broken(why)) => break why,
            Err(e) => panic!("{tag}: unexpected error {e}"),
        }
    };
    // Broken for good, with the same message, and the link reads down.
    assert_eq!(dev.receive().unwrap_err(), FrameError::Broken(why.clone()));
    assert_eq!(dev.poll().unwrap_err(), FrameError::Broken(why.clone()));
    assert!(matches!(dev.tx_buffer(60), Err(FrameError::Broken(_))));
    assert!(!dev.link().up);
    assert_eq!(dev.broken(), Some(why.as_str()));
    why
}

#[test]
fn impossible_rx_lengths_break_the_device() {
    for (len, tag) in [
        (0u16, "e1k-len0"),
        (4000, "e1k-len4000"),
        (2047, "e1k-len2047"),
        (10, "e1k-len10"),
    ] {
        let why = break_with(
            tag,
            E1000eFaults {
                rx_length: Some(len),
                ..Default::default()
            },
            IrqMode::Polling,
        );
        assert!(why.contains(&format!("length {len}")), "{why}");
    }
}

#[test]
fn nonsense_rx_status_breaks_the_device() {
    let why = break_with(
        "e1k-noeop",
        E1000eFaults {
            rx_no_eop: true,
            ..Default::default()
        },
        IrqMode::Interrupts,
    );
    assert!(why.contains("without end-of-packet"), "{why}");
    let why = break_with(
        "e1k-ipe",
        E1000eFaults {
            rx_bad_status: true,
            ..Default::default()
        },
        IrqMode::Polling,
    );
    assert!(why.contains("checksum error for a checksum not checked"), "{why}");
    let why = break_with(
        "e1k-vlan",
        E1000eFaults {
            rx_vlan: true,
            ..Default::default()
        },
        IrqMode::Polling,
    );
    assert!(why.contains("VLAN"), "{why}");
}

#[test]
fn done_bits_on_descriptors_never_posted_break_the_device() {
    // The device's stray done bit either is seen on the unposted slot
    // (while looking for completions, or when the driver posts into it:
    // a refill must not hide it), or lands in a slot the driver is filling at that moment (the driver
    // writes descriptors without the device's lock) and then reads as a
    // write-back without end-of-packet when the driver reaches it.
    let why = break_with(
        "e1k-rxtail",
        E1000eFaults {
            rx_done_at_tail: true,
            ..Default::default()
        },
        IrqMode::Polling,
    );
    assert!(
        (why.contains("RX descriptor") && why.contains("never posted")) || why.contains("without end-of-packet"),
        "{why}"
    );
    let why = break_with(
        "e1k-txtail",
        E1000eFaults {
            tx_done_at_tail: true,
            ..Default::default()
        },
        IrqMode::Interrupts,
    );
    assert!(why.contains("TX descriptor") && why.contains("never posted"), "{why}");
}

#[test]
fn heads_beyond_the_ring_break_the_device() {
    let why = break_with(
        "e1k-rdh",
        E1000eFaults {
            rdh: Some(4096),
            ..Default::default()
        },
        IrqMode::Polling,
    );
    assert!(why.contains("RX head is 4096"), "{why}");
    let why = break_with(
        "e1k-tdh",
        E1000eFaults {
            tdh: Some(0xffff_ffff),
            ..Default::default()
        },
        IrqMode::Interrupts,
    );
    assert!(why.contains("TX head is 4294967295"), "{why}");
}

#[test]
fn frames_with_errors_are_dropped_and_the_device_goes_on() {
    let s = setup("e1k-crc", E1000eFaults::default());
    let mut dev = open(&s, IrqMode::Polling);
    s.wire.set_faults(E1000eFaults {
        rx_crc_error: true,
        ..Default::default()
    });
    for i in 0..5 {
        assert!(s.wire.send(&frame(100, MAC, PEER, i)));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while dev.stats().rx_errors < 5 {
        assert!(Instant::now() < deadline, "the bad frames never came");
        assert!(
            dev.receive().unwrap().is_none(),
            "a frame with a CRC error was delivered"
        );
        dev.wait(Some(SEC / 100)).unwrap();
    }
    s.wire.set_faults(E1000eFaults::default());
    let good = frame(100, MAC, PEER, 9);
    assert!(s.wire.send(&good));
    assert_eq!(receive(&mut dev).as_slice().unwrap(), &good[..]);
    assert!(dev.broken().is_none());
}

#[test]
fn another_device_is_refused() {
    let dir = TestDir::new("e1k-other");
    let _hv = HostedHypervisor::create(&dir.0).expect("hypervisor");
    let dom = HostedPlatform::join_with(&dir.0, DomId(1), DomainConfig::default()).expect("dom1");
    let pci = HostedPci::new(dom);
    pci.plug(NIC, hosted::pci::edu::EduModel::new()).expect("plug edu");
    let err = E1000e::new(pci.clone(), NIC, config(IrqMode::Polling)).unwrap_err();
    assert!(err.to_string().contains("not an Intel 82574L"), "{err}");
    // Nothing at all at an address: the device is gone.
    let empty = Bdf::new(0, 0, 9, 0).unwrap();
    assert!(E1000e::new(pci, empty, config(IrqMode::Polling)).is_err());
}

#[test]
fn a_frame_from_another_device_is_refused() {
    let s = setup("e1k-foreign", E1000eFaults::default());
    let other = Bdf::new(0, 0, 5, 0).unwrap();
    let (model_b, _wire_b) = E1000eModel::new(PEER);
    s.pci.plug(other, model_b).expect("plug a second e1000e");
    let mut a = open(&s, IrqMode::Polling);
    let mut b = E1000e::new(s.pci.clone(), other, config(IrqMode::Polling)).expect("bring-up");
    let a_free = a.tx_buffers_free();
    let b_free = b.tx_buffers_free();
    let mut foreign = b.tx_buffer(64).unwrap().unwrap();
    foreign.write_at(0, &frame(64, PEER, MAC, 1)).unwrap();
    let err = a.send(foreign).unwrap_err();
    assert!(
        matches!(&err, FrameError::Invalid(why) if why.contains("another network device")),
        "{err:?}"
    );
    // The frame went back to b's pool; a's pool is untouched, nothing sent.
    assert_eq!(a.tx_buffers_free(), a_free);
    assert_eq!(b.tx_buffers_free(), b_free);
    assert_eq!(s.wire.frames_sent(), 0);
    // Every buffer of each pool is lent once at most: take them all, the
    // ids never repeat, and both devices still work.
    let mut held = Vec::new();
    while let Some(f) = a.tx_buffer(64).unwrap() {
        held.push(f);
    }
    assert_eq!(held.len(), a_free);
    drop(held);
    assert!(a.broken().is_none() && b.broken().is_none());
    send(&mut a, &frame(64, PEER, MAC, 2));
    let got = s.wire.recv_timeout(Duration::from_secs(5)).expect("a frame on a's wire");
    assert_eq!(got, frame(64, PEER, MAC, 2));
}

/// Whether bus mastering and MSI-X are enabled, as configuration space
/// says now.
fn master_and_msix(pci: &HostedPci, bdf: Bdf) -> (bool, bool) {
    use passthrough::config::{self, ConfigAccess};
    let command = pci.read16(bdf, config::COMMAND).expect("COMMAND");
    let caps = config::capabilities(pci, bdf).expect("capabilities");
    let msix = caps
        .iter()
        .find(|c| c.id == config::CAP_ID_MSIX)
        .expect("an MSI-X capability");
    let control = pci
        .read16(bdf, u16::from(msix.offset) + 2)
        .expect("MSI-X control");
    (
        command & config::COMMAND_MASTER != 0,
        control & 0x8000 != 0,
    )
}

#[test]
fn the_msix_table_is_read_only_and_msix_needs_memory_decoding() {
    use passthrough::config::{self, ConfigAccess, DeviceInfo};
    use passthrough::{Mmio, PciError, PciPlatform};
    let s = setup("e1k-msix-ro", E1000eFaults::default());
    let info = DeviceInfo::probe(&s.pci, NIC).expect("probe");
    let msix = info.msix.expect("an MSI-X capability");
    // Memory decoding off (as after reset): pciback refuses MSI-X.
    let command = s.pci.read16(NIC, config::COMMAND).unwrap();
    assert_eq!(command & config::COMMAND_MEMORY, 0);
    match s.pci.enable_msix(NIC, &[0, 1, 2]) {
        Err(PciError::InvalidRequest { reason, .. }) => {
            assert!(reason.contains("memory decoding is off"), "{reason}")
        }
        other => panic!("enable_msix with memory decoding off: {other:?}"),
    }
    config::enable_memory_and_bus_master(&s.pci, NIC).unwrap();
    let ports = s.pci.enable_msix(NIC, &[0, 1, 2]).expect("enable_msix");
    assert_eq!(ports.len(), 3);
    let bar = *info.bar(msix.table_bir).expect("the table's BAR");
    let regs = s.pci.map_bar(NIC, &bar).expect("map the BAR");
    let entry0 = msix.table_offset as usize;
    let data = regs.read32(entry0 + 8).unwrap();
    let control = regs.read32(entry0 + 12).unwrap();
    assert_eq!(control & 1, 0, "entry 0 unmasked by enable_msix");
    // A write to an entry (data, then the mask bit) is refused and
    // counted: Xen maps the table read-only into a PV domain.
    regs.write32(entry0 + 8, data ^ 0xffff).unwrap();
    regs.write32(entry0 + 12, 1).unwrap();
    assert_eq!(regs.read32(entry0 + 8).unwrap(), data);
    assert_eq!(regs.read32(entry0 + 12).unwrap(), control);
    assert_eq!(s.pci.msix_table_writes(NIC), 2);
    s.pci.disable_msix(NIC).unwrap();
}

#[test]
fn a_vanished_device_is_noticed_while_polling_without_timeout() {
    let s = setup("e1k-gone-poll", E1000eFaults::default());
    let mut dev = open(&s, IrqMode::Polling);
    dev.poll().unwrap();
    // The device vanishes once the driver is spinning in wait(None) (its
    // first poll would notice a device gone before).
    let wire = s.wire.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        wire.set_faults(E1000eFaults {
            gone: true,
            ..E1000eFaults::default()
        });
    });
    // Nothing arrives: wait(None) must find out by itself that the device
    // is gone rather than spin forever. The driver is not Send, so a
    // watchdog fails the test binary if the wait hangs.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            eprintln!("wait(None) never noticed the device vanished");
            std::process::exit(101);
        }
    });
    let r = dev.wait(None);
    let _ = done_tx.send(());
    match r {
        Err(FrameError::Broken(why)) => assert!(why.contains("gone"), "{why}"),
        other => panic!("expected the device broken, got {other:?}"),
    }
    assert!(dev.broken().is_some());
    drop(dev);
}

#[test]
fn a_broken_device_has_msix_and_bus_mastering_off() {
    let s = setup("e1k-break-off", E1000eFaults::default());
    let mut dev = open(&s, IrqMode::Interrupts);
    assert_eq!(master_and_msix(&s.pci, NIC), (true, true));
    s.wire.set_faults(E1000eFaults {
        tdh: Some(0x10_0000),
        ..E1000eFaults::default()
    });
    assert!(matches!(dev.poll(), Err(FrameError::Broken(_))));
    assert_eq!(master_and_msix(&s.pci, NIC), (false, false));
    drop(dev);
}

#[test]
fn a_failed_bring_up_leaves_bus_mastering_off() {
    let s = setup("e1k-bringup-fail", E1000eFaults::default());
    // A DMA mask no buffer fits: bring-up fails after enabling memory
    // decoding and bus mastering, while allocating the rings.
    let cfg = Config {
        dma_mask: 0x7ff,
        ..config(IrqMode::Polling)
    };
    assert!(E1000e::new(s.pci.clone(), NIC, cfg).is_err());
    assert_eq!(master_and_msix(&s.pci, NIC), (false, false));
    // The device still comes up afterwards.
    let dev = open(&s, IrqMode::Polling);
    assert!(dev.broken().is_none());
}
