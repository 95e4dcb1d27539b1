"""Argument checking and shape arithmetic shared by the C-backed ops and the NumPy reference.

Everything here is pure Python on shapes and arrays: it names the offending argument and what was
expected, so that the kernels only ever see contiguous float32 data with consistent sizes.
"""
from dataclasses import dataclass
import operator

import numpy as np

# Largest element count we let any array (real or implied by shapes alone) reach: 1 PiB of float32,
# beyond any machine's memory, and small enough that every byte offset and every scratch size in C (up
# to a thousand buffers of this many floats: partial sums plus per-thread blocks) fits in int64.
MAX_ELEMENTS = 2**48
# Largest pool size, stride, dilation or padding (int32, as in Keras): sums of these with sizes, and
# products of two of them, stay inside int64.
MAX_PARAMETER = 2**31 - 1


def as_float_array(value, name, ndim=None, dtype=np.float32):
    """Return `value` as an aligned C-contiguous array of `dtype`, rejecting dtypes that are not real numbers."""
    arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if arr.dtype == object or arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (float or integer dtype), got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    # aligned too: C reads these as float arrays (a misaligned view, e.g. from frombuffer, is copied)
    return np.require(arr, dtype=dtype, requirements=["C", "A"])


def checked_product(shape, name):
    """Product of `shape`, rejected when it would overflow the C side's 64-bit size arithmetic."""
    total = 1
    for dim in shape:
        total *= int(dim)
    if total > MAX_ELEMENTS or any(int(dim) > MAX_ELEMENTS for dim in shape):
        raise ValueError(f"{name} would have {total} elements, more than fastconv supports ({MAX_ELEMENTS})")
    return total


def pair(value, name):
    """Normalise an int or a pair of ints to a tuple of two positive ints (Keras style)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        items = tuple(value)
    else:
        items = (value, value)
    out = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        try:
            number = operator.index(item)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if number <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
        if number > MAX_PARAMETER:
            raise ValueError(f"{name} must be at most {MAX_PARAMETER}, got {value!r}")
        out.append(number)
    return tuple(out)


def checked_int(value, name, minimum=0):
    """`value` as an int in [minimum, MAX_PARAMETER]; TypeError for non-integers (bools included)."""
    kind = "a positive int" if minimum == 1 else "a non-negative int" if minimum == 0 else f"an int >= {minimum}"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {kind}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if number > MAX_PARAMETER:
        raise ValueError(f"{name} must be at most {MAX_PARAMETER}, got {value!r}")
    return number


def resolve_padding(padding, size, window, stride):
    """Return (pad_before, pad_after) along one axis for a window of effective extent `window`.

    `padding` is "valid", "same" (TensorFlow/Keras: output = ceil(size / stride), the odd extra pad
    at the end), or an explicit (before, after) pair already parsed by `parse_padding`.
    """
    if padding == "valid":
        return 0, 0
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + window - size, 0)
        return total // 2, total - total // 2
    return padding


def parse_padding(padding):
    """Check `padding` and return "valid", "same" or ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid', 'same', an int or ((top, bottom), (left, right)), got {padding!r}")
        return mode
    if isinstance(padding, (tuple, list)):
        if len(padding) != 2:
            raise ValueError(f"padding must be ((top, bottom), (left, right)), got {padding!r}")
        rows, cols = padding
        if not isinstance(rows, (tuple, list)) or not isinstance(cols, (tuple, list)) or len(rows) != 2 or len(cols) != 2:
            raise ValueError(f"padding must be ((top, bottom), (left, right)), got {padding!r}")
        return tuple(tuple(checked_int(p, "padding") for p in side) for side in (rows, cols))
    amount = checked_int(padding, "padding")
    return ((amount, amount), (amount, amount))


@dataclass(frozen=True)
class ConvGeometry:
    """Every size of one 2-D convolution (NHWC input, (kh, kw, cin, cout) kernel)."""
    n: int
    h: int
    w: int
    cin: int
    kh: int
    kw: int
    cout: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    oh: int
    ow: int

    @property
    def out_shape(self):
        return (self.n, self.oh, self.ow, self.cout)


def conv_geometry(x_shape, w_shape, strides, padding, dilation_rate=1):
    """Validate a convolution's arguments and compute its output size."""
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (batch, height, width, channels), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"w must be 4-D (kernel_h, kernel_w, in_channels, out_channels), got shape {tuple(w_shape)}")
    n, h, w, cin = (int(d) for d in x_shape)
    kh, kw, w_cin, cout = (int(d) for d in w_shape)
    if w_cin != cin:
        raise ValueError(f"w has {w_cin} input channels (shape {tuple(w_shape)}) but x has {cin} (shape {tuple(x_shape)})")
    if min(kh, kw, cout) <= 0:
        raise ValueError(f"w must have a positive kernel size and out_channels, got shape {tuple(w_shape)}")
    sh, sw = pair(strides, "strides")
    dh, dw = pair(dilation_rate, "dilation_rate")
    mode = parse_padding(padding)
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if mode == "same" and (sh > 1 or sw > 1) and (dh > 1 or dw > 1):
        raise ValueError("strides > 1 together with dilation_rate > 1 is not supported (as in Keras)")
    top, bottom = resolve_padding(mode if isinstance(mode, str) else mode[0], h, span_h, sh)
    left, right = resolve_padding(mode if isinstance(mode, str) else mode[1], w, span_w, sw)
    if h + top + bottom < span_h or w + left + right < span_w:
        raise ValueError(
            f"kernel of extent ({span_h}, {span_w}) is larger than the padded input "
            f"({h + top + bottom}, {w + left + right}) for x of shape {tuple(x_shape)}")
    oh = (h + top + bottom - span_h) // sh + 1
    ow = (w + left + right - span_w) // sw + 1
    checked_product((n, h + top + bottom, w + left + right, cin), "padded x")
    checked_product((kh, kw, cin, cout), "w")
    checked_product((n, oh, ow, cout), "output")
    checked_product((n, oh, ow, kh * kw * cin), "im2col matrix")
    return ConvGeometry(n, h, w, cin, kh, kw, cout, sh, sw, dh, dw, top, bottom, left, right, oh, ow)


