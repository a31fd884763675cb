//! `grant_tables`' platform traits implemented with hypercalls.

use alloc::sync::Arc;
use core::ptr::NonNull;

use grant_tables::abi::{GrantEntryV1, GRANT_ENTRIES_V1_PER_PAGE};
use grant_tables::{Clock, DomId, EventChannels, Gfn, GrantTable, GrantTableFrames, PageAllocator, Platform, PlatformError, Port, SharedPages};

use super::{events, mm};
use crate::global::OnceGlobal;

/// Grant table frames the runtime asks Xen for (512 entries each).
pub const GRANT_FRAMES: u32 = 4;

/// The domain's grant table, set up on first use, then only read.
static GRANTS: OnceGlobal<Arc<GrantTable<LwGrantFrames>>> = OnceGlobal::new();

/// The lightweight domain on real Xen.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lw;

/// Pages from the shareable pool; back to the pool on drop.
#[derive(Debug)]
pub struct LwPages {
    ptr: NonNull<u8>,
    count: usize,
}

// SAFETY: the pages are pool pages (page-aligned, mapped for the domain's
// lifetime, zeroed by `alloc_pages`, owned by this value alone) and `gfn`
// gives each page's machine frame from the P2M list, which is what a PV
// guest's grant entries name.
unsafe impl SharedPages for LwPages {
    fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }
    fn page_count(&self) -> usize {
        self.count
    }
    fn gfn(&self, index: usize) -> Option<Gfn> {
        (index < self.count).then(|| Gfn(mm::va_to_mfn(self.ptr.as_ptr().wrapping_add(index * 4096))))
    }
}

// SAFETY: the handle owns its pages; the runtime has one flow of control.
unsafe impl Send for LwPages {}

impl Drop for LwPages {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`count` come from one `alloc_pages` call; callers
        // end every grant of the pages before dropping them (a page whose
        // grant could not be ended is kept by the grant table's quarantine,
        // never dropped).
        unsafe { mm::free_pages(self.ptr, self.count) };
    }
}

impl PageAllocator for Lw {
    type Pages = LwPages;
    fn alloc_zeroed_pages(&self, count: usize) -> Result<LwPages, PlatformError> {
        mm::alloc_pages(count).map(|ptr| LwPages { ptr, count }).ok_or(PlatformError::OutOfMemory { pages: count })
    }
}

/// This domain's grant table frames, mapped.
#[derive(Debug)]
pub struct LwGrantFrames {
    entries: NonNull<GrantEntryV1>,
    frames: u32,
}

impl LwGrantFrames {
    /// Sets up and maps `frames` grant table frames (fewer if Xen allows
    /// fewer). Called once, by [`Platform::grant_table`].
    fn setup(frames: u32) -> Result<Self, PlatformError> {
        let (p, n) = mm::map_grant_frames(frames).map_err(|(op, code)| PlatformError::Os { op, code })?;
        Ok(LwGrantFrames { entries: p.cast(), frames: n })
    }
}

// SAFETY: the frames are this domain's grant table, mapped in the grant
// window for the domain's lifetime (never unmapped), page-aligned, holding
// `frames * 512` v1 entries; `GrantTable` is their only user here.
unsafe impl GrantTableFrames for LwGrantFrames {
    fn entries(&self) -> NonNull<GrantEntryV1> {
        self.entries
    }
    fn entry_count(&self) -> u32 {
        self.frames * GRANT_ENTRIES_V1_PER_PAGE as u32
    }
}

// SAFETY: plain addresses of hypervisor-shared memory, accessed atomically
// by `GrantTable`.
unsafe impl Send for LwGrantFrames {}
// SAFETY: as above.
unsafe impl Sync for LwGrantFrames {}

impl EventChannels for Lw {
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, PlatformError> {
        events::alloc_unbound(remote)
    }
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
        events::bind_interdomain(remote, remote_port)
    }
    fn notify(&self, port: Port) -> Result<(), PlatformError> {
        events::notify(port)
    }
    fn mask(&self, port: Port) -> Result<(), PlatformError> {
        events::mask(port)
    }
    fn unmask(&self, port: Port) -> Result<(), PlatformError> {
        events::unmask(port)
    }
    fn poll(&self, port: Port) -> Result<bool, PlatformError> {
        events::poll(port)
    }
    fn block(&self, port: Port, timeout_ns: Option<u64>) -> Result<bool, PlatformError> {
        events::block(port, timeout_ns)
    }
    /// `SCHEDOP_poll` on up to 128 ports (Xen's limit).
    fn block_any(&self, ports: &[Port], timeout_ns: Option<u64>) -> Result<Option<Port>, PlatformError> {
        events::block_any(ports, timeout_ns)
    }
    fn close(&self, port: Port) -> Result<(), PlatformError> {
        events::close(port)
    }
}

/// Xen system time (see `rt::time`).
impl Clock for Lw {
    fn now_ns(&self) -> u64 {
        super::time::now_ns()
    }
}

impl Platform for Lw {
    type GrantFrames = LwGrantFrames;
    fn domid(&self) -> DomId {
        super::domid()
    }
    /// Sets up [`GRANT_FRAMES`] frames on first use (GNTTABOP_setup_table
    /// and mapping of the frames); later calls return the same table.
    fn grant_table(&self) -> Result<&Arc<GrantTable<LwGrantFrames>>, PlatformError> {
        if let Some(t) = GRANTS.get() {
            return Ok(t);
        }
        let frames = LwGrantFrames::setup(GRANT_FRAMES)?;
        // Set once: a table set meanwhile (impossible on one vCPU without
        // upcalls) would be kept and this one dropped.
        let _ = GRANTS.set(Arc::new(GrantTable::new(frames)));
        GRANTS.get().ok_or(PlatformError::Os { op: "grant table setup", code: -1 })
    }
}
