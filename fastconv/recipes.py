"""The models of the `fastconv train` command (MNIST-like and CIFAR-10), written with the Keras API.

Every model takes uint8 images ((N, 28, 28, 1) digits, (N, 32, 32, 3) CIFAR-10) and rescales them
itself, so datasets stay uint8 in memory and are converted to float32 one batch at a time.
"""
from dataclasses import dataclass

from fastconv import keras
from fastconv.augment import random_shift_rotate
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
    input_shape: tuple = (28, 28, 1)  # of one uint8 image
    # (uint8 images, rng) -> a new random variant of each, applied before every epoch when augmenting;
    # None for a model whose own augmentation layers vary the images at every step.
    augmentation: object = random_shift_rotate

    def compiled_model(self, optimizer=None, learning_rate=None):
        """The model, compiled for sparse labels with the recipe's optimizer (or `optimizer`, a name)."""
        model = self.build()
        chosen = keras.optimizers.get(optimizer or self.optimizer)
        chosen.learning_rate = learning_rate or self.learning_rate
        model.compile(optimizer=chosen, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model


def _inputs(shape=(28, 28, 1)):
    return [keras.Input(shape=shape), layers.Rescaling(1.0 / 255)]


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


def cifar():
    """Random mirroring and shifts of up to 4 pixels (active only in training), then three VGG-style
    blocks of two batch-normalised 3x3 convolutions (32, 64, 128 filters)."""
    augmentation = [layers.RandomFlip("horizontal"), layers.RandomTranslation(0.125, 0.125)]
    blocks = []
    for filters in (32, 64, 128):
        blocks += _conv_bn_relu(filters) + _conv_bn_relu(filters) + [layers.MaxPooling2D(2)]
    return keras.Sequential(_inputs((32, 32, 3)) + augmentation + blocks + [
        layers.Flatten(), layers.Dropout(0.3), layers.Dense(10, activation="softmax")], name="cifar")


RECIPES = {
    "seed": Recipe("conv32(same)-pool-conv64(same)-pool-dense128-dense10", seed, "adam", 1e-3, 64, 3),
    "keras-cnn": Recipe("the Keras mnist_cnn example (conv32-conv64-pool-dropout-dense128-dropout)", keras_cnn,
                        "adadelta", 1.0, 128, 12),
    "lenet5": Recipe("LeNet-5 with ReLU and average pooling", lenet5, "adam", 1e-3, 64, 5),
    "mlp": Recipe("two hidden layers of 512 with dropout", mlp, "adam", 1e-3, 128, 10),
    "best": Recipe("batch-normalised conv net, augmentation, decaying learning rate", best, "adam", 2e-3, 64, 12,
                   augment=True, decay_per_epoch=0.75),
    "cifar": Recipe("CIFAR-10: RandomFlip and RandomTranslation layers, three blocks of two batch-normalised "
                    "convolutions (32, 64, 128)", cifar, "adam", 1e-3, 64, 20, decay_per_epoch=0.9,
                    input_shape=(32, 32, 3), augmentation=None),
}
