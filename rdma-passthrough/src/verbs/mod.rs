//! The verbs API, in libibverbs' shape, over the reliable-connected
//! transport of [`crate::rc`].
//!
//! A [`Context`] stands for one RoCE v2 device: a MAC address, an IPv4
//! address and the GID `::ffff:a.b.c.d` (index 0, the only one). It owns
//! every verbs object and hands out small `Copy` handles:
//! - protection domains ([`Context::alloc_pd`]);
//! - memory regions ([`Context::reg_mr`], [`Context::reg_mr_with`]): the
//!   context owns the bytes and gives each region a virtual address range
//!   of its own (with an unmapped gap after it), a local and a remote key,
//!   and access flags (LOCAL_WRITE, REMOTE_WRITE, REMOTE_READ,
//!   REMOTE_ATOMIC, checked as libibverbs does). The application reads and
//!   writes a region's bytes through [`Context::mr_bytes`] and
//!   [`Context::mr_bytes_mut`]. Deregistration is refused while a posted
//!   work request's scatter list names the region.
//! - completion queues ([`Context::create_cq`], [`Context::poll_cq`]),
//!   with [`Context::req_notify_cq`] arming one so that its next completion
//!   is reported by [`Context::take_cq_events`] (what a driver waits on). A
//!   full completion queue does not drop completions silently: it counts
//!   them, moves the queue pair that overflowed it to the error state and
//!   [`Context::poll_cq`] reports [`VerbsError::CqOverrun`].
//! - reliable-connected queue pairs ([`Context::create_qp`]) whose number
//!   the context allocates, moved through RESET→INIT→RTR→RTS (and to ERR
//!   or back to RESET from any state) by [`Context::modify_qp`] with the
//!   attributes `ibv_modify_qp` takes for each transition; a missing,
//!   unexpected or out-of-range attribute or an invalid transition is
//!   refused with a [`VerbsError`] saying what to do. Sends are posted in
//!   RTS only, receives from INIT on.
//! - work requests with scatter-gather lists checked against the regions
//!   of the queue pair's protection domain: SEND (with immediate), RDMA
//!   WRITE (with immediate), RDMA READ, compare-and-swap and fetch-and-add
//!   (one 8-byte SGE for the original value), signaled or not; receives
//!   whose lists a received SEND is scattered into. SEND and WRITE sources
//!   are read when posted: a single entry's bytes go straight from the
//!   region into the packets' frames, several entries are gathered into a
//!   buffer first. A received SEND is scattered packet by packet, from the
//!   frame's private copy, as each packet is accepted; READ and atomic
//!   results are scattered when they complete.
//! - completions with the work request id, status, opcode, byte count,
//!   immediate data and queue pair number.
//!
//! The transport pump a driver runs over a frame device:
//! [`Context::handle_frame`] (a received frame, any QP; frames are
//! demultiplexed by destination QP number after their Ethernet and IPv4
//! destination and the queue pair's remote address are checked),
//! [`Context::next_frame`] (the next frame to send, round robin over the
//! queue pairs), [`Context::on_time`] and [`Context::next_deadline`] (the
//! queue pairs' timers, in the driver's nanosecond clock), and
//! [`Context::take_cq_events`] (the armed completion queues that got a
//! completion).
//!
//! Remote accesses (RDMA WRITE, READ and atomics from the peer) need both
//! the queue pair's access flags and the region's, and the region must be
//! in the queue pair's protection domain.
//!
//! # Not here
//! Shared receive queues, memory windows, SEND with invalidate, the SQD
//! state, unreliable datagram and connected services, address handles as
//! separate objects (the remote address is a queue pair attribute),
//! solicited-only notification (an armed queue reports its next completion
//! whatever the solicited bit), inline data, GID tables beyond the one
//! IPv4-mapped GID, VLANs and IPv6.

mod types;

pub use types::*;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;

use crate::headers::QPN_MASK;
use crate::packet::{parse, Endpoints, ParseError};
use crate::psn::Psn;
use crate::rc::{
    CompletionKind, QpConfig, QpTimers, QueuePair, RegionRef, RegionTable, RemoteAccess, SendOp,
    Status, MAX_MESSAGE, MAX_RD_ATOMIC,
};

/// The P_Key of the one entry of the partition table.
pub const DEFAULT_PKEY: u16 = 0xffff;
/// The largest completion queue.
pub const MAX_CQE: usize = 1 << 20;
/// The largest queue (send or receive) of a queue pair.
pub const MAX_QP_WR: u32 = 1 << 14;
/// The most scatter-gather entries of a work request.
pub const MAX_SGE: u32 = 32;
/// The address of the first memory region.
const MR_BASE: u64 = 0x7f00_0000_0000;
/// Bytes left unmapped after each region.
const MR_GAP: u64 = 1 << 12;
/// Scatter lists of completed receives a queue pair keeps for reuse.
const SPARE_SGLS: usize = 16;
/// The most unsignaled sends of a queue pair that leave in a row without
/// asking for an ACK (see [`crate::rc::QueuePair::post_send_unsignaled`]);
/// a shallower send queue asks every half its depth.
pub const ACK_REQ_INTERVAL_MAX: u32 = 16;

struct Pd;

struct Mr {
    pd: PdHandle,
    key: u32,
    access: AccessFlags,
    addr: u64,
    data: Vec<u8>,
    /// Posted work requests whose scatter lists name it.
    refs: usize,
}

struct Cq {
    cap: usize,
    entries: VecDeque<WorkCompletion>,
    armed: bool,
    lost: u64,
}

/// A send work request in flight.
struct SendCtx {
    wr_id: u64,
    signaled: bool,
    opcode: WcOpcode,
    byte_len: u32,
    /// Where READ data or an atomic's original value go.
    scatter: Vec<Sge>,
}

struct RecvCtx {
    wr_id: u64,
    sgl: Vec<Sge>,
    /// The message's bytes were placed in the scatter list as they
    /// arrived ([`RegionTable::place_recv`]).
    placed: bool,
    /// A placement failed (an entry no longer valid): the completion is a
    /// local protection error.
    place_failed: bool,
}

/// Work requests in flight by token, in the order posted (tokens grow):
/// a queue, since a queue pair completes its sends in order and its
/// receives in order, so that the one looked for is nearly always the
/// first (no search, no allocation once the queue has grown).
struct Pending<T>(VecDeque<(u64, T)>);

impl<T> Pending<T> {
    fn new() -> Pending<T> {
        Pending(VecDeque::new())
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds the request of `token`, above every token there.
    fn insert(&mut self, token: u64, v: T) {
        self.0.push_back((token, v));
    }

    fn position(&self, token: u64) -> Option<usize> {
        match self.0.front() {
            Some((t, _)) if *t == token => Some(0),
            _ => self.0.iter().position(|(t, _)| *t == token),
        }
    }

    fn get(&self, token: u64) -> Option<&T> {
        self.0.get(self.position(token)?).map(|(_, v)| v)
    }

    fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        let i = self.position(token)?;
        self.0.get_mut(i).map(|(_, v)| v)
    }

    fn remove(&mut self, token: u64) -> Option<T> {
        let i = self.position(token)?;
        self.0.remove(i).map(|(_, v)| v)
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|(_, v)| v)
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Queue pairs, memory regions and completion queues by number: the
/// numbers sorted in one array, the objects at the same index in another.
/// A lookup is a binary search of a few dense words (a received frame's
/// destination QP or a peer's rkey, any number a peer chooses, finds
/// nothing or the one object with that number), and a walk over every
/// object (the summary, the round robin of the transmit) reads the
/// arrays in order, in number order as a map's keys were. Creation and
/// destruction, rare, move the entries after the number.
struct NumTable<T> {
    keys: Vec<u32>,
    vals: Vec<T>,
}

impl<T> NumTable<T> {
    const fn new() -> NumTable<T> {
        NumTable {
            keys: Vec::new(),
            vals: Vec::new(),
        }
    }

