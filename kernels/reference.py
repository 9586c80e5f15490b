"""The pure-NumPy reference: every kernel again, written for clarity, not speed.

Same names, arguments and results as the compiled kernels, so tests and benchmarks can swap one
for the other. Unlike the kernels it keeps the input's dtype, so the tests can check its gradients
against finite differences in float64: this module is the oracle, and is itself proven. The fused
conv -> ReLU -> max-pool is the composition of the kernels it fuses.

The ``*_into`` forms at the end are the engine's calling convention (outputs first, written in
place), each the checked function with its results copied into the caller's buffers.
"""

import numpy as np

from .errors import ShapeError

from . import checks
from .avgpool import check_avgpool_backward
from .merge import check_concat
from .dropout import GOLDEN, MIX1, MIX2, check_dropout, dropout_key  # noqa: F401 - dropout_key: the same helper
from .optim import check_adam
from .pool import _check_argmax


def _windows(x, kh, kw, stride):
    """View of every (kh, kw) window of x (N, H, W, C): shape (N, OH, OW, kh, kw, C)."""
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # (N, H', W', C, kh, kw)
    return win[:, ::stride, ::stride].transpose(0, 1, 2, 4, 5, 3)


# --- convolution ---------------------------------------------------------------------------------

def conv2d_forward(x, w, b, stride=1, padding=0):
    x, w, b = checks.array("x", x, 4), checks.array("w", w, 4), checks.array("b", b, 1)
    checks.same_shape("b", b, (w.shape[3],), "one bias per output channel")
    oh, ow = checks.conv_output_size(x.shape, w.shape, stride, padding)
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    win = _windows(xp, w.shape[0], w.shape[1], stride)[:, :oh, :ow]
    return np.einsum("nijabc,abck->nijk", win, w, optimize=True) + b


def conv2d_backward(dy, x, w, stride=1, padding=0, need_dx=True):
    x, w, dy = checks.array("x", x, 4), checks.array("w", w, 4), checks.array("dy", dy, 4)
    oh, ow = checks.conv_output_size(x.shape, w.shape, stride, padding)
    checks.same_shape("dy", dy, (x.shape[0], oh, ow, w.shape[3]), "the forward output's shape")
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    win = _windows(xp, kh, kw, stride)[:, :oh, :ow]
    dw = np.einsum("nijabc,nijk->abck", win, dy, optimize=True)
    db = dy.sum(axis=(0, 1, 2))
    dx = None
    if need_dx:
        # Every output (i, j) read the window starting at (i*stride, j*stride): scatter back.
        dxp = np.zeros_like(xp)
        dwin = np.einsum("nijk,abck->nijabc", dy, w, optimize=True)
        for a in range(kh):
            for c in range(kw):
                dxp[:, a:a + oh * stride:stride, c:c + ow * stride:stride] += dwin[:, :, :, a, c]
        dx = dxp[:, padding:padding + x.shape[1], padding:padding + x.shape[2]]
    return dx, dw, db


# --- max-pool ------------------------------------------------------------------------------------

def maxpool_forward(x, size, stride=None):
    x = checks.array("x", x, 4)
    stride = size if stride is None else stride
    oh, ow = checks.pool_output_size(x.shape, size, stride)
    win = _windows(x, size, size, stride)[:, :oh, :ow]             # (N, OH, OW, S, S, C)
    n, _, _, _, _, c = win.shape
    flat = win.reshape(n, oh, ow, size * size, c)
    k = np.argmax(flat, axis=3)                                     # first maximum; NaN wins
    y = np.take_along_axis(flat, k[:, :, :, None], axis=3)[:, :, :, 0]
    rows = np.arange(oh)[:, None, None] * stride + k // size       # (N, OH, OW, C) by broadcasting
    cols = np.arange(ow)[None, :, None] * stride + k % size
    return y, (rows * x.shape[2] + cols).astype(np.int32)


