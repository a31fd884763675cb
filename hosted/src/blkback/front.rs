//! A minimal ring-level block frontend, for blkback's tests and the block
//! bench: it connects through the xenbus handshake like blkfront (its
//! keys come from [`blkfront::RingChoice::frontend_keys`]), grants its
//! rings and a pool of persistent buffers, and puts raw blkif requests on
//! the rings, well-formed or not. It is not a driver: no splitting, no
//! retries, no resume of in-flight requests; every response is handed to
//! the caller as it came.

use std::path::Path;
use std::time::{Duration, Instant};

use blkfront::abi::{
    op, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
    BlkifResponse, BLKIF_DISCARD_SECURE, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
};
use blkfront::features::{
    DiskFeatures, FrontendConfig as BlkConfig, QueueRing, RingChoice, RingFeatures,
};
use grant_tables::abi::GrantRefNum;
use grant_tables::{
    Access, BufferPool, DomId, EventChannels, GrantedRing, PoolBuffer, PoolConfig, PoolMode, Port,
};
use xenbus::{
    ConnectStyle, Connection, Device, DeviceError, Frontend, FrontendConfig, HandshakeEvent,
    TeardownReason, Transaction, Transport, Wait, Xenstore, XsError,
};
use zerocopy::{FromZeros, IntoBytes};

use crate::xenstore::{connect_as, UnixXenstore};
use crate::HostedPlatform;

/// A ring of the test frontend.
pub type TestRing = GrantedRing<HostedPlatform, BlkifRequest, BlkifResponse>;

/// What the test frontend asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontConfig {
    /// Queues wanted (capped by the backend's `multi-queue-max-queues`).
    pub queues: u32,
    /// Largest ring order wanted (capped by `max-ring-page-order`).
    pub max_ring_page_order: u32,
    /// Write `feature-persistent = 1`.
    pub persistent: bool,
    /// Pages of the buffer pool, granted read-write to the backend.
    pub pool_pages: usize,
    /// Publish a one-page ring under `ring-ref` alone (no
    /// `ring-page-order`), as frontends did before multi-page rings.
    pub legacy_ring_ref: bool,
    /// Wait for responses on the event channel (after asking the backend
    /// to notify) instead of spinning.
    pub event: bool,
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            queues: 1,
            max_ring_page_order: 0,
            persistent: true,
            pool_pages: 64,
            legacy_ring_ref: false,
            event: true,
        }
    }
}

/// One queue: its ring and event channel.
pub struct FrontQueue {
    /// The ring (derefs to the [`grant_tables::FrontRing`]).
    pub ring: TestRing,
    /// The event channel (our end).
    pub port: Port,
}

struct Live {
    number: u64,
    queues: Vec<FrontQueue>,
    pool: BufferPool<HostedPlatform>,
    keys: Vec<(String, String)>,
    choice: RingChoice,
}

struct FrontDev {
    plat: HostedPlatform,
    cfg: FrontConfig,
    live: Option<Live>,
    /// (connection, reason) of every teardown.
    teardowns: Vec<(u64, TeardownReason)>,
}

impl FrontDev {
    fn drop_live(&mut self) {
        if let Some(live) = self.live.take() {
            for q in live.queues {
                let _ = self.plat.close(q.port);
                // Ending the grants: a page the backend still maps stays
                // quarantined in the grant table.
                if let Err(e) = q.ring.end() {
                    log::debug!("test frontend: ending a ring's grants: {e}");
                }
            }
        }
    }
}

impl Drop for FrontDev {
    fn drop(&mut self) {
        self.drop_live();
    }
}

fn dev_err(e: impl std::fmt::Display) -> DeviceError {
    DeviceError::Device(e.to_string())
}

