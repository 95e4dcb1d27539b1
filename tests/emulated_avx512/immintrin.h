/* The AVX-512 intrinsics of the AVX-512 micro-kernels (csrc/gemm/ukr_avx512_14x32.c and
 * ukr_avx512_bf16_14x32.c) in portable C, each lane computed as the
 * Intel SDM's pseudocode defines the instruction, so that the kernel's own code (its layouts, masks,
 * tails and write-back) runs and is tested on CPUs without AVX-512 (tests/test_emulated_avx512.py).
 * It stands in for <immintrin.h> only in that test's build (-I this directory), never in the library. */
#ifndef FASTCONV_EMULATED_IMMINTRIN_H
#define FASTCONV_EMULATED_IMMINTRIN_H

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float __m512 __attribute__((vector_size(64), may_alias));
typedef long long __m512i __attribute__((vector_size(64), may_alias));
typedef uint16_t __m512bh __attribute__((vector_size(64), may_alias));
typedef uint16_t __m256bh __attribute__((vector_size(32), may_alias));
typedef long long __m256i __attribute__((vector_size(32), may_alias));
typedef uint16_t __mmask16;

typedef int32_t emulated_i32x16 __attribute__((vector_size(64), may_alias));
typedef uint32_t emulated_u32x16 __attribute__((vector_size(64), may_alias));

enum { _MM_HINT_T0 = 3, _MM_HINT_T1 = 2, _MM_HINT_T2 = 1, _MM_HINT_NTA = 0 };
#define _mm_prefetch(p, hint) ((void)(p), (void)(hint))

static inline float emulated_bits_float(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }
static inline uint32_t emulated_float_bits(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }

/* A denormal as a zero of its sign (DAZ on inputs, FTZ on results, as VDPBF16PS always does). */
static inline float emulated_flush(float x)
{
    const uint32_t u = emulated_float_bits(x);
    return (u & 0x7F800000u) == 0 ? emulated_bits_float(u & 0x80000000u) : x;
}

static inline __m512 _mm512_setzero_ps(void) { return (__m512){ 0 }; }

static inline __m512 _mm512_set1_ps(float x)
{
    __m512 r;
    for (int i = 0; i < 16; i++) r[i] = x;
    return r;
}

static inline __m512i _mm512_set1_epi32(int x)
{
    emulated_i32x16 r;
    for (int i = 0; i < 16; i++) r[i] = x;
    return (__m512i)r;
}

/* Masked-off lanes are neither read nor written (the hardware never faults on them). */
static inline __m512 _mm512_maskz_loadu_ps(__mmask16 k, const void *p)
{
    __m512 r = { 0 };
    for (int i = 0; i < 16; i++)
        if (k >> i & 1) memcpy(&r[i], (const float *)p + i, sizeof(float));
    return r;
}

static inline void _mm512_mask_storeu_ps(void *p, __mmask16 k, __m512 v)
{
    for (int i = 0; i < 16; i++)
        if (k >> i & 1) memcpy((float *)p + i, &v[i], sizeof(float));
}

static inline __m512 _mm512_loadu_ps(const void *p) { __m512 r; memcpy(&r, p, sizeof r); return r; }
static inline __m512i _mm512_loadu_si512(const void *p) { __m512i r; memcpy(&r, p, sizeof r); return r; }
static inline void _mm512_storeu_si512(void *p, __m512i v) { memcpy(p, &v, sizeof v); }
static inline void _mm256_storeu_si256(__m256i *p, __m256i v) { memcpy(p, &v, sizeof v); }

static inline __m512 _mm512_add_ps(__m512 a, __m512 b) { return a + b; }
static inline __m512 _mm512_mul_ps(__m512 a, __m512 b) { return a * b; }

static inline __m512 _mm512_fmadd_ps(__m512 a, __m512 b, __m512 c)
{
    __m512 r;
    for (int i = 0; i < 16; i++) r[i] = fmaf(a[i], b[i], c[i]);
    return r;
}

/* MAXPS: the second operand where either is NaN or they are equal. */
static inline __m512 _mm512_max_ps(__m512 a, __m512 b)
{
    __m512 r;
    for (int i = 0; i < 16; i++) r[i] = a[i] > b[i] ? a[i] : b[i];
    return r;
}

static inline __m512i _mm512_or_si512(__m512i a, __m512i b) { return a | b; }

static inline __m512i _mm512_slli_epi32(__m512i a, unsigned int n)
{
    const emulated_u32x16 u = (emulated_u32x16)a;
    return (__m512i)(n > 31 ? (emulated_u32x16){ 0 } : u << n);
}

static inline __m512i _mm512_cvtepu16_epi32(__m256i a)
{
    uint16_t h[16];
    memcpy(h, &a, sizeof h);
    emulated_u32x16 r;
    for (int i = 0; i < 16; i++) r[i] = h[i];
    return (__m512i)r;
}

/* VCVTNEPS2BF16: a NaN keeps its top half, made quiet; a denormal becomes a zero of its sign; anything
 * else is rounded to nearest even (Inf stays Inf). */
static inline __m256bh _mm512_cvtneps_pbh(__m512 a)
{
    __m256bh r;
    for (int i = 0; i < 16; i++) {
        uint32_t u = emulated_float_bits(a[i]);
        if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
            r[i] = (uint16_t)(u >> 16 | 0x0040u);
        } else {
            u = emulated_float_bits(emulated_flush(a[i]));
            r[i] = (uint16_t)((u + 0x7FFFu + (u >> 16 & 1u)) >> 16);
        }
    }
    return r;
}

/* VDPBF16PS: per 32-bit lane j, dst += a.bf16[2j+1] * b.bf16[2j+1], then dst += a.bf16[2j] *
 * b.bf16[2j]; each product exact, each sum rounded to nearest even, denormals in and out as zeros. */
static inline __m512 _mm512_dpbf16_ps(__m512 src, __m512bh a, __m512bh b)
{
    __m512 r;
    for (int j = 0; j < 16; j++) {
        float t = emulated_flush(src[j]);
        for (int half = 1; half >= 0; half--) {
            const float x = emulated_flush(emulated_bits_float((uint32_t)a[2 * j + half] << 16));
            const float y = emulated_flush(emulated_bits_float((uint32_t)b[2 * j + half] << 16));
            t = emulated_flush(fmaf(x, y, t));
        }
        r[j] = t;
    }
    return r;
}

#endif
