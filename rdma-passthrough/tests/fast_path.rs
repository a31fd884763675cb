//! The fast paths against the general ones: a message posted from a
//! borrowed slice (`QueuePair::post_message`, the verbs send of one
//! scatter/gather entry) makes the same frames and completions as the
//! same message posted as an owned `SendOp` (or gathered from several
//! entries), and a SEND placed in the receive's scatter list as it arrives
//! (the verbs context) ends as the bytes a queue pair hands over in its
//! completion.

use proptest::prelude::*;

use rdma_passthrough::packet::Endpoints;
use rdma_passthrough::psn::Psn;
use rdma_passthrough::rc::{Completion, CompletionKind, MemoryRegion, QpConfig, QueuePair, SendOp};
use rdma_passthrough::verbs::*;

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

fn qp(qpn: u32, dest: u32, send: u32, recv: u32, from: u8, to: u8) -> QueuePair {
    let mut q = QueuePair::new(QpConfig {
        qpn,
        dest_qpn: dest,
        pkey: 0xffff,
        pmtu: PMTU,
        send_psn: Psn::from_masked(send),
        recv_psn: Psn::from_masked(recv),
        retry_limit: 7,
        endpoints: endpoints(from, to),
    })
    .unwrap();
    // One READ at a time: a second one waits in the send queue, and the
    // messages posted behind it take the send queue's path.
    q.set_rd_atomic(1, 4).unwrap();
    q.set_ack_req_interval(3);
    q
}

/// One work request of a generated sequence.
#[derive(Clone, Debug)]
enum Wr {
    Message {
        len: usize,
        write: bool,
        imm: Option<[u8; 4]>,
        signaled: bool,
    },
    Read {
        len: u32,
    },
}

fn wr() -> impl Strategy<Value = Wr> {
    prop_oneof![
        4 => (0usize..3 * PMTU + 5, any::<bool>(), any::<Option<[u8; 4]>>(), any::<bool>())
            .prop_map(|(len, write, imm, signaled)| Wr::Message { len, write, imm, signaled }),
        1 => (1u32..600).prop_map(|len| Wr::Read { len }),
    ]
}

const RKEY: u32 = 0x77;
const VA: u64 = 0x10_0000;

fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + seed * 13) as u8).collect()
}

fn drain(q: &mut QueuePair) -> Vec<Vec<u8>> {
    core::iter::from_fn(|| q.transmit()).collect()
}

