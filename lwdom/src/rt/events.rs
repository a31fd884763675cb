//! Event channels, found by polling the pending bits in the shared info
//! page; waiting is `SCHEDOP_poll` (upcalls stay masked).
//!
//! Xen's `SCHEDOP_poll` checks only that each port is below the domain's
//! limit, not that it is open, so the runtime records which ports are open
//! (those it allocated or bound, and the console and xenstore ports the
//! domain builder opened) and refuses the others with `BadPort`, as the
//! other platforms do. An error from `SCHEDOP_poll` itself is returned, not
//! retried: retrying would spin until the deadline.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use grant_tables::{DomId, PlatformError, Port};

use super::hypercall::{event_channel_op, physdev_op, sched_op};
use super::{shared_info, time};
use crate::wait;
use crate::abi::{
    physdev_eoi, PHYSDEVOP_EOI, evtchn_alloc_unbound, evtchn_bind_interdomain, evtchn_bind_pirq, evtchn_close, evtchn_send, evtchn_unmask,
    sched_poll, EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_BIND_PIRQ, EVTCHNOP_CLOSE, EVTCHNOP_SEND,
    EVTCHNOP_UNMASK, EVTCHN_2L_NR_CHANNELS, EVTCHN_MASK, EVTCHN_PENDING, SCHEDOP_POLL,
    SCHED_POLL_MAX_PORTS,
};

/// Ports of the 2-level ABI on a 64-bit guest.
const NR_PORTS: u32 = EVTCHN_2L_NR_CHANNELS;

/// One bit per port: open in this domain.
static OPEN: [AtomicU64; NR_PORTS as usize / 64] = [const { AtomicU64::new(0) }; NR_PORTS as usize / 64];

/// Per port: the pirq bound to it plus one when Xen needs an
/// end-of-interrupt for it (0: none). See [`poll`].
static EOI_PIRQ: [AtomicU32; NR_PORTS as usize] = [const { AtomicU32::new(0) }; NR_PORTS as usize];

/// Records that taking an event on `port` must end pirq `pirq`'s interrupt
/// (`PHYSDEVOP_eoi`), or (`None`) that it need not.
pub(crate) fn set_eoi_pirq(port: Port, pirq: Option<u32>) {
    if let Some(slot) = EOI_PIRQ.get(port.0 as usize) {
        slot.store(pirq.map_or(0, |p| p.saturating_add(1)), Ordering::Relaxed);
    }
}

/// Ends the interrupt of the pirq bound to `port`, if it needs it.
fn eoi_if_pirq(port: Port) -> Result<(), PlatformError> {
    let Some(pirq) = EOI_PIRQ.get(port.0 as usize).map(|s| s.load(Ordering::Relaxed)).filter(|&p| p != 0) else {
        return Ok(());
    };
    let mut arg = physdev_eoi { irq: pirq - 1 };
    // SAFETY: PHYSDEVOP_eoi takes a `struct physdev_eoi`.
    check("PHYSDEVOP_eoi", unsafe { physdev_op(PHYSDEVOP_EOI, (&mut arg as *mut physdev_eoi).cast()) })
}

fn open_bit(port: Port) -> Option<(&'static AtomicU64, u64)> {
    let i = port.0 as usize;
    Some((OPEN.get(i / 64)?, 1u64 << (i % 64)))
}

/// Records a port the domain builder opened (the console's, xenstore's).
pub(crate) fn mark_open(port: Port) {
    if let Some((w, bit)) = open_bit(port) {
        w.fetch_or(bit, Ordering::Relaxed);
    }
}

fn mark_closed(port: Port) {
    if let Some((w, bit)) = open_bit(port) {
        w.fetch_and(!bit, Ordering::Relaxed);
    }
}

fn check_open(port: Port) -> Result<(), PlatformError> {
    match open_bit(port) {
        Some((w, bit)) if w.load(Ordering::Relaxed) & bit != 0 => Ok(()),
        _ => Err(PlatformError::BadPort(port)),
    }
}

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
    let mut arg = evtchn_send { port: port.0 };
    // SAFETY: EVTCHNOP_send takes a `struct evtchn_send`.
    check("EVTCHNOP_send", unsafe { event_channel_op(EVTCHNOP_SEND, (&mut arg as *mut evtchn_send).cast()) })
}

/// Tests and clears `port`'s pending bit. For a pirq that needs an
/// end-of-interrupt, a taken event also ends the interrupt (after the
/// clear, as Linux does), so that the device's next interrupt is
/// delivered: the driver then reads the device's own status.
pub fn poll(port: Port) -> Result<bool, PlatformError> {
    check_open(port)?;
    let (w, bit) = bit_word(EVTCHN_PENDING, port)?;
    // Quick look first: clearing costs a locked instruction.
    if w.load(Ordering::Acquire) & bit == 0 {
        return Ok(false);
    }
    let taken = w.fetch_and(!bit, Ordering::AcqRel) & bit != 0;
    if taken {
        eoi_if_pirq(port)?;
    }
    Ok(taken)
}

