//! PCI passthrough on Xen: device memory mapped into the domain, DMA
//! memory with known bus addresses, and device interrupts as event
//! channels. The arithmetic and checks are `crate::pci`'s (host-tested);
//! this module makes the hypercalls.
//!
//! - **BARs** ([`map_mmio`]): each frame of the BAR is mapped uncached
//!   (PCD|PWT: UC) into a window of [`MMIO_WINDOW_PAGES`] pages with
//!   `update_va_mapping`, the frame's owner being the domain itself. Xen
//!   finds that the frame is device memory and checks it against the I/O
//!   memory the toolstack permitted the domain (libxl permits a
//!   passed-through device's BARs); other frames are refused with `-EPERM`.
//!   Naming `DOMID_IO` as the owner, as Mini-OS does with `mmu_update`,
//!   changes nothing for that check (Xen reverts `DOMID_IO` to the caller),
//!   and with `update_va_mapping_otherdomain` it is refused outright: Xen
//!   4.17's default XSM policy lets only the control domain name another
//!   domain there (`-EPERM` for every frame, seen in the lab); only
//!   `mmu_update` exempts `DOMID_IO`, and it needs the machine address of
//!   the page table entry. Pages of MSI-X tables are forced read-only by
//!   Xen. Dropping the mapping puts the window's own pages back.
//! - **DMA** ([`alloc_dma`]): pool pages, exchanged with Xen
//!   (`XENMEM_exchange`, as Linux's `xen_create_contiguous_region` does)
//!   for one naturally aligned, machine-contiguous extent below the
//!   device's address mask when the pages are not so already. The pages
//!   are unmapped during the exchange (Xen takes back only unmapped
//!   pages), then mapped at the same addresses and recorded in the P2M
//!   list. Their bus address is their machine address: Xen's IOMMU tables
//!   for a PV domain map each writable page at its machine frame.
//! - **Interrupts** ([`bind_pirq`]): a pirq (from pcifront's
//!   `enable_msi`/`enable_msix`, set up by dom0's pciback) bound to an
//!   event channel with `EVTCHNOP_bind_pirq`; Xen delivers an interrupt
//!   that needs an end-of-interrupt (an MSI without per-vector masking,
//!   such as edu's) again only after an end-of-interrupt
//!   (`PHYSDEVOP_eoi`), which the runtime sends when the event is taken
//!   (`events::poll`, and so every wait).

use core::ptr::NonNull;

use grant_tables::{PlatformError, Port};

use super::hypercall::{
    memory_op, physdev_op, update_va_mapping, UVMF_INVLPG,
};
use super::mm::{self, Pages};
use super::{events, mfn_to_pfn, start_info};
use crate::abi::{
    physdev_eoi, physdev_irq_status_query, xen_memory_exchange, xen_memory_reservation,
    PHYSDEVOP_EOI, PHYSDEVOP_IRQ_STATUS_QUERY, XENIRQSTAT_NEEDS_EOI, XENMEM_EXCHANGE,
    XENMEM_MAXIMUM_RAM_PAGE,
};
use crate::pci::{self, PageBitmap, PlanError, PAGE, PAGE_SHIFT};

/// Pages of the window device memory is mapped into (2 MiB: edu's 1 MiB
/// BAR and e1000e's BARs together).
pub const MMIO_WINDOW_PAGES: usize = 512;

static MMIO_WINDOW: Pages<MMIO_WINDOW_PAGES> = Pages::new();
static MMIO_USED: PageBitmap<{ MMIO_WINDOW_PAGES / 64 }> = PageBitmap::new();

/// `DOMID_SELF`.
const DOMID_SELF: u16 = grant_tables::abi::DOMID_SELF;

fn plan(op: &'static str, e: PlanError) -> PlatformError {
    log::error!("{op}: {e}");
    PlatformError::InvalidRequest {
        op,
        reason: match e {
            PlanError::Empty => "an empty range: give a length of at least one byte",
            PlanError::OutOfRange { .. } => {
                "the range ends beyond 52-bit machine addresses (a BAR read wrong, or not sized)"
            }
            PlanError::TooLarge { .. } => {
                "more pages than the runtime maps or exchanges at once: use smaller pieces"
            }
            PlanError::BadMask(_) => "the DMA mask is not 2^n - 1 with n from 13 to 64",
            PlanError::BadExtent { .. } => {
                "Xen returned an extent that is not aligned or not below the mask"
            }
        },
    }
}

fn os(op: &'static str, rc: isize) -> PlatformError {
    PlatformError::Os {
        op,
        code: rc as i32,
    }
}

/// Device memory mapped into the domain (uncached). Unmapped on drop.
#[derive(Debug)]
pub struct MmioMapping {
    /// First window page.
    first: usize,
    /// Window pages.
    pages: usize,
    /// The range's offset into the first page.
    offset: usize,
    /// The range's length.
    len: usize,
    /// The machine address mapped.
    machine: u64,
}

