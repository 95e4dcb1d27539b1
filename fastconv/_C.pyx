# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Thin bindings to the C kernels: pointers and sizes only, the GIL released around every kernel.

Callers (fastconv.ops) pass validated, C-contiguous, non-empty float32 arrays flattened to 1-D.
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, malloc, qsort

cimport cpython
from cpython.number cimport PyNumber_Index
cimport numpy as cnp
import numpy as np

cnp.import_array()


cdef extern from "fastconv.h" nogil:
    const char *fc_isa_name()
    int fc_isa_supported(const char *name)
    const char *fc_isa_name_at(int i)
    int fc_set_isa(const char *name)
    const char *fc_gemm_kernel_name()
    int fc_set_thread_precision(int precision)
    const char *fc_bf16_kernel_name()
    int fc_set_bf16_kernel(const char *name)
    int fc_cpu_has_avx512_bf16()
    void fc_bf16_from_floats(const float *x, uint16_t *out, int64_t n)
    const char *fc_compiler()
    int fc_keep_freed_memory(int64_t bytes)
    int64_t fc_release_workspace()
    void fc_set_workspace_limit(int64_t bytes)
    void fc_workspace_stats(int64_t out[3])
    void fc_reset_workspace_peak()
    void fc_fail_scratch_from(int64_t bytes)
    void fc_scratch_requested(int64_t out[3])
    int fc_openmp_enabled()
    void fc_set_num_threads(int n)
    int fc_get_num_threads()
    int64_t fc_fma_peak(const char *isa, int64_t iters, int threads)
    void fc_gemm_blocking(int out[5])
    void fc_fit_gemm_blocking(int64_t l2_bytes, int64_t l1_bytes, int64_t l1_ways, int64_t l2_ways)

    int fc_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                 float *c, int64_t ldc, const float *bias, int relu)

    ctypedef struct fc_conv_shape:
        int64_t n, h, w, cin, kh, kw, cout
        int64_t stride_h, stride_w, dilation_h, dilation_w
        int64_t pad_top, pad_bottom, pad_left, pad_right, oh, ow
    const char *fc_conv_direct_kernel_name()
    int fc_conv2d_forward(const fc_conv_shape *s, int algo, const float *x, const float *w, const float *bias,
                           int relu, float *y)
    int fc_conv2d_backward(const fc_conv_shape *s, int algo, const float *dy, const float *x, const float *w,
                            int x_from_relu, float *dx, float *dw, float *db)
    ctypedef struct fc_conv_plan_info:
        int algorithm, forward, dx, dw, threads
        int64_t scratch_bytes[3]
    void fc_conv2d_plan(const fc_conv_shape *s, int algo, int passes, fc_conv_plan_info *info)

    ctypedef struct fc_pool_shape:
        int64_t n, h, w, c, pool_h, pool_w, stride_h, stride_w, pad_top, pad_left, oh, ow
    int fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y, uint8_t *argmax)
    int fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const float *x, const uint8_t *argmax,
                               int x_from_relu, float *dx)
    int fc_conv2d_relu_maxpool2x2_applies(const fc_conv_shape *s, int algo)
    int fc_conv2d_relu_maxpool2x2_forward(const fc_conv_shape *s, int algo, const float *x, const float *w,
                                          const float *bias, float *y, uint8_t *argmax)
    int fc_conv2d_relu_maxpool2x2_weight_grad(const fc_conv_shape *s, int algo, const float *dy,
                                              const uint8_t *argmax, const float *x, float *dw, float *db)
    int FC_CONV_NOT_FUSED
    int fc_conv2d_relu_maxpool2x2_backward(const fc_conv_shape *s, int algo, const float *dy, const uint8_t *argmax,
                                           const float *x, const float *w, int x_from_relu, float *dx, float *dw,
                                           float *db)
    int fc_avgpool2d_forward(const fc_pool_shape *s, const float *x, float *y)
    int fc_avgpool2d_backward(const fc_pool_shape *s, const float *dy, float *dx)
    int fc_relu_backward(int64_t n, const float *dy, const float *y, float *dx)
    int fc_dropout_forward(int64_t n, const float *x, float rate, uint64_t seed, int64_t first, float *y, float *mask,
                           uint8_t *keep)
    int fc_adam_update(int64_t n, float *w, const float *g, float *m, float *v, float lr_t, float beta_1,
                        float beta_2, float epsilon)
    int fc_adadelta_update(int64_t n, float *w, const float *g, float *accumulated_grad,
                            float *accumulated_delta, float lr, float rho, float epsilon)
    int fc_rmsprop_update(int64_t n, float *w, const float *g, float *velocity, float *momentum_buffer, float lr,
                           float rho, float momentum, float epsilon)
    int fc_sgd_update(int64_t n, float *w, const float *g, float *velocity, float lr, float momentum, int nesterov)
    int fc_dropout_backward(int64_t n, const float *dy, const uint8_t *keep, float rate, float *dx)
    int fc_pair_sum(int64_t n, const float *a, const float *b, float scale, float *out)
    int fc_adam_update_all(int64_t count, const int64_t *n, float **w, const float **g, float **m, float **v,
                           float lr_t, float beta_1, float beta_2, float epsilon)
    int fc_adadelta_update_all(int64_t count, const int64_t *n, float **w, const float **g, float **accumulated_grad,
                               float **accumulated_delta, float lr, float rho, float epsilon)
    int fc_rmsprop_update_all(int64_t count, const int64_t *n, float **w, const float **g, float **velocity,
                              float **momentum_buffer, float lr, float rho, float momentum, float epsilon)
    int fc_sgd_update_all(int64_t count, const int64_t *n, float **w, const float **g, float **velocity, float lr,
                          float momentum, int nesterov)
    int fc_batchnorm_statistics(int64_t rows, int64_t channels, const float *x, float *mean, float *variance)
    int fc_batchnorm_forward(int64_t rows, int64_t channels, const float *x, const float *mean,
                              const float *variance, const float *gamma, const float *beta, float epsilon, float *y)
    int fc_batchnorm_backward(int64_t rows, int64_t channels, const float *dy, const float *x, const float *mean,
                               const float *variance, const float *gamma, float epsilon, int batch_statistics,
                               float *dx, float *dgamma, float *dbeta)

    ctypedef struct fc_affine_shape:
        int64_t n, h, w, c, out_h, out_w
    void fc_affine_transform(const fc_affine_shape *s, const float *x, const double *transforms, int interpolation,
                             int fill_mode, float fill_value, float *y)


