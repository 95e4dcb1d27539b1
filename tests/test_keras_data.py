"""keras.config, the Keras 2 backend names, compile's Keras 3 arguments, and what fit/evaluate/predict
take as data: arrays, dicts keyed by layer names, generators, iterators and PyDatasets, with Keras 3's
steps_per_epoch / validation_steps / steps semantics (checked against real Keras 3 by hand: the step
counts per epoch asserted here are the ones it produces)."""
import itertools
import threading
import warnings

import numpy as np
import pytest

from fastconv import keras
from fastconv.keras import data_adapters, layers


@pytest.fixture(autouse=True)
def seeded():
    keras.utils.set_random_seed(0)


# ----- keras.config and keras.backend -----

def test_config_reports_what_fastconv_computes_in_and_refuses_the_rest():
    assert keras.config.backend() == "fastconv"
    assert keras.config.floatx() == "float32"
    keras.config.set_floatx("float32")
    with pytest.raises(ValueError, match="accepts only 'float32', got 'float16'"):
        keras.config.set_floatx("float16")
    assert keras.config.floatx() == "float32"
    assert keras.config.image_data_format() == "channels_last"
    keras.config.set_image_data_format("channels_last")
    with pytest.raises(ValueError, match="only data_format='channels_last'"):
        keras.config.set_image_data_format("channels_first")
    with pytest.raises(ValueError, match="'channels_last' or 'channels_first', got 'nhwc'"):
        keras.config.set_image_data_format("nhwc")
    assert not keras.config.unsafe_deserialization_enabled() or True  # another test may have enabled it


def test_epsilon_is_the_clip_bound_of_the_probability_losses():
    assert keras.config.epsilon() == 1e-7
    loss = keras.losses.BinaryCrossentropy()
    try:
        keras.config.set_epsilon(1e-3)
        assert keras.backend.epsilon() == 1e-3
        # a prediction of 0 for a positive label is clipped to epsilon: loss -log(epsilon)
        np.testing.assert_allclose(loss(np.array([[1.0]]), np.array([[0.0]])), -np.log(1e-3), rtol=1e-4)
        with pytest.raises(ValueError, match="epsilon must be a number in"):
            keras.config.set_epsilon(0)
    finally:
        keras.config.set_epsilon(1e-7)
    np.testing.assert_allclose(loss(np.array([[1.0]]), np.array([[0.0]])), -np.log(1e-7), rtol=1e-3)


def test_keras2_backend_names():
    K = keras.backend
    assert K.image_data_format() == "channels_last"
    assert K.floatx() == "float32"
    assert K.epsilon() == keras.config.epsilon()
    assert K.backend() == "fastconv"
    with pytest.raises(ValueError, match="channels_last"):
        K.set_image_data_format("channels_first")
    K.clear_session()
    first = layers.Dense(2)
    second = layers.Dense(2)
    assert (first.name, second.name) == ("dense", "dense_1")
    K.clear_session()
    assert layers.Dense(2).name == "dense"


# ----- compile -----

def small_model(**compile_kwargs):
    model = keras.Sequential([keras.Input((4,)), layers.Dense(8, activation="relu"),
                              layers.Dense(3, activation="softmax")])
    model.compile(**{"optimizer": "sgd", "loss": "sparse_categorical_crossentropy", **compile_kwargs})
    return model


def small_data(count=40, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, 4)).astype(np.float32)
    return x, np.argmax(x[:, :3], axis=1)


def test_compile_takes_every_keras3_argument():
    model = small_model(loss_weights=[1.0], metrics=["accuracy"], weighted_metrics=[], run_eagerly=True,
                        steps_per_execution=2, jit_compile=False, auto_scale_loss=False)
    assert (model.steps_per_execution, model.run_eagerly, model.jit_compile) == (2, True, False)
    # Keras 3's positional order: optimizer, loss, loss_weights, metrics
    model.compile("sgd", "sparse_categorical_crossentropy", None, ["accuracy"])
    x, y = small_data()
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == {"loss", "accuracy"}
    with pytest.raises(TypeError, match="loss_weights third and metrics fourth"):
        model.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
    for bad, error, message in [(dict(steps_per_execution=0), ValueError, "steps_per_execution must be a positive"),
                                (dict(jit_compile="xla"), ValueError, "jit_compile must be"),
                                (dict(run_eagerly="yes"), TypeError, "run_eagerly must be a bool"),
                                (dict(auto_scale_loss=None), TypeError, "auto_scale_loss must be a bool"),
                                (dict(weighted_metrics="accuracy"), TypeError, "weighted_metrics must be a list")]:
        with pytest.raises(error, match=message):
            small_model(**bad)


