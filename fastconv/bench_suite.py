"""`fastconv bench`: one table of fastconv against the NumPy reference and PyTorch (when installed).

Rows: gemm, conv2d forward and backward, maxpool forward and backward, and one training step of
the `seed`, `keras-cnn`, `mlp` and `cifar` models. Each row times every implementation on the same shapes,
in turn, round after round (best kept), so load from other processes hits them alike. PyTorch runs in a
process of its own (fastconv/bench_torch.py), with its own OpenMP runtime and settings, in NCHW.
"""
import importlib.util
import json
import platform
import sys

import numpy as np

import fastconv
from fastconv import bench_torch, bench_training, keras, reference

# (label, batch, height/width, cin, cout, padding) of the conv rows: the MNIST models' layers, and the
# one-channel output layer of keras.io's denoising autoencoder.
CONV_SHAPES = [
    ("n128 28x28 1->32 same", 128, 28, 1, 32, "same"),
    ("n128 28x28 32->64 same", 128, 28, 32, 64, "same"),
    ("n128 14x14 32->64 same", 128, 14, 32, 64, "same"),
    ("n128 14x14 64->64 same", 128, 14, 64, 64, "same"),
    ("n32 56x56 64->64 same", 32, 56, 64, 64, "same"),
    ("n128 28x28 1->32 valid", 128, 28, 1, 32, "valid"),
    ("n128 26x26 32->64 valid", 128, 26, 32, 64, "valid"),
    ("n128 28x28 32->1 same", 128, 28, 32, 1, "same"),
]
QUICK_CONV = {"n128 28x28 1->32 same", "n128 14x14 32->64 same"}
QUICK_TRAIN = {"seed", "keras-cnn", "mlp"}  # the cifar step takes seconds on the NumPy backend
GEMM_SHAPES = [(1024, 1024, 1024), (64, 3136, 128), (6272, 288, 64)]
TRAIN_STEPS = [("seed", 64), ("keras-cnn", 128), ("mlp", 128), ("cifar", 64)]
IMPLS = ("fastconv", "numpy", "torch")


def torch_process(python):
    """The PyTorch child process (bench_torch.TorchProcess) run by `python`; by default this Python when
    it has PyTorch, else None (no PyTorch column)."""
    from fastconv.bench_torch import TorchProcess
    if python is None:
        if importlib.util.find_spec("torch") is None:
            return None
        python = sys.executable
    return TorchProcess(python, fastconv.get_num_threads())


class Row:
    """One line of the table: the same work done by each implementation."""

    def __init__(self, op, shape, fns, flops=None, bytes_moved=None, path=None):
        self.op, self.shape, self.fns = op, shape, fns  # fns: {impl: callable or None}
        self.flops, self.bytes_moved = flops, bytes_moved
        self.path = path  # fastconv's algorithm for the row (conv rows), as conv2d_plan reports it
        self.seconds = {}


def gemm_rows(rng, torch):
    rows = []
    for m, k, n in GEMM_SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        fns = {"fastconv": lambda a=a, b=b, out=out: fastconv.gemm(a, b, out=out),
               "numpy": lambda a=a, b=b, out=out: np.matmul(a, b, out=out)}
        if torch:
            fns["torch"] = torch.timer(bench_torch.gemm_spec(m, k, n))
        rows.append(Row("gemm", f"{m}x{k}x{n}", fns, flops=2.0 * m * n * k))
    return rows


