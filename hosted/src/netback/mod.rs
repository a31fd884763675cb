//! A network backend for the hosted platform, speaking netif as Linux
//! 6.1's xen-netback does, for netfronts in other domains (processes).
//!
//! # Starting one
//! ```no_run
//! use grant_tables::DomId;
//! use hosted::netback::{Netback, NetbackConfig, ServeMode};
//! use hosted::{HostedHypervisor, HostedPlatform};
//!
//! let backend = HostedPlatform::join("/dev/shm/my-run", DomId(0)).expect("dom0");
//! let nb = Netback::start(
//!     backend,
//!     "/dev/shm/my-run/xenstored.sock",
//!     NetbackConfig::new().mode(ServeMode::Event),
//! )
//! .expect("netback");
//! // The toolstack plugs vifs (`hosted::netback::vif_device`); netback
//! // serves every one under /local/domain/0/backend/vif. The host side:
//! let port = nb.host_port();
//! port.send(&[0xff; 60]).expect("broadcast");
//! let _echo = port.recv_timeout(std::time::Duration::from_secs(1));
//! ```
//!
//! # What it does, as Linux's netback
//! - **Handshake** ([`xenbus::Backend`]): advertises `feature-sg`,
//!   `feature-gso-tcpv4`/`-tcpv6`, `feature-ipv6-csum-offload`,
//!   `feature-rx-copy`=1, `feature-rx-flip`=0, `feature-xdp-headroom`,
//!   `feature-split-event-channels` and `multi-queue-max-queues`
//!   ([`keys::advertised`]) with InitWait; connects only when the frontend
//!   is Connected; reads `multi-queue-num-queues`, each queue's
//!   `tx-ring-ref`, `rx-ring-ref` and `event-channel` or
//!   `event-channel-tx`/`-rx` (flat for one queue, `queue-N/` otherwise),
//!   `request-rx-copy`, `feature-rx-notify`, `feature-sg`,
//!   `feature-gso-tcpv4`/`-tcpv6`, `feature-no-csum-offload`,
//!   `feature-ipv6-csum-offload` and `xdp-headroom`
//!   ([`keys::FrontendRequest::read`]); attaches to the rings at their
//!   current indices; refuses a connection whose keys are wrong.
//! - **TX** ([`tx::parse_packet`]): every packet's slots are read once and
//!   checked as Linux checks them; the data is grant-copied out of the
//!   frontend's pages into a frame buffer of the backend's own memory,
//!   each request answered (`NETIF_RSP_OKAY`, or `NETIF_RSP_ERROR` for
//!   more than 18 slots, a slot larger than what remains, a first slot
//!   under 14 bytes, a failed copy), each extra-info slot with
//!   `NETIF_RSP_NULL`. Fatal errors (more requests than the ring, a packet
//!   claiming more slots than queued, `fatal_skb_slots` slots, a slot
//!   crossing its page, a missing or unknown extra, a GSO size of 0 or an
//!   unknown GSO type) **disable the vif**: it is served no more and its
//!   xenstore state does not change ([`VifStatus::disabled`]). A pass's
//!   TX responses are written and published together at the end of the
//!   pass, after the RX side has delivered what the packets became (an
//!   echo reaches its ring before the sender's TX ring is touched).
//! - **RX**: frames are queued per queue (at most half a ring of pages),
//!   and copied into the frontend's posted buffers once enough are posted,
//!   laid out as `xenvif_rx_skb` lays them out: multi-slot frames, the GSO
//!   extra, the XDP extra and headroom when the frontend asked for one.
//!   Frames expire after 10 s (30 ms without `feature-rx-notify`).
//!   Checksum-blank frames go as they are to a frontend that takes them,
//!   and are completed for one that does not.
//! - **Events**: the backend notifies only when the ring's check says so;
//!   in [`ServeMode::Event`] it sleeps on every queue's channels (one
//!   edge-triggered epoll set, kept while the channels stay the same: one
//!   system call per sleep), and a
//!   queue whose events keep bringing no work is left out of the waits for
//!   a while (XSA-391's throttling of spurious events).
//! - **Switch** ([`switch`]): a learning bridge between the vifs, the host
//!   port ([`HostPort`], or a [`HostHandler`] run on the data plane's
//!   thread) and an optional TAP device ([`TapConfig`]).
//!
//! # Threads
//! A control thread runs the xenstore side; one data-plane thread serves
//! every queue of every vif, the switch and the host handler (so an echo
//! on the host side runs on the data plane's own thread: a ping-pong
//! through the backend has two parties, the frontend and this thread).
//!
//! # Hostile mode
//! [`Hostile`] makes the backend misbehave in one chosen way after
//! [`NetbackConfig::hostile_after`] packets per vif, so that frontends
//! can be tested against a lying backend.
//!
//! # Not done
//! - No control ring (`feature-ctrl-ring`, Toeplitz hashing) and no
//!   multicast filtering: multicast add/remove extras are answered (the
//!   65th address with an error) but the switch floods multicast to every
//!   port; `feature-multicast-control` is not advertised.
//! - No software segmentation: a GSO frame goes only to a receiver that
//!   negotiated its GSO type (host port included); others drop it.
//! - No `rate` limiter, no `hotplug-status` wait, no per-queue threads
//!   (one thread serves every queue), no hash extra on RX, no RX stall
//!   detection (Linux drops the carrier after 60 s without enough posted
//!   buffers; here queued frames just expire).
//! - Every TX slot is copied (Linux maps all but the first 128 bytes). On
//!   the hosted platform a grant copy already reads the granted page
//!   through a mapping of the frontend's memory made once per peer (it only
//!   pins the grant for the copy), so a grant map per packet would add two
//!   system calls (`mmap`, `munmap`) and save nothing; and a mapping kept
//!   past the packet's TX response would make a frontend that ends its TX
//!   grants after each response (Linux's netfront) fail to end them. The
//!   copy is also the one read of the frontend's bytes that the hostile
//!   rules ask for: the switch, the checksum code and the host side see
//!   the backend's own copy.

