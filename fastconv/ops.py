"""The validated Python API of the C kernels.

Every function checks its arguments (naming the argument and what was expected), converts inputs
to C-contiguous float32 (other real dtypes, non-contiguous and negatively-strided views are accepted
and copied), and hands pointers and sizes to the C kernels with the GIL released. Empty inputs give
empty (or zero) results of the right shape without entering C.
"""
import functools
import math
import operator
import os

import numpy as np

from fastconv import _C, reference
from fastconv._args import (
    as_float_array, batch_norm_arrays, check_batch_statistics, check_disjoint, check_momentum_buffer, check_shape,
)
from fastconv.shapes import checked_product, conv_geometry, conv_transpose_geometry, pool_geometry
from fastconv._args import FILL_MODES, INTERPOLATIONS, affine_arguments

__all__ = [
    "gemm", "conv2d", "conv2d_backward", "conv2d_transpose", "maxpool2d", "maxpool2d_backward", "avgpool2d",
    "avgpool2d_backward", "global_avgpool2d", "global_avgpool2d_backward", "set_num_threads",
    "get_num_threads", "conv2d_workspace_bytes", "relu_backward", "dropout", "dropout_keep", "dropout_backward",
    "adam_update", "adadelta_update", "rmsprop_update", "sgd_update", "adam_update_all", "adadelta_update_all",
    "rmsprop_update_all", "sgd_update_all", "batch_norm", "batch_norm_statistics", "batch_norm_backward",
    "conv2d_algorithm", "CONV_ALGORITHMS",
    "conv2d_plan", "CONV_PATHS",
    "conv2d_relu_maxpool2d", "conv2d_relu_maxpool2d_backward", "conv2d_relu_maxpool2d_fuses",
    "affine_transform",
]

def _empty(shape, dtype=np.float32):
    """A new output array; from 64 KiB on, it starts on a cache line (see _C.empty_aligned), so the
    kernels writing it and the next layer reading it never split a line."""
    if (4 if dtype is np.float32 else np.dtype(dtype).itemsize) * math.prod(shape) >= _C.ALIGNED_MIN_BYTES:
        return _C.empty_aligned(shape, dtype)
    return np.empty(shape, dtype=dtype)


# conv2d algorithms: "auto" picks per shape, the others force one (see conv2d). Codes as in fastconv.h.
CONV_ALGORITHMS = {"auto": 0, "im2col": 1, "direct": 2, "implicit": 3, "winograd": 4, "winograd4x4": 5}


def _conv_algorithm(algorithm):
    """The C code of `algorithm`; None means $FASTCONV_CONV_ALGO, or "auto" when that is unset. The
    variable is looked up on each call (so setting it later takes effect) but parsed once per value."""
    if algorithm is None:
        return _environment_algorithm(_environ_entries.get(_ALGO_VARIABLE))
    if not isinstance(algorithm, str) or algorithm.lower() not in CONV_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(CONV_ALGORITHMS)}, got {algorithm!r}")
    return CONV_ALGORITHMS[algorithm.lower()]


_environ = os.environ
# CPython's os.environ keeps its entries, encoded, in a dict (updated by every change made through it):
# reading there saves the microsecond of os.environ.get, on each of a step's several conv calls.
_environ_entries = getattr(_environ, "_data", None)
if isinstance(_environ_entries, dict) and hasattr(_environ, "encodekey") and hasattr(_environ, "decodevalue"):
    _ALGO_VARIABLE, _decode_environ = _environ.encodekey("FASTCONV_CONV_ALGO"), _environ.decodevalue
else:
    _environ_entries, _ALGO_VARIABLE, _decode_environ = _environ, "FASTCONV_CONV_ALGO", str


@functools.lru_cache(maxsize=8)
def _environment_algorithm(entry):
    value = None if entry is None else _decode_environ(entry)
    if value is None:
        return CONV_ALGORITHMS["auto"]
    if value.lower() not in CONV_ALGORITHMS:
        raise ValueError(f"FASTCONV_CONV_ALGO must be one of {', '.join(CONV_ALGORITHMS)}, got {value!r}")
    return CONV_ALGORITHMS[value.lower()]


def _flat(arr):
    return None if arr is None else arr.reshape(-1)


def _check_activation(activation):
    if activation in (None, "linear"):
        return False
    if isinstance(activation, str) and activation.lower() == "relu":
        return True
    raise ValueError(f"activation must be None, 'linear' or 'relu', got {activation!r}")


def _row_stride(x):
    """The row stride, in elements, of a 2-D float32 array whose rows are contiguous and do not overlap
    (C order, or a column slice x[:, :k] of a wider array); None for any other layout."""
    if x.flags.c_contiguous:  # first: every Dense layer's call takes this
        return x.shape[1]
    cols = x.shape[1]
    row_step, col_step = x.strides
    if col_step == 4 and row_step % 4 == 0 and row_step >= 4 * cols:
        return row_step // 4
    return None


