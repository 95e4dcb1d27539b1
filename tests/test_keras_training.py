"""fastconv.keras training: losses, optimizers, the issue's code samples, learning, callbacks, progress output."""
import csv
import math
import struct

import numpy as np
import pytest

import fastconv
from fastconv import keras
from fastconv.keras import layers, losses, optimizers
from fastconv.keras.models import Sequential
from fastconv.keras.layers import Conv2D, Dense

import test_keras_layers

float64_numpy = test_keras_layers.float64_numpy  # the fixture, shared
numeric_gradient = test_keras_layers.numeric_gradient


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ----- losses -----
def test_loss_values_match_hand_computation():
    y = np.array([[0, 1, 0], [1, 0, 0]], np.float64)
    p = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]])
    np.testing.assert_allclose(losses.categorical_crossentropy(y, p), [-np.log(0.7), -np.log(0.5)])
    np.testing.assert_allclose(losses.sparse_categorical_crossentropy([1, 0], p), [-np.log(0.7), -np.log(0.5)])
    np.testing.assert_allclose(losses.mean_squared_error(y, p), ((y - p) ** 2).mean(axis=1))
    np.testing.assert_allclose(losses.mae(y, p), np.abs(y - p).mean(axis=1))
    yb, pb = np.array([[1.0], [0.0]]), np.array([[0.9], [0.3]])
    np.testing.assert_allclose(losses.binary_crossentropy(yb, pb), [-np.log(0.9), -np.log(0.7)])
    assert math.isclose(losses.CategoricalCrossentropy()(y, p), (-np.log(0.7) - np.log(0.5)) / 2)
    z = np.array([[1.0, 2.0, 0.5]])
    assert math.isclose(losses.CategoricalCrossentropy(from_logits=True)(np.array([[0, 0, 1.0]]), z),
                        -np.log(softmax(z)[0, 2]))


@pytest.mark.parametrize("loss, y, p", [
    (losses.CategoricalCrossentropy(), [[0, 1, 0], [0.2, 0.3, 0.5]], [[0.2, 0.5, 0.3], [0.1, 0.6, 0.3]]),
    (losses.CategoricalCrossentropy(from_logits=True), [[0, 1, 0], [1, 0, 0]], [[0.2, -1.5, 0.3], [2.0, 0.6, -0.3]]),
    (losses.SparseCategoricalCrossentropy(), [1, 2], [[0.2, 0.5, 0.3], [0.1, 0.6, 0.3]]),
    (losses.BinaryCrossentropy(), [[1, 0], [0, 1]], [[0.8, 0.3], [0.4, 0.1]]),
    (losses.BinaryCrossentropy(from_logits=True), [[1, 0], [0, 1]], [[0.8, -0.3], [2.4, 0.1]]),
    (losses.MeanSquaredError(), [[1, 0], [0, 1]], [[0.8, 0.3], [0.4, 0.1]]),
    (losses.MeanAbsoluteError(), [[1, 0], [0, 1]], [[0.8, 0.3], [0.4, 0.1]]),
    (losses.Huber(), [[1, 0, 2], [0, 1, -1]], [[0.8, 1.7, 0.3], [0.4, 0.1, 1.5]]),
    (losses.Huber(delta=0.3), [[1, 0, 2], [0, 1, -1]], [[0.8, 1.7, 0.3], [0.4, 0.1, 1.5]]),
    (losses.LogCosh(), [[1, 0, 2], [0, 1, -1]], [[0.8, 1.7, 0.3], [0.4, 0.1, 1.5]]),
    (losses.KLDivergence(), [[0.2, 0.8], [0.5, 0.5]], [[0.6, 0.4], [0.3, 0.7]]),
])
def test_loss_gradients_match_finite_differences(loss, y, p):
    p = np.array(p, np.float64)
    target = loss.prepare_targets(np.array(y), p.shape, p.dtype)
    picks, numeric = numeric_gradient(lambda: float(np.mean(loss.per_sample(target, p))), p, count=p.size)
    np.testing.assert_allclose(loss.gradient(target, p).reshape(-1)[picks], numeric, rtol=1e-6, atol=1e-8)


