"""Dense, the activation layers, Rescaling, Flatten, Reshape and Dropout."""
import math

import numpy as np

from fastconv.keras import activations, backend, distributed, initializers, microbatch, regularizers
from fastconv.keras.layers.base import Layer
from fastconv.shapes import checked_int


def apply_activation(fn, pre):
    return pre if fn is activations.linear else fn(pre)


def activation_backward(fn, grad, pre, out, from_preactivation):
    """The gradient at the pre-activation; `from_preactivation` means the loss already gave it (fused)."""
    if from_preactivation:
        return grad
    return activations.backward(fn, grad, pre, out)


class Dense(Layer):
    """units outputs = activation(inputs @ kernel + bias) over the last axis, one fused gemm."""
    fuses_output_activation = True

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.units = checked_int(units, "units", minimum=1)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel = self.bias = None

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f"Dense {self.name!r} needs inputs with a known last axis, got shape {input_shape}")
        in_dim = input_shape[-1]
        self.kernel = self.add_weight(shape=(in_dim, self.units), initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer, name="kernel")
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.units,), initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer, name="bias")
        self._set_input_spec(len(input_shape), {-1: in_dim})

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, inputs, training=False):
        x = inputs.reshape(-1, inputs.shape[-1])
        relu = self.activation is activations.relu
        with self._compute_scope():  # bfloat16 GEMMs under mixed_bfloat16 (dtype policies)
            pre = backend.ops().gemm(x, self.kernel.value, bias=None if self.bias is None else self.bias.value,
                                     activation="relu" if relu else None)
        out = pre if relu else apply_activation(self.activation, pre)
        return out.reshape(inputs.shape[:-1] + (self.units,)), (x, pre, out, inputs.shape)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        x, pre, out, input_shape = ctx
        dpre = activation_backward(self.activation, grad.reshape(pre.shape), pre, out, from_preactivation)
        gemm = backend.ops().gemm
        with self._compute_scope():
            if microbatch.active():  # summed over leaves in the fixed tree (deterministic="ranks")
                samples = input_shape[0]
                dw, db = microbatch.leaf_sum(lambda rows: (gemm(x[rows], dpre[rows], trans_a=True),
                                                           dpre[rows].sum(axis=0)), samples, len(x) // samples)
            else:
                dw = gemm(x, dpre, trans_a=True, out=distributed.gradient_buffer(self.kernel))
                db = None if self.bias is None else np.add.reduce(dpre, axis=0)
            dx = gemm(dpre, self.kernel.value, trans_b=True).reshape(input_shape) if need_input_grad else None
        self.kernel.add_grad(dw)
        if self.bias is not None:
            self.bias.add_grad(db)
        return dx

    def preactivation(self, ctx):
        x, pre, out, input_shape = ctx
        return pre.reshape(input_shape[:-1] + (self.units,))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}


class Activation(Layer):
    """Applies an activation function by name (or one of keras.activations)."""
    fuses_output_activation = True

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)

    def forward(self, inputs, training=False):
        out = apply_activation(self.activation, inputs)
        return out, (inputs, out)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        x, out = ctx
        return activation_backward(self.activation, grad, x, out, from_preactivation)

    def preactivation(self, ctx):
        return ctx[0]

    def get_config(self):
        return {**super().get_config(), "activation": activations.serialize(self.activation)}


