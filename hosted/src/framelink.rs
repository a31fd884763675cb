//! A frame device between two processes (or two threads) over shared
//! memory, with fault injection: the hosted link RDMA tests and benches
//! run RoCE v2 over.
//!
//! Two single-producer, single-consumer rings of fixed 2 KiB slots, one per
//! direction, in one shared region:
//!
//! ```text
//! page 0       ring 0 (A → B): producer index at 0, consumer index at 64
//!              ring 1 (B → A): producer index at 128, consumer index at 192
//! then         ring 0's slots, then ring 1's (N slots each, 2048 bytes)
//! slot         length (u32, little endian) at 0, ready word (u32) at 4,
//!              the frame at 16
//! ```
//!
//! Indices are free-running `u32`s. The producer writes a frame into the
//! slot at its producer index `i`, then its length, then the slot's ready
//! word (`i + 1`, release), then publishes the index (release); the
//! consumer learns of the frame from the slot's ready word or from the
//! index (acquire), reads the length once, and the frame. The ready word
//! shares its cache line with the length and the frame's first bytes: a
//! frame reaches a consumer polling its next slot in one transfer of that
//! line (and the frame's other lines), not after a transfer of the index's
//! line first. Each end reads the other's index only when what it learnt
//! is used up (the producer: the free slots the consumer index left), or
//! for its checks only (the consumer: once every 64 polls that found the
//! ring empty; the ready words announce the frames), so that the lines the
//! peer writes are not read per frame or per poll.
//!
//! Each end implements [`FrameDevice`]. [`FrameDevice::tx_buffer`] lends a
//! buffer of this end's own, reserved for the next free slot of the
//! outgoing ring, and [`FrameDevice::send`] copies the frame into the slot
//! in one burst: the bytes past the slot's first cache line, then that
//! line (the frame's first bytes and the length), then the ready word.
//! The consumer spins on that line while it waits; a frame built in place
//! there, field by field, would have the line cross between the two cores
//! at every write that follows one of the consumer's reads (hundreds of
//! nanoseconds for a RoCE frame built with its checksums), where one copy
//! moves it once. [`FrameDevice::receive`] lends the next slot of the
//! incoming ring in place, given back to the peer when the frame is
//! dropped. One frame each way is lent at a time: `tx_buffer` and
//! `receive` return `None` while one is out.
//!
//! The memory comes from three places:
//! - [`FrameLink::pair`]: both ends in this process (threads), on a sealed
//!   memfd;
//! - [`FrameLink::create`]: one domain of the hosted platform allocates the
//!   pages and grants them to its peer ([`LinkGrants`] is what to tell it),
//!   and [`FrameLink::attach`]: the peer maps the grants — two processes,
//!   as two domains share memory.
//!
//! The peer is not trusted: its indices are checked whenever read (a
//! producer index more than N slots ahead of the consumer's, or a consumer
//! index ahead of the producer's, breaks the link with
//! [`FrameError::Broken`]), a slot's
//! length is read once and checked, and frames lent in place may change
//! under their reader only in value (the bounds are this end's own), as
//! with netfront's lent pages: users copy frames before parsing them.
//!
//! Waiting spins: [`FrameDevice::wait`] polls the incoming ring, yielding
//! the CPU between rounds, until a frame is there or the timeout passes
//! (there is no event channel between the ends).
//!
//! # Faults
//! [`FrameLink::set_faults`] makes an end's outgoing direction lossy with
//! a seeded generator (the same seed gives the same faults for the same
//! sequence of sends): each frame sent is dropped, duplicated (sent twice)
//! or held back and sent after the next frame (reordered), each with its
//! own percentage. A frame held back goes out after the next frame sent or
//! at the end's next [`FrameDevice::poll`], whichever comes first.

use std::io;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::slice;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grant_tables::abi::GrantRefNum;
use grant_tables::{Access, DomId, GrantRef, PageAllocator, SharedPages};
use netfront::frame::{FrameDevice, FrameError, LinkInfo, RxFrame, TxFrame};

use crate::sys::{self, Mmap, PAGE};
use crate::{HostedPages, HostedPlatform, MappedGrant};

/// Bytes of a slot.
pub const SLOT: usize = 2048;
/// Where a frame starts in its slot.
const SLOT_DATA: usize = 16;
/// Empty polls of `receive` between two reads of the peer's producer
/// index (the ready words announce frames; the index is read for its
/// checks, off the per-poll path: every read of it after the peer's
/// next store would move its cache line).
const INDEX_EVERY: u32 = 64;
/// Bytes of a slot's first cache line: its header (with the ready word the
/// consumer polls) and the frame's first bytes.
const SLOT_LINE: usize = 64;
/// The link's MTU (the largest IP packet).
pub const MTU: usize = 1500;
/// The largest frame (Ethernet header and payload, no FCS).
pub const MAX_FRAME: usize = MTU + 14;
/// Fewest slots per direction.
pub const MIN_SLOTS: usize = 2;
/// Most slots per direction (the grants of both rings and the control page
/// fit one mapping of the hosted platform).
pub const MAX_SLOTS: usize = 512;
/// Slots per direction when nothing else is asked for.
pub const DEFAULT_SLOTS: usize = 64;

