//! pcifront: configuration space and MSI/MSI-X through xen-pciback.
//!
//! A PV domain does not reach PCI configuration space itself: it asks the
//! PCI backend (Linux's xen-pciback in dom0) with the `io/pciif.h` protocol
//! ([`crate::pciif`]) over one granted page and one event channel.
//! [`Pcifront`] is that frontend, as Linux 6.1's xen-pcifront speaks it:
//!
//! - the xenbus handshake (it implements [`xenbus::Device`]; drive it with
//!   a [`xenbus::Frontend`] in
//!   [`InitialisedFirst`](xenbus::ConnectStyle::InitialisedFirst) style at
//!   `device/pci/0`): each connection grants a fresh zeroed page to the
//!   backend and allocates an event channel, then writes `pci-op-ref`,
//!   `event-channel` and `magic` ([`XEN_PCI_MAGIC`]) with state
//!   Initialised. pciback, which waits at Initialised with the devices
//!   exported, maps the page, binds the channel and goes Connected;
//! - device enumeration ([`Pcifront::read_devices`], once connected): the
//!   backend's `root_num`/`root-N` (the virtual root buses) and
//!   `num_devs`/`state-N`/`vdev-N` (the functions passed through, by the
//!   address this domain uses for them);
//! - one op at a time ([`Pcifront`] implements
//!   [`ConfigAccess`], and has the MSI and MSI-X
//!   calls): write the op, set `XEN_PCIF_active`, notify, wait for the
//!   backend to clear the bit (at most [`PcifrontConfig::op_timeout_ns`]),
//!   copy the op back once and check it ([`check_reply`]).
//!
//! The backend is not trusted. An op that does not complete in time, or a
//! reply that breaks the protocol (an undefined error code, a value wider
//! than the access, bogus MSI-X vectors, a changed device), breaks the
//! frontend: every later op fails with [`PciError::DeviceBroken`] until the
//! next connection. Errors the backend states cleanly
//! ([`PciError::Backend`]) are returned and do not break it.
//!
//! Not supported: hot-plug while connected (pciback's Reconfiguring and
//! Reconfigured states; the devices are read once per connection) and AER
//! (see [`crate::pciif`]).
//!
//! MSI and MSI-X yield Xen pirqs ([`Pirq`]); the platform binds each to an
//! event channel (`EVTCHNOP_bind_pirq`), which the driver then polls or
//! blocks on.

use alloc::format;
use alloc::string::ToString;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use grant_tables::{Access, GrantedPages, Platform, Port};
use xenbus::{
    Connection, Device, DeviceError, TeardownReason, Transaction, Transport, XenbusState, Xenstore,
    XsError,
};

use crate::config::{ConfigAccess, ConfigReg};
pub use crate::pciif::Pirq;
use crate::pciif::{
    check_reply, OpReply, OpRequest, XenPciOp, FLAGS_OFFSET, OP_OFFSET, OP_SIZE, XEN_PCIF_ACTIVE,
    XEN_PCI_MAGIC,
};
use crate::spin::SpinLock;
use crate::{Bdf, PciError};

/// Most devices (`num_devs`) and root buses (`root_num`) accepted from the
/// backend.
pub const MAX_DEVICES: u32 = 256;

/// pcifront's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcifrontConfig {
    /// Longest wait for the backend to complete one op, in nanoseconds
    /// (Linux's pcifront gives up after 2 s). An op that takes longer
    /// breaks the frontend.
    pub op_timeout_ns: u64,
}

impl Default for PcifrontConfig {
    fn default() -> Self {
        PcifrontConfig {
            op_timeout_ns: 2_000_000_000,
        }
    }
}

/// The shared page and event channel of one connection.
struct Link<P: Platform>
where
    P::Pages: 'static,
{
    page: GrantedPages<P::GrantFrames, P::Pages>,
    port: Port,
}

/// What one op at a time changes.
#[derive(Default)]
struct OpState {
    broken: Option<&'static str>,
    ops: u64,
}

/// The PCI frontend of one domain (see the [module docs](self)).
pub struct Pcifront<P: Platform>
where
    P::Pages: 'static,
{
    platform: Arc<P>,
    config: PcifrontConfig,
    link: Option<Link<P>>,
    roots: Vec<(u16, u8)>,
    devices: Vec<Bdf>,
    state: SpinLock<OpState>,
}

