//! The xenbus backend handshake component against the frontend component,
//! both through the hosted xenstore daemon: connecting in block and
//! network styles, frontend restart, backend crash and restart, a frontend
//! publishing bad keys, unplug, orderly closes, deadlines.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hosted::xenstore::{connect, connect_as, UnixXenstore, XenstoreDaemon};
use xenbus::backend::{
    Backend, BackendConfig, BackendDevice, BackendEvent, BackendPhase, ConnectWhen, FrontendInfo,
    FrontendLoss,
};
use xenbus::frontend::{
    BackendInfo, ConnectStyle, DisconnectReason, Frontend, FrontendConfig, HandshakeError,
    HandshakeEvent, Phase, PublishError,
};
use xenbus::{Perm, PermAccess, Transaction, Transport, Wait, XenbusState, Xenstore};

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
    mapped: Option<(u32, u32)>,
    connects: u32,
    disconnects: u32,
}

impl<T: Transport> BackendDevice<T> for BackDev {
    fn advertise(
        &mut self,
        tx: &mut Transaction<'_, T>,
        info: &FrontendInfo,
    ) -> Result<(), PublishError> {
        tx.write(&info.backend_key("feature-flush-cache"), "1")?;
        tx.write(&info.backend_key("sectors"), "2048")?;
        Ok(())
    }

    fn connect(&mut self, xs: &mut Xenstore<T>, info: &FrontendInfo) -> Result<(), PublishError> {
        let num = |xs: &mut Xenstore<T>, key: &str| -> Result<u32, PublishError> {
            let v = xs.read_string(&info.frontend_key(key))?;
            v.parse::<u32>()
                .map_err(|_| PublishError::Device(format!("{key} {v:?} is not a number")))
        };
        let rr = num(xs, "ring-ref")?;
        let port = num(xs, "event-channel")?;
        assert!(self.mapped.is_none(), "connect twice without disconnect");
        self.mapped = Some((rr, port));
        self.connects += 1;
        Ok(())
    }

    fn disconnect(&mut self, _info: &FrontendInfo) {
        assert!(self.mapped.take().is_some(), "disconnect without connect");
        self.disconnects += 1;
    }
}

/// The frontend device: publishes `ring-ref` (a bad one first if asked).
struct FrontDev {
    bad_first: bool,
    publishes: u32,
}

impl FrontDev {
    fn publish<T: Transport>(
        &mut self,
        tx: &mut Transaction<'_, T>,
        be: &BackendInfo,
    ) -> Result<(), PublishError> {
        self.publishes += 1;
        let rr = if self.bad_first && self.publishes == 1 {
            "8-bits".to_string()
        } else {
            format!("{}", 8 + self.publishes)
        };
        tx.write(&be.frontend_key("ring-ref"), rr)?;
        tx.write(&be.frontend_key("event-channel"), "3")?;
        Ok(())
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
            fdev: FrontDev {
                bad_first: false,
                publishes: 0,
            },
            bdev: BackDev::default(),
            start: Instant::now(),
        }
    }

    /// Polls both ends until `done` says so (or 5 s pass); returns the
    /// non-idle events of each end.
    fn drive(
        &mut self,
        mut done: impl FnMut(&[HandshakeEvent], &[BackendEvent]) -> bool,
    ) -> (Vec<HandshakeEvent>, Vec<BackendEvent>) {
        let end = Instant::now() + Duration::from_secs(5);
        let (mut fev, mut bev) = (Vec::new(), Vec::new());
        loop {
            let now = self.start.elapsed();
            let f = self
                .fe
                .poll(&mut self.fxs, now, |tx, b| self.fdev.publish(tx, b))
                .unwrap();
            let b = self.be.poll(&mut self.bxs, now, &mut self.bdev).unwrap();
            if f != HandshakeEvent::Idle {
                fev.push(f);
            }
            if b != BackendEvent::Idle {
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

fn both_connected(f: &[HandshakeEvent], b: &[BackendEvent]) -> bool {
    f.iter().any(|e| matches!(e, HandshakeEvent::Connected(_)))
        && b.iter().any(|e| matches!(e, BackendEvent::Connected(_)))
}

#[test]
fn block_style_connects() {
    let mut r = Rig::new(
        ConnectStyle::InitialisedFirst,
        ConnectWhen::FrontendInitialised,
    );
    let (_, bev) = r.drive(both_connected);
    let BackendEvent::Connected(info) = &bev[0] else {
        panic!("{bev:?}")
    };
    assert_eq!(info.frontend, FE);
    assert_eq!(info.frontend_id, grant_tables::DomId(FE_DOM));
    assert_eq!(r.bdev.mapped, Some((9, 3)));
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
    r.fe = Frontend::new(FrontendConfig::new(
        "device/vbd/51712",
        ConnectStyle::InitialisedFirst,
    ));
    let (_, bev) = r.drive(both_connected);
    assert_eq!(bev[0], BackendEvent::Disconnected(FrontendLoss::Restarted));
    assert_eq!((r.bdev.connects, r.bdev.disconnects), (2, 1));
    assert_eq!(
        (r.state(FE), r.state(BE)),
        (XenbusState::Connected, XenbusState::Connected)
    );
}

#[test]
fn backend_crash_and_restart() {
    let mut r = Rig::new(
        ConnectStyle::InitialisedFirst,
        ConnectWhen::FrontendInitialised,
    );
    r.drive(both_connected);
    // The backend process dies; the toolstack cleans up and recreates the
    // device; a new backend instance starts.
    r.bxs = connect_as(r.d.socket(), BE_DOM).unwrap();
    r.be = Backend::new(BackendConfig::new(BE, ConnectWhen::FrontendInitialised));
    r.bdev = BackDev::default();
    r.xs0.rm(BE).unwrap();
    let (fev, _) =
        r.drive(|f, _| f.contains(&HandshakeEvent::Disconnected(DisconnectReason::BackendGone)));
    assert_eq!(
        fev,
        [HandshakeEvent::Disconnected(DisconnectReason::BackendGone)]
    );
    toolstack_create(&mut r.xs0);
    r.drive(both_connected);
    assert_eq!(r.fe.connections(), 2);
    assert_eq!(r.fdev.publishes, 2);
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
        matches!(&bev[0], BackendEvent::ConnectFailed(PublishError::Device(m)) if m.contains("ring-ref")),
        "{bev:?}"
    );
    // The frontend saw the backend close and started over.
    assert_eq!(
        fev[0],
        HandshakeEvent::Disconnected(DisconnectReason::BackendClosing)
    );
    assert_eq!(r.bdev.mapped, Some((10, 3)));
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
    assert_eq!(bev, [BackendEvent::Disconnected(FrontendLoss::Closing)]);
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
    let (fev, bev) = r.drive(|_, b| b.contains(&BackendEvent::Closed));
    assert_eq!(
        fev[0],
        HandshakeEvent::Disconnected(DisconnectReason::BackendClosing)
    );
    assert_eq!(r.be.phase(), BackendPhase::Shut);
    assert_eq!(bev, [BackendEvent::Closed]);
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
    let (_, bev) = r.drive(|_, b| b.contains(&BackendEvent::Removed));
    assert_eq!(bev, [BackendEvent::Removed]);
    assert_eq!(r.bdev.disconnects, 1);
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
        BackendEvent::Idle
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
            HandshakeError::BackendTimeout {
                phase: BackendPhase::WaitFrontend,
                frontend_state: Some(XenbusState::Initialising),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("frontend driver"));
}
