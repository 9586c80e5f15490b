"""Conv -> ReLU -> max-pool fused: the full-size convolution output never goes to memory.

Legend as in conv.py and pool.py; P the pooling window, T its stride, PH/PW the pooled height and
width. x (N, H, W, C), w (KH, KW, C, K) -> y (N, PH, PW, K) and argmax (N, PH, PW, K) int32.

Forward, for a 2x2 window after a direct convolution (few input channels: the first layers of
CNNs; other shapes run the convolution whole, then the pool: one fused kernel per common case
keeps compiling short): a pooled row at a time, in register tiles of one window (2 x 2 output
pixels) by 2 vectors of channels (``pooled_row``), pooled in the registers, and the ReLU is
applied to the pooled values: relu(max(v)) = max(relu(v)), with the same gradient, on a quarter
of the values. Only y and, when training, the argmax go to memory: for each output, the index
``oh * OW + ow`` in the convolution's output of the value it took, exactly as ``maxpool_forward``
on that output gives it (first maximum wins, a NaN wins). Convolutions run by Winograd's
transforms pool their tiles as they are made instead (``winograd.forward_relu_pool_into``).

Backward: the gradient of the P convolution rows under one pooled row is rebuilt from dy, the
ReLU (y > 0) and the argmax, and its share added to the weight gradient (``conv.weight_rows``):
the full-size gradient never goes to memory either. Where the input gradient is wanted too (a block that is
not the first layer) the convolution's gradient is made whole and the plain backward runs: the input
gradient is a convolution of that whole gradient (``conv.input_gradient_into``), and making it costs
under a millisecond at batch 64 against the two convolutions' 10-40 (measured).

The reference twin is the composition of the reference kernels (reference.py).
"""

import numba
import numpy as np
from numba import prange

from . import algorithms, checks, simd, winograd
from .conv import (add_partials, conv2d_backward_into, conv2d_forward_into, direct_partials, fill_image, fill_strip,
                   padded_image, rows, strip_rows, taps, tasks, weight_rows, zero_partials)
from .dense import relu_backward_into, relu_forward_into
from .jit import helper, parallel_kernel
from .pool import check_window_argmax, maxpool_backward_into, maxpool_forward_into


