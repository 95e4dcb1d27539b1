"""Layer, the protocol every layer follows, and the symbolic tensors that record a functional graph.

The layer protocol
------------------
A layer computes in one of two ways:

* **Built-in layers** implement `forward(inputs, training) -> (outputs, ctx)` and
  `backward(ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False) -> input
  gradient`; backward adds the weight gradients to each Variable's `.grad`. Keeping `ctx` outside
  the layer lets one layer be called at several places of a graph (shared layers). A model asks a
  layer for a fusion only where the layer declares it with a class attribute, never by probing:
  `fuses_output_activation` (from_preactivation=True: the gradient arrives at the input of the
  layer's final `activation`, and `preactivation(ctx)` returns that input, so a loss can fuse with
  it), `fuses_input_relu` (x_from_relu=True: the layer also applies the gradient of the ReLU that
  produced its input), `fuses_max_pooling` (`forward_max_pooled(inputs)`: the layer's forward and
  the 2x2 max pooling consuming its output (`is_2x2_max_pooling`) as one op, or None where its
  backend does not fuse them; `backward` then takes that context and the gradient at the pooled
  output). need_input_grad=False (only the weight gradients are wanted) is asked of layers with
  trainable weights only.
* **Custom layers** (Keras' way) implement `call(inputs, training=None, ...)` with `keras.ops`.
  Their `forward` runs `call` under a GradientTape and their `backward` replays that tape, so they
  train inside Sequential, functional and subclassed models like any built-in layer.

Called directly (`layer(x)`), a layer returns its output; under an active GradientTape a built-in
layer is recorded as one node whose vector-Jacobian product is its own fused `backward`.
"""
import contextlib
import contextvars
import functools
import inspect
import json
import re

import numpy as np

from fastconv.keras import autodiff, backend, dtype_policies, initializers, regularizers
from fastconv.keras.variables import Variable

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


# The `training` flag of the outermost call in progress: a layer called inside another layer's or a
# model's `call` without training= inherits it, as in Keras.
_call_training = contextvars.ContextVar("fastconv_call_training", default=False)
# Whether a layer call is already in progress: the outermost call starts with no added losses.
_in_call = contextvars.ContextVar("fastconv_in_call", default=False)


def _as_float_inputs(inputs):
    """Concrete inputs as floatx arrays; Tensors and Variables pass through (a tape follows them)."""
    def convert(x):
        if isinstance(x, autodiff.Tensor) or autodiff._is_variable(x):
            return x
        return np.asarray(x, dtype=backend.floatx())
    if isinstance(inputs, (list, tuple)):
        return [convert(x) for x in inputs]
    return convert(inputs)


def _values(inputs):
    if isinstance(inputs, (list, tuple)):
        return [autodiff.unwrap(x) for x in inputs]
    return autodiff.unwrap(inputs)


