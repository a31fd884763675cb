//! The driver against the in-process test backend on the fake platform
//! (no xenstore: the connection is set up from parsed keys, the backend
//! reads the frontend's keys from the driver's list).

use std::string::String;
use std::vec;
use std::vec::Vec;

use grant_tables::fake::{FakeEventHub, FakeGrantFrames, FakeGrantHub, FakePlatform};
use grant_tables::{DomId, Platform};

use crate::abi::*;
use crate::features::{BackendFeatures, FrontendInfo};
use crate::testing::{linux_like, toolstack, RxOpts, TestBackend};
use crate::tx::{Gso, GsoKind, TxChecksum, TxOffload};
use crate::{
    DriverConfig, FrameDevice, FrameError, NetError, Netfront, RxFrame, TxFrame, WaitMode,
};

pub(super) const FE: DomId = DomId(1);
pub(super) const BE: DomId = DomId(0);
pub(super) const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x00, 0x00, 0x01];

pub(super) struct Rig {
    pub fe: Netfront<FakePlatform>,
    pub be: Option<TestBackend<FakePlatform>>,
    pub hub: std::sync::Arc<FakeEventHub>,
    pub machine: std::sync::Arc<FakeGrantHub>,
    pub feats: BackendFeatures,
    pub info: FrontendInfo,
}

impl Rig {
    pub fn new(cfg: DriverConfig, feats: BackendFeatures, info: FrontendInfo) -> Rig {
        let hub = FakeEventHub::new();
        let machine = FakeGrantHub::new();
        let fplat = FakePlatform::with_grant_hub(
            FE,
            hub.clone(),
            FakeGrantFrames::new(32).unwrap(),
            &machine,
        );
        let mut rig = Rig {
            fe: Netfront::new(fplat, cfg),
            be: None,
            hub,
            machine,
            feats,
            info,
        };
        rig.connect(1);
        rig
    }

    /// Sets up connection `number` and attaches a new backend instance.
    pub fn connect(&mut self, number: u64) {
        self.fe
            .setup_negotiated(number, BE, &self.feats, &self.info)
            .unwrap();
        let keys = self.fe.frontend_keys().to_vec();
        let bplat = FakePlatform::with_grant_hub(
            BE,
            self.hub.clone(),
            FakeGrantFrames::new(1).unwrap(),
            &self.machine,
        );
        let be = TestBackend::attach(bplat, FE, &mut |k: &str| {
            keys.iter().find(|x| x.key == k).map(|x| x.value.clone())
        })
        .unwrap();
        self.be = Some(be);
        self.fe.backend_connected();
    }

    pub fn be(&mut self) -> &mut TestBackend<FakePlatform> {
        self.be.as_mut().unwrap()
    }

    pub fn grants(&self) -> grant_tables::GrantStats {
        self.fe.platform().grant_table().unwrap().stats()
    }

    /// Sends `data` as one frame with `offload`, optionally on `queue`.
    pub fn send(&mut self, data: &[u8], offload: TxOffload, queue: Option<u16>) {
        let mut b = self.fe.tx_buffer(data.len()).unwrap().expect("a TX buffer");
        b.write_at(0, data).unwrap();
        b.set_offload(offload);
        if let Some(q) = queue {
            b.set_queue(q);
        }
        self.fe.send(b).unwrap();
    }
}

pub(super) fn big_config() -> DriverConfig {
    let mut cfg = DriverConfig::default();
    cfg.net.mtu = Some(65535);
    cfg.net.max_queues = 4;
    cfg.wait = WaitMode::Poll;
    cfg
}

/// An Ethernet frame of `len` bytes with a local EtherType and a pattern
/// seeded by `seed`.
pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    f[..6].copy_from_slice(&MAC);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn sizes() -> Vec<usize> {
    let mut v = vec![
        60, 61, 64, 127, 128, 1500, 1514, 2048, 4095, 4096, 4097, 8191, 8192, 8193, 9014, 16384,
        32768, 65534, 65535,
    ];
    v.extend((60..65535).step_by(4093));
    v
}

