//! RDMA READ, atomics, RNR NAK timers and retry counts, and the
//! time-driven local ACK timer of the reliable-connected transport.

use rdma_passthrough::headers::{NakCode, Syndrome};
use rdma_passthrough::opcode::Opcode;
use rdma_passthrough::packet::{parse, Endpoints};
use rdma_passthrough::psn::Psn;
use rdma_passthrough::rc::{
    rnr_timer_ns, Completion, CompletionKind, MemoryRegion, QpConfig, QpTimers, QueuePair,
    RemoteAccess, SendOp, Status,
};

const A_QPN: u32 = 0x11;
const B_QPN: u32 = 0x22;
const RKEY: u32 = 0x77;
const VA: u64 = 0x10_0000;
const PMTU: usize = 256;
const ALL: RemoteAccess = RemoteAccess {
    write: true,
    read: true,
    atomic: true,
};

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

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + 5) as u8).collect()
}

/// A pair whose PSNs start at `a_psn` (A's sends) and `b_psn`; B has an
/// 8 KiB region with the given remote access, holding `pattern`.
fn pair_at(a_psn: u32, b_psn: u32, pmtu: usize, access: RemoteAccess) -> (QueuePair, QueuePair) {
    let (a_psn, b_psn) = (Psn::from_masked(a_psn), Psn::from_masked(b_psn));
    let cfg = |qpn, dest, send: Psn, recv: Psn, from, to| QpConfig {
        qpn,
        dest_qpn: dest,
        pkey: 0xffff,
        pmtu,
        send_psn: send,
        recv_psn: recv,
        retry_limit: 7,
        endpoints: endpoints(from, to),
    };
    let a = QueuePair::new(cfg(A_QPN, B_QPN, a_psn, b_psn, 1, 2)).unwrap();
    let mut b = QueuePair::new(cfg(B_QPN, A_QPN, b_psn, a_psn, 2, 1)).unwrap();
    b.register_with_access(
        MemoryRegion {
            va: VA,
            rkey: RKEY,
            remote_write: false,
            data: pattern(8192),
        },
        access,
    );
    (a, b)
}

fn pair() -> (QueuePair, QueuePair) {
    pair_at(0xff_fffe, 0xff_fff0, PMTU, ALL)
}

/// Moves frames both ways until idle; returns how many moved.
fn run(a: &mut QueuePair, b: &mut QueuePair) -> usize {
    let mut moved = 0;
    loop {
        let mut any = false;
        while let Some(f) = a.transmit() {
            b.receive(&f);
            moved += 1;
            any = true;
        }
        while let Some(f) = b.transmit() {
            a.receive(&f);
            moved += 1;
            any = true;
        }
        if !any {
            return moved;
        }
    }
}

fn drain(qp: &mut QueuePair) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| qp.transmit()).collect()
}

fn completions(qp: &mut QueuePair) -> Vec<Completion> {
    std::iter::from_fn(|| qp.poll_completion()).collect()
}

fn word(qp: &QueuePair, offset: usize) -> u64 {
    let d = &qp.region(0).unwrap().data;
    u64::from_le_bytes(d[offset..offset + 8].try_into().unwrap())
}

fn opcode_of(frame: &[u8]) -> Opcode {
    parse(frame).unwrap().headers.bth.opcode
}