/// Why a link could not be set up.
#[derive(Debug)]
pub struct LinkError(String);

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frame link: {}", self.0)
    }
}

impl std::error::Error for LinkError {}

fn bad_slots(slots: usize) -> LinkError {
    LinkError(format!(
        "{slots} slots per direction: give an even number from {MIN_SLOTS} to {MAX_SLOTS}"
    ))
}

/// Bytes of the shared region for `slots` slots per direction.
fn region_len(slots: usize) -> Result<usize, LinkError> {
    if !(MIN_SLOTS..=MAX_SLOTS).contains(&slots) || slots % 2 != 0 {
        return Err(bad_slots(slots));
    }
    Ok(PAGE + 2 * slots * SLOT)
}

/// What keeps the shared region mapped.
enum Backing {
    /// A memfd shared by two ends in this process.
    Memfd(Mmap),
    /// Pages of this domain granted to the peer.
    Granted(HostedPages),
    /// The peer's pages, mapped.
    Mapped(MappedGrant),
}

/// The shared region, alive as long as an end or a lent frame uses it.
struct Shared {
    _backing: Backing,
    base: NonNull<u8>,
    len: usize,
    slots: u32,
    /// Per end: a transmit buffer is lent.
    tx_lent: [AtomicBool; 2],
    /// Per end: a received frame is lent.
    rx_lent: [AtomicBool; 2],
}

// SAFETY: `base` points into the mapping `_backing` owns, which lives as
// long as `Shared`; the region is only accessed through atomics (indices)
// and through the slots each end owns by the ring protocol, from whichever
// thread holds the end or the lent frame.
unsafe impl Send for Shared {}
// SAFETY: as above; `&Shared` gives out no reference into the region.
unsafe impl Sync for Shared {}

impl Shared {
    fn new(backing: Backing) -> Result<Shared, LinkError> {
        let (base, len) = match &backing {
            Backing::Memfd(m) => (m.as_ptr(), m.len()),
            Backing::Granted(p) => (p.as_ptr(), p.page_count() * PAGE),
            Backing::Mapped(m) => (m.as_ptr(), m.len()),
        };
        let slots = len
            .checked_sub(PAGE)
            .map(|b| b / (2 * SLOT))
            .filter(|&s| region_len(s).ok() == Some(len))
            .ok_or_else(|| {
                LinkError(format!(
                    "a shared region of {len} bytes is not a control page and two rings"
                ))
            })?;
        Ok(Shared {
            _backing: backing,
            base,
            len,
            // At most MAX_SLOTS.
            slots: slots as u32,
            tx_lent: [AtomicBool::new(false), AtomicBool::new(false)],
            rx_lent: [AtomicBool::new(false), AtomicBool::new(false)],
        })
    }

    /// The index at `offset` of the control page (0, 64, 128 or 192).
    #[inline]
    fn index(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset <= 192 && offset % 64 == 0);
        // SAFETY: `offset + 4 <= PAGE <= len`, and the base is page-aligned,
        // so the `u32` is inside the mapping and aligned. Both ends only
        // ever access it atomically. The reference lives no longer than
        // `&self`, which keeps the mapping.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// The ready word of slot `index` of ring `ring` (see the module
    /// docs).
    #[inline]
    fn ready(&self, ring: usize, index: u32) -> &AtomicU32 {
        // SAFETY: the slot is inside the mapping and 2048-byte aligned (the
        // base is page-aligned), so bytes 4..8 of its header are an aligned
        // `u32` inside it. Both ends only access it atomically. The
        // reference lives no longer than `&self`, which keeps the mapping.
        unsafe { &*self.slot(ring, index).add(4).cast::<AtomicU32>() }
    }

    /// The first byte of slot `index` (taken modulo the ring size) of ring
    /// `ring`.
    fn slot(&self, ring: usize, index: u32) -> *mut u8 {
        let i = (index % self.slots) as usize;
        let off = PAGE + (ring * self.slots as usize + i) * SLOT;
        debug_assert!(off + SLOT <= self.len);
        // SAFETY: `ring <= 1` and `i < slots`, so `off + SLOT <= PAGE +
        // 2 * slots * SLOT == len`: inside the mapping.
        unsafe { self.base.as_ptr().add(off) }
    }
}

/// Which end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The end that created the link (sends on ring 0).
    A,
    /// The other end (sends on ring 1).
    B,
}

impl Side {
    #[inline]
    fn n(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// Faults on one end's outgoing direction, in percent of frames sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    /// The generator's seed.
    pub seed: u64,
    /// Frames dropped.
    pub drop_pct: u8,
    /// Frames sent twice.
    pub dup_pct: u8,
    /// Frames held back and sent after the next one.
    pub reorder_pct: u8,
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn percent(&mut self, p: u8) -> bool {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % 100 < u64::from(p)
    }
}

/// What an end counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames sent (as the application sent them, before faults).
    pub tx_frames: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// Frames dropped by the faults.
    pub dropped: u64,
    /// Extra copies sent by the faults.
    pub duplicated: u64,
    /// Frames held back and sent after a later one.
    pub reordered: u64,
    /// Duplicates not sent because the ring was full.
    pub dup_skipped: u64,
}

