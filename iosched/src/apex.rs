//! APEX: service classes, reservations and deadlines, batch by batch.
//!
//! APEX (Lund and Goebel, "Adaptive disk scheduling in a multimedia DBMS",
//! ACM Multimedia 2003; Lund's doctoral thesis; Jacobsen's implementation in
//! Linux, University of Oslo, 2007) schedules a disk for applications that
//! mix streams with deadlines and best-effort work. Each application queue
//! has a service class and a reservation, and the scheduler builds one batch
//! at a time: first what would otherwise miss its deadline, then what the
//! reservations pay for, then, so the disk never idles while work waits,
//! anything else. This module is that design, written for a paravirtual
//! block ring.
//!
//! # Queues
//! The application creates queues at run time. Each has
//! - a class: *real-time* (every request has a deadline; earliest deadline
//!   first inside the queue), *interactive* or *background* (best effort,
//!   first in first out inside the queue);
//! - a reservation: a token bucket of `rate_per_sec` units per second and
//!   `depth` units, where a unit is a nanosecond of device time
//!   ([`crate::cost`]); a new bucket starts full;
//! - a default relative deadline, given to requests that bring none
//!   (required for real-time queues; for the others it only counts misses).
//!
//! **Admission control.** A real-time queue (or a change to one) is refused
//! when the real-time reservations together would exceed
//! [`ApexParams::rt_share_permille`] of the measured capacity
//! ([`crate::CostModel::capacity_per_sec`]). Best-effort reservations are
//! not admitted against anything: they only order best-effort work.
//!
//! # The batch builder
//! [`crate::Scheduler::build_batch`] runs whenever the ring has room. With
//! `W` the estimated work already on the ring (the sum of the in-flight
//! requests' costs) and `B` the work taken into this batch so far:
//! 1. **Refill** every bucket for the time since the last batch, up to its
//!    depth.
//! 2. **Urgent pass.** Real-time requests in deadline order, across all
//!    real-time queues: a request is urgent when waiting for the next batch
//!    would make it late, i.e. when its deadline is before
//!    `now + drain(W + B + gap + cost) + margin`, where `gap` is the work
//!    of one in-flight request on average (the next batch is built at the
//!    next completion), `drain` the cost model's drain line (how long that
//!    much work in flight takes to complete, see below) and `margin`
//!    [`ApexParams::urgency_margin_ns`]. Urgent requests are taken whatever
//!    their tokens; their bucket pays and may go below zero, down to its
//!    floor (`-depth`), never further. The pass stops at the first request
//!    that can still wait.
//! 3. **Reservation pass**, in class order (real-time by deadline, then
//!    interactive, then background, oldest first): a request is taken when
//!    its queue's bucket holds its cost, and the bucket pays.
//! 4. **Work-conserving pass**: whatever room is left is filled regardless
//!    of tokens, and for free: interactive first, then real-time requests
//!    early (by deadline), then background. The device never idles while
//!    requests wait.
//!
//! The batch goes on the ring in that order (urgent, reserved,
//! work-conserving), which is priority order.
//!
//! **The work in flight is bounded.** A batch is bounded by the ring's
//! room and by a cap on the work in flight, in cost units: the reservation
//! and work-conserving passes stop adding *best-effort* requests once the
//! work in flight (`W + B`) reaches the work the device can drain within
//! [`ApexParams::slack_permille`] of the smallest real-time slack. A
//! queue's slack is the time to its earliest waiting deadline, or its
//! default relative deadline when it has nothing waiting (the next request
//! it sends will have that much). How much work drains in a given time is
//! not what the costs say on every device: a device with a deep queue of
//! its own, or one that serves its queue in an order of its own (writes
//! first, write-back ahead of reads), or a shared disk, makes a request
//! wait longer than the estimated work ahead of it. So the cap comes from
//! the cost model's *drain line* ([`crate::cost`]): from the completions of
//! real-time requests, the scheduler fits how long a request takes from
//! the ring to its completion against the estimated work in flight when it
//! went on the ring (`alpha + beta * work`: Little's law, request by
//! request), and the cap is the work that drains within the slack's share,
//! `(share - alpha) / beta` ([`crate::CostModel::work_within`]). Until the
//! line is fitted (8 completions), and with
//! [`ApexParams::drain_calibrated`] off, the costs are taken as drain
//! time. So a real-time request arriving now finds at most the work ahead
//! of it that the device has been seen to drain within its slack.
//!
//! The cap applies while a real-time queue is active (requests waiting or
//! in flight) or expected: a queue that has not been used yet, or whose
//! last submission or completion is recent, still bounds the work by its
//! default deadline. It is idle once it has had nothing waiting or in
//! flight and no submission or completion for
//! [`ApexParams::idle_after_gaps`] times the interval its reservation pays
//! for (the cost of its last request over its rate), and at least four
//! times its default deadline (the silence counts from the last completion too: an
//! application whose stream waits for its own completions, or for buffers
//! they free, is not idle); with every real-time queue idle the
//! work-conserving pass fills the ring. (The first request of a stream that
//! wakes up again can then find a full ring ahead of it.)
//! Real-time requests themselves are not held back by the cap: among them
//! the order is already earliest deadline first. The cap never leaves the
//! device idle: when nothing is in flight, a batch always takes at least
//! one request. Without real-time queues the cap does not apply and every
//! batch fills the room.
//!
//! **The best-effort throttle.** The bound above counts the work the
//! scheduler has put on the ring. A device can hold more than that: one
//! that completes writes into a cache of its own and writes them back
//! later, or a file on a shared disk whose write-back stalls every request
//! for a while, keeps its backlog where no count of the work in flight sees
//! it; a real-time read then waits behind bytes that left the ring long
//! ago. What the scheduler does see is the outcome: the latencies of its
//! real-time requests. So, while the bound applies (a real-time queue is
//! active or expected), best-effort work also goes through a token bucket
//! whose rate follows those latencies, additive increase and
//! multiplicative decrease:
//! - every real-time completion is compared with its own relative deadline
//!   (deadline minus submission); one that took more than
//!   [`ApexParams::guard_permille`] of it (default half) halves the
//!   best-effort rate (from the measured capacity, when the throttle was
//!   open), down to [`ApexParams::throttle_floor_permille`] of the capacity
//!   (default 5 %), and empties the bucket of what it saved at the old rate.
//!   After a cut, the next one waits one relative deadline, so that one burst
//!   of late completions (a stall ends) cuts once;
//! - a window (the smallest relative deadline among its real-time
//!   completions, at least 1 ms) whose real-time completions all came in
//!   under the guard raises the rate by 1/16 of the capacity; at the
//!   capacity the throttle is open again. With
//!   [`ApexParams::throttle_slow_start`] it starts at the floor instead of
//!   open, the first time a real-time queue is active (nothing is known
//!   yet of how the device answers writing, and a device that takes a
//!   burst of writes into a cache answers with a stall when the burst is
//!   already in), and doubles the rate every window on time until the
//!   first cut;
//! - a best-effort request goes while the bucket is positive and pays its
//!   cost (the bucket holds at most one window's worth of the rate, and
//!   goes below zero by at most one request's cost, also when requests
//!   go to keep the device from idling);
//! - only the completions of real-time queues feed it (interactive queues'
//!   deadlines only count misses).
//!
//! So the throttle cuts the rate at which best-effort bytes reach the
//! device, not only how many are in flight at once, which is what a device
//! that completes writes into a cache needs; and it stays open on a device
//! whose real-time latencies keep well within their deadlines, where the
//! bound alone decides. Like the bound it never leaves the device idle
//! (with nothing in flight one request goes, whatever the bucket), and it
//! does nothing without a real-time queue active or expected: there the
//! ring is filled. It costs best-effort throughput exactly when real-time
//! requests come close to their deadlines, which is the trade the classes
//! ask for; best-effort work keeps at least the floor, plus whatever goes
//! when the device would otherwise idle. It cannot save the requests
//! caught in a stall that has already begun: it only makes the next one
//! less likely, when the device's stalls come from the writing.
//! [`ApexParams::throttle`] turns it off.
//!
//! The price of the bound is throughput when the device needs many requests
//! in flight to be kept busy and the deadlines are short: in the simulated
//! W2 (a 2 ms deadline beside a bulk writer of 1 MiB requests on a device
//! serving four at once) the bulk job gets about a quarter of what it gets
//! under FIFO, while the real-time reads keep the latency they have alone. A
//! longer deadline or a larger `slack_permille` trades the other way. On a
//! device whose floor (`alpha`) is near the slack's share, the cap falls to
//! nothing and best-effort work goes only when nothing else is in flight.
//!
//! # Isolation mode
//! The bound and the throttle keep the device busy: whenever nothing is in
//! flight, one request goes, whatever they say. On a device that stalls
//! *because* it is written to, that rule is the leak. A paravirtual disk
//! backed by a file on a host disk with a write-back cache is one: once a
//! 1 MiB write has reached the host disk, the reads behind it wait for the
//! host's write-back, for tens of milliseconds and at times far more, and
//! no count of the work in flight sees it (see the README's notes on the
//! bench's disk). What bounds a latency-sensitive read's tail there is
//! how many background bytes are at the host disk when it arrives, and
//! how often background writes reach it at all. Between reads arriving
//! thousands of times a second the device is idle most of the time, so
//! the never-idle rule sends a bulk write at almost every gap.
//!
//! [`ApexParams::isolation`] (off by default) is the application's choice
//! of isolation over work conservation, in the manner of bfq's idling for
//! a synchronous reader:
//! - a *latency-sensitive* queue is a real-time or interactive one; it is
//!   *active* while it has requests waiting or in flight, and for an
//!   anticipation window after its last submission or completion: the
//!   longer of [`ApexParams::isolation_window_ns`] (default 10 ms) and
//!   twice its mean interval between submissions (up to
//!   [`MAX_ANTICIPATION_NS`]), so that a periodic stream is expected back
//!   between its requests. A queue not used yet is expected for
//!   [`MAX_ANTICIPATION_NS`] (or the window, if longer) after the first
//!   batch that saw it, so that a stream's first request does not find a
//!   ring full of background work; then it is quiet until used;
//! - while one is active, background requests go only while the
//!   background bytes in flight stay within
//!   [`ApexParams::isolation_be_bytes`] (default 0), on top of the bound
//!   and the throttle, and *not* because the device would otherwise idle;
//! - held background work is never held for long: with none of it in
//!   flight, a background request goes at the latest
//!   [`ApexParams::isolation_max_hold_ns`] (default 50 ms) after the first
//!   batch that held background work back with room on the ring (its
//!   *hold deadline*), whatever the cap, the bound and the throttle say.
//!   With background work in flight there is no hold deadline: its
//!   completion brings the next batch, and a device that stalls is not
//!   sent a pile of writes, one per deadline. So background work keeps at
//!   least one request per hold plus its service time (with the bench's
//!   1 MiB writes, about 20 MB/s), and nothing starves;
//! - whenever a batch holds background work back with room on the ring,
//!   [`crate::Scheduler::next_wakeup`] gives the time to build the next
//!   one: the hold deadline, or the moment the latency-sensitive queues
//!   count as quiet, whichever is first. blkfront's blocking waits sleep
//!   no longer than that; a frontend of its own must do the same (a
//!   completion also leads to a batch, as always);
//! - once every latency-sensitive queue is quiet the batch builder is
//!   work-conserving again, but the background work held meanwhile goes
//!   in slow start: one request, then as many bytes more in flight as
//!   background completions bring back, so the ring refills in a few
//!   rounds rather than in one batch; a latency-sensitive request that
//!   comes soon after finds little ahead of it (on the real path a
//!   frontend thread kept off the cores for 56 ms let the reads' queue
//!   fall quiet, and the 32 held 1 MiB writes went at once).
//!
//! Real-time and interactive requests are never held by it. The price is
//! background throughput whenever latency-sensitive work is active, down
//! to one request per hold with the default cap, and the device left idle
//! on purpose meanwhile: the simulation counts that time apart from an
//! accidental idle ([`crate::sim::Outcome::held_wait_ns`]). It is not the
//! default because on a device that does not stall under writes (the
//! simulation's, a dedicated disk) the bound alone keeps the deadlines at
//! a far smaller cost: with it on, W1's bulk writer would get a trickle
//! beside real-time readers that are active all the time, far below the
//! 0.95x FIFO throughput target. The bench's figures with and without it
//! on the loop device are in `docs/benches.md`.
//!
//! # Adaptive isolation
//! Holding background work back only pays while latency-sensitive
//! requests are actually being hurt by it: beside real-time readers that
//! complete in a fraction of their deadline (the bench's W1: 20 ms
//! deadlines, reads done in a few ms) the fixed mode above gives away the
//! bulk writer's throughput for nothing, while beside reads whose tail
//! comes close to a short deadline (W2: 2 ms) it is what keeps that tail
//! down. [`ApexParams::adaptive_isolation`] (off by default) is isolation
//! mode with its cap on background bytes in flight set by a feedback
//! controller, in the manner of kyber's latency targets and of CoDel
//! (an observation window, a target, multiplicative decrease and additive
//! increase as in TCP's congestion window), but with each request's own
//! relative deadline as its target:
//! - the *window* is the cap: *open* (no cap: not isolating, the batch
//!   builder is what it is with isolation off, work conservation included),
//!   or a number of bytes, 0 meaning *closed* (background work goes only at
//!   its hold deadline, as in the fixed mode with cap 0). It starts open;
//! - every completion of a real-time or interactive request with a
//!   deadline feeds it: its latency from submission against its relative
//!   deadline. A completion that met no background work on the device
//!   (none in flight when it completed, none completed since it went on
//!   the ring) counts as on time whatever its latency: it says nothing
//!   against the background work, and a device that stalls on its own
//!   (a shared disk) would otherwise close the window for nothing. One
//!   that met some and came past its deadline (a miss) cuts the window at
//!   once; an
//!   *observation window* (8 of the smallest relative deadline among its
//!   completions, at least 2 ms, and at least 8 completions unless 16
//!   such lengths pass) in which more than
//!   [`ApexParams::adaptive_late_permille`] (default 5 %) of the
//!   completions took more than [`ApexParams::guard_permille`] of their
//!   deadline (default half) cuts it at its end;
//! - a *cut* halves the window (from open: half the background bytes in
//!   flight then, at most half of [`ApexParams::adaptive_open_bytes`]); a
//!   half smaller than one [`ApexParams::adaptive_step_bytes`] (default
//!   1 MiB) closes it. After a cut the next waits one relative deadline
//!   (the requests put on the ring after the cut need that long to show
//!   its effect), so that one burst of late completions cuts once;
//! - an observation window with no completion over the guard adds one
//!   step; at [`ApexParams::adaptive_open_bytes`] (default 32 MiB) it is
//!   open again, and the held work refills the ring in slow start (as when
//!   the latency-sensitive queues fall quiet). A closed window waits
//!   `2^(k-1)` clean observation windows (at most
//!   [`ADAPTIVE_MAX_BACKOFF`]) before its first step, `k` being the times
//!   it was closed since it was last open: on a device where one
//!   background request in flight already makes the latency-sensitive
//!   ones late (the simulation's writes-first device with one channel,
//!   or the bench's loop device under a 2 ms deadline), it probes less and
//!   less often, and behaves as the fixed mode with cap 0;
//! - while the window is cut, everything of the fixed mode applies with
//!   the window as the cap (the anticipation window, the hold deadline and
//!   its wake-ups, nothing held without a latency-sensitive queue active);
//!   while it is open nothing is held on purpose, and no hold deadline
//!   applies (the bound and the throttle decide, as without isolation).
//!
//! So the window stays open, and the bulk throughput is kept, while the
//! latency-sensitive requests keep well within their deadlines, and it
//! closes within a few deadlines once they do not. What it costs: the
//! misses and late completions it needs to see before it cuts (a stall
//! that has begun is not undone), the probes it makes while recovering,
//! and background throughput on a device whose latency-sensitive
//! completions cross the guard for reasons that are not the background
//! work's but come while background work is on the device (a shared
//! disk's stalls, with the writer running): there it closes for nothing,
//! but never below the fixed mode's one request per hold, and the stalls
//! that come while nothing of the background is on the device let it
//! grow back. The window and its
//! moves are in [`ApexPolicy::adaptive_state`]. The fixed mode
//! ([`ApexParams::isolation`]) takes precedence when both are on.
//!
//! # Cost per request
//! A real-time queue keeps its waiting requests in a binary heap by
//! deadline (O(log n) to add and to take one), a best-effort queue in a
//! FIFO (O(1)); each class keeps the heads of its non-empty queues in a
//! sorted vector (a binary search and a short move when a head changes).
//! The buckets are refilled once per batch, the batch-size bound is
//! computed once per batch, and the reservation pass looks at the heads of
//! one class in order until one is covered. The shared bookkeeping
//! ([`crate::Sched`]) keeps the tags in an open-addressing table and the
//! latencies in fixed-size histograms. None of these structures shrinks:
//! once they have held a frontend's usual number of requests, submitting,
//! dispatching and completing a request allocates nothing (W4 of the
//! bench measures about 0.2 us per request, all three included). Cancelling
//! a waiting request and changing a queue's class are O(n) in the queue.
//!
//! # Parameters
//! [`ApexParams`]: the real-time share for admission (default 95 %), the
//! share of the smallest slack the work in flight may take to drain
//! (default 50 %), whether the drain line calibrates that (default yes),
//! after how many reserved intervals of silence a real-time queue is idle
//! (default 16), the urgency margin (default 0), and the best-effort
//! throttle: on or off (default on), its guard (default 500 per mille of a
//! real-time request's relative deadline) and its floor (default 50 per
//! mille of the capacity); isolation mode, off by default, with its
//! anticipation window (10 ms), its cap on background bytes in flight (0)
//! and its longest hold (50 ms); adaptive isolation, off by default, with
//! its late share (50 per mille), step (1 MiB) and open size (32 MiB)
//! (and isolation mode's window and hold). Per queue: class, reservation (rate, depth,
//! and so the floor), default deadline ([`crate::QueueConfig`]). The cost
//! model's prior ([`crate::CostPrior`]).
//!
//! # Where this departs from APEX
//! - **No seek ordering.** APEX orders a batch by disk position (SCAN) to
//!   save seeks. A paravirtual disk has no head to move and the backend
//!   reorders as it likes, so there is nothing to gain: requests go on the
//!   ring in priority order instead, so that the backend, which serves the
//!   ring in order, starts the most urgent first.
//! - **A ring, not one batch at a time.** APEX hands the disk one batch and
//!   builds the next when it completes. A ring takes requests whenever it
//!   has room, so a batch is built at every completion and the batch-size
//!   bound applies to all the work on the ring, not to one batch; and it is
//!   measured (the drain line), not derived from the costs alone.
//! - **Tokens are device time.** APEX's tokens count requests or bytes;
//!   here they are nanoseconds of amortized device time from a cost model
//!   calibrated from completions, so a reservation means the same whatever
//!   the request sizes.
//! - **Capacity is measured**, not configured: admission control compares
//!   the real-time reservations with the capacity the cost model observes.
//! - **A throttle fed by latencies.** APEX trusts its cost model to say
//!   how much a batch delays the next one. Here the best-effort rate also
//!   follows the latencies the real-time requests actually get (the
//!   best-effort throttle, above), in the manner of Linux's writeback
//!   throttling and kyber's depth adjustment, but driven by each request's
//!   own deadline rather than a configured target latency, and limiting a
//!   rate of device time rather than a number of requests.
//! - **Adaptive isolation.** APEX is work-conserving. Here the
//!   application may choose to hold background work back while
//!   latency-sensitive work is active, as bfq idles for a synchronous
//!   reader, with a fixed cap or with one that a feedback controller opens
//!   and closes from the latency-sensitive completions (above).
//! - Best-effort classes are two (interactive before background) and the
//!   work-conserving pass serves interactive work before early real-time
//!   work, since early real-time work can wait by definition.
//!
//! # What the application should know
//! Best-effort queues without a reservation can starve under a sustained
//! overload of higher classes; a reservation is what guarantees them a
//! share. Requests of a real-time queue whose reservation runs out are still
//! served early by the work-conserving pass when the device has room, and
//! always when they become urgent. A real-time queue that has just gone
//! quiet still bounds the work in flight by its default deadline, until it
//! counts as idle (see above).

