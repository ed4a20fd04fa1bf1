// v1model egress: address RESULT copies, run the egress drop simulator, prune flood copies.
control NetaggEgress(inout headers_t hdr, inout local_metadata_t meta, inout standard_metadata_t std) {
    ResultRewrite() result_rewrite;
    EgressDropSimulator() drop_simulator;
    CountDrop() count_drop;

    apply {
        if (meta.agg.result != RESULT_NONE) {
            // A completion replica names its worker in egress_rid (the job group has one replica per
            // worker, rid = worker id); the answer to a retransmission is unicast to the sender.
            meta.agg.result_worker = meta.agg.result == RESULT_MULTICAST
                                   ? (bit<8>)std.egress_rid
                                   : meta.agg.worker_id;
            bool addressed;
            result_rewrite.apply(hdr, meta, addressed);
            if (!addressed) {
                // Not a drop reason of the contract, so not counted (the software switch does the same).
                mark_to_drop(std);
            } else {
                drop_simulator.apply(meta, std.egress_port);
                count_drop.apply(hdr, meta);
                if (meta.count_drop) {
                    mark_to_drop(std);
                }
            }
        } else if (meta.fwd.prune_ingress && std.egress_port == meta.ingress_port) {
            mark_to_drop(std);
        }
    }
}
