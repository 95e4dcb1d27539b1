/* Max and average pooling over NHWC images. Loops run over the channels innermost, where the data
 * is contiguous, so the compiler vectorises them (selects, no branches). Backward passes give each
 * image to one thread: overlapping windows then scatter into dx without atomics, in a fixed order.
 * Max pooling 2x2 with stride 2 and no padding (the CNN default) has its own path: each window is
 * read once and its four dx values written once, so the backward pass needs no zeroing pass and no
 * scatter, and rows of windows can go to any thread. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

/* out = the first maximum of windows a b / c d over n channels (scalar tail past the vectors). */
static void max_2x2(int64_t n, const float *a, const float *b, const float *c, const float *d, float *out)
{
    int64_t ch = 0;
    for (; ch + 4 <= n; ch += 4) {
        vf4 best = load4(a + ch), v = load4(b + ch);
        best = select4(beats4(v, best), v, best);
        v = load4(c + ch);
        best = select4(beats4(v, best), v, best);
        v = load4(d + ch);
        store4(out + ch, select4(beats4(v, best), v, best));
    }
    for (; ch < n; ch++) {
        float best = a[ch];
        best = beats(b[ch], best) ? b[ch] : best;
        best = beats(c[ch], best) ? c[ch] : best;
        out[ch] = beats(d[ch], best) ? d[ch] : best;
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
        const vf4 va = load4(a + ch), vb = load4(b + ch), vc = load4(c + ch), vd = load4(d + ch);
        const vi4 ta = beats4(va, (vf4){0} - INFINITY);
        vf4 best = select4(ta, va, (vf4){0} - INFINITY);
        const vi4 tb = beats4(vb, best);
        best = select4(tb, vb, best);
        const vi4 tc = beats4(vc, best);
        best = select4(tc, vc, best);
        const vi4 td = beats4(vd, best);
        best = select4(td, vd, best);
        const vi4 gv = (vi4)load4(g + ch) & (x_from_relu ? (best > (vf4){0}) : ~(vi4){0});
        store4(dd + ch, (vf4)(gv & td));
        store4(dc + ch, (vf4)(gv & tc & ~td));
        store4(db + ch, (vf4)(gv & tb & ~tc & ~td));
        store4(da + ch, (vf4)(gv & ta & ~tb & ~tc & ~td));
    }
    for (; ch < n; ch++) {
        float best = -INFINITY;
        int which = -1;
        if (beats(a[ch], best)) { best = a[ch]; which = 0; }
        if (beats(b[ch], best)) { best = b[ch]; which = 1; }
        if (beats(c[ch], best)) { best = c[ch]; which = 2; }
        if (beats(d[ch], best)) { best = d[ch]; which = 3; }
        if (x_from_relu && !(best > 0.0f)) which = -1;
        da[ch] = which == 0 ? g[ch] : 0.0f;
        db[ch] = which == 1 ? g[ch] : 0.0f;
        dc[ch] = which == 2 ? g[ch] : 0.0f;
        dd[ch] = which == 3 ? g[ch] : 0.0f;
    }
}

/* Output row `row` (over n * oh) of the 2x2 stride-2 max pool: the first maximum of a, b, c, d. */
static void maxpool_2x2_row(const fc_pool_shape *s, const float *x, float *y, int64_t row)
{
    const int64_t img = row / s->oh, oy = row % s->oh, ld = s->w * s->c;
    const float *top = x + (img * s->h + 2 * oy) * ld, *bottom = top + ld;
    float *out = y + row * s->ow * s->c;
    for (int64_t ox = 0; ox < s->ow; ox++) {
        const int64_t at = 2 * ox * s->c;
        max_2x2(s->c, top + at, top + at + s->c, bottom + at, bottom + at + s->c, out + ox * s->c);
    }
}

/* dx rows 2*oy, 2*oy + 1 of output row `row`: dy to each window's first maximum, zero elsewhere
 * (and nowhere for a window of nothing but -inf, as in the general path). */
static void maxpool_2x2_backward_row(const fc_pool_shape *s, const float *dy, const float *x, int x_from_relu,
                                     float *dx, int64_t row)
{
    const int64_t img = row / s->oh, oy = row % s->oh, ld = s->w * s->c;
    const int64_t offset = (img * s->h + 2 * oy) * ld;
    const float *top = x + offset, *bottom = top + ld, *g = dy + row * s->ow * s->c;
    float *dtop = dx + offset, *dbottom = dtop + ld;
    for (int64_t ox = 0; ox < s->ow; ox++) {
        const int64_t at = 2 * ox * s->c;
        max_2x2_backward(s->c, top + at, top + at + s->c, bottom + at, bottom + at + s->c, g + ox * s->c,
                         x_from_relu, dtop + at, dtop + at + s->c, dbottom + at, dbottom + at + s->c);
    }
    if (s->w > 2 * s->ow) {  /* an odd last column belongs to no window */
        memset(dtop + 2 * s->ow * s->c, 0, sizeof(float) * (size_t)((s->w - 2 * s->ow) * s->c));
        memset(dbottom + 2 * s->ow * s->c, 0, sizeof(float) * (size_t)((s->w - 2 * s->ow) * s->c));
    }
    if (oy == s->oh - 1 && s->h > 2 * s->oh)  /* so do the last rows */
        memset(dbottom + ld, 0, sizeof(float) * (size_t)((s->h - 2 * s->oh - 1) * ld + ld));
}

void fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y)
{
    const int threads = threads_for(s);
    if (is_2x2_stride_2(s)) {
        #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t row = 0; row < s->n * s->oh; row++) maxpool_2x2_row(s, x, y, row);
        return;
    }
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t row = 0; row < s->n * s->oh; row++) {
        const int64_t img = row / s->oh, oy = row % s->oh;
        for (int64_t ox = 0; ox < s->ow; ox++) {
            float *out = y + (row * s->ow + ox) * s->c;
            int64_t y0, y1, x0, x1;
            window(s, oy, ox, &y0, &y1, &x0, &x1);
            for (int64_t c = 0; c < s->c; c++) out[c] = -INFINITY;
            for (int64_t iy = y0; iy < y1; iy++) {
                for (int64_t ix = x0; ix < x1; ix++) {
                    const float *in = x + ((img * s->h + iy) * s->w + ix) * s->c;
                    for (int64_t c = 0; c < s->c; c++) out[c] = beats(in[c], out[c]) ? in[c] : out[c];
                }
            }
        }
    }
}

void fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const float *x, int x_from_relu, float *dx)
{
    const int threads = threads_for(s);
    if (is_2x2_stride_2(s)) {
        #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t row = 0; row < s->n * s->oh; row++) maxpool_2x2_backward_row(s, dy, x, x_from_relu, dx, row);
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
