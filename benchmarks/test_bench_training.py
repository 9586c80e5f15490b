"""The whole network: a training step (on one thread and on all), inference, Numba against the
NumPy reference; and a whole epoch of the real training loop, ``fit`` over 60,000 images with
shuffling, batch gathering, the checks and the progress bar, as ``fastcnn train`` runs it."""

import numba
import numpy as np
import pytest

from fastcnn import SGD
from fastcnn.training import fit
from fastcnn.architectures import mnist_network

THREADS = sorted({1, numba.config.NUMBA_NUM_THREADS})


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1), np.float32), rng.integers(0, 10, n)


def training_step(model):
    opt = SGD(model, lr=0.01)
    x, y = batch(64)

    def step():
        loss, _ = model.train_step(x, y)  # what fit runs: forward, loss, backward
        opt.step()
        return loss

    return step


def test_training_step(bench, impl):
    model = mnist_network(seed=0, backend=impl)
    assert np.isfinite(bench("training step[batch 64]", impl, training_step(model)))


@pytest.mark.parametrize("threads", THREADS)
def test_training_step_threads(bench, threads):
    """The same step on 1 thread and on every core, in one run: what a second core buys."""
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        step = training_step(mnist_network(seed=0))
        assert np.isfinite(bench(f"training step[batch 64, {threads} threads]", "numba", step))
    finally:
        numba.set_num_threads(previous)


@pytest.mark.parametrize("n", [1, 64, 1000])
def test_inference(bench, impl, n):
    model = mnist_network(seed=0, backend=impl)
    x, _ = batch(n)
    p = bench(f"inference[batch {n}]", impl, model.predict, x)
    assert p.shape == (n, 10)


def test_mnist_epoch(bench, mnist_train):
    """One epoch of ``fit`` over 60,000 images, progress bar and all (Numba only: the reference
    would take minutes). The summary compares its samples/s with the training step's."""
    x, y = mnist_train
    test = (x[:1], y[:1])  # the epoch's test pass is not what is timed here

    def epoch(x, y):
        model = mnist_network(seed=0)
        return fit(model, SGD(model, lr=0.07), (x, y), test, epochs=1, batch_size=64, seed=0, progress=True)

    history = bench("mnist epoch[60,000 images]", "numba", epoch, x, y,
                    warmup=lambda x, y: epoch(x[:640], y[:640]))  # compiles the same kernels
    assert history[0]["loss"] > 0


@pytest.fixture(scope="module")
def mnist_train():
    """Real MNIST when FASTCNN_DATA has it, else 60,000 random images (the same work)."""
    import os

    from fastcnn.data import load_dataset
    if os.environ.get("FASTCNN_DATA"):
        return load_dataset("mnist", "train")
    return batch(60_000)
