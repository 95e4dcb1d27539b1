"""Many Python threads calling the ops and predict on one model at once: results equal to the serial
ones bit for bit, no crash, no deadlock with OpenMP (every join has a timeout). set_num_threads is one
setting for the whole process, whichever thread calls it.

Each test runs for FASTCONV_CONCURRENCY_SECONDS (default 2) of wall time; raise it for a soak, e.g.
FASTCONV_CONCURRENCY_SECONDS=60 python -m pytest tests/test_concurrency.py.
"""
import multiprocessing
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastconv
from fastconv import keras

SECONDS = float(os.environ.get("FASTCONV_CONCURRENCY_SECONDS", "2"))
THREADS = 6
JOIN_TIMEOUT = SECONDS + 60


def run_threads(jobs, seconds=SECONDS, threads=THREADS):
    """Run the (callable, expected) jobs round-robin from `threads` threads for `seconds`, half of them
    switching the process's thread count between 1 and 2 before each call: results must not change.
    The caller restores the thread count (the `threads` fixture).

    Returns the number of calls made; fails on any exception, mismatch or thread still alive.
    """
    deadline = time.monotonic() + seconds
    errors, counts = [], [0] * threads
    start = threading.Barrier(threads)

    def worker(t):
        try:
            start.wait(timeout=30)
            i = t
            while time.monotonic() < deadline and not errors:
                if t % 2:  # calls already running keep the count they started with
                    fastconv.set_num_threads(1 + i // 2 % 2)
                call, expected = jobs[i % len(jobs)]
                got = call()
                for g, e in zip(got if isinstance(got, (tuple, list)) else (got,),
                                expected if isinstance(expected, (tuple, list)) else (expected,)):
                    if not np.array_equal(g, e, equal_nan=True):
                        raise AssertionError(f"thread {t}, job {i % len(jobs)}: result differs from the serial one")
                counts[t] += 1
                i += 1
        except BaseException as error:  # reported below
            errors.append(error)

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in pool), "a thread is still running: deadlock?"
    if errors:
        raise errors[0]
    assert all(count > 0 for count in counts), f"a thread made no call: {counts}"
    return sum(counts)


def op_jobs(rng):
    x = rng.standard_normal((4, 17, 19, 3)).astype(np.float32)
    x8 = rng.standard_normal((2, 12, 12, 8)).astype(np.float32)
    w3 = rng.standard_normal((3, 3, 3, 16)).astype(np.float32)
    w8 = rng.standard_normal((5, 3, 8, 24)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    a = rng.standard_normal((70, 300)).astype(np.float32)
    m = rng.standard_normal((300, 45)).astype(np.float32)
    dy8 = rng.standard_normal((2, 6, 12, 24)).astype(np.float32)
    calls = [
        lambda: fastconv.conv2d(x, w3, b, padding="same", activation="relu"),
        lambda: fastconv.conv2d(x8, w8, strides=(2, 1), padding="same", algorithm="im2col"),
        lambda: fastconv.conv2d_backward(dy8, x8, w8, strides=(2, 1), padding="same"),
        lambda: fastconv.gemm(a, m, alpha=0.5),
        lambda: fastconv.gemm(m, a, trans_a=True, trans_b=True),
        lambda: fastconv.maxpool2d(x, 3, 2, "same"),
        lambda: fastconv.maxpool2d_backward(fastconv.maxpool2d(x, 2), x, 2),
        lambda: fastconv.avgpool2d_backward(np.ones((4, 8, 9, 3), np.float32), x, 3, 2),
    ]
    return [(call, call()) for call in calls]


def test_ops_from_many_threads_match_serial(threads):
    calls = run_threads(op_jobs(np.random.default_rng(7)))
    assert calls >= THREADS


def small_cnn():
    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.AveragePooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_predict_on_one_model_from_many_threads_matches_serial(threads):
    model = small_cnn()
    rng = np.random.default_rng(3)
    batches = [rng.random((n, 28, 28, 1), dtype=np.float32) for n in (1, 7, 40)]
    jobs = [((lambda x=x: model.predict(x, batch_size=16, verbose=0)), model.predict(x, batch_size=16, verbose=0))
            for x in batches]
    jobs.append((lambda: model.predict_on_batch(batches[1]), model.predict_on_batch(batches[1])))
    run_threads(jobs)


class Helper:
    """A Python thread that runs the functions it is given, one at a time, and stays alive between them."""

    def __init__(self):
        self.requests, self.results = queue.Queue(), queue.Queue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while (function := self.requests.get()) is not None:
            self.results.put(function())

    def __call__(self, function):
        self.requests.put(function)
        return self.results.get(timeout=JOIN_TIMEOUT)

    def stop(self):
        self.requests.put(None)
        self.thread.join(timeout=JOIN_TIMEOUT)


def test_set_num_threads_in_one_thread_applies_to_every_thread(threads):
    threads(3)
    helper = Helper()
    try:
        assert helper(fastconv.get_num_threads) == 3  # a thread started later follows the setting
        helper(lambda: fastconv.set_num_threads(1))
        assert fastconv.get_num_threads() == 1  # the main thread follows the helper's call
        threads(2)
        assert helper(fastconv.get_num_threads) == 2  # and the helper the main thread's
    finally:
        helper.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_the_thread_count_a_worker_sets_is_the_one_the_main_threads_kernels_run():
    """What the kernels actually run, not only what get_num_threads says. In a fresh process started with
    OMP_NUM_THREADS=1, a large GEMM from the main thread starts no OpenMP worker after a helper thread set
    1, and one after the helper set 2 (libgomp keeps a team's threads, so /proc counts them after the
    call; the helper stays alive, so no thread ends while they are counted)."""
    if not fastconv.config()["openmp"]:
        pytest.skip("built without OpenMP")
    script = """if True:
        import os, queue, threading
        import numpy as np, fastconv
        requests, done = queue.Queue(), queue.Queue()
        def helper():
            while True:
                done.put(fastconv.set_num_threads(requests.get()))
        threading.Thread(target=helper, daemon=True).start()
        def set_in_helper(n):
            requests.put(n)
            done.get()
        def tasks():
            return len(os.listdir("/proc/self/task"))
        a = np.ones((512, 512), np.float32)
        set_in_helper(1)
        before = tasks()
        fastconv.gemm(a, a)
        one = tasks()
        set_in_helper(2)
        fastconv.gemm(a, a)
        print(one - before, tasks() - one)
    """
    env = {key: value for key, value in os.environ.items() if key != "OMP_THREAD_LIMIT"}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "1"]


def _child_convolves(queue):
    x = np.ones((2, 16, 16, 8), np.float32)
    w = np.ones((3, 3, 8, 32), np.float32)
    queue.put(float(fastconv.conv2d(x, w).sum()))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_forked_child_can_run_kernels_after_the_parent_did():
    """libgomp's thread pool does not survive fork; a child must still run parallel kernels, not hang."""
    fastconv.conv2d(np.ones((2, 16, 16, 8), np.float32), np.ones((3, 3, 8, 32), np.float32))  # start the pool
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_convolves, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in a kernel")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == 2 * 14 * 14 * 32 * 72
