//! Lab scenario `rdma`: RoCE v2 between lwdom, which drives its
//! passed-through e1000e itself, and dom0's Soft-RoCE (`rdma_rxe` on its
//! e1000, on the same QEMU hub), with rdma-core's and perftest's
//! unmodified tools as dom0's side.
//!
//! The guest brings the 82574L up as `pci-nic` does (pcifront, `LwPci`,
//! `passthrough::e1000e`, MSI-X) and runs smoltcp on it as `10.0.12.2/24`
//! for the tools' TCP connection exchange
//! (`rdma_passthrough::exchange`), and one `rdma_passthrough::rc::QueuePair`
//! per test for RoCE. Its own small loop sorts the received frames: IPv4
//! UDP to port 4791 goes to the queue pair, the rest to smoltcp; what the
//! queue pair transmits goes straight to the NIC; when its sends stay
//! unacknowledged for [`RTO_NS`] it is told its timer fired. (A generic
//! pump of a transport over a frame device, `nic::RoceNic`, is to
//! replace this loop.)
//!
//! The tests, in the order dom0's script runs the tools:
//! 1. `ibv_rc_pingpong -c` as dom0's client, the guest the server: 20
//!    round trips of 4096-byte SENDs (4 packets each at MTU 1024);
//! 2. the same with the guest as the client;
//! 3. `ib_send_lat` as dom0's server, the guest the client (2-byte SENDs);
//! 4. `ib_write_lat` as dom0's client, the guest the server (2-byte RDMA
//!    WRITEs into a region the guest registered).
//!
//! The guest checks every payload it receives: `ibv_rc_pingpong -c`'s
//! buffer (byte 0 of each page 0, the rest `0x7b`, which both ends send),
//! `ib_send_lat`'s messages (its size, each the same bytes: perftest sends
//! one buffer of random bytes), `ib_write_lat`'s writes (zero but the last
//! byte, the iteration number, which is how the tool itself detects
//! arrival) with the rest of the region untouched. dom0's script checks
//! the tools' verdicts and prints their reports. The guest's verdict goes
//! to `data/rdma-result`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use grant_tables::{Clock, DomId, EventChannels, PlatformError, Port};
use lwdom::println;
use lwdom::rt::pcidev::{LwDma, LwMmio, LwPci};
use lwdom::rt::platform::Lw;
use netfront::phy::smoltcp;
use netfront::phy::SmolDevice;
use netfront::{FrameDevice, FrameError, LinkInfo, RxFrame, TxFrame};
use passthrough::config::DeviceInfo;
use passthrough::e1000e::regs::{DEVICE_82574L, VENDOR_INTEL};
use passthrough::e1000e::{self, E1000e, IrqMode};
use passthrough::{Bar, Bdf, DmaConstraints, PciError, PciPlatform, Pcifront};
use rdma_passthrough::exchange::smol::TcpExchange;
use rdma_passthrough::exchange::{
    gid_from_ipv4, gid_ipv4, write_lat_payload, Exchange, PerftestDest, PerftestPhase,
    PerftestSession, PerftestTest, PingpongDest, PingpongSession, Role, DEFAULT_PORT,
    PERFTEST_DEFAULT_SIZE, PINGPONG_DEFAULT_SIZE, PINGPONG_FILL,
};
use rdma_passthrough::packet::{Endpoints, ROCE_V2_PORT};
use rdma_passthrough::psn::Psn;
use rdma_passthrough::rc::{
    Completion, CompletionKind, MemoryRegion, QpConfig, QueuePair, SendOp, Status,
};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

lwdom::program!(main);

const STAGE_KEY: &str = "data/rdma-stage";
const RESULT_KEY: &str = "data/rdma-result";
const DONE_KEY: &str = "data/rdma-done";
const GUEST_IP: [u8; 4] = [10, 0, 12, 2];
const DOM0_IP: [u8; 4] = [10, 0, 12, 1];
const PREFIX: u8 = 24;

