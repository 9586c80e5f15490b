"""Fully connected layers, plain and with ReLU fused; and ReLU on its own.

Legend: N batch, I input features, O output features. x (N, I), w (I, O), b (O,), y (N, O).
The forward pass may scale each output feature, y = (x @ w) * scale + b: a BatchNorm1D after the
layer, in evaluation, is that per-feature scale and shift (folding it into w instead would cost a
pass over all I * O weights on every call: 0.1 ms of one image's 0.27 ms in the deep network).
The products are single-threaded GEMMs (``blas.gemm``), one block per Numba thread. The forward
pass splits the inner dimension: each thread multiplies its rows of w at full width into a
partial (N, O), and the partials are added in thread order with the bias and the ReLU (measured:
0.64 against 0.75 ms for the MNIST layer on 2 threads split by columns, and 34 against 75 us
for one image, where each thread now streams its own contiguous half of w). The backward pass
needs no partial sums: the weight gradient is split by rows of dw, the input gradient by
columns of dx. Every result is the same bit for bit for a given thread count.

``*_into`` are the unchecked cores, which the execution plan calls with its own buffers; the
functions without it check their arguments and allocate the results.
"""

import functools

import numba
import numpy as np
from numba import prange

from .errors import ShapeError

from . import checks
from .activations import elementwise, elementwise_backward
from .blas import NO_TRANS, TRANS, gemm, matrix_times, vector_times
from .jit import parallel_kernel, serial_kernel, threads, zeros

# Blocks smaller than these multiply inefficiently, or cost more to hand out than they save:
# a thread takes at least this many output columns or rows of w.
_MIN_COLUMNS = 16
_MIN_ROWS = 256
# Rows of x up to which the forward pass streams w itself rather than calling GEMM (measured on the
# MNIST layer, 6272 x 128: see _dense_forward_few).
_FEW_ROWS = 8
# Elements of w (32 KB: it fits in L1) up to which a few rows are multiplied on the calling thread:
# handing so small a product to the threads costs more than the product (see _dense_forward_small).
_SMALL = 8192


@parallel_kernel
def _dense_forward(y, partial, x, w, b, scale, relu, tasks):
    # Each task multiplies a block of the inner dimension at full width into partial[task]
    # (N, O); the partials are then added in task order, with the bias and the ReLU.
    N, I = x.shape
    O = w.shape[1]
    flat_x, flat_w, flat_p = x.reshape(-1), w.reshape(-1), partial.reshape(-1)
    for task in prange(tasks):
        i0, i1 = task * I // tasks, (task + 1) * I // tasks
        gemm(NO_TRANS, NO_TRANS, N, O, i1 - i0, np.float32(1.0), flat_x[i0:], I, flat_w[i0 * O:], O,
             np.float32(0.0), flat_p[task * N * O:], O)
    add_partials_bias(y, partial, b, scale, relu, tasks)


@numba.njit(inline="always")
def add_partials_bias(y, partial, b, scale, relu, tasks):
    """y = the partials added in task order, times scale, plus b (then the ReLU): N * O values,
    serial (a second parallel loop cost 0.6 s of compiling). A scale of ones changes no bit."""
    N, O = y.shape
    for n in range(N):
        for o in range(O):
            v = partial[0, n, o]
            for task in range(1, tasks):
                v += partial[task, n, o]
            v = v * scale[o] + b[o]
            y[n, o] = max(v, np.float32(0.0)) if relu else v


@parallel_kernel
def _dense_forward_few(y, partial, x, w, b, scale, relu, tasks):
    # For a few rows: each task streams its block of w's rows once, adding each into every row's
    # partial (N, O) (a GEMM call would pack the whole block of w for a product this small, which
    # OpenBLAS's Haswell kernels do on every call: 1.1 ms for one row of the MNIST layer). A row
    # of w whose inputs are all zero adds nothing, and after a ReLU (and its max-pool) most are:
    # two thirds of the MNIST layer's on digits. A sample of the block's inputs says which way:
    # one row with more than 2/5 of them needed goes to BLAS's GEMV, which streams w faster than
    # the loop (36 against 43 us for the MNIST layer on 2 threads); more rows with more than 2/3
    # needed read every row; else only the rows needed are read (the sum is the same but where w
    # holds an Inf or a NaN, which a zero input would have made a NaN). Four rows at a time, so
    # the partials are read and written a quarter as often.
    # The thresholds are where the listed rows stopped paying (AVX2-only Zen 3, 2026-12-07); the
    # sample keeps a block of nonzero inputs as fast as before (counting all of them cost 1-3 us).
    N, I = x.shape
    O = w.shape[1]
    for task in prange(tasks):
        i0, i1 = task * I // tasks, (task + 1) * I // tasks
        p = partial[task]
        share = 1.0  # of the block's rows needed; a block of w that fits in L1 is read whole
        if (i1 - i0) * O >= _LIST_FROM:
            stride = (i1 - i0) // _SAMPLE | 1  # odd: features lie channel by channel, 2**k of them
            sampled = needed = 0
            for i in range(i0, i1, stride):
                needed += row_needed(x, i)
                sampled += 1
            share = needed / sampled
        if N == 1 and share > 2 / 5:
            vector_times(i1 - i0, O, np.float32(1.0), x.reshape(-1)[i0:], w.reshape(-1)[i0 * O:], O,
                         np.float32(0.0), p.reshape(-1))
            continue
        p[...] = np.float32(0.0)
        rows = np.empty(i1 - i0, np.int64)
        k = 0
        if N > 1 and share > 2 / 3:  # every row, in order (a loop of its own for them was 2-4%
            for i in range(i0, i1):  # faster, and 0.6 s longer to compile)
                rows[k] = i
                k += 1
        else:
            for i in range(i0, i1):  # the rows needed, listed without a branch to mispredict
                rows[k] = i
                k += row_needed(x, i)
        add_listed_rows(p, x, w, rows, k)
    add_partials_bias(y, partial, b, scale, relu, tasks)


