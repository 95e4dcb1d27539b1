/* Batch normalisation's entry points (fastconv.h). The per-channel sums are taken over FIXED chunks of
 * rows, one partial sum per chunk in double, and the chunks' partials are added in chunk order: the
 * results are the same bit for bit for any thread count. Each thread runs the active instruction
 * set's kernels (batchnorm.h) over whole chunks or over its share of the rows. */
#include <math.h>
#include <string.h>

#include "../fastconv.h"
#include "../dispatch.h"
#include "../workspace.h"

/* About 16K values a chunk (64 KiB of x), at least 16 rows so that the partial sums (2 doubles per
 * channel and chunk) take at most a quarter of x's size. */
static int64_t chunk_rows(int64_t channels)
{
    const int64_t rows = 16384 / channels;
    return rows > 16 ? rows : 16;
}

static int threads_for(int64_t rows, int64_t channels, int64_t chunks)
{
    const int threads = fc_threads_for_values((double)rows * (double)channels);
    return chunks < threads ? (int)chunks : threads;
}

/* What chunked_sums adds up: the forward's moments of x, or the backward's sums of dy and dy * xhat. */
enum sums_kind { SUMS_MOMENTS, SUMS_GRADIENT };

typedef struct {
    enum sums_kind kind;
    const float *x, *dy;          /* dy only for SUMS_GRADIENT */
    const float *shift;           /* SUMS_MOMENTS: subtracted from x before summing */
    const float *mean, *inv_std;  /* SUMS_GRADIENT: for xhat */
} sums_inputs;

/* The two per-channel sums of `in` over all rows into total_a and total_b (channels doubles each). */
static int chunked_sums(int64_t rows, int64_t channels, const sums_inputs *in, double *total_a, double *total_b)
{
    const fc_batchnorm_kernels *kernels = fc_active_batchnorm();
    const int64_t per_chunk = chunk_rows(channels), chunks = (rows + per_chunk - 1) / per_chunk;
    /* Scratch is counted in floats: two per double. */
    double *partial = (double *)fc_scratch(FC_SCRATCH_CALL, 2 * 2 * chunks * channels);
    if (!partial) return FC_ERROR_NO_MEMORY;
    const int threads = threads_for(rows, channels, chunks);
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t r0 = k * per_chunk, r1 = r0 + per_chunk < rows ? r0 + per_chunk : rows;
        double *a = partial + 2 * k * channels, *b = a + channels;
        memset(a, 0, 2 * (size_t)channels * sizeof(double));
        if (in->kind == SUMS_MOMENTS)
            kernels->moments(r0, r1, channels, in->x, in->shift, a, b);
        else
            kernels->grad_sums(r0, r1, channels, in->dy, in->x, in->mean, in->inv_std, a, b);
    }
    memset(total_a, 0, (size_t)channels * sizeof(double));
    memset(total_b, 0, (size_t)channels * sizeof(double));
    for (int64_t k = 0; k < chunks; k++) {
        const double *a = partial + 2 * k * channels, *b = a + channels;
        for (int64_t c = 0; c < channels; c++) {
            total_a[c] += a[c];
            total_b[c] += b[c];
        }
    }
    return FC_OK;
}

static int elementwise_threads(int64_t rows, int64_t channels)
{
    const int threads = fc_threads_for_values((double)rows * (double)channels);
    return rows < threads ? (int)rows : threads;
}

static float inverse_std(float variance, float epsilon) { return (float)(1.0 / sqrt((double)variance + epsilon)); }

static int batchnorm_statistics(int64_t rows, int64_t channels, const float *x, float *mean, float *variance)
{
    double *sums = (double *)fc_scratch(FC_SCRATCH_KERNEL, 2 * 2 * channels);
    if (!sums) return FC_ERROR_NO_MEMORY;
    double *sum = sums, *sum_sq = sums + channels;
    /* Sums of x - (the first row): shifted near the mean, so the variance does not cancel when
     * |mean| >> std. */
    const sums_inputs in = { .kind = SUMS_MOMENTS, .x = x, .shift = x };
    if (chunked_sums(rows, channels, &in, sum, sum_sq) != FC_OK) return FC_ERROR_NO_MEMORY;
    for (int64_t c = 0; c < channels; c++) {
        const double shifted_mean = sum[c] / (double)rows;
        const double var = sum_sq[c] / (double)rows - shifted_mean * shifted_mean;
        mean[c] = (float)((double)x[c] + shifted_mean);
        variance[c] = (float)(var < 0.0 ? 0.0 : var);  /* rounding can leave a tiny negative; NaN stays */
    }
    return FC_OK;
}

