//! A reliable-connected queue pair fed fuzzer-chosen requests and
//! acknowledgements (any opcode, PSNs around the expected one and across
//! the 24-bit wrap, remote keys, addresses and lengths, wrong QPs), raw
//! frames, posted work and timer expiries. Never panics, never loops, and
//! RDMA WRITEs land only inside the registered region.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rdma_passthrough::headers::{
    Aeth, AtomicAckEth, AtomicEth, Bth, ImmDt, Ieth, NakCode, Reth, Syndrome,
};
use rdma_passthrough::opcode::Opcode;
use rdma_passthrough::packet::{build, frame_len, Endpoints, TransportHeaders};
use rdma_passthrough::psn::Psn;
use rdma_passthrough::rc::{MemoryRegion, QpConfig, QueuePair, SendOp};

const QPN: u32 = 0x22;
const PEER: u32 = 0x11;
const RKEY: u32 = 7;
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
        rkey_wrong: bool,
        dma_len: u16,
        syndrome: u8,
        payload_len: u16,
    },
    Raw(Vec<u8>),
    PostRecv(u16),
    PostSend { len: u16, write: bool },
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
    let region = qp.register(MemoryRegion { va: VA, rkey: RKEY, remote_write: true, data: vec![0; REGION] });
    for step in steps.into_iter().take(256) {
        match step {
            Step::Packet {
                opcode,
                psn_offset,
                wrong_qp,
                ack_req,
                va_offset,
                rkey_wrong,
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
                let va = VA.wrapping_add(va_offset as i64 as u64);
                let rkey = if rkey_wrong { 0xdead } else { RKEY };
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
                    h.atomic_ack_eth = Some(AtomicAckEth { orig: 0 });
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
            Step::PostSend { len, write } => {
                let data = vec![3u8; usize::from(len % 2048)];
                let op = if write {
                    SendOp::Write { data, va: 0, rkey: 1, imm: None }
                } else {
                    SendOp::Send { data, imm: None }
                };
                let _ = qp.post_send(1, op);
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
    }
});