#[test]
fn frames_of_every_size_both_ways_with_data_checked() {
    let mut r = Rig::new(big_config(), linux_like(1), toolstack(MAC));
    assert_eq!(r.fe.link().max_frame, 65535);
    let granted = r.grants().granted;
    for (i, &len) in sizes().iter().enumerate() {
        let seed = i as u8;
        let data = pattern(len, seed);
        r.send(&data, TxOffload::default(), None);
        assert_eq!(r.be().pump_tx().unwrap(), 1, "len {len}");
        let got = r.be().sent.pop_front().unwrap();
        assert_eq!(got.data.len(), len);
        assert!(got.data == data, "TX data of a {len}-byte frame differs");
        assert_eq!(got.slots, len.div_ceil(PAGE_SIZE));
        assert_eq!(
            got.flags & NETTXF_MORE_DATA != 0,
            len > PAGE_SIZE,
            "len {len}"
        );
        r.fe.poll().unwrap();
        assert_eq!(r.fe.tx_pending(), 0, "len {len}");

        let back = pattern(len, seed.wrapping_add(100));
        assert!(
            r.be().deliver(0, &back, RxOpts::default()).unwrap(),
            "len {len}"
        );
        let f = r.fe.receive().unwrap().expect("a frame");
        assert_eq!(f.len(), len);
        // Headroom: Linux's netback leaves none unless asked.
        let per_slot = PAGE_SIZE;
        assert_eq!(f.fragments(), len.div_ceil(per_slot), "len {len}");
        assert_eq!(f.as_slice().is_some(), len <= per_slot);
        let mut copy = vec![0u8; len];
        f.read_at(0, &mut copy).unwrap();
        assert!(copy == back, "RX data of a {len}-byte frame differs");
        if let Some(s) = f.as_slice() {
            assert!(s == &back[..]);
        }
    }
    let s = r.fe.stats();
    assert_eq!(s.tx_frames, sizes().len() as u64);
    assert_eq!(s.rx_frames, sizes().len() as u64);
    // Pages were recycled, never granted again.
    assert_eq!(r.grants().granted, granted);
    let (tx_free, _) = r.fe.pool_available().unwrap();
    assert_eq!(tx_free, 256, "every TX page is back in the pool");
}

#[test]
fn xdp_headroom_is_honoured() {
    let mut cfg = big_config();
    cfg.net.xdp_headroom = 256;
    let mut r = Rig::new(cfg, linux_like(1), toolstack(MAC));
    assert_eq!(r.fe.negotiated().unwrap().rx_headroom, 256);
    for len in [60, 3840, 3841, 9000, 65535] {
        let data = pattern(len, 7);
        assert!(r.be().deliver(0, &data, RxOpts::default()).unwrap());
        let f = r.fe.receive().unwrap().expect("a frame");
        assert_eq!(f.fragments(), len.div_ceil(PAGE_SIZE - 256), "len {len}");
        let mut copy = vec![0u8; len];
        f.read_at(0, &mut copy).unwrap();
        assert!(copy == data, "len {len}");
    }
}

#[test]
fn without_sg_frames_are_one_page_and_mtu_1500() {
    let mut feats = linux_like(1);
    feats.sg = false;
    let mut r = Rig::new(big_config(), feats, toolstack(MAC));
    let link = r.fe.link();
    assert_eq!(link.mtu, 1500);
    assert_eq!(link.max_frame, 1514);
    assert!(matches!(
        r.fe.tx_buffer(1515),
        Err(FrameError::TooLarge {
            len: 1515,
            max: 1514
        })
    ));
    assert!(matches!(r.fe.tx_buffer(13), Err(FrameError::Invalid(_))));
}

