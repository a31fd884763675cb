//! The verbs' plain data: handles, access flags, attributes, work requests
//! and completions, and the errors.

use alloc::vec::Vec;
use core::fmt;

use crate::packet::ParseError;

/// A protection domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PdHandle(pub(crate) u32);

/// A memory region (its keys are in [`MrInfo`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MrHandle(pub(crate) u32);

/// A completion queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CqHandle(pub(crate) u32);

/// A queue pair, named by its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QpHandle(pub(crate) u32);

impl QpHandle {
    /// The queue pair number (24 bits), what the remote end sends to.
    pub const fn qp_num(self) -> u32 {
        self.0
    }
}

/// Memory region access flags, with libibverbs' values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccessFlags(pub u32);

impl AccessFlags {
    /// No access beyond local reads.
    pub const NONE: AccessFlags = AccessFlags(0);
    /// The local end may write (receives, READ and atomic destinations).
    pub const LOCAL_WRITE: AccessFlags = AccessFlags(1);
    /// Remote peers may RDMA WRITE.
    pub const REMOTE_WRITE: AccessFlags = AccessFlags(2);
    /// Remote peers may RDMA READ.
    pub const REMOTE_READ: AccessFlags = AccessFlags(4);
    /// Remote peers may run atomics.
    pub const REMOTE_ATOMIC: AccessFlags = AccessFlags(8);
    pub(crate) const KNOWN_BITS: u32 = 0xf;

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: AccessFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for AccessFlags {
    type Output = AccessFlags;
    fn bitor(self, rhs: AccessFlags) -> AccessFlags {
        AccessFlags(self.0 | rhs.0)
    }
}

impl core::ops::BitAnd for AccessFlags {
    type Output = AccessFlags;
    fn bitand(self, rhs: AccessFlags) -> AccessFlags {
        AccessFlags(self.0 & rhs.0)
    }
}

/// What [`Context::mr_info`](super::Context::mr_info) tells about a memory
/// region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MrInfo {
    /// The virtual address of its first byte (what SGEs and remote peers
    /// name).
    pub addr: u64,
    /// Its length in bytes.
    pub len: usize,
    /// The local key (SGEs).
    pub lkey: u32,
    /// The remote key (remote peers).
    pub rkey: u32,
    /// Its access flags.
    pub access: AccessFlags,
    /// Its protection domain.
    pub pd: PdHandle,
}

/// A queue pair's state (IBA 10.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QpState {
    /// Created, or reset: nothing is processed.
    Reset,
    /// Initialized: receives may be posted.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Send queue drained (not supported: refused).
    Sqd,
    /// Error: work requests complete flushed.
    Err,
}

/// A path MTU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathMtu {
    /// 256 bytes.
    Mtu256,
    /// 512 bytes.
    Mtu512,
    /// 1024 bytes.
    Mtu1024,
    /// 2048 bytes.
    Mtu2048,
    /// 4096 bytes.
    Mtu4096,
}

impl PathMtu {
    /// The MTU in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            PathMtu::Mtu256 => 256,
            PathMtu::Mtu512 => 512,
            PathMtu::Mtu1024 => 1024,
            PathMtu::Mtu2048 => 2048,
            PathMtu::Mtu4096 => 4096,
        }
    }

    /// The MTU of libibverbs' `enum ibv_mtu` value (1 is 256 ... 5 is
    /// 4096).
    pub const fn from_ibv(value: u8) -> Option<PathMtu> {
        match value {
            1 => Some(PathMtu::Mtu256),
            2 => Some(PathMtu::Mtu512),
            3 => Some(PathMtu::Mtu1024),
            4 => Some(PathMtu::Mtu2048),
            5 => Some(PathMtu::Mtu4096),
            _ => None,
        }
    }
}

/// Where the remote end is: an address handle's attributes for RoCE v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AhAttr {
    /// The remote GID: an IPv4-mapped IPv6 address `::ffff:a.b.c.d`.
    pub dgid: [u8; 16],
    /// The remote (or next hop's) Ethernet address.
    pub dmac: [u8; 6],
    /// IPv4 TTL (0 means 64).
    pub hop_limit: u8,
    /// IPv4 type of service.
    pub traffic_class: u8,
}

/// The GID of an IPv4 address: `::ffff:a.b.c.d`.
pub const fn ipv4_gid(ip: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip[0], ip[1], ip[2], ip[3],
    ]
}

