"""The affine resampler (C kernel and NumPy twin) and Keras 3's preprocessing and augmentation layers.

The transforms are checked against pixel positions worked out by hand, the C kernel against
fastconv.reference, resizing against an independent NumPy rendering of Keras' resize, the layers
against their formulas, and their backward passes against the transpose identity
<A x, g> = <x, A^T g> (or finite differences where they are not linear). The last test compares
with real Keras 3 and runs only where keras is importable.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv
from fastconv import keras, ops, reference
from fastconv.keras import backend

L = keras.layers
FILL_MODES = ["constant", "nearest", "reflect", "wrap", "mirror"]
INTERPOLATIONS = ["bilinear", "nearest"]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def shift_right(pixels):
    """The transform reading output column x from input column x - pixels."""
    return np.array([1.0, 0.0, -pixels, 0.0, 1.0, 0.0, 0.0, 0.0])


# ----- the resampler: hand-computed positions -----

@pytest.mark.parametrize("impl", [ops, reference])
@pytest.mark.parametrize("fill_mode, expected", [
    # [a b c d] moved two to the right: output x reads x - 2, so columns 0 and 1 read -2 and -1.
    ("constant", [9, 9, 1, 2]),
    ("nearest", [1, 1, 1, 2]),
    ("reflect", [2, 1, 1, 2]),   # d c b a | a b c d
    ("wrap", [3, 4, 1, 2]),      # a b c d | a b c d
    ("mirror", [3, 2, 1, 2]),    # d c b | a b c d
])
def test_fill_modes_by_hand(impl, fill_mode, expected):
    row = np.array([1, 2, 3, 4], dtype=np.float32).reshape(1, 1, 4, 1)
    for interpolation in INTERPOLATIONS:
        out = impl.affine_transform(row, shift_right(2), interpolation, fill_mode, fill_value=9)
        np.testing.assert_array_equal(out.ravel(), expected)


@pytest.mark.parametrize("impl", [ops, reference])
def test_half_pixel_shift_bilinear_and_nearest_rounding(impl):
    row = np.array([2, 4, 8, 16], dtype=np.float32).reshape(1, 1, 4, 1)
    bilinear = impl.affine_transform(row, shift_right(0.5), "bilinear", "constant", fill_value=10)
    # Column 0 reads -0.5: half the fill value and half the first pixel.
    np.testing.assert_array_equal(bilinear.ravel(), [6, 3, 6, 12])
    nearest = impl.affine_transform(row, shift_right(0.5), "nearest", "constant", fill_value=10)
    # Coordinates -0.5, 0.5, 1.5, 2.5 round half to even: -0 (inside), 0, 2, 2.
    np.testing.assert_array_equal(nearest.ravel(), [2, 2, 8, 8])


@pytest.mark.parametrize("impl", [ops, reference])
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_rotate_one_hot_by_90_degrees(impl, interpolation):
    image = np.zeros((1, 5, 5, 2), dtype=np.float32)
    image[0, 1, 3] = [1, 5]  # row 1, column 3: the top-right quadrant
    # Output (x, y) reads R(90) ((x, y) - c) + c = (4 - y, x) about the centre c = (2, 2).
    transform = np.array([0, -1, 4, 1, 0, 0, 0, 0], dtype=np.float64)
    out = impl.affine_transform(image, transform, interpolation, "constant")
    expected = np.zeros_like(image)
    expected[0, 1, 1] = [1, 5]  # counter-clockwise: top-right goes to top-left
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("impl", [ops, reference])
def test_projective_transform_and_degenerate_pixels(impl):
    image = np.arange(1, 13, dtype=np.float32).reshape(1, 1, 12, 1)
    # k = 0.5 x + 1: output column 2 reads column (2 + 0) / 2 = 1, column 6 reads 6 / 4 = 1.5.
    out = impl.affine_transform(image, [1, 0, 0, 0, 1, 0, 0.5, 0], "bilinear", "constant", fill_value=-1)
    assert out[0, 0, 2, 0] == image[0, 0, 1, 0]
    assert out[0, 0, 6, 0] == pytest.approx(2.5)
    # k = 1 - 0.5 x is 0 at column 2: that pixel samples nothing and takes the fill value in any mode.
    for fill_mode in FILL_MODES:
        out = impl.affine_transform(image, [1, 0, 0, 0, 1, 0, -0.5, 0], "bilinear", fill_mode, fill_value=-7)
        assert out[0, 0, 2, 0] == -7
        assert out[0, 0, 0, 0] == image[0, 0, 0, 0]


@pytest.mark.parametrize("impl", [ops, reference])
def test_output_size_and_one_transform_for_the_batch(impl, rng):
    images = rng.normal(size=(3, 4, 5, 2)).astype(np.float32)
    # Scale 2 down: output (x, y) reads (x / 2, y / 2); even output pixels land on input pixels.
    out = impl.affine_transform(images, [0.5, 0, 0, 0, 0.5, 0, 0, 0], "bilinear", "nearest", output_size=(8, 10))
    assert out.shape == (3, 8, 10, 2)
    np.testing.assert_array_equal(out[:, ::2, ::2], images)
    np.testing.assert_allclose(out[:, 0, 1], (images[:, 0, 0] + images[:, 0, 1]) / 2, rtol=1e-6)


# ----- the C kernel against the NumPy twin -----

@pytest.mark.parametrize("fill_mode", FILL_MODES)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_kernel_matches_reference(rng, fill_mode, interpolation):
    images = rng.normal(size=(4, 7, 9, 3)).astype(np.float32)
    # Random projective transforms whose samples reach well outside the image (every fill path).
    transforms = rng.normal(size=(4, 8)) * [1.2, 0.8, 6, 0.8, 1.2, 6, 0.02, 0.02]
    for output_size in (None, (5, 13)):
        got = ops.affine_transform(images, transforms, interpolation, fill_mode, 0.25, output_size=output_size)
        want = reference.affine_transform(images, transforms, interpolation, fill_mode, 0.25, output_size=output_size)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    single = ops.affine_transform(images[1], transforms[1], interpolation, fill_mode, 0.25)
    np.testing.assert_allclose(single, reference.affine_transform(images, transforms, interpolation, fill_mode,
                                                                  0.25)[1], rtol=1e-6, atol=1e-6)


@settings(max_examples=60, deadline=None, database=None)
@given(st.data())
def test_kernel_matches_reference_on_any_geometry(data):
    n, h, w, c = (data.draw(st.integers(1, limit), label=name) for name, limit in
                  (("n", 3), ("h", 6), ("w", 6), ("c", 4)))
    output_size = data.draw(st.tuples(st.integers(1, 7), st.integers(1, 7)), label="output_size")
    numbers = st.floats(-8, 8, allow_nan=False, width=32)
    transforms = np.array(data.draw(st.lists(st.lists(numbers, min_size=6, max_size=6), min_size=n, max_size=n),
                                    label="affine part"))
    perspective = data.draw(st.sampled_from([0.0, 0.3]), label="perspective") * np.array(
        data.draw(st.lists(st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=2), min_size=n,
                           max_size=n), label="c0 c1"))
    transforms = np.concatenate([transforms, perspective], axis=1)
    fill_mode = data.draw(st.sampled_from(FILL_MODES), label="fill_mode")
    interpolation = data.draw(st.sampled_from(INTERPOLATIONS), label="interpolation")
    images = np.random.default_rng(n * 100 + h * 10 + w).normal(size=(n, h, w, c)).astype(np.float32)
    got = ops.affine_transform(images, transforms, interpolation, fill_mode, 0.5, output_size=output_size)
    want = reference.affine_transform(images, transforms, interpolation, fill_mode, 0.5, output_size=output_size)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_reference_keeps_float64(rng):
    images = rng.normal(size=(2, 5, 5, 1))
    out = reference.affine_transform(images, shift_right(0.3), "bilinear", "reflect")
    assert out.dtype == np.float64
    assert ops.affine_transform(images, shift_right(0.3)).dtype == np.float32


def test_kernel_result_is_the_same_for_any_thread_count(rng):
    images = rng.normal(size=(16, 40, 40, 3)).astype(np.float32)
    transforms = rng.normal(size=(16, 8)) * [0.3, 0.3, 5, 0.3, 0.3, 5, 0, 0] + [1, 0, 0, 0, 1, 0, 0, 0]
    before = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(1)
        one = ops.affine_transform(images, transforms, "bilinear", "reflect")
        fastconv.set_num_threads(2)
        two = ops.affine_transform(images, transforms, "bilinear", "reflect")
    finally:
        fastconv.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


def test_huge_coordinates_stay_in_range():
    image = np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1)
    for fill_mode in FILL_MODES:
        out = ops.affine_transform(image, [1, 0, 3e15, 0, 1, -4e17, 0, 0], "bilinear", fill_mode, fill_value=-1)
        want = reference.affine_transform(image, [1, 0, 3e15, 0, 1, -4e17, 0, 0], "bilinear", fill_mode,
                                          fill_value=-1)
        np.testing.assert_array_equal(out, want)
        assert fill_mode == "constant" or set(out.ravel()) <= set(image.ravel())


@pytest.mark.parametrize("impl", [ops, reference])
def test_affine_transform_rejects_bad_arguments(impl):
    image = np.zeros((2, 3, 3, 1), dtype=np.float32)
    identity = np.eye(3).ravel()[:8]
    with pytest.raises(ValueError, match="interpolation"):
        impl.affine_transform(image, identity, interpolation="bicubic")
    with pytest.raises(ValueError, match="fill_mode"):
        impl.affine_transform(image, identity, fill_mode="edge")
    with pytest.raises(TypeError, match="fill_value"):
        impl.affine_transform(image, identity, fill_value="0")
    with pytest.raises(ValueError, match="data_format"):
        impl.affine_transform(image, identity, data_format="channels_first")
    with pytest.raises(ValueError, match="transform must have shape"):
        impl.affine_transform(image, np.zeros(6))
    with pytest.raises(ValueError, match="3 transforms for a batch of 2"):
        impl.affine_transform(image, np.zeros((3, 8)))
    with pytest.raises(ValueError, match="finite"):
        impl.affine_transform(image, [np.nan, 0, 0, 0, 1, 0, 0, 0])
    with pytest.raises(TypeError, match="transform"):
        impl.affine_transform(image, ["a"] * 8)
    with pytest.raises(ValueError, match="images must be 3-D"):
        impl.affine_transform(np.zeros((3, 3)), identity)
    with pytest.raises(ValueError, match="height and a width"):
        impl.affine_transform(np.zeros((1, 0, 3, 1)), identity)
    with pytest.raises(ValueError, match="output_size"):
        impl.affine_transform(image, identity, output_size=(0, 3))
    assert impl.affine_transform(np.zeros((0, 3, 3, 2)), np.zeros((0, 8))).shape == (0, 3, 3, 2)


# ----- resizing against Keras' resize, written independently -----

def keras_resize_bilinear(images, height, width):
    """Keras' (jax.image.resize) bilinear resize without antialiasing: per axis, a triangle kernel at
    (i + 0.5) * in / out - 0.5, its weights normalised to sum to 1."""
    def weights(size_in, size_out):
        centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
        w = np.maximum(0, 1 - np.abs(centres[None, :] - np.arange(size_in)[:, None]))
        return w / w.sum(axis=0, keepdims=True)
    return np.einsum("nhwc,hi,wj->nijc", images.astype(np.float64), weights(images.shape[1], height),
                     weights(images.shape[2], width))


def keras_resize_nearest(images, height, width):
    rows = np.floor((np.arange(height, dtype=np.float32) + 0.5) * images.shape[1] / height).astype(int)
    cols = np.floor((np.arange(width, dtype=np.float32) + 0.5) * images.shape[2] / width).astype(int)
    return images[:, rows][:, :, cols]


@pytest.mark.parametrize("size_in, size_out", [((4, 4), (2, 2)), ((2, 6), (3, 4)), ((6, 9), (4, 6)),
                                               ((5, 7), (12, 3)), ((3, 3), (7, 11)), ((8, 5), (8, 5))])
def test_resizing_matches_keras_resize(rng, size_in, size_out):
    images = rng.normal(size=(2,) + size_in + (3,)).astype(np.float32)
    bilinear = L.Resizing(*size_out)(images)
    np.testing.assert_allclose(bilinear, keras_resize_bilinear(images, *size_out), rtol=1e-5, atol=1e-5)
    # Nearest: including sizes where (i + 0.5) * in / out falls exactly on an integer (4 -> 2, 2 -> 3).
    np.testing.assert_array_equal(L.Resizing(*size_out, interpolation="nearest")(images),
                                  keras_resize_nearest(images, *size_out))


def test_resizing_crop_and_pad_to_aspect_ratio(rng):
    images = rng.normal(size=(2, 6, 10, 1)).astype(np.float32)
    # Crop: the largest centred 1:1 window of 6 x 10 is columns 2..7.
    cropped = L.Resizing(3, 3, crop_to_aspect_ratio=True)(images)
    np.testing.assert_allclose(cropped, keras_resize_bilinear(images[:, :, 2:8], 3, 3), rtol=1e-5, atol=1e-5)
    # Pad: 6 x 10 to 1:1 adds two rows of the fill value above and below (10 x 10).
    padded = L.Resizing(5, 5, pad_to_aspect_ratio=True, fill_value=3.0)(images)
    source = np.pad(images, ((0, 0), (2, 2), (0, 0), (0, 0)), constant_values=3.0)
    np.testing.assert_allclose(padded, keras_resize_bilinear(source, 5, 5), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="only one of"):
        L.Resizing(3, 3, crop_to_aspect_ratio=True, pad_to_aspect_ratio=True)
    with pytest.raises(ValueError, match="bicubic"):
        L.Resizing(3, 3, interpolation="bicubic")
    with pytest.raises(ValueError, match="antialias"):
        L.Resizing(3, 3, antialias=True)
    with pytest.raises(ValueError, match="height"):
        L.Resizing(0, 3)


# ----- the random layers -----

RANDOM_LAYERS = [
    lambda seed: L.RandomFlip(seed=seed),
    lambda seed: L.RandomRotation(0.2, seed=seed),
    lambda seed: L.RandomTranslation(0.2, 0.3, seed=seed),
    lambda seed: L.RandomZoom(0.3, 0.2, seed=seed),
    lambda seed: L.RandomContrast(0.5, seed=seed),
    lambda seed: L.RandomBrightness(0.3, seed=seed),
]


@pytest.mark.parametrize("make", RANDOM_LAYERS)
def test_random_layers_are_identity_at_inference_and_seeded(make, rng):
    images = rng.uniform(0, 255, size=(6, 8, 10, 3)).astype(np.float32)
    np.testing.assert_array_equal(make(3)(images, training=False), images)
    first, again = make(3)(images, training=True), make(3)(images, training=True)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, images)
    # Called on its own without training=, an augmentation layer augments (Keras' call default);
    # inside a model, only fit trains it.
    np.testing.assert_array_equal(make(3)(images), first)
    model = keras.Sequential([keras.Input(shape=(8, 10, 3)), make(3)])
    np.testing.assert_array_equal(model.predict(images, verbose=0), images)
    np.testing.assert_array_equal(model(images), images)
    layer = make(3)
    assert not np.array_equal(layer(images, training=True), layer(images, training=True))  # the stream goes on
    # Without seed=, the shared generator behind keras.utils.set_random_seed decides.
    keras.utils.set_random_seed(7)
    unseeded = make(None)(images, training=True)
    keras.utils.set_random_seed(7)
    np.testing.assert_array_equal(make(None)(images, training=True), unseeded)


def test_random_flip_modes(rng):
    images = rng.normal(size=(64, 3, 4, 1)).astype(np.float32)
    both = L.RandomFlip(seed=0)(images, training=True)
    flipped = [np.array_equal(out, image[::-1, ::-1]) for out, image in zip(both, images)]
    kept = [np.array_equal(out, image) for out, image in zip(both, images)]
    assert all(f != k for f, k in zip(flipped, kept))  # one draw decides both flips
    assert 16 < sum(flipped) < 48
    horizontal = L.RandomFlip("horizontal", seed=0)(images, training=True)
    assert all(np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
               for out, image in zip(horizontal, images))
    vertical = L.RandomFlip("vertical", seed=0)(images, training=True)
    assert all(np.array_equal(out, image) or np.array_equal(out, image[::-1]) for out, image in zip(vertical, images))
    with pytest.raises(ValueError, match="mode"):
        L.RandomFlip("diagonal")


def test_random_rotation_by_a_quarter_turn():
    image = np.zeros((2, 5, 5, 1), dtype=np.float32)
    image[:, 1, 3] = 1
    out = L.RandomRotation((0.25, 0.25), fill_mode="constant")(image, training=True)  # exactly 90 degrees
    expected = np.zeros_like(image)
    expected[:, 1, 1] = 1
    np.testing.assert_allclose(out, expected, atol=1e-6)
    half_turn = L.RandomRotation((0.5, 0.5), interpolation="nearest")(image, training=True)
    expected = np.zeros_like(image)
    expected[:, 3, 1] = 1
    np.testing.assert_array_equal(half_turn, expected)


def test_random_rotation_draws_one_angle_per_image(rng):
    images = np.repeat(rng.normal(size=(1, 9, 9, 1)).astype(np.float32), 4, axis=0)
    out = L.RandomRotation(0.5, seed=1)(images, training=True)
    assert len({out[i].tobytes() for i in range(4)}) == 4


@pytest.mark.parametrize("fill_mode, first_column", [("constant", "fill"), ("nearest", 0), ("reflect", 0),
                                                     ("wrap", -1)])
def test_random_translation_by_one_pixel(rng, fill_mode, first_column):
    images = rng.normal(size=(3, 4, 8, 2)).astype(np.float32)
    layer = L.RandomTranslation((0, 0), (1 / 8, 1 / 8), fill_mode=fill_mode, fill_value=5.0)  # one column right
    out = layer(images, training=True)
    np.testing.assert_array_equal(out[:, :, 1:], images[:, :, :-1])
    np.testing.assert_array_equal(out[:, :, 0], 5.0 if first_column == "fill" else images[:, :, first_column])
    down = L.RandomTranslation((0.25, 0.25), 0, interpolation="nearest", fill_mode="constant")(images, training=True)
    np.testing.assert_array_equal(down[:, 1:], images[:, :-1])  # a quarter of 4 rows: one row down
    np.testing.assert_array_equal(down[:, 0], 0.0)


def test_random_zoom_scales_about_the_centre():
    image = np.zeros((1, 9, 9, 1), dtype=np.float32)
    image[0, 2, 6] = 1  # two up and two right of the centre (4, 4)
    # Zoom factor -0.5: output pixels read at half the distance from the centre (zoomed in, 2x).
    out = L.RandomZoom((-0.5, -0.5), interpolation="nearest", fill_mode="constant")(image, training=True)
    assert out[0, 0, 8, 0] == 1 and out[0, 4, 4, 0] == 0
    # Zoom factor 1: output pixels read at twice the distance (zoomed out, 1/2): (6, 2) -> (5, 3).
    out = L.RandomZoom((1, 1), interpolation="nearest", fill_mode="constant")(image, training=True)
    assert out[0, 3, 5, 0] == 1 and out.sum() == 1
    # width_factor apart from height_factor: zoom only across.
    out = L.RandomZoom((0, 0), (1, 1), interpolation="nearest", fill_mode="constant")(image, training=True)
    assert out[0, 2, 5, 0] == 1 and out.sum() == 1
    with pytest.raises(ValueError, match="height_factor"):
        L.RandomZoom(-1.0)
    with pytest.raises(ValueError, match="width_factor"):
        L.RandomZoom(0.2, (0.1, 2))


def test_random_contrast(rng):
    images = rng.uniform(50, 200, size=(32, 6, 7, 3)).astype(np.float32)
    mean = images.mean(axis=(1, 2), keepdims=True)
    out = L.RandomContrast((-0.5, 0.5))(images, training=True)  # c in [1.5, 1.5]
    np.testing.assert_allclose(out, np.clip((images - mean) * 1.5 + mean, 0, 255), rtol=1e-5, atol=1e-3)
    # As in Keras, factor 0.2 draws c from [1, 1.2]: read c back from each image (least squares).
    small = rng.uniform(100, 150, size=(64, 6, 7, 3)).astype(np.float64)
    centred = small - small.mean(axis=(1, 2), keepdims=True)
    out = L.RandomContrast(0.2, seed=4)(small, training=True)
    out_centred = out - out.mean(axis=(1, 2), keepdims=True)
    c = (out_centred * centred).sum(axis=(1, 2, 3)) / (centred ** 2).sum(axis=(1, 2, 3))
    assert c.min() >= 1 - 1e-4 and c.max() <= 1.2 + 1e-4 and c.max() - c.min() > 0.1
    np.testing.assert_allclose(out_centred, c[:, None, None, None] * centred, atol=1e-3)
    clipped = L.RandomContrast((-1, 1), value_range=(0, 1))(images / 255, training=True)
    assert clipped.min() >= 0 and clipped.max() <= 1
    with pytest.raises(ValueError, match="factor"):
        L.RandomContrast(1.5)
    with pytest.raises(ValueError, match="value_range"):
        L.RandomContrast(0.1, value_range=(0,))


def test_random_brightness(rng):
    images = rng.uniform(0, 1, size=(64, 3, 4, 3)).astype(np.float32)
    out = L.RandomBrightness((0.1, 0.1), value_range=(0, 1))(images, training=True)
    np.testing.assert_allclose(out, np.clip(images + 0.1, 0, 1), rtol=1e-6)
    out = L.RandomBrightness(0.2, value_range=(0, 255), seed=2)(images * 255, training=True)
    unclipped = (out > 0) & (out < 255)
    delta = np.where(unclipped, out - images * 255, np.nan)
    per_image = np.nanmean(delta, axis=(1, 2, 3))
    assert np.nanmax(np.abs(delta - per_image[:, None, None, None])) < 1e-3  # one delta per image
    assert per_image.min() >= -51.001 and per_image.max() <= 51.001 and per_image.max() - per_image.min() > 20
    with pytest.raises(ValueError, match="factor"):
        L.RandomBrightness((0.1, 0.2, 0.3))


def test_random_crop(rng):
    images = rng.normal(size=(4, 10, 12, 2)).astype(np.float32)
    layer = L.RandomCrop(6, 5, seed=0)
    out = layer(images, training=True)
    assert out.shape == (4, 6, 5, 2)
    matches = [(top, left) for top in range(5) for left in range(8)
               if np.array_equal(out, images[:, top:top + 6, left:left + 5])]
    assert len(matches) == 1  # one window, the same for the whole batch
    tops_lefts = set()
    for _ in range(30):
        crop = layer(images, training=True)
        tops_lefts |= {(t, l) for t in range(5) for l in range(8) if np.array_equal(crop, images[:, t:t + 6, l:l + 5])}
    assert len(tops_lefts) > 5
    # At inference: the largest centred window of the target's aspect ratio (6:5 in 10 x 12 is
    # 10 x 8, columns 2..9), resized to the target.
    np.testing.assert_allclose(layer(images, training=False), keras_resize_bilinear(images[:, :, 2:10], 6, 5),
                               rtol=1e-5, atol=1e-5)
    # Images smaller than the target are resized while training too.
    assert L.RandomCrop(12, 12)(images, training=True).shape == (4, 12, 12, 2)
    np.testing.assert_array_equal(L.RandomCrop(6, 5, seed=0)(images), out)  # on its own: training
    assert layer.compute_output_shape((None, 10, 12, 2)) == (None, 6, 5, 2)


def test_center_crop(rng):
    images = rng.normal(size=(2, 7, 8, 1)).astype(np.float32)
    # 7 -> 4 rows: start at 3 // 2 = 1 (the extra row is cut at the bottom); 8 -> 3 columns: start at 2.
    np.testing.assert_array_equal(L.CenterCrop(4, 3)(images), images[:, 1:5, 2:5])
    np.testing.assert_array_equal(L.CenterCrop(7, 8)(images), images)
    # Taller than the input: crop to the aspect ratio (7 x 3.5 -> 7 x 3, columns 2..4) and resize.
    np.testing.assert_allclose(L.CenterCrop(10, 5)(images), keras_resize_bilinear(images[:, :, 2:5], 10, 5),
                               rtol=1e-5, atol=1e-5)


def test_layers_take_one_image_and_check_arguments(rng):
    image = rng.normal(size=(6, 6, 3)).astype(np.float32)
    assert L.RandomRotation(0.1)(image, training=True).shape == (6, 6, 3)
    assert L.Resizing(3, 4)(image).shape == (3, 4, 3)
    with pytest.raises(ValueError, match="needs images"):
        L.RandomFlip()(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="channels_last"):
        L.RandomFlip(data_format="channels_first")
    with pytest.raises(ValueError, match="fill_mode"):
        L.RandomRotation(0.1, fill_mode="mirror")  # Keras' layers take four modes; the op takes mirror too
    with pytest.raises(ValueError, match="interpolation"):
        L.RandomTranslation(0.1, 0.1, interpolation="bicubic")
    with pytest.raises(ValueError, match="factor"):
        L.RandomRotation(1.5)
    with pytest.raises(ValueError, match="width_factor"):
        L.RandomTranslation(0.1, "0.1")
    with pytest.raises(TypeError, match="fill_value"):
        L.RandomZoom(0.1, fill_value=None)
    with pytest.raises(TypeError, match="seed"):
        L.RandomFlip(seed=1.5)


# ----- gradients -----

def transpose_identity(layer, images, rng, training=True):
    """<A x, g> == <x, A^T g> for a layer that computes A x + b (b: its output for zeros; the random
    geometric layers have b = 0 whatever they draw, with fill value 0)."""
    out, ctx = layer.forward(images, training=training)
    grad = rng.normal(size=out.shape)
    dx = layer.backward(ctx, grad)
    assert dx.shape == images.shape
    offset = layer.forward(np.zeros_like(images), training=training)[0]
    np.testing.assert_allclose(np.vdot(out - offset, grad), np.vdot(images, dx), rtol=1e-9)


@pytest.mark.parametrize("make", [
    lambda: L.RandomFlip(seed=1),
    lambda: L.RandomRotation(0.3, seed=1),
    lambda: L.RandomRotation(0.3, fill_mode="constant", seed=1),
    lambda: L.RandomTranslation(0.4, 0.4, fill_mode="wrap", interpolation="nearest", seed=1),
    lambda: L.RandomZoom(0.5, fill_mode="nearest", seed=1),
    lambda: L.RandomCrop(4, 5, seed=1),
    lambda: L.RandomCrop(9, 9, seed=1),
    lambda: L.CenterCrop(4, 3),
    lambda: L.CenterCrop(9, 4),
    lambda: L.Resizing(9, 4),
    lambda: L.Resizing(3, 5, interpolation="nearest"),
    lambda: L.Resizing(4, 4, crop_to_aspect_ratio=True),
    lambda: L.Resizing(4, 8, pad_to_aspect_ratio=True),
    lambda: L.Normalization(mean=[1.0, 2.0], variance=[4.0, 0.25]),
    lambda: L.Normalization(axis=None, mean=1.0, variance=9.0, invert=True),
])
def test_backward_is_the_transpose(make, rng):
    images = rng.normal(size=(3, 6, 7, 2))  # float64: the NumPy path, exact to rounding
    layer = make()
    layer.build((None,) + images.shape[1:])
    layer.built = True
    transpose_identity(layer, images, rng)


@pytest.mark.parametrize("make", [lambda: L.RandomContrast((0.3, 0.6), value_range=(-2.5, 2.5), seed=2),
                                  lambda: L.RandomBrightness(0.4, value_range=(-2.5, 2.5), seed=2)])
def test_backward_of_the_value_layers_by_finite_differences(make, rng):
    images = rng.normal(size=(2, 4, 5, 2))
    layer = make()
    state = layer._generator.bit_generator.state
    out, ctx = layer.forward(images, training=True)
    assert (np.abs(out) >= 2.5).any()  # some values are clipped
    grad = rng.normal(size=out.shape)
    dx = layer.backward(ctx, grad)
    direction = rng.normal(size=images.shape)
    eps = 1e-6

    def loss(x):
        layer._generator.bit_generator.state = state  # the same draws as the forward pass above
        return np.vdot(layer.forward(x, training=True)[0], grad)
    numeric = (loss(images + eps * direction) - loss(images - eps * direction)) / (2 * eps)
    assert np.vdot(dx, direction) == pytest.approx(numeric, rel=1e-5)


# ----- Normalization -----

def test_normalization_adapt(rng):
    data = rng.normal(3, 2, size=(50, 4, 5, 3)).astype(np.float32)
    layer = L.Normalization()
    layer.adapt(data)
    np.testing.assert_allclose(layer.adapt_mean.numpy(), data.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(layer.adapt_variance.numpy(), data.astype(np.float64).var(axis=(0, 1, 2)), rtol=1e-6)
    out = layer(data)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1, rtol=1e-5)
    # Batches of unequal sizes (a list, a generator, (x, y) pairs, a sequence) combine exactly.
    pieces = [data[:7], data[7:30], data[30:]]
    for batches in (pieces, iter(pieces), [(p, np.zeros(len(p))) for p in pieces], _Sequence(pieces)):
        other = L.Normalization()
        other.adapt(batches)
        np.testing.assert_allclose(other.adapt_mean.numpy(), layer.adapt_mean.numpy(), rtol=1e-6)
        np.testing.assert_allclose(other.adapt_variance.numpy(), layer.adapt_variance.numpy(), rtol=1e-6)
    scalar = L.Normalization(axis=None)
    scalar.adapt(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_allclose(scalar(np.array([1.0, 2.0, 3.0])), [-1.4142135, -0.70710677, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="no data"):
        L.Normalization().adapt([])
    with pytest.raises(ValueError, match="axis"):
        layer.adapt(rng.normal(size=(4, 4, 5, 2)))


class _Sequence:
    """A PyDataset-like object: __len__ and __getitem__."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def test_normalization_given_statistics_and_invert():
    data = np.array([[0.0, 7.0, 4.0], [2.0, 9.0, 6.0], [0.0, 7.0, 4.0], [2.0, 9.0, 6.0]], dtype=np.float32)
    layer = L.Normalization(axis=-1)
    layer.adapt(data)
    np.testing.assert_allclose(layer(data[:1]), [[-1, -1, -1]], rtol=1e-6)
    inverse = L.Normalization(axis=-1, invert=True)
    inverse.adapt(data)
    np.testing.assert_allclose(inverse(np.array([[1.0, 2.0, 3.0]])), [[2, 10, 8]], rtol=1e-6)
    given = L.Normalization(mean=3.0, variance=2.0)
    np.testing.assert_allclose(given(np.array([[1.0], [2.0], [3.0]])), [[-1.4142135], [-0.70710677], [0]],
                               rtol=1e-6)
    assert given.weights == []
    zero_variance = L.Normalization(mean=[0.0], variance=[0.0])
    assert np.isfinite(zero_variance(np.ones((2, 1)))).all()  # sqrt(variance) is floored at 1e-7
    with pytest.raises(ValueError, match="together"):
        L.Normalization(mean=1.0)
    with pytest.raises(ValueError, match="same shape"):
        L.Normalization(mean=[1.0, 2.0], variance=[1.0])
    with pytest.raises(ValueError, match="adapt"):
        given.adapt(data)


