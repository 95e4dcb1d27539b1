"""CIFAR-10 and CIFAR-100 from small archives in the official binary format, found locally or served on 127.0.0.1."""

import gzip
import hashlib
import http.server
import io
import os
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from fastconv import keras
from fastconv.datasets import cifar10, cifar100

CIFAR10_DIRECTORY = "cifar-10-batches-bin"
CIFAR100_DIRECTORY = "cifar-100-binary"


def random_images(rng, count):
    return rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)


def binary_records(labels, images):
    """Records as in the official files: the label bytes, then the red, green and blue planes of 32x32 each.

    Written with explicit loops over channel, row and column so the layout is spelled out, not derived from
    the reader's own reshape.
    """
    records = bytearray()
    for label_bytes, image in zip(labels, images):
        records += bytes(int(value) for value in np.atleast_1d(label_bytes))
        for channel in range(3):
            for row in range(32):
                for column in range(32):
                    records.append(int(image[row, column, channel]))
    return bytes(records)


def cifar10_members(rng, counts=(3, 2, 1, 2, 3), test_count=4):
    """Member name -> (labels (N,), images (N, 32, 32, 3)) for a small CIFAR-10."""
    names = [f"data_batch_{number}.bin" for number in range(1, 6)] + ["test_batch.bin"]
    members = {}
    for name, count in zip(names, list(counts) + [test_count]):
        members[name] = (rng.integers(0, 10, size=count, dtype=np.uint8), random_images(rng, count))
    return members


def cifar100_members(rng, train_count=5, test_count=3):
    """Member name -> (labels (N, 2) coarse then fine, images) for a small CIFAR-100."""
    members = {}
    for name, count in (("train.bin", train_count), ("test.bin", test_count)):
        labels = np.stack([rng.integers(0, 20, size=count), rng.integers(0, 100, size=count)], axis=1)
        members[name] = (labels.astype(np.uint8), random_images(rng, count))
    return members