@serial_kernel
def _dense_forward_small(y, x, w, b, scale, relu):
    # A few rows times a w that fits in L1 (a last layer's 128 x 10), on the calling thread: the
    # threads' start and the partials cost more than the product (one image of the MNIST
    # network's last layer: 1.9 against 4.4 us, with the caches as the layer before leaves them).
    N, I = x.shape
    O = w.shape[1]
    for n in range(N):
        acc = np.zeros(O, np.float32)  # (a local array: LLVM keeps it apart from y and w)
        for i in range(I):
            xi = x[n, i]
            for o in range(O):
                acc[o] += xi * w[i, o]
        for o in range(O):
            v = acc[o] * scale[o] + b[o]
            y[n, o] = max(v, np.float32(0.0)) if relu else v


# Inputs a block of the few-rows path looks at to choose its way (a fraction's error of about 3%),
# and the size of block (elements of w: 32 KB) from which it looks (the last layer's 128 x 10 took
# 0.2-0.6 us longer for nothing).
_SAMPLE = 256
_LIST_FROM = 8192


@numba.njit(inline="always")
def row_needed(x, i):
    """Whether some row of x has input i nonzero (a NaN is not zero), without a branch."""
    hit = False
    for n in range(x.shape[0]):
        hit |= x[n, i] != 0
    return hit


@numba.njit(inline="always")
def add_listed_rows(p, x, w, rows, count):
    """p (N, O) += x[:, r] * w[r] for the rows r in rows[:count], four at a time."""
    N, O = p.shape
    quads = count // 4 * 4
    for j in range(0, quads, 4):
        r0, r1, r2, r3 = rows[j], rows[j + 1], rows[j + 2], rows[j + 3]
        for n in range(N):
            x0, x1, x2, x3 = x[n, r0], x[n, r1], x[n, r2], x[n, r3]
            for o in range(O):
                p[n, o] += x0 * w[r0, o] + x1 * w[r1, o] + x2 * w[r2, o] + x3 * w[r3, o]
    for j in range(quads, count):
        r = rows[j]
        for n in range(N):
            xr = x[n, r]
            for o in range(O):
                p[n, o] += xr * w[r, o]


@parallel_kernel
def _dense_backward(dx, dw, db, dz, dy, x, w, y, relu, need_dx, tasks):
    N, I = x.shape
    O = w.shape[1]
    # dz = dy where ReLU let it through; db its column sums, in float64, in row order. On one
    # thread: N * O values, a few microseconds (a second parallel loop cost 1 s of compiling).
    acc = zeros(O)
    for n in range(N):
        for o in range(O):
            g = dy[n, o] if (not relu or y[n, o] > 0) else np.float32(0.0)
            dz[n, o] = g
            acc[o] += g
    for o in range(O):
        db[o] = acc[o]
    # dw[i0:i1] = x[:, i0:i1].T @ dz;  dx[:, i0:i1] = dz @ w[i0:i1].T
    flat_x, flat_w, flat_dz = x.reshape(-1), w.reshape(-1), dz.reshape(-1)
    flat_dw, flat_dx = dw.reshape(-1), dx.reshape(-1)
    for task in prange(tasks):
        i0, i1 = task * I // tasks, (task + 1) * I // tasks
        gemm(TRANS, NO_TRANS, i1 - i0, O, N, np.float32(1.0), flat_x[i0:], I, flat_dz, O,
             np.float32(0.0), flat_dw[i0 * O:], O)
        if need_dx and N <= _FEW_ROWS:  # a GEMM would pack all of the block of w for these few rows
            for n in range(N):
                matrix_times(i1 - i0, O, np.float32(1.0), flat_w[i0 * O:], O, flat_dz[n * O:], np.float32(0.0),
                             flat_dx[n * I + i0:])
        elif need_dx:
            gemm(NO_TRANS, TRANS, N, i1 - i0, O, np.float32(1.0), flat_dz, O, flat_w[i0 * O:], O,
                 np.float32(0.0), flat_dx[i0:], I)


