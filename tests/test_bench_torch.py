"""fastconv bench's PyTorch process (fastconv/bench_torch.py): never fastconv in it, errors reported."""
import importlib.util
import sys

import pytest

from fastconv import bench_torch

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.mark.skipif(HAS_TORCH, reason="checks the error of a Python without PyTorch")
def test_a_python_without_torch_is_a_clear_error():
    with pytest.raises(RuntimeError, match="torch"):
        bench_torch.TorchProcess(sys.executable, 1)


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
def test_the_child_times_rows_without_importing_fastconv():
    process = bench_torch.TorchProcess(sys.executable, 1)
    try:
        assert process.threads == 1
        row = process.timer(bench_torch.gemm_spec(8, 8, 8))
        assert row.seconds_per_call(0.001) > 0
        with pytest.raises(RuntimeError, match="unknown row kind"):
            process.timer({"kind": "nothing"})
        process.request(op="build", row={"kind": "gemm", "m": 1, "k": 1, "n": 1})  # still answering
    finally:
        process.close()


def test_the_child_environment_drops_only_fastconvs_own_settings(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what importing fastconv sets
    monkeypatch.setenv("GOMP_SPINCOUNT", "12345")     # a user's own value
    seen = {}

    class FakePopen:
        def __init__(self, args, env, **kwargs):
            seen.update(env)
            raise OSError("not started")

    monkeypatch.setattr(bench_torch.subprocess, "Popen", FakePopen)
    with pytest.raises(OSError):
        bench_torch.TorchProcess("python3", 1)
    assert "OMP_WAIT_POLICY" not in seen and seen["GOMP_SPINCOUNT"] == "12345"
