/* The aggregation step of docs/protocol.md over a burst of frames; softswitch/pipeline.py is its reference and
 * tests/softswitch/test_native_differential.py compares the two frame by frame. */
#include "kernel.h"

#include <stdbool.h>
#include <string.h>

static inline uint16_t load16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static inline uint32_t load32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}

static inline void store16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void store32(uint8_t *p, uint32_t v)
{
    v = __builtin_bswap32(v);
    memcpy(p, &v, 4);
}

static void count(const struct counter *c, size_t index, int64_t bytes)
{
    if (index < c->size) {
        c->packets[index] += 1;
        c->bytes[index] += (uint64_t)bytes;
    }
}

/* A drop in `drops` and, when the job byte was parsed (job >= 0), in `job_drops`. */
static void drop(const struct agg_consts *k, const struct agg_counters *c, uint32_t reason, int job, int64_t n)
{
    count(&c->drops, reason, n);
    if (job >= 0)
        count(&c->job_drops, (size_t)job * k->num_drop_reasons + reason, n);
}

static void stat(const struct agg_consts *k, const struct agg_counters *c, uint32_t job, uint32_t what, int64_t n)
{
    count(&c->job_stats, (size_t)job * k->num_job_stats + what, n);
}

static const uint32_t *find_worker(const struct agg_tables *t, uint64_t key)
{
    size_t lo = 0, hi = t->worker_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint64_t at = t->worker_keys[mid];
        if (at == key)
            return t->workers + mid * WORKER_COLUMNS;
        if (at < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static const uint32_t *find_result(const struct agg_tables *t, uint32_t job, int64_t rid)
{
    if (rid < 0 || rid > 0xFF)
        return NULL;
    uint32_t key = job << 8 | (uint32_t)rid;
    size_t lo = 0, hi = t->result_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint32_t at = t->result_keys[mid];
        if (at == key)
            return t->results + mid * RESULT_COLUMNS;
        if (at < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static uint32_t loss_threshold(const uint32_t *table, int64_t port)
{
    return table[port >= 0 && port < LOSS_PORTS ? port : LOSS_PORTS];
}

/* One draw of the drop simulator: true when a uniform uint32 is below `threshold`. */
static bool lost(struct agg_burst *b, uint32_t threshold)
{
    return b->random[b->random_next++] < threshold;
}

/* Step 9: one RESULT copy of slot copy `index` for the destination `dst`, written at the end of the output. */
static void result_copy(const struct agg_consts *k, const struct agg_tables *t, const struct agg_registers *r,
                        struct agg_burst *b, const uint8_t *frame, int64_t n, size_t end, size_t index,
                        uint32_t lanes, uint32_t size, int64_t port, const uint32_t *dst)
{
    uint8_t *o = b->out + b->out_used;
    const uint32_t *config = t->config;
    uint32_t src_addr;
    if (config[C_AGG_SET]) {
        store16(o + 6, config[C_AGG_MAC_HI]);
        store32(o + 8, config[C_AGG_MAC_LO]);
        src_addr = config[C_AGG_ADDR];
    } else { /* no set_agg_addr: the source fields stay as they were, as on a P4 target */
        memcpy(o + 6, frame + 6, 6);
        src_addr = load32(frame + L_IP_SRC);
    }
    store16(o, dst[R_MAC_HI]);
    store32(o + 2, dst[R_MAC_LO]);
    memcpy(o + L_ETHERTYPE, frame + L_ETHERTYPE, 2 + 10); /* EtherType, version .. protocol (checksum below) */
    store32(o + L_IP_SRC, src_addr);
    store32(o + L_IP_DST, dst[R_ADDR]);
    uint32_t sum = 0;
    for (int i = L_IP; i < L_IP + 20; i += 2)
        if (i != L_IP + 10)
            sum += load16(o + i);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    store16(o + L_IP + 10, ~sum & 0xFFFF);
    store16(o + L_UDP, k->agg_udp_port);
    store16(o + L_UDP_DPORT, dst[R_PORT]);
    memcpy(o + L_UDP_LENGTH, frame + L_UDP_LENGTH, 2);
    store16(o + L_UDP_LENGTH + 2, 0);
    uint8_t *h = o + L_AGG;
    h[H_BYTE0] = (uint8_t)(k->wire_version << 6 | k->msg_result << 4 | size);
    memcpy(h + H_JOB, frame + L_AGG + H_JOB, 1 + 4 + 2); /* job, tsi, pool_index: echoed */
    h[H_EXP] = (uint8_t)r->exp[index];
    h[H_FLAGS] = r->flags[index];
    store32(h + H_KEY, dst[R_KEY]);
    store32(h + H_OP, r->op[index]);
    const int32_t *sum_lanes = r->lanes + index * r->max_lanes;
    uint8_t *out_lanes = o + L_LANES;
    for (uint32_t i = 0; i < lanes; i++)
        store32(out_lanes + 4 * i, (uint32_t)sum_lanes[i]);
    if ((size_t)n > end) /* trailing bytes ride along, as on a hardware target */
        memcpy(o + end, frame + end, (size_t)n - end);
    struct frame_ref *ref = &b->outs[b->out_count++];
    ref->offset = (int64_t)b->out_used;
    ref->length = n;
    ref->port = port;
    b->out_used += (size_t)n;
}

static void results_out(const struct agg_consts *k, const struct agg_tables *t, const struct agg_registers *r,
                        const struct agg_counters *c, struct agg_burst *b, const uint8_t *frame, int64_t n,
                        size_t end, size_t index, uint32_t lanes, uint32_t size, uint32_t job, int64_t port,
                        const uint32_t *dst)
{
    if (t->config[C_EGRESS_LOSS_ON]) {
        uint32_t threshold = loss_threshold(t->egress_loss, port);
        if (threshold && lost(b, threshold)) {
            drop(k, c, k->simulated_loss, (int)job, n);
            return;
        }
    }
    result_copy(k, t, r, b, frame, n, end, index, lanes, size, port, dst);
}

enum agg_stop agg_burst(const struct agg_consts *k, const struct agg_tables *t, const struct agg_registers *r,
                        const struct agg_counters *c, struct agg_burst *b, size_t first, size_t *consumed)
{
    const uint32_t *config = t->config;
    size_t f = first;
    enum agg_stop stop = AGG_DONE;
    for (; f < b->frame_count; f++) {
        const struct frame_ref *ref = &b->frames[f];
        const int64_t n = ref->length;
        if (ref->offset < 0 || n < 0 || (uint64_t)(ref->offset + n) > b->in_size || n < L_LANES) {
            stop = AGG_NOT_MINE;
            break;
        }
        const uint8_t *frame = b->in + ref->offset;
        if (load16(frame + L_ETHERTYPE) != 0x0800 || frame[L_IP] != 0x45 || frame[L_IP_PROTO] != 17 ||
            load16(frame + L_UDP_DPORT) != k->agg_udp_port) {
            stop = AGG_NOT_MINE;
            break;
        }
        const uint8_t *h = frame + L_AGG;
        const uint32_t job = h[H_JOB];
        /* Room for every copy this frame can produce, and draws for every loss decision it can take. */
        int32_t replicas = job < k->job_mcast_jobs ? t->group_start[job + 1] - t->group_start[job] : 0;
        size_t most = replicas > 1 ? (size_t)replicas : 1;
        if (b->out_capacity - b->out_count < most || b->out_size - b->out_used < most * (size_t)n) {
            stop = AGG_OUT_FULL;
            break;
        }
        if ((config[C_INGRESS_LOSS_ON] || config[C_EGRESS_LOSS_ON]) && b->random_count - b->random_next < most + 1) {
            stop = AGG_NEED_RANDOM;
            break;
        }
        const int64_t port = ref->port;
        /* 1. Parse the lanes a defined size code announces; another version announces none. */
        const uint32_t b0 = h[H_BYTE0];
        const bool version_ok = b0 >> 6 == k->wire_version;
        const uint32_t size = b0 & 0x07;
        const uint32_t lanes = version_ok && size <= k->max_size_code ? k->lanes_per_block << size : 0;
        const size_t end = L_LANES + (size_t)lanes * 4;
        if ((size_t)n < end) {
            drop(k, c, k->parser_error, (int)job, n);
            continue;
        }
        /* 2. Drop simulator at ingress. */
        if (config[C_INGRESS_LOSS_ON]) {
            uint32_t threshold = loss_threshold(t->ingress_loss, port);
            if (threshold && lost(b, threshold)) {
                drop(k, c, k->simulated_loss, (int)job, n);
                continue;
            }
        }
        /* 3. Header checks. */
        const uint32_t flags_in = h[H_FLAGS];
        if (!version_ok) {
            drop(k, c, k->bad_version, (int)job, n);
            continue;
        }
        if (((b0 >> 4) & 0x03) != k->msg_update) {
            drop(k, c, k->bad_msg_type, (int)job, n);
            continue;
        }
        if ((b0 & 0x08) || (flags_in & ~k->flags_defined)) {
            drop(k, c, k->reserved_bit, (int)job, n);
            continue;
        }
        /* 4. Who sent it, with which key. */
        const uint64_t wkey = (uint64_t)job << 48 | (uint64_t)load32(frame + L_IP_SRC) << 16 | load16(frame + L_UDP);
        const uint32_t *w = find_worker(t, wkey);
        if (w == NULL) {
            drop(k, c, k->unknown_worker, (int)job, n);
            continue;
        }
        if (load32(h + H_KEY) != w[W_KEY]) {
            drop(k, c, k->bad_key, (int)job, n);
            continue;
        }
        /* 5. Admission checks. */
        if (size != w[W_SIZE] || size > k->max_size_code) {
            drop(k, c, k->bad_size, (int)job, n);
            continue;
        }
        if (load16(frame + L_UDP_LENGTH) != 8 + L_HEADER_BYTES + lanes * 4) {
            drop(k, c, k->bad_length, (int)job, n);
            continue;
        }
        const uint32_t pool_index = load16(h + H_POOL_INDEX);
        const uint32_t slot = pool_index & 0x7FFF, set = pool_index >> 15;
        if (slot >= w[W_POOL] || w[W_BASE] + slot >= k->pool_slots) {
            drop(k, c, k->slot_out_of_range, (int)job, n);
            continue;
        }
        /* 6. Read the copy's state; a copy last written under another epoch is fresh. */
        const size_t index = (size_t)set * k->pool_slots + w[W_BASE] + slot;
        const size_t other = (size_t)(1 - set) * k->pool_slots + w[W_BASE] + slot;
        const bool fresh = r->epoch[index] != w[W_EPOCH];
        uint32_t bitmap = fresh ? 0 : r->bitmap[index];
        uint32_t remaining = fresh ? 0 : r->count[index];
        const uint32_t bit = w[W_ID] < 32 ? (uint32_t)1 << w[W_ID] : 0;
        const uint32_t tsi = load32(h + H_TSI);
        /* 7. Decide. */
        if (bitmap & bit) {
            if (tsi != r->tsi[index]) {
                drop(k, c, k->stale, (int)job, n);
                continue;
            }
            if (remaining) {
                drop(k, c, k->duplicate_pending, (int)job, n);
                continue;
            }
            stat(k, c, job, k->retransmit_answered, n);
            const uint32_t *dst = find_result(t, job, w[W_ID]);
            if (dst != NULL)
                results_out(k, t, r, c, b, frame, n, end, index, lanes, size, job, w[W_PORT], dst);
            continue;
        }
        const uint8_t *in_lanes = frame + L_LANES;
        int32_t *row = r->lanes + index * r->max_lanes;
        if (remaining == 0) {
            /* Only a newer tsi (RFC 1982 order) opens a round. */
            uint32_t ahead = tsi - r->tsi[index];
            if (!fresh && !(ahead != 0 && ahead < 0x80000000u)) {
                drop(k, c, k->stale, (int)job, n);
                continue;
            }
            for (uint32_t i = 0; i < lanes; i++)
                row[i] = (int32_t)load32(in_lanes + 4 * i);
            r->exp[index] = (int8_t)h[H_EXP];
            r->flags[index] = (uint8_t)flags_in;
            r->op[index] = load32(h + H_OP);
            r->tsi[index] = tsi;
            r->epoch[index] = w[W_EPOCH];
            remaining = (w[W_COUNT] - 1) & 0xFF;
            bitmap = bit;
        } else {
            if (tsi != r->tsi[index]) {
                drop(k, c, k->stale, (int)job, n);
                continue;
            }
            for (uint32_t i = 0; i < lanes; i++)
                row[i] = (int32_t)((uint32_t)row[i] + load32(in_lanes + 4 * i)); /* int32 wrap-around */
            if ((int8_t)h[H_EXP] > r->exp[index])
                r->exp[index] = (int8_t)h[H_EXP];
            uint32_t flags = flags_in;
            if (load32(h + H_OP) != r->op[index])
                flags |= k->flag_mismatch;
            r->flags[index] |= (uint8_t)flags;
            remaining -= 1;
            bitmap |= bit;
        }
        r->count[index] = (uint8_t)remaining;
        r->bitmap[index] = bitmap;
        r->bitmap[other] &= ~bit;
        stat(k, c, job, k->aggregated, n);
        /* 8. Complete? Multicast the sum to every worker of the job. */
        if (remaining)
            continue;
        stat(k, c, job, k->completed, n);
        for (int32_t m = replicas > 0 ? t->group_start[job] : 0; replicas > 0 && m < t->group_start[job + 1]; m++) {
            const uint32_t *dst = find_result(t, job, t->group_members[2 * m + 1]);
            if (dst != NULL) /* no `results` entry: nothing to address the copy to (dropped, not counted) */
                results_out(k, t, r, c, b, frame, n, end, index, lanes, size, job, t->group_members[2 * m], dst);
        }
    }
    *consumed = f;
    return stop;
}
