"""What the benchmark modules share: the two implementations, random inputs, and how a script ends
on an error of fastcnn's."""

import os
import sys

import numpy as np

from fastcnn import kernels
from fastcnn.errors import FastCNNError
from fastcnn.kernels import reference

IMPLS = {"numba": kernels, "numpy": reference}


def rand(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


def script(main):
    """``main()`` of a benchmark script, its status; an error of fastcnn's (a missing model file or
    data set) said in one line, as the command line says it, not as a traceback."""
    try:
        return main()
    except FastCNNError as e:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {e}")
