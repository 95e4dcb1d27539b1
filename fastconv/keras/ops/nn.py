"""The neural-network ops of keras.ops: activations, conv/pool on fastconv's kernels, normalization,
one-hot and the cross-entropies. Composite ops are written with other ops, so their gradients
come from those ops' vjps."""
import math

import numpy as np

from fastconv import reference
from fastconv.keras import backend
from fastconv.keras.autodiff import record
from fastconv.keras.ops import core
from fastconv.keras.ops.core import _array

__all__ = [
    "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "sigmoid", "hard_sigmoid", "softmax",
    "log_softmax", "softplus", "softsign", "log_sigmoid",
    "conv", "conv_transpose", "max_pool", "average_pool", "batch_normalization", "moments", "normalize",
    "one_hot", "categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy",
]

EPSILON = 1e-7  # Keras' backend epsilon, used to clip probabilities in the cross-entropies


def _kernels(*arrays):
    """fastconv's C kernels when every array is float32, else the NumPy reference (float64 checks)."""
    return backend.ops() if all(a.dtype == np.float32 for a in arrays) else reference


# ----- activations -----
def relu(x):
    a = _array(x)
    out = np.maximum(a, 0)
    return record(out, (x,), lambda g: (g * (a > 0),))


def relu6(x):
    a = _array(x)
    out = np.clip(a, 0, 6)
    return record(out, (x,), lambda g: (g * ((a > 0) & (a < 6)),))


def leaky_relu(x, negative_slope=0.2):
    a = _array(x)
    slope = a.dtype.type(negative_slope) if a.dtype.kind == "f" else negative_slope
    out = np.where(a > 0, a, a * slope)
    return record(out, (x,), lambda g: (np.where(a > 0, g, g * slope),))


def elu(x, alpha=1.0):
    a = _array(x)
    negative = np.expm1(np.minimum(a, 0)) * alpha
    out = np.where(a > 0, a, negative).astype(a.dtype, copy=False)
    return record(out, (x,), lambda g: (np.where(a > 0, g, g * (negative + alpha)),))


def selu(x):
    return core.multiply(elu(x, 1.6732632423543772), 1.0507009873554805)


def sigmoid(x):
    a = _array(x)
    e = np.exp(-np.abs(a))  # exp of a non-positive number: no overflow for large |x|
    out = np.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)
    return record(out, (x,), lambda g: (g * out * (1 - out),))


def log_sigmoid(x):
    return core.negative(softplus(core.negative(x)))


def hard_sigmoid(x):
    return core.clip(core.add(core.divide(x, 6.0), 0.5), 0.0, 1.0)


def silu(x):
    return core.multiply(x, sigmoid(x))


swish = silu


def gelu(x, approximate=True):
    if approximate:  # Keras 3's default: the tanh form
        inner = core.multiply(core.add(x, core.multiply(0.044715, core.power(x, 3))), math.sqrt(2 / math.pi))
        return core.multiply(core.multiply(x, 0.5), core.add(1.0, core.tanh(inner)))
    return core.multiply(core.multiply(x, 0.5), core.add(1.0, core.erf(core.divide(x, math.sqrt(2.0)))))


def softplus(x):
    a = _array(x)
    out = (np.maximum(a, 0) + np.log1p(np.exp(-np.abs(a)))).astype(a.dtype, copy=False)
    return record(out, (x,), lambda g: (g * _sigmoid_values(a),))


def _sigmoid_values(a):
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)


def softsign(x):
    return core.divide(x, core.add(core.abs(x), 1.0))


def softmax(x, axis=-1):
    a = _array(x)
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    out = e / e.sum(axis=axis, keepdims=True)
    return record(out, (x,), lambda g: (out * (g - (g * out).sum(axis=axis, keepdims=True)),))


