//! An in-process blkback on the fake platform, for the driver's tests: it
//! runs `xenbus::Backend`, maps the frontend's rings and data pages through
//! the fake `ForeignGrants` (persistent mappings when negotiated, per
//! request otherwise, indirect pages read-only), serves a RAM disk, and can
//! misbehave on purpose ([`Hostile`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blkfront::abi::{
    op, status, BlkifRequest, BlkifRequestSegment, BlkifResponse, BLKIF_MAX_SEGMENTS_PER_REQUEST,
    SEGMENTS_PER_INDIRECT_PAGE,
};
use grant_tables::fake::{FakeMapping, FakePlatform, FakeRingMapping};
use grant_tables::granted_ring::parse_ring_refs;
use grant_tables::{
    map_back_ring, Access, BackRing, Clock, DomId, EventChannels, ForeignGrants, ForeignMapping,
    MapOp, Port,
};
use xenbus::{
    Backend, BackendConfig, ConnectWhen, Connection, Device, DeviceError, HandshakeEvent,
    TeardownReason, Transaction, Transport, Xenstore, XsError,
};
use zerocopy::FromBytes;

use super::memstore::MemConn;

/// What the backend offers.
#[derive(Clone, Debug)]
pub struct BackConfig {
    pub sectors: u64,
    pub sector_size: u32,
    pub physical_sector_size: u32,
    pub info: u32,
    pub max_ring_page_order: Option<u32>,
    pub max_queues: Option<u32>,
    pub persistent: bool,
    pub max_indirect: Option<u32>,
    pub flush: bool,
    pub barrier: bool,
    /// (granularity, alignment, secure)
    pub discard: Option<(u32, u32, bool)>,
}

impl Default for BackConfig {
    fn default() -> Self {
        BackConfig {
            sectors: 8192,
            sector_size: 512,
            physical_sector_size: 4096,
            info: 0,
            max_ring_page_order: Some(4),
            max_queues: Some(4),
            persistent: true,
            max_indirect: Some(256),
            flush: true,
            barrier: true,
            discard: Some((4096, 0, true)),
        }
    }
}

/// Ways to misbehave, applied from the `after`-th response on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    None,
    /// An id no request has (out of range).
    BadId,
    /// Every response twice.
    Duplicate,
    /// The other data operation.
    WrongOp,
    /// A status outside the protocol.
    UnknownStatus,
    /// `rsp_prod` far ahead of the requests.
    IndexJump,
    /// Take requests and never answer.
    Stall,
    /// Answer everything with `BLKIF_RSP_ERROR`.
    IoError,
}

/// What the backend saw, for the tests' checks.
#[derive(Clone, Debug, Default)]
pub struct BackLog {
    /// Requests per wire operation.
    pub ops: BTreeMap<u8, u64>,
    /// Requests per queue.
    pub per_queue: BTreeMap<usize, u64>,
    /// Most segments seen in one request.
    pub max_segments: usize,
    /// Indirect requests.
    pub indirect: u64,
    /// Pages of the rings mapped, per connection (ring page count).
    pub ring_pages: Vec<usize>,
    /// Queues per connection.
    pub queues: Vec<usize>,
    /// Distinct data grant refs mapped persistently.
    pub persistent_maps: usize,
    /// Per-request data maps.
    pub transient_maps: u64,
    /// Frontend keys seen at setup: protocol, feature-persistent.
    pub protocol: Vec<String>,
    pub frontend_persistent: Vec<String>,
    /// Discards: (sector, sectors, secure).
    pub discards: Vec<(u64, u64, bool)>,
    /// Writes: (sector, sectors), in the order served.
    pub writes: Vec<(u64, u64)>,
    /// Requests taken and never answered (stall or hold).
    pub held: u64,
}

struct Queue {
    ring: BackRing<BlkifRequest, BlkifResponse, FakeRingMapping>,
    port: Port,
}

struct Live {
    number: u64,
    queues: Vec<Queue>,
    persistent: bool,
    pmaps: BTreeMap<u32, FakeMapping>,
}

