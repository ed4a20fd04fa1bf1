// The aggregation logic for UPDATEs (docs/protocol.md, steps 3 to 8): header checks, the `workers`
// lookup and key check, the slot decision and the lane sums. It records its decision in metadata (meta.fwd,
// meta.agg.result, drop_for) and leaves applying it to the forwarding wrapper and the drop counting.
//
// Slot state: every register array has 2 * POOL_SLOTS entries, one per slot copy, at index
// set * POOL_SLOTS + pool_base + slot. The copy's state (slot_*) is read and written by one action;
// its lanes, one register array per payload lane, by one action per 32-lane payload block.

// v1model expansion of the generated per-lane X-macros (lanes_generated.p4).

// One register array per payload lane, named lane_<i> in the P4Info and the BMv2 JSON.
#define V1_DECLARE_LANE_REGISTER(b, field, reg, reg_name) \
    @name(reg_name) register<bit<32>>(SLOT_REGISTER_SIZE) reg;

// new = (stored & keep_mask) + (packet & add_mask), wrapping around like int32; the packet carries
// the new value on, so a completing packet leaves with the whole sum and a retransmission answer with
// the stored one.
#define V1_UPDATE_LANE(b, field, reg, reg_name) \
    reg.read(stored, meta.agg.slot_index); \
    hdr.lanes[b].field = (stored & meta.agg.keep_mask) + (hdr.lanes[b].field & meta.agg.add_mask); \
    reg.write(meta.agg.slot_index, hdr.lanes[b].field);

// One action per payload block. A block's lanes are updated in one action of their own, after the
// slot decision: BMv2 locks the register arrays an action uses while it runs, so each block's update
// is atomic, and the decision (which alone decides store / add / read) has already been taken for this
// packet. Lane sums commute, so the order in which contributions add their blocks does not matter;
// the completing packet reads every block after its own adds, and simple_switch runs ingress in a
// single thread, so every earlier contribution's blocks are already in.
#define V1_DEFINE_BLOCK_ACTION(b) \
    action update_block_##b() { \
        bit<32> stored; \
        NETAGG_BLOCK_##b##_LANES(V1_UPDATE_LANE) \
    }

// Applies a block's action when the packet carries that block (exactly 1 << size blocks are valid:
// the size code was checked against the admitted one and the parser extracted that many).
#define V1_APPLY_BLOCK(b) \
    if (hdr.lanes[b].isValid()) { \
        update_block_##b(); \
    }

