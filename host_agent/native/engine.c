/* The transport's data path in C: see engine.h. Each function names the method of host_agent/transport.py (or
 * host_agent/timers.py) it mirrors; keep the two in step (tests/host_agent/test_native_transport.py compares them). */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "burst.h"
#include "quantize.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define WIRE_SWAP false
#else
#define WIRE_SWAP true
#endif

/* Header layout of wire format v2 (netagg/wire.py), and the flags and phases the transport uses. */
enum { H_EXP = 8, H_FLAGS = 9, H_OP = 14, HEADER_BYTES = 18 };
enum { F_NONFINITE = 0x01, F_ABORT = 0x02, F_MISMATCH = 0x04 };
enum { NEED_WARMUP = 0, READY = 1, WARMUP_OUT = 2, DATA_OUT = 3 };
#define EXP_UNKNOWN 127
/* Receives that returned datagrams before GRO is judged, and the datagrams per receive it must reach. */
#define GRO_PROBE_CALLS 256
#define GRO_MIN_PER_CALL 2.0

struct op {
    struct na_op_desc d;
    int64_t first_chunk, remaining, rows_sent;
    double started_at, progress_at;
    bool done;
};

struct na_engine {
    struct na_engine_config cfg;
    size_t w;
    /* slots */
    int8_t *phase;
    int64_t *round, *chunk, *out_op, *out_row, *attempts, *cand, *keys, *kept;
    uint32_t *tsi, *out_opid, *tx_op;
    uint16_t *pool;
    int16_t *shared_exp;
    int8_t *tx_exp;
    uint8_t *tx_flags, *seen;
    double *sent_at, *last_tx, *due, *slot_rto;
    unsigned char *pkts, *rbuf;
    int64_t *acc_pos, *acc_slot;
    /* operations, in stream order; ops[i] has sequence number base + i */
    struct op *ops;
    size_t nops, cap;
    int64_t base, next_chunk;
    int64_t *completed;
    size_t ncompleted, completed_cap;
    size_t inflight;
    double last_result, retx_share, next_deadline_check;
    /* RttEstimator */
    bool have_srtt;
    double srtt, rttvar, rto;
    /* CongestionWindow */
    double cwnd, ssthresh, cw_srtt, min_rtt, min_before, min_now, period_end, recovery_from;
    bool cw_have_srtt;
    uint64_t rng;
    size_t gro_datagrams, gro_calls;
    struct na_engine_stats stats;
    int notify;
};

double na_engine_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint32_t load_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Exact (int32) lanes between the machine's byte order and the wire's, either way. */
static void swap_lanes(unsigned char *dst, const unsigned char *src, size_t lanes)
{
    for (size_t i = 0; i < lanes; i++) {
        uint32_t v;
        memcpy(&v, src + 4 * i, 4);
        v = WIRE_SWAP ? __builtin_bswap32(v) : v;
        memcpy(dst + 4 * i, &v, 4);
    }
}

/* ---- RttEstimator and CongestionWindow (host_agent/timers.py) ---------------------------------------------- */

static void rtt_sample(struct na_engine *e, double rtt)
{
    if (rtt > e->cfg.rto_max)
        rtt = e->cfg.rto_max;
    if (!e->have_srtt) {
        e->have_srtt = true;
        e->srtt = rtt;
        e->rttvar = rtt / 2;
    } else {
        e->rttvar += 0.25 * (fabs(e->srtt - rtt) - e->rttvar);
        e->srtt += 0.125 * (rtt - e->srtt);
    }
    double rto = e->srtt + 4 * e->rttvar;
    if (e->cfg.congestion && rto < e->srtt + e->cfg.cw_delay_target)
        rto = e->srtt + e->cfg.cw_delay_target; /* RttEstimator.slack */
    e->rto = rto < e->cfg.rto_min ? e->cfg.rto_min : rto > e->cfg.rto_max ? e->cfg.rto_max : rto;
}

static void rtt_backoff(struct na_engine *e)
{
    e->rto = e->rto * 2 < e->cfg.rto_max ? e->rto * 2 : e->cfg.rto_max;
}

