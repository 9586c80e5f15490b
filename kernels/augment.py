"""Data augmentation: each image of a batch moved by its own random affine map, drawn from a key.

Legend: N batch, H/W height and width, C channels. x, out (N, H, W, C); params (N, 6) float64.

One map covers the usual augmentations of small pictures: random crops of an image padded with
zeros (a whole-pixel shift of up to ``pad`` pixels each way, the rest zeros), horizontal flips,
and small shifts and rotations (for digits). Output pixel (i, j) takes the input at

    (i', j') = c + R(angle) (flip(i, j) - c) + (shift_i, shift_j),    c the image's centre,

sampled bilinearly, zero outside the image. At whole-pixel shifts with no rotation the weights
are 1 and 0, so a crop is an exact copy. ``params`` holds per image (cos, sin, shift_i, shift_j,
flip, 0), drawn by ``augment_params`` from a 64-bit key: the splitmix64 hash of (key, image index
in the epoch), as dropout's masks are drawn, so a resumed run augments exactly as the
uninterrupted one did, and the kernel and the NumPy reference (reference.py) agree bit for bit
on the draws. No gradient flows through it: it is applied to the data, before the model.
"""

import math

import numpy as np
from numba import prange

from . import checks
from .dropout import GOLDEN, MIX1, MIX2
from .jit import parallel_kernel


_DRAWS = 6  # per image: angle, shift and crop down, shift and crop across, flip


def _splitmix(z):
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


def augment_params(key, first, n, pad, flip, shift, degrees):
    """(n, 6) float64: the maps of images ``first``..``first + n - 1`` of the epoch whose key is
    ``key``: a whole-pixel shift in -pad..pad each way (random crops), a horizontal flip with
    probability 1/2 if ``flip``, a shift in [-shift, shift] pixels and a rotation in
    [-degrees, degrees] (continuous, uniform). NumPy, in uint64 arithmetic: the same draws on
    every machine."""
    with np.errstate(over="ignore"):
        index = np.uint64(first) + np.arange(n, dtype=np.uint64)
        base = np.uint64(key) + index * np.uint64(_DRAWS) * GOLDEN  # image i's draws: 6i + 1 .. 6i + 6

        def uniform(d):  # in [0, 1): the top 53 bits of the image's d-th draw
            return (_splitmix(base + np.uint64(d + 1) * GOLDEN) >> np.uint64(11)).astype(np.float64) * 2.0**-53

        angle = np.radians((2 * uniform(0) - 1) * degrees)
        shift_i = (2 * uniform(1) - 1) * shift + np.floor(uniform(2) * (2 * pad + 1)) - pad
        shift_j = (2 * uniform(3) - 1) * shift + np.floor(uniform(4) * (2 * pad + 1)) - pad
        flips = (uniform(5) < 0.5) if flip else np.zeros(n, bool)
    params = np.zeros((n, 6))
    params[:, 0], params[:, 1] = np.cos(angle), np.sin(angle)
    params[:, 2], params[:, 3], params[:, 4] = shift_i, shift_j, flips
    return params


@parallel_kernel
def _augment(out, x, params):
    N, H, W, C = x.shape
    ci, cj = (H - 1) / 2.0, (W - 1) / 2.0
    for n in prange(N):
        cos, sin, si, sj, flip = params[n, 0], params[n, 1], params[n, 2], params[n, 3], params[n, 4]
        for i in range(H):
            for j in range(W):
                jj = (W - 1 - j) if flip > 0.5 else j
                di, dj = i - ci, jj - cj
                # The source position, rounded to 1e-9 so whole-pixel maps hit pixels exactly.
                y = round((ci + cos * di - sin * dj + si) * 1e9) / 1e9
                z = round((cj + sin * di + cos * dj + sj) * 1e9) / 1e9
                i0, j0 = math.floor(y), math.floor(z)
                fy, fz = y - i0, z - j0
                w00, w01 = (1 - fy) * (1 - fz), (1 - fy) * fz
                w10, w11 = fy * (1 - fz), fy * fz
                for c in range(C):
                    acc = 0.0
                    if 0 <= i0 < H and 0 <= j0 < W:
                        acc += w00 * x[n, i0, j0, c]
                    if 0 <= i0 < H and 0 <= j0 + 1 < W:
                        acc += w01 * x[n, i0, j0 + 1, c]
                    if 0 <= i0 + 1 < H and 0 <= j0 < W:
                        acc += w10 * x[n, i0 + 1, j0, c]
                    if 0 <= i0 + 1 < H and 0 <= j0 + 1 < W:
                        acc += w11 * x[n, i0 + 1, j0 + 1, c]
                    out[n, i, j, c] = acc


def augment_into(out, x, params):
    """out (N, H, W, C) = each image of x moved by its map in params (N, 6) (see augment_params)."""
    _augment(out, x, params)


def augment(x, params):
    """The augmented copy of x (N, H, W, C) float32, one map per image from params (N, 6)."""
    x = checks.array("x", x, 4, np.float32)
    params = checks.array("params", params, 2, np.float64)
    checks.same_shape("params", params, (x.shape[0], 6), "one map of 6 numbers per image (augment_params)")
    out = np.empty_like(x)
    augment_into(out, x, params)
    return out
