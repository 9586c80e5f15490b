"""fastcnn: a small, fast, honest CNN engine for the CPU.

Numba kernels (``fastcnn.kernels``) checked against a plain NumPy reference
(``fastcnn.kernels.reference``), thin layers over them, a ``Sequential`` model and SGD.
"""

from .checkpoint import load, load_checkpoint, save
from .errors import DataError, FastCNNError, ImageError, ModelFileError, ShapeError
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .loss import SoftmaxCrossEntropy, softmax
from .model import Sequential
from .optim import SGD

__version__ = "0.1.0"

__all__ = [
    "Conv2D", "MaxPool2D", "ReLU", "Flatten", "Dense", "SoftmaxCrossEntropy", "Sequential", "SGD",
    "softmax", "save", "load", "load_checkpoint", "FastCNNError", "ShapeError", "DataError", "ModelFileError", "ImageError",
]
