"""`keras.ops`: Keras 3's ops namespace with NumPy semantics, differentiable under a GradientTape.

Each op takes NumPy arrays, Python numbers, Variables or Tensors, computes with NumPy (matmul,
conv, conv_transpose and the pools on fastconv's C kernels for float32), and, when a tape tracks
one of its inputs, records a hand-written vector-Jacobian product (see fastconv.keras.autodiff).
Outside a tape the results are plain NumPy arrays.
"""
from fastconv.keras.ops.core import *  # noqa: F401,F403
from fastconv.keras.ops.core import __all__ as _core_all
from fastconv.keras.ops.nn import *  # noqa: F401,F403
from fastconv.keras.ops.nn import __all__ as _nn_all

__all__ = list(_core_all) + list(_nn_all)

# Keras 3's sub-namespaces (keras.ops.numpy.add, keras.ops.math.logsumexp, keras.ops.linalg.norm,
# keras.ops.nn.relu): the same functions.
from fastconv.keras.ops import core as numpy  # noqa: E402
from fastconv.keras.ops import core as math  # noqa: E402
from fastconv.keras.ops import core as linalg  # noqa: E402

import sys as _sys  # noqa: E402

import numpy as _np  # noqa: E402

from fastconv.keras.autodiff import Tensor as _Tensor  # noqa: E402
from fastconv.keras.variables import Variable as _Variable  # noqa: E402

_ops = _sys.modules[__name__]


def _install_operators(cls):
    """Arithmetic, comparisons and indexing through keras.ops, so they are recorded on a tape."""

    def binary(op, reflected=False):
        if reflected:
            return lambda self, other: op(other, self)
        return lambda self, other: op(self, other)
    for name, op in (("add", _ops.add), ("sub", _ops.subtract), ("mul", _ops.multiply), ("truediv", _ops.divide),
                     ("pow", _ops.power), ("matmul", _ops.matmul), ("floordiv", _ops.floor_divide),
                     ("mod", _ops.mod)):
        setattr(cls, f"__{name}__", binary(op))
        setattr(cls, f"__r{name}__", binary(op, reflected=True))
    for name, op in (("lt", _ops.less), ("le", _ops.less_equal), ("gt", _ops.greater), ("ge", _ops.greater_equal)):
        setattr(cls, f"__{name}__", binary(op))
    cls.__neg__ = lambda self: _ops.negative(self)
    cls.__pos__ = lambda self: self
    cls.__abs__ = lambda self: _ops.abs(self)
    cls.__getitem__ = lambda self, key: _ops.get_item(self, key)
    cls.T = property(lambda self: _ops.transpose(self))
    cls.reshape = lambda self, *shape: _ops.reshape(self, shape[0] if len(shape) == 1 else shape)
    cls.transpose = lambda self, *axes: _ops.transpose(self, axes or None)
    def reduction(op):
        # np.sum(t) and friends call t.sum(axis=..., dtype=None, out=None): accept NumPy's signature
        def method(self, axis=None, dtype=None, out=None, keepdims=False, **kwargs):
            if out is not None:
                raise TypeError(f"{op.__name__} of a Tensor or Variable cannot write into out=")
            result = op(self, axis=axis, keepdims=keepdims)
            return result if dtype is None else _ops.cast(result, dtype)
        return method
    cls.sum, cls.mean, cls.max, cls.min = (reduction(op) for op in (_ops.sum, _ops.mean, _ops.max, _ops.min))
    cls.astype = lambda self, dtype: _ops.cast(self, dtype)
    # NumPy's array methods, through keras.ops (recorded)
    cls.repeat = lambda self, repeats, axis=None: _ops.repeat(self, repeats, axis=axis)
    cls.flatten = cls.ravel = lambda self: _ops.reshape(self, (-1,))
    cls.squeeze = lambda self, axis=None: _ops.squeeze(self, axis)
    cls.clip = lambda self, min=None, max=None: _ops.clip(self, -_np.inf if min is None else min,
                                                          _np.inf if max is None else max)
    cls.prod = lambda self, axis=None, keepdims=False: _ops.prod(self, axis=axis, keepdims=keepdims)
    cls.std = lambda self, axis=None, keepdims=False: _ops.std(self, axis=axis, keepdims=keepdims)
    cls.var = lambda self, axis=None, keepdims=False: _ops.var(self, axis=axis, keepdims=keepdims)
    cls.cumsum = lambda self, axis=None: _ops.cumsum(self, axis=axis)
    cls.dot = lambda self, other: _ops.dot(self, other)
    cls.take = lambda self, indices, axis=None: _ops.take(self, indices, axis=axis)
    cls.argmax = lambda self, axis=None, keepdims=False: _ops.argmax(self, axis=axis, keepdims=keepdims)
    cls.argmin = lambda self, axis=None, keepdims=False: _ops.argmin(self, axis=axis, keepdims=keepdims)
    cls.any = lambda self, axis=None, keepdims=False: _ops.any(self, axis=axis, keepdims=keepdims)
    cls.all = lambda self, axis=None, keepdims=False: _ops.all(self, axis=axis, keepdims=keepdims)
    cls.tolist = lambda self: _np.asarray(self).tolist()


_install_operators(_Tensor)
_install_operators(_Variable)
