"""Download of data files into a cache directory, verified and written atomically.

Every download is bounded: each read waits at most the timeout, the whole file must arrive before a
deadline, and a body larger than the caller's cap is cut off. A temporary ``.part`` file receives the
data and is renamed into place only once verified; ``.part`` files of killed downloads are removed by
the next download of the same file. ``http.client``, ``ssl`` and ``urllib.request`` are imported only
when a download starts, since most imports of fastconv never download.
"""

import contextlib
import hashlib
import os
import socket
import sys
import threading
from pathlib import Path

from fastconv._tempfiles import locked_temporary, remove_abandoned

from .idx import content_sha256, is_gzip

DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_DEADLINE_SECONDS = 600.0
# Cap on a body when the caller knows no better one.
DEFAULT_MAX_BYTES = 1 << 30
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


def download_deadline():
    """Seconds one file may take to download in full: ``$FASTCONV_DOWNLOAD_DEADLINE`` or the default."""
    value = os.environ.get("FASTCONV_DOWNLOAD_DEADLINE", "")
    if not value:
        return DEFAULT_DEADLINE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise ValueError(f"FASTCONV_DOWNLOAD_DEADLINE must be a positive number of seconds, got {value!r}")
    return seconds


def fetch(name, mirrors, expected_sha256, cache_dir, timeout, dead_mirrors, *, as_served=False, max_bytes=None,
          deadline=None):
    """Download ``<mirror>/<name>.gz`` from the first mirror that serves it intact.

    The decompressed content must have sha256 ``expected_sha256``. The file
    lands in ``cache_dir`` under ``name`` (plus ``.gz`` if compressed) only
    once complete and verified. With ``as_served``, ``name`` is the whole
    file name on the mirror (an archive such as CIFAR's, whose published
    checksum is of the compressed bytes): fetched, checked and kept as is.
    Mirrors that cannot be reached are added to ``dead_mirrors`` and
    skipped, so an offline machine pays each timeout once.
    ``max_bytes`` caps the body received (default ``DEFAULT_MAX_BYTES``);
    ``deadline`` is the seconds one attempt may take in all (default
    ``download_deadline()``), ``timeout`` the seconds one read may wait.
    Returns the cached path; raises ``OSError`` listing every attempt if all fail.
    """
    import http.client
    import urllib.error

    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    deadline = download_deadline() if deadline is None else deadline
    cache_dir = Path(cache_dir)
    remove_abandoned(cache_dir, f".{name}.", ".part")
    failures = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{name}" + ("" if as_served else ".gz")
        if mirror in dead_mirrors:
            failures.append(f"{url}: skipped, mirror unreachable earlier")
            continue
        try:
            return _download_verified(url, name, expected_sha256, cache_dir, timeout, as_served, deadline, max_bytes)
        except urllib.error.HTTPError as error:
            failures.append(f"{url}: HTTP {error.code} {error.reason}")
        except _TooLarge as error:
            failures.append(f"{url}: {error}")
        except (OSError, http.client.HTTPException) as error:
            dead_mirrors.add(mirror)
            failures.append(f"{url}: {_describe(error)}")
        except ValueError as error:
            failures.append(f"{url}: {error}")
    if not mirrors:
        failures.append("no mirrors configured")
    raise OSError(f"could not download {name}: " + "; ".join(failures))


class _TooLarge(ValueError):
    """The server sent more than the file can legitimately hold."""


def _download_verified(url, name, expected_sha256, cache_dir, timeout, as_served, deadline, max_bytes):
    # The temporary file lives in the cache directory so os.replace is atomic.
    with locked_temporary(cache_dir, f".{name}.", ".part") as (fd, temporary):
        return _fill_and_rename(fd, temporary, url, name, expected_sha256, cache_dir, timeout, as_served, deadline,
                                max_bytes)


def _fill_and_rename(fd, temporary, url, name, expected_sha256, cache_dir, timeout, as_served, deadline, max_bytes):
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_response(url, out, timeout, deadline, max_bytes)
            out.flush()
            os.fsync(out.fileno())
        # The decompressed content of a legitimate file is no larger than the cap on what is downloaded.
        actual_sha256 = _file_sha256(temporary) if as_served else content_sha256(temporary, max_bytes)
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


def _copy_response(url, out, timeout, deadline, max_bytes):
    """Write the body of ``url`` to ``out``, within ``deadline`` seconds and ``max_bytes`` bytes."""
    watchdog = _Watchdog(deadline)
    try:
        with _opener(watchdog).open(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise _TooLarge(f"server announces {total} bytes, more than the {max_bytes} this file can take")
            progress = _Progress(url, total)
            received = 0
            try:
                while True:
                    # read1 returns what one receive brings, so the deadline is checked between
                    # receives even when the server drips a byte at a time.
                    chunk = response.read1(_CHUNK_BYTES)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > max_bytes:
                        raise _TooLarge(f"server sent more than the {max_bytes} bytes this file can take; cut off")
                    out.write(chunk)
                    progress.update(received)
                    watchdog.check()
            finally:
                progress.finish(received)
    except _TooLarge:
        raise
    except Exception:
        watchdog.check()  # a read the watchdog cut short: report the deadline, not a broken connection
        raise
    finally:
        watchdog.cancel()
    watchdog.check()
    if total is not None and received != total:
        raise OSError(f"connection closed after {received} of {total} bytes")


class _Watchdog:
    """Shuts down the download's sockets once ``deadline`` seconds have passed.

    Timeouts alone bound each read, not their sum: a server that sends a byte every few seconds, in
    the headers or the body, never trips them. Shutting the socket down wakes any blocked read.
    """

    def __init__(self, deadline):
        self.deadline = deadline
        self.expired = False
        self._sockets = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(deadline, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock):
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut_down(sock)

    def _expire(self):
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut_down(sock)

    def check(self):
        if self.expired:
            raise TimeoutError(f"download not complete after the {self.deadline:g} s deadline "
                               "(FASTCONV_DOWNLOAD_DEADLINE); gave up")

    def cancel(self):
        self._timer.cancel()


def _shut_down(sock):
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, also for an ssl one


def _opener(watchdog):
    """A urllib opener (proxies, redirects, https as usual) whose connections ``watchdog`` can cut."""
    import http.client
    import urllib.request

    class Watched:
        def connect(self):
            super().connect()
            watchdog.watch(self.sock)

    class WatchedHTTPConnection(Watched, http.client.HTTPConnection):
        pass

    class WatchedHTTPSConnection(Watched, http.client.HTTPSConnection):
        pass

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(WatchedHTTPConnection, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(WatchedHTTPSConnection, req, context=self._context)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


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
    import urllib.error

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
