"""Every kernel, Numba against its NumPy reference, at the MNIST network's shapes (batch 64) and
at one larger shape; the convolutions also at the shapes of a deeper network's later blocks."""

import numpy as np
import pytest

from common import IMPLS, rand

# (N, H, W, C_in, C_out, kernel, padding)
CONV = {"mnist": (64, 28, 28, 1, 32, 3, 1), "large": (32, 32, 32, 16, 32, 3, 1),
        # two or three conv blocks of 32-128 channels: every conv but the first needs its dx
        "deep 14x14 32-64": (64, 14, 14, 32, 64, 3, 1), "deep 28x28 32-32": (64, 28, 28, 32, 32, 3, 1),
        "deep 16x16 64-64": (64, 16, 16, 64, 64, 3, 1), "deep 8x8 128-128": (64, 8, 8, 128, 128, 3, 1)}
# (N, H, W, C): pooled 2x2; also the input of the elementwise and batch-norm kernels
POOL = {"mnist": (64, 28, 28, 32), "large": (32, 32, 32, 64)}
# (N, in, out)
DENSE = {"mnist": (64, 6272, 128), "mnist-out": (64, 128, 10), "large": (256, 4096, 1024)}


@pytest.mark.parametrize("shape", list(CONV))
def test_conv2d_forward(bench, impl, shape):
    n, h, w, c, k, ks, pad = CONV[shape]
    rng = np.random.default_rng(0)
    x, wt, b = rand(rng, n, h, w, c), rand(rng, ks, ks, c, k), rand(rng, k)
    bench(f"conv2d_forward[{shape}]", impl, IMPLS[impl].conv2d_forward, x, wt, b, 1, pad)


@pytest.mark.parametrize("need_dx", [False, True], ids=["no_dx", "with_dx"])
@pytest.mark.parametrize("shape", list(CONV))
def test_conv2d_backward(bench, impl, shape, need_dx):
    n, h, w, c, k, ks, pad = CONV[shape]
    rng = np.random.default_rng(0)
    x, wt, dy = rand(rng, n, h, w, c), rand(rng, ks, ks, c, k), rand(rng, n, h, w, k)
    bench(f"conv2d_backward[{shape},{'dx' if need_dx else 'no dx'}]", impl,
          IMPLS[impl].conv2d_backward, dy, x, wt, 1, pad, need_dx)


@pytest.mark.parametrize("shape", list(CONV))
def test_conv_relu_pool_forward(bench, impl, shape):
    n, h, w, c, k, ks, pad = CONV[shape]
    rng = np.random.default_rng(0)
    x, wt, b = rand(rng, n, h, w, c), rand(rng, ks, ks, c, k), rand(rng, k)
    bench(f"conv_relu_pool_forward[{shape}]", impl, IMPLS[impl].conv_relu_pool_forward, x, wt, b, 1, pad, 2)


@pytest.mark.parametrize("need_dx", [False, True], ids=["no_dx", "with_dx"])
@pytest.mark.parametrize("shape", list(CONV))
def test_conv_relu_pool_backward(bench, impl, shape, need_dx):
    n, h, w, c, k, ks, pad = CONV[shape]
    rng = np.random.default_rng(0)
    x, wt, b = rand(rng, n, h, w, c), rand(rng, ks, ks, c, k), rand(rng, k)
    y, argmax = IMPLS[impl].conv_relu_pool_forward(x, wt, b, 1, pad, 2)
    dy = rand(rng, *y.shape)
    bench(f"conv_relu_pool_backward[{shape},{'dx' if need_dx else 'no dx'}]", impl,
          IMPLS[impl].conv_relu_pool_backward, dy, x, wt, y, argmax, 1, pad, 2, None, need_dx)


@pytest.mark.parametrize("shape", list(POOL))
def test_maxpool_forward(bench, impl, shape):
    x = rand(np.random.default_rng(0), *POOL[shape])
    bench(f"maxpool_forward[{shape}]", impl, IMPLS[impl].maxpool_forward, x, 2, 2)