impl MmioMapping {
    /// The mapped range's first byte.
    pub fn ptr(&self) -> NonNull<u8> {
        let p = MMIO_WINDOW.page(self.first).wrapping_add(self.offset);
        NonNull::new(p).expect("the MMIO window is not at address 0")
    }
    /// The mapped range's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the range is empty (never: empty ranges are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The machine address of the range's first byte.
    pub fn machine_address(&self) -> u64 {
        self.machine
    }
}

/// Puts the window's own RAM page back at window page `i`.
fn restore_window_page(i: usize) {
    let va = MMIO_WINDOW.page(i);
    let mfn = mm::va_to_mfn(va);
    match pci::ram_pte(mfn) {
        Ok(pte) => {
            // SAFETY: the window page mapped device memory that its
            // mapping's owner no longer uses (it is being dropped, or was
            // never handed out); the page's own frame is mapped back where
            // it belongs.
            let rc = unsafe { update_va_mapping(va as usize, pte, UVMF_INVLPG) };
            if rc != 0 {
                log::error!("putting window page {i} back (frame {mfn:#x}) failed with {rc}; the page stays out of use");
                return;
            }
        }
        Err(e) => {
            log::error!("window page {i}: {e}; the page stays out of use");
            return;
        }
    }
    MMIO_USED.free(i, 1);
}

impl Drop for MmioMapping {
    fn drop(&mut self) {
        for i in self.first..self.first + self.pages {
            restore_window_page(i);
        }
    }
}

/// Maps `len` bytes of device memory at machine address `addr` (a BAR, or
/// part of one), uncached and writable.
///
/// Errors: a range that is empty, overflows or is larger than what is left
/// of the window (`InvalidRequest`/`OutOfMemory`); Xen's refusal of a frame
/// (`Os` with `update_va_mapping`'s code, -1
/// `EPERM`: the toolstack did not permit the frame, i.e. it is not a BAR
/// of a device passed through to this domain).
pub fn map_mmio(addr: u64, len: u64) -> Result<MmioMapping, PlatformError> {
    let r = pci::frames_of(addr, len).map_err(|e| plan("map_mmio", e))?;
    let pages = usize::try_from(r.count).unwrap_or(usize::MAX);
    let first = MMIO_USED
        .alloc(pages)
        .ok_or(PlatformError::OutOfMemory { pages })?;
    for i in 0..pages {
        let frame = r.first + i as u64;
        let va = MMIO_WINDOW.page(first + i);
        let rc = match pci::mmio_pte(frame) {
            // SAFETY: the window page was just allocated to this mapping;
            // nothing reads or writes it through its RAM mapping.
            Ok(pte) => unsafe { update_va_mapping(va as usize, pte, UVMF_INVLPG) },
            Err(e) => return Err(plan("map_mmio", e)),
        };
        if rc != 0 {
            log::error!(
                "mapping device frame {frame:#x} (of {addr:#x} + {len:#x}) failed with {rc}"
            );
            for j in first..first + i {
                restore_window_page(j);
            }
            MMIO_USED.free(first + i, pages - i);
            return Err(os("update_va_mapping of a device frame", rc));
        }
    }
    Ok(MmioMapping {
        first,
        pages,
        offset: r.offset as usize,
        len: len as usize,
        machine: addr,
    })
}

/// Memory a device may read and write: pool pages, machine-contiguous and
/// below the device's address mask. Returned to the pool on drop (the
/// device must no longer use it).
#[derive(Debug)]
pub struct DmaPages {
    ptr: NonNull<u8>,
    pages: usize,
    bus: u64,
}

impl DmaPages {
    /// The buffer's first byte.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
    /// Its length in bytes (whole pages: a power of two of them).
    pub fn len(&self) -> usize {
        self.pages * PAGE as usize
    }
    /// Whether it is empty (never).
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }
    /// The bus address of its first byte (its machine address).
    pub fn bus_address(&self) -> u64 {
        self.bus
    }
}

// SAFETY: the handle owns its pages; the runtime has one flow of control.
unsafe impl Send for DmaPages {}

impl Drop for DmaPages {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`pages` come from one `alloc_pages` call; the
        // owner promises the device is done with them.
        unsafe { mm::free_pages(self.ptr, self.pages) };
    }
}

/// The machine frames of `n` pages from `va`.
fn frames(va: *mut u8, n: usize) -> impl Iterator<Item = u64> {
    (0..n).map(move |i| mm::va_to_mfn(va.wrapping_add(i * PAGE as usize)))
}

