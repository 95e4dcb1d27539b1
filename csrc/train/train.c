/* The elementwise training kernels' entry points: the ReLU gradient, dropout and the optimizer
 * updates (in place on the weight and slot arrays). Each thread runs the active instruction set's
 * kernel (elementwise.h) over its own contiguous share of the elements. */
#include <stddef.h>

#include "../fastconv.h"
#include "../dispatch.h"

/* This thread's share [*i0, *i1) of n elements, cut at multiples of 16 floats (whole vectors). */
static void my_share(int64_t n, int64_t *i0, int64_t *i1) { fc_thread_share(n, 16, i0, i1); }

static int threads_for(int64_t n) { return fc_threads_for_values((double)n); }

int fc_relu_backward(int64_t n, const float *dy, const float *y, float *dx)
{
    const fc_elementwise_kernels *kernels = fc_active_elementwise();  /* one look-up: the call's */
    const int threads = threads_for(n);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t i0, i1;
        my_share(n, &i0, &i1);
        kernels->relu_backward(i0, i1, dy, y, dx);
    }
    return FC_OK;
}

int fc_dropout_forward(int64_t n, const float *x, float rate, uint64_t seed, int64_t first, float *y, float *mask,
                       uint8_t *keep)
{
    const fc_elementwise_kernels *kernels = fc_active_elementwise();  /* one look-up: the call's */
    const int threads = threads_for(n);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t i0, i1;
        my_share(n, &i0, &i1);
        kernels->dropout(i0, i1, x, rate, seed, first, y, mask, keep);
    }
    return FC_OK;
}

int fc_dropout_backward(int64_t n, const float *dy, const uint8_t *keep, float rate, float *dx)
{
    const fc_elementwise_kernels *kernels = fc_active_elementwise();  /* one look-up: the call's */
    const int threads = threads_for(n);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t i0, i1;
        my_share(n, &i0, &i1);
        kernels->dropout_backward(i0, i1, dy, keep, rate, dx);
    }
    return FC_OK;
}

int fc_pair_sum(int64_t n, const float *a, const float *b, float scale, float *out)
{
    const fc_elementwise_kernels *kernels = fc_active_elementwise();  /* one look-up: the call's */
    const int threads = threads_for(n);
    int nonfinite = 0;
    #pragma omp parallel num_threads(threads) if (threads > 1) reduction(|:nonfinite)
    {
        int64_t i0, i1;
        my_share(n, &i0, &i1);
        nonfinite |= kernels->pair_sum(i0, i1, a, b, scale, out);
    }
    return nonfinite;
}

/* The optimizers update every array of a model in one parallel region: the elements of `count`
 * arrays laid end to end, in blocks of 16 floats that never straddle two arrays, shared out to the
 * threads; `piece(args, t, i0, i1)` updates elements [i0, i1) of array t. An array updated alone is
 * the case count == 1, with the same split as before: each array's pieces start at multiples of 16
 * of its own elements, so every element sees the same instructions whatever the list. */
typedef void (*update_piece)(const void *args, int64_t t, int64_t i0, int64_t i1);

static int update_all(int64_t count, const int64_t *n, update_piece piece, const void *args)
{
    int64_t blocks = 0, total = 0;
    for (int64_t t = 0; t < count; t++) {
        blocks += (n[t] + 15) / 16;
        total += n[t];
    }
    const int threads = threads_for(total);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t b0, b1;
        fc_thread_share(blocks, 1, &b0, &b1);
        int64_t first = 0;  /* array t's first block */
        for (int64_t t = 0; t < count && first < b1; t++) {
            const int64_t t_blocks = (n[t] + 15) / 16;
            const int64_t lo = b0 > first ? b0 : first, hi = b1 < first + t_blocks ? b1 : first + t_blocks;
            if (lo < hi) {
                const int64_t i1 = (hi - first) * 16;
                piece(args, t, (lo - first) * 16, i1 < n[t] ? i1 : n[t]);
            }
            first += t_blocks;
        }
    }
    return FC_OK;
}

typedef struct {
    const fc_elementwise_kernels *kernels;
    float *const *w;
    const float *const *g;
    float *const *m, *const *v;
    float lr_t, beta_1, beta_2, epsilon;
} adam_args;

static void adam_piece(const void *p, int64_t t, int64_t i0, int64_t i1)
{
    const adam_args *a = p;
    a->kernels->adam(i0, i1, a->w[t], a->g[t], a->m[t], a->v[t], a->lr_t, a->beta_1, a->beta_2, a->epsilon);
}

