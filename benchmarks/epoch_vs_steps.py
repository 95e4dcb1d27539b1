"""Where an epoch's time goes beyond its steps: Model.fit against plain train_on_batch on the same batches.

    python benchmarks/epoch_vs_steps.py [--models seed keras-cnn] [--threads 2] [--images 12800] [--rounds 3]

One process per model. Each round runs, on the same MNIST images in the same order (pre-shuffled once,
fit with shuffle=False): `fit(verbose=0)`, `fit()` (the default verbose, its progress bar written to
a pipe here, as in a log file), and a loop of `train_on_batch` over the same batches, each timed as
wall time and as this process's CPU time (all threads; with OMP_WAIT_POLICY=PASSIVE a thread waiting
for work sleeps, so CPU time is the work done). The loop's steps are also timed one by one: their sum,
best and median say how far one repeated step is from an epoch's average. Garbage collections are
counted over each run. Best of --rounds per column; the load average is printed with each round.
"""
import argparse
import gc
import gzip
import os
import pathlib
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def mnist(count):
    def idx(name, offset):
        with gzip.open(ROOT / "data" / "mnist" / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)
    images = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)[:count]
    return images, idx("train-labels-idx1-ubyte.gz", 8)[:count].astype(np.int64)


class Collections:
    """Counts the garbage collections and their time while installed."""

    def __init__(self):
        self.count, self.seconds, self._start = 0, 0.0, 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._start


def run(name, images, labels, rounds):
    from fastconv import keras, recipes
    recipe = recipes.RECIPES[name]
    batch = recipe.batch_size
    keras.utils.set_random_seed(1)
    model = recipe.compiled_model()
    order = np.random.default_rng(0).permutation(len(images))
    x, y = images[order], labels[order]
    warm = batch + len(x) % batch  # a full and a partial batch, as benchmarks/epochs.py warms up
    model.fit(x[:warm], y[:warm], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    steps = -(-len(x) // batch)
    best = {}
    for round_ in range(rounds):
        for mode in ("fit verbose=0", "fit verbose=auto", "train_on_batch loop"):
            collections = Collections()
            gc.callbacks.append(collections)
            step_times = []
            cpu, wall = time.process_time(), time.perf_counter()
            if mode == "train_on_batch loop":
                for start in range(0, len(x), batch):
                    began = time.perf_counter()
                    model.train_on_batch(x[start:start + batch], y[start:start + batch])
                    step_times.append(time.perf_counter() - began)
            else:
                model.fit(x, y, batch_size=batch, epochs=1, shuffle=False,
                          **({"verbose": 0} if mode.endswith("=0") else {}))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            gc.callbacks.remove(collections)
            line = (f"{name} {mode}: wall {wall / steps * 1e3:.2f} ms/step, CPU {cpu / steps * 1e3:.2f} ms/step, "
                    f"{collections.count} collections ({collections.seconds * 1e3:.1f} ms)")
            if step_times:
                line += (f"; steps: sum {sum(step_times) / steps * 1e3:.2f}, best {min(step_times) * 1e3:.2f}, "
                         f"median {statistics.median(step_times) * 1e3:.2f} ms")
            print(f"{line}; load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
            previous = best.get(mode, (float("inf"),) * 2)
            best[mode] = (min(previous[0], wall / steps), min(previous[1], cpu / steps))
    for mode, (wall, cpu) in best.items():
        print(f"{name} {mode}: best wall {wall * 1e3:.2f} ms/step, best CPU {cpu * 1e3:.2f} ms/step",
              file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["seed", "keras-cnn"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=12800, help="the first N MNIST training images")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import fastconv
    fastconv.set_num_threads(args.threads)
    print(f"fastconv {fastconv.__version__} at {fastconv.__file__}, {args.threads} threads", file=sys.stderr)
    images, labels = mnist(args.images)
    for name in args.models:
        run(name, images, labels, args.rounds)


if __name__ == "__main__":
    main()
