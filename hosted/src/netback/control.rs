//! The control side: one thread on xenstore that finds the vifs the
//! toolstack gives this backend, runs each one's xenbus handshake
//! ([`xenbus::Backend`], connecting only when the frontend is Connected, as
//! Linux's netback), reads the frontend's keys, maps its rings, binds its
//! event channels and hands the connected vif to the data plane; and takes
//! it back when the frontend goes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grant_tables::abi::GrantRefNum;
use grant_tables::{DomId, EventChannels, Port};
use netfront::features::QueueEvents;
use xenbus::{
    Backend, BackendConfig, ConnectWhen, Connection, Device, DeviceError, HandshakeEvent,
    TeardownReason, Transaction, Wait, XenbusState, XsError,
};

use super::dataplane::Cmd;
use super::keys::{advertised, Advertised, FrontendRequest};
use super::vif::{header_index, HostileState, Queue, RxRing, TxRing, Vif, VifCounters, VifShared};
use super::{Hostile, Shared};
use crate::xenstore::{UnixTransport, UnixXenstore};
use crate::{HostedPlatform, MappedGrant, MappedRing};

/// How long a teardown waits for the data plane to let a vif go.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every vif of this backend is set up with.
pub(crate) struct DevCtx {
    pub plat: HostedPlatform,
    pub cmds: mpsc::Sender<Cmd>,
    /// The port that wakes the data plane when notified.
    pub wake: Port,
    pub shared: Arc<Shared>,
    pub advertised: Advertised,
    pub fatal_skb_slots: u32,
    pub hostile: Hostile,
    pub hostile_after: u64,
    pub kept: Arc<Mutex<Vec<MappedGrant>>>,
    pub next_id: AtomicU32,
}

impl DevCtx {
    fn send(&self, cmd: Cmd) -> bool {
        let ok = self.cmds.send(cmd).is_ok();
        let _ = self.plat.notify(self.wake);
        ok
    }
}

/// The xenbus device of one vif.
struct VifDevice {
    ctx: Arc<DevCtx>,
    devid: u32,
    /// The vif the data plane serves for the live connection.
    live: Option<Arc<VifShared>>,
}

impl Device<UnixTransport> for VifDevice {
    fn publish(
        &mut self,
        tx: &mut Transaction<'_, UnixTransport>,
        conn: &Connection,
    ) -> Result<(), XsError> {
        for (k, v) in advertised(&self.ctx.advertised) {
            tx.write(&conn.backend_key(k), v)?;
        }
        Ok(())
    }

    fn setup(&mut self, xs: &mut UnixXenstore, conn: &Connection) -> Result<(), DeviceError> {
        let mut read = |key: &str| -> Result<Option<String>, String> {
            xs.try_read(&conn.frontend_key(key))
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .map_err(|e| e.to_string())
        };
        let adv = self.ctx.advertised;
        let req = FrontendRequest::read(&mut read, adv.max_queues, adv.xdp_headroom)
            .map_err(|e| DeviceError::Device(format!("netback: {e}")))?;
        let plat = &self.ctx.plat;
        let fe = conn.peer;
        let mut queues = Vec::with_capacity(req.queues.len());
        let mut bound: Vec<Port> = Vec::new();
        let fail = |bound: &[Port], msg: String| {
            for p in bound {
                let _ = plat.close(*p);
            }
            DeviceError::Device(msg)
        };
        for (i, qk) in req.queues.iter().enumerate() {
            let tx = match attach::<TxRing>(plat, fe, qk.tx_ring_ref, "TX") {
                Ok(r) => r,
                Err(e) => return Err(fail(&bound, format!("netback: queue {i}: {e}"))),
            };
            let rx = match attach::<RxRing>(plat, fe, qk.rx_ring_ref, "RX") {
                Ok(r) => r,
                Err(e) => return Err(fail(&bound, format!("netback: queue {i}: {e}"))),
            };
            let (tx_port, rx_port) = match qk.events {
                QueueEvents::Shared(p) => match plat.bind_interdomain(fe, Port(p)) {
                    Ok(l) => {
                        bound.push(l);
                        (l, l)
                    }
                    Err(e) => {
                        return Err(fail(
                            &bound,
                            format!("netback: queue {i}: binding event channel {p} of {fe}: {e}"),
                        ))
                    }
                },
                QueueEvents::Split { tx, rx } => {
                    let t = match plat.bind_interdomain(fe, Port(tx)) {
                        Ok(l) => l,
                        Err(e) => {
                            return Err(fail(
                                &bound,
                                format!(
                                "netback: queue {i}: binding event-channel-tx {tx} of {fe}: {e}"
                            ),
                            ))
                        }
                    };
                    bound.push(t);
                    let r = match plat.bind_interdomain(fe, Port(rx)) {
                        Ok(l) => l,
                        Err(e) => {
                            return Err(fail(
                                &bound,
                                format!(
                                "netback: queue {i}: binding event-channel-rx {rx} of {fe}: {e}"
                            ),
                            ))
                        }
                    };
                    bound.push(r);
                    (t, r)
                }
            };
            queues.push(Queue::new(tx, rx, tx_port, rx_port));
        }
        let id = self.ctx.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(VifShared {
            frontend: fe,
            devid: self.devid,
            id,
            queues: queues.len() as u32,
            connection: conn.number,
            counters: VifCounters::default(),
            disabled: Default::default(),
            reason: Mutex::new(None),
            request: req.clone(),
        });
        let drain = if req.rx_notify {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(30)
        };
        let vif = Vif {
            shared: shared.clone(),
            req,
            queues,
            mcast: Vec::new(),
            hostile: HostileState::new(
                self.ctx.hostile,
                self.ctx.hostile_after,
                self.ctx.kept.clone(),
            ),
            fatal_skb_slots: self.ctx.fatal_skb_slots,
            drain_timeout: drain,
        };
        if let Ok(mut v) = self.ctx.shared.vifs.lock() {
            v.push(shared.clone());
        }
        if !self.ctx.send(Cmd::AddVif(Box::new(vif))) {
            return Err(DeviceError::Device(
                "netback: the data plane has stopped; restart the backend".into(),
            ));
        }
        log::info!(
            "netback: vif {}.{} connected ({} queue(s)), connection {}",
            fe.0,
            self.devid,
            shared.queues,
            conn.number
        );
        self.live = Some(shared);
        Ok(())
    }

