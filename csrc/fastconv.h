/* The C API of fastconv's ops. Python (fastconv/_C.pyx) validates every argument first: these
 * functions see C-contiguous float32 buffers, consistent sizes and no empty dimensions.
 *
 * The ops that return int return 0, or FC_ERROR_NO_MEMORY when their scratch memory could not be
 * allocated: then nothing was computed (the output is left as it was, or partly written) and no
 * memory is kept. Every allocation is made by the calling thread before any parallel work starts. */
#ifndef FASTCONV_H
#define FASTCONV_H

#include <stdint.h>

enum { FC_OK = 0, FC_ERROR_NO_MEMORY = -1 };

/* ---- configuration (dispatch.c) ---- */
const char *fc_isa_name(void);           /* the instruction set in use: "avx512", "avx2" or "generic" */
int fc_isa_supported(const char *name);  /* 1 if this CPU and OS can run that path */
/* This build's i-th instruction set (csrc/isa_list.h), worst first; NULL past the last. */
const char *fc_isa_name_at(int i);
int fc_set_isa(const char *name);        /* force a path; 0 on success, -1 if unknown or unsupported */
const char *fc_gemm_kernel_name(void);
/* Mixed precision. The calling thread's compute precision for its next calls (returns the previous
 * one): FC_PRECISION_BFLOAT16 runs the GEMMs (Dense, and conv's im2col, implicit and Winograd paths)
 * on a bfloat16 kernel, inputs rounded to bf16 and sums in float32, where one runs (below), else on
 * the float32 kernel. */
enum { FC_PRECISION_FLOAT32 = 0, FC_PRECISION_BFLOAT16 = 1 };
int fc_set_thread_precision(int precision);
/* The kernel bfloat16 calls run now, or NULL when they run the float32 one (no AVX512_BF16). */
const char *fc_bf16_kernel_name(void);
/* "auto": the instruction set's bf16 kernel where the CPU has AVX512_BF16; "portable": the portable
 * kernel with the same arithmetic, on any CPU (also FASTCONV_BF16_KERNEL=portable). 0, or -1 if unknown. */
int fc_set_bf16_kernel(const char *name);
int fc_cpu_has_avx512_bf16(void);
/* Tests only: float32 -> bfloat16 bits of n values, as the bf16 kernels round them. */
void fc_bf16_from_floats(const float *x, uint16_t *out, int64_t n);
const char *fc_compiler(void);
/* glibc only: serve allocations below `bytes` from the heap and keep up to `bytes` of freed memory
 * mapped, so that per-step arrays stop page-faulting; returns 1 if applied (workspace.c). */
int fc_keep_freed_memory(int64_t bytes);
/* Scratch memory (workspace.c): each calling thread caches its buffers for its next call while all
 * threads together hold at most the limit (bytes; default FC_WORKSPACE_DEFAULT_LIMIT); a call that
 * ends above it frees its thread's. fc_release_workspace frees every buffer not in use by a call and
 * returns the bytes freed. Stats: out[0] bytes held now, out[1] the most held since the last reset,
 * out[2] the limit. */
enum { FC_WORKSPACE_DEFAULT_LIMIT = 64 << 20 };
int64_t fc_release_workspace(void);
void fc_set_workspace_limit(int64_t bytes);
void fc_workspace_stats(int64_t out[3]);
void fc_reset_workspace_peak(void);
/* Tests only: every scratch request of at least `bytes` fails as if memory were short (-1: none). */
void fc_fail_scratch_from(int64_t bytes);
/* Tests only: the largest scratch request (bytes) of each slot (call, kernel, gemm; workspace.h) that the
 * calling thread made since its last call of this; resets them. Checks what the plans report. */
void fc_scratch_requested(int64_t out[3]);
int fc_openmp_enabled(void);
/* One thread count for the whole process, whichever thread sets it (0 before: OpenMP's default). The
 * calling thread's count is that, or its own OpenMP limit where threadpoolctl lowered it. */
