/* A convolution with ReLU fused with the 2x2, stride-2 max pooling after it, where the conv runs on the
 * direct kernels (few input channels: a network's first layer) or as Winograd.
 *
 * Direct: each image's convolution output goes through a buffer of the thread's own, which stays in its
 * cache, instead of through memory; the forward pass keeps only the pooled values and the argmax bytes,
 * and the weight gradient rebuilds an image's gradient at the ReLU's input from them (the argmax byte
 * says where the maximum was and whether it was > 0) in the same buffer. Same kernels, same values, and
 * dw summed over the same blocks into the same partial sums as the unfused conv2d -> maxpool2d ->
 * maxpool2d_backward -> conv2d_backward: the same bits. Winograd: the output transform pools each tile
 * (fc_winograd_forward_max_pooled), and the backward passes rebuild the conv output's gradient tile by
 * tile from the pooled gradient and the argmax bytes (winograd.h's fc_pooled_grad), db in the blocks and
 * partial sums of conv_blocks_backward: the conv output and its gradient never go through memory. */
#include <stddef.h>
#include <string.h>

#include "plan.h"
#include "winograd.h"
#include "../pool/maxpool2x2.h"

int fc_conv2d_relu_maxpool2x2_applies(const fc_conv_shape *s, int algo)
{
    fc_call_begin();
    conv_plan p;
    conv_make_plan(s, algo, FC_CONV_PASS_FORWARD, &p);
    const int path = p.forward == PATH_DIRECT || p.forward == PATH_WINOGRAD ? p.forward : PATH_NONE;
    return fc_call_end(s->oh >= 2 && s->ow >= 2 ? path : PATH_NONE);
}

/* The pooling of one image's convolution output (n = 1: rows are that image's). */
static fc_pool_shape image_pool_shape(const fc_conv_shape *s)
{
    const fc_pool_shape ps = {
        .n = 1, .h = s->oh, .w = s->ow, .c = s->cout, .pool_h = 2, .pool_w = 2, .stride_h = 2, .stride_w = 2,
        .oh = s->oh / 2, .ow = s->ow / 2,
    };
    return ps;
}

static int64_t image_floats(const fc_conv_shape *s) { return fc_lines(s->oh * s->ow * s->cout); }

int fc_conv2d_relu_maxpool2x2_forward(const fc_conv_shape *s, int algo, const float *x, const float *w,
                                      const float *bias, float *y, uint8_t *argmax)
{
    fc_call_begin();
    conv_plan p;
    conv_make_plan(s, algo, FC_CONV_PASS_FORWARD, &p);
    if (p.forward == PATH_WINOGRAD)
        return fc_call_end(fc_winograd_forward_max_pooled(s, p.winograd_tile, x, w, bias, y, argmax));
    const fc_conv_direct_kernels *dk = p.direct;
    const fc_maxpool2x2_kernels *pool = fc_active_maxpool2x2();
    const int64_t per_thread = p.fwd.per_thread + image_floats(s);
    float *wp = fc_scratch(FC_SCRATCH_CALL, p.fwd.shared + p.fwd.threads * per_thread);
    if (!wp) return fc_call_end(FC_ERROR_NO_MEMORY);
    conv_direct_pack(s, dk->block, w, bias, wp);
    const float *bp = wp + (s->cout + dk->block - 1) / dk->block * patch_size(s) * dk->block;
    fc_conv_shape one = *s;
    one.n = 1;
    const fc_pool_shape ps = image_pool_shape(s);
    const int64_t image_in = s->h * s->w * s->cin, image_out = ps.oh * ps.ow * ps.c;
    #pragma omp parallel num_threads(p.fwd.threads) if (p.fwd.threads > 1)
    {
        float *band = wp + p.fwd.shared + fc_thread_num() * per_thread, *conv_out = band + p.fwd.per_thread;
        #pragma omp for schedule(dynamic)
        for (int64_t img = 0; img < s->n; img++) {
            dk->forward(&one, x + img * image_in, wp, bp, 1, conv_out, 0, s->oh, band);
            for (int64_t row = 0; row < ps.oh; row++)
                pool->forward_row(&ps, conv_out, y + img * image_out, argmax + img * image_out, row);
        }
    }
    return fc_call_end(FC_OK);
}

