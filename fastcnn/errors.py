"""The errors fastcnn raises on bad input.

Every check in the library raises one of these, so a caller can catch ``FastCNNError`` and know the
message says what was wrong and what was expected. Each also subclasses the built-in error a
Python programmer would reach for (``ValueError``, ``FileNotFoundError``), so ordinary ``except``
clauses keep working. Training adds two that are not about input, in ``fastcnn.training``:
``TrainingDiverged`` (a FastCNNError) and ``TrainingInterrupted`` (a KeyboardInterrupt).
``FastCNNError``, ``ShapeError`` and ``ConfigError`` are the kernels' (``kernels/errors.py``), so
that the kernels need nothing from the package above them.
"""

from .kernels.errors import ConfigError, FastCNNError, ShapeError  # noqa: F401 - the root, and the kernels' own


class DataError(FastCNNError, ValueError):
    """A data file (IDX, CIFAR-10 archive or batch) is missing, truncated, corrupt or not what it claims to be."""


class DataMissingError(DataError, FileNotFoundError):
    """A data set is not on disk and could not be downloaded."""


class ModelFileError(FastCNNError, ValueError):
    """A model or checkpoint file is missing, truncated, corrupt or foreign."""


class ImageError(FastCNNError, ValueError):
    """An image file cannot be read (or written: a preprocessed picture, a plot), or is too large
    to be a sane input."""


class UsageError(FastCNNError, RuntimeError):
    """A method called when it cannot be: ``backward`` with no ``forward`` in training mode before it."""


class ExportError(FastCNNError, ValueError):
    """A model cannot be exported as asked (a layer the exporter does not know, an output file
    that exists or cannot be written)."""
