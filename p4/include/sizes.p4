// Table sizes. Only the P4 program needs them; they are derived from the shared constants.
#ifndef NETAGG_SIZES_P4_
#define NETAGG_SIZES_P4_

#include "generated.p4"

#define WORKERS_TABLE_SIZE (MAX_JOBS * MAX_WORKERS)   // every worker of every job
#define RESULTS_TABLE_SIZE (MAX_JOBS * MAX_WORKERS)
#define L2_TABLE_SIZE 1024
#define ARP_TABLE_SIZE 256
#define LOSS_TABLE_SIZE (1 << PORT_BITS)              // one entry per switch port

#define JOB_DROPS_SIZE (MAX_JOBS * NUM_DROP_REASONS)
#define JOB_STATS_SIZE (MAX_JOBS * NUM_JOB_STATS)

#endif  // NETAGG_SIZES_P4_
