//! The verbs API: two contexts (two devices) connected by an in-memory
//! link, driven through the transport pump a NIC driver uses.

use std::collections::VecDeque;

use rdma_passthrough::verbs::*;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const IP_A: [u8; 4] = [10, 0, 0, 10];
const IP_B: [u8; 4] = [10, 0, 0, 11];
const ALL: AccessFlags = AccessFlags(1 | 2 | 4 | 8);

struct Node {
    ctx: Context,
    pd: PdHandle,
    cq: CqHandle,
    qp: QpHandle,
    mr: MrHandle,
}

impl Node {
    fn new(mac: [u8; 6], ip: [u8; 4], cqe: usize) -> Node {
        let mut ctx = Context::new(mac, ip);
        let pd = ctx.alloc_pd().unwrap();
        let cq = ctx.create_cq(cqe).unwrap();
        let qp = ctx.create_qp(pd, &init_attr(cq)).unwrap();
        let mr = ctx.reg_mr(pd, 16384, ALL).unwrap();
        Node {
            ctx,
            pd,
            cq,
            qp,
            mr,
        }
    }

    fn info(&self) -> MrInfo {
        self.ctx.mr_info(self.mr).unwrap()
    }

    fn sge(&self, offset: u64, length: u32) -> Sge {
        let i = self.info();
        Sge {
            addr: i.addr + offset,
            length,
            lkey: i.lkey,
        }
    }

    fn poll(&mut self) -> Vec<WorkCompletion> {
        self.ctx.poll_cq(self.cq, 1000).unwrap()
    }
}

fn init_attr(cq: CqHandle) -> QpInitAttr {
    QpInitAttr {
        send_cq: cq,
        recv_cq: cq,
        max_send_wr: 64,
        max_recv_wr: 64,
        max_send_sge: 4,
        max_recv_sge: 4,
        sq_sig_all: false,
    }
}

fn to_init(ctx: &mut Context, qp: QpHandle, access: AccessFlags) {
    let mut a = QpAttr::to(QpState::Init);
    a.pkey_index = Some(0);
    a.port_num = Some(1);
    a.qp_access_flags = Some(access);
    ctx.modify_qp(qp, &a).unwrap();
}

fn rtr_attr(dest_qpn: u32, mac: [u8; 6], ip: [u8; 4], rq_psn: u32) -> QpAttr {
    let mut a = QpAttr::to(QpState::Rtr);
    a.ah_attr = Some(AhAttr {
        dgid: ipv4_gid(ip),
        dmac: mac,
        hop_limit: 64,
        traffic_class: 0,
    });
    a.path_mtu = Some(PathMtu::Mtu1024);
    a.dest_qp_num = Some(dest_qpn);
    a.rq_psn = Some(rq_psn);
    a.max_dest_rd_atomic = Some(4);
    a.min_rnr_timer = Some(1);
    a
}

fn rts_attr(sq_psn: u32, timeout: u8, retry: u8, rnr_retry: u8) -> QpAttr {
    let mut a = QpAttr::to(QpState::Rts);
    a.sq_psn = Some(sq_psn);
    a.timeout = Some(timeout);
    a.retry_cnt = Some(retry);
    a.rnr_retry = Some(rnr_retry);
    a.max_rd_atomic = Some(4);
    a
}

/// Two nodes with their queue pairs connected and in RTS; A's PSNs start
/// just below the 24-bit wrap.
fn connected() -> (Node, Node) {
    let mut a = Node::new(MAC_A, IP_A, 256);
    let mut b = Node::new(MAC_B, IP_B, 256);
    connect(&mut a, &mut b, 0xff_fffa, 0x1234);
    (a, b)
}

fn connect(a: &mut Node, b: &mut Node, a_psn: u32, b_psn: u32) {
    connect_qps(&mut a.ctx, a.qp, &mut b.ctx, b.qp, a_psn, b_psn);
}

fn connect_qps(
    a: &mut Context,
    qa: QpHandle,
    b: &mut Context,
    qb: QpHandle,
    a_psn: u32,
    b_psn: u32,
) {
    to_init(a, qa, ALL);
    to_init(b, qb, ALL);
    a.modify_qp(qa, &rtr_attr(qb.qp_num(), b.mac(), b.ipv4(), b_psn))
        .unwrap();
    b.modify_qp(qb, &rtr_attr(qa.qp_num(), a.mac(), a.ipv4(), a_psn))
        .unwrap();
    a.modify_qp(qa, &rts_attr(a_psn, 14, 7, 7)).unwrap();
    b.modify_qp(qb, &rts_attr(b_psn, 14, 7, 7)).unwrap();
}

/// Moves frames between the contexts until both are idle.
fn pump(a: &mut Context, b: &mut Context, now: u64) -> usize {
    let mut moved = 0;
    loop {
        let mut any = false;
        while let Some(f) = a.next_frame() {
            b.handle_frame(&f, now);
            moved += 1;
            any = true;
        }
        while let Some(f) = b.next_frame() {
            a.handle_frame(&f, now);
            moved += 1;
            any = true;
        }
        if !any {
            return moved;
        }
    }
}

fn send_wr(wr_id: u64, sg_list: Vec<Sge>, opcode: WrOpcode) -> SendWr {
    SendWr {
        wr_id,
        sg_list,
        opcode,
        signaled: true,
    }
}

#[test]
fn the_gid_is_ipv4_mapped() {
    let ctx = Context::new(MAC_A, IP_A);
    assert_eq!(
        ctx.gid(),
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 10]
    );
    assert_eq!(gid_ipv4(&ctx.gid()), Some(IP_A));
}