def maxpool_backward(dy, argmax, x_shape):
    dy = checks.array("dy", dy, 4)
    _check_argmax(argmax, dy, x_shape)
    n, h, w, c = x_shape
    dx = np.zeros((n, h * w, c), dy.dtype)
    ni = np.arange(n)[:, None, None, None]
    ci = np.arange(c)[None, None, None, :]
    np.add.at(dx, (np.broadcast_to(ni, dy.shape), argmax, np.broadcast_to(ci, dy.shape)), dy)
    return dx.reshape(x_shape)


# --- average pooling ------------------------------------------------------------------------------

def avgpool_forward(x, size, stride=None):
    x = checks.array("x", x, 4)
    stride = size if stride is None else stride
    oh, ow = checks.pool_output_size(x.shape, size, stride)
    return _windows(x, size, size, stride)[:, :oh, :ow].mean(axis=(3, 4))


def avgpool_backward(dy, x_shape, size, stride=None):
    dy = checks.array("dy", dy, 4)
    x_shape, stride = check_avgpool_backward(dy, x_shape, size, stride)
    oh, ow = dy.shape[1:3]
    # Every output (i, j) read the window starting at (i*stride, j*stride), each element 1/S^2.
    dx = np.zeros(x_shape, dy.dtype)
    for a in range(size):
        for b in range(size):
            dx[:, a:a + oh * stride:stride, b:b + ow * stride:stride] += dy / (size * size)
    return dx


def global_avgpool_forward(x):
    x = checks.array("x", x, 4)
    checks.shape("x.shape", x.shape, 4)
    return x.mean(axis=(1, 2), dtype=np.float64).astype(x.dtype)  # float64 sums, as the kernel


def global_avgpool_backward(dy, x_shape):
    dy = checks.array("dy", dy, 2)
    n, h, w, c = checks.shape("x_shape", x_shape, 4)
    checks.same_shape("dy", dy, (n, c), f"(N, C) of x {(n, h, w, c)}")
    return np.broadcast_to(dy[:, None, None, :] / (h * w), (n, h, w, c)).copy()


# --- dense and ReLU ------------------------------------------------------------------------------

def _check_dense(x, w):
    x, w = checks.array("x", x, 2), checks.array("w", w, 2)
    if x.shape[1] != w.shape[0]:
        raise ShapeError(f"x: expected {w.shape[0]} features per row (w is {w.shape}), got shape {x.shape}")
    return x, w


def dense_forward(x, w, b):
    x, w = _check_dense(x, w)
    return x @ w + checks.array("b", b, 1)


def dense_relu_forward(x, w, b):
    return np.maximum(dense_forward(x, w, b), 0)


def dense_backward(dy, x, w, need_dx=True):
    x, w = _check_dense(x, w)
    dy = checks.array("dy", dy, 2)
    checks.same_shape("dy", dy, (x.shape[0], w.shape[1]), "the forward output's shape")
    return (dy @ w.T if need_dx else None), x.T @ dy, dy.sum(axis=0)


def dense_relu_backward(dy, x, w, y, need_dx=True):
    return dense_backward(relu_backward(dy, y), x, w, need_dx)


def relu_forward(x):
    return np.maximum(x, 0)


def relu_backward(dy, y):
    checks.same_shape("dy", dy, y.shape, "the forward output's shape")
    return np.where(y > 0, dy, 0).astype(dy.dtype)


# --- where branches meet: add (a residual connection) and concatenate --------------------------

def add_forward(a, b, relu=False):
    a, b = checks.array("a", a, np.ndim(a)), checks.array("b", b, np.ndim(b))
    checks.same_shape("b", b, a.shape, "a's shape")
    y = a + b
    return np.maximum(y, 0) if relu else y


def concat_forward(xs):
    return np.concatenate(check_concat(xs, dtype=None), axis=-1)


def concat_backward(dy, offset, channels):
    dy = checks.array("dy", dy, np.ndim(dy))
    if dy.ndim < 2 or offset + channels > dy.shape[-1]:
        raise ShapeError(f"offset, channels: expected channels within dy's last axis ({dy.shape[-1]}), got "
                         f"[{offset}, {offset + channels})")
    return dy[..., offset:offset + channels].copy()


