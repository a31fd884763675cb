/*
 * The grant table and shared ring ABI as Xen's own headers lay it out:
 * a table of sizes, alignments, field offsets and constant values, read by
 * the Rust layout tests, plus ring sizes computed by io/ring.h's macros for
 * a few ring types (the echo test ring, two odd shapes, and the real blkif
 * and netif rings).
 */
#include "xen_c_reference.h"

#include <xen/io/blkif.h>
#include <xen/io/netif.h>

/* ---- Extra ring shapes for the ring size checks ------------------------ */

/* A ring whose union is padded: 13 bytes rounded up to 8-byte alignment. */
struct odd_request {
    uint8_t bytes[13];
};
struct odd_response {
    uint64_t word;
};
DEFINE_RING_TYPES(odd, struct odd_request, struct odd_response);

/* A ring whose response is the larger member. */
struct wide_request {
    uint32_t word;
};
struct wide_response {
    uint8_t bytes[100];
};
DEFINE_RING_TYPES(wide, struct wide_request, struct wide_response);

_Static_assert(sizeof(union odd_sring_entry) == 16, "odd entry is padded to 16");
_Static_assert(sizeof(union wide_sring_entry) == 100, "wide entry is the response");

/* ---- The layout table --------------------------------------------------- */

#define C_LAYOUT_TYPE 0u
#define C_LAYOUT_FIELD 1u
#define C_LAYOUT_CONST 2u

struct c_layout_entry {
    const char *name; /* "type", "type.field" or "CONSTANT" */
    uint32_t kind;    /* C_LAYOUT_* */
    uint32_t _pad;
    uint64_t size;    /* type, field: sizeof */
    uint64_t align;   /* type: _Alignof */
    uint64_t offset;  /* field: offsetof */
    int64_t value;    /* constant: its value */
};

/* A type under the name the Rust side looks it up by. */
#define TYPE_ROW(label, T) \
    { label, C_LAYOUT_TYPE, 0, sizeof(T), _Alignof(T), 0, 0 }

/* A member of C type T, listed as "label.member". */
#define FIELD_ROW(label, T, member)                                        \
    { label "." #member, C_LAYOUT_FIELD, 0, sizeof(((T *)0)->member), 0, \
      offsetof(T, member), 0 }

#define CONST_ROW(c) { #c, C_LAYOUT_CONST, 0, sizeof(c), 0, 0, (int64_t)(c) }

