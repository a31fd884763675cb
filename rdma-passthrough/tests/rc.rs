//! Two reliable-connected queue pairs exchanging SENDs and RDMA WRITEs
//! through an in-memory link that can drop, duplicate and reorder frames.

use std::collections::VecDeque;

use rdma_passthrough::headers::{Bth, NakCode, Reth};
use rdma_passthrough::opcode::Opcode;
use rdma_passthrough::packet::{build, frame_len, parse, Endpoints, TransportHeaders};
use rdma_passthrough::psn::Psn;
use rdma_passthrough::rc::{
    Completion, CompletionKind, MemoryRegion, QpConfig, QueuePair, RemoteAccess, SendOp, Status,
};

const A_QPN: u32 = 0x11;
const B_QPN: u32 = 0x22;
const RKEY: u32 = 0x77;
const REGION_VA: u64 = 0x10_0000;
const PMTU: usize = 256;

fn endpoints(from: u8, to: u8) -> Endpoints {
    Endpoints {
        dst_mac: [2, 0, 0, 0, 0, to],
        src_mac: [2, 0, 0, 0, 0, from],
        src_ip: [10, 0, 0, from],
        dst_ip: [10, 0, 0, to],
        src_port: 0xc000 + u16::from(from),
        tos: 0,
        ttl: 64,
        ip_id: 0,
    }
}

/// A pair of queue pairs whose PSNs start just below the 24-bit wrap.
fn pair() -> (QueuePair, QueuePair) {
    let a_psn = Psn::from_masked(0xff_fff0);
    let b_psn = Psn::from_masked(0xff_fffd);
    let cfg = |qpn, dest, send: Psn, recv: Psn, from, to| QpConfig {
        qpn,
        dest_qpn: dest,
        pkey: 0xffff,
        pmtu: PMTU,
        send_psn: send,
        recv_psn: recv,
        retry_limit: 7,
        endpoints: endpoints(from, to),
    };
    let a = QueuePair::new(cfg(A_QPN, B_QPN, a_psn, b_psn, 1, 2)).unwrap();
    let mut b = QueuePair::new(cfg(B_QPN, A_QPN, b_psn, a_psn, 2, 1)).unwrap();
    b.register(MemoryRegion {
        va: REGION_VA,
        rkey: RKEY,
        remote_write: true,
        data: vec![0; 8192],
    });
    (a, b)
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
}

/// An in-memory link in both directions. Loss, duplication and
/// reordering are percentages; 0 makes it perfect.
struct Link {
    rng: Rng,
    drop: u64,
    dup: u64,
    reorder: u64,
    to_a: VecDeque<Vec<u8>>,
    to_b: VecDeque<Vec<u8>>,
}

impl Link {
    fn perfect() -> Link {
        Link::lossy(1, 0, 0, 0)
    }
    fn lossy(seed: u64, drop: u64, dup: u64, reorder: u64) -> Link {
        Link {
            rng: Rng(seed | 1),
            drop,
            dup,
            reorder,
            to_a: VecDeque::new(),
            to_b: VecDeque::new(),
        }
    }

    fn carry(&mut self, frame: Vec<u8>, to_b: bool) {
        if self.rng.percent(self.drop) {
            return;
        }
        let copies = if self.rng.percent(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let q = if to_b { &mut self.to_b } else { &mut self.to_a };
            if self.rng.percent(self.reorder) && !q.is_empty() {
                let at = (self.rng.next() as usize) % q.len();
                q.insert(at, frame.clone());
            } else {
                q.push_back(frame.clone());
            }
        }
    }

    /// Moves frames until both directions are idle; returns how many moved.
    fn run(&mut self, a: &mut QueuePair, b: &mut QueuePair) -> usize {
        let mut moved = 0;
        loop {
            let mut any = false;
            while let Some(f) = a.transmit() {
                self.carry(f, true);
                any = true;
            }
            while let Some(f) = b.transmit() {
                self.carry(f, false);
                any = true;
            }
            while let Some(f) = self.to_b.pop_front() {
                b.receive(&f);
                moved += 1;
                any = true;
            }
            while let Some(f) = self.to_a.pop_front() {
                a.receive(&f);
                moved += 1;
                any = true;
            }
            if !any {
                return moved;
            }
        }
    }

    /// Runs until idle, firing both retransmission timers whenever the link
    /// goes quiet, at most `timeouts` times.
    fn run_with_timers(&mut self, a: &mut QueuePair, b: &mut QueuePair, timeouts: usize) {
        for _ in 0..timeouts {
            self.run(a, b);
            a.timeout();
            b.timeout();
        }
        self.run(a, b);
    }
}