@parallel_kernel
def _conv_relu_pool_forward(y, argmax, x, w, b, C, stride, pad, OW, pool_stride, save_argmax, tasks):
    # A 2x2 window (other windows are not fused: see conv_relu_pool_forward_into). Each task
    # owns a contiguous range of pooled rows (n, ph); the strips hold the two convolution rows'
    # input rows (those that fall outside the image zeros: fill_strip).
    N, H, WC = x.shape
    KH = w.shape[0]
    PH = y.shape[1]
    for task in prange(tasks):
        strips = np.zeros((2, KH, WC + 2 * pad * C), np.float32)
        for prow in range(task * N * PH // tasks, (task + 1) * N * PH // tasks):
            n = prow // PH
            ph = prow - n * PH
            for s in range(2):
                ih0, kh_lo, kh_hi = strip_rows(ph * pool_stride + s, stride, pad, KH, H)
                fill_strip(strips[s], x, n, ih0, kh_lo, kh_hi, pad * C)
            pooled_row(y, argmax, save_argmax, n, ph, strips, w, b, stride * C, pool_stride, OW)


@helper
def pooled_row(y, argmax, save_argmax, n, ph, strips, w, b, step, pool_stride, OW):
    """y[n, ph] (PW, K) = relu(max-pool 2x2 of the convolution's rows ph * pool_stride and the
    next, their input rows in strips[0] and strips[1] (``step`` = stride * C)), and argmax[n, ph]
    as maxpool_forward's if ``save_argmax``.

    In tiles of one window (2 x 2 output pixels) by 2 vectors of channels: the 8 sums stay in
    registers through all the taps, as conv_row's, and are pooled there (selects, lane by lane),
    so the convolution's rows are never stored. The last tile of a row takes fewer channels."""
    for k in range(0, y.shape[3], 2 * simd.WIDTH):
        for pw in range(y.shape[2]):
            _pooled_tile(y, argmax, save_argmax, n, ph, pw, k, strips, w, b, step, pool_stride, OW)


@numba.njit(inline="always")
def _pooled_tile(y, argmax, save_argmax, n, ph, pw, k, strips, w, b, step, pool_stride, OW):
    KH, KWC, K, V = w.shape[0], w.shape[1], w.shape[2], simd.WIDTH
    n0, n1 = min(V, K - k), max(0, min(V, K - k - V))  # the two vectors' lanes in use
    ow0 = pw * pool_stride
    a0, a1 = np.uint64(ow0 * step), np.uint64((ow0 + 1) * step)  # the window's two columns in the strips
    # s<row><column><vector>: the window's 4 pixels, each 2 vectors of channels
    s000, s001 = simd.load_first(b, k, n0), simd.load_first(b, k + V, n1)
    s010, s011, s100, s101, s110, s111 = s000, s001, s000, s001, s000, s001
    for kh in range(KH):
        for j0 in range(0, KWC, 3):
            for j in range(j0, j0 + 3):  # a fixed count, unrolled, as conv_row's
                if j < KWC:
                    at, uj = (kh * KWC + j) * K + k, np.uint64(j)
                    w0, w1 = simd.load_first(w, at, n0), simd.load_first(w, at + V, n1)
                    x = simd.splat(strips[0, kh, a0 + uj])
                    s000, s001 = simd.fma(x, w0, s000), simd.fma(x, w1, s001)
                    x = simd.splat(strips[0, kh, a1 + uj])
                    s010, s011 = simd.fma(x, w0, s010), simd.fma(x, w1, s011)
                    x = simd.splat(strips[1, kh, a0 + uj])
                    s100, s101 = simd.fma(x, w0, s100), simd.fma(x, w1, s101)
                    x = simd.splat(strips[1, kh, a1 + uj])
                    s110, s111 = simd.fma(x, w0, s110), simd.fma(x, w1, s111)
    o = ((n * y.shape[1] + ph) * y.shape[2] + pw) * K + k
    at0 = ph * pool_stride * OW + ow0  # the window's first pixel in the convolution's output
    _pool_store(y, argmax, save_argmax, o, at0, OW, s000, s010, s100, s110, n0)
    if n1 > 0:
        _pool_store(y, argmax, save_argmax, o + V, at0, OW, s001, s011, s101, s111, n1)


@numba.njit(inline="always")
def _pool_store(y, argmax, save_argmax, o, at0, OW, v0, v1, v2, v3, count):
    """The ReLU of the maximum of a window's 4 vectors (in reading order) into y from flat
    index o, and the offset of the maximum into argmax (as pool.max_of_four's), count lanes."""
    best, which = v0, simd.splat(0.0)
    which = simd.where_beats(v1, best, simd.splat(1.0), which)
    best = simd.where_beats(v1, best, v1, best)
    which = simd.where_beats(v2, best, simd.splat(OW), which)
    best = simd.where_beats(v2, best, v2, best)
    which = simd.where_beats(v3, best, simd.splat(OW + 1), which)
    best = simd.where_beats(v3, best, v3, best)
    simd.store_up_to(y, o, simd.relu(best), count)
    if save_argmax:
        simd.store_indices(argmax, o, which, at0, count)


@parallel_kernel
def _conv_relu_pool_backward_weight(dw, db, partial, partial_db, grad, dy, y, argmax, x, C, stride, pad, OW, size,
                                    pool_stride):
    # Each chunk sums a contiguous slice of the batch into its own partials, as in conv.py. For
    # each pooled row it rebuilds the gradient of the P convolution rows under it in grad (rows
    # chunk * P .. chunk * P + P - 1, each (OW, K)): every window position takes dy where the
    # argmax points at it and the ReLU let it through, else 0 (a select, so it vectorises), and
    # adds their share to the partials. Overlapping windows (T < P) add their shares one pooled
    # row at a time: a sum, so the result is the same; rows no window reads get no gradient.
    # (grad is an argument, not allocated here, so LLVM knows it does not overlap the partials.)
    N, H, WC = x.shape
    PH, PW, K = dy.shape[1], dy.shape[2], dy.shape[3]
    chunks = partial.shape[0]
    for chunk in prange(chunks):
        image = padded_image(H, WC, pad, C, OW, stride * C, partial.shape[2])
        zero_partials(partial, partial_db, chunk)
        r0 = chunk * size
        for n in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            fill_image(image, x, n, pad, C)
            for ph in range(PH):
                oh0 = ph * pool_stride
                grad[r0:r0 + size] = np.float32(0.0)
                for pw in range(PW):
                    ow0 = pw * pool_stride
                    for s in range(size):
                        for j in range(size):
                            at = np.int32((oh0 + s) * OW + ow0 + j)
                            for k in range(K):
                                hit = (argmax[n, ph, pw, k] == at) & (y[n, ph, pw, k] > 0)
                                grad[r0 + s, ow0 + j, k] += dy[n, ph, pw, k] if hit else np.float32(0.0)
                weight_rows(partial, np.uint64(chunk), partial_db, image, grad, r0, oh0, size, stride,
                            stride * C)  # chunk as uint64: see conv._conv2d_backward_weight
    add_partials(dw, db, partial, partial_db)


def conv_relu_pool_forward_into(y, argmax, conv, x, w, b, stride, pad, size, pool_stride):
    """y (N, PH, PW, K) = max-pool(relu(conv(x, w) + b)), and argmax as maxpool_forward's, or
    with argmax None (inference) not kept. ``conv`` (N, OH, OW, K) is room for the convolution's
    output: fused, for a 2x2 window after a convolution run directly (few input channels) or
    by Winograd's transforms, it is not touched; otherwise (GEMMs, other kernels and windows: one
    fused kernel per common case keeps compiling short) the output is made whole there, then pooled."""
    n, ph = y.shape[0], y.shape[1]
    path = algorithms.conv_forward(x.shape, w.shape, stride, pad)
    if path == "winograd" and size == 2 and pool_stride == 2:  # pooled as each tile is made
        winograd.forward_relu_pool_into(y, argmax, x, w, b, pad, conv.shape[1], conv.shape[2])
    elif path == "direct" and size == 2:
        save = argmax is not None
        _conv_relu_pool_forward(y, argmax if save else _NO_ARGMAX, rows(x), taps(w), b, x.shape[3], stride, pad,
                                conv.shape[2], pool_stride, save, tasks(n * ph))
    else:
        conv2d_forward_into(conv, x, w, b, stride, pad)
        maxpool_forward_into(y, np.empty(y.shape, np.int32) if argmax is None else argmax, conv, size, pool_stride)
        relu_forward_into(y, y)


_NO_ARGMAX = np.zeros((1, 1, 1, 1), np.int32)  # never written: the kernel's branch is off


def conv_relu_pool_backward_into(dx, dw, db, dy, x, w, y, argmax, dconv, stride, pad, size, pool_stride):
    """Fill dw, db and, unless it is None, dx, from dy (N, PH, PW, K) and the forward's x, w, y
    and argmax. ``dconv`` (N, OH, OW, K) is room for the convolution's gradient where it is made
    whole: for the input gradient, or where the weight gradient does not run directly."""
    if dx is None and algorithms.conv_weight_gradient(x.shape, w.shape, stride, pad) == "direct":
        partial, partial_db = direct_partials(x.shape[0], w)
        grad = np.empty((len(partial) * size, dconv.shape[2], dconv.shape[3]), np.float32)
        _conv_relu_pool_backward_weight(taps(dw), db, partial, partial_db, grad, dy, y, argmax, rows(x), x.shape[3],
                                        stride, pad, dconv.shape[2], size, pool_stride)
        return
    dpool = np.empty_like(dy)
    relu_backward_into(dpool, dy, y)
    maxpool_backward_into(dconv, dpool, argmax)
    conv2d_backward_into(dx, dw, db, dconv, x, w, stride, pad)


def output_shapes(x_shape, w_shape, stride, padding, size, pool_stride):
    """Check a conv -> ReLU -> max-pool's arguments; return the conv's and the pool's output shapes."""
    oh, ow = checks.conv_output_size(x_shape, w_shape, stride, padding)
    conv_shape = (x_shape[0], oh, ow, w_shape[3])
    ph, pw = checks.pool_output_size(conv_shape, size, pool_stride)
    return conv_shape, (x_shape[0], ph, pw, w_shape[3])


def conv_relu_pool_forward(x, w, b, stride=1, padding=0, size=2, pool_stride=None):
    """(y, argmax) = max-pool(relu(conv(x, w) + b)) over ``size`` windows every ``pool_stride``
    (default ``size``) pixels; argmax indexes the convolution's output, as maxpool_forward's."""
    x = checks.array("x", x, 4, np.float32)
    w = checks.array("w", w, 4, np.float32)
    b = checks.array("b", b, 1, np.float32)
    checks.same_shape("b", b, (w.shape[3],), "one bias per output channel")
    pool_stride = size if pool_stride is None else pool_stride
    conv_shape, shape = output_shapes(x.shape, w.shape, stride, padding, size, pool_stride)
    y, argmax = np.empty(shape, np.float32), np.empty(shape, np.int32)
    conv_relu_pool_forward_into(y, argmax, np.empty(conv_shape, np.float32), x, w, b, stride, padding, size,
                                pool_stride)
    return y, argmax


def conv_relu_pool_backward(dy, x, w, y, argmax, stride=1, padding=0, size=2, pool_stride=None, need_dx=True):
    """Gradients of conv_relu_pool_forward: (dx, dw, db); ``need_dx=False`` returns None for dx."""
    x = checks.array("x", x, 4, np.float32)
    w = checks.array("w", w, 4, np.float32)
    dy = checks.array("dy", dy, 4, np.float32)
    y = checks.array("y", y, 4, np.float32)
    pool_stride = size if pool_stride is None else pool_stride
    conv_shape, shape = output_shapes(x.shape, w.shape, stride, padding, size, pool_stride)
    checks.same_shape("dy", dy, shape, "the forward output's shape")
    checks.same_shape("y", y, shape, "the forward output's shape")
    check_window_argmax(argmax, shape, conv_shape[2], size, pool_stride)
    dx = np.empty_like(x) if need_dx else None
    dw, db = np.empty_like(w), np.empty(w.shape[3], np.float32)
    conv_relu_pool_backward_into(dx, dw, db, dy, x, w, y, argmax, np.empty(conv_shape, np.float32), stride, padding,
                                 size, pool_stride)
    return dx, dw, db
