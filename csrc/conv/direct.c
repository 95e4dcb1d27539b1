/* Direct convolution for few input channels, vectorised over the output channels (see direct.h).
 *
 * One source, compiled once per instruction set: the vector width follows the compiler flags
 * (GCC/Clang vector extensions: 16 floats with -mavx512f, 8 with -mavx2 -mfma, 4 otherwise) and the
 * table this compile defines is named after the set. The forward pass holds a tile of PX output
 * pixels x NV vectors of output channels in registers, loads each packed weight vector once per tile
 * and broadcasts the input values, then adds the bias and applies ReLU before the single store. The
 * weight gradient walks one kernel tap at a time over an output row, with U interleaved accumulators
 * summed in a fixed order. */
#include <string.h>

#if defined(__SSE__)
#include <immintrin.h>
#endif

#include "direct.h"

#if defined(__AVX512F__)
#define DIRECT_TABLE fc_conv_direct_avx512
#define DIRECT_NAME "direct_avx512_4x32"
enum { LANES = 16 };
#elif defined(__AVX2__) && defined(__FMA__)
#define DIRECT_TABLE fc_conv_direct_avx2
#define DIRECT_NAME "direct_avx2_4x16"
enum { LANES = 8 };
#else
#define DIRECT_TABLE fc_conv_direct_generic
#define DIRECT_NAME "direct_generic_4x8"
enum { LANES = 4 };
#endif

enum {
    NV = 2,                 /* vectors of output channels per block */
    BLOCK = NV * LANES,     /* output channels per block */
    PX = 4,                 /* output pixels per forward tile */
    U = 4,                  /* interleaved accumulators of the weight gradient */
    DW_VECTORS = 4,         /* tap vectors per pass of the few-output weight gradient */
};

typedef float vfloat __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(LANES * sizeof(float))));

/* v in every lane: one broadcast ((vfloat){0} + v would also add 0.0f, which the compiler must keep,
 * as it turns -0.0f into +0.0f). */
static inline vfloat splat(float v)
{
#if defined(__AVX512F__)
    return (vfloat)_mm512_set1_ps(v);
#elif defined(__AVX2__)
    return (vfloat)_mm256_set1_ps(v);
#elif defined(__SSE__)
    return (vfloat)_mm_set1_ps(v);
#else
    vfloat r;
    for (int l = 0; l < LANES; l++) r[l] = v;
    return r;
#endif
}

typedef float vfloat_unaligned __attribute__((vector_size(LANES * sizeof(float)), aligned(4)));

/* Writes the first n (<= LANES) lanes of v, after ReLU if asked (NaN stays NaN, like max(v, 0)). A whole
 * vector is one store from its register (a memcpy of it went through the stack: a store-forwarding stall
 * per vector). */
static inline void store_lanes(float *dst, vfloat v, int64_t n, int relu)
{
    if (relu) v = (vfloat)((vint)v & ~(vint)(v < (vfloat){0}));
    if (n >= LANES)
        *(vfloat_unaligned *)dst = v;
    else if (n > 0)
        memcpy(dst, &v, (size_t)n * sizeof(float));
}

/* The sum of the lanes of v, in a fixed order, without leaving the registers. */
static inline float sum_lanes(vfloat v)
{
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps((__m512)v);
#elif defined(__AVX2__)
    __m128 a = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    return _mm_cvtss_f32(_mm_add_ss(a, _mm_shuffle_ps(a, a, 1)));
#elif defined(__SSE__)
    __m128 a = _mm_add_ps((__m128)v, _mm_movehl_ps((__m128)v, (__m128)v));
    return _mm_cvtss_f32(_mm_add_ss(a, _mm_shuffle_ps(a, a, 1)));
#else
    float total = 0.0f;
    for (int l = 0; l < LANES; l++) total += v[l];
    return total;
#endif
}

/* Output columns [*lo, *hi) whose kernel column j lands inside the image. */
static void column_range(const fc_conv_shape *s, int64_t j, int64_t *lo, int64_t *hi)
{
    const int64_t before = s->pad_left - j * s->dilation_w;        /* ox * sw >= before */
    const int64_t last = s->w - 1 + s->pad_left - j * s->dilation_w; /* ox * sw <= last */
    int64_t a = before <= 0 ? 0 : (before + s->stride_w - 1) / s->stride_w;
    int64_t b = last < 0 ? 0 : last / s->stride_w + 1;
    if (a > s->ow) a = s->ow;
    if (b > s->ow) b = s->ow;
    if (b < a) b = a;
    *lo = a;
    *hi = b;
}

