//! The exchange's tests: messages as the tools write them (built here
//! byte by byte from their `printf` formats), and the sessions against a
//! replay of each tool's own sequence of `read`s and `write`s.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::*;

extern crate std;

/// `ibv_rc_pingpong`'s message as `sprintf("%04x:%06x:%06x:%s")` writes
/// it, with the NUL `write(sizeof msg)` sends.
const RC_MSG: &[u8; 52] = b"0000:000011:a1b2c3:00000000000000000000ffff0a000c01\0";

/// perftest's message (GID form) as `sprintf(KEY_PRINT_FMT_GID)` writes it.
const PERF_MSG: &[u8; 108] = b"0000:0000:000012:0f00ba:00001a2b:000055d0c8a41000:00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:0c:01:00000000:\0";

/// The same without a GID (`KEY_PRINT_FMT`).
const PERF_MSG_NOGID: &[u8; 59] = b"0001:0010:000012:0f00ba:00001a2b:000055d0c8a41000:00000000\0";

fn rc_dest() -> PingpongDest {
    PingpongDest {
        lid: 0,
        qpn: 0x11,
        psn: 0xa1b2c3,
        gid: gid_from_ipv4([10, 0, 12, 1]),
    }
}

fn perf_dest() -> PerftestDest {
    PerftestDest {
        lid: 0,
        out_reads: 0,
        qpn: 0x12,
        psn: 0x0f00ba,
        rkey: 0x1a2b,
        vaddr: 0x55d0_c8a4_1000,
        gid: Some(gid_from_ipv4([10, 0, 12, 1])),
        srqn: 0,
    }
}

#[test]
fn pingpong_message_round_trips() {
    assert_eq!(parse_pingpong(RC_MSG), Ok(rc_dest()));
    assert_eq!(&format_pingpong(&rc_dest()), RC_MSG);
    // The size is `sizeof "0000:000000:000000:" + 32 hex digits`.
    assert_eq!(
        PINGPONG_MSG_LEN,
        "0000:000000:000000:00000000000000000000000000000000".len() + 1
    );
    // Upper-case digits are what `sscanf("%x")` accepts too.
    let mut upper = *RC_MSG;
    upper[12..18].copy_from_slice(b"A1B2C3");
    assert_eq!(parse_pingpong(&upper).map(|d| d.psn), Ok(0xa1b2c3));
}

#[test]
fn pingpong_message_refusals() {
    assert!(matches!(
        parse_pingpong(&RC_MSG[..51]),
        Err(ExchangeError::Length { got: 51, .. })
    ));
    let mut m = *RC_MSG;
    m[4] = b'-';
    assert_eq!(
        parse_pingpong(&m),
        Err(ExchangeError::Separator {
            expected: b':',
            offset: 4
        })
    );
    let mut m = *RC_MSG;
    m[20] = b'g';
    assert_eq!(
        parse_pingpong(&m),
        Err(ExchangeError::NotHex {
            field: "GID",
            offset: 20
        })
    );
    let mut m = *RC_MSG;
    m[51] = b'0';
    assert_eq!(
        parse_pingpong(&m),
        Err(ExchangeError::Separator {
            expected: 0,
            offset: 51
        })
    );
    // QPN 1 (GSI) is no reliable-connected peer.
    let mut m = *RC_MSG;
    m[5..11].copy_from_slice(b"000001");
    assert!(matches!(
        parse_pingpong(&m),
        Err(ExchangeError::OutOfRange { field: "QPN", .. })
    ));
}

#[test]
fn perftest_message_round_trips() {
    assert_eq!(parse_perftest(PERF_MSG, true), Ok(perf_dest()));
    assert_eq!(format_perftest(&perf_dest()), PERF_MSG.to_vec());
    let d = PerftestDest {
        lid: 1,
        out_reads: 0x10,
        gid: None,
        ..perf_dest()
    };
    assert_eq!(parse_perftest(PERF_MSG_NOGID, false), Ok(d));
    assert_eq!(format_perftest(&d), PERF_MSG_NOGID.to_vec());
    // The form is the caller's to choose (both ends use the same).
    assert!(matches!(
        parse_perftest(PERF_MSG, false),
        Err(ExchangeError::Length { got: 108, .. })
    ));
}