# --- tanh and sigmoid ----------------------------------------------------------------------------

def tanh_forward(x):
    return np.tanh(checks.array("x", x, np.ndim(x)))


def tanh_backward(dy, y):
    checks.same_shape("dy", dy, y.shape, "the forward output's shape")
    return dy * (1 - y * y)


def sigmoid_forward(x):
    x = checks.array("x", x, np.ndim(x))
    e = np.exp(-np.abs(x))  # <= 1: never overflows
    return np.where(x >= 0, 1, e) / (1 + e)


def sigmoid_backward(dy, y):
    checks.same_shape("dy", dy, y.shape, "the forward output's shape")
    return dy * y * (1 - y)


def leaky_relu_forward(x, alpha=0.01):
    x, alpha = checks.array("x", x, np.ndim(x)), checks.fraction("alpha", alpha)
    return np.where(x > 0, x, alpha * x).astype(x.dtype)


def leaky_relu_backward(dy, y, alpha=0.01):
    checks.same_shape("dy", dy, y.shape, "the forward output's shape")
    alpha = checks.fraction("alpha", alpha)
    return np.where(y > 0, dy, alpha * dy).astype(dy.dtype)


# --- batch normalisation over the last axis ------------------------------------------------------

def _check_batchnorm(x, **vectors):
    x = checks.channels_last("x", x)
    for name, v in vectors.items():
        checks.same_shape(name, checks.array(name, v, 1), (x.shape[-1],), f"one per channel of x {x.shape}")
    return x


def _channel_sum(a):
    """The sum of each channel (the last axis) in float64: NumPy would add float32 row by row
    over the other axes, and lose digits over 50,000 rows."""
    return a.sum(axis=tuple(range(a.ndim - 1)), dtype=np.float64)


def batchnorm_forward(x, weight, bias, eps=1e-5, relu=False):
    x = _check_batchnorm(x, weight=weight, bias=bias)
    rows = x.size // x.shape[-1]
    mean = (_channel_sum(x) / rows).astype(x.dtype)
    var = (_channel_sum(np.square(x - mean, dtype=np.float64)) / rows).astype(x.dtype)
    y = (x - mean) / np.sqrt(var + checks.positive_real("eps", eps)) * weight + bias
    return (relu_forward(y) if relu else y), mean, var


