//! Memory: the pool of shareable pages (in the image's bss, so inside the
//! domain builder's initial mapping where pfn N is at virtual N * 4096;
//! each page's machine frame comes from the P2M list), and windows of
//! virtual addresses where machine frames that are not ours by pfn (the
//! shared info page, the grant table frames) are mapped with
//! `update_va_mapping`.

use core::cell::UnsafeCell;
use core::ptr::NonNull;

use super::hypercall::{update_va_mapping, UVMF_INVLPG};
use super::StartInfo;
use crate::abi::VCPU0_UPCALL_MASK;
use crate::global::OnceGlobal;
use crate::pci::PageBitmap;

const PAGE: usize = 4096;

/// Pages of the shareable pool.
pub const POOL_PAGES: usize = 1024;
/// Most grant table frames that can be mapped.
pub const MAX_GRANT_FRAMES: usize = 32;

#[repr(C, align(4096))]
pub(super) struct Pages<const N: usize>(UnsafeCell<[[u8; PAGE]; N]>);

// SAFETY: accessed through raw pointers only, by the runtime's single flow
// of control (see the module docs of `rt`).
unsafe impl<const N: usize> Sync for Pages<N> {}

impl<const N: usize> Pages<N> {
    pub(super) const fn new() -> Self {
        Pages(UnsafeCell::new([[0; PAGE]; N]))
    }
    pub(super) fn page(&self, i: usize) -> *mut u8 {
        assert!(i < N);
        self.0.get().cast::<u8>().wrapping_add(i * PAGE)
    }
}

static SHARED_INFO_WINDOW: Pages<1> = Pages::new();
static GRANT_WINDOW: Pages<MAX_GRANT_FRAMES> = Pages::new();
static POOL: Pages<POOL_PAGES> = Pages::new();
/// One bit per pool page: in use.
static POOL_USED: PageBitmap<{ POOL_PAGES / 64 }> = PageBitmap::new();
/// The P2M list's address: set once at boot, then only read.
static MFN_LIST: OnceGlobal<usize> = OnceGlobal::new();

/// Page table entry bits: present, writable, user, accessed, dirty.
const PTE_RW: u64 = 0x67;

