//! Lab scenario `blk`: `blkfront` against Linux's xen-blkback in dom0.
//!
//! Disk `xvda` (`device/vbd/51712`, read-write, a loop device in dom0):
//!
//! 1. connect with two queues (dom0 loads blkback with `max_queues=2`),
//!    16-page rings and persistent grants; print what blkback advertised
//!    (its directory's feature keys) and what this connection negotiated;
//! 2. write a pattern over the whole disk with I/Os of mixed sizes (512 B
//!    to 1 MiB, some starting inside a page, so both direct and indirect
//!    requests go on the ring), several in flight at once;
//! 3. flush; read the whole disk back with another mix of sizes and check
//!    every 512-byte sector;
//! 4. discard a range and read it back: zeroes where dom0 says its backing
//!    store zeroes discarded ranges (blkif has no key for that, so the
//!    scenario script tells, in `data/blk-discard-zeroes`), the sectors
//!    around it untouched;
//! 5. rewrite the whole disk with a second pattern while dom0 unbinds
//!    blkback from the device and binds it again (`data/blk-rebind`:
//!    `unbound`, then `rebound`); every write must complete, then the
//!    whole disk is read back and checked.
//!
//! Disk `xvdb` (`device/vbd/51728`, attached read-only), with the other
//! settings: no persistent grants, a one-page ring. It connects, says
//! read-only in `info`, refuses a write and a flush before anything
//! reaches the ring, reads back the pattern dom0 filled it with into the
//! guest's own pages (granted for each request, the grants ended when it
//! completes), and closes.
//!
//! # What the rebind shows
//! Linux 6.1's blkback leaves the backend's state at Connected when it is
//! unbound; bound again, a new instance writes InitWait and, finding the
//! frontend Connected, re-attaches to the rings the frontend published, at
//! their current indices (Linux's own frontends ignore InitWait once
//! connected, which is what makes this work for them). The xenbus
//! handshake used here instead ends the connection when a connected
//! backend goes back to InitWait, writes Closed and reconnects. Which side
//! moves first decides the path: blkback sees Closed and prepares for a
//! reconnect, or it tries to map the old ring after its grants were ended,
//! fails ("mapping in shared page"), goes Closing, and the frontend
//! reconnects once more. Either way every write in flight is re-issued on
//! the new connection and lands (checked here and by dom0), but the second
//! path costs a failed connection and a kernel warning in dom0.
//!
//! The verdict goes to `data/blk-result` (`ok <figures>` or
//! `fail <reason>`); the scenario script checks it.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

use blkfront::{
    Blkfront, BlockingError, Buffer, DeviceConfig, DeviceEvent, IoError, Negotiated, Refusal, Span,
    Tag,
};
use grant_tables::PageAllocator;
use lwdom::lab_proto::{blk_describe, blk_sector, BLK_SECTOR};
use lwdom::println;
use lwdom::rt::platform::Lw;
use xenbus::{Transport, Xenstore};

use lwdom::rt::report::ms_since;

lwdom::program!(main);

/// The read-write disk (xvda).
const VBD_RW: &str = "device/vbd/51712";
/// The read-only disk (xvdb).
const VBD_RO: &str = "device/vbd/51728";
/// The guest's verdict.
const RESULT_KEY: &str = "data/blk-result";
/// Where the guest is (`rewrite` tells dom0 to start the rebind).
const STAGE_KEY: &str = "data/blk-stage";
/// Written by dom0: `unbound`, then `rebound` (or `failed <why>`).
const REBIND_KEY: &str = "data/blk-rebind";
/// Written by dom0: `1` when its backing store reads discarded ranges as
/// zeroes.
const DISCARD_ZEROES_KEY: &str = "data/blk-discard-zeroes";
/// What dom0 fills the read-only disk with, over and over (`yes`'s line).
const RO_LINE: &[u8; 16] = b"lwdom-ro-disk-0\n";

const SECTOR: usize = 512;
const PAGE: usize = 4096;
const MIB: u64 = 1 << 20;
const SEC: Duration = Duration::from_secs(1);

/// I/O sizes of the write passes, in bytes: 512 B to 1 MiB, across the
/// 11-segment limit of a direct request.
const WRITE_SIZES: &[usize] = &[
    4096,
    512,
    1 << 20,
    65536,
    1536,
    262_144,
    45056, // 11 pages: the most a direct request carries
    49152, // 12 pages: indirect
    8192,
    524_288,
    3584,
    131_072,
    1 << 20,
    20480,
    2048,
    786_432,
];
/// I/O sizes of the read passes (other boundaries than the writes').
const READ_SIZES: &[usize] = &[
    1 << 20,
    7680,
    393_216,
    512,
    98304,
    1 << 20,
    4096,
    57344,
    2560,
    655_360,
];

