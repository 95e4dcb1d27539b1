"""What deterministic="ranks" costs one process: the training step (train_on_batch) of the seed and
keras-cnn recipes at batch 64 and 128, the normal path against the same step inside a
microbatch.window (every sum over samples by leaves, in the fixed tree), alternating the two (in
reverse order every other round), best of the rounds.

    python benchmarks/deterministic_ranks_cost.py [threads] [rounds] [leaf]

A DataParallel fit on one rank adds to this a per-step allgather on one rank and a reseeded random
generator (microseconds).
"""
import os
import sys
import time

import numpy as np

import fastconv
from fastconv import recipes, keras
from fastconv.keras import microbatch


def step_seconds(model, x, y, leaves, leaf, steps=8):
    started = time.perf_counter()
    for _ in range(steps):
        if leaves:
            with microbatch.window(0, len(x), len(x), leaf=leaf):
                model.train_on_batch(x, y)
        else:
            model.train_on_batch(x, y)
    return (time.perf_counter() - started) / steps


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    leaf = int(sys.argv[3]) if len(sys.argv) > 3 else microbatch.LEAF
    fastconv.set_num_threads(threads)
    rng = np.random.default_rng(0)
    print(f"threads {threads}, leaf {leaf}, best of {rounds}; load average {os.getloadavg()[0]:.1f}", flush=True)
    for name in ("seed", "keras-cnn"):
        for batch in (64, 128):
            keras.utils.set_random_seed(0)
            model = recipes.RECIPES[name].compiled_model()
            x = rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8)
            y = rng.integers(0, 10, batch)
            times = {False: [], True: []}
            step_seconds(model, x, y, False, leaf, 2)
            step_seconds(model, x, y, True, leaf, 2)
            for index in range(rounds):
                for leaves in ((False, True) if index % 2 == 0 else (True, False)):
                    times[leaves].append(step_seconds(model, x, y, leaves, leaf))
            normal, by_leaves = min(times[False]), min(times[True])
            print(f"{name:9s} batch {batch:3d}: normal {normal * 1e3:7.2f} ms, by leaves {by_leaves * 1e3:7.2f} ms, "
                  f"cost {100 * (by_leaves / normal - 1):+5.1f}%", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