use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::vec::Vec;
use core::cmp::Ordering;

use crate::engine::{rank, Core, Done, Entry, Policy};
use crate::CostModel;
use crate::{Class, Error, Nanos, Pass, QueueConfig, QueueId};

/// APEX's global parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApexParams {
    /// Most of the measured capacity real-time reservations may take
    /// together, per-mille (default 950).
    pub rt_share_permille: u64,
    /// The work on the ring may reach this share of the smallest real-time
    /// slack, per-mille (default 500).
    pub slack_permille: u64,
    /// Safety margin added to the estimated finish time when deciding
    /// whether a real-time request is urgent, ns (default 0).
    pub urgency_margin_ns: u64,
    /// Bound the work in flight with the drain line the cost model measures
    /// from completions ([`crate::CostModel::work_within`], default); off,
    /// the costs are taken as drain time (`alpha` 0, `beta` 1), which a
    /// device with a deep queue of its own or a write-back cache defeats.
    pub drain_calibrated: bool,
    /// A real-time queue with nothing waiting or in flight stops bounding
    /// the work on the ring once it has been silent this many times the
    /// interval its reservation pays for (the cost of its last request over
    /// its rate), and at least four times its default deadline (default
    /// 16).
    pub idle_after_gaps: u64,
    /// Throttle best-effort work by the real-time latencies (the
    /// best-effort throttle, see the module docs; default on).
    pub throttle: bool,
    /// A real-time completion whose latency from its submission exceeds
    /// this share of its relative deadline, per-mille, cuts the
    /// best-effort rate (default 500).
    pub guard_permille: u64,
    /// The lowest the best-effort rate is cut to, per-mille of the
    /// measured capacity (default 50).
    pub throttle_floor_permille: u64,
    /// Start the throttle at its floor the first time a real-time queue is
    /// active, and double its rate every window on time until the first
    /// cut (default off: it starts open).
    pub throttle_slow_start: bool,
    /// Isolation mode (see the module docs): while a latency-sensitive
    /// queue (real-time or interactive) is active, background work goes
    /// only within [`ApexParams::isolation_be_bytes`] in flight, never
    /// just because the device would idle, and at least once per
    /// [`ApexParams::isolation_max_hold_ns`]; the scheduler then says when
    /// to build the next batch ([`crate::Scheduler::next_wakeup`]).
    /// Default off.
    pub isolation: bool,
    /// In isolation mode, a latency-sensitive queue with nothing waiting
    /// or in flight stays active for this long after its last submission
    /// or completion, and for at least twice its mean interval between
    /// submissions (counted up to [`MAX_ANTICIPATION_NS`]); ns, default
    /// 10 ms.
    pub isolation_window_ns: u64,
    /// In isolation mode, the most background bytes in flight while a
    /// latency-sensitive queue is active (default 0: background work goes
    /// only at its hold deadlines).
    pub isolation_be_bytes: u64,
    /// In isolation mode, the longest background work waits while the ring
    /// has room and no background request is in flight: a background
    /// request goes at the latest this long after the first batch that
    /// held it back so; ns, default 50 ms, at least 1 us.
    pub isolation_max_hold_ns: u64,
    /// Adaptive isolation (see the module docs): isolation mode whose cap
    /// on background bytes in flight is a window that follows the
    /// latency-sensitive queues' completions, open (no isolation, work
    /// conservation) while they keep well within their deadlines, cut by
    /// half when they come close, grown back by
    /// [`ApexParams::adaptive_step_bytes`] when they recover. Ignored when
    /// [`ApexParams::isolation`] is on (a fixed cap). Default off.
    pub adaptive_isolation: bool,
    /// Adaptive isolation: an observation window in which more than this
    /// share of the latency-sensitive completions took more than
    /// [`ApexParams::guard_permille`] of their relative deadline cuts the
    /// window, per-mille (default 50). A completion past its deadline cuts
    /// it at once.
    pub adaptive_late_permille: u64,
    /// Adaptive isolation: what an observation window with no completion
    /// over the guard adds to the window, bytes (default 1 MiB, at least
    /// 4 KiB); a cut that leaves less than this closes it to 0.
    pub adaptive_step_bytes: u64,
    /// Adaptive isolation: the window opens again (no cap) once it grows
    /// to this many bytes (default 32 MiB).
    pub adaptive_open_bytes: u64,
}