def tar_bytes(files, compress=True):
    """A tar (gzip-compressed by default) holding ``files``: archive path -> bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return gzip.compress(data) if compress else data


def cifar10_archive(members, compress=True):
    files = {f"{CIFAR10_DIRECTORY}/{name}": binary_records(*arrays) for name, arrays in members.items()}
    files[f"{CIFAR10_DIRECTORY}/batches.meta.txt"] = "\n".join(cifar10.CLASS_NAMES).encode() + b"\n"
    files[f"{CIFAR10_DIRECTORY}/readme.html"] = b"<html></html>\n"
    return tar_bytes(files, compress)


def cifar100_archive(members):
    files = {f"{CIFAR100_DIRECTORY}/{name}": binary_records(*arrays) for name, arrays in members.items()}
    files[f"{CIFAR100_DIRECTORY}/coarse_label_names.txt"] = b"aquatic_mammals\nfish\n"
    files[f"{CIFAR100_DIRECTORY}/fine_label_names.txt"] = b"apple\naquarium_fish\n"
    return tar_bytes(files)


def expected_split(members, names, label_column=0):
    labels = np.concatenate([np.asarray(members[name][0]).reshape(len(members[name][1]), -1) for name in names])
    images = np.concatenate([members[name][1] for name in names])
    return images, labels[:, label_column : label_column + 1]


def assert_cifar10(loaded, members):
    (x_train, y_train), (x_test, y_test) = loaded
    train_names = [f"data_batch_{number}.bin" for number in range(1, 6)]
    for (images, labels), names in (((x_train, y_train), train_names), ((x_test, y_test), ["test_batch.bin"])):
        expected_images, expected_labels = expected_split(members, names)
        assert images.dtype == np.uint8 and labels.dtype == np.uint8
        assert images.flags.c_contiguous
        assert labels.shape == (len(expected_labels), 1)
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data anywhere, downloads disabled, the cache inside tmp_path."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.setenv("FASTCONV_NO_DOWNLOAD", "1")
    monkeypatch.setenv("FASTCONV_DOWNLOAD_TIMEOUT", "2")
    monkeypatch.delenv("FASTCONV_CIFAR10_MIRRORS", raising=False)
    monkeypatch.delenv("FASTCONV_CIFAR100_MIRRORS", raising=False)
    return tmp_path


# --- the record layout --------------------------------------------------------------------------


def test_channel_planes_become_the_last_axis(isolated):
    # One record whose planes are constant: red 10, green 20, blue 30, and one marked pixel per plane.
    planes = np.zeros((3, 32, 32), dtype=np.uint8)
    planes[0], planes[1], planes[2] = 10, 20, 30
    planes[0, 0, 1] = 200  # red at row 0, column 1
    planes[2, 31, 0] = 250  # blue at row 31, column 0
    record = bytes([7]) + planes.tobytes()
    path = isolated / "data"
    write_cifar10_directory(path / CIFAR10_DIRECTORY, {name: record for name in all_cifar10_names()})
    (x_train, y_train), (x_test, y_test) = cifar10.load_data(path=path)
    assert x_train.shape == (5, 32, 32, 3) and y_train.shape == (5, 1) and x_test.shape == (1, 32, 32, 3)
    image = x_test[0]
    assert y_test[0, 0] == 7
    assert tuple(image[5, 5]) == (10, 20, 30)
    assert tuple(image[0, 1]) == (200, 20, 30)
    assert tuple(image[31, 0]) == (10, 20, 250)


def all_cifar10_names():
    return [f"data_batch_{number}.bin" for number in range(1, 6)] + ["test_batch.bin"]


def write_cifar10_directory(directory, records):
    directory.mkdir(parents=True)
    for name, data in records.items():
        (directory / name).write_bytes(data)


# --- found locally --------------------------------------------------------------------------------


def test_cifar10_archive_given_as_path(isolated, rng):
    members = cifar10_members(rng)
    archive = isolated / "cifar-10-binary.tar.gz"
    archive.write_bytes(cifar10_archive(members))
    assert_cifar10(cifar10.load_data(path=archive), members)


def test_cifar10_uncompressed_tar_in_directory(isolated, rng):
    members = cifar10_members(rng)
    directory = isolated / "somewhere"
    directory.mkdir()
    (directory / "cifar-10-binary.tar").write_bytes(cifar10_archive(members, compress=False))
    assert_cifar10(cifar10.load_data(path=directory), members)


def test_cifar10_extracted_directory(isolated, rng):
    members = cifar10_members(rng)
    records = {name: binary_records(*arrays) for name, arrays in members.items()}
    write_cifar10_directory(isolated / "data" / CIFAR10_DIRECTORY, records)
    assert_cifar10(cifar10.load_data(path=isolated / "data"), members)
    assert_cifar10(cifar10.load_data(path=isolated / "data" / CIFAR10_DIRECTORY), members)


def test_search_order_fastconv_data_then_dot_data_then_cache(isolated, rng, monkeypatch):
    first, second, third = (cifar10_members(np.random.default_rng(seed)) for seed in (1, 2, 3))
    data_root, dot_data, cache = isolated / "root", Path.cwd() / "data", isolated / "cache" / "fastconv"
    for root, members in ((data_root, first), (dot_data, second), (cache, third)):
        (root / "cifar10").mkdir(parents=True)
        (root / "cifar10" / "cifar-10-binary.tar.gz").write_bytes(cifar10_archive(members))
    monkeypatch.setenv("FASTCONV_DATA", str(data_root))
    assert_cifar10(keras.datasets.cifar10.load_data(), first)
    monkeypatch.delenv("FASTCONV_DATA")
    assert_cifar10(keras.datasets.cifar10.load_data(), second)
    (dot_data / "cifar10" / "cifar-10-binary.tar.gz").unlink()
    assert_cifar10(keras.datasets.cifar10.load_data(), third)


@pytest.mark.parametrize("label_mode, column", [("fine", 1), ("coarse", 0)])
def test_cifar100_label_modes(isolated, rng, label_mode, column):
    members = cifar100_members(rng)
    (isolated / "cache" / "fastconv" / "cifar100").mkdir(parents=True)
    (isolated / "cache" / "fastconv" / "cifar100" / "cifar-100-binary.tar.gz").write_bytes(cifar100_archive(members))
    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar100.load_data(label_mode=label_mode)
    for (images, labels), name in (((x_train, y_train), "train.bin"), ((x_test, y_test), "test.bin")):
        assert images.dtype == np.uint8 and labels.dtype == np.uint8 and labels.shape == (len(images), 1)
        np.testing.assert_array_equal(images, members[name][1])
        np.testing.assert_array_equal(labels[:, 0], members[name][0][:, column])


def test_cifar100_default_label_mode_is_fine(isolated, rng):
    members = cifar100_members(rng)
    archive = isolated / "c100.tar.gz"
    archive.write_bytes(cifar100_archive(members))
    _, (_, y_test) = cifar100.load_data(path=archive)
    np.testing.assert_array_equal(y_test[:, 0], members["test.bin"][0][:, 1])


def test_cifar100_rejects_unknown_label_mode(isolated):
    with pytest.raises(ValueError, match="label_mode"):
        cifar100.load_data(label_mode="medium")


def test_test_split_alone_from_an_archive_or_just_the_test_file(isolated, rng):
    members = cifar10_members(rng)
    archive = isolated / "cifar-10-binary.tar.gz"
    archive.write_bytes(cifar10_archive(members))
    x_test, y_test = cifar10.load_test_data(path=archive)
    np.testing.assert_array_equal(x_test, members["test_batch.bin"][1])
    np.testing.assert_array_equal(y_test[:, 0], members["test_batch.bin"][0])
    # Extracted, only test_batch.bin is needed (load_data would not find a complete set here).
    write_cifar10_directory(isolated / "only-test", {"test_batch.bin": binary_records(*members["test_batch.bin"])})
    x_test, y_test = cifar10.load_test_data(path=isolated / "only-test")
    np.testing.assert_array_equal(x_test, members["test_batch.bin"][1])
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        cifar10.load_data(path=isolated / "only-test")


def test_cifar100_test_split_alone(isolated, rng):
    members = cifar100_members(rng)
    archive = isolated / "c100.tar.gz"
    archive.write_bytes(cifar100_archive(members))
    x_test, y_test = cifar100.load_test_data("coarse", path=archive)
    np.testing.assert_array_equal(x_test, members["test.bin"][1])
    np.testing.assert_array_equal(y_test[:, 0], members["test.bin"][0][:, 0])
    with pytest.raises(ValueError, match="label_mode"):
        cifar100.load_test_data("medium", path=archive)


def test_not_found_lists_every_place(isolated, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA", str(isolated / "root"))
    with pytest.raises(FileNotFoundError) as raised:
        cifar10.load_data()
    message = str(raised.value)
    for place in ("$FASTCONV_DATA", "./data", "cache", "download: disabled", "cifar-10-binary.tar.gz"):
        assert place in message


# --- malformed data ---------------------------------------------------------------------------------


def test_truncated_member_named(isolated, rng):
    members = cifar10_members(rng)
    records = {name: binary_records(*arrays) for name, arrays in members.items()}
    records["data_batch_3.bin"] = records["data_batch_3.bin"][:-100]
    archive = isolated / "cut.tar.gz"
    archive.write_bytes(tar_bytes({f"{CIFAR10_DIRECTORY}/{name}": data for name, data in records.items()}))
    with pytest.raises(ValueError, match=r"data_batch_3\.bin.*not a whole number of 3073-byte records"):
        cifar10.load_data(path=archive)


def test_oversize_member_refused_before_allocating(isolated, rng, monkeypatch):
    members = cifar10_members(rng)
    records = {name: binary_records(*arrays) for name, arrays in members.items()}
    records["test_batch.bin"] = bytes(3073 * 10001)  # one record more than the official file holds
    write_cifar10_directory(isolated / "d", records)

    def refuse(*args, **kwargs):
        raise AssertionError("allocated before the sizes were checked")

    monkeypatch.setattr(np, "empty", refuse)
    with pytest.raises(ValueError, match=r"test_batch\.bin: 30733073 bytes is more than the 30730000"):
        cifar10.load_data(path=isolated / "d")


def test_archive_ending_inside_a_member_named(isolated, rng):
    members = cifar10_members(rng)
    whole = cifar10_archive(members, compress=False)
    archive = isolated / "cut.tar"
    archive.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut\.tar"):
        cifar10.load_data(path=archive)


def test_corrupt_gzip_named(isolated, rng):
    data = bytearray(cifar10_archive(cifar10_members(rng)))
    data[len(data) // 2] ^= 0xFF
    archive = isolated / "bad.tar.gz"
    archive.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad\.tar\.gz"):
        cifar10.load_data(path=archive)


def test_not_an_archive(isolated):
    path = isolated / "cifar-10-binary.tar.gz"
    path.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(ValueError, match="corrupt or not a tar archive"):
        cifar10.load_data(path=path)


def test_archive_missing_a_member(isolated, rng):
    members = cifar10_members(rng)
    del members["data_batch_4.bin"]
    archive = isolated / "partial.tar.gz"
    archive.write_bytes(cifar10_archive(members))
    with pytest.raises(ValueError, match=r"lacks cifar-10-batches-bin/data_batch_4\.bin"):
        cifar10.load_data(path=archive)


def test_label_out_of_range_named(isolated, rng):
    members = cifar10_members(rng)
    members["data_batch_2.bin"][0][0] = 10
    archive = isolated / "labels.tar.gz"
    archive.write_bytes(cifar10_archive(members))
    with pytest.raises(ValueError, match=r"data_batch_2\.bin: label labels must be 0 to 9, found 10"):
        cifar10.load_data(path=archive)


def test_cifar100_fine_label_out_of_range(isolated, rng):
    members = cifar100_members(rng)
    members["test.bin"][0][1, 1] = 100
    archive = isolated / "c100.tar.gz"
    archive.write_bytes(cifar100_archive(members))
    with pytest.raises(ValueError, match=r"test\.bin: fine labels must be 0 to 99, found 100"):
        cifar100.load_data(path=archive)


def test_member_that_is_a_link_refused(isolated, rng):
    members = cifar10_members(rng)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, arrays in members.items():
            info = tarfile.TarInfo(f"{CIFAR10_DIRECTORY}/{name}")
            if name == "test_batch.bin":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                archive.addfile(info)
            else:
                data = binary_records(*arrays)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    path = isolated / "link.tar"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"test_batch\.bin: is not a regular file"):
        cifar10.load_data(path=path)


def test_member_twice_in_the_archive_refused(isolated, rng):
    members = cifar10_members(rng)
    files = [(f"{CIFAR10_DIRECTORY}/{name}", binary_records(*arrays)) for name, arrays in members.items()]
    files.append((f"{CIFAR10_DIRECTORY}/data_batch_1.bin", files[-1][1]))  # a second data_batch_1.bin
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path = isolated / "twice.tar"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"data_batch_1\.bin: appears twice"):
        cifar10.load_data(path=path)


def test_extracted_file_of_wrong_size_named(isolated, rng):
    members = cifar10_members(rng)
    records = {name: binary_records(*arrays) for name, arrays in members.items()}
    records["test_batch.bin"] += b"\x00"
    write_cifar10_directory(isolated / "d" / CIFAR10_DIRECTORY, records)
    with pytest.raises(ValueError, match=r"test_batch\.bin: \d+ bytes is not a whole number of 3073-byte records"):
        cifar10.load_data(path=isolated / "d")


def test_path_of_wrong_type(isolated):
    with pytest.raises(TypeError, match="path"):
        cifar10.load_data(path=42)


# --- download ---------------------------------------------------------------------------------------


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    files = {}
    requests = []

    def do_GET(self):
        self.requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(isolated, monkeypatch, rng):
    """A local HTTP server: /good/ serves a small CIFAR-10 archive, /bad/ a copy with one byte changed."""
    members = cifar10_members(rng)
    good = cifar10_archive(members)
    bad = bytearray(good)
    bad[-3] ^= 0x01
    files = {"/good/cifar-10-binary.tar.gz": good, "/bad/cifar-10-binary.tar.gz": bytes(bad)}
    handler = type("Handler", (MirrorHandler,), {"files": files, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
    thread.start()
    monkeypatch.setattr(cifar10, "SHA256", hashlib.sha256(good).hexdigest())
    monkeypatch.delenv("FASTCONV_NO_DOWNLOAD")
    yield f"http://127.0.0.1:{server.server_address[1]}", members, handler.requests
    server.shutdown()
    server.server_close()
    thread.join()


def cifar10_cache():
    return Path(os.environ["XDG_CACHE_HOME"]) / "fastconv" / "cifar10"


def test_download_lands_in_cache_and_loads(mirror, monkeypatch, capsys):
    base, members, requests = mirror
    monkeypatch.setenv("FASTCONV_CIFAR10_MIRRORS", f"{base}/good/")
    assert_cifar10(cifar10.load_data(), members)
    assert requests == ["/good/cifar-10-binary.tar.gz"]
    assert sorted(path.name for path in cifar10_cache().iterdir()) == ["cifar-10-binary.tar.gz"]
    assert "Downloading" in capsys.readouterr().err
    # The cached archive is used from now on, without the network.
    assert_cifar10(cifar10.load_data(), members)
    assert requests == ["/good/cifar-10-binary.tar.gz"]


def test_mirrors_constant_is_the_default(mirror, monkeypatch):
    base, members, requests = mirror
    monkeypatch.setattr(cifar10, "MIRRORS", [f"{base}/good"])
    assert_cifar10(cifar10.load_data(), members)
    assert requests == ["/good/cifar-10-binary.tar.gz"]


def test_corrupt_download_rejected_and_leaves_nothing(mirror, monkeypatch):
    base, _, requests = mirror
    monkeypatch.setenv("FASTCONV_CIFAR10_MIRRORS", f"{base}/bad/")
    with pytest.raises(FileNotFoundError, match="sha256 of the file is .*discarded"):
        cifar10.load_data()
    assert requests == ["/bad/cifar-10-binary.tar.gz"]
    assert list(cifar10_cache().iterdir()) == []


def test_download_cut_off_beyond_the_archive_size(mirror, monkeypatch):
    base, _, _ = mirror
    monkeypatch.setenv("FASTCONV_CIFAR10_MIRRORS", f"{base}/good/")
    monkeypatch.setattr(cifar10, "ARCHIVE_BYTES", 1000)  # the served archive is tens of kilobytes
    with pytest.raises(FileNotFoundError, match=r"announces \d+ bytes, more than the 1000"):
        cifar10.load_data()
    assert list(cifar10_cache().iterdir()) == []


def test_corrupt_mirror_falls_back_to_the_next(mirror, monkeypatch):
    base, members, requests = mirror
    monkeypatch.setenv("FASTCONV_CIFAR10_MIRRORS", f"{base}/bad/,{base}/missing/,{base}/good/")
    assert_cifar10(cifar10.load_data(), members)
    assert requests == [f"/{where}/cifar-10-binary.tar.gz" for where in ("bad", "missing", "good")]
    assert sorted(path.name for path in cifar10_cache().iterdir()) == ["cifar-10-binary.tar.gz"]


def test_local_file_used_without_network(mirror, monkeypatch, rng):
    base, _, requests = mirror
    monkeypatch.setenv("FASTCONV_CIFAR10_MIRRORS", f"{base}/good/")
    local = cifar10_members(np.random.default_rng(99))
    (Path.cwd() / "data" / "cifar10").mkdir(parents=True)
    (Path.cwd() / "data" / "cifar10" / "cifar-10-binary.tar.gz").write_bytes(cifar10_archive(local))
    assert_cifar10(cifar10.load_data(), local)
    assert requests == []


def test_download_disabled_by_argument(mirror, monkeypatch):
    base, _, requests = mirror
    monkeypatch.setenv("FASTCONV_CIFAR10_MIRRORS", f"{base}/good/")
    with pytest.raises(FileNotFoundError, match="download: disabled"):
        cifar10.load_data(download=False)
    assert requests == []


def test_cifar100_download(isolated, monkeypatch, rng):
    members = cifar100_members(rng)
    archive = cifar100_archive(members)
    handler = type("Handler", (MirrorHandler,), {"files": {"/c/cifar-100-binary.tar.gz": archive}, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(cifar100, "SHA256", hashlib.sha256(archive).hexdigest())
        monkeypatch.delenv("FASTCONV_NO_DOWNLOAD")
        monkeypatch.setenv("FASTCONV_CIFAR100_MIRRORS", f"http://127.0.0.1:{server.server_address[1]}/c/")
        (x_train, y_train), _ = cifar100.load_data("coarse")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    np.testing.assert_array_equal(x_train, members["train.bin"][1])
    np.testing.assert_array_equal(y_train[:, 0], members["train.bin"][0][:, 0])
    assert handler.requests == ["/c/cifar-100-binary.tar.gz"]



# --- fastconv train --dataset cifar10 -------------------------------------------------------------


def learnable_cifar10(directory, rng, per_batch=100, test_count=100):
    """A CIFAR-10 archive whose class sets each image's mean colour: learnable in a few steps."""
    palette = rng.integers(30, 226, size=(10, 3))
    members = {}
    for name, count in zip(all_cifar10_names(), [per_batch] * 5 + [test_count]):
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        noise = rng.normal(0, 30, size=(count, 32, 32, 3))
        members[name] = (labels, np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8))
    (directory / "cifar10").mkdir(parents=True)
    (directory / "cifar10" / "cifar-10-binary.tar.gz").write_bytes(cifar10_archive(members))


