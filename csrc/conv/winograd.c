/* Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution (see winograd.h); m is the output tile's side,
 * a = m + 2 the input tile's, a^2 the transform points (16 or 36).
 *
 * Per call: the kernel is transformed (U[xi] = G g G^T, a^2 matrices of cin x cout), each U[xi]
 * written straight into the micro-kernel's packed B panels (the threads share the input channels).
 * Then the tiles (counted over n * tiles_h * tiles_w, m x m output pixels each) are cut into blocks of
 * a fixed size; a thread takes a block and
 *   1. transforms its input tiles into V (block x a^2 x cin), zeros where a tile hangs over the padding,
 *   2. runs the a^2 products M[xi] = V[xi] @ U[xi] (block x cout) on the micro-kernel, register tile by
 *      register tile, in its own scratch,
 *   3. transforms M back into m x m output tiles, adds the bias, applies ReLU and the input-gradient
 *      mask, and stores the pixels that exist (a partial tile at the right or bottom edge drops the rest).
 * V and M of a block are small enough to stay in the thread's L2 between the steps.
 *
 * The weight gradient (fc_winograd_weight_grad) cuts dy into the same m x m tiles: a thread takes the
 * blocks of one partial sum in turn and, per block,
 *   1. transforms the input tiles into V[xi] (block x cin), as the forward does,
 *   2. transforms each tile's m x m block of dy (zeros past its edge) into W[xi] (block x cout),
 *   3. adds the a^2 products M[xi] (cin x cout) += V[xi]^T @ W[xi] into its partial sum;
 * then the partials are added in their fixed order and each M is transformed back to the 3x3 taps. */
#include <string.h>

#include "winograd.h"
#include "../dispatch.h"
#include "../workspace.h"

