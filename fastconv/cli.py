"""The `fastconv` command: train, evaluate and predict with MNIST/CIFAR-10 models, and run the benchmarks.

Errors a user can cause (bad options, missing or corrupt files, wrong image sizes) end in a one-line
message and a non-zero exit, never a traceback.
"""
import argparse
import contextlib
import os
import signal
import sys
import warnings

import numpy as np

from fastconv.datasets.cifar10 import CLASS_NAMES as CIFAR10_CLASS_NAMES
from fastconv.keras.callbacks import Callback
from fastconv.keras.progbar import Progbar

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam", "rmsprop", "adagrad", "adadelta")
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
DATASETS = ("mnist", "fashion_mnist", "cifar10")
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
    "cifar10": list(CIFAR10_CLASS_NAMES),
}
DEFAULT_MODEL = {"mnist": "seed", "fashion_mnist": "seed", "cifar10": "cifar"}


class UserError(Exception):
    """A problem with what the user asked for, reported as one line."""


def load_dataset(name):
    from fastconv import datasets
    if name == "cifar10":
        (x_train, y_train), (x_test, y_test) = datasets.cifar10.load_data()
        # Already (N, 32, 32, 3); Keras' (N, 1) labels flattened (views) for the accuracy and confusion matrix.
        return (x_train, y_train.reshape(-1)), (x_test, y_test.reshape(-1))
    module = {"mnist": datasets.mnist, "fashion_mnist": datasets.fashion_mnist}[name]
    (x_train, y_train), (x_test, y_test) = module.load_data()
    # Keep uint8; add the channel axis as a view (no copy).
    return (x_train[..., None], y_train), (x_test[..., None], y_test)


def load_test_set(name):
    """Only the test split: MNIST-like data sets then need none of the training files."""
    from fastconv import datasets
    if name == "cifar10":
        x_test, y_test = datasets.cifar10.load_test_data()
        return x_test, y_test.reshape(-1)
    module = {"mnist": datasets.mnist, "fashion_mnist": datasets.fashion_mnist}[name]
    x_test, y_test = module.load_test_data()
    return x_test[..., None], y_test


