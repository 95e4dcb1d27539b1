"""Pure-NumPy implementations of every fastconv op: the test oracle and the benchmark baseline.

Same functions and signatures as the C-backed ops. Convolution is im2col (gathered one kernel tap at
a time, never one pixel at a time) followed by `numpy.matmul`. Inputs of float64 stay float64, so the
tests can use this as a high-precision oracle; every other dtype computes in float32.
"""
import math

import numpy as np

from fastconv._args import (
    as_float_array, batch_norm_arrays, check_batch_statistics, check_momentum_buffer, check_shape,
)
from fastconv._args import affine_arguments
from fastconv.shapes import conv_geometry, conv_transpose_geometry, pool_geometry

__all__ = [
    "gemm", "conv2d", "conv2d_backward", "conv2d_transpose", "maxpool2d", "maxpool2d_backward",
    "avgpool2d", "avgpool2d_backward", "global_avgpool2d", "global_avgpool2d_backward",
    "relu_backward", "dropout", "dropout_keep", "dropout_backward", "adam_update", "adadelta_update",
    "rmsprop_update", "sgd_update", "adam_update_all", "adadelta_update_all", "rmsprop_update_all", "sgd_update_all",
    "batch_norm", "batch_norm_statistics", "batch_norm_backward", "affine_transform",
]


def _dtype(*arrays):
    return np.float64 if any(np.asarray(a).dtype == np.float64 for a in arrays if a is not None) else np.float32


def gemm(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None, bias=None, activation=None):
    """alpha * op(a) @ op(b) + beta * out (+ bias per column, then ReLU); `out` is not read when beta == 0."""
    dtype = _dtype(a, b)
    a = as_float_array(a, "a", ndim=2, dtype=dtype)
    b = as_float_array(b, "b", ndim=2, dtype=dtype)
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    if op_a.shape[1] != op_b.shape[0]:
        raise ValueError(f"inner dimensions differ: op(a) is {op_a.shape}, op(b) is {op_b.shape}")
    result = alpha * (op_a @ op_b)
    if out is not None:
        check_shape(out, (op_a.shape[0], op_b.shape[1]), "out")
        if beta != 0.0:
            result += beta * out
    if bias is not None:
        result += as_float_array(bias, "bias", ndim=1, dtype=dtype)
    if activation == "relu":
        np.maximum(result, 0, out=result)
    if out is None:
        return result.astype(dtype, copy=False)
    out[...] = result
    return out


def _into(out, result):
    """Copy `result` into `out` when the caller passed one (the fastconv ops' out= argument)."""
    if out is None:
        return result
    check_shape(out, result.shape, "out")
    out[...] = result
    return out


def _pad(x, g, value=0.0):
    return np.pad(x, ((0, 0), (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right), (0, 0)), constant_values=value)


def _tap_slices(g, i, j, dilation_h=1, dilation_w=1):
    """Rows and columns of the padded input that kernel tap (i, j) reads for every output pixel."""
    top, left = i * dilation_h, j * dilation_w
    return (slice(top, top + g.stride_h * (g.oh - 1) + 1, g.stride_h),
            slice(left, left + g.stride_w * (g.ow - 1) + 1, g.stride_w))


def _im2col(xp, g):
    cols = np.empty((g.n, g.oh, g.ow, g.kh, g.kw, g.cin), dtype=xp.dtype)
    for i in range(g.kh):
        for j in range(g.kw):
            rows, columns = _tap_slices(g, i, j, g.dilation_h, g.dilation_w)
            cols[:, :, :, i, j, :] = xp[:, rows, columns, :]
    return cols.reshape(g.n * g.oh * g.ow, g.kh * g.kw * g.cin)


