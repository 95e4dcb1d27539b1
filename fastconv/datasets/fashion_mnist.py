"""Fashion-MNIST: 60,000 training and 10,000 test 28x28 grayscale images of clothing, 10 classes."""

from ._loader import DatasetSpec, load_dataset

# sha256 of each decompressed IDX file, checked on download.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# Base URLs serving <IDX file name>.gz, tried in order;
# $FASTCONV_FASHION_MNIST_MIRRORS (comma-separated) replaces them.
MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
]

# Where Debian's dataset-fashion-mnist package installs the four .gz files.
SYSTEM_DIRS = ["/usr/share/datasets/fashion-mnist"]


def load_data(path=None, *, download=True):
    """Load Fashion-MNIST as uint8 arrays ``((x_train, y_train), (x_test, y_test))``.

    Shapes are (60000, 28, 28), (60000,), (10000, 28, 28), (10000,), as in Keras.
    ``path`` is a directory holding the four IDX files (raw or .gz) or an
    .npz file with keys x_train, y_train, x_test, y_test. Without it, or if
    it holds no data, the search goes on in ``$FASTCONV_DATA/fashion-mnist``,
    ``./data/fashion-mnist``, the cache ``$XDG_CACHE_HOME/fastconv/fashion-mnist``
    (default ``~/.cache/fastconv/fashion-mnist``), ``/usr/share/datasets/fashion-mnist``,
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
    return DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        sha256=SHA256,
        mirrors=MIRRORS,
        system_dirs=SYSTEM_DIRS,
    )