    #[inline]
    fn index(&self, k: u32) -> Option<usize> {
        self.keys.binary_search(&k).ok()
    }

    fn contains_key(&self, k: &u32) -> bool {
        self.index(*k).is_some()
    }

    #[inline]
    fn get(&self, k: &u32) -> Option<&T> {
        self.index(*k).and_then(|i| self.vals.get(i))
    }

    #[inline]
    fn get_mut(&mut self, k: &u32) -> Option<&mut T> {
        self.index(*k).and_then(|i| self.vals.get_mut(i))
    }

    /// Inserts `v` as number `k`, returning the object it replaces.
    fn insert(&mut self, k: u32, v: T) -> Option<T> {
        match self.keys.binary_search(&k) {
            Ok(i) => self.vals.get_mut(i).map(|old| core::mem::replace(old, v)),
            Err(i) => {
                self.keys.insert(i, k);
                self.vals.insert(i, v);
                None
            }
        }
    }

    fn remove(&mut self, k: &u32) -> Option<T> {
        let i = self.index(*k)?;
        self.keys.remove(i);
        Some(self.vals.remove(i))
    }

    fn keys(&self) -> core::slice::Iter<'_, u32> {
        self.keys.iter()
    }

    fn values(&self) -> core::slice::Iter<'_, T> {
        self.vals.iter()
    }

    fn iter(&self) -> core::iter::Zip<core::slice::Iter<'_, u32>, core::slice::Iter<'_, T>> {
        self.keys.iter().zip(self.vals.iter())
    }
}

impl<'a, T> IntoIterator for &'a NumTable<T> {
    type Item = (&'a u32, &'a T);
    type IntoIter = core::iter::Zip<core::slice::Iter<'a, u32>, core::slice::Iter<'a, T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

struct Qp {
    pd: PdHandle,
    init: QpInitAttr,
    state: QpState,
    access: AccessFlags,
    mtu: PathMtu,
    dest_qpn: u32,
    rq_psn: u32,
    max_dest_rd_atomic: u8,
    min_rnr_timer: u8,
    ah: Option<AhAttr>,
    rc: Option<QueuePair>,
    next_token: u64,
    sends: Pending<SendCtx>,
    recvs: Pending<RecvCtx>,
    /// Receives posted before RTR, in order.
    early_recvs: VecDeque<u64>,
    /// Scatter lists of completed receives, reused for the next ones.
    spare_sgls: Vec<Vec<Sge>>,
}

/// One RoCE v2 device's verbs objects and transport.
pub struct Context {
    mac: [u8; 6],
    ip: [u8; 4],
    next_id: u32,
    next_qpn: u32,
    next_addr: u64,
    pds: BTreeMap<u32, Pd>,
    mrs: NumTable<Mr>,
    cqs: NumTable<Cq>,
    qps: NumTable<Qp>,
    tx_cursor: u32,
    /// Some queue pair has a frame to send (kept by [`Context::refresh`]
    /// after everything that can change it): an idle poll asks no queue
    /// pair.
    tx_waiting: bool,
    /// The earliest deadline of the queue pairs (kept the same way).
    deadline: Option<u64>,
    events: Vec<CqHandle>,
    now: u64,
    stats: ContextStats,
}

/// The regions a queue pair's remote peer may reach: those of its
/// protection domain, with the access both the region and the queue pair
/// grant.
struct PdRegions<'a> {
    mrs: &'a mut NumTable<Mr>,
    pd: PdHandle,
    qp_access: AccessFlags,
    /// The queue pair's receives, whose scatter lists received SENDs are
    /// placed in.
    recvs: &'a mut Pending<RecvCtx>,
}

impl RegionTable for PdRegions<'_> {
    fn lookup(&mut self, rkey: u32) -> Option<RegionRef<'_>> {
        let mr = self.mrs.get_mut(&(rkey >> 8))?;
        if mr.key != rkey || mr.pd != self.pd {
            return None;
        }
        let a = mr.access & self.qp_access;
        Some(RegionRef {
            va: mr.addr,
            access: RemoteAccess {
                write: a.contains(AccessFlags::REMOTE_WRITE),
                read: a.contains(AccessFlags::REMOTE_READ),
                atomic: a.contains(AccessFlags::REMOTE_ATOMIC),
            },
            data: &mut mr.data,
        })
    }

    /// Scatters the bytes straight from the received frame's private copy
    /// into the receive's list (checked as `scatter` checks it): the
    /// queue pair keeps no copy of its own.
    fn place_recv(&mut self, wr_id: u64, offset: usize, payload: &[u8]) -> bool {
        let Some(r) = self.recvs.get_mut(wr_id) else {
            return false;
        };
        if !r.place_failed && !scatter_at(self.mrs, self.pd, &r.sgl, offset, payload) {
            r.place_failed = true;
        }
        r.placed = true;
        true
    }
}

/// The bytes an SGE names in `mrs`, if it lies in a region of `pd` with
/// `need` access.
fn sge_slice<'m>(
    mrs: &'m mut NumTable<Mr>,
    pd: PdHandle,
    sge: &Sge,
    need: AccessFlags,
) -> Result<&'m mut [u8], &'static str> {
    let mr = mrs
        .get_mut(&(sge.lkey >> 8))
        .filter(|m| m.key == sge.lkey)
        .ok_or("no memory region has this lkey")?;
    if mr.pd != pd {
        return Err("the region belongs to another protection domain");
    }
    if !mr.access.contains(need) {
        return Err("the region lacks LOCAL_WRITE, needed to receive into it");
    }
    let offset = sge
        .addr
        .checked_sub(mr.addr)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or("the address lies before the region")?;
    let end = offset
        .checked_add(sge.length as usize)
        .ok_or("the entry overflows")?;
    mr.data
        .get_mut(offset..end)
        .ok_or("the entry runs past the end of the region")
}

impl Context {
    /// A device with this Ethernet and IPv4 address.
    pub fn new(mac: [u8; 6], ip: [u8; 4]) -> Context {
        Context {
            mac,
            ip,
            next_id: 1,
            next_qpn: 0x11,
            next_addr: MR_BASE,
            pds: BTreeMap::new(),
            mrs: NumTable::new(),
            cqs: NumTable::new(),
            qps: NumTable::new(),
            tx_cursor: 0,
            tx_waiting: false,
            deadline: None,
            events: Vec::new(),
            now: 0,
            stats: ContextStats::default(),
        }
    }

    /// The Ethernet address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The IPv4 address.
    pub fn ipv4(&self) -> [u8; 4] {
        self.ip
    }

    /// GID index 0: `::ffff:a.b.c.d`.
    pub fn gid(&self) -> [u8; 16] {
        ipv4_gid(self.ip)
    }

    /// The counters.
    pub fn stats(&self) -> ContextStats {
        self.stats
    }

    /// Completions put on completion queues so far (cheap: a driver reads
    /// it around every frame it hands over).
    #[inline]
    pub fn completions_made(&self) -> u64 {
        self.stats.completions
    }

    /// RDMA WRITE packets whose bytes were placed in this context's
    /// regions so far.
    #[inline]
    pub fn writes_placed(&self) -> u64 {
        self.stats.writes_placed
    }

    fn id(&mut self) -> Result<u32, VerbsError> {
        let id = self.next_id;
        // Region keys carry the id in their top 24 bits.
        if id > 0x00ff_ffff {
            return Err(VerbsError::BadSize {
                what: "objects created",
                value: u64::from(id),
                max: 0x00ff_ffff,
            });
        }
        self.next_id += 1;
        Ok(id)
    }

    // Protection domains.

    /// Allocates a protection domain.
    pub fn alloc_pd(&mut self) -> Result<PdHandle, VerbsError> {
        let id = self.id()?;
        self.pds.insert(id, Pd);
        Ok(PdHandle(id))
    }