void fc_set_num_threads(int n);
int fc_get_num_threads(void);
/* Runs the FP32 FMA peak loop of one instruction set (NULL: the active one) for `iters` steps on
 * `threads` threads and returns the floating-point operations done, or -1 if the CPU lacks that set.
 * The caller times it (fastconv.bench). */
int64_t fc_fma_peak(const char *isa, int64_t iters, int threads);
/* The active GEMM kernel's register tile and cache blocks: out[0..5) = mr, nr, mc, kc, nc. */
void fc_gemm_blocking(int out[5]);
/* Fits every GEMM kernel's blocking to a core's L2 size, L1 size, L1 associativity and L2
 * associativity; a negative value reads this CPU's (done once when the library loads). Tests use it to
 * run each CPU's paths on any machine; not while another thread runs a GEMM. */
void fc_fit_gemm_blocking(int64_t l2_bytes, int64_t l1_bytes, int64_t l1_ways, int64_t l2_ways);

/* ---- GEMM: C = alpha * op(A) @ op(B) + beta * C, row-major, op(A) is m x k, op(B) is k x n ----
 * bias (length n, or NULL) is added per column and relu applied after, both while C is in registers. */
int fc_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
             const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
             float *c, int64_t ldc, const float *bias, int relu);

/* ---- convolution: NHWC input, (kh, kw, cin, cout) kernel, cross-correlation ---- */
typedef struct {
    int64_t n, h, w, cin;
    int64_t kh, kw, cout;
    int64_t stride_h, stride_w, dilation_h, dilation_w;
    int64_t pad_top, pad_bottom, pad_left, pad_right;  /* zeros around x (fastconv/shapes.py) */
    int64_t oh, ow;
} fc_conv_shape;

/* Algorithm requests: FC_CONV_AUTO picks per shape, the others force one where it applies. What each
 * request does for each pass (the policy) is written once, at the top of csrc/conv/conv.c. */
enum {
    FC_CONV_AUTO = 0, FC_CONV_IM2COL = 1, FC_CONV_DIRECT = 2, FC_CONV_IMPLICIT = 3, FC_CONV_WINOGRAD = 4,
    FC_CONV_WINOGRAD4X4 = 5,
};
const char *fc_conv_direct_kernel_name(void);

/* y (n, oh, ow, cout) = conv(x, w) + bias, then relu if asked; bias may be NULL. */
int fc_conv2d_forward(const fc_conv_shape *s, int algo, const float *x, const float *w, const float *bias,
                       int relu, float *y);
/* Gradients of the conv without activation; any of dx, dw, db may be NULL to skip it. x_from_relu: x is
 * a ReLU's output, and dx is the gradient at that ReLU's input (zero where x <= 0), in the same pass. */
int fc_conv2d_backward(const fc_conv_shape *s, int algo, const float *dy, const float *x, const float *w,
                        int x_from_relu, float *dx, float *dw, float *db);
/* The plan a call makes (csrc/conv/conv.c), for the instruction set and thread count in force now
 * (the scratch a call takes, exactly: it allocates this, cached for the thread's next call):
 * for the passes asked (FC_CONV_PASS_FORWARD, or any of DX, DW and DB), the algorithm the request
 * resolves to, the path of each pass (FC_CONV_PATH_*), the threads of its largest loop and the scratch
 * each slot takes (call, kernel, gemm; workspace.h). forward/backward compute the same plan and run it. */
enum { FC_CONV_PASS_FORWARD = 1, FC_CONV_PASS_DX = 2, FC_CONV_PASS_DW = 4, FC_CONV_PASS_DB = 8 };
enum {
    FC_CONV_PATH_NONE = 0, FC_CONV_PATH_IM2COL = 1, FC_CONV_PATH_DIRECT = 2, FC_CONV_PATH_IMPLICIT = 3,
    FC_CONV_PATH_WINOGRAD = 4, FC_CONV_PATH_GEMM = 5, FC_CONV_PATH_FEW_OUTPUTS = 6,
    FC_CONV_PATH_IM2COL_TRANSPOSED = 7,
};
typedef struct {
    int algorithm;              /* FC_CONV_* */
    int forward, dx, dw;        /* FC_CONV_PATH_* (NONE for the passes not asked) */
    int threads;
    int64_t scratch_bytes[3];
} fc_conv_plan_info;
void fc_conv2d_plan(const fc_conv_shape *s, int algo, int passes, fc_conv_plan_info *info);

