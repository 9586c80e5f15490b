"""The original "CNN from scratch" training loop, layer by layer, with fastcnn's layers as its backend.

The project this library grew from writes its network as layer objects, calls each one's forward
and backward by hand, and updates the weights with SGD with momentum (0.9) and a learning rate
that decays as lr / (1 + decay * step). This is that loop, unchanged in shape; only the layers
are fastcnn's, so each call runs a compiled, multi-core kernel:

    python examples/from_scratch.py             # 5 epochs on MNIST: 98.35% on the test set (seed 0;
                                                # 98.31% with AVX2 only)
    python examples/from_scratch.py --epochs 1 --limit 6000

MNIST is read from FASTCNN_DATA (or fastcnn's data folder; downloaded if missing).
"""

import argparse
import time

import numpy as np

from fastcnn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, SoftmaxCrossEntropy
from fastcnn.data import load_dataset


def build(seed=0):
    """Conv 3x3x32 pad 1 -> ReLU -> MaxPool 2 -> Dense 128 -> ReLU -> Dense 10, He-initialised."""
    rng = np.random.default_rng(seed)
    layers = [Conv2D(1, 32, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(14 * 14 * 32, 128), ReLU(),
              Dense(128, 10)]
    for layer in layers:
        layer.initialize(rng, feeds_relu=isinstance(layer, (Conv2D, Dense)) and layer is not layers[-1])
    return layers


def forward(layers, x):
    for layer in layers:
        x = layer.forward(x)
    return x


def backward(layers, d):
    for layer in reversed(layers):
        d = layer.backward(d)


def train(layers, x, y, epochs=5, batch_size=64, lr=0.01, momentum=0.9, decay=1e-3, seed=0, log=print):
    loss_fn = SoftmaxCrossEntropy()
    velocity = {(i, name): np.zeros_like(p) for i, layer in enumerate(layers) for name, p in layer.params.items()}
    rng, step = np.random.default_rng(seed), 0
    for epoch in range(1, epochs + 1):
        order, start, total = rng.permutation(len(x)), time.perf_counter(), 0.0
        for first in range(0, len(x), batch_size):
            rows = order[first:first + batch_size]
            loss, dlogits = loss_fn(forward(layers, x[rows]), y[rows])
            backward(layers, dlogits)
            rate = lr / (1 + decay * step)
            for i, layer in enumerate(layers):
                for name, p in layer.params.items():
                    v = velocity[i, name]
                    v *= momentum
                    v -= rate * layer.grads[name]
                    p += v
            step, total = step + 1, total + loss * len(rows)
        log(f"epoch {epoch}: loss {total / len(x):.4f}, {len(x) / (time.perf_counter() - start):,.0f} images/s")


def accuracy(layers, x, y, batch_size=1000):
    for layer in layers:
        layer.eval()  # no backward to come: nothing is kept
    hits = sum(int((forward(layers, x[i:i + batch_size]).argmax(axis=1) == y[i:i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    for layer in layers:
        layer.train()
    return hits / len(x)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="train on the first LIMIT images only")
    args = parser.parse_args(argv)
    x, y = load_dataset("mnist", "train")
    x_test, y_test = load_dataset("mnist", "test")
    layers = build()
    train(layers, x[:args.limit], y[:args.limit], epochs=args.epochs)
    acc = accuracy(layers, x_test, y_test)
    print(f"test accuracy: {acc:.2%}")
    return acc


if __name__ == "__main__":
    main()