control Aggregation(inout headers_t hdr, inout local_metadata_t meta) {

    @name(".slot_epoch") register<epoch_t>(SLOT_REGISTER_SIZE) slot_epoch;
    @name(".slot_bitmap") register<bit<32>>(SLOT_REGISTER_SIZE) slot_bitmap;
    @name(".slot_count") register<bit<8>>(SLOT_REGISTER_SIZE) slot_count;
    @name(".slot_tsi") register<bit<32>>(SLOT_REGISTER_SIZE) slot_tsi;
    @name(".slot_exp") register<bit<8>>(SLOT_REGISTER_SIZE) slot_exp;
    @name(".slot_flags") register<bit<8>>(SLOT_REGISTER_SIZE) slot_flags;
    @name(".slot_op") register<op_t>(SLOT_REGISTER_SIZE) slot_op;
    NETAGG_ALL_LANES(V1_DECLARE_LANE_REGISTER)

    @name(".set_worker")
    action set_worker(bit<8> worker_id, bit<8> num_workers, bit<16> pool_base, bit<16> pool_size,
                      bit<8> size, epoch_t epoch, port_t port, worker_key_t key) {
        meta.agg.worker_id = worker_id;
        meta.agg.num_workers = num_workers;
        meta.agg.pool_base = pool_base;
        meta.agg.pool_size = pool_size;
        meta.agg.size = size;
        meta.agg.epoch = epoch;
        meta.agg.worker_port = port;
        meta.agg.key = key;
    }

    // Keyed on the sender's address as well as the job, so a packet with a wrong job byte or source
    // finds no entry. Source addresses can be forged, so the entry also holds the worker's key, which
    // the UPDATE must carry (checked after the lookup).
    @name(".workers")
    table workers {
        key = {
            hdr.agg.job: exact @name("job");
            hdr.ipv4.src_addr: exact @name("src_addr");
            hdr.udp.src_port: exact @name("src_port");
        }
        actions = {
            set_worker;
            @defaultonly NoAction;
        }
        const default_action = NoAction();
        size = WORKERS_TABLE_SIZE;
    }

    // The slot decision, docs/protocol.md steps 6 and 7. Every slot register of the copy (and the
    // shadow copy's bitmap) is read and written inside this ONE action: BMv2 locks the register arrays
    // an action uses for the whole action, so the check and the update cannot interleave with another
    // packet on the same copy, as they could if they were split across actions (or across the
    // synthesized actions p4c makes of apply-block statements). The writes are unconditional, writing
    // back the old value where nothing changes: an action has no branches on BMv2 (p4c predicates
    // conditionals in actions, and cannot predicate extern calls), so every choice is a ?: expression.
    action decide() {
        epoch_t stored_epoch;
        bit<32> bitmap;
        bit<8> count;
        bit<32> tsi;
        bit<8> exp;
        bit<8> flags;
        op_t op;
        bit<32> other_bitmap;
        slot_epoch.read(stored_epoch, meta.agg.slot_index);
        slot_bitmap.read(bitmap, meta.agg.slot_index);
        slot_count.read(count, meta.agg.slot_index);
        slot_tsi.read(tsi, meta.agg.slot_index);
        slot_exp.read(exp, meta.agg.slot_index);
        slot_flags.read(flags, meta.agg.slot_index);
        slot_op.read(op, meta.agg.slot_index);
        slot_bitmap.read(other_bitmap, meta.agg.other_index);

        // A copy last written under another epoch belongs to an earlier tenant of the slot range (the
        // controller cannot clear registers through BMv2's P4Runtime server): treat it as empty.
        bool fresh = stored_epoch != meta.agg.epoch;
        bitmap = fresh ? 32w0 : bitmap;
        count = fresh ? 8w0 : count;

        bit<32> me = 32w1 << meta.agg.worker_id;
        bool seen = (bitmap & me) != 0;
        bool same_round = hdr.agg.tsi == tsi;
        // 32-bit serial-number order (RFC 1982, netagg.wire.tsi_newer): the packet's tsi is newer than the
        // copy's when it is 1 .. 2^31 - 1 ahead modulo 2^32, i.e. the bit<32> difference (which wraps) is
        // non-zero and its top bit is clear. A stream of chunks may so run past 2^32.
        bit<32> ahead = hdr.agg.tsi - tsi;
        bool newer = ahead != 0 && ahead[31:31] == 1w0;
        // Bit clear on a complete copy: a new round, but only for a newer tsi. A same or older one is a
        // delayed duplicate of a round this copy already completed (the sender's bit was cleared by its
        // send on the other set), maybe several rounds back; a round it opened would never complete.
        bool first = !seen && count == 0 && (fresh || newer);
        // Bit clear on an open round: add, but only to the same chunk (another tsi would corrupt it).
        bool add = !seen && count != 0 && same_round;
        // Bit set: a retransmission of the copy's round, or else a delayed copy of an older one (stale).
        bool retransmit = seen && count == 0 && same_round;
        bool duplicate = seen && count != 0 && same_round;
        bool contribute = first || add;

        // Exponents are signed: compare as int<8>.
        bit<8> max_exp = (int<8>)hdr.agg.exp > (int<8>)exp ? hdr.agg.exp : exp;
        bit<8> new_exp = first ? hdr.agg.exp : (add ? max_exp : exp);
        // A contribution to another collective than the round's first is still added, and flags the round
        // MISMATCH, so every worker learns of it from the RESULT.
        bit<8> mismatch = hdr.agg.op != op ? (bit<8>)FLAG_MISMATCH : 8w0;
        bit<8> new_flags = first ? hdr.agg.flags : (add ? flags | hdr.agg.flags | mismatch : flags);
        op_t new_op = first ? hdr.agg.op : op;
        bit<8> new_count = first ? meta.agg.num_workers - 1 : (add ? count - 1 : count);

        slot_epoch.write(meta.agg.slot_index, first ? meta.agg.epoch : stored_epoch);
        slot_bitmap.write(meta.agg.slot_index, first ? me : (add ? bitmap | me : bitmap));
        slot_count.write(meta.agg.slot_index, new_count);
        slot_tsi.write(meta.agg.slot_index, first ? hdr.agg.tsi : tsi);
        slot_exp.write(meta.agg.slot_index, new_exp);
        slot_flags.write(meta.agg.slot_index, new_flags);
        slot_op.write(meta.agg.slot_index, new_op);
        // The worker moved on to this copy: clearing its bit in the shadow copy lets its next send there
        // start a new round instead of being taken for a retransmission.
        slot_bitmap.write(meta.agg.other_index, contribute ? other_bitmap & ~me : other_bitmap);

        // (P4's ?: does not chain like C's: every nested one is parenthesized.)
        meta.agg.outcome = first ? OUTCOME_FIRST
                         : (add ? OUTCOME_ADD
                         : (retransmit ? OUTCOME_RETRANSMIT
                         : (duplicate ? OUTCOME_DUPLICATE
                         : OUTCOME_STALE)));
        meta.agg.complete = contribute && new_count == 0;
        meta.agg.keep_mask = first ? 32w0 : 32w0xFFFFFFFF;
        meta.agg.add_mask = contribute ? 32w0xFFFFFFFF : 32w0;
        // Every RESULT copy carries the copy's exponent, flags and op (for a retransmission, the stored
        // ones); egress adds each receiver's key.
        hdr.agg.exp = new_exp;
        hdr.agg.flags = new_flags;
        hdr.agg.op = new_op;
    }

    NETAGG_BLOCKS(V1_DEFINE_BLOCK_ACTION)

    apply {
        // Payload bytes the size code announces, for the UDP length check.
        bit<16> udp_length = (bit<16>)(UDP_HEADER_BYTES + AGG_HEADER_BYTES)
                           + ((bit<16>)(LANES_PER_BLOCK * LANE_BYTES) << hdr.agg.size);
        if (hdr.agg.version != WIRE_VERSION) {
            drop_for(meta, DROP_BAD_VERSION);
        } else if (hdr.agg.msg_type != MSG_UPDATE) {
            drop_for(meta, DROP_BAD_MSG_TYPE);
        } else if (hdr.agg.reserved != 0 || (hdr.agg.flags & ~((bit<8>)FLAGS_DEFINED)) != 0) {
            drop_for(meta, DROP_RESERVED_BIT);
        } else if (!workers.apply().hit) {
            drop_for(meta, DROP_UNKNOWN_WORKER);
        } else if (hdr.agg.key != meta.agg.key) {
            // The source address and port match a worker, but the sender does not know its key.
            drop_for(meta, DROP_BAD_KEY);
        } else if ((bit<8>)hdr.agg.size != meta.agg.size) {
            drop_for(meta, DROP_BAD_SIZE);
        } else if (hdr.udp.length != udp_length) {
            drop_for(meta, DROP_BAD_LENGTH);
        } else if ((bit<16>)hdr.agg.slot >= meta.agg.pool_size
                   || (bit<32>)meta.agg.pool_base + (bit<32>)hdr.agg.slot >= POOL_SLOTS) {
            // The second test guards the register arrays against a pool the controller placed past
            // their end: its tail is out of range too.
            drop_for(meta, DROP_SLOT_OUT_OF_RANGE);
        } else {
            bit<32> pool_index = (bit<32>)meta.agg.pool_base + (bit<32>)hdr.agg.slot;
            meta.agg.slot_index = (bit<32>)hdr.agg.set * POOL_SLOTS + pool_index;
            meta.agg.other_index = (bit<32>)(~hdr.agg.set) * POOL_SLOTS + pool_index;
            decide();

            bit<32> job_base = (bit<32>)hdr.agg.job * NUM_JOB_STATS;
            if (meta.agg.outcome == OUTCOME_FIRST || meta.agg.outcome == OUTCOME_ADD
                    || meta.agg.outcome == OUTCOME_RETRANSMIT) {
                NETAGG_BLOCKS(V1_APPLY_BLOCK)
            }
            if (meta.agg.outcome == OUTCOME_FIRST || meta.agg.outcome == OUTCOME_ADD) {
                job_stats.count(job_base + STAT_AGGREGATED);
                if (meta.agg.complete) {
                    // The packet now carries the complete sum: one copy to every worker of the job.
                    job_stats.count(job_base + STAT_COMPLETED);
                    hdr.agg.msg_type = MSG_RESULT;
                    meta.agg.result = RESULT_MULTICAST;
                    meta.fwd.kind = FWD_MULTICAST;
                    meta.fwd.group = JOB_MCAST_GROUP_BASE + (bit<16>)hdr.agg.job;
                } else {
                    meta.fwd.kind = FWD_DROP;  // consumed into the slot; not a drop
                }
            } else if (meta.agg.outcome == OUTCOME_RETRANSMIT) {
                // The sender missed the RESULT: answer it alone with the stored one.
                job_stats.count(job_base + STAT_RETRANSMIT_ANSWERED);
                hdr.agg.msg_type = MSG_RESULT;
                meta.agg.result = RESULT_UNICAST;
                meta.fwd.kind = FWD_UNICAST;
                meta.fwd.port = meta.agg.worker_port;
            } else if (meta.agg.outcome == OUTCOME_DUPLICATE) {
                drop_for(meta, DROP_DUPLICATE_PENDING);
            } else {
                drop_for(meta, DROP_STALE);
            }
        }
    }
}
