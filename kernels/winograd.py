"""Winograd's minimal filtering F(4x4, 3x3): a 3x3 stride-1 convolution with a quarter of the products.

Legend as in conv.py; a tile is 4x4 output pixels, computed from the 6x6 input pixels under it;
T the tiles of a batch (N * ceil(OH/4) * ceil(OW/4)); E = 36 the elements of a transformed tile.

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2016): for one input and one
output channel,

    y_tile = AT [ (G w G^T) * (BT x_tile BT^T) ] AT^T        (* elementwise)

with the fixed matrices BT (6x6), G (6x3) and AT (4x6) below (interpolation points 0, +-1, +-2
and infinity). Summed over the input channels, the elementwise product becomes, for each of the 36
elements e, one matrix product of the tiles' transformed inputs V[e] (T, C) with the transformed
weights U[e] (C, K): 36 small GEMMs doing 36 products per tile and channel pair where the direct
sum does 144 (16 pixels x 9 taps). ``multiply`` and ``accumulate`` do them: products.py's tiles
with their sums in registers, or ``blas.gemm`` (``algorithms.winograd_products`` says which, by
the instruction set: the tiles with AVX2 code, BLAS with AVX-512's).

- Forward: U is made from w once per call and task (``_transform_weights``), by the thread that
  runs the task, so that it is in that core's cache: one U made on the calling thread and read by
  the other cost more than making it twice (the forward pass 1.45-2.2x as fast for one image,
  1.0-1.17x at batch 64, measured 2026-12-06 on 2 threads). Each task takes a range of
  tiles, ``block`` tiles at a time (``algorithms.WINOGRAD_BLOCK``: it depends on who multiplies):
  their inputs are transformed into V (36, block, C), multiplied into M (36, block, K), and
  transformed back into y with the bias, while the block is still in the core's cache
  (``_forward``; ``_forward_relu_pool`` pools each tile's outputs instead). With ``moments``, the
  same pass adds up each channel's sum and sum of squares of the output, less its bias (a tile's
  in float32, then in float64: BatchNorm's batch statistics, with no pass of their own).
- The transforms take a vector of channels at a time (simd.py), in functions of their own
  (``jit.helper``) that the kernels share: written as loops over the channels for LLVM to
  vectorise, the forward pass ran 1.2-1.3x slower and the weight gradient 1.1x (measured
  2026-12-06, 14x14x32 -> 64 at batch 64, both instruction sets; the same compile time).
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

from . import algorithms, products, simd
from .blas import NO_TRANS, TRANS, gemm
from .jit import helper, parallel_kernel, serial_kernel, threads
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


# The transforms work on a vector of channels at a time (simd.py): bt6, at6 and a4 above take
# vectors as they take numbers. A transformed tile's 36 elements e lie in (36, block, lanes)
# arrays (V, M, D), lanes the channels rounded up to a whole vector, so that a vector never
# reaches into the next tile's elements; the GEMMs read and write only the channels.


@numba.njit(inline="always")
def _load_six(a, at, step):
    """The 6 vectors of ``a`` from flat index ``at``, ``step`` apart."""
    return (simd.load(a, at), simd.load(a, at + step), simd.load(a, at + 2 * step), simd.load(a, at + 3 * step),
            simd.load(a, at + 4 * step), simd.load(a, at + 5 * step))


@numba.njit(inline="always")
def _load_four(a, at, step):
    return simd.load(a, at), simd.load(a, at + step), simd.load(a, at + 2 * step), simd.load(a, at + 3 * step)


@numba.njit(inline="always")
def _store_six(a, at, step, six):
    for q in range(6):
        simd.store(a, at + q * step, six[q])


@numba.njit(inline="always")
def _store_four(a, at, step, four):
    for q in range(4):
        simd.store(a, at + q * step, four[q])


@numba.njit(inline="always")
def _pixel(a, at, lanes, inside):
    """A vector of a pixel's channels from ``at`` (its first ``lanes``), or zeros if not ``inside``."""
    return simd.load_up_to(a, at, lanes) if inside else simd.splat(0.0)


