"""fastcnn: a small, fast, honest CNN engine for the CPU.

Numba kernels (``fastcnn.kernels``) checked against a plain NumPy reference
(``fastcnn.kernels.reference``), layers over them, ``Sequential`` and graph (``Model``) models with
their execution plan, SGD and Adam, ``fit``
and its callbacks; ``fastcnn.data`` loads MNIST, Fashion-MNIST, CIFAR-10 and folders of one's own pictures.
"""

import gc

from .version import __version__  # noqa: F401 - fastcnn.__version__

from .callbacks import Callback, EarlyStopping, KeepBest, ReduceLROnPlateau
from .checkpoint import save
from .loading import load, load_checkpoint
from .errors import (ConfigError, DataError, ExportError, FastCNNError, ImageError, ModelFileError, ShapeError,
                     UsageError)
from . import layers
from .layers import *  # noqa: F403 - every layer, by the list layers.py keeps
from .loss import SoftmaxCrossEntropy, softmax
from .augmentation import Augment
from .graph import Input
from .model import Model, Sequential
from .optim import SGD, Adam
from .schedules import Constant, Cosine, InverseTime
from .training import fit
from .export import export_onnx

# Everything imported so far (74,000 objects, Numba's above all) lives as long as the process, so
# the cyclic garbage collector is told to leave it be: its collections while kernels load, and
# tearing those objects down when the process ends, took 0.3-0.4 s of a warm start of 1.2-1.4 s
# (measured 2026-12-06; docs/compiling.md). ``gc.unfreeze()`` undoes it.
gc.freeze()


__all__ = [
    *layers.__all__, "SoftmaxCrossEntropy", "Sequential", "Model", "Input", "Augment",
    "SGD", "Adam", "Constant", "InverseTime", "Cosine", "fit", "softmax", "save", "load", "load_checkpoint",
    "FastCNNError", "ShapeError", "DataError", "ModelFileError", "ImageError", "export_onnx", "ExportError",
    "Callback", "EarlyStopping", "KeepBest", "ReduceLROnPlateau",
    "UsageError", "ConfigError",
]
