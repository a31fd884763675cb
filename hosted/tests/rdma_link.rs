//! RoCE v2 reliable-connected queue pairs driven by `RoceNic` over the
//! hosted frame link: on a lossy link (drops, duplicates and reordering
//! from several seeds) every SEND and RDMA WRITE arrives once, in order and
//! intact, with the retransmissions counted; and the same between two
//! processes (two domains sharing granted pages).

mod platform_common;

use std::time::{Duration, Instant};

use grant_tables::DomId;
use hosted::framelink::{Faults, FrameLink, LinkGrants};
use hosted::HostedHypervisor;
use hosted::HostedPlatform;
use platform_common::{role, ChildDomain, TestDir};
use rdma_passthrough::nic::{QpTransport, RoceNic};
use rdma_passthrough::packet::Endpoints;
use rdma_passthrough::psn::Psn;
use rdma_passthrough::rc::{CompletionKind, MemoryRegion, QpConfig, QueuePair, SendOp, Status};

const PMTU: usize = 256;
const RKEY: u32 = 0x4242;
const REGION_VA: u64 = 0x10_0000;
/// Bytes of the region per message (the largest message fits).
const STRIDE: usize = 2048;
/// Messages each way kept in flight at most.
const WINDOW: usize = 8;
/// Message sizes, cycled: 1 byte to several path MTUs.
const SIZES: [usize; 9] = [1, 64, 255, 256, 257, 512, 700, 1024, 1500];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Send,
    SendImm,
    Write,
    WriteImm,
}

impl Kind {
    /// Whether it consumes a receive at the remote end.
    fn consumes_recv(self) -> bool {
        self != Kind::Write
    }
}

/// Message `i` of the sequence each end sends.
fn message(i: usize) -> (Kind, usize) {
    let kind = [Kind::Send, Kind::Write, Kind::SendImm, Kind::WriteImm, Kind::Send][i % 5];
    (kind, SIZES[(i * 7 + i / 9) % SIZES.len()])
}

/// The bytes of message `i` from end `from`.
fn pattern(from: u8, i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| {
            (k as u32)
                .wrapping_mul(31)
                .wrapping_add(i as u32 * 7 + u32::from(from) * 101) as u8
        })
        .collect()
}

fn imm(i: usize) -> [u8; 4] {
    (i as u32).to_be_bytes()
}

fn mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, n]
}

fn endpoints(from: u8, to: u8) -> Endpoints {
    Endpoints {
        dst_mac: mac(to),
        src_mac: mac(from),
        src_ip: [10, 0, 0, from],
        dst_ip: [10, 0, 0, to],
        src_port: 0xc000 + u16::from(from),
        tos: 0,
        ttl: 64,
        ip_id: 0,
    }
}

fn psn_of(n: u8) -> Psn {
    // Near the 24-bit wrap, so that the sequence crosses it.
    Psn::from_masked(0xff_ffe0 + u32::from(n))
}

/// End `me`'s queue pair towards `peer`, with a region for `n` messages.
fn queue_pair(me: u8, peer: u8, n: usize) -> QueuePair {
    let mut qp = QueuePair::new(QpConfig {
        qpn: 0x100 + u32::from(me),
        dest_qpn: 0x100 + u32::from(peer),
        pkey: 0xffff,
        pmtu: PMTU,
        send_psn: psn_of(me),
        recv_psn: psn_of(peer),
        retry_limit: 7,
        endpoints: endpoints(me, peer),
    })
    .expect("queue pair config");
    qp.register(MemoryRegion {
        va: REGION_VA,
        rkey: RKEY,
        remote_write: true,
        data: vec![0; n * STRIDE],
    });
    qp
}

/// One end of the exchange: sends `n` messages to its peer and checks the
/// `n` messages the peer sends.
struct End<D: netfront::FrameDevice> {
    nic: RoceNic<D, QpTransport>,
    me: u8,
    peer: u8,
    n: usize,
    /// Messages posted, and completed (in order) by the peer's ACKs.
    posted: usize,
    sent: usize,
    /// The next message of the peer's sequence expected (its receives are
    /// checked in order); plain writes before it are checked with it.
    next_in: usize,
    /// Receive completions seen.
    recvs: usize,
}

impl<D: netfront::FrameDevice> End<D> {
    fn new(dev: D, me: u8, peer: u8, n: usize, rto_ns: u64) -> Self {
        let mut qp = queue_pair(me, peer, n);
        // Every receive the peer's messages consume, posted up front.
        let need = (0..n).filter(|&i| message(i).0.consumes_recv()).count();
        for w in 0..need {
            qp.post_recv(w as u64, STRIDE);
        }
        End {
            nic: RoceNic::new(dev, QpTransport::new(qp, rto_ns)),
            me,
            peer,
            n,
            posted: 0,
            sent: 0,
            next_in: 0,
            recvs: 0,
        }
    }

