//! Lab scenario `net`: `netfront` and smoltcp against Linux's xen-netback
//! in dom0, over a vif in dom0's bridge.
//!
//! The guest brings up `device/vif/0` with two queues (dom0 loads netback
//! with `max_queues=2`), prints what netback advertised, the keys the
//! frontend wrote and what was negotiated (queues, split event channels,
//! scatter-gather, GSO, checksum offload, MTU), and runs smoltcp on the
//! device ([`netfront::phy::SmolDevice`]: frames lent in place) as
//! `10.0.9.2/24` with these services for dom0 (`lab-netcheck`):
//!
//! - ICMP echo (smoltcp answers dom0's `ping`);
//! - a UDP echo on port 7: every datagram is checked against
//!   `lab_proto::net_udp_payload` of its size before it is echoed, and
//!   every size from 1 to 1472 bytes must have been seen;
//! - TCP port 5001, a sink: 16 MiB from dom0, every byte checked, answered
//!   with the guest's checksum of the stream;
//! - TCP port 5002, a source: 16 MiB to dom0, followed by the guest's
//!   checksum of what it sent;
//! - TCP port 5003, a source like 5002, during which dom0 unbinds the
//!   vif's backend from netback and binds it again: at 6 MiB the guest
//!   writes `data/net-stage` = `rebind` and goes on only slowly until dom0
//!   writes `data/net-rebind` = `unbound`, so that the backend goes in the
//!   middle of the stream; the link comes back by itself (netfront's
//!   handshake) and the stream completes.
//!
//! The guest asks for netback's XDP headroom (256 bytes): every received
//! packet then carries an XDP extra-info slot and its data starts 256
//! bytes into each page, the layout `netfront::rx` parses.
//!
//! # What the rebind shows
//! Linux 6.1's netback, unbound from the device, leaves the backend's
//! state at Connected, removes `hotplug-status` and destroys the vif's
//! interface (it leaves the bridge). Nothing changes in xenstore for the
//! frontend: its TX requests stay unanswered (the whole TX pool, 96 pages,
//! ends up in flight) and nothing is received. Bound again, netback makes
//! a new interface, writes InitWait and waits for `hotplug-status`
//! before it goes Connected; libxl runs hotplug scripts only when it adds
//! a device, so the scenario script runs `vif-min` itself. netfront's
//! handshake ends the connection when the backend is back at InitWait
//! (the frames in flight fail), publishes a second one with fresh rings,
//! and netback connects to it: the link was down 2 to 9 s in the runs so
//! far. The stream then resumes when smoltcp's retransmission timer
//! fires: dom0 saw gaps of 15 to 21 s, longer than the link was down,
//! because the retransmissions sent into the unanswered ring while the
//! backend was unbound had already backed the timer off.
//!
//! The verdict goes to `data/net-result` (`ok <figures>` or `fail
//! <reason>`); the scenario script checks it and dom0's side.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use lwdom::lab_proto::{
    net_stream_fill, net_stream_mismatch, net_udp_check, NetSum, NET_GUEST_IP, NET_PREFIX,
    NET_REBIND_GATE, NET_REBIND_KEY, NET_RESULT_KEY, NET_STAGE_KEY, NET_TCP_BYTES,
    NET_TCP_REBIND_PORT, NET_TCP_SINK_PORT, NET_TCP_SOURCE_PORT, NET_UDP_ECHO_PORT, NET_UDP_MAX,
};
use lwdom::println;
use lwdom::rt::platform::Lw;
use netfront::features::{Negotiated, NetConfig};
use netfront::phy::smoltcp;
use netfront::phy::SmolDevice;
use netfront::{DriverConfig, FrameDevice, FrameError, NetfrontDevice, WaitMode};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use xenbus::{ConnectStyle, FrontendConfig, Transport, Xenstore};

use lwdom::rt::report::ms_since;

lwdom::program!(main);

