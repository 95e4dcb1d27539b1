/* Winograd F(2x2, 3x3) convolution (see winograd.h).
 *
 * Per call: the kernel is transformed (U[xi] = G g G^T, 16 matrices of cin x cout) and each U[xi]
 * packed as the B of the GEMMs. Then the tiles (counted over n * tiles_h * tiles_w, 2x2 output pixels
 * each) are cut into blocks of a fixed size; a thread takes a block and
 *   1. transforms its input tiles into V[xi] (block x cin), zeros where a tile hangs over the padding,
 *   2. runs the 16 GEMMs M[xi] = V[xi] @ U[xi] (block x cout) in its own scratch,
 *   3. transforms M back into 2x2 output tiles, adds the bias, applies ReLU and the input-gradient mask,
 *      and stores the pixels that exist (a partial tile at the right or bottom edge drops the rest).
 * V and M of a block stay in the thread's L2 between the steps. */
#include <string.h>

#include "winograd.h"
#include "../dispatch.h"
#include "../workspace.h"

enum {
    TILE = 2,                      /* output pixels per tile side: F(2x2, 3x3) */
    POINTS = 16,                   /* transform points per tile: a 4x4 input tile */
    BLOCK_FLOATS = 65536,          /* V + M of a block: 256 KiB, a quarter of a 1 MiB L2 */
    MIN_BLOCK_TILES = 96,          /* fewer rows per GEMM and each packed U[xi] is read for too little work */
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

int fc_winograd_applies(const fc_conv_shape *s)
{
    return s->kh == 3 && s->kw == 3 && s->stride_h == 1 && s->stride_w == 1 && s->dilation_h == 1 &&
           s->dilation_w == 1 && s->pad_top >= 0 && s->pad_top <= 2 && s->pad_left >= 0 && s->pad_left <= 2 &&
           s->oh >= 1 && s->ow >= 1;
}

/* ---- the per-tile transforms, one source for every vector type (T: float, or a vector of floats) ---- */

/* V = B^T d B over channels [c, c + lanes): d is the 4x4 input tile (p[i * 4 + j] points at pixel
 * (i, j)'s channels), V[i * 4 + j] goes to v + (i * 4 + j) * vs + c.
 *     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] */
#define DEFINE_INPUT_TILE(NAME, T)                                                                    \
    static inline __attribute__((always_inline)) void NAME(const float *const *p, int64_t c, float *v,  \
                                                            int64_t vs)                               \
    {                                                                                                 \
        T d[16], t[16];                                                                               \
        for (int k = 0; k < 16; k++) memcpy(&d[k], p[k] + c, sizeof(T));                              \
        for (int j = 0; j < 4; j++) {                                                                 \
            t[0 + j] = d[0 + j] - d[8 + j];                                                           \
            t[4 + j] = d[4 + j] + d[8 + j];                                                           \
            t[8 + j] = d[8 + j] - d[4 + j];                                                           \
            t[12 + j] = d[4 + j] - d[12 + j];                                                         \
        }                                                                                             \
        for (int i = 0; i < 4; i++) {                                                                 \
            const T r[4] = { t[4 * i] - t[4 * i + 2], t[4 * i + 1] + t[4 * i + 2],                   \
                             t[4 * i + 2] - t[4 * i + 1], t[4 * i + 1] - t[4 * i + 3] };              \
            for (int j = 0; j < 4; j++) memcpy(v + (4 * i + j) * vs + c, &r[j], sizeof(T));          \
        }                                                                                             \
    }

/* The 2x2 output tile Y = A^T M A over channels [c, c + lanes), M[k] at m + k * ms + c;
 *     A^T = [1 1 1 0; 0 1 -1 -1]
 * out[k] (NULL where the pixel lies outside y) receives Y[k] + bias, after ReLU if asked, zeroed where
 * mask[k] <= 0 if mask is not NULL. */
#define DEFINE_OUTPUT_TILE(NAME, T, RELU, MASK)                                                       \
    static inline __attribute__((always_inline)) void NAME(const float *m, int64_t ms, int64_t c,       \
                                                            const float *bias, int relu,              \
                                                            float *const *out, const float *const *mask) \
    {                                                                                                 \
        T a[16], s[8];                                                                                \
        for (int k = 0; k < 16; k++) memcpy(&a[k], m + k * ms + c, sizeof(T));                        \
        for (int j = 0; j < 4; j++) {                                                                 \
            s[j] = a[j] + a[4 + j] + a[8 + j];                                                        \
            s[4 + j] = a[4 + j] - a[8 + j] - a[12 + j];                                               \
        }                                                                                             \
        T y[4] = { s[0] + s[1] + s[2], s[1] - s[2] - s[3], s[4] + s[5] + s[6], s[5] - s[6] - s[7] };   \
        T b;                                                                                          \
        if (bias) {                                                                                   \
            memcpy(&b, bias + c, sizeof(T));                                                          \
            for (int k = 0; k < 4; k++) y[k] += b;                                                    \
        }                                                                                             \
        for (int k = 0; k < 4; k++) {                                                                 \
            if (!out[k]) continue;                                                                    \
            T r = y[k];                                                                               \
            if (relu) r = RELU(r);                                                                    \
            if (mask) {                                                                               \
                T keep;                                                                               \
                memcpy(&keep, mask[k] + c, sizeof(T));                                                \
                r = MASK(r, keep);                                                                    \
            }                                                                                         \
            memcpy(out[k] + c, &r, sizeof(T));                                                        \
        }                                                                                             \
    }

typedef float vec8 __attribute__((vector_size(32)));
typedef int32_t ivec8 __attribute__((vector_size(32)));

/* max(r, 0) with NaN kept (as np.maximum), and r where x > 0 else 0 (the ReLU gradient's rule). */
static inline float relu_s(float r) { return r < 0.0f ? 0.0f : r; }
static inline float mask_s(float r, float x) { return x > 0.0f ? r : 0.0f; }
#define RELU_V8(r) ((vec8)((ivec8)(r) & ~((r) < (vec8){ 0 })))
#define MASK_V8(r, x) ((vec8)((ivec8)(r) & ((x) > (vec8){ 0 })))

DEFINE_INPUT_TILE(input_tile_s, float)
DEFINE_INPUT_TILE(input_tile_v8, vec8)
DEFINE_OUTPUT_TILE(output_tile_s, float, relu_s, mask_s)
DEFINE_OUTPUT_TILE(output_tile_v8, vec8, RELU_V8, MASK_V8)

/* ---- a block's transforms ---- */

typedef struct {
    int64_t tiles_h, tiles_w;
} tiling;

/* Tiles [t0, t0 + count) into V (point xi's rows at v + xi * vs, row stride cin). zero: cin zeros. */
#define DEFINE_INPUT_BLOCK(NAME, ATTR, VTILE, LANES)                                                  \
    ATTR static void NAME(const fc_conv_shape *s, const tiling *tl, const float *x, const float *zero,   \
                          int64_t t0, int64_t count, float *v, int64_t vs)                            \
    {                                                                                                 \
        const int64_t cin = s->cin, per_image = tl->tiles_h * tl->tiles_w;                            \
        for (int64_t t = t0; t < t0 + count; t++) {                                                   \
            const int64_t img = t / per_image, ty = t / tl->tiles_w % tl->tiles_h, tx = t % tl->tiles_w; \
            const float *p[16];                                                                       \
            for (int i = 0; i < 4; i++) {                                                             \
                const int64_t iy = ty * TILE - s->pad_top + i;                                        \
                for (int j = 0; j < 4; j++) {                                                         \
                    const int64_t ix = tx * TILE - s->pad_left + j;                                   \
                    p[4 * i + j] = iy < 0 || iy >= s->h || ix < 0 || ix >= s->w                       \
                                       ? zero : x + ((img * s->h + iy) * s->w + ix) * cin;            \
                }                                                                                     \
            }                                                                                         \
            float *row = v + (t - t0) * cin;                                                          \
            int64_t c = 0;                                                                            \
            for (; c + LANES <= cin; c += LANES) VTILE(p, c, row, vs);                                \
            for (; c < cin; c++) input_tile_s(p, c, row, vs);                                         \
        }                                                                                             \
    }

/* M of tiles [t0, t0 + count) (point xi's rows at m + xi * ms, row stride cout) into y. */
#define DEFINE_OUTPUT_BLOCK(NAME, ATTR, VTILE, LANES)                                                 \
    ATTR static void NAME(const fc_conv_shape *s, const tiling *tl, const float *m, int64_t ms,         \
                          int64_t t0, int64_t count, const float *bias, int relu, const float *mask_by, \
                          float *y)                                                                   \
    {                                                                                                 \
        const int64_t cout = s->cout, per_image = tl->tiles_h * tl->tiles_w;                          \
        for (int64_t t = t0; t < t0 + count; t++) {                                                   \
            const int64_t img = t / per_image, ty = t / tl->tiles_w % tl->tiles_h, tx = t % tl->tiles_w; \
            float *out[4];                                                                            \
            const float *mask[4];                                                                     \
            for (int k = 0; k < 4; k++) {                                                             \
                const int64_t oy = ty * TILE + k / 2, ox = tx * TILE + k % 2;                         \
                const int64_t at = ((img * s->oh + oy) * s->ow + ox) * cout;                          \
                const int inside = oy < s->oh && ox < s->ow;                                          \
                out[k] = inside ? y + at : NULL;                                                      \
                mask[k] = inside && mask_by ? mask_by + at : NULL;                                    \
            }                                                                                         \
            const float *row = m + (t - t0) * cout;                                                   \
            const float *const *mk = mask_by ? mask : NULL;                                           \
            int64_t c = 0;                                                                            \
            for (; c + LANES <= cout; c += LANES) VTILE(row, ms, c, bias, relu, out, mk);             \
            for (; c < cout; c++) output_tile_s(row, ms, c, bias, relu, out, mk);                     \
        }                                                                                             \
    }

/* A masked-out pixel's mask pointer is never read (out[k] is NULL there too). */

DEFINE_INPUT_BLOCK(input_block_generic, , input_tile_s, 1)
DEFINE_OUTPUT_BLOCK(output_block_generic, , output_tile_s, 1)
#if defined(__x86_64__) || defined(_M_X64)
DEFINE_INPUT_BLOCK(input_block_avx2, __attribute__((target("avx2,fma"))), input_tile_v8, 8)
DEFINE_OUTPUT_BLOCK(output_block_avx2, __attribute__((target("avx2,fma"))), output_tile_v8, 8)
#endif

typedef struct {
    void (*input)(const fc_conv_shape *s, const tiling *tl, const float *x, const float *zero, int64_t t0,
                  int64_t count, float *v, int64_t vs);
    void (*output)(const fc_conv_shape *s, const tiling *tl, const float *m, int64_t ms, int64_t t0, int64_t count,
                   const float *bias, int relu, const float *mask_by, float *y);
} transforms;

/* The transforms for the call's instruction set: the AVX2 ones wherever the GEMM kernel has vectors
 * of 8 floats or more (AVX2, AVX-512), so forcing an instruction set forces them too. */
static transforms active_transforms(const fc_gemm_kernel *kr)
{
#if defined(__x86_64__) || defined(_M_X64)
    if (kr->vector_bytes >= 32) return (transforms){ input_block_avx2, output_block_avx2 };
#endif
    (void)kr;
    return (transforms){ input_block_generic, output_block_generic };
}

/* U[xi] = G g G^T for every channel pair: u + xi * cin * cout, row-major cin x cout.
 *     G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
 * flipped: g(r, c, k, n) = w[2 - r][2 - c][n][k] of a (3, 3, cout, cin) kernel (winograd.h). */
static void transform_kernel(const fc_conv_shape *s, const float *w, int flipped, float *u)
{
    const int64_t kk = s->cin, nn = s->cout, tap = kk * nn;
    const int64_t ks = flipped ? 1 : nn, ns = flipped ? kk : 1;
    for (int64_t k = 0; k < kk; k++) {
        for (int64_t n = 0; n < nn; n++) {
            float g[9], t[12];
            for (int r = 0; r < 3; r++)
                for (int c = 0; c < 3; c++)
                    g[3 * r + c] = w[(flipped ? (2 - r) * 3 + (2 - c) : r * 3 + c) * tap + k * ks + n * ns];
            for (int c = 0; c < 3; c++) {
                t[c] = g[c];
                t[3 + c] = 0.5f * (g[c] + g[3 + c] + g[6 + c]);
                t[6 + c] = 0.5f * (g[c] - g[3 + c] + g[6 + c]);
                t[9 + c] = g[6 + c];
            }
            for (int i = 0; i < 4; i++) {
                const float *ti = t + 3 * i;
                const float r[4] = { ti[0], 0.5f * (ti[0] + ti[1] + ti[2]), 0.5f * (ti[0] - ti[1] + ti[2]), ti[2] };
                for (int j = 0; j < 4; j++) u[(4 * i + j) * tap + k * nn + n] = r[j];
            }
        }
    }
}

/* ---- the call's layout ---- */

typedef struct {
    tiling tl;
    int64_t tiles, block, rows, blocks;  /* rows: the block's tiles rounded up to the GEMM's MR */
    int64_t packed;                      /* floats of one packed U[xi]; 0: the GEMMs read U in place */
    int64_t shared, v, m, gemm, per_thread, kernel;
    int threads;
} layout;

/* Tiles per block: V and M in about BLOCK_FLOATS, at least MIN_BLOCK_TILES, in whole register tiles,
 * at most all the tiles. A function of the shape (and the GEMM's MR) only: the thread count cannot
 * change which tiles share a GEMM. */
static int64_t block_tiles(const fc_conv_shape *s, int64_t mr, int64_t tiles)
{
    int64_t b = max64(MIN_BLOCK_TILES, BLOCK_FLOATS / (POINTS * (s->cin + s->cout)));
    b = (b + mr - 1) / mr * mr;
    return min64(b, tiles);
}

static fc_gemm_problem point_gemm(const fc_conv_shape *s, int64_t rows)
{
    const fc_gemm_problem g = {
        .n = s->cout, .k = s->cin, .a_rs = s->cin, .a_cs = 1, .b_rs = s->cout, .b_cs = 1, .ldc = s->cout,
        .alpha = 1.0f, .beta = 0.0f, .m = rows,
    };
    (void)rows;
    return g;
}

static const float packed_placeholder[1];

static layout make_layout(const fc_conv_shape *s, const fc_gemm_kernel *kr)
{
    layout l = { 0 };
    l.tl.tiles_h = (s->oh + TILE - 1) / TILE;
    l.tl.tiles_w = (s->ow + TILE - 1) / TILE;
    l.tiles = s->n * l.tl.tiles_h * l.tl.tiles_w;
    l.block = block_tiles(s, kr->mr, l.tiles);
    l.rows = (l.block + kr->mr - 1) / kr->mr * kr->mr;
    l.blocks = (l.tiles + l.block - 1) / l.block;
    fc_gemm_problem g = point_gemm(s, l.block);
    l.packed = fc_gemm_packed_b_floats(kr, &g);
    l.shared = fc_lines(POINTS * l.packed) + fc_lines(s->cin);  /* the packed U, then a row of zeros */
    l.v = fc_lines(POINTS * l.rows * s->cin);
    l.m = fc_lines(POINTS * l.rows * s->cout);
    /* the GEMMs' own scratch, for a full block and the last; an unpacked U (any alignment) is read as
     * the misaligned B that needs the most (as conv.c's gemm_floats_bound) */
    static const float misaligned[2] __attribute__((aligned(64)));
    if (l.packed) g.b_packed = packed_placeholder;
    else g.b = misaligned + 1;
    const int64_t full = fc_gemm_workspace_floats(kr, &g, 1);
    g.m = l.tiles - (l.blocks - 1) * l.block;
    l.gemm = fc_lines(max64(full, fc_gemm_workspace_floats(kr, &g, 1)));
    l.per_thread = l.v + l.m + l.gemm;
    l.kernel = POINTS * s->cin * s->cout;
    l.threads = fc_threads_for_work(2.0 * s->n * s->oh * s->ow * 9 * s->cin * s->cout);
    if (l.threads > l.blocks) l.threads = (int)l.blocks;
    return l;
}

void fc_winograd_workspace(const fc_conv_shape *s, int64_t *call, int64_t *kernel)
{
    const layout l = make_layout(s, fc_active_gemm_kernel());
    *call = l.shared + l.threads * l.per_thread;
    *kernel = l.kernel;
}

int fc_winograd_forward(const fc_conv_shape *s, const float *x, const float *w, int flipped, const float *bias,
                        int relu, const float *mask_by, float *y)
{
    const fc_gemm_kernel *kr = fc_active_gemm_kernel();
    const transforms tf = active_transforms(kr);
    const layout l = make_layout(s, kr);
    float *u = fc_scratch(FC_SCRATCH_KERNEL, l.kernel);
    if (!u) return FC_ERROR_NO_MEMORY;
    float *ws = fc_scratch(FC_SCRATCH_CALL, l.shared + l.threads * l.per_thread);
    if (!ws) return FC_ERROR_NO_MEMORY;
    transform_kernel(s, w, flipped, u);
    float *zero = ws + fc_lines(POINTS * l.packed);
    memset(zero, 0, sizeof(float) * (size_t)s->cin);
    const int64_t tap = s->cin * s->cout;
    if (l.packed) {
        for (int xi = 0; xi < POINTS; xi++) {
            fc_gemm_problem g = point_gemm(s, l.block);
            g.b = u + xi * tap;
            fc_gemm_pack_b(kr, &g, ws + xi * l.packed);
        }
    }
    const int64_t vs = l.rows * s->cin, ms = l.rows * s->cout;
    const int threads = l.threads;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *v = ws + l.shared + fc_thread_num() * l.per_thread, *m = v + l.v, *gemm_ws = m + l.m;
        #pragma omp for schedule(dynamic)
        for (int64_t b = 0; b < l.blocks; b++) {
            const int64_t t0 = b * l.block, count = min64(l.block, l.tiles - t0);
            tf.input(s, &l.tl, x, zero, t0, count, v, vs);
            for (int xi = 0; xi < POINTS; xi++) {
                fc_gemm_problem g = point_gemm(s, count);
                g.a = v + xi * vs;
                g.b = u + xi * tap;
                g.b_packed = l.packed ? ws + xi * l.packed : NULL;
                g.c = m + xi * ms;
                fc_gemm_run_in(kr, &g, 1, gemm_ws);
            }
            tf.output(s, &l.tl, m, ms, t0, count, bias, relu, mask_by, y);
        }
    }
    return FC_OK;
}