/// The backend device.
pub struct TestBack {
    plat: Arc<FakePlatform>,
    pub disk: Arc<Mutex<Vec<u8>>>,
    pub cfg: BackConfig,
    pub hostile: Hostile,
    /// Responses given before `hostile` applies.
    pub hostile_after: u64,
    /// Take requests but hold them (a backend about to die).
    pub hold: bool,
    /// Answer flushes with EOPNOTSUPP although the feature is offered.
    pub refuse_flush: bool,
    /// Keep the data pages of held requests mapped (a backend stuck
    /// mid-transfer).
    pub keep_mapped: bool,
    kept: Vec<FakeMapping>,
    last: Option<BlkifResponse>,
    answered: u64,
    live: Option<Live>,
    pub log: Arc<Mutex<BackLog>>,
    peer: DomId,
}

impl TestBack {
    pub fn new(plat: Arc<FakePlatform>, disk: Arc<Mutex<Vec<u8>>>, cfg: BackConfig) -> Self {
        TestBack {
            plat,
            disk,
            cfg,
            hostile: Hostile::None,
            hostile_after: 0,
            hold: false,
            refuse_flush: false,
            keep_mapped: false,
            kept: Vec::new(),
            last: None,
            answered: 0,
            live: None,
            log: Arc::new(Mutex::new(BackLog::default())),
            peer: DomId(0),
        }
    }

    pub fn connected(&self) -> bool {
        self.live.is_some()
    }

    /// The `rsp_event` in queue `q`'s shared ring header: the response
    /// index at which the frontend last asked to be notified.
    pub fn rsp_event(&self, q: usize) -> Option<u32> {
        let queue = self.live.as_ref()?.queues.get(q)?;
        let mut b = [0u8; 4];
        queue.ring.memory().mapping().read_at(12, &mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }

    /// Writes `bytes` into the response slot `ahead` slots past the
    /// backend's private response producer, on queue `q`, bypassing the
    /// ring's bookkeeping (a hostile backend).
    pub fn poke_response(&mut self, q: usize, ahead: u32, bytes: &[u8; 16]) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let Some(queue) = live.queues.get_mut(q) else {
            return;
        };
        let size = queue.ring.size();
        let idx = queue.ring.rsp_prod_pvt().wrapping_add(ahead);
        let slot = 64 + (idx & (size - 1)) as usize * 112;
        let _ = queue.ring.memory().mapping().write_at(slot, bytes);
    }