cdef int check(int status, const char *op) except -1:
    """Raises MemoryError for a kernel that could not allocate its scratch memory (fastconv.h)."""
    if status != 0:
        raise MemoryError(f"not enough memory for the scratch buffers of {op.decode()} "
                          f"(see fastconv.conv2d_workspace_bytes for a convolution's)")
    return 0


def release_workspace():
    """Free every cached scratch buffer no call is using; returns the bytes freed."""
    with nogil:
        released = fc_release_workspace()
    return released


def workspace_stats():
    """(bytes of scratch held now, the most held since reset_workspace_peak, the cache limit)."""
    cdef int64_t out[3]
    fc_workspace_stats(out)
    return out[0], out[1], out[2]


def reset_workspace_peak():
    fc_reset_workspace_peak()


def set_workspace_limit(int64_t nbytes):
    fc_set_workspace_limit(nbytes)


def fail_scratch_from(int64_t nbytes):
    """Tests only: every scratch request of at least nbytes fails as if memory were short (-1: none)."""
    fc_fail_scratch_from(nbytes)


def scratch_requested():
    """Tests only: this thread's largest scratch request (bytes) per slot (call, kernel, gemm) since the
    last call; resets them."""
    cdef int64_t out[3]
    fc_scratch_requested(out)
    return out[0], out[1], out[2]


def isa_name():
    return fc_isa_name().decode()


def isa_names():
    """The instruction sets this build has, worst first (csrc/isa_list.h)."""
    names = []
    cdef const char *name = fc_isa_name_at(0)
    while name != NULL:
        names.append(name.decode())
        name = fc_isa_name_at(len(names))
    return names


def isa_supported(str name):
    return bool(fc_isa_supported(name.encode()))


def set_isa(str name):
    return fc_set_isa(name.encode()) == 0


def gemm_kernel_name():
    return fc_gemm_kernel_name().decode()


def set_thread_precision(int bfloat16):
    """This thread's next calls compute in bfloat16 (1) or float32 (0); returns the previous setting."""
    return fc_set_thread_precision(bfloat16)


def bf16_kernel_name():
    """The micro-kernel bfloat16 calls run now, or None when they run the float32 one."""
    cdef const char *name = fc_bf16_kernel_name()
    return None if name == NULL else name.decode()


