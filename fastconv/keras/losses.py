"""Losses with their gradients, Keras' names, clipping and reduction (mean over the batch).

Each Loss gives `per_sample` values (the last axis reduced), `gradient` (of the batch mean with respect
to y_pred) and, for cross-entropies after a softmax/sigmoid, `fused`: the value and gradient computed
from the pre-activation logits, the numerically stable form (p - y) that skips the activation's
Jacobian. The plain functions (`keras.losses.categorical_crossentropy(y_true, y_pred)`) return the
per-sample values like Keras.
"""
import numpy as np

from fastconv.keras import activations, autodiff, backend, microbatch

EPSILON = 1e-7  # Keras' backend epsilon: probabilities are clipped to [EPSILON, 1 - EPSILON]


def _log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _format(shape):
    return str(tuple(int(d) for d in shape))


class Loss:
    name = "loss"

    def __init__(self, reduction="sum_over_batch_size", name=None):
        if reduction not in ("sum_over_batch_size", "auto"):
            raise ValueError(f"reduction must be 'sum_over_batch_size', got {reduction!r}")
        if name is not None:
            self.name = name

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The batch loss: the mean of the per-sample losses (each scaled by sample_weight when given),
        Keras' "sum_over_batch_size". Differentiable with respect to y_pred under a GradientTape."""
        pred = np.asarray(autodiff.unwrap(y_pred))
        if pred.dtype.kind != "f":
            pred = pred.astype(backend.floatx())
        target = self.prepare_targets(autodiff.unwrap(y_true), pred.shape, pred.dtype)
        per_sample = self.per_sample(target, pred)
        weights = None
        if sample_weight is not None:
            weights = np.asarray(autodiff.unwrap(sample_weight), dtype=per_sample.dtype)
            weights = np.broadcast_to(weights.reshape(weights.shape + (1,) * (per_sample.ndim - weights.ndim)),
                                      per_sample.shape)
            per_sample = per_sample * weights
        value = np.asarray(np.mean(per_sample), dtype=pred.dtype)

        def vjp(g):
            grad = self.gradient(target, pred)
            if weights is not None:
                grad = grad * weights.reshape(weights.shape + (1,) * (grad.ndim - weights.ndim))
            return (grad * g,)
        return autodiff.record(value, (y_pred,), vjp)

    def check_target_shape(self, y_shape, pred_shape):
        """Raise a ValueError saying why labels of y_shape do not fit predictions of pred_shape."""
        y_shape, pred_shape = tuple(y_shape), tuple(pred_shape)
        # Labels (N,) for a one-unit output (N, 1) are accepted, as in Keras.
        if y_shape != pred_shape and not (pred_shape[-1] == 1 and y_shape == pred_shape[:-1]):
            raise ValueError(f"labels of shape {_format(y_shape)} do not fit model output of shape "
                             f"{_format(pred_shape)} for loss {self.name!r}{self._shape_hint(y_shape, pred_shape)}")

    def prepare_targets(self, y_true, pred_shape, dtype):
        """y_true as an array of dtype shaped like the predictions, or a ValueError saying why it does not fit."""
        y = np.asarray(y_true)
        self.check_target_shape(y.shape, pred_shape)
        return y.reshape(pred_shape).astype(dtype, copy=False)

    def _shape_hint(self, y_shape, pred_shape):
        return ""

    def per_sample(self, y_true, y_pred):
        """The loss of each sample (the last axis reduced). A Loss subclass written Keras' way
        defines call(y_true, y_pred) with keras.ops instead."""
        if type(self).call is Loss.call:
            raise NotImplementedError(f"loss {type(self).__name__} must define call(y_true, y_pred)")
        return np.asarray(autodiff.unwrap(self.call(y_true, y_pred)))

    def gradient(self, y_true, y_pred):
        """d(mean of per_sample)/d(y_pred); for a call-based loss, from a GradientTape."""
        # A Tensor, not a bare array: NumPy's operators on it (y_pred - y_true) are recorded too.
        pred = autodiff.Tensor(np.array(y_pred))
        with autodiff.GradientTape() as tape:
            tape.watch(pred)
            per_sample = self.call(y_true, pred)
        count = max(_batch(np.size(autodiff.unwrap(per_sample)), y_pred), 1)
        seed = np.full(np.shape(autodiff.unwrap(per_sample)), 1 / count, pred.dtype)
        return tape.gradient(per_sample, pred, output_gradients=seed, unconnected_gradients="zero")

    def call(self, y_true, y_pred):
        raise NotImplementedError(f"loss {type(self).__name__} must define call(y_true, y_pred)")

    def fused(self, y_true, logits, activation):
        """(per_sample, dLoss/dlogits) when the output came out of `activation`, or None if not fusable."""
        return None

    def get_config(self):
        return {"name": self.name}


