//! Strict priority: real-time queues before interactive before background;
//! inside a class, the queue's priority (higher first); then arrival order.
//! Reservations and deadlines are ignored (deadlines still count misses).
//! A steady stream of high-priority work starves everything below it: that
//! is what strict priority means, and why APEX has reservations.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::engine::{rank, Core, Entry, Policy};
use crate::{Nanos, Pass, QueueConfig, QueueId};

/// Ordering key: (class rank, 255 - priority, arrival order).
type Key = (usize, u8, u64);

fn level(c: &QueueConfig) -> (usize, u8) {
    (rank(c.class), u8::MAX - c.priority)
}

/// Class, then queue priority, then arrival.
#[derive(Clone, Debug, Default)]
pub struct PrioPolicy {
    waiting: BTreeMap<Key, Entry>,
}

impl Policy for PrioPolicy {
    fn name(&self) -> &'static str {
        "prio"
    }

    fn queue_changed(&mut self, core: &Core, queue: QueueId, old: &QueueConfig) {
        let Some(q) = core.queues.get(&queue) else {
            return;
        };
        let (new_rank, new_prio) = level(&q.config);
        if level(old) == (new_rank, new_prio) {
            return;
        }
        let keys: Vec<Key> = self
            .waiting
            .iter()
            .filter(|(_, e)| e.queue == queue)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(e) = self.waiting.remove(&k) {
                self.waiting.insert((new_rank, new_prio, k.2), e);
            }
        }
    }

    fn enqueue(&mut self, core: &Core, entry: Entry) {
        // `submit` checked the queue exists; a missing one sorts last rather
        // than losing the request.
        let (r, p) = core
            .queues
            .get(&entry.queue)
            .map_or((usize::MAX, u8::MAX), |q| level(&q.config));
        self.waiting.insert((r, p, entry.seq), entry);
    }

    fn remove(&mut self, _queue: QueueId, tag: u64) -> Option<Entry> {
        let k = self
            .waiting
            .iter()
            .find(|(_, e)| e.tag == tag)
            .map(|(k, _)| *k)?;
        self.waiting.remove(&k)
    }

    fn select(&mut self, _core: &mut Core, _now: Nanos, room: usize, out: &mut Vec<(Entry, Pass)>) {
        while out.len() < room {
            let Some((_, e)) = self.waiting.pop_first() else {
                break;
            };
            out.push((e, Pass::Other));
        }
    }
}
