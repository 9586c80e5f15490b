"""SGD with momentum and learning-rate decay, as in the original project:
lr_t = lr / (1 + decay * t), t the number of steps taken before this one."""

import math

import numpy as np

from .errors import ShapeError


class SGD:
    def __init__(self, model, lr, momentum=0.9, decay=1e-3):
        if not (lr > 0 and math.isfinite(lr)):
            raise ShapeError(f"lr: expected a learning rate > 0, got {lr!r}")
        if not 0 <= momentum < 1:
            raise ShapeError(f"momentum: expected a value in [0, 1), got {momentum!r}")
        if not decay >= 0:
            raise ShapeError(f"decay: expected a value >= 0, got {decay!r}")
        self.model, self.lr, self.momentum, self.decay = model, float(lr), float(momentum), float(decay)
        self.velocity = np.zeros_like(model.parameters)
        self.steps = 0

    @property
    def current_lr(self):
        return self.lr / (1.0 + self.decay * self.steps)

    def step(self):
        """Apply the gradients the last ``model.backward`` left in ``model.gradients``."""
        self.model.kernels.sgd_momentum_into(self.model.parameters, self.velocity, self.model.gradients,
                                        self.current_lr, self.momentum, 0.0)
        self.steps += 1
