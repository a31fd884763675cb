//! The xenbus frontend handshake against a simulated backend, through the
//! hosted xenstore daemon: connecting (block and network styles), a
//! backend that crashes or closes and comes back (a new connection each
//! time, the old one torn down first), a backend that moves to another
//! domain, orderly close, timeouts and hostile values, the device's steps
//! (a failed setup, a failed publish torn down, a conflicting publish
//! retried on the same connection) and `run_until_connected` reporting a
//! disconnect.
//!
//! Most tests drive the frontend and the backend from the test thread, in
//! turn (the state machines are poll-driven); one runs the backend on its
//! own thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hosted::xenstore::{connect, connect_as, UnixXenstore, XenstoreDaemon};
use xenbus::{
    ConnectStyle, Connection, DeviceError, Frontend, FrontendConfig, FrontendPhase as Phase,
    HandshakeError, HandshakeEvent, HandshakePhase, PeerLoss, TeardownReason,
};
use xenbus::{Perm, PermAccess, Transaction, Transport, Wait, XenbusState, Xenstore, XsError};

const FE_DOM: u16 = 1;
const BE_DOM: u16 = 2;

fn socket_path() -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "xs-hs-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

fn fe_abs(id: u32) -> String {
    format!("/local/domain/{FE_DOM}/device/vif/{id}")
}

fn be_abs(be_dom: u16, id: u32) -> String {
    format!("/local/domain/{be_dom}/backend/vif/{FE_DOM}/{id}")
}

/// What the toolstack (dom0) does when it creates a device.
fn toolstack_create(xs: &mut UnixXenstore, be_dom: u16, id: u32) {
    let fe = fe_abs(id);
    let be = be_abs(be_dom, id);
    if !xs.is_domain_introduced(FE_DOM).unwrap() {
        xs.introduce(FE_DOM, 0, 0).unwrap();
    }
    if !xs.is_domain_introduced(be_dom).unwrap() {
        xs.introduce(be_dom, 0, 0).unwrap();
    }
    xs.transaction(|tx| {
        tx.mkdir(&fe)?;
        tx.set_perms(
            &fe,
            &[
                Perm::new(FE_DOM, PermAccess::None),
                Perm::new(be_dom, PermAccess::Read),
            ],
        )?;
        tx.write(&format!("{fe}/backend"), &be)?;
        tx.write(&format!("{fe}/backend-id"), be_dom.to_string())?;
        tx.write(&format!("{fe}/state"), "1")?;
        tx.mkdir(&be)?;
        tx.set_perms(
            &be,
            &[
                Perm::new(be_dom, PermAccess::None),
                Perm::new(FE_DOM, PermAccess::Read),
            ],
        )?;
        tx.write(&format!("{be}/frontend"), &fe)?;
        tx.write(&format!("{be}/frontend-id"), FE_DOM.to_string())?;
        tx.write(&format!("{be}/state"), "1")
    })
    .unwrap();
}

/// A backend following Linux's netback/blkback state rules.
struct SimBackend {
    xs: UnixXenstore,
    dir: String,
    fe: String,
    token: String,
    state: XenbusState,
    /// The frontend state that makes us connect.
    connect_on: XenbusState,
    /// ring-ref values seen at each connection.
    ring_refs: Vec<String>,
}

impl SimBackend {
    fn start(
        socket: &std::path::Path,
        be_dom: u16,
        id: u32,
        connect_on: XenbusState,
    ) -> SimBackend {
        let mut xs = connect_as(socket, be_dom).unwrap();
        let dir = be_abs(be_dom, id);
        let fe = xs.read_string(&format!("{dir}/frontend")).unwrap();
        let token = format!("be:{dir}");
        xs.watch(&format!("{fe}/state"), &token).unwrap();
        let mut be = SimBackend {
            xs,
            dir,
            fe,
            token,
            state: XenbusState::Initialising,
            connect_on,
            ring_refs: Vec::new(),
        };
        be.set_state(XenbusState::InitWait);
        be
    }

    fn set_state(&mut self, s: XenbusState) {
        self.xs
            .write(&format!("{}/state", self.dir), s.as_str())
            .unwrap();
        self.state = s;
    }

