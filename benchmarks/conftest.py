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

