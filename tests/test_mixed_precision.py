"""keras.mixed_precision and keras.dtype_policies as Keras 3 has them (names, dtypes, errors, configs), and
models under mixed_bfloat16: float32 weights, optimizer state and loss, bf16 GEMMs where a bf16 kernel
runs (the portable one here), saved and loaded with their policies. tests/test_keras_interop.py holds
the same against real Keras."""
import warnings

import numpy as np
import pytest

from fastconv import keras, precision
from fastconv.keras import dtype_policies, layers


@pytest.fixture
def portable_bf16():
    precision.set_bf16_kernel("portable")
    yield
    precision.set_bf16_kernel("auto")


# Keras 3's values (keras 3.x, KERAS_BACKEND=jax): name -> (compute_dtype, variable_dtype).
KERAS_POLICIES = {"float32": ("float32", "float32"), "mixed_bfloat16": ("bfloat16", "float32"),
                  "mixed_float16": ("float16", "float32"), "float64": ("float64", "float64"),
                  "bfloat16": ("bfloat16", "bfloat16")}


@pytest.mark.parametrize("name", sorted(KERAS_POLICIES))
def test_policies_have_keras_dtypes_and_config(name):
    policy = keras.mixed_precision.Policy(name)
    assert (policy.compute_dtype, policy.variable_dtype) == KERAS_POLICIES[name]
    assert policy.name == name and policy.quantization_mode is None and repr(policy) == f'<DTypePolicy "{name}">'
    assert policy.get_config() == {"name": name}
    assert keras.DTypePolicy.from_config(policy.get_config()) == policy
    assert dtype_policies.serialize(policy) == {"module": "keras", "class_name": "DTypePolicy",
                                                "config": {"name": name}, "registered_name": None}
    assert dtype_policies.deserialize(dtype_policies.serialize(policy)) == policy
    assert dtype_policies.get(name) == policy == keras.dtype_policies.DTypePolicy(name)


def test_the_global_policy_and_its_names():
    assert keras.mixed_precision.global_policy() == keras.DTypePolicy("float32")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.DTypePolicy().name == "mixed_bfloat16"  # no name: the global one's
    keras.config.set_dtype_policy(keras.mixed_precision.DTypePolicy("float32"))
    assert keras.mixed_precision.global_policy().name == "float32"
    assert dtype_policies.get(None).name == "float32" and dtype_policies.get(np.float32).name == "float32"


def test_errors_are_keras_errors():
    with pytest.raises(ValueError, match="Cannot convert 'mixed_bf16' to a mixed precision DTypePolicy"):
        keras.mixed_precision.set_global_policy("mixed_bf16")
    with pytest.raises(ValueError, match="Invalid `policy` argument"):
        keras.mixed_precision.set_global_policy(3)
    with pytest.raises(TypeError, match="'name' must be a string"):
        keras.DTypePolicy(3)
    with pytest.raises(ValueError, match="Cannot interpret `dtype` argument"):
        dtype_policies.get(5)
    with pytest.raises(ValueError, match="^dtype: Cannot convert 'floaty'"):
        layers.Dense(2, dtype="floaty")
    # Policies fastconv cannot run in a layer: weights in bf16 or float16, integer compute.
    for name in ("bfloat16", "float16", "int32"):
        with pytest.raises(ValueError, match="^dtype: fastconv keeps layer weights in float32"):
            layers.Dense(2, dtype=name)
    assert keras.mixed_precision.global_policy().name == "float32"  # nothing was set by the failures