    fn poll(&mut self) {
        self.xs.pump().unwrap();
        if self.xs.drain_events_for(&self.token) == 0 {
            return;
        }
        let fe_state = match self.xs.read(&format!("{}/state", self.fe)) {
            Ok(v) => XenbusState::parse(&v).unwrap_or(XenbusState::Unknown),
            Err(e) if e.is_not_found() => XenbusState::Closed,
            Err(e) => panic!("{e}"),
        };
        match fe_state {
            s if (s == self.connect_on || s == XenbusState::Connected)
                && self.state == XenbusState::InitWait =>
            {
                let rr = self
                    .xs
                    .read_string(&format!("{}/ring-ref", self.fe))
                    .expect("ring-ref published");
                let port = self
                    .xs
                    .read_string(&format!("{}/event-channel", self.fe))
                    .expect("event-channel published");
                assert!(port.parse::<u32>().is_ok());
                self.ring_refs.push(rr);
                self.set_state(XenbusState::Connected);
            }
            XenbusState::Closing if self.state != XenbusState::Closed => {
                self.set_state(XenbusState::Closing)
            }
            XenbusState::Closed if self.state != XenbusState::Closed => {
                self.set_state(XenbusState::Closed)
            }
            XenbusState::Initialising if self.state == XenbusState::Closed => {
                self.set_state(XenbusState::InitWait)
            }
            _ => {}
        }
    }
}

/// The device side: sets up a ring-ref per connection and publishes it.
struct Device {
    /// Every connection set up, in order.
    publishes: Vec<Connection>,
    /// The live connection's ring-ref.
    live: Option<(u64, u32)>,
    /// Calls of `publish`, with the connection number.
    publish_calls: Vec<u64>,
    teardowns: Vec<(u64, TeardownReason)>,
    /// Makes `setup` fail with this message.
    fail_setup: Option<String>,
    /// A connection to the store that makes the first publish transaction
    /// conflict (it rewrites a node the transaction wrote).
    conflict_once: Option<UnixXenstore>,
}

impl Device {
    fn new() -> Self {
        Device {
            publishes: Vec::new(),
            live: None,
            publish_calls: Vec::new(),
            teardowns: Vec::new(),
            fail_setup: None,
            conflict_once: None,
        }
    }
}

impl<T: Transport> xenbus::Device<T> for Device {
    fn setup(&mut self, _xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
        if let Some(m) = &self.fail_setup {
            return Err(DeviceError::Device(m.clone()));
        }
        assert!(
            self.live.is_none(),
            "setup while connection {:?} is live",
            self.live
        );
        self.publishes.push(conn.clone());
        self.live = Some((conn.number, 100 + conn.number as u32));
        Ok(())
    }

    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        let (number, rr) = self.live.expect("publish without setup");
        assert_eq!(number, conn.number, "publish for another connection");
        self.publish_calls.push(conn.number);
        tx.write(&conn.frontend_key("ring-ref"), rr.to_string())?;
        tx.write(&conn.frontend_key("event-channel"), "7")?;
        tx.write(&conn.frontend_key("request-rx-copy"), "1")?;
        if let Some(mut other) = self.conflict_once.take() {
            other
                .write(&format!("{}/request-rx-copy", fe_abs(0)), "0")
                .unwrap();
        }
        Ok(())
    }

    fn teardown(&mut self, conn: &Connection, reason: TeardownReason) {
        let (number, _) = self.live.take().expect("teardown without setup");
        assert_eq!(number, conn.number);
        self.teardowns.push((conn.number, reason));
    }
}

fn disconnected(e: &HandshakeEvent) -> bool {
    matches!(e, HandshakeEvent::Disconnected { .. })
}

struct Clock(Instant);

