"""Which algorithm computes a convolution: chosen at run time from its shape and the CPU.

Numba compiles the kernels for the CPU it runs on (or the one NUMBA_CPU_NAME and
NUMBA_CPU_FEATURES name), so the same loop runs 16 floats wide with AVX-512 and 8 with AVX2, and
the matrix products run OpenBLAS's kernels for the core it detects (OPENBLAS_CORETYPE). The paths:

- ``direct``: the taps summed in register tiles (conv.conv_row, conv.weight_rows): few input channels.
- ``gemm``: the taps of a block of output pixels gathered into rows (im2col), then GEMMs.
- ``winograd``: F(4x4, 3x3) (winograd.py), 3x3 kernels at stride 1: a quarter of the products.

The rules below were measured on this project's 2-core AMD EPYC machines, on AVX-512 and with the
AVX2 code (``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=-avx512f OPENBLAS_CORETYPE=Haswell``):
``benchmarks/conv_paths.py`` times every path on a grid of shapes and prints the thresholds.
``paths()`` tells which path each convolution shape took in this process.
"""

import functools

import numba

from . import blas
from .jit import threads

# Input channels from which the GEMM paths beat the direct one (forward and weight gradient).
GEMM_CHANNELS = 8
# Who multiplies Winograd's 36 products a block (winograd.multiply, .accumulate), by the
# instruction set the kernels are compiled for: products.py's tiles, with their sums in
# registers, where they beat OpenBLAS's kernels (AVX2 code: 1.25-2.8x as fast as OpenBLAS's Haswell
# kernels, which pack both operands on every call; they need FMA), else BLAS (AVX-512 code, whose
# OpenBLAS kernels don't pack small products: ours ran 0.70-1.13x as fast).
WINOGRAD_PRODUCTS = {"avx512": "blas", "avx2": "registers", "other": "blas"}

# The rules below are keyed by who multiplies (winograd_kind()): "registers", or BLAS's kernels,
# "avx512" or "avx2" (OpenBLAS's Haswell kernels: AVX-512 code with OPENBLAS_CORETYPE=Haswell).

# Input channels from which Winograd beats both, for a 3x3 stride-1 convolution. Measured with
# benchmarks/conv_paths.py (4x4 to 32x32 images, 1 to 256 channels, batch 64, 2 threads) on
# 2026-12-06, after the blocks came to have an odd number of rows (winograd._elements): with
# AVX-512 code Winograd won the forward pass and the weight gradient from 3 channels (10 and 11 of
# the 12 shapes with 3 channels, all from 4; the direct sum at 1); with the products in registers
# (AVX2 code) the forward pass from 3 (9 of 12) and the weight gradient from 4 (all 12), at 3 on
# 7 of 12 (1.04-1.35x; 1.20x on `cifar`'s 32x32 -> 32), the direct sum on the others by 1-23%
# (14x14 -> 16); so 3, which also spares `cifar` compiling the direct weight gradient (3.2 s of
# CPU). With OpenBLAS's Haswell kernels (measured before, one thread) from 16 (at 8 it lost to
# im2col's GEMM on 14x14 and 28x28) and 8.
WINOGRAD_CHANNELS = {("avx512", "forward"): 3, ("avx512", "weight gradient"): 3,
                     ("avx2", "forward"): 16, ("avx2", "weight gradient"): 8,
                     ("registers", "forward"): 3, ("registers", "weight gradient"): 3}

