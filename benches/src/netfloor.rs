//! The netif floor: the least any implementation of Xen's netif protocol
//! can cost on this machine, measured in the same run as the driver.
//!
//! Two threads pinned to two cores share a TX and an RX shared ring laid
//! out as `io/ring.h` lays them out (the four indices in the first line,
//! 12-byte TX slots and 8-byte RX slots from byte 64) and two sets of
//! pages. The front writes a frame into a TX page, a TX request naming it,
//! and publishes with the protocol's push (release store of `req_prod`,
//! full fence, read of `req_event`); the back takes the request, copies
//! the frame out of the page (a grant copy's bytes, with no grant), swaps
//! its addresses, copies it into the page of the next posted RX request,
//! writes the RX response and then the TX response, each pushed the same
//! way. The front takes the RX response and reads the frame where it
//! landed, and reclaims TX responses outside the timed part; RX buffers
//! are posted again in batches of an eighth of the ring, as netfront
//! posts them.
//!
//! Nothing here is validated beyond what keeps it from going out of
//! bounds, no switch looks at the frame and no event channel exists: what
//! is left is the protocol's own shared-memory traffic (the indices, the
//! slots, the pages, each line crossing between the cores when the
//! protocol says it must). `netif-floor-64` is its round trip of 64-byte
//! frames, with no grant; `netif-floor-gnt-64` the same with each copy
//! made as the emulated hypervisor makes a grant copy: the granted entry
//! pinned before (its pin record locked, `GTF_reading` or `GTF_writing`
//! set in the granting side's entry, the record unlocked) and unpinned
//! after ([`grant_tables::emulated::ForeignTable`], the code the hosted
//! platform's `GNTTABOP_copy` runs, without its domain lookups); `netif-floor-stream-1500` streams
//! 1500-byte frames one way in bursts of 32 to a back that reads every
//! byte it copied out (as the `netfront-stream-1500` sink does), in
//! Gbit/s. A netfront entry's ratio to these says what the driver, the
//! backend and the grants add to what the protocol costs at least.

use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use grant_tables::abi::{GrantEntryV1, GrantFlags};
use grant_tables::emulated::{spin_backoff, ForeignTable};
use grant_tables::{Access, DomId};

use crate::harness::{Recorder, Throughput};
use crate::pin;

const PAGE: usize = 4096;
/// Slots of each ring (one page: 256 slots of the TX ring's 12 bytes fit
/// after the header only in `io/ring.h`'s rounding to a power of two,
/// which gives 256 for netif's TX and RX rings).
const SLOTS: u32 = 256;
/// RX requests posted again per batch.
const RX_BATCH: u32 = SLOTS / 8;
/// No single wait may take longer than this.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A shared ring: the header line (req_prod, req_event, rsp_prod,
/// rsp_event) and the slots as 32-bit words (a TX request is three words,
/// an RX slot two), each slot at its `io/ring.h` offset.
#[repr(C, align(64))]
struct Sring {
    req_prod: AtomicU32,
    req_event: AtomicU32,
    rsp_prod: AtomicU32,
    rsp_event: AtomicU32,
    _pad: [u32; 12],
    words: Box<[AtomicU32]>,
}

impl Sring {
    fn new(slot_words: usize) -> Sring {
        Sring {
            req_prod: AtomicU32::new(0),
            req_event: AtomicU32::new(1),
            rsp_prod: AtomicU32::new(0),
            rsp_event: AtomicU32::new(1),
            _pad: [0; 12],
            words: (0..SLOTS as usize * slot_words)
                .map(|_| AtomicU32::new(0))
                .collect(),
        }
    }

    /// The words of slot `idx` (`n` of them).
    #[inline(always)]
    fn slot(&self, idx: u32, n: usize) -> &[AtomicU32] {
        let at = (idx & (SLOTS - 1)) as usize * n;
        &self.words[at..at + n]
    }
}

/// Pushes `prod` as `io/ring.h`'s `RING_PUSH_*_AND_CHECK_NOTIFY` does:
/// the release store, the full fence, the read of the event index (the
/// answer is unused: nobody sleeps here, but the protocol pays for it).
#[inline(always)]
fn push(index: &AtomicU32, event: &AtomicU32, old: u32, new: u32) -> bool {
    index.store(new, Ordering::Release);
    fence(Ordering::SeqCst);
    let ev = event.load(Ordering::Relaxed);
    new.wrapping_sub(ev) < new.wrapping_sub(old)
}

