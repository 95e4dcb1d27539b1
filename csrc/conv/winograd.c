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
 * The weight gradient (fc_winograd_weight_grad) cuts dy into the same m x m tiles, and the tiles into
 * equal blocks of at most 128, a multiple of 4 of them: a thread takes the blocks of one of 4 partial
 * sums in turn and, per block,
 *   1. transforms the input tiles into V[xi] (block x cin), as the forward does,
 *   2. transforms each tile's m x m block of dy (zeros past its edge) into W[xi] (block x cout),
 *   3. adds the a^2 products M[xi] (cin x cout) += V[xi]^T @ W[xi] into its partial sum, on the
 *      micro-kernel (K = the block's tiles);
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
 * goes to v + (i * A + j) * vs + c: the input tiles (N = A, F = B^T) and the weight gradient's dy
 * blocks (N = M, F = the A of the forward's output transform, transposed). */
#define DEFINE_TILE_TRANSFORM(NAME, T, N, A, F)                                                        \
    static inline __attribute__((always_inline)) void NAME(const float *const *p, int64_t c, float *v,  \
                                                            int64_t vs)                               \
    {                                                                                                 \
        typedef T unaligned __attribute__((aligned(4), may_alias));  /* one vector move each */       \
        T t[A * N];  /* R d; the loads feed, and the stores take, the 1-D transforms directly */        \
        for (int j = 0; j < N; j++) {                                                                 \
            T d[N];                                                                                   \
            for (int i = 0; i < N; i++) d[i] = *(const unaligned *)(p[i * N + j] + c);                \
            F(d, 1, t + j, N);                                                                        \
        }                                                                                             \
        for (int i = 0; i < A; i++) {                                                                 \
            T r[A];                                                                                   \
            F(t + i * N, 1, r, 1);                                                                    \
            for (int j = 0; j < A; j++) *(unaligned *)(v + (i * A + j) * vs + c) = r[j];              \
        }                                                                                             \
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
        T s[M * A];  /* A^T X; the loads feed, and the stores take, the 1-D transforms directly */      \
        for (int j = 0; j < A; j++) {                                                                 \
            T a[A];                                                                                   \
            for (int i = 0; i < A; i++) a[i] = *(const unaligned *)(m + (i * A + j) * ms + c);        \
            OUT(a, 1, s + j, A);                                                                      \
        }                                                                                             \
        T b = { 0 };                                                                                  \
        if (bias) b = *(const unaligned *)(bias + c);                                                 \
        for (int i = 0; i < M; i++) {                                                                 \
            T y[M];                                                                                   \
            OUT(s + i * A, 1, y, 1);                                                                  \
            for (int j = 0; j < M; j++) {                                                             \
                const int k = i * M + j;                                                              \
                if (!out[k]) continue;                                                                \
                T r = bias ? y[j] + b : y[j];                                                         \
                if (relu) r = RELU(r);                                                                \
                if (mask) {                                                                           \
                    const T keep = *(const unaligned *)(mask[k] + c);                                 \
                    r = MASK(r, keep);                                                                \
                }                                                                                     \
                *(unaligned *)(out[k] + c) = r;                                                       \
            }                                                                                         \
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
DEFINE_OUTPUT_TILE(output2_s, float, 2, 4, OUT2, relu_s, mask_s)
DEFINE_OUTPUT_TILE(output2_v8, vec8, 2, 4, OUT2, RELU_V8, MASK_V8)
DEFINE_TILE_TRANSFORM(input4_s, float, 6, 6, IN4)
DEFINE_TILE_TRANSFORM(input4_v8, vec8, 6, 6, IN4)
DEFINE_OUTPUT_TILE(output4_s, float, 4, 6, OUT4, relu_s, mask_s)
DEFINE_OUTPUT_TILE(output4_v8, vec8, 4, 6, OUT4, RELU_V8, MASK_V8)

/* ---- a block's transforms ---- */

typedef struct {
    int64_t tiles_h, tiles_w;
} tiling;

/* The images a block's tiles are cut from: x (input tiles, reaching into the padding) or dy (the
 * weight gradient's blocks, reaching past its right and bottom edge), of `channels` per pixel. Or,
 * where `pooled` is set, the gradient at the input of a ReLU whose output went through the 2x2,
 * stride-2 max pooling: rebuilt tile by tile from the pooling's gradient and argmax bytes
 * (fc_pooled_grad) as maxpool2d_backward would write it, into a buffer of the thread's own. */
typedef struct {
    const float *data;
    int64_t h, w, channels, top, left;  /* tile (ty, tx)'s pixel (i, j) is (ty * M - top + i, tx * M - left + j) */
    const fc_pooled_grad *pooled;       /* NULL, or data's source (data unused), of h / 2 x w / 2 windows */
    const fc_maxpool2x2_kernels *unpool;  /* with pooled: the pooling kernels whose backward rebuilds it */
} tile_source;

/* The SIDE x SIDE pixels of a tile from src->pooled, as the pooling's backward pass (x_from_relu) writes
 * them: the windows the tile overlaps, a row of them at a time, through the pooling kernels' backward
 * row into buf ((SIDE + 2)^2 pixels: the windows' rows and columns can reach one past each side of the
 * tile), a pixel of an odd last row or column (in no window) or of the padding read as zero. p[k] points
 * at pixel k. */
static inline void unpooled_tile(const tile_source *src, int64_t img, int64_t y0, int64_t x0, int side,
                                 const float *zero, float *buf, const float **p)
{
    const int64_t ch = src->channels, ph = src->h / 2, pw = src->w / 2;
    /* the windows the tile overlaps (y0 + side > 0: a tile reaches at most 2 pixels into the padding) */
    const int64_t wy0 = y0 < 0 ? 0 : y0 / 2, wy1 = min64(ph, (y0 + side + 1) / 2);
    const int64_t wx0 = x0 < 0 ? 0 : x0 / 2, wx1 = min64(pw, (x0 + side + 1) / 2);
    const int64_t cols = wx1 - wx0, row_floats = 2 * cols * ch;
    const fc_pool_shape window_row = { .n = 1, .h = 2, .w = 2 * cols, .c = ch, .pool_h = 2, .pool_w = 2,
                                       .stride_h = 2, .stride_w = 2, .oh = 1, .ow = cols };
    for (int64_t wy = wy0; wy < wy1 && cols > 0; wy++) {
        const int64_t at = ((img * ph + wy) * pw + wx0) * ch;
        src->unpool->backward_row(&window_row, src->pooled->dy + at, NULL, src->pooled->argmax + at, 1,
                                  buf + (wy - wy0) * 2 * row_floats, 0);
    }
    for (int i = 0; i < side; i++) {
        const int64_t iy = y0 + i;
        for (int j = 0; j < side; j++) {
            const int64_t ix = x0 + j;
            const int in_windows = iy >= 2 * wy0 && iy < 2 * wy1 && ix >= 2 * wx0 && ix < 2 * wx1;
            p[side * i + j] = in_windows ? buf + (iy - 2 * wy0) * row_floats + (ix - 2 * wx0) * ch : zero;
        }
    }
}

/* The SIDE x SIDE tiles [t0, t0 + count) of src, transformed, into V: tile t's point xi at
 * v + (t - t0) * ts + xi * vs (src->channels floats); zero: src->channels zeros, read outside src;
 * unpooled: SIDE^2 * src->channels floats of the thread's own where src->pooled is set.
 * PREFETCH: the next tile's rows are fetched while this one is transformed (x, read from memory in
 * short rows the prefetchers pick up late). */
#define DEFINE_INPUT_BLOCK(NAME, ATTR, M, SIDE, VTILE, STILE, LANES, PREFETCH)                        \
    ATTR static void NAME(const tile_source *src, const tiling *tl, const float *zero, float *unpooled,  \
                          int64_t t0, int64_t count, float *v, int64_t ts, int64_t vs)                 \
    {                                                                                                 \
        const int64_t ch = src->channels, per_image = tl->tiles_h * tl->tiles_w;                      \
        for (int64_t t = t0; t < t0 + count; t++) {                                                   \
            const int64_t img = t / per_image, ty = t / tl->tiles_w % tl->tiles_h, tx = t % tl->tiles_w; \
            const float *p[SIDE * SIDE];                                                              \
            if (src->pooled) {                                                                        \
                unpooled_tile(src, img, ty * M - src->top, tx * M - src->left, SIDE, zero, unpooled, p); \
            } else {                                                                                  \
                for (int i = 0; i < SIDE; i++) {                                                      \
                    const int64_t iy = ty * M - src->top + i;                                         \
                    for (int j = 0; j < SIDE; j++) {                                                  \
                        const int64_t ix = tx * M - src->left + j;                                    \
                        p[SIDE * i + j] = iy < 0 || iy >= src->h || ix < 0 || ix >= src->w            \
                                              ? zero : src->data + ((img * src->h + iy) * src->w + ix) * ch; \
                    }                                                                                 \
                }                                                                                     \
            }                                                                                         \
            if (PREFETCH && !src->pooled && t + 1 < t0 + count) {                                     \
                const int64_t n1 = t + 1, img1 = n1 / per_image, ty1 = n1 / tl->tiles_w % tl->tiles_h,  \
                              tx1 = n1 % tl->tiles_w;                                                 \
                const int64_t x0 = max64(0, tx1 * M - src->left), x1 = min64(src->w, tx1 * M - src->left + SIDE); \
                for (int i = 0; i < SIDE; i++) {                                                      \
                    const int64_t iy = ty1 * M - src->top + i;                                        \
                    if (iy < 0 || iy >= src->h || x0 >= x1) continue;                                 \
                    const char *a = (const char *)(src->data + ((img1 * src->h + iy) * src->w + x0) * ch); \
                    const char *e = (const char *)(src->data + ((img1 * src->h + iy) * src->w + x1) * ch); \
                    for (; a < e; a += 64) __builtin_prefetch(a);                                     \
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

/* The same tiles with bias and ReLU, each through the thread's M x M x cout buffer `tile` into the 2x2,
 * stride-2 max pooling of y (valid: a last odd row or column of y is in no window), `pooled`
 * (n, oh / 2, ow / 2, cout) and its argmax bytes: M is even, so every window lies in one tile, and y is
 * never stored. */
#define DEFINE_POOLED_OUTPUT_BLOCK(NAME, ATTR, M, VTILE, STILE, LANES)                                \
    ATTR static void NAME(const fc_conv_shape *s, const tiling *tl, const float *m, int64_t ts, int64_t ms, \
                          int64_t t0, int64_t count, const float *bias, const pooling *pool, float *tile) \
    {                                                                                                 \
        const int64_t cout = s->cout, per_image = tl->tiles_h * tl->tiles_w;                          \
        const int64_t ph = s->oh / 2, pw = s->ow / 2;                                                 \
        float *out[M * M];                                                                            \
        for (int k = 0; k < M * M; k++) out[k] = tile + k * cout;                                     \
        for (int64_t t = t0; t < t0 + count; t++) {                                                   \
            const int64_t img = t / per_image, ty = t / tl->tiles_w % tl->tiles_h, tx = t % tl->tiles_w; \
            const int64_t py = ty * (M / 2), px = tx * (M / 2);                                       \
            const int64_t rows = min64(M / 2, ph - py), cols = min64(M / 2, pw - px);                 \
            if (rows <= 0 || cols <= 0) continue;                                                     \
            const float *row = m + (t - t0) * ts;                                                     \
            int64_t c = 0;                                                                            \
            for (; c + LANES <= cout; c += LANES) VTILE(row, ms, c, bias, 1, out, NULL);              \
            for (; c < cout; c++) STILE(row, ms, c, bias, 1, out, NULL);                              \
            const fc_pool_shape window_rows = { .n = 1, .h = 2, .w = M, .c = cout, .pool_h = 2, .pool_w = 2, \
                                                .stride_h = 2, .stride_w = 2, .oh = 1, .ow = cols }; \
            for (int64_t r = 0; r < rows; r++) {                                                      \
                const int64_t at = ((img * ph + py + r) * pw + px) * cout;                            \
                pool->kernels->forward_row(&window_rows, tile + 2 * r * M * cout, pool->y + at, pool->argmax + at, 0); \
            }                                                                                         \
        }                                                                                             \
    }

/* The pooled output of fc_winograd_forward_max_pooled. */
typedef struct {
    const fc_maxpool2x2_kernels *kernels;
    float *y;
    uint8_t *argmax;
} pooling;

#define AVX2 __attribute__((target("avx2,fma")))
DEFINE_INPUT_BLOCK(input2_generic, , 2, 4, input2_s, input2_s, 1, 1)
DEFINE_OUTPUT_BLOCK(output2_generic, , 2, output2_s, output2_s, 1)
DEFINE_POOLED_OUTPUT_BLOCK(pooled2_generic, , 2, output2_s, output2_s, 1)
DEFINE_INPUT_BLOCK(input4_generic, , 4, 6, input4_s, input4_s, 1, 1)
DEFINE_OUTPUT_BLOCK(output4_generic, , 4, output4_s, output4_s, 1)
DEFINE_POOLED_OUTPUT_BLOCK(pooled4_generic, , 4, output4_s, output4_s, 1)
#if defined(__x86_64__) || defined(_M_X64)
DEFINE_INPUT_BLOCK(input2_avx2, AVX2, 2, 4, input2_v8, input2_s, 8, 1)
DEFINE_OUTPUT_BLOCK(output2_avx2, AVX2, 2, output2_v8, output2_s, 8)
DEFINE_POOLED_OUTPUT_BLOCK(pooled2_avx2, AVX2, 2, output2_v8, output2_s, 8)
DEFINE_INPUT_BLOCK(input4_avx2, AVX2, 4, 6, input4_v8, input4_s, 8, 1)
DEFINE_OUTPUT_BLOCK(output4_avx2, AVX2, 4, output4_v8, output4_s, 8)
DEFINE_POOLED_OUTPUT_BLOCK(pooled4_avx2, AVX2, 4, output4_v8, output4_s, 8)
#endif

typedef void (*block_transform)(const tile_source *src, const tiling *tl, const float *zero, float *unpooled,
                                int64_t t0, int64_t count, float *v, int64_t ts, int64_t vs);
typedef struct {
    block_transform input;
    void (*output)(const fc_conv_shape *s, const tiling *tl, const float *m, int64_t ts, int64_t ms, int64_t t0, int64_t count,
                   const float *bias, int relu, const float *mask_by, float *y);
    void (*pooled_output)(const fc_conv_shape *s, const tiling *tl, const float *m, int64_t ts, int64_t ms, int64_t t0,
                          int64_t count, const float *bias, const pooling *pool, float *tile);
} transforms;

/* The transforms of tile size `tile` for the call's instruction set: the AVX2 ones wherever the GEMM
 * kernel has vectors of 8 floats or more (AVX2, AVX-512), so forcing an instruction set forces them too. */
static transforms active_transforms(const fc_gemm_kernel *kr, int tile)
{
#if defined(__x86_64__) || defined(_M_X64)
    if (kr->vector_bytes >= 32)
        return tile == 4 ? (transforms){ input4_avx2, output4_avx2, pooled4_avx2 }
                         : (transforms){ input2_avx2, output2_avx2, pooled2_avx2 };
#endif
    (void)kr;
    return tile == 4 ? (transforms){ input4_generic, output4_generic, pooled4_generic }
                     : (transforms){ input2_generic, output2_generic, pooled2_generic };
}

/* x as the source of input tiles */
static tile_source input_tiles(const fc_conv_shape *s, const float *x)
{
    const tile_source src = { x, s->h, s->w, s->cin, s->pad_top, s->pad_left, NULL, NULL };
    return src;
}

/* A tile source's buffer for the unpooled pixels of one tile of `side` pixels a side (none otherwise). */
static int64_t unpooled_floats(const tile_source *src, int side)
{
    return src->pooled ? fc_lines((side + 2) * (side + 2) * src->channels) : 0;
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

int64_t fc_winograd_workspace(const fc_conv_shape *s, int tile)
{
    const layout l = make_layout(s, tile, fc_active_float32_gemm_kernel());
    return l.shared + l.threads * l.per_thread;
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

/* The tile buffer of each thread of a pooled forward. */
static int64_t pooling_tile_floats(const fc_conv_shape *s, int tile) { return fc_lines(tile * tile * s->cout); }

/* fc_winograd_forward of the tiles of src, or with pool, fc_winograd_forward_max_pooled (y then unused). */
static int forward(const fc_conv_shape *s, int tile, const tile_source *src, const float *w, int flipped,
                   const float *bias, int relu, const float *mask_by, float *y, const pooling *pool)
{
    const fc_gemm_kernel *kr = fc_active_float32_gemm_kernel();
    layout l = make_layout(s, tile, kr);
    const transforms tf = active_transforms(kr, l.t.tile);
    const int64_t tile_floats = pool ? pooling_tile_floats(s, l.t.tile) : 0;
    const int64_t unpooled = unpooled_floats(src, l.t.tile + 2);
    l.per_thread += tile_floats + unpooled;
    float *ws = fc_scratch(FC_SCRATCH_CALL, l.shared + l.threads * l.per_thread);
    if (!ws) return FC_ERROR_NO_MEMORY;
    float *zero = ws + l.t.points * l.point;
    memset(zero, 0, sizeof(float) * (size_t)s->cin);
    const int threads = l.threads;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *v = ws + l.shared + fc_thread_num() * l.per_thread, *m = v + l.v;
        float *unpooled_tile_buffer = m + l.m + tile_floats;
        #pragma omp for schedule(static)
        for (int64_t k = 0; k < s->cin; k++) transform_kernel_row(s, &l, w, flipped, k, ws);
        /* the rows past a last, partial block's tiles that its GEMMs read (and ignore): zeros */
        const int64_t last = l.t.tiles - (l.t.blocks - 1) * l.t.block;
        memset(v + last * l.tv, 0, sizeof(float) * (size_t)((l.rows - last) * l.tv));
        #pragma omp for schedule(dynamic)
        for (int64_t b = 0; b < l.t.blocks; b++) {
            const int64_t t0 = b * l.t.block, count = min64(l.t.block, l.t.tiles - t0);
            tf.input(src, &l.t.tl, zero, unpooled_tile_buffer, t0, count, v, l.tv, s->cin);
            block_products(s, &l, kr, ws, v, count, m);
            if (pool)
                tf.pooled_output(s, &l.t.tl, m, l.tm, s->cout, t0, count, bias, pool, m + l.m);
            else
                tf.output(s, &l.t.tl, m, l.tm, s->cout, t0, count, bias, relu, mask_by, y);
        }
    }
    return FC_OK;
}

int fc_winograd_forward(const fc_conv_shape *s, int tile, const float *x, const float *w, int flipped,
                        const float *bias, int relu, const float *mask_by, float *y)
{
    const tile_source src = input_tiles(s, x);
    return forward(s, tile, &src, w, flipped, bias, relu, mask_by, y, NULL);
}

int fc_winograd_forward_max_pooled(const fc_conv_shape *s, int tile, const float *x, const float *w,
                                   const float *bias, float *pooled, uint8_t *argmax)
{
    const pooling pool = { fc_active_maxpool2x2(), pooled, argmax };
    const tile_source src = input_tiles(s, x);
    return forward(s, tile, &src, w, 0, bias, 1, NULL, NULL, &pool);
}

int fc_winograd_input_grad_from_pooled(const fc_conv_shape *t, int tile, const fc_pooled_grad *dy, const float *w,
                                       const float *mask_by, float *dx)
{
    tile_source src = input_tiles(t, NULL);
    src.pooled = dy;
    src.unpool = fc_active_maxpool2x2();
    return forward(t, tile, &src, w, 1, NULL, 0, mask_by, dx, NULL);
}

int64_t fc_winograd_max_pooled_workspace(const fc_conv_shape *s, int tile)
{
    const layout l = make_layout(s, tile, fc_active_float32_gemm_kernel());
    return l.shared + l.threads * (l.per_thread + pooling_tile_floats(s, l.t.tile));
}

/* ---- the weight gradient (winograd.h) ---- */

enum {
    WEIGHT_GRAD_PARTIALS = 4,  /* partial sums: 2 or 4 threads share them evenly */
    WEIGHT_GRAD_BLOCK_TILES = 128,  /* the most tiles a block (the products' K): each M[xi] written once per block */
    TAPS_CHUNK = 64,           /* dw elements reduced at once: each partial's point read as a stream */
};

typedef struct {
    tile_blocks t;
    int64_t partials;
    int64_t acc;                         /* floats of one partial sum: the a^2 matrices M[xi], cin x cout */
    int64_t ldv, ldw;                    /* floats from one tile's row of V (W) to the next */
    int64_t vs, ws;                      /* floats from one point's V (W) to the next */
    int64_t kc;                          /* tiles per micro-kernel call (K block) */
    int64_t shared, v, w, per_thread;
    int padded;                          /* V or W rows have columns past cin (cout) the micro-kernel reads */
    int transposed;                      /* the partial sums hold M[xi]^T (cout x cin) */
    int threads;
} weight_grad_layout;

/* The floats between the points of a block's transforms, for `floats` each: whole cache lines, one
 * more than a multiple of 4 KiB. A transform stores a tile's a^2 points at once; a multiple of 4 KiB
 * apart (96 tiles of 32 channels), those stores all fell into one L1 set and evicted each other. */
static int64_t point_stride(int64_t floats)
{
    return (floats + 1023) / 1024 * 1024 + 16;
}

/* Micro-kernel time of a product of `rows` x `cols` (rows from the operand read by columns, in MR-row
 * tiles; columns in NR-wide panels), in rows x columns: a tile runs its rows rounded up to even, and
 * one of 2 rows has too few accumulators to hide the FMA latency, so it costs as many as 4. */
static int64_t product_cost(const fc_gemm_kernel *kr, int64_t rows, int64_t cols)
{
    const int64_t last = rows % kr->mr, last_cost = last == 0 ? 0 : last <= 2 ? 4 : (last + 1) / 2 * 2;
    return (rows / kr->mr * kr->mr + last_cost) * ((cols + kr->nr - 1) / kr->nr * kr->nr);
}

/* The products M[xi] (+)= V[xi]^T @ W[xi] run on the micro-kernel directly, V (tiles x cin) and W
 * (tiles x cout) in place: one read by columns (its MR-row tiles need a row past an odd count: rows
 * of even length), the other by rows (NR-wide panels of whole rows: a multiple of NR), padding zero.
 * Which one is read by columns is whichever costs less; `transposed`: W, the sums being M[xi]^T. */
static weight_grad_layout make_weight_grad_layout(const fc_conv_shape *s, int tile, const fc_gemm_kernel *kr)
{
    weight_grad_layout l = { .t = cut_into_blocks(s, tile, kr) };
    /* Blocks of equal size (to a tile) whose count is a multiple of the partial sums': every partial
     * sum gets the same work, so 2 or 4 threads finish together. */
    l.t.blocks = (l.t.tiles + WEIGHT_GRAD_BLOCK_TILES - 1) / WEIGHT_GRAD_BLOCK_TILES;
    if (l.t.blocks > 1)
        l.t.blocks = (l.t.blocks + WEIGHT_GRAD_PARTIALS - 1) / WEIGHT_GRAD_PARTIALS * WEIGHT_GRAD_PARTIALS;
    l.t.blocks = min64(l.t.blocks, l.t.tiles);
    l.t.block = (l.t.tiles + l.t.blocks - 1) / l.t.blocks;
    l.partials = min64(l.t.blocks, WEIGHT_GRAD_PARTIALS);
    l.acc = fc_lines(l.t.points * s->cin * s->cout);
    l.shared = l.partials * l.acc + fc_lines(max64(s->cin, s->cout));  /* the partials, then a row of zeros */
    l.transposed = product_cost(kr, s->cout, s->cin) < product_cost(kr, s->cin, s->cout);
    const int64_t by_columns = 2, by_rows = kr->nr;
    l.ldv = (s->cin + (l.transposed ? by_rows : by_columns) - 1) / (l.transposed ? by_rows : by_columns) *
            (l.transposed ? by_rows : by_columns);
    l.ldw = (s->cout + (l.transposed ? by_columns : by_rows) - 1) / (l.transposed ? by_columns : by_rows) *
            (l.transposed ? by_columns : by_rows);
    l.padded = l.ldv != s->cin || l.ldw != s->cout;
    l.vs = point_stride(l.t.block * l.ldv);
    l.ws = point_stride(l.t.block * l.ldw);
    l.v = l.t.points * l.vs;
    l.w = l.t.points * l.ws;
    l.kc = kr->kc_columns_of_a;  /* a K block of A read by columns: its lines and B's panel stay in L1 */
    l.per_thread = l.v + l.w;
    l.threads = fc_threads_for_work(2.0 * s->n * s->oh * s->ow * 9 * s->cin * s->cout);
    if (l.threads > l.partials) l.threads = (int)l.partials;
    return l;
}

int64_t fc_winograd_weight_grad_workspace(const fc_conv_shape *s, int tile)
{
    const weight_grad_layout l = make_weight_grad_layout(s, tile, fc_active_float32_gemm_kernel());
    return l.shared + l.threads * l.per_thread;
}

/* The dy blocks' transforms (DEFINE_TILE_TRANSFORM); the input tiles' are the forward's. */
DEFINE_TILE_TRANSFORM(dy2_s, float, 2, 4, DY2)
DEFINE_TILE_TRANSFORM(dy2_v8, vec8, 2, 4, DY2)
DEFINE_TILE_TRANSFORM(dy4_s, float, 4, 6, DY4)
DEFINE_TILE_TRANSFORM(dy4_v8, vec8, 4, 6, DY4)

/* The weight gradient's dy blocks: without the prefetch (measured no faster); its input tiles are the
 * forward's. */
DEFINE_INPUT_BLOCK(dy2_generic, , 2, 2, dy2_s, dy2_s, 1, 0)
DEFINE_INPUT_BLOCK(dy4_generic, , 4, 4, dy4_s, dy4_s, 1, 0)
#if defined(__x86_64__) || defined(_M_X64)
DEFINE_INPUT_BLOCK(dy2_avx2, AVX2, 2, 2, dy2_v8, dy2_s, 8, 0)
DEFINE_INPUT_BLOCK(dy4_avx2, AVX2, 4, 4, dy4_v8, dy4_s, 8, 0)
#endif

typedef struct {
    block_transform input, dy;
} weight_grad_transforms;

/* As active_transforms: the AVX2 ones wherever the GEMM kernel has vectors of 8 floats or more. */
static weight_grad_transforms active_weight_grad_transforms(const fc_gemm_kernel *kr, int tile)
{
#if defined(__x86_64__) || defined(_M_X64)
    if (kr->vector_bytes >= 32)
        return tile == 4 ? (weight_grad_transforms){ input4_avx2, dy4_avx2 }
                         : (weight_grad_transforms){ input2_avx2, dy2_avx2 };
#endif
    (void)kr;
    return tile == 4 ? (weight_grad_transforms){ input4_generic, dy4_generic }
                     : (weight_grad_transforms){ input2_generic, dy2_generic };
}

/* The a^2 products of a block of k tiles, acc[xi] = V[xi]^T @ W[xi] (or its transpose) + acc[xi] when
 * add, by the micro-kernel: each MR-row tile of the operand read by columns across the other's NR-wide
 * panels (the tile stays in L1), K in blocks of at most l->kc, equal in size (as gemm.c's k_block). */
static void weight_grad_products(const fc_gemm_kernel *kr, const weight_grad_layout *l, const fc_conv_shape *s,
                                 const float *v, const float *w, int64_t k, int add, float *acc)
{
    const int64_t mr = kr->mr, nr = kr->nr, tap = s->cin * s->cout;
    const int64_t m = l->transposed ? s->cout : s->cin, n = l->transposed ? s->cin : s->cout;
    const float *a0 = l->transposed ? w : v, *b0 = l->transposed ? v : w;
    const int64_t lda = l->transposed ? l->ldw : l->ldv, ldb = l->transposed ? l->ldv : l->ldw;
    const int64_t as = l->transposed ? l->ws : l->vs, bs = l->transposed ? l->vs : l->ws;
    const int64_t k_blocks = (k + l->kc - 1) / l->kc, kc_max = (k + k_blocks - 1) / k_blocks;
    for (int xi = 0; xi < l->t.points; xi++) {
        for (int64_t pc = 0; pc < k; pc += kc_max) {
            const int64_t kc = min64(kc_max, k - pc);
            const fc_tile_epilogue ep = { .alpha = 1.0f, .beta = add || pc > 0 ? 1.0f : 0.0f };
            const float *a = a0 + xi * as + pc * lda, *b = b0 + xi * bs + pc * ldb;
            float *c = acc + xi * tap;
            for (int64_t i = 0; i < m; i += mr)
                for (int64_t j = 0; j < n; j += nr)
                    kr->ukr(kc, a + i, 1, lda, NULL, b + j, ldb, c + i * n + j, n, (int)min64(mr, m - i),
                            (int)min64(nr, n - j), &ep);
        }
    }
}

/* dw's elements e .. e + lanes - 1 of every tap from their points' sums z (point xi's at z + xi * zs):
 * G^T M G in double (T: double, or a vector of doubles). */
typedef double vec4d __attribute__((vector_size(32)));
typedef float vec4f __attribute__((vector_size(16)));
#define LOAD_1D(p) (*(p))
#define STORE_1D(p, v) (*(p) = (float)(v))
#define LOAD_4D(p) ({ vec4d d_; memcpy(&d_, (p), sizeof d_); d_; })
#define STORE_4D(p, v)                                                                                 \
    do {                                                                                               \
        const vec4f f_ = __builtin_convertvector((v), vec4f);                                          \
        memcpy((p), &f_, sizeof f_);                                                                   \
    } while (0)

#define DEFINE_WEIGHT_GRAD_TAPS(NAME, T, LOAD, STORE)                                                 \
    static inline __attribute__((always_inline)) void NAME(int tile, const double *zp, int64_t zs,     \
                                                            int64_t tap, float *dw)                   \
    {                                                                                                 \
        T z[36], t[3 * 6], r[9];                                                                      \
        for (int xi = 0; xi < (tile + 2) * (tile + 2); xi++) z[xi] = LOAD(zp + xi * zs);              \
        if (tile == 2) {                                                                              \
            for (int j = 0; j < 4; j++) TAPS2(z + j, 4, t + j, 4);      /* G^T M: 3 x 4 */            \
            for (int i = 0; i < 3; i++) TAPS2(t + 4 * i, 1, r + 3 * i, 1);  /* (G^T M) G */           \
        } else {                                                                                      \
            for (int j = 0; j < 6; j++) TAPS4(z + j, 6, t + j, 6);                                    \
            for (int i = 0; i < 3; i++) TAPS4(t + 6 * i, 1, r + 3 * i, 1);                            \
        }                                                                                             \
        for (int k = 0; k < 9; k++) STORE(dw + k * tap, r[k]);                                        \
    }
DEFINE_WEIGHT_GRAD_TAPS(weight_grad_taps_1, double, LOAD_1D, STORE_1D)
DEFINE_WEIGHT_GRAD_TAPS(weight_grad_taps_4, vec4d, LOAD_4D, STORE_4D)

/* dw's elements [e0, e1) of the partial sums (e = ci * cout + co, or co * cin + ci when transposed), of
 * every tap: the partial sums of each point added in their order in double, TAPS_CHUNK elements at a
 * time (each partial's point read as one stream, not a few floats from each of partials x a^2 pages),
 * then transformed back (the transposed ones through a buffer, to their places in dw). The AVX2 copy
 * does the same operations on 4 doubles at once (no contraction into FMAs: the same bits). */
#define DEFINE_WEIGHT_GRAD_REDUCE(NAME, ATTR)                                                          \
    ATTR static void NAME(const weight_grad_layout *l, const fc_conv_shape *s, const float *acc, int64_t e0, \
                          int64_t e1, float *dw)                                                      \
    {                                                                                                 \
        const int64_t tap = s->cin * s->cout;                                                         \
        double z[36 * TAPS_CHUNK];                                                                    \
        float out[9 * TAPS_CHUNK];                                                                    \
        for (int64_t e = e0; e < e1; e += TAPS_CHUNK) {                                               \
            const int64_t n = min64(TAPS_CHUNK, e1 - e);                                              \
            for (int xi = 0; xi < l->t.points; xi++) {                                                \
                double *zx = z + xi * TAPS_CHUNK;                                                     \
                const float *a = acc + xi * tap + e;                                                  \
                for (int64_t i = 0; i < n; i++) zx[i] = a[i];                                         \
                for (int64_t part = 1; part < l->partials; part++)                                    \
                    for (int64_t i = 0; i < n; i++) zx[i] += a[part * l->acc + i];                    \
            }                                                                                         \
            float *o = l->transposed ? out : dw + e;                                                  \
            const int64_t os = l->transposed ? TAPS_CHUNK : tap;                                      \
            int64_t i = 0;                                                                            \
            for (; i + 4 <= n; i += 4) weight_grad_taps_4(l->t.tile, z + i, TAPS_CHUNK, os, o + i);   \
            for (; i < n; i++) weight_grad_taps_1(l->t.tile, z + i, TAPS_CHUNK, os, o + i);           \
            if (l->transposed)                                                                        \
                for (int k = 0; k < 9; k++)                                                           \
                    for (i = 0; i < n; i++)                                                           \
                        dw[k * tap + (e + i) % s->cin * s->cout + (e + i) / s->cin] = out[k * TAPS_CHUNK + i]; \
        }                                                                                             \
    }
DEFINE_WEIGHT_GRAD_REDUCE(weight_grad_reduce_generic, )
#if defined(__x86_64__) || defined(_M_X64)
DEFINE_WEIGHT_GRAD_REDUCE(weight_grad_reduce_avx2, __attribute__((target("avx2"))))
#endif

/* fc_winograd_weight_grad with dy's blocks cut from dys. */
static int weight_grad(const fc_conv_shape *s, int tile, const float *x, const tile_source *dys, float *dw)
{
    const fc_gemm_kernel *kr = fc_active_float32_gemm_kernel();
    weight_grad_layout l = make_weight_grad_layout(s, tile, kr);
    const int64_t unpooled = unpooled_floats(dys, l.t.tile);
    l.per_thread += unpooled;
    const weight_grad_transforms tf = active_weight_grad_transforms(kr, l.t.tile);
    void (*reduce)(const weight_grad_layout *, const fc_conv_shape *, const float *, int64_t, int64_t, float *) =
        weight_grad_reduce_generic;
#if defined(__x86_64__) || defined(_M_X64)
    if (kr->vector_bytes >= 32) reduce = weight_grad_reduce_avx2;
#endif
    float *ws = fc_scratch(FC_SCRATCH_CALL, l.shared + l.threads * l.per_thread);
    if (!ws) return FC_ERROR_NO_MEMORY;
    float *zero = ws + l.partials * l.acc;
    memset(zero, 0, sizeof(float) * (size_t)max64(s->cin, s->cout));
    const tile_source xs = input_tiles(s, x);
    const int64_t tap = s->cin * s->cout;
    const int threads = l.threads;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *v = ws + l.shared + fc_thread_num() * l.per_thread, *w = v + l.v, *unpooled_tile_buffer = w + l.w;
        if (l.padded) memset(v, 0, sizeof(float) * (size_t)(l.v + l.w));  /* the columns the transforms skip */
        #pragma omp for schedule(dynamic)
        for (int64_t part = 0; part < l.partials; part++) {
            for (int64_t b = part; b < l.t.blocks; b += l.partials) {
                const int64_t t0 = l.t.tiles * b / l.t.blocks, count = l.t.tiles * (b + 1) / l.t.blocks - t0;
                tf.input(&xs, &l.t.tl, zero, NULL, t0, count, v, l.ldv, l.vs);
                tf.dy(dys, &l.t.tl, zero, unpooled_tile_buffer, t0, count, w, l.ldw, l.ws);
                weight_grad_products(kr, &l, s, v, w, count, b != part, ws + part * l.acc);
            }
        }
        #pragma omp for schedule(static)
        for (int64_t e0 = 0; e0 < tap; e0 += 256) reduce(&l, s, ws, e0, min64(e0 + 256, tap), dw);
    }
    return FC_OK;
}

int fc_winograd_weight_grad(const fc_conv_shape *s, int tile, const float *x, const float *dy, float *dw)
{
    const tile_source dys = { dy, s->oh, s->ow, s->cout, 0, 0, NULL, NULL };
    return weight_grad(s, tile, x, &dys, dw);
}

int fc_winograd_weight_grad_from_pooled(const fc_conv_shape *s, int tile, const float *x, const fc_pooled_grad *dy,
                                        float *dw)
{
    const tile_source dys = { NULL, s->oh, s->ow, s->cout, 0, 0, dy, fc_active_maxpool2x2() };
    return weight_grad(s, tile, x, &dys, dw);
}
