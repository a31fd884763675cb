//! The ring entries of the ping-pong bench.
//!
//! - `c-ring-h`: a front and a back built from Xen's own `io/ring.h` macros
//!   (compiled from `xen-c-reference`), spinning, on two threads.
//! - `ring-poll`, `ring-event`, `ring-adaptive`: our [`FrontRing`] in this
//!   process (domain 1) and our [`BackRing`] in a child process (domain 0),
//!   on the hosted platform, connected exactly as a driver connects: the
//!   toolstack creates the device's xenstore nodes, the front allocates and
//!   grants the ring page and an unbound event channel and publishes them
//!   through the xenbus handshake, the back watches the frontend, maps the
//!   grant, binds the channel and switches to Connected.
//!
//! Modes: `poll` spins on the peer's producer index and never notifies
//! (after the handshake's first event); `event` asks for a notification and
//! blocks on the event channel whenever the ring is empty; `adaptive` spins
//! for [`ADAPTIVE_SPIN`] and then blocks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use grant_tables::{
    Access, BackRing, DomId, EventChannels, FrontRing, GrantRef, PageAllocator, Port,
    RawRingMemory, RingMemory, SharedPages,
};
use hosted::toolstack::{add_device, DeviceSpec};
use hosted::xenstore::{connect_as, XenstoreDaemon};
use hosted::{HostedHypervisor, HostedPlatform};
use xen_c_reference::{
    echo_payload_ok, echo_reply_value, echo_request, echo_response_ok, EchoRequest, EchoResponse,
    ECHO_STATUS_OK,
};
use xenbus::{ConnectStyle, Frontend, FrontendConfig, XenbusState};

use crate::harness::{Entry, Recorder, Round};
use crate::pin;
use crate::scratch::{fresh_dir, ChildGuard};

/// The environment variable that turns the bench binary into the ring's
/// backend process. Its value is `<dir>;<mode>;<requests>`.
pub const BACKEND_ROLE_ENV: &str = "PINGPONG_RING_BACKEND";

/// How long the adaptive mode spins before it blocks.
pub const ADAPTIVE_SPIN: Duration = Duration::from_micros(50);

/// No single wait of the bench may take longer than this.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

const FRONT: DomId = DomId(1);
const BACK: DomId = DomId(0);
const DEVICE: &str = "pingpong";

/// How the two ends wait for each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Spin on the ring.
    Poll,
    /// Block on the event channel when the ring is empty.
    Event,
    /// Spin for a while, then block.
    Adaptive,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Event => "event",
            Mode::Adaptive => "adaptive",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        match s {
            "poll" => Some(Mode::Poll),
            "event" => Some(Mode::Event),
            "adaptive" => Some(Mode::Adaptive),
            _ => None,
        }
    }
}

/// The ring entries.
pub fn entries() -> Vec<Entry> {
    let bytes = std::mem::size_of::<EchoRequest>();
    vec![
        Entry::new(
            "c-ring-h",
            "Xen's own C io/ring.h macros on both ends (xen-c-reference): the reference ring",
            "threads, C io/ring.h both ends, spinning",
            |r: Round, rec: &mut Recorder| c_ring_h(r.iters, r.warmup, rec),
        )
        .msg_bytes(bytes),
        Entry::new(
            "ring-poll",
            "our FrontRing and BackRing between two hosted domains, both ends spinning on the ring",
            "2 processes (domains), hosted, spinning",
            |r: Round, rec: &mut Recorder| ring(Mode::Poll, r.iters, r.warmup, rec),
        )
        .msg_bytes(bytes),
        Entry::new(
            "ring-threads",
            "our FrontRing and BackRing in two threads over one page, both spinning: ring-poll's loops in c-ring-h's setting",
            "threads, our rings both ends, spinning",
            |r: Round, rec: &mut Recorder| ring_threads(r.iters, r.warmup, rec),
        )
        .msg_bytes(bytes),
        Entry::new(
            "ring-event",
            "the same rings, each end blocking on the event channel whenever the ring is empty",
            "2 processes (domains), hosted, event channel",
            |r: Round, rec: &mut Recorder| ring(Mode::Event, r.iters, r.warmup, rec),
        )
        .msg_bytes(bytes),
        Entry::new(
            "ring-adaptive",
            "the same rings, each end spinning 50 us and then blocking on the event channel",
            "2 processes (domains), hosted, spin 50us then block",
            |r: Round, rec: &mut Recorder| ring(Mode::Adaptive, r.iters, r.warmup, rec),
        )
        .msg_bytes(bytes),
    ]
}

