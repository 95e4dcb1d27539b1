/* 2-D convolution: the loops, threading and workspaces of the three algorithms.
 *
 * Direct (few input channels, csrc/conv/direct.c): weights packed once per call into blocks of
 * output channels, output rows split over the threads; the weight gradient uses the same fixed
 * partial sums as below. Implicit GEMM (stride 1, dilation 1): see "implicit GEMM forward" below;
 * it also computes such a conv's input gradient, and its weight gradient where the per-tap products
 * are large enough ("implicit GEMM weight gradient"), inside im2col's backward loop.
 * im2col + GEMM, one block of output pixels at a time (the rest):
 * Forward: each thread gathers the patches of a block of output rows into its own small buffer (so
 * the patches are still in cache when the GEMM reads them) and multiplies it by the kernel, with the
 * bias and ReLU fused into the GEMM's write-back. A 1x1, stride-1, unpadded conv is one plain GEMM.
 * Backward: blocks of whole images; dx of each block is written by one thread (col2im of dy @ w^T),
 * and dw/db are accumulated into a fixed number of partial sums, reduced in a fixed order, so the
 * result does not depend on the thread count. */
#include <stdlib.h>
#include <string.h>

#include "../fastconv.h"
#include "../dispatch.h"
#include "../workspace.h"
#include "direct.h"
#include "winograd.h"

enum {
    FORWARD_BLOCK_FLOATS = 65536,   /* im2col block of the forward pass: 256 KiB, stays in L2 */
    BACKWARD_BLOCK_ROWS = 1024,     /* output pixels per backward block (rounded to whole images) */
    MAX_PARTIAL_SUMS = 16,          /* partial dw/db buffers, fixed so the reduction order is too */
    DW_TRANSPOSED_MAX_COUT = 8,     /* im2col dw computed transposed up to this many output channels */
    REDUCE_RUN_FLOATS = 1024,       /* elements of dw summed over the partials at a time (4 KiB, in L1) */
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static int64_t patch_size(const fc_conv_shape *s) { return s->kh * s->kw * s->cin; }

/* Gathers the patches of output pixels [row0, row0 + rows) (counted over n*oh*ow) into `cols`,
 * one row of kh*kw*cin values per pixel, zeros where the patch hangs over the padding. */
static void im2col_rows(const fc_conv_shape *s, const float *x, int64_t row0, int64_t rows, float *cols)
{
    const int64_t k = patch_size(s);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t pixel = row0 + r;
        const int64_t img = pixel / (s->oh * s->ow), oy = pixel / s->ow % s->oh, ox = pixel % s->ow;
        float *dst = cols + r * k;
        const int64_t ix0 = ox * s->stride_w - s->pad_left;
        const int64_t run = s->kw * s->cin;  /* a row of taps, contiguous in x when dilation_w is 1 */
        const int contiguous = s->dilation_w == 1 && ix0 >= 0 && ix0 + s->kw <= s->w;
        for (int64_t i = 0; i < s->kh; i++) {
            const int64_t iy = oy * s->stride_h - s->pad_top + i * s->dilation_h;
            if (contiguous && iy >= 0 && iy < s->h) {
                memcpy(dst, x + ((img * s->h + iy) * s->w + ix0) * s->cin, sizeof(float) * (size_t)run);
                dst += run;
                continue;
            }
            for (int64_t j = 0; j < s->kw; j++, dst += s->cin) {
                const int64_t ix = ox * s->stride_w - s->pad_left + j * s->dilation_w;
                if (iy < 0 || iy >= s->h || ix < 0 || ix >= s->w)
                    memset(dst, 0, sizeof(float) * s->cin);
                else
                    memcpy(dst, x + ((img * s->h + iy) * s->w + ix) * s->cin, sizeof(float) * s->cin);
            }
        }
    }
}

/* The inverse scatter: adds each row of `dcols` into the input positions its patch came from. */
static void col2im_rows(const fc_conv_shape *s, const float *dcols, int64_t row0, int64_t rows, float *dx)
{
    const int64_t k = patch_size(s);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t pixel = row0 + r;
        const int64_t img = pixel / (s->oh * s->ow), oy = pixel / s->ow % s->oh, ox = pixel % s->ow;
        const float *src = dcols + r * k;
        const int64_t ix0 = ox * s->stride_w - s->pad_left;
        const int64_t run = s->kw * s->cin;  /* as in im2col_rows */
        const int contiguous = s->dilation_w == 1 && ix0 >= 0 && ix0 + s->kw <= s->w;
        for (int64_t i = 0; i < s->kh; i++) {
            const int64_t iy = oy * s->stride_h - s->pad_top + i * s->dilation_h;
            if (contiguous && iy >= 0 && iy < s->h) {
                float *dst = dx + ((img * s->h + iy) * s->w + ix0) * s->cin;
                for (int64_t c = 0; c < run; c++) dst[c] += src[c];
                src += run;
                continue;
            }
            for (int64_t j = 0; j < s->kw; j++, src += s->cin) {
                const int64_t ix = ox * s->stride_w - s->pad_left + j * s->dilation_w;
                if (iy < 0 || iy >= s->h || ix < 0 || ix >= s->w) continue;
                float *dst = dx + ((img * s->h + iy) * s->w + ix) * s->cin;
                for (int64_t c = 0; c < s->cin; c++) dst[c] += src[c];
            }
        }
    }
}

/* dx = x > 0 ? dx : 0 over n values: the gradient through the ReLU whose output is x (the training
 * kernels' ReLU gradient, in place, on this thread; ew is the call's table, taken by the calling thread). */
static void relu_mask(const fc_elementwise_kernels *ew, const float *x, float *dx, int64_t n)
{
    ew->relu_backward(0, n, dx, x, dx);
}

/* Stride 1 and dilation 1: a kernel row's taps of neighbouring output pixels are then overlapping
 * runs of kw*cin floats, cin apart, in a padded input row (what implicit GEMM and the few-channel
 * kernels read). */
static int unit_stride_and_dilation(const fc_conv_shape *s)
{
    return s->stride_h == 1 && s->stride_w == 1 && s->dilation_h == 1 && s->dilation_w == 1;
}

static int is_pointwise(const fc_conv_shape *s)
{
    return s->kh == 1 && s->kw == 1 && s->stride_h == 1 && s->stride_w == 1 && s->pad_top == 0 &&
           s->pad_left == 0 && s->oh == s->h && s->ow == s->w;
}

/* How implicit GEMM runs the register tiles: along each output row when the row's tiles compute at
 * most an eighth more rows than it has (any row of 8 or more pixels); else along a band of rows,
 * padding columns included (the tiles then cross row ends, and the padding columns' results are
 * dropped), when those are at most an eighth of the row. */
enum implicit_tiling { IMPLICIT_NONE, IMPLICIT_ROWS, IMPLICIT_BAND };