/// Stops the scenario with a message.
type R<T> = Result<T, String>;

fn main() -> Result<(), String> {
    lwdom::rt::report::log_to_console();
    let r = lwdom::rt::with_xenstore(run);
    lwdom::rt::report::verdict("blk", RESULT_KEY, r)
}

fn now() -> u64 {
    lwdom::rt::time::now_ns()
}

/// Sector `sector` of pass `pass` into `out` (512 bytes).
fn fill_sector(out: &mut [u8], sector: u64, pass: u64) -> R<()> {
    let out: &mut [u8; BLK_SECTOR] = out
        .try_into()
        .map_err(|_| "a sector buffer is not 512 bytes".to_string())?;
    blk_sector(out, sector, pass);
    Ok(())
}

/// What one sector range should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The pattern of this pass.
    Pass(u64),
    /// Zeroes.
    Zero,
    /// Anything (read, not checked).
    Any,
}

/// Counters of one pass.
#[derive(Clone, Copy, Debug, Default)]
struct PassStats {
    ios: u64,
    bytes: u64,
    sectors_checked: u64,
    max_latency_ns: u64,
    reissued_ios: u64,
}

/// One I/O of a pass, as the guest tracks it.
struct Pending {
    sector: u64,
    sectors: u64,
    expect: Expect,
}

/// What a pass does next, as its hooks say.
struct Step {
    /// Submit nothing at or beyond this sector for now.
    limit: u64,
    /// Go back to this sector (write the same data there again).
    rewind: Option<u64>,
}

/// What happens between waits of a pass (the rebind pass watches dom0).
trait Hooks<T: Transport> {
    /// Called before every round of submissions; may hold the pass back
    /// or rewind it, and fail it.
    fn tick(&mut self, xs: &mut Xenstore<T>, pending: usize, next_sector: u64) -> R<Step>;
}

struct NoHooks;
impl<T: Transport> Hooks<T> for NoHooks {
    fn tick(&mut self, _: &mut Xenstore<T>, _: usize, _: u64) -> R<Step> {
        Ok(Step {
            limit: u64::MAX,
            rewind: None,
        })
    }
}

/// The read-write disk and the pool buffers the guest owns.
struct Disk {
    dev: Blkfront<Lw>,
    /// Free pool buffers, per device queue.
    free: Vec<Vec<Buffer<Lw>>>,
    sectors: u64,
    events: Vec<String>,
    disconnections: u64,
}