def _check_out(out, shape, inputs, padded_rows=False, same_ok=()):
    """`out` must be a C-contiguous float32 array of `shape` (or, with padded_rows, one whose rows may be
    further apart: a column slice of a wider array) that shares no memory with an input: `inputs` maps
    each name to the array the kernel reads (after conversion; see _args.check_disjoint, which every op
    with an `out` or updated in place uses)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != np.float32:
        raise TypeError(f"out must have dtype float32, got {out.dtype}")
    check_shape(out, shape, "out")
    flags = out.flags
    rows_in_place = flags.c_contiguous or (padded_rows and _row_stride(out) is not None)
    if not rows_in_place or not flags.writeable or not flags.aligned:
        kind = "C-contiguous array or one with padded rows (out[:, :n] of a wider array)" if padded_rows \
            else "C-contiguous array"
        raise ValueError(f"out must be a writeable, aligned, {kind}")
    check_disjoint(out, inputs, same_ok=same_ok)


def _real(value, name):
    """A Python float from a real scalar (int, float, numpy number); bools and strings are refused."""
    if type(value) is float:  # the common case, first: this runs on every gemm call
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _bias(b, cout):
    if b is None:
        return None
    b = as_float_array(b, "b", ndim=1)
    check_shape(b, (cout,), "b")
    return b


def gemm(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None, bias=None, activation=None):
    """Return alpha * op(a) @ op(b) + beta * out (+ bias per column, then ReLU if activation="relu").

    op(x) is x.T when trans_x is true. The result is written into `out` (float32, shape (M, N), rows
    contiguous and possibly padded, no overlap with a or b) when given, else into a new array. As in
    BLAS, `out` is not read when beta == 0, so NaNs already in it do not propagate.
    """
    if activation is None or (type(activation) is str and activation == "relu"):
        result = _C.gemm_common_case(a, b, trans_a, trans_b, alpha, beta, out, bias, activation is not None)
        if result is not None:
            return result
    a32, lda, trans_a = _gemm_operand(a, "a", bool(trans_a))
    b32, ldb, trans_b = _gemm_operand(b, "b", bool(trans_b))
    m, k = a32.shape[::-1] if trans_a else a32.shape
    k_b, n = b32.shape[::-1] if trans_b else b32.shape
    if k != k_b:
        raise ValueError(f"inner dimensions differ: op(a) is ({m}, {k}) but op(b) is ({k_b}, {n})")
    relu = _check_activation(activation)
    bias32 = _bias(bias, n) if bias is not None else None
    alpha, beta = _real(alpha, "alpha"), _real(beta, "beta")
    if out is None:
        checked_product((m, n), "out")  # a given out already has this shape
        out = _empty((m, n), dtype=np.float32)
        beta = 0.0
    else:
        _check_out(out, (m, n), {"a": a32, "b": b32, "bias": bias32}, padded_rows=True)
    ldc = _row_stride(out)
    if m == 0 or n == 0:
        return out
    if k == 0:  # nothing to multiply: only the scaling, bias and activation
        out[...] = (beta * out if beta != 0.0 else 0.0) + (0.0 if bias32 is None else bias32)
        if relu:
            np.maximum(out, 0, out=out)
        return out
    _C.gemm(trans_a, trans_b, m, n, k, alpha, a32, lda, b32, ldb, beta, out, ldc, bias32, relu)
    return out


def _gemm_operand(x, name, trans):
    """x as a row-major float32 matrix, its row stride in elements and its transpose flag. A matrix whose
    rows are padded (a column slice of a wider array, x[:, :k]) is read in place with that stride, and
    a column-major one (Fortran order, or a row slice of one) is passed as its row-major transpose with
    the flag flipped; anything else (other dtypes, negative or element strides, misaligned data) is copied."""
    if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 2 and x.flags.aligned:
        ld = _row_stride(x)
        if ld is not None:
            return x, ld, trans
        ld = _row_stride(x.T)  # column-major: its transpose is row-major
        if ld is not None:
            return x.T, ld, not trans
    x = as_float_array(x, name, ndim=2)
    return x, x.shape[1], trans


def conv2d(x, w, b=None, *, strides=1, padding="valid", dilation_rate=1, activation=None, out=None,
           algorithm=None):
    """2-D cross-correlation of NHWC x (N, H, W, Cin) with w (kh, kw, Cin, Cout), as Keras computes it.

    padding: "valid", "same" (TensorFlow/Keras: output = ceil(input / stride), any odd extra pad at
    the bottom/right), an int, or ((top, bottom), (left, right)). b (Cout,) and activation="relu" are
    fused into the output write. Returns (N, OH, OW, Cout) float32, written into `out` if given.

    algorithm: "auto" (default) picks per shape: the direct kernels (few input channels), Winograd
    F(4x4, 3x3) or F(2x2, 3x3) (3x3 stride-1 convs with 8 or more input and output channels, on AVX2:
    the tile size with fewer multiplies, where it saves a third of them or more), implicit GEMM
    (the micro-kernel reads the patches in place from padded input rows), im2col + GEMM, or one GEMM
    for a 1x1 conv; the other keys of CONV_ALGORITHMS force one where it applies ("winograd" is
    F(2x2, 3x3), "winograd4x4" F(4x4, 3x3): 3x3, stride 1, dilation 1). The rules are written
    once, at the top of csrc/conv/conv.c; `conv2d_algorithm` and `conv2d_plan` tell what a shape gets.
    None reads $FASTCONV_CONV_ALGO (same values).

    Accuracy, float32 against a float64 reference on unit-normal x and w, Cin 8 to 512, as the largest
    |error| over the standard deviation of the exact sum (sqrt(9 * Cin) for a 3x3 kernel): the GEMM
    paths and F(2x2, 3x3) reach about 2e-6, F(4x4, 3x3) about 5e-5 (its transforms' larger
    coefficients: about 1e-5 of max |y|); tests/test_winograd.py holds them to 5e-6 and 1e-4, forward
    and input gradient alike. The weight gradient's Winograd forms (conv2d_backward), over the standard
    deviation of its sum (sqrt(N * OH * OW)), Cin 8 to 512 and up to 73728 output pixels: the GEMM
    paths about 1.5e-6, F(3x3, 2x2) about 2e-6, F(3x3, 4x4) about 2e-5 (growing slowly with the
    pixels summed); held to the same 5e-6 and 1e-4. Every path gives the same bits for any thread count.

    Extra memory (scratch of the calling thread, cached for its next call up to a limit: see
    fastconv.release_workspace): direct, the packed weights (Cout rounded up to the vector block x
    (kh*kw*Cin + 1) floats) and per thread kh input rows (only the columns the taps read, when a stride
    or dilation larger than the kernel would leave most of a row unread); implicit, the packed weights
    and about 256 KiB of padded input rows per thread; im2col, the packed weights and one block of about
    256 KiB of patches per thread; Winograd, the transformed kernel, packed (16 or 36 * Cin * Cout
    floats), and per thread the transforms of a block of tiles (about 128 KiB, more with many
    channels). `conv2d_workspace_bytes` gives what a call takes. Bound, forward or
    backward: 4 * (18 * (|w| + Cout) + T * (4 * kh * kw * |padded x| + 4 * |y| + 2**20)) bytes for T
    threads (|.| in elements), whatever the strides and dilations; tests/test_workspace_memory.py.
    If it cannot be allocated, MemoryError (nothing computed).
    """
    x32 = as_float_array(x, "x", ndim=4)
    w32 = as_float_array(w, "w", ndim=4)
    g = conv_geometry(x32.shape, w32.shape, strides, padding, dilation_rate)
    relu = _check_activation(activation)
    algo = _conv_algorithm(algorithm)
    b32 = _bias(b, g.cout)
    if out is None:
        out = _empty(g.out_shape, dtype=np.float32)
    else:
        _check_out(out, g.out_shape, {"x": x32, "w": w32, "b": b32})
    if out.size == 0:
        return out
    if g.cin == 0:
        out[...] = reference.conv2d(x32, w32, b32, strides=strides, padding=padding,
                                    dilation_rate=dilation_rate, activation="relu" if relu else None)
        return out
    _C.conv2d_forward(g, algo, _flat(x32), _flat(w32), _flat(b32), relu, _flat(out))
    return out


def conv2d_backward(dy, x, w, *, strides=1, padding="valid", dilation_rate=1, need_dx=True, x_from_relu=False,
                    algorithm=None):
    """Gradients (dx, dw, db) of conv2d without activation, given dy = dLoss/dOutput.

    need_dx=False skips the input gradient and returns None for dx (a model's first layer does not
    need it). x_from_relu=True says x is the output of a ReLU and returns, as dx, the gradient at that
    ReLU's input (zero where x <= 0): relu_backward(dx, x) fused into the same pass.
    algorithm as in conv2d; which paths compute dx and dw (the direct kernels, implicit GEMM, Winograd,
    GEMMs over padded images, im2col + GEMM and col2im) is `conv2d_plan(..., backward=True)`'s answer.
    dw of a 3x3 stride-1 conv is Winograd's F(3x3, 4x4) or F(3x3, 2x2) under "auto" on AVX2 wherever
    the forward is Winograd, with the same tile (where measured faster); "winograd" and "winograd4x4" force
    F(3x3, 2x2) and F(3x3, 4x4) for dw as they do F(2x2, 3x3) and F(4x4, 3x3) for dx (accuracy: conv2d).
    Deterministic: dw and db are reduced over the batch in a fixed order for any thread count.
    Extra memory: a fixed number (at most 16) of partial dw/db sums, plus per thread, for dw, one
    padded image and its dy or one block of patches, and for dx one block of patches (blocks of about
    1024 output pixels) or a band of padded dy rows; a Winograd dw, 4 partial sums of 16 or 36 * Cin *
    Cout floats and per thread the transforms of a block of at most 128 tiles; see `conv2d_workspace_bytes`.
    """
    x32 = as_float_array(x, "x", ndim=4)
    w32 = as_float_array(w, "w", ndim=4)
    g = conv_geometry(x32.shape, w32.shape, strides, padding, dilation_rate)
    algo = _conv_algorithm(algorithm)
    dy32 = as_float_array(dy, "dy", ndim=4)
    check_shape(dy32, g.out_shape, "dy")
    dx = _empty(x32.shape, dtype=np.float32) if need_dx else None
    dw = _empty(w32.shape, dtype=np.float32)
    db = _empty((g.cout,), dtype=np.float32)
    if dy32.size == 0 or x32.size == 0:
        if dx is not None:
            dx[...] = 0.0
        dw[...] = 0.0
        db[...] = dy32.sum(axis=(0, 1, 2)) if dy32.size else 0.0
        return dx, dw, db
    _C.conv2d_backward(g, algo, _flat(dy32), _flat(x32), _flat(w32), bool(x_from_relu), _flat(dx), _flat(dw), _flat(db))
    return dx, dw, db


def conv2d_transpose(x, w, b=None, *, strides=1, padding="valid", output_padding=None, dilation_rate=1,
                     activation=None, out=None, algorithm=None):
    """Transposed 2-D convolution, as Keras' Conv2DTranspose and TensorFlow's conv2d_transpose compute it.

    x is (N, H, W, Cin) and w (kh, kw, Cout, Cin), the layout of a Keras Conv2DTranspose kernel; b is
    (Cout,) or None. The result is the input gradient of conv2d(., w) for an input of the output's
    size, with x as that conv's output gradient: each input pixel spreads w times its value over a
    kh x kw window, windows `strides` apart. Output (N, OH, OW, Cout) with Keras' sizes: OH = H * stride,
    plus max(kh - stride, 0) for "valid"; with output_padding, OH = (H - 1) * stride + kh - 2 * pad +
    output_padding, pad = kh // 2 for "same" and 0 for "valid" (kh the dilated extent). padding is
    "valid" or "same", cut as TensorFlow does (the odd extra row at the bottom). activation="relu" is
    applied after the bias.

    Its gradients are convolutions too: dx = conv2d(dy, w, strides=..., padding=...), and dw is the
    dw of conv2d_backward(x, dy, w, need_dx=False, ...) (x and dy swap roles); db = dy.sum((0, 1, 2)).
    algorithm as in conv2d_backward. Extra memory: that of conv2d_backward's input gradient.
    """
    x32 = as_float_array(x, "x", ndim=4)
    w32 = as_float_array(w, "w", ndim=4)
    g, out_shape = conv_transpose_geometry(x32.shape, w32.shape, strides, padding, output_padding, dilation_rate)
    relu = _check_activation(activation)
    algo = _conv_algorithm(algorithm)
    b32 = _bias(b, g.cin)
    if out is None:
        out = _empty(out_shape, dtype=np.float32)
    else:
        _check_out(out, out_shape, {"x": x32, "w": w32, "b": b32})
    if out.size == 0:
        return out
    if x32.size == 0:
        out[...] = 0.0
    else:
        _C.conv2d_backward(g, algo, _flat(x32), None, _flat(w32), False, _flat(out), None, None)
    if b32 is not None:
        out += b32
    if relu:
        np.maximum(out, 0.0, out=out)
    return out


# The paths a conv plan reports for each pass (fastconv.h's FC_CONV_PATH_* codes, in order).
CONV_PATHS = ("none", "im2col", "direct", "implicit", "winograd", "gemm", "few_outputs", "im2col_transposed")
_CONV_PASSES = {"forward": 1, "dx": 2, "dw": 4, "db": 8}


def conv2d_plan(x_shape, w_shape, *, strides=1, padding="valid", dilation_rate=1, backward=False, need_dx=True,
                algorithm=None):
    """What one conv2d call (or, with backward=True, conv2d_backward) does for these shapes, as the C code
    plans it before it runs (the policy is written once, in csrc/conv/conv.c), at the current instruction
    set and thread count. A dict:
    "algorithm": what the request resolves to (as conv2d_algorithm, "gemm" for a 1x1 conv run as one GEMM);
    "forward", or "dx" and "dw": the path of each pass, one of CONV_PATHS ("none" when not computed; db
    goes with dw; "few_outputs" and "im2col_transposed" are dw's ways for few output channels);
    "threads": of the call's largest parallel loop;
    "scratch_bytes": per scratch slot ("call", "kernel", "gemm"); their sum is conv2d_workspace_bytes."""
    g = conv_geometry(x_shape, w_shape, strides, padding, dilation_rate)
    if backward:
        passes = (_CONV_PASSES["dx"] if need_dx else 0) | _CONV_PASSES["dw"] | _CONV_PASSES["db"]
    else:
        passes = _CONV_PASSES["forward"]
    code, forward, dx, dw, threads, scratch = _C.conv2d_plan(g, _conv_algorithm(algorithm), passes)
    names = {code: name for name, code in CONV_ALGORITHMS.items()}
    plan = {"algorithm": "gemm" if forward == CONV_PATHS.index("gemm") else names[code]}
    plan.update({"dx": CONV_PATHS[dx], "dw": CONV_PATHS[dw]} if backward else {"forward": CONV_PATHS[forward]})
    plan.update(threads=threads, scratch_bytes=dict(zip(("call", "kernel", "gemm"), scratch)))
    return plan


def conv2d_algorithm(x_shape, w_shape, *, strides=1, padding="valid", dilation_rate=1, algorithm=None):
    """The algorithm conv2d uses for these shapes: "direct", "implicit", "im2col", "gemm" (1x1 as one
    GEMM) or a Winograd variant; conv2d_plan says what the backward pass does too."""
    return conv2d_plan(x_shape, w_shape, strides=strides, padding=padding, dilation_rate=dilation_rate,
                       algorithm=algorithm)["algorithm"]


def conv2d_workspace_bytes(x_shape, w_shape, *, strides=1, padding="valid", dilation_rate=1, backward=False,
                           algorithm=None):
    """Scratch memory, in bytes, that one conv2d (or conv2d_backward) call takes: the call's own buffers
    plus one slice per thread at the current thread count (a call allocates this, or less where its
    GEMMs read an operand in place), read from the call's plan (conv2d_plan). Cached for the calling
    thread's next call up to a limit: see fastconv.release_workspace and fastconv.set_workspace_limit."""
    plan = conv2d_plan(x_shape, w_shape, strides=strides, padding=padding, dilation_rate=dilation_rate,
                       backward=backward, algorithm=algorithm)
    return sum(plan["scratch_bytes"].values())


def _pool_forward(kernel, x, pool_size, strides, padding, out, return_argmax=False):
    x32 = as_float_array(x, "x", ndim=4)
    g = pool_geometry(x32.shape, pool_size, strides, padding)
    argmax = None
    if return_argmax:
        _check_argmax_window(g)
        argmax = _empty(g.out_shape, dtype=np.uint8)
    if out is None:
        out = _empty(g.out_shape, dtype=np.float32)
    else:
        _check_out(out, g.out_shape, {"x": x32})
    if out.size:
        kernel(g, _flat(x32), _flat(out), *([] if argmax is None else [_flat(argmax)]))
    return (out, argmax) if return_argmax else out


def _pool_backward_args(dy, x, pool_size, strides, padding):
    x32 = as_float_array(x, "x", ndim=4)
    g = pool_geometry(x32.shape, pool_size, strides, padding)
    dy32 = as_float_array(dy, "dy", ndim=4)
    check_shape(dy32, g.out_shape, "dy")
    return g, dy32, x32, _empty(x32.shape, dtype=np.float32)  # the kernels write every element


# Argmax bytes (maxpool2d(return_argmax=True)): the row-major tap of each window's first maximum, or
# ARGMAX_NONE, plus ARGMAX_NOT_POSITIVE when that maximum is not > 0. As in fastconv.h.
ARGMAX_NONE, ARGMAX_NOT_POSITIVE = 0x7F, 0x80


def _checked_argmax(argmax, shape, source):
    """argmax as a contiguous uint8 array of `shape`, or a TypeError/ValueError naming it and its source."""
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.uint8:
        raise TypeError(f"argmax must be the uint8 array from {source}, got "
                        f"{getattr(argmax, 'dtype', type(argmax).__name__)}")
    check_shape(argmax, shape, "argmax")
    return np.ascontiguousarray(argmax)


def _check_argmax_window(g):
    if g.pool_h * g.pool_w >= ARGMAX_NONE:
        raise ValueError(f"argmax needs a pool window of fewer than {ARGMAX_NONE} values, got "
                         f"{g.pool_h}x{g.pool_w}")


def maxpool2d(x, pool_size=2, strides=None, padding="valid", *, out=None, return_argmax=False):
    """Max pooling of NHWC x; strides default to pool_size (Keras); "same" pads with -inf.

    return_argmax=True also returns, as a uint8 array of the output's shape, where each maximum came
    from (the row-major tap of its window; see ARGMAX_NONE, ARGMAX_NOT_POSITIVE): maxpool2d_backward
    then routes the gradient without reading x again.
    """
    return _pool_forward(_C.maxpool2d_forward, x, pool_size, strides, padding, out, return_argmax)


def maxpool2d_backward(dy, x, pool_size=2, strides=None, padding="valid", *, x_from_relu=False, argmax=None):
    """Gradient of maxpool2d: each window's gradient goes to its first maximum in row-major order.

    x_from_relu=True says x is the output of a ReLU and returns the gradient at that ReLU's input
    (zero where x <= 0): relu_backward(dx, x) fused into the same pass. argmax, from
    maxpool2d(..., return_argmax=True) on this x, says where the maxima are: x is then only used for
    its shape, and the pass reads a byte per output instead of x.
    """
    g, dy32, x32, dx = _pool_backward_args(dy, x, pool_size, strides, padding)
    if argmax is not None:
        argmax = _checked_argmax(argmax, g.out_shape, "maxpool2d(..., return_argmax=True)")
        _check_argmax_window(g)
    if not dy32.size:
        dx[...] = 0.0
    else:
        _C.maxpool2d_backward(g, _flat(dy32), None if argmax is not None else _flat(x32),
                              None if argmax is None else _flat(argmax), bool(x_from_relu), _flat(dx))
    return dx


def avgpool2d(x, pool_size=2, strides=None, padding="valid", *, out=None):
    """Average pooling of NHWC x; with "same" the padding is left out of each mean (Keras)."""
    return _pool_forward(_C.avgpool2d_forward, x, pool_size, strides, padding, out)


def avgpool2d_backward(dy, x, pool_size=2, strides=None, padding="valid"):
    """Gradient of avgpool2d with respect to x."""
    g, dy32, _, dx = _pool_backward_args(dy, x, pool_size, strides, padding)
    if not dy32.size:
        dx[...] = 0.0
    else:
        _C.avgpool2d_backward(g, _flat(dy32), _flat(dx))
    return dx


def global_avgpool2d(x):
    """Mean over the spatial axes: (N, H, W, C) -> (N, C)."""
    x32 = as_float_array(x, "x", ndim=4)
    checked_product(x32.shape, "x")
    return x32.mean(axis=(1, 2), dtype=np.float32)


def global_avgpool2d_backward(dy, x):
    """Gradient of global_avgpool2d with respect to x."""
    return reference.global_avgpool2d_backward(as_float_array(dy, "dy"), as_float_array(x, "x", ndim=4))


def set_num_threads(n):
    """Use n threads in every large kernel call, from every Python thread (default: OMP_NUM_THREADS, else
    all cores). One setting for the whole process, as OMP_NUM_THREADS: a call from any thread changes it
    for all threads, those started later included. Within one thread, `threadpoolctl.threadpool_limits`
    can lower it for the calls that thread makes."""
    if isinstance(n, (bool, np.bool_)):
        raise TypeError(f"n must be a positive int, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be a positive int, got {n!r}") from None
    if n < 1 or n > 2**31 - 1:
        raise ValueError(f"n must be a positive int (number of threads) below 2**31, got {n}")
    _C.set_num_threads(n)


def get_num_threads():
    """The number of threads a large kernel call from this Python thread uses: set_num_threads's setting,
    or the lower limit threadpoolctl put on this thread."""
    return _C.get_num_threads()


def relu_backward(dy, y, *, out=None):
    """Gradient of y = relu(x) given dy: dy where y > 0, else 0 (into `out`, which may be dy itself)."""
    dy32 = as_float_array(dy, "dy")
    y32 = as_float_array(y, "y")
    check_shape(y32, dy32.shape, "y")
    if out is None:
        out = _empty(dy32.shape, dtype=np.float32)
    else:  # elementwise: out may be dy or y itself, but no other overlap
        _check_out(out, dy32.shape, {"dy": dy32, "y": y32}, same_ok=("dy", "y"))
    if out.size:
        _C.relu_backward(_flat(dy32), _flat(y32), _flat(out))
    return out


def _check_dropout(rate, seed):
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) or not 0 <= rate < 1:
        raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return float(rate), int(seed)


