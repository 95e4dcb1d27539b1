"""Keras 3's image preprocessing and augmentation layers (channels_last).

The random layers (RandomFlip, RandomRotation, RandomTranslation, RandomZoom, RandomContrast,
RandomBrightness, RandomCrop) change their inputs only when training; at inference they pass them
through (RandomCrop then crops the centre, see its docstring). As in Keras, a model runs them in
training mode only in fit, while a layer called on its own (`aug(images)`, not inside a model or
another layer) augments unless given training=False. Each draws from its own generator when given
`seed=`, otherwise from the shared one behind `keras.utils.set_random_seed`. The draws follow
Keras' order and distributions, one per image (RandomCrop: one per batch).

Rotation, translation, zoom and resizing are one resampling each, done by the C kernel behind
`fastconv.ops.affine_transform`: a transform per image (Keras' 8 numbers a0 a1 a2 b0 b1 b2 c0 c1),
bilinear or nearest, with Keras' fill modes. Every layer passes gradients back (for the
resampling ones, the transpose of the resampling, in NumPy), though augmentation usually sits
right after the input, where none is asked of it.
"""
import math
import numbers

import numpy as np

from fastconv import reference
from fastconv.keras import backend, microbatch
from fastconv.keras.layers.base import Layer, _in_call
from fastconv.shapes import checked_int

