//! netfront through xenstore on the hosted platform: a guest (dom1) with a
//! `NetfrontDevice` and a test netback (dom2: `xenbus::Backend` with the
//! in-process test backend of `netfront::testing`), connected through the
//! hosted xenstore daemon exactly as a vif is.
//!
//! Checks the keys each end writes (the negotiation as netback reads it),
//! frames both ways, and a backend that restarts mid-traffic, with its
//! directory intact or removed: the link comes back by itself, in-flight
//! frames are failed, and no grant is leaked.

#[path = "platform_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::TestDir;
use grant_tables::{DomId, Platform};
use hosted::toolstack::{add_device, DeviceSpec};
use hosted::xenstore::{connect_as, UnixXenstore, XenstoreDaemon};
use hosted::{HostedHypervisor, HostedPlatform};
use netfront::features::BackendFeatures;
use netfront::testing::{backend_keys, linux_like, RxOpts, TestBackend};
use netfront::{DriverConfig, FrameDevice, NetfrontDevice, RxFrame, TxFrame, WaitMode};
use xenbus::{
    Backend, BackendConfig, ConnectWhen, Connection, Device, DeviceError, HandshakeEvent,
    TeardownReason, Transaction, Transport, Wait, Xenstore, XsError,
};

const FE: DomId = DomId(1);
const BE: DomId = DomId(2);
const MAC: &str = "00:16:3e:12:34:56";

/// The backend's device: writes the feature keys at InitWait, attaches a
/// test backend when the frontend is Connected.
struct NetBack {
    plat: HostedPlatform,
    feats: BackendFeatures,
    live: Option<TestBackend<HostedPlatform>>,
    /// A key to write after the honest ones (a lying backend).
    bad_key: Option<(&'static str, &'static str)>,
}

impl<T: Transport> Device<T> for NetBack {
    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        for (k, v) in backend_keys(&self.feats) {
            tx.write(&conn.backend_key(&k), v)?;
        }
        if let Some((k, v)) = self.bad_key {
            tx.write(&conn.backend_key(k), v)?;
        }
        Ok(())
    }

    fn setup(&mut self, xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
        let mut keys = |k: &str| {
            xs.try_read(&conn.frontend_key(k))
                .ok()
                .flatten()
                .and_then(|v| String::from_utf8(v).ok())
        };
        let be = TestBackend::attach(self.plat.clone(), conn.peer, &mut keys)
            .map_err(DeviceError::Device)?;
        self.live = Some(be);
        Ok(())
    }

    fn teardown(&mut self, _conn: &Connection, _reason: TeardownReason) {
        if let Some(mut b) = self.live.take() {
            b.close_ports();
        }
    }
}

impl Drop for NetBack {
    fn drop(&mut self) {
        // A backend process that dies loses its channels and mappings.
        if let Some(mut b) = self.live.take() {
            b.close_ports();
        }
    }
}

struct BackInstance {
    xs: UnixXenstore,
    hs: Backend,
    dev: NetBack,
}

struct World {
    _dir: TestDir,
    _hv: HostedHypervisor,
    daemon: XenstoreDaemon,
    xs0: UnixXenstore,
    front: HostedPlatform,
    back: HostedPlatform,
    spec: DeviceSpec,
    start: Instant,
}

impl World {
    fn new(tag: &str, nodes: &[(&str, &str)]) -> World {
        let dir = TestDir::new(tag);
        let hv = HostedHypervisor::create(&dir.0).unwrap();
        let front = hv.join(FE).unwrap();
        let back = hv.join(BE).unwrap();
        let daemon = XenstoreDaemon::spawn(dir.0.join("xenstored.sock")).unwrap();
        let mut xs0 = connect_as(daemon.socket(), 0).unwrap();
        let mut spec = DeviceSpec::new("vif", FE, BE, 0).frontend_node("mac", MAC);
        for (k, v) in nodes {
            spec = spec.frontend_node(k, v);
        }
        add_device(&mut xs0, &spec).unwrap();
        World {
            _dir: dir,
            _hv: hv,
            daemon,
            xs0,
            front,
            back,
            spec,
            start: Instant::now(),
        }
    }

    fn xs(&self, domid: DomId) -> UnixXenstore {
        connect_as(self.daemon.socket(), domid.0).unwrap()
    }

    fn device(
        &self,
        config: DriverConfig,
    ) -> NetfrontDevice<HostedPlatform, hosted::xenstore::UnixTransport> {
        let mut dev = NetfrontDevice::new(self.front.clone(), self.xs(FE), "device/vif/0", config);
        dev.set_handshake_interval(1_000_000);
        dev
    }

