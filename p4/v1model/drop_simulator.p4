// Drop simulator: loses aggregation packets with a per-port probability, in ingress (UPDATEs) and in
// egress (RESULT copies), as the test network has no other way to lose packets. Ordinary traffic
// (ARP, L2) is never dropped by it. A lost packet is counted as SIMULATED_LOSS.

// One action for both tables, declared at the top level so the P4Info has a single `set_loss` (as the
// contract lists it). Its directional parameter is bound by each table to the metadata field.
action set_loss(inout bit<32> loss_threshold, bit<32> threshold) {
    loss_threshold = threshold;
}

control IngressDropSimulator(inout local_metadata_t meta) {
    LossRoll() roll;

    @name(".ingress_loss")
    table ingress_loss {
        key = {
            meta.ingress_port: exact @name("port");
        }
        actions = {
            set_loss(meta.loss_threshold);
            @defaultonly NoAction;
        }
        const default_action = NoAction();
        size = LOSS_TABLE_SIZE;
    }

    apply {
        meta.loss_threshold = 0;
        ingress_loss.apply();
        bool lost;
        roll.apply(meta.loss_threshold, lost);
        if (lost) {
            drop_for(meta, DROP_SIMULATED_LOSS);
        }
    }
}

control EgressDropSimulator(inout local_metadata_t meta, in port_t egress_port) {
    LossRoll() roll;

    @name(".egress_loss")
    table egress_loss {
        key = {
            egress_port: exact @name("port");
        }
        actions = {
            set_loss(meta.loss_threshold);
            @defaultonly NoAction;
        }
        const default_action = NoAction();
        size = LOSS_TABLE_SIZE;
    }

    apply {
        meta.loss_threshold = 0;
        egress_loss.apply();
        bool lost;
        roll.apply(meta.loss_threshold, lost);
        if (lost) {
            drop_for(meta, DROP_SIMULATED_LOSS);
        }
    }
}
