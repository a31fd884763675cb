//! Our rings against rings built from Xen's own `io/ring.h` macros in C
//! (`xen-c-reference`), two threads sharing page-aligned memory:
//! - our `FrontRing` against the C back end, our `BackRing` against the C
//!   front end, on 1, 2, 4 and 16 page rings, with indices starting just
//!   below 2^32 so they wrap, from one to a ring's worth of requests in
//!   flight; every message is checked on both sides;
//! - notification suppression: what our `push_*` return and what our final
//!   checks arm must agree with what the C side does (a lost wake-up hangs
//!   the sleeping side, which the timeouts turn into a failure), and a busy
//!   consumer must need far fewer notifications than messages;
//! - ring sizes: our `size()` against C's `RING_SIZE`, and
//!   `ring::ring_entries` against `__CONST_RING_SIZE`;
//! - slots of other shapes: our side writes slots as other structs than
//!   the ring's types (`put_request_as`, `put_response_as`) for the C side
//!   to read as `struct echo_request`/`echo_response`, and reads the C
//!   side's slots as smaller structs (`take_request_as`,
//!   `take_response_as`).
//!
//! Nothing here can hang: the C peers take a stop flag and a time budget,
//! and our side gives up at a deadline or when the C peer has exited.
#![cfg(target_os = "linux")]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use grant_tables::ring::{entry_size, reinterpret, ring_entries};
use grant_tables::{BackRing, FrontRing, RingMemory};
use xen_c_reference::{
    attached_ring_size, const_ring_size, echo_back, echo_front, echo_payload_ok, echo_request,
    echo_response, echo_response_ok, echo_ring_size, echo_sring_init, layout, EchoError,
    EchoEvents, EchoFailure, EchoParams, EchoRequest, EchoResponse, EchoStats, OddRequest,
    OddResponse, RingTag, SharedPages, WideRequest, WideResponse, ECHO_USE_EVENTS, PAGE_SIZE,
};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Time budget of one run, for both sides.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Messages per run.
const COUNT: u64 = 200_000;
/// Start of the ring indices: they wrap after 1001 messages.
const START: u32 = u32::MAX - 1000;
const PAGE_COUNTS: [u32; 4] = [1, 2, 4, 16];

/// Ring memory shared with the C peer's thread.
struct Shared(Arc<SharedPages>);

// SAFETY: `SharedPages` is page-aligned, `len()` bytes long and lives as
// long as this value (and the C thread's clone of the Arc); it is only
// accessed through raw pointers (by the ring and the C code), never through
// references.
unsafe impl RingMemory for Shared {
    fn ring_ptr(&self) -> NonNull<u8> {
        self.0.as_non_null()
    }
    fn ring_len(&self) -> usize {
        self.0.len()
    }
}

/// The threaded tests spin; one at a time keeps small machines responsive.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One run's shape.
#[derive(Clone, Copy, Debug)]
struct Case {
    pages: u32,
    start: u32,
    count: u64,
    /// Most requests outstanding; 0 means the ring size.
    in_flight: u32,
    /// Messages per push on each side; 0 means one push per burst.
    batch: u32,
    /// Sleep on event words when idle (otherwise spin-poll).
    events: bool,
    /// Busy time the consumer spends per request.
    work_ns: u32,
    /// Our side writes and reads slots as other structs than the ring's
    /// types ([`EchoWords`], [`EchoHead`], [`EchoAnswer`]).
    shapes: bool,
}

/// A request slot written as eight words instead of `struct echo_request`.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct EchoWords([u64; 8]);

/// The first 16 bytes of either echo slot: id and value.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct EchoHead {
    id: u64,
    value: u64,
}

/// A response slot written as id, value and status in one word (the status
/// and its padding, little-endian), instead of `struct echo_response`.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
struct EchoAnswer {
    id: u64,
    value: u64,
    status_and_pad: u64,
}

impl Case {
    fn new(pages: u32) -> Self {
        Case {
            pages,
            start: START,
            count: COUNT,
            in_flight: 0,
            batch: 0,
            events: false,
            work_ns: 0,
            shapes: false,
        }
    }

    fn params(&self) -> EchoParams {
        EchoParams {
            timeout_ns: TIMEOUT.as_nanos() as u64,
            max_in_flight: self.in_flight,
            batch: self.batch,
            work_ns: self.work_ns,
            flags: if self.events { ECHO_USE_EVENTS } else { 0 },
            ..EchoParams::new(self.pages, self.start, self.count)
        }
    }

