/* 2-D convolution as im2col + GEMM, one block of output pixels at a time.
 *
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

enum {
    FORWARD_BLOCK_FLOATS = 65536,   /* im2col block of the forward pass: 256 KiB, stays in L2 */
    BACKWARD_BLOCK_ROWS = 1024,     /* output pixels per backward block (rounded to whole images) */
    MAX_PARTIAL_SUMS = 16,          /* partial dw/db buffers, fixed so the reduction order is too */
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static float *alloc_floats(int64_t count)
{
    size_t bytes = ((size_t)count * sizeof(float) + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes ? bytes : 64);
    if (!p) abort();
    return p;
}

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
        for (int64_t i = 0; i < s->kh; i++) {
            const int64_t iy = oy * s->stride_h - s->pad_top + i * s->dilation_h;
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
        for (int64_t i = 0; i < s->kh; i++) {
            const int64_t iy = oy * s->stride_h - s->pad_top + i * s->dilation_h;
            for (int64_t j = 0; j < s->kw; j++, src += s->cin) {
                const int64_t ix = ox * s->stride_w - s->pad_left + j * s->dilation_w;
                if (iy < 0 || iy >= s->h || ix < 0 || ix >= s->w) continue;
                float *dst = dx + ((img * s->h + iy) * s->w + ix) * s->cin;
                for (int64_t c = 0; c < s->cin; c++) dst[c] += src[c];
            }
        }
    }
}

static int is_pointwise(const fc_conv_shape *s)
{
    return s->kh == 1 && s->kw == 1 && s->stride_h == 1 && s->stride_w == 1 && s->pad_top == 0 &&
           s->pad_left == 0 && s->oh == s->h && s->ow == s->w;
}

static int64_t forward_block_rows(const fc_conv_shape *s)
{
    return max64(16, FORWARD_BLOCK_FLOATS / patch_size(s));
}

static int64_t backward_block_images(const fc_conv_shape *s)
{
    return max64(1, BACKWARD_BLOCK_ROWS / (s->oh * s->ow));
}

int64_t fc_conv2d_workspace_floats(const fc_conv_shape *s, int backward)
{
    const int64_t k = patch_size(s);
    if (!backward) return is_pointwise(s) ? 0 : forward_block_rows(s) * k;
    const int64_t block_rows = backward_block_images(s) * s->oh * s->ow;
    return 2 * block_rows * k + MAX_PARTIAL_SUMS * (k * s->cout + s->cout);
}

void fc_conv2d_forward(const fc_conv_shape *s, const float *x, const float *w, const float *bias,
                       int relu, float *y)
{
    const fc_gemm_kernel *kernel = fc_active_gemm_kernel();
    const int64_t rows = s->n * s->oh * s->ow, k = patch_size(s);
    const int threads = fc_threads_for_work(2.0 * rows * k * s->cout);
    fc_gemm_problem p = {
        .m = rows, .n = s->cout, .k = k, .a = x, .a_rs = k, .a_cs = 1, .b = w, .b_rs = s->cout, .b_cs = 1,
        .c = y, .ldc = s->cout, .alpha = 1.0f, .beta = 0.0f, .bias = bias, .relu = relu,
    };
    if (is_pointwise(s)) {
        fc_gemm_run(kernel, &p, threads);
        return;
    }
    const int64_t block = forward_block_rows(s), blocks = (rows + block - 1) / block;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *cols = alloc_floats(block * k);
        fc_gemm_problem part = p;
        part.a = cols;
        #pragma omp for schedule(dynamic)
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t row0 = b * block;
            part.m = min64(block, rows - row0);
            part.c = y + row0 * s->cout;
            im2col_rows(s, x, row0, part.m, cols);
            fc_gemm_run(kernel, &part, 1);
        }
        free(cols);
    }
}

void fc_conv2d_backward(const fc_conv_shape *s, const float *dy, const float *x, const float *w,
                        float *dx, float *dw, float *db)
{
    const fc_gemm_kernel *kernel = fc_active_gemm_kernel();
    const int64_t k = patch_size(s), pixels = s->oh * s->ow;
    const int64_t images_per_block = backward_block_images(s);
    const int64_t blocks = (s->n + images_per_block - 1) / images_per_block;
    /* Each partial sum owns blocks b, b + partials, b + 2*partials, ... in that order. */
    const int64_t partials = min64(blocks, MAX_PARTIAL_SUMS);
    float *dw_partial = dw ? alloc_floats(partials * k * s->cout) : NULL;
    float *db_partial = db ? alloc_floats(partials * s->cout) : NULL;
    if (dx) memset(dx, 0, sizeof(float) * (size_t)(s->n * s->h * s->w * s->cin));
    const int threads = fc_threads_for_work(6.0 * s->n * pixels * k * s->cout);

    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int64_t block_rows = images_per_block * pixels;
        float *cols = dw ? alloc_floats(block_rows * k) : NULL;
        float *dcols = dx ? alloc_floats(block_rows * k) : NULL;
        #pragma omp for schedule(dynamic)
        for (int64_t part = 0; part < partials; part++) {
            for (int64_t b = part; b < blocks; b += partials) {
                const int64_t row0 = b * block_rows, rows = min64(block_rows, s->n * pixels - row0);
                const float *dy_block = dy + row0 * s->cout;
                if (dw) {  /* dw_part (+)= cols^T @ dy_block */
                    im2col_rows(s, x, row0, rows, cols);
                    const fc_gemm_problem g = {
                        .m = k, .n = s->cout, .k = rows, .a = cols, .a_rs = 1, .a_cs = k,
                        .b = dy_block, .b_rs = s->cout, .b_cs = 1, .c = dw_partial + part * k * s->cout,
                        .ldc = s->cout, .alpha = 1.0f, .beta = b == part ? 0.0f : 1.0f,
                    };
                    fc_gemm_run(kernel, &g, 1);
                }
                if (db) {
                    float *acc = db_partial + part * s->cout;
                    if (b == part) memset(acc, 0, sizeof(float) * s->cout);
                    for (int64_t r = 0; r < rows; r++)
                        for (int64_t c = 0; c < s->cout; c++) acc[c] += dy_block[r * s->cout + c];
                }
                if (dx) {  /* dcols = dy_block @ w^T, scattered back into this block's own images */
                    const fc_gemm_problem g = {
                        .m = rows, .n = k, .k = s->cout, .a = dy_block, .a_rs = s->cout, .a_cs = 1,
                        .b = w, .b_rs = 1, .b_cs = s->cout, .c = dcols, .ldc = k, .alpha = 1.0f, .beta = 0.0f,
                    };
                    fc_gemm_run(kernel, &g, 1);
                    col2im_rows(s, dcols, row0, rows, dx);
                }
            }
        }
        free(cols);
        free(dcols);

        /* Sum the partials in their fixed order; each output element is owned by one thread. */
        if (dw) {
            #pragma omp for schedule(static)
            for (int64_t e = 0; e < k * s->cout; e++) {
                float sum = dw_partial[e];
                for (int64_t part = 1; part < partials; part++) sum += dw_partial[part * k * s->cout + e];
                dw[e] = sum;
            }
        }
        if (db) {
            #pragma omp for schedule(static)
            for (int64_t c = 0; c < s->cout; c++) {
                float sum = db_partial[c];
                for (int64_t part = 1; part < partials; part++) sum += db_partial[part * s->cout + c];
                db[c] = sum;
            }
        }
    }
    free(dw_partial);
    free(db_partial);
}
