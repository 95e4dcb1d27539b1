"""A conv fused with the 2x2 max pooling after it (ops.conv2d_relu_maxpool2d, Conv2D.forward_max_pooled), on
the direct kernels and in Winograd's output transform: the same bits as the two ops in turn, the float64
reference's values, and training that does not change."""
import numpy as np
import pytest

import fastconv
from fastconv import _C, keras, ops, reference
from fastconv.keras import layers
from fastconv.keras.layers.conv import Conv2D
from fastconv.shapes import conv_geometry

# (batch, height, width, cin, kernel, cout, strides, padding, dilation)
SHAPES = [
    (64, 28, 28, 1, 3, 32, 1, "same", 1),       # the seed model's first layer
    (3, 7, 9, 3, 3, 20, 1, "valid", 1),         # odd sizes: the last conv row and column are pooled by nothing
    (5, 27, 27, 2, 5, 8, 1, "same", 1),
    (2, 6, 6, 4, 2, 40, 1, "valid", 1),         # a partial block of output channels
    (70, 12, 12, 1, 3, 1, 1, ((2, 0), (1, 3)), 1),  # one output channel, explicit padding, many blocks
    (4, 17, 15, 3, 3, 16, 2, "same", 1),
    (3, 16, 16, 1, 3, 33, 1, "valid", 2),
    (1, 3, 3, 1, 2, 8, 1, "valid", 1),          # a 2x2 output: one window
]
# Winograd (3x3, stride 1), each tile size forced (auto picks it on AVX2 only); partial tiles at the edges
WINOGRAD_SHAPES = [
    (4, 14, 14, 32, 3, 64, 1, "same", 1, "winograd4x4"),       # the seed model's second layer
    (2, 26, 26, 32, 3, 64, 1, "valid", 1, "winograd4x4"),      # keras-cnn's second layer
    (3, 13, 11, 8, 3, 8, 1, "same", 1, "winograd4x4"),         # odd sizes
    (2, 9, 9, 16, 3, 24, 1, "valid", 1, "winograd"),
    (3, 13, 11, 8, 3, 8, 1, "same", 1, "winograd"),
    (2, 6, 6, 8, 3, 12, 1, ((1, 0), (0, 1)), 1, "winograd4x4"),
]


def _case(shape, seed=0):
    n, h, w, cin, k, cout, strides, padding, dilation = shape[:9]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    geometry = {"strides": strides, "padding": padding, "dilation_rate": dilation}
    return x, kernel, bias, {**geometry, "algorithm": shape[9]} if len(shape) > 9 else geometry


def _unfused(x, kernel, bias, dy, geometry):
    pre = ops.conv2d(x, kernel, bias, activation="relu", **geometry)
    y, argmax = ops.maxpool2d(pre, 2, return_argmax=True)
    dpre = ops.maxpool2d_backward(dy, pre, 2, x_from_relu=True, argmax=argmax)
    _, dw, db = ops.conv2d_backward(dpre, x, kernel, need_dx=False, **geometry)
    return y, argmax, dw, db


def _fused(x, kernel, bias, dy, geometry):
    y, argmax = ops.conv2d_relu_maxpool2d(x, kernel, bias, **geometry)
    dx, dw, db = ops.conv2d_relu_maxpool2d_backward(dy, argmax, x, kernel, need_dx=False, **geometry)
    assert dx is None
    return y, argmax, dw, db


@pytest.mark.parametrize("shape", SHAPES + WINOGRAD_SHAPES, ids=lambda s: "x".join(map(str, s[:6])) + ("" if len(s) < 10 else "-" + s[9]))
def test_fused_gives_the_bits_of_the_two_ops(shape):
    x, kernel, bias, geometry = _case(shape)
    assert ops.conv2d_relu_maxpool2d_fuses(x.shape, kernel.shape, **geometry)
    y_shape = ops.conv2d_relu_maxpool2d(x, kernel, bias, **geometry)[0].shape
    dy = np.random.default_rng(1).standard_normal(y_shape).astype(np.float32)
    got, want = _fused(x, kernel, bias, dy, geometry), _unfused(x, kernel, bias, dy, geometry)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("x_from_relu", [False, True])
