//! A reliable-connected queue pair fed fuzzer-chosen requests and
//! responses (any opcode, PSNs around the expected one and across the
//! 24-bit wrap, remote keys, addresses and lengths, READ response
//! payloads, atomic acknowledges, RNR NAK timers, wrong QPs), raw frames,
//! posted SENDs and WRITEs (signaled, or unsignaled with any interval
//! between the ones that ask for an ACK), READs and atomics, time and
//! timer expiries, and changing limits. Never panics, never loops, RDMA WRITEs land only
//! inside the writable region, atomics change only the atomic region, and
//! the guard region no key may touch stays as it was.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rdma_passthrough::headers::{
    Aeth, AtomicAckEth, AtomicEth, Bth, ImmDt, Ieth, NakCode, Reth, Syndrome,
};
use rdma_passthrough::opcode::Opcode;
use rdma_passthrough::packet::{build, frame_len, Endpoints, TransportHeaders};
use rdma_passthrough::psn::Psn;
use rdma_passthrough::rc::{MemoryRegion, QpConfig, QpTimers, QueuePair, RemoteAccess, SendOp};

const QPN: u32 = 0x22;
const PEER: u32 = 0x11;
const RKEY: u32 = 7;
const ATOMIC_RKEY: u32 = 8;
const ATOMIC_VA: u64 = 0x8000;
const VA: u64 = 0x1000;
const REGION: usize = 2048;
const START: u32 = 0xff_fff8;

#[derive(Arbitrary, Debug)]
enum Step {
    Packet {
        opcode: u8,
        psn_offset: i8,
        wrong_qp: bool,
        ack_req: bool,
        va_offset: i16,
        key: u8,
        dma_len: u16,
        syndrome: u8,
        payload_len: u16,
    },
    Raw(Vec<u8>),
    PostRecv(u16),
    PostSend { len: u16, write: bool, signaled: bool },
    AckReqInterval(u8),
    PostRead { len: u16, va_offset: i16 },
    PostAtomic { cas: bool, va_offset: i8 },
    Limits { max_rd_atomic: u8, max_dest_rd_atomic: u8 },
    Timers { timeout: u8, retry_cnt: u8, rnr_retry: u8, min_rnr_timer: u8 },
    Time(u32),
    Timeout,
    Drain,
}

