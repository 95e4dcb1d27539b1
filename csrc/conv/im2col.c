/* im2col + GEMM, one block of output pixels at a time, and the backward pass's loop over blocks of images.
 *
 * Forward: each thread gathers the patches of a block of output rows into its own small buffer (so
 * the patches are still in cache when the GEMM reads them) and multiplies it by the kernel, packed once
 * per call, with the bias and ReLU fused into the GEMM's write-back. A 1x1, stride-1, unpadded conv is
 * one plain GEMM reading x in place.
 * Backward: blocks of whole images; dx of each block is written by one thread (col2im of dy @ w^T, or
 * the direct kernels' gather), and dw/db are accumulated into a fixed number of partial sums, reduced
 * in a fixed order, so the result does not depend on the thread count. Each block's dw comes from the
 * path the plan chose: the direct kernels, implicit.c's padded-image GEMMs or few-output rows, or
 * im2col's cols^T @ dy. */
#include <string.h>

#include "plan.h"

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

/* The training kernels' ReLU gradient, in place, on this thread (ew: the call's table, taken by the
 * calling thread). */
void conv_relu_mask(const fc_elementwise_kernels *ew, const float *x, float *dx, int64_t n)
{
    ew->relu_backward(0, n, dx, x, dx);
}

int conv_gemm_forward(const conv_plan *p, const float *x, const float *w, const float *bias, int relu, float *y)
{
    const fc_conv_shape *s = &p->s;
    fc_gemm_problem g = conv_forward_gemm(s, w, bias, relu);
    g.m = s->n * s->oh * s->ow;
    g.a = x;
    g.c = y;
    return fc_gemm_run(p->gemm, &g, p->threads);
}

int conv_im2col_forward(const conv_plan *pl, const float *x, const float *w, const float *bias, int relu, float *y)
{
    const fc_conv_shape *s = &pl->s;
    const fc_gemm_kernel *kernel = pl->gemm;
    const forward_layout l = pl->fwd;
    const int64_t rows = s->n * s->oh * s->ow;
    const int threads = l.threads;
    fc_gemm_problem p = conv_forward_gemm(s, w, bias, relu);
    p.m = rows;
    p.a = x;
    p.c = y;
    float *ws = fc_scratch(FC_SCRATCH_CALL, l.shared + l.threads * l.per_thread);
    if (!ws) return FC_ERROR_NO_MEMORY;
    if (l.packed) {
        fc_gemm_pack_b(kernel, &p, ws);
        p.b_packed = ws;
    }
    const int64_t block = l.block_rows, blocks = (rows + block - 1) / block;
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

int conv_blocks_backward(const conv_plan *p, const float *dy, const float *x, const float *w, int x_from_relu,
                         float *dx, float *dw, float *db)
{
    const fc_conv_shape *s = &p->s;
    const fc_gemm_kernel *kernel = p->gemm;
    const fc_conv_direct_kernels *dk = p->direct;
    const fc_elementwise_kernels *ew = p->elementwise;
    const int64_t pixels = s->oh * s->ow;
    const backward_layout l = p->blocks;
    const int direct = l.direct, direct_dx = l.direct_dx, dw_transposed = l.dw_transposed;
    const int implicit_dw = l.implicit_dw, few_dw = l.few_dw;
    const int64_t blocks = l.blocks, partials = l.partials, dw_size = l.dw_size, db_size = l.db_size;
    const int64_t block = dk->block;
    float *partial = fc_scratch(FC_SCRATCH_CALL, l.shared + l.threads * l.per_thread);
    if (!partial) return FC_ERROR_NO_MEMORY;
    float *dw_partial = dw ? partial : NULL;
    float *db_partial = db ? partial + partials * dw_size : NULL;
    float *wp = partial + fc_lines(partials * (dw_size + db_size));  /* the packed weights for dx */
    /* im2col: dcols = dy_block @ w^T, the same B (w^T) for every block, packed once. */
    fc_gemm_problem dx_gemm = conv_input_grad_gemm(s, w);
    if (dx && direct_dx) {
        conv_direct_pack(s, block, w, NULL, wp);
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
                            conv_implicit_weight_grad_image(s, kernel, x, dy, row0 / pixels + i, b != part || i > 0,
                                                            dw_partial + part * dw_size, cols, gemm_ws);
                    } else if (dw && few_dw) {
                        if (b == part) memset(dw_partial + part * dw_size, 0, sizeof(float) * (size_t)dw_size);
                        for (int64_t i = 0; i < rows / pixels; i++)
                            conv_few_outputs_weight_grad_image(dk, s, x, dy, row0 / pixels + i,
                                                               dw_partial + part * dw_size, cols);
                    } else if (dw) {  /* dw_part (+)= cols^T @ dy_block, or its transpose for few output channels */
                        im2col_rows(s, x, row0, rows, cols);
                        fc_gemm_problem g = conv_dw_gemm(s, dw_transposed);
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
                        conv_relu_mask(ew, x + first * image, dx + first * image, rows / pixels * image);
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
                if (x_from_relu)
                    conv_relu_mask(ew, x + t * chunk * row_size, dx + t * chunk * row_size, rows * row_size);
            }
        }

        conv_sum_partials(p, dw_partial, db_partial, dw, db);
    }
    return FC_OK;
}

void conv_sum_partials(const conv_plan *p, const float *dw_partial, const float *db_partial, float *dw, float *db)
{
    const fc_conv_shape *s = &p->s;
    const backward_layout l = p->blocks;
    const int direct = l.direct, dw_transposed = l.dw_transposed;
    const int64_t k = patch_size(s), partials = l.partials, dw_size = l.dw_size, db_size = l.db_size;
    const int64_t block = p->direct->block;
    /* Sum the partials in their fixed order; each output element is owned by one thread. In the
     * plain layout a thread adds whole runs of elements part after part, which vectorises, rather
     * than gathering each element across the parts. */
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