def _entries(y_pred):
    """How many per-sample values the batch mean is over: every axis but the last."""
    return _batch(y_pred.size // y_pred.shape[-1] if y_pred.ndim else 1, y_pred)


def _batch(count, y_pred):
    """count, the values of y_pred's batch a gradient's mean is over; in a deterministic="ranks" step
    those of the global batch, so that every rank scales each sample's gradient by the same 1/n."""
    samples = microbatch.global_count()
    if samples is None or not np.ndim(y_pred) or not len(y_pred):
        return count
    return count // len(y_pred) * samples


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.from_logits, self.label_smoothing = bool(from_logits), float(label_smoothing)

    def _shape_hint(self, y_shape, pred_shape):
        if len(y_shape) == len(pred_shape) - 1 or (len(y_shape) == len(pred_shape) and y_shape[-1] == 1):
            return " (integer class labels need sparse_categorical_crossentropy, or keras.utils.to_categorical)"
        return ""

    def _smooth(self, y):
        if self.label_smoothing:
            return y * (1 - self.label_smoothing) + self.label_smoothing / y.shape[-1]
        return y

    def per_sample(self, y_true, y_pred):
        y = self._smooth(y_true)
        if self.from_logits:
            return -(y * _log_softmax(y_pred)).sum(axis=-1)
        # Keras rescales the predictions to sum to one, then clips before the log.
        q = np.clip(y_pred / y_pred.sum(axis=-1, keepdims=True), EPSILON, 1 - EPSILON)
        return -(y * np.log(q)).sum(axis=-1)

    def _from_logits(self, y, logits):
        log_p = _log_softmax(logits)
        grad = (np.exp(log_p) * y.sum(axis=-1, keepdims=True) - y) / _entries(logits)
        return -(y * log_p).sum(axis=-1), grad.astype(logits.dtype, copy=False)

    def gradient(self, y_true, y_pred):
        y = self._smooth(y_true)
        if self.from_logits:
            return self._from_logits(y, y_pred)[1]
        total = y_pred.sum(axis=-1, keepdims=True)
        q = y_pred / total
        inside = (q > EPSILON) & (q < 1 - EPSILON)  # the clip passes no gradient outside its range
        dq = np.where(inside, -y / np.clip(q, EPSILON, 1 - EPSILON), 0)
        dp = (dq - (dq * q).sum(axis=-1, keepdims=True)) / total
        return (dp / _entries(y_pred)).astype(y_pred.dtype, copy=False)

    def fused(self, y_true, logits, activation):
        if self.from_logits or activation is not activations.softmax:
            return None
        return self._from_logits(self._smooth(y_true), logits)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Categorical cross-entropy with integer class labels, shape (batch,) or (batch, 1)."""
    name = "sparse_categorical_crossentropy"

    def __init__(self, from_logits=False, **kwargs):
        super().__init__(from_logits=from_logits, **kwargs)

    def check_target_shape(self, y_shape, pred_shape):
        y_shape, pred_shape = tuple(y_shape), tuple(pred_shape)
        if y_shape not in (pred_shape[:-1], pred_shape[:-1] + (1,)):
            raise ValueError(f"labels of shape {_format(y_shape)} do not fit model output of shape "
                             f"{_format(pred_shape)} for loss {self.name!r}: expected integer labels of shape "
                             f"{_format(pred_shape[:-1])}")

    def class_labels(self, y_true, pred_shape):
        """y_true as int64 class indices of shape pred_shape[:-1], or a ValueError saying why they do not fit."""
        y = np.asarray(y_true)
        self.check_target_shape(y.shape, pred_shape)
        classes = pred_shape[-1]
        y = y.reshape(pred_shape[:-1])
        labels = y.astype(np.int64)
        fractional = y.dtype.kind not in "biu" and np.any(labels != y)  # integer labels convert exactly
        if y.size and (fractional or labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"labels for {self.name!r} must be integers in [0, {classes}), "
                             f"got values in [{y.min()}, {y.max()}]")
        return labels

    def prepare_targets(self, y_true, pred_shape, dtype):
        return one_hot(self.class_labels(y_true, pred_shape), pred_shape[-1], dtype)

    def fused_from_labels(self, labels, logits, activation):
        """fused() given the class indices instead of their one-hot targets: the same values, bit for
        bit, without building and multiplying the one-hot matrix (a training step's loss)."""
        if self.from_logits or self.label_smoothing or activation is not activations.softmax:
            return None
        logits = np.ascontiguousarray(logits)  # the flat views below must be views
        log_p = logits - np.maximum.reduce(logits, axis=-1, keepdims=True)
        sums = np.add.reduce(np.exp(log_p), axis=-1, keepdims=True)
        log_p -= np.log(sums, out=sums)
        grad = np.exp(log_p)
        # The label entries, as indices into the flat arrays: a one-hot row's sum -(y * log_p) is its
        # label's -log_p, and (p - y) subtracts 1 there only.
        at = _flat_label_index(labels, logits.shape[-1])
        per_sample = np.negative(log_p.reshape(-1)[at]).reshape(labels.shape)
        grad.reshape(-1)[at] -= 1
        grad /= _entries(logits)
        return per_sample, grad

    def get_config(self):
        config = super().get_config()
        del config["label_smoothing"]
        return config


def one_hot(labels, classes, dtype):
    """Targets shaped (*labels.shape, classes) with 1 at each label's class and 0 elsewhere."""
    return (labels[..., None] == np.arange(classes)).astype(dtype)


def _flat_label_index(labels, classes):
    """Each label's position in a C-contiguous (*labels.shape, classes) array, flattened."""
    rows = labels.size
    offsets = _row_offsets.get((rows, classes))
    if offsets is None:
        if len(_row_offsets) >= 64:
            _row_offsets.clear()
        offsets = _row_offsets[(rows, classes)] = np.arange(0, rows * classes, classes, dtype=np.int64)
    return offsets + labels.reshape(-1)


_row_offsets = {}  # (rows, classes) -> the first index of each row: the same few batch shapes every step


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.from_logits, self.label_smoothing = bool(from_logits), float(label_smoothing)

    def _smooth(self, y):
        return y * (1 - self.label_smoothing) + 0.5 * self.label_smoothing if self.label_smoothing else y

    def per_sample(self, y_true, y_pred):
        y = self._smooth(y_true)
        if self.from_logits:
            return self._logit_values(y, y_pred).mean(axis=-1)
        p = np.clip(y_pred, EPSILON, 1 - EPSILON)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=-1)

    @staticmethod
    def _logit_values(y, z):
        return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))

    def gradient(self, y_true, y_pred):
        y = self._smooth(y_true)
        if self.from_logits:
            return ((activations.sigmoid(y_pred) - y) / _batch(y_pred.size, y_pred)).astype(y_pred.dtype, copy=False)
        inside = (y_pred > EPSILON) & (y_pred < 1 - EPSILON)
        p = np.clip(y_pred, EPSILON, 1 - EPSILON)
        grad = np.where(inside, (p - y) / (p * (1 - p)), 0) / _batch(y_pred.size, y_pred)
        return grad.astype(y_pred.dtype, copy=False)

    def fused(self, y_true, logits, activation):
        if self.from_logits or activation is not activations.sigmoid:
            return None
        y = self._smooth(y_true)
        grad = (activations.sigmoid(logits) - y) / _batch(logits.size, logits)
        return self._logit_values(y, logits).mean(axis=-1), grad.astype(logits.dtype, copy=False)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def per_sample(self, y_true, y_pred):
        return np.square(y_pred - y_true).mean(axis=-1)

    def gradient(self, y_true, y_pred):
        return (2 / _batch(y_pred.size, y_pred)) * (y_pred - y_true)


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def per_sample(self, y_true, y_pred):
        return np.abs(y_pred - y_true).mean(axis=-1)

    def gradient(self, y_true, y_pred):
        return (np.sign(y_pred - y_true) / _batch(y_pred.size, y_pred)).astype(y_pred.dtype, copy=False)