def _check_first(first):
    if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or first < 0:
        raise ValueError(f"first must be an int >= 0, got {first!r}")
    return int(first)


def dropout(x, rate, seed, first=0):
    """Inverted dropout: returns (x * mask, mask), mask = 1/(1-rate) where kept, else 0.

    Element i is kept when a counter-based hash of (seed, first + i) is >= rate, so the mask depends
    only on the seed and the size: the same for any thread count and in fastconv.reference. `first`
    is x's offset in elements within a larger array the mask is drawn for: a rank holding samples
    k, k+1, ... of a batch passes k times a sample's size and gets those samples' part of its mask.
    """
    return _dropout(x, rate, seed, first, np.float32)


def dropout_keep(x, rate, seed, first=0):
    """dropout with the mask as bytes: returns (x * mask, keep), keep a uint8 array of x's shape, 1
    where the element is kept. It is what dropout_backward takes (a quarter of the float mask's memory)."""
    return _dropout(x, rate, seed, first, np.uint8)


def _dropout(x, rate, seed, first, mask_dtype):
    rate, seed = _check_dropout(rate, seed)
    first = _check_first(first)
    x32 = as_float_array(x, "x")
    y = _empty(x32.shape, dtype=np.float32)
    mask = _empty(x32.shape, dtype=mask_dtype)
    if x32.size:
        floats = mask_dtype == np.float32
        _C.dropout_forward(_flat(x32), rate, seed, first, _flat(y), _flat(mask) if floats else None,
                           None if floats else _flat(mask))
    return y, mask


