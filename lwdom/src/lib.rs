//! The lightweight domain: a minimal x86-64 PV guest runtime for Xen.
//!
//! A guest program is a Rust function linked with this crate (built for
//! `x86_64-unknown-none` and linked at address 0 with `guest.ld`; `cargo
//! xtask lab` does both). The runtime:
//!
//! - carries Xen's ELF notes, the entry point, the hypercall page and the
//!   boot stack (`rt::boot`);
//! - reads `start_info`, maps the shared info page, and sets up the console
//!   ring to xenconsoled ([`println!`]) and the `xenbus` xenstore client
//!   over the store ring (`rt::xs_read`, `rt::xs_write`, `rt::with_xenstore`);
//! - reads its domid and name from xenstore, runs the program, and shuts the
//!   domain down (poweroff on `Ok`, crash on `Err` or panic, with the reason
//!   on the console);
//! - implements `grant_tables`' platform traits (`rt::platform::Lw`, with
//!   `LwGrantFrames` and `LwPages`):
//!   shareable pages from a pool whose machine frames come from the P2M
//!   list, this domain's grant table frames (set up with
//!   `GNTTABOP_setup_table` and mapped with `update_va_mapping`), and event
//!   channels polled in the shared info page, waiting with `SCHEDOP_poll`.
//!
//! Limits, by design of this minimal runtime: one vCPU; event upcalls stay
//! masked (CPU exceptions are reported on the console by a trap table
//! and end the domain as crashed; nothing resumes after one); the heap is a
//! 4 MiB bump allocator ([`bump`]) that reclaims the latest allocation,
//! resizes it in place, and starts over when everything was freed; 1024 shareable pages (4 MiB) and at most 32
//! grant table frames; the image is linked at virtual address 0 and relies
//! on the domain builder's initial mapping (pfn N at N * 4096).
//!
//! The console ring ([`ring_bytes`]), the heap's allocator ([`bump`]), the
//! cells behind the runtime's globals ([`global`]) and the lab's shared
//! definitions ([`lab_proto`]) are plain logic, tested on the host; everything that
//! makes hypercalls is under `rt`, built for `target_os = "none"` only.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! lwdom::program!(main);
//! fn main() -> Result<(), alloc::string::String> {
//!     lwdom::println!("hello from domain {}", lwdom::rt::domid().0);
//!     Ok(())
//! }
//! ```
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod bump;
pub mod global;
pub mod lab_proto;
pub mod ring_bytes;

#[cfg(target_os = "none")]
pub mod rt;

/// Declares the guest program: `fn() -> Result<(), String>`, run once the
/// runtime is up; `Ok` powers the domain off, `Err` crashes it with the
/// message on the console.
#[macro_export]
macro_rules! program {
    ($main:path) => {
        #[no_mangle]
        fn lwdom_program() -> ::core::result::Result<(), $crate::__String> {
            $main()
        }
    };
}

#[doc(hidden)]
pub use alloc::string::String as __String;
