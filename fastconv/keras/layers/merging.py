"""Layers that merge several inputs: Add and Concatenate."""
import numpy as np

from fastconv.keras.layers.base import Layer


def _check_list(layer, input_shape):
    if not isinstance(input_shape, list) or len(input_shape) < 2:
        raise ValueError(f"{type(layer).__name__} {layer.name!r} must be called on a list of at least 2 inputs")


class Add(Layer):
    """Element-wise sum of inputs of the same shape."""

    takes_list = True

    def build(self, input_shape):
        _check_list(self, input_shape)
        if any(shape[1:] != input_shape[0][1:] for shape in input_shape):
            raise ValueError(f"Add {self.name!r} needs inputs of one shape, got {input_shape}")

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def forward(self, inputs, training=False):
        total = inputs[0] + inputs[1]
        for x in inputs[2:]:
            total += x
        return total, len(inputs)

    def backward(self, ctx, grad):
        return [grad] * ctx


class Concatenate(Layer):
    """Joins inputs along `axis` (default: channels)."""

    takes_list = True

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
            raise ValueError(f"axis must be a non-zero int (the batch axis cannot be joined), got {axis!r}")
        self.axis = axis

    def build(self, input_shape):
        _check_list(self, input_shape)
        ndim = len(input_shape[0])
        if any(len(shape) != ndim for shape in input_shape) or not -ndim < self.axis < ndim:
            raise ValueError(f"Concatenate {self.name!r}: axis {self.axis} does not fit input shapes {input_shape}")
        axis = self.axis % ndim
        for shape in input_shape:
            if any(a != b for i, (a, b) in enumerate(zip(shape, input_shape[0])) if i not in (0, axis)):
                raise ValueError(f"Concatenate {self.name!r} needs inputs that match except on axis {self.axis}, "
                                 f"got {input_shape}")

    def compute_output_shape(self, input_shape):
        axis = self.axis % len(input_shape[0])
        sizes = [shape[axis] for shape in input_shape]
        joined = None if None in sizes else sum(sizes)
        return tuple(input_shape[0][:axis]) + (joined,) + tuple(input_shape[0][axis + 1:])

    def forward(self, inputs, training=False):
        return np.concatenate(inputs, axis=self.axis), [x.shape[self.axis] for x in inputs]

    def backward(self, ctx, grad):
        return np.split(grad, np.cumsum(ctx)[:-1], axis=self.axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
