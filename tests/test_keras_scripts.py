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
