//! The hosted xenstore daemon's request handling on arbitrary input from
//! clients (in-process, no sockets): raw byte chunks and well-framed
//! requests with arbitrary payloads, from dom0 and unprivileged domains,
//! interleaved with connects, disconnects, introductions and releases.
//! Nothing panics, the tree stays consistent, every byte the daemon sends
//! is a well-formed message.
#![no_main]

use arbitrary::Arbitrary;
use hosted::xenstore::{ConnId, Quotas, XenstoreCore};
use libfuzzer_sys::fuzz_target;
use xenbus::wire::{join_strings, Decoder, Message, MsgType, XENSTORE_PAYLOAD_MAX};

#[derive(Arbitrary, Debug)]
enum Arg {
    Path(u8),
    Number(u16),
    Perm(u8, u8),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Raw bytes to a connection.
    Raw {
        conn: u8,
        bytes: Vec<u8>,
    },
    /// A framed request.
    Request {
        conn: u8,
        msg_type: u8,
        tx: u8,
        args: Vec<Arg>,
        trailing_nul: bool,
    },
    Connect {
        domid: u8,
    },
    Disconnect {
        conn: u8,
    },
    Introduce {
        domid: u8,
    },
    Release {
        domid: u8,
    },
}

const PATHS: [&str; 12] = [
    "/",
    "/local/domain/1",
    "/local/domain/1/device/vif/0/state",
    "device/vif/0",
    "/local/domain/2/backend/vif/1/0",
    "/a",
    "/a/b",
    "/a/b/c",
    "@introduceDomain",
    "@releaseDomain",
    "data",
    "/tool/xenstored",
];

fn arg_bytes(a: &Arg) -> Vec<u8> {
    match a {
        Arg::Path(i) => PATHS[usize::from(*i) % PATHS.len()].as_bytes().to_vec(),
        Arg::Number(n) => n.to_string().into_bytes(),
        Arg::Perm(l, d) => format!(
            "{}{}",
            ['n', 'r', 'w', 'b', 'x'][usize::from(*l) % 5],
            d % 4
        )
        .into_bytes(),
        Arg::Bytes(b) => b.clone(),
    }
}

/// Every byte sent to a client must decode to whole, valid messages.
fn check_output(bytes: &[u8]) {
    let mut d = Decoder::new();
    let mut input = bytes;
    while !input.is_empty() {
        let m = d
            .decode(&mut input)
            .expect("daemon output is well-framed")
            .expect("whole messages only");
        assert!(m.payload.len() <= XENSTORE_PAYLOAD_MAX);
        assert!(m.msg_type != MsgType::Error || m.payload.ends_with(&[0]));
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let quotas = Quotas {
        nodes_per_domain: 50,
        watches_per_domain: 8,
        ..Quotas::default()
    };
    let mut core = XenstoreCore::new(quotas);
    let _ = core.introduce(1, 0, 0);
    let mut conns: Vec<ConnId> = vec![core.connect(0), core.connect(1)];
    for step in steps.into_iter().take(200) {
        match step {
            Step::Raw { conn, bytes } => {
                if let Some(&id) = conns.get(usize::from(conn) % conns.len().max(1)) {
                    if core.feed(id, &bytes).is_err() {
                        core.disconnect(id);
                        conns.retain(|c| *c != id);
                    }
                }
            }
            Step::Request {
                conn,
                msg_type,
                tx,
                args,
                trailing_nul,
            } => {
                let Some(&id) = conns.get(usize::from(conn) % conns.len().max(1)) else {
                    continue;
                };
                let t = MsgType::ALL[usize::from(msg_type) % MsgType::ALL.len()];
                let parts: Vec<Vec<u8>> = args.iter().take(8).map(arg_bytes).collect();
                let mut payload = join_strings(&parts);
                if !trailing_nul {
                    payload.pop();
                }
                payload.truncate(XENSTORE_PAYLOAD_MAX);
                let Ok(msg) = Message::new(t, 1, u32::from(tx % 4), payload) else {
                    continue;
                };
                if core.feed(id, &msg.encode()).is_err() {
                    core.disconnect(id);
                    conns.retain(|c| *c != id);
                }
            }
            Step::Connect { domid } => {
                if conns.len() < 8 {
                    conns.push(core.connect(u16::from(domid % 4)));
                }
            }
            Step::Disconnect { conn } => {
                if !conns.is_empty() {
                    let id = conns.remove(usize::from(conn) % conns.len());
                    core.disconnect(id);
                }
            }
            Step::Introduce { domid } => drop(core.introduce(u16::from(domid % 4), 0, 0)),
            Step::Release { domid } => drop(core.release(u16::from(domid % 4))),
        }
        for &id in &conns {
            check_output(&core.take_output(id));
        }
        assert_eq!(core.check_tree(), Ok(()));
    }
});
