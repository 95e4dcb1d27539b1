/* Max and average pooling over NHWC images. Loops run over the channels innermost, where the data
 * is contiguous, so the compiler vectorises them (selects, no branches). Backward passes give each
 * image to one thread: overlapping windows then scatter into dx without atomics, in a fixed order.
 * Max pooling 2x2 with stride 2 and no padding (the CNN default) has its own path: each window is
 * read once and its four dx values written once, so the backward pass needs no zeroing pass and no
 * scatter, and rows of windows can go to any thread. When training, the forward pass also records
 * each window's argmax in a byte (fastconv.h), and the backward pass reads that instead of x. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../fastconv.h"
#include "../dispatch.h"
#include "../workspace.h"

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* The window of output pixel (oy, ox) clipped to the image: rows [*y0, *y1), cols [*x0, *x1). */
static void window(const fc_pool_shape *s, int64_t oy, int64_t ox, int64_t *y0, int64_t *y1, int64_t *x0, int64_t *x1)
{
    const int64_t top = oy * s->stride_h - s->pad_top, left = ox * s->stride_w - s->pad_left;
    *y0 = max64(top, 0);
    *y1 = min64(top + s->pool_h, s->h);
    *x0 = max64(left, 0);
    *x1 = min64(left + s->pool_w, s->w);
}

/* True when v should replace the current maximum: strictly greater keeps the first maximum in
 * row-major order, and the first NaN wins so that NaN propagates. */
static inline int beats(float v, float best) { return (v > best) | ((v != v) & (best == best)); }

static int threads_for(const fc_pool_shape *s)
{
    return fc_threads_for_values((double)s->n * s->oh * s->ow * s->c * s->pool_h * s->pool_w);
}

static int is_2x2_stride_2(const fc_pool_shape *s)
{
    return s->pool_h == 2 && s->pool_w == 2 && s->stride_h == 2 && s->stride_w == 2 && s->pad_top == 0 &&
           s->pad_left == 0 && 2 * s->oh <= s->h && 2 * s->ow <= s->w;
}

/* The 2x2 windows in 4-float vectors (GCC/Clang vector extensions: SSE on any x86-64, NEON on
 * ARM): the compiler does not vectorise the scalar selects itself, as float compares may trap. */
typedef float vf4 __attribute__((vector_size(16)));
typedef int32_t vi4 __attribute__((vector_size(16)));

static inline vf4 load4(const float *p) { vf4 v; memcpy(&v, p, sizeof v); return v; }
static inline void store4(float *p, vf4 v) { memcpy(p, &v, sizeof v); }
static inline vi4 beats4(vf4 v, vf4 best) { return (v > best) | ((v != v) & (best == best)); }
static inline vf4 select4(vi4 take, vf4 v, vf4 other) { return (vf4)((take & (vi4)v) | (~take & (vi4)other)); }

/* 4 argmax bytes to and from the lanes of a vi4 (values 0..255). */
#if defined(__SSE2__)
static inline vi4 load_bytes4(const uint8_t *p)
{
    int32_t bytes;
    memcpy(&bytes, p, sizeof bytes);
    const __m128i zero = _mm_setzero_si128();
    return (vi4)_mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(bytes), zero), zero);
}
static inline void store_bytes4(uint8_t *p, vi4 v)
{
    const __m128i words = _mm_packs_epi32((__m128i)v, (__m128i)v);
    const int32_t bytes = _mm_cvtsi128_si32(_mm_packus_epi16(words, words));
    memcpy(p, &bytes, sizeof bytes);
}
#else
typedef uint8_t vb4 __attribute__((vector_size(4)));
static inline vi4 load_bytes4(const uint8_t *p)
{
    vb4 v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, vi4);
}
static inline void store_bytes4(uint8_t *p, vi4 v)
{
    const vb4 b = __builtin_convertvector(v, vb4);
    memcpy(p, &b, sizeof b);
}
#endif

/* The argmax byte of a window (fastconv.h): the tap of its first maximum, flagged when that is not > 0. */
static inline uint8_t argmax_byte(int tap, float best)
{
    return (uint8_t)(tap | (best > 0.0f ? 0 : FC_ARGMAX_NOT_POSITIVE));
}

