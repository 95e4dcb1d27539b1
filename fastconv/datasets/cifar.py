"""CIFAR-10 and CIFAR-100 from their official binary distributions (no pickle anywhere).

Each binary file is a sequence of records: the label byte(s), then 3072 pixel
bytes, channel-planar (1024 red, then 1024 green, then 1024 blue, each a
32x32 image row by row). Loading turns them into Keras' layout: uint8
``(N, 32, 32, 3)`` images and uint8 ``(N, 1)`` labels.

Data is accepted as the archive (``.tar.gz`` or ``.tar``) or as the files
extracted from it. Only regular members with the expected names are read,
straight into memory; nothing is ever extracted to disk.
"""

import gzip
import tarfile
import zlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from . import _download, _loader

IMAGE_SIDE = 32
CHANNELS = 3
PIXEL_BYTES = IMAGE_SIDE * IMAGE_SIDE * CHANNELS
# Records are parsed this many at a time, so a 150 MB member never sits in memory as one bytes object.
_RECORDS_PER_READ = 2048


@dataclass(frozen=True)
class BinaryCifarSpec:
    """Where one CIFAR distribution keeps its records, and what they look like."""

    dataset: _loader.DatasetSpec  # name, title, sha256 of the archive, mirrors: shared with MNIST's lookup
    archive: str  # file name of the official archive, as served by the mirrors
    archive_bytes: int  # its size: a download is cut off beyond it
    md5: str  # the checksum published next to the archive (kept for reference; sha256 is verified)
    directory: str  # the directory every member lives in, inside the archive
    train_files: Sequence[str]
    test_files: Sequence[str]
    records_per_file: dict  # member name -> number of records in the official file (an upper bound)
    label_names: Sequence[str]  # one label byte per name, in record order
    classes: Tuple[int, ...]  # number of classes of each label byte

    @property
    def label_bytes(self):
        return len(self.label_names)

    @property
    def record_bytes(self):
        return self.label_bytes + PIXEL_BYTES

    @property
    def members(self):
        return tuple(self.train_files) + tuple(self.test_files)


def load_cifar(spec, label_name, path=None, download=True):
    """Find ``spec``'s data and return ``((x_train, y_train), (x_test, y_test))`` with the labels ``label_name``.

    The search order is MNIST's: ``path``, ``$FASTCONV_DATA/<name>``,
    ``./data/<name>``, the user cache, then a verified download into the cache.
    """
    if label_name not in spec.label_names:
        raise ValueError(f"label_name must be one of {', '.join(spec.label_names)}, got {label_name!r}")
    looked = []
    cache = _loader.cache_dir(spec.dataset.name)
    for place, location in _loader._search_locations(spec.dataset, path, cache, looked):
        source = _find_source(spec, location)
        if source is not None:
            return _load_source(spec, source, label_name)
        looked.append(f"{place} {location}: {_describe_missing(spec, location)}")

    if not _loader.download_enabled(download):
        looked.append("download: disabled (download=False or FASTCONV_NO_DOWNLOAD set)")
    else:
        try:
            archive = _download_archive(spec, cache)
        except OSError as error:
            looked.append(f"download into {cache}: {error}")
        else:
            return _load_source(spec, _Archive(archive), label_name)

    places = "\n".join(f"  - {place}" for place in looked)
    raise FileNotFoundError(
        f"{spec.dataset.title} data set not found. Looked in:\n{places}\n"
        f"Put {spec.archive} (the binary version; its extracted {spec.directory}/ directory also works) "
        f"into one of these directories, or pass load_data(path=...)."
    )


def _read_records(stream, size, source, spec, label_column, labels_out, images_out):
    """Parse ``size`` bytes of ``spec`` records from ``stream`` into the given arrays.

    ``labels_out`` (uint8, ``(N, 1)``) receives label byte ``label_column`` of
    each record, ``images_out`` (uint8, ``(N, 32, 32, 3)``) the pixels turned
    channels-last; N is ``size`` over the record size, which the caller has
    checked (see ``_check_member_size``). Every label byte is range-checked.
    A stream ending early or running on is a ``ValueError`` naming ``source``.
    """
    count = size // spec.record_bytes
    buffer = np.empty((min(count, _RECORDS_PER_READ), spec.record_bytes), dtype=np.uint8)
    for start in range(0, count, _RECORDS_PER_READ):
        chunk = buffer[: min(_RECORDS_PER_READ, count - start)]
        _read_exactly(stream, memoryview(chunk).cast("B"), source, start * spec.record_bytes, size)
        for column, (label_name, classes) in enumerate(zip(spec.label_names, spec.classes)):
            largest = chunk[:, column].max()
            if largest >= classes:
                raise ValueError(f"{source}: {label_name} labels must be 0 to {classes - 1}, found {largest}")
        stop = start + len(chunk)
        labels_out[start:stop, 0] = chunk[:, label_column]
        planar = chunk[:, spec.label_bytes :].reshape(len(chunk), CHANNELS, IMAGE_SIDE, IMAGE_SIDE)
        images_out[start:stop] = planar.transpose(0, 2, 3, 1)
    if stream.read(1):
        raise ValueError(f"{source}: longer than the {size} bytes expected")


