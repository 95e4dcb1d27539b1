"""keras.datasets: MNIST and Fashion-MNIST from fastconv.datasets (uint8 arrays, Keras layout)."""
from fastconv.datasets import fashion_mnist, mnist

__all__ = ["fashion_mnist", "mnist"]
