"""keras.datasets: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from fastconv.datasets (uint8 arrays, Keras layout)."""
from fastconv.datasets import cifar10, cifar100, fashion_mnist, mnist

__all__ = ["cifar10", "cifar100", "fashion_mnist", "mnist"]