def dropout_backward(dy, keep, rate):
    """The gradient of dropout_keep(x, rate, ...) from its `keep` bytes: dy * mask, mask = 1/(1-rate)
    where keep is 1, else 0 (the same products as with dropout's float mask)."""
    rate, _ = _check_dropout(rate, 0)
    dy32 = as_float_array(dy, "dy")
    if not isinstance(keep, np.ndarray) or keep.dtype != np.uint8:
        what = getattr(keep, "dtype", type(keep).__name__)
        raise TypeError(f"keep must be the uint8 array of dropout_keep, got {what}")
    check_shape(keep, dy32.shape, "keep")
    keep = np.ascontiguousarray(keep)
    dx = _empty(dy32.shape, dtype=np.float32)
    if dy32.size:
        _C.dropout_backward(_flat(dy32), _flat(keep), rate, _flat(dx))
    return dx


def _check_in_place(arrays, shape, g=None):
    """Optimizer state is updated in place: every array must be float32, C-contiguous and of one shape,
    and share no memory with another of them or with the gradient g (as read by the kernel)."""
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
            raise TypeError(f"{name} must be a float32 numpy array (updated in place), got "
                            f"{getattr(arr, 'dtype', type(arr).__name__)}")
        check_shape(arr, shape, name)
        if not arr.flags.c_contiguous or not arr.flags.writeable or not arr.flags.aligned:
            raise ValueError(f"{name} must be a writeable, aligned, C-contiguous array (it is updated in place)")
    names = list(arrays)
    for i, name in enumerate(names):
        check_disjoint(arrays[name], {"g": g, **{other: arrays[other] for other in names[i + 1:]}}, written_name=name)