#[test]
fn sg_gso_extra_and_checksum_flags_reach_the_backend() {
    let mut r = Rig::new(big_config(), linux_like(1), toolstack(MAC));
    let data = pattern(20000, 3);
    let gso = TxOffload {
        checksum: TxChecksum::Partial,
        gso: Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 1448,
        }),
    };
    r.send(&data, gso, None);
    r.send(
        &pattern(100, 4),
        TxOffload {
            checksum: TxChecksum::Validated,
            gso: None,
        },
        None,
    );
    r.send(
        &pattern(100, 5),
        TxOffload {
            checksum: TxChecksum::Partial,
            gso: None,
        },
        None,
    );
    assert_eq!(r.be().pump_tx().unwrap(), 3);
    let a = r.be().sent.pop_front().unwrap();
    assert_eq!(a.slots, 5);
    assert_eq!(a.data, data);
    assert_eq!(
        a.flags,
        NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED | NETTXF_EXTRA_INFO | NETTXF_MORE_DATA
    );
    assert_eq!(a.gso, Some((XEN_NETIF_GSO_TYPE_TCPV4, 1448)));
    let b = r.be().sent.pop_front().unwrap();
    assert_eq!(b.flags, NETTXF_DATA_VALIDATED);
    assert_eq!(b.gso, None);
    let c = r.be().sent.pop_front().unwrap();
    assert_eq!(c.flags, NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED);
    r.fe.poll().unwrap();
    assert_eq!(r.fe.tx_pending(), 0);

    // GSO that was not negotiated is refused before the ring.
    let mut feats = linux_like(1);
    feats.gso_tcpv6 = false;
    let mut r = Rig::new(big_config(), feats, toolstack(MAC));
    let mut b = r.fe.tx_buffer(3000).unwrap().unwrap();
    b.set_offload(TxOffload {
        checksum: TxChecksum::Partial,
        gso: Some(Gso {
            kind: GsoKind::TcpV6,
            mss: 1400,
        }),
    });
    assert!(matches!(r.fe.send(b), Err(FrameError::Invalid(_))));
    assert_eq!(r.fe.stats().tx_refused, 1);
    assert!(r.fe.broken().is_none());
}

/// An IPv4/TCP (proto 6) or UDP (17) frame of `payload` bytes whose
/// checksum field holds only the pseudo-header sum, and the complete
/// checksum it should get.
fn partial_frame(proto: u8, payload: usize) -> (Vec<u8>, u16) {
    let l4_hdr = if proto == 6 { 20 } else { 8 };
    let l4_len = l4_hdr + payload;
    let total = 20 + l4_len;
    let mut f = vec![0u8; 14 + total];
    f[..6].copy_from_slice(&MAC);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 1]);
    let ipsum = !crate::csum::ones_complement_sum(&f[14..34]);
    f[24..26].copy_from_slice(&ipsum.to_be_bytes());
    let l4 = 34;
    f[l4..l4 + 2].copy_from_slice(&1234u16.to_be_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&80u16.to_be_bytes());
    if proto == 6 {
        f[l4 + 12] = 5 << 4;
    } else {
        f[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    for (i, b) in f[l4 + l4_hdr..].iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    // The pseudo-header sum.
    let mut ph = Vec::new();
    ph.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1, 0, proto]);
    ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
    let pseudo = crate::csum::ones_complement_sum(&ph);
    let field = l4 + if proto == 6 { 16 } else { 6 };
    // The full checksum: over the pseudo header and the segment with a
    // zero field.
    let mut all = ph.clone();
    all.extend_from_slice(&f[l4..]);
    let full = !crate::csum::ones_complement_sum(&all);
    f[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
    (f, if full == 0 { 0xFFFF } else { full })
}

