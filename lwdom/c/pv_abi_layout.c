/*
 * The x86-64 PV ABI that lwdom uses, as Xen's own public headers lay it
 * out: a table of type sizes and alignments, field offsets and sizes, and
 * constant values. lwdom's host tests (src/abi.rs) compare it, row by row,
 * with the Rust definitions the runtime uses (most of them from xen-sys).
 *
 * build.rs compiles this for Linux hosts only, with
 * __XEN_INTERFACE_VERSION__ set to the headers' latest version.
 */
#include <stddef.h>
#include <stdint.h>

#include <xen/xen.h>
#include <xen/event_channel.h>
#include <xen/sched.h>
#include <xen/memory.h>
#include <xen/physdev.h>

struct lwdom_layout_row {
    const char *name; /* "type", "type.field.path" or "CONSTANT" */
    uint32_t kind;    /* 0 type, 1 field, 2 constant */
    uint32_t _pad;
    uint64_t size;    /* type, field: sizeof */
    uint64_t align;   /* type: _Alignof */
    uint64_t offset;  /* field: offsetof */
    int64_t value;    /* constant */
};

#define TYPE(T) { #T, 0, 0, sizeof(struct T), _Alignof(struct T), 0, 0 }
#define FIELD(T, m) \
    { #T "." #m, 1, 0, sizeof(((struct T *)0)->m), 0, offsetof(struct T, m), 0 }
#define CONST(c) { #c, 2, 0, sizeof(c), 0, 0, (int64_t)(c) }

static const struct lwdom_layout_row rows[] = {
    TYPE(start_info),
    FIELD(start_info, magic),
    FIELD(start_info, nr_pages),
    FIELD(start_info, shared_info),
    FIELD(start_info, flags),
    FIELD(start_info, store_mfn),
    FIELD(start_info, store_evtchn),
    FIELD(start_info, console),
    FIELD(start_info, console.domU.mfn),
    FIELD(start_info, console.domU.evtchn),
    FIELD(start_info, pt_base),
    FIELD(start_info, nr_pt_frames),
    FIELD(start_info, mfn_list),
    FIELD(start_info, mod_start),
    FIELD(start_info, mod_len),
    FIELD(start_info, cmd_line),
    FIELD(start_info, first_p2m_pfn),
    FIELD(start_info, nr_p2m_frames),

    TYPE(shared_info),
    FIELD(shared_info, vcpu_info),
    FIELD(shared_info, evtchn_pending),
    FIELD(shared_info, evtchn_mask),
    FIELD(shared_info, wc_version),
    FIELD(shared_info, wc_sec),
    FIELD(shared_info, wc_nsec),
    FIELD(shared_info, wc_sec_hi),
    FIELD(shared_info, arch),

    TYPE(vcpu_info),
    FIELD(vcpu_info, evtchn_upcall_pending),
    FIELD(vcpu_info, evtchn_upcall_mask),
    FIELD(vcpu_info, evtchn_pending_sel),
    FIELD(vcpu_info, arch),
    FIELD(vcpu_info, time),

    TYPE(vcpu_time_info),
    FIELD(vcpu_time_info, version),
    FIELD(vcpu_time_info, tsc_timestamp),
    FIELD(vcpu_time_info, system_time),
    FIELD(vcpu_time_info, tsc_to_system_mul),
    FIELD(vcpu_time_info, tsc_shift),

    TYPE(trap_info),
    FIELD(trap_info, vector),
    FIELD(trap_info, flags),
    FIELD(trap_info, cs),
    FIELD(trap_info, address),

    TYPE(mmu_update),
    FIELD(mmu_update, ptr),
    FIELD(mmu_update, val),

    TYPE(evtchn_alloc_unbound),
    FIELD(evtchn_alloc_unbound, dom),
    FIELD(evtchn_alloc_unbound, remote_dom),
    FIELD(evtchn_alloc_unbound, port),
    TYPE(evtchn_bind_interdomain),
    FIELD(evtchn_bind_interdomain, remote_dom),
    FIELD(evtchn_bind_interdomain, remote_port),
    FIELD(evtchn_bind_interdomain, local_port),
    TYPE(evtchn_send),
    FIELD(evtchn_send, port),
    TYPE(evtchn_close),
    FIELD(evtchn_close, port),
    TYPE(evtchn_unmask),
    FIELD(evtchn_unmask, port),

    TYPE(sched_poll),
    FIELD(sched_poll, ports),
    FIELD(sched_poll, nr_ports),
    FIELD(sched_poll, timeout),
    TYPE(sched_shutdown),
    FIELD(sched_shutdown, reason),

    TYPE(evtchn_bind_pirq),
    FIELD(evtchn_bind_pirq, pirq),
    FIELD(evtchn_bind_pirq, flags),
    FIELD(evtchn_bind_pirq, port),
    TYPE(xen_memory_reservation),
    FIELD(xen_memory_reservation, extent_start),
    FIELD(xen_memory_reservation, nr_extents),
    FIELD(xen_memory_reservation, extent_order),
    FIELD(xen_memory_reservation, mem_flags),
    FIELD(xen_memory_reservation, domid),
    TYPE(xen_memory_exchange),
    FIELD(xen_memory_exchange, in),
    FIELD(xen_memory_exchange, out),
    FIELD(xen_memory_exchange, nr_exchanged),
    TYPE(physdev_eoi),
    FIELD(physdev_eoi, irq),
    TYPE(physdev_irq_status_query),
    FIELD(physdev_irq_status_query, irq),
    FIELD(physdev_irq_status_query, flags),

    CONST(__HYPERVISOR_set_trap_table),
    CONST(__HYPERVISOR_mmu_update),
    CONST(__HYPERVISOR_update_va_mapping),
    CONST(__HYPERVISOR_grant_table_op),
    CONST(__HYPERVISOR_sched_op),
    CONST(__HYPERVISOR_event_channel_op),
    CONST(__HYPERVISOR_update_va_mapping_otherdomain),
    CONST(__HYPERVISOR_memory_op),
    CONST(__HYPERVISOR_physdev_op),
    CONST(EVTCHNOP_bind_pirq),
    CONST(XENMEM_maximum_ram_page),
    CONST(XENMEM_exchange),
    CONST(PHYSDEVOP_irq_status_query),
    CONST(PHYSDEVOP_eoi),
    CONST(XENIRQSTAT_needs_eoi),
    CONST(SCHEDOP_yield),
    CONST(SCHEDOP_shutdown),
    CONST(SCHEDOP_poll),
    CONST(SHUTDOWN_poweroff),
    CONST(SHUTDOWN_reboot),
    CONST(SHUTDOWN_crash),
    CONST(EVTCHNOP_bind_interdomain),
    CONST(EVTCHNOP_close),
    CONST(EVTCHNOP_send),
    CONST(EVTCHNOP_alloc_unbound),
    CONST(EVTCHNOP_unmask),
    CONST(MMU_NORMAL_PT_UPDATE),
    CONST(FLAT_KERNEL_CS),
    /* Function-like macros or expressions: not in xen-sys. */
    CONST(UVMF_INVLPG),
    CONST(DOMID_SELF),
    CONST(DOMID_IO),
    CONST(EVTCHN_2L_NR_CHANNELS),
};

const struct lwdom_layout_row *lwdom_pv_abi_layout(size_t *count)
{
    *count = sizeof(rows) / sizeof(rows[0]);
    return rows;
}
