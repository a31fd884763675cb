//! RDMA over the paravirtual path: two domains, each with a netfront
//! driver (`NetfrontDevice`) on the hosted netback's switch, each running
//! a verbs `Context` over `RoceNic`; reliable-connected queue pairs
//! brought to RTS towards each other exchange SENDs (with and without
//! immediate data, up to several path-MTU segments), RDMA WRITEs (with
//! immediate), RDMA READs and both atomics, every byte checked at the
//! other end, in both directions; the switch is lossless, so nothing may
//! be retransmitted.

#[path = "netback_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use grant_tables::DomId;
use hosted::netback::NetbackConfig;
use hosted::xenstore::UnixTransport;
use hosted::HostedPlatform;
use netfront::{DriverConfig, FrameDevice, NetfrontDevice, WaitMode};
use rdma_passthrough::nic::RoceNic;
use rdma_passthrough::verbs::{
    ipv4_gid, AccessFlags, AhAttr, Context, CqHandle, MrHandle, MrInfo, PathMtu, QpAttr, QpHandle, QpInitAttr, QpState,
    RecvWr, SendWr, Sge, WcOpcode, WcStatus, WorkCompletion, WrOpcode,
};

const A: DomId = DomId(1);
const B: DomId = DomId(2);
/// Each end's registered region: receive buffers, then a WRITE/READ area,
/// then the atomics' words, then a local staging area for what it sends.
const REGION: usize = 320 * 1024;
const RECV_AREA: usize = 0;
const RECV_SLOT: usize = 16 * 1024;
const RECVS: usize = 8;
const RDMA_AREA: usize = RECVS * RECV_SLOT;
const ATOMIC_AREA: usize = RDMA_AREA + 64 * 1024;
const STAGE: usize = ATOMIC_AREA + 4096;
const STEP: Duration = Duration::from_secs(20);

type Nic = RoceNic<NetfrontDevice<HostedPlatform, UnixTransport>, Context>;

struct End {
    nic: Nic,
    cq: CqHandle,
    qp: QpHandle,
    mr: MrHandle,
    info: MrInfo,
    ip: [u8; 4],
    mac: [u8; 6],
    /// Completions seen but not yet consumed by the test.
    seen: Vec<WorkCompletion>,
}

fn ip(d: DomId) -> [u8; 4] {
    [10, 0, 0, 10 + d.0 as u8]
}

fn psn(d: DomId) -> u32 {
    // Near the 24-bit wrap, so the exchange crosses it.
    0xff_fff0 - 0x100 * u32::from(d.0)
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i as u32).wrapping_mul(2654435761) >> 13) as u8 ^ seed as u8).collect()
}

impl End {
    fn new(w: &mut World, d: DomId) -> End {
        w.plug(d, 0);
        let cfg = DriverConfig { wait: WaitMode::Poll, ..DriverConfig::default() };
        let mut dev = NetfrontDevice::new(w.domain(d), w.xs(d), "device/vif/0", cfg);
        dev.wait_up(10_000_000_000).expect("netfront up");
        let mac = mac(d, 0);
        assert_eq!(dev.link().mac, mac, "the MAC from xenstore");
        let mut ctx = Context::new(mac, ip(d));
        let pd = ctx.alloc_pd().unwrap();
        let access = AccessFlags(
            AccessFlags::LOCAL_WRITE.0
                | AccessFlags::REMOTE_WRITE.0
                | AccessFlags::REMOTE_READ.0
                | AccessFlags::REMOTE_ATOMIC.0,
        );
        let mr = ctx.reg_mr(pd, REGION, access).unwrap();
        let cq = ctx.create_cq(64).unwrap();
        let qp = ctx
            .create_qp(
                pd,
                &QpInitAttr {
                    send_cq: cq,
                    recv_cq: cq,
                    max_send_wr: 32,
                    max_recv_wr: 32,
                    max_send_sge: 4,
                    max_recv_sge: 2,
                    sq_sig_all: false,
                },
            )
            .unwrap();
        let mut a = QpAttr::to(QpState::Init);
        a.pkey_index = Some(0);
        a.port_num = Some(1);
        a.qp_access_flags = Some(access);
        ctx.modify_qp(qp, &a).unwrap();
        let info = ctx.mr_info(mr).unwrap();
        End { nic: RoceNic::new(dev, ctx), cq, qp, mr, info, ip: ip(d), mac, seen: Vec::new() }
    }