#[test]
fn partial_checksums_are_completed_in_place_and_gso_extras_reported() {
    let mut r = Rig::new(big_config(), linux_like(1), toolstack(MAC));
    for (proto, payload) in [(17u8, 100usize), (6, 1000), (6, 9000), (17, 30000)] {
        let (frame, want) = partial_frame(proto, payload);
        let field = 34 + if proto == 6 { 16 } else { 6 };
        let opts = RxOpts {
            csum_blank: true,
            ..RxOpts::default()
        };
        assert!(r.be().deliver(0, &frame, opts).unwrap());
        let f = r.fe.receive().unwrap().expect("a frame");
        assert!(f.meta().checksum_ok && f.meta().checksum_completed);
        let mut got = [0u8; 2];
        f.read_at(field, &mut got).unwrap();
        assert_eq!(
            u16::from_be_bytes(got),
            want,
            "proto {proto} payload {payload}"
        );
    }
    // A GSO frame without csum_blank: the pseudo-header sum is recomputed
    // first, then completed.
    let (mut frame, want) = partial_frame(6, 5000);
    frame[50..52].copy_from_slice(&[0xde, 0xad]);
    let opts = RxOpts {
        gso: Some((XEN_NETIF_GSO_TYPE_TCPV4, 1448)),
        ..RxOpts::default()
    };
    assert!(r.be().deliver(0, &frame, opts).unwrap());
    let f = r.fe.receive().unwrap().expect("a frame");
    assert_eq!(
        f.meta().gso,
        Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 1448
        })
    );
    let mut got = [0u8; 2];
    f.read_at(50, &mut got).unwrap();
    assert_eq!(u16::from_be_bytes(got), want);
    // data_validated passes through; a blank checksum on a non-IP frame is
    // dropped and counted.
    assert!(r
        .be()
        .deliver(
            0,
            &pattern(200, 1),
            RxOpts {
                data_validated: true,
                ..RxOpts::default()
            }
        )
        .unwrap());
    let f = r.fe.receive().unwrap().unwrap();
    assert!(f.meta().checksum_ok && !f.meta().checksum_completed);
    assert!(r
        .be()
        .deliver(
            0,
            &pattern(200, 1),
            RxOpts {
                csum_blank: true,
                ..RxOpts::default()
            }
        )
        .unwrap());
    assert!(r.fe.receive().unwrap().is_none());
    let s = r.fe.stats();
    assert_eq!(s.rx_csum_errors, 1);
    // Four blank checksums and the GSO frame's were completed; one GSO
    // frame.
    assert_eq!(s.rx_csum_completed, 5);
    assert_eq!(s.rx_gso_frames, 1);
}

#[test]
fn multi_queue_with_split_channels() {
    let mut r = Rig::new(big_config(), linux_like(8), toolstack(MAC));
    let neg = *r.fe.negotiated().unwrap();
    assert_eq!(neg.queues, 4, "the application's 4, below the backend's 8");
    assert!(neg.split_event_channels);
    let keys: Vec<String> = r.fe.frontend_keys().iter().map(|k| k.key.clone()).collect();
    for k in [
        "multi-queue-num-queues",
        "queue-0/tx-ring-ref",
        "queue-3/rx-ring-ref",
        "queue-3/event-channel-tx",
        "queue-3/event-channel-rx",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    assert_eq!(r.be().queues(), 4);
    assert_eq!(r.fe.ports().len(), 8);
    for q in 0..4u16 {
        r.send(&pattern(500, q as u8), TxOffload::default(), Some(q));
    }
    r.be().pump_tx().unwrap();
    let mut seen: Vec<u16> = r.be().sent.drain(..).map(|f| f.queue).collect();
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3]);
    for q in 0..4 {
        assert!(r
            .be()
            .deliver(q, &pattern(300, q as u8), RxOpts::default())
            .unwrap());
    }
    let mut queues = Vec::new();
    while let Some(f) = r.fe.receive().unwrap() {
        queues.push(f.meta().queue);
    }
    queues.sort();
    assert_eq!(queues, vec![0, 1, 2, 3]);
    // Frames of one flow hash to one queue.
    let mut flow = pattern(200, 9);
    flow[12..14].copy_from_slice(&[0x08, 0x00]);
    for _ in 0..10 {
        r.send(&flow, TxOffload::default(), None);
    }
    r.be().pump_tx().unwrap();
    let qs: Vec<u16> = r.be().sent.drain(..).map(|f| f.queue).collect();
    assert_eq!(qs.len(), 10);
    assert!(qs.iter().all(|&q| q == qs[0]));
}

#[test]
fn notifications_only_when_the_ring_asks() {
    let mut r = Rig::new(big_config(), linux_like(1), toolstack(MAC));
    let before = r.fe.stats().notifications;
    // The backend takes nothing: after the first push it has not asked
    // again (req_event stays behind), so one notification at most.
    for i in 0..100 {
        r.send(&pattern(100, i), TxOffload::default(), Some(0));
    }
    let sent = r.fe.stats().notifications - before;
    assert!(sent <= 1, "{sent} notifications for 100 frames");
    assert_eq!(r.be().pump_tx().unwrap(), 100);
}

