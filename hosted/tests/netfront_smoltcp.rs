//! smoltcp on netfront through the hosted netback: the guest's interface
//! on a `NetfrontDevice` (frames lent in place to smoltcp), the host's
//! interface on the netback's host port, doing ARP, an ICMP ping, a UDP
//! echo of every payload size from 1 to 1472 bytes, and 1 MiB of TCP each
//! way, every byte checked.

#[path = "netback_common/mod.rs"]
mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::*;
use grant_tables::DomId;
use hosted::netback::{HostPort, NetbackConfig, ServeMode};
use netfront::phy::smoltcp;
use netfront::phy::SmolDevice;
use netfront::{DriverConfig, FrameDevice, NetfrontDevice, WaitMode};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr,
};

const FE: DomId = DomId(1);

/// The host side of the switch as a smoltcp device.
struct HostPhy {
    port: HostPort,
    arp_from_guest: usize,
    pending: VecDeque<Vec<u8>>,
}

struct HostRx(Vec<u8>);

impl phy::RxToken for HostRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct HostTx<'a>(&'a HostPort);

impl phy::TxToken for HostTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        let _ = self.0.send(&buf);
        r
    }
}

impl phy::Device for HostPhy {
    type RxToken<'a> = HostRx;
    type TxToken<'a> = HostTx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(HostRx, HostTx<'_>)> {
        while let Some(f) = self.port.recv_timeout(Duration::ZERO) {
            self.pending.push_back(f.data);
        }
        let f = self.pending.pop_front()?;
        if f[12..14] == [0x08, 0x06] {
            self.arp_from_guest += 1;
        }
        Some((HostRx(f), HostTx(&self.port)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<HostTx<'_>> {
        Some(HostTx(&self.port))
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
        Config::new(HardwareAddress::Ethernet(EthernetAddress(mac))),
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
fn smoltcp_arp_ping_udp_echo_and_tcp_through_netback() {
    let mut w = World::new("nf-smol", NetbackConfig::new().mode(ServeMode::Event));
    let plat = w.domain(FE);
    w.plug(FE, 0);
    let cfg = DriverConfig {
        wait: WaitMode::Poll,
        ..DriverConfig::default()
    };
    let mut dev = NetfrontDevice::new(plat, w.xs(FE), "device/vif/0", cfg);
    dev.wait_up(10_000_000_000).unwrap();
    let me = mac(FE, 0);
    let mut guest = SmolDevice::new(dev);
    let mut host = HostPhy {
        port: w.nb().host_port(),
        arp_from_guest: 0,
        pending: VecDeque::new(),
    };
    let mut gif = iface(&mut guest, me, [10, 0, 0, 2]);
    let mut hif = iface(&mut host, HOST_MAC, [10, 0, 0, 1]);
    let host_ip = IpAddress::v4(10, 0, 0, 1);

    let mut gs = SocketSet::new(vec![]);
    let mut hs = SocketSet::new(vec![]);
    let ping = gs.add(icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    ));
    let udp_buf =
        || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 64 * 1024]);
    let gudp = gs.add(udp::Socket::new(udp_buf(), udp_buf()));
    let hudp = hs.add(udp::Socket::new(udp_buf(), udp_buf()));
    let tcp_sock = || {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        )
    };
    let gtcp = gs.add(tcp_sock());
    let htcp = hs.add(tcp_sock());
    gs.get_mut::<udp::Socket>(gudp).bind(4000).unwrap();
    hs.get_mut::<udp::Socket>(hudp).bind(7).unwrap();
    hs.get_mut::<tcp::Socket>(htcp).listen(5001).unwrap();

    const TOTAL: usize = 1 << 20;
    let start = Instant::now();
    let now = || SmolInstant::from_micros(start.elapsed().as_micros() as i64);
    let (mut pinged, mut pong) = (false, false);
    let mut udp_size = 1usize;
    let mut udp_sent = false;
    let mut connected = false;
    let (mut g_sent, mut g_recv, mut h_sent, mut h_recv) = (0usize, 0usize, 0usize, 0usize);
    let end = start + Duration::from_secs(60);
    while Instant::now() < end {
        gif.poll(now(), &mut guest, &mut gs);
        hif.poll(now(), &mut host, &mut hs);
        guest.inner_mut().poll().unwrap();

        let s = gs.get_mut::<icmp::Socket>(ping);
        if !s.is_open() {
            s.bind(icmp::Endpoint::Ident(0x33)).unwrap();
        }
        if !pinged && s.can_send() {
            let repr = Icmpv4Repr::EchoRequest {
                ident: 0x33,
                seq_no: 1,
                data: b"ping",
            };
            let buf = s.send(repr.buffer_len(), host_ip).unwrap();
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(buf),
                &ChecksumCapabilities::default(),
            );
            pinged = true;
        }
        if s.can_recv() {
            let (data, _) = s.recv().unwrap();
            let repr = Icmpv4Repr::parse(
                &Icmpv4Packet::new_checked(data).unwrap(),
                &ChecksumCapabilities::default(),
            )
            .unwrap();
            assert!(matches!(
                repr,
                Icmpv4Repr::EchoReply {
                    ident: 0x33,
                    seq_no: 1,
                    ..
                }
            ));
            pong = true;
        }

        // UDP echo of every size, one at a time, after the ping.
        let h = hs.get_mut::<udp::Socket>(hudp);
        while let Ok((data, meta)) = h.recv() {
            let copy = data.to_vec();
            h.send_slice(&copy, meta.endpoint).unwrap();
        }
        let g = gs.get_mut::<udp::Socket>(gudp);
        if pong && udp_size <= 1472 {
            if !udp_sent && g.can_send() {
                let payload: Vec<u8> = (0..udp_size).map(|i| byte(i, udp_size as u8)).collect();
                g.send_slice(&payload, (host_ip, 7)).unwrap();
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

        // TCP once the echo is done.
        let g = gs.get_mut::<tcp::Socket>(gtcp);
        if udp_size > 1472 && !connected {
            g.connect(gif.context(), (host_ip, 5001), 49152).unwrap();
            connected = true;
        }
        if g.can_send() && g_sent < TOTAL {
            g_sent += g
                .send(|buf| {
                    let n = buf.len().min(TOTAL - g_sent);
                    for (i, b) in buf[..n].iter_mut().enumerate() {
                        *b = byte(g_sent + i, 0x5a);
                    }
                    (n, n)
                })
                .unwrap();
        }
        if g.can_recv() {
            g_recv += g
                .recv(|buf| {
                    for (i, &b) in buf.iter().enumerate() {
                        assert_eq!(b, byte(g_recv + i, 0xa5));
                    }
                    (buf.len(), buf.len())
                })
                .unwrap();
        }
        let h = hs.get_mut::<tcp::Socket>(htcp);
        if h.can_recv() {
            h_recv += h
                .recv(|buf| {
                    for (i, &b) in buf.iter().enumerate() {
                        assert_eq!(b, byte(h_recv + i, 0x5a));
                    }
                    (buf.len(), buf.len())
                })
                .unwrap();
        }
        if h.can_send() && h_sent < TOTAL {
            h_sent += h
                .send(|buf| {
                    let n = buf.len().min(TOTAL - h_sent);
                    for (i, b) in buf[..n].iter_mut().enumerate() {
                        *b = byte(h_sent + i, 0xa5);
                    }
                    (n, n)
                })
                .unwrap();
        }
        if g_recv == TOTAL && h_recv == TOTAL {
            break;
        }
    }
    assert!(pong, "no echo reply");
    assert!(host.arp_from_guest >= 1, "no ARP from the guest");
    assert_eq!(udp_size, 1473, "UDP echo stopped at {udp_size} bytes");
    assert_eq!(h_recv, TOTAL, "guest to host: {h_recv} bytes");
    assert_eq!(g_recv, TOTAL, "host to guest: {g_recv} bytes");
    let nic = guest.inner().nic();
    assert!(nic.broken().is_none());
    println!("{:?} in {:?}", nic.stats(), start.elapsed());
}