/* Four channels of four 2x2 windows a b / c d: the first maximum (row-major; the first NaN wins) and,
 * per tap, whether it beat the running maximum (the last tap that did holds the maximum). */
typedef struct { vf4 best; vi4 ta, tb, tc, td; } first_max4;

static inline first_max4 find_first_max4(const float *a, const float *b, const float *c, const float *d)
{
    first_max4 r;
    const vf4 va = load4(a), vb = load4(b), vc = load4(c), vd = load4(d);
    r.ta = beats4(va, (vf4){0} - INFINITY);
    r.best = select4(r.ta, va, (vf4){0} - INFINITY);  /* == va, also when va is -inf */
    r.tb = beats4(vb, r.best);
    r.best = select4(r.tb, vb, r.best);
    r.tc = beats4(vc, r.best);
    r.best = select4(r.tc, vc, r.best);
    r.td = beats4(vd, r.best);
    r.best = select4(r.td, vd, r.best);
    return r;
}

/* One channel: the tap (0..3) of the first maximum of a b / c d, or FC_ARGMAX_NONE when all are -inf. */
static inline int first_max_tap(float a, float b, float c, float d, float *best)
{
    int tap = FC_ARGMAX_NONE;
    *best = -INFINITY;
    if (beats(a, *best)) { *best = a; tap = 0; }
    if (beats(b, *best)) { *best = b; tap = 1; }
    if (beats(c, *best)) { *best = c; tap = 2; }
    if (beats(d, *best)) { *best = d; tap = 3; }
    return tap;
}

/* out = the first maximum of windows a b / c d over n channels (scalar tail past the vectors), and
 * its argmax bytes when arg is not NULL. */
static void max_2x2(int64_t n, const float *a, const float *b, const float *c, const float *d, float *out,
                    uint8_t *arg)
{
    int64_t ch = 0;
    for (; ch + 4 <= n; ch += 4) {
        const first_max4 w = find_first_max4(a + ch, b + ch, c + ch, d + ch);
        store4(out + ch, w.best);
        if (arg) {
            /* the last tap that beat the running maximum; none for a window of nothing but -inf */
            const vi4 tap = (w.td & 3) |
                            (~w.td & ((w.tc & 2) | (~w.tc & ((w.tb & 1) | (~w.tb & ~w.ta & FC_ARGMAX_NONE)))));
            store_bytes4(arg + ch, tap | (~(w.best > (vf4){0}) & FC_ARGMAX_NOT_POSITIVE));
        }
    }
    for (; ch < n; ch++) {
        float best;
        const int tap = first_max_tap(a[ch], b[ch], c[ch], d[ch], &best);
        out[ch] = best;
        if (arg) arg[ch] = argmax_byte(tap, best);
    }
}

/* dy (g) to each window's first maximum, zero to the other three; a window of nothing but -inf
 * passes no gradient, as in the general path. With x_from_relu, neither does a window whose maximum
 * is not > 0 (the ReLU that produced x passes no gradient there). */
static void max_2x2_backward(int64_t n, const float *a, const float *b, const float *c, const float *d,
                             const float *g, int x_from_relu, float *da, float *db, float *dc, float *dd)
{
    int64_t ch = 0;
    for (; ch + 4 <= n; ch += 4) {
        const first_max4 w = find_first_max4(a + ch, b + ch, c + ch, d + ch);
        const vi4 gv = (vi4)load4(g + ch) & (x_from_relu ? (w.best > (vf4){0}) : ~(vi4){0});
        store4(dd + ch, (vf4)(gv & w.td));
        store4(dc + ch, (vf4)(gv & w.tc & ~w.td));
        store4(db + ch, (vf4)(gv & w.tb & ~w.tc & ~w.td));
        store4(da + ch, (vf4)(gv & w.ta & ~w.tb & ~w.tc & ~w.td));
    }
    for (; ch < n; ch++) {
        float best;
        int which = first_max_tap(a[ch], b[ch], c[ch], d[ch], &best);
        if (x_from_relu && !(best > 0.0f)) which = -1;
        da[ch] = which == 0 ? g[ch] : 0.0f;
        db[ch] = which == 1 ? g[ch] : 0.0f;
        dc[ch] = which == 2 ? g[ch] : 0.0f;
        dd[ch] = which == 3 ? g[ch] : 0.0f;
    }
}