/// The IPv4 address of an IPv4-mapped GID.
pub fn gid_ipv4(gid: &[u8; 16]) -> Option<[u8; 4]> {
    if gid[..10].iter().all(|&b| b == 0) && gid[10] == 0xff && gid[11] == 0xff {
        Some([gid[12], gid[13], gid[14], gid[15]])
    } else {
        None
    }
}

/// The attributes of `ibv_modify_qp`: the target state and the attributes
/// the transition takes (`None` for those not given, as bits clear in
/// libibverbs' attribute mask).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpAttr {
    /// The state to move to.
    pub qp_state: QpState,
    /// P_Key index (the table has one entry, 0xffff, at index 0).
    pub pkey_index: Option<u16>,
    /// Port (1, the only one).
    pub port_num: Option<u8>,
    /// What remote peers may do through this queue pair (REMOTE_WRITE,
    /// REMOTE_READ, REMOTE_ATOMIC).
    pub qp_access_flags: Option<AccessFlags>,
    /// Path MTU.
    pub path_mtu: Option<PathMtu>,
    /// The remote queue pair number.
    pub dest_qp_num: Option<u32>,
    /// The first PSN expected (24 bits).
    pub rq_psn: Option<u32>,
    /// The first PSN sent (24 bits).
    pub sq_psn: Option<u32>,
    /// READ and atomic requests this end keeps in flight.
    pub max_rd_atomic: Option<u8>,
    /// READ and atomic requests this end serves at once.
    pub max_dest_rd_atomic: Option<u8>,
    /// The RNR timer this end's RNR NAKs ask for (encoded, 0..=31).
    pub min_rnr_timer: Option<u8>,
    /// Local ACK timeout, 4.096 µs × 2^timeout (0 infinite, ..=31).
    pub timeout: Option<u8>,
    /// Retries after timeouts (0..=7).
    pub retry_cnt: Option<u8>,
    /// Retries after RNR NAKs (0..=7, 7 infinite).
    pub rnr_retry: Option<u8>,
    /// The remote end's address.
    pub ah_attr: Option<AhAttr>,
}

impl QpAttr {
    /// A move to `state` with no attribute given.
    pub const fn to(state: QpState) -> QpAttr {
        QpAttr {
            qp_state: state,
            pkey_index: None,
            port_num: None,
            qp_access_flags: None,
            path_mtu: None,
            dest_qp_num: None,
            rq_psn: None,
            sq_psn: None,
            max_rd_atomic: None,
            max_dest_rd_atomic: None,
            min_rnr_timer: None,
            timeout: None,
            retry_cnt: None,
            rnr_retry: None,
            ah_attr: None,
        }
    }

    /// The names of the attributes given.
    pub(crate) fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut add = |set: bool, name| {
            if set {
                v.push(name);
            }
        };
        add(self.pkey_index.is_some(), "pkey_index");
        add(self.port_num.is_some(), "port_num");
        add(self.qp_access_flags.is_some(), "qp_access_flags");
        add(self.path_mtu.is_some(), "path_mtu");
        add(self.dest_qp_num.is_some(), "dest_qp_num");
        add(self.rq_psn.is_some(), "rq_psn");
        add(self.sq_psn.is_some(), "sq_psn");
        add(self.max_rd_atomic.is_some(), "max_rd_atomic");
        add(self.max_dest_rd_atomic.is_some(), "max_dest_rd_atomic");
        add(self.min_rnr_timer.is_some(), "min_rnr_timer");
        add(self.timeout.is_some(), "timeout");
        add(self.retry_cnt.is_some(), "retry_cnt");
        add(self.rnr_retry.is_some(), "rnr_retry");
        add(self.ah_attr.is_some(), "ah_attr");
        v
    }
}

/// A queue pair's capacities (`ibv_qp_cap`) and completion queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpInitAttr {
    /// Where send completions go.
    pub send_cq: CqHandle,
    /// Where receive completions go.
    pub recv_cq: CqHandle,
    /// Send work requests outstanding at most.
    pub max_send_wr: u32,
    /// Receive work requests outstanding at most.
    pub max_recv_wr: u32,
    /// Scatter-gather entries per send work request.
    pub max_send_sge: u32,
    /// Scatter-gather entries per receive work request.
    pub max_recv_sge: u32,
    /// Every send work request is signaled.
    pub sq_sig_all: bool,
}

/// A scatter-gather entry: `length` bytes at `addr` in the memory region
/// whose local key is `lkey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sge {
    /// The virtual address (inside the region).
    pub addr: u64,
    /// Bytes.
    pub length: u32,
    /// The region's local key.
    pub lkey: u32,
}

