"""Argument checking of arrays shared by the C-backed ops and the NumPy reference.

Everything here names the offending argument and what was expected, so that the kernels only ever see
contiguous float32 data with consistent sizes. Shapes, padding and output sizes live in fastconv.shapes
(re-exported here for the ops that take both).
"""
import numpy as np

from fastconv.shapes import (  # noqa: F401 (re-exported)
    MAX_ELEMENTS, MAX_PARAMETER, ConvGeometry, PoolGeometry, checked_int, checked_product, conv_geometry,
    conv_transpose_geometry, deconv_output_length, output_padding_pair, pair, parse_padding, pool_geometry,
    resolve_padding,
)


def as_float_array(value, name, ndim=None, dtype=np.float32):
    """Return `value` as an aligned C-contiguous array of `dtype`, rejecting dtypes that are not real numbers."""
    if type(value) is np.ndarray and value.dtype == dtype:  # already right (every layer's call): no np.require
        flags = value.flags
        if flags.c_contiguous and flags.aligned and (ndim is None or value.ndim == ndim):
            return value
    arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if arr.dtype == object or arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (float or integer dtype), got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    # aligned too: C reads these as float arrays (a misaligned view, e.g. from frombuffer, is copied)
    return np.require(arr, dtype=dtype, requirements=["C", "A"])


# Work allowed to np.shares_memory's exact test of two strided arrays whose bounds overlap; past it, the
# arrays count as overlapping (a refusal, never a wrong result).
OVERLAP_MAX_WORK = 100_000
_TooHardError = getattr(getattr(np, "exceptions", np), "TooHardError")  # numpy.exceptions from NumPy 1.25


def _same_elements(a, b):
    """a and b are the same elements of memory in the same order (an elementwise op may read and write them)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.dtype == b.dtype
            and a.size == b.size and a.flags.c_contiguous and b.flags.c_contiguous)


def check_disjoint(written, read, written_name="out", same_ok=()):
    """Refuse a `written` array that shares memory with any array of `read` (name -> the array the kernel
    reads while it writes `written`: pass the arrays as handed to C, after any conversion, so that a
    converted copy does not count). Names in `same_ok` may be exactly `written` (same first element,
    same contiguous layout): elementwise kernels read each element before writing it. Arrays whose
    bounds overlap but whose elements do not (interleaved column slices) pass; when that cannot be
    decided within OVERLAP_MAX_WORK, they count as overlapping."""
    if not isinstance(written, np.ndarray):
        return
    for name, arr in read.items():
        if not isinstance(arr, np.ndarray) or arr.size == 0 or written.size == 0:
            continue
        # The bounds test first: it is one C call, and disjoint arrays (nearly every call) stop there.
        if arr is not written and not np.may_share_memory(written, arr):
            continue
        if arr is written or _same_elements(arr, written):
            if name in same_ok:
                continue
            raise ValueError(f"{written_name} overlaps input {name} (the same memory); pass a separate output array")
        overlap = True
        if not (written.flags.c_contiguous and arr.flags.c_contiguous):  # bounds overlap; elements may not
            try:
                overlap = np.shares_memory(written, arr, max_work=OVERLAP_MAX_WORK)
            except _TooHardError:
                overlap = True
        if overlap:
            raise ValueError(f"{written_name} overlaps input {name}; pass a separate output array")


def check_shape(arr, expected, name):
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(arr.shape)}")


def check_momentum_buffer(momentum, buffer, name):
    """An optimizer's momentum slot exists exactly when momentum != 0 (as the Keras optimizers create it):
    a missing one cannot be updated, and one given with momentum 0 would be silently left alone."""
    if momentum and buffer is None:
        raise ValueError(f"{name} is required when momentum != 0 (got momentum={momentum!r})")
    if not momentum and buffer is not None:
        raise ValueError(f"{name} must be None when momentum == 0 (the update without momentum has no {name})")


def batch_norm_arrays(x, per_channel, epsilon, dtype):
    """x (2-D or more, channels last) and its per-channel arrays (a dict name -> array or None) as
    aligned C-contiguous `dtype` arrays, each per-channel one 1-D of x's channel count; epsilon > 0."""
    if isinstance(epsilon, (bool, np.bool_)) or not isinstance(epsilon, (int, float, np.integer, np.floating)):
        raise TypeError(f"epsilon must be a real number, got {epsilon!r}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon!r}")
    x = as_float_array(x, "x", dtype=dtype)
    if x.ndim < 2:
        raise ValueError(f"x must have a batch axis and a channel axis (2-D or more), got shape {x.shape}")
    checked_product(x.shape, "x")
    converted = {}
    for name, arr in per_channel.items():
        if arr is not None:
            arr = as_float_array(arr, name, ndim=1, dtype=dtype)
            check_shape(arr, (x.shape[-1],), name)
        converted[name] = arr
    return x, converted


