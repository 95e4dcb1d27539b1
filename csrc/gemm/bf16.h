/* bfloat16 for the mixed-precision GEMM: the conversion, the packed B layout and the arithmetic of
 * VDPBF16PS, written once in C so that the portable kernel and the tests compute exactly what the
 * AVX512_BF16 instructions compute.
 *
 * Conversion (VCVTNEPS2BF16): round to nearest even; NaN stays NaN (made quiet); float32 subnormals
 * become zero of the same sign (the instruction treats input denormals as zero).
 * Packed B (fc_gemm_pack_bf16): a panel's k rows are taken in pairs (k, k + 1), each pair one row of
 * `width` 32-bit words, word j holding row k's bf16 in its low half and row k + 1's in its high half,
 * as VDPBF16PS pairs its lanes; an odd k's last pair has zero for its high half.
 * Arithmetic (VDPBF16PS): per 32-bit lane, acc += a_hi * b_hi, then acc += a_lo * b_lo, each product
 * exact in float32, each sum rounded to nearest even, subnormal sums flushed to zero. */
#ifndef FASTCONV_GEMM_BF16_H
#define FASTCONV_GEMM_BF16_H

#include <stdint.h>
#include <string.h>

static inline uint32_t fc_float_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float fc_bits_float(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* float32 -> bfloat16 bits, as VCVTNEPS2BF16 rounds one lane. */
static inline uint16_t fc_bf16_from_float(float x)
{
    const uint32_t u = fc_float_bits(x);
    if ((u & 0x7F800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);  /* zero or subnormal: signed zero */
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u);  /* NaN: quiet */
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);  /* ties to even; Inf stays Inf */
}

static inline float fc_float_from_bf16(uint16_t h) { return fc_bits_float((uint32_t)h << 16); }

/* Packs rows [first, rows) x k of an operand (element (i, q) at src[i * rs + q * cs]) into bf16 pair
 * panels of `width` words (above), `panel_stride` words apart: fc_gemm_pack_fn's contract, for B. */
void fc_gemm_pack_bf16(const float *src, int64_t rs, int64_t cs, int64_t first, int64_t rows, int64_t k, int width,
                       int64_t panel_stride, float *dst);

#endif
