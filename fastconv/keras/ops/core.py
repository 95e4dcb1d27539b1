"""Creation, arithmetic, reductions, shape ops and linear algebra of keras.ops (NumPy semantics)."""
import builtins
import functools
import math
import string

import numpy as np

from fastconv.keras import backend
from fastconv.keras.autodiff import Tensor, record, stop_recording, unwrap

__all__ = [
    "convert_to_tensor", "convert_to_numpy", "array", "cast", "zeros", "ones", "zeros_like", "ones_like", "full",
    "full_like", "arange", "linspace", "eye", "identity", "tri", "shape", "ndim", "size", "stop_gradient",
    "add", "subtract", "multiply", "divide", "true_divide", "negative", "power", "square", "sqrt", "rsqrt", "exp",
    "log", "log1p", "expm1", "abs", "absolute", "sign", "maximum", "minimum", "clip", "where", "tanh", "sin", "cos",
    "erf", "reciprocal", "floor", "ceil", "round", "log2", "log10", "sinh", "cosh", "arctan", "arcsin", "arccos",
    "logaddexp", "nan_to_num", "isinf",
    "equal", "not_equal", "greater", "greater_equal", "less", "less_equal", "logical_and", "logical_or",
    "logical_not", "isnan", "isfinite", "all", "any", "floor_divide", "mod",
    "sum", "mean", "max", "min", "amax", "amin", "prod", "var", "std", "argmax", "argmin", "count_nonzero",
    "logsumexp", "cumsum", "average",
    "reshape", "transpose", "expand_dims", "squeeze", "concatenate", "stack", "split", "take", "take_along_axis",
    "flatten", "ravel", "tile", "repeat", "broadcast_to", "pad", "get_item", "slice", "flip", "swapaxes", "moveaxis",
    "hstack", "vstack", "roll", "tril", "triu", "diagonal", "diag", "trace",
    "matmul", "dot", "einsum", "tensordot", "outer", "sort", "argsort", "top_k", "norm", "custom_gradient",
    "cond", "fori_loop", "while_loop",
    "unstack", "cumprod", "slice_update", "scatter", "scatter_update", "segment_sum", "segment_max", "meshgrid",
    "select", "copy", "empty", "isclose", "nonzero", "bincount", "searchsorted", "in_top_k", "logical_xor",
    "tan", "arcsinh", "arccosh", "arctanh", "arctan2", "cbrt", "exp2", "fabs", "trunc", "hypot", "divide_no_nan",
    "deg2rad", "rad2deg", "logaddexp2", "erfinv", "signbit", "isposinf", "isneginf", "heaviside",
    "nansum", "nanmean", "nanmax", "nanmin", "ptp", "quantile", "percentile", "median",
    "rot90", "fliplr", "flipud", "diff", "inner", "vdot", "column_stack", "dstack", "array_split", "append",
    "empty_like", "is_tensor", "dtype", "allclose", "isin", "map", "scan", "switch", "vectorized_map",
    "inv", "det", "slogdet", "logdet", "solve", "matrix_power", "pinv", "cholesky", "cross", "erfc", "sinc", "fmax",
    "fmin", "fmod", "logspace", "geomspace", "argpartition", "unique", "digitize",
    "segment_min", "nanargmax", "nanargmin", "nancumsum", "nancumprod", "nanprod", "nanstd", "nanvar", "nanmedian",
    "nanpercentile", "nanquantile", "hsplit", "vsplit", "dsplit", "kron", "trapezoid", "real", "imag", "conj",
    "conjugate", "angle", "isreal", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "bitwise_invert",
    "bitwise_left_shift", "bitwise_right_shift", "left_shift", "right_shift", "bartlett", "blackman", "hamming",
    "hanning", "kaiser", "corrcoef", "histogram", "gcd", "lcm", "ldexp", "i0", "vander", "saturate_cast",
    "unravel_index", "correlate", "nextafter",
    "diagflat", "cdist", "extract_sequences", "associative_scan", "vectorize", "segment_prod", "eig", "eigh", "qr",
    "svd", "lstsq", "matrix_rank", "solve_triangular", "lu_factor", "cholesky_inverse", "fft", "fft2", "ifft2", "rfft",
    "irfft", "polar", "jvp", "view", "view_as_real", "view_as_complex", "stft", "istft", "gammainc",
]


# ----- conversion -----
def _array(x):
    """The NumPy value of any op argument; Python floats and float lists become floatx, Python ints
    int32 (when they fit), as in Keras."""
    x = unwrap(x)
    if isinstance(x, np.ndarray):
        return x
    array = np.asarray(x)
    if array.dtype == np.float64 and not isinstance(x, np.generic):
        array = array.astype(backend.floatx())
    elif array.dtype == np.int64 and not isinstance(x, np.generic) and \
            (array.size == 0 or (array.min() >= -2**31 and array.max() < 2**31)):
        array = array.astype(np.int32)
    if array.dtype == object:
        if type(x).__name__ == "KerasTensor":  # a symbolic keras.Input: fastconv's graphs hold layers only
            raise TypeError("keras.ops cannot be applied to a symbolic tensor (keras.Input) in a functional "
                            "model here: put the computation in a Layer's call, or a keras.layers.Lambda")
        raise TypeError(f"keras.ops takes arrays and numbers, got {type(x).__name__}")
    return array


def convert_to_tensor(x, dtype=None, sparse=None, ragged=None):
    """x as an array (a Tensor or Variable passes through, so gradients still flow)."""
    if dtype is not None:
        return cast(x, dtype)
    if isinstance(x, Tensor) or getattr(type(x), "_is_keras_variable", False):
        return x
    return _array(x)


def array(x, dtype=None):
    return convert_to_tensor(x, dtype=dtype)


def convert_to_numpy(x):
    return np.array(unwrap(x))


def cast(x, dtype):
    value = _array(x)
    dtype = np.dtype(dtype)
    out = value.astype(dtype)
    if dtype.kind != "f" or value.dtype.kind != "f":
        return out
    return record(out, (x,), lambda g: (g.astype(value.dtype),))


def stop_gradient(variable):
    """The value of `variable` as a constant: no gradient flows through it."""
    return np.array(_array(variable))


def zeros(shape, dtype=None):
    return np.zeros(shape, dtype or backend.floatx())


def ones(shape, dtype=None):
    return np.ones(shape, dtype or backend.floatx())


def full(shape, fill_value, dtype=None):
    return np.full(shape, unwrap(fill_value), dtype or backend.floatx())


def zeros_like(x, dtype=None):
    return np.zeros_like(_array(x), dtype=dtype)


def ones_like(x, dtype=None):
    return np.ones_like(_array(x), dtype=dtype)


def full_like(x, fill_value, dtype=None):
    return np.full_like(_array(x), unwrap(fill_value), dtype=dtype)


def arange(start, stop=None, step=None, dtype=None):
    step = 1 if step is None else step
    values = np.arange(start, stop, step) if stop is not None else np.arange(0, start, step)
    if dtype is None and values.dtype == np.int64:
        dtype = np.int32  # Keras' default integer type
    if dtype is None and values.dtype == np.float64:
        dtype = backend.floatx()
    return values if dtype is None else values.astype(dtype)


def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    values = np.linspace(unwrap(start), unwrap(stop), num, endpoint=endpoint, retstep=retstep, axis=axis)
    if retstep:
        values, step = values
    values = values.astype(dtype or backend.floatx())
    return (values, step) if retstep else values


def identity(n, dtype=None):
    return np.identity(n, dtype=dtype or backend.floatx())


def tri(N, M=None, k=0, dtype=None):
    return np.tri(N, M, k, dtype=dtype or backend.floatx())


def eye(N, M=None, k=0, dtype=None):
    return np.eye(N, M, k, dtype=dtype or backend.floatx())


def shape(x):
    return tuple(np.shape(unwrap(x)))


def ndim(x):
    return np.ndim(unwrap(x))


def size(x):
    return np.size(unwrap(x))


# ----- element-wise arithmetic -----
def _operand(x, other):
    """Python numbers stay Python numbers beside an array, so NumPy's weak-scalar promotion keeps
    float32 * 2 in float32 (a 0-d int64 array would promote it to float64)."""
    if type(x) in (int, float, bool) and not (type(other) in (int, float, bool)):
        return x
    return _array(x)


def _binary(x1, x2, fn, vjp):
    a, b = _operand(x1, x2), _operand(x2, x1)
    # an integer array with a Python float is floatx in Keras (NumPy would say float64)
    if type(a) is float and b.dtype.kind in "biu":
        b = b.astype(backend.floatx())
    elif type(b) is float and a.dtype.kind in "biu":
        a = a.astype(backend.floatx())
    out = fn(a, b)
    return record(out, (x1, x2), lambda g: vjp(g, a, b, out))


def add(x1, x2):
    return _binary(x1, x2, np.add, lambda g, a, b, out: (g, g))


def subtract(x1, x2):
    return _binary(x1, x2, np.subtract, lambda g, a, b, out: (g, -g))


def multiply(x1, x2):
    return _binary(x1, x2, np.multiply, lambda g, a, b, out: (g * b, g * a))


def divide(x1, x2):
    def fn(a, b):
        out = np.true_divide(a, b)
        # int / int is floatx in Keras (NumPy would give float64)
        if np.result_type(a, b).kind in "biu":
            out = np.asarray(out).astype(backend.floatx())[()]
        return out
    return _binary(x1, x2, fn, lambda g, a, b, out: (g / b, -g * out / b))


true_divide = divide


def power(x1, x2):
    def vjp(g, a, b, out):
        with np.errstate(divide="ignore", invalid="ignore"):
            da = g * b * np.power(a, b - 1)
            db = g * out * np.log(np.where(a > 0, a, 1))
        return da, db
    return _binary(x1, x2, np.power, vjp)


def maximum(x1, x2):
    # A tie sends the whole gradient to the first argument.
    return _binary(x1, x2, np.maximum, lambda g, a, b, out: (g * (a >= b), g * (a < b)))


def minimum(x1, x2):
    return _binary(x1, x2, np.minimum, lambda g, a, b, out: (g * (a <= b), g * (a > b)))


def _unary(x, fn, vjp, floating=False):
    a = _array(x)
    if floating and a.dtype.kind in "biu":  # sqrt, exp, ... of integers are floatx, as in Keras
        a = a.astype(backend.floatx())
    out = fn(a)
    return record(out, (x,), lambda g: (vjp(g, a, out),))


def negative(x):
    return _unary(x, np.negative, lambda g, a, out: -g)


def square(x):
    return _unary(x, np.square, lambda g, a, out: 2 * a * g)


def sqrt(x):
    return _unary(x, np.sqrt, lambda g, a, out: g / (2 * out), floating=True)


def rsqrt(x):
    return _unary(x, lambda a: 1 / np.sqrt(a), lambda g, a, out: -0.5 * g * out / a, floating=True)


def reciprocal(x):
    return _unary(x, lambda a: 1 / a, lambda g, a, out: -g * out * out, floating=True)


def exp(x):
    return _unary(x, np.exp, lambda g, a, out: g * out, floating=True)


def expm1(x):
    return _unary(x, np.expm1, lambda g, a, out: g * (out + 1), floating=True)


def log(x):
    return _unary(x, np.log, lambda g, a, out: g / a, floating=True)


