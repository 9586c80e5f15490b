"""Max-pooling that remembers where each maximum came from, forward and backward.

Legend: N batch, H/W input height/width, C channels, S window size, T stride,
OH = (H - S) // T + 1 (sizes that do not divide are floored; the last rows/columns are dropped).
x (N, H, W, C) -> y (N, OH, OW, C) and argmax (N, OH, OW, C) int32: for each output, the index
``ih * W + iw`` of the input element it took. The first maximum of a window wins, and a NaN
counts as a maximum (as ``np.argmax`` does), so a NaN never disappears in the pool.
"""

import numpy as np
from numba import prange

from fastcnn.errors import ShapeError

from . import checks
from .jit import parallel_kernel


@parallel_kernel
def _maxpool_forward(y, argmax, x, size, stride):
    N, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for row in prange(N * OH):
        n, oh = row // OH, row % OH
        for ow in range(OW):
            for c in range(C):
                best = x[n, oh * stride, ow * stride, c]
                where = (oh * stride) * W + ow * stride
                for i in range(size):
                    ih = oh * stride + i
                    for j in range(size):
                        iw = ow * stride + j
                        v = x[n, ih, iw, c]
                        if best != best:  # a NaN already won
                            break
                        if v > best or v != v:
                            best = v
                            where = ih * W + iw
                y[n, oh, ow, c] = best
                argmax[n, oh, ow, c] = where


def maxpool_forward(x, size, stride=None):
    """x (N, H, W, C) -> (y, argmax), both (N, OH, OW, C); ``stride`` defaults to ``size``."""
    x = checks.array("x", x, 4, np.float32)
    stride = size if stride is None else stride
    oh, ow = checks.pool_output_size(x.shape, size, stride)
    y = np.empty((x.shape[0], oh, ow, x.shape[3]), np.float32)
    argmax = np.empty(y.shape, np.int32)
    _maxpool_forward(y, argmax, x, size, stride)
    return y, argmax


@parallel_kernel
def _maxpool_backward(dx, dy, argmax):
    # One image per task: overlapping windows may route two gradients into one input element,
    # and only the owner of that image ever adds into it.
    N, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    for n in prange(N):
        dx[n] = 0.0
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    where = argmax[n, oh, ow, c]
                    dx[n, where // W, where % W, c] += dy[n, oh, ow, c]


def maxpool_backward(dy, argmax, x_shape):
    """Route dy (N, OH, OW, C) back through the recorded argmax into dx of shape ``x_shape``."""
    dy = checks.array("dy", dy, 4, np.float32)
    _check_argmax(argmax, dy, x_shape)
    dx = np.empty(tuple(x_shape), np.float32)
    _maxpool_backward(dx, dy, argmax)
    return dx


def _check_argmax(argmax, dy, x_shape):
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int32:
        raise ShapeError("argmax: expected the int32 array that maxpool_forward returned")
    checks.same_shape("argmax", argmax, dy.shape, "dy's shape")
    if len(x_shape) != 4 or (x_shape[0], x_shape[3]) != (dy.shape[0], dy.shape[3]):
        raise ShapeError(f"x_shape: expected (N, H, W, C) with N and C as in dy {dy.shape}, got {tuple(x_shape)}")
    h, w = x_shape[1], x_shape[2]
    if argmax.size and (argmax.min() < 0 or argmax.max() >= h * w):
        raise ShapeError(f"argmax: indices must lie in 0..{h * w - 1} for a {h}x{w} input")
