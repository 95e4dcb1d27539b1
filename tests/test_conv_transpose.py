"""conv2d_transpose and keras.layers.Conv2DTranspose: Keras' output sizes, TensorFlow's padding, the
adjoint of conv2d, a loop oracle, gradients by finite differences, training and saving."""
import numpy as np
import pytest

import fastconv
from fastconv import keras, reference
from fastconv.keras import backend, layers
from test_keras_layers import check_layer_gradients, float64_numpy, seeded  # noqa: F401 (fixtures)

# (input size, kernel, stride, padding, output_padding, dilation) -> output size, worked out by hand
# from Keras' deconv_output_length
SIZES = [
    ((7, 3, 2, "same", None, 1), 14), ((7, 3, 2, "valid", None, 1), 15), ((7, 3, 1, "same", None, 1), 7),
    ((7, 3, 1, "valid", None, 1), 9), ((7, 4, 2, "valid", None, 1), 16), ((7, 2, 2, "valid", None, 1), 14),
    ((7, 1, 3, "valid", None, 1), 21), ((7, 5, 2, "same", 1, 1), 14), ((7, 3, 2, "valid", 1, 1), 16),
    ((7, 4, 2, "same", 1, 1), 13), ((7, 3, 1, "valid", None, 2), 11), ((7, 3, 1, "same", None, 2), 7),
]


def loop_oracle(x, w, stride, padding, out_size, dilation=1):
    """Each input pixel adds w times its value over a window, windows `stride` apart, then the rows and
    columns TensorFlow's padding cuts away are dropped (top/left: half the total, rounded down)."""
    n, h, wd, cin = x.shape
    k, _, cout, _ = w.shape
    extent = dilation * (k - 1) + 1
    total = max((h - 1) * stride + extent - out_size, 0) if padding == "same" else 0
    top = total // 2
    full = np.zeros((n, (h - 1) * stride + extent, (wd - 1) * stride + extent, cout))
    for i in range(h):
        for j in range(wd):
            for ky in range(k):
                for kx in range(k):
                    full[:, i * stride + ky * dilation, j * stride + kx * dilation, :] += x[:, i, j, :] @ w[ky, kx].T
    out = np.zeros((n, out_size, out_size, cout))
    rows = min(out_size, full.shape[1] - top)
    out[:, :rows, :rows] = full[:, top:top + rows, top:top + rows]
    return out


@pytest.mark.parametrize("case, size", SIZES)
def test_output_size_padding_and_values(isa, case, size):
    h, k, stride, padding, output_padding, dilation = case
    rng = np.random.default_rng(h * k + stride)
    x = rng.standard_normal((2, h, h, 3))
    w = rng.standard_normal((k, k, 4, 3))
    b = rng.standard_normal(4)
    kwargs = dict(strides=stride, padding=padding, output_padding=output_padding, dilation_rate=dilation)
    want = loop_oracle(x, w, stride, padding, size, dilation)
    assert want.shape == (2, size, size, 4)
    np.testing.assert_allclose(reference.conv2d_transpose(x, w, **kwargs), want, atol=1e-10)
    got = fastconv.conv2d_transpose(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32),
                                    activation="relu", **kwargs)
    np.testing.assert_allclose(got, np.maximum(want + b, 0), atol=1e-4)
    layer = layers.Conv2DTranspose(4, k, strides=stride, padding=padding, output_padding=output_padding,
                                   dilation_rate=dilation)
    assert layer.compute_output_shape((None, h, h, 3)) == (None, size, size, 4)


@pytest.mark.parametrize("kwargs", [dict(strides=2, padding="same"), dict(strides=(2, 3), padding="valid"),
                                    dict(strides=1, padding="same", dilation_rate=2),
                                    dict(strides=2, padding="same", output_padding=1)])