def test_weighted_metrics_use_sample_weights_and_metrics_do_not():
    """Values and names as real Keras 3 gives them for this model and data."""
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    y = np.arange(8) % 3
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"],
                  weighted_metrics=["accuracy", "sparse_categorical_crossentropy"])
    model.set_weights([np.array([[0.1], [0.2], [0.3], [0.4]], np.float32) * np.arange(3, dtype=np.float32),
                       np.zeros(3, np.float32)])
    logs = model.evaluate(x, y, sample_weight=np.arange(8.0), verbose=0, return_dict=True)
    assert logs == pytest.approx({"loss": 3.413947582244873, "accuracy": 0.375, "weighted_accuracy": 0.5,
                                  "sparse_categorical_crossentropy": 0.9754136204719543}, rel=1e-6)
    assert [m.name for m in model.metrics][-3:] == ["accuracy", "accuracy", "sparse_categorical_crossentropy"]


def test_metrics_per_output_by_name_as_in_keras3():
    """Names and values real Keras 3 gives for the same weights and data."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 4)).astype(np.float32)
    y, size = np.arange(12) % 3, x.sum(axis=1, keepdims=True)
    inputs = keras.Input((4,), name="x")
    hidden = layers.Dense(5, activation="relu", name="h")(inputs)
    model = keras.Model(inputs, [layers.Dense(3, activation="softmax", name="kind")(hidden),
                                 layers.Dense(1, name="size")(hidden)])
    model.compile("sgd", loss={"kind": "sparse_categorical_crossentropy", "size": "mse"},
                  metrics={"kind": ["accuracy"], "size": ["mae", "mae"]}, weighted_metrics={"size": ["mae"]})
    model.set_weights([np.full(w.shape, 0.1 * (i + 1), np.float32) for i, w in enumerate(model.get_weights())])
    logs = model.evaluate({"x": x}, {"kind": y, "size": size}, sample_weight=np.arange(12.0), verbose=0,
                          return_dict=True)
    assert logs == pytest.approx({"loss": 20.928260803222656, "kind_loss": 6.042367458343506,
                                  "size_loss": 14.885893821716309, "kind_accuracy": 1 / 3,
                                  "size_mae": 1.3876004219055176, "size_mae_1": 1.3876004219055176,
                                  "size_weighted_mae": 1.1751850843429565}, rel=1e-6)
    model.compile("sgd", loss=["sparse_categorical_crossentropy", "mse"], metrics=[["accuracy"], []])
    assert set(model.evaluate(x, [y, size], verbose=0, return_dict=True)) == {"loss", "kind_loss", "size_loss",
                                                                             "kind_accuracy"}
    with pytest.raises(ValueError, match=r"\['sise'\] that name no output"):
        model.compile("sgd", loss="mse", metrics={"sise": ["mae"]})
    with pytest.raises(ValueError, match="one list per output \\(2\\), got 1"):
        model.compile("sgd", loss="mse", metrics=[["mae"]])


class BatchLog(keras.callbacks.Callback):
    """Records each epoch's batch hooks as ("begin"|"end", step) and every epoch's logs."""

    def __init__(self):
        super().__init__()
        self.epochs, self.epoch_logs = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([])

    def on_train_batch_begin(self, batch, logs=None):
        self.epochs[-1].append(("begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.epochs[-1].append(("end", batch))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_logs.append(dict(logs))

    def steps(self):
        return [sum(kind == "end" for kind, _ in epoch) for epoch in self.epochs]


def test_steps_per_execution_sets_how_often_batch_callbacks_run():
    model = small_model(steps_per_execution=3)
    x, y = small_data(70)
    log = BatchLog()
    model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[log])  # 7 batches
    assert log.epochs == [[("begin", 0), ("end", 2), ("begin", 3), ("end", 5), ("begin", 6), ("end", 6)]]


def test_loss_and_loss_weights_by_output_name():
    inputs = keras.Input((4,))
    hidden = layers.Dense(6, activation="relu")(inputs)
    model = keras.Model(inputs, [layers.Dense(3, activation="softmax", name="kind")(hidden),
                                 layers.Dense(1, name="size")(hidden)])
    model.compile("sgd", loss={"size": "mse", "kind": "sparse_categorical_crossentropy"},
                  loss_weights={"kind": 2.0})
    x, y = small_data()
    size = x.sum(axis=1, keepdims=True)
    logs = model.evaluate(x, {"kind": y, "size": size}, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], 2.0 * logs["kind_loss"] + logs["size_loss"], rtol=1e-5)
    with pytest.raises(ValueError, match=r"without the key\(s\) \['size'\]"):
        model.compile("sgd", loss={"kind": "mse"})
    with pytest.raises(ValueError, match=r"\['sise'\] that name no output"):
        model.compile("sgd", loss={"kind": "mse", "size": "mse", "sise": "mse"})


# ----- generators and iterators -----

def batches_of(x, y, batch_size, weights=None):
    for start in range(0, len(x), batch_size):
        part = slice(start, start + batch_size)
        yield (x[part], y[part]) if weights is None else (x[part], y[part], weights[part])


def test_generator_trains_exactly_like_the_same_batches_as_arrays():
    x, y = small_data(50)
    weights = np.linspace(0.5, 2, 50)
    keras.utils.set_random_seed(3)
    from_arrays = small_model()
    from_arrays.fit(x, y, sample_weight=weights, batch_size=16, shuffle=False, epochs=1, verbose=0)
    keras.utils.set_random_seed(3)
    from_generator = small_model()
    history = from_generator.fit(batches_of(x, y, 16, weights), epochs=1, verbose=0)
    for a, b in zip(from_arrays.get_weights(), from_generator.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(from_generator.predict(iter([(x,)]), verbose=0), from_arrays.predict(x, verbose=0))
    assert len(history.history["loss"]) == 1


def test_a_finite_generator_ends_the_epoch_and_then_training():
    x, y = small_data(40)
    model, log = small_model(), BatchLog()
    with pytest.warns(UserWarning, match="ran out of data"):
        history = model.fit(batches_of(x, y, 10), epochs=3, verbose=0, callbacks=[log])
    assert log.steps() == [4]  # one pass; a generator cannot start another
    assert history.epoch == [0]


def test_steps_per_epoch_continues_a_generator_across_epochs():
    x, y = small_data(50)
    taken = []

    def counted():
        for i, batch in enumerate(batches_of(x, y, 10)):
            taken.append(i)
            yield batch

    model, log = small_model(), BatchLog()
    with pytest.warns(UserWarning, match="ran out of data"):
        model.fit(counted(), steps_per_epoch=2, epochs=4, verbose=0, callbacks=[log])
    assert log.steps() == [2, 2, 1]  # 5 batches: the third epoch runs out after one, and training stops
    assert taken == [0, 1, 2, 3, 4]


def test_reads_stop_at_what_the_steps_need():
    x, y = small_data(100)
    taken = []

    def endless():
        for i in itertools.count():
            taken.append(i)
            yield x[:10], y[:10]

    model = small_model()
    model.fit(endless(), steps_per_epoch=3, epochs=2, verbose=0)
    assert taken == list(range(6))
    taken.clear()
    model.evaluate(endless(), steps=3, verbose=0)
    assert taken == [0, 1, 2]


def test_evaluate_and_predict_take_generators_with_steps():
    x, y = small_data(40)
    model = small_model(metrics=["accuracy"])
    expected = model.evaluate(x[:30], y[:30], batch_size=10, verbose=0, return_dict=True)
    got = model.evaluate(batches_of(x, y, 10), steps=3, verbose=0, return_dict=True)
    assert got == pytest.approx(expected)
    assert model.predict(batches_of(x, y, 10), steps=2, verbose=0).shape == (20, 3)
    np.testing.assert_allclose(model.predict(batches_of(x, y, 10), verbose=0), model.predict(x, verbose=0))


def test_a_generator_is_read_ahead_in_a_background_thread():
    x, y = small_data(60)
    requested = [threading.Event() for _ in range(6)]
    threads = set()

    def batches():
        for i in range(6):
            requested[i].set()
            threads.add(threading.current_thread().name)
            yield x[10 * i:10 * (i + 1)], y[10 * i:10 * (i + 1)]

    class WaitForNext(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 < 6:  # the next batch is being read while this step's end runs
                assert requested[batch + 1].wait(timeout=30)

    small_model().fit(batches(), verbose=0, callbacks=[WaitForNext()])
    assert threads and threading.current_thread().name not in threads


def test_bad_generator_uses_raise_clear_errors():
    x, y = small_data(20)
    model = small_model()
    with pytest.raises(ValueError, match="`y` should not be passed"):
        model.fit(batches_of(x, y, 10), y, verbose=0)
    with pytest.raises(ValueError, match="class_weight is not supported with a generator"):
        model.fit(batches_of(x, y, 10), class_weight={0: 2.0}, verbose=0)
    with pytest.raises(ValueError, match="validation_split is only supported for arrays"):
        model.fit(batches_of(x, y, 10), validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="endless iterator: pass the number of batches"):
        model.fit(itertools.cycle([(x, y)]), verbose=0)
    with pytest.raises(ValueError, match="endless iterator"):
        model.evaluate(itertools.repeat((x, y)), verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive int or None, got 0"):
        model.fit(batches_of(x, y, 10), steps_per_epoch=0, verbose=0)
    with pytest.raises(ValueError, match="validation_steps must be a positive int"):
        model.fit(x, y, validation_data=(x, y), validation_steps="2", verbose=0)
    with pytest.raises(ValueError, match="batches as tuples .* got a str"):
        model.fit(iter(["x", "y"]), verbose=0)
    with pytest.raises(ValueError, match="each batch must be \\(x, y\\)"):
        model.fit((x[i:i + 5] for i in range(3)), verbose=0)  # an array alone is x, for predict
    with pytest.raises(ValueError, match="fit got no batch"):
        model.fit(iter([]), verbose=0)
    with pytest.raises(ValueError, match="shuffle must be True, False or 'batch'"):
        model.fit(x, y, shuffle="sample", verbose=0)

    def failing():
        yield x[:5], y[:5]
        raise RuntimeError("bad record 2")

    with pytest.raises(RuntimeError, match="bad record 2"):
        model.fit(failing(), verbose=0)


# ----- PyDataset -----

class Batches(keras.utils.PyDataset):
    """Batch i holds samples [i*size, (i+1)*size); logs every __getitem__ and epoch hook."""

    def __init__(self, x, y, size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.size = x, y, size
        self.log, self.threads = [], set()

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, index):
        self.log.append(index)
        self.threads.add(threading.current_thread().name)
        part = slice(index * self.size, (index + 1) * self.size)
        return self.x[part], self.y[part]

    def on_epoch_begin(self):
        self.log.append("begin")

    def on_epoch_end(self):
        self.log.append("end")


def epochs_of(log):
    """The indices read between each on_epoch_begin and on_epoch_end."""
    epochs, current = [], None
    for item in log:
        if item == "begin":
            current = []
        elif item == "end":
            epochs.append(current)
        else:
            current.append(item)
    return epochs


def test_pydataset_trains_like_arrays_reading_in_background_threads():
    x, y = small_data(50)
    keras.utils.set_random_seed(5)
    from_arrays = small_model()
    from_arrays.fit(x, y, batch_size=8, shuffle=False, epochs=2, verbose=0)
    keras.utils.set_random_seed(5)
    from_dataset = small_model()
    dataset = Batches(x, y, 8, workers=2, max_queue_size=3)
    from_dataset.fit(dataset, shuffle=False, epochs=2, verbose=0)
    for a, b in zip(from_arrays.get_weights(), from_dataset.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert epochs_of(dataset.log) == [list(range(7)), list(range(7))]
    assert threading.current_thread().name not in dataset.threads
    assert isinstance(keras.utils.Sequence(), keras.utils.PyDataset)


def test_pydataset_loads_the_next_batch_while_a_step_runs():
    x, y = small_data(60)
    dataset = Batches(x, y, 10)
    requested = {i: threading.Event() for i in range(6)}
    original = dataset.__getitem__

    def getitem(index):
        requested[index].set()
        return original(index)

    dataset.__getitem__ = getitem  # instance attribute: what the data source calls

    class WaitForNext(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 < 6:  # before this step's end returns, the next batch is already being read
                assert requested[batch + 1].wait(timeout=30)

    small_model().fit(dataset, shuffle=False, verbose=0, callbacks=[WaitForNext()])


def test_pydataset_steps_shuffle_and_epoch_hooks_as_in_keras3():
    x, y = small_data(50)
    dataset = Batches(x, y, 10, max_queue_size=1)
    model, log = small_model(), BatchLog()
    with pytest.warns(UserWarning, match="ran out of data"):
        model.fit(dataset, steps_per_epoch=3, epochs=3, shuffle=False, verbose=0, callbacks=[log])
    assert log.steps() == [3, 2, 3]  # the pass continues into epoch 2, ends after 5 batches, restarts
    assert dataset.log.count("begin") == dataset.log.count("end") == 3
    dataset = Batches(x, y, 10)
    model.fit(dataset, epochs=3, verbose=0)  # shuffle=True: batch order changes every epoch
    orders = epochs_of(dataset.log)
    assert all(sorted(order) == list(range(5)) for order in orders)
    assert len({tuple(order) for order in orders}) > 1


def test_endless_pydataset_needs_steps():
    class Endless(keras.utils.PyDataset):
        @property
        def num_batches(self):
            return None

        def __getitem__(self, index):
            x, y = small_data(8, seed=index)
            return x, y

    model = small_model()
    with pytest.raises(ValueError, match="endless PyDataset .* pass the number of batches"):
        model.fit(Endless(), verbose=0)
    history = model.fit(Endless(), steps_per_epoch=4, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2


def test_pydataset_errors_and_class_weight():
    x, y = small_data(20)
    model = small_model()

    class Broken(Batches):
        def __getitem__(self, index):
            raise KeyError(f"no record {index}")

    with pytest.raises(KeyError, match="no record [01]"):
        model.fit(Broken(x, y, 10), verbose=0)
    with pytest.raises(ValueError, match="max_queue_size must be a positive int"):
        model.fit(Batches(x, y, 10, max_queue_size=0), verbose=0)
    with pytest.raises(ValueError, match="`sample_weight` should not be passed"):
        model.fit(Batches(x, y, 10), sample_weight=np.ones(20), verbose=0)

    class NoSuper(keras.utils.PyDataset):
        def __init__(self):
            self.size = 10  # without super().__init__(): the defaults apply, with Keras' warning

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return x[index * 10:(index + 1) * 10], y[index * 10:(index + 1) * 10]

    with pytest.warns(UserWarning, match="should call `super\\(\\).__init__"):
        model.fit(NoSuper(), verbose=0)
    # class_weight weighs each batch of a PyDataset, as sample_weight would
    keras.utils.set_random_seed(2)
    weighted = small_model()
    weighted.fit(Batches(x, y, 10), class_weight={0: 3.0}, shuffle=False, verbose=0)
    keras.utils.set_random_seed(2)
    reference = small_model()
    reference.fit(x, y, sample_weight=np.where(y == 0, 3.0, 1.0), batch_size=10, shuffle=False, verbose=0)
    for a, b in zip(weighted.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


# ----- arrays: steps, shuffle="batch", dicts -----

def test_steps_per_epoch_with_arrays_as_in_keras3():
    x, y = small_data(40)
    model = small_model()
    log = BatchLog()
    with pytest.warns(UserWarning, match="ran out of data"):
        model.fit(x, y, batch_size=4, steps_per_epoch=4, epochs=3, verbose=0, callbacks=[log])
    assert log.steps() == [4, 4, 2]
    log = BatchLog()
    with pytest.warns(UserWarning, match="ran out of data"):
        model.fit(x, y, batch_size=4, steps_per_epoch=15, epochs=2, verbose=0, callbacks=[log])
    assert log.steps() == [10, 10] and log.params["steps"] == 15
    log = BatchLog()
    model.fit(x, y, steps_per_epoch=3, verbose=0, callbacks=[log])  # batch size ceil(40 / 3) = 14
    assert log.steps() == [3]
    data = data_adapters.epoch_iterator(model, model._trainer, x, y, steps=3)
    assert [len(xs[0]) for xs, _, _ in data.epoch()] == [14, 14, 12]


def test_shuffle_batch_reorders_only_inside_each_batch():
    x = np.arange(20, dtype=np.uint8)[:, None]
    source = data_adapters.ArraySource([x], [x], None, 8, "batch")
    batches = [xs[0][:, 0] for xs, _, _ in source.iterate()]
    assert [sorted(b) for b in batches] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 20))]
    assert any(list(b) != sorted(b) for b in batches)
    assert batches[0].dtype == np.float32 and source.xs[0].dtype == np.uint8  # cast per batch only
    small_model().fit(small_data()[0], small_data()[1], shuffle="batch", verbose=0)


def two_input_model():
    image = keras.Input((4,), name="image")
    extra = keras.Input((2,), name="extra")
    merged = layers.Concatenate()([layers.Dense(4, activation="relu")(image), extra])
    model = keras.Model([image, extra], [layers.Dense(3, activation="softmax", name="kind")(merged),
                                         layers.Dense(1, name="size")(merged)])
    model.compile("sgd", loss=["sparse_categorical_crossentropy", "mse"])
    return model


def test_dict_inputs_and_targets_by_layer_name_train_like_lists():
    x, y = small_data(30)
    extra = x[:, :2] * 2
    size = x.sum(axis=1, keepdims=True)
    keras.utils.set_random_seed(4)
    with_lists = two_input_model()
    with_lists.fit([x, extra], [y, size], batch_size=8, epochs=2, verbose=0)
    keras.utils.set_random_seed(4)
    with_dicts = two_input_model()
    with_dicts.fit({"extra": extra, "image": x, "unused": x}, {"size": size, "kind": y}, batch_size=8, epochs=2,
                   validation_split=0.2, verbose=0)
    keras.utils.set_random_seed(4)
    with_lists_split = two_input_model()
    with_lists_split.fit([x, extra], [y, size], batch_size=8, epochs=2, validation_split=0.2, verbose=0)
    for a, b in zip(with_lists_split.get_weights(), with_dicts.get_weights()):
        np.testing.assert_array_equal(a, b)
    predicted = with_dicts.predict({"image": x, "extra": extra}, verbose=0)
    np.testing.assert_array_equal(predicted[0], with_dicts.predict([x, extra], verbose=0)[0])
    # a generator may yield dicts too
    generator = (({"image": x[i:i + 10], "extra": extra[i:i + 10]}, {"kind": y[i:i + 10], "size": size[i:i + 10]})
                 for i in range(0, 30, 10))
    assert with_dicts.evaluate(generator, verbose=0, return_dict=True).keys() == {"loss", "kind_loss", "size_loss"}
    with pytest.raises(ValueError, match=r"x is a dict without the key\(s\) \['extra'\]"):
        with_dicts.fit({"image": x}, [y, size], verbose=0)
    with pytest.raises(ValueError, match=r"y is a dict without the key\(s\) \['size'\]"):
        with_dicts.fit([x, extra], {"kind": y}, verbose=0)


def dict_model(keras_module=keras):
    """Keras 3's dict inputs and outputs: keys given out of order, one key unlike its Input's name."""
    image, extra = keras_module.Input((4,), name="image"), keras_module.Input((2,), name="extra")
    merged = keras_module.layers.Concatenate()([keras_module.layers.Dense(4, activation="relu")(image), extra])
    kind = keras_module.layers.Dense(3, activation="softmax", name="kind")(merged)
    size = keras_module.layers.Dense(1, name="size_layer")(merged)
    return keras_module.Model({"image": image, "extra": extra}, {"size": size, "kind": kind})


def test_dict_inputs_and_outputs_act_as_the_same_model_with_lists(tmp_path):
    x, y = small_data(30)
    extra, size = x[:, :2] * 2, x.sum(axis=1, keepdims=True)
    keras.utils.set_random_seed(4)
    with_dicts = dict_model()
    keras.utils.set_random_seed(4)
    with_lists = two_input_model()
    # the dict model lists its inputs and outputs in key order: extra, image; kind, size
    assert [t.node.layer.name for t in with_dicts.inputs] == ["extra", "image"]
    assert with_dicts.output_names == ["kind", "size_layer"] and with_dicts.output_shape == [(None, 3), (None, 1)]
    with_dicts.set_weights(with_lists.get_weights())
    called = with_dicts({"image": x, "extra": extra})
    assert list(called) == ["size", "kind"]  # call gives the dict as the model was made
    expected = with_lists([x, extra])
    np.testing.assert_array_equal(called["kind"], expected[0])
    np.testing.assert_array_equal(called["size"], expected[1])
    predicted = with_dicts.predict({"image": x, "extra": extra}, verbose=0)
    assert list(predicted) == ["kind", "size"]  # predict sorts the keys, as Keras does
    np.testing.assert_array_equal(predicted["size"], expected[1])
    with pytest.raises(ValueError, match=r"lacks \['extra'\]"):
        with_dicts({"image": x})
    with_dicts.compile("sgd", loss={"kind": "sparse_categorical_crossentropy", "size": "mse"},
                       metrics={"kind": ["accuracy"]})
    with_lists.compile("sgd", loss=["sparse_categorical_crossentropy", "mse"], metrics=[["accuracy"], []])
    history = with_dicts.fit({"image": x, "extra": extra}, {"kind": y, "size": size}, batch_size=8, epochs=2,
                             verbose=0, shuffle=False)
    with_lists.fit([x, extra], [y, size], batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert sorted(history.history) == ["kind_accuracy", "kind_loss", "loss", "size_loss"]
    for a, b in zip(with_dicts.get_weights(), with_lists.get_weights()):
        np.testing.assert_array_equal(a, b)
    for path in (tmp_path / "m.fastconv", tmp_path / "m.keras"):
        with_dicts.save(path)
        loaded = keras.models.load_model(path)
        again = loaded({"extra": extra, "image": x})
        assert list(again) == ["size", "kind"]
        np.testing.assert_array_equal(again["size"], with_dicts({"image": x, "extra": extra})["size"])
    with pytest.raises(TypeError, match="string keys"):
        keras.Model({1: keras.Input((2,))}, layers.Dense(1)(keras.Input((2,))))


# ----- validation data -----

def test_validation_data_as_generator_or_pydataset():
    x, y = small_data(40)
    model = small_model()
    read = []

    def validation():
        for i in itertools.count():
            read.append(i)
            yield x[:10], y[:10]

    history = model.fit(x, y, epochs=3, validation_data=validation(), validation_steps=2, verbose=0)
    assert len(history.history["val_loss"]) == 3
    assert read == list(range(6))  # validation_steps batches per epoch, continuing the generator
    dataset = Batches(x, y, 20)
    history = model.fit(x, y, epochs=2, validation_data=dataset, verbose=0)
    assert epochs_of(dataset.log) == [[0, 1], [0, 1]]  # every validation is a whole pass
    expected = model.evaluate(x, y, verbose=0, batch_size=20)
    assert history.history["val_loss"][-1] == pytest.approx(expected)
    with pytest.warns(UserWarning, match="validation_data gave no batch"):
        history = model.fit(x, y, epochs=2, validation_data=batches_of(x, y, 20), verbose=0)
    assert len(history.history["val_loss"]) == 1  # a generator without validation_steps lasts one epoch
    history = model.fit(x, y, epochs=4, validation_data=(x, y), validation_freq=2, verbose=0)
    assert len(history.history["val_loss"]) == 2
    with pytest.raises(ValueError, match="validation_freq must be"):
        model.fit(x, y, validation_data=(x, y), validation_freq=0, verbose=0)


def test_class_weight_does_not_weigh_the_validation_split():
    x, y = small_data(40)
    model = small_model()
    history = model.fit(x, y, epochs=1, validation_split=0.25, class_weight={0: 100.0}, verbose=0)
    unweighted = model.evaluate(x[30:], y[30:], verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(unweighted)


def test_debugging_caps_on_epochs_and_steps():
    x, y = small_data(40)
    model = small_model()
    try:
        keras.config.set_max_epochs(2)
        keras.config.set_max_steps_per_epoch(3)
        log = BatchLog()
        model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[log])
        assert log.steps() == [3, 3]
        with pytest.raises(ValueError, match="max_epochs must be a positive int or None"):
            keras.config.set_max_epochs(0)
    finally:
        keras.config.set_max_epochs(None)
        keras.config.set_max_steps_per_epoch(None)


def test_unpack_and_pack_x_y_sample_weight():
    unpack, pack = keras.utils.unpack_x_y_sample_weight, keras.utils.pack_x_y_sample_weight
    x = np.zeros(2)
    assert unpack(x)[1:] == (None, None)
    assert unpack([x, x])[2] is None
    assert pack(x) is x and pack([x]) == ([x],) and len(pack(x, x, x)) == 3
    with pytest.raises(ValueError, match="got a tuple of 4 items"):
        unpack((x, x, x, x))


def test_no_data_thread_outlives_fit():
    x, y = small_data(40)
    before = {t for t in threading.enumerate() if t.name.startswith("fastconv-data")}
    model = small_model()
    model.fit(Batches(x, y, 10, workers=3), epochs=2, verbose=0)
    model.fit(batches_of(x, y, 10), verbose=0)
    for thread in threading.enumerate():
        if thread.name.startswith("fastconv-data") and thread not in before:
            thread.join(timeout=10)
            assert not thread.is_alive()
    warnings.resetwarnings()


# ----- image_dataset_from_directory -----

def write_images(root, counts, size=(12, 10)):
    """PNG files of random RGB pixels, counts[name] of them in each class folder; {path: pixels}."""
    from PIL import Image
    rng, written = np.random.default_rng(0), {}
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
            path = root / name / f"{i}.png"
            Image.fromarray(pixels).save(path)
            written[str(path)] = pixels
    (root / "cat" / "notes.txt").write_text("not an image")
    return written


def test_image_dataset_from_directory_reads_labels_splits_and_trains(tmp_path, capsys):
    written = write_images(tmp_path / "pets", {"cat": 5, "dog": 4, ".hidden": 2})
    train, validation = keras.utils.image_dataset_from_directory(
        tmp_path / "pets", image_size=(12, 10), batch_size=3, seed=7, validation_split=0.25, subset="both")
    assert capsys.readouterr().out.splitlines() == ["Found 9 files belonging to 2 classes.",
                                                    "Using 7 files for training.", "Using 2 files for validation."]
    assert train.class_names == validation.class_names == ["cat", "dog"]
    assert sorted(train.file_paths + validation.file_paths) == sorted(p for p in written if "hidden" not in p)
    again, _ = keras.utils.image_dataset_from_directory(tmp_path / "pets", image_size=(12, 10), batch_size=3, seed=7,
                                                        validation_split=0.25, subset="both", verbose=False)
    assert again.file_paths == train.file_paths  # the same seed cuts the same subsets
    for dataset in (train, validation):
        for index in range(len(dataset)):
            images, labels = dataset[index]
            rows = dataset._order[index * 3:(index + 1) * 3]
            assert images.dtype == np.float32 and labels.dtype == np.int32
            for image, label, row in zip(images, labels, rows):
                path = dataset.file_paths[row]
                np.testing.assert_array_equal(image, written[path])  # same size: the pixels as stored
                assert dataset.class_names[label] in path
    model = keras.Sequential([keras.Input((12, 10, 3)), layers.Rescaling(1 / 255), layers.Flatten(),
                              layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train, validation_data=validation, epochs=2, verbose=0)
    assert len(history.history["val_accuracy"]) == 2


def test_image_dataset_label_modes_colors_resizing_and_errors(tmp_path):
    written = write_images(tmp_path / "pets", {"cat": 3, "dog": 2})
    read = keras.utils.image_dataset_from_directory
    categorical = read(tmp_path / "pets", label_mode="categorical", image_size=(6, 7), batch_size=8, shuffle=False,
                       verbose=False)
    images, labels = categorical[0]
    np.testing.assert_array_equal(labels, np.eye(2, dtype=np.float32)[[0, 0, 0, 1, 1]])
    stored = np.stack([written[path] for path in categorical.file_paths]).astype(np.float32)
    np.testing.assert_allclose(images, layers.Resizing(6, 7)(stored), rtol=1e-6, atol=1e-4)
    grey, binary = read(tmp_path / "pets", label_mode="binary", color_mode="grayscale", image_size=(12, 10),
                        shuffle=False, verbose=False)[0]
    from PIL import Image
    expected = [np.asarray(Image.fromarray(written[path]).convert("L")) for path in sorted(written)]
    np.testing.assert_array_equal(grey[..., 0], np.stack(expected))
    assert grey.shape == (5, 12, 10, 1) and binary.shape == (5, 1) and binary.dtype == np.float32
    (only_images,) = read(tmp_path / "pets", labels=None, image_size=(12, 10), verbose=False)[0]
    assert only_images.shape == (5, 12, 10, 3)
    with pytest.raises(ValueError, match="give a seed"):
        read(tmp_path / "pets", validation_split=0.2, subset="training")
    with pytest.raises(ValueError, match="class_names"):
        read(tmp_path / "pets", class_names=["cat", "bird"])
    with pytest.raises(ValueError, match="not a directory"):
        read(tmp_path / "missing")
    (tmp_path / "pets" / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        dataset = read(tmp_path / "pets", shuffle=False, batch_size=8, verbose=False)
        dataset[0]
    (tmp_path / "pets" / "bird").mkdir()
    with pytest.raises(ValueError, match='"binary" needs exactly 2 classes'):
        read(tmp_path / "pets", label_mode="binary", verbose=False)
