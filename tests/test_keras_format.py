"""Keras 3's .keras and .weights.h5 files without real Keras: round trips, the layout Keras expects,
files real Keras 3.15 wrote (tests/data/keras3, made by make_fixtures.py there), hostile or malformed
files rejected with a ValueError naming the file, and the one-line error without h5py.

tests/test_keras_interop.py checks the same files against real Keras, in CI's separate Keras step.
"""
import io
import json
import os
import pathlib
import pickle
import struct
import sys
import warnings
import zipfile

import h5py
import numpy as np
import pytest

from fastconv import keras
from fastconv.keras import keras_format, layers, ops

FIXTURES = pathlib.Path(__file__).parent / "data" / "keras3"


def functional_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(8, 8, 2))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", kernel_regularizer="l2")(inputs)
    x = layers.BatchNormalization()(x)
    skip = layers.Conv2D(4, 1)(inputs)
    x = layers.Add()([x, skip])
    x = layers.MaxPooling2D()(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling2D()(x), layers.Flatten()(layers.AvgPool2D(4)(x))])
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(3, activation="softmax")(layers.LeakyReLU()(layers.Dense(6)(x)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.005), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def sequential_model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([layers.Dense(4, input_dim=3, activation="tanh"), layers.Reshape((2, 2)),
                              layers.Flatten(), layers.Dense(4), layers.BatchNormalization(),
                              layers.Dense(1, activation="sigmoid")])
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.random((16, 8, 8, 2)).astype(np.float32), rng.integers(0, 3, 16)


@pytest.fixture
def saved(tmp_path, data):
    """A trained functional model saved as m.keras."""
    x, y = data
    model = functional_model()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    return model, path


def members(path):
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def rewrite(path, config=None, weights=None, drop=()):
    """Write the archive again with config.json and/or model.weights.h5 replaced."""
    parts = members(path)
    if config is not None:
        parts["config.json"] = json.dumps(config).encode()
    if weights is not None:
        parts["model.weights.h5"] = weights
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in parts.items():
            if name not in drop:
                zf.writestr(name, blob)


def edit_weights(path, edit):
    """Apply edit(h5py.File) to the archive's weights."""
    buffer = io.BytesIO(members(path)["model.weights.h5"])
    with h5py.File(buffer, "r+") as h5:
        edit(h5)
    rewrite(path, weights=buffer.getvalue())


def config_of(path):
    return json.loads(members(path)["config.json"])


# ----- round trips -----
def test_functional_round_trip_keeps_predictions_and_compile(saved, data):
    model, path = saved
    x, y = data
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert sorted(l.name for l in loaded.layers) == sorted(l.name for l in model.layers)
    assert isinstance(loaded.optimizer, keras.optimizers.Adam) and loaded.optimizer.learning_rate == 0.005
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-6)
    loaded.fit(x, y, epochs=1, verbose=0)  # trainable right away
    assert keras.models.load_model(path, compile=False)._trainer is None