/* The same from the argmax bytes the forward pass recorded: dy to the recorded tap, zero elsewhere. */
static void max_2x2_backward_argmax(int64_t n, const uint8_t *arg, const float *g, int x_from_relu, float *da,
                                    float *db, float *dc, float *dd)
{
    const uint8_t skip = x_from_relu ? FC_ARGMAX_NOT_POSITIVE : 0;
    int64_t ch = 0;
    for (; ch + 4 <= n; ch += 4) {
        const vi4 t = load_bytes4(arg + ch), tap = t & FC_ARGMAX_NONE;
        const vi4 v = (vi4)load4(g + ch) & ((t & skip) == 0);
        store4(da + ch, (vf4)(v & (tap == 0)));
        store4(db + ch, (vf4)(v & (tap == 1)));
        store4(dc + ch, (vf4)(v & (tap == 2)));
        store4(dd + ch, (vf4)(v & (tap == 3)));
    }
    for (; ch < n; ch++) {
        const uint8_t t = arg[ch];
        const float v = (t & skip) ? 0.0f : g[ch];
        const uint8_t tap = t & FC_ARGMAX_NONE;
        da[ch] = tap == 0 ? v : 0.0f;
        db[ch] = tap == 1 ? v : 0.0f;
        dc[ch] = tap == 2 ? v : 0.0f;
        dd[ch] = tap == 3 ? v : 0.0f;
    }
}

/* Output row `row` (over n * oh) of the 2x2 stride-2 max pool: the first maximum of a, b, c, d. */
static void maxpool_2x2_row(const fc_pool_shape *s, const float *x, float *y, uint8_t *argmax, int64_t row)
{
    const int64_t img = row / s->oh, oy = row % s->oh, ld = s->w * s->c;
    const float *top = x + (img * s->h + 2 * oy) * ld, *bottom = top + ld;
    float *out = y + row * s->ow * s->c;
    uint8_t *arg = argmax ? argmax + row * s->ow * s->c : NULL;
    for (int64_t ox = 0; ox < s->ow; ox++) {
        const int64_t at = 2 * ox * s->c;
        max_2x2(s->c, top + at, top + at + s->c, bottom + at, bottom + at + s->c, out + ox * s->c,
                arg ? arg + ox * s->c : NULL);
    }
}

/* dx rows 2*oy, 2*oy + 1 of output row `row`: dy to each window's first maximum, zero elsewhere
 * (and nowhere for a window of nothing but -inf, as in the general path). */
static void maxpool_2x2_backward_row(const fc_pool_shape *s, const float *dy, const float *x, const uint8_t *argmax,
                                     int x_from_relu, float *dx, int64_t row)
{
    const int64_t img = row / s->oh, oy = row % s->oh, ld = s->w * s->c;
    const int64_t offset = (img * s->h + 2 * oy) * ld;
    const float *g = dy + row * s->ow * s->c;
    float *dtop = dx + offset, *dbottom = dtop + ld;
    for (int64_t ox = 0; ox < s->ow; ox++) {
        const int64_t at = 2 * ox * s->c;
        if (argmax) {
            max_2x2_backward_argmax(s->c, argmax + (row * s->ow + ox) * s->c, g + ox * s->c, x_from_relu, dtop + at,
                                    dtop + at + s->c, dbottom + at, dbottom + at + s->c);
        } else {
            const float *top = x + offset + at, *bottom = top + ld;
            max_2x2_backward(s->c, top, top + s->c, bottom, bottom + s->c, g + ox * s->c, x_from_relu, dtop + at,
                             dtop + at + s->c, dbottom + at, dbottom + at + s->c);
        }
    }
    if (s->w > 2 * s->ow) {  /* an odd last column belongs to no window */
        memset(dtop + 2 * s->ow * s->c, 0, sizeof(float) * (size_t)((s->w - 2 * s->ow) * s->c));
        memset(dbottom + 2 * s->ow * s->c, 0, sizeof(float) * (size_t)((s->w - 2 * s->ow) * s->c));
    }
    if (oy == s->oh - 1 && s->h > 2 * s->oh)  /* so do the last rows */
        memset(dbottom + ld, 0, sizeof(float) * (size_t)((s->h - 2 * s->oh - 1) * ld + ld));
}

