//! First in, first out: the baseline. Classes, reservations and deadlines
//! are accepted and ignored (deadlines still count misses in the stats).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::engine::{Core, Entry, Policy};
use crate::{Nanos, Pass, QueueId};

/// Arrival order across all queues.
#[derive(Clone, Debug, Default)]
pub struct FifoPolicy {
    waiting: VecDeque<Entry>,
}

impl Policy for FifoPolicy {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn enqueue(&mut self, _core: &Core, entry: Entry) {
        self.waiting.push_back(entry);
    }

    fn remove(&mut self, _queue: QueueId, tag: u64) -> Option<Entry> {
        let i = self.waiting.iter().position(|e| e.tag == tag)?;
        self.waiting.remove(i)
    }

    fn select(&mut self, _core: &mut Core, _now: Nanos, room: usize, out: &mut Vec<(Entry, Pass)>) {
        while out.len() < room {
            let Some(e) = self.waiting.pop_front() else {
                break;
            };
            out.push((e, Pass::Other));
        }
    }
}