    fn backend(&self, feats: BackendFeatures) -> BackInstance {
        BackInstance {
            xs: self.xs(BE),
            hs: Backend::new(BackendConfig::new(
                self.spec.backend_path(),
                ConnectWhen::FrontendConnected,
            )),
            dev: NetBack {
                plat: self.back.clone(),
                feats,
                live: None,
                bad_key: None,
            },
        }
    }

    fn read(&mut self, path: &str) -> Option<String> {
        self.xs0
            .try_read(path)
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }
}

type Dev = NetfrontDevice<HostedPlatform, hosted::xenstore::UnixTransport>;

/// Polls both ends until `done` (5 s at most).
fn drive(
    w: &World,
    dev: &mut Dev,
    back: &mut Option<BackInstance>,
    mut done: impl FnMut(&mut Dev, &mut Option<BackInstance>) -> bool,
) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        dev.poll().unwrap();
        if let Some(b) = back {
            let ev = b.hs.poll(&mut b.xs, w.start.elapsed(), &mut b.dev).unwrap();
            if let HandshakeEvent::Refused { error, .. } = ev {
                panic!("the backend refused the frontend's keys: {error}");
            }
            if let Some(live) = b.dev.live.as_mut() {
                live.pump_tx().unwrap();
            }
        }
        if done(dev, back) {
            return;
        }
        assert!(
            Instant::now() < end,
            "stuck: frontend {:?} ({:?}), backend {:?}",
            dev.frontend().phase(),
            dev.nic().broken(),
            back.as_ref().map(|b| b.hs.phase())
        );
        if let Some(b) = back {
            let _ = b.xs.pump_wait(Wait::For(Duration::from_micros(200)));
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect();
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// One frame each way, checked.
fn exchange(w: &World, dev: &mut Dev, back: &mut Option<BackInstance>, len: usize, seed: u8) {
    let data = frame(len, seed);
    let mut b = dev.tx_buffer(len).unwrap().expect("a TX buffer");
    b.write_at(0, &data).unwrap();
    dev.send(b).unwrap();
    let mut got = None;
    drive(w, dev, back, |_, back| {
        let live = back.as_mut().unwrap().dev.live.as_mut().unwrap();
        got = live.sent.pop_front();
        got.is_some()
    });
    assert_eq!(got.unwrap().data, data);
    let reply = frame(len, seed ^ 0xff);
    let live = back.as_mut().unwrap().dev.live.as_mut().unwrap();
    assert!(live.deliver(0, &reply, RxOpts::default()).unwrap());
    let mut rx = None;
    drive(w, dev, back, |dev, _| {
        rx = dev.receive().unwrap();
        rx.is_some()
    });
    let rx = rx.unwrap();
    let mut copy = vec![0u8; len];
    rx.read_at(0, &mut copy).unwrap();
    assert_eq!(copy, reply);
}

fn up(dev: &Dev) -> bool {
    dev.nic().is_up()
}

#[test]
fn negotiation_through_xenstore_and_frames_both_ways() {
    let mut w = World::new("nf-negotiate", &[("mtu", "9000"), ("trusted", "0")]);
    let mut cfg = DriverConfig::default();
    cfg.net.max_queues = 2;
    cfg.wait = WaitMode::Poll;
    let mut dev = w.device(cfg);
    let mut back = Some(w.backend(linux_like(4)));
    drive(&w, &mut dev, &mut back, |d, _| up(d));

    let link = dev.link();
    assert_eq!(link.mac, [0x00, 0x16, 0x3e, 0x12, 0x34, 0x56]);
    assert_eq!(link.mtu, 9000);
    let neg = *dev.nic().negotiated().unwrap();
    assert_eq!(neg.queues, 2);
    assert!(neg.split_event_channels && neg.tx_sg && neg.tx_gso_tcpv4 && neg.tx_gso_tcpv6);
    assert!(
        neg.untrusted_backend,
        "trusted=0 makes the backend untrusted"
    );

    let fe = w.spec.frontend_path();
    for (k, v) in [
        ("multi-queue-num-queues", Some("2")),
        ("request-rx-copy", Some("1")),
        ("feature-rx-notify", Some("1")),
        ("feature-sg", Some("1")),
        ("feature-gso-tcpv4", Some("1")),
        ("feature-gso-tcpv6", Some("1")),
        ("feature-ipv6-csum-offload", Some("1")),
        ("feature-no-csum-offload", None),
        ("state", Some("4")),
    ] {
        assert_eq!(w.read(&format!("{fe}/{k}")).as_deref(), v, "{k}");
    }
    for q in 0..2 {
        for k in [
            "tx-ring-ref",
            "rx-ring-ref",
            "event-channel-tx",
            "event-channel-rx",
        ] {
            assert!(
                w.read(&format!("{fe}/queue-{q}/{k}")).is_some(),
                "queue-{q}/{k}"
            );
        }
    }
    assert_eq!(
        back.as_ref().unwrap().dev.live.as_ref().unwrap().queues(),
        2
    );
    for (i, len) in [60, 1514, 4097, 9014].into_iter().enumerate() {
        exchange(&w, &mut dev, &mut back, len, i as u8);
    }
}

#[test]
fn offloads_off_are_published_as_netback_reads_them() {
    let mut w = World::new("nf-nooffload", &[]);
    let mut cfg = DriverConfig::default();
    cfg.net.csum_offload = false;
    cfg.net.ipv6_csum_offload = false;
    cfg.net.sg = false;
    cfg.net.split_event_channels = false;
    cfg.wait = WaitMode::Poll;
    let mut dev = w.device(cfg);
    let mut feats = linux_like(4);
    feats.max_queues = None;
    let mut back = Some(w.backend(feats));
    drive(&w, &mut dev, &mut back, |d, _| up(d));
    let fe = w.spec.frontend_path();
    for (k, v) in [
        ("multi-queue-num-queues", None),
        ("event-channel", Some("")),
        ("feature-sg", Some("0")),
        ("feature-gso-tcpv4", Some("0")),
        ("feature-gso-tcpv6", Some("0")),
        ("feature-ipv6-csum-offload", Some("0")),
        ("feature-no-csum-offload", Some("1")),
    ] {
        let got = w.read(&format!("{fe}/{k}"));
        match v {
            Some("") => assert!(got.is_some(), "{k}"),
            v => assert_eq!(got.as_deref(), v, "{k}"),
        }
    }
    assert_eq!(dev.link().max_frame, 1514);
    exchange(&w, &mut dev, &mut back, 1514, 1);
}

fn restart(remove_dir: bool) {
    let mut w = World::new(
        if remove_dir {
            "nf-restart-rm"
        } else {
            "nf-restart"
        },
        &[],
    );
    let cfg = DriverConfig {
        wait: WaitMode::Poll,
        ..DriverConfig::default()
    };
    let mut dev = w.device(cfg);
    let mut back = Some(w.backend(linux_like(1)));
    drive(&w, &mut dev, &mut back, |d, _| up(d));
    let table = Platform::grant_table(&w.front).unwrap().clone();
    let baseline = table.stats().granted;
    exchange(&w, &mut dev, &mut back, 1514, 0);

    for round in 0..5u8 {
        // Frames in flight: sent, not taken by the backend.
        for i in 0..3 {
            let mut b = dev.tx_buffer(500).unwrap().unwrap();
            b.write_at(0, &frame(500, i)).unwrap();
            dev.send(b).unwrap();
        }
        assert_eq!(dev.nic().tx_pending(), 3);
        let aborted = dev.nic().stats().tx_aborted;
        let conn = dev.nic().connection().unwrap();

        // The backend process dies.
        drop(back.take());
        if remove_dir {
            hosted::toolstack::remove_device(&mut w.xs0, &w.spec).unwrap();
            add_device(&mut w.xs0, &w.spec).unwrap();
        } else {
            let be = w.spec.backend_path();
            w.xs0.write(&format!("{be}/state"), "6").unwrap();
        }
        drive(&w, &mut dev, &mut back, |d, _| {
            d.nic().connection() != Some(conn)
        });
        assert_eq!(dev.nic().stats().tx_aborted - aborted, 3, "round {round}");

        // A new instance: the link comes back by itself.
        back = Some(w.backend(linux_like(1)));
        drive(&w, &mut dev, &mut back, |d, _| up(d));
        assert!(dev.nic().connection().unwrap() > conn);
        exchange(&w, &mut dev, &mut back, 1000 + usize::from(round), round);
        // Nothing of earlier connections is still granted or quarantined.
        dev.poll().unwrap();
        let s = table.stats();
        assert_eq!(
            (s.granted, s.quarantined),
            (baseline, 0),
            "round {round}: {s:?}"
        );
    }
    assert_eq!(dev.nic().stats().connections, 6);
}

#[test]
fn backend_restart_with_its_directory_intact() {
    restart(false);
}

#[test]
fn backend_restart_with_its_directory_removed() {
    restart(true);
}

#[test]
fn a_malformed_backend_key_fails_the_handshake_with_a_clear_error() {
    for (key, value) in [
        ("feature-sg", "yes"),
        ("multi-queue-max-queues", "0"),
        ("feature-rx-copy", "0"),
    ] {
        let w = World::new("nf-badkey", &[]);
        let cfg = DriverConfig {
            wait: WaitMode::Poll,
            ..DriverConfig::default()
        };
        let mut dev = w.device(cfg);
        let mut back = Some(w.backend(linux_like(1)));
        back.as_mut().unwrap().dev.bad_key = Some((key, value));
        let end = Instant::now() + Duration::from_secs(10);
        let err = loop {
            if let Err(e) = dev.poll() {
                break e;
            }
            if let Some(b) = back.as_mut() {
                let _ = b.hs.poll(&mut b.xs, w.start.elapsed(), &mut b.dev);
            }
            assert!(Instant::now() < end, "{key}={value}: no error");
            std::thread::sleep(Duration::from_micros(200));
        };
        let msg = err.to_string();
        let named = if key == "feature-rx-copy" {
            "rx-copy"
        } else {
            key
        };
        assert!(msg.contains(named), "{key}={value}: {msg}");
        assert!(dev.handshake_error().is_some());
        assert!(!dev.link().up);
        // Nothing of the refused connection stays granted.
        let s = Platform::grant_table(&w.front).unwrap().stats();
        assert_eq!((s.granted, s.quarantined), (0, 0), "{s:?}");
    }
}

#[test]
fn a_backend_that_comes_late_is_waited_for() {
    let w = World::new("nf-late", &[]);
    let cfg = DriverConfig {
        wait: WaitMode::Poll,
        ..DriverConfig::default()
    };
    let mut hs = xenbus::FrontendConfig::new("device/vif/0", xenbus::ConnectStyle::ConnectedAtOnce);
    hs.step_timeout = Duration::from_millis(100);
    hs.reconnect_timeout = Duration::from_millis(100);
    let mut dev = NetfrontDevice::with_handshake(w.front.clone(), w.xs(FE), hs, cfg);
    // No backend for several handshake timeouts.
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        dev.poll().unwrap();
        dev.wait(Some(1_000_000)).unwrap();
    }
    assert!(!up(&dev));
    assert!(dev.handshake_error().is_none());
    assert!(
        dev.handshake_restarts() >= 2,
        "{}",
        dev.handshake_restarts()
    );
    let mut back = Some(w.backend(linux_like(1)));
    drive(&w, &mut dev, &mut back, |d, _| up(d));
    exchange(&w, &mut dev, &mut back, 1514, 3);
}

