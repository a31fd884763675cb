//! The xenbus backend handshake component against the frontend component,
//! both through the hosted xenstore daemon: connecting in block and
//! network styles, frontend restart, backend restarts with the directory
//! removed or intact (the new instance maps only a new connection's
//! keys), a frontend publishing bad keys, unplug, orderly closes,
//! deadlines.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hosted::xenstore::{connect, connect_as, UnixXenstore, XenstoreDaemon};
use xenbus::{
    Backend, BackendConfig, BackendPhase, ConnectStyle, ConnectWhen, Connection, Device,
    DeviceError, Frontend, FrontendConfig, FrontendPhase as Phase, HandshakeError, HandshakeEvent,
    HandshakePhase, PeerLoss, TeardownReason,
};
use xenbus::{Perm, PermAccess, Transaction, Transport, Wait, XenbusState, Xenstore, XsError};

const FE_DOM: u16 = 1;
const BE_DOM: u16 = 2;
const FE: &str = "/local/domain/1/device/vbd/51712";
const BE: &str = "/local/domain/2/backend/vbd/1/51712";

fn socket_path() -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "xs-be-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// libxl's layout: homes owned by their domains, device directories owned
/// by their end and readable by the other.
fn toolstack_create(xs: &mut UnixXenstore) {
    for d in [FE_DOM, BE_DOM] {
        if !xs.is_domain_introduced(d).unwrap() {
            xs.introduce(d, 0, 0).unwrap();
        }
    }
    xs.transaction(|tx| {
        for d in [FE_DOM, BE_DOM] {
            let home = format!("/local/domain/{d}");
            tx.mkdir(&home)?;
            tx.set_perms(&home, &[Perm::new(d, PermAccess::None)])?;
        }
        tx.mkdir(FE)?;
        tx.set_perms(
            FE,
            &[
                Perm::new(FE_DOM, PermAccess::None),
                Perm::new(BE_DOM, PermAccess::Read),
            ],
        )?;
        tx.write(&format!("{FE}/backend"), BE)?;
        tx.write(&format!("{FE}/backend-id"), BE_DOM.to_string())?;
        tx.write(&format!("{FE}/state"), "1")?;
        tx.mkdir(BE)?;
        tx.set_perms(
            BE,
            &[
                Perm::new(BE_DOM, PermAccess::None),
                Perm::new(FE_DOM, PermAccess::Read),
            ],
        )?;
        tx.write(&format!("{BE}/frontend"), FE)?;
        tx.write(&format!("{BE}/frontend-id"), FE_DOM.to_string())?;
        tx.write(&format!("{BE}/state"), "1")
    })
    .unwrap();
}

/// A backend device that checks the frontend's keys.
#[derive(Default)]
struct BackDev {
    /// The live connection: its number, ring-ref and port.
    mapped: Option<(u64, u32, u32)>,
    /// Every ring-ref this instance mapped.
    ring_refs: Vec<u32>,
    connects: u32,
    disconnects: u32,
}

impl<T: Transport> Device<T> for BackDev {
    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        tx.write(&conn.backend_key("feature-flush-cache"), "1")?;
        tx.write(&conn.backend_key("sectors"), "2048")
    }

    fn setup(&mut self, xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
        let num = |xs: &mut Xenstore<T>, key: &str| -> Result<u32, DeviceError> {
            let v = xs.read_string(&conn.frontend_key(key))?;
            v.parse::<u32>()
                .map_err(|_| DeviceError::Device(format!("{key} {v:?} is not a number")))
        };
        let rr = num(xs, "ring-ref")?;
        let port = num(xs, "event-channel")?;
        assert!(self.mapped.is_none(), "connect twice without disconnect");
        self.mapped = Some((conn.number, rr, port));
        self.ring_refs.push(rr);
        self.connects += 1;
        Ok(())
    }

    fn teardown(&mut self, conn: &Connection, _reason: TeardownReason) {
        let (number, _, _) = self.mapped.take().expect("disconnect without connect");
        assert_eq!(number, conn.number);
        self.disconnects += 1;
    }
}

/// The frontend device: a ring-ref per connection, `8 + number` (a bad
/// one for the first connection if asked).
#[derive(Default)]
struct FrontDev {
    bad_first: bool,
    /// Connections set up.
    publishes: u32,
    live: Option<(u64, String)>,
    teardowns: Vec<(u64, TeardownReason)>,
}