def test_sequential_round_trip_and_keras_weights_file(tmp_path):
    model = sequential_model()
    x = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    model.layers[4].moving_mean.assign(np.arange(4.0))  # the non-trainable weights travel too
    model.save(tmp_path / "s.keras")
    loaded = keras.models.load_model(tmp_path / "s.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded._trainer is None  # never compiled, so nothing to restore

    model.save_weights(tmp_path / "w.weights.h5")
    assert (tmp_path / "w.weights.h5").read_bytes()[:8] == keras_format.HDF5_MAGIC
    other = sequential_model()
    assert not np.array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    other.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    third = sequential_model()
    third.load_weights(tmp_path / "s.keras")  # as in Keras: the weights of a whole-model file
    np.testing.assert_array_equal(third.predict(x, verbose=0), model.predict(x, verbose=0))


def test_other_extensions_keep_the_native_format(tmp_path):
    model = sequential_model()
    model.save(tmp_path / "m.fastconv")
    model.save_weights(tmp_path / "w.h5")
    for name in ("m.fastconv", "w.h5"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89FCKERAS"
    keras.models.load_model(tmp_path / "m.fastconv")
    # A .keras file from an older fastconv (its native format under that name) still loads.
    (tmp_path / "m.fastconv").rename(tmp_path / "old.keras")
    keras.models.load_model(tmp_path / "old.keras")


def test_archive_layout_is_keras_3s(tmp_path):
    model = sequential_model()
    model.save(tmp_path / "s.keras")
    parts = members(tmp_path / "s.keras")
    assert sorted(parts) == ["config.json", "metadata.json", "model.weights.h5"]
    assert json.loads(parts["metadata.json"])["keras_version"].startswith("3.")
    config = json.loads(parts["config.json"])
    assert (config["module"], config["class_name"]) == ("keras", "Sequential")
    entries = config["config"]["layers"]
    assert [e["class_name"] for e in entries] == ["InputLayer", "Dense", "Reshape", "Flatten", "Dense",
                                                  "BatchNormalization", "Dense"]
    assert entries[0]["config"]["batch_shape"] == [None, 3]
    assert entries[1]["config"]["kernel_initializer"] == {
        "module": "keras.initializers", "class_name": "GlorotUniform", "config": {"seed": None},
        "registered_name": None}
    assert entries[1]["config"]["activation"] == "tanh" and entries[1]["build_config"] == {"input_shape": [None, 3]}
    with h5py.File(io.BytesIO(parts["model.weights.h5"]), "r") as h5:
        # Keras names each layer's group by its class, numbered in layer order, never by the layer name.
        assert sorted(h5["layers"]) == ["batch_normalization", "dense", "dense_1", "dense_2", "flatten", "reshape"]
        assert h5["layers/dense_1/vars"].attrs["name"] == model.layers[3].name
        assert [h5[f"layers/batch_normalization/vars/{i}"].shape for i in range(4)] == [(4,)] * 4
        np.testing.assert_array_equal(h5["layers/dense_2/vars/0"][()], model.layers[5].kernel.value)
        assert h5["layers/dense/vars/0"].dtype == np.float32 and len(h5["layers/flatten/vars"]) == 0


def test_functional_config_names_tensors_by_layer_and_node(tmp_path):
    """A shared layer lists one inbound node per call; tensors are [layer, node index, 0]."""
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    shared = layers.Dense(3, name="shared")
    merged = layers.Concatenate(name="joined")([shared(a), shared(layers.Dense(4, name="pre")(b))])
    model = keras.Model([a, b], [layers.Dense(2, name="out")(merged), merged])
    model.save(tmp_path / "f.keras")
    body = config_of(tmp_path / "f.keras")["config"]
    by_name = {entry["name"]: entry for entry in body["layers"]}
    history = [node["args"][0]["config"]["keras_history"] for node in by_name["shared"]["inbound_nodes"]]
    assert history == [["a", 0, 0], ["pre", 0, 0]]
    assert [t["config"]["keras_history"] for t in by_name["joined"]["inbound_nodes"][0]["args"][0]] == \
        [["shared", 0, 0], ["shared", 1, 0]]
    assert body["input_layers"] == [["a", 0, 0], ["b", 0, 0]]
    assert body["output_layers"] == [["out", 0, 0], ["joined", 0, 0]]
    loaded = keras.models.load_model(tmp_path / "f.keras")
    x = [np.ones((2, 4), np.float32), np.full((2, 4), 2, np.float32)]
    for got, want in zip(loaded.predict(x, verbose=0), model.predict(x, verbose=0)):
        np.testing.assert_array_equal(got, want)


def test_layer_order_is_keras_map_graph_order():
    """Keras 3.15 lists this model's layers in this order (printed by real Keras for the same graph):
    deepest first, ties in the order a walk back from the outputs first meets them. The HDF5 paths
    follow it, so it must agree exactly."""
    model = functional_model()
    order = keras_format.keras_layer_order(model)
    assert [type(l).__name__ for l in order] == [
        "InputLayer", "Conv2D", "BatchNormalization", "Conv2D", "Add", "MaxPooling2D", "AveragePooling2D",
        "GlobalAveragePooling2D", "Flatten", "Concatenate", "Dropout", "Dense", "LeakyReLU", "Dense"]
    assert order[1].kernel_size == (3, 3) and order[3].kernel_size == (1, 1)
    assert order[11].units == 6 and order[13].units == 3
    assert keras_format.weight_paths(order)[11:] == ["layers/dense", "layers/leaky_re_lu", "layers/dense_1"]



def preprocessing_model():
    keras.utils.set_random_seed(2)
    adapted = layers.Normalization()
    adapted.adapt(np.random.default_rng(2).random((20, 8, 8, 3)) * 255)
    return keras.Sequential([
        keras.Input((8, 8, 3)), layers.RandomFlip("horizontal", seed=1), layers.RandomRotation(0.1),
        layers.RandomTranslation(0.1, (-0.2, 0.1), fill_mode="nearest"), layers.RandomZoom(0.1, 0.2),
        layers.RandomContrast(0.2), layers.RandomBrightness(0.1), layers.RandomCrop(6, 6, seed=3),
        layers.Resizing(8, 8, interpolation="nearest"), layers.CenterCrop(6, 6), adapted,
        layers.Normalization(mean=[0.5, 0.2, 0.1], variance=[1.0, 2.0, 3.0]), layers.Flatten(), layers.Dense(2)])


def test_preprocessing_layers_round_trip(tmp_path):
    model = preprocessing_model()
    model.save(tmp_path / "p.keras")
    config = config_of(tmp_path / "p.keras")
    flip = first_layer(config, "RandomFlip")["config"]
    assert (flip["mode"], flip["seed"], flip["data_format"]) == ("horizontal", 1, "channels_last")
    with h5py.File(io.BytesIO(members(tmp_path / "p.keras")["model.weights.h5"]), "r") as h5:
        assert h5["layers/normalization/vars/2"].dtype == np.int32  # Keras' type for the sample count
        assert len(h5["layers/normalization_1/vars"]) == 0  # given mean and variance are config, not weights
    loaded = keras.models.load_model(tmp_path / "p.keras")
    for ours, theirs in zip(model.layers, loaded.layers):
        assert type(ours) is type(theirs)
        assert {**ours.get_config(), "name": None} == {**theirs.get_config(), "name": None}
    x = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32) * 255
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))

