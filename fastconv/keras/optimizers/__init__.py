"""Optimizers with Keras 3's update rules and defaults (learning_rate=0.001 except SGD's 0.01).

Adadelta follows Keras 3 too (learning_rate=0.001, also when created from the string 'adadelta');
the classic Keras MNIST example's Adadelta() meant 1.0 and should now pass learning_rate=1.0.
Every optimizer accepts the older `lr=` spelling. The learning rate may be a schedule from
`keras.optimizers.schedules`, evaluated at the optimizer's step count. As in Keras 3, every optimizer
takes `weight_decay` (decoupled: w -= lr * weight_decay * w before each update); AdamW is Adam with it.
"""
import math

import numpy as np

from fastconv.keras import backend
from fastconv.keras.optimizers import schedules


class Optimizer:
    def __init__(self, learning_rate=0.001, name=None, lr=None, weight_decay=None):
        self.learning_rate = learning_rate if lr is None else lr
        if weight_decay is not None and (isinstance(weight_decay, bool) or
                                         not isinstance(weight_decay, (int, float, np.floating)) or
                                         not 0 <= weight_decay < math.inf):
            raise ValueError(f"weight_decay must be None or a finite number >= 0, got {weight_decay!r}")
        self.weight_decay = None if weight_decay is None else float(weight_decay)
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        self._slots = {}  # Variable -> its state arrays (momenta, accumulators)

    @property
    def learning_rate(self):
        """The current learning rate as a float (a schedule is evaluated at `iterations`)."""
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            return float(self._learning_rate(self.iterations))
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, schedules.LearningRateSchedule):
            self._learning_rate = value
            return
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not value >= 0:
            raise ValueError(f"learning_rate must be a non-negative number or a LearningRateSchedule, got {value!r}")
        self._learning_rate = float(value)

    lr = learning_rate  # the Keras 2 name

    def apply(self, grads, trainable_variables):
        """One update of each variable from its gradient (None skips it), then advance the step count.

        Keras 3's signature: `optimizer.apply(grads, model.trainable_variables)`.
        """
        grads, trainable_variables = list(grads), list(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(f"apply needs one gradient per variable, got {len(grads)} gradients for "
                             f"{len(trainable_variables)} variables")
        lr = self.learning_rate
        values, value_grads, slots = [], [], []
        for grad, variable in zip(grads, trainable_variables):
            if grad is None:
                continue
            value = getattr(variable, "value", None)
            if not isinstance(value, np.ndarray):
                raise TypeError(f"apply updates keras Variables, got {type(variable).__name__}")
            if type(grad) is not np.ndarray or grad.dtype != value.dtype:  # (a layer's gradient already is)
                grad = np.asarray(grad, dtype=value.dtype)
            if grad.shape != value.shape:
                raise ValueError(f"gradient of shape {grad.shape} for variable {variable.name!r} of shape {value.shape}")
            variable_slots = self._slots.get(variable)
            if variable_slots is None:
                variable_slots = self._slots[variable] = self._new_slots(value)
            values.append(value)
            value_grads.append(grad)
            slots.append(variable_slots)
        if len(set(map(id, values))) == len(values):
            self._decay_and_update_all(values, value_grads, lr, slots)
        else:  # a variable given twice is updated twice, one update after the other
            for value, grad, value_slots in zip(values, value_grads, slots):
                self._decay_and_update_all([value], [grad], lr, [value_slots])
        self.iterations += 1

    def _decay_and_update_all(self, values, grads, lr, slots):
        if self.weight_decay:
            for value in values:
                value -= value * value.dtype.type(lr * self.weight_decay)
        self._update_all(values, grads, lr, slots)

    def _update_all(self, values, grads, lr, slots):
        """Update each value from its gradient and slots. The optimizers with C kernels do all of a
        model's float32 weights in one call (see _fused)."""
        for value, grad, value_slots in zip(values, grads, slots):
            self._update(value, grad, lr, value_slots)

    def _fused(self, cls, values):
        """The ops to update all `values` in one call with, or None: when a subclass changed `cls`'s
        _update rule, or a value is not float32 (the NumPy reference takes those one by one)."""
        if type(self)._update is not cls._update or any(value.dtype != np.float32 for value in values):
            return None
        return backend.ops()

    def apply_gradients(self, grads_and_vars):
        """Keras' older form: an iterable of (gradient, variable) pairs."""
        pairs = list(grads_and_vars)
        self.apply([grad for grad, _ in pairs], [variable for _, variable in pairs])

    @property
    def variables(self):
        """The optimizer's state arrays (momenta, accumulators), in the order variables were first updated."""
        return [slot for slots in self._slots.values() for slot in slots]

    def _new_slots(self, value):
        return ()

    def _update(self, value, grad, lr, slots):
        raise NotImplementedError

    def get_config(self):
        lr = self._learning_rate
        config = {"learning_rate": schedules.serialize(lr) if isinstance(lr, schedules.LearningRateSchedule) else lr}
        if self.weight_decay is not None:
            config["weight_decay"] = self.weight_decay
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        return cls(**config)


def _check_unit_interval(value, name):
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


class SGD(Optimizer):
    """v = momentum * v - lr * g; w += v (nesterov: w += momentum * v - lr * g)."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.momentum = _check_unit_interval(momentum, "momentum")
        self.nesterov = bool(nesterov)

    def _new_slots(self, value):
        return (np.zeros_like(value),) if self.momentum else ()

    def _update(self, value, grad, lr, slots):
        velocity = slots[0] if self.momentum else None
        backend.ops_for(value).sgd_update(value, grad, lr, self.momentum, velocity, self.nesterov)

    def _update_all(self, values, grads, lr, slots):
        ops = self._fused(SGD, values)
        if ops is None:
            return super()._update_all(values, grads, lr, slots)
        velocities = [value_slots[0] for value_slots in slots] if self.momentum else None
        ops.sgd_update_all(values, grads, lr, self.momentum, velocities, self.nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.beta_1 = _check_unit_interval(beta_1, "beta_1")
        self.beta_2 = _check_unit_interval(beta_2, "beta_2")
        self.epsilon = float(epsilon)

    def _new_slots(self, value):
        return np.zeros_like(value), np.zeros_like(value)

    def _learning_rate_t(self, lr):
        """This step's learning rate with Adam's bias corrections applied (as Keras does)."""
        step = self.iterations + 1
        return lr * math.sqrt(1 - self.beta_2 ** step) / (1 - self.beta_1 ** step)

    def _update(self, value, grad, lr, slots):
        m, v = slots
        backend.ops_for(value).adam_update(value, grad, m, v, self._learning_rate_t(lr), self.beta_1, self.beta_2,
                                           self.epsilon)

    def _update_all(self, values, grads, lr, slots):
        ops = self._fused(Adam, values)
        if ops is None:
            return super()._update_all(values, grads, lr, slots)
        ops.adam_update_all(values, grads, [m for m, _ in slots], [v for _, v in slots], self._learning_rate_t(lr),
                            self.beta_1, self.beta_2, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras 3's default 0.004)."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay=weight_decay, **kwargs)


class Nadam(Adam):
    """Adam with Nesterov momentum, Keras 3's update (Dozat's momentum schedule)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, **kwargs)
        self._momentum_product = 1.0  # the product of the schedule's momenta over the steps taken

    def _momentum(self, step):
        # Keras 3's schedule (0.96 ** step; Keras 2 / tf.keras had 0.96 ** (0.004 * step)).
        return self.beta_1 * (1 - 0.5 * 0.96 ** step)

    def apply(self, grads, trainable_variables):
        step = self.iterations + 1
        super().apply(grads, trainable_variables)
        self._momentum_product *= self._momentum(step)

    def _update(self, value, grad, lr, slots):
        m, v = slots
        step = self.iterations + 1
        momentum, next_momentum = self._momentum(step), self._momentum(step + 1)
        product = self._momentum_product * momentum
        m += (grad - m) * (1 - self.beta_1)
        v += (grad * grad - v) * (1 - self.beta_2)
        m_hat = next_momentum * m / (1 - product * next_momentum) + (1 - momentum) * grad / (1 - product)
        v_hat = v / (1 - self.beta_2 ** step)
        value -= lr * m_hat / (np.sqrt(v_hat) + self.epsilon)


