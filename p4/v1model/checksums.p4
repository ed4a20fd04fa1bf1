// v1model checksum controls.

// Incoming IPv4 checksums are not verified: the contract does not ask for it, and the aggregation
// decision depends only on fields the workers table and the header checks validate.
control NetaggVerifyChecksum(inout headers_t hdr, inout local_metadata_t meta) {
    apply { }
}

// Recomputes the IPv4 header checksum of RESULT copies, whose addresses egress rewrote. Ordinary
// traffic is forwarded untouched, so its checksum (right or wrong) is left as it came.
control NetaggComputeChecksum(inout headers_t hdr, inout local_metadata_t meta) {
    apply {
        update_checksum(
            hdr.ipv4.isValid() && meta.update_ipv4_checksum,
            {
                hdr.ipv4.version,
                hdr.ipv4.ihl,
                hdr.ipv4.dscp,
                hdr.ipv4.ecn,
                hdr.ipv4.total_len,
                hdr.ipv4.identification,
                hdr.ipv4.flags,
                hdr.ipv4.frag_offset,
                hdr.ipv4.ttl,
                hdr.ipv4.protocol,
                hdr.ipv4.src_addr,
                hdr.ipv4.dst_addr
            },
            hdr.ipv4.hdr_checksum,
            HashAlgorithm.csum16);
    }
}