/// Round trips of each `ibv_rc_pingpong` run (dom0's `-n`).
const PP_ITERS: usize = 20;
/// Iterations of each perftest run (dom0's `-n`).
const PERF_ITERS: usize = 50;
/// `ibv_rc_pingpong`'s default path MTU (dom0 passes no `-m`).
const PP_MTU: usize = 1024;
/// The MTU the guest offers perftest (rxe's active MTU over a 1500-byte
/// netdev is 1024; perftest uses the smaller of the two).
const PERF_MTU: usize = 1024;
/// The default partition key.
const PKEY: u16 = 0xffff;
/// Sends unacknowledged this long make the queue pair resend (TCG is
/// slow; rxe's own timer, `timeout` 14, is about 67 ms).
const RTO_NS: u64 = 500_000_000;
/// Timeouts without progress before a queue pair gives up.
const RETRY_LIMIT: u32 = 20;
/// How long each test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the guest waits for dom0's verdict at the end.
const DONE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the queue pair keeps answering after a run (the peer's last
/// packets may need an ACK sent again).
const LINGER_NS: u64 = 1_000_000_000;
/// The buffer address and R_Key the guest advertises to `ib_write_lat`.
const WRITE_VA: u64 = 0x0000_7f00_0000_0000;
const WRITE_RKEY: u32 = 0x0000_2a51;
/// The region's size: perftest's cycle buffer.
const WRITE_REGION: usize = 4096;

type R<T> = Result<T, String>;

fn main() -> R<()> {
    static LOGGER: ConsoleLogger = ConsoleLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let r = run();
    let verdict = match &r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("fail {e}"),
    };
    println!("rdma: {verdict}");
    lwdom::rt::xs_write(RESULT_KEY, &verdict).map_err(|e| format!("writing {RESULT_KEY}: {e}"))?;
    r.map(drop)
}

struct ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            println!("[{} {}] {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}

fn now() -> u64 {
    lwdom::rt::time::now_ns()
}

fn ms_since(t: u64) -> u64 {
    now().saturating_sub(t) / 1_000_000
}

fn smol_now() -> Instant {
    Instant::from_micros((now() / 1000) as i64)
}

fn stage(s: &str) -> R<()> {
    println!("rdma: stage {s}");
    lwdom::rt::xs_write(STAGE_KEY, s).map_err(|e| format!("writing {STAGE_KEY}: {e}"))
}

/// `LwPci` lent to the driver.
struct Lent<'a>(&'a LwPci);

impl EventChannels for Lent<'_> {
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, PlatformError> {
        self.0.alloc_unbound(remote)
    }
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
        self.0.bind_interdomain(remote, remote_port)
    }
    fn notify(&self, port: Port) -> Result<(), PlatformError> {
        self.0.notify(port)
    }
    fn mask(&self, port: Port) -> Result<(), PlatformError> {
        self.0.mask(port)
    }
    fn unmask(&self, port: Port) -> Result<(), PlatformError> {
        self.0.unmask(port)
    }
    fn poll(&self, port: Port) -> Result<bool, PlatformError> {
        self.0.poll(port)
    }
    fn block(&self, port: Port, timeout_ns: Option<u64>) -> Result<bool, PlatformError> {
        self.0.block(port, timeout_ns)
    }
    fn block_any(
        &self,
        ports: &[Port],
        timeout_ns: Option<u64>,
    ) -> Result<Option<Port>, PlatformError> {
        self.0.block_any(ports, timeout_ns)
    }
    fn close(&self, port: Port) -> Result<(), PlatformError> {
        self.0.close(port)
    }
}

impl Clock for Lent<'_> {
    fn now_ns(&self) -> u64 {
        self.0.now_ns()
    }
}

impl PciPlatform for Lent<'_> {
    type Config = Pcifront<Lw>;
    type Mmio = LwMmio;
    type Dma = LwDma;

    fn devices(&self) -> Result<Vec<Bdf>, PciError> {
        self.0.devices()
    }
    fn config(&self) -> &Pcifront<Lw> {
        self.0.config()
    }
    fn map_bar(&self, bdf: Bdf, bar: &Bar) -> Result<LwMmio, PciError> {
        self.0.map_bar(bdf, bar)
    }
    fn enable_msi(&self, bdf: Bdf) -> Result<Port, PciError> {
        self.0.enable_msi(bdf)
    }
    fn disable_msi(&self, bdf: Bdf) -> Result<(), PciError> {
        self.0.disable_msi(bdf)
    }
    fn enable_msix(&self, bdf: Bdf, entries: &[u16]) -> Result<Vec<Port>, PciError> {
        self.0.enable_msix(bdf, entries)
    }
    fn disable_msix(&self, bdf: Bdf) -> Result<(), PciError> {
        self.0.disable_msix(bdf)
    }
    fn alloc_dma_with(&self, c: DmaConstraints) -> Result<LwDma, PciError> {
        self.0.alloc_dma_with(c)
    }
}

/// The most RoCE frames kept between two turns of the loop.
const ROCE_QUEUE: usize = 256;

/// A frame device that takes RoCE v2 frames (IPv4, UDP to port 4791) out
/// of the received stream, copied, and passes the rest on (to smoltcp). It
/// also notes the Ethernet source of each IPv4 sender, so the queue pair
/// can address the peer smoltcp resolved.
struct Split<D: FrameDevice> {
    dev: D,
    roce: VecDeque<Vec<u8>>,
    macs: Vec<([u8; 4], [u8; 6])>,
    roce_overflow: u64,
    roce_frames: u64,
}

impl<D: FrameDevice> Split<D> {
    fn new(dev: D) -> Self {
        Split {
            dev,
            roce: VecDeque::new(),
            macs: Vec::new(),
            roce_overflow: 0,
            roce_frames: 0,
        }
    }