def test_optimizer_state_travels_with_the_model(saved, data):
    """Adam's step count and moments are saved where Keras keeps them, so training goes on exactly."""
    model, path = saved
    x, y = data
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.iterations == model.optimizer.iterations == 4
    with h5py.File(io.BytesIO(members(path)["model.weights.h5"]), "r") as h5:
        state = h5["optimizer/vars"]
        # iterations, learning rate, then (momentum, velocity) per trainable weight in Keras' order
        assert len(state) == 2 + 2 * len(model.trainable_weights) and state["0"][()] == 4
        first = keras_format.keras_layer_order(model)[1]  # the first Conv2D in Keras' order
        np.testing.assert_array_equal(state["2"][()], model.optimizer._slots[first.kernel][0])
        np.testing.assert_array_equal(state["3"][()], model.optimizer._slots[first.kernel][1])
    for trained in (model, loaded):
        keras.utils.set_random_seed(11)  # the same dropout masks for both
        trained.train_on_batch(x[:8], y[:8])
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))

    # A weights file carries it too, into a compiled model (as Keras' load_weights does).
    model.save_weights(path.with_name("w.weights.h5"))
    fresh = functional_model()
    fresh.load_weights(path.with_name("w.weights.h5"))
    assert fresh.optimizer.iterations == model.optimizer.iterations == 5


OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(momentum=0.9), "rmsprop": lambda: keras.optimizers.RMSprop(momentum=0.5),
    "rmsprop_plain": lambda: keras.optimizers.RMSprop(), "adagrad": lambda: keras.optimizers.Adagrad(),
    "adadelta": lambda: keras.optimizers.Adadelta(), "adamw": lambda: keras.optimizers.AdamW(),
    "nadam": lambda: keras.optimizers.Nadam(),  # its momentum product travels too (Keras' _u_product)
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_each_optimizers_state_round_trips(tmp_path, data, optimizer):
    x, y = data
    model = functional_model()
    model.compile(optimizer=OPTIMIZERS[optimizer](), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "o.keras")
    loaded = keras.models.load_model(tmp_path / "o.keras")
    assert loaded.optimizer.iterations == 2
    for trained in (model, loaded):
        keras.utils.set_random_seed(11)  # the same dropout masks for both
        trained.train_on_batch(x[:8], y[:8])
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_loss_objects_are_written_as_keras_loss_configs(tmp_path, data):
    x, y = data
    model = keras.Sequential([keras.Input((8, 8, 2)), layers.Flatten(), layers.Dense(3)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy()])
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "logits.keras")
    compile_config = config_of(tmp_path / "logits.keras")["compile_config"]
    assert compile_config["loss"] == {"module": "keras.losses", "class_name": "SparseCategoricalCrossentropy",
                                      "config": {"name": "sparse_categorical_crossentropy", "from_logits": True},
                                      "registered_name": None}
    assert compile_config["metrics"] == ["sparse_categorical_accuracy"]
    loaded = keras.models.load_model(tmp_path / "logits.keras")
    assert loaded.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(
        model.evaluate(x, y, verbose=0, return_dict=True), rel=1e-6)

    config = config_of(tmp_path / "logits.keras")
    config["compile_config"]["loss"]["config"]["reduction"] = "sum"
    rewrite(tmp_path / "logits.keras", config=config)
    with pytest.warns(UserWarning, match="uncompiled.*reduction"):
        assert keras.models.load_model(tmp_path / "logits.keras")._trainer is None


# ----- files real Keras 3 wrote -----
def test_sequential_file_from_real_keras_predicts_the_same():
    expected = np.load(FIXTURES / "expected.npz")
    model = keras.models.load_model(FIXTURES / "sequential.keras")
    assert [l.name for l in keras_format.keras_layer_order(model)] == list(expected["seq_layers"])
    np.testing.assert_allclose(model.predict(expected["seq_x"], verbose=0), expected["seq_y"], atol=1e-5)
    assert isinstance(model.optimizer, keras.optimizers.Adam) and model.optimizer.learning_rate == pytest.approx(0.01)
    assert model.optimizer.iterations == 6  # Keras' step count and moments come along (2 epochs of 3 batches)
    assert all(np.any(model.optimizer._slots[v][1]) for v in model.trainable_weights)
    relu6 = model.get_layer("re_lu")
    assert (relu6.max_value, model.get_layer("rescaling").offset) == (6.0, -0.5)

    fresh = keras.models.load_model(FIXTURES / "sequential.keras")
    for variable in fresh.weights:
        variable.assign(np.zeros(variable.shape))
    fresh.load_weights(FIXTURES / "sequential.weights.h5")  # Keras' save_weights file
    np.testing.assert_allclose(fresh.predict(expected["seq_x"], verbose=0), expected["seq_y"], atol=1e-5)


def test_functional_file_from_real_keras_predicts_the_same():
    """Two inputs, two outputs, a layer shared by two calls and every merge layer."""
    expected = np.load(FIXTURES / "expected.npz")
    model = keras.models.load_model(FIXTURES / "functional.keras")
    assert [l.name for l in keras_format.keras_layer_order(model)] == list(expected["func_layers"])
    probabilities, grid = model.predict([expected["image"], expected["vector"]], verbose=0)
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)
    np.testing.assert_allclose(grid, expected["grid"], atol=1e-5)
    assert isinstance(model.optimizer, keras.optimizers.SGD)


# ----- hostile and malformed files -----
def first_layer(config, class_name):
    return next(e for e in config["config"]["layers"] if e["class_name"] == class_name)


