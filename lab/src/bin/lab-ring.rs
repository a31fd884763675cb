//! dom0 side of the `ring` scenario: `lab-ring DOMID REF PORT`.
//!
//! Maps the guest's ring page with gntdev and serves it with
//! `grant_tables::BackRing`: every request is answered with
//! `lab_proto::answer(value)`, until a request with id `u64::MAX`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use grant_tables::{BackRing, RawRingMemory};
use lab::xendev::{arg_u32, EventChannel, GrantMapping};
use lwdom::lab_proto::{answer, EchoReq, EchoRsp};

/// Polls of the ring before blocking on the event channel.
const SPIN: Duration = Duration::from_micros(200);
/// Longest wait for one request (the guest gives up on a response after a
/// minute; the lab runs under emulation on a host that may be busy).
const WAIT: Duration = Duration::from_secs(90);

fn run(args: &[String]) -> Result<(), String> {
    let domid = arg_u32(args, 1, "domid")?;
    let gref = arg_u32(args, 2, "grant ref of the ring")?;
    let port = arg_u32(args, 3, "event channel port")?;
    let mut ch = EventChannel::bind(domid, port).map_err(|e| e.to_string())?;
    let page = GrantMapping::map(domid, gref).map_err(|e| format!("map ref {gref}: {e}"))?;
    // SAFETY: the mapping is one page, page-aligned, alive until `page` is
    // dropped at the end of this function (after the ring), and accessed
    // only through the ring.
    let mem = unsafe { RawRingMemory::new(page.ptr(), 4096) };
    let mut ring: BackRing<EchoReq, EchoRsp, _> = BackRing::new(mem).map_err(|e| e.to_string())?;
    println!("lab-ring: serving ring ref {gref} of domain {domid} ({} slots), local port {}", ring.size(), ch.port);
    let mut served = 0u64;
    let mut blocks = 0u64;
    let mut missed = 0u64;
    let t0 = Instant::now();
    loop {
        let mut idle_since: Option<Instant> = None;
        let req = loop {
            if let Some(r) = ring.take_request().map_err(|e| format!("after {served} requests: {e}"))? {
                break r;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > SPIN && !ring.final_check_for_requests().map_err(|e| e.to_string())? {
                blocks += 1;
                if !ch.wait(WAIT).map_err(|e| e.to_string())? {
                    // Tell a lost notification from a guest that stalled.
                    if ring.unconsumed_requests().map_err(|e| e.to_string())? > 0 {
                        missed += 1;
                        println!("lab-ring: a request was on the ring but no event came for {} s", WAIT.as_secs());
                    } else {
                        return Err(format!("no request from the guest within {} s after {served} requests", WAIT.as_secs()));
                    }
                }
                idle_since = None;
            }
        };
        if req.id == u64::MAX {
            break;
        }
        ring.put_response(EchoRsp { id: req.id, value: answer(req.value) }).map_err(|e| e.to_string())?;
        if ring.push_responses() {
            ch.notify().map_err(|e| e.to_string())?;
        }
        served += 1;
    }
    println!("lab-ring: served {served} requests in {:.1} s ({blocks} blocking waits)", t0.elapsed().as_secs_f64());
    if missed > 0 {
        return Err(format!("{missed} request(s) arrived without the event that should have announced them"));
    }
    // The ring is done with the page before it is unmapped.
    let _ = ring.into_memory();
    page.unmap().map_err(|e| format!("unmap: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("lab-ring: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
