"""model.summary() prints what Keras 3 prints.

tests/data/keras3_summaries.json holds the text real Keras 3.15 (jax backend, COLUMNS=200) printed for
the models built below, captured through print_fn: the box-drawn table, wrapped and cut cells, the
"Connected to" column of graphs, show_trainable, layer_range, line_length, and the parameter counts
with byte sizes (optimizer's included once it has stepped).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from fastconv import keras

EXPECTED = json.loads((Path(__file__).parent / "data" / "keras3_summaries.json").read_text(encoding="utf-8"))
L = keras.layers


def capture(model, **kwargs):
    texts = []
    model.summary(print_fn=texts.append, **kwargs)
    assert len(texts) == 1  # Keras 3 hands print_fn the whole summary at once
    return texts[0]


@pytest.fixture
def models(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    keras.backend.clear_session()
    cnn = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2),
                            L.BatchNormalization(), L.Flatten(), L.Dropout(0.5), L.Dense(10, activation="softmax")],
                           name="mnist_cnn")
    a = keras.Input((8,), name="a_very_long_input_name_that_will_not_fit_anywhere")
    b = keras.Input((8,), name="b")
    shared = L.Dense(5, name="shared_dense_layer")
    added = L.Add()([shared(a), shared(b), L.Dense(5, name="side")(b)])
    norm = L.BatchNormalization(name="norm")
    graph = keras.Model([a, b], L.Dense(2, name="out")(norm(added)), name="graph")
    norm.trainable = False
    x = keras.Input((4,), name="x")
    chain = keras.Model(x, L.Dense(3, name="second")(L.Dense(4, name="first")(x)), name="chain")
    return cnn, graph, chain


def test_sequential_summary_is_keras3s(models):
    cnn, _, _ = models
    assert capture(cnn) == EXPECTED["cnn"]
    assert capture(cnn, line_length=76) == EXPECTED["cnn_76"]


def test_graph_summary_is_keras3s(models):
    _, graph, chain = models
    assert capture(graph, show_trainable=True) == EXPECTED["graph_trainable"]
    assert capture(graph, line_length=70) == EXPECTED["graph_70"]
    assert capture(graph, layer_range=["shared.*", "add"]) == EXPECTED["graph_range"]
    assert capture(chain) == EXPECTED["chain"]  # a functional chain: no "Connected to", its Input listed
    graph.compile("adam", "mse")
    graph.fit([np.zeros((4, 8)), np.zeros((4, 8))], np.zeros((4, 2)), verbose=0)
    assert capture(graph) == EXPECTED["graph_optimizer"]


def test_summary_fits_the_terminal_and_prints(models, monkeypatch, capsys):
    cnn, _, _ = models
    monkeypatch.setenv("COLUMNS", "80")  # Keras: the default 88 columns, at most the terminal's width - 4
    cnn.summary()
    printed = capsys.readouterr().out
    assert printed == EXPECTED["cnn_76"]
    assert max(len(line) for line in printed.splitlines()) == 76
    with pytest.raises(ValueError, match="Insufficient console width"):
        cnn.summary(line_length=10)
    with pytest.raises(ValueError, match="matches no layer names"):
        cnn.summary(layer_range=["nothing", "here"])