def test_files_only(spec):
    """``spec`` without its training files: loading it reads the test split alone (the training split
    comes back empty), and an extracted directory needs only the test files."""
    return dataclasses.replace(spec, train_files=())


def _read_exactly(stream, view, source, offset, size):
    filled = 0
    while filled < len(view):
        received = stream.readinto(view[filled:])
        if not received:
            raise ValueError(f"{source}: truncated: ends after {offset + filled} of {size} bytes")
        filled += received


def _check_member_size(spec, member, size, source):
    """Refuse a member that is not a whole number of records, or larger than the official file."""
    most = spec.records_per_file[member] * spec.record_bytes
    if size <= 0 or size % spec.record_bytes:
        raise ValueError(
            f"{source}: {size} bytes is not a whole number of {spec.record_bytes}-byte records "
            f"({spec.label_bytes} label byte(s) and {PIXEL_BYTES} pixels); truncated or not {spec.dataset.title}"
        )
    if size > most:
        raise ValueError(
            f"{source}: {size} bytes is more than the {most} of the official {member} "
            f"({spec.records_per_file[member]} records)"
        )


# --- where the data can be ---------------------------------------------------------------


@dataclass(frozen=True)
class _Archive:
    path: Path


@dataclass(frozen=True)
class _Directory:
    path: Path  # holds the extracted member files


def _find_source(spec, location):
    """The archive or extracted directory at ``location``, or None."""
    if location.is_file():
        return _Archive(location)
    if not location.is_dir():
        return None
    for directory in (location / spec.directory, location):
        if all((directory / member).is_file() for member in spec.members):
            return _Directory(directory)
    for name in (spec.archive, spec.archive.removesuffix(".gz")):
        if (location / name).is_file():
            return _Archive(location / name)
    return None


def _describe_missing(spec, location):
    if not location.exists():
        return "does not exist"
    if not location.is_dir():
        return "not a directory or archive"
    return f"no {spec.archive} and no {spec.directory}/ with {', '.join(spec.members)}"


def _load_source(spec, source, label_name):
    column = spec.label_names.index(label_name)
    if isinstance(source, _Directory):
        return _read_directory(spec, source.path, column)
    return _read_archive(spec, source.path, column)


def _read_splits(spec, sizes, open_member, label_column):
    """Allocate each split once (``sizes`` are checked already) and fill it member by member.

    ``open_member(member)`` returns ``(binary stream, name for messages)``.
    """
    splits = []
    for files in (spec.train_files, spec.test_files):
        counts = [sizes[member] // spec.record_bytes for member in files]
        images = np.empty((sum(counts), IMAGE_SIDE, IMAGE_SIDE, CHANNELS), dtype=np.uint8)
        labels = np.empty((sum(counts), 1), dtype=np.uint8)
        start = 0
        for member, count in zip(files, counts):
            stream, source = open_member(member)
            with stream:
                window = slice(start, start + count)
                _read_records(stream, sizes[member], source, spec, label_column, labels[window], images[window])
            start += count
        splits.append((images, labels))
    return tuple(splits)


def _read_directory(spec, directory, label_column):
    sizes = {}
    for member in spec.members:
        sizes[member] = (directory / member).stat().st_size
        _check_member_size(spec, member, sizes[member], directory / member)
    return _read_splits(spec, sizes, lambda member: (open(directory / member, "rb"), directory / member), label_column)


def _read_archive(spec, path, label_column):
    """Read every member from the archive at ``path``, having checked all their sizes first."""
    try:
        with tarfile.open(path, "r:*") as archive:
            members = _archive_members(spec, archive, path)
            sizes = {member: info.size for member, info in members.items()}

            def open_member(member):
                return archive.extractfile(members[member]), f"{path}: {members[member].name}"

            splits = _read_splits(spec, sizes, open_member, label_column)
            # gzip checks its CRC only at the end of the stream, which reading the members never reaches;
            # without this a flipped pixel byte in a stored (incompressible) block would go unnoticed.
            while archive.fileobj.read(1 << 20):
                pass
            return splits
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ValueError(f"{path}: corrupt or not a tar archive ({error})") from error


def _archive_members(spec, archive, path):
    """Map each expected member name to its validated TarInfo; reject missing, duplicate or odd members."""
    wanted = {f"{spec.directory}/{member}": member for member in spec.members}
    found = {}
    for info in archive.getmembers():
        member = wanted.get(info.name.removeprefix("./"))
        if member is None:
            continue
        source = f"{path}: {info.name}"
        if not info.isfile():
            raise ValueError(f"{source}: is not a regular file in the archive")
        if member in found:
            raise ValueError(f"{source}: appears twice in the archive")
        _check_member_size(spec, member, info.size, source)
        found[member] = info
    missing = [name for name, member in wanted.items() if member not in found]
    if missing:
        raise ValueError(f"{path}: archive lacks {', '.join(missing)}; is it {spec.archive}?")
    return {member: found[member] for member in spec.members}


def _download_archive(spec, cache):
    cache.mkdir(parents=True, exist_ok=True)
    return _download.fetch(
        spec.archive,
        _loader.mirrors(spec.dataset),
        spec.dataset.sha256[spec.archive],
        cache,
        _download.download_timeout(),
        set(),
        as_served=True,
        max_bytes=spec.archive_bytes,  # the sha256 pins the size anyway; this stops a longer body early
    )
