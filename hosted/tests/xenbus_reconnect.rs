//! Reconnection with real rings and grants on the hosted platform: a
//! frontend (dom1) and a backend (dom2) in this process, connected through
//! the hosted xenstore daemon by `xenbus::Frontend` and `xenbus::Backend`,
//! each with a device that sets up real resources (a granted ring page and
//! an event channel on the frontend; the mapped ring and a bound channel on
//! the backend).
//!
//! A backend that restarts, with its directory intact or removed, must
//! not map the ring of an earlier connection: the frontend sees a
//! `Disconnected` then a `Connected` on new rings (new grant refs, mapped
//! by the new backend), and the requests in flight on the old ring are
//! handed back to the driver at teardown and re-issued on the new one.

#[path = "platform_common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::TestDir;
use grant_tables::{
    Access, BackRing, DomId, EventChannels, FrontRing, GrantRef, PageAllocator, Port, SharedPages,
};
use hosted::toolstack::{add_device, DeviceSpec};
use hosted::xenstore::{connect_as, UnixXenstore, XenstoreDaemon};
use hosted::{HostedHypervisor, HostedPages, HostedPlatform, MappedRing};
use xenbus::{
    Backend, BackendConfig, ConnectStyle, ConnectWhen, Connection, Device, DeviceError, Frontend,
    FrontendConfig, HandshakeEvent, PeerLoss, TeardownReason, Transaction, Transport, Wait,
    Xenstore, XsError,
};

const FE: DomId = DomId(1);
const BE: DomId = DomId(2);

/// The frontend's resources for one connection.
struct FrontLive {
    number: u64,
    ring: FrontRing<u64, u64, HostedPages>,
    grant: GrantRef,
    port: Port,
}

/// A test driver: request ids go on the ring; the ones in flight when a
/// connection ends are handed back for re-issue.
struct RingFront<'p> {
    plat: &'p HostedPlatform,
    live: Option<FrontLive>,
    /// Ids on the live ring without a response.
    in_flight: BTreeSet<u64>,
    /// Ids handed back at teardown, waiting for the next connection.
    reissue: Vec<u64>,
    /// Ids handed back by the last teardown (what reached the re-issue
    /// point).
    last_handed_back: Vec<u64>,
    /// Completed ids, in completion order.
    completed: Vec<u64>,
    /// (connection, ring-ref) of every connection set up.
    refs: Vec<(u64, u32)>,
    /// Grants whose end of access failed (the backend still mapped them).
    quarantined: usize,
}

impl<'p> RingFront<'p> {
    fn new(plat: &'p HostedPlatform) -> Self {
        RingFront {
            plat,
            live: None,
            in_flight: BTreeSet::new(),
            reissue: Vec::new(),
            last_handed_back: Vec::new(),
            completed: Vec::new(),
            refs: Vec::new(),
            quarantined: 0,
        }
    }

    /// Puts `id` on the live ring (or keeps it for the next connection).
    fn submit(&mut self, id: u64) {
        let Some(live) = &mut self.live else {
            self.reissue.push(id);
            return;
        };
        live.ring.put_request(id).unwrap();
        if live.ring.push_requests() {
            self.plat.notify(live.port).unwrap();
        }
        assert!(self.in_flight.insert(id), "request {id} submitted twice");
    }

    /// Re-issues what earlier connections left in flight.
    fn resume(&mut self) {
        for id in std::mem::take(&mut self.reissue) {
            self.submit(id);
        }
    }

    /// Collects the responses on the live ring.
    fn reap(&mut self) {
        let Some(live) = &mut self.live else { return };
        while let Some(id) = live.ring.take_response().unwrap() {
            assert!(
                self.in_flight.remove(&id),
                "response for {id}, not in flight"
            );
            self.completed.push(id);
        }
    }
}