def confusion_matrix(labels, predicted, classes=10):
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def format_confusion(matrix, names):
    width = max(5, max(len(n) for n in names) + 1, len(str(matrix.max())) + 1)
    lines = ["confusion matrix (rows: true class, columns: predicted)",
             " " * width + "".join(f"{n[:width - 1]:>{width}}" for n in names)]
    for name, row in zip(names, matrix):
        lines.append(f"{name[:width - 1]:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


class EpochReport(Callback):
    """One Keras-style progress bar per epoch, with the training rate in images/s inside it; saves a
    checkpoint after every complete epoch. On Ctrl-C, stops cleanly after the current step (a second
    Ctrl-C quits at once)."""

    def __init__(self, images_per_epoch, batch_size, checkpoint_path):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.batch_size = batch_size
        self.checkpoint_path = checkpoint_path
        self.interrupted = False
        self.epoch = self.step = 0
        self.last_saved_epoch = None
        self.bar = None

    def request_stop(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True

    def images_trained(self):
        """Images of the current epoch trained on so far (the last batch may be short)."""
        return min(self.step * self.batch_size, self.images_per_epoch)

    def epoch_complete(self):
        return self.step == self.params.get("steps")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.step = epoch, 0
        print(f"Epoch {epoch + 1}/{self.params.get('epochs')}", flush=True)
        self.bar = Progbar(self.params.get("steps"), count_name="images")

    def _show(self, logs, finalize, count=None):
        logs = logs or {}
        self.bar.stateful_metrics.update(logs)  # the trainer's logs are already running averages
        self.bar.update(self.step, list(logs.items()), finalize=finalize, count=count)

    def on_train_batch_end(self, batch, logs=None):
        self.step = batch + 1
        self._show(logs, finalize=False, count=self.images_trained())
        if self.interrupted:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._show(logs, finalize=True)
        # Every training step ran, so the epoch is complete even if Ctrl-C came during validation;
        # an epoch cut short must not replace the last complete one.
        if self.epoch_complete():
            self.model.save(self.checkpoint_path)  # atomic: a crash mid-save keeps the previous file
            self.last_saved_epoch = epoch + 1
        if self.interrupted:
            self.model.stop_training = True

    def interruption_message(self):
        if self.epoch_complete():
            return (f"Interrupted after epoch {self.epoch + 1}, which completed; "
                    f"its checkpoint is {self.checkpoint_path}.")
        where = (f"the last completed checkpoint is {self.checkpoint_path} (epoch {self.last_saved_epoch})"
                 if self.last_saved_epoch else "no epoch completed in this run, so nothing was saved")
        return f"Interrupted during epoch {self.epoch + 1}, after step {self.step}; {where}."


class Augmenter(Callback):
    """Writes a new random variant (`augmentation(images, rng)`, e.g. a shift and rotation) of every
    training image into the array `fit` reads."""

    def __init__(self, originals, training_array, rng, augmentation):
        super().__init__()
        self.originals, self.training_array, self.rng = originals, training_array, rng
        self.augmentation = augmentation

    chunk = 4096  # images per call: the sampling grids of all 60,000 at once would take ~2 GB

    def on_epoch_begin(self, epoch, logs=None):
        for start in range(0, len(self.originals), self.chunk):
            stop = start + self.chunk
            self.training_array[start:stop] = self.augmentation(self.originals[start:stop], self.rng)


def cmd_train(args):
    from fastconv import keras, recipes, set_num_threads

    model_name = args.model or DEFAULT_MODEL[args.dataset]
    recipe = recipes.RECIPES[model_name]
    if args.plot:
        from fastconv.plotting import require_matplotlib
        require_matplotlib()
    keras.backend.set_backend(args.backend)
    if args.threads is not None:
        set_num_threads(args.threads)
    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
    epochs = args.epochs or recipe.epochs
    batch_size = args.batch_size or recipe.batch_size
    learning_rate = args.lr or recipe.learning_rate
    if recipe.augmentation is None and args.augment is not None:
        raise UserError(f"model {model_name} varies its training images itself (augmentation layers); "
                        "--augment and --no-augment do not apply to it")
    augment = recipe.augment if args.augment is None else args.augment
    save_path = args.save or f"{model_name}-{args.dataset}.fastconv"

    (x_train, y_train), (x_test, y_test) = load_dataset(args.dataset)
    if tuple(x_train.shape[1:]) != tuple(recipe.input_shape):
        suitable = ", ".join(name for name, other in recipes.RECIPES.items() if other.input_shape == x_train.shape[1:])
        raise UserError(f"model {model_name} takes {'x'.join(map(str, recipe.input_shape))} images, dataset "
                        f"{args.dataset} has {'x'.join(map(str, x_train.shape[1:]))}; choose --model {suitable}")
    if args.train_size:
        x_train, y_train = x_train[:args.train_size], y_train[:args.train_size]
    model = _model_in_precision(recipe, args, learning_rate)
    print(f"fastconv train: model {model_name} ({recipe.description}), dataset {args.dataset} "
          f"({len(x_train)} train / {len(x_test)} test), {plural(epochs, 'epoch')}, batch {batch_size}, "
          f"{args.optimizer or recipe.optimizer} lr {learning_rate:g}, "
          f"augment {'in the model' if recipe.augmentation is None else 'on' if augment else 'off'}, "
          f"backend {args.backend}", flush=True)
    if args.precision == "bf16":
        print(_precision_report(args.backend), flush=True)
    if keras.distribution.active():
        from fastconv import get_num_threads
        from fastconv.keras import distributed
        ranks = distributed.size()
        low, high = batch_size // ranks, -(-batch_size // ranks)
        print(f"data-parallel over {ranks} ranks ({distributed.local_size()} on this machine): {batch_size} images "
              f"per step, {low if low == high else f'{low}-{high}'} on each rank, "
              f"{plural(get_num_threads(), 'thread')} per rank", flush=True)
    if keras.distribution.deterministic_ranks():
        print("deterministic='ranks': the same weights, bitwise, on any number of ranks", flush=True)
    replaces = os.path.exists(save_path)
    if replaces:
        print(f"{save_path} exists: each completed epoch replaces it", flush=True)
    if args.verbose:
        model.summary()

    report = EpochReport(len(x_train), batch_size, save_path)
    callbacks = []
    if recipe.decay_per_epoch != 1.0:
        callbacks.append(keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: learning_rate * recipe.decay_per_epoch ** epoch))
    if augment:
        x_fit = x_train.copy()  # refilled with freshly augmented images before every epoch
        callbacks.append(Augmenter(x_train, x_fit, np.random.default_rng(args.seed), recipe.augmentation))
    else:
        x_fit = x_train
    if args.resume:
        # First, so that the weights and the epoch are restored before the other callbacks start;
        # kept when a Ctrl-C ends fit early, deleted below once every epoch has run.
        callbacks.insert(0, keras.callbacks.BackupAndRestore(args.resume, delete_checkpoint=False))
    callbacks.append(report)  # last, so that its clock starts after the augmentation
    previous_handler = signal.signal(signal.SIGINT, report.request_stop)
    try:
        history = model.fit(x_fit, y_train, batch_size=batch_size, epochs=epochs, validation_data=(x_test, y_test),
                            callbacks=callbacks, verbose=0).history
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    if report.interrupted:
        print(report.interruption_message(), flush=True)
        return EXIT_INTERRUPTED
    if args.resume and keras.distribution.is_chief():
        from fastconv.keras.backup import STATE_FILE
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(args.resume, STATE_FILE))

    probabilities = model.predict(x_test, batch_size=256, verbose=0)
    predicted = probabilities.argmax(axis=1)
    accuracy = float((predicted == y_test).mean())
    print(f"test accuracy: {accuracy:.4f} ({int((predicted == y_test).sum())}/{len(y_test)})")
    if keras.distribution.active():
        print(_reduction_report())
    matrix = confusion_matrix(y_test, predicted)
    print(format_confusion(matrix, CLASS_NAMES[args.dataset]))
    print(f"model saved to {save_path}" + (" (replacing the file that was there)" if replaces else ""))
    if args.plot:
        from fastconv.plotting import plot_training
        plot_training(args.plot, history, matrix, CLASS_NAMES[args.dataset], model)
        print(f"plot written to {args.plot}")
    return 0