    fn ctx(&mut self) -> &mut Context {
        self.nic.transport_mut()
    }

    /// INIT -> RTR -> RTS towards `peer` (its QPN, PSN, GID and MAC, as the
    /// connection exchange would give them).
    fn connect(&mut self, me: DomId, peer: &End, peer_dom: DomId) {
        let (qp, peer_qpn) = (self.qp, peer.qp.qp_num());
        let mut a = QpAttr::to(QpState::Rtr);
        a.ah_attr = Some(AhAttr { dgid: ipv4_gid(peer.ip), dmac: peer.mac, hop_limit: 64, traffic_class: 0 });
        a.path_mtu = Some(PathMtu::Mtu1024);
        a.dest_qp_num = Some(peer_qpn);
        a.rq_psn = Some(psn(peer_dom));
        a.max_dest_rd_atomic = Some(4);
        a.min_rnr_timer = Some(1);
        self.ctx().modify_qp(qp, &a).unwrap();
        let mut a = QpAttr::to(QpState::Rts);
        a.sq_psn = Some(psn(me));
        // 4.096 us x 2^18, about 1.07 s: far above a round trip and above
        // the time a loaded machine may take a process off its core, so a
        // retransmission on this lossless switch is a fault.
        a.timeout = Some(18);
        a.retry_cnt = Some(7);
        a.rnr_retry = Some(7);
        a.max_rd_atomic = Some(4);
        self.ctx().modify_qp(qp, &a).unwrap();
        assert_eq!(self.ctx().qp_state(qp).unwrap(), QpState::Rts);
    }

    fn sge(&self, offset: usize, len: usize) -> Sge {
        Sge { addr: self.info.addr + offset as u64, length: len as u32, lkey: self.info.lkey }
    }

    fn region(&self) -> &[u8] {
        self.nic.transport().mr_bytes(self.mr).unwrap()
    }

    fn region_mut(&mut self) -> &mut [u8] {
        let mr = self.mr;
        self.nic.transport_mut().mr_bytes_mut(mr).unwrap()
    }

    fn post_recvs(&mut self) {
        for i in 0..RECVS {
            let wr = RecvWr { wr_id: 100 + i as u64, sg_list: vec![self.sge(RECV_AREA + i * RECV_SLOT, RECV_SLOT)] };
            let qp = self.qp;
            self.ctx().post_recv(qp, &wr).unwrap();
        }
    }

    /// Stages `data` at the staging area and posts `op` gathering it (in
    /// two SGEs when it is long enough, to exercise the gather list).
    fn post(&mut self, wr_id: u64, op: WrOpcode, stage_at: usize, data: &[u8]) {
        let at = STAGE + stage_at;
        self.region_mut()[at..at + data.len()].copy_from_slice(data);
        let sg_list = if data.len() > 100 {
            let half = data.len() / 2;
            vec![self.sge(at, half), self.sge(at + half, data.len() - half)]
        } else {
            vec![self.sge(at, data.len())]
        };
        let wr = SendWr { wr_id, sg_list, opcode: op, signaled: true };
        let qp = self.qp;
        self.ctx().post_send(qp, &wr).unwrap();
    }

    fn post_wr(&mut self, wr: SendWr) {
        let qp = self.qp;
        self.ctx().post_send(qp, &wr).unwrap();
    }

    fn collect(&mut self) {
        let cq = self.cq;
        let wcs = self.ctx().poll_cq(cq, 16).unwrap();
        self.seen.extend(wcs);
    }

    fn take(&mut self, wr_id: u64) -> Option<WorkCompletion> {
        let i = self.seen.iter().position(|c| c.wr_id == wr_id)?;
        Some(self.seen.remove(i))
    }
}

