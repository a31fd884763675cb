//! Requests in flight on one ring, and the checks on every response.
//!
//! [`InFlight`] is a slab of shadow entries, one per ring slot: a request's
//! id is its slab index (never a pointer), and the entry remembers what was
//! sent (the operation, the segments' count, the indirect pages) and which
//! application I/O it belongs to. An I/O split into several requests
//! completes when its last request does.
//!
//! Every response is checked as Linux 6.1's hardened blkfront checks it,
//! on a copy, before anything changes:
//! - the id is below the ring's size and names a request actually in
//!   flight (a duplicate or made-up response is refused);
//! - the operation is the one sent (an indirect request's inner read or
//!   write);
//! - the status is `OKAY`, `ERROR` or `EOPNOTSUPP`.
//!
//! A violation is a [`ResponseError`]: the device is disabled (every later
//! call returns the same error) and the message says what the backend did.
//! Nothing is reported done unless the backend answered it.
//!
//! `EOPNOTSUPP` on a flush or barrier (or `ERROR` on one without data, which
//! older backends send instead), and `EOPNOTSUPP` on a discard, turn the
//! feature off ([`Completion::lost_feature`]), as Linux does; the I/O
//! completes with [`IoStatus::NotSupported`].
//!
//! When the backend goes away, [`InFlight::drain`] hands back every
//! unfinished I/O whole, in submission order, to be submitted again on the
//! next connection (to a new `InFlight` sized for that connection's ring),
//! where it is split anew for that connection's maximum segments. A write re-issued whole writes the same data to the same
//! sectors, so parts that had completed are rewritten identically: the
//! effect is neither lost nor doubled.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use grant_tables::abi::GrantRefNum;

use crate::abi::{op, status, BlkifResponse, BlkifVdev};
use crate::features::{Feature, Negotiated};
use crate::request::{BlockIo, IoError, Plan, RingRequest};

/// How a request (or a whole I/O) ended, as the backend answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IoStatus {
    /// Done (`BLKIF_RSP_OKAY`).
    Okay,
    /// The backend does not support the operation (`BLKIF_RSP_EOPNOTSUPP`).
    NotSupported,
    /// Failed (`BLKIF_RSP_ERROR`): the data is not known to be written or read.
    Error,
}

/// A response that breaks the protocol. The device is disabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// The id is not a slot of this ring.
    IdOutOfRange {
        /// The id received.
        id: u64,
        /// Ids run from 0 to this, exclusive.
        capacity: usize,
    },
    /// No request with this id is in flight (a duplicate or made-up response).
    NotInFlight {
        /// The id received.
        id: u64,
    },
    /// The operation is not the one sent.
    WrongOperation {
        /// The id.
        id: u64,
        /// The operation sent (the inner one for an indirect request).
        expected: u8,
        /// The operation received.
        got: u8,
    },
    /// The status is none of the three the protocol defines.
    UnknownStatus {
        /// The id.
        id: u64,
        /// The status received.
        status: i16,
    },
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blkfront: the backend sent a bad response (")?;
        match self {
            ResponseError::IdOutOfRange { id, capacity } => write!(
                f,
                "id {id}, but ids run from 0 to {}",
                capacity.saturating_sub(1)
            )?,
            ResponseError::NotInFlight { id } => {
                write!(f, "id {id}, which names no request in flight")?
            }
            ResponseError::WrongOperation { id, expected, got } => write!(
                f,
                "id {id} with operation {got} ({}), but {expected} ({}) was sent",
                op::name(*got),
                op::name(*expected)
            )?,
            ResponseError::UnknownStatus { id, status } => {
                write!(f, "id {id} with unknown status {status}")?
            }
        }
        write!(
            f,
            "); the backend is faulty or hostile, so the device is disabled: \
             its requests in flight are not reported done; reconnect to a new backend to \
             re-issue them"
        )
    }
}

impl core::error::Error for ResponseError {}