/* Implicit GEMM needs stride 1 and dilation 1 and one K block per kernel row. */
static enum implicit_tiling implicit_tiling(const fc_conv_shape *s)
{
    const fc_gemm_kernel *kr = fc_active_gemm_kernel();
    if (!unit_stride_and_dilation(s) || is_pointwise(s) || s->kw * s->cin > kr->kc || s->cout > kr->nc)
        return IMPLICIT_NONE;
    /* the rows a row's tiles compute: a partial tile runs its rows rounded up to even (gemm.h) */
    const int64_t computed = s->ow / kr->mr * kr->mr + ((s->ow % kr->mr + 1) & ~(int64_t)1);
    if (8 * computed <= 9 * s->ow) return IMPLICIT_ROWS;
    return 8 * (s->ow + s->kw - 1) <= 9 * s->ow ? IMPLICIT_BAND : IMPLICIT_NONE;
}

/* A stride-1, undilated conv with at most FC_FEW_OUTPUTS_MAX_COUT output channels: implicit GEMM's
 * bands of padded rows, but each row through the direct kernels' few_outputs_row (vectorised along the
 * taps), as the GEMM's lanes would run along those few channels (n128 28x28 32->1: 10 GFLOPS). */
static int few_outputs(const fc_conv_shape *s)
{
    return unit_stride_and_dilation(s) && s->cout <= FC_FEW_OUTPUTS_MAX_COUT && !is_pointwise(s);
}

static int implicit_applies(const fc_conv_shape *s) { return few_outputs(s) || implicit_tiling(s) != IMPLICIT_NONE; }

/* The Winograd codes, and their output tile's side. */
static int is_winograd(int algo) { return algo == FC_CONV_WINOGRAD || algo == FC_CONV_WINOGRAD4X4; }
static int winograd_tile(int algo) { return algo == FC_CONV_WINOGRAD4X4 ? 4 : 2; }

static int resolve_algorithm(const fc_conv_shape *s, int algo)
{
    if (algo == FC_CONV_IM2COL || algo == FC_CONV_DIRECT) return algo;
    if (is_winograd(algo)) return fc_winograd_applies(s) ? algo : resolve_algorithm(s, FC_CONV_AUTO);
    if (algo == FC_CONV_IMPLICIT) return implicit_applies(s) ? FC_CONV_IMPLICIT : FC_CONV_IM2COL;
    /* With 1..4 input channels the GEMM's K (kh*kw*cin) is too short to pay for the im2col copy. */
    if (s->cin <= 4 && !is_pointwise(s)) return FC_CONV_DIRECT;
    return implicit_applies(s) ? FC_CONV_IMPLICIT : FC_CONV_IM2COL;
}

int fc_conv2d_algorithm(const fc_conv_shape *s, int algo)
{
    fc_call_begin();
    return fc_call_end(resolve_algorithm(s, algo));
}

const char *fc_conv_direct_kernel_name(void) { return fc_active_conv_direct()->name; }

/* The floats GEMMs of problem p take (gemm.c) on `threads` threads, for m1 and for m2 rows (a full
 * block and the last). B read in place (not packed beforehand) is taken as misaligned, the case that
 * needs the most (gemm.c's b_in_place): the blocks' B (dy) starts at any float. */
static int64_t gemm_floats_bound(const fc_gemm_kernel *kr, fc_gemm_problem p, int64_t m1, int64_t m2, int threads)
{
    static const float misaligned[2] __attribute__((aligned(64)));
    if (!p.b_packed) p.b = misaligned + 1;
    p.m = m1;
    const int64_t first = fc_gemm_workspace_floats(kr, &p, threads);
    p.m = m2;
    return max64(first, fc_gemm_workspace_floats(kr, &p, threads));
}

/* ... for the GEMMs one thread runs inside a parallel region, in its slice. */
static int64_t gemm_slice_floats(const fc_gemm_kernel *kr, fc_gemm_problem p, int64_t m1, int64_t m2)
{
    return gemm_floats_bound(kr, p, m1, m2, 1);
}

/* Stands for the packed weights when a layout is computed from the shape alone (never read). */
static const float packed_placeholder[1];

/* Output pixels per forward block: the patches fill about FORWARD_BLOCK_FLOATS, in whole register
 * tiles of the GEMM (113 rows would run 9 tiles of 14 with one row in the last). */
static int64_t forward_block_rows(const fc_conv_shape *s)
{
    const int64_t mr = fc_active_gemm_kernel()->mr, rows = s->n * s->oh * s->ow;
    /* no larger than all the rows: a small conv takes only the scratch it fills (one block either way) */
    return min64(max64(mr, FORWARD_BLOCK_FLOATS / patch_size(s) / mr * mr), (rows + mr - 1) / mr * mr);
}

/* Whole images per backward block: about BACKWARD_BLOCK_ROWS output pixels. Up to a quarter fewer when
 * that makes the block count a multiple of 4, which splits evenly over 2 or 4 threads (64 images of
 * 14x14 in 13 blocks of 5 leave one of 2 threads idle for a thirteenth of the pass; 16 blocks of 4 do
 * not). A function of the shape only, so the reduction order stays independent of the threads. */
static int64_t backward_block_images(const fc_conv_shape *s)
{
    /* at most the batch: one block either way, and its scratch no larger than the batch's patches */
    const int64_t most = min64(s->n, max64(1, BACKWARD_BLOCK_ROWS / (s->oh * s->ow)));
    for (int64_t images = most; images >= 1 && 4 * images >= 3 * most; images--)
        if ((s->n + images - 1) / images % 4 == 0) return images;
    return most;
}

/* Floats of the direct kernels' packed weights (plus bias) and of one packed dw (plus db). */
static int64_t direct_packed_floats(const fc_conv_shape *s, int block)
{
    const int64_t cblocks = (s->cout + block - 1) / block;
    return cblocks * block * (patch_size(s) + 1);
}

static double forward_flops(const fc_conv_shape *s)
{
    return 2.0 * s->n * s->oh * s->ow * patch_size(s) * s->cout;
}

/* The im2col path's GEMMs whose B is the kernel: the forward y = cols @ w (+ bias, ReLU), and the
 * input gradient's dcols = dy @ w^T. m, a and c are filled in per block of output pixels. */
static fc_gemm_problem forward_gemm(const fc_conv_shape *s, const float *w, const float *bias, int relu)
{
    const fc_gemm_problem p = {
        .n = s->cout, .k = patch_size(s), .a_rs = patch_size(s), .a_cs = 1, .b = w, .b_rs = s->cout, .b_cs = 1,
        .ldc = s->cout, .alpha = 1.0f, .beta = 0.0f, .bias = bias, .relu = relu,
    };
    return p;
}

static fc_gemm_problem input_grad_gemm(const fc_conv_shape *s, const float *w)
{
    const fc_gemm_problem p = {
        .n = patch_size(s), .k = s->cout, .a_rs = s->cout, .a_cs = 1, .b = w, .b_rs = 1, .b_cs = s->cout,
        .ldc = patch_size(s), .alpha = 1.0f, .beta = 0.0f,
    };
    return p;
}

/* ---- implicit GEMM forward ----
 * A task is a band of output rows of one image. It copies the padded input rows the band reads into
 * its own buffer (one pass over x instead of im2col's kh*kw), then for each output row, register tile
 * of MR pixels and NR output channels, and kernel row r, the micro-kernel reads the tile's taps in
 * place (row i of A starts cin floats after row i - 1) and adds their product with kernel row r,
 * packed once per call, into y; the bias and ReLU come with the last kernel row. */

static int64_t implicit_padded_width(const fc_conv_shape *s) { return s->ow + s->kw - 1; }

