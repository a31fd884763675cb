//! The daemon's core against a reference model, on many seeded random
//! operation sequences (in-process, no sockets):
//! - plain operations from dom0 give the model's results and leave the
//!   model's tree;
//! - two interleaved transactions plus outside writes are serializable:
//!   every committed transaction read what the tree held at its commit
//!   point, and the final tree is the model's with the committed
//!   transactions applied in commit order.

use std::collections::BTreeMap;

use hosted::xenstore::{ConnId, XenstoreCore};
use xenbus::wire::{join_strings, split_strings, Decoder, Message, MsgType};

const PATHS: [&str; 8] = [
    "/m",
    "/m/a",
    "/m/b",
    "/m/a/x",
    "/m/a/y",
    "/m/b/z",
    "/m/c",
    "/m/a/x/deep",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write(&'static str, Vec<u8>),
    Mkdir(&'static str),
    Rm(&'static str),
    Read(&'static str),
    Dir(&'static str),
}

fn random_op(r: &mut Rng) -> Op {
    let p = PATHS[r.below(PATHS.len())];
    match r.below(5) {
        0 => Op::Write(p, format!("v{}", r.below(100)).into_bytes()),
        1 => Op::Mkdir(p),
        2 => Op::Rm(p),
        3 => Op::Read(p),
        _ => Op::Dir(p),
    }
}

/// What an operation returned: a value, a listing, OK, or an errno name.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Value(Vec<u8>),
    Names(Vec<String>),
    Ok,
    Err(String),
}

/// The reference: values and ordered children of every node under `/m`
/// (and `/`, which always exists).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Model {
    nodes: BTreeMap<String, (Vec<u8>, Vec<String>)>,
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) => "/",
        Some(i) => &p[..i],
        None => "/",
    }
}

fn base(p: &str) -> &str {
    &p[p.rfind('/').map_or(0, |i| i + 1)..]
}

impl Model {
    fn new() -> Model {
        let mut nodes = BTreeMap::new();
        nodes.insert("/".to_string(), (Vec::new(), Vec::new()));
        Model { nodes }
    }

    fn create(&mut self, p: &str, value: Vec<u8>) {
        if !self.nodes.contains_key(parent(p)) {
            self.create(parent(p), Vec::new());
        }
        if let Some(par) = self.nodes.get_mut(parent(p)) {
            par.1.push(base(p).to_string());
        }
        self.nodes.insert(p.to_string(), (value, Vec::new()));
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Write(p, v) => {
                match self.nodes.get_mut(*p) {
                    Some(n) => n.0.clone_from(v),
                    None => self.create(p, v.clone()),
                }
                Outcome::Ok
            }
            Op::Mkdir(p) => {
                if !self.nodes.contains_key(*p) {
                    self.create(p, Vec::new());
                }
                Outcome::Ok
            }
            Op::Rm(p) => {
                if !self.nodes.contains_key(*p) {
                    return if self.nodes.contains_key(parent(p)) {
                        Outcome::Ok
                    } else {
                        Outcome::Err("ENOENT".into())
                    };
                }
                let prefix = format!("{p}/");
                self.nodes.retain(|k, _| k != p && !k.starts_with(&prefix));
                if let Some(par) = self.nodes.get_mut(parent(p)) {
                    par.1.retain(|c| c != base(p));
                }
                Outcome::Ok
            }
            Op::Read(p) => match self.nodes.get(*p) {
                Some(n) => Outcome::Value(n.0.clone()),
                None => Outcome::Err("ENOENT".into()),
            },
            Op::Dir(p) => match self.nodes.get(*p) {
                Some(n) => Outcome::Names(n.1.clone()),
                None => Outcome::Err("ENOENT".into()),
            },
        }
    }

    /// The model's view of `/m` and below, as (path, value, children).
    fn under_m(&self) -> Vec<(String, Vec<u8>, Vec<String>)> {
        self.nodes
            .iter()
            .filter(|(k, _)| k.as_str() == "/m" || k.starts_with("/m/"))
            .map(|(k, (v, c))| (k.clone(), v.clone(), c.clone()))
            .collect()
    }
}

/// One request through the core; the reply's outcome.
fn call(core: &mut XenstoreCore, conn: ConnId, tx: u32, op: &Op) -> Outcome {
    let (t, payload) = match op {
        Op::Write(p, v) => {
            let mut b = join_strings(&[*p]);
            b.extend_from_slice(v);
            (MsgType::Write, b)
        }
        Op::Mkdir(p) => (MsgType::Mkdir, join_strings(&[*p])),
        Op::Rm(p) => (MsgType::Rm, join_strings(&[*p])),
        Op::Read(p) => (MsgType::Read, join_strings(&[*p])),
        Op::Dir(p) => (MsgType::Directory, join_strings(&[*p])),
    };
    let reply = raw(core, conn, t, tx, payload);
    match (reply.msg_type, op) {
        (MsgType::Error, _) => Outcome::Err(
            String::from_utf8(reply.payload.strip_suffix(&[0]).unwrap().to_vec()).unwrap(),
        ),
        (MsgType::Read, _) => Outcome::Value(reply.payload),
        (MsgType::Directory, _) => Outcome::Names(
            split_strings(&reply.payload)
                .unwrap()
                .iter()
                .map(|s| String::from_utf8(s.to_vec()).unwrap())
                .collect(),
        ),
        _ => {
            assert_eq!(reply.payload, b"OK\0");
            Outcome::Ok
        }
    }
}

