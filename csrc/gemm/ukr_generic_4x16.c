/* Portable C micro-kernel: a 4 x 16 tile in a local array the compiler keeps in vector registers. */
#include "gemm.h"

enum { MR = 4, NR = 16 };

static void ukr_generic_4x16(int64_t k, const float *a, int64_t rs_a, int64_t cs_a, const float *a_next,
                             const float *b, int64_t rs_b, float *c, int64_t ldc, int m, int n, const fc_tile_epilogue *ep)
{
    (void)a_next;  /* no prefetch: the portable kernel runs where the hardware's prefetchers must do */
    float acc[MR * NR] = {0};
    const int rows = (m + 1) & ~1;  /* a partial tile runs only its rows, rounded up to even (gemm.h) */
    for (int64_t p = 0; p < k; p++, a += cs_a, b += rs_b) {
        for (int i = 0; i < rows; i++) {
            const float ai = a[i * rs_a];
            for (int j = 0; j < NR; j++) acc[i * NR + j] += ai * b[j];
        }
    }
    fc_store_tile(acc, NR, c, ldc, m, n, ep);
}

const fc_gemm_ukernel fc_gemm_generic_4x16 = {
    .name = "generic_4x16", .mr = MR, .nr = NR, .mc = 128, .kc = 256, .nc = 4096, .kc_large_l2 = 256,
    .b_in_place_max_m = 1024, .b_in_place_max_m_misaligned = 1024, .b_in_place_max_m_misaligned_few_panels = 1024,
    .b_in_place_max_m_misaligned_shared = 1024,
    .vector_bytes = 4,
    .ukr = ukr_generic_4x16, .pack = fc_gemm_pack_generic,
};