    fn qp_stats(&self) -> rdma_passthrough::rc::Stats {
        self.nic.transport().qp().stats()
    }

    fn qp(&mut self) -> &mut QueuePair {
        self.nic.transport_mut().qp_mut()
    }

    fn done(&self) -> bool {
        self.sent == self.n && self.next_in == self.n
    }

    /// Checks the peer's plain writes up to (not including) message `upto`.
    fn check_writes_before(&mut self, upto: usize) {
        while self.next_in < upto {
            let i = self.next_in;
            let (kind, len) = message(i);
            assert_eq!(
                kind,
                Kind::Write,
                "end {}: message {i} of the peer was skipped",
                self.me
            );
            self.check_region(i, len);
            self.next_in += 1;
        }
    }

    fn check_region(&mut self, i: usize, len: usize) {
        let want = pattern(self.peer, i, len);
        let region = &self.qp().region(0).expect("the region").data;
        let got = &region[i * STRIDE..i * STRIDE + len];
        assert!(
            got == want.as_slice(),
            "end {}: RDMA WRITE {i} ({len} bytes) landed corrupted",
            self.me
        );
    }

    /// Posts what the window allows, moves frames, checks completions.
    fn pump(&mut self, now_ns: u64) -> bool {
        while self.posted < self.n && self.posted - self.sent < WINDOW {
            let i = self.posted;
            let (kind, len) = message(i);
            let data = pattern(self.me, i, len);
            let va = REGION_VA + (i * STRIDE) as u64;
            let op = match kind {
                Kind::Send => SendOp::Send { data, imm: None },
                Kind::SendImm => SendOp::Send {
                    data,
                    imm: Some(imm(i)),
                },
                Kind::Write => SendOp::Write {
                    data,
                    va,
                    rkey: RKEY,
                    imm: None,
                },
                Kind::WriteImm => SendOp::Write {
                    data,
                    va,
                    rkey: RKEY,
                    imm: Some(imm(i)),
                },
            };
            self.qp().post_send(i as u64, op).expect("post_send");
            self.posted += 1;
        }
        let moved = self.nic.poll(now_ns).expect("the frame link broke");
        while let Some(c) = self.qp().poll_completion() {
            assert_eq!(c.status, Status::Success, "end {}: completion {c:?}", self.me);
            // A WRITE with immediate consumes a receive but fills no buffer.
            let kind = match c.kind {
                CompletionKind::RecvRdmaWithImm { len, imm } => CompletionKind::Recv {
                    data: Vec::new(),
                    len,
                    imm: Some(imm),
                },
                k => k,
            };
            match kind {
                ref sent @ (CompletionKind::Send | CompletionKind::Write) => {
                    assert_eq!(
                        c.wr_id, self.sent as u64,
                        "end {}: send completions out of order",
                        self.me
                    );
                    let want = if message(self.sent).0 == Kind::Send || message(self.sent).0 == Kind::SendImm {
                        CompletionKind::Send
                    } else {
                        CompletionKind::Write
                    };
                    assert_eq!(*sent, want);
                    self.sent += 1;
                }
                CompletionKind::Recv { data, imm: got_imm, .. } => {
                    assert_eq!(
                        c.wr_id, self.recvs as u64,
                        "end {}: receives consumed out of order",
                        self.me
                    );
                    self.recvs += 1;
                    // The next message that consumes a receive.
                    let i = (self.next_in..self.n)
                        .find(|&i| message(i).0.consumes_recv())
                        .unwrap_or_else(|| panic!("end {}: a receive completion beyond the peer's messages", self.me));
                    self.check_writes_before(i);
                    let (kind, len) = message(i);
                    match kind {
                        Kind::Send | Kind::SendImm => {
                            assert!(
                                data == pattern(self.peer, i, len),
                                "end {}: SEND {i} ({len} bytes) arrived corrupted ({} bytes)",
                                self.me,
                                data.len()
                            );
                            let want = (kind == Kind::SendImm).then(|| imm(i));
                            assert_eq!(got_imm, want, "end {}: message {i}'s immediate", self.me);
                        }
                        Kind::WriteImm => {
                            assert_eq!(got_imm, Some(imm(i)), "end {}: WRITE {i}'s immediate", self.me);
                            assert!(
                                data.is_empty(),
                                "end {}: WRITE {i} with immediate filled a receive buffer",
                                self.me
                            );
                            self.check_region(i, len);
                        }
                        Kind::Write => unreachable!(),
                    }
                    self.next_in = i + 1;
                }
                other => panic!("end {}: a completion of a kind never posted: {other:?}", self.me),
            }
        }
        // Plain writes at the end of the sequence complete nothing here:
        // once every message before them is in, they are checked when all
        // of this end's own are acknowledged and the peer's last message
        // (a write) has had time to land; see `finish_writes`.
        moved
    }

