"""Conv2D, channels_last with the kernel stored (kh, kw, cin, cout) as Keras does, and Conv2DTranspose."""
import numpy as np

from fastconv.keras import activations, backend, initializers, microbatch, regularizers
from fastconv.keras.layers.base import Layer
from fastconv.keras.layers.core import activation_backward, apply_activation
from fastconv.shapes import checked_int, conv_window, deconv_output_length, output_padding_pair


class _MaxPooledContext:
    """forward_max_pooled's context: the conv's input and the pooling's argmax bytes."""

    def __init__(self, inputs, argmax):
        self.inputs, self.argmax = inputs, argmax


class Conv2D(Layer):
    fuses_output_activation = True
    fuses_input_relu = True  # backward(x_from_relu=True) also applies the gradient of a ReLU before it
    fuses_max_pooling = True  # forward_max_pooled: the conv with ReLU and the MaxPooling2D(2) after it

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None, dilation_rate=(1, 1),
                 groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"data_format must be 'channels_last', got {data_format!r}")
        if groups != 1:
            raise ValueError(f"groups must be 1 (grouped convolutions are not supported), got {groups!r}")
        self.filters = checked_int(filters, "filters", minimum=1)
        # parsed once: the ops find this window's geometry per input shape in fastconv.shapes' cache
        self.window = conv_window(kernel_size, strides, padding, dilation_rate, explicit_padding=False)
        self.kernel_size, self.strides = self.window.kernel_size, self.window.strides
        self.padding, self.dilation_rate = self.window.padding, self.window.dilation_rate
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel = self.bias = None

    def kernel_shape(self, channels):
        return self.kernel_size + (channels, self.filters)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} {self.name!r} needs 4-D inputs (batch, height, width, channels), "
                             f"got shape {input_shape}")
        channels = input_shape[-1]
        self.kernel = self.add_weight(shape=self.kernel_shape(channels), initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer, name="kernel")
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer, name="bias")
        self._set_input_spec(4, {-1: channels})

    def compute_output_shape(self, input_shape):
        return self.window.output_shape(input_shape, self.filters)

    def forward(self, inputs, training=False):
        relu = self.activation is activations.relu
        with self._compute_scope():  # bfloat16 GEMMs under mixed_bfloat16 (dtype policies)
            pre = backend.ops().conv2d(inputs, self.kernel.value, None if self.bias is None else self.bias.value,
                                       strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
                                       activation="relu" if relu else None)
        out = pre if relu else apply_activation(self.activation, pre)
        return out, (inputs, pre, out)

    def forward_max_pooled(self, inputs):
        """forward() and then MaxPooling2D(2)'s, as one op where the backend fuses them (conv2d_relu_maxpool2d:
        ReLU, float32, a conv on the direct kernels or Winograd): (pooled output, context), or None."""
        ops = backend.ops()
        kernel = self.kernel.value
        if (self.activation is not activations.relu or self.compute_dtype != "float32" or microbatch.active()
                or getattr(inputs, "dtype", None) != np.float32 or kernel.dtype != np.float32
                or not ops.conv2d_relu_maxpool2d_fuses(inputs.shape, kernel.shape, strides=self.strides,
                                                       padding=self.padding, dilation_rate=self.dilation_rate)):
            return None
        pooled, argmax = ops.conv2d_relu_maxpool2d(inputs, kernel, None if self.bias is None else self.bias.value,
                                                   strides=self.strides, padding=self.padding,
                                                   dilation_rate=self.dilation_rate)
        return pooled, _MaxPooledContext(inputs, argmax)

    def _backward_max_pooled(self, ctx, grad, need_input_grad, x_from_relu):
        dx, dw, db = backend.ops().conv2d_relu_maxpool2d_backward(
            grad, ctx.argmax, ctx.inputs, self.kernel.value, strides=self.strides, padding=self.padding,
            dilation_rate=self.dilation_rate, need_dx=need_input_grad, x_from_relu=x_from_relu)
        self.kernel.add_grad(dw)
        if self.bias is not None:
            self.bias.add_grad(db)
        return dx

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        if isinstance(ctx, _MaxPooledContext):
            return self._backward_max_pooled(ctx, grad, need_input_grad, x_from_relu)
        x, pre, out = ctx
        dpre = activation_backward(self.activation, grad, pre, out, from_preactivation)
        backward = backend.ops().conv2d_backward
        if microbatch.active():  # dw and db summed over leaves in the fixed tree (deterministic="ranks")
            backward = microbatch.by_leaves(backward)
        with self._compute_scope():
            dx, dw, db = backward(dpre, x, self.kernel.value, strides=self.strides, padding=self.padding,
                                  dilation_rate=self.dilation_rate, need_dx=need_input_grad, x_from_relu=x_from_relu)
        self.kernel.add_grad(dw)
        if self.bias is not None:
            self.bias.add_grad(db)
        return dx

    def preactivation(self, ctx):
        return ctx[1]

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, "dilation_rate": list(self.dilation_rate),
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}


