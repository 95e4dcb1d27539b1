/* Max and average pooling over NHWC images. Loops run over the channels innermost, where the data
 * is contiguous, so the compiler vectorises them (selects, no branches). Backward passes give each
 * image to one thread: overlapping windows then scatter into dx without atomics, in a fixed order.
 * Max pooling 2x2 with stride 2 and no padding (the CNN default) has its own per-ISA kernels
 * (maxpool2x2.h), whose rows of windows can go to any thread. When training, the forward pass also
 * records each window's argmax in a byte (fastconv.h), and the backward pass reads that instead of x. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "../fastconv.h"
#include "../dispatch.h"
#include "../workspace.h"
#include "maxpool2x2.h"

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

static int threads_for(const fc_pool_shape *s)
{
    return fc_threads_for_values((double)s->n * s->oh * s->ow * s->c * s->pool_h * s->pool_w);
}

static int is_2x2_stride_2(const fc_pool_shape *s)
{
    return s->pool_h == 2 && s->pool_w == 2 && s->stride_h == 2 && s->stride_w == 2 && s->pad_top == 0 &&
           s->pad_left == 0 && 2 * s->oh <= s->h && 2 * s->ow <= s->w;
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

static void maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y, uint8_t *argmax)
{
    const int threads = threads_for(s);
    if (is_2x2_stride_2(s)) {
        const fc_maxpool2x2_kernels *kernels = fc_active_maxpool2x2();
        #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t row = 0; row < s->n * s->oh; row++) kernels->forward_row(s, x, y, argmax, row);
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
                        const int take = fc_pool_beats(in[c], out[c]);
                        out[c] = take ? in[c] : out[c];
                        if (arg && take) arg[c] = tap;
                    }
                }
            }
            if (arg)
                for (int64_t c = 0; c < s->c; c++) arg[c] = fc_argmax_byte(arg[c], out[c]);
        }
    }
}

int fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y, uint8_t *argmax)
{
    fc_call_begin();
    maxpool2d_forward(s, x, y, argmax);
    return fc_call_end(FC_OK);
}

static int maxpool2d_backward(const fc_pool_shape *s, const float *dy, const float *x, const uint8_t *argmax,
                              int x_from_relu, float *dx)
{
    const int threads = threads_for(s);
    if (is_2x2_stride_2(s)) {
        const fc_maxpool2x2_kernels *kernels = fc_active_maxpool2x2();
        #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t row = 0; row < s->n * s->oh; row++)
            kernels->backward_row(s, dy, x, argmax, x_from_relu, dx, row);
        return FC_OK;
    }
    if (argmax) {
        maxpool_backward_from_argmax(s, dy, argmax, x_from_relu, dx);
        return FC_OK;
    }
    /* per thread: each channel's best value so far and where it is (int64, two floats each) */
    const int64_t slice = fc_lines(s->c) + fc_lines(2 * s->c);
    float *ws = fc_scratch(FC_SCRATCH_CALL, threads * slice);
    if (!ws) return FC_ERROR_NO_MEMORY;
    memset(dx, 0, sizeof(float) * (size_t)(s->n * s->h * s->w * s->c));
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *best = ws + fc_thread_num() * slice;
        int64_t *where = (int64_t *)(best + fc_lines(s->c));
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
                                const int take = fc_pool_beats(image[offset + c], best[c]);
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
    return FC_OK;
}

int fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const float *x, const uint8_t *argmax,
                          int x_from_relu, float *dx)
{
    fc_call_begin();
    return fc_call_end(maxpool2d_backward(s, dy, x, argmax, x_from_relu, dx));
}

int fc_avgpool2d_forward(const fc_pool_shape *s, const float *x, float *y)
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
    return FC_OK;
}

int fc_avgpool2d_backward(const fc_pool_shape *s, const float *dy, float *dx)
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
    return FC_OK;
}
