//! Waiting on several event channels with `SCHEDOP_poll`, as plain logic
//! over [`PollOps`] so that it is tested on the host; `rt::events`
//! implements the operations with the shared info page and hypercalls.
//!
//! The loop: take the first pending port (in the slice's order) if any;
//! otherwise, unless the deadline has passed, block the vCPU in
//! `SCHEDOP_poll` on all the ports until one is pending or the deadline
//! comes, and look again. An error from `SCHEDOP_poll` ends the wait with
//! that error: looping on it would spin until the deadline (the hypercall
//! fails at once every time, for instance for a port beyond the domain's
//! limit).

use grant_tables::{PlatformError, Port};

use crate::abi::SCHED_POLL_MAX_PORTS;

/// What the wait needs from the domain.
pub trait PollOps {
    /// `Ok` if `port` is open in this domain, `BadPort` otherwise.
    fn check_open(&self, port: Port) -> Result<(), PlatformError>;
    /// Tests and clears `port`'s pending bit (masked or not).
    fn take_pending(&self, port: Port) -> Result<bool, PlatformError>;
    /// Xen system time, in nanoseconds.
    fn now_ns(&self) -> u64;
    /// `SCHEDOP_poll` on `ports` until `deadline_ns` (absolute system time;
    /// 0: none). Returns early for a pending port or a spurious wakeup.
    fn sched_poll(&self, ports: &[u32], deadline_ns: u64) -> Result<(), PlatformError>;
}

/// The error for more ports than one `SCHEDOP_poll` takes.
pub fn too_many_ports() -> PlatformError {
    PlatformError::InvalidRequest {
        op: "SCHEDOP_poll",
        reason: "Xen waits on at most 128 ports at once; wait on fewer and poll the others",
    }
}

