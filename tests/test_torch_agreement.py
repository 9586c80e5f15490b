"""The NumPy reference of the general layers and optimizers against PyTorch, both in float64:
batch norm (training forward and gradients, the running statistics, evaluation), average
pooling, global average pooling, tanh, sigmoid, Adam and SGD with momentum and weight decay.
Skipped where PyTorch is not installed. Ours is NHWC, PyTorch's NCHW: images are transposed on
the way in and out. Tolerance: 1e-10 relative to max(1, max|torch|) (float64 all through).
"""

import numpy as np
import pytest

from fastcnn.kernels import reference as R

torch = pytest.importorskip("torch")

TOL = 1e-10


def close(ours, theirs):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape
    scale = max(1.0, float(np.abs(theirs).max(initial=0.0)))
    assert np.abs(ours - theirs).max(initial=0.0) <= TOL * scale, np.abs(ours - theirs).max()


def nchw(x):
    """A torch tensor in NCHW (or (N, F)) from our NHWC (or (N, F)) array, tracking its gradient."""
    t = torch.tensor(x)
    return (t.permute(0, 3, 1, 2) if x.ndim == 4 else t).contiguous().requires_grad_(True)


def nhwc(t):
    t = t.detach()
    return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).numpy()


def running_update(running_mean, running_var, mean, var, rows, momentum):
    """What the caller does with the batch statistics after each training forward (PyTorch's
    rule): an exponential average, the variance made unbiased first (var * R / (R - 1))."""
    running_mean[...] = (1 - momentum) * running_mean + momentum * mean
    running_var[...] = (1 - momentum) * running_var + momentum * var * rows / (rows - 1)


@pytest.mark.parametrize("shape", [(4, 5, 3, 3), (1, 6, 7, 2), (6, 5), (2, 16)], ids=str)
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_batchnorm(shape, relu):
    rng = np.random.default_rng(len(shape) + relu)
    c, eps, momentum = shape[-1], 1e-5, 0.1
    layer = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(c, eps, momentum, dtype=torch.float64)
    weight, bias = rng.standard_normal(c), rng.standard_normal(c)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    running_mean, running_var = np.zeros(c), np.ones(c)
    rows = int(np.prod(shape[:-1]))
    for _ in range(3):  # three training steps: the running statistics accumulate
        x = rng.standard_normal(shape) * 2 + 1
        dy = rng.standard_normal(shape)
        xt = nchw(x)
        yt = layer(xt)
        yt = torch.relu(yt) if relu else yt
        layer.zero_grad()
        yt.backward(nchw(dy).detach())
        y, mean, var = R.batchnorm_forward(x, weight, bias, eps, relu)
        close(y, nhwc(yt))
        dx, dweight, dbias = R.batchnorm_backward(dy, x, weight, bias, mean, var, eps, relu)
        close(dx, nhwc(xt.grad))
        close(dweight, layer.weight.grad)
        close(dbias, layer.bias.grad)
        running_update(running_mean, running_var, mean, var, rows, momentum)
        close(running_mean, layer.running_mean)
        close(running_var, layer.running_var)
    layer.eval()
    x = rng.standard_normal(shape)
    yt = layer(nchw(x))
    close(R.batchnorm_eval_forward(x, weight, bias, running_mean, running_var, eps, relu),
          nhwc(torch.relu(yt) if relu else yt))


@pytest.mark.parametrize("size,stride", [(2, 2), (3, 2), (2, 1), (2, 3)])
def test_avgpool(size, stride):
    rng = np.random.default_rng(size * 10 + stride)
    x = rng.standard_normal((2, 9, 7, 3))
    xt = nchw(x)
    yt = torch.nn.AvgPool2d(size, stride)(xt)
    y = R.avgpool_forward(x, size, stride)
    close(y, nhwc(yt))
    dy = rng.standard_normal(y.shape)
    yt.backward(nchw(dy).detach())
    close(R.avgpool_backward(dy, x.shape, size, stride), nhwc(xt.grad))


def test_global_avgpool():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 4, 6))
    xt = nchw(x)
    yt = torch.nn.AdaptiveAvgPool2d(1)(xt)[:, :, 0, 0]
    close(R.global_avgpool_forward(x), yt)
    dy = rng.standard_normal((3, 6))
    yt.backward(torch.tensor(dy))
    close(R.global_avgpool_backward(dy, x.shape), nhwc(xt.grad))


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_activation(act):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 5, 2)) * 5
    xt = torch.tensor(x, requires_grad=True)
    yt = (torch.nn.Tanh() if act == "tanh" else torch.nn.Sigmoid())(xt)
    y = getattr(R, f"{act}_forward")(x)
    close(y, yt)
    dy = rng.standard_normal(x.shape)
    yt.backward(torch.tensor(dy))
    close(getattr(R, f"{act}_backward")(dy, y), xt.grad)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam(weight_decay):
    rng = np.random.default_rng(3)
    p = rng.standard_normal(50)
    m, v = np.zeros(50), np.zeros(50)
    pt = torch.tensor(p.copy(), requires_grad=True)
    opt = torch.optim.Adam([pt], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    for step in range(1, 8):
        g = rng.standard_normal(50)
        pt.grad = torch.tensor(g.copy())
        opt.step()
        R.adam(p, m, v, g, 1e-2, 0.9, 0.99, 1e-8, weight_decay, step)
        close(p, pt)
        close(m, opt.state[pt]["exp_avg"])
        close(v, opt.state[pt]["exp_avg_sq"])


@pytest.mark.parametrize("weight_decay", [0.0, 5e-4, 0.1])
def test_sgd_momentum(weight_decay):
    """Ours is the Keras form (v = m v - lr g; p += v), PyTorch's b = m b + g; p -= lr b: at a
    constant lr, v = -lr b, and the parameters agree step by step."""
    rng = np.random.default_rng(4)
    p, v = rng.standard_normal(40), np.zeros(40)
    pt = torch.tensor(p.copy(), requires_grad=True)
    opt = torch.optim.SGD([pt], lr=0.05, momentum=0.9, weight_decay=weight_decay)
    for _ in range(6):
        g = rng.standard_normal(40)
        pt.grad = torch.tensor(g.copy())
        opt.step()
        R.sgd_momentum(p, v, g, 0.05, 0.9, weight_decay)
        close(p, pt)
        close(v, -0.05 * opt.state[pt]["momentum_buffer"])