def set_bf16_kernel(str name):
    return fc_set_bf16_kernel(name.encode()) == 0


def cpu_has_avx512_bf16():
    return bool(fc_cpu_has_avx512_bf16())


def bf16_from_floats(float[::1] x, uint16_t[::1] out):
    """out[i] = the bfloat16 bits of x[i], as the bf16 kernels round them (tests)."""
    fc_bf16_from_floats(&x[0], &out[0], x.shape[0])


def gemm_blocking():
    """The active GEMM kernel's (mr, nr, mc, kc, nc): register tile and cache blocks."""
    cdef int out[5]
    fc_gemm_blocking(out)
    return tuple(out[i] for i in range(5))


def fit_gemm_blocking(int64_t l2_bytes=-1, int64_t l1_bytes=-1, int64_t l1_ways=-1, int64_t l2_ways=-1):
    """Fit the GEMM blocking to a core with these caches (-1: this CPU's)."""
    fc_fit_gemm_blocking(l2_bytes, l1_bytes, l1_ways, l2_ways)


def fma_peak(isa, int64_t iters, int threads):
    """Run the FMA peak loop of `isa` (None: the active one); return the flops done, -1 if unsupported."""
    cdef bytes name = b"" if isa is None else isa.encode()
    cdef const char *name_ptr = NULL
    if isa is not None:
        name_ptr = name
    with nogil:
        flops = fc_fma_peak(name_ptr, iters, threads)
    return flops


def compiler():
    return fc_compiler().decode()


def keep_freed_memory(int64_t nbytes):
    return bool(fc_keep_freed_memory(nbytes))


def openmp_enabled():
    return bool(fc_openmp_enabled())


def set_num_threads(int n):
    fc_set_num_threads(n)


def get_num_threads():
    return fc_get_num_threads()


cdef const float *optional(const float[::1] view):
    return NULL if view is None else &view[0]


cdef inline float *array_data(cnp.ndarray arr):
    return NULL if arr is None else <float *>cnp.PyArray_DATA(arr)


def gemm(bint trans_a, bint trans_b, int64_t m, int64_t n, int64_t k, float alpha,
         cnp.ndarray a, int64_t lda, cnp.ndarray b, int64_t ldb, float beta,
         cnp.ndarray c, int64_t ldc, cnp.ndarray bias=None, bint relu=False):
    """The arrays are float32 with unit column strides and row strides lda, ldb, ldc in elements
    (checked by fastconv.ops.gemm, the only caller): read through their data pointers, as typed
    memoryviews would cost more than a small product."""
    cdef const float *a_ptr = array_data(a)
    cdef const float *b_ptr = array_data(b)
    cdef float *c_ptr = array_data(c)
    cdef const float *bias_ptr = array_data(bias)
    cdef int status
    with nogil:
        status = fc_gemm(trans_a, trans_b, m, n, k, alpha, a_ptr, lda, b_ptr, ldb, beta, c_ptr, ldc, bias_ptr, relu)
    check(status, b"gemm")


cdef inline bint plain_array(object x, int ndim):
    """x is an ndim-D, C-contiguous, aligned, native-endian float32 numpy.ndarray (not a subclass)."""
    if type(x) is not cnp.ndarray:
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>x
    return (cnp.PyArray_TYPE(arr) == cnp.NPY_FLOAT32 and cnp.PyArray_NDIM(arr) == ndim and
            cnp.PyArray_ISCARRAY_RO(arr) and cnp.PyArray_ISNOTSWAPPED(arr))


# Outputs of at least this many bytes start on a cache line (empty_aligned); smaller ones are not worth
# the extra Python calls on a path that takes a few microseconds.
ALIGNED_MIN_BYTES = 1 << 16


cdef extern from "numpy/arrayobject.h":
    # (numpy's .pxd leaves it out: it steals a reference to descr)
    object PyArray_NewFromDescr(type subtype, cnp.dtype descr, int nd, cnp.npy_intp *dims, cnp.npy_intp *strides,
                                void *data, int flags, object obj)


cdef cnp.dtype FLOAT32 = np.dtype(np.float32)


