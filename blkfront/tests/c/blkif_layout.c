/*
 * The blkif ABI as Xen's own io/blkif.h lays it out, printed one row a line
 * for tests/abi_layout.rs:
 *   type NAME SIZE ALIGN
 *   field TYPE.MEMBER OFFSET SIZE
 *   const NAME VALUE
 *   ring ORDER ENTRIES      (__CONST_RING_SIZE(blkif, 4096 << ORDER))
 */
#include <xen/xen-compat.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <xen/io/blkif.h>

#define TYPE(label, T) \
    printf("type %s %zu %zu\n", label, sizeof(T), (size_t)_Alignof(T))
#define FIELD(label, T, m) \
    printf("field %s.%s %zu %zu\n", label, #m, offsetof(T, m), sizeof(((T *)0)->m))
#define CONST(c) printf("const %s %lld\n", #c, (long long)(c))

int main(void)
{
    TYPE("blkif_request_segment", struct blkif_request_segment);
    FIELD("blkif_request_segment", struct blkif_request_segment, gref);
    FIELD("blkif_request_segment", struct blkif_request_segment, first_sect);
    FIELD("blkif_request_segment", struct blkif_request_segment, last_sect);

    TYPE("blkif_request", struct blkif_request);
    FIELD("blkif_request", struct blkif_request, operation);
    FIELD("blkif_request", struct blkif_request, nr_segments);
    FIELD("blkif_request", struct blkif_request, handle);
    FIELD("blkif_request", struct blkif_request, id);
    FIELD("blkif_request", struct blkif_request, sector_number);
    FIELD("blkif_request", struct blkif_request, seg);

    TYPE("blkif_request_discard", struct blkif_request_discard);
    FIELD("blkif_request_discard", struct blkif_request_discard, operation);
    FIELD("blkif_request_discard", struct blkif_request_discard, flag);
    FIELD("blkif_request_discard", struct blkif_request_discard, handle);
    FIELD("blkif_request_discard", struct blkif_request_discard, id);
    FIELD("blkif_request_discard", struct blkif_request_discard, sector_number);
    FIELD("blkif_request_discard", struct blkif_request_discard, nr_sectors);

    TYPE("blkif_request_indirect", struct blkif_request_indirect);
    FIELD("blkif_request_indirect", struct blkif_request_indirect, operation);
    FIELD("blkif_request_indirect", struct blkif_request_indirect, indirect_op);
    FIELD("blkif_request_indirect", struct blkif_request_indirect, nr_segments);
    FIELD("blkif_request_indirect", struct blkif_request_indirect, id);
    FIELD("blkif_request_indirect", struct blkif_request_indirect, sector_number);
    FIELD("blkif_request_indirect", struct blkif_request_indirect, handle);
    FIELD("blkif_request_indirect", struct blkif_request_indirect, indirect_grefs);

    TYPE("blkif_response", struct blkif_response);
    FIELD("blkif_response", struct blkif_response, id);
    FIELD("blkif_response", struct blkif_response, operation);
    FIELD("blkif_response", struct blkif_response, status);

    TYPE("blkif_sring_entry", union blkif_sring_entry);
    FIELD("blkif_sring", struct blkif_sring, ring);

    CONST(BLKIF_OP_READ);
    CONST(BLKIF_OP_WRITE);
    CONST(BLKIF_OP_WRITE_BARRIER);
    CONST(BLKIF_OP_FLUSH_DISKCACHE);
    CONST(BLKIF_OP_RESERVED_1);
    CONST(BLKIF_OP_DISCARD);
    CONST(BLKIF_OP_INDIRECT);
    CONST(BLKIF_MAX_SEGMENTS_PER_REQUEST);
    CONST(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
    CONST(BLKIF_DISCARD_SECURE);
    CONST(BLKIF_RSP_EOPNOTSUPP);
    CONST(BLKIF_RSP_ERROR);
    CONST(BLKIF_RSP_OKAY);
    CONST(VDISK_CDROM);
    CONST(VDISK_REMOVABLE);
    CONST(VDISK_READONLY);

    for (unsigned order = 0; order <= 4; order++)
        printf("ring %u %u\n", order,
               (unsigned)__CONST_RING_SIZE(blkif, (size_t)4096 << order));
    return 0;
}