    /// The matrix every page count runs through.
    fn matrix(pages: u32) -> Vec<Case> {
        let c = Case::new(pages);
        vec![
            // A ring's worth in flight, spin-polling, one push per burst.
            c,
            // A ring's worth in flight, sleeping when idle, a push (and a
            // notification check) per message.
            Case {
                events: true,
                batch: 1,
                ..c
            },
            // A few in flight, small batches, sleeping; another start, so
            // the wrap at 2^32 lands elsewhere in the batching pattern.
            Case {
                events: true,
                in_flight: 3,
                batch: 2,
                start: u32::MAX - 1002,
                ..c
            },
            // One in flight: every message crosses an idle peer.
            Case {
                events: true,
                in_flight: 1,
                count: COUNT / 4,
                ..c
            },
        ]
    }
}

/// Counters of our side of a run.
#[derive(Clone, Copy, Debug, Default)]
struct Ours {
    messages: u64,
    pushes: u64,
    /// Pushes after which our ring said to notify the C side.
    notifies: u64,
    /// Final checks (each may arm the C side's notification).
    final_checks: u64,
    /// Waits that ended with a notification from the C side.
    wakeups: u64,
}

/// Sets the C peer's stop flag when dropped, so a failing test stops it.
struct StopOnDrop(Arc<AtomicI32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(1, Ordering::SeqCst);
    }
}

/// The C peer's thread and the flags shared with it.
struct CPeer {
    thread: Option<JoinHandle<Result<EchoStats, EchoFailure>>>,
    events: Arc<EchoEvents>,
    stop: StopOnDrop,
    /// Set by the thread when the C function has returned.
    exited: Arc<AtomicI32>,
}

impl CPeer {
    fn spawn(
        mem: &Arc<SharedPages>,
        params: EchoParams,
        run: unsafe fn(
            *mut u8,
            &EchoParams,
            &EchoEvents,
            &AtomicI32,
        ) -> Result<EchoStats, EchoFailure>,
    ) -> Self {
        let events = Arc::new(EchoEvents::default());
        let stop = Arc::new(AtomicI32::new(0));
        let exited = Arc::new(AtomicI32::new(0));
        let thread = {
            let (mem, events, stop, exited) = (
                Arc::clone(mem),
                Arc::clone(&events),
                Arc::clone(&stop),
                Arc::clone(&exited),
            );
            thread::spawn(move || {
                // SAFETY: `mem` is page-aligned, `params.pages` pages long and
                // kept alive by this thread's Arc; it holds a ring initialised
                // at `params.start_idx` (by our front, or by `echo_sring_init`
                // before our back attached); the only other user is our ring,
                // which uses atomic and volatile accesses.
                let result = unsafe { run(mem.as_ptr(), &params, &events, &stop) };
                exited.store(1, Ordering::SeqCst);
                result
            })
        };
        CPeer {
            thread: Some(thread),
            events,
            stop: StopOnDrop(stop),
            exited,
        }
    }

    fn join(&mut self) -> Result<EchoStats, EchoFailure> {
        self.thread
            .take()
            .expect("joined once")
            .join()
            .expect("C peer thread panicked")
    }

    /// Stops the C peer and reports our failure along with its state.
    fn fail(&mut self, case: &Case, ours: &Ours, why: String) -> ! {
        self.stop.0.store(1, Ordering::SeqCst);
        let c = self.join();
        panic!("{case:?}: {why}\n  ours: {ours:?}\n  C peer: {c:?}");
    }
}

/// Our side's idle step: sleep on our event word (events mode) or spin,
/// bounded by the deadline; the C peer having exited is fatal on the second
/// idle step in a row (the first lets us re-check the ring for what it
/// published before exiting).
struct Idle {
    deadline: Instant,
    peer_gone: bool,
    spins: u32,
}

impl Idle {
    fn new() -> Self {
        Idle {
            deadline: Instant::now() + TIMEOUT,
            peer_gone: false,
            spins: 0,
        }
    }

    fn progressed(&mut self) {
        self.spins = 0;
    }