    /// Publishes `rsp_prod` = the private producer plus `delta` on queue
    /// `q`, and notifies.
    pub fn poke_rsp_prod(&mut self, q: usize, delta: u32) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let Some(queue) = live.queues.get_mut(q) else {
            return;
        };
        let v = queue.ring.rsp_prod_pvt().wrapping_add(delta);
        let _ = queue.ring.memory().mapping().write_at(8, &v.to_le_bytes());
        let _ = self.plat.notify(queue.port);
    }

    /// Serves every queue once; returns requests taken.
    pub fn serve(&mut self) -> usize {
        let Some(mut live) = self.live.take() else {
            return 0;
        };
        let mut taken = 0;
        for q in 0..live.queues.len() {
            taken += self.serve_queue(&mut live, q);
        }
        self.live = Some(live);
        taken
    }

    fn serve_queue(&mut self, live: &mut Live, q: usize) -> usize {
        let mut taken = 0;
        loop {
            let req = match live.queues[q].ring.take_request() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => panic!("backend ring broken: {e}"),
            };
            taken += 1;
            *self.log.lock().unwrap().per_queue.entry(q).or_default() += 1;
            if self.hold || (self.hostile == Hostile::Stall && self.answered >= self.hostile_after)
            {
                self.log.lock().unwrap().held += 1;
                if self.keep_mapped && req.operation <= op::WRITE {
                    let access = if req.operation == op::WRITE {
                        Access::ReadOnly
                    } else {
                        Access::ReadWrite
                    };
                    for seg in &req.seg[..(req.nr_segments as usize).min(11)] {
                        if let Some(m) = self.map_one(seg.gref, access) {
                            self.kept.push(m);
                        }
                    }
                }
                continue;
            }
            let rsp = self.handle(live, &req);
            self.respond(live, q, rsp);
        }
        let queue = &mut live.queues[q];
        if queue.ring.push_responses() {
            self.plat.notify(queue.port).unwrap();
        }
        taken
    }

    fn respond(&mut self, live: &mut Live, q: usize, mut rsp: BlkifResponse) {
        let hostile = if self.answered >= self.hostile_after {
            self.hostile
        } else {
            Hostile::None
        };
        self.answered += 1;
        let queue = &mut live.queues[q];
        match hostile {
            Hostile::BadId => rsp.id = 100_000,
            Hostile::WrongOp => {
                rsp.operation = if rsp.operation == op::READ {
                    op::WRITE
                } else {
                    op::READ
                }
            }
            Hostile::UnknownStatus => rsp.status = 7,
            Hostile::IoError => rsp.status = status::ERROR,
            _ => {}
        }
        if hostile == Hostile::Duplicate {
            // The previous response again, in place of this request's.
            if let Some(last) = self.last {
                rsp = last;
            }
        }
        self.last = Some(rsp);
        queue.ring.put_response(rsp).unwrap();
        if hostile == Hostile::IndexJump {
            queue.ring.push_responses();
            let m = queue.ring.memory().mapping();
            let jump = queue.ring.rsp_prod_pvt().wrapping_add(1000);
            m.write_at(8, &jump.to_le_bytes()).unwrap();
        }
    }

    fn handle(&mut self, live: &mut Live, req: &BlkifRequest) -> BlkifResponse {
        let mut rsp = BlkifResponse {
            id: req.id,
            operation: req.operation,
            _pad0: 0,
            status: status::OKAY,
            _pad1: [0; 4],
        };
        *self
            .log
            .lock()
            .unwrap()
            .ops
            .entry(req.operation)
            .or_default() += 1;
        let (data_op, sector, segs) = match req.operation {
            op::READ | op::WRITE => {
                let n = req.nr_segments as usize;
                if n == 0 || n > BLKIF_MAX_SEGMENTS_PER_REQUEST {
                    rsp.status = status::ERROR;
                    return rsp;
                }
                (req.operation, req.sector_number, req.seg[..n].to_vec())
            }
            op::INDIRECT => {
                let ind = req.as_indirect();
                rsp.operation = ind.indirect_op;
                let n = ind.nr_segments as usize;
                let max = self.cfg.max_indirect.unwrap_or(0) as usize;
                if n == 0 || n > max {
                    rsp.status = status::ERROR;
                    return rsp;
                }
                self.log.lock().unwrap().indirect += 1;
                let pages = n.div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
                let mut segs = Vec::with_capacity(n);
                for p in 0..pages {
                    let access = if live.persistent {
                        Access::ReadWrite
                    } else {
                        Access::ReadOnly
                    };
                    let count =
                        (n - p * SEGMENTS_PER_INDIRECT_PAGE).min(SEGMENTS_PER_INDIRECT_PAGE);
                    let mut bytes = vec![0u8; count * 8];
                    let ok = self.with_map(live, ind.indirect_grefs[p], access, |m| {
                        m.read_at(0, &mut bytes).is_ok()
                    });
                    if ok != Some(true) {
                        rsp.status = status::ERROR;
                        return rsp;
                    }
                    for c in bytes.chunks_exact(8) {
                        segs.push(BlkifRequestSegment::read_from_bytes(c).unwrap());
                    }
                }
                (ind.indirect_op, ind.sector_number, segs)
            }
            op::FLUSH_DISKCACHE => {
                if !self.cfg.flush || self.refuse_flush {
                    rsp.status = status::EOPNOTSUPP;
                }
                return rsp;
            }
            op::WRITE_BARRIER => {
                if !self.cfg.barrier {
                    rsp.status = status::EOPNOTSUPP;
                }
                return rsp;
            }
            op::DISCARD => {
                let d = req.as_discard();
                let Some((_, _, secure_ok)) = self.cfg.discard else {
                    rsp.status = status::EOPNOTSUPP;
                    return rsp;
                };
                let secure = d.flag & 1 != 0;
                if secure && !secure_ok {
                    rsp.status = status::EOPNOTSUPP;
                    return rsp;
                }
                let start = d.sector_number as usize * 512;
                let len = d.nr_sectors as usize * 512;
                let mut disk = self.disk.lock().unwrap();
                if start + len > disk.len() {
                    rsp.status = status::ERROR;
                    return rsp;
                }
                disk[start..start + len].fill(0);
                self.log
                    .lock()
                    .unwrap()
                    .discards
                    .push((d.sector_number, d.nr_sectors, secure));
                return rsp;
            }
            _ => {
                rsp.status = status::EOPNOTSUPP;
                return rsp;
            }
        };
        {
            let mut log = self.log.lock().unwrap();
            log.max_segments = log.max_segments.max(segs.len());
        }
        let write = data_op == op::WRITE;
        if write && self.cfg.info & 4 != 0 {
            rsp.status = status::ERROR;
            return rsp;
        }
        let mut at = sector as usize * 512;
        let total: usize = segs
            .iter()
            .map(|s| (s.last_sect as usize + 1).saturating_sub(s.first_sect as usize) * 512)
            .sum();
        if at + total > self.disk.lock().unwrap().len() {
            rsp.status = status::ERROR;
            return rsp;
        }
        if write {
            self.log
                .lock()
                .unwrap()
                .writes
                .push((sector, total as u64 / 512));
        }
        for s in &segs {
            if s.last_sect < s.first_sect || s.last_sect > 7 {
                rsp.status = status::ERROR;
                return rsp;
            }
            let off = s.first_sect as usize * 512;
            let len = (s.last_sect as usize + 1 - s.first_sect as usize) * 512;
            // blkback maps read-write when persistent, read-only for a
            // write otherwise.
            let access = if live.persistent || !write {
                Access::ReadWrite
            } else {
                Access::ReadOnly
            };
            let disk = self.disk.clone();
            let ok = self.with_map(live, s.gref, access, |m| {
                let mut disk = disk.lock().unwrap();
                if write {
                    m.read_at(off, &mut disk[at..at + len]).is_ok()
                } else {
                    m.write_at(off, &disk[at..at + len]).is_ok()
                }
            });
            if ok != Some(true) {
                rsp.status = status::ERROR;
                return rsp;
            }
            at += len;
        }
        rsp
    }

    /// Runs `f` on a mapping of `gref`: the persistent one (made on first
    /// use) or a one-off mapping, unmapped after.
    fn with_map<R>(
        &mut self,
        live: &mut Live,
        gref: u32,
        access: Access,
        f: impl FnOnce(&FakeMapping) -> R,
    ) -> Option<R> {
        if live.persistent {
            if let std::collections::btree_map::Entry::Vacant(e) = live.pmaps.entry(gref) {
                let m = self.map_one(gref, Access::ReadWrite)?;
                e.insert(m);
                self.log.lock().unwrap().persistent_maps += 1;
            }
            return live.pmaps.get(&gref).map(f);
        }
        self.log.lock().unwrap().transient_maps += 1;
        self.map_one(gref, access).map(|m| f(&m))
    }

    fn map_one(&self, gref: u32, access: Access) -> Option<FakeMapping> {
        let mut out = Vec::new();
        self.plat.map_batch(
            &[MapOp {
                granter: self.peer,
                gref,
                access,
            }],
            &mut out,
        );
        match out.pop()? {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("test backend: mapping gref {gref}: {e}");
                None
            }
        }
    }
}