def batchnorm_eval_forward(x, weight, bias, running_mean, running_var, eps=1e-5, relu=False):
    x = _check_batchnorm(x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    y = (x - running_mean) / np.sqrt(running_var + checks.positive_real("eps", eps)) * weight + bias
    return relu_forward(y) if relu else y


def batchnorm_backward(dy, x, weight, bias, mean, var, eps=1e-5, relu=False, need_dx=True):
    x = _check_batchnorm(x, weight=weight, bias=bias, mean=mean, var=var)
    checks.same_shape("dy", checks.channels_last("dy", dy), x.shape, "x's shape")
    rows = x.size // x.shape[-1]
    rstd = 1 / np.sqrt(var + checks.positive_real("eps", eps))
    # With the ReLU: dy where the forward's y (made again, by its own arithmetic) is > 0.
    g = relu_backward(dy, (x - mean) / np.sqrt(var + eps) * weight + bias) if relu else dy
    xhat = (x - mean) * rstd
    dbias, dweight = _channel_sum(g).astype(x.dtype), _channel_sum(g * xhat).astype(x.dtype)
    # y depends on x directly and through the batch's mean and var: the last two terms.
    dx = weight * rstd * (g - dbias / rows - xhat * dweight / rows) if need_dx else None
    return dx, dweight, dbias


# --- dropout -------------------------------------------------------------------------------------

def dropout_mask(shape, p, key):
    """Which elements the mask of ``key`` keeps: u_i >= p, u_i the top 53 bits of the i-th
    splitmix64 number from ``key``, as a float in [0, 1) (exact in float64)."""
    z = np.uint64(key) + (np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return (u >= p).reshape(shape)


def _dropout(name, a, p, key):
    p, key = check_dropout(p, key)
    a = checks.array(name, a, np.ndim(a))
    # The scale rounded to a's dtype first, as the kernel multiplies by it.
    return np.where(dropout_mask(a.shape, p, key), a * a.dtype.type(1 / (1 - p)), 0).astype(a.dtype)


def dropout_forward(x, p, key):
    return _dropout("x", x, p, key)


def dropout_backward(dy, p, key):
    return _dropout("dy", dy, p, key)  # the same diagonal map as the forward, the same mask


# --- conv -> ReLU -> max-pool, fused in the kernels: here their composition ------------------------

def conv_relu_pool_forward(x, w, b, stride=1, padding=0, size=2, pool_stride=None):
    pooled, argmax = maxpool_forward(conv2d_forward(x, w, b, stride, padding), size, pool_stride)
    return relu_forward(pooled), argmax


def conv_relu_pool_backward(dy, x, w, y, argmax, stride=1, padding=0, size=2, pool_stride=None, need_dx=True):
    oh, ow = checks.conv_output_size(x.shape, w.shape, stride, padding)
    dconv = maxpool_backward(relu_backward(dy, y), argmax, (x.shape[0], oh, ow, w.shape[3]))
    return conv2d_backward(dconv, x, w, stride, padding, need_dx)


# --- the fusions around BatchNorm in training: here their composition --------------------------------

def conv2d_relu_forward(x, w, b, stride=1, padding=0):
    return relu_forward(conv2d_forward(x, w, b, stride, padding))


def conv2d_moments_forward(x, w, b, stride=1, padding=0):
    """(y, mean, var): the convolution and the batch statistics of its output per channel."""
    y = conv2d_forward(x, w, b, stride, padding)
    rows = y.size // y.shape[-1]
    mean = _channel_sum(y) / rows
    var = _channel_sum(np.square(y - mean, dtype=np.float64)) / rows
    return y, mean.astype(y.dtype), var.astype(y.dtype)


def batchnorm_relu_pool_forward(x, mean, var, weight, bias, eps=1e-5, size=2, stride=None):
    pooled, argmax = maxpool_forward(batchnorm_eval_forward(x, weight, bias, mean, var, eps), size, stride)
    return relu_forward(pooled), argmax


def batchnorm_relu_pool_backward(dy, x, y, argmax, weight, mean, var, eps=1e-5, size=2, stride=None):
    g = maxpool_backward(relu_backward(dy, y), argmax, x.shape)
    return batchnorm_backward(g, x, weight, np.zeros_like(weight), mean, var, eps)


def batchnorm_relu_avgpool_forward(x, mean, var, weight, bias, eps=1e-5):
    return global_avgpool_forward(batchnorm_eval_forward(x, weight, bias, mean, var, eps, relu=True))


def batchnorm_relu_avgpool_backward(dy, x, weight, bias, mean, var, eps=1e-5):
    return batchnorm_backward(global_avgpool_backward(dy, x.shape), x, weight, bias, mean, var, eps, relu=True)


# --- data augmentation ---------------------------------------------------------------------------

def augment(x, params):
    """Each image moved by its affine map (augment.py): source = c + R (flip(i, j) - c) + shift,
    bilinear, zero outside."""
    x = checks.array("x", x, 4)
    n, h, w, c = x.shape
    ci, cj = (h - 1) / 2, (w - 1) / 2
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.zeros_like(x)
    for k in range(n):
        cos, sin, si, sj, flip = params[k, :5]
        jj = (w - 1 - j) if flip > 0.5 else j
        y = np.round((ci + cos * (i - ci) - sin * (jj - cj) + si) * 1e9) / 1e9
        z = np.round((cj + sin * (i - ci) + cos * (jj - cj) + sj) * 1e9) / 1e9
        i0, j0 = np.floor(y).astype(int), np.floor(z).astype(int)
        fy, fz = y - i0, z - j0
        for di, dj, weight in ((0, 0, (1 - fy) * (1 - fz)), (0, 1, (1 - fy) * fz), (1, 0, fy * (1 - fz)),
                               (1, 1, fy * fz)):
            a, b = i0 + di, j0 + dj
            inside = (a >= 0) & (a < h) & (b >= 0) & (b < w)
            out[k][inside] += weight[inside][:, None] * x[k, a[inside], b[inside]]
    return out


def augment_into(out, x, params):
    out[...] = augment(x, params)


# --- softmax + cross-entropy ---------------------------------------------------------------------

def softmax_cross_entropy(logits, labels):
    logits = checks.array("logits", logits, 2)
    labels = checks.labels("labels", labels, logits.shape[0], logits.shape[1])
    row_loss, dlogits = _row_losses(logits, labels)
    return float(row_loss.mean()), dlogits


def _row_losses(logits, labels):
    """Each row's loss, and the gradient of their mean w.r.t. the logits."""
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1
    return -log_probs[np.arange(n), labels], dlogits / n


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- SGD with momentum ---------------------------------------------------------------------------

def sgd_momentum(params, velocity, grads, lr, momentum, weight_decay=0.0):
    velocity *= momentum
    velocity -= lr * (grads + weight_decay * params)
    params += velocity


# --- Adam (torch.optim.Adam's rule, L2 weight decay in the gradient) ------------------------------

def adam(params, m, v, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1):
    check_adam(beta1, beta2, eps, step)
    g = grads + weight_decay * params
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    params -= lr / (1 - beta1 ** step) * m / (np.sqrt(v) / np.sqrt(1 - beta2 ** step) + eps)


# --- a batch's values as it enters: finite, within a limit --------------------------------------

def values_within(x, limit):
    return bool(np.all(np.abs(x) <= limit))  # NaN fails the comparison


# --- the engine's calling convention ---------------------------------------------------------------

def _fill(outs, results):
    for out, result in zip(outs, results):
        if out is not None:
            out[...] = result


def conv2d_forward_into(y, x, w, b, stride, pad):
    y[...] = conv2d_forward(x, w, b, stride, pad)


def conv2d_backward_into(dx, dw, db, dy, x, w, stride, pad, add=False):
    grads = conv2d_backward(dy, x, w, stride, pad, dx is not None)
    if add and dx is not None:
        dx += grads[0]
    _fill((None if add else dx, dw, db), grads)


def conv_relu_pool_forward_into(y, argmax, conv, x, w, b, stride, pad, size, pool_stride):
    _fill((y, argmax), conv_relu_pool_forward(x, w, b, stride, pad, size, pool_stride))


def conv_relu_pool_backward_into(dx, dw, db, dy, x, w, y, argmax, dconv, stride, pad, size, pool_stride):
    _fill((dx, dw, db), conv_relu_pool_backward(dy, x, w, y, argmax, stride, pad, size, pool_stride, dx is not None))


def conv2d_relu_forward_into(y, x, w, b, stride, pad):
    y[...] = conv2d_relu_forward(x, w, b, stride, pad)


def conv2d_moments_forward_into(y, mean, var, x, w, b, stride, pad):
    _fill((y, mean, var), conv2d_moments_forward(x, w, b, stride, pad))


def batchnorm_relu_pool_forward_into(y, argmax, x, mean, var, weight, bias, eps, size, stride):
    _fill((y, argmax), batchnorm_relu_pool_forward(x, mean, var, weight, bias, eps, size, stride))


def batchnorm_relu_pool_backward_into(dx, dweight, dbias, dy, x, y, argmax, weight, mean, var, eps, size, stride):
    _fill((dx, dweight, dbias), batchnorm_relu_pool_backward(dy, x, y, argmax, weight, mean, var, eps, size, stride))


def batchnorm_relu_avgpool_forward_into(y, x, mean, var, weight, bias, eps):
    y[...] = batchnorm_relu_avgpool_forward(x, mean, var, weight, bias, eps)


def batchnorm_relu_avgpool_backward_into(dx, dweight, dbias, dy, x, weight, bias, mean, var, eps):
    _fill((dx, dweight, dbias), batchnorm_relu_avgpool_backward(dy, x, weight, bias, mean, var, eps))


def maxpool_forward_into(y, argmax, x, size, stride):
    _fill((y, argmax), maxpool_forward(x, size, stride))


def maxpool_backward_into(dx, dy, argmax):
    dx[...] = maxpool_backward(dy, argmax, dx.shape)


def dense_forward_into(y, x, w, b, relu, scale=None):
    if scale is None:
        y[...] = (dense_relu_forward if relu else dense_forward)(x, w, b)
        return
    z = (x @ w) * scale + b
    y[...] = np.maximum(z, 0) if relu else z


def dense_backward_into(dx, dw, db, dy, x, w, y, relu):
    need_dx = dx is not None
    grads = dense_relu_backward(dy, x, w, y, need_dx) if relu else dense_backward(dy, x, w, need_dx)
    _fill((dx, dw, db), grads)


def add_forward_into(y, a, b, relu):
    y[...] = add_forward(a, b, relu)


def concat_forward_into(y, x, offset):
    y[..., offset:offset + x.shape[-1]] = x


def concat_backward_into(dx, dy, offset):
    dx[...] = concat_backward(dy, offset, dx.shape[-1])


def relu_forward_into(y, x):
    y[...] = relu_forward(x)


def relu_backward_into(dx, dy, y):
    dx[...] = relu_backward(dy, y)


def softmax_into(probs, logits):
    probs[...] = softmax(logits)


def softmax_cross_entropy_into(dlogits, row_loss, logits, labels):
    _fill((row_loss, dlogits), _row_losses(logits, labels))


def sgd_momentum_into(params, velocity, grads, lr, momentum, weight_decay):
    sgd_momentum(params, velocity, grads, lr, momentum, weight_decay)


def adam_into(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, step):
    adam(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, step)


def avgpool_forward_into(y, x, size, stride):
    y[...] = avgpool_forward(x, size, stride)


def avgpool_backward_into(dx, dy, size, stride):
    dx[...] = avgpool_backward(dy, dx.shape, size, stride)


def global_avgpool_forward_into(y, x):
    y[...] = global_avgpool_forward(x)


def global_avgpool_backward_into(dx, dy):
    dx[...] = global_avgpool_backward(dy, dx.shape)


def tanh_forward_into(y, x):
    y[...] = tanh_forward(x)


def tanh_backward_into(dx, dy, y):
    dx[...] = tanh_backward(dy, y)


def sigmoid_forward_into(y, x):
    y[...] = sigmoid_forward(x)


def sigmoid_backward_into(dx, dy, y):
    dx[...] = sigmoid_backward(dy, y)


def leaky_relu_forward_into(y, x, alpha):
    y[...] = leaky_relu_forward(x, alpha)


def leaky_relu_backward_into(dx, dy, y, alpha):
    dx[...] = leaky_relu_backward(dy, y, alpha)


def batchnorm_forward_into(y, mean, var, x, weight, bias, eps, relu):
    _fill((y, mean, var), batchnorm_forward(x, weight, bias, eps, relu))


def batchnorm_eval_forward_into(y, x, weight, bias, running_mean, running_var, eps, relu):
    y[...] = batchnorm_eval_forward(x, weight, bias, running_mean, running_var, eps, relu)


def batchnorm_backward_into(dx, dweight, dbias, dy, x, weight, bias, mean, var, eps, relu):
    _fill((dx, dweight, dbias), batchnorm_backward(dy, x, weight, bias, mean, var, eps, relu, dx is not None))


def dropout_forward_into(y, x, p, key):
    y[...] = dropout_forward(x, p, key)


def dropout_backward_into(dx, dy, p, key):
    dx[...] = dropout_backward(dy, p, key)