    /// Checks the trailing plain writes (no completion announces them).
    fn finish_writes(&mut self) {
        let n = self.n;
        if (self.next_in..n).all(|i| message(i).0 == Kind::Write) {
            let upto = n;
            for i in self.next_in..upto {
                self.check_region(i, message(i).1);
            }
            self.next_in = n;
        }
    }
}

/// The drop, duplicate and reorder test on one seed: both ends send `n`
/// messages, each direction lossy, on a simulated clock, in one thread.
fn lossy_run(seed: u64, pct: u8, n: usize) {
    let (mut la, mut lb) = FrameLink::pair(64, mac(1), mac(2)).expect("link");
    let faults = |s| Faults {
        seed: s,
        drop_pct: pct,
        dup_pct: pct,
        reorder_pct: pct,
    };
    la.set_faults(Some(faults(seed)));
    lb.set_faults(Some(faults(seed.wrapping_mul(7919).wrapping_add(1))));
    const RTO: u64 = 200_000;
    let mut a = End::new(la, 1, 2, n, RTO);
    let mut b = End::new(lb, 2, 1, n, RTO);
    let mut now = 0u64;
    let mut steps = 0u64;
    while !(a.done() && b.done()) {
        now += 1_000;
        steps += 1;
        a.pump(now);
        b.pump(now);
        if a.sent == n && b.sent == n {
            a.finish_writes();
            b.finish_writes();
        }
        assert!(
            steps < 2_000_000,
            "seed {seed}: stuck: a sent {}/{n} received {}/{n}, b sent {}/{n} received {}/{n}; a {:?} {:?}, b {:?} {:?}",
            a.sent,
            a.next_in,
            b.sent,
            b.next_in,
            a.qp_stats(),
            a.nic.device().stats(),
            b.qp_stats(),
            b.nic.device().stats()
        );
    }
    // Let duplicates and retransmissions still on the link arrive: none
    // may complete anything again.
    for _ in 0..(4 * RTO / 1_000) {
        now += 1_000;
        a.pump(now);
        b.pump(now);
    }
    for e in [&mut a, &mut b] {
        let want = (0..n).filter(|&i| message(i).0.consumes_recv()).count();
        assert_eq!(e.recvs, want, "end {}: receive completions", e.me);
        assert!(!e.qp().is_error());
    }
    let (sa, sb) = (a.qp().stats(), b.qp().stats());
    let (da, db) = (a.nic.device().stats(), b.nic.device().stats());
    eprintln!(
        "seed {seed}: {steps} steps; retransmitted a {} b {}; timeouts a {} b {}; duplicates seen a {} b {}; \
         link a→b dropped {} duplicated {} reordered {}, b→a dropped {} duplicated {} reordered {}",
        sa.retransmitted,
        sb.retransmitted,
        a.nic.transport().timeouts(),
        b.nic.transport().timeouts(),
        sa.duplicates,
        sb.duplicates,
        da.dropped,
        da.duplicated,
        da.reordered,
        db.dropped,
        db.duplicated,
        db.reordered
    );
    if pct > 0 {
        // The faults happened, and the transport recovered through
        // retransmissions and recognised the duplicates.
        assert!(
            da.dropped > 0 && da.duplicated > 0 && da.reordered > 0,
            "seed {seed}: no faults a→b: {da:?}"
        );
        assert!(
            db.dropped > 0 && db.duplicated > 0 && db.reordered > 0,
            "seed {seed}: no faults b→a: {db:?}"
        );
        assert!(
            sa.retransmitted > 0 && sb.retransmitted > 0,
            "seed {seed}: no retransmission counted"
        );
        assert!(
            sa.duplicates > 0 && sb.duplicates > 0,
            "seed {seed}: no duplicate recognised"
        );
    } else {
        assert_eq!(
            sa.retransmitted + sb.retransmitted,
            0,
            "a perfect link needs no retransmission"
        );
    }
}

#[test]
fn perfect_link_delivers_in_order_without_retransmissions() {
    lossy_run(1, 0, 90);
}

#[test]
fn lossy_link_delivers_every_message_once_in_order_and_intact() {
    for seed in [1, 2, 3, 0xdead_beef, 0x1234_5678_9abc] {
        lossy_run(seed, 5, 180);
    }
}

#[test]
fn heavy_loss_still_delivers() {
    lossy_run(42, 15, 90);
}

// Two processes: this process is domain 1 and grants the link's pages;
// the child (this test binary again) is domain 2 and maps them.

