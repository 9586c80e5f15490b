"""The errors the kernels raise; ``fastcnn.errors`` has the whole family.

They live here, at the bottom, so that the kernels need nothing from the package above them.
"""


class FastCNNError(Exception):
    """Base class of every error fastcnn raises on purpose."""


class ShapeError(FastCNNError, ValueError):
    """An array has the wrong rank, shape, dtype or values for where it was passed."""


class ConfigError(FastCNNError, ValueError):
    """A setting, an option or a name is not one fastcnn knows or accepts: a training setting, a
    network's or data set's name, a thread count, a layer class to register."""