/// A page whose bytes belong to one side at a time, handed over through
/// the rings' indices (release store, acquire load).
#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; PAGE]>);

// SAFETY: a page is read or written by the side that owns it by the
// protocol (the front until it publishes the request naming it, the back
// from the request until its response, for TX; the other way round for
// RX); the index stores and loads that hand it over are release and
// acquire, so the accesses of the two sides never overlap.
unsafe impl Sync for Page {}

struct Shared {
    tx: Sring,
    rx: Sring,
    tx_pages: Box<[Page]>,
    rx_pages: Box<[Page]>,
    /// The front's grant table (the TX pages' entries, read-only, then the
    /// RX pages', writable) and its pin records, as the back's emulated
    /// hypervisor sees them; `None`: copies without grants.
    grants: Option<ForeignTable>,
}

/// The front's grant table memory: `2 * SLOTS` entries and as many pin
/// records, kept alive by the [`ForeignTable`] view.
struct GrantMem {
    entries: Box<[AtomicU64]>,
    pins: Box<[AtomicU64]>,
}

/// The domain the front grants its pages to.
const BACK: DomId = DomId(0);

impl Shared {
    /// A grant table whose entry `p` grants TX page `p` read-only and
    /// entry `SLOTS + p` RX page `p` writable, to [`BACK`].
    fn grant_table() -> ForeignTable {
        let entry = |writable: bool, frame: u32| {
            let mut flags = GrantFlags::PERMIT_ACCESS;
            if !writable {
                flags |= GrantFlags::READONLY;
            }
            let e = GrantEntryV1 {
                flags: flags.bits(),
                domid: BACK.0,
                frame,
            };
            AtomicU64::new(u64::from(e.flags) | u64::from(e.domid) << 16 | u64::from(e.frame) << 32)
        };
        let mem = Arc::new(GrantMem {
            entries: (0..2 * SLOTS)
                .map(|g| entry(g >= SLOTS, g % SLOTS))
                .collect(),
            pins: (0..2 * SLOTS).map(|_| AtomicU64::new(0)).collect(),
        });
        let entries = NonNull::from(&mem.entries[0]).cast::<GrantEntryV1>();
        let pins = NonNull::from(&mem.pins[0]).cast::<u64>();
        // SAFETY: `2 * SLOTS` 8-byte aligned entries (each an `AtomicU64`
        // laid out as `GrantEntryV1`: flags, domid, frame in little-endian
        // order) and as many 8-byte aligned pin records, in `mem`, which
        // the view keeps alive; they are only ever accessed atomically
        // (through `AtomicU64` here, through the view's atomics there).
        unsafe { ForeignTable::with_pins(entries, pins, 2 * SLOTS, Some(mem)) }
    }

    fn new(grants: bool) -> Arc<Shared> {
        let pages = || -> Box<[Page]> {
            (0..SLOTS)
                .map(|_| Page(UnsafeCell::new([0; PAGE])))
                .collect()
        };
        Arc::new(Shared {
            tx: Sring::new(3),
            rx: Sring::new(2),
            tx_pages: pages(),
            rx_pages: pages(),
            grants: grants.then(Shared::grant_table),
        })
    }

    /// Runs `copy` on the page granted by `gref` as the emulated
    /// hypervisor's grant copy does: pinned for `access` around it (when
    /// the floor has grants), the page number read from the entry.
    #[inline(always)]
    fn granted<R>(
        &self,
        gref: u32,
        access: Access,
        copy: impl FnOnce(u32) -> Result<R, String>,
    ) -> Result<R, String> {
        let Some(t) = &self.grants else {
            return copy(gref % SLOTS);
        };
        let frame = t
            .pin_with(gref, BACK, access, &mut spin_backoff)
            .map_err(|e| format!("grant ref {gref}: {e}"))?;
        let r = copy(frame);
        t.unpin_with(gref, BACK, access, &mut spin_backoff)
            .map_err(|e| format!("grant ref {gref}: unpin: {e:?}"))?;
        r
    }

    /// Copies `src` into page `p` of `pages` at `off` (bounds checked).
    #[inline(always)]
    fn write(pages: &[Page], p: u32, off: usize, src: &[u8]) -> Result<(), String> {
        let page = pages.get(p as usize).ok_or("page out of range")?;
        if off + src.len() > PAGE {
            return Err("a copy past the page".into());
        }
        // SAFETY: this side owns the page now (see `Page`); the range is
        // inside it (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                (page.0.get() as *mut u8).add(off),
                src.len(),
            )
        };
        Ok(())
    }

    /// Copies `dst.len()` bytes of page `p` of `pages` at `off`.
    #[inline(always)]
    fn read(pages: &[Page], p: u32, off: usize, dst: &mut [u8]) -> Result<(), String> {
        let page = pages.get(p as usize).ok_or("page out of range")?;
        if off + dst.len() > PAGE {
            return Err("a copy past the page".into());
        }
        // SAFETY: as in `write`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (page.0.get() as *const u8).add(off),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }
}

