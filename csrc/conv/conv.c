/* A convolution's plan: which algorithm runs each pass, on how many threads, in how much scratch.
 *
 * The algorithm policy, written once (fastconv.conv2d_algorithm and fastconv.ops.conv2d_plan report it):
 *   forward, "auto":
 *     - direct kernels for 1..4 input channels (a GEMM's K = kh*kw*cin would be too short to pay for
 *       copying patches), unless the conv is a 1x1, stride-1, unpadded one;
 *     - Winograd for a 3x3, stride-1, undilated conv with at least WINOGRAD_MIN_CHANNELS input and
 *       output channels, on the AVX2 kernel only (measured faster than implicit GEMM and im2col there):
 *       F(4x4, 3x3) or F(2x2, 3x3), whichever does fewer multiplies over the output's tiles, where that
 *       is at most 2/3 of the direct method's (winograd_forward_tile: not for a 1x1 output);
 *     - implicit GEMM where it applies: stride 1, dilation 1, and output rows that fill the GEMM's
 *       register tiles (implicit_tiling) or at most FC_FEW_OUTPUTS_MAX_COUT output channels (each
 *       output row then as dot products along the taps);
 *     - else im2col + GEMM; a 1x1, stride-1, unpadded conv is one plain GEMM.
 *   "direct" and "im2col" force that path for any shape; "implicit", "winograd" (F(2x2, 3x3)) and
 *   "winograd4x4" where they apply (else what im2col, respectively auto, would do).
 *   backward:
 *     - dx: a Winograd (where auto picks it for that conv, or forced) or implicit-GEMM conv of dy with
 *       the flipped kernel when the conv has stride 1 and dilation 1 and that conv applies; the direct
 *       kernels' dx only when forced
 *       (im2col's dy @ w^T and scatter is faster with few input channels); else dy @ w^T, col2im;
 *     - dw: Winograd where the forward's rule takes it (measured faster than the paths below there, on
 *       the AVX2 kernel only): the transposed F(3x3, 4x4) or F(3x3, 2x2), the one the forward would
 *       take (fewer multiplies); forced with "winograd" (2x2) and "winograd4x4" (4x4) wherever
 *       Winograd applies;
 *     - else the direct kernels where the forward is direct; for stride 1 and dilation 1 (auto and
 *       "implicit"), a GEMM per kernel row over each padded image when cin * cout is large enough and
 *       the padding columns add at most a fifth, or the direct kernels' few-output rows over it for
 *       up to DW_TRANSPOSED_MAX_COUT output channels; else im2col's cols^T @ dy (transposed for few
 *       output channels, so the GEMM's lanes run along the patch);
 *     - db with dw's loop (with the dx or db-only blocks loop when dw is Winograd: the same sums).
 *
 * Scratch: each pass takes one block of the FC_SCRATCH_CALL slot, its shared buffers first, then one
 * slice per thread (every part whole cache lines); an implicit-GEMM input gradient's conv keeps its
 * flipped kernel in FC_SCRATCH_KERNEL; a pointwise forward's GEMM takes FC_SCRATCH_GEMM. plan.slot says
 * how many floats. */
#include <string.h>

#include "plan.h"
#include "winograd.h"

enum {
    IMPLICIT_DW_MIN_PRODUCT = 512,  /* cin * cout of the smallest products worth the padded images */
};

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
static enum implicit_tiling implicit_tiling(const fc_conv_shape *s, const fc_gemm_kernel *kr)
{
    if (!unit_stride_and_dilation(s) || is_pointwise(s) || s->kw * s->cin > kr->kc || s->cout > kr->nc)
        return IMPLICIT_NONE;
    /* the rows a row's tiles compute: a partial tile runs its rows rounded up to even (gemm.h) */
    const int64_t computed = s->ow / kr->mr * kr->mr + ((s->ow % kr->mr + 1) & ~(int64_t)1);
    if (8 * computed <= 9 * s->ow) return IMPLICIT_ROWS;
    return 8 * (s->ow + s->kw - 1) <= 9 * s->ow ? IMPLICIT_BAND : IMPLICIT_NONE;
}

