//! Lab scenario `rdma`: RoCE v2 between lwdom, which drives its
//! passed-through e1000e itself, and dom0's Soft-RoCE (`rdma_rxe` on its
//! e1000, on the same QEMU hub), with rdma-core's and perftest's
//! unmodified tools as dom0's side.
//!
//! The guest brings the 82574L up as `pci-nic` does (pcifront, `LwPci`,
//! `passthrough::e1000e`, MSI-X) and uses it the way an HPC runtime uses
//! an RDMA device through libibverbs: one `rdma_passthrough::verbs`
//! context on the NIC's MAC and `10.0.12.2`, one protection domain, one
//! completion queue, and per test memory regions for the tool's buffers
//! and a reliable-connected queue pair taken RESET→INIT→RTR→RTS with the
//! peer's QPN, PSN and GID from the tool's TCP connection exchange
//! (`rdma_passthrough::exchange`, through smoltcp on the same NIC) and the
//! tools' own attributes (path MTU 1024 for `ibv_rc_pingpong`, perftest's
//! negotiated MTU, local ACK timeout 14, retry count 7, RNR retry 7).
//! Receives are posted with scatter-gather lists into registered slots,
//! completions are polled from the completion queue, and the queue pair is
//! destroyed and its regions deregistered after each test.
//!
//! `rdma_passthrough::nic::RoceNic` moves the frames between the e1000e
//! and the context and runs the queue pairs' timers. The NIC is shared
//! with smoltcp this way: the device `RoceNic` reads is [`Sorter`], a
//! wrapper of the e1000e that keeps a copy of every received frame that is
//! not RoCE v2 (ARP, the exchange's TCP; the crate's own `is_roce_v2`
//! decides) in a queue of its own and hands `RoceNic` only the RoCE ones.
//! smoltcp reads that queue and transmits straight into the e1000e's TX
//! buffers through [`SmolSide`], a view of the sorter lent to it for one
//! `Interface::poll`. (`RoceNic::on_other_frame` is not used: its callback
//! must be `Send + 'static`, so a queue shared with it would need a lock
//! this single-threaded guest has no use for; the sorter gives the same
//! split without shared state. `RoceNic` so sees no other frame, which
//! the final counters show.)
//!
//! The tests, in the order dom0's script runs the tools:
//! 1. `ibv_rc_pingpong -c` as dom0's client, the guest the server: 20
//!    round trips of 4096-byte SENDs (4 packets each at MTU 1024);
//! 2. the same with the guest as the client;
//! 3. `ib_send_lat` as dom0's server, the guest the client (2-byte SENDs);
//! 4. `ib_write_lat` as dom0's client, the guest the server (2-byte RDMA
//!    WRITEs into a region the guest registered with remote write access).
//!
//! The guest checks every payload it receives: `ibv_rc_pingpong -c`'s
//! buffer (byte 0 of each page 0, the rest `0x7b`, which both ends send),
//! `ib_send_lat`'s messages (its size, each the same bytes: perftest sends
//! one buffer of random bytes), `ib_write_lat`'s writes (zero but the last
//! byte, the iteration number, which is how the tool itself detects
//! arrival) with the rest of the region untouched. Each receive slot is
//! zeroed before it is posted again, so a stale message cannot pass for a
//! new one. dom0's script checks the tools' verdicts and prints their
//! reports. The guest's verdict goes to `data/rdma-result`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use lwdom::println;
use lwdom::rt::pcidev::LwPci;
use netfront::phy::smoltcp;
use netfront::phy::SmolDevice;
use netfront::{FrameDevice, FrameError, LinkInfo, RxFrame};
use passthrough::config::DeviceInfo;
use passthrough::e1000e::regs::{DEVICE_82574L, VENDOR_INTEL};
use passthrough::e1000e::{self, E1000e, IrqMode};
use passthrough::PciPlatform;
use rdma_passthrough::exchange::smol::TcpExchange;
use rdma_passthrough::exchange::{
    gid_from_ipv4, gid_ipv4, mtu_enum, write_lat_payload, Exchange, PerftestDest, PerftestPhase,
    PerftestSession, PerftestTest, PingpongDest, PingpongSession, Role, DEFAULT_PORT,
    PERFTEST_DEFAULT_SIZE, PINGPONG_DEFAULT_SIZE, PINGPONG_FILL,
};
use rdma_passthrough::nic::{is_roce_v2, RoceNic};
use rdma_passthrough::verbs::{
    AccessFlags, AhAttr, Context, CqHandle, MrHandle, PathMtu, PdHandle, QpAttr, QpHandle,
    QpInitAttr, QpState, RecvWr, SendWr, Sge, WcOpcode, WcStatus, WorkCompletion, WrOpcode,
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
const PP_MTU: PathMtu = PathMtu::Mtu1024;
/// The MTU the guest offers perftest (rxe's active MTU over a 1500-byte
/// netdev is 1024; perftest uses the smaller of the two).
const PERF_MTU: usize = 1024;
/// The queue pairs' attributes, as both tools set them: local ACK timeout
/// (4.096 µs × 2^14, about 67 ms), retries after timeouts, retries after
/// RNR NAKs (7: without limit), the RNR timer asked of the peer (12:
/// 0.64 ms), and READs/atomics in flight either way.
const QP_TIMEOUT: u8 = 14;
const QP_RETRY_CNT: u8 = 7;
const QP_RNR_RETRY: u8 = 7;
const QP_MIN_RNR_TIMER: u8 = 12;
const QP_RD_ATOMIC: u8 = 1;
/// Receives kept posted per queue pair, each into a slot of its own in
/// the receive region (`ibv_rc_pingpong` keeps its whole `rx_depth`
/// posted too; the tools never have more than one message in flight).
const RECV_SLOTS: usize = 8;
/// Sends outstanding at most per queue pair.
const MAX_SEND_WR: u32 = 16;
/// The completion queue's entries (sends and receives of one test at a
/// time, polled at every turn).
const CQ_ENTRIES: usize = 256;
/// How long each test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the guest waits for dom0's verdict at the end.
const DONE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the queue pair keeps answering after a run (the peer's last
/// packets may need an ACK sent again).
const LINGER_NS: u64 = 1_000_000_000;
/// perftest's buffer: what the guest registers and advertises (the region
/// `ib_write_lat` writes into; `ib_send_lat`'s receive slots).
const PERF_REGION: usize = 4096;
/// wr_id of receives: this plus the slot index.
const RECV_WR_BASE: u64 = 1 << 32;

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

/// The most non-RoCE frames kept for smoltcp between two turns.
const OTHER_QUEUE: usize = 256;

/// The e1000e as `RoceNic` sees it: received frames that are not RoCE v2
/// are taken out of the stream (copied once, for smoltcp, see
/// [`SmolSide`]); the RoCE v2 ones are passed on, as are sends. It also
/// notes the Ethernet source of each IPv4 sender, so that a queue pair can
/// address the peer smoltcp talked to.
struct Sorter<D: FrameDevice> {
    dev: D,
    others: VecDeque<Vec<u8>>,
    macs: Vec<([u8; 4], [u8; 6])>,
    /// Frames for smoltcp dropped (its queue full, or unreadable).
    others_dropped: u64,
    others_total: u64,
}

impl<D: FrameDevice> Sorter<D> {
    fn new(dev: D) -> Self {
        Sorter {
            dev,
            others: VecDeque::new(),
            macs: Vec::new(),
            others_dropped: 0,
            others_total: 0,
        }
    }

    fn mac_of(&self, ip: [u8; 4]) -> Option<[u8; 6]> {
        self.macs.iter().find(|(i, _)| *i == ip).map(|(_, m)| *m)
    }

    /// Sorts one frame: `true` when it was not RoCE v2 (and so was taken
    /// for smoltcp).
    fn take_other(&mut self, f: &D::Rx) -> bool {
        // Ethernet (14), IPv4 header (up to 60), UDP (8): enough for
        // `is_roce_v2`, which looks no further.
        let mut head = [0u8; 14 + 60 + 8];
        let n = head.len().min(f.len());
        if f.read_at(0, &mut head[..n]).is_err() {
            // Unreadable: dropped, for neither side.
            self.others_dropped += 1;
            return true;
        }
        let head = &head[..n];
        if n >= 34 && head[12..14] == [0x08, 0x00] && head[14] >> 4 == 4 {
            let mut src_mac = [0u8; 6];
            src_mac.copy_from_slice(&head[6..12]);
            let mut src_ip = [0u8; 4];
            src_ip.copy_from_slice(&head[26..30]);
            if let Some(e) = self.macs.iter_mut().find(|(i, _)| *i == src_ip) {
                e.1 = src_mac;
            } else if self.macs.len() < 16 {
                self.macs.push((src_ip, src_mac));
            }
        }
        if is_roce_v2(head) {
            return false;
        }
        self.others_total += 1;
        if self.others.len() >= OTHER_QUEUE {
            self.others_dropped += 1;
            return true;
        }
        let mut copy = vec![0u8; f.len()];
        if f.read_at(0, &mut copy).is_ok() {
            self.others.push_back(copy);
        }
        true
    }
}

impl<D: FrameDevice> FrameDevice for Sorter<D> {
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
            if !self.take_other(&f) {
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

/// A frame the sorter kept, as smoltcp's adaptor reads it.
struct Kept(Vec<u8>);

impl RxFrame for Kept {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn as_slice(&self) -> Option<&[u8]> {
        Some(&self.0)
    }
    fn fragment(&self, index: usize) -> Option<&[u8]> {
        (index == 0).then_some(&self.0[..])
    }
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), FrameError> {
        let src = offset
            .checked_add(buf.len())
            .and_then(|end| self.0.get(offset..end))
            .ok_or(FrameError::OutOfRange {
                offset,
                len: buf.len(),
                frame_len: self.0.len(),
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// smoltcp's side of the sorter, lent for one `Interface::poll`: it
/// receives the frames the sorter kept and sends through the e1000e's own
/// TX buffers. The device's work (`poll`, `wait`) is `RoceNic`'s, not
/// smoltcp's.
struct SmolSide<'a, D: FrameDevice>(&'a mut Sorter<D>);

impl<D: FrameDevice> FrameDevice for SmolSide<'_, D> {
    type Tx = D::Tx;
    type Rx = Kept;

    fn link(&self) -> LinkInfo {
        self.0.dev.link()
    }
    fn tx_buffer(&mut self, len: usize) -> Result<Option<D::Tx>, FrameError> {
        self.0.dev.tx_buffer(len)
    }
    fn send(&mut self, frame: D::Tx) -> Result<(), FrameError> {
        self.0.dev.send(frame)
    }
    fn receive(&mut self) -> Result<Option<Kept>, FrameError> {
        Ok(self.0.others.pop_front().map(Kept))
    }
    fn poll(&mut self) -> Result<bool, FrameError> {
        Ok(false)
    }
    fn wait(&mut self, _timeout_ns: Option<u64>) -> Result<bool, FrameError> {
        Ok(false)
    }
}

/// The guest's network: the verbs context over the NIC, smoltcp, and the
/// verbs objects every test shares.
struct Net<D: FrameDevice> {
    nic: RoceNic<Sorter<D>, Context>,
    iface: Interface,
    sockets: SocketSet<'static>,
    pd: PdHandle,
    cq: CqHandle,
}

/// One test's verbs objects.
struct Test {
    what: String,
    qp: QpHandle,
    /// Where receives land (slots of the message size) or, for
    /// `ib_write_lat`, the region the peer writes.
    recv_mr: MrHandle,
    /// What the guest sends from.
    send_mr: MrHandle,
    /// The message size.
    size: usize,
    /// The context's frames out when the test began.
    frames_out_at_start: u64,
}

impl<D: FrameDevice> Net<D> {
    fn ctx(&mut self) -> &mut Context {
        self.nic.transport_mut()
    }

    /// One turn: the NIC (RoCE both ways, timers), then smoltcp.
    fn turn(&mut self) -> R<()> {
        match self.nic.poll(now()) {
            Ok(_) | Err(FrameError::LinkDown) => {}
            Err(e) => return Err(format!("the e1000e failed: {e}")),
        }
        let mut smol = SmolDevice::new(SmolSide(self.nic.device_mut()));
        self.iface.poll(smol_now(), &mut smol, &mut self.sockets);
        Ok(())
    }

    /// Waits for the device for at most `max_ns` (less when smoltcp or a
    /// queue pair has a timer sooner).
    fn wait(&mut self, max_ns: u64) -> R<()> {
        let delay = self
            .iface
            .poll_delay(smol_now(), &self.sockets)
            .map_or(max_ns, |d| d.total_micros().saturating_mul(1000))
            .min(max_ns);
        match self.nic.wait(now(), Some(delay)) {
            Ok(_) | Err(FrameError::LinkDown) => Ok(()),
            Err(e) => Err(format!("the e1000e failed while waiting: {e}")),
        }
    }

    /// A queue pair in INIT with `access` for remote peers, a receive
    /// region of `recv_region` bytes (with `access` and local write) whose
    /// first [`RECV_SLOTS`] slots of `size` bytes get a posted receive each
    /// when `post_recvs`, and a send region holding `send`.
    fn open_test(
        &mut self,
        what: String,
        access: AccessFlags,
        recv_region: usize,
        post_recvs: bool,
        size: usize,
        send: Vec<u8>,
    ) -> R<Test> {
        let (pd, cq) = (self.pd, self.cq);
        let frames_out_at_start = self.ctx().stats().frames_out;
        let ctx = self.ctx();
        let qp = ctx
            .create_qp(
                pd,
                &QpInitAttr {
                    send_cq: cq,
                    recv_cq: cq,
                    max_send_wr: MAX_SEND_WR,
                    max_recv_wr: RECV_SLOTS as u32,
                    max_send_sge: 1,
                    max_recv_sge: 1,
                    sq_sig_all: true,
                },
            )
            .map_err(|e| format!("{what}: create_qp: {e}"))?;
        let mut init = QpAttr::to(QpState::Init);
        init.pkey_index = Some(0);
        init.port_num = Some(1);
        init.qp_access_flags = Some(access);
        ctx.modify_qp(qp, &init)
            .map_err(|e| format!("{what}: modify_qp to INIT: {e}"))?;
        let recv_access = AccessFlags::LOCAL_WRITE | access;
        let recv_mr = ctx
            .reg_mr(pd, recv_region, recv_access)
            .map_err(|e| format!("{what}: reg_mr of {recv_region} bytes: {e}"))?;
        let send_mr = ctx
            .reg_mr_with(pd, send, AccessFlags::NONE)
            .map_err(|e| format!("{what}: reg_mr of the send buffer: {e}"))?;
        let t = Test {
            what,
            qp,
            recv_mr,
            send_mr,
            size,
            frames_out_at_start,
        };
        if post_recvs {
            for slot in 0..RECV_SLOTS {
                self.post_recv(&t, slot)?;
            }
        }
        Ok(t)
    }

    /// Posts the receive of slot `slot`, zeroed first.
    fn post_recv(&mut self, t: &Test, slot: usize) -> R<()> {
        let ctx = self.ctx();
        let info = ctx
            .mr_info(t.recv_mr)
            .map_err(|e| format!("{}: {e}", t.what))?;
        let range = slot * t.size..(slot + 1) * t.size;
        ctx.mr_bytes_mut(t.recv_mr)
            .map_err(|e| format!("{}: {e}", t.what))?
            .get_mut(range.clone())
            .ok_or_else(|| format!("{}: receive slot {slot} is outside its region", t.what))?
            .fill(0);
        ctx.post_recv(
            t.qp,
            &RecvWr {
                wr_id: RECV_WR_BASE + slot as u64,
                sg_list: vec![Sge {
                    addr: info.addr + range.start as u64,
                    length: t.size as u32,
                    lkey: info.lkey,
                }],
            },
        )
        .map_err(|e| format!("{}: post_recv into slot {slot}: {e}", t.what))
    }

    /// INIT→RTR→RTS towards the peer at `peer_ip`, QPN `dest_qpn`, whose
    /// first PSN is `rq_psn`; the guest's first PSN is `sq_psn`.
    fn connect(
        &mut self,
        t: &Test,
        peer_ip: [u8; 4],
        dest_qpn: u32,
        rq_psn: u32,
        sq_psn: u32,
        mtu: PathMtu,
    ) -> R<()> {
        let dmac = self.nic.device().mac_of(peer_ip).ok_or_else(|| {
            format!(
                "{}: no frame from {peer_ip:?} seen: its Ethernet address is unknown",
                t.what
            )
        })?;
        let ctx = self.ctx();
        let mut rtr = QpAttr::to(QpState::Rtr);
        rtr.ah_attr = Some(AhAttr {
            dgid: gid_from_ipv4(peer_ip),
            dmac,
            hop_limit: 64,
            traffic_class: 0,
        });
        rtr.path_mtu = Some(mtu);
        rtr.dest_qp_num = Some(dest_qpn);
        rtr.rq_psn = Some(rq_psn);
        rtr.max_dest_rd_atomic = Some(QP_RD_ATOMIC);
        rtr.min_rnr_timer = Some(QP_MIN_RNR_TIMER);
        ctx.modify_qp(t.qp, &rtr)
            .map_err(|e| format!("{}: modify_qp to RTR: {e}", t.what))?;
        let mut rts = QpAttr::to(QpState::Rts);
        rts.sq_psn = Some(sq_psn);
        rts.timeout = Some(QP_TIMEOUT);
        rts.retry_cnt = Some(QP_RETRY_CNT);
        rts.rnr_retry = Some(QP_RNR_RETRY);
        rts.max_rd_atomic = Some(QP_RD_ATOMIC);
        ctx.modify_qp(t.qp, &rts)
            .map_err(|e| format!("{}: modify_qp to RTS: {e}", t.what))
    }

    /// Posts a signaled send work request of the whole send region.
    fn post_send(&mut self, t: &Test, wr_id: u64, opcode: WrOpcode) -> R<()> {
        let ctx = self.ctx();
        // `RoceNic::poll` gives the context the time, but this send may
        // follow a wait in `RoceNic::wait`: the clock first, so that the
        // ACK timer runs from now.
        ctx.advance_time(now());
        let info = ctx
            .mr_info(t.send_mr)
            .map_err(|e| format!("{}: {e}", t.what))?;
        ctx.post_send(
            t.qp,
            &SendWr {
                wr_id,
                sg_list: vec![Sge {
                    addr: info.addr,
                    length: info.len as u32,
                    lkey: info.lkey,
                }],
                opcode,
                signaled: true,
            },
        )
        .map_err(|e| format!("{}: post_send of work request {wr_id}: {e}", t.what))
    }

    /// The completions waiting; a failed one, one of another queue pair,
    /// or a queue pair in the error state is an error.
    fn completions(&mut self, t: &Test) -> R<Vec<WorkCompletion>> {
        let cq = self.cq;
        let wcs = self
            .ctx()
            .poll_cq(cq, 16)
            .map_err(|e| format!("{}: poll_cq: {e}", t.what))?;
        for wc in &wcs {
            if wc.status != WcStatus::Success {
                return Err(format!(
                    "{}: work request {:#x} ({:?}) completed with {:?}; {}",
                    t.what,
                    wc.wr_id,
                    wc.opcode,
                    wc.status,
                    self.summary(t)
                ));
            }
            if wc.qp_num != t.qp.qp_num() {
                return Err(format!(
                    "{}: a completion of queue pair {:#x} (the test's is {:#x})",
                    t.what,
                    wc.qp_num,
                    t.qp.qp_num()
                ));
            }
        }
        if wcs.is_empty() && self.ctx().qp_state(t.qp) == Ok(QpState::Err) {
            return Err(format!(
                "{}: the queue pair failed: {}",
                t.what,
                self.summary(t)
            ));
        }
        Ok(wcs)
    }

    /// Bytes `range` of the receive region (a receive slot, or the
    /// region `ib_write_lat` writes).
    fn recv_bytes(&mut self, t: &Test, range: core::ops::Range<usize>) -> R<&[u8]> {
        let what = &t.what;
        self.nic
            .transport()
            .mr_bytes(t.recv_mr)
            .map_err(|e| format!("{what}: {e}"))?
            .get(range)
            .ok_or_else(|| format!("{what}: a range outside the receive region"))
    }

    /// The queue pair's transport counters.
    fn summary(&mut self, t: &Test) -> String {
        let frames_out = self
            .ctx()
            .stats()
            .frames_out
            .saturating_sub(t.frames_out_at_start);
        match self.ctx().qp_stats(t.qp) {
            Some(s) => format!(
                "queue pair {:#08x}: {frames_out} frames out (the context's), {} ACKs, {} NAKs, {} retransmitted, {} timeouts, {} RNR NAKs, {} duplicates, {} out of sequence, {} malformed",
                t.qp.qp_num(), s.acks_sent, s.naks_sent, s.retransmitted, s.timeouts, s.rnr_naks, s.duplicates, s.out_of_sequence, s.malformed
            ),
            None => format!("queue pair {:#08x}: not connected", t.qp.qp_num()),
        }
    }

    /// Destroys the queue pair (its posted receives go with it) and
    /// deregisters the test's regions.
    fn close_test(&mut self, t: Test) -> R<()> {
        let ctx = self.ctx();
        ctx.destroy_qp(t.qp)
            .map_err(|e| format!("{}: destroy_qp: {e}", t.what))?;
        for mr in [t.recv_mr, t.send_mr] {
            ctx.dereg_mr(mr)
                .map_err(|e| format!("{}: dereg_mr: {e}", t.what))?;
        }
        Ok(())
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
            net.turn()?;
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
            net.turn()?;
            net.wait(50_000_000)?;
        }
    }
}

/// Runs the exchange (and every queue pair) until `until` holds.
fn converse<D: FrameDevice, E: Exchange>(
    net: &mut Net<D>,
    tcp: &TcpExchange,
    x: &mut E,
    deadline: u64,
    what: &str,
    until: impl Fn(&E) -> bool,
) -> R<()> {
    loop {
        net.turn()?;
        let moved = tcp
            .pump(&mut net.sockets, x)
            .map_err(|e| format!("{what}: {e}"))?;
        if until(x) {
            // Send what the exchange wrote.
            net.turn()?;
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

/// Keeps the queue pair answering for a while after a run, closes the
/// TCP connection, then tears the test's verbs objects down.
fn linger<D: FrameDevice>(net: &mut Net<D>, t: Test, tcp: TcpExchange) -> R<String> {
    tcp.close(&mut net.sockets);
    let until = now().saturating_add(LINGER_NS);
    while now() < until {
        net.turn()?;
        net.wait(20_000_000)?;
    }
    tcp.remove(&mut net.sockets);
    // Nothing may be left: every send completed, no receive beyond the
    // tool's messages.
    let left = net.completions(&t)?;
    if let Some(wc) = left.first() {
        return Err(format!(
            "{}: {} completion(s) after the run, the first {:?} of work request {:#x}",
            t.what,
            left.len(),
            wc.opcode,
            wc.wr_id
        ));
    }
    let summary = net.summary(&t);
    net.close_test(t)?;
    Ok(summary)
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

/// The receive slot of a receive completion's work request id.
fn recv_slot(what: &str, wc: &WorkCompletion) -> R<usize> {
    wc.wr_id
        .checked_sub(RECV_WR_BASE)
        .and_then(|s| usize::try_from(s).ok())
        .filter(|&s| s < RECV_SLOTS)
        .ok_or_else(|| {
            format!(
                "{what}: a receive completion for work request {:#x}, never posted",
                wc.wr_id
            )
        })
}

/// `ibv_rc_pingpong` with the guest as `role`.
fn rc_pingpong<D: FrameDevice>(net: &mut Net<D>, role: Role) -> R<String> {
    let t0 = now();
    let deadline = t0.saturating_add(TEST_TIMEOUT.as_nanos() as u64);
    let what = format!("ibv_rc_pingpong (guest as {role:?})");
    let size = PINGPONG_DEFAULT_SIZE;
    let pattern = pingpong_pattern(size);
    // The tool's own setup: its buffer, a queue pair in INIT with no
    // remote access, receives posted, then the exchange.
    let t = net.open_test(
        what.clone(),
        AccessFlags::NONE,
        RECV_SLOTS * size,
        true,
        size,
        pattern.clone(),
    )?;
    let qpn = t.qp.qp_num();
    let psn = random_psn();
    let local = PingpongDest {
        lid: 0,
        qpn,
        psn,
        gid: gid_from_ipv4(GUEST_IP),
    };
    let tcp = open_tcp(net, role, deadline)?;
    if role == Role::Server {
        stage("pp-server")?;
    }
    let mut x = PingpongSession::new(role, &local);
    converse(net, &tcp, &mut x, deadline, &what, |x| x.is_paused())?;
    let remote = *x.remote().ok_or("no remote address at the pause")?;
    let peer_ip = gid_ipv4(&remote.gid).ok_or_else(|| {
        format!("{what}: the peer's GID {:02x?} is not IPv4-mapped (run it with -g <RoCE v2 IPv4 index>)", remote.gid)
    })?;
    println!(
        "rdma: {what}: local QPN {qpn:#08x} PSN {psn:#08x}; remote LID {:#06x} QPN {:#08x} PSN {:#08x} GID ::ffff:{}.{}.{}.{}",
        remote.lid, remote.qpn, remote.psn, peer_ip[0], peer_ip[1], peer_ip[2], peer_ip[3]
    );
    net.connect(&t, peer_ip, remote.qpn, remote.psn, psn, PP_MTU)?;
    x.resume();
    converse(net, &tcp, &mut x, deadline, &what, |x| x.is_done())?;

    // The tool's loop: the client sends first; each side sends again once
    // its previous send and a receive completed.
    let t_run = now();
    let (mut posted, mut sent, mut received) = (0usize, 0usize, 0usize);
    let (mut pending_send, mut pending_recv) = (false, true);
    if role == Role::Client {
        net.post_send(&t, 1, WrOpcode::Send)?;
        posted = 1;
        pending_send = true;
    }
    while sent < PP_ITERS || received < PP_ITERS {
        net.turn()?;
        for wc in net.completions(&t)? {
            match wc.opcode {
                WcOpcode::Send => {
                    sent += 1;
                    pending_send = false;
                }
                WcOpcode::Recv => {
                    let slot = recv_slot(&what, &wc)?;
                    let data = net.recv_bytes(&t, slot * size..(slot + 1) * size)?;
                    if wc.byte_len as usize != size || data != &pattern[..] || wc.imm_data.is_some()
                    {
                        let bad = data.iter().zip(pattern.iter()).position(|(a, b)| a != b);
                        return Err(format!(
                            "{what}: message {} is not ibv_rc_pingpong -c's buffer: {} bytes (expected {size}), first differing byte at {bad:?}, immediate {:?}",
                            received + 1, wc.byte_len, wc.imm_data
                        ));
                    }
                    received += 1;
                    pending_recv = false;
                    net.post_recv(&t, slot)?;
                }
                other => return Err(format!("{what}: a {other:?} completed")),
            }
        }
        if !pending_send && !pending_recv && posted < PP_ITERS {
            posted += 1;
            net.post_send(&t, posted as u64, WrOpcode::Send)?;
            pending_send = true;
            pending_recv = true;
            continue;
        }
        if now() > deadline {
            return Err(format!(
                "{what}: {sent} sends and {received} receives completed of {PP_ITERS} within {} s; {}",
                TEST_TIMEOUT.as_secs(),
                net.summary(&t)
            ));
        }
        net.wait(5_000_000)?;
    }
    let run_ms = ms_since(t_run);
    let summary = linger(net, t, tcp)?;
    let r = format!(
        "{what}: {PP_ITERS} round trips of {size} bytes in {run_ms} ms, every message checked; {summary}"
    );
    println!("rdma: {r}");
    Ok(r)
}

/// perftest's `test` with the guest as `role`.
fn perftest<D: FrameDevice>(net: &mut Net<D>, role: Role, test: PerftestTest) -> R<String> {
    let t0 = now();
    let deadline = t0.saturating_add(TEST_TIMEOUT.as_nanos() as u64);
    let tool = match test {
        PerftestTest::SendLat => "ib_send_lat",
        PerftestTest::WriteLat => "ib_write_lat",
    };
    let what = format!("{tool} (guest as {role:?})");
    let size = PERFTEST_DEFAULT_SIZE;
    // perftest's setup: its buffer registered (remote write for the
    // WRITE tests), a queue pair in INIT (receives posted for the SEND
    // tests), then the exchange advertises the buffer.
    let (access, send) = match test {
        PerftestTest::SendLat => (
            AccessFlags::LOCAL_WRITE,
            (0..size).map(|i| 0xa0 + i as u8).collect(),
        ),
        PerftestTest::WriteLat => (
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
            vec![0; size],
        ),
    };
    let t = net.open_test(
        what.clone(),
        access,
        PERF_REGION,
        test == PerftestTest::SendLat,
        size,
        send,
    )?;
    let qpn = t.qp.qp_num();
    let psn = random_psn();
    let region = net
        .ctx()
        .mr_info(t.recv_mr)
        .map_err(|e| format!("{what}: {e}"))?;
    let local = PerftestDest {
        lid: 0,
        out_reads: u16::from(QP_RD_ATOMIC),
        qpn,
        psn,
        rkey: region.rkey,
        vaddr: region.addr,
        gid: Some(gid_from_ipv4(GUEST_IP)),
        srqn: 0,
    };
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
    converse(net, &tcp, &mut x, deadline, &what, |x| {
        x.phase() == PerftestPhase::SetUpQp
    })?;
    let remote = *x.remote().ok_or("no remote address at the pause")?;
    let gid = remote.gid.ok_or("the peer sent no GID")?;
    let peer_ip = gid_ipv4(&gid)
        .ok_or_else(|| format!("{what}: the peer's GID {gid:02x?} is not IPv4-mapped"))?;
    let mtu = x.mtu().ok_or("no MTU at the pause")?;
    let path_mtu = mtu_enum(mtu)
        .and_then(PathMtu::from_ibv)
        .ok_or_else(|| format!("{what}: the negotiated MTU {mtu} is no IB MTU"))?;
    let version = x.remote_version().unwrap_or((0, 0));
    println!(
        "rdma: {what}: peer perftest {}.{:02}, MTU {mtu}, local QPN {qpn:#08x} PSN {psn:#08x} R_Key {:#010x} VA {:#018x}; remote QPN {:#08x} PSN {:#08x} R_Key {:#010x} VA {:#018x} GID ::ffff:{}.{}.{}.{}",
        version.0, version.1, region.rkey, region.addr, remote.qpn, remote.psn, remote.rkey, remote.vaddr,
        peer_ip[0], peer_ip[1], peer_ip[2], peer_ip[3]
    );
    net.connect(&t, peer_ip, remote.qpn, remote.psn, psn, path_mtu)?;
    x.resume();
    converse(net, &tcp, &mut x, deadline, &what, |x| {
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
    while completed < PERF_ITERS || received < PERF_ITERS {
        net.turn()?;
        for wc in net.completions(&t)? {
            match (wc.opcode, test) {
                (WcOpcode::Send, PerftestTest::SendLat)
                | (WcOpcode::RdmaWrite, PerftestTest::WriteLat) => completed += 1,
                (WcOpcode::Recv, PerftestTest::SendLat) => {
                    let slot = recv_slot(&what, &wc)?;
                    if wc.byte_len as usize != size || wc.imm_data.is_some() {
                        return Err(format!(
                            "{what}: message {} has {} bytes (expected {size}), immediate {:?}",
                            received + 1,
                            wc.byte_len,
                            wc.imm_data
                        ));
                    }
                    let data = net.recv_bytes(&t, slot * size..(slot + 1) * size)?.to_vec();
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
                    net.post_recv(&t, slot)?;
                }
                (other, _) => return Err(format!("{what}: a {other:?} completed")),
            }
        }
        if test == PerftestTest::WriteLat {
            // The tool's own test: the last byte of the advertised buffer.
            let r = net.recv_bytes(&t, 0..PERF_REGION)?;
            let next = received + 1;
            if received < PERF_ITERS && r.get(size - 1) == Some(&(next as u8)) {
                let expect = write_lat_payload(size, next as u64);
                if r[..size] != expect[..] || r[size..].iter().any(|&b| b != 0) {
                    return Err(format!(
                        "{what}: after write {next} the region holds {:02x?} (expected {expect:02x?}) and {} nonzero bytes past it",
                        &r[..size],
                        r[size..].iter().filter(|&&b| b != 0).count()
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
                PerftestTest::SendLat => WrOpcode::Send,
                PerftestTest::WriteLat => {
                    // The payload into the send region; gathered when posted.
                    let payload = write_lat_payload(size, posted as u64);
                    let buf = net
                        .ctx()
                        .mr_bytes_mut(t.send_mr)
                        .map_err(|e| format!("{what}: {e}"))?;
                    if buf.len() != payload.len() {
                        return Err(format!("{what}: the send region is not {size} bytes"));
                    }
                    buf.copy_from_slice(&payload);
                    WrOpcode::RdmaWrite {
                        remote_addr: remote.vaddr,
                        rkey: remote.rkey,
                    }
                }
            };
            net.post_send(&t, posted as u64, op)?;
            continue;
        }
        if now() > deadline {
            return Err(format!(
                "{what}: {completed} sends and {received} arrivals of {PERF_ITERS} within {} s; {}",
                TEST_TIMEOUT.as_secs(),
                net.summary(&t)
            ));
        }
        net.wait(5_000_000)?;
    }
    let run_ms = ms_since(t_run);
    x.resume();
    converse(net, &tcp, &mut x, deadline, &what, |x| x.is_done())?;
    let summary = linger(net, t, tcp)?;
    let r = format!(
        "{what}: {PERF_ITERS} iterations of {size} bytes in {run_ms} ms, every arrival checked; {summary}"
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
        E1000e::new(&pci, bdf, config).map_err(|e| format!("bringing up the e1000e: {e}"))?;
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

    // The RDMA device: a verbs context on the NIC's addresses, its
    // protection domain and completion queue.
    let mut ctx = Context::new(mac, GUEST_IP);
    let pd = ctx.alloc_pd().map_err(|e| format!("alloc_pd: {e}"))?;
    let cq = ctx
        .create_cq(CQ_ENTRIES)
        .map_err(|e| format!("create_cq: {e}"))?;
    let mut nic = RoceNic::new(Sorter::new(dev), ctx);

    let mut iface_cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    iface_cfg.random_seed = now();
    let mut iface = Interface::new(
        iface_cfg,
        &mut SmolDevice::new(SmolSide(nic.device_mut())),
        smol_now(),
    );
    let [a, b, c, d] = GUEST_IP;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), PREFIX));
    });
    let mut net = Net {
        nic,
        iface,
        sockets: SocketSet::new(vec![]),
        pd,
        cq,
    };
    stage("ready")?;

    let mut results = Vec::new();
    results.push(rc_pingpong(&mut net, Role::Server)?);
    stage("pp-client")?;
    results.push(rc_pingpong(&mut net, Role::Client)?);
    stage("sl-client")?;
    results.push(perftest(&mut net, Role::Client, PerftestTest::SendLat)?);
    results.push(perftest(&mut net, Role::Server, PerftestTest::WriteLat)?);
    stage("tests-done")?;

    // dom0's verdict on its tools' side.
    let until = now().saturating_add(DONE_TIMEOUT.as_nanos() as u64);
    let done = loop {
        net.turn()?;
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
    let sorter = net.nic.device();
    let dev_stats = sorter.dev.stats();
    let nic_stats = net.nic.stats();
    let cs = net.nic.transport().stats();
    let counts = format!(
        "NIC: {} frames received, {} sent, {} RX errors, {} TX errors; {} other frames to smoltcp ({} dropped); RoceNic: {} RoCE frames in, {} frames out, {} other frames (none expected), {} TX stalls, {} refused; verbs context: {} frames in, {} out, {} malformed, {} misaddressed, {} for no queue pair, {} in the wrong state, {} completions lost",
        dev_stats.rx_frames,
        dev_stats.tx_frames,
        dev_stats.rx_errors,
        dev_stats.tx_errors,
        sorter.others_total,
        sorter.others_dropped,
        nic_stats.rx_roce,
        nic_stats.tx_frames,
        nic_stats.rx_other + nic_stats.rx_other_dropped,
        nic_stats.tx_stalls,
        nic_stats.tx_refused,
        cs.frames_in,
        cs.frames_out,
        cs.malformed,
        cs.misaddressed,
        cs.unknown_qp,
        cs.wrong_state,
        cs.cq_overruns
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
