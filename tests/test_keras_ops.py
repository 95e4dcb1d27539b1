"""keras.ops and its reverse-mode autodiff: every op's forward against NumPy (or a hand-written
formula), every differentiable op's vector-Jacobian product against central finite differences in
float64, and the GradientTape / value_and_grad contracts."""
import math

import numpy as np
import pytest

from fastconv import keras
from fastconv.keras import GradientTape, Variable, losses, ops, value_and_grad
from fastconv.keras.autodiff import Tensor

# ----- helpers -----


def _rng(seed=0):
    return np.random.default_rng(seed)


def arr(*shape, low=-1.0, high=1.0, seed=0):
    """A float64 array of distinct values (no ties, so max/sort/abs are differentiable at it)."""
    return _rng(seed).uniform(low, high, size=shape)


def pos(*shape, seed=0):
    return arr(*shape, low=0.5, high=2.0, seed=seed)


def _leaves(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def numeric_vjp(fn, args, index, cotangents, eps=1e-6):
    """d sum(fn(*args) * cotangent) / d args[index] by central differences, element by element."""
    x = args[index]
    grad = np.zeros_like(x)

    def objective():
        return sum(float(np.sum(np.asarray(o, np.float64) * c)) for o, c in zip(_leaves(fn(*args)), cotangents))
    for idx in np.ndindex(x.shape):
        original = x[idx]
        x[idx] = original + eps
        plus = objective()
        x[idx] = original - eps
        minus = objective()
        x[idx] = original
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def tape_vjp(fn, args, wrt, cotangents):
    """The tape's gradient of sum(fn(*args) * cotangent) with respect to args[i] for i in wrt."""
    with GradientTape() as tape:
        sources = [args[i] for i in wrt]
        tape.watch(sources)
        out = _leaves(fn(*args))
    return tape.gradient(out, sources, output_gradients=cotangents)


def check_vjp(fn, *args, wrt=None, rtol=1e-6, atol=1e-8, seed=1):
    """The tape's vjp of fn at float64 args (a random cotangent) against finite differences.
    Returns fn's plain output (outside any tape)."""
    args = [np.array(a, dtype=np.float64) if isinstance(a, np.ndarray) else a for a in args]
    wrt = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)] if wrt is None else wrt
    out = fn(*args)
    rng = _rng(seed)
    cotangents = [rng.standard_normal(np.shape(o)) for o in _leaves(out)]
    grads = tape_vjp(fn, args, wrt, cotangents)
    for i, grad in zip(wrt, grads):
        assert grad is not None, f"no gradient for argument {i}"
        assert np.shape(grad) == args[i].shape, f"argument {i}: gradient shape {np.shape(grad)} != {args[i].shape}"
        expected = numeric_vjp(fn, args, i, cotangents)
        np.testing.assert_allclose(np.asarray(grad), expected, rtol=rtol, atol=atol, err_msg=f"argument {i}")
    return out


# ----- naive NN references, written independently of fastconv -----


def _same_pad(size, window, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def naive_conv(x, w, strides=1, padding="valid", dilation_rate=1):
    n, h, wd, cin = x.shape
    kh, kw, _, cout = w.shape
    s, d = strides, dilation_rate
    eh, ew = (kh - 1) * d + 1, (kw - 1) * d + 1
    if padding == "same":
        (pt, pb), (pl, pr) = _same_pad(h, eh, s), _same_pad(wd, ew, s)
    else:
        pt = pb = pl = pr = 0
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = (xp.shape[1] - eh) // s + 1, (xp.shape[2] - ew) // s + 1
    out = np.zeros((n, oh, ow, cout))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    out[:, i, j, :] += xp[:, i * s + a * d, j * s + b * d, :] @ w[a, b]
    return out


def naive_pool(x, pool, strides, padding, kind):
    n, h, w, c = x.shape
    s = strides or pool
    if padding == "same":
        (pt, pb), (pl, pr) = _same_pad(h, pool, s), _same_pad(w, pool, s)
    else:
        pt = pb = pl = pr = 0
    fill = -np.inf if kind == "max" else np.nan
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=fill)
    oh, ow = (xp.shape[1] - pool) // s + 1, (xp.shape[2] - pool) // s + 1
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            window = xp[:, i * s:i * s + pool, j * s:j * s + pool, :]
            out[:, i, j, :] = window.max(axis=(1, 2)) if kind == "max" else np.nanmean(window, axis=(1, 2))
    return out


def tensor(x):
    """x as a recorded Tensor (a watched ndarray stays an ndarray, whose own operators NumPy runs
    unrecorded; a Tensor's operators go through keras.ops)."""
    return ops.add(x, 0.0)


ATTENTION_MASK = np.array([[True, False, True], [True, True, False], [False, True, True]])


def naive_attention(q, k, v, bias=None, mask=None, causal=False, scale=None, cap=None):
    """Attention written with loops over batch and heads, independent of keras.ops."""
    b, t, n, h = q.shape
    s = k.shape[1]
    scale = 1 / np.sqrt(h) if scale is None else scale
    out = np.zeros((b, t, n, v.shape[-1]))
    for i in range(b):
        for j in range(n):
            logits = q[i, :, j] @ k[i, :, j].T * scale
            if cap is not None:
                logits = cap * np.tanh(logits / cap)
            if bias is not None:
                logits = logits + bias
            keep = np.ones((t, s), bool) if mask is None else mask.copy()
            if causal:
                keep &= np.tri(t, s, dtype=bool)
            weights = np.exp(np.where(keep, logits, -np.inf) - logits.max(axis=-1, keepdims=True))
            out[i, :, j] = (weights / weights.sum(-1, keepdims=True)) @ v[i, :, j]
    return out


SPD = arr(3, 3, seed=5) @ arr(3, 3, seed=5).T + np.eye(3)  # symmetric positive definite


def symmetric(x):
    """(x + x^T) / 2: cholesky reads one triangle of a symmetric matrix, so finite differences on a
    single entry need the symmetrization in front to agree with its symmetric gradient."""
    return ops.divide(ops.add(x, ops.swapaxes(x, -1, -2)), 2.0)