/// A SEND gathered from two entries is scattered into a receive's two
/// entries; completions carry wr_id, opcode, byte_len, imm and qp_num.
#[test]
fn send_with_immediate_scatter_gather() {
    let (mut a, mut b) = connected();
    a.ctx.mr_bytes_mut(a.mr).unwrap()[..6].copy_from_slice(b"hello ");
    a.ctx.mr_bytes_mut(a.mr).unwrap()[100..105].copy_from_slice(b"world");
    let recv = RecvWr {
        wr_id: 77,
        sg_list: vec![b.sge(0, 4), b.sge(1000, 100)],
    };
    b.ctx.post_recv(b.qp, &recv).unwrap();
    let wr = send_wr(
        5,
        vec![a.sge(0, 6), a.sge(100, 5)],
        WrOpcode::SendWithImm(0xdead_beef),
    );
    a.ctx.post_send(a.qp, &wr).unwrap();
    pump(&mut a.ctx, &mut b.ctx, 0);
    let got = b.poll();
    assert_eq!(
        got,
        [WorkCompletion {
            wr_id: 77,
            status: WcStatus::Success,
            opcode: WcOpcode::Recv,
            byte_len: 11,
            imm_data: Some(0xdead_beef),
            qp_num: b.qp.qp_num(),
        }]
    );
    let bytes = b.ctx.mr_bytes(b.mr).unwrap();
    assert_eq!(&bytes[..4], b"hell");
    assert_eq!(&bytes[1000..1007], b"o world");
    assert_eq!(bytes[1007], 0);
    let sent = a.poll();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (
            sent[0].wr_id,
            sent[0].opcode,
            sent[0].byte_len,
            sent[0].qp_num
        ),
        (5, WcOpcode::Send, 11, a.qp.qp_num())
    );
}

#[test]
fn write_read_and_atomics_through_verbs() {
    let (mut a, mut b) = connected();
    let rb = b.info();
    // A large WRITE (several PMTUs) with immediate.
    let payload: Vec<u8> = (0..3000).map(|i| (i % 251) as u8).collect();
    a.ctx.mr_bytes_mut(a.mr).unwrap()[..3000].copy_from_slice(&payload);
    b.ctx
        .post_recv(
            b.qp,
            &RecvWr {
                wr_id: 1,
                sg_list: vec![],
            },
        )
        .unwrap();
    let wr = send_wr(
        10,
        vec![a.sge(0, 3000)],
        WrOpcode::RdmaWriteWithImm {
            remote_addr: rb.addr + 4096,
            rkey: rb.rkey,
            imm: 9,
        },
    );
    a.ctx.post_send(a.qp, &wr).unwrap();
    pump(&mut a.ctx, &mut b.ctx, 0);
    assert_eq!(&b.ctx.mr_bytes(b.mr).unwrap()[4096..7096], &payload[..]);
    let r = b.poll();
    assert_eq!(
        (r[0].opcode, r[0].byte_len, r[0].imm_data),
        (WcOpcode::RecvRdmaWithImm, 3000, Some(9))
    );
    // READ it back into two entries of A's region.
    let wr = send_wr(
        11,
        vec![a.sge(8192, 1000), a.sge(12000, 2000)],
        WrOpcode::RdmaRead {
            remote_addr: rb.addr + 4096,
            rkey: rb.rkey,
        },
    );
    a.ctx.post_send(a.qp, &wr).unwrap();
    // Atomics: the original values land in A's region.
    b.ctx.mr_bytes_mut(b.mr).unwrap()[0..8].copy_from_slice(&100u64.to_le_bytes());
    let fa = send_wr(
        12,
        vec![a.sge(16000, 8)],
        WrOpcode::AtomicFetchAdd {
            remote_addr: rb.addr,
            rkey: rb.rkey,
            add: 5,
        },
    );
    a.ctx.post_send(a.qp, &fa).unwrap();
    let cas = send_wr(
        13,
        vec![a.sge(16008, 8)],
        WrOpcode::AtomicCmpSwp {
            remote_addr: rb.addr,
            rkey: rb.rkey,
            compare: 105,
            swap: 7,
        },
    );
    a.ctx.post_send(a.qp, &cas).unwrap();
    pump(&mut a.ctx, &mut b.ctx, 0);
    let done: Vec<_> = a
        .poll()
        .iter()
        .map(|c| (c.wr_id, c.status, c.opcode, c.byte_len))
        .collect();
    assert_eq!(
        done,
        [
            (10, WcStatus::Success, WcOpcode::RdmaWrite, 3000),
            (11, WcStatus::Success, WcOpcode::RdmaRead, 3000),
            (12, WcStatus::Success, WcOpcode::FetchAdd, 8),
            (13, WcStatus::Success, WcOpcode::CompSwap, 8),
        ]
    );
    let ab = a.ctx.mr_bytes(a.mr).unwrap();
    assert_eq!(&ab[8192..9192], &payload[..1000]);
    assert_eq!(&ab[12000..14000], &payload[1000..3000]);
    assert_eq!(
        u64::from_le_bytes(ab[16000..16008].try_into().unwrap()),
        100
    );
    assert_eq!(
        u64::from_le_bytes(ab[16008..16016].try_into().unwrap()),
        105
    );
    assert_eq!(&b.ctx.mr_bytes(b.mr).unwrap()[0..8], &7u64.to_le_bytes());
}