/// Points the page at `va` at machine frame `mfn`.
///
/// # Safety
/// Nothing may rely on what `va` mapped before; `va` must be a page of one
/// of this module's windows.
unsafe fn map_machine_frame(va: *mut u8, mfn: u64) -> Result<(), isize> {
    // SAFETY: forwarded contract; the PTE names a frame Xen checks we may
    // map.
    let rc = unsafe { update_va_mapping(va as usize, (mfn << 12) | PTE_RW, UVMF_INVLPG) };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

/// Maps the shared info page, masks event upcalls, and records the P2M
/// list.
pub(super) fn init(info: &StartInfo) {
    let _ = MFN_LIST.set(info.mfn_list as usize);
    // SAFETY: the window is reserved for the shared info page.
    if unsafe { map_machine_frame(SHARED_INFO_WINDOW.page(0), info.shared_info >> 12) }.is_err() {
        // No console yet (the console needs event channels); nothing to
        // say it with.
        super::shutdown(super::ShutdownReason::Crash);
    }
    // The runtime registers no event callback and finds events by polling:
    // upcalls must stay masked. The domain builder masks them, but the
    // runtime does not rely on that.
    // SAFETY: the shared info page is mapped just above; the byte is
    // vcpu_info[0].evtchn_upcall_mask, shared with Xen, hence volatile.
    unsafe { SHARED_INFO_WINDOW.page(0).add(VCPU0_UPCALL_MASK).write_volatile(1) };
}

/// The mapped shared info page.
pub(crate) fn shared_info_window() -> *mut u8 {
    SHARED_INFO_WINDOW.page(0)
}

/// The machine frame of a pseudo-physical frame (from the P2M list).
pub fn pfn_to_mfn(pfn: u64) -> u64 {
    let list = *MFN_LIST.get().expect("P2M list recorded at boot") as *const u64;
    // SAFETY: the builder maps the P2M list (one entry per page of the
    // domain) and `pfn` is a page of this domain.
    unsafe { list.add(pfn as usize).read_volatile() }
}

/// The machine frame of the page at `va` in the initial mapping.
pub fn va_to_mfn(va: *const u8) -> u64 {
    pfn_to_mfn(va as u64 >> 12)
}

/// Allocates `count` contiguous, zeroed pool pages.
pub fn alloc_pages(count: usize) -> Option<NonNull<u8>> {
    let start = POOL_USED.alloc(count)?;
    let p = POOL.page(start);
    // SAFETY: the pages are in the pool, just marked in use, and not shared
    // with anyone yet.
    unsafe { core::ptr::write_bytes(p, 0, count * PAGE) };
    NonNull::new(p)
}

/// Returns pages from [`alloc_pages`] to the pool.
///
/// # Safety
/// `p` and `count` must come from one [`alloc_pages`] call, and no peer may
/// still have access to the pages.
pub unsafe fn free_pages(p: NonNull<u8>, count: usize) {
    let first = (p.as_ptr() as usize - POOL.page(0) as usize) / PAGE;
    POOL_USED.free(first, count);
}

/// Records that pseudo-physical frame `pfn` is now backed by machine frame
/// `mfn` (after Xen exchanged the page).
///
/// # Safety
/// `pfn` must be a page of this domain that Xen just backed with `mfn`.
pub(super) unsafe fn set_pfn_to_mfn(pfn: u64, mfn: u64) {
    let list = *MFN_LIST.get().expect("P2M list recorded at boot") as *mut u64;
    // SAFETY: the builder maps the P2M list writable in the initial
    // mapping, one entry per page of the domain; only this runtime (one
    // flow of control) reads or writes it.
    unsafe { list.add(pfn as usize).write_volatile(mfn) };
}

/// Sets up `wanted` grant table frames (fewer if Xen allows fewer) and
/// maps them; returns the first entry and how many frames were mapped, or
/// the failed operation with Xen's code (the hypercall's return value, or
/// the operation's `GNTST_*` status when the hypercall returned 0).
pub fn map_grant_frames(wanted: u32) -> Result<(NonNull<u8>, u32), (&'static str, i32)> {
    use super::hypercall::grant_table_op;
    use grant_tables::abi::{gnttabop, GnttabQuerySize, GnttabSetupTable, DOMID_SELF};
    let mut q = GnttabQuerySize { dom: DOMID_SELF, ..Default::default() };
    // SAFETY: GNTTABOP_query_size takes one `struct gnttab_query_size`.
    let rc = unsafe { grant_table_op(gnttabop::QUERY_SIZE as usize, (&mut q as *mut GnttabQuerySize).cast(), 1) };
    if rc != 0 || q.status != 0 {
        return Err(("GNTTABOP_query_size", if rc != 0 { rc as i32 } else { q.status as i32 }));
    }
    let nr = wanted.min(q.max_nr_frames).min(MAX_GRANT_FRAMES as u32).max(1);
    let mut frames = [0u64; MAX_GRANT_FRAMES];
    let mut s = GnttabSetupTable { dom: DOMID_SELF, nr_frames: nr, frame_list: frames.as_mut_ptr() as u64, ..Default::default() };
    // SAFETY: GNTTABOP_setup_table takes one `struct gnttab_setup_table`
    // whose frame list (`frames`, room for `nr` entries) lives across the
    // call.
    let rc = unsafe { grant_table_op(gnttabop::SETUP_TABLE as usize, (&mut s as *mut GnttabSetupTable).cast(), 1) };
    if rc != 0 || s.status != 0 {
        return Err(("GNTTABOP_setup_table", if rc != 0 { rc as i32 } else { s.status as i32 }));
    }
    for (i, mfn) in frames[..nr as usize].iter().enumerate() {
        // SAFETY: the grant window is reserved for the grant table frames.
        if let Err(rc) = unsafe { map_machine_frame(GRANT_WINDOW.page(i), *mfn) } {
            return Err(("update_va_mapping of a grant table frame", rc as i32));
        }
    }
    NonNull::new(GRANT_WINDOW.page(0)).map(|p| (p, nr)).ok_or(("grant window at address 0", -1))
}
