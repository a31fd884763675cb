//! Lab scenario `grant`: grant two pages to dom0 and exchange data through
//! them; show that ending access fails while dom0 maps a page and succeeds
//! once it unmapped.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use core::mem::ManuallyDrop;

use grant_tables::{Access, DomId, EventChannels, Platform, PageAllocator, SharedPages};
use lwdom::lab_proto::*;
use lwdom::println;
use lwdom::rt::platform::Lw;

lwdom::program!(main);

const WAIT_NS: u64 = 60_000_000_000;

fn main() -> Result<(), String> {
    let r = run();
    let verdict = match &r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("fail {e}"),
    };
    lwdom::rt::xs_write(GRANT_RESULT_KEY, &verdict).map_err(|e| format!("writing {GRANT_RESULT_KEY}: {e}"))?;
    r.map(|_| ())
}

fn run() -> Result<String, String> {
    let lw = Lw;
    let table = lw.grant_table().map_err(|e| format!("grant table setup: {e}"))?;
    println!("grant: grant table mapped, {} entries", table.capacity());
    // The pages are freed only through `end_access_with_page`, which gives
    // a page back once its grant has ended and keeps it (quarantined)
    // otherwise. Every early return leaves them allocated: dom0 may map a
    // granted page, and a freed page would go back to the pool while still
    // shared (XSA-396).
    let a = ManuallyDrop::new(lw.alloc_zeroed_pages(1).map_err(|e| e.to_string())?);
    let b = ManuallyDrop::new(lw.alloc_zeroed_pages(1).map_err(|e| e.to_string())?);
    for (idx, page) in [&a, &b].into_iter().enumerate() {
        let p = page.as_ptr().as_ptr();
        for off in 0..PATTERN_LEN {
            // SAFETY: the page is ours, 4096 bytes, not yet granted.
            unsafe { p.add(off).write_volatile(pattern(idx as u8, off)) };
        }
    }
    let gfn_a = a.gfn(0).ok_or("page A has no frame")?;
    let gfn_b = b.gfn(0).ok_or("page B has no frame")?;
    let ga = table.grant_access(DomId::DOM0, gfn_a, Access::ReadWrite).map_err(|e| e.to_string())?;
    let gb = table.grant_access(DomId::DOM0, gfn_b, Access::ReadWrite).map_err(|e| e.to_string())?;
    let port = lw.alloc_unbound(DomId::DOM0).map_err(|e| e.to_string())?;
    println!("grant: page A mfn {:#x} ref {}, page B mfn {:#x} ref {}, port {}", gfn_a.0, ga.raw(), gfn_b.0, gb.raw(), port.0);
    lwdom::rt::xs_write(GRANT_PORT_KEY, &format!("{}", port.0)).map_err(|e| e.to_string())?;
    lwdom::rt::xs_write(GRANT_REFS_KEY, &format!("{} {}", ga.raw(), gb.raw())).map_err(|e| e.to_string())?;

    // dom0 maps both pages, checks the pattern, replies in A, notifies.
    if !lw.block(port, Some(WAIT_NS)).map_err(|e| e.to_string())? {
        return Err("dom0 did not notify within 60 s after the refs were published".into());
    }
    let mut reply = [0u8; 64];
    for (i, r) in reply[..REPLY.len()].iter_mut().enumerate() {
        // SAFETY: page A is ours; dom0 writes it too, so bytes are read
        // volatile into a local copy.
        *r = unsafe { a.as_ptr().as_ptr().add(REPLY_OFFSET + i).read_volatile() };
    }
    if &reply[..REPLY.len()] != REPLY {
        return Err(format!("dom0's reply in page A is {:?}", String::from_utf8_lossy(&reply[..REPLY.len()])));
    }
    println!("grant: dom0's reply found in page A");
    if !table.in_use_by_peer(&ga) {
        return Err(format!("page A's grant flags {:?} do not show dom0's mapping", table.flags_of(&ga)));
    }
    // Ending B's grant while dom0 maps it must fail (and quarantine B).
    match table.end_access_with_page(gb, ManuallyDrop::into_inner(b)) {
        Ok(_) => return Err("end access of page B succeeded while dom0 maps it".into()),
        Err(e) => println!("grant: end access of page B while dom0 maps it fails as it must: {e}"),
    }
    // dom0 unmaps both pages, then notifies.
    lwdom::rt::xs_write(GRANT_STEP_KEY, "end-access-tried").map_err(|e| e.to_string())?;
    lw.notify(port).map_err(|e| e.to_string())?;
    if !lw.block(port, Some(WAIT_NS)).map_err(|e| e.to_string())? {
        return Err("dom0 did not notify within 60 s that it unmapped the pages".into());
    }
    let a = table.end_access_with_page(ga, ManuallyDrop::into_inner(a)).map_err(|e| format!("end access of page A after dom0 unmapped it: {e}"))?;
    drop(a);
    println!("grant: end access of page A after dom0 unmapped it succeeded");
    Ok(format!("reply checked; end access refused while mapped (quarantined {}), accepted after unmap", table.quarantined_count()))
}