static void cw_on_results(struct na_engine *e, double clean)
{
    double cwnd = e->cwnd;
    if (cwnd < e->ssthresh) {
        double step = clean < e->ssthresh - cwnd ? clean : e->ssthresh - cwnd;
        cwnd += step;
        clean -= step;
    }
    if (clean > 0)
        cwnd += clean / cwnd;
    e->cwnd = cwnd < (double)e->w ? cwnd : (double)e->w;
}

static void cw_on_loss(struct na_engine *e, double sent_at, double now)
{
    if (sent_at < e->recovery_from)
        return;
    if (e->cw_have_srtt && e->cw_srtt < e->min_rtt + e->cfg.cw_loss_queue_share * e->cfg.cw_delay_target)
        return; /* CongestionWindow.on_loss: no queue, so not congestion */
    double c = e->cwnd * e->cfg.cw_decrease;
    e->cwnd = e->ssthresh = c > e->cfg.cw_min ? c : e->cfg.cw_min;
    e->recovery_from = now;
    e->stats.window_decreases++;
}

static void cw_on_rtt(struct na_engine *e, double rtt, double sent_at, double now)
{
    if (now >= e->period_end) {
        e->min_before = e->min_now;
        e->min_now = INFINITY;
        e->period_end = now + e->cfg.cw_min_rtt_period;
    }
    if (rtt < e->min_now)
        e->min_now = rtt;
    e->min_rtt = e->min_before < e->min_now ? e->min_before : e->min_now;
    e->cw_srtt = e->cw_have_srtt ? e->cw_srtt + (rtt - e->cw_srtt) / 8 : rtt;
    e->cw_have_srtt = true;
    if (e->cw_srtt > e->min_rtt + e->cfg.cw_delay_target)
        cw_on_loss(e, sent_at, now);
}

/* ---- construction ------------------------------------------------------------------------------------------ */

void na_engine_free(struct na_engine *e)
{
    if (e == NULL)
        return;
    void *blocks[] = {e->phase, e->round, e->chunk, e->out_op, e->out_row, e->attempts, e->cand, e->keys, e->kept,
                      e->tsi, e->out_opid, e->tx_op, e->pool, e->shared_exp, e->tx_exp, e->tx_flags, e->seen,
                      e->sent_at, e->last_tx, e->due, e->slot_rto, e->pkts, e->rbuf, e->acc_pos, e->acc_slot,
                      e->ops, e->completed};
    for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++)
        free(blocks[i]);
    free(e);
}

struct na_engine *na_engine_new(const struct na_engine_config *cfg)
{
    if (cfg->window == 0 || cfg->lanes == 0 || cfg->seg != HEADER_BYTES + 4 * cfg->lanes || cfg->budget == 0)
        return NULL;
    struct na_engine *e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    size_t w = cfg->window;
    e->cfg = *cfg;
    e->w = w;
#define ALLOC(field, n) (e->field = calloc((n), sizeof *e->field)) == NULL
    if (ALLOC(phase, w) || ALLOC(round, w) || ALLOC(chunk, w) || ALLOC(out_op, w) || ALLOC(out_row, w) ||
        ALLOC(attempts, w) || ALLOC(cand, w) || ALLOC(keys, w) || ALLOC(kept, w) || ALLOC(tsi, w) || ALLOC(out_opid, w) ||
        ALLOC(tx_op, w) || ALLOC(pool, w) || ALLOC(shared_exp, w) || ALLOC(tx_exp, w) || ALLOC(tx_flags, w) ||
        ALLOC(seen, w) || ALLOC(sent_at, w) || ALLOC(last_tx, w) || ALLOC(due, w) || ALLOC(slot_rto, w) ||
        ALLOC(pkts, w * cfg->seg) || ALLOC(rbuf, cfg->budget * cfg->seg + NA_GRO_ROOM) ||
        ALLOC(acc_pos, cfg->budget) || ALLOC(acc_slot, cfg->budget)) {
        na_engine_free(e);
        return NULL;
    }
#undef ALLOC
    for (size_t s = 0; s < w; s++) {
        e->phase[s] = NEED_WARMUP;
        e->chunk[s] = (int64_t)s; /* chunk d rides slot d % W */
        e->tsi[s] = (uint32_t)s;
        e->pool[s] = (uint16_t)s;
        e->out_op[s] = -1;
        memcpy(e->pkts + s * cfg->seg, cfg->header, HEADER_BYTES);
    }
    e->rto = cfg->rto_initial;
    e->cwnd = cfg->congestion ? (cfg->cw_initial < (double)w ? cfg->cw_initial : (double)w) : (double)w;
    e->ssthresh = (double)w;
    e->min_rtt = e->min_before = e->min_now = INFINITY;
    e->recovery_from = -1.0;
    e->rng = cfg->loss_seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    e->stats.window = e->cwnd;
    e->stats.send_mode = cfg->send_mode;
    e->stats.recv_mode = cfg->recv_mode;
    return e;
}