/* Output rows per task: about FORWARD_BLOCK_FLOATS of padded input, at least one row. */
static int64_t implicit_band_rows(const fc_conv_shape *s)
{
    return max64(1, min64(s->oh, FORWARD_BLOCK_FLOATS / (implicit_padded_width(s) * s->cin) - (s->kh - 1)));
}

/* The band buffer: its padded rows plus slack, as a partial tile's rows past m are read (and ignored). */
static int64_t implicit_band_floats(const fc_conv_shape *s)
{
    return (implicit_band_rows(s) + s->kh - 1) * implicit_padded_width(s) * s->cin +
           fc_active_gemm_kernel()->mr * s->cin;
}

/* The per-thread staging of a band's results, padding columns included, when tiling by band. */
static int64_t implicit_band_out_floats(const fc_conv_shape *s)
{
    return !few_outputs(s) && implicit_tiling(s) == IMPLICIT_BAND
               ? implicit_band_rows(s) * implicit_padded_width(s) * s->cout : 0;
}

/* Kernel row r as the B of a GEMM: (kw * cin) x cout, packed by fc_gemm_pack_b. */
static fc_gemm_problem kernel_row_gemm(const fc_conv_shape *s, const float *w, int64_t r)
{
    const int64_t k = s->kw * s->cin;
    const fc_gemm_problem p = {
        .n = s->cout, .k = k, .b = w ? w + r * k * s->cout : NULL, .b_rs = s->cout, .b_cs = 1,
    };
    return p;
}

/* The kernel as implicit GEMM reads it: kh packed kernel rows, or for few outputs [cout][kh][kw * cin]. */
static int64_t implicit_weights_floats(const fc_conv_shape *s)
{
    if (few_outputs(s)) return s->cout * patch_size(s);
    const fc_gemm_problem row = kernel_row_gemm(s, NULL, 0);
    return s->kh * fc_gemm_packed_b_floats(fc_active_gemm_kernel(), &row);
}

/* Copies padded input rows [row0, row0 + rows) of image img (zeros outside x) into buf. */
static void copy_padded_rows(const fc_conv_shape *s, const float *x, int64_t img, int64_t row0, int64_t rows,
                             float *buf)
{
    const int64_t wp = implicit_padded_width(s), c = s->cin;
    const int64_t x0 = s->pad_left, x1 = min64(wp, s->pad_left + s->w);  /* columns that hold x */
    for (int64_t r = 0; r < rows; r++) {
        const int64_t iy = row0 + r - s->pad_top;
        float *dst = buf + r * wp * c;
        if (iy < 0 || iy >= s->h) {
            memset(dst, 0, sizeof(float) * (size_t)(wp * c));
            continue;
        }
        memset(dst, 0, sizeof(float) * (size_t)(x0 * c));
        memcpy(dst + x0 * c, x + ((img * s->h + iy) * s->w) * c, sizeof(float) * (size_t)((x1 - x0) * c));
        memset(dst + x1 * c, 0, sizeof(float) * (size_t)((wp - x1) * c));
    }
}

/* Output pixels [0, count) of a run whose patches start cin floats apart at `at` (one output row, or a
 * band with its padding columns), into c (row stride cout): every register tile of MR pixels and NR
 * channels adds kernel row r's product for r = r0 .. r1-1, the bias and ReLU with the last. */
static void implicit_run(const fc_conv_shape *s, const fc_gemm_kernel *kr, const float *at, int64_t count,
                         int64_t r0, int64_t r1, const float *wpack, int64_t packed, const float *bias, int relu,
                         float *c)
{
    const int64_t mr = kr->mr, nr = kr->nr, k = s->kw * s->cin, wp = implicit_padded_width(s);
    const int64_t rs_b = fc_gemm_b_panel_width(kr, s->cout);
    for (int64_t q = 0; q < count; q += mr) {
        const int m = (int)min64(mr, count - q);
        for (int64_t j = 0; j < s->cout; j += nr) {
            for (int64_t r = r0; r < r1; r++) {
                const int last = r == r1 - 1;
                const fc_tile_epilogue ep = {
                    .alpha = 1.0f, .beta = r == r0 ? 0.0f : 1.0f, .bias = last && bias ? bias + j : NULL,
                    .relu = last && relu,
                };
                const float *b_panel = wpack + r * packed + j / nr * fc_gemm_b_panel_stride(kr, k);
                kr->ukr(k, at + (q + r * wp) * s->cin, s->cin, 1, NULL, b_panel, rs_b, c + q * s->cout + j, s->cout, m,
                        (int)min64(nr, s->cout - j), &ep);
            }
        }
    }
}

/* Implicit GEMM's scratch: the packed kernel rows, then per thread its band and its band's results. */
typedef struct {
    int64_t weights, band, band_out;
    int threads;
} implicit_layout;

static implicit_layout implicit_forward_layout(const fc_conv_shape *s)
{
    const implicit_layout l = {
        .weights = fc_lines(implicit_weights_floats(s)), .band = fc_lines(implicit_band_floats(s)),
        .band_out = fc_lines(implicit_band_out_floats(s)), .threads = fc_threads_for_work(forward_flops(s)),
    };
    return l;
}

static int64_t implicit_forward_floats(const implicit_layout *l)
{
    return l->weights + l->threads * (l->band + l->band_out);
}

/* y = conv(x, w) + bias, then ReLU if asked, and zeroed where mask_by <= 0 when mask_by (the size of
 * y) is not NULL: the input gradient through the ReLU that produced x (see fc_conv2d_backward). */