/* A stride-1, undilated conv with at most FC_FEW_OUTPUTS_MAX_COUT output channels: implicit GEMM's
 * bands of padded rows, each row through the direct kernels' few_outputs_row (vectorised along the
 * taps), as the GEMM's lanes would run along those few channels. */
static int few_outputs(const fc_conv_shape *s)
{
    return unit_stride_and_dilation(s) && s->cout <= FC_FEW_OUTPUTS_MAX_COUT && !is_pointwise(s);
}

static int implicit_applies(const fc_conv_shape *s, const fc_gemm_kernel *kr)
{
    return few_outputs(s) || implicit_tiling(s, kr) != IMPLICIT_NONE;
}

/* The Winograd codes, and their output tile's side. */
static int is_winograd(int algo) { return algo == FC_CONV_WINOGRAD || algo == FC_CONV_WINOGRAD4X4; }
static int winograd_tile(int algo) { return algo == FC_CONV_WINOGRAD4X4 ? 4 : 2; }

/* auto's Winograd (the policy above). With fewer channels the GEMMs are too short to pay for the
 * transforms. */
enum { WINOGRAD_MIN_CHANNELS = 8 };

/* The multiplies per channel pair of F(tile x tile, 3x3) over the whole output, partial tiles whole. */
static int64_t winograd_multiplies(const fc_conv_shape *s, int tile)
{
    return (s->oh + tile - 1) / tile * ((s->ow + tile - 1) / tile) * (tile + 2) * (tile + 2);
}

/* The forward's (and a dx conv's) Winograd tile under auto, 2 or 4; 0: not Winograd. The tile size
 * with fewer multiplies (F(2x2) on a tie: its transforms are cheaper), where that is at most 2/3 of the
 * direct method's 9 per output pixel (a 1x1 output would take 16). */
static int winograd_forward_tile(const fc_conv_shape *s, const fc_gemm_kernel *kr)
{
    if (kr->vector_bytes != 32 || !fc_winograd_applies(s) || s->cin < WINOGRAD_MIN_CHANNELS ||
        s->cout < WINOGRAD_MIN_CHANNELS)
        return 0;
    const int64_t f2 = winograd_multiplies(s, 2), f4 = winograd_multiplies(s, 4);
    return 3 * min64(f2, f4) > 2 * 9 * s->oh * s->ow ? 0 : f4 < f2 ? 4 : 2;
}

/* The side of the weight gradient's Winograd blocks of dy, 2 or 4; 0: not Winograd. auto's is the
 * forward's tile (the policy above): the same multiplies per tile, and with fewer channels the direct
 * kernels' few-output rows or the GEMMs per kernel row are faster. */
static int winograd_weight_grad_tile(const fc_conv_shape *s, int algo, const fc_gemm_kernel *kr)
{
    if (!fc_winograd_applies(s)) return 0;
    if (is_winograd(algo)) return winograd_tile(algo);
    return algo == FC_CONV_AUTO ? winograd_forward_tile(s, kr) : 0;
}

/* The forward algorithm `algo` resolves to: FC_CONV_DIRECT, _IMPLICIT, a Winograd code or _IM2COL. */
static int resolve_algorithm(const fc_conv_shape *s, int algo, const fc_gemm_kernel *kr)
{
    if (algo == FC_CONV_IM2COL || algo == FC_CONV_DIRECT) return algo;
    if (is_winograd(algo)) return fc_winograd_applies(s) ? algo : resolve_algorithm(s, FC_CONV_AUTO, kr);
    if (algo == FC_CONV_IMPLICIT) return implicit_applies(s, kr) ? FC_CONV_IMPLICIT : FC_CONV_IM2COL;
    if (s->cin <= 4 && !is_pointwise(s)) return FC_CONV_DIRECT;
    const int tile = winograd_forward_tile(s, kr);
    if (tile) return tile == 4 ? FC_CONV_WINOGRAD4X4 : FC_CONV_WINOGRAD;
    return implicit_applies(s, kr) ? FC_CONV_IMPLICIT : FC_CONV_IM2COL;
}

