use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use crate::wire::*;

fn msg(t: MsgType, req: u32, tx: u32, payload: &[u8]) -> Message {
    Message::new(t, req, tx, payload.to_vec()).unwrap()
}

fn decode_all(dec: &mut Decoder, mut input: &[u8]) -> Vec<Result<Message, WireError>> {
    let mut out = Vec::new();
    loop {
        let before = input.len();
        match dec.decode(&mut input) {
            Ok(Some(m)) => out.push(Ok(m)),
            Ok(None) => break,
            Err(e) => {
                let fatal = e.is_fatal();
                out.push(Err(e));
                if fatal {
                    break;
                }
            }
        }
        if input.is_empty() && before == 0 {
            break;
        }
    }
    out
}

#[test]
fn header_layout_matches_xsd_sockmsg() {
    let h = Header {
        msg_type: 2,
        req_id: 0x0102_0304,
        tx_id: 7,
        len: 5,
    };
    let b = h.to_bytes();
    assert_eq!(&b[0..4], &2u32.to_ne_bytes());
    assert_eq!(&b[4..8], &0x0102_0304u32.to_ne_bytes());
    assert_eq!(&b[8..12], &7u32.to_ne_bytes());
    assert_eq!(&b[12..16], &5u32.to_ne_bytes());
    assert_eq!(Header::from_bytes(&b), h);
}

#[test]
fn message_types_round_trip_and_gaps_are_unknown() {
    for t in MsgType::ALL {
        assert_eq!(MsgType::from_raw(t.raw()), Some(t));
    }
    assert_eq!(MsgType::from_raw(20), None, "XS_RESTRICT was removed");
    assert_eq!(MsgType::from_raw(XS_TYPE_COUNT), None);
    assert_eq!(MsgType::from_raw(XS_INVALID), None);
    assert_eq!(MsgType::ResetWatches.raw(), 21);
    assert_eq!(MsgType::DirectoryPart.raw(), 22);
}

#[test]
fn errno_names_round_trip() {
    for e in Errno::ALL {
        assert_eq!(Errno::from_name(e.name().as_bytes()), Some(e));
        let mut p = e.name().as_bytes().to_vec();
        p.push(0);
        assert_eq!(Errno::from_payload(&p), Some(e));
    }
    assert_eq!(Errno::from_name(b"EWHATEVER"), None);
    assert_eq!(Errno::from_name(b"einval"), None);
    assert_eq!(Errno::from_name(b"EQUOTA"), Some(Errno::EQUOTA));
    assert_eq!(Errno::from_payload(b"EQUOTA\0"), Some(Errno::EQUOTA));
}

#[test]
fn any_error_reply_has_an_errno() {
    assert_eq!(Errno::from_reply(b"ENOENT\0"), Errno::ENOENT);
    assert_eq!(Errno::from_reply(b"EQUOTA\0"), Errno::EQUOTA);
    let weird = Errno::from_reply(b"EWHATEVER\0");
    assert!(matches!(weird, Errno::Unknown(n) if n.as_str() == "EWHATEVER"));
    assert_eq!(weird.name(), "EWHATEVER");
    assert_eq!(alloc::format!("{weird}"), "EWHATEVER");
    assert_eq!(alloc::format!("{weird:?}"), "Unknown(\"EWHATEVER\")");
    assert_eq!(Errno::from_reply(b"").name(), "");
    assert_eq!(Errno::from_reply(&[0xc3, 0xa9, 0]).name(), "??");
    assert_eq!(Errno::from_reply(&[b'X'; 100]).name().len(), 16);
}

#[test]
fn whole_message_in_one_chunk() {
    let m = msg(MsgType::Read, 9, 0, b"/local/domain/1/name\0");
    let mut d = Decoder::new();
    let got = decode_all(&mut d, &m.encode());
    assert_eq!(got, vec![Ok(m)]);
    assert!(d.is_idle());
}

#[test]
fn byte_by_byte_and_back_to_back() {
    let a = msg(MsgType::Write, 1, 3, b"a\0value");
    let b = msg(MsgType::WatchEvent, 0, 0, b"/x\0tok\0");
    let c = msg(MsgType::TransactionStart, 2, 0, b"");
    let mut bytes = a.encode();
    bytes.extend(b.encode());
    bytes.extend(c.encode());
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for byte in &bytes {
        got.extend(decode_all(&mut d, core::slice::from_ref(byte)));
    }
    assert_eq!(got, vec![Ok(a.clone()), Ok(b.clone()), Ok(c.clone())]);
    // And all at once.
    let mut d = Decoder::new();
    assert_eq!(decode_all(&mut d, &bytes), vec![Ok(a), Ok(b), Ok(c)]);
}