    /// Deallocates a protection domain; refused while regions or queue
    /// pairs use it.
    pub fn dealloc_pd(&mut self, pd: PdHandle) -> Result<(), VerbsError> {
        if !self.pds.contains_key(&pd.0) {
            return Err(VerbsError::NoSuchPd);
        }
        let users = self.mrs.values().filter(|m| m.pd == pd).count()
            + self.qps.values().filter(|q| q.pd == pd).count();
        if users > 0 {
            return Err(VerbsError::InUse {
                what: "protection domain",
                users,
            });
        }
        self.pds.remove(&pd.0);
        Ok(())
    }

    // Memory regions.

    /// Registers a zeroed memory region of `len` bytes.
    pub fn reg_mr(
        &mut self,
        pd: PdHandle,
        len: usize,
        access: AccessFlags,
    ) -> Result<MrHandle, VerbsError> {
        if len > MAX_MESSAGE {
            return Err(VerbsError::BadSize {
                what: "memory region length",
                value: len as u64,
                max: MAX_MESSAGE as u64,
            });
        }
        self.reg_mr_with(pd, alloc::vec![0; len], access)
    }

    /// Registers `data` as a memory region.
    pub fn reg_mr_with(
        &mut self,
        pd: PdHandle,
        data: Vec<u8>,
        access: AccessFlags,
    ) -> Result<MrHandle, VerbsError> {
        if !self.pds.contains_key(&pd.0) {
            return Err(VerbsError::NoSuchPd);
        }
        let needs_local = AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_ATOMIC;
        if access.0 & !AccessFlags::KNOWN_BITS != 0
            || (access.0 & needs_local.0 != 0 && !access.contains(AccessFlags::LOCAL_WRITE))
        {
            return Err(VerbsError::BadAccess(access.0));
        }
        let len = data.len() as u64;
        let addr = self.next_addr;
        let next = len
            .checked_add(0xfff)
            .map(|l| l & !0xfff)
            .and_then(|l| addr.checked_add(l))
            .and_then(|a| a.checked_add(MR_GAP))
            .ok_or(VerbsError::OutOfAddressSpace)?;
        let id = self.id()?;
        self.next_addr = next;
        // The low byte varies the key between registrations.
        let key = (id << 8) | (id.wrapping_mul(0x9d) & 0xff);
        self.mrs.insert(
            id,
            Mr {
                pd,
                key,
                access,
                addr,
                data,
                refs: 0,
            },
        );
        Ok(MrHandle(id))
    }

    /// A region's address, length, keys and access.
    pub fn mr_info(&self, mr: MrHandle) -> Result<MrInfo, VerbsError> {
        let m = self.mrs.get(&mr.0).ok_or(VerbsError::NoSuchMr)?;
        Ok(MrInfo {
            addr: m.addr,
            len: m.data.len(),
            lkey: m.key,
            rkey: m.key,
            access: m.access,
            pd: m.pd,
        })
    }

    /// A region's bytes.
    pub fn mr_bytes(&self, mr: MrHandle) -> Result<&[u8], VerbsError> {
        Ok(&self.mrs.get(&mr.0).ok_or(VerbsError::NoSuchMr)?.data)
    }

    /// A region's bytes, to write.
    pub fn mr_bytes_mut(&mut self, mr: MrHandle) -> Result<&mut [u8], VerbsError> {
        Ok(&mut self.mrs.get_mut(&mr.0).ok_or(VerbsError::NoSuchMr)?.data)
    }

    /// Deregisters a region and returns its bytes; refused while a posted
    /// work request names it.
    pub fn dereg_mr(&mut self, mr: MrHandle) -> Result<Vec<u8>, VerbsError> {
        let m = self.mrs.get(&mr.0).ok_or(VerbsError::NoSuchMr)?;
        if m.refs > 0 {
            return Err(VerbsError::InUse {
                what: "memory region",
                users: m.refs,
            });
        }
        Ok(self.mrs.remove(&mr.0).map(|m| m.data).unwrap_or_default())
    }

    // Completion queues.

    /// Creates a completion queue of `cqe` entries.
    pub fn create_cq(&mut self, cqe: usize) -> Result<CqHandle, VerbsError> {
        if cqe == 0 || cqe > MAX_CQE {
            return Err(VerbsError::BadSize {
                what: "completion queue entries",
                value: cqe as u64,
                max: MAX_CQE as u64,
            });
        }
        let id = self.id()?;
        self.cqs.insert(
            id,
            Cq {
                cap: cqe,
                entries: VecDeque::new(),
                armed: false,
                lost: 0,
            },
        );
        Ok(CqHandle(id))
    }

    /// Destroys a completion queue; refused while queue pairs use it.
    pub fn destroy_cq(&mut self, cq: CqHandle) -> Result<(), VerbsError> {
        if !self.cqs.contains_key(&cq.0) {
            return Err(VerbsError::NoSuchCq);
        }
        let users = self
            .qps
            .values()
            .filter(|q| q.init.send_cq == cq || q.init.recv_cq == cq)
            .count();
        if users > 0 {
            return Err(VerbsError::InUse {
                what: "completion queue",
                users,
            });
        }
        self.cqs.remove(&cq.0);
        self.events.retain(|&c| c != cq);
        Ok(())
    }

    /// Takes up to `max` completions, oldest first. After an overrun it
    /// reports [`VerbsError::CqOverrun`] instead (the queue is unusable:
    /// destroy it and create a larger one).
    pub fn poll_cq(&mut self, cq: CqHandle, max: usize) -> Result<Vec<WorkCompletion>, VerbsError> {
        let c = self.cqs.get_mut(&cq.0).ok_or(VerbsError::NoSuchCq)?;
        if c.lost > 0 {
            return Err(VerbsError::CqOverrun { lost: c.lost });
        }
        let n = max.min(c.entries.len());
        Ok(c.entries.drain(..n).collect())
    }

    /// [`Context::poll_cq`] into the caller's vector: appends up to `max`
    /// completions to `out` and returns how many, without allocating once
    /// `out` has the room (`ibv_poll_cq` filling the caller's array).
    pub fn poll_cq_into(
        &mut self,
        cq: CqHandle,
        max: usize,
        out: &mut Vec<WorkCompletion>,
    ) -> Result<usize, VerbsError> {
        let c = self.cqs.get_mut(&cq.0).ok_or(VerbsError::NoSuchCq)?;
        if c.lost > 0 {
            return Err(VerbsError::CqOverrun { lost: c.lost });
        }
        let n = max.min(c.entries.len());
        for _ in 0..n {
            match c.entries.pop_front() {
                Some(wc) => out.push(wc),
                None => break,
            }
        }
        Ok(n)
    }

    /// Arms a completion queue: its next completion puts it in
    /// [`Context::take_cq_events`] (once; arm again after). The solicited
    /// bit is not tracked, so `solicited_only` reports every completion as
    /// well.
    pub fn req_notify_cq(&mut self, cq: CqHandle, solicited_only: bool) -> Result<(), VerbsError> {
        let _ = solicited_only;
        let c = self.cqs.get_mut(&cq.0).ok_or(VerbsError::NoSuchCq)?;
        c.armed = true;
        // Completions already waiting count as the event (no lost wake-up).
        if !c.entries.is_empty() || c.lost > 0 {
            c.armed = false;
            if !self.events.contains(&cq) {
                self.events.push(cq);
            }
        }
        Ok(())
    }

    /// The armed completion queues that got a completion since the last
    /// call.
    pub fn take_cq_events(&mut self) -> Vec<CqHandle> {
        core::mem::take(&mut self.events)
    }

    // Queue pairs.

    /// Creates a reliable-connected queue pair in RESET; its number is the
    /// handle's [`QpHandle::qp_num`].
    pub fn create_qp(&mut self, pd: PdHandle, init: &QpInitAttr) -> Result<QpHandle, VerbsError> {
        let r = self.create_qp_inner(pd, init);
        self.refresh();
        r
    }

