/* Packing of GEMM operand blocks (BLIS's packm kernels), compiled once per instruction set like the
 * micro-kernels (setup.py): each kernel's table entry names its own set's copy (gemm.h).
 *
 * A block's rows are cut into panels of `width` rows (A panels have width MR, B panels NR), each stored
 * as k groups of `width` floats, rows past the block's last zero. A source with rs == 1 (a column-major
 * A, the rows of a row-major B) is a copy of contiguous runs, one vector load and store per 16 (or 8)
 * floats. One with cs == 1 (B^T, a row-major A) is a transpose: AVX-512 and AVX2 transpose squares of
 * 16 or 8 floats in registers, partial ones (an MR of 14 or 6 rows, a panel's last rows) with masked
 * stores, and every set has a scalar copy for the k steps short of a square and for other strides. */
#include "gemm.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define PACK fc_gemm_pack_avx512
#define SQUARE 16  /* the side of the squares transposed in registers */
#elif defined(__AVX2__)
#define PACK fc_gemm_pack_avx2
#define SQUARE 8
#else
#define PACK fc_gemm_pack_generic
#define SQUARE 0   /* no register transpose */
#endif

enum {
    CHUNK = 16,            /* elements of a row the scalar transpose reads at once: a cache line */
    MAX_PANEL_WIDTH = 32,  /* the widest register tile side (MR or NR) of any kernel */
    PREFETCH_AHEAD = 64,   /* how far along a row (in floats) a transpose prefetches */
    PREFETCH_STEPS = 4,    /* how many k steps ahead a copy of contiguous runs prefetches */
    LINE_FLOATS = 16,      /* floats in a 64-byte cache line */
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* dst[q * width + i] = src[i * rs + q * cs] for rows [r0, r1) and k steps [q0, q1), CHUNK elements of
 * each row at a time: a row's chunk (one cache line when cs == 1) is read once into a small tile, then
 * written out by column. Rows are fetched side by side, with a prefetch ahead, so their lines arrive in
 * parallel; and rows a multiple of 4 KiB apart, which share one L1 set, are not read again element by
 * element after evicting each other. */
static void transpose_scalar(const float *src, int64_t rs, int64_t cs, int r0, int r1, int64_t q0, int64_t q1,
                             int width, float *dst)
{
    for (int64_t c0 = q0; c0 < q1; c0 += CHUNK) {
        const int len = (int)min64(CHUNK, q1 - c0);
        float tile[MAX_PANEL_WIDTH][CHUNK];
        for (int i = r0; i < r1; i++) {
            const float *s = src + i * rs + c0 * cs;
            __builtin_prefetch(s + PREFETCH_AHEAD * cs);
            for (int t = 0; t < len; t++) tile[i - r0][t] = s[t * cs];
        }
        for (int t = 0; t < len; t++) {
            float *d = dst + (c0 + t) * width;
            for (int i = r0; i < r1; i++) d[i] = tile[i - r0][t];
        }
    }
}

#if SQUARE == 16
/* The mask of a vector's first n lanes, 0 <= n <= 16. */
static inline __mmask16 first_lanes(int n) { return (__mmask16)((1u << n) - 1); }

/* d[0, lanes) = v[0, lanes): a masked store only when it must be (masked stores are slow on some CPUs). */
static inline void store_lanes(float *d, __m512 v, int lanes)
{
    if (lanes == 16)
        _mm512_storeu_ps(d, v);
    else
        _mm512_mask_storeu_ps(d, first_lanes(lanes), v);
}

/* dst[t * width + i] = src[i * rs + t] for a 16 x 16 square of which the first `rows` rows exist (the
 * others read as zeros), writing the first `lanes` floats of each of dst's groups (an MR of 14): pairs, then quads
 * of rows are interleaved within 128-bit lanes, then the lanes are gathered across registers (64
 * shuffles in all). */
static void transpose_square(const float *src, int64_t rs, int rows, float *dst, int width, int lanes)
{
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) {
        if (i >= rows) {
            r[i] = _mm512_setzero_ps();
            continue;
        }
        r[i] = _mm512_loadu_ps(src + i * rs);
        _mm_prefetch((const char *)(src + i * rs + PREFETCH_AHEAD), _MM_HINT_T0);
    }
    for (int j = 0; j < 8; j++) {  /* t[2j] lane L = r2j[4L], r2j+1[4L], r2j[4L+1], r2j+1[4L+1]; t[2j+1]: +2 */
        t[2 * j] = _mm512_unpacklo_ps(r[2 * j], r[2 * j + 1]);
        t[2 * j + 1] = _mm512_unpackhi_ps(r[2 * j], r[2 * j + 1]);
    }
    for (int j = 0; j < 4; j++) {  /* r[4j+m] lane L = rows 4j..4j+3 of column 4L+m */
        const __m512d a = _mm512_castps_pd(t[4 * j]), b = _mm512_castps_pd(t[4 * j + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * j + 2]), d = _mm512_castps_pd(t[4 * j + 3]);
        r[4 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int m = 0; m < 4; m++) {  /* column 4L+m = lane L of r[m], r[4+m], r[8+m], r[12+m] */
        const __m512 low01 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x44), high01 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xEE);
        const __m512 low23 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x44);
        const __m512 high23 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xEE);
        store_lanes(dst + m * width, _mm512_shuffle_f32x4(low01, low23, 0x88), lanes);
        store_lanes(dst + (4 + m) * width, _mm512_shuffle_f32x4(low01, low23, 0xDD), lanes);
        store_lanes(dst + (8 + m) * width, _mm512_shuffle_f32x4(high01, high23, 0x88), lanes);
        store_lanes(dst + (12 + m) * width, _mm512_shuffle_f32x4(high01, high23, 0xDD), lanes);
    }
}
#elif SQUARE == 8
/* The mask of a vector's first n lanes (all ones in each), 0 <= n <= 8. */
static inline __m256i first_lanes(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* d[0, lanes) = v[0, lanes): a masked store only when it must be (AVX2's are microcoded on some CPUs). */
static inline void store_lanes(float *d, __m256 v, int lanes)
{
    if (lanes == 8)
        _mm256_storeu_ps(d, v);
    else
        _mm256_maskstore_ps(d, first_lanes(lanes), v);
}

/* dst[t * width + i] = src[i * rs + t] for an 8 x 8 square of which the first `rows` rows exist (the
 * others read as zeros), writing the first `lanes` floats of each of dst's groups (an MR of 6): pairs, then quads
 * of rows are interleaved within 128-bit lanes, then the two lanes are exchanged (24 shuffles in all). */
static void transpose_square(const float *src, int64_t rs, int rows, float *dst, int width, int lanes)
{
    __m256 r[8], t[8];
    for (int i = 0; i < 8; i++) {
        if (i >= rows) {
            r[i] = _mm256_setzero_ps();
            continue;
        }
        r[i] = _mm256_loadu_ps(src + i * rs);
        _mm_prefetch((const char *)(src + i * rs + PREFETCH_AHEAD), _MM_HINT_T0);
    }
    for (int j = 0; j < 4; j++) {
        t[2 * j] = _mm256_unpacklo_ps(r[2 * j], r[2 * j + 1]);
        t[2 * j + 1] = _mm256_unpackhi_ps(r[2 * j], r[2 * j + 1]);
    }
    for (int j = 0; j < 2; j++) {  /* r[4j+m] lane L = rows 4j..4j+3 of column 4L+m */
        const __m256d a = _mm256_castps_pd(t[4 * j]), b = _mm256_castps_pd(t[4 * j + 1]);
        const __m256d c = _mm256_castps_pd(t[4 * j + 2]), d = _mm256_castps_pd(t[4 * j + 3]);
        r[4 * j] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, c));
        r[4 * j + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, c));
        r[4 * j + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(b, d));
        r[4 * j + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(b, d));
    }
    for (int m = 0; m < 4; m++) {
        store_lanes(dst + m * width, _mm256_permute2f128_ps(r[m], r[4 + m], 0x20), lanes);
        store_lanes(dst + (4 + m) * width, _mm256_permute2f128_ps(r[m], r[4 + m], 0x31), lanes);
    }
}
#endif

