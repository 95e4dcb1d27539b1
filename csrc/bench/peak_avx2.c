/* AVX2+FMA peak: 12 independent ymm chains, so they and the two operands fit the 16 ymm registers
 * (2 FMA pipes x 4-cycle latency needs 8). Compiled with -mavx2 -mfma. */
#include "peak.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

enum { CHAINS = 12 };

int64_t fc_fma_peak_avx2(int64_t iters)
{
    __m256 acc[CHAINS];
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_ps((float)c);
    for (int64_t t = 0; t < iters; t++)
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_fmadd_ps(acc[c], x, y);
    __m256 sum = acc[0];
    for (int c = 1; c < CHAINS; c++) sum = _mm256_add_ps(sum, acc[c]);
    float lanes[8];
    _mm256_storeu_ps(lanes, sum);
    volatile float sink = lanes[0] + lanes[7];  /* keeps the chains alive */
    (void)sink;
    return iters * CHAINS * 8 * 2;
}
#endif
