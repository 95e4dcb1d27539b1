/* Internal: per-thread scratch buffers, reused across calls and grown on demand.
 *
 * Every OS thread (a Python thread calling in with the GIL released, or an OpenMP worker) owns its
 * own set of slots, so concurrent calls never share a buffer and no lock is taken. A slot's buffer
 * stays valid until the same thread asks for that slot again; it is freed when the thread exits
 * (the main thread's at process exit). Buffers are 64-byte aligned and their contents undefined. */
#ifndef FASTCONV_WORKSPACE_H
#define FASTCONV_WORKSPACE_H

#include <stdint.h>

enum fc_scratch_slot {
    FC_SCRATCH_CALL,    /* owned by the calling thread for a whole op: packed weights, partial sums */
    FC_SCRATCH_KERNEL,  /* also the calling thread's for a whole op: conv backward's flipped kernel */
    FC_SCRATCH_A,       /* per-thread buffers used inside a parallel region */
    FC_SCRATCH_B,
    FC_SCRATCH_GEMM_A,  /* fc_gemm_run: each thread's packed A block */
    FC_SCRATCH_GEMM_B,  /* fc_gemm_run: the packed B block, owned by the calling thread */
    FC_SCRATCH_SLOTS,
};

float *fc_scratch(enum fc_scratch_slot slot, int64_t floats);

#endif
