"""Keras beyond Sequential: custom layers, subclassed models, train_step overrides and GradientTape
loops, written as keras.io writes them, with only the imports changed."""
import numpy as np
import pytest

import fastconv
from fastconv import keras
from fastconv.keras import layers, ops


# ----- the keras.io custom Dense ("Making new layers and models via subclassing") -----
class Linear(keras.layers.Layer):
    def __init__(self, units=32, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal", trainable=True)
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", trainable=True)

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _data(rng, samples=256, features=20, classes=5):
    x = rng.normal(size=(samples, features)).astype(np.float32)
    return x, rng.integers(0, classes, samples)


def test_custom_layer_shapes_params_and_summary():
    model = keras.Sequential([keras.Input((784,)), Linear(64), layers.Dense(10)])
    assert model.layers[0].compute_output_shape((None, 784)) == (None, 64)
    assert model.output_shape == (None, 10)
    assert [layer.count_params() for layer in model.layers] == [784 * 64 + 64, 650]
    lines = []
    model.summary(print_fn=lines.append)
    assert any("(None, 64)" in line and "linear" in line for line in lines)


def test_custom_dense_trains_like_the_builtin_dense(rng):
    """Same initial weights, same data order: the ops-written Dense gives the built-in's losses."""
    x, y = _data(rng)
    builtin = keras.Sequential([keras.Input((20,)), layers.Dense(16, activation="relu"), layers.Dense(5)])
    custom = keras.Sequential([keras.Input((20,)), Linear(16), layers.ReLU(), layers.Dense(5)])
    custom.set_weights(builtin.get_weights())
    histories = []
    for model in (builtin, custom):
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        histories.append(model.fit(x, y, epochs=3, batch_size=32, shuffle=False, verbose=0).history["loss"])
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-5)
    for a, b in zip(custom.get_weights(), builtin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_tape_gradients_of_builtin_layers_match_ops_written_ones(rng):
    """A Conv2D + Dense model through the tape (fused C backward per layer) against the same maths
    written with keras.ops (a vjp per primitive op)."""
    x = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    conv, dense = layers.Conv2D(6, 3, padding="same", activation="relu"), layers.Dense(4)
    model = keras.Sequential([keras.Input((8, 8, 3)), conv, layers.MaxPooling2D(2), layers.Flatten(), dense])
    cotangent = rng.normal(size=(4, 4)).astype(np.float32)
    with fastconv.GradientTape(persistent=True) as tape:
        fused = model(x, training=True)
        by_ops = ops.relu(ops.conv(x, conv.kernel, padding="same") + conv.bias)
        by_ops = ops.matmul(ops.reshape(ops.max_pool(by_ops, 2), (4, -1)), dense.kernel) + dense.bias
    np.testing.assert_allclose(np.asarray(fused), np.asarray(by_ops), rtol=1e-5, atol=1e-5)
    variables = model.trainable_weights
    for g_fused, g_ops in zip(tape.gradient(fused, variables, output_gradients=cotangent),
                              tape.gradient(by_ops, variables, output_gradients=cotangent)):
        np.testing.assert_allclose(g_fused, g_ops, rtol=1e-4, atol=1e-5)


def test_layer_without_call_or_forward_fails_clearly_at_build():
    class Empty(keras.layers.Layer):
        pass
    with pytest.raises(NotImplementedError, match="'empty'.*neither call"):
        keras.Sequential([keras.Input((3,)), Empty()])


def test_subclass_of_a_builtin_layer_with_its_own_call(rng):
    class ScaledDense(layers.Dense):
        def call(self, inputs):
            return super().call(inputs) * 2.0

    layer = ScaledDense(3)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    out = layer(x)
    np.testing.assert_allclose(out, 2 * (x @ layer.kernel.numpy() + layer.bias.numpy()), rtol=1e-6)
    with fastconv.GradientTape() as tape:
        loss = ops.sum(layer(x))
    np.testing.assert_allclose(tape.gradient(loss, layer.kernel), 2 * x.sum(axis=0)[:, None].repeat(3, 1), rtol=1e-5)


def test_training_flag_reaches_layers_inside_call(rng):
    class WithDropout(keras.Model):
        def __init__(self):
            super().__init__()
            self.dropout = layers.Dropout(0.5)

        def call(self, inputs, training=False):
            return self.dropout(inputs)

    model, x = WithDropout(), np.ones((8, 10), np.float32)
    np.testing.assert_array_equal(model(x), x)
    assert np.count_nonzero(np.asarray(model(x, training=True)) == 0) > 0


# ----- save and load -----
@keras.saving.register_keras_serializable(package="tests")
class RegisteredLinear(Linear):
    pass


class UnregisteredLinear(Linear):
    pass


def test_save_load_with_a_registered_custom_layer(tmp_path, rng):
    x, _ = _data(rng)
    inputs = keras.Input((20,))
    model = keras.Model(inputs, layers.Dense(3)(RegisteredLinear(7)(inputs)))
    model.compile(optimizer="adam", loss="mse")
    model.save(tmp_path / "m.fastconv")
    loaded = keras.models.load_model(tmp_path / "m.fastconv")
    assert isinstance(loaded.layers[1], RegisteredLinear) and loaded.layers[1].units == 7
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_unregistered_custom_layer_needs_custom_objects(tmp_path, rng):
    x, _ = _data(rng)
    model = keras.Sequential([keras.Input((20,)), UnregisteredLinear(4)])
    model.save(tmp_path / "m.fastconv")
    with pytest.raises(ValueError, match="unknown layer class 'UnregisteredLinear'.*register_keras_serializable"):
        keras.models.load_model(tmp_path / "m.fastconv")
    loaded = keras.models.load_model(tmp_path / "m.fastconv", custom_objects={"UnregisteredLinear": UnregisteredLinear})
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@keras.saving.register_keras_serializable(package="tests")
class TwoLayerNet(keras.Model):
    def __init__(self, hidden=8, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.dense1 = layers.Dense(hidden, activation="relu")
        self.dense2 = layers.Dense(3)

    def call(self, inputs, training=False):
        return self.dense2(self.dense1(inputs))


def test_subclassed_model_save_weights_and_save(tmp_path, rng):
    x, y = _data(rng, classes=3)
    model = TwoLayerNet(hidden=6)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, verbose=0)
    assert [v.shape for v in model.weights] == [(20, 6), (6,), (6, 3), (3,)]
    model.save_weights(tmp_path / "w.fastconv")
    twin = TwoLayerNet(hidden=6)
    twin.build((None, 20))
    twin.load_weights(tmp_path / "w.fastconv")
    np.testing.assert_array_equal(twin.predict(x, verbose=0), model.predict(x, verbose=0))
    model.save(tmp_path / "m.fastconv")
    loaded = keras.models.load_model(tmp_path / "m.fastconv")
    assert type(loaded) is TwoLayerNet and loaded.hidden == 6
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_model_without_call_or_graph_is_refused():
    with pytest.raises(TypeError, match="subclass Model and define call"):
        keras.Model()


# ----- custom training: train_step override and compute_loss -----
class CustomFitModel(keras.Model):
    """keras.io's "Customizing what happens in fit()", with the tape in place of tf.GradientTape."""

    def train_step(self, data):
        x, y = data
        with fastconv.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
        trainable_vars = self.trainable_variables
        gradients = tape.gradient(loss, trainable_vars)
        self.optimizer.apply(gradients, trainable_vars)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


def test_train_step_override_matches_the_builtin_step(rng):
    x, y = _data(rng)
    histories = []
    for cls in (keras.Model, CustomFitModel):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((20,))
        outputs = layers.Dense(5, activation="softmax")(layers.Dense(16, activation="relu")(inputs))
        model = cls(inputs, outputs)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        histories.append(model.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0).history)
    for name in ("loss", "accuracy"):
        np.testing.assert_allclose(histories[1][name], histories[0][name], rtol=1e-5)


