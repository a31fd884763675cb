//! A small in-memory xenstore for tests: the `xs_wire` protocol answered
//! synchronously inside `send`, so a `xenbus::Xenstore` client over a
//! [`MemConn`] works in one thread or several, without a daemon.
//!
//! Kept to what the handshake and the driver use: read, write, mkdir, rm,
//! directory, permissions (accepted, not enforced), watches (one event at
//! registration, then one per change at or below the watched path, relative
//! paths for relative watches), transactions (a copy of the store, committed
//! whole; `EAGAIN` when anything changed meanwhile) and the domain path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use xenbus::wire::{join_strings, Decoder, Message, MsgType};
use xenbus::{Transport, TransportError, Wait, Xenstore};

type Nodes = BTreeMap<String, Vec<u8>>;

struct Tx {
    base: u64,
    nodes: Nodes,
    changed: BTreeSet<String>,
}

struct Conn {
    domid: u16,
    out: VecDeque<u8>,
    /// (absolute path, token, registered relative)
    watches: Vec<(String, String, bool)>,
    txs: BTreeMap<u32, Tx>,
}

struct Inner {
    nodes: Nodes,
    generation: u64,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    next_tx: u32,
}

/// The store, shared by its connections.
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<(Mutex<Inner>, Condvar)>,
}

fn home(domid: u16) -> String {
    format!("/local/domain/{domid}")
}

fn parent(path: &str) -> Option<&str> {
    let i = path.rfind('/')?;
    Some(if i == 0 { "/" } else { &path[..i] })
}