def conv_rows(rng, torch, quick):
    rows = []
    for label, n, hw, cin, cout, padding in CONV_SHAPES:
        if quick and label not in QUICK_CONV:
            continue
        x = rng.standard_normal((n, hw, hw, cin), dtype=np.float32)
        w = rng.standard_normal((3, 3, cin, cout), dtype=np.float32)
        b = rng.standard_normal(cout, dtype=np.float32)
        y = fastconv.conv2d(x, w, b, padding=padding)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        flops = 2.0 * y.size * 9 * cin
        forward = {"fastconv": lambda x=x, w=w, b=b, p=padding: fastconv.conv2d(x, w, b, padding=p, activation="relu"),
                   "numpy": lambda x=x, w=w, b=b, p=padding: reference.conv2d(x, w, b, padding=p, activation="relu")}
        backward = {"fastconv": lambda dy=dy, x=x, w=w, p=padding: fastconv.conv2d_backward(dy, x, w, padding=p),
                    "numpy": lambda dy=dy, x=x, w=w, p=padding: reference.conv2d_backward(dy, x, w, padding=p)}
        if torch:
            forward["torch"] = torch.timer(bench_torch.conv_spec("fwd", n, hw, cin, cout, padding))
            backward["torch"] = torch.timer(bench_torch.conv_spec("bwd", n, hw, cin, cout, padding))
        forward_plan = fastconv.ops.conv2d_plan(x.shape, w.shape, padding=padding)
        backward_plan = fastconv.ops.conv2d_plan(x.shape, w.shape, padding=padding, backward=True)
        rows.append(Row("conv2d fwd", label, forward, flops=flops, path=forward_plan["forward"]))
        rows.append(Row("conv2d bwd", label, backward, flops=2 * flops,
                        path=f"dx {backward_plan['dx']}, dw {backward_plan['dw']}"))
    return rows


def pool_rows(rng, torch):
    x = rng.standard_normal((128, 28, 28, 32), dtype=np.float32)
    dy = rng.standard_normal((128, 14, 14, 32), dtype=np.float32)
    argmax = fastconv.maxpool2d(x, 2, return_argmax=True)[1]
    forward = {"fastconv": lambda: fastconv.maxpool2d(x, 2), "numpy": lambda: reference.maxpool2d(x, 2)}
    # Training: the forward pass also records where each maximum is (PyTorch its indices), and the
    # backward pass routes the gradient from that record.
    training_forward = {"fastconv": lambda: fastconv.maxpool2d(x, 2, return_argmax=True),
                        "numpy": lambda: reference.maxpool2d(x, 2, return_argmax=True)}
    backward = {"fastconv": lambda: fastconv.maxpool2d_backward(dy, x, 2, argmax=argmax),
                "numpy": lambda: reference.maxpool2d_backward(dy, x, 2)}
    if torch:
        forward["torch"] = torch.timer(bench_torch.pool_spec("fwd"))
        training_forward["torch"] = torch.timer(bench_torch.pool_spec("fwd_argmax"))
        backward["torch"] = torch.timer(bench_torch.pool_spec("bwd"))
    label = "n128 28x28x32 2x2"
    return [Row("maxpool fwd", label, forward, bytes_moved=x.nbytes + dy.nbytes),
            Row("maxpool fwd+argmax", label, training_forward, bytes_moved=x.nbytes + dy.nbytes + argmax.nbytes),
            Row("maxpool bwd", label, backward, bytes_moved=x.nbytes + dy.nbytes + argmax.nbytes)]


def train_rows(rng, torch, quick=False):
    rows = []
    for name, batch in TRAIN_STEPS:
        if quick and name not in QUICK_TRAIN:
            continue
        shape = bench_training.image_shape(name)
        images = rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)
        labels = rng.integers(0, 10, size=batch)
        fns = {}
        for impl in ("fastconv", "numpy"):
            step = bench_training.make_trainer(impl, name)
            # bound now: a free `images` would be the last loop's (keras-cnn's batch of 128) by timing time
            fns[impl] = lambda step=step, images=images, labels=labels: step(images, labels)
        if torch:
            fns["torch"] = torch.timer(bench_torch.train_spec(name, batch, shape))
        rows.append(Row("train step", f"{name} batch {batch}", fns))
    return rows


def time_rows(rows, rounds, interleaved_best):
    for row in rows:
        impls = list(row.fns)
        row.seconds = dict(zip(impls, interleaved_best([row.fns[impl] for impl in impls], rounds=rounds)))


def table(rows, core_peak, threads):
    header = ["op", "shape", "fastconv ms", "numpy ms", "torch ms", "vs numpy", "vs torch", "GFLOPS", "% peak",
              "GB/s", "fastconv path"]
    lines = []
    for row in rows:
        fc = row.seconds["fastconv"]
        ms = {impl: f"{row.seconds[impl] * 1e3:.2f}" if impl in row.seconds else "-" for impl in IMPLS}
        ratio = {impl: f"{row.seconds[impl] / fc:.1f}x" if impl in row.seconds else "-" for impl in IMPLS}
        gflops = row.flops / fc / 1e9 if row.flops else None
        lines.append([row.op, row.shape, ms["fastconv"], ms["numpy"], ms["torch"], ratio["numpy"],
                      ratio["torch"], f"{gflops:.0f}" if gflops else "-",
                      f"{100 * gflops / (core_peak * threads):.0f}%" if gflops else "-",
                      f"{row.bytes_moved / fc / 1e9:.0f}" if row.bytes_moved else "-", row.path or "-"])
    return header, lines


