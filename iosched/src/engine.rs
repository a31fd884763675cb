//! What every policy shares: the queues, the tags, the token buckets, the
//! cost model and the statistics. A policy only decides which waiting
//! request goes next; [`Sched`] does the bookkeeping around it, so that the
//! rules on bad input are the same for all of them.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::cost::CostModel;
use crate::stats::QueueStats;
use crate::tags::TagTable;
use crate::{
    Class, Completion, Error, Nanos, Op, Pass, QueueConfig, QueueId, QueueView, Removal, Request,
    SchedConfig, Scheduler, SubmitError, NS_PER_SEC,
};

/// A waiting request as the policies see it.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// The caller's tag.
    pub tag: u64,
    /// Its queue.
    pub queue: QueueId,
    /// Operation.
    pub op: Op,
    /// Start sector (for policies that batch sequential requests).
    pub sector: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// When it was submitted.
    pub arrival: Nanos,
    /// Absolute deadline (the request's own, or arrival plus its queue's
    /// default).
    pub deadline: Option<Nanos>,
    /// Submission order, unique.
    pub seq: u64,
    /// A policy's own mark, handed back at completion.
    pub lane: u8,
}

/// A completed request, as [`Policy::observed`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    /// Its queue.
    pub queue: QueueId,
    /// Its queue's class (when the queue still exists).
    pub class: Option<Class>,
    /// When it was submitted.
    pub arrival: Nanos,
    /// When it went on the ring.
    pub dispatched: Nanos,
    /// When it completed.
    pub now: Nanos,
    /// Its absolute deadline.
    pub deadline: Option<Nanos>,
    /// Its estimated cost (units).
    pub cost: u64,
}

/// A token bucket in cost units. Invariant: `-depth <= tokens <= depth`.
#[derive(Clone, Debug)]
pub struct Bucket {
    tokens: i64,
    depth: i64,
    rate: u64,
    last: Nanos,
    /// Fractional tokens carried over, in units * 10^-9.
    rem: u64,
}

impl Bucket {
    fn new(rate: u64, depth: u64, now: Nanos) -> Self {
        // Depth is validated to at most MAX_DEPTH, far below i64::MAX.
        let depth = depth.min(i64::MAX as u64 / 2) as i64;
        Self {
            tokens: depth,
            depth,
            rate,
            last: now,
            rem: 0,
        }
    }

    /// Adds the tokens earned since the last refill, up to the depth;
    /// returns how many the rate offered (including what overflowed).
    pub fn refill(&mut self, now: Nanos) -> u64 {
        if now <= self.last {
            return 0;
        }
        let dt = now - self.last;
        self.last = now;
        if self.rate == 0 {
            return 0;
        }
        let total = self.rate as u128 * dt as u128 + self.rem as u128;
        let add = total / NS_PER_SEC as u128;
        self.rem = (total % NS_PER_SEC as u128) as u64;
        let offered = add.min(u64::MAX as u128) as u64;
        let room = (self.depth - self.tokens).max(0) as u128;
        let add = add.min(room) as i64;
        if self.tokens + add >= self.depth {
            self.rem = 0;
        }
        self.tokens += add;
        offered
    }

    /// Spends `cost` tokens, going negative at most to `-depth`; returns how
    /// many were actually taken.
    pub fn spend(&mut self, cost: u64) -> u64 {
        let cost = cost.min(i64::MAX as u64 / 4) as i64;
        let after = (self.tokens - cost).max(-self.depth);
        let spent = self.tokens - after;
        self.tokens = after;
        spent.max(0) as u64
    }

    /// Whether the bucket holds at least `cost` tokens.
    pub fn covers(&self, cost: u64) -> bool {
        self.tokens >= 0 && self.tokens as u64 >= cost
    }

    /// Current tokens.
    pub fn tokens(&self) -> i64 {
        self.tokens
    }

    /// The floor (`-depth`).
    pub fn floor(&self) -> i64 {
        -self.depth
    }

    /// The depth.
    pub fn depth(&self) -> i64 {
        self.depth
    }

