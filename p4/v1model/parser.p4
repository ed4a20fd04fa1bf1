// v1model parser and deparser.
//
// v1model does not drop a packet whose parser fails: BMv2 runs ingress with
// standard_metadata.parser_error set (and the headers extracted so far valid). Ingress checks it first
// and drops the frame as PARSER_ERROR, so a frame shorter than the headers its fields announce never
// reaches the aggregation logic.

#if MAX_BLOCKS != 8 || MAX_SIZE_CODE != 3
#error "parse_agg handles size codes 0..3 (1, 2, 4, 8 payload blocks): update it for the new sizes"
#endif

parser NetaggParser(packet_in packet,
                    out headers_t hdr,
                    inout local_metadata_t meta,
                    inout standard_metadata_t std) {
    state start {
        transition parse_ethernet;
    }

    state parse_ethernet {
        packet.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_ARP: parse_arp;
            default: accept;
        }
    }

    state parse_arp {
        packet.extract(hdr.arp);
        transition accept;
    }

    state parse_ipv4 {
        packet.extract(hdr.ipv4);
        // Aggregation packets carry no IPv4 options; anything else is ordinary traffic.
        transition select(hdr.ipv4.version, hdr.ipv4.ihl, hdr.ipv4.protocol) {
            (IPV4_VERSION, IPV4_IHL_NO_OPTIONS, IP_PROTO_UDP): parse_udp;
            default: accept;
        }
    }

    state parse_udp {
        packet.extract(hdr.udp);
        // UDP to the aggregation port is always aggregation traffic, whatever its IPv4 destination.
        transition select(hdr.udp.dst_port) {
            AGG_UDP_PORT: parse_agg;
            default: accept;
        }
    }

    state parse_agg {
        packet.extract(hdr.agg);
        // Only this wire version's payload layout is known: a header of another version (a v1 frame, say)
        // parses no payload, so its frame is not a parser error for want of lanes it does not announce, and
        // ingress drops it as BAD_VERSION. Undefined size codes (4..7) parse no payload either; ingress drops
        // them as BAD_SIZE.
        transition select(hdr.agg.version, hdr.agg.size) {
            (WIRE_VERSION, 0): parse_1_block;
            (WIRE_VERSION, 1): parse_2_blocks;
            (WIRE_VERSION, 2): parse_4_blocks;
            (WIRE_VERSION, 3): parse_8_blocks;
            default: accept;
        }
    }

    // Each state extracts half of what is left, so size code s extracts exactly 1 << s blocks into
    // hdr.lanes[0 .. (1 << s) - 1].
    state parse_8_blocks {
        packet.extract(hdr.lanes.next);
        packet.extract(hdr.lanes.next);
        packet.extract(hdr.lanes.next);
        packet.extract(hdr.lanes.next);
        transition parse_4_blocks;
    }

    state parse_4_blocks {
        packet.extract(hdr.lanes.next);
        packet.extract(hdr.lanes.next);
        transition parse_2_blocks;
    }

    state parse_2_blocks {
        packet.extract(hdr.lanes.next);
        transition parse_1_block;
    }

    state parse_1_block {
        packet.extract(hdr.lanes.next);
        transition accept;
    }
}

control NetaggDeparser(packet_out packet, in headers_t hdr) {
    apply {
        packet.emit(hdr.ethernet);
        packet.emit(hdr.arp);
        packet.emit(hdr.ipv4);
        packet.emit(hdr.udp);
        packet.emit(hdr.agg);
        packet.emit(hdr.lanes);
    }
}