impl<T: Transport> Device<T> for RingFront<'_> {
    fn setup(&mut self, _xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
        assert!(self.live.is_none(), "setup while a connection is live");
        let err = |e: &dyn std::fmt::Display| DeviceError::Device(e.to_string());
        let page = self.plat.alloc_zeroed_pages(1).map_err(|e| err(&e))?;
        let gfn = page.gfn(0).ok_or_else(|| err(&"no frame"))?;
        let grant = self
            .plat
            .grant_table()
            .grant_access(conn.peer, gfn, Access::ReadWrite)
            .map_err(|e| err(&e))?;
        let port = self.plat.alloc_unbound(conn.peer).map_err(|e| err(&e))?;
        let ring = FrontRing::init(page).map_err(|e| err(&e))?;
        self.refs.push((conn.number, grant.raw()));
        self.live = Some(FrontLive {
            number: conn.number,
            ring,
            grant,
            port,
        });
        Ok(())
    }

    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        let live = self.live.as_ref().expect("publish without setup");
        assert_eq!(live.number, conn.number);
        tx.write(&conn.frontend_key("ring-ref"), live.grant.raw().to_string())?;
        tx.write(&conn.frontend_key("event-channel"), live.port.0.to_string())?;
        tx.write(
            &conn.frontend_key("test-connection"),
            conn.number.to_string(),
        )
    }

    fn teardown(&mut self, conn: &Connection, reason: TeardownReason) {
        // Responses already on the old ring still count.
        self.reap();
        let live = self.live.take().expect("teardown without setup");
        assert_eq!(live.number, conn.number);
        let back: Vec<u64> = std::mem::take(&mut self.in_flight).into_iter().collect();
        self.last_handed_back = back.clone();
        match reason {
            TeardownReason::PeerLost(_) => self.reissue.extend(back),
            other => assert!(back.is_empty(), "{other:?} with requests in flight"),
        }
        self.plat.close(live.port).unwrap();
        let page = live.ring.into_memory();
        if self
            .plat
            .grant_table()
            .end_access_with_page(live.grant, page)
            .is_err()
        {
            self.quarantined += 1;
        }
    }
}

/// The backend's resources for one connection.
struct BackLive {
    number: u64,
    ring: BackRing<u64, u64, MappedRing>,
    port: Port,
}

/// A test backend: echoes request ids, or holds them unanswered.
struct RingBack<'p> {
    plat: &'p HostedPlatform,
    live: Option<BackLive>,
    /// (frontend connection, ring-ref) of every ring this instance mapped.
    mapped: Vec<(u64, u32)>,
    /// Ids taken off the ring and not answered.
    held: Vec<u64>,
}

impl<'p> RingBack<'p> {
    fn new(plat: &'p HostedPlatform) -> Self {
        RingBack {
            plat,
            live: None,
            mapped: Vec::new(),
            held: Vec::new(),
        }
    }

    /// Takes up to `answer + hold` requests: answers the first `answer`,
    /// holds the rest.
    fn serve(&mut self, answer: usize, hold: usize) -> usize {
        let Some(live) = &mut self.live else { return 0 };
        let mut taken = 0;
        while taken < answer + hold {
            let Some(id) = live.ring.take_request().unwrap() else {
                break;
            };
            if taken < answer {
                live.ring.put_response(id).unwrap();
            } else {
                self.held.push(id);
            }
            taken += 1;
        }
        if live.ring.push_responses() {
            self.plat.notify(live.port).unwrap();
        }
        taken
    }
}

impl<T: Transport> Device<T> for RingBack<'_> {
    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        tx.write(&conn.backend_key("feature-test-echo"), "1")
    }

    fn setup(&mut self, xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
        assert!(self.live.is_none(), "setup while a connection is live");
        let num = |xs: &mut Xenstore<T>, key: &str| -> Result<u64, DeviceError> {
            let v = xs.read_string(&conn.frontend_key(key))?;
            v.parse()
                .map_err(|_| DeviceError::Device(format!("{key} {v:?} is not a number")))
        };
        let gref = u32::try_from(num(xs, "ring-ref")?)
            .map_err(|_| DeviceError::Device("ring-ref out of range".into()))?;
        let port = u32::try_from(num(xs, "event-channel")?)
            .map_err(|_| DeviceError::Device("event-channel out of range".into()))?;
        let fe_conn = num(xs, "test-connection")?;
        let mem = self
            .plat
            .map_ring(conn.peer, &[gref])
            .map_err(|e| DeviceError::Device(format!("mapping ring-ref {gref}: {e}")))?;
        let ring = BackRing::new(mem).map_err(|e| DeviceError::Device(e.to_string()))?;
        let port = self
            .plat
            .bind_interdomain(conn.peer, Port(port))
            .map_err(|e| DeviceError::Device(e.to_string()))?;
        self.mapped.push((fe_conn, gref));
        self.live = Some(BackLive {
            number: conn.number,
            ring,
            port,
        });
        Ok(())
    }

    fn teardown(&mut self, conn: &Connection, _reason: TeardownReason) {
        let live = self.live.take().expect("teardown without setup");
        assert_eq!(live.number, conn.number);
        self.held.clear();
        let _ = self.plat.close(live.port);
        // Dropping the ring unmaps it.
    }
}

impl Drop for RingBack<'_> {
    fn drop(&mut self) {
        // A backend process that dies loses its mappings and channels.
        if let Some(live) = self.live.take() {
            let _ = self.plat.close(live.port);
        }
    }
}