def log1p(x):
    return _unary(x, np.log1p, lambda g, a, out: g / (1 + a), floating=True)


def abs(x):
    return _unary(x, np.abs, lambda g, a, out: g * np.sign(a))


absolute = abs


def tanh(x):
    return _unary(x, np.tanh, lambda g, a, out: g * (1 - out * out), floating=True)


def sin(x):
    return _unary(x, np.sin, lambda g, a, out: g * np.cos(a), floating=True)


def cos(x):
    return _unary(x, np.cos, lambda g, a, out: -g * np.sin(a), floating=True)


def log2(x):
    return _unary(x, np.log2, lambda g, a, out: g / (a * math.log(2)), floating=True)


def log10(x):
    return _unary(x, np.log10, lambda g, a, out: g / (a * math.log(10)), floating=True)


def sinh(x):
    return _unary(x, np.sinh, lambda g, a, out: g * np.cosh(a), floating=True)


def cosh(x):
    return _unary(x, np.cosh, lambda g, a, out: g * np.sinh(a), floating=True)


def arctan(x):
    return _unary(x, np.arctan, lambda g, a, out: g / (1 + a * a), floating=True)


def arcsin(x):
    return _unary(x, np.arcsin, lambda g, a, out: g / np.sqrt(1 - a * a), floating=True)


def arccos(x):
    return _unary(x, np.arccos, lambda g, a, out: -g / np.sqrt(1 - a * a), floating=True)


def logaddexp(x1, x2):
    """log(exp(x1) + exp(x2)) without overflow."""
    def vjp(g, a, b, out):
        return g * np.exp(a - out), g * np.exp(b - out)
    return _binary(x1, x2, np.logaddexp, vjp)


def nan_to_num(x, nan=0.0, posinf=None, neginf=None):
    """NaN and infinities replaced by numbers; the gradient passes where x was finite."""
    a = _array(x)
    out = np.nan_to_num(a, nan=nan, posinf=posinf, neginf=neginf)
    return record(out, (x,), lambda g: (g * np.isfinite(a),))


def isinf(x):
    return np.isinf(_array(x))


def _erf(a):
    # Abramowitz-Stegun 7.1.26 is too coarse for gradient checks; math.erf per element is exact.
    return np.vectorize(math.erf, otypes=[a.dtype if a.dtype.kind == "f" else np.float64])(a)


def erf(x):
    return _unary(x, _erf, lambda g, a, out: g * (2 / math.sqrt(math.pi)) * np.exp(-a * a), floating=True)


# Piecewise-constant ops and predicates: no gradient (the tape sees a constant), Keras' signatures.
def sign(x):
    return np.sign(_array(x))


def floor(x):
    return np.floor(_array(x))


def ceil(x):
    return np.ceil(_array(x))


def round(x, decimals=0):
    return np.round(_array(x), decimals)


def _compare(fn, x1, x2):
    return fn(_operand(x1, x2), _operand(x2, x1))


def equal(x1, x2):
    return _compare(np.equal, x1, x2)


def not_equal(x1, x2):
    return _compare(np.not_equal, x1, x2)


def greater(x1, x2):
    return _compare(np.greater, x1, x2)


def greater_equal(x1, x2):
    return _compare(np.greater_equal, x1, x2)


def less(x1, x2):
    return _compare(np.less, x1, x2)


def less_equal(x1, x2):
    return _compare(np.less_equal, x1, x2)


def logical_and(x1, x2):
    return np.logical_and(_array(x1), _array(x2))


def logical_or(x1, x2):
    return np.logical_or(_array(x1), _array(x2))


def logical_not(x):
    return np.logical_not(_array(x))


def isnan(x):
    return np.isnan(_array(x))


def isfinite(x):
    return np.isfinite(_array(x))


def floor_divide(x1, x2):
    return _compare(np.floor_divide, x1, x2)


def mod(x1, x2):
    """x1 - floor(x1 / x2) * x2, differentiable almost everywhere like TF's floormod."""
    return _binary(x1, x2, np.mod, lambda g, a, b, out: (g, -g * np.floor_divide(a, b)))


def all(x, axis=None, keepdims=False):
    return np.all(_array(x), axis=_axis_arg(axis), keepdims=keepdims)


def any(x, axis=None, keepdims=False):
    return np.any(_array(x), axis=_axis_arg(axis), keepdims=keepdims)


def clip(x, x_min, x_max):
    a = _array(x)
    low, high = _operand(x_min, a), _operand(x_max, a)
    out = np.clip(a, low, high)

    def vjp(g):
        # minimum(maximum(x, x_min), x_max): each entry's gradient goes to whichever value it took
        # (x_max wins when the bounds cross, as np.clip)
        above = np.maximum(a, low) > high
        below = (a < low) & ~above
        return g * ~(below | above), g * below, g * above
    return record(out, (x, x_min, x_max), vjp)


def where(condition, x1=None, x2=None):
    cond = _array(condition).astype(bool)
    if x1 is None and x2 is None:
        return np.nonzero(cond)
    a, b = _operand(x1, x2), _operand(x2, x1)  # where(mask, x, 0) stays float32, as NumPy's weak scalars
    out = np.where(cond, a, b)
    if type(a) is float and type(b) is float:
        out = out.astype(backend.floatx())
    return record(out, (x1, x2), lambda g: (np.where(cond, g, 0), np.where(cond, 0, g)))


# ----- reductions -----
def _axis_arg(axis):
    """Keras takes an axis as an int, a tuple or a list; NumPy's reductions want an int or a tuple."""
    return tuple(int(a) for a in axis) if isinstance(axis, (list, tuple)) else axis


def _axes(axis, ndim_):
    if axis is None:
        return tuple(range(ndim_))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    return tuple(a % ndim_ if ndim_ else a for a in axes)


def _expand_reduced(g, axes, keepdims):
    """Reinsert the reduced axes into a gradient so it broadcasts against the input."""
    if keepdims:
        return g
    for axis in sorted(axes):
        g = np.expand_dims(g, axis)
    return g


def sum(x, axis=None, keepdims=False):
    a = _array(x)
    axis = _axis_arg(axis)
    out = np.sum(a, axis=axis, keepdims=keepdims)
    axes = _axes(axis, a.ndim)
    return record(out, (x,), lambda g: (np.broadcast_to(_expand_reduced(g, axes, keepdims), a.shape),))


def mean(x, axis=None, keepdims=False):
    a = _array(x)
    axis = _axis_arg(axis)
    out = np.mean(a, axis=axis, keepdims=keepdims)
    # float inputs keep their type; integers and booleans average to floatx, as in Keras
    out = np.asarray(out).astype(a.dtype if a.dtype.kind == "f" else backend.floatx())[()]
    axes = _axes(axis, a.ndim)
    count = math.prod(a.shape[i] for i in axes) if a.ndim else 1
    return record(out, (x,), lambda g: (np.broadcast_to(_expand_reduced(g, axes, keepdims) / count, a.shape),))


def _extreme(x, axis, keepdims, fn):
    a = _array(x)
    axis = _axis_arg(axis)
    out = fn(a, axis=axis, keepdims=keepdims)
    axes = _axes(axis, a.ndim)

    def vjp(g):
        # Ties share the gradient equally (as TensorFlow's reduce_max does).
        hit = a == _expand_reduced(out, axes, keepdims)
        share = hit / hit.sum(axis=axes, keepdims=True)
        return (share * _expand_reduced(g, axes, keepdims),)
    return record(out, (x,), vjp)


def max(x, axis=None, keepdims=False, initial=None):
    return _extreme(x, axis, keepdims, np.max)


def min(x, axis=None, keepdims=False, initial=None):
    return _extreme(x, axis, keepdims, np.min)


amax, amin = max, min


def prod(x, axis=None, keepdims=False, dtype=None):
    a = _array(x)
    axis = _axis_arg(axis)
    out = np.prod(a, axis=axis, keepdims=keepdims)
    axes = _axes(axis, a.ndim)

    def vjp(g):
        # The product of the others in each reduced group, without dividing so zeros are handled:
        # the reduced axes go last, flattened into one, then exclusive cumulative products from
        # both ends.
        kept = [i for i in range(a.ndim) if i not in axes]
        moved = np.transpose(a, kept + list(axes))
        flat = moved.reshape(moved.shape[:len(kept)] + (-1,))
        ones = np.ones_like(flat[..., :1])
        left = np.cumprod(np.concatenate([ones, flat[..., :-1]], -1), -1)
        right = np.flip(np.cumprod(np.concatenate([ones, np.flip(flat, -1)[..., :-1]], -1), -1), -1)
        others = np.transpose((left * right).reshape(moved.shape), np.argsort(kept + list(axes)))
        return (_expand_reduced(g, axes, keepdims) * others,)
    return record(out, (x,), vjp)


def var(x, axis=None, keepdims=False):
    if _array(x).dtype.kind in "biu":  # integers: the variance of their floatx values, as Keras
        x = _array(x).astype(backend.floatx())
    centered = subtract(x, mean(x, axis=axis, keepdims=True))
    return mean(square(centered), axis=axis, keepdims=keepdims)


def std(x, axis=None, keepdims=False):
    return sqrt(var(x, axis=axis, keepdims=keepdims))


def argmax(x, axis=None, keepdims=False):
    return np.argmax(_array(x), axis=axis, keepdims=keepdims).astype(np.int32)  # int32 in Keras 3


def argmin(x, axis=None, keepdims=False):
    return np.argmin(_array(x), axis=axis, keepdims=keepdims).astype(np.int32)


def count_nonzero(x, axis=None):
    return np.count_nonzero(_array(x), axis=_axis_arg(axis)).astype(np.int32)


def logsumexp(x, axis=None, keepdims=False):
    a = _array(x)
    axis = _axis_arg(axis)
    peak = np.max(a, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)
    total = np.sum(np.exp(a - peak), axis=axis, keepdims=True)
    out_keep = np.log(total) + peak
    axes = _axes(axis, a.ndim)
    out = out_keep if keepdims else np.squeeze(out_keep, axis=axes)
    return record(out, (x,), lambda g: (_expand_reduced(g, axes, keepdims) * np.exp(a - out_keep),))


def average(x, axis=None, weights=None):
    """The mean of x along axis, weighted by `weights` (x's shape, or 1-D along axis) if given."""
    if weights is None:
        return mean(x, axis=axis)
    w = weights
    if np.ndim(_array(weights)) == 1 and np.ndim(_array(x)) > 1:
        if axis is None:
            raise ValueError("average: 1-D weights for an N-D x need axis=")
        shape_ = [1] * np.ndim(_array(x))
        shape_[axis] = -1
        w = reshape(weights, shape_)
    return divide(sum(multiply(x, w), axis=axis), sum(multiply(ones_like(x), w), axis=axis))


def cumsum(x, axis=None, dtype=None):
    a = _array(x)
    out = np.cumsum(a, axis=axis)
    if axis is None:
        return record(out, (x,), lambda g: (np.flip(np.cumsum(np.flip(g))).reshape(a.shape),))
    return record(out, (x,), lambda g: (np.flip(np.cumsum(np.flip(g, axis), axis=axis), axis),))


