"""Layer, Variable and the symbolic tensors that record a functional graph.

A layer's `forward(inputs, training)` returns its output and a context holding what `backward`
needs; `backward(ctx, grad)` returns the gradient for the inputs and adds the weight gradients to
each Variable's `.grad`. Keeping the context outside the layer lets one layer be called at several
places of a graph (shared layers).
"""
import contextlib
import contextvars
import re

import numpy as np

from fastconv import _C
from fastconv.keras import backend, initializers, regularizers

_name_counts = {}

# While a saved model is rebuilt, how many weight values its file holds; a config asking for more is
# rejected before anything is allocated (see limit_weights).
_weight_budget = contextvars.ContextVar("weight_budget", default=None)


@contextlib.contextmanager
def limit_weights(total_values):
    """Within this block, layers may create at most `total_values` weight values in all."""
    token = _weight_budget.set([total_values])
    try:
        yield
    finally:
        _weight_budget.reset(token)


def unique_name(base):
    """Keras-style automatic names: dense, dense_1, dense_2, ..."""
    count = _name_counts.get(base, 0)
    _name_counts[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


def _snake_case(class_name):
    """Keras' rule: MaxPooling2D -> max_pooling2d, Conv2D -> conv2d, InputLayer -> input_layer."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


class Variable:
    """A weight array plus its gradient; the optimizer updates `.value` in place."""
    __slots__ = ("name", "value", "grad", "trainable", "regularizer")

    def __init__(self, name, value, trainable=True, regularizer=None):
        self.name = name
        self.value = _C.empty_aligned(value.shape, value.dtype)  # rows on cache lines: see empty_aligned
        self.value[...] = value
        self.grad = None
        self.trainable = trainable
        self.regularizer = regularizer

    @property
    def shape(self):
        return self.value.shape

    def numpy(self):
        return self.value.copy()

    def __array__(self, dtype=None, copy=None):
        return self.value if dtype is None else self.value.astype(dtype)

    def assign(self, value):
        value = np.asarray(value)
        if value.shape != self.value.shape:
            raise ValueError(f"weight {self.name!r} has shape {self.value.shape}, got a value of shape {value.shape}")
        self.value[...] = value

    def add_grad(self, grad):
        """Sum gradients over the several calls of a shared layer within one step."""
        self.grad = grad if self.grad is None else self.grad + grad

    def __repr__(self):
        return f"<Variable {self.name} shape={self.value.shape} dtype={self.value.dtype}>"


class KerasTensor:
    """The symbolic output of a layer call: its shape (batch dimension None) and the node producing it."""

    def __init__(self, shape, node=None, name=None):
        self.shape = tuple(shape)
        self.node = node
        self.name = name

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"<KerasTensor shape={self.shape} name={self.name}>"


class Node:
    """One call of a layer in a graph: which tensors went in and which came out."""

    def __init__(self, layer, inputs, multi_input):
        self.layer = layer
        self.inputs = inputs  # list of KerasTensor
        self.multi_input = multi_input  # the layer was called with a list (merge layers)
        self.output = None


def _is_symbolic(inputs):
    if isinstance(inputs, (list, tuple)):
        return any(isinstance(x, KerasTensor) for x in inputs)
    return isinstance(inputs, KerasTensor)


def _shape_of(inputs):
    if isinstance(inputs, (list, tuple)):
        return [(None,) + tuple(np.shape(x))[1:] for x in inputs]
    return (None,) + tuple(np.shape(inputs))[1:]


def _format_shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


class Layer:
    """Base class: names, weights, lazy build on first call, symbolic calls, input checks."""

    takes_list = False  # True for layers called on a list of inputs (Add, Concatenate)

    def __init__(self, name=None, trainable=True, input_shape=None, input_dim=None, batch_size=None, dtype=None):
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        self.name = name or unique_name(_snake_case(type(self).__name__))
        self.trainable = bool(trainable)
        self.built = False
        self._variables = []
        # Filled in by build(): the rank and the fixed axis sizes the weights were made for.
        self._input_ndim = None
        self._input_axes = {}
        self._batch_input_shape = _batch_input_shape(input_shape, input_dim, batch_size)

    # ----- weights -----
    def add_weight(self, name, shape, initializer, trainable=True, regularizer=None):
        budget = _weight_budget.get()
        if budget is not None:
            size = int(np.prod(shape, dtype=object))
            if size > budget[0]:
                raise ValueError(f"layer {self.name!r} asks for a weight of shape {tuple(shape)}, more values "
                                 "than the file holds")
            budget[0] -= size
        value = initializers.get(initializer)(tuple(shape), dtype=backend.floatx())
        variable = Variable(f"{self.name}/{name}", value, trainable, regularizers.get(regularizer))
        self._variables.append(variable)
        return variable

    @property
    def weights(self):
        return list(self._variables)

    @property
    def trainable_weights(self):
        return [v for v in self._variables if v.trainable] if self.trainable else []

    @property
    def non_trainable_weights(self):
        return [v for v in self._variables if not (v.trainable and self.trainable)]

    def get_weights(self):
        return [v.numpy() for v in self._variables]

    def set_weights(self, weights):
        weights = list(weights)
        if len(weights) != len(self._variables):
            raise ValueError(f"layer {self.name!r} has {len(self._variables)} weights, got {len(weights)} arrays")
        for variable, value in zip(self._variables, weights):
            variable.assign(value)

    def count_params(self):
        return int(sum(v.value.size for v in self._variables))

    # ----- shapes -----
    def build(self, input_shape):
        self.built = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def _set_input_spec(self, ndim, axes=None):
        """Remember what later inputs must match: their rank and the sizes the weights depend on."""
        self._input_ndim = ndim
        self._input_axes = dict(axes or {})

    def _check_input_shape(self, shape):
        if isinstance(shape, list) or self._input_ndim is None:
            return
        if len(shape) != self._input_ndim:
            raise ValueError(
                f"layer {self.name!r} expects {self._input_ndim}-D input (batch included), got shape {_format_shape(shape)}")
        for axis, size in self._input_axes.items():
            if shape[axis] is not None and shape[axis] != size:
                raise ValueError(
                    f"layer {self.name!r} expects input axis {axis} of size {size}, got shape {_format_shape(shape)}")

    def _maybe_build(self, input_shape):
        if not self.built:
            self.build(input_shape)
            self.built = True
        self._check_input_shape(input_shape)

    # ----- computation -----
    def forward(self, inputs, training=False):
        """Return (outputs, ctx); ctx is whatever backward needs."""
        raise NotImplementedError

    def backward(self, ctx, grad):
        """Return dLoss/dInputs and add the weight gradients to each Variable's .grad."""
        raise NotImplementedError

    def call(self, inputs, training=False):
        return self.forward(inputs, training)[0]

    def _check_list_input(self, inputs):
        if isinstance(inputs, (list, tuple)) and not self.takes_list:
            raise ValueError(f"layer {self.name!r} takes one input, got a list of {len(inputs)}")

    def __call__(self, inputs, training=False):
        self._check_list_input(inputs)
        if _is_symbolic(inputs):
            return self._call_symbolic(inputs)
        if isinstance(inputs, (list, tuple)):
            inputs = [np.asarray(x, dtype=backend.floatx()) for x in inputs]
        else:
            inputs = np.asarray(inputs, dtype=backend.floatx())
        self._maybe_build(_shape_of(inputs))
        return self.forward(inputs, training)[0]

    def _call_symbolic(self, inputs):
        multi = isinstance(inputs, (list, tuple))
        tensors = list(inputs) if multi else [inputs]
        for tensor in tensors:
            if not isinstance(tensor, KerasTensor):
                raise TypeError(f"layer {self.name!r} was called on a mix of symbolic and concrete inputs")
        input_shape = [t.shape for t in tensors] if multi else tensors[0].shape
        self._maybe_build(input_shape)
        node = Node(self, tensors, multi)
        node.output = KerasTensor(self.compute_output_shape(input_shape), node, name=self.name)
        return node.output

    # ----- serialisation -----
    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        if self._batch_input_shape is not None:
            config["batch_input_shape"] = list(self._batch_input_shape)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        batch_input_shape = config.pop("batch_input_shape", None)
        layer = cls(**config)
        if batch_input_shape is not None:
            layer._batch_input_shape = _batch_input_shape(batch_input_shape[1:], None, batch_input_shape[0])
        return layer

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}>"


