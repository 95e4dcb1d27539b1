"""fastconv.keras layers: backward against finite differences, shapes, configs, both backends agree."""
import numpy as np
import pytest

from fastconv import keras, reference
from fastconv.keras import backend, layers


@pytest.fixture
def float64_numpy():
    """The NumPy backend in float64, so finite differences are accurate."""
    old_backend, old_floatx = backend.get_backend(), backend.floatx()
    backend.set_backend("numpy")
    backend.set_floatx("float64")
    yield
    backend.set_backend(old_backend)
    backend.set_floatx(old_floatx)


@pytest.fixture
def seeded():
    keras.utils.set_random_seed(1234)


def numeric_gradient(f, array, count=12, eps=1e-6, rng=None):
    """Central differences of scalar f() with respect to `count` random entries of `array` (changed in place)."""
    rng = rng or np.random.default_rng(0)
    flat = array.reshape(-1)
    picks = rng.choice(flat.size, size=min(count, flat.size), replace=False)
    grads = []
    for i in picks:
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        grads.append((up - down) / (2 * eps))
    return picks, np.array(grads)


def check_layer_gradients(layer, *input_shapes, training=False, tol=1e-6):
    rng = np.random.default_rng(42)
    inputs = [rng.standard_normal(shape) for shape in input_shapes]
    multi = len(inputs) > 1
    arg = inputs if multi else inputs[0]
    layer(arg)  # builds
    out, ctx = layer.forward(arg, training)
    weight = rng.standard_normal(out.shape)

    def objective():
        return float(np.sum(layer.forward(arg, training)[0] * weight))

    for variable in layer.weights:
        variable.grad = None
    input_grads = layer.backward(ctx, weight)
    input_grads = input_grads if multi else [input_grads]
    for x, dx in zip(inputs, input_grads):
        assert dx.shape == x.shape
        picks, numeric = numeric_gradient(objective, x)
        np.testing.assert_allclose(dx.reshape(-1)[picks], numeric, rtol=tol, atol=tol)
    for variable in layer.trainable_weights:
        picks, numeric = numeric_gradient(objective, variable.value)
        np.testing.assert_allclose(variable.grad.reshape(-1)[picks], numeric, rtol=tol, atol=tol,
                                   err_msg=variable.name)


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid", "tanh", "softmax", "leaky_relu"])
def test_dense_backward(float64_numpy, seeded, activation):
    check_layer_gradients(layers.Dense(5, activation=activation, bias_initializer="random_normal"), (4, 3))


def test_dense_on_3d_input_uses_last_axis(float64_numpy, seeded):
    layer = layers.Dense(3)
    assert layer(np.zeros((2, 4, 6))).shape == (2, 4, 3)
    check_layer_gradients(layers.Dense(3), (2, 4, 6))


@pytest.mark.parametrize("kwargs", [
    dict(padding="valid"), dict(padding="same", activation="relu"), dict(strides=2, padding="same"),
    dict(strides=(2, 1), padding="valid", activation="tanh"), dict(dilation_rate=2, padding="same"),
    dict(use_bias=False, activation="sigmoid"),
])
def test_conv2d_backward(float64_numpy, seeded, kwargs):
    layer = layers.Conv2D(4, 3, bias_initializer="random_normal", **kwargs)
    check_layer_gradients(layer, (2, 7, 6, 3))


@pytest.mark.parametrize("layer_class", [layers.MaxPooling2D, layers.AveragePooling2D])
@pytest.mark.parametrize("kwargs", [dict(), dict(pool_size=3, strides=2, padding="same"), dict(pool_size=(2, 3), strides=1)])
def test_pooling_backward(float64_numpy, layer_class, kwargs):
    check_layer_gradients(layer_class(**kwargs), (2, 7, 6, 3))


