"""Fully connected layers, plain and with ReLU fused; and ReLU on its own.

Legend: N batch, I input features, O output features. x (N, I), w (I, O), b (O,), y (N, O).
The matrix products go to BLAS (through SciPy, called from Numba), which brings its own threads;
bias, ReLU and their gradients are then one pass over the small (N, O) result.
"""

import numpy as np
from numba import prange

from fastcnn.errors import ShapeError

from . import checks
from .jit import parallel_kernel, serial_kernel


@serial_kernel
def _dense_forward(x, w, b, relu):
    y = np.dot(x, w)
    N, O = y.shape
    for n in range(N):
        for o in range(O):
            v = y[n, o] + b[o]
            y[n, o] = max(v, np.float32(0.0)) if relu else v
    return y


@serial_kernel
def _dense_backward(dy, x, w, y, relu, need_dx):
    # One pass makes dz (dy gated by ReLU) and db (float64 sums, in row order); BLAS does the rest.
    N, O = dy.shape
    dz = np.empty_like(dy)
    db = np.zeros(O, np.float64)
    for n in range(N):
        for o in range(O):
            g = dy[n, o] if (not relu or y[n, o] > 0) else np.float32(0.0)
            dz[n, o] = g
            db[o] += g
    dw = np.dot(x.T, dz)
    dx = np.dot(dz, w.T) if need_dx else np.empty((0, 0), np.float32)
    return dx, dw, db.astype(np.float32)


def _check_dense(x, w, b):
    x = checks.array("x", x, 2, np.float32)
    w = checks.array("w", w, 2, np.float32)
    if x.shape[1] != w.shape[0]:
        raise ShapeError(f"x: expected {w.shape[0]} features per row (w is {w.shape}), got shape {x.shape}")
    if x.shape[0] < 1:
        raise ShapeError(f"x: expected at least one row, got shape {x.shape}")
    if b is not None:
        b = checks.array("b", b, 1, np.float32)
        checks.same_shape("b", b, (w.shape[1],), "one bias per output feature")
    return x, w, b


def dense_forward(x, w, b):
    """y = x @ w + b."""
    x, w, b = _check_dense(x, w, b)
    return _dense_forward(x, w, b, False)


def dense_relu_forward(x, w, b):
    """y = max(x @ w + b, 0), the bias and ReLU fused into one pass after the product."""
    x, w, b = _check_dense(x, w, b)
    return _dense_forward(x, w, b, True)


def _backward(dy, x, w, y, relu, need_dx):
    x, w, _ = _check_dense(x, w, None)
    dy = checks.array("dy", dy, 2, np.float32)
    checks.same_shape("dy", dy, (x.shape[0], w.shape[1]), "the forward output's shape")
    if relu:
        y = checks.array("y", y, 2, np.float32)
        checks.same_shape("y", y, dy.shape, "the forward output's shape")
    else:
        y = dy  # unused
    dx, dw, db = _dense_backward(dy, x, w, y, relu, need_dx)
    return (dx if need_dx else None), dw, db


def dense_backward(dy, x, w, need_dx=True):
    """Gradients of dense_forward: (dx, dw, db); ``need_dx=False`` returns None for dx."""
    return _backward(dy, x, w, None, False, need_dx)


def dense_relu_backward(dy, x, w, y, need_dx=True):
    """Gradients of dense_relu_forward, given its output y (which says where ReLU let through)."""
    return _backward(dy, x, w, y, True, need_dx)


@parallel_kernel
def _relu_forward(y, x):
    flat_x, flat_y = x.reshape(-1), y.reshape(-1)
    for i in prange(flat_x.size):
        flat_y[i] = max(flat_x[i], np.float32(0.0))


@parallel_kernel
def _relu_backward(dx, dy, y):
    flat_dx, flat_dy, flat_y = dx.reshape(-1), dy.reshape(-1), y.reshape(-1)
    for i in prange(flat_dy.size):
        flat_dx[i] = flat_dy[i] if flat_y[i] > 0 else np.float32(0.0)


def relu_forward(x):
    """y = max(x, 0), any shape."""
    x = checks.array("x", x, np.ndim(x), np.float32)
    y = np.empty_like(x)
    _relu_forward(y, x)
    return y


def relu_backward(dy, y):
    """dx = dy where the forward output y was positive, else 0."""
    dy = checks.array("dy", dy, np.ndim(dy), np.float32)
    y = checks.array("y", y, np.ndim(y), np.float32)
    checks.same_shape("dy", dy, y.shape, "the forward output's shape")
    dx = np.empty_like(dy)
    _relu_backward(dx, dy, y)
    return dx