    fn create_qp_inner(&mut self, pd: PdHandle, init: &QpInitAttr) -> Result<QpHandle, VerbsError> {
        if !self.pds.contains_key(&pd.0) {
            return Err(VerbsError::NoSuchPd);
        }
        if !self.cqs.contains_key(&init.send_cq.0) || !self.cqs.contains_key(&init.recv_cq.0) {
            return Err(VerbsError::NoSuchCq);
        }
        for (what, value, max) in [
            ("max_send_wr", init.max_send_wr, MAX_QP_WR),
            ("max_recv_wr", init.max_recv_wr, MAX_QP_WR),
            ("max_send_sge", init.max_send_sge, MAX_SGE),
            ("max_recv_sge", init.max_recv_sge, MAX_SGE),
        ] {
            if value > max {
                return Err(VerbsError::BadSize {
                    what,
                    value: u64::from(value),
                    max: u64::from(max),
                });
            }
        }
        let mut qpn = None;
        for _ in 0..=QPN_MASK {
            let n = self.next_qpn;
            self.next_qpn = if n >= QPN_MASK { 0x11 } else { n + 1 };
            if !self.qps.contains_key(&n) {
                qpn = Some(n);
                break;
            }
        }
        let qpn = qpn.ok_or(VerbsError::OutOfQpns)?;
        self.qps.insert(
            qpn,
            Qp {
                pd,
                init: *init,
                state: QpState::Reset,
                access: AccessFlags::NONE,
                mtu: PathMtu::Mtu1024,
                dest_qpn: 0,
                rq_psn: 0,
                max_dest_rd_atomic: 0,
                min_rnr_timer: 0,
                ah: None,
                rc: None,
                next_token: 1,
                sends: Pending::new(),
                recvs: Pending::new(),
                early_recvs: VecDeque::new(),
                spare_sgls: Vec::new(),
            },
        );
        Ok(QpHandle(qpn))
    }

    /// A queue pair's state.
    pub fn qp_state(&self, qp: QpHandle) -> Result<QpState, VerbsError> {
        Ok(self.qps.get(&qp.0).ok_or(VerbsError::NoSuchQp(qp.0))?.state)
    }

    /// A queue pair's transport counters (from RTR on).
    pub fn qp_stats(&self, qp: QpHandle) -> Option<crate::rc::Stats> {
        self.qps.get(&qp.0)?.rc.as_ref().map(|r| r.stats())
    }

    /// Destroys a queue pair: its work requests go without completions.
    pub fn destroy_qp(&mut self, qp: QpHandle) -> Result<(), VerbsError> {
        let r = self.destroy_qp_inner(qp);
        self.refresh();
        r
    }

    fn destroy_qp_inner(&mut self, qp: QpHandle) -> Result<(), VerbsError> {
        let q = self.qps.remove(&qp.0).ok_or(VerbsError::NoSuchQp(qp.0))?;
        release_refs(&mut self.mrs, &q);
        Ok(())
    }

    /// `ibv_modify_qp`: moves a queue pair to `attr.qp_state` with the
    /// attributes that transition takes (IBA 10.3.1, table 93 in short):
    /// - RESET→INIT: `pkey_index`, `port_num`, `qp_access_flags`;
    /// - INIT→RTR: `ah_attr`, `path_mtu`, `dest_qp_num`, `rq_psn`,
    ///   `max_dest_rd_atomic`, `min_rnr_timer` (optional:
    ///   `qp_access_flags`, `pkey_index`);
    /// - RTR→RTS: `sq_psn`, `timeout`, `retry_cnt`, `rnr_retry`,
    ///   `max_rd_atomic` (optional: `qp_access_flags`, `min_rnr_timer`);
    /// - INIT→INIT and RTS→RTS: optional `qp_access_flags` (and
    ///   `pkey_index`, `port_num` in INIT, `min_rnr_timer` in RTS);
    /// - any→ERR (work requests complete flushed) and any→RESET (work
    ///   requests are dropped without completions): no attributes.
    pub fn modify_qp(&mut self, qp: QpHandle, attr: &QpAttr) -> Result<(), VerbsError> {
        let r = self.modify_qp_inner(qp, attr);
        self.refresh();
        r
    }

    fn modify_qp_inner(&mut self, qp: QpHandle, attr: &QpAttr) -> Result<(), VerbsError> {
        let q = self.qps.get(&qp.0).ok_or(VerbsError::NoSuchQp(qp.0))?;
        let from = q.state;
        let to = attr.qp_state;
        let (required, optional): (&[&str], &[&str]) = match (from, to) {
            (_, QpState::Reset) | (_, QpState::Err) => (&[], &[]),
            (QpState::Reset, QpState::Init) => {
                (&["pkey_index", "port_num", "qp_access_flags"], &[])
            }
            (QpState::Init, QpState::Init) => (&[], &["pkey_index", "port_num", "qp_access_flags"]),
            (QpState::Init, QpState::Rtr) => (
                &[
                    "ah_attr",
                    "path_mtu",
                    "dest_qp_num",
                    "rq_psn",
                    "max_dest_rd_atomic",
                    "min_rnr_timer",
                ],
                &["qp_access_flags", "pkey_index"],
            ),
            (QpState::Rtr, QpState::Rts) => (
                &[
                    "sq_psn",
                    "timeout",
                    "retry_cnt",
                    "rnr_retry",
                    "max_rd_atomic",
                ],
                &["qp_access_flags", "min_rnr_timer"],
            ),
            (QpState::Rts, QpState::Rts) => (&[], &["qp_access_flags", "min_rnr_timer"]),
            _ => return Err(VerbsError::BadTransition { from, to }),
        };
        let given = attr.given();
        for r in required {
            if !given.contains(r) {
                return Err(VerbsError::MissingAttribute { to, attr: r });
            }
        }
        for g in &given {
            if !required.contains(g) && !optional.contains(g) {
                return Err(VerbsError::UnexpectedAttribute { to, attr: g });
            }
        }
        check_values(attr)?;
        match to {
            QpState::Reset => {
                if let Some(q) = self.qps.get_mut(&qp.0) {
                    release_refs(&mut self.mrs, q);
                    q.sends.clear();
                    q.recvs.clear();
                    q.early_recvs.clear();
                    q.rc = None;
                    q.state = QpState::Reset;
                }
                return Ok(());
            }
            QpState::Err => {
                if let Some(q) = self.qps.get_mut(&qp.0) {
                    q.state = QpState::Err;
                    if let Some(rc) = q.rc.as_mut() {
                        rc.enter_error();
                    }
                }
                self.flush_early(qp.0);
                self.deliver(qp.0);
                return Ok(());
            }
            _ => {}
        }
        let (mac, ip) = (self.mac, self.ip);
        let Some(q) = self.qps.get_mut(&qp.0) else {
            return Err(VerbsError::NoSuchQp(qp.0));
        };
        if let Some(a) = attr.qp_access_flags {
            q.access = a;
        }
        if let Some(t) = attr.min_rnr_timer {
            q.min_rnr_timer = t;
            if let Some(rc) = q.rc.as_mut() {
                let mut timers = rc.timers();
                timers.min_rnr_timer = t;
                rc.set_timers(timers).map_err(config_error)?;
            }
        }
        if to == QpState::Rtr {
            let ah = attr.ah_attr.ok_or(VerbsError::MissingAttribute {
                to,
                attr: "ah_attr",
            })?;
            let dst_ip = gid_ipv4(&ah.dgid).ok_or(VerbsError::BadAttribute {
                attr: "ah_attr.dgid",
                why: "only IPv4-mapped GIDs (::ffff:a.b.c.d) are supported",
            })?;
            q.mtu = attr.path_mtu.unwrap_or(q.mtu);
            q.dest_qpn = attr.dest_qp_num.unwrap_or(0);
            q.rq_psn = attr.rq_psn.unwrap_or(0);
            q.max_dest_rd_atomic = attr.max_dest_rd_atomic.unwrap_or(0);
            q.ah = Some(ah);
            let cfg = QpConfig {
                qpn: qp.0,
                dest_qpn: q.dest_qpn,
                pkey: DEFAULT_PKEY,
                pmtu: q.mtu.bytes(),
                send_psn: Psn::ZERO,
                recv_psn: Psn::from_masked(q.rq_psn),
                retry_limit: 7,
                endpoints: Endpoints {
                    dst_mac: ah.dmac,
                    src_mac: mac,
                    src_ip: ip,
                    dst_ip,
                    // RoCE v2 source ports spread flows; one per QP.
                    src_port: 0xc000 | (qp.0 & 0x3fff) as u16,
                    tos: ah.traffic_class,
                    ttl: if ah.hop_limit == 0 { 64 } else { ah.hop_limit },
                    ip_id: 0,
                },
            };
            let mut rc = QueuePair::new(cfg).map_err(config_error)?;
            rc.set_rd_atomic(0, q.max_dest_rd_atomic)
                .map_err(config_error)?;
            // Unsignaled sends ask for an ACK every half send queue (at
            // most every ACK_REQ_INTERVAL_MAX): the queue never fills
            // waiting for one.
            rc.set_ack_req_interval((q.init.max_send_wr / 2).clamp(1, ACK_REQ_INTERVAL_MAX));
            rc.set_timers(QpTimers {
                timeout: 0,
                retry_cnt: 7,
                rnr_retry: 7,
                min_rnr_timer: q.min_rnr_timer,
            })
            .map_err(config_error)?;
            rc.on_time(self.now);
            // Receives posted in INIT go to the transport in order.
            for token in q.early_recvs.drain(..) {
                let cap = q
                    .recvs
                    .get(token)
                    .map_or(0, |r| r.sgl.iter().map(|s| s.length as usize).sum());
                rc.post_recv(token, cap);
            }
            q.rc = Some(rc);
        }
        if to == QpState::Rts && from == QpState::Rtr {
            let Some(rc) = q.rc.as_mut() else {
                return Err(VerbsError::BadTransition { from, to });
            };
            rc.set_send_psn(Psn::from_masked(attr.sq_psn.unwrap_or(0)))
                .map_err(config_error)?;
            rc.set_rd_atomic(attr.max_rd_atomic.unwrap_or(0), q.max_dest_rd_atomic)
                .map_err(config_error)?;
            rc.set_timers(QpTimers {
                timeout: attr.timeout.unwrap_or(0),
                retry_cnt: attr.retry_cnt.unwrap_or(7),
                rnr_retry: attr.rnr_retry.unwrap_or(7),
                min_rnr_timer: q.min_rnr_timer,
            })
            .map_err(config_error)?;
        }
        q.state = to;
        Ok(())
    }