impl Disk {
    /// Runs one pass over `[start, end)` (512-byte sectors): writes of
    /// pattern `pass` (`write`), or reads checked against `expect`. I/O
    /// sizes cycle through `sizes` from `first`; up to `depth` I/Os are in
    /// flight.
    #[allow(clippy::too_many_arguments)]
    fn pass<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        write: bool,
        start: u64,
        end: u64,
        expect: Expect,
        sizes: &[usize],
        first: usize,
        depth: usize,
        deadline: Duration,
        hooks: &mut dyn Hooks<T>,
    ) -> R<PassStats> {
        let what = if write { "write" } else { "read" };
        let t0 = now();
        let until = t0.saturating_add(deadline.as_nanos() as u64);
        let mut st = PassStats::default();
        let mut inflight: BTreeMap<Tag, Pending> = BTreeMap::new();
        let mut next = start;
        let mut k = first;
        let mut page = [0u8; PAGE];
        loop {
            let step = hooks.tick(xs, inflight.len(), next)?;
            if let Some(r) = step.rewind {
                next = r.max(start);
            }
            let limit = step.limit.min(end);
            // Submit while buffers and depth allow.
            while next < limit && inflight.len() < depth {
                let size = sizes[k % sizes.len()];
                let bytes = size.min(((limit - next) as usize) * SECTOR);
                // Small I/Os start inside a page (first_sect > 0 on the
                // wire); an I/O of 1 MiB needs all 256 segments.
                let offset = if bytes + PAGE <= (1 << 20) {
                    (k * SECTOR) % PAGE
                } else {
                    0
                };
                let pages = (offset + bytes).div_ceil(PAGE);
                // I/Os take turns on the device's queues (one ring each).
                let q = k % self.free.len().max(1);
                let free = self.free.get(q).map_or(0, Vec::len);
                if free < pages {
                    if inflight.is_empty() {
                        return Err(format!(
                            "an I/O of {pages} pages does not fit the {free} free buffers of queue {q}"
                        ));
                    }
                    break;
                }
                k += 1;
                let sectors = (bytes / SECTOR) as u64;
                let mut spans = Vec::with_capacity(pages);
                let mut left = bytes;
                let mut s = next;
                for p in 0..pages {
                    let mut buf = self.free[q].pop().ok_or("out of pool buffers")?;
                    let off = if p == 0 { offset } else { 0 };
                    let len = left.min(PAGE - off);
                    if write {
                        for c in 0..len / SECTOR {
                            fill_sector(
                                &mut page[c * SECTOR..(c + 1) * SECTOR],
                                s + c as u64,
                                match expect {
                                    Expect::Pass(p) => p,
                                    _ => 0,
                                },
                            )?;
                        }
                        buf.write_at(off, &page[..len]).map_err(|e| e.to_string())?;
                    }
                    s += (len / SECTOR) as u64;
                    left -= len;
                    spans.push(Span::new(buf, off, len));
                }
                let r = if write {
                    self.dev.write(q, next, spans)
                } else {
                    self.dev.read(q, next, spans)
                };
                match r {
                    Ok(tag) => {
                        inflight.insert(
                            tag,
                            Pending {
                                sector: next,
                                sectors,
                                expect,
                            },
                        );
                    }
                    Err(refused) => {
                        let msg = refused.to_string();
                        self.give_back(q, refused.io.into_spans());
                        return Err(format!(
                            "{what} of {bytes} bytes at sector {next} refused: {msg}"
                        ));
                    }
                }
                next += sectors;
            }
            if next >= end && inflight.is_empty() {
                break;
            }
            if now() > until {
                return Err(format!(
                    "{what} pass over sectors {start}..{end} did not finish within {} s: {} I/O(s) in flight, next sector {next}, device: {}",
                    deadline.as_secs(),
                    inflight.len(),
                    self.state()
                ));
            }
            self.dev
                .wait(xs, Some(Duration::from_millis(50)))
                .map_err(|e| format!("{what} pass: {e}"))?;
            self.take_events()?;
            while let Some(c) = self.dev.next_completion() {
                let Some(p) = inflight.remove(&c.tag) else {
                    return Err(format!(
                        "a completion for I/O {} that this pass did not submit",
                        c.tag
                    ));
                };
                let q = c.queue;
                let latency = c.latency_ns;
                let reissued = c.reissued;
                let result = c.result.clone();
                let spans = c.io.into_spans();
                if let Err(e) = result {
                    self.give_back(q, spans);
                    return Err(format!(
                        "{what} of {} sectors at sector {} failed: {e}",
                        p.sectors, p.sector
                    ));
                }
                st.ios += 1;
                st.bytes += p.sectors * SECTOR as u64;
                st.max_latency_ns = st.max_latency_ns.max(latency);
                if reissued > 0 {
                    st.reissued_ios += 1;
                }
                if !write {
                    let checked = check_read(&spans, &p);
                    match checked {
                        Ok(n) => st.sectors_checked += n,
                        Err(e) => {
                            self.give_back(q, spans);
                            return Err(e);
                        }
                    }
                }
                self.give_back(q, spans);
            }
        }
        let ms = ms_since(t0).max(1);
        println!(
            "blk: {what} pass over {} MiB ({} sectors from {start}): {} I/Os, {} bytes, {} sectors checked, {} ms ({} KiB/s), longest I/O {} ms",
            (end - start) * SECTOR as u64 / MIB,
            end - start,
            st.ios,
            st.bytes,
            st.sectors_checked,
            ms,
            st.bytes * 1000 / 1024 / ms,
            st.max_latency_ns / 1_000_000
        );
        Ok(st)
    }

    fn give_back(&mut self, queue: usize, spans: Vec<Span<Lw>>) {
        if let Some(free) = self.free.get_mut(queue) {
            free.extend(spans.into_iter().map(|s| s.buffer));
        }
    }

    /// Logs the device's events; a broken device fails the scenario.
    fn take_events(&mut self) -> R<()> {
        while let Some(ev) = self.dev.next_event() {
            let line = match &ev {
                DeviceEvent::Connected { connection, disk } => {
                    format!("connected (connection {connection}): {}", negotiated(disk))
                }
                DeviceEvent::Disconnected {
                    connection,
                    loss,
                    reissue,
                } => {
                    self.disconnections += 1;
                    format!("disconnected (connection {connection}, {loss}); {reissue} I/O(s) to re-issue")
                }
                DeviceEvent::Resized { old, new } => format!("resized from {old} to {new} sectors"),
                DeviceEvent::FeatureLost(f) => format!("feature lost: {f:?}"),
                DeviceEvent::Broken(e) => return Err(format!("the device broke: {e}")),
                DeviceEvent::Closed => "closed".to_string(),
                DeviceEvent::Removed => return Err("the device was removed".into()),
            };
            println!("blk: event: {line}");
            self.events.push(line);
        }
        Ok(())
    }

    fn state(&self) -> String {
        let s = self.dev.stats();
        format!(
            "phase {:?}, connected {}, pending {}, {} requests ({} indirect), {} responses, {} connections, {} re-issues",
            self.dev.phase(),
            self.dev.is_connected(),
            self.dev.pending(),
            s.requests,
            s.indirect_requests,
            s.responses,
            s.connections,
            s.reissued
        )
    }
}

