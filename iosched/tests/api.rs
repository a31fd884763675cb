//! The scheduler's interface: bad input, queue life cycle, ordering and
//! statistics.

use iosched::{
    new_scheduler, Apex, ApexParams, ApexPolicy, Class, CostPrior, Deadline, DeadlineParams,
    DeadlinePolicy, Error, Op, PolicyKind, QueueConfig, QueueId, Removal, Request, Reservation,
    SchedConfig, Scheduler, MAX_DEADLINE_NS, MAX_DEPTH, MAX_RATE,
};

const MS: u64 = 1_000_000;

fn req(queue: QueueId, tag: u64) -> Request {
    Request {
        queue,
        op: Op::Read,
        sector: tag * 8,
        bytes: 4096,
        deadline: None,
        tag,
    }
}

fn rt(deadline_ms: u64, permille: u64) -> QueueConfig {
    QueueConfig::real_time(deadline_ms * MS, Reservation::share_permille(permille, MS))
}

fn apex() -> Apex {
    Apex::new(
        SchedConfig {
            cost: CostPrior::uniform(10_000, 0),
            ..SchedConfig::default()
        },
        ApexPolicy::default(),
    )
}

#[test]
fn impossible_parameters_are_refused() {
    let mut s = apex();
    let cases = [
        (
            QueueConfig::interactive().with_reservation(Reservation {
                rate_per_sec: 0,
                depth: 5,
            }),
            Error::ZeroRate,
        ),
        (
            QueueConfig::interactive().with_reservation(Reservation {
                rate_per_sec: 5,
                depth: 0,
            }),
            Error::ZeroDepth,
        ),
        (
            QueueConfig::interactive().with_reservation(Reservation {
                rate_per_sec: MAX_RATE + 1,
                depth: 1,
            }),
            Error::RateTooLarge { rate: MAX_RATE + 1 },
        ),
        (
            QueueConfig::interactive().with_reservation(Reservation {
                rate_per_sec: u64::MAX,
                depth: u64::MAX,
            }),
            Error::RateTooLarge { rate: u64::MAX },
        ),
        (
            QueueConfig::interactive().with_reservation(Reservation {
                rate_per_sec: 1,
                depth: MAX_DEPTH + 1,
            }),
            Error::DepthTooLarge {
                depth: MAX_DEPTH + 1,
            },
        ),
        (
            QueueConfig::real_time(MS, Reservation::NONE),
            Error::ZeroRate,
        ),
        (
            QueueConfig::interactive().with_deadline(0),
            Error::ZeroDeadline,
        ),
        (
            QueueConfig::interactive().with_deadline(MAX_DEADLINE_NS + 1),
            Error::DeadlineTooLarge {
                deadline_ns: MAX_DEADLINE_NS + 1,
            },
        ),
        (
            QueueConfig {
                class: Class::RealTime,
                reservation: Reservation::share_permille(10, MS),
                deadline_ns: None,
                priority: 0,
            },
            Error::MissingDeadline,
        ),
    ];
    for (cfg, want) in cases {
        assert_eq!(s.create_queue(cfg, 0), Err(want), "{cfg:?}");
        // The message says what to do.
        assert!(want.to_string().len() > 20);
    }
    assert!(s.queue_ids().is_empty());
    // A good queue, then a bad change leaves it as it was.
    let q = s.create_queue(QueueConfig::background(), 0).unwrap();
    assert_eq!(
        s.change_queue(q, QueueConfig::interactive().with_deadline(0), 0),
        Err(Error::ZeroDeadline)
    );
    assert_eq!(s.queue(q).unwrap().config.class, Class::Background);
}

#[test]
fn admission_control_refuses_real_time_beyond_the_share() {
    let mut s = Apex::new(
        SchedConfig::default(),
        ApexPolicy::new(ApexParams {
            rt_share_permille: 800,
            ..ApexParams::default()
        }),
    );
    let a = s.create_queue(rt(10, 500), 0).unwrap();
    let _b = s.create_queue(rt(10, 300), 0).unwrap();
    let err = s.create_queue(rt(10, 1), 0).unwrap_err();
    assert_eq!(
        err,
        Error::AdmissionRefused {
            requested: 1_000_000,
            available: 0
        }
    );
    // Best-effort reservations are not admitted against the share.
    s.create_queue(
        QueueConfig::background().with_reservation(Reservation::share_permille(900, MS)),
        0,
    )
    .unwrap();
    // Growing a real-time queue is checked without counting its old rate.
    s.change_queue(a, rt(10, 500), 0).unwrap();
    assert!(matches!(
        s.change_queue(a, rt(10, 501), 0),
        Err(Error::AdmissionRefused { .. })
    ));
    // Removing a queue frees its share.
    assert_eq!(s.remove_queue(a, 0), Ok(Removal::Removed));
    s.create_queue(rt(10, 400), 0).unwrap();
}

#[test]
fn bad_submissions_hand_the_request_back() {
    let mut s = apex();
    let q = s.create_queue(QueueConfig::interactive(), 0).unwrap();
    let unknown = req(QueueId(77), 1);
    let e = s.submit(unknown, 0).unwrap_err();
    assert_eq!(e.error, Error::UnknownQueue(QueueId(77)));
    assert_eq!(e.request, unknown);
    s.submit(req(q, 1), 0).unwrap();
    let e = s.submit(req(q, 1), 0).unwrap_err();
    assert_eq!(e.error, Error::DuplicateTag(1));
    // Not dispatched yet: cannot complete.
    assert_eq!(s.complete(1, 0), Err(Error::NotDispatched(1)));
    assert_eq!(s.complete(2, 0), Err(Error::UnknownTag(2)));
    assert_eq!(s.build_batch(0, 4), vec![1]);
    // In flight: the tag is still in use.
    assert_eq!(
        s.submit(req(q, 1), 0).unwrap_err().error,
        Error::DuplicateTag(1)
    );
    s.complete(1, 10).unwrap();
    assert_eq!(s.complete(1, 10), Err(Error::UnknownTag(1)));
    // Done: the tag may be used again.
    s.submit(req(q, 1), 20).unwrap();
}