impl Default for ApexParams {
    fn default() -> Self {
        Self {
            rt_share_permille: 950,
            slack_permille: 500,
            urgency_margin_ns: 0,
            drain_calibrated: true,
            idle_after_gaps: 16,
            throttle: true,
            guard_permille: 500,
            throttle_floor_permille: 50,
            throttle_slow_start: false,
            isolation: false,
            isolation_window_ns: 10_000_000,
            isolation_be_bytes: 0,
            isolation_max_hold_ns: 50_000_000,
            adaptive_isolation: false,
            adaptive_late_permille: 50,
            adaptive_step_bytes: 1 << 20,
            adaptive_open_bytes: 32 << 20,
        }
    }
}

/// Ordering key inside a queue: (deadline or arrival order, arrival order).
type Key = (u64, u64);

/// A waiting request in a real-time queue's heap: the smallest key on top.
#[derive(Clone, Copy, Debug)]
struct ByKey(Key, Entry);

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for ByKey {}
impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reversed, the earliest key is on top.
        other.0.cmp(&self.0)
    }
}

/// A queue's waiting requests: a binary heap by deadline for a real-time
/// queue (O(log n) in and out), a FIFO for the others (O(1)). Both keep
/// their storage between requests: once a queue has held its usual
/// number of requests, adding and taking one allocates nothing.
#[derive(Clone, Debug)]
enum Items {
    Edf(BinaryHeap<ByKey>),
    Fifo(VecDeque<Entry>),
}