class Softmax(Activation):
    """Softmax over the last axis."""

    def __init__(self, axis=-1, **kwargs):
        if axis != -1:
            raise ValueError(f"Softmax supports axis=-1 only (channels_last), got axis={axis!r}")
        super().__init__("softmax", **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["activation"]
        return {**config, "axis": -1}


class ReLU(Layer):
    """max(x, 0), with Keras' optional max_value, negative_slope and threshold."""
    fuses_output_activation = True  # as plain max(x, 0), a conv or pool after it can apply its gradient

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        if max_value is not None and max_value < 0:
            raise ValueError(f"max_value must be None or >= 0, got {max_value!r}")
        if negative_slope < 0:
            raise ValueError(f"negative_slope must be >= 0, got {negative_slope!r}")
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope = float(negative_slope)
        self.threshold = float(threshold)

    def forward(self, inputs, training=False):
        if self.activation is activations.relu:
            out = np.maximum(inputs, 0)  # keeps NaN, like max(x, 0) in the kernels
            return out, out
        dtype = inputs.dtype.type  # scalars of the input's dtype keep every temporary in it
        above = inputs >= self.threshold if self.negative_slope else inputs > self.threshold
        slope = np.where(above, dtype(1), dtype(self.negative_slope))
        out = np.where(above, inputs, (inputs - dtype(self.threshold)) * dtype(self.negative_slope))
        if self.max_value is not None:
            slope *= out < self.max_value
            out = np.minimum(out, dtype(self.max_value))
        return out, slope

    @property
    def activation(self):
        """relu when this layer is plain max(x, 0): a conv or max pool after it may then apply its gradient."""
        plain = self.max_value is None and not self.negative_slope and not self.threshold
        return activations.relu if plain else None

    def preactivation(self, ctx):
        return None  # only the output is kept; no loss fuses with a ReLU

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        if from_preactivation:
            return grad
        if self.activation is activations.relu:  # ctx is the output: the gradient passes where it is > 0
            return backend.ops_for(grad).relu_backward(grad, ctx)
        return grad * ctx

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value, "negative_slope": self.negative_slope,
                "threshold": self.threshold}


class LeakyReLU(Layer):
    """x if x > 0 else negative_slope * x (Keras 3 default 0.3; `alpha` is the older spelling)."""

    def __init__(self, negative_slope=0.3, alpha=None, **kwargs):
        super().__init__(**kwargs)
        self.negative_slope = float(negative_slope if alpha is None else alpha)
        if self.negative_slope < 0:
            raise ValueError(f"negative_slope must be >= 0, got {self.negative_slope!r}")

    def forward(self, inputs, training=False):
        positive = inputs > 0
        return np.where(positive, inputs, inputs * inputs.dtype.type(self.negative_slope)), positive

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return np.where(ctx, grad, grad * grad.dtype.type(self.negative_slope))

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