    fn mac_of(&self, ip: [u8; 4]) -> Option<[u8; 6]> {
        self.macs.iter().find(|(i, _)| *i == ip).map(|(_, m)| *m)
    }

    /// Sorts one frame: `true` when it was RoCE (and taken).
    fn sort(&mut self, f: &D::Rx) -> bool {
        // Ethernet (14), IPv4 header (at least 20, options allowed), UDP.
        let mut head = [0u8; 14 + 60 + 8];
        let n = head.len().min(f.len());
        if n < 34 || f.read_at(0, &mut head[..n]).is_err() {
            return false;
        }
        if head[12..14] != [0x08, 0x00] || head[14] >> 4 != 4 {
            return false;
        }
        let mut src_mac = [0u8; 6];
        src_mac.copy_from_slice(&head[6..12]);
        let mut src_ip = [0u8; 4];
        src_ip.copy_from_slice(&head[26..30]);
        if let Some(e) = self.macs.iter_mut().find(|(i, _)| *i == src_ip) {
            e.1 = src_mac;
        } else if self.macs.len() < 16 {
            self.macs.push((src_ip, src_mac));
        }
        let ihl = usize::from(head[14] & 0x0f) * 4;
        let udp = 14 + ihl;
        if head[23] != 17 || ihl < 20 || n < udp + 8 {
            return false;
        }
        if u16::from_be_bytes([head[udp + 2], head[udp + 3]]) != ROCE_V2_PORT {
            return false;
        }
        let mut copy = vec![0u8; f.len()];
        if f.read_at(0, &mut copy).is_ok() {
            self.roce_frames += 1;
            if self.roce.len() < ROCE_QUEUE {
                self.roce.push_back(copy);
            } else {
                self.roce_overflow += 1;
            }
        }
        true
    }
}

impl<D: FrameDevice> FrameDevice for Split<D> {
    type Tx = D::Tx;
    type Rx = D::Rx;

    fn link(&self) -> LinkInfo {
        self.dev.link()
    }
    fn tx_buffer(&mut self, len: usize) -> Result<Option<D::Tx>, FrameError> {
        self.dev.tx_buffer(len)
    }
    fn send(&mut self, frame: D::Tx) -> Result<(), FrameError> {
        self.dev.send(frame)
    }
    fn receive(&mut self) -> Result<Option<D::Rx>, FrameError> {
        loop {
            let Some(f) = self.dev.receive()? else {
                return Ok(None);
            };
            if !self.sort(&f) {
                return Ok(Some(f));
            }
        }
    }
    fn poll(&mut self) -> Result<bool, FrameError> {
        self.dev.poll()
    }
    fn wait(&mut self, timeout_ns: Option<u64>) -> Result<bool, FrameError> {
        self.dev.wait(timeout_ns)
    }
}

/// A queue pair and its retransmission timer.
struct Qp {
    qp: QueuePair,
    /// Sends and writes posted but not completed.
    unacked: usize,
    /// When the sends last made progress (or the timer last fired).
    progress_at: u64,
    /// Timer expiries.
    timeouts: u64,
    frames_out: u64,
}

impl Qp {
    fn new(cfg: QpConfig) -> R<Qp> {
        let qp = QueuePair::new(cfg).map_err(|e| format!("queue pair: {e}"))?;
        Ok(Qp {
            qp,
            unacked: 0,
            progress_at: now(),
            timeouts: 0,
            frames_out: 0,
        })
    }

    fn post(&mut self, wr_id: u64, op: SendOp) -> R<()> {
        if self.unacked == 0 {
            self.progress_at = now();
        }
        self.qp
            .post_send(wr_id, op)
            .map_err(|e| format!("posting work request {wr_id}: {e:?}"))?;
        self.unacked += 1;
        Ok(())
    }

    /// The next completion; a failed one is an error.
    fn completion(&mut self) -> R<Option<Completion>> {
        let Some(c) = self.qp.poll_completion() else {
            return Ok(None);
        };
        if c.status != Status::Success {
            return Err(format!(
                "work request {} ({:?}) completed with {:?}; queue pair counters {:?}",
                c.wr_id,
                kind_name(&c.kind),
                c.status,
                self.qp.stats()
            ));
        }
        if matches!(c.kind, CompletionKind::Send | CompletionKind::Write) {
            self.unacked = self.unacked.saturating_sub(1);
            self.progress_at = now();
        }
        Ok(Some(c))
    }
}

fn kind_name(k: &CompletionKind) -> &'static str {
    match k {
        CompletionKind::Send => "send",
        CompletionKind::Write => "write",
        CompletionKind::Recv { .. } => "receive",
        CompletionKind::RecvRdmaWithImm { .. } => "write-with-immediate receive",
        CompletionKind::Read { .. } => "read",
        CompletionKind::Atomic { .. } => "atomic",
    }
}