def test_cli_trains_the_cifar_recipe(isolated, rng, monkeypatch, capsys):
    from fastconv import cli

    learnable_cifar10(isolated / "root", rng)
    monkeypatch.setenv("FASTCONV_DATA", str(isolated / "root"))
    saved = isolated / "cifar.fastconv"
    assert cli.main(["train", "--dataset", "cifar10", "--epochs", "1", "--seed", "3", "--save", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "model cifar (" in out and "(500 train / 100 test)" in out and "augment in the model" in out
    assert "airplane" in out and "truck" in out  # the confusion matrix names CIFAR-10's classes
    # Batch norm's moving averages lag behind after 8 steps, so the training accuracy is what shows learning.
    assert float(out.split(" - accuracy: ")[1].split()[0]) > 0.5
    assert keras.models.load_model(saved).input_shape == (None, 32, 32, 3)
    # evaluate reads the test split alone and names CIFAR-10's classes.
    assert cli.main(["evaluate", str(saved), "--dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy on cifar10: " in out and "automobile" in out


def test_cli_refuses_augment_flags_for_a_model_with_augmentation_layers(isolated, capsys):
    from fastconv import cli

    for flag in ("--augment", "--no-augment"):
        assert cli.main(["train", "--dataset", "cifar10", flag]) == cli.EXIT_ERROR
        assert "model cifar varies its training images itself" in capsys.readouterr().err


def test_cli_refuses_a_digit_model_for_cifar10(isolated, rng, monkeypatch, capsys):
    from fastconv import cli

    learnable_cifar10(isolated / "root", rng, per_batch=2, test_count=2)
    monkeypatch.setenv("FASTCONV_DATA", str(isolated / "root"))
    assert cli.main(["train", "--dataset", "cifar10", "--model", "seed", "--epochs", "1"]) == cli.EXIT_ERROR
    assert "model seed takes 28x28x1 images, dataset cifar10 has 32x32x3; choose --model cifar" in capsys.readouterr().err