#[test]
fn request_limit_is_enforced() {
    let mut s = Apex::new(
        SchedConfig {
            max_requests: 3,
            max_queues: 1,
            ..SchedConfig::default()
        },
        ApexPolicy::default(),
    );
    let q = s.create_queue(QueueConfig::interactive(), 0).unwrap();
    assert_eq!(
        s.create_queue(QueueConfig::interactive(), 0),
        Err(Error::TooManyQueues { limit: 1 })
    );
    for t in 0..3 {
        s.submit(req(q, t), 0).unwrap();
    }
    assert_eq!(
        s.submit(req(q, 3), 0).unwrap_err().error,
        Error::TooManyRequests { limit: 3 }
    );
}

#[test]
fn removing_a_busy_queue_drains_it() {
    for kind in PolicyKind::ALL {
        let mut s = new_scheduler(kind, SchedConfig::default());
        let q = s.create_queue(QueueConfig::background(), 0).unwrap();
        for t in 0..4 {
            s.submit(req(q, t), 0).unwrap();
        }
        let first = s.build_batch(0, 1);
        assert_eq!(first.len(), 1, "{}", kind.name());
        assert_eq!(
            s.remove_queue(q, 0),
            Ok(Removal::Draining {
                pending: 3,
                in_flight: 1
            })
        );
        assert_eq!(
            s.submit(req(q, 9), 0).unwrap_err().error,
            Error::QueueDraining(q)
        );
        assert!(s.change_queue(q, QueueConfig::interactive(), 0).is_err());
        // Everything it held still comes out.
        let mut out = first;
        out.extend(s.build_batch(1, 8));
        out.sort_unstable();
        assert_eq!(out, vec![0, 1, 2, 3], "{}", kind.name());
        for t in 0..3 {
            assert!(!s.complete(t, 5).unwrap().queue_removed);
        }
        assert!(s.queue(q).is_some());
        assert!(s.complete(3, 5).unwrap().queue_removed);
        assert!(s.queue(q).is_none());
        assert_eq!(s.remove_queue(q, 6), Err(Error::UnknownQueue(q)));
    }
}

#[test]
fn edf_inside_a_real_time_queue_and_past_deadlines() {
    let mut s = apex();
    let q = s.create_queue(rt(100, 100), 0).unwrap();
    let now = 50 * MS;
    let deadlines = [
        Some(90 * MS),
        None,
        Some(60 * MS),
        Some(10 * MS),
        Some(70 * MS),
    ];
    for (t, d) in deadlines.iter().enumerate() {
        let mut r = req(q, t as u64);
        r.deadline = *d;
        s.submit(r, now).unwrap();
    }
    // The past deadline (10 ms) is accepted and goes first; the default
    // deadline (now + 100 ms) last.
    assert_eq!(s.build_batch(now, 8), vec![3, 2, 4, 0, 1]);
    let c = s.complete(3, now + MS).unwrap();
    assert_eq!(c.lateness_ns, Some(41 * MS));
    let c = s.complete(2, now + MS).unwrap();
    assert_eq!(c.lateness_ns, None);
    let st = s.queue(q).unwrap().stats;
    assert_eq!(st.deadline_misses, 1);
    assert_eq!(st.lateness_max_ns, 41 * MS);
    assert_eq!(st.completed, 2);
    assert_eq!(st.bytes, 8192);
    assert_eq!(st.latency.count(), 2);
}

#[test]
fn batches_go_in_priority_order() {
    let mut s = apex();
    let bg = s.create_queue(QueueConfig::background(), 0).unwrap();
    let it = s.create_queue(QueueConfig::interactive(), 0).unwrap();
    let r = s.create_queue(rt(1000, 100), 0).unwrap();
    s.submit(req(bg, 0), 0).unwrap();
    s.submit(req(it, 1), 0).unwrap();
    s.submit(req(r, 2), 0).unwrap();
    s.submit(req(it, 3), 0).unwrap();
    // The real-time request is paid by its reservation; then work
    // conservation: interactive, then background.
    assert_eq!(s.build_batch(0, 8), vec![2, 1, 3, 0]);
    let st = s.queue(r).unwrap().stats;
    assert_eq!(st.dispatched_reserved, 1);
    assert!(st.tokens_spent > 0);
}

#[test]
fn urgent_requests_overdraw_their_bucket_down_to_the_floor() {
    let mut s = apex();
    // A bucket of 10 µs of device time: one request's cost by the prior.
    let q = s
        .create_queue(
            QueueConfig::real_time(
                MS,
                Reservation {
                    rate_per_sec: 1000,
                    depth: 10_000,
                },
            ),
            0,
        )
        .unwrap();
    for t in 0..5 {
        let mut r = req(q, t);
        r.deadline = Some(1); // already late: urgent
        s.submit(r, 10).unwrap();
    }
    assert_eq!(s.build_batch(10, 8).len(), 5);
    let v = s.queue(q).unwrap();
    assert_eq!(v.tokens, -10_000);
    assert_eq!(v.token_floor, -10_000);
    assert_eq!(v.stats.dispatched_urgent, 5);
}