/// What the peer needs to attach to a link made with [`FrameLink::create`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkGrants {
    /// The domain that granted the pages.
    pub granter: DomId,
    /// The grant refs, in order.
    pub refs: Vec<GrantRefNum>,
}

impl LinkGrants {
    /// The refs as a comma-separated list (for a command line or the
    /// environment).
    pub fn refs_string(&self) -> String {
        self.refs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Parses [`LinkGrants::refs_string`]'s form.
    pub fn parse_refs(granter: DomId, s: &str) -> Result<LinkGrants, LinkError> {
        let refs = s
            .split(',')
            .map(|r| r.trim().parse::<GrantRefNum>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LinkError(format!("grant refs {s:?}: {e}; give comma-separated numbers")))?;
        Ok(LinkGrants { granter, refs })
    }
}

/// One end of a link: a [`FrameDevice`] (see the [module docs](self)).
pub struct FrameLink {
    shared: Arc<Shared>,
    side: Side,
    mac: [u8; 6],
    /// The next slot this end produces into (its local copy).
    tx_prod: u32,
    /// The peer's consumer index of the outgoing ring when last read (and
    /// checked): the room it leaves is free without reading the index
    /// again, which only happens when that room is used up.
    tx_cons_seen: u32,
    /// The next slot this end consumes (its local copy).
    rx_cons: u32,
    /// How far the peer's producer index of the incoming ring (when last
    /// read and checked) or the ready word of the slot at `rx_cons`
    /// announced frames: those are taken without reading the index again.
    rx_prod_seen: u32,
    /// A received frame is lent at `rx_cons`.
    rx_out: bool,
    /// Polls of `receive` that found the ring empty (see `INDEX_EVERY`).
    empty_polls: u32,
    faults: Option<(Faults, Rng)>,
    /// A frame held back for reordering.
    held: Option<Vec<u8>>,
    /// A spare buffer for the held frame.
    spare: Vec<u8>,
    /// The buffer [`FrameDevice::tx_buffer`] lends (empty while lent).
    stage: Vec<u8>,
    broken: Option<String>,
    stats: LinkStats,
    /// Grants to end when the creating end goes.
    grants: Option<(HostedPlatform, Vec<GrantRef>)>,
}

impl FrameLink {
    /// Both ends of a link in this process, `slots` slots per direction,
    /// on a sealed memfd: end A with `mac_a`, end B with `mac_b`.
    pub fn pair(slots: usize, mac_a: [u8; 6], mac_b: [u8; 6]) -> Result<(FrameLink, FrameLink), LinkError> {
        let len = region_len(slots)?;
        let os = |what: &str, e: io::Error| LinkError(format!("{what}: {e}"));
        let file = sys::sealed_memfd("frame-link", len as u64).map_err(|e| os("memfd", e))?;
        // The mapping keeps the memory; the descriptor closes here.
        let map = Mmap::shared(file.as_fd(), 0, len, true).map_err(|e| os("mapping the memfd", e))?;
        let shared = Arc::new(Shared::new(Backing::Memfd(map))?);
        Ok((
            FrameLink::end(shared.clone(), Side::A, mac_a),
            FrameLink::end(shared, Side::B, mac_b),
        ))
    }

    /// End A of a link between `plat`'s domain and `peer`: allocates the
    /// shared pages (zeroed) and grants them to `peer`. Hand the returned
    /// [`LinkGrants`] to the peer, which calls [`FrameLink::attach`]. The
    /// grants end when this end is dropped; the pages are kept until the
    /// peer has unmapped them.
    pub fn create(
        plat: &HostedPlatform,
        peer: DomId,
        slots: usize,
        mac: [u8; 6],
    ) -> Result<(FrameLink, LinkGrants), LinkError> {
        let pages = region_len(slots)? / PAGE;
        let mem = plat
            .alloc_zeroed_pages(pages)
            .map_err(|e| LinkError(format!("allocating {pages} pages: {e}")))?;
        let table = plat.grant_table();
        let mut grants = Vec::with_capacity(pages);
        for i in 0..pages {
            let granted = mem
                .gfn(i)
                .ok_or_else(|| LinkError(format!("page {i} of {pages} has no frame number")))
                .and_then(|gfn| {
                    table
                        .grant_access(peer, gfn, Access::ReadWrite)
                        .map_err(|e| LinkError(format!("granting page {i} to {peer}: {e}")))
                });
            match granted {
                Ok(g) => grants.push(g),
                Err(e) => {
                    for g in grants {
                        let _ = table.end_access(g);
                    }
                    return Err(e);
                }
            }
        }
        let info = LinkGrants {
            granter: grant_tables::Platform::domid(plat),
            refs: grants.iter().map(|g| g.raw()).collect(),
        };
        let shared = Arc::new(Shared::new(Backing::Granted(mem))?);
        let mut end = FrameLink::end(shared, Side::A, mac);
        end.grants = Some((plat.clone(), grants));
        Ok((end, info))
    }

