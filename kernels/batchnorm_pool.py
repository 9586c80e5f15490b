"""BatchNorm -> ReLU -> pool fused, in training: the block after a convolution that has already
added up the batch statistics of its output (conv.conv2d_moments_forward_into); the pool a max-pool,
or the global average pool that ends a network (which evaluation runs too, with the running
statistics: a first prediction then compiles no global pool of its own).

Legend: N batch, H/W the convolution output's height and width, C its channels, P the pooling
window, T its stride, PH/PW the pooled height and width, R = N*H*W. x (N, H, W, C) the convolution's
output; mean, var (C,) its batch statistics; weight, bias (C,) BatchNorm's. y (N, PH, PW, C) and
argmax (N, PH, PW, C) int32.

Forward, one pass over x: each window's values are normalised, z = (x - mean) * rstd * weight +
bias, and pooled; the ReLU is applied to the pooled value (relu(max(z)) = max(relu(z))). argmax
holds, for each output, the index ``h * W + w`` of the z it took, as maxpool_forward on z gives it.
Only y and argmax go to memory, a quarter of x each.

The kernels take 2x2 windows (any stride), the ones CNNs use; other windows run BatchNorm, the
pool and the ReLU one after another: their general code in the fused kernels cost 0.9-1.0 s more
of CPU to compile the two (measured 2026-12-06, AVX2 code), in every network that pools after
BatchNorm.

Backward, two passes, as BatchNorm's maths needs: its input gradient
dx = weight * rstd * (g - sum(g) / R - xhat * sum(g * xhat) / R), xhat = (x - mean) * rstd, needs
two sums over the whole batch of g, the gradient at BatchNorm's output, before any dx. g is dy
routed through the pool and the ReLU: non-zero only where an argmax points and y > 0. So:
1. over the pooled outputs only: sum(g) and sum(g * xhat) per channel (dbias and dweight),
2. over x: dx, from x, and dy where an argmax points at the pixel (a select, so it vectorises).

With the global average pool, y (N, C) is each image's mean of relu(z), and backward's g is
dy / (H*W) wherever the ReLU let z through, the mask made again from x by the forward's own
arithmetic. Its two sums then gather per image first: the pixels let through and the sum of their
xhat, each image's own (parallel over images), then over the images in order, times dy / (H*W).
No normalised image, nor its gradient, goes to memory (separately: BatchNorm's pass writing it,
the pool reading it, the pool's gradient written, read twice by BatchNorm's backward).

The reference twins are the compositions of the reference BatchNorm (with the given statistics),
the pool and the ReLU (reference.py).
"""

import numba
import numpy as np
from numba import prange

from . import checks
from .jit import parallel_kernel, threads, zeros
from .batchnorm import batchnorm_backward_into, batchnorm_eval_forward_into, rstd_of
from .dense import relu_backward_into, relu_forward_into
from .pool import check_window_argmax, max_of_four, maxpool_backward_into, maxpool_forward_into, pooled_row