fn completions(qp: &mut QueuePair) -> Vec<Completion> {
    std::iter::from_fn(|| qp.poll_completion()).collect()
}

fn message(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed * 7 + 3) as u8).collect()
}

#[test]
fn send_only_completes_on_both_ends() {
    let (mut a, mut b) = pair();
    b.post_recv(100, 64);
    a.post_send(
        1,
        SendOp::Send {
            data: b"hello".to_vec(),
            imm: Some([9, 9, 9, 9]),
        },
    )
    .unwrap();
    Link::perfect().run(&mut a, &mut b);
    assert_eq!(
        completions(&mut b),
        [Completion {
            wr_id: 100,
            status: Status::Success,
            kind: CompletionKind::Recv {
                data: b"hello".to_vec(),
                len: 5,
                imm: Some([9, 9, 9, 9])
            },
        }]
    );
    assert_eq!(
        completions(&mut a),
        [Completion {
            wr_id: 1,
            status: Status::Success,
            kind: CompletionKind::Send
        }]
    );
    assert_eq!(b.stats().acks_sent, 1);
}

#[test]
fn multi_packet_send_and_write_cross_the_psn_wrap() {
    let (mut a, mut b) = pair();
    let big = message(1, PMTU * 20 + 13); // 21 packets, across the wrap
    b.post_recv(7, big.len());
    a.post_send(
        1,
        SendOp::Send {
            data: big.clone(),
            imm: None,
        },
    )
    .unwrap();
    let w = message(2, PMTU * 3);
    a.post_send(
        2,
        SendOp::Write {
            data: w.clone(),
            va: REGION_VA + 100,
            rkey: RKEY,
            imm: None,
        },
    )
    .unwrap();
    Link::perfect().run(&mut a, &mut b);
    let got = completions(&mut b);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].kind,
        CompletionKind::Recv {
            data: big.clone(),
            len: big.len(),
            imm: None
        }
    );
    assert_eq!(&b.region(0).unwrap().data[100..100 + w.len()], &w[..]);
    assert_eq!(b.region(0).unwrap().data[99], 0);
    assert_eq!(b.region(0).unwrap().data[100 + w.len()], 0);
    let done: Vec<_> = completions(&mut a)
        .into_iter()
        .map(|c| (c.wr_id, c.status))
        .collect();
    assert_eq!(done, [(1, Status::Success), (2, Status::Success)]);
}

#[test]
fn acks_are_coalesced() {
    let (mut a, mut b) = pair();
    for i in 0..5 {
        b.post_recv(i, 16);
        a.post_send(
            i,
            SendOp::Send {
                data: vec![i as u8; 4],
                imm: None,
            },
        )
        .unwrap();
    }
    // All five requests reach B before B transmits anything.
    while let Some(f) = a.transmit() {
        b.receive(&f);
    }
    let acks: Vec<_> = std::iter::from_fn(|| b.transmit()).collect();
    assert_eq!(acks.len(), 1);
    let ack = parse(&acks[0]).unwrap();
    assert_eq!(ack.headers.bth.opcode, Opcode::Acknowledge);
    assert_eq!(ack.headers.bth.psn, Psn::from_masked(0xff_fff0).add(4));
    assert_eq!(ack.headers.aeth.unwrap().msn, 5);
    a.receive(&acks[0]);
    assert_eq!(completions(&mut a).len(), 5);
    assert_eq!(completions(&mut b).len(), 5);
}

#[test]
fn a_gap_gets_one_sequence_nak_and_a_resend() {
    let (mut a, mut b) = pair();
    b.post_recv(1, 4096);
    a.post_send(
        1,
        SendOp::Send {
            data: message(3, PMTU * 4),
            imm: None,
        },
    )
    .unwrap();
    let first = a.transmit().unwrap();
    drop(first); // lost
                 // B answers after each packet, so coalescing cannot hide extra NAKs.
    let mut naks = Vec::new();
    while let Some(f) = a.transmit() {
        b.receive(&f);
        naks.extend(std::iter::from_fn(|| b.transmit()));
    }
    // Three packets ahead of the expected PSN: one NAK, not three.
    assert_eq!(b.stats().out_of_sequence, 3);
    assert_eq!(naks.len(), 1);
    let nak = parse(&naks[0]).unwrap();
    assert_eq!(
        nak.headers.aeth.unwrap().syndrome,
        rdma_passthrough::headers::Syndrome::Nak(NakCode::PsnSequenceError)
    );
    assert_eq!(nak.headers.bth.psn, Psn::from_masked(0xff_fff0));
    a.receive(&naks[0]);
    Link::perfect().run(&mut a, &mut b);
    assert_eq!(a.stats().retransmitted, 4);
    let got = completions(&mut b);
    assert_eq!(
        got[0].kind,
        CompletionKind::Recv {
            data: message(3, PMTU * 4),
            len: PMTU * 4,
            imm: None
        }
    );
    assert_eq!(completions(&mut a)[0].status, Status::Success);
}

