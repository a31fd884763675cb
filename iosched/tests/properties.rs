//! Property tests of the scheduler's invariants, for every policy, over
//! random sequences of queue changes, submissions, batches and completions.

use std::collections::{BTreeMap, BTreeSet};

use iosched::{
    new_scheduler, Apex, ApexParams, ApexPolicy, Class, Op, PolicyKind, QueueConfig, QueueId,
    Removal, Request, Reservation, SchedConfig, Scheduler,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Action {
    Create {
        class: u8,
        rate_permille: u16,
        depth_us: u32,
        deadline_us: u32,
        prio: u8,
    },
    Change {
        queue: u8,
        class: u8,
        rate_permille: u16,
        depth_us: u32,
        deadline_us: u32,
    },
    Remove {
        queue: u8,
    },
    Submit {
        queue: u8,
        op: u8,
        kib: u16,
        deadline_us: Option<i32>,
    },
    Batch {
        room: u8,
    },
    Complete {
        which: u8,
    },
    Advance {
        us: u32,
    },
    Cancel {
        which: u8,
        in_flight: bool,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => (0u8..3, 0u16..400, 0u32..20_000, 0u32..50_000, any::<u8>()).prop_map(
            |(class, rate_permille, depth_us, deadline_us, prio)| Action::Create {
                class, rate_permille, depth_us, deadline_us, prio
            }
        ),
        1 => (any::<u8>(), 0u8..3, 0u16..400, 0u32..20_000, 0u32..50_000).prop_map(
            |(queue, class, rate_permille, depth_us, deadline_us)| Action::Change {
                queue, class, rate_permille, depth_us, deadline_us
            }
        ),
        1 => any::<u8>().prop_map(|queue| Action::Remove { queue }),
        10 => (any::<u8>(), 0u8..4, 0u16..1024, proptest::option::of(-5_000i32..50_000)).prop_map(
            |(queue, op, kib, deadline_us)| Action::Submit { queue, op, kib, deadline_us }
        ),
        4 => (0u8..40).prop_map(|room| Action::Batch { room }),
        5 => any::<u8>().prop_map(|which| Action::Complete { which }),
        1 => (any::<u8>(), any::<bool>())
            .prop_map(|(which, in_flight)| Action::Cancel { which, in_flight }),
        3 => (0u32..20_000).prop_map(|us| Action::Advance { us }),
    ]
}

fn config(class: u8, rate_permille: u16, depth_us: u32, deadline_us: u32) -> QueueConfig {
    let class = [Class::RealTime, Class::Interactive, Class::Background][class as usize % 3];
    let reservation = if rate_permille == 0 {
        Reservation::NONE
    } else {
        Reservation {
            rate_per_sec: rate_permille as u64 * 1_000_000,
            depth: depth_us as u64 * 1000,
        }
    };
    QueueConfig {
        class,
        reservation,
        deadline_ns: (deadline_us != 0).then_some(deadline_us as u64 * 1000),
        priority: 0,
    }
}

/// The model the scheduler is checked against.
struct Harness {
    s: Box<dyn Scheduler + Send>,
    kind: PolicyKind,
    now: u64,
    next_tag: u64,
    queues: Vec<QueueId>,
    /// Tags waiting, with their queue and absolute deadline.
    pending: BTreeMap<u64, (QueueId, Option<u64>)>,
    in_flight: BTreeSet<u64>,
    done: BTreeSet<u64>,
    cancelled: BTreeSet<u64>,
    ring: usize,
    /// Queues whose configuration changed (their waiting requests may have
    /// been given deadlines the harness does not know).
    changed: BTreeSet<QueueId>,
    /// APEX in isolation mode: its longest hold of background work.
    isolation: Option<u64>,
    /// Background work has been left waiting with room on the ring and
    /// none in flight since then, and none of it went.
    held_since: Option<u64>,
    /// Tags in flight that went from a background queue.
    background_in_flight: BTreeSet<u64>,
    /// APEX in adaptive isolation: background work is held only while its
    /// window is cut, which the harness does not see, so the hold deadline
    /// is checked by the drain (nothing starves) rather than batch by
    /// batch.
    adaptive: bool,
}

impl Harness {
    fn new(kind: PolicyKind) -> Self {
        Self {
            s: new_scheduler(kind, SchedConfig::default()),
            kind,
            now: 1_000_000,
            next_tag: 0,
            queues: Vec::new(),
            pending: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            done: BTreeSet::new(),
            cancelled: BTreeSet::new(),
            ring: 32,
            changed: BTreeSet::new(),
            isolation: None,
            held_since: None,
            background_in_flight: BTreeSet::new(),
            adaptive: false,
        }
    }

    /// APEX in adaptive isolation, holding background work for at most
    /// `max_hold_ns` while its window is cut; a small step and open size
    /// so that the window moves within a short run.
    fn adaptive(max_hold_ns: u64, step: u64, late_permille: u64) -> Self {
        let params = ApexParams {
            adaptive_isolation: true,
            adaptive_step_bytes: step,
            adaptive_open_bytes: step.saturating_mul(4),
            adaptive_late_permille: late_permille,
            isolation_max_hold_ns: max_hold_ns,
            ..ApexParams::default()
        };
        let mut h = Self::new(PolicyKind::Apex);
        h.s = Box::new(Apex::new(SchedConfig::default(), ApexPolicy::new(params)));
        h.isolation = Some(max_hold_ns);
        h.adaptive = true;
        h
    }

    /// APEX in isolation mode, holding background work for at most
    /// `max_hold_ns`.
    fn isolating(max_hold_ns: u64) -> Self {
        let params = ApexParams {
            isolation: true,
            isolation_max_hold_ns: max_hold_ns,
            ..ApexParams::default()
        };
        let mut h = Self::new(PolicyKind::Apex);
        h.s = Box::new(Apex::new(SchedConfig::default(), ApexPolicy::new(params)));
        h.isolation = Some(max_hold_ns);
        h
    }

    fn class_of(&self, q: QueueId) -> Option<Class> {
        self.s.queue(q).map(|v| v.config.class)
    }

    fn background_waiting(&self) -> bool {
        self.pending
            .values()
            .any(|&(q, _)| self.class_of(q) == Some(Class::Background))
    }

    fn pick(&self, i: u8) -> QueueId {
        if self.queues.is_empty() {
            QueueId(u32::from(i))
        } else if i == 255 {
            QueueId(9999) // an unknown queue
        } else {
            self.queues[i as usize % self.queues.len()]
        }
    }

    fn check_tokens(&self) -> Result<(), TestCaseError> {
        for q in self.s.queue_ids() {
            let v = self.s.queue(q).unwrap();
            let depth = v.config.reservation.depth as i64;
            prop_assert!(
                v.tokens <= depth,
                "queue {q:?} tokens {} above depth {depth}",
                v.tokens
            );
            prop_assert!(
                v.tokens >= v.token_floor,
                "queue {q:?} tokens {} below floor",
                v.tokens
            );
            prop_assert_eq!(v.token_floor, -depth);
        }
        Ok(())
    }

    fn batch(&mut self, room: usize) -> Result<usize, TestCaseError> {
        let room = room.min(self.ring.saturating_sub(self.in_flight.len()));
        let pending_before = self.s.pending();
        prop_assert_eq!(pending_before, self.pending.len());
        let tags = self.s.build_batch(self.now, room);
        prop_assert!(
            tags.len() <= room,
            "batch of {} for room {room}",
            tags.len()
        );
        let out_of_background: Vec<u64> = tags
            .iter()
            .copied()
            .filter(|t| {
                self.pending
                    .get(t)
                    .is_some_and(|&(q, _)| self.class_of(q) == Some(Class::Background))
            })
            .collect();
        let background_out = !out_of_background.is_empty();
        let background_was_in_flight = !self.background_in_flight.is_empty();
        self.background_in_flight.extend(out_of_background);
        // Each tag comes out once, and only a waiting one.
        let mut per_queue_last: BTreeMap<QueueId, u64> = BTreeMap::new();
        for &t in &tags {
            let Some((q, dl)) = self.pending.remove(&t) else {
                return Err(TestCaseError::fail(format!("tag {t} out but not waiting")));
            };
            prop_assert!(self.in_flight.insert(t));
            // EDF inside a real-time queue (APEX): deadlines of one queue come
            // out in order...
            if self.kind == PolicyKind::Apex
                && !self.changed.contains(&q)
                && self
                    .s
                    .queue(q)
                    .is_some_and(|v| v.config.class == Class::RealTime)
            {
                let d = dl.unwrap_or(u64::MAX);
                if let Some(&last) = per_queue_last.get(&q) {
                    prop_assert!(d >= last, "EDF broken in queue {q:?}: {d} after {last}");
                }
                per_queue_last.insert(q, d);
            }
        }
        // ... and none left waiting in that queue has an earlier deadline.
        for (&q, &last) in &per_queue_last {
            for (_, &(pq, pd)) in self.pending.iter() {
                if pq == q {
                    prop_assert!(
                        pd.unwrap_or(u64::MAX) >= last,
                        "queue {q:?} left an earlier deadline waiting"
                    );
                }
            }
        }
        // Isolation mode: background work held with room on the ring goes
        // by its hold deadline, and the scheduler says when to look again.
        if let (Some(max_hold), true, false) =
            (self.isolation, room.min(pending_before) > 0, self.adaptive)
        {
            if background_out || background_was_in_flight || !self.background_waiting() {
                self.held_since = None;
            } else if tags.len() < room {
                let since = *self.held_since.get_or_insert(self.now);
                prop_assert!(
                    self.now < since + max_hold.max(1_000),
                    "background work held since {since} past its hold deadline (now {})",
                    self.now
                );
                let wake = self.s.next_wakeup();
                prop_assert!(
                    wake.is_some_and(|w| w > self.now && w <= since + max_hold.max(1_000)),
                    "holding since {since} at {} with wake-up {wake:?}",
                    self.now
                );
            }
        }
        // Work conservation: room is left only when nothing waits, or, for
        // APEX with real-time queues and mq-deadline's priority levels, when
        // the device is busy; APEX in isolation mode may leave the device
        // idle with background work only, and says until when.
        let idle_hold = self.isolation.is_some() && self.in_flight.is_empty();
        if idle_hold && tags.len() < room && !self.pending.is_empty() {
            let all_background = self
                .pending
                .values()
                .all(|&(q, _)| self.class_of(q) == Some(Class::Background));
            prop_assert!(
                all_background,
                "isolation mode left the device idle with latency-sensitive work waiting"
            );
            prop_assert!(
                self.s.next_wakeup().is_some(),
                "device idle with background work held and no wake-up time"
            );
        } else if tags.len() < room && !self.pending.is_empty() {
            match self.kind {
                PolicyKind::Fifo | PolicyKind::Prio => {
                    return Err(TestCaseError::fail(format!(
                        "{} left {} slots free with {} waiting",
                        self.kind.name(),
                        room - tags.len(),
                        self.pending.len()
                    )))
                }
                PolicyKind::Apex | PolicyKind::Deadline => {
                    prop_assert!(
                        !self.in_flight.is_empty(),
                        "{}: device idle with {} waiting and {} free slots",
                        self.kind.name(),
                        self.pending.len(),
                        room - tags.len()
                    );
                }
            }
            if self.kind == PolicyKind::Apex {
                let has_rt = self.s.queue_ids().iter().any(|&q| {
                    self.s
                        .queue(q)
                        .is_some_and(|v| v.config.class == Class::RealTime)
                });
                let has_interactive = self.s.queue_ids().iter().any(|&q| {
                    self.s
                        .queue(q)
                        .is_some_and(|v| v.config.class == Class::Interactive)
                });
                prop_assert!(
                    has_rt || (self.isolation.is_some() && has_interactive),
                    "apex held work back without a latency-sensitive queue"
                );
            }
        }
        Ok(tags.len())
    }

    fn complete(&mut self, which: u8) -> Result<(), TestCaseError> {
        if self.in_flight.is_empty() {
            // Completing a tag that is not in flight is refused.
            let t = self.pending.keys().next().copied().unwrap_or(u64::MAX);
            prop_assert!(self.s.complete(t, self.now).is_err());
            return Ok(());
        }
        let i = which as usize % self.in_flight.len();
        let t = *self.in_flight.iter().nth(i).unwrap();
        self.in_flight.remove(&t);
        self.background_in_flight.remove(&t);
        let r = self.s.complete(t, self.now);
        prop_assert!(r.is_ok(), "completion of {t} refused: {r:?}");
        prop_assert!(self.done.insert(t));
        // A second completion is refused.
        prop_assert!(self.s.complete(t, self.now).is_err());
        if r.unwrap().queue_removed {
            let q = r.unwrap().queue;
            self.queues.retain(|&x| x != q);
        }
        Ok(())
    }

    fn apply(&mut self, a: &Action) -> Result<(), TestCaseError> {
        match *a {
            Action::Create {
                class,
                rate_permille,
                depth_us,
                deadline_us,
                prio,
            } => {
                let mut c = config(class, rate_permille, depth_us, deadline_us);
                c.priority = prio;
                if let Ok(q) = self.s.create_queue(c, self.now) {
                    prop_assert!(!self.queues.contains(&q));
                    self.queues.push(q);
                } else {
                    prop_assert!(c.validate().is_err() || c.class == Class::RealTime);
                }
            }
            Action::Change {
                queue,
                class,
                rate_permille,
                depth_us,
                deadline_us,
            } => {
                let q = self.pick(queue);
                self.changed.insert(q);
                let _ = self.s.change_queue(
                    q,
                    config(class, rate_permille, depth_us, deadline_us),
                    self.now,
                );
            }
            Action::Remove { queue } => {
                let q = self.pick(queue);
                match self.s.remove_queue(q, self.now) {
                    Ok(Removal::Removed) => {
                        prop_assert!(self.pending.values().all(|&(pq, _)| pq != q));
                        self.queues.retain(|&x| x != q);
                        prop_assert!(self.s.queue(q).is_none());
                    }
                    Ok(Removal::Draining { pending, in_flight }) => {
                        prop_assert!(pending + in_flight > 0);
                        prop_assert!(self.s.queue(q).unwrap().draining);
                    }
                    Err(_) => prop_assert!(self.s.queue(q).is_none()),
                }
            }
            Action::Submit {
                queue,
                op,
                kib,
                deadline_us,
            } => {
                let q = self.pick(queue);
                // Now and then reuse a tag in use: it must be refused.
                let dup = kib % 7 == 0 && !self.pending.is_empty();
                let tag = if dup {
                    *self.pending.keys().next().unwrap()
                } else {
                    self.next_tag
                };
                let deadline =
                    deadline_us.map(|d| (self.now as i64 + d as i64 * 1000).max(0) as u64);
                let req = Request {
                    queue: q,
                    op: Op::ALL[op as usize % 4],
                    sector: u64::from(kib) * 2,
                    bytes: u64::from(kib) * 1024,
                    deadline,
                    tag,
                };
                let accepts = self.s.queue(q).is_some_and(|v| !v.draining);
                match self.s.submit(req, self.now) {
                    Ok(()) => {
                        prop_assert!(!dup && accepts);
                        let dl = deadline.or_else(|| {
                            self.s
                                .queue(q)
                                .and_then(|v| v.config.deadline_ns)
                                .map(|d| self.now + d)
                        });
                        self.pending.insert(tag, (q, dl));
                        self.next_tag += 1;
                    }
                    Err(e) => {
                        prop_assert!(dup || !accepts, "refused: {e}");
                        prop_assert_eq!(e.request, req, "the request is handed back");
                    }
                }
            }
            Action::Batch { room } => {
                self.batch(room as usize)?;
            }
            Action::Complete { which } => self.complete(which)?,
            Action::Advance { us } => self.now += u64::from(us) * 1000,
            Action::Cancel { which, in_flight } => {
                let set: Vec<u64> = if in_flight {
                    self.in_flight.iter().copied().collect()
                } else {
                    self.pending.keys().copied().collect()
                };
                if set.is_empty() {
                    prop_assert!(self.s.cancel(u64::MAX, self.now).is_err());
                } else {
                    let t = set[which as usize % set.len()];
                    let q = self.s.cancel(t, self.now);
                    prop_assert!(q.is_ok(), "cancel of {t}: {q:?}");
                    self.pending.remove(&t);
                    self.in_flight.remove(&t);
                    self.background_in_flight.remove(&t);
                    prop_assert!(self.cancelled.insert(t));
                    prop_assert!(self.s.cancel(t, self.now).is_err());
                    prop_assert!(self.s.complete(t, self.now).is_err());
                    if !self.background_waiting() {
                        self.held_since = None;
                    }
                    let q = q.unwrap();
                    if self.s.queue(q).is_none() {
                        self.queues.retain(|&x| x != q);
                    }
                }
            }
        }
        prop_assert_eq!(self.s.pending(), self.pending.len());
        prop_assert_eq!(self.s.in_flight(), self.in_flight.len());
        self.check_tokens()
    }

    /// No request starves: with arrivals stopped, batches and completions
    /// drain everything in a bounded number of rounds.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        let mut rounds = 0;
        while !self.pending.is_empty() || !self.in_flight.is_empty() {
            rounds += 1;
            prop_assert!(
                rounds < 10_000,
                "{} requests never dispatched",
                self.pending.len()
            );
            self.now += 100_000;
            // A scheduler that holds work says until when: go there.
            if self.isolation.is_some() {
                if let Some(w) = self.s.next_wakeup() {
                    self.now = self.now.max(w);
                }
            }
            self.batch(self.ring)?;
            while !self.in_flight.is_empty() {
                self.complete(0)?;
            }
            self.check_tokens()?;
        }
        prop_assert!(self.done.is_disjoint(&self.cancelled));
        prop_assert_eq!(
            (self.done.len() + self.cancelled.len()) as u64,
            self.next_tag,
            "every request came out exactly once or was cancelled"
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(kind in 0usize..4, actions in proptest::collection::vec(action(), 1..300)) {
        let mut h = Harness::new(PolicyKind::ALL[kind]);
        for a in &actions {
            h.apply(a)?;
        }
        h.drain()?;
    }

    /// APEX in isolation mode: the same invariants, background work held
    /// with room on the ring goes by its hold deadline (and the scheduler
    /// announces a wake-up no later than it), the device idles only with
    /// background work held, and nothing starves.
    #[test]
    fn isolation_mode_holds_are_bounded(
        max_hold_us in 1u64..60_000,
        actions in proptest::collection::vec(action(), 1..300),
    ) {
        let mut h = Harness::isolating(max_hold_us * 1000);
        for a in &actions {
            h.apply(a)?;
        }
        h.drain()?;
    }

    /// APEX in adaptive isolation: the same invariants (the device idles
    /// only with background work held, and says until when; nothing
    /// starves: the drain completes everything), with the window cut and
    /// grown by whatever latencies the actions give.
    #[test]
    fn adaptive_isolation_keeps_the_invariants(
        max_hold_us in 1u64..60_000,
        step_kib in 4u64..2048,
        late_permille in 0u64..1000,
        actions in proptest::collection::vec(action(), 1..300),
    ) {
        let mut h = Harness::adaptive(max_hold_us * 1000, step_kib * 1024, late_permille);
        for a in &actions {
            h.apply(a)?;
        }
        h.drain()?;
    }
}

/// Under a sustained overload of real-time and interactive work, a
/// background queue with a reservation is still served at about its rate,
/// and an interactive queue without one is not starved by background work.
#[test]
fn reservation_prevents_starvation_under_overload() {
    let mut s = new_scheduler(PolicyKind::Apex, SchedConfig::default());
    let rt = s
        .create_queue(
            QueueConfig::real_time(1_000_000_000, Reservation::share_permille(300, 1_000_000)),
            0,
        )
        .unwrap();
    let inter = s.create_queue(QueueConfig::interactive(), 0).unwrap();
    // 10 % of the device, in 4 KiB writes (about 54 µs each by the prior).
    let bg = s
        .create_queue(
            QueueConfig::background().with_reservation(Reservation::share_permille(100, 200_000)),
            0,
        )
        .unwrap();
    let mut tag = 0u64;
    let mut now = 0u64;
    let mut in_flight: Vec<u64> = Vec::new();
    let mut bg_done = 0u64;
    let mut bg_tags = BTreeSet::new();
    // 1 s of simulated time, 8 slots, every request completing after 100 µs:
    // far more offered than served.
    while now < 1_000_000_000 {
        for q in [
            rt, rt, rt, rt, inter, inter, inter, inter, inter, inter, inter, inter, bg, bg,
        ] {
            let r = Request {
                queue: q,
                op: Op::Write,
                sector: 0,
                bytes: 4096,
                deadline: None,
                tag,
            };
            if q == bg {
                bg_tags.insert(tag);
            }
            s.submit(r, now).unwrap();
            tag += 1;
        }
        let b = s.build_batch(now, 8 - in_flight.len());
        in_flight.extend(b);
        now += 100_000;
        for t in in_flight.drain(..) {
            s.complete(t, now).unwrap();
            if bg_tags.contains(&t) {
                bg_done += 1;
            }
        }
    }
    let v = s.queue(bg).unwrap();
    // The reservation pays for ~10^8 units/s / ~54k units = ~1800 requests/s.
    assert!(
        bg_done > 1000,
        "background got only {bg_done} requests in 1 s under overload"
    );
    assert!(v.stats.dispatched_reserved > 1000, "{:?}", v.stats);
    let inter_done = s.queue(inter).unwrap().stats.completed;
    assert!(inter_done > 10_000, "interactive starved: {inter_done}");
}