    /// Posts a send work request (RTS only).
    pub fn post_send(&mut self, qp: QpHandle, wr: &SendWr) -> Result<(), VerbsError> {
        let r = self.post_send_inner(qp, wr);
        self.refresh();
        r
    }

    fn post_send_inner(&mut self, qp: QpHandle, wr: &SendWr) -> Result<(), VerbsError> {
        let Context { qps, mrs, now, .. } = self;
        let q = qps.get_mut(&qp.0).ok_or(VerbsError::NoSuchQp(qp.0))?;
        if q.state != QpState::Rts {
            return Err(VerbsError::WrongState {
                state: q.state,
                what: "send work request",
            });
        }
        if q.sends.len() >= q.init.max_send_wr as usize {
            return Err(VerbsError::QueueFull {
                what: "send",
                max: q.init.max_send_wr,
            });
        }
        if wr.sg_list.len() > q.init.max_send_sge as usize {
            return Err(VerbsError::BadSize {
                what: "send scatter-gather entries",
                value: wr.sg_list.len() as u64,
                max: u64::from(q.init.max_send_sge),
            });
        }
        let total: u64 = wr.sg_list.iter().map(|s| u64::from(s.length)).sum();
        if total > MAX_MESSAGE as u64 {
            return Err(VerbsError::BadSize {
                what: "message length",
                value: total,
                max: MAX_MESSAGE as u64,
            });
        }
        let pd = q.pd;
        if let (
            WrOpcode::Send
            | WrOpcode::SendWithImm(_)
            | WrOpcode::RdmaWrite { .. }
            | WrOpcode::RdmaWriteWithImm { .. },
            [sge],
        ) = (wr.opcode, wr.sg_list.as_slice())
        {
            return post_send_one(q, mrs, *now, wr, sge);
        }
        // A spare buffer of the queue pair's (given back once segmented).
        let mut data =
            q.rc.as_mut()
                .map(QueuePair::take_buffer)
                .unwrap_or_default();
        let is_atomic = matches!(
            wr.opcode,
            WrOpcode::AtomicCmpSwp { .. } | WrOpcode::AtomicFetchAdd { .. }
        );
        let scatters = is_atomic || matches!(wr.opcode, WrOpcode::RdmaRead { .. });
        if is_atomic && (wr.sg_list.len() != 1 || total != 8) {
            return Err(VerbsError::BadSge {
                index: 0,
                why: "an atomic takes exactly one 8-byte entry for the original value",
            });
        }
        // Check every entry, and gather SEND and WRITE sources now.
        let need = if scatters {
            AccessFlags::LOCAL_WRITE
        } else {
            AccessFlags::NONE
        };
        for (index, sge) in wr.sg_list.iter().enumerate() {
            let bytes =
                sge_slice(mrs, pd, sge, need).map_err(|why| VerbsError::BadSge { index, why })?;
            if !scatters {
                data.extend_from_slice(bytes);
            }
        }
        let len32 = u32::try_from(total).unwrap_or(u32::MAX);
        let (op, opcode) = match wr.opcode {
            WrOpcode::Send => (SendOp::Send { data, imm: None }, WcOpcode::Send),
            WrOpcode::SendWithImm(imm) => (
                SendOp::Send {
                    data,
                    imm: Some(imm.to_be_bytes()),
                },
                WcOpcode::Send,
            ),
            WrOpcode::RdmaWrite { remote_addr, rkey } => (
                SendOp::Write {
                    data,
                    va: remote_addr,
                    rkey,
                    imm: None,
                },
                WcOpcode::RdmaWrite,
            ),
            WrOpcode::RdmaWriteWithImm {
                remote_addr,
                rkey,
                imm,
            } => (
                SendOp::Write {
                    data,
                    va: remote_addr,
                    rkey,
                    imm: Some(imm.to_be_bytes()),
                },
                WcOpcode::RdmaWrite,
            ),
            WrOpcode::RdmaRead { remote_addr, rkey } => (
                SendOp::Read {
                    va: remote_addr,
                    rkey,
                    len: len32,
                },
                WcOpcode::RdmaRead,
            ),
            WrOpcode::AtomicCmpSwp {
                remote_addr,
                rkey,
                compare,
                swap,
            } => (
                SendOp::CompareSwap {
                    va: remote_addr,
                    rkey,
                    compare,
                    swap,
                },
                WcOpcode::CompSwap,
            ),
            WrOpcode::AtomicFetchAdd {
                remote_addr,
                rkey,
                add,
            } => (
                SendOp::FetchAdd {
                    va: remote_addr,
                    rkey,
                    add,
                },
                WcOpcode::FetchAdd,
            ),
        };
        let Some(rc) = q.rc.as_mut() else {
            return Err(VerbsError::WrongState {
                state: q.state,
                what: "send work request",
            });
        };
        let token = q.next_token;
        // The queue pair arms its ACK timer from its own clock: bring it to
        // the context's (see `Context::advance_time`).
        rc.advance_time(*now);
        let signaled = wr.signaled || q.init.sq_sig_all;
        if signaled {
            rc.post_send(token, op)
        } else {
            // Nobody waits for its completion: its ACK may be coalesced
            // with a later one.
            rc.post_send_unsignaled(token, op)
        }
        .map_err(VerbsError::Post)?;
        q.next_token += 1;
        let scatter = if scatters {
            wr.sg_list.clone()
        } else {
            Vec::new()
        };
        for s in &scatter {
            if let Some(m) = mrs.get_mut(&(s.lkey >> 8)) {
                m.refs += 1;
            }
        }
        q.sends.insert(
            token,
            SendCtx {
                wr_id: wr.wr_id,
                signaled,
                opcode,
                byte_len: if is_atomic { 8 } else { len32 },
                scatter,
            },
        );
        Ok(())
    }