int fc_adam_update_all(int64_t count, const int64_t *n, float *const *w, const float *const *g, float *const *m,
                       float *const *v, float lr_t, float beta_1, float beta_2, float epsilon)
{
    const adam_args args = {fc_active_elementwise(), w, g, m, v, lr_t, beta_1, beta_2, epsilon};
    return update_all(count, n, adam_piece, &args);
}

int fc_adam_update(int64_t n, float *w, const float *g, float *m, float *v, float lr_t, float beta_1,
                    float beta_2, float epsilon)
{
    return fc_adam_update_all(1, &n, &w, &g, &m, &v, lr_t, beta_1, beta_2, epsilon);
}

typedef struct {
    const fc_elementwise_kernels *kernels;
    float *const *w;
    const float *const *g;
    float *const *accumulated_grad, *const *accumulated_delta;
    float lr, rho, epsilon;
} adadelta_args;

static void adadelta_piece(const void *p, int64_t t, int64_t i0, int64_t i1)
{
    const adadelta_args *a = p;
    a->kernels->adadelta(i0, i1, a->w[t], a->g[t], a->accumulated_grad[t], a->accumulated_delta[t], a->lr, a->rho,
                         a->epsilon);
}

int fc_adadelta_update_all(int64_t count, const int64_t *n, float *const *w, const float *const *g,
                           float *const *accumulated_grad, float *const *accumulated_delta, float lr, float rho,
                           float epsilon)
{
    const adadelta_args args = {fc_active_elementwise(), w, g, accumulated_grad, accumulated_delta, lr, rho, epsilon};
    return update_all(count, n, adadelta_piece, &args);
}

int fc_adadelta_update(int64_t n, float *w, const float *g, float *accumulated_grad, float *accumulated_delta,
                        float lr, float rho, float epsilon)
{
    return fc_adadelta_update_all(1, &n, &w, &g, &accumulated_grad, &accumulated_delta, lr, rho, epsilon);
}

typedef struct {
    const fc_elementwise_kernels *kernels;
    float *const *w;
    const float *const *g;
    float *const *velocity, *const *momentum_buffer;
    float lr, rho, momentum, epsilon;
} rmsprop_args;

static void rmsprop_piece(const void *p, int64_t t, int64_t i0, int64_t i1)
{
    const rmsprop_args *a = p;
    a->kernels->rmsprop(i0, i1, a->w[t], a->g[t], a->velocity[t], a->momentum_buffer ? a->momentum_buffer[t] : NULL,
                        a->lr, a->rho, a->momentum, a->epsilon);
}

int fc_rmsprop_update_all(int64_t count, const int64_t *n, float *const *w, const float *const *g,
                          float *const *velocity, float *const *momentum_buffer, float lr, float rho, float momentum,
                          float epsilon)
{
    const rmsprop_args args = {fc_active_elementwise(), w, g, velocity, momentum_buffer, lr, rho, momentum, epsilon};
    return update_all(count, n, rmsprop_piece, &args);
}

int fc_rmsprop_update(int64_t n, float *w, const float *g, float *velocity, float *momentum_buffer, float lr,
                       float rho, float momentum, float epsilon)
{
    return fc_rmsprop_update_all(1, &n, &w, &g, &velocity, momentum_buffer ? &momentum_buffer : NULL, lr, rho,
                                 momentum, epsilon);
}

typedef struct {
    const fc_elementwise_kernels *kernels;
    float *const *w;
    const float *const *g;
    float *const *velocity;
    float lr, momentum;
    int nesterov;
} sgd_args;

static void sgd_piece(const void *p, int64_t t, int64_t i0, int64_t i1)
{
    const sgd_args *a = p;
    a->kernels->sgd(i0, i1, a->w[t], a->g[t], a->velocity ? a->velocity[t] : NULL, a->lr, a->momentum, a->nesterov);
}

int fc_sgd_update_all(int64_t count, const int64_t *n, float *const *w, const float *const *g, float *const *velocity,
                      float lr, float momentum, int nesterov)
{
    const sgd_args args = {fc_active_elementwise(), w, g, velocity, lr, momentum, nesterov};
    return update_all(count, n, sgd_piece, &args);
}

int fc_sgd_update(int64_t n, float *w, const float *g, float *velocity, float lr, float momentum, int nesterov)
{
    return fc_sgd_update_all(1, &n, &w, &g, velocity ? &velocity : NULL, lr, momentum, nesterov);
}
