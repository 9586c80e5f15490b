"""The oracle of the general layers proven: the NumPy reference's forward passes against their
textbook definitions, and every backward against central finite differences in float64, as in
test_reference.py (L = sum(f(...) * r), tolerance 1e-6 relative to the largest gradient)."""

import numpy as np
import pytest

from fastcnn.kernels import reference as R
from test_reference import assert_grad, assert_grads


@pytest.mark.parametrize("shape", [(2, 3, 4, 3), (5, 4), (1, 3, 2, 2)], ids=str)
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_batchnorm_backward(shape, relu):
    rng = np.random.default_rng(len(shape) + relu)
    c = shape[-1]
    x, weight, bias = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(c), rng.standard_normal(c)
    y, mean, var = R.batchnorm_forward(x, weight, bias, 1e-3, relu)
    r = rng.standard_normal(shape)
    loss = lambda: (R.batchnorm_forward(x, weight, bias, 1e-3, relu)[0] * r).sum()  # noqa: E731
    dx, dweight, dbias = R.batchnorm_backward(r, x, weight, bias, mean, var, 1e-3, relu)
    if relu:
        assert (y == 0).any() and (y > 0).any()  # the ReLU really gates something
    assert_grads(loss, (dx, x), (dweight, weight), (dbias, bias))


def test_batchnorm_forward_is_the_textbook_one():
    rng = np.random.default_rng(1)
    x, weight, bias = rng.standard_normal((4, 3, 5, 2)), rng.standard_normal(2), rng.standard_normal(2)
    y, mean, var = R.batchnorm_forward(x, weight, bias, 1e-5)
    for c in range(2):
        xc = x[..., c]
        np.testing.assert_allclose(mean[c], xc.mean(), rtol=1e-12)
        np.testing.assert_allclose(var[c], ((xc - xc.mean()) ** 2).mean(), rtol=1e-12)
        np.testing.assert_allclose(y[..., c], (xc - xc.mean()) / np.sqrt(xc.var() + 1e-5) * weight[c] + bias[c],
                                   rtol=1e-12, atol=1e-12)
    # Eval mode with the batch's own statistics is the training forward.
    np.testing.assert_allclose(R.batchnorm_eval_forward(x, weight, bias, mean, var, 1e-5), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size,stride", [(2, 2), (3, 2), (2, 1), (2, 3)])
def test_avgpool_backward(size, stride):
    rng = np.random.default_rng(size * 10 + stride)
    x = rng.standard_normal((2, 7, 6, 3))
    y = R.avgpool_forward(x, size, stride)
    for n, i, j, c in np.ndindex(y.shape):
        window = x[n, stride * i:stride * i + size, stride * j:stride * j + size, c]
        assert y[n, i, j, c] == pytest.approx(window.mean(), rel=1e-12)
    r = rng.standard_normal(y.shape)
    loss = lambda: (R.avgpool_forward(x, size, stride) * r).sum()  # noqa: E731
    assert_grad(R.avgpool_backward(r, x.shape, size, stride), loss, x)


def test_global_avgpool_backward():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 4))
    np.testing.assert_allclose(R.global_avgpool_forward(x)[1, 2], x[1, :, :, 2].mean(), rtol=1e-12)
    r = rng.standard_normal((2, 4))
    loss = lambda: (R.global_avgpool_forward(x) * r).sum()  # noqa: E731
    assert_grad(R.global_avgpool_backward(r, x.shape), loss, x)


def test_add_and_concat_backward():
    rng = np.random.default_rng(5)
    a, b, c = rng.standard_normal((2, 3, 4, 2)), rng.standard_normal((2, 3, 4, 2)), rng.standard_normal((2, 3, 4, 3))
    r = rng.standard_normal(a.shape)
    for x in (a, b):  # the gradient of either input of relu(a + b) is relu_backward(r, y)
        assert_grad(R.relu_backward(r, R.add_forward(a, b, relu=True)),
                    lambda: (R.add_forward(a, b, relu=True) * r).sum(), x)
    r = rng.standard_normal((2, 3, 4, 7))
    loss = lambda: (R.concat_forward([a, b, c]) * r).sum()  # noqa: E731
    for x, offset in ((a, 0), (b, 2), (c, 4)):
        assert_grad(R.concat_backward(r, offset, x.shape[-1]), loss, x)


TEXTBOOK = {"tanh": np.tanh, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
            "leaky_relu": lambda x: np.maximum(x, 0) + 0.1 * np.minimum(x, 0)}


@pytest.mark.parametrize("act", TEXTBOOK)
def test_activation_backward(act):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5)) * 3
    scalars = (0.1,) if act == "leaky_relu" else ()
    fwd = lambda x: getattr(R, f"{act}_forward")(x, *scalars)  # noqa: E731
    np.testing.assert_allclose(fwd(x), TEXTBOOK[act](x), rtol=1e-14)
    r = rng.standard_normal(x.shape)
    loss = lambda: (fwd(x) * r).sum()  # noqa: E731
    assert_grad(getattr(R, f"{act}_backward")(r, fwd(x), *scalars), loss, x)


def test_dropout_backward():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5))
    key = R.dropout_key(0, 3, 1)
    y = R.dropout_forward(x, 0.4, key)
    assert (y == 0).any() and (y != 0).any()
    np.testing.assert_allclose(y[y != 0], x[y != 0] / 0.6, rtol=1e-15)
    r = rng.standard_normal(x.shape)
    loss = lambda: (R.dropout_forward(x, 0.4, key) * r).sum()  # noqa: E731
    assert_grad(R.dropout_backward(r, 0.4, key), loss, x)


@pytest.mark.parametrize("size,stride", [(2, 2), (3, 2), (2, 1)])
def test_batchnorm_relu_pool_backward(size, stride):
    """The fused block's reference, with the batch statistics as functions of x (as in training)."""
    rng = np.random.default_rng(size * 7 + stride)
    x = rng.standard_normal((2, 6, 5, 3)) * 2 + 1
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)

    def forward():
        mean, var = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).var(0)
        return R.batchnorm_relu_pool_forward(x, mean, var, weight, bias, 1e-3, size, stride)

    y, argmax = forward()
    assert (y == 0).any() and (y > 0).any()
    r = rng.standard_normal(y.shape)
    loss = lambda: (forward()[0] * r).sum()  # noqa: E731
    mean, var = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).var(0)
    dx, dweight, dbias = R.batchnorm_relu_pool_backward(r, x, y, argmax, weight, mean, var, 1e-3, size, stride)
    assert_grads(loss, (dx, x), (dweight, weight), (dbias, bias))


def test_batchnorm_relu_avgpool_backward():
    """The fused network end's reference (BatchNorm -> ReLU -> global average pool), with the batch
    statistics as functions of x (as in training)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 4, 5, 3)) * 2 + 1
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)

    def forward():
        mean, var = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).var(0)
        return R.batchnorm_relu_avgpool_forward(x, mean, var, weight, bias, 1e-3)

    mean, var = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).var(0)
    z = R.batchnorm_eval_forward(x, weight, bias, mean, var, 1e-3)
    assert (z < 0).any() and (z > 0).any()
    r = rng.standard_normal((3, 3))
    loss = lambda: (forward() * r).sum()  # noqa: E731
    dx, dweight, dbias = R.batchnorm_relu_avgpool_backward(r, x, weight, bias, mean, var, 1e-3)
    assert_grads(loss, (dx, x), (dweight, weight), (dbias, bias))

