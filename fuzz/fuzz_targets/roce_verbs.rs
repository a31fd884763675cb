//! A verbs context with two connected queue pairs fed fuzzer-chosen
//! frames: well-formed RoCE v2 packets addressed to either queue pair, to
//! a queue pair that does not exist or in the wrong state, from the wrong
//! peer, with any opcode, PSN, key, address and length; raw bytes; and
//! posted work (SENDs, WRITEs, READs, atomics, receives; of one
//! scatter/gather entry, the send's fast path, or of two, the general
//! path, and receives whose SENDs are placed across two entries as they
//! arrive), time, state changes and completion polling. Never panics, never loops, the guard
//! region (no remote access) never changes, every region keeps its length,
//! and a completion queue never holds more than its size.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rdma_passthrough::headers::{
    Aeth, AtomicAckEth, AtomicEth, Bth, ImmDt, Ieth, NakCode, Reth, Syndrome,
};
use rdma_passthrough::opcode::Opcode;
use rdma_passthrough::packet::{build, frame_len, Endpoints, TransportHeaders};
use rdma_passthrough::psn::Psn;
use rdma_passthrough::verbs::*;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const IP: [u8; 4] = [10, 0, 0, 1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const PEER_IP: [u8; 4] = [10, 0, 0, 2];
const PEER_QPN: u32 = 0x99;
const START: u32 = 0xff_fff0;
const CQE: usize = 32;

#[derive(Arbitrary, Debug)]
enum Step {
    Packet {
        qp: u8,
        opcode: u8,
        psn_offset: i8,
        from_peer: bool,
        key: u8,
        va_offset: i16,
        dma_len: u16,
        syndrome: u8,
        payload_len: u16,
    },
    Raw(Vec<u8>),
    PostRecv { qp: bool, len: u16, split: Option<u16> },
    PostSend { qp: bool, kind: u8, len: u16, signaled: bool, split: Option<u16> },
    Time(u32),
    Modify { qp: bool, state: u8 },
    Poll,
    Arm,
    Drain,
}

fuzz_target!(|steps: Vec<Step>| {
    let mut ctx = Context::new(MAC, IP);
    let pd = ctx.alloc_pd().expect("pd");
    let cq = ctx.create_cq(CQE).expect("cq");
    let all = AccessFlags(0xf);
    let mr = ctx.reg_mr(pd, 4096, all).expect("mr");
    let guard = ctx.reg_mr_with(pd, vec![0x5a; 256], AccessFlags::LOCAL_WRITE).expect("guard");
    let info = ctx.mr_info(mr).expect("info");
    let ginfo = ctx.mr_info(guard).expect("info");
    let init = QpInitAttr {
        send_cq: cq,
        recv_cq: cq,
        max_send_wr: 16,
        max_recv_wr: 16,
        max_send_sge: 2,
        max_recv_sge: 2,
        sq_sig_all: false,
    };
    let mut qps = Vec::new();
    for _ in 0..2 {
        let qp = ctx.create_qp(pd, &init).expect("qp");
        let mut a = QpAttr::to(QpState::Init);
        a.pkey_index = Some(0);
        a.port_num = Some(1);
        a.qp_access_flags = Some(all);
        ctx.modify_qp(qp, &a).expect("init");
        let mut a = QpAttr::to(QpState::Rtr);
        a.ah_attr = Some(AhAttr { dgid: ipv4_gid(PEER_IP), dmac: PEER_MAC, hop_limit: 64, traffic_class: 0 });
        a.path_mtu = Some(PathMtu::Mtu256);
        a.dest_qp_num = Some(PEER_QPN);
        a.rq_psn = Some(START);
        a.max_dest_rd_atomic = Some(2);
        a.min_rnr_timer = Some(1);
        ctx.modify_qp(qp, &a).expect("rtr");
        let mut a = QpAttr::to(QpState::Rts);
        a.sq_psn = Some(START);
        a.timeout = Some(1);
        a.retry_cnt = Some(3);
        a.rnr_retry = Some(2);
        a.max_rd_atomic = Some(2);
        ctx.modify_qp(qp, &a).expect("rts");
        qps.push(qp);
    }
    let mut now = 0u64;
    let peer = |from_peer: bool| Endpoints {
        dst_mac: MAC,
        src_mac: PEER_MAC,
        src_ip: if from_peer { PEER_IP } else { [10, 0, 0, 3] },
        dst_ip: IP,
        src_port: 0xc000,
        tos: 0,
        ttl: 64,
        ip_id: 0,
    };
    for step in steps.into_iter().take(256) {
        match step {
            Step::Packet { qp, opcode, psn_offset, from_peer, key, va_offset, dma_len, syndrome, payload_len } => {
                let Some(opcode) = Opcode::from_u8(opcode % 0x18) else { continue };
                let l = opcode.layout();
                let dest_qp = match qp % 3 {
                    0 => qps[0].qp_num(),
                    1 => qps[1].qp_num(),
                    _ => 0x1234,
                };
                let mut h = TransportHeaders::new(Bth {
                    opcode,
                    solicited: false,
                    mig_req: false,
                    pad: 0,
                    pkey: 0xffff,
                    fecn: false,
                    becn: false,
                    dest_qp,
                    ack_req: true,
                    psn: Psn::from_masked(START).add(psn_offset as i32 as u32),
                });
                let (rkey, base) = match key % 3 {
                    0 => (info.rkey, info.addr),
                    1 => (ginfo.rkey, ginfo.addr),
                    _ => (u32::from(key) << 8, 0),
                };
                let va = base.wrapping_add(va_offset as i64 as u64);
                if l.reth {
                    h.reth = Some(Reth { va, rkey, dma_len: u32::from(dma_len) });
                }
                if l.atomic_eth {
                    h.atomic_eth = Some(AtomicEth { va, rkey, swap_add: 3, compare: 0 });
                }
                if l.aeth {
                    let s = Syndrome::decode(syndrome & 0x7f)
                        .unwrap_or(Syndrome::Nak(NakCode::PsnSequenceError));
                    h.aeth = Some(Aeth { syndrome: s, msn: 0 });
                }
                if l.atomic_ack_eth {
                    h.atomic_ack_eth = Some(AtomicAckEth { orig: 7 });
                }
                if l.imm {
                    h.imm = Some(ImmDt([1, 2, 3, 4]));
                }
                if l.ieth {
                    h.ieth = Some(Ieth { rkey });
                }
                let mut len = if l.payload { usize::from(payload_len % 300) } else { 0 };
                if !l.position.ends_message() {
                    len &= !3;
                }
                let payload = vec![0xa5u8; len];
                let mut out = vec![0u8; frame_len(opcode, len).unwrap_or(0)];
                if let Ok(n) = build(&peer(from_peer), &h, &payload, &mut out) {
                    ctx.handle_frame(&out[..n], now);
                }
            }
            Step::Raw(bytes) => ctx.handle_frame(&bytes, now),
            Step::PostRecv { qp, len, split } => {
                let length = u32::from(len % 5000);
                let sge = Sge { addr: info.addr, length, lkey: info.lkey };
                let sg_list = split_sge(sge, split);
                let _ = ctx.post_recv(qps[usize::from(qp)], &RecvWr { wr_id: 1, sg_list });
            }
            Step::PostSend { qp, kind, len, signaled, split } => {
                let remote_addr = 0x1000;
                let rkey = 0x77;
                let opcode = match kind % 7 {
                    0 => WrOpcode::Send,
                    1 => WrOpcode::SendWithImm(5),
                    2 => WrOpcode::RdmaWrite { remote_addr, rkey },
                    3 => WrOpcode::RdmaWriteWithImm { remote_addr, rkey, imm: 6 },
                    4 => WrOpcode::RdmaRead { remote_addr, rkey },
                    5 => WrOpcode::AtomicCmpSwp { remote_addr, rkey, compare: 0, swap: 1 },
                    _ => WrOpcode::AtomicFetchAdd { remote_addr, rkey, add: 1 },
                };
                let length = if kind % 7 >= 5 { 8 } else { u32::from(len % 5000) };
                let sge = Sge { addr: info.addr + 8, length, lkey: info.lkey };
                let sg_list = split_sge(sge, split);
                let wr = SendWr { wr_id: 2, sg_list, opcode, signaled };
                let _ = ctx.post_send(qps[usize::from(qp)], &wr);
            }
            Step::Time(delta) => {
                now = now.saturating_add(u64::from(delta));
                ctx.on_time(now);
                if let Some(d) = ctx.next_deadline() {
                    assert!(d > now, "a due timer was not run");
                }
            }
            Step::Modify { qp, state } => {
                let to = match state % 3 {
                    0 => QpState::Err,
                    1 => QpState::Reset,
                    _ => QpState::Rts,
                };
                let _ = ctx.modify_qp(qps[usize::from(qp)], &QpAttr::to(to));
            }
            Step::Poll => {
                if let Ok(v) = ctx.poll_cq(cq, 64) {
                    assert!(v.len() <= CQE);
                }
            }
            Step::Arm => {
                let _ = ctx.req_notify_cq(cq, false);
                let _ = ctx.take_cq_events();
            }
            Step::Drain => {
                for _ in 0..10_000 {
                    if ctx.next_frame().is_none() {
                        break;
                    }
                }
            }
        }
        assert_eq!(ctx.mr_bytes(guard).map(|b| b.to_vec()), Ok(vec![0x5a; 256]));
        assert_eq!(ctx.mr_bytes(mr).map(|b| b.len()), Ok(4096));
    }
});

/// `sge`, or `sge` cut in two at `split` (modulo its length plus one; an
/// entry may be empty): two entries take the general paths.
fn split_sge(sge: Sge, split: Option<u16>) -> Vec<Sge> {
    let Some(at) = split else {
        return vec![sge];
    };
    let at = u32::from(at) % (sge.length + 1);
    vec![
        Sge { length: at, ..sge },
        Sge { addr: sge.addr + u64::from(at), length: sge.length - at, ..sge },
    ]
}
