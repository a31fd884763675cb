//! `RoceNic` over an in-memory frame device, and `QpTransport`'s
//! retransmission timer.

use std::collections::VecDeque;

use netfront::frame::{FrameDevice, FrameError, LinkInfo, RxFrame, TxFrame};
use rdma_passthrough::nic::{is_roce_v2, QpTransport, RoceNic, Transport};
use rdma_passthrough::packet::Endpoints;
use rdma_passthrough::psn::Psn;
use rdma_passthrough::rc::{CompletionKind, QpConfig, QueuePair, SendOp, Status};

/// A frame device in memory: frames to receive, frames sent, a number of
/// transmit buffers per poll, buffers contiguous or not.
#[derive(Default)]
struct MemDev {
    rx: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    /// Transmit buffers left until the next poll (`None`: unlimited).
    buffers: Option<usize>,
    per_poll: Option<usize>,
    scattered: bool,
    waits: Vec<Option<u64>>,
}

struct MemTx {
    buf: Vec<u8>,
    scattered: bool,
}

impl TxFrame for MemTx {
    fn len(&self) -> usize {
        self.buf.len()
    }
    fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }
    fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        (!self.scattered).then_some(&mut self.buf[..])
    }
    fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), FrameError> {
        let frame_len = self.buf.len();
        let oob = FrameError::OutOfRange {
            offset,
            len: data.len(),
            frame_len,
        };
        self.buf
            .get_mut(offset..offset + data.len())
            .ok_or(oob)?
            .copy_from_slice(data);
        Ok(())
    }
    fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), FrameError> {
        let frame_len = self.buf.len();
        let oob = FrameError::OutOfRange {
            offset,
            len: out.len(),
            frame_len,
        };
        out.copy_from_slice(self.buf.get(offset..offset + out.len()).ok_or(oob)?);
        Ok(())
    }
}

struct MemRx {
    buf: Vec<u8>,
    scattered: bool,
}

impl RxFrame for MemRx {
    fn len(&self) -> usize {
        self.buf.len()
    }
    fn as_slice(&self) -> Option<&[u8]> {
        (!self.scattered).then_some(&self.buf[..])
    }
    fn fragment(&self, index: usize) -> Option<&[u8]> {
        (index == 0).then_some(&self.buf[..])
    }
    fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), FrameError> {
        let frame_len = self.buf.len();
        let oob = FrameError::OutOfRange {
            offset,
            len: out.len(),
            frame_len,
        };
        out.copy_from_slice(self.buf.get(offset..offset + out.len()).ok_or(oob)?);
        Ok(())
    }
}

const MAX_FRAME: usize = 1514;

impl FrameDevice for MemDev {
    type Tx = MemTx;
    type Rx = MemRx;

    fn link(&self) -> LinkInfo {
        LinkInfo {
            up: true,
            mac: [2, 0, 0, 0, 0, 9],
            mtu: 1500,
            max_frame: MAX_FRAME,
        }
    }
    fn tx_buffer(&mut self, len: usize) -> Result<Option<MemTx>, FrameError> {
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME,
            });
        }
        match &mut self.buffers {
            Some(0) => return Ok(None),
            Some(n) => *n -= 1,
            None => {}
        }
        Ok(Some(MemTx {
            buf: vec![0xee; len],
            scattered: self.scattered,
        }))
    }
    fn send(&mut self, frame: MemTx) -> Result<(), FrameError> {
        self.sent.push(frame.buf);
        Ok(())
    }
    fn receive(&mut self) -> Result<Option<MemRx>, FrameError> {
        Ok(self.rx.pop_front().map(|buf| MemRx {
            buf,
            scattered: self.scattered,
        }))
    }
    fn poll(&mut self) -> Result<bool, FrameError> {
        if let Some(p) = self.per_poll {
            self.buffers = Some(p);
        }
        Ok(false)
    }
    fn wait(&mut self, timeout_ns: Option<u64>) -> Result<bool, FrameError> {
        self.waits.push(timeout_ns);
        Ok(false)
    }
}

/// A transport that records what it is given and sends what it is told.
#[derive(Default)]
struct Recorder {
    handled: Vec<(Vec<u8>, u64)>,
    out: VecDeque<Vec<u8>>,
    deadline: Option<u64>,
    timers: Vec<u64>,
}