#[test]
fn unsignaled_sends_complete_silently_unless_they_fail() {
    let (mut a, mut b) = connected();
    b.ctx
        .post_recv(
            b.qp,
            &RecvWr {
                wr_id: 1,
                sg_list: vec![b.sge(0, 64)],
            },
        )
        .unwrap();
    let mut wr = send_wr(1, vec![a.sge(0, 8)], WrOpcode::Send);
    wr.signaled = false;
    a.ctx.post_send(a.qp, &wr).unwrap();
    pump(&mut a.ctx, &mut b.ctx, 0);
    assert!(a.poll().is_empty());
    assert_eq!(b.poll().len(), 1);
    // A WRITE to a bad key fails and reports, signaled or not.
    let mut wr = send_wr(
        2,
        vec![a.sge(0, 8)],
        WrOpcode::RdmaWrite {
            remote_addr: 0,
            rkey: 1,
        },
    );
    wr.signaled = false;
    a.ctx.post_send(a.qp, &wr).unwrap();
    pump(&mut a.ctx, &mut b.ctx, 0);
    let c = a.poll();
    assert_eq!((c[0].wr_id, c[0].status), (2, WcStatus::RemAccessErr));
    assert_eq!(a.ctx.qp_state(a.qp).unwrap(), QpState::Err);
    assert_eq!(b.ctx.qp_state(b.qp).unwrap(), QpState::Err);
}

#[test]
fn the_state_machine_refuses_what_ibv_modify_qp_refuses() {
    let mut a = Node::new(MAC_A, IP_A, 16);
    let wr = send_wr(1, vec![], WrOpcode::Send);
    // RESET: nothing may be posted.
    assert!(matches!(
        a.ctx.post_send(a.qp, &wr),
        Err(VerbsError::WrongState {
            state: QpState::Reset,
            ..
        })
    ));
    assert!(matches!(
        a.ctx.post_recv(
            a.qp,
            &RecvWr {
                wr_id: 1,
                sg_list: vec![]
            }
        ),
        Err(VerbsError::WrongState { .. })
    ));
    // RESET→RTR skips INIT.
    let err = a
        .ctx
        .modify_qp(a.qp, &rtr_attr(5, MAC_B, IP_B, 0))
        .unwrap_err();
    assert_eq!(
        err,
        VerbsError::BadTransition {
            from: QpState::Reset,
            to: QpState::Rtr
        }
    );
    assert!(err.to_string().contains("RESET→INIT→RTR→RTS"));
    // INIT needs its attributes, and takes no others.
    let mut init = QpAttr::to(QpState::Init);
    init.pkey_index = Some(0);
    init.port_num = Some(1);
    assert_eq!(
        a.ctx.modify_qp(a.qp, &init),
        Err(VerbsError::MissingAttribute {
            to: QpState::Init,
            attr: "qp_access_flags"
        })
    );
    init.qp_access_flags = Some(ALL);
    init.sq_psn = Some(1);
    assert_eq!(
        a.ctx.modify_qp(a.qp, &init),
        Err(VerbsError::UnexpectedAttribute {
            to: QpState::Init,
            attr: "sq_psn"
        })
    );
    init.sq_psn = None;
    init.port_num = Some(2);
    assert!(matches!(
        a.ctx.modify_qp(a.qp, &init),
        Err(VerbsError::BadAttribute {
            attr: "port_num",
            ..
        })
    ));
    init.port_num = Some(1);
    a.ctx.modify_qp(a.qp, &init).unwrap();
    // Receives may be posted in INIT; sends may not.
    a.ctx
        .post_recv(
            a.qp,
            &RecvWr {
                wr_id: 3,
                sg_list: vec![a.sge(0, 16)],
            },
        )
        .unwrap();
    assert!(matches!(
        a.ctx.post_send(a.qp, &wr),
        Err(VerbsError::WrongState {
            state: QpState::Init,
            ..
        })
    ));
    // RTR: an IPv6 GID is refused, and so is a PSN above 24 bits.
    let mut rtr = rtr_attr(5, MAC_B, IP_B, 0);
    rtr.ah_attr.as_mut().unwrap().dgid = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    assert!(matches!(
        a.ctx.modify_qp(a.qp, &rtr),
        Err(VerbsError::BadAttribute { .. })
    ));
    let mut rtr = rtr_attr(5, MAC_B, IP_B, 0x100_0000);
    assert!(a.ctx.modify_qp(a.qp, &rtr).is_err());
    rtr.rq_psn = Some(0);
    a.ctx.modify_qp(a.qp, &rtr).unwrap();
    assert!(matches!(
        a.ctx.post_send(a.qp, &wr),
        Err(VerbsError::WrongState {
            state: QpState::Rtr,
            ..
        })
    ));
    // RTR→RTS needs its timers.
    let mut rts = rts_attr(0, 14, 7, 7);
    rts.retry_cnt = None;
    assert!(matches!(
        a.ctx.modify_qp(a.qp, &rts),
        Err(VerbsError::MissingAttribute {
            attr: "retry_cnt",
            ..
        })
    ));
    rts.retry_cnt = Some(8);
    assert!(matches!(
        a.ctx.modify_qp(a.qp, &rts),
        Err(VerbsError::BadAttribute { .. })
    ));
    a.ctx.modify_qp(a.qp, &rts_attr(0, 14, 7, 7)).unwrap();
    assert_eq!(a.ctx.qp_state(a.qp), Ok(QpState::Rts));
    // RTS→INIT is not a transition; SQD is not supported.
    assert!(matches!(
        a.ctx.modify_qp(a.qp, &QpAttr::to(QpState::Init)),
        Err(VerbsError::MissingAttribute { .. } | VerbsError::BadTransition { .. })
    ));
    assert!(matches!(
        a.ctx.modify_qp(a.qp, &QpAttr::to(QpState::Sqd)),
        Err(VerbsError::BadTransition { .. })
    ));
    // ERR flushes the receive posted in INIT.
    a.ctx.modify_qp(a.qp, &QpAttr::to(QpState::Err)).unwrap();
    let c = a.poll();
    assert_eq!((c[0].wr_id, c[0].status), (3, WcStatus::WrFlushErr));
    // And RESET starts over.
    a.ctx.modify_qp(a.qp, &QpAttr::to(QpState::Reset)).unwrap();
    assert_eq!(a.ctx.qp_state(a.qp), Ok(QpState::Reset));
}