# OpenBLAS cores with AVX-512 GEMM kernels: small products run without packing their operands.
AVX512_BLAS = {"SkylakeX", "Cooperlake", "SapphireRapids"}
# Tiles per block of Winograd's forward pass (the rows of each of its 36 products). OpenBLAS's
# Haswell (AVX2) kernels pack the whole weight block for every call, and need many tiles to pay
# for it: 96 ran 1.8-2.9x faster than 16 there (the cifar and deep networks' convolutions, one
# thread), and 256, in turn with 96 in one process on 2 threads, 1.01-1.09x as fast as 96,
# 1.00-1.03x as 128 and 1.00-1.09x as 512 (14x14 to 16x16 images, 32 and 64 channels, 8x8 with 64
# and 128, batch 64; 2026-12-06, before the blocks had an odd number of rows). OpenBLAS's AVX-512
# kernels and the products in registers multiply small blocks fast; with the blocks' odd rows
# (winograd._elements), 48 tiles ran 1.02-1.09x as fast as 32 with AVX-512 code and 1.01-1.08x
# as 64 with the products in registers, 16 to 256 within 0.9-1.1x (the same shapes, 2026-12-06).
# The weight gradient's products pack only the block itself: 48 tiles for all (1.01-1.07x as
# fast as 32 with AVX-512 code, 1.03-1.07x with the products in registers).
WINOGRAD_BLOCK = {"avx512": 48, "avx2": 256, "registers": 48}
WINOGRAD_WEIGHT_BLOCK = 48
# Tiles per thread from which Winograd's forward pass beats im2col's GEMM. OpenBLAS's Haswell
# kernels multiply its 36 small products per block slowly when a block has a few tiles (one or two
# images): measured 2026-12-06 with AVX2 code, 2 threads, one image of 8x8x64 -> 128 took 281 us
# by Winograd against 102 by the GEMM, one of 14x14x32 -> 64 89 against 53, but 8 images of 8x8
# (32 tiles) 358 against 547 and, on one thread, 4 of them (16 tiles) 392 against 593. With
# AVX-512 kernels Winograd wins from one image (14x14x32 -> 64: 42 against 50 us), and so with the
# products in registers (AVX2 code, one image, 2026-12-06: 14x14x32 -> 64 and 16x16x32 -> 64
# 1.09-1.26x as fast as the GEMM on 2 threads and 1.30-1.67x on one; 8x8x64 -> 128 0.87x on 2
# threads, 1.27x on one; 2 images 1.25-1.57x).
WINOGRAD_TILES_PER_THREAD = {"avx512": 0, "avx2": 16, "registers": 0}

# Output pixels per GEMM of im2col's weight gradient (the product's inner dimension), by BLAS's
# kernels. AVX-512: at 3x3, batch 64, 8x8 to 28x28 images, 32 to 128 channels, blocks of 32 pixels
# ran 1.0-1.7x the direct kernel, 64 and 256 pixels 0.85-1.15x of 32 (2026-12-02, best of 30 calls
# each). OpenBLAS's Haswell kernels pack both operands on every call, which a longer product pays
# for: on an AVX2-only Zen 3, 2 threads, blocks spanning images, 256 pixels ran 1.08-1.23x as fast
# as 32, 128 and 512 within 0-10% of 256 (`resnet`'s 3x3 and 1x1 stride-2 convolutions,
# 28x28x32 -> 64 and 14x14x64 -> 128, batch 64, 12 rounds in turn; 2026-12-07).
GEMM_WEIGHT_PIXELS = {"avx512": 32, "avx2": 256}
# Output pixels per product of im2col's forward pass below which products.py's tiles multiply it,
# where they multiply Winograd's (winograd_products(): AVX2 code): OpenBLAS's Haswell kernels pack
# the whole weight (up to KH*KW*C x K) on every call, which a product of a few rows does not repay.
# Measured 2026-12-07 (AVX2-only Zen 3, 2 threads, calls in turn in one process; `conv_paths.py
# --gemm-products`): one image of resnet's strided and shortcut convolutions and of 5x5 ones
# (28 and 98 pixels a product) 0.87-1.69x as fast by the tiles (most 1.1-1.3x; docs/performance.md),
# and `resnet`'s one image 1.05-1.07x; from 98 pixels on, products of 128 x 256 channels
# 0.92-1.01x, and full blocks 0.73-1.26x by shape and run: BLAS's packing pays there.
GEMM_REGISTER_PIXELS = 128

_TAKEN = {}  # (pass, shape description) -> path, in the order first seen


# CPU models (as NUMBA_CPU_NAME names them) whose instruction sets the kernels are compiled for
# when NUMBA_CPU_FEATURES lists changes only (``-avx512f``), not the whole set.
_AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake", "tigerlake", "rocketlake",
                "sapphirerapids", "graniterapids", "emeraldrapids", "znver4", "znver5")
_AVX2_CPUS = ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "znver1", "znver2", "znver3",
              "x86-64-v3") + _AVX512_CPUS


@functools.lru_cache(maxsize=None)
def isa():
    """'avx512' or 'avx2' (or 'other'): what the compiled kernels use, from Numba's target (the
    host, or NUMBA_CPU_NAME with NUMBA_CPU_FEATURES' changes). Asked once: reading the host's
    features takes 0.2 ms, and a convolution's path asks it."""
    features = numba.config.CPU_FEATURES
    if features is None:
        from numba.core.codegen import get_host_cpu_features
        features = get_host_cpu_features()
    name = (numba.config.CPU_NAME or "").lower()
    if "+avx512f" in features or (name.startswith(_AVX512_CPUS) and "-avx512f" not in features):
        return "avx512"
    if "+avx2" in features or (name.startswith(_AVX2_CPUS) and "-avx2" not in features):
        return "avx2"
    return "other"