#[test]
fn real_time_slack_bounds_the_work_on_the_ring() {
    let mut s = apex();
    // Requests cost 10 µs by the prior; a real-time queue with a 100 µs
    // deadline lets 50 µs of work onto the ring.
    let _r = s.create_queue(rt_us(100), 0).unwrap();
    let bg = s.create_queue(QueueConfig::background(), 0).unwrap();
    for t in 0..20 {
        s.submit(req(bg, t), 0).unwrap();
    }
    let b = s.build_batch(0, 32);
    assert_eq!(b.len(), 5, "{b:?}");
    // Nothing more while that work is on the ring.
    assert!(s.build_batch(0, 32).is_empty());
    // A completion makes room for one more.
    s.complete(b[0], 10_000).unwrap();
    assert_eq!(s.build_batch(10_000, 32).len(), 1);

    // Without a real-time queue, the ring fills.
    let mut s = apex();
    let bg = s.create_queue(QueueConfig::background(), 0).unwrap();
    for t in 0..20 {
        s.submit(req(bg, t), 0).unwrap();
    }
    assert_eq!(s.build_batch(0, 32).len(), 20);
}

#[test]
fn an_idle_real_time_queue_stops_bounding_the_work() {
    let mut s = apex();
    // 1 % reserved: a 10 µs request every ms; idle after 16 ms of silence.
    let r = s.create_queue(rt_us(100), 0).unwrap();
    let bg = s.create_queue(QueueConfig::background(), 0).unwrap();
    s.submit(req(r, 0), 0).unwrap();
    assert_eq!(s.build_batch(0, 32), vec![0]);
    s.complete(0, 10_000).unwrap();
    for t in 1..21 {
        s.submit(req(bg, t), 10_000).unwrap();
    }
    // Expected again within 16 ms: the cap holds (50 µs of work).
    let b = s.build_batch(1_000_000, 32);
    assert_eq!(b.len(), 5, "{b:?}");
    for &t in &b {
        s.complete(t, 1_010_000).unwrap();
    }
    assert_eq!(s.build_batch(15_000_000, 32).len(), 5);
    // Silent for longer: idle, the ring fills.
    assert_eq!(s.build_batch(17_000_000, 32).len(), 10);
    // A queue never used yet is expected: it bounds the work however long
    // ago it was created.
    let mut s1 = apex();
    let _r1 = s1.create_queue(rt_us(100), 0).unwrap();
    let bg1 = s1.create_queue(QueueConfig::background(), 0).unwrap();
    for t in 1..21 {
        s1.submit(req(bg1, t), 1_000_000_000).unwrap();
    }
    assert_eq!(s1.build_batch(1_000_000_000, 32).len(), 5);
    // Silence counts from the last completion: a stream waiting for its
    // own completions is not idle. (Its late completion would cut the
    // best-effort throttle, which is not what this checks: off.)
    let mut s3 = Apex::new(
        SchedConfig {
            cost: CostPrior::uniform(10_000, 0),
            ..SchedConfig::default()
        },
        ApexPolicy::new(ApexParams {
            throttle: false,
            ..ApexParams::default()
        }),
    );
    let r3 = s3.create_queue(rt_us(100), 0).unwrap();
    let bg3 = s3.create_queue(QueueConfig::background(), 0).unwrap();
    s3.submit(req(r3, 0), 0).unwrap();
    assert_eq!(s3.build_batch(0, 32), vec![0]);
    s3.complete(0, 30_000_000).unwrap();
    for t in 1..21 {
        s3.submit(req(bg3, t), 30_000_000).unwrap();
    }
    assert_eq!(s3.build_batch(31_000_000, 32).len(), 5);
    // It wakes up: bounded again.
    let mut s2 = apex();
    let r2 = s2.create_queue(rt_us(100), 0).unwrap();
    let bg2 = s2.create_queue(QueueConfig::background(), 0).unwrap();
    s2.submit(req(r2, 0), 20_000_000).unwrap();
    for t in 1..21 {
        s2.submit(req(bg2, t), 20_000_000).unwrap();
    }
    // The real-time request first, then 40 µs more of background work.
    assert_eq!(s2.build_batch(20_000_000, 32).len(), 5);
}

fn rt_us(us: u64) -> QueueConfig {
    QueueConfig::real_time(us * 1000, Reservation::share_permille(10, 100_000))
}

#[test]
fn changing_a_class_moves_waiting_requests() {
    let mut s = apex();
    let a = s.create_queue(QueueConfig::background(), 0).unwrap();
    let b = s.create_queue(QueueConfig::interactive(), 0).unwrap();
    s.submit(req(a, 0), 0).unwrap();
    s.submit(req(b, 1), 0).unwrap();
    s.change_queue(a, QueueConfig::interactive(), 0).unwrap();
    s.change_queue(b, QueueConfig::background(), 0).unwrap();
    assert_eq!(s.build_batch(0, 8), vec![0, 1]);
}

#[test]
fn time_going_backwards_is_harmless() {
    let mut s = apex();
    let q = s.create_queue(rt(10, 100), 1_000 * MS).unwrap();
    s.submit(req(q, 0), 5).unwrap();
    let b = s.build_batch(0, 1);
    assert_eq!(b, vec![0]);
    let c = s.complete(0, 3).unwrap();
    assert_eq!(c.latency_ns, 0);
}