@pytest.mark.parametrize("make_layer, shapes", [
    (lambda: layers.GlobalAveragePooling2D(), [(2, 4, 5, 3)]),
    (lambda: layers.GlobalAveragePooling2D(keepdims=True), [(2, 4, 5, 3)]),
    (lambda: layers.Flatten(), [(2, 3, 4, 2)]),
    (lambda: layers.Rescaling(1 / 255, offset=-0.5), [(2, 3, 4, 2)]),
    (lambda: layers.Reshape((4, -1)), [(2, 3, 4, 2)]),
    (lambda: layers.Activation("tanh"), [(3, 5)]),
    (lambda: layers.Softmax(), [(3, 5)]),
    (lambda: layers.ReLU(), [(3, 5)]),
    (lambda: layers.ReLU(max_value=0.5, negative_slope=0.1), [(3, 5)]),
    (lambda: layers.ReLU(max_value=0.5), [(3, 5)]),
    (lambda: layers.ReLU(negative_slope=0.2), [(3, 5)]),
    (lambda: layers.ReLU(threshold=0.3), [(3, 5)]),
    (lambda: layers.ReLU(max_value=1.0, negative_slope=0.1, threshold=-0.2), [(3, 5)]),
    (lambda: layers.LeakyReLU(negative_slope=0.2), [(3, 5)]),
    (lambda: layers.Add(), [(3, 4), (3, 4), (3, 4)]),
    (lambda: layers.Concatenate(), [(3, 2, 4), (3, 2, 1)]),
    (lambda: layers.Concatenate(axis=1), [(3, 2, 4), (3, 5, 4)]),
    (lambda: layers.Subtract(), [(3, 4), (3, 4)]),
    (lambda: layers.Multiply(), [(3, 4), (3, 4), (3, 4)]),
    (lambda: layers.Average(), [(3, 2, 4), (3, 2, 4)]),
    (lambda: layers.Maximum(), [(3, 4), (3, 4), (3, 4)]),
    (lambda: layers.Minimum(), [(3, 4), (3, 4)]),
    (lambda: layers.GlobalMaxPooling2D(), [(2, 4, 5, 3)]),
    (lambda: layers.GlobalMaxPooling2D(keepdims=True), [(2, 4, 5, 3)]),
    (lambda: layers.ZeroPadding2D(), [(2, 3, 4, 2)]),
    (lambda: layers.ZeroPadding2D(((1, 0), (2, 3))), [(2, 3, 4, 2)]),
    (lambda: layers.Cropping2D(((1, 0), (0, 2))), [(2, 4, 5, 2)]),
    (lambda: layers.UpSampling2D((2, 3)), [(2, 3, 2, 2)]),
    (lambda: layers.ELU(), [(3, 5)]),
    (lambda: layers.ELU(alpha=0.3), [(2, 3, 4, 2)]),
    (lambda: layers.Identity(), [(3, 5)]),
    (lambda: layers.Permute((2, 1)), [(3, 4, 5)]),
    (lambda: layers.Permute((3, 1, 2)), [(2, 3, 4, 5)]),
])
def test_weightless_layer_backward(float64_numpy, make_layer, shapes):
    check_layer_gradients(make_layer(), *shapes)