def test_train_step_with_own_metrics_and_no_compiled_loss(rng):
    x, y = _data(rng, classes=3)

    class OwnMetrics(TwoLayerNet):
        def __init__(self):
            super().__init__(hidden=16)
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="acc")

        @property
        def metrics(self):
            return [self.loss_tracker, self.accuracy]

        def train_step(self, data):
            x, y = data
            with fastconv.GradientTape() as tape:
                logits = self(x, training=True)
                loss = ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
            grads = tape.gradient(loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            self.loss_tracker.update_state(loss)
            self.accuracy.update_state(y, logits)
            return {"loss": self.loss_tracker.result(), "acc": self.accuracy.result()}

        def test_step(self, data):
            x, y = data
            self.accuracy.update_state(y, self(x, training=False))
            return {"acc": self.accuracy.result()}

    model = OwnMetrics()
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    history = model.fit(x, y, epochs=4, batch_size=32, validation_data=(x, y), verbose=0).history
    assert set(history) == {"loss", "acc", "val_acc"}
    assert history["loss"][-1] < history["loss"][0]
    logits = model.predict(x, verbose=0)
    assert model.evaluate(x, y, verbose=0, return_dict=True)["acc"] == pytest.approx(np.mean(logits.argmax(1) == y))


# ----- MNIST: each way of writing the training reaches 98% in one epoch -----
@pytest.fixture(scope="module")
def mnist():
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    return (x_train[..., None].astype(np.float32) / 255, y_train), (x_test[..., None].astype(np.float32) / 255, y_test)


class ResidualNet(keras.Model):
    """A subclassed model with a residual block written in call()."""

    def __init__(self):
        super().__init__()
        self.stem = layers.Conv2D(16, 3, padding="same", activation="relu")
        self.block = [layers.Conv2D(16, 3, padding="same", activation="relu"), layers.Conv2D(16, 3, padding="same")]
        self.pool = layers.MaxPooling2D(2)
        self.conv = layers.Conv2D(32, 3, padding="same", activation="relu")
        self.flatten = layers.Flatten()
        self.classifier = layers.Dense(10)

    def call(self, inputs, training=False):
        x = self.pool(self.stem(inputs))
        shortcut = x
        for layer in self.block:
            x = layer(x)
        x = ops.relu(x + shortcut)
        return self.classifier(self.flatten(self.pool(self.conv(x))))


def _accuracy(model, x, y):
    return float(np.mean(model.predict(x, batch_size=500, verbose=0).argmax(axis=1) == y))


def test_mnist_residual_subclassed_model(mnist):
    (x_train, y_train), (x_test, y_test) = mnist
    keras.utils.set_random_seed(1)
    model = ResidualNet()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    # One epoch lands at 97.9-98.6% depending on the seed and on the kernels' float32 summation order
    # (seeds 1-3, before and after the direct dw change of afed0e1): the bound leaves room for that.
    assert _accuracy(model, x_test, y_test) >= 0.975


def _small_cnn(cls=keras.Model, softmax=False):
    """The `seed` recipe of `fastconv train`."""
    inputs = keras.Input((28, 28, 1))
    x = layers.MaxPooling2D(2)(layers.Conv2D(32, 3, padding="same", activation="relu")(inputs))
    x = layers.MaxPooling2D(2)(layers.Conv2D(64, 3, padding="same", activation="relu")(x))
    x = layers.Dense(128, activation="relu")(layers.Flatten()(x))
    outputs = layers.Dense(10, activation="softmax" if softmax else None)(x)
    return cls(inputs, outputs)


def test_mnist_train_step_override(mnist):
    (x_train, y_train), (x_test, y_test) = mnist
    keras.utils.set_random_seed(1)
    model = _small_cnn(CustomFitModel, softmax=True)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0).history
    assert history["accuracy"][0] > 0.9
    assert _accuracy(model, x_test, y_test) >= 0.98


