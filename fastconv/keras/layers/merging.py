"""Layers that merge several inputs, and Keras' functional shorthands for them (layers.add(...))."""
import numpy as np

from fastconv.keras.layers.base import Layer


def _check_list(layer, input_shape):
    if not isinstance(input_shape, list) or len(input_shape) < 2:
        raise ValueError(f"{type(layer).__name__} {layer.name!r} must be called on a list of at least 2 inputs")


class _ElementwiseMerge(Layer):
    """Merges inputs of one shape element by element."""

    takes_list = True

    def build(self, input_shape):
        _check_list(self, input_shape)
        if any(shape[1:] != input_shape[0][1:] for shape in input_shape):
            raise ValueError(f"{type(self).__name__} {self.name!r} needs inputs of one shape, got {input_shape}")

    def compute_output_shape(self, input_shape):
        return input_shape[0]


class Add(_ElementwiseMerge):
    """Element-wise sum of inputs of the same shape."""

    def forward(self, inputs, training=False):
        total = inputs[0] + inputs[1]
        for x in inputs[2:]:
            total += x
        return total, len(inputs)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return [grad] * ctx


class Subtract(_ElementwiseMerge):
    """inputs[0] - inputs[1], for exactly two inputs of the same shape."""

    def build(self, input_shape):
        super().build(input_shape)
        if len(input_shape) != 2:
            raise ValueError(f"Subtract {self.name!r} must be called on a list of exactly 2 inputs, "
                             f"got {len(input_shape)}")

    def forward(self, inputs, training=False):
        return inputs[0] - inputs[1], None

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return [grad, -grad]


class Multiply(_ElementwiseMerge):
    """Element-wise product of inputs of the same shape."""

    def forward(self, inputs, training=False):
        product = inputs[0] * inputs[1]
        for x in inputs[2:]:
            product *= x
        return product, inputs

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        grads = []
        for i in range(len(ctx)):  # the product of the other inputs (not product / x: x may be 0)
            others = grad.copy()
            for j, x in enumerate(ctx):
                if j != i:
                    others *= x
            grads.append(others)
        return grads


class Average(_ElementwiseMerge):
    """Element-wise mean of inputs of the same shape."""

    def forward(self, inputs, training=False):
        total = inputs[0] + inputs[1]
        for x in inputs[2:]:
            total += x
        return total / len(inputs), len(inputs)

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return [grad / ctx] * ctx


class Maximum(_ElementwiseMerge):
    """Element-wise maximum; its gradient goes to the first input holding it (NaN counts as the maximum)."""

    def _winners(self, stacked):
        return np.argmax(stacked, axis=0)

    def forward(self, inputs, training=False):
        stacked = np.stack(inputs)
        winners = self._winners(stacked)
        return np.take_along_axis(stacked, winners[None], axis=0)[0], (winners, len(inputs))

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        winners, count = ctx
        zero = grad.dtype.type(0)
        return [np.where(winners == i, grad, zero) for i in range(count)]


class Minimum(Maximum):
    """Element-wise minimum; its gradient goes to the first input holding it (NaN counts as the minimum)."""

    def _winners(self, stacked):
        return np.argmin(stacked, axis=0)


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

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        return np.split(grad, np.cumsum(ctx)[:-1], axis=self.axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


def add(inputs, **kwargs):
    """Functional shorthand for Add()(inputs)."""
    return Add(**kwargs)(inputs)


def subtract(inputs, **kwargs):
    """Functional shorthand for Subtract()(inputs)."""
    return Subtract(**kwargs)(inputs)


def multiply(inputs, **kwargs):
    """Functional shorthand for Multiply()(inputs)."""
    return Multiply(**kwargs)(inputs)


def average(inputs, **kwargs):
    """Functional shorthand for Average()(inputs)."""
    return Average(**kwargs)(inputs)


def maximum(inputs, **kwargs):
    """Functional shorthand for Maximum()(inputs)."""
    return Maximum(**kwargs)(inputs)


def minimum(inputs, **kwargs):
    """Functional shorthand for Minimum()(inputs)."""
    return Minimum(**kwargs)(inputs)


def concatenate(inputs, axis=-1, **kwargs):
    """Functional shorthand for Concatenate(axis)(inputs)."""
    return Concatenate(axis=axis, **kwargs)(inputs)
