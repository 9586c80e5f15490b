"""Small matrix products with their sums in registers: Winograd's 36 per block of tiles, and im2col's
for a few images.

Winograd's pass (winograd.py) multiplies, for each of a transformed tile's 36 elements e, a block
of tiles by the weights: ``multiply`` M[e] = V[e] @ U[e], (count, C) @ (C, K), in the forward pass
and the input gradient; ``accumulate`` P[e] += V[e]^T @ D[e], (C, count) @ (count, K), in the
weight gradient. The products are small (16 to 256 rows, 16 to 128 channels) and there are 36 a
block. OpenBLAS's Haswell (AVX2) kernels pack both operands on every call, which costs as much as
the product at these sizes; here a tile of 6 rows by 2 vectors of columns keeps its 12 sums in
registers through the whole reduction (AVX2 has 16), each column vector loaded serves 6 rows and
each broadcast value 2 vectors, and nothing is packed: V's rows already hold each tile's channels
side by side. Measured 2026-12-06 (one thread, against ``blas.gemm`` on the same arrays, blocks of
48 tiles with 16 to 128 channels): with AVX2 code ``multiply`` ran 1.53-1.98x as fast as OpenBLAS's
Haswell kernels (2.4x at 8 tiles, 1.3x at 256), ``accumulate`` 1.25-2.79x; with AVX-512 code
OpenBLAS's own kernels do not pack small products, and ours ran 0.70-1.13x and 0.87-0.96x as fast
as them: ``algorithms.winograd_products`` chooses (they run at 100-110 GFLOP/s on one core either way).
``rows_times`` is the same tile over the gathered taps of im2col's forward pass (conv.py), where
a few images' product would otherwise have OpenBLAS pack the whole weight for a few rows.

The column vectors run over lanes(K) columns (K rounded up to a whole vector): U, M, D and P have
that many, the ones beyond K zeros in U and D, so a vector never needs a mask. The last tile of
rows repeats its last row in the missing ones (read, not stored); where the columns end within a
tile's first vector, its second is the first again (not stored).
"""

import numba
import numpy as np

from . import simd
from .jit import helper

L = simd.WIDTH
_U = np.uint64  # offsets from a tile's first element: unsigned, so no fix-up code for negative indices


@helper
def multiply(M, V, U, count):
    """M[e, :count] = V[e, :count, :C] @ U[e] for every e: V (E, block, >= C), U (E, C, KL), M (E, block, KL),
    KL a whole number of vectors, U's columns beyond the layer's channels zeros."""
    C, KL = U.shape[1], U.shape[2]
    CL, v_step, m_step = V.shape[2], V.shape[1] * V.shape[2], M.shape[1] * M.shape[2]
    vs, us, ms = V.reshape(-1), U.reshape(-1), M.reshape(-1)
    for e in range(U.shape[0]):
        for k in range(0, KL, 2 * L):
            for r in range(0, count, 6):  # rows r .. r + 5 of V[e] (CL apart), each over its C channels
                _tile(ms, e * m_step + r * KL + k, vs, e * v_step + r * CL, CL, 1, us, e * C * KL + k, KL, C,
                      min(6, count - r), k + L < KL, False)


@helper
def accumulate(P, V, D, count):
    """P[e] += V[e, :count, :C]^T @ D[e, :count] for every e: P (E, C, KL), V (E, block, >= C),
    D (E, block, KL), KL a whole number of vectors, D's columns beyond the layer's channels zeros."""
    C, KL = P.shape[1], P.shape[2]
    CL, v_step, d_step = V.shape[2], V.shape[1] * V.shape[2], D.shape[1] * D.shape[2]
    vs, ds, ps = V.reshape(-1), D.reshape(-1), P.reshape(-1)
    for e in range(P.shape[0]):
        for k in range(0, KL, 2 * L):
            for c in range(0, C, 6):  # channels c .. c + 5 of V[e] (side by side), each over the count tiles
                _tile(ps, (e * C + c) * KL + k, vs, e * v_step + c, 1, CL, ds, e * d_step + k, KL, count,
                      min(6, C - c), k + L < KL, True)


@helper
def rows_times(out, out_at, a, rows, depth, b, K):
    """out[out_at:] (rows, K) = a (rows, depth) @ b (depth, K), all three flat and row after row:
    a's rows ``depth`` apart (im2col's gathered taps), K a whole number of vectors. Two vectors of
    b's columns at a time, over all the rows: b is read once, where a weight of a few hundred KB
    read again for every 6 rows had products of 128 x 256 channels at 0.92x BLAS's speed."""
    for k in range(0, K, 2 * L):
        for r in range(0, rows, 6):
            _tile(out, out_at + r * K + k, a, r * depth, depth, 1, b, k, K, depth, min(6, rows - r), k + L < K, False)