impl Transport for Recorder {
    fn handle_frame(&mut self, frame: &[u8], now_ns: u64) {
        self.handled.push((frame.to_vec(), now_ns));
    }
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }
    fn on_time(&mut self, now_ns: u64) {
        self.timers.push(now_ns);
        self.deadline = None;
    }
    fn next_deadline(&self) -> Option<u64> {
        self.deadline
    }
}

/// A transport that builds its frames in place (`emit_into`) and refuses
/// `next_frame`'s allocating path unless told to drop a frame.
#[derive(Default)]
struct InPlace {
    out: VecDeque<Vec<u8>>,
    /// Frames taken with `next_frame` (the driver drops them).
    taken: usize,
}

impl Transport for InPlace {
    fn handle_frame(&mut self, _: &[u8], _: u64) {}
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        let f = self.out.pop_front()?;
        self.taken += 1;
        Some(f)
    }
    fn next_frame_len(&self) -> Option<usize> {
        self.out.front().map(Vec::len)
    }
    fn emit_into(&mut self, out: &mut [u8]) -> Option<usize> {
        let n = self.out.front()?.len();
        out.get_mut(..n)?.copy_from_slice(self.out.front()?);
        self.out.pop_front();
        Some(n)
    }
    fn on_time(&mut self, _: u64) {}
    fn next_deadline(&self) -> Option<u64> {
        None
    }
}

#[test]
fn in_place_frames_wait_for_buffers_and_go_through_scattered_ones() {
    let dev = MemDev {
        buffers: Some(1),
        per_poll: Some(1),
        ..MemDev::default()
    };
    let t = InPlace {
        out: [
            vec![1; 60],
            vec![9; MAX_FRAME + 1],
            vec![2; 70],
            vec![3; 80],
        ]
        .into(),
        taken: 0,
    };
    let mut nic = RoceNic::new(dev, t);
    nic.poll(0).unwrap();
    assert_eq!(nic.device().sent, vec![vec![1; 60]]);
    // The oversized frame was taken off the queue and dropped, the next
    // one waits for a buffer.
    assert_eq!(nic.stats().tx_refused, 1);
    assert_eq!(nic.transport().taken, 1);
    assert_eq!(nic.stats().tx_stalls, 1);
    assert_eq!(
        nic.transport().out.len(),
        2,
        "the waiting frames stay queued"
    );
    nic.device_mut().scattered = true;
    nic.poll(1).unwrap();
    assert_eq!(nic.device().sent.len(), 2);
    nic.poll(2).unwrap();
    assert_eq!(
        nic.device().sent,
        vec![vec![1; 60], vec![2; 70], vec![3; 80]]
    );
    assert_eq!(nic.stats().tx_frames, 3);
    assert!(nic.transport().out.is_empty());
}

#[test]
fn a_queue_pair_emits_in_place_what_it_transmits() {
    let mut a = qp(1, 2, 3);
    let mut b = qp(1, 2, 3);
    for q in [&mut a, &mut b] {
        for i in 0..3 {
            q.post_send(
                i,
                SendOp::Send {
                    data: vec![i as u8; 300],
                    imm: None,
                },
            )
            .unwrap();
        }
    }
    let mut buf = vec![0u8; 2048];
    while let Some(f) = a.transmit() {
        let len = b.next_frame_len().unwrap();
        assert_eq!(len, f.len());
        assert_eq!(b.emit_into(&mut buf[..len - 1]), None, "too short: kept");
        assert_eq!(b.emit_into(&mut buf), Some(len));
        assert_eq!(&buf[..len], &f[..]);
    }
    assert_eq!(b.next_frame_len(), None);
    assert_eq!(b.emit_into(&mut buf), None);
}

#[test]
fn recycled_receive_buffers_carry_nothing_over() {
    let mut a = qp(1, 2, 3);
    let mut b = qp(2, 1, 3);
    let mut last_ptr = None;
    for (i, len) in [(0u64, 200usize), (1, 20), (2, 120)] {
        b.post_recv(i, 256);
        a.post_send(
            i,
            SendOp::Send {
                data: vec![i as u8 + 1; len],
                imm: None,
            },
        )
        .unwrap();
        while let Some(f) = a.transmit() {
            b.receive(&f);
        }
        let c = b.poll_completion().unwrap();
        let CompletionKind::Recv { data, .. } = c.kind else {
            panic!("not a receive: {c:?}");
        };
        assert_eq!(data, vec![i as u8 + 1; len], "only this SEND's bytes");
        if let Some(p) = last_ptr {
            assert_eq!(data.as_ptr(), p, "the given-back buffer is reused");
        }
        last_ptr = Some(data.as_ptr());
        b.recycle(data);
        while let Some(f) = b.transmit() {
            a.receive(&f);
        }
    }
}