#[test]
fn receives_posted_in_init_are_used_after_rtr() {
    let mut a = Node::new(MAC_A, IP_A, 16);
    let mut b = Node::new(MAC_B, IP_B, 16);
    to_init(&mut b.ctx, b.qp, ALL);
    b.ctx
        .post_recv(
            b.qp,
            &RecvWr {
                wr_id: 42,
                sg_list: vec![b.sge(0, 64)],
            },
        )
        .unwrap();
    to_init(&mut a.ctx, a.qp, ALL);
    a.ctx
        .modify_qp(a.qp, &rtr_attr(b.qp.qp_num(), MAC_B, IP_B, 0))
        .unwrap();
    b.ctx
        .modify_qp(b.qp, &rtr_attr(a.qp.qp_num(), MAC_A, IP_A, 0))
        .unwrap();
    a.ctx.modify_qp(a.qp, &rts_attr(0, 14, 7, 7)).unwrap();
    a.ctx
        .post_send(a.qp, &send_wr(1, vec![a.sge(0, 10)], WrOpcode::Send))
        .unwrap();
    pump(&mut a.ctx, &mut b.ctx, 0);
    assert_eq!(b.poll()[0].wr_id, 42, "B answers in RTR");
    assert_eq!(a.poll()[0].status, WcStatus::Success);
}

#[test]
fn memory_regions_are_checked() {
    let mut a = Node::new(MAC_A, IP_A, 16);
    let remote_write_only = AccessFlags::REMOTE_WRITE;
    assert_eq!(
        a.ctx.reg_mr(a.pd, 64, remote_write_only),
        Err(VerbsError::BadAccess(2))
    );
    assert!(a.ctx.reg_mr(a.pd, 64, AccessFlags(0x100)).is_err());
    let ro = a
        .ctx
        .reg_mr_with(a.pd, vec![1, 2, 3], AccessFlags::REMOTE_READ)
        .unwrap();
    let ri = a.ctx.mr_info(ro).unwrap();
    assert_eq!((ri.len, ri.access), (3, AccessFlags::REMOTE_READ));
    assert_ne!(ri.addr, a.info().addr);
    assert!(
        ri.addr >= a.info().addr + 16384 || ri.addr + 3 <= a.info().addr,
        "regions do not overlap"
    );
    // Another protection domain's region cannot be used.
    let pd2 = a.ctx.alloc_pd().unwrap();
    let other = a.ctx.reg_mr(pd2, 64, ALL).unwrap();
    to_init(&mut a.ctx, a.qp, ALL);
    let oi = a.ctx.mr_info(other).unwrap();
    let bad = |sge: Sge| RecvWr {
        wr_id: 1,
        sg_list: vec![sge],
    };
    let e = a
        .ctx
        .post_recv(
            a.qp,
            &bad(Sge {
                addr: oi.addr,
                length: 8,
                lkey: oi.lkey,
            }),
        )
        .unwrap_err();
    assert!(matches!(e, VerbsError::BadSge { index: 0, why } if why.contains("protection domain")));
    // Receiving needs LOCAL_WRITE.
    assert!(a
        .ctx
        .post_recv(
            a.qp,
            &bad(Sge {
                addr: ri.addr,
                length: 3,
                lkey: ri.lkey
            })
        )
        .is_err());
    // Bounds.
    assert!(a.ctx.post_recv(a.qp, &bad(a.sge(16380, 8))).is_err());
    assert!(a
        .ctx
        .post_recv(
            a.qp,
            &bad(Sge {
                addr: a.info().addr - 1,
                length: 1,
                lkey: a.info().lkey
            })
        )
        .is_err());
    assert!(a
        .ctx
        .post_recv(
            a.qp,
            &bad(Sge {
                addr: a.info().addr,
                length: 1,
                lkey: a.info().lkey ^ 1
            })
        )
        .is_err());
    // In use: a posted receive holds the region, the QP holds the PD.
    a.ctx.post_recv(a.qp, &bad(a.sge(0, 8))).unwrap();
    assert!(matches!(
        a.ctx.dereg_mr(a.mr),
        Err(VerbsError::InUse {
            what: "memory region",
            users: 1
        })
    ));
    assert!(matches!(
        a.ctx.dealloc_pd(a.pd),
        Err(VerbsError::InUse { .. })
    ));
    assert!(matches!(
        a.ctx.destroy_cq(a.cq),
        Err(VerbsError::InUse { .. })
    ));
    a.ctx.modify_qp(a.qp, &QpAttr::to(QpState::Err)).unwrap();
    assert_eq!(a.poll()[0].status, WcStatus::WrFlushErr);
    assert_eq!(a.ctx.dereg_mr(a.mr).map(|d| d.len()), Ok(16384));
    assert_eq!(a.ctx.dereg_mr(other).map(|d| d.len()), Ok(64));
    a.ctx.dealloc_pd(pd2).unwrap();
    a.ctx.destroy_qp(a.qp).unwrap();
    a.ctx.dereg_mr(ro).unwrap();
    a.ctx.dealloc_pd(a.pd).unwrap();
    a.ctx.destroy_cq(a.cq).unwrap();
}