def norm(x, ord=None, axis=None, keepdims=False):
    """Vector norms (any ord, inf, -inf) over one axis, or the Frobenius norm (ord None or 'fro')."""
    axis = _axis_arg(axis)
    vector = isinstance(axis, (int, np.integer)) or (axis is None and ndim(x) == 1) or \
        (isinstance(axis, tuple) and len(axis) == 1)
    if ord is None or ord == "fro" or (ord == 2 and vector):
        if ord == "fro" and vector:
            raise ValueError("norm: ord='fro' is a matrix norm; give two axes or a 2-D x")
        return sqrt(sum(square(x), axis=axis, keepdims=keepdims))
    if not vector or isinstance(ord, str):
        raise ValueError(f"norm supports vector norms over one axis and the Frobenius norm, got ord={ord!r} "
                         f"with axis={axis!r}")
    if ord == np.inf:
        return max(abs(x), axis=axis, keepdims=keepdims)
    if ord == -np.inf:
        return min(abs(x), axis=axis, keepdims=keepdims)
    if ord == 0:
        return np.sum(_array(x) != 0, axis=axis, keepdims=keepdims).astype(_array(x).dtype)
    return power(sum(power(abs(x), ord), axis=axis, keepdims=keepdims), 1.0 / ord)


# ----- shapes -----
def reshape(x, newshape):
    a = _array(x)
    return record(a.reshape(newshape), (x,), lambda g: (g.reshape(a.shape),))


def flatten(x):
    return reshape(x, (-1,))


ravel = flatten


def transpose(x, axes=None):
    a = _array(x)
    out = np.transpose(a, axes)
    inverse = None if axes is None else np.argsort([ax % a.ndim for ax in axes])
    return record(out, (x,), lambda g: (np.transpose(g, inverse),))


def swapaxes(x, axis1, axis2):
    axes = list(range(ndim(x)))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(x, axes)


def moveaxis(x, source, destination):
    n = ndim(x)
    sources = [int(source) % n] if np.ndim(source) == 0 else [int(s) % n for s in source]
    destinations = [int(destination) % n] if np.ndim(destination) == 0 else [int(d) % n for d in destination]
    if len(sources) != len(destinations):
        raise ValueError(f"moveaxis needs as many destinations as sources, got {source!r} and {destination!r}")
    order = [axis for axis in range(n) if axis not in sources]
    for dest, src in sorted(zip(destinations, sources)):
        order.insert(dest, src)
    return transpose(x, order)


def expand_dims(x, axis):
    a = _array(x)
    return reshape(x, np.expand_dims(a, axis).shape)


def squeeze(x, axis=None):
    a = _array(x)
    return reshape(x, np.squeeze(a, axis).shape)


def broadcast_to(x, shape):
    a = _array(x)
    return record(np.broadcast_to(a, shape).copy(), (x,), lambda g: (g,))  # the tape sums g back to a's shape


def concatenate(xs, axis=0):
    arrays = [_array(x) for x in xs]
    out = np.concatenate(arrays, axis=axis)
    bounds = np.cumsum([a.shape[axis] for a in arrays])[:-1]
    return record(out, tuple(xs), lambda g: tuple(np.split(g, bounds, axis=axis)))


def stack(x, axis=0):
    return concatenate([expand_dims(item, axis) for item in x], axis=axis)


def get_item(x, key):
    a = _array(x)
    key = unwrap(key) if isinstance(key, Tensor) else key
    out = a[key]

    def vjp(g):
        grad = np.zeros_like(a)
        np.add.at(grad, key, g)  # add.at: repeated indices each get their share
        return (grad,)
    return record(np.array(out) if isinstance(out, np.ndarray) else out, (x,), vjp)


def slice(inputs, start_indices, shape):
    key = tuple(builtins.slice(int(start), int(start) + int(length)) for start, length in zip(start_indices, shape))
    return get_item(inputs, key)


def _py_slice(start, stop):
    return builtins.slice(start, stop)


def split(x, indices_or_sections, axis=0):
    a = _array(x)
    pieces = np.split(np.arange(a.shape[axis]), indices_or_sections)
    return [get_item(x, (_py_slice(None, None),) * (axis % a.ndim) + (_py_slice(int(p[0]), int(p[-1]) + 1),))
            if len(p) else np.take(a, [], axis=axis) for p in pieces]


def take(x, indices, axis=None):
    a = _array(x)
    idx = np.asarray(unwrap(indices))
    out = np.take(a, idx, axis=axis)

    def vjp(g):
        if axis is None:
            grad = np.zeros(a.size, a.dtype)
            np.add.at(grad, idx.reshape(-1), g.reshape(-1))
            return (grad.reshape(a.shape),)
        ax = axis % a.ndim
        grad = np.zeros_like(np.moveaxis(a, ax, 0))
        moved = np.moveaxis(g, tuple(range(ax, ax + idx.ndim)), tuple(range(idx.ndim)))
        np.add.at(grad, idx, moved)
        return (np.moveaxis(grad, 0, ax),)
    return record(out, (x,), vjp)


def take_along_axis(x, indices, axis=None):
    a = _array(x)
    idx = np.asarray(unwrap(indices))
    out = np.take_along_axis(a, idx, axis=axis)

    def vjp(g):
        if axis is None:  # indices into the flattened array
            grad = np.zeros(a.size, a.dtype)
            np.add.at(grad, idx, g)
            return (grad.reshape(a.shape),)
        grad = np.zeros_like(a)
        # put_along_axis would not accumulate repeated indices: add.at on explicit coordinates does
        coords = list(np.indices(idx.shape, sparse=True))
        coords[axis % a.ndim] = idx
        np.add.at(grad, tuple(coords), g)
        return (grad,)
    return record(out, (x,), vjp)


def tile(x, repeats):
    a = _array(x)
    reps = (repeats,) if isinstance(repeats, int) else tuple(repeats)
    out = np.tile(a, reps)
    full_reps = (1,) * (out.ndim - len(reps)) + reps
    base = (1,) * (out.ndim - a.ndim) + a.shape

    def vjp(g):
        split_shape = [d for r, s in zip(full_reps, base) for d in (r, s)]
        grad = g.reshape(split_shape).sum(axis=tuple(range(0, 2 * out.ndim, 2)))
        return (grad.reshape(a.shape),)
    return record(out, (x,), vjp)


def repeat(x, repeats, axis=None):
    """np.repeat, as a gather (take) so the gradient sums each entry's copies."""
    counts = np.asarray(unwrap(repeats))
    if counts.dtype.kind not in "iu":
        raise TypeError(f"repeats must be an int or ints, got {repeats!r}")
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    return take(x, np.repeat(np.arange(np.shape(_array(x))[axis]), counts), axis=axis)


def flip(x, axis=None):
    a = _array(x)
    return record(np.flip(a, axis).copy(), (x,), lambda g: (np.flip(g, axis),))


_PAD_BY_INDEX = ("edge", "reflect", "symmetric", "wrap")


def pad(x, pad_width, mode="constant", constant_values=None):
    a = _array(x)
    widths = np.broadcast_to(np.asarray(pad_width), (a.ndim, 2))
    if mode in _PAD_BY_INDEX:
        # These modes copy entries of x: a gather per padded axis, differentiable through take.
        if constant_values is not None:
            raise ValueError(f"constant_values is for mode='constant', not {mode!r}")
        out = x
        for axis_, (lo, hi) in enumerate(widths):
            if lo or hi:
                out = take(out, np.pad(np.arange(a.shape[axis_]), (int(lo), int(hi)), mode=mode), axis=axis_)
        return out if out is not x else a.copy()
    if mode != "constant":
        raise ValueError(f"pad mode must be 'constant' or one of {', '.join(_PAD_BY_INDEX)}, got {mode!r}")
    out = np.pad(a, widths, constant_values=0 if constant_values is None else constant_values)
    key = tuple(_py_slice(int(lo), int(lo) + n) for (lo, _), n in zip(widths, a.shape))
    return record(out, (x,), lambda g: (g[key],))


def hstack(xs):
    return concatenate(xs, axis=1 if builtins.all(np.ndim(_array(x)) > 1 for x in xs) else 0)


def vstack(xs):
    return concatenate([reshape(x, (1, -1)) if np.ndim(_array(x)) == 1 else x for x in xs], axis=0)


def roll(x, shift, axis=None):
    a = _array(x)
    out = np.roll(a, shift, axis=axis)
    return record(out, (x,), lambda g: (np.roll(g, np.negative(shift), axis=axis),))


def _triangle(x, k, lower):
    a = _array(x)
    rows, cols = a.shape[-2:]
    mask = np.tri(rows, cols, k, dtype=bool) if lower else ~np.tri(rows, cols, k - 1, dtype=bool)
    return record(np.where(mask, a, 0).astype(a.dtype, copy=False), (x,), lambda g: (np.where(mask, g, 0),))


def tril(x, k=0):
    return _triangle(x, k, lower=True)


def triu(x, k=0):
    return _triangle(x, k, lower=False)


def diagonal(x, offset=0, axis1=0, axis2=1):
    a = _array(x)
    out = np.diagonal(a, offset, axis1, axis2).copy()

    def vjp(g):
        grad = np.zeros_like(a)
        view = np.moveaxis(grad, (axis1, axis2), (-2, -1))
        n = out.shape[-1]
        rows = np.arange(n) + builtins.max(-offset, 0)
        cols = np.arange(n) + builtins.max(offset, 0)
        view[..., rows, cols] = g  # view shares grad's memory
        return (grad,)
    return record(out, (x,), vjp)


def diag(x, k=0):
    a = _array(x)
    if a.ndim == 1:
        out = np.diag(a, k)
        return record(out, (x,), lambda g: (np.diagonal(g, k).copy(),))
    if a.ndim != 2:
        raise ValueError(f"diag takes a 1-D or 2-D x, got shape {a.shape}")
    return diagonal(x, offset=k)


def trace(x, offset=0, axis1=0, axis2=1):
    return sum(diagonal(x, offset, axis1, axis2), axis=-1)


def sort(x, axis=-1):
    a = _array(x)
    order = np.argsort(a, axis=axis, kind="stable")
    return take_along_axis(x, order, axis=axis)


def argsort(x, axis=-1):
    return np.argsort(_array(x), axis=axis, kind="stable")


def top_k(x, k, sorted=True, is_stable=True):
    a = _array(x)
    order = np.argsort(-a, axis=-1, kind="stable")[..., :k].astype(np.int32)
    return take_along_axis(x, order, axis=-1), order


# ----- linear algebra -----
def _ops_for(*arrays):
    """fastconv's C kernels for float32 operands, else None (NumPy)."""
    return backend.ops() if builtins.all(a.dtype == np.float32 for a in arrays) else None


def matmul(x1, x2):
    a, b = _array(x1), _array(x2)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul takes arrays of at least one dimension; use multiply for scalars")
    kernels = _ops_for(a, b)
    if kernels is not None and a.ndim == 2 and b.ndim == 2:
        out = kernels.gemm(a, b)

        def vjp(g):
            return kernels.gemm(g, b, trans_b=True), kernels.gemm(a, g, trans_a=True)
        return record(out, (x1, x2), vjp)
    out = np.matmul(a, b)

    def vjp(g):
        # 1-D operands are a row (a) or a column (b) matrix, as np.matmul treats them; the gradient
        # gets the dimensions matmul removed, and the tape sums broadcast batch axes back.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = np.asarray(g)
        if b.ndim == 1:
            g2 = g2[..., None]
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)
        da = np.matmul(g2, np.swapaxes(b2, -1, -2))
        db = np.matmul(np.swapaxes(a2, -1, -2), g2)
        if a.ndim == 1:
            da = da[..., 0, :]
        if b.ndim == 1:
            db = db[..., 0]
        return da, db
    return record(out, (x1, x2), vjp)