    /// Waits on `word` if `events`; `Ok(true)` if a notification arrived.
    fn step(
        &mut self,
        events: bool,
        wait: impl FnOnce(Instant, &AtomicI32) -> Result<(), EchoError>,
        exited: &AtomicI32,
    ) -> Result<bool, String> {
        if events {
            match wait(self.deadline, exited) {
                Ok(()) => return Ok(true),
                Err(EchoError::Stopped) => {}
                Err(e) => return Err(format!("waiting for a notification: {e}")),
            }
        } else {
            if Instant::now() > self.deadline {
                return Err("timed out waiting for the C peer".into());
            }
            self.spins += 1;
            if self.spins < 64 {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        if exited.load(Ordering::SeqCst) != 0 {
            if self.peer_gone {
                return Err("the C peer exited while we still wait for it".into());
            }
            self.peer_gone = true;
        }
        Ok(false)
    }
}

fn busy_work(ns: u32) {
    if ns > 0 {
        let until = Instant::now() + Duration::from_nanos(u64::from(ns));
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}

/// Our `FrontRing` against the C back end. Returns our counters and the
/// C back's.
fn rust_front_vs_c_back(case: Case) -> (Ours, EchoStats) {
    let mem = Arc::new(SharedPages::new(case.pages as usize));
    let mut front =
        FrontRing::<EchoRequest, EchoResponse, _>::init_at(Shared(Arc::clone(&mem)), case.start)
            .expect("ring over page-aligned memory");
    assert_eq!(
        front.size(),
        echo_ring_size(case.pages as usize),
        "{case:?}: our size vs C RING_SIZE"
    );
    let mut peer = CPeer::spawn(&mem, case.params(), echo_back);

    let k = if case.in_flight == 0 {
        front.size()
    } else {
        case.in_flight.min(front.size())
    };
    let mut ours = Ours::default();
    let mut sent = 0u64;
    let mut idle = Idle::new();
    while ours.messages < case.count {
        let mut progress = false;
        let mut unpushed = 0u32;
        while sent < case.count && front.req_prod_pvt().wrapping_sub(front.rsp_cons()) < k {
            let put = if case.shapes {
                let words: EchoWords = reinterpret(&echo_request(sent));
                front.put_request_as(&words)
            } else {
                front.put_request(echo_request(sent))
            };
            if let Err(e) = put {
                peer.fail(&case, &ours, format!("put_request {sent}: {e}"));
            }
            sent += 1;
            progress = true;
            unpushed += 1;
            if unpushed == case.batch {
                push_requests(&mut front, &peer, &mut ours);
                unpushed = 0;
            }
        }
        if unpushed > 0 {
            push_requests(&mut front, &peer, &mut ours);
        }
        loop {
            let taken = if case.shapes {
                // Only id and value: widen to a response with status OK,
                // which the C back sends for intact requests.
                front.take_response_as::<EchoHead>().map(|h| {
                    h.map(|h| EchoResponse {
                        id: h.id,
                        value: h.value,
                        ..echo_response(&echo_request(h.id))
                    })
                })
            } else {
                front.take_response()
            };
            match taken {
                Ok(Some(rsp)) => {
                    if !echo_response_ok(ours.messages, &rsp) {
                        peer.fail(
                            &case,
                            &ours,
                            format!("bad response for request {}: {rsp:?}", ours.messages),
                        );
                    }
                    ours.messages += 1;
                    progress = true;
                }
                Ok(None) => break,
                Err(e) => peer.fail(&case, &ours, format!("take_response: {e}")),
            }
        }
        if progress {
            idle.progressed();
            continue;
        }
        ours.final_checks += 1;
        match front.final_check_for_responses() {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => peer.fail(&case, &ours, format!("final_check_for_responses: {e}")),
        }
        match idle.step(
            case.events,
            |d, x| peer.events.wait_front(d, x),
            &peer.exited,
        ) {
            Ok(woken) => ours.wakeups += u64::from(woken),
            Err(why) => peer.fail(&case, &ours, why),
        }
    }
    let c = match peer.join() {
        Ok(c) => c,
        Err(f) => panic!("{case:?}: C back failed: {f}\n  ours: {ours:?}"),
    };
    assert!(front.is_broken().is_none());
    assert_eq!(front.rsp_cons(), case.start.wrapping_add(case.count as u32));
    (ours, c)
}

fn push_requests<M: RingMemory>(
    front: &mut FrontRing<EchoRequest, EchoResponse, M>,
    peer: &CPeer,
    ours: &mut Ours,
) {
    ours.pushes += 1;
    if front.push_requests() {
        ours.notifies += 1;
        peer.events.notify_back();
    }
}

/// Our `BackRing` against the C front end.
fn rust_back_vs_c_front(case: Case) -> (Ours, EchoStats) {
    let mem = Arc::new(SharedPages::new(case.pages as usize));
    // The C front initialises the ring when it starts; initialise it first
    // so our back never sees a half-written header (re-initialising an
    // unused ring at the same index changes nothing).
    // SAFETY: the memory is page-aligned, at least 64 bytes, and no other
    // thread uses it yet.
    unsafe { echo_sring_init(mem.as_ptr(), case.start) };
    let mut back =
        BackRing::<EchoRequest, EchoResponse, _>::attach(Shared(Arc::clone(&mem)), case.start)
            .expect("ring over page-aligned memory");
    assert_eq!(
        back.size(),
        echo_ring_size(case.pages as usize),
        "{case:?}: our size vs C RING_SIZE"
    );
    let mut peer = CPeer::spawn(&mem, case.params(), echo_front);

    let mut ours = Ours::default();
    let mut idle = Idle::new();
    while ours.messages < case.count {
        let mut progress = false;
        let mut unpushed = 0u32;
        while ours.messages < case.count {
            if case.shapes {
                // Read only id and value; answer with id, value and status
                // written as three words.
                let head = match back.take_request_as::<EchoHead>() {
                    Ok(Some(head)) => head,
                    Ok(None) => break,
                    Err(e) => peer.fail(&case, &ours, format!("take_request_as: {e}")),
                };
                let want = echo_request(ours.messages);
                if (head.id, head.value) != (want.id, want.value) {
                    peer.fail(
                        &case,
                        &ours,
                        format!("bad request head, expected id {}: {head:?}", ours.messages),
                    );
                }
                let rsp = echo_response(&want);
                let answer = EchoAnswer {
                    id: rsp.id,
                    value: rsp.value,
                    status_and_pad: u64::from(rsp.status as u32) | u64::from(rsp._pad) << 32,
                };
                if let Err(e) = back.put_response_as(&answer) {
                    peer.fail(&case, &ours, format!("put_response_as: {e}"));
                }
                ours.messages += 1;
                progress = true;
                unpushed += 1;
                if unpushed == case.batch {
                    push_responses(&mut back, &peer, &mut ours);
                    unpushed = 0;
                }
                continue;
            }
            let req = match back.take_request() {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(e) => peer.fail(&case, &ours, format!("take_request: {e}")),
            };
            busy_work(case.work_ns);
            if req.id != ours.messages || !echo_payload_ok(&req) {
                peer.fail(
                    &case,
                    &ours,
                    format!("bad request, expected id {}: {req:?}", ours.messages),
                );
            }
            if let Err(e) = back.put_response(echo_response(&req)) {
                peer.fail(&case, &ours, format!("put_response: {e}"));
            }
            ours.messages += 1;
            progress = true;
            unpushed += 1;
            if unpushed == case.batch {
                push_responses(&mut back, &peer, &mut ours);
                unpushed = 0;
            }
        }
        if unpushed > 0 {
            push_responses(&mut back, &peer, &mut ours);
        }
        if progress {
            idle.progressed();
            continue;
        }
        ours.final_checks += 1;
        match back.final_check_for_requests() {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => peer.fail(&case, &ours, format!("final_check_for_requests: {e}")),
        }
        match idle.step(
            case.events,
            |d, x| peer.events.wait_back(d, x),
            &peer.exited,
        ) {
            Ok(woken) => ours.wakeups += u64::from(woken),
            Err(why) => peer.fail(&case, &ours, why),
        }
    }
    let c = match peer.join() {
        Ok(c) => c,
        Err(f) => panic!("{case:?}: C front failed: {f}\n  ours: {ours:?}"),
    };
    assert!(back.is_broken().is_none());
    assert_eq!(back.req_cons(), case.start.wrapping_add(case.count as u32));
    (ours, c)
}

fn push_responses<M: RingMemory>(
    back: &mut BackRing<EchoRequest, EchoResponse, M>,
    peer: &CPeer,
    ours: &mut Ours,
) {
    ours.pushes += 1;
    if back.push_responses() {
        ours.notifies += 1;
        peer.events.notify_front();
    }
}

/// What both sides' counters must satisfy after a clean run.
///
/// A producer's push asks for a notification only when it moves its
/// producer index past the consumer's event index, and the consumer moves
/// that index only in a final check (to one past what it consumed); the
/// ring starts with it one past the start. So each side's notifications
/// number at most the other side's final checks plus one. In events mode a
/// side sleeps only after a final check found nothing, and each wake-up
/// consumes a notification, so wake-ups never exceed the peer's
/// notifications. The first push of each side always notifies.
fn check_notifications(case: &Case, ours: &Ours, c: &EchoStats) {
    let ctx = format!("{case:?}\n  ours: {ours:?}\n  C: {c:?}");
    assert_eq!(ours.messages, case.count, "{ctx}");
    assert_eq!((c.messages, c.errors), (case.count, 0), "{ctx}");
    assert!(
        ours.notifies >= 1 && c.notifies >= 1,
        "the first push must notify\n  {ctx}"
    );
    assert!(
        ours.notifies <= ours.pushes && c.notifies <= c.pushes,
        "{ctx}"
    );
    assert!(
        ours.notifies <= c.final_checks + 1,
        "we notified more often than the C side asked\n  {ctx}"
    );
    assert!(
        c.notifies <= ours.final_checks + 1,
        "the C side notified more often than we asked\n  {ctx}"
    );
    if case.events {
        assert!(ours.wakeups <= c.notifies, "{ctx}");
        assert!(
            c.sleeps <= ours.notifies,
            "the C side slept more often than we woke it\n  {ctx}"
        );
    }
}

fn report(dir: &str, case: &Case, ours: &Ours, c: &EchoStats, elapsed: Duration) {
    println!(
        "{dir} pages={:>2} in_flight={:>3} batch={} events={:<5} work={}ns: {} msgs in {:.0?} \
         | ours: pushes {} notifies {} final_checks {} wakeups {} | C: pushes {} notifies {} final_checks {} sleeps {}",
        case.pages,
        case.in_flight,
        case.batch,
        case.events,
        case.work_ns,
        case.count,
        elapsed,
        ours.pushes,
        ours.notifies,
        ours.final_checks,
        ours.wakeups,
        c.pushes,
        c.notifies,
        c.final_checks,
        c.sleeps,
    );
}

#[test]
fn our_front_against_c_back() {
    let _serial = one_at_a_time();
    for pages in PAGE_COUNTS {
        for case in Case::matrix(pages) {
            let t = Instant::now();
            let (ours, c) = rust_front_vs_c_back(case);
            report("front(rust)/back(C)", &case, &ours, &c, t.elapsed());
            check_notifications(&case, &ours, &c);
        }
    }
}

/// The shapes runs: on 1 and 4 pages, spin-polling with a ring's worth in
/// flight, and sleeping with one push per message.
fn shape_cases() -> Vec<Case> {
    [1, 4]
        .into_iter()
        .flat_map(|pages| {
            let c = Case {
                shapes: true,
                count: COUNT / 10,
                ..Case::new(pages)
            };
            [
                c,
                Case {
                    events: true,
                    batch: 1,
                    ..c
                },
            ]
        })
        .collect()
}

#[test]
fn our_front_in_other_shapes_against_c_back() {
    let _serial = one_at_a_time();
    for case in shape_cases() {
        let t = Instant::now();
        let (ours, c) = rust_front_vs_c_back(case);
        report("front(rust, shapes)/back(C)", &case, &ours, &c, t.elapsed());
        // The C back parsed every request we wrote as eight words as a
        // `struct echo_request` and found its id in order and its payload
        // intact (`c.errors == 0`, checked here).
        check_notifications(&case, &ours, &c);
    }
}

#[test]
fn our_back_in_other_shapes_against_c_front() {
    let _serial = one_at_a_time();
    for case in shape_cases() {
        let t = Instant::now();
        let (ours, c) = rust_back_vs_c_front(case);
        report("front(C)/back(rust, shapes)", &case, &ours, &c, t.elapsed());
        // The C front read every answer we wrote as three words as a
        // `struct echo_response` with the right id, value and status.
        check_notifications(&case, &ours, &c);
    }
}

#[test]
fn our_back_against_c_front() {
    let _serial = one_at_a_time();
    for pages in PAGE_COUNTS {
        for case in Case::matrix(pages) {
            let t = Instant::now();
            let (ours, c) = rust_back_vs_c_front(case);
            report("front(C)/back(rust)", &case, &ours, &c, t.elapsed());
            check_notifications(&case, &ours, &c);
        }
    }
}

/// A busy back end (slow per request) with a ring's worth in flight rarely
/// runs dry, so the front rarely has to notify it.
#[test]
fn busy_c_back_needs_few_notifications_from_our_front() {
    let _serial = one_at_a_time();
    for batch in [0, 1] {
        let case = Case {
            count: 20_000,
            events: true,
            work_ns: 2_000,
            batch,
            ..Case::new(1)
        };
        let t = Instant::now();
        let (ours, c) = rust_front_vs_c_back(case);
        report("front(rust)/back(C) busy", &case, &ours, &c, t.elapsed());
        check_notifications(&case, &ours, &c);
        assert!(
            ours.notifies * 4 < case.count,
            "a busy back should need far fewer notifications than messages: {ours:?} {c:?}"
        );
    }
}

/// The same with our back end busy and the C front notifying.
#[test]
fn busy_back_needs_few_notifications_from_c_front() {
    let _serial = one_at_a_time();
    for batch in [0, 1] {
        let case = Case {
            count: 20_000,
            events: true,
            work_ns: 2_000,
            batch,
            ..Case::new(1)
        };
        let t = Instant::now();
        let (ours, c) = rust_back_vs_c_front(case);
        report("front(C)/back(rust) busy", &case, &ours, &c, t.elapsed());
        check_notifications(&case, &ours, &c);
        assert!(
            c.notifies * 4 < case.count,
            "a busy back should need far fewer notifications than messages: {ours:?} {c:?}"
        );
    }
}

/// Our ring sizes against C's `RING_SIZE` (attached rings) and
/// `__CONST_RING_SIZE`, for the echo ring and two odd shapes, over every
/// ring size we allow; `ring_entries` against `__CONST_RING_SIZE` for
/// Xen's real blkif and netif rings and for byte counts that are not whole
/// pages.
#[test]
fn ring_sizes_match_c() {
    fn ours<Req, Rsp>(pages: usize) -> (u32, u32, u32)
    where
        Req: zerocopy::IntoBytes + zerocopy::FromBytes + zerocopy::Immutable,
        Rsp: zerocopy::IntoBytes + zerocopy::FromBytes + zerocopy::Immutable,
    {
        let mem = Arc::new(SharedPages::new(pages));
        let front = FrontRing::<Req, Rsp, _>::init(Shared(Arc::clone(&mem))).expect("front");
        let back = BackRing::<Req, Rsp, _>::attach(Shared(mem), 0).expect("back");
        (
            front.size(),
            back.size(),
            ring_entries(pages * PAGE_SIZE, entry_size::<Req, Rsp>()),
        )
    }

    for pages in 1..=16usize {
        let bytes = pages * PAGE_SIZE;
        for (tag, (front, back, entries)) in [
            (RingTag::Echo, ours::<EchoRequest, EchoResponse>(pages)),
            (RingTag::Odd, ours::<OddRequest, OddResponse>(pages)),
            (RingTag::Wide, ours::<WideRequest, WideResponse>(pages)),
        ] {
            let c = attached_ring_size(tag, bytes);
            assert!(c > 0);
            assert_eq!(
                (front, back),
                (c, c),
                "{tag:?} {pages} pages: size() vs C RING_SIZE"
            );
            assert_eq!(
                entries,
                const_ring_size(tag, bytes),
                "{tag:?} {pages} pages: ring_entries vs __CONST_RING_SIZE"
            );
        }
        assert_eq!(
            echo_ring_size(pages),
            attached_ring_size(RingTag::Echo, bytes)
        );
    }

    for tag in RingTag::ALL {
        let entry = layout::type_layout(tag.entry_type_name())
            .expect("entry union in the C table")
            .size;
        for bytes in (0..=70_000usize)
            .step_by(61)
            .chain((1..=16).map(|p| p * PAGE_SIZE))
        {
            assert_eq!(
                ring_entries(bytes, entry),
                const_ring_size(tag, bytes),
                "{tag:?}: ring_entries({bytes}, {entry}) vs __CONST_RING_SIZE"
            );
        }
    }
}
