"""2-D convolution (cross-correlation, as every framework does it), forward and backward.

Legend: N batch, H/W input height/width, C input channels, K output channels,
KH/KW kernel height/width, OH/OW output height/width. Layouts: x (N, H, W, C),
w (KH, KW, C, K), b (K,), y (N, OH, OW, K). Zero padding ``pad`` on every side.

The innermost loop always runs over the last axis (channels), which is contiguous in both the
activations and the weights, so it vectorises (or is the vector's lanes).

The forward pass and the weight gradient view x as (N, H, W*C) and w as (KH, KW*C, K): for one
kernel row kh, the taps (kw, c) of an output pixel are KW*C consecutive floats of an input row,
and KW*C consecutive rows of w. With few input channels (the first layers) they are summed
directly, in register tiles (simd.py): ``conv_row`` computes one output row, 4 pixels by 2
vectors of channels at a time, from a strip of the KH input rows under it with ``pad`` zero
pixels left and right (so the hot loops need no bounds checks); ``weight_rows`` adds some output
rows' share of the weight gradient, 3 taps by 2 vectors of channels at a time, from the image
padded all round. The fused conv -> ReLU -> max-pool's weight gradient (``conv_pool.py``) calls
``weight_rows`` too; its forward pools tiles of its own (``pooled_row``). The input gradient is a forward convolution too, of dy with the weights turned around
(``input_gradient_into``), so it runs on the same kernels. With 8 input channels or more the
forward pass is instead a GEMM (``blas.gemm``, inside Numba's threads) over the taps of a block
of output pixels gathered into rows (im2col, ``gather_taps``): the product's inner dimension,
KH*KW*C, is then long enough for BLAS to beat the loops (a few images' products, with AVX2 code,
in products.py's register tiles instead: ``algorithms.gemm_in_registers``). So is the weight
gradient, a GEMM of the gathered taps (transposed) with dy, summed over blocks of output pixels.
The kernels index whole arrays rather than views: then Numba tells LLVM that the arrays do not
overlap, and the loops it vectorises need no run-time overlap checks.

``*_into`` are the unchecked cores, which the execution plan calls with its own buffers.
"""

import numba
import numpy as np
from numba import prange

from . import algorithms, checks, products, simd, winograd
from .blas import NO_TRANS, TRANS, gemm
from .dense import relu_forward_into
from .jit import helper, parallel_kernel, threads
from .merge import add_forward_into

# Output pixels per GEMM of the im2col forward pass and input gradient: up to 256, in whole rows (18 of 14
# pixels, across images; 9 of 28).
_GEMM_PIXELS = 256

# Strip positions are indexed as unsigned integers (and offset by these unsigned constants, so
# that the sums stay unsigned): Numba then leaves out its fix-up code for negative indices.
_U1, _U2 = np.uint64(1), np.uint64(2)


@numba.njit(inline="always")
def fill_strip(strip, x, n, ih0, kh_lo, kh_hi, skip):
    """Copy input rows ih0+kh_lo .. ih0+kh_hi-1 of image n (x viewed as (N, H, W*C)) into strip
    rows kh_lo.., after ``skip`` zeros, and zeros into the strip's other rows (those that fall
    outside the image: ``conv_row`` skips them, the fused kernel's pooled tiles read them). The
    padding stays zero from the strip's allocation."""
    for kh in range(strip.shape[0]):
        if kh_lo <= kh < kh_hi:
            for i in range(x.shape[2]):
                strip[kh, skip + i] = x[n, ih0 + kh, i]
        else:
            for i in range(x.shape[2]):
                strip[kh, skip + i] = np.float32(0.0)


@numba.njit(inline="always")
def strip_rows(oh, stride, pad, KH, H):
    """The first input row under output row oh, and the kernel rows that fall inside the image."""
    ih0 = oh * stride - pad
    return ih0, max(0, -ih0), min(KH, H - ih0)


@helper
def conv_row(out, r, strip, w, b, kh_lo, kh_hi, step):
    """out[r] (OW, K) = bias + the taps of strip rows kh_lo..kh_hi-1 (``step`` = stride * C).

    In tiles of 4 output pixels by 2 vectors of channels (simd.py): a tile's sums stay in 8
    registers through all the taps and are stored once; each weight vector loaded serves 4
    pixels, each input value 2 vectors. The last tiles of a row take fewer channels (lanes
    masked off) or pixels (the missing ones repeat the last and are not stored): one path."""
    OW, K = out.shape[1], out.shape[2]
    for k in range(0, K, 2 * simd.WIDTH):
        for ow in range(0, OW, 4):
            _conv_tile(out, r, ow, k, strip, w, b, kh_lo, kh_hi, step)


