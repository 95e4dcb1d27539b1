#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris/libFuzzer) of the model-file loader, fastconv.keras.load_model.

    pip install atheris
    python tools/fuzz_model.py -max_total_time=180        # 3 minutes; prints "Done N runs in S second(s)"
    python tools/fuzz_model.py CORPUS_DIR -runs=100000    # any libFuzzer flags; CORPUS_DIR is created and seeded

The corpus is seeded with small saved models (Sequential and functional, with and without compile
settings, weights-only). Each input is written to a file and loaded with load_model and, into a
fixed model, with load_weights; a loaded model must also predict. The only accepted outcomes are a
model or a ValueError; any other exception is a finding (written to crash-*).
"""
import atexit
import os
import shutil
import sys
import tempfile

import atheris
import numpy as np

with atheris.instrument_imports(include=["fastconv.keras"]):
    from fastconv import keras

SCRATCH = tempfile.mkdtemp(prefix="fastconv-fuzz-model-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
FILE = os.path.join(SCRATCH, "input.fastconv")


def small_model():
    return keras.Sequential([
        keras.Input(shape=(6, 6, 1)),
        keras.layers.Conv2D(2, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])


def functional_model():
    inputs = keras.Input(shape=(4, 4, 2))
    a = keras.layers.Conv2D(3, 1, padding="same")(inputs)
    b = keras.layers.AveragePooling2D(2, padding="same")(a)
    c = keras.layers.BatchNormalization()(b)
    d = keras.layers.GlobalAveragePooling2D()(c)
    e = keras.layers.Concatenate()([d, keras.layers.Dense(3)(d)])
    return keras.Model(inputs, keras.layers.Dropout(0.1)(e))


TARGET = small_model()


def seeds(directory):
    model = small_model()
    model.save(os.path.join(directory, "sequential_plain"))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(os.path.join(directory, "sequential_compiled"))
    model.save_weights(os.path.join(directory, "weights_only"))
    other = functional_model()
    other.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    other.save(os.path.join(directory, "functional_compiled"))


def TestOneInput(data):
    with open(FILE, "wb") as f:
        f.write(data)
    try:
        model = keras.models.load_model(FILE)
    except ValueError:
        pass
    else:
        shape = model.input_shape[1:]
        if all(isinstance(d, int) and 0 < d <= 64 for d in shape) and int(np.prod(shape)) <= 4096:
            model.predict(np.zeros((1, *shape), dtype=np.float32), verbose=0)
    try:
        TARGET.load_weights(FILE)
    except ValueError:
        pass


def main():
    args = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    flags = [arg for arg in sys.argv[1:] if arg.startswith("-")]
    corpus = args[0] if args else os.path.join(tempfile.gettempdir(), "fastconv-fuzz-model")
    os.makedirs(corpus, exist_ok=True)
    if not os.listdir(corpus):
        seeds(corpus)
    if not any(flag.startswith("-rss_limit_mb") for flag in flags):
        flags.append("-rss_limit_mb=2048")
    if not any(flag.startswith("-max_len") for flag in flags):
        flags.append("-max_len=8192")
    atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
    atheris.Setup([sys.argv[0], *flags, corpus, *args[1:]], TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