def dot(x1, x2):
    a, b = _array(x1), _array(x2)
    if a.ndim == 0 or b.ndim == 0:
        return multiply(x1, x2)
    if b.ndim <= 2:
        return matmul(x1, x2)
    return tensordot(x1, x2, axes=([a.ndim - 1], [b.ndim - 2]))


def tensordot(x1, x2, axes=2):
    a, b = _array(x1), _array(x2)
    if isinstance(axes, int):
        axes_a, axes_b = list(range(a.ndim - axes, a.ndim)), list(range(axes))
    else:
        axes_a, axes_b = [list(np.atleast_1d(ax)) for ax in axes]
    axes_a = [ax % a.ndim for ax in axes_a]
    axes_b = [ax % b.ndim for ax in axes_b]
    letters = iter(string.ascii_letters)
    sa = [next(letters) for _ in range(a.ndim)]
    sb = [next(letters) for _ in range(b.ndim)]
    for ia, ib in zip(axes_a, axes_b):
        sb[ib] = sa[ia]
    out_subs = [c for i, c in enumerate(sa) if i not in axes_a] + [c for i, c in enumerate(sb) if i not in axes_b]
    return einsum(f"{''.join(sa)},{''.join(sb)}->{''.join(out_subs)}", x1, x2)


def outer(x1, x2):
    return multiply(reshape(x1, (-1, 1)), reshape(x2, (1, -1)))


def einsum(subscripts, *operands, **kwargs):
    """Einstein summation (np.einsum), differentiable for any number of operands, with '...' too."""
    arrays = [_array(x) for x in operands]
    out = np.einsum(subscripts, *arrays, **kwargs)  # NumPy's optimize= and friends
    terms, output_spec = _einsum_letters(subscripts.replace(" ", ""), arrays)
    if terms is None:  # '...' broadcasting a size-1 axis against a longer one
        return record(out, tuple(operands), lambda g: _refuse_einsum(subscripts))

    def vjp(g):
        grads = []
        for i, term in enumerate(terms):
            others = [t for j, t in enumerate(terms) if j != i]
            other_arrays = [arr for j, arr in enumerate(arrays) if j != i]
            # d sum(g * einsum(...)) / d operand i is the einsum of g with the other operands. Letters
            # of this operand found neither in the output nor in the others were summed in the forward
            # pass: a ones array broadcasts the gradient back over them.
            available = set(output_spec) | set("".join(others))
            missing = _diag_free("".join(c for c in term if c not in available))
            ones_terms, ones_arrays = [], []
            if missing:
                ones_terms.append(missing)
                ones_arrays.append(np.ones([arrays[i].shape[term.index(c)] for c in missing], arrays[i].dtype))
            grad = np.einsum(",".join([output_spec] + others + ones_terms) + "->" + _diag_free(term),
                             g, *other_arrays, *ones_arrays)
            grads.append(_undiag(grad, term, arrays[i].shape))
        return tuple(grads)
    return record(out, tuple(operands), vjp)


def _einsum_letters(spec, arrays):
    """(input terms, output term) of an einsum with '...' spelled out as letters and the implicit
    output made explicit; (None, None) when '...' broadcasts axes of different sizes."""
    inputs_spec, arrow, output_spec = spec.partition("->")
    terms = inputs_spec.split(",")
    if len(terms) != len(arrays):
        raise ValueError(f"einsum {spec!r} names {len(terms)} operands, got {len(arrays)}")
    ellipsis_letters = ""
    if "..." in spec:
        free = [c for c in string.ascii_letters if c not in spec]
        spans = [a.ndim - (len(t) - 3) for t, a in zip(terms, arrays) if "..." in t]
        ellipsis_letters = "".join(free[:builtins.max(spans + [0])])
        expanded = []
        for t, a in zip(terms, arrays):
            if "..." in t:  # an operand's '...' covers the trailing axes of the broadcast shape
                span = a.ndim - (len(t) - 3)
                t = t.replace("...", ellipsis_letters[len(ellipsis_letters) - span:])
            expanded.append(t)
        terms = expanded
        sizes = {}
        for t, a in zip(terms, arrays):
            for c, n in zip(t, a.shape):
                if sizes.setdefault(c, n) != n:
                    return None, None
    if arrow:
        output_spec = output_spec.replace("...", ellipsis_letters)
    else:  # NumPy's implicit output: the '...' axes, then the letters used once, in alphabetical order
        letters = "".join(terms)
        named = inputs_spec.replace("...", "").replace(",", "")
        output_spec = ellipsis_letters + "".join(sorted(c for c in set(named) if letters.count(c) == 1))
    return terms, output_spec


def _diag_free(term):
    """An operand's subscripts with repeated letters (diagonals) kept once."""
    seen = []
    for c in term:
        if c not in seen:
            seen.append(c)
    return "".join(seen)


def _undiag(grad, term, shape):
    free = _diag_free(term)
    if free == term:
        return grad
    out = np.zeros(shape, grad.dtype)
    np.einsum(f"{term}->{free}", out)[...] = grad  # a writeable diagonal view
    return out


def _refuse_einsum(spec):
    raise ValueError(f"einsum {spec!r}: no gradient when '...' broadcasts a size-1 axis against a longer one")


# ----- user-defined gradients -----
def custom_gradient(f):
    """Decorator: `f(*args)` returns `(output, grad_fn)`, and the result computes `output` with
    `grad_fn(upstream)` as its vector-Jacobian product, as `keras.ops.custom_gradient` (JAX/TF style).

    grad_fn returns one gradient per argument (a tuple, or a single array for one argument; None for
    an argument without gradient). f runs unrecorded: only the custom gradient reaches the tape.
    The output is a single tensor.
    """
    @functools.wraps(f)
    def wrapper(*args):
        with stop_recording():
            result = f(*args)
        if not (isinstance(result, (tuple, list)) and len(result) == 2 and callable(result[1])):
            raise TypeError(f"a custom_gradient function must return (output, grad_fn), got {type(result).__name__}")
        output, grad_fn = result
        if isinstance(output, (tuple, list, dict)):
            raise TypeError("custom_gradient supports functions with a single tensor output")

        def vjp(g):
            with stop_recording():
                grads = grad_fn(g)
            grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
            if len(grads) != len(args):
                raise ValueError(f"the grad_fn of {f.__name__} returned {len(grads)} gradients for "
                                 f"{len(args)} arguments")
            return tuple(None if grad is None else np.asarray(unwrap(grad)) for grad in grads)
        return record(_array(output), args, vjp)
    return wrapper


# ----- control flow: eager Python, recorded op by op -----
def cond(pred, true_fn, false_fn):
    return true_fn() if bool(np.asarray(unwrap(pred))) else false_fn()


def fori_loop(lower, upper, body_fun, init_val):
    value = init_val
    for i in range(int(lower), int(upper)):
        value = body_fun(i, value)
    return value


def while_loop(cond, body, loop_vars, maximum_iterations=None):
    """body(*loop_vars) while cond(*loop_vars); loop_vars a tuple or list (a single value also works)."""
    single = not isinstance(loop_vars, (tuple, list))
    values = (loop_vars,) if single else tuple(loop_vars)
    count = 0
    while bool(np.asarray(unwrap(cond(*values)))) and (maximum_iterations is None or count < maximum_iterations):
        values = body(*values)
        values = (values,) if single or not isinstance(values, (tuple, list)) else tuple(values)
        count += 1
    return values[0] if single else values


# ----- more of Keras 3's numpy namespace -----
def unstack(x, num=None, axis=0):
    size = np.shape(_array(x))[axis]
    if num is not None and num != size:
        raise ValueError(f"unstack: num={num} but axis {axis} has size {size}")
    n = ndim(x)
    return [get_item(x, (builtins.slice(None),) * (axis % n) + (i,)) for i in range(size)]


def cumprod(x, axis=None, dtype=None):
    a = _array(x)
    flat = axis is None
    work = a.reshape(-1) if flat else a
    ax = 0 if flat else axis % a.ndim
    out = np.cumprod(work, axis=ax)

    def vjp(g):
        g = np.asarray(g).reshape(out.shape)
        moved_x, moved_g, moved_out = (np.moveaxis(v, ax, -1) for v in (work, g, out))
        if np.all(moved_x != 0):  # d out_j / d x_i = out_j / x_i for j >= i
            grad = np.flip(np.cumsum(np.flip(moved_g * moved_out, -1), -1), -1) / moved_x
        else:  # zeros: the products of the others, term by term (O(n^2) along the axis)
            n = moved_x.shape[-1]
            grad = np.zeros_like(moved_out)
            for i in range(n):
                others = moved_x.copy()
                others[..., i] = 1
                grad[..., i] = (moved_g[..., i:] * np.cumprod(others, -1)[..., i:]).sum(-1)
        grad = np.moveaxis(grad, -1, ax)
        return (grad.reshape(a.shape),)
    return record(out, (x,), vjp)


def slice_update(inputs, start_indices, updates):
    """inputs with the block at start_indices replaced by updates (differentiable in both)."""
    a, u = _array(inputs), _array(updates)
    key = tuple(builtins.slice(int(s), int(s) + n) for s, n in zip(start_indices, u.shape))
    out = a.copy()
    out[key] = u

    def vjp(g):
        grad = np.array(g)
        grad[key] = 0
        return grad, np.asarray(g)[key]
    return record(out, (inputs, updates), vjp)


def _index_tuple(indices):
    idx = np.asarray(unwrap(indices))
    if idx.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    return tuple(np.moveaxis(idx, -1, 0))


def scatter(indices, values, shape):
    """zeros(shape) with values added at indices (N, rank) - repeated indices add up."""
    key = _index_tuple(indices)
    v = _array(values)
    out = np.zeros(tuple(shape), v.dtype)
    np.add.at(out, key, v)
    return record(out, (values,), lambda g: (np.asarray(g)[key],))


def scatter_update(inputs, indices, updates, reduction=None):
    """inputs with the entries (or slices) at indices replaced by updates, or combined with
    reduction="add"."""
    if reduction not in (None, "add"):
        raise ValueError(f"scatter_update supports reduction=None or 'add', got {reduction!r}")
    key = _index_tuple(indices)
    a, u = _array(inputs), _array(updates)
    out = a.copy()
    if reduction == "add":
        np.add.at(out, key, u)
    else:
        out[key] = u

    def vjp(g):
        grad = np.array(g)
        if reduction is None:
            grad[key] = 0  # replaced entries no longer depend on inputs
        return grad, np.asarray(g)[key]
    return record(out, (inputs, updates), vjp)


def _segments(data, segment_ids, num_segments):
    ids = np.asarray(unwrap(segment_ids))
    if ids.dtype.kind not in "iu" or ids.ndim != 1 or ids.shape[0] != np.shape(_array(data))[0]:
        raise ValueError(f"segment_ids must be 1-D integers, one per row of data, got {ids.shape} {ids.dtype}")
    count = int(ids.max()) + 1 if num_segments is None and ids.size else int(num_segments or 0)
    return ids, count


