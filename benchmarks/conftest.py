"""Shared set-up of the pytest-benchmark suites: fixed threads, seeded data, optional PyTorch."""
import numpy as np
import pytest

import fastconv


@pytest.fixture(params=[2], ids=lambda n: f"{n}thr")
def num_threads(request):
    previous = fastconv.get_num_threads()
    fastconv.set_num_threads(request.param)
    yield request.param
    fastconv.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def record_rate(benchmark, key, amount):
    """extra_info[key] = amount per second of the fastest round (in billions); nothing when the run has
    no timings (--benchmark-disable runs each case once, as a smoke test)."""
    if benchmark.stats is not None:
        benchmark.extra_info[key] = amount / benchmark.stats.stats.min / 1e9
