"""The whole network: a training step and inference, Numba against the NumPy reference; and a
whole MNIST epoch of training, data shuffling and batching included."""

import numpy as np
import pytest

from fastcnn import SGD, SoftmaxCrossEntropy
from fastcnn.train import fit, mnist_network


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1), np.float32), rng.integers(0, 10, n)


def test_training_step(bench, impl):
    model = mnist_network(seed=0, backend=impl)
    opt = SGD(model, lr=0.01)
    loss_fn = SoftmaxCrossEntropy(impl)
    x, y = batch(64)

    def step():
        loss, dlogits = loss_fn(model.forward(x), y)
        model.backward(dlogits)
        opt.step()
        return loss

    assert np.isfinite(bench("training step[batch 64]", impl, step))


@pytest.mark.parametrize("n", [1, 64, 1000])
def test_inference(bench, impl, n):
    model = mnist_network(seed=0, backend=impl)
    x, _ = batch(n)
    p = bench(f"inference[batch {n}]", impl, model.predict, x)
    assert p.shape == (n, 10)


def test_mnist_epoch(bench, mnist_train):
    """One epoch over the 60,000 training images, as `fastcnn train` runs it (Numba only: the
    reference would take minutes)."""
    x, y = mnist_train
    test = (x[:1], y[:1])  # the epoch's test pass is not what is timed here

    def epoch(x, y):
        model = mnist_network(seed=0)
        return fit(model, SGD(model, lr=0.07), (x, y), test, epochs=1, batch_size=64, seed=0, progress=False)

    history = bench("mnist epoch[60,000 images]", "numba", epoch, x, y,
                    warmup=lambda x, y: epoch(x[:640], y[:640]))  # compiles the same kernels
    assert history[0]["train_acc"] > 0.9


@pytest.fixture(scope="module")
def mnist_train():
    """Real MNIST when FASTCNN_DATA has it, else 60,000 random images (the same work)."""
    import os

    from fastcnn.data import load_dataset
    if os.environ.get("FASTCNN_DATA"):
        return load_dataset("mnist", "train")
    pytest.skip("FASTCNN_DATA is not set: the epoch benchmark needs the MNIST training set")