# Keras' backend.epsilon() default: Normalization divides by max(sqrt(variance), this).
_EPSILON = 1e-7
_FILL_MODES = ("reflect", "wrap", "constant", "nearest")  # what Keras' random layers accept
_INTERPOLATIONS = ("nearest", "bilinear")


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _choice(value, name, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def _number(value, name):
    if not _is_number(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _symmetric_range(factor, name, low=-1.0, high=1.0, low_open=False):
    """Keras' factor of the geometric layers: a number f gives (-|f|, |f|), a pair its sorted self;
    every value within [low, high] ((low, high] when low_open)."""
    values = list(factor) if isinstance(factor, (tuple, list)) else [factor]
    if isinstance(factor, (tuple, list)) and len(values) != 2:
        raise ValueError(f"{name} must be a number or a pair of numbers, got {factor!r}")
    for value in values:
        if not _is_number(value):
            raise ValueError(f"{name} must be a number or a pair of numbers, got {factor!r}")
        if value > high or value < low or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {factor!r}")
    if len(values) == 1:
        return -abs(float(values[0])), abs(float(values[0]))
    lower, upper = sorted(float(v) for v in values)
    return lower, upper


def _bounded_factor(factor, name, bounds):
    """Keras' base image layer factor (RandomRotation, RandomContrast, RandomBrightness): a number f in
    bounds gives (max(-|f|, bounds[0]), |f|); a pair (a, b) with a <= bounds[1] and b >= bounds[0]
    gives its sorted self."""
    low, high = bounds
    message = f"{name} must be a number or a pair of numbers in [{low}, {high}], got {factor!r}"
    if isinstance(factor, (tuple, list)):
        if len(factor) != 2 or not all(_is_number(v) for v in factor):
            raise ValueError(message)
        if factor[0] > high or factor[1] < low:
            raise ValueError(message)
        lower, upper = sorted(float(v) for v in factor)
        return lower, upper
    if not _is_number(factor) or not low <= factor <= high:
        raise ValueError(message)
    return max(-abs(float(factor)), float(low)), abs(float(factor))


def _value_range(value_range):
    if (not isinstance(value_range, (tuple, list)) or len(value_range) != 2
            or not all(_is_number(v) for v in value_range)):
        raise ValueError(f"value_range must be a pair of numbers (low, high), got {value_range!r}")
    low, high = sorted(float(v) for v in value_range)
    return low, high


def _aspect_crop_box(height, width, target_height, target_width):
    """Keras' smart_resize crop: the largest centred window of the target's aspect ratio, as
    (top, left, crop_height, crop_width)."""
    crop_height = max(min(height, int(float(width * target_height) / target_width)), 1)
    crop_width = max(min(width, int(float(height * target_width) / target_height)), 1)
    return int(float(height - crop_height) / 2), int(float(width - crop_width) / 2), crop_height, crop_width


def _resize_transform(in_height, in_width, out_height, out_width, interpolation):
    """The transform of Keras' resize (half-pixel centres): output pixel i reads (i + 0.5) * in / out - 0.5.

    Keras' nearest-neighbour resize reads floor((i + 0.5) * in / out); rounding the coordinate agrees
    except at ties, so the sample moves by a quarter of 1 / out: (i + 0.5) * in / out is a multiple
    of 1 / (2 out), so the moved sample lies at least 1 / (4 out) from every tie."""
    sx, sy = in_width / out_width, in_height / out_height
    shift_x = 0.25 / out_width if interpolation == "nearest" else 0.0
    shift_y = 0.25 / out_height if interpolation == "nearest" else 0.0
    return np.array([sx, 0.0, 0.5 * sx - 0.5 + shift_x, 0.0, sy, 0.5 * sy - 0.5 + shift_y, 0.0, 0.0])


def _resample(images, transforms, interpolation, fill_mode, fill_value=0.0, output_size=None):
    """affine_transform on the backend's ops (the C kernel for float32)."""
    return backend.ops_for(images).affine_transform(images, transforms, interpolation, fill_mode, fill_value,
                                                    output_size=output_size)


def _resample_backward(grad, transforms, input_shape, interpolation, fill_mode):
    """The transpose of _resample in the image (fill values are constants): each output pixel's
    gradient goes back to the pixels it read, with the weights it read them with."""
    n, h, w, c = input_shape
    out_h, out_w = grad.shape[1:3]
    transforms = np.broadcast_to(np.asarray(transforms, dtype=np.float64).reshape(-1, 8), (n, 8))
    samples, degenerate = reference._affine_samples(transforms, h, w, out_h, out_w, interpolation, fill_mode,
                                                    grad.dtype.type)
    flat_grad = grad.reshape(-1, c)
    reads_image = ~degenerate.reshape(-1)
    first_pixel = (np.arange(n) * (h * w))[:, None, None]
    dx = np.zeros((n * h * w, c), dtype=grad.dtype)
    for rows, cols, weights in samples:
        valid = ((rows >= 0) & (cols >= 0)).reshape(-1) & reads_image
        index = (first_pixel + rows * w + cols).reshape(-1)[valid]
        weighted = flat_grad[valid] * weights.reshape(-1)[valid, None]
        for channel in range(c):
            dx[:, channel] += np.bincount(index, weighted[:, channel], minlength=n * h * w).astype(grad.dtype)
    return dx.reshape(n, h, w, c)


class _ImagePreprocessingLayer(Layer):
    """Channels-last images: 4-D batches, or one 3-D image when the layer is called directly."""

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"data_format must be 'channels_last' (fastconv's image layout), got {data_format!r}")
        self.data_format = "channels_last"

    def build(self, input_shape):
        if isinstance(input_shape, list) or len(input_shape) not in (3, 4):
            raise ValueError(f"{type(self).__name__} {self.name!r} needs images (batch, height, width, channels), "
                             f"got shape {input_shape}")

    def forward(self, inputs, training=False):
        if inputs.ndim == 3:  # one image, as Keras accepts
            out, ctx = self._forward_batch(inputs[None], training)
            return out[0], (True, ctx)
        if inputs.ndim != 4:
            raise ValueError(f"{type(self).__name__} {self.name!r} needs images (batch, height, width, channels), "
                             f"got shape {inputs.shape}")
        out, ctx = self._forward_batch(inputs, training)
        return out, (False, ctx)

    def backward(self, ctx, grad):
        unbatched, ctx = ctx
        if unbatched:
            return self._backward_batch(ctx, grad[None])[0]
        return self._backward_batch(ctx, grad)

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


def _training_by_default(training):
    """Keras' augmentation layers declare call(..., training=True): called on their own, they augment."""
    return True if training is None and not _in_call.get() else training


class _RandomImageLayer(_ImagePreprocessingLayer):
    """An augmentation: random while training, identity at inference."""

    def __init__(self, seed=None, data_format=None, **kwargs):
        super().__init__(data_format, **kwargs)
        if seed is not None:
            seed = checked_int(seed, "seed")
        # A per-layer seed gives the layer its own stream; otherwise the seeded backend generator is used.
        self.seed = seed
        self._generator = None if seed is None else np.random.default_rng(seed)

    def __call__(self, inputs, *args, training=None, **kwargs):
        return super().__call__(inputs, *args, training=_training_by_default(training), **kwargs)

    def _rng(self):
        rng = self._generator or backend.rng()
        # deterministic="ranks": draws for the global batch, of which this rank keeps its rows
        return microbatch.BatchRows(rng) if microbatch.active() else rng

    def _forward_batch(self, images, training):
        if not training:
            return images, None
        return self._augment(images)

    def _backward_batch(self, ctx, grad):
        return grad if ctx is None else self._augment_backward(ctx, grad)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


class RandomFlip(_RandomImageLayer):
    """Flips each image with probability 1/2 while training: left-right ("horizontal"), top-bottom
    ("vertical"), or both together ("horizontal_and_vertical", Keras' default: one draw per image
    decides both flips, as in Keras)."""

    def __init__(self, mode="horizontal_and_vertical", seed=None, data_format=None, **kwargs):
        super().__init__(seed, data_format, **kwargs)
        self.mode = _choice(mode, "mode", ("horizontal", "vertical", "horizontal_and_vertical"))

    def _flip(self, images, flips):
        out = images.copy()
        if self.mode in ("horizontal", "horizontal_and_vertical"):
            out[flips] = out[flips, :, ::-1]
        if self.mode in ("vertical", "horizontal_and_vertical"):
            out[flips] = out[flips, ::-1]
        return out

    def _augment(self, images):
        flips = self._rng().uniform(size=images.shape[0]) <= 0.5
        return self._flip(images, flips), flips

    def _augment_backward(self, flips, grad):
        return self._flip(grad, flips)  # a flip is its own inverse and its own transpose

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class _RandomResampling(_RandomImageLayer):
    """Augmentations that resample each image through a random transform (the C kernel)."""

    def __init__(self, fill_mode="reflect", interpolation="bilinear", seed=None, fill_value=0.0, data_format=None,
                 **kwargs):
        super().__init__(seed, data_format, **kwargs)
        self.fill_mode = _choice(fill_mode, "fill_mode", _FILL_MODES)
        self.interpolation = _choice(interpolation, "interpolation", _INTERPOLATIONS)
        self.fill_value = _number(fill_value, "fill_value")

    def _augment(self, images):
        transforms = self._transforms(images.shape)
        out = _resample(images, transforms, self.interpolation, self.fill_mode, self.fill_value)
        return out, (transforms, images.shape)

    def _augment_backward(self, ctx, grad):
        transforms, input_shape = ctx
        return _resample_backward(grad, transforms, input_shape, self.interpolation, self.fill_mode)

    def get_config(self):
        return {**super().get_config(), "fill_mode": self.fill_mode, "interpolation": self.interpolation,
                "fill_value": self.fill_value}


class RandomRotation(_RandomResampling):
    """Rotates each image about its centre by a random angle while training: `factor` is a fraction
    of a full turn, f for [-f, f] * 360 degrees or (low, high); positive angles turn counter-clockwise."""

    def __init__(self, factor, fill_mode="reflect", interpolation="bilinear", seed=None, fill_value=0.0,
                 data_format=None, **kwargs):
        super().__init__(fill_mode, interpolation, seed, fill_value, data_format, **kwargs)
        self.factor = _bounded_factor(factor, "factor", (-1, 1))

    def _transforms(self, shape):
        n, height, width = shape[:3]
        angle = np.deg2rad(self._rng().uniform(self.factor[0] * 360.0, self.factor[1] * 360.0, size=n))
        cos, sin = np.cos(angle), np.sin(angle)
        cx, cy = 0.5 * (width - 1), 0.5 * (height - 1)
        # Output pixel p reads the input at R(angle) (p - centre) + centre (Keras' affine matrix).
        zeros = np.zeros(n)
        return np.stack([cos, -sin, cx - cx * cos + cy * sin, sin, cos, cy - cx * sin - cy * cos, zeros, zeros], 1)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor)}