impl Items {
    fn for_rank(rank: usize) -> Self {
        if rank == 0 {
            Items::Edf(BinaryHeap::new())
        } else {
            Items::Fifo(VecDeque::new())
        }
    }

    /// Adds `e`; a FIFO takes entries in submission order (`seq` grows).
    fn push(&mut self, e: Entry, rank: usize) {
        match self {
            Items::Edf(h) => h.push(ByKey(key_of(&e, rank), e)),
            Items::Fifo(d) => d.push_back(e),
        }
    }

    fn peek(&self) -> Option<&Entry> {
        match self {
            Items::Edf(h) => h.peek().map(|b| &b.1),
            Items::Fifo(d) => d.front(),
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        match self {
            Items::Edf(h) => h.pop().map(|b| b.1),
            Items::Fifo(d) => d.pop_front(),
        }
    }

    /// Takes out the entry with `tag`: O(n), for cancellations.
    fn remove_tag(&mut self, tag: u64) -> Option<Entry> {
        match self {
            Items::Edf(h) => {
                let found = h.iter().find(|b| b.1.tag == tag).map(|b| b.1)?;
                h.retain(|b| b.1.tag != tag);
                Some(found)
            }
            Items::Fifo(d) => {
                let i = d.iter().position(|e| e.tag == tag)?;
                d.remove(i)
            }
        }
    }

    /// Every entry, in no particular order.
    fn take_all(&mut self) -> Vec<Entry> {
        match self {
            Items::Edf(h) => core::mem::take(h).into_iter().map(|b| b.1).collect(),
            Items::Fifo(d) => core::mem::take(d).into_iter().collect(),
        }
    }
}

#[derive(Clone, Debug)]
struct ApexQueue {
    rank: usize,
    default_deadline: Option<Nanos>,
    items: Items,
    head: Option<Key>,
    /// The estimated cost of its last request.
    last_cost: u64,
    /// Its last submission (isolation mode's anticipation).
    last_submit: Option<Nanos>,
    /// Mean interval between its submissions, ns (a moving average, 1/8
    /// weight to the newest).
    mean_gap: u64,
    /// The first batch in isolation mode that saw it.
    seen: Option<Nanos>,
}

/// In isolation mode, the longest a latency-sensitive queue's mean
/// interval between submissions keeps it active (twice the interval, at
/// most this): a queue that sends a request a second does not hold
/// background work back for two seconds after its last one.
pub const MAX_ANTICIPATION_NS: u64 = 250_000_000;

/// The lane mark of a background request dispatched by APEX (its bytes
/// count as background bytes in flight until it completes).
const LANE_BACKGROUND: u8 = 1;

/// Isolation mode's state (see the module docs).
#[derive(Clone, Debug, Default)]
struct Isolation {
    /// Background requests in flight.
    be_in_flight: usize,
    /// Background bytes in flight.
    be_bytes: u64,
    /// The first batch that held background work back with room on the
    /// ring, since the last background request went.
    hold_start: Option<Nanos>,
    /// What the last batch said: build the next one by then.
    wake: Option<Nanos>,
    /// Background requests that went at their hold deadline.
    forced: u64,
    /// Since the latency-sensitive queues last fell quiet: the background
    /// bytes that may be in flight (`None`: no limit, before any was
    /// active). Slow start: one request goes whatever it says, and each
    /// background completion adds its bytes, so the ring refills in a few
    /// rounds, not with every held request in one batch.
    ramp: Option<u64>,
    /// The last batch found every latency-sensitive queue quiet: the
    /// background completions since then feed [`Isolation::ramp`].
    quiet: bool,
}

/// Adaptive isolation's observation window lasts this many of the
/// smallest relative deadline among its completions (at least
/// [`Adaptive::MIN_WINDOW_NS`]).
const ADAPTIVE_WINDOW_DEADLINES: u64 = 8;

/// Adaptive isolation's controller (see the module docs): the cap on
/// background bytes in flight while a latency-sensitive queue is active.
#[derive(Clone, Debug, Default)]
struct Adaptive {
    /// The cap, bytes; `None`: open (no isolation).
    window: Option<u64>,
    /// Start of the current observation window.
    start: Nanos,
    /// The smallest relative deadline of its completions.
    rel_min: u64,
    /// Latency-sensitive completions in it.
    samples: u32,
    /// Of them, those over the guard.
    late: u32,
    /// The last cut.
    last_cut: Option<Nanos>,
    /// Cuts and steps up so far.
    cuts: u64,
    grows: u64,
    /// The last background completion.
    last_be_done: Nanos,
    /// Cuts that closed the window (to 0) since it was last open: a
    /// closed window waits `2^(closes-1)` clean observation windows (at
    /// most [`ADAPTIVE_MAX_BACKOFF`]) before it lets a background
    /// request go again, so a device on which even one background request
    /// in flight makes latency-sensitive requests late is probed less and
    /// less often.
    closes: u32,
    /// Clean observation windows in a row while closed.
    clean: u32,
}

/// The most clean observation windows a closed adaptive window waits
/// before it lets a background request go again.
pub const ADAPTIVE_MAX_BACKOFF: u32 = 32;

/// What adaptive isolation's controller did, for a look from outside
/// ([`ApexPolicy::adaptive_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveState {
    /// The cap on background bytes in flight while a latency-sensitive
    /// queue is active; `None`: open.
    pub window_bytes: Option<u64>,
    /// Cuts (multiplicative decreases) so far.
    pub cuts: u64,
    /// Steps up (additive increases) so far.
    pub grows: u64,
}

impl Adaptive {
    /// The shortest observation window, ns.
    const MIN_WINDOW_NS: u64 = 2_000_000;
    /// Completions a window needs before it decides (a window of sparse
    /// completions decides with what it has after 16 times its length).
    const MIN_SAMPLES: u32 = 8;

    /// One latency-sensitive completion: `latency` from submission against
    /// its relative deadline `rel`; `be_bytes` background bytes are in
    /// flight (where a cut from open starts).
    fn observe(
        &mut self,
        now: Nanos,
        latency: u64,
        rel: u64,
        be_bytes: u64,
        overlapped: bool,
        p: &ApexParams,
    ) {
        let rel = rel.max(1);
        // A completion that met no background work on the device says
        // nothing against it: it counts, but never as late.
        let latency = if overlapped { latency } else { 0 };
        if self.samples == 0 {
            self.rel_min = rel;
            if self.start == 0 || now < self.start {
                self.start = now;
            }
        } else {
            self.rel_min = self.rel_min.min(rel);
        }
        self.samples = self.samples.saturating_add(1);
        if latency as u128 * 1000 > rel as u128 * p.guard_permille as u128 {
            self.late = self.late.saturating_add(1);
        }
        let cooled = |s: &Self| s.last_cut.is_none_or(|t| now.saturating_sub(t) >= rel);
        if latency > rel && cooled(self) {
            // A miss: cut now, not at the end of the window.
            self.cut(now, be_bytes, p);
            return;
        }
        let length = self
            .rel_min
            .saturating_mul(ADAPTIVE_WINDOW_DEADLINES)
            .max(Self::MIN_WINDOW_NS);
        let elapsed = now.saturating_sub(self.start);
        if elapsed < length
            || (self.samples < Self::MIN_SAMPLES && elapsed < length.saturating_mul(16))
        {
            return;
        }
        let over =
            self.late as u128 * 1000 > self.samples as u128 * p.adaptive_late_permille as u128;
        if over && cooled(self) {
            self.cut(now, be_bytes, p);
            return;
        }
        if self.late == 0 {
            match self.window {
                Some(0) => {
                    self.clean = self.clean.saturating_add(1);
                    let wait = 1u32
                        .checked_shl(self.closes.saturating_sub(1))
                        .unwrap_or(u32::MAX)
                        .min(ADAPTIVE_MAX_BACKOFF);
                    if self.clean >= wait {
                        self.grow(p);
                    }
                }
                Some(_) => self.grow(p),
                None => {}
            }
        } else {
            self.clean = 0;
        }
        self.reset(now);
    }

    /// Additive increase: one step; at the open size the window opens.
    fn grow(&mut self, p: &ApexParams) {
        let Some(w) = self.window else {
            return;
        };
        let up = w.saturating_add(p.adaptive_step_bytes.max(4096));
        self.window = (up < p.adaptive_open_bytes).then_some(up);
        if self.window.is_none() {
            self.closes = 0;
        }
        self.clean = 0;
        self.grows = self.grows.saturating_add(1);
    }

