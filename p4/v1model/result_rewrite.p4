// Egress rewrite of every RESULT copy (a multicast replica or the answer to a retransmission): address
// it from the switch's aggregation endpoint to the worker's registered endpoint, and give it the worker's
// key, by which the worker knows the RESULT comes from the switch. The rest of the aggregation header
// (exp, flags, op of the slot) and the lanes were already turned into the RESULT in ingress: they are
// the same for every copy.
control ResultRewrite(inout headers_t hdr, inout local_metadata_t meta, out bool addressed) {

    @name(".set_result_dst")
    action set_result_dst(mac_addr_t mac, ipv4_addr_t addr, bit<16> port, worker_key_t key) {
        hdr.ethernet.dst_addr = mac;
        hdr.ipv4.dst_addr = addr;
        hdr.udp.dst_port = port;
        hdr.agg.key = key;
    }

    @name(".results")
    table results {
        key = {
            hdr.agg.job: exact @name("job");
            meta.agg.result_worker: exact @name("worker_id");
        }
        actions = {
            set_result_dst;
            @defaultonly NoAction;
        }
        const default_action = NoAction();
        size = RESULTS_TABLE_SIZE;
    }

    @name(".set_agg_addr")
    action set_agg_addr(mac_addr_t mac, ipv4_addr_t addr) {
        hdr.ethernet.src_addr = mac;
        hdr.ipv4.src_addr = addr;
    }

    // Keyless: the controller sets the switch's aggregation MAC and IPv4 address as its default action.
    @name(".agg_addr")
    table agg_addr {
        actions = {
            set_agg_addr;
        }
        default_action = set_agg_addr(0, 0);
        size = 1;
    }

    // `addressed` is false when the worker has no `results` entry (e.g. its job is being torn down):
    // there is nothing to send the copy to.
    apply {
        addressed = results.apply().hit;
        if (addressed) {
            agg_addr.apply();
            hdr.udp.src_port = AGG_UDP_PORT;
            hdr.udp.checksum = 0;  // RESULTs carry no UDP checksum (the lanes changed; 0 means "none")
            meta.update_ipv4_checksum = true;
        }
    }
}