@numba.njit(inline="always")
def _tile(out, out_at, a, a_at, a_row, a_step, b, b_at, b_step, depth, rows, second, add):
    """out's 6 rows (``b_step`` apart, from out_at) by 2 vectors = (or with ``add``, +=) the sum over
    t < depth of a[a_at + i * a_row + t * a_step] (row i) times b's 2 vectors at b_at + t * b_step."""
    x_at, w_at, w2 = _U(a_at), _U(b_at), _U(L if second else 0)
    d1, d2, d3, d4, d5 = _row_offsets(rows, a_row)
    if add:
        s00, s01, s10, s11, s20, s21, s30, s31, s40, s41, s50, s51 = _load_rows(out, out_at, b_step, rows, second)
    else:
        z = simd.splat(0.0)
        s00, s01, s10, s11, s20, s21, s30, s31, s40, s41, s50, s51 = z, z, z, z, z, z, z, z, z, z, z, z
    for _ in range(depth):
        w0, w1 = simd.load(b, w_at), simd.load(b, w_at + w2)
        x = simd.splat(a[x_at])
        s00, s01 = simd.fma(x, w0, s00), simd.fma(x, w1, s01)
        x = simd.splat(a[x_at + d1])
        s10, s11 = simd.fma(x, w0, s10), simd.fma(x, w1, s11)
        x = simd.splat(a[x_at + d2])
        s20, s21 = simd.fma(x, w0, s20), simd.fma(x, w1, s21)
        x = simd.splat(a[x_at + d3])
        s30, s31 = simd.fma(x, w0, s30), simd.fma(x, w1, s31)
        x = simd.splat(a[x_at + d4])
        s40, s41 = simd.fma(x, w0, s40), simd.fma(x, w1, s41)
        x = simd.splat(a[x_at + d5])
        s50, s51 = simd.fma(x, w0, s50), simd.fma(x, w1, s51)
        x_at += _U(a_step)
        w_at += _U(b_step)
    _store_rows(out, out_at, b_step, rows, second, s00, s01, s10, s11, s20, s21, s30, s31, s40, s41, s50, s51)


# A tile's loads and stores of its sums are helpers (jit.helper), each compiled once and inlined by
# LLVM, not copied by Numba into each of the two _tile copies, multiply's and accumulate's: the
# same machine code (the same count of each vector instruction), and the two compiled in 1.9-2.0 s
# of CPU against 2.8-3.6 (a fresh process each, in turn, four times; AVX2-only Zen 3, 2026-12-07).


@helper
def _row_offsets(rows, step):
    """The offsets of a tile's rows 1 to 5 from its first, ``step`` apart; the missing ones the last's."""
    last = rows - 1
    return (_U(min(1, last) * step), _U(min(2, last) * step), _U(min(3, last) * step), _U(min(4, last) * step),
            _U(min(5, last) * step))


@helper
def _load_rows(a, at, step, rows, second):
    """A tile's 6 rows of 2 vectors from a, ``step`` apart (the missing rows the last's, the second
    vector the first where not ``second``): the sums it adds onto."""
    d1, d2, d3, d4, d5 = _row_offsets(rows, step)
    s00, s01 = _load_row(a, at, second)
    s10, s11 = _load_row(a, at + int(d1), second)
    s20, s21 = _load_row(a, at + int(d2), second)
    s30, s31 = _load_row(a, at + int(d3), second)
    s40, s41 = _load_row(a, at + int(d4), second)
    s50, s51 = _load_row(a, at + int(d5), second)
    return s00, s01, s10, s11, s20, s21, s30, s31, s40, s41, s50, s51


@helper
def _load_row(a, at, second):
    first = simd.load(a, at)
    return first, (simd.load(a, at + L) if second else first)


@helper
def _store_rows(a, at, step, rows, second, s00, s01, s10, s11, s20, s21, s30, s31, s40, s41, s50, s51):
    """A tile's first ``rows`` rows of 2 vectors (the first only, unless ``second``) into a, ``step`` apart."""
    _store_row(a, at, second, s00, s01)
    if rows > 1:
        _store_row(a, at + step, second, s10, s11)
    if rows > 2:
        _store_row(a, at + 2 * step, second, s20, s21)
    if rows > 3:
        _store_row(a, at + 3 * step, second, s30, s31)
    if rows > 4:
        _store_row(a, at + 4 * step, second, s40, s41)
    if rows > 5:
        _store_row(a, at + 5 * step, second, s50, s51)


@helper
def _store_row(a, at, second, first, other):
    simd.store(a, at, first)
    if second:
        simd.store(a, at + L, other)