/// The back's side: serves TX requests until `frames` were taken; echoes
/// each into the next posted RX buffer (`echo`) or only reads it (the
/// stream's sink). Returns the sink's sum.
fn back(sh: &Shared, frames: u64, echo: bool) -> Result<u64, String> {
    let (mut tx_cons, mut tx_rsp) = (0u32, 0u32);
    let (mut rx_cons, mut rx_rsp) = (0u32, 0u32);
    let mut frame = vec![0u8; PAGE];
    let mut sum = 0u64;
    let mut done = 0u64;
    let mut spins = 0u64;
    let mut last = Instant::now();
    while done < frames {
        let prod = sh.tx.req_prod.load(Ordering::Acquire);
        if prod == tx_cons {
            spins += 1;
            if spins % 65536 == 0 {
                if last.elapsed() > STEP_TIMEOUT {
                    return Err("the front stopped sending".into());
                }
            } else if spins % 65536 == 1 {
                last = Instant::now();
            }
            std::hint::spin_loop();
            continue;
        }
        spins = 0;
        while tx_cons != prod {
            let s = sh.tx.slot(tx_cons, 3);
            // gref | offset << 16, flags | id << 16, size.
            let w0 = s[0].load(Ordering::Relaxed);
            let w1 = s[1].load(Ordering::Relaxed);
            let size = s[2].load(Ordering::Relaxed) as usize;
            tx_cons = tx_cons.wrapping_add(1);
            let (page, off, id) = (w0 & 0xffff, (w0 >> 16) as usize, w1 >> 16);
            if size > PAGE - off {
                return Err("a TX request past its page".into());
            }
            sh.granted(page, Access::ReadOnly, |p| {
                Shared::read(&sh.tx_pages, p, off, &mut frame[..size])
            })?;
            let f = &mut frame[..size];
            if echo {
                let (dst, rest) = f.split_at_mut(6);
                dst.swap_with_slice(&mut rest[..6]);
                // The next posted RX buffer.
                while sh.rx.req_prod.load(Ordering::Acquire) == rx_cons {
                    std::hint::spin_loop();
                }
                let r = sh.rx.slot(rx_cons, 2);
                let rid = r[0].load(Ordering::Relaxed) & 0xffff;
                let rpage = r[1].load(Ordering::Relaxed);
                rx_cons = rx_cons.wrapping_add(1);
                sh.granted(SLOTS + rpage, Access::ReadWrite, |p| {
                    Shared::write(&sh.rx_pages, p, 0, f)
                })?;
                // id | offset << 16, flags | status << 16.
                let o = sh.rx.slot(rx_rsp, 2);
                o[0].store(rid, Ordering::Relaxed);
                o[1].store((size as u32) << 16, Ordering::Relaxed);
                let old = rx_rsp;
                rx_rsp = rx_rsp.wrapping_add(1);
                push(&sh.rx.rsp_prod, &sh.rx.rsp_event, old, rx_rsp);
            } else {
                sum = crate::net::sum_bytes(sum, f);
            }
            // The TX response: id | status (okay) in the slot's first word.
            sh.tx.slot(tx_rsp, 3)[0].store(id, Ordering::Relaxed);
            tx_rsp = tx_rsp.wrapping_add(1);
            done += 1;
        }
        let old = sh.tx.rsp_prod.load(Ordering::Relaxed);
        push(&sh.tx.rsp_prod, &sh.tx.rsp_event, old, tx_rsp);
    }
    Ok(std::hint::black_box(sum))
}

/// The front's rings and pages.
struct Front {
    sh: Arc<Shared>,
    tx_prod: u32,
    tx_rsp_cons: u32,
    /// TX pages free, the last freed on top (netfront reuses the page of
    /// the last completed packet first).
    free: Vec<u32>,
    /// TX ids in flight: the page each names.
    pages_of: Vec<u32>,
    rx_prod: u32,
    rx_cons: u32,
    /// RX buffer of each id.
    rx_page_of: Vec<u32>,
}