    /// Posts a receive work request (INIT, RTR, RTS; in ERR it completes
    /// flushed).
    pub fn post_recv(&mut self, qp: QpHandle, wr: &RecvWr) -> Result<(), VerbsError> {
        // A receive queued changes no frame to send and no timer: the
        // summary is brought up to date only when completions moved (a
        // queue pair in the error state flushes it at once).
        if self.post_recv_inner(qp, wr)? {
            self.refresh();
        }
        Ok(())
    }

    /// Posts the receive; `Ok(true)` when completions were delivered.
    fn post_recv_inner(&mut self, qp: QpHandle, wr: &RecvWr) -> Result<bool, VerbsError> {
        let Context { qps, mrs, .. } = self;
        let q = qps.get_mut(&qp.0).ok_or(VerbsError::NoSuchQp(qp.0))?;
        if q.state == QpState::Reset {
            return Err(VerbsError::WrongState {
                state: q.state,
                what: "receive work request",
            });
        }
        if q.recvs.len() >= q.init.max_recv_wr as usize {
            return Err(VerbsError::QueueFull {
                what: "receive",
                max: q.init.max_recv_wr,
            });
        }
        if wr.sg_list.len() > q.init.max_recv_sge as usize {
            return Err(VerbsError::BadSize {
                what: "receive scatter-gather entries",
                value: wr.sg_list.len() as u64,
                max: u64::from(q.init.max_recv_sge),
            });
        }
        let pd = q.pd;
        for (index, sge) in wr.sg_list.iter().enumerate() {
            sge_slice(mrs, pd, sge, AccessFlags::LOCAL_WRITE)
                .map_err(|why| VerbsError::BadSge { index, why })?;
        }
        let cap: usize = wr.sg_list.iter().map(|s| s.length as usize).sum();
        for s in &wr.sg_list {
            if let Some(m) = mrs.get_mut(&(s.lkey >> 8)) {
                m.refs += 1;
            }
        }
        let token = q.next_token;
        q.next_token += 1;
        let mut sgl = q.spare_sgls.pop().unwrap_or_default();
        sgl.clear();
        sgl.extend_from_slice(&wr.sg_list);
        q.recvs.insert(
            token,
            RecvCtx {
                wr_id: wr.wr_id,
                sgl,
                placed: false,
                place_failed: false,
            },
        );
        let completions = match q.rc.as_mut() {
            Some(rc) => {
                rc.post_recv(token, cap);
                rc.completions_waiting()
            }
            None => {
                q.early_recvs.push_back(token);
                false
            }
        };
        let flush = q.state == QpState::Err;
        if flush {
            self.flush_early(qp.0);
        }
        if completions {
            self.deliver(qp.0);
        }
        Ok(flush || completions)
    }

    // The transport pump.

    /// Handles a received Ethernet frame (the caller's private copy):
    /// non-RoCE frames are ignored and counted; RoCE frames are checked
    /// (addresses, headers, ICRC) and handed to the queue pair their
    /// destination QP number names.
    pub fn handle_frame(&mut self, frame: &[u8], now_ns: u64) {
        self.handle_frame_inner(frame, now_ns);
        self.refresh();
    }

    fn handle_frame_inner(&mut self, frame: &[u8], now_ns: u64) {
        self.stats.frames_in += 1;
        self.now = self.now.max(now_ns);
        let p = match parse(frame) {
            Ok(p) => p,
            // Other traffic: other EtherTypes, IPv4 with options or
            // fragmented (RoCE v2 uses neither), other protocols and ports.
            Err(
                ParseError::NotIpv4 { .. }
                | ParseError::IpOptions { .. }
                | ParseError::Fragmented
                | ParseError::NotUdp { .. }
                | ParseError::NotRoce { .. },
            ) => {
                self.stats.not_roce += 1;
                return;
            }
            Err(ParseError::Truncated { what, .. })
                if what == "Ethernet header" || frame.len() < 14 =>
            {
                self.stats.not_roce += 1;
                return;
            }
            Err(e) => {
                log::debug!("dropping a malformed RoCE frame: {e}");
                self.stats.malformed += 1;
                self.stats.last_parse_error = Some(e);
                return;
            }
        };
        if p.endpoints.dst_mac != self.mac || p.endpoints.dst_ip != self.ip {
            self.stats.misaddressed += 1;
            return;
        }
        let qpn = p.headers.bth.dest_qp;
        let Some(q) = self.qps.get_mut(&qpn) else {
            self.stats.unknown_qp += 1;
            return;
        };
        let from_peer =
            q.ah.and_then(|ah| gid_ipv4(&ah.dgid))
                .is_some_and(|ip| ip == p.endpoints.src_ip);
        let (Some(rc), true) = (
            q.rc.as_mut(),
            matches!(q.state, QpState::Rtr | QpState::Rts),
        ) else {
            self.stats.wrong_state += 1;
            return;
        };
        if !from_peer {
            self.stats.misaddressed += 1;
            return;
        }
        rc.on_time(self.now);
        let mut table = PdRegions {
            mrs: &mut self.mrs,
            pd: q.pd,
            qp_access: q.access,
            recvs: &mut q.recvs,
        };
        let placed = rc.writes_placed();
        rc.receive_packet(&p, &mut table);
        self.stats.writes_placed += rc.writes_placed().wrapping_sub(placed);
        // Most frames (an ACK of unsignaled sends, a packet inside a
        // message) make no completion and change no state.
        if rc.completions_waiting() || (rc.is_error() && q.state != QpState::Err) {
            deliver_to(
                q,
                qpn,
                &mut self.mrs,
                &mut self.cqs,
                &mut self.events,
                &mut self.stats,
            );
        }
    }