def empty_aligned(shape, dtype=np.float32):
    """A new C-contiguous array whose data starts on a 64-byte boundary. NumPy promises only 16 bytes,
    so three arrays in four start inside a cache line, and every vector load or store of their rows then
    splits two lines: a Dense layer's weights read in place ran 12% slower (128x1024x512, Emerald Rapids)."""
    cdef cnp.dtype descr = FLOAT32 if dtype is np.float32 else np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    cdef cnp.npy_intp dims[32]
    cdef int nd = len(shape), i
    if nd > 32:
        raise ValueError(f"empty_aligned takes at most 32 dimensions, got {nd}")
    cdef cnp.npy_intp nbytes = descr.itemsize
    for i in range(nd):
        dims[i] = PyNumber_Index(shape[i])
        if dims[i] < 0:
            raise ValueError(f"negative dimensions are not allowed, got shape {shape}")
        nbytes *= dims[i]
    nbytes += 63
    cdef cnp.ndarray buffer = cnp.PyArray_EMPTY(1, &nbytes, cnp.NPY_UINT8, 0)
    cdef char *data = <char *>cnp.PyArray_DATA(buffer)
    cpython.Py_INCREF(descr)
    cdef cnp.ndarray array = PyArray_NewFromDescr(cnp.ndarray, descr, nd, dims, NULL,
                                                  data + (64 - <size_t>data % 64) % 64, cnp.NPY_ARRAY_CARRAY, None)
    cnp.set_array_base(array, buffer)  # the buffer lives as long as the array
    return array


cdef inline bint disjoint(cnp.ndarray x, cnp.ndarray y):
    """Whether two contiguous arrays share no byte."""
    cdef char *xs = <char *>cnp.PyArray_DATA(x)
    cdef char *ys = <char *>cnp.PyArray_DATA(y)
    return xs + cnp.PyArray_NBYTES(x) <= ys or ys + cnp.PyArray_NBYTES(y) <= xs


def gemm_common_case(a, b, trans_a, trans_b, alpha, beta, out, bias=None, bint relu=False):
    """fastconv.ops.gemm when every argument is of the common kind: a and b plain float32 matrices (see
    plain_array), alpha and beta floats, out None or a writeable plain matrix of the result's shape
    apart from a, b and bias, bias None or a plain float32 vector of the result's width, and no
    dimension zero. Returns the result, or None for anything else, which ops.gemm then converts,
    validates and explains. Checked here in C, as the Python checks cost as much as a 64^3 product."""
    if not (plain_array(a, 2) and plain_array(b, 2) and type(alpha) is float and type(beta) is float):
        return None
    cdef cnp.ndarray a_arr = <cnp.ndarray>a, b_arr = <cnp.ndarray>b, c_arr, bias_arr = None
    cdef bint ta = trans_a, tb = trans_b
    cdef cnp.npy_intp dims[2]
    cdef int64_t m = cnp.PyArray_DIM(a_arr, 1 if ta else 0), k = cnp.PyArray_DIM(a_arr, 0 if ta else 1)
    cdef int64_t n = cnp.PyArray_DIM(b_arr, 0 if tb else 1)
    if cnp.PyArray_DIM(b_arr, 1 if tb else 0) != k or m == 0 or n == 0 or k == 0:
        return None
    if bias is not None:
        if not (plain_array(bias, 1) and cnp.PyArray_DIM(<cnp.ndarray>bias, 0) == n):
            return None
        bias_arr = <cnp.ndarray>bias
    if out is None:
        dims[0], dims[1] = m, n
        if m * n * 4 >= ALIGNED_MIN_BYTES:
            c_arr = <cnp.ndarray>empty_aligned((m, n))
        else:
            c_arr = <cnp.ndarray>cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
        beta = 0.0
    else:
        if not plain_array(out, 2):
            return None
        c_arr = <cnp.ndarray>out
        if (not cnp.PyArray_ISWRITEABLE(c_arr) or cnp.PyArray_DIM(c_arr, 0) != m or cnp.PyArray_DIM(c_arr, 1) != n
                or not disjoint(c_arr, a_arr) or not disjoint(c_arr, b_arr)
                or (bias_arr is not None and not disjoint(c_arr, bias_arr))):
            return None
    gemm(ta, tb, m, n, k, alpha, a_arr, cnp.PyArray_DIM(a_arr, 1), b_arr, cnp.PyArray_DIM(b_arr, 1), beta, c_arr, n,
         bias_arr, relu)
    return c_arr