def test_fused_gradients_equal_the_chain_through_the_activation():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 5))
    y = keras.utils.to_categorical([0, 3, 2, 4], 5).astype(np.float64)
    cce = losses.CategoricalCrossentropy()
    values, grad = cce.fused(y, z, keras.activations.softmax)
    p = softmax(z)
    np.testing.assert_allclose(grad, (p - y) / 4, atol=1e-12)
    chained = keras.activations.backward(keras.activations.softmax, cce.gradient(y, p), z, p)
    np.testing.assert_allclose(grad, chained, atol=1e-9)
    np.testing.assert_allclose(values, cce.per_sample(y, p), rtol=1e-9)
    bce = losses.BinaryCrossentropy()
    yb = (rng.random((4, 2)) > 0.5).astype(np.float64)
    values, grad = bce.fused(yb, z[:, :2], keras.activations.sigmoid)
    sig = 1 / (1 + np.exp(-z[:, :2]))
    np.testing.assert_allclose(grad, (sig - yb) / 8, atol=1e-12)
    # Stable for huge logits where the probability rounds to exactly 0 or 1.
    values, grad = bce.fused(np.array([[0.0]]), np.array([[200.0]]), keras.activations.sigmoid)
    assert np.isclose(values[0], 200.0) and np.isclose(grad[0, 0], 1.0)
    assert cce.fused(y, z, keras.activations.relu) is None


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6), (2, 1)])
def test_sparse_fused_loss_from_labels_matches_a_float64_reference(shape):
    rng = np.random.default_rng(1)
    z = (3 * rng.standard_normal(shape)).astype(np.float32)
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    loss = losses.SparseCategoricalCrossentropy()
    values, grad = loss.fused_from_labels(labels, z, keras.activations.softmax)
    z64 = z.astype(np.float64)
    log_p = z64 - z64.max(axis=-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=-1, keepdims=True))
    y = np.eye(shape[-1])[labels]
    assert values.dtype == grad.dtype == np.float32 and values.shape == shape[:-1] and grad.shape == shape
    np.testing.assert_allclose(values, -(y * log_p).sum(axis=-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, (np.exp(log_p) - y) / labels.size, rtol=1e-5, atol=1e-7)
    # the one-hot path gives the same bits, and a non-softmax output or from_logits is not fused here
    one_hot_values, one_hot_grad = loss.fused(loss.prepare_targets(labels, shape, np.float32), z,
                                              keras.activations.softmax)
    assert values.tobytes() == one_hot_values.tobytes() and grad.tobytes() == one_hot_grad.tobytes()
    assert loss.fused_from_labels(labels, z, keras.activations.sigmoid) is None
    assert losses.SparseCategoricalCrossentropy(from_logits=True).fused_from_labels(labels, z, None) is None


@pytest.mark.parametrize("metric", ["accuracy", "sparse_categorical_accuracy", "acc"])
def test_sparse_training_step_loss_accuracy_and_update_match_a_float64_reference(metric):
    """One SGD step of Dense(relu) -> Dense(softmax) on integer labels, computed by hand in float64."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 6)).astype(np.float32)
    labels = rng.integers(0, 4, size=12).astype(np.uint8)
    model = Sequential([keras.Input((6,)), Dense(8, activation="relu"), Dense(4, activation="softmax")])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.5), loss="sparse_categorical_crossentropy",
                  metrics=[metric])
    w1, b1, w2, b2 = [w.astype(np.float64) for w in model.get_weights()]
    b1 += 0.1 * rng.standard_normal(b1.shape)
    b2 += 0.1 * rng.standard_normal(b2.shape)
    model.set_weights([w1, b1, w2, b2])
    logs = model.train_on_batch(x, labels, return_dict=True)
    h = np.maximum(x @ w1 + b1, 0)
    p = softmax(h @ w2 + b2)
    y = np.eye(4)[labels]
    assert math.isclose(logs["loss"], -np.log(p[np.arange(12), labels]).mean(), rel_tol=1e-5)
    assert logs[metric] == pytest.approx(np.mean(p.argmax(axis=1) == labels), abs=1e-7)
    dz2 = (p - y) / 12
    dh = (dz2 @ w2.T) * (h > 0)
    expected = [w1 - 0.5 * x.T @ dh, b1 - 0.5 * dh.sum(axis=0), w2 - 0.5 * h.T @ dz2, b2 - 0.5 * dz2.sum(axis=0)]
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_sparse_loss_subclass_with_its_own_targets_trains_on_them():
    """The step hands the built-in sparse cross-entropy its labels directly; a subclass that makes its
    own targets (here smoothed) must still get them."""
    class Smoothed(losses.SparseCategoricalCrossentropy):
        def prepare_targets(self, y_true, pred_shape, dtype):
            return (super().prepare_targets(y_true, pred_shape, dtype) * 0.8 + 0.05).astype(dtype)

    rng = np.random.default_rng(4)
    x, labels = rng.standard_normal((10, 5)).astype(np.float32), rng.integers(0, 4, size=10)
    model = Sequential([keras.Input((5,)), Dense(4, activation="softmax")])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.0), loss=Smoothed(), metrics=["accuracy"])
    w, b = [v.astype(np.float64) for v in model.get_weights()]
    logs = model.train_on_batch(x, labels, return_dict=True)
    p = softmax(x @ w + b)
    targets = np.eye(4)[labels] * 0.8 + 0.05
    assert math.isclose(logs["loss"], -(targets * np.log(p)).sum(axis=1).mean(), rel_tol=1e-5)
    assert logs["accuracy"] == pytest.approx(np.mean(p.argmax(axis=1) == labels), abs=1e-7)


def test_train_on_batch_checks_each_call_s_arrays_after_accepting_others():
    rng = np.random.default_rng(3)
    x, labels = rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 4, size=8)
    model = Sequential([keras.Input((6,)), Dense(4, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    first = model.train_on_batch(x, labels, return_dict=True)
    assert set(first) == {"loss", "accuracy"}
    with pytest.raises(ValueError, match="must have shape"):
        model.train_on_batch(x[:, :5], labels)
    with pytest.raises(ValueError, match="same number of samples"):
        model.train_on_batch(x, labels[:7])
    with pytest.raises(ValueError, match="labels of shape"):
        model.train_on_batch(x, labels.reshape(8, 1, 1))
    with pytest.raises(TypeError, match="must hold numbers"):
        model.train_on_batch(x, labels.astype(str))
    with pytest.raises(ValueError, match=r"must be integers in \[0, 4\)"):
        model.train_on_batch(x, labels + 4)
    assert np.all(np.isfinite(model.train_on_batch(x, labels)))  # [loss, accuracy]
    model.add(Dense(3, activation="softmax"))  # a grown Sequential: its new output is checked again
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="labels of shape"):
        model.train_on_batch(x, np.eye(4, dtype=np.float32)[labels])


def test_categorical_crossentropy_on_one_sigmoid_unit_is_keras_like():
    # Keras rescales predictions to sum to one: a single unit always predicts "1", the loss is ~0.
    values = losses.categorical_crossentropy(np.array([[1.0], [0.0]]), np.array([[0.3], [0.8]]))
    assert np.all(values < 1e-6)


def test_label_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"labels of shape \(2,\) do not fit model output of shape \(2, 3\).*sparse"):
        losses.categorical_crossentropy(np.array([1, 2]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"integers in \[0, 3\)"):
        losses.sparse_categorical_crossentropy(np.array([1, 3]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="unknown loss 'cross_entropy'"):
        losses.get("cross_entropy")


# ----- optimizers -----
def _one_step(optimizer, w, g, steps=1):
    variable = keras.Variable(w.copy(), dtype=w.dtype, name="w")
    for _ in range(steps):
        optimizer.apply([g.copy()], [variable])
    return variable.value


W = np.array([0.5, -1.0, 2.0])
G = np.array([0.1, -0.3, 0.5])


def test_sgd_and_momentum_and_nesterov():
    np.testing.assert_allclose(_one_step(optimizers.SGD(0.1), W, G), W - 0.1 * G)
    v1 = -0.1 * G
    v2 = 0.9 * v1 - 0.1 * G
    np.testing.assert_allclose(_one_step(optimizers.SGD(lr=0.1, momentum=0.9), W, G, 2), W + v1 + v2)
    nesterov = W + (0.9 * v1 - 0.1 * G) + (0.9 * v2 - 0.1 * G)
    np.testing.assert_allclose(_one_step(optimizers.SGD(0.1, momentum=0.9, nesterov=True), W, G, 2), nesterov)


@pytest.mark.parametrize("make_optimizer", [
    lambda: optimizers.SGD(0.1),
    lambda: optimizers.SGD(0.1, momentum=0.9),
    lambda: optimizers.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda: optimizers.RMSprop(0.01),
    lambda: optimizers.RMSprop(0.01, momentum=0.9),
    lambda: optimizers.Adam(0.01),
    lambda: optimizers.Adadelta(1.0),
], ids=["sgd", "sgd-momentum", "sgd-nesterov-decay", "rmsprop", "rmsprop-momentum", "adam", "adadelta"])
def test_fused_c_updates_of_float32_weights_match_the_float64_numpy_rule(make_optimizer):
    """float32 weights are updated by fastconv's kernels, float64 ones by fastconv.reference (ops_for)."""
    rng = np.random.default_rng(0)
    w, g = rng.standard_normal(1000), rng.standard_normal(1000)
    assert keras.backend.get_backend() == "fastconv"
    got = _one_step(make_optimizer(), w.astype(np.float32), g.astype(np.float32), steps=3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _one_step(make_optimizer(), w, g, steps=3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam", "adamw", "nadam", "adadelta"])
def test_apply_to_a_model_s_variables_at_once_gives_each_variable_s_own_update(name):
    """apply() updates all float32 variables in one C call: the same bits as one variable at a time,
    float64 NumPy's rule to rounding, and a variable listed twice is updated twice."""
    make = {"sgd": lambda: optimizers.SGD(0.1, momentum=0.9), "rmsprop": lambda: optimizers.RMSprop(0.01),
            "adam": lambda: optimizers.Adam(0.01), "adamw": lambda: optimizers.AdamW(0.01),
            "nadam": lambda: optimizers.Nadam(0.01), "adadelta": lambda: optimizers.Adadelta(1.0)}[name]
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 1, 32), (32,), (400, 700), (10,)]
    ws = [rng.standard_normal(shape) for shape in shapes]
    together = [keras.Variable(w.astype(np.float32)) for w in ws]
    wide = [keras.Variable(w, dtype="float64") for w in ws]
    optimizer, wide_optimizer = make(), make()
    alone = [(make(), keras.Variable(w.astype(np.float32))) for w in ws]
    for _ in range(3):
        gs = [rng.standard_normal(shape) for shape in shapes]
        optimizer.apply([g.astype(np.float32) for g in gs], together)
        wide_optimizer.apply(gs, wide)
        for (one, variable), g in zip(alone, gs):
            one.apply([g.astype(np.float32)], [variable])
    for variable, (_, single), exact in zip(together, alone, wide):
        np.testing.assert_array_equal(variable.value, single.value)
        np.testing.assert_allclose(variable.value, exact.value, rtol=1e-4, atol=1e-5)
    twice = keras.Variable(np.ones(5, np.float32))
    optimizers.SGD(0.25).apply([np.ones(5, np.float32)] * 2, [twice, twice])
    np.testing.assert_array_equal(twice.value, 0.5)


def test_adam_rmsprop_adagrad_adadelta_one_step():
    m, v = 0.1 * G, 0.001 * G * G
    lr_t = 0.01 * math.sqrt(1 - 0.999) / (1 - 0.9)
    np.testing.assert_allclose(_one_step(optimizers.Adam(0.01), W, G), W - lr_t * m / (np.sqrt(v) + 1e-7))
    velocity = 0.1 * G * G
    np.testing.assert_allclose(_one_step(optimizers.RMSprop(lr=0.01), W, G), W - 0.01 * G / np.sqrt(velocity + 1e-7))
    accumulator = 0.1 + G * G
    np.testing.assert_allclose(_one_step(optimizers.Adagrad(0.01), W, G), W - 0.01 * G / np.sqrt(accumulator + 1e-7))
    accumulated = 0.05 * G * G
    delta = -np.sqrt(1e-7) / np.sqrt(accumulated + 1e-7) * G
    np.testing.assert_allclose(_one_step(optimizers.Adadelta(learning_rate=1.0), W, G), W + delta)
    assert optimizers.get("adadelta").learning_rate == 0.001  # Keras 3 default


def test_adamax_and_lion_two_steps():
    m1, u1 = 0.1 * G, np.abs(G)
    w1 = W - 0.01 * m1 / ((1 - 0.9) * (u1 + 1e-7))
    m2, u2 = m1 + 0.1 * (G - m1), np.maximum(0.999 * u1, np.abs(G))
    np.testing.assert_allclose(_one_step(optimizers.Adamax(0.01), W, G, 2), w1 - 0.01 * m2 / ((1 - 0.81) * (u2 + 1e-7)))
    lion = W - 0.001 * np.sign(0.1 * G)  # m starts at 0
    lion -= 0.001 * np.sign(0.9 * 0.01 * G + 0.1 * G)  # m after one step: (1 - 0.99) g
    np.testing.assert_allclose(_one_step(optimizers.Lion(), W, G, 2), lion)
    assert isinstance(optimizers.get("adamax"), optimizers.Adamax) and isinstance(optimizers.get("lion"), optimizers.Lion)


def test_schedules_and_optimizer_lookup():
    schedule = optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert math.isclose(schedule(20), 0.025)
    stepped = optimizers.schedules.ExponentialDecay(0.1, 10, 0.5, staircase=True)
    assert math.isclose(stepped(19), 0.05)
    piecewise = optimizers.schedules.PiecewiseConstantDecay([5, 10], [1.0, 0.5, 0.1])
    assert [piecewise(s) for s in (0, 5, 6, 10, 11)] == [1.0, 1.0, 0.5, 0.5, 0.1]
    cosine = optimizers.schedules.CosineDecay(0.1, decay_steps=100, alpha=0.2)
    assert [cosine(s) for s in (0, 100, 500)] == pytest.approx([0.1, 0.02, 0.02])
    assert cosine(50) == pytest.approx(0.1 * (0.8 * 0.5 + 0.2))
    warm = optimizers.schedules.CosineDecay(0.0, decay_steps=10, warmup_target=1.0, warmup_steps=4)
    assert [warm(s) for s in (0, 2, 4, 9, 14)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0], abs=1e-12)
    again = optimizers.schedules.deserialize(optimizers.schedules.serialize(warm))
    assert again.get_config() == warm.get_config()
    sgd = optimizers.SGD(learning_rate=schedule)
    _one_step(sgd, W, G, steps=20)
    assert math.isclose(sgd.learning_rate, 0.025)
    assert isinstance(optimizers.get("Adam"), optimizers.Adam)
    with pytest.raises(ValueError, match="unknown optimizer 'adabelief'"):
        optimizers.get("adabelief")