@pytest.mark.parametrize("shape", list(POOL))
def test_maxpool_backward(bench, impl, shape):
    x = rand(np.random.default_rng(0), *POOL[shape])
    y, argmax = IMPLS[impl].maxpool_forward(x, 2, 2)
    bench(f"maxpool_backward[{shape}]", impl, IMPLS[impl].maxpool_backward, y, argmax, x.shape)


@pytest.mark.parametrize("shape", list(POOL))
def test_relu(bench, impl, shape):
    x = rand(np.random.default_rng(0), *POOL[shape])
    bench(f"relu_forward[{shape}]", impl, IMPLS[impl].relu_forward, x)


@pytest.mark.parametrize("shape", list(POOL))
def test_relu_backward(bench, impl, shape):
    rng = np.random.default_rng(0)
    y, dy = np.maximum(rand(rng, *POOL[shape]), 0), rand(rng, *POOL[shape])
    bench(f"relu_backward[{shape}]", impl, IMPLS[impl].relu_backward, dy, y)


@pytest.mark.parametrize("fused", [True, False], ids=["relu", "plain"])
@pytest.mark.parametrize("shape", list(DENSE))
def test_dense_forward(bench, impl, shape, fused):
    n, i, o = DENSE[shape]
    rng = np.random.default_rng(0)
    fn = "dense_relu_forward" if fused else "dense_forward"
    bench(f"{fn}[{shape}]", impl, getattr(IMPLS[impl], fn), rand(rng, n, i), rand(rng, i, o), rand(rng, o))


@pytest.mark.parametrize("fused", [True, False], ids=["relu", "plain"])
@pytest.mark.parametrize("shape", list(DENSE))
def test_dense_backward(bench, impl, shape, fused):
    n, i, o = DENSE[shape]
    rng = np.random.default_rng(0)
    x, w, dy = rand(rng, n, i), rand(rng, i, o), rand(rng, n, o)
    k = IMPLS[impl]
    if fused:
        y = np.maximum(rand(rng, n, o), 0)
        bench(f"dense_relu_backward[{shape}]", impl, k.dense_relu_backward, dy, x, w, y)
    else:
        bench(f"dense_backward[{shape}]", impl, k.dense_backward, dy, x, w)


@pytest.mark.parametrize("n", [64, 1000])
def test_softmax_cross_entropy(bench, impl, n):
    rng = np.random.default_rng(0)
    logits, labels = rand(rng, n, 10), rng.integers(0, 10, n)
    bench(f"softmax_cross_entropy[{n}x10]", impl, IMPLS[impl].softmax_cross_entropy, logits, labels)


@pytest.mark.parametrize("size", [805_802, 8_000_000], ids=["mnist", "large"])
def test_sgd_momentum(bench, impl, size):
    rng = np.random.default_rng(0)
    p, v, g = rand(rng, size), np.zeros(size, np.float32), rand(rng, size) * np.float32(1e-6)
    bench(f"sgd_momentum[{'mnist' if size < 10**6 else 'large'}]", impl, IMPLS[impl].sgd_momentum,
          p, v, g, np.float32(0.01), np.float32(0.9))


@pytest.mark.parametrize("shape", list(POOL))
def test_batchnorm_forward(bench, impl, shape):
    rng = np.random.default_rng(0)
    x, c = rand(rng, *POOL[shape]), POOL[shape][3]
    bench(f"batchnorm_forward[{shape},relu]", impl, IMPLS[impl].batchnorm_forward, x, rand(rng, c), rand(rng, c),
          1e-5, True)