cdef fc_conv_shape conv_shape(g):
    cdef fc_conv_shape s
    s.n, s.h, s.w, s.cin = g.n, g.h, g.w, g.cin
    s.kh, s.kw, s.cout = g.kh, g.kw, g.cout
    s.stride_h, s.stride_w, s.dilation_h, s.dilation_w = g.stride_h, g.stride_w, g.dilation_h, g.dilation_w
    s.pad_top, s.pad_bottom, s.pad_left, s.pad_right = g.pad_top, g.pad_bottom, g.pad_left, g.pad_right
    s.oh, s.ow = g.oh, g.ow
    return s


cdef fc_pool_shape pool_shape(g):
    cdef fc_pool_shape s
    s.n, s.h, s.w, s.c = g.n, g.h, g.w, g.c
    s.pool_h, s.pool_w, s.stride_h, s.stride_w = g.pool_h, g.pool_w, g.stride_h, g.stride_w
    s.pad_top, s.pad_left, s.oh, s.ow = g.pad_top, g.pad_left, g.oh, g.ow
    return s


def conv_direct_kernel_name():
    return fc_conv_direct_kernel_name().decode()


def conv2d_forward(g, int algo, const float[::1] x, const float[::1] w, const float[::1] bias, bint relu, float[::1] y):
    cdef fc_conv_shape s = conv_shape(g)
    cdef const float *bias_ptr = optional(bias)
    cdef int status
    with nogil:
        status = fc_conv2d_forward(&s, algo, &x[0], &w[0], bias_ptr, relu, &y[0])
    check(status, b"conv2d")


def conv2d_backward(g, int algo, const float[::1] dy, const float[::1] x, const float[::1] w, bint x_from_relu,
                    float[::1] dx, float[::1] dw, float[::1] db):
    cdef fc_conv_shape s = conv_shape(g)
    cdef const float *x_ptr = NULL if x is None else &x[0]  # None: only dx, of a conv not after a ReLU
    cdef float *dx_ptr = NULL if dx is None else &dx[0]
    cdef float *dw_ptr = NULL if dw is None else &dw[0]
    cdef float *db_ptr = NULL if db is None else &db[0]
    cdef int status
    with nogil:
        status = fc_conv2d_backward(&s, algo, &dy[0], x_ptr, &w[0], x_from_relu, dx_ptr, dw_ptr, db_ptr)
    check(status, b"conv2d_backward")


def conv2d_plan(g, int algo, int passes):
    """The plan of a conv call (fastconv.h's fc_conv2d_plan): (algorithm, forward path, dx path, dw path,
    threads, (call, kernel, gemm) scratch bytes), codes as in fastconv.h."""
    cdef fc_conv_shape s = conv_shape(g)
    cdef fc_conv_plan_info info
    fc_conv2d_plan(&s, algo, passes, &info)
    return (info.algorithm, info.forward, info.dx, info.dw, info.threads,
            (info.scratch_bytes[0], info.scratch_bytes[1], info.scratch_bytes[2]))


def maxpool2d_forward(g, const float[::1] x, float[::1] y, uint8_t[::1] argmax=None):
    cdef fc_pool_shape s = pool_shape(g)
    cdef uint8_t *argmax_ptr = NULL if argmax is None else &argmax[0]
    cdef int status
    with nogil:
        status = fc_maxpool2d_forward(&s, &x[0], &y[0], argmax_ptr)
    check(status, b"maxpool2d")


def maxpool2d_backward(g, const float[::1] dy, const float[::1] x, const uint8_t[::1] argmax, bint x_from_relu,
                       float[::1] dx):
    cdef fc_pool_shape s = pool_shape(g)
    cdef const float *x_ptr = NULL if x is None else &x[0]
    cdef const uint8_t *argmax_ptr = NULL if argmax is None else &argmax[0]
    cdef int status
    with nogil:
        status = fc_maxpool2d_backward(&s, &dy[0], x_ptr, argmax_ptr, x_from_relu, &dx[0])
    check(status, b"maxpool2d_backward")


def conv2d_relu_maxpool2x2_applies(g, int algo):
    """The path (a FC_CONV_PATH_* code) of the conv that fuses with its pooling, 0 where none does."""
    cdef fc_conv_shape s = conv_shape(g)
    return fc_conv2d_relu_maxpool2x2_applies(&s, algo)


def conv2d_relu_maxpool2x2_forward(g, int algo, const float[::1] x, const float[::1] w, const float[::1] bias, float[::1] y,
                                   uint8_t[::1] argmax):
    cdef fc_conv_shape s = conv_shape(g)
    cdef const float *bias_ptr = optional(bias)
    cdef int status
    with nogil:
        status = fc_conv2d_relu_maxpool2x2_forward(&s, algo, &x[0], &w[0], bias_ptr, &y[0], &argmax[0])
    check(status, b"conv2d_relu_maxpool2d")