/* The general backward pass from the argmax bytes: one image per thread scatters each window's
 * gradient to its recorded tap (bytes that point outside the image, or at no tap, pass nothing). */
static void maxpool_backward_from_argmax(const fc_pool_shape *s, const float *dy, const uint8_t *argmax,
                                         int x_from_relu, float *dx)
{
    const int threads = threads_for(s);
    const uint8_t skip = x_from_relu ? FC_ARGMAX_NOT_POSITIVE : 0;
    memset(dx, 0, sizeof(float) * (size_t)(s->n * s->h * s->w * s->c));
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t img = 0; img < s->n; img++) {
        float *grad = dx + img * s->h * s->w * s->c;
        for (int64_t oy = 0; oy < s->oh; oy++) {
            for (int64_t ox = 0; ox < s->ow; ox++) {
                const int64_t at = ((img * s->oh + oy) * s->ow + ox) * s->c;
                for (int64_t c = 0; c < s->c; c++) {
                    const uint8_t t = argmax[at + c], tap = t & FC_ARGMAX_NONE;
                    if ((t & skip) || tap >= s->pool_h * s->pool_w) continue;
                    const int64_t iy = oy * s->stride_h - s->pad_top + tap / s->pool_w;
                    const int64_t ix = ox * s->stride_w - s->pad_left + tap % s->pool_w;
                    if (iy >= 0 && iy < s->h && ix >= 0 && ix < s->w) grad[(iy * s->w + ix) * s->c + c] += dy[at + c];
                }
            }
        }
    }
}

void fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y, uint8_t *argmax)
{
    const int threads = threads_for(s);
    if (is_2x2_stride_2(s)) {
        #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t row = 0; row < s->n * s->oh; row++) maxpool_2x2_row(s, x, y, argmax, row);
        return;
    }
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t row = 0; row < s->n * s->oh; row++) {
        const int64_t img = row / s->oh, oy = row % s->oh;
        for (int64_t ox = 0; ox < s->ow; ox++) {
            float *out = y + (row * s->ow + ox) * s->c;
            uint8_t *arg = argmax ? argmax + (row * s->ow + ox) * s->c : NULL;
            int64_t y0, y1, x0, x1;
            window(s, oy, ox, &y0, &y1, &x0, &x1);
            for (int64_t c = 0; c < s->c; c++) out[c] = -INFINITY;
            if (arg) memset(arg, FC_ARGMAX_NONE, (size_t)s->c);
            for (int64_t iy = y0; iy < y1; iy++) {
                for (int64_t ix = x0; ix < x1; ix++) {
                    const float *in = x + ((img * s->h + iy) * s->w + ix) * s->c;
                    const uint8_t tap = (uint8_t)((iy - (oy * s->stride_h - s->pad_top)) * s->pool_w +
                                                  ix - (ox * s->stride_w - s->pad_left));
                    for (int64_t c = 0; c < s->c; c++) {
                        const int take = beats(in[c], out[c]);
                        out[c] = take ? in[c] : out[c];
                        if (arg && take) arg[c] = tap;
                    }
                }
            }
            if (arg)
                for (int64_t c = 0; c < s->c; c++) arg[c] = argmax_byte(arg[c], out[c]);
        }
    }
}

void fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const float *x, const uint8_t *argmax,
                           int x_from_relu, float *dx)
{
    const int threads = threads_for(s);
    if (is_2x2_stride_2(s)) {
        #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t row = 0; row < s->n * s->oh; row++)
            maxpool_2x2_backward_row(s, dy, x, argmax, x_from_relu, dx, row);
        return;
    }
    if (argmax) {
        maxpool_backward_from_argmax(s, dy, argmax, x_from_relu, dx);
        return;
    }
    memset(dx, 0, sizeof(float) * (size_t)(s->n * s->h * s->w * s->c));
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *best = fc_scratch(FC_SCRATCH_A, s->c);
        int64_t *where = (int64_t *)fc_scratch(FC_SCRATCH_B, 2 * s->c);
        #pragma omp for schedule(static)
        for (int64_t img = 0; img < s->n; img++) {
            const float *image = x + img * s->h * s->w * s->c;
            float *grad = dx + img * s->h * s->w * s->c;
            for (int64_t oy = 0; oy < s->oh; oy++) {
                for (int64_t ox = 0; ox < s->ow; ox++) {
                    const float *g = dy + ((img * s->oh + oy) * s->ow + ox) * s->c;
                    int64_t y0, y1, x0, x1;
                    window(s, oy, ox, &y0, &y1, &x0, &x1);
                    for (int64_t c = 0; c < s->c; c++) { best[c] = -INFINITY; where[c] = -1; }
                    for (int64_t iy = y0; iy < y1; iy++) {
                        for (int64_t ix = x0; ix < x1; ix++) {
                            const int64_t offset = (iy * s->w + ix) * s->c;
                            for (int64_t c = 0; c < s->c; c++) {
                                const int take = beats(image[offset + c], best[c]);
                                best[c] = take ? image[offset + c] : best[c];
                                where[c] = take ? offset + c : where[c];
                            }
                        }
                    }
                    /* A window of nothing but -inf has no maximum to pass its gradient to. */
                    for (int64_t c = 0; c < s->c; c++)
                        if (where[c] >= 0 && (!x_from_relu || best[c] > 0.0f)) grad[where[c]] += g[c];
                }
            }
        }
    }
}

void fc_avgpool2d_forward(const fc_pool_shape *s, const float *x, float *y)
{
    const int threads = threads_for(s);
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t row = 0; row < s->n * s->oh; row++) {
        const int64_t img = row / s->oh, oy = row % s->oh;
        for (int64_t ox = 0; ox < s->ow; ox++) {
            float *out = y + (row * s->ow + ox) * s->c;
            int64_t y0, y1, x0, x1;
            window(s, oy, ox, &y0, &y1, &x0, &x1);
            const float count = (float)((y1 - y0) * (x1 - x0));  /* padding is not part of the mean */
            for (int64_t c = 0; c < s->c; c++) out[c] = 0.0f;
            for (int64_t iy = y0; iy < y1; iy++)
                for (int64_t ix = x0; ix < x1; ix++) {
                    const float *in = x + ((img * s->h + iy) * s->w + ix) * s->c;
                    for (int64_t c = 0; c < s->c; c++) out[c] += in[c];
                }
            for (int64_t c = 0; c < s->c; c++) out[c] /= count;
        }
    }
}

void fc_avgpool2d_backward(const fc_pool_shape *s, const float *dy, float *dx)
{
    const int threads = threads_for(s);
    memset(dx, 0, sizeof(float) * (size_t)(s->n * s->h * s->w * s->c));
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t img = 0; img < s->n; img++) {
        for (int64_t oy = 0; oy < s->oh; oy++) {
            for (int64_t ox = 0; ox < s->ow; ox++) {
                const float *g = dy + ((img * s->oh + oy) * s->ow + ox) * s->c;
                int64_t y0, y1, x0, x1;
                window(s, oy, ox, &y0, &y1, &x0, &x1);
                const float count = (float)((y1 - y0) * (x1 - x0));
                for (int64_t iy = y0; iy < y1; iy++)
                    for (int64_t ix = x0; ix < x1; ix++) {
                        float *d = dx + ((img * s->h + iy) * s->w + ix) * s->c;
                        for (int64_t c = 0; c < s->c; c++) d[c] += g[c] / count;
                    }
            }
        }
    }
}
