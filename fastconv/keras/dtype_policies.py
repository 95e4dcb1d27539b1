"""Keras 3's dtype policies (`keras.dtype_policies`, `keras.mixed_precision`): a layer's compute dtype and
variable dtype, by name, with Keras' names, errors and serialization.

    keras.mixed_precision.set_global_policy("mixed_bfloat16")   # layers made from now on
    keras.layers.Dense(10, dtype="float32")                    # this one stays float32

"mixed_bfloat16": layers compute in bfloat16 with float32 sums, weights and optimizer state stay
float32, the loss is computed in float32. Here the GEMMs of Dense, Conv2D and Conv2DTranspose run on
the bfloat16 kernel where the CPU has AVX512_BF16, else on the float32 kernels (fastconv warns once;
`fastconv.precision` has the details). Activations between layers are float32 arrays either way
(Keras hands bfloat16 tensors from layer to layer), so results are as accurate or more.
"mixed_float16": Keras runs it; fastconv has no float16 CPU kernels, so such layers compute in float32
(and say so once), with float32 weights as the policy asks. Loss scaling is then unnecessary.
"""
from fastconv.keras import backend

MIXED = {"mixed_float16": ("float16", "float32"), "mixed_bfloat16": ("bfloat16", "float32")}
# The dtype names Keras' standardize_dtype accepts (a layer here takes the float ones: Layer checks).
DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
          "uint32", "uint64", "bool")

_global_policy = None


class DTypePolicy:
    """A layer's dtype policy: its compute dtype and its variable dtype, from one name.

    name: "float32" (or any float dtype name: compute and variables in it), "mixed_bfloat16" (compute
    bfloat16, variables float32) or "mixed_float16" (compute float16, variables float32); None: the
    global policy's name."""

    def __init__(self, name=None):
        if name is None:
            name = dtype_policy().name
        self._name = name
        self._compute_dtype, self._variable_dtype = self._parse_name(name)
        self._quantization_mode = None

    @staticmethod
    def _parse_name(name):
        if not isinstance(name, str):
            raise TypeError(f"'name' must be a string, such as 'mixed_float16'. Received: name={name} "
                            f"(of type {type(name)})")
        if name in MIXED:
            return MIXED[name]
        dtype = _standardize(name)
        if dtype is None:
            raise ValueError(f"Cannot convert '{name}' to a mixed precision DTypePolicy. Valid policies include "
                             "'mixed_float16', 'mixed_bfloat16', and the name of any float dtype such as 'float32'.")
        return dtype, dtype

    @property
    def name(self):
        return self._name

    @property
    def compute_dtype(self):
        """The dtype the layer computes in (its GEMMs' inputs)."""
        return self._compute_dtype

    @property
    def variable_dtype(self):
        """The dtype of the layer's weights."""
        return self._variable_dtype

    @property
    def quantization_mode(self):
        return self._quantization_mode

    def get_config(self):
        return {"name": self._name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f'<DTypePolicy "{self._name}">'

    def __eq__(self, other):
        return isinstance(other, DTypePolicy) and self._name == other._name

    def __hash__(self):
        return hash(self._name)


FloatDTypePolicy = DTypePolicy  # Keras 3's alias
Policy = DTypePolicy  # keras.mixed_precision.Policy (legacy name)


def _standardize(name):
    """A dtype name Keras accepts ("float32", "bfloat16", "int32", ...), else None."""
    return name if name in DTYPES else None


def set_dtype_policy(policy):
    """Set the policy of layers made from now on: a name ("mixed_bfloat16", "float32", ...) or a DTypePolicy."""
    global _global_policy
    if not isinstance(policy, DTypePolicy):
        if not isinstance(policy, str):
            raise ValueError("Invalid `policy` argument. Expected the string name of a policy (such as "
                             f"'mixed_float16') or a `DTypePolicy` instance. Received: policy={policy} "
                             f"(of type {type(policy)})")
        policy = DTypePolicy(policy)
    _global_policy = policy


def dtype_policy():
    """The global policy: the one set, else DTypePolicy(floatx()) (following set_floatx until one is set)."""
    return _global_policy if _global_policy is not None else DTypePolicy(backend.floatx())


set_global_policy = set_dtype_policy  # keras.mixed_precision's names
global_policy = dtype_policy


def serialize(policy):
    """A policy as Keras 3 writes it in a config (a layer's "dtype")."""
    return {"module": "keras", "class_name": "DTypePolicy", "config": policy.get_config(), "registered_name": None}


def deserialize(config, custom_objects=None):
    """The policy of a serialized config ({"class_name": "DTypePolicy", "config": {"name": ...}})."""
    if not isinstance(config, dict) or config.get("class_name") not in ("DTypePolicy", "FloatDTypePolicy") \
            or not isinstance(config.get("config"), dict):
        raise ValueError(f"Cannot deserialize a DTypePolicy from {str(config)[:100]}: expected "
                         "{'class_name': 'DTypePolicy', 'config': {'name': ...}}")
    return DTypePolicy.from_config(config["config"])


def get(identifier):
    """A DTypePolicy from None (the global one), a name, a serialized config, or a policy."""
    if identifier is None:
        return dtype_policy()
    if isinstance(identifier, DTypePolicy):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return DTypePolicy(identifier)
    name = _standardize(str(getattr(identifier, "name", getattr(identifier, "__name__", None))))
    if name is None:
        raise ValueError("Cannot interpret `dtype` argument. Expected a string or an instance of DTypePolicy. "
                         f"Received: dtype={identifier}")
    return DTypePolicy(name)


__all__ = ["DTypePolicy", "FloatDTypePolicy", "deserialize", "get", "serialize"]