fn endpoints() -> Endpoints {
    Endpoints {
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_mac: [2, 0, 0, 0, 0, 1],
        src_ip: [10, 0, 0, 1],
        dst_ip: [10, 0, 0, 2],
        src_port: 0xc000,
        tos: 0,
        ttl: 64,
        ip_id: 0,
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut qp = QueuePair::new(QpConfig {
        qpn: QPN,
        dest_qpn: PEER,
        pkey: 0xffff,
        pmtu: 256,
        send_psn: Psn::from_masked(START),
        recv_psn: Psn::from_masked(START),
        retry_limit: 3,
        endpoints: endpoints(),
    })
    .expect("a valid configuration");
    // The region sits between two guard regions no key names.
    let canary = 0x5a;
    qp.register(MemoryRegion { va: 0, rkey: 0xdead, remote_write: false, data: vec![canary; 64] });
    let write_read = RemoteAccess { write: true, read: true, atomic: false };
    let region = qp.register_with_access(
        MemoryRegion { va: VA, rkey: RKEY, remote_write: true, data: vec![0; REGION] },
        write_read,
    );
    let atomic = RemoteAccess { write: false, read: true, atomic: true };
    let atomics = qp.register_with_access(
        MemoryRegion { va: ATOMIC_VA, rkey: ATOMIC_RKEY, remote_write: false, data: vec![0; 64] },
        atomic,
    );
    let mut now = 0u64;
    for step in steps.into_iter().take(256) {
        match step {
            Step::Packet {
                opcode,
                psn_offset,
                wrong_qp,
                ack_req,
                va_offset,
                key,
                dma_len,
                syndrome,
                payload_len,
            } => {
                let Some(opcode) = Opcode::from_u8(opcode % 0x18) else { continue };
                let l = opcode.layout();
                let psn = Psn::from_masked(START).add(psn_offset as i32 as u32);
                let mut h = TransportHeaders::new(Bth {
                    opcode,
                    solicited: false,
                    mig_req: false,
                    pad: 0,
                    pkey: 0xffff,
                    fecn: false,
                    becn: false,
                    dest_qp: if wrong_qp { QPN + 1 } else { QPN },
                    ack_req,
                    psn,
                });
                let (rkey, base) = match key % 4 {
                    0 => (0xdead, 0),
                    1 | 2 => (RKEY, VA),
                    _ => (ATOMIC_RKEY, ATOMIC_VA),
                };
                let va = base.wrapping_add(va_offset as i64 as u64);
                if l.reth {
                    h.reth = Some(Reth { va, rkey, dma_len: u32::from(dma_len) });
                }
                if l.atomic_eth {
                    h.atomic_eth = Some(AtomicEth { va, rkey, swap_add: 1, compare: 2 });
                }
                if l.aeth {
                    let s = Syndrome::decode(syndrome & 0x7f)
                        .unwrap_or(Syndrome::Nak(NakCode::PsnSequenceError));
                    h.aeth = Some(Aeth { syndrome: s, msn: 0 });
                }
                if l.atomic_ack_eth {
                    h.atomic_ack_eth = Some(AtomicAckEth { orig: u64::from(dma_len) });
                }
                if l.imm {
                    h.imm = Some(ImmDt([1, 2, 3, 4]));
                }
                if l.ieth {
                    h.ieth = Some(Ieth { rkey });
                }
                let mut len = if l.payload { usize::from(payload_len % 600) } else { 0 };
                if !l.position.ends_message() {
                    len &= !3;
                }
                let payload = vec![0xa5u8; len];
                let mut out = vec![0u8; frame_len(opcode, len).unwrap_or(0)];
                if let Ok(n) = build(&endpoints(), &h, &payload, &mut out) {
                    qp.receive(&out[..n]);
                }
            }
            Step::Raw(bytes) => qp.receive(&bytes),
            Step::PostRecv(len) => qp.post_recv(0, usize::from(len)),
            Step::PostSend { len, write, signaled } => {
                let data = vec![3u8; usize::from(len % 2048)];
                let op = if write {
                    SendOp::Write { data, va: 0, rkey: 1, imm: None }
                } else {
                    SendOp::Send { data, imm: None }
                };
                let _ = if signaled { qp.post_send(1, op) } else { qp.post_send_unsignaled(1, op) };
            }
            Step::AckReqInterval(n) => qp.set_ack_req_interval(u32::from(n % 32)),
            Step::PostRead { len, va_offset } => {
                let va = VA.wrapping_add(va_offset as i64 as u64);
                let _ = qp.post_send(2, SendOp::Read { va, rkey: 9, len: u32::from(len) });
            }
            Step::PostAtomic { cas, va_offset } => {
                let va = VA.wrapping_add(va_offset as i64 as u64);
                let op = if cas {
                    SendOp::CompareSwap { va, rkey: 9, compare: 0, swap: 1 }
                } else {
                    SendOp::FetchAdd { va, rkey: 9, add: 1 }
                };
                let _ = qp.post_send(3, op);
            }
            Step::Limits { max_rd_atomic, max_dest_rd_atomic } => {
                let _ = qp.set_rd_atomic(max_rd_atomic % 8, max_dest_rd_atomic % 8);
            }
            Step::Timers { timeout, retry_cnt, rnr_retry, min_rnr_timer } => {
                let _ = qp.set_timers(QpTimers { timeout, retry_cnt, rnr_retry, min_rnr_timer });
            }
            Step::Time(delta) => {
                now = now.saturating_add(u64::from(delta) * 1000);
                qp.on_time(now);
                if let Some(d) = qp.next_deadline() {
                    assert!(d > now, "a due timer was not run");
                }
            }
            Step::Timeout => qp.timeout(),
            Step::Drain => {
                for _ in 0..10_000 {
                    if qp.transmit().is_none() {
                        break;
                    }
                }
                while qp.poll_completion().is_some() {}
            }
        }
        // Only the writable region changes, and only with payload bytes.
        let guard = qp.region(0).map(|r| r.data.clone());
        assert_eq!(guard, Some(vec![canary; 64]));
        let r = qp.region(region).map(|r| r.data.clone()).unwrap_or_default();
        assert_eq!(r.len(), REGION);
        assert!(r.iter().all(|&b| b == 0 || b == 0xa5));
        assert_eq!(qp.region(atomics).map(|r| r.data.len()), Some(64));
    }
});
