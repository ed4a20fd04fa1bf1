// Packet headers, as every architecture parses them.
#ifndef NETAGG_HEADERS_P4_
#define NETAGG_HEADERS_P4_

#include "defines.p4"
#include "generated.p4"        // agg_h, field for field as netagg.wire.HEADER_FIELDS
#include "lanes_generated.p4"  // lanes_h, one payload block

header ethernet_h {
    mac_addr_t dst_addr;
    mac_addr_t src_addr;
    bit<16> ether_type;
}

// ARP for Ethernet / IPv4 only (the only kind the switch answers).
header arp_h {
    bit<16> htype;
    bit<16> ptype;
    bit<8> hlen;
    bit<8> plen;
    bit<16> oper;
    mac_addr_t sha;
    ipv4_addr_t spa;
    mac_addr_t tha;
    ipv4_addr_t tpa;
}

// IPv4 without options: aggregation packets never carry any (docs/protocol.md).
header ipv4_h {
    bit<4> version;
    bit<4> ihl;
    bit<6> dscp;
    bit<2> ecn;
    bit<16> total_len;
    bit<16> identification;
    bit<3> flags;
    bit<13> frag_offset;
    bit<8> ttl;
    bit<8> protocol;
    bit<16> hdr_checksum;
    ipv4_addr_t src_addr;
    ipv4_addr_t dst_addr;
}

header udp_h {
    bit<16> src_port;
    bit<16> dst_port;
    bit<16> length;
    bit<16> checksum;
}

struct headers_t {
    ethernet_h ethernet;
    arp_h arp;
    ipv4_h ipv4;
    udp_h udp;
    agg_h agg;
    lanes_h[MAX_BLOCKS] lanes;  // the first (1 << agg.size) blocks are valid
}

#endif  // NETAGG_HEADERS_P4_
