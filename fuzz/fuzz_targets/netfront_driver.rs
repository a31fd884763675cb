//! The whole netfront driver (rings, pools, TX ids, RX chains, checksum
//! completion in place, reconnection) against a hostile backend on the
//! fake platform: arbitrary sequences of application sends and receives,
//! well-formed traffic, raw TX and RX responses with arbitrary fields,
//! arbitrary extras and producer indices, and backend restarts.
//!
//! Never panics; a broken device stays broken (every call says so) until
//! its connection ends; when everything is dropped no grant is left
//! granted or quarantined.
#![no_main]

use arbitrary::Arbitrary;
use grant_tables::fake::{FakeEventHub, FakeGrantFrames, FakeGrantHub, FakePlatform};
use grant_tables::{DomId, Platform};
use libfuzzer_sys::fuzz_target;
use netfront::abi::{NetifExtraInfo, NetifRxResponse, NetifTxResponse};
use netfront::testing::{linux_like, toolstack, RxOpts, TestBackend};
use netfront::tx::{Gso, GsoKind, TxChecksum, TxOffload};
use netfront::{DriverConfig, FrameDevice, FrameError, Netfront, RxFrame, TxFrame};

const FE: DomId = DomId(1);
const BE: DomId = DomId(0);

#[derive(Arbitrary, Debug)]
enum Op {
    Send { len: u16, partial: bool, gso: Option<u16> },
    PumpTx,
    RespondTx { own_id: bool, id: u16, status: i16 },
    Deliver { len: u16, csum_blank: bool, gso: Option<(u8, u16)> },
    RawRx { own_id: bool, id: u16, offset: u16, flags: u16, status: i16 },
    RawExtra { type_: u8, flags: u8, u: [u16; 3] },
    Push,
    PokeRxProd(u32),
    Poll,
    Receive { hold: bool },
    Restart,
}

#[derive(Arbitrary, Debug)]
struct Input {
    mtu_large: bool,
    headroom: bool,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let hub = FakeEventHub::new();
    let machine = FakeGrantHub::new();
    let fplat =
        FakePlatform::with_grant_hub(FE, hub.clone(), FakeGrantFrames::new(2).unwrap(), &machine);
    let mut cfg = DriverConfig {
        rx_buffers_per_queue: 256,
        tx_buffers_per_queue: 18,
        wait: netfront::WaitMode::Poll,
        ..DriverConfig::default()
    };
    if input.mtu_large {
        cfg.net.mtu = Some(65535);
    }
    if input.headroom {
        cfg.net.xdp_headroom = 256;
    }
    let mut fe = Netfront::new(fplat, cfg);
    let feats = linux_like(1);
    let info = toolstack([0, 0x16, 0x3e, 0, 0, 1]);
    let mut number = 1u64;
    let attach = |fe: &mut Netfront<FakePlatform>, number: u64| {
        fe.setup_negotiated(number, BE, &feats, &info).unwrap();
        let keys = fe.frontend_keys().to_vec();
        let bplat =
            FakePlatform::with_grant_hub(BE, hub.clone(), FakeGrantFrames::new(1).unwrap(), &machine);
        let be = TestBackend::attach(bplat, FE, &mut |k: &str| {
            keys.iter().find(|x| x.key == k).map(|x| x.value.clone())
        })
        .unwrap();
        fe.backend_connected();
        be
    };
    let mut be = Some(attach(&mut fe, number));
    let mut held = Vec::new();
    for op in input.ops.into_iter().take(64) {
        let b = be.as_mut().unwrap();
        match op {
            Op::Send { len, partial, gso } => {
                if let Ok(Some(mut buf)) = fe.tx_buffer(usize::from(len)) {
                    let n = buf.len();
                    let _ = buf.write_at(0, &vec![0x5a; n]);
                    buf.set_offload(TxOffload {
                        checksum: if partial { TxChecksum::Partial } else { TxChecksum::Complete },
                        gso: gso.map(|mss| Gso { kind: GsoKind::TcpV4, mss }),
                    });
                    let _ = fe.send(buf);
                }
            }
            Op::PumpTx => {
                let _ = b.pump_tx();
            }
            Op::RespondTx { own_id, id, status } => {
                if let Ok(Some((reqs, _))) = b.take_tx_packet(0) {
                    let id = if own_id { reqs[0].id } else { id };
                    let _ = b.respond_tx(0, NetifTxResponse { id, status });
                }
            }
            Op::Deliver { len, csum_blank, gso } => {
                let mut frame = vec![0u8; usize::from(len).max(14)];
                frame[12] = 0x08;
                let _ = b.deliver(0, &frame, RxOpts { csum_blank, data_validated: false, gso });
            }
            Op::RawRx { own_id, id, offset, flags, status } => {
                let id = match (own_id, b.next_rx_id(0)) {
                    (true, Ok(Some(own))) => own,
                    _ => id,
                };
                let _ = b.respond_rx_raw(0, NetifRxResponse { id, offset, flags, status });
            }
            Op::RawExtra { type_, flags, u } => {
                let _ = b.respond_rx_extra(0, NetifExtraInfo { type_, flags, u });
            }
            Op::Push => {
                let _ = b.push(0);
            }
            Op::PokeRxProd(v) => {
                let _ = b.poke_rx_rsp_prod(0, v);
            }
            Op::Poll => {
                let _ = fe.poll();
            }
            Op::Receive { hold } => {
                if let Ok(Some(f)) = fe.receive() {
                    let mut copy = vec![0u8; f.len()];
                    f.read_at(0, &mut copy).unwrap();
                    if let Some(s) = f.as_slice() {
                        assert_eq!(s, &copy[..]);
                    }
                    if hold && held.len() < 64 {
                        held.push(f);
                    }
                }
            }
            Op::Restart => {
                drop(be.take());
                fe.end_connection("restart");
                number += 1;
                be = Some(attach(&mut fe, number));
            }
        }
        if fe.broken().is_some() {
            assert!(matches!(fe.receive(), Err(FrameError::Broken(_))));
            assert!(matches!(fe.poll(), Err(FrameError::Broken(_))));
            assert!(!fe.link().up);
        }
    }
    drop(be);
    fe.end_connection("done");
    drop(held);
    let _ = fe.poll();
    let s = fe.platform().grant_table().unwrap().stats();
    assert_eq!((s.granted, s.quarantined), (0, 0), "{s:?}");
});