/* ---- pooling: NHWC ---- */
typedef struct {
    int64_t n, h, w, c;
    int64_t pool_h, pool_w, stride_h, stride_w;
    int64_t pad_top, pad_left;
    int64_t oh, ow;
} fc_pool_shape;

/* argmax (NULL to skip): one byte per output value, the row-major tap (i * pool_w + j) of the window's
 * first maximum, FC_ARGMAX_NONE for a window of nothing but -inf, plus FC_ARGMAX_NOT_POSITIVE when the
 * maximum is not > 0. Needs pool_h * pool_w < FC_ARGMAX_NONE. */
enum { FC_ARGMAX_NONE = 0x7F, FC_ARGMAX_NOT_POSITIVE = 0x80 };
int fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y, uint8_t *argmax);
/* From argmax when it is not NULL (x is then not read), else by finding each window's maximum in x.
 * x_from_relu: x is a ReLU's output; dx is then the gradient at that ReLU's input (zero where x <= 0). */
int fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const float *x, const uint8_t *argmax,
                           int x_from_relu, float *dx);
/* A conv with ReLU followed by 2x2, stride-2 max pooling (valid), as one op where `algo` (FC_CONV_*) runs
 * the conv's forward on the direct kernels or as Winograd: _applies returns that path
 * (FC_CONV_PATH_DIRECT or _WINOGRAD), else FC_CONV_PATH_NONE. y and argmax are maxpool2d's of the conv's
 * output, which is never stored. The weight gradient, for the direct path only, takes the gradient at
 * the pooled output. The same bits as the two ops and their backward passes with the same `algo`. */
int fc_conv2d_relu_maxpool2x2_applies(const fc_conv_shape *s, int algo);
int fc_conv2d_relu_maxpool2x2_forward(const fc_conv_shape *s, int algo, const float *x, const float *w,
                                      const float *bias, float *y, uint8_t *argmax);
int fc_conv2d_relu_maxpool2x2_weight_grad(const fc_conv_shape *s, int algo, const float *dy, const uint8_t *argmax,
                                          const float *x, float *dw, float *db);
/* dx (NULL: not asked for), dw and db of the same op from the gradient at its pooled output, where the
 * backward passes of `algo` compute dw and dx as Winograd: the conv output's gradient is rebuilt tile by
 * tile in each pass and never stored. Returns FC_CONV_NOT_FUSED (nothing written) where they do not. */
enum { FC_CONV_NOT_FUSED = 1 };
int fc_conv2d_relu_maxpool2x2_backward(const fc_conv_shape *s, int algo, const float *dy, const uint8_t *argmax,
                                       const float *x, const float *w, int x_from_relu, float *dx, float *dw,
                                       float *db);
int fc_avgpool2d_forward(const fc_pool_shape *s, const float *x, float *y);
int fc_avgpool2d_backward(const fc_pool_shape *s, const float *dy, float *dx);

/* ---- training: elementwise, in place where it updates ---- */
int fc_relu_backward(int64_t n, const float *dy, const float *y, float *dx);  /* dx = y > 0 ? dy : 0 */
/* y = x * mask, mask[i] = 1/(1-rate) or 0 from a counter-based hash of (seed, first + i), written to
 * `mask` as floats or to `keep` as bytes (1 where kept), whichever is not NULL. The backward pass
 * takes the bytes: dx = dy * mask. */
int fc_dropout_forward(int64_t n, const float *x, float rate, uint64_t seed, int64_t first, float *y, float *mask,
                       uint8_t *keep);
int fc_dropout_backward(int64_t n, const float *dy, const uint8_t *keep, float rate, float *dx);
/* out = (a + b) * scale in float32 (two ranks' gradients, summed in rank order); 1 if any out is
 * not finite (Inf or NaN, including an overflowing sum), else 0. out may be a or b. */