def conv2d_relu_maxpool2x2_weight_grad(g, int algo, const float[::1] dy, const uint8_t[::1] argmax, const float[::1] x,
                                       float[::1] dw, float[::1] db):
    cdef fc_conv_shape s = conv_shape(g)
    cdef int status
    with nogil:
        status = fc_conv2d_relu_maxpool2x2_weight_grad(&s, algo, &dy[0], &argmax[0], &x[0], &dw[0], &db[0])
    check(status, b"conv2d_relu_maxpool2d_weight_grad")


def conv2d_relu_maxpool2x2_backward(g, int algo, const float[::1] dy, const uint8_t[::1] argmax, const float[::1] x,
                                    const float[::1] w, bint x_from_relu, float[::1] dx, float[::1] dw, float[::1] db):
    """False (nothing written) where the backward passes of algo do not run as Winograd (fastconv.h)."""
    cdef fc_conv_shape s = conv_shape(g)
    cdef float *dx_ptr = NULL if dx is None else &dx[0]
    cdef int status
    with nogil:
        status = fc_conv2d_relu_maxpool2x2_backward(&s, algo, &dy[0], &argmax[0], &x[0], &w[0], x_from_relu, dx_ptr,
                                                    &dw[0], &db[0])
    if status == FC_CONV_NOT_FUSED:
        return False
    check(status, b"conv2d_relu_maxpool2d_backward")
    return True


def avgpool2d_forward(g, const float[::1] x, float[::1] y):
    cdef fc_pool_shape s = pool_shape(g)
    with nogil:
        fc_avgpool2d_forward(&s, &x[0], &y[0])


def avgpool2d_backward(g, const float[::1] dy, float[::1] dx):
    cdef fc_pool_shape s = pool_shape(g)
    with nogil:
        fc_avgpool2d_backward(&s, &dy[0], &dx[0])


def relu_backward(const float[::1] dy, const float[::1] y, float[::1] dx):
    with nogil:
        fc_relu_backward(dy.shape[0], &dy[0], &y[0], &dx[0])


def pair_sum(const float[::1] a, const float[::1] b, float scale, float[::1] out):
    """out = (a + b) * scale in float32; whether every result is finite."""
    if a.shape[0] != b.shape[0] or out.shape[0] != a.shape[0]:
        raise ValueError(f"pair_sum needs equal lengths, got {a.shape[0]}, {b.shape[0]} and {out.shape[0]}")
    cdef int nonfinite = 0
    if a.shape[0]:
        with nogil:
            nonfinite = fc_pair_sum(a.shape[0], &a[0], &b[0], scale, &out[0])
    return not nonfinite


def adam_update(float[::1] w, const float[::1] g, float[::1] m, float[::1] v, float lr_t, float beta_1,
                float beta_2, float epsilon):
    with nogil:
        fc_adam_update(w.shape[0], &w[0], &g[0], &m[0], &v[0], lr_t, beta_1, beta_2, epsilon)


def adadelta_update(float[::1] w, const float[::1] g, float[::1] accumulated_grad, float[::1] accumulated_delta,
                    float lr, float rho, float epsilon):
    with nogil:
        fc_adadelta_update(w.shape[0], &w[0], &g[0], &accumulated_grad[0], &accumulated_delta[0], lr, rho, epsilon)


def rmsprop_update(float[::1] w, const float[::1] g, float[::1] velocity, float[::1] momentum_buffer, float lr,
                   float rho, float momentum, float epsilon):
    cdef float *momentum_buffer_ptr = NULL if momentum_buffer is None else &momentum_buffer[0]  # None: momentum 0
    with nogil:
        fc_rmsprop_update(w.shape[0], &w[0], &g[0], &velocity[0], momentum_buffer_ptr, lr, rho, momentum, epsilon)


def sgd_update(float[::1] w, const float[::1] g, float[::1] velocity, float lr, float momentum, bint nesterov):
    cdef float *velocity_ptr = NULL if velocity is None else &velocity[0]  # None: momentum 0
    with nogil:
        fc_sgd_update(w.shape[0], &w[0], &g[0], velocity_ptr, lr, momentum, nesterov)