/// Xen's own C ring on both ends, two threads, spinning.
pub fn c_ring_h(iters: u64, warmup: u64, rec: &mut Recorder) -> Result<(), String> {
    let mem = xen_c_reference::SharedPages::new(1);
    let total = iters + warmup;
    let addr = mem.as_ptr() as usize;
    let (a, b) = pin::pair();
    let back = std::thread::spawn(move || {
        pin::pin_to(b);
        // SAFETY: `mem` outlives this thread (joined below before it is
        // dropped); the page is zeroed and only the two C ends touch it.
        unsafe { xen_c_reference::pingpong_back(addr as *mut u8, 1, total) }
    });
    pin::pin_to(a);
    let mut lat = vec![0u64; total as usize];
    // SAFETY: as above: live, page-aligned, one page.
    let r = unsafe { xen_c_reference::pingpong_front(mem.as_ptr(), 1, &mut lat) };
    let b = back
        .join()
        .map_err(|_| "the C back end panicked".to_string())?;
    r.map_err(|e| format!("C front end: {e:?}"))?;
    b.map_err(|e| format!("C back end: {e:?}"))?;
    drop(mem);
    // The C front end stores every sample in `lat`; they go into the
    // histogram after the run, off the measured loop.
    rec.record_all(lat.get(warmup as usize..).unwrap_or(&[]));
    Ok(())
}

fn xs_err(what: &str) -> impl Fn(xenbus::XsError) -> String + '_ {
    move |e| format!("xenstore: {what}: {e}")
}

/// Waits on the event channel or spins, per mode. `ready(arm)` polls the
/// ring; with `arm` set it also asks for a notification (the final check)
/// before the caller sleeps. The clock is first read after `CLOCK_EVERY`
/// empty polls (a response that is already there costs no clock read), and
/// then once every `CLOCK_EVERY` polls; `timeout` counts from that first
/// read. One loop with one call site of `ready`, inlined into the caller, so
/// that the poll closure and the ring's accessors compile into one tight
/// loop (a call chain per poll adds tens of nanoseconds to each round trip).
#[inline(always)]
fn wait_for<T, S: Signal>(
    mode: Mode,
    sig: &S,
    timeout: Duration,
    mut ready: impl FnMut(bool) -> Result<Option<T>, String>,
) -> Result<T, String> {
    const CLOCK_EVERY: u32 = 128;
    let mut started: Option<Instant> = None;
    let mut arm = mode == Mode::Event;
    let mut polls = 0u32;
    loop {
        if let Some(v) = ready(arm)? {
            return Ok(v);
        }
        if !arm {
            // Spin phase: poll the ring only, reading the clock once every
            // `CLOCK_EVERY` polls.
            polls += 1;
            if polls < CLOCK_EVERY {
                std::hint::spin_loop();
                continue;
            }
            polls = 0;
            let now = Instant::now();
            let spent = now - *started.get_or_insert(now);
            match mode {
                Mode::Poll if spent >= timeout => {
                    return Err("timed out spinning on the ring: the peer stopped answering".into())
                }
                // Arm, then poll once more before sleeping.
                Mode::Adaptive if spent >= ADAPTIVE_SPIN => arm = true,
                _ => {}
            }
            continue;
        }
        // Block phase: the final check above found nothing; sleep.
        let deadline = *started.get_or_insert_with(Instant::now) + timeout;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out waiting for the peer's event".into());
        }
        sig.block(left)?;
    }
}

