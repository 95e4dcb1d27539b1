/* Max and average pooling over NHWC images. Loops run over the channels innermost, where the data
 * is contiguous, so the compiler vectorises them. Backward passes give each image to one thread:
 * overlapping windows then scatter into dx without atomics, in a fixed order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../fastconv.h"
#include "../dispatch.h"

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
static inline int beats(float v, float best) { return v > best || (v != v && best == best); }

static int threads_for(const fc_pool_shape *s)
{
    return fc_threads_for_work((double)s->n * s->oh * s->ow * s->c * s->pool_h * s->pool_w);
}

void fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y)
{
    const int threads = threads_for(s);
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

void fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const float *x, float *dx)
{
    const int threads = threads_for(s);
    memset(dx, 0, sizeof(float) * (size_t)(s->n * s->h * s->w * s->c));
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *best = malloc(sizeof(float) * (size_t)s->c);
        int64_t *where = malloc(sizeof(int64_t) * (size_t)s->c);
        if (!best || !where) abort();
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
                        if (where[c] >= 0) grad[where[c]] += g[c];
                }
            }
        }
        free(best);
        free(where);
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