class Layer:
    """Base class of every layer: names, weights and sublayers, lazy build on first call, symbolic
    calls for functional models, and the forward/backward protocol described in the module docstring."""

    takes_list = False  # True for layers called on a list of inputs (Add, Concatenate)
    fuses_output_activation = False  # see the module docstring
    fuses_input_relu = False
    fuses_max_pooling = False
    is_2x2_max_pooling = False  # MaxPooling2D with 2x2 windows, stride 2 and valid padding
    activation = None  # the final activation of layers that fuse it (Dense, Conv2D, Activation, ReLU)

    def __new__(cls, *args, **kwargs):
        layer = super().__new__(cls)
        # Keras' automatic config: a custom layer's constructor arguments, when they are plain data,
        # so that get_config/from_config round-trip without the user writing get_config.
        object.__setattr__(layer, "_auto_config", _constructor_arguments(cls, args, kwargs)
                           if cls.forward is Layer.forward else None)
        return layer

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A class that writes `call` (Keras' way) computes through it, also when it subclasses a
        # built-in layer: forward/backward become the tape-based ones, and no fusion is assumed.
        if "call" in cls.__dict__ and "forward" not in cls.__dict__:
            cls.forward = Layer.forward
            cls.backward = Layer.backward
            cls.fuses_output_activation = False
            cls.fuses_input_relu = False
            cls.fuses_max_pooling = False
        # As in Keras, calling build() yourself (a custom layer building its sublayers) marks it built,
        # so the first call does not build it again.
        if "build" in cls.__dict__ and not getattr(cls.__dict__["build"], "_marks_built", False):
            cls.build = _marking_built(cls.__dict__["build"])

    def __init__(self, name=None, trainable=True, input_shape=None, input_dim=None, batch_size=None, dtype=None,
                 autocast=True, activity_regularizer=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        policy = _layer_policy(dtype)
        if activity_regularizer is not None:
            raise ValueError("activity_regularizer is not supported; add the penalty with self.add_loss in call()")
        object.__setattr__(self, "_tracked_layers", [])
        object.__setattr__(self, "_variables", [])
        object.__setattr__(self, "_losses", [])
        object.__setattr__(self, "_dtype_policy", policy)
        self.name = name or unique_name(_snake_case(type(self).__name__))
        self.trainable = bool(trainable)
        self.built = False
        # Filled in by build(): the rank and the fixed axis sizes the weights were made for.
        self._input_ndim = None
        self._input_axes = {}
        self._batch_input_shape = _batch_input_shape(input_shape, input_dim, batch_size)

    def __setattr__(self, name, value):
        # Sublayers and Variables assigned as attributes are tracked, as in Keras: their weights
        # become this layer's weights.
        if "_tracked_layers" not in self.__dict__ and (isinstance(value, (Layer, Variable)) or _holds_layers(value)):
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() before assigning "
                               f"layers or variables (attribute {name!r})")
        if isinstance(value, Layer) and value is not self:
            if not any(value is layer for layer in self._tracked_layers):
                self._tracked_layers.append(value)
        elif _holds_layers(value):
            for item in _flat_items(value):
                if isinstance(item, Layer) and item is not self and \
                        not any(item is layer for layer in self._tracked_layers):
                    self._tracked_layers.append(item)
        elif isinstance(value, Variable) and not any(value is v for v in self._variables):
            self._variables.append(value)
        object.__setattr__(self, name, value)

    # ----- dtype policy (keras.mixed_precision) -----
    @property
    def dtype_policy(self):
        """The layer's DTypePolicy: the global policy when it was made, or its dtype= argument."""
        return self._dtype_policy

    @dtype_policy.setter
    def dtype_policy(self, value):
        object.__setattr__(self, "_dtype_policy", _layer_policy(value))

    @property
    def compute_dtype(self):
        """The dtype the layer's GEMMs compute in: "float32", or "bfloat16" under mixed_bfloat16."""
        return self._dtype_policy.compute_dtype

    @property
    def variable_dtype(self):
        """The dtype of the layer's weights (float32 under the mixed policies)."""
        return self._dtype_policy.variable_dtype

    @property
    def dtype(self):
        """The variable dtype, as in Keras 3."""
        return self._dtype_policy.variable_dtype

    def _compute_scope(self):
        """The scope in which the layer's ops compute in its compute dtype (fastconv.precision)."""
        compute = self._dtype_policy.compute_dtype
        return _NO_SCOPE if compute == self._dtype_policy.variable_dtype else _precision_scope(compute)

    # ----- weights -----
    def add_weight(self, shape=None, initializer=None, dtype=None, trainable=True, autocast=True, regularizer=None,
                   constraint=None, aggregation="none", overwrite_with_gradient=False, name=None):
        """A new Variable owned by this layer (Keras 3's signature: shape first; initializer default
        glorot_uniform). The Keras 2 order `add_weight(name, shape, initializer)` is accepted too."""
        if isinstance(shape, str):  # Keras 2: add_weight("kernel", shape, initializer, ...)
            name, shape, initializer, dtype = shape, initializer, dtype, None
        if constraint is not None:
            raise ValueError(f"layer {self.name!r}: weight constraints are not supported")
        shape = () if shape is None else tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"layer {self.name!r}: weight shape must be non-negative ints, got {shape}")
        budget = _weight_budget.get()
        if budget is not None:
            size = int(np.prod(shape, dtype=object))
            if size > budget[0]:
                raise ValueError(f"layer {self.name!r} asks for a weight of shape {tuple(shape)}, more values "
                                 "than the file holds")
            budget[0] -= size
        name = name or "variable"
        dtype = dtype or backend.floatx()
        value = initializers.get("glorot_uniform" if initializer is None else initializer)(shape, dtype=dtype)
        variable = Variable(value, dtype=dtype, trainable=trainable, name=name, path=f"{self.name}/{name}",
                            regularizer=regularizers.get(regularizer))
        self._variables.append(variable)
        return variable

    def _all_variables(self):
        """Own variables, then each sublayer's, each once."""
        return unique_variables(self._variables + [v for layer in self._tracked_layers for v in layer.weights])

    @property
    def weights(self):
        return self._all_variables()

    variables = weights

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        if not self._tracked_layers:  # a plain layer (read every step): its own variables hold no repeat
            return [v for v in self._variables if v.trainable]
        return unique_variables([v for v in self._variables if v.trainable] +
                                [v for layer in self._tracked_layers for v in layer.trainable_weights])

    trainable_variables = trainable_weights

    @property
    def non_trainable_weights(self):
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    non_trainable_variables = non_trainable_weights

    def get_weights(self):
        return [v.numpy() for v in self.weights]

    def set_weights(self, weights):
        weights, variables = list(weights), self.weights
        if len(weights) != len(variables):
            raise ValueError(f"layer {self.name!r} has {len(variables)} weights, got {len(weights)} arrays")
        for variable, value in zip(variables, weights):
            variable.assign(value)

    def count_params(self):
        return int(sum(v.value.size for v in self.weights))

    # ----- losses added in call (Keras' add_loss) -----
    def add_loss(self, loss):
        """Add a scalar to the training loss of the current step (from inside call)."""
        self._losses.append(loss)

    @property
    def losses(self):
        """This layer's and its sublayers' added losses plus their weight regularization penalties."""
        out = list(self._losses)
        for layer in self._tracked_layers:
            out.extend(layer.losses)
        for variable in self._variables:
            if variable.regularizer is not None and variable.trainable:
                out.append(variable.regularizer(variable.value))
        return out

    def losses_added(self):
        """The losses this layer and its sublayers added with add_loss during their last call."""
        out = list(self._losses)
        for layer in self._tracked_layers:
            out.extend(layer.losses_added())
        return out

    def _clear_losses(self):
        self._losses.clear()
        for layer in self._tracked_layers:
            layer._clear_losses()

    # ----- shapes -----
    def build(self, input_shape):
        self.built = True

    def compute_output_shape(self, input_shape):
        if self._computes_with_call():
            return self._infer_output_shape(input_shape)
        return input_shape

    def _infer_output_shape(self, input_shape):
        """A custom layer's output shape, found by running call on a batch of two zero samples."""
        def zeros(shape):
            if any(d is None for d in shape[1:]):
                raise ValueError(f"layer {self.name!r}: cannot infer the output shape for input shape "
                                 f"{_format_shape(shape)} with unknown sizes; define compute_output_shape")
            return np.zeros((2,) + tuple(shape[1:]), dtype=backend.floatx())
        sample = [zeros(s) for s in input_shape] if isinstance(input_shape, list) else zeros(input_shape)
        with autodiff.stop_recording():
            output = self.call(sample, **self._call_kwargs(False))
        self._clear_losses()  # what the trial call added is not part of any step
        shapes = [(None,) + np.shape(autodiff.unwrap(o))[1:] for o in output] \
            if isinstance(output, (list, tuple)) else (None,) + np.shape(autodiff.unwrap(output))[1:]
        return shapes

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
            if type(self).call is Layer.call and type(self).forward is Layer.forward:
                raise NotImplementedError(f"layer {self.name!r} ({type(self).__name__}) defines neither call() "
                                          "nor forward()/backward(): write call(self, inputs) with keras.ops")
            self.build(input_shape)
            self.built = True
        self._check_input_shape(input_shape)

    # ----- computation -----
    @classmethod
    def _computes_with_call(cls):
        return cls.forward is Layer.forward

    def _call_kwargs(self, training):
        """The keyword arguments this layer's call accepts: training= only where call declares it."""
        accepts = self.__dict__.get("_call_accepts_training")
        if accepts is None:
            import inspect
            params = inspect.signature(self.call).parameters
            accepts = "training" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
            object.__setattr__(self, "_call_accepts_training", accepts)
        return {"training": training} if accepts else {}

    def call(self, inputs, training=None, mask=None):
        """The layer's computation. Custom layers override this with keras.ops; for a built-in layer
        (and `super().call(x)` from a subclass of one) it runs the built-in forward pass."""
        return _fused_call(self, _builtin_class(type(self)), inputs, bool(training))

    def forward(self, inputs, training=False):
        """(outputs, ctx) for the model's backward pass: a custom layer's call, run under a tape when
        gradients will be asked for (training)."""
        kwargs = self._call_kwargs(training)
        self._clear_losses()
        token, call_token = _call_training.set(bool(training)), _in_call.set(True)
        try:
            if not training:
                outputs = self.call(inputs, **kwargs)
                return _values(outputs), _CallContext(None, None, None, False, self.losses_added())
            with autodiff.GradientTape() as tape:
                # Tensors, not bare arrays: NumPy operators on the inputs (x * 2, x[:, :3]) are then
                # recorded too, so the gradient reaches the layers before this one.
                sources = [autodiff.Tensor(x) for x in inputs] if isinstance(inputs, (list, tuple)) \
                    else [autodiff.Tensor(inputs)]
                tape.watch(sources)
                outputs = self.call(sources if isinstance(inputs, (list, tuple)) else sources[0], **kwargs)
        finally:
            _call_training.reset(token)
            _in_call.reset(call_token)
        return _values(outputs), _CallContext(tape, sources, outputs, isinstance(inputs, (list, tuple)),
                                              self.losses_added())

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
        """Replay the tape of forward: weight gradients into each Variable's .grad, input gradients out.
        Losses added with add_loss during the call are part of the training loss: their gradients too."""
        variables = self.trainable_weights
        targets = [ctx.outputs] + list(ctx.added_losses)
        seeds = [grad] + [np.ones_like(np.asarray(autodiff.unwrap(loss))) for loss in ctx.added_losses]
        grads = ctx.tape.gradient(targets, ctx.sources + variables, output_gradients=seeds,
                                  unconnected_gradients="zero")
        for variable, g in zip(variables, grads[len(ctx.sources):]):
            variable.add_grad(g)
        input_grads = grads[:len(ctx.sources)]
        return input_grads if ctx.multi else input_grads[0]

    @staticmethod
    def added_loss(ctx):
        """The sum of the losses a call-based layer added during the forward pass that made ctx."""
        if not isinstance(ctx, _CallContext):
            return 0.0
        return float(sum(float(np.sum(autodiff.unwrap(loss))) for loss in ctx.added_losses))

    def _check_list_input(self, inputs):
        if isinstance(inputs, (list, tuple)) and not self.takes_list and not self._computes_with_call():
            raise ValueError(f"layer {self.name!r} takes one input, got a list of {len(inputs)}")

    def __call__(self, inputs, *args, training=None, **kwargs):
        self._check_list_input(inputs)
        if _is_symbolic(inputs):
            if args or kwargs:
                raise TypeError(f"layer {self.name!r}: extra call arguments are not supported in a functional graph")
            return self._call_symbolic(inputs)
        inputs = _as_float_inputs(inputs)
        self._maybe_build(_shape_of(_values(inputs)))
        training = _call_training.get() if training is None else bool(training)
        if not _in_call.get():
            self._clear_losses()
        token, call_token = _call_training.set(training), _in_call.set(True)
        try:
            if self._computes_with_call():
                return self.call(inputs, *args, **self._call_kwargs(training), **kwargs)
            if args or kwargs:
                raise TypeError(f"layer {self.name!r} takes no call arguments besides inputs and training, "
                                f"got {', '.join(kwargs) or len(args)}")
            return _fused_call(self, type(self), inputs, training)
        finally:
            _call_training.reset(token)
            _in_call.reset(call_token)

    def _call_symbolic(self, inputs):
        multi = isinstance(inputs, (list, tuple))
        tensors = list(inputs) if multi else [inputs]
        for tensor in tensors:
            if not isinstance(tensor, KerasTensor):
                raise TypeError(f"layer {self.name!r} was called on a mix of symbolic and concrete inputs")
        input_shape = [t.shape for t in tensors] if multi else tensors[0].shape
        self._maybe_build(input_shape)
        output_shape = self.compute_output_shape(input_shape)
        if isinstance(output_shape, list):
            raise ValueError(f"layer {self.name!r} returns several outputs; fastconv's functional models take "
                             "layers with one output")
        node = Node(self, tensors, multi)
        node.output = KerasTensor(output_shape, node, name=self.name)
        return node.output

    # ----- serialisation -----
    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable,
                  "dtype": dtype_policies.serialize(self._dtype_policy)}
        if self._batch_input_shape is not None:
            config["batch_input_shape"] = list(self._batch_input_shape)
        auto_config = self.__dict__.get("_auto_config")
        if auto_config:
            config = {**auto_config, **config}
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        batch_input_shape = config.pop("batch_input_shape", None)
        try:
            layer = cls(**config)
        except TypeError:
            # A custom class whose __init__ does not pass name/trainable/dtype on: set them afterwards.
            base = {key: config.pop(key) for key in ("name", "trainable", "dtype") if key in config}
            layer = cls(**config)
            for key, value in base.items():
                setattr(layer, "dtype_policy" if key == "dtype" else key, value)
        if batch_input_shape is not None:
            layer._batch_input_shape = _batch_input_shape(batch_input_shape[1:], None, batch_input_shape[0])
        return layer

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}>"


