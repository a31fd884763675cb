//! smoltcp over the driver: two interfaces, the guest's on netfront
//! ([`crate::phy::SmolDevice`]) and the backend's on the test backend's
//! end of the vif, doing ARP, an ICMP ping and TCP transfers of 1 MiB each
//! way, every byte checked.

use std::vec;
use std::vec::Vec;

use grant_tables::fake::FakePlatform;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr,
};

use super::driver::{Rig, MAC};
use crate::phy::SmolDevice;
use crate::testing::{linux_like, toolstack, RxOpts, TestBackend};
use crate::{DriverConfig, FrameDevice, WaitMode};

const BACK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbe];

/// The backend's side of the vif as a smoltcp device: frames the guest
/// sent come out of `receive`, frames smoltcp sends are laid into the
/// guest's RX buffers.
struct BackPhy<'a> {
    be: &'a mut TestBackend<FakePlatform>,
    arp_from_guest: usize,
}

struct BackRx(Vec<u8>);

impl phy::RxToken for BackRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct BackTx<'b> {
    be: &'b mut TestBackend<FakePlatform>,
}

impl phy::TxToken for BackTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        // No buffer posted: dropped, as a full vif queue would.
        let _ = self.be.deliver(0, &buf, RxOpts::default()).unwrap();
        r
    }
}

impl phy::Device for BackPhy<'_> {
    type RxToken<'b>
        = BackRx
    where
        Self: 'b;
    type TxToken<'b>
        = BackTx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(BackRx, BackTx<'_>)> {
        self.be.pump_tx().unwrap();
        let f = self.be.sent.pop_front()?;
        if f.data[12..14] == [0x08, 0x06] {
            self.arp_from_guest += 1;
        }
        Some((BackRx(f.data), BackTx { be: self.be }))
    }

    fn transmit(&mut self, _: Instant) -> Option<BackTx<'_>> {
        Some(BackTx { be: self.be })
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
        Instant::ZERO,
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(ip[0], ip[1], ip[2], ip[3]), 24))
            .unwrap();
    });
    iface
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
    )
}

fn byte(i: usize, seed: u8) -> u8 {
    ((i * 131) >> 3) as u8 ^ seed
}

#[test]
fn smoltcp_arp_ping_and_1_mib_tcp_each_way() {
    let cfg = DriverConfig {
        wait: WaitMode::Poll,
        ..DriverConfig::default()
    };
    let rig = Rig::new(cfg, linux_like(1), toolstack(MAC));
    let Rig { fe, be, .. } = rig;
    let mut be = be.unwrap();
    let mut guest = SmolDevice::new(fe);
    assert!(guest.inner().is_up());
    let mut back = BackPhy {
        be: &mut be,
        arp_from_guest: 0,
    };
    let mut gif = iface(&mut guest, MAC, [10, 0, 0, 2]);
    let mut bif = iface(&mut back, BACK_MAC, [10, 0, 0, 1]);
    let guest_ip = IpAddress::v4(10, 0, 0, 2);
    let back_ip = IpAddress::v4(10, 0, 0, 1);

    let mut gsockets = SocketSet::new(vec![]);
    let mut bsockets = SocketSet::new(vec![]);
    let icmp_h = gsockets.add(icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    ));
    let gtcp = gsockets.add(tcp_socket());
    let btcp = bsockets.add(tcp_socket());
    bsockets.get_mut::<tcp::Socket>(btcp).listen(5001).unwrap();

    const TOTAL: usize = 1 << 20;
    let mut now = Instant::ZERO;
    let mut pinged = false;
    let mut pong = false;
    let mut connected = false;
    let (mut g_sent, mut g_recv, mut b_sent, mut b_recv) = (0usize, 0usize, 0usize, 0usize);
    let payload = b"netfront ping";
    for step in 0..400_000 {
        now += smoltcp::time::Duration::from_micros(100);
        gif.poll(now, &mut guest, &mut gsockets);
        bif.poll(now, &mut back, &mut bsockets);
        guest.inner_mut().poll().unwrap();

        // Ping.
        let s = gsockets.get_mut::<icmp::Socket>(icmp_h);
        if !s.is_open() {
            s.bind(icmp::Endpoint::Ident(0x22)).unwrap();
        }
        if !pinged && s.can_send() {
            let repr = Icmpv4Repr::EchoRequest {
                ident: 0x22,
                seq_no: 1,
                data: payload,
            };
            let buf = s.send(repr.buffer_len(), back_ip).unwrap();
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(buf),
                &ChecksumCapabilities::default(),
            );
            pinged = true;
        }
        if s.can_recv() {
            let (data, from) = s.recv().unwrap();
            let pkt = Icmpv4Packet::new_checked(data).unwrap();
            let repr = Icmpv4Repr::parse(&pkt, &ChecksumCapabilities::default()).unwrap();
            assert_eq!(from, back_ip);
            assert!(matches!(
                repr,
                Icmpv4Repr::EchoReply { ident: 0x22, seq_no: 1, data } if data == payload
            ));
            pong = true;
        }

        // TCP: the guest connects once the ping came back.
        let g = gsockets.get_mut::<tcp::Socket>(gtcp);
        if pong && !connected {
            g.connect(gif.context(), (back_ip, 5001), 49152).unwrap();
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
                        assert_eq!(b, byte(g_recv + i, 0xa5), "guest byte {}", g_recv + i);
                    }
                    (buf.len(), buf.len())
                })
                .unwrap();
        }
        let b = bsockets.get_mut::<tcp::Socket>(btcp);
        if b.can_recv() {
            b_recv += b
                .recv(|buf| {
                    for (i, &x) in buf.iter().enumerate() {
                        assert_eq!(x, byte(b_recv + i, 0x5a), "backend byte {}", b_recv + i);
                    }
                    (buf.len(), buf.len())
                })
                .unwrap();
        }
        if b.can_send() && b_sent < TOTAL {
            b_sent += b
                .send(|buf| {
                    let n = buf.len().min(TOTAL - b_sent);
                    for (i, x) in buf[..n].iter_mut().enumerate() {
                        *x = byte(b_sent + i, 0xa5);
                    }
                    (n, n)
                })
                .unwrap();
        }
        if g_recv == TOTAL && b_recv == TOTAL {
            std::println!("done after {step} steps");
            break;
        }
    }
    assert!(pong, "no echo reply");
    let peer = bsockets.get::<tcp::Socket>(btcp).remote_endpoint();
    assert_eq!(peer.map(|e| e.addr), Some(guest_ip));
    assert!(back.arp_from_guest >= 1, "the guest never sent ARP");
    assert_eq!(b_recv, TOTAL, "guest to backend: {b_recv} of {TOTAL} bytes");
    assert_eq!(g_recv, TOTAL, "backend to guest: {g_recv} of {TOTAL} bytes");
    let stats = guest.inner().stats();
    assert!(stats.tx_frames > 700 && stats.rx_frames > 700, "{stats:?}");
    assert!(guest.inner().broken().is_none());
}