/* May the backward pass compute dw from padded images (implicit.c's two ways) rather than im2col? */
static int weight_grad_from_padded_images(const fc_conv_shape *s, int algo, const fc_gemm_kernel *kr)
{
    return (algo == FC_CONV_AUTO || algo == FC_CONV_IMPLICIT) && unit_stride_and_dilation(s) &&
           resolve_algorithm(s, algo, kr) != FC_CONV_DIRECT;
}

/* A GEMM per kernel row over the padded image: when the products are not too small (cin x cout
 * tiles) and the padding columns add at most a fifth to the work. */
static int implicit_weight_grad(const fc_conv_shape *s, int algo, const fc_gemm_kernel *kr)
{
    const int64_t run = (s->oh - 1) * implicit_padded_width(s) + s->ow;
    return weight_grad_from_padded_images(s, algo, kr) && s->cout > DW_TRANSPOSED_MAX_COUT &&
           s->cin * s->cout >= IMPLICIT_DW_MIN_PRODUCT && 5 * run <= 6 * s->oh * s->ow;
}

/* Up to DW_TRANSPOSED_MAX_COUT output channels: the direct kernels' few-output rows over each padded
 * image, instead of im2col's kh * kw copies of it. */
static int few_outputs_weight_grad(const fc_conv_shape *s, int algo, const fc_gemm_kernel *kr)
{
    return weight_grad_from_padded_images(s, algo, kr) && s->cout <= DW_TRANSPOSED_MAX_COUT && !is_pointwise(s);
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

/* ---- layouts ---- */

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

fc_gemm_problem conv_forward_gemm(const fc_conv_shape *s, const float *w, const float *bias, int relu)
{
    const fc_gemm_problem p = {
        .n = s->cout, .k = patch_size(s), .a_rs = patch_size(s), .a_cs = 1, .b = w, .b_rs = s->cout, .b_cs = 1,
        .ldc = s->cout, .alpha = 1.0f, .beta = 0.0f, .bias = bias, .relu = relu,
    };
    return p;
}

fc_gemm_problem conv_input_grad_gemm(const fc_conv_shape *s, const float *w)
{
    const fc_gemm_problem p = {
        .n = patch_size(s), .k = s->cout, .a_rs = s->cout, .a_cs = 1, .b = w, .b_rs = 1, .b_cs = s->cout,
        .ldc = patch_size(s), .alpha = 1.0f, .beta = 0.0f,
    };
    return p;
}

fc_gemm_problem conv_dw_gemm(const fc_conv_shape *s, int transposed)
{
    const int64_t k = patch_size(s);
    const fc_gemm_problem g = transposed ? (fc_gemm_problem){
        .m = s->cout, .n = k, .a_rs = 1, .a_cs = s->cout, .b_rs = k, .b_cs = 1, .ldc = k, .alpha = 1.0f,
    } : (fc_gemm_problem){
        .m = k, .n = s->cout, .a_rs = 1, .a_cs = k, .b_rs = s->cout, .b_cs = 1, .ldc = s->cout, .alpha = 1.0f,
    };
    return g;
}

/* Output pixels per forward block: the patches fill about FORWARD_BLOCK_FLOATS, in whole register
 * tiles of the GEMM (no tile of the block left nearly empty). */
static int64_t forward_block_rows(const fc_conv_shape *s, const fc_gemm_kernel *kr)
{
    const int64_t mr = kr->mr, rows = s->n * s->oh * s->ow;
    /* no larger than all the rows: a small conv takes only the scratch it fills (one block either way) */
    return min64(max64(mr, FORWARD_BLOCK_FLOATS / patch_size(s) / mr * mr), (rows + mr - 1) / mr * mr);
}

/* Whole images per backward block: about BACKWARD_BLOCK_ROWS output pixels. Up to a quarter fewer when
 * that makes the block count a multiple of 4, which splits evenly over 2 or 4 threads. A function of
 * the shape only, so the reduction order stays independent of the threads. */
static int64_t backward_block_images(const fc_conv_shape *s)
{
    /* at most the batch: one block either way, and its scratch no larger than the batch's patches */
    const int64_t most = min64(s->n, max64(1, BACKWARD_BLOCK_ROWS / (s->oh * s->ow)));
    for (int64_t images = most; images >= 1 && 4 * images >= 3 * most; images--)
        if ((s->n + images - 1) / images % 4 == 0) return images;
    return most;
}

static forward_layout direct_forward_layout(const fc_conv_shape *s, const fc_conv_direct_kernels *dk)
{
    const forward_layout l = {
        .shared = fc_lines(conv_direct_packed_floats(s, dk->block)),
        .per_thread = fc_lines(fc_conv_direct_band_floats(s, dk->pixels)),
        .threads = fc_threads_for_work(forward_flops(s)),
    };
    return l;
}

/* The kernel is the B of every block's GEMM: packed once per call, when the GEMM packs B at all. */
static forward_layout im2col_forward_layout(const fc_conv_shape *s, const fc_gemm_kernel *kr)
{
    fc_gemm_problem p = conv_forward_gemm(s, NULL, NULL, 0);
    p.m = s->n * s->oh * s->ow;
    const int64_t packed = fc_gemm_packed_b_floats(kr, &p);
    if (packed) p.b_packed = packed_placeholder;
    const int64_t rows = p.m, block = forward_block_rows(s, kr);
    const int64_t last = rows - (rows + block - 1) / block * block + block;
    forward_layout l = { .shared = fc_lines(packed), .cols = fc_lines(block * patch_size(s)), .block_rows = block,
                         .packed = packed, .threads = fc_threads_for_work(forward_flops(s)) };
    l.per_thread = l.cols + fc_lines(gemm_slice_floats(kr, p, block, last));
    return l;
}

static implicit_layout implicit_forward_layout(const fc_conv_shape *s, const fc_gemm_kernel *kr)
{
    implicit_layout l = { .few = few_outputs(s), .band_rows = conv_implicit_band_rows(s),
                          .threads = fc_threads_for_work(forward_flops(s)) };
    l.by_band = !l.few && implicit_tiling(s, kr) == IMPLICIT_BAND;
    const fc_gemm_problem row = conv_kernel_row_gemm(s, NULL, 0);
    l.packed = l.few ? 0 : fc_gemm_packed_b_floats(kr, &row);  /* the same for every kernel row */
    /* the kernel as implicit GEMM reads it: kh packed kernel rows, or for few outputs [cout][kh][kw * cin] */
    l.weights = fc_lines(l.few ? s->cout * patch_size(s) : s->kh * l.packed);
    /* the band's padded rows plus slack, as a partial tile's rows past m are read (and ignored) */
    l.band = fc_lines((l.band_rows + s->kh - 1) * implicit_padded_width(s) * s->cin + kr->mr * s->cin);
    /* tiling by band: the band's results, padding columns included, staged per thread */
    l.band_out = fc_lines(l.by_band ? l.band_rows * implicit_padded_width(s) * s->cout : 0);
    return l;
}

static int64_t implicit_forward_floats(const implicit_layout *l)
{
    return l->weights + l->threads * (l->band + l->band_out);
}

static backward_layout make_backward_layout(const fc_conv_shape *s, int algo, const fc_gemm_kernel *kernel,
                                            const fc_conv_direct_kernels *dk, int need_dx, int need_dw, int need_db)
{
    const int64_t k = patch_size(s), pixels = s->oh * s->ow, block = dk->block;
    const int64_t cblocks = (s->cout + block - 1) / block;
    backward_layout l = { .need_db = need_db };
    l.direct = resolve_algorithm(s, algo, kernel) == FC_CONV_DIRECT;
    /* the direct kernels' dx only when forced: im2col's dy @ w^T and scatter is faster there */
    l.direct_dx = algo == FC_CONV_DIRECT && l.direct;
    /* With few output channels, cols^T @ dy would fill cout of the micro-kernel's NR lanes: the
     * partials then hold dw^T = dy^T @ cols, whose lanes run along the patch. */
    l.dw_transposed = !l.direct && s->cout <= DW_TRANSPOSED_MAX_COUT;
    l.implicit_dw = implicit_weight_grad(s, algo, kernel);
    l.few_dw = few_outputs_weight_grad(s, algo, kernel);
    l.dx = !need_dx ? PATH_NONE : l.direct_dx ? PATH_DIRECT : PATH_IM2COL;
    l.dw = !need_dw ? PATH_NONE : l.direct ? PATH_DIRECT : l.implicit_dw ? PATH_IMPLICIT : l.few_dw ? PATH_FEW_OUTPUTS
           : l.dw_transposed ? PATH_IM2COL_TRANSPOSED : PATH_IM2COL;
    l.images_per_block = backward_block_images(s);
    l.blocks = (s->n + l.images_per_block - 1) / l.images_per_block;
    l.block_rows = l.images_per_block * pixels;
    l.last_rows = s->n * pixels - (l.blocks - 1) * l.block_rows;
    /* Each partial sum owns blocks b, b + partials, b + 2*partials, ... in that order. In the direct
     * layout a partial is the packed dw followed by the packed db (direct.h). */
    l.partials = min64(l.blocks, MAX_PARTIAL_SUMS);
    l.dw_size = l.direct ? cblocks * block * k : k * s->cout;
    l.db_size = l.direct ? cblocks * block : s->cout;
    const fc_gemm_problem dx_gemm = conv_input_grad_gemm(s, NULL);
    l.packed = !need_dx ? 0 : l.direct_dx ? conv_direct_packed_floats(s, block) : fc_gemm_packed_b_floats(kernel, &dx_gemm);
    l.shared = fc_lines(l.partials * (l.dw_size + l.db_size)) + fc_lines(l.packed);
    const int direct_grads = l.direct && (need_dw || need_db);
    l.cols = fc_lines(direct_grads ? s->ow * cblocks * block
                      : !need_dw ? 0
                      : l.implicit_dw ? conv_implicit_dw_floats(s)
                      : l.few_dw ? conv_implicit_dw_image_floats(s)
                                 : l.block_rows * k);
    /* the direct dx's int32 tables, counted as floats */
    l.dcols = fc_lines(!need_dx ? 0 : l.direct_dx ? s->w * s->kw + s->kh : l.block_rows * k);
    int64_t gemm = 0;
    if (need_dw && !l.direct && l.implicit_dw) {
        gemm = gemm_slice_floats(kernel, conv_implicit_dw_gemm(s), s->kw * s->cin, s->kw * s->cin);
    } else if (need_dw && !l.direct && !l.few_dw) {  /* K is the block's rows, M fixed */
        fc_gemm_problem g = conv_dw_gemm(s, l.dw_transposed);
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

/* ---- the plan ---- */

static void plan_forward(conv_plan *p)
{
    const fc_conv_shape *s = &p->s;
    const int resolved = p->algorithm;
    if (resolved == FC_CONV_DIRECT) {
        p->forward = PATH_DIRECT;
        p->fwd = direct_forward_layout(s, p->direct);
        p->slot[FC_SCRATCH_CALL] = p->fwd.shared + p->fwd.threads * p->fwd.per_thread;
        p->threads = p->fwd.threads;
    } else if (resolved == FC_CONV_IMPLICIT) {
        p->forward = PATH_IMPLICIT;
        p->implicit = implicit_forward_layout(s, p->gemm);
        p->slot[FC_SCRATCH_CALL] = implicit_forward_floats(&p->implicit);
        p->threads = p->implicit.threads;
    } else if (is_winograd(resolved)) {
        p->forward = PATH_WINOGRAD;
        p->winograd_tile = winograd_tile(resolved);
        p->slot[FC_SCRATCH_CALL] = fc_winograd_workspace(s, p->winograd_tile);
        p->threads = fc_threads_for_work(forward_flops(s));
    } else if (is_pointwise(s)) {  /* one GEMM reading x in place, in its FC_SCRATCH_GEMM block (at most this) */
        p->forward = PATH_GEMM;
        p->threads = fc_threads_for_work(forward_flops(s));
        fc_gemm_problem g = conv_forward_gemm(s, NULL, NULL, 0);
        g.m = s->n * s->oh * s->ow;
        p->slot[FC_SCRATCH_GEMM] = gemm_floats_bound(p->gemm, g, g.m, g.m, p->threads);
    } else {
        p->forward = PATH_IM2COL;
        p->fwd = im2col_forward_layout(s, p->gemm);
        p->slot[FC_SCRATCH_CALL] = p->fwd.shared + p->fwd.threads * p->fwd.per_thread;
        p->threads = p->fwd.threads;
    }
}

static void plan_backward(conv_plan *p, int algo)
{
    const fc_conv_shape *s = &p->s;
    const int need_dx = !!(p->passes & FC_CONV_PASS_DX), need_dw = !!(p->passes & FC_CONV_PASS_DW);
    const int need_db = !!(p->passes & FC_CONV_PASS_DB);
    const int dw_tile = need_dw ? winograd_weight_grad_tile(s, algo, p->gemm) : 0;
    /* dx as a conv of dy (p->t): Winograd when forced (its db then as auto computes it) or implicit
     * GEMM; the blocks loop then computes only dw (unless Winograd's) and db, before it */
    if (need_dx && (algo == FC_CONV_AUTO || is_winograd(algo)) && p->algorithm != FC_CONV_DIRECT &&
        input_grad_as_conv(s, &p->t) && is_winograd(resolve_algorithm(&p->t, algo, p->gemm))) {
        p->dx = PATH_WINOGRAD;
        p->winograd_tile = winograd_tile(resolve_algorithm(&p->t, algo, p->gemm));
        p->slot[FC_SCRATCH_CALL] = fc_winograd_workspace(&p->t, p->winograd_tile);
        p->threads = fc_threads_for_work(forward_flops(&p->t));
        algo = FC_CONV_AUTO;
    } else {
        if (is_winograd(algo)) algo = FC_CONV_AUTO;  /* the rest as auto computes it */
        if (need_dx && (algo == FC_CONV_AUTO || algo == FC_CONV_IMPLICIT) &&
            resolve_algorithm(s, algo, p->gemm) != FC_CONV_DIRECT && input_grad_as_conv(s, &p->t) &&
            implicit_applies(&p->t, p->gemm)) {
            p->dx = PATH_IMPLICIT;
            p->implicit = implicit_forward_layout(&p->t, p->gemm);
            p->slot[FC_SCRATCH_CALL] = implicit_forward_floats(&p->implicit);
            p->slot[FC_SCRATCH_KERNEL] = fc_lines(patch_size(s) * s->cout);  /* the flipped kernel */
            p->threads = p->implicit.threads;
        }
    }
    if (dw_tile) {  /* before or after the other passes, in the same FC_SCRATCH_CALL block */
        p->dw = PATH_WINOGRAD;
        p->winograd_dw_tile = dw_tile;
        p->slot[FC_SCRATCH_CALL] = max64(p->slot[FC_SCRATCH_CALL], fc_winograd_weight_grad_workspace(s, dw_tile));
        p->threads = max64(p->threads, fc_threads_for_work(forward_flops(s)));
    }
    const int blocks_dx = need_dx && p->dx == PATH_NONE, blocks_dw = need_dw && !dw_tile;
    if (!blocks_dx && !blocks_dw && !need_db) return;
    p->blocks = make_backward_layout(s, algo, p->gemm, p->direct, blocks_dx, blocks_dw, need_db);
    if (blocks_dx) p->dx = p->blocks.dx;
    if (blocks_dw) p->dw = p->blocks.dw;
    /* the conv of dy reuses the blocks loop's FC_SCRATCH_CALL block after it */
    p->slot[FC_SCRATCH_CALL] = max64(p->slot[FC_SCRATCH_CALL], backward_floats(&p->blocks));
    p->threads = p->threads > p->blocks.threads ? p->threads : p->blocks.threads;
}

void conv_make_plan(const fc_conv_shape *s, int algo, int passes, conv_plan *p)
{
    memset(p, 0, sizeof *p);
    p->s = *s;
    p->passes = passes;
    p->gemm = fc_active_gemm_kernel();
    p->direct = fc_active_conv_direct();
    p->elementwise = fc_active_elementwise();
    p->algorithm = resolve_algorithm(s, algo, p->gemm);
    if (passes & FC_CONV_PASS_FORWARD)
        plan_forward(p);
    else
        plan_backward(p, algo);
    /* as fc_scratch allocates them: whole cache lines (the GEMM slot's size is a bound, left as it is) */
    p->slot[FC_SCRATCH_CALL] = fc_lines(p->slot[FC_SCRATCH_CALL]);
    p->slot[FC_SCRATCH_KERNEL] = fc_lines(p->slot[FC_SCRATCH_KERNEL]);
}

/* ---- the public entry points: plan, then run ---- */

void fc_conv2d_plan(const fc_conv_shape *s, int algo, int passes, fc_conv_plan_info *info)
{
    fc_call_begin();
    conv_plan p;
    conv_make_plan(s, algo, passes, &p);
    info->algorithm = p.algorithm;
    info->forward = p.forward;
    info->dx = p.dx;
    info->dw = p.dw;
    info->threads = p.threads;
    for (int i = 0; i < FC_SCRATCH_SLOTS; i++) info->scratch_bytes[i] = (int64_t)sizeof(float) * p.slot[i];
    fc_call_end(FC_OK);
}

const char *fc_conv_direct_kernel_name(void) { return fc_active_conv_direct()->name; }

int fc_conv2d_forward(const fc_conv_shape *s, int algo, const float *x, const float *w, const float *bias,
                      int relu, float *y)
{
    fc_call_begin();
    conv_plan p;
    conv_make_plan(s, algo, FC_CONV_PASS_FORWARD, &p);
    int status;
    switch (p.forward) {
    case PATH_DIRECT: status = conv_direct_forward(&p, x, w, bias, relu, y); break;
    case PATH_IMPLICIT:
        status = conv_implicit_forward(s, &p.implicit, p.gemm, p.direct, p.elementwise, x, w, bias, relu, NULL, y);
        break;
    case PATH_WINOGRAD: status = fc_winograd_forward(s, p.winograd_tile, x, w, 0, bias, relu, NULL, y); break;
    case PATH_GEMM: status = conv_gemm_forward(&p, x, w, bias, relu, y); break;
    default: status = conv_im2col_forward(&p, x, w, bias, relu, y); break;
    }
    return fc_call_end(status);
}

static int conv2d_backward(const conv_plan *p, const float *dy, const float *x, const float *w, int x_from_relu,
                           float *dx, float *dw, float *db)
{
    const int dx_as_conv = p->dx == PATH_WINOGRAD || p->dx == PATH_IMPLICIT;
    float *blocks_dx = dx_as_conv ? NULL : dx, *blocks_dw = p->dw == PATH_WINOGRAD ? NULL : dw;
    int status = FC_OK;
    if (blocks_dx || blocks_dw || db) status = conv_blocks_backward(p, dy, x, w, x_from_relu, blocks_dx, blocks_dw, db);
    if (status == FC_OK && dw && p->dw == PATH_WINOGRAD)
        status = fc_winograd_weight_grad(&p->s, p->winograd_dw_tile, x, dy, dw);
    if (status != FC_OK || !dx || !dx_as_conv) return status;
    if (p->dx == PATH_WINOGRAD)
        return fc_winograd_forward(&p->t, p->winograd_tile, dy, w, 1, NULL, 0, x_from_relu ? x : NULL, dx);
    float *wt = fc_scratch(FC_SCRATCH_KERNEL, p->slot[FC_SCRATCH_KERNEL]);
    if (!wt) return FC_ERROR_NO_MEMORY;
    conv_flip_kernel(&p->s, w, wt);
    return conv_implicit_forward(&p->t, &p->implicit, p->gemm, p->direct, p->elementwise, dy, wt, NULL, 0,
                                 x_from_relu ? x : NULL, dx);
}

int fc_conv2d_backward(const fc_conv_shape *s, int algo, const float *dy, const float *x, const float *w,
                       int x_from_relu, float *dx, float *dw, float *db)
{
    fc_call_begin();
    conv_plan p;
    conv_make_plan(s, algo, (dx ? FC_CONV_PASS_DX : 0) | (dw ? FC_CONV_PASS_DW : 0) | (db ? FC_CONV_PASS_DB : 0), &p);
    return fc_call_end(conv2d_backward(&p, dy, x, w, x_from_relu, dx, dw, db));
}
