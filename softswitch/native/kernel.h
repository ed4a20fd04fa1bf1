/* The software switch's aggregation step (docs/protocol.md, steps 1-9) over a burst of frames.
 *
 * Pure C: buffers and integer arrays in, counts out; no Python objects, no allocation. softswitch/native/module.c
 * binds it to the numpy arrays that softswitch/pipeline.py (the executable reference) and softswitch/state.py
 * own, so the P4Runtime server reads the very counters and registers this kernel writes.
 */
#ifndef NETAGG_SWITCH_KERNEL_H
#define NETAGG_SWITCH_KERNEL_H

#include <stddef.h>
#include <stdint.h>

/* Why agg_burst() stopped before the end of the burst. */
enum agg_stop {
    AGG_DONE = 0,        /* every frame handled */
    AGG_NOT_MINE = 1,    /* frame `consumed` is not an aggregation packet: the reference pipeline takes it */
    AGG_OUT_FULL = 2,    /* frame `consumed` needs more output room than is left */
    AGG_NEED_RANDOM = 3, /* frame `consumed` may need more drop-simulator draws than are left */
};

/* Columns of a decoded `workers` entry (one row of WORKER_COLUMNS uint32 per entry). */
enum { W_ID, W_COUNT, W_BASE, W_POOL, W_SIZE, W_EPOCH, W_PORT, W_KEY, WORKER_COLUMNS };
/* Columns of a decoded `results` entry: MAC high 16 bits, MAC low 32 bits, IPv4 address, UDP port, key. */
enum { R_MAC_HI, R_MAC_LO, R_ADDR, R_PORT, R_KEY, RESULT_COLUMNS };
/* Words of the switch-wide configuration. */
enum { C_AGG_SET, C_AGG_MAC_HI, C_AGG_MAC_LO, C_AGG_ADDR, C_INGRESS_LOSS_ON, C_EGRESS_LOSS_ON, CONFIG_WORDS };
/* Loss thresholds: one per 9-bit port, then the table's default for ports beyond. */
#define LOSS_PORTS 512

struct counter {
    uint64_t *packets, *bytes;
    size_t size;
};

struct agg_tables {
    const uint64_t *worker_keys; /* sorted: job << 48 | IPv4 source << 16 | UDP source port */
    const uint32_t *workers;     /* WORKER_COLUMNS per key */
    size_t worker_count;
    const uint32_t *result_keys; /* sorted: job << 8 | worker id */
    const uint32_t *results;     /* RESULT_COLUMNS per key */
    size_t result_count;
    const int32_t *group_start;  /* 257 entries: job j's replicas are members[group_start[j] .. group_start[j+1]) */
    const int32_t *group_members; /* (egress port, rid) pairs */
    const uint32_t *ingress_loss; /* LOSS_PORTS + 1 thresholds */
    const uint32_t *egress_loss;
    const uint32_t *config;       /* CONFIG_WORDS */
};

struct agg_registers {
    uint32_t *epoch, *bitmap, *tsi, *op;
    uint8_t *count, *flags;
    int8_t *exp;
    int32_t *lanes; /* copies x max_lanes, native byte order */
    size_t copies, max_lanes;
};

/* Every number of netagg/constants.py the kernel needs, handed over by softswitch/pipeline.py (never restated
 * here). */
struct agg_consts {
    uint32_t agg_udp_port, wire_version, pool_slots, lanes_per_block, max_size_code;
    uint32_t flags_defined, flag_mismatch, msg_update, msg_result;
    uint32_t num_drop_reasons, num_job_stats, job_mcast_jobs;
    /* DropReason values */
    uint32_t parser_error, unknown_worker, bad_msg_type, reserved_bit, bad_size, bad_length, slot_out_of_range;
    uint32_t duplicate_pending, stale, simulated_loss, bad_version, bad_key;
    /* JobStat values */
    uint32_t aggregated, completed, retransmit_answered;
};

struct agg_counters {
    struct counter drops, job_drops, job_stats;
};

/* One frame in or out: where it is in its buffer, its length and its switch port. */
struct frame_ref {
    int64_t offset, length, port;
};

struct agg_burst {
    const uint8_t *in;
    size_t in_size;
    const struct frame_ref *frames;
    size_t frame_count;
    uint8_t *out;
    size_t out_size, out_used; /* out_used: in and out */
    struct frame_ref *outs;
    size_t out_capacity, out_count; /* out_count: in and out */
    const uint64_t *random;         /* drop simulator draws, uniform in [0, 2^32) */
    size_t random_count, random_next; /* random_next: in and out */
};

/* Run frames[first..] until the end or a stop reason; *consumed is the index of the first frame not handled. */
enum agg_stop agg_burst(const struct agg_consts *k, const struct agg_tables *t, const struct agg_registers *r,
                        const struct agg_counters *c, struct agg_burst *b, size_t first, size_t *consumed);

/* Byte offsets of the frame layout this kernel parses (module.c exports them; a test compares them with
 * netagg/wire.py). Ethernet II, IPv4 without options, UDP, then the aggregation header. */
enum {
    L_ETHERTYPE = 12, L_IP = 14, L_IP_PROTO = 23, L_IP_SRC = 26, L_IP_DST = 30, L_UDP = 34, L_UDP_DPORT = 36,
    L_UDP_LENGTH = 38, L_AGG = 42, L_HEADER_BYTES = 18, L_LANES = 60,
    /* aggregation header fields, from L_AGG */
    H_BYTE0 = 0, H_JOB = 1, H_TSI = 2, H_POOL_INDEX = 6, H_EXP = 8, H_FLAGS = 9, H_KEY = 10, H_OP = 14,
};

#endif
