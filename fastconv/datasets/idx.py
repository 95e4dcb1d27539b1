"""Reader for the IDX format of MNIST-like datasets, raw or gzip-compressed.

An IDX file is a 4-byte magic number ``00 00 <type code> <ndim>``, then
``ndim`` big-endian uint32 dimensions, then the elements in row-major order
(big-endian for multi-byte types). Compression is detected from the gzip
magic bytes, never from the file name.
"""

import contextlib
import gzip
import hashlib
import math
import os
import zlib

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> element type as stored on disk.
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MAX_DIMS = 8
# Headers claiming more than this are refused before anything is allocated;
# MNIST-like data sets are orders of magnitude smaller.
MAX_PAYLOAD_BYTES = 2**34

_CHUNK_BYTES = 1 << 20
# Compressed input has no known size: its buffer starts at this and doubles while data keeps coming.
_INITIAL_UNKNOWN_BYTES = 1 << 26


def read_idx(source, *, max_shape=None):
    """Read an IDX file into a numpy array in native byte order.

    ``source`` is a path or a seekable binary file object (read from its
    current position), holding IDX data raw or gzip-compressed.
    The element type follows the header's type code (0x08 gives uint8).
    ``max_shape``, if given, is the largest shape the file may declare (same
    number of dimensions, none larger); a header beyond it is refused before
    any data is read or decompressed, which bounds a gzip bomb's expansion.

    Raises ``ValueError`` naming the file if it is empty, truncated, has
    trailing bytes, a bad magic number, an unsupported type code, an
    implausible number of dimensions or size, a shape beyond ``max_shape``,
    or corrupt gzip data.
    """
    if max_shape is not None:
        max_shape = tuple(int(size) for size in max_shape)
    if isinstance(source, (str, bytes, os.PathLike)):
        with open(source, "rb") as file:
            return _read_idx_file(file, os.fsdecode(source), max_shape)
    if not all(hasattr(source, method) for method in ("read", "seek", "tell")):
        raise TypeError(
            f"read_idx expects a path or a seekable binary file object, got {type(source).__name__}"
        )
    return _read_idx_file(source, str(getattr(source, "name", repr(source))), max_shape)


def is_gzip(path):
    """Return True if the file at ``path`` starts with the gzip magic bytes."""
    with open(path, "rb") as file:
        return file.read(len(GZIP_MAGIC)) == GZIP_MAGIC