/// The ring modes: front here (domain 1), back in a child (domain 0).
pub fn ring(mode: Mode, iters: u64, warmup: u64, rec: &mut Recorder) -> Result<(), String> {
    let dir = fresh_dir("ring")?;
    let result = ring_in(&dir, mode, iters, warmup, rec);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn ring_in(
    dir: &Path,
    mode: Mode,
    iters: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    let total = iters + warmup;
    let hv = HostedHypervisor::create(dir)
        .map_err(|e| format!("hosted hypervisor in {}: {e}", dir.display()))?;
    let sock = dir.join("xenstored.sock");
    let daemon = XenstoreDaemon::spawn(&sock).map_err(|e| format!("xenstore daemon: {e}"))?;
    let mut toolstack =
        connect_as(&sock, BACK.0).map_err(|e| format!("toolstack xenstore: {e}"))?;
    let dev = DeviceSpec::new(DEVICE, FRONT, BACK, 0);
    add_device(&mut toolstack, &dev).map_err(|e| format!("toolstack: {e}"))?;

    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench binary: {e}"))?;
    let child = Command::new(exe)
        .env(
            BACKEND_ROLE_ENV,
            format!("{};{};{total}", dir.display(), mode.name()),
        )
        .spawn()
        .map_err(|e| format!("cannot start the backend process: {e}"))?;
    let mut child = ChildGuard(Some(child));

    let (a, _) = pin::pair();
    pin::pin_to(a);
    let plat = hv
        .join(FRONT)
        .map_err(|e| format!("joining as {FRONT}: {e}"))?;
    let mut xs = connect_as(&sock, FRONT.0).map_err(|e| format!("frontend xenstore: {e}"))?;
    let page = plat
        .alloc_zeroed_pages(1)
        .map_err(|e| format!("ring page: {e}"))?;
    let gfn = page.gfn(0).ok_or("the ring page has no frame number")?;
    let mut ring =
        FrontRing::<EchoRequest, EchoResponse, _>::init(page).map_err(|e| e.to_string())?;

    let mut dev = BenchFront {
        plat: &plat,
        gfn,
        grant: None,
        port: None,
    };
    let mut fe = Frontend::new(FrontendConfig::new(
        format!("device/{DEVICE}/0"),
        ConnectStyle::InitialisedFirst,
    ));
    let start = Instant::now();
    let mut clock = || start.elapsed();
    let info = fe
        .run_until_connected(&mut xs, &mut clock, &mut dev)
        .map_err(|e| format!("xenbus handshake: {e}"))?;
    let BenchFront { grant, port, .. } = dev;
    let port = port.ok_or("connected without an event channel")?;
    log::info!(
        "ring connected to {} in {:?}",
        info.backend,
        start.elapsed()
    );

    front_round_trips(mode, &(&plat, port), &mut ring, total, warmup, rec)?;
    if let Some(mut c) = child.0.take() {
        let status = c
            .wait()
            .map_err(|e| format!("waiting for the backend: {e}"))?;
        if !status.success() {
            return Err(format!("the backend process failed: {status}"));
        }
    }
    fe.close(&mut xs, start.elapsed()).ok();
    if let Some(g) = grant {
        plat.grant_table()
            .end_access(g)
            .map_err(|e| e.to_string())?;
    }
    drop(daemon);
    Ok(())
}

/// The bench frontend's side of the handshake: grants the ring page and
/// allocates the event channel for the one connection the bench makes.
struct BenchFront<'a> {
    plat: &'a HostedPlatform,
    gfn: grant_tables::Gfn,
    grant: Option<GrantRef>,
    port: Option<Port>,
}

impl<T: xenbus::Transport> xenbus::Device<T> for BenchFront<'_> {
    fn setup(
        &mut self,
        _xs: &mut xenbus::Xenstore<T>,
        conn: &xenbus::Connection,
    ) -> Result<(), xenbus::DeviceError> {
        let device = |e: String| xenbus::DeviceError::Device(e);
        let grant = self
            .plat
            .grant_table()
            .grant_access(conn.peer, self.gfn, Access::ReadWrite)
            .map_err(|e| device(e.to_string()))?;
        match self.plat.alloc_unbound(conn.peer) {
            Ok(port) => {
                self.grant = Some(grant);
                self.port = Some(port);
                Ok(())
            }
            Err(e) => {
                let _ = self.plat.grant_table().end_access(grant);
                Err(device(e.to_string()))
            }
        }
    }

    fn publish(
        &mut self,
        tx: &mut xenbus::Transaction<'_, T>,
        conn: &xenbus::Connection,
    ) -> Result<(), xenbus::XsError> {
        if let (Some(g), Some(p)) = (&self.grant, self.port) {
            tx.write(&conn.frontend_key("ring-ref"), g.raw().to_string())?;
            tx.write(&conn.frontend_key("event-channel"), p.0.to_string())?;
        }
        Ok(())
    }

    fn teardown(&mut self, _conn: &xenbus::Connection, _reason: xenbus::TeardownReason) {
        // The bench makes one connection: a lost backend fails the run.
        if let Some(g) = self.grant.take() {
            let _ = self.plat.grant_table().end_access(g);
        }
        if let Some(p) = self.port.take() {
            let _ = self.plat.close(p);
        }
    }
}

