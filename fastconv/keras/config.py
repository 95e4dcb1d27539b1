"""Global settings, as in Keras 3's `keras.config`, as far as they mean something here.

fastconv computes in float32 on channels_last (NHWC) tensors; the setters accept those values and
refuse the others with a ValueError that says so, instead of silently computing something else.
"""
import numbers

from fastconv.keras import backend as _backend

_BACKEND_NAME = "fastconv"
_IMAGE_DATA_FORMAT = "channels_last"
_unsafe_deserialization = False
_max_epochs = None
_max_steps_per_epoch = None


def backend():
    """The name of the engine running Keras code here: "fastconv" (where Keras says "jax", "torch", ...)."""
    return _BACKEND_NAME


def floatx():
    """The float type of weights and activations: "float32"."""
    return _backend.floatx()


def set_floatx(value):
    """Accepts only "float32", the type the C kernels compute in.

    (For gradient checks in float64, `keras.backend.set_floatx("float64")` together with the NumPy
    reference backend, `keras.backend.set_backend("numpy")`, is the way.)"""
    if str(value) != "float32":
        raise ValueError(f"fastconv computes in float32: set_floatx accepts only 'float32', got {value!r}")
    _backend.set_floatx("float32")


def epsilon():
    """The fuzz factor of the probability losses: predictions are clipped to [epsilon, 1 - epsilon]."""
    from fastconv.keras import losses
    return losses.EPSILON


def set_epsilon(value):
    """Set the clip bound of the probability losses (crossentropies on probabilities); Keras' default is 1e-7."""
    from fastconv.keras import losses
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 0.5:
        raise ValueError(f"epsilon must be a number in (0, 0.5), got {value!r}")
    losses.EPSILON = float(value)


def dtype_policy():
    """The global dtype policy (keras.mixed_precision.global_policy)."""
    from fastconv.keras import dtype_policies
    return dtype_policies.dtype_policy()


def set_dtype_policy(policy):
    """Set the dtype policy of layers made from now on: "float32", "mixed_bfloat16", ... (see
    fastconv.keras.dtype_policies)."""
    from fastconv.keras import dtype_policies
    dtype_policies.set_dtype_policy(policy)


def image_data_format():
    """Image tensors are (batch, height, width, channels): "channels_last"."""
    return _IMAGE_DATA_FORMAT


def set_image_data_format(data_format):
    """Accepts only "channels_last", the layout every layer and kernel here works in."""
    fmt = str(data_format).lower()
    if fmt == "channels_first":
        raise ValueError("fastconv supports only data_format='channels_last' (images shaped (batch, height, width, "
                         "channels)); transpose channels_first data with np.transpose(x, (0, 2, 3, 1))")
    if fmt != "channels_last":
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")


def enable_unsafe_deserialization():
    """Let model files name layers that hold Python code (Lambda).

    Off by default, as in Keras: loading such a file would run whatever code it carries. Only turn it
    on for files you trust.
    """
    global _unsafe_deserialization
    _unsafe_deserialization = True


def unsafe_deserialization_enabled():
    """Whether enable_unsafe_deserialization() has been called."""
    return _unsafe_deserialization


def _check_limit(value, name):
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return None if value is None else int(value)


def max_epochs():
    """The cap on fit's epochs set by set_max_epochs (None: no cap)."""
    return _max_epochs


def set_max_epochs(value):
    """Cap every fit() at this many epochs (a debugging aid from Keras 3); None removes the cap."""
    global _max_epochs
    _max_epochs = _check_limit(value, "max_epochs")


def max_steps_per_epoch():
    """The cap on the steps of each epoch set by set_max_steps_per_epoch (None: no cap)."""
    return _max_steps_per_epoch


def set_max_steps_per_epoch(value):
    """Cap every epoch (of fit, evaluate and predict) at this many steps; None removes the cap."""
    global _max_steps_per_epoch
    _max_steps_per_epoch = _check_limit(value, "max_steps_per_epoch")


__all__ = [
    "backend", "dtype_policy", "enable_unsafe_deserialization", "epsilon", "floatx", "image_data_format",
    "max_epochs", "max_steps_per_epoch", "set_dtype_policy", "set_epsilon", "set_floatx", "set_image_data_format",
    "set_max_epochs", "set_max_steps_per_epoch", "unsafe_deserialization_enabled",
]
