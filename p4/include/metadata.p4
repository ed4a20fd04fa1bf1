// Per-packet metadata shared by every architecture.
#ifndef NETAGG_METADATA_P4_
#define NETAGG_METADATA_P4_

#include "defines.p4"

// Forwarding decision of ingress, applied to the target's intrinsic metadata by one small
// per-architecture wrapper (so the logic controls never touch intrinsic metadata themselves).
struct fwd_metadata_t {
    bit<2> kind;            // FWD_*
    port_t port;            // FWD_UNICAST: egress port
    bit<16> group;          // FWD_MULTICAST: multicast group
    bool prune_ingress;     // flood: egress drops the copy that would go back out of the ingress port
}

struct agg_metadata_t {
    // From the `workers` entry of the sender.
    bit<8> worker_id;
    bit<8> num_workers;
    bit<16> pool_base;
    bit<16> pool_size;
    bit<8> size;
    epoch_t epoch;
    port_t worker_port;
    worker_key_t key;       // the key the sender's UPDATEs must carry
    // Register indices of the addressed slot copy and of its shadow (the other set).
    bit<32> slot_index;
    bit<32> other_index;
    // Lane update: new = (stored & keep_mask) + (packet & add_mask). First contribution: keep 0, add all;
    // later contribution: keep all, add all; answer to a retransmission: keep all, add 0 (read only).
    bit<32> keep_mask;
    bit<32> add_mask;
    bit<8> outcome;         // OUTCOME_*
    bool complete;          // this contribution completed the round
    bit<2> result;          // RESULT_*: which kind of RESULT copy egress is handling
    bit<8> result_worker;   // egress: the worker this copy goes to (key of `results`)
}

struct local_metadata_t {
    fwd_metadata_t fwd;
    agg_metadata_t agg;
    port_t ingress_port;
    bit<32> loss_threshold;   // drop simulator: drop when a 32-bit random number is below it
    bool count_drop;          // the packet is dropped for drop_reason (a consumed UPDATE is not)
    bit<8> drop_reason;       // DROP_*
    bool update_ipv4_checksum;
}

// Drop the packet and count it under `reason` (counters are updated once, by the pipeline's end).
action drop_for(inout local_metadata_t meta, in bit<8> reason) {
    meta.fwd.kind = FWD_DROP;
    meta.count_drop = true;
    meta.drop_reason = reason;
}

#endif  // NETAGG_METADATA_P4_
