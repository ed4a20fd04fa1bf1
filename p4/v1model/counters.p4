// Counters, declared at the top level because ingress and egress both count drops into them
// (the egress drop simulator drops RESULT copies). Top-level names are the P4Info names.

// Index: DropReason.
counter(NUM_DROP_REASONS, CounterType.packets_and_bytes) drops;
// Index: job * NUM_DROP_REASONS + DropReason (only for packets whose aggregation header was parsed).
counter(JOB_DROPS_SIZE, CounterType.packets_and_bytes) job_drops;
// Index: job * NUM_JOB_STATS + JobStat.
counter(JOB_STATS_SIZE, CounterType.packets_and_bytes) job_stats;

// Counts a drop decided earlier in the pipeline (drop_for) in `drops` and, when the packet carried an
// aggregation header, in `job_drops` under the job byte it carried.
control CountDrop(in headers_t hdr, in local_metadata_t meta) {
    apply {
        if (meta.count_drop) {
            drops.count((bit<32>)meta.drop_reason);
            if (hdr.agg.isValid()) {
                job_drops.count((bit<32>)hdr.agg.job * NUM_DROP_REASONS + (bit<32>)meta.drop_reason);
            }
        }
    }
}
