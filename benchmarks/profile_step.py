"""Where the time of one training step goes: per layer (forward, backward) and per kind of work.

    python benchmarks/profile_step.py [--models seed keras-cnn] [--threads 1 2] [--steps 30]

Runs `train_on_batch` of a recipe (its own batch size unless --batch) on random data, as
benchmarks/epochs.py does, with every layer's forward/backward, the loss, the optimizer and every
call into fastconv._C timed (time.perf_counter around each; the C calls release the GIL, so what is
outside them is Python and NumPy). The tables break down the fastest instrumented step of --steps
(on a shared machine the fastest is the one least disturbed; its rows add up to it); "step" is the
best and the median of plain, uninstrumented steps timed in the same process (the timers themselves
cost about a microsecond per call).

Categories: "conv" and "gemm" (the C convolution and GEMM calls, packing and transforms included; a
first conv fused with its max pooling counts here, in the conv's row),
"pooling", "elementwise C" (ReLU gradient, dropout, batch norm), "optimizer C" (the weight updates),
"NumPy + Python in layers" (a layer's time outside C: reshapes, bias sums, dropout's backward
product, argument checks), "loss + metrics" (softmax cross-entropy and accuracy, NumPy), "optimizer
Python" and "step glue" (train_on_batch outside all of these: input conversion, the plan walk,
gradient bookkeeping). "Python and NumPy of a step" is the best time of the same step with every _C
kernel replaced by a no-op, alternated in the same process with real steps: all the step costs
outside the C kernels, NumPy's own work (loss, metrics, bias sums, dropout's backward) included.
"""
import argparse
import collections
import os
import statistics
import subprocess
import sys
import time

import numpy as np

CATEGORY = {
    "conv2d_forward": "conv", "conv2d_backward": "conv",
    # a first conv with the max pooling after it, as one op (Conv2D.forward_max_pooled)
    "conv2d_relu_maxpool2x2_forward": "conv", "conv2d_relu_maxpool2x2_weight_grad": "conv",
    "conv2d_relu_maxpool2x2_backward": "conv",
    "gemm": "gemm", "gemm_common_case": "gemm",
    "maxpool2d_forward": "pooling", "maxpool2d_backward": "pooling",
    "avgpool2d_forward": "pooling", "avgpool2d_backward": "pooling",
    "relu_backward": "elementwise C", "dropout_forward": "elementwise C", "dropout_backward": "elementwise C",
    "batchnorm_statistics": "elementwise C", "batchnorm_forward": "elementwise C",
    "batchnorm_backward": "elementwise C",
    "adam_update": "optimizer C", "adadelta_update": "optimizer C", "rmsprop_update": "optimizer C",
    "sgd_update": "optimizer C", "adam_update_all": "optimizer C", "adadelta_update_all": "optimizer C",
    "rmsprop_update_all": "optimizer C", "sgd_update_all": "optimizer C",
}
ORDER = ["conv", "gemm", "pooling", "elementwise C", "optimizer C", "NumPy + Python in layers", "loss + metrics",
         "optimizer Python", "step glue"]


class Recorder:
    """Per-step sums of named durations; `where` is the row the running C calls are charged to."""

    def __init__(self):
        self.steps = []
        self.current = None
        self.where = None
        self.depth = 0

    def begin_step(self):
        self.current = collections.defaultdict(float)

    def add(self, key, seconds):
        if self.current is not None:
            self.current[key] += seconds


def instrument(model, recorder):
    """Wrap the _C functions, each layer's forward/backward, the loss and the optimizer of `model`."""
    from fastconv import _C

    for name, category in CATEGORY.items():
        fn = getattr(_C, name, None)
        if fn is None:
            continue

        def timed(*args, _fn=fn, _category=category, **kwargs):
            if recorder.depth:  # gemm_common_case calls gemm: count the outer call only
                return _fn(*args, **kwargs)
            recorder.depth += 1
            start = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                recorder.depth -= 1
                recorder.add(("C", _category), elapsed)
                recorder.add(("C in", recorder.where), elapsed)

        setattr(_C, name, timed)

    def wrap(obj, attr, row):
        fn = getattr(obj, attr)

        def timed(*args, **kwargs):
            outer = recorder.where
            recorder.where = row
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                recorder.add(("in", row), time.perf_counter() - start)
                recorder.where = outer

        setattr(obj, attr, timed)

    for layer in model.layers:
        wrap(layer, "forward", (layer.name, "forward"))
        wrap(layer, "backward", (layer.name, "backward"))
        if getattr(layer, "fuses_max_pooling", False):  # its row holds the pooling too (older trees lack it)
            wrap(layer, "forward_max_pooled", (layer.name, "forward"))
    trainer = model._trainer
    wrap(trainer, "_losses_and_gradients", ("loss + metrics", ""))
    wrap(trainer.optimizer, "apply", ("optimizer", ""))


def steps_best(model, images, labels, steps):
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        best = min(best, time.perf_counter() - start)
    return best