class RandomTranslation(_RandomResampling):
    """Shifts each image by a random fraction of its height and width while training: each factor is
    f for [-f, f] or (low, high), in [-1, 1]; positive shifts go down and right."""

    def __init__(self, height_factor, width_factor, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, data_format=None, **kwargs):
        super().__init__(fill_mode, interpolation, seed, fill_value, data_format, **kwargs)
        self.height_range = _symmetric_range(height_factor, "height_factor")
        self.width_range = _symmetric_range(width_factor, "width_factor")
        self.height_factor, self.width_factor = height_factor, width_factor

    def _transforms(self, shape):
        n, height, width = shape[:3]
        rng = self._rng()
        dy = rng.uniform(*self.height_range, size=n) * height  # Keras draws the height shift first
        dx = rng.uniform(*self.width_range, size=n) * width
        ones, zeros = np.ones(n), np.zeros(n)
        return np.stack([ones, zeros, -dx, zeros, ones, -dy, zeros, zeros], 1)

    def get_config(self):
        return {**super().get_config(), "height_factor": _plain(self.height_factor),
                "width_factor": _plain(self.width_factor)}


class RandomZoom(_RandomResampling):
    """Zooms each image about its centre by a random amount while training: a factor f draws the
    scale of the sampled window from 1 + [-f, f] (or 1 + (low, high)), in (-1, 1]; positive values
    zoom out, negative zoom in. width_factor=None keeps the aspect ratio (the height's zoom is used)."""

    def __init__(self, height_factor, width_factor=None, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, data_format=None, **kwargs):
        super().__init__(fill_mode, interpolation, seed, fill_value, data_format, **kwargs)
        self.height_range = _symmetric_range(height_factor, "height_factor", low_open=True)
        self.width_range = None if width_factor is None else _symmetric_range(width_factor, "width_factor",
                                                                               low_open=True)
        self.height_factor, self.width_factor = height_factor, width_factor

    def _transforms(self, shape):
        n, height, width = shape[:3]
        rng = self._rng()
        zoom_y = rng.uniform(1.0 + self.height_range[0], 1.0 + self.height_range[1], size=n)
        zoom_x = zoom_y if self.width_range is None else rng.uniform(1.0 + self.width_range[0],
                                                                    1.0 + self.width_range[1], size=n)
        zeros = np.zeros(n)
        return np.stack([zoom_x, zeros, 0.5 * (width - 1) * (1.0 - zoom_x), zeros, zoom_y,
                         0.5 * (height - 1) * (1.0 - zoom_y), zeros, zeros], 1)

    def get_config(self):
        return {**super().get_config(), "height_factor": _plain(self.height_factor),
                "width_factor": _plain(self.width_factor)}