def _marking_built(build):
    @functools.wraps(build)
    def build_and_mark(self, *args, **kwargs):
        result = build(self, *args, **kwargs)
        self.built = True
        return result
    build_and_mark._marks_built = True
    return build_and_mark


def unique_variables(variables):
    """Each variable once, in order (a layer shared by two sublayers or nested models appears twice)."""
    if len(set(map(id, variables))) == len(variables):  # nearly always: no repeat (one C-level pass)
        return list(variables)
    seen, out = set(), []
    for variable in variables:
        if id(variable) not in seen:
            seen.add(id(variable))
            out.append(variable)
    return out


def _layer_policy(dtype):
    """The DTypePolicy of a layer's dtype= argument (None: the global policy), if fastconv runs it:
    weights in floatx, computing in floatx, bfloat16 or float16 (which computes in float32)."""
    try:
        policy = dtype_policies.get(dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"dtype: {error}") from None
    floatx = backend.floatx()
    if policy.variable_dtype != floatx or policy.compute_dtype not in (floatx, "bfloat16", "float16"):
        raise ValueError(f"dtype: fastconv keeps layer weights in {floatx} and computes in {floatx} or bfloat16; "
                         f"policy {policy.name!r} asks for {policy.variable_dtype} weights and "
                         f"{policy.compute_dtype} compute (use 'mixed_bfloat16' or {floatx!r})")
    return policy