    /// Multiplicative decrease: half the window (from open, half the
    /// background bytes in flight, at most half the open size); less than
    /// one step closes it.
    fn cut(&mut self, now: Nanos, be_bytes: u64, p: &ApexParams) {
        let base = self
            .window
            .unwrap_or_else(|| be_bytes.min(p.adaptive_open_bytes));
        let half = base / 2;
        let closed = half < p.adaptive_step_bytes.max(4096);
        if closed && self.window != Some(0) {
            self.closes = self.closes.saturating_add(1);
        }
        self.window = Some(if closed { 0 } else { half });
        self.clean = 0;
        self.last_cut = Some(now);
        self.cuts = self.cuts.saturating_add(1);
        self.reset(now);
    }

    fn reset(&mut self, now: Nanos) {
        self.start = now;
        self.samples = 0;
        self.late = 0;
    }
}

/// A real-time queue is silent for at least this many of its default
/// deadlines before it counts as idle: a stream of random (Poisson)
/// arrivals has gaps of several times its mean now and then, and each
/// idle spell lets a ring full of best-effort work in ahead of its next
/// request.
const IDLE_DEADLINES: u64 = 4;

/// Additive increase of the best-effort rate: a window without a late
/// real-time completion raises it by the capacity over this.
const THROTTLE_STEPS: u64 = 16;

/// The best-effort throttle's state (see the module docs).
#[derive(Clone, Debug, Default)]
struct Throttle {
    /// The best-effort rate while real-time work is active, units per
    /// second; `None`: open.
    rate: Option<u64>,
    /// Best-effort tokens (units); a request goes while they are
    /// positive and takes them below zero by its cost.
    tokens: i64,
    /// Last refill.
    refilled: Nanos,
    /// Start of the current observation window.
    window_start: Nanos,
    /// The window's length: the smallest relative deadline of its
    /// real-time completions (0: none yet).
    window_ns: u64,
    /// Real-time completions in the window.
    samples: u32,
    /// One of them crossed the guard (after a cut, within its cool-down).
    late: bool,
    /// The last cut.
    last_cut: Option<Nanos>,
    /// Cuts so far.
    cuts: u64,
    /// Real-time work has been active: the throttle has started.
    started: bool,
    /// No cut yet since it started: a window on time doubles the rate.
    slow_start: bool,
}

/// What isolation mode is doing, for a look from outside
/// ([`ApexPolicy::isolation_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsolationState {
    /// Background requests in flight.
    pub be_in_flight: usize,
    /// Background bytes in flight.
    pub be_bytes_in_flight: u64,
    /// Background work has been held back with room on the ring since
    /// then (its hold deadline is this plus
    /// [`ApexParams::isolation_max_hold_ns`]).
    pub holding_since: Option<Nanos>,
    /// Background requests that went at their hold deadline.
    pub forced: u64,
}

/// What the best-effort throttle is doing, for a look from outside
/// ([`ApexPolicy::throttle_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleState {
    /// The best-effort rate while real-time work is active, units per
    /// second; `None`: open (no limit).
    pub rate_per_sec: Option<u64>,
    /// How many times a late real-time completion cut it.
    pub cuts: u64,
}

impl Throttle {
    /// The smallest relative deadline a window may have, ns: below it the
    /// windows would hold too few completions to say anything.
    const MIN_WINDOW_NS: u64 = 1_000_000;

    /// Adds the tokens earned since the last refill, up to what the rate
    /// gives in one window (the burst a window may hold).
    fn refill(&mut self, now: Nanos) {
        let Some(rate) = self.rate else {
            self.refilled = now;
            return;
        };
        let dt = now.saturating_sub(self.refilled);
        let add = (rate as u128 * dt as u128 / crate::NS_PER_SEC as u128).min(i64::MAX as u128 / 4);
        if add == 0 {
            return;
        }
        self.refilled = now;
        let window = self.window_ns.max(Self::MIN_WINDOW_NS) as u128;
        let depth = (rate as u128 * window / crate::NS_PER_SEC as u128).min(i64::MAX as u128 / 4);
        self.tokens = (self.tokens as i128 + add as i128).min(depth as i128) as i64;
    }

    /// The first time real-time work is active, with
    /// [`ApexParams::throttle_slow_start`]: from the floor, doubling.
    fn start(&mut self, now: Nanos, cost: &CostModel, floor_permille: u64) {
        let capacity = cost.capacity_per_sec();
        let floor = (capacity as u128 * floor_permille.min(1000) as u128 / 1000) as u64;
        self.slow_start = true;
        self.rate = Some(floor.max(1));
        self.tokens = 0;
        self.refilled = now;
        self.window_start = now;
    }

    /// Whether a best-effort request may go now.
    fn admits(&self) -> bool {
        self.rate.is_none() || self.tokens > 0
    }

    fn spend(&mut self, cost: u64) {
        if self.rate.is_some() {
            // Taken while positive, or by a request that goes because the
            // device would idle: below zero by one request's cost at most,
            // so that requests sent to keep the device busy do not run up
            // a debt that would lock best-effort work out for long.
            let c = cost.min(i64::MAX as u64 / 4) as i64;
            self.tokens = self.tokens.saturating_sub(c).max(-c);
        }
    }

    /// One real-time completion: `latency` from submission against its
    /// relative deadline `rel`. The measured capacity (units/s) comes from
    /// `cost` only when the rate changes (it costs a 128-bit division);
    /// the floor is `floor_permille` of it.
    fn observe(
        &mut self,
        now: Nanos,
        latency: u64,
        rel: u64,
        guard_permille: u64,
        cost: &CostModel,
        floor_permille: u64,
    ) {
        let rel = rel.max(1);
        self.window_ns = if self.samples == 0 {
            rel
        } else {
            self.window_ns.min(rel)
        };
        self.samples = self.samples.saturating_add(1);
        let over = latency as u128 * 1000 > rel as u128 * guard_permille as u128;
        if over {
            let cooled = self.last_cut.is_none_or(|t| now.saturating_sub(t) >= rel);
            if cooled {
                let capacity = cost.capacity_per_sec();
                let floor = (capacity as u128 * floor_permille.min(1000) as u128 / 1000) as u64;
                let current = self.rate.unwrap_or(capacity);
                self.rate = Some((current / 2).max(floor).max(1));
                // What was saved up at the old rate goes.
                self.tokens = self.tokens.min(0);
                self.refilled = now;
                self.last_cut = Some(now);
                self.cuts = self.cuts.saturating_add(1);
                self.slow_start = false;
                self.window_start = now;
                self.samples = 0;
                self.late = false;
            } else {
                self.late = true;
            }
            return;
        }
        if now.saturating_sub(self.window_start) < self.window_ns.max(Self::MIN_WINDOW_NS) {
            return;
        }
        // A window without a late completion: a step up.
        if !self.late {
            if let Some(r) = self.rate {
                let capacity = cost.capacity_per_sec();
                let up = if self.slow_start {
                    r.saturating_mul(2)
                } else {
                    r.saturating_add((capacity / THROTTLE_STEPS).max(1))
                };
                self.rate = (up < capacity).then_some(up);
            }
        }
        self.window_start = now;
        self.samples = 0;
        self.late = false;
    }
}

/// The APEX policy (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct ApexPolicy {
    params: ApexParams,
    throttle: Throttle,
    isolation: Isolation,
    adaptive: Adaptive,
    queues: BTreeMap<QueueId, ApexQueue>,
    /// Per class rank, the head of every non-empty queue of that class,
    /// sorted (a binary search and a short move per change; the vectors
    /// grow only with the number of queues).
    heads: [Vec<(u64, u64, QueueId)>; 3],
}

/// How long `units` of work in flight take to drain: the cost model's
/// drain line, or the units themselves when not `calibrated`.
fn drain_time(cost: &CostModel, calibrated: bool, units: u64) -> u64 {
    if calibrated {
        cost.drain_time(units)
    } else {
        units
    }
}

fn key_of(e: &Entry, rank: usize) -> Key {
    if rank == 0 {
        (e.deadline.unwrap_or(u64::MAX), e.seq)
    } else {
        (e.seq, e.seq)
    }
}

impl ApexPolicy {
    /// APEX with these parameters.
    pub fn new(params: ApexParams) -> Self {
        Self {
            params,
            ..Self::default()
        }
    }

    /// The parameters.
    pub fn params(&self) -> &ApexParams {
        &self.params
    }

    /// What the best-effort throttle is doing.
    pub fn throttle_state(&self) -> ThrottleState {
        ThrottleState {
            rate_per_sec: self.throttle.rate,
            cuts: self.throttle.cuts,
        }
    }

    /// What adaptive isolation's controller is doing.
    pub fn adaptive_state(&self) -> AdaptiveState {
        AdaptiveState {
            window_bytes: self.adaptive.window,
            cuts: self.adaptive.cuts,
            grows: self.adaptive.grows,
        }
    }

    /// Isolation mode, fixed or adaptive, is on.
    fn isolation_on(&self) -> bool {
        self.params.isolation || self.params.adaptive_isolation
    }