impl Front {
    fn new(sh: Arc<Shared>) -> Front {
        let mut f = Front {
            sh,
            tx_prod: 0,
            tx_rsp_cons: 0,
            free: (0..SLOTS).rev().collect(),
            pages_of: vec![0; SLOTS as usize],
            rx_prod: 0,
            rx_cons: 0,
            rx_page_of: (0..SLOTS).collect(),
        };
        f.post_rx(SLOTS);
        f
    }

    /// Posts `n` RX requests (ids and pages in ring order).
    fn post_rx(&mut self, n: u32) {
        let old = self.rx_prod;
        for _ in 0..n {
            let id = self.rx_prod & (SLOTS - 1);
            let s = self.sh.rx.slot(self.rx_prod, 2);
            s[0].store(id, Ordering::Relaxed);
            s[1].store(self.rx_page_of[id as usize], Ordering::Relaxed);
            self.rx_prod = self.rx_prod.wrapping_add(1);
        }
        push(
            &self.sh.rx.req_prod,
            &self.sh.rx.req_event,
            old,
            self.rx_prod,
        );
    }

    /// Puts one frame on the TX ring (published by `publish`); `false`
    /// when no page is free.
    #[inline(always)]
    fn put(&mut self, frame: &[u8]) -> Result<bool, String> {
        let Some(page) = self.free.pop() else {
            return Ok(false);
        };
        Shared::write(&self.sh.tx_pages, page, 0, frame)?;
        let id = self.tx_prod & (SLOTS - 1);
        self.pages_of[id as usize] = page;
        let s = self.sh.tx.slot(self.tx_prod, 3);
        s[0].store(page, Ordering::Relaxed);
        s[1].store(id << 16, Ordering::Relaxed);
        s[2].store(frame.len() as u32, Ordering::Relaxed);
        self.tx_prod = self.tx_prod.wrapping_add(1);
        Ok(true)
    }

    #[inline(always)]
    fn publish(&mut self) {
        let old = self.sh.tx.req_prod.load(Ordering::Relaxed);
        push(
            &self.sh.tx.req_prod,
            &self.sh.tx.req_event,
            old,
            self.tx_prod,
        );
    }

    /// Takes the TX responses published; returns how many.
    #[inline(always)]
    fn reclaim(&mut self) -> Result<u32, String> {
        let prod = self.sh.tx.rsp_prod.load(Ordering::Acquire);
        let n = prod.wrapping_sub(self.tx_rsp_cons);
        if n > SLOTS {
            return Err("TX responses past the ring".into());
        }
        while self.tx_rsp_cons != prod {
            let id = self.sh.tx.slot(self.tx_rsp_cons, 3)[0].load(Ordering::Relaxed) & 0xffff;
            let page = *self.pages_of.get(id as usize).ok_or("a bad TX id")?;
            self.free.push(page);
            self.tx_rsp_cons = self.tx_rsp_cons.wrapping_add(1);
        }
        Ok(n)
    }

    /// A received frame, if there is one: its length, its first bytes in
    /// `head`.
    #[inline(always)]
    fn try_recv(&mut self, head: &mut [u8]) -> Result<Option<usize>, String> {
        if self.sh.rx.rsp_prod.load(Ordering::Acquire) == self.rx_cons {
            return Ok(None);
        }
        let s = self.sh.rx.slot(self.rx_cons, 2);
        let id = s[0].load(Ordering::Relaxed) & 0xffff;
        let len = (s[1].load(Ordering::Relaxed) >> 16) as usize;
        self.rx_cons = self.rx_cons.wrapping_add(1);
        let page = *self.rx_page_of.get(id as usize).ok_or("a bad RX id")?;
        let n = head.len().min(len);
        Shared::read(&self.sh.rx_pages, page, 0, &mut head[..n])?;
        if self.rx_prod.wrapping_sub(self.rx_cons) <= SLOTS - RX_BATCH {
            self.post_rx(RX_BATCH);
        }
        Ok(Some(len))
    }
}

fn template(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xec]);
    f[6..12].copy_from_slice(&[0, 0x16, 0x3e, 0, 0, 1]);
    for (i, b) in f.iter_mut().enumerate().skip(14) {
        *b = i as u8;
    }
    f
}

