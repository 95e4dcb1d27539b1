"""Learning-rate schedules: callables from the optimizer's step count to a learning rate."""
import math


class LearningRateSchedule:
    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError


class ExponentialDecay(LearningRateSchedule):
    """initial_learning_rate * decay_rate ** (step / decay_steps); staircase floors the exponent (a step decay)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        if not initial_learning_rate > 0:
            raise ValueError(f"initial_learning_rate must be positive, got {initial_learning_rate!r}")
        if not decay_steps > 0:
            raise ValueError(f"decay_steps must be positive, got {decay_steps!r}")
        if not decay_rate > 0:
            raise ValueError(f"decay_rate must be positive, got {decay_rate!r}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = decay_steps
        self.decay_rate = float(decay_rate)
        self.staircase = bool(staircase)

    def __call__(self, step):
        exponent = step / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return self.initial_learning_rate * self.decay_rate ** exponent

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase}


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[i] while boundaries[i-1] < step <= boundaries[i] (Keras' step decay by explicit boundaries)."""

    def __init__(self, boundaries, values):
        boundaries, values = list(boundaries), [float(v) for v in values]
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"values must have one more entry than boundaries, got {len(values)} values "
                             f"for {len(boundaries)} boundaries")
        if any(b >= c for b, c in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be increasing, got {boundaries}")
        self.boundaries, self.values = boundaries, values

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values}


class CosineDecay(LearningRateSchedule):
    """Cosine decay from initial_learning_rate (or, after a linear warm-up of warmup_steps from it, from
    warmup_target) to alpha times that over decay_steps, then constant; Keras 3's formula."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        if not initial_learning_rate >= 0:
            raise ValueError(f"initial_learning_rate must be >= 0, got {initial_learning_rate!r}")
        if not decay_steps > 0:
            raise ValueError(f"decay_steps must be positive, got {decay_steps!r}")
        if not warmup_steps >= 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), decay_steps
        self.alpha, self.name = float(alpha), name
        self.warmup_target = None if warmup_target is None else float(warmup_target)
        self.warmup_steps = warmup_steps

    def _decay(self, step, decay_from):
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return decay_from * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            return (self.warmup_target - self.initial_learning_rate) * step / self.warmup_steps + \
                self.initial_learning_rate
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}


SCHEDULE_CLASSES = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstantDecay, CosineDecay)}


def serialize(schedule):
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config):
    if not isinstance(config, dict) or config.get("class_name") not in SCHEDULE_CLASSES:
        raise ValueError(f"unknown learning-rate schedule {config!r}")
    return SCHEDULE_CLASSES[config["class_name"]](**config.get("config", {}))