@numba.njit(inline="always")
def _conv_tile(out, r, ow, k, strip, w, b, kh_lo, kh_hi, step):
    OW, K = out.shape[1], out.shape[2]
    KWC, V = w.shape[1], simd.WIDTH
    n0, n1 = min(V, K - k), max(0, min(V, K - k - V))  # the two vectors' lanes in use
    # The strip columns of the 4 pixels (unsigned: no fix-up code for negative indices).
    a0, a1 = np.uint64(ow * step), np.uint64(min(ow + 1, OW - 1) * step)
    a2, a3 = np.uint64(min(ow + 2, OW - 1) * step), np.uint64(min(ow + 3, OW - 1) * step)
    s00, s01 = simd.load_first(b, k, n0), simd.load_first(b, k + V, n1)
    s10, s11, s20, s21, s30, s31 = s00, s01, s00, s01, s00, s01
    for kh in range(kh_lo, kh_hi):
        for j0 in range(0, KWC, 3):
            for j in range(j0, j0 + 3):  # a fixed count, unrolled: 1.1x as fast as one loop (AVX2 code)
                if j < KWC:
                    at, uj = (kh * KWC + j) * K + k, np.uint64(j)
                    w0, w1 = simd.load_first(w, at, n0), simd.load_first(w, at + V, n1)
                    x = simd.splat(strip[kh, a0 + uj])
                    s00, s01 = simd.fma(x, w0, s00), simd.fma(x, w1, s01)
                    x = simd.splat(strip[kh, a1 + uj])
                    s10, s11 = simd.fma(x, w0, s10), simd.fma(x, w1, s11)
                    x = simd.splat(strip[kh, a2 + uj])
                    s20, s21 = simd.fma(x, w0, s20), simd.fma(x, w1, s21)
                    x = simd.splat(strip[kh, a3 + uj])
                    s30, s31 = simd.fma(x, w0, s30), simd.fma(x, w1, s31)
    o = (r * OW + ow) * K + k
    _store_pair(out, o, s00, s01, n0, n1)
    if ow + 1 < OW:
        _store_pair(out, o + K, s10, s11, n0, n1)
    if ow + 2 < OW:
        _store_pair(out, o + 2 * K, s20, s21, n0, n1)
    if ow + 3 < OW:
        _store_pair(out, o + 3 * K, s30, s31, n0, n1)


@numba.njit(inline="always")
def _store_pair(a, i, v0, v1, n0, n1):
    """Two vectors into a from flat index i, n0 and n1 of their lanes: whole vectors by plain
    stores (masked ones on every tile made conv_row 2.2x slower with AVX2 code)."""
    simd.store_up_to(a, i, v0, n0)
    if n1 > 0:
        simd.store_up_to(a, i + simd.WIDTH, v1, n1)


@numba.njit(inline="always")
def add_moments(s1, s2, t1, t2, y, r0, r1, b):
    """Add rows r0..r1-1 of y (rows, OW, K) less the bias into the float64 sums s1 and s2 (K,)
    of each channel's values and squares: BatchNorm's statistics, while the rows are in cache.
    Each row is summed in float32 first, in t1 and t2 (K,) (a few dozen values: a few ulps), then
    added in float64: converting every value had cost 60% of a first layer's products."""
    K = y.shape[2]
    for r in range(r0, r1):
        t1[:] = 0.0
        t2[:] = 0.0
        for ow in range(y.shape[1]):
            for k in range(K):
                v = y[r, ow, k] - b[k]
                t1[k] += v
                t2[k] += v * v
        for k in range(K):
            s1[k] += t1[k]
            s2[k] += t2[k]


@numba.njit(inline="always")
def store_moments(moments, task, s1, s2):
    for k in range(s1.shape[0]):
        moments[task, 0, k] = s1[k]
        moments[task, 1, k] = s2[k]


