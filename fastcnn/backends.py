"""The two backends a model can run on: the compiled kernels, or their NumPy reference twins."""

from .errors import ConfigError, UsageError
from .kernels import compiled, jit, reference

BACKENDS = {"numba": compiled, "numpy": reference}


def get(name):
    if name not in BACKENDS:
        raise ConfigError(f"backend: expected one of {sorted(BACKENDS)}, got {name!r}")
    return BACKENDS[name]


def check_runs_here(kernels):
    """UsageError, saying what to do, where ``kernels`` are the compiled ones and this process can't
    run them: a fork of one whose kernel threads had started (``jit.runs_here``), where Numba would
    end it without a word to the caller (a pool's task then waits forever)."""
    if kernels is compiled and not jit.runs_here():
        raise UsageError("fastcnn's compiled kernels can't run in this process: it is a copy (fork) of one that had "
                         "run them, and their threads (GNU OpenMP) don't survive a fork. Start the worker processes "
                         "with multiprocessing.get_context('spawn') or 'forkserver', or before the first kernel runs; "
                         "or, here, run the model on the NumPy reference (model.backend = 'numpy'), much slower")
