//! The xenstore ring transport and the client on top of it, against a
//! peer that writes arbitrary indices and bytes into the shared page at
//! every notification: nothing panics or loops, a transport that saw a bad
//! index stays broken, no read returns more than asked.
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use xenbus::ring::{offsets, NotifyFn, RingPage, Side, StoreRing, INTERFACE_SIZE};
use xenbus::{Transport, Wait, Xenstore};

#[derive(Arbitrary, Debug, Clone)]
enum Poke {
    /// Write a u32 field (req_cons, rsp_prod, connection, ...).
    Index { field: u8, value: u32 },
    /// Move a peer index forward by a small amount.
    Advance { rsp: bool, by: u16 },
    /// Write bytes into the page.
    Bytes { offset: u16, bytes: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
enum Step {
    Send { len: u16 },
    Recv { len: u16 },
    Peer(Poke),
    Read { path: u8 },
    Write { path: u8, value: Vec<u8> },
    Directory { path: u8 },
    Watch { path: u8 },
    Transaction,
    Pump,
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: [u32; 4],
    features: u32,
    /// Applied one per notification, as the peer's reaction.
    reactions: Vec<Vec<Poke>>,
    steps: Vec<Step>,
}

const FIELDS: [usize; 7] = [
    offsets::REQ_CONS,
    offsets::REQ_PROD,
    offsets::RSP_CONS,
    offsets::RSP_PROD,
    offsets::SERVER_FEATURES,
    offsets::CONNECTION,
    offsets::ERROR,
];

const PATHS: [&str; 4] = [
    "/local/domain/1/device/vif/0/state",
    "device/vbd",
    "/",
    "@releaseDomain",
];

fn apply(page: &RingPage, p: &Poke) {
    match p {
        Poke::Index { field, value } => {
            page.write_u32(FIELDS[usize::from(*field) % FIELDS.len()], *value)
        }
        Poke::Advance { rsp, by } => {
            let off = if *rsp {
                offsets::RSP_PROD
            } else {
                offsets::REQ_CONS
            };
            page.write_u32(off, page.read_u32(off).wrapping_add(u32::from(*by)));
        }
        Poke::Bytes { offset, bytes } => page.fill(usize::from(*offset) % INTERFACE_SIZE, bytes),
    }
}

fuzz_target!(|input: Input| {
    let Some(page) = RingPage::new() else { return };
    let page = Rc::new(page);
    page.write_u32(offsets::REQ_CONS, input.start[0]);
    page.write_u32(offsets::REQ_PROD, input.start[1]);
    page.write_u32(offsets::RSP_CONS, input.start[2]);
    page.write_u32(offsets::RSP_PROD, input.start[3]);
    page.write_u32(offsets::SERVER_FEATURES, input.features);
    let reactions = Rc::new(RefCell::new(input.reactions.into_iter()));
    let (p2, r2) = (Rc::clone(&page), Rc::clone(&reactions));
    let notify = move || {
        if let Some(pokes) = r2.borrow_mut().next() {
            for p in &pokes {
                apply(&p2, p);
            }
        }
    };
    // SAFETY: the page is 4096 bytes, page-aligned, outlives the ring (the
    // Rc keeps it alive in the closure and here), and is only accessed
    // through raw volatile/atomic accesses.
    let ring = unsafe { StoreRing::new(page.as_ptr(), Side::Guest, NotifyFn(notify)) };
    let mut xs = Xenstore::new(ring);
    let mut was_broken = false;
    for step in input.steps.iter().take(64) {
        match step {
            Step::Send { len } => {
                let data = vec![0x5a; usize::from(*len) % 4096];
                if let Ok(n) = xs.transport_mut().send(&data, Wait::NoWait) {
                    assert!(n <= data.len());
                }
            }
            Step::Recv { len } => {
                let mut buf = vec![0u8; usize::from(*len) % 4096];
                if let Ok(n) = xs.transport_mut().recv(&mut buf, Wait::NoWait) {
                    assert!(n <= buf.len());
                }
            }
            Step::Peer(p) => apply(&page, p),
            Step::Read { path } => drop(xs.read(PATHS[usize::from(*path) % PATHS.len()])),
            Step::Write { path, value } => {
                drop(xs.write(PATHS[usize::from(*path) % PATHS.len()], value))
            }
            Step::Directory { path } => drop(xs.directory(PATHS[usize::from(*path) % PATHS.len()])),
            Step::Watch { path } => drop(xs.watch(PATHS[usize::from(*path) % PATHS.len()], "tok")),
            Step::Transaction => drop(xs.transaction(|tx| tx.write("/a", "b"))),
            Step::Pump => drop(xs.pump()),
        }
        let broken = xs.transport_mut().broken().is_some();
        assert!(broken || !was_broken, "a broken ring came back");
        was_broken = broken;
        while xs.take_event().is_some() {}
    }
});