    /// The next frame to send, from any queue pair (round robin).
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        let len = self.next_frame_len()?;
        let mut out = vec![0u8; len];
        let n = self.emit_into(&mut out)?;
        out.truncate(n);
        Some(out)
    }

    /// The queue pair whose turn it is to send (round robin from the
    /// cursor) and the length of its next frame.
    fn next_sender(&self) -> Option<(u32, usize)> {
        // One pass, in key order: the first with a frame at or after the
        // cursor, else the first with a frame before it.
        let start = self.tx_cursor;
        let mut wrapped = None;
        for (&k, q) in &self.qps {
            if let Some(len) = q.rc.as_ref().and_then(QueuePair::next_frame_len) {
                if k >= start {
                    return Some((k, len));
                }
                wrapped = wrapped.or(Some((k, len)));
            }
        }
        wrapped
    }

    /// The length of the frame [`Context::emit_into`] writes next, `None`
    /// when no queue pair has anything to send (then at once, without
    /// asking every queue pair: what an idle poll costs).
    #[inline]
    pub fn next_frame_len(&self) -> Option<usize> {
        if !self.tx_waiting {
            return None;
        }
        self.next_sender().map(|(_, len)| len)
    }

    /// Writes the next frame to send (queue pairs in turn) into `out`, a
    /// transmit buffer of the driver's, without allocating; returns its
    /// length. `None` when nothing waits or `out` is shorter than
    /// [`Context::next_frame_len`] (the frame then stays queued).
    pub fn emit_into(&mut self, out: &mut [u8]) -> Option<usize> {
        let r = self.emit_into_inner(out);
        self.refresh();
        r
    }

    fn emit_into_inner(&mut self, out: &mut [u8]) -> Option<usize> {
        let (k, _) = self.next_sender()?;
        let n = self.qps.get_mut(&k)?.rc.as_mut()?.emit_into(out)?;
        self.tx_cursor = k.wrapping_add(1);
        self.stats.frames_out += 1;
        Some(n)
    }

    /// The driver's clock, on every poll (monotonic nanoseconds): the time
    /// work requests posted before the next frame or timer arm their
    /// timers from. Runs no timer.
    #[inline]
    pub fn advance_time(&mut self, now_ns: u64) {
        self.now = self.now.max(now_ns);
    }

    /// Time passed (the driver's monotonic clock, in nanoseconds): runs the
    /// timers of every queue pair that are due.
    pub fn on_time(&mut self, now_ns: u64) {
        self.on_time_inner(now_ns);
        self.refresh();
    }

    fn on_time_inner(&mut self, now_ns: u64) {
        self.now = self.now.max(now_ns);
        let keys: Vec<u32> = self.qps.keys().copied().collect();
        for k in keys {
            if let Some(rc) = self.qps.get_mut(&k).and_then(|q| q.rc.as_mut()) {
                rc.on_time(self.now);
            }
            self.deliver(k);
        }
    }

    /// The earliest time [`Context::on_time`] has work, in nanoseconds
    /// (kept up to date by every call that can change it: reading it asks
    /// no queue pair).
    #[inline]
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// Brings the summary of the queue pairs that idle polls read
    /// ([`Context::next_frame_len`], [`Context::next_deadline`]) up to
    /// date: called at the end of every call that can change a queue
    /// pair's transport (posting, frames in and out, timers, state
    /// changes, creation and destruction).
    fn refresh(&mut self) {
        let mut waiting = false;
        let mut deadline: Option<u64> = None;
        for q in self.qps.values() {
            if let Some(rc) = q.rc.as_ref() {
                // A hint: `next_frame_len` asks the queue pairs again.
                waiting |= rc.may_have_output();
                if let Some(d) = rc.next_deadline() {
                    deadline = Some(deadline.map_or(d, |e| e.min(d)));
                }
            }
        }
        self.tx_waiting = waiting;
        self.deadline = deadline;
    }

    /// Flushes receives posted before the transport existed (a queue pair
    /// moved to ERR from INIT).
    fn flush_early(&mut self, qpn: u32) {
        let Some(q) = self.qps.get_mut(&qpn) else {
            return;
        };
        let tokens: Vec<u64> = q.early_recvs.drain(..).collect();
        for t in tokens {
            if let Some(r) = q.recvs.remove(t) {
                for s in &r.sgl {
                    unref(&mut self.mrs, s);
                }
                let wc = WorkCompletion {
                    wr_id: r.wr_id,
                    status: WcStatus::WrFlushErr,
                    opcode: WcOpcode::Recv,
                    byte_len: 0,
                    imm_data: None,
                    qp_num: qpn,
                };
                let cq = q.init.recv_cq;
                push_wc(&mut self.cqs, &mut self.events, &mut self.stats, cq, wc);
            }
        }
    }

    /// Moves a queue pair's transport completions to its completion
    /// queues, scattering READ data, atomic results and received SENDs.
    fn deliver(&mut self, qpn: u32) {
        let Some(q) = self.qps.get_mut(&qpn) else {
            return;
        };
        deliver_to(
            q,
            qpn,
            &mut self.mrs,
            &mut self.cqs,
            &mut self.events,
            &mut self.stats,
        );
    }
}

/// The fast path of [`Context::post_send`] (its checks of the queue
/// pair, queue depth and entry count done on the queue pair it looked
/// up): a SEND or RDMA WRITE (with or without immediate) of one
/// scatter/gather entry. The entry is
/// checked as the general path checks it, and its bytes go from the
/// region straight into the packets' frames
/// ([`QueuePair::post_message`]): no gather into a buffer, one lookup
/// of the queue pair and of the region. The frames and completions are
/// the general path's.
fn post_send_one(
    q: &mut Qp,
    mrs: &mut NumTable<Mr>,
    now: u64,
    wr: &SendWr,
    sge: &Sge,
) -> Result<(), VerbsError> {
    let bytes = sge_slice(mrs, q.pd, sge, AccessFlags::NONE)
        .map_err(|why| VerbsError::BadSge { index: 0, why })?;
    let (remote, imm, opcode) = match wr.opcode {
        WrOpcode::Send => (None, None, WcOpcode::Send),
        WrOpcode::SendWithImm(imm) => (None, Some(imm.to_be_bytes()), WcOpcode::Send),
        WrOpcode::RdmaWrite { remote_addr, rkey } => {
            (Some((remote_addr, rkey)), None, WcOpcode::RdmaWrite)
        }
        WrOpcode::RdmaWriteWithImm {
            remote_addr,
            rkey,
            imm,
        } => (
            Some((remote_addr, rkey)),
            Some(imm.to_be_bytes()),
            WcOpcode::RdmaWrite,
        ),
        _ => {
            return Err(VerbsError::BadSge {
                index: 0,
                why: "only a SEND or RDMA WRITE gathers its entry",
            })
        }
    };
    let Some(rc) = q.rc.as_mut() else {
        return Err(VerbsError::WrongState {
            state: q.state,
            what: "send work request",
        });
    };
    let token = q.next_token;
    // The queue pair arms its ACK timer from its own clock: bring it to
    // the context's (see `Context::advance_time`).
    rc.advance_time(now);
    let signaled = wr.signaled || q.init.sq_sig_all;
    rc.post_message(token, bytes, remote, imm, signaled)
        .map_err(VerbsError::Post)?;
    q.next_token += 1;
    q.sends.insert(
        token,
        SendCtx {
            wr_id: wr.wr_id,
            signaled,
            opcode,
            byte_len: sge.length,
            scatter: Vec::new(),
        },
    );
    Ok(())
}

/// [`Context::deliver`] of the queue pair `q` (number `qpn`), looked
/// up by the caller.
fn deliver_to(
    q: &mut Qp,
    qpn: u32,
    mrs: &mut NumTable<Mr>,
    cqs: &mut NumTable<Cq>,
    events: &mut Vec<CqHandle>,
    stats: &mut ContextStats,
) {
    let Some(rc) = q.rc.as_mut() else {
        return;
    };
    let mut overrun = false;
    while let Some(c) = rc.poll_completion() {
        let status = wc_status(c.status);
        let (cq, wc) = match c.kind {
            CompletionKind::Recv { .. } | CompletionKind::RecvRdmaWithImm { .. } => {
                let Some(r) = q.recvs.remove(c.wr_id) else {
                    continue;
                };
                let mut wc = WorkCompletion {
                    wr_id: r.wr_id,
                    status,
                    opcode: WcOpcode::Recv,
                    byte_len: 0,
                    imm_data: None,
                    qp_num: qpn,
                };
                match c.kind {
                    CompletionKind::Recv { data, imm, len } => {
                        wc.imm_data = imm.map(u32::from_be_bytes);
                        wc.byte_len = u32::try_from(len).unwrap_or(u32::MAX);
                        // Placed as it arrived, or handed over here.
                        let ok = if r.placed {
                            !r.place_failed
                        } else {
                            scatter(mrs, q.pd, &r.sgl, &data)
                        };
                        if status == WcStatus::Success && !ok {
                            wc.status = WcStatus::LocProtErr;
                        }
                        rc.recycle(data);
                    }
                    CompletionKind::RecvRdmaWithImm { len, imm } => {
                        wc.opcode = WcOpcode::RecvRdmaWithImm;
                        wc.imm_data = Some(u32::from_be_bytes(imm));
                        wc.byte_len = u32::try_from(len).unwrap_or(u32::MAX);
                    }
                    _ => {}
                }
                for s in &r.sgl {
                    unref(mrs, s);
                }
                if q.spare_sgls.len() < SPARE_SGLS && r.sgl.len() <= MAX_SGE as usize {
                    q.spare_sgls.push(r.sgl);
                }
                (q.init.recv_cq, wc)
            }
            kind => {
                let Some(s) = q.sends.remove(c.wr_id) else {
                    continue;
                };
                let mut wc = WorkCompletion {
                    wr_id: s.wr_id,
                    status,
                    opcode: s.opcode,
                    byte_len: s.byte_len,
                    imm_data: None,
                    qp_num: qpn,
                };
                if status == WcStatus::Success {
                    let ok = match kind {
                        CompletionKind::Read { data } => scatter(mrs, q.pd, &s.scatter, &data),
                        CompletionKind::Atomic { orig } => {
                            scatter(mrs, q.pd, &s.scatter, &orig.to_le_bytes())
                        }
                        _ => true,
                    };
                    if !ok {
                        wc.status = WcStatus::LocProtErr;
                    }
                }
                for sge in &s.scatter {
                    unref(mrs, sge);
                }
                if wc.status == WcStatus::Success && !s.signaled {
                    continue;
                }
                (q.init.send_cq, wc)
            }
        };
        if !push_wc(cqs, events, stats, cq, wc) {
            overrun = true;
        }
    }
    if overrun {
        log::warn!("QP {qpn:#x}: completion queue overrun; entering the error state");
        rc.enter_error();
    }
    if rc.is_error() && q.state != QpState::Err {
        q.state = QpState::Err;
    }
    if overrun {
        // The flushed completions of the error state.
        deliver_to(q, qpn, mrs, cqs, events, stats);
    }
}