/// Checks what a read brought: every sector as expected.
fn check_read(spans: &[Span<Lw>], p: &Pending) -> R<u64> {
    let mut got = [0u8; PAGE];
    let mut want = [0u8; SECTOR];
    let mut sector = p.sector;
    for span in spans {
        let data = &mut got[..span.len];
        span.buffer
            .read_at(span.offset, data)
            .map_err(|e| e.to_string())?;
        for c in data.chunks_exact(SECTOR) {
            match p.expect {
                Expect::Pass(pass) => {
                    fill_sector(&mut want, sector, pass)?;
                    if c != want {
                        return Err(format!(
                            "sector {sector} does not hold pass {pass}'s pattern: it holds {}",
                            blk_describe(c)
                        ));
                    }
                }
                Expect::Zero => {
                    if c.iter().any(|&b| b != 0) {
                        return Err(format!(
                            "discarded sector {sector} does not read as zeroes: it holds {}",
                            blk_describe(c)
                        ));
                    }
                }
                Expect::Any => {}
            }
            sector += 1;
        }
    }
    if sector != p.sector + p.sectors {
        return Err(format!(
            "a read of {} sectors at {} came back with {} sectors of spans",
            p.sectors,
            p.sector,
            sector - p.sector
        ));
    }
    Ok(if p.expect == Expect::Any {
        0
    } else {
        p.sectors
    })
}

fn negotiated(d: &Negotiated) -> String {
    format!(
        "{} sectors ({} MiB), sector-size {}, physical {}, info {:#x}, flush {}, barrier {}, discard {}, persistent grants {}, {} segments per request ({}), {} queue(s) of {}-page rings ({} slots)",
        d.sectors,
        d.sectors * SECTOR as u64 / MIB,
        d.sector_size,
        d.physical_sector_size,
        d.info.bits(),
        d.flush_cache,
        d.barrier,
        match d.discard {
            Some(x) => format!("granularity {} alignment {} secure {}", x.granularity, x.alignment, x.secure),
            None => "no".into(),
        },
        d.persistent,
        d.max_segments,
        if d.indirect() { "indirect" } else { "direct only" },
        d.queues,
        1u32 << d.ring_page_order,
        d.ring_size()
    )
}

/// The backend directory's keys that say what blkback offers.
fn advertised<T: Transport>(xs: &mut Xenstore<T>, frontend: &str) -> R<String> {
    let backend = xs
        .read_string(&format!("{frontend}/backend"))
        .map_err(|e| format!("reading {frontend}/backend: {e}"))?;
    let mut out = Vec::new();
    for key in [
        "feature-max-indirect-segments",
        "max-ring-page-order",
        "multi-queue-max-queues",
        "feature-persistent",
        "feature-flush-cache",
        "feature-barrier",
        "feature-discard",
        "discard-granularity",
        "discard-alignment",
        "discard-secure",
        "sectors",
        "sector-size",
        "physical-sector-size",
        "info",
        "mode",
    ] {
        match xs.try_read(&format!("{backend}/{key}")) {
            Ok(Some(v)) => out.push(format!("{key}={}", String::from_utf8_lossy(&v))),
            Ok(None) => out.push(format!("{key}=(absent)")),
            Err(e) => return Err(format!("reading {backend}/{key}: {e}")),
        }
    }
    Ok(format!("{backend}: {}", out.join(" ")))
}

/// The device configuration of the lab: the defaults, with handshake steps
/// and requests allowed 120 s (under emulation blkback takes seconds to
/// set up a 16-page ring: it allocates its requests' segment arrays one by
/// one; the default 10 s step ran out in the lab, and the frontend then
/// revoked the ring's grants under blkback's feet).
fn config(frontend: &str, pool_pages: usize, queues: u32) -> DeviceConfig {
    let mut cfg = DeviceConfig::new(frontend);
    cfg.pool_pages = pool_pages;
    cfg.features.queues = queues;
    cfg.handshake.step_timeout = 120 * SEC;
    cfg.handshake.reconnect_timeout = 120 * SEC;
    cfg.request_timeout = 120 * SEC;
    cfg
}