/// Why [`InFlight::submit`] did not take an I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The I/O itself is refused.
    Io(IoError),
    /// Not enough free slots now; retry after completions.
    NoRoom {
        /// Requests the I/O needs.
        needed: usize,
        /// Free slots.
        free: usize,
    },
    /// The I/O needs more requests than the ring has slots: it can never fit.
    TooLarge {
        /// Requests the I/O needs.
        needed: usize,
        /// Slots of the ring.
        capacity: usize,
    },
    /// Not as many indirect page refs as the I/O's plan needs.
    IndirectPages {
        /// Pages the plan needs ([`Plan::indirect_pages`]).
        needed: usize,
        /// Refs given.
        given: usize,
    },
    /// The device is disabled by an earlier bad response.
    Disabled(ResponseError),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Io(e) => e.fmt(f),
            SubmitError::NoRoom { needed, free } => write!(
                f,
                "blkfront: the I/O needs {needed} ring slots and {free} are free; \
                 wait for completions and submit it again"
            ),
            SubmitError::TooLarge { needed, capacity } => write!(
                f,
                "blkfront: the I/O needs {needed} requests but the ring has only {capacity} \
                 slots; split it into smaller I/Os"
            ),
            SubmitError::IndirectPages { needed, given } => write!(
                f,
                "blkfront: the I/O needs {needed} indirect pages, {given} grant refs given; \
                 pass exactly Plan::indirect_pages() refs"
            ),
            SubmitError::Disabled(e) => write!(f, "blkfront: device disabled: {e}"),
        }
    }
}

impl core::error::Error for SubmitError {}

/// An I/O [`InFlight::submit`] refused, handed back with its indirect page
/// refs (nothing of it reached the ring).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The I/O, unchanged.
    pub io: BlockIo,
    /// The indirect page refs given, unused.
    pub indirect_grefs: Vec<GrantRefNum>,
    /// Why.
    pub error: SubmitError,
}

/// An application I/O that has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    /// The I/O as submitted (its segments' refs can now be ended or reused).
    pub io: BlockIo,
    /// The worst status of its requests.
    pub status: IoStatus,
}

/// What one valid response did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The request's indirect page refs, free again.
    pub indirect_grefs: Vec<GrantRefNum>,
    /// A feature the backend turned out not to support: the caller stops
    /// using it ([`Negotiated::disable`]).
    pub lost_feature: Option<Feature>,
    /// The application I/O, if this was its last outstanding request.
    pub done: Option<Done>,
}

/// Everything in flight when the connection ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Unfinished I/Os, whole, in submission order: submit them again on
    /// the next connection.
    pub ios: Vec<BlockIo>,
    /// The indirect page refs their requests held.
    pub indirect_grefs: Vec<GrantRefNum>,
}

/// What a slab slot remembers of a request on the ring.
#[derive(Clone, Debug)]
struct Shadow {
    /// Index of its I/O in `ios`.
    io: usize,
    /// The operation its response must carry.
    response_op: u8,
    /// Data segments it carries.
    nr_segments: usize,
    /// Its indirect pages.
    indirect_grefs: Vec<GrantRefNum>,
}

#[derive(Clone, Debug)]
struct IoState {
    io: BlockIo,
    seq: u64,
    outstanding: usize,
    status: IoStatus,
}

/// The requests in flight on one ring.
#[derive(Debug)]
pub struct InFlight {
    handle: BlkifVdev,
    shadows: Vec<Option<Shadow>>,
    /// Free ids, oldest-freed first: an id is reused as late as possible,
    /// so a stale duplicate response most likely names a free id.
    free_ids: VecDeque<usize>,
    ios: Vec<Option<IoState>>,
    free_ios: Vec<usize>,
    next_seq: u64,
    broken: Option<ResponseError>,
    /// The ids of the submission under way (kept to be reused).
    scratch_ids: Vec<u64>,
}

impl InFlight {
    /// A tracker for a ring of `capacity` slots (the ring's size), sending
    /// `handle` (the `virtual-device` number) in every request.
    pub fn new(capacity: usize, handle: BlkifVdev) -> Self {
        InFlight {
            handle,
            shadows: (0..capacity).map(|_| None).collect(),
            free_ids: (0..capacity).collect(),
            ios: (0..capacity).map(|_| None).collect(),
            free_ios: (0..capacity).rev().collect(),
            next_seq: 0,
            broken: None,
            scratch_ids: Vec::new(),
        }
    }