#[test]
fn strict_priority_orders_by_class_then_priority() {
    let mut s = new_scheduler(PolicyKind::Prio, SchedConfig::default());
    let lo = s
        .create_queue(QueueConfig::interactive().with_priority(1), 0)
        .unwrap();
    let hi = s
        .create_queue(QueueConfig::interactive().with_priority(9), 0)
        .unwrap();
    let bg = s
        .create_queue(QueueConfig::background().with_priority(255), 0)
        .unwrap();
    let r = s.create_queue(rt(10, 10), 0).unwrap();
    for (t, q) in [bg, lo, hi, r, lo].into_iter().enumerate() {
        s.submit(req(q, t as u64), 0).unwrap();
    }
    assert_eq!(s.build_batch(0, 8), vec![3, 2, 1, 4, 0]);
}

#[test]
fn deadline_policy_batches_sequential_reads_and_expires_writes() {
    let params = DeadlineParams {
        fifo_batch: 4,
        ..DeadlineParams::default()
    };
    let mut s = Deadline::new(SchedConfig::default(), DeadlinePolicy::new(params));
    let q = s.create_queue(QueueConfig::interactive(), 0).unwrap();
    // Reads at sectors 800, 0, 8, 16 arrive in that order; a write too.
    for (tag, sector) in [800u64, 0, 8, 16].into_iter().enumerate() {
        s.submit(
            Request {
                sector,
                ..req(q, tag as u64)
            },
            0,
        )
        .unwrap();
    }
    s.submit(
        Request {
            op: Op::Write,
            sector: 5000,
            ..req(q, 4)
        },
        0,
    )
    .unwrap();
    // As in Linux, the first batch starts from position 0 in sector order.
    assert_eq!(s.build_batch(0, 1), vec![1]);
    s.complete(1, 1).unwrap();
    // The batch goes on upwards (8, 16, 800) up to fifo_batch = 4 requests.
    assert_eq!(s.build_batch(2, 8), vec![2, 3, 0, 4]);

    // An expired write jumps ahead of reads once writes have starved.
    let mut s = Deadline::new(
        SchedConfig::default(),
        DeadlinePolicy::new(DeadlineParams::default()),
    );
    let q = s.create_queue(QueueConfig::interactive(), 0).unwrap();
    s.submit(
        Request {
            op: Op::Write,
            sector: 0,
            ..req(q, 100)
        },
        0,
    )
    .unwrap();
    let mut n = 0;
    let mut got_write_at = None;
    for round in 0..10u64 {
        for i in 0..20 {
            s.submit(
                Request {
                    sector: 1_000_000 + (round * 20 + i) * 8,
                    ..req(q, n)
                },
                0,
            )
            .unwrap();
            n += 1;
        }
        let now = 6_000 * MS + round;
        let b = s.build_batch(now, 16);
        if b.contains(&100) {
            got_write_at = Some(round);
            break;
        }
        for t in b {
            s.complete(t, now).unwrap();
        }
    }
    // The first batch continues from position 0 without a choice of
    // direction; then reads are chosen twice over the waiting write
    // (writes_starved = 2), and the third choice is the write.
    assert_eq!(got_write_at, Some(3));
}

#[test]
fn deadline_policy_serves_higher_levels_first() {
    let mut s = new_scheduler(PolicyKind::Deadline, SchedConfig::default());
    let bg = s.create_queue(QueueConfig::background(), 0).unwrap();
    let r = s.create_queue(rt(10, 10), 0).unwrap();
    s.submit(req(bg, 0), 0).unwrap();
    s.submit(req(r, 1), 0).unwrap();
    // The real-time level goes; the idle level waits while it is in flight,
    // as in mq-deadline.
    assert_eq!(s.build_batch(0, 8), vec![1]);
    assert!(s.build_batch(0, 8).is_empty());
    s.complete(1, 5).unwrap();
    assert_eq!(s.build_batch(5, 8), vec![0]);
}

#[test]
fn reservation_use_is_reported() {
    let mut s = apex();
    // 10 % of the device, used at a tenth: one 10 µs request per ms.
    let q = s
        .create_queue(
            QueueConfig::interactive().with_reservation(Reservation::share_permille(100, 100_000)),
            0,
        )
        .unwrap();
    for t in 0..100u64 {
        let now = t * MS;
        s.submit(req(q, t), now).unwrap();
        for tag in s.build_batch(now, 8) {
            s.complete(tag, now + 10_000).unwrap();
        }
    }
    let st = s.queue(q).unwrap().stats;
    assert_eq!(st.dispatched_reserved, 100);
    assert!(st.tokens_offered >= 99 * 100_000, "{st:?}");
    let used = st.reservation_use_permille().unwrap();
    assert!(
        (50..200).contains(&used),
        "used {used} per-mille of a reservation used at a tenth"
    );
}

#[test]
fn cancel_takes_requests_back() {
    for kind in PolicyKind::ALL {
        let mut s = new_scheduler(kind, SchedConfig::default());
        let q = s.create_queue(rt(10, 100), 0).unwrap();
        for t in 0..4 {
            s.submit(req(q, t), 0).unwrap();
        }
        // A waiting one leaves and never comes out.
        assert_eq!(s.cancel(2, 0), Ok(q));
        assert_eq!(s.cancel(2, 0), Err(Error::UnknownTag(2)));
        let b = s.build_batch(0, 1);
        assert_eq!(b.len(), 1);
        // An in-flight one is forgotten: no completion, no latency.
        assert_eq!(s.cancel(b[0], 5), Ok(q));
        assert_eq!(s.complete(b[0], 6), Err(Error::UnknownTag(b[0])));
        let st = &s.queue(q).unwrap().stats;
        assert_eq!((st.cancelled, st.completed, st.latency.count()), (2, 0, 0));
        // A draining queue goes away with its last request, cancelled or not.
        assert!(matches!(s.remove_queue(q, 7), Ok(Removal::Draining { .. })));
        let mut rest = s.build_batch(8, 8);
        rest.sort_unstable();
        let expect: Vec<u64> = (0..4).filter(|&t| t != 2 && t != b[0]).collect();
        assert_eq!(rest, expect, "{}", kind.name());
        s.complete(rest[0], 9).unwrap();
        assert_eq!(s.cancel(rest[1], 9), Ok(q));
        assert!(s.queue(q).is_none(), "{}", kind.name());
        assert_eq!(s.pending() + s.in_flight(), 0);
    }
}