fn run<T: Transport>(xs: &mut Xenstore<T>) -> R<String> {
    let t_all = now();
    let lw = Arc::new(Lw);
    // Two queues (the scenario loads blkback with max_queues=2): 2 rings of
    // 16 pages, a pool of persistent grants each, large enough for an I/O
    // of 1 MiB (256 pages).
    let cfg = config(VBD_RW, 288, 2);
    let dev = Blkfront::new(lw.clone(), cfg).map_err(|e| e.to_string())?;
    let mut disk = Disk {
        dev,
        free: Vec::new(),
        sectors: 0,
        events: Vec::new(),
        disconnections: 0,
    };
    let t = now();
    let neg = disk
        .dev
        .wait_connected(xs, Some(180 * SEC))
        .map_err(|e| format!("connecting {VBD_RW}: {e}"))?;
    let Some(neg) = neg else {
        return Err(format!(
            "{VBD_RW} did not connect within 180 s ({})",
            disk.state()
        ));
    };
    disk.take_events()?;
    println!("blk: {VBD_RW} connected in {} ms", ms_since(t));
    println!("blk: blkback advertises {}", advertised(xs, VBD_RW)?);
    println!("blk: negotiated {}", negotiated(&neg));
    if neg.read_only() {
        return Err(format!(
            "{VBD_RW} is attached read-write but info says read-only ({:#x})",
            neg.info.bits()
        ));
    }
    if !neg.indirect() {
        return Err("blkback offers no indirect segments: the scenario needs them".into());
    }
    if neg.queues != 2 {
        return Err(format!(
            "{} queue(s) negotiated; the scenario loads blkback with max_queues=2 and asks for 2",
            neg.queues
        ));
    }
    if neg.sectors * (SECTOR as u64) < 64 * MIB {
        return Err(format!(
            "the disk has {} sectors, less than the 64 MiB the scenario needs",
            neg.sectors
        ));
    }
    disk.sectors = neg.sectors;
    // Keep a few buffers for the driver (bouncing); the rest are ours.
    for q in 0..disk.dev.queues() {
        let mut free = Vec::new();
        while disk.dev.pool(q).is_some_and(|p| p.available() > 8) {
            match disk.dev.buffer(q) {
                Some(b) => free.push(b),
                None => break,
            }
        }
        disk.free.push(free);
    }
    println!(
        "blk: {} device queue(s) on {} ring(s), {} pool buffers of 4 KiB for the scenario; heap used {} KiB",
        disk.dev.queues(),
        disk.dev.rings(),
        disk.free.iter().map(Vec::len).sum::<usize>(),
        lwdom::rt::heap::used().unwrap_or(0) / 1024
    );
    let n = disk.sectors;
    let depth = 8;
    let pass_time = Duration::from_secs(300);

    // 1. The pattern over the whole disk, then a flush.
    let w1 = disk.pass(
        xs,
        true,
        0,
        n,
        Expect::Pass(1),
        WRITE_SIZES,
        0,
        depth,
        pass_time,
        &mut NoHooks,
    )?;
    let s0 = disk.dev.stats();
    println!(
        "blk: after the first write pass: {} requests on the ring, {} of them indirect; heap used {} KiB",
        s0.requests,
        s0.indirect_requests,
        lwdom::rt::heap::used().unwrap_or(0) / 1024
    );
    if s0.indirect_requests == 0 {
        return Err("no indirect request was used by the write pass".into());
    }
    let t = now();
    match disk.dev.flush_blocking(xs, 0, Some(30 * SEC)) {
        Ok(()) => println!("blk: flush done in {} ms", ms_since(t)),
        Err(e) => return Err(format!("flush: {e}")),
    }
    // 2. Every sector back.
    let r1 = disk.pass(
        xs,
        false,
        0,
        n,
        Expect::Pass(1),
        READ_SIZES,
        0,
        depth,
        pass_time,
        &mut NoHooks,
    )?;
    if r1.sectors_checked != n {
        return Err(format!(
            "the read pass checked {} sectors of {n}",
            r1.sectors_checked
        ));
    }

    // 3. Discard.
    let discard = discard_check(xs, &mut disk)?;

    // 4. The read-only disk.
    let ro = read_only_check(xs, lw.clone())?;

    // 5. Rewrite while dom0 unbinds and rebinds blkback.
    xs.write(STAGE_KEY, "rewrite")
        .map_err(|e| format!("writing {STAGE_KEY}: {e}"))?;
    println!("blk: rewriting the disk while dom0 unbinds and rebinds the backend");
    let before = disk.dev.stats();
    let mut rb = Rebind {
        seen_unbound: None,
        seen_rebound: false,
        gate: n / 4,
        waited_at_gate: 0,
        rewinds: 0,
        last_check: 0,
    };
    let w2 = disk.pass(
        xs,
        true,
        0,
        n,
        Expect::Pass(2),
        WRITE_SIZES,
        3,
        depth,
        pass_time,
        &mut rb,
    )?;
    // Every write completed; dom0 must have rebound by now (the gate held
    // the pass until it unbound).
    let until = now() + 60 * 1_000_000_000;
    while !rb.seen_rebound {
        if now() > until {
            return Err(
                "dom0 did not report the backend rebound within 60 s of the rewrite's end".into(),
            );
        }
        Hooks::<T>::tick(&mut rb, xs, 0, n)?;
        lwdom::rt::sleep_ns(50_000_000);
    }
    let Some(pending_at_unbind) = rb.seen_unbound else {
        return Err("the rewrite ended without dom0 unbinding the backend".into());
    };
    if pending_at_unbind == 0 {
        return Err("no write was in flight when the guest saw the backend unbound".into());
    }
    let t = now();
    disk.dev
        .flush_blocking(xs, 0, Some(30 * SEC))
        .map_err(|e| format!("flush after the rebind: {e}"))?;
    println!("blk: flush after the rebind done in {} ms", ms_since(t));
    let r2 = disk.pass(
        xs,
        false,
        0,
        n,
        Expect::Pass(2),
        READ_SIZES,
        5,
        depth,
        pass_time,
        &mut NoHooks,
    )?;
    if r2.sectors_checked != n {
        return Err(format!(
            "the read pass after the rebind checked {} sectors of {n}",
            r2.sectors_checked
        ));
    }
    let after = disk.dev.stats();
    let rebind = format!(
        "rebind mid-write: {pending_at_unbind} write(s) in flight when the guest saw blkback unbound ({} rewind(s) at the gate), longest write {} ms, {} connection(s) lost and {} I/O re-issue(s) by the frontend, {} MiB written and the disk verified",
        rb.rewinds,
        w2.max_latency_ns / 1_000_000,
        disk.disconnections,
        after.reissued - before.reissued,
        w2.bytes / MIB
    );
    println!("blk: {rebind}");

    let s = disk.dev.stats();
    let secs = ms_since(t_all) / 1000;
    let summary = format!(
        "{} MiB disk: {} bytes written and verified twice ({} + {} write I/Os, {} + {} read I/Os, 512 B to 1 MiB), {} ring requests ({} indirect), flush; {discard}; {ro}; {rebind}; {} s under TCG",
        n * SECTOR as u64 / MIB,
        w1.bytes,
        w1.ios,
        w2.ios,
        r1.ios,
        r2.ios,
        s.requests,
        s.indirect_requests,
        secs
    );
    Ok(summary)
}

