//! The x86-64 PV ABI the runtime uses: Xen's structures and numbers, taken
//! from the `xen-sys` crate where its bindings are right, and checked
//! against Xen's own headers either way.
//!
//! # From xen-sys (0.0.0-pre2)
//! Its bindings are bindgen output of Xen 4.14's public headers. Taken from
//! it, and found right by the layout tests below:
//! - the structures: [`start_info`], [`shared_info`], [`vcpu_info`],
//!   [`vcpu_time_info`], [`trap_info`], [`mmu_update`], the event channel
//!   operations ([`evtchn_alloc_unbound`], [`evtchn_bind_interdomain`],
//!   [`evtchn_send`], [`evtchn_close`], [`evtchn_unmask`]) and the scheduler
//!   operations ([`sched_poll`], [`sched_shutdown`]);
//! - the hypercall numbers, the `SCHEDOP_*`, `SHUTDOWN_*` and `EVTCHNOP_*`
//!   sub-op numbers, and `FLAT_KERNEL_CS`.
//!
//! `mmu_update` is re-exported and checked but not used yet: the runtime
//! maps frames with `update_va_mapping`.
//!
//! # Not from xen-sys
//! - The hypercall entry (`rt::hypercall`): xen-sys's `hypercall_1` to
//!   `hypercall_5` do not declare that the hypercall page's stubs clobber
//!   `rcx` and `r11` (the `syscall` instruction does), mark a `call` (which
//!   pushes a return address) as `nostack`, and `hypercall_5` passes its
//!   fifth argument in `r9` where Xen's x86-64 ABI reads it from `r8`.
//!   They also need a symbol named `HYPERCALL_PAGE` and export unmangled
//!   `hypercall_N` symbols. Its `hypercall::sched_op` passes the argument
//!   by value on x86-64 where `SCHEDOP_shutdown` wants a pointer to a
//!   `sched_shutdown`, and panics for the other sub-ops. None of them is
//!   called; lwdom keeps its own entry.
//! - Missing from xen-sys (function-like macros and expressions, which
//!   bindgen does not expand): [`UVMF_INVLPG`] (`xen_mk_ulong(2)`),
//!   `DOMID_SELF` (`xen_mk_uint(0x7FF0)`; the runtime uses
//!   `grant_tables::abi::DOMID_SELF`) and [`EVTCHN_2L_NR_CHANNELS`] (a
//!   `sizeof` expression). Defined here, checked against the headers.
//! - [`SCHED_POLL_MAX_PORTS`]: Xen's own limit, from its implementation of
//!   `SCHEDOP_poll` (`xen/common/sched/core.c`), not its public headers.
//! - Missing from xen-sys (it binds neither `memory.h` nor `physdev.h`):
//!   [`xen_memory_reservation`], [`xen_memory_exchange`],
//!   [`physdev_eoi`], [`physdev_irq_status_query`], their sub-op numbers,
//!   [`DOMID_IO`] and [`XENIRQSTAT_NEEDS_EOI`]. Defined here, checked
//!   against the headers.
//! - xen-sys types `sched_poll.ports` as `*mut evtchn_port_t` (the guest
//!   handle); Xen only reads through it, and the runtime passes a pointer
//!   to a local array.

use core::mem::offset_of;

pub use xen_sys::{
    evtchn_alloc_unbound, evtchn_bind_interdomain, evtchn_bind_pirq, evtchn_close, evtchn_send, evtchn_unmask,
    mmu_update, sched_poll, sched_shutdown, shared_info, start_info, trap_info, vcpu_info,
    vcpu_time_info,
};