def _plain(factor):
    """A factor as JSON keeps it: tuples become lists."""
    return list(factor) if isinstance(factor, tuple) else factor


class RandomContrast(_RandomImageLayer):
    """Scales each image's channels about their mean while training: x -> (x - mean) * c + mean, the
    mean over height and width, c drawn per image from [1 - low, 1 + high], then clipped to
    value_range. As in Keras, a number f gives (low, high) = (0, f), i.e. c in [1, 1 + f] (Keras'
    factor bounds clip the lower end at 0); pass (f, f) for [1 - f, 1 + f]."""

    def __init__(self, factor, value_range=(0, 255), seed=None, data_format=None, **kwargs):
        super().__init__(seed, data_format, **kwargs)
        self.factor = _bounded_factor(factor, "factor", (0, 1))
        self.value_range = _value_range(value_range)

    def _augment(self, images):
        dtype = images.dtype.type
        contrast = self._rng().uniform(1.0 - self.factor[0], 1.0 + self.factor[1], size=(images.shape[0], 1, 1, 1))
        contrast = contrast.astype(images.dtype)
        mean = images.mean(axis=(1, 2), keepdims=True, dtype=images.dtype)
        adjusted = (images - mean) * contrast + mean
        low, high = dtype(self.value_range[0]), dtype(self.value_range[1])
        return np.clip(adjusted, low, high), (contrast, (adjusted >= low) & (adjusted <= high))

    def _augment_backward(self, ctx, grad):
        contrast, unclipped = ctx
        grad = grad * unclipped
        return grad * contrast + (1 - contrast) * grad.mean(axis=(1, 2), keepdims=True, dtype=grad.dtype)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor), "value_range": list(self.value_range)}


