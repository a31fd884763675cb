//! One queue of a connection: its ring, its event channel, its io_uring
//! and its persistent grants, served by one worker thread.
//!
//! The worker loops: it reaps io_uring completions into responses, pushes
//! them and notifies the frontend when [`BackRing::push_responses`] says
//! to, takes requests off the ring (each copied out once, then checked by
//! [`super::parse`]), maps their grants and queues their I/O straight into
//! the mapped pages (zero copy), handing the entries to the kernel as they
//! are queued, [`super::BlkbackConfig::submit_batch`] per `io_uring_enter`
//! (a larger call is plugged: the disk sees none of it until it returns),
//! and counts what it did ([`super::Activity`]). When there is
//! nothing to do it spins ([`WaitMode::Poll`]) or, in event mode, spins a
//! while, then sleeps, after `RING_FINAL_CHECK_FOR_REQUESTS`, in one
//! `io_uring_enter` that a completion or the frontend's notification ends
//! (the io_uring polls the event channel's eventfd:
//! [`super::BlkbackConfig::uring_wakeups`]; with it off, on the event
//! channel when no I/O is in flight and on the io_uring otherwise). The
//! spin is governed as blkfront's adaptive waits are
//! ([`blkfront::SpinGovernor`]): a worker seen losing its core while it
//! spins (a busy machine, where spinning costs whole time slices), or
//! whose spins keep catching nothing, sleeps at once for a while instead;
//! in [`WaitMode::Spin`] every idle stretch spins its whole budget. A
//! queue can pin its worker to a core ([`super::BlkbackConfig::pin_cpu`])
//! and record each request's timestamps ([`super::trace`]).
//!
//! Grants: with persistent grants every page (data or indirect) is looked
//! up by ref in this queue's cache and mapped read-write the first time,
//! kept until the connection ends (at most
//! [`BlkbackConfig::max_persistent_grants`] per queue; beyond, pages are
//! mapped for the request only). Without them, a request's pages are
//! mapped in one batch (read-only for a write: the disk only reads them)
//! and unmapped when its I/O completes; indirect pages are mapped
//! read-only, copied out and unmapped at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blkfront::abi::{
    op, status, BlkifRequest, BlkifRequestSegment, BlkifResponse, SEGMENTS_PER_INDIRECT_PAGE,
};
use blkfront::SpinGovernor;
use grant_tables::abi::{GrantRefNum, PAGE_SIZE, SRING_HEADER_SIZE};
use grant_tables::foreign::{ForeignGrants, MapOp};
use grant_tables::{Access, BackRing, DomId, EventChannels, Port, RingError};
use io_uring::{opcode, squeue, types, IoUring};
use zerocopy::FromBytes;

use super::parse::{self, Disk as Limits, Pending, Reject, RejectReason, Rw, RwKind};
use super::trace::{BackSteps, StepTrace};
use super::{Control, Hostile, Shared, WaitMode};
use crate::evtchn::ExternalWait;
use crate::{HostedPlatform, MappedGrant, MappedRing};

/// The ring of one queue, as blkback sees it.
pub(crate) type BlkBackRing = BackRing<BlkifRequest, BlkifResponse, MappedRing>;

/// What a queue's worker is given.
pub(crate) struct QueueSetup {
    pub index: u32,
    pub ring: BlkBackRing,
    pub port: Port,
    pub frontend: DomId,
    pub persistent: bool,
}

/// What a worker leaves when it ends: the mappings, dropped by the caller
/// (or kept, in the hostile mode that keeps grants mapped).
pub(crate) struct Leftovers {
    /// Held only to keep the ring mapped (or to unmap it when dropped).
    pub _ring: BlkBackRing,
    pub grants: Vec<MappedGrant>,
}

/// Bounce buffers per queue ([`BlkbackConfig::bounce_min_segments`]).
///
/// [`BlkbackConfig::bounce_min_segments`]: super::BlkbackConfig::bounce_min_segments
const BOUNCE_BUFFERS: usize = 8;

/// Bytes in each bounce buffer: the largest request that goes through one.
const BOUNCE_BYTES: usize = 1 << 20;

/// A queue's bounce buffers: one anonymous mapping (huge pages asked
/// for), cut into [`BOUNCE_BYTES`] buffers registered with the io_uring
/// as its fixed buffers `0..BOUNCE_BUFFERS`.
struct Bounce {
    base: *mut u8,
    len: usize,
    free: Vec<u16>,
}

impl Bounce {
    fn new() -> std::io::Result<Bounce> {
        let len = BOUNCE_BUFFERS * BOUNCE_BYTES;
        // SAFETY: a new private anonymous mapping (no file, no fixed
        // address); the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = p.cast::<u8>();
        // SAFETY: `base..base + len` is the mapping just made, readable
        // and writable, and nothing else refers to it yet. Huge pages are
        // only advice (an error leaves small pages); the zeroes fault the
        // pages in before the io_uring pins them.
        unsafe {
            libc::madvise(p, len, libc::MADV_HUGEPAGE);
            std::ptr::write_bytes(base, 0, len);
        }
        Ok(Bounce {
            base,
            len,
            free: (0..BOUNCE_BUFFERS as u16).rev().collect(),
        })
    }

    fn iovecs(&self) -> Vec<libc::iovec> {
        (0..BOUNCE_BUFFERS)
            .map(|k| libc::iovec {
                iov_base: self.ptr(k as u16).cast(),
                iov_len: BOUNCE_BYTES,
            })
            .collect()
    }

