"""Benchmarks that print tables: `python -m fastconv.bench [NAME] [options]`, also `fastconv bench`.

    (none) the whole suite in one table: gemm, conv2d, maxpool, training steps vs NumPy and PyTorch
    peak   FP32 FMA peak of one core and of N threads, for every instruction set this CPU runs
    gemm   fastconv.gemm against numpy.matmul over squares and the CNN shapes (Dense, im2col, backward)
    distributed  data-parallel training on N MPI ranks against one process, and against PyTorch DDP

A benchmark is a function registered with `@benchmark(name, help)`; its `options` callback adds its
argparse options. Timings are the best of several rounds; fastconv and the baseline are interleaved
round by round, so load from other processes hits both alike (gemm also reports the median over the
rounds of the two libraries' ratio in the same round). For timed suites with statistics see
benchmarks/ (pytest-benchmark).
"""
import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

import fastconv
from fastconv import _C

BENCHMARKS = {}


def cpu_name():
    """The CPU's model name with its family and model numbers (a VM may show only a vendor's brand)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def commit():
    """The git commit of the checkout fastconv runs from, '+' when its sources differ from it; None
    for an installed copy."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        changed = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "csrc", "fastconv", "setup.py"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+" if changed.stdout.strip() else "")


def stamp():
    """One line naming what was measured: fastconv's version and commit, the CPU, cores, load average."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"fastconv {fastconv.__version__} (commit {commit() or 'unknown'}), NumPy {np.__version__}; "
            f"{cpu_name()}, {os.cpu_count()} logical CPUs; load average {load:.2f} at the start")


def benchmark(name, help, options=None):
    """Register `run(args)` as the benchmark `name`; `options(parser)` adds its command-line options."""
    def register(run):
        BENCHMARKS[name] = (run, help, options)
        return run
    return register


_warned_blas_threads = False


def _warn_blas_threads_unlimited():
    """Say once that NumPy's BLAS keeps its own thread count: its 1-thread rows would use every core."""
    global _warned_blas_threads
    if not _warned_blas_threads:
        print("note: threadpoolctl is not installed, so NumPy's BLAS runs on all its threads in every row; "
              "pip install 'fastconv[bench]' for a fair comparison", file=sys.stderr)
        _warned_blas_threads = True


@contextlib.contextmanager
def threads(count):
    """Run fastconv and NumPy's BLAS with `count` threads (NumPy's only if threadpoolctl is installed)."""
    previous = fastconv.get_num_threads()
    fastconv.set_num_threads(count)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            _warn_blas_threads_unlimited()
            limits = contextlib.nullcontext()
        else:
            limits = threadpool_limits(limits=count, user_api="blas")
        with limits:
            yield
    finally:
        fastconv.set_num_threads(previous)


@contextlib.contextmanager
def isa(name):
    """Use the kernels of instruction set `name` (None: leave the choice alone)."""
    previous = fastconv.get_isa()
    if name is not None:
        fastconv.set_isa(name)
    try:
        yield
    finally:
        fastconv.set_isa(previous)


def seconds_per_call(fn, min_time=0.05, batch_time=1e-3):
    """Seconds per call of fn() in the fastest of its batches over about `min_time`: each batch is enough
    calls to last about `batch_time` (one call, when a call lasts longer).

    The fastest batch, not the mean of them all: on a shared machine another process takes a core for
    milliseconds at a time, and a mean over 50 ms read 6.3 to 16 ms for the same 2-thread 1024^3 product
    (any library's), where the fastest of its batches reads the product's own speed.
    """
    def batch(calls):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - start

    fn()
    calls = 1
    while (elapsed := batch(calls)) < batch_time:  # size a batch
        calls = max(calls * 2, int(calls * batch_time / max(elapsed, 1e-9)) + 1)
    best, total = elapsed / calls, elapsed
    while total < min_time:
        elapsed = batch(calls)
        best, total = min(best, elapsed / calls), total + elapsed
    return best


# OpenBLAS's threads spin for 2**28 TSC ticks after a call before they sleep: 0.117 s on a 2.3 GHz
# TSC (measured: 0.12 s of CPU time whatever the pause after it). A pause shorter than that left one
# of them spinning through the first ~20 ms of the next timing, on the core fastconv's second thread
# needed. 0.25 s covers TSCs down to 1.1 GHz.
SETTLE_SECONDS = 0.25