def _no_op_gemm_common_case(a, b, trans_a, trans_b, alpha, beta, out, bias=None, relu=False):
    """gemm_common_case without the product: the result array, as the real one returns it (a None would
    send ops.gemm down its checked Python path, which the real step does not take)."""
    if out is not None:
        return out
    return np.empty((a.shape[1] if trans_a else a.shape[0], b.shape[0] if trans_b else b.shape[1]), np.float32)


def _no_op(name):
    if name == "gemm_common_case":
        return _no_op_gemm_common_case
    if name.endswith("_update_all"):  # they say they updated (else the optimizer takes the one-by-one path)
        return lambda *args, **kwargs: True
    return lambda *args, **kwargs: None


def python_share(model, images, labels, steps, rounds=3):
    """Best step time with the real kernels and with every _C kernel a no-op (gemm_common_case still
    returns a result array, as the real one does), alternated in this process: the second is the
    step's Python and NumPy work."""
    from fastconv import _C
    real = {name: getattr(_C, name) for name in CATEGORY if hasattr(_C, name)}
    plain, stubbed = float("inf"), float("inf")
    for _ in range(rounds):
        plain = min(plain, steps_best(model, images, labels, steps))
        for name in real:
            setattr(_C, name, _no_op(name))
        try:
            with np.errstate(all="ignore"):  # the no-op kernels leave garbage in their outputs
                stubbed = min(stubbed, steps_best(model, images, labels, steps))
        finally:
            for name, fn in real.items():
                setattr(_C, name, fn)
    return plain, stubbed


def profile(name, batch, threads, steps):
    import fastconv
    from fastconv import recipes
    fastconv.set_num_threads(threads)
    recipe = recipes.RECIPES[name]
    model = recipe.compiled_model()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch, *recipe.input_shape), dtype=np.uint8)
    labels = rng.integers(0, 10, size=batch)
    for _ in range(3):
        model.train_on_batch(images, labels)
    plain = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        plain.append(time.perf_counter() - start)
    shares = python_share(model, images, labels, steps)  # the no-op updates leave the weights as they were
    recorder = Recorder()
    instrument(model, recorder)
    for step in range(steps + 2):
        recorder.begin_step()
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        recorder.add(("step", ""), time.perf_counter() - start)
        if step >= 2:
            recorder.steps.append(recorder.current)
    layers = [layer.name for layer in model.layers]
    return plain, recorder.steps, layers, shares


def best_step(steps):
    return min(steps, key=lambda s: s[("step", "")])


def report(name, batch, threads, plain, steps, layers, shares):
    ms = 1e3
    best = best_step(steps)

    def at(*key):
        return best.get(key, 0.0)

    print(f"\n{name}, batch {batch}, {threads} thread(s): plain step best {min(plain) * ms:.2f} ms, median "
          f"{statistics.median(plain) * ms:.2f} ms ({len(plain)} steps); the instrumented step below "
          f"{at('step', '') * ms:.2f} ms (median {statistics.median(s[('step', '')] for s in steps) * ms:.2f})")
    print("\n| layer | forward ms | of which C | backward ms | of which C |")
    print("|---|---:|---:|---:|---:|")
    for layer in layers:
        f, b = (layer, "forward"), (layer, "backward")
        print(f"| {layer} | {at('in', f) * ms:.3f} | {at('C in', f) * ms:.3f} | "
              f"{at('in', b) * ms:.3f} | {at('C in', b) * ms:.3f} |")
    rows = collections.OrderedDict((c, 0.0) for c in ORDER)
    for category in ORDER[:5]:
        rows[category] = at("C", category)
    rows["NumPy + Python in layers"] = sum(at("in", (layer, phase)) - at("C in", (layer, phase))
                                           for layer in layers for phase in ("forward", "backward"))
    loss, opt = ("loss + metrics", ""), ("optimizer", "")
    rows["loss + metrics"] = at("in", loss) - at("C in", loss)
    rows["optimizer Python"] = at("in", opt) - at("C in", opt)
    total = at("step", "")
    rows["step glue"] = total - sum(rows.values())
    print(f"\nPython and NumPy of a step (every C kernel a no-op, alternated with real steps, best of each): "
          f"{shares[1] * ms:.3f} ms, {100 * shares[1] / shares[0]:.1f}% of the real step's {shares[0] * ms:.2f} ms")
    print("\n| category | ms | share of the step |")
    print("|---|---:|---:|")
    for category, value in rows.items():
        print(f"| {category} | {value * ms:.3f} | {100 * value / total:.1f}% |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["seed", "keras-cnn"])
    parser.add_argument("--batch", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "BATCH", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one profile in this process (each runs in its own, so thread pools start fresh)
        name, batch, threads = args.one[0], int(args.one[1]), int(args.one[2])
        report(name, batch, threads, *profile(name, batch, threads, args.steps))
        return
    import fastconv
    from fastconv import recipes
    print(f"fastconv {fastconv.__version__} at {fastconv.__file__}; load average {os.getloadavg()[0]:.2f}")
    for name in args.models:
        batch = args.batch or recipes.RECIPES[name].batch_size
        for threads in args.threads:
            subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one", name, str(batch),
                            str(threads)], check=True)
    print(f"\nload average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
