"""Weight initializers with Keras' names and fan computations, drawing from the seeded backend generator."""
import math

import numpy as np

from fastconv.keras import backend


def _fans(shape):
    """Keras' fan_in/fan_out: a conv kernel (kh, kw, cin, cout) counts kh*kw receptive field positions."""
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    def __call__(self, shape, dtype=None):
        raise NotImplementedError

    def get_config(self):
        return {}


class Zeros(Initializer):
    def __call__(self, shape, dtype=None):
        return np.zeros(shape, dtype=dtype or backend.floatx())


class Ones(Initializer):
    def __call__(self, shape, dtype=None):
        return np.ones(shape, dtype=dtype or backend.floatx())


class RandomNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05):
        self.mean, self.stddev = float(mean), float(stddev)

    def __call__(self, shape, dtype=None):
        values = backend.rng().normal(self.mean, self.stddev, size=shape)
        return values.astype(dtype or backend.floatx())

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev}


class RandomUniform(Initializer):
    def __init__(self, minval=-0.05, maxval=0.05):
        self.minval, self.maxval = float(minval), float(maxval)

    def __call__(self, shape, dtype=None):
        values = backend.rng().uniform(self.minval, self.maxval, size=shape)
        return values.astype(dtype or backend.floatx())

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval}


class VarianceScaling(Initializer):
    """Keras' VarianceScaling: variance = scale / fan, as a truncated normal or a uniform."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal"):
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"mode must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}")
        if distribution not in ("truncated_normal", "uniform"):
            raise ValueError(f"distribution must be 'truncated_normal' or 'uniform', got {distribution!r}")
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def __call__(self, shape, dtype=None):
        fan_in, fan_out = _fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, fan)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            values = backend.rng().uniform(-limit, limit, size=shape)
        else:
            # 0.8796... is the stddev of a unit normal truncated to [-2, 2]; dividing keeps the variance.
            values = _truncated_normal(shape, math.sqrt(variance) / 0.87962566103423978)
        return values.astype(dtype or backend.floatx())

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution}


def _truncated_normal(shape, stddev):
    values = backend.rng().standard_normal(size=shape)
    outside = np.abs(values) > 2
    while outside.any():  # redraw the few values beyond two standard deviations
        values[outside] = backend.rng().standard_normal(size=int(outside.sum()))
        outside = np.abs(values) > 2
    return values * stddev


class GlorotUniform(VarianceScaling):
    def __init__(self):
        super().__init__(1.0, "fan_avg", "uniform")

    def get_config(self):
        return {}


class GlorotNormal(VarianceScaling):
    def __init__(self):
        super().__init__(1.0, "fan_avg", "truncated_normal")

    def get_config(self):
        return {}


class HeNormal(VarianceScaling):
    def __init__(self):
        super().__init__(2.0, "fan_in", "truncated_normal")

    def get_config(self):
        return {}


class HeUniform(VarianceScaling):
    def __init__(self):
        super().__init__(2.0, "fan_in", "uniform")

    def get_config(self):
        return {}


_BY_NAME = {
    "zeros": Zeros, "ones": Ones, "random_normal": RandomNormal, "random_uniform": RandomUniform,
    "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal, "he_normal": HeNormal,
    "he_uniform": HeUniform, "variance_scaling": VarianceScaling,
}
_CLASSES = {cls.__name__: cls for cls in _BY_NAME.values()}


def get(identifier):
    """An Initializer from a name ("he_normal"), a {"class_name", "config"} dict, or an Initializer."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict) and identifier.get("class_name") in _CLASSES:
        config = identifier.get("config", {})
        if not isinstance(config, dict):
            raise ValueError(f"initializer config must be a dict, got {config!r}")
        return _CLASSES[identifier["class_name"]](**config)
    raise ValueError(f"unknown initializer {identifier!r}; expected one of {', '.join(_BY_NAME)} or an Initializer")


def serialize(initializer):
    return {"class_name": type(initializer).__name__, "config": initializer.get_config()}
