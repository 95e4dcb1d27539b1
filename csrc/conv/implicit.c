/* Implicit GEMM: the forward pass of stride-1, undilated convolutions (and their input gradient, as
 * the conv of dy with the flipped kernel), and the weight gradients computed from padded images.
 *
 * Forward: a task is a band of output rows of one image. It copies the padded input rows the band
 * reads into its own buffer (one pass over x instead of im2col's kh*kw), then for each output row,
 * register tile of MR pixels and NR output channels, and kernel row r, the micro-kernel reads the
 * tile's taps in place (row i of A starts cin floats after row i - 1) and adds their product with
 * kernel row r, packed once per call, into y; the bias and ReLU come with the last kernel row.
 *
 * Weight gradient: kernel tap (r, c)'s slice of dw is (x shifted by the tap)^T @ dy over the output
 * pixels. Copy an image with its padding to width wp = ow + kw - 1, and its dy to the same width with
 * zeros in the kw - 1 extra columns: output pixel q = oy * wp + ox then reads tap (r, c) at
 * q + r * wp + c, so every tap's A is the padded image read in place from its own offset, and the
 * extra columns add zeros. The kw taps of kernel row r are then one A of kw * cin rows, row
 * c * cin + ci of column q at (q + r * wp) * cin + c * cin + ci: columns cin apart, overlapping, and
 * its product is dw's rows for that kernel row, so each image takes kh GEMMs. No patches are written:
 * the image and dy stay in L2 for all the products, where im2col wrote kh * kw copies of it. With few
 * output channels the direct kernels' few_outputs_weight_grad_row runs over the same padded image. */
#include <string.h>

#include "plan.h"

/* Output rows per task: about FORWARD_BLOCK_FLOATS of padded input, at least one row. */
int64_t conv_implicit_band_rows(const fc_conv_shape *s)
{
    return max64(1, min64(s->oh, FORWARD_BLOCK_FLOATS / (implicit_padded_width(s) * s->cin) - (s->kh - 1)));
}

/* Kernel row r as the B of a GEMM: (kw * cin) x cout, packed by fc_gemm_pack_b. */
fc_gemm_problem conv_kernel_row_gemm(const fc_conv_shape *s, const float *w, int64_t r)
{
    const int64_t k = s->kw * s->cin;
    const fc_gemm_problem p = {
        .n = s->cout, .k = k, .b = w ? w + r * k * s->cout : NULL, .b_rs = s->cout, .b_cs = 1,
    };
    return p;
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

/* y = conv(x, w) + bias, then ReLU if asked, and zeroed where mask_by <= 0 when mask_by (the size of
 * y) is not NULL: the input gradient through the ReLU that produced x (see fc_conv2d_backward).
 * l: implicit_forward_layout of s (conv.c). */
int conv_implicit_forward(const fc_conv_shape *s, const implicit_layout *l, const fc_gemm_kernel *kr,
                          const fc_conv_direct_kernels *dk, const fc_elementwise_kernels *ew, const float *x,
                          const float *w, const float *bias, int relu, const float *mask_by, float *y)
{
    const int64_t mr = kr->mr, wp = implicit_padded_width(s), k = patch_size(s);
    const int few = l->few, by_band = l->by_band;
    const int64_t packed = l->packed;
    const implicit_layout layout = *l;
    float *wpack = fc_scratch(FC_SCRATCH_CALL, layout.weights + layout.threads * (layout.band + layout.band_out));
    if (!wpack) return FC_ERROR_NO_MEMORY;
    if (few) {  /* wpack[co][r][c * cin + ci] = w[r][c][ci][co] */
        for (int64_t e = 0; e < k; e++)
            for (int64_t co = 0; co < s->cout; co++) wpack[co * k + e] = w[e * s->cout + co];
    } else {
        for (int64_t r = 0; r < s->kh; r++) {
            const fc_gemm_problem g = conv_kernel_row_gemm(s, w, r);
            fc_gemm_pack_b(kr, &g, wpack + r * packed);
        }
    }
    const int64_t band = layout.band_rows, bands = (s->oh + band - 1) / band;
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
                conv_relu_mask(ew, mask_by + first, y + first, rows * out_row);
        }
    }
    return FC_OK;
}

