// netagg: in-network gradient aggregation, v1model (BMv2 simple_switch_grpc) program.
// This file only includes and wires up; see docs/p4.md for the layout.
#include <core.p4>
#include <v1model.p4>

#include "../include/headers.p4"
#include "../include/metadata.p4"
#include "../include/sizes.p4"

#include "platform.p4"
#include "counters.p4"
#include "parser.p4"
#include "checksums.p4"
#include "drop_simulator.p4"
#include "aggregation.p4"
#include "l2.p4"
#include "result_rewrite.p4"
#include "ingress.p4"
#include "egress.p4"

V1Switch(
    NetaggParser(),
    NetaggVerifyChecksum(),
    NetaggIngress(),
    NetaggEgress(),
    NetaggComputeChecksum(),
    NetaggDeparser()
) main;