#[test]
fn a_multi_queue_connection_then_a_single_queue_backend() {
    let mut w = World::new("nf-mq-then-sq", &[]);
    let mut cfg = DriverConfig::default();
    cfg.net.max_queues = 2;
    cfg.wait = WaitMode::Poll;
    let mut dev = w.device(cfg);
    let mut back = Some(w.backend(linux_like(4)));
    drive(&w, &mut dev, &mut back, |d, _| up(d));
    assert_eq!(dev.nic().negotiated().unwrap().queues, 2);
    exchange(&w, &mut dev, &mut back, 200, 1);
    let conn = dev.nic().connection().unwrap();

    // A new backend without multi-queue: the old queue count must go, or
    // it would look for the old queues' rings.
    drop(back.take());
    let be = w.spec.backend_path();
    w.xs0.write(&format!("{be}/state"), "6").unwrap();
    // The new backend does not offer multi-queue (its directory loses the
    // old offer).
    w.xs0.rm(&format!("{be}/multi-queue-max-queues")).unwrap();
    drive(&w, &mut dev, &mut back, |d, _| {
        d.nic().connection() != Some(conn)
    });
    let mut feats = linux_like(1);
    feats.max_queues = None;
    back = Some(w.backend(feats));
    drive(&w, &mut dev, &mut back, |d, _| up(d));
    assert_eq!(dev.nic().negotiated().unwrap().queues, 1);
    let fe = w.spec.frontend_path();
    assert_eq!(w.read(&format!("{fe}/multi-queue-num-queues")), None);
    assert!(w.read(&format!("{fe}/tx-ring-ref")).is_some());
    exchange(&w, &mut dev, &mut back, 300, 2);
}