static int implicit_forward(const fc_conv_shape *s, const float *x, const float *w, const float *bias, int relu,
                            const float *mask_by, float *y)
{
    const fc_gemm_kernel *kr = fc_active_gemm_kernel();
    const fc_conv_direct_kernels *dk = fc_active_conv_direct();
    const fc_elementwise_kernels *ew = fc_active_elementwise();
    const int64_t mr = kr->mr, wp = implicit_padded_width(s), k = patch_size(s);
    const int few = few_outputs(s), by_band = !few && implicit_tiling(s) == IMPLICIT_BAND;
    const fc_gemm_problem row0_gemm = kernel_row_gemm(s, w, 0);
    const int64_t packed = few ? 0 : fc_gemm_packed_b_floats(kr, &row0_gemm);  /* the same for every kernel row */
    const implicit_layout layout = implicit_forward_layout(s);
    float *wpack = fc_scratch(FC_SCRATCH_CALL, implicit_forward_floats(&layout));
    if (!wpack) return FC_ERROR_NO_MEMORY;
    if (few) {  /* wpack[co][r][c * cin + ci] = w[r][c][ci][co] */
        for (int64_t e = 0; e < k; e++)
            for (int64_t co = 0; co < s->cout; co++) wpack[co * k + e] = w[e * s->cout + co];
    } else {
        for (int64_t r = 0; r < s->kh; r++) {
            const fc_gemm_problem g = kernel_row_gemm(s, w, r);
            fc_gemm_pack_b(kr, &g, wpack + r * packed);
        }
    }
    const int64_t band = implicit_band_rows(s), bands = (s->oh + band - 1) / band;
    const int threads = layout.threads;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *buf = wpack + layout.weights + fc_thread_num() * (layout.band + layout.band_out);
        float *band_out = by_band ? buf + layout.band : NULL;
        #pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < s->n * bands; task++) {
            const int64_t img = task / bands, oy0 = task % bands * band, rows = min64(band, s->oh - oy0);
            copy_padded_rows(s, x, img, oy0, rows + s->kh - 1, buf);
            /* the slack a last, partial tile reads: zeros rather than stale values */
            memset(buf + (rows + s->kh - 1) * wp * s->cin, 0, sizeof(float) * (size_t)(mr * s->cin));
            const int64_t out_row = s->ow * s->cout, first = (img * s->oh + oy0) * out_row;
            if (few) {
                for (int64_t i = 0; i < rows; i++)
                    dk->few_outputs_row(buf + i * wp * s->cin, wp * s->cin, s->cin, s->kw * s->cin, (int)s->kh,
                                        wpack, (int)s->cout, bias, relu, s->ow, y + first + i * out_row);
            } else if (by_band) {  /* then drop the padding columns' results */
                implicit_run(s, kr, buf, (rows - 1) * wp + s->ow, 0, s->kh, wpack, packed, bias, relu, band_out);
                for (int64_t i = 0; i < rows; i++)
                    memcpy(y + first + i * out_row, band_out + i * wp * s->cout, sizeof(float) * (size_t)out_row);
            } else {
                for (int64_t i = 0; i < rows; i++) {
                    /* skip the kernel rows that read only padding rows (zeros): the input gradient
                     * of a valid 3x3 conv pads dy by two rows above and below */
                    const int64_t oy = oy0 + i;
                    int64_t r0 = max64(0, s->pad_top - oy), r1 = min64(s->kh, s->h + s->pad_top - oy);
                    if (r0 >= r1) r0 = 0, r1 = s->kh;  /* all padding: run them all, for the bias and zeros */
                    implicit_run(s, kr, buf + i * wp * s->cin, s->ow, r0, r1, wpack, packed, bias, relu,
                                 y + first + i * out_row);
                }
            }
            if (mask_by)  /* the band's rows are still in cache */
                relu_mask(ew, mask_by + first, y + first, rows * out_row);
        }
    }
    return FC_OK;
}

/* ---- implicit GEMM weight gradient ----
 * For a stride-1, undilated conv, kernel tap (r, c)'s slice of dw is (x shifted by the tap)^T @ dy
 * over the output pixels. Copy an image with its padding to width wp = ow + kw - 1, and its dy to the
 * same width with zeros in the kw - 1 extra columns: output pixel q = oy * wp + ox then reads tap
 * (r, c) at q + r * wp + c, so every tap's A is the padded image read in place from its own offset,
 * and the extra columns add zeros. The kw taps of kernel row r are then one A of kw * cin rows, row
 * c * cin + ci of column q at (q + r * wp) * cin + c * cin + ci: columns cin apart, overlapping, and
 * its product is dw's rows for that kernel row, so each image takes kh GEMMs (n128 14x14 64->64 on 2
 * threads, 9 GEMMs of 64 rows -> 3 of 192: 7.1-7.5 -> 6.8-7.0 ms with the vectorised reduction). No
 * patches are written: the image and dy stay in L2 for all the products, where im2col wrote kh * kw
 * copies of the image per image. */

/* May the backward pass compute dw from padded images (the two paths below) rather than im2col? */
static int weight_grad_from_padded_images(const fc_conv_shape *s, int algo)
{
    return (algo == FC_CONV_AUTO || algo == FC_CONV_IMPLICIT) && unit_stride_and_dilation(s) &&
           resolve_algorithm(s, algo) != FC_CONV_DIRECT;
}

enum {
    IMPLICIT_DW_SLACK = 16,           /* floats a partial tile may read past the padded image (rows rounded to even) */
    IMPLICIT_DW_MIN_PRODUCT = 512,    /* cin * cout of the smallest products worth the padded images */
};

/* Taken when the products are not too small (cin x cout tiles) and the extra columns add at most a
 * fifth to the work. Against im2col's dw on Emerald Rapids, 2 threads: n32 56x56 64->64 same 33.3 ->
 * 27.1 ms, n128 26x26 32->64 same 12.2 -> 11.4, n64 28x28 32->32 5x5 15.7 -> 8.9, n128 9x9 64->64
 * 3.3 -> 3.1, and 8x8 valid (a 28% wider run) 14% longer. Since a kernel row's taps are one GEMM,
 * smaller products win too (n128, 3x3 same, 2 threads): 28x28 16->32 4.72 -> 3.74 ms, 28x28 8->64
 * 4.90 -> 4.21, 28x28 32->16 6.17 -> 5.52, 14x14 32->32 2.19 -> 1.89; 28x28 16->16 3.44 -> 3.53 and
 * 8->16 2.37 -> 2.39 stay with im2col. */
static int implicit_weight_grad(const fc_conv_shape *s, int algo)
{
    const int64_t run = (s->oh - 1) * implicit_padded_width(s) + s->ow;
    return weight_grad_from_padded_images(s, algo) && s->cout > DW_TRANSPOSED_MAX_COUT &&
           s->cin * s->cout >= IMPLICIT_DW_MIN_PRODUCT && 5 * run <= 6 * s->oh * s->ow;
}

/* The padded image (rounded to whole cache lines, so the padded dy after it is aligned), then the padded dy. */
static int64_t implicit_dw_image_floats(const fc_conv_shape *s)
{
    return ((s->oh + s->kh - 1) * implicit_padded_width(s) * s->cin + IMPLICIT_DW_SLACK + 15) / 16 * 16;
}

static int64_t implicit_dw_floats(const fc_conv_shape *s)
{
    return implicit_dw_image_floats(s) + s->oh * implicit_padded_width(s) * s->cout;
}

/* dw (+)= image img's weight gradient (dw is (kh * kw * cin) x cout; overwritten unless accumulate). */
static fc_gemm_problem implicit_dw_gemm(const fc_conv_shape *s)
{
    const int64_t wp = implicit_padded_width(s);
    const fc_gemm_problem g = {
        .m = s->kw * s->cin, .n = s->cout, .k = (s->oh - 1) * wp + s->ow, .a_rs = 1, .a_cs = s->cin,
        .b_rs = s->cout, .b_cs = 1, .ldc = s->cout, .alpha = 1.0f,
    };
    return g;
}

/* gemm_ws: gemm_slice_floats of implicit_dw_gemm. */
static void implicit_weight_grad_image(const fc_conv_shape *s, const fc_gemm_kernel *kr, const float *x,
                                       const float *dy, int64_t img, int accumulate, float *dw, float *buf,
                                       float *gemm_ws)
{
    const int64_t wp = implicit_padded_width(s), rows = s->oh + s->kh - 1, out_row = s->ow * s->cout;
    float *xpad = buf, *dypad = buf + implicit_dw_image_floats(s);
    copy_padded_rows(s, x, img, 0, rows, xpad);
    memset(xpad + rows * wp * s->cin, 0, sizeof(float) * IMPLICIT_DW_SLACK);
    for (int64_t oy = 0; oy < s->oh; oy++) {
        memcpy(dypad + oy * wp * s->cout, dy + (img * s->oh + oy) * out_row, sizeof(float) * (size_t)out_row);
        memset(dypad + oy * wp * s->cout + out_row, 0, sizeof(float) * (size_t)((wp - s->ow) * s->cout));
    }
    for (int64_t r = 0; r < s->kh; r++) {
        fc_gemm_problem g = implicit_dw_gemm(s);
        g.a = xpad + r * wp * s->cin;
        g.b = dypad;
        g.c = dw + r * s->kw * s->cin * s->cout;
        g.beta = accumulate ? 1.0f : 0.0f;
        fc_gemm_run_in(kr, &g, 1, gemm_ws);
    }
}

