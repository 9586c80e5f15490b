"""fastcnn: a small, fast, honest CNN engine for the CPU.

Numba kernels (``fastcnn.kernels``) checked against a plain NumPy reference
(``fastcnn.kernels.reference``), layers over them, ``Sequential`` and graph (``Model``) models with
their execution plan, SGD and Adam, ``fit``
and its callbacks; ``fastcnn.data`` loads MNIST, Fashion-MNIST, CIFAR-10 and folders of one's own pictures.
"""

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


__all__ = [
    *layers.__all__, "SoftmaxCrossEntropy", "Sequential", "Model", "Input", "Augment",
    "SGD", "Adam", "Constant", "InverseTime", "Cosine", "fit", "softmax", "save", "load", "load_checkpoint",
    "FastCNNError", "ShapeError", "DataError", "ModelFileError", "ImageError", "export_onnx", "ExportError",
    "Callback", "EarlyStopping", "KeepBest", "ReduceLROnPlateau",
    "UsageError", "ConfigError",
]
