"""Learning-rate schedules: the factor by which an optimizer scales its ``lr`` at step ``t``
(the number of steps taken before this one). Each is a small value object that model files
save by ``config()`` and rebuild with ``schedule_from_config``."""

import math

from .errors import ConfigError
from .kernels.checks import number


class Constant:
    """lr_t = lr."""

    @classmethod
    def from_settings(cls, settings, steps_per_epoch):
        return cls()

    def __call__(self, t):
        return 1.0

    def config(self):
        return {}


class InverseTime:
    """lr_t = lr / (1 + decay * t): the original project's decay."""

    def __init__(self, decay=1e-3):
        self.decay = number("decay", decay, lambda v: v >= 0, "a value >= 0")

    @classmethod
    def from_settings(cls, settings, steps_per_epoch):
        return cls(settings.decay)

    def __call__(self, t):
        return 1.0 / (1.0 + self.decay * t)

    def config(self):
        return {"decay": self.decay}


class Cosine:
    """lr_t = lr * (final + (1 - final) * (1 + cos(pi * t / steps)) / 2): from lr down to
    ``final * lr`` over ``steps`` steps (the whole run), then held there."""

    def __init__(self, steps, final=0.0):
        self.steps = int(number("steps", steps, lambda v: v >= 1 and v == int(v), "a whole number of steps >= 1"))
        self.final = number("final", final, lambda v: 0 <= v <= 1, "a fraction of lr in [0, 1]")

    @classmethod
    def from_settings(cls, settings, steps_per_epoch):
        return cls(settings.epochs * steps_per_epoch)  # the curve spans the whole run

    def __call__(self, t):
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * min(t, self.steps) / self.steps))

    def config(self):
        return {"steps": self.steps, "final": self.final}


# A run's settings name its schedule here (``--schedule``); model files record it by this name too.
SCHEDULES = {"constant": Constant, "inverse-time": InverseTime, "cosine": Cosine}


def make_schedule(settings, steps_per_epoch):
    """The schedule a run's ``settings`` (resolved) ask for, with ``steps_per_epoch`` steps an epoch."""
    return SCHEDULES[settings.schedule].from_settings(settings, steps_per_epoch)


def schedule_name(schedule):
    return next(name for name, cls in SCHEDULES.items() if type(schedule) is cls)


def schedule_from_config(name, config):
    if name not in SCHEDULES:
        raise ConfigError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name](**config)
