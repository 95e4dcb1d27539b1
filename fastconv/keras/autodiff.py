"""Reverse-mode automatic differentiation for `keras.ops`: a tape, the tensors it records, and
`GradientTape` / `value_and_grad`.

While a tape is active, every op whose inputs the tape tracks (a trainable Variable, a watched
array, or a Tensor the tape produced) returns a `Tensor` and appends one node to the tape: the
inputs and a vector-Jacobian product (vjp) written by hand for that op. `gradient` walks the nodes
backwards. Outside a tape, ops return plain NumPy arrays, as Keras' NumPy backend does.

A built-in layer called under a tape is one node whose vjp is the layer's own fused backward pass
(see Layer.__call__), so training a built-in model through a tape costs what `fit` costs.
"""
import contextlib
import contextvars
import inspect

import numpy as np

# The tapes recording right now, innermost last; per thread and per asyncio task.
_active_tapes = contextvars.ContextVar("fastconv_active_tapes", default=())


class ArrayValue:
    """What Tensor and Variable share: they behave like the NumPy array in their `.value`
    (`np.asarray(t)`, `.numpy()`, `.shape`, scalars, formatting), and NumPy functions and ufuncs on
    them go through keras.ops, so they are recorded on a tape."""
    __slots__ = ()
    __array_priority__ = 1000

    def __array__(self, dtype=None, copy=None):
        # value may be a NumPy scalar (a full reduction): __array__ must return an ndarray
        value = np.asarray(self.value)
        if dtype is not None and value.dtype != dtype:
            return value.astype(dtype)
        return value.copy() if copy else value

    def numpy(self):
        return np.array(self.value)

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def ndim(self):
        return self.value.ndim

    @property
    def size(self):
        return self.value.size

    def __len__(self):
        return len(self.value)

    def __float__(self):
        return float(self.value)

    def __int__(self):
        return int(self.value)

    def __bool__(self):
        return bool(self.value)

    def item(self):
        return self.value.item()

    def __format__(self, spec):
        # f"{loss:.4f}" on a scalar result, as on a NumPy scalar
        return format(self.value[()] if np.ndim(self.value) == 0 else self.value, spec)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return array_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return array_function(func, args, kwargs)


class Tensor(ArrayValue):
    """A value computed under a GradientTape, which knows how it was computed.

    It behaves like the NumPy array it holds (`np.asarray(t)`, `t.numpy()`, `.shape`, operators,
    indexing); arithmetic on it is recorded like any `keras.ops` call.
    """
    __slots__ = ("value", "__weakref__")

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"<Tensor shape={self.value.shape} dtype={self.value.dtype}\n{self.value!r}>"

    # Element-wise, as tensors compare in Keras (never identity); the tape keys on id(), so hashing
    # by identity stays valid.
    def __eq__(self, other):
        from fastconv.keras import ops
        return ops.equal(self, other)

    def __ne__(self, other):
        from fastconv.keras import ops
        return ops.not_equal(self, other)

    __hash__ = object.__hash__


def array_ufunc(ufunc, method, inputs, kwargs):
    """NumPy ufuncs on tensors or variables: the ones keras.ops has are recorded, the rest see values."""
    from fastconv.keras import ops
    op = _UFUNC_OPS.get(ufunc.__name__) if method == "__call__" and not kwargs else None
    if op is not None:
        return getattr(ops, op)(*inputs)
    values = [unwrap(x) for x in inputs]
    if "out" in kwargs:
        kwargs["out"] = tuple(unwrap(x) for x in kwargs["out"])
    return getattr(ufunc, method)(*values, **kwargs)


_UFUNC_OPS = {
    "add": "add", "subtract": "subtract", "multiply": "multiply", "true_divide": "divide", "negative": "negative",
    "power": "power", "square": "square", "sqrt": "sqrt", "exp": "exp", "log": "log", "absolute": "abs",
    "maximum": "maximum", "minimum": "minimum", "tanh": "tanh", "matmul": "matmul", "log1p": "log1p",
    "expm1": "expm1", "sin": "sin", "cos": "cos", "sinh": "sinh", "cosh": "cosh", "arctan": "arctan",
    "arcsin": "arcsin", "arccos": "arccos", "log2": "log2", "log10": "log10", "logaddexp": "logaddexp",
    "reciprocal": "reciprocal", "remainder": "mod",
}