/// The backend process: `PINGPONG_RING_BACKEND=<dir>;<mode>;<requests>`.
pub fn backend_main(spec: &str) -> Result<(), String> {
    let mut parts = spec.split(';');
    let dir = PathBuf::from(parts.next().ok_or("missing directory")?);
    let mode = parts
        .next()
        .and_then(Mode::parse)
        .ok_or("missing or unknown mode")?;
    let total: u64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("missing request count")?;
    let (_, b) = pin::pair();
    pin::pin_to(b);
    let plat = HostedPlatform::join(&dir, BACK).map_err(|e| format!("joining as {BACK}: {e}"))?;
    let mut xs = connect_as(dir.join("xenstored.sock"), BACK.0)
        .map_err(|e| format!("backend xenstore: {e}"))?;
    let be = format!("/local/domain/{}/backend/{DEVICE}/{}/0", BACK.0, FRONT.0);
    let fe = xs
        .read_string(&format!("{be}/frontend"))
        .map_err(xs_err("reading frontend"))?;
    let token = "pingpong-backend";
    xs.watch(&format!("{fe}/state"), token)
        .map_err(xs_err("watching the frontend"))?;
    xs.write(&format!("{be}/state"), XenbusState::InitWait.as_str())
        .map_err(xs_err("writing InitWait"))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    // Wait for the frontend to publish its keys (Initialised).
    loop {
        let st = xs
            .read(&format!("{fe}/state"))
            .map_err(xs_err("reading the frontend state"))?;
        match XenbusState::parse(&st) {
            Ok(XenbusState::Initialised) | Ok(XenbusState::Connected) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("frontend state: {e}")),
        }
        if Instant::now() >= deadline {
            return Err("timed out waiting for the frontend to initialise".into());
        }
        xs.wait_event(xenbus::Wait::For(Duration::from_millis(100)))
            .map_err(xs_err("waiting"))?;
    }
    let gref: u32 = xs
        .read_string(&format!("{fe}/ring-ref"))
        .map_err(xs_err("reading ring-ref"))?
        .parse()
        .map_err(|_| "ring-ref is not a number")?;
    let rport: u32 = xs
        .read_string(&format!("{fe}/event-channel"))
        .map_err(xs_err("reading event-channel"))?
        .parse()
        .map_err(|_| "event-channel is not a number")?;
    let mem = plat
        .map_ring(FRONT, &[gref])
        .map_err(|e| format!("mapping the ring: {e}"))?;
    let port = plat
        .bind_interdomain(FRONT, Port(rport))
        .map_err(|e| format!("binding the event channel: {e}"))?;
    let mut ring = BackRing::<EchoRequest, EchoResponse, _>::new(mem).map_err(|e| e.to_string())?;
    xs.write(&format!("{be}/state"), XenbusState::Connected.as_str())
        .map_err(xs_err("writing Connected"))?;

    serve_requests(mode, &(&plat, port), &mut ring, total)?;
    xs.write(&format!("{be}/state"), XenbusState::Closed.as_str())
        .ok();
    Ok(())
}

/// The measured loop of the front: `total` round trips, the first `warmup`
/// not recorded. Out of line, so that its code (and the inlined poll loop)
/// does not depend on how the set-up around it was compiled.
#[inline(never)]
fn front_round_trips<M: RingMemory, S: Signal>(
    mode: Mode,
    sig: &S,
    ring: &mut FrontRing<EchoRequest, EchoResponse, M>,
    total: u64,
    warmup: u64,
    rec: &mut Recorder,
) -> Result<(), String> {
    for i in 0..total {
        // The request (with its 48-byte payload pattern) is built before the
        // clock starts, as the C peer's is.
        let req = echo_request(i);
        let t = Instant::now();
        ring.put_request(req).map_err(|e| e.to_string())?;
        if ring.push_requests() && mode != Mode::Poll {
            sig.notify()?;
        }
        let rsp = wait_for(mode, sig, STEP_TIMEOUT, |arm| {
            if let Some(r) = ring.take_response().map_err(|e| e.to_string())? {
                return Ok(Some(r));
            }
            if arm {
                ring.final_check_for_responses()
                    .map_err(|e| e.to_string())?;
                return ring.take_response().map_err(|e| e.to_string());
            }
            Ok(None)
        })?;
        let dt = t.elapsed().as_nanos() as u64;
        if !echo_response_ok(i, &rsp) {
            return Err(format!("round trip {i}: wrong response {rsp:?}"));
        }
        if i >= warmup {
            rec.record(dt);
        }
    }
    Ok(())
}