@helper
def transform_inputs(V, scratch, x, start, count, tiles_h, tiles_w, pad):
    """V[:, tl] (36, C) = BT x_tile BT^T of tiles start .. start + count - 1 (tl = 0 .. count - 1),
    from the 6x6 input pixels under each (zeros where they fall in the padding); ``scratch``
    (36 * WIDTH,) holds the first half of a transform."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    L, row, step = simd.WIDTH, W * C, V.shape[1] * V.shape[2]  # step: from one element e to the next
    xs, vs = x.reshape(-1), V.reshape(-1)
    for tl in range(count):
        n, oh0, ow0 = tile_origin(start + tl, tiles_h, tiles_w)
        ih0, iw0 = oh0 - pad, ow0 - pad
        for c in range(0, C, L):
            lanes = C - c
            for j in range(6):  # BT down each column of the pixels, into scratch (6, 6, WIDTH)
                iw = iw0 + j
                at, inside = ((n * H + ih0) * W + iw) * C + c, 0 <= iw < W
                _store_six(scratch, j * L, 6 * L, bt6(
                    _pixel(xs, at, lanes, inside and 0 <= ih0 < H),
                    _pixel(xs, at + row, lanes, inside and 0 <= ih0 + 1 < H),
                    _pixel(xs, at + 2 * row, lanes, inside and 0 <= ih0 + 2 < H),
                    _pixel(xs, at + 3 * row, lanes, inside and 0 <= ih0 + 3 < H),
                    _pixel(xs, at + 4 * row, lanes, inside and 0 <= ih0 + 4 < H),
                    _pixel(xs, at + 5 * row, lanes, inside and 0 <= ih0 + 5 < H)))
            for i in range(6):  # then along each row: elements 6i .. 6i + 5
                d0, d1, d2, d3, d4, d5 = _load_six(scratch, 6 * i * L, L)
                _store_six(vs, (6 * i * V.shape[1] + tl) * V.shape[2] + c, step, bt6(d0, d1, d2, d3, d4, d5))


@numba.njit(inline="always")
def _output_rows(scratch, ms, at, step):
    """scratch (4, 6, WIDTH) = AT down each column of a tile's 6x6 elements (element e of ``ms`` at
    ``at + e * step``): the first half of the output transform."""
    L = simd.WIDTH
    for j in range(6):
        m0, m1, m2, m3, m4, m5 = _load_six(ms, at + j * step, 6 * step)
        _store_four(scratch, j * L, 6 * L, at6(m0, m1, m2, m3, m4, m5))


@numba.njit(inline="always")
def _output_row(scratch, i):
    """The 4 output pixels of row i of the tile (less the bias): AT along a row of scratch."""
    m0, m1, m2, m3, m4, m5 = _load_six(scratch, 6 * i * simd.WIDTH, simd.WIDTH)
    return at6(m0, m1, m2, m3, m4, m5)


@helper
def _blas_multiply(M, V, U, count):
    """products.multiply by BLAS: M[e] = V[e] @ U[e] for the 36 elements, (count, C) @ (C, K)."""
    C, KL = U.shape[1], U.shape[2]
    vs, us, ms = V.reshape(-1), U.reshape(-1), M.reshape(-1)
    for e in range(36):
        gemm(NO_TRANS, NO_TRANS, count, KL, C, np.float32(1.0), vs[e * V.shape[1] * V.shape[2]:], V.shape[2],
             us[e * C * KL:], KL, np.float32(0.0), ms[e * M.shape[1] * M.shape[2]:], M.shape[2])


@helper
def output_tiles(y, sums, M, scratch, b, start, count, tiles_h, tiles_w, relu, stats):
    """The pixels of tiles start .. start + count - 1 that lie inside y (N, OH, OW, K): AT M_tl AT^T + b,
    then the ReLU with ``relu``; with ``stats``, each channel's sum and sum of squares of those
    outputs less the bias added into ``sums`` (2, K) float64 (a tile's 16 pixels summed in float32)."""
    OH, OW, K = y.shape[1], y.shape[2], y.shape[3]
    L, step = simd.WIDTH, M.shape[1] * M.shape[2]
    ys, ms = y.reshape(-1), M.reshape(-1)
    for tl in range(count):
        n, oh0, ow0 = tile_origin(start + tl, tiles_h, tiles_w)
        rows, cols = min(4, OH - oh0), min(4, OW - ow0)
        for k in range(0, K, L):
            lanes = K - k
            _output_rows(scratch, ms, tl * M.shape[2] + k, step)
            bias = simd.load_up_to(b, k, lanes)
            s1 = s2 = simd.splat(0.0)
            for i in range(rows):
                pixels = _output_row(scratch, i)
                at = ((n * OH + oh0 + i) * OW + ow0) * K + k
                for j in range(cols):
                    v = pixels[j]
                    if stats:
                        s1, s2 = s1 + v, simd.fma(v, v, s2)
                    v = v + bias
                    simd.store_up_to(ys, at + j * K, simd.relu(v) if relu else v, lanes)
            if stats:
                simd.add_lanes(sums[0], k, s1, lanes)
                simd.add_lanes(sums[1], k, s2, lanes)


@helper
def pool_tiles(y, argmax, save_argmax, M, scratch, tile, b, start, count, tiles_h, tiles_w, OW):
    """max-pool 2x2 (stride 2) of the outputs of tiles start .. start + count - 1, + bias, then the
    ReLU, into y (N, OH // 2, OW // 2, K): the pooled pixels that lie inside y; argmax as
    maxpool_forward's (the index oh * OW + ow in the convolution's output; the first maximum wins,
    a NaN wins). ``tile`` (4, 4, WIDTH) holds a tile's outputs, less the bias."""
    PH, PW, K = y.shape[1], y.shape[2], y.shape[3]
    L, step = simd.WIDTH, M.shape[1] * M.shape[2]
    ms, ts = M.reshape(-1), tile.reshape(-1)
    zero = np.float32(0.0)
    for tl in range(count):
        n, oh0, ow0 = tile_origin(start + tl, tiles_h, tiles_w)
        for k in range(0, K, L):
            _output_rows(scratch, ms, tl * M.shape[2] + k, step)
            for i in range(4):
                _store_four(ts, 4 * i * L, L, _output_row(scratch, i))
            for pi in range(min(2, PH - oh0 // 2)):
                for pj in range(min(2, PW - ow0 // 2)):
                    i, j = 2 * pi, 2 * pj
                    first = np.int32((oh0 + i) * OW + ow0 + j)
                    ph, pw = oh0 // 2 + pi, ow0 // 2 + pj
                    for q in range(min(L, K - k)):
                        best, at = max_of_four(tile[i, j, q], tile[i, j + 1, q], tile[i + 1, j, q],
                                               tile[i + 1, j + 1, q], first, OW)
                        best += b[k + q]
                        y[n, ph, pw, k + q] = zero if best < 0 else best  # the ReLU; a NaN stays a NaN
                        if save_argmax:
                            argmax[n, ph, pw, k + q] = at


def whole_vectors(n):
    """n channels rounded up to a whole vector."""
    return -(-n // simd.WIDTH) * simd.WIDTH


_lanes = numba.njit(inline="always")(whole_vectors)  # the same, inside the kernels


@numba.njit(inline="always")
def _elements(block, channels):
    """A block's 36 transformed elements (36, rows, lanes(channels)), ``block`` rows of them used.
    An odd number of rows, so that the elements do not lie a multiple of 4 KB apart: the 36 rows
    of one tile, read or written together, would all fall in the same few sets of the L1 cache
    and evict each other (measured 2026-12-06 with AVX2 code, batch 64, before the rows were made
    odd: the weight gradient with blocks of 32 tiles 1.16-1.54x as slow as with 30, 33 or 45,
    on 14x14 to 16x16 images with 32 and 64 channels and 8x8 with 64 and 128)."""
    return np.empty((36, block | 1, _lanes(channels)), np.float32)


@parallel_kernel
def _forward(y, moments, x, U, b, pad, relu, block, tasks):
    # U (tasks, 36, C, lanes(K)): each task's own; y (N, OH, OW, K); moments (tasks, 2, K) float64, or
    # (0, 2, K) for none.
    N, OH, OW, C, K = x.shape[0], y.shape[1], y.shape[2], x.shape[3], y.shape[3]
    tiles_h, tiles_w = (OH + 3) // 4, (OW + 3) // 4
    T = N * tiles_h * tiles_w
    stats = moments.shape[0] > 0
    for task in prange(tasks):
        V, M = _elements(block, C), _elements(block, K)
        scratch = np.empty(36 * simd.WIDTH, np.float32)
        # The sums go straight into moments[task]: an array copied into a slice has Numba compile
        # its error message's string formatting (2-3 s of CPU, measured 2026-12-06).
        sums = moments[task] if stats else np.empty((2, K))
        sums[...] = 0.0
        t0, t1 = task * T // tasks, (task + 1) * T // tasks
        for start in range(t0, t1, block):
            count = min(block, t1 - start)
            transform_inputs(V, scratch, x, start, count, tiles_h, tiles_w, pad)
            multiply(M, V, U[task], count)
            output_tiles(y, sums, M, scratch, b, start, count, tiles_h, tiles_w, relu, stats)


@parallel_kernel
def _forward_relu_pool(y, argmax, x, U, b, pad, OH, OW, block, tasks):
    # As _forward, for a convolution of OH x OW pixels whose pooled outputs y (N, OH // 2, OW // 2, K)
    # are kept, and argmax like y, or (0, 1, 1, 1): not kept.
    N, C, K = x.shape[0], x.shape[3], y.shape[3]
    tiles_h, tiles_w = (OH + 3) // 4, (OW + 3) // 4
    T = N * tiles_h * tiles_w
    save_argmax = argmax.shape[0] > 0
    for task in prange(tasks):
        V, M = _elements(block, C), _elements(block, K)
        scratch, tile = np.empty(36 * simd.WIDTH, np.float32), np.empty((4, 4, simd.WIDTH), np.float32)
        t0, t1 = task * T // tasks, (task + 1) * T // tasks
        for start in range(t0, t1, block):
            count = min(block, t1 - start)
            transform_inputs(V, scratch, x, start, count, tiles_h, tiles_w, pad)
            multiply(M, V, U[task], count)
            pool_tiles(y, argmax, save_argmax, M, scratch, tile, b, start, count, tiles_h, tiles_w, OW)


@helper
def transform_gradients(D, db, scratch, dy, start, count, tiles_h, tiles_w):
    """D[:, tl] (36, K) = AT^T dy_tile AT of tiles start .. start + count - 1, from each tile's 4x4
    output gradients (zeros beyond the output's edge), and their sums added into db (K,) float64
    (a tile's 16 summed in float32); ``scratch`` (36 * WIDTH,) holds the first half of a transform."""
    OH, OW, K = dy.shape[1], dy.shape[2], dy.shape[3]
    L, row, step = simd.WIDTH, OW * K, D.shape[1] * D.shape[2]
    gs, ds = dy.reshape(-1), D.reshape(-1)
    for tl in range(count):
        n, oh0, ow0 = tile_origin(start + tl, tiles_h, tiles_w)
        rows, cols = min(4, OH - oh0), min(4, OW - ow0)
        for k in range(0, K, L):
            lanes = K - k
            total = simd.splat(0.0)
            for j in range(4):  # AT^T down each column of the gradients, into scratch (6, 4, WIDTH)
                at, inside = ((n * OH + oh0) * OW + ow0 + j) * K + k, j < cols
                g0, g1 = _pixel(gs, at, lanes, inside), _pixel(gs, at + row, lanes, inside and rows > 1)
                g2, g3 = _pixel(gs, at + 2 * row, lanes, inside and rows > 2), _pixel(gs, at + 3 * row, lanes,
                                                                                    inside and rows > 3)
                total = total + ((g0 + g1) + (g2 + g3))
                _store_six(scratch, j * L, 4 * L, a4(g0, g1, g2, g3))
            for i in range(6):  # then along each row: elements 6i .. 6i + 5
                g0, g1, g2, g3 = _load_four(scratch, 4 * i * L, L)
                _store_six(ds, (6 * i * D.shape[1] + tl) * D.shape[2] + k, step, a4(g0, g1, g2, g3))
            simd.add_lanes(db, k, total, lanes)


@helper
def _blas_accumulate(P, V, D, count):
    """products.accumulate by BLAS: P[e] += V[e]^T @ D[e] for the 36 elements, (C, count) @ (count, K)."""
    C, KL = P.shape[1], P.shape[2]
    vs, ds, ps = V.reshape(-1), D.reshape(-1), P.reshape(-1)
    for e in range(36):
        gemm(TRANS, NO_TRANS, C, KL, count, np.float32(1.0), vs[e * V.shape[1] * V.shape[2]:], V.shape[2],
             ds[e * D.shape[1] * D.shape[2]:], D.shape[2], np.float32(1.0), ps[e * C * KL:], KL)


# The 36 products of a block: with the sums in registers, or by BLAS (products.py says which wins where).
if algorithms.winograd_products() == "registers":
    multiply, accumulate = products.multiply, products.accumulate
else:
    multiply, accumulate = _blas_multiply, _blas_accumulate


@parallel_kernel
def _weight_gradient(partial, partial_db, x, dy, pad, block):
    # partial (tasks, 36, C, K) and partial_db (tasks, K) float64: each task's sums over its tiles.
    N, C = x.shape[0], x.shape[3]
    OH, OW, K = dy.shape[1], dy.shape[2], dy.shape[3]
    tiles_h, tiles_w = (OH + 3) // 4, (OW + 3) // 4
    T = N * tiles_h * tiles_w
    tasks = partial.shape[0]
    for task in prange(tasks):
        V, D = _elements(block, C), _elements(block, K)
        scratch, db = np.empty(36 * simd.WIDTH, np.float32), partial_db[task]  # in place, as _forward's sums
        partial[task] = np.float32(0.0)
        db[...] = 0.0
        t0, t1 = task * T // tasks, (task + 1) * T // tasks
        for start in range(t0, t1, block):
            count = min(block, t1 - start)
            transform_inputs(V, scratch, x, start, count, tiles_h, tiles_w, pad)
            transform_gradients(D, db, scratch, dy, start, count, tiles_h, tiles_w)
            accumulate(partial[task], V, D, count)


@serial_kernel
def _finish_weight_gradient(dw, db, partial, partial_db):
    # dw (3, 3, C, K) = G^T (the partials added in task order) G; db likewise.
    tasks, C, K = partial.shape[0], dw.shape[2], dw.shape[3]  # partial's columns from K on: padding
    m = np.empty((36, K), np.float32)
    half = np.empty((3, 6, K), np.float32)
    for c in range(C):
        # The partials added in task order, each loop over the channels innermost; the 36 elements in
        # one loop, not 6 x 6: 0.5 s less of CPU to compile (0.86-0.95 s), as fast (2026-12-06).
        for e in range(36):
            for k in range(K):
                m[e, k] = partial[0, e, c, k]
            for task in range(1, tasks):
                for k in range(K):
                    m[e, k] += partial[task, e, c, k]
        for j in range(6):
            for k in range(K):
                half[0, j, k], half[1, j, k], half[2, j, k] = gt6(m[j, k], m[6 + j, k], m[12 + j, k], m[18 + j, k],
                                                                  m[24 + j, k], m[30 + j, k])
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
    # U (tasks, 36, C, lanes(K)): U[task] = G w G^T for each channel pair, made by the thread that runs task
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
    """U (tasks, 36, C, lanes(K)): G w G^T of w (3, 3, C, K), a copy for each of ``tasks`` tasks, each
    made by the thread that runs that task of a kernel; the columns from K on zeros (products.py)."""
    K = w.shape[3]
    U = np.empty((tasks, 36, w.shape[2], whole_vectors(K)), np.float32)
    if U.shape[3] > K:
        U[..., K:] = 0.0
    _transform_weights(U, w)
    return U


# Tiles a task takes at least: each task transforms the whole weight for itself (1.2 MB at 64 x
# 128 channels), which a task of one to three tiles does not repay. Measured 2026-12-06, one image
# of `cifar` (its last convolution, 8x8x64 -> 128, is 4 tiles), predict in turn in one process:
# 1.11x as fast with AVX-512 code and 1.27x with AVX2's as with a task per tile; `deep` (16 tiles a
# layer) the same split either way.
_LEAST_TILES = 4


def split(count, block):
    """Tasks for ``count`` tiles (one per thread, each of at least _LEAST_TILES, at least one), and
    the tiles per block: ``block``, or fewer where a task has fewer tiles than that (a few images):
    each task's scratch (megabytes at a full block) is sized by it. Measured 2026-12-06 on 8x8 to
    16x16 images, 32 to 128 channels, 2 threads: with AVX-512 code 1.1-1.15x as fast at batch 1
    and 2, with AVX2 code 1.27x at batch 4 (8x8), elsewhere the same."""
    tasks = max(1, min(threads(), count // _LEAST_TILES))
    return tasks, max(1, min(block, -(-count // tasks)))


def forward_into(y, x, w, b, pad, moments=None, relu=False):
    """y (N, OH, OW, K) = conv(x, w) + b at stride 1 with ``pad`` on each side; then the ReLU with
    ``relu``. With ``moments`` (2, K) float64 (and no ReLU): also each channel's sum and sum of
    squares of y - b."""
    tasks, block = _split_forward(y.shape)
    parts = np.empty((tasks if moments is not None else 0, 2, w.shape[3]))
    _forward(y, parts, x, transform_weights(w, tasks), b, pad, relu, block, tasks)
    if moments is not None:
        moments[...] = parts.sum(axis=0)


def forward_relu_pool_into(y, argmax, x, w, b, pad, conv_h, conv_w):
    """y (N, conv_h // 2, conv_w // 2, K) = max-pool 2x2 (relu(conv(x, w) + b)), and argmax
    as maxpool_forward's on the convolution's output (None: not kept): the convolution's output
    never goes to memory."""
    tasks, block = _split_forward((y.shape[0], conv_h, conv_w))
    _forward_relu_pool(y, _NO_ARGMAX if argmax is None else argmax, x, transform_weights(w, tasks), b, pad, conv_h,
                       conv_w, block, tasks)


def _split_forward(y_shape):
    return split(algorithms.winograd_tiles(y_shape), algorithms.winograd_block())


_NO_ARGMAX = np.zeros((0, 1, 1, 1), np.int32)


def weight_gradient_into(dw, db, dy, x, pad):
    """dw (3, 3, C, K) and db (K,) of the stride-1 convolution that read x with ``pad``, from dy."""
    C, K = x.shape[3], dy.shape[3]
    tasks, block = split(algorithms.winograd_tiles(dy.shape), algorithms.WINOGRAD_WEIGHT_BLOCK)
    partial, partial_db = np.empty((tasks, 36, C, whole_vectors(K)), np.float32), np.empty((tasks, K))
    _weight_gradient(partial, partial_db, x, dy, pad, block)
    _finish_weight_gradient(dw, db, partial, partial_db)
