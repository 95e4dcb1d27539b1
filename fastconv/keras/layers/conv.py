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


def _set_window(layer, kernel_size, strides, padding, data_format, dilation_rate):
    """Check a conv layer's data_format and parse its window into its attributes (once: the ops find the
    window's geometry per input shape in fastconv.shapes' cache)."""
    if data_format not in (None, "channels_last"):
        raise ValueError(f"data_format must be 'channels_last', got {data_format!r}")
    layer.window = conv_window(kernel_size, strides, padding, dilation_rate, explicit_padding=False)
    layer.kernel_size, layer.strides = layer.window.kernel_size, layer.window.strides
    layer.padding, layer.dilation_rate = layer.window.padding, layer.window.dilation_rate


def _image_channels(layer, input_shape):
    if len(input_shape) != 4 or input_shape[-1] is None:
        raise ValueError(f"{type(layer).__name__} {layer.name!r} needs 4-D inputs (batch, height, width, channels), "
                         f"got shape {input_shape}")
    return input_shape[-1]


class Conv2D(Layer):
    fuses_output_activation = True
    fuses_input_relu = True  # backward(x_from_relu=True) also applies the gradient of a ReLU before it
    fuses_max_pooling = True  # forward_max_pooled: the conv with ReLU and the MaxPooling2D(2) after it

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None, dilation_rate=(1, 1),
                 groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if groups != 1:
            raise ValueError(f"groups must be 1 (grouped convolutions are not supported), got {groups!r}")
        self.filters = checked_int(filters, "filters", minimum=1)
        _set_window(self, kernel_size, strides, padding, data_format, dilation_rate)
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
        channels = _image_channels(self, input_shape)
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


def _taps(geometry):
    """Per kernel tap (row, column): the slice of the padded input that tap multiplies, for every output."""
    g = geometry
    rows = lambda a: slice(a * g.dilation_h, a * g.dilation_h + g.stride_h * (g.oh - 1) + 1, g.stride_h)  # noqa: E731
    cols = lambda b: slice(b * g.dilation_w, b * g.dilation_w + g.stride_w * (g.ow - 1) + 1, g.stride_w)  # noqa: E731
    return [((a, b), (slice(None), rows(a), cols(b), slice(None))) for a in range(g.kh) for b in range(g.kw)]


def _padded(inputs, g):
    return np.pad(inputs, ((0, 0), (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right), (0, 0)))


def _depthwise_forward(padded, kernel, g):
    """Each channel c convolved with its kernel[..., c, m]: (n, oh, ow, c * multiplier), channel-major."""
    out = np.zeros((padded.shape[0], g.oh, g.ow) + kernel.shape[2:], padded.dtype)
    for tap, window in _taps(g):
        out += padded[window][..., None] * kernel[tap]
    return out.reshape(out.shape[:3] + (-1,))


def _depthwise_backward(padded, kernel, g, grad, need_input_grad):
    """(the kernel's gradient, the padded input's gradient or None) for the output gradient `grad`."""
    grad = grad.reshape(grad.shape[:3] + kernel.shape[2:])
    dkernel = np.empty_like(kernel)
    dpadded = np.zeros_like(padded) if need_input_grad else None
    for tap, window in _taps(g):
        dkernel[tap] = np.einsum("nijc,nijcm->cm", padded[window], grad)
        if need_input_grad:
            dpadded[window] += np.einsum("nijcm,cm->nijc", grad, kernel[tap])
    return dkernel, dpadded


def _unpadded(dpadded, g):
    return None if dpadded is None else dpadded[:, g.pad_top:g.pad_top + g.h, g.pad_left:g.pad_left + g.w, :]