#[test]
fn payload_limit_is_inclusive_and_overlong_is_fatal() {
    let max = msg(MsgType::Write, 1, 0, &vec![b'x'; XENSTORE_PAYLOAD_MAX]);
    let mut d = Decoder::new();
    assert_eq!(decode_all(&mut d, &max.encode()), vec![Ok(max)]);

    let mut h = Header {
        msg_type: 2,
        req_id: 1,
        tx_id: 0,
        len: XENSTORE_PAYLOAD_MAX as u32 + 1,
    }
    .to_bytes()
    .to_vec();
    h.extend_from_slice(&[0u8; 32]);
    let mut d = Decoder::new();
    let got = decode_all(&mut d, &h);
    assert!(matches!(
        got.as_slice(),
        [Err(WireError::PayloadTooLong { len: 4097, .. })]
    ));
    // Stays failed: the stream is out of step for good.
    let mut more: &[u8] = &[0u8; 16];
    assert!(d.decode(&mut more).unwrap_err().is_fatal());
    assert!(d.failure().is_some());

    // u32::MAX length does not allocate or panic either.
    let h = Header {
        msg_type: 2,
        req_id: 1,
        tx_id: 0,
        len: u32::MAX,
    }
    .to_bytes();
    let mut d = Decoder::new();
    assert!(decode_all(&mut d, &h)[0].as_ref().unwrap_err().is_fatal());
}

#[test]
fn unknown_type_is_skipped_and_stream_stays_in_step() {
    let mut bytes = Header {
        msg_type: 20,
        req_id: 5,
        tx_id: 6,
        len: 3,
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(b"abc");
    let next = msg(MsgType::Read, 7, 0, b"/a\0");
    bytes.extend(next.encode());
    let mut d = Decoder::new();
    let got = decode_all(&mut d, &bytes);
    assert_eq!(
        got,
        vec![
            Err(WireError::UnknownType {
                msg_type: 20,
                req_id: 5,
                tx_id: 6
            }),
            Ok(next)
        ]
    );
}

#[test]
fn strings_split_strictly() {
    assert_eq!(split_strings(b"").unwrap(), Vec::<&[u8]>::new());
    assert_eq!(split_strings(b"a\0").unwrap(), vec![&b"a"[..]]);
    assert_eq!(split_strings(b"a\0\0").unwrap(), vec![&b"a"[..], &b""[..]]);
    assert_eq!(split_strings(b"a\0b"), Err(WireError::UnterminatedString));
    assert_eq!(join_strings(&["x", "yz"]), b"x\0yz\0".to_vec());
}

#[test]
fn numbers_parse_strictly() {
    assert_eq!(parse_u32_strict(b"0"), Some(0));
    assert_eq!(parse_u32_strict(b"4294967295"), Some(u32::MAX));
    for bad in [
        &b""[..],
        b"01",
        b"-1",
        b"+1",
        b" 1",
        b"1 ",
        b"4294967296",
        b"99999999999",
        b"1a",
    ] {
        assert_eq!(parse_u32_strict(bad), None, "{bad:?}");
    }
}

proptest! {
    /// Any sequence of valid messages, cut into arbitrary chunks, decodes
    /// to the same messages.
    #[test]
    fn chunked_stream_decodes_identically(
        msgs in proptest::collection::vec(
            (0usize..MsgType::ALL.len(), any::<u32>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)),
            0..8),
        cuts in proptest::collection::vec(1usize..64, 0..64),
    ) {
        let msgs: Vec<Message> = msgs.into_iter()
            .map(|(t, r, x, p)| Message::new(MsgType::ALL[t], r, x, p).unwrap()).collect();
        let mut bytes = Vec::new();
        for m in &msgs { m.encode_into(&mut bytes); }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let mut rest: &[u8] = &bytes;
        let mut cuts = cuts.into_iter().cycle();
        while !rest.is_empty() {
            let n = cuts.next().unwrap_or(1).min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            got.extend(decode_all(&mut d, chunk));
        }
        let want: Vec<Result<Message, WireError>> = msgs.into_iter().map(Ok).collect();
        prop_assert_eq!(got, want);
    }

    /// Arbitrary bytes never panic and never yield an over-long payload.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000), chunk in 1usize..100) {
        let mut d = Decoder::new();
        for c in bytes.chunks(chunk) {
            for m in decode_all(&mut d, c).into_iter().flatten() {
                prop_assert!(m.payload.len() <= XENSTORE_PAYLOAD_MAX);
            }
        }
    }
}