bool na_engine_add(struct na_engine *e, const struct na_op_desc *d)
{
    if (d->blocks <= 0)
        return false;
    if (e->nops == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 16;
        struct op *ops = realloc(e->ops, cap * sizeof *ops);
        int64_t *completed = realloc(e->completed, cap * sizeof *completed);
        if (ops == NULL || completed == NULL) {
            if (ops != NULL)
                e->ops = ops;
            if (completed != NULL)
                e->completed = completed;
            return false;
        }
        e->ops = ops;
        e->completed = completed;
        e->cap = e->completed_cap = cap;
    }
    struct op *op = &e->ops[e->nops++];
    memset(op, 0, sizeof *op);
    op->d = *d;
    op->first_chunk = e->next_chunk;
    op->remaining = d->blocks;
    op->started_at = -1.0;
    e->next_chunk += d->blocks;
    return true;
}

void na_engine_notify(struct na_engine *e) { __atomic_store_n(&e->notify, 1, __ATOMIC_RELEASE); }

const int64_t *na_engine_completed(const struct na_engine *e) { return e->completed; }

void na_engine_stats(const struct na_engine *e, struct na_engine_stats *out)
{
    *out = e->stats;
    out->window = e->cfg.congestion ? e->cwnd : (double)e->w;
}

static struct op *op_by_index(const struct na_engine *e, int64_t index)
{
    for (size_t i = 0; i < e->nops; i++)
        if (e->ops[i].d.index == index)
            return &e->ops[i];
    return NULL;
}

struct na_op_state na_engine_op_state(const struct na_engine *e, int64_t index)
{
    struct na_op_state st = {-1.0, 0.0, 0, 0, 0, false};
    const struct op *op = op_by_index(e, index);
    if (op != NULL)
        st = (struct na_op_state){op->started_at, op->progress_at, op->remaining, op->rows_sent, op->first_chunk,
                                  true};
    return st;
}

void na_engine_slot(const struct na_engine *e, size_t s, int *phase, int64_t *round, int64_t *out_index,
                    int64_t *chunk)
{
    *phase = e->phase[s];
    *round = e->round[s];
    *out_index = e->out_op[s] >= e->base ? e->ops[e->out_op[s] - e->base].d.index : -1;
    *chunk = e->chunk[s];
}

/* ---- operations by chunk --------------------------------------------------------------------------------- */

/* Sequence number of the operation holding global chunk `chunk` (< next_chunk). Operations are contiguous in
 * chunk order; a binary search over the few queued ones. */
static int64_t op_of_chunk(const struct na_engine *e, int64_t chunk)
{
    size_t lo = 0, hi = e->nops;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (e->ops[mid].first_chunk <= chunk)
            lo = mid;
        else
            hi = mid;
    }
    return e->base + (int64_t)lo;
}

static struct op *op_at(const struct na_engine *e, int64_t seq) { return &e->ops[seq - e->base]; }

static unsigned char *row_ptr(const struct op *op, int64_t row)
{
    if (row < op->d.head_rows)
        return op->d.head + row * op->d.head_stride;
    return op->d.tail + (row - op->d.head_rows) * op->d.tail_stride;
}

