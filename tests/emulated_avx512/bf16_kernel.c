/* The AVX512_BF16 micro-kernel, built against the emulated intrinsics of immintrin.h here, as a shared
 * library that tests/test_emulated_avx512.py calls through ctypes. */
#include "../../csrc/gemm/ukr_avx512_bf16_14x32.c"

int emulated_bf16_mr(void) { return fc_gemm_avx512_bf16_14x32.mr; }
int emulated_bf16_nr(void) { return fc_gemm_avx512_bf16_14x32.nr; }

/* C (m x n, ldc) = the kernel's tile of A (rows at a + i * rs_a + p * cs_a) and B packed in bf16 pairs
 * (rs_b words from one pair row to the next), with the write-back's alpha, beta, bias (or NULL), relu. */
void emulated_bf16_tile(int64_t k, const float *a, int64_t rs_a, int64_t cs_a, const float *b, int64_t rs_b, float *c,
                   int64_t ldc, int m, int n, float alpha, float beta, const float *bias, int relu)
{
    const fc_tile_epilogue ep = { .alpha = alpha, .beta = beta, .bias = bias, .relu = relu };
    fc_gemm_avx512_bf16_14x32.ukr(k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, &ep);
}
