"""Injected faults: a process SIGKILLed in the middle of model.save / ModelCheckpoint, a full disk
(RLIMIT_FSIZE) while saving, a download killed mid-transfer. The previous file must stay intact and
loadable, the error must be clear, and no half-written file may appear under a final name.

(A server that hangs up mid-transfer is covered in tests/test_datasets.py.)
FASTCONV_FAULT_KILLS (default 6) sets how many random-time kills each kill test makes.
"""
import http.server
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastconv
from fastconv import keras

KILLS = int(os.environ.get("FASTCONV_FAULT_KILLS", "6"))
PACKAGE_ROOT = str(pathlib.Path(fastconv.__file__).resolve().parents[1])  # the fastconv this run imports

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and rlimits")


def child(code, *args, **kwargs):
    """Start `code` in a fresh python that imports the same fastconv as this test."""
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


# A model of about 8 MB: saving it takes long enough to be killed in the middle of a write.
BIG_MODEL = """
    import sys
    import numpy as np
    from fastconv import keras

    def big_model():
        model = keras.Sequential([keras.Input(shape=(1000,)), keras.layers.Dense(2000), keras.layers.Dense(10)])
        model.compile(optimizer="sgd", loss="mse")
        return model

    def fill(model, value):
        # Every weight of one save holds the same value: a file mixing two saves is detectable.
        model.set_weights([np.full(w.shape, value, np.float32) for w in model.get_weights()])
"""


def assert_one_complete_save(path):
    model = keras.models.load_model(path)
    values = {float(v) for w in model.get_weights() for v in np.unique(w)}
    assert len(values) == 1, f"{path} mixes several saves: {sorted(values)[:5]}"
    return values.pop()


def kill_at_random_times(code, path, seed):
    """Run `code` (which prints 'ready' after its first complete save, then saves in a loop) and
    SIGKILL it at random times; after each kill the file must be one complete, loadable save."""
    rng = random.Random(seed)
    seen = set()
    for _ in range(KILLS):
        process = child(code, path)
        try:
            assert process.stdout.readline().strip() == "ready", process.stderr.read()
            time.sleep(rng.uniform(0.0, 0.6))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            process.stdout.close()
            process.stderr.close()
        assert process.returncode == -signal.SIGKILL
        seen.add(assert_one_complete_save(path))
    return seen


def test_sigkill_during_model_save_keeps_a_complete_file(tmp_path):
    path = tmp_path / "big.fastconv"
    code = BIG_MODEL + """
    path = sys.argv[1]
    model = big_model()
    value = 1.0
    fill(model, value)
    model.save(path)
    print("ready", flush=True)
    while True:
        value += 1.0
        fill(model, value)
        model.save(path)
    """
    kill_at_random_times(code, path, seed=1)
    # Only the target and, at most, the temporary file of the killed save remain.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "big.fastconv"]
    assert all(name.startswith(".big.fastconv.") and name.endswith(".tmp") for name in leftovers), leftovers


def test_sigkill_during_model_checkpoint_keeps_a_complete_file(tmp_path):
    path = tmp_path / "checkpoint.fastconv"
    code = BIG_MODEL + """
    path = sys.argv[1]
    model = big_model()
    fill(model, 0.0)
    x, y = np.zeros((2, 1000), np.float32), np.zeros((2, 10), np.float32)
    model.save(path)
    print("ready", flush=True)

    class Constant(keras.callbacks.Callback):  # training with lr 0 on zeros keeps one value per epoch
        def on_epoch_end(self, epoch, logs=None):
            fill(self.model, float(epoch + 1))

    checkpoint = keras.callbacks.ModelCheckpoint(path)
    model.fit(x, y, epochs=100000, batch_size=2, verbose=0, callbacks=[Constant(), checkpoint])
    """
    kill_at_random_times(code, path, seed=2)


SAVE_WITH_FILE_SIZE_LIMIT = BIG_MODEL + """
    import resource, signal
    path, limit = sys.argv[1], int(sys.argv[2])
    model = big_model()
    fill(model, 1.0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        model.save(path) if sys.argv[3] == "save" else model.save_weights(path)
    except OSError as error:
        print(f"{type(error).__name__}: {error}")
        sys.exit(3)
    print("saved")
"""


@pytest.mark.parametrize("what", ["save", "save_weights"])
def test_full_disk_gives_a_clear_error_and_keeps_the_old_file(tmp_path, what):
    path = tmp_path / "model.fastconv"
    small = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2)])
    small.save(path)
    before = path.read_bytes()
    process = child(SAVE_WITH_FILE_SIZE_LIMIT, path, 1 << 20, what)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 3, (out, err)
    assert "File too large" in out and str(path) in out and "unchanged" in out, out
    assert path.read_bytes() == before
    keras.models.load_model(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.fastconv"]  # the partial temporary was removed


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Serves `body` slowly, so the client can be killed in the middle of the transfer."""
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            for start in range(0, len(self.body), 4096):
                self.wfile.write(self.body[start:start + 4096])
                self.wfile.flush()
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def test_sigkill_during_download_leaves_no_file_under_the_final_name(tmp_path):
    import gzip
    body = gzip.compress(os.urandom(200_000), compresslevel=0)
    handler = type("Handler", (SlowHandler,), {"body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
    thread.start()
    try:
        cache = tmp_path / "cache"
        cache.mkdir()
        code = """
        import sys
        from fastconv.datasets import _download
        _download.fetch("data", [sys.argv[1]], "0" * 64, sys.argv[2], 5.0, set())
        """
        process = child(code, f"http://127.0.0.1:{server.server_address[1]}/", cache)
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size > 0 for p in cache.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)  # wait until the transfer has started writing
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        assert process.returncode == -signal.SIGKILL
        names = [p.name for p in cache.iterdir()]
        assert "data" not in names and "data.gz" not in names
        assert all(name.startswith(".data.") and name.endswith(".part") for name in names), names
    finally:
        server.shutdown()
        server.server_close()
