//! The whole device: the xenbus handshake and the driver, as one
//! [`FrameDevice`].
//!
//! [`NetfrontDevice`] owns a xenstore client, the frontend handshake
//! ([`xenbus::Frontend`], [`ConnectStyle::ConnectedAtOnce`]: netback
//! attaches only once the frontend is Connected) and a [`Netfront`]. Its
//! [`FrameDevice::poll`] drives the handshake too (every
//! [`NetfrontDevice::set_handshake_interval`] of the platform's clock while
//! connected, at every poll otherwise; a receive that spins looks at the
//! clock once every [`RECEIVES_PER_CLOCK`] calls), so after a backend
//! restart the link comes back by itself: the old connection is torn down (see
//! [`crate::nic`] for what becomes of frames in flight), a new one is set
//! up and published when the backend returns, and frames flow again once
//! it connects.

use alloc::string::ToString;
use core::time::Duration;

use grant_tables::Platform;
use xenbus::{
    ConnectStyle, Frontend, FrontendConfig, HandshakeError, HandshakeEvent, Transport, Wait,
    Xenstore,
};

use crate::buffers::{NetRxFrame, TxBuf};
use crate::frame::{FrameDevice, FrameError, LinkInfo};
use crate::nic::{DriverConfig, Netfront};

/// Default time between two looks at xenstore while connected: 10 ms.
pub const DEFAULT_HANDSHAKE_INTERVAL_NS: u64 = 10_000_000;

/// While the link is up, [`FrameDevice::receive`] and [`FrameDevice::poll`]
/// read the platform's clock (to see whether the handshake is due) once
/// every this many calls (of either), and on the first call after a
/// [`FrameDevice::wait`] that timed out (one that an event ended leaves
/// the count alone, so the frame that woke it is not held up by a clock
/// read): an application spinning on `receive` or `poll`
/// would otherwise read the clock at every poll, which costs more than the
/// poll itself on a hosted platform (tens of nanoseconds on the round
/// trip's critical path, and most of a spinning sender's time).
pub const RECEIVES_PER_CLOCK: u32 = 16;

/// A netfront device with its xenbus handshake (see the crate docs).
pub struct NetfrontDevice<P: Platform, T: Transport>
where
    P::Pages: 'static,
{
    xs: Xenstore<T>,
    fe: Frontend,
    nic: Netfront<P>,
    interval_ns: u64,
    next_check_ns: u64,
    failed: Option<HandshakeError>,
    restarts: u64,
    /// Receives and polls since the clock was last read (see
    /// [`RECEIVES_PER_CLOCK`]).
    receives: u32,
}

