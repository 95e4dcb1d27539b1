/* Internal: the kernels chosen for this CPU and the thread policy (both live in dispatch.c). */
#ifndef FASTCONV_DISPATCH_H
#define FASTCONV_DISPATCH_H

#include "gemm/gemm.h"
#include "conv/direct.h"
#include "train/elementwise.h"
#include "pool/maxpool2x2.h"
#include "norm/batchnorm.h"

/* The kernels of the instruction set in use: inside a call (fc_call_begin), the call's snapshot; call
 * these on the calling thread only, and hand the tables to the OpenMP workers. The GEMM kernel is the
 * bfloat16 one where the call's precision asks for it and one runs (fc_set_thread_precision). */
const fc_gemm_kernel *fc_active_gemm_kernel(void);
/* The call's float32 kernel whatever its precision: Winograd's transformed tiles rounded to bf16 would
 * lose several times the accuracy of the other paths (F(4x4, 3x3) about 10x), so it keeps float32. */
const fc_gemm_kernel *fc_active_float32_gemm_kernel(void);
#include "isa_list.h"
#define FC_DECLARE_ACTIVE_TABLE(isa, type, table, file) const type *fc_active_##table(void);
FC_PER_ISA_TABLES(FC_DECLARE_ACTIVE_TABLE, _)
#undef FC_DECLARE_ACTIVE_TABLE

/* Threads worth using for `flops` of work: 1 below the size where OpenMP start-up costs more than
 * it saves, else the user's setting (set_num_threads, OMP_NUM_THREADS, threadpoolctl). */
int fc_threads_for_work(double flops);
/* The same for memory-bound passes over `values` floats (pooling, elementwise training kernels). */
int fc_threads_for_values(double values);
/* The calling thread's number in its OpenMP team (0 outside a parallel region): its slice of a block. */
int fc_thread_num(void);
/* The calling OpenMP thread's share [*i0, *i1) of n items, cut at multiples of `unit` items. */
void fc_thread_share(int64_t n, int64_t unit, int64_t *i0, int64_t *i1);

#endif