impl Clock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Polls the frontend and the backends in turn until `until` accepts an
/// event or 5 s pass. Returns the non-idle events seen.
fn drive(
    fe: &mut Frontend,
    fxs: &mut UnixXenstore,
    dev: &mut Device,
    backends: &mut [&mut SimBackend],
    clock: &Clock,
    until: impl Fn(&HandshakeEvent) -> bool,
) -> Vec<HandshakeEvent> {
    let end = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < end {
        let ev = fe.poll(fxs, clock.now(), dev).unwrap();
        for b in backends.iter_mut() {
            b.poll();
        }
        if ev != HandshakeEvent::Idle {
            seen.push(ev.clone());
            if until(&ev) {
                return seen;
            }
        }
        fxs.pump_wait(Wait::For(Duration::from_millis(5))).unwrap();
    }
    panic!(
        "handshake stuck in phase {:?}; events so far: {seen:?}",
        fe.phase()
    );
}

fn is_connected(e: &HandshakeEvent) -> bool {
    matches!(e, HandshakeEvent::Connected(_))
}

fn setup(
    style_connect_on: XenbusState,
) -> (XenstoreDaemon, UnixXenstore, UnixXenstore, SimBackend) {
    let d = XenstoreDaemon::spawn(socket_path()).unwrap();
    let mut xs0 = connect(d.socket()).unwrap();
    toolstack_create(&mut xs0, BE_DOM, 0);
    let fxs = connect_as(d.socket(), FE_DOM).unwrap();
    let be = SimBackend::start(d.socket(), BE_DOM, 0, style_connect_on);
    (d, xs0, fxs, be)
}

fn state_of(xs: &mut UnixXenstore, path: &str) -> XenbusState {
    XenbusState::parse(&xs.read(path).unwrap()).unwrap()
}

#[test]
fn connects_block_style_without_threads() {
    let (_d, mut xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    let events = drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    let HandshakeEvent::Connected(info) = events.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(info.backend, be_abs(BE_DOM, 0));
    assert_eq!(info.peer, grant_tables::DomId(BE_DOM));
    assert_eq!(fe.phase(), Phase::Connected);
    assert_eq!(
        state_of(&mut xs0, &format!("{}/state", fe_abs(0))),
        XenbusState::Connected
    );
    assert_eq!(
        state_of(&mut xs0, &format!("{}/state", be_abs(BE_DOM, 0))),
        XenbusState::Connected
    );
    assert_eq!(be.ring_refs, ["101"]);
    // The published keys belong to the frontend domain, readable by the
    // backend domain.
    let perms = xs0.get_perms(&format!("{}/ring-ref", fe_abs(0))).unwrap();
    assert_eq!(
        perms,
        [
            Perm::new(FE_DOM, PermAccess::None),
            Perm::new(BE_DOM, PermAccess::Read)
        ]
    );
    // Nothing more happens while both stay connected.
    for _ in 0..10 {
        assert_eq!(
            fe.poll(&mut fxs, clock.now(), &mut dev).unwrap(),
            HandshakeEvent::Idle
        );
    }
}

#[test]
fn connects_network_style() {
    // netback connects only once the frontend says Connected.
    let (_d, mut xs0, mut fxs, mut be) = setup(XenbusState::Connected);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::ConnectedAtOnce,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    assert_eq!(
        state_of(&mut xs0, &format!("{}/state", fe_abs(0))),
        XenbusState::Connected
    );
    assert_eq!(be.ring_refs.len(), 1);
}

#[test]
fn backend_crash_and_restart_reconnects() {
    let (d, mut xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );

    // The backend dies: its connection goes, the toolstack removes its nodes.
    drop(be);
    xs0.rm(&be_abs(BE_DOM, 0)).unwrap();
    let events = drive(&mut fe, &mut fxs, &mut dev, &mut [], &clock, |e| {
        disconnected(e)
    });
    assert_eq!(
        events,
        [HandshakeEvent::Disconnected {
            connection: 1,
            loss: PeerLoss::Gone
        }]
    );
    assert_eq!(fe.phase(), Phase::WaitBackendReturn);
    assert_eq!(
        state_of(&mut xs0, &format!("{}/state", fe_abs(0))),
        XenbusState::Closed
    );
    // It stays waiting while the backend is absent.
    for _ in 0..5 {
        assert_eq!(
            fe.poll(&mut fxs, clock.now(), &mut dev).unwrap(),
            HandshakeEvent::Idle
        );
    }

    // The backend restarts: the toolstack recreates its directory, the
    // driver comes up.
    toolstack_create(&mut xs0, BE_DOM, 0);
    let mut be2 = SimBackend::start(d.socket(), BE_DOM, 0, XenbusState::Initialised);
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be2],
        &clock,
        is_connected,
    );
    assert_eq!(fe.connections(), 2);
    assert_eq!(be2.ring_refs.len(), 1, "the new backend got the keys again");
    assert_eq!(
        state_of(&mut xs0, &format!("{}/state", fe_abs(0))),
        XenbusState::Connected
    );
}