/* acc = bias + the taps of kernel rows [i0, i1) for a tile of PX output pixels from ox, one channel
 * block. Always inlined: the 3x3 single-channel first layer calls it with constant kh, kw, cin and
 * steps, and the compiler unrolls that call into straight FMAs. */
static inline __attribute__((always_inline)) void forward_tile(const fc_conv_shape *s, const float *image,
                                                               const float *wb, const float *bb, int64_t oy,
                                                               int64_t ox, int64_t i0, int64_t i1, int64_t kh,
                                                               int64_t kw, int64_t cin, int64_t xstep,
                                                               int64_t dilation_w, vfloat acc[PX][NV])
{
    for (int p = 0; p < PX; p++)
        for (int v = 0; v < NV; v++) acc[p][v] = *(const vfloat *)(bb + v * LANES);
    for (int64_t i = i0; i < i1; i++) {
        const int64_t iy = oy * s->stride_h - s->pad_top + i * s->dilation_h;
        const float *xrow = image + (iy * s->w + ox * s->stride_w - s->pad_left) * cin;
        for (int64_t j = 0; j < kw; j++) {
            const float *xp = xrow + j * dilation_w * cin;
            const float *wj = wb + (i * kw + j) * cin * BLOCK;
            for (int64_t c = 0; c < cin; c++) {
                vfloat wv[NV];
                for (int v = 0; v < NV; v++) wv[v] = *(const vfloat *)(wj + c * BLOCK + v * LANES);
                for (int p = 0; p < PX; p++) {
                    const vfloat xv = splat(xp[p * xstep + c]);
                    for (int v = 0; v < NV; v++) acc[p][v] += xv * wv[v];
                }
            }
        }
    }
    (void)kh;
}

/* The kh input rows under output row oy, zero padded, into dst: row i holds input row
 * oy * sh - pad_top + i * dh (zeros outside the image) from input column -pad_left on, `cols`
 * columns of cin floats. Every output pixel of the row then takes the tile path, borders included. */
static void padded_rows(const fc_conv_shape *s, const float *image, int64_t oy, int64_t cols, float *dst)
{
    const int64_t cin = s->cin, copied = s->w < cols - s->pad_left ? s->w : cols - s->pad_left;
    for (int64_t i = 0; i < s->kh; i++) {
        float *row = dst + i * cols * cin;
        const int64_t iy = oy * s->stride_h - s->pad_top + i * s->dilation_h;
        memset(row, 0, sizeof(float) * (size_t)(cols * cin));
        if (iy >= 0 && iy < s->h && copied > 0)
            memcpy(row + s->pad_left * cin, image + iy * s->w * cin, sizeof(float) * (size_t)(copied * cin));
    }
}

/* The same rows gathered (direct.h): for each of `cols` / kw output pixels, its kw taps side by side,
 * zeros for taps in the padding and for pixels past ow. */
static void gathered_rows(const fc_conv_shape *s, const float *image, int64_t oy, int64_t cols, float *dst)
{
    const int64_t cin = s->cin, pixels = cols / s->kw;
    for (int64_t i = 0; i < s->kh; i++) {
        float *row = dst + i * cols * cin;
        const int64_t iy = oy * s->stride_h - s->pad_top + i * s->dilation_h;
        if (iy < 0 || iy >= s->h) {
            memset(row, 0, sizeof(float) * (size_t)(cols * cin));
            continue;
        }
        for (int64_t p = 0; p < pixels; p++)
            for (int64_t j = 0; j < s->kw; j++) {
                const int64_t ix = p * s->stride_w - s->pad_left + j * s->dilation_w;
                float *d = row + (p * s->kw + j) * cin;
                if (p < s->ow && ix >= 0 && ix < s->w)
                    memcpy(d, image + (iy * s->w + ix) * cin, sizeof(float) * (size_t)cin);
                else
                    memset(d, 0, sizeof(float) * (size_t)cin);
            }
    }
}