/// Blocks the vCPU until one of `ports` is pending or system time passes
/// `deadline_ns` (0: no deadline). With no ports, sleeps until the
/// deadline. Xen's error (a port beyond the domain's limit, for instance)
/// is returned.
pub fn poll_timeout(ports: &[u32], deadline_ns: u64) -> Result<(), PlatformError> {
    if ports.len() > SCHED_POLL_MAX_PORTS {
        return Err(wait::too_many_ports());
    }
    // Xen only reads through `ports` (a guest handle, typed `*mut`).
    let arg = sched_poll { ports: ports.as_ptr().cast_mut(), nr_ports: ports.len() as u32, timeout: deadline_ns };
    // SAFETY: SCHEDOP_poll takes a `struct sched_poll` whose ports array
    // (`ports`, `nr_ports` entries) lives across the call.
    check("SCHEDOP_poll", unsafe { sched_op(SCHEDOP_POLL, (&arg as *const sched_poll).cast()) })
}

/// The domain's side of [`wait::block_any`].
struct Xen;

impl wait::PollOps for Xen {
    fn check_open(&self, port: Port) -> Result<(), PlatformError> {
        check_open(port)
    }
    fn take_pending(&self, port: Port) -> Result<bool, PlatformError> {
        poll(port)
    }
    fn now_ns(&self) -> u64 {
        time::now_ns()
    }
    fn sched_poll(&self, ports: &[u32], deadline_ns: u64) -> Result<(), PlatformError> {
        poll_timeout(ports, deadline_ns)
    }
}

/// Waits until `port` is pending (then clears it and returns `true`) or
/// `timeout_ns` passes (returns `false`).
pub fn block(port: Port, timeout_ns: Option<u64>) -> Result<bool, PlatformError> {
    Ok(block_any(&[port], timeout_ns)?.is_some())
}

/// Waits until one of `ports` is pending or `timeout_ns` passes (see
/// [`wait::block_any`]).
pub fn block_any(ports: &[Port], timeout_ns: Option<u64>) -> Result<Option<Port>, PlatformError> {
    wait::block_any(&Xen, ports, timeout_ns)
}

/// Allocates a port that `remote` may bind to.
pub fn alloc_unbound(remote: DomId) -> Result<Port, PlatformError> {
    let mut arg = evtchn_alloc_unbound { dom: grant_tables::abi::DOMID_SELF, remote_dom: remote.0, port: 0 };
    // SAFETY: EVTCHNOP_alloc_unbound takes this structure and writes `port`.
    let rc = unsafe { event_channel_op(EVTCHNOP_ALLOC_UNBOUND, (&mut arg as *mut evtchn_alloc_unbound).cast()) };
    if rc != 0 {
        return Err(PlatformError::BindRefused { remote, reason: "EVTCHNOP_alloc_unbound failed" });
    }
    let port = Port(arg.port);
    mark_open(port);
    Ok(port)
}

/// Binds to `remote`'s unbound `remote_port`.
pub fn bind_interdomain(remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
    let mut arg = evtchn_bind_interdomain { remote_dom: remote.0, remote_port: remote_port.0, local_port: 0 };
    // SAFETY: EVTCHNOP_bind_interdomain takes this structure and writes
    // `local_port`.
    let rc = unsafe { event_channel_op(EVTCHNOP_BIND_INTERDOMAIN, (&mut arg as *mut evtchn_bind_interdomain).cast()) };
    if rc != 0 {
        return Err(PlatformError::BindRefused { remote, reason: "EVTCHNOP_bind_interdomain failed" });
    }
    let port = Port(arg.local_port);
    mark_open(port);
    Ok(port)
}

/// Binds physical IRQ `pirq` (one Xen gave this domain, for instance for
/// a passed-through device's MSI) to a new port; returns the port or Xen's
/// error code.
pub fn bind_pirq(pirq: u32) -> Result<Port, PlatformError> {
    // Not shared: an MSI vector belongs to one device.
    let mut arg = evtchn_bind_pirq { pirq, flags: 0, port: 0 };
    // SAFETY: EVTCHNOP_bind_pirq takes this structure and writes `port`.
    check("EVTCHNOP_bind_pirq", unsafe { event_channel_op(EVTCHNOP_BIND_PIRQ, (&mut arg as *mut evtchn_bind_pirq).cast()) })?;
    let port = Port(arg.port);
    mark_open(port);
    Ok(port)
}

/// Masks `port`.
pub fn mask(port: Port) -> Result<(), PlatformError> {
    check_open(port)?;
    let (w, bit) = bit_word(EVTCHN_MASK, port)?;
    w.fetch_or(bit, Ordering::AcqRel);
    Ok(())
}

/// Unmasks `port`.
pub fn unmask(port: Port) -> Result<(), PlatformError> {
    check_open(port)?;
    let mut arg = evtchn_unmask { port: port.0 };
    // SAFETY: EVTCHNOP_unmask takes a `struct evtchn_unmask`.
    check("EVTCHNOP_unmask", unsafe { event_channel_op(EVTCHNOP_UNMASK, (&mut arg as *mut evtchn_unmask).cast()) })
}

/// Closes `port`.
pub fn close(port: Port) -> Result<(), PlatformError> {
    let mut arg = evtchn_close { port: port.0 };
    // SAFETY: EVTCHNOP_close takes a `struct evtchn_close`.
    check("EVTCHNOP_close", unsafe { event_channel_op(EVTCHNOP_CLOSE, (&mut arg as *mut evtchn_close).cast()) })?;
    mark_closed(port);
    set_eoi_pirq(port, None);
    Ok(())
}
