"""Shapes of convolutions and poolings: argument parsing, padding rules and output sizes, in one place.

The Keras layers, the C-backed ops (fastconv.ops), the NumPy reference (fastconv.reference) and the
bindings (fastconv._C, which copies a ConvGeometry whole into C's fc_conv_shape) all take their sizes
from here, so a padding rule cannot differ between them. Everything is pure Python on shapes.
`conv_geometry` and `pool_geometry` keep the geometries of the shapes they have seen: a training loop
asks for the same few shapes on every step.
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


def padding_mode(padding, what=""):
    """"valid" or "same" (any case) as lower case; ValueError naming `what` (e.g. " for pooling") otherwise."""
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same'{what}, got {padding!r}")
    return padding.lower()


def parse_padding(padding):
    """Check a convolution's `padding` and return "valid", "same" or ((top, bottom), (left, right))."""
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


def _axis(size, extent, padding, stride):
    """(pad_before, pad_after, output length) along one axis: the one output-size rule of every window op."""
    before, after = resolve_padding(padding, size, extent, stride)
    return before, after, (size + before + after - extent) // stride + 1


def output_length(size, window, padding, stride, dilation=1):
    """Output length along one axis of a conv or pooling (padding as `parse_padding` returns it, one
    axis's pair when explicit); None stays None (a layer's unknown size)."""
    if size is None:
        return None
    extent = dilation * (window - 1) + 1
    before, after, out = _axis(size, extent, padding, stride)
    if padding != "same" and size + before + after < extent:  # "same" always fits (size 0 gives 0)
        raise ValueError(f"window of extent {extent} does not fit an input of size {size} with padding={padding!r}")
    return out


@dataclass(frozen=True)
class ConvWindow:
    """A conv layer's parsed window (kernel size, strides, padding, dilation), made once when the
    layer is made; `geometry` gives the ConvGeometry of each input shape."""
    kernel_size: tuple
    strides: tuple
    padding: object  # "valid", "same" or ((top, bottom), (left, right))
    dilation_rate: tuple

    def output_shape(self, input_shape, channels):
        """The output shape for an NHWC input shape (None for unknown sizes) and `channels` outputs."""
        rows, cols = (output_length(input_shape[axis], self.kernel_size[i], self._axis_padding(i), self.strides[i],
                                    self.dilation_rate[i]) for i, axis in enumerate((1, 2)))
        return (input_shape[0], rows, cols, channels)

    def _axis_padding(self, i):
        return self.padding if isinstance(self.padding, str) else self.padding[i]

    def geometry(self, x_shape, w_shape):
        return conv_geometry(x_shape, w_shape, self.strides, self.padding, self.dilation_rate)


def conv_window(kernel_size, strides, padding, dilation_rate, explicit_padding=True):
    """A ConvWindow from a layer's arguments (Keras rules; explicit_padding=False allows only
    "valid" and "same", as Keras' Conv2D does)."""
    strides, dilation = pair(strides, "strides"), pair(dilation_rate, "dilation_rate")
    if max(strides) > 1 and max(dilation) > 1:
        raise ValueError("strides > 1 together with dilation_rate > 1 is not supported (as in Keras)")
    return ConvWindow(pair(kernel_size, "kernel_size"), strides,
                      parse_padding(padding) if explicit_padding else padding_mode(padding), dilation)


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

    @property
    def pointwise(self):
        """A 1x1, stride-1, unpadded conv: one plain GEMM of x by w."""
        return (self.kh, self.kw, self.stride_h, self.stride_w, self.oh, self.ow) == (1, 1, 1, 1, self.h, self.w) \
            and self.pad_top == self.pad_left == 0


# Geometries already computed, by their arguments (only arguments of plain ints, strings and None: a bool or a
# float must still be refused, and True == 1 as a key). Bounded: a program of varying shapes cannot grow it.
_CACHE_SIZE = 1024
_conv_cache = {}
_pool_cache = {}


_UNCACHED = object()


_PLAIN = frozenset((int, str, type(None)))  # the types of a key's items that are keys themselves


def _key(value):
    """`value` as a hashable key when it holds only ints, strings and None (lists as tuples), else _UNCACHED."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is not tuple and kind is not list:
        return _UNCACHED
    items = []  # the common arguments (shapes, pairs of ints, strings) inline: this runs on every conv and pool call
    for item in value:
        kind = type(item)
        if kind is tuple or kind is list:
            for part in item:
                if type(part) not in _PLAIN:  # deeper (padding pairs), or a type to refuse
                    item = _key(item)
                    if item is _UNCACHED:
                        return _UNCACHED
                    break
            else:
                item = tuple(item)
        elif kind not in _PLAIN:
            return _UNCACHED
        items.append(item)
    return tuple(items)


def _cached(cache, compute, *args):
    key = _key(args)
    if key is _UNCACHED:
        return compute(*args)
    found = cache.get(key)
    if found is None:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        found = cache[key] = compute(*args)
    return found


def conv_geometry(x_shape, w_shape, strides, padding, dilation_rate=1):
    """Validate a convolution's arguments and compute its geometry (cached per set of arguments)."""
    return _cached(_conv_cache, _conv_geometry, x_shape, w_shape, strides, padding, dilation_rate)


def _conv_geometry(x_shape, w_shape, strides, padding, dilation_rate):
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
    top, bottom, oh = _axis(h, span_h, mode if isinstance(mode, str) else mode[0], sh)
    left, right, ow = _axis(w, span_w, mode if isinstance(mode, str) else mode[1], sw)
    if h + top + bottom < span_h or w + left + right < span_w:
        raise ValueError(
            f"kernel of extent ({span_h}, {span_w}) is larger than the padded input "
            f"({h + top + bottom}, {w + left + right}) for x of shape {tuple(x_shape)}")
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
    padding = padding_mode(padding, " for a transposed convolution")
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
    """Validate a pooling's arguments (Keras: strides default to pool_size) and compute its geometry
    (cached per set of arguments)."""
    return _cached(_pool_cache, _pool_geometry, x_shape, pool_size, strides, padding)


def _pool_geometry(x_shape, pool_size, strides, padding):
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (batch, height, width, channels), got shape {tuple(x_shape)}")
    n, h, w, c = (int(d) for d in x_shape)
    ph, pw = pair(pool_size, "pool_size")
    sh, sw = pair(pool_size if strides is None else strides, "strides")
    mode = padding_mode(padding, " for pooling")
    if mode == "valid" and (h < ph or w < pw):
        raise ValueError(f"pool_size ({ph}, {pw}) is larger than the input ({h}, {w}) with padding='valid'")
    top, bottom, oh = _axis(h, ph, mode, sh)
    left, right, ow = _axis(w, pw, mode, sw)
    checked_product((n, h + top + bottom, w + left + right, c), "padded x")
    checked_product((n, oh, ow, c), "output")
    return PoolGeometry(n, h, w, c, ph, pw, sh, sw, top, bottom, left, right, oh, ow)
