"""fastconv and real Keras 3 open each other's .keras and .weights.h5 files and predict the same.

Real Keras (with jax, scipy and h5py: about 400 MB) is not in the test extra: CI runs this file alone in
its own venv step (.ci/run). Without Keras installed the file is skipped; tests/test_keras_format.py
covers the same format against files real Keras wrote.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
real_keras = pytest.importorskip("keras")
pytest.importorskip("h5py")

from fastconv import keras  # noqa: E402  (after the skip: real Keras must be importable first)
from fastconv.keras import keras_format, layers  # noqa: E402

TOLERANCE = 1e-5


def max_difference(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def every_layer_model():
    """A functional model with every layer both libraries have, a shared layer and two outputs."""
    keras.utils.set_random_seed(3)
    image, extra = keras.Input((10, 10, 3), name="image"), keras.Input((4,), name="extra")
    x = layers.Rescaling(1 / 255.0, offset=-0.5)(image)
    x = layers.ZeroPadding2D(((1, 0), (0, 1)))(x)
    x = layers.Conv2D(6, 3, activation="relu", kernel_regularizer="l2")(x)
    x = layers.BatchNormalization(momentum=0.5)(x)
    x = layers.ReLU(max_value=6.0)(x)
    branch = layers.Conv2D(6, 1, strides=2, use_bias=False)(x)
    x = layers.MaxPooling2D(padding="same")(x)
    x = layers.Add()([x, branch])
    up = layers.Conv2DTranspose(4, 3, strides=2, padding="same", activation="tanh")(x)
    up = layers.Cropping2D(1)(up)
    up = layers.UpSampling2D()(up)
    up = layers.AveragePooling2D(4)(up)
    up = layers.SpatialDropout2D(0.1)(up)
    pooled = [layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x), layers.Flatten()(up)]
    shared = layers.Dense(6, name="shared")
    a, b = shared(layers.Dense(6)(extra)), shared(layers.Activation("sigmoid")(layers.Dense(6)(extra)))
    merged = [layers.Subtract()([a, b]), layers.Multiply()([a, b]), layers.Average()([a, b]),
              layers.Maximum()([a, b]), layers.Minimum()([a, b])]
    joined = layers.Concatenate()(pooled + merged)
    joined = layers.Dropout(0.3)(layers.LeakyReLU(0.2)(layers.Dense(16)(joined)))
    classes = layers.Softmax(name="classes")(layers.Dense(5)(joined))
    grid = layers.Reshape((2, 3))(layers.Dense(6, activation="linear")(joined))
    model = keras.Model([image, extra], [classes, grid])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=["sparse_categorical_crossentropy", "mse"])
    return model


def every_layer_data(n=32):
    rng = np.random.default_rng(3)
    x = [rng.integers(0, 256, (n, 10, 10, 3)).astype(np.float32), rng.random((n, 4)).astype(np.float32)]
    y = [rng.integers(0, 5, n), rng.random((n, 2, 3)).astype(np.float32)]
    return x, y


def test_model_trained_in_fastconv_predicts_the_same_in_keras(tmp_path):
    model = every_layer_model()
    x, y = every_layer_data()
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    model.save(tmp_path / "fastconv.keras")
    loaded = real_keras.models.load_model(tmp_path / "fastconv.keras")
    assert [l.name for l in loaded.layers] == [l.name for l in keras_format.keras_layer_order(model)]
    for ours, theirs in zip(model.predict(x, verbose=0), loaded.predict(x, verbose=0)):
        assert max_difference(ours, theirs) <= TOLERANCE
    # Compiled as in fastconv, its Adam at fastconv's step (training goes on: see the optimizer tests below).
    assert isinstance(loaded.optimizer, real_keras.optimizers.Adam) and int(loaded.optimizer.iterations) == 12
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.01)


def test_weights_file_from_fastconv_loads_in_keras(tmp_path):
    model = every_layer_model()
    x, y = every_layer_data()
    model.save(tmp_path / "untrained.keras")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    model.save_weights(tmp_path / "trained.weights.h5")
    loaded = real_keras.models.load_model(tmp_path / "untrained.keras", compile=False)
    loaded.load_weights(tmp_path / "trained.weights.h5")
    for ours, theirs in zip(model.predict(x, verbose=0), loaded.predict(x, verbose=0)):
        assert max_difference(ours, theirs) <= TOLERANCE


def test_sequential_model_from_fastconv_in_keras(tmp_path):
    keras.utils.set_random_seed(4)
    model = keras.Sequential([layers.Conv2D(3, 3, input_shape=(6, 6, 1), padding="same"), layers.BatchNormalization(),
                              layers.Activation("relu"), layers.Flatten(), layers.Dense(2, activation="sigmoid")])
    x = np.random.default_rng(4).random((8, 6, 6, 1)).astype(np.float32)
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, np.ones((8, 2)), epochs=2, verbose=0)
    model.save(tmp_path / "seq.keras")
    loaded = real_keras.models.load_model(tmp_path / "seq.keras")
    assert isinstance(loaded, real_keras.Sequential)
    assert max_difference(model.predict(x, verbose=0), loaded.predict(x, verbose=0)) <= TOLERANCE


def keras_built_model():
    """The same architecture built with real Keras."""
    L = real_keras.layers
    real_keras.utils.set_random_seed(5)
    image, extra = real_keras.Input((10, 10, 3), name="image"), real_keras.Input((4,), name="extra")
    x = L.Rescaling(1 / 255.0, offset=-0.5)(image)
    x = L.ZeroPadding2D(((1, 0), (0, 1)))(x)
    x = L.Conv2D(6, 3, activation="relu", kernel_regularizer="l2")(x)
    x = L.BatchNormalization(momentum=0.5)(x)
    x = L.ReLU(max_value=6.0)(x)
    branch = L.Conv2D(6, 1, strides=2, use_bias=False)(x)
    x = L.Add()([L.MaxPooling2D(padding="same")(x), branch])
    up = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="tanh")(x)
    up = L.AveragePooling2D(4)(L.UpSampling2D()(L.Cropping2D(1)(up)))
    up = L.SpatialDropout2D(0.1)(up)
    pooled = [L.GlobalAveragePooling2D()(x), L.GlobalMaxPooling2D()(x), L.Flatten()(up)]
    shared = L.Dense(6, name="shared")
    a, b = shared(L.Dense(6)(extra)), shared(L.Activation("sigmoid")(L.Dense(6)(extra)))
    merged = [L.Subtract()([a, b]), L.Multiply()([a, b]), L.Average()([a, b]), L.Maximum()([a, b]),
              L.Minimum()([a, b])]
    joined = L.Dropout(0.3)(L.LeakyReLU(0.2)(L.Dense(16)(L.Concatenate()(pooled + merged))))
    classes = L.Softmax(name="classes")(L.Dense(5)(joined))
    grid = L.Reshape((2, 3))(L.Dense(6)(joined))
    model = real_keras.Model([image, extra], [classes, grid])
    model.compile(optimizer=real_keras.optimizers.Adam(0.01), loss=["sparse_categorical_crossentropy", "mse"])
    return model


def test_model_trained_in_keras_predicts_the_same_in_fastconv(tmp_path):
    model = keras_built_model()
    x, y = every_layer_data()
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    model.save(tmp_path / "keras.keras")
    model.save_weights(tmp_path / "keras.weights.h5")
    loaded = keras.models.load_model(tmp_path / "keras.keras")
    assert [l.name for l in keras_format.keras_layer_order(loaded)] == [l.name for l in model.layers]
    for ours, theirs in zip(loaded.predict(x, verbose=0), model.predict(x, verbose=0)):
        assert max_difference(ours, theirs) <= TOLERANCE
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)

    fresh = keras.models.load_model(tmp_path / "keras.keras", compile=False)
    for variable in fresh.weights:
        variable.assign(np.zeros(variable.shape))
    fresh.load_weights(tmp_path / "keras.weights.h5")
    for ours, theirs in zip(fresh.predict(x, verbose=0), model.predict(x, verbose=0)):
        assert max_difference(ours, theirs) <= TOLERANCE


def test_sequential_model_from_keras_in_fastconv(tmp_path):
    L = real_keras.layers
    real_keras.utils.set_random_seed(6)
    model = real_keras.Sequential([real_keras.Input((6, 6, 1)), L.Conv2D(3, 3), L.BatchNormalization(),
                                   L.LeakyReLU(), L.MaxPooling2D(), L.Flatten(), L.Dense(4, activation="softmax")])
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(6).random((16, 6, 6, 1)).astype(np.float32)
    model.fit(x, np.eye(4)[np.arange(16) % 4], epochs=2, verbose=0)
    model.save(tmp_path / "seq.keras")
    loaded = keras.models.load_model(tmp_path / "seq.keras")
    assert isinstance(loaded, keras.Sequential) and isinstance(loaded.optimizer, keras.optimizers.RMSprop)
    assert max_difference(loaded.predict(x, verbose=0), model.predict(x, verbose=0)) <= TOLERANCE


def test_layer_order_agrees_on_graphs_with_shared_layers_and_an_unused_input(tmp_path):
    """Keras places each weight group by its own layer order; a disagreement would swap same-shaped
    weights silently, so the orders are compared on graphs where depth and first meeting disagree."""
    keras.utils.set_random_seed(7)
    a, b, unused = keras.Input((4,), name="a"), keras.Input((4,), name="b"), keras.Input((2,), name="unused")
    deep = layers.Dense(4)(layers.Dense(4)(layers.Dense(4)(b)))
    shared = layers.Dense(4, name="shared")
    early, late = shared(a), shared(deep)
    out1 = layers.Dense(4)(layers.Add()([early, late]))
    out2 = layers.Dense(4)(early)
    model = keras.Model([a, unused, b], [out2, out1, late])
    model.save(tmp_path / "order.keras")
    loaded = real_keras.models.load_model(tmp_path / "order.keras")
    assert [l.name for l in loaded.layers] == [l.name for l in keras_format.keras_layer_order(model)]
    rng = np.random.default_rng(7)
    x = [rng.random((3, 4)).astype(np.float32), rng.random((3, 2)).astype(np.float32),
         rng.random((3, 4)).astype(np.float32)]
    for ours, theirs in zip(model.predict(x, verbose=0), loaded.predict(x, verbose=0)):
        assert max_difference(ours, theirs) <= TOLERANCE


def test_augmentation_model_trained_in_fastconv_predicts_the_same_in_keras(tmp_path):
    """keras.io's image-classification recipe: augmentation and Normalization inside the model.
    (RandomCrop is left out: at inference fastconv crops the centre, as Keras documents, while Keras 3's
    code passes the images through unchanged.)"""
    keras.utils.set_random_seed(8)
    rng = np.random.default_rng(8)
    x = (rng.random((24, 12, 12, 3)) * 255).astype(np.float32)
    normalization = layers.Normalization()
    normalization.adapt(x)
    model = keras.Sequential([
        keras.Input((12, 12, 3)), layers.RandomFlip("horizontal"), layers.RandomRotation(0.1),
        layers.RandomTranslation(0.1, 0.1), layers.RandomZoom(0.1), layers.RandomContrast(0.1),
        layers.RandomBrightness(0.1), layers.Resizing(10, 10), layers.CenterCrop(8, 8), normalization,
        layers.Conv2D(4, 3, activation="relu"), layers.GlobalAveragePooling2D(), layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, rng.integers(0, 3, 24), epochs=2, batch_size=8, verbose=0)
    model.save(tmp_path / "augmented.keras")
    loaded = real_keras.models.load_model(tmp_path / "augmented.keras")
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    assert max_difference(model.predict(x, verbose=0), loaded.predict(x, verbose=0)) <= TOLERANCE

    back = keras.models.load_model(tmp_path / "augmented.keras")  # and Keras' own save of it, back here
    loaded.save(tmp_path / "from_keras.keras")
    again = keras.models.load_model(tmp_path / "from_keras.keras")
    for restored in (back, again):
        assert max_difference(restored.predict(x, verbose=0), model.predict(x, verbose=0)) <= TOLERANCE


def keras_affine_class():
    """The same layer for real Keras (a class of the same name: Keras names weight groups after it)."""
    @real_keras.saving.register_keras_serializable(package="interop")
    class Affine(real_keras.layers.Layer):
        def __init__(self, factor=1.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def build(self, input_shape):
            self.shift = self.add_weight(shape=(input_shape[-1],), initializer="ones", trainable=False, name="shift")
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="random_normal", name="scale")

        def call(self, inputs):
            return inputs * self.scale * self.factor + self.shift

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}
    return Affine


def test_custom_layer_defined_in_both_libraries(tmp_path):
    """A user's layer written once for each library under one registered name travels both ways."""
    @keras.saving.register_keras_serializable(package="interop")
    class Affine(keras.layers.Layer):
        def __init__(self, factor=1.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def build(self, input_shape):
            self.shift = self.add_weight(shape=(input_shape[-1],), initializer="ones", trainable=False, name="shift")
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="random_normal", name="scale")

        def call(self, inputs):
            return inputs * self.scale * self.factor + self.shift

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    keras_affine_class()  # registered in real Keras under the same name
    keras.utils.set_random_seed(9)
    model = keras.Sequential([keras.Input((3,)), layers.Dense(4), Affine(2.0)])
    model.layers[1].shift.assign(np.arange(4.0))
    model.save(tmp_path / "custom.keras")
    loaded = real_keras.models.load_model(tmp_path / "custom.keras")
    x = np.random.default_rng(9).random((5, 3)).astype(np.float32)
    assert max_difference(model.predict(x, verbose=0), loaded.predict(x, verbose=0)) <= TOLERANCE
    loaded.save(tmp_path / "custom_from_keras.keras")
    back = keras.models.load_model(tmp_path / "custom_from_keras.keras")
    assert max_difference(back.predict(x, verbose=0), model.predict(x, verbose=0)) <= TOLERANCE


