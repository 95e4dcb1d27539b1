"""Weight penalties added to the training loss: L1, L2 and L1L2 (Keras' names and defaults)."""
import numpy as np


class Regularizer:
    def __call__(self, weights):
        """The penalty, a float."""
        raise NotImplementedError

    def gradient(self, weights):
        """d(penalty)/d(weights), an array shaped like weights."""
        raise NotImplementedError


class L1L2(Regularizer):
    def __init__(self, l1=0.0, l2=0.0):
        self.l1, self.l2 = float(l1), float(l2)
        if self.l1 < 0 or self.l2 < 0:
            raise ValueError(f"l1 and l2 must be non-negative, got l1={l1!r}, l2={l2!r}")

    def __call__(self, weights):
        return float(self.l1 * np.abs(weights).sum() + self.l2 * np.square(weights).sum())

    def gradient(self, weights):
        return (self.l1 * np.sign(weights) + (2 * self.l2) * weights).astype(weights.dtype, copy=False)

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    def __init__(self, l1=0.01):
        super().__init__(l1=l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    def __init__(self, l2=0.01):
        super().__init__(l2=l2)

    def get_config(self):
        return {"l2": self.l2}


def l1(l1=0.01):  # noqa: E741 (Keras' spelling)
    return L1(l1)


def l2(l2=0.01):
    return L2(l2)


def l1_l2(l1=0.01, l2=0.01):  # noqa: E741
    return L1L2(l1, l2)


_BY_NAME = {"l1": L1, "l2": L2, "l1_l2": L1L2}
_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}


def get(identifier):
    """None, a Regularizer, a name ("l2" = L2(0.01) as in Keras) or a {"class_name", "config"} dict."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]() if identifier.lower() != "l1_l2" else L1L2(0.01, 0.01)
    if isinstance(identifier, dict) and identifier.get("class_name") in _CLASSES:
        config = identifier.get("config", {})
        if not isinstance(config, dict):
            raise ValueError(f"regularizer config must be a dict, got {config!r}")
        return _CLASSES[identifier["class_name"]](**config)
    raise ValueError(f"unknown regularizer {identifier!r}; expected None, 'l1', 'l2', 'l1_l2' or a Regularizer")


def serialize(regularizer):
    if regularizer is None:
        return None
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}