/* Forget completed operations at the front of the queue (no slot refers to them any more). */
static void drop_done(struct na_engine *e)
{
    size_t k = 0;
    while (k < e->nops && e->ops[k].done)
        k++;
    if (k == 0)
        return;
    /* a slot's data round in flight always belongs to an unfinished operation, so no out_op points below */
    memmove(e->ops, e->ops + k, (e->nops - k) * sizeof *e->ops);
    e->nops -= k;
    e->base += (int64_t)k;
}

/* ---- send (Transport._send_pending, _quantize_into_packets, _transmit) ------------------------------------ */

static uint64_t next_random(struct na_engine *e)
{
    uint64_t x = e->rng; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    e->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static void fail(struct na_step *r, int event, int64_t a, int64_t b, int64_t c, int64_t d)
{
    r->event = event;
    r->a = a;
    r->b = b;
    r->c = c;
    r->d = d;
}

static bool soft_send_error(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS || err == ECONNREFUSED; }

/* Send the packets of `slots` (ascending): one burst per run of consecutive slots. False on a hard error. */
static bool transmit(struct na_engine *e, const int64_t *slots, size_t n, struct na_step *r)
{
    size_t seg = e->cfg.seg;
    if (e->cfg.loss > 0) { /* dropped on purpose (tests, demos): as if the network lost them */
        size_t kept = 0;
        for (size_t i = 0; i < n; i++) {
            if ((double)(next_random(e) >> 11) * 0x1.0p-53 >= e->cfg.loss)
                e->kept[kept++] = slots[i];
            else
                e->stats.dropped_on_purpose++;
        }
        slots = e->kept;
        n = kept;
    }
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && slots[j] == slots[j - 1] + 1)
            j++;
        size_t count = j - i;
        const unsigned char *buf = e->pkts + (size_t)slots[i] * seg;
        struct na_send_result sr = na_send_burst(e->cfg.fd, buf, seg, count, (enum na_send_mode)e->stats.send_mode);
        e->stats.send_calls += sr.calls;
        if (sr.error && e->stats.send_mode == NA_SEND_GSO &&
            (sr.error == EIO || sr.error == EINVAL || sr.error == ENOPROTOOPT || sr.error == EOPNOTSUPP)) {
            e->stats.send_mode = NA_SEND_MMSG; /* this path cannot segment: sendmmsg from now on */
            struct na_send_result more =
                na_send_burst(e->cfg.fd, buf + sr.sent * seg, seg, count - sr.sent, NA_SEND_MMSG);
            e->stats.send_calls += more.calls;
            sr.sent += more.sent;
            sr.error = more.error;
        }
        e->stats.updates_sent += sr.sent;
        e->stats.bytes_sent += sr.sent * seg;
        if (sr.error) {
            if (!soft_send_error(sr.error)) {
                fail(r, NA_EV_OSERROR, sr.error, 1, 0, 0);
                return false;
            }
            e->stats.send_buffer_full += count - sr.sent; /* as good as lost: the timer covers it */
        }
        i = j;
    }
    return true;
}

static int cmp_keys(const void *a, const void *b, void *arg)
{
    const int64_t *keys = arg;
    int64_t x = keys[*(const int64_t *)a], y = keys[*(const int64_t *)b];
    return (x > y) - (x < y);
}

static int cmp_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Exponent announced for the slot's chunk `chunk`: its block exponent if queued, else EXP_UNKNOWN. */
static int8_t announce(const struct na_engine *e, int64_t chunk)
{
    if (chunk >= e->next_chunk)
        return EXP_UNKNOWN;
    const struct op *op = op_at(e, op_of_chunk(e, chunk));
    return op->d.exps[chunk - op->first_chunk];
}

static void start(struct op *op, double now)
{
    if (op->started_at < 0)
        op->started_at = op->progress_at = now;
}

