"""Data sets in the Keras layout: ``mnist.load_data()``, ``fashion_mnist.load_data()``.

Also ``read_idx`` for any IDX file. Depends only on numpy and the standard library.
"""

from . import fashion_mnist, mnist
from .idx import read_idx

__all__ = ["fashion_mnist", "mnist", "read_idx"]
