/* FP32 FMA peak microbenchmarks, one per instruction set: each runs `iters` steps of CHAINS
 * independent FMA dependency chains (enough to cover the FMA latency on every pipe) and returns the
 * number of floating-point operations done. Timing is the caller's (fastconv/bench.py). */
#ifndef FASTCONV_PEAK_H
#define FASTCONV_PEAK_H

#include <stdint.h>

typedef int64_t (*fc_fma_peak_fn)(int64_t iters);

/* One per instruction set, fc_fma_peak_<isa> in peak_<isa>.c: csrc/isa_list.h lists them. */

#endif