def test_weight_decay_adamw_and_nadam_steps():
    """Keras 3's rules: decoupled weight decay w -= lr * wd * w before the update (AdamW: Adam with 0.004),
    and Nadam's momentum schedule mu_t = beta_1 * (1 - 0.5 * 0.96 ** t) over three steps (Keras 3's
    nadam.py; tf.keras had 0.96 ** (0.004 t))."""
    m, v = 0.1 * G, 0.001 * G * G
    adam_delta = 0.01 * math.sqrt(1 - 0.999) / (1 - 0.9) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(_one_step(optimizers.AdamW(0.01), W, G), W * (1 - 0.01 * 0.004) - adam_delta)
    np.testing.assert_allclose(_one_step(optimizers.SGD(0.1, weight_decay=0.5), W, G), W * (1 - 0.05) - 0.1 * G)
    w, m, v, product = W.copy(), np.zeros(3), np.zeros(3), 1.0
    for t in (1, 2, 3):
        mu, mu_next = (0.9 * (1 - 0.5 * 0.96 ** step) for step in (t, t + 1))
        product *= mu
        m = 0.9 * m + 0.1 * G
        v = 0.999 * v + 0.001 * G * G
        m_hat = mu_next * m / (1 - product * mu_next) + (1 - mu) * G / (1 - product)
        w = w - 0.01 * m_hat / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-7)
    np.testing.assert_allclose(_one_step(optimizers.Nadam(0.01), W, G, steps=3), w, rtol=1e-12)
    for name, cls in [("adamw", optimizers.AdamW), ("nadam", optimizers.Nadam)]:
        optimizer = optimizers.get(name)
        assert type(optimizer) is cls and optimizers.get(optimizers.serialize(optimizer)).get_config() == \
            optimizer.get_config()
    assert optimizers.get("adamw").weight_decay == 0.004
    with pytest.raises(ValueError, match="weight_decay"):
        optimizers.Adam(weight_decay=-1)


