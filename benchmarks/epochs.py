"""Training epochs of the recipes on fastconv or on PyTorch, one library per process, for BENCHMARKS.md.

    python benchmarks/epochs.py fastconv [--models seed keras-cnn mlp cifar]     # fastconv's Python
    python benchmarks/epochs.py torch                                            # a Python with PyTorch

The PyTorch run never imports fastconv (its OpenMP runtime and import-time settings would change
PyTorch's speed): the twins of the recipes come from fastconv/bench_training.py, loaded by path. MNIST
models train one shuffled epoch over the 60,000 vendored training images (data/mnist); `cifar` trains
over --cifar-images random 32x32x3 images (CIFAR-10 itself need not be present: the speed does not
depend on the pixels). Prints one line per model: seconds and images per second.
"""
import argparse
import gzip
import importlib.util
import os
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH = {"seed": 64, "keras-cnn": 128, "mlp": 128, "cifar": 64}


def mnist_train(folder):
    def idx(name, offset):
        with gzip.open(folder / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)
    images = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)
    return images, idx("train-labels-idx1-ubyte.gz", 8).astype(np.int64)


def bench_training(impl):
    if impl == "fastconv":
        from fastconv import bench_training as module
        return module
    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "fastconv" / "bench_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("impl", choices=["fastconv", "torch"])
    parser.add_argument("--models", nargs="+", default=list(BATCH), choices=list(BATCH))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cifar-images", type=int, default=10000)
    parser.add_argument("--mnist", type=pathlib.Path, default=ROOT / "data" / "mnist")
    args = parser.parse_args()
    if args.impl == "torch":
        if "fastconv" in sys.modules:
            raise SystemExit("the PyTorch run must not import fastconv")
        import torch
        torch.set_num_threads(args.threads)
        version = f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads"
    else:
        import fastconv
        fastconv.set_num_threads(args.threads)
        version = f"fastconv {fastconv.__version__}, {fastconv.get_num_threads()} threads"
    training = bench_training(args.impl)
    print(f"{version}; load average {os.getloadavg()[0]:.2f}", flush=True)
    mnist = None
    for name in args.models:
        if name == "cifar":
            rng = np.random.default_rng(1)
            images = rng.integers(0, 256, size=(args.cifar_images, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, size=args.cifar_images)
        else:
            mnist = mnist if mnist is not None else mnist_train(args.mnist)
            images, labels = mnist
        seconds = training.epoch_seconds(args.impl, name, BATCH[name], images, labels)
        print(f"{name} {args.impl} batch {BATCH[name]}: {len(images)} images in {seconds:.2f} s, "
              f"{len(images) / seconds:.0f} images/s; load average {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
