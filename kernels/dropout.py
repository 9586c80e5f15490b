"""Inverted dropout whose mask is a pure function of a 64-bit key and the element's flat index.

Element i is kept iff u_i >= p, where u_i = (h_i >> 11) / 2**53 is the top 53 bits of
h_i = splitmix64(key + (i + 1) * 0x9E3779B97F4A7C15), the i-th number of Vigna's splitmix64
sequence started from ``key``; kept values are scaled by 1 / (1 - p), so the expected output is
the input. The comparison is done on integers (h_i >> 11 >= ceil(p * 2**53), the same test
exactly), so the kernel and the NumPy reference draw identical masks.

No mask is stored: backward redraws it from the same key (it is the same diagonal map as the
forward, applied to dy), and a resumed run, given the same keys, drops exactly the same elements.
``dropout_key(seed, step, salt)`` makes a step's and a layer's key from the run's seed.
The sequences of keys k1 and k2 share elements within the first n only if k2 - k1 = j * GOLDEN
(mod 2**64) for some |j| < n: for keys from SeedSequence, a chance of about 2n / 2**64.
"""

import math

import numpy as np
from numba import prange

from .errors import ShapeError

from . import checks
from .jit import parallel_kernel

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)


@parallel_kernel
def _dropout(out, inp, key, threshold, scale):
    # out = inp * scale where kept, else 0: forward on x, and backward on dy (the same map).
    for i in prange(inp.size):
        z = key + (np.uint64(i) + np.uint64(1)) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * MIX1
        z = (z ^ (z >> np.uint64(27))) * MIX2
        z = z ^ (z >> np.uint64(31))
        out[i] = inp[i] * scale if (z >> np.uint64(11)) >= threshold else np.float32(0.0)


def dropout_key(seed, step, salt, offset=0):
    """The uint64 key of one dropout mask: ``np.random.SeedSequence([seed, step, salt])``'s first
    64-bit word, so every (run seed, optimizer step, layer index) gets an unrelated key, and the
    same three numbers always the same key. All are non-negative integers.

    ``offset``: the mask of elements ``offset``, ``offset + 1``, ... of that key's mask (element i
    hashes key + (i + 1) * GOLDEN, so this is the key moved by offset * GOLDEN): a process
    holding rows 32..63 of a batch draws exactly those rows' part of the whole batch's mask."""
    entropy = [checks.non_negative_int(name, v) for name, v in (("seed", seed), ("step", step), ("salt", salt))]
    key = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
    return np.uint64((key + checks.non_negative_int("offset", offset) * int(GOLDEN)) % 2**64)


def _keep_threshold(p):
    """The integer that the top 53 bits of an element's hash must reach for it to be kept."""
    return np.uint64(math.ceil(p * 2.0**53))


def dropout_forward_into(y, x, p, key):
    """y = x / (1 - p) where the mask of ``key`` keeps, else 0; y, x contiguous, any shape."""
    _dropout(y.reshape(-1), x.reshape(-1), np.uint64(key), _keep_threshold(p), np.float32(1.0 / (1.0 - p)))


def dropout_backward_into(dx, dy, p, key):
    """dx = dy / (1 - p) where the forward with the same ``key`` kept, else 0."""
    _dropout(dx.reshape(-1), dy.reshape(-1), np.uint64(key), _keep_threshold(p), np.float32(1.0 / (1.0 - p)))


def check_dropout(p, key):
    """p in [0, 1) and key an integer in 0..2**64 - 1: returned as (float, np.uint64)."""
    p = checks.fraction("p", p)
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= int(key) < 2**64:
        raise ShapeError(f"key: expected an integer in 0..2**64-1 (from dropout_key), got {key!r}")
    return p, np.uint64(key)


def dropout_forward(x, p, key):
    """Inverted dropout of x (any shape): the elements the mask of ``key`` drops are 0, the
    others x / (1 - p)."""
    p, key = check_dropout(p, key)
    x = checks.array("x", x, np.ndim(x), np.float32)
    y = np.empty_like(x)
    dropout_forward_into(y, x, p, key)
    return y


def dropout_backward(dy, p, key):
    """The gradient of dropout_forward with the same ``p`` and ``key``: dy through the same mask."""
    p, key = check_dropout(p, key)
    dy = checks.array("dy", dy, np.ndim(dy), np.float32)
    dx = np.empty_like(dy)
    dropout_backward_into(dx, dy, p, key)
    return dx