int fc_batchnorm_statistics(int64_t rows, int64_t channels, const float *x, float *mean, float *variance)
{
    fc_call_begin();
    return fc_call_end(batchnorm_statistics(rows, channels, x, mean, variance));
}

static int batchnorm_forward(int64_t rows, int64_t channels, const float *x, const float *mean,
                             const float *variance, const float *gamma, const float *beta, float epsilon, float *y)
{
    float *scale = fc_scratch(FC_SCRATCH_CALL, 2 * channels);
    if (!scale) return FC_ERROR_NO_MEMORY;
    float *offset = scale + channels;
    for (int64_t c = 0; c < channels; c++) {
        scale[c] = inverse_std(variance[c], epsilon) * (gamma ? gamma[c] : 1.0f);
        offset[c] = beta ? beta[c] : 0.0f;
    }
    const fc_batchnorm_kernels *kernels = fc_active_batchnorm();
    const int threads = elementwise_threads(rows, channels);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t r0, r1;
        fc_thread_share(rows, 1, &r0, &r1);
        kernels->normalize(r0, r1, channels, x, mean, scale, offset, y);
    }
    return FC_OK;
}

int fc_batchnorm_forward(int64_t rows, int64_t channels, const float *x, const float *mean, const float *variance,
                         const float *gamma, const float *beta, float epsilon, float *y)
{
    fc_call_begin();
    return fc_call_end(batchnorm_forward(rows, channels, x, mean, variance, gamma, beta, epsilon, y));
}

static int batchnorm_backward(int64_t rows, int64_t channels, const float *dy, const float *x, const float *mean,
                              const float *variance, const float *gamma, float epsilon, int batch_statistics,
                              float *dx, float *dgamma, float *dbeta)
{
    /* Per channel: inv_std, scale, mean_dy, mean_dy_xhat (floats), then the two sums (doubles). */
    float *per_channel = fc_scratch(FC_SCRATCH_KERNEL, 4 * channels + 2 * 2 * channels);
    if (!per_channel) return FC_ERROR_NO_MEMORY;
    float *inv_std = per_channel, *scale = inv_std + channels;
    float *mean_dy = scale + channels, *mean_dy_xhat = mean_dy + channels;
    double *sum_dy = (double *)(mean_dy_xhat + channels), *sum_dy_xhat = sum_dy + channels;
    for (int64_t c = 0; c < channels; c++) inv_std[c] = inverse_std(variance[c], epsilon);
    const sums_inputs in = { .kind = SUMS_GRADIENT, .x = x, .dy = dy, .mean = mean, .inv_std = inv_std };
    if (chunked_sums(rows, channels, &in, sum_dy, sum_dy_xhat) != FC_OK) return FC_ERROR_NO_MEMORY;
    for (int64_t c = 0; c < channels; c++) {
        dbeta[c] = (float)sum_dy[c];
        dgamma[c] = (float)sum_dy_xhat[c];
        scale[c] = (gamma ? gamma[c] : 1.0f) * inv_std[c];
        /* With batch statistics every input moves the mean and variance: remove the gradient's mean
         * and its projection on xhat. With given statistics dx is scale * dy. */
        mean_dy[c] = batch_statistics ? (float)(sum_dy[c] / (double)rows) : 0.0f;
        mean_dy_xhat[c] = batch_statistics ? (float)(sum_dy_xhat[c] / (double)rows) : 0.0f;
    }
    if (!dx) return FC_OK;
    const fc_batchnorm_kernels *kernels = fc_active_batchnorm();
    const int threads = elementwise_threads(rows, channels);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t r0, r1;
        fc_thread_share(rows, 1, &r0, &r1);
        kernels->input_grad(r0, r1, channels, dy, x, mean, inv_std, scale, mean_dy, mean_dy_xhat, dx);
    }
    return FC_OK;
}

int fc_batchnorm_backward(int64_t rows, int64_t channels, const float *dy, const float *x, const float *mean,
                          const float *variance, const float *gamma, float epsilon, int batch_statistics,
                          float *dx, float *dgamma, float *dbeta)
{
    fc_call_begin();
    return fc_call_end(batchnorm_backward(rows, channels, dy, x, mean, variance, gamma, epsilon, batch_statistics,
                                          dx, dgamma, dbeta));
}