static const struct c_layout_entry layout_table[] = {
    /* Scalar types the structures are built from. */
    TYPE_ROW("grant_ref_t", grant_ref_t),
    TYPE_ROW("grant_handle_t", grant_handle_t),
    TYPE_ROW("domid_t", domid_t),
    TYPE_ROW("xen_pfn_t", xen_pfn_t),
    TYPE_ROW("RING_IDX", RING_IDX),

    TYPE_ROW("grant_entry_v1", struct grant_entry_v1),
    FIELD_ROW("grant_entry_v1", struct grant_entry_v1, flags),
    FIELD_ROW("grant_entry_v1", struct grant_entry_v1, domid),
    FIELD_ROW("grant_entry_v1", struct grant_entry_v1, frame),

    TYPE_ROW("gnttab_map_grant_ref", struct gnttab_map_grant_ref),
    FIELD_ROW("gnttab_map_grant_ref", struct gnttab_map_grant_ref, host_addr),
    FIELD_ROW("gnttab_map_grant_ref", struct gnttab_map_grant_ref, flags),
    FIELD_ROW("gnttab_map_grant_ref", struct gnttab_map_grant_ref, ref),
    FIELD_ROW("gnttab_map_grant_ref", struct gnttab_map_grant_ref, dom),
    FIELD_ROW("gnttab_map_grant_ref", struct gnttab_map_grant_ref, status),
    FIELD_ROW("gnttab_map_grant_ref", struct gnttab_map_grant_ref, handle),
    FIELD_ROW("gnttab_map_grant_ref", struct gnttab_map_grant_ref, dev_bus_addr),

    TYPE_ROW("gnttab_unmap_grant_ref", struct gnttab_unmap_grant_ref),
    FIELD_ROW("gnttab_unmap_grant_ref", struct gnttab_unmap_grant_ref, host_addr),
    FIELD_ROW("gnttab_unmap_grant_ref", struct gnttab_unmap_grant_ref, dev_bus_addr),
    FIELD_ROW("gnttab_unmap_grant_ref", struct gnttab_unmap_grant_ref, handle),
    FIELD_ROW("gnttab_unmap_grant_ref", struct gnttab_unmap_grant_ref, status),

    TYPE_ROW("gnttab_setup_table", struct gnttab_setup_table),
    FIELD_ROW("gnttab_setup_table", struct gnttab_setup_table, dom),
    FIELD_ROW("gnttab_setup_table", struct gnttab_setup_table, nr_frames),
    FIELD_ROW("gnttab_setup_table", struct gnttab_setup_table, status),
    FIELD_ROW("gnttab_setup_table", struct gnttab_setup_table, frame_list),

    TYPE_ROW("gnttab_query_size", struct gnttab_query_size),
    FIELD_ROW("gnttab_query_size", struct gnttab_query_size, dom),
    FIELD_ROW("gnttab_query_size", struct gnttab_query_size, nr_frames),
    FIELD_ROW("gnttab_query_size", struct gnttab_query_size, max_nr_frames),
    FIELD_ROW("gnttab_query_size", struct gnttab_query_size, status),

    /* Declared inside struct gnttab_copy; C gives the tag file scope. */
    TYPE_ROW("gnttab_copy_ptr", struct gnttab_copy_ptr),
    FIELD_ROW("gnttab_copy_ptr", struct gnttab_copy_ptr, u),
    FIELD_ROW("gnttab_copy_ptr", struct gnttab_copy_ptr, domid),
    FIELD_ROW("gnttab_copy_ptr", struct gnttab_copy_ptr, offset),

    TYPE_ROW("gnttab_copy", struct gnttab_copy),
    FIELD_ROW("gnttab_copy", struct gnttab_copy, source),
    FIELD_ROW("gnttab_copy", struct gnttab_copy, dest),
    FIELD_ROW("gnttab_copy", struct gnttab_copy, len),
    FIELD_ROW("gnttab_copy", struct gnttab_copy, flags),
    FIELD_ROW("gnttab_copy", struct gnttab_copy, status),

    /*
     * The shared ring header: every NAME_sring starts with the same fields
     * and its entries begin at offsetof(ring). The header has no C type of
     * its own; its size is that offset and its alignment is RING_IDX's.
     */
    { "sring_header", C_LAYOUT_TYPE, 0, offsetof(struct echo_sring, ring), _Alignof(RING_IDX), 0, 0 },
    FIELD_ROW("sring_header", struct echo_sring, req_prod),
    FIELD_ROW("sring_header", struct echo_sring, req_event),
    FIELD_ROW("sring_header", struct echo_sring, rsp_prod),
    FIELD_ROW("sring_header", struct echo_sring, rsp_event),
    FIELD_ROW("sring_header", struct echo_sring, pvt),
    FIELD_ROW("sring_header", struct echo_sring, __pad),

    /* Real protocols' rings: the header is the same size for all of them. */
    FIELD_ROW("blkif_sring", struct blkif_sring, ring),
    TYPE_ROW("blkif_sring_entry", union blkif_sring_entry),
    FIELD_ROW("netif_tx_sring", struct netif_tx_sring, ring),
    TYPE_ROW("netif_tx_sring_entry", union netif_tx_sring_entry),
    FIELD_ROW("netif_rx_sring", struct netif_rx_sring, ring),
    TYPE_ROW("netif_rx_sring_entry", union netif_rx_sring_entry),

    /* The echo test protocol, mirrored by xen_c_reference::EchoRequest/EchoResponse. */
    TYPE_ROW("echo_request", struct echo_request),
    FIELD_ROW("echo_request", struct echo_request, id),
    FIELD_ROW("echo_request", struct echo_request, value),
    FIELD_ROW("echo_request", struct echo_request, payload),
    TYPE_ROW("echo_response", struct echo_response),
    FIELD_ROW("echo_response", struct echo_response, id),
    FIELD_ROW("echo_response", struct echo_response, value),
    FIELD_ROW("echo_response", struct echo_response, status),
    FIELD_ROW("echo_response", struct echo_response, _pad),
    TYPE_ROW("echo_sring_entry", union echo_sring_entry),
    FIELD_ROW("echo_sring", struct echo_sring, ring),

    /* The extra ring shapes (xen_c_reference::{Odd,Wide}{Request,Response}). */
    TYPE_ROW("odd_sring_entry", union odd_sring_entry),
    FIELD_ROW("odd_sring", struct odd_sring, ring),
    TYPE_ROW("wide_sring_entry", union wide_sring_entry),
    FIELD_ROW("wide_sring", struct wide_sring, ring),

    /* Grant entry flags. */
    CONST_ROW(GTF_invalid),
    CONST_ROW(GTF_permit_access),
    CONST_ROW(GTF_accept_transfer),
    CONST_ROW(GTF_transitive),
    CONST_ROW(GTF_type_mask),
    CONST_ROW(GTF_readonly),
    CONST_ROW(GTF_reading),
    CONST_ROW(GTF_writing),
    CONST_ROW(GTF_PWT),
    CONST_ROW(GTF_PCD),
    CONST_ROW(GTF_PAT),
    CONST_ROW(GTF_sub_page),
    CONST_ROW(GTF_transfer_committed),
    CONST_ROW(GTF_transfer_completed),

    /* Grant table sub-ops. */
    CONST_ROW(GNTTABOP_map_grant_ref),
    CONST_ROW(GNTTABOP_unmap_grant_ref),
    CONST_ROW(GNTTABOP_setup_table),
    CONST_ROW(GNTTABOP_dump_table),
    CONST_ROW(GNTTABOP_transfer),
    CONST_ROW(GNTTABOP_copy),
    CONST_ROW(GNTTABOP_query_size),
    CONST_ROW(GNTTABOP_unmap_and_replace),
    CONST_ROW(GNTTABOP_set_version),
    CONST_ROW(GNTTABOP_get_status_frames),
    CONST_ROW(GNTTABOP_get_version),
    CONST_ROW(GNTTABOP_swap_grant_ref),
    CONST_ROW(GNTTABOP_cache_flush),

    /* Map flags. */
    CONST_ROW(GNTMAP_device_map),
    CONST_ROW(GNTMAP_host_map),
    CONST_ROW(GNTMAP_readonly),
    CONST_ROW(GNTMAP_application_map),
    CONST_ROW(GNTMAP_contains_pte),

    /* Copy flags. */
    CONST_ROW(GNTCOPY_source_gref),
    CONST_ROW(GNTCOPY_dest_gref),

    /* Status codes. */
    CONST_ROW(GNTST_okay),
    CONST_ROW(GNTST_general_error),
    CONST_ROW(GNTST_bad_domain),
    CONST_ROW(GNTST_bad_gntref),
    CONST_ROW(GNTST_bad_handle),
    CONST_ROW(GNTST_bad_virt_addr),
    CONST_ROW(GNTST_bad_dev_addr),
    CONST_ROW(GNTST_no_device_space),
    CONST_ROW(GNTST_permission_denied),
    CONST_ROW(GNTST_bad_page),
    CONST_ROW(GNTST_bad_copy_arg),
    CONST_ROW(GNTST_address_too_big),
    CONST_ROW(GNTST_eagain),
    CONST_ROW(GNTST_no_space),

    /* Domain ids and sizes. */
    CONST_ROW(DOMID_SELF),
    CONST_ROW(DOMID_FIRST_RESERVED),
#ifdef GNTTAB_NR_RESERVED_ENTRIES
    CONST_ROW(GNTTAB_NR_RESERVED_ENTRIES),
#endif
    CONST_ROW(XEN_PAGE_SHIFT),
};