def content_sha256(path, max_bytes=None):
    """Return the hex sha256 of a file's content, decompressed first if it is gzip.

    With ``max_bytes``, content longer than that raises ``ValueError`` as soon as it is read past:
    a small gzip from an untrusted server could otherwise keep the hash busy over gigabytes.
    """
    digest = hashlib.sha256()
    opener = gzip.open if is_gzip(path) else open
    hashed = 0
    with _gzip_errors_as_value_error(os.fsdecode(path)), opener(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            hashed += len(chunk)
            if max_bytes is not None and hashed > max_bytes:
                raise ValueError(f"{os.fsdecode(path)}: content decompresses to more than {max_bytes} bytes")
            digest.update(chunk)
    return digest.hexdigest()


def _read_idx_file(file, name, max_shape):
    if not file.seekable():
        raise TypeError(f"{name}: read_idx needs a seekable file object")
    start = file.tell()
    magic = file.read(len(GZIP_MAGIC))
    if not isinstance(magic, bytes):
        raise TypeError(f"{name}: read_idx needs a file opened in binary mode")
    file.seek(start)
    if magic == GZIP_MAGIC:
        with _gzip_errors_as_value_error(name), gzip.GzipFile(fileobj=file, mode="rb") as stream:
            return _parse_idx(stream, name, None, max_shape)
    # Uncompressed: the size is usually known up front, so bad sizes fail before reading.
    try:
        available_bytes = file.seek(0, os.SEEK_END) - start
    except (OSError, ValueError):  # e.g. a GzipFile cannot seek from the end
        available_bytes = None
    file.seek(start)
    return _parse_idx(file, name, available_bytes, max_shape)


def _parse_idx(stream, name, available_bytes, max_shape):
    """Parse IDX data from ``stream``; ``available_bytes`` is its size when known."""
    magic = _read_up_to(stream, 4)
    if not magic:
        raise ValueError(f"{name}: file is empty, expected IDX data")
    if len(magic) < 4:
        raise ValueError(f"{name}: truncated IDX header ({len(magic)} bytes)")
    if magic[:2] != b"\x00\x00":
        raise ValueError(
            f"{name}: not an IDX file: magic number 0x{magic.hex()} must start with 0x0000"
        )
    type_code, ndim = magic[2], magic[3]
    if type_code not in IDX_DTYPES:
        supported = ", ".join(f"0x{code:02x}" for code in IDX_DTYPES)
        raise ValueError(
            f"{name}: unsupported IDX type code 0x{type_code:02x} (supported: {supported})"
        )
    if not 1 <= ndim <= MAX_DIMS:
        raise ValueError(f"{name}: IDX header declares {ndim} dimensions, expected 1 to {MAX_DIMS}")
    dims = _read_up_to(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"{name}: truncated IDX header: {ndim} dimensions declared, file ends inside them")
    shape = tuple(int.from_bytes(dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
    if max_shape is not None and (len(shape) != len(max_shape) or any(map(int.__gt__, shape, max_shape))):
        raise ValueError(
            f"{name}: IDX header declares shape {shape}; this file may hold at most shape {max_shape}"
        )
    dtype = IDX_DTYPES[type_code]
    payload_bytes = math.prod(shape) * dtype.itemsize  # Python ints: cannot overflow
    if payload_bytes > MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"{name}: IDX header claims shape {shape} ({payload_bytes} bytes), "
            f"more than the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    if available_bytes is not None:
        _check_payload_size(name, shape, payload_bytes, available_bytes - 4 - 4 * ndim)
        buffer = _allocate(name, shape, payload_bytes)
        received = _read_into(stream, memoryview(buffer))
    else:
        buffer, received = _read_growing(stream, name, shape, payload_bytes)
    _check_payload_size(name, shape, payload_bytes, received)
    if stream.read(1):
        raise ValueError(f"{name}: trailing bytes after the {payload_bytes}-byte payload of shape {shape}")

    array = buffer.view(dtype).reshape(shape)
    if not dtype.isnative:
        # Swap in place rather than astype() to avoid a second full copy.
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array


def _allocate(name, shape, size):
    try:
        return np.empty(size, dtype=np.uint8)
    except MemoryError:
        raise ValueError(f"{name}: cannot allocate {size} bytes for shape {shape}") from None


def _read_growing(stream, name, shape, payload_bytes):
    """Read up to ``payload_bytes`` from a stream of unknown size (gzip) into a buffer that grows with
    the data actually received, so a small file whose header claims a huge shape allocates little.
    Returns (buffer, bytes received); the buffer is exactly ``payload_bytes`` long when complete."""
    size = min(payload_bytes, _INITIAL_UNKNOWN_BYTES)
    buffer = _allocate(name, shape, size)
    received = _read_into(stream, memoryview(buffer))
    while received == size < payload_bytes:
        size = min(payload_bytes, 2 * size)
        grown = _allocate(name, shape, size)
        grown[:received] = buffer[:received]
        buffer = grown
        received += _read_into(stream, memoryview(buffer)[received:])
    return buffer, received


def _check_payload_size(name, shape, expected, actual):
    if actual < expected:
        raise ValueError(
            f"{name}: truncated: shape {shape} needs {expected} payload bytes, found {actual}"
        )
    if actual > expected:
        raise ValueError(
            f"{name}: {actual - expected} trailing bytes after the {expected}-byte payload of shape {shape}"
        )


def _read_up_to(stream, size):
    """Read ``size`` bytes, fewer only at end of file."""
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_into(stream, view):
    """Fill ``view`` from ``stream``; return the number of bytes read (short only at end of file)."""
    filled = 0
    while filled < len(view):
        # Bounded reads: gzip would otherwise decompress everything into a temporary copy.
        count = stream.readinto(view[filled : filled + _CHUNK_BYTES])
        if not count:
            break
        filled += count
    return filled


@contextlib.contextmanager
def _gzip_errors_as_value_error(name):
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{name}: corrupt or truncated gzip data ({error})") from error