    /// End B: maps the pages `grants` names (from [`FrameLink::create`] in
    /// the granting domain).
    pub fn attach(plat: &HostedPlatform, grants: &LinkGrants, mac: [u8; 6]) -> Result<FrameLink, LinkError> {
        let map = plat
            .map_grants(grants.granter, &grants.refs, Access::ReadWrite)
            .map_err(|e| LinkError(format!("mapping the link's pages: {e}")))?;
        let shared = Arc::new(Shared::new(Backing::Mapped(map))?);
        let mut end = FrameLink::end(shared, Side::B, mac);
        // Start from where the peer's indices are (they start at zero;
        // a peer that already sent is picked up where it is).
        end.rx_cons = end.shared.index(end.rx_ring() * 128 + 64).load(Ordering::Acquire);
        end.rx_prod_seen = end.rx_cons;
        end.tx_prod = end.shared.index(end.tx_ring() * 128).load(Ordering::Acquire);
        end.tx_cons_seen = end.tx_prod;
        Ok(end)
    }

    fn end(shared: Arc<Shared>, side: Side, mac: [u8; 6]) -> FrameLink {
        FrameLink {
            shared,
            side,
            mac,
            tx_prod: 0,
            tx_cons_seen: 0,
            rx_cons: 0,
            rx_prod_seen: 0,
            rx_out: false,
            empty_polls: 0,
            faults: None,
            held: None,
            spare: Vec::with_capacity(MAX_FRAME),
            stage: Vec::with_capacity(MAX_FRAME),
            broken: None,
            stats: LinkStats::default(),
            grants: None,
        }
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Slots per direction.
    pub fn slots(&self) -> usize {
        self.shared.slots as usize
    }

    /// The counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Makes this end's outgoing direction lossy (`None`: perfect again;
    /// a frame held back is sent at the next poll).
    pub fn set_faults(&mut self, faults: Option<Faults>) {
        self.faults = faults.map(|f| (f, Rng::new(f.seed)));
    }

    /// Bytes of the shared region.
    pub fn region_len(&self) -> usize {
        self.shared.len
    }

    /// Writes `bytes` at `offset` of the shared region as a misbehaving
    /// peer would (indices, lengths, frames), for tests and fuzzing of a
    /// hostile peer; a well-behaved end never calls it. `false` when the
    /// range is outside the region.
    pub fn hostile_write(&self, offset: usize, bytes: &[u8]) -> bool {
        match offset.checked_add(bytes.len()) {
            Some(end) if end <= self.shared.len => {
                for (i, b) in bytes.iter().enumerate() {
                    // SAFETY: `offset + i < len`: inside the mapping, which
                    // `shared` keeps; a volatile byte write, as a peer's
                    // write from another process would be.
                    unsafe { self.shared.base.as_ptr().add(offset + i).write_volatile(*b) }
                }
                true
            }
            _ => false,
        }
    }

    #[inline]
    fn tx_ring(&self) -> usize {
        self.side.n()
    }

    #[inline]
    fn rx_ring(&self) -> usize {
        1 - self.side.n()
    }

    fn broken(&mut self, why: String) -> FrameError {
        log::error!("frame link end {:?}: {why}", self.side);
        self.broken = Some(why.clone());
        FrameError::Broken(why)
    }

    fn check(&self) -> Result<(), FrameError> {
        match &self.broken {
            Some(why) => Err(FrameError::Broken(why.clone())),
            None => Ok(()),
        }
    }

    /// Free slots in the outgoing ring: those the peer's consumer index
    /// left when last read, or, when none, after reading and checking it
    /// again (a read of a cache line the peer writes is kept off the
    /// common path).
    #[inline]
    fn tx_room(&mut self) -> Result<u32, FrameError> {
        let used = self.tx_prod.wrapping_sub(self.tx_cons_seen);
        if used < self.shared.slots {
            return Ok(self.shared.slots - used);
        }
        let cons = self.shared.index(self.tx_ring() * 128 + 64).load(Ordering::Acquire);
        let used = self.tx_prod.wrapping_sub(cons);
        if used > self.shared.slots {
            return Err(self.broken(format!(
                "the peer's consumer index {cons} is not within the {} slots behind our producer index {}; \
                 the peer is broken or hostile: recreate the link",
                self.shared.slots, self.tx_prod
            )));
        }
        self.tx_cons_seen = cons;
        Ok(self.shared.slots - used)
    }

    /// Publishes the slot at `tx_prod` (its frame and length written).
    fn publish(&mut self) {
        let next = self.tx_prod.wrapping_add(1);
        self.shared
            .ready(self.tx_ring(), self.tx_prod)
            .store(next, Ordering::Release);
        self.tx_prod = next;
        self.shared
            .index(self.tx_ring() * 128)
            .store(self.tx_prod, Ordering::Release);
    }

    /// Writes `frame` into the slot at `tx_prod` and publishes it: the
    /// bytes past the slot's first cache line first, then that line (the
    /// frame's first bytes and the length), then the ready word (see the
    /// module docs).
    fn put_copy(&mut self, frame: &[u8]) {
        debug_assert!(!frame.is_empty() && frame.len() <= MAX_FRAME);
        let slot = self.shared.slot(self.tx_ring(), self.tx_prod);
        let head = frame.len().min(SLOT_LINE - SLOT_DATA);
        // SAFETY: the slot at `tx_prod` is free (the caller checked the
        // room) and owned by this end until published; `head <=
        // frame.len() <= MAX_FRAME <= SLOT - SLOT_DATA`, so both copies
        // stay inside the slot; `frame` is this process's own memory, not
        // the slot; the header's first four bytes are 4-byte aligned.
        unsafe {
            std::ptr::copy_nonoverlapping(frame.as_ptr().add(head), slot.add(SLOT_DATA + head), frame.len() - head);
            std::ptr::copy_nonoverlapping(frame.as_ptr(), slot.add(SLOT_DATA), head);
            slot.cast::<u32>().write_volatile((frame.len() as u32).to_le());
        }
        self.publish();
    }

    /// Sends the frame held back, if the ring has room.
    fn release_held(&mut self) -> Result<(), FrameError> {
        if self.held.is_some() && self.tx_room()? > 0 {
            if let Some(h) = self.held.take() {
                self.put_copy(&h);
                self.spare = h;
            }
        }
        Ok(())
    }
}

impl Drop for FrameLink {
    fn drop(&mut self) {
        if let Some((plat, grants)) = self.grants.take() {
            // The region stays allocated (the table keeps it) until every
            // grant has ended: a peer still mapping it never sees the pages
            // reused.
            if let Err(e) = plat.grant_table().end_access_all(grants, self.shared.clone()) {
                log::warn!("frame link: the peer still maps the link's pages ({e}); they are kept until it unmaps");
            }
        }
    }
}

/// A transmit buffer: this end's own memory, reserved for a slot of the
/// outgoing ring and copied into it when sent.
pub struct LinkTx {
    shared: Arc<Shared>,
    side: Side,
    index: u32,
    buf: Vec<u8>,
}

impl Drop for LinkTx {
    fn drop(&mut self) {
        self.shared.tx_lent[self.side.n()].store(false, Ordering::Release);
    }
}

impl TxFrame for LinkTx {
    fn len(&self) -> usize {
        self.buf.len()
    }

    fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.buf)
    }

    fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), FrameError> {
        let oob = FrameError::OutOfRange {
            offset,
            len: data.len(),
            frame_len: self.buf.len(),
        };
        let end = offset.checked_add(data.len()).ok_or(oob.clone())?;
        self.buf.get_mut(offset..end).ok_or(oob)?.copy_from_slice(data);
        Ok(())
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), FrameError> {
        let oob = FrameError::OutOfRange {
            offset,
            len: buf.len(),
            frame_len: self.buf.len(),
        };
        let end = offset.checked_add(buf.len()).ok_or(oob.clone())?;
        buf.copy_from_slice(self.buf.get(offset..end).ok_or(oob)?);
        Ok(())
    }
}

/// A received frame: a slot of the incoming ring, lent in place and given
/// back to the peer when dropped.
pub struct LinkRx {
    shared: Arc<Shared>,
    side: Side,
    index: u32,
    len: usize,
}

impl Drop for LinkRx {
    fn drop(&mut self) {
        let ring = 1 - self.side.n();
        self.shared
            .index(ring * 128 + 64)
            .store(self.index.wrapping_add(1), Ordering::Release);
        self.shared.rx_lent[self.side.n()].store(false, Ordering::Release);
    }
}

impl RxFrame for LinkRx {
    fn len(&self) -> usize {
        self.len
    }

    fn as_slice(&self) -> Option<&[u8]> {
        let slot = self.shared.slot(1 - self.side.n(), self.index);
        // SAFETY: the slot was published by the peer and is not given back
        // until this frame drops, so the protocol gives the peer no right
        // to write it; `len <= MAX_FRAME` (checked when received) fits after
        // the slot's header; the `Arc` keeps the mapping. A peer that
        // writes it anyway changes only the values read (see the module
        // docs).
        Some(unsafe { slice::from_raw_parts(slot.add(SLOT_DATA), self.len) })
    }

    fn fragment(&self, index: usize) -> Option<&[u8]> {
        if index == 0 {
            self.as_slice()
        } else {
            None
        }
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), FrameError> {
        let oob = FrameError::OutOfRange {
            offset,
            len: buf.len(),
            frame_len: self.len,
        };
        let end = offset.checked_add(buf.len()).ok_or(oob.clone())?;
        let src = self.as_slice().and_then(|s| s.get(offset..end)).ok_or(oob)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl FrameDevice for FrameLink {
    type Tx = LinkTx;
    type Rx = LinkRx;

    fn link(&self) -> LinkInfo {
        LinkInfo {
            up: self.broken.is_none(),
            mac: self.mac,
            mtu: MTU,
            max_frame: MAX_FRAME,
        }
    }

    fn tx_buffer(&mut self, len: usize) -> Result<Option<LinkTx>, FrameError> {
        self.check()?;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge { len, max: MAX_FRAME });
        }
        if len == 0 {
            return Err(FrameError::Invalid("an empty frame".into()));
        }
        let me = self.side.n();
        if self.shared.tx_lent[me].load(Ordering::Acquire) || self.tx_room()? == 0 {
            return Ok(None);
        }
        self.shared.tx_lent[me].store(true, Ordering::Relaxed);
        // The stage is empty only when a buffer lent before was dropped
        // unsent (it went with it). It holds the last frame sent (this
        // end's own bytes): only what a longer frame needs past it is
        // zeroed, not every frame's length (the caller writes the frame).
        let mut buf = std::mem::take(&mut self.stage);
        if buf.capacity() < MAX_FRAME {
            buf.reserve(MAX_FRAME - buf.len());
        }
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        Ok(Some(LinkTx {
            shared: self.shared.clone(),
            side: self.side,
            index: self.tx_prod,
            buf,
        }))
    }