def check_batch_statistics(mean, variance):
    """mean and variance are given together (inference statistics) or not at all (the batch's)."""
    if (mean is None) != (variance is None):
        raise ValueError("mean and variance must be given together (or neither, for the batch's statistics)")


# affine_transform's options and their codes in C (fastconv.h), as Keras' ops.image.affine_transform spells them.
INTERPOLATIONS = {"nearest": 0, "bilinear": 1}
FILL_MODES = {"constant": 0, "nearest": 1, "reflect": 2, "wrap": 3, "mirror": 4}


def affine_arguments(images, transform, interpolation, fill_mode, fill_value, data_format, output_size, dtype):
    """Checks affine_transform's arguments; returns (images as a 4-D array of `dtype`, transforms as a
    float64 (n, 8) array, was_unbatched, (out_h, out_w))."""
    if not isinstance(interpolation, str) or interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if not isinstance(fill_mode, str) or fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {', '.join(FILL_MODES)}, got {fill_mode!r}")
    if isinstance(fill_value, (bool, np.bool_)) or not isinstance(fill_value, (int, float, np.integer, np.floating)):
        raise TypeError(f"fill_value must be a number, got {fill_value!r}")
    if data_format not in (None, "channels_last"):
        raise ValueError(f"data_format must be 'channels_last' (fastconv's only image layout), got {data_format!r}")
    x = as_float_array(images, "images", dtype=dtype)
    if x.ndim not in (3, 4):
        raise ValueError(f"images must be 3-D (height, width, channels) or 4-D (batch, height, width, channels), "
                         f"got shape {x.shape}")
    if x.shape[-3] == 0 or x.shape[-2] == 0:
        raise ValueError(f"images must have a height and a width of at least 1 to sample from, got shape {x.shape}")
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    t = np.asarray(transform)
    if t.dtype == object or t.dtype.kind not in "fiu":
        raise TypeError(f"transform must hold real numbers, got dtype {t.dtype}")
    t = np.require(t.reshape(1, -1) if t.ndim == 1 else t, dtype=np.float64, requirements=["C", "A"])
    if t.ndim != 2 or t.shape[1] != 8:
        raise ValueError(f"transform must have shape (8,) or (batch, 8) (a0 a1 a2 b0 b1 b2 c0 c1), got shape "
                         f"{np.shape(transform)}")
    if t.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"transform holds {t.shape[0]} transforms for a batch of {x.shape[0]} images")
    if not np.isfinite(t).all():
        raise ValueError("transform must hold finite numbers")
    if t.shape[0] != x.shape[0]:  # one transform for the whole batch
        t = np.ascontiguousarray(np.broadcast_to(t, (x.shape[0], 8)))
    out_size = x.shape[1:3] if output_size is None else pair(output_size, "output_size")
    checked_product((x.shape[0],) + tuple(out_size) + (x.shape[3],), "the output")
    return x, t, unbatched, tuple(out_size)