class ELU(Layer):
    """x if x > 0 else alpha * (exp(x) - 1), as keras.layers.ELU."""

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise TypeError(f"alpha must be a finite number, got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, inputs, training=False):
        alpha = inputs.dtype.type(self.alpha)
        exp = np.exp(np.minimum(inputs, 0))  # no overflow warning from the positive side np.where discards
        return np.where(inputs > 0, inputs, alpha * (exp - 1)), (inputs > 0, exp)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        positive, exp = ctx
        return np.where(positive, grad, grad * (grad.dtype.type(self.alpha) * exp))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


class PReLU(Layer):
    """x if x > 0 else alpha * x with a learned alpha per input element (one per group along
    shared_axes), as keras.layers.PReLU."""

    def __init__(self, alpha_initializer="zeros", alpha_regularizer=None, alpha_constraint=None, shared_axes=None,
                 **kwargs):
        super().__init__(**kwargs)
        if alpha_constraint is not None:
            raise ValueError("PReLU alpha_constraint is not supported")
        if shared_axes is not None and not isinstance(shared_axes, (list, tuple)):
            shared_axes = [shared_axes]
        if shared_axes is not None and not all(isinstance(a, int) and not isinstance(a, bool) and a >= 1
                                               for a in shared_axes):
            raise ValueError(f"shared_axes must be axes after the batch axis (1, 2, ...), got {shared_axes!r}")
        self.shared_axes = None if shared_axes is None else sorted(set(shared_axes))
        self.alpha_initializer = initializers.get(alpha_initializer)
        self.alpha_regularizer = regularizers.get(alpha_regularizer)
        self.alpha = None

    def build(self, input_shape):
        shape = list(input_shape[1:])
        for axis in self.shared_axes or ():
            if axis > len(shape):
                raise ValueError(f"PReLU shared axis {axis} is beyond the input's rank {len(input_shape)}")
            shape[axis - 1] = 1
        if None in shape:
            raise ValueError(f"PReLU {self.name!r} needs every unshared axis known, got shape {input_shape}")
        self.alpha = self.add_weight(shape=tuple(shape), initializer=self.alpha_initializer,
                                     regularizer=self.alpha_regularizer, name="alpha")

    def forward(self, inputs, training=False):
        negative = np.minimum(inputs, 0)
        return np.maximum(inputs, 0) + self.alpha.value * negative, (inputs > 0, negative)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        positive, negative = ctx
        # alpha's gradient summed over the batch and the shared axes, back to alpha's shape
        summed = (0,) + tuple(self.shared_axes or ())
        self.alpha.add_grad((grad * negative).sum(axis=summed, keepdims=True).reshape(self.alpha.shape))
        return np.where(positive, grad, grad * self.alpha.value) if need_input_grad else None

    def get_config(self):
        return {**super().get_config(), "alpha_initializer": initializers.serialize(self.alpha_initializer),
                "alpha_regularizer": regularizers.serialize(self.alpha_regularizer), "alpha_constraint": None,
                "shared_axes": self.shared_axes}


class GaussianNoise(Layer):
    """Adds zero-mean Gaussian noise of standard deviation `stddev` while training (as
    keras.layers.GaussianNoise); returns the input unchanged otherwise."""

    def __init__(self, stddev, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(stddev, bool) or not isinstance(stddev, (int, float)) or not 0 <= stddev < math.inf:
            raise ValueError(f"stddev must be a finite number >= 0, got {stddev!r}")
        self.stddev, self.seed = float(stddev), seed
        self._rng = None if seed is None else np.random.default_rng(seed)

    def forward(self, inputs, training=False):
        if not training or self.stddev == 0:
            return inputs, None
        rng = self._rng or backend.rng()
        # drawn for the global batch under deterministic="ranks", as Dropout's masks
        noise = microbatch.batch_draw(lambda n: rng.standard_normal((n,) + inputs.shape[1:], np.float32),
                                      inputs.shape[0])
        return inputs + (noise * np.float32(self.stddev)).astype(inputs.dtype, copy=False), None

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return grad

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}


class Identity(Layer):
    """Returns its input unchanged (a placeholder, as keras.layers.Identity)."""

    def forward(self, inputs, training=False):
        return inputs, None

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return grad


class Rescaling(Layer):
    """inputs * scale + offset: lets a model take uint8 images (e.g. scale=1/255) converted per batch."""

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("scale", scale), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"{name} must be a finite number, got {value!r}")
        self.scale, self.offset = float(scale), float(offset)

    def forward(self, inputs, training=False):
        dtype = inputs.dtype.type
        out = inputs * dtype(self.scale)
        if self.offset:
            out += dtype(self.offset)
        return out, None

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return grad * grad.dtype.type(self.scale)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


class Flatten(Layer):
    """(batch, ...) -> (batch, product of the rest)."""

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        return (input_shape[0], None if None in rest else math.prod(rest))

    def forward(self, inputs, training=False):
        return inputs.reshape(inputs.shape[0], -1), inputs.shape

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return grad.reshape(ctx)