/// Watches dom0's rebind during the rewrite: until dom0 says the backend
/// is unbound, the pass does not go beyond a quarter of the disk; there it
/// goes back 2 MiB and writes the same data again, so that writes are in
/// flight whenever the backend goes.
struct Rebind {
    /// Writes in flight when `unbound` was first seen.
    seen_unbound: Option<usize>,
    seen_rebound: bool,
    gate: u64,
    waited_at_gate: u64,
    rewinds: u64,
    last_check: u64,
}

/// How far the rebind pass goes back at its gate: 2 MiB.
const REWIND: u64 = 4096;

impl<T: Transport> Hooks<T> for Rebind {
    fn tick(&mut self, xs: &mut Xenstore<T>, pending: usize, next: u64) -> R<Step> {
        let t = now();
        if t.saturating_sub(self.last_check) >= 20_000_000 {
            self.last_check = t;
            match xs.try_read(REBIND_KEY) {
                Ok(Some(v)) => {
                    let v = String::from_utf8_lossy(&v).into_owned();
                    if let Some(why) = v.strip_prefix("failed") {
                        return Err(format!("dom0 could not unbind or rebind the backend:{why}"));
                    }
                    if self.seen_unbound.is_none() && (v == "unbound" || v == "rebound") {
                        println!("blk: dom0 says the backend is unbound; {pending} write(s) in flight, the pass at sector {next}");
                        self.seen_unbound = Some(pending);
                    }
                    if !self.seen_rebound && v == "rebound" {
                        println!("blk: dom0 says the backend is bound again; {pending} write(s) in flight, the pass at sector {next}");
                        self.seen_rebound = true;
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(format!("reading {REBIND_KEY}: {e}")),
            }
        }
        if self.seen_unbound.is_some() {
            return Ok(Step {
                limit: u64::MAX,
                rewind: None,
            });
        }
        let mut rewind = None;
        if next >= self.gate {
            if self.waited_at_gate == 0 {
                self.waited_at_gate = t;
            } else if t.saturating_sub(self.waited_at_gate) > 120_000_000_000 {
                return Err(
                    "dom0 did not unbind the backend within 120 s of the rewrite reaching its gate"
                        .into(),
                );
            }
            self.rewinds += 1;
            rewind = Some(self.gate.saturating_sub(REWIND));
        }
        Ok(Step {
            limit: self.gate,
            rewind,
        })
    }
}

/// Discards a range and reads it back.
fn discard_check<T: Transport>(xs: &mut Xenstore<T>, disk: &mut Disk) -> R<String> {
    let Some(neg) = disk.dev.negotiated().copied() else {
        return Err("no negotiated disk".into());
    };
    let Some(d) = neg.discard else {
        let why = "discard skipped: blkback does not offer feature-discard for this device";
        println!("blk: {why}");
        return Ok(why.into());
    };
    // 4 MiB from 8 MiB, cut to whole discard extents.
    let Some((start, count)) = d.whole_extents(8 * MIB / SECTOR as u64, 4 * MIB / SECTOR as u64)
    else {
        return Err(format!(
            "no whole discard extent in 4 MiB (granularity {}, alignment {})",
            d.granularity, d.alignment
        ));
    };
    let t = now();
    let tag = disk
        .dev
        .discard(0, start, count, false)
        .map_err(|e| format!("discard refused: {e}"))?;
    match disk.dev.wait_for(xs, tag, Some(30 * SEC)) {
        Ok(c) => {
            if let Err(e) = c.result {
                return Err(format!("discard of {count} sectors at {start} failed: {e}"));
            }
        }
        Err(e) => return Err(format!("discard: {e}")),
    }
    println!(
        "blk: discarded {count} sectors at sector {start} in {} ms",
        ms_since(t)
    );
    let zeroes = match xs.try_read(DISCARD_ZEROES_KEY) {
        Ok(Some(v)) => v == b"1",
        Ok(None) => false,
        Err(e) => return Err(format!("reading {DISCARD_ZEROES_KEY}: {e}")),
    };
    let around = 64u64;
    let t = Duration::from_secs(60);
    // The sectors just before and after keep the pattern.
    disk.pass(
        xs,
        false,
        start - around,
        start,
        Expect::Pass(1),
        READ_SIZES,
        1,
        8,
        t,
        &mut NoHooks,
    )?;
    disk.pass(
        xs,
        false,
        start + count,
        start + count + around,
        Expect::Pass(1),
        READ_SIZES,
        1,
        8,
        t,
        &mut NoHooks,
    )?;
    if zeroes {
        disk.pass(
            xs,
            false,
            start,
            start + count,
            Expect::Zero,
            READ_SIZES,
            2,
            8,
            t,
            &mut NoHooks,
        )?;
        Ok(format!(
            "discard of {} KiB read back as zeroes, neighbours intact",
            count * SECTOR as u64 / 1024
        ))
    } else {
        disk.pass(
            xs,
            false,
            start,
            start + count,
            Expect::Any,
            READ_SIZES,
            2,
            8,
            t,
            &mut NoHooks,
        )?;
        let why = format!(
            "discard of {} KiB done, zeroes not checked: blkif has no key saying a discarded range reads as zeroes, and dom0 did not say its store does ({DISCARD_ZEROES_KEY})",
            count * SECTOR as u64 / 1024
        );
        println!("blk: {why}");
        Ok(why)
    }
}

/// The read-only disk: read-only in `info`, writes and flushes refused
/// before the ring, reads of dom0's pattern.
fn read_only_check<T: Transport>(xs: &mut Xenstore<T>, lw: Arc<Lw>) -> R<String> {
    // The other settings: no persistent grants (the guest's own pages are
    // granted for each request), a one-page ring (`ring-page-order` 0 with
    // `ring-ref0`, as blkback requires once it offers the key).
    let mut cfg = config(VBD_RO, 8, 1);
    cfg.features.persistent = false;
    cfg.features.max_ring_page_order = 0;
    cfg.indirect_pool_pages = 8;
    let mut dev = Blkfront::new(lw.clone(), cfg).map_err(|e| e.to_string())?;
    let neg = dev
        .wait_connected(xs, Some(180 * SEC))
        .map_err(|e| format!("connecting {VBD_RO}: {e}"))?;
    let Some(neg) = neg else {
        return Err(format!("{VBD_RO} did not connect within 180 s"));
    };
    println!(
        "blk: read-only disk: blkback advertises {}",
        advertised(xs, VBD_RO)?
    );
    println!("blk: read-only disk: negotiated {}", negotiated(&neg));
    let mut keys = Vec::new();
    for key in [
        "ring-page-order",
        "ring-ref0",
        "ring-ref",
        "event-channel",
        "feature-persistent",
        "protocol",
    ] {
        match xs.try_read(&format!("{VBD_RO}/{key}")) {
            Ok(Some(v)) => keys.push(format!("{key}={}", String::from_utf8_lossy(&v))),
            Ok(None) => keys.push(format!("{key}=(absent)")),
            Err(e) => return Err(format!("reading {VBD_RO}/{key}: {e}")),
        }
    }
    println!("blk: read-only disk: the frontend wrote {}", keys.join(" "));
    if neg.persistent || neg.ring_page_order != 0 {
        return Err(format!(
            "{VBD_RO} negotiated persistent grants {} and ring order {}, asked for none and 0",
            neg.persistent, neg.ring_page_order
        ));
    }
    if !neg.read_only() || dev.read_only() != Some(true) {
        return Err(format!(
            "{VBD_RO} is attached read-only but info is {:#x}",
            neg.info.bits()
        ));
    }
    let requests_before = dev.stats().requests;
    let buf = dev
        .buffer(0)
        .ok_or("no pool buffer on the read-only disk")?;
    let refusal = match dev.write(0, 0, alloc::vec![Span::whole(buf)]) {
        Ok(tag) => {
            return Err(format!(
                "a write to the read-only disk was accepted (I/O {tag})"
            ))
        }
        Err(r) => {
            if !matches!(r.error, Refusal::Io(IoError::ReadOnly { .. })) {
                return Err(format!(
                    "a write to the read-only disk was refused for another reason: {r}"
                ));
            }
            r.to_string()
        }
    };
    println!("blk: read-only disk: write refused: {refusal}");
    match dev.flush(0) {
        Ok(tag) => {
            return Err(format!(
                "a flush on the read-only disk was accepted (I/O {tag})"
            ))
        }
        Err(r) => println!("blk: read-only disk: flush refused: {r}"),
    }
    dev.poll(xs).map_err(|e| e.to_string())?;
    if dev.stats().requests != requests_before {
        return Err("a refused I/O reached the ring of the read-only disk".into());
    }
    // Read it all back into the guest's own pages (granted for each
    // request and ended when it completes): dom0 filled the disk with
    // RO_LINE. Each read starts at another sector of the first page.
    let sectors = neg.sectors;
    let mut sector = 0;
    let mut checked = 0u64;
    let mut ios = 0u64;
    let own_pages = 17;
    let pages = lw
        .alloc_zeroed_pages(own_pages)
        .map_err(|e| format!("allocating {own_pages} pages for the reads: {e}"))?;
    let mut buffer = Some(Buffer::from_pages(pages));
    let mut data = alloc::vec![0u8; own_pages * PAGE];
    while sector < sectors {
        let offset = (ios as usize % 8) * SECTOR;
        let count = ((16 * PAGE / SECTOR) as u64).min(sectors - sector);
        let len = count as usize * SECTOR;
        let buf = buffer.take().ok_or("the read buffer was lost")?;
        let spans = alloc::vec![Span::new(buf, offset, len)];
        let mut spans = match dev.read_blocking(xs, 0, sector, spans, Some(30 * SEC)) {
            Ok(s) => s,
            Err(BlockingError::Failed(c)) => {
                return Err(format!(
                    "reading the read-only disk at {sector}: {:?}",
                    c.result
                ))
            }
            Err(e) => return Err(format!("reading the read-only disk at {sector}: {e}")),
        };
        // The span comes back unless blkback still mapped the pages when
        // the read completed (they would stay in quarantine).
        let span = spans.pop().ok_or_else(|| {
            format!(
                "blkback still mapped the guest's pages when the read at sector {sector} completed"
            )
        })?;
        let got = &mut data[..len];
        span.buffer
            .read_at(offset, got)
            .map_err(|e| e.to_string())?;
        for (i, b) in got.iter().enumerate() {
            let at = sector * SECTOR as u64 + i as u64;
            if *b != RO_LINE[(at % RO_LINE.len() as u64) as usize] {
                return Err(format!(
                    "the read-only disk's byte {at} is {b:#x}, not dom0's pattern"
                ));
            }
        }
        buffer = Some(span.buffer);
        checked += count;
        sector += count;
        ios += 1;
    }
    let stats = dev.stats();
    // An orderly close: blkback follows to Closed.
    dev.close(xs)
        .map_err(|e| format!("closing {VBD_RO}: {e}"))?;
    let until = now() + 30 * 1_000_000_000;
    let mut closed = false;
    while !closed && now() < until {
        dev.wait(xs, Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        while let Some(ev) = dev.next_event() {
            if ev == DeviceEvent::Closed {
                closed = true;
            }
        }
    }
    if !closed {
        return Err(format!(
            "{VBD_RO} did not close within 30 s (phase {:?})",
            dev.phase()
        ));
    }
    Ok(format!(
        "read-only disk: info {:#x}, write and flush refused before the ring, {} KiB read back as dom0 wrote it into the guest's own pages ({ios} reads, {} requests, no persistent grants, 1-page ring), closed",
        neg.info.bits(),
        checked * SECTOR as u64 / 1024,
        stats.requests
    ))
}