/// Two domains, a xenstore daemon and a device between them.
struct World {
    _dir: TestDir,
    _hv: HostedHypervisor,
    daemon: XenstoreDaemon,
    xs0: UnixXenstore,
    front: HostedPlatform,
    back: HostedPlatform,
    spec: DeviceSpec,
}

impl World {
    fn new(tag: &str) -> World {
        let dir = TestDir::new(tag);
        let hv = HostedHypervisor::create(&dir.0).unwrap();
        let front = hv.join(FE).unwrap();
        let back = hv.join(BE).unwrap();
        let daemon = XenstoreDaemon::spawn(dir.0.join("xenstored.sock")).unwrap();
        let mut xs0 = connect_as(daemon.socket(), 0).unwrap();
        let spec = DeviceSpec::new("vbd", FE, BE, 51712);
        add_device(&mut xs0, &spec).unwrap();
        World {
            _dir: dir,
            _hv: hv,
            daemon,
            xs0,
            front,
            back,
            spec,
        }
    }

    fn xs(&self, domid: DomId) -> UnixXenstore {
        connect_as(self.daemon.socket(), domid.0).unwrap()
    }
}

/// What the toolstack does when it brings a backend's directory back
/// (the frontend's directory stays).
fn recreate_backend_dir(xs0: &mut UnixXenstore, spec: &DeviceSpec) {
    let be = spec.backend_path();
    let fe = spec.frontend_path();
    xs0.transaction(|tx| {
        tx.mkdir(&be)?;
        tx.set_perms(
            &be,
            &[
                xenbus::Perm::new(BE.0, xenbus::PermAccess::None),
                xenbus::Perm::new(FE.0, xenbus::PermAccess::Read),
            ],
        )?;
        tx.write(&format!("{be}/frontend"), &fe)?;
        tx.write(&format!("{be}/frontend-id"), FE.0.to_string())?;
        tx.write(&format!("{be}/online"), "1")?;
        tx.write(&format!("{be}/state"), "1")
    })
    .unwrap();
}

fn front_config(w: &World) -> FrontendConfig {
    let rel = w
        .spec
        .frontend_path()
        .strip_prefix(&format!("/local/domain/{}/", FE.0))
        .unwrap()
        .to_string();
    FrontendConfig::new(rel, ConnectStyle::InitialisedFirst)
}

fn back_config(w: &World) -> BackendConfig {
    BackendConfig::new(w.spec.backend_path(), ConnectWhen::FrontendInitialised)
}

/// One backend instance: its own xenstore connection, handshake and
/// device (dropping it is the process dying).
struct BackInstance<'p> {
    xs: UnixXenstore,
    be: Backend,
    dev: RingBack<'p>,
}

/// Polls both ends until `done` says so (5 s at most); returns the
/// non-idle events of each end.
fn drive<'p>(
    fe: &mut Frontend,
    fxs: &mut UnixXenstore,
    front: &mut RingFront<'_>,
    back: &mut Option<BackInstance<'p>>,
    start: Instant,
    mut done: impl FnMut(&[HandshakeEvent], &[HandshakeEvent]) -> bool,
) -> (Vec<HandshakeEvent>, Vec<HandshakeEvent>) {
    let end = Instant::now() + Duration::from_secs(5);
    let (mut fev, mut bev) = (Vec::new(), Vec::new());
    loop {
        let f = fe.poll(fxs, start.elapsed(), front).unwrap();
        if f != HandshakeEvent::Idle {
            fev.push(f);
        }
        if let Some(b) = back {
            let e = b.be.poll(&mut b.xs, start.elapsed(), &mut b.dev).unwrap();
            if e != HandshakeEvent::Idle {
                bev.push(e);
            }
        }
        if done(&fev, &bev) {
            return (fev, bev);
        }
        assert!(
            Instant::now() < end,
            "stuck: frontend {:?}, backend {:?}; events {fev:?} {bev:?}",
            fe.phase(),
            back.as_ref().map(|b| b.be.phase())
        );
        fxs.pump_wait(Wait::For(Duration::from_millis(1))).unwrap();
    }
}

fn connected(events: &[HandshakeEvent]) -> Option<&Connection> {
    events.iter().rev().find_map(|e| match e {
        HandshakeEvent::Connected(c) => Some(c),
        _ => None,
    })
}