/// Allocates at least `bytes` bytes of zeroed DMA memory, machine-
/// contiguous and below `mask` (`2^n - 1`), in a power of two of pages (at
/// most 512).
///
/// Errors: a bad size or mask (`InvalidRequest`); the pool is full
/// (`OutOfMemory`); Xen refused the exchange (`Os` with its code: -ENOMEM
/// (-12) when it has no free memory below the mask).
pub fn alloc_dma(bytes: usize, mask: u64) -> Result<DmaPages, PlatformError> {
    let bits = pci::address_bits(mask).map_err(|e| plan("alloc_dma", e))?;
    let pages = (bytes as u64).div_ceil(PAGE);
    let order = pci::exchange_order(pages).map_err(|e| plan("alloc_dma", e))?;
    let n = 1usize << order;
    let ptr = mm::alloc_pages(n).ok_or(PlatformError::OutOfMemory { pages: n })?;
    let va = ptr.as_ptr();
    let base = mm::va_to_mfn(va);
    let contiguous = frames(va, n)
        .enumerate()
        .all(|(i, f)| Some(f) == base.checked_add(i as u64));
    if contiguous && pci::check_extent(base, order, bits).is_ok() {
        return Ok(DmaPages {
            ptr,
            pages: n,
            bus: base << PAGE_SHIFT,
        });
    }
    match exchange(va, order, bits) {
        Ok(new_base) => {
            // SAFETY: the pages are mapped again and still ours alone; Xen
            // does not promise scrubbed pages.
            unsafe { core::ptr::write_bytes(va, 0, n * PAGE as usize) };
            Ok(DmaPages {
                ptr,
                pages: n,
                bus: new_base << PAGE_SHIFT,
            })
        }
        Err((e, give_back)) => {
            if give_back {
                // SAFETY: from `alloc_pages` above; the pages are mapped
                // and nobody else has them.
                unsafe { mm::free_pages(ptr, n) };
            }
            Err(e)
        }
    }
}

/// Exchanges the `2^order` pool pages at `va` for one extent below
/// `2^bits`; returns its first machine frame. On error, whether the pages
/// may go back to the pool (they may not when Xen took some of them).
fn exchange(va: *mut u8, order: u32, bits: u32) -> Result<u64, (PlatformError, bool)> {
    let n = 1usize << order;
    let mut old = [0u64; 1 << pci::MAX_EXCHANGE_ORDER];
    for (slot, f) in old.iter_mut().zip(frames(va, n)) {
        *slot = f;
    }
    let pfn = va as u64 >> PAGE_SHIFT;
    // Xen takes back only pages nobody maps: unmap them first.
    for i in 0..n {
        // SAFETY: the pages were just taken from the pool, zeroed, and are
        // not used by anyone until mapped again below.
        let rc = unsafe { update_va_mapping(va as usize + i * PAGE as usize, 0, UVMF_INVLPG) };
        if rc != 0 {
            remap(va, &old[..i]);
            return Err((
                os("update_va_mapping (unmapping a page to exchange)", rc),
                true,
            ));
        }
    }
    let mut out_frame = pfn;
    let mut exch = xen_memory_exchange {
        r#in: xen_memory_reservation {
            extent_start: old.as_mut_ptr() as u64,
            nr_extents: n as u64,
            extent_order: 0,
            mem_flags: 0,
            domid: DOMID_SELF,
        },
        out: xen_memory_reservation {
            extent_start: (&mut out_frame as *mut u64) as u64,
            nr_extents: 1,
            extent_order: order,
            mem_flags: bits,
            domid: DOMID_SELF,
        },
        nr_exchanged: 0,
    };
    // SAFETY: XENMEM_exchange takes a `struct xen_memory_exchange` whose
    // frame lists (`old`, `n` entries read; `out_frame`, one entry read and
    // written) live across the call.
    let rc = unsafe {
        memory_op(
            XENMEM_EXCHANGE,
            (&mut exch as *mut xen_memory_exchange).cast(),
        )
    };
    if rc != 0 || exch.nr_exchanged != n as u64 {
        if exch.nr_exchanged == 0 {
            remap(va, &old[..n]);
            return Err((os("XENMEM_exchange", if rc != 0 { rc } else { -1 }), true));
        }
        // Xen exchanges whole output extents, so this cannot happen; if it
        // did, some pfns would have no frame: keep them out of the pool.
        log::error!(
            "XENMEM_exchange exchanged {} of {n} pages (rc {rc}); the pages stay out of the pool",
            exch.nr_exchanged
        );
        return Err((
            os("XENMEM_exchange (partial)", if rc != 0 { rc } else { -1 }),
            false,
        ));
    }
    let base = out_frame;
    let check = pci::check_extent(base, order, bits);
    let new: [u64; 1 << pci::MAX_EXCHANGE_ORDER] =
        core::array::from_fn(|i| base.wrapping_add(i as u64));
    for (p, &f) in (pfn..).zip(&new[..n]) {
        // SAFETY: Xen just backed pfn `p` with frame `f`.
        unsafe { mm::set_pfn_to_mfn(p, f) };
    }
    remap(va, &new[..n]);
    match check {
        Ok(()) => Ok(base),
        // The pages are ours and mapped: they may go back to the pool.
        Err(e) => Err((plan("XENMEM_exchange", e), true)),
    }
}

