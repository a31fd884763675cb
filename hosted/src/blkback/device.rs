//! The xenbus side of blkback: the keys it advertises, the frontend keys it
//! reads, the rings it maps and the workers it starts per connection, and
//! the handshake thread that drives it all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blkfront::abi::{BlkifRequest, BlkifResponse, VDISK_CDROM, VDISK_READONLY, VDISK_REMOVABLE};
use grant_tables::granted_ring::parse_u32_value;
use grant_tables::{parse_ring_refs, BackRing, DomId, EventChannels, Port};
use xenbus::{
    Backend, BackendConfig, BackendPhase, ConnectWhen, Connection, Device, DeviceError,
    HandshakeEvent, TeardownReason, Transaction, Transport, Wait, XenbusState, Xenstore, XsError,
};

use super::queue::{self, Leftovers, QueueSetup};
use super::{Control, Hostile, Shared};
use crate::domain::lock;
use crate::xenstore::UnixXenstore;
use crate::HostedPlatform;

/// One queue's worker thread.
struct Worker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Leftovers>,
    port: Port,
}

/// The live connection.
struct Live {
    number: u64,
    workers: Vec<Worker>,
}

/// The blkback device the handshake drives.
pub(super) struct BlkDevice {
    plat: HostedPlatform,
    shared: Arc<Shared>,
    live: Option<Live>,
}

/// What `setup` read from the frontend.
struct FrontendKeys {
    persistent: bool,
    rings: Vec<(Vec<u32>, u32)>,
    cdrom: bool,
}

fn bad(message: String) -> DeviceError {
    DeviceError::Device(message)
}

impl BlkDevice {
    fn read_frontend<T: Transport>(
        &self,
        xs: &mut Xenstore<T>,
        conn: &Connection,
    ) -> Result<FrontendKeys, DeviceError> {
        let cfg = &self.shared.config;
        let mut read = |key: &str| -> Result<Option<String>, XsError> {
            Ok(xs
                .try_read(&conn.frontend_key(key))?
                .map(|v| String::from_utf8_lossy(&v).into_owned()))
        };
        match read("protocol")?.as_deref() {
            None | Some("native") | Some("x86_64-abi") => {}
            Some("x86_32-abi") => {
                return Err(bad(
                    "the frontend asks for protocol x86_32-abi; this backend serves the native (x86_64) layout only".into(),
                ))
            }
            Some(other) => {
                return Err(bad(format!(
                    "the frontend's protocol {:?} is unknown; write native, x86_64-abi or x86_32-abi",
                    other.chars().take(32).collect::<String>()
                )))
            }
        }
        let persistent = cfg.persistent
            && read("feature-persistent")?
                .and_then(|v| parse_u32_value(&v))
                .unwrap_or(0)
                != 0;
        let queues = match read("multi-queue-num-queues")? {
            None => 1,
            Some(v) => match parse_u32_value(&v) {
                Some(n) => n,
                None => {
                    log::warn!("blkback: the frontend's multi-queue-num-queues {v:?} is not a number; using 1");
                    1
                }
            },
        };
        if queues == 0 || queues > cfg.max_queues {
            return Err(bad(format!(
                "the frontend asks for {queues} queues; this backend offers 1 to {} (multi-queue-max-queues)",
                cfg.max_queues
            )));
        }
        let cdrom = read("device-type")?.as_deref() == Some("cdrom");
        let mut rings = Vec::with_capacity(queues as usize);
        for q in 0..queues {
            let prefix = if queues > 1 {
                format!("queue-{q}/")
            } else {
                String::new()
            };
            let refs = parse_ring_refs("ring-ref", cfg.max_ring_page_order, |key| {
                // `ring-page-order` is one key for every queue.
                if key == grant_tables::granted_ring::RING_PAGE_ORDER_KEY {
                    read(key)
                } else {
                    read(&format!("{prefix}{key}"))
                }
            })
            .map_err(|e| bad(format!("queue {q}: {e}")))?;
            let key = format!("{prefix}event-channel");
            let port = read(&key)?
                .ok_or_else(|| bad(format!("the frontend did not write {key}")))
                .and_then(|v| {
                    parse_u32_value(&v)
                        .ok_or_else(|| bad(format!("the frontend's {key} {v:?} is not a number")))
                })?;
            rings.push((refs, port));
        }
        Ok(FrontendKeys {
            persistent,
            rings,
            cdrom,
        })
    }

    /// Maps a ring and attaches at its current indices, as blkback does
    /// (`BACK_RING_ATTACH` at `rsp_prod`; more requests than the ring holds
    /// between `rsp_prod` and `req_prod` is refused).
    fn map_ring(&self, front: DomId, refs: &[u32]) -> Result<queue::BlkBackRing, String> {
        let mem = self.plat.map_ring(front, refs).map_err(|e| e.to_string())?;
        let mut head = [0u8; 16];
        mem.mapping()
            .read(0, &mut head)
            .ok_or("the ring page cannot be read")?;
        let word = |i: usize| u32::from_ne_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (req_prod, rsp_prod) = (word(0), word(8));
        let ring: queue::BlkBackRing =
            BackRing::<BlkifRequest, BlkifResponse, _>::attach(mem, rsp_prod)
                .map_err(|e| e.to_string())?;
        let pending = req_prod.wrapping_sub(rsp_prod);
        if pending > ring.size() {
            return Err(format!(
                "the ring holds req_prod {req_prod} and rsp_prod {rsp_prod}: {pending} requests, more than its {} slots",
                ring.size()
            ));
        }
        Ok(ring)
    }