/// The vif's frontend directory.
const VIF: &str = "device/vif/0";
/// Queues asked for (dom0 loads netback with `max_queues=2`).
const QUEUES: u32 = 2;
/// The XDP headroom asked for (Linux's `XDP_PACKET_HEADROOM`).
const XDP_HEADROOM: u16 = 256;
/// How long the whole scenario may take in the guest.
const DEADLINE: Duration = Duration::from_secs(840);
/// How fast the rebind stream goes past its gate while dom0 has not
/// unbound the backend: bytes per millisecond.
const TRICKLE_PER_MS: u64 = 64;

type R<T> = Result<T, String>;

fn main() -> Result<(), String> {
    lwdom::rt::report::log_to_console();
    let r = lwdom::rt::with_xenstore(run);
    lwdom::rt::report::verdict("net", NET_RESULT_KEY, r)
}

fn now() -> u64 {
    lwdom::rt::time::now_ns()
}

fn smol_now() -> Instant {
    Instant::from_micros((now() / 1000) as i64)
}

/// KiB/s of `bytes` over `ns`.
fn kib_s(bytes: u64, ns: u64) -> u64 {
    bytes.saturating_mul(1_000_000_000) / 1024 / ns.max(1)
}

fn negotiated(n: &Negotiated) -> String {
    format!(
        "{} queue(s), split event channels {}, SG tx {} rx {}, GSO tcpv4 tx {} rx {}, GSO tcpv6 tx {} rx {}, csum offload ipv4 tx {} rx {}, ipv6 tx {} rx {}, MTU {}, XDP headroom {}, MAC {}, {} backend",
        n.queues,
        n.split_event_channels,
        n.tx_sg,
        n.rx_sg,
        n.tx_gso_tcpv4,
        n.rx_gso_tcpv4,
        n.tx_gso_tcpv6,
        n.rx_gso_tcpv6,
        n.tx_csum_ipv4,
        n.rx_csum_ipv4,
        n.tx_csum_ipv6,
        n.rx_csum_ipv6,
        n.mtu,
        n.rx_headroom,
        n.mac,
        if n.untrusted_backend { "untrusted" } else { "trusted" }
    )
}

/// The backend directory's keys that say what netback offers.
fn advertised<T: Transport>(xs: &mut Xenstore<T>) -> R<String> {
    let backend = xs
        .read_string(&format!("{VIF}/backend"))
        .map_err(|e| format!("reading {VIF}/backend: {e}"))?;
    let mut out = Vec::new();
    for key in [
        "feature-sg",
        "feature-gso-tcpv4",
        "feature-gso-tcpv6",
        "feature-ipv6-csum-offload",
        "feature-rx-copy",
        "feature-rx-flip",
        "feature-split-event-channels",
        "multi-queue-max-queues",
        "feature-xdp-headroom",
        "feature-ctrl-ring",
        "feature-multicast-control",
        "feature-dynamic-multicast-control",
    ] {
        match xs.try_read(&format!("{backend}/{key}")) {
            Ok(Some(v)) => out.push(format!("{key}={}", String::from_utf8_lossy(&v))),
            Ok(None) => out.push(format!("{key}=(absent)")),
            Err(e) => return Err(format!("reading {backend}/{key}: {e}")),
        }
    }
    Ok(format!("{backend}: {}", out.join(" ")))
}

/// A TCP stream from dom0 into the guest: every byte checked, then the
/// guest's checksum sent back.
struct Sink {
    handle: SocketHandle,
    port: u16,
    received: u64,
    sum: NetSum,
    started: Option<u64>,
    answered: usize,
    done: Option<String>,
}