fn completions(q: &mut QueuePair) -> Vec<Completion> {
    core::iter::from_fn(|| q.poll_completion()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `post_message` from a slice and `post_send`/`post_send_unsignaled`
    /// of the same message as a `SendOp` emit byte-identical frames (at
    /// once, or later from the send queue behind a READ), take the same
    /// ACKs and READ responses to the same completions, and a responder
    /// given either's frames completes the same receives.
    #[test]
    fn a_message_from_a_slice_is_the_message_from_an_op(
        wrs in proptest::collection::vec(wr(), 1..24),
        deliver_every in 1usize..4,
    ) {
        let mut fast = qp(0x11, 0x22, 0xff_fff0, 0x100, 1, 2);
        let mut slow = qp(0x11, 0x22, 0xff_fff0, 0x100, 1, 2);
        let mut resp = qp(0x22, 0x11, 0x100, 0xff_fff0, 2, 1);
        resp.register(MemoryRegion { va: VA, rkey: RKEY, remote_write: true, data: vec![0; 4096] });
        for _ in 0..wrs.len() {
            resp.post_recv(0, 4 * PMTU);
        }
        for (i, w) in wrs.iter().enumerate() {
            let id = i as u64;
            match *w {
                Wr::Message { len, write, imm, signaled } => {
                    let data = payload(i, len);
                    let remote = write.then_some((VA + 64, RKEY));
                    let a = fast.post_message(id, &data, remote, imm, signaled);
                    let op = match remote {
                        None => SendOp::Send { data: data.clone(), imm },
                        Some((va, rkey)) => SendOp::Write { data: data.clone(), va, rkey, imm },
                    };
                    let b = if signaled {
                        slow.post_send(id, op)
                    } else {
                        slow.post_send_unsignaled(id, op)
                    };
                    prop_assert_eq!(a, b);
                }
                Wr::Read { len } => {
                    let op = SendOp::Read { va: VA, rkey: RKEY, len };
                    prop_assert_eq!(fast.post_send(id, op.clone()), slow.post_send(id, op));
                }
            }
            prop_assert_eq!(fast.send_queue_len(), slow.send_queue_len());
            if i % deliver_every == 0 {
                let (fa, sl) = (drain(&mut fast), drain(&mut slow));
                prop_assert_eq!(&fa, &sl);
                for f in &fa {
                    resp.receive(f);
                }
                for f in drain(&mut resp) {
                    fast.receive(&f);
                    slow.receive(&f);
                }
                prop_assert_eq!(completions(&mut fast), completions(&mut slow));
            }
        }
        // Everything out, answered, completed.
        for _ in 0..8 {
            let (fa, sl) = (drain(&mut fast), drain(&mut slow));
            prop_assert_eq!(&fa, &sl);
            for f in &fa {
                resp.receive(f);
            }
            for f in drain(&mut resp) {
                fast.receive(&f);
                slow.receive(&f);
            }
        }
        prop_assert_eq!(completions(&mut fast), completions(&mut slow));
        prop_assert_eq!(fast.send_queue_len(), 0);
        prop_assert_eq!(format!("{:?}", fast.stats()), format!("{:?}", slow.stats()));
        prop_assert_eq!(resp.stats().malformed + resp.stats().out_of_sequence, 0);
    }
}

// The verbs context.

const ALL: AccessFlags = AccessFlags(1 | 2 | 4 | 8);

struct Node {
    ctx: Context,
    cq: CqHandle,
    qp: QpHandle,
    mr: MrHandle,
}

impl Node {
    fn new(me: u8) -> Node {
        let mut ctx = Context::new([2, 0, 0, 0, 0, me], [10, 0, 0, me]);
        let pd = ctx.alloc_pd().unwrap();
        let cq = ctx.create_cq(256).unwrap();
        let init = QpInitAttr {
            send_cq: cq,
            recv_cq: cq,
            max_send_wr: 64,
            max_recv_wr: 64,
            max_send_sge: 4,
            max_recv_sge: 4,
            sq_sig_all: false,
        };
        let qp = ctx.create_qp(pd, &init).unwrap();
        let mr = ctx.reg_mr(pd, 16384, ALL).unwrap();
        Node { ctx, cq, qp, mr }
    }

    fn sge(&self, offset: u64, length: u32) -> Sge {
        let i = self.ctx.mr_info(self.mr).unwrap();
        Sge {
            addr: i.addr + offset,
            length,
            lkey: i.lkey,
        }
    }

    fn connect(&mut self, peer: &Node, sq_psn: u32, rq_psn: u32) {
        let mut a = QpAttr::to(QpState::Init);
        a.pkey_index = Some(0);
        a.port_num = Some(1);
        a.qp_access_flags = Some(ALL);
        self.ctx.modify_qp(self.qp, &a).unwrap();
        let mut a = QpAttr::to(QpState::Rtr);
        a.ah_attr = Some(AhAttr {
            dgid: ipv4_gid(peer.ctx.ipv4()),
            dmac: peer.ctx.mac(),
            hop_limit: 64,
            traffic_class: 0,
        });
        a.path_mtu = Some(PathMtu::Mtu256);
        a.dest_qp_num = Some(peer.qp.qp_num());
        a.rq_psn = Some(rq_psn);
        a.max_dest_rd_atomic = Some(4);
        a.min_rnr_timer = Some(1);
        self.ctx.modify_qp(self.qp, &a).unwrap();
        let mut a = QpAttr::to(QpState::Rts);
        a.sq_psn = Some(sq_psn);
        a.timeout = Some(14);
        a.retry_cnt = Some(7);
        a.rnr_retry = Some(7);
        a.max_rd_atomic = Some(4);
        self.ctx.modify_qp(self.qp, &a).unwrap();
    }
}

/// How a scatter/gather list of `len` bytes at `base` is cut: entries
/// ending at each cut.
fn cut(node: &Node, base: u64, len: u32, cuts: &[u32]) -> Vec<Sge> {
    let mut ends: Vec<u32> = cuts.iter().map(|c| c % (len + 1)).collect();
    ends.push(len);
    ends.sort_unstable();
    ends.dedup();
    let mut at = 0;
    let mut out = Vec::new();
    for e in ends {
        if e > at || out.is_empty() {
            out.push(node.sge(base + u64::from(at), e - at));
        }
        at = e;
    }
    out
}

fn frames(ctx: &mut Context) -> Vec<Vec<u8>> {
    core::iter::from_fn(|| ctx.next_frame()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A verbs SEND or WRITE of one entry (the fast path) emits the frames
    /// of the same bytes gathered from several entries (the general path);
    /// the receiving context places each SEND in the receive's scatter
    /// list as it arrives, and ends with the bytes, length and immediate
    /// a bare queue pair given the same frames hands over in its
    /// completion; the WRITEs land where the queue pair's own region
    /// table puts them.
    #[test]
    fn verbs_fast_paths_match_the_general_ones(
        msgs in proptest::collection::vec(
            (1u32..900, any::<bool>(), any::<Option<u32>>(), proptest::collection::vec(any::<u32>(), 0..3)),
            1..10,
        ),
    ) {
        let mut one = Node::new(1);
        let mut many = Node::new(1);
        let mut b = Node::new(2);
        one.connect(&b, 0xff_fff8, 0x500);
        many.connect(&b, 0xff_fff8, 0x500);
        b.connect(&one, 0x500, 0xff_fff8);
        // The bare queue pair that sees the same frames as `b`.
        let mut bare = QueuePair::new(QpConfig {
            qpn: b.qp.qp_num(),
            dest_qpn: one.qp.qp_num(),
            pkey: 0xffff,
            pmtu: 256,
            send_psn: Psn::from_masked(0x500),
            recv_psn: Psn::from_masked(0xff_fff8),
            retry_limit: 7,
            endpoints: endpoints(2, 1),
        }).unwrap();
        let bi = b.ctx.mr_info(b.mr).unwrap();
        bare.register(MemoryRegion { va: bi.addr, rkey: bi.rkey, remote_write: true, data: vec![0; 16384] });
        for (i, (len, write, imm, cuts)) in msgs.iter().enumerate() {
            let (len, id) = (*len, i as u64);
            let bytes = payload(i, len as usize);
            for n in [&mut one, &mut many] {
                n.ctx.mr_bytes_mut(n.mr).unwrap()[..len as usize].copy_from_slice(&bytes);
            }
            let opcode = match (write, imm) {
                (false, None) => WrOpcode::Send,
                (false, Some(x)) => WrOpcode::SendWithImm(*x),
                (true, None) => WrOpcode::RdmaWrite { remote_addr: bi.addr + 8192, rkey: bi.rkey },
                (true, Some(x)) => WrOpcode::RdmaWriteWithImm { remote_addr: bi.addr + 8192, rkey: bi.rkey, imm: *x },
            };
            let signaled = i % 2 == 0;
            let wr1 = SendWr { wr_id: id, sg_list: vec![one.sge(0, len)], opcode, signaled };
            let mut sgl = cut(&many, 0, len, cuts);
            if sgl.len() == 1 {
                // Two entries, one of them empty: the general path.
                sgl.push(many.sge(u64::from(len), 0));
            }
            let wr2 = SendWr { wr_id: id, sg_list: sgl, opcode, signaled };
            // The receive: the same list cut another way.
            let rsgl = cut(&b, 4096, 1024, &[cuts.first().copied().unwrap_or(0) / 3]);
            let immediate = imm.is_some();
            if !*write || immediate {
                b.ctx.post_recv(b.qp, &RecvWr { wr_id: id, sg_list: rsgl.clone() }).unwrap();
                bare.post_recv(id, 1024);
            }
            one.ctx.post_send(one.qp, &wr1).unwrap();
            many.ctx.post_send(many.qp, &wr2).unwrap();
            let (f1, f2) = (frames(&mut one.ctx), frames(&mut many.ctx));
            prop_assert_eq!(&f1, &f2);
            for f in &f1 {
                b.ctx.handle_frame(f, 0);
                bare.receive(f);
            }
            // Acknowledge both senders alike.
            for f in frames(&mut b.ctx) {
                one.ctx.handle_frame(&f, 0);
                many.ctx.handle_frame(&f, 0);
            }
            let (w1, w2) = (one.ctx.poll_cq(one.cq, 8).unwrap(), many.ctx.poll_cq(many.cq, 8).unwrap());
            prop_assert_eq!(&w1, &w2);
            let got = b.ctx.poll_cq(b.cq, 8).unwrap();
            let want: Vec<Completion> = core::iter::from_fn(|| bare.poll_completion()).collect();
            prop_assert_eq!(got.len(), want.len());
            for (wc, c) in got.iter().zip(&want) {
                prop_assert_eq!(wc.status, WcStatus::Success);
                prop_assert_eq!(wc.wr_id, c.wr_id);
                match &c.kind {
                    CompletionKind::Recv { data, len, imm } => {
                        prop_assert_eq!(wc.opcode, WcOpcode::Recv);
                        prop_assert_eq!(wc.byte_len as usize, *len);
                        prop_assert_eq!(data.len(), *len);
                        prop_assert_eq!(wc.imm_data, imm.map(u32::from_be_bytes));
                        // The bytes, read back across the receive's list.
                        let mr = b.ctx.mr_bytes(b.mr).unwrap();
                        let mut placed = Vec::new();
                        for s in &rsgl {
                            let at = (s.addr - bi.addr) as usize;
                            placed.extend_from_slice(&mr[at..at + s.length as usize]);
                        }
                        prop_assert_eq!(&placed[..*len], &data[..]);
                        prop_assert_eq!(data, &bytes);
                    }
                    CompletionKind::RecvRdmaWithImm { len, imm } => {
                        prop_assert_eq!(wc.opcode, WcOpcode::RecvRdmaWithImm);
                        prop_assert_eq!(wc.byte_len as usize, *len);
                        prop_assert_eq!(wc.imm_data, Some(u32::from_be_bytes(*imm)));
                    }
                    other => prop_assert!(false, "unexpected completion {:?}", other),
                }
            }
            if *write {
                let l = len as usize;
                let region = bare.region(0).unwrap();
                prop_assert_eq!(&region.data[8192..8192 + l], &bytes[..]);
                prop_assert_eq!(&b.ctx.mr_bytes(b.mr).unwrap()[8192..8192 + l], &bytes[..]);
            }
        }
        let s = b.ctx.qp_stats(b.qp).unwrap();
        prop_assert_eq!(s.malformed + s.misaddressed + s.out_of_sequence + s.duplicates, 0);
    }
}