/// Remote access needs the queue pair's access flags as well as the
/// region's.
#[test]
fn remote_access_needs_the_qps_flags() {
    let mut a = Node::new(MAC_A, IP_A, 16);
    let mut b = Node::new(MAC_B, IP_B, 16);
    to_init(&mut a.ctx, a.qp, ALL);
    to_init(&mut b.ctx, b.qp, AccessFlags::REMOTE_READ);
    a.ctx
        .modify_qp(a.qp, &rtr_attr(b.qp.qp_num(), MAC_B, IP_B, 0))
        .unwrap();
    b.ctx
        .modify_qp(b.qp, &rtr_attr(a.qp.qp_num(), MAC_A, IP_A, 0))
        .unwrap();
    a.ctx.modify_qp(a.qp, &rts_attr(0, 14, 7, 7)).unwrap();
    let rb = b.info();
    let wr = send_wr(
        1,
        vec![a.sge(0, 8)],
        WrOpcode::RdmaWrite {
            remote_addr: rb.addr,
            rkey: rb.rkey,
        },
    );
    a.ctx.post_send(a.qp, &wr).unwrap();
    pump(&mut a.ctx, &mut b.ctx, 0);
    assert_eq!(a.poll()[0].status, WcStatus::RemAccessErr);
}

#[test]
fn armed_completion_queues_raise_one_event() {
    let (mut a, mut b) = connected();
    b.ctx.req_notify_cq(b.cq, false).unwrap();
    assert!(b.ctx.take_cq_events().is_empty());
    b.ctx
        .post_recv(
            b.qp,
            &RecvWr {
                wr_id: 1,
                sg_list: vec![b.sge(0, 64)],
            },
        )
        .unwrap();
    b.ctx
        .post_recv(
            b.qp,
            &RecvWr {
                wr_id: 2,
                sg_list: vec![b.sge(0, 64)],
            },
        )
        .unwrap();
    a.ctx
        .post_send(a.qp, &send_wr(1, vec![a.sge(0, 8)], WrOpcode::Send))
        .unwrap();
    a.ctx
        .post_send(a.qp, &send_wr(2, vec![a.sge(0, 8)], WrOpcode::Send))
        .unwrap();
    pump(&mut a.ctx, &mut b.ctx, 0);
    assert_eq!(b.ctx.take_cq_events(), [b.cq]);
    assert!(b.ctx.take_cq_events().is_empty(), "once per arming");
    assert!(a.ctx.take_cq_events().is_empty(), "A's queue was not armed");
    // Arming with completions waiting reports at once (no lost wake-up).
    b.ctx.req_notify_cq(b.cq, false).unwrap();
    assert_eq!(b.ctx.take_cq_events(), [b.cq]);
    assert_eq!(b.poll().len(), 2);
}

#[test]
fn a_full_completion_queue_is_an_error_not_silent_loss() {
    let mut a = Node::new(MAC_A, IP_A, 16);
    let mut b = Node::new(MAC_B, IP_B, 2);
    connect(&mut a, &mut b, 0, 0);
    for i in 0..3 {
        b.ctx
            .post_recv(
                b.qp,
                &RecvWr {
                    wr_id: i,
                    sg_list: vec![b.sge(0, 64)],
                },
            )
            .unwrap();
        a.ctx
            .post_send(a.qp, &send_wr(i, vec![a.sge(0, 8)], WrOpcode::Send))
            .unwrap();
    }
    pump(&mut a.ctx, &mut b.ctx, 0);
    assert_eq!(
        b.ctx.poll_cq(b.cq, 10),
        Err(VerbsError::CqOverrun { lost: 1 })
    );
    assert_eq!(b.ctx.qp_state(b.qp), Ok(QpState::Err));
    assert_eq!(b.ctx.stats().cq_overruns, 1);
}

#[test]
fn frames_are_demultiplexed_and_foreign_ones_counted() {
    let (mut a, mut b) = connected();
    // A second pair of queue pairs on the same contexts.
    let qa2 = a.ctx.create_qp(a.pd, &init_attr(a.cq)).unwrap();
    let qb2 = b.ctx.create_qp(b.pd, &init_attr(b.cq)).unwrap();
    assert_ne!(qa2, a.qp);
    connect_qps(&mut a.ctx, qa2, &mut b.ctx, qb2, 100, 200);
    let (mut actx, mut bctx) = (a.ctx, b.ctx);
    bctx.post_recv(
        b.qp,
        &RecvWr {
            wr_id: 1,
            sg_list: vec![sge_of(&bctx, b.mr, 0, 16)],
        },
    )
    .unwrap();
    bctx.post_recv(
        qb2,
        &RecvWr {
            wr_id: 2,
            sg_list: vec![sge_of(&bctx, b.mr, 16, 16)],
        },
    )
    .unwrap();
    actx.post_send(qa2, &send_wr(20, vec![], WrOpcode::Send))
        .unwrap();
    actx.post_send(a.qp, &send_wr(10, vec![], WrOpcode::Send))
        .unwrap();
    pump(&mut actx, &mut bctx, 0);
    let mut got: Vec<_> = bctx
        .poll_cq(b.cq, 10)
        .unwrap()
        .iter()
        .map(|c| (c.wr_id, c.qp_num))
        .collect();
    got.sort();
    assert_eq!(got, [(1, b.qp.qp_num()), (2, qb2.qp_num())]);
    // An ARP frame, a frame for a QP that does not exist, one for another
    // MAC, and a corrupted one.
    let mut arp = vec![0u8; 60];
    arp[12] = 0x08;
    arp[13] = 0x06;
    bctx.handle_frame(&arp, 0);
    actx.post_send(a.qp, &send_wr(11, vec![], WrOpcode::Send))
        .unwrap();
    let f = actx.next_frame().unwrap();
    let mut to_nobody = f.clone();
    to_nobody[14 + 20 + 8 + 7] ^= 0x40; // the destination QP number
    fix_icrc(&mut to_nobody);
    bctx.handle_frame(&to_nobody, 0);
    let mut other_mac = f.clone();
    other_mac[5] ^= 1;
    bctx.handle_frame(&other_mac, 0);
    let mut corrupt = f.clone();
    let n = corrupt.len();
    corrupt[n - 5] ^= 1;
    bctx.handle_frame(&corrupt, 0);
    let s = bctx.stats();
    assert_eq!(
        (s.not_roce, s.unknown_qp, s.misaddressed, s.malformed),
        (1, 1, 1, 1),
        "{s:?}"
    );
}