    fn ptr(&self, k: u16) -> *mut u8 {
        self.base.wrapping_add(usize::from(k) * BOUNCE_BYTES)
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the io_uring
        // that had it registered is dropped first (it is declared before
        // the bounce buffers in `Worker`), and no I/O into it is in flight
        // (`finish` forgets the buffers instead when some may be).
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// Copies between bounce buffer `buf` and a request's segments, in order:
/// into the buffer (`to_buf`, a write) or out of it (a read's data).
///
/// # Safety
/// Every iovec points into a mapping that is alive (the request's own
/// mappings or the queue's persistent grants) and lies inside it; `buf`
/// is a bounce buffer at least as long as the segments together.
unsafe fn copy_segments(iov: &[libc::iovec], buf: *mut u8, to_buf: bool) {
    let mut at = 0;
    for v in iov {
        let seg = v.iov_base.cast::<u8>();
        // SAFETY: by the function's contract; the two never overlap (the
        // bounce buffers are the queue's own memory).
        unsafe {
            if to_buf {
                std::ptr::copy_nonoverlapping(seg, buf.add(at), v.iov_len);
            } else {
                std::ptr::copy_nonoverlapping(buf.add(at), seg, v.iov_len);
            }
        }
        at += v.iov_len;
    }
}

/// Stages of a request's I/O, in the low bits of an SQE's user data.
const STAGE_DATA: u64 = 0;
const STAGE_FLUSH: u64 = 1;
const STAGE_DISCARD: u64 = 2;
const STAGE_BITS: u32 = 2;

/// The user data of the io_uring's poll on the event channel's eventfd
/// ([`super::BlkbackConfig::uring_wakeups`]); no request's (a slot index
/// shifted by [`STAGE_BITS`] never has every bit set).
const EVENT_UD: u64 = u64::MAX;

/// A request whose I/O is in flight.
struct Slot {
    id: u64,
    rsp_op: u8,
    status: i16,
    /// Completions still to come.
    cqes: u32,
    /// Bytes the data stage must move.
    bytes: u32,
    /// What failed, if anything.
    reason: Option<RejectReason>,
    /// The data stage's iovecs: they point into mapped pages and stay
    /// here, unmoved, until the I/O completes.
    iov: Vec<libc::iovec>,
    /// Pages mapped for this request only (unmapped at completion).
    maps: Vec<MappedGrant>,
    /// The bounce buffer the data goes through, and whether it is a read
    /// (copied out to the segments when it succeeds).
    bounce: Option<(u16, bool)>,
    /// Its timestamps, when the queue is traced.
    steps: Option<BackSteps>,
}

/// One queue's worker.
struct Worker {
    plat: HostedPlatform,
    shared: Arc<Shared>,
    q: u32,
    front: DomId,
    ring: BlkBackRing,
    port: Port,
    uring: IoUring,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    in_flight: usize,
    /// Persistent grants by ref (`None`: not negotiated).
    persistent: Option<HashMap<GrantRefNum, MappedGrant>>,
    /// A barrier waiting for the requests in flight to finish.
    barrier: Option<Rw>,
    /// The ring overflowed (or a hostile mode wrecked it): nothing more is
    /// taken off it until the connection ends.
    halted: bool,
    /// Responses put and not yet pushed.
    unpushed: bool,
    /// Responses were pushed that the frontend asked to be notified of,
    /// and the notification is not sent yet (a push within a pass, which
    /// leaves it to the pass's end: [`super::BlkbackConfig::stream_notify`]).
    notify_owed: bool,
    /// Responses sent (for the hostile modes' `after`).
    answered: u64,
    /// Mappings the hostile mode keeps instead of unmapping.
    kept: Vec<MappedGrant>,
    stop: Arc<AtomicBool>,
    /// How long an idle worker spins before it sleeps (event mode).
    spin: SpinGovernor,
    /// The start of the governor's clock.
    epoch: Instant,
    /// Bounce buffers for large requests (none when off or not set up).
    /// Declared after `uring`, which has them registered: dropped after it.
    bounce: Option<Bounce>,
    /// Per-request timestamps ([`super::BlkbackConfig::trace`]).
    trace: Option<Tracer>,
    /// The event channel's eventfd, polled by the io_uring so that one
    /// sleep ends on a completion or a notification
    /// ([`super::BlkbackConfig::uring_wakeups`]; `None`: off).
    wake: Option<ExternalWait>,
    /// The poll on `wake`'s eventfd is queued or in flight.
    poll_armed: bool,
}

/// A traced worker's state between the steps of its requests.
struct Tracer {
    trace: Arc<StepTrace>,
    /// When the last sleep on the event channel returned (0: none since the
    /// last request was taken).
    woke_ns: u64,
    /// The request being started: when it was taken, and the sleep before.
    taking: Option<(u64, u64)>,
    /// Slots whose I/O was queued and not yet submitted.
    unsubmitted: Vec<u32>,
    /// Requests completed, their responses not yet pushed.
    unpushed: Vec<BackSteps>,
}

/// One idle stretch of a worker: when it began, its last look, its spin
/// budget, and whether the spin is still to be judged (it did not lose
/// its core).
struct IdleSpin {
    start: u64,
    prev: u64,
    budget: u64,
    clean: bool,
}

/// Runs queue `setup` until `stop`, then finishes the I/O in flight,
/// answers it and returns the mappings.
pub(crate) fn run(
    plat: HostedPlatform,
    shared: Arc<Shared>,
    setup: QueueSetup,
    stop: Arc<AtomicBool>,
) -> Leftovers {
    let QueueSetup {
        index,
        ring,
        port,
        frontend,
        persistent,
    } = setup;
    if let Some(cpu) = shared.config.pin_cpu {
        pin_thread(cpu, index);
    }
    let size = ring.size();
    let uring = match make_uring(&shared, size) {
        Ok(u) => u,
        Err(e) => {
            shared.fail(format!(
                "queue {index}: cannot set up io_uring: {e}; the queue serves nothing"
            ));
            // Nothing is taken off the ring; wait for the teardown.
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            return Leftovers {
                _ring: ring,
                grants: Vec::new(),
            };
        }
    };
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let governor = match shared.config.wait {
        WaitMode::Event { spin } => SpinGovernor::new(ns(spin)),
        WaitMode::Spin { spin } => SpinGovernor::steady(ns(spin)),
        WaitMode::Poll => SpinGovernor::new(0),
    };
    let mut w = Worker {
        plat,
        shared,
        q: index,
        front: frontend,
        ring,
        port,
        uring,
        slots: (0..size).map(|_| None).collect(),
        free: (0..size).rev().collect(),
        in_flight: 0,
        persistent: persistent.then(HashMap::new),
        barrier: None,
        halted: false,
        unpushed: false,
        notify_owed: false,
        answered: 0,
        kept: Vec::new(),
        stop,
        spin: governor,
        epoch: Instant::now(),
        bounce: None,
        trace: None,
        wake: None,
        poll_armed: false,
    };
    let event_mode = !matches!(w.shared.config.wait, WaitMode::Poll);
    if event_mode && w.shared.config.uring_wakeups && w.shared.config.sqpoll_idle_ms == 0 {
        w.wake = match w.plat.external_wait(port) {
            Ok(x) => Some(x),
            Err(e) => {
                log::debug!("blkback queue {index}: sleeping on the event channel apart ({e})");
                None
            }
        };
    }
    w.trace = w.shared.config.trace.clone().map(|trace| Tracer {
        trace,
        woke_ns: 0,
        taking: None,
        unsubmitted: Vec::new(),
        unpushed: Vec::new(),
    });
    if w.shared.config.bounce_min_segments > 0 {
        w.bounce = match Bounce::new() {
            // SAFETY: the buffers stay mapped until the io_uring is
            // dropped (`Worker::bounce` is declared after `Worker::uring`,
            // and `finish` forgets them while I/O may be in flight).
            Ok(b) => match unsafe { w.uring.submitter().register_buffers(&b.iovecs()) } {
                Ok(()) => Some(b),
                Err(e) => {
                    log::debug!("blkback queue {index}: no bounce buffers (registering them: {e})");
                    None
                }
            },
            Err(e) => {
                log::debug!("blkback queue {index}: no bounce buffers: {e}");
                None
            }
        };
    }
    w.serve();
    w.finish()
}

/// Pins the calling thread (queue `index`'s worker) to core
/// `(cpu + index) % cores` ([`super::BlkbackConfig::pin_cpu`]); a refusal
/// (a restricted cpuset) is logged and the thread runs unpinned.
fn pin_thread(cpu: usize, index: u32) {
    // SAFETY: sysconf has no memory-safety preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cores = usize::try_from(online).ok().filter(|&n| n > 0).unwrap_or(1);
    let core = cpu.wrapping_add(index as usize) % cores;
    if core >= libc::CPU_SETSIZE as usize {
        return;
    }
    // SAFETY: `cpu_set_t` is plain data for which all zeroes is the empty
    // set; CPU_SET writes inside it for a core below CPU_SETSIZE (checked
    // above); sched_setaffinity reads the set it is given, of that size.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        log::warn!(
            "blkback queue {index}: cannot pin the worker to core {core}: {}; it runs unpinned",
            std::io::Error::last_os_error()
        );
    }
}

