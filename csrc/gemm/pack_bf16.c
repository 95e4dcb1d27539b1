/* The bfloat16 packing of a GEMM's B operand (bf16.h's layout), shared by every bf16 micro-kernel:
 * portable C, since B is packed once per K block (or once per call for a conv's weights) and read by
 * every row tile of A. */
#include "bf16.h"
#include "../fastconv.h"

void fc_bf16_from_floats(const float *x, uint16_t *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++) out[i] = fc_bf16_from_float(x[i]);
}

void fc_gemm_pack_bf16(const float *src, int64_t rs, int64_t cs, int64_t first, int64_t rows, int64_t k, int width,
                       int64_t panel_stride, float *dst_floats)
{
    uint32_t *dst = (uint32_t *)dst_floats;  /* the scratch is float-typed; the words are written as words */
    for (int64_t i0 = first; i0 < rows; i0 += width) {
        uint32_t *panel = dst + i0 / width * panel_stride;
        const int64_t n = rows - i0 < width ? rows - i0 : width;
        for (int64_t q = 0; q < k; q += 2) {
            uint32_t *row = panel + q / 2 * width;
            for (int64_t j = 0; j < n; j++) {
                const float *s = src + (i0 + j) * rs + q * cs;
                const uint32_t lo = fc_bf16_from_float(s[0]);
                const uint32_t hi = q + 1 < k ? fc_bf16_from_float(s[cs]) : 0u;
                row[j] = lo | hi << 16;
            }
            for (int64_t j = n; j < width; j++) row[j] = 0;
        }
    }
}
