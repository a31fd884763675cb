//! The xenstore daemon's request handling, without sockets.
//!
//! [`XenstoreCore`] owns the tree, the connections (each a domain id with
//! its watches, transactions, partial input and pending output), and the
//! known domains. Bytes from a client go in with [`XenstoreCore::feed`];
//! replies and watch events come out with [`XenstoreCore::take_output`].
//! The socket server ([`super::XenstoreDaemon`]) and the fuzzer drive it
//! the same way.
//!
//! Semantics follow C xenstored: permissions per `perm_for_conn` (owner and
//! dom0 get everything, otherwise the first entry naming the domain, else
//! the owner entry's access), errno hiding for missing nodes
//! (`errno_from_parents`), inherited permissions with unprivileged
//! creators owning what they create, watches that fire for the node and
//! everything below the watched path (removals fire exact events for each
//! removed descendant; a permission change reaches watchers who could
//! read the node before it or after it), an initial event on
//! registration, special `@introduceDomain`/`@releaseDomain` watches,
//! optimistic transactions that fail with `EAGAIN` on conflict, and quotas
//! for unprivileged domains (`ENOSPC`; the node quota is checked again
//! when a transaction commits, and a commit that would exceed it fails and
//! discards the transaction).
//!
//! # Hosted extension: connecting as a domain
//! A socket connection starts as dom0 (privileged). The `XS_CONTROL`
//! command `hosted-connect-as <domid>` turns it, for good, into a
//! connection of domain `<domid>`, which must have been introduced
//! (`XS_INTRODUCE`) first. It is refused with `EACCES` from an
//! unprivileged connection, `EBUSY` once the connection has watches or
//! transactions, `EISCONN` when it already switched, `ENOENT` for an
//! unknown domain. This stands in for the per-domain ring page a real
//! domain would use.

use std::collections::BTreeMap;

use xenbus::path::{
    self, access_for, check_absolute, is_at_or_below, Effective, Perm, PermAccess,
    INTRODUCE_DOMAIN, RELEASE_DOMAIN,
};
use xenbus::wire::{
    join_strings, parse_u32_strict, split_strings, Decoder, Errno, Message, MsgType, WireError,
    XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX,
};

use super::store::{Node, Store};

/// The `XS_CONTROL` command that makes a connection a domain's.
pub const CONNECT_AS_COMMAND: &str = "hosted-connect-as";

/// First reserved domain id (`DOMID_FIRST_RESERVED`).
const DOMID_FIRST_RESERVED: u32 = 0x7ff0;

/// Limits for unprivileged domains (dom0 has none), and per connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own: checked when a node is created, and again
    /// when a transaction commits (each transaction counts against its own
    /// copy of the tree).
    pub nodes_per_domain: usize,
    /// Watches a domain may hold (over all its connections).
    pub watches_per_domain: usize,
    /// Open transactions per connection.
    pub transactions_per_connection: usize,
    /// Entries in a node's permission list.
    pub perms_per_node: usize,
    /// Size of one node's record (value, child names, permissions) a
    /// domain may write.
    pub entry_bytes: usize,
    /// Pending output bytes of a connection above which watch events for it
    /// are dropped (its replies are never dropped; the server stops reading
    /// its requests instead).
    pub output_bytes: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        // xenstored's defaults, and 1 MiB of pending output.
        Quotas {
            nodes_per_domain: 1000,
            watches_per_domain: 128,
            transactions_per_connection: 10,
            perms_per_node: 5,
            entry_bytes: 2048,
            output_bytes: 1 << 20,
        }
    }
}

/// A connection's handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Why a connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnFault {
    /// The connection does not exist (closed already).
    Unknown,
    /// The client sent bytes that cannot be framed (payload too long).
    Wire(WireError),
    /// The connection's domain was released.
    Released,
}

impl std::fmt::Display for ConnFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnFault::Unknown => write!(f, "no such connection"),
            ConnFault::Wire(e) => write!(f, "{e}"),
            ConnFault::Released => write!(f, "the connection's domain was released"),
        }
    }
}

struct Watch {
    /// Absolute or special path.
    path: String,
    token: String,
    /// For watches registered with a relative path: the prefix to strip
    /// from event paths (`/local/domain/<id>/`).
    strip: Option<String>,
}

struct Transaction {
    store: Store,
    fires: Vec<Fire>,
}

struct Connection {
    domid: u16,
    switched: bool,
    decoder: Decoder,
    out: Vec<u8>,
    watches: Vec<Watch>,
    transactions: BTreeMap<u32, Transaction>,
    closing: bool,
    dropped_events: u64,
}

#[derive(Clone, Debug)]
struct Domain {
    #[allow(dead_code)]
    mfn: u64,
    #[allow(dead_code)]
    port: u32,
    target: Option<u16>,
}

/// A watch to fire: a node changed.
#[derive(Clone, Debug)]
struct Fire {
    path: String,
    /// Only watches on exactly this path (descendants of a removed node).
    exact: bool,
    /// The node's permissions (before removal, for removed nodes).
    perms: Vec<Perm>,
    /// For a permission change: the permissions before it. Watchers who
    /// could read the node under either list hear of the change (as C
    /// xenstored checks the old and the new node).
    old_perms: Option<Vec<Perm>>,
}