impl<T: Transport> Device<T> for FrontDev {
    fn setup(&mut self, _xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
        assert!(self.live.is_none(), "setup while {:?} is live", self.live);
        self.publishes += 1;
        let rr = if self.bad_first && conn.number == 1 {
            "8-bits".to_string()
        } else {
            format!("{}", 8 + conn.number)
        };
        self.live = Some((conn.number, rr));
        Ok(())
    }

    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        let (number, rr) = self.live.clone().expect("publish without setup");
        assert_eq!(number, conn.number);
        tx.write(&conn.frontend_key("ring-ref"), rr)?;
        tx.write(&conn.frontend_key("event-channel"), "3")
    }

    fn teardown(&mut self, conn: &Connection, reason: TeardownReason) {
        let (number, _) = self.live.take().expect("teardown without setup");
        assert_eq!(number, conn.number);
        self.teardowns.push((conn.number, reason));
    }
}

struct Rig {
    d: XenstoreDaemon,
    xs0: UnixXenstore,
    fxs: UnixXenstore,
    bxs: UnixXenstore,
    fe: Frontend,
    be: Backend,
    fdev: FrontDev,
    bdev: BackDev,
    start: Instant,
}

impl Rig {
    fn new(style: ConnectStyle, when: ConnectWhen) -> Rig {
        let d = XenstoreDaemon::spawn(socket_path()).unwrap();
        let mut xs0 = connect(d.socket()).unwrap();
        toolstack_create(&mut xs0);
        let fxs = connect_as(d.socket(), FE_DOM).unwrap();
        let bxs = connect_as(d.socket(), BE_DOM).unwrap();
        Rig {
            fe: Frontend::new(FrontendConfig::new("device/vbd/51712", style)),
            be: Backend::new(BackendConfig::new(BE, when)),
            d,
            xs0,
            fxs,
            bxs,
            fdev: FrontDev::default(),
            bdev: BackDev::default(),
            start: Instant::now(),
        }
    }

    /// Polls both ends until `done` says so (or 5 s pass); returns the
    /// non-idle events of each end.
    fn drive(
        &mut self,
        mut done: impl FnMut(&[HandshakeEvent], &[HandshakeEvent]) -> bool,
    ) -> (Vec<HandshakeEvent>, Vec<HandshakeEvent>) {
        let end = Instant::now() + Duration::from_secs(5);
        let (mut fev, mut bev) = (Vec::new(), Vec::new());
        loop {
            let now = self.start.elapsed();
            let f = self.fe.poll(&mut self.fxs, now, &mut self.fdev).unwrap();
            let b = self.be.poll(&mut self.bxs, now, &mut self.bdev).unwrap();
            if f != HandshakeEvent::Idle {
                fev.push(f);
            }
            if b != HandshakeEvent::Idle {
                bev.push(b);
            }
            if done(&fev, &bev) {
                return (fev, bev);
            }
            assert!(
                Instant::now() < end,
                "stuck: frontend {:?}, backend {:?}; events {fev:?} {bev:?}",
                self.fe.phase(),
                self.be.phase()
            );
            self.fxs
                .pump_wait(Wait::For(Duration::from_millis(2)))
                .unwrap();
        }
    }

    fn state(&mut self, path: &str) -> XenbusState {
        XenbusState::parse(&self.xs0.read(&format!("{path}/state")).unwrap()).unwrap()
    }
}

fn both_connected(f: &[HandshakeEvent], b: &[HandshakeEvent]) -> bool {
    f.iter().any(|e| matches!(e, HandshakeEvent::Connected(_)))
        && b.iter().any(|e| matches!(e, HandshakeEvent::Connected(_)))
}

#[test]
fn block_style_connects() {
    let mut r = Rig::new(
        ConnectStyle::InitialisedFirst,
        ConnectWhen::FrontendInitialised,
    );
    let (_, bev) = r.drive(both_connected);
    let HandshakeEvent::Connected(info) = &bev[0] else {
        panic!("{bev:?}")
    };
    assert_eq!(info.frontend, FE);
    assert_eq!(info.backend, BE);
    assert_eq!(info.peer, grant_tables::DomId(FE_DOM));
    assert_eq!(info.number, 1);
    assert_eq!(r.bdev.mapped, Some((1, 9, 3)));
    assert_eq!(
        (r.state(FE), r.state(BE)),
        (XenbusState::Connected, XenbusState::Connected)
    );
    // The advertised keys are there for the frontend to read.
    assert_eq!(r.fxs.read(&format!("{BE}/sectors")).unwrap(), b"2048");
}