class RandomBrightness(_RandomImageLayer):
    """Adds to each image a random delta while training, drawn from factor * (high - low) of
    value_range (f for [-f, f] or (low, high), in [-1, 1]), then clips to value_range."""

    def __init__(self, factor, value_range=(0, 255), seed=None, data_format=None, **kwargs):
        super().__init__(seed, data_format, **kwargs)
        self.factor = _bounded_factor(factor, "factor", (-1, 1))
        self.value_range = _value_range(value_range)

    def _augment(self, images):
        dtype = images.dtype.type
        low, high = self.value_range
        delta = self._rng().uniform(self.factor[0], self.factor[1], size=(images.shape[0], 1, 1, 1)) * (high - low)
        brighter = images + delta.astype(images.dtype)
        low, high = dtype(low), dtype(high)
        return np.clip(brighter, low, high), (brighter >= low) & (brighter <= high)

    def _augment_backward(self, unclipped, grad):
        return grad * unclipped

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor), "value_range": list(self.value_range)}


def _crop_or_resize(images, top, left, crop_height, crop_width, height, width):
    """images[:, top:top + crop_height, left:left + crop_width], resized (bilinear) to (height, width)
    unless it has that size already; returns the output and what _crop_or_resize_backward needs."""
    window = images[:, top:top + crop_height, left:left + crop_width, :]
    geometry = (images.shape, top, left, crop_height, crop_width)
    if (crop_height, crop_width) == (height, width):
        return np.array(window), (geometry, None)
    transform = _resize_transform(crop_height, crop_width, height, width, "bilinear")
    return _resample(window, transform, "bilinear", "nearest", output_size=(height, width)), (geometry, transform)


def _crop_or_resize_backward(ctx, grad):
    (input_shape, top, left, crop_height, crop_width), transform = ctx
    if transform is not None:
        window_shape = (input_shape[0], crop_height, crop_width, input_shape[3])
        grad = _resample_backward(grad, transform, window_shape, "bilinear", "nearest")
    dx = np.zeros(input_shape, dtype=grad.dtype)
    dx[:, top:top + crop_height, left:left + crop_width, :] = grad
    return dx


