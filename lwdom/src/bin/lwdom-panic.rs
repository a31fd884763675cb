//! Lab negative control `panic`: the guest panics after a console line.
//! Its scenario must fail, with this console shown.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;

lwdom::program!(main);

fn main() -> Result<(), String> {
    lwdom::println!("lwdom: about to panic on purpose");
    let v: [u32; 2] = [1, 2];
    let i = lwdom::rt::domid().0 as usize + 5;
    // An out-of-bounds index the compiler cannot see through.
    lwdom::println!("{}", v[core::hint::black_box(i)]);
    Ok(())
}