#[test]
fn network_style_connects() {
    let mut r = Rig::new(
        ConnectStyle::ConnectedAtOnce,
        ConnectWhen::FrontendConnected,
    );
    r.drive(both_connected);
    assert_eq!(r.bdev.connects, 1);
}

#[test]
fn frontend_restart_reconnects() {
    let mut r = Rig::new(
        ConnectStyle::InitialisedFirst,
        ConnectWhen::FrontendInitialised,
    );
    r.drive(both_connected);
    // The guest reboots: a new frontend instance on a new connection.
    r.fxs = connect_as(r.d.socket(), FE_DOM).unwrap();
    r.fdev = FrontDev::default();
    r.fe = Frontend::new(FrontendConfig::new(
        "device/vbd/51712",
        ConnectStyle::InitialisedFirst,
    ));
    let (_, bev) = r.drive(both_connected);
    assert_eq!(
        bev[0],
        HandshakeEvent::Disconnected {
            connection: 1,
            loss: PeerLoss::Restarted
        }
    );
    // The backend's second connection.
    assert_eq!(r.be.connection().map(|c| c.number), Some(2));
    assert_eq!((r.bdev.connects, r.bdev.disconnects), (2, 1));
    assert_eq!(
        (r.state(FE), r.state(BE)),
        (XenbusState::Connected, XenbusState::Connected)
    );
}

/// A new backend instance (process restarted, state lost), on a new
/// xenstore connection.
fn restart_backend(r: &mut Rig) {
    r.bxs = connect_as(r.d.socket(), BE_DOM).unwrap();
    r.be = Backend::new(BackendConfig::new(BE, ConnectWhen::FrontendInitialised));
    r.bdev = BackDev::default();
}

fn connected_as(f: &[HandshakeEvent], number: u64) -> bool {
    f.iter()
        .any(|e| matches!(e, HandshakeEvent::Connected(c) if c.number == number))
}

#[test]
fn backend_restart_with_its_directory_removed() {
    let mut r = Rig::new(
        ConnectStyle::InitialisedFirst,
        ConnectWhen::FrontendInitialised,
    );
    r.drive(both_connected);
    // The backend process dies; the toolstack cleans up and recreates the
    // device; a new backend instance starts.
    restart_backend(&mut r);
    r.xs0.rm(BE).unwrap();
    let gone = HandshakeEvent::Disconnected {
        connection: 1,
        loss: PeerLoss::Gone,
    };
    let (fev, _) = r.drive(|f, _| f.contains(&gone));
    assert_eq!(fev, [gone]);
    toolstack_create(&mut r.xs0);
    let (fev, _) = r.drive(|f, b| connected_as(f, 2) && !b.is_empty());
    assert!(
        matches!(&fev[..], [HandshakeEvent::Connected(c)] if c.number == 2),
        "{fev:?}"
    );
    assert_eq!(r.fe.connections(), 2);
    assert_eq!(r.fdev.publishes, 2);
    assert_eq!(
        r.fdev.teardowns,
        [(1, TeardownReason::PeerLost(PeerLoss::Gone))]
    );
    // The new instance mapped the second connection's ring only.
    assert_eq!(r.bdev.ring_refs, [10]);
}