/* Put slot s's next round into its packet: a warm-up, or its next chunk quantized with the shared exponent. */
static bool pack(struct na_engine *e, size_t s, double now, struct na_step *r)
{
    size_t lanes = e->cfg.lanes;
    int64_t seq = op_of_chunk(e, e->chunk[s]);
    struct op *op = op_at(e, seq);
    unsigned char *payload = e->pkts + s * e->cfg.seg + HEADER_BYTES;
    uint8_t base_flags = op->d.abort ? F_ABORT : 0;
    start(op, now);
    if (e->phase[s] == NEED_WARMUP) { /* the warm-up belongs to the collective of the chunk it announces */
        memset(payload, 0, 4 * lanes);
        e->tx_exp[s] = announce(e, e->chunk[s]);
        e->tx_flags[s] = base_flags;
        e->tx_op[s] = e->out_opid[s] = op->d.op_id;
        e->phase[s] = WARMUP_OUT;
        e->stats.warmups_sent++;
        return true;
    }
    int64_t row = e->chunk[s] - op->first_chunk;
    int8_t shared = (int8_t)e->shared_exp[s];
    const unsigned char *src = row_ptr(op, row);
    if (op->d.exact) {
        swap_lanes(payload, src, lanes);
    } else {
        if (op->d.exps[row] > shared) {
            fail(r, NA_EV_EXPONENT, e->chunk[s], op->d.exps[row], shared, 0);
            return false;
        }
        struct na_ints sh = {(const unsigned char *)&shared, 1, 1};
        struct na_ints own = {(const unsigned char *)&op->d.exps[row], 1, 1};
        struct na_ints nf = {(const unsigned char *)&op->d.nonfinite[row], 1, 1};
        if (op->d.prescaled)
            na_requantize(src, (ptrdiff_t)(4 * lanes), 1, lanes, own, sh, payload, (ptrdiff_t)e->cfg.seg, WIRE_SWAP);
        else
            na_quantize(src, (ptrdiff_t)(4 * lanes), 1, lanes, sh, e->cfg.scale_base, own, nf, payload,
                        (ptrdiff_t)e->cfg.seg, WIRE_SWAP);
    }
    op->d.used_exps[row] = shared;
    op->rows_sent++;
    e->tx_flags[s] = base_flags | (op->d.nonfinite[row] ? F_NONFINITE : 0);
    e->tx_op[s] = e->out_opid[s] = op->d.op_id;
    e->out_op[s] = seq;
    e->out_row[s] = row;
    e->phase[s] = DATA_OUT;
    e->chunk[s] += (int64_t)e->w; /* the slot's next chunk, whose exponent this round announces */
    e->tx_exp[s] = announce(e, e->chunk[s]);
    return true;
}

static bool send_pending(struct na_engine *e, double now, struct na_step *r)
{
    size_t w = e->w, n = 0;
    for (size_t s = 0; s < w; s++) {
        int8_t ph = e->phase[s];
        if (ph == READY || (ph == NEED_WARMUP && e->chunk[s] < e->next_chunk)) {
            e->cand[n++] = (int64_t)s;
            e->keys[s] = e->round[s] * (int64_t)w + (int64_t)s; /* the round's place in the stream */
        }
    }
    if (n == 0)
        return true;
    qsort_r(e->cand, n, sizeof *e->cand, cmp_keys, e->keys);
    size_t allowed = n;
    if (e->cfg.congestion) {
        int64_t room = (int64_t)e->cwnd - (int64_t)e->inflight;
        if (room <= 0) {
            /* the oldest unfinished round may always go: every worker sends it, so the job never waits on
             * rounds nobody is allowed to send */
            room = 1;
            if (e->inflight) {
                int64_t oldest = INT64_MAX;
                for (size_t s = 0; s < w; s++)
                    if (e->phase[s] >= WARMUP_OUT && e->round[s] * (int64_t)w + (int64_t)s < oldest)
                        oldest = e->round[s] * (int64_t)w + (int64_t)s;
                room = e->keys[e->cand[0]] < oldest ? 1 : 0;
            }
        }
        allowed = (size_t)room < n ? (size_t)room : n;
    }
    if (allowed == 0)
        return true;
    for (size_t k = 0; k < allowed; k++)
        if (!pack(e, (size_t)e->cand[k], now, r))
            return false;
    na_write_headers(e->pkts, e->cfg.seg, e->cand, allowed, e->tsi, e->pool, e->tx_exp, e->tx_flags, e->tx_op);
    for (size_t k = 0; k < allowed; k++) {
        int64_t s = e->cand[k];
        e->attempts[s] = 0;
        e->sent_at[s] = e->last_tx[s] = now;
        e->slot_rto[s] = e->rto;
        e->due[s] = now + e->rto;
    }
    e->inflight += allowed;
    qsort(e->cand, allowed, sizeof *e->cand, cmp_int64);
    return transmit(e, e->cand, allowed, r);
}