fn endpoints(from: u8, to: u8) -> Endpoints {
    Endpoints {
        dst_mac: [2, 0, 0, 0, 0, to],
        src_mac: [2, 0, 0, 0, 0, from],
        src_ip: [10, 0, 0, from],
        dst_ip: [10, 0, 0, to],
        src_port: 0xc000,
        tos: 0,
        ttl: 64,
        ip_id: 0,
    }
}

fn qp(me: u8, peer: u8, retry_limit: u32) -> QueuePair {
    QueuePair::new(QpConfig {
        qpn: u32::from(me),
        dest_qpn: u32::from(peer),
        pkey: 0xffff,
        pmtu: 256,
        send_psn: Psn::from_masked(100 * u32::from(me)),
        recv_psn: Psn::from_masked(100 * u32::from(peer)),
        retry_limit,
        endpoints: endpoints(me, peer),
    })
    .unwrap()
}

/// A real RoCE v2 frame (a SEND from a queue pair).
fn roce_frame() -> Vec<u8> {
    let mut q = qp(1, 2, 3);
    q.post_send(
        0,
        SendOp::Send {
            data: vec![7; 10],
            imm: None,
        },
    )
    .unwrap();
    q.transmit().unwrap()
}

/// An IPv4 UDP frame to `port` (not RoCE unless 4791).
fn udp_frame(port: u16) -> Vec<u8> {
    let mut f = roce_frame();
    f[36..38].copy_from_slice(&port.to_be_bytes());
    f
}

#[test]
fn roce_frames_go_to_the_transport_and_the_others_to_the_callback() {
    let arp = {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        f
    };
    assert!(is_roce_v2(&roce_frame()));
    assert!(!is_roce_v2(&udp_frame(4792)));
    assert!(!is_roce_v2(&arp));
    assert!(!is_roce_v2(&[]));

    let mut dev = MemDev::default();
    dev.rx.extend([arp.clone(), roce_frame(), udp_frame(53)]);
    let mut nic = RoceNic::new(dev, Recorder::default());
    // Without a callback, others are counted and dropped.
    assert!(nic.poll(5).unwrap());
    assert_eq!(nic.transport().handled, vec![(roce_frame(), 5)]);
    assert_eq!(nic.stats().rx_roce, 1);
    assert_eq!(nic.stats().rx_other_dropped, 2);

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    nic.on_other_frame(Box::new(move |f| s.lock().unwrap().push(f.to_vec())));
    // Scattered frames are read with read_at.
    nic.device_mut().scattered = true;
    nic.device_mut().rx.extend([arp.clone(), roce_frame()]);
    nic.poll(6).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![arp]);
    assert_eq!(nic.transport().handled.len(), 2);
    assert_eq!(nic.transport().handled[1], (roce_frame(), 6));
    assert_eq!(nic.stats().rx_other, 1);
}

#[test]
fn frames_wait_for_transmit_buffers_in_order() {
    let dev = MemDev {
        buffers: Some(1),
        per_poll: Some(1),
        ..MemDev::default()
    };
    let mut t = Recorder::default();
    t.out.extend([vec![1; 60], vec![2; 70], vec![3; 80]]);
    let mut nic = RoceNic::new(dev, t);
    nic.poll(0).unwrap();
    assert_eq!(nic.device().sent, vec![vec![1; 60]]);
    assert!(nic.stats().tx_stalls >= 1);
    nic.poll(1).unwrap();
    nic.poll(2).unwrap();
    nic.poll(3).unwrap();
    assert_eq!(
        nic.device().sent,
        vec![vec![1; 60], vec![2; 70], vec![3; 80]]
    );
    assert_eq!(nic.stats().tx_frames, 3);
}