def segment_sum(data, segment_ids, num_segments=None, sorted=False):
    a = _array(data)
    ids, count = _segments(data, segment_ids, num_segments)
    out = np.zeros((count,) + a.shape[1:], a.dtype)
    keep = ids < count
    np.add.at(out, ids[keep], a[keep])
    return record(out, (data,), lambda g: (np.where(keep.reshape((-1,) + (1,) * (a.ndim - 1)),
                                                    np.asarray(g)[np.minimum(ids, count - 1)], 0),))


def segment_max(data, segment_ids, num_segments=None, sorted=False):
    a = _array(data)
    ids, count = _segments(data, segment_ids, num_segments)
    lowest = -np.inf if a.dtype.kind == "f" else np.iinfo(a.dtype).min
    out = np.full((count,) + a.shape[1:], lowest, a.dtype)
    keep = ids < count
    np.maximum.at(out, ids[keep], a[keep])

    def vjp(g):
        # each segment's gradient shared by the rows holding its maximum
        safe = np.minimum(ids, count - 1)
        hit = (a == out[safe]) & keep.reshape((-1,) + (1,) * (a.ndim - 1))
        ties = np.zeros(out.shape)
        np.add.at(ties, safe, hit)
        return (np.where(hit, np.asarray(g)[safe] / np.maximum(ties[safe], 1), 0).astype(a.dtype),)
    return record(out, (data,), vjp)


def meshgrid(*x, indexing="xy"):
    if indexing not in ("xy", "ij"):
        raise ValueError(f"indexing must be 'xy' or 'ij', got {indexing!r}")
    sizes = [np.size(_array(v)) for v in x]
    shape_ = list(sizes)
    if indexing == "xy" and len(x) >= 2:
        shape_[0], shape_[1] = shape_[1], shape_[0]
    grids = []
    for i, v in enumerate(x):
        position = i if indexing == "ij" or len(x) < 2 or i > 1 else 1 - i
        view = [1] * len(x)
        view[position] = sizes[i]
        grids.append(broadcast_to(reshape(v, view), shape_))
    return grids


def select(condlist, choicelist, default=0):
    """The first choice whose condition holds, per entry; default where none does."""
    if len(condlist) != len(choicelist):
        raise ValueError(f"select needs as many conditions as choices, got {len(condlist)} and {len(choicelist)}")
    out = default
    for condition, choice in reversed(list(zip(condlist, choicelist))):
        out = where(condition, choice, out)
    return out


def copy(x):
    a = _array(x)
    return record(a.copy(), (x,), lambda g: (g,))


def empty(shape, dtype=None):
    return np.empty(shape, dtype or backend.floatx())


def isclose(x1, x2, rtol=1e-5, atol=1e-8, equal_nan=False):
    return np.isclose(_array(x1), _array(x2), rtol=rtol, atol=atol, equal_nan=equal_nan)


def nonzero(x):
    return np.nonzero(_array(x))


def bincount(x, weights=None, minlength=0, sparse=False):
    a = np.asarray(_array(x))
    w = None if weights is None else _array(weights)
    if w is None:  # counts are int32 in Keras
        return bincount(x, np.ones(a.shape, np.int32), minlength, sparse)
    if a.ndim == 1:
        return np.bincount(a, weights=w, minlength=minlength).astype(w.dtype)
    if a.ndim != 2:
        raise ValueError(f"bincount takes a 1-D or 2-D x, got shape {a.shape}")
    length = builtins.max(minlength, int(a.max()) + 1 if a.size else 0)  # 2-D: one count per row, as Keras
    return np.stack([np.bincount(row, weights=w[i], minlength=length) for i, row in enumerate(a)]).astype(w.dtype)


def searchsorted(sorted_sequence, values, side="left"):
    return np.searchsorted(_array(sorted_sequence), _array(values), side=side).astype(np.int32)


def in_top_k(targets, predictions, k):
    """Whether each row's target class is among its k largest predictions (ties count as in)."""
    p, t = _array(predictions), np.asarray(_array(targets))
    target_scores = np.take_along_axis(p, t.reshape(-1, 1), axis=1)
    return (p > target_scores).sum(axis=1) < k


def logical_xor(x1, x2):
    return np.logical_xor(_array(x1), _array(x2))


# ----- more element-wise math -----
def tan(x):
    return _unary(x, np.tan, lambda g, a, out: g * (1 + out * out), floating=True)


def arcsinh(x):
    return _unary(x, np.arcsinh, lambda g, a, out: g / np.sqrt(a * a + 1), floating=True)


def arccosh(x):
    return _unary(x, np.arccosh, lambda g, a, out: g / np.sqrt(a * a - 1), floating=True)


def arctanh(x):
    return _unary(x, np.arctanh, lambda g, a, out: g / (1 - a * a), floating=True)


def cbrt(x):
    return _unary(x, np.cbrt, lambda g, a, out: g / (3 * out * out), floating=True)


def exp2(x):
    return _unary(x, np.exp2, lambda g, a, out: g * out * math.log(2), floating=True)


def fabs(x):
    return _unary(x, np.abs, lambda g, a, out: g * np.sign(a), floating=True)


def deg2rad(x):
    return _unary(x, np.deg2rad, lambda g, a, out: g * (math.pi / 180), floating=True)


def rad2deg(x):
    return _unary(x, np.rad2deg, lambda g, a, out: g * (180 / math.pi), floating=True)


def arctan2(x1, x2):
    def vjp(g, a, b, out):
        r2 = a * a + b * b
        return g * b / r2, -g * a / r2
    return _binary(x1, x2, np.arctan2, vjp)


def hypot(x1, x2):
    return _binary(x1, x2, np.hypot, lambda g, a, b, out: (g * a / out, g * b / out))


def logaddexp2(x1, x2):
    return _binary(x1, x2, np.logaddexp2, lambda g, a, b, out: (g * np.exp2(a - out), g * np.exp2(b - out)))


def divide_no_nan(x1, x2):
    """x1 / x2, and 0 where x2 is 0 (with no gradient there)."""
    def fn(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.asarray(b) == 0, 0, np.true_divide(a, b)).astype(np.result_type(a, b, np.float32))

    def vjp(g, a, b, out):
        safe = np.where(np.asarray(b) == 0, 1, b)
        zero = np.asarray(b) == 0
        return np.where(zero, 0, g / safe), np.where(zero, 0, -g * out / safe)
    return _binary(x1, x2, fn, vjp)


def _erfinv(y):
    # No SciPy here: Giles' single-precision approximation, refined by Newton on erf to float64.
    y = np.asarray(y, dtype=np.float64)
    w = -np.log((1 - y) * (1 + y))
    small = w < 5
    ws, wl = w - 2.5, np.sqrt(np.maximum(w, 5)) - 3
    ps = np.polyval([2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                     -0.00125372503, -0.00417768164, 0.246640727, 1.50140941], ws)
    pl = np.polyval([-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                     -0.0076224613, 0.00943887047, 1.00167406, 2.83297682], wl)
    x = np.where(small, ps, pl) * y
    for _ in range(3):
        x = x - (np.vectorize(math.erf)(x) - y) / (2 / math.sqrt(math.pi) * np.exp(-x * x))
    return np.where(np.abs(y) == 1, np.sign(y) * np.inf, x)


def erfinv(x):
    def fn(a):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return _erfinv(a).astype(a.dtype)
    return _unary(x, fn, lambda g, a, out: g * (math.sqrt(math.pi) / 2) * np.exp(out * out), floating=True)


def trunc(x):
    return np.trunc(_array(x))


def signbit(x):
    return np.signbit(_array(x))


def isposinf(x):
    return np.isposinf(_array(x))


def isneginf(x):
    return np.isneginf(_array(x))


def heaviside(x1, x2):
    return np.heaviside(_array(x1), _array(x2))


# ----- NaN-ignoring and order statistics -----
def nansum(x, axis=None, keepdims=False):
    return sum(where(isnan(x), 0, x), axis=axis, keepdims=keepdims)


def nanmean(x, axis=None, keepdims=False):
    counts = np.sum(~np.isnan(_array(x)), axis=_axis_arg(axis), keepdims=keepdims)
    return divide(nansum(x, axis=axis, keepdims=keepdims), counts.astype(_array(x).dtype))


def nanmax(x, axis=None, keepdims=False):
    return max(where(isnan(x), -np.inf, x), axis=axis, keepdims=keepdims)


def nanmin(x, axis=None, keepdims=False):
    return min(where(isnan(x), np.inf, x), axis=axis, keepdims=keepdims)


def ptp(x, axis=None, keepdims=False):
    return subtract(max(x, axis=axis, keepdims=keepdims), min(x, axis=axis, keepdims=keepdims))


_QUANTILE_METHODS = ("linear", "lower", "higher", "nearest", "midpoint")


def quantile(x, q, axis=None, method="linear", keepdims=False):
    """np.quantile, differentiable: the sorted values at the two ranks around q, interpolated."""
    if method not in _QUANTILE_METHODS:
        raise ValueError(f"method must be one of {', '.join(_QUANTILE_METHODS)}, got {method!r}")
    qs = np.asarray(unwrap(q), dtype=np.float64)
    if np.any((qs < 0) | (qs > 1)):
        raise ValueError(f"quantiles must be in [0, 1], got {q!r}")
    a = _array(x)
    axes = tuple(range(a.ndim)) if axis is None else tuple(ax % a.ndim for ax in np.atleast_1d(axis))
    kept = [i for i in range(a.ndim) if i not in axes]
    # the reduced axes last and flattened into one: (..., n)
    data = reshape(transpose(x, kept + list(axes)), tuple(a.shape[i] for i in kept) + (-1,))
    ordered = sort(data, axis=-1)
    n = math.prod(a.shape[i] for i in axes)
    results = []
    for level in qs.reshape(-1):
        position = level * (n - 1)
        low, high = int(math.floor(position)), int(math.ceil(position))
        frac = position - low
        weights = {"linear": (1 - frac, frac), "lower": (1.0, 0.0), "higher": (0.0, 1.0),
                   "nearest": (1.0, 0.0) if round(position) == low else (0.0, 1.0),
                   "midpoint": (0.5, 0.5) if high != low else (1.0, 0.0)}[method]
        value = add(multiply(get_item(ordered, (Ellipsis, low)), weights[0]),
                    multiply(get_item(ordered, (Ellipsis, high)), weights[1]))
        if keepdims:
            value = reshape(value, tuple(1 if i in axes else a.shape[i] for i in range(a.ndim)))
        results.append(value)
    out = stack(results) if results else np.zeros((0,), a.dtype)
    out = reshape(out, qs.shape + np.shape(_array(results[0]))) if results else out
    return cast(out, a.dtype) if a.dtype.kind == "f" else out


def percentile(x, q, axis=None, method="linear", keepdims=False):
    return quantile(x, np.asarray(unwrap(q), dtype=np.float64) / 100, axis=axis, method=method, keepdims=keepdims)


def median(x, axis=None, keepdims=False):
    return quantile(x, 0.5, axis=axis, keepdims=keepdims)