#[test]
fn untrusted_backend_gets_zeroed_payload_only_pages() {
    for trusted in [true, false] {
        let mut info = toolstack(MAC);
        info.trusted = trusted;
        let mut cfg = big_config();
        cfg.net.max_queues = 1;
        cfg.tx_buffers_per_queue = 18;
        let mut r = Rig::new(cfg, linux_like(1), info);
        assert_eq!(r.fe.negotiated().unwrap().untrusted_backend, !trusted);
        // Lend every TX page, fill it, give it back unsent.
        let mut all = Vec::new();
        while let Some(mut b) = r.fe.tx_buffer(PAGE_SIZE).unwrap() {
            b.as_mut_slice().unwrap().fill(0xAA);
            all.push(b);
        }
        assert_eq!(all.len(), 18);
        drop(all);
        let mut b = r.fe.tx_buffer(PAGE_SIZE).unwrap().unwrap();
        let dirty = b.as_mut_slice().unwrap().iter().any(|&x| x != 0);
        assert_eq!(dirty, trusted, "trusted {trusted}");
    }
}

#[test]
fn rx_pages_are_recycled_without_new_grants() {
    let mut cfg = big_config();
    cfg.net.max_queues = 1;
    let mut r = Rig::new(cfg, linux_like(1), toolstack(MAC));
    let granted = r.grants().granted;
    let mut held = Vec::new();
    for i in 0..2000u32 {
        let data = pattern(1514, i as u8);
        if !r.be().deliver(0, &data, RxOpts::default()).unwrap() {
            panic!("no RX buffers posted at frame {i}");
        }
        let f = r.fe.receive().unwrap().unwrap();
        assert!(f.as_slice().unwrap() == &data[..]);
        // Hold a few frames at a time, as an application would.
        held.push(f);
        if held.len() == 100 {
            held.clear();
        }
    }
    assert_eq!(r.grants().granted, granted);
    assert_eq!(r.fe.stats().rx_frames, 2000);
}

fn hostile(setup: impl FnOnce(&mut Rig), check: impl FnOnce(&NetError)) {
    let mut cfg = big_config();
    cfg.net.max_queues = 1;
    let mut r = Rig::new(cfg, linux_like(1), toolstack(MAC));
    setup(&mut r);
    let err = r.fe.poll().expect_err("the device must break");
    assert!(matches!(err, FrameError::Broken(_)));
    let e = r.fe.broken().expect("broken").clone();
    assert!(e.is_backend_fault(), "{e}");
    check(&e);
    // It stays broken, cleanly.
    assert!(matches!(r.fe.receive(), Err(FrameError::Broken(_))));
    assert!(matches!(r.fe.tx_buffer(100), Err(FrameError::Broken(_))));
    assert!(!r.fe.link().up);
    // A new connection (the backend restarted) starts clean.
    r.be = None;
    r.fe.end_connection("backend restarted");
    r.connect(2);
    r.send(&pattern(100, 1), TxOffload::default(), None);
    assert_eq!(r.be().pump_tx().unwrap(), 1);
    r.fe.poll().unwrap();
    assert!(r.fe.broken().is_none());
}

#[test]
fn hostile_tx_response_with_a_bad_id() {
    hostile(
        |r| {
            r.send(&pattern(100, 1), TxOffload::default(), None);
            let (reqs, _) = r.be().take_tx_packet(0).unwrap().unwrap();
            assert_eq!(reqs.len(), 1);
            r.be()
                .respond_tx(
                    0,
                    NetifTxResponse {
                        id: 999,
                        status: NETIF_RSP_OKAY,
                    },
                )
                .unwrap();
            r.be().push(0).unwrap();
        },
        |e| {
            assert!(matches!(
                e,
                NetError::Tx {
                    violation: crate::tx::TxViolation::IdOutOfRange { id: 999, .. },
                    ..
                }
            ));
            assert!(std::format!("{e}").contains("999"));
        },
    );
}

