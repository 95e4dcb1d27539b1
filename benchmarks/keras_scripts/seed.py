"""One timed MNIST epoch of the `seed` model (fastconv/recipes.py) with the Keras API.

The same file runs on Keras 3 and on fastconv; the import is the only difference:

    KERAS_BACKEND=tensorflow python benchmarks/keras_scripts/seed.py             # Keras 3 on TensorFlow
    python benchmarks/keras_scripts/seed.py --fastconv                            # fastconv's Keras

benchmarks/epochs.py runs it both ways, each in its own process, with the thread count pinned. One warm-up
fit over a full and a partial batch (TensorFlow traces its graph then) precedes the timed epoch.
"""
import argparse
import gzip
import pathlib
import time

import numpy as np

NAME, BATCH = "seed", 64

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--fastconv", action="store_true", help="fastconv's Keras instead of `import keras`")
parser.add_argument("--mnist", type=pathlib.Path,
                    default=pathlib.Path(__file__).resolve().parents[2] / "data" / "mnist",
                    help="folder of the MNIST idx .gz files (default: data/mnist of this checkout)")
parser.add_argument("--images", type=int, default=60000, help="train on the first N images (default: all)")
args = parser.parse_args()

if args.fastconv:
    from fastconv import keras
else:
    import keras
layers = keras.layers


def idx(name, offset):
    with gzip.open(args.mnist / name) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


x = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)[:args.images]
y = idx("train-labels-idx1-ubyte.gz", 8)[:args.images].astype("int64")

keras.utils.set_random_seed(1)
model = keras.Sequential([
    keras.Input(shape=(28, 28, 1)),
    layers.Rescaling(1.0 / 255),
    layers.Conv2D(32, 3, padding="same", activation="relu"),
    layers.MaxPooling2D(2),
    layers.Conv2D(64, 3, padding="same", activation="relu"),
    layers.MaxPooling2D(2),
    layers.Flatten(),
    layers.Dense(128, activation="relu"),
    layers.Dense(10, activation="softmax"),
], name=NAME)
model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])

warm = BATCH + len(x) % BATCH
model.fit(x[:warm], y[:warm], batch_size=BATCH, epochs=1, verbose=0)
start = time.perf_counter()
history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
seconds = time.perf_counter() - start
print(f"{NAME} keras batch {BATCH}: {len(x)} images in {seconds:.2f} s, {len(x) / seconds:.0f} images/s; "
      f"loss {history.history['loss'][-1]:.4f}, accuracy {history.history['accuracy'][-1]:.4f}, "
      f"{model.count_params()} parameters, backend {keras.backend.backend()}", flush=True)