/* ---- retransmit (Transport._retransmit_expired) ----------------------------------------------------------- */

static bool retransmit_expired(struct na_engine *e, double now, struct na_step *r)
{
    size_t n = 0;
    bool any_alive = false;
    double newest_alive = -INFINITY;
    for (size_t s = 0; s < e->w; s++) {
        if (e->phase[s] < WARMUP_OUT || e->due[s] > now)
            continue;
        e->cand[n++] = (int64_t)s;
        e->attempts[s]++;
        /* the job moved on since this slot last sent: a packet of the round was lost, retry at the normal
         * timeout; nothing arrived at all: a peer is slow or gone, or the switch is down: back off */
        bool alive = e->last_result > e->last_tx[s];
        double rto = alive ? e->rto : (e->slot_rto[s] * 2 < e->cfg.rto_max ? e->slot_rto[s] * 2 : e->cfg.rto_max);
        e->slot_rto[s] = rto;
        e->due[s] = now + rto;
        if (alive) {
            any_alive = true;
            if (e->sent_at[s] > newest_alive)
                newest_alive = e->sent_at[s];
        }
        e->last_tx[s] = now;
    }
    if (n == 0)
        return true;
    if (e->cfg.congestion && any_alive)
        cw_on_loss(e, newest_alive, now);
    e->stats.retransmissions += n;
    if (!transmit(e, e->cand, n, r)) /* the same bytes as the first transmission */
        return false;
    if (e->retx_share > 0.8)
        rtt_backoff(e); /* most rounds need a retransmission: the timeout is too short */
    return true;
}

/* ---- receive (Transport._receive, _complete) -------------------------------------------------------------- */

static void land(struct na_engine *e, const struct op *op, int64_t row, const unsigned char *lanes_in, bool nonfinite)
{
    size_t lanes = e->cfg.lanes;
    unsigned char *dst = row_ptr(op, row);
    if (op->d.exact || op->d.prescaled) {
        swap_lanes(dst, lanes_in, lanes);
        if (op->d.prescaled)
            op->d.result_nonfinite[row] = nonfinite;
        return;
    }
    uint8_t flag = nonfinite;
    struct na_ints sh = {(const unsigned char *)&op->d.used_exps[row], 1, 1};
    struct na_ints nf = {&flag, 1, 1};
    na_dequantize(lanes_in, (ptrdiff_t)e->cfg.seg, WIRE_SWAP, 1, lanes, sh, e->cfg.scale_base, nf, dst,
                  (ptrdiff_t)(4 * lanes));
}

/* Transport._fast_retransmit: resend the rounds in flight that come before a round that just completed, both in
 * stream order and (by a margin) in sending time. */
static bool fast_retransmit(struct na_engine *e, int64_t key, double key_sent, double now, struct na_step *r)
{
    double limit = key_sent - e->cfg.fast_retransmit_margin * e->srtt, newest_lost = -INFINITY;
    size_t n = 0;
    for (size_t s = 0; s < e->w; s++) {
        if (e->phase[s] < WARMUP_OUT || e->attempts[s] != 0 || !(e->sent_at[s] < limit) ||
            e->round[s] * (int64_t)e->w + (int64_t)s >= key)
            continue;
        e->cand[n++] = (int64_t)s;
        e->attempts[s] = 1;
        e->due[s] = now + e->rto; /* re-armed from now */
        e->last_tx[s] = now;
        if (e->sent_at[s] > newest_lost)
            newest_lost = e->sent_at[s];
    }
    if (n == 0)
        return true;
    if (e->cfg.congestion)
        cw_on_loss(e, newest_lost, now);
    e->stats.retransmissions += n;
    return transmit(e, e->cand, n, r); /* the same bytes as the first transmission */
}

