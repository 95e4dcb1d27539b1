/* Internal: a convolution's plan, and the loops of each algorithm that run it.
 *
 * conv.c decides, once per call and in one place, everything a call does: the forward path, the
 * backward pass's dx and dw paths, the threads of each pass and the floats each scratch slot takes
 * (conv_plan). The algorithm files only execute a plan: direct_loops.c (few input channels, around the
 * per-ISA kernels of direct.c), implicit.c (implicit GEMM, and the padded-image weight gradients),
 * im2col.c (im2col + GEMM, and the backward pass's loop over blocks of images), winograd.c.
 * fc_conv2d_plan reports the same plan, so the scratch it reports is what a call takes. */
#ifndef FASTCONV_CONV_PLAN_H
#define FASTCONV_CONV_PLAN_H

#include <stdint.h>

#include "../fastconv.h"
#include "../dispatch.h"
#include "../workspace.h"
#include "direct.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t patch_size(const fc_conv_shape *s) { return s->kh * s->kw * s->cin; }
static inline double forward_flops(const fc_conv_shape *s)
{
    return 2.0 * s->n * s->oh * s->ow * patch_size(s) * s->cout;
}

enum {
    FORWARD_BLOCK_FLOATS = 65536,   /* im2col block of the forward pass: 256 KiB, stays in L2 */
    BACKWARD_BLOCK_ROWS = 1024,     /* output pixels per backward block (rounded to whole images) */
    MAX_PARTIAL_SUMS = 16,          /* partial dw/db buffers, fixed so the reduction order is too */
    DW_TRANSPOSED_MAX_COUT = 8,     /* im2col dw computed transposed up to this many output channels */
    REDUCE_RUN_FLOATS = 1024,       /* elements of dw summed over the partials at a time (4 KiB, in L1) */
    IMPLICIT_DW_SLACK = 16,         /* floats a partial tile may read past the padded image (rows rounded to even) */
};

/* The paths a plan picks (the public FC_CONV_PATH_* codes of fastconv.h). */
enum conv_path {
    PATH_NONE = FC_CONV_PATH_NONE,
    PATH_IM2COL = FC_CONV_PATH_IM2COL,          /* forward: patches @ w; dx: dy @ w^T, col2im; dw: cols^T @ dy */
    PATH_DIRECT = FC_CONV_PATH_DIRECT,          /* the direct kernels (direct.h) */
    PATH_IMPLICIT = FC_CONV_PATH_IMPLICIT,      /* forward and dx: implicit GEMM; dw: a GEMM per kernel row */
    PATH_WINOGRAD = FC_CONV_PATH_WINOGRAD,      /* forward, dx and dw: winograd.c */
    PATH_GEMM = FC_CONV_PATH_GEMM,              /* forward of a 1x1, stride-1, unpadded conv: one GEMM */
    PATH_FEW_OUTPUTS = FC_CONV_PATH_FEW_OUTPUTS,  /* dw of few output channels over padded images */
    PATH_IM2COL_TRANSPOSED = FC_CONV_PATH_IM2COL_TRANSPOSED,  /* dw^T = dy^T @ cols, for few output channels */
};

/* The direct and im2col forward passes: shared (packed weights) + threads * per_thread. */
typedef struct {
    int64_t shared, per_thread, cols;  /* cols: im2col's block of patches, the start of a slice */
    int64_t block_rows;                /* im2col: output pixels per block */
    int64_t packed;                    /* im2col: floats of the packed kernel (0: read in place) */
    int threads;
} forward_layout;

/* Implicit GEMM's scratch: the packed kernel rows, then per thread its band and its band's results. */
typedef struct {
    int few, by_band;                  /* few outputs (direct rows); tiles along a band of rows */
    int64_t packed;                    /* floats of one packed kernel row (0 for few outputs) */
    int64_t band_rows;                 /* output rows per task */
    int64_t weights, band, band_out;
    int threads;
} implicit_layout;

/* The backward pass's loop over blocks of whole images (im2col.c): the partial dw/db sums, then the
 * packed weights for dx; per thread its dw block (cols), its dx block (dcols) and its GEMMs' scratch. */
typedef struct {
    int dx, dw;                                  /* the paths this loop runs (PATH_NONE: not here) */
    int need_db;
    int direct, direct_dx, implicit_dw, few_dw, dw_transposed;  /* how: dw/db by the direct kernels, ... */
    int64_t partials, dw_size, db_size, packed;  /* packed: floats of the packed weights (0: none) */
    int64_t images_per_block, blocks, block_rows, last_rows;
    int64_t shared, cols, dcols, gemm, per_thread;
    int threads;
} backward_layout;

