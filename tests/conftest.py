import numpy as np
import pytest

import fastconv
from fastconv import _C


@pytest.fixture(autouse=True)
def outside_the_source_tree(tmp_path_factory, monkeypatch):
    """Every test runs in an empty directory, so subprocesses import the installed fastconv (with its
    compiled extension), never the bare source folder of a checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("work"))


@pytest.fixture(autouse=True)
def global_dtype_policy_restored():
    """A test that sets a global dtype policy leaves it as it found it: unset, it follows set_floatx,
    which later tests rely on."""
    from fastconv.keras import dtype_policies
    saved = dtype_policies._global_policy
    yield
    dtype_policies._global_policy = saved


@pytest.fixture(params=fastconv.available_isas())
def isa(request):
    """Runs a test once on every instruction-set path this CPU supports."""
    previous = fastconv.get_isa()
    fastconv.set_isa(request.param)
    yield request.param
    fastconv.set_isa(previous)


# Cores whose caches change the GEMM blocking (dispatch.c), as (L2 bytes, L1 bytes, L1 ways, L2 ways):
# Zen 4's 1 MiB 8-way L2 and 32 KiB 8-way L1, Emerald Rapids' 2 MiB 16-way L2 and 48 KiB 12-way L1, and
# two AVX2-only ones, Zen 3's 512 KiB 8-way L2 and Skylake's 256 KiB 4-way (AVX2's B block at its
# narrowest, 256 columns).
CACHE_FITS = {"zen4-caches": (1 << 20, 32 << 10, 8, 8), "emerald-rapids-caches": (2 << 20, 48 << 10, 12, 16),
              "zen3-caches": (512 << 10, 32 << 10, 8, 8), "skylake-caches": (256 << 10, 32 << 10, 8, 4)}


@pytest.fixture(params=sorted(CACHE_FITS))
def cache_fit(request):
    """Runs a test with the GEMM blocking of each kind of cache, whatever this CPU has."""
    _C.fit_gemm_blocking(*CACHE_FITS[request.param])
    yield request.param
    _C.fit_gemm_blocking()


@pytest.fixture
def threads():
    """Lets a test change the thread count; restores it afterwards."""
    previous = fastconv.get_num_threads()
    yield fastconv.set_num_threads
    fastconv.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
