"""fastconv.gemm against numpy.matmul on the same arrays, at 1 and 2 threads.

Run: python -m pytest benchmarks/bench_gemm.py --benchmark-group-by=group --benchmark-columns=min,median,rounds
Each group holds the fastconv and numpy runs of one shape and thread count side by side; NumPy's BLAS
is held to the same thread count through threadpoolctl. The shapes are fastconv.bench.GEMM_SIZES:
squares 64..2048, the Dense-layer and im2col shapes, and the conv backward products (/ta, /tb).
For a one-screen table with % of the FMA peak: python -m fastconv.bench gemm.
"""
import numpy as np
import pytest

import fastconv
from fastconv import bench

from conftest import record_rate

threadpoolctl = pytest.importorskip("threadpoolctl")

CASES = [bench.gemm_case(size) for size in bench.GEMM_SIZES]


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}thr")
def gemm_threads(request):
    """fastconv and NumPy's BLAS both on this many threads."""
    previous = fastconv.get_num_threads()
    fastconv.set_num_threads(request.param)
    with threadpoolctl.threadpool_limits(limits=request.param, user_api="blas"):
        yield request.param
    fastconv.set_num_threads(previous)


@pytest.mark.parametrize("impl", ["fastconv", "numpy"])
@pytest.mark.parametrize("case", CASES, ids=[label for label, _ in CASES])
def test_gemm(benchmark, gemm_threads, case, impl):
    label, (m, k, n, trans_a, trans_b) = case
    a, b, out = bench.gemm_operands(m, k, n, trans_a, trans_b)
    benchmark.group = f"gemm {label} {gemm_threads}thr"
    if impl == "fastconv":
        benchmark(fastconv.gemm, a, b, trans_a=trans_a, trans_b=trans_b, out=out)
    else:
        op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
        benchmark(np.matmul, op_a, op_b, out=out)
    record_rate(benchmark, "gflops", 2.0 * m * n * k)