static void forward(const fc_conv_shape *s, const float *x, const float *wp, const float *bp, int relu,
                    float *y, int64_t row0, int64_t rows, float *band_rows)
{
    const int64_t cblocks = (s->cout + BLOCK - 1) / BLOCK, taps_cin = s->kh * s->kw * s->cin;
    const int first_layer_3x3 = s->kh == 3 && s->kw == 3 && s->cin == 1 && s->stride_w == 1 && s->dilation_w == 1;
    /* The padded rows as an image of kh rows that needs no padding: the tile reads row i for kernel row i.
     * Columns reach the last tile's last tap, past ow when the last tile is partial. Gathered, pixel p's
     * tap j is column p * kw + j: a stride of kw and no dilation. */
    const int gathered = fc_conv_direct_band_gathered(s, PX);
    fc_conv_shape band = *s;
    band.h = s->kh;
    band.w = fc_conv_direct_band_cols(s, PX);
    band.stride_h = band.dilation_h = 1;
    band.pad_top = band.pad_bottom = band.pad_left = band.pad_right = 0;
    if (gathered) band.stride_w = s->kw, band.dilation_w = 1;
    const int64_t xstep = band.stride_w * s->cin;

    for (int64_t r = row0; r < row0 + rows; r++) {
        const int64_t img = r / s->oh, oy = r % s->oh;
        if (gathered)
            gathered_rows(s, x + img * s->h * s->w * s->cin, oy, band.w, band_rows);
        else
            padded_rows(s, x + img * s->h * s->w * s->cin, oy, band.w, band_rows);
        float *out = y + r * s->ow * s->cout;
        for (int64_t cb = 0; cb < cblocks; cb++) {
            const float *wb = wp + cb * taps_cin * BLOCK, *bb = bp + cb * BLOCK;
            const int64_t co = cb * BLOCK, n_out = s->cout - co;
            for (int64_t ox = 0; ox < s->ow; ox += PX) {
                vfloat acc[PX][NV];
                if (first_layer_3x3)
                    forward_tile(&band, band_rows, wb, bb, 0, ox, 0, 3, 3, 3, 1, 1, 1, acc);
                else
                    forward_tile(&band, band_rows, wb, bb, 0, ox, 0, s->kh, s->kh, s->kw, s->cin, xstep,
                                 band.dilation_w, acc);
                const int pixels = s->ow - ox < PX ? (int)(s->ow - ox) : PX;
                for (int p = 0; p < pixels; p++)
                    for (int v = 0; v < NV; v++)
                        store_lanes(out + (ox + p) * s->cout + co + v * LANES, acc[p][v], n_out - v * LANES, relu);
            }
        }
    }
}

/* acc += x[ox + j][c] * d[ox] over the border columns of tap j: [lo, hi) without [skip_lo, skip_hi). */
static inline __attribute__((always_inline)) void border_tap(const float *xr, const float *d, int64_t ld,
                                                             int64_t cin, int64_t lo, int64_t hi, int64_t skip_lo,
                                                             int64_t skip_hi, vfloat acc[NV])
{
    for (int64_t ox = lo; ox < hi; ox++) {
        if (ox == skip_lo && skip_hi > skip_lo) {
            ox = skip_hi - 1;
            continue;
        }
        const vfloat xv = splat(xr[ox * cin]);
        for (int v = 0; v < NV; v++) acc[v] += xv * *(const vfloat_unaligned *)(d + ox * ld + v * LANES);
    }
}

/* One kernel row of a 3-wide, stride-1, undilated kernel over one output row: dst[j][c] += sum over
 * ox of x[ox + j][c] * d[ox] for the three taps j at once, so each vector of dy is loaded once for
 * three FMAs and the loop runs over the whole row (one tap at a time, it reloaded dy per tap over
 * loops of ow / U). xr points at input column -pad_left of the row; d at the row's block of dy. The
 * taps' accumulators are separate variables, so that they stay in registers. */
