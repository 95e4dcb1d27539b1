/* The float32 AVX-512 micro-kernel, built against the emulated intrinsics of immintrin.h here, as part of
 * the shared library that tests/test_emulated_avx512.py calls through ctypes. */
#include "../../csrc/gemm/ukr_avx512_14x32.c"

/* The A-packing function both AVX-512 kernels name, which the test does not call (it lays A out itself). */
void fc_gemm_pack_avx512(const float *src, int64_t rs, int64_t cs, int64_t first, int64_t rows, int64_t k, int width,
                         int64_t panel_stride, float *dst)
{
    (void)src; (void)rs; (void)cs; (void)first; (void)rows; (void)k; (void)width; (void)panel_stride; (void)dst;
    __builtin_trap();
}

int emulated_f32_mr(void) { return fc_gemm_avx512_14x32.mr; }
int emulated_f32_nr(void) { return fc_gemm_avx512_14x32.nr; }

/* C (m x n, ldc) = the kernel's tile of A (a + i * rs_a + p * cs_a) and the B panel (rs_b floats from one
 * k step to the next), with the write-back's alpha, beta, bias (or NULL), relu; a_next: the next tile's
 * A, which the kernel only prefetches (NULL or not, the results must be the same). */
void emulated_f32_tile(int64_t k, const float *a, int64_t rs_a, int64_t cs_a, const float *a_next, const float *b,
                       int64_t rs_b, float *c, int64_t ldc, int m, int n, float alpha, float beta, const float *bias,
                       int relu)
{
    const fc_tile_epilogue ep = { .alpha = alpha, .beta = beta, .bias = bias, .relu = relu };
    fc_gemm_avx512_14x32.ukr(k, a, rs_a, cs_a, a_next, b, rs_b, c, ldc, m, n, &ep);
}