    fn teardown(&mut self, conn: &Connection, reason: TeardownReason) {
        let Some(shared) = self.live.take() else {
            return;
        };
        let (done_tx, done_rx) = mpsc::channel();
        if self.ctx.send(Cmd::RemoveVif {
            id: shared.id,
            done: done_tx,
        }) && done_rx.recv_timeout(REMOVE_TIMEOUT).is_err()
        {
            log::error!(
                "netback: the data plane did not let vif {} go within {REMOVE_TIMEOUT:?}",
                shared.id
            );
        }
        if let Ok(mut v) = self.ctx.shared.vifs.lock() {
            v.retain(|s| s.id != shared.id);
        }
        log::info!(
            "netback: vif {}.{} connection {} torn down ({reason:?})",
            shared.frontend.0,
            shared.devid,
            conn.number
        );
    }
}

/// Maps a one-page ring of `fe` and attaches at its current indices
/// (Linux's `BACK_RING_ATTACH`); a ring whose `req_prod` is more than a
/// ring ahead of its `rsp_prod` is refused.
fn attach<R: Attach>(
    plat: &HostedPlatform,
    fe: DomId,
    gref: GrantRefNum,
    what: &str,
) -> Result<R, String> {
    let mem = plat
        .map_ring(fe, &[gref])
        .map_err(|e| format!("mapping the {what} ring (grant {gref}): {e}"))?;
    let req_prod = header_index(&mem, 0).load(Ordering::Acquire);
    let rsp_prod = header_index(&mem, 8).load(Ordering::Acquire);
    R::attach(mem, req_prod, rsp_prod).map_err(|e| format!("the {what} ring: {e}"))
}

trait Attach: Sized {
    fn attach(mem: MappedRing, req_prod: u32, rsp_prod: u32) -> Result<Self, String>;
}

macro_rules! impl_attach {
    ($t:ty) => {
        impl Attach for $t {
            fn attach(mem: MappedRing, req_prod: u32, rsp_prod: u32) -> Result<Self, String> {
                let ring = <$t>::attach(mem, rsp_prod).map_err(|e| e.to_string())?;
                let pending = req_prod.wrapping_sub(rsp_prod);
                if pending > ring.size() {
                    return Err(format!(
                        "req_prod {req_prod} is {pending} requests past rsp_prod {rsp_prod}, more than the {} slots of the ring",
                        ring.size()
                    ));
                }
                Ok(ring)
            }
        }
    };
}
impl_attach!(TxRing);
impl_attach!(RxRing);

