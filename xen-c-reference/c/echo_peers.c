/*
 * Reference peers for the echo protocol, written the way Linux's Xen
 * drivers use io/ring.h: read the peer's producer index once, check it with
 * the RING_*_OVERFLOW macros, copy each peer slot out with RING_COPY_*,
 * publish with RING_PUSH_*_AND_CHECK_NOTIFY and go idle only after
 * RING_FINAL_CHECK_FOR_*.
 *
 * Every loop that waits on the peer also watches a stop flag and a
 * deadline, so a broken peer makes a test fail instead of hang.
 */
#define _GNU_SOURCE
#include "xen_c_reference.h"

#include <sched.h>
#include <time.h>

/* ---- Message contents (mirrored in src/lib.rs) -------------------------- */

uint64_t c_echo_request_value(uint64_t id)
{
    return (id ^ 0xD1B54A32D192ED03ull) * 0x9E3779B97F4A7C15ull;
}

uint64_t c_echo_reply_value(uint64_t value)
{
    return ((value << 13) | (value >> 51)) ^ 0x5A5A5A5A5A5A5A5Aull;
}

uint8_t c_echo_payload_byte(uint64_t id, uint32_t i)
{
    return (uint8_t)(id * 7u + (uint64_t)i * 13u + 1u);
}

void c_echo_make_request(uint64_t id, struct echo_request *out)
{
    out->id = id;
    out->value = c_echo_request_value(id);
    for (uint32_t i = 0; i < ECHO_PAYLOAD_LEN; i++)
        out->payload[i] = c_echo_payload_byte(id, i);
}

/* The back's answer to `req`. */
void c_echo_make_response(const struct echo_request *req, struct echo_response *out)
{
    int32_t status = ECHO_STATUS_OK;
    for (uint32_t i = 0; i < ECHO_PAYLOAD_LEN; i++)
        if (req->payload[i] != c_echo_payload_byte(req->id, i))
            status = ECHO_STATUS_BAD_PAYLOAD;
    out->id = req->id;
    out->value = c_echo_reply_value(req->value);
    out->status = status;
    out->_pad = 0;
}

/* Whether `rsp` is the correct answer to request `id`. */
int c_echo_response_ok(uint64_t id, const struct echo_response *rsp)
{
    return rsp->id == id && rsp->value == c_echo_reply_value(c_echo_request_value(id)) &&
           rsp->status == ECHO_STATUS_OK;
}

/* ---- Waiting ------------------------------------------------------------ */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One spin-wait step; also a compiler barrier, so shared indices are
 * re-read on the next iteration. */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    __asm__ __volatile__("" ::: "memory");
}

static int stopped(const volatile int *stop)
{
    return stop != NULL && *stop != 0;
}

struct waiter {
    uint64_t deadline;
    const volatile int *stop;
    unsigned spins;
};

static void waiter_init(struct waiter *w, uint64_t timeout_ns, const volatile int *stop)
{
    w->deadline = now_ns() + (timeout_ns ? timeout_ns : C_ECHO_DEFAULT_TIMEOUT_NS);
    w->stop = stop;
    w->spins = 0;
}

/*
 * One idle step: spin briefly, then yield the CPU (tests may run more
 * busy threads than there are CPUs). Returns 0 or a C_ECHO_ERR_* code.
 */
static int idle_step(struct waiter *w)
{
    if (stopped(w->stop))
        return C_ECHO_ERR_STOPPED;
    if (now_ns() > w->deadline)
        return C_ECHO_ERR_TIMEOUT;
    if (++w->spins < 64)
        cpu_relax();
    else
        sched_yield();
    return 0;
}

static void progressed(struct waiter *w)
{
    w->spins = 0;
}

/* Waits until the event word is set, and clears it. */
static int wait_event(uint32_t *word, struct waiter *w)
{
    while (__atomic_exchange_n(word, 0, __ATOMIC_SEQ_CST) == 0) {
        int rc = idle_step(w);
        if (rc)
            return rc;
    }
    return 0;
}

static void send_event(uint32_t *word)
{
    __atomic_store_n(word, 1, __ATOMIC_SEQ_CST);
}

/* A single read of a shared index (the peer writes it concurrently). */
#define READ_ONCE_IDX(x) (*(volatile RING_IDX *)&(x))