/* With up to DW_TRANSPOSED_MAX_COUT output channels (stride 1), dw comes from the direct kernels'
 * few_outputs_weight_grad_row over each padded image, in the transposed layout ([cout][kh][kw * cin])
 * of the partial sums of few output channels, instead of im2col's kh * kw copies of each image:
 * n128 28x28 32->1 3.1 -> 1.0 ms, 32->5 3.2 -> 2.2, 32->8 3.4 -> 3.0, n128 14x14 64->8 2.2 -> 1.2. */
static int few_outputs_weight_grad(const fc_conv_shape *s, int algo)
{
    return weight_grad_from_padded_images(s, algo) && s->cout <= DW_TRANSPOSED_MAX_COUT && !is_pointwise(s);
}

/* dwt += image img's weight gradient, transposed (see above); buf holds implicit_dw_image_floats. */
static void few_outputs_weight_grad_image(const fc_conv_direct_kernels *dk, const fc_conv_shape *s, const float *x,
                                          const float *dy, int64_t img, float *dwt, float *buf)
{
    const int64_t wp = implicit_padded_width(s);
    copy_padded_rows(s, x, img, 0, s->oh + s->kh - 1, buf);
    for (int64_t oy = 0; oy < s->oh; oy++)
        dk->few_outputs_weight_grad_row(buf + oy * wp * s->cin, wp * s->cin, s->cin, s->kw * s->cin, (int)s->kh,
                                        dy + (img * s->oh + oy) * s->ow * s->cout, (int)s->cout, s->ow, dwt);
}

/* The input gradient of a stride-1, undilated conv is itself such a conv: of dy, padded by kh - 1 -
 * pad_top rows above (kw - 1 - pad_left columns left), with the kernel flipped in both axes and its
 * channel axes swapped. Fills t with that conv's shape; 0 when s is not of this kind. */
static int input_grad_as_conv(const fc_conv_shape *s, fc_conv_shape *t)
{
    if (!unit_stride_and_dilation(s) || s->pad_top > s->kh - 1 || s->pad_left > s->kw - 1) return 0;
    *t = *s;
    t->h = s->oh; t->w = s->ow; t->cin = s->cout; t->cout = s->cin;
    t->pad_top = s->kh - 1 - s->pad_top; t->pad_left = s->kw - 1 - s->pad_left;
    /* negative when s pads more than kh - 1 at the bottom (kw - 1 right): t then drops those rows of dy */
    t->pad_bottom = s->kh - 1 - s->pad_bottom; t->pad_right = s->kw - 1 - s->pad_right;
    t->oh = s->h; t->ow = s->w;
    return 1;
}

/* wt[r][c][co][ci] = w[kh - 1 - r][kw - 1 - c][ci][co]: the kernel of input_grad_as_conv. */
static void flip_kernel(const fc_conv_shape *s, const float *w, float *wt)
{
    for (int64_t r = 0; r < s->kh; r++)
        for (int64_t c = 0; c < s->kw; c++) {
            const float *src = w + ((s->kh - 1 - r) * s->kw + (s->kw - 1 - c)) * s->cin * s->cout;
            float *dst = wt + (r * s->kw + c) * s->cout * s->cin;
            for (int64_t ci = 0; ci < s->cin; ci++)
                for (int64_t co = 0; co < s->cout; co++) dst[co * s->cin + ci] = src[ci * s->cout + co];
        }
}

/* The direct kernels' input gradient only when forced: with 1..4 input channels, im2col's dy @ w^T and
 * scatter was 1.3-2.8x faster on every shape measured (n128 28x28 1->32: 1.5 against 2.4 ms), while
 * the direct weight gradient stays the fastest dw. */
static int direct_input_grad(const fc_conv_shape *s, int algo)
{
    return algo == FC_CONV_DIRECT && resolve_algorithm(s, algo) == FC_CONV_DIRECT;
}

/* Does the backward pass take dx as input_grad_as_conv through implicit GEMM (else im2col's col2im)? */
static int implicit_input_grad(const fc_conv_shape *s, int algo, fc_conv_shape *t)
{
    return (algo == FC_CONV_AUTO || algo == FC_CONV_IMPLICIT) && resolve_algorithm(s, algo) != FC_CONV_DIRECT &&
           input_grad_as_conv(s, t) && implicit_applies(t);
}

/* Does the backward pass take dx as input_grad_as_conv through Winograd (forced, or auto's choice)? */
static int winograd_input_grad(const fc_conv_shape *s, int algo, fc_conv_shape *t)
{
    return (algo == FC_CONV_AUTO || is_winograd(algo)) && resolve_algorithm(s, algo) != FC_CONV_DIRECT &&
           input_grad_as_conv(s, t) && is_winograd(resolve_algorithm(t, algo));
}

/* ---- the scratch of each path: one block from the calling thread's FC_SCRATCH_CALL slot, shared
 * buffers first, then one slice per thread (every part whole cache lines). The same functions size the
 * block for the call and for fc_conv2d_workspace_floats, so that tells exactly what a call takes. ---- */

/* Packs w (kh, kw, cin, cout) and bias into the direct kernels' layout (direct.h) at wp. */
static void direct_pack(const fc_conv_shape *s, int64_t block, const float *w, const float *bias, float *wp)
{
    const int64_t cblocks = (s->cout + block - 1) / block, taps_cin = patch_size(s);
    float *bp = wp + cblocks * taps_cin * block;
    for (int64_t cb = 0; cb < cblocks; cb++) {
        const int64_t co = cb * block, n = min64(block, s->cout - co);
        for (int64_t t = 0; t < taps_cin; t++) {
            float *dst = wp + (cb * taps_cin + t) * block;
            memcpy(dst, w + t * s->cout + co, sizeof(float) * (size_t)n);
            memset(dst + n, 0, sizeof(float) * (size_t)(block - n));
        }
        for (int64_t c = 0; c < block; c++) bp[co + c] = bias && c < n ? bias[co + c] : 0.0f;
    }
}

/* The forward pass of the direct and im2col paths: shared (packed weights) + threads * per_thread. */
typedef struct {
    int64_t shared, per_thread, cols;  /* cols: im2col's block of patches, the start of a slice */
    int threads;
} forward_layout;

static forward_layout direct_forward_layout(const fc_conv_shape *s)
{
    const fc_conv_direct_kernels *dk = fc_active_conv_direct();
    const forward_layout l = {
        .shared = fc_lines(direct_packed_floats(s, dk->block)),
        .per_thread = fc_lines(fc_conv_direct_band_floats(s, dk->pixels)),
        .threads = fc_threads_for_work(forward_flops(s)),
    };
    return l;
}

