//! What the netback tests share: a hypervisor, a xenstore daemon, the
//! backend domain running a netback, and frontend domains with vifs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use grant_tables::DomId;
use hosted::netback::ringfront::{RingFront, RingFrontConfig};
use hosted::netback::{vif_device, Netback, NetbackConfig, VifStatus};
use hosted::toolstack::{add_device, remove_device};
use hosted::xenstore::{connect_as, UnixXenstore, XenstoreDaemon};
use hosted::{HostedHypervisor, HostedPlatform};

pub const BACK: DomId = DomId(0);
pub const T: Duration = Duration::from_secs(10);

/// A fresh directory (removed on drop).
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!(
            "netback-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The hypervisor, xenstore and the backend domain.
pub struct World {
    pub nb: Option<Netback>,
    pub back: HostedPlatform,
    pub xs0: UnixXenstore,
    pub daemon: XenstoreDaemon,
    pub hv: HostedHypervisor,
    pub dir: Dir,
}

pub fn mac(fe: DomId, devid: u32) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0x00, fe.0 as u8, devid as u8]
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl World {
    pub fn new(tag: &str, config: NetbackConfig) -> World {
        let _ = env_logger_init();
        let dir = Dir::new(tag);
        let hv = HostedHypervisor::create(&dir.0).unwrap();
        let daemon = XenstoreDaemon::spawn(dir.0.join("xenstored.sock")).unwrap();
        let xs0 = connect_as(daemon.socket(), 0).unwrap();
        let back = hv.join(BACK).unwrap();
        let nb = Netback::start(back.clone(), daemon.socket(), config).unwrap();
        World {
            nb: Some(nb),
            back,
            xs0,
            daemon,
            hv,
            dir,
        }
    }

    pub fn nb(&self) -> &Netback {
        self.nb.as_ref().expect("netback running")
    }

    /// Plugs vif `devid` of `fe` (the toolstack's part).
    pub fn plug(&mut self, fe: DomId, devid: u32) {
        add_device(
            &mut self.xs0,
            &vif_device(fe, BACK, devid, &mac_str(mac(fe, devid))),
        )
        .unwrap();
    }

    pub fn unplug(&mut self, fe: DomId, devid: u32) {
        remove_device(
            &mut self.xs0,
            &vif_device(fe, BACK, devid, &mac_str(mac(fe, devid))),
        )
        .unwrap();
    }

    /// A new frontend domain.
    pub fn domain(&self, fe: DomId) -> HostedPlatform {
        self.hv.join(fe).unwrap()
    }

    /// Plugs and connects a ring-level frontend.
    pub fn front(&mut self, plat: &HostedPlatform, devid: u32, cfg: RingFrontConfig) -> RingFront {
        let fe = grant_tables::Platform::domid(plat);
        self.plug(fe, devid);
        let f = RingFront::connect(plat.clone(), self.daemon.socket(), devid, cfg, T).unwrap();
        self.wait_vif(fe, devid, 1);
        f
    }

    pub fn wait_vif(&self, fe: DomId, devid: u32, min_conn: u64) -> VifStatus {
        self.nb()
            .wait_vif(fe, devid, min_conn, T)
            .unwrap_or_else(|| panic!("vif {}.{devid} did not connect", fe.0))
    }

    pub fn xs(&self, dom: DomId) -> UnixXenstore {
        connect_as(self.daemon.socket(), dom.0).unwrap()
    }

    pub fn read(&mut self, path: &str) -> Option<String> {
        self.xs0
            .try_read(path)
            .unwrap()
            .map(|b| String::from_utf8(b).unwrap())
    }

    pub fn be_path(fe: DomId, devid: u32) -> String {
        format!("/local/domain/{}/backend/vif/{}/{devid}", BACK.0, fe.0)
    }

    /// Restarts the backend with a new configuration.
    pub fn restart_backend(&mut self, config: NetbackConfig) {
        if let Some(nb) = self.nb.take() {
            nb.stop();
        }
        self.nb = Some(Netback::start(self.back.clone(), self.daemon.socket(), config).unwrap());
    }
}

fn env_logger_init() -> Option<()> {
    None
}

/// An Ethernet frame from `src` to `dst` of `len` bytes (at least 14), the
/// payload a pattern seeded by `seed`.
pub fn frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x88b5u16.to_be_bytes()); // local experimental
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f.truncate(len);
    f
}

pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const BCAST: [u8; 6] = [0xff; 6];

/// Receives a frame within `T` (event mode).
pub fn recv(f: &mut RingFront) -> hosted::netback::ringfront::Received {
    f.recv_timeout(T, false)
        .unwrap()
        .expect("a frame within the timeout")
}

/// Polls until `cond` holds or `T` passes.
pub fn until(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + T;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// Collects TX completions until `n` arrived.
pub fn tx_done(f: &mut RingFront, n: usize) -> Vec<hosted::netback::ringfront::TxDone> {
    let mut out = Vec::new();
    let end = Instant::now() + T;
    while out.len() < n {
        out.extend(f.poll_tx().unwrap());
        if out.len() >= n {
            break;
        }
        assert!(
            Instant::now() < end,
            "only {} of {n} TX completions",
            out.len()
        );
        let _ = f.block_tx(Duration::from_millis(20));
    }
    out
}

/// A TCP/IPv4 frame of `len` bytes with the pseudo-header sum in the
/// checksum field (a partial checksum).
pub fn tcp4_frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = frame(dst, src, len, 7);
    f[12] = 0x08;
    f[13] = 0x00;
    let ip_len = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[4..8].copy_from_slice(&[0, 1, 0x40, 0]);
    ip[8] = 64;
    ip[9] = 6;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let csum = !netfront::csum::ones_complement_sum(&f[14..34]);
    f[24..26].copy_from_slice(&csum.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[12] = 5 << 4;
    tcp[16..18].copy_from_slice(&[0, 0]);
    let l4 = (len - 34) as u32;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 6]);
    pseudo.extend_from_slice(&(l4 as u16).to_be_bytes());
    let p = netfront::csum::ones_complement_sum(&pseudo);
    f[50..52].copy_from_slice(&p.to_be_bytes());
    f
}
