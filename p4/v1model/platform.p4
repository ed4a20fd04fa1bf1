// The few places the program touches v1model's intrinsic metadata and externs, kept small so that
// another architecture replaces this file and reuses the logic controls unchanged in shape.

// Applies the forwarding decision recorded in meta.fwd to standard_metadata.
control ApplyForwarding(in fwd_metadata_t fwd, inout standard_metadata_t std) {
    apply {
        if (fwd.kind == FWD_UNICAST) {
            std.egress_spec = fwd.port;
        } else if (fwd.kind == FWD_MULTICAST) {
            std.mcast_grp = fwd.group;
        } else {
            mark_to_drop(std);
        }
    }
}

// Drop simulator roll: true with probability threshold / 2^32 (v1model's random is uniform over the
// inclusive range, so threshold 0 never drops).
control LossRoll(in bit<32> threshold, out bool lost) {
    apply {
        lost = false;
        if (threshold != 0) {
            bit<32> roll;
            random(roll, 32w0, 32w0xFFFFFFFF);
            lost = roll < threshold;
        }
    }
}
