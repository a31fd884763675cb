//! Lab scenario `ring`: 100 000 request/response round trips over a shared
//! ring whose back end is a dom0 program, every response checked.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use core::mem::ManuallyDrop;

use grant_tables::{Access, DomId, EventChannels, FrontRing, Platform, PageAllocator, RawRingMemory, SharedPages};
use lwdom::lab_proto::*;
use lwdom::println;
use lwdom::rt::platform::Lw;

lwdom::program!(main);

/// Polls of the ring before blocking on the event channel.
const SPIN: u32 = 2000;
/// Longest wait for one response (the lab runs under emulation, on a host
/// that may be busy).
const WAIT_NS: u64 = 60_000_000_000;

fn main() -> Result<(), String> {
    let r = run();
    let verdict = match &r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("fail {e}"),
    };
    lwdom::rt::xs_write(RING_RESULT_KEY, &verdict).map_err(|e| format!("writing {RING_RESULT_KEY}: {e}"))?;
    r.map(|_| ())
}

fn run() -> Result<String, String> {
    let lw = Lw;
    let table = lw.grant_table().map_err(|e| format!("grant table setup: {e}"))?;
    // Never freed, on every path out of this function, errors included:
    // the grant is not ended before shutdown, so dom0 may map the page
    // until the domain is gone, and a freed page would go back to the pool
    // while still shared (XSA-396).
    let page = ManuallyDrop::new(lw.alloc_zeroed_pages(1).map_err(|e| e.to_string())?);
    // SAFETY: the page is ours for the whole run (never freed, above),
    // page-aligned, 4096 bytes, and accessed only through the ring.
    let mem = unsafe { RawRingMemory::new(page.as_ptr(), 4096) };
    let mut ring: FrontRing<EchoReq, EchoRsp, _> = FrontRing::init(mem).map_err(|e| e.to_string())?;
    let gref = table.grant_access(DomId::DOM0, page.gfn(0).ok_or("no frame")?, Access::ReadWrite).map_err(|e| e.to_string())?;
    let port = lw.alloc_unbound(DomId::DOM0).map_err(|e| e.to_string())?;
    println!("ring: {} slots, ref {}, port {}", ring.size(), gref.raw(), port.0);
    lwdom::rt::xs_write(RING_PORT_KEY, &format!("{}", port.0)).map_err(|e| e.to_string())?;
    lwdom::rt::xs_write(RING_REF_KEY, &format!("{}", gref.raw())).map_err(|e| e.to_string())?;

    let t0 = lwdom::rt::time::now_ns();
    let mut blocks = 0u64;
    let mut missed = 0u64;
    for id in 0..RING_ROUND_TRIPS {
        let value = request_value(id);
        ring.put_request(EchoReq { id, value }).map_err(|e| format!("request {id}: {e}"))?;
        if ring.push_requests() {
            lw.notify(port).map_err(|e| e.to_string())?;
        }
        let mut spins = 0;
        let rsp = loop {
            if let Some(r) = ring.take_response().map_err(|e| format!("response {id}: {e}"))? {
                break r;
            }
            spins += 1;
            if spins > SPIN && !ring.final_check_for_responses().map_err(|e| e.to_string())? {
                blocks += 1;
                if !lw.block(port, Some(WAIT_NS)).map_err(|e| e.to_string())? {
                    // Tell a lost notification from a peer that stalled.
                    if let Some(r) = ring.take_response().map_err(|e| e.to_string())? {
                        missed += 1;
                        println!("ring: response {id} was on the ring but no event came for {} s", WAIT_NS / 1_000_000_000);
                        break r;
                    }
                    return Err(format!("no response to request {id} within {} s", WAIT_NS / 1_000_000_000));
                }
            }
        };
        if rsp.id != id || rsp.value != answer(value) {
            return Err(format!("round trip {id}: response {rsp:?}, expected id {id} value {:#x}", answer(value)));
        }
        if id % 20_000 == 0 && id > 0 {
            println!("ring: {id} round trips checked");
        }
    }
    let ns = lwdom::rt::time::now_ns() - t0;
    println!("ring: {} round trips checked in {} ms ({} blocking waits)", RING_ROUND_TRIPS, ns / 1_000_000, blocks);
    // Stop the back end: a request with id u64::MAX.
    ring.put_request(EchoReq { id: u64::MAX, value: 0 }).map_err(|e| e.to_string())?;
    if ring.push_requests() {
        lw.notify(port).map_err(|e| e.to_string())?;
    }
    // The grant stays open and the page is never freed (`ManuallyDrop`):
    // dom0 may still map it until it has seen the stop request, and the
    // domain ends next.
    let _ = gref;
    if missed > 0 {
        return Err(format!("{missed} response(s) arrived without the event that should have announced them"));
    }
    Ok(format!("{} round trips checked, {} us each on average", RING_ROUND_TRIPS, ns / 1000 / RING_ROUND_TRIPS))
}