/* Everything one call does. The kernels are the call's (fc_call_begin's snapshot). */
typedef struct {
    fc_conv_shape s;
    int passes;                        /* FC_CONV_PASS_* asked for */
    const fc_gemm_kernel *gemm;
    const fc_conv_direct_kernels *direct;
    const fc_elementwise_kernels *elementwise;
    int algorithm;                     /* the FC_CONV_* code the request resolves to (forward) */
    int forward;                       /* the forward path (forward pass) */
    int dx, dw;                        /* the backward paths (PATH_NONE when not asked); db follows dw */
    fc_conv_shape t;                   /* PATH_IMPLICIT or PATH_WINOGRAD dx: the conv of dy computing it */
    int winograd_tile;                 /* PATH_WINOGRAD forward or dx: the output tile's side, 2 or 4 */
    int winograd_dw_tile;              /* PATH_WINOGRAD dw: the side of its blocks of dy, 2 or 4 */
    forward_layout fwd;                /* PATH_DIRECT, PATH_IM2COL forward */
    implicit_layout implicit;          /* PATH_IMPLICIT forward, or of t for PATH_IMPLICIT dx */
    backward_layout blocks;            /* the backward loop (dw and db, and dx unless through t) */
    int64_t slot[FC_SCRATCH_SLOTS];    /* floats each scratch slot takes */
    int threads;                       /* of the pass's largest parallel loop (the plan's summary) */
} conv_plan;

/* conv.c: the policy and the plans */
void conv_make_plan(const fc_conv_shape *s, int algo, int passes, conv_plan *p);
/* The GEMMs whose B is the kernel (m, a and c filled in per block): forward y = cols @ w, dx's dcols = dy @ w^T. */
fc_gemm_problem conv_forward_gemm(const fc_conv_shape *s, const float *w, const float *bias, int relu);
fc_gemm_problem conv_input_grad_gemm(const fc_conv_shape *s, const float *w);
/* dw transposed (dy^T @ cols) or not (cols^T @ dy), with K the block's rows (filled in per block). */
fc_gemm_problem conv_dw_gemm(const fc_conv_shape *s, int transposed);

/* im2col.c */
int conv_im2col_forward(const conv_plan *p, const float *x, const float *w, const float *bias, int relu, float *y);
int conv_gemm_forward(const conv_plan *p, const float *x, const float *w, const float *bias, int relu, float *y);
/* dw, db and (unless p->blocks.dx is PATH_NONE) dx, over blocks of whole images. */
int conv_blocks_backward(const conv_plan *p, const float *dy, const float *x, const float *w, int x_from_relu,
                         float *dx, float *dw, float *db);
/* dw and db (either may be NULL) from the backward loop's partial sums, in their fixed order. Called
 * by every thread of a parallel region (its loops are omp for). */
void conv_sum_partials(const conv_plan *p, const float *dw_partial, const float *db_partial, float *dw, float *db);
/* dx = x > 0 ? dx : 0 over n values: the gradient through the ReLU whose output is x. */
void conv_relu_mask(const fc_elementwise_kernels *ew, const float *x, float *dx, int64_t n);

/* implicit.c */
static inline int64_t implicit_padded_width(const fc_conv_shape *s) { return s->ow + s->kw - 1; }
fc_gemm_problem conv_kernel_row_gemm(const fc_conv_shape *s, const float *w, int64_t r);
int64_t conv_implicit_band_rows(const fc_conv_shape *s);
/* The padded image (whole cache lines), and with it the padded dy, of the padded-image dw paths. */
int64_t conv_implicit_dw_image_floats(const fc_conv_shape *s);
int64_t conv_implicit_dw_floats(const fc_conv_shape *s);
fc_gemm_problem conv_implicit_dw_gemm(const fc_conv_shape *s);
/* y = conv(x, w) + bias, then ReLU, then zeroed where mask_by <= 0 (mask_by NULL: not). */
int conv_implicit_forward(const fc_conv_shape *s, const implicit_layout *l, const fc_gemm_kernel *kr,
                          const fc_conv_direct_kernels *dk, const fc_elementwise_kernels *ew, const float *x,
                          const float *w, const float *bias, int relu, const float *mask_by, float *y);
void conv_implicit_weight_grad_image(const fc_conv_shape *s, const fc_gemm_kernel *kr, const float *x,
                                     const float *dy, int64_t img, int accumulate, float *dw, float *buf,
                                     float *gemm_ws);
void conv_few_outputs_weight_grad_image(const fc_conv_direct_kernels *dk, const fc_conv_shape *s, const float *x,
                                        const float *dy, int64_t img, float *dwt, float *buf);
/* wt[r][c][co][ci] = w[kh - 1 - r][kw - 1 - c][ci][co]: the kernel of the input gradient's conv. */
void conv_flip_kernel(const fc_conv_shape *s, const float *w, float *wt);

/* direct_loops.c */
int64_t conv_direct_packed_floats(const fc_conv_shape *s, int block);
void conv_direct_pack(const fc_conv_shape *s, int64_t block, const float *w, const float *bias, float *wp);
int conv_direct_forward(const conv_plan *p, const float *x, const float *w, const float *bias, int relu, float *y);

#endif
