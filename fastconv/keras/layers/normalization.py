"""BatchNormalization over the channel (last) axis, with Keras' momentum and epsilon defaults."""
import numpy as np

from fastconv.keras import initializers, regularizers
from fastconv.keras.layers.base import Layer


class BatchNormalization(Layer):
    """Training: normalise with the batch statistics and update the moving ones; inference: use the moving ones.

    As in Keras, a layer with trainable=False always runs in inference mode.
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if axis not in (-1, 3):
            raise ValueError(f"BatchNormalization supports the channel axis -1 only (channels_last), got axis={axis!r}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}")
        self.axis = -1
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.gamma = self.beta = None

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"BatchNormalization {self.name!r} needs a known channel axis, got shape {input_shape}")
        if self.scale:
            self.gamma = self.add_weight("gamma", (channels,), self.gamma_initializer, regularizer=self.gamma_regularizer)
        if self.center:
            self.beta = self.add_weight("beta", (channels,), self.beta_initializer, regularizer=self.beta_regularizer)
        self.moving_mean = self.add_weight("moving_mean", (channels,), self.moving_mean_initializer, trainable=False)
        self.moving_variance = self.add_weight("moving_variance", (channels,), self.moving_variance_initializer,
                                               trainable=False)
        self._set_input_spec(len(input_shape), {-1: channels})

    def forward(self, inputs, training=False):
        axes = tuple(range(inputs.ndim - 1))
        if training and self.trainable:
            mean = inputs.mean(axis=axes)
            variance = inputs.var(axis=axes)
            self.moving_mean.value *= self.momentum
            self.moving_mean.value += (1 - self.momentum) * mean
            self.moving_variance.value *= self.momentum
            self.moving_variance.value += (1 - self.momentum) * variance
        else:
            mean, variance = self.moving_mean.value, self.moving_variance.value
        inv_std = (1 / np.sqrt(variance + self.epsilon)).astype(inputs.dtype)
        normalized = (inputs - mean.astype(inputs.dtype)) * inv_std
        out = normalized
        if self.gamma is not None:
            out = out * self.gamma.value
        if self.beta is not None:
            out = out + self.beta.value
        return out, (normalized, inv_std, bool(training and self.trainable))

    def backward(self, ctx, grad, need_input_grad=True):
        normalized, inv_std, used_batch_statistics = ctx
        axes = tuple(range(grad.ndim - 1))
        if self.gamma is not None:
            self.gamma.add_grad((grad * normalized).sum(axis=axes))
        if self.beta is not None:
            self.beta.add_grad(grad.sum(axis=axes))
        if not need_input_grad:
            return None
        dnormalized = grad if self.gamma is None else grad * self.gamma.value
        if not used_batch_statistics:
            return dnormalized * inv_std
        # Batch statistics depend on every input: subtract the mean gradient and its projection on x_hat.
        count = grad.size // grad.shape[-1]
        mean_d = dnormalized.sum(axis=axes) / count
        mean_dx = (dnormalized * normalized).sum(axis=axes) / count
        return (dnormalized - mean_d - normalized * mean_dx) * inv_std

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
                "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer)}