def dropout_forward(const float[::1] x, float rate, uint64_t seed, int64_t first, float[::1] y, float[::1] mask,
                    uint8_t[::1] keep):
    """The mask goes to `mask` (floats) or `keep` (bytes): the one that is not None."""
    cdef float *mask_ptr = NULL if mask is None else &mask[0]
    cdef uint8_t *keep_ptr = NULL if keep is None else &keep[0]
    with nogil:
        fc_dropout_forward(x.shape[0], &x[0], rate, seed, first, &y[0], mask_ptr, keep_ptr)


def dropout_backward(const float[::1] dy, const uint8_t[::1] keep, float rate, float[::1] dx):
    with nogil:
        fc_dropout_backward(dy.shape[0], &dy[0], &keep[0], rate, &dx[0])


# ----- one optimizer update of every array of a model (fastconv.ops.*_update_all) -----

cdef struct byte_range:
    size_t start, end
    int written


cdef int by_start(const void *a, const void *b) noexcept nogil:
    cdef size_t x = (<const byte_range *>a).start, y = (<const byte_range *>b).start
    return -1 if x < y else (1 if x > y else 0)


cdef class UpdateTable:
    """The sizes and data pointers of one *_update_all call: ptr[c * count + t] is array t of column c
    (column 0 the weights, 1 the gradients, then the optimizer's slots)."""
    cdef int64_t count
    cdef int64_t *n
    cdef void **ptr

    def __dealloc__(self):
        free(self.n)
        free(self.ptr)

    cdef float **column(self, int c) noexcept nogil:
        return <float **>(self.ptr + c * self.count)


cdef bint plain_float32(object x, bint written):
    """x is a C-contiguous, aligned, native-endian float32 numpy.ndarray, writeable if `written`."""
    if not isinstance(x, cnp.ndarray):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>x
    return (cnp.PyArray_TYPE(arr) == cnp.NPY_FLOAT32 and cnp.PyArray_ISCARRAY_RO(arr) and
            cnp.PyArray_ISNOTSWAPPED(arr) and (not written or cnp.PyArray_ISWRITEABLE(arr)))


cdef bint same_shape(cnp.ndarray a, cnp.ndarray b):
    cdef int d, ndim = cnp.PyArray_NDIM(a)
    if cnp.PyArray_NDIM(b) != ndim:
        return False
    for d in range(ndim):
        if cnp.PyArray_DIM(a, d) != cnp.PyArray_DIM(b, d):
            return False
    return True


cdef UpdateTable update_table(tuple columns):
    """The table of `columns` (equal-length lists), or None unless every array is a plain float32 array
    of its weight's shape (the weights and slots writeable) and no written array shares a byte with
    another array: the caller then updates one array at a time, which converts, explains or orders."""
    cdef list first = columns[0], column
    cdef int64_t count = len(first), t, i, k = 0
    cdef int c, ncolumns = len(columns)
    cdef cnp.ndarray arr, weight
    cdef UpdateTable table = UpdateTable()
    cdef byte_range *ranges
    cdef size_t end_written = 0, end_any = 0
    cdef bint ok = True
    table.count = count
    table.n = <int64_t *>malloc(max(count, 1) * sizeof(int64_t))
    table.ptr = <void **>malloc(max(count * ncolumns, 1) * sizeof(void *))
    ranges = <byte_range *>malloc(max(count * ncolumns, 1) * sizeof(byte_range))
    if table.n == NULL or table.ptr == NULL or ranges == NULL:
        free(ranges)
        raise MemoryError("no memory for an optimizer update's table of arrays")
    try:
        for c in range(ncolumns):
            column = columns[c]
            for t in range(count):
                if not plain_float32(column[t], c != 1):
                    return None
                arr = <cnp.ndarray>column[t]
                if c == 0:
                    table.n[t] = cnp.PyArray_SIZE(arr)
                elif not same_shape(arr, <cnp.ndarray>first[t]):
                    return None
                table.ptr[c * count + t] = cnp.PyArray_DATA(arr)
                if cnp.PyArray_NBYTES(arr):
                    ranges[k].start = <size_t>cnp.PyArray_DATA(arr)
                    ranges[k].end = ranges[k].start + cnp.PyArray_NBYTES(arr)
                    ranges[k].written = c != 1
                    k += 1
        qsort(ranges, k, sizeof(byte_range), by_start)
        for i in range(k):  # in address order: overlapping an earlier range that either side writes?
            if ranges[i].start < (end_any if ranges[i].written else end_written):
                return None
            end_any = max(end_any, ranges[i].end)
            if ranges[i].written:
                end_written = max(end_written, ranges[i].end)
        return table
    finally:
        free(ranges)


