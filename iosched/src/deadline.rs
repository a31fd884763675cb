//! A deadline policy in the manner of Linux's mq-deadline.
//!
//! Requests are split by priority level (real-time queues, interactive
//! queues, background queues, standing for mq-deadline's RT, BE and IDLE
//! I/O priority classes) and by direction (reads; writes, flushes and
//! discards). Each level and direction keeps its requests twice: sorted by
//! sector, and in arrival order with an expiry time (arrival plus
//! `read_expire` or `write_expire`).
//!
//! One dispatch, as mq-deadline does it:
//! 1. If two or more levels hold requests, a request of a lower level that
//!    has waited longer than `prio_aging_expire` goes first.
//! 2. Otherwise the highest level with waiting requests is served; a lower
//!    level is not served at all while a higher level has requests waiting
//!    *or in flight*.
//! 3. Inside a level: while fewer than `fifo_batch` requests have gone in the
//!    current batch and there is a request at or past the last position in
//!    the batch's direction, continue in sector order (a sequential batch).
//! 4. Else start a new batch: reads are preferred, but if writes are waiting
//!    and reads have been preferred `writes_starved` times, writes go. In the
//!    chosen direction, take the oldest request if it has expired or if
//!    nothing lies beyond the last position; else continue in sector order.
//!
//! The defaults are Linux's: `read_expire` 500 ms, `write_expire` 5 s,
//! `writes_starved` 2, `fifo_batch` 16, `prio_aging_expire` 10 s. Unlike
//! Linux there is no merging (a request's tag must come back as it went),
//! flushes are ordinary writes (Linux sends them around the scheduler), and
//! a queue whose class changes keeps its waiting requests at their old level
//! (Linux fixes a request's priority when it is inserted). Reservations are
//! ignored; request deadlines are ignored too, except in the statistics.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::engine::{rank, Core, Entry, Policy};
use crate::{Nanos, Pass, QueueId};

/// mq-deadline's tunables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadlineParams {
    /// Expiry of a read, ns (Linux: 500 ms).
    pub read_expire_ns: Nanos,
    /// Expiry of a write, ns (Linux: 5 s).
    pub write_expire_ns: Nanos,
    /// Read batches before waiting writes get one (Linux: 2).
    pub writes_starved: u32,
    /// Requests in one sequential batch (Linux: 16).
    pub fifo_batch: u32,
    /// Age after which a lower level's request jumps ahead, ns (Linux: 10 s).
    pub prio_aging_expire_ns: Nanos,
}

impl Default for DeadlineParams {
    fn default() -> Self {
        Self {
            read_expire_ns: 500_000_000,
            write_expire_ns: 5_000_000_000,
            writes_starved: 2,
            fifo_batch: 16,
            prio_aging_expire_ns: 10_000_000_000,
        }
    }
}

/// (sector, arrival order).
type Key = (u64, u64);

#[derive(Clone, Debug, Default)]
struct Level {
    sorted: [BTreeMap<Key, Entry>; 2],
    /// Arrival order -> sector.
    fifo: [BTreeMap<u64, u64>; 2],
    latest_pos: [u64; 2],
    /// Waiting plus in flight.
    queued: usize,
}

impl Level {
    fn next_request(&self, dir: usize) -> Option<Key> {
        self.sorted[dir]
            .range((self.latest_pos[dir], 0)..)
            .next()
            .map(|(k, _)| *k)
    }

    fn fifo_head(&self, dir: usize) -> Option<Key> {
        self.fifo[dir]
            .iter()
            .next()
            .map(|(&seq, &sector)| (sector, seq))
    }
}

/// The mq-deadline-like policy (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct DeadlinePolicy {
    params: DeadlineParams,
    levels: [Level; 3],
    batching: u32,
    starved: u32,
    last_dir: usize,
}

fn dir_of(e: &Entry) -> usize {
    usize::from(e.op.is_write())
}

impl DeadlinePolicy {
    /// The policy with these tunables.
    pub fn new(params: DeadlineParams) -> Self {
        Self {
            params,
            ..Self::default()
        }
    }

    fn expire(&self, dir: usize) -> Nanos {
        if dir == 0 {
            self.params.read_expire_ns
        } else {
            self.params.write_expire_ns
        }
    }