class _SizedImageLayer(_ImagePreprocessingLayer):
    """Layers whose output has a given height and width."""

    def __init__(self, height, width, data_format=None, **kwargs):
        super().__init__(data_format, **kwargs)
        self.height = checked_int(height, "height", minimum=1)
        self.width = checked_int(width, "width", minimum=1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-3]) + (self.height, self.width, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


class RandomCrop(_SizedImageLayer):
    """Crops a random (height, width) window while training, at one place for the whole batch.

    Otherwise (at inference, or while training on images smaller than the target) it crops the
    largest centred window of the target's aspect ratio and resizes it (bilinear) to (height, width),
    as Keras' documentation says. (Keras 3's code passes images through unchanged at inference, an
    open bug that breaks the next layer's shape: keras-team/keras#21868; and it crops at random only
    when both sides are strictly larger than the target: here a side equal to it is cropped at 0.)"""

    def __init__(self, height, width, seed=None, data_format=None, **kwargs):
        super().__init__(height, width, data_format, **kwargs)
        if seed is not None:
            seed = checked_int(seed, "seed")
        self.seed = seed
        self._generator = None if seed is None else np.random.default_rng(seed)

    def __call__(self, inputs, *args, training=None, **kwargs):
        return super().__call__(inputs, *args, training=_training_by_default(training), **kwargs)

    def _forward_batch(self, images, training):
        in_height, in_width = images.shape[1:3]
        if training and in_height >= self.height and in_width >= self.width:
            rng = self._generator or backend.rng()
            top = min(int(rng.uniform(0, in_height - self.height + 1)), in_height - self.height)
            left = min(int(rng.uniform(0, in_width - self.width + 1)), in_width - self.width)
            box = (top, left, self.height, self.width)
        else:
            box = _aspect_crop_box(in_height, in_width, self.height, self.width)
        return _crop_or_resize(images, *box, self.height, self.width)

    def _backward_batch(self, ctx, grad):
        return _crop_or_resize_backward(ctx, grad)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


class CenterCrop(_SizedImageLayer):
    """Crops the centre (height, width) of each image (the extra row or column, when the difference is
    odd, is cut at the bottom or right); an image smaller than that on a side is instead cropped to the
    target's aspect ratio and resized (bilinear), as Keras' smart_resize does."""

    def _forward_batch(self, images, training):
        in_height, in_width = images.shape[1:3]
        if in_height >= self.height and in_width >= self.width:
            box = ((in_height - self.height) // 2, (in_width - self.width) // 2, self.height, self.width)
        else:
            box = _aspect_crop_box(in_height, in_width, self.height, self.width)
        return _crop_or_resize(images, *box, self.height, self.width)

    def _backward_batch(self, ctx, grad):
        return _crop_or_resize_backward(ctx, grad)


class Resizing(_SizedImageLayer):
    """Resizes images to (height, width), "bilinear" or "nearest", with Keras' half-pixel sampling
    (and no antialiasing, Keras' default). crop_to_aspect_ratio first crops the largest centred
    window of the target's aspect ratio; pad_to_aspect_ratio first pads the short side evenly with
    fill_value."""

    def __init__(self, height, width, interpolation="bilinear", crop_to_aspect_ratio=False, pad_to_aspect_ratio=False,
                 fill_mode="constant", fill_value=0.0, antialias=False, data_format=None, **kwargs):
        super().__init__(height, width, data_format, **kwargs)
        if interpolation in ("bicubic", "lanczos3", "lanczos5"):
            raise ValueError(f"interpolation={interpolation!r} is not supported by fastconv: use 'bilinear' or "
                             "'nearest'")
        self.interpolation = _choice(interpolation, "interpolation", _INTERPOLATIONS)
        if fill_mode != "constant":
            raise ValueError(f"fill_mode must be 'constant' (Keras' only padding mode), got {fill_mode!r}")
        if crop_to_aspect_ratio and pad_to_aspect_ratio:
            raise ValueError("only one of crop_to_aspect_ratio and pad_to_aspect_ratio can be True")
        if antialias:
            raise ValueError("antialias=True is not supported by fastconv (Keras' default is False)")
        self.crop_to_aspect_ratio = bool(crop_to_aspect_ratio)
        self.pad_to_aspect_ratio = bool(pad_to_aspect_ratio)
        self.fill_mode = fill_mode
        self.fill_value = _number(fill_value, "fill_value")
        self.antialias = False

    def _prepare(self, images):
        """The image the resize reads (after the aspect-ratio crop or pad) and how to undo that."""
        in_height, in_width = images.shape[1:3]
        if self.crop_to_aspect_ratio:
            top, left, crop_height, crop_width = _aspect_crop_box(in_height, in_width, self.height, self.width)
            return images[:, top:top + crop_height, left:left + crop_width, :], ("crop", top, left)
        if self.pad_to_aspect_ratio:
            # As Keras: one side is padded, by the same amount above and below (or left and right).
            pad_top = int(float(max(in_height, int(float(in_width * self.height) / self.width)) - in_height) / 2)
            pad_left = int(float(max(in_width, int(float(in_height * self.width) / self.height)) - in_width) / 2)
            pads = ((pad_top, pad_top), (0, 0)) if pad_top > 0 else ((0, 0), (pad_left, pad_left))
            padded = np.pad(images, ((0, 0),) + pads + ((0, 0),), constant_values=images.dtype.type(self.fill_value))
            return padded, ("pad", pads[0][0], pads[1][0])
        return images, None

    def _forward_batch(self, images, training):
        source, undo = self._prepare(images)
        in_height, in_width = source.shape[1:3]
        if (in_height, in_width) == (self.height, self.width):
            return np.array(source), (images.shape, undo, None, source.shape)
        transform = _resize_transform(in_height, in_width, self.height, self.width, self.interpolation)
        # Samples outside the image read its edge pixels, as Keras' resize does.
        out = _resample(source, transform, self.interpolation, "nearest", output_size=(self.height, self.width))
        return out, (images.shape, undo, transform, source.shape)

    def _backward_batch(self, ctx, grad):
        input_shape, undo, transform, source_shape = ctx
        if transform is not None:
            grad = _resample_backward(grad, transform, source_shape, self.interpolation, "nearest")
        if undo is None:
            return grad
        kind, top, left = undo
        if kind == "pad":
            return np.ascontiguousarray(grad[:, top:top + input_shape[1], left:left + input_shape[2], :])
        dx = np.zeros(input_shape, dtype=grad.dtype)
        dx[:, top:top + source_shape[1], left:left + source_shape[2], :] = grad
        return dx

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation,
                "crop_to_aspect_ratio": self.crop_to_aspect_ratio, "pad_to_aspect_ratio": self.pad_to_aspect_ratio,
                "fill_mode": self.fill_mode, "fill_value": self.fill_value, "antialias": False}


def _batches(data):
    """adapt()'s data as a sequence of arrays: an array is one batch; a PyDataset or any other
    sequence or iterable yields batches, of which a tuple's first item (x of (x, y)) is taken."""
    if isinstance(data, np.ndarray):
        yield data
        return
    if hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (str, bytes, dict)):
        items = (data[i] for i in range(len(data)))
    elif hasattr(data, "__iter__"):
        items = iter(data)
    else:
        raise TypeError(f"adapt() takes a numpy array, a PyDataset or an iterable of batches, got "
                        f"{type(data).__name__}")
    for batch in items:
        if isinstance(batch, (tuple, list)) and batch and not _is_number(batch[0]):
            batch = batch[0]
        yield np.asarray(batch)


