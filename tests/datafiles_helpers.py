"""Writers of small IDX files and MNIST-like data sets for the datasets tests."""

import gzip
import hashlib
from pathlib import Path

import numpy as np

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# numpy dtype -> IDX type code
TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_header(type_code, shape):
    """The IDX magic number and big-endian dimensions."""
    dims = b"".join(int(size).to_bytes(4, "big") for size in shape)
    return bytes([0, 0, type_code, len(shape)]) + dims


def idx_bytes(array):
    """Encode ``array`` as uncompressed IDX (big-endian elements)."""
    array = np.asarray(array)
    payload = array.astype(array.dtype.newbyteorder(">")).tobytes()
    return idx_header(TYPE_CODES[array.dtype], array.shape) + payload


def write_file(path, data, compress=False):
    """Write ``data`` to ``path``, gzip-compressed if asked; return the path."""
    path = Path(path)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def synthetic_split(count, seed):
    """``count`` random uint8 28x28 images and labels 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    return images, labels


def synthetic_dataset(train_count=6, test_count=4, seed=0):
    """Small arrays ``((x_train, y_train), (x_test, y_test))`` shaped like MNIST."""
    return synthetic_split(train_count, seed), synthetic_split(test_count, seed + 1)


def idx_file_contents(dataset):
    """Map each IDX file name to its uncompressed bytes for ``dataset``."""
    (x_train, y_train), (x_test, y_test) = dataset
    arrays = (x_train, y_train, x_test, y_test)
    return {name: idx_bytes(array) for name, array in zip(IDX_NAMES, arrays)}


def write_idx_dataset(directory, dataset, compress=True):
    """Write ``dataset`` as the four IDX files into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in idx_file_contents(dataset).items():
        write_file(directory / (f"{name}.gz" if compress else name), data, compress)
    return directory


def sha256_table(dataset):
    """sha256 of each uncompressed IDX file of ``dataset``, as in mnist.SHA256."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in idx_file_contents(dataset).items()}
