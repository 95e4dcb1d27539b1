"""`fastconv bench`: one table of fastconv against the NumPy reference and PyTorch (when installed).

Rows: gemm, conv2d forward and backward, maxpool forward and backward, and one training step of
the `seed`, `keras-cnn` and `mlp` models. Each row times every implementation on the same data, in turn,
round after round (best kept), so load from other processes hits them alike. NHWC<->NCHW
conversions for PyTorch happen outside the timed calls.
"""
import json
import platform

import numpy as np

import fastconv
from fastconv import bench_training, keras, reference

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
GEMM_SHAPES = [(1024, 1024, 1024), (64, 3136, 128), (6272, 288, 64)]
TRAIN_STEPS = [("seed", 64), ("keras-cnn", 128), ("mlp", 128)]
IMPLS = ("fastconv", "numpy", "torch")


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(fastconv.get_num_threads())
    return torch


class Row:
    """One line of the table: the same work done by each implementation."""

    def __init__(self, op, shape, fns, flops=None, bytes_moved=None):
        self.op, self.shape, self.fns = op, shape, fns  # fns: {impl: callable or None}
        self.flops, self.bytes_moved = flops, bytes_moved
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
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            fns["torch"] = lambda ta=ta, tb=tb: torch.mm(ta, tb)
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
            tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
            tw = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).requires_grad_(True)
            tb = torch.from_numpy(b).requires_grad_(True)
            tdy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
            pad = 1 if padding == "same" else 0
            conv = torch.nn.functional.conv2d

            def torch_forward(tx=tx, tw=tw, tb=tb, pad=pad):
                with torch.no_grad():
                    return torch.relu(conv(tx, tw, tb, padding=pad))

            out = conv(tx, tw, tb, padding=pad)
            forward["torch"] = torch_forward
            backward["torch"] = lambda out=out, tx=tx, tw=tw, tb=tb, tdy=tdy: torch.autograd.grad(
                out, (tx, tw, tb), tdy, retain_graph=True)
        rows.append(Row("conv2d fwd", label, forward, flops=flops))
        rows.append(Row("conv2d bwd", label, backward, flops=2 * flops))
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
        tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
        tdy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
        out = torch.nn.functional.max_pool2d(tx, 2)

        def torch_forward():
            with torch.no_grad():
                return torch.nn.functional.max_pool2d(tx, 2)

        forward["torch"] = torch_forward
        training_forward["torch"] = lambda: torch.nn.functional.max_pool2d_with_indices(tx, 2)
        backward["torch"] = lambda: torch.autograd.grad(out, tx, tdy, retain_graph=True)
    label = "n128 28x28x32 2x2"
    return [Row("maxpool fwd", label, forward, bytes_moved=x.nbytes + dy.nbytes),
            Row("maxpool fwd+argmax", label, training_forward, bytes_moved=x.nbytes + dy.nbytes + argmax.nbytes),
            Row("maxpool bwd", label, backward, bytes_moved=x.nbytes + dy.nbytes + argmax.nbytes)]


def train_rows(rng, torch):
    rows = []
    for name, batch in TRAIN_STEPS:
        images = rng.integers(0, 256, size=(batch, 28, 28, 1), dtype=np.uint8)
        labels = rng.integers(0, 10, size=batch)
        fns = {}
        for impl in ("fastconv", "numpy") + (("torch",) if torch else ()):
            step = bench_training.make_trainer(impl, name)
            # bound now: a free `images` would be the last loop's (keras-cnn's batch of 128) by timing time
            fns[impl] = lambda step=step, images=images, labels=labels: step(images, labels)
        rows.append(Row("train step", f"{name} batch {batch}", fns))
    return rows


def time_rows(rows, rounds, interleaved_best):
    for row in rows:
        impls = list(row.fns)
        row.seconds = dict(zip(impls, interleaved_best([row.fns[impl] for impl in impls], rounds=rounds)))


def table(rows, core_peak, threads):
    header = ["op", "shape", "fastconv ms", "numpy ms", "torch ms", "vs numpy", "vs torch", "GFLOPS", "% peak",
              "GB/s"]
    lines = []
    for row in rows:
        fc = row.seconds["fastconv"]
        ms = {impl: f"{row.seconds[impl] * 1e3:.2f}" if impl in row.seconds else "-" for impl in IMPLS}
        ratio = {impl: f"{row.seconds[impl] / fc:.1f}x" if impl in row.seconds else "-" for impl in IMPLS}
        gflops = row.flops / fc / 1e9 if row.flops else None
        lines.append([row.op, row.shape, ms["fastconv"], ms["numpy"], ms["torch"], ratio["numpy"],
                      ratio["torch"], f"{gflops:.0f}" if gflops else "-",
                      f"{100 * gflops / (core_peak * threads):.0f}%" if gflops else "-",
                      f"{row.bytes_moved / fc / 1e9:.0f}" if row.bytes_moved else "-"])
    return header, lines


def run_suite(args, interleaved_best, fma_peak_gflops, print_table):
    torch = torch_or_none()
    threads = fastconv.get_num_threads()
    rng = np.random.default_rng(0)
    rows = gemm_rows(rng, torch) + conv_rows(rng, torch, args.quick) + pool_rows(rng, torch) + train_rows(rng, torch)
    core_peak = fma_peak_gflops(None, 1)
    print(f"fastconv {fastconv.__version__}, isa {fastconv.get_isa()}, {threads} threads, FMA peak "
          f"{core_peak:.0f} GFLOPS per core; numpy = fastconv.reference (pure NumPy); "
          f"torch = {'PyTorch ' + torch.__version__ if torch else 'not installed'}", flush=True)
    time_rows(rows, 1 if args.quick else 3, interleaved_best)
    header, lines = table(rows, core_peak, threads)
    print_table(header, lines)
    keras.backend.set_backend("fastconv")
    if args.json:
        results = {"machine": platform.processor() or platform.machine(), "threads": threads,
                   "isa": fastconv.get_isa(), "fma_peak_gflops_per_core": core_peak,
                   "rows": [{"op": r.op, "shape": r.shape, "seconds": r.seconds, "flops": r.flops,
                             "bytes": r.bytes_moved} for r in rows]}
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"results written to {args.json}")
    if args.plot:
        plot_speedups(args.plot, rows)
        print(f"plot written to {args.plot}")
    return 0


def plot_speedups(path, rows):
    from fastconv.plotting import require_matplotlib
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r.op}\n{r.shape}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.7), 5), constrained_layout=True)
    positions = np.arange(len(rows))
    for offset, impl in ((-0.2, "numpy"), (0.2, "torch")):
        speedups = [r.seconds[impl] / r.seconds["fastconv"] if impl in r.seconds else 0 for r in rows]
        ax.bar(positions + offset, speedups, width=0.4, label=f"fastconv speed-up over {impl}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(positions, labels, rotation=90, fontsize=7)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
