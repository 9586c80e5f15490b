"""Batch normalisation over the last (channel) axis, forward and backward, with the ReLU that
follows it fused.

Legend: R rows (N*H*W for NHWC images, N for features), C channels. The kernels see x as its
(R, C) view (the cores take C-contiguous arrays of any rank >= 2, channels last, and view them
so); weight, bias, mean, var, running_mean, running_var are (C,).
Training: mean = x.mean(0), var = x.var(0) (biased, as PyTorch normalises with),
xhat = (x - mean) / sqrt(var + eps), y = xhat * weight + bias, then max(y, 0) if ``relu``.
Forward saves exactly what backward needs besides x and the parameters: ``mean`` and ``var``.
Backward, with g = dy (masked by y > 0 if ``relu``):
dbias = sum_r g, dweight = sum_r g * xhat, dx = weight / sqrt(var + eps) * (g - (dbias + xhat * dweight) / R).
The mask is made again from x, weight and bias, by the forward's own arithmetic (``scale_of``, then
(x - mean) * scale + bias): y is not read. Both passes over x read it anyway; reading y too made
them 7 passes over memory instead of 5, and a training step's BatchNorm is bound by memory
(measured 2026-12-07, AVX2-only Zen 3, 2 threads, calls in turn: 1.17x as fast at 28x28x32,
batch 64, 1.13x at 14x14x64).

Fewer rows than make two tasks (FEW_ROWS) run in kernels of no parallel loop (see there).
The per-channel sums run over row ranges, one per task, each into its own float64 partials
(no races; added in task order, so a result is the same bit for bit for a given thread count),
by blocks of rows summed in float32 first.
The statistics take one pass, shifted by the first row: sum(x - x0) and sum((x - x0)^2) in
float64 lose nothing even when a channel's mean is far larger than its spread.
"""

import math

import numba
import numpy as np
from numba import prange

from . import checks
from .jit import parallel_kernel, serial_kernel, threads, zeros

# A task sums at least this many rows: fewer cost more to hand out than they save.
_MIN_ROWS = 64
# Rows summed in float32 before they are added into float64: a sum of 64 values loses at most 6
# of float32's 24 bits (the tests' largest relative error in var: 3e-6; with float64 per element
# 1e-7), and the float64 work drops to one add per channel per 64 rows.
_BLOCK = 64


@numba.njit(inline="always")
def add_block(sums, task, block):
    """Add a block's float32 sums (2, C) into the task's float64 ones, and zero the block."""
    for i in range(2):
        for c in range(block.shape[1]):
            sums[task, i, c] += block[i, c]
            block[i, c] = 0.0


@numba.njit(inline="always")
def total(sums, i, c):
    """Sum ``i`` of channel ``c`` over all tasks, in task order."""
    acc = 0.0
    for task in range(sums.shape[0]):
        acc += sums[task, i, c]
    return acc


@numba.njit(inline="always")
def moment_sums(sums, task, x, lo, hi):
    """Rows lo..hi-1 of x less its first row: each channel's sum and sum of squares added into
    sums[task] (2, C) float64, by float32 sums over blocks of _BLOCK rows (the loop over channels
    vectorises): exact enough, and no float64 work per element."""
    block = np.zeros((2, x.shape[1]), np.float32)
    for start in range(lo, hi, _BLOCK):
        for r in range(start, min(start + _BLOCK, hi)):
            for c in range(x.shape[1]):
                d = x[r, c] - x[0, c]
                block[0, c] += d
                block[1, c] += d * d
        add_block(sums, task, block)


@numba.njit(inline="always")
def moments(mean, var, x, sums):
    """mean and var (C,) from the tasks' sums (moment_sums) of all of x's rows."""
    R = x.shape[0]
    for c in range(x.shape[1]):
        shift = total(sums, 0, c) / R
        mean[c] = np.float64(x[0, c]) + shift
        var[c] = max(total(sums, 1, c) / R - shift * shift, 0.0)


@numba.njit(inline="always")
def normalize_row(y, x, mean, scale, bias, relu, r):
    # (x - mean) * scale + bias: subtracting the mean first keeps the digits that a folded
    # x * scale + (bias - mean * scale) loses when the mean is large against the spread.
    for c in range(x.shape[1]):
        v = (x[r, c] - mean[c]) * scale[c] + bias[c]
        y[r, c] = max(v, np.float32(0.0)) if relu else v