pub mod keys;
pub mod ringfront;
pub mod switch;
pub mod tx;

mod control;
mod dataplane;
mod frames;
mod tap;
mod vif;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use grant_tables::{DomId, EventChannels, Platform, Port};

pub use dataplane::HostOut;
pub use frames::{FrameMeta, MAX_FRAME};
pub use keys::FrontendRequest;
pub use tap::TapConfig;
pub use vif::VifCounters;

use crate::toolstack::DeviceSpec;
use crate::{HostedPlatform, MappedGrant};
use control::{Control, DevCtx};
use dataplane::{Cmd, DataPlane, HostSink};
use keys::Advertised;
use vif::VifShared;

/// How the data plane waits for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeMode {
    /// Spin on the rings; never sleep (one core busy). Frontends' events are
    /// not needed (and not looked at).
    Poll,
    /// Ask for events and sleep on the channels whenever there is nothing
    /// to do.
    Event,
    /// Spin for this long after the last work, then sleep as `Event`.
    Adaptive(Duration),
}

/// How a hostile backend misbehaves (each once [`NetbackConfig::hostile_after`]
/// packets of a vif were served honestly). A frontend must survive each
/// with an error and no panic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Hostile {
    /// An honest backend.
    #[default]
    None,
    /// Bad ids: TX responses carry ids at or past the ring size (never
    /// issued); RX data responses carry their request's id plus one.
    BadIds,
    /// Overlong sizes: RX data responses claim `4096 + 512` bytes, past
    /// the end of the page.
    OverlongSizes,
    /// Offsets past the page: RX data responses have `offset` 4112.
    OffsetsPastPage,
    /// Index jumps: after each push, the response producer index of both
    /// rings is moved `2^20` ahead of what was answered.
    IndexJumps,
    /// Event storms: every idle pass of the data plane notifies each of the
    /// vif's channels 1000 times, with no work behind the events.
    EventStorm,
    /// Grants kept mapped: every grant the frontend names in a request (TX
    /// data, posted RX buffers) is mapped and the mapping kept until
    /// [`Netback::release_kept_grants`] or the backend stops, so ending
    /// those grants fails while they are held.
    KeepGrantsMapped,
    /// Responses for requests never made: after each push, one more
    /// response is written and published past the last request.
    UnsolicitedResponses,
    /// RX producer going backwards: after each RX push, the response
    /// producer index is moved back by two.
    RxProdBackwards,
}