    fn reconfigure(&mut self, rate: u64, depth: u64, now: Nanos) {
        self.refill(now);
        self.rate = rate;
        self.depth = depth.min(i64::MAX as u64 / 2) as i64;
        self.tokens = self.tokens.clamp(-self.depth, self.depth);
        self.rem = 0;
    }
}

/// A queue's state.
#[derive(Clone, Debug)]
pub struct QueueState {
    /// Its configuration.
    pub config: QueueConfig,
    /// Its statistics.
    pub stats: QueueStats,
    /// Its reservation.
    pub bucket: Bucket,
    /// Requests waiting.
    pub pending: usize,
    /// Requests dispatched and not completed.
    pub in_flight: usize,
    /// Removed: serves what it holds, takes nothing new.
    pub draining: bool,
    /// Its last submission or completion (`None`: none yet).
    pub last_active: Option<Nanos>,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    queue: QueueId,
    op: Op,
    bytes: u64,
    arrival: Nanos,
    deadline: Option<Nanos>,
    cost: u64,
    stamp: u128,
    lane: u8,
    /// When it went on the ring.
    dispatched: Nanos,
    /// Estimated work in flight then, itself included.
    ahead: u64,
}

#[derive(Clone, Copy, Debug)]
enum TagState {
    Pending(QueueId),
    InFlight(InFlight),
}

/// The shared state a policy works on.
#[derive(Clone, Debug)]
pub struct Core {
    /// The queues.
    pub queues: BTreeMap<QueueId, QueueState>,
    tags: TagTable<TagState>,
    /// The cost model.
    pub cost: CostModel,
    next_queue: u32,
    seq: u64,
    now: Nanos,
    pending: usize,
    in_flight: usize,
    /// Sum of the estimated costs of the requests in flight (units).
    pub inflight_cost: u64,
    config: SchedConfig,
}

impl Core {
    fn new(config: SchedConfig) -> Self {
        Self {
            queues: BTreeMap::new(),
            tags: TagTable::new(),
            cost: CostModel::new(config.cost),
            next_queue: 0,
            seq: 0,
            now: 0,
            pending: 0,
            in_flight: 0,
            inflight_cost: 0,
            config,
        }
    }