#[test]
fn perftest_message_refusals() {
    let mut m = *PERF_MSG;
    m[107 - 1] = b'x';
    assert_eq!(
        parse_perftest(&m, true),
        Err(ExchangeError::Separator {
            expected: b':',
            offset: 106
        })
    );
    let mut m = *PERF_MSG;
    m[60] = b'z';
    assert!(matches!(
        parse_perftest(&m, true),
        Err(ExchangeError::NotHex { field: "GID", .. })
    ));
    let mut m = *PERF_MSG;
    m[10..16].copy_from_slice(b"000000");
    assert!(matches!(
        parse_perftest(&m, true),
        Err(ExchangeError::OutOfRange { field: "QPN", .. })
    ));
}

#[test]
fn perftest_preamble_fields() {
    // `strncpy(version, "6.06", 16)`.
    let v = format_perftest_version(PERFTEST_VERSION);
    assert_eq!(&v, b"6.06\0\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(parse_perftest_version(&v), Ok((6, 6)));
    assert_eq!(
        parse_perftest_version(&format_perftest_version("5.7")),
        Ok((5, 70))
    );
    assert!((5, 69) < PERFTEST_MIN_VERSION && (5, 70) >= PERFTEST_MIN_VERSION);
    assert_eq!(
        parse_perftest_version(&[b'6'; 16]),
        Err(ExchangeError::BadVersion)
    );
    assert_eq!(
        parse_perftest_version(&format_perftest_version("6.x")),
        Err(ExchangeError::BadVersion)
    );
    // `hton_int(4096)`.
    assert_eq!(
        parse_perftest_sys(&[0, 0, 0x10, 0], "cycle buffer"),
        Ok(4096)
    );
    assert!(parse_perftest_sys(&[0, 0, 0, 0], "cycle buffer").is_err());
    assert!(parse_perftest_sys(&[0x80, 0, 0, 0], "cycle buffer").is_err());
    // `sprintf(cur, "%d", IBV_MTU_1024)` sent as 2 bytes.
    assert_eq!(format_perftest_mtu(1024), Some(*b"3\0"));
    assert_eq!(parse_perftest_mtu(b"3\0"), Ok(1024));
    assert_eq!(parse_perftest_mtu(b"5\0"), Ok(4096));
    assert_eq!(
        parse_perftest_mtu(b"6\0"),
        Err(ExchangeError::BadMtu(*b"6\0"))
    );
    assert_eq!(
        parse_perftest_mtu(b"33"),
        Err(ExchangeError::BadMtu(*b"33"))
    );
    assert_eq!(format_perftest_mtu(1500), None);
}

#[test]
fn gids_and_write_payload() {
    let g = gid_from_ipv4([10, 0, 12, 2]);
    assert_eq!(gid_ipv4(&g), Some([10, 0, 12, 2]));
    let mut link_local = [0u8; 16];
    link_local[0] = 0xfe;
    link_local[1] = 0x80;
    assert_eq!(gid_ipv4(&link_local), None);
    assert_eq!(write_lat_payload(2, 1), vec![0, 1]);
    assert_eq!(write_lat_payload(4, 257), vec![0, 0, 0, 1]);
    assert!(write_lat_payload(0, 3).is_empty());
}

/// One operation of a tool's conversation: `write(fd, bytes)`, or
/// `read(fd, buf, n)` expecting these bytes.
enum Op {
    Write(Vec<u8>),
    Read(Vec<u8>),
}

/// Runs `session` against a tool's operations, handing the session its
/// input in chunks of `chunk` bytes; calls `on_pause` at each pause.
fn converse<E: Exchange>(
    session: &mut E,
    tool: &[Op],
    chunk: usize,
    mut on_pause: impl FnMut(&mut E),
) -> Result<(), String> {
    let mut to_session: Vec<u8> = Vec::new();
    let mut from_session: Vec<u8> = Vec::new();
    let mut i = 0;
    for _ in 0..10_000 {
        // The tool's side.
        if let Some(op) = tool.get(i) {
            match op {
                Op::Write(b) => {
                    to_session.extend_from_slice(b);
                    i += 1;
                }
                Op::Read(b) => {
                    if from_session.len() >= b.len() {
                        let got: Vec<u8> = from_session.drain(..b.len()).collect();
                        if &got != b {
                            return Err(alloc::format!(
                                "tool read {:?}, expected {:?}",
                                String::from_utf8_lossy(&got),
                                String::from_utf8_lossy(b)
                            ));
                        }
                        i += 1;
                    }
                }
            }
        }
        // The session's side.
        let out = session.pending_output().to_vec();
        if !out.is_empty() {
            from_session.extend_from_slice(&out);
            session.output_written(out.len());
        }
        let want = session.wanted_input().min(chunk).min(to_session.len());
        if want > 0 {
            let data: Vec<u8> = to_session.drain(..want).collect();
            session.input(&data).map_err(|e| alloc::format!("{e}"))?;
        }
        if session.is_paused() {
            on_pause(session);
        }
        if session.is_done() && i == tool.len() {
            if !to_session.is_empty() || !from_session.is_empty() {
                return Err("bytes left over".into());
            }
            return Ok(());
        }
    }
    Err(alloc::format!("stuck at tool op {i}"))
}

fn local_rc() -> PingpongDest {
    PingpongDest {
        lid: 0,
        qpn: 0x100,
        psn: 0x123456,
        gid: gid_from_ipv4([10, 0, 12, 2]),
    }
}

#[test]
fn pingpong_session_as_server_against_the_client() {
    // rc_pingpong's client: write msg, read msg, write "done".
    let ours = format_pingpong(&local_rc()).to_vec();
    let tool = [
        Op::Write(RC_MSG.to_vec()),
        Op::Read(ours),
        Op::Write(DONE.to_vec()),
    ];
    for chunk in [1, 7, 52] {
        let mut s = PingpongSession::new(Role::Server, &local_rc());
        let mut paused = 0;
        converse(&mut s, &tool, chunk, |s| {
            // The client's attributes are known at the pause.
            assert_eq!(s.remote(), Some(&rc_dest()));
            paused += 1;
            s.resume();
        })
        .unwrap();
        assert_eq!(paused, 1);
    }
}

#[test]
fn pingpong_session_as_client_against_the_server() {
    // rc_pingpong's server: read msg, write msg, read "done".
    let ours = format_pingpong(&local_rc()).to_vec();
    let tool = [
        Op::Read(ours),
        Op::Write(RC_MSG.to_vec()),
        Op::Read(DONE.to_vec()),
    ];
    let mut s = PingpongSession::new(Role::Client, &local_rc());
    // Nothing to read before the message is written.
    assert_eq!(s.wanted_input(), 0);
    assert_eq!(s.pending_output().len(), PINGPONG_MSG_LEN);
    converse(&mut s, &tool, 52, |s| s.resume()).unwrap();
    assert_eq!(s.remote(), Some(&rc_dest()));
}

#[test]
fn pingpong_session_refuses_a_bad_done_and_extra_bytes() {
    let mut s = PingpongSession::new(Role::Server, &local_rc());
    s.input(RC_MSG).unwrap();
    // Paused: nothing is read.
    assert_eq!(s.wanted_input(), 0);
    assert!(matches!(
        s.input(b"x"),
        Err(ExchangeError::Unexpected { len: 1, wanted: 0 })
    ));
    s.resume();
    let n = s.pending_output().len();
    s.output_written(n);
    assert_eq!(s.input(b"dona\0"), Err(ExchangeError::BadDone));
}

fn local_perf() -> PerftestDest {
    PerftestDest {
        lid: 0,
        out_reads: 0,
        qpn: 0x101,
        psn: 0x00beef,
        rkey: 0x0000_4242,
        vaddr: 0x10_0000,
        gid: Some(gid_from_ipv4([10, 0, 12, 2])),
        srqn: 0,
    }
}

/// The tool's operations for one `ctx_xchg_data`/`ctx_hand_shake`.
fn tool_xchg(ops: &mut Vec<Op>, tool_is_client: bool, tool: &[u8], ours: &[u8]) {
    if tool_is_client {
        ops.push(Op::Write(tool.to_vec()));
        ops.push(Op::Read(ours.to_vec()));
    } else {
        ops.push(Op::Read(ours.to_vec()));
        ops.push(Op::Write(tool.to_vec()));
    }
}

/// perftest's sequence (send_lat.c / write_lat.c main) from the tool's side.
fn perftest_tool(test: PerftestTest, tool_is_client: bool, tool_mtu: &[u8; 2]) -> Vec<Op> {
    let mut ops = Vec::new();
    let ours_keys = format_perftest(&local_perf());
    tool_xchg(
        &mut ops,
        tool_is_client,
        b"6.06\0\0\0\0\0\0\0\0\0\0\0\0",
        b"6.06\0\0\0\0\0\0\0\0\0\0\0\0",
    );
    tool_xchg(&mut ops, tool_is_client, &[0, 0, 0x10, 0], &[0, 0, 0x10, 0]);
    tool_xchg(&mut ops, tool_is_client, &[0, 0, 0, 128], &[0, 0, 0, 64]);
    tool_xchg(&mut ops, tool_is_client, tool_mtu, b"3\0");
    let keys = match test {
        PerftestTest::SendLat => 5,
        PerftestTest::WriteLat => 4,
    };
    for _ in 0..keys {
        tool_xchg(&mut ops, tool_is_client, PERF_MSG, &ours_keys);
    }
    if test == PerftestTest::SendLat {
        // ctx_close_connection: each side writes "done"; the tool reads
        // nothing (this replay reads ours to check it was sent).
        ops.push(Op::Write(DONE.to_vec()));
        ops.push(Op::Read(DONE.to_vec()));
    }
    ops
}

#[test]
fn perftest_sessions_against_the_tools() {
    for test in [PerftestTest::SendLat, PerftestTest::WriteLat] {
        for (role, tool_is_client) in [(Role::Server, true), (Role::Client, false)] {
            for chunk in [1, 5, 200] {
                let tool = perftest_tool(test, tool_is_client, b"5\0");
                let mut s = PerftestSession::new(role, test, &local_perf(), 1024).unwrap();
                assert_eq!(s.phase(), PerftestPhase::Connecting);
                let mut phases = Vec::new();
                converse(&mut s, &tool, chunk, |s| {
                    phases.push(s.phase());
                    if s.phase() == PerftestPhase::SetUpQp {
                        assert_eq!(s.remote(), Some(&perf_dest()));
                        // The smaller MTU; the larger cache line.
                        assert_eq!(s.mtu(), Some(1024));
                        assert_eq!(s.sys(), (4096, 128));
                        assert_eq!(s.remote_version(), Some((6, 6)));
                    }
                    s.resume();
                })
                .unwrap_or_else(|e| panic!("{test:?} as {role:?}, chunk {chunk}: {e}"));
                assert_eq!(phases, vec![PerftestPhase::SetUpQp, PerftestPhase::Run]);
                assert_eq!(s.phase(), PerftestPhase::Done);
            }
        }
    }
}

#[test]
fn perftest_session_refusals() {
    // An old peer.
    let mut s =
        PerftestSession::new(Role::Server, PerftestTest::SendLat, &local_perf(), 1024).unwrap();
    assert_eq!(
        s.input(&format_perftest_version("5.60")),
        Err(ExchangeError::VersionTooOld {
            major: 5,
            minor: 60
        })
    );
    // A peer whose attributes change between two handshakes.
    let mut s =
        PerftestSession::new(Role::Server, PerftestTest::WriteLat, &local_perf(), 1024).unwrap();
    s.input(&format_perftest_version("6.06")).unwrap();
    let drain = |s: &mut PerftestSession| {
        let n = s.pending_output().len();
        s.output_written(n);
    };
    drain(&mut s);
    s.input(&[0, 0, 0x10, 0]).unwrap();
    drain(&mut s);
    s.input(&[0, 0, 0, 64]).unwrap();
    drain(&mut s);
    s.input(b"3\0").unwrap();
    drain(&mut s);
    s.input(PERF_MSG).unwrap();
    drain(&mut s);
    let mut other = *PERF_MSG;
    other[17] = b'1';
    assert_eq!(s.input(&other), Err(ExchangeError::DestChanged));
    // No session for an MTU that is no IB MTU.
    assert!(
        PerftestSession::new(Role::Client, PerftestTest::SendLat, &local_perf(), 1500).is_none()
    );
}