class Huber(Loss):
    """0.5 * e**2 where |e| <= delta, else delta * |e| - 0.5 * delta**2 (e = y_pred - y_true), averaged
    over the last axis, as keras.losses.Huber."""
    name = "huber_loss"

    def __init__(self, delta=1.0, reduction="sum_over_batch_size", name=None):
        super().__init__(reduction, name)
        if not delta > 0:
            raise ValueError(f"delta must be positive, got {delta!r}")
        self.delta = float(delta)

    def per_sample(self, y_true, y_pred):
        error = y_pred - y_true
        size = np.abs(error)
        delta = y_pred.dtype.type(self.delta)
        return np.where(size <= delta, 0.5 * error * error, delta * size - 0.5 * delta * delta).mean(axis=-1)

    def gradient(self, y_true, y_pred):
        error = y_pred - y_true
        delta = y_pred.dtype.type(self.delta)
        return (np.clip(error, -delta, delta) / _batch(y_pred.size, y_pred)).astype(y_pred.dtype, copy=False)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class LogCosh(Loss):
    """log(cosh(y_pred - y_true)) averaged over the last axis, as keras.losses.LogCosh."""
    name = "log_cosh"

    def per_sample(self, y_true, y_pred):
        error = y_pred - y_true
        # log(cosh(x)) = x + softplus(-2x) - log(2), without cosh's overflow
        return (error + np.logaddexp(0, -2 * error) - np.log(2)).mean(axis=-1).astype(y_pred.dtype, copy=False)

    def gradient(self, y_true, y_pred):
        return (np.tanh(y_pred - y_true) / _batch(y_pred.size, y_pred)).astype(y_pred.dtype, copy=False)