def adam_update(w, g, m, v, lr_t, beta_1, beta_2, epsilon):
    """One Adam step in place: m, v moving moments; w -= lr_t * m / (sqrt(v) + epsilon).

    lr_t is the learning rate with the bias corrections of this step already applied (as Keras does).
    """
    g32 = as_float_array(g, "g")
    _check_in_place({"w": w, "m": m, "v": v}, g32.shape, g32)
    if w.size:
        _C.adam_update(_flat(w), _flat(g32), _flat(m), _flat(v), lr_t, beta_1, beta_2, epsilon)


def adadelta_update(w, g, accumulated_grad, accumulated_delta, lr, rho, epsilon):
    """One Adadelta step in place (Keras 3 rule)."""
    g32 = as_float_array(g, "g")
    _check_in_place({"w": w, "accumulated_grad": accumulated_grad, "accumulated_delta": accumulated_delta},
                    g32.shape, g32)
    if w.size:
        _C.adadelta_update(_flat(w), _flat(g32), _flat(accumulated_grad), _flat(accumulated_delta), lr, rho, epsilon)


def rmsprop_update(w, g, velocity, lr, rho, epsilon, momentum=0.0, momentum_buffer=None):
    """One RMSprop step in place (Keras 3 rule): velocity = rho * velocity + (1 - rho) * g * g, then
    w -= increment = lr * g / sqrt(velocity + epsilon); with momentum, the increment goes through
    momentum_buffer = momentum * momentum_buffer + increment and w -= momentum_buffer.

    momentum_buffer is required when momentum != 0 and must be None when it is 0 (ValueError otherwise).
    """
    check_momentum_buffer(momentum, momentum_buffer, "momentum_buffer")
    g32 = as_float_array(g, "g")
    in_place = {"w": w, "velocity": velocity}
    if momentum_buffer is not None:
        in_place["momentum_buffer"] = momentum_buffer
    _check_in_place(in_place, g32.shape, g32)
    if w.size:
        _C.rmsprop_update(_flat(w), _flat(g32), _flat(velocity), _flat(momentum_buffer), lr, rho, momentum, epsilon)


