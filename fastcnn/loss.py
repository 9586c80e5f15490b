"""Softmax cross-entropy as a callable, and a plain softmax for predictions."""

from . import backends
from .kernels.reference import softmax  # noqa: F401 - fastcnn.softmax: row-wise, stable, keeps the dtype


class SoftmaxCrossEntropy:
    """``loss, dlogits = SoftmaxCrossEntropy()(logits, labels)``: mean loss and its gradient."""

    def __init__(self, backend="numba"):
        self.kernels = backends.get(backend)

    def __call__(self, logits, labels):
        return self.kernels.softmax_cross_entropy(logits, labels)