fn at_or_below(child: &str, dir: &str) -> bool {
    child == dir
        || dir == "/"
        || (child.starts_with(dir) && child.as_bytes().get(dir.len()) == Some(&b'/'))
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore {
            inner: Arc::new((
                Mutex::new(Inner {
                    nodes: BTreeMap::new(),
                    generation: 0,
                    conns: BTreeMap::new(),
                    next_conn: 1,
                    next_tx: 1,
                }),
                Condvar::new(),
            )),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client connection of domain `domid` (0 is privileged, but
    /// permissions are not enforced anyway).
    pub fn connect(&self, domid: u16) -> Xenstore<MemConn> {
        let id = {
            let mut g = self.lock();
            let id = g.next_conn;
            g.next_conn += 1;
            g.conns.insert(
                id,
                Conn {
                    domid,
                    out: VecDeque::new(),
                    watches: Vec::new(),
                    txs: BTreeMap::new(),
                },
            );
            id
        };
        let mut xs = Xenstore::new(MemConn {
            store: self.clone(),
            id,
            decoder: Decoder::new(),
        });
        xs.set_timeout(Duration::from_secs(5));
        xs
    }

    /// Writes a node directly (as the toolstack would), firing watches.
    pub fn write(&self, path: &str, value: &str) {
        let mut g = self.lock();
        write_node(&mut g.nodes, path, value.as_bytes());
        g.generation += 1;
        fire(&mut g, path);
        drop(g);
        self.inner.1.notify_all();
    }

    /// Removes a subtree directly, firing watches.
    pub fn rm(&self, path: &str) {
        let mut g = self.lock();
        remove_tree(&mut g.nodes, path);
        g.generation += 1;
        fire(&mut g, path);
        drop(g);
        self.inner.1.notify_all();
    }

    /// Reads a node directly.
    pub fn read(&self, path: &str) -> Option<String> {
        self.lock()
            .nodes
            .get(path)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every node at or below `dir` (for debugging and checks).
    pub fn dump(&self, dir: &str) -> Vec<(String, String)> {
        self.lock()
            .nodes
            .iter()
            .filter(|(k, _)| at_or_below(k, dir))
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }
}

fn write_node(nodes: &mut Nodes, path: &str, value: &[u8]) {
    let mut p = parent(path);
    while let Some(dir) = p {
        if dir == "/" {
            break;
        }
        nodes.entry(dir.to_string()).or_default();
        p = parent(dir);
    }
    nodes.insert(path.to_string(), value.to_vec());
}

fn remove_tree(nodes: &mut Nodes, path: &str) -> bool {
    let doomed: Vec<String> = nodes
        .keys()
        .filter(|k| at_or_below(k, path))
        .cloned()
        .collect();
    for k in &doomed {
        nodes.remove(k);
    }
    !doomed.is_empty()
}

/// Queues the watch events a change at `path` fires, on every connection.
fn fire(g: &mut Inner, path: &str) {
    for conn in g.conns.values_mut() {
        let domid = conn.domid;
        let mut events = Vec::new();
        for (w, token, relative) in &conn.watches {
            let hit = if at_or_below(path, w) {
                Some(path.to_string())
            } else if at_or_below(w, path) {
                Some(w.clone())
            } else {
                None
            };
            if let Some(p) = hit {
                events.push((shown(&p, *relative, domid), token.clone()));
            }
        }
        for (p, t) in events {
            push_event(conn, &p, &t);
        }
    }
}

fn shown(path: &str, relative: bool, domid: u16) -> String {
    let h = home(domid);
    if relative {
        if let Some(rest) = path.strip_prefix(&h).and_then(|r| r.strip_prefix('/')) {
            return rest.to_string();
        }
    }
    path.to_string()
}

fn push_event(conn: &mut Conn, path: &str, token: &str) {
    if let Ok(m) = Message::new(MsgType::WatchEvent, 0, 0, join_strings(&[path, token])) {
        m.encode_into_deque(&mut conn.out);
    }
}

trait EncodeDeque {
    fn encode_into_deque(&self, out: &mut VecDeque<u8>);
}

impl EncodeDeque for Message {
    fn encode_into_deque(&self, out: &mut VecDeque<u8>) {
        out.extend(self.encode());
    }
}

/// One client's end.
pub struct MemConn {
    store: MemStore,
    id: u64,
    decoder: Decoder,
}

impl Drop for MemConn {
    fn drop(&mut self) {
        self.store.lock().conns.remove(&self.id);
    }
}

fn ok_reply(req: &Message, payload: Vec<u8>) -> Message {
    Message::new(req.msg_type, req.req_id, req.tx_id, payload).expect("reply fits")
}

fn err_reply(req: &Message, errno: &str) -> Message {
    Message::new(
        MsgType::Error,
        req.req_id,
        req.tx_id,
        join_strings(&[errno]),
    )
    .expect("fits")
}

impl MemConn {
    fn handle(&self, g: &mut Inner, m: &Message) -> Message {
        let Some(conn) = g.conns.get(&self.id) else {
            return err_reply(m, "EINVAL");
        };
        let domid = conn.domid;
        let abs = |p: &[u8]| -> String {
            let p = String::from_utf8_lossy(p).into_owned();
            if p.starts_with('/') {
                p
            } else {
                format!("{}/{p}", home(domid))
            }
        };
        let payload = &m.payload;
        let first = payload.split(|&b| b == 0).next().unwrap_or(&[]).to_vec();
        let tx = m.tx_id;
        if tx != 0
            && !g.conns[&self.id].txs.contains_key(&tx)
            && m.msg_type != MsgType::TransactionEnd
        {
            return err_reply(m, "ENOENT");
        }
        match m.msg_type {
            MsgType::Read => {
                let path = abs(&first);
                let nodes = if tx != 0 {
                    &g.conns[&self.id].txs[&tx].nodes
                } else {
                    &g.nodes
                };
                match nodes.get(&path) {
                    Some(v) => ok_reply(m, v.clone()),
                    None => err_reply(m, "ENOENT"),
                }
            }
            MsgType::Write | MsgType::Mkdir => {
                let path = abs(&first);
                let value = if m.msg_type == MsgType::Write {
                    payload
                        .iter()
                        .position(|&b| b == 0)
                        .map(|i| payload[i + 1..].to_vec())
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                if tx != 0 {
                    let t = g.conns.get_mut(&self.id).unwrap().txs.get_mut(&tx).unwrap();
                    if m.msg_type == MsgType::Mkdir && t.nodes.contains_key(&path) {
                        return ok_reply(m, join_strings(&["OK"]));
                    }
                    write_node(&mut t.nodes, &path, &value);
                    t.changed.insert(path);
                } else {
                    if m.msg_type == MsgType::Mkdir && g.nodes.contains_key(&path) {
                        return ok_reply(m, join_strings(&["OK"]));
                    }
                    write_node(&mut g.nodes, &path, &value);
                    g.generation += 1;
                    fire(g, &path);
                }
                ok_reply(m, join_strings(&["OK"]))
            }
            MsgType::Rm => {
                let path = abs(&first);
                if tx != 0 {
                    let t = g.conns.get_mut(&self.id).unwrap().txs.get_mut(&tx).unwrap();
                    if !remove_tree(&mut t.nodes, &path) {
                        return err_reply(m, "ENOENT");
                    }
                    t.changed.insert(path);
                } else {
                    if !remove_tree(&mut g.nodes, &path) {
                        return err_reply(m, "ENOENT");
                    }
                    g.generation += 1;
                    fire(g, &path);
                }
                ok_reply(m, join_strings(&["OK"]))
            }
            MsgType::Directory => {
                let path = abs(&first);
                let nodes = if tx != 0 {
                    &g.conns[&self.id].txs[&tx].nodes
                } else {
                    &g.nodes
                };
                if !nodes.contains_key(&path) {
                    return err_reply(m, "ENOENT");
                }
                let prefix = if path == "/" {
                    "/".to_string()
                } else {
                    format!("{path}/")
                };
                let names: Vec<String> = nodes
                    .keys()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .filter(|r| !r.is_empty() && !r.contains('/'))
                    .map(str::to_string)
                    .collect();
                ok_reply(m, join_strings(&names))
            }
            MsgType::GetPerms => ok_reply(m, join_strings(&["n0"])),
            MsgType::SetPerms => ok_reply(m, join_strings(&["OK"])),
            MsgType::GetDomainPath => {
                let d = String::from_utf8_lossy(&first).into_owned();
                ok_reply(m, join_strings(&[format!("/local/domain/{d}")]))
            }
            MsgType::Watch | MsgType::Unwatch => {
                let parts: Vec<&[u8]> = payload.split(|&b| b == 0).collect();
                let (Some(p), Some(t)) = (parts.first(), parts.get(1)) else {
                    return err_reply(m, "EINVAL");
                };
                let relative = !p.starts_with(b"/");
                let path = abs(p);
                let token = String::from_utf8_lossy(t).into_owned();
                let conn = g.conns.get_mut(&self.id).unwrap();
                if m.msg_type == MsgType::Watch {
                    if conn
                        .watches
                        .iter()
                        .any(|(w, tk, _)| *w == path && *tk == token)
                    {
                        return err_reply(m, "EEXIST");
                    }
                    conn.watches.push((path.clone(), token.clone(), relative));
                    let reply = ok_reply(m, join_strings(&["OK"]));
                    reply.encode_into_deque(&mut conn.out);
                    push_event(conn, &shown(&path, relative, domid), &token);
                    // Already queued, in order: the reply, then the event.
                    return Message::new(MsgType::Control, u32::MAX, 0, Vec::new()).unwrap();
                }
                let before = conn.watches.len();
                conn.watches
                    .retain(|(w, tk, _)| !(*w == path && *tk == token));
                if conn.watches.len() == before {
                    return err_reply(m, "ENOENT");
                }
                ok_reply(m, join_strings(&["OK"]))
            }
            MsgType::ResetWatches => {
                g.conns.get_mut(&self.id).unwrap().watches.clear();
                ok_reply(m, join_strings(&["OK"]))
            }
            MsgType::TransactionStart => {
                let id = g.next_tx;
                g.next_tx += 1;
                let t = Tx {
                    base: g.generation,
                    nodes: g.nodes.clone(),
                    changed: BTreeSet::new(),
                };
                g.conns.get_mut(&self.id).unwrap().txs.insert(id, t);
                ok_reply(m, join_strings(&[id.to_string()]))
            }
            MsgType::TransactionEnd => {
                let Some(t) = g.conns.get_mut(&self.id).unwrap().txs.remove(&tx) else {
                    return err_reply(m, "ENOENT");
                };
                if first.as_slice() != b"T" {
                    return ok_reply(m, join_strings(&["OK"]));
                }
                if t.base != g.generation {
                    return err_reply(m, "EAGAIN");
                }
                if !t.changed.is_empty() {
                    g.nodes = t.nodes;
                    g.generation += 1;
                    for p in &t.changed {
                        fire(g, p);
                    }
                }
                ok_reply(m, join_strings(&["OK"]))
            }
            _ => err_reply(m, "ENOSYS"),
        }
    }
}

impl Transport for MemConn {
    fn send(&mut self, data: &[u8], _wait: Wait) -> Result<usize, TransportError> {
        let mut input = data;
        let mut fired = false;
        while !input.is_empty() {
            let Some(m) = self
                .decoder
                .decode(&mut input)
                .map_err(|_| TransportError::Closed)?
            else {
                break;
            };
            let store = self.store.clone();
            let mut g = store.lock();
            let before = g.generation;
            let reply = self.handle(&mut g, &m);
            fired |= g.generation != before;
            if !(reply.msg_type == MsgType::Control && reply.req_id == u32::MAX) {
                let conn = g.conns.get_mut(&self.id).ok_or(TransportError::Closed)?;
                reply.encode_into_deque(&mut conn.out);
            }
        }
        let _ = fired;
        self.store.inner.1.notify_all();
        Ok(data.len())
    }

    fn recv(&mut self, buf: &mut [u8], wait: Wait) -> Result<usize, TransportError> {
        let deadline = match wait {
            Wait::NoWait => Some(Instant::now()),
            Wait::For(d) => Some(Instant::now() + d),
            Wait::Forever => None,
        };
        let (lock, cv) = &*self.store.inner;
        let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let conn = g.conns.get_mut(&self.id).ok_or(TransportError::Closed)?;
            if !conn.out.is_empty() {
                let n = buf.len().min(conn.out.len());
                for (d, s) in buf.iter_mut().zip(conn.out.drain(..n)) {
                    *d = s;
                }
                return Ok(n);
            }
            let now = Instant::now();
            match deadline {
                Some(d) if now >= d => return Ok(0),
                Some(d) => {
                    g = cv
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => g = cv.wait(g).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}