/* p: forward_gemm with b_packed set when the kernel is packed once (packed floats). */
static forward_layout im2col_forward_layout(const fc_conv_shape *s, const fc_gemm_problem *p, int64_t packed)
{
    const int64_t rows = s->n * s->oh * s->ow, block = forward_block_rows(s);
    const int64_t last = rows - (rows + block - 1) / block * block + block;
    forward_layout l = { .shared = fc_lines(packed), .cols = fc_lines(block * patch_size(s)),
                         .threads = fc_threads_for_work(forward_flops(s)) };
    l.per_thread = l.cols + fc_lines(gemm_slice_floats(fc_active_gemm_kernel(), *p, block, last));
    return l;
}

/* The backward pass (not the implicit-GEMM dx): the partial dw/db sums, then the packed weights for
 * dx; per thread its dw block (cols), its dx block (dcols) and its GEMMs' scratch. */
typedef struct {
    int64_t partials, dw_size, db_size, packed;  /* packed: floats of the packed weights (0: none) */
    int64_t images_per_block, blocks, block_rows, last_rows;
    int direct, direct_dx, implicit_dw, few_dw, dw_transposed;
    int64_t shared, cols, dcols, gemm, per_thread;
    int threads;
} backward_layout;

/* dw transposed (dy^T @ cols) or not (cols^T @ dy), with K the block's rows (filled in per block). */
static fc_gemm_problem dw_gemm(const fc_conv_shape *s, int transposed)
{
    const int64_t k = patch_size(s);
    const fc_gemm_problem g = transposed ? (fc_gemm_problem){
        .m = s->cout, .n = k, .a_rs = 1, .a_cs = s->cout, .b_rs = k, .b_cs = 1, .ldc = k, .alpha = 1.0f,
    } : (fc_gemm_problem){
        .m = k, .n = s->cout, .a_rs = 1, .a_cs = k, .b_rs = s->cout, .b_cs = 1, .ldc = s->cout, .alpha = 1.0f,
    };
    return g;
}

static backward_layout make_backward_layout(const fc_conv_shape *s, int algo, int need_dx, int need_dw, int need_db)
{
    const fc_gemm_kernel *kernel = fc_active_gemm_kernel();
    const fc_conv_direct_kernels *dk = fc_active_conv_direct();
    const int64_t k = patch_size(s), pixels = s->oh * s->ow, block = dk->block;
    const int64_t cblocks = (s->cout + block - 1) / block;
    backward_layout l = { 0 };
    l.direct = resolve_algorithm(s, algo) == FC_CONV_DIRECT;
    l.direct_dx = direct_input_grad(s, algo);
    /* With few output channels, cols^T @ dy would fill cout of the micro-kernel's NR lanes: the
     * partials then hold dw^T = dy^T @ cols, whose lanes run along the patch (n128 28x28 32->1:
     * 7.2-8.0 -> 3.0 ms; level with the other way round at 16 and 32 channels, slower at 64). */
    l.dw_transposed = !l.direct && s->cout <= DW_TRANSPOSED_MAX_COUT;
    l.implicit_dw = implicit_weight_grad(s, algo);
    l.few_dw = few_outputs_weight_grad(s, algo);
    l.images_per_block = backward_block_images(s);
    l.blocks = (s->n + l.images_per_block - 1) / l.images_per_block;
    l.block_rows = l.images_per_block * pixels;
    l.last_rows = s->n * pixels - (l.blocks - 1) * l.block_rows;
    /* Each partial sum owns blocks b, b + partials, b + 2*partials, ... in that order. In the direct
     * layout a partial is the packed dw followed by the packed db (direct.h). */
    l.partials = min64(l.blocks, MAX_PARTIAL_SUMS);
    l.dw_size = l.direct ? cblocks * block * k : k * s->cout;
    l.db_size = l.direct ? cblocks * block : s->cout;
    const fc_gemm_problem dx_gemm = input_grad_gemm(s, NULL);
    l.packed = !need_dx ? 0 : l.direct_dx ? direct_packed_floats(s, block) : fc_gemm_packed_b_floats(kernel, &dx_gemm);
    l.shared = fc_lines(l.partials * (l.dw_size + l.db_size)) + fc_lines(l.packed);
    const int direct_grads = l.direct && (need_dw || need_db);
    l.cols = fc_lines(direct_grads ? s->ow * cblocks * block
                      : !need_dw ? 0
                      : l.implicit_dw ? implicit_dw_floats(s)
                      : l.few_dw ? implicit_dw_image_floats(s)
                                 : l.block_rows * k);
    /* the direct dx's int32 tables, counted as floats */
    l.dcols = fc_lines(!need_dx ? 0 : l.direct_dx ? s->w * s->kw + s->kh : l.block_rows * k);
    int64_t gemm = 0;
    if (need_dw && !l.direct && l.implicit_dw) {
        gemm = gemm_slice_floats(kernel, implicit_dw_gemm(s), s->kw * s->cin, s->kw * s->cin);
    } else if (need_dw && !l.direct && !l.few_dw) {  /* K is the block's rows, M fixed */
        fc_gemm_problem g = dw_gemm(s, l.dw_transposed);
        g.k = l.block_rows;
        gemm = gemm_slice_floats(kernel, g, g.m, g.m);
        g.k = l.last_rows;
        gemm = max64(gemm, gemm_slice_floats(kernel, g, g.m, g.m));
    }
    if (need_dx && !l.direct_dx) {
        fc_gemm_problem g = dx_gemm;
        if (l.packed) g.b_packed = packed_placeholder;
        gemm = max64(gemm, gemm_slice_floats(kernel, g, l.block_rows, l.last_rows));
    }
    l.gemm = fc_lines(gemm);
    l.per_thread = l.cols + l.dcols + l.gemm;
    l.threads = fc_threads_for_work(forward_flops(s) * ((need_dw || need_db ? 1 : 0) + (need_dx ? 1 : 0)));
    return l;
}

static int64_t backward_floats(const backward_layout *l) { return l->shared + l->threads * l->per_thread; }

/* The floats of the two blocks of the backward pass whose dx is an implicit-GEMM conv (t): the dw/db
 * pass, then the flipped kernel (FC_SCRATCH_KERNEL) and the conv of dy with it (reusing the first). */
static int64_t implicit_dx_backward_floats(const fc_conv_shape *s, const fc_conv_shape *t, int algo, int need_dw,
                                           int need_db)
{
    const backward_layout grads = make_backward_layout(s, algo, 0, need_dw, need_db);
    const implicit_layout dx = implicit_forward_layout(t);
    return max64(need_dw || need_db ? backward_floats(&grads) : 0, implicit_forward_floats(&dx)) +
           fc_lines(patch_size(s) * s->cout);
}

