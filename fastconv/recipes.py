"""The MNIST models of the `fastconv train` command, written with the Keras API.

Every model takes uint8 images (N, 28, 28, 1) and rescales them itself, so datasets stay uint8 in
memory and are converted to float32 one batch at a time.
"""
from dataclasses import dataclass

from fastconv import keras
from fastconv.keras import layers


@dataclass(frozen=True)
class Recipe:
    """A model plus the training settings it was tuned with."""
    description: str
    build: object        # () -> uncompiled keras model
    optimizer: str
    learning_rate: float
    batch_size: int
    epochs: int
    augment: bool = False
    decay_per_epoch: float = 1.0  # learning rate multiplied by this after every epoch

    def compiled_model(self, optimizer=None, learning_rate=None):
        """The model, compiled for sparse labels with the recipe's optimizer (or `optimizer`, a name)."""
        model = self.build()
        chosen = keras.optimizers.get(optimizer or self.optimizer)
        chosen.learning_rate = learning_rate or self.learning_rate
        model.compile(optimizer=chosen, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model


def _inputs():
    return [keras.Input(shape=(28, 28, 1)), layers.Rescaling(1.0 / 255)]


def seed():
    return keras.Sequential(_inputs() + [
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], name="seed")


def keras_cnn():
    """The Keras mnist_cnn example."""
    return keras.Sequential(_inputs() + [
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ], name="keras_cnn")


def lenet5():
    return keras.Sequential(_inputs() + [
        layers.Conv2D(6, 5, padding="same", activation="relu"),
        layers.AveragePooling2D(2),
        layers.Conv2D(16, 5, activation="relu"),
        layers.AveragePooling2D(2),
        layers.Flatten(),
        layers.Dense(120, activation="relu"),
        layers.Dense(84, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], name="lenet5")


def mlp():
    return keras.Sequential(_inputs() + [
        layers.Flatten(),
        layers.Dense(512, activation="relu"),
        layers.Dropout(0.2),
        layers.Dense(512, activation="relu"),
        layers.Dropout(0.2),
        layers.Dense(10, activation="softmax"),
    ], name="mlp")


def _conv_bn_relu(filters):
    return [layers.Conv2D(filters, 3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU()]


def best():
    """Batch-normalised VGG-style net; trained with shifted/rotated digits and a decaying rate."""
    return keras.Sequential(_inputs() + _conv_bn_relu(32) + [layers.MaxPooling2D(2)] + _conv_bn_relu(64)
                            + _conv_bn_relu(64) + [layers.MaxPooling2D(2), layers.Flatten()]
                            + [layers.Dense(256, use_bias=False), layers.BatchNormalization(), layers.ReLU(),
                               layers.Dropout(0.4), layers.Dense(10, activation="softmax")], name="best")


RECIPES = {
    "seed": Recipe("conv32(same)-pool-conv64(same)-pool-dense128-dense10", seed, "adam", 1e-3, 64, 3),
    "keras-cnn": Recipe("the Keras mnist_cnn example (conv32-conv64-pool-dropout-dense128-dropout)", keras_cnn,
                        "adadelta", 1.0, 128, 12),
    "lenet5": Recipe("LeNet-5 with ReLU and average pooling", lenet5, "adam", 1e-3, 64, 5),
    "mlp": Recipe("two hidden layers of 512 with dropout", mlp, "adam", 1e-3, 128, 10),
    "best": Recipe("batch-normalised conv net, augmentation, decaying learning rate", best, "adam", 2e-3, 64, 12,
                   augment=True, decay_per_epoch=0.75),
}