/// What a send work request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrOpcode {
    /// SEND.
    Send,
    /// SEND with immediate data (host order; sent big-endian).
    SendWithImm(u32),
    /// RDMA WRITE.
    RdmaWrite {
        /// The remote address.
        remote_addr: u64,
        /// The remote key.
        rkey: u32,
    },
    /// RDMA WRITE with immediate data.
    RdmaWriteWithImm {
        /// The remote address.
        remote_addr: u64,
        /// The remote key.
        rkey: u32,
        /// Immediate data (host order).
        imm: u32,
    },
    /// RDMA READ into the scatter list.
    RdmaRead {
        /// The remote address.
        remote_addr: u64,
        /// The remote key.
        rkey: u32,
    },
    /// Compare-and-swap; the original value lands in the one 8-byte SGE.
    AtomicCmpSwp {
        /// The remote address (8-byte aligned).
        remote_addr: u64,
        /// The remote key.
        rkey: u32,
        /// The value compared.
        compare: u64,
        /// The value stored when equal.
        swap: u64,
    },
    /// Fetch-and-add; the original value lands in the one 8-byte SGE.
    AtomicFetchAdd {
        /// The remote address (8-byte aligned).
        remote_addr: u64,
        /// The remote key.
        rkey: u32,
        /// The addend.
        add: u64,
    },
}

/// A send work request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// The local buffers: gathered for SEND and WRITE, scattered into for
    /// READ and atomics.
    pub sg_list: Vec<Sge>,
    /// The operation.
    pub opcode: WrOpcode,
    /// Whether a successful completion is reported (errors always are).
    pub signaled: bool,
}

/// A receive work request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecvWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Where a received SEND is scattered.
    pub sg_list: Vec<Sge>,
}

/// How a work request ended (`enum ibv_wc_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcStatus {
    /// Success.
    Success,
    /// A received SEND was longer than the receive's buffers.
    LocLenErr,
    /// A local buffer was not accessible when the data arrived.
    LocProtErr,
    /// Flushed: the queue pair entered the error state.
    WrFlushErr,
    /// The remote end refused the request as invalid.
    RemInvReqErr,
    /// The remote end refused the access (key, permission, bounds).
    RemAccessErr,
    /// The remote end failed the operation.
    RemOpErr,
    /// No acknowledgement within the retry count.
    RetryExcErr,
    /// The remote end stayed not ready beyond the RNR retry count.
    RnrRetryExcErr,
}

/// What completed (`enum ibv_wc_opcode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcOpcode {
    /// A SEND (with or without immediate).
    Send,
    /// An RDMA WRITE.
    RdmaWrite,
    /// An RDMA READ.
    RdmaRead,
    /// A compare-and-swap.
    CompSwap,
    /// A fetch-and-add.
    FetchAdd,
    /// A receive consumed by a SEND.
    Recv,
    /// A receive consumed by an RDMA WRITE with immediate.
    RecvRdmaWithImm,
}

/// A work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The work request's id.
    pub wr_id: u64,
    /// How it ended.
    pub status: WcStatus,
    /// What it was.
    pub opcode: WcOpcode,
    /// Bytes transferred (received, read, written or sent; 8 for atomics).
    pub byte_len: u32,
    /// Immediate data (host order), for receives that carried it.
    pub imm_data: Option<u32>,
    /// The queue pair's number.
    pub qp_num: u32,
}

/// Counters of the context's frame handling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextStats {
    /// Frames handed to `handle_frame`.
    pub frames_in: u64,
    /// Frames sent by `next_frame`.
    pub frames_out: u64,
    /// Frames that are not RoCE v2 (another EtherType, protocol or port):
    /// ignored.
    pub not_roce: u64,
    /// RoCE v2 frames that failed to parse: dropped.
    pub malformed: u64,
    /// Frames for another MAC or IP address, or from an address other
    /// than the queue pair's remote end: dropped.
    pub misaddressed: u64,
    /// Frames for a queue pair number that does not exist: dropped.
    pub unknown_qp: u64,
    /// Frames for a queue pair not yet ready to receive (RESET, INIT) or
    /// in the error state: dropped.
    pub wrong_state: u64,
    /// Completions lost to a full completion queue.
    pub cq_overruns: u64,
    /// Completions put on completion queues.
    pub completions: u64,
    /// RDMA WRITE packets whose bytes were placed in a region.
    pub writes_placed: u64,
    /// The last parse error.
    pub last_parse_error: Option<ParseError>,
}