# ----- the code samples -----
def test_sequential_sample_runs_and_learns(capsys):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    X = rng.random((100, 8))
    Y = (X[:, :4].sum(axis=1) > X[:, 4:].sum(axis=1)).astype(np.float64)
    model = Sequential()
    model.add(Dense(12, input_dim=8, activation='relu'))
    model.add(Dense(8, activation='relu'))
    model.add(Dense(1, activation='sigmoid'))
    model.compile(loss='binary_crossentropy', optimizer='adam', metrics=['accuracy'])
    history = model.fit(X, Y, epochs=150, batch_size=10)
    assert history.history["accuracy"][-1] > 0.9
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "Epoch 150/150" in capsys.readouterr().out


def test_functional_cnn_sample_runs(capsys):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train = rng.random((40, 64, 64, 1)).astype(np.float32)
    y_train = (rng.random((40, 1)) > 0.5).astype(np.float32)
    x_test, y_test = x_train[:10], y_train[:10]
    inputs = keras.Input(shape=[64, 64, 1])
    conv1 = keras.layers.Conv2D(filters=16, kernel_size=3, strides=(1, 1), padding="same", activation="relu")
    maxPool1 = keras.layers.MaxPool2D(pool_size=(2, 2), strides=(2, 2), padding="valid")
    conv2 = keras.layers.Conv2D(filters=32, kernel_size=3, strides=(1, 1), padding="same", activation="relu")
    maxPool2 = keras.layers.MaxPool2D(pool_size=(2, 2), strides=(2, 2), padding="valid")
    flatten = keras.layers.Flatten()
    dense = keras.layers.Dense(units=100, activation="ReLU")
    output = keras.layers.Dense(units=1, activation="sigmoid")
    x = maxPool1(conv1(inputs)); x = maxPool2(conv2(x)); x = flatten(x); x = dense(x); outputs = output(x)  # noqa: E702
    model = keras.Model(inputs=inputs, outputs=outputs)
    loss = keras.losses.categorical_crossentropy
    optimizer = keras.optimizers.SGD(lr=0.01, momentum=0.9)
    model.compile(loss=loss, optimizer=optimizer)
    model.fit(x_train, y_train, epochs=2, batch_size=32)
    for i in range(0, 2):
        x_batch, y_batch = x_train[i * 8:(i + 1) * 8], y_train[i * 8:(i + 1) * 8]
        model.train_on_batch(x_batch, y_batch)
    loss_and_metrics = model.evaluate(x_test, y_test, batch_size=128)
    classes = model.predict(x_test, batch_size=128)
    assert isinstance(loss_and_metrics, float) and loss_and_metrics < 1e-6
    assert classes.shape == (10, 1) and np.all((classes > 0) & (classes < 1))
    assert "Epoch 2/2" in capsys.readouterr().out


# ----- learning -----
def bars(count, rng, size=12):
    """Images with one vertical (class 0) or horizontal (class 1) bar at a random place, plus noise."""
    images = rng.random((count, size, size, 1)).astype(np.float32) * 0.3
    labels = rng.integers(0, 2, count)
    for image, label, place in zip(images, labels, rng.integers(1, size - 1, count)):
        if label:
            image[place, 2:-2] = 1.0
        else:
            image[2:-2, place] = 1.0
    return (images * 255).astype(np.uint8), labels


def test_small_cnn_learns_bars():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = bars(512, rng)
    x_test, y_test = bars(200, rng)
    model = keras.Sequential([
        layers.Reshape((12, 12, 1), input_shape=(12, 12, 1)),
        layers.Conv2D(8, 3, activation="relu", padding="same"), layers.MaxPooling2D(),
        layers.Conv2D(8, 3, activation="relu"), layers.GlobalAveragePooling2D(),
        layers.Dense(2, activation="softmax")])
    model.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train / 255.0, y_train, epochs=6, batch_size=32, verbose=0)
    loss, accuracy = model.evaluate(x_test / 255.0, y_test, verbose=0)
    assert accuracy > 0.95, (loss, accuracy)


