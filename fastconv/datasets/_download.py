"""Download of data files into a cache directory, verified and written atomically."""

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .idx import content_sha256, is_gzip

DEFAULT_TIMEOUT_SECONDS = 5.0
_CHUNK_BYTES = 1 << 16


def download_timeout():
    """Connect/read timeout in seconds: ``$FASTCONV_DOWNLOAD_TIMEOUT`` or the default."""
    value = os.environ.get("FASTCONV_DOWNLOAD_TIMEOUT", "")
    if not value:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"FASTCONV_DOWNLOAD_TIMEOUT must be a number of seconds, got {value!r}") from None


def fetch(name, mirrors, expected_sha256, cache_dir, timeout, dead_mirrors, *, as_served=False):
    """Download ``<mirror>/<name>.gz`` from the first mirror that serves it intact.

    The decompressed content must have sha256 ``expected_sha256``. The file
    lands in ``cache_dir`` under ``name`` (plus ``.gz`` if compressed) only
    once complete and verified. With ``as_served``, ``name`` is the whole
    file name on the mirror (an archive such as CIFAR's, whose published
    checksum is of the compressed bytes): fetched, checked and kept as is.
    Mirrors that cannot be reached are added to ``dead_mirrors`` and
    skipped, so an offline machine pays each timeout once.
    Returns the cached path; raises ``OSError`` listing every attempt if all fail.
    """
    failures = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{name}" + ("" if as_served else ".gz")
        if mirror in dead_mirrors:
            failures.append(f"{url}: skipped, mirror unreachable earlier")
            continue
        try:
            return _download_verified(url, name, expected_sha256, Path(cache_dir), timeout, as_served)
        except urllib.error.HTTPError as error:
            failures.append(f"{url}: HTTP {error.code} {error.reason}")
        except (OSError, http.client.HTTPException) as error:
            dead_mirrors.add(mirror)
            failures.append(f"{url}: {_describe(error)}")
        except ValueError as error:
            failures.append(f"{url}: {error}")
    if not mirrors:
        failures.append("no mirrors configured")
    raise OSError(f"could not download {name}: " + "; ".join(failures))


def _download_verified(url, name, expected_sha256, cache_dir, timeout, as_served=False):
    # The temporary file lives in the cache directory so os.replace is atomic.
    fd, temporary = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_response(url, out, timeout)
            out.flush()
            os.fsync(out.fileno())
        actual_sha256 = _file_sha256(temporary) if as_served else content_sha256(temporary)
        if actual_sha256 != expected_sha256:
            what = "the file" if as_served else "the decompressed content"
            raise ValueError(f"sha256 of {what} is {actual_sha256}, expected {expected_sha256}; discarded")
        final = cache_dir / (f"{name}.gz" if is_gzip(temporary) and not as_served else name)
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(cache_dir)
    return final


def _copy_response(url, out, timeout):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        progress = _Progress(url, total)
        received = 0
        try:
            while True:
                chunk = response.read(_CHUNK_BYTES)
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                progress.update(received)
        finally:
            progress.finish(received)
    if total is not None and received != total:
        raise OSError(f"connection closed after {received} of {total} bytes")


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_directory(directory):
    """Persist the rename itself; not every platform can open a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _describe(error):
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class _Progress:
    """Download progress on stderr: a redrawn bar on a terminal, plain lines otherwise."""

    BAR_WIDTH = 30

    def __init__(self, url, total):
        self.url = url
        self.total = total
        self.stream = sys.stderr
        self.is_tty = self.stream.isatty()
        self.shown_percent = -1
        if not self.is_tty:
            size = f" ({_megabytes(total)})" if total else ""
            print(f"Downloading {url}{size}", file=self.stream, flush=True)

    def update(self, received):
        if not self.is_tty:
            return
        if self.total:
            percent = min(100, received * 100 // self.total)
            if percent == self.shown_percent:
                return
            self.shown_percent = percent
            filled = self.BAR_WIDTH * percent // 100
            bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
            line = f"{self.url} [{bar}] {percent:3d}% of {_megabytes(self.total)}"
        else:
            line = f"{self.url} {_megabytes(received)}"
        self.stream.write("\r" + line)
        self.stream.flush()

    def finish(self, received):
        if self.is_tty:
            self.stream.write("\n")
        else:
            print(f"Received {_megabytes(received)} from {self.url}", file=self.stream)
        self.stream.flush()


def _megabytes(count):
    return f"{count / 1e6:.1f} MB"