# ----- in models: training, inference, configs and saving -----

ALL_LAYERS = [
    L.RandomFlip("horizontal", seed=1), L.RandomRotation((-0.1, 0.2), fill_mode="nearest", seed=2),
    L.RandomTranslation(0.1, (0.0, 0.2), seed=3), L.RandomZoom(0.2, None, interpolation="nearest"),
    L.RandomContrast(0.3, value_range=(0, 1)), L.RandomBrightness(0.1, value_range=(0, 1), seed=4),
    L.RandomCrop(10, 10, seed=5), L.Resizing(12, 12, interpolation="nearest", crop_to_aspect_ratio=True),
    L.CenterCrop(8, 8), L.Normalization(),
]


def test_configs_round_trip():
    for layer in ALL_LAYERS:
        config = layer.get_config()
        clone = L.LAYER_CLASSES[type(layer).__name__].from_config(config)
        assert clone.get_config() == config


def test_model_with_augmentation_trains_predicts_and_saves(rng, tmp_path):
    x = rng.uniform(0, 1, size=(24, 12, 12, 1)).astype(np.float32)
    y = (x[:, :6].mean(axis=(1, 2, 3)) > x[:, 6:].mean(axis=(1, 2, 3))).astype(np.int64)
    backend.seed(0)
    model = keras.Sequential([keras.Input(shape=(12, 12, 1))] + [
        L.RandomFlip("horizontal"), L.RandomRotation(0.05), L.RandomTranslation(0.1, 0.1), L.RandomZoom(0.1),
        L.RandomContrast(0.2, value_range=(0, 1)), L.RandomBrightness(0.1, value_range=(0, 1)), L.RandomCrop(10, 10),
        L.Resizing(12, 12), L.CenterCrop(10, 10), L.Normalization(),
        L.Conv2D(4, 3, activation="relu"), L.Flatten(), L.Dense(2, activation="softmax"),
    ])
    normalization = next(layer for layer in model.layers if isinstance(layer, L.Normalization))
    normalization.adapt(x[:, 1:11, 1:11])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    first = model.predict(x, verbose=0)
    np.testing.assert_array_equal(first, model.predict(x, verbose=0))  # no augmentation at inference
    path = str(tmp_path / "augmented.fastconv")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), first, rtol=1e-6, atol=1e-6)
    loaded_normalization = next(layer for layer in loaded.layers if isinstance(layer, L.Normalization))
    np.testing.assert_array_equal(loaded_normalization.adapt_mean.numpy(), normalization.adapt_mean.numpy())


