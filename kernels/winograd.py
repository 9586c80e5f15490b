"""Winograd's minimal filtering F(4x4, 3x3): a 3x3 stride-1 convolution with a quarter of the products.

Legend as in conv.py; a tile is 4x4 output pixels, computed from the 6x6 input pixels under it;
T the tiles of a batch (N * ceil(OH/4) * ceil(OW/4)); E = 36 the elements of a transformed tile.

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2016): for one input and one
output channel,

    y_tile = AT [ (G w G^T) * (BT x_tile BT^T) ] AT^T        (* elementwise)

with the fixed matrices BT (6x6), G (6x3) and AT (4x6) below (interpolation points 0, +-1, +-2
and infinity). Summed over the input channels, the elementwise product becomes, for each of the 36
elements e, one matrix product of the tiles' transformed inputs V[e] (T, C) with the transformed
weights U[e] (C, K): 36 GEMMs (``blas.gemm``) doing 36 products per tile and channel pair where the
direct sum does 144 (16 pixels x 9 taps).

- Forward: U is made from w once per call and task (``_transform_weights``), by the thread that
  runs the task, so that it is in that core's cache: one U made on the calling thread and read by
  the other cost more than making it twice (the forward pass 1.45-2.2x as fast for one image,
  1.0-1.17x at batch 64, measured 2026-12-06 on 2 threads). Each task takes a range of
  tiles, ``block`` tiles at a time (``algorithms.WINOGRAD_BLOCK``: it depends on OpenBLAS's kernels):
  their inputs are transformed into V (36, block, C), multiplied into M (36, block, K), and
  transformed back into y with the bias, while the block is still in the core's cache. With ``moments``, the same pass adds up each channel's sum and sum of squares of
  the output, less its bias, in float64 (BatchNorm's batch statistics, with no pass of their own).
- Input gradient: the forward pass of dy with the weights turned around and the padding 2 - pad
  (conv.input_gradient_into).
- Weight gradient: the same identity with the roles of the weights and the output exchanged,
  dw = G^T [ sum over tiles (BT x_tile BT^T) * (AT^T dy_tile AT) ] G, so per element one GEMM
  V[e]^T @ D[e] (C, block) @ (block, K) added up block by block into each task's partial sums, and
  G^T . G once at the end (``_finish_weight_gradient``); the bias gradient on the way.

The float32 error against the direct sum is about 1e-5 of the output's largest magnitude (the
transforms' coefficients go up to 8 and down to 1/24; the tests state their tolerance).
"""

import numba
import numpy as np
from numba import prange

from . import algorithms
from .blas import NO_TRANS, TRANS, gemm
from .jit import parallel_kernel, serial_kernel, threads
from .pool import max_of_four

# The matrices, for the tests and the reference; the kernels spell them out as sums (bt6, at6, ...).
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)

_F2, _F4, _F5, _F8 = np.float32(2), np.float32(4), np.float32(5), np.float32(8)
_Q4, _Q6, _Q12, _Q24 = np.float32(1 / 4), np.float32(1 / 6), np.float32(1 / 12), np.float32(1 / 24)


@numba.njit(inline="always")
def bt6(d0, d1, d2, d3, d4, d5):
    """BT @ (d0..d5): the input transform along one axis."""
    return (_F4 * d0 - _F5 * d2 + d4, d3 + d4 - _F4 * (d1 + d2), _F4 * (d1 - d2) + d4 - d3,
            _F2 * (d3 - d1) + d4 - d2, _F2 * (d1 - d3) + d4 - d2, _F4 * d1 - _F5 * d3 + d5)


@numba.njit(inline="always")
def at6(m0, m1, m2, m3, m4, m5):
    """AT @ (m0..m5): the output transform along one axis, 6 elements to 4 pixels."""
    s, d = m1 + m2, m1 - m2
    s2, d2 = m3 + m4, m3 - m4
    return m0 + s + s2, d + _F2 * d2, s + _F4 * s2, d + _F8 * d2 + m5


@numba.njit(inline="always")
def a4(d0, d1, d2, d3):
    """AT^T @ (d0..d3): 4 output gradients to 6 elements (the weight gradient's dy transform)."""
    s02, s13 = d0 + d2, d1 + d3
    q02, q13 = d0 + _F4 * d2, d1 + _F4 * d3
    return d0, s02 + s13, s02 - s13, q02 + _F2 * q13, q02 - _F2 * q13, d3