def run_suite(args, interleaved_best, fma_peak_gflops, print_table):
    from fastconv.bench import stamp
    threads = fastconv.get_num_threads()
    torch = torch_process(args.torch_python)
    try:
        rng = np.random.default_rng(0)
        rows = (gemm_rows(rng, torch) + conv_rows(rng, torch, args.quick) + pool_rows(rng, torch)
                + train_rows(rng, torch, args.quick))
        core_peak = fma_peak_gflops(None, 1)
        header_line = stamp()
        torch_name = f"PyTorch {torch.version} in its own process" if torch else "not installed"
        print(header_line)
        print(f"isa {fastconv.get_isa()}, {threads} threads, FMA peak {core_peak:.0f} GFLOPS per core; "
              f"numpy = fastconv.reference (pure NumPy); torch = {torch_name}", flush=True)
        time_rows(rows, 1 if args.quick else 3, interleaved_best)
    finally:
        if torch:
            torch.close()
    header, lines = table(rows, core_peak, threads)
    print_table(header, lines)
    keras.backend.set_backend("fastconv")
    if args.json:
        results = {"stamp": header_line, "machine": platform.processor() or platform.machine(), "threads": threads,
                   "torch": torch.version if torch else None,
                   "isa": fastconv.get_isa(), "fma_peak_gflops_per_core": core_peak,
                   "rows": [{"op": r.op, "shape": r.shape, "seconds": r.seconds, "flops": r.flops,
                             "bytes": r.bytes_moved, "path": r.path} for r in rows]}
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"results written to {args.json}")
    if args.plot:
        plot_speedups(args.plot, rows, f"{header_line}\nisa {fastconv.get_isa()}, {threads} threads; "
                      f"PyTorch {torch.version if torch else 'not installed'}")
        print(f"plot written to {args.plot}")
    return 0


def plot_speedups(path, rows, subtitle=""):
    """A PNG of each row's speed-up: the other implementation's time over fastconv's, one bar per
    baseline, on a log scale (right of 1x: fastconv is faster)."""
    from fastconv.plotting import require_matplotlib
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    baselines = [(impl, name, color) for impl, name, color in
                 (("numpy", "NumPy reference", "tab:blue"), ("torch", "PyTorch", "tab:orange"))
                 if any(impl in r.seconds for r in rows)]
    height = 0.8 / max(len(baselines), 1)
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.42 * len(rows)), layout="constrained")
    positions = np.arange(len(rows))
    speedups = []
    for i, (impl, name, color) in enumerate(baselines):
        offset = (i - (len(baselines) - 1) / 2) * height
        for y, row in zip(positions, rows):
            if impl not in row.seconds:
                continue
            speedup = row.seconds[impl] / row.seconds["fastconv"]
            speedups.append(speedup)
            ax.barh(y + offset, speedup, height=height, color=color)
            ax.text(speedup * 1.04, y + offset, f"{speedup:.1f}x" if speedup >= 1 else f"{speedup:.2f}x",
                    va="center", fontsize=7)
    handles = [matplotlib.patches.Patch(color=color, label=f"vs {name}") for _, name, color in baselines]
    ax.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.95)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    low = min([0.5] + [v / 1.3 for v in speedups])
    high = max([2.0] + [v * 1.6 for v in speedups])
    ax.set_xlim(low, high)
    ticks = [t for t in (0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if low <= t <= high]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels([f"{t:g}x" for t in ticks])
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_yticks(positions, [f"{r.op}  {r.shape}" for r in rows], fontsize=8)
    ax.invert_yaxis()  # first row of the table on top
    ax.set_xlabel("fastconv's speed-up: the other implementation's time / fastconv's time\n"
                  "(log scale; right of 1x, fastconv is faster)")
    fig.suptitle("fastconv bench: fastconv against the NumPy reference and PyTorch, same shapes", fontsize=12)
    if subtitle:
        ax.set_title(subtitle, fontsize=8, loc="left")
    fig.savefig(path, dpi=120)
    plt.close(fig)
