"""Tests of fastconv.datasets: IDX reader, npz loading, search order, download."""

import gzip
import http.server
import io
import os
import socket
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fastconv.datasets import _download, _loader, fashion_mnist, mnist, read_idx
from fastconv.datasets.idx import MAX_PAYLOAD_BYTES, content_sha256

from datafiles_helpers import (
    IDX_NAMES,
    idx_bytes,
    idx_file_contents,
    idx_header,
    sha256_table,
    synthetic_dataset,
    write_file,
    write_idx_dataset,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
VENDORED_MNIST = REPO_ROOT / "data" / "mnist"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data anywhere: empty cwd and cache, no $FASTCONV_DATA, downloads disabled."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.setenv("FASTCONV_NO_DOWNLOAD", "1")
    monkeypatch.setenv("FASTCONV_DOWNLOAD_TIMEOUT", "2")
    monkeypatch.delenv("FASTCONV_MNIST_MIRRORS", raising=False)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", [])
    monkeypatch.setattr(_loader, "checkout_data_roots", lambda: [])  # the vendored copy would be found
    return tmp_path


def assert_same_dataset(loaded, expected):
    for (x, y), (x_expected, y_expected) in zip(loaded, expected):
        assert x.dtype == np.uint8 and y.dtype == np.uint8
        np.testing.assert_array_equal(x, x_expected)
        np.testing.assert_array_equal(y, y_expected)


def train_count(loaded):
    return loaded[0][0].shape[0]


# --- the real data ---------------------------------------------------------


def test_vendored_mnist_has_canonical_checksums():
    for name in IDX_NAMES:
        assert content_sha256(VENDORED_MNIST / f"{name}.gz") == mnist.SHA256[name]


def test_vendored_mnist_loads_like_keras():
    (x_train, y_train), (x_test, y_test) = mnist.load_data(path=VENDORED_MNIST)
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    for array in (x_train, y_train, x_test, y_test):
        assert array.dtype == np.uint8
    assert x_train.max() == 255 and x_train.min() == 0
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_found_in_debian_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.setenv("FASTCONV_NO_DOWNLOAD", "1")
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and y_test.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)


# --- IDX reader ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, compress):
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    path = write_file(tmp_path / "data.idx", idx_bytes(array), compress)
    loaded = read_idx(path)
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize(
    "open_stream",
    [
        lambda data: io.BytesIO(data),
        lambda data: io.BytesIO(gzip.compress(data)),
        lambda data: gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(data))),
    ],
    ids=["raw", "gzip bytes", "decompressing stream"],
)
def test_read_idx_from_file_object(open_stream):
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    np.testing.assert_array_equal(read_idx(open_stream(idx_bytes(array))), array)


def test_read_idx_rejects_text_mode_file(tmp_path):
    path = write_file(tmp_path / "data.idx", idx_bytes(np.zeros(3, np.uint8)))
    with open(path, encoding="latin-1") as text_file, pytest.raises(TypeError, match="binary"):
        read_idx(text_file)


