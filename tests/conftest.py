import numpy as np
import pytest

import fastconv


@pytest.fixture(autouse=True)
def outside_the_source_tree(tmp_path_factory, monkeypatch):
    """Every test runs in an empty directory, so subprocesses import the installed fastconv (with its
    compiled extension), never the bare source folder of a checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("work"))


@pytest.fixture(params=fastconv.available_isas())
def isa(request):
    """Runs a test once on every instruction-set path this CPU supports."""
    previous = fastconv.get_isa()
    fastconv.set_isa(request.param)
    yield request.param
    fastconv.set_isa(previous)


@pytest.fixture
def threads():
    """Lets a test change the thread count; restores it afterwards."""
    previous = fastconv.get_num_threads()
    yield fastconv.set_num_threads
    fastconv.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
