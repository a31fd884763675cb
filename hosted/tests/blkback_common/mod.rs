//! What the blkback tests share: two domains (frontend dom1, backend
//! dom2), a xenstore daemon, the toolstack's device directories, a disk
//! file, a blkback and the test frontend.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use grant_tables::DomId;
use hosted::blkback::front::{FrontConfig, RingFrontend};
use hosted::blkback::{Blkback, BlkbackConfig, WaitMode};
use hosted::toolstack::{add_device, DeviceSpec};
use hosted::xenstore::{connect_as, UnixXenstore, XenstoreDaemon};
use hosted::{HostedHypervisor, HostedPlatform};

pub const FE: DomId = DomId(1);
pub const BE: DomId = DomId(2);
pub const FRONT_PATH: &str = "device/vbd/51712";
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    fn new(base: PathBuf, tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = base.join(format!(
            "blkback-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create test dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Rig {
    pub back: Option<Blkback>,
    pub front_plat: HostedPlatform,
    pub back_plat: HostedPlatform,
    pub xs0: UnixXenstore,
    pub spec: DeviceSpec,
    pub disk: PathBuf,
    pub daemon: XenstoreDaemon,
    pub hv: HostedHypervisor,
    _shm: TempDir,
    _files: TempDir,
}

impl Rig {
    /// A rig with a zero-filled disk file of `bytes` and a blkback set up
    /// by `cfg` (in event mode unless `cfg` says otherwise), with the
    /// backend directory's extra `nodes`.
    pub fn with(
        tag: &str,
        bytes: u64,
        nodes: &[(&str, &str)],
        cfg: impl FnOnce(&mut BlkbackConfig),
    ) -> Rig {
        let _ = env_logger_init();
        let shm_base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let shm = TempDir::new(shm_base, tag);
        // The disk lives on a file system with O_DIRECT (not tmpfs).
        let files = TempDir::new(PathBuf::from(env!("CARGO_TARGET_TMPDIR")), tag);
        let disk = files.0.join("disk.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(bytes))
            .expect("create the disk file");
        let hv = HostedHypervisor::create(&shm.0).expect("hypervisor");
        let front_plat = hv.join(FE).expect("dom1");
        let back_plat = hv.join(BE).expect("dom2");
        let daemon = XenstoreDaemon::spawn(shm.0.join("xenstored.sock")).expect("xenstored");
        let mut xs0 = connect_as(daemon.socket(), 0).expect("dom0 xenstore");
        let mut spec = DeviceSpec::new("vbd", FE, BE, 51712);
        for (k, v) in nodes {
            spec = spec.backend_node(k, v);
        }
        add_device(&mut xs0, &spec).expect("add the device");
        let mut config = BlkbackConfig::new(&disk);
        config.wait = WaitMode::Event {
            spin: Duration::from_micros(20),
        };
        config.max_queues = 4;
        cfg(&mut config);
        let back = Blkback::spawn(
            back_plat.clone(),
            daemon.socket(),
            &spec.backend_path(),
            config,
        )
        .expect("blkback");
        Rig {
            back: Some(back),
            front_plat,
            back_plat,
            xs0,
            spec,
            disk,
            daemon,
            hv,
            _shm: shm,
            _files: files,
        }
    }

    pub fn new(tag: &str) -> Rig {
        Rig::with(tag, 16 << 20, &[], |_| {})
    }

    pub fn back(&self) -> &Blkback {
        self.back.as_ref().expect("blkback running")
    }

    /// A test frontend, connected.
    pub fn front(&self, cfg: FrontConfig) -> RingFrontend {
        let mut f = RingFrontend::new(
            self.front_plat.clone(),
            self.daemon.socket(),
            FRONT_PATH,
            cfg,
        )
        .expect("frontend");
        f.connect(TIMEOUT).expect("connect");
        f
    }

    /// A backend key, as dom0 reads it.
    pub fn backend_key(&mut self, key: &str) -> Option<String> {
        let p = format!("{}/{key}", self.spec.backend_path());
        self.xs0
            .try_read(&p)
            .expect("read")
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// The disk file's bytes at `offset`.
    pub fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&self.disk).expect("open disk");
        let mut v = vec![0u8; len];
        f.read_exact_at(&mut v, offset).expect("read disk");
        v
    }

    pub fn write_file(&self, offset: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.disk)
            .expect("open disk");
        f.write_all_at(data, offset).expect("write disk");
        f.sync_all().expect("sync disk");
    }
}

fn env_logger_init() -> Option<()> {
    None
}

/// A recognisable page: `tag` and the byte's index mixed.
pub fn pattern(tag: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) ^ tag.wrapping_mul(40503)).to_le_bytes()[1])
        .collect()
}