impl Sink {
    fn step(&mut self, sockets: &mut SocketSet<'_>) -> R<()> {
        if self.done.is_some() {
            return Ok(());
        }
        let s = sockets.get_mut::<tcp::Socket>(self.handle);
        if s.is_active() && self.started.is_none() {
            self.started = Some(now());
            println!("net: port {}: dom0 connected", self.port);
        }
        let port = self.port;
        while s.can_recv() {
            let at = self.received;
            let sum = &mut self.sum;
            let r = s
                .recv(|buf| {
                    let bad = net_stream_mismatch(port, at, buf);
                    sum.update(buf);
                    (buf.len(), (buf.len(), bad))
                })
                .map_err(|e| format!("port {port}: receiving: {e}"))?;
            if let Some(bad) = r.1 {
                return Err(format!(
                    "port {port}: byte {bad} from dom0 does not hold the stream's pattern"
                ));
            }
            self.received += r.0 as u64;
            if self.received > NET_TCP_BYTES {
                return Err(format!(
                    "port {port}: dom0 sent {} bytes, more than the {NET_TCP_BYTES} of the stream",
                    self.received
                ));
            }
            if r.0 == 0 {
                break;
            }
        }
        if self.received == NET_TCP_BYTES {
            let sum = self.sum.0.to_le_bytes();
            while self.answered < sum.len() && s.can_send() {
                let n = s
                    .send_slice(&sum[self.answered..])
                    .map_err(|e| format!("port {port}: sending the checksum: {e}"))?;
                if n == 0 {
                    break;
                }
                self.answered += n;
            }
            if self.answered == sum.len() && s.send_queue() == 0 {
                s.close();
                let t = self.started.map_or(0, |t| now().saturating_sub(t));
                let d = format!(
                    "dom0 -> guest {} MiB checked, checksum {:#018x}, {} ms ({} KiB/s)",
                    NET_TCP_BYTES >> 20,
                    self.sum.0,
                    t / 1_000_000,
                    kib_s(NET_TCP_BYTES, t)
                );
                println!("net: port {port}: {d}");
                self.done = Some(d);
            }
        } else if self.started.is_some() && !s.is_active() {
            return Err(format!(
                "port {port}: the connection ended after {} of {NET_TCP_BYTES} bytes",
                self.received
            ));
        }
        Ok(())
    }
}

/// A TCP stream from the guest to dom0, followed by the guest's checksum.
struct Source {
    handle: SocketHandle,
    port: u16,
    sent: u64,
    sum: NetSum,
    started: Option<u64>,
    trailer: usize,
    /// For the rebind stream: where it waits for dom0's unbind, and since
    /// when it waits there.
    gate: Option<u64>,
    at_gate: Option<u64>,
    /// When the stream completed (its checksum acknowledged).
    finished: u64,
    done: Option<String>,
}

impl Source {
    /// How far the stream may go now.
    fn allowed(&mut self, unbound: bool) -> u64 {
        match self.gate {
            Some(g) if !unbound && self.sent >= g => {
                let since = *self.at_gate.get_or_insert_with(now);
                let trickle = (now().saturating_sub(since) / 1_000_000) * TRICKLE_PER_MS;
                (g + trickle).min(NET_TCP_BYTES - (1 << 20))
            }
            Some(g) if !unbound => g,
            _ => NET_TCP_BYTES,
        }
    }

    fn step(&mut self, sockets: &mut SocketSet<'_>, unbound: bool) -> R<()> {
        if self.done.is_some() {
            return Ok(());
        }
        let allowed = self.allowed(unbound);
        let s = sockets.get_mut::<tcp::Socket>(self.handle);
        let port = self.port;
        if self.started.is_none() {
            if !s.may_send() {
                return Ok(());
            }
            self.started = Some(now());
            println!("net: port {port}: dom0 connected");
        }
        while self.sent < allowed && s.can_send() {
            let at = self.sent;
            let sum = &mut self.sum;
            let n = s
                .send(|buf| {
                    let n = (buf.len() as u64).min(allowed - at) as usize;
                    net_stream_fill(port, at, &mut buf[..n]);
                    sum.update(&buf[..n]);
                    (n, n)
                })
                .map_err(|e| format!("port {port}: sending: {e}"))?;
            if n == 0 {
                break;
            }
            self.sent += n as u64;
        }
        if self.sent == NET_TCP_BYTES {
            let sum = self.sum.0.to_le_bytes();
            while self.trailer < sum.len() && s.can_send() {
                let n = s
                    .send_slice(&sum[self.trailer..])
                    .map_err(|e| format!("port {port}: sending the checksum: {e}"))?;
                if n == 0 {
                    break;
                }
                self.trailer += n;
            }
            if self.trailer == sum.len() && s.send_queue() == 0 {
                s.close();
                let t = self.started.map_or(0, |t| now().saturating_sub(t));
                let d = format!(
                    "guest -> dom0 {} MiB, checksum {:#018x}, {} ms ({} KiB/s)",
                    NET_TCP_BYTES >> 20,
                    self.sum.0,
                    t / 1_000_000,
                    kib_s(NET_TCP_BYTES, t)
                );
                println!("net: port {port}: {d}");
                self.done = Some(d);
                self.finished = now();
            }
        } else if !s.is_active() {
            return Err(format!(
                "port {port}: the connection ended after {} of {NET_TCP_BYTES} bytes",
                self.sent
            ));
        }
        Ok(())
    }
}