@parallel_kernel
def _conv2d_forward(y, moments, x, w, b, C, stride, pad, tasks):
    # y viewed as (N * OH, OW, K); each task owns a contiguous range of output rows. moments
    # (tasks, 2, K), or (0, 2, K) for none: see add_moments.
    N, H, WC = x.shape
    KH, K = w.shape[0], w.shape[2]
    OH = y.shape[0] // N
    stats = moments.shape[0] > 0
    for task in prange(tasks):
        strip = np.zeros((KH, WC + 2 * pad * C), np.float32)
        s1, s2 = np.zeros(K), np.zeros(K)
        t1, t2 = np.empty(K, np.float32), np.empty(K, np.float32)
        for row in range(task * N * OH // tasks, (task + 1) * N * OH // tasks):
            n = row // OH
            ih0, kh_lo, kh_hi = strip_rows(row - n * OH, stride, pad, KH, H)
            fill_strip(strip, x, n, ih0, kh_lo, kh_hi, pad * C)
            conv_row(y, row, strip, w, b, kh_lo, kh_hi, stride * C)
            if stats:
                add_moments(s1, s2, t1, t2, y, row, row + 1, b)
        if stats:
            store_moments(moments, task, s1, s2)


@numba.njit(inline="always")
def gather_taps(cols, x, row0, rows, OH, OW, stride, pad, KH, KW):
    """cols (rows * OW, KH*KW*C) and on: row i * OW + ow holds the taps of output pixel ow of the
    output row row0 + i (of all the images' N * OH: they may span images), in the order of w's
    rows (kh, kw, c); zeros where they fall in the padding."""
    _, H, W, C = x.shape
    for i in range(rows):
        n, oh = (row0 + i) // OH, (row0 + i) % OH
        for ow in range(OW):
            r = i * OW + ow
            for kh in range(KH):
                ih = oh * stride - pad + kh
                for kw in range(KW):
                    iw = ow * stride - pad + kw
                    base = (kh * KW + kw) * C
                    if 0 <= ih < H and 0 <= iw < W:
                        for c in range(C):
                            cols[r, base + c] = x[n, ih, iw, c]
                    else:
                        for c in range(C):
                            cols[r, base + c] = 0.0


@helper
def _blas_rows_times(out, out_at, a, rows, depth, b, K):
    """products.rows_times by BLAS."""
    gemm(NO_TRANS, NO_TRANS, rows, K, depth, np.float32(1.0), a, depth, b, K, np.float32(0.0), out[out_at:], K)


# Who multiplies the taps of a few output pixels (``registers``): products.py's tiles where they
# multiply Winograd's products (AVX2 code: OpenBLAS's Haswell kernels pack the whole weight on
# every call), else BLAS, so that nothing more is compiled where the tiles never run.
_few_pixels_times = products.rows_times if algorithms.winograd_products() == "registers" else _blas_rows_times


@parallel_kernel
def _conv2d_forward_gemm(y, moments, x, w, b, KH, KW, stride, pad, block, tasks, registers):
    # y viewed as (N * OH, OW, K), w as (KH*KW*C, K). Each task owns a contiguous range of output
    # rows and takes them ``block`` rows at a time (across images: a GEMM of one 7x7 image's 49
    # rows ran at 0.66x the speed of four images' on OpenBLAS's Haswell kernels): their taps are
    # gathered into ``cols`` (im2col), then one GEMM (block*OW, D) @ (D, K) writes their products
    # (with ``registers``, products.py's tiles: algorithms.gemm_in_registers), their statistics
    # are taken (of the products themselves: y less the bias, which a large bias would round), and
    # the bias is added.
    N, H, W, C = x.shape
    OH, OW, K = y.shape[0] // N, y.shape[1], y.shape[2]
    D = KH * KW * C
    flat_w, flat_y = w.reshape(-1), y.reshape(-1)
    stats = moments.shape[0] > 0
    for task in prange(tasks):
        cols = np.empty((block * OW, D), np.float32)
        s1, s2 = np.zeros(K), np.zeros(K)
        t1, t2, no_bias = np.empty(K, np.float32), np.empty(K, np.float32), np.zeros(K, np.float32)
        row, end = task * N * OH // tasks, (task + 1) * N * OH // tasks
        while row < end:
            rows = min(block, end - row)
            gather_taps(cols, x, row, rows, OH, OW, stride, pad, KH, KW)
            if registers:
                _few_pixels_times(flat_y, row * OW * K, cols.reshape(-1), rows * OW, D, flat_w, K)
            else:
                gemm(NO_TRANS, NO_TRANS, rows * OW, K, D, np.float32(1.0), cols.reshape(-1), D, flat_w, K,
                     np.float32(0.0), flat_y[row * OW * K:], K)
            if stats:
                add_moments(s1, s2, t1, t2, y, row, row + rows, no_bias)
            for r in range(row, row + rows):
                for ow in range(OW):
                    for k in range(K):
                        y[r, ow, k] += b[k]
            row += rows
        if stats:
            store_moments(moments, task, s1, s2)


@helper
def weight_rows(partial, chunk, partial_db, image, g, g0, oh0, rows, stride, step):
    """Add the share of output rows oh0..oh0+rows-1 of one image to partial[chunk] (KH, KWC3, K)
    and partial_db[chunk] (K,): g rows g0..g0+rows-1 (each (OW, K)) are their gradient, ``image``
    the padded input (``padded_image``), ``step`` = stride * C.

    In tiles of 3 taps by 2 vectors of channels (simd.py): a tile's sums stay in 6 registers
    through all the rows' pixels and are added into the partials once; per pixel, 2 vector loads
    of g and 3 of the image's values for 6 products. The last tiles take fewer channels (lanes
    masked off): one path. KWC3 is the taps KW*C rounded up to a multiple of 3: the partials'
    rows past KW*C sum values never read. The bias gradient, the sum of g, is added up by the
    first tiles of each channel on the way."""
    KH, KWC3, K = partial.shape[1], partial.shape[2], partial.shape[3]
    for kh in range(KH):
        for j in range(0, KWC3, 3):
            for k in range(0, K, 2 * simd.WIDTH):
                _weight_tile(partial, chunk, partial_db, kh == 0 and j == 0, image, g, g0, oh0, rows, kh, j, k, stride,
                             step)


@helper
def _weight_tile(partial, chunk, partial_db, bias, image, g, g0, oh0, rows, kh, j, k, stride, step):
    OW, K, V = g.shape[1], g.shape[2], simd.WIDTH
    n0, n1 = min(V, K - k), max(0, min(V, K - k - V))  # the two vectors' lanes in use
    at = ((chunk * partial.shape[1] + kh) * partial.shape[2] + j) * K + k  # partial[chunk, kh, j, k]
    s00, s01 = simd.load_first(partial, at, n0), simd.load_first(partial, at + V, n1)
    s10, s11 = simd.load_first(partial, at + K, n0), simd.load_first(partial, at + K + V, n1)
    s20, s21 = simd.load_first(partial, at + 2 * K, n0), simd.load_first(partial, at + 2 * K + V, n1)
    d0 = d1 = simd.splat(0.0)
    for i in range(rows):
        row = np.uint64((oh0 + i) * stride + kh)  # unsigned indices: no fix-up code for negative ones
        o = ((g0 + i) * OW) * K + k
        for ow in range(OW):
            g0v, g1v = simd.load_first(g, o, n0), simd.load_first(g, o + V, n1)
            d0, d1 = simd.add(d0, g0v), simd.add(d1, g1v)
            o += K
            a = np.uint64(ow * step + j)
            x = simd.splat(image[row, a])
            s00, s01 = simd.fma(x, g0v, s00), simd.fma(x, g1v, s01)
            x = simd.splat(image[row, a + _U1])
            s10, s11 = simd.fma(x, g0v, s10), simd.fma(x, g1v, s11)
            x = simd.splat(image[row, a + _U2])
            s20, s21 = simd.fma(x, g0v, s20), simd.fma(x, g1v, s21)
    _store_pair(partial, at, s00, s01, n0, n1)
    _store_pair(partial, at + K, s10, s11, n0, n1)
    _store_pair(partial, at + 2 * K, s20, s21, n0, n1)
    if bias:
        simd.add_lanes(partial_db[chunk], k, d0, n0)
        simd.add_lanes(partial_db[chunk], k + V, d1, n1)


@numba.njit(inline="always")
def padded_image(H, WC, pad, C, OW, step, KWC3):
    """Room for one input image with ``pad`` zero pixels around it, and zeros for the reads of
    the taps rounded up to KWC3 (weight_rows): fill it with ``fill_image``."""
    return np.zeros((H + 2 * pad, max(WC + 2 * pad * C, (OW - 1) * step + KWC3)), np.float32)


@numba.njit(inline="always")
def fill_image(image, x, n, pad, C):
    """Image n of x (viewed as (N, H, W*C)) into ``image`` inside its zero border."""
    for i in range(x.shape[1]):
        for c in range(x.shape[2]):
            image[pad + i, pad * C + c] = x[n, i, c]


@numba.njit(inline="always")
def zero_partials(partial, partial_db, chunk):
    partial[chunk] = np.float32(0.0)
    partial_db[chunk] = 0.0


@numba.njit(inline="always")
def add_partials(dw, db, partial, partial_db):
    """dw, db = the sums of the per-chunk partials, added in chunk order (one thread: they are
    small), so the result is the same bit for bit whatever thread ran which chunk."""
    KH, KWC, K = dw.shape
    chunks = partial.shape[0]
    for kh in range(KH):
        for j in range(KWC):
            for k in range(K):
                acc = partial[0, kh, j, k]
                for chunk in range(1, chunks):
                    acc += partial[chunk, kh, j, k]
                dw[kh, j, k] = acc
    winograd.add_bias_partials(db, partial_db)


@parallel_kernel
def _conv2d_backward_weight(dw, db, partial, partial_db, dy, x, C, stride, pad):
    # dy viewed as (N * OH, OW, K). Each chunk sums a contiguous slice of the batch into its own
    # partial dw and db (db in float64: tens of thousands of pixels); race-free.
    N, H, WC = x.shape
    OH, OW = dy.shape[0] // N, dy.shape[1]
    chunks = partial.shape[0]
    for chunk in prange(chunks):
        image = padded_image(H, WC, pad, C, OW, stride * C, partial.shape[2])
        zero_partials(partial, partial_db, chunk)
        for n in range(chunk * N // chunks, (chunk + 1) * N // chunks):
            fill_image(image, x, n, pad, C)
            # chunk as uint64: Numba types a prange index int64 in the kernel, then uint64 in the loop
            # body's own compile, and a helper given it would compile for both (1.3-1.9 s of CPU more);
            # and a typed 0, not a literal one: weight_rows would compile apart from conv_pool's.
            weight_rows(partial, np.uint64(chunk), partial_db, image, dy, n * OH, np.int64(0), OH, stride,
                        stride * C)
    add_partials(dw, db, partial, partial_db)


@parallel_kernel
def _conv2d_backward_weight_gemm(dw, db, partial, partial_db, dy, x, KH, KW, stride, pad, block):
    # dy viewed as (N * OH, OW, K), each partial[chunk] as (KH*KW*C, K). Each chunk owns a
    # contiguous range of output rows and takes them ``block`` rows at a time (across images):
    # their taps are gathered into ``cols`` (P, D), then partial += cols^T @ dy's P rows; race-free.
    N, H, W, C = x.shape
    OH, OW, K = dy.shape[0] // N, dy.shape[1], dy.shape[2]
    D = KH * KW * C
    chunks = partial.shape[0]
    flat_dy = dy.reshape(-1)
    for chunk in prange(chunks):
        cols = np.empty((block * OW, D), np.float32)
        zero_partials(partial, partial_db, chunk)
        flat_partial = partial[chunk].reshape(-1)
        row, end = chunk * N * OH // chunks, (chunk + 1) * N * OH // chunks
        while row < end:
            rows = min(block, end - row)
            gather_taps(cols, x, row, rows, OH, OW, stride, pad, KH, KW)
            gemm(TRANS, NO_TRANS, D, K, rows * OW, np.float32(1.0), cols.reshape(-1), D,
                 flat_dy[row * OW * K:], K, np.float32(1.0), flat_partial, K)
            for r in range(row, row + rows):
                for ow in range(OW):
                    for k in range(K):
                        partial_db[chunk, k] += dy[r, ow, k]
            row += rows
    add_partials(dw, db, partial, partial_db)


def rows(x):
    """x (N, H, W, C) viewed as (N, H, W*C): an image row as one contiguous run."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def taps(w):
    """w (KH, KW, C, K) viewed as (KH, KW*C, K)."""
    return w.reshape(w.shape[0], -1, w.shape[3])


def tasks(rows):
    """One task per thread, each a contiguous range of rows, so per-task scratch is allocated once."""
    return min(rows, threads())


def partials(n, w, taps_multiple=1):
    """Per-chunk partial sums of dw and db over ``n`` units of work (images, or blocks of output
    rows): a few chunks per thread balance better than one (measured); each chunk is a contiguous
    range of them. A kernel row's taps, KW*C, rounded up to ``taps_multiple``."""
    chunks = min(n, 4 * threads())
    return (np.empty((chunks, w.shape[0], round_up(w.shape[1] * w.shape[2], taps_multiple), w.shape[3]), np.float32),
            np.empty((chunks, w.shape[3]), np.float64))


def direct_partials(n, w):
    """partials for weight_rows: the taps of a kernel row rounded up to a multiple of 3."""
    return partials(n, w, 3)


def round_up(n, multiple):
    return -(-n // multiple) * multiple


def conv2d_forward_into(y, x, w, b, stride, pad):
    """y (N, OH, OW, K) = conv(x, w) + b, by the path ``algorithms.conv_forward`` chooses."""
    _forward(y, None, x, w, b, stride, pad)


def conv2d_relu_forward_into(y, x, w, b, stride, pad):
    """y = relu(conv(x, w) + b): the ReLU applied as Winograd's tiles are written, else after."""
    if algorithms.conv_forward(x.shape, w.shape, stride, pad) == "winograd":
        winograd.forward_into(y, x, w, b, pad, relu=True)
        return
    _forward(y, None, x, w, b, stride, pad)
    relu_forward_into(y, y)


def conv2d_moments_forward_into(y, mean, var, x, w, b, stride, pad):
    """conv2d_forward_into, and the batch statistics of y per channel (BatchNorm's, the biased
    variance) added up in the same pass over y: mean (K,), var (K,)."""
    sums = np.empty((2, w.shape[3]))
    _forward(y, sums, x, w, b, stride, pad)
    count = y.size // y.shape[3]
    shift = sums[0] / count  # the sums are of y - b: the bias shifts them towards 0
    mean[...] = b + shift
    var[...] = np.maximum(sums[1] / count - shift * shift, 0.0)


def _forward(y, sums, x, w, b, stride, pad):
    path = algorithms.conv_forward(x.shape, w.shape, stride, pad)
    if path == "winograd":
        winograd.forward_into(y, x, w, b, pad, sums)
    elif path == "gemm":
        forward_gemm_into(y, sums, x, w, b, stride, pad)
    else:
        forward_direct_into(y, sums, x, w, b, stride, pad)


def _moments(sums, K):
    """Per-task sums for a kernel to fill: (tasks, 2, K), or none (0, 2, K)."""
    return np.empty((0 if sums is None else threads(), 2, K))


def forward_gemm_into(y, sums, x, w, b, stride, pad):
    """The forward pass as GEMMs over gathered taps (im2col); sums (2, K) or None as in _forward."""
    n, oh, ow, K = y.shape
    # Every thread takes a share of a few rows too: at batches of 1 to 4, 1.2-1.9x as fast as one
    # thread taking a block of all of them (measured 2026-12-06, 4x4 to 16x16 images, 32 to 128
    # channels, AVX2 code; the same speed at batch 64).
    count = tasks(n * oh)
    block = max(1, min(_GEMM_PIXELS // ow, -(-n * oh // count)))
    parts = _moments(sums, K)[:count]
    registers = K % simd.WIDTH == 0 and algorithms.gemm_in_registers(block * ow)
    _conv2d_forward_gemm(y.reshape(n * oh, ow, K), parts, x, w.reshape(-1, K), b, w.shape[0], w.shape[1], stride,
                         pad, block, count, registers)
    if sums is not None:
        sums[...] = parts.sum(axis=0)


def forward_direct_into(y, sums, x, w, b, stride, pad):
    """The forward pass summed tap by tap, row by row (few input channels)."""
    n, oh, ow, K = y.shape
    count = tasks(n * oh)
    parts = _moments(sums, K)[:count]
    _conv2d_forward(y.reshape(n * oh, ow, K), parts, rows(x), taps(w), b, x.shape[3], stride, pad, count)
    if sums is not None:
        sums[...] = parts.sum(axis=0)


def conv2d_backward_into(dx, dw, db, dy, x, w, stride, pad, add=False):
    """Fill dw (KH, KW, C, K), db (K,) and, unless it is None, dx (N, H, W, C) from dy; with
    ``add``, add the input gradient onto dx (the gradient of an input that another layer reads too)."""
    path = algorithms.conv_weight_gradient(x.shape, w.shape, stride, pad)
    if path == "winograd":
        winograd.weight_gradient_into(dw, db, dy, x, pad)
    elif path == "gemm":
        weight_gradient_gemm_into(dw, db, dy, x, stride, pad)
    else:
        weight_gradient_direct_into(dw, db, dy, x, stride, pad)
    if dx is not None:
        input_gradient_into(dx, dy, w, stride, pad, add)


def weight_gradient_gemm_into(dw, db, dy, x, stride, pad):
    n, oh, ow, K = dy.shape
    block = max(1, algorithms.gemm_weight_pixels() // ow)
    partial, partial_db = partials(-(-n * oh // block), dw)
    _conv2d_backward_weight_gemm(taps(dw), db, partial, partial_db, dy.reshape(n * oh, ow, K), x, dw.shape[0],
                                 dw.shape[1], stride, pad, block)


def weight_gradient_direct_into(dw, db, dy, x, stride, pad):
    n, oh, ow, K = dy.shape
    partial, partial_db = direct_partials(n, dw)
    _conv2d_backward_weight(taps(dw), db, partial, partial_db, dy.reshape(n * oh, ow, K), rows(x), x.shape[3], stride,
                            pad)


def input_gradient_into(dx, dy, w, stride, pad, add=False):
    """dx (N, H, W, C) from dy (N, OH, OW, K), as forward convolutions, so that the tuned forward
    kernel does the work and nothing more is compiled; with ``add``, added onto dx.

    At stride 1, dx is the convolution of dy with w turned by 180 degrees and its channels swapped,
    w'[a, b, k, c] = w[KH-1-a, KW-1-b, c, k], and padding KH-1-pad: each input pixel gathers the
    outputs that read it. At stride s, the input pixels (p + s*i, q + s*j) of one phase (p, q)
    were read by the kernel taps (kh0 + s*m, kw0 + s*n) alone, kh0 = (p + pad) % s, and their
    gradient is the stride-1 convolution of dy with those taps turned: s*s small convolutions
    that add up to the work of one. Where the padding this needs is not the same on both sides
    and axes, or is < 0 (pad > KH-1), dy is first copied into a zero frame (``framed``). For a
    batch of more than one image, a stride > 1 takes col2im instead (``_conv2d_backward_input_gemm``:
    a GEMM per block of dy's rows, its columns added onto the pixels each tap read), which measured
    2.7 to 4.2 times faster than the phases; one image stays with the phases, spread over the threads.
    col2im adds onto dx anyway, so ``add`` only skips its zeroing: where a residual network's
    stride-2 convolution and its 1x1 shortcut read the same input, the second adds onto the first's
    gradient, with no buffer zeroed and no pass that sums two (about 4 passes over the input's
    size). The other paths write dx: with ``add``, into room of their own, then added."""
    KH, KW, C, _ = w.shape
    col2im = adds_in_place(dy.shape[0], w.shape, stride, pad)
    if add and not col2im:
        out = np.empty_like(dx)
        input_gradient_into(out, dy, w, stride, pad)
        add_forward_into(dx, dx, out, False)
        return
    no_bias = np.zeros(C, np.float32)
    if stride == 1 and KH == KW and pad <= KH - 1:
        conv2d_forward_into(dx, dy, _turned(w), no_bias, 1, KH - 1 - pad)
        return
    if col2im:
        n, oh, ow, k = dy.shape
        _conv2d_backward_input_gemm(dx, dy.reshape(n * oh, ow, k), w.reshape(-1, k), KH, KW, stride, pad,
                                    max(1, _GEMM_PIXELS // ow), tasks(n), add)
        return
    for p in range(stride):
        for q in range(stride):
            phase = dx[:, p::stride, q::stride]
            sub = w[(p + pad) % stride::stride, (q + pad) % stride::stride]
            if phase.size == 0:
                continue
            if sub.size == 0:  # a stride larger than the kernel: these pixels were never read
                phase[...] = 0.0
                continue
            # Phase row i took dy row i + (p + pad) // stride - m through tap row m of sub.
            M, Mw = sub.shape[0], sub.shape[1]
            shape = (dy.shape[0], phase.shape[1] + M - 1, phase.shape[2] + Mw - 1, dy.shape[3])
            src = framed(dy, shape, M - 1 - (p + pad) // stride, Mw - 1 - (q + pad) // stride)
            out = np.empty(phase.shape, np.float32)
            conv2d_forward_into(out, src, _turned(sub), no_bias, 1, 0)
            phase[...] = out


def adds_in_place(n, w_shape, stride, pad):
    """Whether the input gradient of a batch of ``n`` goes by col2im, which adds onto dx: then
    ``add=True`` costs nothing, where the other paths compute their own and add it."""
    KH, KW = w_shape[0], w_shape[1]
    return n > 1 and not (stride == 1 and KH == KW and pad <= KH - 1)


@parallel_kernel
def _conv2d_backward_input_gemm(dx, dy, w, KH, KW, stride, pad, block, tasks, add):
    # dy viewed as (N * OH, OW, K), w as (KH*KW*C, K). Each task owns a contiguous range of images:
    # their dx is zeroed (unless ``add``), then ``block`` rows of dy at a time (across its images), one GEMM
    # (block*OW, K) @ (K, D) gives every tap's share of the input gradient (col2im's columns),
    # added onto the pixels each tap read: no other task writes them.
    N, H, W, C = dx.shape
    OH, OW, K = dy.shape[0] // N, dy.shape[1], dy.shape[2]
    D = KH * KW * C
    flat_w, flat_dy = w.reshape(-1), dy.reshape(-1)
    for task in prange(tasks):
        cols = np.empty((block * OW, D), np.float32)
        flat_cols = cols.reshape(-1)
        n0, n1 = task * N // tasks, (task + 1) * N // tasks
        if not add:
            dx[n0:n1] = 0.0
        row, end = n0 * OH, n1 * OH
        while row < end:
            rows = min(block, end - row)
            gemm(NO_TRANS, TRANS, rows * OW, D, K, np.float32(1.0), flat_dy[row * OW * K:], K, flat_w, K,
                 np.float32(0.0), flat_cols, D)
            for i in range(rows):
                n, oh = (row + i) // OH, (row + i) % OH
                for kh in range(KH):
                    ih = oh * stride - pad + kh
                    if ih < 0 or ih >= H:
                        continue
                    for ow in range(OW):
                        r = i * OW + ow
                        for kw in range(KW):
                            iw = ow * stride - pad + kw
                            if 0 <= iw < W:
                                base = (kh * KW + kw) * C
                                for c in range(C):
                                    dx[n, ih, iw, c] += cols[r, base + c]
            row += rows


def _turned(w):
    """w (KH, KW, C, K) turned by 180 degrees, as (KH, KW, K, C): a small copy."""
    return np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))


def framed(dy, shape, top, left):
    """dy (N, OH, OW, K) at (top, left) in a zero image of ``shape``; what falls outside is cut."""
    out = np.zeros(shape, np.float32)
    (to_h, from_h), (to_w, from_w) = (_overlap(dy.shape[a], shape[a], at) for a, at in ((1, top), (2, left)))
    out[:, to_h, to_w] = dy[:, from_h, from_w]
    return out


def _overlap(size, frame, at):
    """Along one axis: the frame positions at + i of the dy indices i that land in 0..frame-1."""
    lo, hi = max(0, -at), min(size, frame - at)
    return slice(at + lo, at + hi), slice(lo, hi)


def _checked(x, w, b, stride, padding):
    x = checks.array("x", x, 4, np.float32)
    w = checks.array("w", w, 4, np.float32)
    b = checks.array("b", b, 1, np.float32)
    checks.same_shape("b", b, (w.shape[3],), "one bias per output channel")
    oh, ow = checks.conv_output_size(x.shape, w.shape, stride, padding)
    return x, w, b, np.empty((x.shape[0], oh, ow, w.shape[3]), np.float32)


def conv2d_forward(x, w, b, stride=1, padding=0):
    """y = conv(x, w) + b. x (N, H, W, C), w (KH, KW, C, K), b (K,) -> y (N, OH, OW, K) float32."""
    x, w, b, y = _checked(x, w, b, stride, padding)
    conv2d_forward_into(y, x, w, b, stride, padding)
    return y


def conv2d_relu_forward(x, w, b, stride=1, padding=0):
    """y = relu(conv(x, w) + b), x (N, H, W, C), w (KH, KW, C, K), b (K,) -> y (N, OH, OW, K)."""
    x, w, b, y = _checked(x, w, b, stride, padding)
    conv2d_relu_forward_into(y, x, w, b, stride, padding)
    return y


def conv2d_moments_forward(x, w, b, stride=1, padding=0):
    """(y, mean, var): conv2d_forward's y and the batch statistics of each of its channels (the
    biased variance, as BatchNorm normalises with), added up in the same pass."""
    x, w, b, y = _checked(x, w, b, stride, padding)
    mean, var = np.empty(y.shape[3], np.float32), np.empty(y.shape[3], np.float32)
    conv2d_moments_forward_into(y, mean, var, x, w, b, stride, padding)
    return y, mean, var


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
    dx = np.empty_like(x) if need_dx else None
    dw, db = np.empty_like(w), np.empty(w.shape[3], np.float32)
    conv2d_backward_into(dx, dw, db, dy, x, w, stride, padding)
    return dx, dw, db
