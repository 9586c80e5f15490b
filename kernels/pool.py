"""Max-pooling that remembers where each maximum came from, forward and backward.

Legend: N batch, H/W input height/width, C channels, S window size, T stride,
OH = (H - S) // T + 1 (sizes that do not divide are floored; the last rows/columns are dropped).
x (N, H, W, C) -> y (N, OH, OW, C) and argmax (N, OH, OW, C) int32: for each output, the index
``ih * W + iw`` of the input element it took. The first maximum of a window wins, and a NaN
counts as a maximum (as ``np.argmax`` does), so a NaN never disappears in the pool.

The innermost loops run over the contiguous channel axis, so they vectorise.
"""

import numba
import numpy as np
from numba import prange

from .errors import ShapeError

from . import checks
from .jit import parallel_kernel, serial_kernel, threads


@parallel_kernel
def _maxpool_forward_2x2(y, argmax, x, stride):
    # The common 2x2 window, a kernel of its own (the general one is only compiled for other
    # windows): its four elements are compared in registers. One output row per task.
    N, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for row in prange(N * OH):
        n, oh, h0 = pooled_row(row, OH, stride)
        for ow in range(OW):
            w0 = ow * stride
            at0 = np.int32(h0 * W + w0)
            for c in range(C):
                best, at = max_of_four(x[n, h0, w0, c], x[n, h0, w0 + 1, c], x[n, h0 + 1, w0, c],
                                       x[n, h0 + 1, w0 + 1, c], at0, W)
                y[n, oh, ow, c] = best
                argmax[n, oh, ow, c] = at


@parallel_kernel
def _maxpool_forward(y, argmax, x, size, stride):
    # Any window; one output row per task: rows never share an output.
    N, H, W, C = x.shape
    OH, OW = y.shape[1], y.shape[2]
    rows = x.reshape(N * H, W, C)
    for row in prange(N * OH):
        n = row // OH
        oh = row - n * OH
        h0 = oh * stride
        for ow in range(OW):
            pool_window(y, argmax, True, n, oh, ow, rows, n * H + h0, h0, ow * stride, size, W)


@numba.njit(inline="always")
def pool_window(y, argmax, save_argmax, n, oh, ow, src, row0, h0, w0, size, W):
    """y[n, oh, ow] (C,) = the maximum over src rows row0.. and columns w0.. of a size x size
    window (src is (rows, W, C)), and, if ``save_argmax``, argmax[n, oh, ow] the index
    ``(h0 + i) * W + w0 + j`` of the first maximum. The output pixel itself holds the running
    maximum of its C channels, and each window element is compared against it channel by channel."""
    C = y.shape[3]
    first = np.int32(h0 * W + w0)
    for c in range(C):
        y[n, oh, ow, c] = src[row0, w0, c]
        if save_argmax:
            argmax[n, oh, ow, c] = first
    for i in range(size):
        for j in range(size):
            if i + j == 0:
                continue
            at = np.int32((h0 + i) * W + w0 + j)
            for c in range(C):
                v = src[row0 + i, w0 + j, c]
                if beats(v, y[n, oh, ow, c]):
                    y[n, oh, ow, c] = v
                    if save_argmax:
                        argmax[n, oh, ow, c] = at


@numba.njit(inline="always")
def max_of_four(v0, v1, v2, v3, at0, W):
    """The maximum of a 2x2 window's values (v0 at flat index at0, in a row of W pixels) and its
    index, by selects: no branch, so a loop over the channels around it vectorises."""
    # The indices in int32, as the argmax is stored (Numba widens int32 sums to int64, which
    # doubles the selects' width); loop-invariant, so a loop over the channels computes them once.
    at1, at2 = np.int32(at0 + 1), np.int32(at0 + W)
    at3 = np.int32(at2 + 1)
    best, at = v0, at0
    take = beats(v1, best)
    best, at = v1 if take else best, at1 if take else at
    take = beats(v2, best)
    best, at = v2 if take else best, at2 if take else at
    take = beats(v3, best)
    return (v3 if take else best), (at3 if take else at)


@numba.njit(inline="always")
def pooled_row(row, PH, stride):
    """Of pooled row ``row`` = n * PH + ph of a batch: n, ph and its windows' first input row."""
    n = row // PH
    ph = row - n * PH
    return n, ph, ph * stride


@numba.njit(inline="always")
def beats(v, best):
    """Whether window element v replaces the running maximum: when strictly greater (so the first
    maximum wins), or when v is a NaN and the maximum is not (so the first NaN wins)."""
    return (v > best) | ((v != v) & (best == best))


def maxpool_forward_into(y, argmax, x, size, stride):
    if size == 2:
        _maxpool_forward_2x2(y, argmax, x, stride)
    else:
        _maxpool_forward(y, argmax, x, size, stride)


def maxpool_forward(x, size, stride=None):
    """x (N, H, W, C) -> (y, argmax), both (N, OH, OW, C); ``stride`` defaults to ``size``."""
    x = checks.array("x", x, 4, np.float32)
    stride = size if stride is None else stride
    oh, ow = checks.pool_output_size(x.shape, size, stride)
    y = np.empty((x.shape[0], oh, ow, x.shape[3]), np.float32)
    argmax = np.empty(y.shape, np.int32)
    maxpool_forward_into(y, argmax, x, size, stride)
    return y, argmax


