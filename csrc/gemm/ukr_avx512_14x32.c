/* AVX-512F micro-kernel: a 14 x 32 tile of C in 28 zmm accumulators; A is broadcast straight from
 * memory, so two registers hold the B row and none is spilled (compiled with -mavx512f -mfma). */
#include "gemm.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

enum { MR = 14, NR = 32 };

static void ukr_avx512_14x32(int64_t k, const float *a, const float *b, float *c, int64_t ldc,
                             int m, int n, const fc_tile_epilogue *ep)
{
    __m512 acc[MR][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int64_t p = 0; p < k; p++) {
        const __m512 b0 = _mm512_loadu_ps(b + p * NR), b1 = _mm512_loadu_ps(b + p * NR + 16);
        for (int i = 0; i < MR; i++) {
            const __m512 ai = _mm512_set1_ps(a[p * MR + i]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
        }
    }
    /* Partial columns use masked loads/stores; partial rows are simply not written. */
    const __mmask16 mask0 = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
    const __mmask16 mask1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
    const __m512 alpha = _mm512_set1_ps(ep->alpha), beta = _mm512_set1_ps(ep->beta), zero = _mm512_setzero_ps();
    const __m512 bias0 = ep->bias ? _mm512_maskz_loadu_ps(mask0, ep->bias) : zero;
    const __m512 bias1 = ep->bias ? _mm512_maskz_loadu_ps(mask1, ep->bias + 16) : zero;
    for (int i = 0; i < m; i++) {
        float *row = c + i * ldc;
        __m512 v0 = _mm512_mul_ps(alpha, acc[i][0]), v1 = _mm512_mul_ps(alpha, acc[i][1]);
        if (ep->beta != 0.0f) {
            v0 = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask0, row), v0);
            v1 = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask1, row + 16), v1);
        }
        if (ep->bias) { v0 = _mm512_add_ps(v0, bias0); v1 = _mm512_add_ps(v1, bias1); }
        if (ep->relu) { v0 = _mm512_max_ps(zero, v0); v1 = _mm512_max_ps(zero, v1); }  /* max(0, NaN) = NaN */
        _mm512_mask_storeu_ps(row, mask0, v0);
        _mm512_mask_storeu_ps(row + 16, mask1, v1);
    }
}

const fc_gemm_kernel fc_gemm_avx512_14x32 = {
    .name = "avx512_14x32", .mr = MR, .nr = NR, .mc = 168, .kc = 256, .nc = 4096, .ukr = ukr_avx512_14x32,
};
#endif