    fn connect_keys<T: Transport>(
        &self,
        xs: &mut Xenstore<T>,
        conn: &Connection,
        keys: &FrontendKeys,
        discard: bool,
    ) -> Result<(), XsError> {
        let cfg = &self.shared.config;
        let disk = &self.shared.disk;
        let mut info = 0;
        if keys.cdrom {
            info |= VDISK_CDROM;
        }
        if cfg.removable {
            info |= VDISK_REMOVABLE;
        }
        if self.shared.read_only() {
            info |= VDISK_READONLY;
        }
        let flush = if cfg.flush { "1" } else { "0" };
        let granularity = discard_granularity(disk);
        xs.transaction(|tx| {
            let w =
                |tx: &mut Transaction<'_, T>, k: &str, v: String| tx.write(&conn.backend_key(k), v);
            w(tx, "feature-flush-cache", flush.into())?;
            w(tx, "feature-barrier", flush.into())?;
            if discard {
                w(tx, "discard-granularity", granularity.to_string())?;
                w(tx, "discard-alignment", "0".into())?;
                w(tx, "discard-secure", "0".into())?;
            }
            w(
                tx,
                "feature-discard",
                if discard { "1" } else { "0" }.into(),
            )?;
            w(
                tx,
                "feature-persistent",
                if cfg.persistent { "1" } else { "0" }.into(),
            )?;
            w(tx, "sectors", disk.sectors().to_string())?;
            w(tx, "info", info.to_string())?;
            w(tx, "sector-size", disk.sector_size.to_string())?;
            w(
                tx,
                "physical-sector-size",
                disk.physical_sector_size.to_string(),
            )
        })
    }

    /// Stops the workers and releases the connection's rings, grants and
    /// channels (or keeps the mappings, in the hostile mode that does).
    fn stop_workers(&mut self) {
        let Some(live) = self.live.take() else { return };
        for w in &live.workers {
            w.stop.store(true, Ordering::Release);
        }
        for w in live.workers {
            match w.thread.join() {
                Ok(left) => {
                    if self.shared.hostile_kind() == Some(Hostile::KeepGrantsMapped) {
                        lock(&self.shared.kept).push(left);
                    }
                }
                Err(_) => self.shared.fail(format!(
                    "connection {}: a queue's worker panicked",
                    live.number
                )),
            }
            if let Err(e) = self.plat.close(w.port) {
                log::debug!("blkback: closing {}: {e}", w.port);
            }
        }
        *lock(&self.shared.live) = None;
        // The departed frontend's mappings are gone: let go of its views.
        self.plat.release_departed_peers();
    }
}

/// `discard-granularity`: the file system's block size for a file (a
/// punched hole frees whole blocks), the logical sector size for a block
/// device.
fn discard_granularity(disk: &super::disk::Disk) -> u32 {
    use std::os::unix::fs::MetadataExt;
    if disk.block_device {
        return disk.sector_size;
    }
    let blk = disk.file.metadata().map(|m| m.blksize()).unwrap_or(4096);
    u32::try_from(blk)
        .ok()
        .filter(|b| b.is_power_of_two() && *b >= disk.sector_size)
        .unwrap_or(disk.sector_size)
}

