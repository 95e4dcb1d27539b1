/* Winograd convolution F(2x2, 3x3) and F(4x4, 3x3) for 3x3 convolutions of stride 1 and dilation 1
 * (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015).
 *
 * Each m x m tile of output pixels (m = 2 or 4, `tile` below) comes from an (m + 2)^2 tile of input
 * pixels:
 *     Y = A^T [ (G g G^T) (.) (B^T d B) ] A
 * so the 9 m^2 multiplies per tile and channel pair of a direct 3x3 conv become (m + 2)^2: 2.25x fewer
 * for F(2x2, 3x3), 4x fewer for F(4x4, 3x3), whose larger transform coefficients cost float32 accuracy
 * (the bounds are in fastconv.conv2d's docstring). The (m + 2)^2 element-wise products, summed over the
 * input channels, are as many GEMMs per block of tiles,
 *     M[xi] (tiles x cout) = V[xi] (tiles x cin) @ U[xi] (cin x cout),
 * on the active GEMM micro-kernel, with U (the transformed kernel) packed once per call. The input and
 * output transforms are vectorised along the channels (8 floats with AVX2, chosen from the active GEMM
 * kernel's vector width, so FASTCONV_ISA=generic runs the portable ones).
 *
 * The weight gradient is a 3x3 "output" of each input tile correlated with an m x m block of dy, which
 * is Winograd's F(3x3, m x m), the dual of F(m x m, 3x3) (the transposition principle swaps the roles
 * of G and A):
 *     dw_tile = G^T [ (A g A^T) (.) (B^T d B) ] G
 * with the same B, A and G, g the block of dy and d the forward's input tile: the same (m + 2)^2
 * multiplies per tile and channel pair, summed over the tiles as GEMMs with K = the block's tiles.
 *
 * Blocks of tiles are a function of the shape only and each is computed by one thread, K is never
 * split (the weight gradient's blocks go to a fixed number of partial sums, added in a fixed order):
 * the result is the same bits for any thread count. */
#ifndef FASTCONV_CONV_WINOGRAD_H
#define FASTCONV_CONV_WINOGRAD_H

#include <stdint.h>

#include "../fastconv.h"

/* Can s run as Winograd? A 3x3 kernel, stride 1, dilation 1 (any padding). */
int fc_winograd_applies(const fc_conv_shape *s);

/* The scratch of fc_winograd_forward: its FC_SCRATCH_CALL floats (the packed transformed kernel and one
 * slice per thread) at the thread count a call would use now. */
int64_t fc_winograd_workspace(const fc_conv_shape *s, int tile);

/* y (n, oh, ow, cout) = conv(x, w) + bias (may be NULL) as F(tile x tile, 3x3), tile 2 or 4, then ReLU
 * if asked, then zeroed where mask_by <= 0 when mask_by (the size of y) is not NULL. w is the
 * (3, 3, cin, cout) kernel, or with `flipped`, the (3, 3, cout, cin) kernel of the conv whose input
 * gradient this is (s then being that gradient's conv, input_grad_as_conv in conv.c): read flipped in
 * both axes with its channel axes swapped. Between fc_call_begin and fc_call_end; returns FC_OK or
 * FC_ERROR_NO_MEMORY (nothing written). */
int fc_winograd_forward(const fc_conv_shape *s, int tile, const float *x, const float *w, int flipped,
                        const float *bias, int relu, const float *mask_by, float *y);

/* The 2x2, stride-2 max pooling (valid) of fc_winograd_forward's y with ReLU, into pooled
 * (n, oh / 2, ow / 2, cout) and its argmax bytes (maxpool2d's), y itself never stored: each tile goes
 * through a buffer of its thread's own into the windows it holds. The same bits as the two ops. Its
 * FC_SCRATCH_CALL floats: fc_winograd_max_pooled_workspace. */
int fc_winograd_forward_max_pooled(const fc_conv_shape *s, int tile, const float *x, const float *w,
                                   const float *bias, float *pooled, uint8_t *argmax);
int64_t fc_winograd_max_pooled_workspace(const fc_conv_shape *s, int tile);

/* The gradient at the ReLU input of a conv of output (n, oh, ow, cout) whose ReLU output went through the
 * 2x2, stride-2 max pooling (valid): dy (n, oh / 2, ow / 2, cout) at the pooling's output and its
 * argmax bytes. The *_from_pooled functions below rebuild the conv output's gradient from them tile
 * by tile, as maxpool2d_backward with x_from_relu writes it, and never store it: the same bits as
 * running them on maxpool2d_backward's result. */
typedef struct {
    const float *dy;
    const uint8_t *argmax;
} fc_pooled_grad;

/* fc_winograd_forward(t, tile, <the gradient dy stands for>, w, flipped = 1, NULL, 0, mask_by, dx): the
 * input gradient of the conv whose input gradient's conv is t (t->h, t->w: that conv's oh, ow). */
int fc_winograd_input_grad_from_pooled(const fc_conv_shape *t, int tile, const fc_pooled_grad *dy, const float *w,
                                       const float *mask_by, float *dx);

/* dw (3, 3, cin, cout) = the weight gradient of the conv s given its input x and output gradient dy,
 * as F(3x3, tile x tile), tile 2 or 4 (above): summed over the tiles in the transformed domain by
 * (tile + 2)^2 GEMMs (cin x cout, K = a block's tiles), transformed back once per channel pair.
 * Between fc_call_begin and fc_call_end; FC_OK or FC_ERROR_NO_MEMORY (nothing written). */
int fc_winograd_weight_grad(const fc_conv_shape *s, int tile, const float *x, const float *dy, float *dw);
/* Its FC_SCRATCH_CALL floats at the thread count a call would use now. */
int64_t fc_winograd_weight_grad_workspace(const fc_conv_shape *s, int tile);
/* fc_winograd_weight_grad of the gradient dy stands for (above). */
int fc_winograd_weight_grad_from_pooled(const fc_conv_shape *s, int tile, const float *x, const fc_pooled_grad *dy,
                                        float *dw);

#endif
