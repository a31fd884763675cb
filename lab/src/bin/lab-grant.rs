//! dom0 side of the `grant` scenario:
//! `lab-grant DOMID REF_A REF_B PORT`.
//!
//! Maps both granted pages, checks the guest's pattern, writes a reply into
//! page A and notifies; waits until the guest has tried to end access to
//! page B while mapped (its step key), unmaps both pages and notifies again.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use lab::xendev::{arg_u32, EventChannel, GrantMapping};
use lwdom::lab_proto::{pattern, GRANT_STEP_KEY, PATTERN_LEN, REPLY, REPLY_OFFSET};

fn run(args: &[String]) -> Result<(), String> {
    let domid = arg_u32(args, 1, "domid")?;
    let ref_a = arg_u32(args, 2, "grant ref of page A")?;
    let ref_b = arg_u32(args, 3, "grant ref of page B")?;
    let port = arg_u32(args, 4, "event channel port")?;
    let mut ch = EventChannel::bind(domid, port).map_err(|e| e.to_string())?;
    println!("lab-grant: bound to port {port} of domain {domid} as local port {}", ch.port);
    // Xen marks the binding end pending when it binds (events sent to the
    // unbound port could have been lost); that event is not the guest's.
    let _ = ch.wait(Duration::from_millis(200));
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
    // The guest tries to end access while both pages are mapped, writes
    // the step key, then notifies.
    let step_key = format!("/local/domain/{domid}/{GRANT_STEP_KEY}");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > until {
            return Err(format!("the guest did not write {step_key} within 60 s after the reply"));
        }
        ch.wait(Duration::from_secs(1)).map_err(|e| e.to_string())?;
        let out = Command::new("xenstore-read").arg(&step_key).output().map_err(|e| format!("cannot run xenstore-read: {e}"))?;
        if out.status.success() {
            println!("lab-grant: guest says {}", String::from_utf8_lossy(&out.stdout).trim());
            break;
        }
    }
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
