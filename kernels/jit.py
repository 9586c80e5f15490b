"""All of fastcnn's Numba policy in one place; the kernels just use these decorators.

- ``cache=True``: a kernel compiles once per machine, later processes load it from Numba's cache.
- ``fastmath`` without ``nnan``/``ninf``: LLVM may reassociate sums (vectorised reductions) but
  NaN and Inf keep their meaning, so a diverging run is still seen as one.
- One thread pool: Numba's. The matrix products run inside Numba's threads, each on its own
  block, with BLAS held to one thread (``blas.hold_to_one_thread``, done here, at import).
- ``nogil=True``: several Python threads may call the kernels at once (e.g. ``predict``).
"""

import numba

from . import blas

FASTMATH = {"nsz", "arcp", "contract", "reassoc"}

blas.hold_to_one_thread()


def parallel_kernel(fn):
    """A kernel whose outer ``prange`` loop is spread over Numba's threads."""
    return numba.njit(parallel=True, cache=True, fastmath=FASTMATH, nogil=True)(fn)


def serial_kernel(fn):
    """A kernel that runs on the calling thread."""
    return numba.njit(parallel=False, cache=True, fastmath=FASTMATH, nogil=True)(fn)