enum {
    BLOCK_FLOATS = 65536,          /* V + M of a block: 256 KiB, a quarter of a 1 MiB L2 */
    MIN_BLOCK_TILES = 96,          /* fewer rows per GEMM and each packed U[xi] is read for too little work */
    FORWARD_BLOCK_FLOATS = 32768,  /* the forward's V + M of a block: 128 KiB, in L2 beside the packed U */
    BALANCED_BLOCKS = 16,          /* below this many blocks, their count is made a multiple of 4 */
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

int fc_winograd_applies(const fc_conv_shape *s)
{
    return s->kh == 3 && s->kw == 3 && s->stride_h == 1 && s->stride_w == 1 && s->dilation_h == 1 &&
           s->dilation_w == 1 && s->pad_top >= 0 && s->pad_left >= 0 && s->oh >= 1 && s->ow >= 1;
}

/* ---- the 1-D transforms, on values d[0], d[s], d[2s], ... into o[0], o[so], ... ----
 * F(2, 3): B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], A^T = [1 1 1 0; 0 1 -1 -1].
 * F(4, 3): B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1],
 *          A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]. */
#define IN2(d, s, o, so)                                                                               \
    do {                                                                                               \
        const __typeof__((d)[0]) z0 = (d)[0], z1 = (d)[s], z2 = (d)[2 * (s)], z3 = (d)[3 * (s)];       \
        (o)[0] = z0 - z2; (o)[so] = z1 + z2; (o)[2 * (so)] = z2 - z1; (o)[3 * (so)] = z1 - z3;         \
    } while (0)
#define OUT2(d, s, o, so)                                                                              \
    do {                                                                                               \
        const __typeof__((d)[0]) z0 = (d)[0], z1 = (d)[s], z2 = (d)[2 * (s)], z3 = (d)[3 * (s)];       \
        (o)[0] = z0 + z1 + z2; (o)[so] = z1 - z2 - z3;                                                 \
    } while (0)
#define IN4(d, s, o, so)                                                                               \
    do {                                                                                               \
        const __typeof__((d)[0]) z0 = (d)[0], z1 = (d)[s], z2 = (d)[2 * (s)], z3 = (d)[3 * (s)],       \
                                 z4 = (d)[4 * (s)], z5 = (d)[5 * (s)];                                 \
        const __typeof__((d)[0]) zp = z4 - 4.0f * z2, zq = z3 - 4.0f * z1, zu = z4 - z2, zv = 2.0f * (z3 - z1); \
        (o)[0] = 4.0f * z0 - 5.0f * z2 + z4;                                                           \
        (o)[so] = zp + zq; (o)[2 * (so)] = zp - zq;                                                        \
        (o)[3 * (so)] = zu + zv; (o)[4 * (so)] = zu - zv;                                                  \
        (o)[5 * (so)] = 4.0f * z1 - 5.0f * z3 + z5;                                                    \
    } while (0)
#define OUT4(d, s, o, so)                                                                              \
    do {                                                                                               \
        const __typeof__((d)[0]) z0 = (d)[0], z1 = (d)[s], z2 = (d)[2 * (s)], z3 = (d)[3 * (s)],       \
                                 z4 = (d)[4 * (s)], z5 = (d)[5 * (s)];                                 \
        const __typeof__((d)[0]) za = z1 + z2, zb = z1 - z2, zc = z3 + z4, ze = z3 - z4;                  \
        (o)[0] = z0 + za + zc; (o)[so] = zb + 2.0f * ze; (o)[2 * (so)] = za + 4.0f * zc;                     \
        (o)[3 * (so)] = zb + 8.0f * ze + z5;                                                             \
    } while (0)

/* The weight gradient's 1-D transforms (winograd.h): the dy block's, of M values into A points (the
 * forward's A, i.e. (A^T)^T), and the inverse to the 3 kernel taps, G^T (G as in transform_kernel). */
#define DY2(d, s, o, so)                                                                               \
    do {                                                                                               \
        const __typeof__((d)[0]) z0 = (d)[0], z1 = (d)[s];                                             \
        (o)[0] = z0; (o)[so] = z0 + z1; (o)[2 * (so)] = z0 - z1; (o)[3 * (so)] = -z1;                  \
    } while (0)
#define DY4(d, s, o, so)                                                                               \
    do {                                                                                               \
        const __typeof__((d)[0]) z0 = (d)[0], z1 = (d)[s], z2 = (d)[2 * (s)], z3 = (d)[3 * (s)];       \
        const __typeof__((d)[0]) ze = z0 + z2, zf = z1 + z3, zp = z0 + 4.0f * z2, zq = 2.0f * z1 + 8.0f * z3; \
        (o)[0] = z0; (o)[so] = ze + zf; (o)[2 * (so)] = ze - zf;                                       \
        (o)[3 * (so)] = zp + zq; (o)[4 * (so)] = zp - zq; (o)[5 * (so)] = z3;                          \
    } while (0)
#define TAPS2(d, s, o, so)                                                                             \
    do {                                                                                               \
        const __typeof__((d)[0]) z0 = (d)[0], z1 = (d)[s], z2 = (d)[2 * (s)], z3 = (d)[3 * (s)];       \
        const __typeof__((d)[0]) zs = 0.5 * (z1 + z2);                                                 \
        (o)[0] = z0 + zs; (o)[so] = 0.5 * (z1 - z2); (o)[2 * (so)] = zs + z3;                          \
    } while (0)
#define TAPS4(d, s, o, so)                                                                             \
    do {                                                                                               \
        const __typeof__((d)[0]) z0 = (d)[0], z1 = (d)[s], z2 = (d)[2 * (s)], z3 = (d)[3 * (s)],       \
                                 z4 = (d)[4 * (s)], z5 = (d)[5 * (s)];                                 \
        const __typeof__((d)[0]) za = z1 + z2, zb = z3 + z4;                                           \
        (o)[0] = z0 / 4.0 - za / 6.0 + zb / 24.0; (o)[so] = (z2 - z1) / 6.0 + (z3 - z4) / 12.0;        \
        (o)[2 * (so)] = (zb - za) / 6.0 + z5;                                                          \
    } while (0)

/* ---- the per-tile transforms, one source for every vector type (T: float, or a vector of floats)
 * and both tile sizes (M output pixels a side from an A = M + 2 input tile) ---- */

/* A 2-D transform of an N x N tile into an A x A one, R d R^T with the 1-D transform F (R: A x N), over
 * channels [c, c + lanes): p[i * N + j] points at tile pixel (i, j)'s channels, and point i * A + j
 * goes to v + (i * A + j) * vs + c. Input tiles (N = A, F = B^T) and dy tiles of the weight gradient
 * (N = M, F = the A of the forward's output transform, transposed). */
#define DEFINE_TILE_TRANSFORM(NAME, T, N, A, F)                                                        \
    static inline __attribute__((always_inline)) void NAME(const float *const *p, int64_t c, float *v,  \
                                                            int64_t vs)                               \
    {                                                                                                 \
        typedef T unaligned __attribute__((aligned(4), may_alias));  /* one vector move each */       \
        T d[N * N], t[A * N], r[A * A];                                                               \
        for (int k = 0; k < N * N; k++) d[k] = *(const unaligned *)(p[k] + c);                        \
        for (int j = 0; j < N; j++) F(d + j, N, t + j, N);                                            \
        for (int i = 0; i < A; i++) F(t + i * N, 1, r + i * A, 1);                                    \
        for (int k = 0; k < A * A; k++) *(unaligned *)(v + k * vs + c) = r[k];                        \
    }

/* The M x M output tile Y = A^T X A over channels [c, c + lanes), X[k] at m + k * ms + c. out[k]
 * (NULL where the pixel lies outside y) receives Y[k] + bias, after ReLU if asked, zeroed where
 * mask[k] <= 0 if mask is not NULL. */
#define DEFINE_OUTPUT_TILE(NAME, T, M, A, OUT, RELU, MASK)                                            \
    static inline __attribute__((always_inline)) void NAME(const float *m, int64_t ms, int64_t c,       \
                                                            const float *bias, int relu,              \
                                                            float *const *out, const float *const *mask) \
    {                                                                                                 \
        typedef T unaligned __attribute__((aligned(4), may_alias));  /* one vector move each */       \
        T a[A * A], s[M * A], y[M * M];                                                               \
        for (int k = 0; k < A * A; k++) a[k] = *(const unaligned *)(m + k * ms + c);                  \
        for (int j = 0; j < A; j++) OUT(a + j, A, s + j, A);                                          \
        for (int i = 0; i < M; i++) OUT(s + i * A, 1, y + i * M, 1);                                  \
        if (bias) {                                                                                   \
            const T b = *(const unaligned *)(bias + c);                                               \
            for (int k = 0; k < M * M; k++) y[k] += b;                                                \
        }                                                                                             \
        for (int k = 0; k < M * M; k++) {                                                             \
            if (!out[k]) continue;                                                                    \
            T r = y[k];                                                                               \
            if (relu) r = RELU(r);                                                                    \
            if (mask) {                                                                               \
                const T keep = *(const unaligned *)(mask[k] + c);                                     \
                r = MASK(r, keep);                                                                    \
            }                                                                                         \
            *(unaligned *)(out[k] + c) = r;                                                           \
        }                                                                                             \
    }

typedef float vec8 __attribute__((vector_size(32)));
typedef int32_t ivec8 __attribute__((vector_size(32)));

/* max(r, 0) with NaN kept (as np.maximum), and r where x > 0 else 0 (the ReLU gradient's rule). */
static inline float relu_s(float r) { return r < 0.0f ? 0.0f : r; }
static inline float mask_s(float r, float x) { return x > 0.0f ? r : 0.0f; }
#define RELU_V8(r) ((vec8)((ivec8)(r) & ~((r) < (vec8){ 0 })))
#define MASK_V8(r, x) ((vec8)((ivec8)(r) & ((x) > (vec8){ 0 })))

DEFINE_TILE_TRANSFORM(input2_s, float, 4, 4, IN2)
DEFINE_TILE_TRANSFORM(input2_v8, vec8, 4, 4, IN2)
DEFINE_TILE_TRANSFORM(dy2_s, float, 2, 4, DY2)
DEFINE_TILE_TRANSFORM(dy2_v8, vec8, 2, 4, DY2)
DEFINE_OUTPUT_TILE(output2_s, float, 2, 4, OUT2, relu_s, mask_s)
DEFINE_OUTPUT_TILE(output2_v8, vec8, 2, 4, OUT2, RELU_V8, MASK_V8)
DEFINE_TILE_TRANSFORM(input4_s, float, 6, 6, IN4)
DEFINE_TILE_TRANSFORM(input4_v8, vec8, 6, 6, IN4)
DEFINE_TILE_TRANSFORM(dy4_s, float, 4, 6, DY4)
DEFINE_TILE_TRANSFORM(dy4_v8, vec8, 4, 6, DY4)
DEFINE_OUTPUT_TILE(output4_s, float, 4, 6, OUT4, relu_s, mask_s)
DEFINE_OUTPUT_TILE(output4_v8, vec8, 4, 6, OUT4, RELU_V8, MASK_V8)

/* ---- a block's transforms ---- */

typedef struct {
    int64_t tiles_h, tiles_w;
} tiling;

/* The images a block's tiles are cut from: x (input tiles, reaching into the padding) or dy (the
 * weight gradient's blocks, reaching past its right and bottom edge), of `channels` per pixel. */
typedef struct {
    const float *data;
    int64_t h, w, channels, top, left;  /* tile (ty, tx)'s pixel (i, j) is (ty * M - top + i, tx * M - left + j) */
} tile_source;

/* The SIDE x SIDE tiles [t0, t0 + count) of src, transformed, into V: tile t's point xi at
 * v + (t - t0) * ts + xi * vs (src->channels floats); zero: src->channels zeros, read outside src. */
#define DEFINE_INPUT_BLOCK(NAME, ATTR, M, SIDE, VTILE, STILE, LANES)                                  \
    ATTR static void NAME(const tile_source *src, const tiling *tl, const float *zero, int64_t t0,       \
                          int64_t count, float *v, int64_t ts, int64_t vs)                             \
    {                                                                                                 \
        const int64_t ch = src->channels, per_image = tl->tiles_h * tl->tiles_w;                      \
        for (int64_t t = t0; t < t0 + count; t++) {                                                   \
            const int64_t img = t / per_image, ty = t / tl->tiles_w % tl->tiles_h, tx = t % tl->tiles_w; \
            const float *p[SIDE * SIDE];                                                              \
            for (int i = 0; i < SIDE; i++) {                                                          \
                const int64_t iy = ty * M - src->top + i;                                             \
                for (int j = 0; j < SIDE; j++) {                                                      \
                    const int64_t ix = tx * M - src->left + j;                                        \
                    p[SIDE * i + j] = iy < 0 || iy >= src->h || ix < 0 || ix >= src->w                \
                                          ? zero : src->data + ((img * src->h + iy) * src->w + ix) * ch; \
                }                                                                                     \
            }                                                                                         \
            float *row = v + (t - t0) * ts;                                                           \
            int64_t c = 0;                                                                            \
            for (; c + LANES <= ch; c += LANES) VTILE(p, c, row, vs);                                 \
            for (; c < ch; c++) STILE(p, c, row, vs);                                                 \
        }                                                                                             \
    }

/* X of tiles [t0, t0 + count) (tile t's point xi at m + (t - t0) * ts + xi * ms) into y. */
#define DEFINE_OUTPUT_BLOCK(NAME, ATTR, M, VTILE, STILE, LANES)                                       \
    ATTR static void NAME(const fc_conv_shape *s, const tiling *tl, const float *m, int64_t ts, int64_t ms, \
                          int64_t t0, int64_t count, const float *bias, int relu, const float *mask_by, \
                          float *y)                                                                   \
    {                                                                                                 \
        const int64_t cout = s->cout, per_image = tl->tiles_h * tl->tiles_w;                          \
        for (int64_t t = t0; t < t0 + count; t++) {                                                   \
            const int64_t img = t / per_image, ty = t / tl->tiles_w % tl->tiles_h, tx = t % tl->tiles_w; \
            float *out[M * M];                                                                        \
            const float *mask[M * M];                                                                 \
            for (int k = 0; k < M * M; k++) {                                                         \
                const int64_t oy = ty * M + k / M, ox = tx * M + k % M;                               \
                const int64_t at = ((img * s->oh + oy) * s->ow + ox) * cout;                          \
                const int inside = oy < s->oh && ox < s->ow;                                          \
                out[k] = inside ? y + at : NULL;  /* a pixel outside y: its mask is never read */     \
                mask[k] = inside && mask_by ? mask_by + at : NULL;                                    \
            }                                                                                         \
            const float *row = m + (t - t0) * ts;                                                     \
            const float *const *mk = mask_by ? mask : NULL;                                           \
            int64_t c = 0;                                                                            \
            for (; c + LANES <= cout; c += LANES) VTILE(row, ms, c, bias, relu, out, mk);             \
            for (; c < cout; c++) STILE(row, ms, c, bias, relu, out, mk);                             \
        }                                                                                             \
    }

#define AVX2 __attribute__((target("avx2,fma")))
DEFINE_INPUT_BLOCK(input2_generic, , 2, 4, input2_s, input2_s, 1)
DEFINE_OUTPUT_BLOCK(output2_generic, , 2, output2_s, output2_s, 1)
DEFINE_INPUT_BLOCK(dy2_generic, , 2, 2, dy2_s, dy2_s, 1)
DEFINE_INPUT_BLOCK(input4_generic, , 4, 6, input4_s, input4_s, 1)
DEFINE_OUTPUT_BLOCK(output4_generic, , 4, output4_s, output4_s, 1)
DEFINE_INPUT_BLOCK(dy4_generic, , 4, 4, dy4_s, dy4_s, 1)
#if defined(__x86_64__) || defined(_M_X64)
DEFINE_INPUT_BLOCK(input2_avx2, AVX2, 2, 4, input2_v8, input2_s, 8)
DEFINE_OUTPUT_BLOCK(output2_avx2, AVX2, 2, output2_v8, output2_s, 8)
DEFINE_INPUT_BLOCK(dy2_avx2, AVX2, 2, 2, dy2_v8, dy2_s, 8)
DEFINE_INPUT_BLOCK(input4_avx2, AVX2, 4, 6, input4_v8, input4_s, 8)
DEFINE_OUTPUT_BLOCK(output4_avx2, AVX2, 4, output4_v8, output4_s, 8)
DEFINE_INPUT_BLOCK(dy4_avx2, AVX2, 4, 4, dy4_v8, dy4_s, 8)
#endif

typedef void (*block_transform)(const tile_source *src, const tiling *tl, const float *zero, int64_t t0,
                                int64_t count, float *v, int64_t ts, int64_t vs);
typedef struct {
    block_transform input, dy;  /* input tiles; the weight gradient's dy blocks */
    void (*output)(const fc_conv_shape *s, const tiling *tl, const float *m, int64_t ts, int64_t ms, int64_t t0, int64_t count,
                   const float *bias, int relu, const float *mask_by, float *y);
} transforms;

/* The transforms of tile size `tile` for the call's instruction set: the AVX2 ones wherever the GEMM
 * kernel has vectors of 8 floats or more (AVX2, AVX-512), so forcing an instruction set forces them too. */
static transforms active_transforms(const fc_gemm_kernel *kr, int tile)
{
#if defined(__x86_64__) || defined(_M_X64)
    if (kr->vector_bytes >= 32)
        return tile == 4 ? (transforms){ input4_avx2, dy4_avx2, output4_avx2 }
                         : (transforms){ input2_avx2, dy2_avx2, output2_avx2 };
#endif
    (void)kr;
    return tile == 4 ? (transforms){ input4_generic, dy4_generic, output4_generic }
                     : (transforms){ input2_generic, dy2_generic, output2_generic };
}

/* x as the source of input tiles */
static tile_source input_tiles(const fc_conv_shape *s, const float *x)
{
    const tile_source src = { x, s->h, s->w, s->cin, s->pad_top, s->pad_left };
    return src;
}

/* The kernel's 1-D transform G, on g[0], g[s], g[2s] into o[0], o[so], ... (T: float or a vector):
 *     F(2, 3): G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
 *     F(4, 3): G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1] */
#define KERNEL2(g, s, o, so)                                                                           \
    do {                                                                                               \
        const __typeof__((g)[0]) g0 = (g)[0], g1 = (g)[s], g2 = (g)[2 * (s)];                          \
        (o)[0] = g0; (o)[so] = 0.5f * (g0 + g1 + g2); (o)[2 * (so)] = 0.5f * (g0 - g1 + g2);           \
        (o)[3 * (so)] = g2;                                                                            \
    } while (0)
#define KERNEL4(g, s, o, so)                                                                           \
    do {                                                                                               \
        const __typeof__((g)[0]) g0 = (g)[0], g1 = (g)[s], g2 = (g)[2 * (s)];                          \
        (o)[0] = g0 / 4.0f;                                                                            \
        (o)[so] = -(g0 + g1 + g2) / 6.0f;                                                              \
        (o)[2 * (so)] = -(g0 - g1 + g2) / 6.0f;                                                        \
        (o)[3 * (so)] = g0 / 24.0f + g1 / 12.0f + g2 / 6.0f;                                           \
        (o)[4 * (so)] = g0 / 24.0f - g1 / 12.0f + g2 / 6.0f;                                           \
        (o)[5 * (so)] = g2;                                                                            \
    } while (0)

/* The transformed kernel of output channels [n, n + lanes) and input channel k, (G g G^T) for each of
 * the a^2 points: g[i * 3 + j] holds tap (i, j), out[xi] receives point xi. */
#define DEFINE_KERNEL_TILE(NAME, T, A, KERNEL)                                                         \
    static inline void NAME(const T *g, T *out)                                                         \
    {                                                                                                 \
        T t[A * 3];                                                                                   \
        for (int j = 0; j < 3; j++) KERNEL(g + j, 3, t + j, 3);          /* G g: A x 3 */              \
        for (int i = 0; i < A; i++) KERNEL(t + 3 * i, 1, out + A * i, 1);  /* (G g) G^T */             \
    }
DEFINE_KERNEL_TILE(kernel2_s, float, 4, KERNEL2)
DEFINE_KERNEL_TILE(kernel2_v8, vec8, 4, KERNEL2)
DEFINE_KERNEL_TILE(kernel4_s, float, 6, KERNEL4)
DEFINE_KERNEL_TILE(kernel4_v8, vec8, 6, KERNEL4)

/* ---- the call's layout ---- */

/* The m x m tiles of y (or dy) and their blocks, both passes' first decision. */
typedef struct {
    tiling tl;
    int tile, points;                    /* output pixels a tile side (2 or 4), transform points */
    int64_t tiles, block, blocks;
} tile_blocks;

/* The forward's layout. V and M hold a block's tiles one after another, all a^2 points of a tile
 * together (the transforms then read or write one run of memory per tile); point xi of the block is
 * the GEMM operand of rows `tv` (`tm`) floats apart. U[xi] is packed as the micro-kernel's B panels. */
typedef struct {
    tile_blocks t;
    int64_t rows;                        /* the block's tiles rounded up to the GEMM's MR */
    int64_t width, panel, point;         /* U: columns a panel, floats from a panel (a point) to the next */
    int64_t tv, tm;                      /* floats from one tile to the next in V and in M */
    int64_t shared, v, m, per_thread;
    int threads;
} layout;

/* Tiles per block: V and M in about BLOCK_FLOATS, at least MIN_BLOCK_TILES, in whole register tiles,
 * at most all the tiles. Where that leaves fewer than BALANCED_BLOCKS blocks, their count is rounded up
 * to a multiple of 4 with smaller blocks (so 2 or 4 threads get equal shares: 128 tiles in blocks of 96
 * and 32 left one of 2 threads idle for half the call). A function of the shape (and the GEMM's MR) only: the thread count cannot change which
 * tiles share a GEMM. */
static int64_t block_tiles(const fc_conv_shape *s, int points, int64_t mr, int64_t tiles)
{
    int64_t b = max64(MIN_BLOCK_TILES, BLOCK_FLOATS / (points * (s->cin + s->cout)));
    b = (b + mr - 1) / mr * mr;
    const int64_t blocks = (tiles + b - 1) / b;
    if (blocks > 1 && blocks < BALANCED_BLOCKS) {
        const int64_t even = (blocks + 3) / 4 * 4;
        b = ((tiles + even - 1) / even + mr - 1) / mr * mr;
    }
    return min64(b, tiles);
}

static tile_blocks cut_into_blocks(const fc_conv_shape *s, int tile, const fc_gemm_kernel *kr)
{
    tile_blocks t = { .tile = tile == 4 ? 4 : 2 };
    t.points = (t.tile + 2) * (t.tile + 2);
    t.tl.tiles_h = (s->oh + t.tile - 1) / t.tile;
    t.tl.tiles_w = (s->ow + t.tile - 1) / t.tile;
    t.tiles = s->n * t.tl.tiles_h * t.tl.tiles_w;
    t.block = block_tiles(s, t.points, kr->mr, t.tiles);
    t.blocks = (t.tiles + t.block - 1) / t.block;
    return t;
}

/* Floats from one tile's a^2 points to the next: whole cache lines, and not a multiple of 4 KiB (an
 * MR-row tile of the GEMM reads one point of MR tiles, which would then all fall in one L1 set). */
static int64_t tile_stride(int64_t floats)
{
    const int64_t lines = fc_lines(floats);
    return lines % 1024 ? lines : lines + 16;
}

/* Tiles per block of the forward: V and M of a block in about FORWARD_BLOCK_FLOATS (in L2 with the
 * packed U between the transforms and the GEMMs), whole register tiles, at most all the tiles. The
 * bits of a tile do not depend on its block (K is never split), so any rule keeps determinism. */
static int64_t forward_block_tiles(const fc_conv_shape *s, int points, int64_t mr, int64_t tiles)
{
    const int64_t b = max64(mr, FORWARD_BLOCK_FLOATS / (points * (s->cin + s->cout)) / mr * mr);
    return min64(b, tiles);
}

static layout make_layout(const fc_conv_shape *s, int tile, const fc_gemm_kernel *kr)
{
    layout l = { .t = cut_into_blocks(s, tile, kr) };
    l.t.block = forward_block_tiles(s, l.t.points, kr->mr, l.t.tiles);
    l.t.blocks = (l.t.tiles + l.t.block - 1) / l.t.block;
    l.rows = (l.t.block + kr->mr - 1) / kr->mr * kr->mr;
    l.width = fc_gemm_b_panel_width(kr, s->cout);
    l.panel = fc_gemm_b_panel_stride(kr, s->cin);
    l.point = fc_lines((s->cout + l.width - 1) / l.width * l.panel);
    l.tv = tile_stride(l.t.points * s->cin);
    l.tm = tile_stride(l.t.points * s->cout);
    l.shared = l.t.points * l.point + fc_lines(s->cin);  /* the packed U, then a row of zeros */
    l.v = fc_lines(l.rows * l.tv);
    l.m = fc_lines(l.rows * l.tm);
    l.per_thread = l.v + l.m;
    l.threads = fc_threads_for_work(2.0 * s->n * s->oh * s->ow * 9 * s->cin * s->cout);
    if (l.threads > l.t.blocks) l.threads = (int)l.t.blocks;
    return l;
}

void fc_winograd_workspace(const fc_conv_shape *s, int tile, int64_t *call, int64_t *kernel)
{
    const layout l = make_layout(s, tile, fc_active_float32_gemm_kernel());
    *call = l.shared + l.threads * l.per_thread;
    *kernel = 0;
}

/* U[xi] = G g G^T of input channel k, written straight into the packed B panels of point xi (the pack
 * contract of gemm.h: element (k, n) at (n / width) * panel + k * width + n % width, the columns past
 * cout zero). flipped: g(r, c, k, n) = w[2 - r][2 - c][n][k] of a (3, 3, cout, cin) kernel. */
static void transform_kernel_row(const fc_conv_shape *s, const layout *l, const float *w, int flipped, int64_t k,
                                 float *u)
{
    const int64_t kk = s->cin, nn = s->cout, tap = kk * nn;
    const int64_t ks = flipped ? 1 : nn, ns = flipped ? kk : 1;
    const int a = l->t.tile + 2, points = a * a;
    const int64_t padded = (nn + l->width - 1) / l->width * l->width;
    int64_t n = 0;
    for (; n + 8 <= nn && l->width % 8 == 0; n += 8) {  /* 8 columns never cross a panel */
        float g[9][8];
        vec8 gv[9], r[36];
        for (int e = 0; e < 9; e++) {
            const float *src = w + (flipped ? 8 - e : e) * tap + k * ks + n * ns;
            for (int q = 0; q < 8; q++) g[e][q] = src[q * ns];
            memcpy(&gv[e], g[e], sizeof(vec8));
        }
        if (a == 4) kernel2_v8(gv, r); else kernel4_v8(gv, r);
        float *dst = u + n / l->width * l->panel + k * l->width + n % l->width;
        for (int xi = 0; xi < points; xi++) memcpy(dst + xi * l->point, &r[xi], sizeof(vec8));
    }
    for (; n < padded; n++) {
        float g[9], r[36];
        for (int e = 0; e < 9; e++) g[e] = n < nn ? w[(flipped ? 8 - e : e) * tap + k * ks + n * ns] : 0.0f;
        if (a == 4) kernel2_s(g, r); else kernel4_s(g, r);
        float *dst = u + n / l->width * l->panel + k * l->width + n % l->width;
        for (int xi = 0; xi < points; xi++) dst[xi * l->point] = r[xi];
    }
}

/* M[xi] = V[xi] @ U[xi] for the block's `count` tiles, every point: each register tile of MR tiles runs
 * all the points while its V rows are in L1, the packed U streaming from L2. */
static void block_products(const fc_conv_shape *s, const layout *l, const fc_gemm_kernel *kr, const float *u,
                           const float *v, int64_t count, float *m)
{
    static const fc_tile_epilogue plain = { .alpha = 1.0f, .beta = 0.0f };
    const int64_t mr = kr->mr, width = l->width, points = l->t.points;
    for (int64_t i = 0; i < count; i += mr) {
        const int rows = (int)min64(mr, count - i);
        for (int64_t xi = 0; xi < points; xi++) {
            const float *a = v + i * l->tv + xi * s->cin;
            float *c = m + i * l->tm + xi * s->cout;
            for (int64_t j = 0; j < s->cout; j += width)
                kr->ukr(s->cin, a, l->tv, 1, NULL, u + xi * l->point + j / width * l->panel, width, c + j, l->tm,
                        rows, (int)min64(width, s->cout - j), &plain);
        }
    }
}

int fc_winograd_forward(const fc_conv_shape *s, int tile, const float *x, const float *w, int flipped,
                        const float *bias, int relu, const float *mask_by, float *y)
{
    const fc_gemm_kernel *kr = fc_active_float32_gemm_kernel();
    const layout l = make_layout(s, tile, kr);
    const transforms tf = active_transforms(kr, l.t.tile);
    float *ws = fc_scratch(FC_SCRATCH_CALL, l.shared + l.threads * l.per_thread);
    if (!ws) return FC_ERROR_NO_MEMORY;
    float *zero = ws + l.t.points * l.point;
    memset(zero, 0, sizeof(float) * (size_t)s->cin);
    const tile_source src = input_tiles(s, x);
    const int threads = l.threads;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *v = ws + l.shared + fc_thread_num() * l.per_thread, *m = v + l.v;
        #pragma omp for schedule(static)
        for (int64_t k = 0; k < s->cin; k++) transform_kernel_row(s, &l, w, flipped, k, ws);
        /* the rows past a last, partial block's tiles that its GEMMs read (and ignore): zeros */
        const int64_t last = l.t.tiles - (l.t.blocks - 1) * l.t.block;
        memset(v + last * l.tv, 0, sizeof(float) * (size_t)((l.rows - last) * l.tv));
        #pragma omp for schedule(dynamic)
        for (int64_t b = 0; b < l.t.blocks; b++) {
            const int64_t t0 = b * l.t.block, count = min64(l.t.block, l.t.tiles - t0);
            tf.input(&src, &l.t.tl, zero, t0, count, v, l.tv, s->cin);
            block_products(s, &l, kr, ws, v, count, m);
            tf.output(s, &l.t.tl, m, l.tm, s->cout, t0, count, bias, relu, mask_by, y);
        }
    }
    return FC_OK;
}