def conv2d(x, w, b=None, *, strides=1, padding="valid", dilation_rate=1, activation=None, out=None, algorithm=None):
    """2-D cross-correlation of NHWC `x` with a (kh, kw, cin, cout) kernel, plus bias and activation.

    `algorithm` is accepted for signature compatibility with fastconv.conv2d and ignored.
    """
    dtype = _dtype(x, w, b)
    x = as_float_array(x, "x", ndim=4, dtype=dtype)
    w = as_float_array(w, "w", ndim=4, dtype=dtype)
    g = conv_geometry(x.shape, w.shape, strides, padding, dilation_rate)
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    y = _im2col(_pad(x, g), g) @ w.reshape(-1, g.cout)
    return _into(out, _add_bias_and_relu(y, b, g.cout, activation, dtype).reshape(g.out_shape))


def _add_bias_and_relu(y, b, channels, activation, dtype):
    """y + b over the last axis (b None: none), then ReLU if activation == "relu"; in place."""
    if b is not None:
        b = as_float_array(b, "b", ndim=1, dtype=dtype)
        check_shape(b, (channels,), "b")
        y += b
    if activation == "relu":
        np.maximum(y, 0, out=y)
    return y


def conv2d_backward(dy, x, w, *, strides=1, padding="valid", dilation_rate=1, need_dx=True, x_from_relu=False,
                    algorithm=None):
    """Gradients (dx, dw, db) of conv2d without activation, given the output gradient dy.

    need_dx=False returns None for dx; x_from_relu=True masks dx where x <= 0 (x is a ReLU's output);
    `algorithm` is accepted and ignored, as in conv2d.
    """
    dtype = _dtype(dy, x, w)
    x = as_float_array(x, "x", ndim=4, dtype=dtype)
    w = as_float_array(w, "w", ndim=4, dtype=dtype)
    g = conv_geometry(x.shape, w.shape, strides, padding, dilation_rate)
    dy = as_float_array(dy, "dy", ndim=4, dtype=dtype)
    check_shape(dy, g.out_shape, "dy")
    dy2 = dy.reshape(-1, g.cout)
    dw = (_im2col(_pad(x, g), g).T @ dy2).reshape(w.shape)
    db = dy2.sum(axis=0)
    if not need_dx:
        return None, dw, db
    dx = _input_grad(dy2, w, g, dtype)
    return (relu_backward(dx, x) if x_from_relu else dx), dw, db


def _input_grad(dy2, w, g, dtype):
    """dx of the conv g: each output pixel's gradient times w, scattered back over its patch (col2im)."""
    dcols = (dy2 @ w.reshape(-1, g.cout).T).reshape(g.n, g.oh, g.ow, g.kh, g.kw, g.cin)
    dxp = np.zeros((g.n, g.h + g.pad_top + g.pad_bottom, g.w + g.pad_left + g.pad_right, g.cin), dtype=dtype)
    for i in range(g.kh):
        for j in range(g.kw):
            rows, columns = _tap_slices(g, i, j, g.dilation_h, g.dilation_w)
            dxp[:, rows, columns, :] += dcols[:, :, :, i, j, :]
    return np.ascontiguousarray(dxp[:, g.pad_top:g.pad_top + g.h, g.pad_left:g.pad_left + g.w, :])


def conv2d_transpose(x, w, b=None, *, strides=1, padding="valid", output_padding=None, dilation_rate=1,
                     activation=None, out=None, algorithm=None):
    """Transposed convolution (Keras Conv2DTranspose): the input gradient of conv2d with x as its output
    gradient, plus the bias, then ReLU if asked. w is (kh, kw, Cout, Cin); see fastconv.conv2d_transpose."""
    dtype = _dtype(x, w, b)
    x = as_float_array(x, "x", ndim=4, dtype=dtype)
    w = as_float_array(w, "w", ndim=4, dtype=dtype)
    g, _ = conv_transpose_geometry(x.shape, w.shape, strides, padding, output_padding, dilation_rate)
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    return _into(out, _add_bias_and_relu(_input_grad(x.reshape(-1, g.cout), w, g, dtype), b, g.cin, activation, dtype))


def _pool_windows(xp, g):
    """Yield (i, j, window_values) for each tap of the pooling window, in row-major order."""
    for i in range(g.pool_h):
        for j in range(g.pool_w):
            rows, columns = _tap_slices(g, i, j)
            yield i, j, xp[:, rows, columns, :]