#[test]
fn backend_closing_then_reconnects() {
    let (_d, mut xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );

    // The backend goes Closing (unplug or error) then Closed, as blkback
    // does; the frontend drops the connection and starts over once the
    // backend is ready again.
    be.set_state(XenbusState::Closing);
    let events = drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    assert_eq!(
        events[0],
        HandshakeEvent::Disconnected {
            connection: 1,
            loss: PeerLoss::Closing
        }
    );
    assert!(is_connected(events.last().unwrap()));
    assert_eq!(be.ring_refs.len(), 2);
    assert_eq!(fe.connections(), 2);
    let _ = &mut xs0;
}

#[test]
fn backend_going_straight_to_closed_reconnects() {
    // A Linux-style backend that goes Connected -> Closed: it does not
    // write Closed again when the frontend closes too, and only moves on
    // (to InitWait) when it sees the frontend's Initialising. The frontend
    // must look at the backend's state again by itself after closing.
    let (_d, mut xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    be.set_state(XenbusState::Closed);
    let events = drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    assert_eq!(
        events[0],
        HandshakeEvent::Disconnected {
            connection: 1,
            loss: PeerLoss::Closed
        }
    );
    assert!(is_connected(events.last().unwrap()));
    assert_eq!(be.ring_refs.len(), 2);
    assert_eq!(fe.connections(), 2);
    assert_eq!(
        state_of(&mut xs0, &format!("{}/state", be_abs(BE_DOM, 0))),
        XenbusState::Connected
    );
}

#[test]
fn backend_closing_before_it_connects_starts_over() {
    // The same from WaitBackendConnected: the keys are published, but the
    // backend goes Closed instead of Connected.
    let (_d, _xs0, mut fxs, mut be) = setup(XenbusState::Connected);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    let end = Instant::now() + Duration::from_secs(5);
    while fe.phase() != Phase::WaitBackendConnected {
        assert!(Instant::now() < end, "stuck in {:?}", fe.phase());
        fe.poll(&mut fxs, clock.now(), &mut dev).unwrap();
        be.poll();
        fxs.pump_wait(Wait::For(Duration::from_millis(5))).unwrap();
    }
    // This backend waits for a frontend Connected that an
    // InitialisedFirst frontend never writes first; it gives up.
    be.set_state(XenbusState::Closed);
    be.connect_on = XenbusState::Initialised;
    let events = drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    assert_eq!(
        events[0],
        HandshakeEvent::Disconnected {
            connection: 1,
            loss: PeerLoss::Closed
        }
    );
    assert!(is_connected(events.last().unwrap()));
    assert_eq!(be.ring_refs.len(), 1);
    assert_eq!(dev.publishes.len(), 2);
}

#[test]
fn backend_restarting_while_connected_is_a_disconnect() {
    let (_d, _xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    // The backend jumps straight back to InitWait (a restart whose
    // intermediate states were never seen).
    be.set_state(XenbusState::InitWait);
    let events = drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    assert_eq!(
        events[0],
        HandshakeEvent::Disconnected {
            connection: 1,
            loss: PeerLoss::Restarted
        }
    );
    assert_eq!(be.ring_refs.len(), 2);
}

#[test]
fn backend_moves_to_another_domain() {
    let (d, mut xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );

    // The driver domain dies and a new one (dom3) takes over the device.
    drop(be);
    xs0.rm(&be_abs(BE_DOM, 0)).unwrap();
    xs0.release(BE_DOM).unwrap();
    drive(&mut fe, &mut fxs, &mut dev, &mut [], &clock, |e| {
        disconnected(e)
    });
    toolstack_create(&mut xs0, 3, 0);
    // The toolstack lets the new backend domain read the frontend's nodes.
    for key in xs0.directory(&fe_abs(0)).unwrap() {
        let p = format!("{}/{key}", fe_abs(0));
        xs0.set_perms(
            &p,
            &[
                Perm::new(FE_DOM, PermAccess::None),
                Perm::new(3, PermAccess::Read),
            ],
        )
        .unwrap();
    }
    let mut be3 = SimBackend::start(d.socket(), 3, 0, XenbusState::Initialised);
    let events = drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be3],
        &clock,
        is_connected,
    );
    let HandshakeEvent::Connected(info) = events.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(info.peer, grant_tables::DomId(3));
    assert_eq!(info.backend, be_abs(3, 0));
    // The device was told the new backend when publishing (to grant to it).
    assert_eq!(dev.publishes.last().unwrap().peer, grant_tables::DomId(3));
    assert_eq!(be3.ring_refs.len(), 1);
}