class Normalization(Layer):
    """(x - mean) / sqrt(variance) per index of the kept `axis` (default -1: per channel), with
    sqrt(variance) floored at 1e-7; `invert=True` maps back. mean and variance are given, or learned
    from data by adapt() (as non-trainable weights, saved with the model)."""

    def __init__(self, axis=-1, mean=None, variance=None, invert=False, **kwargs):
        super().__init__(**kwargs)
        if axis is None:
            axis = ()
        elif isinstance(axis, (tuple, list)):
            axis = tuple(axis)
        else:
            axis = (axis,)
        for item in axis:
            checked_int(item, "axis", minimum=-2**31)
        self.axis = tuple(int(a) for a in axis)
        if (mean is None) != (variance is None):
            raise ValueError(f"mean and variance must be given together, got mean={mean!r} and variance={variance!r}")
        if mean is not None:
            for name, value in (("mean", mean), ("variance", variance)):
                arr = np.asarray(value)
                if arr.dtype == object or arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
                    raise TypeError(f"{name} must hold finite numbers, got {value!r}")
            if np.shape(mean) != np.shape(variance):
                raise ValueError(f"mean and variance must have the same shape, got {np.shape(mean)} and "
                                 f"{np.shape(variance)}")
            if np.ndim(mean) > len(self.axis):
                raise ValueError(f"mean must have at most as many axes as axis={self.axis} keeps, got shape "
                                 f"{np.shape(mean)}")
            if (np.asarray(variance) < 0).any():
                raise ValueError("variance must not be negative")
        self.input_mean, self.input_variance = mean, variance
        self.invert = bool(invert)
        self.adapt_mean = self.adapt_variance = None
        self._broadcast_shape = None

    def build(self, input_shape):
        ndim = len(input_shape)
        if any(not -ndim <= a < ndim for a in self.axis):
            raise ValueError(f"Normalization {self.name!r}: axis {self.axis} is out of range for inputs of shape "
                             f"{input_shape}")
        self._keep_axis = tuple(sorted(a % ndim for a in self.axis))
        for a in self._keep_axis:
            if input_shape[a] is None:
                raise ValueError(f"Normalization {self.name!r}: axis {a} of input shape {input_shape} must have a "
                                 "known size to keep a mean and variance per index")
        self._reduce_axis = tuple(a for a in range(ndim) if a not in self._keep_axis)
        self._broadcast_shape = tuple(input_shape[a] if a in self._keep_axis else 1 for a in range(ndim))
        kept_shape = tuple(input_shape[a] for a in self._keep_axis)
        if self.input_mean is None:
            self.adapt_mean = self.add_weight("mean", kept_shape, "zeros", trainable=False)
            self.adapt_variance = self.add_weight("variance", kept_shape, "ones", trainable=False)
            self.count = self.add_weight("count", (), "zeros", trainable=False)  # Keras keeps it: unused
        else:
            # Given values line up with the kept axes from the right, then broadcast (as in Keras).
            mean, variance = np.asarray(self.input_mean, np.float64), np.asarray(self.input_variance, np.float64)
            expanded = [1] * ndim
            for i in range(1, mean.ndim + 1):
                expanded[self._keep_axis[-i]] = mean.shape[-i]
            try:
                self._given = tuple(np.broadcast_to(v.reshape(expanded), self._broadcast_shape)
                                    for v in (mean, variance))
            except ValueError:
                raise ValueError(f"Normalization {self.name!r}: mean of shape {mean.shape} does not broadcast to "
                                 f"the kept axes {kept_shape}") from None
        self._set_input_spec(ndim, {a: input_shape[a] for a in self._keep_axis})
        self.built = True

    def adapt(self, data):
        """Learns the mean and variance of `data` over every axis not kept (a numpy array, or batches
        from a PyDataset, a list or a generator; batches are combined exactly, in float64)."""
        if self.input_mean is not None:
            raise ValueError(f"Normalization {self.name!r} was given mean and variance; adapt() would not use them")
        total_mean = total_variance = None
        total_count = 0
        for batch in _batches(data):
            if batch.dtype == object or batch.dtype.kind not in "fiub":
                raise TypeError(f"adapt() needs batches of numbers, got dtype {batch.dtype}")
            if not self.built:
                self.build(batch.shape)
            self._check_input_shape((None,) + batch.shape[1:] if 0 not in self._keep_axis else batch.shape)
            batch = batch.astype(np.float64)
            batch_mean = batch.mean(axis=self._reduce_axis)
            batch_variance = batch.var(axis=self._reduce_axis)
            batch_count = math.prod(batch.shape[a] for a in self._reduce_axis)
            if batch_count == 0:
                continue
            if total_mean is None:
                total_mean, total_variance, total_count = batch_mean, batch_variance, batch_count
                continue
            # Combine with what came before: the pooled variance about the new mean.
            total_count += batch_count
            weight = batch_count / total_count
            new_mean = total_mean * (1 - weight) + batch_mean * weight
            total_variance = ((total_variance + (total_mean - new_mean) ** 2) * (1 - weight)
                              + (batch_variance + (batch_mean - new_mean) ** 2) * weight)
            total_mean = new_mean
        if total_mean is None:
            raise ValueError("adapt() received no data (an empty array or no batches)")
        self.adapt_mean.assign(np.asarray(total_mean, dtype=self.adapt_mean.value.dtype))
        self.adapt_variance.assign(np.asarray(total_variance, dtype=self.adapt_variance.value.dtype))

    def _statistics(self, dtype):
        if self.input_mean is not None:
            mean, variance = self._given
        else:
            mean = self.adapt_mean.value.reshape(self._broadcast_shape)
            variance = self.adapt_variance.value.reshape(self._broadcast_shape)
        scale = np.maximum(np.sqrt(np.maximum(variance, 0)), _EPSILON)
        return mean.astype(dtype), scale.astype(dtype)

    def forward(self, inputs, training=False):
        mean, scale = self._statistics(inputs.dtype)
        if self.invert:
            return mean + inputs * scale, scale
        return (inputs - mean) / scale, scale

    def backward(self, ctx, grad):
        return grad * ctx if self.invert else grad / ctx

    def get_config(self):
        def plain(value):
            return None if value is None else np.asarray(value).tolist()
        return {**super().get_config(), "axis": list(self.axis), "invert": self.invert,
                "mean": plain(self.input_mean), "variance": plain(self.input_variance)}
