/* The direct convolution kernels for few input channels (first layers, Cin = 1..4), where im2col +
 * GEMM would multiply by a K = kh*kw*cin of only 9..36, and for few output channels (few_outputs_row),
 * where its N would be 1..4. csrc/conv/direct.c is compiled once per instruction set; each compile
 * defines the table named after its set, and dispatch.c picks one.
 *
 * Weights are packed by conv.c into blocks of `block` output channels (zero padded past cout):
 *     wp[cblock][kh][kw][cin][block],  bias bp[cblock][block]  (zeros when the conv has no bias).
 * Rows are counted over n * oh (one output row of one image each). */
#ifndef FASTCONV_CONV_DIRECT_H
#define FASTCONV_CONV_DIRECT_H

#include <stdint.h>

#include "../fastconv.h"

typedef struct {
    const char *name;
    int block;   /* output channels per vector block (a multiple of the vector width) */
    int pixels;  /* output pixels per forward tile */
    /* y rows [row0, row0 + rows) = conv(x, w) + bias, then relu; y is the whole (n, oh, ow, cout).
     * band holds fc_conv_direct_band_floats floats (the thread's own): the kh input rows under an output
     * row, zero padded, so that every pixel, borders included, takes the tile path. */
    void (*forward)(const fc_conv_shape *s, const float *x, const float *wp, const float *bp, int relu,
                    float *y, int64_t row0, int64_t rows, float *band);
    /* dwp (+)= x patches^T @ dy and dbp (+)= sum dy over rows [row0, row0 + rows), in the packed
     * layout; `first` overwrites instead of adding. dwp or dbp may be NULL. scratch holds
     * ow * cblocks * block floats. The order of the sums depends only on the shape. */
    void (*weight_grad)(const fc_conv_shape *s, const float *x, const float *dy, int64_t row0, int64_t rows,
                        float *dwp, float *dbp, int first, float *scratch);
    /* dx rows [row0, row0 + rows) (counted over n * h) = the transposed conv of dy with the packed
     * weights, gathered per input pixel (overwrites; no scatter, no dependence on the threads).
     * scratch holds w * kw + kh int32. */
    void (*input_grad)(const fc_conv_shape *s, const float *dy, const float *wp, float *dx, int64_t row0,
                       int64_t rows, int32_t *scratch);
    /* A stride-1, undilated conv with few output channels (FC_FEW_OUTPUTS_MAX_COUT), where a GEMM
     * would fill cout of its lanes: one output row, vectorised along each kernel row's taps instead.
     * For pixels p < count and channels co < cout:
     *     y[p * cout + co] = bias[co] + sum over r < kh of dot(x + r * row_stride + p * pixel_stride,
     *                                                         wt + (co * kh + r) * len, len),
     * then ReLU if asked; bias may be NULL. x is a padded input row (pixel_stride = cin, len = kw * cin)
     * and wt the kernel as [cout][kh][kw * cin]. */
    void (*few_outputs_row)(const float *x, int64_t row_stride, int64_t pixel_stride, int64_t len, int kh,
                            const float *wt, int cout, const float *bias, int relu, int64_t count, float *y);
    /* Its weight gradient over one output row, in the same layout (any cout; conv.c uses it up to 8):
     * for co < cout, r < kh, j < len,
     *     dwt[(co * kh + r) * len + j] += sum over p < count of dy[p * cout + co] *
     *                                                          x[r * row_stride + p * pixel_stride + j],
     * the pixels summed in order (the result does not depend on the threads). */
    void (*few_outputs_weight_grad_row)(const float *x, int64_t row_stride, int64_t pixel_stride, int64_t len,
                                        int kh, const float *dy, int cout, int64_t count, float *dwt);
} fc_conv_direct_kernels;

enum { FC_FEW_OUTPUTS_MAX_COUT = 4 };

/* One table per instruction set, fc_conv_direct_<isa>: csrc/isa_list.h lists them, dispatch.c declares them. */

/* The input columns a forward task holds per kernel row, for whole tiles of `pixels` output pixels:
 * either the padded row itself, from the first tile's first tap to the last tile's last (strided: every
 * column between them, read or not), or, when that is longer, only the columns the taps read, each
 * pixel's kw taps side by side (gathered: a stride or dilation larger than the kernel would otherwise
 * make the band as long as the stride times the row, 51 GB for a 3x3 image at a stride of 2**31 - 1). */
static inline int fc_conv_direct_band_gathered(const fc_conv_shape *s, int pixels)
{
    const int64_t tiles = (s->ow + pixels - 1) / pixels, span = (s->kw - 1) * s->dilation_w + 1;
    /* (tiles * pixels - 1) * stride + span > tiles * pixels * kw, without overflowing */
    return s->stride_w > s->kw || span > s->kw * tiles * pixels - (tiles * pixels - 1) * s->stride_w;
}
static inline int64_t fc_conv_direct_band_cols(const fc_conv_shape *s, int pixels)
{
    const int64_t tiles = (s->ow + pixels - 1) / pixels;
    if (fc_conv_direct_band_gathered(s, pixels)) return tiles * pixels * s->kw;
    return (tiles * pixels - 1) * s->stride_w + (s->kw - 1) * s->dilation_w + 1;
}
static inline int64_t fc_conv_direct_band_floats(const fc_conv_shape *s, int pixels)
{
    return s->kh * fc_conv_direct_band_cols(s, pixels) * s->cin;
}

#endif