#[test]
fn scattered_buffers_are_written_in_place_too_and_oversized_frames_dropped() {
    let dev = MemDev {
        scattered: true,
        ..MemDev::default()
    };
    let mut t = Recorder::default();
    t.out.extend([vec![9; MAX_FRAME + 1], vec![4; 100]]);
    let mut nic = RoceNic::new(dev, t);
    nic.poll(0).unwrap();
    assert_eq!(nic.device().sent, vec![vec![4; 100]]);
    assert_eq!(nic.stats().tx_refused, 1);
}

#[test]
fn timers_run_when_due_and_bound_the_wait() {
    let t = Recorder {
        deadline: Some(1_000),
        ..Recorder::default()
    };
    let mut nic = RoceNic::new(MemDev::default(), t);
    nic.poll(999).unwrap();
    assert!(nic.transport().timers.is_empty());
    // The wait stops at the deadline, or earlier at the caller's timeout.
    nic.wait(400, Some(10_000)).unwrap();
    nic.wait(400, Some(100)).unwrap();
    nic.wait(400, None).unwrap();
    assert_eq!(nic.device().waits, vec![Some(600), Some(100), Some(600)]);
    // Past the deadline: no wait at all.
    assert!(!nic.wait(1_000, Some(10_000)).unwrap());
    assert_eq!(nic.device().waits.len(), 3);
    nic.poll(1_000).unwrap();
    assert_eq!(nic.transport().timers, vec![1_000]);
    // No timer: only the caller's limit.
    nic.wait(2_000, None).unwrap();
    assert_eq!(nic.device().waits.last(), Some(&None));
}

#[test]
fn the_timer_resends_what_was_lost_and_stops_when_all_is_acknowledged() {
    let mut a = QpTransport::new(qp(1, 2, 3), 1_000);
    let mut b = QpTransport::new(qp(2, 1, 3), 1_000);
    b.qp_mut().post_recv(0, 64);
    a.on_time(10);
    assert_eq!(a.next_deadline(), None, "nothing sent, no timer");
    a.qp_mut()
        .post_send(
            7,
            SendOp::Send {
                data: vec![5; 40],
                imm: None,
            },
        )
        .unwrap();
    let lost = a.next_frame().unwrap();
    assert_eq!(a.next_deadline(), Some(1_010));
    assert_eq!(a.next_frame(), None);
    a.on_time(500);
    assert_eq!(a.next_frame(), None, "not yet due");
    a.on_time(1_010);
    assert_eq!(a.timeouts(), 1);
    assert_eq!(a.qp().stats().retransmitted, 1);
    let again = a.next_frame().unwrap();
    assert_eq!(again, lost);
    assert_eq!(a.next_deadline(), Some(2_010));
    b.handle_frame(&again, 1_100);
    let ack = b.next_frame().unwrap();
    // A corrupted copy of the ACK changes nothing.
    let mut bad = ack.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    a.handle_frame(&bad, 1_200);
    assert_eq!(a.next_deadline(), Some(2_010));
    a.handle_frame(&ack, 1_300);
    assert_eq!(a.next_deadline(), None, "everything acknowledged");
    let c = a.qp_mut().poll_completion().unwrap();
    assert_eq!(
        (c.wr_id, c.status, c.kind),
        (7, Status::Success, CompletionKind::Send)
    );
    let r = b.qp_mut().poll_completion().unwrap();
    assert!(matches!(r.kind, CompletionKind::Recv { ref data, .. } if data == &vec![5; 40]));
    // B sent only an ACK: no timer of its own.
    assert_eq!(b.next_deadline(), None);
}

#[test]
fn an_ack_of_part_restarts_the_timer() {
    let mut a = QpTransport::new(qp(1, 2, 3), 1_000);
    let mut b = QpTransport::new(qp(2, 1, 3), 1_000);
    b.qp_mut().post_recv(0, 64);
    b.qp_mut().post_recv(1, 64);
    a.qp_mut()
        .post_send(
            1,
            SendOp::Send {
                data: vec![1; 8],
                imm: None,
            },
        )
        .unwrap();
    a.qp_mut()
        .post_send(
            2,
            SendOp::Send {
                data: vec![2; 8],
                imm: None,
            },
        )
        .unwrap();
    let first = a.next_frame().unwrap();
    let _second_lost = a.next_frame().unwrap();
    assert_eq!(a.next_deadline(), Some(1_000));
    b.handle_frame(&first, 200);
    let ack = b.next_frame().unwrap();
    a.handle_frame(&ack, 300);
    assert_eq!(
        a.next_deadline(),
        Some(1_300),
        "progress restarts the timer; the second is still out"
    );
}