/// The guest's network: the NIC, smoltcp, and the queue pair of the test
/// in progress.
struct Net<D: FrameDevice> {
    smol: SmolDevice<Split<D>>,
    iface: Interface,
    sockets: SocketSet<'static>,
    mac: [u8; 6],
    /// RoCE frames that arrived with no queue pair.
    stray_roce: u64,
    tx_failed: u64,
}

impl<D: FrameDevice> Net<D> {
    /// One turn: smoltcp, the device, RoCE frames both ways, the timer.
    fn turn(&mut self, qp: Option<&mut Qp>) -> R<()> {
        self.iface
            .poll(smol_now(), &mut self.smol, &mut self.sockets);
        match self.smol.inner_mut().poll() {
            Ok(_) | Err(FrameError::LinkDown) => {}
            Err(e) => return Err(format!("the e1000e failed: {e}")),
        }
        // smoltcp's poll took the frames; RoCE ones wait in the split.
        let frames: Vec<Vec<u8>> = self.smol.inner_mut().roce.drain(..).collect();
        match qp {
            Some(q) => {
                for f in &frames {
                    q.qp.receive(f);
                }
                if q.unacked > 0 && now().saturating_sub(q.progress_at) > RTO_NS {
                    q.timeouts += 1;
                    q.progress_at = now();
                    q.qp.timeout();
                }
                while let Some(f) = q.qp.transmit() {
                    q.frames_out += 1;
                    self.send_frame(&f)?;
                }
            }
            None => self.stray_roce += frames.len() as u64,
        }
        Ok(())
    }

    fn send_frame(&mut self, f: &[u8]) -> R<()> {
        let dev = self.smol.inner_mut();
        // A few turns of the device when every TX buffer is in flight.
        for _ in 0..100 {
            match dev.tx_buffer(f.len()) {
                Ok(Some(mut b)) => {
                    let r = match b.as_mut_slice() {
                        Some(s) => {
                            s.copy_from_slice(f);
                            Ok(())
                        }
                        None => b.write_at(0, f),
                    };
                    r.map_err(|e| format!("writing a RoCE frame: {e}"))?;
                    return dev
                        .send(b)
                        .map_err(|e| format!("sending a RoCE frame: {e}"));
                }
                Ok(None) | Err(FrameError::LinkDown) => {
                    dev.wait(Some(1_000_000))
                        .map_err(|e| format!("the e1000e failed: {e}"))?;
                    dev.poll().map_err(|e| format!("the e1000e failed: {e}"))?;
                }
                Err(e) => return Err(format!("no TX buffer for a RoCE frame: {e}")),
            }
        }
        // The queue pair sends it again at its next timeout.
        self.tx_failed += 1;
        Ok(())
    }

    /// Waits for the device for at most `max_ns` (less when smoltcp has a
    /// timer sooner).
    fn wait(&mut self, max_ns: u64) -> R<()> {
        let delay = self
            .iface
            .poll_delay(smol_now(), &self.sockets)
            .map_or(max_ns, |d| d.total_micros().saturating_mul(1000))
            .min(max_ns);
        match self.smol.inner_mut().wait(Some(delay)) {
            Ok(_) | Err(FrameError::LinkDown) => Ok(()),
            Err(e) => Err(format!("the e1000e failed while waiting: {e}")),
        }
    }

    /// Endpoints for RoCE to `peer_ip`, whose Ethernet address the split
    /// saw on its TCP frames.
    fn endpoints(&self, peer_ip: [u8; 4], qpn: u32) -> R<Endpoints> {
        let dst_mac = self.smol.inner().mac_of(peer_ip).ok_or_else(|| {
            format!("no frame from {peer_ip:?} seen: its Ethernet address is unknown")
        })?;
        Ok(Endpoints {
            dst_mac,
            src_mac: self.mac,
            src_ip: GUEST_IP,
            dst_ip: peer_ip,
            // rxe's choice too: a port from 0xc000 up, from the QPN.
            src_port: 0xc000 | (qpn & 0x3fff) as u16,
            tos: 0,
            ttl: 64,
            ip_id: 0,
        })
    }
}

