"""CIFAR-100: 50,000 training and 10,000 test 32x32 colour images in 100 classes (20 superclasses)."""

from ._loader import DatasetSpec
from .cifar import BinaryCifarSpec, load_cifar, test_files_only

ARCHIVE = "cifar-100-binary.tar.gz"
# Of the archive as served (sha256 and size as recorded by tensorflow_datasets; md5 as published
# on https://www.cs.toronto.edu/~kriz/cifar.html). The sha256 is what the download verifies.
SHA256 = "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"
MD5 = "03b5dce01913d631647c71ecec9e9cb8"
ARCHIVE_BYTES = 168513733

# Base URLs serving the archive, tried in order; $FASTCONV_CIFAR100_MIRRORS (comma-separated) replaces them.
MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]

TRAIN_FILES = ("train.bin",)
TEST_FILES = ("test.bin",)
LABEL_MODES = ("coarse", "fine")  # the order of the two label bytes in each record


def spec():
    """The CIFAR-100 distribution, read from the module's constants (so tests can replace them)."""
    return BinaryCifarSpec(
        dataset=DatasetSpec(name="cifar100", title="CIFAR-100", sha256={ARCHIVE: SHA256}, mirrors=MIRRORS),
        archive=ARCHIVE,
        archive_bytes=ARCHIVE_BYTES,
        md5=MD5,
        directory="cifar-100-binary",
        train_files=TRAIN_FILES,
        test_files=TEST_FILES,
        records_per_file={"train.bin": 50000, "test.bin": 10000},
        label_names=LABEL_MODES,
        classes=(20, 100),
    )


def load_data(label_mode="fine", path=None, *, download=True):
    """Load CIFAR-100 as uint8 arrays ``((x_train, y_train), (x_test, y_test))``.

    ``label_mode`` is ``"fine"`` (100 classes, labels 0-99) or ``"coarse"``
    (20 superclasses, 0-19), as in Keras. Shapes are (50000, 32, 32, 3),
    (50000, 1), (10000, 32, 32, 3), (10000, 1), channels last, RGB. Read
    from the official binary version, ``cifar-100-binary.tar.gz`` (never the
    pickled Python version). ``path`` is that archive (or its ``.tar``), or
    a directory holding it or its extracted ``cifar-100-binary/``. Without
    it the search goes on in ``$FASTCONV_DATA/cifar100``, ``./data/cifar100``,
    the cache ``$XDG_CACHE_HOME/fastconv/cifar100``, and finally downloads
    the archive (169 MB) into that cache (unless ``download=False`` or
    ``$FASTCONV_NO_DOWNLOAD=1``), verifying its sha256.
    Raises ``FileNotFoundError`` listing every place looked if nothing is
    found, ``ValueError`` naming the file for corrupt or malformed data.
    """
    _check_label_mode(label_mode)
    return load_cifar(spec(), label_mode, path=path, download=download)


def load_test_data(label_mode="fine", path=None, *, download=True):
    """Only the test split ``(x_test, y_test)``, found as ``load_data`` finds it; needs only
    ``test.bin`` when the files are extracted, and allocates nothing for the training split."""
    _check_label_mode(label_mode)
    _, test = load_cifar(test_files_only(spec()), label_mode, path=path, download=download)
    return test


def _check_label_mode(label_mode):
    if label_mode not in LABEL_MODES:
        raise ValueError(f'label_mode must be "fine" or "coarse", got {label_mode!r}')