#[test]
fn a_peer_that_never_answers_fails_the_queue_pair_after_the_retries() {
    let mut a = QpTransport::new(qp(1, 2, 2), 1_000);
    a.qp_mut()
        .post_send(
            3,
            SendOp::Write {
                data: vec![1; 4],
                va: 0,
                rkey: 1,
                imm: None,
            },
        )
        .unwrap();
    while a.next_frame().is_some() {}
    while let Some(d) = a.next_deadline() {
        a.on_time(d);
        while a.next_frame().is_some() {}
        assert!(d < 100_000, "the timer never gave up");
    }
    assert!(a.qp().is_error());
    assert_eq!(a.timeouts(), 3);
    let c = a.qp_mut().poll_completion().unwrap();
    assert_eq!((c.wr_id, c.status), (3, Status::RetryExceeded));
}

/// What a received frame produces leaves at the next poll, after a request
/// the application posted in answer (the pong before the ping's ACK);
/// `wait` sends what waits before it blocks.
#[test]
fn acknowledgements_leave_at_the_next_poll_after_the_answer() {
    use rdma_passthrough::opcode::Opcode;
    use rdma_passthrough::packet::parse;

    let mut a = QpTransport::new(qp(1, 2, 3), 1_000_000);
    a.qp_mut().post_recv(0, 64);
    a.qp_mut()
        .post_send(
            1,
            SendOp::Send {
                data: vec![1; 16],
                imm: None,
            },
        )
        .unwrap();
    let ping = a.next_frame().unwrap();
    let mut b = RoceNic::new(MemDev::default(), QpTransport::new(qp(2, 1, 3), 1_000_000));
    b.transport_mut().qp_mut().post_recv(0, 64);
    b.device_mut().rx.push_back(ping);
    b.poll(10).unwrap();
    assert!(
        b.device().sent.is_empty(),
        "the ACK waits for the next poll"
    );
    let got = b.transport_mut().qp_mut().poll_completion().unwrap();
    assert!(matches!(got.kind, CompletionKind::Recv { ref data, .. } if data == &vec![1; 16]));
    b.transport_mut()
        .qp_mut()
        .post_send(
            2,
            SendOp::Send {
                data: vec![2; 16],
                imm: None,
            },
        )
        .unwrap();
    b.poll(20).unwrap();
    let opcodes: Vec<Opcode> = b
        .device()
        .sent
        .iter()
        .map(|f| parse(f).unwrap().headers.bth.opcode)
        .collect();
    assert_eq!(opcodes, [Opcode::SendOnly, Opcode::Acknowledge]);
    // Both reach A: its send and the pong complete.
    for f in b.device_mut().sent.drain(..) {
        a.handle_frame(&f, 30);
    }
    let kinds: Vec<_> = std::iter::from_fn(|| a.qp_mut().poll_completion())
        .map(|c| c.kind)
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(kinds.contains(&CompletionKind::Send));
    // A's ACK of the pong: queued by the frame, sent by `wait` before it
    // blocks.
    let mut a = RoceNic::new(MemDev::default(), a);
    assert!(a.transport().next_frame_len().is_some());
    a.wait(40, Some(5)).unwrap();
    assert_eq!(a.device().sent.len(), 1);
    assert_eq!(a.device().waits, [Some(5)]);
    assert_eq!(a.transport().next_frame_len(), None);
}

