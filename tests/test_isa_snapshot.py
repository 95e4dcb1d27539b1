"""set_isa from one thread while others run kernels (issue 25, item 6): each call takes the
instruction set once, when it starts, and sizes and runs everything with it. Before, a call could size
its buffers for one set's kernels (register tiles, vector blocks) and run another's over them."""
import os
import threading
import time

import numpy as np
import pytest

import fastconv

SECONDS = float(os.environ.get("FASTCONV_CONCURRENCY_SECONDS", "2"))
ISAS = fastconv.available_isas()


def jobs():
    rng = np.random.default_rng(9)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x1, x8, x16 = f32(4, 20, 20, 1), f32(4, 14, 14, 8), f32(2, 12, 12, 16)
    w1, w8, w16 = f32(3, 3, 1, 24), f32(3, 3, 8, 40), f32(3, 3, 16, 3)
    a, b = f32(90, 70), f32(70, 130)
    return [
        lambda: fastconv.conv2d(x1, w1, padding="same"),                       # direct: vector blocks
        lambda: fastconv.conv2d(x8, w8, padding="same"),                       # implicit GEMM: tiles, bands
        lambda: fastconv.conv2d(x8, w8, strides=2, algorithm="im2col"),        # im2col blocks of whole tiles
        lambda: fastconv.conv2d(x16, w16, padding="same"),                     # few outputs
        lambda: fastconv.conv2d_backward(np.ones((4, 14, 14, 40), np.float32), x8, w8, padding="same"),
        lambda: fastconv.conv2d_backward(np.ones((4, 20, 20, 24), np.float32), x1, w1, padding="same",
                                         algorithm="direct"),
        lambda: fastconv.gemm(a, b, bias=b[0]),
        lambda: fastconv.maxpool2d(x8, 2),
        lambda: fastconv.batch_norm(x8)[0],
    ]


def same(got, want):
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    return all(np.array_equal(g, w, equal_nan=True) for g, w in zip(got, want))


@pytest.mark.skipif(len(ISAS) < 2, reason="one instruction set on this CPU")
def test_set_isa_between_and_during_calls_never_mixes_kernels():
    calls = jobs()
    previous = fastconv.get_isa()
    expected = []
    try:
        for isa in ISAS:
            fastconv.set_isa(isa)
            expected.append([call() for call in calls])
    finally:
        fastconv.set_isa(previous)
    deadline = time.monotonic() + SECONDS
    errors, counts, flips = [], [0] * 4, [0]

    def worker(t):
        try:
            i = t
            while time.monotonic() < deadline and not errors:
                j = i % len(calls)
                got = calls[j]()
                if not any(same(got, per_isa[j]) for per_isa in expected):
                    raise AssertionError(f"job {j}: the result matches no instruction set's")
                counts[t] += 1
                i += 1
        except BaseException as error:
            errors.append(error)

    def flipper():
        try:
            while time.monotonic() < deadline and not errors:
                fastconv.set_isa(ISAS[flips[0] % len(ISAS)])
                flips[0] += 1
                time.sleep(0.0002)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(4)]
    threads.append(threading.Thread(target=flipper, daemon=True))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=SECONDS + 60)
    finally:
        fastconv.set_isa(previous)
    assert not any(thread.is_alive() for thread in threads), "a thread is still running: deadlock?"
    if errors:
        raise errors[0]
    assert all(counts) and flips[0] > 10


def test_set_isa_then_get_isa_from_many_threads():
    """The process-wide choice is made once and a set_isa is never overwritten by it."""
    previous = fastconv.get_isa()
    seen = []
    try:
        fastconv.set_isa(ISAS[-1])
        workers = [threading.Thread(target=lambda: seen.append(fastconv.get_isa())) for _ in range(8)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(timeout=30)
        assert seen == [ISAS[-1]] * 8
    finally:
        fastconv.set_isa(previous)