    /// Slots (ids) of the ring.
    pub fn capacity(&self) -> usize {
        self.shadows.len()
    }

    /// Requests on the ring, awaiting a response.
    pub fn in_flight(&self) -> usize {
        self.capacity() - self.free_ids.len()
    }

    /// Free slots.
    pub fn free(&self) -> usize {
        self.free_ids.len()
    }

    /// Application I/Os not yet done.
    pub fn pending_ios(&self) -> usize {
        self.ios.len() - self.free_ios.len()
    }

    /// The error that disabled the device, if one did.
    pub fn broken(&self) -> Option<&ResponseError> {
        self.broken.as_ref()
    }

    /// Checks and splits `io` for `dev`, gives each request a free id, and
    /// returns the requests to put on the ring, in order (after writing
    /// their indirect pages). `indirect_grefs` are the refs of zeroed pages
    /// granted to the backend, exactly [`Plan::indirect_pages`] of them.
    /// All or nothing: a refused I/O comes back in [`Rejected`].
    pub fn submit(
        &mut self,
        io: BlockIo,
        dev: &Negotiated,
        indirect_grefs: Vec<GrantRefNum>,
    ) -> Result<Vec<RingRequest>, Rejected> {
        match Plan::new(&io, dev) {
            Ok(plan) => self.submit_planned(io, &plan, indirect_grefs),
            // A disabled device says so before what is wrong with the I/O.
            Err(e) => Err(Rejected {
                io,
                indirect_grefs,
                error: match &self.broken {
                    Some(b) => SubmitError::Disabled(b.clone()),
                    None => SubmitError::Io(e),
                },
            }),
        }
    }