impl<T: Transport> Device<T> for BlkDevice {
    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        let cfg = &self.shared.config;
        tx.write(
            &conn.backend_key("feature-max-indirect-segments"),
            cfg.max_indirect_segments.to_string(),
        )?;
        tx.write(
            &conn.backend_key("multi-queue-max-queues"),
            cfg.max_queues.to_string(),
        )?;
        tx.write(
            &conn.backend_key("max-ring-page-order"),
            cfg.max_ring_page_order.to_string(),
        )
    }

    fn setup(&mut self, xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
        self.stop_workers();
        let cfg = &self.shared.config;
        // The toolstack's nodes in our own directory.
        let mode = xs.try_read(&conn.backend_key("mode"))?;
        let read_only = cfg.read_only || mode.is_some_and(|m| !m.contains(&b'w'));
        self.shared.read_only.store(read_only, Ordering::Relaxed);
        let discard_enable = xs
            .try_read(&conn.backend_key("discard-enable"))?
            .is_none_or(|v| v != b"0");
        let discard = cfg.discard && discard_enable;
        self.shared.discard.store(discard, Ordering::Relaxed);

        let keys = self.read_frontend(xs, conn)?;
        let front = conn.peer;
        // Map every ring and bind every channel, all or nothing.
        let mut rings = Vec::with_capacity(keys.rings.len());
        let mut ports = Vec::with_capacity(keys.rings.len());
        let release = |plat: &HostedPlatform, ports: &[Port]| {
            for &p in ports {
                let _ = plat.close(p);
            }
        };
        for (q, (refs, port)) in keys.rings.iter().enumerate() {
            let ring = match self.map_ring(front, refs) {
                Ok(r) => r,
                Err(e) => {
                    release(&self.plat, &ports);
                    return Err(bad(format!(
                        "queue {q}: cannot map the frontend's ring: {e}"
                    )));
                }
            };
            let local = match self.plat.bind_interdomain(front, Port(*port)) {
                Ok(p) => p,
                Err(e) => {
                    release(&self.plat, &ports);
                    return Err(bad(format!(
                        "queue {q}: cannot bind the frontend's event channel {port}: {e}"
                    )));
                }
            };
            rings.push(ring);
            ports.push(local);
        }
        if let Err(e) = self.connect_keys(xs, conn, &keys, discard) {
            release(&self.plat, &ports);
            return Err(e.into());
        }
        let mut workers = Vec::with_capacity(rings.len());
        for (q, (ring, port)) in rings.into_iter().zip(ports.iter().copied()).enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let setup = QueueSetup {
                index: q as u32,
                ring,
                port,
                frontend: front,
                persistent: keys.persistent,
            };
            let (plat, shared, s) = (self.plat.clone(), self.shared.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("blkback-q{q}"))
                .spawn(move || queue::run(plat, shared, setup, s));
            match spawned {
                Ok(thread) => workers.push(Worker { stop, thread, port }),
                Err(e) => {
                    self.live = Some(Live {
                        number: conn.number,
                        workers,
                    });
                    self.stop_workers();
                    release(&self.plat, &ports[q..]);
                    return Err(bad(format!("cannot start queue {q}'s worker: {e}")));
                }
            }
        }
        let n = workers.len() as u32;
        self.live = Some(Live {
            number: conn.number,
            workers,
        });
        *lock(&self.shared.live) = Some((conn.number, n, keys.persistent));
        log::info!(
            "blkback: connection {} to {}: {n} queue(s), persistent grants {}, {} sectors",
            conn.number,
            front,
            if keys.persistent { "on" } else { "off" },
            self.shared.disk.sectors()
        );
        Ok(())
    }

    fn teardown(&mut self, conn: &Connection, reason: TeardownReason) {
        log::info!("blkback: connection {} ends ({reason:?})", conn.number);
        self.stop_workers();
    }
}

/// Writes what the workers asked for (feature keys turned off, a resize).
fn apply_controls(shared: &Shared, xs: &mut UnixXenstore, be: &Backend) {
    let controls: Vec<Control> = std::mem::take(&mut *lock(&shared.controls));
    let Some(conn) = be.connection().cloned() else {
        // Not connected: the next connection writes the keys afresh (a
        // resize included); feature refusals stay for the live one only.
        return;
    };
    for c in controls {
        let r = match c {
            Control::NoFlush => xs.transaction(|tx| {
                tx.write(&conn.backend_key("feature-flush-cache"), "0")?;
                tx.write(&conn.backend_key("feature-barrier"), "0")
            }),
            Control::NoDiscard => xs.write(&conn.backend_key("feature-discard"), "0"),
            Control::Resize => {
                let sectors = shared.disk.sectors();
                xs.transaction(|tx| {
                    tx.write(&conn.backend_key("sectors"), sectors.to_string())?;
                    // Writing the state again fires the frontend's watch.
                    tx.write(&conn.backend_key("state"), XenbusState::Connected.as_str())
                })
            }
        };
        if let Err(e) = r {
            shared.fail(format!("writing {c:?} to xenstore: {e}"));
        }
    }
}

/// The handshake thread: drives [`xenbus::Backend`] until the blkback
/// stops or the device is removed.
pub(super) fn handshake_main(
    plat: HostedPlatform,
    shared: Arc<Shared>,
    mut xs: UnixXenstore,
    backend: String,
) {
    let mut be = Backend::new(BackendConfig::new(
        backend.clone(),
        ConnectWhen::FrontendInitialised,
    ));
    let mut dev = BlkDevice {
        plat,
        shared: shared.clone(),
        live: None,
    };
    let start = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        match be.poll(&mut xs, start.elapsed(), &mut dev) {
            Ok(HandshakeEvent::Connected(c)) => {
                shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                log::debug!("blkback {backend}: connected ({})", c.number);
            }
            Ok(HandshakeEvent::Refused { connection, error }) => {
                shared.fail(format!("connection {connection} refused: {error}"));
            }
            Ok(HandshakeEvent::Removed) => {
                log::info!("blkback {backend}: the device was removed");
                break;
            }
            Ok(_) => {}
            Err(e) if e.is_transient() => {}
            Err(e) => {
                shared.fail(format!("handshake: {e}"));
                if be.phase() == BackendPhase::Failed {
                    std::thread::sleep(Duration::from_millis(10));
                    be.restart();
                }
            }
        }
        apply_controls(&shared, &mut xs, &be);
        if let Err(e) = xs.pump_wait(Wait::For(Duration::from_millis(5))) {
            shared.fail(format!("xenstore: {e}"));
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    dev.stop_workers();
}
