"""The oracle proven: its forward passes against the textbook definitions (SciPy's correlate,
windows maxed one by one), and every backward of the NumPy reference against central finite differences,
in float64. Each check contracts the output with a fixed random tensor r, so the scalar
L = sum(f(...) * r) has dL/d(output) = r, and compares the analytic gradient of every input
entry with (L(x + h) - L(x - h)) / 2h. Tolerance: 1e-6 relative to the largest gradient.
"""

import numpy as np
import pytest
from scipy.signal import correlate2d

from fastcnn.kernels import reference as R

H = 1e-6
TOL = 1e-6


@pytest.mark.parametrize("stride,pad", [(1, 0), (1, 1), (2, 2)])
def test_conv2d_forward_is_cross_correlation(stride, pad):
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((2, 7, 6, 3)), rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    y = R.conv2d_forward(x, w, b, stride, pad)
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for n in range(2):
        for k in range(4):
            want = sum(correlate2d(xp[n, :, :, c], w[:, :, c, k], mode="valid") for c in range(3))
            np.testing.assert_allclose(y[n, :, :, k], want[::stride, ::stride] + b[k], rtol=1e-12, atol=1e-12)


def test_maxpool_forward_is_the_window_maximum():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 7, 8, 3))
    y, argmax = R.maxpool_forward(x, 3, 2)
    for n, i, j, c in np.ndindex(y.shape):
        window = x[n, 2 * i:2 * i + 3, 2 * j:2 * j + 3, c]
        assert y[n, i, j, c] == window.max()
        assert x[n, argmax[n, i, j, c] // 8, argmax[n, i, j, c] % 8, c] == window.max()


def numerical_grad(f, a):
    """d f() / d a, entry by entry, by central differences (``a`` is changed in place and restored)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + H
        up = f()
        a[i] = old - H
        down = f()
        a[i] = old
        g[i] = (up - down) / (2 * H)
    return g


def assert_grad(analytic, f, a):
    numeric = numerical_grad(f, a)
    scale = max(1.0, np.abs(numeric).max())
    assert np.abs(analytic - numeric).max() <= TOL * scale, np.abs(analytic - numeric).max()


def assert_grads(f, *pairs):
    """assert_grad for each (analytic gradient, the array it is the gradient for) pair."""
    for analytic, a in pairs:
        assert_grad(analytic, f, a)


@pytest.mark.parametrize("shape", [(2, 5, 4, 2, 3, 3, 1, 1), (1, 6, 7, 3, 2, 3, 2, 0), (2, 5, 6, 1, 2, 2, 2, 2)],
                         ids=str)
def test_conv2d_backward(shape):
    n, h, w, c, k, ks, stride, pad = shape
    rng = np.random.default_rng(0)
    x, wt, b = rng.standard_normal((n, h, w, c)), rng.standard_normal((ks, ks, c, k)), rng.standard_normal(k)
    r = rng.standard_normal(R.conv2d_forward(x, wt, b, stride, pad).shape)
    loss = lambda: (R.conv2d_forward(x, wt, b, stride, pad) * r).sum()  # noqa: E731
    dx, dw, db = R.conv2d_backward(r, x, wt, stride, pad)
    assert_grads(loss, (dx, x), (dw, wt), (db, b))


@pytest.mark.parametrize("size,stride", [(2, 2), (3, 2), (2, 1)])
def test_maxpool_backward(size, stride):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 6, 3))  # distinct values: no ties for h to flip
    y, argmax = R.maxpool_forward(x, size, stride)
    r = rng.standard_normal(y.shape)
    loss = lambda: (R.maxpool_forward(x, size, stride)[0] * r).sum()  # noqa: E731
    assert_grad(R.maxpool_backward(r, argmax, x.shape), loss, x)


@pytest.mark.parametrize("relu", [False, True])
def test_dense_backward(relu):
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((4, 6)), rng.standard_normal((6, 5)), rng.standard_normal(5)
    fwd = R.dense_relu_forward if relu else R.dense_forward
    y = fwd(x, w, b)
    r = rng.standard_normal(y.shape)
    loss = lambda: (fwd(x, w, b) * r).sum()  # noqa: E731
    dx, dw, db = R.dense_relu_backward(r, x, w, y) if relu else R.dense_backward(r, x, w)
    if relu:
        assert (y == 0).any() and (y > 0).any()  # the ReLU really gates something
    assert_grads(loss, (dx, x), (dw, w), (db, b))


def test_relu_backward():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5))
    r = rng.standard_normal(x.shape)
    loss = lambda: (R.relu_forward(x) * r).sum()  # noqa: E731
    assert_grad(R.relu_backward(r, R.relu_forward(x)), loss, x)


def test_softmax_cross_entropy_backward():
    rng = np.random.default_rng(4)
    logits, labels = rng.standard_normal((5, 7)) * 3, rng.integers(0, 7, 5)
    _, d = R.softmax_cross_entropy(logits, labels)
    assert_grad(d, lambda: R.softmax_cross_entropy(logits, labels)[0], logits)
    # and the loss itself is the textbook one
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert R.softmax_cross_entropy(logits, labels)[0] == pytest.approx(-np.log(p[np.arange(5), labels]).mean())


@pytest.mark.parametrize("shape", [(2, 6, 5, 2, 3, 3, 1, 1, 2, 2), (1, 7, 8, 3, 2, 3, 1, 0, 3, 2),
                                   (2, 6, 6, 1, 2, 2, 1, 1, 2, 1)], ids=str)
def test_conv_relu_pool_backward(shape):
    """The fused block's reference, as one function: the gradient of relu(max-pool(conv))."""
    n, h, w, c, k, ks, stride, pad, size, pool_stride = shape
    rng = np.random.default_rng(7)
    # The bias is shifted down so that some pooled maxima are negative and the ReLU cuts them.
    x, wt, b = rng.standard_normal((n, h, w, c)), rng.standard_normal((ks, ks, c, k)), rng.standard_normal(k) - 3
    args = (stride, pad, size, pool_stride)
    y, argmax = R.conv_relu_pool_forward(x, wt, b, *args)
    assert (y == 0).any() and (y > 0).any()  # the ReLU really gates something
    r = rng.standard_normal(y.shape)
    loss = lambda: (R.conv_relu_pool_forward(x, wt, b, *args)[0] * r).sum()  # noqa: E731
    dx, dw, db = R.conv_relu_pool_backward(r, x, wt, y, argmax, *args)
    assert_grads(loss, (dx, x), (dw, wt), (db, b))