/* d[0, n) = s[0, n) and d[n, width) = 0, for 0 <= n <= width: masked vector loads read no float past n
 * (so nothing past the source's end), masked stores write no float past width. On AVX-512 every vector
 * goes through the masks, which was the faster; AVX2 takes plain ones for whole vectors (its masked
 * stores are microcoded on some CPUs). */
static inline void copy_run(const float *s, int n, int width, float *d)
{
#if SQUARE == 16
    for (int j = 0; j < width; j += 16) {
        const int len = n - j < 0 ? 0 : n - j > 16 ? 16 : n - j, room = width - j > 16 ? 16 : width - j;
        const __m512 v = _mm512_maskz_loadu_ps(first_lanes(len), s + j);
        _mm512_mask_storeu_ps(d + j, first_lanes(room), v);
    }
#elif SQUARE == 8
    for (int j = 0; j < width; j += 8) {
        const int len = n - j < 0 ? 0 : n - j > 8 ? 8 : n - j, room = width - j > 8 ? 8 : width - j;
        const __m256 v = len == 8 ? _mm256_loadu_ps(s + j) : _mm256_maskload_ps(s + j, first_lanes(len));
        store_lanes(d + j, v, room);
    }
#else
    for (int i = 0; i < n; i++) d[i] = s[i];
    for (int i = n; i < width; i++) d[i] = 0.0f;
#endif
}