def gemm_in_registers(pixels):
    """Whether a product of im2col's forward pass over ``pixels`` output pixels runs in registers here."""
    return winograd_products() == "registers" and pixels < GEMM_REGISTER_PIXELS


def gemm_weight_pixels():
    """Output pixels per GEMM of im2col's weight gradient here."""
    return GEMM_WEIGHT_PIXELS[blas_kind()]


@functools.lru_cache(maxsize=None)
def blas_kind():
    """'avx512' if SciPy's OpenBLAS runs AVX-512 kernels, else 'avx2' (OPENBLAS_CORETYPE sets it)."""
    return "avx512" if blas.core() in AVX512_BLAS else "avx2"


def winograd_products():
    """'registers' or 'blas': how Winograd multiplies, for the code this process compiles (WINOGRAD_PRODUCTS)."""
    return WINOGRAD_PRODUCTS[isa()]


def winograd_kind():
    """Whose kernels multiply Winograd's products here: 'registers', else BLAS's ('avx512', 'avx2')."""
    return "registers" if winograd_products() == "registers" else blas_kind()


def winograd_block():
    """Tiles per block of Winograd's forward pass, for the kernels that multiply it here."""
    return WINOGRAD_BLOCK[winograd_kind()]


def _describe(x_shape, w_shape, stride, pad):
    n, h, w, c = x_shape
    return f"{h}x{w}x{c}->{w_shape[3]} {w_shape[0]}x{w_shape[1]} stride {stride} pad {pad}"


def _winograd_fits(kind, x_shape, w_shape, stride, pad):
    return (w_shape[0] == 3 and w_shape[1] == 3 and stride == 1 and pad <= 2
            and x_shape[3] >= WINOGRAD_CHANNELS[winograd_kind(), kind])


def winograd_tiles(out_shape):
    """The 4x4 output tiles of Winograd's F(4x4, 3x3) over an output (N, OH, OW, ...)."""
    n, oh, ow = out_shape[0], out_shape[1], out_shape[2]
    return n * ((oh + 3) // 4) * ((ow + 3) // 4)


def enough_tiles(x_shape, pad, kind, threads):
    """Whether a 3x3 stride-1 forward convolution of x (N, H, W, C) has the tiles per thread that
    Winograd needs when ``kind`` (winograd_kind()) multiplies (WINOGRAD_TILES_PER_THREAD)."""
    out_shape = (x_shape[0], x_shape[1] + 2 * pad - 2, x_shape[2] + 2 * pad - 2)
    return winograd_tiles(out_shape) >= WINOGRAD_TILES_PER_THREAD[kind] * threads


def _record(kind, x_shape, w_shape, stride, pad, path, note=""):
    key = (kind, _describe(x_shape, w_shape, stride, pad) + note)
    if key not in _TAKEN:
        _TAKEN[key] = path
    return path


def conv_forward(x_shape, w_shape, stride, pad):
    """The path of a forward convolution (also an input gradient's, which is one)."""
    return _path("forward", x_shape, w_shape, stride, pad)


def conv_weight_gradient(x_shape, w_shape, stride, pad):
    """The path of a convolution's weight gradient."""
    return _path("weight gradient", x_shape, w_shape, stride, pad)


def _path(kind, x_shape, w_shape, stride, pad):
    return _chosen(kind, tuple(x_shape), tuple(w_shape), stride, pad, threads())


@functools.lru_cache(maxsize=1024)
def _chosen(kind, x_shape, w_shape, stride, pad, threads):
    """Chosen once per shape and thread count (each call of a layer asks: 1 us a convolution,
    where one image takes 60)."""
    if _winograd_fits(kind, x_shape, w_shape, stride, pad):
        if kind != "forward" or enough_tiles(x_shape, pad, winograd_kind(), threads):
            return _record(kind, x_shape, w_shape, stride, pad, "winograd")
        return _record(kind, x_shape, w_shape, stride, pad, "gemm", " (a few images)")
    return _record(kind, x_shape, w_shape, stride, pad, "gemm" if x_shape[3] >= GEMM_CHANNELS else "direct")


def paths():
    """{"forward 16x16x32->64 3x3 stride 1 pad 1": "winograd", ...}: what ran in this process, with
    the instruction set the kernels were compiled for under "isa", OpenBLAS's core under "blas"
    and who multiplies Winograd's products under "winograd products" (winograd_kind())."""
    return {"isa": isa(), "blas": blas.core(), "winograd products": winograd_kind(),
            **{f"{kind} {shape}": path for (kind, shape), path in _TAKEN.items()}}
