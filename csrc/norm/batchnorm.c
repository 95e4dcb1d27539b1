/* The batch normalisation kernels (see batchnorm.h): one source, compiled once per instruction set;
 * the table this compile defines is named after the set. Each row's channels are contiguous, so every
 * inner loop runs over the channels and vectorises across them. */
#include "batchnorm.h"

#if defined(__AVX512F__)
#define BATCHNORM_TABLE fc_batchnorm_avx512
#define BATCHNORM_NAME "batchnorm_avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define BATCHNORM_TABLE fc_batchnorm_avx2
#define BATCHNORM_NAME "batchnorm_avx2"
#else
#define BATCHNORM_TABLE fc_batchnorm_generic
#define BATCHNORM_NAME "batchnorm_generic"
#endif

static void moments(int64_t r0, int64_t r1, int64_t channels, const float *x, const float *shift, double *sum,
                    double *sum_sq)
{
    for (int64_t r = r0; r < r1; r++) {
        const float *row = x + r * channels;
        #pragma omp simd
        for (int64_t c = 0; c < channels; c++) {
            const double d = (double)row[c] - (double)shift[c];
            sum[c] += d;
            sum_sq[c] += d * d;
        }
    }
}

static void normalize(int64_t r0, int64_t r1, int64_t channels, const float *x, const float *mean,
                      const float *scale, const float *offset, float *y)
{
    for (int64_t r = r0; r < r1; r++) {
        const float *row = x + r * channels;
        float *out = y + r * channels;
        #pragma omp simd
        for (int64_t c = 0; c < channels; c++)
            out[c] = (row[c] - mean[c]) * scale[c] + offset[c];
    }
}

static void grad_sums(int64_t r0, int64_t r1, int64_t channels, const float *dy, const float *x,
                      const float *mean, const float *inv_std, double *sum_dy, double *sum_dy_xhat)
{
    for (int64_t r = r0; r < r1; r++) {
        const float *g = dy + r * channels, *row = x + r * channels;
        #pragma omp simd
        for (int64_t c = 0; c < channels; c++) {
            const float xhat = (row[c] - mean[c]) * inv_std[c];
            sum_dy[c] += (double)g[c];
            sum_dy_xhat[c] += (double)(g[c] * xhat);
        }
    }
}

static void input_grad(int64_t r0, int64_t r1, int64_t channels, const float *dy, const float *x,
                       const float *mean, const float *inv_std, const float *scale, const float *mean_dy,
                       const float *mean_dy_xhat, float *dx)
{
    for (int64_t r = r0; r < r1; r++) {
        const float *g = dy + r * channels, *row = x + r * channels;
        float *out = dx + r * channels;
        #pragma omp simd
        for (int64_t c = 0; c < channels; c++) {
            const float xhat = (row[c] - mean[c]) * inv_std[c];
            out[c] = scale[c] * (g[c] - mean_dy[c] - xhat * mean_dy_xhat[c]);
        }
    }
}

const fc_batchnorm_kernels BATCHNORM_TABLE = {
    .name = BATCHNORM_NAME,
    .moments = moments,
    .normalize = normalize,
    .grad_sums = grad_sums,
    .input_grad = input_grad,
};