/// A ring of 32 slots in front of `s`, in steps of 50 us: every
/// millisecond a real-time read of `r` that completes `rt_latency` after
/// it goes on the ring, and whatever best-effort work the scheduler lets
/// on, each completing 50 us after it went.
struct Rig {
    s: Apex,
    r: QueueId,
    bg: QueueId,
    bg_tag: u64,
    /// (completion time, tag, real-time)
    out: Vec<(u64, u64, bool)>,
    tag: u64,
    now: u64,
}

impl Rig {
    fn new(params: ApexParams) -> Self {
        let mut s = Apex::new(
            SchedConfig {
                cost: CostPrior::uniform(10_000, 0),
                ..SchedConfig::default()
            },
            ApexPolicy::new(params),
        );
        // 10 ms deadlines: the bound lets 5 ms of work (500 requests of
        // the prior's 10 us) onto the ring, more than the ring holds.
        let r = s.create_queue(rt(10, 100), 0).unwrap();
        let bg = s.create_queue(QueueConfig::background(), 0).unwrap();
        Rig {
            s,
            r,
            bg,
            bg_tag: 1_000_000,
            out: Vec::new(),
            tag: 0,
            now: 0,
        }
    }

    /// Runs `ms` milliseconds; returns the best-effort requests dispatched.
    fn run(&mut self, ms: u64, rt_latency: u64) -> usize {
        let mut be = 0;
        for step in 0..ms * 20 {
            self.now += 50_000;
            self.out.sort_unstable();
            while let Some(&(at, t, _)) = self.out.first() {
                if at > self.now {
                    break;
                }
                self.out.remove(0);
                self.s.complete(t, at).unwrap();
            }
            // The best-effort queue never runs dry.
            while self.s.pending() < 1000 {
                self.s.submit(req(self.bg, self.bg_tag), self.now).unwrap();
                self.bg_tag += 1;
            }
            if step % 20 == 0 {
                self.s.submit(req(self.r, self.tag), self.now).unwrap();
                self.tag += 1;
            }
            let room = 32 - self.out.len();
            for t in self.s.build_batch(self.now, room) {
                let rt = t < 1_000_000;
                be += usize::from(!rt);
                let at = self.now + if rt { rt_latency } else { 50_000 };
                self.out.push((at, t, rt));
            }
        }
        be
    }
}

#[test]
fn late_real_time_completions_throttle_best_effort_work() {
    // The drain line would learn the late reads too and shrink the bound:
    // off, so that what is seen is the throttle's doing.
    let base = ApexParams {
        drain_calibrated: false,
        ..ApexParams::default()
    };
    let mut g = Rig::new(base);
    assert_eq!(
        g.s.throttle().map(|t| (t.rate_per_sec, t.cuts)),
        Some((None, 0))
    );
    // Real-time reads well within their deadline: the throttle stays open,
    // best-effort work keeps the ring full.
    let open = g.run(20, 200_000);
    assert_eq!(g.s.throttle().map(|t| t.cuts), Some(0));
    assert!(
        open >= 20 * 20 * 30,
        "{open} best-effort requests in 20 ms with the throttle open"
    );
    // Reads take 8 ms, more than half their deadline: the rate is cut...
    g.run(10, 8 * MS);
    let t = g.s.throttle().unwrap();
    assert!(t.cuts >= 1, "{t:?}");
    let first = t
        .rate_per_sec
        .expect("late completions left the throttle open");
    // ... and cut again while they stay late, down to its floor (5 % of
    // the capacity).
    let late = g.run(100, 8 * MS);
    let t = g.s.throttle().unwrap();
    assert!(t.cuts > 3, "{t:?}");
    let floor = t.rate_per_sec.unwrap();
    assert!(floor < first, "{floor} after {first}");
    let cap = g.s.cost_model().capacity_per_sec();
    // (The floor is taken from the capacity measured at the cut, which
    // moves a little since.)
    assert!(floor >= cap / 40, "cut below its floor: {floor} of {cap}");
    assert!(
        floor <= cap / 10,
        "not cut down to its floor: {floor} of {cap}"
    );
    // What went is what the rate pays for (plus one request whenever the
    // ring was empty): far from the open ring's.
    assert!(
        late * 10 < open * 5,
        "{late} best-effort requests in 100 ms while throttled, {open} in 20 ms open"
    );
    // Reads on time again: the rate climbs back and the throttle opens.
    g.run(400, 200_000);
    assert_eq!(g.s.throttle().unwrap().rate_per_sec, None);
    let again = g.run(20, 200_000);
    assert!(
        again >= 20 * 20 * 30,
        "{again} after the throttle opened again"
    );
    // Off, it never cuts.
    let mut off = Rig::new(ApexParams {
        throttle: false,
        ..base
    });
    let n = off.run(50, 8 * MS);
    assert_eq!(off.s.throttle(), None);
    // (Eight of the 32 slots hold the slow reads.)
    assert!(
        n >= 50 * 20 * 22,
        "{n} best-effort requests in 50 ms with the throttle off"
    );
}