    fn expired(&self, li: usize, dir: usize, now: Nanos) -> bool {
        let l = &self.levels[li];
        l.fifo_head(dir)
            .and_then(|k| l.sorted[dir].get(&k))
            .is_some_and(|e| e.arrival.saturating_add(self.expire(dir)) <= now)
    }

    /// One request from level `li`, or none; with `latest_start`, only a
    /// request that arrived no later than that (the state still moves as in
    /// Linux).
    fn dispatch_from(
        &mut self,
        li: usize,
        now: Nanos,
        latest_start: Option<Nanos>,
    ) -> Option<Entry> {
        let mut pick = None;
        if self.batching < self.params.fifo_batch {
            if let Some(k) = self.levels[li].next_request(self.last_dir) {
                pick = Some((self.last_dir, k));
            }
        }
        if pick.is_none() {
            let reads = !self.levels[li].fifo[0].is_empty();
            let writes = !self.levels[li].fifo[1].is_empty();
            let dir = if reads {
                let starve = writes && {
                    let s = self.starved;
                    self.starved = self.starved.saturating_add(1);
                    s >= self.params.writes_starved
                };
                if starve {
                    self.starved = 0;
                    1
                } else {
                    0
                }
            } else if writes {
                self.starved = 0;
                1
            } else {
                return None;
            };
            let next = self.levels[li].next_request(dir);
            let k = match next {
                Some(k) if !self.expired(li, dir, now) => k,
                _ => self.levels[li].fifo_head(dir)?,
            };
            self.batching = 0;
            pick = Some((dir, k));
        }
        let (dir, k) = pick?;
        let l = &mut self.levels[li];
        if let Some(ls) = latest_start {
            if l.sorted[dir].get(&k)?.arrival > ls {
                return None;
            }
        }
        let e = l.sorted[dir].remove(&k)?;
        l.fifo[dir].remove(&e.seq);
        l.latest_pos[dir] = e.sector.saturating_add(e.bytes / 512);
        self.last_dir = dir;
        self.batching = self.batching.saturating_add(1);
        Some(e)
    }

    fn dispatch_one(&mut self, now: Nanos) -> Option<Entry> {
        let busy = self.levels.iter().filter(|l| l.queued > 0).count();
        if busy >= 2 {
            if let Some(ls) = now.checked_sub(self.params.prio_aging_expire_ns) {
                for li in 1..3 {
                    if let Some(e) = self.dispatch_from(li, now, Some(ls)) {
                        return Some(e);
                    }
                }
            }
        }
        for li in 0..3 {
            if let Some(e) = self.dispatch_from(li, now, None) {
                return Some(e);
            }
            if self.levels[li].queued > 0 {
                return None;
            }
        }
        None
    }
}

impl Policy for DeadlinePolicy {
    fn name(&self) -> &'static str {
        "deadline"
    }

    fn enqueue(&mut self, core: &Core, mut entry: Entry) {
        let li = core
            .queues
            .get(&entry.queue)
            .map_or(2, |q| rank(q.config.class));
        entry.lane = li as u8;
        let dir = dir_of(&entry);
        let l = &mut self.levels[li];
        l.queued += 1;
        l.fifo[dir].insert(entry.seq, entry.sector);
        l.sorted[dir].insert((entry.sector, entry.seq), entry);
    }

    fn remove(&mut self, _queue: QueueId, tag: u64) -> Option<Entry> {
        for l in &mut self.levels {
            for dir in 0..2 {
                let k = l.sorted[dir]
                    .iter()
                    .find(|(_, e)| e.tag == tag)
                    .map(|(k, _)| *k);
                if let Some(k) = k {
                    let e = l.sorted[dir].remove(&k)?;
                    l.fifo[dir].remove(&e.seq);
                    l.queued = l.queued.saturating_sub(1);
                    return Some(e);
                }
            }
        }
        None
    }

    fn select(&mut self, _core: &mut Core, now: Nanos, room: usize, out: &mut Vec<(Entry, Pass)>) {
        while out.len() < room {
            match self.dispatch_one(now) {
                Some(e) => out.push((e, Pass::Other)),
                None => break,
            }
        }
    }

    fn completed(&mut self, lane: u8, _bytes: u64) {
        if let Some(l) = self.levels.get_mut(lane as usize) {
            l.queued = l.queued.saturating_sub(1);
        }
    }
}