static void three_taps_weight_grad(const fc_conv_shape *s, const float *xr, const float *d, int64_t ld, float *dst)
{
    int64_t lo[3], hi[3];
    for (int j = 0; j < 3; j++) column_range(s, j, &lo[j], &hi[j]);
    /* Tap j reads inside the image for ox in [lo[j], hi[j]); both ends fall as j grows, so every tap
     * does for ox in [lo[0], hi[2]). */
    const int64_t inner_lo = lo[0], inner_hi = hi[2] > lo[0] ? hi[2] : lo[0];
    const int64_t cin = s->cin;
    for (int64_t c = 0; c < cin; c++) {
        vfloat a0[NV] = {0}, a1[NV] = {0}, a2[NV] = {0};
        for (int64_t ox = inner_lo; ox < inner_hi; ox++) {
            const float *xp = xr + ox * cin + c;
            const vfloat x0 = splat(xp[0]), x1 = splat(xp[cin]), x2 = splat(xp[2 * cin]);
            for (int v = 0; v < NV; v++) {
                const vfloat dv = *(const vfloat_unaligned *)(d + ox * ld + v * LANES);
                a0[v] += x0 * dv;
                a1[v] += x1 * dv;
                a2[v] += x2 * dv;
            }
        }
        border_tap(xr + c, d, ld, cin, lo[0], hi[0], inner_lo, inner_hi, a0);
        border_tap(xr + cin + c, d, ld, cin, lo[1], hi[1], inner_lo, inner_hi, a1);
        border_tap(xr + 2 * cin + c, d, ld, cin, lo[2], hi[2], inner_lo, inner_hi, a2);
        for (int v = 0; v < NV; v++) {
            *(vfloat *)(dst + c * BLOCK + v * LANES) += a0[v];
            *(vfloat *)(dst + (cin + c) * BLOCK + v * LANES) += a1[v];
            *(vfloat *)(dst + (2 * cin + c) * BLOCK + v * LANES) += a2[v];
        }
    }
}

static void weight_grad(const fc_conv_shape *s, const float *x, const float *dy, int64_t row0, int64_t rows,
                        float *dwp, float *dbp, int first, float *scratch)
{
    const int64_t cblocks = (s->cout + BLOCK - 1) / BLOCK, taps_cin = s->kh * s->kw * s->cin;
    const int64_t ld = cblocks * BLOCK;  /* floats per output pixel in the padded copy of dy */
    if (first) {
        if (dwp) memset(dwp, 0, sizeof(float) * (size_t)(cblocks * taps_cin * BLOCK));
        if (dbp) memset(dbp, 0, sizeof(float) * (size_t)ld);
    }
    for (int64_t r = row0; r < row0 + rows; r++) {
        const int64_t img = r / s->oh, oy = r % s->oh;
        const float *image = x + img * s->h * s->w * s->cin;
        const float *g = dy + r * s->ow * s->cout, *row = g;
        if (ld != s->cout) {  /* dy row, each pixel's channels padded to ld (whole blocks are read in place) */
            for (int64_t ox = 0; ox < s->ow; ox++) {
                memcpy(scratch + ox * ld, g + ox * s->cout, sizeof(float) * (size_t)s->cout);
                memset(scratch + ox * ld + s->cout, 0, sizeof(float) * (size_t)(ld - s->cout));
            }
            row = scratch;
        }
        for (int64_t cb = 0; cb < cblocks; cb++) {
            const float *d = row + cb * BLOCK;
            if (dbp) {
                vfloat sum[NV] = {{0}};
                for (int64_t ox = 0; ox < s->ow; ox++)
                    for (int v = 0; v < NV; v++) sum[v] += *(const vfloat_unaligned *)(d + ox * ld + v * LANES);
                for (int v = 0; v < NV; v++) *(vfloat *)(dbp + cb * BLOCK + v * LANES) += sum[v];
            }
            if (!dwp) continue;
            for (int64_t i = 0; i < s->kh; i++) {
                const int64_t iy = oy * s->stride_h - s->pad_top + i * s->dilation_h;
                if (iy < 0 || iy >= s->h) continue;
                if (s->kw == 3 && s->stride_w == 1 && s->dilation_w == 1) {
                    float *dst = dwp + (cb * taps_cin + i * 3 * s->cin) * BLOCK;
                    three_taps_weight_grad(s, image + (iy * s->w - s->pad_left) * s->cin, d, ld, dst);
                    continue;
                }
                for (int64_t j = 0; j < s->kw; j++) {
                    int64_t lo, hi;
                    column_range(s, j, &lo, &hi);
                    /* x of output column ox at this tap: xr[ox * xstep] */
                    const float *xr = image + (iy * s->w - s->pad_left + j * s->dilation_w) * s->cin;
                    const int64_t xstep = s->stride_w * s->cin;
                    for (int64_t c = 0; c < s->cin; c++) {
                        vfloat acc[U][NV] = {{{0}}};
                        int64_t ox = lo;
                        for (; ox + U <= hi; ox += U)
                            for (int u = 0; u < U; u++) {
                                const vfloat xv = splat(xr[(ox + u) * xstep + c]);
                                for (int v = 0; v < NV; v++)
                                    acc[u][v] += xv * *(const vfloat_unaligned *)(d + (ox + u) * ld + v * LANES);
                            }
                        for (; ox < hi; ox++) {
                            const vfloat xv = splat(xr[ox * xstep + c]);
                            for (int v = 0; v < NV; v++)
                                acc[0][v] += xv * *(const vfloat_unaligned *)(d + ox * ld + v * LANES);
                        }
                        float *dst = dwp + (cb * taps_cin + (i * s->kw + j) * s->cin + c) * BLOCK;
                        for (int v = 0; v < NV; v++)
                            *(vfloat *)(dst + v * LANES) += (acc[0][v] + acc[1][v]) + (acc[2][v] + acc[3][v]);
                    }
                }
            }
        }
    }
}

