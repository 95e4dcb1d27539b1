/* The elementwise training kernels' entry points: the ReLU gradient, dropout and the optimizer
 * updates (in place on the weight and slot arrays). Each thread runs the active instruction set's
 * kernel (elementwise.h) over its own contiguous share of the elements. */
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

int fc_dropout_forward(int64_t n, const float *x, float rate, uint64_t seed, int64_t first, float *y, float *mask)
{
    const fc_elementwise_kernels *kernels = fc_active_elementwise();  /* one look-up: the call's */
    const int threads = threads_for(n);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t i0, i1;
        my_share(n, &i0, &i1);
        kernels->dropout(i0, i1, x, rate, seed, first, y, mask);
    }
    return FC_OK;
}

int fc_adam_update(int64_t n, float *w, const float *g, float *m, float *v, float lr_t, float beta_1,
                    float beta_2, float epsilon)
{
    const fc_elementwise_kernels *kernels = fc_active_elementwise();  /* one look-up: the call's */
    const int threads = threads_for(n);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t i0, i1;
        my_share(n, &i0, &i1);
        kernels->adam(i0, i1, w, g, m, v, lr_t, beta_1, beta_2, epsilon);
    }
    return FC_OK;
}

int fc_adadelta_update(int64_t n, float *w, const float *g, float *accumulated_grad, float *accumulated_delta,
                        float lr, float rho, float epsilon)
{
    const fc_elementwise_kernels *kernels = fc_active_elementwise();  /* one look-up: the call's */
    const int threads = threads_for(n);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t i0, i1;
        my_share(n, &i0, &i1);
        kernels->adadelta(i0, i1, w, g, accumulated_grad, accumulated_delta, lr, rho, epsilon);
    }
    return FC_OK;
}

int fc_rmsprop_update(int64_t n, float *w, const float *g, float *velocity, float *momentum_buffer, float lr,
                       float rho, float momentum, float epsilon)
{
    const fc_elementwise_kernels *kernels = fc_active_elementwise();  /* one look-up: the call's */
    const int threads = threads_for(n);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t i0, i1;
        my_share(n, &i0, &i1);
        kernels->rmsprop(i0, i1, w, g, velocity, momentum_buffer, lr, rho, momentum, epsilon);
    }
    return FC_OK;
}

int fc_sgd_update(int64_t n, float *w, const float *g, float *velocity, float lr, float momentum, int nesterov)
{
    const fc_elementwise_kernels *kernels = fc_active_elementwise();  /* one look-up: the call's */
    const int threads = threads_for(n);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int64_t i0, i1;
        my_share(n, &i0, &i1);
        kernels->sgd(i0, i1, w, g, velocity, lr, momentum, nesterov);
    }
    return FC_OK;
}