#[test]
fn the_throttle_in_slow_start_begins_at_its_floor() {
    let base = ApexParams {
        drain_calibrated: false,
        throttle_slow_start: true,
        ..ApexParams::default()
    };
    let mut g = Rig::new(base);
    // Nothing is throttled before real-time work shows up.
    assert_eq!(
        g.s.throttle().map(|t| (t.rate_per_sec, t.cuts)),
        Some((None, 0))
    );
    // At its floor in the first window (10 ms, the reads' deadline).
    let first = g.run(10, 200_000);
    let t = g.s.throttle().unwrap();
    assert_eq!(t.cuts, 0);
    assert!(t.rate_per_sec.is_some(), "{t:?}");
    // Doubling every window on time: open within five more.
    g.run(60, 200_000);
    assert_eq!(
        g.s.throttle().map(|t| (t.rate_per_sec, t.cuts)),
        Some((None, 0))
    );
    let open = g.run(10, 200_000);
    assert!(
        first * 4 < open,
        "{first} best-effort requests in the first 10 ms, {open} in 10 ms open"
    );
}

fn isolating(cap_bytes: u64, window_ms: u64, hold_ms: u64) -> Apex {
    Apex::new(
        SchedConfig {
            cost: CostPrior::uniform(10_000, 1),
            ..SchedConfig::default()
        },
        ApexPolicy::new(ApexParams {
            isolation: true,
            isolation_be_bytes: cap_bytes,
            isolation_window_ns: window_ms * MS,
            isolation_max_hold_ns: hold_ms * MS,
            ..ApexParams::default()
        }),
    )
}

fn write(queue: QueueId, tag: u64, bytes: u64) -> Request {
    Request {
        queue,
        op: Op::Write,
        sector: tag * 2048,
        bytes,
        deadline: None,
        tag,
    }
}

/// Isolation mode: background work is work-conserving while no
/// latency-sensitive queue is active, kept within its cap of bytes in
/// flight while one is (with a wake-up at the moment it goes quiet), and
/// work-conserving again once it is quiet.
#[test]
fn isolation_mode_caps_background_work_while_latency_sensitive_work_is_active() {
    const K64: u64 = 64 * 1024;
    let mut s = isolating(2 * K64, 5, 20);
    let bg = s.create_queue(QueueConfig::background(), 0).unwrap();
    // Nothing latency-sensitive: background work fills the ring.
    for t in 1..=3 {
        s.submit(write(bg, t, K64), 0).unwrap();
    }
    assert_eq!(s.build_batch(0, 32), vec![1, 2, 3]);
    assert_eq!(s.next_wakeup(), None);
    for t in 1..=3 {
        s.complete(t, MS).unwrap();
    }
    // An interactive queue not used yet is expected: background work is
    // capped already.
    let ia = s.create_queue(QueueConfig::interactive(), MS).unwrap();
    for t in 4..=6 {
        s.submit(write(bg, t, K64), MS).unwrap();
    }
    assert_eq!(s.build_batch(MS, 32), vec![4, 5]);
    for t in 4..=5 {
        s.complete(t, MS).unwrap();
    }
    assert_eq!(s.build_batch(MS, 32), vec![6]);
    s.complete(6, MS).unwrap();
    // Its first read: while it is active, 128 KiB of background work in
    // flight at most.
    s.submit(req(ia, 10), 2 * MS).unwrap();
    for t in 11..=13 {
        s.submit(write(bg, t, K64), 2 * MS).unwrap();
    }
    s.submit(write(bg, 14, 1 << 20), 2 * MS).unwrap();
    assert_eq!(s.build_batch(2 * MS, 32), vec![10, 11, 12]);
    // Held with background work in flight: its completion brings the next
    // batch, and the interactive queue is busy.
    assert_eq!(s.next_wakeup(), None);
    s.complete(10, 2 * MS + 100_000).unwrap();
    // The cap is full: nothing goes even with nothing else in flight but
    // background work; the interactive queue goes quiet 5 ms after its
    // completion.
    assert!(s.build_batch(2 * MS + 100_000, 32).is_empty());
    assert_eq!(s.next_wakeup(), Some(7 * MS + 100_000));
    s.complete(11, 3 * MS).unwrap();
    s.complete(12, 3 * MS).unwrap();
    // Room in the cap for 64 KiB, not for 1 MiB; and nothing in flight:
    // the device idles on purpose, until the queue is quiet.
    assert_eq!(s.build_batch(3 * MS, 32), vec![13]);
    s.complete(13, 4 * MS).unwrap();
    assert!(s.build_batch(4 * MS, 32).is_empty());
    assert_eq!(s.in_flight(), 0);
    // Held with nothing in flight: the earlier of the hold deadline (24
    // ms) and the quiet time.
    assert_eq!(s.policy().isolation_state().holding_since, Some(4 * MS));
    let wake = s.next_wakeup().unwrap();
    assert_eq!(wake, 7 * MS + 100_000);
    assert!(s.build_batch(wake - 1, 32).is_empty());
    // Quiet: work-conserving again, nothing held.
    assert_eq!(s.build_batch(wake, 32), vec![14]);
    assert_eq!(s.next_wakeup(), None);
    let st = s.policy().isolation_state();
    assert_eq!(st.be_in_flight, 1);
    assert_eq!(st.be_bytes_in_flight, 1 << 20);
    assert_eq!(st.forced, 0);
}

