"""The one switch between the compute backends, the float type, and the seeded random generator.

Every layer calls its ops through `ops()`, so a model runs unchanged on fastconv's C kernels
("fastconv", the default) or on the pure-NumPy reference ("numpy"). `FASTCONV_BACKEND=numpy` in the
environment selects the reference at import time.
"""
import os

import numpy as np

from fastconv import ops as _fastconv_ops
from fastconv import reference as _numpy_ops

_BACKENDS = {"fastconv": _fastconv_ops, "numpy": _numpy_ops}
_FLOATX = ("float32", "float64")

_backend_name = "fastconv"
_floatx = "float32"
_rng = np.random.default_rng()


def set_backend(name):
    """Run every layer's ops on "fastconv" (C kernels) or "numpy" (the pure-NumPy reference)."""
    global _backend_name
    if not isinstance(name, str) or name.lower() not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, got {name!r}")
    _backend_name = name.lower()


def get_backend():
    """The name of the backend in use: "fastconv" or "numpy"."""
    return _backend_name


def ops():
    """The module implementing gemm, conv2d, pooling and their gradients for the current backend."""
    return _BACKENDS[_backend_name]


def ops_for(array):
    """The backend's ops, or the NumPy reference for arrays the C kernels cannot take (not float32),
    e.g. float64 weights updated in place by an optimizer."""
    return ops() if array.dtype == np.float32 else _numpy_ops


def set_floatx(dtype):
    """Float type of weights and activations: "float32" (default) or "float64".

    float64 keeps its precision only on the "numpy" backend (useful for gradient checks); the C
    kernels always compute in float32.
    """
    global _floatx
    if str(dtype) not in _FLOATX:
        raise ValueError(f"floatx must be one of {', '.join(_FLOATX)}, got {dtype!r}")
    _floatx = str(dtype)


def floatx():
    return _floatx


def seed(value):
    """Restart the generator behind weight initialisation, shuffling and dropout."""
    global _rng
    _rng = np.random.default_rng(value)


def rng():
    """The shared numpy Generator; draws from it are reproducible after `seed`."""
    return _rng


# Keras 2 scripts reach the global settings through `keras.backend` (`K.image_data_format()`, ...);
# these are the same functions as in keras.config.
def backend():
    """The engine's name, "fastconv" (Keras' `K.backend()`; get_backend() tells which ops run)."""
    from fastconv.keras import config
    return config.backend()


def image_data_format():
    from fastconv.keras import config
    return config.image_data_format()


def set_image_data_format(data_format):
    from fastconv.keras import config
    config.set_image_data_format(data_format)


def epsilon():
    from fastconv.keras import config
    return config.epsilon()


def set_epsilon(value):
    from fastconv.keras import config
    config.set_epsilon(value)


def clear_session(free_memory=True):
    """Restart automatic layer names (dense, dense_1, ... count from zero again), as Keras does.
    Models built before keep their layers and weights."""
    from fastconv.keras.layers import base
    base._name_counts.clear()


def _backend_from_environment():
    name = os.environ.get("FASTCONV_BACKEND")
    if name:
        try:
            set_backend(name)
        except ValueError as error:
            raise ValueError(f"environment variable FASTCONV_BACKEND: {error}") from None


_backend_from_environment()
