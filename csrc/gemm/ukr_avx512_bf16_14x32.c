/* AVX512_BF16 micro-kernel: a 14 x 32 tile of C in 28 zmm float32 accumulators, each VDPBF16PS
 * adding two k steps (a bf16 pair) of 16 columns. B comes packed in bf16 pairs (fc_gemm_pack_bf16); A
 * is float32 where it lies (packed, or in place for implicit GEMM and Dense layers) and is rounded to
 * bf16 pairs 16 k steps at a time into a small buffer, from which each row's pair is broadcast.
 * Compiled with -mavx512bf16 and chosen by dispatch.c only on CPUs with AVX512_BF16 (CPUID leaf 7,
 * subleaf 1, EAX bit 5). No machine we test on has AVX512_BF16: tests/test_emulated_avx512.py runs this
 * file's code on emulated intrinsics against the NumPy model of bf16.h's arithmetic, which the portable
 * kernel (ukr_generic_bf16_4x16.c) also computes. */
#include "bf16.h"
#include "gemm.h"

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__AVX512BF16__)
#include <immintrin.h>

enum { MR = 14, NR = 32, CHUNK = 16, PAIRS = CHUNK / 2 };

/* The bf16 pairs of k steps [p0, p0 + kk) (kk <= CHUNK) of the tile's MR rows: pair q of row i at
 * buf[i * si + q * sq] words, as the layout of A makes cheapest. */
static inline void convert_a(const float *a, int64_t rs, int64_t cs, int64_t p0, int kk, uint32_t *buf,
                             int *si, int *sq)
{
    if (cs == 1) {  /* row-major A: a row's 16 k steps are one load, its 8 pairs one conversion */
        const __mmask16 valid = (__mmask16)((1u << kk) - 1);  /* a missing odd step reads 0 */
        for (int i = 0; i < MR; i++) {
            const __m512 row = _mm512_maskz_loadu_ps(valid, a + i * rs + p0);
            _mm256_storeu_si256((__m256i *)(buf + i * PAIRS), (__m256i)_mm512_cvtneps_pbh(row));
        }
        *si = PAIRS; *sq = 1;
    } else if (rs == 1) {  /* packed (or column-major) A: a k step's 14 rows are one load */
        const __mmask16 rows = (__mmask16)((1u << MR) - 1);
        for (int q = 0; q < (kk + 1) / 2; q++) {
            const __m512 lo = _mm512_maskz_loadu_ps(rows, a + (p0 + 2 * q) * cs);
            const __m512 hi = 2 * q + 1 < kk ? _mm512_maskz_loadu_ps(rows, a + (p0 + 2 * q + 1) * cs)
                                             : _mm512_setzero_ps();
            const __m512i lo16 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
            const __m512i hi16 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
            _mm512_storeu_si512(buf + q * 16, _mm512_or_si512(lo16, _mm512_slli_epi32(hi16, 16)));
        }
        *si = 1; *sq = 16;
    } else {
        for (int i = 0; i < MR; i++)
            for (int q = 0; q < (kk + 1) / 2; q++) {
                const float *s = a + i * rs + (p0 + 2 * q) * cs;
                const uint32_t hi = 2 * q + 1 < kk ? fc_bf16_from_float(s[cs]) : 0u;
                buf[i * PAIRS + q] = fc_bf16_from_float(s[0]) | hi << 16;
            }
        *si = PAIRS; *sq = 1;
    }
}