impl<T: Transport> Device<T> for FrontDev {
    fn setup(&mut self, xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
        self.drop_live();
        let mut read = |k: &str| {
            xs.try_read(&conn.backend_key(k))
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        let features = RingFeatures::parse(&mut read).map_err(dev_err)?;
        let want = BlkConfig {
            queues: self.cfg.queues,
            max_ring_page_order: self.cfg.max_ring_page_order,
            persistent: self.cfg.persistent,
            max_indirect_segments: 256,
        };
        let mut choice = RingChoice::choose(&want, &features).map_err(dev_err)?;
        if self.cfg.legacy_ring_ref {
            choice.ring_page_order = 0;
            choice.write_ring_page_order = false;
        }
        let mut queues = Vec::new();
        for _ in 0..choice.queues {
            let ring = TestRing::new(&self.plat, conn.peer, choice.ring_page_order as u8)
                .map_err(dev_err)?;
            let port = self.plat.alloc_unbound(conn.peer).map_err(dev_err)?;
            queues.push(FrontQueue { ring, port });
        }
        let refs: Vec<Vec<GrantRefNum>> = queues.iter().map(|q| q.ring.grefs()).collect();
        let rings: Vec<QueueRing<'_>> = refs
            .iter()
            .zip(&queues)
            .map(|(r, q)| QueueRing {
                ring_refs: r,
                event_channel: q.port.0,
            })
            .collect();
        let keys = choice
            .frontend_keys(&rings)
            .map_err(dev_err)?
            .into_iter()
            .map(|k| (k.path, k.value))
            .collect();
        let pool = BufferPool::new(
            &self.plat,
            conn.peer,
            PoolConfig {
                pages: self.cfg.pool_pages,
                buffer_size: 4096,
                access: Access::ReadWrite,
                mode: PoolMode::Trusted,
            },
        )
        .map_err(dev_err)?;
        self.live = Some(Live {
            number: conn.number,
            queues,
            pool,
            keys,
            choice,
        });
        Ok(())
    }

    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        if let Some(live) = &self.live {
            for (k, v) in &live.keys {
                tx.write(&conn.frontend_key(k), v)?;
            }
        }
        Ok(())
    }

    fn teardown(&mut self, conn: &Connection, reason: TeardownReason) {
        self.teardowns.push((conn.number, reason));
        if self.live.as_ref().is_some_and(|l| l.number == conn.number) {
            self.drop_live();
        }
    }
}

/// The test frontend of one device: its handshake, rings and buffers.
pub struct RingFrontend {
    plat: HostedPlatform,
    xs: UnixXenstore,
    fe: Frontend,
    dev: FrontDev,
    start: Instant,
    disk: Option<DiskFeatures>,
    backend: Option<String>,
}

impl RingFrontend {
    /// A frontend for the device at `frontend` (relative to the domain's
    /// home, e.g. `device/vbd/51712`), talking to the xenstore daemon at
    /// `xenstore` as `plat`'s domain. Nothing happens before
    /// [`Self::connect`].
    pub fn new(
        plat: HostedPlatform,
        xenstore: &Path,
        frontend: &str,
        cfg: FrontConfig,
    ) -> Result<Self, String> {
        let domid = grant_tables::Platform::domid(&plat);
        let xs =
            connect_as(xenstore, domid.0).map_err(|e| format!("connecting to xenstore: {e}"))?;
        Ok(RingFrontend {
            dev: FrontDev {
                plat: plat.clone(),
                cfg,
                live: None,
                teardowns: Vec::new(),
            },
            plat,
            xs,
            fe: Frontend::new(FrontendConfig::new(
                frontend,
                ConnectStyle::InitialisedFirst,
            )),
            start: Instant::now(),
            disk: None,
            backend: None,
        })
    }

    /// Polls the handshake until both ends are connected (a new
    /// connection), then reads the disk's keys.
    pub fn connect(&mut self, timeout: Duration) -> Result<Connection, String> {
        let end = Instant::now() + timeout;
        loop {
            if let HandshakeEvent::Connected(c) = self.poll_handshake()? {
                return Ok(c);
            }
            if Instant::now() >= end {
                return Err(format!(
                    "not connected after {timeout:?}: the handshake is at {:?}",
                    self.fe.phase()
                ));
            }
            self.xs
                .pump_wait(Wait::For(Duration::from_millis(2)))
                .map_err(|e| e.to_string())?;
        }
    }

