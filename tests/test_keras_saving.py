"""fastconv.keras saving: round trips, and tampered or truncated files rejected with a ValueError, never pickle."""
import json
import pathlib
import pickle
import struct

import numpy as np
import pytest

from fastconv import keras
from fastconv.keras import layers, saving


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


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.random((16, 8, 8, 2)).astype(np.float32), rng.integers(0, 3, 16)


def read_parts(path):
    blob = pathlib.Path(path).read_bytes()
    magic, version, length = struct.unpack("<8sIQ", blob[:20])
    return blob, json.loads(blob[20:20 + length]), 20 + length


def write_parts(path, header, data):
    header_bytes = json.dumps(header).encode()
    pathlib.Path(path).write_bytes(struct.pack("<8sIQ", saving.MAGIC, 1, len(header_bytes)) + header_bytes + data)


def test_functional_model_round_trip(tmp_path, data):
    x, y = data
    model = functional_model()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "model.fastconv"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-6)
    assert isinstance(loaded.optimizer, keras.optimizers.Adam) and loaded.optimizer.learning_rate == 0.005
    loaded.fit(x, y, epochs=1, verbose=0)  # trainable right away


def test_merge_layers_round_trip(tmp_path, data):
    """Every merge layer, made through Keras' functional shorthands, GlobalMaxPooling2D and the padding,
    cropping and upsampling layers survive a save."""
    x, y = data
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(8, 8, 2))
    a, b = layers.Conv2D(3, 3, padding="same")(inputs), layers.Conv2D(3, 1)(inputs)
    merged = [layers.add([a, b]), layers.subtract([a, b]), layers.multiply([a, b, a]), layers.average([a, b]),
              layers.maximum([a, b]), layers.minimum([a, b])]
    resized = [layers.Cropping2D(((1, 0), (0, 2)))(layers.UpSampling2D((1, 2))(layers.ZeroPadding2D(1)(m)))
               for m in merged]
    pooled = layers.concatenate([layers.GlobalMaxPooling2D()(m) for m in resized])
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(pooled))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "merge.fastconv"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]


def test_metric_objects_and_names_that_cannot_be_rebuilt(tmp_path, data):
    """Keras' metric classes compile; a metric only a custom name identifies is left out of the file's
    compile config, which would otherwise fail to load."""
    x, y = data
    model = keras.Sequential([keras.Input((8, 8, 2)), layers.Flatten(), layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(), keras.metrics.CategoricalAccuracy(name="mine")])
    history = model.fit(x, y, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "sparse_categorical_accuracy", "mine"}
    assert history.history["sparse_categorical_accuracy"] == history.history["mine"]
    model.save(tmp_path / "m.fastconv")
    loaded = keras.models.load_model(tmp_path / "m.fastconv")
    assert set(loaded.evaluate(x, y, verbose=0, return_dict=True)) == {"loss", "sparse_categorical_accuracy"}


def test_sequential_round_trip_and_weights_only(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([layers.Dense(4, input_dim=3, activation="tanh"), layers.Reshape((2, 2)),
                              layers.Flatten(), layers.Dense(1, activation="sigmoid")])
    x = np.random.default_rng(0).random((5, 3))
    model.save(tmp_path / "seq.fastconv")
    loaded = keras.models.load_model(tmp_path / "seq.fastconv")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded._trainer is None  # never compiled, so nothing to restore
    model.save_weights(tmp_path / "w.bin")
    other = keras.Sequential([layers.Dense(4, input_dim=3, activation="tanh"), layers.Reshape((2, 2)),
                              layers.Flatten(), layers.Dense(1, activation="sigmoid")])
    other.load_weights(tmp_path / "w.bin")
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(ValueError, match="weights only"):
        keras.models.load_model(tmp_path / "w.bin")
    wrong = keras.Sequential([layers.Dense(5, input_dim=3)])
    with pytest.raises(ValueError, match="2 weight arrays but the model has 4|4 weight arrays but the model has 2"):
        wrong.load_weights(tmp_path / "w.bin")


def test_unknown_layer_class_is_rejected(tmp_path):
    path = tmp_path / "m.fastconv"
    functional_model().save(path)
    blob, header, start = read_parts(path)
    header["model"]["config"]["layers"][1]["class_name"] = "Lambda"
    write_parts(path, header, blob[start:])
    with pytest.raises(ValueError, match="unknown layer class 'Lambda'"):
        keras.models.load_model(path)


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["model"]["config"]["nodes"][2].update(inputs=[5]), "node 2 input must be an int in"),
    (lambda h: h["model"]["config"]["layers"][1]["config"].update(filters=-3), "invalid config for layer class 'Conv2D'"),
    (lambda h: h["model"]["config"]["layers"][1]["config"].update(evil="os.system"), "invalid config"),
    (lambda h: h["model"]["config"]["layers"][1]["config"].update(filters=10**9), "more values than the file holds"),
    (lambda h: h["weights"][0].update(dtype="|O"), "invalid weight entry"),
    (lambda h: h["weights"][0].update(shape=[3, 3, 2, 5]), "describes .* bytes but the file has"),
    (lambda h: h.update(extra=1), "header must be an object with keys"),
    (lambda h: h["compile"].update(loss=[{"class_name": "Unpickler"}]), "invalid compile config"),
])
def test_tampered_header_is_rejected(tmp_path, edit, message):
    path = tmp_path / "m.fastconv"
    functional_model().save(path)
    blob, header, start = read_parts(path)
    edit(header)
    write_parts(path, header, blob[start:])
    with pytest.raises(ValueError, match=message):
        keras.models.load_model(path)


def test_weight_shape_mismatch_is_rejected(tmp_path):
    path = tmp_path / "m.fastconv"
    functional_model().save(path)
    blob, header, start = read_parts(path)
    header["weights"][0]["shape"] = [3, 3, 4, 2]  # same byte count, wrong shape for the kernel
    write_parts(path, header, blob[start:])
    with pytest.raises(ValueError, match="has shape \\(3, 3, 4, 2\\) in the file but the model's"):
        keras.models.load_model(path)


@pytest.mark.parametrize("damage", [
    lambda blob: blob[:-7],                  # truncated data
    lambda blob: blob[:30],                  # truncated header
    lambda blob: blob[:10],                  # truncated prefix
    lambda blob: b"PK\x03\x04" + blob[4:],   # wrong magic
    lambda blob: blob[:8] + struct.pack("<I", 2) + blob[12:],                 # future version
    lambda blob: blob[:12] + struct.pack("<Q", 2**62) + blob[20:],           # absurd header length
    lambda blob: blob[:25] + bytes([blob[25] ^ 0xFF]) + blob[26:],            # flipped byte in the JSON
    lambda blob: blob + b"\x00",             # trailing garbage
])
def test_damaged_file_is_rejected(tmp_path, damage):
    path = tmp_path / "m.fastconv"
    functional_model().save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match="m.fastconv: "):
        keras.models.load_model(path)


def test_pickle_file_is_not_loaded(tmp_path):
    path = tmp_path / "evil.fastconv"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="bad magic"):
        keras.models.load_model(path)


def test_loading_never_unpickles(tmp_path, monkeypatch, data):
    path = tmp_path / "m.fastconv"
    functional_model().save(path)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    keras.models.load_model(path).predict(data[0], verbose=0)


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.fastconv"
    model = functional_model()
    model.save(path)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(saving.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.fastconv"]  # no temporary left behind
