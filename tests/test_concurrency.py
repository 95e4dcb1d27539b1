"""Many Python threads calling the ops and predict on one model at once: results equal to the serial
ones bit for bit, no crash, no deadlock with OpenMP (every join has a timeout).

Each test runs for FASTCONV_CONCURRENCY_SECONDS (default 2) of wall time; raise it for a soak, e.g.
FASTCONV_CONCURRENCY_SECONDS=60 python -m pytest tests/test_concurrency.py.
"""
import multiprocessing
import os
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
    """Run the (callable, expected) jobs round-robin from `threads` threads for `seconds`.

    Returns the number of calls made; fails on any exception, mismatch or thread still alive.
    """
    deadline = time.monotonic() + seconds
    errors, counts = [], [0] * threads
    start = threading.Barrier(threads)

    def worker(t):
        try:
            # Half the threads use one OpenMP thread, the others the default: results must not change.
            if t % 2:
                fastconv.set_num_threads(1)
            start.wait(timeout=30)
            i = t
            while time.monotonic() < deadline and not errors:
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


def test_ops_from_many_threads_match_serial():
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


def test_predict_on_one_model_from_many_threads_matches_serial():
    model = small_cnn()
    rng = np.random.default_rng(3)
    batches = [rng.random((n, 28, 28, 1), dtype=np.float32) for n in (1, 7, 40)]
    jobs = [((lambda x=x: model.predict(x, batch_size=16, verbose=0)), model.predict(x, batch_size=16, verbose=0))
            for x in batches]
    jobs.append((lambda: model.predict_on_batch(batches[1]), model.predict_on_batch(batches[1])))
    run_threads(jobs)


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
