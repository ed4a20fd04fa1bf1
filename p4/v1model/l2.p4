// Ordinary traffic: ARP replies for the switch's addresses, L2 forwarding and flooding.
control L2Switching(inout headers_t hdr, inout local_metadata_t meta) {

    // Turns the request into the reply in place and sends it back out of the ingress port.
    @name(".reply_arp")
    action reply_arp(mac_addr_t mac) {
        ipv4_addr_t target = hdr.arp.tpa;
        hdr.ethernet.dst_addr = hdr.ethernet.src_addr;
        hdr.ethernet.src_addr = mac;
        hdr.arp.oper = ARP_OPER_REPLY;
        hdr.arp.tha = hdr.arp.sha;
        hdr.arp.tpa = hdr.arp.spa;
        hdr.arp.sha = mac;
        hdr.arp.spa = target;
        meta.fwd.kind = FWD_UNICAST;
        meta.fwd.port = meta.ingress_port;
    }

    @name(".arp_reply")
    table arp_reply {
        key = {
            hdr.arp.tpa: exact @name("target_addr");
        }
        actions = {
            reply_arp;
            @defaultonly NoAction;
        }
        const default_action = NoAction();
        size = ARP_TABLE_SIZE;
    }

    @name(".forward")
    action forward(port_t port) {
        meta.fwd.kind = FWD_UNICAST;
        meta.fwd.port = port;
    }

    // Broadcast and unknown unicast: to every port but the one the frame came in on (egress prunes it,
    // since a multicast group's replicas are fixed and do not know the ingress port).
    @name(".flood")
    action flood() {
        meta.fwd.kind = FWD_MULTICAST;
        meta.fwd.group = FLOOD_MCAST_GROUP;
        meta.fwd.prune_ingress = true;
    }

    @name(".l2_forward")
    table l2_forward {
        key = {
            hdr.ethernet.dst_addr: exact @name("dst_addr");
        }
        actions = {
            forward;
            flood;
        }
        default_action = flood();
        size = L2_TABLE_SIZE;
    }

    apply {
        bool answered = false;
        if (hdr.arp.isValid() && hdr.arp.oper == ARP_OPER_REQUEST && hdr.arp.htype == ARP_HTYPE_ETHERNET
                && hdr.arp.ptype == ETHERTYPE_IPV4 && hdr.arp.hlen == 6 && hdr.arp.plen == 4) {
            answered = arp_reply.apply().hit;
        }
        if (!answered) {
            l2_forward.apply();
        }
    }
}