int fc_conv2d_relu_maxpool2x2_weight_grad(const fc_conv_shape *s, int algo, const float *dy, const uint8_t *argmax,
                                          const float *x, float *dw, float *db)
{
    fc_call_begin();
    conv_plan p;
    conv_make_plan(s, algo, FC_CONV_PASS_DW | FC_CONV_PASS_DB, &p);
    const fc_conv_direct_kernels *dk = p.direct;
    const fc_maxpool2x2_kernels *pool = fc_active_maxpool2x2();
    const backward_layout l = p.blocks;
    const int64_t per_thread = l.per_thread + image_floats(s);
    float *partial = fc_scratch(FC_SCRATCH_CALL, l.shared + l.threads * per_thread);
    if (!partial) return fc_call_end(FC_ERROR_NO_MEMORY);
    float *dw_partial = partial, *db_partial = partial + l.partials * l.dw_size;
    fc_conv_shape one = *s;
    one.n = 1;
    const fc_pool_shape ps = image_pool_shape(s);
    const int64_t image_in = s->h * s->w * s->cin, image_out = ps.oh * ps.ow * ps.c;
    #pragma omp parallel num_threads(l.threads) if (l.threads > 1)
    {
        float *cols = partial + l.shared + fc_thread_num() * per_thread, *dconv = cols + l.per_thread;
        /* the blocks of images and their partial sums as conv_blocks_backward has them */
        #pragma omp for schedule(dynamic)
        for (int64_t part = 0; part < l.partials; part++)
            for (int64_t b = part; b < l.blocks; b += l.partials)
                for (int64_t img = b * l.images_per_block; img < min64((b + 1) * l.images_per_block, s->n); img++) {
                    for (int64_t row = 0; row < ps.oh; row++)
                        pool->backward_row(&ps, dy + img * image_out, NULL, argmax + img * image_out, 1, dconv, row);
                    dk->weight_grad(&one, x + img * image_in, dconv, 0, s->oh, dw_partial + part * l.dw_size,
                                    db_partial + part * l.db_size, b == part && img == b * l.images_per_block, cols);
                }
        conv_sum_partials(&p, dw_partial, db_partial, dw, db);
    }
    return fc_call_end(FC_OK);
}

typedef float floats4 __attribute__((vector_size(16)));
typedef int32_t ints4 __attribute__((vector_size(16)));
typedef uint8_t bytes4 __attribute__((vector_size(4)));

/* db of the unfused backward pass (conv_blocks_backward's blocks, partial sums and order of addition)
 * from the pooled gradient: each dy row's pixels in order, a window adding its gradient on the row and
 * column its argmax byte names. The +0 that the unfused pass adds for every other pixel changes no sum
 * (a sum that starts at +0 is never -0), so the bits are the same. */
static int pooled_bias_grad(const conv_plan *p, const float *dy, const uint8_t *argmax, float *db)
{
    const fc_conv_shape *s = &p->s;
    const backward_layout l = p->blocks;
    float *db_partial = fc_scratch(FC_SCRATCH_CALL, fc_lines(l.partials * l.db_size));
    if (!db_partial) return FC_ERROR_NO_MEMORY;
    const int64_t ph = s->oh / 2, pw = s->ow / 2, c = s->cout;
    #pragma omp parallel num_threads(l.threads) if (l.threads > 1)
    {
        #pragma omp for schedule(dynamic)
        for (int64_t part = 0; part < l.partials; part++)
            for (int64_t b = part; b < l.blocks; b += l.partials) {
                float *acc = db_partial + part * l.db_size;
                if (b == part) memset(acc, 0, sizeof(float) * (size_t)c);
                const int64_t first = b * l.images_per_block, last = min64(first + l.images_per_block, s->n);
                for (int64_t row = first * ph; row < last * ph; row++)
                    for (int half = 0; half < 2; half++)
                        for (int64_t wx = 0; wx < pw; wx++) {
                            const float *g = dy + (row * pw + wx) * c;
                            const uint8_t *arg = argmax + (row * pw + wx) * c;
                            int64_t k = 0;
                            for (; k + 4 <= c; k += 4) {  /* taps 2 * half and 2 * half + 1; else +0 */
                                bytes4 a;
                                floats4 v, sum;
                                memcpy(&a, arg + k, sizeof a);
                                memcpy(&v, g + k, sizeof v);
                                memcpy(&sum, acc + k, sizeof sum);
                                sum += (floats4)((ints4)v & (__builtin_convertvector(a >> 1, ints4) == half));
                                memcpy(acc + k, &sum, sizeof sum);
                            }
                            for (; k < c; k++) acc[k] += arg[k] >> 1 == half ? g[k] : 0.0f;
                        }
            }
        conv_sum_partials(p, NULL, db_partial, NULL, db);
    }
    return FC_OK;
}

int fc_conv2d_relu_maxpool2x2_backward(const fc_conv_shape *s, int algo, const float *dy, const uint8_t *argmax,
                                       const float *x, const float *w, int x_from_relu, float *dx, float *dw,
                                       float *db)
{
    fc_call_begin();
    conv_plan p;
    conv_make_plan(s, algo, (dx ? FC_CONV_PASS_DX : 0) | FC_CONV_PASS_DW | FC_CONV_PASS_DB, &p);
    if (p.dw != PATH_WINOGRAD || (dx && p.dx != PATH_WINOGRAD) || p.blocks.dx != PATH_NONE ||
        p.blocks.dw != PATH_NONE)
        return fc_call_end(FC_CONV_NOT_FUSED);
    const fc_pooled_grad pooled = { dy, argmax };
    int status = pooled_bias_grad(&p, dy, argmax, db);
    if (status == FC_OK) status = fc_winograd_weight_grad_from_pooled(s, p.winograd_dw_tile, x, &pooled, dw);
    if (status == FC_OK && dx)
        status = fc_winograd_input_grad_from_pooled(&p.t, p.winograd_tile, &pooled, w, x_from_relu ? x : NULL, dx);
    return fc_call_end(status);
}