# NumPy functions that keras.ops has with NumPy's argument order: on a Tensor they are recorded
# (np.concatenate([t, u]) would otherwise compute unrecorded and cut the gradient without a word).
_FUNCTION_OPS = {
    "concatenate", "stack", "hstack", "vstack", "reshape", "transpose", "swapaxes", "moveaxis", "expand_dims",
    "squeeze", "ravel", "tile", "repeat", "broadcast_to", "pad", "flip", "roll", "take", "take_along_axis", "split",
    "sum", "mean", "max", "min", "amax", "amin", "prod", "var", "std", "cumsum", "average", "sort", "where", "clip",
    "dot", "einsum", "tensordot", "outer", "trace", "diagonal", "tril", "triu", "norm",
}


def array_function(func, args, kwargs):
    """NumPy functions on tensors: the keras.ops equivalent when it takes the same arguments (recorded
    on a tape), else NumPy on the plain values."""
    from fastconv.keras import ops
    name = func.__name__
    if name in _FUNCTION_OPS and func.__module__ in ("numpy", "numpy.linalg"):
        op = getattr(ops, name)
        if name == "reshape" and "shape" in kwargs:  # NumPy 2's keyword, keras.ops' newshape
            kwargs = dict(kwargs, newshape=kwargs.pop("shape"))
        try:
            inspect.signature(op).bind(*args, **kwargs)
        except TypeError:  # a NumPy-only argument (out=, dtype=, ddof=...): NumPy computes it
            pass
        else:
            return op(*args, **kwargs)
    return func(*_unwrap_all(args), **{key: _unwrap_all(value) for key, value in kwargs.items()})


def _unwrap_all(x):
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap_all(item) for item in x)
    return unwrap(x)


def unwrap(x):
    """The NumPy value of a Tensor or Variable; anything else as it is."""
    return x.value if isinstance(x, Tensor) or _is_variable(x) else x


def _is_variable(x):
    return getattr(type(x), "_is_keras_variable", False)


class _Node:
    __slots__ = ("inputs", "vjp", "output")

    def __init__(self, inputs, vjp, output):
        self.inputs = inputs  # the op's differentiable arguments, as passed (Tensor, Variable, array, ...)
        self.vjp = vjp  # output gradient -> one gradient (or None) per input
        self.output = output


def recording():
    """True while some GradientTape is recording (ops then check whether to record)."""
    return bool(_active_tapes.get())


@contextlib.contextmanager
def stop_recording():
    """Within this block no tape records (e.g. a shape inference run that is not part of the step)."""
    token = _active_tapes.set(())
    try:
        yield
    finally:
        _active_tapes.reset(token)


def tracked(x):
    """True when some active tape already tracks x (its gradient may be asked for)."""
    return any([tape._tracks(x) for tape in _active_tapes.get()])


def record(value, inputs, vjp):
    """The result of an op: `value` itself when no active tape tracks any of `inputs`, else a Tensor
    holding it, recorded with `vjp` on each tape that tracks an input."""
    tapes = _active_tapes.get()
    if not tapes:
        return value
    # Every input is offered to every tape (no short-circuit): a tape registers the Variables it meets.
    tracking = [tape for tape in tapes if sum(tape._tracks(x) for x in inputs)]
    if not tracking:
        return value
    output = Tensor(value)
    node = _Node(list(inputs), vjp, output)
    for tape in tracking:
        tape._add(node)
    return output


