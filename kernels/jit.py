"""All of fastcnn's Numba policy in one place; the kernels just use these decorators.

- ``cache=True``: a kernel compiles once per machine, later processes load it from Numba's cache.
- ``fastmath`` without ``nnan``/``ninf``: LLVM may reassociate sums (vectorised reductions) but
  NaN and Inf keep their meaning, so a diverging run is still seen as one.
- OpenMP threads sleep when idle (below), so they share the cores with BLAS's threads.
- ``nogil=True``: several Python threads may call the kernels at once (e.g. ``predict``).
"""

import os

# Numba's OpenMP threads would otherwise spin after each kernel, stealing the cores that BLAS's
# own threads need for the next matrix product (measured: 2-3x slower training steps). Must be
# set before the OpenMP runtime loads, which happens at the first parallel kernel launch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402

FASTMATH = {"nsz", "arcp", "contract", "reassoc"}


def parallel_kernel(fn):
    """A kernel whose outer ``prange`` loop is spread over Numba's threads."""
    return numba.njit(parallel=True, cache=True, fastmath=FASTMATH, nogil=True)(fn)


def serial_kernel(fn):
    """A kernel that runs on the calling thread (BLAS calls bring their own threads)."""
    return numba.njit(parallel=False, cache=True, fastmath=FASTMATH, nogil=True)(fn)
