//! Store rings between threads of the hosted platform: a [`RingSignal`]
//! built on a mutex and condition variable, for a guest thread and the
//! daemon's end of a [`xenbus::StoreRing`] in one process.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use xenbus::ring::RingSignal;
use xenbus::{TransportError, Wait};

#[derive(Default)]
struct Doorbell {
    rung: Mutex<u64>,
    cv: Condvar,
}

/// One end of a pair of doorbells: `notify` rings the peer's, `wait`
/// waits for ours. No notification is lost: each end remembers how many
/// rings it has seen.
pub struct ThreadSignal {
    mine: Arc<Doorbell>,
    peer: Arc<Doorbell>,
    seen: u64,
}

impl ThreadSignal {
    /// Two connected ends.
    pub fn pair() -> (ThreadSignal, ThreadSignal) {
        let a = Arc::new(Doorbell::default());
        let b = Arc::new(Doorbell::default());
        (
            ThreadSignal {
                mine: Arc::clone(&a),
                peer: Arc::clone(&b),
                seen: 0,
            },
            ThreadSignal {
                mine: b,
                peer: a,
                seen: 0,
            },
        )
    }
}

impl RingSignal for ThreadSignal {
    fn notify(&mut self) -> Result<(), TransportError> {
        let mut rung = self.peer.rung.lock().unwrap_or_else(|p| p.into_inner());
        *rung = rung.wrapping_add(1);
        self.peer.cv.notify_all();
        Ok(())
    }

    fn wait(&mut self, wait: Wait) -> Result<bool, TransportError> {
        let mut rung = self.mine.rung.lock().unwrap_or_else(|p| p.into_inner());
        let limit = match wait {
            Wait::NoWait => Some(Duration::ZERO),
            Wait::For(d) => Some(d),
            Wait::Forever => None,
        };
        let deadline = limit.map(|d| std::time::Instant::now() + d);
        while *rung == self.seen {
            match deadline {
                None => rung = self.mine.cv.wait(rung).unwrap_or_else(|p| p.into_inner()),
                Some(end) => {
                    let left = end.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    rung = self
                        .mine
                        .cv
                        .wait_timeout(rung, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        self.seen = *rung;
        Ok(true)
    }
}