/* ---- the weight gradient (winograd.h) ---- */

enum { WEIGHT_GRAD_PARTIALS = 4 };  /* partial sums: 2 or 4 threads share them evenly */

typedef struct {
    tile_blocks t;
    int64_t partials;
    int64_t acc;                         /* floats of one partial sum: the a^2 matrices M[xi], cin x cout */
    int64_t vs, ws;                      /* floats from one point's V (W) to the next */
    int64_t shared, v, w, gemm, per_thread;
    int threads;
} weight_grad_layout;

/* The floats between the points of a block's transforms, for `floats` each: whole cache lines, one
 * more than a multiple of 4 KiB. A transform stores a tile's a^2 points at once; a multiple of 4 KiB
 * apart (96 tiles of 32 channels), those stores all fell into one L1 set and evicted each other. */
static int64_t point_stride(int64_t floats)
{
    return (floats + 1023) / 1024 * 1024 + 16;
}

/* M[xi] (+)= V[xi]^T @ W[xi] over k tiles: V (tiles x cin) read by columns, W (tiles x cout) by rows. */
static fc_gemm_problem weight_grad_gemm(const fc_conv_shape *s, int64_t k)
{
    const fc_gemm_problem g = {
        .m = s->cin, .n = s->cout, .k = k, .a_rs = 1, .a_cs = s->cin, .b_rs = s->cout, .b_cs = 1,
        .ldc = s->cout, .alpha = 1.0f,
    };
    return g;
}