impl<P: Platform, T: Transport> NetfrontDevice<P, T>
where
    P::Pages: 'static,
{
    /// A device for the vif whose frontend directory is `frontend`
    /// (`device/vif/0`, relative to the domain's home, or absolute), with
    /// the xenstore client `xs`. Nothing happens until the first poll.
    pub fn new(platform: P, xs: Xenstore<T>, frontend: &str, config: DriverConfig) -> Self {
        Self::with_handshake(
            platform,
            xs,
            FrontendConfig::new(frontend, ConnectStyle::ConnectedAtOnce),
            config,
        )
    }

    /// As [`Self::new`], with the handshake's own configuration (its
    /// timeouts). The style is forced to
    /// [`ConnectStyle::ConnectedAtOnce`], which netback needs.
    pub fn with_handshake(
        platform: P,
        xs: Xenstore<T>,
        mut handshake: FrontendConfig,
        config: DriverConfig,
    ) -> Self {
        handshake.style = ConnectStyle::ConnectedAtOnce;
        NetfrontDevice {
            xs,
            fe: Frontend::new(handshake),
            nic: Netfront::new(platform, config),
            interval_ns: DEFAULT_HANDSHAKE_INTERVAL_NS,
            next_check_ns: 0,
            failed: None,
            restarts: 0,
            receives: 0,
        }
    }

    /// Sets how often a connected device looks at xenstore (the backend
    /// going away is noticed within this time; each look is a xenstore
    /// round trip).
    pub fn set_handshake_interval(&mut self, ns: u64) {
        self.interval_ns = ns;
    }

    /// The driver.
    pub fn nic(&self) -> &Netfront<P> {
        &self.nic
    }

    /// The driver, mutably.
    pub fn nic_mut(&mut self) -> &mut Netfront<P> {
        &mut self.nic
    }

    /// The handshake.
    pub fn frontend(&self) -> &Frontend {
        &self.fe
    }

    /// The xenstore client.
    pub fn xenstore_mut(&mut self) -> &mut Xenstore<T> {
        &mut self.xs
    }

    /// The handshake's failure, if it failed for good (a xenstore error, a
    /// connection that could not be set up, such as a backend with
    /// malformed keys); the device stays down. A wait for the backend that
    /// times out is not a failure: the handshake starts over by itself.
    pub fn handshake_error(&self) -> Option<&HandshakeError> {
        self.failed.as_ref()
    }

    /// How many times the handshake started over after a wait for the
    /// backend timed out.
    pub fn handshake_restarts(&self) -> u64 {
        self.restarts
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.nic.platform().now_ns())
    }

    /// Drives the handshake once, now; returns what it reported.
    pub fn poll_handshake(&mut self) -> Result<HandshakeEvent, FrameError> {
        if let Some(e) = &self.failed {
            return Err(FrameError::Broken(alloc::format!(
                "the xenbus handshake failed: {e}"
            )));
        }
        let now = self.now();
        self.next_check_ns = self
            .nic
            .platform()
            .now_ns()
            .saturating_add(self.interval_ns);
        match self.fe.poll(&mut self.xs, now, &mut self.nic) {
            Ok(ev) => {
                match &ev {
                    HandshakeEvent::Connected(c) if self.nic.connection() == Some(c.number) => {
                        self.nic.backend_connected();
                    }
                    HandshakeEvent::Disconnected { connection, loss } => {
                        log::warn!(
                            "netfront: backend lost ({loss}); connection {connection} ended, waiting for it to return"
                        );
                    }
                    _ => {}
                }
                Ok(ev)
            }
            Err(e) if e.is_transient() => Ok(HandshakeEvent::Idle),
            Err(e @ HandshakeError::Timeout { .. }) => {
                // A backend that is slow to come (back): keep trying, the
                // link stays down meanwhile.
                log::warn!("netfront: {e}; starting the handshake over");
                self.fe.restart();
                self.restarts += 1;
                Ok(HandshakeEvent::Idle)
            }
            Err(e) => {
                log::error!("netfront: the xenbus handshake failed: {e}");
                let msg = e.to_string();
                self.failed = Some(e);
                Err(FrameError::Broken(alloc::format!(
                    "the xenbus handshake failed: {msg}"
                )))
            }
        }
    }

    /// Polls until the link is up or `timeout_ns` of the platform's clock
    /// passes.
    pub fn wait_up(&mut self, timeout_ns: u64) -> Result<(), FrameError> {
        let end = self.nic.platform().now_ns().saturating_add(timeout_ns);
        loop {
            self.poll()?;
            if self.nic.is_up() {
                return Ok(());
            }
            let now = self.nic.platform().now_ns();
            if now >= end {
                return Err(FrameError::LinkDown);
            }
            self.wait(Some((end - now).min(1_000_000)))?;
        }
    }

    /// Closes the device in order: writes Closing, waits (up to
    /// `timeout_ns` of the platform's clock) for the backend to close,
    /// ends the connection (frames in flight fail) and writes Closed.
    /// The device stays closed.
    pub fn close(&mut self, timeout_ns: u64) -> Result<(), FrameError> {
        let now = self.now();
        self.fe
            .close(&mut self.xs, now)
            .map_err(|e| FrameError::Broken(alloc::format!("closing the vif: {e}")))?;
        let end = self.nic.platform().now_ns().saturating_add(timeout_ns);
        loop {
            let now = self.now();
            match self.fe.poll(&mut self.xs, now, &mut self.nic) {
                Ok(HandshakeEvent::Closed | HandshakeEvent::Removed) => {
                    self.nic.end_connection("closed");
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) if e.is_transient() => {}
                Err(e) => {
                    self.nic.end_connection("closing failed");
                    return Err(FrameError::Broken(alloc::format!("closing the vif: {e}")));
                }
            }
            if self.nic.platform().now_ns() >= end {
                self.nic.end_connection("the backend did not close in time");
                return Err(FrameError::Broken(
                    "closing the vif: the backend did not close in time; the connection was ended anyway"
                        .to_string(),
                ));
            }
            let _ = self.xs.pump_wait(Wait::For(Duration::from_millis(1)));
        }
    }

    /// Whether the handshake should be driven now: always while the link
    /// is down; while it is up, when its interval has passed, the clock
    /// being read only once every [`RECEIVES_PER_CLOCK`] calls (of
    /// `receive` and `poll`).
    #[inline]
    fn handshake_due(&mut self) -> bool {
        if !self.nic.is_up() {
            return true;
        }
        self.receives += 1;
        if self.receives < RECEIVES_PER_CLOCK {
            return false;
        }
        self.receives = 0;
        self.nic.platform().now_ns() >= self.next_check_ns
    }
}

