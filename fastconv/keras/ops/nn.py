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
    "log_softmax", "softplus", "softsign", "log_sigmoid", "hard_silu", "hard_swish", "hard_tanh", "celu", "glu",
    "squareplus", "soft_shrink", "hard_shrink", "tanh_shrink", "threshold", "sparse_plus", "sparse_sigmoid",
    "conv", "conv_transpose", "depthwise_conv", "separable_conv", "max_pool", "average_pool",
    "adaptive_average_pool", "adaptive_max_pool", "psnr", "sparsemax", "unfold", "fold", "ctc_loss", "ctc_decode",
    "batch_normalization", "moments", "normalize", "layer_normalization", "rms_normalization",
    "dot_product_attention", "depth_to_space", "space_to_depth", "one_hot", "multi_hot", "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
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


def hard_silu(x):
    return core.multiply(x, hard_sigmoid(x))


hard_swish = hard_silu


def hard_tanh(x):
    return core.clip(x, -1.0, 1.0)


def celu(x, alpha=1.0):
    """x for x >= 0, alpha * (exp(x / alpha) - 1) below."""
    negative = core.multiply(core.expm1(core.divide(core.minimum(x, 0.0), alpha)), alpha)
    return core.add(core.maximum(x, 0.0), negative)


def glu(x, axis=-1):
    """The first half of x along axis, gated by the sigmoid of the second half."""
    if np.shape(_array(x))[axis] % 2:
        raise ValueError(f"glu splits axis {axis} in two halves: its size must be even, got shape "
                         f"{np.shape(_array(x))}")
    a, b = core.split(x, 2, axis=axis)
    return core.multiply(a, sigmoid(b))


def squareplus(x, b=4):
    return core.divide(core.add(x, core.sqrt(core.add(core.square(x), b))), 2.0)


def soft_shrink(x, threshold=0.5):
    return core.where(core.greater(x, threshold), core.subtract(x, threshold),
                      core.where(core.less(x, -threshold), core.add(x, threshold), 0.0))


def hard_shrink(x, threshold=0.5):
    return core.where(core.greater(core.abs(x), threshold), x, 0.0)


def tanh_shrink(x):
    return core.subtract(x, core.tanh(x))


def threshold(x, threshold, default_value):
    return core.where(core.greater(x, threshold), x, default_value)


def sparse_plus(x):
    """0 below -1, (x + 1)^2 / 4 between, x above 1."""
    middle = core.divide(core.square(core.add(x, 1.0)), 4.0)
    return core.where(core.less_equal(x, -1.0), 0.0, core.where(core.greater_equal(x, 1.0), x, middle))


def sparse_sigmoid(x):
    """0 below -1, (x + 1) / 2 between, 1 above 1."""
    return core.clip(core.divide(core.add(x, 1.0), 2.0), 0.0, 1.0)


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


def _pair(value, name):
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return tuple(int(v) for v in pair)