impl<P: Platform> core::fmt::Debug for Pcifront<P>
where
    P::Pages: 'static,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pcifront")
            .field("connected", &self.link.is_some())
            .field("port", &self.link.as_ref().map(|l| l.port))
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

fn device_error(what: &str, e: impl core::fmt::Display) -> DeviceError {
    DeviceError::Device(format!("pcifront: {what}: {e}"))
}

fn xs_error(key: &str, e: XsError) -> PciError {
    PciError::Xenbus {
        key: key.to_string(),
        reason: e.to_string(),
    }
}

fn bad_key(key: &str, reason: &str) -> PciError {
    PciError::Xenbus {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// A decimal number as xenstore holds it: digits only, at most 10.
fn parse_decimal(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    core::str::from_utf8(v).ok()?.parse().ok()
}

/// A root bus as pciback writes it: `dddd:bb` (hexadecimal).
fn parse_root(v: &[u8]) -> Option<(u16, u8)> {
    let s = core::str::from_utf8(v).ok()?;
    let (d, b) = s.split_once(':')?;
    let hex = |t: &str, n: usize| {
        (!t.is_empty() && t.len() <= n && t.bytes().all(|c| c.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(t, 16).ok())
            .flatten()
    };
    Some((
        u16::try_from(hex(d, 4)?).ok()?,
        u8::try_from(hex(b, 2)?).ok()?,
    ))
}

/// Reads one key of the backend's directory (by its relative name):
/// `None` when absent.
pub type KeyReader<'a> = dyn FnMut(&str) -> Result<Option<Vec<u8>>, PciError> + 'a;

/// What the backend exports, from its keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendDevices {
    /// The root buses: (segment, bus).
    pub roots: Vec<(u16, u8)>,
    /// The functions in use, by the address this domain uses.
    pub devices: Vec<Bdf>,
}

/// Parses the device keys xen-pciback writes in its directory: `root_num`
/// and `root-N` (optional, as for Linux's pcifront: without them the root
/// is `0000:00`), `num_devs`, and for each device `state-N` (only
/// Initialised and Connected devices are in use; absent counts as in use)
/// and `vdev-N` (`dddd:bb:dd.ff`, the address this domain uses).
///
/// `read` returns a key's value (by its name relative to the backend
/// directory) or `None` when absent. The values are written by the backend
/// and checked: counts at most [`MAX_DEVICES`], roots and addresses well
/// formed, no root or device listed twice, every device on a published
/// root. Returns the roots and the devices in use.
pub fn parse_backend_devices(read: &mut KeyReader<'_>) -> Result<BackendDevices, PciError> {
    fn required(read: &mut KeyReader<'_>, key: &str) -> Result<Vec<u8>, PciError> {
        read(key)?.ok_or_else(|| bad_key(key, "missing"))
    }
    let mut roots = Vec::new();
    match read("root_num")? {
        None => roots.push((0u16, 0u8)),
        Some(v) => {
            let n = parse_decimal(&v)
                .filter(|n| *n <= MAX_DEVICES)
                .ok_or_else(|| bad_key("root_num", "not a number of at most 256 root buses"))?;
            for i in 0..n {
                let key = format!("root-{i}");
                let v = required(read, &key)?;
                let root = parse_root(&v).ok_or_else(|| bad_key(&key, "not a root bus dddd:bb"))?;
                if roots.contains(&root) {
                    return Err(bad_key(&key, "root bus listed twice"));
                }
                roots.push(root);
            }
        }
    }
    let v = required(read, "num_devs")?;
    let n = parse_decimal(&v)
        .filter(|n| *n <= MAX_DEVICES)
        .ok_or_else(|| bad_key("num_devs", "not a number of at most 256 devices"))?;
    let mut devices = Vec::new();
    for i in 0..n {
        let key = format!("state-{i}");
        if let Some(v) = read(&key)? {
            let state = XenbusState::parse(&v).map_err(|_| bad_key(&key, "not a xenbus state"))?;
            if !matches!(state, XenbusState::Initialised | XenbusState::Connected) {
                log::info!("pcifront: device {i} is {state}; not used");
                continue;
            }
        }
        let key = format!("vdev-{i}");
        let v = required(read, &key)?;
        let bdf: Bdf = core::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_key(&key, "not a device address dddd:bb:dd.ff"))?;
        if !roots.contains(&(bdf.segment(), bdf.bus())) {
            return Err(bad_key(&key, "the device is not on a published root bus"));
        }
        if devices.contains(&bdf) {
            return Err(bad_key(&key, "device listed twice"));
        }
        devices.push(bdf);
    }
    Ok(BackendDevices { roots, devices })
}

impl<P: Platform> Pcifront<P>
where
    P::Pages: 'static,
{
    /// A frontend that is not connected yet.
    pub fn new(platform: Arc<P>, config: PcifrontConfig) -> Pcifront<P> {
        Pcifront {
            platform,
            config,
            link: None,
            roots: Vec::new(),
            devices: Vec::new(),
            state: SpinLock::new(OpState::default()),
        }
    }

    /// The platform.
    pub fn platform(&self) -> &Arc<P> {
        &self.platform
    }

    /// Whether a connection's page and channel are set up.
    pub fn is_set_up(&self) -> bool {
        self.link.is_some()
    }

    /// The event channel of the current connection.
    pub fn port(&self) -> Option<Port> {
        self.link.as_ref().map(|l| l.port)
    }

    /// Why the frontend is broken, if it is.
    pub fn broken(&self) -> Option<&'static str> {
        self.state.lock().broken
    }

    /// Ops completed (successfully or with a backend error) so far.
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// The functions passed through, as read by
    /// [`Pcifront::read_devices`].
    pub fn devices(&self) -> &[Bdf] {
        &self.devices
    }

    /// The root buses the backend published.
    pub fn roots(&self) -> &[(u16, u8)] {
        &self.roots
    }

    /// Reads the devices the backend exports, once the handshake reports
    /// [`HandshakeEvent::Connected`](xenbus::HandshakeEvent::Connected)
    /// (see [`parse_backend_devices`] for the keys and their checks). An
    /// error names the key at fault.
    pub fn read_devices<T: Transport>(
        &mut self,
        xs: &mut Xenstore<T>,
        conn: &Connection,
    ) -> Result<&[Bdf], PciError> {
        self.roots.clear();
        self.devices.clear();
        let parsed = parse_backend_devices(&mut |key| {
            let path = conn.backend_key(key);
            xs.try_read(&path).map_err(|e| xs_error(&path, e))
        });
        let BackendDevices { roots, devices } = parsed.map_err(|e| match e {
            PciError::Xenbus { key, reason } if !key.starts_with('/') => PciError::Xenbus {
                key: conn.backend_key(&key),
                reason,
            },
            e => e,
        })?;
        log::info!(
            "pcifront: {} device(s) passed through: {devices:?}",
            devices.len()
        );
        self.roots = roots;
        self.devices = devices;
        Ok(&self.devices)
    }

    /// Enables MSI (one vector) on `bdf`; returns its pirq.
    pub fn enable_msi(&self, bdf: Bdf) -> Result<Pirq, PciError> {
        match self.op(&OpRequest::EnableMsi { bdf })? {
            OpReply::Pirq(p) => Ok(p),
            _ => Err(self.mismatch("enable_msi")),
        }
    }

    /// Disables MSI on `bdf`.
    pub fn disable_msi(&self, bdf: Bdf) -> Result<(), PciError> {
        self.op(&OpRequest::DisableMsi { bdf }).map(|_| ())
    }

    /// Enables MSI-X on `bdf` for the table `entries` (1 to 128, distinct);
    /// returns one pirq per entry, in order.
    pub fn enable_msix(&self, bdf: Bdf, entries: &[u16]) -> Result<Vec<Pirq>, PciError> {
        match self.op(&OpRequest::EnableMsix {
            bdf,
            entries: entries.to_vec(),
        })? {
            OpReply::Pirqs(p) => Ok(p),
            _ => Err(self.mismatch("enable_msix")),
        }
    }

    /// Disables MSI-X on `bdf`.
    pub fn disable_msix(&self, bdf: Bdf) -> Result<(), PciError> {
        self.op(&OpRequest::DisableMsix { bdf }).map(|_| ())
    }

    /// `check_reply` answers each request with its own kind of reply; a
    /// mismatch is a bug here, reported rather than panicked on.
    fn mismatch(&self, op: &'static str) -> PciError {
        PciError::BadResponse {
            op,
            reason: "reply of the wrong kind for the request",
        }
    }

    /// Runs one op (see the module docs). Ops are serialized on the one
    /// shared page: a caller on another thread spins until the op in
    /// flight completes or times out (at most the configured op timeout).
    /// Configuration and interrupt set-up are rare and off the data path,
    /// so the lock spins rather than sleeps.
    pub fn op(&self, req: &OpRequest) -> Result<OpReply, PciError> {
        req.check()?;
        let mut st = self.state.lock();
        if let Some(reason) = st.broken {
            return Err(PciError::DeviceBroken { reason });
        }
        let link = self.link.as_ref().ok_or(PciError::NotConnected)?;
        let result = self.exchange(link, req);
        match &result {
            Err(PciError::BadResponse { reason, .. }) => {
                log::error!(
                    "pcifront: {}",
                    result
                        .as_ref()
                        .err()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                );
                st.broken = Some(reason);
            }
            Err(PciError::Timeout { .. }) => {
                log::error!(
                    "pcifront: pciback did not complete {}; the device is disabled",
                    req.name()
                );
                st.broken = Some("the PCI backend did not complete an op in time");
            }
            Err(PciError::Platform(_)) => {
                st.broken = Some("the event channel to the PCI backend failed");
            }
            _ => st.ops += 1,
        }
        result
    }

    fn exchange(&self, link: &Link<P>, req: &OpRequest) -> Result<OpReply, PciError> {
        let op = req.name();
        let base = link.page.as_ptr();
        // SAFETY: the page is page-aligned (so `flags` at offset 0 is
        // 4-aligned), stays mapped while `link` lives (borrowed for this
        // call), and is shared with the backend, which touches `flags` only
        // with atomic bit operations; this domain touches it only through
        // this atomic view.
        let flags = unsafe { AtomicU32::from_ptr(base.as_ptr().add(FLAGS_OFFSET).cast::<u32>()) };
        let bytes = req.encode().encode();
        // SAFETY: the page is valid for writes of its length while `link`
        // lives, no Rust reference points into it, and the op lock (held by
        // the caller) keeps other threads of this domain from writing it.
        unsafe { grant_tables::shared_mem::write(base, link.page.len_bytes(), OP_OFFSET, &bytes) }
            .map_err(|_| PciError::InvalidRequest {
                op,
                reason: "the op does not fit the shared page",
            })?;
        // Publishes the op before the flag (SeqCst read-modify-write).
        flags.fetch_or(XEN_PCIF_ACTIVE, Ordering::SeqCst);
        self.platform.notify(link.port)?;
        let start = self.platform.now_ns();
        let deadline = start.saturating_add(self.config.op_timeout_ns);
        while flags.load(Ordering::Acquire) & XEN_PCIF_ACTIVE != 0 {
            let now = self.platform.now_ns();
            if now >= deadline {
                flags.fetch_and(!XEN_PCIF_ACTIVE, Ordering::SeqCst);
                return Err(PciError::Timeout {
                    op,
                    waited_ns: now.saturating_sub(start),
                });
            }
            self.platform.block(link.port, Some(deadline - now))?;
        }
        let mut out = [0u8; OP_SIZE];
        link.page
            .read_at(OP_OFFSET, &mut out)
            .map_err(|_| PciError::InvalidRequest {
                op,
                reason: "the op does not fit the shared page",
            })?;
        check_reply(req, &XenPciOp::decode(&out))
    }
}