def log_softmax(x, axis=-1):
    a = _array(x)
    shifted = a - a.max(axis=axis, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return record(out, (x,), lambda g: (g - np.exp(out) * g.sum(axis=axis, keepdims=True),))


# ----- convolution and pooling (fastconv's C kernels for float32) -----
def _channels_last(data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"data_format must be 'channels_last' (fastconv computes NHWC), got {data_format!r}")


def _four_d(a, name):
    if a.ndim != 4:
        raise ValueError(f"{name} must be 4-D (batch, height, width, channels): fastconv has 2-D convolutions "
                         f"and pools only; got shape {a.shape}")


def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    """2-D convolution, NHWC inputs and a (kh, kw, in_channels, out_channels) kernel, as in Keras."""
    _channels_last(data_format)
    x, w = _array(inputs), _array(kernel)
    _four_d(x, "inputs")
    kernels = _kernels(x, w)
    args = {"strides": strides, "padding": padding, "dilation_rate": dilation_rate}
    out = kernels.conv2d(x, w, **args)

    def vjp(g):
        dx, dw, _ = kernels.conv2d_backward(np.ascontiguousarray(g, dtype=out.dtype), x, w, **args)
        return dx, dw
    return record(out, (inputs, kernel), vjp)


def conv_transpose(inputs, kernel, strides=1, padding="valid", output_padding=None, data_format=None,
                   dilation_rate=1):
    """Transposed 2-D convolution; the kernel is (kh, kw, out_channels, in_channels), as in Keras."""
    _channels_last(data_format)
    x, w = _array(inputs), _array(kernel)
    _four_d(x, "inputs")
    kernels = _kernels(x, w)
    args = {"strides": strides, "padding": padding, "dilation_rate": dilation_rate}
    out = kernels.conv2d_transpose(x, w, output_padding=output_padding, **args)

    def vjp(g):
        # The forward is conv2d's input gradient: x plays that conv's output gradient, g its input.
        g = np.ascontiguousarray(g, dtype=out.dtype)
        _, dw, _ = kernels.conv2d_backward(x, g, w, need_dx=False, **args)
        return kernels.conv2d(g, w, **args), dw
    return record(out, (inputs, kernel), vjp)


def _pool_args(pool_size, strides, padding, data_format):
    _channels_last(data_format)
    return {"pool_size": pool_size, "strides": strides, "padding": padding}


def max_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    x = _array(inputs)
    _four_d(x, "inputs")
    kernels = _kernels(x)
    args = _pool_args(pool_size, strides, padding, data_format)
    out = kernels.maxpool2d(x, **args)
    return record(out, (inputs,), lambda g: (kernels.maxpool2d_backward(np.ascontiguousarray(g, out.dtype), x,
                                                                        **args),))


def average_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    x = _array(inputs)
    _four_d(x, "inputs")
    kernels = _kernels(x)
    args = _pool_args(pool_size, strides, padding, data_format)
    out = kernels.avgpool2d(x, **args)
    return record(out, (inputs,), lambda g: (kernels.avgpool2d_backward(np.ascontiguousarray(g, out.dtype), x,
                                                                        **args),))


# ----- normalization -----
def moments(x, axes, keepdims=False, synchronized=False):
    """(mean, variance) over `axes`, both differentiable."""
    mean = core.mean(x, axis=axes, keepdims=keepdims)
    return mean, core.var(x, axis=axes, keepdims=keepdims)


def batch_normalization(x, mean, variance, axis, offset=None, scale=None, epsilon=1e-3):
    """(x - mean) / sqrt(variance + epsilon) * scale + offset, the statistics given per `axis`."""
    ndim = np.ndim(_array(x))
    axis = axis % ndim
    shape = [1] * ndim
    shape[axis] = -1

    def per_axis(v):
        return core.reshape(v, shape)
    inv = core.rsqrt(core.add(per_axis(variance), epsilon))
    if scale is not None:
        inv = core.multiply(inv, per_axis(scale))
    out = core.multiply(core.subtract(x, per_axis(mean)), inv)
    return out if offset is None else core.add(out, per_axis(offset))


def normalize(x, axis=-1, order=2, epsilon=None):
    """x divided by its `order`-norm along `axis`, the norm floored at epsilon (Keras' 1e-7 by default)."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an int >= 1, got order={order!r}")
    epsilon = EPSILON if epsilon is None else epsilon
    if order == 2:  # as Keras: x * rsqrt(max(sum of squares, epsilon^2)), finite for a zero vector
        return core.multiply(x, core.rsqrt(core.maximum(core.sum(core.square(x), axis=axis, keepdims=True),
                                                        epsilon * epsilon)))
    return core.divide(x, core.maximum(core.norm(x, ord=order, axis=axis, keepdims=True), epsilon))


# ----- one-hot and losses -----
def one_hot(x, num_classes, axis=-1, dtype=None, sparse=False):
    labels = np.asarray(_array(x))
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise TypeError(f"one_hot needs integer labels, got dtype {labels.dtype}")
    out = (labels[..., None] == np.arange(num_classes)).astype(dtype or backend.floatx())
    return np.moveaxis(out, -1, axis) if axis != -1 else out


def _target_like(target, output):
    """Targets in the predictions' float type, so float32 predictions give float32 losses. Float targets
    stay differentiable (as in Keras: soft targets may be computed); integer labels are constants."""
    value, dtype = _array(target), _array(output).dtype
    if dtype.kind != "f" or value.dtype == dtype:
        return target if value.dtype.kind == "f" else value
    return core.cast(target, dtype) if value.dtype.kind == "f" else value.astype(dtype)


def _check_same_shape(target, output, name):
    # Keras refuses what NumPy would broadcast: (batch,) labels against (batch, classes) outputs
    # would otherwise give a (batch, batch) loss without a word.
    t, o = np.shape(_array(target)), np.shape(_array(output))
    if t != o:
        raise ValueError(f"{name}: target and output must have the same shape, got target {t} and output {o}")


def categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """Per-sample cross-entropy of one-hot (or soft) targets against probabilities or logits."""
    _check_same_shape(target, output, "categorical_crossentropy")
    target = _target_like(target, output)
    if from_logits:
        return core.negative(core.sum(core.multiply(target, log_softmax(output, axis=axis)), axis=axis))
    probabilities = core.divide(output, core.sum(output, axis=axis, keepdims=True))
    probabilities = core.clip(probabilities, EPSILON, 1 - EPSILON)
    return core.negative(core.sum(core.multiply(target, core.log(probabilities)), axis=axis))


def sparse_categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """Per-sample cross-entropy of integer class targets against probabilities or logits."""
    labels = np.asarray(_array(target))
    out_shape = np.shape(_array(output))
    classes = out_shape[axis]
    if labels.ndim == len(out_shape) and labels.shape[axis] == 1:
        labels = np.squeeze(labels, axis)
    expected = out_shape[:axis % len(out_shape)] + out_shape[axis % len(out_shape) + 1:]
    if labels.shape != expected:
        raise ValueError(f"sparse_categorical_crossentropy: target must have the output's shape without the "
                         f"class axis, {expected}, got {labels.shape} for output {out_shape}")
    if labels.dtype.kind == "f":
        if np.any(labels != np.round(labels)):
            raise ValueError("sparse_categorical_crossentropy: target must hold integer class indices")
        labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"sparse targets must be integers in [0, {classes}), got values from {labels.min()} "
                         f"to {labels.max()}")
    return categorical_crossentropy(one_hot(labels, classes, axis=axis, dtype=_array(output).dtype), output,
                                    from_logits=from_logits, axis=axis)


def binary_crossentropy(target, output, from_logits=False):
    """Element-wise binary cross-entropy (no reduction), as keras.ops.binary_crossentropy."""
    _check_same_shape(target, output, "binary_crossentropy")
    target = _target_like(target, output)
    if from_logits:  # max(z, 0) - z * t + log(1 + exp(-|z|)), the stable form
        return core.subtract(softplus(output), core.multiply(output, target))
    p = core.clip(output, EPSILON, 1 - EPSILON)
    positive = core.multiply(target, core.log(p))
    negative = core.multiply(core.subtract(1.0, target), core.log(core.subtract(1.0, p)))
    return core.negative(core.add(positive, negative))
