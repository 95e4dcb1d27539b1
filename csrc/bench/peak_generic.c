/* Portable peak: the same chains in plain C (multiply-add on the baseline vector unit; the compiler
 * vectorises the 48 lanes into 12 SSE registers). */
#include "peak.h"

enum { LANES = 48 };

int64_t fc_fma_peak_generic(int64_t iters)
{
    float acc[LANES];
    for (int c = 0; c < LANES; c++) acc[c] = (float)c;
    for (int64_t t = 0; t < iters; t++)
        for (int c = 0; c < LANES; c++) acc[c] = acc[c] * 0.999999f + 1e-7f;
    float sum = 0.0f;
    for (int c = 0; c < LANES; c++) sum += acc[c];
    volatile float sink = sum;  /* keeps the chains alive */
    (void)sink;
    return iters * LANES * 2;
}