impl Hostile {
    /// Every misbehaviour (not `None`).
    pub const ALL: [Hostile; 8] = [
        Hostile::BadIds,
        Hostile::OverlongSizes,
        Hostile::OffsetsPastPage,
        Hostile::IndexJumps,
        Hostile::EventStorm,
        Hostile::KeepGrantsMapped,
        Hostile::UnsolicitedResponses,
        Hostile::RxProdBackwards,
    ];
}

/// A frame on the host side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFrame {
    /// The Ethernet frame.
    pub data: Vec<u8>,
    /// Its offloads.
    pub meta: FrameMeta,
}

/// Frames for the host port, handled on the data plane's thread (an echo,
/// a sink). Installed with [`NetbackConfig::host_handler`]; without one,
/// frames go to [`HostPort`].
pub trait HostHandler: Send + 'static {
    /// One frame the switch sent to the host port, in its frame buffer
    /// (the handler may change it). `out` sends frames into the switch from
    /// the host port, in the same pass: new ones, or this one
    /// ([`HostOut::send_back`]).
    fn frame(&mut self, frame: &mut [u8], meta: &FrameMeta, out: &mut HostOut<'_>);
}

/// A backend's configuration.
pub struct NetbackConfig {
    mode: ServeMode,
    max_queues: u32,
    split_event_channels: bool,
    xdp_headroom: bool,
    fatal_skb_slots: u32,
    hostile: Hostile,
    hostile_after: u64,
    handler: Option<Box<dyn HostHandler>>,
    tap: Option<TapConfig>,
    frame_buffers: (u32, u32),
    on_data_thread: Option<Box<dyn FnOnce() + Send>>,
}

impl Default for NetbackConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for NetbackConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetbackConfig")
            .field("mode", &self.mode)
            .field("max_queues", &self.max_queues)
            .field("split_event_channels", &self.split_event_channels)
            .field("xdp_headroom", &self.xdp_headroom)
            .field("fatal_skb_slots", &self.fatal_skb_slots)
            .field("hostile", &self.hostile)
            .field("hostile_after", &self.hostile_after)
            .field("host_handler", &self.handler.is_some())
            .field("tap", &self.tap)
            .finish()
    }
}

impl NetbackConfig {
    /// Linux's defaults: event mode, `min(8, cpus)` queues, split event
    /// channels and XDP headroom offered, `fatal_skb_slots` 20, honest, the
    /// host side through [`HostPort`], no TAP.
    pub fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        NetbackConfig {
            mode: ServeMode::Event,
            max_queues: cpus.clamp(1, 8),
            split_event_channels: true,
            xdp_headroom: true,
            fatal_skb_slots: tx::FATAL_SKB_SLOTS,
            hostile: Hostile::None,
            hostile_after: 0,
            handler: None,
            tap: None,
            frame_buffers: (1024, 32),
            on_data_thread: None,
        }
    }

    /// How the data plane waits.
    pub fn mode(mut self, mode: ServeMode) -> Self {
        self.mode = mode;
        self
    }

    /// `multi-queue-max-queues` (1 to 64).
    pub fn max_queues(mut self, n: u32) -> Self {
        self.max_queues = n.clamp(1, 64);
        self
    }

    /// Whether `feature-split-event-channels` is offered.
    pub fn split_event_channels(mut self, on: bool) -> Self {
        self.split_event_channels = on;
        self
    }

    /// Whether `feature-xdp-headroom` is offered.
    pub fn xdp_headroom(mut self, on: bool) -> Self {
        self.xdp_headroom = on;
        self
    }

    /// `fatal_skb_slots` (never below 18, as Linux's module parameter).
    pub fn fatal_skb_slots(mut self, n: u32) -> Self {
        self.fatal_skb_slots = n.max(tx::LEGACY_SLOTS_MAX);
        self
    }

    /// Misbehave as `mode` after `after` packets of each vif.
    pub fn hostile(mut self, mode: Hostile, after: u64) -> Self {
        self.hostile = mode;
        self.hostile_after = after;
        self
    }

    /// Handles host-port frames on the data plane's thread instead of
    /// [`HostPort`].
    pub fn host_handler(mut self, h: impl HostHandler) -> Self {
        self.handler = Some(Box::new(h));
        self
    }

    /// Attaches a TAP device as a switch port.
    pub fn tap(mut self, tap: TapConfig) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Frame buffers: `small` of one page, `big` of 68 KiB (GSO frames).
    pub fn frame_buffers(mut self, small: u32, big: u32) -> Self {
        self.frame_buffers = (small.max(1), big);
        self
    }

    /// Runs `f` first thing on the data-plane thread (to pin it to a core,
    /// say).
    pub fn on_data_thread(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_data_thread = Some(Box::new(f));
        self
    }
}