/// Isolation mode: while latency-sensitive work stays active, held
/// background work still goes, one request per hold deadline after the
/// last one completed, whatever the cap; nothing starves.
#[test]
fn isolation_mode_sends_held_background_work_by_its_hold_deadline() {
    let mut s = isolating(0, 5, 20);
    let ia = s.create_queue(QueueConfig::interactive(), 0).unwrap();
    let bg = s.create_queue(QueueConfig::background(), 0).unwrap();
    for t in 1000..1010 {
        s.submit(write(bg, t, 1 << 20), 0).unwrap();
    }
    let mut background: Vec<(u64, u64)> = Vec::new();
    let mut held_since: Option<u64> = None;
    let mut bg_in_flight = false;
    // An interactive read every millisecond for 200 ms, each served at
    // once; background writes take 2 ms.
    for ms in 0..200u64 {
        let now = ms * MS;
        if let Some(&(t, at)) = background.last() {
            if at + 2 * MS == now {
                s.complete(t, now).unwrap();
                bg_in_flight = false;
            }
        }
        s.submit(req(ia, ms), now).unwrap();
        let out = s.build_batch(now, 32);
        for &t in &out {
            if t >= 1000 {
                background.push((t, now));
                held_since = None;
                bg_in_flight = true;
            } else {
                s.complete(t, now + 100_000).unwrap();
            }
        }
        if s.pending() > 0 && !bg_in_flight {
            let since = *held_since.get_or_insert(now);
            let wake = s
                .next_wakeup()
                .expect("a wake-up while background work is held");
            assert!(wake > now && wake <= since + 20 * MS, "{wake} at {now}");
        }
    }
    // The background writes went one per 20 ms after the last one's
    // completion.
    let times: Vec<u64> = background.iter().map(|&(_, at)| at / MS).collect();
    assert_eq!(times, vec![20, 42, 64, 86, 108, 130, 152, 174, 196]);
    assert_eq!(s.policy().isolation_state().forced, 9);
    // The interactive queue goes quiet: the rest goes at once.
    let out = s.build_batch(300 * MS, 32);
    assert_eq!(out, vec![1009]);
}

/// Isolation mode: when the latency-sensitive queues fall quiet, the
/// background work held meanwhile goes in slow start (one request, then
/// as many bytes more as background completions bring back), not in one
/// batch; before any latency-sensitive queue was active, and with the mode
/// off, it fills the ring at once.
#[test]
fn isolation_mode_refills_the_ring_in_slow_start_when_quiet() {
    const M: u64 = 1 << 20;
    let mut s = isolating(0, 5, 20);
    let bg = s.create_queue(QueueConfig::background(), 0).unwrap();
    for t in 1..=3 {
        s.submit(write(bg, t, M), 0).unwrap();
    }
    // Nothing latency-sensitive yet: the ring fills.
    assert_eq!(s.build_batch(0, 32), vec![1, 2, 3]);
    for t in 1..=3 {
        s.complete(t, MS).unwrap();
    }
    // An interactive read holds the background work back.
    let ia = s.create_queue(QueueConfig::interactive(), MS).unwrap();
    s.submit(req(ia, 10), MS).unwrap();
    for t in 100..120 {
        s.submit(write(bg, t, M), MS).unwrap();
    }
    assert_eq!(s.build_batch(MS, 32), vec![10]);
    s.complete(10, MS + 100_000).unwrap();
    // Quiet 5 ms after its completion: one write, not twenty.
    let quiet = 6 * MS + 100_000;
    assert_eq!(s.build_batch(quiet, 32), vec![100]);
    assert!(s.build_batch(quiet + 1, 32).is_empty());
    // Each completion brings back its bytes and one more request's worth.
    s.complete(100, quiet + MS).unwrap();
    assert_eq!(s.build_batch(quiet + MS, 32), vec![101, 102]);
    s.complete(101, quiet + 2 * MS).unwrap();
    assert_eq!(s.build_batch(quiet + 2 * MS, 32), vec![103, 104]);
    s.complete(102, quiet + 2 * MS).unwrap();
    assert_eq!(s.build_batch(quiet + 2 * MS, 32), vec![105, 106]);
    assert_eq!(s.policy().isolation_state().be_bytes_in_flight, 4 * M);
    // The interactive queue again: held, and the next quiet spell starts
    // from one request again.
    s.submit(req(ia, 11), quiet + 3 * MS).unwrap();
    assert_eq!(s.build_batch(quiet + 3 * MS, 32), vec![11]);
    s.complete(11, quiet + 3 * MS).unwrap();
    for t in 103..=106 {
        s.complete(t, quiet + 4 * MS).unwrap();
    }
    // Quiet again (its mean gap now 8.1 ms: twice that after its last
    // completion); the completions while it was active fed nothing.
    let quiet2 = quiet + 30 * MS;
    assert_eq!(s.build_batch(quiet2, 32), vec![107]);
    assert!(s.build_batch(quiet2, 32).is_empty());
}

