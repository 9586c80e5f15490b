"""All of fastcnn's Numba policy in one place; the kernels just use these decorators.

- ``cache=True``: a kernel compiles once per machine, later processes load it from Numba's cache.
- ``fastmath`` without ``nnan``/``ninf``: LLVM may reassociate sums (vectorised reductions) but
  NaN and Inf keep their meaning, so a diverging run is still seen as one.
- ``error_model="numpy"``: no zero-division checks on the index arithmetic (the sizes are
  checked where data enters; a float division by zero gives Inf, as in NumPy). Less code:
  the first training step compiles in 9.7 s instead of 10.1, and runs a little faster.
- One thread pool: Numba's. The matrix products run inside Numba's threads, each on its own
  block, with BLAS held to one thread (``blas.hold_to_one_thread``, done here, at import).
  With no second pool to steal the cores from, Numba's OpenMP threads keep libgomp's default
  wait (spin a little after a kernel, then sleep): against OMP_WAIT_POLICY=PASSIVE, measured
  3.65 against 4.1 ms per training step and 111 against 370 us for one image.
- ``nogil=True``: several Python threads may call the kernels at once (e.g. ``predict``).
"""

import contextlib

import numba
from numba.core import event

from . import blas

# What compiling a network's kernels takes on a 2-core machine with an empty cache, said before it
# starts (import, first training step and predict, measured 2026-12-02 on an AMD EPYC: the
# original network 11.9-13.4 s; with the weight gradient's GEMM kernel (3.3 s of it), the deep
# network 27.2-32.5 s, the cifar one 31.7 s).
COMPILE_SECONDS = {"original": 13, "deeper": 32}

FASTMATH = {"nsz", "arcp", "contract", "reassoc"}

blas.hold_to_one_thread()


def parallel_kernel(fn):
    """A kernel whose outer ``prange`` loop is spread over Numba's threads."""
    return numba.njit(parallel=True, cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy")(fn)


def serial_kernel(fn):
    """A kernel that runs on the calling thread."""
    return numba.njit(parallel=False, cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy")(fn)


class _FirstCompile(event.Listener):
    def __init__(self, say):
        self.say = say

    def on_start(self, ev):
        if self.say is not None:
            self.say()
            self.say = None

    def on_end(self, ev):
        pass


@contextlib.contextmanager
def when_compiling(say):
    """Inside, call ``say()`` once, just before Numba first compiles a kernel: that is, when its
    cache misses (a first run on this machine, or kernels changed since). Loading from the cache
    says nothing."""
    with event.install_listener("numba:compile", _FirstCompile(say)):
        yield