@pytest.mark.parametrize("shape", [SHAPES[1]] + WINOGRAD_SHAPES, ids=lambda s: "x".join(map(str, s[:6])) + ("" if len(s) < 10 else "-" + s[9]))
def test_the_input_gradient_is_conv2d_backward_s(shape, x_from_relu):
    """dx, dw and db with the input gradient asked for: in Winograd each of the three passes rebuilds the
    conv output's gradient from the pooled one; its zeros (-0 included) and ties must route as the pooling's
    backward pass routes them."""
    x, kernel, bias, geometry = _case(shape)
    x = np.maximum(x, 0) if x_from_relu else x
    y, argmax = ops.conv2d_relu_maxpool2d(x, kernel, bias, **geometry)
    dy = np.random.default_rng(6).standard_normal(y.shape).astype(np.float32)
    dy.flat[::7] = -0.0
    got = ops.conv2d_relu_maxpool2d_backward(dy, argmax, x, kernel, x_from_relu=x_from_relu, **geometry)
    pre = ops.conv2d(x, kernel, bias, activation="relu", **geometry)
    dpre = ops.maxpool2d_backward(dy, pre, 2, x_from_relu=True, argmax=argmax)
    want = ops.conv2d_backward(dpre, x, kernel, x_from_relu=x_from_relu, **geometry)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", SHAPES[:4] + WINOGRAD_SHAPES[2:4], ids=lambda s: "x".join(map(str, s[:6])) + ("" if len(s) < 10 else "-" + s[9]))
def test_fused_matches_the_float64_reference(shape):
    x, kernel, bias, geometry = _case(shape, seed=2)
    y, argmax = ops.conv2d_relu_maxpool2d(x, kernel, bias, **geometry)
    x64, k64, b64 = (a.astype(np.float64) for a in (x, kernel, bias))
    want_y, want_argmax = reference.conv2d_relu_maxpool2d(x64, k64, b64, **geometry)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)  # F(4x4, 3x3): conv2d's docstring
    # ties aside (none in random data), the same window taps; the sign flag follows the float32 maximum
    np.testing.assert_array_equal(argmax & reference.ARGMAX_NONE, want_argmax & reference.ARGMAX_NONE)
    dy = np.random.default_rng(3).standard_normal(y.shape)
    _, dw, db = ops.conv2d_relu_maxpool2d_backward(dy.astype(np.float32), argmax, x, kernel, need_dx=False,
                                                   **geometry)
    _, want_dw, want_db = reference.conv2d_relu_maxpool2d_backward(dy, argmax, x64, k64, need_dx=False, **geometry)
    scale = np.sqrt(y.size / y.shape[-1])  # the standard deviation of a sum over the pooled pixels
    assert np.abs(dw - want_dw).max() <= 1e-5 * scale
    assert np.abs(db - want_db).max() <= 1e-5 * scale


@pytest.mark.parametrize("shape", [SHAPES[0], WINOGRAD_SHAPES[0]], ids=lambda s: "x".join(map(str, s[:6])) + ("" if len(s) < 10 else "-" + s[9]))
def test_fused_bits_do_not_depend_on_the_threads(shape):
    x, kernel, bias, geometry = _case(shape)
    y_shape = ops.conv2d_relu_maxpool2d(x, kernel, bias, **geometry)[0].shape
    dy = np.random.default_rng(4).standard_normal(y_shape).astype(np.float32)
    before = fastconv.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            fastconv.set_num_threads(threads)
            results.append(_fused(x, kernel, bias, dy, geometry))
    finally:
        fastconv.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [SHAPES[1], WINOGRAD_SHAPES[2]], ids=lambda s: "x".join(map(str, s[:6])) + ("" if len(s) < 10 else "-" + s[9]))
