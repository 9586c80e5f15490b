"""Optimizers over a model's flat parameter buffer: one fused kernel pass per step each.

- ``SGD``: momentum in the original project's (Keras's) form, v = momentum * v - lr_t * g,
  p += v, with lr_t = lr / (1 + decay * t) by default.
- ``Adam``: PyTorch's ``torch.optim.Adam`` update.

``weight_decay`` adds ``weight_decay * p`` to every gradient (L2, as PyTorch's ``weight_decay``);
BatchNorm's scales and shifts included, as in PyTorch. ``schedule`` (``fastcnn.schedules``) scales
the learning rate by step. An optimizer's state is its ``state`` arrays (one per parameter each)
and ``steps``; model files save them with ``config()`` and ``optimizer_from_config`` rebuilds one.
"""

import weakref

import numpy as np

from .errors import ShapeError
from .kernels.checks import Checked, in_range, non_negative_int, number
from .model import checked
from .schedules import Constant, InverseTime, make_schedule, schedule_from_config, schedule_name
from .validate import FLOAT32_MAX, learning_rate



class Optimizer:
    """What every optimizer has: the model, ``lr``, ``weight_decay``, ``schedule``, ``steps``
    taken, and its ``state`` (name -> flat float32 array like ``model.parameters``)."""

    lr = Checked(learning_rate)  # each checked whenever it is set: in the constructor, or between steps
    weight_decay = Checked(in_range(lambda v: 0 <= v <= FLOAT32_MAX, "a value >= 0 (that float32 holds)"))

    def __init__(self, model, lr, weight_decay, schedule, state_names):
        self.model = checked(model)
        self.lr, self.weight_decay = lr, weight_decay
        if not callable(schedule) or not hasattr(schedule, "config"):
            raise ShapeError(f"schedule: expected one of fastcnn.schedules' schedules, got {schedule!r}")
        self.schedule = schedule
        self.state = {name: np.zeros_like(model.parameters) for name in state_names}
        self.steps = 0
        model._optimizer = weakref.ref(self)  # its step is compiled with the model's first training pass

    @property
    def current_lr(self):
        return self.lr * self.schedule(self.steps)

    def step(self):
        """Apply the gradients the last backward pass left in ``model.gradients``."""
        self._update(self.model.parameters, self.state, self.model.gradients, self.steps)
        self.steps += 1

    def rehearse(self):
        """The step on copies of the parameters, gradients and state: for ``compiling.prepare``."""
        self._update(self.model.parameters.copy(), {k: v.copy() for k, v in self.state.items()},
                     self.model.gradients.copy(), self.steps)

    def config(self):
        return {"type": type(self).__name__, "lr": self.lr, "weight_decay": self.weight_decay,
                "schedule": [schedule_name(self.schedule), self.schedule.config()], "steps": self.steps,
                **self.hyperparameters()}

    def __repr__(self):
        args = {"lr": self.lr, **self.hyperparameters(), "weight_decay": self.weight_decay}
        return (f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())}, "
                f"schedule={schedule_name(self.schedule)})")


def not_made_for(model, optimizer):
    """Why ``optimizer`` is not a fastcnn optimizer made for ``model`` (fit trains, and a checkpoint
    keeps, only such a one), for an error; None if it is one."""
    if isinstance(optimizer, Optimizer) and optimizer.model is model:
        return None
    other = " made for another model" if isinstance(optimizer, Optimizer) else ""
    return (f"optimizer: expected a fastcnn optimizer (SGD, Adam) made for this model, got "
            f"{type(optimizer).__name__}{other}")


class SGD(Optimizer):
    """SGD with momentum; ``decay`` is the original's inverse-time decay, used unless another
    ``schedule`` is given."""

    momentum = Checked(in_range(lambda v: 0 <= v < 1, "a value in [0, 1)"))

    def __init__(self, model, lr, momentum=0.9, decay=1e-3, weight_decay=0.0, schedule=None):
        super().__init__(model, lr, weight_decay, InverseTime(decay) if schedule is None else schedule,
                         ["velocity"])
        self.momentum = momentum

    @property
    def velocity(self):
        return self.state["velocity"]

    @classmethod
    def from_settings(cls, model, settings, schedule):
        return cls(model, settings.lr, settings.momentum, weight_decay=settings.weight_decay, schedule=schedule)

    def hyperparameters(self):
        return {"momentum": self.momentum}

    def _update(self, params, state, grads, taken):
        self.model.kernels.sgd_momentum_into(params, state["velocity"], grads, self.lr * self.schedule(taken),
                                             self.momentum, self.weight_decay)


def _betas(name, betas):
    """Adam's (beta1, beta2): a pair of numbers in [0, 1), as a tuple of floats."""
    if isinstance(betas, str) or not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ShapeError(f"{name}: expected a pair (beta1, beta2), got {betas!r}")
    return tuple(number(name, b, lambda v: 0 <= v < 1, "values in [0, 1)") for b in betas)


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (``weight_decay`` is L2 added to the gradient, not AdamW)."""

    eps = Checked(in_range(lambda v: 0 < v <= FLOAT32_MAX, "a value > 0 (that float32 holds)"))
    betas = Checked(_betas)

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, schedule=None):
        super().__init__(model, lr, weight_decay, Constant() if schedule is None else schedule, ["m", "v"])
        self.betas = betas
        self.eps = eps

    @classmethod
    def from_settings(cls, model, settings, schedule):
        return cls(model, settings.lr, weight_decay=settings.weight_decay, schedule=schedule)

    def hyperparameters(self):
        return {"betas": list(self.betas), "eps": self.eps}

    def _update(self, params, state, grads, taken):
        # Adam's bias corrections count this step as t = taken + 1 = 1, 2, ...
        self.model.kernels.adam_into(params, state["m"], state["v"], grads, self.lr * self.schedule(taken),
                                     self.betas[0], self.betas[1], self.eps, self.weight_decay, taken + 1)


# A run's settings name its optimizer here (``--optimizer``); model files record its class's name.
OPTIMIZERS = {"sgd": SGD, "adam": Adam}
_BY_CLASS_NAME = {cls.__name__: cls for cls in OPTIMIZERS.values()}


def make_optimizer(model, settings, steps_per_epoch):
    """The optimizer, with its schedule, that a run's ``settings`` (resolved) ask for."""
    return OPTIMIZERS[settings.optimizer].from_settings(model, settings, make_schedule(settings, steps_per_epoch))


def optimizer_from_config(model, config):
    """The optimizer a model file's ``config()`` describes, with zeroed state (fill it after);
    files from before Adam hold an SGD config without "type" or "schedule"."""
    config = dict(config)
    kind = config.pop("type", "SGD")
    if kind not in _BY_CLASS_NAME:
        raise ShapeError(f"optimizer: unknown type {kind!r}; expected one of {sorted(_BY_CLASS_NAME)}")
    steps = config.pop("steps")
    schedule = config.pop("schedule", None)
    if schedule is not None:
        config["schedule"] = schedule_from_config(*schedule)
    optimizer = _BY_CLASS_NAME[kind](model, **config)
    optimizer.steps = non_negative_int("steps", steps)
    return optimizer