# ----- more shapes -----
def rot90(array, k=1, axes=(0, 1)):
    a0, a1 = (ax % ndim(array) for ax in axes)
    if a0 == a1:
        raise ValueError(f"rot90 needs two different axes, got {axes!r}")
    k %= 4
    if k == 0:
        return copy(array)
    if k == 2:
        return flip(flip(array, a0), a1)
    order = list(range(ndim(array)))
    order[a0], order[a1] = order[a1], order[a0]
    return transpose(flip(array, a1), order) if k == 1 else flip(transpose(array, order), a1)


def fliplr(x):
    return flip(x, 1)


def flipud(x):
    return flip(x, 0)


def diff(a, n=1, axis=-1):
    out = a
    for _ in range(n):
        size = np.shape(_array(out))[axis]
        lead = (builtins.slice(None),) * (axis % ndim(out))
        out = subtract(get_item(out, lead + (builtins.slice(1, size),)),
                       get_item(out, lead + (builtins.slice(0, size - 1),)))
    return out


def inner(x1, x2):
    if ndim(x1) == 0 or ndim(x2) == 0:
        return multiply(x1, x2)
    return tensordot(x1, x2, axes=([-1], [-1]))


def vdot(x1, x2):
    return sum(multiply(reshape(x1, (-1,)), reshape(x2, (-1,))))


def column_stack(xs):
    return concatenate([reshape(x, (-1, 1)) if ndim(x) == 1 else x for x in xs], axis=1)


def dstack(xs):
    def three_d(x):
        n = ndim(x)
        return reshape(x, (1, -1, 1)) if n == 1 else expand_dims(x, -1) if n == 2 else x
    return concatenate([three_d(x) for x in xs], axis=2)


def array_split(x, indices_or_sections, axis=0):
    size = np.shape(_array(x))[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        sections = int(indices_or_sections)
        if sections <= 0:
            raise ValueError(f"array_split needs a positive number of sections, got {sections}")
        extra = size % sections
        sizes = [size // sections + 1] * extra + [size // sections] * (sections - extra)
        indices_or_sections = list(np.cumsum(sizes)[:-1])
    return split(x, indices_or_sections, axis=axis)


def append(x1, x2, axis=None):
    if axis is None:
        return concatenate([reshape(x1, (-1,)), reshape(x2, (-1,))], axis=0)
    return concatenate([x1, x2], axis=axis)


# ----- predicates and helpers -----
def empty_like(x, dtype=None):
    return np.empty_like(_array(x), dtype=dtype)


def is_tensor(x):
    return isinstance(x, (np.ndarray, Tensor)) or getattr(type(x), "_is_keras_variable", False)


def dtype(x):
    return str(np.asarray(unwrap(x)).dtype)


def allclose(x1, x2, rtol=1e-5, atol=1e-8, equal_nan=False):
    return np.allclose(_array(x1), _array(x2), rtol=rtol, atol=atol, equal_nan=equal_nan)


def isin(x1, x2, assume_unique=False, invert=False):
    return np.isin(_array(x1), _array(x2), assume_unique=assume_unique, invert=invert)


# ----- functional control flow (eager) -----
def _unstacked(xs):
    if isinstance(xs, (list, tuple)):
        parts = [_unstacked(x) for x in xs]
        return [type(xs)(items) for items in zip(*parts)]
    return [get_item(xs, i) for i in range(np.shape(_array(xs))[0])]


def _stacked(ys):
    first = ys[0]
    if isinstance(first, (list, tuple)):
        return type(first)(_stacked([y[i] for y in ys]) for i in range(len(first)))
    return stack(ys)


def map(f, xs):
    """stack([f(x) for x in xs]) along a new first axis (xs a tensor or a tuple of them)."""
    ys = [f(x) for x in _unstacked(xs)]
    return _stacked(ys) if ys else np.zeros((0,))


def vectorized_map(function, elements):
    return map(function, elements)


def scan(f, init, xs=None, length=None, reverse=False, unroll=1):
    """jax.lax.scan, eagerly: carry, y = f(carry, x) over the first axis of xs; (carry, stacked ys)."""
    items = _unstacked(xs) if xs is not None else [None] * int(length or 0)
    if xs is not None and length is not None and len(items) != length:
        raise ValueError(f"scan: length={length} but xs has {len(items)} items")
    carry, ys = init, []
    for x in (reversed(items) if reverse else items):
        carry, y = f(carry, x)
        ys.append(y)
    if reverse:
        ys.reverse()
    return carry, (None if not ys or ys[0] is None else _stacked(ys))


def switch(index, branches, *operands):
    """branches[index](*operands), index clamped to the branches, as Keras."""
    i = builtins.min(builtins.max(int(np.asarray(unwrap(index))), 0), len(branches) - 1)
    return branches[i](*operands)


# ----- linear algebra (batched over leading axes, as np.linalg) -----
def _square_matrices(a, name):
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name} takes square matrices (..., n, n), got shape {a.shape}")


def _mT(m):
    return np.swapaxes(m, -1, -2)


def inv(x):
    a = _array(x)
    _square_matrices(a, "inv")
    out = np.linalg.inv(a)
    return record(out, (x,), lambda g: (-_mT(out) @ g @ _mT(out),))


def det(x):
    a = _array(x)
    _square_matrices(a, "det")
    out = np.linalg.det(a)
    # d det / dA = det * inv(A)^T (A invertible)
    return record(out, (x,), lambda g: (np.asarray(g * out)[..., None, None] * _mT(np.linalg.inv(a)),))


def slogdet(x):
    """(sign, log|det|); the gradient flows through log|det|."""
    a = _array(x)
    _square_matrices(a, "slogdet")
    sign, logabs = np.linalg.slogdet(a)
    logabs = record(logabs, (x,), lambda g: (np.asarray(g)[..., None, None] * _mT(np.linalg.inv(a)),))
    return sign, logabs


def logdet(x):
    """log(det(x)) of positive-definite (or positive-determinant) matrices."""
    sign, logabs = slogdet(x)
    return where(sign > 0, logabs, np.nan) if np.any(sign <= 0) else logabs


def solve(a, b):
    """x with a @ x = b."""
    left, right = _array(a), _array(b)
    _square_matrices(left, "solve")
    vector = right.ndim == left.ndim - 1
    out = np.linalg.solve(left, right[..., None] if vector else right)

    def vjp(g):
        g = np.asarray(g)[..., None] if vector else np.asarray(g)
        db = np.linalg.solve(_mT(left), g)
        da = -db @ _mT(out)
        return da, (db[..., 0] if vector else db)
    return record(out[..., 0] if vector else out, (a, b), vjp)


def matrix_power(x, n):
    n = int(n)
    if n < 0:
        return matrix_power(inv(x), -n)
    a = _array(x)
    _square_matrices(a, "matrix_power")
    result = None
    for _ in range(n):
        result = x if result is None else matmul(result, x)
    return copy(result) if result is not None else np.broadcast_to(np.eye(a.shape[-1], dtype=a.dtype), a.shape).copy()


def pinv(x, rcond=None):
    """The Moore-Penrose pseudo-inverse (no gradient)."""
    a = _array(x)
    return np.linalg.pinv(a) if rcond is None else np.linalg.pinv(a, rcond=rcond)


def cholesky(x, upper=False):
    """The Cholesky factor of symmetric positive-definite matrices (lower, or upper=True)."""
    lower = np.linalg.cholesky(_array(x))

    def vjp(g):
        # Murray (2016): A_bar = sym(L^-T Phi(L^T L_bar) L^-1), Phi = lower triangle, halved diagonal
        g = _mT(np.asarray(g)) if upper else np.asarray(g)
        phi = np.tril(_mT(lower) @ g)
        phi -= 0.5 * np.tril(np.triu(phi))  # halve the diagonal
        lower_inv = np.linalg.inv(lower)
        s = _mT(lower_inv) @ phi @ lower_inv
        return (0.5 * (s + _mT(s)),)
    return record(_mT(lower).copy() if upper else lower, (x,), vjp)


def cross(x1, x2, axisa=-1, axisb=-1, axisc=-1, axis=None):
    if axis is not None:
        axisa = axisb = axisc = axis
    a, b = _array(x1), _array(x2)
    if a.shape[axisa] != 3 or b.shape[axisb] != 3:
        raise ValueError(f"cross takes 3-vectors along its axes, got shapes {a.shape} and {b.shape}")
    am, bm = np.moveaxis(a, axisa, -1), np.moveaxis(b, axisb, -1)
    out = np.moveaxis(np.cross(am, bm), -1, axisc)

    def vjp(g):
        gm = np.moveaxis(np.asarray(g), axisc, -1)
        # the tape sums broadcast axes back to each input's shape
        return np.moveaxis(np.cross(bm, gm), -1, axisa), np.moveaxis(np.cross(gm, am), -1, axisb)
    return record(out, (x1, x2), vjp)


def erfc(x):
    return subtract(1.0, erf(x))


def sinc(x):
    def vjp(g, a, out):
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (np.cos(np.pi * a) - out) / a
        return g * np.where(a == 0, 0, slope)
    return _unary(x, np.sinc, vjp, floating=True)


def fmax(x1, x2):
    """maximum that ignores NaN: the other argument wins over a NaN."""
    return _binary(x1, x2, np.fmax, lambda g, a, b, out: (g * ((a >= b) | np.isnan(b)), g * ~((a >= b) | np.isnan(b))))


def fmin(x1, x2):
    return _binary(x1, x2, np.fmin, lambda g, a, b, out: (g * ((a <= b) | np.isnan(b)), g * ~((a <= b) | np.isnan(b))))


def fmod(x1, x2):
    """C's remainder: the sign of x1 (mod takes x2's)."""
    return _binary(x1, x2, np.fmod, lambda g, a, b, out: (g, -g * np.trunc(a / b)))


def logspace(start, stop, num=50, endpoint=True, base=10, dtype=None, axis=0):
    return np.logspace(start, stop, num, endpoint=endpoint, base=base, axis=axis).astype(dtype or backend.floatx())


def geomspace(start, stop, num=50, endpoint=True, dtype=None, axis=0):
    return np.geomspace(start, stop, num, endpoint=endpoint, axis=axis).astype(dtype or backend.floatx())


def argpartition(x, kth, axis=-1):
    return np.argpartition(_array(x), kth, axis=axis).astype(np.int32)


def unique(x, sorted=True, return_index=False, return_inverse=False, return_counts=False, axis=None, size=None,
           fill_value=None):
    """np.unique; size= pads (with fill_value, default the smallest value) or cuts to a fixed length."""
    result = np.unique(_array(x), return_index=return_index, return_inverse=return_inverse,
                       return_counts=return_counts, axis=axis)
    if size is None:
        return result
    values = result[0] if isinstance(result, tuple) else result
    fill = values.min() if fill_value is None and values.size else (fill_value or 0)
    padded = np.concatenate([values[:size], np.full(builtins.max(size - len(values), 0), fill, values.dtype)])
    return (padded,) + tuple(result[1:]) if isinstance(result, tuple) else padded


def digitize(x, bins):
    return np.digitize(_array(x), _array(bins)).astype(np.int32)


# ----- NaN-ignoring variants and the rest of Keras 3's numpy namespace -----
def segment_min(data, segment_ids, num_segments=None, sorted=False):
    return negative(segment_max(negative(data), segment_ids, num_segments, sorted))


def nanargmax(x, axis=None, keepdims=False):
    return argmax(np.where(np.isnan(_array(x)), -np.inf, _array(x)), axis=axis, keepdims=keepdims)


def nanargmin(x, axis=None, keepdims=False):
    return argmin(np.where(np.isnan(_array(x)), np.inf, _array(x)), axis=axis, keepdims=keepdims)


def nancumsum(x, axis=None, dtype=None):
    return cumsum(where(isnan(x), 0, x), axis=axis)


def nancumprod(x, axis=None, dtype=None):
    return cumprod(where(isnan(x), 1, x), axis=axis)


def nanprod(x, axis=None, keepdims=False):
    return prod(where(isnan(x), 1, x), axis=axis, keepdims=keepdims)


def nanvar(x, axis=None, keepdims=False):
    centered = where(isnan(x), 0, subtract(x, nanmean(x, axis=axis, keepdims=True)))
    counts = np.sum(~np.isnan(_array(x)), axis=_axis_arg(axis), keepdims=keepdims)
    return divide(sum(square(centered), axis=axis, keepdims=keepdims), counts.astype(_array(x).dtype))


def nanstd(x, axis=None, keepdims=False):
    return sqrt(nanvar(x, axis=axis, keepdims=keepdims))


def nanmedian(x, axis=None, keepdims=False):
    return np.nanmedian(_array(x), axis=_axis_arg(axis), keepdims=keepdims)


def nanquantile(x, q, axis=None, method="linear", keepdims=False):
    return np.nanquantile(_array(x), unwrap(q), axis=_axis_arg(axis), method=method, keepdims=keepdims)


def nanpercentile(x, q, axis=None, method="linear", keepdims=False):
    return np.nanpercentile(_array(x), unwrap(q), axis=_axis_arg(axis), method=method, keepdims=keepdims)


def hsplit(x, indices_or_sections):
    return split(x, indices_or_sections, axis=1 if ndim(x) > 1 else 0)


def vsplit(x, indices_or_sections):
    return split(x, indices_or_sections, axis=0)


def dsplit(x, indices_or_sections):
    return split(x, indices_or_sections, axis=2)


def kron(x1, x2):
    """np.kron: every product of an entry of x1 with an entry of x2, block by block."""
    a, b = _array(x1), _array(x2)
    n = builtins.max(a.ndim, b.ndim)
    a_shape, b_shape = (1,) * (n - a.ndim) + a.shape, (1,) * (n - b.ndim) + b.shape
    # (a0, 1, a1, 1, ...) * (1, b0, 1, b1, ...) then merge each pair of axes
    left = reshape(x1, tuple(d for size in a_shape for d in (size, 1)))
    right = reshape(x2, tuple(d for size in b_shape for d in (1, size)))
    return reshape(multiply(left, right), tuple(p * q for p, q in zip(a_shape, b_shape)))


def trapezoid(y, x=None, dx=1.0, axis=-1):
    n = np.shape(_array(y))[axis]
    lead = (builtins.slice(None),) * (axis % ndim(y))
    upper = get_item(y, lead + (builtins.slice(1, n),))
    lower = get_item(y, lead + (builtins.slice(0, n - 1),))
    widths = dx
    if x is not None:
        widths = diff(x, axis=axis if ndim(x) == ndim(y) else -1)
        if ndim(x) == 1 and ndim(y) > 1:  # 1-D sample points along axis
            shape_ = [1] * ndim(y)
            shape_[axis] = n - 1
            widths = reshape(widths, shape_)
    return sum(multiply(multiply(add(upper, lower), 0.5), widths), axis=axis)


def real(x):
    return np.real(_array(x)) if np.iscomplexobj(_array(x)) else copy(x)


def imag(x):
    return np.imag(_array(x))


def conj(x):
    return np.conj(_array(x)) if np.iscomplexobj(_array(x)) else copy(x)


conjugate = conj


def angle(x):
    return np.angle(_array(x)).astype(backend.floatx() if _array(x).dtype.kind in "biu" else None)


def isreal(x):
    return np.isreal(_array(x))


def bitwise_and(x, y):
    return np.bitwise_and(_array(x), _array(y))


def bitwise_or(x, y):
    return np.bitwise_or(_array(x), _array(y))


def bitwise_xor(x, y):
    return np.bitwise_xor(_array(x), _array(y))


def bitwise_not(x):
    return np.invert(_array(x))


bitwise_invert = bitwise_not


def bitwise_left_shift(x, y):
    return np.left_shift(_array(x), _array(y))


def bitwise_right_shift(x, y):
    return np.right_shift(_array(x), _array(y))


left_shift, right_shift = bitwise_left_shift, bitwise_right_shift


def _window(fn, x, *args):
    return fn(int(np.asarray(unwrap(x))), *args).astype(backend.floatx())


def bartlett(x):
    return _window(np.bartlett, x)


def blackman(x):
    return _window(np.blackman, x)


def hamming(x):
    return _window(np.hamming, x)


def hanning(x):
    return _window(np.hanning, x)


def kaiser(x, beta):
    return _window(np.kaiser, x, beta)


def corrcoef(x):
    return np.corrcoef(_array(x))


def histogram(x, bins=10, range=None):
    counts, edges = np.histogram(_array(x), bins=bins, range=range)
    return counts.astype(np.int32), edges.astype(_array(x).dtype if _array(x).dtype.kind == "f" else backend.floatx())


def gcd(x1, x2):
    return np.gcd(_array(x1), _array(x2))


def lcm(x1, x2):
    return np.lcm(_array(x1), _array(x2))


def ldexp(x1, x2):
    """x1 * 2**x2 (x2 integers), differentiable in x1."""
    exponent = np.asarray(_array(x2))
    return multiply(x1, np.exp2(exponent).astype(_array(x1).dtype if _array(x1).dtype.kind == "f"
                                                  else backend.floatx()))


def i0(x):
    return np.i0(_array(x))


def vander(x, N=None, increasing=False):
    return np.vander(_array(x), N, increasing)


def saturate_cast(x, dtype):
    """x cast to dtype with its values clipped to dtype's range first (no wrap-around)."""
    target = np.dtype(dtype)
    a = _array(x)
    if target.kind in "iu":
        info = np.iinfo(target)
        a = np.clip(np.nan_to_num(a) if a.dtype.kind == "f" else a, info.min, info.max)
    return a.astype(target)


def unravel_index(indices, shape):
    return np.unravel_index(_array(indices), shape)


def correlate(x1, x2, mode="valid"):
    return np.correlate(_array(x1), _array(x2), mode=mode)


def nextafter(x1, x2):
    return np.nextafter(_array(x1), _array(x2))


# ----- distances, framing, scans -----
def diagflat(x, k=0):
    return diag(reshape(x, (-1,)), k)


def cdist(x, y):
    """Euclidean distances between the rows of x (..., m, d) and of y (..., n, d): (..., m, n)."""
    a, b = _array(x), _array(y)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"cdist takes (..., m, d) and (..., n, d) with one d, got {a.shape} and {b.shape}")
    delta = subtract(expand_dims(x, -2), expand_dims(y, -3))
    return sqrt(sum(square(delta), axis=-1))


