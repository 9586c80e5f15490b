"""Average pooling, over square windows and over the whole image (global), forward and backward.

Legend: N batch, H/W input height/width, C channels, S window size, T stride (may differ from
S: windows may overlap, or skip rows), OH = (H - S) // T + 1 (no padding; windows that do not
fit are dropped, as max-pooling does). x (N, H, W, C) -> y (N, OH, OW, C), the mean of each window.
Global: x (N, H, W, C) -> y (N, C), the mean over H and W.

Backward gathers instead of scattering: each input element sums the dy of the windows that read
it, so every element of dx is written once (0 where no window reads), overlapping windows need
no atomics, and no zeroing pass runs first. The innermost loops run over the contiguous channels.
"""

import numpy as np
from numba import prange

from . import checks
from .jit import parallel_kernel


@parallel_kernel
def _avgpool_forward(y, x, size, stride):
    N, OH, OW, C = y.shape
    inv = np.float32(1.0 / (size * size))
    for row in prange(N * OH):
        n = row // OH
        oh = row - n * OH
        for ow in range(OW):
            for c in range(C):
                y[n, oh, ow, c] = np.float32(0.0)
            for i in range(oh * stride, oh * stride + size):
                for j in range(ow * stride, ow * stride + size):
                    for c in range(C):
                        y[n, oh, ow, c] += x[n, i, j, c]
            for c in range(C):
                y[n, oh, ow, c] *= inv


@parallel_kernel
def _avgpool_backward(dx, dy, size, stride):
    N, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    inv = np.float32(1.0 / (size * size))
    for row in prange(N * H):
        n = row // H
        ih = row - n * H
        # Windows oh with oh * T <= ih < oh * T + S read row ih (likewise columns).
        oh0, oh1 = max(0, (ih - size + stride) // stride), min(OH, ih // stride + 1)
        for iw in range(W):
            ow0, ow1 = max(0, (iw - size + stride) // stride), min(OW, iw // stride + 1)
            for c in range(C):
                dx[n, ih, iw, c] = np.float32(0.0)
            for oh in range(oh0, oh1):
                for ow in range(ow0, ow1):
                    for c in range(C):
                        dx[n, ih, iw, c] += dy[n, oh, ow, c]
            for c in range(C):
                dx[n, ih, iw, c] *= inv


@parallel_kernel
def _global_avgpool_forward(y, total, x):
    # total: (N, C) float64 sums, one row per image (an image has up to tens of thousands of
    # pixels); passed in, not allocated inside the loop (that compiled NumPy's zeros too: 0.2 s).
    N, H, W, C = x.shape
    pixels = x.reshape(N, H * W, C)
    for n in prange(N):
        for c in range(C):
            total[n, c] = 0.0
        for i in range(H * W):
            for c in range(C):
                total[n, c] += pixels[n, i, c]
        for c in range(C):
            y[n, c] = total[n, c] / (H * W)


@parallel_kernel
def _global_avgpool_backward(dx, dy):
    N, H, W, C = dx.shape
    pixels = dx.reshape(N, H * W, C)
    inv = np.float32(1.0 / (H * W))
    for n in prange(N):
        for i in range(H * W):
            for c in range(C):
                pixels[n, i, c] = dy[n, c] * inv


def avgpool_forward_into(y, x, size, stride):
    """y (N, OH, OW, C) = the mean of each size x size window of x (N, H, W, C), ``stride`` apart."""
    _avgpool_forward(y, x, size, stride)


def avgpool_backward_into(dx, dy, size, stride):
    """dx (N, H, W, C), all of it, from dy (N, OH, OW, C): each window's dy / S^2 to each element it read."""
    _avgpool_backward(dx, dy, size, stride)


def global_avgpool_forward_into(y, x):
    """y (N, C) = the mean of x (N, H, W, C) over H and W."""
    _global_avgpool_forward(y, np.empty(y.shape, np.float64), x)


def global_avgpool_backward_into(dx, dy):
    """dx (N, H, W, C) = dy (N, C) / (H * W) at every pixel."""
    _global_avgpool_backward(dx, dy)


def avgpool_forward(x, size, stride=None):
    """x (N, H, W, C) -> y (N, OH, OW, C); ``stride`` defaults to ``size``."""
    x = checks.array("x", x, 4, np.float32)
    stride = size if stride is None else stride
    oh, ow = checks.pool_output_size(x.shape, size, stride)
    y = np.empty((x.shape[0], oh, ow, x.shape[3]), np.float32)
    avgpool_forward_into(y, x, size, stride)
    return y


def check_avgpool_backward(dy, x_shape, size, stride):
    """The checks of avgpool_backward (shared with the reference): returns (x_shape, stride)."""
    x_shape = checks.shape("x_shape", x_shape, 4)
    stride = size if stride is None else stride
    oh, ow = checks.pool_output_size(x_shape, size, stride)
    checks.same_shape("dy", dy, (x_shape[0], oh, ow, x_shape[3]), f"the forward output's shape for x {x_shape}")
    return x_shape, stride


def avgpool_backward(dy, x_shape, size, stride=None):
    """The gradient of avgpool_forward: dy (N, OH, OW, C) -> dx of shape ``x_shape``."""
    dy = checks.array("dy", dy, 4, np.float32)
    x_shape, stride = check_avgpool_backward(dy, x_shape, size, stride)
    dx = np.empty(x_shape, np.float32)
    avgpool_backward_into(dx, dy, size, stride)
    return dx


def global_avgpool_forward(x):
    """x (N, H, W, C) -> y (N, C), the mean over each image."""
    x = checks.array("x", x, 4, np.float32)
    checks.shape("x.shape", x.shape, 4)  # no empty image, no empty batch
    y = np.empty((x.shape[0], x.shape[3]), np.float32)
    global_avgpool_forward_into(y, x)
    return y


def global_avgpool_backward(dy, x_shape):
    """The gradient of global_avgpool_forward: dy (N, C) -> dx of shape ``x_shape``."""
    dy = checks.array("dy", dy, 2, np.float32)
    x_shape = checks.shape("x_shape", x_shape, 4)
    checks.same_shape("dy", dy, (x_shape[0], x_shape[3]), f"(N, C) of x {x_shape}")
    dx = np.empty(x_shape, np.float32)
    global_avgpool_backward_into(dx, dy)
    return dx