#[test]
fn backend_restart_with_its_directory_intact() {
    // The defect this guards against: a new backend instance that finds
    // the frontend still Connected from the previous instance's
    // connection must not map that connection's ring.
    for style in [
        (
            ConnectStyle::InitialisedFirst,
            ConnectWhen::FrontendInitialised,
        ),
        (
            ConnectStyle::ConnectedAtOnce,
            ConnectWhen::FrontendConnected,
        ),
    ] {
        let mut r = Rig::new(style.0, style.1);
        r.drive(both_connected);
        assert_eq!(r.bdev.ring_refs, [9]);
        r.bxs = connect_as(r.d.socket(), BE_DOM).unwrap();
        r.be = Backend::new(BackendConfig::new(BE, style.1));
        r.bdev = BackDev::default();
        let (fev, bev) = r.drive(|f, b| connected_as(f, 2) && !b.is_empty());
        assert_eq!(
            fev[0],
            HandshakeEvent::Disconnected {
                connection: 1,
                loss: PeerLoss::Closed
            },
            "{fev:?}"
        );
        assert!(
            matches!(&fev[1..], [HandshakeEvent::Connected(c)] if c.number == 2),
            "{fev:?}"
        );
        assert!(
            matches!(&bev[..], [HandshakeEvent::Connected(c)] if c.number == 1),
            "{bev:?}"
        );
        assert_eq!(
            r.bdev.ring_refs,
            [10],
            "the new backend mapped the old ring"
        );
        assert_eq!(r.bdev.mapped, Some((1, 10, 3)));
        assert_eq!(
            r.fdev.teardowns,
            [(1, TeardownReason::PeerLost(PeerLoss::Closed))]
        );
        assert_eq!(
            (r.state(FE), r.state(BE)),
            (XenbusState::Connected, XenbusState::Connected)
        );
    }
}

#[test]
fn backend_restart_while_the_frontend_waits_for_it() {
    // The frontend published for an instance that died before connecting:
    // the next instance does not take those keys either.
    let mut r = Rig::new(
        ConnectStyle::InitialisedFirst,
        ConnectWhen::FrontendInitialised,
    );
    let now = r.start.elapsed();
    r.be.poll(&mut r.bxs, now, &mut r.bdev).unwrap();
    assert_eq!(r.be.phase(), BackendPhase::WaitFrontend);
    let end = Instant::now() + Duration::from_secs(5);
    while r.fe.phase() != Phase::WaitBackendConnected {
        assert!(Instant::now() < end, "stuck in {:?}", r.fe.phase());
        let now = r.start.elapsed();
        r.fe.poll(&mut r.fxs, now, &mut r.fdev).unwrap();
        r.fxs
            .pump_wait(Wait::For(Duration::from_millis(2)))
            .unwrap();
    }
    restart_backend(&mut r);
    let (fev, _) = r.drive(|f, b| connected_as(f, 2) && !b.is_empty());
    assert_eq!(
        fev[0],
        HandshakeEvent::Disconnected {
            connection: 1,
            loss: PeerLoss::Closed
        }
    );
    assert_eq!(r.bdev.ring_refs, [10]);
}

#[test]
fn repeated_backend_restarts_each_get_a_new_connection() {
    let mut r = Rig::new(
        ConnectStyle::InitialisedFirst,
        ConnectWhen::FrontendInitialised,
    );
    r.drive(both_connected);
    for round in 1..=8u64 {
        let removed = round % 2 == 0;
        restart_backend(&mut r);
        if removed {
            r.xs0.rm(BE).unwrap();
            r.drive(|f, _| {
                f.iter()
                    .any(|e| matches!(e, HandshakeEvent::Disconnected { .. }))
            });
            toolstack_create(&mut r.xs0);
        }
        let next = round + 1;
        let (fev, _) = r.drive(|f, b| connected_as(f, next) && !b.is_empty());
        assert!(
            fev.iter()
                .all(|e| !matches!(e, HandshakeEvent::Connected(c) if c.number != next)),
            "round {round}: {fev:?}"
        );
        assert_eq!(r.bdev.ring_refs, [8 + next as u32], "round {round}");
        assert_eq!(r.fdev.teardowns.len() as u64, round);
        assert_eq!(r.fdev.teardowns.last().unwrap().0, round);
    }
}

#[test]
fn bad_frontend_keys_fail_the_connection_until_fixed() {
    let mut r = Rig::new(
        ConnectStyle::InitialisedFirst,
        ConnectWhen::FrontendInitialised,
    );
    r.fdev.bad_first = true;
    let (fev, bev) = r.drive(both_connected);
    assert!(
        matches!(&bev[0], HandshakeEvent::Refused { connection: 1, error: DeviceError::Device(m) } if m.contains("ring-ref")),
        "{bev:?}"
    );
    // The frontend saw the backend close and started over.
    assert_eq!(
        fev[0],
        HandshakeEvent::Disconnected {
            connection: 1,
            loss: PeerLoss::Closing
        }
    );
    assert_eq!(r.bdev.mapped, Some((2, 10, 3)));
    assert_eq!(r.bdev.connects, 1);
}