@pytest.mark.parametrize("shape", list(POOL))
def test_batchnorm_backward(bench, impl, shape):
    rng = np.random.default_rng(0)
    x, c = rand(rng, *POOL[shape]), POOL[shape][3]
    weight, bias = rand(rng, c), rand(rng, c)
    _, mean, var = IMPLS[impl].batchnorm_forward(x, weight, bias, 1e-5, True)
    bench(f"batchnorm_backward[{shape},relu]", impl, IMPLS[impl].batchnorm_backward, rand(rng, *x.shape), x, weight,
          bias, mean, var, 1e-5, True)


@pytest.mark.parametrize("shape", list(POOL))
def test_dropout_forward(bench, impl, shape):
    x = rand(np.random.default_rng(0), *POOL[shape])
    bench(f"dropout_forward[{shape}]", impl, IMPLS[impl].dropout_forward, x, 0.5, IMPLS[impl].dropout_key(0, 1, 0))


@pytest.mark.parametrize("shape", list(POOL))
def test_avgpool_forward(bench, impl, shape):
    x = rand(np.random.default_rng(0), *POOL[shape])
    bench(f"avgpool_forward[{shape}]", impl, IMPLS[impl].avgpool_forward, x, 2, 2)


@pytest.mark.parametrize("shape", list(POOL))
def test_avgpool_backward(bench, impl, shape):
    x = rand(np.random.default_rng(0), *POOL[shape])
    dy = IMPLS[impl].avgpool_forward(x, 2, 2)
    bench(f"avgpool_backward[{shape}]", impl, IMPLS[impl].avgpool_backward, dy, x.shape, 2, 2)


@pytest.mark.parametrize("shape", list(POOL))
def test_global_avgpool(bench, impl, shape):
    x = rand(np.random.default_rng(0), *POOL[shape])
    bench(f"global_avgpool_forward[{shape}]", impl, IMPLS[impl].global_avgpool_forward, x)


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
@pytest.mark.parametrize("shape", list(POOL))
def test_activation(bench, impl, shape, act):
    x = rand(np.random.default_rng(0), *POOL[shape])
    bench(f"{act}_forward[{shape}]", impl, getattr(IMPLS[impl], f"{act}_forward"), x)


@pytest.mark.parametrize("size", [805_802, 8_000_000], ids=["mnist", "large"])
def test_adam(bench, impl, size):
    rng = np.random.default_rng(0)
    p, m, v, g = rand(rng, size), np.zeros(size, np.float32), np.zeros(size, np.float32), rand(rng, size)
    bench(f"adam[{'mnist' if size < 10**6 else 'large'}]", impl, IMPLS[impl].adam, p, m, v, g, 1e-3)


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "plain"])
@pytest.mark.parametrize("shape", list(POOL))
def test_add(bench, impl, shape, relu):
    rng = np.random.default_rng(0)
    a, b = rand(rng, *POOL[shape]), rand(rng, *POOL[shape])
    bench(f"add_forward[{shape}]", impl, IMPLS[impl].add_forward, a, b, relu)


@pytest.mark.parametrize("shape", list(POOL))
def test_concat(bench, impl, shape):
    rng = np.random.default_rng(0)
    n, h, w, c = POOL[shape]
    xs = [rand(rng, n, h, w, c // 2), rand(rng, n, h, w, c - c // 2)]
    bench(f"concat_forward[{shape}]", impl, IMPLS[impl].concat_forward, xs)


# (the preset, the images' shape): a batch of 128 (resnet's) moved as fit moves it
AUGMENT = {"shift-rotate 28x28x1": ("shift-rotate", (28, 28, 1)), "crop-flip 32x32x3": ("crop-flip", (32, 32, 3))}


@pytest.mark.parametrize("case", list(AUGMENT))
def test_augment(bench, impl, case):
    from fastcnn.augmentation import PRESETS
    name, shape = AUGMENT[case]
    x = np.random.default_rng(0).random((128, *shape), np.float32)
    params = PRESETS[name][1](shape).params(0, 0, 0, len(x))
    bench(f"augment[{case}]", impl, IMPLS[impl].augment, x, params)