int fc_pair_sum(int64_t n, const float *a, const float *b, float scale, float *out);
int fc_adam_update(int64_t n, float *w, const float *g, float *m, float *v, float lr_t, float beta_1,
                    float beta_2, float epsilon);
int fc_adadelta_update(int64_t n, float *w, const float *g, float *accumulated_grad, float *accumulated_delta,
                        float lr, float rho, float epsilon);
/* Keras' RMSprop and SGD; momentum_buffer and velocity are NULL when momentum == 0 (the plain rules). */
int fc_rmsprop_update(int64_t n, float *w, const float *g, float *velocity, float *momentum_buffer, float lr,
                       float rho, float momentum, float epsilon);
int fc_sgd_update(int64_t n, float *w, const float *g, float *velocity, float lr, float momentum, int nesterov);
/* The same updates of `count` arrays at once (array t has n[t] elements; momentum_buffer and velocity
 * are NULL when momentum == 0), in one parallel region: results equal one call per array. The
 * arrays must not overlap. */
int fc_adam_update_all(int64_t count, const int64_t *n, float *const *w, const float *const *g, float *const *m,
                       float *const *v, float lr_t, float beta_1, float beta_2, float epsilon);
int fc_adadelta_update_all(int64_t count, const int64_t *n, float *const *w, const float *const *g,
                           float *const *accumulated_grad, float *const *accumulated_delta, float lr, float rho,
                           float epsilon);
int fc_rmsprop_update_all(int64_t count, const int64_t *n, float *const *w, const float *const *g,
                          float *const *velocity, float *const *momentum_buffer, float lr, float rho, float momentum,
                          float epsilon);
int fc_sgd_update_all(int64_t count, const int64_t *n, float *const *w, const float *const *g, float *const *velocity,
                      float lr, float momentum, int nesterov);

/* ---- batch normalisation: x is rows x channels (NHWC: every axis but the last is a row) ----
 * Per-channel sums are taken in double over fixed chunks of rows and combined in a fixed order, so
 * the results do not depend on the thread count. gamma and beta may be NULL (1 and 0). */
/* The batch's mean and biased variance of each channel. */
int fc_batchnorm_statistics(int64_t rows, int64_t channels, const float *x, float *mean, float *variance);
/* y = (x - mean) / sqrt(variance + epsilon) * gamma + beta. */
int fc_batchnorm_forward(int64_t rows, int64_t channels, const float *x, const float *mean, const float *variance,
                          const float *gamma, const float *beta, float epsilon, float *y);
/* dbeta = sum(dy), dgamma = sum(dy * xhat), xhat = (x - mean) / sqrt(variance + epsilon); dx (NULL to
 * skip) through the batch statistics when batch_statistics, else as if mean and variance were constants. */
int fc_batchnorm_backward(int64_t rows, int64_t channels, const float *dy, const float *x, const float *mean,
                           const float *variance, const float *gamma, float epsilon, int batch_statistics,
                           float *dx, float *dgamma, float *dbeta);

/* ---- image resampling: NHWC (image/affine.c) ---- */
enum { FC_INTERP_NEAREST = 0, FC_INTERP_BILINEAR = 1 };
enum { FC_FILL_CONSTANT = 0, FC_FILL_NEAREST = 1, FC_FILL_REFLECT = 2, FC_FILL_WRAP = 3, FC_FILL_MIRROR = 4 };
typedef struct {
    int64_t n, h, w, c;      /* the input images */
    int64_t out_h, out_w;    /* the output images: n x out_h x out_w x c */
} fc_affine_shape;
/* y[i] = x[i] resampled through transforms[8 i .. 8 i + 8) = a0 a1 a2 b0 b1 b2 c0 c1 (Keras' order):
 * output pixel (col, row) reads x at ((a0 col + a1 row + a2) / k, (b0 col + b1 row + b2) / k),
 * k = c0 col + c1 row + 1. Neighbours outside the image follow fill_mode (constant: fill_value). */
void fc_affine_transform(const fc_affine_shape *s, const float *x, const double *transforms, int interpolation,
                         int fill_mode, float fill_value, float *y);

#endif