@pytest.mark.parametrize("edit, message", [
    (lambda c: first_layer(c, "Dense").update(class_name="Evil"), "layer class 'Evil' is neither one fastconv"),
    (lambda c: first_layer(c, "Dense").update(registered_name="my_package>Dense"), "'my_package>Dense' is neither"),
    (lambda c: first_layer(c, "Dense").update(class_name="Sequential"), "nested model"),
    (lambda c: c.update(class_name="MyModel", registered_name="pkg>MyModel"), "model class 'pkg>MyModel'"),
    (lambda c: first_layer(c, "Dense")["config"].update(kernel_constraint={"class_name": "MaxNorm"}),
     "option kernel_constraint=.* is not supported"),
    (lambda c: first_layer(c, "Dense")["config"].update(evil="os.system"), "option fastconv does not know: 'evil'"),
    (lambda c: first_layer(c, "Dense")["config"].update(activation="gelu"), "activation 'gelu' is not one"),
    (lambda c: first_layer(c, "Dense")["config"].update(units=-3), "Dense 'dense.*': units"),
    (lambda c: first_layer(c, "Dense")["config"].update(units=10**9), "more values than the file holds"),
    (lambda c: first_layer(c, "Dense")["config"].update(dtype="float16"), "dtype 'float16'"),
    (lambda c: first_layer(c, "Conv2D")["config"].update(data_format="channels_first"), "data_format"),
    (lambda c: first_layer(c, "Conv2D")["config"].update(kernel_initializer={"class_name": "Orthogonal",
                                                                             "config": {}}),
     "initializer 'Orthogonal' is not one fastconv has"),
    (lambda c: first_layer(c, "Dense")["inbound_nodes"][0]["args"][0]["config"].update(
        keras_history=["nowhere", 0, 0]), "unknown layer 'nowhere'"),
    (lambda c: first_layer(c, "Add")["inbound_nodes"][0]["args"][0][0]["config"].update(
        keras_history=[first_layer(c, "Add")["name"], 0, 0]), "refers to tensors no node produces"),  # a cycle
    (lambda c: first_layer(c, "Add")["inbound_nodes"][0]["args"][0][0]["config"].update(
        keras_history=[first_layer(c, "Conv2D")["name"], 7, 0]), "refers to tensors no node produces"),
    (lambda c: c["config"].update(input_layers={"x": ["no_such_layer", 0, 0]}), "unknown layer 'no_such_layer'"),
    (lambda c: c["config"].update(output_layers={"y": 3}), "must map names to tensor references"),
    (lambda c: first_layer(c, "Dropout")["inbound_nodes"][0].update(kwargs={"mask": [1]}),
     "call arguments {'mask': \\[1\\]} are not supported"),
    (lambda c: c["config"]["layers"].append(dict(c["config"]["layers"][1])), "two layers are named"),
    (lambda c: c["config"]["layers"][0]["config"].update(batch_shape=[None, -8, 8, 2]), "batch_shape"),
    (lambda c: c.update(config=[1, 2]), "needs a 'config' object"),
])
def test_hostile_config_is_rejected(saved, edit, message):
    _, path = saved
    config = config_of(path)
    edit(config)
    rewrite(path, config=config)
    with pytest.raises(ValueError, match=message) as error:
        keras.models.load_model(path)
    assert str(path) in str(error.value)


def soft_link(h5):
    del h5["layers/dense/vars/0"]
    h5["layers/dense/vars/0"] = h5py.SoftLink("/layers/dense/vars/1")


def external_link(h5):
    del h5["layers/dense/vars/0"]
    h5["layers/dense/vars/0"] = h5py.ExternalLink("/etc/passwd", "/data")


def replace_dataset(name, **kwargs):
    def edit(h5):
        if name in h5:
            del h5[name]
        h5.create_dataset(name, **kwargs)
    return edit


@pytest.mark.parametrize("edit, message", [
    (soft_link, "SoftLink; links are not followed"),
    (external_link, "ExternalLink; links are not followed"),
    (replace_dataset("layers/dense/vars/0", data=np.zeros((8, 6), "S4")), "not an array of numbers"),
    (replace_dataset("layers/dense/vars/0", data=np.zeros((6, 8), np.float32)), r"has shape \(6, 8\) but layer"),
    (replace_dataset("layers/dense/vars/0", shape=(2**28,), dtype=np.float32, chunks=(1024,)),
     "declares 1073741824 bytes but stores 0"),  # a shape bomb: nothing stored behind a 1 GiB shape
    (replace_dataset("layers/dense/vars/2", data=np.zeros(3, np.float32)), "has 2 weight arrays but the file holds 3"),
    (lambda h5: h5.move("layers/dense/vars/1", "layers/dense/vars/x"), "should hold datasets named 0..1"),
    (lambda h5: h5.move("layers/dense", "layers/elsewhere"), "has 2 weight arrays but the file holds 0"),
])
def test_hostile_weights_are_rejected(saved, edit, message):
    _, path = saved
    edit_weights(path, edit)
    with pytest.raises(ValueError, match=message) as error:
        keras.models.load_model(path)
    assert str(path) in str(error.value)


