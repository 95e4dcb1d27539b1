/* AVX-512F FMA peak: 16 independent zmm chains (2 FMA pipes x 4-cycle latency needs 8; 16 leaves
 * slack for any core up to 2 x 8). Compiled with -mavx512f -mfma. */
#include "peak.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

enum { CHAINS = 16 };

int64_t fc_fma_peak_avx512(int64_t iters)
{
    __m512 acc[CHAINS];
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    for (int64_t t = 0; t < iters; t++)
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], x, y);
    __m512 sum = acc[0];
    for (int c = 1; c < CHAINS; c++) sum = _mm512_add_ps(sum, acc[c]);
    volatile float sink = _mm512_reduce_add_ps(sum);  /* keeps the chains alive */
    (void)sink;
    return iters * CHAINS * 16 * 2;
}
#endif