#[derive(Clone)]
struct Caller {
    conn: ConnId,
    domid: u16,
    privileged: bool,
    target: Option<u16>,
    home: String,
}

impl Caller {
    fn access(&self, perms: &[Perm]) -> Effective {
        effective(perms, self.domid, self.privileged, self.target)
    }
}

/// `perm_for_conn` with stub-domain targets.
fn effective(perms: &[Perm], domid: u16, privileged: bool, target: Option<u16>) -> Effective {
    let Some(t) = target else {
        return access_for(perms, domid, privileged);
    };
    let Some(owner) = perms.first() else {
        return if privileged {
            Effective::ALL
        } else {
            Effective::NONE
        };
    };
    if privileged || owner.domid == domid || owner.domid == t {
        return Effective::ALL;
    }
    let access = perms[1..]
        .iter()
        .find(|p| p.domid == domid || p.domid == t)
        .map_or(owner.access, |p| p.access);
    Effective {
        read: access.can_read(),
        write: access.can_write(),
        owner: false,
    }
}

const NEED_READ: Effective = Effective {
    read: true,
    write: false,
    owner: false,
};
const NEED_WRITE: Effective = Effective {
    read: false,
    write: true,
    owner: false,
};
const NEED_OWNER: Effective = Effective {
    read: false,
    write: true,
    owner: true,
};

fn satisfies(have: Effective, need: Effective) -> bool {
    (!need.read || have.read) && (!need.write || have.write) && (!need.owner || have.owner)
}

fn overlaps(have: Effective, need: Effective) -> bool {
    (need.read && have.read) || (need.write && have.write) || (need.owner && have.owner)
}

/// Side effects of one request, applied after its reply is queued.
#[derive(Default)]
struct Effects {
    fires: Vec<Fire>,
    initial_event: Option<(String, String)>,
}

/// The daemon's state and request handling.
pub struct XenstoreCore {
    quotas: Quotas,
    store: Store,
    conns: BTreeMap<ConnId, Connection>,
    next_conn: u64,
    next_tx: u32,
    domains: BTreeMap<u16, Domain>,
    special_perms: BTreeMap<String, Vec<Perm>>,
    requests: u64,
}

impl Default for XenstoreCore {
    fn default() -> Self {
        XenstoreCore::new(Quotas::default())
    }
}

impl XenstoreCore {
    /// A daemon with an initial tree and dom0 known.
    pub fn new(quotas: Quotas) -> Self {
        let mut domains = BTreeMap::new();
        domains.insert(
            0,
            Domain {
                mfn: 0,
                port: 0,
                target: None,
            },
        );
        let mut special_perms = BTreeMap::new();
        special_perms.insert(
            INTRODUCE_DOMAIN.to_string(),
            vec![Perm::new(0, PermAccess::None)],
        );
        special_perms.insert(
            RELEASE_DOMAIN.to_string(),
            vec![Perm::new(0, PermAccess::None)],
        );
        XenstoreCore {
            quotas,
            store: Store::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            next_tx: 1,
            domains,
            special_perms,
            requests: 0,
        }
    }