def _model_in_precision(recipe, args, learning_rate):
    """The recipe's model, its layers under the mixed_bfloat16 dtype policy for --precision bf16."""
    from fastconv import keras
    if args.precision == "float32":
        return recipe.compiled_model(args.optimizer, learning_rate)
    # The report below says what bf16 runs on; the engine's own warning would say it a second time.
    warnings.filterwarnings("ignore", message="this CPU has no AVX512_BF16", category=RuntimeWarning)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        return recipe.compiled_model(args.optimizer, learning_rate)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _precision_report(backend):
    """What --precision bf16 runs on: the bf16 kernel, or the float32 ones (and why)."""
    from fastconv import precision
    kernel = precision.bf16_kernel()
    if backend != "fastconv":
        return "precision mixed_bfloat16: the numpy backend computes in float32"
    if kernel is None:
        return ("precision mixed_bfloat16: this CPU has no AVX512_BF16, so the GEMMs run the float32 kernels "
                "(weights, optimizer state and loss are float32 either way)")
    return (f"precision mixed_bfloat16: Dense and conv GEMMs in bfloat16 on {kernel} (float32 sums); weights, "
            "optimizer state and loss in float32")


def _reduction_report():
    """Rank 0's time in the gradient reductions of a data-parallel run, per step and as a share."""
    from fastconv.keras import distributed
    spent = distributed.timings()
    if not spent["steps"] or not spent["reductions"]:
        return f"data-parallel over {distributed.size()} ranks"
    return (f"data-parallel over {distributed.size()} ranks: gradient reduction "
            f"{1e3 * spent['reduce_seconds'] / spent['reductions']:.1f} ms per step "
            f"({spent['reduce_seconds'] / spent['step_seconds']:.0%} of the training step, waiting for the "
            "slowest rank included)")