static void busy_work(uint32_t ns)
{
    if (ns == 0)
        return;
    uint64_t until = now_ns() + ns;
    while (now_ns() < until)
        cpu_relax();
}

/* ---- The echo back end -------------------------------------------------- */

struct back {
    struct echo_back_ring ring;
    struct c_echo_events *ev;
    int use_events;
    struct c_echo_stats *st;
};

static void back_push(struct back *b)
{
    int notify;
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&b->ring, notify);
    b->st->pushes++;
    if (notify) {
        b->st->notifies++;
        if (b->use_events)
            send_event(&b->ev->to_front);
    }
}

/*
 * Serves p->count requests on a ring the front initialised at
 * p->start_idx: answers each with c_echo_make_response, in place, and
 * checks that ids arrive in order 0, 1, 2, ... and payloads are intact.
 * Returns the number of bad requests, or a negative C_ECHO_ERR_*.
 */
int64_t c_echo_back(void *sring, const struct c_echo_params *p, struct c_echo_events *ev,
                    const volatile int *stop, struct c_echo_stats *st)
{
    memset(st, 0, sizeof(*st));
    if (p->pages == 0 || p->pages > 16 || sring == NULL ||
        (ev == NULL && (p->flags & C_ECHO_USE_EVENTS)))
        return C_ECHO_ERR_BAD_PARAMS;

    struct back b = { .ev = ev, .use_events = (p->flags & C_ECHO_USE_EVENTS) != 0, .st = st };
    BACK_RING_ATTACH(&b.ring, (struct echo_sring *)sring, p->start_idx,
                     (size_t)p->pages * XEN_PAGE_SIZE);
    struct waiter w;
    waiter_init(&w, p->timeout_ns, stop);
    uint64_t next_id = 0;

    while (st->messages < p->count) {
        RING_IDX rp = READ_ONCE_IDX(b.ring.sring->req_prod);
        xen_rmb(); /* read requests only after we have seen req_prod */
        if (RING_REQUEST_PROD_OVERFLOW(&b.ring, rp))
            return C_ECHO_ERR_PEER_OVERFLOW;

        uint32_t unpushed = 0;
        int any = 0;
        RING_IDX rc = b.ring.req_cons;
        while (rc != rp && st->messages < p->count) {
            if (RING_REQUEST_CONS_OVERFLOW(&b.ring, rc))
                break;
            struct echo_request req;
            RING_COPY_REQUEST(&b.ring, rc, &req);
            b.ring.req_cons = ++rc;
            busy_work(p->work_ns);

            struct echo_response rsp;
            c_echo_make_response(&req, &rsp);
            if (req.id != next_id || rsp.status != ECHO_STATUS_OK)
                st->errors++;
            next_id++;
            *RING_GET_RESPONSE(&b.ring, b.ring.rsp_prod_pvt) = rsp;
            b.ring.rsp_prod_pvt++;
            st->messages++;
            any = 1;
            if (++unpushed == p->batch) {
                back_push(&b);
                unpushed = 0;
            }
        }
        if (unpushed)
            back_push(&b);
        if (any) {
            progressed(&w);
            continue;
        }
        if (st->messages >= p->count)
            break;

        int work;
        RING_FINAL_CHECK_FOR_REQUESTS(&b.ring, work);
        st->final_checks++;
        if (work)
            continue;
        st->sleeps++;
        int rc2 = b.use_events ? wait_event(&ev->to_back, &w) : idle_step(&w);
        if (rc2)
            return rc2;
    }
    return (int64_t)st->errors;
}

/* ---- The echo front end ------------------------------------------------- */

/*
 * SHARED_RING_INIT, then every index moved to `start` as if a fresh ring
 * had been shifted there: producers at start, event indices at start + 1.
 */
void c_echo_sring_init(void *sring, uint32_t start)
{
    struct echo_sring *s = sring;
    SHARED_RING_INIT(s);
    s->req_prod = start;
    s->rsp_prod = start;
    s->req_event = start + 1;
    s->rsp_event = start + 1;
    xen_mb(); /* the header is complete before the ring is handed over */
}

