"""Softmax and cross-entropy fused: the mean loss and its gradient w.r.t. the logits in one pass;
and softmax alone, for predictions.

Legend: N batch, K classes. logits (N, K) float32, labels (N,) int64.
loss = mean_n [logsumexp(z_n) - z_n[y_n]], computed with the row maximum subtracted first, so
logits of +-1e4 neither overflow nor lose the answer. dlogits = (softmax(z) - onehot(y)) / N.
"""

import numba
import numpy as np

from .errors import ShapeError

from . import checks
from .jit import serial_kernel


@numba.njit(inline="always")
def row_max(logits, n):
    """The largest of row n (a loop: NumPy's max() in Numba compiled two more functions, 0.4 s)."""
    m = logits[n, 0]
    for k in range(1, logits.shape[1]):
        m = max(m, logits[n, k])
    return m


@serial_kernel
def _softmax_cross_entropy(dlogits, row_loss, logits, labels):
    # Serial: a batch of logits is a few hundred floats, less work than waking a second thread.
    N, K = logits.shape
    for n in range(N):
        z = logits[n]
        m = row_max(logits, n)
        total = np.float32(0.0)
        for k in range(K):
            e = np.exp(z[k] - m)
            dlogits[n, k] = e
            total += e
        # In float64: with fastmath's reassociation, float32 (log + m) - z loses log(total) when m is 1e3
        row_loss[n] = np.log(np.float64(total)) + (np.float64(m) - np.float64(z[labels[n]]))
        scale = np.float32(1.0) / (total * N)
        for k in range(K):
            dlogits[n, k] *= scale
        dlogits[n, labels[n]] -= np.float32(1.0) / N


@serial_kernel
def _softmax(probs, logits):
    N, K = logits.shape
    for n in range(N):
        m = row_max(logits, n)
        total = np.float32(0.0)
        for k in range(K):
            e = np.exp(logits[n, k] - m)
            probs[n, k] = e
            total += e
        for k in range(K):
            probs[n, k] /= total


def softmax_cross_entropy_into(dlogits, row_loss, logits, labels):
    """dlogits (N, K) and each row's loss, row_loss (N,); the mean loss is row_loss.mean()."""
    _softmax_cross_entropy(dlogits, row_loss, logits, labels)


def softmax_into(probs, logits):
    """probs (N, K) = the row-wise softmax of logits."""
    _softmax(probs, logits)


def softmax(logits):
    """Row-wise softmax of logits (N, K), stable for large logits."""
    logits = checks.array("logits", logits, 2, np.float32)
    probs = np.empty_like(logits)
    _softmax(probs, logits)
    return probs


def softmax_cross_entropy(logits, labels):
    """(mean loss as a Python float, dlogits (N, K) float32) for integer labels in 0..K-1."""
    logits = checks.array("logits", logits, 2, np.float32)
    if logits.shape[0] < 1:
        raise ShapeError(f"logits: expected at least one row, got shape {logits.shape}")
    labels = checks.labels("labels", labels, logits.shape[0], logits.shape[1])
    dlogits = np.empty_like(logits)
    row_loss = np.empty(logits.shape[0], np.float32)
    softmax_cross_entropy_into(dlogits, row_loss, logits, labels)
    return float(row_loss.sum(dtype=np.float64) / logits.shape[0]), dlogits
