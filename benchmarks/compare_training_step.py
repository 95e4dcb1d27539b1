"""One training step of the `seed` and `keras-cnn` models under two fastconv installs, or through
fit's fused step against a GradientTape loop, each timing in its own process, alternated, best of N.

    python benchmarks/compare_training_step.py --before /path/to/old/venv/bin/python [--rounds 3]

Prints, per model, the best step time of each variant and the ratio to the first one. The variants:
`fit` (train_on_batch, the built-in fused step) under --before's Python and under this Python, and
`tape` (a GradientTape loop over the same built-in model, with this Python).
"""
import argparse
import subprocess
import sys

FIT = """
from fastconv.bench_training import step_seconds
print(step_seconds("fastconv", {model!r}, {batch}, steps={steps}))
"""

TAPE = """
import time
import numpy as np
import fastconv
from fastconv import keras, recipes
model = recipes.RECIPES[{model!r}].compiled_model()
optimizer, loss_fn = model.optimizer, model._trainer.losses[0]
rng = np.random.default_rng(0)
images = rng.integers(0, 256, size=({batch}, 28, 28, 1), dtype=np.uint8).astype(np.float32)
labels = rng.integers(0, 10, size={batch})
def step():
    with fastconv.GradientTape() as tape:
        loss = loss_fn(labels, model(images, training=True))
    optimizer.apply(tape.gradient(loss, model.trainable_weights), model.trainable_weights)
for _ in range(2):
    step()
best = float("inf")
for _ in range({steps}):
    start = time.perf_counter()
    step()
    best = min(best, time.perf_counter() - start)
print(best)
"""


def run(python, code):
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the Python of the install to compare against")
    parser.add_argument("--models", nargs="+", default=["seed", "keras-cnn"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = {"fit, before": (args.before, FIT), "fit, this": (sys.executable, FIT), "tape, this": (sys.executable, TAPE)}
    for model in args.models:
        best = {name: float("inf") for name in variants}
        for _ in range(args.rounds):
            for name, (python, code) in variants.items():
                seconds = run(python, code.format(model=model, batch=args.batch, steps=args.steps))
                best[name] = min(best[name], seconds)
        first = next(iter(best.values()))
        for name, seconds in best.items():
            print(f"{model:10s} {name:12s} {seconds * 1e3:8.2f} ms/step  x{seconds / first:.3f}")


if __name__ == "__main__":
    main()
