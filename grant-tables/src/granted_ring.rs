//! Shared rings granted to a peer, from both ends.
//!
//! The front end of every split driver does the same dance: allocate 1 to
//! 16 contiguous pages, grant each to the backend, initialise the shared
//! header, publish the refs in xenstore, and at the end take it all back
//! without freeing a page the backend still maps. [`GrantedRing`] owns all
//! of it: it derefs to the [`FrontRing`] (no `unsafe` in the driver), gives
//! the xenstore entries in either layout ([`RingRefLayout`]), and on drop
//! (or [`GrantedRing::end`]) ends every grant, leaving the whole allocation
//! in the grant table's quarantine while the backend still maps any page.
//!
//! The back end reads those entries back ([`parse_ring_refs`]: written by
//! the frontend, so hostile) and maps the pages through the backend seam
//! ([`map_back_ring`]), getting a [`BackRing`] over the mapping.
//!
//! # Xenstore layouts
//! - [`RingRefLayout::Single`]: `<base>` = ref, for a one-page ring
//!   (netif's `tx-ring-ref`/`rx-ring-ref`, blkif without multi-page rings).
//! - [`RingRefLayout::PageOrder`]: `ring-page-order` = order and
//!   `<base>0` .. `<base>N-1` = refs, for any order including 0: Linux's
//!   blkback reads `ring-ref0..N` whenever `ring-page-order` is written.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::ops::{Deref, DerefMut};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::abi::GrantRefNum;
use crate::foreign::{ForeignError, ForeignGrants};
use crate::granted::GrantedPages;
use crate::platform::{DomId, Platform, PlatformError, SharedPages};
use crate::ring::{BackRing, FrontRing, RingError, MAX_RING_PAGES};
use crate::table::{Access, EndAccessError, GrantError};

/// The largest `ring-page-order` (16 pages).
pub const MAX_RING_PAGE_ORDER: u8 = 4;

/// The xenstore key of the page order.
pub const RING_PAGE_ORDER_KEY: &str = "ring-page-order";

/// How a ring's refs are written to xenstore (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingRefLayout {
    /// `<base>` = ref; one page only.
    Single,
    /// `ring-page-order` and `<base>0..N`.
    PageOrder,
}

/// Why a granted ring could not be set up or published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantedRingError {
    /// The order is above [`MAX_RING_PAGE_ORDER`].
    BadOrder(u8),
    /// [`RingRefLayout::Single`] asked for a ring of several pages.
    SingleNeedsOnePage {
        /// Pages in the ring.
        pages: usize,
    },
    /// A ring's page count must be a power of two from 1 to 16.
    BadPageCount {
        /// Pages given.
        pages: usize,
    },
    /// No pages.
    Platform(PlatformError),
    /// No refs.
    Grant(GrantError),
    /// The ring could not be initialised over the pages.
    Ring(RingError),
}

impl fmt::Display for GrantedRingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantedRingError::BadOrder(o) => write!(
                f,
                "ring page order {o} is above the maximum {MAX_RING_PAGE_ORDER} (16 pages); use the backend's max-ring-page-order or less"
            ),
            GrantedRingError::SingleNeedsOnePage { pages } => write!(
                f,
                "a ring of {pages} pages cannot be published as a single ring-ref; use the ring-page-order layout"
            ),
            GrantedRingError::BadPageCount { pages } => write!(
                f,
                "a ring of {pages} pages cannot be published: rings span a power of two of pages, 1 to 16"
            ),
            GrantedRingError::Platform(e) => write!(f, "cannot allocate the ring's pages: {e}"),
            GrantedRingError::Grant(e) => write!(f, "cannot grant the ring's pages: {e}"),
            GrantedRingError::Ring(e) => write!(f, "cannot set up the ring: {e}"),
        }
    }
}

impl core::error::Error for GrantedRingError {}

/// The xenstore entries (relative keys and values) that publish `refs`, in
/// `layout`. Prefix the keys with a queue's directory (`queue-0/`) as the
/// protocol needs.
pub fn ring_ref_entries(
    base: &str,
    refs: &[GrantRefNum],
    layout: RingRefLayout,
) -> Result<Vec<(String, String)>, GrantedRingError> {
    match layout {
        RingRefLayout::Single => match refs {
            [r] => Ok(alloc::vec![(base.to_string(), r.to_string())]),
            _ => Err(GrantedRingError::SingleNeedsOnePage { pages: refs.len() }),
        },
        RingRefLayout::PageOrder => {
            let order =
                order_of(refs.len()).ok_or(GrantedRingError::BadPageCount { pages: refs.len() })?;
            let mut out = Vec::with_capacity(refs.len() + 1);
            out.push((RING_PAGE_ORDER_KEY.to_string(), order.to_string()));
            for (i, r) in refs.iter().enumerate() {
                out.push((format!("{base}{i}"), r.to_string()));
            }
            Ok(out)
        }
    }
}

