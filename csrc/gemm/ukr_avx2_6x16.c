/* AVX2+FMA micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators (compiled with -mavx2 -mfma).
 * Partial tiles use masked loads and stores, so edges cost no scalar code. */
#include "gemm.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

enum { MR = 6, NR = 16 };

/* acc += A panel @ B panel for the first `rows` rows. Row i of A is base[i / 3][(i % 3) * rs]: two
 * pointers and the broadcast's addressing mode, whatever the layout of A. */
static inline __attribute__((always_inline)) void tile_fma(int64_t k, const float *a, int64_t rs, int64_t cs,
                                                           const float *a_next, const float *b, int64_t rs_b,
                                                           int rows, __m256 acc[MR][2])
{
    const float *base[2] = { a, a + 3 * rs };
    #pragma GCC unroll 4
    for (int64_t p = 0; p < k; p++) {
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        _mm_prefetch((const char *)(b + FC_B_PREFETCH_STEPS * rs_b), _MM_HINT_T0);
        #pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            if (i >= rows) break;
            const __m256 ai = _mm256_broadcast_ss(&base[i / 3][(i % 3) * rs]);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
        if (a_next) {  /* row p % 8 of the next tile (the last row thrice), at the line this tile reads */
            const int64_t row = (p & 7) < MR ? (p & 7) : MR - 1;
            _mm_prefetch((const char *)(a_next + row * rs + (p & ~(int64_t)15)), _MM_HINT_T1);
        }
        base[0] += cs;
        base[1] += cs;
        b += rs_b;
    }
}

/* A row's columns of C: all 8, or those `mask` selects. AVX2's masked loads and stores are microcoded,
 * and slow, on some of the CPUs this kernel is for (AMD's Zen 1-3), so whole tiles use plain ones. */
static inline __m256 load_columns(const float *p, __m256i mask, int all)
{
    return all ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask);
}
static inline void store_columns(float *p, __m256i mask, int all, __m256 v)
{
    if (all)
        _mm256_storeu_ps(p, v);
    else
        _mm256_maskstore_ps(p, mask, v);
}

/* One tile of `rows` rows (a constant where this is inlined), of which the first m are written. */
static inline __attribute__((always_inline)) void tile(int rows, int64_t k, const float *a, int64_t rs_a,
                                                       int64_t cs_a, const float *a_next, const float *b,
                                                       int64_t rs_b, float *c, int64_t ldc, int m, int n,
                                                       const fc_tile_epilogue *ep)
{
    if (k < 1) __builtin_unreachable();  /* the contract (gemm.h): no path for k = 0 to keep zeros on the stack for */
    __m256 acc[MR][2];
    #pragma GCC unroll 6
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    tile_fma(k, a, rs_a, cs_a, a_next, b, rs_b, rows, acc);
    /* A whole tile of the plain product (alpha 1, no bias or ReLU: every K block of a plain GEMM) is
     * stored, or added to C, straight from the accumulators: parking them costs 24 more loads and
     * stores per tile, which shows at a short K. */
    if (m == rows && n == NR && fc_epilogue_is_plain(ep)) {
        const int add = ep->beta != 0.0f;
        #pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            if (i >= rows) break;
            float *row = c + i * ldc;
            _mm256_storeu_ps(row, add ? _mm256_add_ps(acc[i][0], _mm256_loadu_ps(row)) : acc[i][0]);
            _mm256_storeu_ps(row + 8, add ? _mm256_add_ps(acc[i][1], _mm256_loadu_ps(row + 8)) : acc[i][1]);
        }
        return;
    }
    /* The epilogue needs 7 more registers than the 16 ymm: park the tile in memory once here, or
     * the compiler keeps the accumulators there through the whole k loop. */
    float parked[MR][NR];
    #pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        if (i >= rows) break;
        _mm256_storeu_ps(parked[i], acc[i][0]);
        _mm256_storeu_ps(parked[i] + 8, acc[i][1]);
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
    const __m256i mask1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8), lane);
    const __m256 alpha = _mm256_set1_ps(ep->alpha), beta = _mm256_set1_ps(ep->beta), zero = _mm256_setzero_ps();
    const __m256 bias0 = ep->bias ? _mm256_maskload_ps(ep->bias, mask0) : zero;
    const __m256 bias1 = ep->bias ? _mm256_maskload_ps(ep->bias + 8, mask1) : zero;
    const int full = n >= NR;
    for (int i = 0; i < m; i++) {
        float *row = c + i * ldc;
        __m256 v0 = _mm256_mul_ps(alpha, _mm256_loadu_ps(parked[i])), v1 = _mm256_mul_ps(alpha, _mm256_loadu_ps(parked[i] + 8));
        if (ep->beta != 0.0f) {
            v0 = _mm256_fmadd_ps(beta, load_columns(row, mask0, full), v0);
            v1 = _mm256_fmadd_ps(beta, load_columns(row + 8, mask1, full), v1);
        }
        if (ep->bias) { v0 = _mm256_add_ps(v0, bias0); v1 = _mm256_add_ps(v1, bias1); }
        if (ep->relu) { v0 = _mm256_max_ps(zero, v0); v1 = _mm256_max_ps(zero, v1); }  /* max(0, NaN) = NaN */
        store_columns(row, mask0, full, v0);
        store_columns(row + 8, mask1, full, v1);
    }
}

static void ukr_avx2_6x16(int64_t k, const float *a, int64_t rs_a, int64_t cs_a, const float *a_next,
                          const float *b, int64_t rs_b, float *c, int64_t ldc, int m, int n, const fc_tile_epilogue *ep)
{
    fc_prefetch_tile(c, ldc, m, NR);
    /* A partial tile runs only its rows, rounded up to even (the row past m is readable). */
    switch ((m + 1) / 2) {
    case 1: tile(2, k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, ep); break;
    case 2: tile(4, k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, ep); break;
    default:  /* a constant NULL takes the prefetch out of the k loop */
        if (a_next)
            tile(6, k, a, rs_a, cs_a, a_next, b, rs_b, c, ldc, m, n, ep);
        else
            tile(6, k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, ep);
        break;
    }
}

/* B is read unpacked up to M = 256 only: its 16-float rows are one cache line each and crowd fewer L1
 * sets than packed. */
const fc_gemm_ukernel fc_gemm_avx2_6x16 = {
    .name = "avx2_6x16", .mr = MR, .nr = NR, .mc = 144, .kc = 384, .nc = 4080, .kc_large_l2 = 512,
    .b_block_in_l2 = 1,
    .b_in_place_max_m = 256, .b_in_place_max_m_misaligned = 48, .b_in_place_max_m_misaligned_few_panels = 256,
    .b_in_place_max_m_misaligned_shared = 256,
    .vector_bytes = 32,
    .ukr = ukr_avx2_6x16, .pack = fc_gemm_pack_avx2,
};
#endif