/// The serving loop of the back: answers `total` requests. Out of line, as
/// the front's loop is.
#[inline(never)]
fn serve_requests<M: RingMemory, S: Signal>(
    mode: Mode,
    sig: &S,
    ring: &mut BackRing<EchoRequest, EchoResponse, M>,
    total: u64,
) -> Result<(), String> {
    for _ in 0..total {
        let req = wait_for(mode, sig, STEP_TIMEOUT, |arm| {
            if let Some(r) = ring.take_request().map_err(|e| e.to_string())? {
                return Ok(Some(r));
            }
            if arm {
                ring.final_check_for_requests().map_err(|e| e.to_string())?;
                return ring.take_request().map_err(|e| e.to_string());
            }
            Ok(None)
        })?;
        // The answer depends on the id and value only, as the C peer's
        // does; the payload is checked after the response is pushed, off
        // the round trip's critical path, and a bad one fails the run.
        ring.put_response(EchoResponse {
            id: req.id,
            value: echo_reply_value(req.value),
            status: ECHO_STATUS_OK,
            _pad: 0,
        })
        .map_err(|e| e.to_string())?;
        if ring.push_responses() && mode != Mode::Poll {
            sig.notify()?;
        }
        if !echo_payload_ok(&req) {
            return Err(format!("request {}: corrupted payload", req.id));
        }
    }
    Ok(())
}

/// How the measured loops signal the peer and sleep: through the hosted
/// platform's event channel, or not at all (both ends spinning in one
/// process).
trait Signal {
    /// Notifies the peer.
    fn notify(&self) -> Result<(), String>;
    /// Sleeps until the peer notifies or `left` passes.
    fn block(&self, left: Duration) -> Result<(), String>;
}

impl Signal for (&HostedPlatform, Port) {
    fn notify(&self) -> Result<(), String> {
        self.0.notify(self.1).map_err(|e| e.to_string())
    }
    fn block(&self, left: Duration) -> Result<(), String> {
        self.0
            .block(self.1, Some(left.as_nanos() as u64))
            .map(|_| ())
            .map_err(|e| format!("block on {}: {e}", self.1))
    }
}

/// No event channel: only [`Mode::Poll`] runs on it.
struct Spinning;

impl Signal for Spinning {
    fn notify(&self) -> Result<(), String> {
        Err("no event channel between threads: only polling runs here".into())
    }
    fn block(&self, _left: Duration) -> Result<(), String> {
        Err("no event channel between threads: only polling runs here".into())
    }
}

/// Our FrontRing and BackRing in two threads of this process over one plain
/// page, both spinning: the same measured loops as `ring-poll`, in the C
/// ring's setting (`c-ring-h`), so that the two processes of `ring-poll`
/// and the code itself can be told apart.
pub fn ring_threads(iters: u64, warmup: u64, rec: &mut Recorder) -> Result<(), String> {
    let mem = xen_c_reference::SharedPages::new(1);
    let total = iters + warmup;
    let ptr = NonNull::new(mem.as_ptr()).ok_or("the shared page has no address")?;
    // SAFETY: `mem` is one zeroed, page-aligned page that lives until both
    // threads are done (the back thread is joined before `mem` drops); only
    // the two rings below touch it, through volatile accesses.
    let front_mem = unsafe { RawRingMemory::new(ptr, 4096) };
    // SAFETY: as above.
    let back_mem = unsafe { RawRingMemory::new(ptr, 4096) };
    let mut ring =
        FrontRing::<EchoRequest, EchoResponse, _>::init(front_mem).map_err(|e| e.to_string())?;
    let (a, b) = pin::pair();
    let back = std::thread::spawn(move || -> Result<(), String> {
        pin::pin_to(b);
        let mut ring =
            BackRing::<EchoRequest, EchoResponse, _>::new(back_mem).map_err(|e| e.to_string())?;
        serve_requests(Mode::Poll, &Spinning, &mut ring, total)
    });
    pin::pin_to(a);
    let r = front_round_trips(Mode::Poll, &Spinning, &mut ring, total, warmup, rec);
    let b = back
        .join()
        .map_err(|_| "the back thread panicked".to_string())?;
    drop(mem);
    r?;
    b
}