/// Maps `frames` at consecutive pages from `va`, write-back and writable.
fn remap(va: *mut u8, frames: &[u64]) {
    for (i, &f) in frames.iter().enumerate() {
        let at = va as usize + i * PAGE as usize;
        let rc = match pci::ram_pte(f) {
            // SAFETY: the page is this domain's (the P2M list says so) and
            // its virtual address was unmapped for the exchange.
            Ok(pte) => unsafe { update_va_mapping(at, pte, UVMF_INVLPG) },
            Err(_) => -22,
        };
        if rc != 0 {
            // The page cannot be reached any more; touching it faults.
            log::error!("mapping frame {f:#x} back at {at:#x} failed with {rc}");
        }
    }
}

/// The bus address of the byte at `va` (in the domain's initial mapping:
/// the image, the pool).
pub fn bus_address(va: *const u8) -> u64 {
    pci::bus_address(mm::va_to_mfn(va), va as u64)
}

/// The highest machine frame of RAM (`XENMEM_maximum_ram_page`).
pub fn maximum_ram_page() -> u64 {
    // SAFETY: XENMEM_maximum_ram_page takes no argument and never fails.
    unsafe { memory_op(XENMEM_MAXIMUM_RAM_PAGE, core::ptr::null_mut()) as u64 }
}

/// Whether machine frame `mfn` (at most [`maximum_ram_page`]) is one of
/// this domain's pages.
pub fn owns_frame(mfn: u64) -> bool {
    let nr = start_info().nr_pages;
    pci::owns_frame(mfn, nr, mfn_to_pfn, mm::pfn_to_mfn)
}

/// The first machine frame of RAM in `from..to` that is not this domain's
/// (for a test of the IOMMU: a DMA there must be refused).
pub fn foreign_frame(from: u64, to: u64) -> Option<u64> {
    pci::foreign_frame(
        from,
        to.min(maximum_ram_page().saturating_add(1)),
        owns_frame,
    )
}

/// A pirq bound to an event channel.
#[derive(Debug)]
pub struct PirqBinding {
    pirq: u32,
    port: Port,
    needs_eoi: bool,
}

impl PirqBinding {
    /// The pirq.
    pub fn pirq(&self) -> u32 {
        self.pirq
    }
    /// The event channel it arrives on.
    pub fn port(&self) -> Port {
        self.port
    }
    /// Whether Xen delivers it again only after [`PirqBinding::eoi`].
    pub fn needs_eoi(&self) -> bool {
        self.needs_eoi
    }
    /// Ends the interrupt (`PHYSDEVOP_eoi`) when Xen needs it; a no-op
    /// otherwise. Taking the event with `events::poll` (or a wait) already
    /// does this; call it only for an event consumed some other way.
    pub fn eoi(&self) -> Result<(), PlatformError> {
        if !self.needs_eoi {
            return Ok(());
        }
        let mut arg = physdev_eoi { irq: self.pirq };
        // SAFETY: PHYSDEVOP_eoi takes a `struct physdev_eoi`.
        let rc = unsafe { physdev_op(PHYSDEVOP_EOI, (&mut arg as *mut physdev_eoi).cast()) };
        if rc != 0 {
            return Err(os("PHYSDEVOP_eoi", rc));
        }
        Ok(())
    }
}

impl Drop for PirqBinding {
    fn drop(&mut self) {
        if let Err(e) = events::close(self.port) {
            log::warn!("closing the event channel of pirq {}: {e}", self.pirq);
        }
    }
}

/// Binds `pirq` to a new event channel and asks Xen whether it needs an
/// end-of-interrupt.
pub fn bind_pirq(pirq: u32) -> Result<PirqBinding, PlatformError> {
    let port = events::bind_pirq(pirq)?;
    let mut q = physdev_irq_status_query {
        irq: pirq,
        flags: 0,
    };
    // SAFETY: PHYSDEVOP_irq_status_query takes this structure and writes
    // `flags`.
    let rc = unsafe {
        physdev_op(
            PHYSDEVOP_IRQ_STATUS_QUERY,
            (&mut q as *mut physdev_irq_status_query).cast(),
        )
    };
    // Without an answer, assume an EOI is needed: one too many is harmless.
    let needs_eoi = rc != 0 || q.flags & XENIRQSTAT_NEEDS_EOI != 0;
    if needs_eoi {
        events::set_eoi_pirq(port, Some(pirq));
    }
    Ok(PirqBinding {
        pirq,
        port,
        needs_eoi,
    })
}