def test_nan_and_ties_route_as_the_two_ops_do(shape):
    x, kernel, bias, geometry = _case(shape)
    x[0, 2, 3, 0] = np.nan
    x[1] = 0.0  # every window of image 1 ties (the bias alone)
    y_shape = ops.conv2d_relu_maxpool2d(x, kernel, bias, **geometry)[0].shape
    dy = np.ones(y_shape, np.float32)
    for got, expected in zip(_fused(x, kernel, bias, dy, geometry), _unfused(x, kernel, bias, dy, geometry)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("need_dx", [False, True])
def test_winograd_backward_passes_take_the_pooled_gradient(need_dx):
    """Where the conv is Winograd, the backward runs from the pooled gradient (the C call says it did) for
    every tile size; elsewhere it declines, writing nothing, and the op runs the pooling's backward first."""
    for shape in WINOGRAD_SHAPES + [SHAPES[0]]:
        x, kernel, bias, geometry = _case(shape)
        y, argmax = ops.conv2d_relu_maxpool2d(x, kernel, bias, **geometry)
        g = conv_geometry(x.shape, kernel.shape, geometry["strides"], geometry["padding"], geometry["dilation_rate"])
        dx = np.full(x.shape, 7.0, np.float32) if need_dx else None
        dw, db = np.full(kernel.shape, 7.0, np.float32), np.full(kernel.shape[-1], 7.0, np.float32)
        ran = _C.conv2d_relu_maxpool2x2_backward(g, ops._conv_algorithm(geometry.get("algorithm")), y.reshape(-1),
                                                 argmax.reshape(-1), x.reshape(-1), kernel.reshape(-1), False,
                                                 None if dx is None else dx.reshape(-1), dw.reshape(-1), db.reshape(-1))
        assert ran == (len(shape) > 9), shape
        if not ran:
            assert (dw == 7).all() and (db == 7).all() and (dx is None or (dx == 7).all())


def test_fuses_only_where_the_direct_kernels_or_winograd_run():
    assert ops.conv2d_relu_maxpool2d_fuses((8, 28, 28, 1), (3, 3, 1, 32), padding="same")
    assert not ops.conv2d_relu_maxpool2d_fuses((8, 28, 28, 16), (5, 5, 16, 32), padding="same")  # implicit GEMM
    assert not ops.conv2d_relu_maxpool2d_fuses((8, 28, 28, 16), (3, 3, 16, 32), strides=2)  # im2col
    assert not ops.conv2d_relu_maxpool2d_fuses((8, 3, 3, 1), (3, 3, 1, 4))  # a 1x1 output: nothing to pool
    assert not ops.conv2d_relu_maxpool2d_fuses((8, 28, 28, 1), (3, 3, 1, 32), algorithm="im2col")
    assert not reference.conv2d_relu_maxpool2d_fuses((8, 28, 28, 1), (3, 3, 1, 32))


def test_shapes_that_do_not_fuse_run_the_two_ops():
    x, kernel, bias, geometry = _case((3, 10, 10, 8, 5, 16, 1, "same", 1))
    assert not ops.conv2d_relu_maxpool2d_fuses(x.shape, kernel.shape, **geometry)
    y, argmax = ops.conv2d_relu_maxpool2d(x, kernel, bias, **geometry)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    _, dw, db = ops.conv2d_relu_maxpool2d_backward(dy, argmax, x, kernel, need_dx=False, **geometry)
    for got, expected in zip((y, argmax, dw, db), _unfused(x, kernel, bias, dy, geometry)):
        np.testing.assert_array_equal(got, expected)


def test_backward_checks_its_arguments():
    x, kernel, bias, geometry = _case(SHAPES[1])
    y, argmax = ops.conv2d_relu_maxpool2d(x, kernel, bias, **geometry)
    with pytest.raises(TypeError, match="argmax"):
        ops.conv2d_relu_maxpool2d_backward(y, argmax.astype(np.int32), x, kernel, **geometry)
    with pytest.raises(ValueError, match="argmax"):
        ops.conv2d_relu_maxpool2d_backward(y, argmax[:, :1], x, kernel, **geometry)
    with pytest.raises(ValueError, match="dy"):
        ops.conv2d_relu_maxpool2d_backward(y[:, :1], argmax, x, kernel, **geometry)
    with pytest.raises(ValueError, match="input channels"):
        ops.conv2d_relu_maxpool2d(x, kernel[:, :, :1], bias, **geometry)


# ---- in models ----

def _first_layers(pool=None, padding="same"):
    return [keras.Input((12, 12, 1)), layers.Rescaling(1 / 255),
            layers.Conv2D(8, 3, padding=padding, activation="relu"), pool or layers.MaxPooling2D(2)]


def _model(kind):
    head = [layers.Conv2D(6, 3, activation="relu"), layers.Flatten(), layers.Dense(10, activation="softmax")]
    if kind == "sequential":
        return keras.Sequential(_first_layers() + head)
    if kind == "valid-pool":
        return keras.Sequential(_first_layers(padding="valid") + [layers.Flatten(), layers.Dense(10, "softmax")])
    if kind == "pool-3":  # not a 2x2 pooling: not fused
        return keras.Sequential(_first_layers(layers.MaxPooling2D(3)) + [layers.Flatten(), layers.Dense(10, "softmax")])
    if kind == "two-consumers":  # the conv's output also feeds another branch: not fused
        inputs = keras.Input((12, 12, 1))
        conv = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
        pooled = layers.Flatten()(layers.MaxPooling2D(2)(conv))
        other = layers.Flatten()(layers.AveragePooling2D(2)(conv))
        return keras.Model(inputs, layers.Dense(10, activation="softmax")(layers.Concatenate()([pooled, other])))
    if kind == "winograd":  # the second conv, Winograd on AVX2 (else implicit GEMM), with its pooling; it needs dx
        return keras.Sequential([keras.Input((12, 12, 1)), layers.Conv2D(8, 3, padding="same", activation="relu"),
                                 layers.Conv2D(16, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
                                 layers.Flatten(), layers.Dense(10, activation="softmax")])
    if kind == "needs-input-grad":  # a trainable layer before the conv: the conv computes dx too
        return keras.Sequential([keras.Input((12, 12, 1)), layers.Conv2D(1, 1), layers.Conv2D(8, 3, activation="relu"),
                                 layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(10, activation="softmax")])
    raise AssertionError(kind)


def _train(kind, monkeypatch, fuse):
    calls = []
    real = Conv2D.forward_max_pooled

    def counted(layer, inputs):
        result = real(layer, inputs) if fuse else None
        calls.append(result is not None)
        return result

    monkeypatch.setattr(Conv2D, "forward_max_pooled", counted)
    keras.utils.set_random_seed(7)
    model = _model(kind)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (80, 12, 12, 1)).astype(np.uint8)
    y = rng.integers(0, 10, 80)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_split=0.25)
    return model.get_weights(), history.history, model.predict(x, verbose=0), calls


