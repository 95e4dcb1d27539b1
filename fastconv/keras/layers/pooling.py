"""Max, average, global average and global max pooling over NHWC inputs."""
import numpy as np

from fastconv.keras import backend
from fastconv.keras.layers.base import Layer
from fastconv.shapes import output_length, padding_mode, pair


class _Pooling2D(Layer):
    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"data_format must be 'channels_last', got {data_format!r}")
        self.pool_size = pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else pair(strides, "strides")
        self.padding = padding_mode(padding)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{type(self).__name__} {self.name!r} needs 4-D inputs, got shape {input_shape}")
        self._set_input_spec(4)

    def compute_output_shape(self, input_shape):
        rows, cols = (output_length(input_shape[axis], self.pool_size[i], self.padding, self.strides[i])
                      for i, axis in enumerate((1, 2)))
        return (input_shape[0], rows, cols, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding}


class MaxPooling2D(_Pooling2D):
    fuses_input_relu = True  # backward(x_from_relu=True) also applies the gradient of a ReLU before it

    @property
    def is_2x2_max_pooling(self):
        return (type(self).forward is MaxPooling2D.forward and self.pool_size == (2, 2) and self.strides == (2, 2)
                and self.padding == "valid")

    def forward(self, inputs, training=False):
        ops = backend.ops()
        if not training or self.pool_size[0] * self.pool_size[1] >= ops.ARGMAX_NONE:
            return ops.maxpool2d(inputs, self.pool_size, self.strides, self.padding), (inputs, None)
        # Training: keep where each maximum came from, so backward need not search the windows again.
        out, argmax = ops.maxpool2d(inputs, self.pool_size, self.strides, self.padding, return_argmax=True)
        return out, (inputs, argmax)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        inputs, argmax = ctx
        return backend.ops().maxpool2d_backward(grad, inputs, self.pool_size, self.strides, self.padding,
                                                x_from_relu=x_from_relu, argmax=argmax)


class AveragePooling2D(_Pooling2D):
    def forward(self, inputs, training=False):
        return backend.ops().avgpool2d(inputs, self.pool_size, self.strides, self.padding), inputs

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return backend.ops().avgpool2d_backward(grad, ctx, self.pool_size, self.strides, self.padding)


class _GlobalPooling2D(Layer):
    """Pools over height and width: (batch, h, w, c) -> (batch, c), or (batch, 1, 1, c) with keepdims."""

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"data_format must be 'channels_last', got {data_format!r}")
        self.keepdims = bool(keepdims)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{type(self).__name__} {self.name!r} needs 4-D inputs, got shape {input_shape}")
        self._set_input_spec(4)

    def compute_output_shape(self, input_shape):
        if self.keepdims:
            return (input_shape[0], 1, 1, input_shape[3])
        return (input_shape[0], input_shape[3])

    def _shaped(self, out):
        return out.reshape(out.shape[0], 1, 1, out.shape[1]) if self.keepdims else out

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPooling2D):
    def forward(self, inputs, training=False):
        return self._shaped(backend.ops().global_avgpool2d(inputs)), inputs

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return backend.ops().global_avgpool2d_backward(grad.reshape(grad.shape[0], -1), ctx)


class GlobalMaxPooling2D(_GlobalPooling2D):
    """The maximum over height and width; its gradient goes to the first pixel holding it (NaN wins)."""

    def forward(self, inputs, training=False):
        pixels = inputs.reshape(inputs.shape[0], -1, inputs.shape[3])
        winners = np.argmax(pixels, axis=1)[:, None, :]
        return self._shaped(np.take_along_axis(pixels, winners, axis=1)[:, 0, :]), (inputs.shape, winners)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        shape, winners = ctx
        dx = np.zeros((shape[0], shape[1] * shape[2], shape[3]), dtype=grad.dtype)
        np.put_along_axis(dx, winners, grad.reshape(shape[0], 1, shape[3]), axis=1)
        return dx.reshape(shape)


MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