static weight_grad_layout make_weight_grad_layout(const fc_conv_shape *s, int tile, const fc_gemm_kernel *kr)
{
    weight_grad_layout l = { .t = cut_into_blocks(s, tile, kr) };
    l.partials = min64(l.t.blocks, WEIGHT_GRAD_PARTIALS);
    l.acc = fc_lines(l.t.points * s->cin * s->cout);
    l.shared = l.partials * l.acc + fc_lines(max64(s->cin, s->cout));  /* the partials, then a row of zeros */
    l.vs = point_stride(l.t.block * s->cin);
    l.ws = point_stride(l.t.block * s->cout);
    l.v = l.t.points * l.vs;
    l.w = l.t.points * l.ws;
    /* W's rows start at any float (as the forward's unpacked U): sized for the misaligned B */
    static const float misaligned[2] __attribute__((aligned(64)));
    fc_gemm_problem g = weight_grad_gemm(s, l.t.block);
    g.b = misaligned + 1;
    const int64_t full = fc_gemm_workspace_floats(kr, &g, 1);
    g.k = l.t.tiles - (l.t.blocks - 1) * l.t.block;
    l.gemm = fc_lines(max64(full, fc_gemm_workspace_floats(kr, &g, 1)));
    l.per_thread = l.v + l.w + l.gemm;
    l.threads = fc_threads_for_work(2.0 * s->n * s->oh * s->ow * 9 * s->cin * s->cout);
    if (l.threads > l.partials) l.threads = (int)l.partials;
    return l;
}

