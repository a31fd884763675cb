use zerocopy::IntoBytes;

use crate::abi::*;

#[test]
fn extra_info_union_members_round_trip() {
    let gso = ExtraGso {
        size: 0x1234,
        type_: XEN_NETIF_GSO_TYPE_TCPV4,
        pad: 0,
        features: 0xBEEF,
    };
    let e = NetifExtraInfo::new_gso(XEN_NETIF_EXTRA_FLAG_MORE, gso);
    assert_eq!((e.type_, e.flags), (XEN_NETIF_EXTRA_TYPE_GSO, 1));
    assert_eq!(e.gso(), gso);
    assert_eq!(e.union_bytes(), [0x34, 0x12, 1, 0, 0xEF, 0xBE]);

    let m = ExtraMcast {
        addr: [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb],
    };
    let e = NetifExtraInfo::new_mcast(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, 0, m);
    assert_eq!(e.type_, XEN_NETIF_EXTRA_TYPE_MCAST_ADD);
    assert_eq!(e.mcast(), m);
    assert_eq!(e.union_bytes(), m.addr);

    let h = ExtraHash {
        type_: XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
        algorithm: XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ,
        value: [1, 2, 3, 4],
    };
    let e = NetifExtraInfo::new_hash(0, h);
    assert_eq!(e.hash(), h);
    assert_eq!(e.as_bytes(), &[4, 0, 3, 1, 1, 2, 3, 4]);

    let x = ExtraXdp {
        headroom: 256,
        pad: [0; 2],
    };
    let e = NetifExtraInfo::new_xdp(0, x);
    assert_eq!(e.xdp(), x);
    assert_eq!(e.as_bytes(), &[5, 0, 0, 1, 0, 0, 0, 0]);
}

#[test]
fn slots_hold_either_shape() {
    let req = NetifTxRequest {
        gref: 0x0102_0304,
        offset: 0x0506,
        flags: NETTXF_MORE_DATA,
        id: 7,
        size: 1514,
    };
    let s = TxSlotBytes::from_request(&req);
    assert_eq!(s.request(), req);
    assert_eq!(&s.0[..4], &[4, 3, 2, 1]);
    let e = NetifExtraInfo::new_gso(
        0,
        ExtraGso {
            size: 1448,
            type_: 1,
            pad: 0,
            features: 0,
        },
    );
    let s = TxSlotBytes::from_extra(&e);
    assert_eq!(s.extra(), e);
    assert_eq!(&s.0[8..], &[0; 4], "the unused tail of a TX slot is zero");

    let rsp = NetifRxResponse {
        id: 3,
        offset: 0,
        flags: NETRXF_MORE_DATA | NETRXF_EXTRA_INFO,
        status: -1,
    };
    let s = RxSlotBytes::from_response(&rsp);
    assert_eq!(s.response(), rsp);
    assert_eq!(s.0, [3, 0, 0, 0, 12, 0, 0xFF, 0xFF]);
    let s = RxSlotBytes::from_extra(&e);
    assert_eq!(s.extra(), e);
    // The same bytes read as the other shape: no panic, just other values.
    assert_eq!(s.response().id, u16::from_le_bytes([1, 0]));
}
