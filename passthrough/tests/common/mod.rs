//! The pcifront test world: a frontend domain and a pciback domain on one
//! fake machine (event hub, grant hub), an in-memory xenstore with the
//! toolstack's and pciback's nodes, and a fake pciback thread serving ops
//! from an in-memory configuration space, honestly or not.

#![allow(dead_code)]

// The in-memory xenstore blkfront's tests use, shared rather than copied.
#[path = "../../../blkfront/tests/common/memstore.rs"]
pub mod memstore;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use grant_tables::fake::{FakeEventHub, FakeGrantFrames, FakeGrantHub, FakeMapping, FakePlatform};
use grant_tables::{Access, DomId, EventChannels, ForeignGrants, ForeignMapping, MapOp, Port};
use passthrough::config::{self, BarKind, ConfigAccess, ConfigReg, Width};
use passthrough::memconfig::MemConfig;
use passthrough::pciif::{self, XenPciOp, OP_OFFSET, OP_SIZE, XEN_PCIF_ACTIVE, XEN_PCI_MAGIC};
use passthrough::{Bdf, Pcifront, PcifrontConfig};
use xenbus::{ConnectStyle, Connection, Frontend, FrontendConfig, HandshakeEvent, Xenstore};

use memstore::{MemConn, MemStore};

pub const FE: DomId = DomId(1);
pub const BE: DomId = DomId(0);

pub fn frontend_path() -> String {
    format!("/local/domain/{}/device/pci/0", FE.0)
}

pub fn backend_path() -> String {
    format!("/local/domain/{}/backend/pci/{}/0", BE.0, FE.0)
}

/// The device as this domain sees it.
pub fn vdev() -> Bdf {
    Bdf::new(0, 0, 4, 0).unwrap()
}

/// An edu-like function: 1 MiB BAR0 with MSI-X (8 entries, table at
/// 0x1000, PBA at 0x1800), MSI at 0x40, MSI-X at 0x50.
pub fn edu_config() -> MemConfig {
    let mut c = MemConfig::new(vdev(), [0; 4096]);
    c.set32(config::VENDOR_ID, 0x11e8_1234, 0);
    c.set16(config::COMMAND, 0, 0x0547);
    c.set16(config::STATUS, config::STATUS_CAP_LIST, 0);
    c.set32(config::REVISION_ID, 0x00ff_0010, 0);
    c.set16(config::INTERRUPT_LINE, 0x0100, 0x00ff);
    c.set_bar(0, BarKind::Memory32, false, 0xfea0_0000, 1 << 20);
    c.set(config::CAPABILITY_LIST, &[0x40], &[0]);
    c.set32(
        0x40,
        u32::from(config::CAP_ID_MSI) | 0x50 << 8 | 0x0080 << 16,
        0x0001 << 16,
    );
    c.set32(0x50, u32::from(config::CAP_ID_MSIX) | 7 << 16, 0xc000 << 16);
    c.set32(0x54, 0x1000, 0);
    c.set32(0x58, 0x1800, 0);
    c
}

/// How the fake pciback answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As Linux's pciback does.
    Honest,
    /// Never clears `XEN_PCIF_active`.
    NeverClear,
    /// Answers with this `err`.
    Err(i32),
    /// Configuration reads return all ones.
    AllOnes,
    /// Configuration reads set bits beyond the access width.
    WideValue,
    /// Answers about another device.
    ChangeDevfn,
    /// MSI gets pirq 0.
    ZeroPirq,
    /// One MSI-X entry gets no pirq.
    MsixZeroVector,
    /// Two MSI-X entries get the same pirq.
    MsixDuplicate,
    /// An MSI-X slot names another entry.
    MsixWrongEntry,
    /// The MSI-X result is a positive number.
    MsixPositiveResult,
}

/// The fake pciback's op server (a thread).
pub struct Pciback {
    stop: Arc<AtomicBool>,
    pub mode: Arc<Mutex<Mode>>,
    pub served: Arc<AtomicU32>,
    handle: Option<JoinHandle<MemConfig>>,
}