    fn send(&mut self, mut frame: LinkTx) -> Result<(), FrameError> {
        self.check()?;
        if !Arc::ptr_eq(&frame.shared, &self.shared) || frame.side != self.side || frame.index != self.tx_prod {
            return Err(FrameError::Invalid(
                "a transmit buffer this end did not lend, or lent before".into(),
            ));
        }
        let buf = std::mem::take(&mut frame.buf);
        drop(frame);
        if buf.is_empty() {
            self.stage = buf;
            return Err(FrameError::Invalid("a transmit buffer truncated to nothing".into()));
        }
        self.stats.tx_frames += 1;
        let Some((f, rng)) = self.faults.as_mut() else {
            self.put_copy(&buf);
            self.stage = buf;
            return Ok(());
        };
        let f = *f;
        let (drop_it, dup, reorder) = (
            rng.percent(f.drop_pct),
            rng.percent(f.dup_pct),
            rng.percent(f.reorder_pct),
        );
        if drop_it {
            self.stats.dropped += 1;
        } else if reorder && self.held.is_none() {
            // Held back: sent after the next frame (or at the next poll).
            let mut h = std::mem::take(&mut self.spare);
            h.clear();
            h.extend_from_slice(&buf);
            self.held = Some(h);
            self.stats.reordered += 1;
        } else {
            self.put_copy(&buf);
            if dup {
                if self.tx_room()? > 0 {
                    self.put_copy(&buf);
                    self.stats.duplicated += 1;
                } else {
                    self.stats.dup_skipped += 1;
                }
            }
            self.release_held()?;
        }
        self.stage = buf;
        Ok(())
    }

    #[inline]
    fn receive(&mut self) -> Result<Option<LinkRx>, FrameError> {
        // Inlined into the caller's poll loop: the next slot's ready word,
        // and on an empty ring, once every INDEX_EVERY polls, the peer's
        // producer index (for its checks; it may lag behind the ready
        // words, which the slow path accepts); neither while frames
        // announced before are still to be taken.
        if !self.rx_out && self.broken.is_none() && self.rx_prod_seen == self.rx_cons {
            if self.slot_ready() {
                return self.take_rx().map(Some);
            }
            self.empty_polls = self.empty_polls.wrapping_add(1);
            if self.empty_polls % INDEX_EVERY != 0
                || self.shared.index(self.rx_ring() * 128).load(Ordering::Acquire) == self.rx_cons
            {
                return Ok(None);
            }
            return self.receive_slow(true);
        }
        self.receive_slow(false)
    }

    #[inline]
    fn poll(&mut self) -> Result<bool, FrameError> {
        if self.held.is_none() && self.broken.is_none() {
            return Ok(false);
        }
        self.check()?;
        let held = self.held.is_some();
        self.release_held()?;
        Ok(held && self.held.is_none())
    }

    fn wait(&mut self, timeout_ns: Option<u64>) -> Result<bool, FrameError> {
        self.check()?;
        let start = Instant::now();
        let limit = timeout_ns.map(Duration::from_nanos);
        loop {
            for _ in 0..64 {
                let prod = self.shared.index(self.rx_ring() * 128).load(Ordering::Acquire);
                let next = if self.rx_out {
                    self.rx_cons.wrapping_add(1)
                } else {
                    self.rx_cons
                };
                if prod != next || self.held.is_some() {
                    return Ok(true);
                }
                std::hint::spin_loop();
            }
            if limit.is_some_and(|l| start.elapsed() >= l) {
                return Ok(false);
            }
            std::thread::yield_now();
        }
    }
}