def sgd_update(w, g, lr, momentum=0.0, velocity=None, nesterov=False):
    """One SGD step in place (Keras rule): w -= lr * g; with momentum, velocity = momentum * velocity -
    lr * g, then w += velocity (nesterov: w += momentum * velocity - lr * g).

    velocity is required when momentum != 0 and must be None when it is 0 (ValueError otherwise);
    nesterov matters only with momentum.
    """
    check_momentum_buffer(momentum, velocity, "velocity")
    g32 = as_float_array(g, "g")
    in_place = {"w": w}
    if velocity is not None:
        in_place["velocity"] = velocity
    _check_in_place(in_place, g32.shape, g32)
    if w.size:
        _C.sgd_update(_flat(w), _flat(g32), _flat(velocity), lr, momentum, bool(nesterov))


def _update_columns(weights, grads, *slots):
    """The lists of an *_update_all call as lists of one length (one entry per weight)."""
    columns = tuple(list(column) for column in (weights, grads) + slots)
    if len({len(column) for column in columns}) > 1:
        raise ValueError(f"an update of several weights needs one gradient and one of each optimizer state "
                         f"array per weight, got lists of lengths {[len(column) for column in columns]}")
    return columns


def adam_update_all(ws, gs, ms, vs, lr_t, beta_1, beta_2, epsilon):
    """adam_update of every (w, g, m, v) of the four lists (a model's weights, their gradients and
    moments). One C call shares all the elements out to the threads when every array is float32 and
    C-contiguous and no two overlap; otherwise each quadruple goes through adam_update in turn (which
    converts, or says what is wrong). The results are the same either way."""
    columns = _update_columns(ws, gs, ms, vs)
    if not _C.adam_update_all(*columns, lr_t, beta_1, beta_2, epsilon):
        for w, g, m, v in zip(*columns):
            adam_update(w, g, m, v, lr_t, beta_1, beta_2, epsilon)


def adadelta_update_all(ws, gs, accumulated_grads, accumulated_deltas, lr, rho, epsilon):
    """adadelta_update of every weight of the lists, as adam_update_all does."""
    columns = _update_columns(ws, gs, accumulated_grads, accumulated_deltas)
    if not _C.adadelta_update_all(*columns, lr, rho, epsilon):
        for w, g, accumulated_grad, accumulated_delta in zip(*columns):
            adadelta_update(w, g, accumulated_grad, accumulated_delta, lr, rho, epsilon)


