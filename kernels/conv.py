"""2-D convolution (cross-correlation, as every framework does it), forward and backward.

Legend: N batch, H/W input height/width, C input channels, K output channels,
KH/KW kernel height/width, OH/OW output height/width. Layouts: x (N, H, W, C),
w (KH, KW, C, K), b (K,), y (N, OH, OW, K). Zero padding ``pad`` on every side.

The innermost loop always runs over the last axis (channels), which is contiguous in both the
activations and the weights, so it vectorises.

The forward pass and the weight gradient view x as (N, H, W*C) and w as (KH, KW*C, K): for one
kernel row kh, the taps (kw, c) of an output pixel are KW*C consecutive floats of an input row,
and KW*C consecutive rows of w. A task first copies the KH input rows under its current output
row into a strip with ``pad`` zero pixels left and right, so the hot loops need no bounds checks.
These two kernels index arrays directly rather than through views: then Numba tells LLVM that
the arrays do not overlap, and the loops vectorise without run-time overlap checks.
"""

import numba
import numpy as np
from numba import prange

from . import checks
from .jit import parallel_kernel

# Strip positions are indexed as unsigned integers (and offset by these unsigned constants, so
# that the sums stay unsigned): Numba then leaves out its fix-up code for negative indices.
_U1, _U2 = np.uint64(1), np.uint64(2)


