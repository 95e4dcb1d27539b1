"""A Keras-style API (channels_last, float32) for training CNNs on fastconv's C kernels.

    from fastconv import keras
    model = keras.Sequential([keras.layers.Dense(12, input_dim=8, activation="relu"), ...])
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    model.fit(x, y, epochs=10, batch_size=32)

Layers run their ops through `keras.backend`: fastconv's C kernels by default, or the pure-NumPy
reference with `keras.backend.set_backend("numpy")` or FASTCONV_BACKEND=numpy.
"""
from fastconv.keras import (
    activations, backend, callbacks, config, datasets, dtype_policies, initializers, layers, losses, metrics,
    mixed_precision, models, optimizers, regularizers, utils,
)
from fastconv.keras import distribution  # noqa: E402  (Keras 3's keras.distribution; loads MPI only when used)
from fastconv.keras import ops  # noqa: E402  (after layers: ops installs the Variable/Tensor operators)
from fastconv.keras import random  # noqa: E402  (Keras 3's keras.random, seeded like Keras)
from fastconv.keras import saving  # noqa: E402  (keras.saving.register_keras_serializable, load_model, ...)
from fastconv.keras.autodiff import GradientTape, value_and_grad
from fastconv.keras.dtype_policies import DTypePolicy, FloatDTypePolicy
from fastconv.keras.layers import Input, Layer
from fastconv.keras.models import Model, Sequential, load_model
from fastconv.keras.variables import Variable

__all__ = [
    "DTypePolicy", "FloatDTypePolicy", "GradientTape", "Input", "Layer", "Model", "Sequential", "Variable", "load_model", "ops", "value_and_grad",
    "activations", "backend", "callbacks", "config", "datasets", "distribution", "dtype_policies",
    "initializers", "mixed_precision", "layers", "losses", "metrics", "models", "optimizers", "random", "regularizers", "saving",
    "utils",
]