def extract_sequences(x, sequence_length, sequence_stride):
    """Windows of sequence_length every sequence_stride along the last axis: (..., num, length)."""
    n = np.shape(_array(x))[-1]
    count = 1 + (n - sequence_length) // sequence_stride
    index = np.arange(count)[:, None] * sequence_stride + np.arange(sequence_length)[None, :]
    return take(x, index, axis=-1)


def associative_scan(f, elems, reverse=False, axis=0):
    """The running f-reduction along axis (f associative): [x0, f(x0, x1), f(f(x0, x1), x2), ...]."""
    def parts(tree):
        if isinstance(tree, (list, tuple)):
            return [type(tree)(items) for items in zip(*[parts(t) for t in tree])]
        n = np.shape(_array(tree))[axis]
        lead = (builtins.slice(None),) * (axis % ndim(tree))
        return [get_item(tree, lead + (builtins.slice(i, i + 1),)) for i in range(n)]
    items = parts(elems)
    if reverse:
        items.reverse()
    running, outputs = None, []
    for item in items:
        running = item if running is None else f(running, item)
        outputs.append(running)
    if reverse:
        outputs.reverse()

    def join(pieces):
        first = pieces[0]
        if isinstance(first, (list, tuple)):
            return type(first)(join([p[i] for p in pieces]) for i in range(len(first)))
        return concatenate(pieces, axis=axis)
    return join(outputs)


def vectorize(pyfunc, *, excluded=None, signature=None):
    """np.vectorize: pyfunc applied element by element, or over the core dimensions of a signature
    such as "(n),(n)->()"; eager, so the calls are recorded on a tape."""
    excluded = set(excluded or ())
    core_ranks = None
    if signature is not None:
        inputs_part = signature.replace(" ", "").split("->")[0]
        core_ranks = [0 if group == "" else len(group.split(","))
                      for group in inputs_part.strip("()").split("),(")] if inputs_part else []

    def wrapped(*args):
        def rank(j):
            return core_ranks[j] if core_ranks is not None and j < len(core_ranks) else 0
        mapped = [i for i, a in enumerate(args) if i not in excluded and ndim(a) > rank(i)]
        if not mapped:
            return pyfunc(*args)
        size = np.shape(_array(args[mapped[0]]))[0]

        def call(i):
            return wrapped(*[get_item(a, i) if j in mapped else a for j, a in enumerate(args)])
        return stack([call(i) for i in range(size)])
    return wrapped


def segment_prod(data, segment_ids, num_segments=None, sorted=False):
    a = _array(data)
    ids, count = _segments(data, segment_ids, num_segments)
    out = np.ones((count,) + a.shape[1:], a.dtype)
    keep = ids < count
    np.multiply.at(out, ids[keep], a[keep])
    return out


# ----- decompositions (no gradient) -----
def eig(x):
    return np.linalg.eig(_array(x))


def eigh(x):
    return np.linalg.eigh(_array(x))


def qr(x, mode="reduced"):
    if mode not in ("reduced", "complete"):
        raise ValueError(f"qr mode must be 'reduced' or 'complete', got {mode!r}")
    return np.linalg.qr(_array(x), mode=mode)


def svd(x, full_matrices=True, compute_uv=True):
    return np.linalg.svd(_array(x), full_matrices=full_matrices, compute_uv=compute_uv)


def lstsq(a, b, rcond=None):
    return np.linalg.lstsq(_array(a), _array(b), rcond=rcond)[0]


def matrix_rank(x, tol=None):
    return np.linalg.matrix_rank(_array(x), tol)


def solve_triangular(a, b, lower=False):
    """x with a @ x = b, a's lower (or upper) triangle read; differentiable like solve."""
    return solve(tril(a) if lower else triu(a), b)