impl<T: Transport> Device<T> for TestBack {
    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        let c = &self.cfg;
        let k = |key: &str| conn.backend_key(key);
        tx.write(&k("sectors"), c.sectors.to_string())?;
        tx.write(&k("sector-size"), c.sector_size.to_string())?;
        tx.write(
            &k("physical-sector-size"),
            c.physical_sector_size.to_string(),
        )?;
        tx.write(&k("info"), c.info.to_string())?;
        match c.max_ring_page_order {
            Some(o) => tx.write(&k("max-ring-page-order"), o.to_string())?,
            None => match tx.rm(&k("max-ring-page-order")) {
                Err(e) if e.is_not_found() => {}
                r => r?,
            },
        }
        match c.max_queues {
            Some(q) => tx.write(&k("multi-queue-max-queues"), q.to_string())?,
            None => match tx.rm(&k("multi-queue-max-queues")) {
                Err(e) if e.is_not_found() => {}
                r => r?,
            },
        }
        tx.write(
            &k("feature-persistent"),
            if c.persistent { "1" } else { "0" },
        )?;
        tx.write(
            &k("feature-max-indirect-segments"),
            c.max_indirect.unwrap_or(0).to_string(),
        )?;
        tx.write(&k("feature-flush-cache"), if c.flush { "1" } else { "0" })?;
        tx.write(&k("feature-barrier"), if c.barrier { "1" } else { "0" })?;
        match c.discard {
            Some((g, a, s)) => {
                tx.write(&k("feature-discard"), "1")?;
                tx.write(&k("discard-granularity"), g.to_string())?;
                tx.write(&k("discard-alignment"), a.to_string())?;
                tx.write(&k("discard-secure"), if s { "1" } else { "0" })?;
            }
            None => tx.write(&k("feature-discard"), "0")?,
        }
        Ok(())
    }

    fn setup(&mut self, xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
        assert!(self.live.is_none(), "setup while connected");
        let bad = |m: String| DeviceError::Device(m);
        let mut read = |key: &str| -> Result<Option<String>, XsError> {
            xs.try_read(&conn.frontend_key(key))
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
        };
        let protocol = read("protocol")?.unwrap_or_default();
        let persistent_fe = read("feature-persistent")?.unwrap_or_default();
        let nq: usize = match read("multi-queue-num-queues")? {
            Some(v) => v.parse().map_err(|_| bad(format!("bad num-queues {v}")))?,
            None => 1,
        };
        let max_order = self.cfg.max_ring_page_order.unwrap_or(0) as u8;
        let mut queues = Vec::new();
        let mut pages = 0;
        for q in 0..nq {
            let prefix = if nq > 1 {
                format!("queue-{q}/")
            } else {
                String::new()
            };
            // ring-page-order is written flat, the refs under queue-N/.
            let refs = {
                let mut rd = |key: &str| -> Result<Option<String>, XsError> {
                    let full = if key == "ring-page-order" {
                        key.to_string()
                    } else {
                        format!("{prefix}{key}")
                    };
                    read(&full)
                };
                parse_ring_refs("ring-ref", max_order, &mut rd).map_err(|e| bad(e.to_string()))?
            };
            pages = refs.len();
            let port: u32 = read(&format!("{prefix}event-channel"))?
                .ok_or_else(|| bad("no event-channel".into()))?
                .parse()
                .map_err(|_| bad("bad event-channel".into()))?;
            let ring =
                map_back_ring(&*self.plat, conn.peer, &refs).map_err(|e| bad(e.to_string()))?;
            let port = self
                .plat
                .bind_interdomain(conn.peer, Port(port))
                .map_err(|e| bad(e.to_string()))?;
            queues.push(Queue { ring, port });
        }
        {
            let mut log = self.log.lock().unwrap();
            log.ring_pages.push(pages);
            log.queues.push(nq);
            log.protocol.push(protocol);
            log.frontend_persistent.push(persistent_fe.clone());
        }
        self.peer = conn.peer;
        self.live = Some(Live {
            number: conn.number,
            queues,
            persistent: self.cfg.persistent && persistent_fe == "1",
            pmaps: BTreeMap::new(),
        });
        Ok(())
    }

    fn teardown(&mut self, conn: &Connection, _reason: TeardownReason) {
        if let Some(live) = self.live.take() {
            assert_eq!(live.number, conn.number);
            for q in live.queues {
                let _ = self.plat.close(q.port);
            }
        }
    }
}

impl Drop for TestBack {
    fn drop(&mut self) {
        // A backend that dies loses its mappings and channels.
        if let Some(live) = self.live.take() {
            for q in live.queues {
                let _ = self.plat.close(q.port);
            }
        }
    }
}

/// One backend instance: its xenstore connection, handshake and device
/// (dropping it is the backend dying).
pub struct BackInstance {
    pub xs: Xenstore<MemConn>,
    pub be: Backend,
    pub dev: TestBack,
}

impl BackInstance {
    pub fn new(xs: Xenstore<MemConn>, backend_path: &str, dev: TestBack) -> Self {
        BackInstance {
            xs,
            be: Backend::new(BackendConfig::new(
                backend_path,
                ConnectWhen::FrontendInitialised,
            )),
            dev,
        }
    }

    /// One handshake poll and one pass over the rings.
    pub fn poll(&mut self) -> HandshakeEvent {
        let now = Duration::from_nanos(self.dev.plat.now_ns());
        let e = self
            .be
            .poll(&mut self.xs, now, &mut self.dev)
            .expect("backend handshake");
        self.dev.serve();
        e
    }
}
