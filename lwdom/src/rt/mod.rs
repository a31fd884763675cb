//! The PV guest runtime proper: boot, console, xenstore, shutdown, memory,
//! event channels and grant table frames on real Xen.
//!
//! The runtime runs on one vCPU with event upcalls masked (no callbacks
//! are registered; events are found by polling the shared info page), so
//! nothing in it runs concurrently with anything else in this domain. The
//! one thing that can interrupt it is a CPU exception, whose handler prints
//! to the console and ends the domain. The globals below never hand out
//! two live `&mut` even then: values set once at boot are only read
//! (`&T`), and the xenstore connection is lent to one closure at a time
//! (re-entry is refused; see `crate::global`).

mod boot;
pub mod events;
pub mod heap;
pub mod hypercall;
pub mod mm;
pub mod pci;
pub mod pcidev;
pub mod platform;
pub mod report;
pub mod time;
mod traps;

use alloc::string::{String, ToString};
use core::fmt::{self, Write};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use grant_tables::{DomId, Port};

use xenbus::ring::EvtchnSignal;
use xenbus::{Side, StoreRing, Xenstore, XsError};

use crate::global::{BorrowError, ExclusiveGlobal, OnceGlobal};
use crate::ring_bytes::{console_out, ByteRing};
use crate::abi::{sched_shutdown, start_info, SCHEDOP_SHUTDOWN, SCHEDOP_YIELD, SHUTDOWN_CRASH, SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT};
use hypercall::sched_op;
use platform::Lw;

/// `SHUTDOWN_*` reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownReason {
    /// Power off.
    Poweroff = SHUTDOWN_POWEROFF,
    /// Reboot.
    Reboot = SHUTDOWN_REBOOT,
    /// Crash: the toolstack applies `on_crash`.
    Crash = SHUTDOWN_CRASH,
}

/// The fields of `start_info` the runtime uses.
#[derive(Clone, Copy, Debug)]
pub struct StartInfo {
    /// Pages of memory.
    pub nr_pages: u64,
    /// Machine address of the shared info page.
    pub shared_info: u64,
    /// The xenstore page's machine frame.
    pub store_mfn: u64,
    /// The xenstore event channel.
    pub store_evtchn: u32,
    /// The console page's machine frame.
    pub console_mfn: u64,
    /// The console event channel.
    pub console_evtchn: u32,
    /// Virtual address of the pfn-to-mfn list.
    pub mfn_list: u64,
}

impl StartInfo {
    /// Copies the fields out of Xen's `start_info` page.
    ///
    /// # Safety
    /// `p` must point at the `start_info` page Xen passed at entry.
    unsafe fn read(p: *const u8) -> Self {
        // SAFETY: the caller vouches for the page, which Xen page-aligns
        // (so aligned for `start_info`) and fills before entry; every bit
        // pattern is a valid `start_info` (integers and arrays of them).
        let si = unsafe { p.cast::<start_info>().read() };
        // SAFETY: `console` is the `domU` variant for every domain but
        // dom0, and both variants are plain integers.
        let console = unsafe { si.console.domU };
        StartInfo {
            nr_pages: si.nr_pages,
            shared_info: si.shared_info,
            store_mfn: si.store_mfn,
            store_evtchn: si.store_evtchn,
            console_mfn: console.mfn,
            console_evtchn: console.evtchn,
            mfn_list: si.mfn_list,
        }
    }
}

/// The domain's one xenstore connection.
type Store = Xenstore<StoreRing<EvtchnSignal<'static, Lw>>>;

/// Makes a runtime value `Send`/`Sync` so that it can sit in a global.
///
/// The runtime runs on one vCPU: these values are never touched by two
/// threads. The cells they sit in (`crate::global`) still refuse a second
/// `&mut` when a trap handler re-enters.
pub(crate) struct OneVcpu<T>(pub(crate) T);

// SAFETY: one vCPU, no threads: the value never moves to or is shared with
// another thread (module docs).
unsafe impl<T> Send for OneVcpu<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for OneVcpu<T> {}

/// Set once at boot, then only read.
static START: OnceGlobal<StartInfo> = OnceGlobal::new();
/// Set once at boot, then only read: writing to the ring takes `&ByteRing`
/// (the ring is shared memory, accessed with atomics and volatile copies).
static CONSOLE: OnceGlobal<OneVcpu<ByteRing>> = OnceGlobal::new();
/// A console write is in progress (a second one is a trap or panic handler
/// that interrupted it).
static CONSOLE_BUSY: AtomicBool = AtomicBool::new(false);
/// Mutable: lent to one `with_xenstore` at a time.
static XENSTORE: ExclusiveGlobal<OneVcpu<Store>> = ExclusiveGlobal::new();
/// The platform the runtime's own xenstore connection signals through.
static LW: Lw = Lw;
/// Set once at boot, then only read.
static IDENTITY: OnceGlobal<(DomId, String)> = OnceGlobal::new();