struct front {
    struct echo_front_ring ring;
    struct c_echo_events *ev;
    int use_events;
    struct c_echo_stats *st;
};

static void front_push(struct front *f)
{
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f->ring, notify);
    f->st->pushes++;
    if (notify) {
        f->st->notifies++;
        if (f->use_events)
            send_event(&f->ev->to_back);
    }
}

/*
 * Initialises the shared ring at p->start_idx, then sends requests with ids
 * 0 .. p->count-1, at most p->max_in_flight outstanding, and checks every
 * response. Returns the number of bad responses, or a negative C_ECHO_ERR_*.
 *
 * The back may attach before this runs only if the memory is zero-filled
 * or already initialised at the same start index (c_echo_sring_init):
 * re-initialising a ring on which nothing was produced changes nothing.
 */
int64_t c_echo_front(void *sring, const struct c_echo_params *p, struct c_echo_events *ev,
                     const volatile int *stop, struct c_echo_stats *st)
{
    memset(st, 0, sizeof(*st));
    if (p->pages == 0 || p->pages > 16 || sring == NULL ||
        (ev == NULL && (p->flags & C_ECHO_USE_EVENTS)))
        return C_ECHO_ERR_BAD_PARAMS;

    struct front f = { .ev = ev, .use_events = (p->flags & C_ECHO_USE_EVENTS) != 0, .st = st };
    c_echo_sring_init(sring, p->start_idx);
    FRONT_RING_ATTACH(&f.ring, (struct echo_sring *)sring, p->start_idx,
                      (size_t)p->pages * XEN_PAGE_SIZE);
    uint32_t limit = p->max_in_flight;
    if (limit == 0 || limit > RING_SIZE(&f.ring))
        limit = RING_SIZE(&f.ring);

    struct waiter w;
    waiter_init(&w, p->timeout_ns, stop);
    uint64_t sent = 0;

    while (st->messages < p->count) {
        int any = 0;
        uint32_t unpushed = 0;
        while (sent < p->count && f.ring.req_prod_pvt - f.ring.rsp_cons < limit) {
            struct echo_request req;
            c_echo_make_request(sent, &req);
            *RING_GET_REQUEST(&f.ring, f.ring.req_prod_pvt) = req;
            f.ring.req_prod_pvt++;
            sent++;
            any = 1;
            if (++unpushed == p->batch) {
                front_push(&f);
                unpushed = 0;
            }
        }
        if (unpushed)
            front_push(&f);

        RING_IDX rp = READ_ONCE_IDX(f.ring.sring->rsp_prod);
        xen_rmb(); /* read responses only after we have seen rsp_prod */
        /* No more responses than requests we published (stricter than
         * RING_RESPONSE_PROD_OVERFLOW, which only bounds it by the size). */
        if (RING_RESPONSE_PROD_OVERFLOW(&f.ring, rp) ||
            (RING_IDX)(rp - f.ring.rsp_cons) > (RING_IDX)(f.ring.req_prod_pvt - f.ring.rsp_cons))
            return C_ECHO_ERR_PEER_OVERFLOW;
        while (f.ring.rsp_cons != rp) {
            struct echo_response rsp;
            RING_COPY_RESPONSE(&f.ring, f.ring.rsp_cons, &rsp);
            f.ring.rsp_cons++;
            if (!c_echo_response_ok(st->messages, &rsp))
                st->errors++;
            st->messages++;
            any = 1;
        }
        if (any) {
            progressed(&w);
            continue;
        }

        int work;
        RING_FINAL_CHECK_FOR_RESPONSES(&f.ring, work);
        st->final_checks++;
        if (work)
            continue;
        st->sleeps++;
        int rc = f.use_events ? wait_event(&ev->to_front, &w) : idle_step(&w);
        if (rc)
            return rc;
    }
    return (int64_t)st->errors;
}

/* ---- Ping-pong pair for latency benchmarks ------------------------------ */

/* Give up if the peer makes no progress for this long. */
#define PINGPONG_STALL_NS (10ull * 1000000000ull)