class Reshape(Layer):
    """Reshape each sample to target_shape (no batch axis; one entry may be -1)."""

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(target_shape, (tuple, list)) or not target_shape:
            raise TypeError(f"target_shape must be a non-empty tuple of ints, got {target_shape!r}")
        if sum(1 for d in target_shape if d == -1) > 1 or any(d != -1 and d <= 0 for d in target_shape):
            raise ValueError(f"target_shape must hold positive ints and at most one -1, got {target_shape!r}")
        self.target_shape = tuple(int(d) for d in target_shape)

    def compute_output_shape(self, input_shape):
        size = None if None in input_shape[1:] else math.prod(input_shape[1:])
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape:
            if size is not None and size % known:
                raise ValueError(f"cannot reshape input of shape {input_shape} to {self.target_shape}")
            fill = None if size is None else size // known
            return (input_shape[0],) + tuple(fill if d == -1 else d for d in self.target_shape)
        if size is not None and size != known:
            raise ValueError(f"cannot reshape input of shape {input_shape} ({size} values) to {self.target_shape}")
        return (input_shape[0],) + self.target_shape

    def forward(self, inputs, training=False):
        return inputs.reshape((inputs.shape[0],) + self.target_shape), inputs.shape

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return grad.reshape(ctx)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


class Dropout(Layer):
    """Zeroes a fraction `rate` of the inputs while training and scales the rest by 1 / (1 - rate)."""

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
        if noise_shape is not None:
            raise ValueError("Dropout noise_shape is not supported")
        self.rate = float(rate)
        # A per-layer seed gives a layer its own stream; otherwise the seeded backend generator is used.
        self.seed = seed
        self._rng = None if seed is None else np.random.default_rng(seed)

    def forward(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs, None
        # int(rng.integers(0, 2**63)): the top 63 bits of the generator's next 64-bit draw (Lemire's
        # bounded draw, exact for a power-of-two range), the same value and state at a sixth of the cost
        seed = (self._rng or backend.rng()).bit_generator.random_raw() >> 1
        # a rank's samples get their part of the global batch's mask (deterministic="ranks")
        first = microbatch.first_sample() * (inputs.size // max(len(inputs), 1))
        return backend.ops_for(inputs).dropout_keep(inputs, self.rate, seed, first)  # the mask as bytes

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return grad if ctx is None else backend.ops_for(grad).dropout_backward(grad, ctx, self.rate)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class SpatialDropout2D(Dropout):
    """Dropout of whole feature maps: while training, each channel of each image is zeroed with
    probability `rate` (all its pixels together) and the rest scaled by 1 / (1 - rate)."""

    def __init__(self, rate, data_format=None, seed=None, **kwargs):
        super().__init__(rate, seed=seed, **kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"data_format must be 'channels_last', got {data_format!r}")

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"SpatialDropout2D {self.name!r} needs 4-D inputs, got shape {input_shape}")

    def forward(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs, None
        rng = self._rng or backend.rng()
        keep = microbatch.batch_draw(lambda n: rng.random((n, 1, 1, inputs.shape[3])), inputs.shape[0]) >= self.rate
        mask = (keep / (1 - self.rate)).astype(inputs.dtype)
        return inputs * mask, mask

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return grad if ctx is None else grad * ctx


class Lambda(Layer):
    """Wraps a function written with keras.ops as a layer: `Lambda(lambda x: ops.square(x))`.

    Its gradient comes from the ops it calls. A model holding one cannot be saved to a file (its code
    would have to be), as with Keras' safe mode; write a layer class for that.
    """

    def __init__(self, function, output_shape=None, mask=None, arguments=None, **kwargs):
        super().__init__(**kwargs)
        if not callable(function):
            raise TypeError(f"Lambda needs a function, got {type(function).__name__}")
        if mask is not None:
            raise ValueError("Lambda mask= is not supported")
        self.function = function
        self.arguments = dict(arguments or {})
        self.output_shape_spec = output_shape

    def call(self, inputs):
        return self.function(inputs, **self.arguments)

    def compute_output_shape(self, input_shape):
        if self.output_shape_spec is None:
            return self._infer_output_shape(input_shape)
        if callable(self.output_shape_spec):
            return tuple(self.output_shape_spec(input_shape))
        return (input_shape[0],) + tuple(self.output_shape_spec)

    def get_config(self):
        raise ValueError(f"Lambda layer {self.name!r} cannot be saved: a file cannot hold its Python code. "
                         "Write a Layer subclass with call() and register it with "
                         "@keras.saving.register_keras_serializable()")