def adam_update_all(list w, list g, list m, list v, float lr_t, float beta_1, float beta_2, float epsilon):
    """True after updating every array in one call; False (nothing done) when update_table says no."""
    cdef UpdateTable t = update_table((w, g, m, v))
    if t is None:
        return False
    with nogil:
        fc_adam_update_all(t.count, t.n, t.column(0), <const float **>t.column(1), t.column(2), t.column(3), lr_t,
                           beta_1, beta_2, epsilon)
    return True


def adadelta_update_all(list w, list g, list accumulated_grad, list accumulated_delta, float lr, float rho,
                        float epsilon):
    cdef UpdateTable t = update_table((w, g, accumulated_grad, accumulated_delta))
    if t is None:
        return False
    with nogil:
        fc_adadelta_update_all(t.count, t.n, t.column(0), <const float **>t.column(1), t.column(2), t.column(3), lr,
                               rho, epsilon)
    return True


def rmsprop_update_all(list w, list g, list velocity, list momentum_buffer, float lr, float rho, float momentum,
                       float epsilon):
    """momentum_buffer: None when momentum is 0."""
    cdef UpdateTable t = update_table((w, g, velocity) if momentum_buffer is None else
                                      (w, g, velocity, momentum_buffer))
    if t is None:
        return False
    with nogil:
        fc_rmsprop_update_all(t.count, t.n, t.column(0), <const float **>t.column(1), t.column(2),
                              NULL if momentum_buffer is None else t.column(3), lr, rho, momentum, epsilon)
    return True


def sgd_update_all(list w, list g, list velocity, float lr, float momentum, bint nesterov):
    """velocity: None when momentum is 0."""
    cdef UpdateTable t = update_table((w, g) if velocity is None else (w, g, velocity))
    if t is None:
        return False
    with nogil:
        fc_sgd_update_all(t.count, t.n, t.column(0), <const float **>t.column(1),
                          NULL if velocity is None else t.column(2), lr, momentum, nesterov)
    return True


def batchnorm_statistics(int64_t channels, const float[::1] x, float[::1] mean, float[::1] variance):
    cdef int status
    with nogil:
        status = fc_batchnorm_statistics(x.shape[0] // channels, channels, &x[0], &mean[0], &variance[0])
    check(status, b"batch_norm")


def batchnorm_forward(int64_t channels, const float[::1] x, const float[::1] mean, const float[::1] variance,
                      const float[::1] gamma, const float[::1] beta, float epsilon, float[::1] y):
    cdef const float *gamma_ptr = optional(gamma)  # None: scale=False
    cdef const float *beta_ptr = optional(beta)  # None: center=False
    cdef int status
    with nogil:
        status = fc_batchnorm_forward(x.shape[0] // channels, channels, &x[0], &mean[0], &variance[0], gamma_ptr,
                                      beta_ptr, epsilon, &y[0])
    check(status, b"batch_norm")


def batchnorm_backward(int64_t channels, const float[::1] dy, const float[::1] x, const float[::1] mean,
                       const float[::1] variance, const float[::1] gamma, float epsilon, bint batch_statistics,
                       float[::1] dx, float[::1] dgamma, float[::1] dbeta):
    cdef const float *gamma_ptr = optional(gamma)
    cdef float *dx_ptr = NULL if dx is None else &dx[0]  # None: the input gradient is not needed
    cdef int status
    with nogil:
        status = fc_batchnorm_backward(x.shape[0] // channels, channels, &dy[0], &x[0], &mean[0], &variance[0],
                                       gamma_ptr, epsilon, batch_statistics, dx_ptr, &dgamma[0], &dbeta[0])
    check(status, b"batch_norm_backward")


def affine_transform(shape, const float[::1] x, const double[::1] transforms, int interpolation, int fill_mode,
                     float fill_value, float[::1] y):
    """shape: (n, h, w, c, out_h, out_w); transforms: n rows of 8, flattened."""
    cdef fc_affine_shape s
    s.n, s.h, s.w, s.c, s.out_h, s.out_w = shape
    with nogil:
        fc_affine_transform(&s, &x[0], &transforms[0], interpolation, fill_mode, fill_value, &y[0])