#[test]
fn duplicates_are_not_executed_twice() {
    let (mut a, mut b) = pair();
    b.post_recv(1, 64);
    b.post_recv(2, 64);
    a.post_send(
        1,
        SendOp::Send {
            data: b"once".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    let f = a.transmit().unwrap();
    b.receive(&f);
    b.receive(&f);
    assert_eq!(b.stats().duplicates, 1);
    assert_eq!(completions(&mut b).len(), 1);
    // The duplicate is answered with an ACK of what was received.
    let frame = b.transmit().unwrap();
    let ack = parse(&frame).unwrap();
    assert_eq!(ack.headers.bth.psn, Psn::from_masked(0xff_fff0));
    assert_eq!(b.transmit(), None);
}

fn write_gets_nak(va: u64, rkey: u32, len: usize, code: NakCode) {
    let (mut a, mut b) = pair();
    a.post_send(
        5,
        SendOp::Write {
            data: vec![0xee; len],
            va,
            rkey,
            imm: None,
        },
    )
    .unwrap();
    Link::perfect().run(&mut a, &mut b);
    assert_eq!(
        completions(&mut a)[0].status,
        Status::RemoteNak(code),
        "{va:#x} {rkey:#x} {len}"
    );
    assert!(a.is_error() && b.is_error());
    assert!(
        b.region(0).unwrap().data.iter().all(|&x| x == 0),
        "memory was touched"
    );
}

#[test]
fn rdma_write_checks_keys_and_bounds() {
    use NakCode::RemoteAccessError as E;
    write_gets_nak(REGION_VA, RKEY + 1, 8, E);
    write_gets_nak(REGION_VA - 1, RKEY, 8, E);
    write_gets_nak(REGION_VA + 8192 - 7, RKEY, 8, E);
    write_gets_nak(REGION_VA + 8192 - 256, RKEY, 1024, E); // fails at the first packet
    write_gets_nak(u64::MAX - 3, RKEY, 8, E);
    // A region without remote write permission.
    let (mut a, mut b) = pair();
    b.register(MemoryRegion {
        va: 0,
        rkey: 5,
        remote_write: false,
        data: vec![0; 64],
    });
    a.post_send(
        1,
        SendOp::Write {
            data: vec![1; 8],
            va: 0,
            rkey: 5,
            imm: None,
        },
    )
    .unwrap();
    Link::perfect().run(&mut a, &mut b);
    assert_eq!(completions(&mut a)[0].status, Status::RemoteNak(E));
    assert!(b.region(1).unwrap().data.iter().all(|&x| x == 0));
    // The last byte of the region is writable.
    let (mut a, mut b) = pair();
    a.post_send(
        1,
        SendOp::Write {
            data: vec![1; 8],
            va: REGION_VA + 8184,
            rkey: RKEY,
            imm: None,
        },
    )
    .unwrap();
    Link::perfect().run(&mut a, &mut b);
    assert_eq!(completions(&mut a)[0].status, Status::Success);
    assert_eq!(&b.region(0).unwrap().data[8184..], &[1; 8]);
}

/// Hand-built requests that break the protocol.
fn forged(opcode: Opcode, psn: u32, reth: Option<Reth>, payload: &[u8]) -> Vec<u8> {
    let mut h = TransportHeaders::new(Bth {
        opcode,
        solicited: false,
        mig_req: false,
        pad: 0,
        pkey: 0xffff,
        fecn: false,
        becn: false,
        dest_qp: B_QPN,
        ack_req: true,
        psn: Psn::from_masked(psn),
    });
    h.reth = reth;
    if opcode.layout().imm {
        h.imm = Some(rdma_passthrough::headers::ImmDt([0; 4]));
    }
    let mut out = vec![0; frame_len(opcode, payload.len()).unwrap()];
    let n = build(&endpoints(1, 2), &h, payload, &mut out).unwrap();
    out.truncate(n);
    out
}

fn nak_of(b: &mut QueuePair) -> Option<rdma_passthrough::headers::Syndrome> {
    let f = b.transmit()?;
    Some(parse(&f).unwrap().headers.aeth.unwrap().syndrome)
}

#[test]
fn protocol_violations_get_invalid_request_naks() {
    use rdma_passthrough::headers::Syndrome::Nak;
    let start = 0xff_fff0;
    let reth = Some(Reth {
        va: REGION_VA,
        rkey: RKEY,
        dma_len: 600,
    });
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "middle without a first",
            vec![forged(Opcode::SendMiddle, start, None, &[0; PMTU])],
        ),
        (
            "short first",
            vec![forged(Opcode::SendFirst, start, None, &[0; 8])],
        ),
        (
            "oversized only",
            vec![forged(Opcode::SendOnly, start, None, &[0; PMTU + 4])],
        ),
        (
            "write last longer than the RETH said",
            vec![
                forged(Opcode::RdmaWriteFirst, start, reth, &[1; PMTU]),
                forged(Opcode::RdmaWriteMiddle, start + 1, None, &[1; PMTU]),
                forged(Opcode::RdmaWriteLast, start + 2, None, &[1; 100]),
            ],
        ),
        (
            "send in the middle of a write",
            vec![
                forged(Opcode::RdmaWriteFirst, start, reth, &[1; PMTU]),
                forged(Opcode::SendLast, start + 1, None, &[1; 4]),
            ],
        ),
        (
            "read request in the middle of a write",
            vec![
                forged(Opcode::RdmaWriteFirst, start, reth, &[1; PMTU]),
                forged(Opcode::RdmaReadRequest, start + 1, reth, &[]),
            ],
        ),
        (
            "write only shorter than its RETH",
            vec![forged(Opcode::RdmaWriteOnly, start, reth, &[1; 8])],
        ),
    ];
    for (what, frames) in cases {
        let (_, mut b) = pair();
        b.post_recv(1, 8192);
        for f in &frames {
            b.receive(f);
        }
        assert_eq!(nak_of(&mut b), Some(Nak(NakCode::InvalidRequest)), "{what}");
        assert!(b.is_error(), "{what}");
        // Nothing beyond what the accepted packets carried was written.
        let written = b
            .region(0)
            .unwrap()
            .data
            .iter()
            .filter(|&&x| x != 0)
            .count();
        assert!(written <= 2 * PMTU, "{what}");
    }
}

