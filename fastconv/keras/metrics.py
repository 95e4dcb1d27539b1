"""Metrics: per-sample values that the trainer averages over an epoch.

A metric sees the targets after the loss prepared them (always shaped like the predictions; sparse
labels arrive one-hot), so "accuracy" only has to choose between the binary (threshold 0.5) and the
categorical (argmax) form, as Keras does from the loss and the output shape.
"""
import numpy as np

from fastconv.keras import losses


def binary_accuracy(y_true, y_pred, threshold=0.5):
    return ((y_pred > threshold) == (y_true > 0.5)).mean(axis=-1)


def categorical_accuracy(y_true, y_pred):
    return (y_pred.argmax(axis=-1) == y_true.argmax(axis=-1)).astype(np.float32)


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    """1 where the true class's score is among the k highest (ties at the boundary count as in, as in
    TensorFlow's in_top_k)."""
    true_score = np.take_along_axis(y_pred, y_true.argmax(axis=-1)[..., None], axis=-1)
    return ((y_pred > true_score).sum(axis=-1) < k).astype(np.float32)


class Metric:
    """A named per-sample function; `values(y_true, y_pred)` returns one number per sample."""

    def __init__(self, name, fn):
        self.name = name
        self.fn = fn

    def values(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


class CategoricalAccuracy(Metric):
    """keras.metrics.CategoricalAccuracy: the argmax of the prediction is the true class."""

    def __init__(self, name="categorical_accuracy"):
        super().__init__(name, categorical_accuracy)


class SparseCategoricalAccuracy(Metric):
    """keras.metrics.SparseCategoricalAccuracy: the same, for integer labels (they arrive one-hot here)."""

    def __init__(self, name="sparse_categorical_accuracy"):
        super().__init__(name, categorical_accuracy)


class TopKCategoricalAccuracy(Metric):
    """keras.metrics.TopKCategoricalAccuracy(k=5); for k other than 5 the default name says k, so a saved
    model does not reload it as the k=5 metric."""

    def __init__(self, k=5, name=None):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        default = "top_k_categorical_accuracy" if k == 5 else f"top_{k}_categorical_accuracy"
        super().__init__(name or default, lambda y_true, y_pred: top_k_categorical_accuracy(y_true, y_pred, k))
        self.k = int(k)


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    """keras.metrics.SparseTopKCategoricalAccuracy(k=5): the same for integer labels (they arrive one-hot)."""

    def __init__(self, k=5, name=None):
        super().__init__(k, name or ("sparse_top_k_categorical_accuracy" if k == 5 else
                                     f"sparse_top_{k}_categorical_accuracy"))


class BinaryAccuracy(Metric):
    """keras.metrics.BinaryAccuracy: the prediction is on the true side of `threshold`."""

    def __init__(self, name="binary_accuracy", threshold=0.5):
        super().__init__(name, lambda y_true, y_pred: binary_accuracy(y_true, y_pred, threshold))
        self.threshold = threshold


class Accuracy(Metric):
    """Keras' "accuracy": binary for one-unit outputs or a binary cross-entropy loss, else categorical."""

    def __init__(self, name, loss):
        super().__init__(name, None)
        self.binary_loss = isinstance(loss, losses.BinaryCrossentropy)

    def values(self, y_true, y_pred):
        if y_pred.shape[-1] == 1 or self.binary_loss:
            return binary_accuracy(y_true, y_pred)
        return categorical_accuracy(y_true, y_pred)


_FUNCTIONS = {
    "binary_accuracy": binary_accuracy,
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": categorical_accuracy,  # targets arrive one-hot, see the module doc
    "top_k_categorical_accuracy": top_k_categorical_accuracy,
    "sparse_top_k_categorical_accuracy": top_k_categorical_accuracy,
}


def get(identifier, loss):
    """A Metric from a name ("accuracy", "acc", "binary_accuracy", "mse", ...) given the compiled loss."""
    if isinstance(identifier, Metric):
        return identifier
    if identifier in (binary_accuracy, categorical_accuracy):
        return Metric(identifier.__name__, identifier)
    if isinstance(identifier, str):
        name = identifier.lower()
        if name in ("accuracy", "acc"):
            return Accuracy(identifier, loss)
        if name in _FUNCTIONS:
            return Metric(identifier, _FUNCTIONS[name])
        try:
            metric_loss = losses.get(name)
        except ValueError:
            pass
        else:
            return Metric(identifier, metric_loss.per_sample)
    raise ValueError(f"unknown metric {identifier!r}; expected 'accuracy', 'acc', "
                     f"{', '.join(repr(n) for n in _FUNCTIONS)} or a loss name such as 'mse'")