static int64_t forward_floats(const fc_conv_shape *s, int algo)
{
    const int resolved = resolve_algorithm(s, algo);
    if (resolved == FC_CONV_DIRECT) {
        const forward_layout l = direct_forward_layout(s);
        return l.shared + l.threads * l.per_thread;
    }
    if (resolved == FC_CONV_IMPLICIT) {
        const implicit_layout l = implicit_forward_layout(s);
        return implicit_forward_floats(&l);
    }
    if (is_winograd(resolved)) {
        int64_t call, kernel;
        fc_winograd_workspace(s, winograd_tile(resolved), &call, &kernel);
        return call + kernel;
    }
    fc_gemm_problem p = forward_gemm(s, NULL, NULL, 0);
    p.m = s->n * s->oh * s->ow;
    if (is_pointwise(s))  /* one GEMM reading x in place, in its FC_SCRATCH_GEMM block (at most this) */
        return gemm_floats_bound(fc_active_gemm_kernel(), p, p.m, p.m, fc_threads_for_work(forward_flops(s)));
    const int64_t packed = fc_gemm_packed_b_floats(fc_active_gemm_kernel(), &p);
    if (packed) p.b_packed = packed_placeholder;
    const forward_layout l = im2col_forward_layout(s, &p, packed);
    return l.shared + l.threads * l.per_thread;
}

int64_t fc_conv2d_workspace_floats(const fc_conv_shape *s, int algo, int backward)
{
    fc_call_begin();
    int64_t floats;
    fc_conv_shape t;
    if (!backward)
        floats = forward_floats(s, algo);
    else if (winograd_input_grad(s, algo, &t)) {
        const backward_layout grads = make_backward_layout(s, FC_CONV_AUTO, 0, 1, 1);
        int64_t call, kernel;
        fc_winograd_workspace(&t, winograd_tile(resolve_algorithm(&t, algo)), &call, &kernel);
        floats = max64(backward_floats(&grads), call) + kernel;
    } else if (is_winograd(algo) && implicit_input_grad(s, FC_CONV_AUTO, &t))
        floats = implicit_dx_backward_floats(s, &t, FC_CONV_AUTO, 1, 1);
    else if (is_winograd(algo)) {
        const backward_layout l = make_backward_layout(s, FC_CONV_AUTO, 1, 1, 1);
        floats = backward_floats(&l);
    } else if (implicit_input_grad(s, algo, &t))
        floats = implicit_dx_backward_floats(s, &t, algo, 1, 1);
    else {
        const backward_layout l = make_backward_layout(s, algo, 1, 1, 1);
        floats = backward_floats(&l);
    }
    fc_call_end(FC_OK);
    return floats;
}

static int direct_forward(const fc_conv_shape *s, const float *x, const float *w, const float *bias,
                          int relu, float *y)
{
    const fc_conv_direct_kernels *dk = fc_active_conv_direct();
    const forward_layout l = direct_forward_layout(s);
    float *wp = fc_scratch(FC_SCRATCH_CALL, l.shared + l.threads * l.per_thread);
    if (!wp) return FC_ERROR_NO_MEMORY;
    const int64_t cblocks = (s->cout + dk->block - 1) / dk->block;
    const float *bp = wp + cblocks * patch_size(s) * dk->block;
    direct_pack(s, dk->block, w, bias, wp);
    const int64_t rows = s->n * s->oh;
    const int threads = l.threads;
    /* About 4096 output pixels per task: small enough to balance, large enough to amortise. */
    const int64_t chunk = max64(1, 4096 / s->ow), chunks = (rows + chunk - 1) / chunk;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *band = wp + l.shared + fc_thread_num() * l.per_thread;
        #pragma omp for schedule(dynamic)
        for (int64_t t = 0; t < chunks; t++)
            dk->forward(s, x, wp, bp, relu, y, t * chunk, min64(chunk, rows - t * chunk), band);
    }
    return FC_OK;
}

static int conv2d_forward(const fc_conv_shape *s, int algo, const float *x, const float *w, const float *bias,
                          int relu, float *y)
{
    const int resolved = resolve_algorithm(s, algo);
    if (resolved == FC_CONV_DIRECT) return direct_forward(s, x, w, bias, relu, y);
    if (resolved == FC_CONV_IMPLICIT) return implicit_forward(s, x, w, bias, relu, NULL, y);
    if (is_winograd(resolved)) return fc_winograd_forward(s, winograd_tile(resolved), x, w, 0, bias, relu, NULL, y);
    const fc_gemm_kernel *kernel = fc_active_gemm_kernel();
    const int64_t rows = s->n * s->oh * s->ow;
    const int threads = fc_threads_for_work(forward_flops(s));
    fc_gemm_problem p = forward_gemm(s, w, bias, relu);
    p.m = rows;
    p.a = x;
    p.c = y;
    if (is_pointwise(s)) return fc_gemm_run(kernel, &p, threads);
    /* The kernel is the B of every block's GEMM: packed once here instead of once per block. */
    const int64_t packed = fc_gemm_packed_b_floats(kernel, &p);
    fc_gemm_problem sized = p;
    if (packed) sized.b_packed = packed_placeholder;
    const forward_layout l = im2col_forward_layout(s, &sized, packed);
    float *ws = fc_scratch(FC_SCRATCH_CALL, l.shared + l.threads * l.per_thread);
    if (!ws) return FC_ERROR_NO_MEMORY;
    if (packed) {
        fc_gemm_pack_b(kernel, &p, ws);
        p.b_packed = ws;
    }
    const int64_t block = forward_block_rows(s), blocks = (rows + block - 1) / block;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *cols = ws + l.shared + fc_thread_num() * l.per_thread, *gemm_ws = cols + l.cols;
        fc_gemm_problem part = p;
        part.a = cols;
        #pragma omp for schedule(dynamic)
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t row0 = b * block;
            part.m = min64(block, rows - row0);
            part.c = y + row0 * s->cout;
            im2col_rows(s, x, row0, part.m, cols);
            fc_gemm_run_in(kernel, &part, 1, gemm_ws);
        }
    }
    return FC_OK;
}

int fc_conv2d_forward(const fc_conv_shape *s, int algo, const float *x, const float *w, const float *bias,
                      int relu, float *y)
{
    fc_call_begin();
    return fc_call_end(conv2d_forward(s, algo, x, w, bias, relu, y));
}

