"""Writes the .keras / .weights.h5 files real Keras 3 made, which tests/test_keras_format.py reads.

Run with real Keras (not part of the test suite), from this directory:
    KERAS_BACKEND=jax python make_fixtures.py
Between them the two models use every layer class fastconv reads from .keras files.
"""
import keras
import numpy as np

L = keras.layers


def sequential_model():
    return keras.Sequential([
        keras.Input((8, 8, 3)), L.Rescaling(1 / 255.0, offset=-0.5), L.ZeroPadding2D(((1, 0), (0, 1))),
        L.Conv2D(4, 3, activation="relu", kernel_regularizer="l2"), L.BatchNormalization(), L.ReLU(max_value=6.0),
        L.MaxPooling2D(), L.Conv2DTranspose(3, 3, strides=2, padding="same", kernel_initializer="he_normal"),
        L.Cropping2D(1), L.UpSampling2D(), L.AveragePooling2D(2), L.SpatialDropout2D(0.1),
        L.Conv2D(4, 1, use_bias=False), L.LeakyReLU(0.1), L.Flatten(), L.Dropout(0.2), L.Dense(5, activation="softmax"),
    ], name="seq_fixture")


def functional_model():
    image, vector = keras.Input((6, 6, 2), name="image"), keras.Input((4,), name="vector")
    shared = L.Dense(4, activation="tanh", name="shared")
    a, b = shared(vector), shared(L.Dense(4, name="project")(vector))
    merged = [L.Add()([a, b]), L.Subtract()([a, b]), L.Multiply()([a, b]), L.Average()([a, b]),
              L.Maximum()([a, b]), L.Minimum()([a, b])]
    pooled = L.GlobalMaxPooling2D()(L.Activation("sigmoid")(L.Conv2D(3, 3, padding="same")(image)))
    joined = L.Concatenate()(merged + [pooled, L.GlobalAveragePooling2D()(image)])
    logits = L.Dense(6)(joined)
    probabilities = L.Softmax(name="probabilities")(logits)
    grid = L.Reshape((2, 3))(logits)
    return keras.Model([image, vector], [probabilities, grid], name="functional_fixture")


def main():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    seq = sequential_model()
    seq.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    seq_x = rng.integers(0, 256, (24, 8, 8, 3)).astype("float32")
    seq.fit(seq_x, rng.integers(0, 5, 24), epochs=2, batch_size=8, verbose=0)
    seq.save("sequential.keras")
    seq.save_weights("sequential.weights.h5")

    func = functional_model()
    func.compile(optimizer="sgd", loss=["sparse_categorical_crossentropy", "mse"])
    image, vector = rng.random((24, 6, 6, 2)).astype("float32"), rng.random((24, 4)).astype("float32")
    func.fit([image, vector], [rng.integers(0, 6, 24), rng.random((24, 2, 3))], epochs=2, batch_size=8, verbose=0)
    func.save("functional.keras")
    probabilities, grid = func.predict([image, vector], verbose=0)
    np.savez("expected.npz", seq_x=seq_x, seq_y=seq.predict(seq_x, verbose=0), image=image, vector=vector,
             probabilities=probabilities, grid=grid,
             seq_layers=np.array([layer.name for layer in seq.layers]),
             func_layers=np.array([layer.name for layer in func.layers]))


if __name__ == "__main__":
    main()