/// `__HYPERVISOR_set_trap_table`.
pub const HYPERVISOR_SET_TRAP_TABLE: usize = xen_sys::__HYPERVISOR_set_trap_table as usize;
/// `__HYPERVISOR_mmu_update`.
pub const HYPERVISOR_MMU_UPDATE: usize = xen_sys::__HYPERVISOR_mmu_update as usize;
/// `__HYPERVISOR_update_va_mapping`.
pub const HYPERVISOR_UPDATE_VA_MAPPING: usize = xen_sys::__HYPERVISOR_update_va_mapping as usize;
/// `__HYPERVISOR_grant_table_op`.
pub const HYPERVISOR_GRANT_TABLE_OP: usize = xen_sys::__HYPERVISOR_grant_table_op as usize;
/// `__HYPERVISOR_sched_op`.
pub const HYPERVISOR_SCHED_OP: usize = xen_sys::__HYPERVISOR_sched_op as usize;
/// `__HYPERVISOR_event_channel_op`.
pub const HYPERVISOR_EVENT_CHANNEL_OP: usize = xen_sys::__HYPERVISOR_event_channel_op as usize;

/// `__HYPERVISOR_update_va_mapping_otherdomain`.
pub const HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN: usize =
    xen_sys::__HYPERVISOR_update_va_mapping_otherdomain as usize;
/// `__HYPERVISOR_memory_op`.
pub const HYPERVISOR_MEMORY_OP: usize = xen_sys::__HYPERVISOR_memory_op as usize;
/// `__HYPERVISOR_physdev_op`.
pub const HYPERVISOR_PHYSDEV_OP: usize = xen_sys::__HYPERVISOR_physdev_op as usize;

/// `SCHEDOP_yield`.
pub const SCHEDOP_YIELD: usize = xen_sys::SCHEDOP_yield as usize;
/// `SCHEDOP_shutdown`.
pub const SCHEDOP_SHUTDOWN: usize = xen_sys::SCHEDOP_shutdown as usize;
/// `SCHEDOP_poll`.
pub const SCHEDOP_POLL: usize = xen_sys::SCHEDOP_poll as usize;

/// `SHUTDOWN_poweroff`.
pub const SHUTDOWN_POWEROFF: u32 = xen_sys::SHUTDOWN_poweroff;
/// `SHUTDOWN_reboot`.
pub const SHUTDOWN_REBOOT: u32 = xen_sys::SHUTDOWN_reboot;
/// `SHUTDOWN_crash`.
pub const SHUTDOWN_CRASH: u32 = xen_sys::SHUTDOWN_crash;

/// `EVTCHNOP_bind_interdomain`.
pub const EVTCHNOP_BIND_INTERDOMAIN: usize = xen_sys::EVTCHNOP_bind_interdomain as usize;
/// `EVTCHNOP_close`.
pub const EVTCHNOP_CLOSE: usize = xen_sys::EVTCHNOP_close as usize;
/// `EVTCHNOP_send`.
pub const EVTCHNOP_SEND: usize = xen_sys::EVTCHNOP_send as usize;
/// `EVTCHNOP_alloc_unbound`.
pub const EVTCHNOP_ALLOC_UNBOUND: usize = xen_sys::EVTCHNOP_alloc_unbound as usize;
/// `EVTCHNOP_unmask`.
pub const EVTCHNOP_UNMASK: usize = xen_sys::EVTCHNOP_unmask as usize;

/// `EVTCHNOP_bind_pirq`.
pub const EVTCHNOP_BIND_PIRQ: usize = xen_sys::EVTCHNOP_bind_pirq as usize;

/// `FLAT_KERNEL_CS`: the code segment a 64-bit PV kernel runs in.
pub const FLAT_KERNEL_CS: u16 = xen_sys::FLAT_KERNEL_CS as u16;

/// `UVMF_INVLPG`: flush the one mapping from this vCPU's TLB (not in
/// xen-sys).
pub const UVMF_INVLPG: usize = 2;

/// `DOMID_IO`: the owner of I/O memory, named as the foreign domain when
/// mapping device frames (not in xen-sys).
pub const DOMID_IO: u16 = 0x7FF1;

