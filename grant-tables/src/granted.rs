//! Pages granted to one peer as one allocation, ended as one.
//!
//! [`GrantedPages`] owns a page allocation (the platform's
//! [`SharedPages`](crate::SharedPages)) and one grant per page to one peer.
//! It is the building block of [`crate::GrantedRing`] and
//! [`crate::BufferPool`]: dropping it (or [`GrantedPages::end`]) ends every
//! grant; if the peer still maps any page, the whole allocation goes to the
//! grant table's quarantine and is freed only once the last of its grants
//! has ended on a retry ([`crate::GrantTable::retry_quarantined`]). Refs that
//! did end are reused at once. Nothing is leaked and no page the peer can
//! still reach is ever freed (XSA-396).
//!
//! The memory is reached only through raw pointers and the copies of
//! [`crate::shared_mem`]: the peer writes it concurrently.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use crate::abi::{GrantRefNum, PAGE_SIZE};
use crate::platform::{DomId, Gfn, GrantTableFrames, SharedPages};
use crate::ring::RingMemory;
use crate::shared_mem::{self, OutOfRange};
use crate::table::{Access, EndAccessError, GrantError, GrantRef, GrantTable};

/// A page allocation granted, page by page, to one peer.
pub struct GrantedPages<F: GrantTableFrames, M: SharedPages + 'static> {
    table: Arc<GrantTable<F>>,
    /// One per page, in page order. Emptied only by `end`/`drop`.
    grants: Vec<GrantRef>,
    base: NonNull<u8>,
    pages: usize,
    peer: DomId,
    access: Access,
    /// The owning value; `None` once ended. Never accessed through `&self`
    /// (see the `Sync` impl): only moved out, with `&mut self`.
    mem: Option<M>,
}

// SAFETY: `M: Send`, and every other field is `Send` except `base`, a
// pointer into `M`'s memory that moves with it.
unsafe impl<F: GrantTableFrames, M: SharedPages + 'static> Send for GrantedPages<F, M> {}
// SAFETY: `&GrantedPages` never touches `mem` (the only field that may not
// be `Sync`): it exposes the table (`Sync`), the refs, `base` as a raw
// pointer, and reads of the region (writes take `&mut self`), so threads
// sharing a `&GrantedPages` cannot race with each other through it.
unsafe impl<F: GrantTableFrames, M: SharedPages + 'static> Sync for GrantedPages<F, M> {}

impl<F: GrantTableFrames, M: SharedPages + 'static> fmt::Debug for GrantedPages<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantedPages")
            .field("peer", &self.peer)
            .field("access", &self.access)
            .field("pages", &self.pages)
            .field(
                "grefs",
                &self.grants.iter().map(GrantRef::raw).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<F: GrantTableFrames, M: SharedPages + 'static> GrantedPages<F, M> {
    /// Grants every page of `pages` to `peer` (all or nothing: on an error
    /// nothing is granted and `pages` is dropped).
    pub fn new(
        table: &Arc<GrantTable<F>>,
        pages: M,
        peer: DomId,
        access: Access,
    ) -> Result<Self, GrantError> {
        let count = pages.page_count();
        let frames = (0..count)
            .map(|i| pages.gfn(i).ok_or(GrantError::NoFrame { index: i }))
            .collect::<Result<Vec<Gfn>, GrantError>>()?;
        let grants = table.grant_batch(peer, &frames, access)?;
        Ok(GrantedPages {
            table: table.clone(),
            grants,
            base: pages.as_ptr(),
            pages: count,
            peer,
            access,
            mem: Some(pages),
        })
    }

    /// The peer the pages are granted to.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// How the peer may access them.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Pages in the allocation.
    pub fn page_count(&self) -> usize {
        self.pages
    }

    /// Length in bytes.
    pub fn len_bytes(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    /// The ref of page `index`.
    pub fn gref(&self, index: usize) -> Option<GrantRefNum> {
        self.grants.get(index).map(GrantRef::raw)
    }

    /// Every ref, in page order.
    pub fn grefs(&self) -> impl ExactSizeIterator<Item = GrantRefNum> + '_ {
        self.grants.iter().map(GrantRef::raw)
    }

    /// The grant table the refs come from.
    pub fn table(&self) -> &Arc<GrantTable<F>> {
        &self.table
    }

    /// The first byte. The peer may read and write the pages at any time:
    /// access them through [`crate::shared_mem`] or volatile/atomic
    /// operations, never through references.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.base
    }

    /// Copies bytes at `offset` out of the pages.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfRange> {
        // SAFETY: `base` is valid for `len_bytes()` while `mem` lives, which
        // it does while `self` does; no Rust reference points into it.
        unsafe { shared_mem::read(self.base, self.len_bytes(), offset, buf) }
    }

    /// Copies `data` into the pages at `offset`.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), OutOfRange> {
        // SAFETY: as in `read_at`; the pages are writable (`SharedPages`),
        // and `&mut self` keeps other threads of this domain from writing
        // through `self` meanwhile.
        unsafe { shared_mem::write(self.base, self.len_bytes(), offset, data) }
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub fn fill_at(&mut self, offset: usize, len: usize, byte: u8) -> Result<(), OutOfRange> {
        // SAFETY: as in `write_at`.
        unsafe { shared_mem::fill(self.base, self.len_bytes(), offset, len, byte) }
    }

    /// Ends every grant and gives the pages back. If the peer still maps
    /// any, the pages stay in the table's quarantine (whole) until a retry
    /// ends the last grant, and the error says how many refs are still in
    /// use.
    pub fn end(mut self) -> Result<M, EndAccessError> {
        self.end_inner()
            // `end_inner` hands back `mem`, which is `Some` until it runs.
            .map(|m| m.unwrap_or_else(|| unreachable!()))
    }

    fn end_inner(&mut self) -> Result<Option<M>, EndAccessError> {
        let Some(mem) = self.mem.take() else {
            return Ok(None);
        };
        let grants = core::mem::take(&mut self.grants);
        self.table.end_access_all(grants, mem).map(Some)
    }
}

impl<F: GrantTableFrames, M: SharedPages + 'static> Drop for GrantedPages<F, M> {
    fn drop(&mut self) {
        if let Err(e) = self.end_inner() {
            log::warn!("dropping pages granted to {}: {e}", self.peer);
        }
    }
}

// SAFETY: `base` is page-aligned and valid for reads and writes of
// `len_bytes()` while `mem` lives, i.e. while `self` does (`SharedPages`);
// no Rust reference points into it.
unsafe impl<F: GrantTableFrames, M: SharedPages + 'static> RingMemory for GrantedPages<F, M> {
    fn ring_ptr(&self) -> NonNull<u8> {
        self.base
    }
    fn ring_len(&self) -> usize {
        self.len_bytes()
    }
}