def interleaved_times(fns, rounds=5, min_time=0.05, settle=None):
    """Seconds per call of each function in each round, times[round][i]: the functions are timed in
    turn, in reverse order every other round, so that neither is always the one timed after the other.

    Waits `settle` seconds (default SETTLE_SECONDS) before each timing: OpenBLAS's threads keep
    spinning after a call and would otherwise take a core from the next library's threads.
    """
    settle = SETTLE_SECONDS if settle is None else settle
    times = []
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        row = [0.0] * len(fns)
        for i in order:
            time.sleep(settle)
            # a function timed elsewhere (the PyTorch process of bench_torch) times itself
            timer = getattr(fns[i], "seconds_per_call", None)
            row[i] = timer(min_time) if timer else seconds_per_call(fns[i], min_time)
        times.append(row)
    return times


def interleaved_best(fns, rounds=5, min_time=0.05, settle=None):
    """Best seconds per call of each function over `rounds` interleaved rounds (interleaved_times)."""
    return [min(column) for column in zip(*interleaved_times(fns, rounds, min_time, settle))]


def fma_peak_gflops(isa=None, threads=1, rounds=5, seconds=0.1):
    """Measured FP32 FMA peak in GFLOPS of `isa` (None: the active one) on `threads` threads.

    Runs the instruction set's FMA loop (independent chains, no memory traffic) and keeps the best
    of `rounds` runs of about `seconds` each. Raises ValueError if the CPU cannot run `isa`.
    """
    if isa is not None and isa not in fastconv.available_isas():
        raise ValueError(f"isa {isa!r} is not available; this CPU runs {', '.join(fastconv.available_isas())}")
    iters = 100_000
    while True:  # size one run to about `seconds`
        start = time.perf_counter()
        _C.fma_peak(isa, iters, threads)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4:
            iters = int(iters * seconds / elapsed)
            break
        iters *= 4
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        flops = _C.fma_peak(isa, iters, threads)
        best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


def print_table(header, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(cell).rjust(w) for cell, w in zip(line, widths)), flush=True)


def thread_counts(parser):
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="thread counts to run (default: 1 2)")


def isa_option(parser, default_help):
    parser.add_argument("--isa", choices=fastconv.ISAS, default=None, help=default_help)


def peak_options(parser):
    thread_counts(parser)
    isa_option(parser, "only this instruction set (default: every one the CPU runs)")


@benchmark("peak", "FP32 FMA peak (GFLOPS) per instruction set and thread count", peak_options)
def run_peak(args):
    names = [args.isa] if args.isa else fastconv.available_isas()
    print(stamp(), flush=True)
    rows = []
    for name in names:
        for count in args.threads:
            rows.append([name, count, f"{fma_peak_gflops(name, count):.1f}"])
    print_table(["isa", "threads", "peak GFLOPS"], rows)
    return 0


# Default sizes: squares, then the CNN shapes (M x K x N) the GEMM serves: Dense layers and keras-cnn's
# Dense backward (dw = x^T @ dy, /ta: trans_a; dx = dy @ w^T, /tb: trans_b), im2col forward, and the two
# conv backward products, dw = cols^T @ dy and dcols = dy @ w^T; then an MLP's Dense(512) on MNIST
# (batch 128, 784 inputs: forward, dw, dx), whose weight rows lie 2 KiB apart.
GEMM_SIZES = ("64", "128", "256", "512", "1024", "2048", "64x3136x128", "128x9216x128", "128x128x10",
              "9216x128x128/ta", "128x128x9216/tb", "100352x288x64", "6272x288x64", "288x6272x64/ta",
              "6272x64x288/tb", "128x784x512", "784x128x512/ta", "128x512x784/tb")


def gemm_case(spec):
    """A --sizes entry, N or MxKxN, optionally /ta, /tb or /tatb: returns (label, (m, k, n, trans_a, trans_b))."""
    dims_text, _, flags = spec.lower().partition("/")
    try:
        dims = [int(p) for p in dims_text.split("x")]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims *= 3
    if len(dims) != 3 or min(dims) < 1 or flags not in ("", "ta", "tb", "tatb"):
        raise argparse.ArgumentTypeError(f"expected N or MxKxN, optionally with /ta, /tb or /tatb; got {spec!r}")
    return spec, (*dims, "ta" in flags, "tb" in flags)