/// Many queue pairs, some destroyed between others: every frame reaches
/// the queue pair of its number, and frames for the numbers destroyed
/// (any number a peer sends) reach none and are counted.
#[test]
fn many_queue_pairs_some_destroyed_are_found_by_number() {
    let (a, b) = connected();
    let (mut actx, mut bctx) = (a.ctx, b.ctx);
    let mut pairs = vec![(a.qp, b.qp)];
    for i in 0..9u32 {
        let qa = actx.create_qp(a.pd, &init_attr(a.cq)).unwrap();
        let qb = bctx.create_qp(b.pd, &init_attr(b.cq)).unwrap();
        connect_qps(&mut actx, qa, &mut bctx, qb, 1000 * i, 7 + i);
        pairs.push((qa, qb));
    }
    let gone = [3usize, 5, 9];
    for &g in &gone {
        bctx.destroy_qp(pairs[g].1).unwrap();
    }
    // Created after the destructions: a new number, not a reused one.
    let late = bctx.create_qp(b.pd, &init_attr(b.cq)).unwrap();
    assert!(pairs.iter().all(|&(_, qb)| qb != late));
    let mut want = Vec::new();
    for (i, &(qa, qb)) in pairs.iter().enumerate() {
        if !gone.contains(&i) {
            bctx.post_recv(
                qb,
                &RecvWr {
                    wr_id: 100 + i as u64,
                    sg_list: vec![sge_of(&bctx, b.mr, 16 * i as u64, 16)],
                },
            )
            .unwrap();
            want.push((100 + i as u64, qb.qp_num(), 4u32));
        }
        let sge = sge_of(&actx, a.mr, 0, 4);
        actx.post_send(qa, &send_wr(i as u64, vec![sge], WrOpcode::Send))
            .unwrap();
    }
    pump(&mut actx, &mut bctx, 0);
    let mut got: Vec<_> = bctx
        .poll_cq(b.cq, 100)
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c.status, WcStatus::Success, "{c:?}");
            (c.wr_id, c.qp_num, c.byte_len)
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(bctx.stats().unknown_qp, gone.len() as u64);
}

fn sge_of(ctx: &Context, mr: MrHandle, offset: u64, length: u32) -> Sge {
    {
        let i = ctx.mr_info(mr).unwrap();
        Sge {
            addr: i.addr + offset,
            length,
            lkey: i.lkey,
        }
    }
}

/// Recomputes the ICRC of an edited frame.
fn fix_icrc(frame: &mut [u8]) {
    use rdma_passthrough::icrc::icrc;
    let ip_total = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let end = 14 + ip_total;
    let crc = icrc(&frame[14..end - 4]).unwrap();
    frame[end - 4..end].copy_from_slice(&crc);
}

#[test]
fn a_dead_link_exhausts_retries_by_time() {
    let (mut a, _b) = connected();
    // Timeout 14: 4.096 µs × 2^14 = 67.1 ms; retry_cnt 7.
    a.ctx.on_time(1_000);
    a.ctx
        .post_send(a.qp, &send_wr(1, vec![a.sge(0, 8)], WrOpcode::Send))
        .unwrap();
    let mut sent = 0;
    while a.ctx.next_frame().is_some() {
        sent += 1;
    }
    assert_eq!(sent, 1);
    assert_eq!(a.ctx.next_deadline(), Some(1_000 + (4096 << 14)));
    let mut rounds = 0;
    while let Some(d) = a.ctx.next_deadline() {
        a.ctx.on_time(d);
        while a.ctx.next_frame().is_some() {}
        rounds += 1;
        assert!(rounds <= 8);
    }
    assert_eq!(rounds, 8, "7 retries, then the error");
    let c = a.poll();
    assert_eq!((c[0].wr_id, c[0].status), (1, WcStatus::RetryExcErr));
    assert_eq!(a.ctx.qp_state(a.qp), Ok(QpState::Err));
}