/// The order of a ring of `pages` pages (a power of two up to 16).
fn order_of(pages: usize) -> Option<u8> {
    (pages.is_power_of_two() && pages <= MAX_RING_PAGES).then(|| pages.trailing_zeros() as u8)
}

/// A front ring in pages granted to a peer: one owner for the pages, their
/// grants and the [`FrontRing`] over them. Derefs to the ring.
pub struct GrantedRing<P: Platform, Req, Rsp>
where
    P::Pages: 'static,
{
    ring: FrontRing<Req, Rsp, GrantedPages<P::GrantFrames, P::Pages>>,
    order: u8,
}

impl<P: Platform, Req, Rsp> GrantedRing<P, Req, Rsp>
where
    P::Pages: 'static,
    Req: IntoBytes + Immutable,
    Rsp: FromBytes,
{
    /// Allocates `2^order` pages, grants them read-write to `peer`, and
    /// initialises the ring in them.
    pub fn new(platform: &P, peer: DomId, order: u8) -> Result<Self, GrantedRingError> {
        if order > MAX_RING_PAGE_ORDER {
            return Err(GrantedRingError::BadOrder(order));
        }
        let count = 1usize << order;
        let table = platform.grant_table().map_err(GrantedRingError::Platform)?;
        let pages = platform
            .alloc_zeroed_pages(count)
            .map_err(GrantedRingError::Platform)?;
        if pages.page_count() != count {
            return Err(GrantedRingError::Platform(PlatformError::OutOfMemory {
                pages: count,
            }));
        }
        let granted = GrantedPages::new(table, pages, peer, Access::ReadWrite)
            .map_err(GrantedRingError::Grant)?;
        // On an error the granted pages are dropped: their grants end
        // (nobody can have mapped them yet).
        let ring = FrontRing::init(granted).map_err(GrantedRingError::Ring)?;
        Ok(GrantedRing { ring, order })
    }

    /// The ring's page order (`ring-page-order`).
    pub fn order(&self) -> u8 {
        self.order
    }

    /// Pages in the ring.
    pub fn page_count(&self) -> usize {
        1 << self.order
    }

    /// The peer the ring is granted to.
    pub fn peer(&self) -> DomId {
        self.ring.memory().peer()
    }

    /// The refs of the ring's pages, in ring order.
    pub fn grefs(&self) -> Vec<GrantRefNum> {
        self.ring.memory().grefs().collect()
    }

    /// The xenstore entries that publish this ring in `layout`, with
    /// `base` as the ref key (`ring-ref`, `tx-ring-ref`, ...).
    pub fn xenstore_entries(
        &self,
        base: &str,
        layout: RingRefLayout,
    ) -> Result<Vec<(String, String)>, GrantedRingError> {
        ring_ref_entries(base, &self.grefs(), layout)
    }

    /// The ring.
    pub fn ring(&self) -> &FrontRing<Req, Rsp, GrantedPages<P::GrantFrames, P::Pages>> {
        &self.ring
    }

    /// The ring, to produce requests and consume responses.
    pub fn ring_mut(&mut self) -> &mut FrontRing<Req, Rsp, GrantedPages<P::GrantFrames, P::Pages>> {
        &mut self.ring
    }

    /// Ends every grant and frees the pages. If the backend still maps any
    /// page, the whole ring stays in the grant table's quarantine until a
    /// retry ends the last grant (the error says how many are in use);
    /// dropping the ring does the same without the report.
    pub fn end(self) -> Result<(), EndAccessError> {
        self.ring.into_memory().end().map(drop)
    }
}

impl<P: Platform, Req, Rsp> Deref for GrantedRing<P, Req, Rsp>
where
    P::Pages: 'static,
{
    type Target = FrontRing<Req, Rsp, GrantedPages<P::GrantFrames, P::Pages>>;
    fn deref(&self) -> &Self::Target {
        &self.ring
    }
}

impl<P: Platform, Req, Rsp> DerefMut for GrantedRing<P, Req, Rsp>
where
    P::Pages: 'static,
{
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.ring
    }
}