static bool complete(struct na_engine *e, size_t accepted, double now, struct na_step *r)
{
    size_t w = e->w;
    e->last_result = now;
    size_t clean = 0;
    int64_t first_clean = -1;
    int64_t last_key = -1; /* the clean round latest in stream order, and when it was sent */
    double last_key_sent = 0;
    for (size_t k = 0; k < accepted; k++) {
        int64_t s = e->acc_slot[k];
        if (e->attempts[s] == 0) {
            clean++;
            if (first_clean < 0)
                first_clean = s;
            int64_t key = e->round[s] * (int64_t)w + s;
            if (key > last_key) {
                last_key = key;
                last_key_sent = e->sent_at[s];
            }
        }
    }
    if (first_clean >= 0) { /* one RTT sample per burst is plenty */
        double rtt = now - e->sent_at[first_clean];
        rtt_sample(e, rtt);
        if (e->cfg.congestion)
            cw_on_rtt(e, rtt, e->sent_at[first_clean], now);
    }
    if (e->cfg.congestion)
        cw_on_results(e, (double)clean);
    double share = e->retx_share;
    share += (double)(accepted - clean) * (1.0 - share) / (double)w - (double)clean * share / (double)w;
    e->retx_share = share < 0 ? 0 : share > 1 ? 1 : share;
    for (size_t k = 0; k < accepted; k++) {
        int64_t s = e->acc_slot[k];
        const unsigned char *h = e->rbuf + (size_t)e->acc_pos[k] * e->cfg.seg;
        int8_t exp = (int8_t)h[H_EXP];
        uint8_t flags = h[H_FLAGS];
        uint32_t op_id = load_be32(h + H_OP);
        int8_t phase = e->phase[s];
        /* the collective whose chunk (data round) or announced chunk (warm-up) this round carried */
        int64_t seq = phase == DATA_OUT ? e->out_op[s] : op_of_chunk(e, e->chunk[s]);
        struct op *ours = op_at(e, seq);
        if ((flags & (F_ABORT | F_MISMATCH)) || op_id != ours->d.op_id) {
            /* harmless: every contribution carried this rank's own abort op, so every rank gave up alike */
            bool harmless = (flags & F_ABORT) && !(flags & F_MISMATCH) && ours->d.abort && op_id == ours->d.op_id;
            if (!harmless) {
                fail(r, NA_EV_DIVERGED, s, flags, op_id, ours->d.index);
                return false;
            }
        }
        if (phase == DATA_OUT) {
            land(e, ours, e->out_row[s], h + HEADER_BYTES, flags & F_NONFINITE);
            e->out_op[s] = -1;
            ours->progress_at = now;
            if (--ours->remaining == 0) {
                ours->done = true;
                e->completed[e->ncompleted++] = ours->d.index;
            }
            if (exp == EXP_UNKNOWN) {
                e->phase[s] = NEED_WARMUP;
            } else if (e->chunk[s] >= e->next_chunk) {
                fail(r, NA_EV_UNANNOUNCED, s, e->tsi[s], 0, 0);
                return false;
            } else {
                e->phase[s] = READY;
                e->shared_exp[s] = exp;
            }
        } else { /* warm-up: the exponent is for the chunk it announced; a data round always follows */
            e->phase[s] = READY;
            e->shared_exp[s] = exp;
        }
        int64_t round = ++e->round[s];
        e->tsi[s] = (uint32_t)((uint64_t)(round * (int64_t)w + s) & 0xFFFFFFFFu);
        e->pool[s] = (uint16_t)(s | ((round & 1) << 15));
        e->due[s] = INFINITY;
    }
    e->inflight -= accepted;
    e->stats.results += accepted;
    return clean == 0 || fast_retransmit(e, last_key, last_key_sent, now, r);
}

