// v1model ingress: parser errors, then aggregation traffic or ordinary traffic.
control NetaggIngress(inout headers_t hdr, inout local_metadata_t meta, inout standard_metadata_t std) {
    IngressDropSimulator() drop_simulator;
    Aggregation() aggregation;
    L2Switching() l2;
    CountDrop() count_drop;
    ApplyForwarding() apply_forwarding;

    apply {
        meta.ingress_port = std.ingress_port;
        if (std.parser_error != error.NoError) {
            // v1model hands a frame that failed to parse to ingress anyway (see parser.p4).
            drop_for(meta, DROP_PARSER_ERROR);
        } else if (hdr.agg.isValid()) {
            drop_simulator.apply(meta);
            if (!meta.count_drop) {
                aggregation.apply(hdr, meta);
            }
        } else {
            l2.apply(hdr, meta);
        }
        count_drop.apply(hdr, meta);
        apply_forwarding.apply(meta.fwd, std);
    }
}