/// The start info the domain booted with.
pub fn start_info() -> StartInfo {
    *START.get().expect("start_info read at boot")
}

/// The mapped shared info page.
pub(crate) fn shared_info() -> *mut u8 {
    mm::shared_info_window()
}

/// The machine-to-physical table Xen maps read-only for PV guests.
const M2P: *const u64 = 0xFFFF_8000_0000_0000 as *const u64;

/// The pseudo-physical frame of a machine frame.
pub fn mfn_to_pfn(mfn: u64) -> u64 {
    // SAFETY: Xen maps the M2P table read-only at this address in every PV
    // guest; every machine frame has an entry.
    unsafe { M2P.add(mfn as usize).read_volatile() }
}

/// The virtual address of a page in the domain builder's initial mapping
/// (pfn N at N * 4096, VIRT_BASE 0).
fn pfn_to_va(pfn: u64) -> NonNull<u8> {
    NonNull::new((pfn << 12) as *mut u8).expect("pfn 0 holds the boot code, never a ring")
}

/// Writes bytes to the console ring, waiting for space while the console
/// daemon drains it.
///
/// A write that interrupts another one (a trap or panic handler that ran
/// while a write was in progress) does not wait: it puts what fits on the
/// ring once. The interrupted write never resumes (those handlers end the
/// domain), so the handler's message is what xenconsoled gets.
pub fn console_write(bytes: &[u8]) {
    let Some(OneVcpu(out)) = CONSOLE.get() else { return };
    let port = Port(start_info().console_evtchn);
    if CONSOLE_BUSY.swap(true, Ordering::Acquire) {
        let _ = out.write_some(bytes);
        let _ = events::notify(port);
        return;
    }
    let mut rest = bytes;
    let mut stalls = 0;
    while !rest.is_empty() {
        match out.write_some(rest) {
            Ok(n) => {
                rest = &rest[n..];
                let _ = events::notify(port);
                if n == 0 {
                    stalls += 1;
                    // The daemon drains the ring when it runs; do not wait
                    // forever if it is gone.
                    if stalls > 50 {
                        break;
                    }
                    let _ = events::block(port, Some(100_000_000));
                }
            }
            Err(_) => break,
        }
    }
    CONSOLE_BUSY.store(false, Ordering::Release);
}

/// The console as a `fmt::Write`.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        console_write(s.as_bytes());
        Ok(())
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::rt::Console, format_args!($($arg)*));
    }};
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}

/// How long one wait for xenstored may last.
const XS_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(20);

/// Runs `f` with the xenstore connection.
///
/// # Panics
/// If called from inside `f` (directly or through `xs_read`, `xs_write`,
/// `xs_wait`): the connection is lent to one caller at a time. The panic
/// ends the domain as crashed with that reason on the console.
pub fn with_xenstore<R>(f: impl FnOnce(&mut Store) -> R) -> R {
    match XENSTORE.with(|xs| f(&mut xs.0)) {
        Ok(r) => r,
        Err(BorrowError::Busy) => {
            panic!("xenstore used re-entrantly: rt::with_xenstore (or xs_read/xs_write/xs_wait) called inside a with_xenstore closure")
        }
        Err(BorrowError::Unset) => panic!("xenstore used before the runtime set it up at boot"),
    }
}

/// Reads a xenstore key (relative to `/local/domain/<domid>` or absolute).
pub fn xs_read(path: &str) -> Result<String, XsError> {
    with_xenstore(|xs| xs.read_string(path))
}

/// Writes a xenstore key.
pub fn xs_write(path: &str, value: &str) -> Result<(), XsError> {
    with_xenstore(|xs| xs.write(path, value))
}

/// Polls a xenstore key until it exists or `timeout_ns` passes.
pub fn xs_wait(path: &str, timeout_ns: u64) -> Result<String, XsError> {
    let until = time::now_ns().saturating_add(timeout_ns);
    loop {
        match xs_read(path) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_not_found() => {
                if time::now_ns() > until {
                    return Err(e);
                }
                sleep_ns(20_000_000);
            }
            Err(e) => return Err(e),
        }
    }
}

/// This domain's id (read from xenstore at boot).
pub fn domid() -> DomId {
    IDENTITY.get().map(|i| i.0).unwrap_or(DomId(0x7FF0))
}