#[test]
fn frontend_close_then_backend_waits() {
    let mut r = Rig::new(
        ConnectStyle::InitialisedFirst,
        ConnectWhen::FrontendInitialised,
    );
    r.drive(both_connected);
    let now = r.start.elapsed();
    r.fe.close(&mut r.fxs, now).unwrap();
    let (fev, bev) = r.drive(|f, b| f.contains(&HandshakeEvent::Closed) && !b.is_empty());
    assert_eq!(fev, [HandshakeEvent::Closed]);
    assert_eq!(
        bev,
        [HandshakeEvent::Disconnected {
            connection: 1,
            loss: PeerLoss::Closing
        }]
    );
    assert_eq!(r.fdev.teardowns, [(1, TeardownReason::Closed)]);
    // The backend follows to Closed and waits for a new frontend.
    r.drive(|_, _| true);
    let end = Instant::now() + Duration::from_secs(2);
    while r.be.phase() != BackendPhase::Closed && Instant::now() < end {
        r.drive(|_, _| true);
    }
    assert_eq!(r.be.phase(), BackendPhase::Closed);
    assert_eq!(r.state(BE), XenbusState::Closed);
    assert_eq!(r.bdev.disconnects, 1);
}

#[test]
fn unplug_closes_both_and_removal_is_reported() {
    let mut r = Rig::new(
        ConnectStyle::InitialisedFirst,
        ConnectWhen::FrontendInitialised,
    );
    r.drive(both_connected);
    // The toolstack asks the backend to go away ...
    let now = r.start.elapsed();
    r.be.close(&mut r.bxs, now).unwrap();
    let (fev, bev) = r.drive(|_, b| b.contains(&HandshakeEvent::Closed));
    assert_eq!(
        fev[0],
        HandshakeEvent::Disconnected {
            connection: 1,
            loss: PeerLoss::Closing
        }
    );
    assert_eq!(r.be.phase(), BackendPhase::Shut);
    assert_eq!(r.bdev.disconnects, 1);
    assert_eq!(bev, [HandshakeEvent::Closed]);
    // ... then removes the device.
    r.xs0.rm(FE).unwrap();
    r.xs0.rm(BE).unwrap();
    let (fev, _) = r.drive(|f, _| f.contains(&HandshakeEvent::Removed));
    assert!(fev.ends_with(&[HandshakeEvent::Removed]), "{fev:?}");
    assert_eq!(r.fe.phase(), Phase::Shut);
}

#[test]
fn backend_removed_while_connected() {
    let mut r = Rig::new(
        ConnectStyle::InitialisedFirst,
        ConnectWhen::FrontendInitialised,
    );
    r.drive(both_connected);
    r.xs0.rm(BE).unwrap();
    let (_, bev) = r.drive(|_, b| b.contains(&HandshakeEvent::Removed));
    assert_eq!(bev, [HandshakeEvent::Removed]);
    assert_eq!(r.bdev.disconnects, 1);
    assert!(r.bdev.mapped.is_none());
}

#[test]
fn backend_deadline_for_the_frontend() {
    let d = XenstoreDaemon::spawn(socket_path()).unwrap();
    let mut xs0 = connect(d.socket()).unwrap();
    toolstack_create(&mut xs0);
    let mut bxs = connect_as(d.socket(), BE_DOM).unwrap();
    let mut cfg = BackendConfig::new(BE, ConnectWhen::FrontendInitialised);
    cfg.frontend_timeout = Some(Duration::from_secs(30));
    let mut be = Backend::new(cfg);
    let mut dev = BackDev::default();
    assert_eq!(
        be.poll(&mut bxs, Duration::from_secs(1), &mut dev).unwrap(),
        HandshakeEvent::Idle
    );
    assert_eq!(be.phase(), BackendPhase::WaitFrontend);
    assert_eq!(
        XenbusState::parse(&xs0.read(&format!("{BE}/state")).unwrap()).unwrap(),
        XenbusState::InitWait
    );
    let err = be
        .poll(&mut bxs, Duration::from_secs(40), &mut dev)
        .unwrap_err();
    assert!(
        matches!(
            err,
            HandshakeError::Timeout {
                phase: HandshakePhase::Backend(BackendPhase::WaitFrontend),
                peer_state: Some(XenbusState::Initialising),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("frontend driver"));
}
