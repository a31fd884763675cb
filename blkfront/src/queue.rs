//! The submission queues: the seam where the application's I/O scheduler
//! decides which waiting I/O goes on a ring next.
//!
//! Each of the device's queues (one per ring the application asked for)
//! holds an [`iosched::Scheduler`]. Every submitted I/O goes to it
//! ([`Scheduler::submit`], with the application's scheduler queue and
//! deadline, see [`IoOptions`]); whenever the ring has room, the driver asks
//! it for a batch ([`Scheduler::build_batch`]) and puts the I/Os on the ring
//! in that order with one notification; every completion goes back to it
//! ([`Scheduler::complete`]), feeding its cost model and statistics.
//!
//! Without a scheduler of the application's, a queue runs iosched's FIFO
//! policy with one queue: I/Os go on the ring in the order they were
//! submitted. [`crate::Blkfront::set_scheduler`] installs another policy
//! (APEX, strict priority, deadline) on a queue.
//!
//! A scheduler may hold waiting I/Os back on purpose while the ring has
//! room (APEX's isolation mode); it then says when it wants the next
//! batch built ([`Scheduler::next_wakeup`]), and the driver's blocking
//! waits sleep no longer than that, so held I/Os go when the scheduler
//! means them to even if nothing completes meanwhile.
//!
//! Between the scheduler and the ring sits a short list of I/Os already
//! handed out ("ready") that wait for ring room: an I/O can need several
//! ring slots (split for the backend's maximum segments) or indirect pages,
//! and I/Os the previous connection left in flight go first on the next
//! one, in their original order, before anything new.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use iosched::{Nanos, QueueConfig, QueueId, Request, SchedConfig, Scheduler};

use crate::device::Tag;

/// Where an I/O goes and how urgent it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoOptions {
    /// The device queue (ring) it goes to, `0..Blkfront::queues()`.
    pub queue: usize,
    /// The scheduler queue inside that device queue (created on its
    /// scheduler with [`Scheduler::create_queue`]); `None`: the device
    /// queue's default scheduler queue.
    pub class: Option<QueueId>,
    /// Absolute deadline on the platform's clock, in ns, for real-time
    /// scheduler queues; `None` takes the scheduler queue's default.
    pub deadline_ns: Option<Nanos>,
}

impl IoOptions {
    /// The default scheduler queue of device queue `queue`.
    pub fn queue(queue: usize) -> Self {
        IoOptions {
            queue,
            class: None,
            deadline_ns: None,
        }
    }

    /// The same in scheduler queue `class`.
    pub fn class(mut self, class: QueueId) -> Self {
        self.class = Some(class);
        self
    }

    /// The same with an absolute deadline.
    pub fn deadline(mut self, deadline_ns: Nanos) -> Self {
        self.deadline_ns = Some(deadline_ns);
        self
    }
}

/// One device queue's submission side.
pub(crate) struct IoQueue {
    sched: Box<dyn Scheduler + Send>,
    default_class: QueueId,
    /// Tags handed out by the scheduler (or left by a lost connection),
    /// in ring order, waiting for ring room.
    ready: VecDeque<Tag>,
    /// The scheduler's batch, kept between batches (no allocation per
    /// batch once it has its usual size).
    batch: Vec<Tag>,
}

impl fmt::Debug for IoQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoQueue")
            .field("policy", &self.sched.policy_name())
            .field("pending", &self.sched.pending())
            .field("ready", &self.ready.len())
            .finish()
    }
}

impl IoQueue {
    /// A FIFO queue: I/Os go on the ring in submission order.
    pub(crate) fn fifo() -> Self {
        let mut sched = iosched::new_scheduler(iosched::PolicyKind::Fifo, SchedConfig::default());
        // A best-effort queue without reservation is always accepted.
        let default_class = sched
            .create_queue(QueueConfig::interactive(), 0)
            .unwrap_or(QueueId(0));
        IoQueue {
            sched,
            default_class,
            ready: VecDeque::new(),
            batch: Vec::new(),
        }
    }

    /// A queue run by `sched`, whose queue `default_class` takes I/Os that
    /// name none.
    pub(crate) fn with(sched: Box<dyn Scheduler + Send>, default_class: QueueId) -> Self {
        IoQueue {
            sched,
            default_class,
            ready: VecDeque::new(),
            batch: Vec::new(),
        }
    }

    pub(crate) fn default_class(&self) -> QueueId {
        self.default_class
    }

    pub(crate) fn scheduler(&self) -> &(dyn Scheduler + Send) {
        &*self.sched
    }

    pub(crate) fn scheduler_mut(&mut self) -> &mut (dyn Scheduler + Send) {
        &mut *self.sched
    }

    /// Whether anything waits (in the scheduler or for ring room).
    pub(crate) fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.sched.pending() == 0
    }

    /// I/Os waiting in the scheduler and for ring room.
    pub(crate) fn waiting(&self) -> usize {
        self.ready.len() + self.sched.pending()
    }

    pub(crate) fn submit(
        &mut self,
        request: Request,
        now: Nanos,
    ) -> Result<(), iosched::SubmitError> {
        self.sched.submit(request, now)
    }

    /// The next I/O to put on the ring, asking the scheduler for a batch
    /// of at most `room` when none is ready. Stays first until
    /// [`IoQueue::pop`].
    pub(crate) fn peek(&mut self, now: Nanos, room: usize) -> Option<Tag> {
        if self.ready.is_empty() && room > 0 && self.sched.pending() > 0 {
            self.batch.clear();
            self.sched.build_batch_into(now, room, &mut self.batch);
            self.ready.extend(self.batch.drain(..));
        }
        self.ready.front().copied()
    }

    /// When the scheduler wants a batch built although nothing may
    /// complete before then ([`Scheduler::next_wakeup`]): only while
    /// nothing handed out waits for ring room (a response frees room and
    /// wakes the driver anyway).
    pub(crate) fn next_wakeup(&self) -> Option<Nanos> {
        if self.ready.is_empty() {
            self.sched.next_wakeup()
        } else {
            None
        }
    }

    /// Removes the I/O [`IoQueue::peek`] returned.
    pub(crate) fn pop(&mut self) {
        self.ready.pop_front();
    }

    /// Puts I/Os of a lost connection first, in their order.
    pub(crate) fn requeue_front(&mut self, tags: Vec<Tag>) {
        for t in tags.into_iter().rev() {
            self.ready.push_front(t);
        }
    }

    /// Hands out everything waiting (so that it can complete) and returns
    /// it.
    pub(crate) fn drain_all(&mut self, now: Nanos) -> Vec<Tag> {
        let pending = self.sched.pending();
        if pending > 0 {
            let mut batch = Vec::new();
            self.sched.build_batch_into(now, pending, &mut batch);
            self.ready.extend(batch);
        }
        self.ready.drain(..).collect()
    }

    /// Tells the scheduler an I/O it handed out has ended.
    pub(crate) fn complete(&mut self, tag: Tag, now: Nanos) {
        if let Err(e) = self.sched.complete(tag, now) {
            log::warn!("blkfront: scheduler refused the completion of I/O {tag}: {e}");
        }
    }
}