#[test]
fn hostile_tx_response_for_an_id_not_in_flight() {
    hostile(
        |r| {
            r.send(&pattern(100, 1), TxOffload::default(), None);
            let (reqs, _) = r.be().take_tx_packet(0).unwrap().unwrap();
            r.be()
                .respond_tx(
                    0,
                    NetifTxResponse {
                        id: reqs[0].id.wrapping_add(1),
                        status: NETIF_RSP_OKAY,
                    },
                )
                .unwrap();
            r.be().push(0).unwrap();
        },
        |e| {
            assert!(matches!(
                e,
                NetError::Tx {
                    violation: crate::tx::TxViolation::NotInFlight { .. },
                    ..
                }
            ))
        },
    );
}

#[test]
fn hostile_rx_offset_and_length_past_the_page() {
    hostile(
        |r| {
            let id = r.be().next_rx_id(0).unwrap().unwrap();
            r.be()
                .respond_rx_raw(
                    0,
                    NetifRxResponse {
                        id,
                        offset: 4000,
                        flags: 0,
                        status: 200,
                    },
                )
                .unwrap();
            r.be().push(0).unwrap();
        },
        |e| {
            assert!(matches!(
                e,
                NetError::Rx {
                    violation: crate::rx::RxViolation::BadRange {
                        offset: 4000,
                        status: 200,
                        ..
                    },
                    ..
                }
            ))
        },
    );
}

#[test]
fn hostile_rx_too_many_slots() {
    hostile(
        |r| {
            for i in 0..25 {
                let id = r.be().next_rx_id(0).unwrap().unwrap();
                r.be()
                    .respond_rx_raw(
                        0,
                        NetifRxResponse {
                            id,
                            offset: 0,
                            flags: if i < 24 { NETRXF_MORE_DATA } else { 0 },
                            status: 1000,
                        },
                    )
                    .unwrap();
            }
            r.be().push(0).unwrap();
        },
        |e| {
            assert!(matches!(
                e,
                NetError::Rx {
                    violation: crate::rx::RxViolation::TooManySlots { max: 18 },
                    ..
                }
            ))
        },
    );
}

#[test]
fn hostile_rx_unknown_extra_type() {
    hostile(
        |r| {
            let id = r.be().next_rx_id(0).unwrap().unwrap();
            r.be()
                .respond_rx_raw(
                    0,
                    NetifRxResponse {
                        id,
                        offset: 0,
                        flags: NETRXF_EXTRA_INFO,
                        status: 100,
                    },
                )
                .unwrap();
            let extra = NetifExtraInfo {
                type_: 9,
                ..NetifExtraInfo::default()
            };
            r.be().respond_rx_extra(0, extra).unwrap();
            r.be().push(0).unwrap();
        },
        |e| {
            assert!(matches!(
                e,
                NetError::Rx {
                    violation: crate::rx::RxViolation::BadExtraType { type_: 9 },
                    ..
                }
            ))
        },
    );
}

#[test]
fn hostile_rx_producer_index_going_backwards() {
    let mut cfg = big_config();
    cfg.net.max_queues = 1;
    cfg.rx_budget = 1;
    let mut r = Rig::new(cfg, linux_like(1), toolstack(MAC));
    for i in 0..3 {
        assert!(r
            .be()
            .deliver(0, &pattern(100, i), RxOpts::default())
            .unwrap());
    }
    // One packet per poll: the driver has seen rsp_prod = 3, consumed 1.
    r.fe.poll().unwrap();
    r.be().poke_rx_rsp_prod(0, 2).unwrap();
    let err = r.fe.poll().expect_err("must break");
    assert!(std::format!("{err}").contains("backwards"), "{err}");
    assert!(matches!(
        r.fe.broken(),
        Some(NetError::Prod {
            violation: crate::rx::ProdViolation::Backwards { last: 3, new: 2 },
            ..
        })
    ));
    // Past what was posted: the ring itself refuses it.
    let mut r = Rig::new(big_config(), linux_like(1), toolstack(MAC));
    r.be().poke_rx_rsp_prod(0, 100_000).unwrap();
    let err = r.fe.poll().expect_err("must break");
    assert!(std::format!("{err}").contains("rsp_prod"), "{err}");
}

