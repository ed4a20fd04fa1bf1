/* The transport's data path in C: host_agent/transport.py's state machine, run over whole bursts without Python.
 *
 * Same protocol, same decisions, same counters as the Python transport (the executable reference, chosen with
 * NETAGG_DATAPATH=python): W slots, each running rounds (tsi = j * W + s, copy j % 2), warm-up rounds announcing
 * an exponent, data rounds carrying one chunk quantized with the shared exponent, retransmission by per-slot
 * deadline with Jacobson/Karels timeouts and Karn's rule, and the AIMD congestion window of host_agent/timers.py.
 * docs/host_agent.md has the state machine.
 *
 * Pure C, no Python: the engine owns its slot state and packet buffers; operations are described by raw pointers
 * to their staged rows (the caller keeps that memory alive until the operation completes or the engine is freed).
 * na_engine_step() runs receive / retransmit / send passes and waits on the socket until something needs the
 * caller: an operation completed, an error, the wake descriptor became readable, na_engine_notify() was called,
 * or the time it was given ran out. It may run without the GIL.
 */
#ifndef NETAGG_ENGINE_H
#define NETAGG_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct na_engine_config {
    int fd;      /* connected, non-blocking UDP socket to the switch */
    int wake_fd; /* readable when the caller wants the engine to return (-1: none) */
    size_t window, lanes, seg, budget; /* budget: datagrams taken off the socket per pass */
    int32_t scale_base;                /* quantizer scale base for the job's worker count */
    uint8_t b0_result, job, undefined_flags;
    uint32_t key;
    uint8_t header[18];          /* an UPDATE header with the constant fields; the round fields are rewritten */
    int send_mode, recv_mode;    /* enum na_send_mode / na_recv_mode */
    bool gro_probe;              /* drop GRO for recvmmsg if datagrams arrive one per receive */
    double rto_initial, rto_min, rto_max;
    double fast_retransmit_margin; /* transport.FAST_RETRANSMIT_MARGIN */
    bool congestion;             /* false: W rounds in flight, no window */
    double cw_initial, cw_min, cw_decrease, cw_delay_target;
    double cw_loss_queue_share, cw_min_rtt_period; /* timers.LOSS_QUEUE_SHARE, timers.MIN_RTT_PERIOD */
    double loss;                 /* fraction of outgoing packets dropped on purpose */
    uint64_t loss_seed;
    double deadline;             /* seconds an operation may go without progress */
};

/* One queued all-reduce: `blocks` rows of `lanes` 4-byte values, rows < head_rows at head, the rest at tail.
 * Rows are float32 (quantized when sent, sums dequantized into them), int32 lane pairs (`exact`: sent and summed as
 * they are), or pre-lanes (`prescaled`: requantized to the shared exponent when sent; the summed lanes land as they
 * are and `result_nonfinite` records each row's NONFINITE flag). */
struct na_op_desc {
    int64_t index; /* the caller's name for it */
    uint32_t op_id;
    bool exact, prescaled, abort;
    int64_t blocks, head_rows;
    unsigned char *head, *tail;
    ptrdiff_t head_stride, tail_stride;
    const int8_t *exps;
    const uint8_t *nonfinite;
    int8_t *used_exps;
    uint8_t *result_nonfinite; /* prescaled only */
};

enum na_event {
    NA_EV_NONE = 0,
    NA_EV_DIVERGED = 1,    /* a = slot, b = flags, c = the RESULT's op id, d = index of this rank's operation */
    NA_EV_UNANNOUNCED = 2, /* a = slot, b = tsi of the round */
    NA_EV_EXPONENT = 3,    /* a = global chunk, b = its own exponent, c = the shared exponent */
    NA_EV_TIMEOUT = 4,     /* a = index of the operation without progress */
    NA_EV_OSERROR = 5,     /* a = errno, b = 0 receive / 1 send */
};

struct na_step {
    int event;
    int64_t a, b, c, d;
    size_t completed; /* operations completed during the step: na_engine_completed() lists their indices */
};

struct na_engine_stats {
    uint64_t updates_sent, bytes_sent, warmups_sent, retransmissions, dropped_on_purpose, send_buffer_full;
    uint64_t results, duplicate_results, malformed, forged, send_calls, recv_calls, window_decreases;
    double window;
    int send_mode, recv_mode;
};

struct na_op_state {
    double started_at; /* < 0: nothing sent yet */
    double progress_at;
    int64_t remaining, rows_sent, first_chunk;
    bool found;
};

struct na_engine;

/* NULL when out of memory or the configuration is unusable (window 0, lanes 0, seg too small). */
struct na_engine *na_engine_new(const struct na_engine_config *cfg);
void na_engine_free(struct na_engine *e);

/* Queue an operation behind the others (its chunks follow theirs in the stream). Returns false when out of
 * memory. An operation of zero blocks is the caller's to complete; the engine refuses it. */
bool na_engine_add(struct na_engine *e, const struct na_op_desc *op);

/* Run for at most `max_wait` seconds (see the top of this file). */
struct na_step na_engine_step(struct na_engine *e, double max_wait);

/* Indices of the operations completed by the last step, in completion order. */
const int64_t *na_engine_completed(const struct na_engine *e);

/* Ask a running step to return at its next pass (any thread). */
void na_engine_notify(struct na_engine *e);

void na_engine_stats(const struct na_engine *e, struct na_engine_stats *out);
struct na_op_state na_engine_op_state(const struct na_engine *e, int64_t index);

/* Per-slot view for error reports: phase, the data round's operation index (-1 none), the next chunk. */
void na_engine_slot(const struct na_engine *e, size_t s, int *phase, int64_t *round, int64_t *out_index,
                    int64_t *chunk);

/* Seconds on the clock the engine uses (CLOCK_MONOTONIC, as Python's time.monotonic()). */
double na_engine_now(void);

#endif
