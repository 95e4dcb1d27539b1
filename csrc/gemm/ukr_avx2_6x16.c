/* AVX2+FMA micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators (compiled with -mavx2 -mfma). */
#include "gemm.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

enum { MR = 6, NR = 16 };

static void ukr_avx2_6x16(int64_t k, const float *a, const float *b, float *c, int64_t ldc,
                          int m, int n, const fc_tile_epilogue *ep)
{
    __m256 acc[MR][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t p = 0; p < k; p++) {
        const __m256 b0 = _mm256_loadu_ps(b + p * NR), b1 = _mm256_loadu_ps(b + p * NR + 8);
        for (int i = 0; i < MR; i++) {
            const __m256 ai = _mm256_broadcast_ss(a + p * MR + i);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
    }
    if (m < MR || n < NR) {
        float tile[MR * NR];
        for (int i = 0; i < MR; i++) {
            _mm256_storeu_ps(tile + i * NR, acc[i][0]);
            _mm256_storeu_ps(tile + i * NR + 8, acc[i][1]);
        }
        fc_store_tile(tile, NR, c, ldc, m, n, ep);
        return;
    }
    const __m256 alpha = _mm256_set1_ps(ep->alpha), beta = _mm256_set1_ps(ep->beta), zero = _mm256_setzero_ps();
    const __m256 bias0 = ep->bias ? _mm256_loadu_ps(ep->bias) : zero;
    const __m256 bias1 = ep->bias ? _mm256_loadu_ps(ep->bias + 8) : zero;
    for (int i = 0; i < MR; i++) {
        float *row = c + i * ldc;
        __m256 v0 = _mm256_mul_ps(alpha, acc[i][0]), v1 = _mm256_mul_ps(alpha, acc[i][1]);
        if (ep->beta != 0.0f) {
            v0 = _mm256_fmadd_ps(beta, _mm256_loadu_ps(row), v0);
            v1 = _mm256_fmadd_ps(beta, _mm256_loadu_ps(row + 8), v1);
        }
        if (ep->bias) { v0 = _mm256_add_ps(v0, bias0); v1 = _mm256_add_ps(v1, bias1); }
        if (ep->relu) { v0 = _mm256_max_ps(zero, v0); v1 = _mm256_max_ps(zero, v1); }  /* max(0, NaN) = NaN */
        _mm256_storeu_ps(row, v0);
        _mm256_storeu_ps(row + 8, v1);
    }
}

const fc_gemm_kernel fc_gemm_avx2_6x16 = {
    .name = "avx2_6x16", .mr = MR, .nr = NR, .mc = 144, .kc = 256, .nc = 4080, .ukr = ukr_avx2_6x16,
};
#endif