    /// [`InFlight::submit`] with `io`'s plan made already (by
    /// [`Plan::new`] for `io` and the connection's [`Negotiated`]: the
    /// caller vouches for it; a plan of another I/O would put wrong
    /// requests on the ring).
    pub(crate) fn submit_planned(
        &mut self,
        io: BlockIo,
        plan: &Plan,
        indirect_grefs: Vec<GrantRefNum>,
    ) -> Result<Vec<RingRequest>, Rejected> {
        let reject = |io, indirect_grefs, error| {
            Err(Rejected {
                io,
                indirect_grefs,
                error,
            })
        };
        if let Some(e) = &self.broken {
            return reject(io, indirect_grefs, SubmitError::Disabled(e.clone()));
        }
        let needed = plan.parts().len();
        if needed > self.capacity() {
            let capacity = self.capacity();
            return reject(
                io,
                indirect_grefs,
                SubmitError::TooLarge { needed, capacity },
            );
        }
        if needed > self.free_ids.len() || self.free_ios.is_empty() {
            let free = self.free_ids.len();
            return reject(io, indirect_grefs, SubmitError::NoRoom { needed, free });
        }
        if indirect_grefs.len() != plan.indirect_pages() {
            let e = SubmitError::IndirectPages {
                needed: plan.indirect_pages(),
                given: indirect_grefs.len(),
            };
            return reject(io, indirect_grefs, e);
        }

        // Checked above: enough ids and an I/O slot.
        let Some(io_index) = self.free_ios.pop() else {
            let free = self.free_ids.len();
            return reject(io, indirect_grefs, SubmitError::NoRoom { needed, free });
        };
        // The ids in a buffer kept from one submission to the next.
        let mut ids = core::mem::take(&mut self.scratch_ids);
        ids.clear();
        ids.extend(self.free_ids.drain(..needed).map(|i| i as u64));
        let requests = plan.encode(io.op.segments(), self.handle, &ids, &indirect_grefs);
        for ((&id, part), req) in ids.iter().zip(plan.parts()).zip(&requests) {
            let id = id as usize;
            let shadow = Shadow {
                io: io_index,
                response_op: part.response_op(),
                nr_segments: part.nr_segments,
                indirect_grefs: req.indirect_pages.iter().map(|p| p.gref).collect(),
            };
            if let Some(slot) = self.shadows.get_mut(id) {
                *slot = Some(shadow);
            }
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        if let Some(slot) = self.ios.get_mut(io_index) {
            *slot = Some(IoState {
                io,
                seq,
                outstanding: needed,
                status: IoStatus::Okay,
            });
        }
        self.scratch_ids = ids;
        Ok(requests)
    }

    fn fail(&mut self, e: ResponseError) -> Result<Completion, ResponseError> {
        log::error!("{e}");
        self.broken = Some(e.clone());
        Err(e)
    }

    /// Checks a response (a copy taken from the ring) and completes its
    /// request. A response that breaks the protocol disables the device.
    pub fn complete(&mut self, rsp: &BlkifResponse) -> Result<Completion, ResponseError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let id = rsp.id;
        let capacity = self.capacity();
        let index = match usize::try_from(id) {
            Ok(i) if i < capacity => i,
            _ => return self.fail(ResponseError::IdOutOfRange { id, capacity }),
        };
        let (response_op, nr_segments) = match self.shadows.get(index) {
            Some(Some(s)) => (s.response_op, s.nr_segments),
            _ => return self.fail(ResponseError::NotInFlight { id }),
        };
        if rsp.operation != response_op {
            return self.fail(ResponseError::WrongOperation {
                id,
                expected: response_op,
                got: rsp.operation,
            });
        }
        let mut st = match rsp.status {
            status::OKAY => IoStatus::Okay,
            status::ERROR => IoStatus::Error,
            status::EOPNOTSUPP => IoStatus::NotSupported,
            s => return self.fail(ResponseError::UnknownStatus { id, status: s }),
        };

        // Valid: release the slot.
        let Some(shadow) = self.shadows.get_mut(index).and_then(Option::take) else {
            return self.fail(ResponseError::NotInFlight { id });
        };
        self.free_ids.push_back(index);

        let lost_feature = match response_op {
            op::FLUSH_DISKCACHE | op::WRITE_BARRIER
                if st == IoStatus::NotSupported || (st == IoStatus::Error && nr_segments == 0) =>
            {
                st = IoStatus::NotSupported;
                Some(if response_op == op::FLUSH_DISKCACHE {
                    Feature::FlushCache
                } else {
                    Feature::Barrier
                })
            }
            op::DISCARD if st == IoStatus::NotSupported => Some(Feature::Discard),
            _ => None,
        };
        if let Some(f) = lost_feature {
            log::warn!(
                "blkfront: the backend does not support {} requests; {:?} turned off",
                op::name(response_op),
                f
            );
        }

        let mut done = None;
        if let Some(slot) = self.ios.get_mut(shadow.io) {
            if let Some(state) = slot {
                state.status = state.status.max(st);
                state.outstanding = state.outstanding.saturating_sub(1);
                if state.outstanding == 0 {
                    if let Some(state) = slot.take() {
                        self.free_ios.push(shadow.io);
                        done = Some(Done {
                            io: state.io,
                            status: state.status,
                        });
                    }
                }
            }
        }
        Ok(Completion {
            indirect_grefs: shadow.indirect_grefs,
            lost_feature,
            done,
        })
    }

    /// Ends the connection's requests: every unfinished I/O comes back
    /// whole, in submission order, with the indirect page refs its requests
    /// held, and every slot is free again. A disabled device stays disabled.
    pub fn drain(&mut self) -> Drained {
        let mut indirect_grefs = Vec::new();
        for s in self.shadows.iter_mut() {
            if let Some(s) = s.take() {
                indirect_grefs.extend(s.indirect_grefs);
            }
        }
        let mut states: Vec<IoState> = self.ios.iter_mut().filter_map(Option::take).collect();
        states.sort_unstable_by_key(|s| s.seq);
        let capacity = self.capacity();
        self.free_ids = (0..capacity).collect();
        self.free_ios = (0..capacity).rev().collect();
        Drained {
            ios: states.into_iter().map(|s| s.io).collect(),
            indirect_grefs,
        }
    }
}
