//! pcifront's checks on the backend's reply (`struct xen_pci_op` copied
//! out of the shared page) to an arbitrary request. Never panics; what it
//! accepts is consistent with the request.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use passthrough::config::{ConfigReg, Width};
use passthrough::pciif::{check_reply, OpReply, OpRequest, XenPciOp, OP_SIZE};
use passthrough::Bdf;

#[derive(Arbitrary, Debug)]
enum Req {
    Read { devfn: u8, offset: u16, width: u8 },
    Write { devfn: u8, offset: u16, width: u8, value: u32 },
    EnableMsi { devfn: u8 },
    DisableMsi { devfn: u8 },
    EnableMsix { devfn: u8, entries: Vec<u16> },
    DisableMsix { devfn: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    req: Req,
    /// How many leading bytes of the reply to take from the encoded
    /// request (an honest-looking reply), the rest from `reply`.
    keep: u16,
    reply: Vec<u8>,
}

fn reg(offset: u16, width: u8) -> Option<ConfigReg> {
    let w = match width % 3 {
        0 => Width::Byte,
        1 => Width::Word,
        _ => Width::Dword,
    };
    ConfigReg::new(offset, w).ok()
}

fuzz_target!(|input: Input| {
    let bdf = |devfn| Bdf::from_devfn(0, 0, devfn);
    let req = match input.req {
        Req::Read { devfn, offset, width } => {
            let Some(reg) = reg(offset, width) else { return };
            OpRequest::ConfRead { bdf: bdf(devfn), reg }
        }
        Req::Write { devfn, offset, width, value } => {
            let Some(reg) = reg(offset, width) else { return };
            OpRequest::ConfWrite { bdf: bdf(devfn), reg, value }
        }
        Req::EnableMsi { devfn } => OpRequest::EnableMsi { bdf: bdf(devfn) },
        Req::DisableMsi { devfn } => OpRequest::DisableMsi { bdf: bdf(devfn) },
        Req::EnableMsix { devfn, entries } => OpRequest::EnableMsix { bdf: bdf(devfn), entries },
        Req::DisableMsix { devfn } => OpRequest::DisableMsix { bdf: bdf(devfn) },
    };
    if req.check().is_err() {
        return;
    }
    let mut bytes = req.encode().encode();
    let keep = usize::from(input.keep) % (OP_SIZE + 1);
    for (b, r) in bytes[keep..].iter_mut().zip(&input.reply) {
        *b = *r;
    }
    let reply = XenPciOp::decode(&bytes);
    assert_eq!(reply.encode(), bytes);
    match (check_reply(&req, &reply), &req) {
        (Ok(OpReply::Value(v)), OpRequest::ConfRead { reg, .. }) => {
            assert_eq!(v & !reg.width().mask(), 0);
        }
        (Ok(OpReply::Done), OpRequest::ConfWrite { .. })
        | (Ok(OpReply::Done), OpRequest::DisableMsi { .. })
        | (Ok(OpReply::Done), OpRequest::DisableMsix { .. }) => {}
        (Ok(OpReply::Pirq(p)), OpRequest::EnableMsi { .. }) => {
            assert!(p.0 != 0 && p.0 <= 0xffff);
        }
        (Ok(OpReply::Pirqs(p)), OpRequest::EnableMsix { entries, .. }) => {
            assert_eq!(p.len(), entries.len());
            for (i, x) in p.iter().enumerate() {
                assert_ne!(x.0, 0);
                assert!(p[..i].iter().all(|y| y != x));
            }
        }
        (Ok(r), req) => panic!("reply {r:?} to {req:?}"),
        (Err(e), _) => {
            let _ = e.to_string();
        }
    }
});
