"""The optimizers' updates, each one fused pass over one flat buffer of every parameter.

SGD with momentum (the classic form, as Keras applies it):
    g = grad + weight_decay * p;  v = momentum * v - lr * g;  p += v
Adam (``torch.optim.Adam``'s rule exactly: L2 weight decay added to the gradient, not AdamW),
t the 1-based number of this step:
    g = grad + weight_decay * p;  m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

A velocity (or Adam moment) that decays below the smallest normal float32 (a weight whose
gradient stays 0, such as one fed by an always-dark pixel, shrinks by ``momentum`` every step) is
flushed to 0: every operation on a subnormal float costs x86 a microcode assist, and once 65% of
the velocities got there (after ~1,000 steps) a training step took 5.4 ms instead of 3.6
(measured). The change is below 1.2e-38 per weight; a NaN is kept, as the reference keeps it.
"""

import math

import numpy as np
from numba import prange

from . import checks
from .jit import parallel_kernel


_TINY = np.float32(np.finfo(np.float32).tiny)


@parallel_kernel
def _sgd_momentum(params, velocity, grads, lr, momentum, weight_decay):
    for i in prange(params.size):
        v = momentum * velocity[i] - lr * (grads[i] + weight_decay * params[i])
        v = np.float32(0.0) if abs(v) < _TINY else v  # (NaN stays NaN: fit stops on it)
        velocity[i] = v
        params[i] += v


@parallel_kernel
def _adam(params, m, v, grads, step_size, beta1, beta2, rest1, rest2, eps, weight_decay, root_correction2):
    for i in prange(params.size):
        g = grads[i] + weight_decay * params[i]
        mi = beta1 * m[i] + rest1 * g
        vi = beta2 * v[i] + rest2 * g * g
        mi = np.float32(0.0) if abs(mi) < _TINY else mi
        vi = np.float32(0.0) if vi < _TINY else vi
        m[i] = mi
        v[i] = vi
        params[i] -= step_size * mi / (np.sqrt(vi) / root_correction2 + eps)


def sgd_momentum_into(params, velocity, grads, lr, momentum, weight_decay):
    _sgd_momentum(params, velocity, grads, np.float32(lr), np.float32(momentum), np.float32(weight_decay))


def sgd_momentum(params, velocity, grads, lr, momentum, weight_decay=0.0):
    """Update ``params`` and ``velocity`` (flat float32, in place) from ``grads`` for one step."""
    for name, a in (("params", params), ("velocity", velocity), ("grads", grads)):
        checks.flat_buffer(name, a, np.size(params))
    sgd_momentum_into(params, velocity, grads, lr, momentum, weight_decay)


def adam_into(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, step):
    # The scalars in float64, once per step, as PyTorch computes them: 1 - beta2 in float32
    # would be 1.3e-5 off for beta2 = 0.999.
    f32 = np.float32
    step_size = lr / (1.0 - beta1 ** step)
    root_correction2 = math.sqrt(1.0 - beta2 ** step)
    _adam(params, m, v, grads, f32(step_size), f32(beta1), f32(beta2), f32(1.0 - beta1), f32(1.0 - beta2), f32(eps),
          f32(weight_decay), f32(root_correction2))


def adam(params, m, v, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1):
    """Update ``params`` and the moments ``m`` and ``v`` (flat float32, in place) from ``grads``;
    ``step`` is the 1-based number of this step (m and v start at 0 before step 1)."""
    for name, a in (("params", params), ("m", m), ("v", v), ("grads", grads)):
        checks.flat_buffer(name, a, np.size(params))
    check_adam(beta1, beta2, eps, step)
    adam_into(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, step)


def check_adam(beta1, beta2, eps, step):
    """Adam's hyper-parameters that its bias corrections divide by (shared with the reference)."""
    checks.fraction("beta1", beta1)
    checks.fraction("beta2", beta2)
    checks.positive_real("eps", eps)
    checks.positive_int("step", step)
