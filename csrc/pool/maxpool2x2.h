/* Max pooling 2x2 with stride 2 and no padding (the CNN default), one output row at a time.
 * csrc/pool/maxpool2x2.c is compiled once per instruction set, so the windows' channels go through
 * vectors of that set's width; pool.c shares the rows out to the threads and dispatch.c picks the
 * table. Each window is read once and its four dx values written once, so the backward pass needs no
 * zeroing pass and no scatter. Rows are counted over n * oh. */
#ifndef FASTCONV_POOL_MAXPOOL2X2_H
#define FASTCONV_POOL_MAXPOOL2X2_H

#include <stdint.h>

#include "../fastconv.h"

typedef struct {
    const char *name;
    /* y (and the argmax bytes, when argmax is not NULL) of output row `row`. */
    void (*forward_row)(const fc_pool_shape *s, const float *x, float *y, uint8_t *argmax, int64_t row);
    /* dx rows 2*oy and 2*oy + 1 of output row `row` (and the rows and columns no window covers):
     * dy to each window's first maximum, from argmax when it is not NULL, else found again in x. */
    void (*backward_row)(const fc_pool_shape *s, const float *dy, const float *x, const uint8_t *argmax,
                         int x_from_relu, float *dx, int64_t row);
} fc_maxpool2x2_kernels;

/* One table per instruction set, fc_maxpool2x2_<isa>: csrc/isa_list.h lists them, dispatch.c declares them. */

/* True when v should replace the current maximum: strictly greater keeps the first maximum in
 * row-major order, and the first NaN wins so that NaN propagates. */
static inline int fc_pool_beats(float v, float best) { return (v > best) | ((v != v) & (best == best)); }

/* The argmax byte of a window (fastconv.h): the tap of its first maximum, flagged when that is not > 0. */
static inline uint8_t fc_argmax_byte(int tap, float best)
{
    return (uint8_t)(tap | (best > 0.0f ? 0 : FC_ARGMAX_NOT_POSITIVE));
}

#endif
