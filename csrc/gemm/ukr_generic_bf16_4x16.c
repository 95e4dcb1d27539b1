/* Portable bfloat16 micro-kernel: exactly the arithmetic of the AVX512_BF16 kernel (bf16.h), on any
 * CPU. A is float32, read where it lies (packed or in place, any strides) and rounded to bf16 pair by
 * pair as the AVX512_BF16 kernel rounds it; B is packed in bf16 pairs (fc_gemm_pack_bf16). It is the
 * reference the tests hold the bf16 GEMM to on CPUs without AVX512_BF16, and what
 * fastconv.set_bf16_kernel("portable") runs; it is slower than the float32 kernels.
 * Written with GCC/Clang vector types (4 floats: SSE2 in the baseline x86-64 build), so that it is
 * fast enough to train a small model with. */
#include <float.h>

#include "bf16.h"
#include "gemm.h"

enum { MR = 4, NR = 16, LANES = 4, VECTORS = NR / LANES };

typedef float v4f __attribute__((vector_size(16)));
typedef uint32_t v4u __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

/* acc + a * b as VDPBF16PS adds one product: the product of two bf16 values is exact (down to float32's
 * subnormals), the sum is rounded once (to nearest even), and a subnormal sum becomes a zero of its
 * sign. Not with MXCSR's flush-to-zero, which would flush a subnormal product before the sum and so
 * lose a zero's sign. */
static inline v4f dot_step(v4f acc, v4f a, v4f b)
{
    const v4f sum = acc + a * b;
    const v4i tiny = (sum < FLT_MIN) & (sum > -FLT_MIN);  /* all ones where |sum| < FLT_MIN (0 included) */
    return (v4f)((v4i)sum & ~(tiny & 0x7FFFFFFF));  /* a tiny sum keeps only its sign */
}

/* Four floats rounded to bf16 (bf16.h's rule, lane by lane, without branches), as floats. */
static inline v4f round_bf16(v4f x)
{
    const v4i u = (v4i)x, magnitude = u & 0x7FFFFFFF;
    const v4i nearest = (u + 0x7FFF + ((u >> 16) & 1)) & (v4i){-65536, -65536, -65536, -65536};
    const v4i nan = magnitude > 0x7F800000, subnormal = (u & 0x7F800000) == 0;
    const v4i quiet = (u | 0x00400000) & -65536;
    const v4i r = (nan & quiet) | (~nan & nearest);
    return (v4f)((subnormal & (u & (v4i){(int32_t)0x80000000, (int32_t)0x80000000, (int32_t)0x80000000,
                                             (int32_t)0x80000000})) | (~subnormal & r));
}

static void ukr_generic_bf16_4x16(int64_t k, const float *a, int64_t rs_a, int64_t cs_a, const float *a_next,
                                  const float *b_floats, int64_t rs_b, float *c, int64_t ldc, int m, int n,
                                  const fc_tile_epilogue *ep)
{
    (void)a_next;
    const uint32_t *b = (const uint32_t *)b_floats;  /* rs_b words from one pair row to the next */
    v4f acc[MR][VECTORS];
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < VECTORS; v++) acc[i][v] = (v4f){0, 0, 0, 0};
    /* All MR rows run (rows past m are readable, by the contract, and not written). */
    for (int64_t p = 0; p < k; p += 2, b += rs_b) {
        v4f b_lo[VECTORS], b_hi[VECTORS];
        for (int v = 0; v < VECTORS; v++) {
            v4u w;
            __builtin_memcpy(&w, b + LANES * v, sizeof w);
            b_lo[v] = (v4f)(w << 16);
            b_hi[v] = (v4f)(w & 0xFFFF0000u);
        }
        /* The tile's A pairs, rounded four at a time (MR is 4). */
        v4f raw_lo, raw_hi;
        for (int i = 0; i < MR; i++) {
            const float *ai = a + i * rs_a + p * cs_a;
            raw_lo[i] = ai[0];
            raw_hi[i] = p + 1 < k ? ai[cs_a] : 0.0f;
        }
        const v4f lo = round_bf16(raw_lo), hi = round_bf16(raw_hi);
        for (int i = 0; i < MR; i++) {
            const v4f a_lo = {lo[i], lo[i], lo[i], lo[i]}, a_hi = {hi[i], hi[i], hi[i], hi[i]};
            for (int v = 0; v < VECTORS; v++) acc[i][v] = dot_step(dot_step(acc[i][v], a_hi, b_hi[v]), a_lo, b_lo[v]);
        }
    }
    float tile[MR * NR];
    for (int i = 0; i < MR; i++) __builtin_memcpy(tile + i * NR, acc[i], sizeof acc[i]);
    fc_store_tile(tile, NR, c, ldc, m, n, ep);
}

/* B is never read in place (it must be converted: b_in_place_max_m 0). */
const fc_gemm_ukernel fc_gemm_generic_bf16_4x16 = {
    .name = "generic_bf16_4x16", .mr = MR, .nr = NR, .mc = 128, .kc = 256, .nc = 4096, .kc_large_l2 = 256,
    .vector_bytes = 16,
    .ukr = ukr_generic_bf16_4x16, .pack = fc_gemm_pack_generic, .pack_b = fc_gemm_pack_bf16,
};
