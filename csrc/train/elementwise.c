/* The elementwise training kernels (see elementwise.h): one source, compiled once per instruction
 * set; the table this compile defines is named after the set. */
#include <float.h>
#include <math.h>

#include "elementwise.h"

#if defined(__AVX512F__)
#define ELEMENTWISE_TABLE fc_elementwise_avx512
#define ELEMENTWISE_NAME "elementwise_avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define ELEMENTWISE_TABLE fc_elementwise_avx2
#define ELEMENTWISE_NAME "elementwise_avx2"
#else
#define ELEMENTWISE_TABLE fc_elementwise_generic
#define ELEMENTWISE_NAME "elementwise_generic"
#endif

static void relu_backward(int64_t i0, int64_t i1, const float *dy, const float *y, float *dx)
{
    #pragma omp simd
    for (int64_t i = i0; i < i1; i++) {
        const float g = dy[i];  /* loaded unconditionally so the select compiles to a vector blend */
        dx[i] = y[i] > 0.0f ? g : 0.0f;
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

/* Dropout's loops count in 32-bit lanes (the hash's index is first + i modulo 2^32 anyway), in
 * chunks short enough for an int32 counter. */
#define DROPOUT_CHUNK ((int64_t)1 << 30)

/* y = x * mask; the mask is written as floats (1/(1-rate) or 0) in `mask`, or as bytes (1 where kept)
 * in `keep`, whichever is not NULL. */
static void dropout(int64_t i0, int64_t i1, const float *x, float rate, uint64_t seed, int64_t first, float *y,
                    float *mask, uint8_t *keep)
{
    const float scale = 1.0f / (1.0f - rate);
    for (int64_t c0 = i0; c0 < i1; c0 += DROPOUT_CHUNK) {
        const int32_t count = (int32_t)(i1 - c0 < DROPOUT_CHUNK ? i1 - c0 : DROPOUT_CHUNK);
        const uint32_t index = (uint32_t)(first + c0);
        const float *xc = x + c0;
        float *yc = y + c0;
        if (mask) {
            float *mc = mask + c0;
            #pragma omp simd
            for (int32_t j = 0; j < count; j++) {
                const float m = uniform_at(seed, index + (uint32_t)j) >= rate ? scale : 0.0f;
                mc[j] = m;
                yc[j] = xc[j] * m;
            }
        } else {
            uint8_t *kc = keep + c0;
            #pragma omp simd
            for (int32_t j = 0; j < count; j++) {
                const int kept = uniform_at(seed, index + (uint32_t)j) >= rate;
                kc[j] = (uint8_t)kept;
                yc[j] = xc[j] * (kept ? scale : 0.0f);
            }
        }
    }
}

/* dx = dy * mask, from the forward pass's bytes: the same products as with its float mask. */
static void dropout_backward(int64_t i0, int64_t i1, const float *dy, const uint8_t *keep, float rate, float *dx)
{
    const float scale = 1.0f / (1.0f - rate);
    #pragma omp simd
    for (int64_t i = i0; i < i1; i++)
        dx[i] = dy[i] * (keep[i] ? scale : 0.0f);
}

static void adam(int64_t i0, int64_t i1, float *w, const float *g, float *m, float *v, float lr_t, float beta_1,
                 float beta_2, float epsilon)
{
    #pragma omp simd
    for (int64_t i = i0; i < i1; i++) {
        m[i] += (g[i] - m[i]) * (1.0f - beta_1);
        v[i] += (g[i] * g[i] - v[i]) * (1.0f - beta_2);
        w[i] -= lr_t * m[i] / (sqrtf(v[i]) + epsilon);
    }
}

static void adadelta(int64_t i0, int64_t i1, float *w, const float *g, float *accumulated_grad,
                     float *accumulated_delta, float lr, float rho, float epsilon)
{
    #pragma omp simd
    for (int64_t i = i0; i < i1; i++) {
        accumulated_grad[i] = rho * accumulated_grad[i] + (1.0f - rho) * g[i] * g[i];
        const float delta = -sqrtf(accumulated_delta[i] + epsilon) / sqrtf(accumulated_grad[i] + epsilon) * g[i];
        accumulated_delta[i] = rho * accumulated_delta[i] + (1.0f - rho) * delta * delta;
        w[i] += lr * delta;
    }
}

/* Updates element i's velocity and returns its step lr * g / sqrt(velocity + epsilon), with the
 * operations in the order of fastconv.reference's NumPy rule, so float32 results agree to rounding. */
static inline float rmsprop_increment(int64_t i, const float *g, float *velocity, float lr, float rho, float epsilon)
{
    velocity[i] = rho * velocity[i] + (1.0f - rho) * g[i] * g[i];
    return lr * g[i] / sqrtf(velocity[i] + epsilon);
}

static void rmsprop(int64_t i0, int64_t i1, float *w, const float *g, float *velocity, float *momentum_buffer,
                    float lr, float rho, float momentum, float epsilon)
{
    if (!momentum_buffer) {
        #pragma omp simd
        for (int64_t i = i0; i < i1; i++)
            w[i] -= rmsprop_increment(i, g, velocity, lr, rho, epsilon);
        return;
    }
    #pragma omp simd
    for (int64_t i = i0; i < i1; i++) {
        momentum_buffer[i] = momentum * momentum_buffer[i] + rmsprop_increment(i, g, velocity, lr, rho, epsilon);
        w[i] -= momentum_buffer[i];
    }
}

/* One loop per rule (plain, momentum, Nesterov), so no loop tests the rule per element. */
static void sgd(int64_t i0, int64_t i1, float *w, const float *g, float *velocity, float lr, float momentum,
                int nesterov)
{
    if (!velocity) {
        #pragma omp simd
        for (int64_t i = i0; i < i1; i++)
            w[i] -= lr * g[i];
    } else if (nesterov) {
        #pragma omp simd
        for (int64_t i = i0; i < i1; i++) {
            velocity[i] = momentum * velocity[i] - lr * g[i];
            w[i] += momentum * velocity[i] - lr * g[i];
        }
    } else {
        #pragma omp simd
        for (int64_t i = i0; i < i1; i++) {
            velocity[i] = momentum * velocity[i] - lr * g[i];
            w[i] += velocity[i];
        }
    }
}

static int pair_sum(int64_t i0, int64_t i1, const float *a, const float *b, float scale, float *out)
{
    int nonfinite = 0;
    #pragma omp simd reduction(|:nonfinite)
    for (int64_t i = i0; i < i1; i++) {
        const float s = (a[i] + b[i]) * scale;
        out[i] = s;
        nonfinite |= !(fabsf(s) <= FLT_MAX);  /* NaN compares false */
    }
    return nonfinite;
}

const fc_elementwise_kernels ELEMENTWISE_TABLE = {
    .name = ELEMENTWISE_NAME,
    .relu_backward = relu_backward,
    .dropout = dropout,
    .dropout_backward = dropout_backward,
    .adam = adam,
    .adadelta = adadelta,
    .rmsprop = rmsprop,
    .sgd = sgd,
    .pair_sum = pair_sum,
};
