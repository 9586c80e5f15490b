"""The two backends a model can run on: the compiled kernels, or their NumPy reference twins."""

from . import kernels
from .errors import ConfigError
from .kernels import reference

BACKENDS = {"numba": kernels, "numpy": reference}


def get(name):
    if name not in BACKENDS:
        raise ConfigError(f"backend: expected one of {sorted(BACKENDS)}, got {name!r}")
    return BACKENDS[name]