ARGMAX_NONE, ARGMAX_NOT_POSITIVE = 0x7F, 0x80  # the argmax byte encoding of fastconv.maxpool2d


def _first_max_taps(x, g):
    """Each window's first maximum (row-major, a NaN wins once, like C's) and its tap; tap -1 for a
    window of nothing but -inf."""
    best = np.full(g.out_shape, -np.inf, dtype=x.dtype)
    best_tap = np.full(g.out_shape, -1, dtype=np.int64)
    for i, j, window in _pool_windows(_pad(x, g, -np.inf), g):
        better = (window > best) | (np.isnan(window) & ~np.isnan(best))
        best = np.where(better, window, best)
        best_tap[better] = i * g.pool_w + j
    return best, best_tap


def maxpool2d(x, pool_size=2, strides=None, padding="valid", *, out=None, return_argmax=False):
    """Max pooling over NHWC `x`; 'same' pads with -inf. return_argmax as fastconv.maxpool2d."""
    x = as_float_array(x, "x", ndim=4, dtype=_dtype(x))
    g = pool_geometry(x.shape, pool_size, strides, padding)
    y = np.full(g.out_shape, -np.inf, dtype=x.dtype)
    for _, _, window in _pool_windows(_pad(x, g, -np.inf), g):
        np.maximum(y, window, out=y)
    y = _into(out, y)
    if not return_argmax:
        return y
    best, best_tap = _first_max_taps(x, g)
    tap = np.where(best_tap < 0, ARGMAX_NONE, best_tap)
    return y, (tap | np.where(best > 0, 0, ARGMAX_NOT_POSITIVE)).astype(np.uint8)


def maxpool2d_backward(dy, x, pool_size=2, strides=None, padding="valid", *, x_from_relu=False, argmax=None):
    """Gradient of maxpool2d: each window's gradient goes to its first maximum in row-major order
    (or to the taps in `argmax`, from maxpool2d(return_argmax=True)); x_from_relu=True then masks it
    where x <= 0 (x is a ReLU's output)."""
    dtype = _dtype(dy, x)
    x = as_float_array(x, "x", ndim=4, dtype=dtype)
    g = pool_geometry(x.shape, pool_size, strides, padding)
    dy = as_float_array(dy, "dy", ndim=4, dtype=dtype)
    check_shape(dy, g.out_shape, "dy")
    if argmax is None:
        best_tap = _first_max_taps(x, g)[1]
    else:
        check_shape(argmax, g.out_shape, "argmax")
        best_tap = np.asarray(argmax, dtype=np.int64) & ARGMAX_NONE
    xp = _pad(x, g, -np.inf)
    dxp = np.zeros_like(xp)
    for i, j, _ in _pool_windows(xp, g):
        rows, columns = _tap_slices(g, i, j)
        dxp[:, rows, columns, :] += np.where(best_tap == i * g.pool_w + j, dy, 0)
    dx = np.ascontiguousarray(dxp[:, g.pad_top:g.pad_top + g.h, g.pad_left:g.pad_left + g.w, :])
    return relu_backward(dx, x) if x_from_relu else dx


def conv2d_relu_maxpool2d_fuses(x_shape, w_shape, *, strides=1, padding="valid", dilation_rate=1, algorithm=None):
    """False: here conv2d_relu_maxpool2d is always the two ops in turn."""
    return False


def conv2d_relu_maxpool2d(x, w, b=None, *, strides=1, padding="valid", dilation_rate=1, algorithm=None):
    """maxpool2d(conv2d(x, w, b, activation="relu", ...), 2, return_argmax=True): (y, argmax)."""
    pre = conv2d(x, w, b, strides=strides, padding=padding, dilation_rate=dilation_rate, activation="relu")
    return maxpool2d(pre, 2, return_argmax=True)