def _window_taps(shape, kernel_hw, strides, padding, dilation_rate):
    """Padding, output size and each tap's (row, column) slices of a 2-D window over NHWC inputs."""
    (sh, sw), (dh, dw) = _pair(strides, "strides"), _pair(dilation_rate, "dilation_rate")
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    pads, outs = [], []
    for size, k, s, d in ((shape[1], kernel_hw[0], sh, dh), (shape[2], kernel_hw[1], sw, dw)):
        span = (k - 1) * d + 1
        if padding == "same":
            out = -(-size // s)
            total = max((out - 1) * s + span - size, 0)
            pads.append((total // 2, total - total // 2))
        else:
            out = (size - span) // s + 1 if size >= span else 0
            pads.append((0, 0))
        outs.append(out)
    taps = [(i, j, slice(i * dh, i * dh + (outs[0] - 1) * sh + 1, sh),
             slice(j * dw, j * dw + (outs[1] - 1) * sw + 1, sw))
            for i in range(kernel_hw[0]) for j in range(kernel_hw[1])]
    return pads, outs, taps


def depthwise_conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    """Depthwise 2-D convolution: each input channel convolved with its own `multiplier` filters.
    The kernel is (kh, kw, in_channels, multiplier); output channel c * multiplier + m, as in Keras."""
    _channels_last(data_format)
    x, w = _array(inputs), _array(kernel)
    _four_d(x, "inputs")
    if w.ndim != 4 or w.shape[2] != x.shape[3]:
        raise ValueError(f"kernel must be (kh, kw, in_channels={x.shape[3]}, multiplier), got shape {w.shape}")
    ((pt, pb), (pl, pr)), (oh, ow), taps = _window_taps(x.shape, w.shape[:2], strides, padding, dilation_rate)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    dtype = np.result_type(x, w)
    out = np.zeros((x.shape[0], oh, ow, x.shape[3], w.shape[3]), dtype)
    for i, j, rows, cols in taps:  # NumPy over the kh * kw taps: no C kernel for depthwise convolution
        out += xp[:, rows, cols, :, None] * w[i, j]

    def vjp(g):
        g = np.asarray(g).reshape(out.shape)
        dxp, dw_ = np.zeros(xp.shape, dtype), np.zeros(w.shape, dtype)
        for i, j, rows, cols in taps:
            dxp[:, rows, cols, :] += (g * w[i, j]).sum(axis=-1)
            dw_[i, j] = np.einsum("nhwc,nhwcm->cm", xp[:, rows, cols, :], g)
        return dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2], :], dw_
    return record(out.reshape(out.shape[:3] + (-1,)), (inputs, kernel), vjp)


def separable_conv(inputs, depthwise_kernel, pointwise_kernel, strides=1, padding="valid", data_format=None,
                   dilation_rate=1):
    """A depthwise convolution, then a 1x1 convolution with pointwise_kernel (1, 1, channels, filters)."""
    depthwise = depthwise_conv(inputs, depthwise_kernel, strides, padding, data_format, dilation_rate)
    return conv(depthwise, pointwise_kernel, strides=1, padding="valid", data_format=data_format)


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


def layer_normalization(x, gamma=None, beta=None, axis=-1, epsilon=None, **kwargs):
    """(x - mean) / sqrt(variance + epsilon) * gamma + beta over `axis`, Keras' epsilon 1e-7 by default.
    rms_scaling=True divides by sqrt(variance + epsilon) without centering (Keras' option)."""
    rms_scaling = kwargs.pop("rms_scaling", False)
    if kwargs:
        raise TypeError(f"layer_normalization got unexpected arguments {sorted(kwargs)}")
    epsilon = EPSILON if epsilon is None else epsilon
    ndim = np.ndim(_array(x))
    axes = sorted(a % ndim for a in ((axis,) if isinstance(axis, (int, np.integer)) else axis))
    shape = [np.shape(_array(x))[a] if a in axes else 1 for a in range(ndim)]

    def broadcast(v):
        return v if v is None or axes == [ndim - 1] else core.reshape(v, shape)
    mean, variance = moments(x, axes=axes, keepdims=True)
    inv = core.rsqrt(core.add(variance, epsilon))
    if gamma is not None:
        inv = core.multiply(inv, broadcast(gamma))
    if rms_scaling:
        return core.multiply(x, inv)
    out = core.multiply(core.subtract(x, mean), inv)
    return out if beta is None else core.add(out, broadcast(beta))


def rms_normalization(x, scale=None, axis=-1, epsilon=None):
    """x / sqrt(mean(x^2) + epsilon) * scale over `axis`."""
    epsilon = EPSILON if epsilon is None else epsilon
    axis = tuple(axis) if isinstance(axis, list) else axis
    out = core.multiply(x, core.rsqrt(core.add(core.mean(core.square(x), axis=axis, keepdims=True), epsilon)))
    return out if scale is None else core.multiply(out, scale)


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
def dot_product_attention(query, key, value, bias=None, mask=None, scale=None, is_causal=False,
                          flash_attention=None, attn_logits_soft_cap=None):
    """softmax(query . key / sqrt(head_dim) + bias, masked) . value on (batch, length, heads, head_dim)
    arrays, as Keras; key and value may have fewer heads (grouped-query attention)."""
    if flash_attention:
        raise ValueError("flash_attention is not available: fastconv computes attention with NumPy")
    q, k = _array(query), _array(key)
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"query and key must be 4-D (batch, length, heads, head_dim), got {q.shape} and {k.shape}")
    heads, kv_heads = q.shape[2], k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"query has {heads} heads, not a multiple of key's {kv_heads}")
    if kv_heads != heads:  # grouped-query attention: each key/value head serves several query heads
        key = core.repeat(key, heads // kv_heads, axis=2)
        value = core.repeat(value, heads // kv_heads, axis=2)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = core.multiply(core.einsum("btnh,bsnh->bnts", query, key), scale)
    if attn_logits_soft_cap is not None:
        logits = core.multiply(core.tanh(core.divide(logits, attn_logits_soft_cap)), attn_logits_soft_cap)
    if bias is not None:
        logits = core.add(logits, bias)
    keep = None if mask is None else np.asarray(_array(mask)).astype(bool)
    if is_causal:
        causal = np.tri(q.shape[1], k.shape[1], dtype=bool)
        keep = causal if keep is None else keep & causal
    if keep is not None:  # Keras' masked logit: -0.7 times the largest float, finite for the softmax
        dtype = _array(logits).dtype
        logits = core.where(keep, logits, np.asarray(-0.7 * np.finfo(dtype).max, dtype))
    return core.einsum("bnts,bsnh->btnh", softmax(logits, axis=-1), value)


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


def multi_hot(inputs, num_classes=None, axis=-1, dtype=None, sparse=False, **kwargs):
    """1 for each class a row of integer labels contains (a 1-D input is one row)."""
    if num_classes is None:
        num_classes = kwargs.pop("num_tokens", None)  # Keras' older name
    if kwargs or num_classes is None:
        raise TypeError(f"multi_hot needs num_classes, got {sorted(kwargs) or 'none'}")
    labels = np.asarray(_array(inputs))
    if labels.dtype.kind not in "iu":
        raise TypeError(f"multi_hot needs integer labels, got dtype {labels.dtype}")
    encoded = one_hot(labels, num_classes, dtype=dtype)
    out = encoded.max(axis=-2) if labels.ndim > 0 else encoded
    return np.moveaxis(out, -1, axis) if axis != -1 else out


def depth_to_space(x, block_size, data_format="channels_last"):
    """(n, h, w, c * b * b) -> (n, h * b, w * b, c), as TF's depth_to_space; differentiable."""
    _channels_last(data_format)
    n, h, w, c = np.shape(_array(x))
    b = int(block_size)
    if c % (b * b):
        raise ValueError(f"depth_to_space: channels {c} must be divisible by block_size**2 = {b * b}")
    blocks = core.reshape(x, (n, h, w, b, b, c // (b * b)))
    return core.reshape(core.transpose(blocks, (0, 1, 3, 2, 4, 5)), (n, h * b, w * b, c // (b * b)))


def space_to_depth(x, block_size, data_format="channels_last"):
    """(n, h * b, w * b, c) -> (n, h, w, c * b * b), the inverse of depth_to_space."""
    _channels_last(data_format)
    n, h, w, c = np.shape(_array(x))
    b = int(block_size)
    if h % b or w % b:
        raise ValueError(f"space_to_depth: height {h} and width {w} must be divisible by block_size {b}")
    blocks = core.reshape(x, (n, h // b, b, w // b, b, c))
    return core.reshape(core.transpose(blocks, (0, 1, 3, 2, 4, 5)), (n, h // b, w // b, b * b * c))


def _adaptive_bins(size, out):
    # PyTorch's and Keras' bins: [floor(i * size / out), ceil((i + 1) * size / out))
    return [(i * size // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _adaptive_pool(inputs, output_size, data_format, kind):
    _channels_last(data_format)
    x = _array(inputs)
    _four_d(x, "inputs")
    out_h, out_w = (output_size, output_size) if isinstance(output_size, (int, np.integer)) else output_size
    rows, cols = _adaptive_bins(x.shape[1], int(out_h)), _adaptive_bins(x.shape[2], int(out_w))
    out = np.empty((x.shape[0], len(rows), len(cols), x.shape[3]), x.dtype)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            window = x[:, r0:r1, c0:c1, :]
            out[:, i, j] = window.max(axis=(1, 2)) if kind == "max" else window.mean(axis=(1, 2))

    def vjp(g):
        g = np.asarray(g)
        dx = np.zeros_like(x)
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                window = x[:, r0:r1, c0:c1, :]
                if kind == "max":  # ties share, as the max reductions
                    hit = window == out[:, i:i + 1, j:j + 1, :]
                    dx[:, r0:r1, c0:c1, :] += hit / hit.sum(axis=(1, 2), keepdims=True) * g[:, i:i + 1, j:j + 1, :]
                else:
                    dx[:, r0:r1, c0:c1, :] += g[:, i:i + 1, j:j + 1, :] / ((r1 - r0) * (c1 - c0))
        return (dx,)
    return record(out, (inputs,), vjp)


def adaptive_average_pool(inputs, output_size, data_format=None):
    """Average pooling to a fixed output size: bin i covers [floor(i*n/out), ceil((i+1)*n/out))."""
    return _adaptive_pool(inputs, output_size, data_format, "average")


def adaptive_max_pool(inputs, output_size, data_format=None):
    return _adaptive_pool(inputs, output_size, data_format, "max")


def psnr(x1, x2, max_val):
    """Peak signal-to-noise ratio, 20 log10(max_val) - 10 log10(mean squared error)."""
    if np.shape(_array(x1)) != np.shape(_array(x2)):
        raise ValueError(f"psnr needs inputs of one shape, got {np.shape(_array(x1))} and {np.shape(_array(x2))}")
    mse = core.mean(core.square(core.subtract(x1, x2)))
    return core.subtract(20 * math.log10(float(max_val)), core.multiply(core.log10(mse), 10.0))


def sparsemax(x, axis=-1):
    """The Euclidean projection of x onto the probability simplex along axis (sparse softmax)."""
    a = _array(x)
    moved = np.moveaxis(a, axis, -1)
    ordered = -np.sort(-moved, axis=-1)
    k = np.arange(1, moved.shape[-1] + 1)
    cumulative = np.cumsum(ordered, axis=-1)
    support = 1 + k * ordered > cumulative
    size = support.sum(axis=-1, keepdims=True)
    tau = (np.take_along_axis(cumulative, size - 1, axis=-1) - 1) / size
    out = np.moveaxis(np.maximum(moved - tau, 0), -1, axis).astype(a.dtype, copy=False)

    def vjp(g):
        # on the support S: g - mean of g over S; zero elsewhere
        on = np.moveaxis(out > 0, axis, -1)
        gm = np.moveaxis(np.asarray(g), axis, -1)
        mean = (gm * on).sum(axis=-1, keepdims=True) / np.maximum(on.sum(axis=-1, keepdims=True), 1)
        return (np.moveaxis(np.where(on, gm - mean, 0), -1, axis),)
    return record(out, (x,), vjp)


def _patch_geometry(size_hw, kernel_size, dilation, padding, stride):
    (kh, kw), (dh, dw) = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation")
    (sh, sw) = _pair(stride, "stride")
    ph, pw = (padding, padding) if isinstance(padding, (int, np.integer)) else tuple(padding)
    oh = (size_hw[0] + 2 * ph - (kh - 1) * dh - 1) // sh + 1
    ow = (size_hw[1] + 2 * pw - (kw - 1) * dw - 1) // sw + 1
    taps = [(slice(i * dh, i * dh + (oh - 1) * sh + 1, sh), slice(j * dw, j * dw + (ow - 1) * sw + 1, sw))
            for i in range(kh) for j in range(kw)]
    return (kh, kw), (int(ph), int(pw)), (oh, ow), taps


def _unfold_values(a, kernel_size, dilation, padding, stride):
    (kh, kw), (ph, pw), (oh, ow), taps = _patch_geometry(a.shape[2:], kernel_size, dilation, padding, stride)
    padded = np.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    patches = np.stack([padded[:, :, rows, cols] for rows, cols in taps], axis=2)  # (n, c, kh*kw, oh, ow)
    return patches.reshape(a.shape[0], a.shape[1] * kh * kw, oh * ow)


def _fold_values(cols, output_size, kernel_size, dilation, padding, stride):
    h, w = _pair(output_size, "output_size")
    (kh, kw), (ph, pw), (oh, ow), taps = _patch_geometry((h, w), kernel_size, dilation, padding, stride)
    n, depth, count = cols.shape
    if depth % (kh * kw) or count != oh * ow:
        raise ValueError(f"fold: inputs of shape {cols.shape} do not match {kh}x{kw} patches over {oh}x{ow} "
                         f"positions")
    patches = cols.reshape(n, depth // (kh * kw), kh * kw, oh, ow)
    padded = np.zeros((n, depth // (kh * kw), h + 2 * ph, w + 2 * pw), cols.dtype)
    for k, (rows, columns) in enumerate(taps):
        padded[:, :, rows, columns] += patches[:, :, k]
    return padded[:, :, ph:ph + h, pw:pw + w]


def unfold(x, kernel_size, dilation=1, padding=0, stride=1):
    """The sliding patches of a channels-first (N, C, H, W) input as (N, C * kh * kw, L), as
    torch.nn.functional.unfold and Keras (im2col)."""
    a = _array(x)
    if a.ndim != 4:
        raise ValueError(f"unfold takes a 4-D (N, C, H, W) input, got shape {a.shape}")
    out = _unfold_values(a, kernel_size, dilation, padding, stride)
    return record(out, (x,), lambda g: (_fold_values(np.asarray(g), a.shape[2:], kernel_size, dilation, padding,
                                                     stride),))


def fold(x, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """The inverse arrangement of unfold, overlapping patches summed: (N, C * kh * kw, L) -> (N, C, H, W)."""
    a = _array(x)
    if a.ndim != 3:
        raise ValueError(f"fold takes a 3-D (N, C * kh * kw, L) input, got shape {a.shape}")
    out = _fold_values(a, output_size, kernel_size, dilation, padding, stride)
    return record(out, (x,), lambda g: (_unfold_values(np.asarray(g), kernel_size, dilation, padding, stride),))


def _shift(v, by):
    """v moved right by `by` places along its last axis, -inf shifted in (by < 0: moved left)."""
    out = np.full_like(v, -np.inf)
    if by > 0:
        out[..., by:] = v[..., :-by]
    else:
        out[..., :by] = v[..., -by:]
    return out


def _ctc_one(log_probs, labels, blank):
    """-log p(labels | log_probs) and its gradient with respect to the logits, by the log-space
    forward-backward recursions of Graves et al. (2006)."""
    steps, classes = log_probs.shape
    extended = np.full(2 * len(labels) + 1, blank)
    extended[1::2] = labels
    # s -> s + 2 skips a blank when the labels on either side differ
    skip = np.zeros(len(extended), bool)
    skip[3::2] = extended[3::2] != extended[1:-2:2]
    emit = log_probs[:, extended]
    alpha = np.full(emit.shape, -np.inf)
    alpha[0, :2] = emit[0, :2]
    for t in range(1, steps):
        previous = alpha[t - 1]
        alpha[t] = np.logaddexp(np.logaddexp(previous, _shift(previous, 1)),
                                np.where(skip, _shift(previous, 2), -np.inf)) + emit[t]
    beta = np.full(emit.shape, -np.inf)
    beta[-1, -2:] = emit[-1, -2:]
    skip_from = np.concatenate([skip[2:], [False, False]])
    for t in range(steps - 2, -1, -1):
        following = beta[t + 1]
        beta[t] = np.logaddexp(np.logaddexp(following, _shift(following, -1)),
                               np.where(skip_from, _shift(following, -2), -np.inf)) + emit[t]
    log_likelihood = np.logaddexp(alpha[-1, -1], alpha[-1, -2]) if len(extended) > 1 else alpha[-1, -1]
    occupancy = np.full((steps, classes), -np.inf)
    for s_, label in enumerate(extended):
        occupancy[:, label] = np.logaddexp(occupancy[:, label], alpha[:, s_] + beta[:, s_] - emit[:, s_])
    with np.errstate(invalid="ignore"):
        grad = np.exp(log_probs) - np.exp(occupancy - log_likelihood)
    return -log_likelihood, np.nan_to_num(grad)


def ctc_loss(target, output, target_length, output_length, mask_index=0):
    """Per-sample CTC loss of integer label sequences (batch, max_label_length) against logits
    (batch, max_time, classes), class `mask_index` the blank; differentiable in the logits."""
    logits = _array(output)
    labels, label_lengths = np.asarray(_array(target)), np.asarray(_array(target_length)).reshape(-1)
    time_lengths = np.asarray(_array(output_length)).reshape(-1)
    if logits.ndim != 3 or labels.ndim != 2 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"ctc_loss takes target (batch, labels) and output (batch, time, classes), got "
                         f"{labels.shape} and {logits.shape}")
    z = logits.astype(np.float64)
    log_probs = z - z.max(axis=-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=-1, keepdims=True))
    losses, grads = np.zeros(len(z)), np.zeros(z.shape)
    for b in range(len(z)):
        steps = int(time_lengths[b])
        losses[b], grads[b, :steps] = _ctc_one(log_probs[b, :steps], labels[b, :int(label_lengths[b])],
                                               int(mask_index))
    dtype = logits.dtype if logits.dtype.kind == "f" else np.dtype(backend.floatx())
    return record(losses.astype(dtype), (output,),
                  lambda g: ((np.asarray(g).reshape(-1, 1, 1) * grads).astype(dtype),))


def ctc_decode(inputs, sequence_lengths, strategy="greedy", beam_width=100, top_paths=1, merge_repeated=True,
               mask_index=0):
    """Greedy CTC decoding as Keras: ((1, batch, max_length) label indices, -1 past the end;
    (batch, 1) scores, minus the sum of each step's best input)."""
    if strategy != "greedy":
        raise ValueError(f"ctc_decode supports strategy='greedy' only here, got {strategy!r}")
    x = np.asarray(_array(inputs))
    x = x.astype(np.result_type(x.dtype, np.float32))
    lengths = np.asarray(_array(sequence_lengths)).astype(np.int32)
    batch, max_length, _ = x.shape
    indices = np.argmax(x, axis=-1).astype(np.int32)
    scores = np.max(x, axis=-1)
    past_end = np.arange(max_length)[None, :] >= lengths[:, None]
    indices = np.where(past_end, mask_index, indices)
    scores = np.where(past_end, 0.0, scores)
    if merge_repeated:
        repeated = np.pad(indices[:, 1:] == indices[:, :-1], ((0, 0), (1, 0)))
        indices = np.where(repeated, mask_index, indices)
    blank = indices == mask_index
    indices = np.where(blank, -1, indices)
    order = np.argsort(np.where(blank, max_length, np.arange(max_length)[None, :]), axis=-1, kind="stable")
    indices = np.take_along_axis(indices, order, axis=-1)
    return indices[None], -np.sum(scores, axis=1, keepdims=True).astype(x.dtype)