def naive_depth_to_space(x, b):
    n, h, w, c = x.shape
    out = np.zeros((n, h * b, w * b, c // (b * b)))
    for i in range(h * b):
        for j in range(w * b):
            depth = ((i % b) * b + j % b) * (c // (b * b))
            out[:, i, j] = x[:, i // b, j // b, depth:depth + c // (b * b)]
    return out


def naive_space_to_depth(x, b):
    n, h, w, c = x.shape
    out = np.zeros((n, h // b, w // b, c * b * b))
    for i in range(h):
        for j in range(w):
            depth = ((i % b) * b + j % b) * c
            out[:, i // b, j // b, depth:depth + c] = x[:, i, j]
    return out


def naive_adaptive(x, size, reduce):
    out = np.zeros((x.shape[0],) + tuple(size) + (x.shape[3],))
    for i in range(size[0]):
        for j in range(size[1]):
            r0, r1 = i * x.shape[1] // size[0], int(np.ceil((i + 1) * x.shape[1] / size[0]))
            c0, c1 = j * x.shape[2] // size[1], int(np.ceil((j + 1) * x.shape[2] / size[1]))
            out[:, i, j] = reduce(x[:, r0:r1, c0:c1], axis=(1, 2))
    return out


def naive_sparsemax(x):
    """Row by row: the threshold tau with sum(max(z - tau, 0)) == 1, by bisection."""
    out = np.zeros_like(x)
    for r, z in enumerate(x):
        low, high = z.min() - 1, z.max()
        for _ in range(200):
            tau = (low + high) / 2
            low, high = (tau, high) if np.maximum(z - tau, 0).sum() > 1 else (low, tau)
        out[r] = np.maximum(z - (low + high) / 2, 0)
    return out


def naive_unfold(x, kernel, dilation, padding, stride):
    """torch.nn.functional.unfold by loops: rows (channel, kernel row, kernel column), columns the positions."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (xp.shape[2] - (kh - 1) * dilation - 1) // sh + 1
    ow = (xp.shape[3] - (kw - 1) * dilation - 1) // sw + 1
    out = np.zeros((x.shape[0], x.shape[1] * kh * kw, oh * ow))
    for c in range(x.shape[1]):
        for i in range(kh):
            for j in range(kw):
                for p in range(oh):
                    for q in range(ow):
                        row, column = p * sh + i * dilation, q * sw + j * dilation
                        out[:, (c * kh + i) * kw + j, p * ow + q] = xp[:, c, row, column]
    return out


def naive_fold(cols, size, kernel):
    """The adjoint of naive_unfold (stride 1, no padding or dilation): patches summed into place."""
    n, depth, _ = cols.shape
    channels = depth // (kernel * kernel)
    out = np.zeros((n, channels) + tuple(size))
    ow = size[1] - kernel + 1
    for c in range(channels):
        for i in range(kernel):
            for j in range(kernel):
                for position in range(cols.shape[2]):
                    p, q = divmod(position, ow)
                    out[:, c, p + i, q + j] += cols[:, (c * kernel + i) * kernel + j, position]
    return out


CTC_LABELS = np.array([[1, 2], [2, 0]])
GAMMA_A = np.array([[0.7, 1.5, 3.0], [2.2, 0.4, 5.0]])  # gammainc is differentiated in x only


def naive_ctc(logits, labels, label_lengths, time_lengths, blank):
    """-log of the summed probability of every path that collapses to the labels (all paths enumerated)."""
    import itertools
    losses = []
    for z, target, n, steps in zip(logits, labels, label_lengths, time_lengths):
        p = np_softmax(z[:steps])
        total = 0.0
        for path in itertools.product(range(z.shape[1]), repeat=steps):
            collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
            if collapsed == list(target[:n]):
                total += np.prod(p[np.arange(steps), path])
        losses.append(-np.log(total))
    return np.array(losses)


def naive_stft(x, sequence_length, stride, fft_length, window, center):
    """Frames of fft_length every stride (reflect-padded by fft_length // 2 when centered), the window
    (periodic hann or hamming, zero-padded to fft_length) applied, then np.fft.rfft: (real, imag)."""
    if center:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(fft_length // 2, fft_length // 2)], mode="reflect")
    n = np.arange(sequence_length)
    if window is None:
        win = np.ones(fft_length)
    else:
        alpha = 0.5 if window == "hann" else 0.54
        left = (fft_length - sequence_length) // 2
        win = np.pad(alpha - (1 - alpha) * np.cos(2 * np.pi * n / sequence_length),
                     (left, fft_length - sequence_length - left))
    count = 1 + (x.shape[-1] - fft_length) // stride
    frames = np.stack([x[..., f * stride:f * stride + fft_length] * win for f in range(count)], axis=-2)
    spectrum = np.fft.rfft(frames, axis=-1)
    return spectrum.real, spectrum.imag


def naive_scan(x, carry):
    ys = []
    for row in x:
        carry, y = carry * row, carry + row
        ys.append(y)
    return carry, np.stack(ys)


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ----- the differentiable ops: (op name, variant, fn, NumPy reference, args) -----
# fn and the reference take the same arguments; the arrays among them are differentiated.

INDEX = np.array([2, 0, 2, 1])  # a repeated index: its gradient must accumulate
LABELS = np.array([2, 0, 1])
ONE_HOT = np.eye(4)[[1, 3, 0]]
SOFT = np_softmax(arr(3, 4, seed=7))
BITS = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])

DIFF_CASES = [
    # element-wise arithmetic, with broadcasting summed back to each input's shape
    ("add", "broadcast", ops.add, np.add, [arr(2, 3, 4), arr(3, 1, seed=1)]),
    ("add", "scalar-array", ops.add, np.add, [arr(1, seed=2), arr(2, 3)]),
    ("subtract", "broadcast", ops.subtract, np.subtract, [arr(4), arr(3, 1, seed=1)]),
    ("multiply", "broadcast", ops.multiply, np.multiply, [arr(2, 1, 4), arr(3, 1, seed=1)]),
    ("divide", "broadcast", ops.divide, np.divide, [arr(2, 3), pos(3, seed=1)]),
    ("true_divide", "", ops.true_divide, np.true_divide, [arr(2, 3), pos(2, 1, seed=1)]),
    ("negative", "", ops.negative, np.negative, [arr(2, 3)]),
    ("power", "both", ops.power, np.power, [pos(2, 3), arr(3, seed=1)]),
    ("power", "int-exponent", lambda x: ops.power(x, 3), lambda x: x ** 3, [arr(2, 3)]),
    ("square", "", ops.square, np.square, [arr(2, 3)]),
    ("sqrt", "", ops.sqrt, np.sqrt, [pos(2, 3)]),
    ("rsqrt", "", ops.rsqrt, lambda x: 1 / np.sqrt(x), [pos(2, 3)]),
    ("reciprocal", "", ops.reciprocal, np.reciprocal, [pos(2, 3)]),
    ("exp", "", ops.exp, np.exp, [arr(2, 3)]),
    ("expm1", "", ops.expm1, np.expm1, [arr(2, 3)]),
    ("log", "", ops.log, np.log, [pos(2, 3)]),
    ("log1p", "", ops.log1p, np.log1p, [pos(2, 3)]),
    ("abs", "", ops.abs, np.abs, [arr(2, 3)]),
    ("absolute", "", ops.absolute, np.abs, [arr(2, 3)]),
    ("tanh", "", ops.tanh, np.tanh, [arr(2, 3)]),
    ("sin", "", ops.sin, np.sin, [arr(2, 3)]),
    ("cos", "", ops.cos, np.cos, [arr(2, 3)]),
    ("erf", "", ops.erf, np.vectorize(math.erf), [arr(2, 3)]),
    ("mod", "", ops.mod, np.mod, [arr(2, 3, low=-3, high=3), pos(3, seed=1)]),
    ("log2", "", ops.log2, np.log2, [pos(2, 3)]),
    ("log10", "", ops.log10, np.log10, [pos(2, 3)]),
    ("sinh", "", ops.sinh, np.sinh, [arr(2, 3)]),
    ("cosh", "", ops.cosh, np.cosh, [arr(2, 3)]),
    ("arctan", "", ops.arctan, np.arctan, [arr(2, 3, low=-3, high=3)]),
    ("arcsin", "", ops.arcsin, np.arcsin, [arr(2, 3, low=-0.9, high=0.9)]),
    ("arccos", "", ops.arccos, np.arccos, [arr(2, 3, low=-0.9, high=0.9)]),
    ("logaddexp", "broadcast", ops.logaddexp, np.logaddexp, [arr(2, 3, low=-50, high=50), arr(3, seed=1)]),
    ("nan_to_num", "", lambda x: ops.nan_to_num(ops.where(x > 0.5, np.inf, ops.where(x < -0.5, np.nan, x)), posinf=9.0),
     lambda x: np.nan_to_num(np.where(x > 0.5, np.inf, np.where(x < -0.5, np.nan, x)), posinf=9.0), [arr(3, 4)]),
    ("tan", "", ops.tan, np.tan, [arr(2, 3)]),
    ("arcsinh", "", ops.arcsinh, np.arcsinh, [arr(2, 3, low=-3, high=3)]),
    ("arccosh", "", ops.arccosh, np.arccosh, [arr(2, 3, low=1.2, high=3)]),
    ("arctanh", "", ops.arctanh, np.arctanh, [arr(2, 3, low=-0.9, high=0.9)]),
    ("cbrt", "", ops.cbrt, np.cbrt, [pos(2, 3)]),
    ("exp2", "", ops.exp2, np.exp2, [arr(2, 3)]),
    ("fabs", "", ops.fabs, np.fabs, [arr(2, 3)]),
    ("deg2rad", "", ops.deg2rad, np.deg2rad, [arr(2, 3)]),
    ("rad2deg", "", ops.rad2deg, np.rad2deg, [arr(2, 3)]),
    ("erfinv", "", ops.erfinv, None, [arr(2, 3, low=-0.99, high=0.99)]),
    ("arctan2", "broadcast", ops.arctan2, np.arctan2, [arr(2, 3), arr(3, seed=1)]),
    ("hypot", "", ops.hypot, np.hypot, [arr(2, 3), arr(2, 3, seed=1)]),
    ("logaddexp2", "", ops.logaddexp2, np.logaddexp2, [arr(2, 3, low=-9, high=9), arr(2, 3, seed=1)]),
    ("divide_no_nan", "", lambda a, b: ops.divide_no_nan(a, ops.multiply(b, np.abs(b) > 0.3)),
     lambda a, b: np.where(np.abs(b) > 0.3, a / np.where(np.abs(b) > 0.3, b, 1), 0), [arr(2, 3), arr(2, 3, seed=1)]),
    ("erfc", "", ops.erfc, lambda x: 1 - np.vectorize(math.erf)(x), [arr(2, 3)]),
    ("sinc", "", ops.sinc, np.sinc, [arr(2, 3, low=-2, high=2)]),
    ("fmax", "", ops.fmax, np.fmax, [arr(2, 3), arr(3, seed=1)]),
    ("fmin", "", ops.fmin, np.fmin, [arr(2, 3), arr(3, seed=1)]),
    ("fmod", "", ops.fmod, np.fmod, [arr(2, 3, low=-3, high=3), pos(3, seed=1)]),
    ("maximum", "broadcast", ops.maximum, np.maximum, [arr(2, 3), arr(3, seed=1)]),
    ("minimum", "broadcast", ops.minimum, np.minimum, [arr(3, 1), arr(3, seed=1)]),
    ("clip", "", lambda x: ops.clip(x, -0.5, 0.4), lambda x: np.clip(x, -0.5, 0.4), [arr(3, 4)]),
    ("clip", "array-bounds", ops.clip, np.clip, [arr(3, 4), arr(4, low=-0.6, high=-0.1, seed=1),
                                                  arr(3, 1, low=0.1, high=0.6, seed=2)]),
    ("clip", "crossed-bounds", ops.clip, np.clip, [arr(3, 4), arr(4, low=-0.5, high=0.5, seed=1),
                                                    arr(3, 1, low=-0.5, high=0.5, seed=2)]),
    ("where", "python-scalar", lambda x: ops.where(x > 0, x, 0), lambda x: np.where(x > 0, x, 0.0), [arr(2, 3)]),
    ("where", "broadcast", lambda x1, x2: ops.where(arr(2, 3, seed=5) > 0, x1, x2),
     lambda x1, x2: np.where(arr(2, 3, seed=5) > 0, x1, x2), [arr(3), arr(2, 1, seed=1)]),
    ("cast", "float64", lambda x: ops.cast(x, "float64"), lambda x: x, [arr(2, 3)]),
    # reductions
    ("sum", "all", ops.sum, np.sum, [arr(2, 3)]),
    ("sum", "axis", lambda x: ops.sum(x, axis=1), lambda x: x.sum(axis=1), [arr(2, 3, 4)]),
    ("sum", "neg-axes-keepdims", lambda x: ops.sum(x, axis=(-1, 0), keepdims=True),
     lambda x: x.sum(axis=(-1, 0), keepdims=True), [arr(2, 3, 4)]),
    ("mean", "all", ops.mean, np.mean, [arr(2, 3)]),
    ("mean", "axis", lambda x: ops.mean(x, axis=-2), lambda x: x.mean(axis=-2), [arr(2, 3, 4)]),
    ("mean", "keepdims", lambda x: ops.mean(x, axis=(0, 2), keepdims=True),
     lambda x: x.mean(axis=(0, 2), keepdims=True), [arr(2, 3, 4)]),
    ("max", "all", ops.max, np.max, [arr(2, 3)]),
    ("max", "axis", lambda x: ops.max(x, axis=-1), lambda x: x.max(axis=-1), [arr(2, 3, 4)]),
    ("max", "keepdims", lambda x: ops.max(x, axis=(0, 1), keepdims=True),
     lambda x: x.max(axis=(0, 1), keepdims=True), [arr(2, 3, 4)]),
    ("min", "axis", lambda x: ops.min(x, axis=0), lambda x: x.min(axis=0), [arr(2, 3)]),
    ("min", "keepdims", lambda x: ops.min(x, axis=1, keepdims=True), lambda x: x.min(axis=1, keepdims=True),
     [arr(2, 3)]),
    ("amax", "", lambda x: ops.amax(x, axis=1), lambda x: x.max(axis=1), [arr(2, 3)]),
    ("amin", "", lambda x: ops.amin(x, axis=1), lambda x: x.min(axis=1), [arr(2, 3)]),
    ("prod", "all", ops.prod, np.prod, [arr(2, 3)]),
    ("prod", "axis", lambda x: ops.prod(x, axis=-1, keepdims=True), lambda x: x.prod(axis=-1, keepdims=True),
     [arr(2, 3, 4)]),
    ("prod", "axes", lambda x: ops.prod(x, axis=(0, 2)), lambda x: x.prod(axis=(0, 2)), [arr(2, 3, 4)]),
    ("var", "all", ops.var, np.var, [arr(2, 3)]),
    ("var", "axis-keepdims", lambda x: ops.var(x, axis=0, keepdims=True), lambda x: x.var(axis=0, keepdims=True),
     [arr(3, 4)]),
    ("std", "axis", lambda x: ops.std(x, axis=-1), lambda x: x.std(axis=-1), [arr(3, 4)]),
    ("logsumexp", "all", ops.logsumexp, lambda x: np.log(np.exp(x).sum()), [arr(2, 3)]),
    ("logsumexp", "axis-keepdims", lambda x: ops.logsumexp(x, axis=-1, keepdims=True),
     lambda x: np.log(np.exp(x).sum(axis=-1, keepdims=True)), [arr(2, 3)]),
    ("logsumexp", "axes", lambda x: ops.logsumexp(x, axis=(0, 2)),
     lambda x: np.log(np.exp(x).sum(axis=(0, 2))), [arr(2, 3, 4)]),
    ("average", "plain", lambda x: ops.average(x, axis=1), lambda x: np.average(x, axis=1), [arr(2, 3)]),
    ("average", "weights-1d", lambda x, w: ops.average(x, axis=-1, weights=w),
     lambda x, w: np.average(x, axis=-1, weights=w), [arr(2, 3), pos(3, seed=1)]),
    ("average", "weights-full", lambda x, w: ops.average(x, weights=w), lambda x, w: np.average(x, weights=w),
     [arr(2, 3), pos(2, 3, seed=1)]),
    ("nansum", "", lambda x: ops.nansum(ops.where(x > 0.5, np.nan, x), axis=1),
     lambda x: np.nansum(np.where(x > 0.5, np.nan, x), axis=1), [arr(3, 4)]),
    ("nanmean", "", lambda x: ops.nanmean(ops.where(x > 0.5, np.nan, x), axis=0, keepdims=True),
     lambda x: np.nanmean(np.where(x > 0.5, np.nan, x), axis=0, keepdims=True), [arr(3, 4, seed=1)]),
    ("nanmax", "", lambda x: ops.nanmax(ops.where(x > 0.5, np.nan, x)),
     lambda x: np.nanmax(np.where(x > 0.5, np.nan, x)), [arr(3, 4)]),
    ("nanmin", "", lambda x: ops.nanmin(ops.where(x < -0.5, np.nan, x), axis=-1),
     lambda x: np.nanmin(np.where(x < -0.5, np.nan, x), axis=-1), [arr(3, 4)]),
    ("ptp", "", lambda x: ops.ptp(x, axis=0), lambda x: np.ptp(x, axis=0), [arr(3, 4)]),
    ("quantile", "linear", lambda x: ops.quantile(x, 0.3), lambda x: np.quantile(x, 0.3), [arr(3, 4)]),
    ("quantile", "levels-axis", lambda x: ops.quantile(x, np.array([0.1, 0.9]), axis=1, keepdims=True),
     lambda x: np.quantile(x, [0.1, 0.9], axis=1, keepdims=True), [arr(3, 5)]),
    ("quantile", "lower-axes", lambda x: ops.quantile(x, 0.4, axis=(0, 2), method="lower"),
     lambda x: np.quantile(x, 0.4, axis=(0, 2), method="lower"), [arr(2, 3, 4)]),
    ("quantile", "higher", lambda x: ops.quantile(x, 0.4, axis=0, method="higher"),
     lambda x: np.quantile(x, 0.4, axis=0, method="higher"), [arr(4, 3)]),
    ("quantile", "nearest", lambda x: ops.quantile(x, 0.7, method="nearest"),
     lambda x: np.quantile(x, 0.7, method="nearest"), [arr(7)]),
    ("quantile", "midpoint", lambda x: ops.quantile(x, 0.5, axis=-1, method="midpoint"),
     lambda x: np.quantile(x, 0.5, axis=-1, method="midpoint"), [arr(2, 4)]),
    ("percentile", "", lambda x: ops.percentile(x, 25, axis=0), lambda x: np.percentile(x, 25, axis=0), [arr(5, 2)]),
    ("median", "even", lambda x: ops.median(x, axis=1), lambda x: np.median(x, axis=1), [arr(3, 4)]),
    ("median", "odd-keepdims", lambda x: ops.median(x, keepdims=True), lambda x: np.median(x, keepdims=True),
     [arr(3, 3)]),
    ("nancumsum", "", lambda x: ops.nancumsum(ops.where(x > 0.5, np.nan, x), axis=1),
     lambda x: np.nancumsum(np.where(x > 0.5, np.nan, x), axis=1), [arr(3, 4)]),
    ("nancumprod", "", lambda x: ops.nancumprod(ops.where(x > 0.5, np.nan, x)),
     lambda x: np.nancumprod(np.where(x > 0.5, np.nan, x)), [arr(3, 2)]),
    ("nanprod", "", lambda x: ops.nanprod(ops.where(x > 0.5, np.nan, x), axis=0),
     lambda x: np.nanprod(np.where(x > 0.5, np.nan, x), axis=0), [arr(3, 4)]),
    ("nanvar", "", lambda x: ops.nanvar(ops.where(x > 0.5, np.nan, x), axis=1, keepdims=True),
     lambda x: np.nanvar(np.where(x > 0.5, np.nan, x), axis=1, keepdims=True), [arr(3, 4)]),
    ("nanstd", "", lambda x: ops.nanstd(ops.where(x > 0.5, np.nan, x)),
     lambda x: np.nanstd(np.where(x > 0.5, np.nan, x)), [arr(3, 4)]),
    ("segment_min", "", lambda x: ops.segment_min(x, np.array([1, 0, 1, 1]), num_segments=2),
     lambda x: np.stack([x[1], x[[0, 2, 3]].min(0)]), [arr(4, 2)]),
    ("trapezoid", "dx", lambda y: ops.trapezoid(y, dx=0.5), lambda y: np.trapezoid(y, dx=0.5), [arr(2, 4)]),
    ("trapezoid", "x-axis", lambda y, x: ops.trapezoid(y, x, axis=0), lambda y, x: np.trapezoid(y, x, axis=0),
     [arr(4, 2), np.array([0.0, 0.5, 1.5, 2.0])]),
    ("cumsum", "flat", ops.cumsum, np.cumsum, [arr(2, 3)]),
    ("cumsum", "axis", lambda x: ops.cumsum(x, axis=-1), lambda x: np.cumsum(x, axis=-1), [arr(2, 3)]),
    ("norm", "all", ops.norm, np.linalg.norm, [arr(2, 3)]),
    ("norm", "axis", lambda x: ops.norm(x, axis=-1, keepdims=True),
     lambda x: np.linalg.norm(x, axis=-1, keepdims=True), [arr(2, 3)]),
    ("norm", "fro", lambda x: ops.norm(x, ord="fro", axis=(0, 1)), lambda x: np.linalg.norm(x, "fro", axis=(0, 1)),
     [arr(2, 3, 2)]),
    ("norm", "ord1", lambda x: ops.norm(x, ord=1, axis=0), lambda x: np.linalg.norm(x, 1, axis=0), [arr(3, 2)]),
    ("norm", "ord3-list-axis", lambda x: ops.norm(x, ord=3, axis=[1]), lambda x: np.linalg.norm(x, 3, axis=1),
     [arr(3, 2)]),
    ("norm", "inf", lambda x: ops.norm(x, ord=np.inf), lambda x: np.linalg.norm(x, np.inf), [arr(5)]),
    ("norm", "-inf", lambda x: ops.norm(x, ord=-np.inf, axis=-1), lambda x: np.linalg.norm(x, -np.inf, axis=-1),
     [arr(2, 3)]),
    # shapes
    ("reshape", "", lambda x: ops.reshape(x, (3, -1)), lambda x: x.reshape(3, -1), [arr(2, 3, 2)]),
    ("transpose", "default", ops.transpose, np.transpose, [arr(2, 3, 4)]),
    ("transpose", "axes", lambda x: ops.transpose(x, (1, -1, 0)), lambda x: np.transpose(x, (1, 2, 0)),
     [arr(2, 3, 4)]),
    ("expand_dims", "", lambda x: ops.expand_dims(x, -1), lambda x: x[..., None], [arr(2, 3)]),
    ("squeeze", "", lambda x: ops.squeeze(x, 1), lambda x: x[:, 0], [arr(2, 1, 3)]),
    ("squeeze", "all", ops.squeeze, np.squeeze, [arr(1, 3, 1)]),
    ("flatten", "", ops.flatten, np.ravel, [arr(2, 3)]),
    ("ravel", "", ops.ravel, np.ravel, [arr(2, 3)]),
    ("concatenate", "", lambda a, b: ops.concatenate([a, b], axis=-1),
     lambda a, b: np.concatenate([a, b], axis=-1), [arr(2, 3), arr(2, 2, seed=1)]),
    ("stack", "", lambda a, b: ops.stack(x=[a, b], axis=1), lambda a, b: np.stack([a, b], axis=1),
     [arr(2, 3), arr(2, 3, seed=1)]),
    ("stack", "neg-axis", lambda a, b: ops.stack([a, b], axis=-1), lambda a, b: np.stack([a, b], axis=-1),
     [arr(2, 3), arr(2, 3, seed=1)]),
    ("split", "sections", lambda x: ops.split(x, 3, axis=1), lambda x: np.split(x, 3, axis=1), [arr(2, 6)]),
    ("split", "indices", lambda x: ops.split(x, [1, 3], axis=-1), lambda x: np.split(x, [1, 3], axis=-1),
     [arr(2, 5)]),
    ("take", "flat", lambda x: ops.take(x, INDEX), lambda x: np.take(x, INDEX), [arr(2, 3)]),
    ("take", "axis", lambda x: ops.take(x, INDEX, axis=1), lambda x: np.take(x, INDEX, axis=1), [arr(2, 3, 2)]),
    ("take", "2d-indices", lambda x: ops.take(x, INDEX.reshape(2, 2), axis=-1),
     lambda x: np.take(x, INDEX.reshape(2, 2), axis=-1), [arr(2, 3)]),
    ("take_along_axis", "", lambda x: ops.take_along_axis(x, np.array([[0, 0, 2], [1, 2, 1]]), axis=1),
     lambda x: np.take_along_axis(x, np.array([[0, 0, 2], [1, 2, 1]]), axis=1), [arr(2, 3)]),
    ("take_along_axis", "flat", lambda x: ops.take_along_axis(x, np.array([5, 0, 5]), axis=None),
     lambda x: np.take_along_axis(x, np.array([5, 0, 5]), axis=None), [arr(2, 3)]),
    ("tile", "", lambda x: ops.tile(x, (2, 1, 3)), lambda x: np.tile(x, (2, 1, 3)), [arr(2, 3)]),
    ("repeat", "axis", lambda x: ops.repeat(x, 2, axis=-1), lambda x: np.repeat(x, 2, axis=-1), [arr(2, 3)]),
    ("repeat", "flat", lambda x: ops.repeat(x, 3), lambda x: np.repeat(x, 3), [arr(2, 2)]),
    ("repeat", "counts", lambda x: ops.repeat(x, [2, 0, 3], axis=0), lambda x: np.repeat(x, [2, 0, 3], axis=0),
     [arr(3, 2)]),
    ("broadcast_to", "", lambda x: ops.broadcast_to(x, (2, 3, 4)), lambda x: np.broadcast_to(x, (2, 3, 4)),
     [arr(3, 1)]),
    ("pad", "", lambda x: ops.pad(x, ((1, 0), (2, 1))), lambda x: np.pad(x, ((1, 0), (2, 1))), [arr(2, 3)]),
    ("pad", "constant-values", lambda x: ops.pad(x, 1, constant_values=2.0),
     lambda x: np.pad(x, 1, constant_values=2.0), [arr(2, 3)]),
    ("pad", "reflect", lambda x: ops.pad(x, ((2, 1), (0, 2)), mode="reflect"),
     lambda x: np.pad(x, ((2, 1), (0, 2)), mode="reflect"), [arr(3, 3)]),
    ("pad", "symmetric", lambda x: ops.pad(x, ((1, 2), (2, 0)), mode="symmetric"),
     lambda x: np.pad(x, ((1, 2), (2, 0)), mode="symmetric"), [arr(2, 3)]),
    ("pad", "edge", lambda x: ops.pad(x, 2, mode="edge"), lambda x: np.pad(x, 2, mode="edge"), [arr(2, 3)]),
    ("pad", "wrap", lambda x: ops.pad(x, ((0, 3), (1, 1)), mode="wrap"),
     lambda x: np.pad(x, ((0, 3), (1, 1)), mode="wrap"), [arr(2, 3)]),
    ("get_item", "slices", lambda x: ops.get_item(x, (slice(1, None), slice(None, None, 2))),
     lambda x: x[1:, ::2], [arr(3, 5)]),
    ("get_item", "operator-slices", lambda x: tensor(x)[1:, ::-2], lambda x: x[1:, ::-2], [arr(3, 5)]),
    ("get_item", "int-array-repeated", lambda x: tensor(x)[INDEX], lambda x: x[INDEX], [arr(3, 2)]),
    ("get_item", "list-repeated", lambda x: tensor(x)[[1, 1, 0]], lambda x: x[[1, 1, 0]], [arr(3, 2)]),
    ("get_item", "mixed", lambda x: tensor(x)[INDEX, 1:], lambda x: x[INDEX, 1:], [arr(3, 3)]),
    ("get_item", "two-int-arrays", lambda x: tensor(x)[INDEX, INDEX[::-1]], lambda x: x[INDEX, INDEX[::-1]],
     [arr(3, 3)]),
    ("get_item", "int-and-newaxis", lambda x: tensor(x)[-1, None, ..., 0], lambda x: x[-1, None, ..., 0],
     [arr(2, 3, 4)]),
    ("get_item", "bool-mask", lambda x: ops.get_item(x, arr(2, 3, seed=3) > 0),
     lambda x: x[arr(2, 3, seed=3) > 0], [arr(2, 3)]),
    ("get_item", "scalar", lambda x: tensor(x)[1, 2], lambda x: x[1, 2], [arr(2, 3)]),
    ("slice", "", lambda x: ops.slice(x, (1, 0), (2, 2)), lambda x: x[1:3, 0:2], [arr(3, 3)]),
    ("flip", "", lambda x: ops.flip(x, axis=-1), lambda x: np.flip(x, -1), [arr(2, 3)]),
    ("swapaxes", "", lambda x: ops.swapaxes(x, 0, -1), lambda x: np.swapaxes(x, 0, -1), [arr(2, 3, 4)]),
    ("moveaxis", "", lambda x: ops.moveaxis(x, 0, -1), lambda x: np.moveaxis(x, 0, -1), [arr(2, 3, 4)]),
    ("hstack", "", lambda a, b: ops.hstack([a, b]), lambda a, b: np.hstack([a, b]), [arr(2, 3), arr(2, 1, seed=1)]),
    ("hstack", "1d", lambda a, b: ops.hstack([a, b]), lambda a, b: np.hstack([a, b]), [arr(3), arr(2, seed=1)]),
    ("vstack", "", lambda a, b: ops.vstack([a, b]), lambda a, b: np.vstack([a, b]), [arr(3), arr(2, 3, seed=1)]),
    ("roll", "axis", lambda x: ops.roll(x, -1, axis=1), lambda x: np.roll(x, -1, axis=1), [arr(2, 3)]),
    ("roll", "flat", lambda x: ops.roll(x, 4), lambda x: np.roll(x, 4), [arr(2, 3)]),
    ("roll", "axes", lambda x: ops.roll(x, (1, 2), axis=(0, 1)), lambda x: np.roll(x, (1, 2), axis=(0, 1)),
     [arr(2, 3)]),
    ("rot90", "", ops.rot90, np.rot90, [arr(2, 3, 2)]),
    ("rot90", "k-axes", lambda x: ops.rot90(x, k=3, axes=(2, 0)), lambda x: np.rot90(x, k=3, axes=(2, 0)),
     [arr(2, 3, 2)]),
    ("rot90", "k2", lambda x: ops.rot90(x, 2), lambda x: np.rot90(x, 2), [arr(2, 3)]),
    ("fliplr", "", ops.fliplr, np.fliplr, [arr(2, 3)]),
    ("flipud", "", ops.flipud, np.flipud, [arr(2, 3)]),
    ("diff", "", ops.diff, np.diff, [arr(2, 4)]),
    ("diff", "n-axis", lambda x: ops.diff(x, n=2, axis=0), lambda x: np.diff(x, n=2, axis=0), [arr(4, 2)]),
    ("inner", "", ops.inner, np.inner, [arr(2, 3), arr(4, 3, seed=1)]),
    ("vdot", "", ops.vdot, np.vdot, [arr(2, 3), arr(3, 2, seed=1)]),
    ("column_stack", "", lambda a, b: ops.column_stack([a, b]), lambda a, b: np.column_stack([a, b]),
     [arr(3), arr(3, 2, seed=1)]),
    ("dstack", "", lambda a, b: ops.dstack([a, b]), lambda a, b: np.dstack([a, b]), [arr(2, 3), arr(2, 3, seed=1)]),
    ("array_split", "", lambda x: ops.array_split(x, 3, axis=1), lambda x: np.array_split(x, 3, axis=1), [arr(2, 5)]),
    ("append", "flat", ops.append, np.append, [arr(2, 2), arr(3, seed=1)]),
    ("append", "axis", lambda a, b: ops.append(a, b, axis=0), lambda a, b: np.append(a, b, axis=0),
     [arr(2, 2), arr(1, 2, seed=1)]),
    ("map", "", lambda x: ops.map(lambda row: ops.sum(row * row), x), lambda x: (x * x).sum(1), [arr(3, 2)]),
    ("vectorized_map", "", lambda x: ops.vectorized_map(ops.softmax, x), np_softmax, [arr(3, 2)]),
    ("scan", "cumulative", lambda x, c: ops.scan(lambda carry, row: (carry * row, carry + row), c, x),
     lambda x, c: naive_scan(x, c), [arr(3, 2), arr(2, seed=1)]),
    ("switch", "", lambda x: ops.switch(5, [ops.exp, ops.sin], x), np.sin, [arr(2, 3)]),
    ("inv", "", ops.inv, np.linalg.inv, [np.eye(3) * 2 + arr(3, 3)]),
    ("inv", "batched", ops.inv, np.linalg.inv, [np.eye(2) * 2 + arr(2, 2, 2)]),
    ("det", "", ops.det, np.linalg.det, [np.eye(3) + arr(3, 3)]),
    ("det", "batched", ops.det, np.linalg.det, [np.eye(2) + arr(3, 2, 2)]),
    ("slogdet", "", lambda x: ops.slogdet(x)[1], lambda x: np.linalg.slogdet(x)[1], [np.eye(3) + arr(3, 3)]),
    ("logdet", "", ops.logdet, lambda x: np.log(np.linalg.det(x)), [np.eye(3) * 2 + arr(3, 3) * 0.3]),
    ("solve", "matrix", ops.solve, np.linalg.solve, [np.eye(3) * 2 + arr(3, 3), arr(3, 2, seed=1)]),
    ("solve", "vector-batched", ops.solve, lambda a, b: np.linalg.solve(a, b[..., None])[..., 0],
     [np.eye(2) * 2 + arr(2, 2, 2), arr(2, 2, seed=1)]),
    ("matrix_power", "", lambda x: ops.matrix_power(x, 3), lambda x: np.linalg.matrix_power(x, 3), [arr(3, 3)]),
    ("matrix_power", "negative", lambda x: ops.matrix_power(x, -2), lambda x: np.linalg.matrix_power(x, -2),
     [np.eye(2) * 2 + arr(2, 2)]),
    ("cholesky", "", lambda x: ops.cholesky(symmetric(x)), lambda x: np.linalg.cholesky((x + x.T) / 2), [SPD]),
    ("cholesky", "upper-batched", lambda x: ops.cholesky(symmetric(x), upper=True),
     lambda x: np.swapaxes(np.linalg.cholesky((x + np.swapaxes(x, -1, -2)) / 2), -1, -2),
     [np.stack([SPD, SPD * 2 + np.eye(3)])]),
    ("cross", "", ops.cross, np.cross, [arr(2, 3), arr(3, seed=1)]),
    ("cross", "axes", lambda a, b: ops.cross(a, b, axisa=0, axisb=1, axisc=0),
     lambda a, b: np.cross(a, b, axisa=0, axisb=1, axisc=0), [arr(3, 2), arr(2, 3, seed=1)]),
    ("depth_to_space", "", lambda x: ops.depth_to_space(x, 2), lambda x: naive_depth_to_space(x, 2),
     [arr(1, 2, 3, 8)]),
    ("space_to_depth", "", lambda x: ops.space_to_depth(x, 2),
     lambda x: naive_space_to_depth(x, 2), [arr(2, 4, 2, 2)]),
    ("hsplit", "", lambda x: ops.hsplit(x, 2), lambda x: np.hsplit(x, 2), [arr(2, 4)]),
    ("vsplit", "", lambda x: ops.vsplit(x, [1]), lambda x: np.vsplit(x, [1]), [arr(3, 2)]),
    ("dsplit", "", lambda x: ops.dsplit(x, 2), lambda x: np.dsplit(x, 2), [arr(1, 2, 4)]),
    ("kron", "", ops.kron, np.kron, [arr(2, 3), arr(2, 2, seed=1)]),
    ("kron", "ranks", ops.kron, np.kron, [arr(3), arr(2, 2, seed=1)]),
    ("real", "", ops.real, np.real, [arr(2, 3)]),
    ("conj", "", ops.conj, np.conj, [arr(2, 3)]),
    ("conjugate", "", ops.conjugate, np.conjugate, [arr(2, 3)]),
    ("ldexp", "", lambda x: ops.ldexp(x, np.array([1, -2, 3])), lambda x: np.ldexp(x, np.array([1, -2, 3])),
     [arr(2, 3)]),
    ("diagflat", "", lambda x: ops.diagflat(x, -1), lambda x: np.diagflat(x, -1), [arr(2, 2)]),
    ("cdist", "", ops.cdist, lambda x, y: np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1)),
     [arr(3, 2), arr(4, 2, seed=1)]),
    ("extract_sequences", "", lambda x: ops.extract_sequences(x, 3, 2),
     lambda x: np.stack([x[..., 0:3], x[..., 2:5]], axis=-2), [arr(2, 6)]),
    ("associative_scan", "", lambda x: ops.associative_scan(ops.add, x, axis=1), lambda x: np.cumsum(x, axis=1),
     [arr(2, 4)]),
    ("associative_scan", "reverse-pytree", lambda a, b: ops.associative_scan(
        lambda p, q: (ops.multiply(p[0], q[0]), ops.maximum(p[1], q[1])), (a, b), reverse=True),
     lambda a, b: (np.flip(np.cumprod(np.flip(a, 0), 0), 0), np.flip(np.maximum.accumulate(np.flip(b, 0), 0), 0)),
     [arr(4, 2), arr(4, 2, seed=1)]),
    ("vectorize", "elementwise", lambda x, y: ops.vectorize(lambda a, b: a * b + 1.0)(x, y), lambda x, y: x * y + 1,
     [arr(3, 2), arr(3, 2, seed=1)]),
    ("vectorize", "signature", lambda x, y: ops.vectorize(lambda a, b: ops.sum(a * b), signature="(n),(n)->()")(x, y),
     lambda x, y: (x * y).sum(-1), [arr(2, 3, 2), arr(2, 3, 2, seed=1)]),
    ("solve_triangular", "", lambda a, b: ops.solve_triangular(a, b, lower=True),
     lambda a, b: np.linalg.solve(np.tril(a), b), [np.eye(3) * 2 + arr(3, 3), arr(3, 2, seed=1)]),
    ("cholesky_inverse", "", ops.cholesky_inverse, lambda x: np.linalg.inv(np.tril(x) @ np.tril(x).T),
     [np.eye(3) * 2 + arr(3, 3)]),
    ("cholesky_inverse", "upper", lambda x: ops.cholesky_inverse(x, upper=True),
     lambda x: np.linalg.inv(np.triu(x).T @ np.triu(x)), [np.eye(3) * 2 + arr(3, 3)]),
    ("tril", "", ops.tril, np.tril, [arr(2, 3, 4)]),
    ("tril", "k", lambda x: ops.tril(x, -1), lambda x: np.tril(x, -1), [arr(3, 4)]),
    ("triu", "", ops.triu, np.triu, [arr(4, 3)]),
    ("triu", "k", lambda x: ops.triu(x, 2), lambda x: np.triu(x, 2), [arr(2, 3, 4)]),
    ("diagonal", "", ops.diagonal, np.diagonal, [arr(3, 4)]),
    ("diagonal", "offset-axes", lambda x: ops.diagonal(x, -1, 2, 0), lambda x: np.diagonal(x, -1, 2, 0),
     [arr(3, 2, 4)]),
    ("diag", "from-vector", lambda x: ops.diag(x, 1), lambda x: np.diag(x, 1), [arr(3)]),
    ("diag", "from-matrix", lambda x: ops.diag(x, -1), lambda x: np.diag(x, -1), [arr(3, 3)]),
    ("trace", "", ops.trace, np.trace, [arr(3, 4)]),
    ("trace", "offset-axes", lambda x: ops.trace(x, 1, 1, 2), lambda x: np.trace(x, 1, 1, 2), [arr(2, 3, 3)]),
    ("unstack", "", lambda x: ops.unstack(x, axis=1), lambda x: [x[:, i] for i in range(3)], [arr(2, 3)]),
    ("cumprod", "axis", lambda x: ops.cumprod(x, axis=-1), lambda x: np.cumprod(x, axis=-1), [arr(2, 4)]),
    ("cumprod", "flat-with-zero", ops.cumprod, np.cumprod, [np.array([[0.5, -1.5], [0.0, 2.0], [1.2, 0.7]])]),
    ("slice_update", "", lambda x, u: ops.slice_update(x, (1, 0), u),
     lambda x, u: np.concatenate([x[:1], np.concatenate([u, x[1:3, 2:]], 1), x[3:]]), [arr(4, 4), arr(2, 2, seed=1)]),
    ("scatter", "repeated", lambda v: ops.scatter(np.array([[0, 1], [2, 0], [0, 1]]), v, (3, 2)),
     lambda v: np.array([[0, v[0] + v[2]], [0, 0], [v[1], 0]]), [arr(3)]),
    ("scatter_update", "replace-rows", lambda x, u: ops.scatter_update(x, np.array([[2], [0]]), u),
     lambda x, u: np.stack([u[1], x[1], u[0], x[3]]), [arr(4, 2), arr(2, 2, seed=1)]),
    ("scatter_update", "add", lambda x, u: ops.scatter_update(x, np.array([[1, 1], [1, 1], [0, 2]]), u, "add"),
     lambda x, u: x + np.array([[0, 0, u[2]], [0, u[0] + u[1], 0]]), [arr(2, 3), arr(3, seed=1)]),
    ("segment_sum", "", lambda x: ops.segment_sum(x, np.array([1, 0, 1, 3])),
     lambda x: np.stack([x[1], x[0] + x[2], np.zeros(2), x[3]]), [arr(4, 2)]),
    ("segment_max", "", lambda x: ops.segment_max(x, np.array([1, 0, 1, 1]), num_segments=2),
     lambda x: np.stack([x[1], x[[0, 2, 3]].max(0)]), [arr(4, 2)]),
    ("meshgrid", "xy", lambda a, b, c: ops.meshgrid(a, b, c), lambda a, b, c: np.meshgrid(a, b, c),
     [arr(2), arr(3, seed=1), arr(2, seed=2)]),
    ("meshgrid", "ij", lambda a, b: ops.meshgrid(a, b, indexing="ij"), lambda a, b: np.meshgrid(a, b, indexing="ij"),
     [arr(2), arr(3, seed=1)]),
    ("select", "", lambda x, y: ops.select([x > 0.3, x < -0.3], [x, y], default=1.0),
     lambda x, y: np.select([x > 0.3, x < -0.3], [x, y], default=1.0), [arr(3, 4), arr(3, 4, seed=1)]),
    ("copy", "", ops.copy, np.copy, [arr(2, 3)]),
    ("sort", "", lambda x: ops.sort(x, axis=0), lambda x: np.sort(x, axis=0), [arr(3, 4)]),
    ("top_k", "", lambda x: ops.top_k(x, 2)[0], lambda x: -np.sort(-x, axis=-1)[..., :2], [arr(3, 4)]),
    # linear algebra
    ("matmul", "2d", ops.matmul, np.matmul, [arr(2, 3), arr(3, 4, seed=1)]),
    ("matmul", "vector-matrix", ops.matmul, np.matmul, [arr(3), arr(3, 4, seed=1)]),
    ("matmul", "matrix-vector", ops.matmul, np.matmul, [arr(2, 3), arr(3, seed=1)]),
    ("matmul", "vector-vector", ops.matmul, np.matmul, [arr(3), arr(3, seed=1)]),
    ("matmul", "batched", ops.matmul, np.matmul, [arr(2, 2, 3), arr(2, 3, 4, seed=1)]),
    ("matmul", "batched-broadcast", ops.matmul, np.matmul, [arr(2, 1, 2, 3), arr(3, 3, 2, seed=1)]),
    ("matmul", "vector-batched", ops.matmul, np.matmul, [arr(3), arr(2, 3, 4, seed=1)]),
    ("matmul", "batched-vector", ops.matmul, np.matmul, [arr(2, 4, 3), arr(3, seed=1)]),
    ("matmul", "operator", lambda a, b: tensor(a) @ b, np.matmul, [arr(2, 3), arr(3, 2, seed=1)]),
    ("matmul", "reflected-operator", lambda a, b: a @ tensor(b), np.matmul, [arr(2, 3), arr(3, 2, seed=1)]),
    ("dot", "2d", ops.dot, np.dot, [arr(2, 3), arr(3, 4, seed=1)]),
    ("dot", "nd", ops.dot, np.dot, [arr(2, 3), arr(2, 3, 4, seed=1)]),
    ("dot", "scalar", ops.dot, np.dot, [arr(2, 3), np.array(1.5)]),
    ("tensordot", "int", lambda a, b: ops.tensordot(a, b, axes=2), lambda a, b: np.tensordot(a, b, axes=2),
     [arr(2, 3, 4), arr(3, 4, 2, seed=1)]),
    ("tensordot", "lists", lambda a, b: ops.tensordot(a, b, axes=([0, 2], [1, 0])),
     lambda a, b: np.tensordot(a, b, axes=([0, 2], [1, 0])), [arr(2, 3, 4), arr(4, 2, 3, seed=1)]),
    ("outer", "", ops.outer, np.outer, [arr(3), arr(2, 2, seed=1)]),
    ("einsum", "matmul", lambda a, b: ops.einsum("ij,jk->ik", a, b), lambda a, b: np.einsum("ij,jk->ik", a, b),
     [arr(2, 3), arr(3, 4, seed=1)]),
    ("einsum", "implicit", lambda a, b: ops.einsum("ij,jk", a, b), lambda a, b: np.einsum("ij,jk", a, b),
     [arr(2, 3), arr(3, 4, seed=1)]),
    ("einsum", "transpose", lambda a: ops.einsum("ij->ji", a), lambda a: a.T, [arr(2, 3)]),
    ("einsum", "trace", lambda a: ops.einsum("ii->", a), np.trace, [arr(3, 3)]),
    ("einsum", "diagonal", lambda a: ops.einsum("ii->i", a), np.diagonal, [arr(3, 3)]),
    ("einsum", "outer", lambda a, b: ops.einsum("i,j->ij", a, b), np.outer, [arr(3), arr(2, seed=1)]),
    ("einsum", "sum-axis", lambda a: ops.einsum("ij->j", a), lambda a: a.sum(0), [arr(2, 3)]),
    ("einsum", "summed-letter", lambda a, b: ops.einsum("ij,k->k", a, b),
     lambda a, b: np.einsum("ij,k->k", a, b), [arr(2, 3), arr(4, seed=1)]),
    ("einsum", "batched", lambda a, b: ops.einsum("bij,bjk->bik", a, b), np.matmul,
     [arr(2, 2, 3), arr(2, 3, 2, seed=1)]),
    ("einsum", "spaces-dot", lambda a, b: ops.einsum("i, i -> ", a, b), np.dot, [arr(3), arr(3, seed=1)]),
    ("einsum", "three-operands", lambda a, b, c: ops.einsum("ij,jk,kl->il", a, b, c),
     lambda a, b, c: a @ b @ c, [arr(2, 3), arr(3, 2, seed=1), arr(2, 2, seed=2)]),
    ("einsum", "ellipsis-batched", lambda a, b: ops.einsum("...ij,...jk->...ik", a, b), np.matmul,
     [arr(2, 2, 3), arr(2, 3, 2, seed=1)]),
    ("einsum", "ellipsis-broadcast", lambda a, b: ops.einsum("...ij,jk->...ik", a, b), np.matmul,
     [arr(2, 2, 2, 3), arr(3, 2, seed=1)]),
    ("einsum", "ellipsis-implicit", lambda a, b: ops.einsum("i...,i...", a, b),
     lambda a, b: np.einsum("i...,i...", a, b), [arr(3, 2), arr(3, 2, seed=1)]),
    ("einsum", "ellipsis-sum", lambda a: ops.einsum("...i->...", a), lambda a: a.sum(-1), [arr(2, 3, 2)]),
    ("einsum", "trace-times", lambda a, b: ops.einsum("ii,ij->j", a, b), lambda a, b: np.einsum("ii,ij->j", a, b),
     [arr(3, 3), arr(3, 2, seed=1)]),
    # activations
    ("relu", "", ops.relu, lambda x: np.maximum(x, 0), [arr(3, 4)]),
    ("relu6", "", ops.relu6, lambda x: np.clip(x, 0, 6), [arr(3, 4, low=-3, high=9)]),
    ("leaky_relu", "default", ops.leaky_relu, lambda x: np.where(x > 0, x, 0.2 * x), [arr(3, 4)]),
    ("leaky_relu", "slope", lambda x: ops.leaky_relu(x, negative_slope=0.1), lambda x: np.where(x > 0, x, 0.1 * x),
     [arr(3, 4)]),
    ("elu", "", lambda x: ops.elu(x, alpha=0.7), lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1)), [arr(3, 4)]),
    ("selu", "", ops.selu,
     lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1)), [arr(3, 4)]),
    ("gelu", "approximate", ops.gelu,
     lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))), [arr(3, 4, low=-3, high=3)]),
    ("gelu", "exact", lambda x: ops.gelu(x, approximate=False),
     lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2))), [arr(3, 4, low=-3, high=3)]),
    ("silu", "", ops.silu, lambda x: x * np_sigmoid(x), [arr(3, 4, low=-4, high=4)]),
    ("swish", "", ops.swish, lambda x: x * np_sigmoid(x), [arr(3, 4)]),
    ("sigmoid", "", ops.sigmoid, np_sigmoid, [arr(3, 4, low=-30, high=30)]),
    ("hard_sigmoid", "", ops.hard_sigmoid, lambda x: np.clip(x / 6 + 0.5, 0, 1), [arr(3, 4, low=-5, high=5)]),
    ("softmax", "", ops.softmax, np_softmax, [arr(3, 4, low=-3, high=3)]),
    ("softmax", "axis", lambda x: ops.softmax(x, axis=0), lambda x: np_softmax(x, 0), [arr(3, 4)]),
    ("log_softmax", "", ops.log_softmax, lambda x: np.log(np_softmax(x)), [arr(3, 4, low=-3, high=3)]),
    ("log_softmax", "axis", lambda x: ops.log_softmax(x, axis=-2), lambda x: np.log(np_softmax(x, -2)),
     [arr(3, 4, 2)]),
    ("softplus", "", ops.softplus, lambda x: np.log1p(np.exp(x)), [arr(3, 4, low=-30, high=30)]),
    ("softsign", "", ops.softsign, lambda x: x / (1 + np.abs(x)), [arr(3, 4)]),
    ("log_sigmoid", "", ops.log_sigmoid, lambda x: np.log(np_sigmoid(x)), [arr(3, 4, low=-5, high=5)]),
    ("hard_silu", "", ops.hard_silu, lambda x: x * np.clip(x / 6 + 0.5, 0, 1), [arr(3, 4, low=-5, high=5)]),
    ("hard_swish", "", ops.hard_swish, lambda x: x * np.clip(x / 6 + 0.5, 0, 1), [arr(3, 4, low=-5, high=5)]),
    ("hard_tanh", "", ops.hard_tanh, lambda x: np.clip(x, -1, 1), [arr(3, 4, low=-2, high=2)]),
    ("celu", "", lambda x: ops.celu(x, alpha=0.5), lambda x: np.where(x > 0, x, 0.5 * np.expm1(x / 0.5)),
     [arr(3, 4, low=-2, high=2)]),
    ("glu", "", lambda x: ops.glu(x, axis=0), lambda x: x[:2] * np_sigmoid(x[2:]), [arr(4, 3)]),
    ("squareplus", "", lambda x: ops.squareplus(x, b=2), lambda x: (x + np.sqrt(x * x + 2)) / 2, [arr(3, 4)]),
    ("soft_shrink", "", ops.soft_shrink, lambda x: np.sign(x) * np.maximum(np.abs(x) - 0.5, 0), [arr(3, 4)]),
    ("hard_shrink", "", lambda x: ops.hard_shrink(x, 0.3), lambda x: np.where(np.abs(x) > 0.3, x, 0), [arr(3, 4)]),
    ("tanh_shrink", "", ops.tanh_shrink, lambda x: x - np.tanh(x), [arr(3, 4)]),
    ("threshold", "", lambda x: ops.threshold(x, 0.2, -1.0), lambda x: np.where(x > 0.2, x, -1.0), [arr(3, 4)]),
    ("sparse_plus", "", ops.sparse_plus, lambda x: np.where(x <= -1, 0, np.where(x >= 1, x, (x + 1) ** 2 / 4)),
     [arr(3, 4, low=-2, high=2)]),
    ("sparse_sigmoid", "", ops.sparse_sigmoid, lambda x: np.clip((x + 1) / 2, 0, 1), [arr(3, 4, low=-2, high=2)]),
    # convolution and pooling (float64 runs fastconv.reference; float32 is checked separately below)
    ("conv", "valid", ops.conv, naive_conv, [arr(2, 5, 5, 2), arr(3, 3, 2, 3, seed=1)]),
    ("conv", "same-strided", lambda x, w: ops.conv(x, w, strides=2, padding="same"),
     lambda x, w: naive_conv(x, w, 2, "same"), [arr(1, 5, 6, 2), arr(3, 2, 2, 2, seed=1)]),
    ("conv", "dilated", lambda x, w: ops.conv(x, w, padding="same", dilation_rate=2),
     lambda x, w: naive_conv(x, w, 1, "same", 2), [arr(1, 6, 5, 1), arr(2, 3, 1, 2, seed=1)]),
    ("conv_transpose", "valid", lambda x, w: ops.conv_transpose(x, w, strides=2),
     None, [arr(1, 3, 3, 2), arr(3, 3, 2, 2, seed=1)]),
    ("conv_transpose", "same", lambda x, w: ops.conv_transpose(x, w, strides=2, padding="same"),
     None, [arr(1, 3, 2, 2), arr(3, 2, 1, 2, seed=1)]),
    ("adaptive_average_pool", "", lambda x: ops.adaptive_average_pool(x, (2, 3)),
     lambda x: naive_adaptive(x, (2, 3), np.mean), [arr(2, 5, 7, 2)]),
    ("adaptive_max_pool", "", lambda x: ops.adaptive_max_pool(x, 3), lambda x: naive_adaptive(x, (3, 3), np.max),
     [arr(1, 5, 4, 2)]),
    ("psnr", "", lambda a, b: ops.psnr(a, b, 2.0),
     lambda a, b: 20 * np.log10(2.0) - 10 * np.log10(((a - b) ** 2).mean()), [arr(2, 3), arr(2, 3, seed=1)]),
    ("sparsemax", "", ops.sparsemax, lambda x: naive_sparsemax(x), [arr(3, 5, low=-2, high=2)]),
    ("sparsemax", "axis0", lambda x: ops.sparsemax(x, axis=0), lambda x: naive_sparsemax(x.T).T, [arr(4, 2)]),
    ("unfold", "", lambda x: ops.unfold(x, 2), lambda x: naive_unfold(x, 2, 1, 0, 1), [arr(2, 2, 3, 4)]),
    ("unfold", "dilated-padded-strided", lambda x: ops.unfold(x, (2, 3), dilation=2, padding=1, stride=(2, 1)),
     lambda x: naive_unfold(x, (2, 3), 2, 1, (2, 1)), [arr(1, 2, 5, 6)]),
    ("fold", "", lambda x: ops.fold(x, (3, 4), 2), lambda x: naive_fold(x, (3, 4), 2), [arr(2, 8, 6)]),
    ("ctc_loss", "", lambda z: ops.ctc_loss(CTC_LABELS, z, np.array([2, 1]), np.array([4, 3])),
     lambda z: naive_ctc(z, CTC_LABELS, [2, 1], [4, 3], blank=0), [arr(2, 4, 3, low=-2, high=2)]),
    ("ctc_loss", "repeated-label-blank-last",
     lambda z: ops.ctc_loss(np.array([[1, 1]]), z, np.array([2]), np.array([4]), mask_index=2),
     lambda z: naive_ctc(z, np.array([[1, 1]]), [2], [4], blank=2), [arr(1, 4, 3, low=-2, high=2, seed=1)]),
    ("stft", "", lambda x: ops.stft(x, 6, 3, 8), lambda x: naive_stft(x, 6, 3, 8, "hann", True), [arr(2, 14)]),
    ("stft", "hamming-uncentered", lambda x: ops.stft(x, 5, 2, 5, window="hamming", center=False),
     lambda x: naive_stft(x, 5, 2, 5, "hamming", False), [arr(11)]),
    ("stft", "no-window", lambda x: ops.stft(x, 4, 2, 6, window=None), lambda x: naive_stft(x, 4, 2, 6, None, True),
     [arr(9)]),
    ("istft", "", lambda r, i: ops.istft((r, i), 6, 3, 8), None, [arr(2, 5, 5), arr(2, 5, 5, seed=1)]),
    ("gammainc", "", lambda x: ops.gammainc(GAMMA_A, x), None, [pos(2, 3, seed=1) * 3]),
    ("depthwise_conv", "valid", ops.depthwise_conv, None, [arr(2, 5, 4, 2), arr(3, 2, 2, 3, seed=1)]),
    ("depthwise_conv", "same-strided-dilated",
     lambda x, w: ops.depthwise_conv(x, w, strides=(2, 1), padding="same", dilation_rate=(1, 2)), None,
     [arr(1, 5, 6, 3), arr(2, 3, 3, 1, seed=1)]),
    ("separable_conv", "", lambda x, d, p: ops.separable_conv(x, d, p, padding="same"), None,
     [arr(1, 4, 4, 2), arr(3, 3, 2, 2, seed=1), arr(1, 1, 4, 3, seed=2)]),
    ("max_pool", "valid", lambda x: ops.max_pool(x, 2), lambda x: naive_pool(x, 2, None, "valid", "max"),
     [arr(2, 4, 5, 2)]),
    ("max_pool", "same-strided", lambda x: ops.max_pool(x, 3, strides=2, padding="same"),
     lambda x: naive_pool(x, 3, 2, "same", "max"), [arr(1, 5, 4, 2)]),
    ("average_pool", "valid", lambda x: ops.average_pool(x, 2, strides=1),
     lambda x: naive_pool(x, 2, 1, "valid", "avg"), [arr(2, 4, 3, 2)]),
    ("average_pool", "same", lambda x: ops.average_pool(x, 3, strides=2, padding="same"),
     lambda x: naive_pool(x, 3, 2, "same", "avg"), [arr(1, 5, 4, 2)]),
    # normalization
    ("batch_normalization", "", lambda x, m, v, o, s: ops.batch_normalization(x, m, v, axis=-1, offset=o, scale=s),
     lambda x, m, v, o, s: (x - m) / np.sqrt(v + 1e-3) * s + o,
     [arr(4, 3), arr(3, seed=1), pos(3, seed=2), arr(3, seed=3), arr(3, seed=4)]),
    ("batch_normalization", "axis1", lambda x, m, v: ops.batch_normalization(x, m, v, axis=1, epsilon=0.01),
     lambda x, m, v: (x - m[:, None]) / np.sqrt(v[:, None] + 0.01), [arr(2, 3, 2), arr(3, seed=1), pos(3, seed=2)]),
    ("moments", "", lambda x: ops.moments(x, axes=(0, 1)), lambda x: (x.mean(axis=(0, 1)), x.var(axis=(0, 1))),
     [arr(2, 3, 2)]),
    ("moments", "keepdims", lambda x: ops.moments(x, axes=[-1], keepdims=True),
     lambda x: (x.mean(-1, keepdims=True), x.var(-1, keepdims=True)), [arr(2, 3)]),
    ("layer_normalization", "", lambda x, g, b: ops.layer_normalization(x, g, b),
     lambda x, g, b: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-7) * g + b,
     [arr(3, 4), arr(4, seed=1), arr(4, seed=2)]),
    ("layer_normalization", "axes", lambda x, g: ops.layer_normalization(x, g, axis=(1, 2), epsilon=0.01),
     lambda x, g: (x - x.mean((1, 2), keepdims=True)) / np.sqrt(x.var((1, 2), keepdims=True) + 0.01) * g,
     [arr(2, 3, 2), arr(3, 2, seed=1)]),
    ("layer_normalization", "rms-scaling", lambda x: ops.layer_normalization(x, axis=0, rms_scaling=True),
     lambda x: x / np.sqrt(x.var(0, keepdims=True) + 1e-7), [arr(3, 4)]),
    ("rms_normalization", "", lambda x, s: ops.rms_normalization(x, s, epsilon=0.1),
     lambda x, s: x / np.sqrt((x * x).mean(-1, keepdims=True) + 0.1) * s, [arr(3, 4), arr(4, seed=1)]),
    ("dot_product_attention", "", ops.dot_product_attention, lambda q, k, v: naive_attention(q, k, v),
     [arr(2, 3, 2, 4), arr(2, 5, 2, 4, seed=1), arr(2, 5, 2, 3, seed=2)]),
    ("dot_product_attention", "causal-bias-scale",
     lambda q, k, v, b: ops.dot_product_attention(q, k, v, bias=b, is_causal=True, scale=0.3),
     lambda q, k, v, b: naive_attention(q, k, v, bias=b, causal=True, scale=0.3),
     [arr(1, 4, 2, 3), arr(1, 4, 2, 3, seed=1), arr(1, 4, 2, 2, seed=2), arr(4, 4, seed=3)]),
    ("dot_product_attention", "mask-grouped-softcap",
     lambda q, k, v: ops.dot_product_attention(q, k, v, mask=ATTENTION_MASK, attn_logits_soft_cap=2.0),
     lambda q, k, v: naive_attention(q, np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2), mask=ATTENTION_MASK,
                                     cap=2.0),
     [arr(2, 3, 4, 2), arr(2, 3, 2, 2, seed=1), arr(2, 3, 2, 2, seed=2)]),
    ("normalize", "", ops.normalize, lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True), [arr(3, 4)]),
    ("normalize", "order1-axis0", lambda x: ops.normalize(x, axis=0, order=1),
     lambda x: x / np.abs(x).sum(axis=0, keepdims=True), [arr(3, 4)]),
    # losses (differentiated with respect to the predictions)
    ("categorical_crossentropy", "probabilities", lambda p: ops.categorical_crossentropy(ONE_HOT * 0.8 + 0.05, p),
     lambda p: -(((ONE_HOT * 0.8 + 0.05) * np.log(p / p.sum(-1, keepdims=True))).sum(-1)), [pos(3, 4)]),
    ("categorical_crossentropy", "logits", lambda z: ops.categorical_crossentropy(ONE_HOT, z, from_logits=True),
     lambda z: -(ONE_HOT * np.log(np_softmax(z))).sum(-1), [arr(3, 4, low=-3, high=3)]),
    ("sparse_categorical_crossentropy", "probabilities",
     lambda p: ops.sparse_categorical_crossentropy(LABELS, p),
     lambda p: -np.log((p / p.sum(-1, keepdims=True))[np.arange(3), LABELS]), [pos(3, 4)]),
    ("sparse_categorical_crossentropy", "logits",
     lambda z: ops.sparse_categorical_crossentropy(LABELS, z, from_logits=True),
     lambda z: -np.log(np_softmax(z)[np.arange(3), LABELS]), [arr(3, 4, low=-3, high=3)]),
    ("binary_crossentropy", "probabilities", lambda p: ops.binary_crossentropy(BITS, p),
     lambda p: -(BITS * np.log(p) + (1 - BITS) * np.log(1 - p)), [arr(2, 3, low=0.05, high=0.95)]),
    ("binary_crossentropy", "logits", lambda z: ops.binary_crossentropy(BITS, z, from_logits=True),
     lambda z: -(BITS * np.log(np_sigmoid(z)) + (1 - BITS) * np.log(1 - np_sigmoid(z))), [arr(2, 3, low=-4, high=4)]),
    # soft targets are differentiable too (as in Keras), e.g. a teacher's probabilities in distillation
    ("categorical_crossentropy", "soft-targets", lambda t, p: ops.categorical_crossentropy(t, p),
     lambda t, p: -(t * np.log(p / p.sum(-1, keepdims=True))).sum(-1), [SOFT, pos(3, 4)]),
    ("categorical_crossentropy", "soft-targets-logits", lambda t, z: ops.categorical_crossentropy(t, z, True),
     lambda t, z: -(t * np.log(np_softmax(z))).sum(-1), [SOFT, arr(3, 4)]),
    ("binary_crossentropy", "soft-targets", ops.binary_crossentropy,
     lambda t, p: -(t * np.log(p) + (1 - t) * np.log(1 - p)), [arr(2, 3, low=0, high=1, seed=3),
                                                                arr(2, 3, low=0.05, high=0.95)]),
    ("binary_crossentropy", "soft-targets-logits", lambda t, z: ops.binary_crossentropy(t, z, from_logits=True),
     lambda t, z: -(t * np.log(np_sigmoid(z)) + (1 - t) * np.log(1 - np_sigmoid(z))),
     [arr(2, 3, low=0, high=1, seed=3), arr(2, 3, low=-4, high=4)]),
]


def _case_id(case):
    return f"{case[0]}-{case[1]}" if case[1] else case[0]


@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c)) for c in DIFF_CASES])
def test_op_forward_and_vjp(case):
    """float64 in: NumPy's values (or the hand-written reference's) and float64 out; float32 in:
    float32 out, close to the float64 values; and the vjp against central finite differences."""
    name, _, fn, reference, args = case
    out = check_vjp(fn, *args)
    for o in _leaves(out):
        assert not isinstance(o, Tensor), "outside a tape ops return plain arrays"
        assert np.asarray(o).dtype == np.float64, "float64 in, float64 out"
    if reference is None:  # conv_transpose, depthwise and separable conv: see their own tests
        return
    expected = reference(*[a.copy() for a in args])
    for o, e in zip(_leaves(out), _leaves(expected)):
        assert np.shape(o) == np.shape(e)
        np.testing.assert_allclose(np.asarray(o), e, rtol=1e-10, atol=1e-12)
    if name == "cast":
        return  # casts to float64 on purpose
    out = fn(*[a.astype(np.float32) for a in args])
    for o, e in zip(_leaves(out), _leaves(expected)):
        assert np.asarray(o).dtype == np.float32, f"{name}: {np.asarray(o).dtype}"
        # float32 rounding through a few ops; the log-based losses amplify it near small probabilities
        np.testing.assert_allclose(np.asarray(o), e, rtol=2e-5, atol=2e-5)


# Ops without a gradient (forward checks below) and custom_gradient (its own test).
TESTED_SEPARATELY = {
    "convert_to_tensor", "convert_to_numpy", "array", "zeros", "ones", "zeros_like", "ones_like", "full",
    "full_like", "arange", "eye", "shape", "ndim", "size", "stop_gradient", "sign", "floor", "ceil", "round",
    "equal", "not_equal", "greater", "greater_equal", "less", "less_equal", "logical_and", "logical_or",
    "logical_not", "isnan", "isfinite", "isinf", "all", "any", "multi_hot", "empty", "isclose", "nonzero",
    "bincount", "searchsorted", "in_top_k", "logical_xor", "trunc", "signbit", "isposinf", "isneginf", "heaviside",
    "empty_like", "is_tensor", "dtype", "allclose", "isin", "pinv", "logspace", "geomspace", "argpartition",
    "unique", "digitize", "nanargmax", "nanargmin", "nanmedian", "nanpercentile", "nanquantile", "imag", "angle",
    "isreal", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "bitwise_invert", "bitwise_left_shift",
    "bitwise_right_shift", "left_shift", "right_shift", "bartlett", "blackman", "hamming", "hanning", "kaiser",
    "segment_prod", "eig", "eigh", "qr", "svd", "lstsq", "matrix_rank", "lu_factor", "fft", "fft2", "ifft2", "rfft",
    "irfft", "polar", "jvp", "view", "view_as_real", "view_as_complex", "ctc_decode", "corrcoef", "histogram",
    "gcd", "lcm", "i0", "vander", "saturate_cast", "unravel_index", "correlate", "nextafter", "floor_divide",
    "custom_gradient", "argmax", "linspace", "identity", "tri", "cond", "fori_loop", "while_loop", "count_nonzero",
    "argmin", "argsort", "one_hot",
}


def test_every_op_is_covered():
    """A new op in keras.ops.__all__ must come with a gradient case or a forward check here."""
    differentiable = {case[0] for case in DIFF_CASES}
    missing = set(ops.__all__) - differentiable - TESTED_SEPARATELY
    assert not missing, f"ops without tests: {sorted(missing)}"
    assert not differentiable & TESTED_SEPARATELY


# ----- conv and pooling in float32: fastconv's C kernels against the float64 reference -----

FLOAT32_CASES = [c for c in DIFF_CASES if c[0] in ("conv", "conv_transpose", "max_pool", "average_pool")]


def naive_depthwise(x, w, strides=1, padding="valid", dilation_rate=1):
    """Each channel c convolved alone with w[..., c, m]; output channel c * multiplier + m."""
    channels = [naive_conv(x[..., c:c + 1], w[:, :, c:c + 1, :], strides, padding, dilation_rate)
                for c in range(x.shape[-1])]
    return np.concatenate(channels, axis=-1)


def test_depthwise_and_separable_conv_forward():
    x, w = arr(2, 5, 4, 2), arr(3, 2, 2, 3, seed=1)
    np.testing.assert_allclose(ops.depthwise_conv(x, w), naive_depthwise(x, w), rtol=1e-10)
    x, w = arr(1, 5, 6, 3), arr(2, 3, 3, 1, seed=1)
    np.testing.assert_allclose(ops.depthwise_conv(x, w, strides=2, padding="same", dilation_rate=1),
                               naive_depthwise(x, w, 2, "same"), rtol=1e-10)
    np.testing.assert_allclose(ops.depthwise_conv(x, w, padding="same", dilation_rate=2),
                               naive_depthwise(x, w, 1, "same", 2), rtol=1e-10)
    d, p = arr(3, 3, 3, 2, seed=2), arr(1, 1, 6, 4, seed=3)
    np.testing.assert_allclose(ops.separable_conv(x, d, p, padding="same"),
                               naive_conv(naive_depthwise(x, d, 1, "same"), p), rtol=1e-10)
    assert ops.depthwise_conv(x.astype(np.float32), w.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="kernel"):
        ops.depthwise_conv(x, arr(3, 3, 2, 1))


def test_multi_hot():
    np.testing.assert_array_equal(ops.multi_hot(np.array([[0, 2, 2], [1, 1, 3]]), 4),
                                  [[1, 0, 1, 0], [0, 1, 0, 1]])
    np.testing.assert_array_equal(ops.multi_hot(np.array([3, 0]), 5), [1, 0, 0, 1, 0])
    assert ops.multi_hot(np.array([[1]]), 2).dtype == np.float32
    with pytest.raises(TypeError, match="integer"):
        ops.multi_hot(np.array([0.5]), 2)


@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c)) for c in FLOAT32_CASES])
def test_c_kernels_in_float32_match_float64(case):
    _, _, fn, _, args = case
    args64 = [a.copy() for a in args]
    args32 = [a.astype(np.float32) for a in args]
    out64 = fn(*args64)
    out32 = fn(*args32)
    assert out32.dtype == np.float32
    # Inputs in [-1, 1] and at most 18 products per output: float32 rounding stays below 1e-5.
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-5)
    cotangent = [_rng(3).standard_normal(out64.shape)]
    grads64 = tape_vjp(fn, args64, range(len(args)), cotangent)
    grads32 = tape_vjp(fn, args32, range(len(args)), [cotangent[0].astype(np.float32)])
    for g32, g64 in zip(grads32, grads64):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-4)


def test_conv_transpose_is_the_adjoint_of_conv():
    """<conv(z, w), x> == <conv_transpose(x, w), z>: conv_transpose is conv's input gradient, as in Keras."""
    for strides, padding, zshape in ((2, "valid", (1, 7, 7, 2)), (2, "same", (1, 6, 4, 2)), (1, "same", (1, 4, 4, 2))):
        w = arr(3, 3, 2, 3, seed=1)
        z = arr(*zshape, seed=2)
        y = ops.conv(z, w, strides=strides, padding=padding)
        x = arr(*y.shape, seed=3)
        t = ops.conv_transpose(x, w, strides=strides, padding=padding)
        assert t.shape == z.shape
        np.testing.assert_allclose(np.sum(y * x), np.sum(t * z), rtol=1e-10)


def test_conv_rejects_channels_first_and_wrong_rank():
    with pytest.raises(ValueError, match="data_format"):
        ops.conv(arr(1, 4, 4, 1), arr(2, 2, 1, 1), data_format="channels_first")
    with pytest.raises(ValueError, match="inputs"):
        ops.max_pool(arr(4, 4, 1), 2)


# ----- specific gradient semantics -----


def grad_of(fn, *args):
    """Gradients of sum(fn(*args)) with respect to every array argument."""
    args = [np.array(a, dtype=np.float64) for a in args]
    with GradientTape() as tape:
        tape.watch(args)
        out = fn(*args)
    return tape.gradient(out, args)


def test_max_min_share_the_gradient_between_ties():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(grad_of(lambda a: ops.max(a, axis=1), x)[0], [[0, 0.5, 0.5], [1 / 3] * 3])
    np.testing.assert_allclose(grad_of(ops.min, x)[0], [[1, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(grad_of(lambda a: ops.min(a, axis=-1), x)[0], [[1, 0, 0], [1 / 3] * 3])
    np.testing.assert_allclose(grad_of(ops.max, x)[0], [[0, 0.5, 0.5], [0, 0, 0]])
    np.testing.assert_allclose(grad_of(lambda a: ops.max(a, axis=0, keepdims=True), x)[0],
                               [[0, 1, 1], [1, 0, 0]])
    # element-wise: a tie sends the whole gradient to one side, never twice
    ga, gb = grad_of(ops.maximum, [1.0, 2.0], [1.0, 0.0])
    np.testing.assert_allclose(ga + gb, [1, 1])
    ga, gb = grad_of(ops.minimum, [1.0, 2.0], [1.0, 0.0])
    np.testing.assert_allclose(ga + gb, [1, 1])


def test_prod_gradient_with_zeros():
    x = np.array([[0.0, 2.0, 3.0], [0.0, 0.0, 4.0]])
    np.testing.assert_allclose(grad_of(lambda a: ops.prod(a, axis=1), x)[0], [[6, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(grad_of(ops.prod, np.array([[0.0, 2.0], [3.0, 4.0]]))[0], [[24, 0], [0, 0]])


def test_repeated_indices_accumulate():
    (g,) = grad_of(lambda a: tensor(a)[np.array([0, 0, 2, 0])], np.zeros(3))
    np.testing.assert_allclose(g, [3, 0, 1])
    (g,) = grad_of(lambda a: ops.take(a, np.array([[1, 1], [1, 0]]), axis=0), np.zeros((2, 2)))
    np.testing.assert_allclose(g, [[1, 1], [3, 3]])


def test_operators_on_tensors_and_variables_are_recorded():
    v = Variable(np.array([1.0, 2.0, 3.0]), dtype="float64")
    with GradientTape() as tape:
        y = ops.sum((2 * v - 1) ** 2 / 4 + abs(-v) + v[1:].sum() + v.T.reshape(3, 1).mean())
    # the two scalars inside are broadcast over v's 3 entries before the outer sum: 3 times each
    np.testing.assert_allclose(tape.gradient(y, v), (2 * v.value - 1) + 1 + 3 * np.array([0, 1, 1]) + 1)


def test_numpy_ufuncs_on_tensors_are_recorded():
    x = np.array([0.5, 1.5])
    with GradientTape() as tape:
        tape.watch(x)
        t = tensor(x)
        y = np.sum(np.exp(t) * 2.0 + np.sqrt(t))
    np.testing.assert_allclose(tape.gradient(y, x), 2 * np.exp(x) + 0.5 / np.sqrt(x))


def test_stop_gradient_and_non_float_casts_cut_the_graph():
    x = np.array([1.0, 2.0])
    with GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = ops.sum(ops.multiply(ops.stop_gradient(x), x))
        z = ops.sum(ops.cast(x, "int32"))
    np.testing.assert_allclose(tape.gradient(y, x), x)
    assert tape.gradient(z, x) is None


def test_einsum_refuses_the_gradient_of_a_broadcast_ellipsis_clearly():
    a, b = np.ones((1, 2, 2)), np.ones((3, 2, 2))
    assert ops.einsum("...ij,...jk->...ik", a, b).shape == (3, 2, 2)
    with GradientTape() as tape:
        tape.watch(a)
        y = ops.einsum("...ij,...jk->...ik", a, b)
    with pytest.raises(ValueError, match="einsum"):
        tape.gradient(y, a)


# ----- non-differentiable ops: forward only -----


def test_comparisons_and_logic():
    a, b = arr(2, 3), arr(2, 3, seed=1)
    for name, ref in (("equal", np.equal), ("not_equal", np.not_equal), ("greater", np.greater),
                      ("greater_equal", np.greater_equal), ("less", np.less), ("less_equal", np.less_equal),
                      ("logical_and", np.logical_and), ("logical_or", np.logical_or)):
        np.testing.assert_array_equal(getattr(ops, name)(a > 0, b) if "logical" in name else getattr(ops, name)(a, b),
                                      ref(a > 0, b) if "logical" in name else ref(a, b))
    np.testing.assert_array_equal(ops.logical_not(a > 0), a <= 0)
    x = np.array([1.0, np.nan, np.inf, -2.5])
    np.testing.assert_array_equal(ops.isnan(x), np.isnan(x))
    np.testing.assert_array_equal(ops.isfinite(x), np.isfinite(x))
    np.testing.assert_array_equal(ops.all(a > -2, axis=1), [True, True])
    assert not ops.all(a > 0) and ops.any(a > 0)
    np.testing.assert_array_equal(ops.any(a > 0, axis=0, keepdims=True), np.any(a > 0, axis=0, keepdims=True))


def test_norm_and_normalize_edge_cases():
    np.testing.assert_array_equal(ops.norm(np.array([0.0, 2.0, -1.0, 0.0]), ord=0), 2)
    with pytest.raises(ValueError, match="ord"):
        ops.norm(arr(2, 3), ord=1)  # a matrix 1-norm is not supported: refused, not miscomputed
    with pytest.raises(ValueError, match="fro"):
        ops.norm(arr(3), ord="fro")
    # a zero vector normalizes to zero with a finite gradient: the squared norm is floored at epsilon^2
    zero = np.zeros((1, 3))
    np.testing.assert_array_equal(ops.normalize(zero), zero)
    (g,) = grad_of(ops.normalize, zero)
    np.testing.assert_allclose(g, np.full((1, 3), 1e7))
    np.testing.assert_allclose(ops.normalize(np.array([3e-8, 4e-8])), np.array([3e-8, 4e-8]) / 1e-7)
    with pytest.raises(ValueError, match="order"):
        ops.normalize(arr(3), order=0)


def test_floor_divide_and_operators():
    a, b = arr(2, 3, low=-5, high=5), pos(3, seed=1)
    np.testing.assert_array_equal(ops.floor_divide(a, b), np.floor_divide(a, b))
    t = tensor(a)
    np.testing.assert_array_equal(np.asarray(t // 2), a // 2)
    np.testing.assert_allclose(np.asarray(t % 2), a % 2)
    np.testing.assert_allclose(np.asarray(7.0 % tensor(b)), 7.0 % b)
    assert ops.floor_divide(a.astype(np.float32), 2).dtype == np.float32


def test_rounding_and_sign():
    x = np.array([-1.5, -0.4, 0.0, 0.6, 2.5])
    np.testing.assert_array_equal(ops.sign(x), np.sign(x))
    np.testing.assert_array_equal(ops.floor(x), np.floor(x))
    np.testing.assert_array_equal(ops.ceil(x), np.ceil(x))
    np.testing.assert_array_equal(ops.round(x), np.round(x))
    np.testing.assert_array_equal(ops.round(np.array([1.234, 5.678]), 1), [1.2, 5.7])


def test_arg_reductions_and_sorting():
    x = arr(3, 4)
    np.testing.assert_array_equal(ops.argmax(x), np.argmax(x))
    np.testing.assert_array_equal(ops.argmax(x, axis=-1), np.argmax(x, axis=-1))
    np.testing.assert_array_equal(ops.argmin(x, axis=0, keepdims=True), np.argmin(x, axis=0, keepdims=True))
    assert ops.argmax(x, axis=1).dtype == np.int32  # Keras 3's index type
    np.testing.assert_array_equal(ops.argsort(x, axis=0), np.argsort(x, axis=0))
    np.testing.assert_array_equal(ops.count_nonzero(x > 0, axis=[0]), np.count_nonzero(x > 0, axis=0))
    assert ops.count_nonzero(np.array([0, 3, 0, 1])) == 2
    values, indices = ops.top_k(x, 3)
    np.testing.assert_array_equal(indices, np.argsort(-x, axis=-1)[:, :3])
    np.testing.assert_allclose(values, np.take_along_axis(x, indices, -1))


def test_one_hot():
    np.testing.assert_array_equal(ops.one_hot(np.array([1, 0, 3]), 4), np.eye(4)[[1, 0, 3]])
    assert ops.one_hot(np.array([1, 0]), 3).dtype == np.float32
    out = ops.one_hot(np.array([[1, 0], [2, 2]]), 3, axis=1)
    assert out.shape == (2, 3, 2)
    np.testing.assert_array_equal(out, np.moveaxis(np.eye(3)[[[1, 0], [2, 2]]], -1, 1))
    np.testing.assert_array_equal(ops.one_hot(np.array([-1]), 2), [[0, 0]])  # out of range: a zero row, as Keras
    with pytest.raises(TypeError, match="integer"):
        ops.one_hot(np.array([0.5]), 2)


def test_creation():
    assert ops.zeros((2, 3)).dtype == np.float32 and ops.zeros((2, 3)).shape == (2, 3)
    assert ops.ones(4, dtype="int32").dtype == np.int32
    np.testing.assert_array_equal(ops.full((2,), 7.0), [7, 7])
    assert ops.full((2,), 7.0).dtype == np.float32
    x = arr(2, 3)
    np.testing.assert_array_equal(ops.zeros_like(x), np.zeros((2, 3)))
    assert ops.ones_like(x).dtype == np.float64
    np.testing.assert_array_equal(ops.full_like(x, 3, dtype="int64"), np.full((2, 3), 3))
    np.testing.assert_array_equal(ops.arange(5), np.arange(5))
    np.testing.assert_allclose(ops.arange(0, 1, 0.25), [0, 0.25, 0.5, 0.75])
    assert ops.arange(0, 1, 0.25).dtype == np.float32
    np.testing.assert_array_equal(ops.arange(2, 8, 3), [2, 5])
    np.testing.assert_array_equal(ops.arange(2, 8, step=None), np.arange(2, 8))
    np.testing.assert_array_equal(ops.arange(6, step=2), [0, 2, 4])
    np.testing.assert_array_equal(ops.eye(3, 2, k=-1), np.eye(3, 2, k=-1))
    assert ops.shape(x) == (2, 3) and ops.ndim(x) == 2 and ops.size(x) == 6
    assert ops.convert_to_tensor([1.0, 2.0]).dtype == np.float32  # Python floats become floatx
    assert ops.convert_to_tensor([1, 2]).dtype.kind == "i"
    assert ops.convert_to_tensor(x, dtype="float32").dtype == np.float32
    v = Variable(np.ones(2))
    assert ops.convert_to_tensor(v) is v  # a Variable passes through, so gradients still flow to it
    np.testing.assert_array_equal(ops.convert_to_numpy(v), [1, 1])
    assert isinstance(ops.convert_to_numpy(v), np.ndarray)
    with pytest.raises(TypeError, match="arrays and numbers"):
        ops.add(object(), 1)
    with pytest.raises(TypeError, match="Lambda"):
        ops.relu(keras.Input((3,)))


# ----- dtypes: NumPy's weak Python scalars -----


@pytest.mark.parametrize("op", [ops.add, ops.subtract, ops.multiply, ops.divide, ops.power, ops.maximum,
                                ops.minimum])
def test_python_scalars_keep_float32(op):
    x = arr(2, 3, low=0.5, high=1.5).astype(np.float32)
    assert op(x, 2).dtype == np.float32
    assert op(x, 2.5).dtype == np.float32
    assert op(2.5, x).dtype == np.float32
    v = Variable(x)
    with GradientTape() as tape:
        y = op(v, 2.5)
        total = ops.sum(y)
    assert y.dtype == np.float32 and tape.gradient(total, v).dtype == np.float32


def test_integer_inputs_follow_keras_dtypes():
    ints = np.arange(1, 5)
    for op in (ops.sqrt, ops.exp, ops.log, ops.log1p, ops.tanh, ops.reciprocal, ops.rsqrt, ops.sin):
        assert op(ints).dtype == np.float32, op.__name__
    assert ops.multiply(ints, 0.5).dtype == np.float32 and ops.add(0.5, ints).dtype == np.float32
    assert ops.add(ints, 1).dtype == ints.dtype and ops.square(ints).dtype == ints.dtype
    assert ops.arange(5).dtype == np.int32 and ops.convert_to_tensor([1, 2]).dtype == np.int32
    assert ops.convert_to_tensor([2**40]).dtype == np.int64  # too big for int32: kept
    assert ops.array([1.0, 2.0]).dtype == np.float32 and ops.array([1, 2], dtype="float64").dtype == np.float64
    assert ops.top_k(arr(3), 2)[1].dtype == np.int32


def test_integer_averages_and_quotients_are_floatx():
    ints = np.arange(5)
    for out, expected in ((ops.mean(ints), 2.0), (ops.var(ints), 2.0), (ops.std(ints), np.sqrt(2.0)),
                          (ops.divide(ints, 2), ints / 2), (ops.mean(ints > 2), 0.4)):
        assert np.asarray(out).dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert ops.divide(ints.astype(np.float64), 2).dtype == np.float64


def test_float32_operators_and_reductions_stay_float32():
    v = Variable(pos(2, 3))
    with GradientTape() as tape:
        y = ops.mean(ops.square(v * 0.5 - 1.0) / 3 + ops.log(v + 1) + ops.where(v > 0, v, 0.0)
                     + ops.clip(v, 0.0, 0.5)) + ops.var(v) + ops.std(v, axis=0)[0]
    assert np.asarray(y).dtype == np.float32
    grad = tape.gradient(y, v)
    assert grad.dtype == np.float32 and np.all(np.isfinite(grad))


# ----- losses agree with keras.losses -----


def test_crossentropies_match_keras_losses():
    p = np_softmax(arr(3, 4, low=-2, high=2)).astype(np.float32)
    z = arr(3, 4, low=-3, high=3).astype(np.float32)
    y = ONE_HOT.astype(np.float32)
    np.testing.assert_allclose(ops.categorical_crossentropy(y, p), losses.categorical_crossentropy(y, p), rtol=1e-6)
    np.testing.assert_allclose(ops.categorical_crossentropy(y, z, from_logits=True),
                               losses.categorical_crossentropy(y, z, from_logits=True), rtol=1e-6)
    np.testing.assert_allclose(ops.sparse_categorical_crossentropy(LABELS, p),
                               losses.sparse_categorical_crossentropy(LABELS, p), rtol=1e-6)
    np.testing.assert_allclose(ops.sparse_categorical_crossentropy(LABELS, z, from_logits=True),
                               losses.sparse_categorical_crossentropy(LABELS, z, from_logits=True), rtol=1e-6)
    b = arr(2, 3, low=0.05, high=0.95).astype(np.float32)
    # keras.losses.binary_crossentropy averages the last axis; keras.ops' is element-wise
    np.testing.assert_allclose(ops.mean(ops.binary_crossentropy(BITS, b), axis=-1),
                               losses.binary_crossentropy(BITS, b), rtol=1e-6)
    np.testing.assert_allclose(ops.mean(ops.binary_crossentropy(BITS, z[:2, :3], from_logits=True), axis=-1),
                               losses.binary_crossentropy(BITS, z[:2, :3], from_logits=True), rtol=1e-6)
    # the probabilities are clipped to [1e-7, 1 - 1e-7] before the log, as Keras does
    np.testing.assert_allclose(ops.binary_crossentropy(np.array([1.0, 0.0]), np.array([0.0, 1.0])),
                               [-np.log(1e-7)] * 2, rtol=1e-6)
    np.testing.assert_allclose(ops.sparse_categorical_crossentropy(LABELS[:, None], p),
                               ops.sparse_categorical_crossentropy(LABELS, p))
    with pytest.raises(ValueError, match="sparse targets"):
        ops.sparse_categorical_crossentropy(np.array([4]), p[:1])
    with pytest.raises(ValueError, match="same shape"):
        ops.categorical_crossentropy(LABELS, p)  # integer labels given to the one-hot loss
    with pytest.raises(ValueError, match="same shape"):
        ops.binary_crossentropy(BITS[0], b)
    with pytest.raises(ValueError, match="class axis"):
        ops.sparse_categorical_crossentropy(ONE_HOT, p)
    with pytest.raises(ValueError, match="integer"):
        ops.sparse_categorical_crossentropy(np.array([0.5, 1.0, 2.0]), p)


def test_crossentropy_gradients_match_keras_losses():
    z = arr(3, 4, low=-3, high=3)
    for fn in (lambda loss, x: loss(ONE_HOT, x, from_logits=True),):
        got = grad_of(lambda x: fn(ops.categorical_crossentropy, x), z)[0]
        expected = grad_of(lambda x: fn(losses.categorical_crossentropy, x), z)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    got = grad_of(lambda x: ops.mean(ops.binary_crossentropy(BITS, x, from_logits=True), axis=-1), z[:2, :3])[0]
    expected = grad_of(lambda x: losses.binary_crossentropy(BITS, x, from_logits=True), z[:2, :3])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


# ----- GradientTape -----


def test_tape_none_for_unconnected_sources():
    a, b = Variable(np.ones(2)), Variable(np.ones(3))
    with GradientTape() as tape:
        loss = ops.sum(a * 3.0)
    grads = tape.gradient(loss, [a, b])
    np.testing.assert_allclose(grads[0], [3, 3])
    assert grads[1] is None


def test_tape_unconnected_zero():
    a, b = Variable(np.ones(2)), Variable(np.ones(3))
    with GradientTape() as tape:
        loss = ops.sum(a)
    np.testing.assert_array_equal(tape.gradient(loss, b, unconnected_gradients="zero"), np.zeros(3))
    with pytest.raises(ValueError, match="unconnected_gradients"):
        GradientTape().gradient(loss, b, unconnected_gradients="nan")


def test_non_persistent_tape_allows_one_gradient_call():
    v = Variable(np.ones(2))
    with GradientTape() as tape:
        y = ops.sum(v * v)
    tape.gradient(y, v)
    with pytest.raises(RuntimeError, match="persistent"):
        tape.gradient(y, v)


def test_persistent_tape():
    v = Variable(np.array([1.0, 2.0]))
    with GradientTape(persistent=True) as tape:
        y = ops.sum(v * v)
        z = ops.sum(ops.exp(v))
    np.testing.assert_allclose(tape.gradient(y, v), 2 * v.value)
    np.testing.assert_allclose(tape.gradient(z, v), np.exp(v.value), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(y, v), 2 * v.value)


def test_watch_arrays_and_untrainable_variables():
    x = np.array([1.0, 2.0])
    frozen = Variable(np.array([3.0]), trainable=False)
    trainable = Variable(np.array([4.0]))
    with GradientTape() as tape:
        y = ops.sum(ops.square(x)) + ops.sum(frozen * trainable)
    gx, gf, gt = tape.gradient(y, [x, frozen, trainable])
    assert gx is None and gf is None  # neither watched: an array and an untrainable Variable are constants
    np.testing.assert_allclose(gt, [3.0])
    with GradientTape() as tape:
        tape.watch([x, frozen])
        y = ops.sum(ops.square(x)) + ops.sum(frozen * trainable)
    gx, gf, gt = tape.gradient(y, [x, frozen, trainable])
    np.testing.assert_allclose(gx, 2 * x)
    np.testing.assert_allclose(gf, [4.0])
    np.testing.assert_allclose(gt, [3.0])
    assert {id(v) for v in tape.watched_variables()} == {id(frozen), id(trainable)}
    with pytest.raises(TypeError, match="watch"):
        GradientTape().watch("x")


def test_watch_accessed_variables_false():
    a, b = Variable(np.ones(2)), Variable(np.ones(2))
    with GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(a)
        y = ops.sum(a * b)
    ga, gb = tape.gradient(y, [a, b])
    np.testing.assert_allclose(ga, [1, 1])
    assert gb is None


def test_output_gradients_and_several_targets():
    x = np.array([1.0, 2.0, 3.0])
    with GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = ops.square(x)
        z = ops.sum(x)
    np.testing.assert_allclose(tape.gradient(y, x, output_gradients=np.array([1.0, 0.0, 2.0])), [2, 0, 12])
    np.testing.assert_allclose(tape.gradient([y, z], x), 2 * x + 1)
    np.testing.assert_allclose(tape.gradient([y, z], x, output_gradients=[np.ones(3), 2.0]), 2 * x + 2)
    with pytest.raises(ValueError, match="output_gradients"):
        tape.gradient([y, z], x, output_gradients=[np.ones(3)])
    with pytest.raises(ValueError, match="shape"):
        tape.gradient(y, x, output_gradients=np.ones(2))


def test_nested_structures_of_sources():
    params = {"w": Variable(np.array([[1.0, 2.0]])), "b": [Variable(np.array([0.5])), Variable(np.zeros(1))]}
    x = np.array([[3.0], [4.0]])
    with GradientTape() as tape:
        y = ops.sum(ops.matmul(x, params["w"]) + params["b"][0])
    grads = tape.gradient(y, params)
    assert set(grads) == {"w", "b"} and isinstance(grads["b"], list)
    np.testing.assert_allclose(grads["w"], [[7, 7]])
    np.testing.assert_allclose(grads["b"][0], [4.0])
    assert grads["b"][1] is None


def test_tuple_sources_keep_their_structure():
    a, b = Variable(np.ones(1)), Variable(np.ones(1))
    with GradientTape() as tape:
        y = ops.sum(a * 2 + b)
    grads = tape.gradient(y, (a, (b,)))
    assert isinstance(grads, tuple) and isinstance(grads[1], tuple)
    np.testing.assert_allclose(grads[0], [2])
    np.testing.assert_allclose(grads[1][0], [1])


def test_gradient_of_a_source_itself_and_a_reused_input():
    x = np.array([2.0])
    with GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = ops.multiply(x, x) * x
    np.testing.assert_allclose(tape.gradient(x, x), [1.0])
    np.testing.assert_allclose(tape.gradient(y, x), [12.0])


def test_nested_tapes_both_record():
    v = Variable(np.array([2.0]))
    with GradientTape() as outer:
        with GradientTape() as inner:
            y = ops.sum(v * v)
        z = y * 3.0
    np.testing.assert_allclose(inner.gradient(y, v), [4.0])
    np.testing.assert_allclose(outer.gradient(z, v), [12.0])


def test_ops_outside_a_tape_return_arrays_and_the_tape_can_be_reused():
    v = Variable(np.ones(2))
    assert isinstance(ops.add(v, 1.0), np.ndarray)
    tape = GradientTape()
    with tape:
        y = ops.sum(v)
    assert isinstance(y, Tensor)
    with pytest.raises(RuntimeError):
        with tape:
            with tape:
                pass


def test_gradient_sources_must_be_tensors_or_variables():
    v = Variable(np.ones(2))
    with GradientTape() as tape:
        y = ops.sum(v)
    with pytest.raises(TypeError, match="sources"):
        tape.gradient(y, [v, 3.0])


def test_fastconv_exports_the_tape():
    import fastconv
    assert fastconv.GradientTape is GradientTape and fastconv.value_and_grad is value_and_grad
    assert keras.GradientTape is GradientTape


# ----- value_and_grad -----


def test_value_and_grad_argnums():
    def fn(a, b, c):
        return ops.sum(a * b) + ops.sum(c)
    a, b, c = np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0])
    value, grad = value_and_grad(fn)(a, b, c)
    np.testing.assert_allclose(value, 16.0)
    np.testing.assert_allclose(grad, b)
    value, grads = value_and_grad(fn, argnums=(1, 2))(a, b, c)
    assert isinstance(grads, tuple) and len(grads) == 2
    np.testing.assert_allclose(grads[0], a)
    np.testing.assert_allclose(grads[1], [1.0])
    _, grad = value_and_grad(fn, argnums=-1)(a, b, c)
    np.testing.assert_allclose(grad, [1.0])
    with pytest.raises(ValueError, match="argnums"):
        value_and_grad(fn, argnums=3)(a, b, c)


def test_value_and_grad_has_aux_and_pytrees():
    def loss(params, x):
        pred = ops.matmul(x, params["w"]) + params["b"][0]
        return ops.mean(ops.square(pred)), {"pred": pred}
    params = {"w": np.array([[1.0], [2.0]]), "b": [np.array([0.5])]}
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    (value, aux), grads = value_and_grad(loss, has_aux=True)(params, x)
    pred = x @ params["w"] + 0.5
    np.testing.assert_allclose(value, np.mean(pred ** 2))
    np.testing.assert_allclose(np.asarray(aux["pred"]), pred)
    assert set(grads) == {"w", "b"} and isinstance(grads["b"], list)
    np.testing.assert_allclose(grads["w"], x.T @ pred)
    np.testing.assert_allclose(grads["b"][0], [pred.sum()])


def test_value_and_grad_unconnected_is_zero_and_scalar_required():
    _, grads = value_and_grad(lambda a, b: ops.sum(a), argnums=(0, 1))(np.ones(2), np.ones(3))
    np.testing.assert_array_equal(grads[1], np.zeros(3))
    with pytest.raises(ValueError, match="scalar"):
        value_and_grad(lambda a: a * 2)(np.ones(2))


def test_value_and_grad_of_variables_and_ints():
    v = Variable(np.array([1.0, 2.0]))
    value, grad = value_and_grad(lambda w: ops.sum(w * w))(v)
    np.testing.assert_allclose(value, 5.0)
    np.testing.assert_allclose(grad, [2.0, 4.0])
    _, grad = value_and_grad(lambda w: ops.sum(w * w))(np.array([1, 2]))
    np.testing.assert_allclose(grad, [2.0, 4.0])
    # a closed-over trainable Variable is a constant here (jax semantics): only the argument is differentiated
    value, grad = value_and_grad(lambda x: ops.sum(x * v))(np.array([1.0, 1.0]))
    np.testing.assert_allclose(grad, v.value)


def test_gradients_are_writeable_arrays_of_the_source_dtype():
    a, b = Variable(np.ones((2, 3))), Variable(np.ones((2, 3)))
    with GradientTape() as tape:
        y = ops.sum(a + b) + ops.sum(ops.cast(a, "float64") * 2.0)
    ga, gb = tape.gradient(y, [a, b])
    assert ga.dtype == np.float32 and gb.dtype == np.float32
    ga *= 0.5  # in place, as gradient clipping does: must not change the other gradient
    np.testing.assert_array_equal(gb, np.ones((2, 3)))
    np.testing.assert_array_equal(ga, np.full((2, 3), 1.5))


# ----- keras.ops against the built-in layers' hand-written backward passes -----


def _batch_norm_with_ops(layer):
    def composed(t):
        mean, variance = ops.moments(t, axes=[0])
        return ops.batch_normalization(t, mean, variance, axis=-1, offset=layer.beta, scale=layer.gamma,
                                       epsilon=layer.epsilon)
    return composed


LAYER_CASES = {
    "dense-relu": (lambda: keras.layers.Dense(3, activation="relu"),
                   lambda l: lambda t: ops.relu(ops.matmul(t, l.kernel) + l.bias), (4, 5)),
    "dense-softmax": (lambda: keras.layers.Dense(4, activation="softmax"),
                      lambda l: lambda t: ops.softmax(ops.matmul(t, l.kernel) + l.bias), (3, 5)),
    "conv2d": (lambda: keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="relu"),
               lambda l: lambda t: ops.relu(ops.conv(t, l.kernel, strides=2, padding="same") + l.bias), (2, 7, 6, 2)),
    "conv2d-transpose": (lambda: keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same"),
                         lambda l: lambda t: ops.conv_transpose(t, l.kernel, strides=2, padding="same") + l.bias,
                         (1, 3, 3, 2)),
    "max-pooling": (lambda: keras.layers.MaxPooling2D(2), lambda l: lambda t: ops.max_pool(t, 2), (2, 6, 6, 3)),
    "average-pooling": (lambda: keras.layers.AveragePooling2D(3, strides=2, padding="same"),
                        lambda l: lambda t: ops.average_pool(t, 3, strides=2, padding="same"), (2, 7, 6, 3)),
    "batch-norm": (lambda: keras.layers.BatchNormalization(), _batch_norm_with_ops, (6, 4)),
    "global-average-pooling": (lambda: keras.layers.GlobalAveragePooling2D(),
                               lambda l: lambda t: ops.mean(t, axis=(1, 2)), (2, 3, 3, 2)),
    "flatten": (lambda: keras.layers.Flatten(), lambda l: lambda t: ops.reshape(t, (t.shape[0], -1)), (2, 3, 3, 2)),
}


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_ops_gradients_match_the_built_in_layers(name):
    """The same computation written with keras.ops and run by a built-in layer (one tape node with
    its fused C backward) gives the same outputs and gradients, to float32 rounding."""
    make_layer, make_composed, shape = LAYER_CASES[name]
    rng = _rng(4)
    layer = make_layer()
    x = rng.standard_normal(shape).astype(np.float32)
    layer(x)  # builds the weights
    composed = make_composed(layer)
    cotangent = rng.standard_normal(np.shape(layer(x, training=True))).astype(np.float32)

    def run(fn):
        with GradientTape() as tape:
            tape.watch(x)
            y = fn(tensor(x))
        return np.asarray(y), tape.gradient(y, [x] + layer.trainable_weights, output_gradients=cotangent)
    built_in, composed_result = run(lambda t: layer(t, training=True)), run(composed)
    np.testing.assert_allclose(built_in[0], composed_result[0], rtol=1e-5, atol=1e-5)
    for got, expected in zip(built_in[1], composed_result[1]):
        assert got is not None and expected is not None
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_tape_stop_recording():
    v = Variable(np.array([2.0]))
    with GradientTape(persistent=True) as outer:
        with GradientTape() as tape:
            y = v * v
            with tape.stop_recording():
                z = v * 3.0  # outer still records it; this tape does not
            total = ops.sum(y + z)
        outer_total = ops.sum(y + z)
    np.testing.assert_allclose(tape.gradient(total, v), [4.0])
    np.testing.assert_allclose(outer.gradient(outer_total, v), [7.0])
    with pytest.raises(RuntimeError, match="recording"):
        with GradientTape().stop_recording():
            pass


def test_custom_gradient():
    @ops.custom_gradient
    def log1pexp(x):
        e = ops.exp(x)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return ops.multiply(upstream, 1.0 - 1.0 / ops.add(1, e))
        return ops.log(1 + e), grad

    x = np.array([0.0, 1.0, 100.0])
    np.testing.assert_allclose(log1pexp(x), np.log1p(np.exp(x)))
    with GradientTape() as tape:
        tape.watch(x)
        y = ops.sum(log1pexp(x) * 2.0)
    np.testing.assert_allclose(tape.gradient(y, x), 2 * np_sigmoid(x))  # finite at x = 100

    @ops.custom_gradient
    def clip_gradient(x, scale):
        return ops.multiply(x, scale), lambda g: (ops.clip(g, -1.0, 1.0), None)
    v, s = Variable(np.array([3.0, 4.0])), Variable(np.array(5.0))
    with GradientTape() as tape:
        y = ops.sum(clip_gradient(v, s) * np.array([0.5, 3.0]))
    gv, gs = tape.gradient(y, [v, s])
    np.testing.assert_allclose(gv, [0.5, 1.0])
    assert gs is None

    @ops.custom_gradient
    def wrong(x):
        return x, lambda g: (g, g)
    with GradientTape() as tape:
        tape.watch(x)
        y = wrong(x)
    with pytest.raises(ValueError, match="gradients"):
        tape.gradient(y, x)


def test_more_creation_and_control_flow():
    np.testing.assert_allclose(ops.linspace(0, 1, 5), np.linspace(0, 1, 5))
    assert ops.linspace(0, 1, 5).dtype == np.float32
    values, step = ops.linspace(0.0, 2.0, 4, endpoint=False, retstep=True)
    np.testing.assert_allclose(values, [0, 0.5, 1, 1.5]) and np.testing.assert_allclose(step, 0.5)
    np.testing.assert_array_equal(ops.identity(3), np.eye(3))
    np.testing.assert_array_equal(ops.tri(3, 4, k=1), np.tri(3, 4, k=1))
    np.testing.assert_array_equal(ops.isinf(np.array([1.0, np.inf, -np.inf, np.nan])), [False, True, True, False])
    v = Variable(np.array([1.5]))
    with GradientTape() as tape:
        y = ops.cond(ops.sum(v) > 1, lambda: v * 3.0, lambda: v * 5.0)
        z = ops.fori_loop(0, 3, lambda i, acc: acc * v, ops.ones_like(v))  # v ** 3
        n, w = ops.while_loop(lambda n, w: n < 2, lambda n, w: (n + 1, w * v), (0, v))  # v ** 3
        total = ops.sum(y + z + w)
    assert n == 2
    np.testing.assert_allclose(tape.gradient(total, v), [3 + 2 * 3 * 1.5 ** 2])
    assert ops.while_loop(lambda x: x < 10, lambda x: x * 2, 1) == 16
    assert ops.while_loop(lambda x: x < 10, lambda x: x * 2, 1, maximum_iterations=2) == 4


def test_tensor_comparisons_format_and_iteration():
    t = Tensor(np.array([1.0, 2.0, 3.0]))
    with GradientTape() as tape:
        tape.watch(t)
        u = t * 1.0
        np.testing.assert_array_equal(u == 2.0, [False, True, False])
        np.testing.assert_array_equal(u != 2.0, [True, False, True])
        np.testing.assert_array_equal(u >= 2.0, [False, True, True])
        rows = [row for row in u]  # iteration indexes the tensor, recorded
        total = rows[0] + rows[2]
        assert f"{ops.sum(u):.2f}" == "6.00"
    np.testing.assert_allclose(tape.gradient(total, t), [1, 0, 1])


def test_second_order_gradients_are_refused_not_silently_wrong():
    v = Variable(np.array([2.0]))
    with GradientTape() as outer:
        with GradientTape() as inner:
            y = ops.sum(v * v * v)
        with pytest.raises(NotImplementedError, match="gradients of gradients"):
            inner.gradient(y, v)
    with GradientTape() as outer:  # an unrelated outer tape does not stop a gradient inside it
        with GradientTape() as inner:
            x = np.array([3.0])
            inner.watch(x)
            z = ops.square(x)
        np.testing.assert_allclose(inner.gradient(z, x), [6.0])
    assert outer.gradient(z, x) is None


def test_numpy_functions_on_tensors_are_recorded():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    with GradientTape() as tape:
        tape.watch(x)
        t = tensor(x)
        parts = [np.concatenate([t, t], axis=1), np.mean(t, axis=0), np.reshape(t, shape=(4,)), np.linalg.norm(t),
                 np.transpose(t), np.where(x > 2, t, 0.0), np.log1p(t), np.sin(t), np.stack([t, t]).sum(axis=0)]
        total = sum(ops.sum(p) for p in parts)
        plain = np.sum(t, dtype=np.float64)  # an argument keras.ops lacks: NumPy computes it, unrecorded
        assert np.shape(t) == (2, 2) and np.ndim(t) == 2 and np.allclose(t, x)
    assert not isinstance(plain, Tensor) and plain == 10.0
    expected = (2 + 0.5 + 1 + x / np.linalg.norm(x) + 1 + (x > 2) + 1 / (1 + x) + np.cos(x) + 2)
    np.testing.assert_allclose(tape.gradient(total, x), expected)


def test_keras_sub_namespaces():
    assert ops.numpy.add is ops.add and ops.math.logsumexp is ops.logsumexp
    assert ops.linalg.norm is ops.norm and ops.nn.softmax is ops.softmax



def test_more_forward_only_ops():
    assert ops.empty((2, 3)).shape == (2, 3) and ops.empty((1,)).dtype == np.float32
    np.testing.assert_array_equal(ops.isclose(np.array([1.0, 1.1]), 1.0 + 1e-9), [True, False])
    np.testing.assert_array_equal(ops.nonzero(np.array([[0, 2], [3, 0]]))[1], [1, 0])
    np.testing.assert_array_equal(ops.bincount(np.array([0, 2, 2]), minlength=4), [1, 0, 2, 0])
    assert ops.bincount(np.array([0, 2, 2])).dtype == np.int32
    np.testing.assert_allclose(ops.bincount(np.array([1, 1]), weights=np.array([0.5, 2.0])), [0, 2.5])
    np.testing.assert_array_equal(ops.bincount(np.array([[0, 1], [1, 1]])), [[1, 1], [0, 2]])
    np.testing.assert_array_equal(ops.searchsorted(np.array([1.0, 3.0, 5.0]), np.array([0.0, 3.0, 6.0])), [0, 1, 3])
    np.testing.assert_array_equal(ops.searchsorted(np.array([1.0, 3.0]), 3.0, side="right"), 2)
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]])
    np.testing.assert_array_equal(ops.in_top_k(np.array([2, 2]), scores, 2), [True, False])
    np.testing.assert_array_equal(ops.logical_xor(np.array([True, False]), np.array([True, True])), [False, True])
    with pytest.raises(ValueError, match="num"):
        ops.unstack(arr(2, 3), num=3)
    with pytest.raises(ValueError, match="reduction"):
        ops.scatter_update(arr(2), np.array([[0]]), arr(1), reduction="max")
    with pytest.raises(ValueError, match="segment_ids"):
        ops.segment_sum(arr(3, 2), np.array([0, 1]))


def test_unconnected_gradients_enum_and_scalar_arguments():
    class Zero:  # what tf.UnconnectedGradients.ZERO looks like: an enum holding "zero"
        value = "zero"
    a, b = Variable(np.ones(2)), Variable(np.ones(3))
    with GradientTape() as tape:
        y = ops.sum(a)
    np.testing.assert_array_equal(tape.gradient(y, b, unconnected_gradients=Zero()), np.zeros(3))
    value, grad = value_and_grad(lambda s: s * s * 3.0)(2.0)
    np.testing.assert_allclose(value, 12.0)
    np.testing.assert_allclose(grad, 12.0)
    assert np.asarray(grad).dtype == np.float32



def test_erfinv_inverts_erf():
    y = np.linspace(-0.999, 0.999, 41)
    np.testing.assert_allclose(np.vectorize(math.erf)(ops.erfinv(y)), y, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(ops.erfinv(np.array([-1.0, 1.0])), [-np.inf, np.inf])
    assert ops.erfinv(np.float32([0.5])).dtype == np.float32


def test_even_more_forward_only_ops():
    x = np.array([-1.5, -0.0, 0.0, 2.7, np.inf, -np.inf])
    np.testing.assert_array_equal(ops.trunc(x[:4]), np.trunc(x[:4]))
    np.testing.assert_array_equal(ops.signbit(x), np.signbit(x))
    np.testing.assert_array_equal(ops.isposinf(x), np.isposinf(x))
    np.testing.assert_array_equal(ops.isneginf(x), np.isneginf(x))
    np.testing.assert_array_equal(ops.heaviside(x[:4], 0.5), np.heaviside(x[:4], 0.5))
    assert ops.empty_like(arr(2, 3)).shape == (2, 3) and ops.empty_like(arr(2), dtype="int32").dtype == np.int32
    assert ops.is_tensor(arr(2)) and ops.is_tensor(Variable(np.ones(1))) and not ops.is_tensor([1.0])
    assert ops.dtype(np.ones(2, np.float32)) == "float32" and ops.dtype(Variable(np.ones(1))) == "float32"
    assert ops.allclose(np.ones(2), 1 + 1e-9) and not ops.allclose(np.ones(2), 1.1)
    np.testing.assert_array_equal(ops.isin(np.array([1, 2, 3]), np.array([3, 1])), [True, False, True])
    np.testing.assert_array_equal(ops.isin(np.array([1, 2]), np.array([1]), invert=True), [False, True])
    with pytest.raises(ValueError, match="method"):
        ops.quantile(arr(3), 0.5, method="cubic")
    with pytest.raises(ValueError, match="quantiles"):
        ops.quantile(arr(3), 1.5)
    with pytest.raises(ValueError, match="axes"):
        ops.rot90(arr(2, 2), axes=(1, 1))
    carry, ys = ops.scan(lambda c, _: (c + 1, None), 0, length=3)
    assert carry == 3 and ys is None



def test_linear_algebra_and_misc_forward_only():
    a = np.eye(3) * 2 + arr(3, 3)
    np.testing.assert_allclose(ops.pinv(a), np.linalg.pinv(a))
    sign, logabs = ops.slogdet(-np.eye(3))
    assert sign == -1 and logabs == 0
    with pytest.raises(ValueError, match="square"):
        ops.inv(arr(2, 3))
    np.testing.assert_allclose(ops.logspace(0, 2, 3), [1, 10, 100])
    np.testing.assert_allclose(ops.geomspace(1, 8, 4), [1, 2, 4, 8], rtol=1e-6)
    x = np.array([3.0, 1.0, 2.0, 0.0])
    assert np.sort(x[ops.argpartition(x, 1)][:2]).tolist() == [0.0, 1.0]
    np.testing.assert_array_equal(ops.unique(np.array([3, 1, 3])), [1, 3])
    values, counts = ops.unique(np.array([3, 1, 3]), return_counts=True)
    np.testing.assert_array_equal(counts, [1, 2])
    np.testing.assert_array_equal(ops.unique(np.array([3, 1, 3]), size=4, fill_value=-1), [1, 3, -1, -1])
    np.testing.assert_array_equal(ops.digitize(np.array([0.5, 1.5, 3.0]), np.array([1.0, 2.0])), [0, 1, 2])
    with pytest.raises(ValueError, match="block_size"):
        ops.depth_to_space(arr(1, 2, 2, 3), 2)



def test_numpy_array_methods_on_tensors():
    x = np.array([[1.0, -2.0], [3.0, 0.5]])
    with GradientTape() as tape:
        tape.watch(x)
        t = tensor(x)
        parts = [t.repeat(2, axis=0), t.flatten(), t.clip(0.0, 2.0), t.prod(axis=1), t.std(), t.var(axis=0),
                 t.cumsum(axis=1), t.dot(np.ones(2)), t.take([1], axis=1), t.squeeze(), t.ravel()]
        total = sum(ops.sum(p) for p in parts)
    assert t.argmax() == 2 and t.argmin(axis=1).tolist() == [1, 1]
    assert t.any() and t.all(axis=0).tolist() == [True, True] and t.tolist() == x.tolist()
    g = tape.gradient(total, x)
    expected = grad_of(lambda a: sum(ops.sum(p) for p in (
        ops.repeat(a, 2, axis=0), ops.reshape(a, (-1,)), ops.clip(a, 0.0, 2.0), ops.prod(a, axis=1), ops.std(a),
        ops.var(a, axis=0), ops.cumsum(a, axis=1), ops.dot(a, np.ones(2)), ops.take(a, [1], axis=1), a,
        ops.reshape(a, (-1,)))), x)[0]
    np.testing.assert_allclose(g, expected)



def test_numpy_wrappers_forward():
    x = np.array([[1.0, np.nan, 3.0], [np.nan, 0.5, -1.0]])
    np.testing.assert_array_equal(ops.nanargmax(x, axis=1), [2, 1])
    np.testing.assert_array_equal(ops.nanargmin(x, axis=1), [0, 2])
    np.testing.assert_allclose(ops.nanmedian(x, axis=0), np.nanmedian(x, axis=0))
    np.testing.assert_allclose(ops.nanquantile(x, 0.3), np.nanquantile(x, 0.3))
    np.testing.assert_allclose(ops.nanpercentile(x, [10, 90], axis=1), np.nanpercentile(x, [10, 90], axis=1))
    z = np.array([1 + 2j, -3j])
    np.testing.assert_array_equal(ops.imag(z), [2, -3])
    np.testing.assert_allclose(ops.angle(z), np.angle(z))
    np.testing.assert_array_equal(ops.isreal(np.array([1.0, 2.0])), [True, True])
    a, b = np.array([12, 5]), np.array([10, 3])
    np.testing.assert_array_equal(ops.bitwise_and(a, b), a & b)
    np.testing.assert_array_equal(ops.bitwise_or(a, b), a | b)
    np.testing.assert_array_equal(ops.bitwise_xor(a, b), a ^ b)
    np.testing.assert_array_equal(ops.bitwise_not(a), ~a)
    np.testing.assert_array_equal(ops.bitwise_invert(a), ~a)
    np.testing.assert_array_equal(ops.left_shift(a, 1), a << 1)
    np.testing.assert_array_equal(ops.bitwise_left_shift(a, 2), a << 2)
    np.testing.assert_array_equal(ops.right_shift(a, 1), a >> 1)
    np.testing.assert_array_equal(ops.bitwise_right_shift(a, 2), a >> 2)
    np.testing.assert_array_equal(ops.gcd(a, b), [2, 1])
    np.testing.assert_array_equal(ops.lcm(a, b), [60, 15])
    for name in ("bartlett", "blackman", "hamming", "hanning"):
        np.testing.assert_allclose(getattr(ops, name)(5), getattr(np, name)(5), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ops.kaiser(5, 2.0), np.kaiser(5, 2.0), rtol=1e-6)
    assert ops.hamming(4).dtype == np.float32
    m = arr(3, 5)
    np.testing.assert_allclose(ops.corrcoef(m), np.corrcoef(m))
    counts, edges = ops.histogram(np.array([0.0, 0.1, 0.9, 1.0]), bins=2)
    np.testing.assert_array_equal(counts, [2, 2])
    np.testing.assert_allclose(edges, [0, 0.5, 1])
    np.testing.assert_allclose(ops.i0(np.array([0.0, 1.0])), np.i0(np.array([0.0, 1.0])))
    np.testing.assert_array_equal(ops.vander(np.array([1, 2, 3]), 3), np.vander([1, 2, 3], 3))
    np.testing.assert_array_equal(ops.saturate_cast(np.array([-300.0, 12.7, 300.0]), "uint8"), [0, 12, 255])
    np.testing.assert_array_equal(ops.saturate_cast(np.array([1e10]), "int32"), [2**31 - 1])
    rows, cols = ops.unravel_index(np.array([5, 1]), (2, 3))
    assert rows.tolist() == [1, 0] and cols.tolist() == [2, 1]
    np.testing.assert_allclose(ops.correlate(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0]), mode="full"),
                               np.correlate([1.0, 2.0, 3.0], [0.0, 1.0], mode="full"))
    assert ops.nextafter(np.float32(1.0), np.float32(2.0)) > 1.0
    with pytest.raises(ValueError, match="one shape"):
        ops.psnr(arr(2), arr(3), 1.0)



def test_decompositions_and_fourier_transforms():
    a = np.eye(3) * 2 + arr(3, 3)
    values, vectors = ops.eigh(SPD)
    np.testing.assert_allclose(SPD @ vectors, vectors * values, atol=1e-10)
    w, v = ops.eig(a)
    np.testing.assert_allclose(a @ v, v * w, atol=1e-10)
    q, r = ops.qr(a)
    np.testing.assert_allclose(q @ r, a, atol=1e-12)
    assert ops.qr(arr(4, 3), mode="complete")[0].shape == (4, 4)
    u, sv, vt = ops.svd(a)
    np.testing.assert_allclose((u * sv) @ vt, a, atol=1e-12)
    np.testing.assert_allclose(ops.svd(a, compute_uv=False), sv)
    b = arr(4, 2, seed=1)
    np.testing.assert_allclose(ops.lstsq(arr(4, 3), b), np.linalg.lstsq(arr(4, 3), b, rcond=None)[0])
    assert ops.matrix_rank(np.outer(arr(3), arr(3, seed=1))) == 1
    for m in (a, np.stack([a, a.T])):
        lu, pivots = ops.lu_factor(m)
        for lu_k, piv_k, m_k in zip(lu.reshape(-1, 3, 3), pivots.reshape(-1, 3), m.reshape(-1, 3, 3)):
            permuted = m_k.copy()
            for k, p in enumerate(piv_k):
                permuted[[k, p]] = permuted[[p, k]]
            np.testing.assert_allclose((np.tril(lu_k, -1) + np.eye(3)) @ np.triu(lu_k), permuted, atol=1e-12)
    np.testing.assert_array_equal(ops.segment_prod(np.array([2.0, 3.0, 4.0]), np.array([0, 1, 0])), [8.0, 3.0])
    real, imag = arr(2, 4), arr(2, 4, seed=1)
    z = real + 1j * imag
    for op, ref in ((ops.fft, np.fft.fft), (ops.fft2, np.fft.fft2), (ops.ifft2, np.fft.ifft2)):
        out_real, out_imag = op((real, imag))
        np.testing.assert_allclose(out_real + 1j * out_imag, ref(z), atol=1e-12)
    out_real, out_imag = ops.rfft(real, fft_length=6)
    np.testing.assert_allclose(out_real + 1j * out_imag, np.fft.rfft(real, n=6), atol=1e-12)
    np.testing.assert_allclose(ops.irfft((out_real, out_imag), fft_length=6),
                               np.fft.irfft(np.fft.rfft(real, n=6), n=6), atol=1e-12)
    assert ops.fft((real.astype(np.float32), imag.astype(np.float32)))[0].dtype == np.float32
    np.testing.assert_allclose(ops.polar(np.array([2.0]), np.array([np.pi / 2])), [2j], atol=1e-12)
    with pytest.raises(ValueError, match="real, imaginary"):
        ops.fft(real)
    with pytest.raises(ValueError, match="cdist"):
        ops.cdist(arr(3, 2), arr(3, 3))



def test_jvp_and_views():
    x, t = arr(2, 3), arr(2, 3, seed=1)
    out, tangent = ops.jvp(ops.sin, (x,), (t,))
    np.testing.assert_allclose(out, np.sin(x))
    np.testing.assert_allclose(tangent, np.cos(x) * t)
    a, b = arr(3), arr(3, seed=2)
    ta, tb = arr(3, seed=3), arr(3, seed=4)

    def fn(u, v):
        return {"dot": ops.sum(u * v), "outer": ops.outer(u, v)}, "aux"
    out, tangent, aux = ops.jvp(fn, [a, b], [ta, tb], has_aux=True)
    assert aux == "aux" and set(tangent) == {"dot", "outer"}
    np.testing.assert_allclose(out["dot"], a @ b)
    np.testing.assert_allclose(tangent["dot"], ta @ b + a @ tb)
    np.testing.assert_allclose(tangent["outer"], np.outer(ta, b) + np.outer(a, tb))
    with pytest.raises(ValueError, match="tangent"):
        ops.jvp(ops.sin, (x,), (t, t))
    assert ops.view(np.float32([1.0]), "int32")[0] == np.float32([1.0]).view(np.int32)[0]
    z = np.array([1 + 2j, 3 - 1j])
    np.testing.assert_array_equal(ops.view_as_real(z), [[1, 2], [3, -1]])
    np.testing.assert_array_equal(ops.view_as_complex(ops.view_as_real(z)), z)
    with pytest.raises(ValueError, match="complex"):
        ops.view_as_real(np.ones(2))
    with pytest.raises(ValueError, match="fold"):
        ops.fold(arr(1, 8, 5), (3, 4), 2)



def test_ctc_decode_greedy():
    # steps' best classes: 1 1 0 2 2 | 2 0 (padding beyond length 2)
    best = np.array([[1, 1, 0, 2, 2], [2, 0, 1, 1, 1]])
    inputs = np.where(np.eye(3)[best] > 0, 0.9, 0.05)
    decoded, scores = ops.ctc_decode(inputs, np.array([5, 2]))
    assert decoded.shape == (1, 2, 5)
    np.testing.assert_array_equal(decoded[0], [[1, 2, -1, -1, -1], [2, -1, -1, -1, -1]])
    np.testing.assert_allclose(scores, [[-4.5], [-1.8]])
    decoded, _ = ops.ctc_decode(inputs, np.array([5, 2]), merge_repeated=False)
    np.testing.assert_array_equal(decoded[0, 0], [1, 1, 2, 2, -1])
    with pytest.raises(ValueError, match="greedy"):
        ops.ctc_decode(inputs, np.array([5, 2]), strategy="beam_search")



def test_istft_inverts_stft():
    signal = arr(2, 30)
    for args, kwargs in (((8, 4, 8), {}), ((6, 3, 8), {"window": "hamming"}), ((8, 2, 8), {"center": False})):
        spectrum = ops.stft(signal, *args, **kwargs)
        restored = ops.istft(spectrum, *args, length=30 if kwargs.get("center", True) else None, **kwargs)
        if kwargs.get("center", True):
            np.testing.assert_allclose(restored, signal, atol=1e-10)
        else:  # without centering the first and last samples are covered by too little window
            np.testing.assert_allclose(restored[..., 4:-4], signal[..., 4:restored.shape[-1] - 4], atol=1e-10)
    with pytest.raises(ValueError, match="same shape|share one shape"):
        ops.istft((arr(3, 4), arr(3, 3)), 4, 2, 4)
    with pytest.raises(ValueError, match="window"):
        ops.stft(signal, 8, 4, 8, window="kaiser")


def test_gammainc_values():
    x = np.array([0.0, 0.3, 1.0, 4.0, 20.0])
    np.testing.assert_allclose(ops.gammainc(1.0, x), 1 - np.exp(-x), rtol=1e-12, atol=1e-15)
    # integer a: P(3, x) = 1 - exp(-x) (1 + x + x^2 / 2)
    np.testing.assert_allclose(ops.gammainc(3.0, x), 1 - np.exp(-x) * (1 + x + x * x / 2), rtol=1e-10, atol=1e-15)
    # a = 1/2: P(1/2, x) = erf(sqrt(x))
    np.testing.assert_allclose(ops.gammainc(0.5, x), np.vectorize(math.erf)(np.sqrt(x)), rtol=1e-10, atol=1e-15)