/// The queue's io_uring. With [`super::BlkbackConfig::defer_taskrun`], its
/// completions wait as deferred task work (`IORING_SETUP_DEFER_TASKRUN`,
/// on a ring this worker alone submits to: `SINGLE_ISSUER`) until the
/// worker enters the kernel asking for events, which it does when the
/// ring's `IORING_SQ_TASKRUN` flag says some are waiting ([`Worker::reap`])
/// or when it sleeps for them; fio sets up its rings the same way. Without
/// it, the kernel interrupts the worker for every completion (task work
/// with a signal-like notification), wherever it is. Kernels older than
/// 6.1 get `COOP_TASKRUN` alone, or a plain ring.
fn make_uring(shared: &Shared, ring_size: u32) -> std::io::Result<IoUring> {
    // Each request takes at most two entries (flush then write).
    let entries = (ring_size * 2).next_power_of_two().max(8);
    let uring = if shared.config.sqpoll_idle_ms > 0 {
        IoUring::builder()
            .setup_sqpoll(shared.config.sqpoll_idle_ms)
            .build(entries)?
    } else if shared.config.defer_taskrun {
        IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .build(entries)
            })
            .or_else(|_| IoUring::builder().build(entries))?
    } else {
        IoUring::builder().build(entries)?
    };
    uring.submitter().register_files(&[shared.disk.fd()])?;
    Ok(uring)
}