/// Why a backend could not start.
#[derive(Debug)]
pub enum NetbackError {
    /// Connecting to xenstore failed.
    Xenstore(String),
    /// The platform refused something (pages for the frame buffers, the
    /// wake-up channel).
    Platform(String),
    /// The TAP device could not be opened.
    Tap(std::io::Error),
    /// A thread could not be started.
    Thread(std::io::Error),
    /// The backend has stopped.
    Stopped,
}

impl fmt::Display for NetbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetbackError::Xenstore(e) => write!(
                f,
                "netback: xenstore: {e}; check that the xenstore daemon runs and its socket path"
            ),
            NetbackError::Platform(e) => write!(f, "netback: {e}"),
            NetbackError::Tap(e) => write!(f, "netback: TAP device: {e}"),
            NetbackError::Thread(e) => write!(f, "netback: starting a thread: {e}"),
            NetbackError::Stopped => write!(f, "netback: the backend has stopped; start a new one"),
        }
    }
}

impl std::error::Error for NetbackError {}

/// What the threads share.
pub(crate) struct Shared {
    pub stop: AtomicBool,
    pub vifs: Mutex<Vec<Arc<VifShared>>>,
    /// Frames dropped on the host side (no buffer, host channel full, TAP
    /// refused).
    pub host_dropped: AtomicU64,
    /// Why the control thread stopped, if it failed.
    pub failed: Mutex<Option<String>>,
}

/// A vif as the backend sees it.
#[derive(Clone, Debug)]
pub struct VifStatus {
    /// The frontend's domain.
    pub frontend: DomId,
    /// The device id.
    pub devid: u32,
    /// Its queues.
    pub queues: u32,
    /// The handshake's connection number (1, 2, ... per backend instance).
    pub connection: u64,
    /// Why it was disabled (a fatal frontend error), or `None` while served.
    pub disabled: Option<String>,
    /// What the frontend asked for.
    pub request: FrontendRequest,
    /// Packets forwarded from it.
    pub tx_packets: u64,
    /// Packets answered with errors.
    pub tx_errors: u64,
    /// Packets answered as sent but dropped (a blank checksum with no TCP
    /// or UDP checksum to complete).
    pub tx_dropped: u64,
    /// Frames delivered to it.
    pub rx_packets: u64,
    /// Frames for it dropped.
    pub rx_dropped: u64,
    /// Events from it that brought no work.
    pub spurious_events: u64,
}

impl VifStatus {
    fn of(s: &VifShared) -> Self {
        let c = &s.counters;
        VifStatus {
            frontend: s.frontend,
            devid: s.devid,
            queues: s.queues,
            connection: s.connection,
            disabled: s.reason.lock().ok().and_then(|r| r.clone()),
            request: s.request.clone(),
            tx_packets: c.tx_packets.load(Ordering::Relaxed),
            tx_errors: c.tx_errors.load(Ordering::Relaxed),
            tx_dropped: c.tx_dropped.load(Ordering::Relaxed),
            rx_packets: c.rx_packets.load(Ordering::Relaxed),
            rx_dropped: c.rx_dropped.load(Ordering::Relaxed),
            spurious_events: c.spurious_events.load(Ordering::Relaxed),
        }
    }
}

/// The host side of the switch, for another thread: send frames as the
/// host, receive what the switch sends to the host (when no
/// [`HostHandler`] is installed). Cheap to clone.
#[derive(Clone)]
pub struct HostPort {
    plat: HostedPlatform,
    cmds: mpsc::Sender<Cmd>,
    wake: Port,
    rx: Arc<Mutex<mpsc::Receiver<HostFrame>>>,
}

impl fmt::Debug for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostPort").finish_non_exhaustive()
    }
}

impl HostPort {
    /// Sends an Ethernet frame (at least 14 bytes, complete checksums) into
    /// the switch.
    pub fn send(&self, frame: &[u8]) -> Result<(), NetbackError> {
        self.send_frame(HostFrame {
            data: frame.to_vec(),
            meta: FrameMeta::default(),
        })
    }