const TWO_PROC_TEST: &str = "two_processes_over_granted_pages";
const ROLE: &str = "rdma-link-peer";
const GRANTS_VAR: &str = "RDMA_LINK_GRANTS";
const MESSAGES: usize = 200;
/// A real clock's retransmission timeout, generous for a busy machine: the
/// child may take tens of milliseconds to start and attach while this end
/// already sends, and eight timeouts without an answer fail the queue
/// pair.
const RTO_NS: u64 = 20_000_000;
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// Runs one end until it is done, then lingers for `linger` (answering
/// retransmissions) or until `stop` says so (whichever comes first).
fn run_end<D: netfront::FrameDevice>(e: &mut End<D>, linger: Duration, mut stop: impl FnMut() -> bool) {
    let start = Instant::now();
    let now = || start.elapsed().as_nanos() as u64;
    let mut done_at: Option<Instant> = None;
    loop {
        let t = now();
        if !e.pump(t) {
            e.nic.wait(t, Some(200_000)).expect("wait");
        }
        if e.sent == e.n {
            e.finish_writes();
        }
        if e.done() {
            let d = *done_at.get_or_insert_with(Instant::now);
            if d.elapsed() >= linger || stop() {
                break;
            }
        }
        assert!(
            start.elapsed() < TIME_LIMIT,
            "end {}: stuck: sent {}/{} received {}/{}; {:?} {:?}",
            e.me,
            e.sent,
            e.n,
            e.next_in,
            e.n,
            e.qp_stats(),
            e.nic.stats()
        );
    }
}

#[test]
fn two_processes_over_granted_pages() {
    if role().as_deref() == Some(ROLE) {
        // Domain 2: map the link and serve.
        let dir = platform_common::child_dir();
        let plat = HostedPlatform::join(&dir, DomId(2)).expect("join as domain 2");
        let grants = std::env::var(GRANTS_VAR).expect("grants passed");
        let grants = LinkGrants::parse_refs(DomId(1), &grants).expect("grant refs");
        let link = FrameLink::attach(&plat, &grants, mac(2)).expect("attach");
        let mut e = End::new(link, 2, 1, MESSAGES, RTO_NS);
        run_end(&mut e, Duration::from_nanos(4 * RTO_NS), || false);
        let s = e.qp().stats();
        eprintln!(
            "domain 2: done; retransmitted {}, duplicates {}",
            s.retransmitted, s.duplicates
        );
        return;
    }
    if role().is_some() {
        return;
    }
    let dir = TestDir::new("rdma-link");
    let hv = HostedHypervisor::create(&dir.0).expect("hypervisor");
    let plat = hv.join(DomId(1)).expect("join as domain 1");
    let (mut link, grants) = FrameLink::create(&plat, DomId(2), 64, mac(1)).expect("create the link");
    // Lossy from this side: the child's ACKs and retransmissions repair it.
    link.set_faults(Some(Faults {
        seed: 7,
        drop_pct: 5,
        dup_pct: 5,
        reorder_pct: 5,
    }));
    let child = ChildDomain::spawn(TWO_PROC_TEST, ROLE, &dir, &[(GRANTS_VAR, grants.refs_string())]);
    let mut e = End::new(link, 1, 2, MESSAGES, RTO_NS);
    // Done, this end keeps answering the child's retransmissions (its ACKs
    // cross the lossy direction) for many timeouts before it stops.
    run_end(&mut e, Duration::from_nanos(40 * RTO_NS), || false);
    let s = e.qp().stats();
    let d = e.nic.device().stats();
    eprintln!("domain 1: retransmitted {}, link {d:?}", s.retransmitted);
    assert!(d.dropped > 0, "the lossy direction dropped nothing: {d:?}");
    assert!(s.retransmitted > 0, "drops were repaired without retransmissions?");
    child.finish();
}

#[test]
fn two_threads_over_a_memfd_link() {
    if role().is_some() {
        return;
    }
    let (mut la, mut lb) = FrameLink::pair(32, mac(1), mac(2)).expect("link");
    la.set_faults(Some(Faults {
        seed: 11,
        drop_pct: 5,
        dup_pct: 5,
        reorder_pct: 5,
    }));
    lb.set_faults(Some(Faults {
        seed: 12,
        drop_pct: 5,
        dup_pct: 5,
        reorder_pct: 5,
    }));
    let linger = Duration::from_nanos(40 * RTO_NS);
    let b = std::thread::spawn(move || {
        let mut e = End::new(lb, 2, 1, MESSAGES, RTO_NS);
        run_end(&mut e, linger, || false);
        e.qp_stats()
    });
    let mut e = End::new(la, 1, 2, MESSAGES, RTO_NS);
    run_end(&mut e, linger, || false);
    let sb = b.join().expect("thread b");
    let sa = e.qp_stats();
    assert!(
        sa.retransmitted > 0 && sb.retransmitted > 0,
        "no retransmission on a lossy link: {sa:?} {sb:?}"
    );
}