/// This domain's name (read from xenstore at boot).
pub fn name() -> String {
    IDENTITY.get().map(|i| i.1.clone()).unwrap_or_default()
}

/// Sleeps for about `ns` nanoseconds (blocks the vCPU).
pub fn sleep_ns(ns: u64) {
    let until = time::now_ns().saturating_add(ns).max(1);
    while time::now_ns() < until {
        if events::poll_timeout(&[], until).is_err() {
            // SCHEDOP_poll on no ports refused (it never is on Xen 4.x):
            // give the CPU away at each turn rather than spin.
            // SAFETY: SCHEDOP_yield takes no argument.
            unsafe { sched_op(SCHEDOP_YIELD, core::ptr::null()) };
        }
    }
}

/// Ends the domain.
pub fn shutdown(reason: ShutdownReason) -> ! {
    let arg = sched_shutdown { reason: reason as u32 };
    loop {
        // SAFETY: SCHEDOP_shutdown takes a `struct sched_shutdown`.
        unsafe { sched_op(SCHEDOP_SHUTDOWN, (&arg as *const sched_shutdown).cast()) };
    }
}

/// Boots the runtime, runs the program, shuts down.
///
/// # Safety
/// Called once, by `_start`, with the `start_info` pointer Xen passed.
#[no_mangle]
unsafe extern "C" fn lwdom_rust_start(si: *const u8) -> ! {
    // SAFETY: Xen passes start_info in %rsi, which `_start` forwards.
    let info = unsafe { StartInfo::read(si) };
    let _ = START.set(info);
    // The domain builder opened these two.
    events::mark_open(Port(info.console_evtchn));
    events::mark_open(Port(info.store_evtchn));
    mm::init(&info);
    // SAFETY: the console page is the one Xen's builder shares with
    // xenconsoled, mapped by the builder at pfn * 4096; only this ring uses
    // it.
    let _ = CONSOLE.set(OneVcpu(unsafe { console_out(pfn_to_va(mfn_to_pfn(info.console_mfn))) }));
    // SAFETY: likewise for the xenstore page, used only by this client.
    let mut ring = unsafe { StoreRing::new(pfn_to_va(mfn_to_pfn(info.store_mfn)), Side::Guest, EvtchnSignal::new(&LW, Port(info.store_evtchn))) };
    // Timed waits on the ring end at their deadline even when xenstored
    // signals without writing.
    ring.set_clock(|| core::time::Duration::from_nanos(time::now_ns()));
    let mut xs = Xenstore::new(ring);
    xs.set_timeout(XS_TIMEOUT);
    xs.set_clock(|| core::time::Duration::from_nanos(time::now_ns()));
    if XENSTORE.set(OneVcpu(xs)).is_err() {
        unreachable!("nothing else sets the xenstore connection");
    }
    if let Err(rc) = traps::init() {
        crate::println!("lwdom: set_trap_table failed ({rc}); CPU exceptions will end the domain silently");
    }
    if let Err(rc) = boot::unmap_stack_guard() {
        crate::println!("lwdom: unmapping the guard page below the stack failed ({rc}); a stack overflow will go unnoticed");
    }
    crate::println!("lwdom: booted, {} pages, console on port {}, xenstore on port {}", info.nr_pages, info.console_evtchn, info.store_evtchn);
    let id = xs_read("domid").map_err(|e| e.to_string()).and_then(|d| d.trim().parse::<u16>().map_err(|e| alloc::format!("domid {d:?}: {e}")));
    let nm = xs_read("name");
    match (id, nm) {
        (Ok(d), Ok(n)) => {
            let _ = IDENTITY.set((DomId(d), n));
        }
        (Err(e), _) => {
            crate::println!("lwdom: FATAL: cannot read this domain's id from xenstore: {e}");
            shutdown(ShutdownReason::Crash);
        }
        (_, Err(e)) => {
            crate::println!("lwdom: FATAL: cannot read this domain's name from xenstore: {e}");
            shutdown(ShutdownReason::Crash);
        }
    }
    extern "Rust" {
        fn lwdom_program() -> Result<(), String>;
    }
    // SAFETY: `lwdom::program!` defines `lwdom_program` with this signature.
    match unsafe { lwdom_program() } {
        Ok(()) => {
            crate::println!("lwdom: program finished; powering off");
            shutdown(ShutdownReason::Poweroff)
        }
        Err(e) => {
            crate::println!("lwdom: program FAILED: {e}");
            shutdown(ShutdownReason::Crash)
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("lwdom: PANIC: {info}");
    shutdown(ShutdownReason::Crash)
}