    /// The cap on background bytes in flight while a latency-sensitive
    /// queue is active: isolation mode's fixed one, adaptive isolation's
    /// window; `None`: no isolation.
    fn isolation_cap(&self) -> Option<u64> {
        if self.params.isolation {
            Some(self.params.isolation_be_bytes)
        } else if self.params.adaptive_isolation {
            self.adaptive.window
        } else {
            None
        }
    }

    fn fix_head(&mut self, queue: QueueId) {
        let Some(q) = self.queues.get_mut(&queue) else {
            return;
        };
        let new = q.items.peek().map(|e| key_of(e, q.rank));
        if new == q.head {
            return;
        }
        let heads = &mut self.heads[q.rank];
        if let Some(old) = q.head {
            if let Ok(i) = heads.binary_search(&(old.0, old.1, queue)) {
                heads.remove(i);
            }
        }
        if let Some(k) = new {
            let h = (k.0, k.1, queue);
            if let Err(i) = heads.binary_search(&h) {
                heads.insert(i, h);
            }
        }
        q.head = new;
    }

    fn peek(&self, queue: QueueId) -> Option<&Entry> {
        self.queues.get(&queue).and_then(|q| q.items.peek())
    }

    fn pop(&mut self, queue: QueueId) -> Option<Entry> {
        let e = self.queues.get_mut(&queue)?.items.pop()?;
        self.fix_head(queue);
        Some(e)
    }

    fn drop_head(&mut self, rank: usize, queue: QueueId, head: Option<Key>) {
        if let Some(h) = head {
            let heads = &mut self.heads[rank];
            if let Ok(i) = heads.binary_search(&(h.0, h.1, queue)) {
                heads.remove(i);
            }
        }
    }

    /// Bound on the work in flight, in units: the work a request put on the
    /// ring now can find ahead of it and still complete within a share of
    /// the smallest slack of the real-time queues that are active or
    /// expected; `None` when there are none.
    fn work_bound(&self, core: &Core, now: Nanos) -> Option<u64> {
        let mut slack: Option<u64> = None;
        for (qid, q) in self.queues.iter().filter(|(_, q)| q.rank == 0) {
            let s = match q.items.peek() {
                Some(e) => e.deadline.map_or(u64::MAX, |d| d.saturating_sub(now)),
                None if self.is_idle(core, *qid, q, now) => continue,
                None => q.default_deadline.unwrap_or(u64::MAX),
            };
            slack = Some(slack.map_or(s, |m: u64| m.min(s)));
        }
        let share =
            slack.map(|s| ((s as u128 * self.params.slack_permille as u128) / 1000) as u64)?;
        Some(if self.params.drain_calibrated {
            core.cost.work_within(share)
        } else {
            share
        })
    }

    /// Whether real-time queue `q` (nothing waiting) is idle: nothing in
    /// flight, and no submission or completion for longer than
    /// [`ApexParams::idle_after_gaps`] of the intervals its reservation
    /// pays for, and than [`IDLE_DEADLINES`] of its default deadline. A queue that has never
    /// been used is expected, not idle.
    fn is_idle(&self, core: &Core, qid: QueueId, q: &ApexQueue, now: Nanos) -> bool {
        let Some(state) = core.queues.get(&qid) else {
            return true;
        };
        let Some(last) = state.last_active else {
            return false;
        };
        if state.in_flight > 0 || state.pending > 0 {
            return false;
        }
        let rate = state.config.reservation.rate_per_sec.max(1) as u128;
        let gap =
            (q.last_cost as u128 * crate::NS_PER_SEC as u128 / rate).min(u64::MAX as u128) as u64;
        let horizon = gap.saturating_mul(self.params.idle_after_gaps).max(
            q.default_deadline
                .unwrap_or(0)
                .saturating_mul(IDLE_DEADLINES),
        );
        now.saturating_sub(last) > horizon
    }

    /// In isolation mode: `Some(t)` while a latency-sensitive queue
    /// (real-time or interactive) is active, `t` being when all of them
    /// count as quiet if nothing more happens (`u64::MAX` while one has
    /// requests waiting or in flight: their completions tell more). A
    /// queue not used yet is expected for [`MAX_ANTICIPATION_NS`] (or the
    /// window, if longer) after the first batch that saw it, as for the
    /// bound: its first request should not find a ring full of background
    /// work; after that it is quiet until used.
    fn sensitive_until(&mut self, core: &Core, now: Nanos) -> Option<Nanos> {
        let mut until: Option<Nanos> = None;
        let window = self.params.isolation_window_ns;
        for (qid, q) in self.queues.iter_mut().filter(|(_, q)| q.rank <= 1) {
            let Some(state) = core.queues.get(qid) else {
                continue;
            };
            let t = if state.pending > 0 || state.in_flight > 0 {
                u64::MAX
            } else {
                let end = match state.last_active {
                    Some(last) => last.saturating_add(
                        window.max(q.mean_gap.saturating_mul(2).min(MAX_ANTICIPATION_NS)),
                    ),
                    None => q
                        .seen
                        .get_or_insert(now)
                        .saturating_add(window.max(MAX_ANTICIPATION_NS)),
                };
                if end <= now {
                    continue;
                }
                end
            };
            until = Some(until.map_or(t, |u: u64| u.max(t)));
        }
        until
    }

    /// Counts a background request going to the device (isolation mode's
    /// bytes in flight and hold).
    fn background_out(&mut self, e: &mut Entry) {
        e.lane = LANE_BACKGROUND;
        self.isolation.be_in_flight = self.isolation.be_in_flight.saturating_add(1);
        self.isolation.be_bytes = self.isolation.be_bytes.saturating_add(e.bytes);
        self.isolation.hold_start = None;
    }

    /// What isolation mode is doing.
    pub fn isolation_state(&self) -> IsolationState {
        IsolationState {
            be_in_flight: self.isolation.be_in_flight,
            be_bytes_in_flight: self.isolation.be_bytes,
            holding_since: self.isolation.hold_start,
            forced: self.isolation.forced,
        }
    }

    /// The first head of class `rank` whose queue's bucket covers its cost.
    fn first_covered(&self, core: &Core, rank: usize) -> Option<(QueueId, u64)> {
        self.heads[rank].iter().find_map(|&(_, _, qid)| {
            let e = self.peek(qid)?;
            let c = core.cost_of(e);
            core.covers(qid, c).then_some((qid, c))
        })
    }
}