impl Worker {
    fn serve(&mut self) {
        let mut idle: Option<IdleSpin> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let mut progress = self.reap();
            // Responses go out before new I/O is submitted (each submit is
            // a system call the frontend need not wait for).
            self.push();
            if !self.halted && self.barrier.is_none() {
                progress |= self.take_requests();
            }
            if self.barrier.is_some() && self.in_flight == 0 {
                if let Some(b) = self.barrier.take() {
                    self.start_rw(b);
                }
                progress = true;
            }
            self.submit();
            self.stamp_submitted();
            self.push();
            if progress {
                if let Some(spun) = idle.take() {
                    if spun.clean && spun.budget > 0 {
                        self.spin.caught();
                    }
                }
                continue;
            }
            let now = self.now_ns();
            let spin = &self.spin;
            let st = idle.get_or_insert_with(|| IdleSpin {
                start: now,
                prev: now,
                budget: spin.budget(now),
                clean: true,
            });
            self.idle(st, now);
        }
    }

    /// Nanoseconds since the worker started (the spin governor's clock).
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nothing to do: spin or sleep, as the mode says. Event mode spins
    /// for the governor's budget (none while this thread is seen losing
    /// its core: see [`blkfront::spin`]), then sleeps.
    fn idle(&mut self, st: &mut IdleSpin, now: u64) {
        if let WaitMode::Poll = self.shared.config.wait {
            std::hint::spin_loop();
            return;
        }
        if now < st.start.saturating_add(st.budget) {
            if !self.spin.preempted(st.prev, now) {
                st.prev = now;
                std::hint::spin_loop();
                return;
            }
            // Lost the core while spinning: sleep instead.
            st.budget = 0;
            st.clean = false;
        }
        if st.clean {
            // The spin ran out on a core of its own, catching nothing.
            st.clean = false;
            if st.budget > 0 {
                self.spin.missed(now);
            }
        }
        if self.wake.is_some() && !self.halted && self.barrier.is_none() {
            self.sleep_in_uring();
            return;
        }
        if self.in_flight > 0 {
            // Sleep on the io_uring; new requests are looked at when it
            // wakes (a completion, or the slice running out).
            let ts = types::Timespec::new().nsec(200_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.shared
                .stats
                .uring_waits
                .fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.uring.submitter().submit_with_args(1, &args) {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) {
                    log::warn!("blkback queue {}: waiting for I/O: {e}", self.q);
                }
            }
            if self.trace.is_some() {
                for s in self.slots.iter_mut().flatten() {
                    if let Some(st) = &mut s.steps {
                        st.uring_sleeps = st.uring_sleeps.saturating_add(1);
                    }
                }
            }
            return;
        }
        if self.halted || self.barrier.is_some() {
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        match self.ring.final_check_for_requests() {
            Ok(true) => {}
            Ok(false) => {
                // Woken by the frontend's notify, or every 10 ms to look at
                // the stop flag.
                self.shared
                    .stats
                    .ring_sleeps
                    .fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.plat.block(self.port, Some(10_000_000)) {
                    log::warn!("blkback queue {}: waiting on {}: {e}", self.q, self.port);
                    std::thread::sleep(Duration::from_millis(1));
                }
                if let Some(t) = &mut self.trace {
                    t.woke_ns = t.trace.now_ns();
                }
            }
            Err(e) => self.halt(&e),
        }
    }

    /// Sleeps in one `io_uring_enter` that a completion or the frontend's
    /// notification ends (the io_uring polls the event channel's eventfd),
    /// after asking the frontend to notify: no request waits for a
    /// completion to be seen, and no completion for a notification.
    fn sleep_in_uring(&mut self) {
        match self.ring.final_check_for_requests() {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                self.halt(&e);
                return;
            }
        }
        let Some(wake) = &self.wake else { return };
        let idle = self.in_flight == 0;
        let c = &self.shared.stats;
        if idle {
            c.ring_sleeps.fetch_add(1, Ordering::Relaxed);
        } else {
            c.uring_waits.fetch_add(1, Ordering::Relaxed);
        }
        let uring = &mut self.uring;
        let armed = &mut self.poll_armed;
        let q = self.q;
        // Woken by a completion, the frontend's notify, or every 10 ms to
        // look at the stop flag. The poll is queued only for a sleep (and
        // submitted with it), so that the submission counters count I/O.
        let slept = self.plat.wait_external(wake, || {
            if !*armed {
                use std::os::fd::AsRawFd;
                let e = opcode::PollAdd::new(types::Fd(wake.fd().as_raw_fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(EVENT_UD);
                // SAFETY: a poll names no buffer; the eventfd stays open
                // while the io_uring lives (`wake` holds it, and an armed
                // poll holds a reference of its own).
                if unsafe { uring.submission().push(&e) }.is_ok() {
                    *armed = true;
                }
                // Full (cannot be: every request takes at most two of the
                // entries, and they are submitted as they are queued): this
                // sleep ends on a completion or its timeout.
            }
            // Without the poll, look at the ring again soon.
            let ts = types::Timespec::new().nsec(if *armed { 10_000_000 } else { 200_000 });
            let args = types::SubmitArgs::new().timespec(&ts);
            match uring.submitter().submit_with_args(1, &args) {
                Ok(_) => Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(grant_tables::PlatformError::Os {
                    op: "io_uring_enter waiting for I/O or a notification",
                    code: e.raw_os_error().unwrap_or(libc::EIO),
                }),
            }
        });
        if let Err(e) = slept {
            log::warn!("blkback queue {q}: waiting for work: {e}; sleeping apart from now on");
            self.wake = None;
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(t) = &mut self.trace {
            if idle {
                t.woke_ns = t.trace.now_ns();
            }
            for s in self.slots.iter_mut().flatten() {
                if let Some(st) = &mut s.steps {
                    st.uring_sleeps = st.uring_sleeps.saturating_add(1);
                }
            }
        }
    }

    fn halt(&mut self, e: &RingError) {
        if !self.halted {
            log::warn!(
                "blkback queue {}: frontend {} provided bogus ring requests ({e}); halting ring processing until the connection ends",
                self.q,
                self.front
            );
            self.halted = true;
            self.shared.stats.ring_halts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the requests waiting on the ring. Returns whether any was.
    fn take_requests(&mut self) -> bool {
        let mut any = false;
        while !self.free.is_empty() {
            let slot = match self.ring.take_request() {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) => {
                    self.halt(&e);
                    break;
                }
            };
            if !any {
                self.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
            }
            any = true;
            self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = &mut self.trace {
                t.taking = Some((t.trace.now_ns(), std::mem::take(&mut t.woke_ns)));
            }
            let started = self.start(&slot);
            if let Some(t) = &mut self.trace {
                t.taking = None;
            }
            if let Err(r) = started {
                self.reject(r);
                // A refused request ends the batch, after a pause, as
                // blkback does.
                self.push();
                let delay = self.shared.config.error_delay;
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                break;
            }
            if self.barrier.is_some() {
                break;
            }
            self.stream_responses();
        }
        any
    }

    /// Between two submissions of a pass ([`BlkbackConfig::stream_responses`]):
    /// turns the completions already posted into responses and pushes
    /// them, without entering the kernel.
    fn stream_responses(&mut self) {
        let config = &self.shared.config;
        // A hostile mode's acts are laid out on a pass answered at its end
        // (a duplicate takes the slot of a request taken and not answered).
        if !config.stream_responses
            || config.submit_batch == 0
            || self.in_flight == 0
            || self.shared.hostile_kind().is_some()
        {
            return;
        }
        if self.uring.completion().is_empty() {
            return;
        }
        self.stamp_submitted();
        if self.drain_completions() {
            self.shared
                .stats
                .mid_pass_reaps
                .fetch_add(1, Ordering::Relaxed);
            let notify = self.shared.config.stream_notify;
            self.push_and(notify);
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            sectors: self.shared.disk.sectors(),
            sector_size: self.shared.disk.sector_size,
            read_only: self.shared.read_only(),
            max_indirect_segments: self.shared.config.max_indirect_segments,
        }
    }

    /// Checks one request and starts it (or parks a barrier).
    fn start(&mut self, slot: &BlkifRequest) -> Result<(), Reject> {
        let limits = self.limits();
        let mut rw = match parse::classify(slot, limits.max_indirect_segments)? {
            Pending::Direct(rw) => rw,
            Pending::Indirect {
                mut rw,
                nr_segments,
                pages,
            } => {
                self.read_indirect(&mut rw, nr_segments, &pages)?;
                rw
            }
            Pending::Discard(d) => {
                let d = parse::check_discard(&d, &limits)?;
                return self.start_discard(d);
            }
        };
        limits.check(&rw)?;
        if matches!(rw.kind, RwKind::Flush | RwKind::Barrier) && !self.shared.config.flush {
            self.shared.control(Control::NoFlush);
            return Err(Reject {
                id: rw.id,
                rsp_op: rw.rsp_op,
                status: status::EOPNOTSUPP,
                reason: RejectReason::Unsupported,
            });
        }
        match rw.kind {
            RwKind::Read => self.shared.stats.reads.fetch_add(1, Ordering::Relaxed),
            RwKind::Write => self.shared.stats.writes.fetch_add(1, Ordering::Relaxed),
            RwKind::Flush | RwKind::Barrier => {
                self.shared.stats.flushes.fetch_add(1, Ordering::Relaxed)
            }
        };
        if rw.kind == RwKind::Barrier && self.in_flight > 0 {
            // Wait for every request in flight, then flush and write.
            self.barrier = Some(rw);
            return Ok(());
        }
        rw.segs.shrink_to_fit();
        self.start_rw(rw);
        Ok(())
    }

    /// Maps, copies and unmaps (unless persistent) an indirect request's
    /// pages, then reads its segments from the copies.
    fn read_indirect(
        &mut self,
        rw: &mut Rw,
        nr_segments: usize,
        pages: &[GrantRefNum],
    ) -> Result<(), Reject> {
        let fail = |rw: &Rw| Reject {
            id: rw.id,
            rsp_op: rw.rsp_op,
            status: status::ERROR,
            reason: RejectReason::GrantMap,
        };
        let mut copies: Vec<[BlkifRequestSegment; SEGMENTS_PER_INDIRECT_PAGE]> =
            Vec::with_capacity(pages.len());
        let mut temp = Vec::new();
        let ptrs = self
            .map_pages(pages, Access::ReadOnly, &mut temp)
            .map_err(|_| fail(rw))?;
        let mut buf = [0u8; PAGE_SIZE];
        for (i, p) in ptrs.iter().enumerate() {
            let mapping = match p {
                PagePtr::Persistent(gref) => self.persistent.as_ref().and_then(|c| c.get(gref)),
                PagePtr::Temp(k) => temp.get(*k),
            };
            let read = mapping.map(|m| grant_tables::ForeignMapping::read_at(m, 0, &mut buf));
            if !matches!(read, Some(Ok(()))) {
                log::debug!(
                    "blkback queue {}: reading indirect page {i} of request {}",
                    self.q,
                    rw.id
                );
                return Err(fail(rw));
            }
            // 4096 bytes are 512 segments of 8 bytes: the conversion cannot
            // fail; the fallback only keeps this free of panics.
            let page =
                <[BlkifRequestSegment; SEGMENTS_PER_INDIRECT_PAGE]>::read_from_bytes(&buf[..])
                    .unwrap_or([BlkifRequestSegment::default(); SEGMENTS_PER_INDIRECT_PAGE]);
            copies.push(page);
        }
        self.release(temp);
        parse::indirect_segments(rw, nr_segments, |p| copies.get(p).copied())
    }

    /// Maps `grefs` (persistent ones from or into the cache, the others
    /// into `temp`, all or nothing) and says where each is.
    fn map_pages(
        &mut self,
        grefs: &[GrantRefNum],
        access: Access,
        temp: &mut Vec<MappedGrant>,
    ) -> Result<Vec<PagePtr>, ()> {
        let max = self.shared.config.max_persistent_grants;
        let mut out = Vec::with_capacity(grefs.len());
        let mut ops: Vec<(usize, MapOp)> = Vec::new();
        for (i, &gref) in grefs.iter().enumerate() {
            if let Some(cache) = &mut self.persistent {
                if cache.contains_key(&gref) {
                    out.push(PagePtr::Persistent(gref));
                    continue;
                }
                if cache.len() < max {
                    // Persistent grants are always mapped read-write.
                    match self.plat.map_grant(self.front, gref, Access::ReadWrite) {
                        Ok(m) => {
                            cache.insert(gref, m);
                            self.shared
                                .stats
                                .persistent_grants
                                .fetch_add(1, Ordering::Relaxed);
                            self.shared.stats.grant_maps.fetch_add(1, Ordering::Relaxed);
                            out.push(PagePtr::Persistent(gref));
                            continue;
                        }
                        Err(e) => {
                            log::debug!("blkback queue {}: {e}", self.q);
                            self.release(std::mem::take(temp));
                            return Err(());
                        }
                    }
                }
                // Beyond the limit: mapped for this request only, read-write
                // as blkback maps every page of a persistent connection.
                ops.push((
                    i,
                    MapOp {
                        granter: self.front,
                        gref,
                        access: Access::ReadWrite,
                    },
                ));
            } else {
                ops.push((
                    i,
                    MapOp {
                        granter: self.front,
                        gref,
                        access,
                    },
                ));
            }
            out.push(PagePtr::Temp(usize::MAX));
        }
        if ops.is_empty() {
            return Ok(out);
        }
        let batch: Vec<MapOp> = ops.iter().map(|(_, o)| *o).collect();
        let mut results = Vec::with_capacity(batch.len());
        self.plat.map_batch(&batch, &mut results);
        self.shared
            .stats
            .grant_maps
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut failed = false;
        for ((i, _), r) in ops.iter().zip(results) {
            match r {
                Ok(m) => {
                    if let Some(p) = out.get_mut(*i) {
                        *p = PagePtr::Temp(temp.len());
                    }
                    temp.push(m);
                }
                Err(e) => {
                    log::debug!("blkback queue {}: {e}", self.q);
                    failed = true;
                }
            }
        }
        if failed {
            self.release(std::mem::take(temp));
            return Err(());
        }
        Ok(out)
    }

    /// Unmaps per-request mappings (or keeps them, in the hostile mode that
    /// keeps grants mapped).
    fn release(&mut self, maps: Vec<MappedGrant>) {
        if maps.is_empty() {
            return;
        }
        if self.shared.hostile_kind() == Some(Hostile::KeepGrantsMapped) {
            self.kept.extend(maps);
        } else {
            drop(maps);
        }
    }

    fn take_slot(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Maps a checked read, write, flush or barrier and submits its I/O.
    fn start_rw(&mut self, rw: Rw) {
        let access = if rw.kind.writes() {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        let grefs: Vec<GrantRefNum> = rw.segs.iter().map(|s| s.gref).collect();
        let mut temp = Vec::new();
        let ptrs = match self.map_pages(&grefs, access, &mut temp) {
            Ok(p) => p,
            Err(()) => {
                self.reject(Reject {
                    id: rw.id,
                    rsp_op: rw.rsp_op,
                    status: status::ERROR,
                    reason: RejectReason::GrantMap,
                });
                return;
            }
        };
        let mut iov = Vec::with_capacity(rw.segs.len());
        for (seg, p) in rw.segs.iter().zip(&ptrs) {
            let mapping = match p {
                PagePtr::Persistent(gref) => self.persistent.as_ref().and_then(|c| c.get(gref)),
                PagePtr::Temp(k) => temp.get(*k),
            };
            let Some(m) = mapping else {
                self.release(temp);
                self.reject(Reject {
                    id: rw.id,
                    rsp_op: rw.rsp_op,
                    status: status::ERROR,
                    reason: RejectReason::GrantMap,
                });
                return;
            };
            // `offset + len <= 4096` (checked by the parser) inside a
            // one-page mapping.
            let base = m.as_ptr().as_ptr().wrapping_add(seg.offset as usize);
            iov.push(libc::iovec {
                iov_base: base.cast(),
                iov_len: seg.len as usize,
            });
        }
        let Some(index) = self.take_slot() else {
            self.release(temp);
            self.reject(Reject {
                id: rw.id,
                rsp_op: rw.rsp_op,
                status: status::ERROR,
                reason: RejectReason::Io,
            });
            return;
        };
        let bytes = u32::try_from(rw.bytes()).unwrap_or(u32::MAX);
        let flush = matches!(rw.kind, RwKind::Flush | RwKind::Barrier);
        let data = !iov.is_empty();
        let min = self.shared.config.bounce_min_segments;
        let bounce = match &mut self.bounce {
            Some(b) if data && min > 0 && iov.len() >= min && bytes as usize <= BOUNCE_BYTES => {
                b.free.pop().map(|k| (k, b.ptr(k)))
            }
            _ => None,
        };
        let reads = rw.kind == RwKind::Read;
        if bounce.is_some() {
            self.shared.stats.bounced.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some((_, buf)), false) = (bounce, reads) {
            // SAFETY: the iovecs point into mappings held by `temp` or the
            // persistent cache, each inside its page (checked by the
            // parser); `buf` holds BOUNCE_BYTES >= `bytes`, their sum.
            unsafe { copy_segments(&iov, buf, true) };
        }
        let slot = Slot {
            id: rw.id,
            rsp_op: rw.rsp_op,
            status: status::OKAY,
            cqes: u32::from(flush) + u32::from(data),
            bytes,
            reason: None,
            iov,
            maps: temp,
            bounce: bounce.map(|(k, _)| (k, reads)),
            steps: None,
        };
        let offset = rw.sector << blkfront::abi::SECTOR_SHIFT;
        let fd = types::Fixed(0);
        let ud = |stage: u64| (u64::from(index) << STAGE_BITS) | stage;
        let mut entries = Vec::with_capacity(2);
        if flush {
            let mut e = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(ud(STAGE_FLUSH));
            if data {
                // The write runs only after the flush, as REQ_PREFLUSH asks.
                e = e.flags(squeue::Flags::IO_LINK);
            }
            entries.push(e);
        }
        if let (true, Some((k, buf))) = (data, bounce) {
            let e = if reads {
                opcode::ReadFixed::new(fd, buf, bytes, k)
                    .offset(offset)
                    .build()
            } else {
                opcode::WriteFixed::new(fd, buf, bytes, k)
                    .offset(offset)
                    .build()
            };
            entries.push(e.user_data(ud(STAGE_DATA)));
        } else if data {
            let e = match (&slot.iov[..], rw.kind) {
                ([one], RwKind::Read) => {
                    opcode::Read::new(fd, one.iov_base.cast(), one.iov_len as u32)
                        .offset(offset)
                        .build()
                }
                ([one], _) => opcode::Write::new(fd, one.iov_base.cast(), one.iov_len as u32)
                    .offset(offset)
                    .build(),
                (v, RwKind::Read) => opcode::Readv::new(fd, v.as_ptr(), v.len() as u32)
                    .offset(offset)
                    .build(),
                (v, _) => opcode::Writev::new(fd, v.as_ptr(), v.len() as u32)
                    .offset(offset)
                    .build(),
            };
            entries.push(e.user_data(ud(STAGE_DATA)));
        }
        let mut slot = slot;
        if let Some(t) = &mut self.trace {
            if let Some((taken_ns, woke_ns)) = t.taking.take() {
                slot.steps = Some(BackSteps {
                    id: slot.id,
                    woke_ns,
                    taken_ns,
                    ..BackSteps::default()
                });
                t.unsubmitted.push(index);
            }
        }
        if let Some(s) = self.slots.get_mut(index as usize) {
            *s = Some(slot);
        }
        self.in_flight += 1;
        self.push_sqes(&entries);
        if let Some(t) = &self.trace {
            let now = t.trace.now_ns();
            if let Some(Some(Slot {
                steps: Some(st), ..
            })) = self.slots.get_mut(index as usize)
            {
                st.queued_ns = now;
            }
        }
    }

    fn start_discard(&mut self, d: parse::Discard) -> Result<(), Reject> {
        let unsupported = Reject {
            id: d.id,
            rsp_op: op::DISCARD,
            status: status::EOPNOTSUPP,
            reason: RejectReason::Unsupported,
        };
        if !self.shared.discard_offered() {
            return Err(unsupported);
        }
        self.shared.stats.discards.fetch_add(1, Ordering::Relaxed);
        let Some(index) = self.take_slot() else {
            return Err(Reject {
                id: d.id,
                rsp_op: op::DISCARD,
                status: status::ERROR,
                reason: RejectReason::Io,
            });
        };
        let shift = blkfront::abi::SECTOR_SHIFT;
        let slot = Slot {
            id: d.id,
            rsp_op: op::DISCARD,
            status: status::OKAY,
            cqes: 1,
            bytes: 0,
            reason: None,
            iov: Vec::new(),
            maps: Vec::new(),
            bounce: None,
            steps: None,
        };
        if let Some(s) = self.slots.get_mut(index as usize) {
            *s = Some(slot);
        }
        self.in_flight += 1;
        if d.sectors == 0 {
            // Nothing to punch: complete it with a flush-free no-op.
            let e = opcode::Nop::new()
                .build()
                .user_data((u64::from(index) << STAGE_BITS) | STAGE_DISCARD);
            self.push_sqes(&[e]);
            return Ok(());
        }
        let e = opcode::Fallocate::new(types::Fixed(0), d.sectors << shift)
            .offset(d.sector << shift)
            .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
            .build()
            .user_data((u64::from(index) << STAGE_BITS) | STAGE_DISCARD);
        self.push_sqes(&[e]);
        Ok(())
    }

    fn push_sqes(&mut self, entries: &[squeue::Entry]) {
        for _ in 0..2 {
            // SAFETY: every buffer an entry names stays valid until its
            // completion is reaped: the iovec arrays live in the request's
            // slot (never moved or changed until then), and the pages they
            // point to are mapped by the slot's own mappings or by this
            // queue's persistent grants, which are dropped only after every
            // request in flight has completed (`finish`).
            let pushed = unsafe { self.uring.submission().push_multiple(entries) };
            if pushed.is_ok() {
                let batch = self.shared.config.submit_batch;
                if batch > 0 && self.uring.submission().len() >= batch {
                    self.submit();
                }
                return;
            }
            // Full: hand what is queued to the kernel and try again.
            self.submit();
        }
        log::error!(
            "blkback queue {}: the io_uring submission queue stays full",
            self.q
        );
    }

    fn submit(&mut self) {
        if self.uring.submission().is_empty() {
            return;
        }
        let t0 = Instant::now();
        match self.uring.submit() {
            Ok(n) => {
                let c = &self.shared.stats;
                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                c.submit_ns.fetch_add(ns, Ordering::Relaxed);
                c.submits.fetch_add(1, Ordering::Relaxed);
                c.sqes.fetch_add(n as u64, Ordering::Relaxed);
                c.in_flight_sum
                    .fetch_add(self.in_flight as u64, Ordering::Relaxed);
            }
            Err(e) => {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                ) {
                    log::error!("blkback queue {}: io_uring submit: {e}", self.q);
                }
            }
        }
    }

    /// Turns completions into responses. Returns whether there were any.
    fn reap(&mut self) -> bool {
        if self.in_flight == 0 && !self.poll_armed {
            return false;
        }
        if self.uring.submission().taskrun() {
            // Completions wait as task work: an enter asking for events
            // (which `submit` makes when the flag is up) posts them.
            if let Err(e) = self.uring.submit() {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                ) {
                    log::error!(
                        "blkback queue {}: io_uring enter for completions: {e}",
                        self.q
                    );
                }
            }
            self.shared.stats.taskruns.fetch_add(1, Ordering::Relaxed);
        }
        self.drain_completions()
    }

    /// Turns the completions posted in the completion queue into
    /// responses (no system call). Returns whether there were any.
    fn drain_completions(&mut self) -> bool {
        let mut done: Vec<(u64, i32)> = Vec::new();
        let mut event = None;
        for cqe in self.uring.completion() {
            if cqe.user_data() == EVENT_UD {
                event = Some(cqe.result());
            } else {
                done.push((cqe.user_data(), cqe.result()));
            }
        }
        if let Some(res) = event {
            // The frontend notified (or the poll failed): drain the eventfd
            // before the next sleep arms the poll again.
            self.poll_armed = false;
            self.shared
                .stats
                .uring_notified
                .fetch_add(1, Ordering::Relaxed);
            if let Some(w) = &self.wake {
                w.drain();
            }
            if res < 0 {
                log::warn!(
                    "blkback queue {}: the io_uring cannot poll the event channel ({}); sleeping on it apart",
                    self.q,
                    std::io::Error::from_raw_os_error(-res)
                );
                self.wake = None;
            }
        }
        let any = !done.is_empty();
        if any {
            let c = &self.shared.stats;
            c.reaps.fetch_add(1, Ordering::Relaxed);
            c.cqes.fetch_add(done.len() as u64, Ordering::Relaxed);
        }
        for (ud, res) in done {
            self.complete(ud, res);
        }
        any
    }

    fn complete(&mut self, ud: u64, res: i32) {
        let index = (ud >> STAGE_BITS) as usize;
        let stage = ud & ((1 << STAGE_BITS) - 1);
        let Some(Some(slot)) = self.slots.get_mut(index) else {
            log::error!(
                "blkback queue {}: a completion for no request ({ud:#x})",
                self.q
            );
            return;
        };
        let failed = match stage {
            STAGE_DATA => res < 0 || res as u32 != slot.bytes,
            _ => res < 0,
        };
        if failed && slot.status == status::OKAY {
            let not_supported = res == -libc::EOPNOTSUPP || res == -libc::EINVAL;
            if stage == STAGE_DISCARD && not_supported {
                slot.status = status::EOPNOTSUPP;
                slot.reason = Some(RejectReason::Unsupported);
                self.shared.control(Control::NoDiscard);
            } else if stage == STAGE_FLUSH && not_supported {
                slot.status = status::EOPNOTSUPP;
                slot.reason = Some(RejectReason::Unsupported);
                self.shared.control(Control::NoFlush);
            } else {
                slot.status = status::ERROR;
                slot.reason = Some(RejectReason::Io);
                log::warn!(
                    "blkback queue {}: request {} ({}): the disk returned {res} ({})",
                    self.q,
                    slot.id,
                    op::name(slot.rsp_op),
                    if res < 0 {
                        std::io::Error::from_raw_os_error(-res).to_string()
                    } else {
                        format!("{} of {} bytes", res, slot.bytes)
                    }
                );
            }
        }
        slot.cqes = slot.cqes.saturating_sub(1);
        if slot.cqes > 0 {
            return;
        }
        let Some(slot) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        self.in_flight -= 1;
        self.free.push(index as u32);
        if let (Some((k, reads)), Some(b)) = (slot.bounce, self.bounce.as_mut()) {
            if reads && slot.status == status::OKAY {
                // SAFETY: the slot's iovecs still point into live mappings
                // (its own, released below, or the persistent cache), each
                // inside its page; the read filled `slot.bytes`, their
                // sum, of bounce buffer `k`.
                unsafe { copy_segments(&slot.iov, b.ptr(k), false) };
            }
            b.free.push(k);
        }
        if let Some(r) = slot.reason {
            self.shared.count_reject(r);
        }
        if let (Some(t), Some(mut st)) = (&mut self.trace, slot.steps) {
            st.reaped_ns = t.trace.now_ns();
            t.unpushed.push(st);
        }
        self.respond(slot.id, slot.rsp_op, slot.status);
        self.release(slot.maps);
    }

    fn reject(&mut self, r: Reject) {
        log::debug!(
            "blkback queue {}: request {} ({}) from {} refused: {}",
            self.q,
            r.id,
            op::name(r.rsp_op),
            self.front,
            r.reason.describe()
        );
        self.shared.count_reject(r.reason);
        self.respond(r.id, r.rsp_op, r.status);
    }

    /// Puts a response on the ring (as the hostile mode, if any, twists it).
    fn respond(&mut self, id: u64, operation: u8, status: i16) {
        let mut rsp = BlkifResponse {
            id,
            operation,
            _pad0: 0,
            status,
            _pad1: [0; 4],
        };
        let hostile = self
            .shared
            .hostile_kind()
            .filter(|_| self.answered >= self.shared.hostile_after());
        self.answered += 1;
        match hostile {
            Some(Hostile::BadIds) => rsp.id ^= super::BAD_ID_BIT,
            Some(Hostile::WrongOperation) => rsp.operation = super::wrong_operation(operation),
            Some(Hostile::UnknownStatus) => rsp.status = super::UNKNOWN_STATUS,
            _ => {}
        }
        match self.ring.put_response(rsp) {
            Ok(_) => self.unpushed = true,
            Err(e) => {
                log::debug!("blkback queue {}: response to {id} dropped: {e}", self.q);
                return;
            }
        }
        match hostile {
            Some(Hostile::DuplicateResponses) => {
                // The copy takes the slot of the next request taken and not
                // answered, if there is one (that request stays unanswered).
                if self.ring.rsp_prod_pvt() != self.ring.req_cons()
                    && self.ring.put_response(rsp).is_ok()
                {
                    self.shared
                        .stats
                        .hostile_acts
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Hostile::IndexJump) => {
                self.push();
                let jumped = self.ring.rsp_prod_pvt().wrapping_add(self.ring.size() * 2);
                self.raw_rsp_prod(jumped);
                self.shared
                    .stats
                    .hostile_acts
                    .fetch_add(1, Ordering::Relaxed);
                self.halted = true;
            }
            Some(Hostile::UnsolicitedResponses) => {
                self.push();
                if self.ring.rsp_prod_pvt() == self.ring.req_cons() {
                    // Nothing else is waiting for an answer: one response
                    // more than the frontend asked for.
                    let extra = BlkifResponse {
                        id: rsp.id.wrapping_add(1),
                        ..rsp
                    };
                    self.raw_extra_response(&extra);
                    self.shared
                        .stats
                        .hostile_acts
                        .fetch_add(1, Ordering::Relaxed);
                    self.halted = true;
                }
            }
            Some(Hostile::BadIds | Hostile::WrongOperation | Hostile::UnknownStatus) => {
                self.shared
                    .stats
                    .hostile_acts
                    .fetch_add(1, Ordering::Relaxed);
            }
            Some(Hostile::KeepGrantsMapped) | None => {}
        }
    }

    /// The shared `rsp_prod` index, written behind the ring's back (the
    /// hostile modes only).
    fn shared_index(&self, offset: usize) -> &AtomicU32 {
        let base = self.ring.memory().mapping().as_ptr();
        // SAFETY: the ring mapping is at least one page, page-aligned, and
        // lives as long as `self.ring` (borrowed for the result's life);
        // `offset` is 8 (`rsp_prod`), an aligned u32 inside the header,
        // which both ends only access atomically.
        unsafe { AtomicU32::from_ptr(base.as_ptr().add(offset).cast::<u32>()) }
    }

    fn raw_rsp_prod(&self, value: u32) {
        self.shared_index(8).store(value, Ordering::Release);
    }

    /// Writes `rsp` into the slot after the last published response and
    /// publishes it (more responses than requests).
    fn raw_extra_response(&self, rsp: &BlkifResponse) {
        use zerocopy::IntoBytes;
        let idx = self.ring.rsp_prod_pvt();
        let slot = (idx & (self.ring.size() - 1)) as usize;
        let entry = blkfront::abi::RING_SLOT_SIZE;
        let mapping = self.ring.memory().mapping();
        if grant_tables::ForeignMapping::write_at(
            mapping,
            SRING_HEADER_SIZE + slot * entry,
            rsp.as_bytes(),
        )
        .is_ok()
        {
            self.raw_rsp_prod(idx.wrapping_add(1));
        }
    }

    /// Publishes the responses put and notifies when the frontend asked
    /// (now, or for a push left owing by [`Worker::push_and`]).
    fn push(&mut self) {
        self.push_and(true);
    }

    /// Publishes the responses put; notifies when the frontend asked and
    /// `notify_now`, else owes the notification to the next
    /// [`Worker::push`] (which every pass of the worker's loop makes).
    /// A frontend that looks at the ring sees the responses either way:
    /// it asks for a notification and then looks again before it sleeps.
    fn push_and(&mut self, notify_now: bool) {
        let owed_now = notify_now && self.notify_owed;
        if !self.unpushed && !owed_now {
            return;
        }
        let sent = self
            .trace
            .as_ref()
            .map(|_| self.plat.event_stats().wakeups_sent);
        if self.unpushed {
            self.unpushed = false;
            if self.ring.push_responses() {
                self.notify_owed = true;
            }
        }
        if notify_now && self.notify_owed {
            self.notify_owed = false;
            self.shared.stats.notifies.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.plat.notify(self.port) {
                log::debug!("blkback queue {}: notifying {}: {e}", self.q, self.port);
            }
        }
        if let (Some(t), Some(sent)) = (&mut self.trace, sent) {
            let now = t.trace.now_ns();
            let woke = self.plat.event_stats().wakeups_sent != sent;
            for mut st in t.unpushed.drain(..) {
                st.pushed_ns = now;
                st.wakeup_sent = woke;
                t.trace.record(st);
            }
        }
    }

    /// Stamps the requests whose I/O the last [`Worker::submit`] handed to
    /// the kernel (traced queues only).
    fn stamp_submitted(&mut self) {
        let Some(t) = &mut self.trace else { return };
        if t.unsubmitted.is_empty() {
            return;
        }
        let now = t.trace.now_ns();
        for k in t.unsubmitted.drain(..) {
            if let Some(Some(Slot {
                steps: Some(st), ..
            })) = self.slots.get_mut(k as usize)
            {
                st.submitted_ns = now;
            }
        }
    }

    /// The connection ends: waits for the I/O in flight (the kernel writes
    /// into mapped pages until it completes), answers it, and hands back
    /// the mappings.
    fn finish(mut self) -> Leftovers {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.in_flight > 0 && Instant::now() < deadline {
            self.submit();
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.uring.submitter().submit_with_args(1, &args);
            self.reap();
        }
        if self.in_flight > 0 {
            // The kernel may still write into the pages: keep them mapped
            // rather than hand the frontend pages the disk still writes.
            log::error!(
                "blkback queue {}: {} request(s) still in flight after 30 s at teardown; their pages stay mapped",
                self.q,
                self.in_flight
            );
            let slots: Vec<Slot> = self.slots.iter_mut().filter_map(Option::take).collect();
            for s in slots {
                self.kept.extend(s.maps);
            }
            std::mem::forget(std::mem::take(&mut self.kept));
            if let Some(cache) = self.persistent.take() {
                std::mem::forget(cache);
            }
            if let Some(b) = self.bounce.take() {
                std::mem::forget(b);
            }
        }
        self.push();
        let mut grants = std::mem::take(&mut self.kept);
        if let Some(cache) = self.persistent.take() {
            self.shared
                .stats
                .persistent_grants
                .fetch_sub(cache.len() as u64, Ordering::Relaxed);
            grants.extend(cache.into_values());
        }
        Leftovers {
            _ring: self.ring,
            grants,
        }
    }
}

/// Where a request's page is mapped.
enum PagePtr {
    /// In the persistent cache, under this ref.
    Persistent(GrantRefNum),
    /// In the request's own mappings, at this index.
    Temp(usize),
}