def test_padding_cropping_and_upsampling_match_numpy():
    x = np.random.default_rng(0).standard_normal((2, 5, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(layers.ZeroPadding2D((1, 2))(x), np.pad(x, ((0, 0), (1, 1), (2, 2), (0, 0))))
    np.testing.assert_array_equal(layers.ZeroPadding2D(((0, 1), (3, 0)))(x), np.pad(x, ((0, 0), (0, 1), (3, 0), (0, 0))))
    np.testing.assert_array_equal(layers.Cropping2D(1)(x), x[:, 1:4, 1:3])
    np.testing.assert_array_equal(layers.Cropping2D(((2, 0), (0, 1)))(x), x[:, 2:, :3])
    up = layers.UpSampling2D(2)(x)
    assert up.shape == (2, 10, 8, 3)
    np.testing.assert_array_equal(up[:, ::2, ::2], x)
    np.testing.assert_array_equal(up[:, 1::2, 1::2], x)
    for layer in [layers.ZeroPadding2D(((1, 0), (2, 3))), layers.Cropping2D((1, 1)), layers.UpSampling2D((3, 2))]:
        assert (None,) + layer(x).shape[1:] == layer.compute_output_shape((None,) + x.shape[1:])
    with pytest.raises(ValueError, match="leaves nothing"):
        layers.Cropping2D(((3, 2), (0, 0)))(x)
    with pytest.raises(ValueError, match="padding must be a non-negative int"):
        layers.ZeroPadding2D(-1)
    with pytest.raises(TypeError, match="cropping must be a non-negative int"):
        layers.Cropping2D(((1.5, 0), (0, 0)))
    with pytest.raises(ValueError, match="nearest"):
        layers.UpSampling2D(interpolation="bilinear")
    with pytest.raises(ValueError, match="4-D"):
        layers.UpSampling2D()(x[0])


def test_merge_layers_forward_and_bad_input():
    """The values Keras gives (ties and NaN included), and a clear error for what cannot be merged."""
    a = np.array([[1.0, 5.0, 2.0, np.nan]], dtype=np.float32)
    b = np.array([[3.0, 5.0, -1.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(layers.subtract([a, b]), a - b)
    np.testing.assert_array_equal(layers.multiply([a, b, b]), a * b * b)
    np.testing.assert_array_equal(layers.average([a, b]), (a + b) / 2)
    np.testing.assert_array_equal(layers.maximum([a, b]), np.maximum(a, b))
    np.testing.assert_array_equal(layers.minimum([a, b]), np.minimum(a, b))
    maximum = layers.Maximum()
    out, ctx = maximum.forward([a, b])
    grad_a, grad_b = maximum.backward(ctx, np.ones_like(out))
    np.testing.assert_array_equal(grad_a, [[0, 1, 1, 1]])  # the tie at 5 goes to the first input
    np.testing.assert_array_equal(grad_b, [[1, 0, 0, 0]])
    with pytest.raises(ValueError, match="exactly 2 inputs"):
        layers.subtract([a, b, a])
    with pytest.raises(ValueError, match="one shape"):
        layers.maximum([a, np.zeros((1, 3), np.float32)])
    with pytest.raises(ValueError, match="at least 2 inputs"):
        layers.Multiply()([a])
    with pytest.raises(ValueError, match="4-D"):
        layers.GlobalMaxPooling2D()(a)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("options", [dict(), dict(center=False), dict(scale=False), dict(center=False, scale=False)])
def test_batch_normalization_backward(float64_numpy, seeded, training, options):
    for shape in [(4, 3, 3, 5), (7, 3)]:  # a conv's output and a Dense layer's
        layer = layers.BatchNormalization(gamma_initializer="random_normal", beta_initializer="random_normal",
                                          **options)
        check_layer_gradients(layer, shape, training=training)


def test_relu_layers_keep_the_input_dtype_and_nan():
    x = np.array([[-1.0, 0.0, 0.5, 2.0, np.nan]], dtype=np.float32)
    for layer in [layers.ReLU(), layers.ReLU(max_value=1.0, negative_slope=0.1, threshold=0.2)]:
        out, ctx = layer.forward(x, training=True)
        grad = layer.backward(ctx, np.ones_like(x))
        assert out.dtype == grad.dtype == np.float32 and np.isnan(out[0, -1])
    np.testing.assert_array_equal(layers.ReLU()(x)[0, :4], [0.0, 0.0, 0.5, 2.0])


def test_batch_normalization_and_relu_agree_on_both_backends(seeded):
    """One SGD step of a model of BatchNormalization and ReLU layers: the C kernels (float32) against
    the NumPy backend in float64. The step's size is the gradient, so this compares the gradients too."""
    def make_model():
        keras.utils.set_random_seed(7)
        return keras.Sequential([
            layers.Conv2D(6, 3, input_shape=(7, 6, 2)),
            layers.BatchNormalization(gamma_initializer="random_normal", beta_initializer="random_normal"),
            layers.ReLU(), layers.Conv2D(5, 3), layers.BatchNormalization(center=False, scale=False),
            layers.ReLU(max_value=1.0, negative_slope=0.1), layers.Flatten(), layers.Dense(4, use_bias=False),
            layers.BatchNormalization(momentum=0.5), layers.ReLU(), layers.Dense(3, activation="softmax")])

    x = np.random.default_rng(1).standard_normal((6, 7, 6, 2))
    y = keras.utils.to_categorical(np.arange(6) % 3, 3)
    results = {}
    old_backend, old_floatx = backend.get_backend(), backend.floatx()
    for name, floatx in (("fastconv", "float32"), ("numpy", "float64")):
        backend.set_backend(name)
        backend.set_floatx(floatx)
        try:
            model = make_model()
            start = [w.astype(floatx) for w in model.get_weights()]
            model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.SGD(1.0))
            loss = model.train_on_batch(x.astype(floatx), y)
            results[name] = (loss, model.get_weights(), model.predict(x.astype(floatx), verbose=0))
        finally:
            backend.set_backend(old_backend)
            backend.set_floatx(old_floatx)
    assert [w.dtype for w in results["numpy"][1]] == [np.float64] * len(start)
    np.testing.assert_allclose(results["fastconv"][0], results["numpy"][0], rtol=1e-5)
    for got, want in zip(results["fastconv"][1], results["numpy"][1]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results["fastconv"][2], results["numpy"][2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make_layer", [
    lambda: layers.DepthwiseConv2D(3, bias_initializer="random_normal"),
    lambda: layers.DepthwiseConv2D((2, 3), strides=2, padding="same", depth_multiplier=2, activation="tanh"),
    lambda: layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, use_bias=False),
    lambda: layers.SeparableConv2D(4, 3, bias_initializer="random_normal", activation="sigmoid"),
    lambda: layers.SeparableConv2D(3, (3, 2), strides=(2, 1), padding="same", depth_multiplier=2),
])
def test_depthwise_and_separable_conv_backward(float64_numpy, seeded, make_layer):
    check_layer_gradients(make_layer(), (2, 7, 6, 3))


def test_depthwise_and_separable_conv_forward_against_conv2d():
    """A depthwise conv is a Conv2D whose kernel is zero between channels; a separable conv, that
    followed by a 1x1 Conv2D."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    for options in ({}, {"strides": 2, "padding": "same"}, {"dilation_rate": 2, "padding": "same"}):
        depthwise = layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, **options)
        separable = layers.SeparableConv2D(5, 3, depth_multiplier=2, **options)
        out, out_separable = depthwise(x), separable(x)
        full = np.zeros((3, 3, 3, 6), np.float32)
        for c in range(3):
            full[:, :, c, 2 * c:2 * c + 2] = depthwise.kernel.value[:, :, c, :]
        dense = layers.Conv2D(6, 3, use_bias=False, **options)
        dense(x)
        dense.kernel.assign(full)
        np.testing.assert_allclose(out, dense(x), rtol=1e-5, atol=1e-5)
        full[:, :, :, :] = 0
        for c in range(3):
            full[:, :, c, 2 * c:2 * c + 2] = separable.depthwise_kernel.value[:, :, c, :]
        dense.kernel.assign(full)
        pointwise = layers.Conv2D(5, 1, use_bias=False)
        pointwise(dense(x))
        pointwise.kernel.assign(separable.pointwise_kernel.value)
        np.testing.assert_allclose(out_separable, pointwise(dense(x)), rtol=1e-5, atol=1e-5)
        assert out.shape == depthwise.compute_output_shape(x.shape)


@pytest.mark.parametrize("shared_axes", [None, [1, 2], 3])
def test_prelu_backward(float64_numpy, seeded, shared_axes):
    check_layer_gradients(layers.PReLU(alpha_initializer="random_uniform", shared_axes=shared_axes), (3, 4, 5, 2))


def test_gaussian_noise_adds_noise_of_stddev_in_training_only():
    x = np.zeros((200, 50), np.float32)
    noise = layers.GaussianNoise(0.5, seed=3)
    assert noise(x, training=False) is x or np.array_equal(noise(x, training=False), x)
    noisy = noise(x, training=True)
    assert noisy.dtype == np.float32 and abs(noisy.std() - 0.5) < 0.02 and abs(noisy.mean()) < 0.02
    out, ctx = noise.forward(x, training=True)
    grad = np.ones_like(x)
    assert noise.backward(ctx, grad) is grad


@pytest.mark.parametrize("options", [{}, {"center": False}, {"scale": False}])
def test_layer_normalization_backward(float64_numpy, seeded, options):
    layer = layers.LayerNormalization(gamma_initializer="random_normal", beta_initializer="random_normal", **options)
    check_layer_gradients(layer, (3, 4, 6))


@pytest.mark.parametrize("groups, shape", [(2, (3, 4, 5, 6)), (1, (2, 3, 6)), (6, (2, 3, 3, 6)), (3, (4, 6))])
def test_group_normalization_backward_and_forward(float64_numpy, seeded, groups, shape):
    layer = layers.GroupNormalization(groups, gamma_initializer="random_normal", beta_initializer="random_normal")
    check_layer_gradients(layer, shape)
    x = np.random.default_rng(1).standard_normal(shape)
    grouped = x.reshape(shape[0], -1, groups, shape[-1] // groups)
    mean, variance = grouped.mean(axis=(1, 3), keepdims=True), grouped.var(axis=(1, 3), keepdims=True)
    expected = ((grouped - mean) / np.sqrt(variance + 1e-3)).reshape(shape) * layer.gamma.value + layer.beta.value
    np.testing.assert_allclose(layer(x), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="equal groups"):
        layers.GroupNormalization(4)(np.zeros((2, 6)))


def test_layer_normalization_and_permute_forward_against_numpy():
    x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    out = layers.LayerNormalization(epsilon=1e-3)(x)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(layers.Permute((2, 1))(x), x.transpose(0, 2, 1))
    with pytest.raises(ValueError, match="permutation"):
        layers.Permute((0, 1))
    with pytest.raises(ValueError, match="last axis only"):
        layers.LayerNormalization(axis=1)


def test_batch_normalization_statistics():
    layer = layers.BatchNormalization()
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 4)).astype(np.float32)
    out = layer(x, training=True)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(out.var(axis=0), 4 / (4 + 1e-3), rtol=1e-3)
    np.testing.assert_allclose(layer.moving_mean.value, 0.01 * x.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(layer.moving_variance.value, 0.99 + 0.01 * x.var(axis=0), rtol=1e-4)
    inference = layer(x, training=False)  # uses the moving statistics: barely normalised yet
    np.testing.assert_allclose(inference, (x - layer.moving_mean.value) / np.sqrt(layer.moving_variance.value + 1e-3),
                               rtol=1e-4)
    assert len(layer.trainable_weights) == 2 and len(layer.non_trainable_weights) == 2


def test_dropout_scales_and_masks():
    keras.utils.set_random_seed(0)
    layer = layers.Dropout(0.25)
    x = np.ones((200, 50), dtype=np.float32)
    np.testing.assert_array_equal(layer(x), x)  # inference: identity
    out, mask = layer.forward(x, training=True)
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.75)}
    assert abs((out == 0).mean() - 0.25) < 0.02
    grad = np.full_like(x, 2.0)
    np.testing.assert_array_equal(layer.backward(mask, grad), 2 * out)


@pytest.mark.parametrize("backend_name", ["fastconv", "numpy"])
def test_dropout_backward_applies_the_forward_mask_drawn_from_the_same_stream(backend_name):
    """The seed comes from the seeded generator as before, the forward keeps no mask, and the backward
    multiplies by the mask fastconv.reference draws for that seed."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 6, 6, 8)).astype(np.float32)
    grad = rng.standard_normal(x.shape).astype(np.float32)
    keras.utils.set_random_seed(3)
    seed = int(backend.rng().integers(0, 2**63))
    keras.utils.set_random_seed(3)
    backend.set_backend(backend_name)
    try:
        layer = layers.Dropout(0.4)
        out, ctx = layer.forward(x, training=True)
        dx = layer.backward(ctx, grad)
    finally:
        backend.set_backend("fastconv")
    expected, mask = reference.dropout(x, 0.4, seed)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(dx, grad * mask)
    # a layer's own seed=: each call draws what its generator's integers(0, 2**63) gives next
    own = np.random.default_rng(11)
    layer = layers.Dropout(0.4, seed=11)
    for _ in range(3):
        np.testing.assert_array_equal(layer.forward(x, training=True)[0],
                                      reference.dropout(x, 0.4, int(own.integers(0, 2**63)))[0])


def test_conv2d_groups_other_than_one_are_refused():
    assert layers.Conv2D(4, 3, groups=1).filters == 4
    with pytest.raises(ValueError, match="groups must be 1"):
        layers.Conv2D(4, 3, groups=2)


def test_spatial_dropout_drops_whole_channels():
    keras.utils.set_random_seed(0)
    layer = layers.SpatialDropout2D(0.5)
    x = np.ones((40, 3, 4, 50), dtype=np.float32)
    np.testing.assert_array_equal(layer(x), x)  # inference: identity
    out, mask = layer.forward(x, training=True)
    per_channel = out.reshape(40, 12, 50)
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))  # a channel is kept or dropped whole
    assert set(np.unique(out)) == {0.0, 2.0} and abs((out == 0).mean() - 0.5) < 0.05
    grad = np.full_like(x, 3.0)
    np.testing.assert_array_equal(layer.backward(mask, grad), 3 * out)
    with pytest.raises(ValueError, match="4-D"):
        layers.SpatialDropout2D(0.2)(np.ones((2, 3), np.float32))


def test_output_shapes_match_forward(seeded):
    x = np.zeros((2, 9, 8, 3), np.float32)
    for layer in [layers.Conv2D(5, 3, strides=2, padding="same"), layers.Conv2D(5, (3, 2), padding="valid"),
                  layers.Conv2D(2, 3, dilation_rate=2), layers.MaxPool2D(3, 2, "same"), layers.AvgPool2D(2),
                  layers.GlobalAveragePooling2D(), layers.Flatten(), layers.Reshape((-1, 3))]:
        expected = layer.compute_output_shape((None,) + x.shape[1:])
        assert (None,) + layer(x).shape[1:] == expected, layer


def test_activation_names_are_case_insensitive_and_callables_accepted():
    for name in ["ReLU", "RELU", "Sigmoid", "LINEAR", "Softmax", "TanH", "leaky_relu", None]:
        layers.Dense(2, activation=name)
    assert layers.Dense(2, activation=keras.activations.tanh).activation is keras.activations.tanh


def test_both_backends_give_the_same_forward_and_backward(seeded):
    model = keras.Sequential([
        layers.Conv2D(4, 3, padding="same", activation="relu", input_shape=(8, 8, 2)),
        layers.BatchNormalization(), layers.MaxPool2D(), layers.Conv2D(3, 3, activation="tanh"),
        layers.AveragePooling2D(padding="same"), layers.Flatten(), layers.Dense(5, activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    x = np.random.default_rng(1).standard_normal((6, 8, 8, 2)).astype(np.float32)
    y = keras.utils.to_categorical(np.arange(6) % 5, 5)
    start = model.get_weights()
    results = {}
    for name in ("fastconv", "numpy"):
        backend.set_backend(name)
        try:
            model.set_weights(start)
            model.compile(loss="categorical_crossentropy", optimizer="adam")
            losses = [model.train_on_batch(x, y) for _ in range(3)]
            results[name] = (losses, model.get_weights(), model.predict(x, verbose=0))
        finally:
            backend.set_backend("fastconv")
    np.testing.assert_allclose(results["fastconv"][0], results["numpy"][0], rtol=1e-4)
    for a, b in zip(results["fastconv"][1], results["numpy"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results["fastconv"][2], results["numpy"][2], rtol=1e-4, atol=1e-6)


def test_backend_switch_validates_and_honours_environment(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.set_backend("torch")
    monkeypatch.setenv("FASTCONV_BACKEND", "numpy")
    try:
        backend._backend_from_environment()
        assert backend.get_backend() == "numpy"
        assert backend.ops() is __import__("fastconv.reference").reference
    finally:
        backend.set_backend("fastconv")


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="unknown activation 'relux'"):
        layers.Dense(3, activation="relux")
    with pytest.raises(ValueError, match="units must be a positive int"):
        layers.Dense(0)
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same'"):
        layers.Conv2D(3, 3, padding="full")
    with pytest.raises(ValueError, match="unknown initializer"):
        layers.Conv2D(3, 3, kernel_initializer="glorot_magic")
    with pytest.raises(ValueError, match="unknown regularizer"):
        layers.Dense(3, kernel_regularizer="l3")
    with pytest.raises(ValueError, match="rate must be a number in"):
        layers.Dropout(1.5)
    with pytest.raises(ValueError, match="no known gradient"):
        layers.Dense(3, activation=lambda x: x)


def test_built_layer_rejects_wrong_input_shape():
    layer = layers.Dense(3)
    layer(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="layer 'dense.*' expects input axis -1 of size 4"):
        layer(np.zeros((2, 5)))
    conv = layers.Conv2D(2, 3)
    conv(np.zeros((1, 5, 5, 3)))
    with pytest.raises(ValueError, match="expects 4-D input"):
        conv(np.zeros((5, 5, 3)))


def test_initializers_have_keras_statistics():
    keras.utils.set_random_seed(3)
    shape = (3, 3, 64, 128)
    fan_in, fan_out = 9 * 64, 9 * 128
    checks = {"glorot_uniform": 2 / (fan_in + fan_out), "glorot_normal": 2 / (fan_in + fan_out),
              "he_normal": 2 / fan_in, "he_uniform": 2 / fan_in}
    for name, variance in checks.items():
        values = keras.initializers.get(name)(shape)
        assert values.dtype == np.float32
        assert abs(values.var() / variance - 1) < 0.05, name
    assert np.all(keras.initializers.get("zeros")((3,)) == 0)
    assert np.all(keras.initializers.get("ones")((3,)) == 1)
    assert abs(keras.initializers.get("random_normal")((10000,)).std() - 0.05) < 0.003