def rmsprop_update_all(ws, gs, velocities, lr, rho, epsilon, momentum=0.0, momentum_buffers=None):
    """rmsprop_update of every weight of the lists, as adam_update_all does (momentum_buffers: a list,
    or None when momentum is 0)."""
    if momentum_buffers is None:
        columns = _update_columns(ws, gs, velocities)
        momentum_buffers = [None] * len(columns[0])
        done = not momentum and _C.rmsprop_update_all(*columns, None, lr, rho, momentum, epsilon)
    else:
        columns = _update_columns(ws, gs, velocities, momentum_buffers)
        momentum_buffers = columns[3]
        done = momentum and _C.rmsprop_update_all(*columns, lr, rho, momentum, epsilon)
    if not done:
        for w, g, velocity, momentum_buffer in zip(*columns[:3], momentum_buffers):
            rmsprop_update(w, g, velocity, lr, rho, epsilon, momentum, momentum_buffer)


def sgd_update_all(ws, gs, lr, momentum=0.0, velocities=None, nesterov=False):
    """sgd_update of every weight of the lists, as adam_update_all does (velocities: a list, or None
    when momentum is 0)."""
    if velocities is None:
        columns = _update_columns(ws, gs)
        velocities = [None] * len(columns[0])
        done = not momentum and _C.sgd_update_all(*columns, None, lr, momentum, bool(nesterov))
    else:
        columns = _update_columns(ws, gs, velocities)
        velocities = columns[2]
        done = momentum and _C.sgd_update_all(*columns, lr, momentum, bool(nesterov))
    if not done:
        for w, g, velocity in zip(*columns[:2], velocities):
            sgd_update(w, g, lr, momentum, velocity, nesterov)


def batch_norm(x, gamma=None, beta=None, *, epsilon=1e-3, mean=None, variance=None):
    """Batch normalisation over every axis but the last (channels last): returns (y, mean, variance),
    y = (x - mean) / sqrt(variance + epsilon) * gamma + beta, gamma and beta (C,) or None (1 and 0).

    Without mean and variance (training), they are the batch's own per-channel mean and biased
    variance, summed in double over fixed chunks of rows (the same for any thread count), shifted by
    the first row so that a large mean does not cancel the variance; with them (inference, the moving
    statistics), those are used. Returns float32 arrays; the float32 mean and variance given back are
    what batch_norm_backward takes.
    """
    check_batch_statistics(mean, variance)
    x32, c = batch_norm_arrays(x, dict(gamma=gamma, beta=beta, mean=mean, variance=variance), epsilon, np.float32)
    channels = x32.shape[-1]
    y = _empty(x32.shape, dtype=np.float32)
    if c["mean"] is None:
        mean, variance = np.empty(channels, dtype=np.float32), np.empty(channels, dtype=np.float32)
        if x32.size:
            _C.batchnorm_statistics(channels, _flat(x32), mean, variance)
        else:
            mean[...] = variance[...] = np.nan  # the statistics of no rows
    else:
        mean, variance = c["mean"], c["variance"]
    if x32.size:
        _C.batchnorm_forward(channels, _flat(x32), mean, variance, c["gamma"], c["beta"], float(epsilon), _flat(y))
    return y, mean, variance


def batch_norm_statistics(x):
    """The per-channel (last axis) mean and biased variance of x, as batch_norm computes them in
    training, without normalising: float32 arrays."""
    x32 = as_float_array(x, "x")
    if x32.ndim < 1:
        raise ValueError(f"x must have a channel axis, got shape {x32.shape}")
    channels = x32.shape[-1]
    mean, variance = np.empty(channels, dtype=np.float32), np.empty(channels, dtype=np.float32)
    if x32.size:
        _C.batchnorm_statistics(channels, _flat(x32), mean, variance)
    else:
        mean[...] = variance[...] = np.nan  # the statistics of no rows
    return mean, variance


def batch_norm_backward(dy, x, mean, variance, gamma=None, *, epsilon=1e-3, batch_statistics=True, need_dx=True):
    """Gradients (dx, dgamma, dbeta) of batch_norm given dy: dbeta = sum(dy), dgamma = sum(dy * xhat),
    xhat = (x - mean) / sqrt(variance + epsilon), recomputed from x (nothing of the forward pass kept).

    batch_statistics: mean and variance were x's own (training), so dx flows through them too; else
    dx = dy * gamma / sqrt(variance + epsilon). need_dx=False skips dx and returns None for it.
    Sums as in batch_norm: the same for any thread count.
    """
    x32, c = batch_norm_arrays(x, dict(mean=mean, variance=variance, gamma=gamma), epsilon, np.float32)
    for name in ("mean", "variance"):
        if c[name] is None:
            raise TypeError(f"{name} must be the array batch_norm returned, got None")
    dy32 = as_float_array(dy, "dy")
    check_shape(dy32, x32.shape, "dy")
    channels = x32.shape[-1]
    dx = _empty(x32.shape, dtype=np.float32) if need_dx else None
    dgamma, dbeta = np.zeros(channels, dtype=np.float32), np.zeros(channels, dtype=np.float32)
    if x32.size:
        _C.batchnorm_backward(channels, _flat(dy32), _flat(x32), c["mean"], c["variance"], c["gamma"], float(epsilon),
                              bool(batch_statistics), _flat(dx), dgamma, dbeta)
    elif dx is not None:
        dx[...] = 0.0
    return dx, dgamma, dbeta


def affine_transform(images, transform, interpolation="bilinear", fill_mode="constant", fill_value=0.0,
                     data_format=None, *, output_size=None):
    """Resamples NHWC images through one transform each, as Keras' ops.image.affine_transform.

    transform: (8,) or (batch, 8), a0 a1 a2 b0 b1 b2 c0 c1: output pixel (x, y) reads the input at
    ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1 (c0 = c1 = 0: affine).
    One transform applies to the whole batch. interpolation "bilinear" or "nearest" (rounding half to
    even); fill_mode for the neighbours outside the image: "constant" (fill_value), "nearest",
    "reflect" (d c b a | a b c d), "wrap" or "mirror" (d c b | a b c d), each neighbour mapped on its
    own as in jax.scipy.ndimage.map_coordinates. output_size=(height, width) samples a grid of
    another size (default: the input's). A 3-D image gives a 3-D result. Returns float32.
    """
    x, t, unbatched, (out_h, out_w) = affine_arguments(images, transform, interpolation, fill_mode, fill_value,
                                                       data_format, output_size, np.float32)
    n, h, w, c = x.shape
    y = _empty((n, out_h, out_w, c), dtype=np.float32)
    if y.size:
        _C.affine_transform((n, h, w, c, out_h, out_w), _flat(x), t.reshape(-1), INTERPOLATIONS[interpolation],
                            FILL_MODES[fill_mode], float(fill_value), _flat(y))
    return y[0] if unbatched else y


