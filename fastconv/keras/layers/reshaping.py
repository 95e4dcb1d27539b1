"""Layers that resize NHWC images without weights: ZeroPadding2D, Cropping2D, UpSampling2D."""
import numpy as np

from fastconv.keras.layers.base import Layer
from fastconv.shapes import checked_int, pair


def _margins(value, name):
    """Keras' forms of a 2-D margin: an int, (rows, cols), or ((top, bottom), (left, right)); ints >= 0."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (tuple, list)) for v in value):
        pairs = value
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pairs = ((value[0], value[0]), (value[1], value[1]))
    else:
        pairs = ((value, value), (value, value))
    if any(not isinstance(side, (tuple, list)) or len(side) != 2 for side in pairs):
        raise ValueError(f"{name} must be an int, (rows, cols) or ((top, bottom), (left, right)), got {value!r}")
    margins = [checked_int(item, name, minimum=0) for side in pairs for item in side]
    return (margins[0], margins[1]), (margins[2], margins[3])


class _ImageLayer(Layer):
    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"data_format must be 'channels_last', got {data_format!r}")

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{type(self).__name__} {self.name!r} needs 4-D inputs, got shape {input_shape}")
        self._set_input_spec(4)


class ZeroPadding2D(_ImageLayer):
    """Adds rows and columns of zeros around each image."""

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(data_format, **kwargs)
        self.padding = _margins(padding, "padding")

    def compute_output_shape(self, input_shape):
        (top, bottom), (left, right) = self.padding
        rows, cols = input_shape[1], input_shape[2]
        return (input_shape[0], None if rows is None else rows + top + bottom,
                None if cols is None else cols + left + right, input_shape[3])

    def forward(self, inputs, training=False):
        return np.pad(inputs, ((0, 0),) + self.padding + ((0, 0),)), inputs.shape

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        (top, _), (left, _) = self.padding
        return grad[:, top:top + ctx[1], left:left + ctx[2], :]

    def get_config(self):
        return {**super().get_config(), "padding": [list(side) for side in self.padding]}


class Cropping2D(_ImageLayer):
    """Removes rows and columns from the edges of each image."""

    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        super().__init__(data_format, **kwargs)
        self.cropping = _margins(cropping, "cropping")

    def build(self, input_shape):
        super().build(input_shape)
        for axis, (low, high) in zip((1, 2), self.cropping):
            if input_shape[axis] is not None and low + high >= input_shape[axis]:
                raise ValueError(f"Cropping2D {self.name!r}: cropping {self.cropping} leaves nothing of input shape "
                                 f"{input_shape}")

    def compute_output_shape(self, input_shape):
        (top, bottom), (left, right) = self.cropping
        rows, cols = input_shape[1], input_shape[2]
        return (input_shape[0], None if rows is None else rows - top - bottom,
                None if cols is None else cols - left - right, input_shape[3])

    def forward(self, inputs, training=False):
        (top, bottom), (left, right) = self.cropping
        rows, cols = inputs.shape[1], inputs.shape[2]
        return inputs[:, top:rows - bottom, left:cols - right, :], inputs.shape

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        (top, _), (left, _) = self.cropping
        dx = np.zeros(ctx, dtype=grad.dtype)
        dx[:, top:top + grad.shape[1], left:left + grad.shape[2], :] = grad
        return dx

    def get_config(self):
        return {**super().get_config(), "cropping": [list(side) for side in self.cropping]}


class UpSampling2D(_ImageLayer):
    """Repeats each pixel size[0] times down and size[1] times across (nearest neighbour)."""

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(data_format, **kwargs)
        if interpolation != "nearest":
            raise ValueError(f"interpolation must be 'nearest' (the only one fastconv has), got {interpolation!r}")
        self.size = pair(size, "size")

    def compute_output_shape(self, input_shape):
        rows, cols = input_shape[1], input_shape[2]
        return (input_shape[0], None if rows is None else rows * self.size[0],
                None if cols is None else cols * self.size[1], input_shape[3])

    def forward(self, inputs, training=False):
        return inputs.repeat(self.size[0], axis=1).repeat(self.size[1], axis=2), None

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        n, rows, cols, c = grad.shape
        blocks = grad.reshape(n, rows // self.size[0], self.size[0], cols // self.size[1], self.size[1], c)
        return blocks.sum(axis=(2, 4))

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "interpolation": "nearest"}


class Permute(Layer):
    """Permutes the axes after the batch axis: dims is a permutation of 1..rank-1, as keras.layers.Permute."""

    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(dims, (tuple, list)) or not dims or not all(
                isinstance(d, int) and not isinstance(d, bool) for d in dims) or \
                sorted(dims) != list(range(1, len(dims) + 1)):
            raise ValueError(f"dims must be a permutation of 1..{len(dims) if isinstance(dims, (tuple, list)) else 'n'}"
                             f" (the batch axis 0 stays first), got {dims!r}")
        self.dims = tuple(dims)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != len(self.dims) + 1:
            raise ValueError(f"Permute{self.dims} needs inputs of rank {len(self.dims) + 1}, got shape {input_shape}")
        return (input_shape[0],) + tuple(input_shape[d] for d in self.dims)

    def forward(self, inputs, training=False):
        self.compute_output_shape(inputs.shape)
        return np.ascontiguousarray(inputs.transpose((0,) + self.dims)), None

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return np.ascontiguousarray(grad.transpose(np.argsort((0,) + self.dims)))

    def get_config(self):
        return {**super().get_config(), "dims": list(self.dims)}