/// Opens the TCP connection of an exchange: listens (server) or connects
/// to dom0, again after each refusal (dom0's tool may not listen yet).
fn open_tcp<D: FrameDevice>(net: &mut Net<D>, role: Role, deadline: u64) -> R<TcpExchange> {
    static NEXT_PORT: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(49152);
    if role == Role::Server {
        return TcpExchange::listen(&mut net.sockets, DEFAULT_PORT).map_err(|e| e.to_string());
    }
    let [a, b, c, d] = DOM0_IP;
    let remote = IpEndpoint::new(IpAddress::v4(a, b, c, d), DEFAULT_PORT);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let port = NEXT_PORT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        let t = TcpExchange::connect(&mut net.iface, &mut net.sockets, remote, port)
            .map_err(|e| e.to_string())?;
        loop {
            net.turn(None)?;
            if t.is_connected(&net.sockets) {
                if attempts > 1 {
                    println!("rdma: connected to dom0 at attempt {attempts}");
                }
                return Ok(t);
            }
            if t.state(&net.sockets) == smoltcp::socket::tcp::State::Closed {
                break;
            }
            if now() > deadline {
                return Err(format!(
                    "no TCP connection to dom0's tool on port {DEFAULT_PORT} after {attempts} attempts"
                ));
            }
            net.wait(50_000_000)?;
        }
        t.remove(&mut net.sockets);
        // Refused: dom0's tool is not listening yet.
        let until = now().saturating_add(300_000_000);
        while now() < until {
            net.turn(None)?;
            net.wait(50_000_000)?;
        }
    }
}

/// Runs the exchange (and the queue pair, when there is one) until
/// `until` holds.
fn converse<D: FrameDevice, E: Exchange>(
    net: &mut Net<D>,
    tcp: &TcpExchange,
    x: &mut E,
    mut qp: Option<&mut Qp>,
    deadline: u64,
    what: &str,
    until: impl Fn(&E) -> bool,
) -> R<()> {
    loop {
        net.turn(qp.as_deref_mut())?;
        let moved = tcp
            .pump(&mut net.sockets, x)
            .map_err(|e| format!("{what}: {e}"))?;
        if until(x) {
            // Send what the exchange wrote.
            net.turn(qp.as_deref_mut())?;
            return Ok(());
        }
        if now() > deadline {
            return Err(format!(
                "{what}: the exchange did not progress within {} s (TCP {})",
                TEST_TIMEOUT.as_secs(),
                tcp.state(&net.sockets)
            ));
        }
        if !moved {
            net.wait(20_000_000)?;
        }
    }
}

/// Keeps the queue pair answering for a while after a run, then closes the
/// TCP connection.
fn linger<D: FrameDevice>(net: &mut Net<D>, qp: &mut Qp, tcp: TcpExchange) -> R<()> {
    tcp.close(&mut net.sockets);
    let until = now().saturating_add(LINGER_NS);
    while now() < until {
        net.turn(Some(qp))?;
        net.wait(20_000_000)?;
    }
    tcp.remove(&mut net.sockets);
    Ok(())
}

fn random_psn() -> u32 {
    // The clock's low bits: a PSN both tools would accept (0..2^24).
    let t = now();
    ((t ^ (t >> 24)) & 0x00ff_ffff) as u32
}

/// What `ibv_rc_pingpong -c` sends (and so what both ends hold): byte 0
/// of each page 0, the rest 0x7b.
fn pingpong_pattern(size: usize) -> Vec<u8> {
    let mut v = vec![PINGPONG_FILL; size];
    for b in v.iter_mut().step_by(4096) {
        *b = 0;
    }
    v
}

fn qp_summary(q: &Qp) -> String {
    let s = q.qp.stats();
    format!(
        "{} frames out, {} ACKs, {} retransmitted, {} timeouts, {} duplicates, {} out of sequence, {} malformed",
        q.frames_out, s.acks_sent, s.retransmitted, q.timeouts, s.duplicates, s.out_of_sequence, s.malformed
    )
}