@functools.lru_cache(maxsize=256)
def _conv_pool_path(g, algo):
    return CONV_PATHS[_C.conv2d_relu_maxpool2x2_applies(g, algo)]


def _fused_conv_pool_path(x_shape, w_shape, strides, padding, dilation_rate, algorithm):
    """(geometry, algorithm code, the fused forward's path or "none")."""
    g = conv_geometry(tuple(x_shape), tuple(w_shape), strides, padding, dilation_rate)
    algo = _conv_algorithm(algorithm)
    return g, algo, "none" if g.n * g.cin == 0 else _conv_pool_path(g, algo)


def conv2d_relu_maxpool2d_fuses(x_shape, w_shape, *, strides=1, padding="valid", dilation_rate=1, algorithm=None):
    """Whether conv2d_relu_maxpool2d's forward runs as one pass for these shapes (else as the two ops in
    turn): where the conv's algorithm (conv2d's, "auto" by default) runs on the direct kernels (few
    input channels, as a network's first layer has) or as Winograd, and its output is at least 2x2."""
    return _fused_conv_pool_path(x_shape, w_shape, strides, padding, dilation_rate, algorithm)[2] != "none"


def conv2d_relu_maxpool2d(x, w, b=None, *, strides=1, padding="valid", dilation_rate=1, algorithm=None):
    """maxpool2d(conv2d(x, w, b, activation="relu", ...), 2, return_argmax=True): the ReLU conv and the
    2x2, stride-2 max pooling after it. Returns (y, argmax) as maxpool2d does.

    Where conv2d_relu_maxpool2d_fuses says so, one pass: the conv output goes through a buffer of each
    thread's own (an image of it on the direct kernels, a tile of it in Winograd's output transform) and
    never to memory: it is four times what the pooling keeps. Otherwise the two ops in turn. The same
    bits either way. algorithm as in conv2d. Extra memory: conv2d's, plus per thread one image's conv
    output (direct) or one output tile's (Winograd, 16 * Cout floats)."""
    x32 = as_float_array(x, "x", ndim=4)
    w32 = as_float_array(w, "w", ndim=4)
    g, algo, path = _fused_conv_pool_path(x32.shape, w32.shape, strides, padding, dilation_rate, algorithm)
    if path == "none":
        pre = conv2d(x32, w32, b, strides=strides, padding=padding, dilation_rate=dilation_rate, activation="relu",
                     algorithm=algorithm)
        return maxpool2d(pre, 2, return_argmax=True)
    b32 = _bias(b, g.cout)
    pooled = (g.n, g.oh // 2, g.ow // 2, g.cout)
    y, argmax = _empty(pooled, dtype=np.float32), _empty(pooled, dtype=np.uint8)
    _C.conv2d_relu_maxpool2x2_forward(g, algo, _flat(x32), _flat(w32), _flat(b32), _flat(y), _flat(argmax))
    return y, argmax


def conv2d_relu_maxpool2d_backward(dy, argmax, x, w, *, strides=1, padding="valid", dilation_rate=1, need_dx=True,
                                   x_from_relu=False, algorithm=None):
    """(dx, dw, db) of conv2d_relu_maxpool2d from dy, the gradient at its pooled output, and the argmax it
    returned: conv2d_backward(maxpool2d_backward(dy, <conv output>, 2, x_from_relu=True, argmax=argmax),
    x, w, need_dx=need_dx, x_from_relu=x_from_relu). That gradient at the ReLU's input is never stored
    where the backward passes run as Winograd (each rebuilds it tile by tile), nor without dx on the
    direct kernels (one pass; each image's rebuilt in a buffer of its thread's own). The same bits either
    way."""
    x32 = as_float_array(x, "x", ndim=4)
    w32 = as_float_array(w, "w", ndim=4)
    g, algo, path = _fused_conv_pool_path(x32.shape, w32.shape, strides, padding, dilation_rate, algorithm)
    pooled = (g.n, g.oh // 2, g.ow // 2, g.cout)
    dy32 = as_float_array(dy, "dy", ndim=4)
    check_shape(dy32, pooled, "dy")
    argmax = _checked_argmax(argmax, pooled, "conv2d_relu_maxpool2d")
    if path == "winograd" and dy32.size:
        dx = _empty(x32.shape, dtype=np.float32) if need_dx else None
        dw, db = _empty(w32.shape, dtype=np.float32), _empty((g.cout,), dtype=np.float32)
        if _C.conv2d_relu_maxpool2x2_backward(g, algo, _flat(dy32), _flat(argmax), _flat(x32), _flat(w32),
                                              bool(x_from_relu), None if dx is None else _flat(dx), _flat(dw),
                                              _flat(db)):
            return dx, dw, db
    if path != "direct" or need_dx or not dy32.size:
        # the gradient at the ReLU's input, from the argmax bytes alone (the conv output's place is not read)
        dpre = maxpool2d_backward(dy32, np.empty(g.out_shape, np.float32), 2, x_from_relu=True, argmax=argmax)
        return conv2d_backward(dpre, x32, w32, strides=strides, padding=padding, dilation_rate=dilation_rate,
                               need_dx=need_dx, x_from_relu=x_from_relu, algorithm=algorithm)
    dw, db = _empty(w32.shape, dtype=np.float32), _empty((g.cout,), dtype=np.float32)
    _C.conv2d_relu_maxpool2x2_weight_grad(g, algo, _flat(dy32), _flat(argmax), _flat(x32), _flat(dw), _flat(db))
    return None, dw, db
