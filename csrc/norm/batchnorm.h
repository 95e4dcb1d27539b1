/* Batch normalisation's kernels over a range of rows [r0, r1) of x seen as rows x channels (NHWC:
 * every axis but the last is a row). csrc/norm/batchnorm.c is compiled once per instruction set, like
 * csrc/train/elementwise.c, so the loops over the channels (contiguous in a row) run at that set's
 * vector width; norm.c shares the rows out to the threads and dispatch.c picks the table.
 * The per-channel sums are accumulated in double into arrays the caller zeroes. */
#ifndef FASTCONV_NORM_BATCHNORM_H
#define FASTCONV_NORM_BATCHNORM_H

#include <stdint.h>

typedef struct {
    const char *name;
    /* sum += x - shift and sum_sq += (x - shift)^2, per channel. */
    void (*moments)(int64_t r0, int64_t r1, int64_t channels, const float *x, const float *shift, double *sum,
                    double *sum_sq);
    /* y = (x - mean) * scale + offset, per channel. */
    void (*normalize)(int64_t r0, int64_t r1, int64_t channels, const float *x, const float *mean,
                      const float *scale, const float *offset, float *y);
    /* sum_dy += dy and sum_dy_xhat += dy * xhat per channel, xhat = (x - mean) * inv_std. */
    void (*grad_sums)(int64_t r0, int64_t r1, int64_t channels, const float *dy, const float *x,
                      const float *mean, const float *inv_std, double *sum_dy, double *sum_dy_xhat);
    /* dx = scale * (dy - mean_dy - xhat * mean_dy_xhat), xhat = (x - mean) * inv_std. */
    void (*input_grad)(int64_t r0, int64_t r1, int64_t channels, const float *dy, const float *x,
                       const float *mean, const float *inv_std, const float *scale, const float *mean_dy,
                       const float *mean_dy_xhat, float *dx);
} fc_batchnorm_kernels;

/* One table per instruction set, fc_batchnorm_<isa>: csrc/isa_list.h lists them, dispatch.c declares them. */

#endif