/// A multi-packet SEND that finds no receive: one RNR NAK, the rest of the
/// message dropped without sequence NAKs (which would make the requester
/// resend at once, forever), and delivery once a receive is posted.
#[test]
fn rnr_does_not_turn_into_a_resend_storm() {
    let (mut a, mut b) = pair();
    a.post_send(
        1,
        SendOp::Send {
            data: message(4, PMTU * 3),
            imm: None,
        },
    )
    .unwrap();
    let moved = Link::perfect().run(&mut a, &mut b);
    assert_eq!(moved, 4, "three requests and one RNR NAK");
    assert_eq!(b.stats().naks_sent, 1);
    b.post_recv(2, PMTU * 3);
    Link::perfect().run_with_timers(&mut a, &mut b, 1);
    assert_eq!(
        completions(&mut b)[0].kind,
        CompletionKind::Recv {
            data: message(4, PMTU * 3),
            len: PMTU * 3,
            imm: None
        }
    );
    assert_eq!(completions(&mut a)[0].status, Status::Success);
}

#[test]
fn a_fatal_nak_flushes_the_responders_own_work() {
    let (mut a, mut b) = pair();
    b.post_recv(1, 64);
    b.post_send(
        2,
        SendOp::Send {
            data: b"mine".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    a.post_send(
        3,
        SendOp::Write {
            data: vec![1; 8],
            va: 0,
            rkey: RKEY,
            imm: None,
        },
    )
    .unwrap();
    b.receive(&a.transmit().unwrap());
    assert!(b.is_error());
    let flushed: Vec<_> = completions(&mut b)
        .into_iter()
        .map(|c| (c.wr_id, c.status))
        .collect();
    assert_eq!(flushed, [(2, Status::Flushed), (1, Status::Flushed)]);
}

#[test]
fn a_send_without_a_posted_receive_gets_rnr_nak_then_goes_through() {
    let (mut a, mut b) = pair();
    a.post_send(
        1,
        SendOp::Send {
            data: b"later".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    b.receive(&a.transmit().unwrap());
    assert_eq!(
        nak_of(&mut b),
        Some(rdma_passthrough::headers::Syndrome::RnrNak { timer: 1 })
    );
    b.post_recv(9, 64);
    let mut link = Link::perfect();
    link.run_with_timers(&mut a, &mut b, 1);
    assert_eq!(completions(&mut b)[0].wr_id, 9);
    assert_eq!(completions(&mut a)[0].status, Status::Success);
}

#[test]
fn malformed_and_misaddressed_frames_are_dropped_and_counted() {
    let (mut a, mut b) = pair();
    b.post_recv(1, 64);
    a.post_send(
        1,
        SendOp::Send {
            data: b"x".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    let good = a.transmit().unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    b.receive(&bad);
    b.receive(&good[..20]);
    assert_eq!(b.stats().malformed, 2);
    let mut other = forged(Opcode::SendOnly, 0xff_fff0, None, b"x");
    // Same frame for another QP.
    other = {
        let mut p = parse(&other).unwrap().headers;
        p.bth.dest_qp = 0x99;
        let mut out = vec![0; 128];
        let n = build(&endpoints(1, 2), &p, b"x", &mut out).unwrap();
        out.truncate(n);
        out
    };
    b.receive(&other);
    assert_eq!(b.stats().misaddressed, 1);
    assert!(completions(&mut b).is_empty());
    b.receive(&good);
    assert_eq!(completions(&mut b).len(), 1);
}

#[test]
fn acks_for_psns_never_sent_are_ignored() {
    let (mut a, mut b) = pair();
    b.post_recv(1, 64);
    a.post_send(
        1,
        SendOp::Send {
            data: b"x".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    a.post_send(
        2,
        SendOp::Send {
            data: b"y".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    b.receive(&a.transmit().unwrap());
    let ack = b.transmit().unwrap();
    // Forge an ACK for a PSN far ahead of anything A sent.
    let mut h = parse(&ack).unwrap().headers;
    h.bth.psn = h.bth.psn.add(1000);
    let mut out = vec![0; 128];
    let n = build(&endpoints(2, 1), &h, &[], &mut out).unwrap();
    a.receive(&out[..n]);
    assert_eq!(a.stats().stale_acks, 1);
    assert!(completions(&mut a).is_empty());
    a.receive(&ack);
    assert_eq!(completions(&mut a).len(), 1);
}

#[test]
fn retries_run_out_on_a_dead_link() {
    let (mut a, mut b) = pair();
    a.post_send(
        1,
        SendOp::Send {
            data: b"x".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    a.post_send(
        2,
        SendOp::Send {
            data: b"y".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    let mut link = Link::lossy(3, 100, 0, 0);
    link.run_with_timers(&mut a, &mut b, 7);
    assert!(!a.is_error());
    a.timeout();
    assert!(a.is_error());
    let done: Vec<_> = completions(&mut a).into_iter().map(|c| c.status).collect();
    assert_eq!(done, [Status::RetryExceeded, Status::Flushed]);
}

/// Many messages of every size over a link that drops, duplicates and
/// reorders: every message arrives exactly once, in order, intact, and
/// every work request completes successfully.
#[test]
fn lossy_link_delivers_everything_once_in_order() {
    for seed in 1..=12u64 {
        let (mut a, mut b) = pair();
        let mut link = Link::lossy(seed, 10, 5, 20);
        let mut rng = Rng(seed * 7919);
        let mut sent = Vec::new();
        let mut writes = Vec::new();
        for i in 0..40u64 {
            let len = (rng.next() % (PMTU as u64 * 5)) as usize;
            let data = message(i as usize, len);
            if rng.percent(30) {
                let off = (rng.next() % 4000) as usize;
                a.post_send(
                    i,
                    SendOp::Write {
                        data: data.clone(),
                        va: REGION_VA + off as u64,
                        rkey: RKEY,
                        imm: None,
                    },
                )
                .unwrap();
                writes.push((off, data));
            } else {
                b.post_recv(1000 + i, PMTU * 5);
                a.post_send(
                    i,
                    SendOp::Send {
                        data: data.clone(),
                        imm: None,
                    },
                )
                .unwrap();
                sent.push(data);
            }
            if i % 8 == 7 {
                link.run_with_timers(&mut a, &mut b, 2);
            }
        }
        link.run_with_timers(&mut a, &mut b, 200);
        let received: Vec<Vec<u8>> = completions(&mut b)
            .into_iter()
            .map(|c| {
                assert_eq!(c.status, Status::Success);
                match c.kind {
                    CompletionKind::Recv { data, .. } => data,
                    k => panic!("{k:?}"),
                }
            })
            .collect();
        assert_eq!(received, sent, "seed {seed}");
        let done: Vec<_> = completions(&mut a)
            .into_iter()
            .map(|c| (c.wr_id, c.status))
            .collect();
        let want: Vec<_> = (0..40).map(|i| (i, Status::Success)).collect();
        assert_eq!(done, want, "seed {seed}");
        // Writes land in order: replay them on a model and compare.
        let mut model = vec![0u8; 8192];
        for (off, data) in &writes {
            model[*off..off + data.len()].copy_from_slice(data);
        }
        assert_eq!(b.region(0).unwrap().data, model, "seed {seed}");
        let s = b.stats();
        assert!(
            s.duplicates + s.out_of_sequence > 0,
            "seed {seed}: the link did nothing"
        );
    }
}

#[test]
fn configuration_is_checked() {
    use rdma_passthrough::rc::ConfigError;
    let good = QpConfig {
        qpn: 1,
        dest_qpn: 2,
        pkey: 0xffff,
        pmtu: 1024,
        send_psn: Psn::ZERO,
        recv_psn: Psn::ZERO,
        retry_limit: 7,
        endpoints: endpoints(1, 2),
    };
    assert!(QueuePair::new(good).is_ok());
    assert_eq!(
        QueuePair::new(QpConfig { pmtu: 0, ..good }).err(),
        Some(ConfigError::BadPmtu(0))
    );
    assert_eq!(
        QueuePair::new(QpConfig { pmtu: 1500, ..good }).err(),
        Some(ConfigError::BadPmtu(1500))
    );
    assert_eq!(
        QueuePair::new(QpConfig {
            dest_qpn: 1 << 24,
            ..good
        })
        .err(),
        Some(ConfigError::QpnTooLarge)
    );
}

/// Requests and responses take turns, a request first after a response:
/// the pong a responder posts after taking the ping leaves before the
/// ping's acknowledgement, and under a stream of both neither waits behind
/// all of the other.
#[test]
fn requests_and_responses_take_turns() {
    let (mut a, mut b) = pair();
    let pmtu_msg = |i: usize| SendOp::Send {
        data: message(i, 8),
        imm: None,
    };
    a.post_recv(50, 8);
    b.post_recv(60, 8);
    a.post_send(1, pmtu_msg(1)).unwrap();
    let ping = a.transmit().unwrap();
    b.receive(&ping);
    // B's ACK of the ping waits; B posts the pong in answer.
    b.post_send(2, pmtu_msg(2)).unwrap();
    let first = parse_owned(b.transmit().unwrap());
    let second = parse_owned(b.transmit().unwrap());
    assert_eq!(first, Opcode::SendOnly, "the pong goes first");
    assert_eq!(second, Opcode::Acknowledge, "then the ping's ACK");
    assert!(b.transmit().is_none());

    // A READ of three path MTUs gives B three responses to send; B has
    // two SENDs of its own: they alternate, a request first (the last
    // frame B sent was a response).
    b.register_with_access(
        MemoryRegion {
            va: 0x20_0000,
            rkey: RKEY + 1,
            remote_write: false,
            data: vec![5; 3 * PMTU],
        },
        RemoteAccess {
            read: true,
            ..RemoteAccess::default()
        },
    );
    a.post_send(
        3,
        SendOp::Read {
            va: 0x20_0000,
            rkey: RKEY + 1,
            len: 3 * PMTU as u32,
        },
    )
    .unwrap();
    b.receive(&a.transmit().unwrap());
    assert!(!b.is_error());
    b.post_recv(61, 8);
    a.post_recv(51, 8);
    b.post_send(4, pmtu_msg(4)).unwrap();
    b.post_send(5, pmtu_msg(5)).unwrap();
    let order: Vec<Opcode> = std::iter::from_fn(|| b.transmit())
        .map(parse_owned)
        .collect();
    assert_eq!(
        order,
        [
            Opcode::SendOnly,
            Opcode::RdmaReadResponseFirst,
            Opcode::SendOnly,
            Opcode::RdmaReadResponseMiddle,
            Opcode::RdmaReadResponseLast,
        ]
    );
}

/// Round after round of a ping-pong, each request leaves before the
/// acknowledgement of the frame received just before it (the ping before
/// the ACK of the last pong, the pong before the ACK of its ping): a
/// request that left with no response waiting gives the responses no
/// turn, so the order does not settle into ACK first.
#[test]
fn requests_go_before_acks_round_after_round() {
    let (mut a, mut b) = pair();
    let msg = |i: usize| SendOp::Send {
        data: message(i, 8),
        imm: None,
    };
    let both =
        |q: &mut QueuePair| -> Vec<Vec<u8>> { std::iter::from_fn(|| q.transmit()).collect() };
    for round in 0..6u64 {
        a.post_recv(100 + round, 8);
        b.post_recv(200 + round, 8);
        a.post_send(round, msg(round as usize)).unwrap();
        let out = both(&mut a);
        let kinds: Vec<Opcode> = out.iter().cloned().map(parse_owned).collect();
        let want: &[Opcode] = if round == 0 {
            &[Opcode::SendOnly]
        } else {
            &[Opcode::SendOnly, Opcode::Acknowledge]
        };
        assert_eq!(
            kinds, want,
            "round {round}: A's ping, then its ACK of the last pong"
        );
        for f in &out {
            b.receive(f);
        }
        b.post_send(round, msg(round as usize + 50)).unwrap();
        let out = both(&mut b);
        let kinds: Vec<Opcode> = out.iter().cloned().map(parse_owned).collect();
        assert_eq!(
            kinds,
            [Opcode::SendOnly, Opcode::Acknowledge],
            "round {round}: B's pong, then its ACK of the ping"
        );
        for f in &out {
            a.receive(f);
        }
        let mut recvs = 0;
        while let Some(c) = a.poll_completion() {
            assert_eq!(c.status, Status::Success);
            if matches!(c.kind, CompletionKind::Recv { .. }) {
                recvs += 1;
            }
        }
        assert_eq!(recvs, 1, "round {round}: the pong arrived");
    }
    assert_eq!(a.stats().retransmitted + b.stats().retransmitted, 0);
}

fn parse_owned(f: Vec<u8>) -> Opcode {
    parse(&f).unwrap().headers.bth.opcode
}

/// One message each way at a time: A's request frames reach B, B's
/// responses reach A. Returns the AckReq bit of each request A sent and
/// how many frames B sent back.
fn exchange(a: &mut QueuePair, b: &mut QueuePair) -> (Vec<bool>, usize) {
    let mut asked = Vec::new();
    while let Some(f) = a.transmit() {
        asked.push(parse(&f).unwrap().headers.bth.ack_req);
        b.receive(&f);
    }
    let mut back = 0;
    while let Some(f) = b.transmit() {
        a.receive(&f);
        back += 1;
    }
    (asked, back)
}

fn small_send(i: u64) -> SendOp {
    SendOp::Send {
        data: vec![i as u8; 8],
        imm: None,
    }
}

/// Messages posted unsignaled ask for an ACK every `interval`-th one (and
/// a signaled one always asks): the responder answers only those, each
/// ACK covers every message before it, and every work request, signaled
/// or not, completes successfully, in order.
#[test]
fn unsignaled_messages_share_one_ack() {
    let (mut a, mut b) = pair();
    a.set_ack_req_interval(4);
    let mut asked = Vec::new();
    let mut acks = 0;
    for i in 0..11u64 {
        b.post_recv(100 + i, 64);
        if i == 10 {
            a.post_send(i, small_send(i)).unwrap();
        } else {
            a.post_send_unsignaled(i, small_send(i)).unwrap();
        }
        let (r, back) = exchange(&mut a, &mut b);
        asked.extend(r);
        acks += back;
    }
    let want: Vec<bool> = (0..11).map(|i| i == 3 || i == 7 || i == 10).collect();
    assert_eq!(asked, want);
    assert_eq!((acks, b.stats().acks_sent), (3, 3));
    let done: Vec<_> = completions(&mut a)
        .into_iter()
        .map(|c| (c.wr_id, c.status))
        .collect();
    let want: Vec<_> = (0..11).map(|i| (i, Status::Success)).collect();
    assert_eq!(done, want);
    assert_eq!(completions(&mut b).len(), 11);
    assert_eq!(a.next_deadline(), None);
    assert_eq!(a.stats().retransmitted, 0);
}

/// The ACK that covers several unsignaled messages is lost: the local ACK
/// timer resends them, the responder answers the duplicates with one ACK
/// without delivering anything twice, and every work request completes.
#[test]
fn a_lost_coalesced_ack_is_recovered_by_the_resend() {
    let (mut a, mut b) = pair();
    a.set_ack_req_interval(8);
    for i in 0..4u64 {
        b.post_recv(100 + i, 64);
        if i == 3 {
            a.post_send(i, small_send(i)).unwrap();
        } else {
            a.post_send_unsignaled(i, small_send(i)).unwrap();
        }
    }
    while let Some(f) = a.transmit() {
        b.receive(&f);
    }
    // The one ACK (of the signaled fourth message) is lost.
    let lost: Vec<_> = std::iter::from_fn(|| b.transmit()).collect();
    assert_eq!(lost.len(), 1);
    assert!(completions(&mut a).is_empty());
    assert_eq!(completions(&mut b).len(), 4);
    a.timeout();
    let (asked, back) = exchange(&mut a, &mut b);
    assert_eq!(asked, [false, false, false, true]);
    assert_eq!(back, 1);
    assert_eq!(a.stats().retransmitted, 4);
    assert_eq!(b.stats().duplicates, 4);
    assert!(completions(&mut b).is_empty(), "delivered twice");
    let done: Vec<_> = completions(&mut a).into_iter().map(|c| c.wr_id).collect();
    assert_eq!(done, [0, 1, 2, 3]);
    assert_eq!(a.next_deadline(), None);
}

/// Unsignaled messages with none after them asking: the responder sends
/// nothing, the local ACK timer runs, and its resend asks for an ACK on
/// the last packet (the bit set and the ICRC written again), which the
/// responder answers.
#[test]
fn an_unsignaled_tail_is_acknowledged_after_the_timeout() {
    let (mut a, mut b) = pair();
    a.set_ack_req_interval(8);
    a.set_ack_timeout_ns(1_000);
    for i in 0..3u64 {
        b.post_recv(100 + i, 64);
        a.post_send_unsignaled(i, small_send(i)).unwrap();
    }
    let (asked, back) = exchange(&mut a, &mut b);
    assert_eq!(asked, [false, false, false]);
    assert_eq!(back, 0);
    assert_eq!(completions(&mut b).len(), 3);
    let deadline = a.next_deadline().expect("the ACK timer runs");
    a.on_time(deadline);
    let (asked, back) = exchange(&mut a, &mut b);
    assert_eq!(asked, [false, false, true]);
    assert_eq!(back, 1);
    assert_eq!(completions(&mut a).len(), 3);
    assert!(completions(&mut b).is_empty());
    assert_eq!(a.next_deadline(), None);
}

/// The drop, duplicate and reorder test with most messages posted
/// unsignaled (an ACK asked for every third): every message still arrives
/// once, in order, intact, and every work request completes.
#[test]
fn lossy_link_with_coalesced_acks_delivers_everything_once_in_order() {
    for seed in 1..=12u64 {
        let (mut a, mut b) = pair();
        a.set_ack_req_interval(3);
        let mut link = Link::lossy(seed, 10, 5, 20);
        let mut rng = Rng(seed * 104_729);
        let mut sent = Vec::new();
        for i in 0..40u64 {
            let len = (rng.next() % (PMTU as u64 * 3)) as usize;
            let data = message(i as usize, len);
            b.post_recv(1000 + i, PMTU * 3);
            let op = SendOp::Send {
                data: data.clone(),
                imm: None,
            };
            if rng.percent(20) {
                a.post_send(i, op).unwrap();
            } else {
                a.post_send_unsignaled(i, op).unwrap();
            }
            sent.push(data);
            if i % 8 == 7 {
                link.run_with_timers(&mut a, &mut b, 2);
            }
        }
        link.run_with_timers(&mut a, &mut b, 200);
        let received: Vec<Vec<u8>> = completions(&mut b)
            .into_iter()
            .map(|c| match c.kind {
                CompletionKind::Recv { data, .. } if c.status == Status::Success => data,
                k => panic!("{:?} {k:?}", c.status),
            })
            .collect();
        assert_eq!(received, sent, "seed {seed}");
        let done: Vec<_> = completions(&mut a)
            .into_iter()
            .map(|c| (c.wr_id, c.status))
            .collect();
        let want: Vec<_> = (0..40).map(|i| (i, Status::Success)).collect();
        assert_eq!(done, want, "seed {seed}");
        assert!(!a.is_error() && !b.is_error());
    }
}