int64_t fc_winograd_weight_grad_workspace(const fc_conv_shape *s, int tile)
{
    const weight_grad_layout l = make_weight_grad_layout(s, tile, fc_active_float32_gemm_kernel());
    return l.shared + l.threads * l.per_thread;
}

/* dw's elements e .. e + lanes - 1 of every tap (e = ci * cout + co): the partial sums of each point
 * added in their order, then G^T M G, in double (T: double, or a vector of doubles; a^2 + 9 values per
 * element, little next to the GEMMs' work). */
typedef double vec4d __attribute__((vector_size(32)));
typedef float vec4f __attribute__((vector_size(16)));
#define LOAD_1D(p) ((double)*(p))
#define STORE_1D(p, v) (*(p) = (float)(v))
#define LOAD_4D(p) ({ vec4f f_; memcpy(&f_, (p), sizeof f_); __builtin_convertvector(f_, vec4d); })
#define STORE_4D(p, v)                                                                                 \
    do {                                                                                               \
        const vec4f f_ = __builtin_convertvector((v), vec4f);                                          \
        memcpy((p), &f_, sizeof f_);                                                                   \
    } while (0)

#define DEFINE_WEIGHT_GRAD_TAPS(NAME, T, LOAD, STORE)                                                 \
    static inline void NAME(const weight_grad_layout *l, const float *acc, int64_t tap, int64_t e, float *dw) \
    {                                                                                                 \
        T z[36], t[3 * 6], r[9];                                                                      \
        for (int xi = 0; xi < l->t.points; xi++) {                                                     \
            T sum = LOAD(acc + xi * tap + e);                                                         \
            for (int64_t part = 1; part < l->partials; part++) sum += LOAD(acc + part * l->acc + xi * tap + e); \
            z[xi] = sum;                                                                              \
        }                                                                                             \
        if (l->t.tile == 2) {                                                                          \
            for (int j = 0; j < 4; j++) TAPS2(z + j, 4, t + j, 4);      /* G^T M: 3 x 4 */            \
            for (int i = 0; i < 3; i++) TAPS2(t + 4 * i, 1, r + 3 * i, 1);  /* (G^T M) G */           \
        } else {                                                                                      \
            for (int j = 0; j < 6; j++) TAPS4(z + j, 6, t + j, 6);                                    \
            for (int i = 0; i < 3; i++) TAPS4(t + 6 * i, 1, r + 3 * i, 1);                            \
        }                                                                                             \
        for (int k = 0; k < 9; k++) STORE(dw + k * tap + e, r[k]);                                    \
    }
