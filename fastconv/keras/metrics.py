"""Metrics: per-sample values that the trainer averages over an epoch, and Keras' stateful metric
objects (`update_state`, `result`, `reset_state`) for custom training steps and loops.

A metric sees the targets after the loss prepared them (always shaped like the predictions; sparse
labels arrive one-hot), so "accuracy" only has to choose between the binary (threshold 0.5) and the
categorical (argmax) form, as Keras does from the loss and the output shape.
"""
import math

import numpy as np

from fastconv.keras import autodiff, losses


def binary_accuracy(y_true, y_pred, threshold=0.5):
    return ((y_pred > threshold) == (y_true > 0.5)).mean(axis=-1)


def categorical_accuracy(y_true, y_pred):
    return (y_pred.argmax(axis=-1) == y_true.argmax(axis=-1)).astype(np.float32)


def _accuracy_of_labels(labels, y_pred):
    """categorical_accuracy(one_hot(labels), y_pred): the argmax of a one-hot row is its label."""
    return (y_pred.argmax(axis=-1) == labels).astype(np.float32)


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    """1 where the true class's score is among the k highest (ties at the boundary count as in, as in
    TensorFlow's in_top_k)."""
    true_score = np.take_along_axis(y_pred, y_true.argmax(axis=-1)[..., None], axis=-1)
    return ((y_pred > true_score).sum(axis=-1) < k).astype(np.float32)


class Metric:
    """A named per-sample function; `values(y_true, y_pred)` returns one number per sample.

    As a Keras metric object it also keeps a running, sample-weighted mean: `update_state(y_true,
    y_pred, sample_weight=None)`, `result()`, `reset_state()`. Integer class labels are turned
    one-hot first when the predictions have a class axis (sparse metrics, or a compiled sparse loss).
    """

    def __init__(self, name, fn, target_loss=None):
        self.name = name
        self.fn = fn
        self.target_loss = target_loss  # the compiled loss whose prepare_targets shapes y_true
        self.reset_state()

    def values(self, y_true, y_pred):
        return self.fn(y_true, y_pred)

    def values_from_labels(self, labels, y_pred):
        """values() given integer class labels instead of their one-hot targets (a sparse loss's), or
        None when this metric needs the targets themselves."""
        if self.fn is categorical_accuracy and type(self).values is Metric.values:
            return _accuracy_of_labels(labels, y_pred)
        return None

    def _targets(self, y_true, y_pred):
        y_true = np.asarray(y_true)
        if self.target_loss is not None:
            return self.target_loss.prepare_targets(y_true, y_pred.shape, y_pred.dtype)
        if y_true.shape != y_pred.shape and y_pred.ndim >= 1 and y_pred.shape[-1] > 1 and \
                y_true.dtype.kind in "biuf" and y_true.size * y_pred.shape[-1] == y_pred.size:
            labels = y_true.reshape(y_pred.shape[:-1]).astype(np.int64)
            return (labels[..., None] == np.arange(y_pred.shape[-1])).astype(y_pred.dtype)
        return y_true.reshape(y_pred.shape) if y_true.size == y_pred.size else y_true

    # A metric that is a ratio of two sums over the samples (precision: true positives over predicted
    # positives) says so, and gives each sample's numerator and denominator in fractions().
    ratio = False

    def fractions(self, y_true, y_pred):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = np.asarray(autodiff.unwrap(y_pred))
        targets = self._targets(autodiff.unwrap(y_true), y_pred)
        if self.ratio:
            numerators, denominators = self.fractions(targets, y_pred)
            weights = 1.0 if sample_weight is None else np.asarray(autodiff.unwrap(sample_weight), np.float64).reshape(-1)
            self._total += float((numerators * weights).sum())
            self._count += float((denominators * weights).sum())
            return
        values = np.asarray(self.values(targets, y_pred), np.float64)
        self._accumulate(values.reshape(len(values), -1).mean(axis=1) if values.ndim > 1 else values.reshape(-1),
                         sample_weight)

    def _accumulate(self, values, sample_weight):
        """Add one value per sample to the running total, each weighted by sample_weight if given."""
        if sample_weight is None:
            self._total += float(values.sum())
            self._count += values.size
        else:
            weights = np.broadcast_to(np.asarray(autodiff.unwrap(sample_weight), np.float64).reshape(-1),
                                      values.shape)
            self._total += float((values * weights).sum())
            self._count += float(weights.sum())

    def from_mean(self, mean):
        """The metric's value from the weighted mean of its per-sample values (the mean itself, or the
        square root of it for RootMeanSquaredError)."""
        return mean

    def result(self):
        return np.float32(self.from_mean(self._total / self._count)) if self._count else np.float32(0.0)

    def reset_state(self):
        self._total, self._count = 0.0, 0

    reset_states = reset_state  # the Keras 2 name

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The metric of this batch alone (the running state is left as it was)."""
        total, count = self._total, self._count
        self.reset_state()
        self.update_state(y_true, y_pred, sample_weight)
        result = self.result()
        self._total, self._count = total, count
        return result

    def get_config(self):
        return {"name": self.name}


class Mean(Metric):
    """keras.metrics.Mean: the running (weighted) mean of the values given to update_state."""

    def __init__(self, name="mean", dtype=None):
        super().__init__(name, None)

    def update_state(self, values, sample_weight=None):
        self._accumulate(np.asarray(autodiff.unwrap(values), np.float64).reshape(-1), sample_weight)


class Sum(Mean):
    """keras.metrics.Sum: the running sum of the values given to update_state."""

    def __init__(self, name="sum", dtype=None):
        super().__init__(name)

    def result(self):
        return np.float32(self._total)


class MeanMetricWrapper(Metric):
    """keras.metrics.MeanMetricWrapper(fn, name): the running mean of fn(y_true, y_pred) per sample."""

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        super().__init__(name or getattr(fn, "__name__", "metric"), lambda y_true, y_pred: np.asarray(
            autodiff.unwrap(fn(y_true, y_pred, **kwargs))))


class MeanSquaredError(Metric):
    def __init__(self, name="mean_squared_error", dtype=None):
        super().__init__(name, lambda y_true, y_pred: ((y_pred - y_true) ** 2).mean(axis=-1))


class RootMeanSquaredError(Metric):
    """keras.metrics.RootMeanSquaredError: the square root of the (weighted) mean squared error over the
    whole set."""

    def __init__(self, name="root_mean_squared_error", dtype=None):
        super().__init__(name, lambda y_true, y_pred: ((y_pred - y_true) ** 2).mean(axis=-1))

    def from_mean(self, mean):
        return math.sqrt(mean)


class MeanAbsoluteError(Metric):
    def __init__(self, name="mean_absolute_error", dtype=None):
        super().__init__(name, lambda y_true, y_pred: np.abs(y_pred - y_true).mean(axis=-1))


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


class Precision(Metric):
    """keras.metrics.Precision: true positives over predicted positives, each output element a yes/no
    prediction (above `thresholds`, default 0.5; with top_k, only a row's k highest count, default
    threshold 0); class_id keeps one class's column."""
    ratio = True

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        super().__init__(name or _snake_name(type(self).__name__), None)
        if isinstance(thresholds, (list, tuple)):
            if len(thresholds) != 1:
                raise ValueError(f"{type(self).__name__} takes one threshold here, got thresholds={thresholds!r}")
            thresholds = thresholds[0]
        self.thresholds = (0.0 if top_k else 0.5) if thresholds is None else float(thresholds)
        for value, what in ((top_k, "top_k"), (class_id, "class_id")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0 or
                                      (what == "top_k" and value == 0)):
                raise ValueError(f"{what} must be a {'positive' if what == 'top_k' else 'non-negative'} int, "
                                 f"got {value!r}")
        self.top_k, self.class_id = top_k, class_id

    def _positives(self, y_true, y_pred):
        """(is the label positive, is the prediction positive), one row of elements per sample."""
        y_pred, y_true = np.asarray(y_pred, np.float64), np.asarray(y_true)
        if self.top_k is not None:  # a row's top_k entries (earlier ones first among equals) keep their scores
            order = np.argsort(-y_pred, axis=-1, kind="stable")[..., :self.top_k]
            kept = np.full(y_pred.shape, -np.inf)
            np.put_along_axis(kept, order, np.take_along_axis(y_pred, order, axis=-1), axis=-1)
            y_pred = kept
        if self.class_id is not None:
            if self.class_id >= y_pred.shape[-1]:
                raise ValueError(f"class_id {self.class_id} is beyond the {y_pred.shape[-1]} classes")
            y_true, y_pred = y_true[..., self.class_id], y_pred[..., self.class_id]
        rows = len(y_pred)
        return (y_true != 0).reshape(rows, -1), (y_pred > self.thresholds).reshape(rows, -1)

    def fractions(self, y_true, y_pred):
        label, predicted = self._positives(y_true, y_pred)
        return (label & predicted).sum(axis=1, dtype=np.float64), predicted.sum(axis=1, dtype=np.float64)

    def get_config(self):
        return {"name": self.name, "thresholds": self.thresholds, "top_k": self.top_k, "class_id": self.class_id}


