"""fastcnn's compute kernels: Numba-compiled, float32, NHWC; ``reference`` holds their NumPy twins.

Every kernel here has a twin of the same name and signature in ``kernels.reference``: the
checked ones (``conv2d_forward``, ...), which validate their arguments and allocate their results,
and the unchecked cores the execution plan calls (``conv2d_forward_into``, ...), which write into
the caller's buffers, outputs first. The lists are made from the modules: a public function of a
kernel module with a twin in ``reference`` is a kernel (a new one needs no line here).
"""

import importlib
import pkgutil
import sys

from . import reference
from .algorithms import paths  # which algorithm ran each convolution (not a kernel: no twin)
from .dropout import dropout_key  # how a run makes the key of one dropout mask (the same in reference)

_NOT_KERNELS = {"algorithms", "blas", "checks", "errors", "jit", "reference", "simd"}  # what the kernel modules use
_MODULES = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)
            if m.name not in _NOT_KERNELS]
_TWINS = sorted(name for name, f in vars(reference).items()
                if not name.startswith("_") and callable(f) and getattr(f, "__module__", None) == reference.__name__)


def _kernels():
    found = {}
    for module in _MODULES:
        for name in _TWINS:
            f = getattr(module, name, None)
            if f is not None and getattr(f, "__module__", None) == module.__name__:
                assert name not in found, f"{name} is defined in two kernel modules"
                found[name] = f
    return found


_found = _kernels()
globals().update(_found)
CORES = [name for name in _found if name.endswith("_into")]
CHECKED = [name for name in _found if not name.endswith("_into")]
HELPERS = ["dropout_key"]
compiled = sys.modules[__name__]  # this module, as a backend names it: the compiled kernels
__all__ = CHECKED + CORES + HELPERS