class KLDivergence(Loss):
    """sum(y_true * log(y_true / y_pred)) over the last axis, both clipped to [epsilon, 1], as
    keras.losses.KLDivergence."""
    name = "kl_divergence"

    def per_sample(self, y_true, y_pred):
        epsilon = backend.epsilon()
        y_true, y_pred = np.clip(y_true, epsilon, 1), np.clip(y_pred, epsilon, 1)
        return (y_true * np.log(y_true / y_pred)).sum(axis=-1)

    def gradient(self, y_true, y_pred):
        epsilon = backend.epsilon()
        inside = (y_pred >= epsilon) & (y_pred <= 1)  # the clip's gradient: zero outside
        grad = np.where(inside, -np.clip(y_true, epsilon, 1) / np.clip(y_pred, epsilon, 1), 0)
        return (grad / _entries(y_pred)).astype(y_pred.dtype, copy=False)


def _values(loss, y_true, y_pred):
    """Per-sample losses, differentiable with respect to y_pred under a GradientTape."""
    pred = np.asarray(autodiff.unwrap(y_pred))
    if pred.dtype.kind != "f":
        pred = pred.astype(np.float32)
    target = loss.prepare_targets(autodiff.unwrap(y_true), pred.shape, pred.dtype)
    per_sample = loss.per_sample(target, pred)
    count = max(per_sample.size, 1)
    # gradient() is that of the mean over the per-sample values: scale by their count.
    return autodiff.record(per_sample, (y_pred,),
                           lambda g: (loss.gradient(target, pred) * (count * g.reshape(per_sample.shape + (1,))),))


