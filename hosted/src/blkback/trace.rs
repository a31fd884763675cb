//! Per-request timestamps of the queue workers, to see where a request's
//! time goes between the frontend's push and its response (the block
//! bench's `BLKBENCH_BREAKDOWN`). Off unless [`super::BlkbackConfig::trace`]
//! is set; when it is, each read, write or flush answered records one
//! [`BackSteps`] (refused requests and discards record nothing).
//!
//! Times are nanoseconds since the trace's epoch, an [`Instant`] the
//! caller chooses: a frontend in the same process that stamps its own
//! steps against the same epoch can line them up with these.

use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use crate::domain::lock;

/// Where one request's time went in the backend's queue worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackSteps {
    /// The request's id on the ring.
    pub id: u64,
    /// When the worker's sleep on the event channel that ended just before
    /// it took the request returned; 0 when it had not slept there since
    /// its last work (it was running or spinning).
    pub woke_ns: u64,
    /// When the request was copied off the ring.
    pub taken_ns: u64,
    /// When its I/O was queued on the io_uring (parsed, pages found,
    /// submission entries written; no system call yet).
    pub queued_ns: u64,
    /// When the `io_uring_enter` that submitted its I/O returned.
    pub submitted_ns: u64,
    /// Sleeps in `io_uring_enter` waiting for completions while its I/O
    /// was in flight (0: the worker saw the completion while spinning).
    pub uring_sleeps: u32,
    /// When the worker saw its last completion.
    pub reaped_ns: u64,
    /// When its response was published and the frontend notified (if it
    /// asked to be).
    pub pushed_ns: u64,
    /// Whether publishing it wrote the frontend's eventfd (the frontend
    /// was asleep, or about to be).
    pub wakeup_sent: bool,
}

/// A queue worker's [`BackSteps`], kept up to a capacity (the newest are
/// dropped beyond it). Shared between the backend and whoever reads it.
pub struct StepTrace {
    epoch: Instant,
    capacity: usize,
    records: Mutex<Vec<BackSteps>>,
}

impl StepTrace {
    /// A trace whose times count from `epoch`, keeping at most `capacity`
    /// records until [`StepTrace::take`] empties it.
    pub fn new(epoch: Instant, capacity: usize) -> StepTrace {
        StepTrace {
            epoch,
            capacity,
            records: Mutex::new(Vec::with_capacity(capacity.min(1 << 20))),
        }
    }

    /// The instant times count from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Nanoseconds since the epoch, now.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes the records so far, oldest first, and starts afresh.
    pub fn take(&self) -> Vec<BackSteps> {
        std::mem::take(&mut *lock(&self.records))
    }

    pub(crate) fn record(&self, s: BackSteps) {
        let mut v = lock(&self.records);
        if v.len() < self.capacity {
            v.push(s);
        }
    }
}

impl fmt::Debug for StepTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepTrace")
            .field("capacity", &self.capacity)
            .field("records", &lock(&self.records).len())
            .finish()
    }
}

/// Traces compare by identity (the configuration that holds one derives
/// equality).
impl PartialEq for StepTrace {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for StepTrace {}