@parallel_kernel
def _forward(y, argmax, x, mean, var, weight, bias, eps, stride, tasks):
    # 2x2 windows. Each task owns a range of pooled rows (n, ph); per output pixel, the window's
    # four values are compared in registers, channel by channel (the loop vectorises).
    N, H, W, C = x.shape
    PH, PW = y.shape[1], y.shape[2]
    scale = _scale(rstd_of(var, eps), weight)
    for task in prange(tasks):
        for row in range(task * N * PH // tasks, (task + 1) * N * PH // tasks):
            n, ph, h0 = pooled_row(row, PH, stride)
            for pw in range(PW):
                w0 = pw * stride
                first = np.int32(h0 * W + w0)
                for c in range(C):
                    best, at = max_of_four((x[n, h0, w0, c] - mean[c]) * scale[c] + bias[c],
                                           (x[n, h0, w0 + 1, c] - mean[c]) * scale[c] + bias[c],
                                           (x[n, h0 + 1, w0, c] - mean[c]) * scale[c] + bias[c],
                                           (x[n, h0 + 1, w0 + 1, c] - mean[c]) * scale[c] + bias[c], first, W)
                    y[n, ph, pw, c] = np.float32(0.0) if best < 0 else best  # the ReLU; a NaN stays
                    argmax[n, ph, pw, c] = at


@parallel_kernel
def _backward(dx, dweight, dbias, dy, x, y, argmax, weight, mean, var, eps, stride, tasks):
    # 2x2 windows.
    N, H, W, C = x.shape
    size = 2
    PH, PW = y.shape[1], y.shape[2]
    rstd = rstd_of(var, eps)
    # 1. sum(g) and sum(g * xhat) per channel, over the outputs that passed a gradient. The x an
    # argmax points at is picked from its window by selects (no division, no gather: vectorised),
    # summed in float32 over a pooled row, then in float64. (Throughout, values are loaded before
    # a conditional expression picks one: a load inside one branch keeps LLVM from vectorising.)
    # A window's four values are picked from in registers.
    sums = zeros((tasks, 2, C))
    for task in prange(tasks):
        picked = np.empty(C, np.float32)
        row_s, row_q = np.zeros(C, np.float32), np.zeros(C, np.float32)
        for row in range(task * N * PH // tasks, (task + 1) * N * PH // tasks):
            n, ph, h0 = pooled_row(row, PH, stride)
            for pw in range(PW):
                w0 = pw * stride
                first = np.int32(h0 * W + w0)
                at1, at2 = np.int32(first + 1), np.int32(first + W)
                for c in range(C):
                    v0, v1 = x[n, h0, w0, c], x[n, h0, w0 + 1, c]
                    v2, v3 = x[n, h0 + 1, w0, c], x[n, h0 + 1, w0 + 1, c]
                    at = argmax[n, ph, pw, c]
                    picked[c] = v0 if at == first else (v1 if at == at1 else (v2 if at == at2 else v3))
                for c in range(C):
                    g = dy[n, ph, pw, c]
                    g = g if y[n, ph, pw, c] > 0 else np.float32(0.0)
                    row_s[c] += g
                    row_q[c] += g * ((picked[c] - mean[c]) * rstd[c])
            for c in range(C):
                sums[task, 0, c] += row_s[c]
                sums[task, 1, c] += row_q[c]
                row_s[c], row_q[c] = 0.0, 0.0
    a, b, d = np.empty(C, np.float32), np.empty(C, np.float32), np.empty(C, np.float32)
    R = N * H * W
    for c in range(C):
        s, q = 0.0, 0.0
        for task in range(tasks):  # in task order: the same bits whatever thread ran which task
            s += sums[task, 0, c]
            q += sums[task, 1, c]
        dbias[c], dweight[c] = s, q
        a[c], b[c], d[c] = weight[c] * rstd[c], s / R, q / R
    # 2. dx row by row: the terms every pixel has, then dy where an argmax points at the pixel.
    for row in prange(N * H):
        n = row // H
        h = row - n * H
        for w in range(W):
            for c in range(C):
                dx[n, h, w, c] = -a[c] * (b[c] + (x[n, h, w, c] - mean[c]) * rstd[c] * d[c])
        # The pooled rows whose windows cover input row h.
        for ph in range(max(0, (h - size + stride) // stride), min(PH - 1, h // stride) + 1):
            for pw in range(PW):
                for j in range(size):
                    w = pw * stride + j
                    at = np.int32(h * W + w)
                    for c in range(C):
                        hit = (argmax[n, ph, pw, c] == at) & (y[n, ph, pw, c] > 0)
                        g = a[c] * dy[n, ph, pw, c]
                        dx[n, h, w, c] += g if hit else np.float32(0.0)


@parallel_kernel
def _avgpool_forward(y, total, x, mean, var, weight, bias, eps):
    # y (N, C): each image's mean of relu(z), summed in float64 into total (N, C), as the global pool's.
    N, H, W, C = x.shape
    pixels = x.reshape(N, H * W, C)
    scale = _scale(rstd_of(var, eps), weight)
    for n in prange(N):
        for c in range(C):
            total[n, c] = 0.0
        for i in range(H * W):
            for c in range(C):
                total[n, c] += max((pixels[n, i, c] - mean[c]) * scale[c] + bias[c], np.float32(0.0))
        for c in range(C):
            y[n, c] = total[n, c] / (H * W)


@parallel_kernel
def _avgpool_backward(dx, dweight, dbias, through, xhat_sums, dy, x, weight, bias, mean, var, eps):
    # through, xhat_sums (N, C) float64: per image, the pixels the ReLU let through and their xhat's sum.
    N, H, W, C = x.shape
    P = H * W
    pixels, dpixels = x.reshape(N, P, C), dx.reshape(N, P, C)
    rstd = rstd_of(var, eps)
    scale = _scale(rstd, weight)
    for n in prange(N):
        for c in range(C):
            through[n, c], xhat_sums[n, c] = 0.0, 0.0
        for i in range(P):
            for c in range(C):
                v = pixels[n, i, c] - mean[c]
                hit = v * scale[c] + bias[c] > 0
                through[n, c] += 1.0 if hit else 0.0
                xhat_sums[n, c] += v * rstd[c] if hit else np.float32(0.0)
    # dbias = sum(g), dweight = sum(g * xhat), in image order: the same bits whatever thread ran which.
    inv = np.float32(1.0 / P)
    a, b, d = np.empty(C, np.float32), np.empty(C, np.float32), np.empty(C, np.float32)
    for c in range(C):
        s, q = 0.0, 0.0
        for n in range(N):
            g = dy[n, c] * inv
            s += g * through[n, c]
            q += g * xhat_sums[n, c]
        dbias[c], dweight[c] = s, q
        a[c], b[c], d[c] = weight[c] * rstd[c], s / (N * P), q / (N * P)
    for n in prange(N):
        for i in range(P):
            for c in range(C):
                v = pixels[n, i, c] - mean[c]
                g = dy[n, c] * inv if v * scale[c] + bias[c] > 0 else np.float32(0.0)
                dpixels[n, i, c] = a[c] * (g - b[c] - v * rstd[c] * d[c])


@numba.njit(inline="always")
def _scale(rstd, weight):
    """rstd * weight (C,) float32: the normalisation's factor, the same wherever a kernel here makes
    BatchNorm's output or its ReLU's mask again."""
    scale = np.empty(weight.shape[0], np.float32)
    for c in range(weight.shape[0]):
        scale[c] = rstd[c] * weight[c]
    return scale


def _tasks(rows):
    return max(1, min(threads(), rows))


def batchnorm_relu_pool_forward_into(y, argmax, x, mean, var, weight, bias, eps, size, stride):
    """y (N, PH, PW, C) = max-pool(relu(batchnorm(x))) with the given batch statistics, and argmax.
    Fused for 2x2 windows; other windows (rare: one fused kernel per common case keeps compiling
    short) normalise x whole, then pool and apply the ReLU."""
    if size == 2:
        _forward(y, argmax, x, mean, var, weight, bias, float(eps), stride, _tasks(y.shape[0] * y.shape[1]))
        return
    z = np.empty_like(x)
    batchnorm_eval_forward_into(z, x, weight, bias, mean, var, eps, False)
    maxpool_forward_into(y, argmax, z, size, stride)
    relu_forward_into(y, y)


def batchnorm_relu_pool_backward_into(dx, dweight, dbias, dy, x, y, argmax, weight, mean, var, eps, size, stride):
    """dx like x, dweight and dbias (C,), from dy (N, PH, PW, C) and the forward's x, y, argmax."""
    if size == 2:
        _backward(dx, dweight, dbias, dy, x, y, argmax, weight, mean, var, float(eps), stride,
                  _tasks(y.shape[0] * y.shape[1]))
        return
    passed = np.empty_like(dy)  # through the ReLU, then the pool, then BatchNorm
    relu_backward_into(passed, dy, y)
    dz = np.empty_like(x)
    maxpool_backward_into(dz, passed, argmax)
    batchnorm_backward_into(dx, dweight, dbias, dz, x, weight, np.zeros_like(weight), mean, var, eps, False)


def batchnorm_relu_avgpool_forward_into(y, x, mean, var, weight, bias, eps):
    """y (N, C) = each image's mean of relu(batchnorm(x)), x (N, H, W, C) normalised with the given
    batch statistics."""
    _avgpool_forward(y, np.empty(y.shape, np.float64), x, mean, var, weight, bias, float(eps))


def batchnorm_relu_avgpool_backward_into(dx, dweight, dbias, dy, x, weight, bias, mean, var, eps):
    """dx like x, dweight and dbias (C,), from dy (N, C) and the forward's x, weight and bias (the
    ReLU's mask is made again from them)."""
    _avgpool_backward(dx, dweight, dbias, np.empty(dy.shape), np.empty(dy.shape), dy, x, weight, bias, mean, var,
                      float(eps))


def _check_statistics(x, **vectors):
    out = []
    for name, v in vectors.items():
        v = checks.array(name, v, 1, np.float32)
        checks.same_shape(name, v, (x.shape[3],), f"one per channel of x {x.shape}")
        out.append(v)
    return out


def batchnorm_relu_pool_forward(x, mean, var, weight, bias, eps=1e-5, size=2, stride=None):
    """(y, argmax) = max-pool(relu(batchnorm(x))) over ``size`` windows every ``stride`` (default
    ``size``) pixels, x (N, H, W, C) normalised with the batch statistics mean and var (C,)."""
    x = checks.array("x", x, 4, np.float32)
    mean, var, weight, bias = _check_statistics(x, mean=mean, var=var, weight=weight, bias=bias)
    eps = checks.positive_real("eps", eps)
    stride = size if stride is None else stride
    ph, pw = checks.pool_output_size(x.shape, size, stride)
    y, argmax = np.empty((x.shape[0], ph, pw, x.shape[3]), np.float32), np.empty((x.shape[0], ph, pw, x.shape[3]),
                                                                                 np.int32)
    batchnorm_relu_pool_forward_into(y, argmax, x, mean, var, weight, bias, eps, size, stride)
    return y, argmax


def batchnorm_relu_pool_backward(dy, x, y, argmax, weight, mean, var, eps=1e-5, size=2, stride=None):
    """Gradients of batchnorm_relu_pool_forward: (dx like x, dweight (C,), dbias (C,)), given the
    forward's x, y and argmax, with the batch statistics as the gradient of their own (x's mean and
    variance depend on every x)."""
    x = checks.array("x", x, 4, np.float32)
    weight, mean, var = _check_statistics(x, weight=weight, mean=mean, var=var)
    eps = checks.positive_real("eps", eps)
    stride = size if stride is None else stride
    ph, pw = checks.pool_output_size(x.shape, size, stride)
    shape = (x.shape[0], ph, pw, x.shape[3])
    dy, y = checks.array("dy", dy, 4, np.float32), checks.array("y", y, 4, np.float32)
    checks.same_shape("dy", dy, shape, "the forward output's shape")
    checks.same_shape("y", y, shape, "the forward output's shape")
    check_window_argmax(argmax, shape, x.shape[2], size, stride)
    dx = np.empty_like(x)
    dweight, dbias = np.empty(x.shape[3], np.float32), np.empty(x.shape[3], np.float32)
    batchnorm_relu_pool_backward_into(dx, dweight, dbias, dy, x, y, argmax, weight, mean, var, eps, size, stride)
    return dx, dweight, dbias


def batchnorm_relu_avgpool_forward(x, mean, var, weight, bias, eps=1e-5):
    """y (N, C) = the global average pool of relu(batchnorm(x)), x (N, H, W, C) normalised with the
    batch statistics mean and var (C,)."""
    x = checks.array("x", x, 4, np.float32)
    mean, var, weight, bias = _check_statistics(x, mean=mean, var=var, weight=weight, bias=bias)
    eps = checks.positive_real("eps", eps)
    y = np.empty((x.shape[0], x.shape[3]), np.float32)
    batchnorm_relu_avgpool_forward_into(y, x, mean, var, weight, bias, eps)
    return y


def batchnorm_relu_avgpool_backward(dy, x, weight, bias, mean, var, eps=1e-5):
    """Gradients of batchnorm_relu_avgpool_forward: (dx like x, dweight (C,), dbias (C,)), given the
    forward's x, weight and bias, with the batch statistics as the gradient of their own."""
    x = checks.array("x", x, 4, np.float32)
    weight, bias, mean, var = _check_statistics(x, weight=weight, bias=bias, mean=mean, var=var)
    eps = checks.positive_real("eps", eps)
    dy = checks.array("dy", dy, 2, np.float32)
    checks.same_shape("dy", dy, (x.shape[0], x.shape[3]), "(N, C) of x")
    dx = np.empty_like(x)
    dweight, dbias = np.empty(x.shape[3], np.float32), np.empty(x.shape[3], np.float32)
    batchnorm_relu_avgpool_backward_into(dx, dweight, dbias, dy, x, weight, bias, mean, var, eps)
    return dx, dweight, dbias
