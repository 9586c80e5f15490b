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
# Input channels from which Winograd beats both, for a 3x3 stride-1 convolution, by OpenBLAS's
# kernels (which multiply its 36 products) and pass. Measured with benchmarks/conv_paths.py on one
# thread, 4x4 to 32x32 images, 1 to 256 channels: with AVX-512 it won the forward pass from 4
# channels and the weight gradient from 8 (at 4, ties with the direct sum); with AVX2 from 16 (at 8
# it lost to im2col's GEMM on 14x14 and 28x28) and 8.
WINOGRAD_CHANNELS = {("avx512", "forward"): 4, ("avx512", "weight gradient"): 8,
                     ("avx2", "forward"): 16, ("avx2", "weight gradient"): 8}

# OpenBLAS cores with AVX-512 GEMM kernels: small products run without packing their operands.
AVX512_BLAS = {"SkylakeX", "Cooperlake", "SapphireRapids"}
# Tiles per block of Winograd's forward pass (the rows of each of its 36 GEMMs). OpenBLAS's AVX-512
# kernels multiply small blocks fast, and 16-32 tiles keep a block in L2 (64: the same, measured
# 2026-12-06); its Haswell (AVX2) kernels pack the whole weight block for every call, and need
# more tiles to pay for it: 96 ran 1.8-2.9x faster than 16 there (the cifar and deep networks'
# convolutions, one thread), and 256, in turn with 96 in one process on 2 threads, 1.01-1.09x as
# fast as 96, 1.00-1.03x as 128 and 1.00-1.09x as 512 (14x14 to 16x16 images, 32 and 64
# channels, 8x8 with 64 and 128, batch 64; 2026-12-06). The weight gradient's GEMMs pack only the
# block itself: 32 tiles on both.
WINOGRAD_BLOCK = {"avx512": 32, "avx2": 256}
WINOGRAD_WEIGHT_BLOCK = 32
# Tiles per thread from which Winograd's forward pass beats im2col's GEMM. OpenBLAS's Haswell
# kernels multiply its 36 small products per block slowly when a block has a few tiles (one or two
# images): measured 2026-12-06 with AVX2 code, 2 threads, one image of 8x8x64 -> 128 took 281 us
# by Winograd against 102 by the GEMM, one of 14x14x32 -> 64 89 against 53, but 8 images of 8x8
# (32 tiles) 358 against 547 and, on one thread, 4 of them (16 tiles) 392 against 593. With
# AVX-512 kernels Winograd wins from one image (14x14x32 -> 64: 42 against 50 us).
WINOGRAD_TILES_PER_THREAD = {"avx512": 0, "avx2": 16}

_TAKEN = {}  # (pass, shape description) -> path, in the order first seen


# CPU models (as NUMBA_CPU_NAME names them) whose instruction sets the kernels are compiled for
# when NUMBA_CPU_FEATURES lists changes only (``-avx512f``), not the whole set.
_AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake", "tigerlake", "rocketlake",
                "sapphirerapids", "graniterapids", "emeraldrapids", "znver4", "znver5")
_AVX2_CPUS = ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "znver1", "znver2", "znver3",
              "x86-64-v3") + _AVX512_CPUS


def isa():
    """'avx512' or 'avx2' (or 'other'): what the compiled kernels use, from Numba's target (the
    host, or NUMBA_CPU_NAME with NUMBA_CPU_FEATURES' changes)."""
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


@functools.lru_cache(maxsize=None)
def blas_kind():
    """'avx512' if SciPy's OpenBLAS runs AVX-512 kernels, else 'avx2' (OPENBLAS_CORETYPE sets it)."""
    return "avx512" if blas.core() in AVX512_BLAS else "avx2"


def winograd_block():
    """Tiles per block of Winograd's forward pass, for the BLAS kernels this process runs."""
    return WINOGRAD_BLOCK[blas_kind()]


def _describe(x_shape, w_shape, stride, pad):
    n, h, w, c = x_shape
    return f"{h}x{w}x{c}->{w_shape[3]} {w_shape[0]}x{w_shape[1]} stride {stride} pad {pad}"


def _winograd_fits(kind, x_shape, w_shape, stride, pad):
    return (w_shape[0] == 3 and w_shape[1] == 3 and stride == 1 and pad <= 2
            and x_shape[3] >= WINOGRAD_CHANNELS[blas_kind(), kind])


def winograd_tiles(out_shape):
    """The 4x4 output tiles of Winograd's F(4x4, 3x3) over an output (N, OH, OW, ...)."""
    n, oh, ow = out_shape[0], out_shape[1], out_shape[2]
    return n * ((oh + 3) // 4) * ((ow + 3) // 4)


def enough_tiles(x_shape, pad, blas_kind, threads):
    """Whether a 3x3 stride-1 forward convolution of x (N, H, W, C) has the tiles per thread that
    Winograd needs with ``blas_kind``'s kernels (WINOGRAD_TILES_PER_THREAD)."""
    out_shape = (x_shape[0], x_shape[1] + 2 * pad - 2, x_shape[2] + 2 * pad - 2)
    return winograd_tiles(out_shape) >= WINOGRAD_TILES_PER_THREAD[blas_kind] * threads


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
        if kind != "forward" or enough_tiles(x_shape, pad, blas_kind(), threads):
            return _record(kind, x_shape, w_shape, stride, pad, "winograd")
        return _record(kind, x_shape, w_shape, stride, pad, "gemm", " (a few images)")
    return _record(kind, x_shape, w_shape, stride, pad, "gemm" if x_shape[3] >= GEMM_CHANNELS else "direct")


def paths():
    """{"forward 16x16x32->64 3x3 stride 1 pad 1": "winograd", ...}: what ran in this process, with
    the instruction set the kernels were compiled for under "isa" and OpenBLAS's core under "blas"."""
    return {"isa": isa(), "blas": blas.core(),
            **{f"{kind} {shape}": path for (kind, shape), path in _TAKEN.items()}}