class _NoScope:
    """A reusable do-nothing context (layers computing in their variable dtype, every step)."""
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NO_SCOPE = _NoScope()


def _precision_scope(dtype):
    from fastconv import precision
    return precision.compute_precision(dtype)


def _constructor_arguments(cls, args, kwargs):
    """The keyword form of a constructor call when every value is JSON data, else None."""
    try:
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    except TypeError:
        return None
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(arguments)))  # self
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if parameter.kind is parameter.VAR_KEYWORD and name in arguments:
            arguments.update(arguments.pop(name))
        elif parameter.kind is parameter.VAR_POSITIONAL and name in arguments:
            if arguments.pop(name):
                return None
    try:
        json.dumps(arguments)
    except (TypeError, ValueError):
        return None
    return arguments


class _CallContext:
    """What a call-based layer's forward keeps for its backward: the tape, the watched inputs, the
    outputs, whether the inputs were a list, and the losses added with add_loss."""
    __slots__ = ("tape", "sources", "outputs", "multi", "added_losses")

    def __init__(self, tape, sources, outputs, multi, added_losses):
        self.tape, self.sources, self.outputs, self.multi = tape, sources, outputs, multi
        self.added_losses = added_losses


def _holds_layers(value):
    return isinstance(value, (list, tuple, dict)) and any(isinstance(item, Layer) for item in _flat_items(value))