/// Drives `s` for `ms` milliseconds from `start`: an interactive read every
/// half millisecond that completes `read_ns` after it went, background
/// writes of 1 MiB that complete 2 ms after they went, a batch at every
/// step. Returns the background writes put on the ring and the most
/// background bytes in flight beyond the adaptive window just after a
/// batch that put a write on the ring while the window was cut.
fn drive_adaptive(
    s: &mut Apex,
    ia: QueueId,
    bg: QueueId,
    next_tag: &mut u64,
    start: u64,
    ms: u64,
    read_ns: u64,
) -> (u64, u64) {
    const STEP: u64 = MS / 2;
    let mut done: Vec<(u64, u64)> = Vec::new();
    let (mut writes, mut closed_max) = (0u64, 0u64);
    let mut now = start;
    while now < start + ms * MS {
        done.sort_unstable();
        while let Some(&(at, t)) = done.first() {
            if at > now {
                break;
            }
            s.complete(t, at).unwrap();
            done.remove(0);
        }
        // Background work always waiting.
        while s.pending() < 8 {
            *next_tag += 1;
            s.submit(write(bg, 1_000_000 + *next_tag, 1 << 20), now)
                .unwrap();
        }
        *next_tag += 1;
        s.submit(req(ia, *next_tag), now).unwrap();
        let mut wrote = false;
        for t in s.build_batch(now, 32) {
            if t >= 1_000_000 {
                writes += 1;
                wrote = true;
                done.push((now + 2 * MS, t));
            } else {
                done.push((now + read_ns, t));
            }
        }
        let st = s.policy().isolation_state();
        if let (Some(w), true) = (s.policy().adaptive_state().window_bytes, wrote) {
            // A write went while the window was cut: what is in flight
            // beyond the window (a request that went at its hold deadline
            // may take it one request past).
            closed_max = closed_max.max(st.be_bytes_in_flight.saturating_sub(w));
        }
        now += STEP;
    }
    // Let everything in flight complete.
    done.sort_unstable();
    for (at, t) in done {
        s.complete(t, at.max(now)).unwrap();
    }
    (writes, closed_max)
}

fn adaptive(step: u64, open: u64) -> Apex {
    Apex::new(
        SchedConfig {
            cost: CostPrior::uniform(10_000, 1),
            ..SchedConfig::default()
        },
        ApexPolicy::new(ApexParams {
            adaptive_isolation: true,
            adaptive_step_bytes: step,
            adaptive_open_bytes: open,
            isolation_max_hold_ns: 20 * MS,
            ..ApexParams::default()
        }),
    )
}

/// Adaptive isolation reacts in both directions: open (work-conserving)
/// while the latency-sensitive reads keep well within their deadline; cut
/// by half per late spell, down to closed, when they come late; holding
/// background work to the window (and to one request per hold deadline
/// when closed); grown back a step per clean window, and open again.
#[test]
fn adaptive_isolation_closes_when_reads_come_late_and_opens_when_they_recover() {
    const M: u64 = 1 << 20;
    let mut s = adaptive(M, 4 * M);
    let ia = s
        .create_queue(QueueConfig::interactive().with_deadline(2 * MS), 0)
        .unwrap();
    let bg = s.create_queue(QueueConfig::background(), 0).unwrap();
    let mut tag = 0;
    // Reads at 100 us: the window stays open and the writes fill the ring.
    let (w_fast, _) = drive_adaptive(&mut s, ia, bg, &mut tag, MS, 100, 100_000);
    let st = s.policy().adaptive_state();
    assert_eq!(st.window_bytes, None, "{st:?}");
    assert_eq!(st.cuts, 0);
    // 100 ms, a write takes 2 ms, the ring holds 31 beside a read: the
    // ring stays full of writes.
    assert!(w_fast > 1000, "{w_fast} writes while open");
    // Reads at 3 ms (past their 2 ms deadline): cut after cut, to closed.
    let (w_late, closed_max) = drive_adaptive(&mut s, ia, bg, &mut tag, 102 * MS, 200, 3 * MS);
    let st = s.policy().adaptive_state();
    assert_eq!(st.window_bytes, Some(0), "{st:?}");
    assert!(st.cuts >= 3, "{st:?}");
    // Writes put on the ring while cut stay within the window, but for
    // one request that goes at its hold deadline.
    assert!(
        closed_max <= M,
        "{closed_max} bytes in flight past the window"
    );
    // Closed, writes go at hold deadlines (20 ms) and at the window's
    // probes, far fewer than while open; nothing starves.
    assert!(w_late < w_fast / 4, "{w_late} writes while late");
    assert!(w_late >= 5, "background starved: {w_late} writes in 200 ms");
    // Reads fast again: clean windows grow it back, step by step, to open.
    let grows = st.grows;
    drive_adaptive(&mut s, ia, bg, &mut tag, 310 * MS, 600, 100_000);
    let st = s.policy().adaptive_state();
    assert_eq!(st.window_bytes, None, "{st:?}");
    assert!(st.grows >= grows + 4, "{st:?}");
    let (w_again, _) = drive_adaptive(&mut s, ia, bg, &mut tag, 920 * MS, 100, 100_000);
    assert!(w_again > 1000, "{w_again} writes once open again");
}

/// Adaptive isolation off (the default): the same late reads change
/// nothing, the ring stays full of writes.
#[test]
fn adaptive_isolation_off_never_holds() {
    let mut s = Apex::new(
        SchedConfig {
            cost: CostPrior::uniform(10_000, 1),
            ..SchedConfig::default()
        },
        ApexPolicy::default(),
    );
    let ia = s
        .create_queue(QueueConfig::interactive().with_deadline(2 * MS), 0)
        .unwrap();
    let bg = s.create_queue(QueueConfig::background(), 0).unwrap();
    let mut tag = 0;
    let (w, _) = drive_adaptive(&mut s, ia, bg, &mut tag, MS, 100, 3 * MS);
    assert!(w > 1000, "{w}");
    assert_eq!(s.policy().adaptive_state().cuts, 0);
}
