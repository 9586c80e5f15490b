"""Small synthetic data the tests share: digit-like images, and a fake MNIST folder of them."""

import contextlib
import gzip
import hashlib
import socket
import struct

import numpy as np

from fastcnn import Layer, data


def bars(n, seed):
    """Digit-like data: a bright bar whose height encodes the label, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.uniform(0, 0.1, (n, 28, 28, 1)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 4 + 2 * label:8 + 2 * label, 6:22, 0] += 0.8
    return x, y


def fake_mnist(root):
    """A small MNIST folder of the bar digits (320 train, 100 test) under ``root``; returns the
    SHA-256 sums to put in ``data.CHECKSUMS["mnist"]``."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    sums = {}
    for split, (n, seed) in {"train": (320, 0), "test": (100, 1)}.items():
        x, y = bars(n, seed)
        images = (np.clip(x, 0, 1) * 255).astype(np.uint8)[:, :, :, 0]
        for base, arr in zip(data.SPLITS[split], (images, y.astype(np.uint8))):
            content = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
            (folder / f"{base}.gz").write_bytes(gzip.compress(content))
            sums[base] = hashlib.sha256(content).hexdigest()
    return sums


def closed_port_url():
    """A loopback URL that nothing listens on: a download from it fails at once."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def check_plan_runs_the_layers(make_layers, x, steps, forward_tol):
    """A model of ``make_layers()`` plans ``steps`` for ``x``; whatever it fuses, its training
    forward is the layers run one by one (on their own, NumPy reference: ``forward_tol`` for the
    reference model, ten times it for the compiled one), and both backends give the same loss
    and gradients (5e-5 of the largest). Returns the two models (compiled, reference)."""
    from fastcnn import Sequential
    fast, ref = Sequential(make_layers(), seed=1), Sequential(make_layers(), seed=1, backend="numpy")
    assert [type(step).__name__ for step in fast.plan(x.shape[1:]).steps] == steps
    kept = [(b, b.copy()) for layer in ref.layers for b in layer.buffers.values()]
    one_by_one = x
    for layer in ref.layers:
        one_by_one = layer.forward(one_by_one, backend="numpy")
    for b, saved in kept:  # BatchNorm's running statistics, as they were
        b[...] = saved
    np.testing.assert_allclose(ref.forward(x), one_by_one, rtol=forward_tol, atol=forward_tol)
    np.testing.assert_allclose(fast.forward(x), one_by_one, rtol=10 * forward_tol, atol=10 * forward_tol)
    y = np.arange(len(x)) % 3
    loss_fast, _ = fast.train_step(x, y)
    loss_ref, _ = ref.train_step(x, y)
    assert abs(loss_fast - loss_ref) <= 1e-5 * abs(loss_ref)
    scale = np.abs(ref.gradients).max()
    assert scale > 0 and np.abs(fast.gradients - ref.gradients).max() <= 5e-5 * scale
    return fast, ref


class Scale(Layer):
    """A layer of one's own with no more than it uses: its parameter, forward and backward (and
    config, to be saved)."""

    def __init__(self, features):
        super().__init__()
        self.features = features
        self.params["a"] = np.full(features, 1.5, np.float32)

    def config(self):
        return {"features": self.features}

    def forward(self, x):
        self.x = x
        return x * self.params["a"]

    def backward(self, dy):
        self.grads["a"][...] = (dy * self.x).sum(axis=0)
        return dy * self.params["a"]
