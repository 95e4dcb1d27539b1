"""Finding, validating and loading MNIST-like data sets (IDX files or Keras .npz)."""

import contextlib
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fastconv._tempfiles import locked_temporary, remove_abandoned

from . import _download
from .idx import content_sha256, read_idx

# (split, images file, labels file), in the order load_data returns them.
SPLITS = (
    ("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
IDX_NAMES = tuple(name for _, images, labels in SPLITS for name in (images, labels))
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
# The most examples a split of an MNIST-like data set has. Files are refused if their headers declare
# more, before anything is allocated or decompressed: a small gzip or npz can claim gigabytes.
MAX_EXAMPLES = {"train": 60000, "test": 10000}
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class DatasetSpec:
    """What distinguishes one MNIST-like data set from another."""

    name: str  # directory name under each search root, and stem of its .npz
    title: str  # for messages
    sha256: Mapping[str, str]  # decompressed IDX file name -> hex sha256
    mirrors: Sequence[str]  # base URLs serving <IDX file name>.gz
    system_dirs: Sequence[str] = ()  # directories a system package installs into

    @property
    def mirrors_env(self):
        return "FASTCONV_" + self.name.upper().replace("-", "_") + "_MIRRORS"


def load_dataset(spec, path=None, download=True, splits=("train", "test")):
    """Find ``spec``'s data set and return ``((x_train, y_train), (x_test, y_test))``.

    Looks in ``path``, ``$FASTCONV_DATA/<name>``, ``./data/<name>``, the user
    cache, the ``data`` folder of the fastconv checkout this package was
    installed from (copied into the cache on first use), then
    ``spec.system_dirs``; finally downloads into the cache unless
    ``download`` is false or ``$FASTCONV_NO_DOWNLOAD`` is set. Raises
    ``FileNotFoundError`` listing every place looked, and what to do, if
    nothing was found. ``splits=("test",)`` returns ``((x_test, y_test),)``
    and needs only the test files.
    """
    splits = tuple(splits)
    needed = [name for split, images, labels in SPLITS if split in splits for name in (images, labels)]
    looked = []
    cache = cache_dir(spec.name)
    locations = list(_search_locations(spec, path, cache, looked))
    system = [place for place in locations if place[0] == "system"]
    locations = [place for place in locations if place[0] != "system"]
    locations += [("checkout", root / spec.name) for root in checkout_data_roots()] + system
    for label, location in locations:
        if location.is_file():
            return load_npz(location, splits)
        files = _idx_files_in(location)
        if all(name in files for name in needed):
            if label == "checkout":
                files = _copy_into_cache(spec, files, needed, cache)
            return load_idx_files(files, splits)
        npz = location / f"{spec.name}.npz"
        if npz.is_file():
            return load_npz(npz, splits)
        looked.append(f"{label} {location}: {_describe_incomplete(location, files, needed)}")

    if not download_enabled(download):
        looked.append("download: disabled (download=False or FASTCONV_NO_DOWNLOAD set)")
    else:
        try:
            downloaded = _download_into_cache(spec, cache, needed)
        except OSError as error:
            looked.append(f"download into {cache}: {error}")
        else:
            return load_idx_files(downloaded, splits)

    places = "\n".join(f"  - {place}" for place in looked)
    raise FileNotFoundError(
        f"{spec.title} data set not found. Looked in:\n{places}\n"
        f"To fix it, do one of:\n"
        f"  - put the IDX files {', '.join(needed)} (each raw or .gz), or {spec.name}.npz, into {cache}\n"
        f"  - point FASTCONV_DATA at a directory holding a {spec.name}/ folder of them; in a fastconv checkout:"
        f" export FASTCONV_DATA=/path/to/fastconv/data\n"
        f"  - allow the download: unset FASTCONV_NO_DOWNLOAD, call load_data() without download=False, and be online\n"
        f"  - pass load_data(path=...) with the directory or .npz file"
    )


def download_enabled(download):
    """True unless ``download`` is false or ``$FASTCONV_NO_DOWNLOAD`` is set (to anything but 0)."""
    return bool(download) and os.environ.get("FASTCONV_NO_DOWNLOAD", "") in ("", "0")


def mirrors(spec):
    """``spec``'s mirrors, or those listed (comma-separated) in ``$FASTCONV_<NAME>_MIRRORS``."""
    listed = os.environ.get(spec.mirrors_env, "")
    return [url.strip() for url in listed.split(",") if url.strip()] or list(spec.mirrors)


def cache_dir(name):
    """The user cache directory for data set ``name``: ``$XDG_CACHE_HOME`` or ``~/.cache``, then ``fastconv/<name>``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fastconv" / name


def max_shapes(split):
    """The largest (images, labels) shapes a ``split`` of an MNIST-like data set can have."""
    count = MAX_EXAMPLES[split]
    return (count,) + IMAGE_SHAPE, (count,)


def max_idx_bytes(name):
    """The largest an IDX file ``name`` of an MNIST-like data set can be, uncompressed."""
    for split, images_name, labels_name in SPLITS:
        if name in (images_name, labels_name):
            shape = max_shapes(split)[0 if name == images_name else 1]
            return 4 + 4 * len(shape) + math.prod(shape)
    raise KeyError(name)


def checkout_data_roots():
    """The ``data`` folders of the fastconv checkout this package was installed or is run from."""
    roots = []
    try:
        from ._checkout import CHECKOUT_DATA  # written by setup.py when a wheel is built from a checkout
    except ImportError:
        pass
    else:
        roots.append(Path(CHECKOUT_DATA))
    source_tree = Path(__file__).resolve().parents[2]  # an editable install, or the checkout itself
    if (source_tree / "pyproject.toml").is_file() and (source_tree / "fastconv").is_dir():
        roots.append(source_tree / "data")
    unique = []
    for root in roots:
        if root.is_dir() and root not in unique:
            unique.append(root)
    return unique


def _copy_into_cache(spec, files, needed, cache):
    """Copy a checkout's data files, verified, into the cache so that they stay found once the checkout
    is gone; return the paths to load (the checkout's own if the cache cannot be written)."""
    import shutil

    if any(content_sha256(files[name]) != spec.sha256[name] for name in needed):
        return files  # a modified checkout: use it as it is, but do not cache it
    copied = {}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for name in needed:
            source = files[name]
            target = cache / source.name
            # Named like a download's temporary, so that either cleans up the other's leftovers.
            remove_abandoned(cache, f".{name}.", ".part")
            with locked_temporary(cache, f".{name}.", ".part") as (fd, temporary):
                try:
                    with open(source, "rb") as reader, os.fdopen(fd, "wb") as writer:
                        shutil.copyfileobj(reader, writer)
                    os.replace(temporary, target)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temporary)
                    raise
            copied[name] = target
    except OSError:
        return files
    return {**files, **copied}


def load_idx_files(files, splits=("train", "test")):
    """Load the IDX files of ``splits``, given as a mapping from IDX file name to path."""
    loaded = []
    for split, images_name, labels_name in SPLITS:
        if split not in splits:
            continue
        max_images, max_labels = max_shapes(split)
        images = read_idx(files[images_name], max_shape=max_images)
        labels = read_idx(files[labels_name], max_shape=max_labels)
        _check_split(images, labels, f"{files[images_name]} and {files[labels_name]}", split)
        loaded.append((images, labels))
    return tuple(loaded)


def load_npz(path, splits=("train", "test")):
    """Load a Keras-style ``mnist.npz`` (keys x_train, y_train, x_test, y_test), validated."""
    with open(path, "rb") as file:
        if file.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            raise ValueError(f"{path}: not an .npz archive (expected keys {', '.join(NPZ_KEYS)})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise ValueError(
                    f"{path}: missing arrays {', '.join(missing)}; expected keys "
                    f"{', '.join(NPZ_KEYS)}, found {', '.join(archive.files) or 'none'}"
                )
            arrays = {}
            for split, _, _ in SPLITS:
                if split not in splits:
                    continue
                for key, max_shape in zip((f"x_{split}", f"y_{split}"), max_shapes(split)):
                    arrays[key] = _npz_array(archive, key, path, max_shape)
    except (zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path}: corrupt .npz archive ({error})") from error
    loaded = []
    for split, _, _ in SPLITS:
        if split in splits:
            images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
            _check_split(images, labels, path, split)
            loaded.append((images, labels))
    return tuple(loaded)


def _npz_array(archive, key, path, max_shape):
    _check_npy_header(archive, key, path, max_shape)
    try:
        return archive[key]
    except ValueError as error:  # e.g. an object array, refused without pickle
        raise ValueError(f"{path}: cannot load array {key!r}: {error}") from error
    except MemoryError:
        raise ValueError(f"{path}: array {key!r} does not fit in memory") from None


def _check_npy_header(archive, key, path, max_shape):
    """Refuse an array whose .npy header claims more bytes than its archive member holds or than an
    MNIST-like array of ``max_shape`` needs, before numpy allocates room for it."""
    member = archive.zip.getinfo(f"{key}.npy")
    with archive.zip.open(member) as stream:
        try:
            version = np.lib.format.read_magic(stream)
            # Versions 2 and 3 share the header layout; 3 only allows UTF-8 field names.
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(stream)
        except ValueError as error:
            raise ValueError(f"{path}: array {key!r} has a malformed .npy header ({error})") from error
        header_bytes = stream.tell()
    if dtype.hasobject:
        return  # np.load refuses it without pickle, with its own message
    claimed = math.prod(shape) * dtype.itemsize
    limit = math.prod(max_shape)  # MNIST-like arrays are uint8
    if claimed > member.file_size - header_bytes or claimed > limit:
        raise ValueError(
            f"{path}: array {key!r} claims shape {shape} of {dtype} ({claimed} bytes), more than "
            + (f"the {member.file_size - header_bytes} bytes stored for it"
               if claimed > member.file_size - header_bytes else f"an MNIST-like {key} can hold (shape {max_shape})")
        )


def _search_locations(spec, path, cache, looked):
    """Yield (label, location) in search order; note skipped roots in ``looked``."""
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a directory or .npz file path, got {type(path).__name__}")
        yield "path=", Path(path)
    data_root = os.environ.get("FASTCONV_DATA")
    if data_root:
        yield "$FASTCONV_DATA", Path(data_root) / spec.name
    else:
        looked.append("$FASTCONV_DATA: not set")
    yield "./data", Path.cwd() / "data" / spec.name
    yield "cache", cache
    for directory in spec.system_dirs:
        yield "system", Path(directory)


def _idx_files_in(directory):
    """Map each IDX file name present in ``directory`` (raw preferred over .gz) to its path."""
    found = {}
    for name in IDX_NAMES:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
    return found


def _describe_incomplete(location, files, needed=IDX_NAMES):
    if not location.exists():
        return "does not exist"
    if not location.is_dir():
        return "not a directory or .npz file"
    if not files:
        return "no IDX files"
    missing = [name for name in needed if name not in files]
    return "missing " + ", ".join(f"{name}[.gz]" for name in missing)


def _download_into_cache(spec, cache, needed=IDX_NAMES):
    """Download the ``needed`` IDX files missing from ``cache``; return the paths of all it holds."""
    base_urls = mirrors(spec)
    timeout = _download.download_timeout()
    cache.mkdir(parents=True, exist_ok=True)
    files = _idx_files_in(cache)
    dead_mirrors = set()
    for name in needed:
        if name not in files:
            files[name] = _download.fetch(name, base_urls, spec.sha256[name], cache, timeout, dead_mirrors,
                                          max_bytes=_max_download_bytes(max_idx_bytes(name)))
    return files


def _max_download_bytes(content_bytes):
    """The most a download of ``content_bytes`` of content can take: gzip of incompressible data adds a
    few bytes per deflate block plus its header and trailer."""
    return content_bytes + content_bytes // 1000 + 4096


def _check_split(images, labels, source, split):
    """Reject arrays that are not uint8 (N, 28, 28) images with N uint8 labels in 0..9."""
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE or images.ndim != 3:
        raise ValueError(
            f"{source}: {split} images must be uint8 of shape (N, 28, 28), "
            f"got {images.dtype} of shape {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{source}: {split} labels must be uint8 of shape ({images.shape[0]},) to match the images, "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{source}: {split} labels must be 0 to {NUM_CLASSES - 1}, found {labels.max()}")