/* Spins until *idx differs from `seen`; 0, or C_ECHO_ERR_TIMEOUT on a stall. */
static int spin_until_changed(RING_IDX *idx, RING_IDX seen)
{
    uint64_t deadline = 0;
    unsigned spins = 0;
    while (READ_ONCE_IDX(*idx) == seen) {
        cpu_relax();
        if ((++spins & 0xffff) == 0) {
            uint64_t t = now_ns();
            if (deadline == 0)
                deadline = t + PINGPONG_STALL_NS;
            else if (t > deadline)
                return C_ECHO_ERR_TIMEOUT;
        }
    }
    return 0;
}

/*
 * Front of a latency ping-pong: one request in flight, spin-polling for the
 * response, on a ring starting at index 0 (initialised here). Writes the
 * round-trip time of each of the `iters` exchanges to latencies_ns_out (may
 * be NULL). Returns the number of wrong responses or a negative
 * C_ECHO_ERR_*.
 */
int64_t c_ring_pingpong_front(void *sring, uint32_t pages, uint64_t iters,
                              uint64_t *latencies_ns_out)
{
    if (pages == 0 || pages > 16 || sring == NULL)
        return C_ECHO_ERR_BAD_PARAMS;
    struct echo_front_ring r;
    c_echo_sring_init(sring, 0);
    FRONT_RING_ATTACH(&r, (struct echo_sring *)sring, 0, (size_t)pages * XEN_PAGE_SIZE);

    struct echo_request req;
    memset(&req, 0xa5, sizeof(req));
    int64_t errors = 0;
    for (uint64_t i = 0; i < iters; i++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);

        req.id = i;
        req.value = i;
        *RING_GET_REQUEST(&r, r.req_prod_pvt) = req;
        r.req_prod_pvt++;
        int notify;
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&r, notify);
        (void)notify; /* both sides spin */

        int rc = spin_until_changed(&r.sring->rsp_prod, r.rsp_cons);
        if (rc)
            return rc;
        RING_IDX rp = READ_ONCE_IDX(r.sring->rsp_prod);
        xen_rmb(); /* read the response only after we have seen rsp_prod */
        if (RING_RESPONSE_PROD_OVERFLOW(&r, rp) || (RING_IDX)(rp - r.rsp_cons) != 1)
            return C_ECHO_ERR_PEER_OVERFLOW;
        struct echo_response rsp;
        RING_COPY_RESPONSE(&r, r.rsp_cons, &rsp);
        r.rsp_cons++;

        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (rsp.id != i || rsp.value != c_echo_reply_value(i))
            errors++;
        if (latencies_ns_out)
            latencies_ns_out[i] = (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000ull +
                                  (uint64_t)t1.tv_nsec - (uint64_t)t0.tv_nsec;
    }
    return errors;
}

/*
 * Back of the ping-pong: answers `iters` requests, spin-polling, on a ring
 * starting at index 0. The memory must be zero-filled or initialised
 * (c_echo_sring_init(sring, 0)) before this starts. Returns 0 or a negative
 * C_ECHO_ERR_*.
 */
int64_t c_ring_pingpong_back(void *sring, uint32_t pages, uint64_t iters)
{
    if (pages == 0 || pages > 16 || sring == NULL)
        return C_ECHO_ERR_BAD_PARAMS;
    struct echo_back_ring r;
    BACK_RING_ATTACH(&r, (struct echo_sring *)sring, 0, (size_t)pages * XEN_PAGE_SIZE);

    for (uint64_t i = 0; i < iters; i++) {
        int rc = spin_until_changed(&r.sring->req_prod, r.req_cons);
        if (rc)
            return rc;
        RING_IDX rp = READ_ONCE_IDX(r.sring->req_prod);
        xen_rmb(); /* read the request only after we have seen req_prod */
        if (RING_REQUEST_PROD_OVERFLOW(&r, rp))
            return C_ECHO_ERR_PEER_OVERFLOW;
        struct echo_request req;
        RING_COPY_REQUEST(&r, r.req_cons, &req);
        r.req_cons++;

        struct echo_response rsp = {
            .id = req.id,
            .value = c_echo_reply_value(req.value),
            .status = ECHO_STATUS_OK,
            ._pad = 0,
        };
        *RING_GET_RESPONSE(&r, r.rsp_prod_pvt) = rsp;
        r.rsp_prod_pvt++;
        int notify;
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&r, notify);
        (void)notify; /* both sides spin */
    }
    return 0;
}
