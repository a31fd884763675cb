//! Lab negative control `fault`: the guest touches an unmapped address.
//! Its scenario must fail, with the page fault reported on its console.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;

lwdom::program!(main);

fn main() -> Result<(), String> {
    lwdom::println!("lwdom: about to touch an unmapped address on purpose");
    let p = core::hint::black_box(0x0000_4000_0000_0000usize) as *const u64;
    // SAFETY: deliberately not safe: this is a negative control that must
    // fault; the trap handler ends the domain.
    let v = unsafe { p.read_volatile() };
    lwdom::println!("read {v:#x}");
    Ok(())
}