/// Pushes a completion; `false` (counted, the queue marked overrun) when
/// the queue is full.
fn push_wc(
    cqs: &mut NumTable<Cq>,
    events: &mut Vec<CqHandle>,
    stats: &mut ContextStats,
    cq: CqHandle,
    wc: WorkCompletion,
) -> bool {
    let Some(c) = cqs.get_mut(&cq.0) else {
        return true;
    };
    let ok = c.lost == 0 && c.entries.len() < c.cap;
    if ok {
        c.entries.push_back(wc);
        stats.completions += 1;
    } else {
        c.lost += 1;
        stats.cq_overruns += 1;
    }
    if c.armed {
        c.armed = false;
        if !events.contains(&cq) {
            events.push(cq);
        }
    }
    ok
}

/// Writes `data` across the scatter list; `false` if an entry is no
/// longer valid (nothing outside regions is written).
fn scatter(mrs: &mut NumTable<Mr>, pd: PdHandle, sgl: &[Sge], data: &[u8]) -> bool {
    scatter_at(mrs, pd, sgl, 0, data)
}

/// Writes `data` across the scatter list from byte `offset` of it (the
/// entries before are neither checked nor written); `false` if an entry
/// written is no longer valid or the list ends first.
fn scatter_at(
    mrs: &mut NumTable<Mr>,
    pd: PdHandle,
    sgl: &[Sge],
    mut offset: usize,
    data: &[u8],
) -> bool {
    let mut rest = data;
    for sge in sgl {
        if rest.is_empty() {
            break;
        }
        let len = sge.length as usize;
        if offset >= len {
            offset -= len;
            continue;
        }
        let Ok(dst) = sge_slice(mrs, pd, sge, AccessFlags::LOCAL_WRITE) else {
            return false;
        };
        // `offset < len`, the entry's length.
        let Some(dst) = dst.get_mut(offset..) else {
            return false;
        };
        offset = 0;
        let n = dst.len().min(rest.len());
        let (now, later) = rest.split_at(n);
        if let Some(d) = dst.get_mut(..n) {
            d.copy_from_slice(now);
        }
        rest = later;
    }
    rest.is_empty()
}

fn unref(mrs: &mut NumTable<Mr>, sge: &Sge) {
    if let Some(m) = mrs.get_mut(&(sge.lkey >> 8)) {
        m.refs = m.refs.saturating_sub(1);
    }
}

fn release_refs(mrs: &mut NumTable<Mr>, q: &Qp) {
    for s in q.sends.values() {
        for sge in &s.scatter {
            unref(mrs, sge);
        }
    }
    for r in q.recvs.values() {
        for sge in &r.sgl {
            unref(mrs, sge);
        }
    }
}

fn wc_status(s: Status) -> WcStatus {
    use crate::headers::NakCode;
    match s {
        Status::Success => WcStatus::Success,
        Status::RemoteNak(NakCode::InvalidRequest) => WcStatus::RemInvReqErr,
        Status::RemoteNak(NakCode::RemoteAccessError) => WcStatus::RemAccessErr,
        Status::RemoteNak(_) => WcStatus::RemOpErr,
        Status::RetryExceeded => WcStatus::RetryExcErr,
        Status::RnrRetryExceeded => WcStatus::RnrRetryExcErr,
        Status::LocalLength => WcStatus::LocLenErr,
        Status::Flushed => WcStatus::WrFlushErr,
    }
}

fn config_error(e: crate::rc::ConfigError) -> VerbsError {
    let why = match e {
        crate::rc::ConfigError::BadPmtu(_) => "the path MTU must be 256..4096 bytes",
        crate::rc::ConfigError::QpnTooLarge => "queue pair numbers have 24 bits",
        crate::rc::ConfigError::BadTimer(w) => w,
        crate::rc::ConfigError::TooManyRdAtomic(_) => "at most 128 READ/atomic requests",
        crate::rc::ConfigError::AlreadySending => "the send PSN is fixed once sending started",
    };
    VerbsError::BadAttribute {
        attr: "queue pair",
        why,
    }
}

/// Checks the ranges of the attributes given.
fn check_values(a: &QpAttr) -> Result<(), VerbsError> {
    let bad = |attr, why| Err(VerbsError::BadAttribute { attr, why });
    if a.pkey_index.is_some_and(|i| i != 0) {
        return bad("pkey_index", "the partition table has one entry, index 0");
    }
    if a.port_num.is_some_and(|p| p != 1) {
        return bad("port_num", "the device has one port, 1");
    }
    if a.qp_access_flags
        .is_some_and(|f| f.0 & !AccessFlags::KNOWN_BITS != 0)
    {
        return bad("qp_access_flags", "unknown access bits");
    }
    if a.dest_qp_num.is_some_and(|n| n > QPN_MASK) {
        return bad("dest_qp_num", "queue pair numbers have 24 bits");
    }
    if a.rq_psn.is_some_and(|n| n > QPN_MASK) || a.sq_psn.is_some_and(|n| n > QPN_MASK) {
        return bad("rq_psn/sq_psn", "PSNs have 24 bits");
    }
    if a.max_rd_atomic.is_some_and(|n| n > MAX_RD_ATOMIC)
        || a.max_dest_rd_atomic.is_some_and(|n| n > MAX_RD_ATOMIC)
    {
        return bad("max_rd_atomic/max_dest_rd_atomic", "at most 128");
    }
    if a.min_rnr_timer.is_some_and(|n| n > 31) {
        return bad("min_rnr_timer", "the encoding has 5 bits (0..=31)");
    }
    if a.timeout.is_some_and(|n| n > 31) {
        return bad("timeout", "the encoding has 5 bits (0..=31)");
    }
    if a.retry_cnt.is_some_and(|n| n > 7) || a.rnr_retry.is_some_and(|n| n > 7) {
        return bad("retry_cnt/rnr_retry", "3 bits (0..=7)");
    }
    if let Some(ah) = a.ah_attr {
        if gid_ipv4(&ah.dgid).is_none() {
            return bad(
                "ah_attr.dgid",
                "only IPv4-mapped GIDs (::ffff:a.b.c.d) are supported",
            );
        }
    }
    Ok(())
}
