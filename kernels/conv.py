"""2-D convolution (cross-correlation, as every framework does it), forward and backward.

Legend: N batch, H/W input height/width, C input channels, K output channels,
KH/KW kernel height/width, OH/OW output height/width. Layouts: x (N, H, W, C),
w (KH, KW, C, K), b (K,), y (N, OH, OW, K). Zero padding ``pad`` on every side.

The innermost loop always runs over the last axis (channels), which is contiguous in both the
activations and the weights, so it vectorises.
"""

import numba
import numpy as np
from numba import prange

from . import checks
from .jit import parallel_kernel
from .reduce import column_sums


@parallel_kernel
def _conv2d_forward(y, x, w, b, stride, pad):
    N, H, W, C = x.shape
    KH, KW, _, K = w.shape
    OH, OW = y.shape[1], y.shape[2]
    for row in prange(N * OH):  # one output row per task: rows never share an output
        n, oh = row // OH, row % OH
        for ow in range(OW):
            out = y[n, oh, ow]
            out[:] = b
            for kh in range(KH):
                ih = oh * stride - pad + kh
                if ih < 0 or ih >= H:
                    continue
                for kw in range(KW):
                    iw = ow * stride - pad + kw
                    if iw < 0 or iw >= W:
                        continue
                    for c in range(C):
                        v = x[n, ih, iw, c]
                        for k in range(K):
                            out[k] += v * w[kh, kw, c, k]


def conv2d_forward(x, w, b, stride=1, padding=0):
    """y = conv(x, w) + b. x (N, H, W, C), w (KH, KW, C, K), b (K,) -> y (N, OH, OW, K) float32."""
    x = checks.array("x", x, 4, np.float32)
    w = checks.array("w", w, 4, np.float32)
    b = checks.array("b", b, 1, np.float32)
    checks.same_shape("b", b, (w.shape[3],), "one bias per output channel")
    oh, ow = checks.conv_output_size(x.shape, w.shape, stride, padding)
    y = np.empty((x.shape[0], oh, ow, w.shape[3]), np.float32)
    _conv2d_forward(y, x, w, b, stride, padding)
    return y


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
def _conv2d_backward_weight(dw, partial, dy, x, stride, pad):
    # Each task sums a contiguous slice of the batch into its own partial dw; the partials are
    # then added in a fixed order: race-free, and bit-for-bit repeatable for a thread count.
    N, H, W, C = x.shape
    KH, KW, _, K = dw.shape
    OH, OW = dy.shape[1], dy.shape[2]
    chunks = partial.shape[0]
    for chunk in prange(chunks):
        pdw = partial[chunk]
        pdw[...] = 0.0
        for n in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            for oh in range(OH):
                for ow in range(OW):
                    g = dy[n, oh, ow]
                    for kh in range(KH):
                        ih = oh * stride - pad + kh
                        if ih < 0 or ih >= H:
                            continue
                        for kw in range(KW):
                            iw = ow * stride - pad + kw
                            if iw < 0 or iw >= W:
                                continue
                            for c in range(C):
                                v = x[n, ih, iw, c]
                                for k in range(K):
                                    pdw[kh, kw, c, k] += v * g[k]
    flat_dw, flat_partial = dw.reshape(-1), partial.reshape(chunks, -1)
    for i in prange(flat_dw.size):
        acc = flat_partial[0, i]
        for chunk in range(1, chunks):
            acc += flat_partial[chunk, i]
        flat_dw[i] = acc


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
    dw = np.empty_like(w)
    chunks = min(x.shape[0], numba.get_num_threads())  # one partial dw per thread
    partial = np.empty((chunks,) + w.shape, np.float32)
    _conv2d_backward_weight(dw, partial, dy, x, stride, padding)
    db = column_sums(dy.reshape(-1, dy.shape[3]))
    dx = None
    if need_dx:
        dx = np.empty_like(x)
        _conv2d_backward_input(dx, dy, w, stride, padding)
    return dx, dw, db