# ----- against real Keras 3 (only where it is installed) -----

KERAS_CASES = [
    ("RandomRotation", dict(factor=(0.1, 0.1))),
    ("RandomRotation", dict(factor=(-0.3, -0.3), fill_mode="constant", fill_value=7.0)),
    ("RandomRotation", dict(factor=(0.1, 0.1), interpolation="nearest", fill_mode="wrap")),
    ("RandomTranslation", dict(height_factor=(0.2, 0.2), width_factor=(-0.3, -0.3))),
    ("RandomTranslation", dict(height_factor=(0.15, 0.15), width_factor=(0.1, 0.1), fill_mode="nearest",
                               interpolation="nearest")),
    ("RandomZoom", dict(height_factor=(0.3, 0.3))),
    ("RandomZoom", dict(height_factor=(-0.4, -0.4), width_factor=(0.2, 0.2), fill_mode="constant")),
    ("RandomContrast", dict(factor=(-0.5, 0.5))),
    ("RandomBrightness", dict(factor=(0.3, 0.3))),
    ("Resizing", dict(height=5, width=7)),
    ("Resizing", dict(height=20, width=13)),
    ("Resizing", dict(height=4, width=6, interpolation="nearest")),
    ("Resizing", dict(height=18, width=25, interpolation="nearest")),
    ("Resizing", dict(height=6, width=6, crop_to_aspect_ratio=True)),
    ("Resizing", dict(height=6, width=6, pad_to_aspect_ratio=True, fill_value=3.0)),
    ("CenterCrop", dict(height=5, width=7)),
    ("CenterCrop", dict(height=11, width=7)),
]


