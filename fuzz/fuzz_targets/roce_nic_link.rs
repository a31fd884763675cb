//! The RoCE v2 transport over the hosted frame link with a hostile peer:
//! the peer writes anything into the shared rings (indices, lengths,
//! slots) or sends fuzzer-chosen frames through its end, while this end's
//! `RoceNic` polls, waits and runs its queue pair's timer. Never panics;
//! once the link reports itself broken, every poll fails the same way.
#![no_main]

use arbitrary::Arbitrary;
use hosted::framelink::FrameLink;
use libfuzzer_sys::fuzz_target;
use netfront::frame::{FrameDevice, FrameError, TxFrame};
use rdma_passthrough::nic::{QpTransport, RoceNic};
use rdma_passthrough::packet::Endpoints;
use rdma_passthrough::psn::Psn;
use rdma_passthrough::rc::{MemoryRegion, QpConfig, QueuePair, SendOp};

#[derive(Arbitrary, Debug)]
enum Step {
    /// The peer writes bytes anywhere in the shared region.
    Poke { offset: u16, bytes: Vec<u8> },
    /// The peer writes one of the four ring indices.
    Index { which: u8, value: u32 },
    /// The peer sends a frame through its end (a well-formed slot).
    PeerSend(Vec<u8>),
    /// The peer takes a frame this end sent.
    PeerReceive,
    /// This end posts a SEND or a WRITE.
    Post { len: u16, write: bool },
    /// This end polls, `advance_us` later.
    Poll { advance_us: u16 },
    /// This end waits (bounded).
    Wait,
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
    let Ok((mine, mut peer)) = FrameLink::pair(4, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]) else {
        return;
    };
    let mut qp = QueuePair::new(QpConfig {
        qpn: 0x11,
        dest_qpn: 0x22,
        pkey: 0xffff,
        pmtu: 256,
        send_psn: Psn::from_masked(0xff_fffe),
        recv_psn: Psn::from_masked(5),
        retry_limit: 3,
        endpoints: endpoints(),
    })
    .expect("a valid configuration");
    qp.register(MemoryRegion {
        va: 0x1000,
        rkey: 7,
        remote_write: true,
        data: vec![0; 1024],
    });
    qp.post_recv(1, 512);
    let mut nic = RoceNic::new(mine, QpTransport::new(qp, 1_000_000));
    let mut now = 0u64;
    let mut broken = false;
    for step in steps.into_iter().take(256) {
        match step {
            Step::Poke { offset, bytes } => {
                let region = nic.device().region_len();
                let at = usize::from(offset) % region;
                nic.device()
                    .hostile_write(at, &bytes[..bytes.len().min(region - at)]);
            }
            Step::Index { which, value } => {
                nic.device()
                    .hostile_write(usize::from(which % 4) * 64, &value.to_ne_bytes());
            }
            Step::PeerSend(bytes) => {
                if let Ok(Some(mut t)) = peer.tx_buffer(bytes.len().max(1)) {
                    let _ = t.write_at(0, &bytes);
                    let _ = peer.send(t);
                }
            }
            Step::PeerReceive => {
                let _ = peer.receive();
            }
            Step::Post { len, write } => {
                let data = vec![0x5a; usize::from(len) % 1200];
                let op = if write {
                    SendOp::Write {
                        data,
                        va: 0x1000,
                        rkey: 7,
                        imm: None,
                    }
                } else {
                    SendOp::Send { data, imm: None }
                };
                let _ = nic.transport_mut().qp_mut().post_send(1, op);
            }
            Step::Poll { advance_us } => {
                now += u64::from(advance_us) * 1000;
                match nic.poll(now) {
                    Ok(_) => assert!(!broken, "a broken link worked again"),
                    Err(FrameError::Broken(_)) => broken = true,
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            // A wait past the timer's deadline returns without asking the
            // device, so only polls must keep failing.
            Step::Wait => match nic.wait(now, Some(1_000)) {
                Ok(_) => {}
                Err(FrameError::Broken(_)) => broken = true,
                Err(e) => panic!("unexpected error {e}"),
            },
        }
        while nic.transport_mut().qp_mut().poll_completion().is_some() {}
    }
});