class Conv2DTranspose(Conv2D):
    """Transposed convolution (the input gradient of a Conv2D), with the kernel stored (kh, kw, filters,
    in_channels) as Keras does: strides > 1 upsample (autoencoders, generators)."""
    fuses_input_relu = False  # its input gradient is a forward conv, which does not mask by x
    fuses_max_pooling = False

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", output_padding=None, data_format=None,
                 dilation_rate=(1, 1), activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, data_format=data_format,
                         dilation_rate=dilation_rate, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer, **kwargs)
        self.output_padding = output_padding_pair(output_padding, self.strides)

    def kernel_shape(self, channels):
        return self.kernel_size + (self.filters, channels)

    def compute_output_shape(self, input_shape):
        rows, cols = (deconv_output_length(input_shape[axis], self.kernel_size[i], self.padding, self.strides[i],
                                           None if self.output_padding is None else self.output_padding[i],
                                           self.dilation_rate[i]) for i, axis in enumerate((1, 2)))
        return (input_shape[0], rows, cols, self.filters)

    def _conv_args(self):
        return {"strides": self.strides, "padding": self.padding, "dilation_rate": self.dilation_rate}

    def forward(self, inputs, training=False):
        relu = self.activation is activations.relu
        with self._compute_scope():
            pre = backend.ops().conv2d_transpose(inputs, self.kernel.value,
                                                 None if self.bias is None else self.bias.value,
                                                 output_padding=self.output_padding,
                                                 activation="relu" if relu else None, **self._conv_args())
        out = pre if relu else apply_activation(self.activation, pre)
        return out, (inputs, pre, out)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        x, pre, out = ctx
        dpre = activation_backward(self.activation, grad, pre, out, from_preactivation)
        ops = backend.ops()
        # The forward is conv2d's input gradient, so x is that conv's output gradient and dpre its input:
        # dw comes from conv2d_backward with the two swapped, dx from the forward conv of dpre.
        with self._compute_scope():
            if microbatch.active():  # dw and db summed over leaves in the fixed tree (deterministic="ranks")
                _, dw = microbatch.by_leaves(lambda a, b: ops.conv2d_backward(a, b, self.kernel.value, need_dx=False,
                                                                              **self._conv_args())[:2])(x, dpre)
                db = microbatch.leaf_sum(lambda rows: dpre[rows].sum(axis=(0, 1, 2)), len(dpre))
            else:
                _, dw, _ = ops.conv2d_backward(x, dpre, self.kernel.value, need_dx=False, **self._conv_args())
                db = dpre.sum(axis=(0, 1, 2))
            dx = ops.conv2d(dpre, self.kernel.value, **self._conv_args()) if need_input_grad else None
        self.kernel.add_grad(dw)
        if self.bias is not None:
            self.bias.add_grad(db)
        return dx

    def get_config(self):
        config = super().get_config()
        config["output_padding"] = None if self.output_padding is None else list(self.output_padding)
        return config
