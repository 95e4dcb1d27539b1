/* Internal: the scratch memory of kernel calls, and the frame every public entry point runs in.
 *
 * Scratch belongs to the thread that calls a public entry point (a Python thread with the GIL
 * released), never to an OpenMP worker: a call sizes everything it needs before its parallel regions,
 * takes it from the caller's slots in one piece, and hands each worker its slice (by thread number).
 * So an allocation can only fail before any worker starts, and the call then returns
 * FC_ERROR_NO_MEMORY instead of touching anything. A slot's buffer stays valid until the same thread
 * asks for that slot again or its outermost call ends; buffers are 64-byte aligned, contents undefined.
 *
 * Caching: a thread keeps its buffers for its next call while all threads together hold at most the
 * cache limit (fc_set_workspace_limit, default FC_WORKSPACE_DEFAULT_LIMIT); a thread whose call ends
 * above it frees its own. fc_release_workspace frees every buffer no call is using. Large buffers are
 * mapped and unmapped directly, so freed memory leaves the process (glibc would keep heap pages). */
#ifndef FASTCONV_WORKSPACE_H
#define FASTCONV_WORKSPACE_H

#include <stdint.h>

enum fc_scratch_slot {
    FC_SCRATCH_CALL,    /* an op's block: packed weights, partial sums, and every thread's slice */
    FC_SCRATCH_KERNEL,  /* a second block of the same call: conv backward's flipped kernel, norm's sums */
    FC_SCRATCH_GEMM,    /* fc_gemm_run's own block when the caller gave none (a top-level GEMM) */
    FC_SCRATCH_SLOTS,
};

/* A buffer of at least `floats` floats, or NULL when the memory cannot be had (the caller then
 * returns FC_ERROR_NO_MEMORY). Only between fc_call_begin and fc_call_end, on the calling thread. */
float *fc_scratch(enum fc_scratch_slot slot, int64_t floats);

/* Floats rounded up to whole cache lines: the slices of one block keep 64-byte alignment. */
static inline int64_t fc_lines(int64_t floats) { return (floats + 15) / 16 * 16; }

/* The call frame of every public entry point (may nest: conv2d_backward calls itself). The outermost
 * begin takes this call's snapshot of the instruction set (dispatch.c), so that fc_set_isa in another
 * thread cannot change the kernels between a call's sizing and their use; the outermost end returns
 * the thread's workspace to the cache (or frees it, above the limit). fc_call_end returns `status`. */
void fc_call_begin(void);
int fc_call_end(int status);

/* workspace.c's side of fc_call_begin / fc_call_end (the outermost ones). */
void fc_workspace_call_end(void);

/* For the fork handlers in dispatch.c: hold the registry lock across fork(). */
void fc_workspace_before_fork(void);
void fc_workspace_after_fork(int child);

#endif
