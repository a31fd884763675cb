//! The PV guest runtime proper: boot, console, xenstore, shutdown, memory,
//! event channels and grant table frames on real Xen.
//!
//! The runtime runs on one vCPU with event upcalls masked (no callbacks
//! are registered; events are found by polling the shared info page), so
//! nothing in it runs concurrently with anything else in this domain: the
//! globals below are touched by one flow of control only.

mod boot;
pub mod events;
pub mod heap;
pub mod hypercall;
pub mod mm;
pub mod platform;
pub mod time;
mod traps;

use alloc::string::String;
use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::ptr::NonNull;

use grant_tables::{DomId, Port};

use xenbus::ring::EvtchnSignal;
use xenbus::{Side, StoreRing, Xenstore, XsError};

use crate::ring_bytes::{console_out, ByteRing};
use hypercall::{sched_op, SchedShutdown, SCHEDOP_SHUTDOWN};
use platform::Lw;

/// `SHUTDOWN_*` reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownReason {
    /// Power off.
    Poweroff = 0,
    /// Reboot.
    Reboot = 1,
    /// Crash: the toolstack applies `on_crash`.
    Crash = 3,
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
        // SAFETY: offsets of `struct start_info` (x86_64), inside the page.
        unsafe {
            let q = |off: usize| p.add(off).cast::<u64>().read();
            let d = |off: usize| p.add(off).cast::<u32>().read();
            StartInfo {
                nr_pages: q(32),
                shared_info: q(40),
                store_mfn: q(56),
                store_evtchn: d(64),
                console_mfn: q(72),
                console_evtchn: d(80),
                mfn_list: q(104),
            }
        }
    }
}

/// A global touched by the runtime's single flow of control only.
pub(crate) struct Global<T>(UnsafeCell<Option<T>>);

// SAFETY: the runtime runs on one vCPU without upcalls (module docs), so
// there is never concurrent access.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    const fn new() -> Self {
        Global(UnsafeCell::new(None))
    }
    fn set(&self, v: T) {
        // SAFETY: single flow of control (module docs); no reference from
        // `get` is held across `set` (set happens once, during boot).
        unsafe { *self.0.get() = Some(v) };
    }
    #[allow(clippy::mut_from_ref)]
    fn get(&self) -> Option<&mut T> {
        // SAFETY: single flow of control; callers use the reference briefly
        // and never re-enter (the console and xenstore do not call each
        // other while holding it).
        unsafe { (*self.0.get()).as_mut() }
    }
}

static START: Global<StartInfo> = Global::new();
static CONSOLE: Global<ByteRing> = Global::new();
static XENSTORE: Global<Xenstore<StoreRing<EvtchnSignal<'static, Lw>>>> = Global::new();
/// The platform the runtime's own xenstore connection signals through.
static LW: Lw = Lw;
static IDENTITY: Global<(DomId, String)> = Global::new();

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
pub fn console_write(bytes: &[u8]) {
    let Some(out) = CONSOLE.get() else { return };
    let port = Port(start_info().console_evtchn);
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
                        return;
                    }
                    let _ = events::block(port, Some(100_000_000));
                }
            }
            Err(_) => return,
        }
    }
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
pub fn with_xenstore<R>(f: impl FnOnce(&mut Xenstore<StoreRing<EvtchnSignal<'static, Lw>>>) -> R) -> R {
    f(XENSTORE.get().expect("xenstore set up at boot"))
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
    let until = time::now_ns() + timeout_ns;
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
    let until = time::now_ns() + ns;
    while time::now_ns() < until {
        events::poll_timeout(&[], until);
    }
}

/// Ends the domain.
pub fn shutdown(reason: ShutdownReason) -> ! {
    let arg = SchedShutdown { reason: reason as u32 };
    loop {
        // SAFETY: SCHEDOP_shutdown takes a `struct sched_shutdown`.
        unsafe { sched_op(SCHEDOP_SHUTDOWN, (&arg as *const SchedShutdown).cast()) };
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
    START.set(info);
    mm::init(&info);
    // SAFETY: the console page is the one Xen's builder shares with
    // xenconsoled, mapped by the builder at pfn * 4096; only this ring uses
    // it.
    CONSOLE.set(unsafe { console_out(pfn_to_va(mfn_to_pfn(info.console_mfn))) });
    // SAFETY: likewise for the xenstore page, used only by this client.
    let ring = unsafe { StoreRing::new(pfn_to_va(mfn_to_pfn(info.store_mfn)), Side::Guest, EvtchnSignal::new(&LW, Port(info.store_evtchn))) };
    let mut xs = Xenstore::new(ring);
    xs.set_timeout(XS_TIMEOUT);
    xs.set_clock(|| core::time::Duration::from_nanos(time::now_ns()));
    XENSTORE.set(xs);
    if let Err(rc) = traps::init() {
        crate::println!("lwdom: set_trap_table failed ({rc}); CPU exceptions will end the domain silently");
    }
    crate::println!("lwdom: booted, {} pages, console on port {}, xenstore on port {}", info.nr_pages, info.console_evtchn, info.store_evtchn);
    let id = xs_read("domid").map_err(|e| e.to_string()).and_then(|d| d.trim().parse::<u16>().map_err(|e| alloc::format!("domid {d:?}: {e}")));
    let nm = xs_read("name");
    match (id, nm) {
        (Ok(d), Ok(n)) => IDENTITY.set((DomId(d), n)),
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

use alloc::string::ToString;