VALID = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
MALFORMED = {
    "empty": (b"", "empty"),
    "short header": (b"\x00\x00\x08", "truncated IDX header"),
    "bad magic": (b"\x12\x34" + VALID[2:], "magic number 0x12340803"),
    "bad type code": (b"\x00\x00\x07" + VALID[3:], "unsupported IDX type code 0x07"),
    "zero dims": (b"\x00\x00\x08\x00", "0 dimensions"),
    "nine dims": (idx_header(0x08, [1] * 9) + b"\x00", "9 dimensions"),
    "dims cut off": (idx_header(0x08, (2, 3, 4))[:9], "ends inside them"),
    "truncated payload": (VALID[:-5], "truncated"),
    "trailing bytes": (VALID + b"junk", "trailing bytes"),
    "absurd size": (idx_header(0x08, (2**20, 2**20)), "limit"),
    "absurd size, wide type": (idx_header(0x0E, (2**16, 2**16, 2**16)), "limit"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_read_idx_rejects_malformed(tmp_path, monkeypatch, case, compress):
    data, message = MALFORMED[case]
    path = write_file(tmp_path / "bad.idx", data, compress)

    def refuse_allocation(*args, **kwargs):
        raise AssertionError("read_idx allocated a payload for a malformed header")

    if case.startswith("absurd"):
        monkeypatch.setattr(np, "empty", refuse_allocation)
    with pytest.raises(ValueError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_rejects_absurd_header_before_allocating(tmp_path):
    path = write_file(tmp_path / "huge.idx", idx_header(0x08, (2**20, 2**20)))  # 2**40 bytes
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"{MAX_PAYLOAD_BYTES}-byte limit"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: data[:20] + bytes(b ^ 0xFF for b in data[20:])],
    ids=["cut", "flipped"],
)
def test_read_idx_rejects_corrupt_gzip(tmp_path, damage):
    path = write_file(tmp_path / "bad.gz", damage(gzip.compress(VALID)))
    with pytest.raises(ValueError, match="gzip") as error:
        read_idx(path)
    assert str(path) in str(error.value)


# --- npz -------------------------------------------------------------------


def save_npz(path, dataset, **overrides):
    (x_train, y_train), (x_test, y_test) = dataset
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    arrays.update(overrides)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def test_npz_loads(isolated):
    dataset = synthetic_dataset()
    path = save_npz(isolated / "mnist.npz", dataset)
    assert_same_dataset(mnist.load_data(path=path), dataset)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(y_test=None), "missing arrays y_test"),
        (dict(x_train=np.zeros((6, 28, 27), np.uint8)), r"train images must be uint8 of shape \(N, 28, 28\)"),
        (dict(x_test=np.zeros((4, 28, 28), np.float32)), "test images must be uint8"),
        (dict(y_train=np.zeros(5, np.uint8)), r"train labels must be uint8 of shape \(6,\)"),
        (dict(y_test=np.full(4, 10, np.uint8)), "labels must be 0 to 9"),
        (dict(y_test=np.array([1, None, 2, 3], dtype=object)), "cannot load array 'y_test'"),
    ],
    ids=["missing key", "image shape", "image dtype", "label count", "label range", "object array"],
)
def test_npz_rejects_bad_contents(isolated, overrides, message):
    path = save_npz(isolated / "mnist.npz", synthetic_dataset(), **overrides)
    with pytest.raises(ValueError, match=message) as error:
        mnist.load_data(path=path)
    assert str(path) in str(error.value)


def test_npz_rejects_non_archive(isolated):
    path = write_file(isolated / "mnist.npz", b"not a zip file")
    with pytest.raises(ValueError, match="not an .npz archive"):
        mnist.load_data(path=path)


def test_idx_with_wrong_image_shape_rejected(isolated):
    dataset = synthetic_dataset()
    directory = write_idx_dataset(isolated / "d", dataset)
    write_file(directory / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((4, 32, 32), np.uint8)), True)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: .*at most shape \(10000, 28, 28\)"):
        mnist.load_data(path=directory)


# --- search order ----------------------------------------------------------


def test_search_order(isolated, monkeypatch):
    """path=, then $FASTCONV_DATA/<name>, then ./data/<name>, then the cache."""
    explicit = write_idx_dataset(isolated / "explicit", synthetic_dataset(train_count=1))
    data_root = isolated / "fastconv-data"
    write_idx_dataset(data_root / "mnist", synthetic_dataset(train_count=2), compress=False)
    write_idx_dataset(Path.cwd() / "data" / "mnist", synthetic_dataset(train_count=3))
    write_idx_dataset(isolated / "cache" / "fastconv" / "mnist", synthetic_dataset(train_count=4))
    monkeypatch.setenv("FASTCONV_DATA", str(data_root))

    assert train_count(mnist.load_data(path=explicit)) == 1
    assert train_count(mnist.load_data(path=str(explicit))) == 1
    assert train_count(mnist.load_data(path=isolated / "no-such-dir")) == 2
    assert train_count(mnist.load_data()) == 2
    monkeypatch.delenv("FASTCONV_DATA")
    assert train_count(mnist.load_data()) == 3
    monkeypatch.chdir(isolated)
    assert train_count(mnist.load_data()) == 4


def test_npz_found_in_search_directory(isolated):
    dataset = synthetic_dataset()
    directory = Path.cwd() / "data" / "mnist"
    directory.mkdir(parents=True)
    save_npz(directory / "mnist.npz", dataset)
    assert_same_dataset(mnist.load_data(), dataset)


def test_fashion_mnist_system_directory_comes_last(isolated, monkeypatch):
    system_dir = write_idx_dataset(isolated / "usr-share", synthetic_dataset(train_count=5))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", [str(system_dir)])
    assert train_count(fashion_mnist.load_data()) == 5
    write_idx_dataset(isolated / "cache" / "fastconv" / "fashion-mnist", synthetic_dataset(train_count=4))
    assert train_count(fashion_mnist.load_data()) == 4


def test_not_found_lists_every_place(isolated, monkeypatch):
    partial = isolated / "partial"
    write_idx_dataset(partial, synthetic_dataset())
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as error:
        fashion_mnist.load_data(path=partial)
    message = str(error.value)
    for expected in (
        f"path= {partial}: missing t10k-labels-idx1-ubyte[.gz]",
        "$FASTCONV_DATA: not set",
        f"./data {Path.cwd() / 'data' / 'fashion-mnist'}: does not exist",
        f"cache {isolated / 'cache' / 'fastconv' / 'fashion-mnist'}: does not exist",
        "download: disabled",
    ):
        assert expected in message