/// `ibv_rc_pingpong` with the guest as `role`.
fn rc_pingpong<D: FrameDevice>(net: &mut Net<D>, role: Role, qpn: u32) -> R<String> {
    let t0 = now();
    let deadline = t0.saturating_add(TEST_TIMEOUT.as_nanos() as u64);
    let psn = random_psn();
    let local = PingpongDest {
        lid: 0,
        qpn,
        psn,
        gid: gid_from_ipv4(GUEST_IP),
    };
    let what = format!("ibv_rc_pingpong (guest as {role:?})");
    let tcp = open_tcp(net, role, deadline)?;
    if role == Role::Server {
        stage("pp-server")?;
    }
    let mut x = PingpongSession::new(role, &local);
    converse(net, &tcp, &mut x, None, deadline, &what, |x| x.is_paused())?;
    let remote = *x.remote().ok_or("no remote address at the pause")?;
    let peer_ip = gid_ipv4(&remote.gid).ok_or_else(|| {
        format!("{what}: the peer's GID {:02x?} is not IPv4-mapped (run it with -g <RoCE v2 IPv4 index>)", remote.gid)
    })?;
    println!(
        "rdma: {what}: local QPN {qpn:#08x} PSN {psn:#08x}; remote LID {:#06x} QPN {:#08x} PSN {:#08x} GID ::ffff:{}.{}.{}.{}",
        remote.lid, remote.qpn, remote.psn, peer_ip[0], peer_ip[1], peer_ip[2], peer_ip[3]
    );
    let mut q = Qp::new(QpConfig {
        qpn,
        dest_qpn: remote.qpn,
        pkey: PKEY,
        pmtu: PP_MTU,
        send_psn: Psn::from_masked(psn),
        recv_psn: Psn::from_masked(remote.psn),
        retry_limit: RETRY_LIMIT,
        endpoints: net.endpoints(peer_ip, qpn)?,
    })?;
    let size = PINGPONG_DEFAULT_SIZE;
    for i in 0..PP_ITERS + 4 {
        q.qp.post_recv(1000 + i as u64, size);
    }
    x.resume();
    converse(net, &tcp, &mut x, Some(&mut q), deadline, &what, |x| {
        x.is_done()
    })?;

    // The tool's loop: the client sends first; each side sends again once
    // its previous send and a receive completed.
    let pattern = pingpong_pattern(size);
    let t_run = now();
    let (mut posted, mut sent, mut received) = (0usize, 0usize, 0usize);
    let (mut pending_send, mut pending_recv) = (false, true);
    if role == Role::Client {
        q.post(
            1,
            SendOp::Send {
                data: pattern.clone(),
                imm: None,
            },
        )?;
        posted = 1;
        pending_send = true;
    }
    while sent < PP_ITERS || received < PP_ITERS {
        net.turn(Some(&mut q))?;
        while let Some(c) = q.completion()? {
            match c.kind {
                CompletionKind::Send => {
                    sent += 1;
                    pending_send = false;
                }
                CompletionKind::Recv { data, len, imm } => {
                    if len != size || data != pattern || imm.is_some() {
                        let bad = data.iter().zip(pattern.iter()).position(|(a, b)| a != b);
                        return Err(format!(
                            "{what}: message {} is not ibv_rc_pingpong -c's buffer: {len} bytes (expected {size}), first differing byte at {bad:?}, immediate {imm:?}",
                            received + 1
                        ));
                    }
                    received += 1;
                    pending_recv = false;
                }
                other => return Err(format!("{what}: a {} completed", kind_name(&other))),
            }
        }
        if !pending_send && !pending_recv && posted < PP_ITERS {
            posted += 1;
            q.post(
                posted as u64,
                SendOp::Send {
                    data: pattern.clone(),
                    imm: None,
                },
            )?;
            pending_send = true;
            pending_recv = true;
        }
        if q.qp.is_error() {
            return Err(format!("{what}: the queue pair failed: {}", qp_summary(&q)));
        }
        if now() > deadline {
            return Err(format!(
                "{what}: {sent} sends and {received} receives completed of {PP_ITERS} within {} s; {}",
                TEST_TIMEOUT.as_secs(),
                qp_summary(&q)
            ));
        }
        net.wait(5_000_000)?;
    }
    let run_ms = ms_since(t_run);
    linger(net, &mut q, tcp)?;
    let r = format!(
        "{what}: {PP_ITERS} round trips of {size} bytes in {run_ms} ms, every message checked; {}",
        qp_summary(&q)
    );
    println!("rdma: {r}");
    Ok(r)
}

