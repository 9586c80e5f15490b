"""Tanh, the logistic sigmoid and the leaky ReLU, elementwise on any shape; backward from the
forward's output y.

tanh:       y = tanh(x),                 dx = dy * (1 - y^2)
sigmoid:    y = 1 / (1 + exp(-x)),       dx = dy * y * (1 - y)
leaky_relu: y = x if x > 0 else a * x,   dx = dy if y > 0 else a * dy   (0 <= a < 1: y > 0 iff x > 0)
The sigmoid is computed from e = exp(-|x|) <= 1, as 1 / (1 + e) for x >= 0 and e / (1 + e) for
x < 0: no exp ever overflows, so x = -1e4 gives 0, not inf / inf = NaN.
"""

import numpy as np
from numba import prange

from . import checks
from .jit import parallel_kernel


# The kernels take flat arrays: their cores (below) hand them flat views.
@parallel_kernel
def _tanh_forward(y, x):
    for i in prange(x.size):
        y[i] = np.tanh(x[i])


@parallel_kernel
def _tanh_backward(dx, dy, y):
    for i in prange(dy.size):
        dx[i] = dy[i] * (np.float32(1.0) - y[i] * y[i])


@parallel_kernel
def _sigmoid_forward(y, x):
    for i in prange(x.size):
        v = x[i]
        e = np.exp(-abs(v))
        y[i] = (np.float32(1.0) if v >= 0 else e) / (np.float32(1.0) + e)


@parallel_kernel
def _sigmoid_backward(dx, dy, y):
    for i in prange(dy.size):
        dx[i] = dy[i] * y[i] * (np.float32(1.0) - y[i])


@parallel_kernel
def _leaky_relu_forward(y, x, alpha):
    for i in prange(x.size):
        y[i] = x[i] if x[i] > 0 else alpha * x[i]


@parallel_kernel
def _leaky_relu_backward(dx, dy, y, alpha):
    for i in prange(dy.size):
        dx[i] = dy[i] if y[i] > 0 else alpha * dy[i]


# The cores hand the kernels flat views (the arrays are contiguous): one compiled kernel serves
# arrays of every rank, where each rank would compile its own (0.3 s each).
def tanh_forward_into(y, x):
    _tanh_forward(y.reshape(-1), x.reshape(-1))


def tanh_backward_into(dx, dy, y):
    _tanh_backward(dx.reshape(-1), dy.reshape(-1), y.reshape(-1))


def sigmoid_forward_into(y, x):
    _sigmoid_forward(y.reshape(-1), x.reshape(-1))


def sigmoid_backward_into(dx, dy, y):
    _sigmoid_backward(dx.reshape(-1), dy.reshape(-1), y.reshape(-1))


def leaky_relu_forward_into(y, x, alpha):
    _leaky_relu_forward(y.reshape(-1), x.reshape(-1), np.float32(alpha))


def leaky_relu_backward_into(dx, dy, y, alpha):
    _leaky_relu_backward(dx.reshape(-1), dy.reshape(-1), y.reshape(-1), np.float32(alpha))


def elementwise(core, x, *scalars):
    """The checked form of an activation's forward core ``core(y, x, *scalars)``."""
    x = checks.array("x", x, np.ndim(x), np.float32)
    y = np.empty_like(x)
    core(y, x, *scalars)
    return y


def elementwise_backward(core, dy, y, *scalars):
    """The checked form of an activation's backward core ``core(dx, dy, y, *scalars)``."""
    dy = checks.array("dy", dy, np.ndim(dy), np.float32)
    y = checks.array("y", y, np.ndim(y), np.float32)
    checks.same_shape("dy", dy, y.shape, "the forward output's shape")
    dx = np.empty_like(dy)
    core(dx, dy, y, *scalars)
    return dx


def tanh_forward(x):
    """y = tanh(x), any shape."""
    return elementwise(tanh_forward_into, x)


def tanh_backward(dy, y):
    """dx = dy * (1 - y^2), given tanh_forward's output y."""
    return elementwise_backward(tanh_backward_into, dy, y)


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)), any shape, stable for any x."""
    return elementwise(sigmoid_forward_into, x)


def sigmoid_backward(dy, y):
    """dx = dy * y * (1 - y), given sigmoid_forward's output y."""
    return elementwise_backward(sigmoid_backward_into, dy, y)


def leaky_relu_forward(x, alpha=0.01):
    """y = x where x > 0, else alpha * x (alpha in [0, 1)), any shape."""
    return elementwise(leaky_relu_forward_into, x, checks.fraction("alpha", alpha))


def leaky_relu_backward(dy, y, alpha=0.01):
    """dx = dy where the forward output y was positive, else alpha * dy."""
    return elementwise_backward(leaky_relu_backward_into, dy, y, checks.fraction("alpha", alpha))