def _sum_to_shape(grad, shape):
    """Undo NumPy broadcasting: sum a gradient back to the shape of the input it belongs to."""
    grad = np.asarray(grad)
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class GradientTape:
    """Records the ops run inside `with GradientTape() as tape:` so that `tape.gradient` can
    differentiate their result, with the contract of `tf.GradientTape`:

        with GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_weights)

    Trainable Variables are watched as soon as they are used; arrays and untrainable variables
    need `tape.watch(x)`. A source the target does not depend on gets None. Unless `persistent=True`,
    `gradient` may be called once and the tape then frees what it recorded.
    """

    def __init__(self, persistent=False, watch_accessed_variables=True):
        self.persistent = bool(persistent)
        self.watch_accessed_variables = bool(watch_accessed_variables)
        self._nodes = []
        self._tracked = {}  # id -> object, keeping each tracked object alive so its id stays unique
        self._recording = False
        self._token = None
        self._used = False

    def __enter__(self):
        if self._recording:
            raise RuntimeError("this GradientTape is already recording")
        self._recording = True
        self._token = _active_tapes.set(_active_tapes.get() + (self,))
        return self

    def __exit__(self, *exc_info):
        _active_tapes.reset(self._token)
        self._recording = False
        self._token = None
        return False

    def watch(self, tensor):
        """Track `tensor` (an array, Variable or Tensor, or a list/tuple/dict of them).

        keras.ops calls on a watched NumPy array are recorded; NumPy's own operators on it
        (`x * x`, `x[0]`) are not, since NumPy runs them: start from a Tensor or Variable for those
        (value_and_grad hands fn Tensors).
        """
        for item in _flatten(tensor):
            if isinstance(item, (np.ndarray, Tensor)) or _is_variable(item):
                self._tracked[id(item)] = item
            elif not (item is None or isinstance(item, (bool, int, float, np.number))):  # constants: nothing to track
                raise TypeError(f"watch takes arrays, Variables or Tensors, got {type(item).__name__}")

    @contextlib.contextmanager
    def stop_recording(self):
        """Within this block this tape records nothing (other active tapes still do), as TF's."""
        tapes = _active_tapes.get()
        if self not in tapes:
            raise RuntimeError("stop_recording() needs the tape to be recording (inside its with block)")
        token = _active_tapes.set(tuple(tape for tape in tapes if tape is not self))
        try:
            yield
        finally:
            _active_tapes.reset(token)

    def watched_variables(self):
        return [x for x in self._tracked.values() if _is_variable(x)]

    def reset(self):
        """Forget everything recorded so far (the tape stays active if it is)."""
        self._nodes, self._tracked = [], {}

    def _tracks(self, x):
        if id(x) in self._tracked:
            return True
        if self.watch_accessed_variables and _is_variable(x) and x.trainable:
            self._tracked[id(x)] = x
            return True
        return False

    def _add(self, node):
        self._nodes.append(node)
        self._tracked[id(node.output)] = node.output

    def gradient(self, target, sources, output_gradients=None, unconnected_gradients="none"):
        """d(sum of target * output_gradients)/d(source) for each source, in the structure of `sources`."""
        # tf.UnconnectedGradients.ZERO and friends carry the string in .value
        unconnected_gradients = str(getattr(unconnected_gradients, "value", unconnected_gradients)).lower()
        if unconnected_gradients not in ("none", "zero"):
            raise ValueError(f"unconnected_gradients must be 'none' or 'zero', got {unconnected_gradients!r}")
        if self._used and not self.persistent:
            raise RuntimeError("a non-persistent GradientTape can compute gradients only once; "
                               "use GradientTape(persistent=True) to call gradient() several times")
        targets = _flatten(target)
        # The vjps compute with NumPy, unrecorded: a gradient taken while another tape records the
        # target would reach that tape as a constant, and a second-order gradient (a gradient
        # penalty) would silently miss its terms. Refuse instead.
        for tape in _active_tapes.get():
            if tape is not self and any(id(item) in tape._tracked for item in targets):
                raise NotImplementedError(
                    "gradients of gradients are not supported: this gradient is taken while another "
                    "GradientTape records its target, which would see the result as a constant")
        seeds = [None] * len(targets) if output_gradients is None else _flatten(output_gradients)
        if len(seeds) != len(targets):
            raise ValueError(f"output_gradients must match target: {len(seeds)} gradients for {len(targets)} targets")
        grads = {}
        for item, seed in zip(targets, seeds):
            value = np.asarray(unwrap(item))
            seed = np.ones_like(value) if seed is None else np.asarray(unwrap(seed), dtype=value.dtype)
            if seed.shape != value.shape:
                raise ValueError(f"output gradient of shape {seed.shape} for a target of shape {value.shape}")
            _accumulate(grads, item, seed)
        for node in reversed(self._nodes):
            grad = grads.pop(id(node.output), None)
            if grad is None:
                continue
            for x, g in zip(node.inputs, node.vjp(grad)):
                if g is not None and id(x) in self._tracked:
                    _accumulate(grads, x, _sum_to_shape(g, np.shape(unwrap(x))))
        if not self.persistent:  # free the recording; watched_variables() still answers, as in TF
            self._used = True
            self._nodes = []
            self._tracked = {key: x for key, x in self._tracked.items() if _is_variable(x)}

        def result(source):
            if not (isinstance(source, (np.ndarray, Tensor)) or _is_variable(source)):
                raise TypeError(f"gradient sources must be Variables, Tensors or watched arrays, "
                                f"got {type(source).__name__}")
            grad = grads.get(id(source))
            value = np.asarray(unwrap(source))
            if grad is None:
                return np.zeros_like(value) if unconnected_gradients == "zero" else None
            grad = np.asarray(grad)
            # Each gradient is the source's float type (as TF promises) and an array of its own: vjps
            # return read-only broadcast views, and one array for several inputs (add's (g, g)),
            # which an in-place update of one gradient (clipping, scaling) must not see.
            dtype = value.dtype if value.dtype.kind == "f" else grad.dtype
            if grad.dtype != dtype or not grad.flags.writeable or grad.base is not None or id(grad) in returned:
                grad = np.array(grad, dtype=dtype)
            returned[id(grad)] = grad
            return grad
        returned = {}
        return _map_structure(result, sources)


