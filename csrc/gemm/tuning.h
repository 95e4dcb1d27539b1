/* The GEMM's tuning thresholds, in one table: each value's reason in a line. The measurements behind
 * them are in docs/perf-log.md ("Numbers that were in code comments"). Per-kernel limits that depend
 * on a tile or a vector width are in each micro-kernel's description instead (fc_gemm_ukernel). */
#ifndef FASTCONV_GEMM_TUNING_H
#define FASTCONV_GEMM_TUNING_H

enum {
    /* Fitting a micro-kernel to the caches (context.c) */
    LARGE_L2_BYTES = 2 << 20,          /* from this L2 on, kc_large_l2: C read and written once per longer K block */
    ALIASED_A_COPIED_FROM_N = 2048,    /* a 12-way L1 reads 14 aliased rows in place below this N; copies above */
    ALIASED_A_MIN_L1_WAYS = 12,        /* an L1 with fewer ways thrashes on aliased rows at any N: always copy them */
    B_BLOCK_MIN_NC = 256,              /* conv packs its weights once when its outputs fit one B block */
    A_COLUMNS_MIN_KC = 32,             /* a K block of A read by columns no shorter: below it C's traffic dominates */
    UNKNOWN_L1_BYTES = 32 << 10,       /* the smallest L1d of the CPUs the kernels were tuned on */
    UNKNOWN_L2_BYTES = 512 << 10,      /* the same for L2, for a B block kept in L2 */
    UNKNOWN_L2_WAY_BYTES = 64 << 10,   /* the smallest span of an L2's sets among them (1 MiB in 16 ways) */

    /* Choosing the layout of one product (gemm.c) */
    A_IN_PLACE_MAX_COLUMNS = 128,      /* a column-major A is read in place up to this N: packing would dominate */
    B_CHUNK_FLOATS = 1 << 20,          /* packed B per chunk of K blocks, 4 MiB: two barriers per call, not per block */
    A_ROW_PAD = 16,                    /* floats added to a restrided A row: kc + 16 is no multiple of 1024 */
    B_PANEL_MAX_L2_WAYS = 4,           /* how deep a B panel read in place may stack in the L2's sets */
    B_FEW_PANELS = 8,                  /* a misaligned B this many NR panels wide is read in place for more rows */
};

#endif