def test_training_is_deterministic_with_a_seed():
    rng = np.random.default_rng(5)
    x, y = rng.random((64, 6, 6, 2)).astype(np.float32), rng.integers(0, 3, 64)

    def run():
        keras.utils.set_random_seed(7)
        model = keras.Sequential([layers.Conv2D(4, 3, activation="relu", input_shape=(6, 6, 2)), layers.Flatten(),
                                  layers.Dropout(0.3), layers.Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        return model.get_weights()

    first, second = run(), run()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_functional_graph_gradients_with_shared_layers_and_merges(float64_numpy):
    keras.utils.set_random_seed(2)
    a, b = keras.Input(shape=(4,)), keras.Input(shape=(4,))
    shared = layers.Dense(5, activation="tanh", bias_initializer="random_normal")
    merged = layers.Add()([shared(a), shared(b)])
    joined = layers.Concatenate()([merged, layers.Dense(3)(b)])
    hidden = layers.BatchNormalization()(joined)
    out_class = layers.Dense(3, activation="softmax", name="cls")(hidden)
    out_value = layers.Dense(1, name="value")(hidden)
    model = keras.Model(inputs=[a, b], outputs=[out_class, out_value])
    model.compile(optimizer="sgd", loss=["categorical_crossentropy", "mse"], loss_weights=[1.0, 0.5])
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((6, 4)), rng.standard_normal((6, 4))]
    ys = [keras.utils.to_categorical(rng.integers(0, 3, 6), 3), rng.standard_normal((6, 1))]
    trainer = model._trainer

    def total_loss():
        outputs, contexts = model.forward_graph(xs, training=True)
        return trainer._losses_and_gradients(outputs, ys, contexts, False)[0]

    outputs, contexts = model.forward_graph(xs, training=True)
    _, _, grads, fused = trainer._losses_and_gradients(outputs, ys, contexts, True)
    assert fused == [0]  # the softmax output takes the fused gradient
    for variable in model.weights:
        variable.grad = None
    model.backward_graph(contexts, grads, fused)
    for variable in model.trainable_weights:
        picks, numeric = numeric_gradient(total_loss, variable.value, count=6)
        np.testing.assert_allclose(variable.grad.reshape(-1)[picks], numeric, rtol=1e-5, atol=1e-8, err_msg=variable.name)
    assert len(model.layers) == 9  # 2 inputs, shared dense once, add, dense, concat, bn, 2 heads
    logs = model.evaluate(xs, ys, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "cls_loss", "value_loss"}


# ----- fit, callbacks, errors -----
def small_model(**compile_kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([layers.Dense(8, activation="relu", input_shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(**{"optimizer": "adam", "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
                     **compile_kwargs})
    return model


def small_data(count=60):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((count, 4))
    return x, np.argmax(x[:, :3], axis=1)


def test_fit_history_validation_and_evaluate_forms():
    model = small_model()
    x, y = small_data()
    history = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0)
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(len(v) == 3 for v in history.history.values())
    assert model.history is history
    history = model.fit(x, y, epochs=2, validation_data=(x[:10], y[:10]), verbose=0, initial_epoch=1)
    assert history.epoch == [1]
    result = model.evaluate(x, y, verbose=0)
    assert isinstance(result, list) and len(result) == 2
    assert isinstance(model.train_on_batch(x[:8], y[:8]), list)
    assert model.test_on_batch(x[:8], y[:8], return_dict=True).keys() == {"loss", "accuracy"}
    assert model.predict_on_batch(x[:5]).shape == (5, 3)
    np.testing.assert_allclose(model.predict(x, verbose=0).sum(axis=1), 1, rtol=1e-5)


def test_sample_weight_scales_each_sample_loss_and_gradient():
    """Keras' sample_weight: batch loss = sum(w * loss) / batch size, so weights (2, 2, 0, 0) on four
    samples train exactly as the first two alone; evaluate's loss is weighted the same way, and so are
    weighted_metrics (compile's metrics are not, as in Keras 3)."""
    x, y = small_data(8)
    weighted, plain = small_model(optimizer="sgd"), small_model(optimizer="sgd")
    weights = np.array([2, 2, 2, 2, 0, 0, 0, 0], dtype=np.float64)
    weighted.fit(x, y, sample_weight=weights, batch_size=8, epochs=3, shuffle=False, verbose=0)
    plain.fit(x[:4], y[:4], batch_size=4, epochs=3, shuffle=False, verbose=0)
    for a, b in zip(weighted.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    per_sample = keras.losses.sparse_categorical_crossentropy(y, weighted.predict(x, verbose=0))
    correct = weighted.predict(x, verbose=0).argmax(axis=1) == y
    w = np.arange(8.0)
    logs = weighted.evaluate(x, y, sample_weight=w, batch_size=8, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(np.sum(w * per_sample) / 8, rel=1e-5)
    assert logs["accuracy"] == pytest.approx(np.mean(correct), rel=1e-6)
    weighted.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", weighted_metrics=["accuracy"])
    logs = weighted.evaluate(x, y, sample_weight=w, batch_size=8, verbose=0, return_dict=True)
    assert logs["accuracy"] == pytest.approx(np.sum(w * correct) / np.sum(w), rel=1e-6)


def test_class_weight_is_a_sample_weight_per_class():
    x, y = small_data(30)
    by_class, by_sample = small_model(), small_model()
    by_class.fit(x, y, class_weight={0: 3.0, 2: 0.5}, batch_size=10, epochs=2, shuffle=False, verbose=0)
    by_sample.fit(x, y, sample_weight=np.array([3.0, 1.0, 0.5])[y], batch_size=10, epochs=2, shuffle=False,
                  verbose=0)
    for a, b in zip(by_class.get_weights(), by_sample.get_weights()):
        np.testing.assert_array_equal(a, b)
    one_hot = keras.utils.to_categorical(y, 3)
    model = small_model(loss="categorical_crossentropy")
    model.fit(x, one_hot, class_weight={1: 2.0}, sample_weight=np.full(30, 0.5), epochs=1, verbose=0)
    for bad, error, message in [
        (dict(sample_weight=np.ones(29)), ValueError, "one weight per sample"),
        (dict(sample_weight=-np.ones(30)), ValueError, "non-negative"),
        (dict(sample_weight=["a"] * 30), TypeError, "numbers"),
        (dict(class_weight=[1.0, 2.0]), TypeError, "dict"),
        (dict(class_weight={-1: 2.0}), ValueError, "class indices"),
        (dict(class_weight={0: float("nan")}), ValueError, r"class_weight\[0\]"),
    ]:
        with pytest.raises(error, match=message):
            model.fit(x, one_hot, epochs=1, verbose=0, **bad)


def test_top_k_accuracy_metrics():
    from fastconv.keras import metrics
    y_true = keras.utils.to_categorical([2, 0, 1], 3)
    y_pred = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]])
    np.testing.assert_array_equal(metrics.top_k_categorical_accuracy(y_true, y_pred, k=1), [0, 0, 1])  # a tie counts
    np.testing.assert_array_equal(metrics.top_k_categorical_accuracy(y_true, y_pred, k=2), [1, 1, 1])
    model = small_model(metrics=["sparse_top_k_categorical_accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=1),
                                 "accuracy"])
    x, y = small_data()
    history = model.fit(x, y, epochs=1, verbose=0).history
    assert list(history) == ["loss", "sparse_top_k_categorical_accuracy", "sparse_top_1_categorical_accuracy",
                             "accuracy"]
    assert history["sparse_top_k_categorical_accuracy"] == [1.0]  # 3 classes: always in the top 5
    assert history["sparse_top_1_categorical_accuracy"] == history["accuracy"]
    with pytest.raises(ValueError, match="k must be"):
        keras.metrics.TopKCategoricalAccuracy(k=0)


def test_callbacks(tmp_path):
    model = small_model()
    x, y = small_data()
    seen = []
    log_path = tmp_path / "log.csv"
    lr_by_epoch = {0: 0.01, 1: 0.005, 2: 0.001}
    history = model.fit(x, y, epochs=3, verbose=0, validation_split=0.2, callbacks=[
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch)),
        keras.callbacks.CSVLogger(str(log_path)),
        keras.callbacks.LearningRateScheduler(lambda epoch: lr_by_epoch[epoch]),
        keras.callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{val_loss:.2f}.keras")),
    ])
    assert seen == [0, 1, 2]
    assert history.history["learning_rate"] == [0.01, 0.005, 0.001]
    with open(log_path, newline="") as log:
        rows = list(csv.DictReader(log))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"] and "val_loss" in rows[0]
    assert len(list(tmp_path.glob("m-0*-*.keras"))) == 3
    assert not list(tmp_path.glob(".*tmp"))


def test_early_stopping_restores_best_weights_and_reduce_lr():
    model = small_model(optimizer=optimizers.SGD(0.0))  # no learning: the loss never improves
    x, y = small_data()
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=2, restore_best_weights=True)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1)
    model.optimizer.learning_rate = 0.0
    history = model.fit(x, y, epochs=10, verbose=0, shuffle=False, callbacks=[stopper, plateau])
    assert len(history.history["loss"]) == 3 and model.stop_training
    assert stopper.best_weights is not None


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_terminate_on_nan():
    model = small_model(optimizer=optimizers.SGD(1e30))
    x, y = small_data()
    history = model.fit(x * 1e10, y, epochs=5, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1


def test_bad_calls_raise_clear_errors():
    model = small_model()
    x, y = small_data()
    with pytest.raises(ValueError, match=r"input 0 of model .* must have shape \(None, 4\), got an array of shape \(60, 5\)"):
        model.predict(np.zeros((60, 5)), verbose=0)
    with pytest.raises(ValueError, match=r"same number of samples.*\[60\].*\[59\]"):
        model.fit(x, y[:-1], verbose=0)
    with pytest.raises(ValueError, match=r"labels of shape \(60, 2\) do not fit model output of shape \(60, 3\)"):
        model.fit(x, np.zeros((60, 2)), verbose=0)
    with pytest.raises(ValueError, match="unknown loss"):
        model.compile(optimizer="adam", loss="hinge_loss")
    with pytest.raises(ValueError, match="unknown metric"):
        model.compile(optimizer="adam", loss="mse", metrics=["f1"])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        model.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(RuntimeError, match="compile"):
        Sequential([Dense(2, input_dim=3)]).fit(np.zeros((2, 3)), np.zeros((2, 2)))
    a = keras.Input(shape=(3,))
    with pytest.raises(ValueError, match="graph disconnected"):
        keras.Model(inputs=a, outputs=Dense(2)(keras.Input(shape=(3,))))


def test_lazy_sequential_builds_on_first_fit_and_counts_params(capsys):
    model = keras.Sequential()
    model.add(layers.Conv2D(4, 3, activation="relu"))
    model.add(layers.BatchNormalization())
    model.add(layers.Flatten())
    model.add(layers.Dense(2, activation="softmax"))
    with pytest.raises(ValueError, match="not been built"):
        model.summary()
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["acc"])
    x = np.random.default_rng(0).integers(0, 255, (8, 5, 5, 3), dtype=np.uint8)
    history = model.fit(x, keras.utils.to_categorical(np.arange(8) % 2, 2), epochs=1, verbose=0)
    assert "acc" in history.history
    model.summary()
    out = capsys.readouterr().out
    assert "conv2d" in out and "(None, 3, 3, 4)" in out and "112" in out
    # after fit, Keras 3's total also counts the optimizer's state
    assert f"Trainable params: {model.count_params() - 8:,}" in out
    assert "Non-trainable params: 8" in out
    assert model.count_params() == 112 + 16 + 74