impl Pciback {
    /// Stops the thread and returns the configuration space it served.
    pub fn stop(mut self) -> MemConfig {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
}

impl Drop for Pciback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn flags(m: &FakeMapping) -> &AtomicU32 {
    // SAFETY: the mapping is page-aligned and lives as long as the
    // returned borrow; the frontend touches `flags` only atomically.
    unsafe { AtomicU32::from_ptr(m.as_ptr().as_ptr().cast::<u32>()) }
}

fn serve(cfg: &MemConfig, mode: Mode, op: &mut XenPciOp) {
    let bdf = Bdf::from_devfn(op.domain as u16, op.bus as u8, op.devfn as u8);
    if op.domain > 0xffff || op.bus > 0xff || op.devfn > 0xff || bdf != vdev() {
        op.err = -1;
        return;
    }
    if let Mode::Err(e) = mode {
        op.err = e;
        return;
    }
    op.err = 0;
    match op.cmd {
        pciif::OP_CONF_READ | pciif::OP_CONF_WRITE => {
            let reg = Width::from_bytes(op.size as u32)
                .and_then(|w| ConfigReg::new(u16::try_from(op.offset).ok()?, w).ok());
            let Some(reg) = reg else {
                op.err = -2;
                return;
            };
            if op.cmd == pciif::OP_CONF_READ {
                op.value = match mode {
                    Mode::AllOnes => reg.width().mask(),
                    Mode::WideValue => cfg.read(bdf, reg).unwrap() | 0xdead_0000,
                    _ => cfg.read(bdf, reg).unwrap(),
                };
            } else {
                cfg.write(bdf, reg, op.value).unwrap();
            }
        }
        pciif::OP_ENABLE_MSI => op.value = if mode == Mode::ZeroPirq { 0 } else { 40 },
        pciif::OP_DISABLE_MSI | pciif::OP_DISABLE_MSIX => op.value = 11,
        pciif::OP_ENABLE_MSIX => {
            let n = op.value as usize;
            if n > pciif::MAX_MSIX_ENTRIES {
                op.err = -22;
                return;
            }
            for (i, e) in op.msix.iter_mut().take(n).enumerate() {
                e.vector = 50 + i as u16;
            }
            op.value = 0;
            match mode {
                Mode::MsixZeroVector => op.msix[n - 1].vector = 0,
                Mode::MsixDuplicate => op.msix[n - 1].vector = 50,
                Mode::MsixWrongEntry => op.msix[0].entry ^= 1,
                Mode::MsixPositiveResult => op.value = 1,
                _ => {}
            }
        }
        _ => op.err = -4,
    }
    if mode == Mode::ChangeDevfn {
        op.devfn ^= 8;
    }
}

fn spawn_server(
    back: Arc<FakePlatform>,
    mapping: FakeMapping,
    port: Port,
    cfg: MemConfig,
    mode: Mode,
) -> Pciback {
    let stop = Arc::new(AtomicBool::new(false));
    let mode = Arc::new(Mutex::new(mode));
    let served = Arc::new(AtomicU32::new(0));
    let (s, m, n) = (stop.clone(), mode.clone(), served.clone());
    let handle = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            let _ = back.block(port, Some(2_000_000));
            let f = flags(&mapping);
            if f.load(Ordering::Acquire) & XEN_PCIF_ACTIVE == 0 {
                continue;
            }
            let mode = *m.lock().unwrap();
            if mode == Mode::NeverClear {
                continue;
            }
            let mut buf = [0u8; OP_SIZE];
            mapping.read_at(OP_OFFSET, &mut buf).unwrap();
            let mut op = XenPciOp::decode(&buf);
            serve(&cfg, mode, &mut op);
            mapping.write_at(OP_OFFSET, &op.encode()).unwrap();
            f.fetch_and(!XEN_PCIF_ACTIVE, Ordering::SeqCst);
            n.fetch_add(1, Ordering::SeqCst);
            back.notify(port).unwrap();
        }
        cfg
    });
    Pciback {
        stop,
        mode,
        served,
        handle: Some(handle),
    }
}

pub type Front = Pcifront<FakePlatform>;

pub struct World {
    pub store: MemStore,
    pub front: Arc<FakePlatform>,
    pub back: Arc<FakePlatform>,
    pub xs: Xenstore<MemConn>,
    pub fe: Frontend,
    pub pf: Front,
    pub start: Instant,
}