def patch_central_directory_size(path, member, size):
    """Make the zip's central directory claim `size` uncompressed bytes for `member`."""
    blob = bytearray(path.read_bytes())
    name = member.encode()
    start = 0
    while True:
        entry = blob.index(b"PK\x01\x02", start)
        name_length = struct.unpack_from("<H", blob, entry + 28)[0]
        if blob[entry + 46:entry + 46 + name_length] == name:
            struct.pack_into("<I", blob, entry + 24, size)
            break
        start = entry + 4
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable zip archive"),
    (lambda p: rewrite(p, drop=("config.json",)), "has no config.json"),
    (lambda p: rewrite(p, drop=("model.weights.h5",)), "has no model.weights.h5"),
    (lambda p: rewrite(p, weights=b"\x89HDF\r\n\x1a\n" + b"\x00" * 100), "not a readable HDF5 file"),
    (lambda p: _replace_member(p, "config.json", b"{not json"), "config.json is not valid JSON"),
    (lambda p: _replace_member(p, "config.json", b"[1, 2]"), "config.json must hold an object"),
    (lambda p: _replace_member(p, "config.json", b"[" * 100000 + b"]" * 100000), "not valid JSON"),
    (lambda p: patch_central_directory_size(p, "model.weights.h5", 2**32 - 1), "decompression bomb"),
])
def test_damaged_archive_is_rejected(saved, damage, message):
    _, path = saved
    damage(path)
    with pytest.raises(ValueError, match=message) as error:
        keras.models.load_model(path)
    assert str(path) in str(error.value)


def _replace_member(path, name, blob):
    parts = members(path)
    parts[name] = blob
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in parts.items():
            zf.writestr(member, data)


def _flip_bits(blob, rng):
    damaged = bytearray(blob)
    for _ in range(rng.randint(1, 5)):
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
    return bytes(damaged)


def _overwrite(blob, rng):
    damaged, start = bytearray(blob), rng.randrange(len(blob))
    damaged[start:start + rng.randint(1, 64)] = bytes(rng.randrange(256) for _ in range(64))
    return bytes(damaged[:len(blob)])


def _replace_a_config_value(config_bytes, rng):
    """Structure-aware damage: one value anywhere in config.json replaced by other JSON."""
    config = json.loads(config_bytes)
    places, stack = [], [(config, ())]
    while stack:
        node, path = stack.pop()
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            places.append(path + (key,))
            stack.append((child, path + (key,)))
    path = rng.choice(places)
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = rng.choice([None, True, 0, -1, 2**70, 1.5, "x", "relu", [], {}, [1, 2], [None, 3],
                                   {"class_name": "x"}, ["a", 0, 0]])
    return json.dumps(config).encode()


@pytest.mark.parametrize("damage", ["archive bits", "archive cut", "weights bits", "weights cut", "weights bytes",
                                    "config value"])