@parallel_kernel
def _conv2d_forward(y, x, w, b, C, stride, pad, tasks):
    # Each task owns a contiguous range of output rows. The taps are added to an output row three
    # at a time (one read-modify-write of an output pixel per three taps), tap-major, so that
    # consecutive pixels are independent and overlap in the CPU.
    N, H, WC = x.shape
    KH, KWC, K = w.shape
    OH, OW = y.shape[1], y.shape[2]
    step = stride * C
    triples = KWC - KWC % 3
    for task in prange(tasks):
        strip = np.zeros((KH, WC + 2 * pad * C), np.float32)
        for row in range(task * N * OH // tasks, (task + 1) * N * OH // tasks):
            n = row // OH
            oh = row - n * OH
            ih0 = oh * stride - pad
            kh_lo, kh_hi = max(0, -ih0), min(KH, H - ih0)
            _fill_strip(strip, x, n, ih0, kh_lo, kh_hi, pad * C)
            for ow in range(OW):
                for k in range(K):
                    y[n, oh, ow, k] = b[k]
            for kh in range(kh_lo, kh_hi):
                for j in range(0, triples, 3):
                    for ow in range(OW):
                        at = np.uint64(ow * step + j)
                        v0, v1, v2 = strip[kh, at], strip[kh, at + _U1], strip[kh, at + _U2]
                        for k in range(K):
                            y[n, oh, ow, k] += v0 * w[kh, j, k] + v1 * w[kh, j + 1, k] + v2 * w[kh, j + 2, k]
                for j in range(triples, KWC):
                    for ow in range(OW):
                        v = strip[kh, np.uint64(ow * step + j)]
                        for k in range(K):
                            y[n, oh, ow, k] += v * w[kh, j, k]


@numba.njit(inline="always")
def _fill_strip(strip, x, n, ih0, kh_lo, kh_hi, skip):
    """Copy input rows ih0+kh_lo .. ih0+kh_hi-1 of image n (x viewed as (N, H, W*C)) into strip
    rows kh_lo.., after ``skip`` zeros. The padding stays zero from the strip's allocation."""
    for kh in range(kh_lo, kh_hi):
        for i in range(x.shape[2]):
            strip[kh, skip + i] = x[n, ih0 + kh, i]


def conv2d_forward(x, w, b, stride=1, padding=0):
    """y = conv(x, w) + b. x (N, H, W, C), w (KH, KW, C, K), b (K,) -> y (N, OH, OW, K) float32."""
    x = checks.array("x", x, 4, np.float32)
    w = checks.array("w", w, 4, np.float32)
    b = checks.array("b", b, 1, np.float32)
    checks.same_shape("b", b, (w.shape[3],), "one bias per output channel")
    oh, ow = checks.conv_output_size(x.shape, w.shape, stride, padding)
    y = np.empty((x.shape[0], oh, ow, w.shape[3]), np.float32)
    kh, kw, c, k = w.shape
    _conv2d_forward(y, _rows(x), w.reshape(kh, kw * c, k), b, c, stride, padding, _tasks(x.shape[0] * oh))
    return y


def _rows(x):
    """x (N, H, W, C) viewed as (N, H, W*C): an image row as one contiguous run."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _tasks(rows):
    """One task per thread, each a contiguous range of rows, so per-task scratch is allocated once."""
    return min(rows, numba.get_num_threads())


@parallel_kernel
def _conv2d_backward_input(dx, dy, w, stride, pad):
    # Gather form: each task owns one input row of dx and collects every output that read it,
    # so no two threads ever write the same element.
    N, H, W, C = dx.shape
    KH, KW, _, K = w.shape
    OH, OW = dy.shape[1], dy.shape[2]
    for row in prange(N * H):
        n, ih = row // H, row % H
        dx[n, ih, :, :] = 0.0
        for kh in range(KH):
            t = ih + pad - kh  # = oh * stride for the output row that read this input row
            if t < 0 or t % stride != 0 or t // stride >= OH:
                continue
            oh = t // stride
            for iw in range(W):
                for kw in range(KW):
                    u = iw + pad - kw
                    if u < 0 or u % stride != 0 or u // stride >= OW:
                        continue
                    g = dy[n, oh, u // stride]
                    for c in range(C):
                        acc = np.float32(0.0)
                        for k in range(K):
                            acc += g[k] * w[kh, kw, c, k]
                        dx[n, ih, iw, c] += acc


@parallel_kernel
def _conv2d_backward_weight(dw, db, partial, partial_db, dy, x, C, stride, pad):
    # Each task sums a contiguous slice of the batch into its own partial dw and db; the partials
    # are then added in a fixed order: race-free, and bit-for-bit repeatable for a thread count.
    # Pixels are taken four at a time and taps three at a time, so one pass over K updates three
    # rows of dw with twelve products. db is accumulated in float64 (tens of thousands of pixels).
    N, H, WC = x.shape
    KH, KWC, K = dw.shape
    OH, OW = dy.shape[1], dy.shape[2]
    step, ustep = stride * C, np.uint64(stride * C)
    triples, quads = KWC - KWC % 3, OW - OW % 4
    chunks = partial.shape[0]
    for chunk in prange(chunks):
        strip = np.zeros((KH, WC + 2 * pad * C), np.float32)
        for kh in range(KH):
            for j in range(KWC):
                for k in range(K):
                    partial[chunk, kh, j, k] = np.float32(0.0)
        for k in range(K):
            partial_db[chunk, k] = 0.0
        for n in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            for oh in range(OH):
                ih0 = oh * stride - pad
                kh_lo, kh_hi = max(0, -ih0), min(KH, H - ih0)
                _fill_strip(strip, x, n, ih0, kh_lo, kh_hi, pad * C)
                for ow in range(0, quads, 4):
                    for k in range(K):
                        partial_db[chunk, k] += (dy[n, oh, ow, k] + dy[n, oh, ow + 1, k]
                                                 + dy[n, oh, ow + 2, k] + dy[n, oh, ow + 3, k])
                for ow in range(quads, OW):
                    for k in range(K):
                        partial_db[chunk, k] += dy[n, oh, ow, k]
                for kh in range(kh_lo, kh_hi):
                    for ow in range(0, quads, 4):
                        for j in range(0, triples, 3):
                            at = np.uint64(ow * step + j)
                            v00, v01, v02 = strip[kh, at], strip[kh, at + _U1], strip[kh, at + _U2]
                            at += ustep
                            v10, v11, v12 = strip[kh, at], strip[kh, at + _U1], strip[kh, at + _U2]
                            at += ustep
                            v20, v21, v22 = strip[kh, at], strip[kh, at + _U1], strip[kh, at + _U2]
                            at += ustep
                            v30, v31, v32 = strip[kh, at], strip[kh, at + _U1], strip[kh, at + _U2]
                            for k in range(K):
                                g0, g1 = dy[n, oh, ow, k], dy[n, oh, ow + 1, k]
                                g2, g3 = dy[n, oh, ow + 2, k], dy[n, oh, ow + 3, k]
                                partial[chunk, kh, j, k] += v00 * g0 + v10 * g1 + v20 * g2 + v30 * g3
                                partial[chunk, kh, j + 1, k] += v01 * g0 + v11 * g1 + v21 * g2 + v31 * g3
                                partial[chunk, kh, j + 2, k] += v02 * g0 + v12 * g1 + v22 * g2 + v32 * g3
                        for j in range(triples, KWC):
                            at = np.uint64(ow * step + j)
                            v0, v1 = strip[kh, at], strip[kh, at + ustep]
                            v2, v3 = strip[kh, at + ustep + ustep], strip[kh, at + ustep + ustep + ustep]
                            for k in range(K):
                                g0, g1 = dy[n, oh, ow, k], dy[n, oh, ow + 1, k]
                                g2, g3 = dy[n, oh, ow + 2, k], dy[n, oh, ow + 3, k]
                                partial[chunk, kh, j, k] += v0 * g0 + v1 * g1 + v2 * g2 + v3 * g3
                    for ow in range(quads, OW):
                        for j in range(KWC):
                            v = strip[kh, np.uint64(ow * step + j)]
                            for k in range(K):
                                partial[chunk, kh, j, k] += v * dy[n, oh, ow, k]
    # dw and db are small: one thread adds the partials, in chunk order.
    for kh in range(KH):
        for j in range(KWC):
            for k in range(K):
                acc = partial[0, kh, j, k]
                for chunk in range(1, chunks):
                    acc += partial[chunk, kh, j, k]
                dw[kh, j, k] = acc
    for k in range(K):
        acc64 = partial_db[0, k]
        for chunk in range(1, chunks):
            acc64 += partial_db[chunk, k]
        db[k] = acc64


def conv2d_backward(dy, x, w, stride=1, padding=0, need_dx=True):
    """Gradients of conv2d_forward: (dx, dw, db) from dy (N, OH, OW, K) and the forward's x, w.

    ``need_dx=False`` skips the input gradient (the first layer has no use for it) and returns
    ``None`` in its place.
    """
    x = checks.array("x", x, 4, np.float32)
    w = checks.array("w", w, 4, np.float32)
    dy = checks.array("dy", dy, 4, np.float32)
    oh, ow = checks.conv_output_size(x.shape, w.shape, stride, padding)
    checks.same_shape("dy", dy, (x.shape[0], oh, ow, w.shape[3]), "the forward output's shape")
    kh, kw, c, k = w.shape
    dw, db = np.empty((kh, kw * c, k), np.float32), np.empty(k, np.float32)
    # A few partial dw and db per thread: measured faster than one (the threads balance better).
    chunks = min(x.shape[0], 4 * numba.get_num_threads())
    partial = np.empty((chunks,) + dw.shape, np.float32)
    partial_db = np.empty((chunks, k), np.float64)
    _conv2d_backward_weight(dw, db, partial, partial_db, dy, _rows(x), c, stride, padding)
    dw = dw.reshape(w.shape)
    dx = None
    if need_dx:
        dx = np.empty_like(x)
        _conv2d_backward_input(dx, dy, w, stride, padding)
    return dx, dw, db
