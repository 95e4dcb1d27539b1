/* Fits a micro-kernel to a CPU's caches (gemm.h's fc_gemm_kernel): computed once per instruction set
 * when the library loads (dispatch.c), from the sizes the OS reports. The thresholds are in tuning.h. */
#include "gemm.h"
#include "tuning.h"

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

void fc_gemm_fit(fc_gemm_kernel *k, const fc_gemm_ukernel *uk, const fc_gemm_caches *caches)
{
    const int64_t l1_bytes = caches->l1_bytes > 0 ? caches->l1_bytes : UNKNOWN_L1_BYTES;
    const int64_t l1_ways = caches->l1_ways, l2_bytes = caches->l2_bytes;
    k->uk = uk;
    k->mr = uk->mr;
    k->nr = uk->nr;
    k->nr_narrow = uk->nr_narrow;
    k->vector_bytes = uk->vector_bytes;
    k->ukr = uk->ukr;
    k->pack = uk->pack;
    k->pack_b = uk->pack_b ? uk->pack_b : uk->pack;
    k->mc = uk->mc;
    /* A core with a large L2 holds a taller A block, so C is read and written once per longer K block. */
    k->kc = l2_bytes >= LARGE_L2_BYTES ? uk->kc_large_l2 : uk->kc;
    k->nc = uk->nc;
    if (uk->b_block_in_l2) {  /* a B block of half the L2: each tile of A stays in L1 across its panels */
        const int64_t l2 = l2_bytes > 0 ? l2_bytes : UNKNOWN_L2_BYTES;
        const int64_t fit = l2 / 2 / ((int64_t)sizeof(float) * k->kc) / uk->nr * uk->nr;
        k->nc = (int)min64(k->nc, max64(B_BLOCK_MIN_NC, fit));
    }
    /* MR rows of a row-major A 4 KiB apart share one L1 set: harmless up to the set's ways; beyond, they
     * are copied to a padded stride, at once where the L1 has few ways, from a wide N where it has many
     * (the copy is made once per block of A, so its share shrinks as N grows). */
    k->aliased_a_copied_from_n = uk->mr <= l1_ways                   ? INT64_MAX
                                 : l1_ways >= ALIASED_A_MIN_L1_WAYS ? ALIASED_A_COPIED_FROM_N
                                                                    : 0;
    /* An A read in place by columns brings a cache line into L1 per k step of a tile, beside the B panel's
     * NR floats: its K block keeps both in half of L1. */
    const int64_t line_and_b_row = 64 + (int64_t)sizeof(float) * uk->nr;
    k->kc_columns_of_a = (int)min64(k->kc, max64(A_COLUMNS_MIN_KC, l1_bytes / 2 / line_and_b_row / 16 * 16));
    /* The span of the L2's sets, from which gemm.c caps the K block of a B read in place whose row stride
     * would stack its panel too deep in few sets (b_panel_max_rows). */
    k->l2_way_bytes = l2_bytes > 0 && caches->l2_ways > 0 ? l2_bytes / caches->l2_ways : UNKNOWN_L2_WAY_BYTES;
}
