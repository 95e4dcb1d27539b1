/* The affine (and projective) resampler behind the geometric preprocessing layers: rotation,
 * translation, zoom and resizing are each one transform per image. Output pixel (x, y) reads the
 * input at ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1, the convention of
 * Keras' affine_transform (and TensorFlow's projective transforms); pixel centres are at integers.
 *
 * As in jax.scipy.ndimage.map_coordinates (what Keras' JAX backend calls), the fill mode is applied
 * to each integer neighbour of a sample separately: bilinear takes floor(s) and floor(s) + 1, each
 * mapped into the image by the fill mode (or, in constant mode, replaced by fill_value when
 * outside), and nearest rounds s half to even. Coordinates are computed in double, values in float.
 * Every output pixel is computed on its own, so rows of output go to any thread and the result does
 * not depend on the thread count. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "../fastconv.h"
#include "../dispatch.h"

/* The pixel index along an axis of `size` that integer-valued position i reads under `fill_mode`,
 * or -1 when it reads fill_value (constant mode, outside). i may be any finite double. */
static int64_t fill_index(double i, int64_t size, int fill_mode)
{
    if (i >= 0.0 && i < (double)size) return (int64_t)i;  /* inside: the common case */
    const double n = (double)size;
    double m;
    switch (fill_mode) {
    case FC_FILL_NEAREST:
        return i < 0.0 ? 0 : size - 1;
    case FC_FILL_WRAP:  /* a b c d | a b c d | a b c d */
        m = fmod(i, n);  /* exact for integer-valued doubles */
        if (m < 0.0) m += n;
        return (int64_t)m;
    case FC_FILL_REFLECT:  /* d c b a | a b c d | d c b a: period 2 size */
        m = fmod(i, 2.0 * n);
        if (m < 0.0) m += 2.0 * n;
        return (int64_t)(m < n ? m : 2.0 * n - 1.0 - m);
    case FC_FILL_MIRROR:  /* d c b | a b c d | c b a: period 2 (size - 1), edges not repeated */
        if (size == 1) return 0;
        m = fmod(i, 2.0 * (n - 1.0));
        if (m < 0.0) m += 2.0 * (n - 1.0);
        return (int64_t)(m < n ? m : 2.0 * (n - 1.0) - m);
    default:  /* FC_FILL_CONSTANT */
        return -1;
    }
}

/* One output row of one image: out_w pixels of c channels. */
static void resample_row(const fc_affine_shape *s, const float *image, const double *t, int64_t y,
                         int interpolation, int fill_mode, float fill_value, float *out)
{
    const int64_t c = s->c;
    for (int64_t x = 0; x < s->out_w; x++, out += c) {
        const double k = t[6] * (double)x + t[7] * (double)y + 1.0;
        const double sx = (t[0] * (double)x + t[1] * (double)y + t[2]) / k;
        const double sy = (t[3] * (double)x + t[4] * (double)y + t[5]) / k;
        if (!isfinite(sx) || !isfinite(sy)) {  /* a degenerate projection (k == 0) samples nothing */
            for (int64_t ch = 0; ch < c; ch++) out[ch] = fill_value;
            continue;
        }
        if (interpolation == FC_INTERP_NEAREST) {
            const int64_t iy = fill_index(nearbyint(sy), s->h, fill_mode);
            const int64_t ix = fill_index(nearbyint(sx), s->w, fill_mode);
            if (iy < 0 || ix < 0) {
                for (int64_t ch = 0; ch < c; ch++) out[ch] = fill_value;
            } else {
                const float *p = image + (iy * s->w + ix) * c;
                for (int64_t ch = 0; ch < c; ch++) out[ch] = p[ch];
            }
            continue;
        }
        const double fy = floor(sy), fx = floor(sx);
        const float wy1 = (float)(sy - fy), wx1 = (float)(sx - fx);
        const float wy0 = 1.0f - wy1, wx0 = 1.0f - wx1;
        const float w00 = wy0 * wx0, w01 = wy0 * wx1, w10 = wy1 * wx0, w11 = wy1 * wx1;
        const int64_t iy0 = fill_index(fy, s->h, fill_mode), iy1 = fill_index(fy + 1.0, s->h, fill_mode);
        const int64_t ix0 = fill_index(fx, s->w, fill_mode), ix1 = fill_index(fx + 1.0, s->w, fill_mode);
        if (iy0 >= 0 && iy1 >= 0 && ix0 >= 0 && ix1 >= 0) {
            const float *p00 = image + (iy0 * s->w + ix0) * c, *p01 = image + (iy0 * s->w + ix1) * c;
            const float *p10 = image + (iy1 * s->w + ix0) * c, *p11 = image + (iy1 * s->w + ix1) * c;
            for (int64_t ch = 0; ch < c; ch++)
                out[ch] = w00 * p00[ch] + w01 * p01[ch] + w10 * p10[ch] + w11 * p11[ch];
        } else {  /* constant mode at the border: neighbours outside read fill_value */
            const float *p00 = iy0 >= 0 && ix0 >= 0 ? image + (iy0 * s->w + ix0) * c : NULL;
            const float *p01 = iy0 >= 0 && ix1 >= 0 ? image + (iy0 * s->w + ix1) * c : NULL;
            const float *p10 = iy1 >= 0 && ix0 >= 0 ? image + (iy1 * s->w + ix0) * c : NULL;
            const float *p11 = iy1 >= 0 && ix1 >= 0 ? image + (iy1 * s->w + ix1) * c : NULL;
            for (int64_t ch = 0; ch < c; ch++)
                out[ch] = w00 * (p00 ? p00[ch] : fill_value) + w01 * (p01 ? p01[ch] : fill_value) +
                          w10 * (p10 ? p10[ch] : fill_value) + w11 * (p11 ? p11[ch] : fill_value);
        }
    }
}

void fc_affine_transform(const fc_affine_shape *s, const float *x, const double *transforms, int interpolation,
                         int fill_mode, float fill_value, float *y)
{
    const int64_t rows = s->n * s->out_h;
    /* Bilinear reads four pixels and does a few dozen flops of coordinates per output pixel. */
    const int threads = fc_threads_for_values(4.0 * (double)rows * (double)s->out_w * (double)(s->c + 4));
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t img = row / s->out_h, oy = row % s->out_h;
        resample_row(s, x + img * s->h * s->w * s->c, transforms + img * 8, oy, interpolation, fill_mode, fill_value,
                     y + row * s->out_w * s->c);
    }
}