def plural(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _load_model(path):
    from fastconv import keras
    if not os.path.exists(path):
        raise UserError(f"model file not found: {path}")
    return keras.models.load_model(path)


def cmd_evaluate(args):
    model = _load_model(args.model_path)
    x_test, y_test = load_test_set(args.dataset)
    predicted = model.predict(x_test, batch_size=256, verbose=0).argmax(axis=1)
    print(f"test accuracy on {args.dataset}: {float((predicted == y_test).mean()):.4f}")
    print(format_confusion(confusion_matrix(y_test, predicted), CLASS_NAMES[args.dataset]))
    return 0


def read_image(path, shape):
    """An image as a uint8 (H, W, 1) array: .npy, binary PGM, or anything Pillow opens (PNG, ...)."""
    from fastconv.images import read_grayscale
    image = read_grayscale(path)
    if image.shape != shape:
        raise UserError(f"{path}: image is {image.shape[1]}x{image.shape[0]} pixels, the model expects "
                        f"{shape[1]}x{shape[0]}")
    return image[..., None]


def cmd_predict(args):
    from fastconv.images import has_light_background
    model = _load_model(args.model_path)
    expected = tuple(model.input_shape[1:3])
    images, inverted = [], []
    for path in args.images:
        image = read_image(path, expected)
        # MNIST digits are light on a dark background; a scan or drawing is usually the reverse.
        invert = has_light_background(image) if args.invert is None else args.invert
        images.append(255 - image if invert else image)
        inverted.append(invert)
    probabilities = model.predict(np.stack(images), verbose=0)
    for path, probs, invert in zip(args.images, probabilities, inverted):
        top = np.argsort(probs)[::-1][:3]
        ranked = ", ".join(f"{k}: {probs[k]:.3f}" for k in top)
        note = ""
        if invert:
            note = ("  [inverted: light background; the model expects light digits on dark, as in MNIST]"
                    if args.invert is None else "  [inverted (--invert)]")
        print(f"{path}: {top[0]}  ({ranked}){note}")
    return 0


def build_parser():
    from fastconv.recipes import RECIPES
    parser = argparse.ArgumentParser(prog="fastconv", description="Train and run CNNs on the CPU with fastconv.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model on MNIST, Fashion-MNIST or CIFAR-10")
    train.add_argument("--dataset", choices=DATASETS, default="mnist")
    train.add_argument("--model", choices=list(RECIPES),
                       help="default: seed for MNIST and Fashion-MNIST, cifar for CIFAR-10")
    train.add_argument("--epochs", type=positive_int)
    train.add_argument("--batch-size", type=positive_int)
    train.add_argument("--optimizer", choices=OPTIMIZERS, help="default: the model's")
    train.add_argument("--lr", type=positive_float, help="learning rate (default: the model's)")
    train.add_argument("--threads", type=positive_int)
    train.add_argument("--precision", choices=("float32", "bf16"), default="float32",
                       help="bf16: the layers compute under the mixed_bfloat16 dtype policy (bfloat16 GEMMs with "
                            "float32 sums where the CPU has AVX512_BF16, else float32; weights stay float32)")
    train.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                       help="random shifts and rotations of the training digits (default: the model's; "
                            "the cifar model has augmentation layers instead)")
    train.add_argument("--backend", choices=("fastconv", "numpy"), default=os.environ.get("FASTCONV_BACKEND", "fastconv"))
    train.add_argument("--save", metavar="PATH", help="where to save the model (default: MODEL-DATASET.fastconv)")
    train.add_argument("--plot", metavar="PATH", help="write a PNG of the curves, confusion matrix and filters")
    train.add_argument("--seed", type=int)
    train.add_argument("--resume", metavar="DIR",
                       help="keep the training state (weights, optimizer, epoch, random state) in DIR after "
                            "every epoch; when DIR holds one, from a run that was cut off, go on from it")
    train.add_argument("--deterministic", choices=("ranks",),
                       help="ranks: the same weights, bitwise, on any number of MPI ranks (1 included) at the "
                            "same --batch-size (keras.distribution.DataParallel(deterministic='ranks'); slower)")
    train.add_argument("--train-size", type=positive_int, help="train on the first N images only")
    train.add_argument("--verbose", action="store_true", help="print the model summary")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a saved model on a test set")
    evaluate.add_argument("model_path", metavar="MODEL")
    evaluate.add_argument("--dataset", choices=DATASETS, default="mnist")
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser("predict", help="classify images (PNG, PGM or .npy) with a saved model")
    predict.add_argument("model_path", metavar="MODEL")
    predict.add_argument("images", metavar="IMAGE", nargs="+")
    predict.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None,
                         help="invert the images (default: only those with a light background)")
    predict.set_defaults(run=cmd_predict)

    # `fastconv bench ...` is handed to fastconv.bench, which parses its own options (see main).
    commands.add_parser("bench", help="benchmark fastconv against NumPy and PyTorch (fastconv bench --help)")
    return parser


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from fastconv import bench
        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    deterministic = getattr(args, "deterministic", None)
    from fastconv.keras import distributed
    if distributed.launched_by_mpi() or deterministic:
        # One rank of `mpiexec -n N fastconv train|evaluate|predict` (or of one, for train --deterministic
        # ranks): data-parallel, only rank 0 prints, and an error on any rank aborts them all (as python -m
        # mpi4py does), rather than leaving them in a collective.
        try:
            _start_data_parallel(deterministic)
        except ImportError as exc:  # every rank fails alike, so none waits for another
            print(f"fastconv {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        return distributed.abort_on_error(_run, args)
    return _run(args)


def _start_data_parallel(deterministic=None):
    """Make this process a rank of a keras.distribution.DataParallel job; only rank 0 prints."""
    from fastconv import keras
    from fastconv.keras import distributed
    keras.distribution.set_distribution(keras.distribution.DataParallel(deterministic=deterministic))
    if distributed.rank() != 0:
        sys.stdout = open(os.devnull, "w")


def _run(args):
    try:
        return args.run(args)
    except (UserError, ValueError, TypeError, OSError, ImportError) as exc:
        print(f"fastconv {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\nfastconv {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
