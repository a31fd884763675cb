//! The connection exchanges of `ibv_rc_pingpong` and perftest: their
//! message parsers and the two conversations, fed a hostile peer's bytes.
//!
//! The first input byte picks what is fuzzed: the parsers on the raw
//! bytes (whatever parses formats back into a message that parses to the
//! same values), or a session (role and test from the byte) fed the rest
//! in chunks whose sizes the input also chooses. Never panics; a session
//! never asks for more bytes than its next message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdma_passthrough::exchange::{
    format_perftest, format_pingpong, gid_from_ipv4, parse_perftest, parse_perftest_mtu,
    parse_perftest_sys, parse_perftest_version, parse_pingpong, Exchange, PerftestDest,
    PerftestSession, PerftestTest, PingpongDest, PingpongSession, Role, PERFTEST_MSG_GID_LEN,
};

fn parsers(data: &[u8]) {
    if let Ok(d) = parse_pingpong(data) {
        assert_eq!(parse_pingpong(&format_pingpong(&d)), Ok(d));
    }
    for with_gid in [false, true] {
        if let Ok(d) = parse_perftest(data, with_gid) {
            let m = format_perftest(&d);
            assert_eq!(parse_perftest(&m, with_gid), Ok(d));
        }
    }
    let _ = parse_perftest_version(data);
    let _ = parse_perftest_sys(data, "fuzz");
    let _ = parse_perftest_mtu(data);
}

/// Feeds `data` to `x` in chunks, writing whatever it has to say.
fn converse<E: Exchange>(x: &mut E, data: &[u8], resume: &mut dyn FnMut(&mut E)) {
    let mut at = 0;
    let mut rounds = 0;
    while at < data.len() && rounds < 4096 {
        rounds += 1;
        let out = x.pending_output().len();
        x.output_written(out);
        if x.is_paused() {
            resume(x);
            continue;
        }
        let want = x.wanted_input();
        if want == 0 {
            if x.is_done() {
                return;
            }
            continue;
        }
        assert!(want <= PERFTEST_MSG_GID_LEN);
        let chunk = 1 + usize::from(data[at]) % want;
        at += 1;
        let end = (at + chunk).min(data.len());
        if x.input(&data[at..end]).is_err() {
            return;
        }
        at = end;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let role = if mode & 2 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    match mode % 4 {
        0 | 2 => parsers(rest),
        1 => {
            let local = PingpongDest {
                lid: 0,
                qpn: 0x101,
                psn: 0x1234,
                gid: gid_from_ipv4([10, 0, 12, 2]),
            };
            let mut x = PingpongSession::new(role, &local);
            converse(&mut x, rest, &mut |x: &mut PingpongSession| x.resume());
        }
        _ => {
            let test = if mode & 4 == 0 {
                PerftestTest::SendLat
            } else {
                PerftestTest::WriteLat
            };
            let local = PerftestDest {
                lid: 0,
                out_reads: 0,
                qpn: 0x101,
                psn: 0x1234,
                rkey: 0x42,
                vaddr: 0x1000,
                gid: (mode & 8 == 0).then(|| gid_from_ipv4([10, 0, 12, 2])),
                srqn: 0,
            };
            if let Some(mut x) = PerftestSession::new(role, test, &local, 1024) {
                converse(&mut x, rest, &mut |x: &mut PerftestSession| {
                    if let Some(m) = x.mtu() {
                        assert!(m <= 1024);
                    }
                    x.resume()
                });
            }
        }
    }
});
