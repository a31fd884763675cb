//! The I/O scheduler under arbitrary sequences of queue changes,
//! submissions, batch builds, completions and clock moves, for every
//! policy: nothing panics, batches never exceed the ring's room, every tag
//! comes out of a batch at most once and only after it was accepted, refused
//! submissions hand the request back, cancelled requests never come out
//! again, and when the sequence ends everything accepted and not cancelled
//! comes out exactly once and completes. APEX runs with and without its
//! isolation mode, fixed or adaptive (the adaptive window cut and grown by
//! whatever latencies the completions give); in it, a batch that leaves
//! the device idle with work waiting comes with a wake-up time in the
//! future.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use iosched::{
    new_scheduler, Apex, ApexParams, ApexPolicy, Class, CostPrior, Op, PolicyKind, QueueConfig,
    QueueId, Request, Reservation, SchedConfig, Scheduler,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Step {
    Create {
        class: u8,
        rate: u64,
        depth: u64,
        deadline: Option<u64>,
        prio: u8,
    },
    Change {
        queue: u8,
        class: u8,
        rate: u64,
        depth: u64,
        deadline: Option<u64>,
    },
    Remove {
        queue: u8,
    },
    Submit {
        queue: u8,
        op: u8,
        bytes: u64,
        sector: u64,
        deadline: Option<u64>,
        reuse: bool,
    },
    Batch {
        room: u16,
    },
    Complete {
        which: u16,
        bogus: Option<u64>,
    },
    Clock {
        delta: u64,
        backwards: bool,
    },
    Cancel {
        which: u16,
        in_flight: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    policy: u8,
    isolation: Option<(u32, u32, u32)>,
    /// Adaptive isolation (when `isolation` is `None`): step in KiB, open
    /// size in steps, late share per mille, longest hold in us.
    adaptive: Option<(u16, u8, u16, u32)>,
    base_ns: u64,
    ps_per_byte: u64,
    steps: Vec<Step>,
}

fn config(class: u8, rate: u64, depth: u64, deadline: Option<u64>, prio: u8) -> QueueConfig {
    QueueConfig {
        class: [Class::RealTime, Class::Interactive, Class::Background][class as usize % 3],
        reservation: Reservation {
            rate_per_sec: rate,
            depth,
        },
        deadline_ns: deadline,
        priority: prio,
    }
}

fuzz_target!(|input: Input| {
    let kind = PolicyKind::ALL[input.policy as usize % 4];
    let sched_config = SchedConfig {
        cost: CostPrior::uniform(input.base_ns, input.ps_per_byte),
        max_requests: 4096,
        max_queues: 64,
    };
    let isolating =
        kind == PolicyKind::Apex && (input.isolation.is_some() || input.adaptive.is_some());
    let mut s: Box<dyn Scheduler + Send> = match (input.isolation, input.adaptive) {
        (None, Some((step_kib, open_steps, late, hold))) if kind == PolicyKind::Apex => {
            let step = u64::from(step_kib) * 1024;
            Box::new(Apex::new(
                sched_config,
                ApexPolicy::new(ApexParams {
                    adaptive_isolation: true,
                    adaptive_step_bytes: step,
                    adaptive_open_bytes: step.saturating_mul(u64::from(open_steps)),
                    adaptive_late_permille: u64::from(late),
                    isolation_max_hold_ns: u64::from(hold % 1_000_000) * 1000,
                    ..ApexParams::default()
                }),
            ))
        }
        (Some((cap, window, hold)), _) if kind == PolicyKind::Apex => Box::new(Apex::new(
            sched_config,
            ApexPolicy::new(ApexParams {
                isolation: true,
                isolation_be_bytes: u64::from(cap),
                isolation_window_ns: u64::from(window) * 1000,
                isolation_max_hold_ns: u64::from(hold % 1_000_000) * 1000,
                ..ApexParams::default()
            }),
        )),
        _ => new_scheduler(kind, sched_config),
    };
    let mut now: u64 = 0;
    let mut queues: Vec<QueueId> = Vec::new();
    let mut next_tag: u64 = 0;
    let mut pending: BTreeSet<u64> = BTreeSet::new();
    let mut in_flight: BTreeSet<u64> = BTreeSet::new();
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let mut cancelled: BTreeSet<u64> = BTreeSet::new();
    let pick = |queues: &Vec<QueueId>, i: u8| {
        if queues.is_empty() || i == 255 {
            QueueId(u32::from(i))
        } else {
            queues[i as usize % queues.len()]
        }
    };
    for step in input.steps.iter().take(2000) {
        match *step {
            Step::Create {
                class,
                rate,
                depth,
                deadline,
                prio,
            } => {
                if let Ok(q) = s.create_queue(config(class, rate, depth, deadline, prio), now) {
                    assert!(!queues.contains(&q), "queue id {q:?} given twice");
                    queues.push(q);
                }
            }
            Step::Change {
                queue,
                class,
                rate,
                depth,
                deadline,
            } => {
                let q = pick(&queues, queue);
                let _ = s.change_queue(q, config(class, rate, depth, deadline, 0), now);
            }
            Step::Remove { queue } => {
                let q = pick(&queues, queue);
                if let Ok(iosched::Removal::Removed) = s.remove_queue(q, now) {
                    queues.retain(|&x| x != q);
                }
            }
            Step::Submit {
                queue,
                op,
                bytes,
                sector,
                deadline,
                reuse,
            } => {
                let tag = match (reuse, pending.iter().next(), in_flight.iter().next()) {
                    (true, Some(&t), _) | (true, None, Some(&t)) => t,
                    _ => next_tag,
                };
                let req = Request {
                    queue: pick(&queues, queue),
                    op: Op::ALL[op as usize % 4],
                    sector,
                    bytes,
                    deadline,
                    tag,
                };
                match s.submit(req, now) {
                    Ok(()) => {
                        assert_eq!(tag, next_tag, "tag {tag} in use was accepted again");
                        pending.insert(tag);
                        next_tag += 1;
                    }
                    Err(e) => assert_eq!(e.request, req, "refused request not handed back"),
                }
            }
            Step::Batch { room } => {
                let room = room as usize % 64;
                let tags = s.build_batch(now, room);
                assert!(tags.len() <= room);
                if isolating
                    && room > 0
                    && tags.is_empty()
                    && in_flight.is_empty()
                    && !pending.is_empty()
                {
                    assert!(
                        s.next_wakeup().is_some_and(|w| w > now),
                        "device idle with {} held and no wake-up",
                        pending.len()
                    );
                }
                for t in tags {
                    assert!(pending.remove(&t), "tag {t} out of a batch but not waiting");
                    *seen.entry(t).or_default() += 1;
                    in_flight.insert(t);
                }
            }
            Step::Complete { which, bogus } => {
                if let Some(b) = bogus {
                    if !in_flight.contains(&b) {
                        assert!(
                            s.complete(b, now).is_err(),
                            "completion of {b} not in flight"
                        );
                    }
                }
                if !in_flight.is_empty() {
                    let t = *in_flight
                        .iter()
                        .nth(which as usize % in_flight.len())
                        .unwrap();
                    in_flight.remove(&t);
                    let c = s.complete(t, now).expect("completion of a tag in flight");
                    if c.queue_removed {
                        queues.retain(|&x| x != c.queue);
                    }
                }
            }
            Step::Cancel {
                which,
                in_flight: inf,
            } => {
                let set = if inf { &mut in_flight } else { &mut pending };
                if let Some(&t) = set.iter().nth(which as usize % set.len().max(1)) {
                    set.remove(&t);
                    let q = s.cancel(t, now).expect("cancel of a tag held");
                    assert!(s.cancel(t, now).is_err());
                    cancelled.insert(t);
                    if s.queue(q).is_none() {
                        queues.retain(|&x| x != q);
                    }
                }
            }
            Step::Clock { delta, backwards } => {
                now = if backwards {
                    now.saturating_sub(delta)
                } else {
                    now.saturating_add(delta)
                };
            }
        }
        assert_eq!(s.pending(), pending.len());
        assert_eq!(s.in_flight(), in_flight.len());
        for q in s.queue_ids() {
            let v = s.queue(q).unwrap();
            assert!(
                v.tokens >= v.token_floor && v.tokens <= -v.token_floor,
                "{v:?}"
            );
        }
    }
    // Drain: nothing is lost.
    let mut rounds = 0;
    while !pending.is_empty() || !in_flight.is_empty() {
        rounds += 1;
        assert!(
            rounds < 100_000,
            "{} requests never come out",
            pending.len()
        );
        now = now.saturating_add(1_000_000);
        // A scheduler holding work says until when: go there.
        if let Some(w) = s.next_wakeup() {
            now = now.max(w);
        }
        for t in s.build_batch(now, 32) {
            assert!(pending.remove(&t), "tag {t} out but not waiting");
            *seen.entry(t).or_default() += 1;
            in_flight.insert(t);
        }
        for t in std::mem::take(&mut in_flight) {
            s.complete(t, now).expect("completion of a tag in flight");
        }
    }
    for t in 0..next_tag {
        assert!(
            seen.contains_key(&t) || cancelled.contains(&t),
            "request {t} neither came out nor was cancelled"
        );
    }
    assert!(seen.values().all(|&n| n == 1), "a request came out twice");
    assert_eq!(s.pending() + s.in_flight(), 0);
});