impl<P: Platform, T: Transport> FrameDevice for NetfrontDevice<P, T>
where
    P::Pages: 'static,
{
    type Tx = TxBuf<P>;
    type Rx = NetRxFrame<P>;

    fn link(&self) -> LinkInfo {
        self.nic.link()
    }

    fn tx_buffer(&mut self, len: usize) -> Result<Option<TxBuf<P>>, FrameError> {
        self.nic.tx_buffer(len)
    }

    fn send(&mut self, frame: TxBuf<P>) -> Result<(), FrameError> {
        self.nic.send(frame)
    }

    fn receive(&mut self) -> Result<Option<NetRxFrame<P>>, FrameError> {
        if self.handshake_due() {
            self.poll_handshake()?;
        }
        match self.nic.receive() {
            Err(FrameError::LinkDown) => Ok(None),
            other => other,
        }
    }

    fn poll(&mut self) -> Result<bool, FrameError> {
        let mut progress = false;
        if self.handshake_due() {
            progress |= self.poll_handshake()? != HandshakeEvent::Idle;
        }
        progress |= self.nic.poll()?;
        Ok(progress)
    }

    fn wait(&mut self, timeout_ns: Option<u64>) -> Result<bool, FrameError> {
        let cap = timeout_ns.map_or(self.interval_ns, |t| t.min(self.interval_ns));
        if self.nic.is_up() {
            let r = self.nic.wait(Some(cap));
            if !matches!(r, Ok(true)) {
                // Nothing came (or the wait failed): the next receive reads
                // the clock, as it may well be time for the handshake. A
                // wait that ends with work leaves the count as it is, so a
                // frame that woke it is handed over without a look at the
                // clock first (the count still brings one within
                // [`RECEIVES_PER_CLOCK`] calls).
                self.receives = RECEIVES_PER_CLOCK - 1;
            }
            return r;
        }
        // The next receive reads the clock: after a wait it may well be
        // time for the handshake.
        self.receives = RECEIVES_PER_CLOCK - 1;
        // Down: what changes things is xenstore (the backend's state).
        match self
            .xs
            .pump_wait(Wait::For(Duration::from_nanos(cap.max(1))))
        {
            Ok(n) => Ok(n > 0),
            Err(e) if e.is_fatal() => {
                Err(FrameError::Broken(alloc::format!("xenstore failed: {e}")))
            }
            Err(_) => Ok(false),
        }
    }
}