fn tcp_listen(sockets: &mut SocketSet<'_>, port: u16) -> R<SocketHandle> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
    );
    s.listen(port)
        .map_err(|e| format!("listening on TCP port {port}: {e}"))?;
    Ok(sockets.add(s))
}

fn run<T: Transport>(outer: &mut Xenstore<T>) -> R<String> {
    let t_all = now();
    let deadline = t_all.saturating_add(DEADLINE.as_nanos() as u64);
    let mut xs = Xenstore::new(outer.transport_mut());
    xs.set_timeout(Duration::from_secs(20));
    xs.set_clock(|| Duration::from_nanos(lwdom::rt::time::now_ns()));
    let cfg = DriverConfig {
        // The XDP headroom netback offers (`feature-xdp-headroom`): every
        // received packet then carries an XDP extra and its data starts
        // 256 bytes into each page.
        net: NetConfig {
            max_queues: QUEUES,
            xdp_headroom: XDP_HEADROOM,
            ..NetConfig::default()
        },
        // The runtime has 1024 shareable pages: 2 queues of 256 RX and 48
        // TX pages leave room for a second connection's pools while the
        // first one's are still quarantined.
        rx_buffers_per_queue: 256,
        tx_buffers_per_queue: 48,
        wait: WaitMode::Adaptive { spin_ns: 20_000 },
        rx_budget: 64,
    };
    // Under emulation netback takes seconds per step; a backend that is
    // unbound is given two minutes to come back.
    let mut hs = FrontendConfig::new(VIF, ConnectStyle::ConnectedAtOnce);
    hs.step_timeout = Duration::from_secs(120);
    hs.reconnect_timeout = Duration::from_secs(120);
    let mut dev = NetfrontDevice::with_handshake(Lw, xs, hs, cfg);
    let t = now();
    dev.wait_up(180_000_000_000)
        .map_err(|e| format!("bringing up {VIF}: {e}"))?;
    println!("net: {VIF} up in {} ms", ms_since(t));
    let adv = advertised(dev.xenstore_mut())?;
    println!("net: netback advertises {adv}");
    let keys: Vec<String> = dev
        .nic()
        .frontend_keys()
        .iter()
        .map(|k| format!("{}={}", k.key, k.value))
        .collect();
    println!("net: the frontend wrote {}", keys.join(" "));
    let neg = *dev
        .nic()
        .negotiated()
        .ok_or("up without a negotiated connection")?;
    let features = negotiated(&neg);
    println!("net: negotiated {features}");
    if neg.rx_headroom != XDP_HEADROOM {
        return Err(format!(
            "XDP headroom {} negotiated; netback offers feature-xdp-headroom and the guest asks for {XDP_HEADROOM}",
            neg.rx_headroom
        ));
    }
    if neg.queues != QUEUES {
        return Err(format!(
            "{} queue(s) negotiated; the scenario loads netback with max_queues=2 and asks for {QUEUES}",
            neg.queues
        ));
    }
    let link = dev.link();
    let mut smol = SmolDevice::new(dev);
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(link.mac)));
    config.random_seed = now();
    let mut iface = Interface::new(config, &mut smol, smol_now());
    let [a, b, c, d] = NET_GUEST_IP;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), NET_PREFIX));
    });
    let mut sockets = SocketSet::new(vec![]);
    let udp_buf =
        || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1024]);
    let mut us = udp::Socket::new(udp_buf(), udp_buf());
    us.bind(NET_UDP_ECHO_PORT)
        .map_err(|e| format!("binding UDP port {NET_UDP_ECHO_PORT}: {e}"))?;
    let udp_h = sockets.add(us);
    let mut sink = Sink {
        handle: tcp_listen(&mut sockets, NET_TCP_SINK_PORT)?,
        port: NET_TCP_SINK_PORT,
        received: 0,
        sum: NetSum::default(),
        started: None,
        answered: 0,
        done: None,
    };
    let source = |sockets: &mut SocketSet<'_>, port: u16, gate: Option<u64>| -> R<Source> {
        Ok(Source {
            handle: tcp_listen(sockets, port)?,
            port,
            sent: 0,
            sum: NetSum::default(),
            started: None,
            trailer: 0,
            gate,
            at_gate: None,
            finished: 0,
            done: None,
        })
    };
    let mut src = source(&mut sockets, NET_TCP_SOURCE_PORT, None)?;
    let mut reb = source(&mut sockets, NET_TCP_REBIND_PORT, Some(NET_REBIND_GATE))?;
    smol.inner_mut()
        .xenstore_mut()
        .write(NET_STAGE_KEY, "ready")
        .map_err(|e| format!("writing {NET_STAGE_KEY}: {e}"))?;
    println!("net: smoltcp up as {a}.{b}.{c}.{d}/{NET_PREFIX}; waiting for dom0");

    let mut sizes = vec![false; NET_UDP_MAX + 1];
    let (mut udp_seen, mut udp_datagrams) = (0usize, 0u64);
    let mut udp_first: Option<u64> = None;
    let mut udp_last = 0u64;
    let mut echo = [0u8; NET_UDP_MAX];
    let mut stage_rebind = false;
    let (mut unbound, mut rebound) = (false, false);
    let mut unbound_at = 0u64;
    let mut down_since: Option<u64> = None;
    let mut downs = Vec::new();
    let mut last_xs = 0u64;
    loop {
        let t = now();
        if t > deadline {
            return Err(format!(
                "not done within {} s: UDP sizes seen {udp_seen}, sink {} bytes, source {} bytes, rebind stream {} bytes (unbound {unbound}, rebound {rebound}); {:?}",
                DEADLINE.as_secs(),
                sink.received,
                src.sent,
                reb.sent,
                smol.inner().nic().stats()
            ));
        }
        iface.poll(smol_now(), &mut smol, &mut sockets);
        match smol.inner_mut().poll() {
            Ok(_) => {}
            Err(FrameError::LinkDown) => {}
            Err(e) => return Err(format!("the device failed: {e}")),
        }
        // The link as the driver sees it.
        let up = smol.inner().nic().is_up();
        match (up, down_since) {
            (false, None) => {
                println!("net: link down at {} ms", ms_since(t_all));
                down_since = Some(now());
            }
            (true, Some(s)) => {
                let ms = ms_since(s);
                println!(
                    "net: link up again after {ms} ms (connection {:?})",
                    smol.inner().nic().connection()
                );
                if let Some(n) = smol.inner().nic().negotiated() {
                    println!("net: negotiated {}", negotiated(n));
                }
                downs.push(ms);
                down_since = None;
            }
            _ => {}
        }

        // UDP echo, each datagram checked.
        let u = sockets.get_mut::<udp::Socket>(udp_h);
        while u.can_recv() {
            let (n, ep) = match u.recv() {
                Ok((data, meta)) => {
                    if !net_udp_check(data) {
                        return Err(format!(
                            "a {}-byte UDP datagram from dom0 does not hold the payload of its size",
                            data.len()
                        ));
                    }
                    let n = data.len();
                    echo[..n].copy_from_slice(data);
                    (n, meta.endpoint)
                }
                Err(_) => break,
            };
            udp_datagrams += 1;
            udp_first.get_or_insert_with(now);
            udp_last = now();
            if let Some(seen) = sizes.get_mut(n) {
                if !*seen {
                    *seen = true;
                    udp_seen += 1;
                }
            }
            if u.send_slice(&echo[..n], ep).is_err() {
                // No room: dom0 sends the datagram again.
                log::warn!("net: no room to echo a {n}-byte datagram");
            }
        }

        sink.step(&mut sockets)?;
        src.step(&mut sockets, true)?;
        reb.step(&mut sockets, unbound)?;

        // The rebind: tell dom0 at the gate, watch what it says.
        if !stage_rebind && reb.sent >= NET_REBIND_GATE {
            stage_rebind = true;
            println!(
                "net: the rebind stream is at {} bytes; asking dom0 to unbind the backend",
                reb.sent
            );
            smol.inner_mut()
                .xenstore_mut()
                .write(NET_STAGE_KEY, "rebind")
                .map_err(|e| format!("writing {NET_STAGE_KEY}: {e}"))?;
        }
        if stage_rebind && !rebound && now().saturating_sub(last_xs) > 50_000_000 {
            last_xs = now();
            let v = smol
                .inner_mut()
                .xenstore_mut()
                .try_read(NET_REBIND_KEY)
                .map_err(|e| format!("reading {NET_REBIND_KEY}: {e}"))?;
            if let Some(v) = v {
                let v = String::from_utf8_lossy(&v).into_owned();
                if let Some(why) = v.strip_prefix("failed") {
                    return Err(format!("dom0 could not unbind or rebind the backend:{why}"));
                }
                if !unbound && (v == "unbound" || v == "rebound") {
                    unbound = true;
                    unbound_at = now();
                    println!(
                        "net: dom0 says the backend is unbound; the rebind stream at {} bytes",
                        reb.sent
                    );
                }
                if v == "rebound" {
                    rebound = true;
                    println!(
                        "net: dom0 says the backend is bound again; the rebind stream at {} bytes",
                        reb.sent
                    );
                }
            }
        }
        if stage_rebind && !unbound {
            if let Some(g) = reb.at_gate {
                if now().saturating_sub(g) > 180_000_000_000 {
                    return Err("dom0 did not unbind the backend within 180 s of the gate".into());
                }
            }
        }

        if udp_seen == NET_UDP_MAX
            && sink.done.is_some()
            && src.done.is_some()
            && reb.done.is_some()
            && rebound
        {
            break;
        }
        let delay = iface
            .poll_delay(smol_now(), &sockets)
            .map_or(10_000_000, |d| d.total_micros().saturating_mul(1000))
            .min(10_000_000);
        match smol.inner_mut().wait(Some(delay)) {
            Ok(_) | Err(FrameError::LinkDown) => {}
            Err(e) => return Err(format!("the device failed while waiting: {e}")),
        }
    }

    let udp_ms = udp_first.map_or(0, |f| udp_last.saturating_sub(f) / 1_000_000);
    let stats = smol.inner().nic().stats();
    println!("net: device counters {stats:?}");
    let rebind = format!(
        "rebind mid-stream: the backend unbound at {} MiB of the stream, the link down {} time(s) ({} ms in all), the stream resumed and completed {} ms after the unbind, {} TX frame(s) failed by the reconnection",
        NET_REBIND_GATE >> 20,
        downs.len(),
        downs.iter().sum::<u64>(),
        reb.finished.saturating_sub(unbound_at) / 1_000_000,
        stats.tx_aborted
    );
    if downs.is_empty() {
        return Err("the rebind stream completed, but the link never went down".into());
    }
    // An orderly close: netback follows to Closed.
    let mut dev = smol.into_inner();
    let closed = match dev.close(30_000_000_000) {
        Ok(()) => "closed in order".to_string(),
        Err(e) => format!("close: {e}"),
    };
    Ok(format!(
        "negotiated {features}; UDP echo: {udp_datagrams} datagrams, all {NET_UDP_MAX} sizes checked in {udp_ms} ms; {}; {}; {}; {rebind}; {} frames / {} KiB sent, {} frames / {} KiB received ({} GSO frames, {} partial checksums completed), {} notification(s) to netback, {} connection(s); {closed}; {} s in all",
        sink.done.unwrap_or_default(),
        src.done.unwrap_or_default(),
        reb.done.unwrap_or_default(),
        stats.tx_frames,
        stats.tx_bytes / 1024,
        stats.rx_frames,
        stats.rx_bytes / 1024,
        stats.rx_gso_frames,
        stats.rx_csum_completed,
        stats.notifications,
        stats.connections,
        ms_since(t_all) / 1000
    ))
}
