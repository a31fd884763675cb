//! The driver's test world: two fake domains sharing a grant hub and an
//! event hub, an in-memory xenstore with the toolstack's nodes, and an
//! in-process backend.

#![allow(dead_code)]

pub mod backend;
pub mod memstore;

use std::sync::{Arc, Mutex};

use blkfront::{Blkfront, Buffer, DeviceConfig, DeviceEvent, Span};
use grant_tables::fake::{FakeClock, FakeEventHub, FakeGrantFrames, FakeGrantHub, FakePlatform};
use grant_tables::DomId;
use xenbus::Xenstore;

use backend::{BackConfig, BackInstance, TestBack};
use memstore::{MemConn, MemStore};

pub const FE: DomId = DomId(1);
pub const BE: DomId = DomId(2);
pub const DEVID: u32 = 51712;

pub type Dev = Blkfront<FakePlatform>;

pub fn frontend_path() -> String {
    format!("/local/domain/{}/device/vbd/{DEVID}", FE.0)
}

pub fn backend_path() -> String {
    format!("/local/domain/{}/backend/vbd/{}/{DEVID}", BE.0, FE.0)
}

pub struct World {
    pub store: MemStore,
    pub front: Arc<FakePlatform>,
    pub back: Arc<FakePlatform>,
    pub clock: Option<FakeClock>,
    pub disk: Arc<Mutex<Vec<u8>>>,
    pub grants: Arc<FakeGrantHub>,
}

impl World {
    /// Domains on the host's clock, a disk of `sectors` 512-byte sectors.
    pub fn new(sectors: u64) -> World {
        Self::build(sectors, None)
    }

    /// Domains on a clock the test advances.
    pub fn with_fake_clock(sectors: u64) -> World {
        Self::build(sectors, Some(FakeClock::starting_at(1_000_000_000)))
    }

    fn build(sectors: u64, clock: Option<FakeClock>) -> World {
        let events = match &clock {
            Some(c) => FakeEventHub::with_clock(c),
            None => FakeEventHub::new(),
        };
        let grants = FakeGrantHub::new();
        let front = Arc::new(FakePlatform::with_grant_hub(
            FE,
            events.clone(),
            FakeGrantFrames::new(16).unwrap(),
            &grants,
        ));
        let grants2 = grants.clone();
        let back = Arc::new(FakePlatform::with_grant_hub(
            BE,
            events,
            FakeGrantFrames::new(4).unwrap(),
            &grants2,
        ));
        let w = World {
            store: MemStore::new(),
            front,
            back,
            clock,
            disk: Arc::new(Mutex::new(vec![0u8; sectors as usize * 512])),
            grants,
        };
        w.plug();
        w
    }

    /// Pages of the frontend's domain allocated now (the backend allocates
    /// none: it maps).
    pub fn front_pages(&self) -> usize {
        self.grants.registered_pages()
    }

    /// The toolstack's nodes of both ends (libxl's layout).
    pub fn plug(&self) {
        let fe = frontend_path();
        let be = backend_path();
        self.store.write(&format!("{fe}/backend"), &be);
        self.store
            .write(&format!("{fe}/backend-id"), &BE.0.to_string());
        self.store.write(&format!("{fe}/state"), "1");
        self.plug_backend();
    }

    /// The backend's directory alone (the toolstack bringing it back).
    pub fn plug_backend(&self) {
        let fe = frontend_path();
        let be = backend_path();
        self.store.write(&format!("{be}/frontend"), &fe);
        self.store
            .write(&format!("{be}/frontend-id"), &FE.0.to_string());
        self.store.write(&format!("{be}/online"), "1");
        self.store.write(&format!("{be}/state"), "1");
    }

    /// A backend instance with `cfg` on the shared disk.
    pub fn backend(&self, cfg: BackConfig) -> BackInstance {
        let dev = TestBack::new(self.back.clone(), self.disk.clone(), cfg);
        BackInstance::new(self.store.connect(BE.0), &backend_path(), dev)
    }

    /// The frontend's xenstore connection.
    pub fn front_xs(&self) -> Xenstore<MemConn> {
        self.store.connect(FE.0)
    }

    /// The device with `config` (relative directory, as a guest has it).
    pub fn device(&self, config: DeviceConfig) -> Dev {
        Blkfront::new(self.front.clone(), config).unwrap()
    }

    /// The default configuration for this world's device.
    pub fn config(&self) -> DeviceConfig {
        DeviceConfig::new(format!("device/vbd/{DEVID}"))
    }
}

/// Polls the device and the backend in turn until `until` says so; panics
/// after many rounds. Device errors do not stop it (hostile tests check
/// them through `until`).
pub fn drive(
    dev: &mut Dev,
    xs: &mut Xenstore<MemConn>,
    back: &mut Option<BackInstance>,
    mut until: impl FnMut(&mut Dev, &mut Option<BackInstance>) -> bool,
) {
    for _ in 0..20_000 {
        let _ = dev.poll(xs);
        if let Some(b) = back.as_mut() {
            b.poll();
        }
        let _ = dev.process();
        if until(dev, back) {
            return;
        }
    }
    panic!(
        "stuck: device {:?}, backend {:?}\nfrontend {:?}\nbackend {:?}",
        dev,
        back.as_ref().map(|b| b.be.phase()),
        back.as_ref().map(|b| b.xs.queued_events()),
        xs.queued_events(),
    );
}

/// Drives until connected; returns the events seen.
pub fn connect(
    dev: &mut Dev,
    xs: &mut Xenstore<MemConn>,
    back: &mut Option<BackInstance>,
) -> Vec<DeviceEvent> {
    let mut events = Vec::new();
    drive(dev, xs, back, |d, _| {
        while let Some(e) = d.next_event() {
            events.push(e);
        }
        d.is_connected()
    });
    events
}

/// A deterministic pattern for sector `sector`, byte `i`.
pub fn pattern(seed: u8, sector: u64, i: usize) -> u8 {
    (sector as u8)
        .wrapping_mul(31)
        .wrapping_add(i as u8)
        .wrapping_add(seed)
        ^ ((i >> 8) as u8)
}

/// `n` pool buffers of queue `q`, filled with the pattern for the sectors
/// from `sector` (8 sectors a buffer).
pub fn pool_spans(dev: &Dev, q: usize, n: usize, sector: u64, seed: u8) -> Vec<Span<FakePlatform>> {
    (0..n)
        .map(|k| {
            let mut b = dev.buffer(q).expect("pool buffer");
            let data = page_pattern(seed, sector + 8 * k as u64);
            b.write_at(0, &data).unwrap();
            Span::whole(b)
        })
        .collect()
}

/// The 4096 bytes of the pattern from `sector`.
pub fn page_pattern(seed: u8, sector: u64) -> Vec<u8> {
    (0..4096)
        .map(|i| pattern(seed, sector + (i / 512) as u64, i % 512))
        .collect()
}

/// The bytes of the spans, concatenated.
pub fn span_bytes(spans: &[Span<FakePlatform>]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in spans {
        let mut b = vec![0u8; s.len];
        s.buffer.read_at(s.offset, &mut b).unwrap();
        out.extend(b);
    }
    out
}

/// Empty pool buffers of queue `q`.
pub fn empty_spans(dev: &Dev, q: usize, n: usize) -> Vec<Span<FakePlatform>> {
    (0..n)
        .map(|_| {
            let mut b: Buffer<FakePlatform> = dev.buffer(q).expect("pool buffer");
            b.fill(0, 4096, 0xEE).unwrap();
            Span::whole(b)
        })
        .collect()
}