    /// One poll of the handshake; on Connected the disk's keys are read
    /// (see [`Self::disk`]).
    pub fn poll_handshake(&mut self) -> Result<HandshakeEvent, String> {
        let ev = self
            .fe
            .poll(&mut self.xs, self.start.elapsed(), &mut self.dev)
            .map_err(|e| e.to_string())?;
        if let HandshakeEvent::Connected(c) = &ev {
            self.backend = Some(c.backend.clone());
            self.read_disk()?;
        }
        Ok(ev)
    }

    /// Reads the backend's disk keys again (after a resize).
    pub fn read_disk(&mut self) -> Result<&DiskFeatures, String> {
        let be = self.backend.clone().ok_or("not connected")?;
        let xs = &mut self.xs;
        let read = |k: &str| {
            xs.try_read(&format!("{be}/{k}"))
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        let d = DiskFeatures::parse(read).map_err(|e| e.to_string())?;
        Ok(self.disk.insert(d))
    }

    /// The disk as the backend described it at Connected.
    pub fn disk(&self) -> Option<&DiskFeatures> {
        self.disk.as_ref()
    }

    /// The rings chosen for the live connection.
    pub fn choice(&self) -> Option<RingChoice> {
        self.dev.live.as_ref().map(|l| l.choice)
    }

    /// The handshake's xenstore connection.
    pub fn xenstore(&mut self) -> &mut UnixXenstore {
        &mut self.xs
    }

    /// The handshake.
    pub fn handshake(&self) -> &Frontend {
        &self.fe
    }

    /// Teardowns so far: (connection, reason).
    pub fn teardowns(&self) -> &[(u64, TeardownReason)] {
        &self.dev.teardowns
    }

    /// The platform.
    pub fn platform(&self) -> &HostedPlatform {
        &self.plat
    }

    /// Queues of the live connection.
    pub fn queues(&self) -> usize {
        self.dev.live.as_ref().map_or(0, |l| l.queues.len())
    }

    /// Queue `q` of the live connection.
    pub fn queue(&mut self, q: usize) -> Result<&mut FrontQueue, String> {
        self.dev
            .live
            .as_mut()
            .and_then(|l| l.queues.get_mut(q))
            .ok_or_else(|| format!("no queue {q}"))
    }

    /// A free buffer (a 4 KiB page) of the persistent pool.
    pub fn buffer(&self) -> Result<PoolBuffer<HostedPlatform>, String> {
        self.dev
            .live
            .as_ref()
            .ok_or("not connected")?
            .pool
            .take()
            .ok_or_else(|| "the buffer pool is empty".into())
    }

    /// Puts `req` on queue `q`, publishes it and notifies when the backend
    /// asked.
    pub fn put(&mut self, q: usize, req: &BlkifRequest) -> Result<(), String> {
        let plat = self.plat.clone();
        let queue = self.queue(q)?;
        queue.ring.put_request(*req).map_err(|e| e.to_string())?;
        if queue.ring.push_requests() {
            plat.notify(queue.port).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The next response on queue `q`, if one is there (no waiting).
    pub fn try_response(&mut self, q: usize) -> Result<Option<BlkifResponse>, String> {
        self.queue(q)?
            .ring
            .take_response()
            .map_err(|e| e.to_string())
    }

    /// Waits up to `timeout` for the next response on queue `q`.
    pub fn wait_response(&mut self, q: usize, timeout: Duration) -> Result<BlkifResponse, String> {
        let end = Instant::now() + timeout;
        let event = self.dev.cfg.event;
        let plat = self.plat.clone();
        loop {
            let queue = self.queue(q)?;
            if let Some(r) = queue.ring.take_response().map_err(|e| e.to_string())? {
                return Ok(r);
            }
            let now = Instant::now();
            if now >= end {
                return Err(format!("no response on queue {q} within {timeout:?}"));
            }
            if event {
                if !queue
                    .ring
                    .final_check_for_responses()
                    .map_err(|e| e.to_string())?
                {
                    let left = (end - now).min(Duration::from_millis(20));
                    plat.block(queue.port, Some(left.as_nanos() as u64))
                        .map_err(|e| e.to_string())?;
                }
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Puts `req` on queue `q` and waits (5 s at most) for its response.
    pub fn io(&mut self, q: usize, req: &BlkifRequest) -> Result<BlkifResponse, String> {
        self.put(q, req)?;
        self.wait_response(q, Duration::from_secs(5))
    }

    /// Reads or writes whole pool pages at `sector` (one segment each, a
    /// direct request for up to 11, an indirect one beyond, with its
    /// indirect pages from the pool) and waits for the response.
    pub fn pages(
        &mut self,
        q: usize,
        write: bool,
        id: u64,
        sector: u64,
        bufs: &[&PoolBuffer<HostedPlatform>],
    ) -> Result<BlkifResponse, String> {
        let segs: Vec<BlkifRequestSegment> = bufs.iter().map(|b| whole_page(b.gref())).collect();
        let operation = if write { op::WRITE } else { op::READ };
        if segs.len() <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
            return self.io(q, &rw_request(operation, id, sector, &segs));
        }
        let (req, _pages) = self.indirect(operation, id, sector, &segs)?;
        self.io(q, &req)
    }

    /// An indirect request for `segs`, its descriptors written into pool
    /// pages (returned: keep them until the response).
    pub fn indirect(
        &self,
        operation: u8,
        id: u64,
        sector: u64,
        segs: &[BlkifRequestSegment],
    ) -> Result<(BlkifRequest, Vec<PoolBuffer<HostedPlatform>>), String> {
        let per_page = 4096 / std::mem::size_of::<BlkifRequestSegment>();
        let mut pages = Vec::new();
        for chunk in segs.chunks(per_page) {
            let mut page = self.buffer()?;
            page.write_at(0, chunk.as_bytes())
                .map_err(|e| e.to_string())?;
            pages.push(page);
        }
        if pages.len() > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
            return Err(format!(
                "{} segments need more than 8 indirect pages",
                segs.len()
            ));
        }
        let grefs: Vec<GrantRefNum> = pages.iter().map(|p| p.gref()).collect();
        let n = u16::try_from(segs.len()).map_err(|_| "too many segments".to_string())?;
        Ok((indirect_request(operation, id, sector, n, &grefs), pages))
    }

    /// The backend domain of the live connection.
    pub fn backend_domid(&self) -> Option<DomId> {
        self.fe.connection().map(|c| c.peer)
    }
}

/// A segment covering a whole page.
pub fn whole_page(gref: GrantRefNum) -> BlkifRequestSegment {
    BlkifRequestSegment {
        gref,
        first_sect: 0,
        last_sect: 7,
        _pad: [0; 2],
    }
}

/// A direct request (read, write, flush, barrier or any operation code).
pub fn rw_request(
    operation: u8,
    id: u64,
    sector: u64,
    segs: &[BlkifRequestSegment],
) -> BlkifRequest {
    let mut r = BlkifRequest::new_zeroed();
    r.operation = operation;
    r.nr_segments = segs.len().min(255) as u8;
    r.handle = 51712;
    r.id = id;
    r.sector_number = sector;
    for (d, s) in r.seg.iter_mut().zip(segs) {
        *d = *s;
    }
    r
}

/// An indirect request of `nr_segments` segments in the pages `grefs`.
pub fn indirect_request(
    operation: u8,
    id: u64,
    sector: u64,
    nr_segments: u16,
    grefs: &[GrantRefNum],
) -> BlkifRequest {
    let mut r = BlkifRequestIndirect::new_zeroed();
    r.operation = op::INDIRECT;
    r.indirect_op = operation;
    r.nr_segments = nr_segments;
    r.id = id;
    r.sector_number = sector;
    r.handle = 51712;
    for (d, s) in r.indirect_grefs.iter_mut().zip(grefs) {
        *d = *s;
    }
    BlkifRequest::from_shape(&r)
}

/// A discard request.
pub fn discard_request(id: u64, sector: u64, sectors: u64, secure: bool) -> BlkifRequest {
    let mut d = BlkifRequestDiscard::new_zeroed();
    d.operation = op::DISCARD;
    d.flag = if secure { BLKIF_DISCARD_SECURE } else { 0 };
    d.handle = 51712;
    d.id = id;
    d.sector_number = sector;
    d.nr_sectors = sectors;
    BlkifRequest::from_shape(&d)
}