#[test]
fn frontend_close_is_orderly() {
    let (_d, mut xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    fe.close(&mut fxs, clock.now()).unwrap();
    assert_eq!(
        state_of(&mut xs0, &format!("{}/state", fe_abs(0))),
        XenbusState::Closing
    );
    let events = drive(&mut fe, &mut fxs, &mut dev, &mut [&mut be], &clock, |e| {
        *e == HandshakeEvent::Closed
    });
    assert_eq!(events, [HandshakeEvent::Closed]);
    assert_eq!(fe.phase(), Phase::Shut);
    assert_eq!(
        state_of(&mut xs0, &format!("{}/state", fe_abs(0))),
        XenbusState::Closed
    );
    // The backend follows to Closed and the frontend does not come back.
    for _ in 0..20 {
        be.poll();
        assert_eq!(
            fe.poll(&mut fxs, clock.now(), &mut dev).unwrap(),
            HandshakeEvent::Idle
        );
        fxs.pump_wait(Wait::For(Duration::from_millis(5))).unwrap();
    }
    assert_eq!(be.state, XenbusState::Closed);
    fe.unwatch(&mut fxs).unwrap();
}

#[test]
fn device_removal_is_reported() {
    let (_d, mut xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    // Hot unplug: the toolstack removes both directories.
    xs0.rm(&fe_abs(0)).unwrap();
    xs0.rm(&be_abs(BE_DOM, 0)).unwrap();
    let events = drive(&mut fe, &mut fxs, &mut dev, &mut [], &clock, |e| {
        *e == HandshakeEvent::Removed
    });
    assert_eq!(events, [HandshakeEvent::Removed]);
    assert_eq!(fe.phase(), Phase::Shut);
    // Nothing was written back.
    assert!(xs0.read(&fe_abs(0)).unwrap_err().is_not_found());
}

#[test]
fn a_late_reply_is_retried_not_fatal() {
    let (d, _xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    fxs.set_timeout(Duration::from_millis(50));
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        // The daemon stalls: its state stays locked until the frontend's
        // request has timed out, however long the test thread takes to
        // get there (no race against a fixed stall).
        let d = &d;
        s.spawn(move || {
            d.with_core(|_| {
                held_tx.send(()).unwrap();
                // Also ends the stall if the test thread panics (the
                // sender is dropped).
                let _ = release_rx.recv();
            })
        });
        held_rx.recv().unwrap();
        let result = fe.poll(&mut fxs, clock.now(), &mut dev);
        release_tx.send(()).unwrap();
        let err = result.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_ne!(fe.phase(), Phase::Failed);
    });
    // Once the daemon answers again, the same handshake carries on (the
    // late replies are dropped by request id).
    fxs.set_timeout(Duration::from_secs(5));
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
}

#[test]
fn backend_on_its_own_thread() {
    let d = XenstoreDaemon::spawn(socket_path()).unwrap();
    let mut xs0 = connect(d.socket()).unwrap();
    toolstack_create(&mut xs0, BE_DOM, 0);
    let socket = d.socket().to_path_buf();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let backend = std::thread::spawn(move || {
        let mut be = SimBackend::start(&socket, BE_DOM, 0, XenbusState::Initialised);
        while !stop2.load(Ordering::SeqCst) {
            be.poll();
            be.xs
                .pump_wait(Wait::For(Duration::from_millis(10)))
                .unwrap();
        }
        be.ring_refs
    });
    let mut fxs = connect_as(d.socket(), FE_DOM).unwrap();
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let start = Instant::now();
    let info = fe
        .run_until_connected(&mut fxs, &mut || start.elapsed(), &mut dev)
        .unwrap();
    assert_eq!(info.peer, grant_tables::DomId(BE_DOM));
    stop.store(true, Ordering::SeqCst);
    assert_eq!(backend.join().unwrap(), ["101"]);
}

#[test]
fn waits_time_out_and_say_what_they_waited_for() {
    let d = XenstoreDaemon::spawn(socket_path()).unwrap();
    let mut xs0 = connect(d.socket()).unwrap();
    toolstack_create(&mut xs0, BE_DOM, 0);
    // No backend driver ever runs: the backend stays Initialising.
    let mut fxs = connect_as(d.socket(), FE_DOM).unwrap();
    let mut cfg = FrontendConfig::new("device/vif/0", ConnectStyle::InitialisedFirst);
    cfg.step_timeout = Duration::from_secs(3);
    let mut fe = Frontend::new(cfg);
    let mut dev = Device::new();
    // A fake clock: no real waiting.
    assert_eq!(
        fe.poll(&mut fxs, Duration::from_secs(100), &mut dev)
            .unwrap(),
        HandshakeEvent::Idle
    );
    assert_eq!(fe.phase(), Phase::WaitBackendInitWait);
    assert_eq!(
        fe.poll(&mut fxs, Duration::from_secs(102), &mut dev)
            .unwrap(),
        HandshakeEvent::Idle
    );
    let err = fe
        .poll(&mut fxs, Duration::from_secs(104), &mut dev)
        .unwrap_err();
    match &err {
        HandshakeError::Timeout {
            phase,
            peer_state,
            waited,
            ..
        } => {
            assert_eq!(*phase, HandshakePhase::Frontend(Phase::WaitBackendInitWait));
            assert_eq!(*peer_state, Some(XenbusState::Initialising));
            assert_eq!(*waited, Duration::from_secs(4));
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("InitWait") && msg.contains("backend driver"),
        "{msg}"
    );
    assert_eq!(fe.phase(), Phase::Failed);
    // Failed stays failed until restarted.
    assert_eq!(
        fe.poll(&mut fxs, Duration::from_secs(105), &mut dev)
            .unwrap(),
        HandshakeEvent::Idle
    );
    fe.restart();
    let mut be = SimBackend::start(d.socket(), BE_DOM, 0, XenbusState::Initialised);
    let clock = Clock(Instant::now());
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
}

#[test]
fn missing_toolstack_nodes_wait_then_time_out() {
    let d = XenstoreDaemon::spawn(socket_path()).unwrap();
    let mut xs0 = connect(d.socket()).unwrap();
    xs0.introduce(FE_DOM, 0, 0).unwrap();
    xs0.mkdir("/local/domain/1").unwrap();
    xs0.set_perms("/local/domain/1", &[Perm::new(FE_DOM, PermAccess::None)])
        .unwrap();
    let mut fxs = connect_as(d.socket(), FE_DOM).unwrap();
    let mut cfg = FrontendConfig::new("device/vbd/51712", ConnectStyle::InitialisedFirst);
    cfg.step_timeout = Duration::from_secs(1);
    let mut fe = Frontend::new(cfg);
    let mut dev = Device::new();
    assert_eq!(
        fe.poll(&mut fxs, Duration::from_secs(10), &mut dev)
            .unwrap(),
        HandshakeEvent::Idle
    );
    assert_eq!(fe.phase(), Phase::FindBackend);
    let err = fe
        .poll(&mut fxs, Duration::from_secs(12), &mut dev)
        .unwrap_err();
    assert!(
        matches!(
            err,
            HandshakeError::Timeout {
                phase: HandshakePhase::Frontend(Phase::FindBackend),
                peer_state: None,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bad_toolstack_values_are_reported() {
    let d = XenstoreDaemon::spawn(socket_path()).unwrap();
    let mut xs0 = connect(d.socket()).unwrap();
    toolstack_create(&mut xs0, BE_DOM, 0);
    let mut fxs = connect_as(d.socket(), FE_DOM).unwrap();
    let mut dev = Device::new();
    for (key, value) in [
        ("backend-id", "2x"),
        ("backend-id", "70000"),
        ("backend-id", "32752"),
        ("backend", "relative/path"),
    ] {
        toolstack_create(&mut xs0, BE_DOM, 0);
        xs0.write(&format!("{}/{key}", fe_abs(0)), value).unwrap();
        let mut fe = Frontend::new(FrontendConfig::new(
            "device/vif/0",
            ConnectStyle::InitialisedFirst,
        ));
        let err = fe.poll(&mut fxs, Duration::ZERO, &mut dev).unwrap_err();
        match &err {
            HandshakeError::BadNode { path, .. } => assert!(path.ends_with(key), "{path}"),
            other => panic!("{key}={value}: {other:?}"),
        }
        assert!(err.to_string().contains("toolstack"));
        fe.unwatch(&mut fxs).unwrap();
    }
}

#[test]
fn hostile_backend_state_values_are_tolerated() {
    let (_d, _xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let clock = Clock(Instant::now());
    // Garbage before InitWait: the frontend keeps waiting.
    for garbage in [&b"9"[..], b"", b"04", b"\xff\xfe", b"2 ", &[b'2'; 2000][..]] {
        be.xs.write(&format!("{}/state", be.dir), garbage).unwrap();
        for _ in 0..3 {
            assert_eq!(
                fe.poll(&mut fxs, clock.now(), &mut dev).unwrap(),
                HandshakeEvent::Idle
            );
            fxs.pump_wait(Wait::For(Duration::from_millis(5))).unwrap();
        }
        assert_eq!(fe.phase(), Phase::WaitBackendInitWait);
    }
    be.set_state(XenbusState::InitWait);
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    // Garbage while connected does not disconnect.
    be.xs.write(&format!("{}/state", be.dir), "bogus").unwrap();
    for _ in 0..3 {
        assert_eq!(
            fe.poll(&mut fxs, clock.now(), &mut dev).unwrap(),
            HandshakeEvent::Idle
        );
        fxs.pump_wait(Wait::For(Duration::from_millis(5))).unwrap();
    }
    assert_eq!(fe.phase(), Phase::Connected);
}

#[test]
fn setup_failure_is_reported_with_the_device_error() {
    let (_d, mut xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let clock = Clock(Instant::now());
    let mut dev = Device::new();
    dev.fail_setup = Some("no free grant references".to_string());
    let end = Instant::now() + Duration::from_secs(5);
    let err = loop {
        assert!(Instant::now() < end, "no setup attempt");
        match fe.poll(&mut fxs, clock.now(), &mut dev) {
            Ok(_) => {}
            Err(e) => break e,
        }
        be.poll();
        fxs.pump_wait(Wait::For(Duration::from_millis(5))).unwrap();
    };
    assert!(
        matches!(&err, HandshakeError::Device { connection: 1, error: DeviceError::Device(m), .. } if m.contains("grant")),
        "{err:?}"
    );
    assert!(err.to_string().contains("connection 1"), "{err}");
    assert_eq!(fe.phase(), Phase::Failed);
    // Nothing was published, and no teardown follows a failed setup.
    let r: Result<Vec<u8>, XsError> = xs0.read(&format!("{}/ring-ref", fe_abs(0)));
    assert!(r.unwrap_err().is_not_found());
    assert!(dev.teardowns.is_empty());
    // Once the cause is gone, a restart connects with the next number.
    dev.fail_setup = None;
    fe.restart();
    let events = drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    let HandshakeEvent::Connected(conn) = events.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(conn.number, 2);
    assert_eq!(be.ring_refs, ["102"]);
}

#[test]
fn a_failed_publish_tears_the_connection_down() {
    // The publish transaction cannot be written (the frontend's
    // directory became read-only to it): the connection set up for it is
    // torn down, nothing stays published.
    let (_d, mut xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    xs0.set_perms(
        &fe_abs(0),
        &[
            Perm::new(0, PermAccess::None),
            Perm::new(FE_DOM, PermAccess::Read),
        ],
    )
    .unwrap();
    xs0.set_perms(
        &format!("{}/state", fe_abs(0)),
        &[Perm::new(FE_DOM, PermAccess::None)],
    )
    .unwrap();
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let clock = Clock(Instant::now());
    let mut dev = Device::new();
    let end = Instant::now() + Duration::from_secs(5);
    let err = loop {
        assert!(Instant::now() < end, "no publish attempt");
        match fe.poll(&mut fxs, clock.now(), &mut dev) {
            Ok(_) => {}
            Err(e) => break e,
        }
        be.poll();
        fxs.pump_wait(Wait::For(Duration::from_millis(5))).unwrap();
    };
    assert!(matches!(&err, HandshakeError::Store(_)), "{err:?}");
    assert_eq!(fe.phase(), Phase::Failed);
    assert_eq!(dev.teardowns, [(1, TeardownReason::Failed)]);
    assert!(xs0
        .read(&format!("{}/ring-ref", fe_abs(0)))
        .unwrap_err()
        .is_not_found());
    // The frontend withdrew (Closed), so no backend attaches to what it
    // released.
    assert_eq!(
        state_of(&mut xs0, &format!("{}/state", fe_abs(0))),
        XenbusState::Closed
    );
}

#[test]
fn a_conflicting_publish_is_retried_on_the_same_connection() {
    let (d, _xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let clock = Clock(Instant::now());
    let mut dev = Device::new();
    dev.conflict_once = Some(connect(d.socket()).unwrap());
    drive(
        &mut fe,
        &mut fxs,
        &mut dev,
        &mut [&mut be],
        &clock,
        is_connected,
    );
    // One setup, the publish ran twice for it (EAGAIN), same values.
    assert_eq!(dev.publishes.len(), 1);
    assert_eq!(dev.publish_calls, [1, 1]);
    assert_eq!(be.ring_refs, ["101"]);
    assert!(dev.teardowns.is_empty());
}

#[test]
fn run_until_connected_reports_a_disconnect_then_reconnects() {
    let (_d, _xs0, mut fxs, mut be) = setup(XenbusState::Initialised);
    let mut fe = Frontend::new(FrontendConfig::new(
        "device/vif/0",
        ConnectStyle::InitialisedFirst,
    ));
    let mut dev = Device::new();
    let start = Instant::now();
    // The simulated backend runs between the frontend's waits, driven from
    // the clock callback (no thread needed).
    let be_cell = std::cell::RefCell::new(&mut be);
    let mut clock = || {
        be_cell.borrow_mut().poll();
        start.elapsed()
    };
    let first = fe
        .run_until_connected(&mut fxs, &mut clock, &mut dev)
        .unwrap();
    assert_eq!(first.number, 1);
    be_cell.borrow_mut().set_state(XenbusState::Closed);
    let err = fe
        .run_until_connected(&mut fxs, &mut clock, &mut dev)
        .unwrap_err();
    assert_eq!(
        err,
        HandshakeError::Stopped {
            device: "device/vif/0".to_string(),
            event: HandshakeEvent::Disconnected {
                connection: 1,
                loss: PeerLoss::Closed
            }
        }
    );
    assert!(err.to_string().contains("poll again"), "{err}");
    assert_eq!(
        dev.teardowns,
        [(1, TeardownReason::PeerLost(PeerLoss::Closed))]
    );
    let second = fe
        .run_until_connected(&mut fxs, &mut clock, &mut dev)
        .unwrap();
    assert_eq!(second.number, 2);
    assert_eq!(be_cell.borrow().ring_refs, ["101", "102"]);
}
