"""Utilities: to_categorical, set_random_seed, the Progbar, PyDataset (Keras 2's Sequence) and
image_dataset_from_directory."""
import random

import numpy as np

from fastconv.keras import backend
from fastconv.keras.data_adapters import PyDataset, pack_x_y_sample_weight, unpack_x_y_sample_weight
from fastconv.keras.image_dataset import image_dataset_from_directory
from fastconv.keras.progbar import Progbar

Sequence = PyDataset  # Keras 2's name; Keras 3 keeps it as an alias


def to_categorical(y, num_classes=None, dtype="float32"):
    """One-hot encode integer class labels: shape (..., ) or (..., 1) -> (..., num_classes)."""
    y = np.asarray(y)
    if y.dtype.kind == "f" and np.any(y != np.round(y)):
        raise ValueError("to_categorical needs integer class labels, got non-integer values")
    labels = y.astype(np.int64)
    if labels.ndim > 1 and labels.shape[-1] == 1:
        labels = labels.reshape(labels.shape[:-1])
    if labels.size and labels.min() < 0:
        raise ValueError(f"class labels must be non-negative, got {labels.min()}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    elif labels.size and labels.max() >= num_classes:
        raise ValueError(f"label {labels.max()} does not fit num_classes={num_classes}")
    one_hot = np.zeros(labels.shape + (num_classes,), dtype=dtype)
    np.put_along_axis(one_hot, labels[..., None], 1, axis=-1)
    return one_hot


def set_random_seed(seed):
    """Seed every source of randomness training uses: weight init, shuffling, dropout (and Python/NumPy globals)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    backend.seed(int(seed))


__all__ = ["Progbar", "PyDataset", "Sequence", "image_dataset_from_directory", "pack_x_y_sample_weight",
           "set_random_seed", "to_categorical", "unpack_x_y_sample_weight"]