def lu_factor(x):
    """(lu, pivots) as scipy.linalg.lu_factor: L (unit diagonal) below, U on and above; row k was
    swapped with row pivots[k]."""
    a = np.array(_array(x), dtype=np.result_type(_array(x), np.float32))
    if a.ndim > 2:
        parts = [lu_factor(m) for m in a.reshape((-1,) + a.shape[-2:])]
        return (np.stack([p[0] for p in parts]).reshape(a.shape),
                np.stack([p[1] for p in parts]).reshape(a.shape[:-1]))
    n = a.shape[0]
    pivots = np.zeros(n, np.int32)
    for k in range(n):  # Gaussian elimination with partial pivoting
        p = k + int(np.argmax(np.abs(a[k:, k])))
        pivots[k] = p
        if p != k:
            a[[k, p]] = a[[p, k]]
        if a[k, k] != 0:
            a[k + 1:, k] /= a[k, k]
        a[k + 1:, k + 1:] -= np.outer(a[k + 1:, k], a[k, k + 1:])
    return a, pivots


def cholesky_inverse(x, upper=False):
    """The inverse of A = L L^T from its Cholesky factor (x = L, or U = L^T with upper=True); only
    that triangle of x is read. Differentiable in the factor."""
    lower = swapaxes(triu(x), -1, -2) if upper else tril(x)
    return inv(matmul(lower, swapaxes(lower, -1, -2)))


# ----- Fourier transforms: (real, imaginary) pairs, as Keras (no gradient) -----
def _complex(x, name):
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise ValueError(f"{name} takes a (real, imaginary) pair of arrays, got {type(x).__name__}")
    real_part, imag_part = _array(x[0]), _array(x[1])
    if real_part.shape != imag_part.shape:
        raise ValueError(f"{name}: real and imaginary parts differ in shape, {real_part.shape} and {imag_part.shape}")
    return real_part + 1j * imag_part, real_part.dtype


def _pair(z, dtype):
    dtype = dtype if np.dtype(dtype).kind == "f" else backend.floatx()
    return np.real(z).astype(dtype), np.imag(z).astype(dtype)


def fft(x):
    z, dtype = _complex(x, "fft")
    return _pair(np.fft.fft(z), dtype)


def fft2(x):
    z, dtype = _complex(x, "fft2")
    return _pair(np.fft.fft2(z), dtype)


def ifft2(x):
    z, dtype = _complex(x, "ifft2")
    return _pair(np.fft.ifft2(z), dtype)


def rfft(x, fft_length=None):
    a = _array(x)
    return _pair(np.fft.rfft(a, n=fft_length), a.dtype)


def irfft(x, fft_length=None):
    z, dtype = _complex(x, "irfft")
    dtype = dtype if np.dtype(dtype).kind == "f" else backend.floatx()
    return np.fft.irfft(z, n=fft_length).astype(dtype)


def polar(abs_, angle):
    """The complex numbers abs_ * (cos(angle) + i sin(angle))."""
    return _array(abs_) * np.exp(1j * _array(angle))


# ----- forward mode, views -----
def jvp(fun, primals, tangents, has_aux=False):
    """(fun(*primals), J . tangents) (and aux), as jax.jvp. Computed exactly with one reverse pass per
    output entry (the tape has no forward mode): fine for small outputs, slow for large ones. The
    results are constants for an enclosing tape (no higher-order gradients)."""
    from fastconv.keras.autodiff import GradientTape, _flatten, _map_structure
    primals, tangents = list(primals), list(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"jvp needs one tangent per primal, got {len(primals)} primals and {len(tangents)} tangents")

    def leaf(p):
        value = np.asarray(_array(p))
        return Tensor(np.array(value, dtype=value.dtype if value.dtype.kind == "f" else backend.floatx()))
    with GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        watched = _map_structure(leaf, primals)
        tape.watch(watched)
        result = fun(*watched)
    out, aux = result if has_aux else (result, None)
    sources = _flatten(watched)
    directions = [np.asarray(_array(t)) for t in _flatten(tangents)]
    if [np.shape(unwrap(s_)) for s_ in sources] != [d.shape for d in directions]:
        raise ValueError("jvp: tangents must have the primals' structure and shapes")
    products = []
    for target in _flatten(out):
        value = np.asarray(unwrap(target))
        product = np.zeros(value.shape, value.dtype if value.dtype.kind == "f" else backend.floatx())
        for index in np.ndindex(value.shape):
            seed = np.zeros(value.shape, value.dtype)
            seed[index] = 1
            grads = tape.gradient(target, sources, output_gradients=seed, unconnected_gradients="zero")
            product[index] = builtins.sum(float(np.sum(g * d)) for g, d in zip(grads, directions))
        products.append(product)
    remaining = iter(products)
    tangents_out = _map_structure(lambda _: next(remaining), out)
    primals_out = _map_structure(lambda o: np.asarray(unwrap(o)), out)
    return (primals_out, tangents_out, aux) if has_aux else (primals_out, tangents_out)


def view(x, dtype=None):
    """x's bytes read as dtype (a copy of x when dtype is None)."""
    a = _array(x)
    return a.copy() if dtype is None else a.view(np.dtype(dtype))


def view_as_real(x):
    a = _array(x)
    if not np.iscomplexobj(a):
        raise ValueError(f"view_as_real takes complex numbers, got dtype {a.dtype}")
    return np.stack([a.real, a.imag], axis=-1)


def view_as_complex(x):
    a = _array(x)
    if a.shape[-1:] != (2,):
        raise ValueError(f"view_as_complex takes (..., 2) real arrays, got shape {a.shape}")
    return a[..., 0] + 1j * a[..., 1]


# ----- short-time Fourier transforms, as Keras (differentiable: linear maps written with ops) -----
def _stft_window(window, sequence_length, fft_length, dtype):
    if window is None:  # as Keras: no window is all ones over the whole fft_length
        return np.ones(fft_length, dtype)
    if isinstance(window, str):
        if window not in ("hann", "hamming"):
            raise ValueError(f'window must be "hann", "hamming", an array or None, got {window!r}')
        n = np.arange(sequence_length)
        # scipy.signal.get_window's periodic windows, which Keras uses
        alpha = 0.5 if window == "hann" else 0.54
        values = alpha - (1 - alpha) * np.cos(2 * np.pi * n / sequence_length)
    else:
        values = np.asarray(_array(window), dtype=np.float64)
        if values.shape != (sequence_length,):
            raise ValueError(f"window must have shape ({sequence_length},), got {values.shape}")
    left = (fft_length - sequence_length) // 2
    return np.pad(values, (left, fft_length - sequence_length - left)).astype(dtype)


def _fourier_matrices(fft_length, dtype):
    n = np.arange(fft_length)[:, None]
    k = np.arange(fft_length // 2 + 1)[None, :]
    angle = 2 * np.pi * n * k / fft_length
    return np.cos(angle).astype(dtype), (-np.sin(angle)).astype(dtype)


def stft(x, sequence_length, sequence_stride, fft_length, window="hann", center=True):
    """(real, imaginary) short-time Fourier transform along the last axis: (..., frames, fft_length // 2 + 1)."""
    a = _array(x)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"stft takes float32 or float64 inputs, got {a.dtype}")
    if fft_length < sequence_length:
        raise ValueError(f"fft_length must be at least sequence_length, got {fft_length} < {sequence_length}")
    win = _stft_window(window, sequence_length, fft_length, a.dtype)
    if center:
        x = pad(x, [(0, 0)] * (a.ndim - 1) + [(fft_length // 2, fft_length // 2)], mode="reflect")
    frames = multiply(extract_sequences(x, fft_length, sequence_stride), win)
    cos_part, sin_part = _fourier_matrices(fft_length, a.dtype)
    return matmul(frames, cos_part), matmul(frames, sin_part)


def istft(x, sequence_length, sequence_stride, fft_length, length=None, window="hann", center=True):
    """The inverse of stft: each frame's inverse real FFT, windowed, overlap-added and divided by the
    overlap-added squared window, then the center padding cut off."""
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise ValueError(f"istft takes a (real, imaginary) pair of arrays, got {type(x).__name__}")
    real_part, imag_part = x
    if np.shape(_array(real_part)) != np.shape(_array(imag_part)) or np.ndim(_array(real_part)) < 2:
        raise ValueError(f"istft: real and imaginary parts must share one shape (..., frames, bins), got "
                         f"{np.shape(_array(real_part))} and {np.shape(_array(imag_part))}")
    dtype = _array(real_part).dtype if _array(real_part).dtype.kind == "f" else np.dtype(backend.floatx())
    frames_count = np.shape(_array(real_part))[-2]
    win = _stft_window(window, sequence_length, fft_length, dtype)
    # irfft: x[n] = (1/N) sum_k c_k (Re X_k cos(2 pi k n / N) - Im X_k sin(2 pi k n / N)),
    # c_k = 1 for the DC and Nyquist bins, 2 for the others
    bins = fft_length // 2 + 1
    weights = np.full(bins, 2.0)
    weights[0] = 1.0
    if fft_length % 2 == 0:
        weights[-1] = 1.0
    cos_part, sin_part = _fourier_matrices(fft_length, np.float64)
    inverse_cos = (weights[:, None] * cos_part.T / fft_length).astype(dtype)
    inverse_sin = (weights[:, None] * sin_part.T / fft_length).astype(dtype)  # sin_part is -sin already
    frames = multiply(add(matmul(real_part, inverse_cos), matmul(imag_part, inverse_sin)), win)
    total = fft_length + sequence_stride * (frames_count - 1)
    lead = (builtins.slice(None),) * (np.ndim(_array(real_part)) - 2)
    pieces = [pad(get_item(frames, lead + (f,)), [(0, 0)] * len(lead) +
                  [(f * sequence_stride, total - f * sequence_stride - fft_length)]) for f in range(frames_count)]
    signal = pieces[0]
    for piece in pieces[1:]:
        signal = add(signal, piece)
    norm = np.zeros(total)
    for f in range(frames_count):
        norm[f * sequence_stride:f * sequence_stride + fft_length] += np.asarray(win, np.float64) ** 2
    signal = divide(signal, np.where(norm > 1e-10, norm, 1.0).astype(dtype))
    start = fft_length // 2 if center else 0
    end = start + length if length is not None else (total - fft_length // 2 if center else total)
    return get_item(signal, lead + (builtins.slice(start, end),))


def _gammainc_one(a, x):
    """P(a, x) by its series below a + 1 and its continued fraction above (Numerical Recipes)."""
    if x <= 0:
        return 0.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        n = a
        for _ in range(1000):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return total * math.exp(log_prefix)
    tiny = 1e-300
    b, c, d = x + 1 - a, 1 / tiny, 1 / (x + 1 - a)
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        step = d * c
        h *= step
        if abs(step - 1) < 1e-16:
            break
    return 1.0 - math.exp(log_prefix) * h


def gammainc(x1, x2):
    """The regularized lower incomplete gamma function P(x1, x2); differentiable in x2."""
    def fn(a, b):
        out = np.vectorize(_gammainc_one, otypes=[np.float64])(a, b)
        return out.astype(np.result_type(a, b, np.float32) if np.result_type(a, b).kind != "f"
                          else np.result_type(a, b))

    def vjp(g, a, b, out):
        # d P(a, x) / dx = x^(a - 1) e^-x / Gamma(a); no gradient for a
        lgamma = np.vectorize(math.lgamma, otypes=[np.float64])(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            density = np.exp((a - 1) * np.log(b) - b - lgamma)
        return None, g * np.where(np.asarray(b) > 0, density, 0)
    return _binary(x1, x2, fn, vjp)