static int conv2d_backward(const fc_conv_shape *s, int algo, const float *dy, const float *x, const float *w,
                           int x_from_relu, float *dx, float *dw, float *db)
{
    const fc_gemm_kernel *kernel = fc_active_gemm_kernel();
    const fc_conv_direct_kernels *dk = fc_active_conv_direct();
    const fc_elementwise_kernels *ew = fc_active_elementwise();
    const int64_t k = patch_size(s), pixels = s->oh * s->ow;
    fc_conv_shape t;
    if (dx && winograd_input_grad(s, algo, &t)) {  /* dw and db as auto computes them, then dx */
        if (dw || db) {
            const int status = conv2d_backward(s, FC_CONV_AUTO, dy, x, w, 0, NULL, dw, db);
            if (status != FC_OK) return status;
        }
        return fc_winograd_forward(&t, winograd_tile(resolve_algorithm(&t, algo)), dy, w, 1, NULL, 0,
                                   x_from_relu ? x : NULL, dx);
    }
    if (is_winograd(algo)) algo = FC_CONV_AUTO;  /* Winograd computes dx only */
    if (dx && implicit_input_grad(s, algo, &t)) {
        if (dw || db) {
            const int status = conv2d_backward(s, algo, dy, x, w, 0, NULL, dw, db);
            if (status != FC_OK) return status;
        }
        float *wt = fc_scratch(FC_SCRATCH_KERNEL, patch_size(s) * s->cout);
        if (!wt) return FC_ERROR_NO_MEMORY;
        flip_kernel(s, w, wt);
        return implicit_forward(&t, dy, wt, NULL, 0, x_from_relu ? x : NULL, dx);
    }
    const backward_layout l = make_backward_layout(s, algo, dx != NULL, dw != NULL, db != NULL);
    const int direct = l.direct, direct_dx = l.direct_dx, dw_transposed = l.dw_transposed;
    const int implicit_dw = l.implicit_dw, few_dw = l.few_dw;
    const int64_t blocks = l.blocks, partials = l.partials, dw_size = l.dw_size, db_size = l.db_size;
    const int64_t block = dk->block;
    float *partial = fc_scratch(FC_SCRATCH_CALL, backward_floats(&l));
    if (!partial) return FC_ERROR_NO_MEMORY;
    float *dw_partial = dw ? partial : NULL;
    float *db_partial = db ? partial + partials * dw_size : NULL;
    float *wp = partial + fc_lines(partials * (dw_size + db_size));  /* the packed weights for dx */
    /* im2col: dcols = dy_block @ w^T, the same B (w^T) for every block, packed once. */
    fc_gemm_problem dx_gemm = input_grad_gemm(s, w);
    if (dx && direct_dx) {
        direct_pack(s, block, w, NULL, wp);
    } else if (dx) {
        memset(dx, 0, sizeof(float) * (size_t)(s->n * s->h * s->w * s->cin));
        if (l.packed) {
            fc_gemm_pack_b(kernel, &dx_gemm, wp);
            dx_gemm.b_packed = wp;
        }
    }
    const int threads = l.threads;

    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int64_t block_rows = l.block_rows;
        float *cols = partial + l.shared + fc_thread_num() * l.per_thread;
        float *dcols = cols + l.cols, *gemm_ws = dcols + l.dcols;
        #pragma omp for schedule(dynamic)
        for (int64_t part = 0; part < partials; part++) {
            for (int64_t b = part; b < blocks; b += partials) {
                const int64_t row0 = b * block_rows, rows = min64(block_rows, s->n * pixels - row0);
                const float *dy_block = dy + row0 * s->cout;
                if (direct && (dw || db)) {
                    dk->weight_grad(s, x, dy, row0 / s->ow, rows / s->ow, dw ? dw_partial + part * dw_size : NULL,
                                    db ? db_partial + part * db_size : NULL, b == part, cols);
                } else {
                    if (dw && implicit_dw) {
                        for (int64_t i = 0; i < rows / pixels; i++)
                            implicit_weight_grad_image(s, kernel, x, dy, row0 / pixels + i, b != part || i > 0,
                                                       dw_partial + part * dw_size, cols, gemm_ws);
                    } else if (dw && few_dw) {
                        if (b == part) memset(dw_partial + part * dw_size, 0, sizeof(float) * (size_t)dw_size);
                        for (int64_t i = 0; i < rows / pixels; i++)
                            few_outputs_weight_grad_image(dk, s, x, dy, row0 / pixels + i, dw_partial + part * dw_size,
                                                          cols);
                    } else if (dw) {  /* dw_part (+)= cols^T @ dy_block, or its transpose for few output channels */
                        im2col_rows(s, x, row0, rows, cols);
                        fc_gemm_problem g = dw_gemm(s, dw_transposed);
                        g.k = rows;
                        g.a = dw_transposed ? dy_block : cols;
                        g.b = dw_transposed ? cols : dy_block;
                        g.c = dw_partial + part * dw_size;
                        g.beta = b == part ? 0.0f : 1.0f;
                        fc_gemm_run_in(kernel, &g, 1, gemm_ws);
                    }
                    if (db) {
                        float *acc = db_partial + part * db_size;
                        if (b == part) memset(acc, 0, sizeof(float) * s->cout);
                        for (int64_t r = 0; r < rows; r++)
                            for (int64_t c = 0; c < s->cout; c++) acc[c] += dy_block[r * s->cout + c];
                    }
                }
                if (dx && !direct_dx) {  /* dcols = dy_block @ w^T, scattered back into this block's own images */
                    fc_gemm_problem g = dx_gemm;
                    g.m = rows;
                    g.a = dy_block;
                    g.c = dcols;
                    fc_gemm_run_in(kernel, &g, 1, gemm_ws);
                    col2im_rows(s, dcols, row0, rows, dx);
                    if (x_from_relu) {  /* this block's images of dx are complete and still in cache */
                        const int64_t image = s->h * s->w * s->cin, first = row0 / pixels;
                        relu_mask(ew, x + first * image, dx + first * image, rows / pixels * image);
                    }
                }
            }
        }
        if (dx && direct_dx) {  /* gathered per input row: any split over threads gives the same dx */
            const int64_t in_rows = s->n * s->h, chunk = max64(1, 4096 / s->w);
            #pragma omp for schedule(dynamic)
            for (int64_t t = 0; t < (in_rows + chunk - 1) / chunk; t++) {
                const int64_t rows = min64(chunk, in_rows - t * chunk), row_size = s->w * s->cin;
                dk->input_grad(s, dy, wp, dx, t * chunk, rows, (int32_t *)dcols);
                if (x_from_relu) relu_mask(ew, x + t * chunk * row_size, dx + t * chunk * row_size, rows * row_size);
            }
        }

        /* Sum the partials in their fixed order; each output element is owned by one thread. In the
         * plain layout a thread adds whole runs of elements part after part, which vectorises, rather
         * than gathering each element across the parts (n128 14x14 64->64 dw: 16 parts of 147 KiB). */
        if (dw && !direct && !dw_transposed) {
            const int64_t total = k * s->cout;
            #pragma omp for schedule(static)
            for (int64_t e0 = 0; e0 < total; e0 += REDUCE_RUN_FLOATS) {
                const int64_t count = min64(REDUCE_RUN_FLOATS, total - e0);
                memcpy(dw + e0, dw_partial + e0, sizeof(float) * (size_t)count);
                for (int64_t part = 1; part < partials; part++) {
                    const float *add = dw_partial + part * dw_size + e0;
                    for (int64_t i = 0; i < count; i++) dw[e0 + i] += add[i];
                }
            }
        } else if (dw) {
            #pragma omp for schedule(static)
            for (int64_t e = 0; e < k * s->cout; e++) {
                const int64_t at = direct ? ((e % s->cout) / block * k + e / s->cout) * block + e % s->cout % block
                                   : dw_transposed ? e % s->cout * k + e / s->cout : e;
                float sum = dw_partial[at];
                for (int64_t part = 1; part < partials; part++) sum += dw_partial[part * dw_size + at];
                dw[e] = sum;
            }
        }
        if (db) {
            #pragma omp for schedule(static)
            for (int64_t c = 0; c < s->cout; c++) {
                float sum = db_partial[c];
                for (int64_t part = 1; part < partials; part++) sum += db_partial[part * db_size + c];
                db[c] = sum;
            }
        }
    }
    return FC_OK;
}

int fc_conv2d_backward(const fc_conv_shape *s, int algo, const float *dy, const float *x, const float *w,
                       int x_from_relu, float *dx, float *dw, float *db)
{
    fc_call_begin();
    return fc_call_end(conv2d_backward(s, algo, dy, x, w, x_from_relu, dx, dw, db));
}