/* The first n lanes at p (n may exceed LANES), zeros past them: never reads beyond dy's channels. */
static inline vfloat load_lanes(const float *p, int64_t n)
{
    vfloat v = {0};
    memcpy(&v, p, (size_t)(n >= LANES ? LANES : n > 0 ? n : 0) * sizeof(float));
    return v;
}

static void input_grad(const fc_conv_shape *s, const float *dy, const float *wp, float *dx, int64_t row0,
                       int64_t rows, int32_t *scratch)
{
    const int64_t cblocks = (s->cout + BLOCK - 1) / BLOCK, taps_cin = s->kh * s->kw * s->cin;
    const int64_t full_blocks = s->cout / BLOCK;
    /* The output column each (input column, kernel column) pair comes from, or -1: the divisions
     * once per call instead of per pixel and tap. */
    int32_t *ox_of = scratch;
    for (int64_t ix = 0; ix < s->w; ix++)
        for (int64_t j = 0; j < s->kw; j++) {
            const int64_t u = ix + s->pad_left - j * s->dilation_w;
            ox_of[ix * s->kw + j] = u < 0 || u % s->stride_w || u / s->stride_w >= s->ow ? -1 : (int32_t)(u / s->stride_w);
        }
    int32_t *oy_of = scratch + s->w * s->kw;  /* the same for this row's kernel rows */
    for (int64_t r = row0; r < row0 + rows; r++) {
        const int64_t img = r / s->h, iy = r % s->h;
        for (int64_t i = 0; i < s->kh; i++) {
            const int64_t t = iy + s->pad_top - i * s->dilation_h;
            oy_of[i] = t < 0 || t % s->stride_h || t / s->stride_h >= s->oh ? -1 : (int32_t)(t / s->stride_h);
        }
        for (int64_t ix = 0; ix < s->w; ix++) {
            float *out = dx + (r * s->w + ix) * s->cin;
            for (int64_t c = 0; c < s->cin; c++) {
                vfloat acc[NV] = {{0}};
                for (int64_t i = 0; i < s->kh; i++) {
                    const int64_t oy = oy_of[i];
                    if (oy < 0) continue;
                    for (int64_t j = 0; j < s->kw; j++) {
                        const int64_t ox = ox_of[ix * s->kw + j];
                        if (ox < 0) continue;
                        const float *g = dy + ((img * s->oh + oy) * s->ow + ox) * s->cout;
                        const float *wt = wp + ((i * s->kw + j) * s->cin + c) * BLOCK;
                        int64_t cb = 0;
                        for (; cb < full_blocks; cb++)
                            for (int v = 0; v < NV; v++) {
                                vfloat d;
                                memcpy(&d, g + cb * BLOCK + v * LANES, sizeof d);
                                acc[v] += d * *(const vfloat *)(wt + cb * taps_cin * BLOCK + v * LANES);
                            }
                        if (cb < cblocks)  /* the last, partial block */
                            for (int v = 0; v < NV; v++)
                                acc[v] += load_lanes(g + cb * BLOCK + v * LANES, s->cout - cb * BLOCK - v * LANES) *
                                          *(const vfloat *)(wt + cb * taps_cin * BLOCK + v * LANES);
                    }
                }
                vfloat sum = acc[0];
                for (int v = 1; v < NV; v++) sum += acc[v];
                out[c] = sum_lanes(sum);
            }
        }
    }
}

