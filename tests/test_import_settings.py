"""What `import fastconv` sets in the process, and that it leaves alone what the user set (README,
"Environment variables"): OpenMP's wait policy and spin count, and glibc's malloc thresholds."""
import json
import os
import platform
import subprocess
import sys

import pytest

REPORT = ("import json, os, fastconv; print(json.dumps({'policy': os.environ.get('OMP_WAIT_POLICY'), "
          "'spin': os.environ.get('GOMP_SPINCOUNT'), 'malloc': fastconv.config()['keeps_freed_memory']}))")
SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "FASTCONV_KEEP_FREED_MEMORY", "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def imported_with(**settings):
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS}
    env.update(settings)
    out = subprocess.run([sys.executable, "-c", REPORT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


GLIBC_MALLOC = platform.libc_ver()[0] == "glibc" and "libasan" not in os.environ.get("LD_PRELOAD", "")


def test_defaults_when_the_user_set_nothing():
    assert imported_with() == {"policy": "PASSIVE", "spin": "3000", "malloc": GLIBC_MALLOC}


@pytest.mark.parametrize("policy", ["active", "PASSIVE"])
def test_a_wait_policy_the_user_chose_gets_no_spin_count_of_ours(policy):
    """A GOMP_SPINCOUNT set for them would cut OMP_WAIT_POLICY=active's spinning short."""
    assert imported_with(OMP_WAIT_POLICY=policy)["spin"] is None
    assert imported_with(OMP_WAIT_POLICY=policy)["policy"] == policy


def test_a_spin_count_the_user_chose_is_kept():
    assert imported_with(GOMP_SPINCOUNT="0") == {"policy": "PASSIVE", "spin": "0", "malloc": GLIBC_MALLOC}


@pytest.mark.parametrize("settings", [
    {"FASTCONV_KEEP_FREED_MEMORY": "0"},
    {"MALLOC_MMAP_THRESHOLD_": "131072"},
    {"MALLOC_TRIM_THRESHOLD_": "131072"},
    {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
])
def test_malloc_is_left_alone_when_the_user_set_its_thresholds_or_opted_out(settings):
    assert imported_with(**settings)["malloc"] is False