def test_mnist_gradient_tape_loop(mnist):
    """keras.io's "Writing a training loop from scratch"."""
    (x_train, y_train), (x_test, y_test) = mnist
    keras.utils.set_random_seed(1)
    model = _small_cnn()
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train_acc_metric = keras.metrics.SparseCategoricalAccuracy()
    order = np.random.default_rng(0).permutation(len(x_train))
    for start in range(0, len(x_train), 32):
        batch = order[start:start + 32]
        x_batch, y_batch = x_train[batch], y_train[batch]
        with fastconv.GradientTape() as tape:
            logits = model(x_batch, training=True)
            loss_value = loss_fn(y_batch, logits)
        grads = tape.gradient(loss_value, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
        train_acc_metric.update_state(y_batch, logits)
    assert float(train_acc_metric.result()) > 0.9
    assert _accuracy(model, x_test, y_test) >= 0.98


# ----- keras.io, "Making new layers and models via subclassing", end to end -----
class Sampling(layers.Layer):
    """Uses (z_mean, z_log_var) to sample z, the vector encoding a digit."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        batch, dim = ops.shape(z_mean)[0], ops.shape(z_mean)[1]
        epsilon = keras.random.normal(shape=(batch, dim), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon


class Encoder(layers.Layer):
    def __init__(self, latent_dim=32, intermediate_dim=64, name="encoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dense_proj = layers.Dense(intermediate_dim, activation="relu")
        self.dense_mean = layers.Dense(latent_dim)
        self.dense_log_var = layers.Dense(latent_dim)
        self.sampling = Sampling()

    def call(self, inputs):
        x = self.dense_proj(inputs)
        z_mean, z_log_var = self.dense_mean(x), self.dense_log_var(x)
        return z_mean, z_log_var, self.sampling((z_mean, z_log_var))


class Decoder(layers.Layer):
    def __init__(self, original_dim, intermediate_dim=64, name="decoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dense_proj = layers.Dense(intermediate_dim, activation="relu")
        self.dense_output = layers.Dense(original_dim, activation="sigmoid")

    def call(self, inputs):
        return self.dense_output(self.dense_proj(inputs))


class VariationalAutoEncoder(keras.Model):
    def __init__(self, original_dim, intermediate_dim=64, latent_dim=32, name="autoencoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.original_dim = original_dim
        self.encoder = Encoder(latent_dim=latent_dim, intermediate_dim=intermediate_dim)
        self.decoder = Decoder(original_dim, intermediate_dim=intermediate_dim)

    def call(self, inputs):
        z_mean, z_log_var, z = self.encoder(inputs)
        reconstructed = self.decoder(z)
        kl_loss = -0.5 * ops.mean(z_log_var - ops.square(z_mean) - ops.exp(z_log_var) + 1)
        self.add_loss(kl_loss)
        return reconstructed


def test_the_keras_io_vae_trains_with_add_loss(mnist):
    (x_train, _), _ = mnist
    x = x_train[:2048].reshape(-1, 784)
    keras.utils.set_random_seed(0)
    vae = VariationalAutoEncoder(784, 64, 32)
    vae.compile(keras.optimizers.Adam(learning_rate=1e-3), loss=keras.losses.MeanSquaredError())
    history = vae.fit(x, x, epochs=3, batch_size=64, verbose=0).history["loss"]
    assert history[-1] < history[0]
    # The reported loss includes the KL term: more than the reconstruction error alone.
    reconstruction = float(np.mean((vae.predict(x, verbose=0) - x) ** 2))
    assert vae.evaluate(x, x, verbose=0) > reconstruction
    assert len(vae.losses) == 1


def test_add_loss_gradient_reaches_the_weights_in_fit(rng):
    """A layer whose only training signal is its added loss: fit must move its weights."""
    class Shrink(layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(), initializer="ones")

        def call(self, inputs):
            self.add_loss(ops.square(self.scale))
            return inputs * 0.0 + ops.stop_gradient(self.scale)

    model = keras.Sequential([keras.Input((3,)), Shrink()])
    model.compile(optimizer=keras.optimizers.SGD(0.25), loss="mse")
    x = rng.normal(size=(8, 3)).astype(np.float32)
    history = model.fit(x, np.ones((8, 3), np.float32), epochs=1, batch_size=8, verbose=0).history
    # loss = mse(1, scale) + scale^2 = 0 + 1 at scale 1; one SGD step on d(scale^2) = 2: 1 - 0.25 * 2.
    assert history["loss"][0] == pytest.approx(1.0)
    assert float(model.layers[0].scale.numpy()) == pytest.approx(0.5)


def test_keras_io_guide_layers_with_weights_in_init_and_state():
    class Linear(keras.layers.Layer):
        def __init__(self, units=32, input_dim=32):
            super().__init__()
            self.w = self.add_weight(shape=(input_dim, units), initializer="random_normal", trainable=True)
            self.b = self.add_weight(shape=(units,), initializer="zeros", trainable=True)

        def call(self, inputs):
            return ops.matmul(inputs, self.w) + self.b

    class ComputeSum(keras.layers.Layer):
        def __init__(self, input_dim):
            super().__init__()
            self.total = self.add_weight(initializer="zeros", shape=(input_dim,), trainable=False)

        def call(self, inputs):
            self.total.assign_add(ops.sum(inputs, axis=0))
            return self.total

    x = ops.ones((2, 2))
    linear_layer = Linear(4, 2)
    assert linear_layer.weights == [linear_layer.w, linear_layer.b]
    np.testing.assert_allclose(linear_layer(x), x @ linear_layer.w.numpy(), rtol=1e-6)
    my_sum = ComputeSum(2)
    my_sum(x)
    np.testing.assert_array_equal(my_sum(x).numpy(), [4.0, 4.0])
    assert (len(my_sum.weights), len(my_sum.non_trainable_weights), len(my_sum.trainable_weights)) == (1, 1, 0)


def test_lambda_layer_trains_and_refuses_to_be_saved(tmp_path, rng):
    x, y = _data(rng, classes=3)
    inputs = keras.Input((20,))
    hidden = layers.Lambda(lambda t: ops.tanh(t) * 2.0)(layers.Dense(8)(inputs))
    model = keras.Model(inputs, layers.Dense(3)(hidden))
    assert model.layers[2].compute_output_shape((None, 8)) == (None, 8)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, epochs=5, verbose=0).history["loss"]
    assert history[-1] < history[0]
    with pytest.raises(ValueError, match="Lambda layer .* cannot be saved"):
        model.save(tmp_path / "m.fastconv")


def test_numpy_operators_in_call_keep_the_gradient_flowing_in_fit(rng):
    """A custom layer written with NumPy operators on its input (x * 2, slicing) sits after a Dense:
    fit must still train the Dense (the layer's input is a Tensor, so the operators are recorded)."""
    class HalfScaled(layers.Layer):
        def call(self, x):
            return x[:, :4] * 2.0

    dense = layers.Dense(8)
    model = keras.Sequential([keras.Input((6,)), dense, HalfScaled()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = dense.kernel.numpy()
    x, y = rng.normal(size=(16, 6)).astype(np.float32), rng.normal(size=(16, 4)).astype(np.float32)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.abs(dense.kernel.numpy() - before)[:, :4].max() > 1e-4
    np.testing.assert_array_equal(dense.kernel.numpy()[:, 4:], before[:, 4:])  # columns the layer drops


def test_loss_subclass_with_numpy_operators_trains(rng):
    class MeanSquared(keras.losses.Loss):
        def call(self, y_true, y_pred):
            return ops.mean((y_pred - y_true) ** 2, axis=-1)

    model = keras.Sequential([keras.Input((3,)), layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=MeanSquared())
    x, y = rng.normal(size=(32, 3)).astype(np.float32), rng.normal(size=(32, 2)).astype(np.float32)
    history = model.fit(x, y, epochs=5, batch_size=32, verbose=0).history["loss"]
    assert history[-1] < history[0] * 0.9


def test_building_a_sublayer_by_hand_marks_it_built():
    class Block(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = layers.Dense(4)

        def build(self, input_shape):
            self.dense.build(input_shape)

        def call(self, x):
            return self.dense(x)

    block = Block()
    block(np.ones((2, 3), np.float32))
    assert block.dense.built and len(block.weights) == 2


def test_numpy_functions_on_variables_are_recorded():
    a, b = keras.Variable(np.ones(2, np.float32)), keras.Variable(np.full(3, 2.0, np.float32))
    with fastconv.GradientTape() as tape:
        total = ops.sum(np.concatenate([a, b]) ** 2)
    grad_a, grad_b = tape.gradient(total, [a, b])
    np.testing.assert_array_equal(grad_a, [2, 2])
    np.testing.assert_array_equal(grad_b, [4, 4, 4])
    assert f"{keras.Variable(np.float32(0.5), name='s'):.2f}" == "0.50"