/// Why a verb failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerbsError {
    /// No such protection domain (deallocated or never allocated).
    NoSuchPd,
    /// No such memory region.
    NoSuchMr,
    /// No such completion queue.
    NoSuchCq,
    /// No such queue pair.
    NoSuchQp(u32),
    /// An object is still used by others.
    InUse {
        /// What cannot go.
        what: &'static str,
        /// By how many users.
        users: usize,
    },
    /// Access flags libibverbs refuses (unknown bits, or remote write or
    /// atomic without local write).
    BadAccess(u32),
    /// A size out of range.
    BadSize {
        /// What.
        what: &'static str,
        /// The value given.
        value: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The memory region address space is exhausted.
    OutOfAddressSpace,
    /// No queue pair number left.
    OutOfQpns,
    /// A state transition IBA does not allow.
    BadTransition {
        /// From.
        from: QpState,
        /// To.
        to: QpState,
    },
    /// A transition needs an attribute that was not given.
    MissingAttribute {
        /// The transition's target.
        to: QpState,
        /// The attribute.
        attr: &'static str,
    },
    /// An attribute the transition does not take.
    UnexpectedAttribute {
        /// The transition's target.
        to: QpState,
        /// The attribute.
        attr: &'static str,
    },
    /// An attribute value out of range.
    BadAttribute {
        /// The attribute.
        attr: &'static str,
        /// Why.
        why: &'static str,
    },
    /// Posting in a state that does not allow it.
    WrongState {
        /// The queue pair's state.
        state: QpState,
        /// What was posted.
        what: &'static str,
    },
    /// The queue is full.
    QueueFull {
        /// Which queue.
        what: &'static str,
        /// Its capacity.
        max: u32,
    },
    /// An SGE that does not lie in a region of the queue pair's protection
    /// domain with the access needed.
    BadSge {
        /// Index in the list.
        index: usize,
        /// Why.
        why: &'static str,
    },
    /// A completion queue lost completions because it was full.
    CqOverrun {
        /// Completions lost.
        lost: u64,
    },
    /// The transport refused the work request.
    Post(crate::rc::PostError),
}

impl fmt::Display for VerbsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerbsError::NoSuchPd => write!(f, "no such protection domain; allocate one with alloc_pd"),
            VerbsError::NoSuchMr => write!(f, "no such memory region; register one with reg_mr"),
            VerbsError::NoSuchCq => write!(f, "no such completion queue; create one with create_cq"),
            VerbsError::NoSuchQp(n) => write!(f, "no queue pair {n:#x}; create one with create_qp"),
            VerbsError::InUse { what, users } => write!(
                f,
                "the {what} is still used by {users} object(s) or work request(s); release them first"
            ),
            VerbsError::BadAccess(a) => write!(
                f,
                "access flags {a:#x}: only LOCAL_WRITE, REMOTE_WRITE, REMOTE_READ and REMOTE_ATOMIC exist, and remote write or atomic needs LOCAL_WRITE"
            ),
            VerbsError::BadSize { what, value, max } => {
                write!(f, "{what} of {value} is out of range (at most {max})")
            }
            VerbsError::OutOfAddressSpace => write!(
                f,
                "no memory region address space left; deregister regions first"
            ),
            VerbsError::OutOfQpns => write!(f, "no queue pair numbers left; destroy queue pairs first"),
            VerbsError::BadTransition { from, to } => write!(
                f,
                "a queue pair cannot move from {from:?} to {to:?}; follow RESET→INIT→RTR→RTS (ERR and RESET from any state)"
            ),
            VerbsError::MissingAttribute { to, attr } => {
                write!(f, "moving to {to:?} needs the {attr} attribute; give it")
            }
            VerbsError::UnexpectedAttribute { to, attr } => {
                write!(f, "moving to {to:?} does not take the {attr} attribute; leave it out")
            }
            VerbsError::BadAttribute { attr, why } => write!(f, "attribute {attr}: {why}"),
            VerbsError::WrongState { state, what } => write!(
                f,
                "cannot post a {what} to a queue pair in {state:?}; move it to RTS (sends) or INIT or later (receives) first"
            ),
            VerbsError::QueueFull { what, max } => write!(
                f,
                "the {what} queue holds {max} work requests; poll completions first"
            ),
            VerbsError::BadSge { index, why } => write!(f, "scatter-gather entry {index}: {why}"),
            VerbsError::CqOverrun { lost } => write!(
                f,
                "the completion queue overflowed and {lost} completion(s) were lost (its queue pairs are in the error state); create a larger one"
            ),
            VerbsError::Post(e) => write!(f, "{e}"),
        }
    }
}
