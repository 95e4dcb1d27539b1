"""CIFAR-10: 50,000 training and 10,000 test 32x32 colour images in 10 classes."""

from ._loader import DatasetSpec
from .cifar import BinaryCifarSpec, load_cifar, test_files_only

ARCHIVE = "cifar-10-binary.tar.gz"
# Of the archive as served (sha256 and size as recorded by tensorflow_datasets; md5 as published
# on https://www.cs.toronto.edu/~kriz/cifar.html). The sha256 is what the download verifies.
SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE_BYTES = 170052171

# Base URLs serving the archive, tried in order; $FASTCONV_CIFAR10_MIRRORS (comma-separated) replaces them.
MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]

TRAIN_FILES = tuple(f"data_batch_{number}.bin" for number in range(1, 6))
TEST_FILES = ("test_batch.bin",)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def spec():
    """The CIFAR-10 distribution, read from the module's constants (so tests can replace them)."""
    return BinaryCifarSpec(
        dataset=DatasetSpec(name="cifar10", title="CIFAR-10", sha256={ARCHIVE: SHA256}, mirrors=MIRRORS),
        archive=ARCHIVE,
        archive_bytes=ARCHIVE_BYTES,
        md5=MD5,
        directory="cifar-10-batches-bin",
        train_files=TRAIN_FILES,
        test_files=TEST_FILES,
        records_per_file={name: 10000 for name in TRAIN_FILES + TEST_FILES},
        label_names=("label",),
        classes=(10,),
    )


def load_data(path=None, *, download=True):
    """Load CIFAR-10 as uint8 arrays ``((x_train, y_train), (x_test, y_test))``.

    Shapes are (50000, 32, 32, 3), (50000, 1), (10000, 32, 32, 3), (10000, 1),
    as in Keras (channels last, RGB). Read from the official binary version,
    ``cifar-10-binary.tar.gz`` (never the pickled Python version). ``path``
    is that archive (or its ``.tar``), or a directory holding it or its
    extracted ``cifar-10-batches-bin/``. Without it, or if it holds no data,
    the search goes on in ``$FASTCONV_DATA/cifar10``, ``./data/cifar10``,
    the cache ``$XDG_CACHE_HOME/fastconv/cifar10`` (default
    ``~/.cache/fastconv/cifar10``), and finally downloads the archive
    (170 MB) into that cache (unless ``download=False`` or
    ``$FASTCONV_NO_DOWNLOAD=1``), verifying its sha256.
    Raises ``FileNotFoundError`` listing every place looked if nothing is
    found, ``ValueError`` naming the file for corrupt or malformed data.
    """
    return load_cifar(spec(), "label", path=path, download=download)


def load_test_data(path=None, *, download=True):
    """Only the test split ``(x_test, y_test)``, found as ``load_data`` finds it; needs only
    ``test_batch.bin`` when the files are extracted, and allocates nothing for the training split."""
    _, test = load_cifar(test_files_only(spec()), "label", path=path, download=download)
    return test
