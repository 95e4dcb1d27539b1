"""A Keras 3 script: a keras.utils.PyDataset feeding fit a two-input, two-output functional model with
dicts keyed by the Input and output layer names, losses and metrics by output name, validation on a
PyDataset, then evaluate and predict on generators. Only the import differs from real Keras 3 (the
same file runs there with `import keras`)."""
import math

import numpy as np

from fastconv import keras
from fastconv.keras import layers


class ShapesDataset(keras.utils.PyDataset):
    """Batches of 16x16 images holding a bright square (class 0) or a bright bar (class 1), with a
    3-number description of each image; targets: the class and the image's mean brightness."""

    def __init__(self, count, batch_size, seed, **kwargs):
        super().__init__(**kwargs)
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 2, count)
        self.images = rng.uniform(0, 0.2, (count, 16, 16, 1)).astype("float32")
        for image, label, row, column in zip(self.images, self.labels, rng.integers(2, 10, count),
                                             rng.integers(2, 10, count)):
            if label == 0:
                image[row:row + 5, column:column + 5] = 1.0
            else:
                image[row:row + 1, 2:14] = 1.0
        self.meta = rng.standard_normal((count, 3)).astype("float32")
        self.batch_size = batch_size
        self.order = np.arange(count)

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index):
        batch = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        inputs = {"image": self.images[batch], "meta": self.meta[batch]}
        targets = {"shape": self.labels[batch], "brightness": self.images[batch].mean(axis=(1, 2))}
        return inputs, targets

    def on_epoch_end(self):
        np.random.default_rng(len(self.order)).shuffle(self.order)


keras.utils.set_random_seed(1)
image = keras.Input(shape=(16, 16, 1), name="image")
meta = keras.Input(shape=(3,), name="meta")
x = layers.Conv2D(8, 3, activation="relu")(image)
x = layers.MaxPooling2D(2)(x)
x = layers.Flatten()(x)
x = layers.concatenate([x, meta])
x = layers.Dense(32, activation="relu")(x)
shape = layers.Dense(2, activation="softmax", name="shape")(x)
brightness = layers.Dense(1, name="brightness")(x)
model = keras.Model(inputs=[image, meta], outputs=[shape, brightness])
model.compile(optimizer=keras.optimizers.Adam(learning_rate=3e-3),
              loss={"shape": "sparse_categorical_crossentropy", "brightness": "mse"},
              loss_weights={"shape": 1.0, "brightness": 0.5},
              metrics={"shape": ["accuracy"]})
model.summary()

train = ShapesDataset(480, 32, seed=0, workers=2, max_queue_size=4)
validation = ShapesDataset(128, 64, seed=1)
history = model.fit(train, epochs=4, validation_data=validation, verbose=2)


def test_batches():
    data = ShapesDataset(96, 32, seed=2)
    for i in range(len(data)):
        yield data[i]


results = model.evaluate(test_batches(), verbose=0, return_dict=True)
predictions = model.predict(test_batches(), verbose=0)
print("history keys:", sorted(history.history))
print("test accuracy:", round(float(results["shape_accuracy"]), 4))
print("predicted shapes:", predictions[0].shape, predictions[1].shape)