def conv2d_relu_maxpool2d_backward(dy, argmax, x, w, *, strides=1, padding="valid", dilation_rate=1, need_dx=True,
                                   x_from_relu=False, algorithm=None):
    """(dx, dw, db) of conv2d_relu_maxpool2d: dy to each window's recorded maximum where that was > 0 (the
    ReLU's gradient), then conv2d_backward."""
    dtype = _dtype(dy, x, w)
    x = as_float_array(x, "x", ndim=4, dtype=dtype)
    w = as_float_array(w, "w", ndim=4, dtype=dtype)
    g = conv_geometry(x.shape, w.shape, strides, padding, dilation_rate)
    positive = (np.asarray(argmax) & ARGMAX_NOT_POSITIVE) == 0
    dpre = maxpool2d_backward(np.where(positive, dy, 0).astype(dtype), np.zeros(g.out_shape, dtype), 2,
                              argmax=argmax)
    return conv2d_backward(dpre, x, w, strides=strides, padding=padding, dilation_rate=dilation_rate,
                           need_dx=need_dx, x_from_relu=x_from_relu)


def _window_counts(g, dtype):
    """How many real (non-padding) inputs each output window covers; Keras' 'same' mean divides by it."""
    ones = np.ones((1, g.h, g.w, 1), dtype=dtype)
    counts = np.zeros((1, g.oh, g.ow, 1), dtype=dtype)
    for _, _, window in _pool_windows(_pad(ones, g), g):
        counts += window
    return counts


def avgpool2d(x, pool_size=2, strides=None, padding="valid", *, out=None):
    """Average pooling over NHWC `x`; with 'same' the padding is excluded from the mean (Keras)."""
    x = as_float_array(x, "x", ndim=4, dtype=_dtype(x))
    g = pool_geometry(x.shape, pool_size, strides, padding)
    total = np.zeros(g.out_shape, dtype=x.dtype)
    for _, _, window in _pool_windows(_pad(x, g), g):
        total += window
    return _into(out, total / _window_counts(g, x.dtype))


def avgpool2d_backward(dy, x, pool_size=2, strides=None, padding="valid"):
    """Gradient of avgpool2d with respect to x."""
    dtype = _dtype(dy, x)
    x = as_float_array(x, "x", ndim=4, dtype=dtype)
    g = pool_geometry(x.shape, pool_size, strides, padding)
    dy = as_float_array(dy, "dy", ndim=4, dtype=dtype)
    check_shape(dy, g.out_shape, "dy")
    share = dy / _window_counts(g, dtype)
    dxp = np.zeros((g.n, g.h + g.pad_top + g.pad_bottom, g.w + g.pad_left + g.pad_right, g.c), dtype=dtype)
    for i in range(g.pool_h):
        for j in range(g.pool_w):
            rows, columns = _tap_slices(g, i, j)
            dxp[:, rows, columns, :] += share
    return np.ascontiguousarray(dxp[:, g.pad_top:g.pad_top + g.h, g.pad_left:g.pad_left + g.w, :])


def global_avgpool2d(x):
    """Mean over the spatial axes of NHWC `x`: (N, H, W, C) -> (N, C)."""
    x = as_float_array(x, "x", ndim=4, dtype=_dtype(x))
    return x.mean(axis=(1, 2))


def global_avgpool2d_backward(dy, x):
    """Gradient of global_avgpool2d with respect to x."""
    x = as_float_array(x, "x", ndim=4, dtype=_dtype(dy, x))
    dy = as_float_array(dy, "dy", ndim=2, dtype=x.dtype)
    check_shape(dy, (x.shape[0], x.shape[3]), "dy")
    n, h, w, c = x.shape
    return np.ascontiguousarray(np.broadcast_to((dy / (h * w))[:, None, None, :], x.shape))


def relu_backward(dy, y, *, out=None):
    """Gradient of y = relu(x) given dy: dy where y > 0, else 0."""
    return _into(out, np.where(np.asarray(y) > 0, dy, 0).astype(np.result_type(dy, np.float32), copy=False))