/// Connects, leaves requests in flight (some taken by the backend and
/// held, some never taken), restarts the backend, and checks that the
/// in-flight requests reach the re-issue point and complete on the new
/// connection's rings, which the new backend maps.
fn restart_with_requests_in_flight(remove_dir: bool) {
    let mut w = World::new(if remove_dir {
        "rc-removed"
    } else {
        "rc-intact"
    });
    let spec = w.spec.clone();
    let start = Instant::now();
    let mut fxs = w.xs(FE);
    let mut fe = Frontend::new(front_config(&w));
    let mut front = RingFront::new(&w.front);
    let mut back = Some(BackInstance {
        xs: w.xs(BE),
        be: Backend::new(back_config(&w)),
        dev: RingBack::new(&w.back),
    });
    let (fev, _) = drive(&mut fe, &mut fxs, &mut front, &mut back, start, |f, b| {
        connected(f).is_some() && connected(b).is_some()
    });
    assert_eq!(connected(&fev).unwrap().number, 1);
    let first_ref = front.refs[0].1;
    assert_eq!(back.as_ref().unwrap().dev.mapped, [(1, first_ref)]);

    // Eight requests: three answered, two taken and held, three left on
    // the ring.
    for id in 1..=8 {
        front.submit(id);
    }
    let b = back.as_mut().unwrap();
    assert_eq!(b.dev.serve(3, 2), 5);
    assert_eq!(b.dev.held, [4, 5]);
    front.reap();
    assert_eq!(front.completed, [1, 2, 3]);

    // The backend process dies (its mappings go with it) and a new
    // instance starts, with or without the toolstack recreating its
    // directory in between.
    drop(back.take());
    if remove_dir {
        w.xs0.rm(&spec.backend_path()).unwrap();
        let (fev, _) = drive(&mut fe, &mut fxs, &mut front, &mut back, start, |f, _| {
            !f.is_empty()
        });
        assert_eq!(
            fev,
            [HandshakeEvent::Disconnected {
                connection: 1,
                loss: PeerLoss::Gone
            }]
        );
        recreate_backend_dir(&mut w.xs0, &spec);
    }
    back = Some(BackInstance {
        xs: w.xs(BE),
        be: Backend::new(back_config(&w)),
        dev: RingBack::new(&w.back),
    });
    let (fev, bev) = drive(&mut fe, &mut fxs, &mut front, &mut back, start, |f, b| {
        connected(f).is_some() && connected(b).is_some()
    });
    if !remove_dir {
        assert_eq!(
            fev[0],
            HandshakeEvent::Disconnected {
                connection: 1,
                loss: PeerLoss::Closed
            },
            "{fev:?}"
        );
    }
    let conn = connected(&fev).unwrap();
    assert_eq!(conn.number, 2, "{fev:?}");
    assert_eq!(connected(&bev).unwrap().number, 1);
    // The requests in flight reached the re-issue point, in order.
    assert_eq!(front.last_handed_back, [4, 5, 6, 7, 8]);
    assert_eq!(front.reissue, [4, 5, 6, 7, 8]);
    // New rings: a new grant, mapped by the new backend, which never
    // mapped the first connection's.
    let second_ref = front.refs[1].1;
    assert_eq!(front.refs, [(1, first_ref), (2, second_ref)]);
    assert_ne!(second_ref, first_ref);
    assert_eq!(back.as_ref().unwrap().dev.mapped, [(2, second_ref)]);
    // The old grant was ended cleanly: its mapping died with the backend.
    assert_eq!(front.quarantined, 0);

    // Re-issued on the new connection, everything completes, once.
    front.resume();
    assert!(front.reissue.is_empty());
    let b = back.as_mut().unwrap();
    assert_eq!(b.dev.serve(usize::MAX / 2, 0), 5);
    front.reap();
    assert_eq!(front.completed, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(front.in_flight.is_empty());

    // An orderly close releases everything: no grant or page leaked.
    fe.close(&mut fxs, start.elapsed()).unwrap();
    drive(&mut fe, &mut fxs, &mut front, &mut back, start, |f, b| {
        f.contains(&HandshakeEvent::Closed) && !b.is_empty()
    });
    assert!(front.live.is_none());
    assert_eq!(w.front.grant_table().quarantined_count(), 0);
    assert_eq!(w.front.pages_in_use(), 0);
}

#[test]
fn backend_restart_with_its_directory_intact_reissues_in_flight_requests() {
    restart_with_requests_in_flight(false);
}

#[test]
fn backend_restart_with_its_directory_removed_reissues_in_flight_requests() {
    restart_with_requests_in_flight(true);
}

/// A small deterministic generator for the restart timings.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// The backend restarts again and again from its own thread, at random
/// points of the handshake and of the traffic (sometimes with its
/// directory removed and recreated), while the frontend keeps requests in
/// flight. No backend instance maps a frontend connection that any
/// instance mapped before, every request completes exactly once, and the
/// frontend's events alternate Connected and Disconnected of the same
/// connection.
#[test]
fn backend_restarted_many_times_from_its_own_thread() {
    const RESTARTS: u32 = 25;
    const REQUESTS_MIN: u64 = 400;
    let w = World::new("rc-threads");
    let start = Instant::now();
    let backend_path = w.spec.backend_path();
    let back_cfg = back_config(&w);
    let fe_cfg = front_config(&w);
    let mut xs0 = w.xs(DomId(0));
    let done = std::sync::atomic::AtomicBool::new(false);
    let restarts_done = std::sync::atomic::AtomicBool::new(false);
    let seed = u64::from(std::process::id()) | 1;
    let (mapped, answered) = std::thread::scope(|s| {
        let backend = s.spawn(|| {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut mapped: Vec<(u64, u32)> = Vec::new();
            let mut answered = 0usize;
            let mut instance = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                instance += 1;
                let last = instance > RESTARTS;
                if last {
                    restarts_done.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                let mut b = BackInstance {
                    xs: w.xs(BE),
                    be: Backend::new(back_cfg.clone()),
                    dev: RingBack::new(&w.back),
                };
                let life = Duration::from_micros(rng.next(40_000));
                let born = Instant::now();
                while (last || born.elapsed() < life)
                    && !done.load(std::sync::atomic::Ordering::SeqCst)
                {
                    b.be.poll(&mut b.xs, start.elapsed(), &mut b.dev).unwrap();
                    answered += b.dev.serve(8, 0);
                    b.xs.pump_wait(Wait::For(Duration::from_micros(200)))
                        .unwrap();
                }
                mapped.extend(b.dev.mapped.iter().copied());
                drop(b);
                if !last && rng.next(3) == 0 {
                    xs0.rm(&backend_path).unwrap();
                    std::thread::sleep(Duration::from_micros(rng.next(5_000)));
                    recreate_backend_dir(&mut xs0, &w.spec);
                }
            }
            (mapped, answered)
        });

        let mut fxs = w.xs(FE);
        let mut fe = Frontend::new(fe_cfg);
        let mut front = RingFront::new(&w.front);
        let mut next_id = 1u64;
        let mut current: Option<u64> = None;
        let mut connected_numbers = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "phase {:?}", fe.phase());
            match fe.poll(&mut fxs, start.elapsed(), &mut front).unwrap() {
                HandshakeEvent::Connected(c) => {
                    assert_eq!(current, None, "connected twice");
                    assert!(connected_numbers.last() < Some(&c.number));
                    connected_numbers.push(c.number);
                    current = Some(c.number);
                    front.resume();
                }
                HandshakeEvent::Disconnected { connection, .. } => {
                    // The connection set up last is the one that ended
                    // (it may never have reached Connected).
                    assert_eq!(Some(connection), front.refs.last().map(|r| r.0));
                    if let Some(c) = current.take() {
                        assert_eq!(c, connection);
                    }
                }
                HandshakeEvent::Idle => {}
                other => panic!("{other:?}"),
            }
            front.reap();
            let finishing =
                restarts_done.load(std::sync::atomic::Ordering::SeqCst) && next_id > REQUESTS_MIN;
            if current.is_some() && !finishing {
                while front.in_flight.len() < 4 {
                    front.submit(next_id);
                    next_id += 1;
                }
            }
            if finishing
                && current.is_some()
                && front.in_flight.is_empty()
                && front.reissue.is_empty()
            {
                break;
            }
            fxs.pump_wait(Wait::For(Duration::from_micros(200)))
                .unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (mapped, answered) = backend.join().unwrap();
        // Every request completed exactly once.
        let mut ids = front.completed.clone();
        ids.sort_unstable();
        assert_eq!(ids, (1..next_id).collect::<Vec<_>>());
        assert!(connected_numbers.len() >= 2, "{connected_numbers:?}");
        // Every old grant ended cleanly: no backend instance still mapped
        // a connection the frontend had torn down.
        assert_eq!(front.quarantined, 0, "mapped: {:?}", front.refs);
        (mapped, answered)
    });
    // No frontend connection was mapped twice, by one instance or two,
    // and the instances mapped them in order.
    let numbers: Vec<u64> = mapped.iter().map(|m| m.0).collect();
    let mut sorted = numbers.clone();
    sorted.dedup();
    assert_eq!(numbers, sorted, "a connection mapped twice: {mapped:?}");
    assert!(numbers.windows(2).all(|p| p[0] < p[1]), "{mapped:?}");
    assert!(answered as u64 >= REQUESTS_MIN);
}