impl<P: Platform> ConfigAccess for Pcifront<P>
where
    P::Pages: 'static,
{
    fn read(&self, bdf: Bdf, reg: ConfigReg) -> Result<u32, PciError> {
        match self.op(&OpRequest::ConfRead { bdf, reg })? {
            OpReply::Value(v) => Ok(v),
            _ => Err(self.mismatch("conf_read")),
        }
    }

    fn write(&self, bdf: Bdf, reg: ConfigReg, value: u32) -> Result<(), PciError> {
        self.op(&OpRequest::ConfWrite { bdf, reg, value })
            .map(|_| ())
    }
}

impl<P: Platform, T: Transport> Device<T> for Pcifront<P>
where
    P::Pages: 'static,
{
    fn setup(&mut self, _xs: &mut Xenstore<T>, conn: &Connection) -> Result<(), DeviceError> {
        self.link = None;
        self.devices.clear();
        self.roots.clear();
        let table = self
            .platform
            .grant_table()
            .map_err(|e| device_error("grant table", e))?;
        let pages = self
            .platform
            .alloc_zeroed_pages(1)
            .map_err(|e| device_error("allocating the shared page", e))?;
        let page = GrantedPages::new(table, pages, conn.peer, Access::ReadWrite)
            .map_err(|e| device_error("granting the shared page", e))?;
        let port = self
            .platform
            .alloc_unbound(conn.peer)
            .map_err(|e| device_error("allocating the event channel", e))?;
        self.link = Some(Link { page, port });
        // A new connection (a new shared page, possibly a new backend)
        // starts clean.
        *self.state.get_mut() = OpState::default();
        Ok(())
    }

    fn publish(&mut self, tx: &mut Transaction<'_, T>, conn: &Connection) -> Result<(), XsError> {
        let Some(link) = &self.link else {
            return Ok(());
        };
        let gref = link.page.gref(0).unwrap_or_default();
        tx.write(&conn.frontend_key("pci-op-ref"), gref.to_string())?;
        tx.write(&conn.frontend_key("event-channel"), link.port.0.to_string())?;
        tx.write(&conn.frontend_key("magic"), XEN_PCI_MAGIC)
    }

    fn teardown(&mut self, conn: &Connection, reason: TeardownReason) {
        log::info!("pcifront: connection {} ends ({reason:?})", conn.number);
        self.devices.clear();
        self.roots.clear();
        if let Some(link) = self.link.take() {
            if let Err(e) = self.platform.close(link.port) {
                log::warn!("pcifront: closing {}: {e}", link.port);
            }
            // Dropping the page ends its grant; if the backend still maps
            // it, the grant table quarantines it until a retry succeeds.
            drop(link.page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::string::String;
    use alloc::vec;

    fn parse(keys: &[(&str, &str)]) -> Result<BackendDevices, PciError> {
        let map: BTreeMap<String, Vec<u8>> = keys
            .iter()
            .map(|(k, v)| (String::from(*k), v.as_bytes().to_vec()))
            .collect();
        parse_backend_devices(&mut |k| Ok(map.get(k).cloned()))
    }

    fn key_of(e: PciError) -> String {
        match e {
            PciError::Xenbus { key, .. } => key,
            e => panic!("{e}"),
        }
    }

    #[test]
    fn backend_device_keys_are_parsed() {
        let b = |s: &str| s.parse::<Bdf>().unwrap();
        let ok = parse(&[
            ("root_num", "2"),
            ("root-0", "0000:00"),
            ("root-1", "0001:02"),
            ("num_devs", "3"),
            ("vdev-0", "0000:00:04.00"),
            ("state-1", "5"),
            ("vdev-1", "0000:00:05.00"),
            ("state-2", "4"),
            ("vdev-2", "0001:02:00.01"),
        ])
        .unwrap();
        assert_eq!(ok.roots, [(0, 0), (1, 2)]);
        assert_eq!(ok.devices, [b("0000:00:04.0"), b("0001:02:00.1")]);
        let ok = parse(&[("num_devs", "1"), ("vdev-0", "0000:00:01.0")]).unwrap();
        assert_eq!(
            (ok.roots, ok.devices),
            (vec![(0, 0)], vec![b("0000:00:01.0")])
        );
        let none = parse(&[("num_devs", "0")]).unwrap();
        assert_eq!((none.roots, none.devices), (vec![(0, 0)], vec![]));
    }

    #[test]
    fn bad_backend_device_keys_name_the_key() {
        assert_eq!(key_of(parse(&[]).unwrap_err()), "num_devs");
        assert_eq!(key_of(parse(&[("num_devs", "1")]).unwrap_err()), "vdev-0");
        assert_eq!(
            key_of(parse(&[("num_devs", "257")]).unwrap_err()),
            "num_devs"
        );
        assert_eq!(
            key_of(parse(&[("num_devs", "+1")]).unwrap_err()),
            "num_devs"
        );
        assert_eq!(
            key_of(parse(&[("num_devs", "99999999999")]).unwrap_err()),
            "num_devs"
        );
        assert_eq!(
            key_of(parse(&[("root_num", "2"), ("root-0", "0000:00")]).unwrap_err()),
            "root-1"
        );
        assert_eq!(
            key_of(
                parse(&[("root_num", "2"), ("root-0", "0:0"), ("root-1", "00:00")]).unwrap_err()
            ),
            "root-1"
        );
        assert_eq!(
            key_of(parse(&[("root_num", "1"), ("root-0", "10000:00")]).unwrap_err()),
            "root-0"
        );
        assert_eq!(
            key_of(
                parse(&[("num_devs", "1"), ("state-0", "3x"), ("vdev-0", "00:01.0")]).unwrap_err()
            ),
            "state-0"
        );
    }
}
