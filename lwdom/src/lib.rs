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
//!   `GNTTABOP_setup_table` and mapped with `update_va_mapping`), event
//!   channels polled in the shared info page, waiting on one or several
//!   ports (up to 128, Xen's limit) with `SCHEDOP_poll` ([`wait`]), and a
//!   clock on Xen system time (never going back).
//!
//! # Xen's ABI and xen-sys
//! The structures passed to Xen (`start_info`, `shared_info`, `vcpu_info`,
//! `vcpu_time_info`, `trap_info`, the event channel and scheduler
//! operations, `mmu_update`) and the hypercall and sub-op numbers come from
//! the `xen-sys` crate (0.0.0-pre2, which builds for
//! `x86_64-unknown-none`); the few it lacks are defined here. [`abi`] lists
//! which, and its host tests check all of them, field by field, against
//! Xen's own headers.
//!
//! The hypercall entry is lwdom's own: xen-sys's hypercall stubs do not
//! declare the `rcx`/`r11` clobbers of the PV hypercall page (whose stubs
//! execute `syscall`, which overwrites both registers), mark a `call` as
//! `nostack` although it pushes a return address, and pass the fifth
//! argument in `r9` where Xen reads `r8`. Using them would let the
//! compiler keep live values in `rcx`/`r11` across a hypercall.
//!
//! Limits, by design of this minimal runtime: one vCPU; event upcalls stay
//! masked (CPU exceptions are reported on the console by a trap table
//! and end the domain as crashed; nothing resumes after one); the heap is a
//! 4 MiB bump allocator ([`bump`]) that recycles freed blocks of up to
//! 64 KiB through per-size-class free lists, reclaims the latest
//! allocation, and starts over when everything was freed; 1024 shareable pages (4 MiB) and at most 32
//! grant table frames; the image is linked at virtual address 0 and relies
//! on the domain builder's initial mapping (pfn N at N * 4096).
//!
//! The console ring ([`ring_bytes`]), the heap's allocator ([`bump`]), the
//! cells behind the runtime's globals ([`global`]), the wait on several
//! event channels ([`wait`]), the ABI definitions ([`abi`]) and the lab's
//! shared definitions ([`lab_proto`]) are plain logic, tested on the host
//! (and under Miri, except the layout checks, which call C); everything
//! that makes hypercalls is under `rt`, built for `target_os = "none"` only.
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

pub mod abi;
pub mod bump;
pub mod global;
pub mod lab_proto;
pub mod pci;
pub mod ring_bytes;
pub mod wait;

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