struct Pair {
    a: End,
    b: End,
    start: Instant,
}

impl Pair {
    fn pump(&mut self) {
        let now = self.start.elapsed().as_nanos() as u64;
        self.a.nic.poll(now).expect("A's netfront");
        self.b.nic.poll(now).expect("B's netfront");
        self.a.collect();
        self.b.collect();
    }

    /// Pumps until end `who` ('a' or 'b') has completion `wr_id`.
    fn wait(&mut self, who: char, wr_id: u64) -> WorkCompletion {
        let deadline = Instant::now() + STEP;
        loop {
            self.pump();
            let end = if who == 'a' { &mut self.a } else { &mut self.b };
            if let Some(c) = end.take(wr_id) {
                assert_eq!(c.status, WcStatus::Success, "{who}: work request {wr_id}: {c:?}");
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "{who}: work request {wr_id} never completed; A {:?} {:?}; B {:?} {:?}",
                self.a.nic.transport().stats(),
                self.a.nic.stats(),
                self.b.nic.transport().stats(),
                self.b.nic.stats()
            );
            std::thread::yield_now();
        }
    }
}

#[test]
fn verbs_over_netfront_through_the_hosted_netback() {
    let mut w = World::new("rdma-nf", NetbackConfig::new());
    let mut a = End::new(&mut w, A);
    let mut b = End::new(&mut w, B);
    a.connect(A, &b, B);
    b.connect(B, &a, A);
    a.post_recvs();
    b.post_recvs();
    let mut p = Pair { a, b, start: Instant::now() };

    // SENDs from A to B, 1 byte to several 1024-byte segments, with and
    // without immediate data; each lands in B's next receive, in order.
    let sizes = [1usize, 64, 1023, 1024, 1025, 4096, 9000, RECV_SLOT];
    for (i, &len) in sizes.iter().enumerate() {
        let data = pattern(i as u32, len);
        let imm = (i % 2 == 1).then_some(0xabc0_0000 + i as u32);
        let op = match imm {
            Some(v) => WrOpcode::SendWithImm(v),
            None => WrOpcode::Send,
        };
        p.a.post(i as u64, op, 0, &data);
        let sent = p.wait('a', i as u64);
        assert_eq!((sent.opcode, sent.byte_len), (WcOpcode::Send, len as u32));
        let r = p.wait('b', 100 + i as u64);
        assert_eq!((r.opcode, r.byte_len, r.imm_data), (WcOpcode::Recv, len as u32, imm), "SEND {i}");
        let slot = RECV_AREA + i * RECV_SLOT;
        assert!(p.b.region()[slot..slot + len] == data[..], "SEND {i} of {len} bytes arrived corrupted");
    }
    // B reposts its receives; B sends A one of each.
    p.b.post_recvs();
    for (i, &len) in [7usize, 3000].iter().enumerate() {
        let data = pattern(50 + i as u32, len);
        p.b.post(200 + i as u64, WrOpcode::SendWithImm(7 + i as u32), 0, &data);
        p.wait('b', 200 + i as u64);
        let r = p.wait('a', 100 + i as u64);
        assert_eq!((r.byte_len, r.imm_data), (len as u32, Some(7 + i as u32)));
        let slot = RECV_AREA + i * RECV_SLOT;
        assert!(p.a.region()[slot..slot + len] == data[..]);
    }

    // RDMA WRITE of 6000 bytes into B's region; then a WRITE with
    // immediate, which consumes one of B's receives and reports the data.
    let (b_addr, b_rkey) = (p.b.info.addr, p.b.info.rkey);
    let data = pattern(77, 6000);
    p.a.post(300, WrOpcode::RdmaWrite { remote_addr: b_addr + RDMA_AREA as u64, rkey: b_rkey }, 0, &data);
    assert_eq!(p.wait('a', 300).opcode, WcOpcode::RdmaWrite);
    assert!(p.b.region()[RDMA_AREA..RDMA_AREA + 6000] == data[..], "RDMA WRITE landed corrupted");
    let data2 = pattern(78, 2500);
    let at = RDMA_AREA + 8192;
    p.a.post(301, WrOpcode::RdmaWriteWithImm { remote_addr: b_addr + at as u64, rkey: b_rkey, imm: 0x1234 }, 0, &data2);
    p.wait('a', 301);
    // B's receives were reposted after A's SENDs: this is the first.
    let r = p.wait('b', 100);
    assert_eq!((r.opcode, r.imm_data), (WcOpcode::RecvRdmaWithImm, Some(0x1234)));
    assert!(p.b.region()[at..at + 2500] == data2[..]);

    // RDMA READ of 5000 bytes B wrote into its own region, into A's
    // staging area (two SGEs).
    let src = pattern(91, 5000);
    let rd = RDMA_AREA + 16 * 1024;
    p.b.region_mut()[rd..rd + 5000].copy_from_slice(&src);
    let dst = STAGE + 32 * 1024;
    p.a.post_wr(SendWr {
        wr_id: 400,
        sg_list: vec![p.a.sge(dst, 3000), p.a.sge(dst + 3000, 2000)],
        opcode: WrOpcode::RdmaRead { remote_addr: b_addr + rd as u64, rkey: b_rkey },
        signaled: true,
    });
    let c = p.wait('a', 400);
    assert_eq!((c.opcode, c.byte_len), (WcOpcode::RdmaRead, 5000));
    assert!(p.a.region()[dst..dst + 5000] == src[..], "RDMA READ returned other bytes");

    // Atomics on a word of B's region: compare-and-swap (hit, then miss),
    // fetch-and-add; the original values land in A's buffers.
    let word = ATOMIC_AREA;
    p.b.region_mut()[word..word + 8].copy_from_slice(&41u64.to_le_bytes());
    let old_at = STAGE + 64 * 1024;
    let cas = |wr_id: u64, compare: u64, swap: u64, a: &End| SendWr {
        wr_id,
        sg_list: vec![a.sge(old_at + 8 * (wr_id as usize - 500), 8)],
        opcode: WrOpcode::AtomicCmpSwp { remote_addr: b_addr + word as u64, rkey: b_rkey, compare, swap },
        signaled: true,
    };
    let wr = cas(500, 41, 1000, &p.a);
    p.a.post_wr(wr);
    assert_eq!(p.wait('a', 500).opcode, WcOpcode::CompSwap);
    let wr = cas(501, 41, 2000, &p.a);
    p.a.post_wr(wr);
    p.wait('a', 501);
    p.a.post_wr(SendWr {
        wr_id: 502,
        sg_list: vec![p.a.sge(old_at + 16, 8)],
        opcode: WrOpcode::AtomicFetchAdd { remote_addr: b_addr + word as u64, rkey: b_rkey, add: 5 },
        signaled: true,
    });
    assert_eq!(p.wait('a', 502).opcode, WcOpcode::FetchAdd);
    let olds: Vec<u64> = (0..3)
        .map(|k| u64::from_le_bytes(p.a.region()[old_at + 8 * k..old_at + 8 * k + 8].try_into().unwrap()))
        .collect();
    assert_eq!(olds, vec![41, 1000, 1000], "the atomics' original values");
    let now = u64::from_le_bytes(p.b.region()[word..word + 8].try_into().unwrap());
    assert_eq!(now, 1005, "swap hit, swap missed, then add 5");

    // A lossless switch: nothing retransmitted, nothing dropped as bad.
    for (who, e) in [("A", &p.a), ("B", &p.b)] {
        let s = e.nic.transport().qp_stats(e.qp).unwrap();
        assert_eq!(s.retransmitted, 0, "{who}: {s:?}");
        assert_eq!(s.malformed + s.out_of_sequence, 0, "{who}: {s:?}");
        assert_eq!(e.nic.transport().qp_state(e.qp).unwrap(), QpState::Rts, "{who}");
        assert!(e.seen.iter().all(|c| c.status == WcStatus::Success), "{who}: {:?}", e.seen);
    }
}