    /// Opens a connection for `domid` (dom0 is privileged). Use
    /// [`XenstoreCore::introduce`] first for other domains if they should
    /// show as introduced.
    pub fn connect(&mut self, domid: u16) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            id,
            Connection {
                domid,
                switched: domid != 0,
                decoder: Decoder::new(),
                out: Vec::new(),
                watches: Vec::new(),
                transactions: BTreeMap::new(),
                closing: false,
                dropped_events: 0,
            },
        );
        log::debug!("xenstored: connection {} opened as dom{domid}", id.0);
        id
    }

    /// Closes a connection: its watches and transactions go away; a partial
    /// request is discarded. Nothing else changes.
    pub fn disconnect(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            log::debug!(
                "xenstored: connection {} (dom{}) closed with {} watches, {} transactions",
                id.0,
                c.domid,
                c.watches.len(),
                c.transactions.len()
            );
        }
    }

    /// The domain a connection speaks for.
    pub fn domid_of(&self, id: ConnId) -> Option<u16> {
        self.conns.get(&id).map(|c| c.domid)
    }

    /// Whether the connection should be closed (its domain was released)
    /// once its pending output is flushed.
    pub fn is_closing(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_none_or(|c| c.closing)
    }

    /// Open connections.
    pub fn connections(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Requests handled so far.
    pub fn requests_handled(&self) -> u64 {
        self.requests
    }

    /// Bytes waiting to be sent to a connection.
    pub fn output_len(&self, id: ConnId) -> usize {
        self.conns.get(&id).map_or(0, |c| c.out.len())
    }

    /// Takes the bytes waiting to be sent to a connection.
    pub fn take_output(&mut self, id: ConnId) -> Vec<u8> {
        self.conns
            .get_mut(&id)
            .map(|c| std::mem::take(&mut c.out))
            .unwrap_or_default()
    }

    /// Puts back bytes that could not be sent (in front of newer output).
    pub fn unsend(&mut self, id: ConnId, mut bytes: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(&id) {
            bytes.extend_from_slice(&c.out);
            c.out = bytes;
        }
    }

    /// Watch events dropped for a slow reader.
    pub fn dropped_events(&self, id: ConnId) -> u64 {
        self.conns.get(&id).map_or(0, |c| c.dropped_events)
    }

    /// The value of a node, as dom0 sees it (for tests and dumps).
    pub fn peek(&self, path: &str) -> Option<Vec<u8>> {
        self.store.peek(path).map(|n| n.value.clone())
    }

    /// Nodes a domain owns (what its node quota counts).
    pub fn nodes_owned_by(&self, domid: u16) -> usize {
        self.store.owned_by(domid)
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.store.len()
    }

    /// Checks the tree's invariants: every child entry exists, every node
    /// but `/` is listed by its parent exactly once, every node has an
    /// owner. Returns the first violation.
    pub fn check_tree(&self) -> Result<(), String> {
        for (p, node) in self.store.iter() {
            if node.perms.is_empty() {
                return Err(format!("{p} has no permissions"));
            }
            for c in &node.children {
                let child = path::join(p, c);
                if self.store.peek(&child).is_none() {
                    return Err(format!("{p} lists missing child {c}"));
                }
            }
            if p != "/" {
                let parent = self
                    .store
                    .peek(path::parent(p))
                    .ok_or_else(|| format!("{p} has no parent"))?;
                let name = path::basename(p);
                if parent
                    .children
                    .iter()
                    .filter(|c| c.as_str() == name)
                    .count()
                    != 1
                {
                    return Err(format!("{p} is not listed exactly once by its parent"));
                }
            }
        }
        Ok(())
    }

    /// Introduces a domain (as `XS_INTRODUCE` from dom0 does), firing
    /// `@introduceDomain` the first time.
    pub fn introduce(&mut self, domid: u16, mfn: u64, port: u32) -> Result<(), Errno> {
        if u32::from(domid) >= DOMID_FIRST_RESERVED {
            return Err(Errno::EINVAL);
        }
        if self.domains.contains_key(&domid) {
            return Ok(());
        }
        self.domains.insert(
            domid,
            Domain {
                mfn,
                port,
                target: None,
            },
        );
        log::info!("xenstored: dom{domid} introduced");
        let fires = vec![self.special_fire(INTRODUCE_DOMAIN)];
        self.deliver(fires);
        Ok(())
    }

    /// Releases a domain (as `XS_RELEASE` from dom0 does): its connections
    /// close, its nodes pass to dom0, `@releaseDomain` fires.
    pub fn release(&mut self, domid: u16) -> Result<(), Errno> {
        if domid == 0 {
            return Err(Errno::EINVAL);
        }
        if self.domains.remove(&domid).is_none() {
            return Err(Errno::ENOENT);
        }
        for d in self.domains.values_mut() {
            if d.target == Some(domid) {
                d.target = None;
            }
        }
        for c in self.conns.values_mut() {
            if c.domid == domid {
                c.closing = true;
                c.watches.clear();
                c.transactions.clear();
            }
        }
        self.store.forget_domain(domid);
        log::info!("xenstored: dom{domid} released");
        let fires = vec![self.special_fire(RELEASE_DOMAIN)];
        self.deliver(fires);
        Ok(())
    }

    /// Whether a domain is introduced.
    pub fn is_introduced(&self, domid: u16) -> bool {
        self.domains.contains_key(&domid)
    }

    fn special_fire(&self, name: &str) -> Fire {
        Fire {
            path: name.to_string(),
            exact: true,
            perms: self
                .special_perms
                .get(name)
                .cloned()
                .unwrap_or_else(|| vec![Perm::new(0, PermAccess::None)]),
            old_perms: None,
        }
    }

    /// Feeds bytes a client sent; handles every whole request in them while
    /// the connection's pending output stays under its quota. Returns how
    /// many bytes were consumed: the caller keeps the rest and feeds it
    /// again once the output drained. An error means the connection must
    /// be closed (call [`XenstoreCore::disconnect`]); other connections are
    /// not affected.
    pub fn feed(&mut self, id: ConnId, bytes: &[u8]) -> Result<usize, ConnFault> {
        let mut input = bytes;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return Err(ConnFault::Unknown);
            };
            if conn.closing {
                return Err(ConnFault::Released);
            }
            if input.is_empty() || conn.out.len() >= self.quotas.output_bytes {
                break;
            }
            match conn.decoder.decode(&mut input) {
                Ok(Some(msg)) => self.process(id, msg),
                Ok(None) => {}
                Err(WireError::UnknownType {
                    msg_type,
                    req_id,
                    tx_id,
                }) => {
                    log::warn!(
                        "xenstored: connection {}: unknown message type {msg_type}",
                        id.0
                    );
                    self.requests += 1;
                    self.reply_error(id, req_id, tx_id, Errno::ENOSYS);
                }
                Err(e) => {
                    log::warn!("xenstored: connection {} (dom{}): {e}", id.0, conn.domid);
                    return Err(ConnFault::Wire(e));
                }
            }
        }
        Ok(bytes.len() - input.len())
    }

    fn push(&mut self, id: ConnId, msg: &Message) {
        if let Some(c) = self.conns.get_mut(&id) {
            msg.encode_into(&mut c.out);
        }
    }

    fn reply_error(&mut self, id: ConnId, req_id: u32, tx_id: u32, errno: Errno) {
        let msg = Message {
            msg_type: MsgType::Error,
            req_id,
            tx_id,
            payload: join_strings(&[errno.name()]),
        };
        self.push(id, &msg);
    }

    /// Handles one whole request.
    pub fn process(&mut self, id: ConnId, msg: Message) {
        self.requests += 1;
        let mut fx = Effects::default();
        let result = self.handle(id, &msg, &mut fx);
        match result {
            Ok(payload) if payload.len() <= XENSTORE_PAYLOAD_MAX => {
                let reply = Message {
                    msg_type: msg.msg_type,
                    req_id: msg.req_id,
                    tx_id: msg.tx_id,
                    payload,
                };
                self.push(id, &reply);
            }
            Ok(_) => self.reply_error(id, msg.req_id, msg.tx_id, Errno::E2BIG),
            Err(errno) => {
                log::debug!(
                    "xenstored: connection {}: {} -> {errno}",
                    id.0,
                    msg.msg_type
                );
                self.reply_error(id, msg.req_id, msg.tx_id, errno);
            }
        }
        if let Some((path, token)) = fx.initial_event {
            self.push_event(id, &path, &token);
        }
        self.deliver(fx.fires);
    }

    fn push_event(&mut self, id: ConnId, path: &str, token: &str) {
        let limit = self.quotas.output_bytes;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let payload = join_strings(&[path, token]);
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return;
        }
        if c.out.len() >= limit {
            c.dropped_events += 1;
            log::warn!(
                "xenstored: dom{} is not reading; dropped watch event for {path}",
                c.domid
            );
            return;
        }
        let msg = Message {
            msg_type: MsgType::WatchEvent,
            req_id: 0,
            tx_id: 0,
            payload,
        };
        msg.encode_into(&mut c.out);
    }

    fn deliver(&mut self, fires: Vec<Fire>) {
        for fire in fires {
            let special = path::is_special(&fire.path);
            let mut events: Vec<(ConnId, String, String)> = Vec::new();
            for (&cid, c) in &self.conns {
                if c.closing || c.watches.is_empty() {
                    continue;
                }
                let target = self.domains.get(&c.domid).and_then(|d| d.target);
                let readable =
                    |perms: &[Perm]| effective(perms, c.domid, c.domid == 0, target).read;
                let allowed =
                    readable(&fire.perms) || fire.old_perms.as_deref().is_some_and(readable);
                if !allowed {
                    continue;
                }
                for w in &c.watches {
                    let hit = if fire.exact || special {
                        w.path == fire.path
                    } else {
                        is_at_or_below(&fire.path, &w.path)
                    };
                    if !hit {
                        continue;
                    }
                    let reported = match &w.strip {
                        Some(prefix) => fire
                            .path
                            .strip_prefix(prefix.as_str())
                            .unwrap_or(&fire.path),
                        None => &fire.path,
                    };
                    events.push((cid, reported.to_string(), w.token.clone()));
                }
            }
            for (cid, p, token) in events {
                self.push_event(cid, &p, &token);
            }
        }
    }

    fn caller(&self, id: ConnId) -> Option<Caller> {
        let c = self.conns.get(&id)?;
        Some(Caller {
            conn: id,
            domid: c.domid,
            privileged: c.domid == 0,
            target: self.domains.get(&c.domid).and_then(|d| d.target),
            home: path::domain_path(u32::from(c.domid)),
        })
    }

    fn handle(&mut self, id: ConnId, msg: &Message, fx: &mut Effects) -> Result<Vec<u8>, Errno> {
        let caller = self.caller(id).ok_or(Errno::EINVAL)?;
        let priv_only = matches!(
            msg.msg_type,
            MsgType::Control
                | MsgType::Introduce
                | MsgType::Release
                | MsgType::IsDomainIntroduced
                | MsgType::Resume
                | MsgType::SetTarget
        );
        if priv_only && !caller.privileged {
            return Err(Errno::EACCES);
        }
        let args = split_strings(&msg.payload);
        match msg.msg_type {
            MsgType::Read
            | MsgType::Write
            | MsgType::Mkdir
            | MsgType::Rm
            | MsgType::Directory
            | MsgType::DirectoryPart
            | MsgType::GetPerms
            | MsgType::SetPerms => self.store_op(&caller, msg, fx),
            MsgType::Watch => {
                let args = args.map_err(|_| Errno::EINVAL)?;
                let [p, token] = args.as_slice() else {
                    return Err(Errno::EINVAL);
                };
                self.watch(&caller, p, token, fx)
            }
            MsgType::Unwatch => {
                let args = args.map_err(|_| Errno::EINVAL)?;
                let [p, token] = args.as_slice() else {
                    return Err(Errno::EINVAL);
                };
                self.unwatch(&caller, p, token)
            }
            MsgType::ResetWatches => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.watches.clear();
                    c.transactions.clear();
                }
                Ok(ok())
            }
            MsgType::TransactionStart => self.transaction_start(&caller, msg),
            MsgType::TransactionEnd => self.transaction_end(&caller, msg, fx),
            MsgType::GetDomainPath => {
                let domid = one_number(&msg.payload)?;
                Ok(join_strings(&[path::domain_path(domid)]))
            }
            MsgType::IsDomainIntroduced => {
                let domid = one_number(&msg.payload)?;
                let known = u16::try_from(domid).is_ok_and(|d| self.domains.contains_key(&d));
                Ok(join_strings(&[if known { "T" } else { "F" }]))
            }
            MsgType::Introduce => {
                let args = args.map_err(|_| Errno::EINVAL)?;
                let [d, mfn, port, ..] = args.as_slice() else {
                    return Err(Errno::EINVAL);
                };
                let domid = number_u16(d)?;
                let mfn = std::str::from_utf8(mfn)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(Errno::EINVAL)?;
                let port = parse_u32_strict(port).ok_or(Errno::EINVAL)?;
                self.introduce(domid, mfn, port)?;
                Ok(ok())
            }
            MsgType::Release => {
                let domid = u16::try_from(one_number(&msg.payload)?).map_err(|_| Errno::EINVAL)?;
                self.release(domid)?;
                Ok(ok())
            }
            MsgType::Resume => {
                let domid = u16::try_from(one_number(&msg.payload)?).map_err(|_| Errno::EINVAL)?;
                if !self.domains.contains_key(&domid) {
                    return Err(Errno::ENOENT);
                }
                Ok(ok())
            }
            MsgType::SetTarget => {
                let args = args.map_err(|_| Errno::EINVAL)?;
                let [d, t] = args.as_slice() else {
                    return Err(Errno::EINVAL);
                };
                let (domid, target) = (number_u16(d)?, number_u16(t)?);
                if !self.domains.contains_key(&target) {
                    return Err(Errno::ENOENT);
                }
                let dom = self.domains.get_mut(&domid).ok_or(Errno::ENOENT)?;
                dom.target = Some(target);
                Ok(ok())
            }
            MsgType::Control => {
                let args = args.map_err(|_| Errno::EINVAL)?;
                self.control(&caller, &args)
            }
            MsgType::WatchEvent | MsgType::Error => Err(Errno::ENOSYS),
        }
    }

    fn control(&mut self, caller: &Caller, args: &[&[u8]]) -> Result<Vec<u8>, Errno> {
        match args {
            [cmd, d] if *cmd == CONNECT_AS_COMMAND.as_bytes() => {
                let domid = number_u16(d)?;
                let c = self.conns.get(&caller.conn).ok_or(Errno::EINVAL)?;
                if c.switched {
                    return Err(Errno::EISCONN);
                }
                if !c.watches.is_empty() || !c.transactions.is_empty() {
                    return Err(Errno::EBUSY);
                }
                if !self.domains.contains_key(&domid) {
                    return Err(Errno::ENOENT);
                }
                if let Some(c) = self.conns.get_mut(&caller.conn) {
                    c.domid = domid;
                    c.switched = true;
                }
                log::debug!("xenstored: connection {} is now dom{domid}", caller.conn.0);
                Ok(ok())
            }
            [cmd, ..] if *cmd == b"check" => self.check_tree().map(|()| ok()).map_err(|e| {
                log::error!("xenstored: tree check failed: {e}");
                Errno::EIO
            }),
            [cmd, rest @ ..] if *cmd == b"print" => {
                let text: Vec<String> = rest
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
                log::info!("xenstored: {}", text.join(" "));
                Ok(ok())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn watch(
        &mut self,
        caller: &Caller,
        p: &[u8],
        token: &[u8],
        fx: &mut Effects,
    ) -> Result<Vec<u8>, Errno> {
        let p = std::str::from_utf8(p).map_err(|_| Errno::EINVAL)?;
        let token = std::str::from_utf8(token)
            .map_err(|_| Errno::EINVAL)?
            .to_string();
        let (abs, strip) = if path::is_special(p) {
            xenbus::path::check_client_path(p).map_err(|_| Errno::EINVAL)?;
            (p.to_string(), None)
        } else if p.starts_with('/') {
            (canonical(caller, p.as_bytes())?, None)
        } else {
            (
                canonical(caller, p.as_bytes())?,
                Some(format!("{}/", caller.home)),
            )
        };
        if !caller.privileged {
            let held: usize = self
                .conns
                .values()
                .filter(|c| c.domid == caller.domid)
                .map(|c| c.watches.len())
                .sum();
            if held >= self.quotas.watches_per_domain {
                return Err(Errno::E2BIG);
            }
        }
        let c = self.conns.get_mut(&caller.conn).ok_or(Errno::EINVAL)?;
        if c.watches.iter().any(|w| w.path == abs && w.token == token) {
            return Err(Errno::EEXIST);
        }
        c.watches.push(Watch {
            path: abs,
            token: token.clone(),
            strip,
        });
        fx.initial_event = Some((p.to_string(), token));
        Ok(ok())
    }

    fn unwatch(&mut self, caller: &Caller, p: &[u8], token: &[u8]) -> Result<Vec<u8>, Errno> {
        let p = std::str::from_utf8(p).map_err(|_| Errno::EINVAL)?;
        let abs = if path::is_special(p) {
            p.to_string()
        } else {
            canonical(caller, p.as_bytes())?
        };
        let c = self.conns.get_mut(&caller.conn).ok_or(Errno::EINVAL)?;
        let pos = c
            .watches
            .iter()
            .position(|w| w.path == abs && w.token.as_bytes() == token)
            .ok_or(Errno::ENOENT)?;
        c.watches.remove(pos);
        Ok(ok())
    }

    fn transaction_start(&mut self, caller: &Caller, msg: &Message) -> Result<Vec<u8>, Errno> {
        if msg.tx_id != 0 {
            return Err(Errno::EBUSY);
        }
        let limit = self.quotas.transactions_per_connection;
        let c = self.conns.get(&caller.conn).ok_or(Errno::EINVAL)?;
        if !caller.privileged && c.transactions.len() >= limit {
            return Err(Errno::ENOSPC);
        }
        let mut id = self.next_tx;
        // Skip 0 and ids still open on this connection.
        while id == 0 || c.transactions.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_tx = id.wrapping_add(1);
        let tx = Transaction {
            store: self.store.begin_transaction(),
            fires: Vec::new(),
        };
        if let Some(c) = self.conns.get_mut(&caller.conn) {
            c.transactions.insert(id, tx);
        }
        Ok(join_strings(&[xenbus::wire::u32_string(id)]))
    }

    fn transaction_end(
        &mut self,
        caller: &Caller,
        msg: &Message,
        fx: &mut Effects,
    ) -> Result<Vec<u8>, Errno> {
        let arg = match split_strings(&msg.payload)
            .map_err(|_| Errno::EINVAL)?
            .as_slice()
        {
            [a] => a.to_vec(),
            _ => return Err(Errno::EINVAL),
        };
        let commit = match arg.as_slice() {
            b"T" => true,
            b"F" => false,
            _ => return Err(Errno::EINVAL),
        };
        let c = self.conns.get_mut(&caller.conn).ok_or(Errno::EINVAL)?;
        let tx = c.transactions.remove(&msg.tx_id).ok_or(Errno::ENOENT)?;
        if !commit {
            return Ok(ok());
        }
        if !self.store.can_commit(&tx.store) {
            log::debug!("xenstored: transaction {} conflicted", msg.tx_id);
            return Err(Errno::EAGAIN);
        }
        // Each transaction counted the node quota against its own copy of
        // the tree: check again against the tree it commits into.
        if !caller.privileged {
            for (domid, more) in self.store.commit_growth(&tx.store) {
                if domid != 0 && self.store.owned_by(domid) + more > self.quotas.nodes_per_domain {
                    log::debug!(
                        "xenstored: transaction {} would exceed dom{domid}'s node quota",
                        msg.tx_id
                    );
                    return Err(Errno::ENOSPC);
                }
            }
        }
        match self.store.commit(&tx.store) {
            Some(changed) => {
                log::debug!(
                    "xenstored: transaction {} committed {} node(s)",
                    msg.tx_id,
                    changed.len()
                );
                fx.fires.extend(tx.fires);
                Ok(ok())
            }
            None => {
                log::debug!("xenstored: transaction {} conflicted", msg.tx_id);
                Err(Errno::EAGAIN)
            }
        }
    }

    /// Runs a node operation on the tree or on the transaction's copy.
    fn store_op(
        &mut self,
        caller: &Caller,
        msg: &Message,
        fx: &mut Effects,
    ) -> Result<Vec<u8>, Errno> {
        if msg.tx_id == 0 {
            return node_op(
                &self.quotas,
                &self.special_perms,
                caller,
                &mut self.store,
                msg,
                &mut fx.fires,
            )
            .map(|(reply, special)| {
                if let Some((name, perms)) = special {
                    self.special_perms.insert(name, perms);
                }
                reply
            });
        }
        let c = self.conns.get_mut(&caller.conn).ok_or(Errno::EINVAL)?;
        let mut tx = c.transactions.remove(&msg.tx_id).ok_or(Errno::ENOENT)?;
        let result = node_op(
            &self.quotas,
            &self.special_perms,
            caller,
            &mut tx.store,
            msg,
            &mut tx.fires,
        );
        if let Some(c) = self.conns.get_mut(&caller.conn) {
            c.transactions.insert(msg.tx_id, tx);
        }
        result.map(|(reply, special)| {
            // Special node permissions are not transactional.
            if let Some((name, perms)) = special {
                self.special_perms.insert(name, perms);
            }
            reply
        })
    }
}

fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

fn one_number(payload: &[u8]) -> Result<u32, Errno> {
    match split_strings(payload)
        .map_err(|_| Errno::EINVAL)?
        .as_slice()
    {
        [n] => parse_u32_strict(n).ok_or(Errno::EINVAL),
        _ => Err(Errno::EINVAL),
    }
}

fn number_u16(s: &[u8]) -> Result<u16, Errno> {
    parse_u32_strict(s)
        .filter(|&v| v < DOMID_FIRST_RESERVED)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or(Errno::EINVAL)
}

/// The absolute path a client means.
fn canonical(caller: &Caller, raw: &[u8]) -> Result<String, Errno> {
    let p = std::str::from_utf8(raw).map_err(|_| Errno::EINVAL)?;
    if p.is_empty() || p.starts_with('@') {
        return Err(Errno::EINVAL);
    }
    let abs = if p.starts_with('/') {
        p.to_string()
    } else {
        if p.len() > XENSTORE_REL_PATH_MAX {
            return Err(Errno::EINVAL);
        }
        path::join(&caller.home, p)
    };
    check_absolute(&abs).map_err(|_| Errno::EINVAL)?;
    Ok(abs)
}

/// The size of a node's record as xenstored accounts it: value, NUL-
/// terminated child names, and 8 bytes per permission entry.
fn entry_size(node: &Node) -> usize {
    node.value.len()
        + node.children.iter().map(|c| c.len() + 1).sum::<usize>()
        + 8 * node.perms.len()
}

fn check_entry(quotas: &Quotas, caller: &Caller, node: &Node) -> Result<(), Errno> {
    if !caller.privileged && entry_size(node) > quotas.entry_bytes {
        return Err(Errno::ENOSPC);
    }
    Ok(())
}

/// `get_node`: the node if the caller has `need` on it; otherwise `EACCES`,
/// or `ENOENT` for a missing node when the closest existing ancestor grants
/// an overlapping access (so that a missing node is not revealed to
/// callers who could not see it).
fn get_node(store: &mut Store, caller: &Caller, p: &str, need: Effective) -> Result<Node, Errno> {
    if let Some(node) = store.get(p).cloned() {
        if satisfies(caller.access(&node.perms), need) {
            return Ok(node);
        }
        return Err(Errno::EACCES);
    }
    match store.closest_ancestor(p) {
        Some((_, anc)) if overlaps(caller.access(&anc.perms), need) => Err(Errno::ENOENT),
        _ => Err(Errno::EACCES),
    }
}

type SpecialUpdate = Option<(String, Vec<Perm>)>;

fn node_op(
    quotas: &Quotas,
    special_perms: &BTreeMap<String, Vec<Perm>>,
    caller: &Caller,
    store: &mut Store,
    msg: &Message,
    fires: &mut Vec<Fire>,
) -> Result<(Vec<u8>, SpecialUpdate), Errno> {
    let args = split_strings(&msg.payload);
    let plain = |r: Result<Vec<u8>, Errno>| r.map(|v| (v, None));
    match msg.msg_type {
        MsgType::Read => {
            let p = canonical(caller, one_string(&msg.payload)?)?;
            plain(get_node(store, caller, &p, NEED_READ).map(|n| n.value))
        }
        MsgType::Directory => {
            let p = canonical(caller, one_string(&msg.payload)?)?;
            let node = get_node(store, caller, &p, NEED_READ)?;
            plain(Ok(join_strings(&node.children)))
        }
        MsgType::DirectoryPart => {
            let args = args.map_err(|_| Errno::EINVAL)?;
            let [p, off] = args.as_slice() else {
                return Err(Errno::EINVAL);
            };
            let p = canonical(caller, p)?;
            let off = parse_u32_strict(off).ok_or(Errno::EINVAL)? as usize;
            let node = get_node(store, caller, &p, NEED_READ)?;
            plain(Ok(directory_part(&node, off)))
        }
        MsgType::Write => {
            // path NUL value (the value may contain NULs).
            let nul = msg
                .payload
                .iter()
                .position(|&b| b == 0)
                .ok_or(Errno::EINVAL)?;
            let (raw, value) = (&msg.payload[..nul], &msg.payload[nul + 1..]);
            let p = canonical(caller, raw)?;
            match get_node(store, caller, &p, NEED_WRITE) {
                Ok(mut node) => {
                    node.value = value.to_vec();
                    check_entry(quotas, caller, &node)?;
                    let perms = node.perms.clone();
                    store.put(&p, node);
                    fires.push(Fire {
                        path: p,
                        exact: false,
                        perms,
                        old_perms: None,
                    });
                }
                Err(Errno::ENOENT) => {
                    let perms = create_node(quotas, caller, store, &p, value.to_vec())?;
                    fires.push(Fire {
                        path: p,
                        exact: false,
                        perms,
                        old_perms: None,
                    });
                }
                Err(e) => return Err(e),
            }
            plain(Ok(ok()))
        }
        MsgType::Mkdir => {
            let p = canonical(caller, one_string(&msg.payload)?)?;
            match get_node(store, caller, &p, NEED_WRITE) {
                Ok(_) => {}
                Err(Errno::ENOENT) => {
                    let perms = create_node(quotas, caller, store, &p, Vec::new())?;
                    fires.push(Fire {
                        path: p,
                        exact: false,
                        perms,
                        old_perms: None,
                    });
                }
                Err(e) => return Err(e),
            }
            plain(Ok(ok()))
        }
        MsgType::Rm => {
            let p = canonical(caller, one_string(&msg.payload)?)?;
            match get_node(store, caller, &p, NEED_WRITE) {
                Ok(_) => {}
                Err(Errno::ENOENT) => {
                    // Already gone: fine if the parent exists.
                    return if store.get(path::parent(&p)).is_some() {
                        plain(Ok(ok()))
                    } else {
                        Err(Errno::ENOENT)
                    };
                }
                Err(e) => return Err(e),
            }
            if p == "/" {
                return Err(Errno::EINVAL);
            }
            for victim in store.subtree_post_order(&p) {
                if let Some(old) = store.remove(&victim) {
                    let exact = victim != p;
                    fires.push(Fire {
                        path: victim,
                        exact,
                        perms: old.perms,
                        old_perms: None,
                    });
                }
            }
            let parent = path::parent(&p).to_string();
            if let Some(mut parent_node) = store.get(&parent).cloned() {
                let name = path::basename(&p);
                parent_node.children.retain(|c| c != name);
                store.put(&parent, parent_node);
            }
            plain(Ok(ok()))
        }
        MsgType::GetPerms => {
            let raw = one_string(&msg.payload)?;
            let perms = if raw.first() == Some(&b'@') {
                let name = std::str::from_utf8(raw).map_err(|_| Errno::EINVAL)?;
                let perms = special_perms.get(name).ok_or(Errno::ENOENT)?;
                if !caller.access(perms).read {
                    return Err(Errno::EACCES);
                }
                perms.clone()
            } else {
                let p = canonical(caller, raw)?;
                get_node(store, caller, &p, NEED_READ)?.perms
            };
            let strings: Vec<String> = perms.iter().map(Perm::to_wire).collect();
            plain(Ok(join_strings(&strings)))
        }
        MsgType::SetPerms => {
            let args = args.map_err(|_| Errno::EINVAL)?;
            let [raw, perm_args @ ..] = args.as_slice() else {
                return Err(Errno::EINVAL);
            };
            if perm_args.is_empty() {
                return Err(Errno::EINVAL);
            }
            if !caller.privileged && perm_args.len() > quotas.perms_per_node {
                return Err(Errno::ENOSPC);
            }
            let perms = path::parse_perms(perm_args).ok_or(Errno::EINVAL)?;
            if raw.first() == Some(&b'@') {
                let name = std::str::from_utf8(raw).map_err(|_| Errno::EINVAL)?;
                let old = special_perms.get(name).ok_or(Errno::ENOENT)?;
                if !satisfies(caller.access(old), NEED_OWNER) {
                    return Err(Errno::EACCES);
                }
                return Ok((ok(), Some((name.to_string(), perms))));
            }
            let p = canonical(caller, raw)?;
            let mut node = get_node(store, caller, &p, NEED_OWNER)?;
            if !caller.privileged && perms[0].domid != node.owner() {
                return Err(Errno::EPERM);
            }
            let old_perms = std::mem::replace(&mut node.perms, perms);
            let perms = node.perms.clone();
            store.put(&p, node);
            // Watchers who could read the node before or after hear of it.
            fires.push(Fire {
                path: p,
                exact: false,
                perms,
                old_perms: Some(old_perms),
            });
            plain(Ok(ok()))
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// The payload as exactly one NUL-terminated string (`onearg`).
fn one_string(payload: &[u8]) -> Result<&[u8], Errno> {
    let body = payload.strip_suffix(&[0]).ok_or(Errno::EINVAL)?;
    if body.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(body)
}

/// Creates `p` and any missing parents; returns the new node's perms.
fn create_node(
    quotas: &Quotas,
    caller: &Caller,
    store: &mut Store,
    p: &str,
    value: Vec<u8>,
) -> Result<Vec<Perm>, Errno> {
    let mut missing = vec![p.to_string()];
    let mut cur = p.to_string();
    loop {
        let parent = path::parent(&cur).to_string();
        if store.get(&parent).is_some() {
            break;
        }
        if parent == "/" {
            return Err(Errno::EIO);
        }
        missing.push(parent.clone());
        cur = parent;
    }
    if !caller.privileged && store.owned_by(caller.domid) + missing.len() > quotas.nodes_per_domain
    {
        return Err(Errno::ENOSPC);
    }
    // Check the records that will grow before changing anything.
    if !caller.privileged {
        let top = path::parent(missing.last().map_or(p, |s| s.as_str())).to_string();
        let mut parent = store.get(&top).cloned().ok_or(Errno::EIO)?;
        if let Some(m) = missing.last() {
            parent.children.push(path::basename(m).to_string());
        }
        check_entry(quotas, caller, &parent)?;
        let probe = Node {
            value: value.clone(),
            children: Vec::new(),
            perms: parent.perms.clone(),
            generation: 0,
        };
        check_entry(quotas, caller, &probe)?;
    }
    let mut value = Some(value);
    let mut perms_of_p = Vec::new();
    for m in missing.iter().rev() {
        let parent = path::parent(m).to_string();
        let mut parent_node = store.get(&parent).cloned().ok_or(Errno::EIO)?;
        let mut perms = parent_node.perms.clone();
        if !caller.privileged {
            if let Some(owner) = perms.first_mut() {
                owner.domid = caller.domid;
            }
        }
        parent_node.children.push(path::basename(m).to_string());
        store.put(&parent, parent_node);
        let v = if m == p {
            value.take().unwrap_or_default()
        } else {
            Vec::new()
        };
        perms_of_p.clone_from(&perms);
        store.put(
            m,
            Node {
                value: v,
                children: Vec::new(),
                perms,
                generation: 0,
            },
        );
    }
    Ok(perms_of_p)
}

/// `XS_DIRECTORY_PART`: the generation, then as many child names from
/// byte offset `off` of the NUL-joined list as fit, then an empty string
/// if the list is complete.
fn directory_part(node: &Node, off: usize) -> Vec<u8> {
    let all = join_strings(&node.children);
    let mut out = join_strings(&[node.generation.to_string()]);
    if off >= all.len() {
        out.push(0);
        return out;
    }
    let max = XENSTORE_PAYLOAD_MAX - out.len() - 1;
    let rest = &all[off..];
    let mut len = 0;
    for name in rest.split_inclusive(|&b| b == 0) {
        if len + name.len() > max {
            break;
        }
        len += name.len();
    }
    out.extend_from_slice(&rest[..len]);
    if off + len >= all.len() {
        out.push(0);
    }
    out
}
