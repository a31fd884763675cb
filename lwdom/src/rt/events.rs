//! Event channels, found by polling the pending bits in the shared info
//! page; waiting is `SCHEDOP_poll` (upcalls stay masked).

use core::sync::atomic::{AtomicU64, Ordering};

use grant_tables::{DomId, PlatformError, Port};

use super::hypercall::{event_channel_op, sched_op, SchedPoll, SCHEDOP_POLL};
use super::{shared_info, time};

/// `EVTCHNOP_bind_interdomain`.
const EVTCHNOP_BIND_INTERDOMAIN: usize = 0;
/// `EVTCHNOP_close`.
const EVTCHNOP_CLOSE: usize = 3;
/// `EVTCHNOP_send`.
const EVTCHNOP_SEND: usize = 4;
/// `EVTCHNOP_alloc_unbound`.
const EVTCHNOP_ALLOC_UNBOUND: usize = 6;
/// `EVTCHNOP_unmask`.
const EVTCHNOP_UNMASK: usize = 9;

/// Offset of `evtchn_pending[]` in `struct shared_info`.
const PENDING: usize = 2048;
/// Offset of `evtchn_mask[]`.
const MASK: usize = 2560;
/// Ports of the 2-level ABI on a 64-bit guest.
const NR_PORTS: u32 = 4096;

fn bit_word(base: usize, port: Port) -> Result<(&'static AtomicU64, u64), PlatformError> {
    if port.0 >= NR_PORTS {
        return Err(PlatformError::BadPort(port));
    }
    let off = base + (port.0 as usize / 64) * 8;
    // SAFETY: the shared info page is mapped for the domain's lifetime;
    // `off` is inside one of its two 512-byte bit arrays, 8-aligned; Xen
    // changes the words concurrently, so they are only accessed atomically.
    let w = unsafe { AtomicU64::from_ptr(shared_info().add(off).cast::<u64>()) };
    Ok((w, 1u64 << (port.0 % 64)))
}

fn check(op: &'static str, rc: isize) -> Result<(), PlatformError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(PlatformError::Os { op, code: rc as i32 })
    }
}

/// Sends an event to the other end of `port`.
pub fn notify(port: Port) -> Result<(), PlatformError> {
    let mut arg = port.0;
    // SAFETY: EVTCHNOP_send takes a `struct evtchn_send { port }`.
    check("EVTCHNOP_send", unsafe { event_channel_op(EVTCHNOP_SEND, (&mut arg as *mut u32).cast()) })
}

/// Tests and clears `port`'s pending bit.
pub fn poll(port: Port) -> Result<bool, PlatformError> {
    let (w, bit) = bit_word(PENDING, port)?;
    // Quick look first: clearing costs a locked instruction.
    if w.load(Ordering::Acquire) & bit == 0 {
        return Ok(false);
    }
    Ok(w.fetch_and(!bit, Ordering::AcqRel) & bit != 0)
}

/// Blocks the vCPU until one of `ports` is pending or system time passes
/// `deadline_ns` (0: no deadline).
pub fn poll_timeout(ports: &[u32], deadline_ns: u64) {
    let arg = SchedPoll { ports: ports.as_ptr(), nr_ports: ports.len() as u32, timeout: deadline_ns };
    // SAFETY: SCHEDOP_poll takes a `struct sched_poll` whose ports array
    // (`ports`) lives across the call.
    unsafe { sched_op(SCHEDOP_POLL, (&arg as *const SchedPoll).cast()) };
}

/// Waits until `port` is pending (then clears it and returns `true`) or
/// `timeout_ns` passes (returns `false`).
pub fn block(port: Port, timeout_ns: Option<u64>) -> Result<bool, PlatformError> {
    let deadline = timeout_ns.map(|t| time::now_ns().saturating_add(t).max(1));
    loop {
        if poll(port)? {
            return Ok(true);
        }
        if let Some(d) = deadline {
            if time::now_ns() >= d {
                return Ok(false);
            }
        }
        poll_timeout(&[port.0], deadline.unwrap_or(0));
    }
}

/// Allocates a port that `remote` may bind to.
pub fn alloc_unbound(remote: DomId) -> Result<Port, PlatformError> {
    #[repr(C)]
    struct AllocUnbound {
        dom: u16,
        remote_dom: u16,
        port: u32,
    }
    let mut arg = AllocUnbound { dom: grant_tables::abi::DOMID_SELF, remote_dom: remote.0, port: 0 };
    // SAFETY: EVTCHNOP_alloc_unbound takes this structure and writes `port`.
    let rc = unsafe { event_channel_op(EVTCHNOP_ALLOC_UNBOUND, (&mut arg as *mut AllocUnbound).cast()) };
    if rc != 0 {
        return Err(PlatformError::BindRefused { remote, reason: "EVTCHNOP_alloc_unbound failed" });
    }
    Ok(Port(arg.port))
}

/// Binds to `remote`'s unbound `remote_port`.
pub fn bind_interdomain(remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
    #[repr(C)]
    struct BindInterdomain {
        remote_dom: u16,
        _pad: u16,
        remote_port: u32,
        local_port: u32,
    }
    let mut arg = BindInterdomain { remote_dom: remote.0, _pad: 0, remote_port: remote_port.0, local_port: 0 };
    // SAFETY: EVTCHNOP_bind_interdomain takes this structure and writes
    // `local_port`.
    let rc = unsafe { event_channel_op(EVTCHNOP_BIND_INTERDOMAIN, (&mut arg as *mut BindInterdomain).cast()) };
    if rc != 0 {
        return Err(PlatformError::BindRefused { remote, reason: "EVTCHNOP_bind_interdomain failed" });
    }
    Ok(Port(arg.local_port))
}

/// Masks `port`.
pub fn mask(port: Port) -> Result<(), PlatformError> {
    let (w, bit) = bit_word(MASK, port)?;
    w.fetch_or(bit, Ordering::AcqRel);
    Ok(())
}

/// Unmasks `port`.
pub fn unmask(port: Port) -> Result<(), PlatformError> {
    bit_word(MASK, port)?;
    let mut arg = port.0;
    // SAFETY: EVTCHNOP_unmask takes a `struct evtchn_unmask { port }`.
    check("EVTCHNOP_unmask", unsafe { event_channel_op(EVTCHNOP_UNMASK, (&mut arg as *mut u32).cast()) })
}

/// Closes `port`.
pub fn close(port: Port) -> Result<(), PlatformError> {
    let mut arg = port.0;
    // SAFETY: EVTCHNOP_close takes a `struct evtchn_close { port }`.
    check("EVTCHNOP_close", unsafe { event_channel_op(EVTCHNOP_CLOSE, (&mut arg as *mut u32).cast()) })
}