#[test]
fn read_spanning_several_segments_crosses_the_psn_wrap() {
    let (mut a, mut b) = pair();
    let len = 3 * PMTU + 10;
    a.post_send(
        7,
        SendOp::Read {
            va: VA + 100,
            rkey: RKEY,
            len: len as u32,
        },
    )
    .unwrap();
    let req = drain(&mut a);
    assert_eq!(req.len(), 1, "one READ request");
    b.receive(&req[0]);
    let responses = drain(&mut b);
    let ops: Vec<_> = responses.iter().map(|f| opcode_of(f)).collect();
    assert_eq!(
        ops,
        [
            Opcode::RdmaReadResponseFirst,
            Opcode::RdmaReadResponseMiddle,
            Opcode::RdmaReadResponseMiddle,
            Opcode::RdmaReadResponseLast
        ]
    );
    let psns: Vec<u32> = responses
        .iter()
        .map(|f| parse(f).unwrap().headers.bth.psn.value())
        .collect();
    assert_eq!(psns, [0xff_fffe, 0xff_ffff, 0, 1]);
    for f in &responses {
        a.receive(f);
    }
    let done = completions(&mut a);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].wr_id, 7);
    assert_eq!(done[0].status, Status::Success);
    assert_eq!(
        done[0].kind,
        CompletionKind::Read {
            data: pattern(8192)[100..100 + len].to_vec()
        }
    );
    assert_eq!(b.stats().reads_served, 1);
    // The READ took four PSNs on both sides: a SEND after it is in sequence.
    b.post_recv(1, 64);
    a.post_send(
        8,
        SendOp::Send {
            data: b"next".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    run(&mut a, &mut b);
    assert_eq!(completions(&mut b)[0].status, Status::Success);
    assert_eq!(completions(&mut a)[0].kind, CompletionKind::Send);
}

#[test]
fn zero_length_read_gets_one_empty_response() {
    let (mut a, mut b) = pair();
    a.post_send(
        1,
        SendOp::Read {
            va: 0,
            rkey: 0,
            len: 0,
        },
    )
    .unwrap();
    assert_eq!(run(&mut a, &mut b), 2);
    assert_eq!(
        completions(&mut a)[0].kind,
        CompletionKind::Read { data: vec![] }
    );
}

/// The second of four responses is lost: the requester re-issues the READ
/// for the rest from the missing PSN, the responder executes it again,
/// and the data arrive whole.
#[test]
fn a_lost_read_response_reissues_the_rest() {
    let (mut a, mut b) = pair();
    let len = 4 * PMTU;
    a.post_send(
        3,
        SendOp::Read {
            va: VA,
            rkey: RKEY,
            len: len as u32,
        },
    )
    .unwrap();
    b.receive(&drain(&mut a)[0]);
    let responses = drain(&mut b);
    assert_eq!(responses.len(), 4);
    a.receive(&responses[0]);
    a.receive(&responses[2]); // the gap: a re-issue
    a.receive(&responses[3]); // once per gap
    let again = drain(&mut a);
    assert_eq!(again.len(), 1, "one re-issued READ");
    let h = parse(&again[0]).unwrap().headers;
    assert_eq!(h.bth.opcode, Opcode::RdmaReadRequest);
    assert_eq!(h.bth.psn, Psn::from_masked(0xff_ffff));
    let reth = h.reth.unwrap();
    assert_eq!((reth.va, reth.dma_len), (VA + PMTU as u64, 3 * PMTU as u32));
    assert_eq!(a.stats().implied_naks, 1);
    b.receive(&again[0]);
    let second = drain(&mut b);
    let ops: Vec<_> = second.iter().map(|f| opcode_of(f)).collect();
    assert_eq!(
        ops,
        [
            Opcode::RdmaReadResponseFirst,
            Opcode::RdmaReadResponseMiddle,
            Opcode::RdmaReadResponseLast
        ]
    );
    // The requester expects "middle" at that PSN; the re-executed READ
    // numbers its own first packet "first": accept either by what the
    // spec says is sent back (a fresh READ from that PSN).
    for f in &second {
        a.receive(f);
    }
    let done = completions(&mut a);
    assert_eq!(done.len(), 1, "{:?}", a.stats());
    assert_eq!(
        done[0].kind,
        CompletionKind::Read {
            data: pattern(8192)[..len].to_vec()
        }
    );
}

#[test]
fn a_lost_read_response_recovers_by_timer() {
    let (mut a, mut b) = pair();
    a.set_timers(QpTimers {
        timeout: 10,
        retry_cnt: 3,
        rnr_retry: 7,
        min_rnr_timer: 1,
    })
    .unwrap();
    a.on_time(1_000);
    a.post_send(
        3,
        SendOp::Read {
            va: VA,
            rkey: RKEY,
            len: 2 * PMTU as u32,
        },
    )
    .unwrap();
    assert_eq!(a.next_deadline(), Some(1_000 + 4096 * 1024));
    b.receive(&drain(&mut a)[0]);
    let responses = drain(&mut b);
    a.receive(&responses[0]); // the last response is lost
    a.on_time(1_000 + 4096 * 1024 - 1);
    assert!(a.transmit().is_none(), "not before the deadline");
    a.on_time(1_000 + 4096 * 1024);
    assert_eq!(a.stats().timeouts, 1);
    run(&mut a, &mut b);
    assert_eq!(
        completions(&mut a)[0].kind,
        CompletionKind::Read {
            data: pattern(8192)[..2 * PMTU].to_vec()
        }
    );
    assert_eq!(a.next_deadline(), None, "nothing outstanding, no timer");
}

#[test]
fn a_read_response_acknowledges_earlier_requests() {
    let (mut a, mut b) = pair();
    b.post_recv(1, 64);
    a.post_send(
        1,
        SendOp::Send {
            data: b"first".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    a.post_send(
        2,
        SendOp::Read {
            va: VA,
            rkey: RKEY,
            len: 8,
        },
    )
    .unwrap();
    for f in drain(&mut a) {
        b.receive(&f);
    }
    let out = drain(&mut b);
    assert_eq!(out.len(), 2, "the SEND's ACK and the READ response");
    a.receive(&out[1]); // the ACK is lost
    let done: Vec<_> = completions(&mut a)
        .into_iter()
        .map(|c| (c.wr_id, c.status))
        .collect();
    assert_eq!(done, [(1, Status::Success), (2, Status::Success)]);
}

fn read_fails(access: RemoteAccess, va: u64, rkey: u32, len: u32) {
    let (mut a, mut b) = pair_at(5, 9, PMTU, access);
    a.post_send(1, SendOp::Read { va, rkey, len }).unwrap();
    run(&mut a, &mut b);
    let done = completions(&mut a);
    assert_eq!(
        done[0].status,
        Status::RemoteNak(NakCode::RemoteAccessError),
        "{va:#x} {rkey} {len}"
    );
    assert!(a.is_error() && b.is_error());
}

#[test]
fn read_checks_key_permission_and_bounds() {
    let no_read = RemoteAccess { read: false, ..ALL };
    read_fails(no_read, VA, RKEY, 8);
    read_fails(ALL, VA, RKEY + 1, 8);
    read_fails(ALL, VA - 1, RKEY, 8);
    read_fails(ALL, VA + 8192 - 7, RKEY, 8);
    read_fails(ALL, u64::MAX - 3, RKEY, 8);
    read_fails(ALL, VA, RKEY, 0x4000_0000);
    // More response packets than a READ may reserve: refused at posting.
    let (mut a, _) = pair();
    assert_eq!(
        a.post_send(
            1,
            SendOp::Read {
                va: VA,
                rkey: RKEY,
                len: 0x4000_0001
            }
        ),
        Err(rdma_passthrough::rc::PostError::TooLong)
    );
}

#[test]
fn fetch_add_and_compare_swap() {
    let (mut a, mut b) = pair();
    let before = word(&b, 16);
    a.post_send(
        1,
        SendOp::FetchAdd {
            va: VA + 16,
            rkey: RKEY,
            add: 5,
        },
    )
    .unwrap();
    a.post_send(
        2,
        SendOp::CompareSwap {
            va: VA + 16,
            rkey: RKEY,
            compare: 1,
            swap: 9,
        },
    )
    .unwrap();
    a.post_send(
        3,
        SendOp::CompareSwap {
            va: VA + 16,
            rkey: RKEY,
            compare: before.wrapping_add(5),
            swap: 42,
        },
    )
    .unwrap();
    run(&mut a, &mut b);
    let done: Vec<_> = completions(&mut a)
        .into_iter()
        .map(|c| (c.wr_id, c.kind))
        .collect();
    assert_eq!(
        done,
        [
            (1, CompletionKind::Atomic { orig: before }),
            (
                2,
                CompletionKind::Atomic {
                    orig: before.wrapping_add(5)
                }
            ),
            (
                3,
                CompletionKind::Atomic {
                    orig: before.wrapping_add(5)
                }
            ),
        ]
    );
    assert_eq!(word(&b, 16), 42);
    assert_eq!(b.stats().atomics_executed, 3);
}

/// A duplicate atomic request is answered from the replay cache with the
/// original value and not executed again.
#[test]
fn duplicate_atomics_are_not_executed_twice() {
    let (mut a, mut b) = pair();
    let before = word(&b, 0);
    a.post_send(
        1,
        SendOp::FetchAdd {
            va: VA,
            rkey: RKEY,
            add: 1,
        },
    )
    .unwrap();
    let req = drain(&mut a).remove(0);
    b.receive(&req);
    let first = drain(&mut b);
    b.receive(&req); // the requester resent it
    let replay = drain(&mut b);
    assert_eq!(
        first, replay,
        "the same acknowledge, the same original value"
    );
    assert_eq!(word(&b, 0), before.wrapping_add(1), "added once");
    assert_eq!(b.stats().atomic_replays, 1);
    assert_eq!(b.stats().atomics_executed, 1);
    a.receive(&first[0]);
    a.receive(&replay[0]); // stale now
    let done = completions(&mut a);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].kind, CompletionKind::Atomic { orig: before });
    assert_eq!(a.stats().stale_acks, 1);
}

#[test]
fn atomics_check_alignment_and_permission() {
    let (mut a, mut b) = pair();
    a.post_send(
        1,
        SendOp::FetchAdd {
            va: VA + 4,
            rkey: RKEY,
            add: 1,
        },
    )
    .unwrap();
    run(&mut a, &mut b);
    assert_eq!(
        completions(&mut a)[0].status,
        Status::RemoteNak(NakCode::InvalidRequest)
    );
    let (mut a, mut b) = pair_at(
        0,
        0,
        PMTU,
        RemoteAccess {
            atomic: false,
            ..ALL
        },
    );
    let before = word(&b, 0);
    a.post_send(
        1,
        SendOp::CompareSwap {
            va: VA,
            rkey: RKEY,
            compare: before,
            swap: 1,
        },
    )
    .unwrap();
    run(&mut a, &mut b);
    assert_eq!(
        completions(&mut a)[0].status,
        Status::RemoteNak(NakCode::RemoteAccessError)
    );
    assert_eq!(word(&b, 0), before);
    let (mut a, mut b) = pair();
    a.post_send(
        1,
        SendOp::FetchAdd {
            va: VA + 8192 - 8,
            rkey: RKEY,
            add: 1,
        },
    )
    .unwrap();
    a.post_send(
        2,
        SendOp::FetchAdd {
            va: VA + 8192,
            rkey: RKEY,
            add: 1,
        },
    )
    .unwrap();
    run(&mut a, &mut b);
    let st: Vec<_> = completions(&mut a).into_iter().map(|c| c.status).collect();
    assert_eq!(
        st,
        [
            Status::Success,
            Status::RemoteNak(NakCode::RemoteAccessError)
        ]
    );
}

/// With max_rd_atomic 1 the second READ waits for the first to complete,
/// and the SEND posted after it waits too (the send queue is in order).
#[test]
fn max_rd_atomic_limits_the_requester() {
    let (mut a, mut b) = pair();
    a.set_rd_atomic(1, 16).unwrap();
    b.post_recv(9, 64);
    a.post_send(
        1,
        SendOp::Read {
            va: VA,
            rkey: RKEY,
            len: 8,
        },
    )
    .unwrap();
    a.post_send(
        2,
        SendOp::Read {
            va: VA + 8,
            rkey: RKEY,
            len: 8,
        },
    )
    .unwrap();
    a.post_send(
        3,
        SendOp::Send {
            data: b"after".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    let first = drain(&mut a);
    assert_eq!(first.len(), 1);
    assert_eq!(a.send_queue_len(), 2);
    b.receive(&first[0]);
    run(&mut a, &mut b);
    let ids: Vec<_> = completions(&mut a)
        .into_iter()
        .map(|c| (c.wr_id, c.status))
        .collect();
    assert_eq!(
        ids,
        [
            (1, Status::Success),
            (2, Status::Success),
            (3, Status::Success)
        ]
    );
    assert_eq!(a.set_rd_atomic(0, 0), Ok(()));
    assert_eq!(
        a.post_send(
            4,
            SendOp::Read {
                va: VA,
                rkey: RKEY,
                len: 8
            }
        ),
        Err(rdma_passthrough::rc::PostError::RdAtomicDisabled)
    );
}

/// A requester that exceeds the responder's max_dest_rd_atomic gets an
/// invalid request NAK.
#[test]
fn max_dest_rd_atomic_limits_the_responder() {
    let (mut a, mut b) = pair();
    a.set_rd_atomic(4, 16).unwrap();
    b.set_rd_atomic(16, 1).unwrap();
    a.post_send(
        1,
        SendOp::Read {
            va: VA,
            rkey: RKEY,
            len: 8,
        },
    )
    .unwrap();
    a.post_send(
        2,
        SendOp::Read {
            va: VA,
            rkey: RKEY,
            len: 8,
        },
    )
    .unwrap();
    for f in drain(&mut a) {
        b.receive(&f);
    }
    let out = drain(&mut b);
    assert_eq!(opcode_of(&out[0]), Opcode::RdmaReadResponseOnly);
    let nak = parse(&out[1]).unwrap().headers.aeth.unwrap().syndrome;
    assert_eq!(nak, Syndrome::Nak(NakCode::InvalidRequest));
    assert!(b.is_error());
}

/// A duplicate READ is executed again from its PSN; one outside every
/// remembered READ is not.
#[test]
fn duplicate_reads_are_executed_again() {
    let (mut a, mut b) = pair();
    a.post_send(
        1,
        SendOp::Read {
            va: VA,
            rkey: RKEY,
            len: 2 * PMTU as u32,
        },
    )
    .unwrap();
    let req = drain(&mut a).remove(0);
    b.receive(&req);
    let first = drain(&mut b);
    b.receive(&req);
    let again = drain(&mut b);
    assert_eq!(first, again);
    assert_eq!(b.stats().reads_served, 2);
}

#[test]
fn rnr_timer_table() {
    assert_eq!(rnr_timer_ns(0), 655_360_000);
    assert_eq!(rnr_timer_ns(1), 10_000);
    assert_eq!(rnr_timer_ns(14), 1_280_000);
    assert_eq!(rnr_timer_ns(31), 491_520_000);
    assert_eq!(rnr_timer_ns(32 + 1), 10_000, "five bits");
}

/// An RNR NAK holds the requester for the timer it names, then the SEND
/// goes again; each RNR NAK costs one RNR retry, and when they run out the
/// request fails with "RNR retry exceeded".
#[test]
fn rnr_retries_run_out() {
    let (mut a, mut b) = pair();
    a.set_timers(QpTimers {
        timeout: 14,
        retry_cnt: 7,
        rnr_retry: 2,
        min_rnr_timer: 1,
    })
    .unwrap();
    b.set_timers(QpTimers {
        timeout: 0,
        retry_cnt: 7,
        rnr_retry: 7,
        min_rnr_timer: 14,
    })
    .unwrap();
    let mut now = 10_000u64;
    a.on_time(now);
    a.post_send(
        1,
        SendOp::Send {
            data: b"nobody".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    for round in 0..3 {
        run(&mut a, &mut b);
        assert_eq!(a.stats().rnr_naks, round + 1);
        if round == 2 {
            break;
        }
        // Held for 1.28 ms, not a moment less.
        assert_eq!(a.next_deadline(), Some(now + 1_280_000));
        a.on_time(now + 1_279_999);
        assert!(a.transmit().is_none());
        now += 1_280_000;
        a.on_time(now);
    }
    assert!(a.is_error());
    assert_eq!(completions(&mut a)[0].status, Status::RnrRetryExceeded);
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn rnr_retry_7_is_infinite_and_a_receive_ends_the_wait() {
    let (mut a, mut b) = pair();
    a.set_timers(QpTimers {
        timeout: 0,
        retry_cnt: 0,
        rnr_retry: 7,
        min_rnr_timer: 1,
    })
    .unwrap();
    a.post_send(
        1,
        SendOp::Send {
            data: b"x".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    let mut now = 0;
    for _ in 0..20 {
        run(&mut a, &mut b);
        now += rnr_timer_ns(1);
        a.on_time(now);
    }
    assert!(!a.is_error());
    assert_eq!(a.stats().rnr_naks, 20);
    b.post_recv(5, 8);
    run(&mut a, &mut b);
    assert_eq!(completions(&mut a)[0].status, Status::Success);
    assert_eq!(completions(&mut b)[0].wr_id, 5);
}

#[test]
fn the_local_ack_timer_counts_retries() {
    let (mut a, _b) = pair();
    a.set_timers(QpTimers {
        timeout: 1,
        retry_cnt: 2,
        rnr_retry: 7,
        min_rnr_timer: 1,
    })
    .unwrap();
    assert_eq!(a.timers().ack_timeout_ns(), Some(8192));
    a.post_send(
        1,
        SendOp::Send {
            data: b"lost".to_vec(),
            imm: None,
        },
    )
    .unwrap();
    assert_eq!(drain(&mut a).len(), 1);
    let mut now = 0;
    for retry in 1..=2 {
        now = a.next_deadline().unwrap();
        a.on_time(now);
        assert_eq!(drain(&mut a).len(), 1, "resent at retry {retry}");
        assert!(!a.is_error());
    }
    assert_eq!(a.next_deadline(), Some(now + 8192));
    a.on_time(now + 8192);
    assert!(a.is_error());
    assert_eq!(completions(&mut a)[0].status, Status::RetryExceeded);
    assert!(QpTimers {
        timeout: 32,
        retry_cnt: 0,
        rnr_retry: 0,
        min_rnr_timer: 0
    }
    .ack_timeout_ns()
    .is_none());
    assert!(a
        .set_timers(QpTimers {
            timeout: 1,
            retry_cnt: 8,
            rnr_retry: 7,
            min_rnr_timer: 1
        })
        .is_err());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// A READ of any length from any starting PSN (the 24-bit wrap
        /// included) gets consecutive response PSNs and its bytes, and the
        /// next request follows right after its last response PSN.
        #[test]
        fn reads_anywhere_in_the_psn_space(
            start in prop_oneof![0xff_ff00u32..0x100_0000, 0u32..0x100_0000],
            off in 0usize..4096,
            len in 0usize..4096,
            pmtu_log in 8u32..=12,
        ) {
            let pmtu = 1usize << pmtu_log;
            let (mut a, mut b) = pair_at(start, 3, pmtu, ALL);
            a.post_send(1, SendOp::Read { va: VA + off as u64, rkey: RKEY, len: len as u32 }).unwrap();
            b.receive(&drain(&mut a)[0]);
            let responses = drain(&mut b);
            prop_assert_eq!(responses.len(), len.div_ceil(pmtu).max(1));
            for (i, f) in responses.iter().enumerate() {
                prop_assert_eq!(parse(f).unwrap().headers.bth.psn, Psn::from_masked(start).add(i as u32));
                a.receive(f);
            }
            let done = completions(&mut a);
            prop_assert_eq!(&done[0].kind, &CompletionKind::Read { data: pattern(8192)[off..off + len].to_vec() });
            b.post_recv(2, 8);
            a.post_send(3, SendOp::Send { data: vec![1], imm: None }).unwrap();
            let next = drain(&mut a);
            prop_assert_eq!(
                parse(&next[0]).unwrap().headers.bth.psn,
                Psn::from_masked(start).add(responses.len() as u32)
            );
            b.receive(&next[0]);
            prop_assert_eq!(completions(&mut b).len(), 1);
        }
    }
}

/// Zero-length WRITEs and READs name no memory: their keys are not checked
/// and nothing is touched.
#[test]
fn zero_length_transfers_skip_the_key_check() {
    let (mut a, mut b) = pair_at(0, 0, PMTU, RemoteAccess::default());
    a.post_send(
        1,
        SendOp::Write {
            data: vec![],
            va: 0,
            rkey: 0xbad,
            imm: None,
        },
    )
    .unwrap();
    a.post_send(
        2,
        SendOp::Read {
            va: 0,
            rkey: 0xbad,
            len: 0,
        },
    )
    .unwrap();
    run(&mut a, &mut b);
    let st: Vec<_> = completions(&mut a).into_iter().map(|c| c.status).collect();
    assert_eq!(st, [Status::Success, Status::Success]);
    assert_eq!(b.region(0).unwrap().data, pattern(8192));
}