def _hash32(x):
    """Wellons' lowbias32 on a uint32 array (the C kernel's hash; products wrap modulo 2**32)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def _dropout_keep(shape, rate, seed, first):
    index = np.arange(first, first + math.prod(shape), dtype=np.uint64).astype(np.uint32)  # wraps like C's index
    with np.errstate(over="ignore"):
        h = _hash32(_hash32(index + np.uint32(seed & 0xFFFFFFFF)) ^ np.uint32(seed >> 32))
    uniform = (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)
    return (uniform >= np.float32(rate)).reshape(shape)


def _dropout_scale(keep, rate, dtype):
    scale = dtype(1) / (dtype(1) - dtype(rate))  # in the working precision, as the C kernel does
    return np.where(keep, scale, dtype(0)).astype(dtype, copy=False)


def _working_dtype(x):
    return np.float64 if x.dtype == np.float64 else np.float32


def dropout(x, rate, seed, first=0):
    """Inverted dropout with fastconv.dropout's mask: element i is kept when
    hash32(hash32(first + i + low32(seed)) ^ high32(seed)) / 2**32, from its top 24 bits, is >= rate."""
    x = np.asarray(x)
    dtype = _working_dtype(x)
    mask = _dropout_scale(_dropout_keep(x.shape, rate, seed, first), rate, dtype)
    return (x * mask).astype(dtype, copy=False), mask


def dropout_keep(x, rate, seed, first=0):
    """dropout with the mask as bytes, 1 where kept (fastconv.dropout_keep)."""
    x = np.asarray(x)
    keep = _dropout_keep(x.shape, rate, seed, first)
    dtype = _working_dtype(x)
    return (x * _dropout_scale(keep, rate, dtype)).astype(dtype, copy=False), keep.astype(np.uint8)


def dropout_backward(dy, keep, rate):
    """dy times the mask of dropout_keep's bytes."""
    dy = np.asarray(dy)
    dtype = _working_dtype(dy)
    return (dy * _dropout_scale(np.asarray(keep) != 0, rate, dtype)).astype(dtype, copy=False)


def adam_update(w, g, m, v, lr_t, beta_1, beta_2, epsilon):
    """One Adam step in place (any float dtype): the same maths as fastconv.adam_update."""
    m += (g - m) * (1 - beta_1)
    v += (g * g - v) * (1 - beta_2)
    w -= lr_t * m / (np.sqrt(v) + epsilon)


def adadelta_update(w, g, accumulated_grad, accumulated_delta, lr, rho, epsilon):
    """One Adadelta step in place (any float dtype): the same maths as fastconv.adadelta_update."""
    accumulated_grad *= rho
    accumulated_grad += (1 - rho) * g * g
    delta = -np.sqrt(accumulated_delta + epsilon) / np.sqrt(accumulated_grad + epsilon) * g
    accumulated_delta *= rho
    accumulated_delta += (1 - rho) * delta * delta
    w += lr * delta


def rmsprop_update(w, g, velocity, lr, rho, epsilon, momentum=0.0, momentum_buffer=None):
    """One RMSprop step in place (any float dtype): the same maths as fastconv.rmsprop_update."""
    check_momentum_buffer(momentum, momentum_buffer, "momentum_buffer")
    velocity *= rho
    velocity += (1 - rho) * g * g
    increment = lr * g / np.sqrt(velocity + epsilon)
    if momentum_buffer is not None:
        momentum_buffer *= momentum
        momentum_buffer += increment
        increment = momentum_buffer
    w -= increment


def sgd_update(w, g, lr, momentum=0.0, velocity=None, nesterov=False):
    """One SGD step in place (any float dtype): the same maths as fastconv.sgd_update."""
    check_momentum_buffer(momentum, velocity, "velocity")
    if velocity is None:
        w -= lr * g
        return
    velocity *= momentum
    velocity -= lr * g
    if nesterov:
        w += momentum * velocity - lr * g
    else:
        w += velocity