/// Waits until one of `ports` is pending (clears it and returns it: the
/// first pending one in the slice's order) or `timeout_ns` passes (returns
/// `None`; `None` waits forever). At most [`SCHED_POLL_MAX_PORTS`] ports,
/// all open; an empty slice is an error.
pub fn block_any<O: PollOps>(ops: &O, ports: &[Port], timeout_ns: Option<u64>) -> Result<Option<Port>, PlatformError> {
    if ports.is_empty() {
        return Err(PlatformError::InvalidRequest {
            op: "block_any",
            reason: "no ports to wait on; pass at least one open port",
        });
    }
    if ports.len() > SCHED_POLL_MAX_PORTS {
        return Err(too_many_ports());
    }
    let mut list = [0u32; SCHED_POLL_MAX_PORTS];
    for (slot, &port) in list.iter_mut().zip(ports) {
        ops.check_open(port)?;
        *slot = port.0;
    }
    let list = &list[..ports.len()];
    // Xen's deadline is absolute system time, 0 meaning none.
    let deadline = timeout_ns.map(|t| ops.now_ns().saturating_add(t).max(1));
    loop {
        for &port in ports {
            if ops.take_pending(port)? {
                return Ok(Some(port));
            }
        }
        if let Some(d) = deadline {
            if ops.now_ns() >= d {
                return Ok(None);
            }
        }
        ops.sched_poll(list, deadline.unwrap_or(0))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    /// What a `SCHEDOP_poll` call does in the model.
    #[derive(Clone, Copy)]
    enum Then {
        /// Fails with this Xen error code.
        Fail(i32),
        /// An event arrives on this port after this many nanoseconds.
        Event(u32, u64),
        /// Nothing arrives: the vCPU sleeps until the deadline.
        Sleep,
        /// Returns at once with nothing pending.
        Spurious,
    }

    struct Model {
        open: BTreeSet<u32>,
        pending: RefCell<BTreeSet<u32>>,
        now: RefCell<u64>,
        script: RefCell<Vec<Then>>,
        /// Every `SCHEDOP_poll`: (ports, deadline).
        calls: RefCell<Vec<(Vec<u32>, u64)>>,
    }

    impl Model {
        fn new(open: &[u32], script: &[Then]) -> Self {
            Model {
                open: open.iter().copied().collect(),
                pending: RefCell::new(BTreeSet::new()),
                now: RefCell::new(1_000_000),
                script: RefCell::new(script.iter().rev().copied().collect()),
                calls: RefCell::new(Vec::new()),
            }
        }
    }

    impl PollOps for Model {
        fn check_open(&self, port: Port) -> Result<(), PlatformError> {
            if self.open.contains(&port.0) {
                Ok(())
            } else {
                Err(PlatformError::BadPort(port))
            }
        }
        fn take_pending(&self, port: Port) -> Result<bool, PlatformError> {
            self.check_open(port)?;
            Ok(self.pending.borrow_mut().remove(&port.0))
        }
        fn now_ns(&self) -> u64 {
            *self.now.borrow()
        }
        fn sched_poll(&self, ports: &[u32], deadline_ns: u64) -> Result<(), PlatformError> {
            self.calls.borrow_mut().push((ports.to_vec(), deadline_ns));
            assert!(self.calls.borrow().len() < 1000, "the wait spins");
            // Without a script entry, Xen fails: an unbounded loop would be
            // caught by the assertion above.
            match self.script.borrow_mut().pop().unwrap_or(Then::Fail(-22)) {
                Then::Fail(code) => {
                    // A failing hypercall returns at once; time moves a bit.
                    *self.now.borrow_mut() += 100;
                    Err(PlatformError::Os { op: "SCHEDOP_poll", code })
                }
                Then::Event(port, after) => {
                    *self.now.borrow_mut() += after;
                    self.pending.borrow_mut().insert(port);
                    Ok(())
                }
                Then::Sleep => {
                    assert_ne!(deadline_ns, 0, "sleeping forever");
                    let mut now = self.now.borrow_mut();
                    *now = (*now).max(deadline_ns);
                    Ok(())
                }
                Then::Spurious => Ok(()),
            }
        }
    }

    fn ports(p: &[u32]) -> Vec<Port> {
        p.iter().copied().map(Port).collect()
    }

    #[test]
    fn an_error_from_sched_poll_ends_the_wait_with_that_error() {
        // Xen refuses the list (say a port beyond the domain's limit): the
        // wait returns the error after one hypercall, instead of retrying
        // until the deadline.
        let m = Model::new(&[3, 5], &[Then::Fail(-22)]);
        let r = block_any(&m, &ports(&[3, 5]), Some(1_000_000_000));
        assert_eq!(r, Err(PlatformError::Os { op: "SCHEDOP_poll", code: -22 }));
        assert_eq!(m.calls.borrow().len(), 1);
        let m = Model::new(&[3], &[Then::Spurious, Then::Fail(-14)]);
        assert_eq!(block_any(&m, &ports(&[3]), None), Err(PlatformError::Os { op: "SCHEDOP_poll", code: -14 }));
        assert_eq!(m.calls.borrow().len(), 2);
    }

    #[test]
    fn wakes_for_the_port_that_became_pending() {
        for which in [3u32, 5, 9] {
            let m = Model::new(&[3, 5, 9], &[Then::Spurious, Then::Event(which, 500)]);
            assert_eq!(block_any(&m, &ports(&[3, 5, 9]), Some(10_000)).unwrap(), Some(Port(which)));
            let calls = m.calls.borrow();
            assert_eq!(calls.len(), 2);
            // All ports in one hypercall, with the absolute deadline.
            assert!(calls.iter().all(|(p, d)| p == &[3, 5, 9] && *d == 1_010_000));
        }
        // No timeout: deadline 0.
        let m = Model::new(&[4], &[Then::Event(4, 1)]);
        assert_eq!(block_any(&m, &ports(&[4]), None).unwrap(), Some(Port(4)));
        assert_eq!(m.calls.borrow()[0].1, 0);
    }

    #[test]
    fn pending_ports_return_at_once_in_slice_order_and_stay_pending() {
        let m = Model::new(&[3, 5, 9], &[]);
        m.pending.borrow_mut().extend([9, 3]);
        let list = ports(&[9, 5, 3]);
        assert_eq!(block_any(&m, &list, None).unwrap(), Some(Port(9)));
        assert_eq!(block_any(&m, &list, None).unwrap(), Some(Port(3)));
        assert_eq!(block_any(&m, &list, Some(0)).unwrap(), None);
        assert!(m.calls.borrow().is_empty(), "no hypercall while something is pending");
    }

    #[test]
    fn times_out_at_the_deadline() {
        let m = Model::new(&[3], &[Then::Sleep]);
        assert_eq!(block_any(&m, &ports(&[3]), Some(5_000)).unwrap(), None);
        assert_eq!(*m.now.borrow(), 1_005_000);
        assert_eq!(m.calls.borrow().len(), 1);
        // A zero timeout never blocks.
        let m = Model::new(&[3], &[]);
        assert_eq!(block_any(&m, &ports(&[3]), Some(0)).unwrap(), None);
        assert!(m.calls.borrow().is_empty());
    }

    #[test]
    fn bad_port_lists_are_refused_before_any_hypercall() {
        let m = Model::new(&[3, 5], &[]);
        m.pending.borrow_mut().insert(3);
        assert!(matches!(block_any(&m, &[], None), Err(PlatformError::InvalidRequest { .. })));
        assert_eq!(block_any(&m, &ports(&[3, 7]), None), Err(PlatformError::BadPort(Port(7))));
        assert!(m.pending.borrow().contains(&3), "the pending event stays");
        let many: Vec<Port> = (0..=SCHED_POLL_MAX_PORTS as u32).map(|_| Port(3)).collect();
        assert!(matches!(block_any(&m, &many, None), Err(PlatformError::InvalidRequest { .. })));
        assert_eq!(block_any(&m, &many[..SCHED_POLL_MAX_PORTS], None).unwrap(), Some(Port(3)));
        assert!(m.calls.borrow().is_empty());
    }
}