/// A received frame that makes a completion ends the poll's receiving:
/// the pong is handed over before the ACK behind it in the device, which
/// the next poll handles (after the request posted in answer has left).
/// Frames that make no completion do not stop it.
#[test]
fn a_completion_ends_the_receiving_of_a_poll() {
    use rdma_passthrough::opcode::Opcode;
    use rdma_passthrough::packet::parse;

    // B sends a ping; A answers it with a pong, and B's device then holds
    // the pong and the ACK of the ping, in that order.
    let mut a = QpTransport::new(qp(1, 2, 3), 1_000_000);
    let mut b = RoceNic::new(MemDev::default(), QpTransport::new(qp(2, 1, 3), 1_000_000));
    a.qp_mut().post_recv(0, 64);
    b.transport_mut().qp_mut().post_recv(0, 64);
    let send = |d: u8| SendOp::Send {
        data: vec![d; 16],
        imm: None,
    };
    b.transport_mut().qp_mut().post_send(1, send(1)).unwrap();
    b.poll(10).unwrap();
    let ping = b.device_mut().sent.pop().unwrap();
    a.handle_frame(&ping, 20);
    assert!(a.qp_mut().poll_completion().is_some(), "the ping arrived");
    a.qp_mut().post_send(2, send(2)).unwrap();
    let pong = a.next_frame().unwrap();
    let ack = a.next_frame().unwrap();
    assert_eq!(parse(&pong).unwrap().headers.bth.opcode, Opcode::SendOnly);
    assert_eq!(parse(&ack).unwrap().headers.bth.opcode, Opcode::Acknowledge);
    b.device_mut().rx.extend([pong, ack]);

    assert!(b.poll(30).unwrap());
    assert_eq!(b.device().rx.len(), 1, "the ACK behind the pong waits");
    assert_eq!(b.stats().rx_roce, 1);
    let c = b.transport_mut().qp_mut().poll_completion().unwrap();
    assert!(matches!(c.kind, CompletionKind::Recv { ref data, .. } if data == &vec![2; 16]));
    assert!(b.transport_mut().qp_mut().poll_completion().is_none());

    // The next ping is posted; the next poll sends it, then takes the ACK,
    // which completes the first ping.
    b.transport_mut().qp_mut().post_recv(1, 64);
    b.transport_mut().qp_mut().post_send(3, send(3)).unwrap();
    b.poll(40).unwrap();
    assert!(b.device().rx.is_empty());
    assert_eq!(b.stats().rx_roce, 2);
    let first = parse(&b.device().sent[0]).unwrap().headers.bth.opcode;
    assert_eq!(first, Opcode::SendOnly, "the next ping left first");
    let c = b.transport_mut().qp_mut().poll_completion().unwrap();
    assert_eq!((c.wr_id, c.kind), (1, CompletionKind::Send));

    // Frames that make no completion do not stop a poll: two ACKs at a
    // queue pair with nothing outstanding (stale) are both handled at once.
    a.handle_frame(&b.device_mut().sent.remove(0), 50);
    let ack = a.next_frame().unwrap();
    let mut c = RoceNic::new(MemDev::default(), QpTransport::new(qp(2, 1, 3), 1_000_000));
    c.device_mut().rx.extend([ack.clone(), ack]);
    c.poll(60).unwrap();
    assert!(c.device().rx.is_empty());
    assert_eq!(c.stats().rx_roce, 2);
}

/// An RDMA WRITE placed in a region ends a poll's receiving as a
/// completion does: an application polling its memory sees the bytes
/// before the frames behind them are handled.
#[test]
fn a_placed_write_ends_the_receiving_of_a_poll() {
    use rdma_passthrough::rc::MemoryRegion;

    let mut a = QpTransport::new(qp(1, 2, 3), 1_000_000);
    let mut b = RoceNic::new(MemDev::default(), QpTransport::new(qp(2, 1, 3), 1_000_000));
    b.transport_mut().qp_mut().register(MemoryRegion {
        va: 0x1000,
        rkey: 0x42,
        remote_write: true,
        data: vec![0; 32],
    });
    for (i, d) in [7u8, 8].into_iter().enumerate() {
        a.qp_mut()
            .post_send(
                i as u64,
                SendOp::Write {
                    data: vec![d; 32],
                    va: 0x1000,
                    rkey: 0x42,
                    imm: None,
                },
            )
            .unwrap();
    }
    let w1 = a.next_frame().unwrap();
    let w2 = a.next_frame().unwrap();
    b.device_mut().rx.extend([w1, w2]);
    b.poll(10).unwrap();
    assert_eq!(b.stats().rx_roce, 1, "the second WRITE waits");
    assert_eq!(b.transport().qp().writes_placed(), 1);
    assert_eq!(b.transport().qp().region(0).unwrap().data, vec![7; 32]);
    b.poll(20).unwrap();
    assert_eq!(b.transport().qp().writes_placed(), 2);
    assert_eq!(b.transport().qp().region(0).unwrap().data, vec![8; 32]);
    assert!(b.device().rx.is_empty());
}