/// Starts the back on the second core (serving `frames` frames, echoing
/// them or only reading them, see [`back`]) and pins the caller, the
/// front, to the first.
fn start(
    sh: Arc<Shared>,
    frames: u64,
    echo: bool,
) -> Result<(Front, thread::JoinHandle<Result<u64, String>>), String> {
    let (a, b) = pin::pair();
    let sh2 = sh.clone();
    let name = if echo {
        "netif-floor-back"
    } else {
        "netif-floor-sink"
    };
    let server = thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            pin::pin_to(b);
            back(&sh2, frames, echo)
        })
        .map_err(|e| format!("cannot spawn the back: {e}"))?;
    pin::pin_to(a);
    Ok((Front::new(sh), server))
}

/// `netif-floor-64` (`grants`: `netif-floor-gnt-64`): round trips of
/// `size`-byte frames.
pub fn pingpong(
    size: usize,
    grants: bool,
    iters: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    let total = iters + warmup;
    let (mut front, server) = start(Shared::new(grants), total, true)?;
    let mut frame = template(size);
    let mut head = [0u8; 32];
    let mut result = Ok(());
    for i in 0..total {
        frame[14..22].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        if !front.put(&frame)? {
            result = Err("no TX page free: the back stopped answering".to_string());
            break;
        }
        front.publish();
        let len = loop {
            if let Some(n) = front.try_recv(&mut head)? {
                break n;
            }
            if t.elapsed() > STEP_TIMEOUT {
                return Err("the back stopped answering".into());
            }
            std::hint::spin_loop();
        };
        let dt = t.elapsed().as_nanos() as u64;
        if len != size || head[14..22] != i.to_le_bytes() || head[6..12] != [2, 0, 0, 0, 0, 0xec] {
            result = Err(format!("round trip {i}: a wrong frame came back"));
            break;
        }
        front.reclaim()?;
        if i >= warmup {
            rec.record(dt);
        }
    }
    let served = server.join().map_err(|_| "the back panicked".to_string())?;
    result?;
    served.map(|_| ())
}

/// `netif-floor-stream-1500`: 1500-byte frames one way, in bursts of 32.
/// At least 200 000 frames, as `netfront-stream-1500`.
pub fn stream(iters: u64, rec: &mut Recorder) -> Result<(), String> {
    stream_frames(iters.max(200_000), rec)
}

/// The stream of `n` frames (after 1000 to warm up).
fn stream_frames(n: u64, rec: &mut Recorder) -> Result<(), String> {
    const BURST: u32 = 32;
    let warm = 1000u64;
    let (mut front, server) = start(Shared::new(false), warm + n, false)?;
    let frame = template(1500);
    let push_n = |front: &mut Front, n: u64| -> Result<Duration, String> {
        let t0 = Instant::now();
        let (mut sent, mut done) = (0u64, 0u64);
        while done < n {
            let mut put = 0;
            while put < BURST && sent < n && front.put(&frame)? {
                put += 1;
                sent += 1;
            }
            if put > 0 {
                front.publish();
            }
            let c = front.reclaim()?;
            done += u64::from(c);
            if c == 0 {
                if t0.elapsed() > STEP_TIMEOUT.saturating_mul(4) {
                    return Err("the sink stopped taking frames".into());
                }
                std::hint::spin_loop();
            }
        }
        Ok(t0.elapsed())
    };
    push_n(&mut front, warm)?;
    let dt = push_n(&mut front, n)?;
    server
        .join()
        .map_err(|_| "the sink panicked".to_string())??;
    rec.throughput(Throughput::default().with_gbit_s(n * 1500, dt));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floors_complete_and_measure_each_iteration() {
        for grants in [false, true] {
            let mut rec = Recorder::new();
            pingpong(64, grants, 300, 20, &mut rec).unwrap();
            assert_eq!(rec.count(), 300, "grants {grants}");
        }
        let mut rec = Recorder::new();
        stream_frames(5000, &mut rec).unwrap();
        let t = rec.rates().expect("the stream records a throughput");
        assert!(t.gbit_s.is_some_and(|g| g > 0.0));
    }

    #[test]
    fn a_pinned_grant_blocks_nothing_and_is_released_after_each_copy() {
        let sh = Shared::new(true);
        let t = sh.grants.as_ref().unwrap();
        let frame = sh
            .granted(SLOTS + 3, Access::ReadWrite, |p| {
                // Pinned for writing while the copy runs.
                assert_eq!(t.pin_counts(SLOTS + 3).pins, 1);
                Ok(p)
            })
            .unwrap();
        assert_eq!(frame, 3);
        assert_eq!(t.pin_counts(SLOTS + 3).pins, 0);
        // A TX page is granted read-only: a writable copy is refused.
        assert!(sh.granted(3, Access::ReadWrite, Ok).is_err());
    }
}