/// `XENMEM_maximum_ram_page`: the highest machine frame of RAM.
pub const XENMEM_MAXIMUM_RAM_PAGE: usize = 2;
/// `XENMEM_exchange`: trade pages for others (contiguous, below an address
/// width).
pub const XENMEM_EXCHANGE: usize = 11;

/// `PHYSDEVOP_irq_status_query`.
pub const PHYSDEVOP_IRQ_STATUS_QUERY: usize = 5;
/// `PHYSDEVOP_eoi`.
pub const PHYSDEVOP_EOI: usize = 12;
/// `XENIRQSTAT_needs_eoi`: the pirq is delivered again only after
/// `PHYSDEVOP_eoi`.
pub const XENIRQSTAT_NEEDS_EOI: u32 = 1;

/// `struct xen_memory_reservation` (`memory.h`; `mem_flags` holds
/// `XENMEMF_address_bits(n)` = n in its low byte).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct xen_memory_reservation {
    /// Guest handle of the extents' frame list.
    pub extent_start: u64,
    /// Extents.
    pub nr_extents: u64,
    /// Each extent is `2^extent_order` pages.
    pub extent_order: u32,
    /// `XENMEMF_*`.
    pub mem_flags: u32,
    /// `DOMID_SELF` for a guest.
    pub domid: u16,
}

/// `struct xen_memory_exchange` (`memory.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct xen_memory_exchange {
    /// The extents given up (machine frames, for a PV domain).
    pub r#in: xen_memory_reservation,
    /// The extents wanted: pfns in, machine frames out.
    pub out: xen_memory_reservation,
    /// Input extents exchanged (0 on entry).
    pub nr_exchanged: u64,
}

/// `struct physdev_eoi` (`physdev.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct physdev_eoi {
    /// The pirq.
    pub irq: u32,
}

/// `struct physdev_irq_status_query` (`physdev.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct physdev_irq_status_query {
    /// The pirq (in).
    pub irq: u32,
    /// `XENIRQSTAT_*` (out).
    pub flags: u32,
}

/// `EVTCHN_2L_NR_CHANNELS`: ports of the 2-level event channel ABI on a
/// 64-bit guest (not in xen-sys).
pub const EVTCHN_2L_NR_CHANNELS: u32 = 4096;

/// Most ports one `SCHEDOP_poll` takes (Xen returns `-EINVAL` above).
pub const SCHED_POLL_MAX_PORTS: usize = 128;

/// Offset of `evtchn_pending[]` in the shared info page.
pub const EVTCHN_PENDING: usize = offset_of!(shared_info, evtchn_pending);
/// Offset of `evtchn_mask[]` in the shared info page.
pub const EVTCHN_MASK: usize = offset_of!(shared_info, evtchn_mask);
/// Offset of `vcpu_info[0]` in the shared info page.
pub const VCPU0_INFO: usize = offset_of!(shared_info, vcpu_info);
/// Offset of `vcpu_info[0].evtchn_upcall_mask` in the shared info page.
pub const VCPU0_UPCALL_MASK: usize = VCPU0_INFO + offset_of!(vcpu_info, evtchn_upcall_mask);
/// Offset of `vcpu_info[0].time` (a [`vcpu_time_info`]) in the shared info
/// page.
pub const VCPU0_TIME: usize = VCPU0_INFO + offset_of!(vcpu_info, time);

/// The bit arrays hold one bit per 2-level port.
const _: () = assert!(
    core::mem::size_of::<[xen_sys::xen_ulong_t; 64]>() * 8 == EVTCHN_2L_NR_CHANNELS as usize
);

#[cfg(all(test, target_os = "linux", not(miri)))]
mod tests {
    //! Every definition above against the C compiler's view of Xen's
    //! headers (`c/pv_abi_layout.c`). Not under Miri, which cannot call C.

    use super::*;
    use core::mem::{align_of, size_of};
    use std::ffi::{c_char, CStr};
    use std::format;
    use std::string::{String, ToString};
    use std::vec::Vec;

