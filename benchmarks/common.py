"""What the benchmark modules share: the two implementations, and random inputs."""

import numpy as np

from fastcnn import kernels
from fastcnn.kernels import reference

IMPLS = {"numba": kernels, "numpy": reference}


def rand(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)