#[test]
fn backend_restart_mid_traffic_fails_in_flight_tx_and_leaks_no_grant() {
    let mut cfg = big_config();
    cfg.net.max_queues = 2;
    let mut r = Rig::new(cfg, linux_like(2), toolstack(MAC));
    let baseline = {
        // Nothing granted before the first connection but its own pages.
        let s = r.grants();
        s.granted
    };
    assert!(baseline > 0);
    for round in 0..20u64 {
        // Traffic both ways, some of it left in flight.
        for i in 0..10u8 {
            r.send(
                &pattern(1000 + usize::from(i) * 500, i),
                TxOffload::default(),
                None,
            );
        }
        // The backend takes 4 packets (answers them) and leaves the rest.
        let mut taken = 0;
        for q in 0..2 {
            while taken < 4 {
                match r.be().take_tx_packet(q).unwrap() {
                    Some((reqs, _)) => {
                        for req in reqs {
                            r.be()
                                .respond_tx(
                                    q,
                                    NetifTxResponse {
                                        id: req.id,
                                        status: NETIF_RSP_OKAY,
                                    },
                                )
                                .unwrap();
                        }
                        r.be().push(q).unwrap();
                        taken += 1;
                    }
                    None => break,
                }
            }
        }
        assert!(r
            .be()
            .deliver(0, &pattern(3000, 1), RxOpts::default())
            .unwrap());
        r.fe.poll().unwrap();
        let held_frame = r.fe.receive().unwrap().expect("a frame");
        let pending = r.fe.tx_pending();
        assert_eq!(pending, 10 - taken, "round {round}");
        let aborted_before = r.fe.stats().tx_aborted;

        // On odd rounds the dying backend still maps a TX page when the
        // frontend ends access: that page is quarantined, then recovered.
        let keep_mapping = round % 2 == 1;
        let old = r.be.take().unwrap();
        let pinned = if keep_mapping {
            let (tx_ref, _) = (r.fe.frontend_keys().iter())
                .find(|k| k.key == "queue-0/tx-ring-ref")
                .map(|k| (k.value.parse::<u32>().unwrap(), ()))
                .unwrap();
            let mut maps = Vec::new();
            use grant_tables::ForeignGrants;
            old.platform().map_batch(
                &[grant_tables::MapOp {
                    granter: FE,
                    gref: tx_ref,
                    access: grant_tables::Access::ReadWrite,
                }],
                &mut maps,
            );
            Some(maps.pop().unwrap().unwrap())
        } else {
            None
        };
        drop(old);
        r.fe.end_connection("backend restarted");
        assert_eq!(r.fe.stats().tx_aborted - aborted_before, pending as u64);
        assert!(!r.fe.link().up);
        if keep_mapping {
            assert!(r.grants().quarantined > 0, "round {round}");
            drop(pinned);
        }
        // The application still holds a frame of the old connection.
        drop(held_frame);
        r.connect(round + 2);
        r.fe.poll().unwrap();
        // The old connection's grants are all gone (or recovered) and the
        // new one holds as many as the first did.
        let s = r.grants();
        assert_eq!(s.quarantined, 0, "round {round}: {s:?}");
        assert_eq!(s.granted, baseline, "round {round}: {s:?}");
        // Traffic flows again.
        r.send(&pattern(777, 7), TxOffload::default(), None);
        assert_eq!(r.be().pump_tx().unwrap(), 1);
        assert_eq!(r.be().sent.pop_front().unwrap().data, pattern(777, 7));
        r.fe.poll().unwrap();
    }
    assert!(r.fe.stats().grants_recovered > 0);
    r.be = None;
    r.fe.end_connection("done");
    let s = r.grants();
    assert_eq!((s.granted, s.quarantined), (0, 0), "{s:?}");
}