#if SQUARE
/* Panels narrower than a vector but wider than half of one (an MR of 14 in 16 lanes, 6 in 8) are
 * written a group of k steps at a time, in whole vectors: a run of 14 floats stored on its own
 * straddles two cache lines 7 times in 8. The group's runs, laid end to end, fill a whole number of
 * vectors (8 runs of 14 floats, 7 vectors of 16), and vector o takes its lanes from run first_run[o]
 * and the next, lane t from lane index[o][t] of the one `second` picks. */
typedef struct {
    int runs_per_group, vectors_per_group;
    int first_run[SQUARE];
#if SQUARE == 16
    __m512i index[SQUARE];  /* with bit 4 set for the second run, as vpermt2ps reads it */
#else
    __m256i index[SQUARE], second[SQUARE];  /* second: all ones in the lanes the second run fills */
#endif
} run_groups;

static int gcd(int a, int b) { return b == 0 ? a : gcd(b, a % b); }

/* Fills g for runs of `width` floats, SQUARE / 2 < width < SQUARE. */
static void plan_run_groups(int width, run_groups *g)
{
    const int floats = width / gcd(width, SQUARE) * SQUARE;  /* the least common multiple */
    g->runs_per_group = floats / width;
    g->vectors_per_group = floats / SQUARE;
    for (int o = 0; o < g->vectors_per_group; o++) {
        int index[SQUARE], second[SQUARE];
        g->first_run[o] = SQUARE * o / width;
        for (int t = 0; t < SQUARE; t++) {
            const int e = SQUARE * o + t;
            second[t] = e / width != g->first_run[o];
            index[t] = e % width;
        }
#if SQUARE == 16
        for (int t = 0; t < SQUARE; t++) index[t] += 16 * second[t];
        g->index[o] = _mm512_loadu_si512(index);
#else
        for (int t = 0; t < SQUARE; t++) second[t] = -second[t];
        g->index[o] = _mm256_loadu_si256((const __m256i *)index);
        g->second[o] = _mm256_loadu_si256((const __m256i *)second);
#endif
    }
}

/* One group of k steps of one panel: dst[r * width + i] = run[r * cs + i] for i < n, and 0 for n <= i
 * < width, the width g was planned for. */