def test_path_of_wrong_type_rejected(isolated):
    with pytest.raises(TypeError, match="path must be"):
        mnist.load_data(path=42)


# --- download --------------------------------------------------------------


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (URL path -> bytes); paths under /drop/ send half the body then hang up."""

    files = {}
    requests = []

    def do_GET(self):
        self.requests.append(self.path)
        body = self.files.get(self.path.replace("/drop/", "/good/"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/drop/"):
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(isolated, monkeypatch):
    """A local HTTP mirror: /good/ serves a synthetic MNIST, /bad/ a corrupted copy."""
    dataset = synthetic_dataset()
    files = {}
    for name, data in idx_file_contents(dataset).items():
        compressed = gzip.compress(data)
        files[f"/good/{name}.gz"] = compressed
        corrupted = bytearray(data)
        corrupted[-1] ^= 0xFF  # still a valid gzip stream, wrong content
        files[f"/bad/{name}.gz"] = gzip.compress(bytes(corrupted))
    handler = type("Handler", (MirrorHandler,), {"files": files, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
    thread.start()
    monkeypatch.setattr(mnist, "SHA256", sha256_table(dataset))
    monkeypatch.delenv("FASTCONV_NO_DOWNLOAD")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield base, dataset, handler.requests
    server.shutdown()
    server.server_close()


def mnist_cache():
    return Path(os.environ["XDG_CACHE_HOME"]) / "fastconv" / "mnist"


def test_download_lands_in_cache_and_loads(mirror, monkeypatch, capsys):
    base, dataset, requests = mirror
    monkeypatch.setenv("FASTCONV_MNIST_MIRRORS", f"{base}/good/")
    assert_same_dataset(mnist.load_data(), dataset)
    assert sorted(os.listdir(mnist_cache())) == sorted(f"{name}.gz" for name in IDX_NAMES)
    assert f"Downloading {base}/good/train-images-idx3-ubyte.gz" in capsys.readouterr().err

    requests.clear()
    assert_same_dataset(mnist.load_data(), dataset)
    assert requests == []  # the second load comes from the cache


def test_download_progress_bar_on_terminal(mirror, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    base, _, _ = mirror
    monkeypatch.setenv("FASTCONV_MNIST_MIRRORS", f"{base}/good/")
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    mnist.load_data()
    lines = terminal.getvalue().split("\n")
    assert len(lines) == len(IDX_NAMES) + 1 and lines[-1] == ""
    assert lines[0].startswith(f"\r{base}/good/train-images-idx3-ubyte.gz [")
    assert lines[0].endswith("100% of 0.0 MB")


def test_download_fetches_only_files_missing_from_cache(mirror, monkeypatch):
    base, dataset, requests = mirror
    monkeypatch.setattr(mnist, "MIRRORS", [f"{base}/good/"])
    cache = mnist_cache()
    cache.mkdir(parents=True)
    contents = idx_file_contents(dataset)
    for name in IDX_NAMES[:2]:
        write_file(cache / name, contents[name])
    assert_same_dataset(mnist.load_data(), dataset)
    assert sorted(requests) == sorted(f"/good/{name}.gz" for name in IDX_NAMES[2:])


def test_corrupt_download_rejected_and_not_cached(mirror, monkeypatch):
    base, _, _ = mirror
    monkeypatch.setenv("FASTCONV_MNIST_MIRRORS", f"{base}/bad/")
    with pytest.raises(FileNotFoundError, match="sha256 of the decompressed content is .*discarded"):
        mnist.load_data()
    assert os.listdir(mnist_cache()) == []


def test_corrupt_mirror_falls_back_to_next(mirror, monkeypatch):
    base, dataset, _ = mirror
    monkeypatch.setenv("FASTCONV_MNIST_MIRRORS", f"{base}/bad/, {base}/missing/,{base}/good/")
    assert_same_dataset(mnist.load_data(), dataset)


def test_dropped_connection_leaves_no_partial_file(mirror, monkeypatch):
    base, _, _ = mirror
    monkeypatch.setenv("FASTCONV_MNIST_MIRRORS", f"{base}/drop/")
    with pytest.raises(FileNotFoundError, match="connection closed after"):
        mnist.load_data()
    assert os.listdir(mnist_cache()) == []


def test_interrupted_download_leaves_no_partial_file(mirror, monkeypatch):
    base, _, _ = mirror
    monkeypatch.setenv("FASTCONV_MNIST_MIRRORS", f"{base}/good/")

    def interrupted_copy(url, out, *limits):
        out.write(b"\x1f\x8b partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(_download, "_copy_response", interrupted_copy)
    with pytest.raises(KeyboardInterrupt):
        mnist.load_data()
    assert os.listdir(mnist_cache()) == []


def test_unreachable_mirrors_fail_fast_listing_places(mirror, monkeypatch):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    dead = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("FASTCONV_MNIST_MIRRORS", f"{dead}/a/,{dead}/b/")
    waits = []  # failing fast: no waiting and retrying against a refused connection
    monkeypatch.setattr(time, "sleep", waits.append)
    with pytest.raises(FileNotFoundError) as error:
        mnist.load_data()
    assert waits == []
    message = str(error.value)
    assert "$FASTCONV_DATA: not set" in message
    assert str(Path.cwd() / "data" / "mnist") in message
    assert str(mnist_cache()) in message
    assert f"{dead}/a/train-images-idx3-ubyte.gz" in message
    assert f"{dead}/b/train-images-idx3-ubyte.gz" in message
    assert os.listdir(mnist_cache()) == []


def test_download_disabled_by_argument(mirror, monkeypatch):
    base, _, requests = mirror
    monkeypatch.setenv("FASTCONV_MNIST_MIRRORS", f"{base}/good/")
    with pytest.raises(FileNotFoundError, match="download: disabled"):
        mnist.load_data(download=False)
    assert requests == []


# --- only the test split; the checkout's vendored copy; what to do when nothing is found ---


def test_test_split_alone_needs_only_the_test_files(isolated):
    dataset = synthetic_dataset()
    directory = write_idx_dataset(isolated / "d", dataset)
    for name in IDX_NAMES[:2]:
        os.unlink(directory / f"{name}.gz")
    x_test, y_test = mnist.load_test_data(path=directory)
    np.testing.assert_array_equal(x_test, dataset[1][0])
    np.testing.assert_array_equal(y_test, dataset[1][1])
    with pytest.raises(FileNotFoundError, match="missing train-images-idx3-ubyte"):
        mnist.load_data(path=directory)


def test_test_split_alone_from_npz(isolated):
    dataset = synthetic_dataset()
    path = isolated / "m.npz"
    save_npz(path, dataset)
    x_test, y_test = mnist.load_test_data(path=path)
    np.testing.assert_array_equal(x_test, dataset[1][0])


def test_checkout_copy_is_found_and_cached_for_when_the_checkout_is_gone(isolated, monkeypatch):
    dataset = synthetic_dataset()
    checkout_data = isolated / "checkout" / "data"
    write_idx_dataset(checkout_data / "mnist", dataset)
    monkeypatch.setattr(mnist, "SHA256", sha256_table(dataset))
    monkeypatch.setattr(_loader, "checkout_data_roots", lambda: [checkout_data])
    assert_same_dataset(mnist.load_data(), dataset)
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "fastconv" / "mnist"
    assert sorted(os.listdir(cache)) == sorted(f"{name}.gz" for name in IDX_NAMES)
    import shutil
    shutil.rmtree(isolated / "checkout")
    assert_same_dataset(mnist.load_data(), dataset)


def test_a_modified_checkout_copy_is_used_but_not_cached(isolated, monkeypatch):
    dataset = synthetic_dataset()
    checkout_data = isolated / "checkout" / "data"
    write_idx_dataset(checkout_data / "mnist", dataset)
    monkeypatch.setattr(_loader, "checkout_data_roots", lambda: [checkout_data])
    assert_same_dataset(mnist.load_data(), dataset)  # the real MNIST's checksums do not match it
    assert not (Path(os.environ["XDG_CACHE_HOME"]) / "fastconv" / "mnist").exists()


def test_checkout_roots_come_from_the_build_record_and_the_source_tree(tmp_path, monkeypatch):
    import types
    recorded = tmp_path / "recorded-data"
    recorded.mkdir()
    record = types.ModuleType("fastconv.datasets._checkout")
    record.CHECKOUT_DATA = str(recorded)
    monkeypatch.setitem(sys.modules, "fastconv.datasets._checkout", record)
    roots = _loader.checkout_data_roots()
    assert roots[0] == recorded
    source_tree = Path(_loader.__file__).resolve().parents[2]
    if (source_tree / "pyproject.toml").is_file():  # an editable install or a checkout
        assert roots[1:] == [source_tree / "data"]


def test_not_found_says_exactly_what_to_do(isolated):
    with pytest.raises(FileNotFoundError) as error:
        mnist.load_test_data()
    message = str(error.value)
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "fastconv" / "mnist"
    assert f"into {cache}" in message
    assert "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in message and "train-images" not in message
    assert "export FASTCONV_DATA=/path/to/fastconv/data" in message
    assert "unset FASTCONV_NO_DOWNLOAD" in message