impl FrameLink {
    /// `receive` past its empty-ring fast path; `index`: read the peer's
    /// producer index when the next slot's ready word is not set.
    fn receive_slow(&mut self, index: bool) -> Result<Option<LinkRx>, FrameError> {
        self.check()?;
        let me = self.side.n();
        if self.rx_out {
            if self.shared.rx_lent[me].load(Ordering::Acquire) {
                return Ok(None);
            }
            self.rx_out = false;
            self.rx_cons = self.rx_cons.wrapping_add(1);
        }
        if self.rx_prod_seen != self.rx_cons || self.slot_ready() {
            // Announced: by the index (checked when read) or the slot.
            return Ok(Some(self.take_rx()?));
        }
        if !index {
            return Ok(None);
        }
        let prod = self.shared.index(self.rx_ring() * 128).load(Ordering::Acquire);
        let avail = prod.wrapping_sub(self.rx_cons);
        // Zero, or behind what the ready words announced (the producer
        // stores the index after a slot's ready word): nothing new.
        if self.rx_cons.wrapping_sub(prod) <= self.shared.slots {
            return Ok(None);
        }
        if avail > self.shared.slots {
            return Err(self.broken(format!(
                "the peer's producer index {prod} is {avail} slots ahead of our consumer index {}, more than the \
                 ring's {}; the peer is broken or hostile: recreate the link",
                self.rx_cons, self.shared.slots
            )));
        }
        self.rx_prod_seen = prod;
        Ok(Some(self.take_rx()?))
    }

    /// Whether the slot at `rx_cons` says it holds a frame; if so, it
    /// counts as announced (`rx_prod_seen`).
    #[inline]
    fn slot_ready(&mut self) -> bool {
        let next = self.rx_cons.wrapping_add(1);
        let ready = self.shared.ready(self.rx_ring(), self.rx_cons).load(Ordering::Acquire) == next;
        if ready {
            self.rx_prod_seen = next;
        }
        ready
    }

