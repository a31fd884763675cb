//! A domain's "physical memory": one memfd, whose page `n` is frame `n`.
//!
//! Pages are handed out in contiguous runs ([`HostedPages`]), mapped shared
//! into the owning process. A peer that maps a granted frame maps page
//! `frame` of the same memfd, so both see the same bytes. Freed pages are
//! given back to the kernel (hole punched), so they read as zeros the next
//! time they are handed out (XSA-403: a page never carries stale data to a
//! peer).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use grant_tables::{Gfn, PageAllocator, PlatformError, RingMemory, SharedPages};

use crate::domain::lock;
use crate::sys::{self, Mmap, PAGE};
use crate::HostedPlatform;

/// The memfd and its allocator.
pub(crate) struct DomainMemory {
    file: File,
    pages: u64,
    /// Free runs: first page -> length, coalesced.
    free: Mutex<BTreeMap<u64, u64>>,
    in_use: AtomicU64,
    /// The whole memfd mapped writable, made on first use (grant copies
    /// to and from this domain's own frames).
    whole: OnceLock<Option<Mmap>>,
}

impl DomainMemory {
    pub(crate) fn new(file: File, pages: u64) -> Self {
        let mut free = BTreeMap::new();
        if pages > 0 {
            free.insert(0, pages);
        }
        DomainMemory { file, pages, free: Mutex::new(free), in_use: AtomicU64::new(0), whole: OnceLock::new() }
    }

    /// The whole memory, mapped writable once. `None` if it cannot be
    /// mapped (logged).
    pub(crate) fn whole(&self) -> Option<&Mmap> {
        self.whole
            .get_or_init(|| {
                let len = usize::try_from(self.pages).ok()?.checked_mul(PAGE)?;
                Mmap::shared(self.file.as_fd(), 0, len, true)
                    .map_err(|e| log::error!("mapping this domain's memory for grant copies: {e}"))
                    .ok()
            })
            .as_ref()
    }

    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    pub(crate) fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// First fit.
    fn take(&self, count: u64) -> Option<u64> {
        let mut free = lock(&self.free);
        let (&start, &len) = free.iter().find(|(_, &len)| len >= count)?;
        free.remove(&start);
        if len > count {
            free.insert(start + count, len - count);
        }
        self.in_use.fetch_add(count, Ordering::Relaxed);
        Some(start)
    }

    /// Returns a run, merging it with its neighbours.
    fn give_back(&self, start: u64, count: u64) {
        let mut free = lock(&self.free);
        let mut start = start;
        let mut len = count;
        if let Some((&p, &plen)) = free.range(..start).next_back() {
            if p + plen == start {
                free.remove(&p);
                start = p;
                len += plen;
            }
        }
        if let Some(&nlen) = free.get(&(start + len)) {
            free.remove(&(start + len));
            len += nlen;
        }
        free.insert(start, len);
        self.in_use.fetch_sub(count, Ordering::Relaxed);
    }

    pub(crate) fn alloc(self: &Arc<Self>, count: usize) -> Result<HostedPages, PlatformError> {
        let pages = count.max(1);
        let oom = PlatformError::OutOfMemory { pages: count };
        let n = u64::try_from(pages).map_err(|_| oom.clone())?;
        let len = pages.checked_mul(PAGE).ok_or(oom.clone())?;
        let first = self.take(n).ok_or_else(|| {
            log::warn!("out of shareable memory: {count} page(s) asked, {} of {} in use", self.in_use(), self.pages);
            oom.clone()
        })?;
        match Mmap::shared(self.file.as_fd(), first * PAGE as u64, len, true) {
            Ok(map) => Ok(HostedPages { mem: self.clone(), map, first, pages }),
            Err(e) => {
                log::error!("mapping {pages} page(s) of domain memory: {e}");
                self.give_back(first, n);
                Err(PlatformError::Os { op: "mmap of domain memory", code: e.raw_os_error().unwrap_or(libc::ENOMEM) })
            }
        }
    }
}

/// Zeroed, page-aligned pages of a domain's memory that it can grant to a
/// peer: frame numbers are their page indices in the domain's memfd.
/// Unmapped, zeroed and returned on drop.
pub struct HostedPages {
    mem: Arc<DomainMemory>,
    map: Mmap,
    first: u64,
    pages: usize,
}

impl std::fmt::Debug for HostedPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedPages").field("first_gfn", &self.first).field("pages", &self.pages).finish()
    }
}

impl HostedPages {
    /// The first frame.
    pub fn first_gfn(&self) -> Gfn {
        Gfn(self.first)
    }
}

impl Drop for HostedPages {
    fn drop(&mut self) {
        let off = self.first * PAGE as u64;
        let len = self.pages as u64 * PAGE as u64;
        if let Err(e) = sys::punch_hole(&self.mem.file, off, len) {
            log::warn!("punching a hole in domain memory failed ({e}); zeroing {} page(s) by hand", self.pages);
            let p = self.map.as_ptr().as_ptr();
            for i in 0..self.map.len() {
                // SAFETY: `i < map.len()`, inside our own writable mapping,
                // which no Rust reference points into; a volatile write.
                unsafe { p.add(i).write_volatile(0) }
            }
        }
        // `map` is unmapped when the fields drop, after the run is zero.
        self.mem.give_back(self.first, self.pages as u64);
    }
}

// SAFETY: `map` is a page-aligned, writable, shared mapping of exactly
// `pages` pages that lives as long as `self`; the pages were zero when
// handed out (the memfd starts as zeros and runs are hole-punched or zeroed
// when returned) and are mapped nowhere else in this process; page `i` is
// page `first + i` of the memfd, which is frame `first + i`.
unsafe impl SharedPages for HostedPages {
    fn as_ptr(&self) -> NonNull<u8> {
        self.map.as_ptr()
    }
    fn page_count(&self) -> usize {
        self.pages
    }
    fn gfn(&self, index: usize) -> Option<Gfn> {
        (index < self.pages).then(|| Gfn(self.first + index as u64))
    }
}

// SAFETY: as for `SharedPages`: a page-aligned writable mapping of
// `pages * PAGE` bytes that lives as long as `self`; rings access it only
// atomically or volatilely.
unsafe impl RingMemory for HostedPages {
    fn ring_ptr(&self) -> NonNull<u8> {
        self.map.as_ptr()
    }
    fn ring_len(&self) -> usize {
        self.map.len()
    }
}

impl PageAllocator for HostedPlatform {
    type Pages = HostedPages;
    fn alloc_zeroed_pages(&self, count: usize) -> Result<HostedPages, PlatformError> {
        self.inner.memory.alloc(count)
    }
}