#[test]
fn a_send_after_a_quiet_spell_arms_its_timer_from_the_drivers_clock() {
    let (mut a, _b) = connected();
    // The context last heard of time at 1 us; the driver's clock has
    // moved on to 5 s with no frame and no timer in between.
    a.ctx.on_time(1_000);
    a.ctx.advance_time(5_000_000_000);
    assert_eq!(
        a.ctx.next_deadline(),
        None,
        "advancing the clock runs no timer"
    );
    a.ctx
        .post_send(a.qp, &send_wr(1, vec![a.sge(0, 8)], WrOpcode::Send))
        .unwrap();
    while a.ctx.next_frame().is_some() {}
    // The ACK timer runs from 5 s, not from the stale 1 us (which would
    // make it due at once: a needless resend).
    assert_eq!(a.ctx.next_deadline(), Some(5_000_000_000 + (4096 << 14)));
}

#[test]
fn rnr_retries_exhaust_through_verbs() {
    let mut a = Node::new(MAC_A, IP_A, 16);
    let mut b = Node::new(MAC_B, IP_B, 16);
    to_init(&mut a.ctx, a.qp, ALL);
    to_init(&mut b.ctx, b.qp, ALL);
    a.ctx
        .modify_qp(a.qp, &rtr_attr(b.qp.qp_num(), MAC_B, IP_B, 0))
        .unwrap();
    b.ctx
        .modify_qp(b.qp, &rtr_attr(a.qp.qp_num(), MAC_A, IP_A, 0))
        .unwrap();
    a.ctx.modify_qp(a.qp, &rts_attr(0, 14, 7, 3)).unwrap();
    a.ctx
        .post_send(a.qp, &send_wr(1, vec![a.sge(0, 8)], WrOpcode::Send))
        .unwrap();
    let mut now = 0;
    for _ in 0..10 {
        pump(&mut a.ctx, &mut b.ctx, now);
        match a.ctx.next_deadline() {
            Some(d) => {
                assert_eq!(d, now + 10_000, "min_rnr_timer 1 is 10 µs");
                now = d;
                a.ctx.on_time(now);
            }
            None => break,
        }
    }
    let c = a.poll();
    assert_eq!(c[0].status, WcStatus::RnrRetryExcErr);
    assert_eq!(
        a.ctx.qp_stats(a.qp).unwrap().rnr_naks,
        4,
        "three retries, then the error"
    );
}

/// A link that drops, duplicates and reorders frames: every SEND arrives
/// once, in order, intact; every READ returns the right bytes.
#[test]
fn lossy_link_through_verbs() {
    let (mut a, mut b) = connected();
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut rand = move || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let rb = b.info();
    for i in 0..64u64 {
        b.ctx.mr_bytes_mut(b.mr).unwrap()[8192 + i as usize] = i as u8 ^ 0x5a;
    }
    let mut adds = 0u64;
    for i in 0..40u64 {
        let off = (i % 2) * 4096;
        let len = 1 + (i * 397 % 2500) as u32;
        let fill = vec![i as u8; len as usize];
        a.ctx.mr_bytes_mut(a.mr).unwrap()[..len as usize].copy_from_slice(&fill);
        b.ctx
            .post_recv(
                b.qp,
                &RecvWr {
                    wr_id: i,
                    sg_list: vec![b.sge(off, 4096)],
                },
            )
            .ok();
        a.ctx
            .post_send(a.qp, &send_wr(i, vec![a.sge(0, len)], WrOpcode::Send))
            .unwrap();
        if i % 3 == 0 {
            let fa = send_wr(
                2000 + i,
                vec![a.sge(12352 + 8 * (i / 3), 8)],
                WrOpcode::AtomicFetchAdd {
                    remote_addr: rb.addr + 12288,
                    rkey: rb.rkey,
                    add: 1,
                },
            );
            a.ctx.post_send(a.qp, &fa).unwrap();
            adds += 1;
        }
        if i % 5 == 0 {
            let rd = send_wr(
                1000 + i,
                vec![a.sge(12288, 64)],
                WrOpcode::RdmaRead {
                    remote_addr: rb.addr + 8192,
                    rkey: rb.rkey,
                },
            );
            a.ctx.post_send(a.qp, &rd).unwrap();
        }
        // Move frames with loss, duplication and reordering.
        let mut now = i * 1_000_000_000;
        for _ in 0..50 {
            let mut q: VecDeque<(bool, Vec<u8>)> = VecDeque::new();
            while let Some(f) = a.ctx.next_frame() {
                q.push_back((true, f));
            }
            while let Some(f) = b.ctx.next_frame() {
                q.push_back((false, f));
            }
            if q.is_empty() {
                match a.ctx.next_deadline() {
                    Some(d) => {
                        now = d;
                        a.ctx.on_time(now);
                        b.ctx.on_time(now);
                        continue;
                    }
                    None => break,
                }
            }
            let mut v: Vec<_> = q.into_iter().collect();
            if rand() % 4 == 0 && v.len() > 1 {
                let j = (rand() as usize) % v.len();
                v.swap(0, j);
            }
            for (to_b, f) in v {
                let r = rand() % 100;
                if r < 10 {
                    continue;
                }
                let copies = if r < 15 { 2 } else { 1 };
                for _ in 0..copies {
                    if to_b {
                        b.ctx.handle_frame(&f, now);
                    } else {
                        a.ctx.handle_frame(&f, now);
                    }
                }
            }
        }
        let got = b.poll();
        assert_eq!(got.len(), 1, "message {i}");
        assert_eq!(
            (got[0].wr_id, got[0].status, got[0].byte_len),
            (i, WcStatus::Success, len)
        );
        let want = vec![i as u8; len.min(4096) as usize];
        assert_eq!(
            &b.ctx.mr_bytes(b.mr).unwrap()[off as usize..off as usize + want.len()],
            &want[..]
        );
        for c in a.poll() {
            assert_eq!(c.status, WcStatus::Success, "{c:?}");
            if c.opcode == WcOpcode::RdmaRead {
                let want: Vec<u8> = (0..64u8).map(|k| k ^ 0x5a).collect();
                assert_eq!(&a.ctx.mr_bytes(a.mr).unwrap()[12288..12352], &want[..]);
            }
        }
    }
    // Every fetch-and-add ran exactly once, in order, whatever the link
    // duplicated or lost.
    let word = |ctx: &Context, mr, at: usize| {
        u64::from_le_bytes(ctx.mr_bytes(mr).unwrap()[at..at + 8].try_into().unwrap())
    };
    assert_eq!(word(&b.ctx, b.mr, 12288), adds);
    for k in 0..adds {
        assert_eq!(word(&a.ctx, a.mr, 12352 + 8 * k as usize), k);
    }
    let (sa, sb) = (a.ctx.qp_stats(a.qp).unwrap(), b.ctx.qp_stats(b.qp).unwrap());
    assert!(
        sa.retransmitted > 0 && sb.duplicates > 0 && sb.atomic_replays > 0,
        "{sa:?} {sb:?}"
    );
}