def _tasks(blocks):
    """Threads for ``blocks`` blocks of a useful size: at least one, at most every thread."""
    return max(1, min(threads(), blocks))


def dense_forward_into(y, x, w, b, relu, scale=None):
    """y = (x @ w) * scale + b (scale (O,) or None: none), then max(., 0) if ``relu``: into y (N, O)."""
    scale = _ones(w.shape[1]) if scale is None else scale
    if x.shape[0] <= _FEW_ROWS and w.size <= _SMALL:
        _dense_forward_small(y, x, w, b, scale, relu)
        return
    tasks = _tasks(w.shape[0] // _MIN_ROWS)
    if x.shape[0] <= _FEW_ROWS:
        _dense_forward_few(y, np.empty((tasks, *y.shape), np.float32), x, w, b, scale, relu, tasks)
        return
    # One task multiplies straight into y (the adding pass reads each element before writing it).
    partial = y.reshape(1, *y.shape) if tasks == 1 else np.empty((tasks, *y.shape), np.float32)
    _dense_forward(y, partial, x, w, b, scale, relu, tasks)


@functools.lru_cache(maxsize=64)
def _ones(n):
    # Writable, as the BatchNorm's scales are: Numba types a read-only array apart, and each
    # dense kernel would compile twice in a network with both kinds of layer. Never written.
    return np.ones(n, np.float32)


def dense_backward_into(dx, dw, db, dy, x, w, y, relu):
    """Fill dx (N, I) (or skip it, dx=None), dw (I, O) and db (O,) from dy and the forward's
    x, w and, with ``relu``, its output y (which says where ReLU let the gradient through)."""
    dz = np.empty_like(dy)
    need_dx = dx is not None
    # dw and dx are split by rows of w: two threads from 512 rows, or from 32 output columns.
    tasks = _tasks(max(w.shape[1] // _MIN_COLUMNS, w.shape[0] // _MIN_ROWS))
    _dense_backward(dx if need_dx else dz, dw, db, dz, dy, x, w, y if relu else dy, relu, need_dx, tasks)


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


def _forward(x, w, b, relu):
    x, w, b = _check_dense(x, w, b)
    y = np.empty((x.shape[0], w.shape[1]), np.float32)
    dense_forward_into(y, x, w, b, relu)
    return y


def dense_forward(x, w, b):
    """y = x @ w + b."""
    return _forward(x, w, b, False)


def dense_relu_forward(x, w, b):
    """y = max(x @ w + b, 0), the bias and ReLU fused into the pass after the product."""
    return _forward(x, w, b, True)


def _backward(dy, x, w, y, relu, need_dx):
    x, w, _ = _check_dense(x, w, None)
    dy = checks.array("dy", dy, 2, np.float32)
    checks.same_shape("dy", dy, (x.shape[0], w.shape[1]), "the forward output's shape")
    if relu:
        y = checks.array("y", y, 2, np.float32)
        checks.same_shape("y", y, dy.shape, "the forward output's shape")
    dx = np.empty_like(x) if need_dx else None
    dw, db = np.empty_like(w), np.empty(w.shape[1], np.float32)
    dense_backward_into(dx, dw, db, dy, x, w, y, relu)
    return dx, dw, db


def dense_backward(dy, x, w, need_dx=True):
    """Gradients of dense_forward: (dx, dw, db); ``need_dx=False`` returns None for dx."""
    return _backward(dy, x, w, None, False, need_dx)


def dense_relu_backward(dy, x, w, y, need_dx=True):
    """Gradients of dense_relu_forward, given its output y (which says where ReLU let through)."""
    return _backward(dy, x, w, y, True, need_dx)


@parallel_kernel
def _relu_forward(y, x):
    for i in prange(x.size):
        y[i] = max(x[i], np.float32(0.0))


@parallel_kernel
def _relu_backward(dx, dy, y):
    for i in prange(dy.size):
        dx[i] = dy[i] if y[i] > 0 else np.float32(0.0)


# Flat views, as for the other activations (activations.py): one compiled kernel for every rank.
def relu_forward_into(y, x):
    _relu_forward(y.reshape(-1), x.reshape(-1))


def relu_backward_into(dx, dy, y):
    _relu_backward(dx.reshape(-1), dy.reshape(-1), y.reshape(-1))


def relu_forward(x):
    """y = max(x, 0), any shape."""
    return elementwise(relu_forward_into, x)


def relu_backward(dy, y):
    """dx = dy where the forward output y was positive, else 0."""
    return elementwise_backward(relu_backward_into, dy, y)