    /// Time never goes backwards inside the scheduler: an earlier `now` than
    /// the last one seen is taken as the last one.
    fn advance(&mut self, now: Nanos) -> Nanos {
        self.now = self.now.max(now);
        self.now
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Refills every bucket to `now`, counting the grants in the stats.
    pub fn refill_all(&mut self, now: Nanos) {
        for q in self.queues.values_mut() {
            let g = q.bucket.refill(now);
            q.stats.tokens_offered = q.stats.tokens_offered.saturating_add(g);
        }
    }

    /// Spends `cost` tokens of `queue`'s bucket, counting them.
    pub fn spend(&mut self, queue: QueueId, cost: u64) {
        if let Some(q) = self.queues.get_mut(&queue) {
            let s = q.bucket.spend(cost);
            q.stats.tokens_spent = q.stats.tokens_spent.saturating_add(s);
        }
    }

    /// Whether `queue`'s bucket covers `cost`.
    pub fn covers(&self, queue: QueueId, cost: u64) -> bool {
        self.queues
            .get(&queue)
            .is_some_and(|q| q.bucket.covers(cost))
    }

    /// Estimated cost of an entry.
    pub fn cost_of(&self, e: &Entry) -> u64 {
        self.cost.estimate(e.op, e.bytes)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A scheduling policy: decides which waiting requests go next. Implemented
/// by the four policies of this crate only; use them through [`Sched`] and
/// the [`Scheduler`] trait.
pub trait Policy: sealed::Sealed {
    /// Short name (`apex`, `fifo`, `prio`, `deadline`).
    fn name(&self) -> &'static str;
    /// Admission control for a new or changed queue (`replacing` is the queue
    /// being changed).
    fn admit(
        &self,
        _core: &Core,
        _replacing: Option<QueueId>,
        _config: &QueueConfig,
    ) -> Result<(), Error> {
        Ok(())
    }
    /// A queue was created.
    fn queue_added(&mut self, _core: &Core, _queue: QueueId) {}
    /// A queue's configuration changed (its pending requests may need new
    /// places).
    fn queue_changed(&mut self, _core: &Core, _queue: QueueId, _old: &QueueConfig) {}
    /// A queue is gone (it held no requests).
    fn queue_removed(&mut self, _queue: QueueId) {}
    /// A request arrives.
    fn enqueue(&mut self, core: &Core, entry: Entry);
    /// Takes up to `room` waiting requests, in ring order, into `out`.
    fn select(&mut self, core: &mut Core, now: Nanos, room: usize, out: &mut Vec<(Entry, Pass)>);
    /// A request of `bytes` dispatched with `lane` completed or was
    /// cancelled.
    fn completed(&mut self, _lane: u8, _bytes: u64) {}
    /// A request completed (not called for cancellations): what it took,
    /// for policies that learn from latencies.
    fn observed(&mut self, _core: &Core, _done: &Done) {}
    /// The best-effort throttle's state, for a policy that has one.
    fn throttle_state(&self) -> Option<crate::ThrottleState> {
        None
    }
    /// Adaptive isolation's state, for a policy that has it.
    fn adaptive_window(&self) -> Option<crate::AdaptiveState> {
        None
    }
    /// When the last batch held waiting work back on purpose while the
    /// ring had room: the time a batch should be built again (see
    /// [`Scheduler::next_wakeup`]).
    fn next_wakeup(&self) -> Option<Nanos> {
        None
    }
    /// Takes the waiting request `tag` of `queue` out.
    fn remove(&mut self, queue: QueueId, tag: u64) -> Option<Entry>;
}

impl sealed::Sealed for crate::apex::ApexPolicy {}
impl sealed::Sealed for crate::fifo::FifoPolicy {}
impl sealed::Sealed for crate::prio::PrioPolicy {}
impl sealed::Sealed for crate::deadline::DeadlinePolicy {}

/// A scheduler: the shared bookkeeping around one policy. One instance
/// serves one ring (see the crate docs for several rings).
#[derive(Clone, Debug)]
pub struct Sched<P: Policy> {
    core: Core,
    policy: P,
    scratch: Vec<(Entry, Pass)>,
}

impl<P: Policy> Sched<P> {
    /// A scheduler with `policy`.
    pub fn new(config: SchedConfig, policy: P) -> Self {
        Self {
            core: Core::new(config),
            policy,
            scratch: Vec::new(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    fn drop_queue_if_done(&mut self, queue: QueueId) -> bool {
        let done = self
            .core
            .queues
            .get(&queue)
            .is_some_and(|q| q.draining && q.pending == 0 && q.in_flight == 0);
        if done {
            self.core.queues.remove(&queue);
            self.policy.queue_removed(queue);
            log::debug!("iosched: queue {} drained and removed", queue.0);
        }
        done
    }
}

impl<P: Policy> Scheduler for Sched<P> {
    fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    fn create_queue(&mut self, config: QueueConfig, now: Nanos) -> Result<QueueId, Error> {
        let now = self.core.advance(now);
        config.validate()?;
        if self.core.queues.len() >= self.core.config.max_queues {
            return Err(Error::TooManyQueues {
                limit: self.core.config.max_queues,
            });
        }
        self.policy.admit(&self.core, None, &config)?;
        // Ids are not reused while a queue with the same id lives.
        let mut id = QueueId(self.core.next_queue);
        while self.core.queues.contains_key(&id) {
            id = QueueId(id.0.wrapping_add(1));
        }
        self.core.next_queue = id.0.wrapping_add(1);
        let bucket = Bucket::new(
            config.reservation.rate_per_sec,
            config.reservation.depth,
            now,
        );
        self.core.queues.insert(
            id,
            QueueState {
                config,
                stats: QueueStats::default(),
                bucket,
                pending: 0,
                in_flight: 0,
                draining: false,
                last_active: None,
            },
        );
        self.policy.queue_added(&self.core, id);
        Ok(id)
    }

    fn change_queue(
        &mut self,
        queue: QueueId,
        config: QueueConfig,
        now: Nanos,
    ) -> Result<(), Error> {
        let now = self.core.advance(now);
        config.validate()?;
        match self.core.queues.get(&queue) {
            None => return Err(Error::UnknownQueue(queue)),
            Some(q) if q.draining => return Err(Error::QueueDraining(queue)),
            Some(_) => {}
        }
        self.policy.admit(&self.core, Some(queue), &config)?;
        let Some(q) = self.core.queues.get_mut(&queue) else {
            return Err(Error::UnknownQueue(queue));
        };
        let granted = q.bucket.refill(now);
        q.stats.tokens_offered = q.stats.tokens_offered.saturating_add(granted);
        q.bucket.reconfigure(
            config.reservation.rate_per_sec,
            config.reservation.depth,
            now,
        );
        let old = core::mem::replace(&mut q.config, config);
        self.policy.queue_changed(&self.core, queue, &old);
        Ok(())
    }

    fn remove_queue(&mut self, queue: QueueId, now: Nanos) -> Result<Removal, Error> {
        self.core.advance(now);
        let Some(q) = self.core.queues.get_mut(&queue) else {
            return Err(Error::UnknownQueue(queue));
        };
        q.draining = true;
        let (pending, in_flight) = (q.pending, q.in_flight);
        if self.drop_queue_if_done(queue) {
            Ok(Removal::Removed)
        } else {
            Ok(Removal::Draining { pending, in_flight })
        }
    }

    fn submit(&mut self, request: Request, now: Nanos) -> Result<(), SubmitError> {
        let now = self.core.advance(now);
        let refuse = |error| Err(SubmitError { error, request });
        let default_deadline = match self.core.queues.get(&request.queue) {
            None => return refuse(Error::UnknownQueue(request.queue)),
            Some(q) if q.draining => return refuse(Error::QueueDraining(request.queue)),
            Some(q) => q.config.deadline_ns,
        };
        if self.core.tags.contains(request.tag) {
            return refuse(Error::DuplicateTag(request.tag));
        }
        let limit = self.core.config.max_requests;
        if self.core.pending + self.core.in_flight >= limit {
            return refuse(Error::TooManyRequests { limit });
        }
        // A deadline already past is kept as given: the request is as urgent
        // as can be and counts as a miss if it completes late.
        let deadline = request
            .deadline
            .or_else(|| default_deadline.map(|d| now.saturating_add(d)));
        let seq = self.core.seq;
        self.core.seq += 1;
        let entry = Entry {
            tag: request.tag,
            queue: request.queue,
            op: request.op,
            sector: request.sector,
            bytes: request.bytes,
            arrival: now,
            deadline,
            seq,
            lane: 0,
        };
        self.core
            .tags
            .insert_new(request.tag, TagState::Pending(request.queue));
        self.core.pending += 1;
        if let Some(q) = self.core.queues.get_mut(&request.queue) {
            q.pending += 1;
            q.stats.submitted = q.stats.submitted.saturating_add(1);
            q.last_active = Some(now);
        }
        self.policy.enqueue(&self.core, entry);
        Ok(())
    }

    fn build_batch_into(&mut self, now: Nanos, ring_room: usize, out: &mut Vec<u64>) -> usize {
        let now = self.core.advance(now);
        let room = ring_room.min(self.core.pending);
        if room == 0 {
            return 0;
        }
        let mut picked = core::mem::take(&mut self.scratch);
        picked.clear();
        self.policy.select(&mut self.core, now, room, &mut picked);
        debug_assert!(picked.len() <= room);
        // The virtual clock runs at the old load until now.
        self.core.cost.tick(now, self.core.in_flight);
        let stamp = self.core.cost.stamp();
        let mut n = 0;
        for (e, pass) in picked.drain(..) {
            let cost = self.core.cost_of(&e);
            let Some(q) = self.core.queues.get_mut(&e.queue) else {
                // Policies only hold requests of live queues; a queue is
                // dropped only when it holds none. Keep going rather than
                // lose the request.
                log::error!(
                    "iosched: request {:#x} of unknown queue {} dispatched",
                    e.tag,
                    e.queue.0
                );
                continue;
            };
            q.pending = q.pending.saturating_sub(1);
            q.in_flight += 1;
            q.stats.dispatched = q.stats.dispatched.saturating_add(1);
            let c = match pass {
                Pass::Urgent => &mut q.stats.dispatched_urgent,
                Pass::Reserved => &mut q.stats.dispatched_reserved,
                Pass::Other => &mut q.stats.dispatched_other,
            };
            *c = c.saturating_add(1);
            self.core.pending = self.core.pending.saturating_sub(1);
            self.core.in_flight += 1;
            self.core.inflight_cost = self.core.inflight_cost.saturating_add(cost);
            let flight = TagState::InFlight(InFlight {
                queue: e.queue,
                op: e.op,
                bytes: e.bytes,
                arrival: e.arrival,
                deadline: e.deadline,
                cost,
                stamp,
                lane: e.lane,
                dispatched: now,
                ahead: self.core.inflight_cost,
            });
            match self.core.tags.get_mut(e.tag) {
                Some(t) => *t = flight,
                // Every waiting request has its tag in the table.
                None => self.core.tags.insert_new(e.tag, flight),
            }
            out.push(e.tag);
            n += 1;
        }
        self.scratch = picked;
        n
    }

    fn complete(&mut self, tag: u64, now: Nanos) -> Result<Completion, Error> {
        let now = self.core.advance(now);
        let f = match self.core.tags.get(tag).copied() {
            None => return Err(Error::UnknownTag(tag)),
            Some(TagState::Pending(_)) => return Err(Error::NotDispatched(tag)),
            Some(TagState::InFlight(f)) => f,
        };
        self.core.tags.remove(tag);
        let mut drained = false;
        self.core.cost.tick(now, self.core.in_flight);
        self.core.cost.complete(f.op, f.bytes, f.stamp);
        self.core.in_flight = self.core.in_flight.saturating_sub(1);
        self.core.inflight_cost = self.core.inflight_cost.saturating_sub(f.cost);
        self.policy.completed(f.lane, f.bytes);
        let latency_ns = now.saturating_sub(f.arrival);
        let lateness_ns = f.deadline.and_then(|d| (now > d).then(|| now - d));
        let mut real_time = false;
        let mut class = None;
        if let Some(q) = self.core.queues.get_mut(&f.queue) {
            real_time = q.config.class == Class::RealTime;
            class = Some(q.config.class);
            q.in_flight = q.in_flight.saturating_sub(1);
            q.last_active = Some(now);
            let s = &mut q.stats;
            s.completed = s.completed.saturating_add(1);
            s.bytes = s.bytes.saturating_add(f.bytes);
            s.latency.record(latency_ns);
            if f.deadline.is_some() {
                s.with_deadline = s.with_deadline.saturating_add(1);
            }
            if let Some(late) = lateness_ns {
                s.deadline_misses = s.deadline_misses.saturating_add(1);
                s.lateness_total_ns = s.lateness_total_ns.saturating_add(late);
                s.lateness_max_ns = s.lateness_max_ns.max(late);
            }
            drained = q.draining && q.pending == 0 && q.in_flight == 0;
        }
        // The drain line learns from the requests whose latency it protects.
        if real_time {
            self.core
                .cost
                .observe_drain(f.ahead, now.saturating_sub(f.dispatched));
        }
        let done = Done {
            queue: f.queue,
            class,
            arrival: f.arrival,
            dispatched: f.dispatched,
            now,
            deadline: f.deadline,
            cost: f.cost,
        };
        self.policy.observed(&self.core, &done);
        // Only a draining queue can go (one lookup per completion otherwise).
        let queue_removed = drained && self.drop_queue_if_done(f.queue);
        Ok(Completion {
            queue: f.queue,
            latency_ns,
            lateness_ns,
            queue_removed,
        })
    }

    fn cancel(&mut self, tag: u64, now: Nanos) -> Result<QueueId, Error> {
        let now = self.core.advance(now);
        let queue = match self.core.tags.get(tag).copied() {
            None => return Err(Error::UnknownTag(tag)),
            Some(TagState::Pending(queue)) => {
                let Some(e) = self.policy.remove(queue, tag) else {
                    // The policy lost track of it: cannot happen; keep the
                    // books as they are rather than guess.
                    log::error!("iosched: waiting request {tag:#x} not found by the policy");
                    return Err(Error::UnknownTag(tag));
                };
                self.core.tags.remove(tag);
                self.core.pending = self.core.pending.saturating_sub(1);
                if let Some(q) = self.core.queues.get_mut(&e.queue) {
                    q.pending = q.pending.saturating_sub(1);
                    q.stats.cancelled = q.stats.cancelled.saturating_add(1);
                }
                e.queue
            }
            Some(TagState::InFlight(f)) => {
                // Keep the virtual clock right for the others in flight.
                self.core.cost.tick(now, self.core.in_flight);
                self.core.tags.remove(tag);
                self.core.in_flight = self.core.in_flight.saturating_sub(1);
                self.core.inflight_cost = self.core.inflight_cost.saturating_sub(f.cost);
                self.policy.completed(f.lane, f.bytes);
                if let Some(q) = self.core.queues.get_mut(&f.queue) {
                    q.in_flight = q.in_flight.saturating_sub(1);
                    q.stats.cancelled = q.stats.cancelled.saturating_add(1);
                }
                f.queue
            }
        };
        self.drop_queue_if_done(queue);
        Ok(queue)
    }

    fn pending(&self) -> usize {
        self.core.pending
    }

    fn in_flight(&self) -> usize {
        self.core.in_flight
    }

    fn queue(&self, queue: QueueId) -> Option<QueueView<'_>> {
        self.core.queues.get(&queue).map(|q| QueueView {
            config: &q.config,
            stats: &q.stats,
            tokens: q.bucket.tokens(),
            token_floor: q.bucket.floor(),
            pending: q.pending,
            in_flight: q.in_flight,
            draining: q.draining,
        })
    }

    fn queue_ids(&self) -> Vec<QueueId> {
        self.core.queues.keys().copied().collect()
    }

    fn cost_model(&self) -> &CostModel {
        &self.core.cost
    }

    fn throttle(&self) -> Option<crate::ThrottleState> {
        self.policy.throttle_state()
    }

    fn adaptive(&self) -> Option<crate::AdaptiveState> {
        self.policy.adaptive_window()
    }

    fn next_wakeup(&self) -> Option<Nanos> {
        if self.core.pending == 0 {
            return None;
        }
        self.policy.next_wakeup()
    }
}

/// Rank of a class: 0 is served first.
pub(crate) fn rank(c: Class) -> usize {
    match c {
        Class::RealTime => 0,
        Class::Interactive => 1,
        Class::Background => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_to_depth_and_spends_to_floor() {
        let mut b = Bucket::new(1_000_000, 5000, 0);
        assert_eq!(b.tokens(), 5000);
        assert_eq!(b.spend(4000), 4000);
        assert_eq!(b.refill(1_000_000), 1000); // 1 ms at 10^6 units/s
        assert_eq!(b.tokens(), 2000);
        // 999 ms offer 999 000 tokens; the bucket keeps its depth.
        assert_eq!(b.refill(1_000_000_000), 999_000);
        assert_eq!(b.tokens(), 5000);
        assert_eq!(b.spend(20_000), 10_000); // down to the floor only
        assert_eq!(b.tokens(), -5000);
        assert!(!b.covers(1));
        // Fractions add up.
        let mut b = Bucket::new(3, 100, 0);
        b.spend(100);
        let mut got = 0;
        for t in 1..=1000u64 {
            got += b.refill(t * 1_000_000);
        }
        assert_eq!(got, 3);
        // Time going backwards earns nothing.
        assert_eq!(b.refill(5), 0);
    }
}