def test_keras_lambda_loads_only_when_unsafe_deserialization_is_allowed(tmp_path):
    L = real_keras.layers
    real_keras.utils.set_random_seed(10)
    model = real_keras.Sequential([real_keras.Input((3,)), L.Dense(2), L.Lambda(lambda x: x * 2.0 + 1.0)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="enable_unsafe_deserialization"):
        keras.models.load_model(tmp_path / "lambda.keras")
    loaded = keras.models.load_model(tmp_path / "lambda.keras", safe_mode=False)
    x = np.random.default_rng(10).random((4, 3)).astype(np.float32)
    assert max_difference(loaded.predict(x, verbose=0), model.predict(x, verbose=0)) <= TOLERANCE


KERAS_OPTIMIZERS = {
    "adam": lambda: real_keras.optimizers.Adam(0.01),
    "sgd_momentum": lambda: real_keras.optimizers.SGD(0.05, momentum=0.9),
    "rmsprop_momentum": lambda: real_keras.optimizers.RMSprop(0.01, momentum=0.5),
    "adagrad": lambda: real_keras.optimizers.Adagrad(0.05),
    "adadelta": lambda: real_keras.optimizers.Adadelta(1.0),
    "adamw": lambda: real_keras.optimizers.AdamW(0.01),
    "nadam": lambda: real_keras.optimizers.Nadam(0.01),
    "adamax": lambda: real_keras.optimizers.Adamax(0.01),
    "lion": lambda: real_keras.optimizers.Lion(0.001),
}


def small_keras_model(optimizer):
    L = real_keras.layers
    real_keras.utils.set_random_seed(12)
    model = real_keras.Sequential([real_keras.Input((5,)), L.Dense(6, activation="tanh"), L.BatchNormalization(),
                                   L.Dense(3, activation="softmax")])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("optimizer", sorted(KERAS_OPTIMIZERS))
def test_training_goes_on_in_fastconv_from_keras_optimizer_state(tmp_path, optimizer):
    """Keras trains, saves; one more step in Keras and in fastconv from the file agree: the optimizer's
    state (step count, moments, accumulators) was read into the right places."""
    rng = np.random.default_rng(12)
    x, y = rng.random((32, 5)).astype(np.float32), rng.integers(0, 3, 32)
    model = small_keras_model(KERAS_OPTIMIZERS[optimizer]())
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    model.save(tmp_path / "trained.keras")
    loaded = keras.models.load_model(tmp_path / "trained.keras")
    assert loaded.optimizer.iterations == 8
    model.train_on_batch(x[:8], y[:8])
    loaded.train_on_batch(x[:8], y[:8])
    assert max_difference(loaded.predict(x, verbose=0), model.predict(x, verbose=0)) <= TOLERANCE


def test_training_goes_on_in_keras_from_fastconv_optimizer_state(tmp_path):
    keras.utils.set_random_seed(13)
    model = keras.Sequential([keras.Input((5,)), layers.Dense(6, activation="tanh"), layers.BatchNormalization(),
                              layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.RMSprop(0.01, momentum=0.5), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(13)
    x, y = rng.random((32, 5)).astype(np.float32), rng.integers(0, 3, 32)
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    model.save(tmp_path / "trained.keras")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the state fits: Keras does not start afresh
        loaded = real_keras.models.load_model(tmp_path / "trained.keras")
    assert int(loaded.optimizer.iterations) == 8
    model.train_on_batch(x[:8], y[:8])
    loaded.train_on_batch(x[:8], y[:8])
    assert max_difference(loaded.predict(x, verbose=0), model.predict(x, verbose=0)) <= TOLERANCE


def test_loss_objects_and_metric_objects_both_ways(tmp_path):
    """keras.io's usual compile: a from_logits loss object and metric objects, restored in each library."""
    rng = np.random.default_rng(14)
    x, y = rng.random((16, 5)).astype(np.float32), rng.integers(0, 3, 16)
    L = real_keras.layers
    real_keras.utils.set_random_seed(14)
    theirs = real_keras.Sequential([real_keras.Input((5,)), L.Dense(3)])
    theirs.compile(optimizer="adam", loss=real_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=[real_keras.metrics.SparseCategoricalAccuracy()])
    theirs.fit(x, y, epochs=1, verbose=0)
    theirs.save(tmp_path / "theirs.keras")
    ours = keras.models.load_model(tmp_path / "theirs.keras")
    expected = theirs.evaluate(x, y, verbose=0, return_dict=True)
    got = ours.evaluate(x, y, verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(expected["loss"], abs=TOLERANCE)
    assert got["sparse_categorical_accuracy"] == pytest.approx(expected["sparse_categorical_accuracy"])

    ours.save(tmp_path / "ours.keras")
    back = real_keras.models.load_model(tmp_path / "ours.keras")
    assert back.loss.get_config()["from_logits"] is True
    assert back.evaluate(x, y, verbose=0, return_dict=True)["loss"] == pytest.approx(expected["loss"], abs=TOLERANCE)


@pytest.mark.parametrize("name", ["float32", "mixed_bfloat16", "mixed_float16", "float64", "bfloat16"])
def test_dtype_policies_as_keras_has_them(name):
    ours, theirs = keras.DTypePolicy(name), real_keras.DTypePolicy(name)
    assert (ours.name, ours.compute_dtype, ours.variable_dtype) == \
        (theirs.name, theirs.compute_dtype, theirs.variable_dtype)
    assert ours.get_config() == theirs.get_config() and repr(ours) == repr(theirs)
    assert keras.dtype_policies.serialize(ours) == real_keras.dtype_policies.serialize(theirs)
    for bad in ("mixed_bf16", "float"):
        messages = []
        for library in (keras, real_keras):
            with pytest.raises(ValueError) as error:
                library.DTypePolicy(bad)
            messages.append(str(error.value))
        assert messages[0] == messages[1]


def mixed_bfloat16_model(library):
    library.utils.set_random_seed(5)
    L = library.layers
    library.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = library.Sequential([library.Input((8, 8, 3)), L.Conv2D(4, 3, activation="relu"), L.Flatten(),
                                    L.Dense(3, activation="softmax", dtype="float32")])
    finally:
        library.mixed_precision.set_global_policy("float32")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_mixed_bfloat16_models_load_in_each_other_with_their_policies(tmp_path):
    x = np.random.default_rng(0).random((6, 8, 8, 3)).astype(np.float32)
    ours, theirs = mixed_bfloat16_model(keras), mixed_bfloat16_model(real_keras)
    ours.save(tmp_path / "ours.keras")
    theirs.save(tmp_path / "theirs.keras")
    in_keras = real_keras.models.load_model(tmp_path / "ours.keras")
    in_fastconv = keras.models.load_model(tmp_path / "theirs.keras")
    names = ["mixed_bfloat16", "mixed_bfloat16", "float32"]
    assert [l.dtype_policy.name for l in in_keras.layers] == [l.dtype_policy.name for l in theirs.layers] == names
    assert [l.dtype_policy.name for l in in_fastconv.layers] == [l.dtype_policy.name for l in ours.layers] == names
    assert all(w.value.dtype == np.float32 for w in in_fastconv.weights)
    # Keras computes in bf16 with bf16 activations; fastconv's activations are float32: close, not equal.
    assert max_difference(in_fastconv.predict(x, verbose=0), theirs.predict(x, verbose=0)) < 2e-2


def test_history_keys_as_keras_logs_them():
    """A two-output fit with the learning-rate callbacks: the same History keys in both libraries."""
    rng = np.random.default_rng(0)
    x, classes, values = rng.random((40, 5), np.float32), rng.integers(0, 3, 40), rng.random((40, 1), np.float32)
    keys = []
    for library in (keras, real_keras):
        inputs = library.Input((5,))
        hidden = library.layers.Dense(8, activation="relu")(inputs)
        outputs = [library.layers.Dense(3, activation="softmax", name="cls")(hidden),
                   library.layers.Dense(1, name="reg")(hidden)]
        model = library.Model(inputs, outputs)
        model.compile("adam", loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                      metrics={"cls": ["accuracy"], "reg": ["mae"]})
        history = model.fit(x, {"cls": classes, "reg": values}, batch_size=10, epochs=2, verbose=0,
                            validation_split=0.25,
                            callbacks=[library.callbacks.LearningRateScheduler(lambda epoch, rate: rate * 0.5),
                                       library.callbacks.ReduceLROnPlateau(monitor="loss")])
        keys.append(sorted(history.history))
    assert keys[0] == keys[1]


def dict_model(library):
    """Dict inputs and outputs, keys given out of key order, one output key unlike its layer's name."""
    image, extra = library.Input((4,), name="image"), library.Input((2,), name="extra")
    merged = library.layers.Concatenate()([library.layers.Dense(4, activation="relu")(image), extra])
    return library.Model({"image": image, "extra": extra},
                         {"size": library.layers.Dense(1, name="size_layer")(merged),
                          "kind": library.layers.Dense(3, activation="softmax", name="kind")(merged)})


@pytest.mark.parametrize("direction", ["fastconv to keras", "keras to fastconv"])
def test_dict_inputs_and_outputs_both_ways(tmp_path, direction):
    rng = np.random.default_rng(1)
    x = {"image": rng.random((6, 4), np.float32), "extra": rng.random((6, 2), np.float32)}
    writer, reader = (keras, real_keras) if direction == "fastconv to keras" else (real_keras, keras)
    model = dict_model(writer)
    model.save(tmp_path / "m.keras")
    loaded = reader.models.load_model(tmp_path / "m.keras")
    ours, theirs = loaded(x), model(x)
    assert list(ours) == list(theirs) == ["size", "kind"]
    predicted, expected = loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    assert list(predicted) == list(expected) == ["kind", "size"]
    assert loaded.output_names == model.output_names == ["kind", "size_layer"]
    for key in expected:
        assert max_difference(predicted[key], expected[key]) < TOLERANCE


def test_dict_model_history_keys_as_keras_logs_them():
    rng = np.random.default_rng(2)
    x = {"image": rng.random((20, 4), np.float32), "extra": rng.random((20, 2), np.float32)}
    y = {"kind": rng.integers(0, 3, 20), "size": rng.random((20, 1), np.float32)}
    keys = []
    for library in (keras, real_keras):
        model = dict_model(library)
        model.compile("adam", loss={"kind": "sparse_categorical_crossentropy", "size": "mse"},
                      metrics={"kind": ["accuracy"], "size": ["mae"]})
        keys.append(sorted(model.fit(x, y, batch_size=5, epochs=1, verbose=0).history))
    assert keys[0] == keys[1]


@pytest.mark.parametrize("direction", ["fastconv to keras", "keras to fastconv"])
def test_normalization_activation_and_reshaping_layers_both_ways(tmp_path, direction):
    writer, reader = (keras, real_keras) if direction == "fastconv to keras" else (real_keras, keras)
    if writer is keras:
        keras.utils.set_random_seed(5)
    inputs = writer.Input((4, 12, 3))
    x = writer.layers.Conv2D(5, 3, padding="same")(inputs)
    x = writer.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu",
                                      bias_initializer="random_normal")(x)
    x = writer.layers.SeparableConv2D(6, (2, 3), strides=(1, 2), padding="same", depth_multiplier=2,
                                      bias_initializer="random_normal")(x)
    x = writer.layers.LayerNormalization(epsilon=1e-4, gamma_initializer="random_normal",
                                         beta_initializer="random_normal")(x)
    x = writer.layers.GroupNormalization(3, epsilon=1e-4, gamma_initializer="random_normal",
                                         beta_initializer="random_normal")(x)
    x = writer.layers.ELU(alpha=0.7)(x)
    x = writer.layers.Permute((2, 1, 3))(x)
    x = writer.layers.Identity()(x)
    x = writer.layers.GaussianNoise(0.1)(x)
    x = writer.layers.PReLU(alpha_initializer=writer.initializers.RandomUniform(0.1, 0.5), shared_axes=[1, 2])(x)
    model = writer.Model(inputs, writer.layers.Dense(2)(writer.layers.Flatten()(x)))
    model.save(tmp_path / "m.keras")
    loaded = reader.models.load_model(tmp_path / "m.keras")
    images = np.random.default_rng(3).standard_normal((3, 4, 12, 3)).astype(np.float32)
    assert max_difference(loaded.predict(images, verbose=0), model.predict(images, verbose=0)) < TOLERANCE


@pytest.mark.parametrize("options", [{}, {"alpha": 0.1}, {"warmup_target": 0.5, "warmup_steps": 20},
                                     {"alpha": 0.2, "warmup_target": 0.05, "warmup_steps": 7}])
def test_cosine_decay_as_keras_computes_it(options):
    ours = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=50, **options)
    theirs = real_keras.optimizers.schedules.CosineDecay(0.1, decay_steps=50, **options)
    for step in (0, 1, 6, 7, 19, 20, 21, 45, 50, 69, 70, 71, 200):
        assert ours(step) == pytest.approx(float(theirs(step)), rel=1e-6, abs=1e-9), step


@pytest.mark.parametrize("name", ["Precision", "Recall"])
@pytest.mark.parametrize("options", [{}, {"thresholds": 0.3}, {"top_k": 1}, {"class_id": 2},
                                     {"top_k": 2, "class_id": 1}])
def test_precision_and_recall_as_keras_computes_them(name, options):
    rng = np.random.default_rng(0)
    labels, scores, weights = rng.integers(0, 2, (20, 3)), rng.random((20, 3), np.float32), rng.random(20)
    results = []
    for library in (keras, real_keras):
        metric = getattr(library.metrics, name)(**options)
        metric.update_state(labels, scores)
        metric.update_state(labels[:7], scores[:7], sample_weight=weights[:7])
        results.append(float(metric.result()))
    assert results[0] == pytest.approx(results[1], rel=1e-6)


def test_tensorboard_reads_the_event_files_fastconv_writes(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    rng = np.random.default_rng(0)
    x, y = rng.random((48, 5), np.float32), rng.integers(0, 3, 48)
    model = keras.Sequential([keras.Input((5,)), layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=2, validation_split=0.25, verbose=0, callbacks=[
        keras.callbacks.TensorBoard(tmp_path / "logs", update_freq="batch")]).history
    for kind, prefix in (("train", ""), ("validation", "val_")):
        reader = event_accumulator.EventAccumulator(str(tmp_path / "logs" / kind))
        reader.Reload()
        for name in ("loss", "accuracy"):
            events = reader.Scalars(f"epoch_{name}")
            assert [event.step for event in events] == [0, 1]
            np.testing.assert_allclose([event.value for event in events], history[prefix + name], rtol=1e-6)
        if kind == "train":  # update_freq="batch": every batch of the 2 epochs of 3 batches (36 samples)
            assert [event.step for event in reader.Scalars("batch_loss")] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("name, options", [("Huber", {}), ("Huber", {"delta": 0.3}), ("LogCosh", {}),
                                           ("KLDivergence", {})])
def test_regression_and_divergence_losses_as_keras_computes_them(name, options):
    rng = np.random.default_rng(4)
    y_true = rng.random((6, 5)).astype(np.float32) * (2 if name != "KLDivergence" else 1)
    y_pred = rng.random((6, 5)).astype(np.float32) * (3 if name != "KLDivergence" else 1)
    weights = rng.random(6).astype(np.float32)
    ours, theirs = getattr(keras.losses, name)(**options), getattr(real_keras.losses, name)(**options)
    assert float(ours(y_true, y_pred)) == pytest.approx(float(theirs(y_true, y_pred)), rel=1e-5)
    assert float(ours(y_true, y_pred, sample_weight=weights)) == pytest.approx(
        float(theirs(y_true, y_pred, sample_weight=weights)), rel=1e-5)


def test_root_mean_squared_error_as_keras_computes_it():
    rng = np.random.default_rng(6)
    y_true, y_pred, weights = rng.random((9, 4), np.float32), rng.random((9, 4), np.float32), rng.random(9)
    results = []
    for library in (keras, real_keras):
        metric = library.metrics.RootMeanSquaredError()
        metric.update_state(y_true, y_pred)
        metric.update_state(y_true[:4], y_pred[:4], sample_weight=weights[:4])
        results.append(float(metric.result()))
    assert results[0] == pytest.approx(results[1], rel=1e-6)
