"""Data sets in the Keras layout: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` (``load_data()``).

Also ``read_idx`` for any IDX file. Depends only on numpy and the standard library.
"""

from . import cifar10, cifar100, fashion_mnist, mnist
from .idx import read_idx

__all__ = ["cifar10", "cifar100", "fashion_mnist", "mnist", "read_idx"]