static inline __attribute__((always_inline)) void tile(int rows, int64_t k, const float *a, int64_t rs_a,
                                                       int64_t cs_a, const uint32_t *b, int64_t rs_b, float *c,
                                                       int64_t ldc, int m, int n, const fc_tile_epilogue *ep)
{
    __m512 acc[MR][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    uint32_t buf[MR * 16] __attribute__((aligned(64)));  /* either layout of convert_a */
    for (int64_t p0 = 0; p0 < k; p0 += CHUNK) {
        const int kk = k - p0 < CHUNK ? (int)(k - p0) : CHUNK;
        int si, sq;
        convert_a(a, rs_a, cs_a, p0, kk, buf, &si, &sq);
        for (int q = 0; q < (kk + 1) / 2; q++, b += rs_b) {
            const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16);
            _mm_prefetch((const char *)(b + FC_B_PREFETCH_STEPS * rs_b), _MM_HINT_T0);
            #pragma GCC unroll 14
            for (int i = 0; i < MR; i++) {
                if (i >= rows) break;
                const __m512bh ai = (__m512bh)_mm512_set1_epi32((int)buf[i * si + q * sq]);
                acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
                acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
            }
        }
    }
    const __mmask16 mask0 = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
    const __mmask16 mask1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
    const __m512 alpha = _mm512_set1_ps(ep->alpha), beta = _mm512_set1_ps(ep->beta), zero = _mm512_setzero_ps();
    const __m512 bias0 = ep->bias ? _mm512_maskz_loadu_ps(mask0, ep->bias) : zero;
    const __m512 bias1 = ep->bias ? _mm512_maskz_loadu_ps(mask1, ep->bias + 16) : zero;
    #pragma GCC unroll 14
    for (int i = 0; i < MR; i++) {
        if (i >= rows || i >= m) break;
        float *row = c + i * ldc;
        __m512 v0 = _mm512_mul_ps(alpha, acc[i][0]), v1 = _mm512_mul_ps(alpha, acc[i][1]);
        if (ep->beta != 0.0f) {
            v0 = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask0, row), v0);
            v1 = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask1, row + 16), v1);
        }
        if (ep->bias) { v0 = _mm512_add_ps(v0, bias0); v1 = _mm512_add_ps(v1, bias1); }
        if (ep->relu) { v0 = _mm512_max_ps(zero, v0); v1 = _mm512_max_ps(zero, v1); }
        _mm512_mask_storeu_ps(row, mask0, v0);
        _mm512_mask_storeu_ps(row + 16, mask1, v1);
    }
}

static void ukr_avx512_bf16_14x32(int64_t k, const float *a, int64_t rs_a, int64_t cs_a, const float *a_next,
                                  const float *b, int64_t rs_b, float *c, int64_t ldc, int m, int n,
                                  const fc_tile_epilogue *ep)
{
    (void)a_next;
    fc_prefetch_tile(c, ldc, m, NR);
    const uint32_t *bw = (const uint32_t *)b;
    switch ((m + 1) / 2) {  /* a partial tile runs only its rows, rounded up to even (gemm.h) */
    case 1: tile(2, k, a, rs_a, cs_a, bw, rs_b, c, ldc, m, n, ep); break;
    case 2: tile(4, k, a, rs_a, cs_a, bw, rs_b, c, ldc, m, n, ep); break;
    case 3: tile(6, k, a, rs_a, cs_a, bw, rs_b, c, ldc, m, n, ep); break;
    case 4: tile(8, k, a, rs_a, cs_a, bw, rs_b, c, ldc, m, n, ep); break;
    case 5: tile(10, k, a, rs_a, cs_a, bw, rs_b, c, ldc, m, n, ep); break;
    case 6: tile(12, k, a, rs_a, cs_a, bw, rs_b, c, ldc, m, n, ep); break;
    default: tile(14, k, a, rs_a, cs_a, bw, rs_b, c, ldc, m, n, ep); break;
    }
}

/* The float32 AVX-512 kernel's blocking; B is never read in place (it must be converted). */
const fc_gemm_ukernel fc_gemm_avx512_bf16_14x32 = {
    .name = "avx512_bf16_14x32", .mr = MR, .nr = NR, .mc = 168, .kc = 384, .nc = 4096, .kc_large_l2 = 1024,
    .vector_bytes = 64,
    .ukr = ukr_avx512_bf16_14x32, .pack = fc_gemm_pack_avx512, .pack_b = fc_gemm_pack_bf16,
};
#elif defined(__x86_64__) || defined(_M_X64)
/* The compiler had no -mavx512bf16 (setup.py then builds this file without it): no kernel, and
 * dispatch.c runs the float32 kernels for bfloat16 calls, as on CPUs without AVX512_BF16. */
const fc_gemm_ukernel fc_gemm_avx512_bf16_14x32 = { .name = "avx512_bf16_14x32", .ukr = NULL };
#endif