/// `poll_cq_into` appends at most `max` completions to the caller's
/// vector, oldest first, and reports an overrun as `poll_cq` does; many
/// SENDs in a row (the gather buffers and request frames recycled by the
/// queue pair) each arrive with their own bytes.
#[test]
fn poll_cq_into_fills_the_callers_vector() {
    let (mut a, mut b) = connected();
    let mut wcs = Vec::new();
    for round in 0..3u8 {
        for i in 0..4u64 {
            let off = 64 * i;
            let tag = round * 16 + i as u8;
            a.ctx.mr_bytes_mut(a.mr).unwrap()[off as usize..off as usize + 8].fill(tag);
            b.ctx
                .post_recv(
                    b.qp,
                    &RecvWr {
                        wr_id: i,
                        sg_list: vec![b.sge(1024 + off, 8)],
                    },
                )
                .unwrap();
            a.ctx
                .post_send(a.qp, &send_wr(i, vec![a.sge(off, 8)], WrOpcode::Send))
                .unwrap();
        }
        pump(&mut a.ctx, &mut b.ctx, 0);
        wcs.clear();
        wcs.push(WorkCompletion {
            wr_id: 999,
            status: WcStatus::Success,
            opcode: WcOpcode::Send,
            byte_len: 0,
            imm_data: None,
            qp_num: 0,
        });
        assert_eq!(b.ctx.poll_cq_into(b.cq, 3, &mut wcs), Ok(3));
        assert_eq!(b.ctx.poll_cq_into(b.cq, 3, &mut wcs), Ok(1));
        assert_eq!(b.ctx.poll_cq_into(b.cq, 3, &mut wcs), Ok(0));
        let ids: Vec<u64> = wcs.iter().map(|w| w.wr_id).collect();
        assert_eq!(ids, [999, 0, 1, 2, 3], "appended, oldest first");
        for i in 0..4usize {
            let at = 1024 + 64 * i;
            let got = &b.ctx.mr_bytes(b.mr).unwrap()[at..at + 8];
            assert_eq!(got, [round * 16 + i as u8; 8], "round {round}, message {i}");
        }
        assert_eq!(a.poll().len(), 4);
    }

    let mut a = Node::new(MAC_A, IP_A, 16);
    let mut b = Node::new(MAC_B, IP_B, 1);
    connect(&mut a, &mut b, 0, 0);
    for i in 0..2 {
        b.ctx
            .post_recv(
                b.qp,
                &RecvWr {
                    wr_id: i,
                    sg_list: vec![b.sge(0, 64)],
                },
            )
            .unwrap();
        a.ctx
            .post_send(a.qp, &send_wr(i, vec![a.sge(0, 8)], WrOpcode::Send))
            .unwrap();
    }
    pump(&mut a.ctx, &mut b.ctx, 0);
    let mut wcs = Vec::new();
    assert_eq!(
        b.ctx.poll_cq_into(b.cq, 10, &mut wcs),
        Err(VerbsError::CqOverrun { lost: 1 })
    );
    assert!(wcs.is_empty());
}

/// Unsignaled sends ask for an ACK every half send queue (16 of a queue
/// 64 deep): the responder sends one ACK per 16 messages, the send queue
/// never fills with sends waiting for one (100 sends pass a 64-deep
/// queue), and the signaled last send completes.
#[test]
fn unsignaled_sends_share_acks_and_free_the_send_queue() {
    let (mut a, mut b) = connected();
    for i in 0..100u64 {
        b.ctx
            .post_recv(
                b.qp,
                &RecvWr {
                    wr_id: i,
                    sg_list: vec![b.sge(0, 64)],
                },
            )
            .unwrap();
        let mut wr = send_wr(i, vec![a.sge(0, 8)], WrOpcode::Send);
        wr.signaled = i == 99;
        a.ctx.post_send(a.qp, &wr).unwrap();
        pump(&mut a.ctx, &mut b.ctx, 0);
        assert_eq!(b.poll().len(), 1, "message {i}");
    }
    let c = a.poll();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].wr_id, c[0].status), (99, WcStatus::Success));
    // Messages 15, 31, 47, 63, 79 and 95 asked, and the signaled 99.
    assert_eq!(b.ctx.qp_stats(b.qp).unwrap().acks_sent, 7);
    assert_eq!(a.ctx.qp_stats(a.qp).unwrap().retransmitted, 0);
    assert_eq!(a.ctx.next_deadline(), None);
}