DEFINE_WEIGHT_GRAD_TAPS(weight_grad_taps_1, double, LOAD_1D, STORE_1D)
DEFINE_WEIGHT_GRAD_TAPS(weight_grad_taps_4, vec4d, LOAD_4D, STORE_4D)

int fc_winograd_weight_grad(const fc_conv_shape *s, int tile, const float *x, const float *dy, float *dw)
{
    const fc_gemm_kernel *kr = fc_active_float32_gemm_kernel();
    const weight_grad_layout l = make_weight_grad_layout(s, tile, kr);
    const transforms tf = active_transforms(kr, l.t.tile);
    float *ws = fc_scratch(FC_SCRATCH_CALL, l.shared + l.threads * l.per_thread);
    if (!ws) return FC_ERROR_NO_MEMORY;
    float *zero = ws + l.partials * l.acc;
    memset(zero, 0, sizeof(float) * (size_t)max64(s->cin, s->cout));
    const tile_source xs = input_tiles(s, x), dys = { dy, s->oh, s->ow, s->cout, 0, 0 };
    const int64_t vs = l.vs, wsz = l.ws, tap = s->cin * s->cout;
    const int threads = l.threads;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *v = ws + l.shared + fc_thread_num() * l.per_thread, *w = v + l.v, *gemm_ws = w + l.w;
        #pragma omp for schedule(dynamic)
        for (int64_t part = 0; part < l.partials; part++) {
            for (int64_t b = part; b < l.t.blocks; b += l.partials) {
                const int64_t t0 = b * l.t.block, count = min64(l.t.block, l.t.tiles - t0);
                tf.input(&xs, &l.t.tl, zero, t0, count, v, s->cin, vs);
                tf.dy(&dys, &l.t.tl, zero, t0, count, w, s->cout, wsz);
                for (int xi = 0; xi < l.t.points; xi++) {
                    fc_gemm_problem g = weight_grad_gemm(s, count);
                    g.a = v + xi * vs;
                    g.b = w + xi * wsz;
                    g.c = ws + part * l.acc + xi * tap;
                    g.beta = b == part ? 0.0f : 1.0f;
                    fc_gemm_run_in(kr, &g, 1, gemm_ws);
                }
            }
        }
        #pragma omp for schedule(static)
        for (int64_t e0 = 0; e0 < tap; e0 += 256) {
            const int64_t end = min64(e0 + 256, tap);
            int64_t e = e0;
            for (; e + 4 <= end; e += 4) weight_grad_taps_4(&l, ws, tap, e, dw);
            for (; e < end; e++) weight_grad_taps_1(&l, ws, tap, e, dw);
        }
    }
    return FC_OK;
}
