"""Activation functions and their gradients.

`get` turns a name (case-insensitive) or one of the functions below into the function itself; the
layers then use `backward` to push a gradient through it. Only these functions have known gradients,
so any other callable is rejected with a clear error.
"""
import numpy as np

from fastconv.keras import backend


def linear(x):
    return x


def relu(x):
    return np.maximum(x, 0)


def sigmoid(x):
    # exp of a non-positive number only, so large |x| neither overflows nor warns.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def tanh(x):
    return np.tanh(x)


def softmax(x, axis=-1):
    if type(x) is not np.ndarray:  # e.g. a Tensor under a GradientTape: every step recorded
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    # The same steps on the ufuncs themselves (a model's output layer: NumPy's wrappers cost more here)
    e = np.exp(x - np.maximum.reduce(x, axis=axis, keepdims=True))
    e /= np.add.reduce(e, axis=axis, keepdims=True)
    return e


def leaky_relu(x, negative_slope=0.2):
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


_BY_NAME = {
    "linear": linear, "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "softmax": softmax,
    "leaky_relu": leaky_relu,
}
_ALIASES = {None: "linear", "leakyrelu": "leaky_relu"}


def get(identifier):
    """Return the activation function named by `identifier` (a name, None, or a function here)."""
    if callable(identifier):
        if identifier in _BY_NAME.values():
            return identifier
        raise ValueError(
            f"activation {identifier!r} has no known gradient; use one of {', '.join(_BY_NAME)} "
            "or a layer with a backward()")
    name = identifier.lower() if isinstance(identifier, str) else identifier
    name = _ALIASES.get(name, name)
    if name not in _BY_NAME:
        raise ValueError(f"unknown activation {identifier!r}; expected one of {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def serialize(fn):
    return fn.__name__


def backward(fn, dy, x, y):
    """Gradient with respect to the input x of y = fn(x), given dy = dLoss/dy."""
    if fn is linear:
        return dy
    if fn is relu:
        return backend.ops_for(dy).relu_backward(dy, y)
    if fn is sigmoid:
        return dy * y * (1 - y)
    if fn is tanh:
        return dy * (1 - y * y)
    if fn is softmax:
        return y * (dy - (dy * y).sum(axis=-1, keepdims=True))
    if fn is leaky_relu:
        return np.where(x > 0, dy, dy * dy.dtype.type(0.2))
    raise ValueError(f"no gradient for activation {fn!r}")