def test_regularizers_add_to_the_loss():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([layers.Dense(2, input_dim=3, kernel_regularizer=keras.regularizers.l2(0.1)),
                              layers.Dense(1, kernel_regularizer="l2")])
    model.compile(optimizer=optimizers.SGD(0.0), loss="mse")
    x, y = np.zeros((4, 3)), np.zeros((4, 1))
    kernel0, kernel1 = model.layers[0].kernel.value, model.layers[1].kernel.value
    expected = 0.1 * np.sum(kernel0 ** 2) + 0.01 * np.sum(kernel1 ** 2)
    assert math.isclose(model.evaluate(x, y, verbose=0), expected, rel_tol=1e-5)


# ----- progress output -----
def test_progress_output_by_verbosity(capsys):
    model = small_model()
    x, y = small_data(64)
    model.fit(x, y, epochs=2, batch_size=16, verbose=1)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\r" not in out  # not a terminal: no redrawing
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    assert lines[1].startswith("4/4 [==============================] - ") and "/step - loss: " in lines[1]
    assert "accuracy: " in lines[1]
    model.fit(x, y, epochs=2, batch_size=16, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[1].startswith("4/4 - ") and "loss: " in lines[1]
    model.fit(x, y, epochs=2, verbose=0)
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    assert capsys.readouterr().out == ""


def test_progbar_redraws_on_a_terminal(monkeypatch):
    written = []

    class Terminal:
        def isatty(self):
            return True

        def write(self, text):
            written.append(text)

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", Terminal())
    bar = keras.utils.Progbar(3, interval=0.0)
    for step in range(1, 4):
        bar.update(step, [("loss", float(step))])
    assert all(text.startswith("\r") for text in written) and written[-1].endswith("\n")
    assert "ETA" in written[0] and "loss: 1.0000" in written[0]
    assert "loss: 2.0000" in written[-1]  # non-stateful values are averaged over the steps


def test_to_categorical():
    np.testing.assert_array_equal(keras.utils.to_categorical([0, 2, 1]), np.eye(3)[[0, 2, 1]])
    assert keras.utils.to_categorical(np.array([[1], [0]]), 4).shape == (2, 4)
    with pytest.raises(ValueError, match="does not fit num_classes"):
        keras.utils.to_categorical([5], 3)


def test_datasets_are_reexported():
    from fastconv import datasets
    assert keras.datasets.mnist is datasets.mnist and keras.datasets.fashion_mnist is datasets.fashion_mnist


def test_input_and_output_shape_of_built_and_unbuilt_models():
    model = keras.Sequential([keras.Input(shape=(28, 28, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3), keras.layers.Flatten(), keras.layers.Dense(3)])
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 3)
    lazy = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="built on its first call"):
        lazy.input_shape
    # Rescaling lets uint8 images go straight in: the same numbers as scaling by hand.
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28, 1), dtype=np.uint8)
    unscaled = keras.Sequential([keras.Input(shape=(28, 28, 1)), *model.layers[1:]])  # shares the weights
    np.testing.assert_allclose(model.predict(images, verbose=0), unscaled.predict(images / 255.0, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_layers_after_the_input_skip_their_input_gradient(monkeypatch):
    calls = []
    real = fastconv.ops.conv2d_backward

    def recording(*args, **kwargs):
        calls.append(kwargs.get("need_dx", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(fastconv.ops, "conv2d_backward", recording)
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input(shape=(8, 8, 1)), layers.Rescaling(0.5), layers.Conv2D(4, 3),
                              layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype(np.float32)
    model.train_on_batch(x, np.array([0, 1, 0, 1]))
    assert calls == [True, False]  # backward runs last layer first: the second conv needs dx, the first not


def relu_chain_model():
    """Conv(relu) -> pool, conv -> ReLU layer -> conv, ..., a capped ReLU and a ReLU output used twice."""
    inputs = keras.Input(shape=(9, 9, 2))
    hidden = layers.Conv2D(4, 3, padding="same", activation="relu", bias_initializer="random_normal")(inputs)
    hidden = layers.MaxPooling2D(2)(hidden)
    hidden = layers.ReLU()(layers.Conv2D(5, 2, bias_initializer="random_normal")(hidden))
    hidden = layers.Conv2D(3, 2, activation="relu", bias_initializer="random_normal")(hidden)
    hidden = layers.Conv2D(3, 1)(layers.ReLU(max_value=2.0)(hidden))  # not a plain ReLU: not fused
    branch = layers.Conv2D(3, 1, activation="relu")(hidden)  # used by two layers: its ReLU stays its own
    merged = layers.Add()([layers.Conv2D(3, 1)(branch), layers.MaxPooling2D(1)(branch)])
    outputs = layers.Dense(3, activation="softmax")(layers.Flatten()(merged))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def gradients_of(model, x, y):
    trainer = model._trainer
    outputs, contexts = model.forward_graph([x], training=True)
    _, _, grads, fused = trainer._losses_and_gradients(outputs, [y], contexts, True)
    for variable in model.weights:
        variable.grad = None
    model.backward_graph(contexts, grads, fused)
    return [variable.grad for variable in model.trainable_weights]


def test_relu_gradients_applied_by_the_next_conv_or_pool_match_the_numpy_backend(monkeypatch):
    """A ReLU feeding only a conv or max pool leaves its gradient to that layer's backward pass."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((6, 9, 9, 2)), rng.integers(0, 3, 6)
    keras.utils.set_random_seed(4)
    model = relu_chain_model()
    # the pool after conv 1 and conv 3 after the ReLU layer; not what follows conv 3 (a capped ReLU), the
    # capped ReLU or the ReLU used twice
    assert len(model._relu_consumers) == 2 and len(model._relu_producers) == 2
    # conv 1 and its pool would run as one op (tests/test_conv_pool.py): here they run apart
    monkeypatch.setattr(Conv2D, "forward_max_pooled", lambda layer, inputs: None)
    fused_calls = []
    for name in ("conv2d_backward", "maxpool2d_backward"):
        real = getattr(fastconv.ops, name)
        monkeypatch.setattr(fastconv.ops, name, lambda *a, _real=real, **k: fused_calls.append(k.get("x_from_relu"))
                            or _real(*a, **k))
    got = gradients_of(model, x.astype(np.float32), y)
    assert fused_calls.count(True) == 2
    weights = model.get_weights()
    keras.backend.set_backend("numpy")
    keras.backend.set_floatx("float64")
    try:
        oracle = relu_chain_model()
        oracle.set_weights(weights)
        want = gradients_of(oracle, x, y)
        picks, numeric = numeric_gradient(
            lambda: oracle._trainer._losses_and_gradients(oracle.forward_graph([x], True)[0], [y], None, False)[0],
            oracle.trainable_weights[0].value, count=8)
    finally:
        keras.backend.set_backend("fastconv")
        keras.backend.set_floatx("float32")
    np.testing.assert_allclose(want[0].reshape(-1)[picks], numeric, rtol=1e-5, atol=1e-8)
    for g, w, variable in zip(got, want, model.trainable_weights):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max(), err_msg=variable.name)


def test_a_sequential_model_nests_in_another():
    """keras.Sequential([model, layers.Softmax()]) (TensorFlow's classification tutorial): the inner
    model's layers, weights shared, continue the stack; a functional model is refused with a reason."""
    keras.utils.set_random_seed(3)
    inner = keras.Sequential([layers.Flatten(input_shape=(4, 3)), layers.Dense(5)])
    outer = keras.Sequential([inner, layers.Softmax()])
    x = np.random.default_rng(0).standard_normal((6, 4, 3)).astype(np.float32)
    logits = inner.predict(x, verbose=0)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(outer.predict(x, verbose=0), expected / expected.sum(axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-7)
    assert outer.layers[1] is inner.layers[1]
    inputs = keras.Input((4, 3))
    functional = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(inputs)))
    with pytest.raises(TypeError, match="functional Model"):
        keras.Sequential([functional, layers.Softmax()])


def test_sparse_labels_become_one_hot_targets_and_bad_labels_are_refused():
    loss = keras.losses.SparseCategoricalCrossentropy()
    labels = np.array([[3], [0], [9]], np.uint8)
    expected = np.eye(10, dtype=np.float32)[[3, 0, 9]]
    np.testing.assert_array_equal(loss.prepare_targets(labels, (3, 10), np.float32), expected)
    np.testing.assert_array_equal(loss.prepare_targets(np.array([3.0, 0.0, 9.0]), (3, 10), np.float32), expected)
    for bad in (np.array([3.5, 0, 9]), np.array([3, -1, 9]), np.array([3, 0, 10], np.uint64)):
        with pytest.raises(ValueError, match=r"must be integers in \[0, 10\)"):
            loss.prepare_targets(bad, (3, 10), np.float32)


def test_precision_and_recall_in_fit_and_evaluate_are_the_ratio_over_the_whole_set():
    """A ratio of sums, not a mean of batch ratios: evaluate in batches of 7 equals the metric objects'
    result over all predictions at once; sample weights weigh them as weighted_metrics."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((50, 4)).astype(np.float32), rng.integers(0, 3, 50)
    weights = rng.random(50)
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy",
                  metrics=["precision", keras.metrics.Recall(class_id=1, name="recall_1")],
                  weighted_metrics=[keras.metrics.Precision(top_k=1, name="weighted_top_1")])
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert {"precision", "recall_1", "weighted_top_1"} <= set(history.history)
    logs = model.evaluate(x, y, batch_size=7, sample_weight=weights, verbose=0, return_dict=True)
    scores, one_hot = model.predict(x, verbose=0), np.eye(3)[y]
    expected = {"precision": keras.metrics.Precision(), "recall_1": keras.metrics.Recall(class_id=1),
                "weighted_top_1": keras.metrics.Precision(top_k=1)}
    for name, metric in expected.items():
        metric.update_state(one_hot, scores, sample_weight=weights if name == "weighted_top_1" else None)
        assert logs[name] == pytest.approx(float(metric.result()), rel=1e-6), name
    label, predicted = one_hot[:, 1] > 0, scores[:, 1] > 0.5
    assert logs["recall_1"] == pytest.approx((label & predicted).sum() / label.sum())


def read_event_file(path):
    """(tag, step, value) of each scalar in a TensorBoard event file, checking every record's framing:
    the length and data CRCs as TFRecord masks them, and the protocol buffers field by field."""
    from fastconv.keras.tensorboard import crc32c

    def masked(data):
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    def varint(message, position):
        value, shift = 0, 0
        while True:
            byte = message[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, position

    def fields(message):
        position = 0
        while position < len(message):
            key, position = varint(message, position)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, position = varint(message, position)
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
                value = struct.unpack("<d" if wire == 1 else "<f", message[position:position + size])[0]
                position += size
            else:
                assert wire == 2
                length, position = varint(message, position)
                value = message[position:position + length]
                position += length
            yield number, value

    data, scalars, position, first = open(path, "rb").read(), [], 0, True
    while position < len(data):
        length_bytes = data[position:position + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        assert struct.unpack("<I", data[position + 8:position + 12])[0] == masked(length_bytes)
        record = data[position + 12:position + 12 + length]
        assert struct.unpack("<I", data[position + 12 + length:position + 16 + length])[0] == masked(record)
        position += 16 + length
        event = dict(fields(record))
        if first:
            assert event[3] == b"brain.Event:2"
            first = False
            continue
        value = dict(fields(dict(fields(event[5]))[1]))
        scalars.append((value[1].decode(), event.get(2, 0), value[2]))
    return scalars


def test_tensorboard_writes_keras_scalars_in_event_files(tmp_path):
    """keras.callbacks.TensorBoard: epoch_<name> in train/ and validation/, batch_<name> every
    update_freq batches, the learning rate; files in TensorFlow's record framing (CRC-32C of the
    standard test vectors), and every value what History holds."""
    from fastconv.keras.tensorboard import crc32c
    assert crc32c(b"123456789") == 0xE3069283 and crc32c(bytes(32)) == 0x8A9136AA
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 5), np.float32), rng.integers(0, 3, 64)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=3, validation_split=0.25, verbose=0,
                        callbacks=[keras.callbacks.TensorBoard(tmp_path / "logs", update_freq=2)]).history
    (train,), (validation,) = (list((tmp_path / "logs" / kind).iterdir()) for kind in ("train", "validation"))
    train, validation = read_event_file(train), read_event_file(validation)
    epochs = {tag: [(step, value) for t, step, value in train if t == tag] for tag in ("epoch_loss", "epoch_accuracy")}
    for name in ("loss", "accuracy"):
        assert [step for step, _ in epochs[f"epoch_{name}"]] == [0, 1, 2]
        np.testing.assert_allclose([value for _, value in epochs[f"epoch_{name}"]], history[name], rtol=1e-6)
        np.testing.assert_allclose([value for tag, _, value in validation if tag == f"epoch_{name}"],
                                   history[f"val_{name}"], rtol=1e-6)
    assert [step for tag, step, _ in train if tag == "batch_loss"] == [2, 4, 6, 8]  # 3 batches an epoch
    assert [value for tag, _, value in train if tag == "epoch_learning_rate"] == pytest.approx([0.001] * 3)
    with pytest.raises(ValueError, match="update_freq"):
        keras.callbacks.TensorBoard(update_freq=0)
    with pytest.warns(RuntimeWarning, match="histogram_freq"):
        keras.callbacks.TensorBoard(histogram_freq=1)


def test_root_mean_squared_error_is_the_root_of_the_whole_set_s_mean():
    """Not a mean of batch roots: evaluate in batches of 7 (and train_on_batch on one batch) give the
    root of the mean squared error over all the samples."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 3)).astype(np.float32), rng.standard_normal((40, 2)).astype(np.float32)
    model = keras.Sequential([keras.Input((3,)), layers.Dense(2)])
    model.compile("sgd", "mse", metrics=["root_mean_squared_error", "mse"])
    logs = model.evaluate(x, y, batch_size=7, verbose=0, return_dict=True)
    error = np.mean((model.predict(x, verbose=0).astype(np.float64) - y) ** 2)
    assert logs["root_mean_squared_error"] == pytest.approx(math.sqrt(error), rel=1e-5)
    assert logs["mse"] == pytest.approx(error, rel=1e-5)
    metric = keras.metrics.RootMeanSquaredError()
    metric.update_state(y[:10], model.predict(x[:10], verbose=0))
    step = model.test_on_batch(x[:10], y[:10], return_dict=True)
    assert step["root_mean_squared_error"] == pytest.approx(float(metric.result()), rel=1e-5)