@parallel_kernel
def _channel_moments(mean, var, x, tasks):
    R, C = x.shape
    sums = zeros((tasks, 2, C))
    for task in prange(tasks):
        moment_sums(sums, task, x, task * R // tasks, (task + 1) * R // tasks)
    moments(mean, var, x, sums)


@parallel_kernel
def _normalize(y, x, mean, scale, bias, relu):
    for r in prange(x.shape[0]):
        normalize_row(y, x, mean, scale, bias, relu, r)


@numba.njit(inline="always")
def rstd_of(var, eps):
    """1 / sqrt(var + eps) (C,) float32, computed in float64."""
    out = np.empty(var.shape[0], np.float32)
    for c in range(var.shape[0]):
        out[c] = 1.0 / math.sqrt(np.float64(var[c]) + eps)
    return out


@numba.njit(inline="always")
def passed(dy, x, mean, scale, bias, relu, r, c):
    """dy[r, c], or 0 where the forward's ReLU stopped it: its y = (x - mean) * scale + bias, the
    same arithmetic as normalize_row's, is not > 0."""
    if relu and not (x[r, c] - mean[c]) * scale[c] + bias[c] > 0:
        return np.float32(0.0)
    return dy[r, c]


@numba.njit(inline="always")
def gradient_sums(sums, task, dy, x, mean, rstd, scale, bias, relu, lo, hi):
    """Rows lo..hi-1: sum(g) and sum(g * xhat) per channel into sums[task], g = dy (where the
    ReLU let it through, with ``relu``), by float32 blocks as in moment_sums."""
    block = np.zeros((2, x.shape[1]), np.float32)
    for start in range(lo, hi, _BLOCK):
        for r in range(start, min(start + _BLOCK, hi)):
            for c in range(x.shape[1]):
                g = passed(dy, x, mean, scale, bias, relu, r, c)
                block[0, c] += g
                block[1, c] += g * ((x[r, c] - mean[c]) * rstd[c])
        add_block(sums, task, block)


@numba.njit(inline="always")
def gradient_factors(dweight, dbias, sums, weight, rstd, R):
    """dweight and dbias from the tasks' sums (gradient_sums), and the per-channel factors of
    dx = a * (g - b - xhat * d)."""
    C = weight.shape[0]
    a, b, d = np.empty(C, np.float32), np.empty(C, np.float32), np.empty(C, np.float32)
    for c in range(C):
        s, q = total(sums, 0, c), total(sums, 1, c)
        dbias[c] = s
        dweight[c] = q
        a[c] = weight[c] * rstd[c]
        b[c] = s / R
        d[c] = q / R
    return a, b, d


@numba.njit(inline="always")
def input_gradient_row(dx, dy, x, mean, rstd, scale, bias, a, b, d, relu, r):
    for c in range(x.shape[1]):
        g = passed(dy, x, mean, scale, bias, relu, r, c)
        dx[r, c] = a[c] * (g - b[c] - (x[r, c] - mean[c]) * rstd[c] * d[c])


@parallel_kernel
def _batchnorm_backward(dx, dweight, dbias, dy, x, weight, scale, bias, mean, var, eps, relu, need_dx, tasks):
    R, C = x.shape
    rstd = rstd_of(var, eps)
    sums = zeros((tasks, 2, C))
    for task in prange(tasks):
        gradient_sums(sums, task, dy, x, mean, rstd, scale, bias, relu, task * R // tasks, (task + 1) * R // tasks)
    a, b, d = gradient_factors(dweight, dbias, sums, weight, rstd, R)
    if need_dx:
        for r in prange(R):
            input_gradient_row(dx, dy, x, mean, rstd, scale, bias, a, b, d, relu, r)


# Fewer rows than make two tasks (FEW_ROWS: a BatchNorm1D over a training batch of up to 127, the
# one place they occur in a training step) run on the calling thread, in these kernels of no
# parallel loop: a parallel kernel would take them in one task anyway (the same sums in the same
# order: the same bits), and these compile in about half the time (Numba's passes over parallel
# loops), so that a network with no other BatchNorm outside the fused kernels (`deep`) compiles
# none of the three parallel ones for its first step.
FEW_ROWS = 2 * _MIN_ROWS


@serial_kernel
def _few_rows_moments(mean, var, x):
    sums = np.zeros((1, 2, x.shape[1]))
    moment_sums(sums, 0, x, 0, x.shape[0])
    moments(mean, var, x, sums)


@serial_kernel
def _few_rows_normalize(y, x, mean, scale, bias, relu):
    for r in range(x.shape[0]):
        normalize_row(y, x, mean, scale, bias, relu, r)


@serial_kernel
def _few_rows_backward(dx, dweight, dbias, dy, x, weight, scale, bias, mean, var, eps, relu, need_dx):
    rstd = rstd_of(var, eps)
    sums = np.zeros((1, 2, x.shape[1]))
    gradient_sums(sums, 0, dy, x, mean, rstd, scale, bias, relu, 0, x.shape[0])
    a, b, d = gradient_factors(dweight, dbias, sums, weight, rstd, x.shape[0])
    if need_dx:
        for r in range(x.shape[0]):
            input_gradient_row(dx, dy, x, mean, rstd, scale, bias, a, b, d, relu, r)


def _rows(a):
    """The (R, C) view of a C-contiguous channels-last array (a view: writes go through)."""
    return a.reshape(-1, a.shape[-1])


def _tasks(rows):
    return max(1, min(threads(), rows // _MIN_ROWS))


def scale_of(weight, var, eps):
    """weight / sqrt(var + eps) (C,) float32, in NumPy: the normalisation's factor, the same bits in
    the forward pass and in the backward's ReLU mask."""
    return weight / np.sqrt(var + np.float32(eps))


def batchnorm_forward_into(y, mean, var, x, weight, bias, eps, relu):
    """Training mode: fill y like x, and the batch's mean (C,) and biased var (C,)."""
    x = _rows(x)
    few = x.shape[0] < FEW_ROWS
    if few:
        _few_rows_moments(mean, var, x)
    else:
        _channel_moments(mean, var, x, _tasks(x.shape[0]))
    scale = scale_of(weight, var, eps)  # in NumPy for both: the same bits either way
    (_few_rows_normalize if few else _normalize)(_rows(y), x, mean, scale, bias, bool(relu))


def batchnorm_eval_forward_into(y, x, weight, bias, running_mean, running_var, eps, relu):
    """Evaluation mode: y like x, normalised with the running statistics."""
    _normalize(_rows(y), _rows(x), running_mean, scale_of(weight, running_var, eps), bias, bool(relu))


def batchnorm_backward_into(dx, dweight, dbias, dy, x, weight, bias, mean, var, eps, relu):
    """Fill dx like x (or skip it: dx=None), dweight and dbias (C,) from dy and the training
    forward's x, weight, bias (read only with ``relu``: where the ReLU let through), mean and var."""
    x = _rows(x)
    need_dx = dx is not None
    dx = _rows(dx) if need_dx else np.empty((0, x.shape[1]), np.float32)
    dy = _rows(dy)
    args = (dx, dweight, dbias, dy, x, weight, scale_of(weight, var, eps), bias, mean, var, float(eps), bool(relu),
            need_dx)
    if x.shape[0] < FEW_ROWS:
        _few_rows_backward(*args)
    else:
        _batchnorm_backward(*args, _tasks(x.shape[0]))


def _check_channels(x, **vectors):
    c = x.shape[-1]
    out = []
    for name, v in vectors.items():
        v = checks.array(name, v, 1, np.float32)
        checks.same_shape(name, v, (c,), f"one per channel of x {x.shape}")
        out.append(v)
    return out


def batchnorm_forward(x, weight, bias, eps=1e-5, relu=False):
    """Training mode over the last axis of x (rank >= 2, channels last): (y like x, mean (C,), var (C,))."""
    x = checks.channels_last("x", x, np.float32)
    weight, bias = _check_channels(x, weight=weight, bias=bias)
    eps = checks.positive_real("eps", eps)
    y = np.empty_like(x)
    mean, var = np.empty(x.shape[-1], np.float32), np.empty(x.shape[-1], np.float32)
    batchnorm_forward_into(y, mean, var, x, weight, bias, eps, relu)
    return y, mean, var


def batchnorm_eval_forward(x, weight, bias, running_mean, running_var, eps=1e-5, relu=False):
    """Evaluation mode over the last axis of x, with the running statistics: y like x."""
    x = checks.channels_last("x", x, np.float32)
    weight, bias, running_mean, running_var = _check_channels(
        x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    eps = checks.positive_real("eps", eps)
    y = np.empty_like(x)
    batchnorm_eval_forward_into(y, x, weight, bias, running_mean, running_var, eps, relu)
    return y


def batchnorm_backward(dy, x, weight, bias, mean, var, eps=1e-5, relu=False, need_dx=True):
    """Gradients of batchnorm_forward: (dx like x or None, dweight (C,), dbias (C,)), given the
    forward's x, weight, bias (read only with ``relu``) and the mean and var it returned."""
    x = checks.channels_last("x", x, np.float32)
    dy = checks.channels_last("dy", dy, np.float32)
    checks.same_shape("dy", dy, x.shape, "x's shape")
    weight, bias, mean, var = _check_channels(x, weight=weight, bias=bias, mean=mean, var=var)
    eps = checks.positive_real("eps", eps)
    dx = np.empty_like(x) if need_dx else None
    dweight, dbias = np.empty(x.shape[-1], np.float32), np.empty(x.shape[-1], np.float32)
    batchnorm_backward_into(dx, dweight, dbias, dy, x, weight, bias, mean, var, eps, relu)
    return dx, dweight, dbias