@numba.njit(inline="always")
def g3(a, b, c):
    """G @ (a, b, c): 3 weights to 6 elements."""
    return (_Q4 * a, -_Q6 * (a + b + c), _Q6 * (b - a - c), _Q24 * a + _Q12 * b + _Q6 * c,
            _Q24 * a - _Q12 * b + _Q6 * c, c)


@numba.njit(inline="always")
def gt6(m0, m1, m2, m3, m4, m5):
    """G^T @ (m0..m5): 6 elements to 3 weights (the weight gradient's last step)."""
    return (_Q4 * m0 - _Q6 * (m1 + m2) + _Q24 * (m3 + m4), _Q6 * (m2 - m1) + _Q12 * (m3 - m4),
            _Q6 * (m3 + m4 - m1 - m2) + m5)


@numba.njit(inline="always")
def tile_origin(t, tiles_h, tiles_w):
    """Image, first output row and first output column of tile t."""
    per_image = tiles_h * tiles_w
    n = t // per_image
    r = t - n * per_image
    return n, (r // tiles_w) * 4, (r % tiles_w) * 4


@numba.njit(inline="always")
def transform_inputs(V, patch, tmp, x, start, count, tiles_h, tiles_w, pad):
    """V[:, tl] (36, C) = BT x_tile BT^T for tiles start .. start + count - 1 (tl = 0 .. count - 1)."""
    for tl in range(count):
        n, oh0, ow0 = tile_origin(start + tl, tiles_h, tiles_w)
        transform_input(V, tl, patch, tmp, x, n, oh0 - pad, ow0 - pad)


@numba.njit(inline="always")
def transform_input(V, tl, patch, tmp, x, n, ih0, iw0):
    """V[:, tl] (36, C) = BT x_tile BT^T for the 6x6 input pixels from (ih0, iw0) of image n,
    zeros where they fall in the padding (``patch`` and ``tmp`` are (6, 6, C) scratch)."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    for i in range(6):
        ih = ih0 + i
        for j in range(6):
            iw = iw0 + j
            if 0 <= ih < H and 0 <= iw < W:
                for c in range(C):
                    patch[i, j, c] = x[n, ih, iw, c]
            else:
                for c in range(C):
                    patch[i, j, c] = 0.0
    for j in range(6):
        for c in range(C):
            tmp[0, j, c], tmp[1, j, c], tmp[2, j, c], tmp[3, j, c], tmp[4, j, c], tmp[5, j, c] = bt6(
                patch[0, j, c], patch[1, j, c], patch[2, j, c], patch[3, j, c], patch[4, j, c], patch[5, j, c])
    for i in range(6):
        e = 6 * i
        for c in range(C):
            V[e, tl, c], V[e + 1, tl, c], V[e + 2, tl, c], V[e + 3, tl, c], V[e + 4, tl, c], V[e + 5, tl, c] = bt6(
                tmp[i, 0, c], tmp[i, 1, c], tmp[i, 2, c], tmp[i, 3, c], tmp[i, 4, c], tmp[i, 5, c])


# What the forward pass does with a tile's outputs (its epilogue).
PLAIN, RELU, RELU_POOL = 0, 1, 2


@numba.njit(inline="always")
def output_tile(tile, rows, M, tl):
    """tile (4, 4, K) = AT M_tl AT^T: the tile's 16 outputs, less the bias (``rows`` (4, 6, K) is
    scratch for the first half of the transform)."""
    K = tile.shape[2]
    for j in range(6):
        for k in range(K):
            rows[0, j, k], rows[1, j, k], rows[2, j, k], rows[3, j, k] = at6(
                M[j, tl, k], M[6 + j, tl, k], M[12 + j, tl, k], M[18 + j, tl, k], M[24 + j, tl, k], M[30 + j, tl, k])
    for i in range(4):
        for k in range(K):
            tile[i, 0, k], tile[i, 1, k], tile[i, 2, k], tile[i, 3, k] = at6(
                rows[i, 0, k], rows[i, 1, k], rows[i, 2, k], rows[i, 3, k], rows[i, 4, k], rows[i, 5, k])


@numba.njit(inline="always")
def store_tile(y, tile, n, oh0, ow0, b, relu, stats, s1, s2):
    """The tile's outputs + bias into y (those inside it), then the ReLU if asked; with
    ``stats``, their sums and squares less the bias into s1, s2 (float64)."""
    OH, OW, K = y.shape[1], y.shape[2], y.shape[3]
    zero = np.float32(0.0)
    for i in range(min(4, OH - oh0)):
        for j in range(min(4, OW - ow0)):
            for k in range(K):
                v = tile[i, j, k] + b[k]
                y[n, oh0 + i, ow0 + j, k] = max(v, zero) if relu else v
            if stats:
                for k in range(K):
                    v = np.float64(tile[i, j, k])
                    s1[k] += v
                    s2[k] += v * v


@numba.njit(inline="always")
def pool_tile(y, argmax, save_argmax, tile, n, oh0, ow0, OW, b):
    """max-pool 2x2 (stride 2) of the tile's outputs, + bias, then the ReLU, into y (N, OH // 2,
    OW // 2, K): the tile's pooled pixels that lie inside y; argmax as maxpool_forward's (the
    index oh * OW + ow in the convolution's output; the first maximum wins, a NaN wins)."""
    PH, PW, K = y.shape[1], y.shape[2], y.shape[3]
    zero = np.float32(0.0)
    for pi in range(min(2, PH - oh0 // 2)):
        for pj in range(min(2, PW - ow0 // 2)):
            i, j = 2 * pi, 2 * pj
            first = np.int32((oh0 + i) * OW + ow0 + j)
            ph, pw = oh0 // 2 + pi, ow0 // 2 + pj
            for k in range(K):
                best, at = max_of_four(tile[i, j, k], tile[i, j + 1, k], tile[i + 1, j, k], tile[i + 1, j + 1, k],
                                       first, OW)
                best += b[k]
                y[n, ph, pw, k] = zero if best < 0 else best  # the ReLU; a NaN stays a NaN
                if save_argmax:
                    argmax[n, ph, pw, k] = at


@parallel_kernel
def _forward(y, argmax, moments, x, U, b, pad, OH, OW, epilogue, block, tasks):
    # U (tasks, 36, C, K): each task's own; y (N, OH, OW, K), or with RELU_POOL (N, OH // 2, OW // 2, K)
    # and argmax like it (or (0, 1, 1, 1): not kept); moments (tasks, 2, K) float64, or (0, 2, K) for none.
    N, C, K = x.shape[0], x.shape[3], y.shape[3]
    tiles_h, tiles_w = (OH + 3) // 4, (OW + 3) // 4
    T = N * tiles_h * tiles_w
    stats, save_argmax = moments.shape[0] > 0, argmax.shape[0] > 0
    for task in prange(tasks):
        flat_u = U[task].reshape(-1)
        patch, tmp = np.empty((6, 6, C), np.float32), np.empty((6, 6, C), np.float32)
        V, M = np.empty((36, block, C), np.float32), np.empty((36, block, K), np.float32)
        rows, tile = np.empty((4, 6, K), np.float32), np.empty((4, 4, K), np.float32)
        flat_v, flat_m = V.reshape(-1), M.reshape(-1)
        s1, s2 = np.zeros(K), np.zeros(K)
        t0, t1 = task * T // tasks, (task + 1) * T // tasks
        for start in range(t0, t1, block):
            count = min(block, t1 - start)
            transform_inputs(V, patch, tmp, x, start, count, tiles_h, tiles_w, pad)
            for e in range(36):
                gemm(NO_TRANS, NO_TRANS, count, K, C, np.float32(1.0), flat_v[e * block * C:], C,
                     flat_u[e * C * K:], K, np.float32(0.0), flat_m[e * block * K:], K)
            for tl in range(count):
                n, oh0, ow0 = tile_origin(start + tl, tiles_h, tiles_w)
                output_tile(tile, rows, M, tl)
                if epilogue == RELU_POOL:
                    pool_tile(y, argmax, save_argmax, tile, n, oh0, ow0, OW, b)
                else:
                    store_tile(y, tile, n, oh0, ow0, b, epilogue == RELU, stats, s1, s2)
        if stats:
            for k in range(K):
                moments[task, 0, k] = s1[k]
                moments[task, 1, k] = s2[k]


@parallel_kernel
def _weight_gradient(partial, partial_db, x, dy, pad, block):
    # partial (tasks, 36, C, K) and partial_db (tasks, K) float64: each task's sums over its tiles.
    N, C = x.shape[0], x.shape[3]
    OH, OW, K = dy.shape[1], dy.shape[2], dy.shape[3]
    tiles_h, tiles_w = (OH + 3) // 4, (OW + 3) // 4
    T = N * tiles_h * tiles_w
    tasks = partial.shape[0]
    for task in prange(tasks):
        patch, tmp = np.empty((6, 6, C), np.float32), np.empty((6, 6, C), np.float32)
        grad, cols = np.empty((4, 4, K), np.float32), np.empty((6, 4, K), np.float32)
        V, D = np.empty((36, block, C), np.float32), np.empty((36, block, K), np.float32)
        flat_v, flat_d = V.reshape(-1), D.reshape(-1)
        mine = partial[task]
        mine[...] = np.float32(0.0)
        flat_p = mine.reshape(-1)
        db = np.zeros(K)
        t0, t1 = task * T // tasks, (task + 1) * T // tasks
        for start in range(t0, t1, block):
            count = min(block, t1 - start)
            transform_inputs(V, patch, tmp, x, start, count, tiles_h, tiles_w, pad)
            for tl in range(count):
                n, oh0, ow0 = tile_origin(start + tl, tiles_h, tiles_w)
                grad[...] = np.float32(0.0)  # a tile over the output's edge is zeros beyond it
                for i in range(min(4, OH - oh0)):
                    for j in range(min(4, OW - ow0)):
                        for k in range(K):
                            grad[i, j, k] = dy[n, oh0 + i, ow0 + j, k]
                            db[k] += grad[i, j, k]
                for j in range(4):
                    for k in range(K):
                        cols[0, j, k], cols[1, j, k], cols[2, j, k], cols[3, j, k], cols[4, j, k], cols[5, j, k] = a4(
                            grad[0, j, k], grad[1, j, k], grad[2, j, k], grad[3, j, k])
                for i in range(6):
                    e = 6 * i
                    for k in range(K):
                        D[e, tl, k], D[e + 1, tl, k], D[e + 2, tl, k], D[e + 3, tl, k], D[e + 4, tl, k], \
                            D[e + 5, tl, k] = a4(cols[i, 0, k], cols[i, 1, k], cols[i, 2, k], cols[i, 3, k])
            for e in range(36):
                gemm(TRANS, NO_TRANS, C, K, count, np.float32(1.0), flat_v[e * block * C:], C,
                     flat_d[e * block * K:], K, np.float32(1.0), flat_p[e * C * K:], K)
        for k in range(K):
            partial_db[task, k] = db[k]


@serial_kernel
def _finish_weight_gradient(dw, db, partial, partial_db):
    # dw (3, 3, C, K) = G^T (the partials added in task order) G; db likewise.
    tasks, _, C, K = partial.shape
    m = np.empty((6, 6, K), np.float32)
    half = np.empty((3, 6, K), np.float32)
    for c in range(C):
        for i in range(6):  # the partials added in task order, each loop over the channels innermost
            for j in range(6):
                for k in range(K):
                    m[i, j, k] = partial[0, 6 * i + j, c, k]
                for task in range(1, tasks):
                    for k in range(K):
                        m[i, j, k] += partial[task, 6 * i + j, c, k]
        for j in range(6):
            for k in range(K):
                half[0, j, k], half[1, j, k], half[2, j, k] = gt6(m[0, j, k], m[1, j, k], m[2, j, k], m[3, j, k],
                                                                  m[4, j, k], m[5, j, k])
        for a in range(3):
            for k in range(K):
                dw[a, 0, c, k], dw[a, 1, c, k], dw[a, 2, c, k] = gt6(half[a, 0, k], half[a, 1, k], half[a, 2, k],
                                                                     half[a, 3, k], half[a, 4, k], half[a, 5, k])
    add_bias_partials(db, partial_db)


@numba.njit(inline="always")
def add_bias_partials(db, partial_db):
    """db (K,) = the per-task partial bias gradients (tasks, K) added in task order: the same bits
    whatever thread ran which task (conv.py's weight gradients use it too)."""
    for k in range(db.shape[0]):
        acc = partial_db[0, k]
        for task in range(1, partial_db.shape[0]):
            acc += partial_db[task, k]
        db[k] = acc


@parallel_kernel
def _transform_weights(U, w):
    # U (tasks, 36, C, K): U[task] = G w G^T for each channel pair, made by the thread that runs task
    # (Numba hands a prange of one task per thread out in the same order every time).
    C, K = w.shape[2], w.shape[3]
    for task in prange(U.shape[0]):
        half = np.empty((6, 3, K), np.float32)
        for c in range(C):
            for j in range(3):
                for k in range(K):
                    half[0, j, k], half[1, j, k], half[2, j, k], half[3, j, k], half[4, j, k], half[5, j, k] = g3(
                        w[0, j, c, k], w[1, j, c, k], w[2, j, c, k])
            for i in range(6):
                e = 6 * i
                for k in range(K):
                    U[task, e, c, k], U[task, e + 1, c, k], U[task, e + 2, c, k], U[task, e + 3, c, k], \
                        U[task, e + 4, c, k], U[task, e + 5, c, k] = g3(half[i, 0, k], half[i, 1, k], half[i, 2, k])


def transform_weights(w, tasks):
    """U (tasks, 36, C, K): G w G^T of w (3, 3, C, K), a copy for each of ``tasks`` tasks, each made
    by the thread that runs that task of a kernel."""
    U = np.empty((tasks, 36, w.shape[2], w.shape[3]), np.float32)
    _transform_weights(U, w)
    return U


def split(count, block):
    """Tasks for ``count`` tiles (one per thread, at most one per tile), and the tiles per block:
    ``block``, or fewer where a task has fewer tiles than that (a few images): each task's scratch
    (megabytes at a full block) is sized by it. Measured 2026-12-06 on 8x8 to 16x16 images, 32 to
    128 channels, 2 threads: with AVX-512 code 1.1-1.15x as fast at batch 1 and 2, with AVX2 code
    1.27x at batch 4 (8x8), elsewhere the same."""
    tasks = max(1, min(threads(), count))
    return tasks, max(1, min(block, -(-count // tasks)))


def forward_into(y, x, w, b, pad, moments=None, relu=False):
    """y (N, OH, OW, K) = conv(x, w) + b at stride 1 with ``pad`` on each side; then the ReLU with
    ``relu``. With ``moments`` (2, K) float64 (and no ReLU): also each channel's sum and sum of
    squares of y - b."""
    _forward_into(y, _NO_ARGMAX, moments, x, w, b, pad, y.shape[1], y.shape[2], RELU if relu else PLAIN)


def forward_relu_pool_into(y, argmax, x, w, b, pad, conv_h, conv_w):
    """y (N, conv_h // 2, conv_w // 2, K) = max-pool 2x2 (relu(conv(x, w) + b)), and argmax
    as maxpool_forward's on the convolution's output (None: not kept): the convolution's output
    never goes to memory."""
    _forward_into(y, _NO_ARGMAX if argmax is None else argmax, None, x, w, b, pad, conv_h, conv_w, RELU_POOL)


def _forward_into(y, argmax, moments, x, w, b, pad, conv_h, conv_w, epilogue):
    tasks, block = split(algorithms.winograd_tiles((y.shape[0], conv_h, conv_w)), algorithms.winograd_block())
    parts = np.empty((tasks if moments is not None else 0, 2, w.shape[3]))
    _forward(y, argmax, parts, x, transform_weights(w, tasks), b, pad, conv_h, conv_w, epilogue, block, tasks)
    if moments is not None:
        moments[...] = parts.sum(axis=0)


_NO_ARGMAX = np.zeros((0, 1, 1, 1), np.int32)


def weight_gradient_into(dw, db, dy, x, pad):
    """dw (3, 3, C, K) and db (K,) of the stride-1 convolution that read x with ``pad``, from dy."""
    C, K = x.shape[3], dy.shape[3]
    tasks, block = split(algorithms.winograd_tiles(dy.shape), algorithms.WINOGRAD_WEIGHT_BLOCK)
    partial, partial_db = np.empty((tasks, 36, C, K), np.float32), np.empty((tasks, K))
    _weight_gradient(partial, partial_db, x, dy, pad, block)
    _finish_weight_gradient(dw, db, partial, partial_db)