#[test]
fn a_tx_buffer_lent_before_a_reconnection_is_sent_after_it() {
    let mut r = Rig::new(big_config(), linux_like(1), toolstack(MAC));
    let data = pattern(6000, 2);
    let mut b = r.fe.tx_buffer(data.len()).unwrap().unwrap();
    b.write_at(0, &data).unwrap();
    r.be = None;
    r.fe.end_connection("backend restarted");
    assert!(matches!(r.fe.send(b), Err(FrameError::LinkDown)));
    let mut b = {
        r.connect(2);
        r.fe.tx_buffer(data.len()).unwrap().unwrap()
    };
    b.write_at(0, &data).unwrap();
    // A buffer from connection 2 sent on connection 3 is copied over.
    r.be = None;
    r.fe.end_connection("backend restarted");
    r.connect(3);
    r.fe.send(b).unwrap();
    assert_eq!(r.be().pump_tx().unwrap(), 1);
    assert_eq!(r.be().sent.pop_front().unwrap().data, data);
}

#[test]
fn event_mode_wait_blocks_until_the_backend_answers() {
    let mut cfg = big_config();
    cfg.net.max_queues = 1;
    cfg.wait = WaitMode::Event;
    let mut r = Rig::new(cfg, linux_like(1), toolstack(MAC));
    // Nothing to do: a short wait times out.
    assert!(!r.fe.wait(Some(2_000_000)).unwrap());
    let mut be = r.be.take().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(be.deliver(0, &pattern(1514, 3), RxOpts::default()).unwrap());
        be
    });
    let start = std::time::Instant::now();
    assert!(r.fe.wait(Some(5_000_000_000)).unwrap());
    assert!(start.elapsed() < std::time::Duration::from_secs(4));
    let f = r.fe.receive().unwrap().expect("a frame after the wake-up");
    assert_eq!(f.len(), 1514);
    r.be = Some(t.join().unwrap());
}

#[test]
fn adaptive_mode_spins_then_blocks() {
    let mut cfg = big_config();
    cfg.net.max_queues = 1;
    cfg.wait = WaitMode::Adaptive { spin_ns: 1_000_000 };
    let mut r = Rig::new(cfg, linux_like(1), toolstack(MAC));
    assert!(!r.fe.wait(Some(5_000_000)).unwrap());
    assert!(r
        .be()
        .deliver(0, &pattern(64, 3), RxOpts::default())
        .unwrap());
    assert!(r.fe.wait(Some(5_000_000)).unwrap());
    assert!(r.fe.receive().unwrap().is_some());
}

#[test]
fn frames_marked_more_are_published_together() {
    let mut r = Rig::new(big_config(), linux_like(1), toolstack(MAC));
    let send = |r: &mut Rig, seed: u8, more: bool| {
        let mut b = r.fe.tx_buffer(60).unwrap().expect("a TX buffer");
        b.write_at(0, &pattern(60, seed)).unwrap();
        b.set_more(more);
        r.fe.send(b).unwrap();
    };
    for i in 0..3 {
        send(&mut r, i, true);
    }
    assert_eq!(
        r.be().pump_tx().unwrap(),
        0,
        "published before the burst ended"
    );
    send(&mut r, 3, false);
    assert_eq!(r.be().pump_tx().unwrap(), 4);
    for i in 0..4 {
        assert_eq!(r.be().sent.pop_front().unwrap().data, pattern(60, i));
    }
    // An explicit flush publishes a burst, and so does a poll.
    send(&mut r, 4, true);
    send(&mut r, 5, true);
    assert_eq!(r.be().pump_tx().unwrap(), 0);
    r.fe.flush().unwrap();
    assert_eq!(r.be().pump_tx().unwrap(), 2);
    send(&mut r, 6, true);
    r.fe.poll().unwrap();
    assert_eq!(r.be().pump_tx().unwrap(), 1);
    r.fe.poll().unwrap();
    assert_eq!(r.fe.tx_pending(), 0);
    let s = r.fe.stats();
    assert_eq!((s.tx_frames, s.tx_errors, s.tx_dropped), (7, 0, 0), "{s:?}");
}