/// The control thread.
pub(crate) struct Control {
    pub ctx: Arc<DevCtx>,
    pub xs: UnixXenstore,
    /// `/local/domain/<us>/backend/vif`.
    pub base: String,
    devices: BTreeMap<String, (Backend, VifDevice)>,
    start: Instant,
}

const TOKEN: &str = "netback-vifs";

impl Control {
    pub fn new(ctx: Arc<DevCtx>, xs: UnixXenstore, base: String) -> Self {
        Control {
            ctx,
            xs,
            base,
            devices: BTreeMap::new(),
            start: Instant::now(),
        }
    }

    /// Runs until the backend stops.
    pub fn run(mut self) {
        if let Err(e) = self.xs.watch(&self.base, TOKEN) {
            self.fail(format!("netback: watching {} failed: {e}", self.base));
            return;
        }
        let mut rescan = true;
        while !self.ctx.shared.stop.load(Ordering::Relaxed) {
            if rescan {
                rescan = false;
                if let Err(e) = self.rescan() {
                    log::warn!("netback: listing {}: {e}", self.base);
                }
            }
            self.poll_devices();
            match self.xs.pump_wait(Wait::For(Duration::from_millis(50))) {
                Ok(_) => {}
                Err(XsError::TimedOut { .. }) => {}
                Err(e) => {
                    self.fail(format!("netback: xenstore connection failed: {e}"));
                    break;
                }
            }
            if self.xs.drain_events_for(TOKEN) > 0 {
                rescan = true;
            }
        }
        self.shutdown();
    }

    fn fail(&self, msg: String) {
        log::error!("{msg}");
        if let Ok(mut f) = self.ctx.shared.failed.lock() {
            f.get_or_insert(msg);
        }
    }

    /// Finds the device directories under `base` (`<frontend>/<devid>`).
    fn rescan(&mut self) -> Result<(), XsError> {
        let fes = match self.xs.directory(&self.base) {
            Ok(v) => v,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e),
        };
        for fe in fes {
            let Ok(_) = fe.parse::<u16>() else { continue };
            let dir = format!("{}/{fe}", self.base);
            let ids = match self.xs.directory(&dir) {
                Ok(v) => v,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            for id in ids {
                let Ok(devid) = id.parse::<u32>() else {
                    continue;
                };
                let path = format!("{dir}/{id}");
                if self.devices.contains_key(&path) {
                    continue;
                }
                log::info!("netback: serving {path}");
                let be = Backend::new(BackendConfig::new(
                    path.clone(),
                    ConnectWhen::FrontendConnected,
                ));
                let dev = VifDevice {
                    ctx: self.ctx.clone(),
                    devid,
                    live: None,
                };
                self.devices.insert(path, (be, dev));
            }
        }
        Ok(())
    }

    fn poll_devices(&mut self) {
        let now = self.start.elapsed();
        let mut gone = Vec::new();
        for (path, (be, dev)) in self.devices.iter_mut() {
            // A handshake acts on one event per poll: poll until idle
            // (bounded).
            for _ in 0..8 {
                match be.poll(&mut self.xs, now, dev) {
                    Ok(HandshakeEvent::Idle) => break,
                    Ok(HandshakeEvent::Removed) | Ok(HandshakeEvent::Closed) => {
                        gone.push(path.clone());
                        break;
                    }
                    Ok(HandshakeEvent::Refused { connection, error }) => {
                        log::warn!("netback: {path}: connection {connection} refused: {error}");
                    }
                    Ok(ev) => log::debug!("netback: {path}: {ev:?}"),
                    Err(e) if e.is_transient() => break,
                    Err(e) => {
                        log::error!("netback: {path}: handshake failed: {e}; restarting it");
                        be.restart();
                        break;
                    }
                }
            }
        }
        for p in gone {
            if let Some((mut be, _)) = self.devices.remove(&p) {
                let _ = be.unwatch(&mut self.xs);
            }
        }
    }

    /// Stops serving: every live vif is let go and its backend state set
    /// to Closed (its frontend then sees the backend gone, as when Linux's
    /// netback is unbound).
    fn shutdown(&mut self) {
        let devices = std::mem::take(&mut self.devices);
        for (path, (mut be, mut dev)) in devices {
            if let Some(conn) = be.connection().cloned() {
                dev.teardown(&conn, TeardownReason::Closed);
            }
            let _ = self
                .xs
                .write(&format!("{path}/state"), XenbusState::Closed.as_str());
            let _ = be.unwatch(&mut self.xs);
        }
        let _ = self.xs.unwatch(&self.base, TOKEN);
    }
}
