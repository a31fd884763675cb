/*
 * Common prelude of the C reference code: the memory barriers Xen's
 * io/ring.h expects from its includer, Xen's public headers, the echo test
 * protocol and the interface exported to Rust (src/lib.rs mirrors every
 * type declared here with #[repr(C)]).
 *
 * __XEN_INTERFACE_VERSION__ is set by build.rs to the headers' latest
 * interface version, so we get the modern names (grant_entry_v1,
 * xen_pfn_t frame lists) and ring.h uses the xen_*mb() defined below.
 */
#ifndef XEN_C_REFERENCE_H
#define XEN_C_REFERENCE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/*
 * Barriers for io/ring.h. ring.h leaves them to the includer; these are the
 * shared-memory (SMP) barriers, as Linux's virt_mb/virt_rmb/virt_wmb.
 *
 * xen_mb() orders earlier loads AND stores before later loads and stores.
 * On every architecture that includes store->load ordering, which even x86
 * does not give for free (a store can sit in the store buffer while a later
 * load completes), so it is a real fence: __sync_synchronize() (mfence or a
 * locked instruction on x86). ring.h uses it between publishing a producer
 * index and reading the peer's event index, and between writing our event
 * index and re-reading the peer's producer index.
 *
 * xen_rmb() (load->load) and xen_wmb() (store->store): x86 is TSO, the
 * hardware never reorders a load with an earlier load nor a store with an
 * earlier store, so only the compiler must be stopped from reordering the
 * accesses; an empty asm with a "memory" clobber does exactly that. Other
 * architectures get acquire and release fences, which are at least as
 * strong as load->load and store->store barriers.
 */
#if defined(__x86_64__) || defined(__i386__)
#define xen_mb()  __sync_synchronize()
#define xen_rmb() __asm__ __volatile__("" ::: "memory")
#define xen_wmb() __asm__ __volatile__("" ::: "memory")
#else
#define xen_mb()  __sync_synchronize()
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#endif

#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/io/ring.h>

#ifndef XEN_PAGE_SIZE
#define XEN_PAGE_SIZE (1UL << XEN_PAGE_SHIFT)
#endif

/* ---- The echo test protocol --------------------------------------------- */

#define ECHO_PAYLOAD_LEN 48

/* What the front sends: 64 bytes. */
struct echo_request {
    uint64_t id;
    uint64_t value;
    uint8_t payload[ECHO_PAYLOAD_LEN];
};

/* What the back answers: 24 bytes, so the ring entry (a union) is sized by
 * the request. */
struct echo_response {
    uint64_t id;
    uint64_t value;
    int32_t status;
    uint32_t _pad;
};

DEFINE_RING_TYPES(echo, struct echo_request, struct echo_response);

/* echo_response.status */
#define ECHO_STATUS_OK 0
#define ECHO_STATUS_BAD_PAYLOAD (-1)

/* ---- Interface exported to Rust ----------------------------------------- */

/* Failure codes of the peers (negative return values). */
#define C_ECHO_ERR_TIMEOUT (-1)       /* timeout_ns passed */
#define C_ECHO_ERR_STOPPED (-2)       /* *stop became non-zero */
#define C_ECHO_ERR_PEER_OVERFLOW (-3) /* the peer published an impossible producer index */
#define C_ECHO_ERR_BAD_PARAMS (-4)

/* c_echo_params.flags */
#define C_ECHO_USE_EVENTS 1u /* sleep on the event word when idle instead of spinning */

#define C_ECHO_DEFAULT_TIMEOUT_NS (60ull * 1000000000ull)

struct c_echo_params {
    uint64_t count;         /* messages to exchange */
    uint64_t timeout_ns;    /* budget for the whole run; 0: C_ECHO_DEFAULT_TIMEOUT_NS */
    uint32_t pages;         /* ring size in 4 KiB pages */
    uint32_t start_idx;     /* value of all ring indices at start */
    uint32_t max_in_flight; /* front: requests outstanding at most; 0: RING_SIZE */
    uint32_t batch;         /* messages per push; 0: push once per burst */
    uint32_t work_ns;       /* back: busy time spent per request */
    uint32_t flags;         /* C_ECHO_* */
};

/*
 * Event words standing in for an event channel pair: the notifier stores 1,
 * the sleeper atomically exchanges it back to 0 (a latched pending bit).
 */
struct c_echo_events {
    uint32_t to_front;
    uint32_t to_back;
};

struct c_echo_stats {
    uint64_t messages;     /* requests answered (back) or responses checked (front) */
    uint64_t errors;       /* messages that failed a check */
    uint64_t pushes;       /* pushes that published at least one message */
    uint64_t notifies;     /* of those, pushes whose CHECK_NOTIFY asked to notify the peer */
    uint64_t final_checks; /* RING_FINAL_CHECK_* calls (each may arm the peer's notify) */
    uint64_t sleeps;       /* final checks that found no work (then we waited or spun) */
};

#endif /* XEN_C_REFERENCE_H */
