"""Training epochs of the recipes on fastconv, PyTorch or Keras 3 on TensorFlow, one library per process,
and the FMA floor of the models, for BENCHMARKS.md.

    python benchmarks/epochs.py fastconv [--models seed keras-cnn mlp cifar]   # fastconv's Python
    python benchmarks/epochs.py fastconv --keras      # seed and keras-cnn through benchmarks/keras_scripts
    python benchmarks/epochs.py torch                 # a Python with PyTorch
    python benchmarks/epochs.py keras-tf              # a Python with keras and tensorflow(-cpu)
    python benchmarks/epochs.py floor                 # fastconv's Python: FMA peak, training FLOPs per image

`fastconv` and `torch` train the models in a loop of train_on_batch (fastconv) or of its PyTorch twin from
fastconv/bench_training.py, loaded by path (the PyTorch run never imports fastconv: its OpenMP runtime and
import-time settings would change PyTorch's speed). `fastconv --keras` and `keras-tf` run the same Keras
script, benchmarks/keras_scripts/MODEL.py, whose only difference between the two is the import
(`from fastconv import keras` or `import keras`). Every library gets --threads threads (OMP_NUM_THREADS,
and fastconv.set_num_threads, torch.set_num_threads, or TensorFlow's intra- and inter-op thread counts).
Each model has one warm-up step on a full and one on a partial batch before its timed epoch.

MNIST models train one shuffled epoch over the 60,000 vendored training images (data/mnist; --images N
for the first N); `cifar` trains over --cifar-images random 32x32x3 images (CIFAR-10 itself need not be
present: the speed does not depend on the pixels). Prints one line per model: seconds and images per
second, and the load average. `floor` prints the FMA peak on 1 and --threads threads and each model's
training FLOPs per image done the direct way (fastconv.bench_training.training_flops).
"""
import argparse
import gzip
import importlib.util
import os
import pathlib
import runpy
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH = {"seed": 64, "keras-cnn": 128, "mlp": 128, "cifar": 64}
KERAS_SCRIPTS = {"seed": ROOT / "benchmarks" / "keras_scripts" / "seed.py",
                 "keras-cnn": ROOT / "benchmarks" / "keras_scripts" / "keras_cnn.py"}


def mnist_train(folder, count):
    def idx(name, offset):
        with gzip.open(folder / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)
    images = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)[:count]
    return images, idx("train-labels-idx1-ubyte.gz", 8)[:count].astype(np.int64)


def bench_training(impl):
    if impl == "fastconv":
        from fastconv import bench_training as module
        return module
    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "fastconv" / "bench_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pin_threads(impl, threads):
    """Give the library `threads` threads before it starts any; returns a line naming it and its threads."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if impl in ("torch", "keras-tf") and "fastconv" in sys.modules:
        raise SystemExit(f"the {impl} run must not import fastconv")
    if impl == "torch":
        import torch
        torch.set_num_threads(threads)
        return f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads"
    if impl == "keras-tf":
        os.environ["KERAS_BACKEND"] = "tensorflow"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        import keras
        return (f"Keras {keras.__version__} on TensorFlow {tf.__version__}, "
                f"{tf.config.threading.get_intra_op_parallelism_threads()} intra-op and "
                f"{tf.config.threading.get_inter_op_parallelism_threads()} inter-op threads")
    import fastconv
    fastconv.set_num_threads(threads)
    return f"fastconv {fastconv.__version__}, {fastconv.get_num_threads()} threads"


def run_keras_script(name, args):
    """Run benchmarks/keras_scripts/NAME.py in this process, as `python NAME.py [--fastconv] ...` would."""
    path = KERAS_SCRIPTS[name]
    argv = [str(path), "--mnist", str(args.mnist), "--images", str(args.images)]
    saved, sys.argv = sys.argv, argv + (["--fastconv"] if args.impl == "fastconv" else [])
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = saved


def print_floor(args):
    """The FMA peak on 1 and args.threads threads, then each model's training FLOPs per image."""
    import fastconv
    from fastconv import bench, recipes
    from fastconv.bench_training import training_flops
    fastconv.set_num_threads(args.threads)
    print(bench.stamp(), flush=True)
    one, many = bench.fma_peak_gflops(None, 1), bench.fma_peak_gflops(None, args.threads)
    print(f"FMA peak {fastconv.get_isa()}: 1 thread {one:.1f} GFLOPS, {args.threads} threads {many:.1f} GFLOPS",
          flush=True)
    for name in args.models:
        rows = training_flops(recipes.RECIPES[name].build())
        forward, input_grad, weight_grad = (sum(column) for column in list(zip(*rows))[1:])
        print(f"{name} training FLOPs per image: {forward + input_grad + weight_grad} (forward {forward}, "
              f"input gradient {input_grad}, weight gradient {weight_grad}; direct method, "
              f"{', '.join(row[0] for row in rows)})", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("impl", choices=["fastconv", "torch", "keras-tf", "floor"])
    parser.add_argument("--models", nargs="+", choices=list(BATCH),
                        help="default: seed keras-cnn for --keras, keras-tf and floor; all four otherwise")
    parser.add_argument("--keras", action="store_true",
                        help="fastconv: train through the Keras scripts (model.fit) instead of train_on_batch")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--images", type=int, default=60000, help="MNIST: the first N training images")
    parser.add_argument("--cifar-images", type=int, default=10000)
    parser.add_argument("--mnist", type=pathlib.Path, default=ROOT / "data" / "mnist")
    args = parser.parse_args()
    if args.keras and args.impl != "fastconv":
        parser.error("--keras is for fastconv (keras-tf always runs the Keras scripts)")
    keras = args.keras or args.impl == "keras-tf"
    args.models = args.models or (list(KERAS_SCRIPTS) if keras or args.impl == "floor" else list(BATCH))
    if keras and not set(args.models) <= set(KERAS_SCRIPTS):
        parser.error(f"--models: only {', '.join(KERAS_SCRIPTS)} have a Keras script")
    if args.impl == "floor":
        return print_floor(args)
    version = pin_threads(args.impl, args.threads)
    print(f"{version}; load average {os.getloadavg()[0]:.2f}", flush=True)
    mnist = None
    for name in args.models:
        if keras:
            run_keras_script(name, args)
            print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
            continue
        if name == "cifar":
            rng = np.random.default_rng(1)
            images = rng.integers(0, 256, size=(args.cifar_images, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, size=args.cifar_images)
        else:
            mnist = mnist if mnist is not None else mnist_train(args.mnist, args.images)
            images, labels = mnist
        seconds = bench_training(args.impl).epoch_seconds(args.impl, name, BATCH[name], images, labels)
        print(f"{name} {args.impl} batch {BATCH[name]}: {len(images)} images in {seconds:.2f} s, "
              f"{len(images) / seconds:.0f} images/s; load average {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
