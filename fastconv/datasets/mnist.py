"""MNIST handwritten digits: 60,000 training and 10,000 test 28x28 grayscale images."""

from ._loader import DatasetSpec, load_dataset

# sha256 of each decompressed IDX file, checked on download.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# Base URLs serving <IDX file name>.gz, tried in order; $FASTCONV_MNIST_MIRRORS
# (comma-separated) replaces them.
MIRRORS = [
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
]


def load_data(path=None, *, download=True):
    """Load MNIST as uint8 arrays ``((x_train, y_train), (x_test, y_test))``.

    Shapes are (60000, 28, 28), (60000,), (10000, 28, 28), (10000,), as in Keras.
    ``path`` is a directory holding the four IDX files (raw or .gz) or a
    Keras ``mnist.npz`` file. Without it, or if it holds no data, the search
    goes on in ``$FASTCONV_DATA/mnist``, ``./data/mnist``, the cache
    ``$XDG_CACHE_HOME/fastconv/mnist`` (default ``~/.cache/fastconv/mnist``),
    and finally downloads into that cache (unless ``download=False`` or
    ``$FASTCONV_NO_DOWNLOAD=1``), verifying sha256 checksums.
    Raises ``FileNotFoundError`` listing every place looked if nothing is
    found, ``ValueError`` for corrupt or malformed files.
    """
    return load_dataset(_spec(), path=path, download=download)


def load_test_data(path=None, *, download=True):
    """Only the test split ``(x_test, y_test)``, found as ``load_data`` finds it; needs only the two
    test files (``t10k-*``), so it works where the training files are absent."""
    ((x_test, y_test),) = load_dataset(_spec(), path=path, download=download, splits=("test",))
    return x_test, y_test


def _spec():
    # Built per call: SHA256, MIRRORS (and SYSTEM_DIRS) are read when loading, so they can be replaced.
    return DatasetSpec(name="mnist", title="MNIST", sha256=SHA256, mirrors=MIRRORS)