static void pack_run_group(const float *run, int64_t cs, int n, const run_groups *g, float *dst)
{
#if SQUARE == 16
    __m512 v[SQUARE];
    const __mmask16 valid = first_lanes(n);
    for (int r = 0; r < g->runs_per_group; r++) v[r] = _mm512_maskz_loadu_ps(valid, run + r * cs);
    for (int o = 0; o < g->vectors_per_group; o++)
        _mm512_storeu_ps(dst + SQUARE * o, _mm512_permutex2var_ps(v[g->first_run[o]], g->index[o], v[g->first_run[o] + 1]));
#else
    __m256 v[SQUARE];
    const __m256i valid = first_lanes(n);
    for (int r = 0; r < g->runs_per_group; r++) v[r] = _mm256_maskload_ps(run + r * cs, valid);
    for (int o = 0; o < g->vectors_per_group; o++) {
        const __m256 a = _mm256_permutevar8x32_ps(v[g->first_run[o]], g->index[o]);
        const __m256 b = _mm256_permutevar8x32_ps(v[g->first_run[o] + 1], g->index[o]);
        _mm256_storeu_ps(dst + SQUARE * o, _mm256_blendv_ps(a, b, _mm256_castsi256_ps(g->second[o])));
    }
#endif
}
#endif

/* Rows [first, rows) of a block whose runs src + q * cs are contiguous, one k step across all the panels
 * at a time (one sequential read per step), while the step PREFETCH_STEPS ahead is fetched: no hardware
 * prefetcher follows a stride of cs, and panel by panel each run was read in short pieces. Narrow
 * panels go a group of k steps at a time (above), each panel fetching its runs of the next group. */
static void pack_runs(const float *src, int64_t cs, int64_t first, int64_t rows, int64_t k, int width,
                      int64_t panel_stride, float *dst)
{
    dst += first / width * panel_stride;
    int64_t q = 0;
#if SQUARE
    if (width < SQUARE && 2 * width > SQUARE) {
        run_groups g;
        plan_run_groups(width, &g);
        const int64_t step = g.runs_per_group;
        for (; q + step <= k; q += step) {
            float *d = dst + q * width;
            const int64_t ahead = q + step + step <= k ? step * cs : 0;  /* the next group's runs */
            for (int64_t i = first; i < rows; i += width, d += panel_stride) {
                for (int r = 0; r < step; r++) __builtin_prefetch(src + ahead + (q + r) * cs + i);
                pack_run_group(src + q * cs + i, cs, (int)min64(width, rows - i), &g, d);
            }
        }
    }
#endif
    for (; q < k; q++) {
        const float *run = src + q * cs;
        for (int64_t i = first; i < rows + LINE_FLOATS; i += LINE_FLOATS)
            __builtin_prefetch(run + PREFETCH_STEPS * cs + i);
        float *d = dst + q * width;
        for (int64_t i = first; i < rows; i += width, d += panel_stride)
            copy_run(run + i, (int)min64(width, rows - i), width, d);
    }
}

/* One panel of `rows` <= width rows, element (i, q) at src[i * rs + q * cs] with rs != 1. */
static void pack_transposed(const float *src, int64_t rs, int64_t cs, int rows, int64_t k, int width, float *dst)
{
    int64_t square_k = 0;  /* k steps [0, square_k) are transposed in registers */
#if SQUARE
    if (cs == 1) {
        square_k = k / SQUARE * SQUARE;
        for (int64_t q0 = 0; q0 < square_k; q0 += SQUARE)  /* whole groups of dst written together */
            for (int r0 = 0; r0 < rows; r0 += SQUARE)
                transpose_square(src + r0 * rs + q0, rs, rows - r0, dst + q0 * width + r0, width,
                                 width - r0 < SQUARE ? width - r0 : SQUARE);
    }
#endif
    transpose_scalar(src, rs, cs, 0, rows, square_k, k, width, dst);
    if (rows < width) {
        for (int64_t q = 0; q < k; q++)
            for (int i = rows; i < width; i++) dst[q * width + i] = 0.0f;
    }
}

void PACK(const float *src, int64_t rs, int64_t cs, int64_t first, int64_t rows, int64_t k, int width,
          int64_t panel_stride, float *dst)
{
    if (first >= rows) return;
    if (rs == 1) {
        pack_runs(src, cs, first, rows, k, width, panel_stride, dst);
        return;
    }
    dst += first / width * panel_stride;
    for (int64_t i = first; i < rows; i += width, dst += panel_stride)
        pack_transposed(src + i * rs, rs, cs, (int)min64(width, rows - i), k, width, dst);
}
