//! Lab scenario `boot`: console, identity from xenstore, the platform's
//! clock and waits on several event channels on real Xen, a result key,
//! poweroff.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};

use grant_tables::{Clock, EventChannels, PlatformError, Port};
use lwdom::rt::platform::Lw;

lwdom::program!(main);

fn main() -> Result<(), String> {
    let domid = lwdom::rt::domid();
    let name = lwdom::rt::name();
    lwdom::println!("lwdom: hello from domain {} ({name})", domid.0);
    let seam = seam_checks().map_err(|e| format!("platform seam: {e}"))?;
    lwdom::println!("lwdom: {seam}");
    let result = format!("ok domid={} name={name}", domid.0);
    lwdom::rt::xs_write("data/result", &result).map_err(|e| format!("writing data/result: {e}"))?;
    lwdom::println!("lwdom: wrote data/result = {result}");
    Ok(())
}

const MS: u64 = 1_000_000;

/// The clock and `block_any` against Xen itself, on loopback channels
/// (both ends in this domain).
fn seam_checks() -> Result<String, String> {
    let lw = Lw;
    let e = |e: PlatformError| e.to_string();
    // The clock never goes back and follows Xen's system time.
    let mut last = lw.now_ns();
    for _ in 0..100_000 {
        let t = lw.now_ns();
        if t < last {
            return Err(format!("the clock went back from {last} to {t}"));
        }
        last = t;
    }
    lwdom::rt::sleep_ns(20 * MS);
    let slept = lw.now_ns() - last;
    if slept < 20 * MS {
        return Err(format!("a 20 ms sleep moved the clock {slept} ns"));
    }

    // Three loopback channels: notify on `ends[i]`, the event lands on
    // `ports[i]`.
    let me = lwdom::rt::domid();
    let mut ports = [Port(0); 3];
    let mut ends = [Port(0); 3];
    for i in 0..3 {
        ports[i] = lw.alloc_unbound(me).map_err(e)?;
        ends[i] = lw.bind_interdomain(me, ports[i]).map_err(e)?;
        // Binding marks the new end pending; nothing else is.
        let _ = lw.poll(ends[i]).map_err(e)?;
        let _ = lw.poll(ports[i]).map_err(e)?;
    }
    // A timeout, sleeping in SCHEDOP_poll on the three ports.
    let t = lw.now_ns();
    if let Some(p) = lw.block_any(&ports, Some(30 * MS)).map_err(e)? {
        return Err(format!("{p} pending with nothing sent"));
    }
    let waited = lw.now_ns() - t;
    if waited < 30 * MS {
        return Err(format!("block_any timed out after {waited} ns, before its 30 ms"));
    }
    // Each port in turn, masked, in an order that is not the slice's.
    for &p in &ports {
        lw.mask(p).map_err(e)?;
    }
    for i in [2, 0, 1] {
        lw.notify(ends[i]).map_err(e)?;
        match lw.block_any(&ports, Some(1_000 * MS)).map_err(e)? {
            Some(p) if p == ports[i] => {}
            other => return Err(format!("notified {} and block_any returned {other:?}", ports[i])),
        }
    }
    // Two pending: one per call, in slice order.
    lw.notify(ends[1]).map_err(e)?;
    lw.notify(ends[0]).map_err(e)?;
    let first = lw.block_any(&ports, Some(0)).map_err(e)?;
    let second = lw.block_any(&ports, Some(0)).map_err(e)?;
    let none = lw.block_any(&ports, Some(0)).map_err(e)?;
    if (first, second, none) != (Some(ports[0]), Some(ports[1]), None) {
        return Err(format!("two pending ports gave {first:?}, {second:?}, {none:?}"));
    }
    // Xen refuses a port beyond the domain's limit: the error comes back
    // at once rather than a spin until the deadline.
    let t = lw.now_ns();
    let refused = lwdom::rt::events::poll_timeout(&[ports[0].0, 1 << 30], t + 1_000 * MS);
    let took = lw.now_ns() - t;
    if !matches!(refused, Err(PlatformError::Os { op: "SCHEDOP_poll", .. })) || took > 500 * MS {
        return Err(format!("SCHEDOP_poll on a bad port gave {refused:?} after {took} ns"));
    }
    // A closed port is refused before any hypercall.
    for i in 0..3 {
        lw.close(ends[i]).map_err(e)?;
        lw.close(ports[i]).map_err(e)?;
    }
    match lw.block_any(&ports, Some(MS)) {
        Err(PlatformError::BadPort(p)) if p == ports[0] => {}
        other => return Err(format!("block_any on closed ports gave {other:?}")),
    }
    Ok(format!(
        "seam checked: clock monotonic over 100000 reads, a 30 ms block_any timeout took {} us, masked wakeups on 3 ports, SCHEDOP_poll's error returned in {} us",
        waited / 1000,
        took / 1000
    ))
}