def test_against_real_keras(rng):
    real = pytest.importorskip("keras")  # an optional cross-check: fastconv's own tests above need no Keras
    if real.__name__ != "keras" or not hasattr(real, "ops"):
        pytest.skip("keras here is not Keras 3")
    # Fixed transforms: a factor (f, f) makes each random layer draw exactly f.
    images = rng.uniform(0, 255, size=(3, 9, 11, 2)).astype(np.float32)
    for name, kwargs in KERAS_CASES:
        theirs = np.asarray(getattr(real.layers, name)(**kwargs)(images, training=True))
        ours = getattr(L, name)(**kwargs)(images, training=True)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3, err_msg=f"{name} {kwargs}")
    transforms = rng.normal(size=(3, 8)) * [1, 1, 4, 1, 1, 4, 0, 0] + [1, 0, 0, 0, 1, 0, 0, 0]
    for fill_mode in ("constant", "nearest", "reflect", "wrap", "mirror"):
        for interpolation in ("bilinear", "nearest"):
            theirs = np.asarray(real.ops.image.affine_transform(images, transforms.astype(np.float32), interpolation,
                                                                fill_mode, 2.0))
            ours = ops.affine_transform(images, transforms.astype(np.float32), interpolation, fill_mode, 2.0)
            close = np.isclose(ours, theirs, rtol=1e-5, atol=1e-3)
            # Nearest: a float32 coordinate within rounding of a half may round the other way.
            assert close.mean() > (0.99 if interpolation == "nearest" else 1 - 1e-9), (fill_mode, interpolation)
    data = rng.normal(3, 2, size=(20, 4, 5, 3)).astype(np.float32)
    for axis in (-1, None, (1, 2)):
        theirs, ours = real.layers.Normalization(axis=axis), L.Normalization(axis=axis)
        theirs.adapt(data)
        ours.adapt(data)
        np.testing.assert_allclose(ours(data), np.asarray(theirs(data)), rtol=1e-5, atol=1e-5)