def test_damaged_files_load_or_fail_with_a_value_error_naming_them(saved, damage):
    """Random damage anywhere, seeded: the result is a model or a ValueError naming the file, never
    another exception (h5py's OSError, RuntimeError or KeyError from a broken HDF5 structure included)."""
    import random
    _, path = saved
    rng = random.Random(damage)
    blob, parts = path.read_bytes(), members(path)
    # 10 per kind by default (FASTCONV_PROPERTY_EXAMPLES=50); e.g. 5000 for a longer run.
    for _ in range(max(1, int(os.environ.get("FASTCONV_PROPERTY_EXAMPLES", 50)) // 5)):
        weights, config = parts["model.weights.h5"], parts["config.json"]
        if damage == "archive bits":
            path.write_bytes(_flip_bits(blob, rng))
        elif damage == "archive cut":
            path.write_bytes(blob[:rng.randrange(len(blob))])
        else:
            if damage == "weights bits":
                weights = _flip_bits(weights, rng)
            elif damage == "weights cut":
                weights = weights[:rng.randrange(len(weights))]
            elif damage == "weights bytes":
                weights = _overwrite(weights, rng)
            else:
                config = _replace_a_config_value(config, rng)
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr("metadata.json", parts["metadata.json"])
                zf.writestr("config.json", config)
                zf.writestr("model.weights.h5", weights)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # compile settings that cannot be restored only warn
                keras.models.load_model(path)
        except ValueError as error:
            assert str(path) in str(error)


def test_keras_2_style_h5_files_are_named_as_such(tmp_path):
    """An HDF5 file without Keras 3's layers/ group (Keras 2's legacy layout) is refused clearly, and
    load_model on any HDF5 file says to build the model and load weights into it."""
    path = tmp_path / "legacy.weights.h5"
    with h5py.File(path, "w") as h5:
        h5.create_group("model_weights/dense/dense").create_dataset("kernel:0", data=np.zeros((3, 2), np.float32))
    model = sequential_model()
    with pytest.raises(ValueError, match="no 'layers' group.*Keras 2's legacy"):
        model.load_weights(path)
    with pytest.raises(ValueError, match="HDF5 file, not a .keras archive.*load_weights"):
        keras.models.load_model(path)


def test_loading_never_unpickles(saved, monkeypatch, data):
    _, path = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading")

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    keras.models.load_model(path).predict(data[0], verbose=0)


def test_compile_settings_fastconv_lacks_leave_the_model_uncompiled(saved):
    _, path = saved
    config = config_of(path)
    config["compile_config"]["optimizer"]["config"]["clipnorm"] = 1.0
    rewrite(path, config=config)
    with pytest.warns(UserWarning, match="returned uncompiled.*clipnorm"):
        model = keras.models.load_model(path)
    assert model._trainer is None


@keras.saving.register_keras_serializable(package="keras_format_test")
class ScaledShift(keras.layers.Layer):
    """A user's layer with a non-trainable weight made before the trainable one (Keras saves the
    trainable ones first)."""

    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(input_shape[-1],), initializer="ones", trainable=False, name="offset")
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="random_normal", name="scale")

    def call(self, inputs):
        return inputs * self.scale * self.factor + self.offset

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def custom_layer_model():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((3,)), layers.Dense(4), ScaledShift(3.0)])
    model.layers[1].offset.assign(np.arange(4.0))
    return model


def test_registered_custom_layer_round_trip(tmp_path):
    model = custom_layer_model()
    model.save(tmp_path / "c.keras")
    entry = first_layer(config_of(tmp_path / "c.keras"), "ScaledShift")
    assert entry["registered_name"] == "keras_format_test>ScaledShift" and entry["config"]["factor"] == 3.0
    with h5py.File(io.BytesIO(members(tmp_path / "c.keras")["model.weights.h5"]), "r") as h5:
        np.testing.assert_array_equal(h5["layers/scaled_shift/vars/0"][()], model.layers[1].scale.value)
        np.testing.assert_array_equal(h5["layers/scaled_shift/vars/1"][()], np.arange(4.0))
    loaded = keras.models.load_model(tmp_path / "c.keras")
    x = np.random.default_rng(5).random((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_unregistered_custom_layer_loads_only_from_custom_objects(tmp_path):
    class Halved(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 0.5

    model = keras.Sequential([keras.Input((3,)), Halved()])
    model.save(tmp_path / "h.keras")
    with pytest.raises(ValueError, match="'Halved' is neither one fastconv shares.*custom_objects"):
        keras.models.load_model(tmp_path / "h.keras")
    loaded = keras.models.load_model(tmp_path / "h.keras", custom_objects={"Halved": Halved})
    np.testing.assert_array_equal(loaded.predict(np.ones((1, 3)), verbose=0), [[0.5, 0.5, 0.5]])


def test_layer_holding_layers_with_weights_is_not_written(tmp_path):
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = layers.Dense(3)

        def call(self, inputs):
            return self.inner(inputs)

    model = keras.Sequential([keras.Input((3,)), Block()])
    with pytest.raises(ValueError, match=r"\(Block\) holds layers with weights.*\.fastconv"):
        model.save(tmp_path / "b.keras")
    assert list(tmp_path.iterdir()) == []


def lambda_file(tmp_path, function_config):
    """A model file whose last layer is a Keras Lambda with the given "function" entry."""
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((3,)), layers.Dense(2), layers.LeakyReLU()])
    path = tmp_path / "lambda.keras"
    model.save(path)
    config = config_of(path)
    config["config"]["layers"][-1] = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
                                      "config": {"name": "lambda", "trainable": True, "function": function_config,
                                                 "arguments": {}}}
    rewrite(path, config=config)
    return model, path