def adam_update_all(ws, gs, ms, vs, lr_t, beta_1, beta_2, epsilon):
    """adam_update of each (w, g, m, v), in order: fastconv.adam_update_all's result."""
    for w, g, m, v in zip(ws, gs, ms, vs):
        adam_update(w, g, m, v, lr_t, beta_1, beta_2, epsilon)


def adadelta_update_all(ws, gs, accumulated_grads, accumulated_deltas, lr, rho, epsilon):
    for w, g, accumulated_grad, accumulated_delta in zip(ws, gs, accumulated_grads, accumulated_deltas):
        adadelta_update(w, g, accumulated_grad, accumulated_delta, lr, rho, epsilon)


def rmsprop_update_all(ws, gs, velocities, lr, rho, epsilon, momentum=0.0, momentum_buffers=None):
    buffers = [None] * len(ws) if momentum_buffers is None else momentum_buffers
    for w, g, velocity, momentum_buffer in zip(ws, gs, velocities, buffers):
        rmsprop_update(w, g, velocity, lr, rho, epsilon, momentum, momentum_buffer)


def sgd_update_all(ws, gs, lr, momentum=0.0, velocities=None, nesterov=False):
    for w, g, velocity in zip(ws, gs, [None] * len(ws) if velocities is None else velocities):
        sgd_update(w, g, lr, momentum, velocity, nesterov)


def batch_norm(x, gamma=None, beta=None, *, epsilon=1e-3, mean=None, variance=None):
    """Batch normalisation over every axis but the last: (x - mean) / sqrt(variance + epsilon) * gamma + beta.

    Without mean and variance, the batch's own (the variance biased); returns (y, mean, variance) used.
    """
    check_batch_statistics(mean, variance)
    dtype = _dtype(x, gamma, beta, mean, variance)
    x, c = batch_norm_arrays(x, dict(gamma=gamma, beta=beta, mean=mean, variance=variance), epsilon, dtype)
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes) if c["mean"] is None else c["mean"]
    variance = x.var(axis=axes) if c["variance"] is None else c["variance"]
    y = (x - mean) * (1 / np.sqrt(variance + dtype(epsilon)))
    if c["gamma"] is not None:
        y *= c["gamma"]
    if c["beta"] is not None:
        y += c["beta"]
    return y, mean, variance


def batch_norm_statistics(x):
    """The per-channel (last axis) mean and biased variance of x."""
    x = np.asarray(x)
    axes = tuple(range(x.ndim - 1))
    return x.mean(axis=axes), x.var(axis=axes)


