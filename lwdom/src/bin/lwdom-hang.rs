//! Lab negative control `hang`: the guest never finishes. Its scenario must
//! fail on its timeout, with this console shown.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;

lwdom::program!(main);

fn main() -> Result<(), String> {
    lwdom::println!("lwdom: hanging on purpose");
    loop {
        lwdom::rt::sleep_ns(1_000_000_000);
    }
}