    /// Lends the frame in the slot at `rx_cons`, which the peer published.
    fn take_rx(&mut self) -> Result<LinkRx, FrameError> {
        let me = self.side.n();
        let slot = self.shared.slot(self.rx_ring(), self.rx_cons);
        // SAFETY: the slot's header, inside the mapping and 4-byte aligned;
        // read once, volatile (the peer wrote it before publishing).
        let len = u32::from_le(unsafe { slot.cast::<u32>().read_volatile() }) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(self.broken(format!(
                "the peer published a frame of {len} bytes in slot {} (1 to {MAX_FRAME} allowed); \
                 the peer is broken or hostile: recreate the link",
                self.rx_cons
            )));
        }
        self.shared.rx_lent[me].store(true, Ordering::Relaxed);
        self.rx_out = true;
        self.stats.rx_frames += 1;
        Ok(LinkRx {
            shared: self.shared.clone(),
            side: self.side,
            index: self.rx_cons,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (FrameLink, FrameLink) {
        FrameLink::pair(4, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).expect("link")
    }

    fn send(l: &mut FrameLink, bytes: &[u8]) {
        let mut t = l.tx_buffer(bytes.len()).unwrap().expect("a buffer");
        t.as_mut_slice().unwrap().copy_from_slice(bytes);
        l.send(t).unwrap();
    }

    fn recv(l: &mut FrameLink) -> Option<Vec<u8>> {
        l.receive().unwrap().map(|f| f.as_slice().unwrap().to_vec())
    }

    #[test]
    fn frames_cross_in_order_and_slots_are_recycled() {
        let (mut a, mut b) = pair();
        assert_eq!(region_len(4).unwrap(), a.region_len());
        for round in 0..5u8 {
            for i in 0..4u8 {
                send(&mut a, &[round, i, 9]);
            }
            // Four slots: the fifth waits for the peer.
            assert!(a.tx_buffer(10).unwrap().is_none());
            for i in 0..4u8 {
                assert_eq!(recv(&mut b), Some(vec![round, i, 9]));
            }
            assert_eq!(recv(&mut b), None);
        }
        send(&mut b, &[7; 60]);
        assert_eq!(recv(&mut a), Some(vec![7; 60]));
        assert_eq!(a.stats().tx_frames, 20);
        assert_eq!(b.stats().rx_frames, 20);
    }

    #[test]
    fn one_frame_lent_each_way_at_a_time() {
        let (mut a, mut b) = pair();
        let t = a.tx_buffer(10).unwrap().unwrap();
        assert!(a.tx_buffer(10).unwrap().is_none());
        drop(t);
        let t = a.tx_buffer(3).unwrap().unwrap();
        a.send(t).unwrap();
        send(&mut a, &[1, 2]);
        let f = b.receive().unwrap().unwrap();
        assert_eq!(f.len(), 3);
        assert!(b.receive().unwrap().is_none(), "one received frame lent at a time");
        drop(f);
        assert_eq!(recv(&mut b), Some(vec![1, 2]));
        // Sizes.
        assert!(matches!(a.tx_buffer(MAX_FRAME + 1), Err(FrameError::TooLarge { .. })));
        assert!(matches!(a.tx_buffer(0), Err(FrameError::Invalid(_))));
    }

    #[test]
    fn a_buffer_of_another_link_is_refused() {
        let (mut a, _b) = pair();
        let (mut c, _d) = pair();
        let t = c.tx_buffer(5).unwrap().unwrap();
        assert!(matches!(a.send(t), Err(FrameError::Invalid(_))));
        // `c` lends again once that buffer is gone.
        assert!(c.tx_buffer(5).unwrap().is_some());
    }

    /// Polls `l` until `receive` fails, at most the polls between two
    /// reads of the producer index (an empty ring reads it only once in
    /// that many).
    fn receive_error(l: &mut FrameLink) -> Option<FrameError> {
        (0..INDEX_EVERY).find_map(|_| l.receive().err())
    }

    #[test]
    fn a_producer_index_too_far_ahead_breaks_the_link() {
        let (a, mut b) = pair();
        // Ring 0's producer index (A's), 5 ahead of 4 slots.
        a.hostile_write(0, &5u32.to_ne_bytes());
        assert!(matches!(receive_error(&mut b), Some(FrameError::Broken(m)) if m.contains("producer index")));
        assert!(matches!(b.tx_buffer(10), Err(FrameError::Broken(_))), "broken for good");
        assert!(!b.link().up);
    }

    /// A slot whose ready word says `index + 1` holds a frame before the
    /// producer index says so; a ready word of another lap does not, and
    /// a bad length behind a ready word breaks the link as well.
    #[test]
    fn the_ready_word_announces_a_frame() {
        let (a, mut b) = pair();
        // Slot 0 of ring 0 (A's), written as A would, index not published.
        a.hostile_write(PAGE, &3u32.to_le_bytes());
        a.hostile_write(PAGE + SLOT_DATA, &[7, 8, 9]);
        // A ready word of the lap before (index 0 - 4 slots + 1).
        a.hostile_write(PAGE + 4, &0u32.wrapping_sub(3).to_ne_bytes());
        assert_eq!(recv(&mut b), None);
        a.hostile_write(PAGE + 4, &1u32.to_ne_bytes());
        assert_eq!(recv(&mut b), Some(vec![7, 8, 9]));
        // A publishes its index after the ready word: until then it lags
        // behind what B took, which is no fault.
        assert_eq!(recv(&mut b), None, "slot 1 holds nothing");
        a.hostile_write(0, &1u32.to_ne_bytes());
        for _ in 0..=INDEX_EVERY {
            assert_eq!(recv(&mut b), None, "slot 1 holds nothing");
        }
        assert_eq!(b.stats().rx_frames, 1);

        let (a, mut b) = pair();
        a.hostile_write(PAGE, &(MAX_FRAME as u32 + 1).to_le_bytes());
        a.hostile_write(PAGE + 4, &1u32.to_ne_bytes());
        assert!(matches!(b.receive(), Err(FrameError::Broken(m)) if m.contains("bytes in slot")));
    }

    #[test]
    fn a_bad_length_breaks_the_link() {
        for len in [0u32, MAX_FRAME as u32 + 1, u32::MAX] {
            let (a, mut b) = pair();
            a.hostile_write(PAGE, &len.to_le_bytes());
            a.hostile_write(0, &1u32.to_ne_bytes());
            assert!(
                matches!(receive_error(&mut b), Some(FrameError::Broken(m)) if m.contains("bytes in slot")),
                "{len}"
            );
        }
    }

    #[test]
    fn a_consumer_index_ahead_of_the_producer_breaks_the_sender() {
        let (mut a, b) = pair();
        // A fills the ring's 4 slots (B takes nothing); ring 0's consumer
        // index (B's) moves past what A produced.
        for _ in 0..4 {
            send(&mut a, &[1, 2, 3]);
        }
        b.hostile_write(64, &7u32.to_ne_bytes());
        // A reads it now that the room it knew of is used up.
        assert!(matches!(a.tx_buffer(10), Err(FrameError::Broken(m)) if m.contains("consumer index")));
    }

    #[test]
    fn hostile_writes_stay_in_the_region() {
        let (a, _b) = pair();
        assert!(!a.hostile_write(a.region_len(), &[1]));
        assert!(!a.hostile_write(usize::MAX, &[1, 2]));
        assert!(a.hostile_write(a.region_len() - 1, &[1]));
    }

    #[test]
    fn faults_follow_the_seed() {
        let run = |seed| {
            let (mut a, mut b) = FrameLink::pair(64, [0; 6], [1; 6]).unwrap();
            a.set_faults(Some(Faults {
                seed,
                drop_pct: 20,
                dup_pct: 20,
                reorder_pct: 20,
            }));
            let mut got = Vec::new();
            for i in 0..40u8 {
                send(&mut a, &[i]);
                while let Some(f) = recv(&mut b) {
                    got.push(f[0]);
                }
            }
            a.poll().unwrap();
            while let Some(f) = recv(&mut b) {
                got.push(f[0]);
            }
            (got, a.stats())
        };
        let (g1, s1) = run(5);
        let (g2, s2) = run(5);
        let (g3, _) = run(6);
        assert_eq!((&g1, s1), (&g2, s2));
        assert_ne!(g1, g3);
        assert!(s1.dropped > 0 && s1.duplicated > 0 && s1.reordered > 0, "{s1:?}");
        assert_eq!(g1.len() as u64, 40 - s1.dropped + s1.duplicated);
        let sorted = {
            let mut v = g1.clone();
            v.sort();
            v
        };
        assert_ne!(g1, sorted, "reordered");
        // Perfect again: in order.
        let (mut a, mut b) = pair();
        a.set_faults(None);
        send(&mut a, &[1]);
        send(&mut a, &[2]);
        assert_eq!((recv(&mut b), recv(&mut b)), (Some(vec![1]), Some(vec![2])));
    }
}