impl World {
    /// The toolstack's nodes and pciback's, as pciback leaves them after
    /// its setup: the device exported, the root published, state
    /// Initialised.
    pub fn new(config: PcifrontConfig) -> World {
        let events = FakeEventHub::new();
        let grants = FakeGrantHub::new();
        let front = Arc::new(FakePlatform::with_grant_hub(
            FE,
            events.clone(),
            FakeGrantFrames::new(1).unwrap(),
            &grants,
        ));
        let back = Arc::new(FakePlatform::with_grant_hub(
            BE,
            events,
            FakeGrantFrames::new(1).unwrap(),
            &grants,
        ));
        let store = MemStore::new();
        let (fe, be) = (frontend_path(), backend_path());
        for (k, v) in [
            (format!("{fe}/backend"), be.clone()),
            (format!("{fe}/backend-id"), BE.0.to_string()),
            (format!("{fe}/state"), "1".into()),
            (format!("{be}/frontend"), fe.clone()),
            (format!("{be}/frontend-id"), FE.0.to_string()),
            (format!("{be}/online"), "1".into()),
            (format!("{be}/num_devs"), "1".into()),
            (format!("{be}/dev-0"), "0000:03:00.0".into()),
            (format!("{be}/vdev-0"), "0000:00:04.00".into()),
            (format!("{be}/state-0"), "3".into()),
            (format!("{be}/root_num"), "1".into()),
            (format!("{be}/root-0"), "0000:00".into()),
            (format!("{be}/state"), "3".into()),
        ] {
            store.write(&k, &v);
        }
        let xs = store.connect(FE.0);
        let fe = Frontend::new(FrontendConfig::new(
            "device/pci/0",
            ConnectStyle::InitialisedFirst,
        ));
        let pf = Pcifront::new(front.clone(), config);
        World {
            store,
            front,
            back,
            xs,
            fe,
            pf,
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn poll(&mut self) -> HandshakeEvent {
        let now = self.now();
        self.fe
            .poll(&mut self.xs, now, &mut self.pf)
            .expect("frontend handshake")
    }

    /// Polls the frontend until its state node reads `state`.
    pub fn until_state(&mut self, state: &str) {
        let key = format!("{}/state", frontend_path());
        for _ in 0..2000 {
            self.poll();
            if self.store.read(&key).as_deref() == Some(state) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!(
            "frontend never reached state {state}: {:?}",
            self.fe.phase()
        );
    }

    /// Plays pciback's attach: reads the frontend's keys, maps the page,
    /// binds the channel, goes Connected, and starts serving ops.
    pub fn attach(&mut self, cfg: MemConfig, mode: Mode) -> Pciback {
        let fe = frontend_path();
        let read = |k: &str| self.store.read(&format!("{fe}/{k}")).expect(k);
        assert_eq!(read("magic"), XEN_PCI_MAGIC);
        let gref: u32 = read("pci-op-ref").parse().unwrap();
        let port: u32 = read("event-channel").parse().unwrap();
        let mut out = Vec::new();
        self.back.map_batch(
            &[MapOp {
                granter: FE,
                gref,
                access: Access::ReadWrite,
            }],
            &mut out,
        );
        let mapping = out.pop().unwrap().expect("map the shared page");
        let bport = self.back.bind_interdomain(FE, Port(port)).unwrap();
        self.store.write(&format!("{}/state", backend_path()), "4");
        spawn_server(self.back.clone(), mapping, bport, cfg, mode)
    }

    /// Polls until the handshake reports Connected.
    pub fn until_connected(&mut self) -> Connection {
        for _ in 0..2000 {
            if let HandshakeEvent::Connected(c) = self.poll() {
                return c;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("never connected: {:?}", self.fe.phase());
    }

    /// The whole bring-up: handshake, attach, enumeration.
    pub fn connect(
        config: PcifrontConfig,
        cfg: MemConfig,
        mode: Mode,
    ) -> (World, Pciback, Connection) {
        let mut w = World::new(config);
        w.until_state("3");
        let back = w.attach(cfg, mode);
        let conn = w.until_connected();
        w.pf.read_devices(&mut w.xs, &conn).expect("read devices");
        (w, back, conn)
    }
}