def test_is_the_adjoint_of_conv2d(isa, kwargs):
    """<conv2d(z, w), x> == <z, conv2d_transpose(x, w)> for every z of the output's shape."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5, 6, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
    y = fastconv.conv2d_transpose(x, w, **kwargs)
    z = rng.standard_normal(y.shape).astype(np.float32)
    conv_kwargs = {key: value for key, value in kwargs.items() if key != "output_padding"}
    forward = fastconv.conv2d(z, w, **conv_kwargs)
    assert forward.shape == x.shape
    np.testing.assert_allclose(np.sum(forward.astype(np.float64) * x), np.sum(z.astype(np.float64) * y), rtol=1e-4)


def test_bad_arguments_are_clear_errors():
    x, w = np.zeros((1, 4, 4, 3), np.float32), np.zeros((3, 3, 2, 3), np.float32)
    for kwargs, message in [
        (dict(strides=2, output_padding=2), "output_padding must be smaller than strides"),
        (dict(output_padding=(0, 0, 0)), "output_padding must be an int or a pair"),
        (dict(padding="full"), "padding must be 'valid' or 'same'"),
        (dict(strides=2, dilation_rate=2), "strides > 1 together with dilation_rate > 1"),
        (dict(activation="tanh"), "activation"),
    ]:
        for module in (fastconv, reference):
            with pytest.raises(ValueError, match=message):
                module.conv2d_transpose(x, w, **kwargs)
    with pytest.raises(ValueError, match="input channels"):
        fastconv.conv2d_transpose(x, np.zeros((3, 3, 2, 4), np.float32))
    with pytest.raises(ValueError, match="must be 4-D"):
        fastconv.conv2d_transpose(x[0], w)
    with pytest.raises(ValueError, match="is not what a conv of the output"):  # even kernel, "same", no extra row
        fastconv.conv2d_transpose(x, np.zeros((4, 4, 2, 3), np.float32), strides=2, padding="same", output_padding=0)
    with pytest.raises(ValueError, match="b must have shape"):
        fastconv.conv2d_transpose(x, w, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="output_padding must be smaller than strides"):
        layers.Conv2DTranspose(2, 3, strides=2, output_padding=(1, 2))


@pytest.mark.parametrize("kwargs", [dict(strides=2, padding="same", activation="relu"), dict(padding="valid"),
                                    dict(strides=(2, 1), padding="valid", output_padding=(1, 0), activation="tanh"),
                                    dict(dilation_rate=2, padding="same", use_bias=False)])
def test_layer_backward(float64_numpy, seeded, kwargs):  # noqa: F811 (fixtures)
    check_layer_gradients(layers.Conv2DTranspose(4, 3, bias_initializer="random_normal", **kwargs), (2, 5, 4, 3))


def test_autoencoder_trains_on_both_backends_and_saves(tmp_path, seeded):  # noqa: F811 (fixture)
    rng = np.random.default_rng(3)
    rows, cols = rng.random((64, 8, 1, 1)) > 0.5, rng.random((64, 1, 8, 1)) > 0.5
    images = (rows & cols).astype(np.float32)  # crossings of random row and column stripes: learnable
    results = {}
    for name in ("fastconv", "numpy"):
        backend.set_backend(name)
        try:
            keras.utils.set_random_seed(7)
            model = keras.Sequential([
                keras.Input((8, 8, 1)),
                layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
                layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu"),
                layers.Conv2DTranspose(1, 3, padding="same", activation="sigmoid")])
            model.compile(loss="binary_crossentropy", optimizer=keras.optimizers.Adam(0.01))
            history = model.fit(images, images, epochs=15, batch_size=16, verbose=0)
            results[name] = history.history["loss"]
        finally:
            backend.set_backend("fastconv")
    assert results["fastconv"][-1] < 0.5 * results["fastconv"][0]
    np.testing.assert_allclose(results["fastconv"], results["numpy"], rtol=1e-3)
    assert model.layers[1].kernel.shape == (3, 3, 8, 8) and model.layers[2].kernel.shape == (3, 3, 1, 8)
    path = tmp_path / "autoencoder.fastconv"
    model.save(path)
    loaded = keras.load_model(path)
    assert loaded.layers[1].get_config()["output_padding"] is None
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
