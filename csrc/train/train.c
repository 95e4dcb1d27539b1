/* Elementwise training kernels: the ReLU gradient, dropout and the optimizer updates. Each element is
 * independent, so any split over threads gives identical results; the loops are simple enough for
 * the compiler to vectorise. Updates are in place on the weight and slot arrays. */
#include <math.h>

#include "../fastconv.h"
#include "../dispatch.h"

static int threads_for(int64_t n) { return fc_threads_for_values((double)n); }

void fc_relu_backward(int64_t n, const float *dy, const float *y, float *dx)
{
    const int threads = threads_for(n);
    #pragma omp parallel for simd schedule(static) num_threads(threads) if (parallel: threads > 1)
    for (int64_t i = 0; i < n; i++) {
        const float g = dy[i];  /* loaded unconditionally so the select compiles to a vector blend */
        dx[i] = y[i] > 0.0f ? g : 0.0f;
    }
}

void fc_adam_update(int64_t n, float *w, const float *g, float *m, float *v, float lr_t, float beta_1,
                    float beta_2, float epsilon)
{
    const int threads = threads_for(n);
    #pragma omp parallel for simd schedule(static) num_threads(threads) if (parallel: threads > 1)
    for (int64_t i = 0; i < n; i++) {
        m[i] += (g[i] - m[i]) * (1.0f - beta_1);
        v[i] += (g[i] * g[i] - v[i]) * (1.0f - beta_2);
        w[i] -= lr_t * m[i] / (sqrtf(v[i]) + epsilon);
    }
}

void fc_adadelta_update(int64_t n, float *w, const float *g, float *accumulated_grad, float *accumulated_delta,
                        float lr, float rho, float epsilon)
{
    const int threads = threads_for(n);
    #pragma omp parallel for simd schedule(static) num_threads(threads) if (parallel: threads > 1)
    for (int64_t i = 0; i < n; i++) {
        accumulated_grad[i] = rho * accumulated_grad[i] + (1.0f - rho) * g[i] * g[i];
        const float delta = -sqrtf(accumulated_delta[i] + epsilon) / sqrtf(accumulated_grad[i] + epsilon) * g[i];
        accumulated_delta[i] = rho * accumulated_delta[i] + (1.0f - rho) * delta * delta;
        w[i] += lr * delta;
    }
}

/* A 32-bit integer hash (Wellons' "lowbias32"): multiplies and shifts only, so it vectorises. */
static inline uint32_t hash32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

/* Element i's uniform draw in [0, 1): two hash rounds keyed by the 64-bit seed, top 24 bits.
 * Counter-based, so each element's draw is independent of the thread split, and
 * fastconv.reference computes the same mask. */
static inline float uniform_at(uint64_t seed, uint32_t i)
{
    const uint32_t h = hash32(hash32(i + (uint32_t)seed) ^ (uint32_t)(seed >> 32));
    return (float)(h >> 8) * 0x1p-24f;
}

void fc_dropout_forward(int64_t n, const float *x, float rate, uint64_t seed, float *y, float *mask)
{
    const float scale = 1.0f / (1.0f - rate);
    const int threads = threads_for(n);
    #pragma omp parallel for simd schedule(static) num_threads(threads) if (parallel: threads > 1)
    for (int64_t i = 0; i < n; i++) {
        const float m = uniform_at(seed, (uint32_t)i) >= rate ? scale : 0.0f;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}
