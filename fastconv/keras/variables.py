"""keras.Variable: a mutable float array that layers own and optimizers update in place."""
import numpy as np

from fastconv import _C
from fastconv.keras import backend, initializers
from fastconv.keras.autodiff import ArrayValue


class Variable(ArrayValue):
    """`keras.Variable(initializer, shape=None, dtype=None, trainable=True, name=None)`, as in Keras 3.

    `initializer` is a value (array, list, number) or an initializer (a name such as "zeros", or a
    callable taking `(shape, dtype)`), which then needs `shape`. The value lives in `.value`, a NumPy
    array that optimizers update in place; `assign`, `numpy()`, NumPy conversion and arithmetic
    (recorded under a GradientTape) work as in Keras. `.grad` holds the gradient summed by the
    layers' fused backward passes during a `fit` step.
    """
    _is_keras_variable = True

    def __init__(self, initializer, shape=None, dtype=None, trainable=True, autocast=True, aggregation="none",
                 synchronization="auto", name=None, regularizer=None, path=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {name!r}")
        dtype = np.dtype(dtype or backend.floatx())  # as Keras: no dtype means floatx, whatever the value's
        if isinstance(initializer, (str, initializers.Initializer)) or \
                (callable(initializer) and not isinstance(initializer, (np.ndarray, Variable))):
            if shape is None:
                raise ValueError("a Variable made from an initializer needs shape=")
            value = np.asarray(initializers.get(initializer)(tuple(shape), dtype=dtype))
        else:
            value = np.asarray(initializer.value if isinstance(initializer, Variable) else initializer)
            if value.dtype.kind not in "biuf":
                raise TypeError(f"a Variable holds numbers, got dtype {value.dtype}")
            if shape is not None and tuple(shape) != value.shape:
                raise ValueError(f"the initial value has shape {value.shape} but shape={tuple(shape)}")
        self.name = name or "variable"
        self.path = path or self.name
        self.value = _C.empty_aligned(value.shape, dtype)  # rows on cache lines: see empty_aligned
        self.value[...] = value
        self.trainable = bool(trainable)
        self.regularizer = regularizer
        self.grad = None

    # ----- the array -----
    def assign(self, value):
        value = np.asarray(value.value if isinstance(value, Variable) else value)
        if value.shape != self.value.shape:
            raise ValueError(f"variable {self.path!r} has shape {self.value.shape}, got a value of shape {value.shape}")
        self.value[...] = value
        return self

    def assign_add(self, value):
        self.value += np.asarray(value.value if isinstance(value, Variable) else value, self.value.dtype)
        return self

    def assign_sub(self, value):
        self.value -= np.asarray(value.value if isinstance(value, Variable) else value, self.value.dtype)
        return self

    def add_grad(self, grad):
        """Sum gradients over the several calls of a shared layer within one step."""
        self.grad = grad if self.grad is None else self.grad + grad

    def __repr__(self):
        return f"<Variable path={self.path}, shape={self.value.shape}, dtype={self.value.dtype}>"

    # Identity semantics (optimizer state and tapes key on the object; `v in list` must not compare
    # values), so == is not element-wise here; use keras.ops.equal.
    __hash__ = object.__hash__