def test_layers_take_the_global_policy_when_made_and_dtype_overrides_it():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    dense = layers.Dense(3)
    plain = layers.Dense(3, dtype="float32")
    conv = layers.Conv2D(2, 3, dtype=keras.DTypePolicy("mixed_bfloat16"))
    keras.mixed_precision.set_global_policy("float32")
    later = layers.Dense(3)
    assert (dense.dtype_policy.name, dense.compute_dtype, dense.variable_dtype, dense.dtype) == \
        ("mixed_bfloat16", "bfloat16", "float32", "float32")
    assert (plain.compute_dtype, conv.compute_dtype, later.compute_dtype) == ("float32", "bfloat16", "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no AVX512_BF16 here: said once, not a failure
        dense(np.ones((2, 4), np.float32))
    assert all(w.value.dtype == np.float32 for w in dense.weights)
    later.dtype_policy = "mixed_bfloat16"
    assert later.compute_dtype == "bfloat16"


def test_layer_configs_round_trip_their_policy():
    for dtype in ("mixed_bfloat16", "float32", "mixed_float16"):
        for layer in (layers.Dense(3, dtype=dtype), layers.Conv2D(2, 3, dtype=dtype),
                      layers.MaxPooling2D(dtype=dtype)):
            config = layer.get_config()
            assert config["dtype"] == dtype_policies.serialize(keras.DTypePolicy(dtype))
            clone = type(layer).from_config(config)
            assert clone.dtype_policy.name == dtype and clone.get_config() == config


def small_model(dtype_of_output="float32"):
    keras.utils.set_random_seed(7)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = keras.Sequential([keras.Input((10, 10, 6)), layers.Conv2D(8, 3, activation="relu"),
                              layers.Conv2D(8, 3, strides=2), layers.Flatten(),
                              layers.Dense(16, activation="relu"),
                              layers.Dense(3, activation="softmax", dtype=dtype_of_output)])
    keras.mixed_precision.set_global_policy("float32")
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 10, 10, 6)).astype(np.float32)
    return x, (x[:, :5].mean(axis=(1, 2, 3)) > x[:, 5:].mean(axis=(1, 2, 3))).astype(np.int64) + \
        (x[..., 0].mean(axis=(1, 2)) > 0)


def test_mixed_bfloat16_model_trains_with_float32_weights_state_and_loss(portable_bf16):
    x, y = data()
    model = small_model()
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, epochs=6, batch_size=16, verbose=0).history
    assert history["loss"][-1] < before[0] * 0.8  # it learns
    assert all(w.value.dtype == np.float32 for w in model.weights)
    assert all(np.asarray(v).dtype in (np.float32, np.int64) for v in model.optimizer.variables)
    assert all(isinstance(loss, float) for loss in history["loss"])
    assert model.predict(x, verbose=0).dtype == np.float32


def test_mixed_bfloat16_computes_the_gemms_in_bf16_where_a_kernel_runs(portable_bf16):
    x, _ = data()
    mixed = small_model()
    keras.utils.set_random_seed(7)
    plain = keras.Sequential([keras.Input((10, 10, 6))] + [type(l).from_config({**l.get_config(), "dtype": "float32"})
                                                          for l in mixed.layers])
    plain.set_weights(mixed.get_weights())
    a, b = mixed.predict(x, verbose=0), plain.predict(x, verbose=0)
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.02  # bf16 inputs: close, not equal
    precision.set_bf16_kernel("auto")
    if precision.bf16_kernel() is None:  # no AVX512_BF16: the float32 kernels, bit for bit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert np.array_equal(mixed.predict(x, verbose=0), b)


def test_mixed_float16_computes_in_float32_and_says_so_once(monkeypatch):
    monkeypatch.setattr(precision, "_warned", set())
    x, _ = data()
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((10, 10, 6)), layers.Conv2D(4, 3, dtype="mixed_float16"), layers.Flatten(),
                              layers.Dense(2, dtype="mixed_float16")])
    with pytest.warns(RuntimeWarning, match="no float16 kernels"):
        out = model.predict(x, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(x, verbose=0)
    for layer in model.layers:
        layer.dtype_policy = "float32"
    assert np.array_equal(model.predict(x, verbose=0), out)


@pytest.mark.parametrize("extension", ["keras", "fastconv"])
def test_saved_models_keep_their_policies(portable_bf16, tmp_path, extension):
    x, y = data()
    model = small_model()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / f"m.{extension}")
    loaded = keras.models.load_model(tmp_path / f"m.{extension}")
    assert [l.dtype_policy.name for l in loaded.layers] == [l.dtype_policy.name for l in model.layers] == \
        ["mixed_bfloat16"] * 4 + ["float32"]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