class RMSprop(Optimizer):
    """v = rho * v + (1 - rho) * g^2; w -= lr * g / sqrt(v + epsilon) (Keras 3 places epsilon inside)."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.rho = _check_unit_interval(rho, "rho")
        self.momentum = _check_unit_interval(momentum, "momentum")
        self.epsilon = float(epsilon)

    def _new_slots(self, value):
        return (np.zeros_like(value), np.zeros_like(value)) if self.momentum else (np.zeros_like(value),)

    def _update(self, value, grad, lr, slots):
        velocity = slots[0]
        momentum_buffer = slots[1] if self.momentum else None
        backend.ops_for(value).rmsprop_update(value, grad, velocity, lr, self.rho, self.epsilon, self.momentum,
                                              momentum_buffer)

    def _update_all(self, values, grads, lr, slots):
        ops = self._fused(RMSprop, values)
        if ops is None:
            return super()._update_all(values, grads, lr, slots)
        momentum_buffers = [value_slots[1] for value_slots in slots] if self.momentum else None
        ops.rmsprop_update_all(values, grads, [value_slots[0] for value_slots in slots], lr, self.rho, self.epsilon,
                               self.momentum, momentum_buffers)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon}


class Adagrad(Optimizer):
    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        if initial_accumulator_value < 0:
            raise ValueError(f"initial_accumulator_value must be >= 0, got {initial_accumulator_value!r}")
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)

    def _new_slots(self, value):
        return (np.full_like(value, self.initial_accumulator_value),)

    def _update(self, value, grad, lr, slots):
        (accumulator,) = slots
        accumulator += grad * grad
        value -= lr * grad / np.sqrt(accumulator + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


class Adadelta(Optimizer):
    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.rho = _check_unit_interval(rho, "rho")
        self.epsilon = float(epsilon)

    def _new_slots(self, value):
        return np.zeros_like(value), np.zeros_like(value)

    def _update(self, value, grad, lr, slots):
        accumulated_grad, accumulated_delta = slots
        backend.ops_for(value).adadelta_update(value, grad, accumulated_grad, accumulated_delta, lr, self.rho, self.epsilon)

    def _update_all(self, values, grads, lr, slots):
        ops = self._fused(Adadelta, values)
        if ops is None:
            return super()._update_all(values, grads, lr, slots)
        ops.adadelta_update_all(values, grads, [g for g, _ in slots], [d for _, d in slots], lr, self.rho,
                                self.epsilon)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


class Adamax(Adam):
    """Adam with the infinity norm: u = max(beta_2 * u, |g|), w -= lr * m / ((1 - beta_1^t) (u + epsilon)).
    Adam's arguments, state and config; its own update (so Adam's fused C update is not used)."""

    def _update(self, value, grad, lr, slots):
        m, u = slots
        m += (grad - m) * (1 - self.beta_1)
        np.maximum(self.beta_2 * u, np.abs(grad), out=u)
        value -= lr * m / ((1 - self.beta_1 ** (self.iterations + 1)) * (u + self.epsilon))


class Lion(Optimizer):
    """w -= lr * sign(beta_1 * m + (1 - beta_1) * g), then m = beta_2 * m + (1 - beta_2) * g (Chen et al., 2023)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.beta_1 = _check_unit_interval(beta_1, "beta_1")
        self.beta_2 = _check_unit_interval(beta_2, "beta_2")

    def _new_slots(self, value):
        return (np.zeros_like(value),)

    def _update(self, value, grad, lr, slots):
        (m,) = slots
        value -= lr * np.sign(m * self.beta_1 + grad * (1 - self.beta_1))
        m *= self.beta_2
        m += grad * (1 - self.beta_2)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2}


OPTIMIZER_CLASSES = {cls.__name__: cls for cls in (SGD, Adam, AdamW, Nadam, RMSprop, Adagrad, Adadelta, Adamax, Lion)}
_BY_NAME = {name.lower(): cls for name, cls in OPTIMIZER_CLASSES.items()}


def get(identifier):
    """An Optimizer from a name ("adam"), a class, an instance, or a {"class_name", "config"} dict."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        return identifier()
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict) and identifier.get("class_name") in OPTIMIZER_CLASSES:
        config = identifier.get("config", {})
        if not isinstance(config, dict):
            raise ValueError(f"optimizer config must be a dict, got {config!r}")
        return OPTIMIZER_CLASSES[identifier["class_name"]].from_config(config)
    raise ValueError(f"unknown optimizer {identifier!r}; expected one of {', '.join(_BY_NAME)} or an Optimizer")


def serialize(optimizer):
    cls = type(optimizer)
    if OPTIMIZER_CLASSES.get(cls.__name__) is not cls:
        return None
    return {"class_name": cls.__name__, "config": optimizer.get_config()}