def _accumulate(grads, x, g):
    previous = grads.get(id(x))
    grads[id(x)] = g if previous is None else previous + g


def _flatten(structure):
    if isinstance(structure, (list, tuple)):
        return [leaf for item in structure for leaf in _flatten(item)]
    if isinstance(structure, dict):
        return [leaf for key in sorted(structure) for leaf in _flatten(structure[key])]
    return [structure]


def _map_structure(fn, structure):
    if isinstance(structure, list):
        return [_map_structure(fn, item) for item in structure]
    if isinstance(structure, tuple):
        return tuple(_map_structure(fn, item) for item in structure)
    if isinstance(structure, dict):
        return {key: _map_structure(fn, value) for key, value in structure.items()}
    return fn(structure)


def value_and_grad(fn, argnums=0, has_aux=False):
    """`jax.value_and_grad` for keras.ops code: a function returning (fn(*args), d fn / d args[argnums]).

    The differentiated arguments may be arrays, Variables or lists/tuples/dicts of them; their
    gradients come back in the same structure. With has_aux, fn returns (value, aux) and the result
    is ((value, aux), grads).
    """
    single = isinstance(argnums, int)
    positions = (argnums,) if single else tuple(argnums)

    def wrapped(*args, **kwargs):
        args = list(args)
        for position in positions:
            if not -len(args) <= position < len(args):
                raise ValueError(f"argnums {position} is out of range for {len(args)} positional arguments")
        with GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            for position in positions:
                args[position] = _map_structure(_as_watchable, args[position])
                tape.watch(args[position])
            out = fn(*args, **kwargs)
        value, aux = out if has_aux else (out, None)
        if np.ndim(unwrap(value)) != 0:
            raise ValueError(f"value_and_grad needs fn to return a scalar, got shape {np.shape(unwrap(value))}")
        grads = tuple(tape.gradient(value, args[p], unconnected_gradients="zero") for p in positions)
        plain_value = np.asarray(unwrap(value))
        if has_aux:  # aux comes back as arrays, as jax gives them: no Tensor escapes the function
            aux = _map_structure(lambda leaf: np.asarray(leaf.value) if isinstance(leaf, Tensor) else leaf, aux)
            return (plain_value, aux), (grads[0] if single else grads)
        return plain_value, (grads[0] if single else grads)
    return wrapped


def _as_watchable(x):
    """Arguments to differentiate become fresh Tensors, so the tape tracks exactly these objects and
    fn may use operators on them (`x * w`, `x[0]`, `x @ w`): on a plain ndarray NumPy would compute
    those without recording them."""
    if _is_variable(x):
        return x
    from fastconv.keras import backend
    value = np.asarray(unwrap(x))
    # integers and Python floats become floatx (jax would say float32); arrays keep their float type
    as_floatx = value.dtype.kind in "biu" or (isinstance(x, float) and not isinstance(x, np.floating))
    return Tensor(np.array(value, dtype=backend.floatx() if as_floatx else value.dtype))