/// perftest's `test` with the guest as `role`.
fn perftest<D: FrameDevice>(
    net: &mut Net<D>,
    role: Role,
    test: PerftestTest,
    qpn: u32,
) -> R<String> {
    let t0 = now();
    let deadline = t0.saturating_add(TEST_TIMEOUT.as_nanos() as u64);
    let psn = random_psn();
    let local = PerftestDest {
        lid: 0,
        out_reads: 0,
        qpn,
        psn,
        rkey: WRITE_RKEY,
        vaddr: WRITE_VA,
        gid: Some(gid_from_ipv4(GUEST_IP)),
        srqn: 0,
    };
    let tool = match test {
        PerftestTest::SendLat => "ib_send_lat",
        PerftestTest::WriteLat => "ib_write_lat",
    };
    let what = format!("{tool} (guest as {role:?})");
    let tcp = open_tcp(net, role, deadline)?;
    if role == Role::Server {
        stage(if test == PerftestTest::SendLat {
            "sl-server"
        } else {
            "wl-server"
        })?;
    }
    let mut x = PerftestSession::new(role, test, &local, PERF_MTU)
        .ok_or("the MTU offered to perftest is no IB MTU")?;
    converse(net, &tcp, &mut x, None, deadline, &what, |x| {
        x.phase() == PerftestPhase::SetUpQp
    })?;
    let remote = *x.remote().ok_or("no remote address at the pause")?;
    let gid = remote.gid.ok_or("the peer sent no GID")?;
    let peer_ip = gid_ipv4(&gid)
        .ok_or_else(|| format!("{what}: the peer's GID {gid:02x?} is not IPv4-mapped"))?;
    let mtu = x.mtu().ok_or("no MTU at the pause")?;
    let version = x.remote_version().unwrap_or((0, 0));
    println!(
        "rdma: {what}: peer perftest {}.{:02}, MTU {mtu}, local QPN {qpn:#08x} PSN {psn:#08x}; remote QPN {:#08x} PSN {:#08x} R_Key {:#010x} VA {:#018x} GID ::ffff:{}.{}.{}.{}",
        version.0, version.1, remote.qpn, remote.psn, remote.rkey, remote.vaddr,
        peer_ip[0], peer_ip[1], peer_ip[2], peer_ip[3]
    );
    let mut q = Qp::new(QpConfig {
        qpn,
        dest_qpn: remote.qpn,
        pkey: PKEY,
        pmtu: mtu,
        send_psn: Psn::from_masked(psn),
        recv_psn: Psn::from_masked(remote.psn),
        retry_limit: RETRY_LIMIT,
        endpoints: net.endpoints(peer_ip, qpn)?,
    })?;
    let size = PERFTEST_DEFAULT_SIZE;
    let region = q.qp.register(MemoryRegion {
        va: WRITE_VA,
        rkey: WRITE_RKEY,
        remote_write: test == PerftestTest::WriteLat,
        data: vec![0; WRITE_REGION],
    });
    if test == PerftestTest::SendLat {
        for i in 0..PERF_ITERS + 4 {
            q.qp.post_recv(1000 + i as u64, size);
        }
    }
    x.resume();
    converse(net, &tcp, &mut x, Some(&mut q), deadline, &what, |x| {
        x.phase() == PerftestPhase::Run
    })?;

    let t_run = now();
    let (mut posted, mut completed, mut received) = (0usize, 0usize, 0usize);
    let mut first_msg: Option<Vec<u8>> = None;
    // ib_send_lat: the client sends first; ib_write_lat: the server.
    let first = match test {
        PerftestTest::SendLat => role == Role::Client,
        PerftestTest::WriteLat => role == Role::Server,
    };
    let send_data: Vec<u8> = (0..size).map(|i| 0xa0 + i as u8).collect();
    while completed < PERF_ITERS || received < PERF_ITERS {
        net.turn(Some(&mut q))?;
        while let Some(c) = q.completion()? {
            match c.kind {
                CompletionKind::Send | CompletionKind::Write => completed += 1,
                CompletionKind::Recv { data, len, imm } => {
                    if test != PerftestTest::SendLat {
                        return Err(format!("{what}: a receive completed"));
                    }
                    if len != size || imm.is_some() {
                        return Err(format!(
                            "{what}: message {} has {len} bytes (expected {size}), immediate {imm:?}",
                            received + 1
                        ));
                    }
                    match &first_msg {
                        None => first_msg = Some(data),
                        Some(f) if *f == data => {}
                        Some(f) => {
                            return Err(format!(
                            "{what}: message {} holds {data:02x?}, the first held {f:02x?} (perftest sends one buffer)",
                            received + 1
                        ))
                        }
                    }
                    received += 1;
                }
                other => return Err(format!("{what}: a {} completed", kind_name(&other))),
            }
        }
        if test == PerftestTest::WriteLat {
            // The tool's own test: the last byte of the advertised buffer.
            let r = q.qp.region(region).ok_or("the write region is gone")?;
            let next = received + 1;
            if received < PERF_ITERS && r.data.get(size - 1) == Some(&(next as u8)) {
                let expect = write_lat_payload(size, next as u64);
                if r.data[..size] != expect[..] || r.data[size..].iter().any(|&b| b != 0) {
                    return Err(format!(
                        "{what}: after write {next} the region holds {:02x?} (expected {expect:02x?}) and {} nonzero bytes past it",
                        &r.data[..size],
                        r.data[size..].iter().filter(|&&b| b != 0).count()
                    ));
                }
                received = next;
            }
        }
        // Send the next message once the previous exchange is complete
        // (ib_write_lat also waits for its write's completion).
        let my_turn = if first {
            received >= posted
        } else {
            received > posted
        };
        let prev_done = test == PerftestTest::SendLat || completed >= posted;
        if posted < PERF_ITERS && my_turn && prev_done {
            posted += 1;
            let op = match test {
                PerftestTest::SendLat => SendOp::Send {
                    data: send_data.clone(),
                    imm: None,
                },
                PerftestTest::WriteLat => SendOp::Write {
                    data: write_lat_payload(size, posted as u64),
                    va: remote.vaddr,
                    rkey: remote.rkey,
                    imm: None,
                },
            };
            q.post(posted as u64, op)?;
            continue;
        }
        if q.qp.is_error() {
            return Err(format!("{what}: the queue pair failed: {}", qp_summary(&q)));
        }
        if now() > deadline {
            return Err(format!(
                "{what}: {completed} sends and {received} arrivals of {PERF_ITERS} within {} s; {}",
                TEST_TIMEOUT.as_secs(),
                qp_summary(&q)
            ));
        }
        net.wait(5_000_000)?;
    }
    let run_ms = ms_since(t_run);
    x.resume();
    converse(net, &tcp, &mut x, Some(&mut q), deadline, &what, |x| {
        x.is_done()
    })?;
    linger(net, &mut q, tcp)?;
    let r = format!(
        "{what}: {PERF_ITERS} iterations of {size} bytes in {run_ms} ms, every arrival checked; {}",
        qp_summary(&q)
    );
    println!("rdma: {r}");
    Ok(r)
}