class Recall(Precision):
    """keras.metrics.Recall: true positives over actual positives (the options as Precision's)."""

    def fractions(self, y_true, y_pred):
        label, predicted = self._positives(y_true, y_pred)
        return (label & predicted).sum(axis=1, dtype=np.float64), label.sum(axis=1, dtype=np.float64)


def _snake_name(class_name):
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(class_name))


class Accuracy(Metric):
    """Keras' "accuracy": binary for one-unit outputs or a binary cross-entropy loss, else categorical."""

    def __init__(self, name="accuracy", loss=None):
        super().__init__(name, None, target_loss=loss)
        self.binary_loss = isinstance(loss, losses.BinaryCrossentropy)

    def values(self, y_true, y_pred):
        if y_pred.shape[-1] == 1 or self.binary_loss:
            return binary_accuracy(y_true, y_pred)
        return categorical_accuracy(y_true, y_pred)

    def values_from_labels(self, labels, y_pred):
        if y_pred.shape[-1] == 1 or self.binary_loss or type(self).values is not Accuracy.values:
            return None
        return _accuracy_of_labels(labels, y_pred)


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
        if identifier.target_loss is None and loss is not None:
            identifier.target_loss = loss
        return identifier
    if identifier in (binary_accuracy, categorical_accuracy):
        return Metric(identifier.__name__, identifier, target_loss=loss)
    if isinstance(identifier, str):
        name = identifier.lower()
        if name in ("accuracy", "acc"):
            return Accuracy(identifier, loss)
        if name == "root_mean_squared_error":
            return RootMeanSquaredError(name=identifier)
        if name in ("precision", "recall"):
            metric = (Precision if name == "precision" else Recall)(name=identifier)
            metric.target_loss = loss
            return metric
        if name in _FUNCTIONS:
            return Metric(identifier, _FUNCTIONS[name], target_loss=loss)
        try:
            metric_loss = losses.get(name)
        except ValueError:
            pass
        else:
            return Metric(identifier, metric_loss.per_sample, target_loss=loss)
    raise ValueError(f"unknown metric {identifier!r}; expected 'accuracy', 'acc', "
                     f"{', '.join(repr(n) for n in _FUNCTIONS)} or a loss name such as 'mse'")
