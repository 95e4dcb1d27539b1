"""BatchNormalization over the channel (last) axis, with Keras' momentum and epsilon defaults, and
LayerNormalization over the last axis."""
import numpy as np

from fastconv.keras import backend, distribution, initializers, microbatch, regularizers
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
            self.gamma = self.add_weight(shape=(channels,), initializer=self.gamma_initializer,
                                         regularizer=self.gamma_regularizer, name="gamma")
        if self.center:
            self.beta = self.add_weight(shape=(channels,), initializer=self.beta_initializer,
                                        regularizer=self.beta_regularizer, name="beta")
        self.moving_mean = self.add_weight(shape=(channels,), initializer=self.moving_mean_initializer,
                                           trainable=False, name="moving_mean")
        self.moving_variance = self.add_weight(shape=(channels,), initializer=self.moving_variance_initializer,
                                               trainable=False, name="moving_variance")
        self._set_input_spec(len(input_shape), {-1: channels})

    def forward(self, inputs, training=False):
        batch_statistics = bool(training and self.trainable)
        if batch_statistics and microbatch.active():  # the leaves' statistics in the fixed tree
            return microbatch.batch_norm_forward(self, backend.ops_for(inputs), inputs)
        if batch_statistics and distribution.active():  # synchronised: the global batch's statistics
            return distribution.sync_batch_norm_forward(self, inputs)
        given = {} if batch_statistics else {"mean": self.moving_mean.value, "variance": self.moving_variance.value}
        out, mean, variance = backend.ops_for(inputs).batch_norm(inputs, self._value(self.gamma),
                                                                 self._value(self.beta), epsilon=self.epsilon, **given)
        if batch_statistics:
            self.moving_mean.value *= self.momentum
            self.moving_mean.value += (1 - self.momentum) * mean
            self.moving_variance.value *= self.momentum
            self.moving_variance.value += (1 - self.momentum) * variance
        # The backward pass recomputes the normalized inputs from x: cheaper than keeping them.
        return out, (inputs, mean, variance, batch_statistics)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        if isinstance(ctx, microbatch.BatchNormLeaves):
            return microbatch.batch_norm_backward(self, backend.ops_for(grad), ctx, grad, need_input_grad)
        if len(ctx) == 5:  # from sync_batch_norm_forward
            return distribution.sync_batch_norm_backward(self, ctx, grad, need_input_grad)
        inputs, mean, variance, batch_statistics = ctx
        dx, dgamma, dbeta = backend.ops_for(grad).batch_norm_backward(
            grad, inputs, mean, variance, self._value(self.gamma), epsilon=self.epsilon,
            batch_statistics=batch_statistics, need_dx=need_input_grad)
        if self.gamma is not None:
            self.gamma.add_grad(dgamma)
        if self.beta is not None:
            self.beta.add_grad(dbeta)
        return dx

    @staticmethod
    def _value(variable):
        return None if variable is None else variable.value

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
                "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer)}


class LayerNormalization(Layer):
    """Normalises each sample over its last axis: (x - mean) / sqrt(variance + epsilon) * gamma + beta,
    as keras.layers.LayerNormalization with axis=-1."""

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, rms_scaling=False, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if axis not in (-1, [-1], (-1,)):
            raise ValueError(f"LayerNormalization supports the last axis only (axis=-1), got axis={axis!r}")
        if rms_scaling:
            raise ValueError("LayerNormalization(rms_scaling=True) is not supported")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}")
        self.axis, self.epsilon, self.center, self.scale = -1, float(epsilon), bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.gamma = self.beta = None

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(f"LayerNormalization {self.name!r} needs a known last axis, got shape {input_shape}")
        if self.scale:
            self.gamma = self.add_weight(shape=(features,), initializer=self.gamma_initializer,
                                         regularizer=self.gamma_regularizer, name="gamma")
        if self.center:
            self.beta = self.add_weight(shape=(features,), initializer=self.beta_initializer,
                                        regularizer=self.beta_regularizer, name="beta")
        self._set_input_spec(len(input_shape), {-1: features})

    def _grouped(self, array):
        """`array` shaped so that each set of values normalised together spans `axes`; and those axes."""
        return array, (-1,)

    def forward(self, inputs, training=False):
        grouped, axes = self._grouped(inputs)
        centred = grouped - grouped.mean(axis=axes, keepdims=True)
        inverse = 1 / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + inputs.dtype.type(self.epsilon))
        normalised = (centred * inverse).reshape(inputs.shape)
        out = normalised if self.gamma is None else normalised * self.gamma.value
        if self.beta is not None:
            out = out + self.beta.value
        return out, (normalised, inverse)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        normalised, inverse = ctx
        summed = tuple(range(grad.ndim - 1))
        if self.gamma is not None:
            self.gamma.add_grad((grad * normalised).sum(axis=summed))
        if self.beta is not None:
            self.beta.add_grad(grad.sum(axis=summed))
        if not need_input_grad:
            return None
        (scaled, axes), (grouped, _) = self._grouped(grad if self.gamma is None else grad * self.gamma.value), \
            self._grouped(normalised)
        return (inverse * (scaled - scaled.mean(axis=axes, keepdims=True)
                           - grouped * (scaled * grouped).mean(axis=axes, keepdims=True))).reshape(grad.shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale, "rms_scaling": False,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer)}


class GroupNormalization(LayerNormalization):
    """Normalises each sample's channels (last axis) in `groups` groups, each over the group's channels
    and every other axis but the batch, then scales and shifts per channel, as
    keras.layers.GroupNormalization (groups=1: over the whole sample; groups=channels: each channel)."""

    def __init__(self, groups=32, axis=-1, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None, **kwargs):
        super().__init__(axis=axis, epsilon=epsilon, center=center, scale=scale, beta_initializer=beta_initializer,
                         gamma_initializer=gamma_initializer, beta_regularizer=beta_regularizer,
                         gamma_regularizer=gamma_regularizer, **kwargs)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        self.groups = groups

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is not None and (channels < self.groups or channels % self.groups):
            raise ValueError(f"GroupNormalization {self.name!r}: {channels} channels cannot be split into "
                             f"{self.groups} equal groups")
        super().build(input_shape)

    def _grouped(self, array):
        return array.reshape(len(array), -1, self.groups, array.shape[-1] // self.groups), (1, 3)

    def get_config(self):
        config = super().get_config()
        del config["rms_scaling"]
        return {**config, "groups": self.groups}
