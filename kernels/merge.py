"""Where branches of a graph meet: the sum of two tensors (a residual connection), with an
optional ReLU after it, and the concatenation of tensors along their channels (the last axis).

add:     y = a + b, or relu(a + b); its gradient is dy for both inputs (through the ReLU first:
         dy where y > 0, which ``relu_backward_into`` computes)
concat:  y[..., offset:offset + c] = x for each input x of c channels; backward, each input's
         gradient is that slice of dy
"""

import numpy as np
from numba import prange

from . import checks
from .errors import ShapeError
from .jit import parallel_kernel


@parallel_kernel
def _add(y, a, b, relu):
    for i in prange(y.size):
        v = a[i] + b[i]
        y[i] = max(v, np.float32(0.0)) if relu else v


@parallel_kernel
def _concat(y, x, offset):
    for r in prange(x.shape[0]):
        for j in range(x.shape[1]):
            y[r, offset + j] = x[r, j]


@parallel_kernel
def _split(dx, dy, offset):
    for r in prange(dx.shape[0]):
        for j in range(dx.shape[1]):
            dx[r, j] = dy[r, offset + j]


# The cores hand the kernels flat views (add) or rows of channels (concat): one compiled kernel
# serves every rank.
def add_forward_into(y, a, b, relu):
    _add(y.reshape(-1), a.reshape(-1), b.reshape(-1), bool(relu))


def concat_forward_into(y, x, offset):
    _concat(y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1]), offset)


def concat_backward_into(dx, dy, offset):
    _split(dx.reshape(-1, dx.shape[-1]), dy.reshape(-1, dy.shape[-1]), offset)


def add_forward(a, b, relu=False):
    """y = a + b (relu: max(a + b, 0)), a and b of one shape."""
    a = checks.array("a", a, np.ndim(a), np.float32)
    b = checks.array("b", b, np.ndim(b), np.float32)
    checks.same_shape("b", b, a.shape, "a's shape")
    y = np.empty_like(a)
    add_forward_into(y, a, b, relu)
    return y


def concat_forward(xs):
    """The tensors ``xs`` (at least one; equal but for their last axis) side by side along it."""
    xs = check_concat(xs)
    y = np.empty((*xs[0].shape[:-1], sum(x.shape[-1] for x in xs)), np.float32)
    offset = 0
    for x in xs:
        concat_forward_into(y, x, offset)
        offset += x.shape[-1]
    return y


def concat_backward(dy, offset, channels):
    """The gradient of the input that ``concat_forward`` put at channels [offset, offset + channels)."""
    dy = checks.array("dy", dy, np.ndim(dy), np.float32)
    offset, channels = checks.non_negative_int("offset", offset), checks.positive_int("channels", channels)
    if dy.ndim < 2 or offset + channels > dy.shape[-1]:
        raise ShapeError(f"offset, channels: expected channels within dy's last axis ({dy.shape[-1]}), got "
                         f"[{offset}, {offset + channels})")
    dx = np.empty((*dy.shape[:-1], channels), np.float32)
    concat_backward_into(dx, dy, offset)
    return dx


def check_concat(xs, dtype=np.float32):
    """The list ``xs`` of arrays to concatenate, checked: equal shapes but for the last axis."""
    if isinstance(xs, np.ndarray) or not isinstance(xs, (list, tuple)) or not xs:
        raise ShapeError(f"xs: expected a non-empty list of arrays, got {type(xs).__name__}")
    xs = [checks.array(f"xs[{i}]", x, np.ndim(x), dtype) for i, x in enumerate(xs)]
    for i, x in enumerate(xs):
        if x.ndim < 2 or x.shape[:-1] != xs[0].shape[:-1]:
            raise ShapeError(f"xs[{i}]: expected shape (..., C) with {xs[0].shape[:-1]} before the channels, "
                             f"got {x.shape}")
    return xs
