"""Processes made by fork, forkserver and spawn run kernels after the parent ran parallel ones.

GNU libgomp's worker threads do not survive fork(): before the fix, a child's first parallel region
waited forever for them (issue 25). The parent here always runs kernels large enough to start OpenMP
threads first (checked: more threads in /proc/self/task), and every wait has a timeout, so a hang
fails the test instead of blocking the run.
"""
import multiprocessing
import os

import numpy as np
import pytest

import fastconv
from fastconv import keras

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")

TIMEOUT = 60  # seconds for any child's work; the kernels take milliseconds
A = np.ones((512, 512), np.float32)  # 512^3: 268 MFLOP, far above the 2 MFLOP a second thread needs
X = np.ones((8, 32, 32, 8), np.float32)
W = np.ones((3, 3, 8, 32), np.float32)  # 8 x 30 x 30 x 32 x 72 x 2 = 33 MFLOP


def os_threads():
    return len(os.listdir("/proc/self/task"))


@pytest.fixture
def parallel_parent():
    """The parent at 2 OpenMP threads, its thread pool started by kernels that use it; restored after."""
    previous = fastconv.get_num_threads()
    fastconv.set_num_threads(2)
    before = os_threads()
    fastconv.gemm(A, A)
    fastconv.conv2d(X, W)
    assert os_threads() > before or before > 1, "the parent's kernels started no thread"
    yield
    fastconv.set_num_threads(previous)


def gemm_corner(_):
    return float(fastconv.gemm(A, A)[0, 0])


def child_report(set_threads):
    """What a child sees: its default thread count, then (after set_num_threads when asked) whether its
    kernels are right and started OpenMP threads of its own."""
    default = fastconv.get_num_threads()
    if set_threads:
        fastconv.set_num_threads(set_threads)
    before = os_threads()
    corner = float(fastconv.gemm(A, A)[0, 0])
    conv = float(fastconv.conv2d(X, W)[0, 0, 0, 0])
    return default, fastconv.get_num_threads(), corner, conv, os_threads() - before


def run_pool(method, func, args, processes=2, initializer=None, initargs=()):
    context = multiprocessing.get_context(method)
    with context.Pool(processes, initializer=initializer, initargs=initargs) as pool:
        try:
            return pool.map_async(func, args).get(timeout=TIMEOUT)
        except multiprocessing.TimeoutError:
            pytest.fail(f"{method} children hung in a kernel after the parent ran parallel ones")


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_fork_pool_after_parallel_gemm(parallel_parent):
    """The issue's example: TimeoutError before the fix."""
    assert run_pool("fork", gemm_corner, range(4)) == [512.0] * 4


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
@pytest.mark.parametrize("set_threads", [None, 2])
def test_forked_child_is_single_threaded_until_it_sets_its_own_count(parallel_parent, set_threads):
    """A forked child starts at one thread (N workers times every core would oversubscribe); once it
    sets its count it runs parallel kernels on threads of its own (the parent's pool was stopped
    before the fork, so the child's is new)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=lambda: queue.put(child_report(set_threads)))
    child.start()
    child.join(timeout=TIMEOUT)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in a kernel")
    assert child.exitcode == 0
    default, threads, corner, conv, new_threads = queue.get(timeout=5)
    assert default == 1
    assert corner == 512.0 and conv == 72.0
    if set_threads:
        assert threads == 2 and new_threads >= 1, "the child's parallel kernels started no thread"
    else:
        assert threads == 1
    # the parent goes on with its own threads
    assert fastconv.get_num_threads() == 2 and float(fastconv.gemm(A, A)[0, 0]) == 512.0


@pytest.mark.parametrize("method", [m for m in ("fork", "forkserver", "spawn")
                                    if m in multiprocessing.get_all_start_methods()])
def test_pool_children_run_parallel_kernels(parallel_parent, method):
    """Each start method, the children at 2 threads: right results, and threads started in them."""
    reports = run_pool(method, child_report, [2, 2, 2, 2])
    for default, threads, corner, conv, new_threads in reports:
        assert threads == 2 and corner == 512.0 and conv == 72.0
    assert any(new_threads >= 1 for *_, new_threads in reports)


def augmented_batch(seed):
    """A DataLoader-style worker: makes a batch with kernels of its own (a blur large enough for threads)."""
    rng = np.random.default_rng(seed)
    x = rng.random((32, 16, 16, 1), dtype=np.float32)
    blurred = fastconv.conv2d(np.repeat(x, 8, axis=3), np.full((3, 3, 8, 1), 1 / 72, np.float32), padding="same")
    return blurred, rng.integers(0, 10, 32)


def set_worker_threads(n):
    fastconv.set_num_threads(n)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
@pytest.mark.parametrize("worker_threads", [None, 2])
def test_dataloader_style_pool_feeds_fit(parallel_parent, worker_threads):
    """A forked Pool makes batches while the parent trains on them with fit, as a DataLoader does."""
    model = keras.Sequential([
        keras.Input(shape=(16, 16, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = augmented_batch(0)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # the parent's training kernels first
    context = multiprocessing.get_context("fork")
    initializer, initargs = (set_worker_threads, (worker_threads,)) if worker_threads else (None, ())
    losses = []
    with context.Pool(2, initializer=initializer, initargs=initargs) as pool:
        batches = pool.imap(augmented_batch, range(1, 7))
        for _ in range(6):
            try:
                xb, yb = batches.next(timeout=TIMEOUT)
            except multiprocessing.TimeoutError:
                pytest.fail("a data worker hung in a kernel")
            history = model.fit(xb, yb, batch_size=16, epochs=1, verbose=0)
            losses.append(history.history["loss"][-1])
    assert len(losses) == 6 and np.isfinite(losses).all()
