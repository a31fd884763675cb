//! Lab scenario `boot`: console, identity from xenstore, a result key,
//! poweroff.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;

lwdom::program!(main);

fn main() -> Result<(), String> {
    let domid = lwdom::rt::domid();
    let name = lwdom::rt::name();
    lwdom::println!("lwdom: hello from domain {} ({name})", domid.0);
    let result = format!("ok domid={} name={name}", domid.0);
    lwdom::rt::xs_write("data/result", &result).map_err(|e| format!("writing data/result: {e}"))?;
    lwdom::println!("lwdom: wrote data/result = {result}");
    Ok(())
}