/// Why the ring refs a frontend published could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingRefsError<E> {
    /// Reading a key failed.
    Read {
        /// The key.
        key: String,
        /// The reader's error.
        error: E,
    },
    /// A key the layout needs is missing.
    Missing(String),
    /// A value is not a decimal number of the right size.
    BadValue {
        /// The key.
        key: String,
        /// The value, cut to 32 characters.
        value: String,
    },
    /// `ring-page-order` is above what this backend accepts.
    OrderTooLarge {
        /// The frontend's order.
        order: u32,
        /// The most this backend accepts.
        max: u8,
    },
}

impl<E: fmt::Display> fmt::Display for RingRefsError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingRefsError::Read { key, error } => write!(f, "reading the frontend's {key}: {error}"),
            RingRefsError::Missing(key) => write!(
                f,
                "the frontend did not write {key}; it published no (or an incomplete) ring"
            ),
            RingRefsError::BadValue { key, value } => write!(
                f,
                "the frontend's {key} is {value:?}, not a decimal number that fits 32 bits"
            ),
            RingRefsError::OrderTooLarge { order, max } => write!(
                f,
                "the frontend asks for ring-page-order {order}, above this backend's max-ring-page-order {max}"
            ),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for RingRefsError<E> {}

/// Longest decimal value accepted (`u32::MAX` has 10 digits).
const MAX_DIGITS: usize = 10;

/// Parses a xenstore value written by the peer: decimal digits only, no
/// sign or space, at most 10 digits, at most `u32::MAX`.
pub fn parse_u32_value(value: &str) -> Option<u32> {
    if value.is_empty() || value.len() > MAX_DIGITS || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u32>().ok()
}

/// Reads the ring refs a frontend published, as Linux's backends do: with
/// `ring-page-order` (at most `max_order`) the refs are `<base>0..N`,
/// without it `<base>` alone. `read` returns a key's value (relative key;
/// prefix it with the frontend's directory), `Ok(None)` when the key does
/// not exist. Every value is hostile input: checked, never trusted.
pub fn parse_ring_refs<E>(
    base: &str,
    max_order: u8,
    mut read: impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<Vec<GrantRefNum>, RingRefsError<E>> {
    let mut get = |key: &str| -> Result<Option<u32>, RingRefsError<E>> {
        match read(key) {
            Err(error) => Err(RingRefsError::Read {
                key: key.to_string(),
                error,
            }),
            Ok(None) => Ok(None),
            Ok(Some(v)) => parse_u32_value(&v)
                .map(Some)
                .ok_or_else(|| RingRefsError::BadValue {
                    key: key.to_string(),
                    value: v.chars().take(32).collect(),
                }),
        }
    };
    let Some(order) = get(RING_PAGE_ORDER_KEY)? else {
        let key = base.to_string();
        let r = get(&key)?.ok_or(RingRefsError::Missing(key))?;
        return Ok(alloc::vec![r]);
    };
    let max = max_order.min(MAX_RING_PAGE_ORDER);
    if order > u32::from(max) {
        return Err(RingRefsError::OrderTooLarge { order, max });
    }
    let mut refs = Vec::with_capacity(1 << order);
    for i in 0..(1u32 << order) {
        let key = format!("{base}{i}");
        let r = get(&key)?.ok_or(RingRefsError::Missing(key))?;
        refs.push(r);
    }
    Ok(refs)
}

/// Why a back ring could not be mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapBackRingError {
    /// Mapping the pages failed.
    Map(ForeignError),
    /// The mapping does not hold a ring (bad page count).
    Ring(RingError),
}

impl fmt::Display for MapBackRingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapBackRingError::Map(e) => write!(f, "cannot map the frontend's ring: {e}"),
            MapBackRingError::Ring(e) => write!(f, "cannot attach to the frontend's ring: {e}"),
        }
    }
}

impl core::error::Error for MapBackRingError {}

/// The back end of a ring the frontend granted: maps `refs` (in ring order)
/// of `granter` read-write through the backend seam and attaches a
/// [`BackRing`] to them. Dropping the ring unmaps the pages.
pub fn map_back_ring<G, Req, Rsp>(
    grants: &G,
    granter: DomId,
    refs: &[GrantRefNum],
) -> Result<BackRing<Req, Rsp, G::RingMapping>, MapBackRingError>
where
    G: ForeignGrants,
    Req: FromBytes,
    Rsp: IntoBytes + Immutable,
{
    let mem = grants
        .map_ring_pages(granter, refs)
        .map_err(MapBackRingError::Map)?;
    BackRing::new(mem).map_err(MapBackRingError::Ring)
}
