//! dom0 side of the `grant` scenario:
//! `lab-grant DOMID REF_A REF_B PORT`.
//!
//! Maps both granted pages, checks the guest's pattern, writes a reply into
//! page A and notifies; waits for the guest's event (it has tried to end
//! access to page B while mapped), unmaps both pages and notifies again.

use std::process::ExitCode;
use std::time::Duration;

use lab::xendev::{arg_u32, EventChannel, GrantMapping};
use lwdom::lab_proto::{pattern, PATTERN_LEN, REPLY, REPLY_OFFSET};

fn run(args: &[String]) -> Result<(), String> {
    let domid = arg_u32(args, 1, "domid")?;
    let ref_a = arg_u32(args, 2, "grant ref of page A")?;
    let ref_b = arg_u32(args, 3, "grant ref of page B")?;
    let port = arg_u32(args, 4, "event channel port")?;
    let mut ch = EventChannel::bind(domid, port).map_err(|e| e.to_string())?;
    println!("lab-grant: bound to port {port} of domain {domid} as local port {}", ch.port);
    let a = GrantMapping::map(domid, ref_a).map_err(|e| format!("map ref {ref_a}: {e}"))?;
    let b = GrantMapping::map(domid, ref_b).map_err(|e| format!("map ref {ref_b}: {e}"))?;
    println!("lab-grant: mapped refs {ref_a} and {ref_b}");
    for (idx, m) in [&a, &b].into_iter().enumerate() {
        for off in 0..PATTERN_LEN {
            let (got, want) = (m.read(off), pattern(idx as u8, off));
            if got != want {
                return Err(format!("page {} byte {off} is {got:#x}, expected {want:#x}", if idx == 0 { "A" } else { "B" }));
            }
        }
    }
    println!("lab-grant: pattern checked in both pages");
    for (i, v) in REPLY.iter().enumerate() {
        a.write(REPLY_OFFSET + i, *v);
    }
    ch.notify().map_err(|e| e.to_string())?;
    if !ch.wait(Duration::from_secs(60)).map_err(|e| e.to_string())? {
        return Err("no event from the guest within 60 s after the reply".into());
    }
    println!("lab-grant: guest asked to unmap");
    a.unmap().map_err(|e| format!("unmap A: {e}"))?;
    b.unmap().map_err(|e| format!("unmap B: {e}"))?;
    ch.notify().map_err(|e| e.to_string())?;
    println!("lab-grant: unmapped both pages and notified");
    // Let the guest finish before the channel is closed.
    let _ = ch.wait(Duration::from_secs(2));
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("lab-grant: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