fn raw(core: &mut XenstoreCore, conn: ConnId, t: MsgType, tx: u32, payload: Vec<u8>) -> Message {
    let msg = Message::new(t, 7, tx, payload).unwrap();
    assert_eq!(core.feed(conn, &msg.encode()).unwrap(), msg.encode().len());
    let out = core.take_output(conn);
    let mut d = Decoder::new();
    let mut input = out.as_slice();
    let reply = d.decode(&mut input).unwrap().unwrap();
    assert!(input.is_empty(), "exactly one reply (no watches are set)");
    assert_eq!((reply.req_id, reply.tx_id), (7, tx));
    reply
}

/// The daemon's view of `/m` and below (as dom0).
fn daemon_under_m(core: &mut XenstoreCore, conn: ConnId) -> Vec<(String, Vec<u8>, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack = vec!["/m".to_string()];
    while let Some(p) = stack.pop() {
        let Outcome::Value(v) = call(core, conn, 0, &Op::Read(leak(&p))) else {
            continue;
        };
        let Outcome::Names(children) = call(core, conn, 0, &Op::Dir(leak(&p))) else {
            panic!("{p} listed")
        };
        for c in &children {
            stack.push(format!("{p}/{c}"));
        }
        out.push((p, v, children));
    }
    out.sort();
    out
}

/// The model's operations take `&'static str` paths; the tree walk builds
/// a few more, once per distinct path.
fn leak(p: &str) -> &'static str {
    PATHS
        .iter()
        .find(|k| **k == p)
        .copied()
        .unwrap_or_else(|| Box::leak(p.to_string().into_boxed_str()))
}

#[test]
fn plain_operations_match_the_model() {
    for seed in 1..=300u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut core = XenstoreCore::default();
        let conn = core.connect(0);
        let mut model = Model::new();
        for step in 0..60 {
            let op = random_op(&mut r);
            let want = model.apply(&op);
            let got = call(&mut core, conn, 0, &op);
            assert_eq!(got, want, "seed {seed} step {step}: {op:?}");
        }
        assert_eq!(
            daemon_under_m(&mut core, conn),
            model.under_m(),
            "seed {seed}"
        );
        core.check_tree().unwrap();
    }
}

#[test]
fn interleaved_transactions_are_serializable() {
    let mut commits = 0;
    let mut conflicts = 0;
    for seed in 1..=400u64 {
        let mut r = Rng(seed.wrapping_mul(0xd134_2543_de82_ef95) | 1);
        let mut core = XenstoreCore::default();
        let conn = core.connect(0);
        let mut model = Model::new();
        // A common starting tree.
        for _ in 0..8 {
            let op = Op::Write(PATHS[r.below(PATHS.len())], b"init".to_vec());
            model.apply(&op);
            call(&mut core, conn, 0, &op);
        }
        // Two transactions and outside writes, interleaved at random.
        let mut txs: Vec<OpenTx> = Vec::new();
        for _ in 0..2 {
            let reply = raw(
                &mut core,
                conn,
                MsgType::TransactionStart,
                0,
                b"\0".to_vec(),
            );
            let id: u32 = std::str::from_utf8(reply.payload.strip_suffix(&[0]).unwrap())
                .unwrap()
                .parse()
                .unwrap();
            txs.push(OpenTx {
                id,
                done: Vec::new(),
                ended: false,
            });
        }
        for _ in 0..(4 + r.below(12)) {
            match r.below(5) {
                0 => {
                    let op = random_op(&mut r);
                    if matches!(op, Op::Write(..) | Op::Mkdir(_) | Op::Rm(_)) {
                        assert_eq!(
                            call(&mut core, conn, 0, &op),
                            model.apply(&op),
                            "seed {seed}"
                        );
                    }
                }
                k => {
                    let t = &mut txs[k % 2];
                    if !t.ended {
                        let op = random_op(&mut r);
                        let got = call(&mut core, conn, t.id, &op);
                        t.done.push((op, got));
                    }
                }
            }
            // Sometimes end a transaction early.
            if r.below(6) == 0 {
                let i = r.below(2);
                end(
                    &mut core,
                    conn,
                    &mut model,
                    &mut txs[i],
                    seed,
                    &mut commits,
                    &mut conflicts,
                );
            }
        }
        for t in &mut txs {
            end(
                &mut core,
                conn,
                &mut model,
                t,
                seed,
                &mut commits,
                &mut conflicts,
            );
        }
        assert_eq!(
            daemon_under_m(&mut core, conn),
            model.under_m(),
            "seed {seed}"
        );
        core.check_tree().unwrap();
    }
    // The generator exercises both outcomes.
    assert!(
        commits > 100 && conflicts > 50,
        "commits {commits}, conflicts {conflicts}"
    );
}

/// A transaction in progress: its id, what it did and got, whether it
/// ended.
struct OpenTx {
    id: u32,
    done: Vec<(Op, Outcome)>,
    ended: bool,
}

/// Commits a transaction; if the daemon accepts it, every result it gave
/// must be what the model gives at this point (serializability), and the
/// model takes its changes.
fn end(
    core: &mut XenstoreCore,
    conn: ConnId,
    model: &mut Model,
    t: &mut OpenTx,
    seed: u64,
    commits: &mut u32,
    conflicts: &mut u32,
) {
    if t.ended {
        return;
    }
    t.ended = true;
    let reply = raw(core, conn, MsgType::TransactionEnd, t.id, b"T\0".to_vec());
    if reply.msg_type == MsgType::Error {
        assert_eq!(reply.payload, b"EAGAIN\0", "seed {seed}");
        *conflicts += 1;
        return;
    }
    *commits += 1;
    let mut replay = model.clone();
    for (op, got) in &t.done {
        assert_eq!(
            &replay.apply(op),
            got,
            "seed {seed}: transaction {} is not serializable at {op:?}",
            t.id
        );
    }
    *model = replay;
}