/* The padded image (rounded to whole cache lines, so the padded dy after it is aligned), then the padded dy. */
int64_t conv_implicit_dw_image_floats(const fc_conv_shape *s)
{
    return ((s->oh + s->kh - 1) * implicit_padded_width(s) * s->cin + IMPLICIT_DW_SLACK + 15) / 16 * 16;
}

int64_t conv_implicit_dw_floats(const fc_conv_shape *s)
{
    return conv_implicit_dw_image_floats(s) + s->oh * implicit_padded_width(s) * s->cout;
}

/* dw (+)= image img's weight gradient (dw is (kh * kw * cin) x cout; overwritten unless accumulate). */
fc_gemm_problem conv_implicit_dw_gemm(const fc_conv_shape *s)
{
    const int64_t wp = implicit_padded_width(s);
    const fc_gemm_problem g = {
        .m = s->kw * s->cin, .n = s->cout, .k = (s->oh - 1) * wp + s->ow, .a_rs = 1, .a_cs = s->cin,
        .b_rs = s->cout, .b_cs = 1, .ldc = s->cout, .alpha = 1.0f,
    };
    return g;
}

/* gemm_ws: what conv_implicit_dw_gemm takes on one thread (conv.c sizes it). */
void conv_implicit_weight_grad_image(const fc_conv_shape *s, const fc_gemm_kernel *kr, const float *x,
                                     const float *dy, int64_t img, int accumulate, float *dw, float *buf,
                                     float *gemm_ws)
{
    const int64_t wp = implicit_padded_width(s), rows = s->oh + s->kh - 1, out_row = s->ow * s->cout;
    float *xpad = buf, *dypad = buf + conv_implicit_dw_image_floats(s);
    copy_padded_rows(s, x, img, 0, rows, xpad);
    memset(xpad + rows * wp * s->cin, 0, sizeof(float) * IMPLICIT_DW_SLACK);
    for (int64_t oy = 0; oy < s->oh; oy++) {
        memcpy(dypad + oy * wp * s->cout, dy + (img * s->oh + oy) * out_row, sizeof(float) * (size_t)out_row);
        memset(dypad + oy * wp * s->cout + out_row, 0, sizeof(float) * (size_t)((wp - s->ow) * s->cout));
    }
    for (int64_t r = 0; r < s->kh; r++) {
        fc_gemm_problem g = conv_implicit_dw_gemm(s);
        g.a = xpad + r * wp * s->cin;
        g.b = dypad;
        g.c = dw + r * s->kw * s->cin * s->cout;
        g.beta = accumulate ? 1.0f : 0.0f;
        fc_gemm_run_in(kr, &g, 1, gemm_ws);
    }
}

/* dw transposed ([cout][kh][kw * cin], the layout of the partial sums of few output channels) from
 * the direct kernels' few_outputs_weight_grad_row over each padded image. */
/* dwt += image img's weight gradient, transposed (see above); buf holds conv_implicit_dw_image_floats. */
void conv_few_outputs_weight_grad_image(const fc_conv_direct_kernels *dk, const fc_conv_shape *s, const float *x,
                                        const float *dy, int64_t img, float *dwt, float *buf)
{
    const int64_t wp = implicit_padded_width(s);
    copy_padded_rows(s, x, img, 0, s->oh + s->kh - 1, buf);
    for (int64_t oy = 0; oy < s->oh; oy++)
        dk->few_outputs_weight_grad_row(buf + oy * wp * s->cin, wp * s->cin, s->cin, s->kw * s->cin, (int)s->kh,
                                        dy + (img * s->oh + oy) * s->ow * s->cout, (int)s->cout, s->ow, dwt);
}

/* wt[r][c][co][ci] = w[kh - 1 - r][kw - 1 - c][ci][co]: the kernel of input_grad_as_conv. */
void conv_flip_kernel(const fc_conv_shape *s, const float *w, float *wt)
{
    for (int64_t r = 0; r < s->kh; r++)
        for (int64_t c = 0; c < s->kw; c++) {
            const float *src = w + ((s->kh - 1 - r) * s->kw + (s->kw - 1 - c)) * s->cin * s->cout;
            float *dst = wt + (r * s->kw + c) * s->cout * s->cin;
            for (int64_t ci = 0; ci < s->cin; ci++)
                for (int64_t co = 0; co < s->cout; co++) dst[co * s->cin + ci] = src[ci * s->cout + co];
        }
}