def gemm_operands(m, k, n, trans_a, trans_b, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    return a, b, np.empty((m, n), dtype=np.float32)


def gemm_gflops(m, k, n, trans_a, trans_b, count, rounds=5):
    """fastconv's and numpy.matmul's best GFLOPS for one product on `count` threads, and the median over
    the rounds of numpy's time over fastconv's in the same round: on a shared machine whose load comes
    and goes, a ratio of two bests can pair one library's lucky second with the other's busy one."""
    a, b, out = gemm_operands(m, k, n, trans_a, trans_b)
    op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
    with threads(count):
        times = interleaved_times([
            lambda: fastconv.gemm(a, b, trans_a=trans_a, trans_b=trans_b, out=out),
            lambda: np.matmul(op_a, op_b, out=out),
        ], rounds=rounds)
    flops = 2.0 * m * n * k
    best_fc, best_np = (min(column) for column in zip(*times))
    median_ratio = statistics.median(round_np / round_fc for round_fc, round_np in times)
    return flops / best_fc / 1e9, flops / best_np / 1e9, median_ratio


def gemm_options(parser):
    thread_counts(parser)
    isa_option(parser, "instruction set of the fastconv kernels (default: the best)")
    parser.add_argument("--sizes", type=gemm_case, nargs="+", metavar="SIZE",
                        default=[gemm_case(size) for size in GEMM_SIZES],
                        help="N (square) or MxKxN, with /ta or /tb for a transposed a or b (default: "
                             + " ".join(GEMM_SIZES) + ")")
    parser.add_argument("--rounds", type=int, default=9,
                        help="interleaved rounds: the best GFLOPS and the median ratio are kept (default: 9)")


@benchmark("gemm", "fastconv.gemm vs numpy.matmul: GFLOPS, %% of the FMA peak, ratio", gemm_options)
def run_gemm(args):
    with isa(args.isa):
        active = fastconv.get_isa()
        # The FMA units are per core: the peak of N threads is N times the one-core peak (measuring it
        # on N threads instead would charge other processes' load on a shared machine to the peak).
        core_peak = fma_peak_gflops(active, 1)
        peaks = {count: count * core_peak for count in args.threads}
        print(stamp())
        print(f"isa {active}, kernel {_C.gemm_kernel_name()}; FMA peak {core_peak:.0f} GFLOPS per core "
              "(% of peak: of threads x that)")
        rows = []
        for label, (m, k, n, trans_a, trans_b) in args.sizes:
            for count in args.threads:
                fc, ref, median_ratio = gemm_gflops(m, k, n, trans_a, trans_b, count, args.rounds)
                rows.append([label, count, f"{fc:.1f}", f"{100 * fc / peaks[count]:.0f}%", f"{ref:.1f}",
                             f"{fc / ref:.2f}", f"{median_ratio:.2f}"])
        print_table(["shape (MxKxN)", "threads", "fastconv GFLOPS", "% of peak", "numpy GFLOPS", "fastconv/numpy",
                     "median of rounds"], rows)
    return 0


def distributed_options(parser):
    from fastconv.bench_distributed import add_options
    add_options(parser)


@benchmark("distributed", "data-parallel training on MPI ranks: scaling efficiency, reduction time, vs PyTorch DDP",
           distributed_options)
def run_distributed(args):
    from fastconv.bench_distributed import run
    return run(args, print_table, stamp)


def run_suite(args):
    from fastconv.bench_suite import run_suite as suite
    return suite(args, interleaved_best, fma_peak_gflops, print_table)


def build_parser():
    parser = argparse.ArgumentParser(prog="fastconv bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and one round (the suite only)")
    parser.add_argument("--json", metavar="PATH", help="also write the suite's timings as JSON")
    parser.add_argument("--plot", metavar="PATH", help="also write a PNG of the suite's speed-ups")
    parser.add_argument("--torch-python", metavar="PYTHON",
                        help="the Python whose PyTorch the suite runs, in a process of its own (default: this "
                             "Python, when it has PyTorch)")
    parser.set_defaults(run=run_suite)
    commands = parser.add_subparsers(dest="name", metavar="BENCHMARK")
    for name, (run, help, options) in BENCHMARKS.items():
        sub = commands.add_parser(name, help=help)
        if options:
            options(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