    #[repr(C)]
    struct CRow {
        name: *const c_char,
        kind: u32,
        _pad: u32,
        size: u64,
        align: u64,
        offset: u64,
        value: i64,
    }

    extern "C" {
        fn lwdom_pv_abi_layout(count: *mut usize) -> *const CRow;
    }

    struct Row {
        name: String,
        kind: u32,
        size: usize,
        align: usize,
        offset: usize,
        value: i64,
    }

    fn table() -> Vec<Row> {
        let mut count = 0usize;
        // SAFETY: the C function writes `count` and returns its static
        // table of that many rows.
        let rows = unsafe { lwdom_pv_abi_layout(&mut count) };
        // SAFETY: `count` initialised rows of a static const array.
        let rows = unsafe { std::slice::from_raw_parts(rows, count) };
        rows.iter()
            .map(|r| Row {
                // SAFETY: every name is a NUL-terminated string literal.
                name: unsafe { CStr::from_ptr(r.name) }.to_str().unwrap().to_string(),
                kind: r.kind,
                size: r.size as usize,
                align: r.align as usize,
                offset: r.offset as usize,
                value: r.value,
            })
            .collect()
    }

    /// What the Rust side says about one row.
    enum Rust {
        Type { size: usize, align: usize },
        Field { offset: usize, size: usize },
        Const(i64),
    }

    /// The size of the field a projection closure points at.
    fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize {
        size_of::<F>()
    }

    macro_rules! ty {
        ($t:ident) => {
            (stringify!($t).to_string(), Rust::Type { size: size_of::<$t>(), align: align_of::<$t>() })
        };
    }
    macro_rules! field {
        ($t:ident, $f:ident) => {
            (
                format!("{}.{}", stringify!($t), stringify!($f)),
                Rust::Field { offset: offset_of!($t, $f), size: size_of_field(|s: &$t| &s.$f) },
            )
        };
    }
    macro_rules! constant {
        ($name:literal, $v:expr) => {
            ($name.to_string(), Rust::Const($v as i64))
        };
    }