const struct c_layout_entry *c_abi_layout(size_t *count)
{
    *count = sizeof(layout_table) / sizeof(layout_table[0]);
    return layout_table;
}

/* ---- Ring sizes --------------------------------------------------------- */

/* Ring tags shared with src/lib.rs (RingTag). */
enum c_ring_tag {
    C_RING_ECHO = 0,
    C_RING_ODD = 1,
    C_RING_WIDE = 2,
    C_RING_BLKIF = 3,
    C_RING_NETIF_TX = 4,
    C_RING_NETIF_RX = 5,
};

/* __CONST_RING_SIZE only makes sense past the header and below 2^32. */
static int ring_bytes_ok(uint64_t bytes)
{
    return bytes > 64 && bytes <= (1ull << 30);
}

/* __CONST_RING_SIZE(tag, bytes): entries in a ring of `bytes` bytes. */
uint32_t c_const_ring_size(uint32_t tag, uint64_t bytes)
{
    if (!ring_bytes_ok(bytes))
        return 0;
    size_t sz = (size_t)bytes;
    switch (tag) {
    case C_RING_ECHO: return __CONST_RING_SIZE(echo, sz);
    case C_RING_ODD: return __CONST_RING_SIZE(odd, sz);
    case C_RING_WIDE: return __CONST_RING_SIZE(wide, sz);
    case C_RING_BLKIF: return __CONST_RING_SIZE(blkif, sz);
    case C_RING_NETIF_TX: return __CONST_RING_SIZE(netif_tx, sz);
    case C_RING_NETIF_RX: return __CONST_RING_SIZE(netif_rx, sz);
    default: return 0;
    }
}

/*
 * RING_SIZE of a front and a back ring attached over `bytes` bytes
 * (__RING_SIZE, computed from the shared ring's address). The rings are
 * attached to a static dummy: the macros only do address arithmetic on it.
 * Returns 0 if front and back disagree.
 */
#define ATTACHED_SIZE(tag, sz) do {                                   \
        static struct tag##_sring dummy;                              \
        struct tag##_front_ring f;                                    \
        struct tag##_back_ring b;                                     \
        FRONT_RING_ATTACH(&f, &dummy, 0, sz);                         \
        BACK_RING_ATTACH(&b, &dummy, 0, sz);                          \
        return RING_SIZE(&f) == RING_SIZE(&b) ? RING_SIZE(&f) : 0;    \
    } while (0)

uint32_t c_attached_ring_size(uint32_t tag, uint64_t bytes)
{
    if (!ring_bytes_ok(bytes))
        return 0;
    size_t sz = (size_t)bytes;
    switch (tag) {
    case C_RING_ECHO: ATTACHED_SIZE(echo, sz);
    case C_RING_ODD: ATTACHED_SIZE(odd, sz);
    case C_RING_WIDE: ATTACHED_SIZE(wide, sz);
    case C_RING_BLKIF: ATTACHED_SIZE(blkif, sz);
    case C_RING_NETIF_TX: ATTACHED_SIZE(netif_tx, sz);
    case C_RING_NETIF_RX: ATTACHED_SIZE(netif_rx, sz);
    default: return 0;
    }
}