class DepthwiseConv2D(Layer):
    """Each input channel convolved with its own depth_multiplier filters, as keras.layers.DepthwiseConv2D
    (output channel c * depth_multiplier + m; kernel shape (rows, cols, channels, depth_multiplier))."""

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1, data_format=None,
                 dilation_rate=(1, 1), activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.depth_multiplier = checked_int(depth_multiplier, "depth_multiplier", minimum=1)
        _set_window(self, kernel_size, strides, padding, data_format, dilation_rate)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel = self.bias = None

    def _out_channels(self, channels):
        return channels * self.depth_multiplier

    def build(self, input_shape):
        channels = _image_channels(self, input_shape)
        self.kernel = self.add_weight(shape=self.kernel_size + (channels, self.depth_multiplier),
                                      initializer=self.depthwise_initializer, regularizer=self.depthwise_regularizer,
                                      name="kernel")
        if self.use_bias:
            self.bias = self.add_weight(shape=(self._out_channels(channels),), initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer, name="bias")
        self._set_input_spec(4, {-1: channels})

    def compute_output_shape(self, input_shape):
        return self.window.output_shape(input_shape, self._out_channels(input_shape[-1]))

    def _geometry(self, shape):
        return self.window.geometry(shape, self.kernel_size + (shape[-1], shape[-1]))

    def forward(self, inputs, training=False):
        g = self._geometry(inputs.shape)
        padded = _padded(inputs, g)
        pre = _depthwise_forward(padded, self.kernel.value, g)
        if self.bias is not None:
            pre += self.bias.value
        out = apply_activation(self.activation, pre)
        return out, (padded, g, pre, out)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        padded, g, pre, out = ctx
        dpre = activation_backward(self.activation, grad, pre, out, from_preactivation)
        dkernel, dpadded = _depthwise_backward(padded, self.kernel.value, g, dpre, need_input_grad)
        self.kernel.add_grad(dkernel)
        if self.bias is not None:
            self.bias.add_grad(dpre.sum(axis=(0, 1, 2)))
        return _unpadded(dpadded, g)

    def get_config(self):
        return {**super().get_config(), "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                "padding": self.padding, "depth_multiplier": self.depth_multiplier,
                "dilation_rate": list(self.dilation_rate), "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias, "depthwise_initializer": initializers.serialize(self.depthwise_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "depthwise_regularizer": regularizers.serialize(self.depthwise_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}


class SeparableConv2D(Layer):
    """A DepthwiseConv2D (no bias) followed by a 1x1 convolution to `filters` channels, then the bias and
    the activation, as keras.layers.SeparableConv2D."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None, dilation_rate=(1, 1),
                 depth_multiplier=1, activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 pointwise_initializer="glorot_uniform", bias_initializer="zeros", depthwise_regularizer=None,
                 pointwise_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = checked_int(filters, "filters", minimum=1)
        self.depth_multiplier = checked_int(depth_multiplier, "depth_multiplier", minimum=1)
        _set_window(self, kernel_size, strides, padding, data_format, dilation_rate)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.pointwise_initializer = initializers.get(pointwise_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)
        self.pointwise_regularizer = regularizers.get(pointwise_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.depthwise_kernel = self.pointwise_kernel = self.bias = None

    def build(self, input_shape):
        channels = _image_channels(self, input_shape)
        self.depthwise_kernel = self.add_weight(
            shape=self.kernel_size + (channels, self.depth_multiplier), initializer=self.depthwise_initializer,
            regularizer=self.depthwise_regularizer, name="depthwise_kernel")
        self.pointwise_kernel = self.add_weight(
            shape=(1, 1, channels * self.depth_multiplier, self.filters), initializer=self.pointwise_initializer,
            regularizer=self.pointwise_regularizer, name="pointwise_kernel")
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer, name="bias")
        self._set_input_spec(4, {-1: channels})

    def compute_output_shape(self, input_shape):
        return self.window.output_shape(input_shape, self.filters)

    def forward(self, inputs, training=False):
        g = self.window.geometry(inputs.shape, self.kernel_size + (inputs.shape[-1], inputs.shape[-1]))
        padded = _padded(inputs, g)
        depthwise = _depthwise_forward(padded, self.depthwise_kernel.value, g)
        flat = depthwise.reshape(-1, depthwise.shape[-1])
        pointwise = self.pointwise_kernel.value.reshape(flat.shape[1], self.filters)
        pre = backend.ops().gemm(flat, pointwise, bias=None if self.bias is None else self.bias.value)
        pre = pre.reshape(depthwise.shape[:3] + (self.filters,))
        out = apply_activation(self.activation, pre)
        return out, (padded, g, flat, pre, out)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        padded, g, flat, pre, out = ctx
        dpre = activation_backward(self.activation, grad, pre, out, from_preactivation).reshape(-1, self.filters)
        gemm = backend.ops().gemm
        pointwise = self.pointwise_kernel.value.reshape(flat.shape[1], self.filters)
        self.pointwise_kernel.add_grad(gemm(flat, dpre, trans_a=True).reshape(self.pointwise_kernel.shape))
        if self.bias is not None:
            self.bias.add_grad(dpre.sum(axis=0))
        ddepthwise = gemm(dpre, pointwise, trans_b=True).reshape(pre.shape[:3] + (flat.shape[1],))
        dkernel, dpadded = _depthwise_backward(padded, self.depthwise_kernel.value, g, ddepthwise, need_input_grad)
        self.depthwise_kernel.add_grad(dkernel)
        return _unpadded(dpadded, g)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, "dilation_rate": list(self.dilation_rate),
                "depth_multiplier": self.depth_multiplier, "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "depthwise_initializer": initializers.serialize(self.depthwise_initializer),
                "pointwise_initializer": initializers.serialize(self.pointwise_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "depthwise_regularizer": regularizers.serialize(self.depthwise_regularizer),
                "pointwise_regularizer": regularizers.serialize(self.pointwise_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}