class LossFunctionWrapper(Loss):
    """A loss from a function fn(y_true, y_pred) -> per-sample values, written with keras.ops."""

    def __init__(self, fn, name=None, **kwargs):
        super().__init__(name=name or getattr(fn, "__name__", "loss"), **kwargs)
        self.fn = fn

    def prepare_targets(self, y_true, pred_shape, dtype):
        y = np.asarray(y_true)
        return y.astype(dtype, copy=False) if y.dtype.kind in "biuf" and y.dtype != dtype else y

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0):
    return _values(CategoricalCrossentropy(from_logits, label_smoothing), y_true, y_pred)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    return _values(SparseCategoricalCrossentropy(from_logits), y_true, y_pred)


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0):
    return _values(BinaryCrossentropy(from_logits, label_smoothing), y_true, y_pred)


def mean_squared_error(y_true, y_pred):
    return _values(MeanSquaredError(), y_true, y_pred)


def mean_absolute_error(y_true, y_pred):
    return _values(MeanAbsoluteError(), y_true, y_pred)


def huber(y_true, y_pred, delta=1.0):
    return _values(Huber(delta), y_true, y_pred)


def log_cosh(y_true, y_pred):
    return _values(LogCosh(), y_true, y_pred)


def kl_divergence(y_true, y_pred):
    return _values(KLDivergence(), y_true, y_pred)


mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error
logcosh = log_cosh
kld = KLD = kullback_leibler_divergence = kl_divergence

_BY_NAME = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
    "huber": Huber, "huber_loss": Huber, "log_cosh": LogCosh, "logcosh": LogCosh,
    "kl_divergence": KLDivergence, "kld": KLDivergence, "kullback_leibler_divergence": KLDivergence,
}
_BY_FUNCTION = {
    categorical_crossentropy: CategoricalCrossentropy,
    sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
    binary_crossentropy: BinaryCrossentropy,
    mean_squared_error: MeanSquaredError,
    mean_absolute_error: MeanAbsoluteError,
    huber: Huber, log_cosh: LogCosh, kl_divergence: KLDivergence,
}
LOSS_CLASSES = {cls.__name__: cls for cls in _BY_FUNCTION.values()}


def get(identifier):
    """A Loss from a name, one of the functions here, a Loss class or instance, or a serialized dict."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if callable(identifier) and identifier in _BY_FUNCTION:
        return _BY_FUNCTION[identifier]()
    if isinstance(identifier, dict) and identifier.get("class_name") in LOSS_CLASSES:
        config = identifier.get("config", {})
        if not isinstance(config, dict):
            raise ValueError(f"loss config must be a dict, got {config!r}")
        return LOSS_CLASSES[identifier["class_name"]](**config)
    if callable(identifier) and not isinstance(identifier, type):
        return LossFunctionWrapper(identifier)
    raise ValueError(f"unknown loss {identifier!r}; expected one of {', '.join(_BY_NAME)}")


def serialize(loss):
    """A JSON-able description of a built-in loss, or None for a user-defined class."""
    if type(loss).__name__ in LOSS_CLASSES and type(loss) is LOSS_CLASSES[type(loss).__name__]:
        return {"class_name": type(loss).__name__, "config": loss.get_config()}
    return None