#[test]
fn path_relations_are_component_wise() {
    use crate::path::{basename, is_at_or_below, join, parent};
    assert!(is_at_or_below("/a/b", "/a"));
    assert!(is_at_or_below("/a", "/a"));
    assert!(!is_at_or_below("/ab", "/a"));
    assert!(is_at_or_below("/x", "/"));
    assert!(is_at_or_below("device/vif/0", "device"));
    assert!(!is_at_or_below("devices", "device"));
    assert!(!is_at_or_below("/a", ""));
    assert_eq!(parent("/a/b"), "/a");
    assert_eq!(parent("/a"), "/");
    assert_eq!(parent("/"), "/");
    assert_eq!(basename("/a/b"), "b");
    assert_eq!(join("/", "a"), "/a");
    assert_eq!(join("/a", "b"), "/a/b");
}

#[test]
fn path_checks_follow_xenstored() {
    use crate::path::{check_absolute, check_client_path, check_watch_path, PathError};
    use alloc::string::String;
    assert!(check_absolute("/").is_ok());
    assert!(check_absolute("/local/domain/1/device/vif/0/state").is_ok());
    assert!(check_absolute("/a/b-c_d@e").is_ok());
    assert_eq!(check_absolute("/a//b"), Err(PathError::BadSlash));
    assert_eq!(check_absolute("/a/"), Err(PathError::BadSlash));
    assert!(matches!(
        check_absolute("/a b"),
        Err(PathError::BadChar { byte: b' ', at: 2 })
    ));
    assert!(check_absolute("relative").is_err());
    let long = alloc::format!("/{}", "x".repeat(3071));
    assert!(check_absolute(&long).is_ok());
    assert!(matches!(
        check_absolute(&alloc::format!("{long}x")),
        Err(PathError::TooLong { .. })
    ));
    // Under a domain's home, the relative part is limited to 2048 bytes.
    let rel: String = "y".repeat(2049);
    assert!(matches!(
        check_absolute(&alloc::format!("/local/domain/7/{rel}")),
        Err(PathError::TooLong { max: 2048, .. })
    ));
    assert!(check_client_path("device/vif").is_ok());
    assert!(matches!(
        check_client_path(&rel),
        Err(PathError::TooLong { .. })
    ));
    assert!(check_watch_path("@releaseDomain").is_ok());
    assert_eq!(check_watch_path("@other"), Err(PathError::UnknownSpecial));
}

#[test]
fn permissions_follow_perm_for_conn() {
    use crate::path::{access_for, Effective, Perm, PermAccess};
    let perms = [
        Perm::new(1, PermAccess::Read),
        Perm::new(2, PermAccess::Both),
        Perm::new(3, PermAccess::None),
    ];
    assert_eq!(
        access_for(&perms, 1, false),
        Effective::ALL,
        "the owner gets everything"
    );
    assert_eq!(
        access_for(&perms, 9, true),
        Effective::ALL,
        "dom0 gets everything"
    );
    let two = access_for(&perms, 2, false);
    assert!(two.read && two.write && !two.owner);
    let three = access_for(&perms, 3, false);
    assert!(!three.read && !three.write);
    let other = access_for(&perms, 4, false);
    assert!(
        other.read && !other.write,
        "the owner entry's access applies to others"
    );
    assert_eq!(access_for(&[], 4, false), Effective::NONE);
    for s in ["n0", "r1", "w65535", "b32"] {
        assert_eq!(Perm::parse(s.as_bytes()).unwrap().to_wire(), s);
    }
    for bad in [&b""[..], b"r", b"x1", b"r-1", b"r65536", b"r01", b"R1"] {
        assert!(Perm::parse(bad).is_none(), "{bad:?}");
    }
}