/* Few output channels (see direct.h): PX pixels at a time, one channel at a time, each kernel row's
 * kw * cin taps (contiguous in the padded input and in wt) in LANES-wide FMAs into one accumulator per
 * pixel; each loaded weight vector serves all PX pixels. The last, partial group of pixels repeats its
 * last pixel, whose sums are not stored. */
static void few_outputs_row(const float *x, int64_t row_stride, int64_t pixel_stride, int64_t len, int kh,
                            const float *wt, int cout, const float *bias, int relu, int64_t count, float *y)
{
    const int64_t vec_len = len / LANES * LANES;
    for (int64_t p0 = 0; p0 < count; p0 += PX) {
        const float *xp[PX];
        for (int i = 0; i < PX; i++) xp[i] = x + (p0 + i < count ? p0 + i : count - 1) * pixel_stride;
        for (int co = 0; co < cout; co++) {
            vfloat acc[PX];
            float tail[PX];
            for (int i = 0; i < PX; i++) acc[i] = (vfloat){0}, tail[i] = 0.0f;
            for (int r = 0; r < kh; r++) {
                const float *w = wt + (co * kh + r) * len;
                const int64_t at = r * row_stride;
                for (int64_t j = 0; j < vec_len; j += LANES) {
                    const vfloat wv = *(const vfloat_unaligned *)(w + j);
                    for (int i = 0; i < PX; i++) acc[i] += *(const vfloat_unaligned *)(xp[i] + at + j) * wv;
                }
                for (int64_t j = vec_len; j < len; j++)
                    for (int i = 0; i < PX; i++) tail[i] += xp[i][at + j] * w[j];
            }
            for (int i = 0; i < PX && p0 + i < count; i++) {
                float v = sum_lanes(acc[i]) + tail[i] + (bias ? bias[co] : 0.0f);
                if (relu && v < 0.0f) v = 0.0f;  /* NaN stays NaN */
                y[(p0 + i) * cout + co] = v;
            }
        }
    }
}

/* Its weight gradient: for each channel and kernel row, DW_VECTORS vectors of taps at a time are held
 * in registers while the row's pixels stream by, each pixel's dy broadcast once for all of them. */
static void few_outputs_weight_grad_row(const float *x, int64_t row_stride, int64_t pixel_stride, int64_t len,
                                        int kh, const float *dy, int cout, int64_t count, float *dwt)
{
    const int64_t vec_len = len / LANES * LANES;
    for (int co = 0; co < cout; co++)
        for (int r = 0; r < kh; r++) {
            const float *xr = x + r * row_stride;
            float *acc_out = dwt + (co * kh + r) * len;
            int64_t j = 0;
            for (; j + DW_VECTORS * LANES <= vec_len; j += DW_VECTORS * LANES) {
                vfloat acc[DW_VECTORS];
                for (int v = 0; v < DW_VECTORS; v++) acc[v] = *(const vfloat_unaligned *)(acc_out + j + v * LANES);
                for (int64_t p = 0; p < count; p++) {
                    const vfloat d = splat(dy[p * cout + co]);
                    for (int v = 0; v < DW_VECTORS; v++)
                        acc[v] += d * *(const vfloat_unaligned *)(xr + p * pixel_stride + j + v * LANES);
                }
                for (int v = 0; v < DW_VECTORS; v++) *(vfloat_unaligned *)(acc_out + j + v * LANES) = acc[v];
            }
            for (; j < vec_len; j += LANES) {
                vfloat acc = *(const vfloat_unaligned *)(acc_out + j);
                for (int64_t p = 0; p < count; p++)
                    acc += splat(dy[p * cout + co]) * *(const vfloat_unaligned *)(xr + p * pixel_stride + j);
                *(vfloat_unaligned *)(acc_out + j) = acc;
            }
            for (; j < len; j++) {
                float acc = acc_out[j];
                for (int64_t p = 0; p < count; p++) acc += dy[p * cout + co] * xr[p * pixel_stride + j];
                acc_out[j] = acc;
            }
        }
}

const fc_conv_direct_kernels DIRECT_TABLE = {
    .name = DIRECT_NAME, .block = BLOCK, .pixels = PX, .forward = forward, .weight_grad = weight_grad,
    .input_grad = input_grad, .few_outputs_row = few_outputs_row,
    .few_outputs_weight_grad_row = few_outputs_weight_grad_row,
};