def bytecode_entry(function):
    """What Keras' Lambda.get_config writes for a lambda: its marshalled code, base64."""
    import base64
    import marshal
    return {"class_name": "__lambda__", "config": {"code": base64.b64encode(marshal.dumps(function.__code__)).decode(),
                                                   "defaults": None, "closure": None}}


def test_lambda_bytecode_runs_only_when_allowed(tmp_path, monkeypatch):
    model, path = lambda_file(tmp_path, bytecode_entry(lambda x: ops.square(x) + 1))
    with pytest.raises(ValueError, match="holds Python bytecode.*enable_unsafe_deserialization") as error:
        keras.models.load_model(path)
    assert str(path) in str(error.value)
    x = np.random.default_rng(6).random((4, 3)).astype(np.float32)
    dense = model.layers[0](x)
    loaded = keras.models.load_model(path, safe_mode=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), dense ** 2 + 1, rtol=1e-6)
    monkeypatch.setattr(keras.config, "_unsafe_deserialization", True)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), dense ** 2 + 1, rtol=1e-6)


def test_lambda_naming_a_function_finds_it_in_custom_objects(tmp_path):
    def plus_one(x):
        return x + 1

    model, path = lambda_file(tmp_path, {"module": __name__, "class_name": "function", "config": "plus_one",
                                         "registered_name": "function"})
    with pytest.raises(ValueError, match="'plus_one' is not a function registered"):
        keras.models.load_model(path)
    loaded = keras.models.load_model(path, custom_objects={"plus_one": plus_one})
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.layers[0](x) + 1, rtol=1e-6)


def test_lambda_in_a_fastconv_model_is_not_saved(tmp_path):
    model = keras.Sequential([keras.Input((3,)), layers.Lambda(lambda x: x * 2)])
    with pytest.raises(ValueError, match="cannot be saved"):
        model.save(tmp_path / "l.keras")


# ----- without h5py -----
def test_without_h5py_saving_keras_files_says_how_to_get_it(tmp_path, monkeypatch, saved):
    model, keras_file = saved
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
    for action in (lambda: model.save(tmp_path / "x.keras"), lambda: model.save_weights(tmp_path / "w.weights.h5"),
                   lambda: keras.models.load_model(keras_file)):
        with pytest.raises(ImportError) as error:
            action()
        message = str(error.value)
        assert "\n" not in message and "pip install 'fastconv[keras-format]'" in message and "h5py" in message
    assert not (tmp_path / "x.keras").exists() and not (tmp_path / "w.weights.h5").exists()
    model.save(tmp_path / "x.fastconv")  # fastconv's own format needs nothing
    keras.models.load_model(tmp_path / "x.fastconv")


def test_subclassed_and_nested_models_are_not_written(tmp_path):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(2)

        def call(self, inputs, training=False):
            return self.dense(inputs)

    net = Net()
    net(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="subclassed model.*\\.fastconv"):
        net.save(tmp_path / "net.keras")
    inputs = keras.Input((3,))
    inner = keras.Sequential([keras.Input((3,)), layers.Dense(2)])
    outer = keras.Model(inputs, layers.Dense(1)(inner(inputs)))
    with pytest.raises(ValueError, match="is nested in another"):
        outer.save(tmp_path / "outer.keras")
    assert list(tmp_path.iterdir()) == []


def test_a_frozen_keras_model_loads_frozen(saved):
    _, path = saved
    config = config_of(path)
    config["config"]["trainable"] = False
    rewrite(path, config=config)
    assert keras.models.load_model(path, compile=False).trainable_weights == []