def output_padding_pair(output_padding, strides):
    """None, or `output_padding` (an int or a pair) as a pair of ints each in [0, stride), as Keras requires."""
    if output_padding is None:
        return None
    items = tuple(output_padding) if isinstance(output_padding, (tuple, list)) else (output_padding,) * 2
    if len(items) != 2:
        raise ValueError(f"output_padding must be an int or a pair of ints, got {output_padding!r}")
    items = tuple(checked_int(item, "output_padding") for item in items)
    if any(p >= s for p, s in zip(items, strides)):
        raise ValueError(f"output_padding must be smaller than strides {tuple(strides)}, got {output_padding!r}")
    return items


def deconv_output_length(size, window, padding, stride, output_padding=None, dilation=1):
    """Output length along one axis of a transposed conv, by Keras' rule (`deconv_output_length`): size *
    stride, plus max(extent - stride, 0) for "valid"; with output_padding, (size - 1) * stride + extent -
    2 * pad + output_padding, pad = extent // 2 for "same" and 0 for "valid". None stays None."""
    if size is None:
        return None
    extent = dilation * (window - 1) + 1
    if output_padding is None:
        return size * stride + (max(extent - stride, 0) if padding == "valid" else 0)
    pad = extent // 2 if padding == "same" else 0
    return (size - 1) * stride + extent - 2 * pad + output_padding


def conv_transpose_geometry(x_shape, w_shape, strides, padding, output_padding=None, dilation_rate=1):
    """The conv whose input gradient a transposed convolution is, and the transposed conv's output shape.

    x is (N, H, W, Cin) and w (kh, kw, Cout, Cin), as Keras stores a Conv2DTranspose kernel: the same
    array is the kernel of a conv from (N, OH, OW, Cout) to (N, H, W, Cin), OH and OW by
    `deconv_output_length`. Returns (that conv's ConvGeometry, (N, OH, OW, Cout)).
    """
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (batch, height, width, channels), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"w must be 4-D (kernel_h, kernel_w, out_channels, in_channels), got shape {tuple(w_shape)}")
    n, h, w, cin = (int(d) for d in x_shape)
    kh, kw, cout, w_cin = (int(d) for d in w_shape)
    if w_cin != cin:
        raise ValueError(f"w has {w_cin} input channels in its last axis (shape {tuple(w_shape)}) but x has {cin} "
                         f"(shape {tuple(x_shape)})")
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same' for a transposed convolution, got {padding!r}")
    padding = padding.lower()
    strides = pair(strides, "strides")
    dilation = pair(dilation_rate, "dilation_rate")
    if max(strides) > 1 and max(dilation) > 1:
        raise ValueError("strides > 1 together with dilation_rate > 1 is not supported (as in Keras)")
    extra = output_padding_pair(output_padding, strides) or (None, None)
    out_shape = (n,) + tuple(deconv_output_length(size, window, padding, stride, pad, rate)
                             for size, window, stride, pad, rate in zip((h, w), (kh, kw), strides, extra, dilation)) + (cout,)
    if min(out_shape[1:3]) <= 0:
        raise ValueError(f"a transposed convolution of x {tuple(x_shape)} with w {tuple(w_shape)} would have output "
                         f"shape {out_shape}")
    g = conv_geometry(out_shape, w_shape, strides, padding, dilation_rate)
    if g.out_shape != (n, h, w, cin):
        raise ValueError(f"x of shape {tuple(x_shape)} is not what a conv of the output {out_shape} gives "
                         f"({g.out_shape}) with these strides, padding and output_padding {output_padding!r}")
    return g, out_shape


@dataclass(frozen=True)
class PoolGeometry:
    """Every size of one 2-D pooling (NHWC input)."""
    n: int
    h: int
    w: int
    c: int
    pool_h: int
    pool_w: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    oh: int
    ow: int

    @property
    def out_shape(self):
        return (self.n, self.oh, self.ow, self.c)


def pool_geometry(x_shape, pool_size, strides, padding):
    """Validate a pooling's arguments (Keras: strides default to pool_size) and compute its output size."""
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (batch, height, width, channels), got shape {tuple(x_shape)}")
    n, h, w, c = (int(d) for d in x_shape)
    ph, pw = pair(pool_size, "pool_size")
    sh, sw = pair(pool_size if strides is None else strides, "strides")
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same' for pooling, got {padding!r}")
    mode = padding.lower()
    top, bottom = resolve_padding(mode, h, ph, sh)
    left, right = resolve_padding(mode, w, pw, sw)
    if mode == "valid" and (h < ph or w < pw):
        raise ValueError(f"pool_size ({ph}, {pw}) is larger than the input ({h}, {w}) with padding='valid'")
    oh = (h + top + bottom - ph) // sh + 1 if h > 0 or mode == "valid" else 0
    ow = (w + left + right - pw) // sw + 1 if w > 0 or mode == "valid" else 0
    checked_product((n, h + top + bottom, w + left + right, c), "padded x")
    checked_product((n, oh, ow, c), "output")
    return PoolGeometry(n, h, w, c, ph, pw, sh, sw, top, bottom, left, right, oh, ow)


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
        if arr is written or _same_elements(arr, written):
            if name in same_ok:
                continue
            raise ValueError(f"{written_name} overlaps input {name} (the same memory); pass a separate output array")
        if not np.may_share_memory(written, arr):
            continue
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
