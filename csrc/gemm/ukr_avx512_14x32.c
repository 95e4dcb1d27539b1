/* AVX-512F micro-kernel: a 14 x 32 tile of C in 28 zmm accumulators; A is broadcast straight from
 * memory, so two registers hold the B row and none is spilled (compiled with -mavx512f -mfma).
 * Tiles of at most 16 columns run a 14 x 16 loop (half the FMAs), and tiles of fewer rows run only
 * their rows: Dense layers with few outputs, conv output rows that are not a multiple of 14. */
#include "gemm.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

enum { MR = 14, NR = 32 };

/* acc (+)= A panel @ B panel for the first `rows` rows and `halves` 16-column halves of the tile. A row
 * i is read through one of five base pointers (rows 0, 3, 6, 9, 12) plus 0, rs or 2*rs, which the
 * compiler folds into the broadcast's addressing mode, so a row-major A costs no more registers than
 * a packed one. */
static inline __attribute__((always_inline)) void tile_fma(int64_t k, const float *a, int64_t rs, int64_t cs,
                                                           const float *a_next, const float *b, int64_t rs_b,
                                                           int rows, int halves, __m512 acc[MR][2])
{
    const float *base[5];
    for (int g = 0; g < 5; g++) base[g] = a + 3 * g * rs;
    for (int64_t p = 0; p < k; p++) {
        const __m512 b0 = _mm512_loadu_ps(b), b1 = halves == 2 ? _mm512_loadu_ps(b + 16) : b0;
        _mm_prefetch((const char *)(b + FC_B_PREFETCH_STEPS * rs_b), _MM_HINT_T0);
        if (halves == 2) _mm_prefetch((const char *)(b + FC_B_PREFETCH_STEPS * rs_b + 16), _MM_HINT_T0);
        #pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            if (i >= rows) break;
            const __m512 ai = _mm512_set1_ps(base[i / 3][(i % 3) * rs]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            if (halves == 2) acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
        }
        if (a_next) {  /* row p % 16 of the next tile (the last row twice), at the line this tile reads */
            const int64_t row = (p & 15) < MR ? (p & 15) : MR - 1;
            _mm_prefetch((const char *)(a_next + row * rs + (p & ~(int64_t)15)), _MM_HINT_T1);
        }
        for (int g = 0; g < 5; g++) base[g] += cs;
        b += rs_b;
    }
}

/* One tile of `rows` rows, of which the first m are written, `plain` or not (below): constants where
 * this is inlined, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void tile(int rows, int plain, int64_t k, const float *a,
                                                       int64_t rs_a, int64_t cs_a, const float *a_next, const float *b,
                                                       int64_t rs_b, float *c, int64_t ldc, int m, int n,
                                                       const fc_tile_epilogue *ep)
{
    if (k < 1) __builtin_unreachable();  /* the contract (gemm.h): no path for k = 0 to keep zeros on the stack for */
    __m512 acc[MR][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    if (n > 16)
        tile_fma(k, a, rs_a, cs_a, a_next, b, rs_b, rows, 2, acc);
    else
        tile_fma(k, a, rs_a, cs_a, a_next, b, rs_b, rows, 1, acc);
    /* Partial columns use masked loads/stores; partial rows are simply not written. */
    const __mmask16 mask0 = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
    const __mmask16 mask1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
    if (plain) {  /* alpha 1, beta 0 or 1, no bias or ReLU: stored, or added to C, from the registers */
        const int add = ep->beta != 0.0f;
        #pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            if (i >= rows || i >= m) break;
            float *row = c + i * ldc;
            __m512 v0 = acc[i][0], v1 = acc[i][1];
            if (add) {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask0, row));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask1, row + 16));
            }
            _mm512_mask_storeu_ps(row, mask0, v0);
            _mm512_mask_storeu_ps(row + 16, mask1, v1);
        }
        return;
    }
    const __m512 alpha = _mm512_set1_ps(ep->alpha), beta = _mm512_set1_ps(ep->beta), zero = _mm512_setzero_ps();
    const __m512 bias0 = ep->bias ? _mm512_maskz_loadu_ps(mask0, ep->bias) : zero;
    const __m512 bias1 = ep->bias ? _mm512_maskz_loadu_ps(mask1, ep->bias + 16) : zero;
    /* A constant trip count keeps the accumulators in registers (a loop to m would index them). */
    #pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        if (i >= rows || i >= m) break;
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

static void ukr_avx512_14x32(int64_t k, const float *a, int64_t rs_a, int64_t cs_a, const float *a_next,
                             const float *b, int64_t rs_b, float *c, int64_t ldc, int m, int n, const fc_tile_epilogue *ep)
{
    fc_prefetch_tile(c, ldc, m, NR);
    /* A whole-height tile of the plain product (every K block of a plain GEMM, all but the last of a
     * conv's kernel rows) has its own copy of the loop, whose write-back needs no more registers than
     * the 28 accumulators: the general one needs five more, so the compiler parks the tile on the
     * stack for it. */
    const int plain = fc_epilogue_is_plain(ep);
    /* A partial tile runs only its rows, rounded up to even (the row past m is readable, by the
     * contract): a conv's 24-pixel output rows are tiles of 14 and 10 rows, and the 10-row tile
     * takes 10/14 of a full tile's time. */
    switch ((m + 1) / 2) {
    case 1: tile(2, 0, k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, ep); break;
    case 2: tile(4, 0, k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, ep); break;
    case 3: tile(6, 0, k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, ep); break;
    case 4: tile(8, 0, k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, ep); break;
    case 5: tile(10, 0, k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, ep); break;
    case 6: tile(12, 0, k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, ep); break;
    default:  /* a constant NULL takes the prefetch out of the k loop, where its code slows the other tiles */
        if (a_next)
            tile(14, 0, k, a, rs_a, cs_a, a_next, b, rs_b, c, ldc, m, n, ep);
        else if (plain)
            tile(14, 1, k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, ep);
        else
            tile(14, 0, k, a, rs_a, cs_a, NULL, b, rs_b, c, ldc, m, n, ep);
        break;
    }
}

const fc_gemm_ukernel fc_gemm_avx512_14x32 = {
    .name = "avx512_14x32", .mr = MR, .nr = NR, .mc = 168, .kc = 384, .nc = 4096, .kc_large_l2 = 1024,
    .b_in_place_max_m = 1024, .b_in_place_max_m_misaligned = 56, .b_in_place_max_m_misaligned_few_panels = 256,
    .b_in_place_max_m_misaligned_shared = 320,
    .nr_narrow = 16,
    .vector_bytes = 64,
    .ukr = ukr_avx512_14x32, .pack = fc_gemm_pack_avx512,
};
#endif
