"""The two backends a model can run on: the compiled kernels, or their NumPy reference twins."""

from .errors import ConfigError
from .kernels import compiled, reference

BACKENDS = {"numba": compiled, "numpy": reference}


def get(name):
    if name not in BACKENDS:
        raise ConfigError(f"backend: expected one of {sorted(BACKENDS)}, got {name!r}")
    return BACKENDS[name]