    /// Sends a frame with offloads (a blank checksum, GSO).
    pub fn send_frame(&self, f: HostFrame) -> Result<(), NetbackError> {
        self.cmds
            .send(Cmd::Host(f))
            .map_err(|_| NetbackError::Stopped)?;
        let _ = self.plat.notify(self.wake);
        Ok(())
    }

    /// The next frame the switch sent to the host, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<HostFrame> {
        let rx = self.rx.lock().ok()?;
        rx.recv_timeout(timeout).ok()
    }

    /// Drops every frame waiting for the host.
    pub fn drain(&self) -> usize {
        let Ok(rx) = self.rx.lock() else { return 0 };
        rx.try_iter().count()
    }
}

/// A running backend. Stops (its vifs' backend state written Closed) when
/// dropped.
pub struct Netback {
    plat: HostedPlatform,
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Cmd>,
    wake: Port,
    host: HostPort,
    kept: Arc<Mutex<Vec<MappedGrant>>>,
    threads: Vec<JoinHandle<()>>,
    wake_ports: (Port, Port),
}

impl fmt::Debug for Netback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netback")
            .field("domain", &self.plat.domid())
            .finish_non_exhaustive()
    }
}

impl Netback {
    /// Starts serving every vif under `/local/domain/<platform's
    /// domid>/backend/vif`, talking to the xenstore daemon at `xenstore`.
    pub fn start(
        platform: HostedPlatform,
        xenstore: impl AsRef<Path>,
        mut config: NetbackConfig,
    ) -> Result<Netback, NetbackError> {
        let me = platform.domid();
        let xs = crate::xenstore::connect_as(xenstore.as_ref(), me.0)
            .map_err(|e| NetbackError::Xenstore(e.to_string()))?;
        // The data plane's wake-up: a channel from this domain to itself.
        let wait_port = platform
            .alloc_unbound(me)
            .map_err(|e| NetbackError::Platform(format!("wake-up channel: {e}")))?;
        let wake = platform
            .bind_interdomain(me, wait_port)
            .map_err(|e| NetbackError::Platform(format!("wake-up channel: {e}")))?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            vifs: Mutex::new(Vec::new()),
            host_dropped: AtomicU64::new(0),
            failed: Mutex::new(None),
        });
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (host_tx, host_rx) = mpsc::sync_channel(4096);
        let kept = Arc::new(Mutex::new(Vec::new()));
        let mut tap = match &config.tap {
            Some(t) => Some(tap::Tap::open(t).map_err(NetbackError::Tap)?),
            None => None,
        };
        if let Some(t) = &mut tap {
            t.start_reader(platform.clone(), cmd_tx.clone(), wake)
                .map_err(NetbackError::Thread)?;
        }
        let host_sink = match config.handler.take() {
            Some(h) => HostSink::Handler(h),
            None => HostSink::Channel(host_tx),
        };
        let (small, big) = config.frame_buffers;
        let mode = config.mode;
        let on_start = config.on_data_thread.take();
        let (ready_tx, ready_rx) = mpsc::channel();
        let dp_plat = platform.clone();
        let dp_shared = shared.clone();
        let dp = std::thread::Builder::new()
            .name("netback-data".into())
            .spawn(move || {
                if let Some(f) = on_start {
                    f();
                }
                let pool = match frames::FramePool::new(&dp_plat, small, big) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("frame buffers: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                DataPlane::new(
                    dp_plat, mode, cmd_rx, wait_port, pool, host_sink, tap, dp_shared,
                )
                .run();
            })
            .map_err(NetbackError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = dp.join();
                return Err(NetbackError::Platform(e));
            }
            Err(_) => {
                let _ = dp.join();
                return Err(NetbackError::Platform(
                    "the data plane failed to start".into(),
                ));
            }
        }
        let ctx = Arc::new(DevCtx {
            plat: platform.clone(),
            cmds: cmd_tx.clone(),
            wake,
            shared: shared.clone(),
            advertised: Advertised {
                max_queues: config.max_queues,
                split_event_channels: config.split_event_channels,
                xdp_headroom: config.xdp_headroom,
            },
            fatal_skb_slots: config.fatal_skb_slots,
            hostile: config.hostile,
            hostile_after: config.hostile_after,
            kept: kept.clone(),
            next_id: AtomicU32::new(1),
        });
        let base = format!("/local/domain/{}/backend/vif", me.0);
        let control = Control::new(ctx, xs, base);
        let ctl = std::thread::Builder::new()
            .name("netback-xenbus".into())
            .spawn(move || control.run());
        let ctl = match ctl {
            Ok(h) => h,
            Err(e) => {
                let _ = cmd_tx.send(Cmd::Stop);
                let _ = platform.notify(wake);
                let _ = dp.join();
                return Err(NetbackError::Thread(e));
            }
        };
        if config.hostile != Hostile::None {
            log::warn!(
                "netback: HOSTILE backend ({:?} after {} packets per vif), for testing frontends",
                config.hostile,
                config.hostile_after
            );
        }
        let host = HostPort {
            plat: platform.clone(),
            cmds: cmd_tx.clone(),
            wake,
            rx: Arc::new(Mutex::new(host_rx)),
        };
        Ok(Netback {
            plat: platform,
            shared,
            cmds: cmd_tx,
            wake,
            host,
            kept,
            threads: vec![ctl, dp],
            wake_ports: (wait_port, wake),
        })
    }

    /// The host side of the switch.
    pub fn host_port(&self) -> HostPort {
        self.host.clone()
    }

    /// Every vif connected now.
    pub fn vifs(&self) -> Vec<VifStatus> {
        match self.shared.vifs.lock() {
            Ok(v) => v.iter().map(|s| VifStatus::of(s)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The vif of `frontend`'s device `devid`, if connected.
    pub fn vif(&self, frontend: DomId, devid: u32) -> Option<VifStatus> {
        self.vifs()
            .into_iter()
            .find(|v| v.frontend == frontend && v.devid == devid)
    }

    /// Waits until `frontend`'s device `devid` is connected with a
    /// connection number of at least `min_connection`.
    pub fn wait_vif(
        &self,
        frontend: DomId,
        devid: u32,
        min_connection: u64,
        timeout: Duration,
    ) -> Option<VifStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = self.vif(frontend, devid) {
                if v.connection >= min_connection {
                    return Some(v);
                }
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Frames dropped on the host side so far.
    pub fn host_dropped(&self) -> u64 {
        self.shared.host_dropped.load(Ordering::Relaxed)
    }

    /// Why the control side stopped, if it failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().ok().and_then(|f| f.clone())
    }

    /// The data plane's frame buffers: `[free small, free big, small,
    /// big]` (all free when no frame is in flight or queued).
    pub fn frame_buffers(&self) -> Option<[usize; 4]> {
        let (tx, rx) = mpsc::channel();
        self.cmds.send(Cmd::Buffers(tx)).ok()?;
        let _ = self.plat.notify(self.wake);
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Grants mapped and kept by [`Hostile::KeepGrantsMapped`].
    pub fn kept_grants(&self) -> usize {
        self.kept.lock().map(|k| k.len()).unwrap_or(0)
    }

    /// Unmaps the grants [`Hostile::KeepGrantsMapped`] kept.
    pub fn release_kept_grants(&self) -> usize {
        match self.kept.lock() {
            Ok(mut k) => {
                let n = k.len();
                k.clear();
                n
            }
            Err(_) => 0,
        }
    }

    /// Stops: every vif is let go (rings unmapped, channels closed) and its
    /// backend state written Closed.
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // The control thread lets the vifs go through the data plane, then
        // the data plane stops.
        if let Some(ctl) = (!self.threads.is_empty()).then(|| self.threads.remove(0)) {
            let _ = ctl.join();
        }
        let _ = self.cmds.send(Cmd::Stop);
        let _ = self.plat.notify(self.wake);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = self.plat.close(self.wake_ports.1);
        let _ = self.plat.close(self.wake_ports.0);
        self.release_kept_grants();
    }
}

impl Drop for Netback {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_threads();
        }
    }
}

/// The toolstack's description of a vif (`libxl`'s nodes): the frontend's
/// `mac` and `handle`, the backend's `mac`, `handle` and `type`. Plug it
/// with [`crate::add_device`].
pub fn vif_device(frontend: DomId, backend: DomId, devid: u32, mac: &str) -> DeviceSpec {
    DeviceSpec::new("vif", frontend, backend, devid)
        .frontend_node("mac", mac)
        .frontend_node("handle", &devid.to_string())
        .backend_node("mac", mac)
        .backend_node("handle", &devid.to_string())
        .backend_node("type", "vif")
}