def batch_norm_backward(dy, x, mean, variance, gamma=None, *, epsilon=1e-3, batch_statistics=True, need_dx=True):
    """Gradients (dx, dgamma, dbeta) of batch_norm given dy: dbeta = sum(dy), dgamma = sum(dy * xhat).

    batch_statistics: mean and variance were x's own, so dx flows through them too; else dx =
    dy * gamma / sqrt(variance + epsilon). need_dx=False returns None for dx.
    """
    dtype = _dtype(dy, x, mean, variance, gamma)
    x, c = batch_norm_arrays(x, dict(mean=mean, variance=variance, gamma=gamma), epsilon, dtype)
    dy = as_float_array(dy, "dy", dtype=dtype)
    check_shape(dy, x.shape, "dy")
    axes = tuple(range(x.ndim - 1))
    inv_std = 1 / np.sqrt(c["variance"] + dtype(epsilon))
    normalized = (x - c["mean"]) * inv_std
    dgamma, dbeta = (dy * normalized).sum(axis=axes), dy.sum(axis=axes)
    if not need_dx:
        return None, dgamma, dbeta
    dnormalized = dy if c["gamma"] is None else dy * c["gamma"]
    if not batch_statistics:
        return dnormalized * inv_std, dgamma, dbeta
    # Batch statistics depend on every input: subtract the mean gradient and its projection on xhat.
    count = max(x.size // x.shape[-1], 1)
    mean_d = dnormalized.sum(axis=axes) / count
    mean_dx = (dnormalized * normalized).sum(axis=axes) / count
    return (dnormalized - mean_d - normalized * mean_dx) * inv_std, dgamma, dbeta


def _fill_index(i, size, fill_mode):
    """Integer positions i (float64 array) -> pixel indices along an axis of `size`; -1 reads fill_value."""
    inside = (i >= 0) & (i < size)
    if fill_mode == "constant":
        return np.where(inside, i, -1).astype(np.int64)
    if fill_mode == "nearest":
        return np.clip(i, 0, size - 1).astype(np.int64)
    if fill_mode == "wrap":
        return np.mod(i, size).astype(np.int64)
    if fill_mode == "reflect":
        m = np.mod(i, 2 * size)
        return np.where(m < size, m, 2 * size - 1 - m).astype(np.int64)
    if size == 1:  # mirror
        return np.zeros(i.shape, dtype=np.int64)
    m = np.mod(i, 2 * (size - 1))
    return np.where(m < size, m, 2 * (size - 1) - m).astype(np.int64)


def _affine_samples(transforms, h, w, out_h, out_w, interpolation, fill_mode, dtype):
    """Where each output pixel of affine_transform reads: a list of (rows, cols, weights) over the
    (n, out_h, out_w) grid, one entry per neighbour (1 for nearest, 4 for bilinear); an index of -1
    reads fill_value. Also returns the mask of degenerate pixels (k == 0), which read fill_value only."""
    cols = np.arange(out_w, dtype=np.float64)[None, None, :]
    rows = np.arange(out_h, dtype=np.float64)[None, :, None]
    a0, a1, a2, b0, b1, b2, c0, c1 = (transforms[:, j, None, None] for j in range(8))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        k = c0 * cols + c1 * rows + 1.0
        sx = (a0 * cols + a1 * rows + a2) / k
        sy = (b0 * cols + b1 * rows + b2) / k
    degenerate = ~(np.isfinite(sx) & np.isfinite(sy))
    sx, sy = np.where(degenerate, 0.0, sx), np.where(degenerate, 0.0, sy)
    if interpolation == "nearest":
        ones = np.ones(sx.shape, dtype=dtype)
        return [(_fill_index(np.rint(sy), h, fill_mode), _fill_index(np.rint(sx), w, fill_mode), ones)], degenerate
    fy, fx = np.floor(sy), np.floor(sx)
    wy1, wx1 = (sy - fy).astype(dtype), (sx - fx).astype(dtype)
    wy0, wx0 = 1 - wy1, 1 - wx1
    iy0, iy1 = _fill_index(fy, h, fill_mode), _fill_index(fy + 1, h, fill_mode)
    ix0, ix1 = _fill_index(fx, w, fill_mode), _fill_index(fx + 1, w, fill_mode)
    return [(iy0, ix0, wy0 * wx0), (iy0, ix1, wy0 * wx1), (iy1, ix0, wy1 * wx0), (iy1, ix1, wy1 * wx1)], degenerate


def affine_transform(images, transform, interpolation="bilinear", fill_mode="constant", fill_value=0.0,
                     data_format=None, *, output_size=None):
    """Resamples NHWC images through one transform each (see fastconv.ops.affine_transform): every
    output pixel's source coordinates at once, then a gather of its neighbours."""
    dtype = _dtype(images)
    x, t, unbatched, (out_h, out_w) = affine_arguments(images, transform, interpolation, fill_mode, fill_value,
                                                       data_format, output_size, dtype)
    n, h, w, c = x.shape
    samples, degenerate = _affine_samples(t, h, w, out_h, out_w, interpolation, fill_mode, dtype)
    batch = np.arange(n)[:, None, None]
    fill = dtype(fill_value)
    out = None
    for rows, cols, weights in samples:
        values = np.where(((rows >= 0) & (cols >= 0))[..., None], x[batch, np.maximum(rows, 0), np.maximum(cols, 0)],
                          fill)
        term = weights[..., None] * values
        out = term if out is None else out + term
    out = np.where(degenerate[..., None], fill, out).astype(dtype, copy=False)
    return out[0] if unbatched else out
