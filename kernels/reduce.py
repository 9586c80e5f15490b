"""Deterministic parallel reductions used by several backward passes."""

import numpy as np
from numba import prange

from .jit import parallel_kernel

_BLOCK = 16  # columns per task: one 64-byte cache line of float32


@parallel_kernel
def _column_sums(out, a):
    # Each task owns a block of columns and sums its rows in order: no races, and the result
    # does not depend on the number of threads.
    M, K = a.shape
    for block in prange((K + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        hi = min(lo + _BLOCK, K)
        acc = np.zeros(hi - lo, np.float64)  # float64: tens of thousands of rows lose no bits
        for m in range(M):
            for k in range(lo, hi):
                acc[k - lo] += a[m, k]
        out[lo:hi] = acc


def column_sums(a):
    """Sum of a float32 (M, K) array over its rows, as float32 (K,)."""
    out = np.empty(a.shape[1], np.float32)
    _column_sums(out, np.ascontiguousarray(a))
    return out
