/* The elementwise training kernels over one range [i0, i1) of their arrays. csrc/train/elementwise.c
 * is compiled once per instruction set, like csrc/conv/direct.c, so each loop is vectorised at that
 * set's width (dropout's hash needs 32-bit vector multiplies, which plain x86-64 lacks); train.c
 * shares the range out to the threads and dispatch.c picks the table. Every element is independent,
 * so any split gives the same result. */
#ifndef FASTCONV_TRAIN_ELEMENTWISE_H
#define FASTCONV_TRAIN_ELEMENTWISE_H

#include <stdint.h>

typedef struct {
    const char *name;
    void (*relu_backward)(int64_t i0, int64_t i1, const float *dy, const float *y, float *dx);
    /* x[i]'s draw is that of element first + i of the batch the mask is drawn for (a rank's share of
     * it); the mask goes to `mask` (floats) or `keep` (bytes), whichever is not NULL */
    void (*dropout)(int64_t i0, int64_t i1, const float *x, float rate, uint64_t seed, int64_t first, float *y,
                    float *mask, uint8_t *keep);
    void (*dropout_backward)(int64_t i0, int64_t i1, const float *dy, const uint8_t *keep, float rate, float *dx);
    void (*adam)(int64_t i0, int64_t i1, float *w, const float *g, float *m, float *v, float lr_t, float beta_1,
                 float beta_2, float epsilon);
    void (*adadelta)(int64_t i0, int64_t i1, float *w, const float *g, float *accumulated_grad,
                     float *accumulated_delta, float lr, float rho, float epsilon);
    /* momentum_buffer (RMSprop) and velocity (SGD) are NULL when momentum == 0. */
    void (*rmsprop)(int64_t i0, int64_t i1, float *w, const float *g, float *velocity, float *momentum_buffer,
                    float lr, float rho, float momentum, float epsilon);
    void (*sgd)(int64_t i0, int64_t i1, float *w, const float *g, float *velocity, float lr, float momentum,
                int nesterov);
    /* out = (a + b) * scale, each step rounded to float32; returns 1 if any out is not finite */
    int (*pair_sum)(int64_t i0, int64_t i1, const float *a, const float *b, float scale, float *out);
} fc_elementwise_kernels;

/* One table per instruction set, fc_elementwise_<isa>: csrc/isa_list.h lists them, dispatch.c declares them. */

#endif