@parallel_kernel
def _maxpool_backward_tiled(dx, dy, argmax, tile_h, tile_w, tasks):
    # Cut the input into tiles, one per output: output (oh, ow) gets rows oh*tile_h ..
    # (oh+1)*tile_h - 1 and columns likewise, the last row/column of outputs also the floored-off
    # remainder. When windows do not overlap (stride >= size, and tile = stride), each argmax
    # points into its own output's tile, so every input element is written exactly once, as dy
    # or 0: no zeroing pass, no index arithmetic per element. Each task owns a range of output
    # rows, and stops at the first whose maxima are not all in their tiles (each output hits at
    # most one element of its tile, so all hit iff the count is complete). Returns whether every
    # task finished; if not, the caller must take the general path.
    N, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    done = np.empty(tasks, np.bool_)
    for task in prange(tasks):
        done[task] = True
        for row in range(task * N * OH // tasks, (task + 1) * N * OH // tasks):
            n = row // OH
            oh = row - n * OH
            h_end = H if oh == OH - 1 else (oh + 1) * tile_h
            found = 0
            for ih in range(oh * tile_h, h_end):
                for ow in range(OW):
                    w_end = W if ow == OW - 1 else (ow + 1) * tile_w
                    for iw in range(ow * tile_w, w_end):
                        at = np.int32(ih * W + iw)
                        for c in range(C):
                            hit = argmax[n, oh, ow, c] == at
                            dx[n, ih, iw, c] = dy[n, oh, ow, c] if hit else np.float32(0.0)
                            found += hit
            if found != OW * C:
                done[task] = False
                break
    for task in range(tasks):
        if not done[task]:
            return False
    return True


@parallel_kernel
def _maxpool_backward_overlapping(dx, dy, argmax):
    # Overlapping windows may route two gradients into one input element: one image per task,
    # and only the owner of that image ever adds into it. Returns whether every argmax was a
    # valid index (the others are skipped).
    N, H, W, C = dx.shape
    OH, OW = dy.shape[1], dy.shape[2]
    flat_dx = dx.reshape(N, H * W, C)
    bad = np.empty(N, np.int64)
    for n in prange(N):
        for i in range(H * W):
            for c in range(C):
                flat_dx[n, i, c] = np.float32(0.0)
        strays = 0
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    at = argmax[n, oh, ow, c]
                    if 0 <= at < H * W:
                        flat_dx[n, at, c] += dy[n, oh, ow, c]
                    else:
                        strays += 1
        bad[n] = strays
    for n in range(N):
        if bad[n]:
            return False
    return True


def maxpool_backward_into(dx, dy, argmax):
    """Route dy (N, OH, OW, C) back through the recorded argmax into dx (N, H, W, C)."""
    # The window's size and stride are not passed in; a tile of H // OH by W // OW is the stride
    # whenever the windows tile the input, and the kernel checks that the argmax agrees.
    tile_h, tile_w = dx.shape[1] // dy.shape[1], dx.shape[2] // dy.shape[2]
    tasks = min(dy.shape[0] * dy.shape[1], threads())
    if not _maxpool_backward_tiled(dx, dy, argmax, tile_h, tile_w, tasks):
        if not _maxpool_backward_overlapping(dx, dy, argmax):
            _check_argmax(argmax, dy, dx.shape)  # raises, naming the valid range


def maxpool_backward(dy, argmax, x_shape):
    """Route dy (N, OH, OW, C) back through the recorded argmax into dx of shape ``x_shape``."""
    dy = checks.array("dy", dy, 4, np.float32)
    _check_argmax(argmax, dy, x_shape, indices=False)  # the kernels check the indices as they go
    dx = np.empty(tuple(x_shape), np.float32)
    maxpool_backward_into(dx, dy, np.ascontiguousarray(argmax))
    return dx


def _check_argmax(argmax, dy, x_shape, indices=True):
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int32:
        raise ShapeError("argmax: expected the int32 array that maxpool_forward returned")
    checks.same_shape("argmax", argmax, dy.shape, "dy's shape")
    if len(x_shape) != 4 or (x_shape[0], x_shape[3]) != (dy.shape[0], dy.shape[3]):
        raise ShapeError(f"x_shape: expected (N, H, W, C) with N and C as in dy {dy.shape}, got {tuple(x_shape)}")
    h, w = x_shape[1], x_shape[2]
    if indices and argmax.size and (argmax.min() < 0 or argmax.max() >= h * w):
        raise ShapeError(f"argmax: indices must lie in 0..{h * w - 1} for a {h}x{w} input")


def check_window_argmax(argmax, shape, width, size, stride):
    """The argmax that a fused max-pool's forward returned: int32 of ``shape``, each index
    ``h * width + w`` inside its own window (``width``: the pooled input's)."""
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int32:
        raise ShapeError("argmax: expected the int32 array that the forward pass returned")
    checks.same_shape("argmax", argmax, shape, "the forward output's shape")
    if not _in_windows(np.ascontiguousarray(argmax), width, size, stride):
        raise ShapeError("argmax: an index lies outside its pooling window; expected the argmax that the forward "
                         "pass returned for these shapes")


@serial_kernel
def _in_windows(argmax, width, size, stride):
    N, PH, PW, K = argmax.shape
    for n in range(N):
        for ph in range(PH):
            for pw in range(PW):
                for k in range(K):
                    r, c = argmax[n, ph, pw, k] // width, argmax[n, ph, pw, k] % width
                    if (argmax[n, ph, pw, k] < 0 or not ph * stride <= r < ph * stride + size
                            or not pw * stride <= c < pw * stride + size):
                        return False
    return True
