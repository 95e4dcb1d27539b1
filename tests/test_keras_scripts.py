"""Everyday Keras scripts run with only their imports changed (the scripts live in tests/scripts)."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).parent / "scripts"


def write_small_mnist(directory, train_count, test_count):
    """An MNIST-shaped mnist.npz where load_data finds it (./data/mnist): each class a bright bar at
    its own place on noise, so the data is learnable but small enough for a test."""
    rng = np.random.default_rng(0)

    def split(count):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels):
            row, column = divmod(int(label), 5)
            image[4 + 10 * row:10 + 10 * row, 2 + 5 * column:6 + 5 * column] = 255
        return images, labels

    (x_train, y_train), (x_test, y_test) = split(train_count), split(test_count)
    path = directory / "data" / "mnist"
    path.mkdir(parents=True)
    np.savez(path / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def run_script(name, cwd, monkeypatch):
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.setenv("FASTCONV_NO_DOWNLOAD", "1")
    result = subprocess.run([sys.executable, str(SCRIPTS / name)], cwd=cwd, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_classic_keras2_mnist_cnn(tmp_path, monkeypatch):
    """keras-team's mnist_cnn.py (Keras 2: `K.image_data_format()`, `keras.losses.categorical_crossentropy`,
    `Adadelta()`, `input_shape=` on the first layer) trains its 12 epochs and reports a test score."""
    write_small_mnist(tmp_path, train_count=96, test_count=32)
    output = run_script("mnist_cnn.py", tmp_path, monkeypatch)
    assert "x_train shape: (96, 28, 28, 1)" in output
    assert "96 train samples" in output and "32 test samples" in output
    assert "Epoch 12/12" in output
    loss = float(re.search(r"Test loss: (\S+)", output).group(1))
    accuracy = float(re.search(r"Test accuracy: (\S+)", output).group(1))
    assert 0 < loss < 10 and 0 <= accuracy <= 1


def test_pydataset_feeding_a_two_input_model_with_dicts(tmp_path, monkeypatch):
    """A Keras 3 script (tests/scripts/pydataset_two_inputs.py; the same file with `import keras` runs
    in real Keras 3 and prints the same history keys and summary): a PyDataset read in two worker
    threads feeds a two-input, two-output functional model with dicts by layer name; it learns the
    task (shapes the network tells apart from the first epochs)."""
    monkeypatch.setenv("COLUMNS", "200")  # summary() at its full 108 columns
    output = run_script("pydataset_two_inputs.py", tmp_path, monkeypatch)
    assert "Epoch 4/4" in output and "15/15" in output
    assert ("history keys: ['brightness_loss', 'loss', 'shape_accuracy', 'shape_loss', 'val_brightness_loss', "
            "'val_loss', 'val_shape_accuracy', 'val_shape_loss']") in output
    assert "│ concatenate (Concatenate)" in output and "flatten[0][0], meta[0][0]" in output
    assert float(re.search(r"test accuracy: (\S+)", output).group(1)) >= 0.9
    assert "predicted shapes: (96, 2) (96, 1)" in output
