"""Downloads, data files and model files built to exhaust time, memory or disk: each is refused with
a clear error, promptly, and leaves nothing behind."""

import gzip
import io
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest

from fastconv.datasets import _download, mnist, read_idx

from datafiles_helpers import IDX_NAMES, idx_header, synthetic_dataset, write_file, write_idx_dataset
from test_datasets import isolated, mirror, mnist_cache  # noqa: F401  (fixtures)


def run_bounded(function, seconds):
    """Run ``function`` in a thread; fail (instead of hanging the suite) if it takes over ``seconds``."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return outcome, time.monotonic() - started


class RawServer:
    """A 127.0.0.1 server that answers every connection with ``respond(connection)``."""

    def __init__(self, respond):
        self.respond = respond
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"

    def _serve(self):
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection):
        with connection:
            connection.recv(65536)  # the request
            try:
                self.respond(self, connection)
            except OSError:
                pass  # the client hung up, as it should

    def close(self):
        self.stop.set()
        self.thread.join()
        self.listener.close()


@pytest.fixture
def raw_server(isolated, monkeypatch):  # noqa: F811
    servers = []
    monkeypatch.delenv("FASTCONV_NO_DOWNLOAD")

    def start(respond):
        server = RawServer(respond)
        servers.append(server)
        monkeypatch.setenv("FASTCONV_MNIST_MIRRORS", server.url)
        return server

    yield start
    for server in servers:
        server.close()


def drip_body(server, connection):
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while not server.stop.is_set():
        connection.sendall(b"\x1f")
        server.sent += 1
        time.sleep(0.2)


def drip_headers(server, connection):
    connection.sendall(b"HTTP/1.1 200 OK\r\n")
    while not server.stop.is_set():
        connection.sendall(b"X-Slow: a\r\n")
        time.sleep(0.2)


@pytest.mark.parametrize("respond", [drip_body, drip_headers])
def test_a_dripping_server_is_abandoned_at_the_deadline(raw_server, monkeypatch, respond):
    """Each read gets a byte well within the 2 s timeout; only the overall deadline stops it."""
    raw_server(respond)
    monkeypatch.setenv("FASTCONV_DOWNLOAD_DEADLINE", "1.5")
    outcome, seconds = run_bounded(mnist.load_data, 20)
    assert isinstance(outcome.get("error"), FileNotFoundError), outcome
    assert "1.5 s deadline" in str(outcome["error"])
    assert seconds < 6
    assert os.listdir(mnist_cache()) == []


def test_a_body_without_end_is_cut_off_at_the_largest_legitimate_size(raw_server):
    def endless(server, connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")  # no Content-Length
        block = bytes(1 << 16)
        while not server.stop.is_set():
            connection.sendall(block)
            server.sent += len(block)

    server = raw_server(endless)
    outcome, _ = run_bounded(mnist.load_data, 60)
    assert isinstance(outcome.get("error"), FileNotFoundError), outcome
    assert "cut off" in str(outcome["error"])
    limit = 16 + 60000 * 28 * 28  # the largest MNIST training images file, uncompressed
    assert limit < server.sent < 2 * limit + (8 << 20)  # stopped reading soon after the cap
    assert os.listdir(mnist_cache()) == []


def test_an_announced_oversize_body_is_refused_before_reading(raw_server):
    def huge(server, connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000000\r\n\r\n")
        while not server.stop.is_set():
            connection.sendall(bytes(1 << 16))
            server.sent += 1 << 16

    server = raw_server(huge)
    outcome, _ = run_bounded(mnist.load_data, 30)
    assert "server announces 5000000000 bytes" in str(outcome.get("error")), outcome
    assert os.listdir(mnist_cache()) == []
    assert server.sent < 64 << 20


def test_part_files_of_killed_downloads_are_removed_by_the_next_download(mirror, monkeypatch):  # noqa: F811
    base, _, _ = mirror
    monkeypatch.setenv("FASTCONV_MNIST_MIRRORS", f"{base}/good/")
    cache = mnist_cache()
    cache.mkdir(parents=True)
    abandoned = cache / ".train-images-idx3-ubyte.k1ll3d.part"
    abandoned.write_bytes(b"\x1f\x8b half a download")
    an_hour_ago = time.time() - 3600
    os.utime(abandoned, (an_hour_ago, an_hour_ago))
    # One still being written by another process (it holds the lock) must survive.
    live = cache / ".train-labels-idx1-ubyte.l1ve.part"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'wb'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(live)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "locked"
        os.utime(live, (an_hour_ago, an_hour_ago))
        mnist.load_data()
        assert not abandoned.exists()
        assert live.exists()
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    assert sorted(os.listdir(cache)) == sorted([live.name] + [f"{name}.gz" for name in IDX_NAMES])


def test_download_deadline_setting_is_checked(monkeypatch):
    monkeypatch.setenv("FASTCONV_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(ValueError, match="FASTCONV_DOWNLOAD_DEADLINE"):
        _download.download_deadline()
    monkeypatch.setenv("FASTCONV_DOWNLOAD_DEADLINE", "-1")
    with pytest.raises(ValueError, match="positive"):
        _download.download_deadline()


# --- data files whose headers claim too much -----------------------------------------


def test_a_gzip_bomb_is_refused_from_its_header_without_inflating(isolated):  # noqa: F811
    """A megabyte of gzip that inflates to a gigabyte of 'images': refused before decompressing."""
    dataset = synthetic_dataset()
    directory = write_idx_dataset(isolated / "bomb", dataset)
    count = (1 << 30) // (28 * 28)
    bomb = directory / "train-images-idx3-ubyte.gz"
    # gzip members concatenated read as one stream: the header, then a compressed MiB of zeros repeated.
    mebibyte_of_zeros = gzip.compress(bytes(1 << 20))
    bomb.write_bytes(gzip.compress(idx_header(0x08, (count, 28, 28))) + mebibyte_of_zeros * (count * 28 * 28 >> 20))
    assert gzip.open(bomb).read(1 << 24)[:16] == idx_header(0x08, (count, 28, 28))
    assert bomb.stat().st_size < 8 << 20
    started = time.monotonic()
    with pytest.raises(ValueError, match=rf"{bomb}: IDX header declares shape \({count}, 28, 28\); "
                                         r"this file may hold at most shape \(60000, 28, 28\)"):
        mnist.load_data(path=directory)
    assert time.monotonic() - started < 1  # refused from the header, not after inflating a gigabyte


def test_read_idx_max_shape_checks_dimensions(tmp_path):
    path = write_file(tmp_path / "labels", idx_header(0x08, (3,)) + b"\x01\x02\x03")
    np.testing.assert_array_equal(read_idx(path, max_shape=(3,)), [1, 2, 3])
    with pytest.raises(ValueError, match="at most shape"):
        read_idx(path, max_shape=(2,))
    with pytest.raises(ValueError, match="at most shape"):
        read_idx(path, max_shape=(3, 1))


def npz_with_header(path, claimed_shape, payload=b"\0" * 64):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": claimed_shape})
    (x_train, y_train), (x_test, y_test) = synthetic_dataset()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", header.getvalue() + payload)
        for key, array in (("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
            member = io.BytesIO()
            np.save(member, array)
            archive.writestr(f"{key}.npy", member.getvalue())
    return path


def test_npz_header_claiming_more_than_memory_is_a_value_error_naming_the_file(isolated):  # noqa: F811
    path = npz_with_header(isolated / "huge.npz", (1 << 20, 28, 28000))
    with pytest.raises(ValueError, match=rf"{path}: array 'x_train' claims shape \(1048576, 28, 28000\) .* "
                                         r"more than the 64 bytes stored for it"):
        mnist.load_data(path=path)


def test_npz_array_larger_than_mnist_allows_is_refused(isolated):  # noqa: F811
    count = 60001
    path = npz_with_header(isolated / "big.npz", (count, 28, 28), payload=bytes(count * 28 * 28))
    with pytest.raises(ValueError, match=r"more than an MNIST-like x_train can hold \(shape \(60000, 28, 28\)\)"):
        mnist.load_data(path=path)


def test_importing_fastconv_does_not_load_the_network_stack():
    """http.client, ssl and email cost an import each time and are needed only to download."""
    code = ("import sys, fastconv.keras, fastconv.datasets, fastconv.cli; "
            "print(sorted(m for m in ('http.client', 'ssl', 'email', 'urllib.request') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- saving models: permissions, symlinks, leftovers of killed saves -------------------


def small_model():
    from fastconv import keras
    model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2)])
    model.build((None, 3))
    return model


def test_resaving_keeps_the_file_mode(tmp_path):
    path = tmp_path / "private.fastconv"
    model = small_model()
    model.save(path)
    os.chmod(path, 0o600)
    model.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    os.chmod(path, 0o664)
    model.save_weights(path)
    assert path.stat().st_mode & 0o777 == 0o664


def test_a_new_file_gets_the_umask_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        small_model().save(tmp_path / "new.fastconv")
    finally:
        os.umask(previous)
    assert (tmp_path / "new.fastconv").stat().st_mode & 0o777 == 0o640


def test_saving_over_a_symlink_rewrites_the_file_it_points_to(tmp_path):
    from fastconv import keras
    real_dir = tmp_path / "runs"
    real_dir.mkdir()
    real = real_dir / "model-v1.fastconv"
    link = tmp_path / "latest.fastconv"
    model = small_model()
    model.save(real)
    link.symlink_to(real)
    model.layers[-1].kernel.assign(np.full((3, 2), 7, np.float32))
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    np.testing.assert_array_equal(keras.models.load_model(real).layers[-1].get_weights()[0], 7)
    assert sorted(os.listdir(tmp_path)) == ["latest.fastconv", "runs"]
    assert os.listdir(real_dir) == ["model-v1.fastconv"]


def test_a_save_removes_temporaries_of_killed_saves_of_the_same_target(tmp_path):
    path = tmp_path / "m.fastconv"
    an_hour_ago = time.time() - 3600
    left_over = tmp_path / ".m.fastconv.ab12cd34.tmp"
    other_target = tmp_path / ".m.fastconv.v2.ab12cd34.tmp"  # a temporary of "m.fastconv.v2"
    for leftover in (left_over, other_target):
        leftover.write_bytes(b"half a model")
        os.utime(leftover, (an_hour_ago, an_hour_ago))
    small_model().save(path)
    assert not left_over.exists()
    assert other_target.exists()
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, other_target.name])


def test_a_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    """SIGKILL in the middle of writing (the writer is stopped inside its write call)."""
    path = tmp_path / "m.fastconv"
    code = (
        "import os, sys, signal\n"
        "from fastconv import keras\n"
        "model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2)]); model.build((None, 3))\n"
        "def chunks():\n"
        "    yield b'partial'\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "from fastconv.keras import saving\n"
        "saving._atomic_write(sys.argv[1], chunks())\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
    assert result.returncode == -9
    leftovers = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(leftovers) == 1 and not path.exists()
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / leftovers[0], (an_hour_ago, an_hour_ago))
    small_model().save(path)
    assert os.listdir(tmp_path) == [path.name]


def test_a_downloaded_gzip_bomb_is_refused_once_it_inflates_past_the_cap(raw_server):
    """A small body within the download cap whose content would inflate far beyond any MNIST file."""
    bomb = gzip.compress(bytes(100 << 20), compresslevel=1)  # twice the largest MNIST file
    assert len(bomb) < 1 << 20

    def serve_bomb(server, connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb)

    raw_server(serve_bomb)
    outcome, _ = run_bounded(mnist.load_data, 60)
    assert "decompresses to more than" in str(outcome.get("error")), outcome
    assert os.listdir(mnist_cache()) == []