@pytest.mark.parametrize("kind", ["sequential", "valid-pool", "winograd", "needs-input-grad"])
def test_models_fuse_the_first_conv_with_its_pooling_and_train_the_same(kind, monkeypatch):
    weights, history, predictions, calls = _train(kind, monkeypatch, fuse=True)
    # training, validation and predict all took the fused op (the Winograd conv wherever auto picks Winograd)
    fuses = kind != "winograd" or ops.conv2d_relu_maxpool2d_fuses((16, 12, 12, 8), (3, 3, 8, 16), padding="same")
    assert calls and all(fused == fuses for fused in calls)
    plain_weights, plain_history, plain_predictions, _ = _train(kind, monkeypatch, fuse=False)
    assert history == plain_history
    np.testing.assert_array_equal(predictions, plain_predictions)
    for a, b in zip(weights, plain_weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["pool-3", "two-consumers"])
def test_models_keep_the_two_layers_where_they_cannot_fuse(kind, monkeypatch):
    _, _, _, calls = _train(kind, monkeypatch, fuse=True)
    assert not calls


def test_a_conv_subclass_with_its_own_call_is_not_fused(monkeypatch):
    class Doubled(Conv2D):
        def call(self, inputs):
            return 2.0 * super().call(inputs)

    assert not Doubled.fuses_max_pooling
    model = keras.Sequential([keras.Input((12, 12, 1)), Doubled(4, 3, activation="relu"), layers.MaxPooling2D(2),
                              layers.Flatten(), layers.Dense(3)])
    x = np.random.default_rng(9).standard_normal((4, 12, 12, 1)).astype(np.float32)
    layer = model.layers[0]
    pre = ops.conv2d(x, layer.kernel.value, layer.bias.value, activation="relu")
    want = ops.maxpool2d(2.0 * pre, 2).reshape(4, -1) @ model.layers[-1].kernel.value + model.layers[-1].bias.value
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-5)