impl Policy for ApexPolicy {
    fn name(&self) -> &'static str {
        "apex"
    }

    fn admit(
        &self,
        core: &Core,
        replacing: Option<QueueId>,
        config: &QueueConfig,
    ) -> Result<(), Error> {
        if config.class != Class::RealTime {
            return Ok(());
        }
        let used: u64 = core
            .queues
            .iter()
            .filter(|(id, q)| {
                Some(**id) != replacing && !q.draining && q.config.class == Class::RealTime
            })
            .fold(0u64, |a, (_, q)| {
                a.saturating_add(q.config.reservation.rate_per_sec)
            });
        let cap =
            core.cost.capacity_per_sec() as u128 * self.params.rt_share_permille as u128 / 1000;
        let available = (cap.min(u64::MAX as u128) as u64).saturating_sub(used);
        let requested = config.reservation.rate_per_sec;
        if requested > available {
            log::info!(
                "iosched: real-time reservation of {requested} units/s refused, {available} free"
            );
            return Err(Error::AdmissionRefused {
                requested,
                available,
            });
        }
        Ok(())
    }

    fn queue_added(&mut self, core: &Core, queue: QueueId) {
        let Some(q) = core.queues.get(&queue) else {
            return;
        };
        self.queues.insert(
            queue,
            ApexQueue {
                rank: rank(q.config.class),
                default_deadline: q.config.deadline_ns,
                items: Items::for_rank(rank(q.config.class)),
                head: None,
                last_cost: 0,
                last_submit: None,
                mean_gap: 0,
                seen: None,
            },
        );
    }

    fn queue_changed(&mut self, core: &Core, queue: QueueId, _old: &QueueConfig) {
        let Some(cfg) = core.queues.get(&queue).map(|q| q.config) else {
            return;
        };
        let Some(q) = self.queues.get_mut(&queue) else {
            return;
        };
        q.default_deadline = cfg.deadline_ns;
        let new_rank = rank(cfg.class);
        if new_rank == q.rank {
            return;
        }
        let (old_rank, old_head) = (q.rank, q.head.take());
        q.rank = new_rank;
        let mut items = q.items.take_all();
        // A FIFO takes them in submission order.
        items.sort_unstable_by_key(|e| e.seq);
        q.items = Items::for_rank(new_rank);
        for mut e in items {
            if new_rank == 0 && e.deadline.is_none() {
                e.deadline = cfg.deadline_ns.map(|d| e.arrival.saturating_add(d));
            }
            q.items.push(e, new_rank);
        }
        self.drop_head(old_rank, queue, old_head);
        self.fix_head(queue);
    }

    fn queue_removed(&mut self, queue: QueueId) {
        if let Some(q) = self.queues.remove(&queue) {
            self.drop_head(q.rank, queue, q.head);
        }
    }

    fn enqueue(&mut self, core: &Core, entry: Entry) {
        if !self.queues.contains_key(&entry.queue) {
            // Cannot happen (submit checks the queue); never lose the
            // request: adopt the queue as background.
            log::error!("iosched: apex had no state for queue {}", entry.queue.0);
            self.queue_added(core, entry.queue);
            self.queues.entry(entry.queue).or_insert(ApexQueue {
                rank: 2,
                default_deadline: None,
                items: Items::for_rank(2),
                head: None,
                last_cost: 0,
                last_submit: None,
                mean_gap: 0,
                seen: None,
            });
        }
        if let Some(q) = self.queues.get_mut(&entry.queue) {
            q.last_cost = core.cost_of(&entry);
            if let Some(prev) = q.last_submit {
                let gap = entry.arrival.saturating_sub(prev);
                q.mean_gap = if q.mean_gap == 0 {
                    gap
                } else {
                    (q.mean_gap.saturating_mul(7) / 8).saturating_add(gap / 8)
                };
            }
            q.last_submit = Some(entry.arrival);
            q.items.push(entry, q.rank);
        }
        self.fix_head(entry.queue);
    }

    fn remove(&mut self, queue: QueueId, tag: u64) -> Option<Entry> {
        let e = self.queues.get_mut(&queue)?.items.remove_tag(tag);
        self.fix_head(queue);
        if self.heads[2].is_empty() {
            self.isolation.wake = None;
            self.isolation.hold_start = None;
        }
        e
    }

    fn select(&mut self, core: &mut Core, now: Nanos, room: usize, out: &mut Vec<(Entry, Pass)>) {
        core.refill_all(now);
        let on_ring = core.inflight_cost;
        let in_flight = core.in_flight() as u64;
        let gap = on_ring.checked_div(in_flight).unwrap_or(0);
        let calibrated = self.params.drain_calibrated;
        let mut work: u64 = 0;

        // Urgent pass: real-time requests that cannot wait for the next batch.
        while out.len() < room {
            let Some(&(deadline, _, qid)) = self.heads[0].first() else {
                break;
            };
            let Some(e) = self.peek(qid) else { break };
            let c = core.cost_of(e);
            let ahead = on_ring
                .saturating_add(work)
                .saturating_add(gap)
                .saturating_add(c);
            let finish_if_waiting = now
                .saturating_add(drain_time(&core.cost, calibrated, ahead))
                .saturating_add(self.params.urgency_margin_ns);
            if deadline > finish_if_waiting {
                break;
            }
            let Some(e) = self.pop(qid) else { break };
            core.spend(qid, c);
            work = work.saturating_add(c);
            out.push((e, Pass::Urgent));
        }

        let bound = self.work_bound(core, now);
        let idle = in_flight == 0;
        // The throttle applies when the bound does: while real-time work
        // is active or expected.
        let throttled = bound.is_some() && self.params.throttle;
        if throttled && !self.throttle.started {
            self.throttle.started = true;
            if self.params.throttle_slow_start {
                self.throttle
                    .start(now, &core.cost, self.params.throttle_floor_permille);
            }
        }
        if throttled {
            self.throttle.refill(now);
        }
        // Isolation mode: while a latency-sensitive queue is active,
        // background work goes only within its cap of bytes in flight and
        // not merely because the device would idle.
        let iso_cap = self.isolation_cap();
        let sensitive = if iso_cap.is_some() {
            self.sensitive_until(core, now)
        } else {
            None
        };
        let isolating = sensitive.is_some();
        if isolating {
            self.isolation.ramp = Some(0);
        } else if !self.queues.values().any(|q| q.rank <= 1) {
            // No latency-sensitive queue left: nothing to ramp for.
            self.isolation.ramp = None;
        }
        self.isolation.quiet = !isolating;
        let ramp = if self.isolation_on() {
            self.isolation.ramp
        } else {
            None
        };
        let cap = iso_cap.unwrap_or(u64::MAX);
        // The bound and the throttle hold back best-effort work only:
        // real-time requests are already in deadline order among
        // themselves. They never leave the device idle: with nothing in
        // flight, one request goes (but for background work held by
        // isolation mode).
        let fits = |r: usize, work: u64, taken: usize, t: &Throttle, be_bytes: u64, bytes: u64| {
            if r == 2 && isolating && be_bytes.saturating_add(bytes) > cap {
                return false;
            }
            if let (2, false, Some(ramp)) = (r, isolating, ramp) {
                if be_bytes > 0 && be_bytes.saturating_add(bytes) > ramp.max(bytes) {
                    return false;
                }
            }
            match bound {
                _ if r == 0 => true,
                None => true,
                _ if idle && taken == 0 && !(isolating && r == 2) => true,
                Some(b) => on_ring.saturating_add(work) < b && (!throttled || t.admits()),
            }
        };

        // Reservation pass, in class order, paid with tokens.
        for r in 0..3 {
            while out.len() < room {
                let Some((qid, c)) = self.first_covered(core, r) else {
                    break;
                };
                let bytes = self.peek(qid).map_or(0, |e| e.bytes);
                if !fits(
                    r,
                    work,
                    out.len(),
                    &self.throttle,
                    self.isolation.be_bytes,
                    bytes,
                ) {
                    break;
                }
                let Some(mut e) = self.pop(qid) else { break };
                core.spend(qid, c);
                if r != 0 && throttled {
                    self.throttle.spend(c);
                }
                if r == 2 {
                    self.background_out(&mut e);
                }
                work = work.saturating_add(c);
                out.push((e, Pass::Reserved));
            }
        }

        // Work-conserving pass: interactive, real-time early, background.
        for r in [1, 0, 2] {
            while out.len() < room {
                let Some(&(_, _, qid)) = self.heads[r].first() else {
                    break;
                };
                let bytes = self.peek(qid).map_or(0, |e| e.bytes);
                if !fits(
                    r,
                    work,
                    out.len(),
                    &self.throttle,
                    self.isolation.be_bytes,
                    bytes,
                ) {
                    break;
                }
                let Some(mut e) = self.pop(qid) else { break };
                let c = core.cost_of(&e);
                if r != 0 && throttled {
                    self.throttle.spend(c);
                }
                if r == 2 {
                    self.background_out(&mut e);
                }
                work = work.saturating_add(c);
                out.push((e, Pass::Other));
            }
        }

        // Isolation mode's hold: background work left waiting with room on
        // the ring and none of it in flight goes at the latest
        // `isolation_max_hold_ns` after the first batch that held it, one
        // request at a time; until then the scheduler says when to look
        // again. With background work in flight, its completion brings the
        // next batch (no pile of writes sent at a device that stalls).
        self.isolation.wake = None;
        if !self.params.isolation && !isolating {
            // Adaptive isolation with its window open, or no
            // latency-sensitive queue active: nothing is held on purpose.
            self.isolation.hold_start = None;
        } else if self.isolation_on() {
            if self.heads[2].is_empty() {
                self.isolation.hold_start = None;
            } else if out.len() < room && self.isolation.be_in_flight > 0 {
                self.isolation.hold_start = None;
                // Work-conserving again as soon as the latency-sensitive
                // queues are quiet, not only at the next completion.
                self.isolation.wake = sensitive.filter(|&q| q < u64::MAX);
            } else if out.len() < room {
                let max_hold = self.params.isolation_max_hold_ns.max(1_000);
                let due = self
                    .isolation
                    .hold_start
                    .is_some_and(|h| now >= h.saturating_add(max_hold));
                if due {
                    if let Some(&(_, _, qid)) = self.heads[2].first() {
                        if let Some(mut e) = self.pop(qid) {
                            let c = core.cost_of(&e);
                            if throttled {
                                self.throttle.spend(c);
                            }
                            self.background_out(&mut e);
                            self.isolation.forced = self.isolation.forced.saturating_add(1);
                            out.push((e, Pass::Other));
                        }
                    }
                }
                if self.isolation.be_in_flight > 0 {
                    // The request that went at its deadline is in flight.
                    self.isolation.wake = sensitive.filter(|&q| q < u64::MAX);
                } else if out.len() < room && !self.heads[2].is_empty() {
                    let start = *self.isolation.hold_start.get_or_insert(now);
                    let mut wake = start.saturating_add(max_hold);
                    if let Some(quiet) = sensitive {
                        wake = wake.min(quiet);
                    }
                    self.isolation.wake = Some(wake.max(now.saturating_add(1)));
                }
            }
        }
    }

    fn completed(&mut self, lane: u8, bytes: u64) {
        if lane == LANE_BACKGROUND {
            self.isolation.be_in_flight = self.isolation.be_in_flight.saturating_sub(1);
            self.isolation.be_bytes = self.isolation.be_bytes.saturating_sub(bytes);
            if let (Some(r), true) = (self.isolation.ramp.as_mut(), self.isolation.quiet) {
                *r = (*r).max(bytes).saturating_add(bytes);
            }
        }
    }

    fn next_wakeup(&self) -> Option<Nanos> {
        self.isolation.wake
    }

    fn throttle_state(&self) -> Option<ThrottleState> {
        self.params
            .throttle
            .then(|| ApexPolicy::throttle_state(self))
    }

    fn adaptive_window(&self) -> Option<AdaptiveState> {
        (self.params.adaptive_isolation && !self.params.isolation)
            .then(|| ApexPolicy::adaptive_state(self))
    }

    fn observed(&mut self, core: &Core, done: &Done) {
        if done.class == Some(Class::Background) {
            self.adaptive.last_be_done = self.adaptive.last_be_done.max(done.now);
        }
        let Some(deadline) = done.deadline else {
            return;
        };
        let rel = deadline.saturating_sub(done.arrival);
        let latency = done.now.saturating_sub(done.arrival);
        if self.params.adaptive_isolation
            && !self.params.isolation
            && matches!(done.class, Some(Class::RealTime | Class::Interactive))
        {
            let be = self.isolation.be_bytes;
            // Background work was on the device at some time while this
            // request was: in flight now, or completed since it went.
            let overlapped =
                self.isolation.be_in_flight > 0 || self.adaptive.last_be_done >= done.dispatched;
            self.adaptive
                .observe(done.now, latency, rel, be, overlapped, &self.params);
        }
        if !self.params.throttle || done.class != Some(Class::RealTime) {
            return;
        }
        self.throttle.observe(
            done.now,
            latency,
            rel,
            self.params.guard_permille,
            &core.cost,
            self.params.throttle_floor_permille,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const M: u64 = 1 << 20;

    fn params() -> ApexParams {
        ApexParams {
            adaptive_isolation: true,
            adaptive_step_bytes: M,
            adaptive_open_bytes: 8 * M,
            ..ApexParams::default()
        }
    }

    /// Feeds `n` completions of a 2 ms deadline taking `latency`, one every
    /// 100 us from `*now`.
    fn feed(a: &mut Adaptive, now: &mut u64, n: u32, latency: u64, be: u64, p: &ApexParams) {
        for _ in 0..n {
            *now += 100_000;
            a.observe(*now, latency, 2 * MS, be, true, p);
        }
    }

    #[test]
    fn a_miss_cuts_from_open_to_half_the_bytes_in_flight_then_halves() {
        let p = params();
        let mut a = Adaptive::default();
        let mut now = 1;
        // On time: stays open.
        feed(&mut a, &mut now, 500, 100_000, 6 * M, &p);
        assert_eq!(a.window, None);
        // A miss: half of the 6 MiB in flight.
        feed(&mut a, &mut now, 1, 3 * MS, 6 * M, &p);
        assert_eq!(a.window, Some(3 * M));
        // Another within one deadline: no second cut (cool-down).
        feed(&mut a, &mut now, 1, 3 * MS, 6 * M, &p);
        assert_eq!(a.window, Some(3 * M));
        // A deadline later: half again; then below one step, closed.
        now += 2 * MS;
        feed(&mut a, &mut now, 1, 3 * MS, 6 * M, &p);
        assert_eq!(a.window, Some(M + M / 2));
        now += 2 * MS;
        feed(&mut a, &mut now, 1, 3 * MS, 6 * M, &p);
        assert_eq!(a.window, Some(0));
        assert_eq!(a.cuts, 3);
    }

    #[test]
    fn a_window_mostly_over_the_guard_cuts_and_clean_windows_grow_back() {
        let p = params();
        let mut a = Adaptive {
            window: Some(4 * M),
            ..Adaptive::default()
        };
        let mut now = 1;
        // 1.5 ms of a 2 ms deadline: over the guard (half), not a miss;
        // a whole window (8 deadlines: 16 ms from the first) cuts once.
        let mut n = 0;
        while a.window == Some(4 * M) {
            feed(&mut a, &mut now, 1, 1_500_000, 0, &p);
            n += 1;
        }
        assert_eq!(n, 161);
        assert_eq!(a.window, Some(2 * M));
        // Over the guard in fewer than 5 % of a window: no cut, no step.
        for _ in 0..4 {
            feed(&mut a, &mut now, 40, 100_000, 0, &p);
            feed(&mut a, &mut now, 1, 1_500_000, 0, &p);
        }
        assert_eq!(a.window, Some(2 * M));
        // Clean windows: one step each, open at 8 MiB.
        let grows = a.grows;
        let mut n = 0;
        while a.window == Some(2 * M) {
            feed(&mut a, &mut now, 1, 100_000, 0, &p);
            n += 1;
            // The window under way (with late ones) ends, then a clean one.
            assert!(n <= 2 * 161, "no step up after {n} clean completions");
        }
        assert_eq!(a.window, Some(3 * M));
        feed(&mut a, &mut now, 170 * 10, 100_000, 0, &p);
        assert_eq!(a.window, None);
        assert_eq!(a.grows, grows + 6);
    }

    #[test]
    fn late_completions_that_met_no_background_work_do_not_cut() {
        let p = params();
        let mut a = Adaptive::default();
        let mut now = 1;
        for _ in 0..1000 {
            now += 100_000;
            a.observe(now, 3 * MS, 2 * MS, 0, false, &p);
        }
        assert_eq!((a.window, a.cuts), (None, 0));
        // Closed, they count as clean windows: it grows back.
        a.window = Some(0);
        a.closes = 1;
        for _ in 0..200 {
            now += 100_000;
            a.observe(now, 3 * MS, 2 * MS, 0, false, &p);
        }
        assert_eq!(a.window, Some(M));
    }

    #[test]
    fn a_window_closed_again_and_again_waits_longer_to_probe() {
        let p = params();
        let mut a = Adaptive {
            window: Some(M),
            ..Adaptive::default()
        };
        let mut now = 1;
        let mut waits = Vec::new();
        for _ in 0..4 {
            // A miss closes it.
            now += 2 * MS;
            feed(&mut a, &mut now, 1, 3 * MS, M, &p);
            assert_eq!(a.window, Some(0));
            // Clean windows until it lets one request's worth go again.
            let mut n = 0;
            while a.window == Some(0) {
                feed(&mut a, &mut now, 170, 100_000, 0, &p);
                n += 1;
                assert!(n <= 64, "never grew back");
            }
            assert_eq!(a.window, Some(M));
            waits.push(n);
        }
        assert_eq!(waits, [1, 2, 4, 8]);
    }

    proptest! {
        /// Whatever the completions say: the window is open, closed (0) or
        /// at least one step and below the open size; each cut leaves it
        /// no larger than it was (open counts as the largest); and on-time
        /// completions always open it again within a bounded number of
        /// windows.
        #[test]
        fn the_window_stays_in_bounds_and_reopens(
            step_kib in 4u64..4096,
            open_steps in 1u64..64,
            late_permille in 0u64..1000,
            seq in proptest::collection::vec((1u64..5_000_000, 0u64..10_000_000, 1u64..20_000_000, 0u64..1 << 30, any::<bool>()), 1..400),
        ) {
            let p = ApexParams {
                adaptive_isolation: true,
                adaptive_step_bytes: step_kib * 1024,
                adaptive_open_bytes: step_kib * 1024 * open_steps,
                adaptive_late_permille: late_permille,
                ..ApexParams::default()
            };
            let step = p.adaptive_step_bytes;
            let mut a = Adaptive::default();
            let mut now = 1u64;
            for &(dt, latency, rel, be, overlapped) in &seq {
                now += dt;
                let (before, cuts) = (a.window, a.cuts);
                a.observe(now, latency, rel, be, overlapped, &p);
                if let Some(w) = a.window {
                    prop_assert!(w == 0 || (w >= step && w < p.adaptive_open_bytes), "{w}");
                }
                if a.cuts > cuts {
                    prop_assert!(before.is_none_or(|b| a.window.is_some_and(|w| w <= b)));
                }
            }
            // On time from here: open again within the longest backoff plus
            // one window per step.
            let windows = ADAPTIVE_MAX_BACKOFF as u64 + open_steps + 2;
            for _ in 0..windows * 20 {
                now += 1_000_000;
                a.observe(now, 0, 2_000_000, 0, true, &p);
            }
            prop_assert_eq!(a.window, None);
        }
    }
}