def _batch_input_shape(input_shape, input_dim, batch_size):
    """(batch, *input_shape) from Keras' input_shape= or input_dim= arguments, or None if neither."""
    if input_shape is None and input_dim is None:
        return None
    if input_shape is not None and input_dim is not None:
        raise ValueError("pass either input_shape or input_dim, not both")
    shape = (input_dim,) if input_dim is not None else input_shape
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}")
    for dim in shape:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0):
            raise ValueError(f"input_shape must hold positive ints (or None), got {tuple(shape)!r}")
    return (batch_size,) + tuple(None if d is None else int(d) for d in shape)


class InputLayer(Layer):
    """The entry point of a graph; `keras.Input(shape)` makes one and returns its output tensor."""

    def __init__(self, shape=None, batch_size=None, name=None, input_shape=None, dtype=None, **kwargs):
        if shape is None:
            shape = input_shape
        if shape is None:
            raise ValueError("InputLayer needs shape= (the shape of one sample, without the batch axis)")
        super().__init__(name=name, input_shape=shape, batch_size=batch_size, **kwargs)
        self.built = True
        node = Node(self, [], False)
        node.output = KerasTensor(self._batch_input_shape, node, name=self.name)
        self.output = node.output

    def forward(self, inputs, training=False):
        return inputs, None

    def backward(self, ctx, grad):
        return grad

    def get_config(self):
        return {"name": self.name, "shape": list(self._batch_input_shape[1:]),
                "batch_size": self._batch_input_shape[0]}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def Input(shape=None, batch_size=None, name=None, dtype=None):
    """A symbolic input of `shape` (one sample, no batch axis) to start a functional model."""
    return InputLayer(shape=shape, batch_size=batch_size, name=name).output
