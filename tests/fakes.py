"""Small synthetic data the tests share: digit-like images, and a fake MNIST folder of them."""

import contextlib
import gzip
import hashlib
import socket
import struct

import numpy as np

from fastcnn import data


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