def _flat_items(value):
    if isinstance(value, dict):
        value = list(value.values())
    for item in value:
        if isinstance(item, (list, tuple, dict)):
            yield from _flat_items(item)
        else:
            yield item


def _builtin_class(cls):
    """The nearest class in cls's MRO whose forward is a built-in one (not the call-based default)."""
    for klass in cls.__mro__:
        if "forward" in klass.__dict__ and klass.__dict__["forward"] is not Layer.__dict__["forward"]:
            return klass
    raise NotImplementedError(f"{cls.__name__} defines neither call() nor forward()/backward()")


def _fused_call(layer, klass, inputs, training):
    """Run the built-in forward of `klass` on layer; under a tape, record it as one node whose vjp is
    the built-in backward (weight gradients read back from each Variable's .grad)."""
    values = _values(inputs)
    if not autodiff.recording():
        return klass.forward(layer, values, training)[0]
    output, ctx = klass.forward(layer, values, training)
    variables = layer.trainable_weights
    sources = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    # As in a model's first layer: when no tape follows the inputs, only weight gradients are needed.
    fusions = {} if not variables or any(autodiff.tracked(x) for x in sources) else {"need_input_grad": False}

    def vjp(grad):
        saved = [v.grad for v in variables]
        for variable in variables:
            variable.grad = None
        try:
            input_grads = klass.backward(layer, ctx, np.ascontiguousarray(grad, dtype=np.asarray(output).dtype),
                                         **fusions)
            weight_grads = [v.grad for v in variables]
        finally:
            for variable, previous in zip(variables, saved):
                variable.grad = previous
        if input_grads is None:
            input_grads = [None] * len(sources)
        elif not isinstance(inputs, (list, tuple)):
            input_grads = [input_grads]
        return list(input_grads) + weight_grads
    return autodiff.record(output, sources + variables, vjp)


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

    def backward(self, ctx, grad, need_input_grad=True, from_preactivation=False, x_from_relu=False):
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