fn run() -> R<String> {
    let t_all = now();
    let mut pci = lwdom::rt::with_xenstore(|xs| LwPci::connect(xs, Duration::from_secs(30)))
        .map_err(|e| format!("pcifront: {e}"))?;
    let devices = pci.devices().map_err(|e| e.to_string())?;
    let mut found = None;
    for &bdf in &devices {
        let info =
            DeviceInfo::probe(pci.config(), bdf).map_err(|e| format!("probing {bdf}: {e}"))?;
        if info.header.vendor_id == VENDOR_INTEL && info.header.device_id == DEVICE_82574L {
            found = Some(bdf);
            break;
        }
    }
    let bdf = found.ok_or_else(|| {
        format!("no Intel 82574L among the devices pcifront exports: {devices:?}")
    })?;
    let config = e1000e::Config {
        mode: IrqMode::Interrupts,
        link_timeout_ns: 10_000_000_000,
        ..e1000e::Config::default()
    };
    let mut dev =
        E1000e::new(Lent(&pci), bdf, config).map_err(|e| format!("bringing up the e1000e: {e}"))?;
    let link_deadline = now().saturating_add(10_000_000_000);
    while !dev.link().up {
        if now() > link_deadline {
            return Err("the e1000e's link is not up 10 s after bring-up".into());
        }
        dev.wait(Some(100_000_000))
            .map_err(|e| format!("waiting for the link: {e}"))?;
    }
    let mac = dev.mac();
    println!("rdma: e1000e at {bdf} up, MAC {mac:02x?}");

    let mut smol = SmolDevice::new(Split::new(dev));
    let mut iface_cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    iface_cfg.random_seed = now();
    let mut iface = Interface::new(iface_cfg, &mut smol, smol_now());
    let [a, b, c, d] = GUEST_IP;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), PREFIX));
    });
    let mut net = Net {
        smol,
        iface,
        sockets: SocketSet::new(vec![]),
        mac,
        stray_roce: 0,
        tx_failed: 0,
    };
    stage("ready")?;

    let mut results = Vec::new();
    results.push(rc_pingpong(&mut net, Role::Server, 0x000101)?);
    stage("pp-client")?;
    results.push(rc_pingpong(&mut net, Role::Client, 0x000102)?);
    stage("sl-client")?;
    results.push(perftest(
        &mut net,
        Role::Client,
        PerftestTest::SendLat,
        0x000103,
    )?);
    results.push(perftest(
        &mut net,
        Role::Server,
        PerftestTest::WriteLat,
        0x000104,
    )?);
    stage("tests-done")?;

    // dom0's verdict on its tools' side.
    let until = now().saturating_add(DONE_TIMEOUT.as_nanos() as u64);
    let done = loop {
        net.turn(None)?;
        if let Some(v) = lwdom::rt::with_xenstore(|xs| xs.try_read(DONE_KEY))
            .map_err(|e| format!("reading {DONE_KEY}: {e}"))?
        {
            break String::from_utf8_lossy(&v).into_owned();
        }
        if now() > until {
            return Err(format!(
                "dom0 did not write {DONE_KEY} within {} s",
                DONE_TIMEOUT.as_secs()
            ));
        }
        net.wait(100_000_000)?;
    };
    let split = net.smol.inner();
    let stats = split.dev.stats();
    let counts = format!(
        "NIC: {} frames received, {} sent, {} RX errors, {} TX errors; {} RoCE frames received ({} dropped for want of room, {} with no queue pair), {} RoCE frames not sent for want of a buffer",
        stats.rx_frames,
        stats.tx_frames,
        stats.rx_errors,
        stats.tx_errors,
        split.roce_frames,
        split.roce_overflow,
        net.stray_roce,
        net.tx_failed
    );
    println!("rdma: {counts}");
    // The device off and MSI-X disabled, then pcifront closed in order
    // (xen-pciback unmaps its page before the grant ends).
    drop(net);
    let closed = match lwdom::rt::with_xenstore(|xs| pci.close_front(xs, Duration::from_secs(20))) {
        Ok(()) => "pcifront closed in order".to_string(),
        Err(e) => format!("pcifront not closed in order: {e}"),
    };
    if done != "done" {
        return Err(format!("dom0: {done}; {counts}"));
    }
    Ok(format!(
        "{}; {counts}; {closed}; {} s in all",
        results.join("; "),
        ms_since(t_all) / 1000
    ))
}
