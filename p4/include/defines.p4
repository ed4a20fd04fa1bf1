// Types and codes shared by every architecture that are not part of the Python-side contract
// (those come from generated.p4): protocol numbers of the headers we parse and the codes the
// controls use to hand decisions to each other through metadata.
#ifndef NETAGG_DEFINES_P4_
#define NETAGG_DEFINES_P4_

#include "generated.p4"

typedef bit<PORT_BITS> port_t;
typedef bit<48> mac_addr_t;
typedef bit<32> ipv4_addr_t;
typedef bit<EPOCH_BITS> epoch_t;
// A worker's key and a collective's op: the widths of agg_h.key and agg_h.op (tests/p4 checks the P4Info's
// key parameters against netagg.constants.KEY_BITS).
typedef bit<32> worker_key_t;
typedef bit<32> op_t;

#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_ARP 0x0806
#define IP_PROTO_UDP 17
#define IPV4_VERSION 4
#define IPV4_IHL_NO_OPTIONS 5

#define ARP_HTYPE_ETHERNET 1
#define ARP_OPER_REQUEST 1
#define ARP_OPER_REPLY 2

// What ingress decided to do with the packet (fwd_metadata_t.kind). The architecture-neutral controls
// only record the decision; the per-architecture forwarding wrapper turns it into the target's
// intrinsic metadata. FWD_DROP is 0 so that a packet nobody decided about is dropped.
#define FWD_DROP 2w0
#define FWD_UNICAST 2w1
#define FWD_MULTICAST 2w2

// Outcome of the slot decision for an UPDATE (agg_metadata_t.outcome), docs/protocol.md step 7.
#define OUTCOME_NONE 8w0
#define OUTCOME_FIRST 8w1        // first contribution of a new round: lanes stored
#define OUTCOME_ADD 8w2          // later contribution to the current round: lanes added
#define OUTCOME_RETRANSMIT 8w3   // worker already counted, round complete: answer with the stored RESULT
#define OUTCOME_DUPLICATE 8w4    // worker already counted, round still open: DUPLICATE_PENDING
#define OUTCOME_STALE 8w5        // contribution for a round other than the copy's current one: STALE
                                 // (or a delayed duplicate of a round this copy already completed)

// Which RESULT copy egress is handling (agg_metadata_t.result).
#define RESULT_NONE 2w0
#define RESULT_MULTICAST 2w1     // completion: one replica per worker, egress_rid = worker id
#define RESULT_UNICAST 2w2       // answer to a retransmission: to the sending worker only

#endif  // NETAGG_DEFINES_P4_