    fn rust_side() -> Vec<(String, Rust)> {
        type DomU = xen_sys::start_info__bindgen_ty_1__bindgen_ty_1;
        let dom_u = offset_of!(start_info, console.domU);
        std::vec![
            ty!(start_info),
            field!(start_info, magic),
            field!(start_info, nr_pages),
            field!(start_info, shared_info),
            field!(start_info, flags),
            field!(start_info, store_mfn),
            field!(start_info, store_evtchn),
            field!(start_info, console),
            (
                "start_info.console.domU.mfn".to_string(),
                Rust::Field { offset: dom_u + offset_of!(DomU, mfn), size: size_of_field(|d: &DomU| &d.mfn) },
            ),
            (
                "start_info.console.domU.evtchn".to_string(),
                Rust::Field { offset: dom_u + offset_of!(DomU, evtchn), size: size_of_field(|d: &DomU| &d.evtchn) },
            ),
            field!(start_info, pt_base),
            field!(start_info, nr_pt_frames),
            field!(start_info, mfn_list),
            field!(start_info, mod_start),
            field!(start_info, mod_len),
            field!(start_info, cmd_line),
            field!(start_info, first_p2m_pfn),
            field!(start_info, nr_p2m_frames),
            ty!(shared_info),
            field!(shared_info, vcpu_info),
            field!(shared_info, evtchn_pending),
            field!(shared_info, evtchn_mask),
            field!(shared_info, wc_version),
            field!(shared_info, wc_sec),
            field!(shared_info, wc_nsec),
            field!(shared_info, wc_sec_hi),
            field!(shared_info, arch),
            ty!(vcpu_info),
            field!(vcpu_info, evtchn_upcall_pending),
            field!(vcpu_info, evtchn_upcall_mask),
            field!(vcpu_info, evtchn_pending_sel),
            field!(vcpu_info, arch),
            field!(vcpu_info, time),
            ty!(vcpu_time_info),
            field!(vcpu_time_info, version),
            field!(vcpu_time_info, tsc_timestamp),
            field!(vcpu_time_info, system_time),
            field!(vcpu_time_info, tsc_to_system_mul),
            field!(vcpu_time_info, tsc_shift),
            ty!(trap_info),
            field!(trap_info, vector),
            field!(trap_info, flags),
            field!(trap_info, cs),
            field!(trap_info, address),
            ty!(mmu_update),
            field!(mmu_update, ptr),
            field!(mmu_update, val),
            ty!(evtchn_alloc_unbound),
            field!(evtchn_alloc_unbound, dom),
            field!(evtchn_alloc_unbound, remote_dom),
            field!(evtchn_alloc_unbound, port),
            ty!(evtchn_bind_interdomain),
            field!(evtchn_bind_interdomain, remote_dom),
            field!(evtchn_bind_interdomain, remote_port),
            field!(evtchn_bind_interdomain, local_port),
            ty!(evtchn_send),
            field!(evtchn_send, port),
            ty!(evtchn_close),
            field!(evtchn_close, port),
            ty!(evtchn_unmask),
            field!(evtchn_unmask, port),
            ty!(sched_poll),
            field!(sched_poll, ports),
            field!(sched_poll, nr_ports),
            field!(sched_poll, timeout),
            ty!(sched_shutdown),
            field!(sched_shutdown, reason),
            ty!(evtchn_bind_pirq),
            field!(evtchn_bind_pirq, pirq),
            field!(evtchn_bind_pirq, flags),
            field!(evtchn_bind_pirq, port),
            ty!(xen_memory_reservation),
            field!(xen_memory_reservation, extent_start),
            field!(xen_memory_reservation, nr_extents),
            field!(xen_memory_reservation, extent_order),
            field!(xen_memory_reservation, mem_flags),
            field!(xen_memory_reservation, domid),
            ty!(xen_memory_exchange),
            ("xen_memory_exchange.in".to_string(), Rust::Field { offset: offset_of!(xen_memory_exchange, r#in), size: size_of::<xen_memory_reservation>() }),
            field!(xen_memory_exchange, out),
            field!(xen_memory_exchange, nr_exchanged),
            ty!(physdev_eoi),
            field!(physdev_eoi, irq),
            ty!(physdev_irq_status_query),
            field!(physdev_irq_status_query, irq),
            field!(physdev_irq_status_query, flags),
            constant!("__HYPERVISOR_set_trap_table", HYPERVISOR_SET_TRAP_TABLE),
            constant!("__HYPERVISOR_mmu_update", HYPERVISOR_MMU_UPDATE),
            constant!("__HYPERVISOR_update_va_mapping", HYPERVISOR_UPDATE_VA_MAPPING),
            constant!("__HYPERVISOR_grant_table_op", HYPERVISOR_GRANT_TABLE_OP),
            constant!("__HYPERVISOR_sched_op", HYPERVISOR_SCHED_OP),
            constant!("__HYPERVISOR_event_channel_op", HYPERVISOR_EVENT_CHANNEL_OP),
            constant!("__HYPERVISOR_update_va_mapping_otherdomain", HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN),
            constant!("__HYPERVISOR_memory_op", HYPERVISOR_MEMORY_OP),
            constant!("__HYPERVISOR_physdev_op", HYPERVISOR_PHYSDEV_OP),
            constant!("EVTCHNOP_bind_pirq", EVTCHNOP_BIND_PIRQ),
            constant!("DOMID_IO", DOMID_IO),
            constant!("XENMEM_maximum_ram_page", XENMEM_MAXIMUM_RAM_PAGE),
            constant!("XENMEM_exchange", XENMEM_EXCHANGE),
            constant!("PHYSDEVOP_irq_status_query", PHYSDEVOP_IRQ_STATUS_QUERY),
            constant!("PHYSDEVOP_eoi", PHYSDEVOP_EOI),
            constant!("XENIRQSTAT_needs_eoi", XENIRQSTAT_NEEDS_EOI),
            constant!("SCHEDOP_yield", SCHEDOP_YIELD),
            constant!("SCHEDOP_shutdown", SCHEDOP_SHUTDOWN),
            constant!("SCHEDOP_poll", SCHEDOP_POLL),
            constant!("SHUTDOWN_poweroff", SHUTDOWN_POWEROFF),
            constant!("SHUTDOWN_reboot", SHUTDOWN_REBOOT),
            constant!("SHUTDOWN_crash", SHUTDOWN_CRASH),
            constant!("EVTCHNOP_bind_interdomain", EVTCHNOP_BIND_INTERDOMAIN),
            constant!("EVTCHNOP_close", EVTCHNOP_CLOSE),
            constant!("EVTCHNOP_send", EVTCHNOP_SEND),
            constant!("EVTCHNOP_alloc_unbound", EVTCHNOP_ALLOC_UNBOUND),
            constant!("EVTCHNOP_unmask", EVTCHNOP_UNMASK),
            constant!("MMU_NORMAL_PT_UPDATE", xen_sys::MMU_NORMAL_PT_UPDATE),
            constant!("FLAT_KERNEL_CS", FLAT_KERNEL_CS),
            constant!("UVMF_INVLPG", UVMF_INVLPG),
            constant!("DOMID_SELF", grant_tables::abi::DOMID_SELF),
            constant!("EVTCHN_2L_NR_CHANNELS", EVTCHN_2L_NR_CHANNELS),
        ]
    }

    #[test]
    fn the_pv_abi_matches_xens_headers() {
        let c = table();
        let rust = rust_side();
        let mut errs = Vec::new();
        for (name, r) in &rust {
            let Some(row) = c.iter().find(|row| &row.name == name) else {
                errs.push(format!("{name}: not in the C table"));
                continue;
            };
            match *r {
                Rust::Type { size, align } if row.kind == 0 => {
                    if (size, align) != (row.size, row.align) {
                        errs.push(format!("{name}: Rust size {size} align {align}, C size {} align {}", row.size, row.align));
                    }
                }
                Rust::Field { offset, size } if row.kind == 1 => {
                    if (offset, size) != (row.offset, row.size) {
                        errs.push(format!("{name}: Rust offset {offset} size {size}, C offset {} size {}", row.offset, row.size));
                    }
                }
                Rust::Const(v) if row.kind == 2 => {
                    if v != row.value {
                        errs.push(format!("{name}: Rust {v:#x}, C {:#x}", row.value));
                    }
                }
                _ => errs.push(format!("{name}: a different kind of row in C")),
            }
        }
        for row in &c {
            if !rust.iter().any(|(n, _)| n == &row.name) {
                errs.push(format!("{}: in the C table but not checked", row.name));
            }
        }
        assert!(errs.is_empty(), "the PV ABI differs from Xen's headers:\n{}", errs.join("\n"));
        assert!(c.len() > 80, "only {} rows", c.len());
    }

    #[test]
    fn the_offsets_the_runtime_uses_are_those_of_the_headers() {
        let c = table();
        let off = |name: &str| c.iter().find(|r| r.name == name).map(|r| r.offset).unwrap();
        assert_eq!(EVTCHN_PENDING, off("shared_info.evtchn_pending"));
        assert_eq!(EVTCHN_MASK, off("shared_info.evtchn_mask"));
        assert_eq!(VCPU0_INFO, off("shared_info.vcpu_info"));
        assert_eq!(VCPU0_UPCALL_MASK, off("vcpu_info.evtchn_upcall_mask"));
        assert_eq!(VCPU0_TIME, off("vcpu_info.time"));
        // The values the runtime used to hard-code.
        assert_eq!((EVTCHN_PENDING, EVTCHN_MASK, VCPU0_UPCALL_MASK, VCPU0_TIME), (2048, 2560, 1, 32));
    }
}
