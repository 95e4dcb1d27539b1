"""The training FLOP count behind the FMA floor of BENCHMARKS.md (fastconv.bench_training.training_flops),
against counts made by hand, and the Keras scripts of benchmarks/keras_scripts on fastconv."""
import ast
import pathlib
import re
import subprocess
import sys

import pytest

from fastconv import keras
from fastconv.bench_training import training_flops
from fastconv.keras import layers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_tiny_model_counts_what_a_hand_count_gives():
    model = keras.Sequential([
        keras.Input(shape=(6, 6, 2)),
        layers.Rescaling(0.5),                                # no weights: no FLOPs, nothing to differentiate
        layers.Conv2D(3, 3, activation="relu"),               # 4x4x3 outputs x 3*3*2 multiply-adds = 864
        layers.MaxPooling2D(2),                               # -> 2x2x3
        layers.Conv2D(4, 3, strides=2, padding="same"),       # 1x1x4 outputs x 3*3*3 = 108
        layers.Flatten(),
        layers.Dense(5),                                      # 4 x 5 = 20
    ])
    rows = training_flops(model)
    assert [row[1:] for row in rows] == [
        (2 * 864, 0, 2 * 864),            # the first layer: no input gradient
        (2 * 108, 2 * 108, 2 * 108),
        (2 * 20, 2 * 20, 2 * 20),
    ]
    assert [row[0] for row in rows] == [layer.name for layer in model.layers if layer.weights]


def test_transposed_convolutions_and_dense_over_leading_axes():
    model = keras.Sequential([
        keras.Input(shape=(3, 3, 2)),
        layers.BatchNormalization(),                            # trainable: the next layer needs its dx
        layers.Conv2DTranspose(5, 2, strides=2),                # 3*3*2 inputs x 2*2*5 = 360 -> 6x6x5
        layers.Dense(7),                                        # 6*6 positions x 5*7 = 1260
    ])
    assert [row[1:] for row in training_flops(model)] == [(720, 720, 720), (2520, 2520, 2520)]


def test_the_recipes_floor_counts():
    from fastconv import recipes
    # seed: conv 28*28*32*9 + conv 14*14*64*288 + dense 3136*128 + dense 128*10 multiply-adds, the first
    # conv without an input gradient
    seed = sum(sum(row[1:]) for row in training_flops(recipes.RECIPES["seed"].build()))
    assert seed == 2 * (2 * 225792 + 3 * (3612672 + 401408 + 1280))
    cnn = sum(sum(row[1:]) for row in training_flops(recipes.RECIPES["keras-cnn"].build()))
    assert cnn == 2 * (2 * 26 * 26 * 32 * 9 + 3 * (24 * 24 * 64 * 288 + 9216 * 128 + 1280))


def test_what_it_cannot_count_is_an_error():
    with pytest.raises(ValueError, match="Sequential"):
        training_flops("seed")
    inputs = keras.Input(shape=(4,))
    with pytest.raises(ValueError, match="Sequential"):
        training_flops(keras.Model(inputs, layers.Dense(2)(inputs)))


@pytest.mark.parametrize("script", ["seed.py", "keras_cnn.py"])
def test_the_keras_scripts_train_on_fastconv(script):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "keras_scripts" / script), "--fastconv",
                             "--images", "200"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"batch \d+: 200 images in \S+ s.*loss (\S+),.*backend fastconv", result.stdout)
    assert match and float(match.group(1)) > 0, result.stdout


@pytest.mark.parametrize("script", ["seed.py", "keras_cnn.py"])
def test_the_keras_scripts_differ_between_the_libraries_only_in_the_import(script):
    tree = ast.parse((ROOT / "benchmarks" / "keras_scripts" / script).read_text())
    nodes = list(ast.walk(tree))
    switches = [node for node in nodes if isinstance(node, ast.If) and ast.unparse(node.test) == "args.fastconv"]
    assert len(switches) == 1
    assert [ast.unparse(n) for n in switches[0].body] == ["from fastconv import keras"]
    assert [ast.unparse(n) for n in switches[0].orelse] == ["import keras"]
    modules = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in nodes if isinstance(node, ast.ImportFrom)}
    assert modules == {"argparse", "gzip", "pathlib", "time", "numpy", "keras", "fastconv"}
    names = {node.id for node in nodes if isinstance(node, ast.Name)}
    attributes = {node.attr for node in nodes if isinstance(node, ast.Attribute)}
    assert not {"fastconv", "tf", "tensorflow", "torch"} & names
    assert not {"tensorflow", "torch"} & attributes  # and `fastconv` only as args.fastconv, above