static bool receive(struct na_engine *e, struct na_step *r)
{
    struct na_recv_result rr =
        na_recv_burst(e->cfg.fd, e->rbuf, e->cfg.seg, e->cfg.budget, (enum na_recv_mode)e->stats.recv_mode);
    e->stats.recv_calls += rr.calls;
    e->stats.malformed += rr.wrong_size;
    if (rr.error) {
        fail(r, NA_EV_OSERROR, rr.error, 0, 0, 0);
        return false;
    }
    if (e->cfg.gro_probe && rr.good) { /* BurstSocket._watch_gro */
        e->gro_datagrams += rr.good;
        e->gro_calls += rr.calls - 1;
        if (e->gro_calls >= GRO_PROBE_CALLS) {
            e->cfg.gro_probe = false;
            if ((double)e->gro_datagrams < GRO_MIN_PER_CALL * (double)e->gro_calls && na_disable_gro(e->cfg.fd) == 0)
                e->stats.recv_mode = NA_RECV_MMSG;
        }
    }
    if (rr.good == 0)
        return true;
    struct na_expect want = {e->cfg.b0_result, e->cfg.job, e->cfg.undefined_flags, e->cfg.key};
    struct na_slots slots = {e->w, e->phase, WARMUP_OUT, e->tsi, e->pool, e->seen};
    struct na_match m = na_match_results(e->rbuf, rr.good, e->cfg.seg, &want, &slots, e->acc_pos, e->acc_slot);
    e->stats.malformed += m.malformed;
    e->stats.forged += m.forged;
    e->stats.duplicate_results += m.duplicates;
    if (m.accepted == 0)
        return true;
    return complete(e, m.accepted, na_engine_now(), r);
}

/* ---- the loop (Transport._loop) --------------------------------------------------------------------------- */

static bool check_deadlines(struct na_engine *e, double now, struct na_step *r)
{
    for (size_t i = 0; i < e->nops; i++) {
        const struct op *op = &e->ops[i];
        if (!op->done && op->started_at >= 0 && now - op->progress_at > e->cfg.deadline) {
            fail(r, NA_EV_TIMEOUT, op->d.index, 0, 0, 0);
            return false;
        }
    }
    return true;
}

static bool any_unfinished(const struct na_engine *e)
{
    for (size_t i = 0; i < e->nops; i++)
        if (!e->ops[i].done)
            return true;
    return false;
}

struct na_step na_engine_step(struct na_engine *e, double max_wait)
{
    struct na_step r = {NA_EV_NONE, 0, 0, 0, 0, 0};
    e->ncompleted = 0;
    double now = na_engine_now();
    double end = now + (max_wait > 0 ? max_wait : 0);
    double check_every = e->cfg.deadline / 10 < 0.01 ? e->cfg.deadline / 10 : 0.01;
    for (;;) {
        if (!receive(e, &r))
            break;
        now = na_engine_now();
        if (!retransmit_expired(e, now, &r) || !send_pending(e, now, &r))
            break;
        bool active = any_unfinished(e);
        if (active && now >= e->next_deadline_check) {
            if (!check_deadlines(e, now, &r))
                break;
            e->next_deadline_check = now + check_every;
        }
        if (e->ncompleted || __atomic_exchange_n(&e->notify, 0, __ATOMIC_ACQ_REL) || now >= end)
            break;
        double wait = end - now;
        for (size_t s = 0; s < e->w; s++)
            if (e->phase[s] >= WARMUP_OUT && e->due[s] - now < wait)
                wait = e->due[s] - now;
        if (active && e->next_deadline_check - now < wait)
            wait = e->next_deadline_check - now;
        if (wait > 0) {
            struct pollfd fds[2] = {{e->cfg.fd, POLLIN, 0}, {e->cfg.wake_fd, POLLIN, 0}};
            struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
            int got = ppoll(fds, e->cfg.wake_fd >= 0 ? 2 : 1, &ts, NULL);
            if (got > 0 && (fds[1].revents & POLLIN) && e->cfg.wake_fd >= 0)
                break; /* the caller has something for us */
            if (got < 0 && errno != EINTR) {
                fail(&r, NA_EV_OSERROR, errno, 0, 0, 0);
                break;
            }
        }
    }
    r.completed = e->ncompleted;
    drop_done(e);
    return r;
}
