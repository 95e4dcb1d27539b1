"""`keras.random`: random tensors with Keras 3's seeding rules, on NumPy generators.

Every function takes `seed`:
- an int: a stateless draw, the same values on every call with that seed (as in Keras);
- a `SeedGenerator`: a new draw on each call, reproducible from the generator's own seed;
- None (the default): a draw from the engine's shared generator (`keras.backend.rng()`), which
  `keras.utils.set_random_seed` reseeds, so unseeded scripts repeat exactly after it.

An int seed or a SeedGenerator draws the values Keras 3's NumPy backend draws for it.
`dropout` is differentiable under a GradientTape: its vjp applies the same scaled mask. `shuffle` is
`take` with a random permutation, differentiable too.
"""
import numpy as np

from fastconv.keras import backend
from fastconv.keras.autodiff import record
from fastconv.keras.ops import core
from fastconv.keras.variables import Variable

__all__ = ["SeedGenerator", "beta", "binomial", "categorical", "dropout", "gamma", "normal", "randint", "shuffle",
           "truncated_normal", "uniform"]

_SEED_MASK = 0xFFFFFFFF  # seeds are uint32 values, as Keras' random_seed_dtype


class SeedGenerator:
    """A seed that changes on each random op it is passed to, as `keras.random.SeedGenerator`.

        gen = keras.random.SeedGenerator(seed=42)
        a = keras.random.normal((2, 3), seed=gen)
        b = keras.random.normal((2, 3), seed=gen)   # different from a; the same a, b on every run

    Its state is a non-trainable uint32 Variable [seed, counter]; each draw uses the state and then
    advances the counter. `seed=None` picks the seed from `keras.backend.rng()`.
    """
    _counts = {}

    def __init__(self, seed=None, name=None, **kwargs):
        kwargs.pop("backend", None)  # Keras' custom backend hook; there is one backend here
        if kwargs:
            raise ValueError(f"unrecognized keyword arguments: {sorted(kwargs)}")
        if name is None:
            count = SeedGenerator._counts.get("seed_generator", 0)
            SeedGenerator._counts["seed_generator"] = count + 1
            name = "seed_generator" if count == 0 else f"seed_generator_{count}"
        self.name = name
        self._initial_seed = seed
        if seed is None:
            seed = int(backend.rng().integers(1, 10**9))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got seed={seed!r}")
        self.state = Variable(np.array([int(seed) & _SEED_MASK, 0], dtype=np.uint32), dtype="uint32",
                              trainable=False, name="seed_generator_state")

    def next(self, ordered=True):
        """The seed for one draw, [seed, counter]; then the state moves on."""
        value = self.state.value.copy()
        if ordered:
            self.state.assign(value + np.array([0, 1], dtype=np.uint32))
        else:  # Keras' unordered step: near-unique numbers below 933199
            self.state.assign(((value.astype(np.int64) + 1) * 5387 % 933199).astype(np.uint32))
        return value

    def get_config(self):
        return {"seed": self._initial_seed, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<SeedGenerator name={self.name!r} state={self.state.value.tolist()}>"


def _generator(seed):
    """The NumPy Generator for one draw under Keras' seed rules."""
    if seed is None:
        return backend.rng()
    if isinstance(seed, SeedGenerator):
        return np.random.default_rng(seed.next().tolist())
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.default_rng([int(seed) & _SEED_MASK, 0])
    raise ValueError(f"seed must be None, an int or a keras.random.SeedGenerator, got seed={seed!r} "
                     f"of type {type(seed).__name__}")


def _shape(shape):
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be a tuple of non-negative ints, got shape={shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"shape must be a tuple of non-negative ints, got shape={shape!r}")
    return shape


def _float_dtype(dtype, function):
    dtype = np.dtype(dtype or backend.floatx())
    if dtype.kind != "f":
        raise ValueError(f"keras.random.{function} needs a floating point dtype, got dtype={dtype}")
    return dtype


def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    """Samples of a normal distribution."""
    dtype = _float_dtype(dtype, "normal")
    return _generator(seed).normal(mean, stddev, size=_shape(shape)).astype(dtype)


def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
    """Samples of a uniform distribution on [minval, maxval)."""
    dtype = _float_dtype(dtype, "uniform")
    return _generator(seed).uniform(minval, maxval, size=_shape(shape)).astype(dtype)


def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    """Normal samples within two standard deviations of the mean (those outside are drawn again)."""
    dtype = _float_dtype(dtype, "truncated_normal")
    rng = _generator(seed)
    shape = _shape(shape)
    size = int(np.prod(shape))
    # As Keras' NumPy backend: whole batches of draws, the ones within bounds kept in order, so a
    # seed gives the same values there and here. 95.4% of each batch is kept.
    kept = np.empty(0)
    while kept.size < size:
        batch = rng.normal(mean, stddev, size=size)
        kept = np.concatenate([kept, batch[(batch >= mean - 2 * stddev) & (batch <= mean + 2 * stddev)]])
    return kept[:size].astype(dtype).reshape(shape)


def randint(shape, minval, maxval, dtype="int32", seed=None):
    """Integers drawn uniformly from [minval, maxval)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        raise ValueError(f"keras.random.randint needs an integer dtype, got dtype={dtype}")
    if maxval <= minval:
        raise ValueError(f"randint needs minval < maxval, got minval={minval!r}, maxval={maxval!r}")
    return _generator(seed).integers(minval, maxval, size=_shape(shape), dtype=dtype)


def categorical(logits, num_samples, dtype="int32", seed=None):
    """`num_samples` class indices per row of the 2-D `logits` (unnormalized log-probabilities)."""
    z = np.asarray(core.convert_to_numpy(logits), dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch_size, num_classes), got shape {z.shape}")
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative int, got {num_samples!r}")
    # As Keras' NumPy backend: one rng.choice per row with the row's softmax, so seeds agree.
    rng = _generator(seed)
    shifted = np.exp(z - z.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    samples = [rng.choice(z.shape[1], size=int(num_samples), p=row) for row in probabilities]
    return np.array(samples, dtype=dtype).reshape(z.shape[0], int(num_samples))


def dropout(inputs, rate, noise_shape=None, seed=None):
    """inputs with each entry zeroed with probability `rate` and the rest scaled by 1 / (1 - rate).

    `noise_shape` (None entries take the inputs' size) shares one draw along its size-1 axes. Under
    a GradientTape the gradient goes through the same scaled mask.
    """
    value = core._array(inputs)
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)) or not 0 <= rate <= 1:
        raise ValueError(f"rate must be a number in [0, 1], got rate={rate!r}")
    if rate == 0:
        return inputs
    dtype = value.dtype if value.dtype.kind == "f" else np.dtype(backend.floatx())
    if noise_shape is None:
        noise_shape = value.shape
    else:
        noise_shape = tuple(value.shape[i] if n is None else int(n) for i, n in enumerate(noise_shape))
        if len(noise_shape) != value.ndim or any(n not in (1, d) for n, d in zip(noise_shape, value.shape)):
            raise ValueError(f"noise_shape {noise_shape} does not broadcast to the inputs' shape {value.shape}")
    if rate == 1:
        scale = np.zeros(noise_shape, dtype)
    else:
        keep = 1.0 - float(rate)
        scale = ((_generator(seed).uniform(size=noise_shape) < keep) / keep).astype(dtype)
    out = (value * scale).astype(dtype, copy=False)
    return record(out, (inputs,), lambda g: (g * scale,))


def shuffle(x, axis=0, seed=None):
    """x with its slices along `axis` in a random order (rows stay whole, as in TF and JAX)."""
    size = np.shape(core.convert_to_numpy(x))[axis]
    return core.take(x, _generator(seed).permutation(size), axis=axis)


def gamma(shape, alpha, dtype=None, seed=None):
    """Samples of a Gamma(alpha, 1) distribution."""
    dtype = _float_dtype(dtype, "gamma")
    return _generator(seed).gamma(alpha, 1.0, size=_shape(shape)).astype(dtype)


def binomial(shape, counts, probabilities, dtype=None, seed=None):
    """Samples of Binomial(counts, probabilities), as floats like Keras."""
    dtype = _float_dtype(dtype, "binomial")
    return _generator(seed).binomial(counts, probabilities, size=_shape(shape)).astype(dtype)


def beta(shape, alpha, beta, dtype=None, seed=None):
    """Samples of a Beta(alpha, beta) distribution."""
    dtype = _float_dtype(dtype, "beta")
    return _generator(seed).beta(alpha, beta, size=_shape(shape)).astype(dtype)

