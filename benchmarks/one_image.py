"""One image through a trained network, on real pictures: what ReLU's zeros save.

Up to 8 rows, a dense layer reads only the rows of its weights that some nonzero input needs
(``kernels/dense.py``); after a ReLU and a max-pool most inputs are zero, on digits, not on the
random noise that ``compare.py`` feeds every engine alike. This trains the original network for
one epoch on MNIST (or takes ``--model``), then, calls in turn in one process:

- the first dense layer on its own inputs from test digits, against the same inputs with each
  zero made 1e-30 (nothing skipped: BLAS's GEMV, as before the skipping): how many rows are
  needed, and the time of each;
- ``predict`` of one test digit, against one image of random noise;
- ``predict`` of one image of noise as before 2026-12-07 noon, against now: the last dense layer
  (128 x 10) handed to the threads (``dense._dense_forward_few``), not multiplied on the calling
  thread (``_dense_forward_small``), and the batch's values checked by NumPy's ``min`` and
  ``max`` instead of ``kernels.values_within``'s one pass (the two switched in this process).

    python benchmarks/one_image.py [--model FILE] [--threads 2] [--rounds 300]

Needs MNIST (``FASTCNN_DATA``).
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def median_us(times):
    return float(np.median(times)) * 1e6


def in_turn(cases, rounds, calls=10):
    """{name: median us}: each case ``calls`` times a round, the cases in turn, ``rounds`` rounds;
    a case is fn(i) for the i-th call, so that each call may take another input."""
    times = {name: [] for name in cases}
    for r in range(rounds):
        for name, fn in cases.items():
            for c in range(calls):
                start = time.perf_counter()
                fn(r * calls + c)
                times[name].append(time.perf_counter() - start)
    return {name: median_us(t) for name, t in times.items()}


def trained_model(path):
    import fastcnn
    from fastcnn.architectures import mnist_network
    from fastcnn.data import load_dataset
    if path:
        return fastcnn.load(path)
    model = mnist_network(seed=0)
    fastcnn.fit(model, fastcnn.SGD(model, lr=0.07, momentum=0.9), load_dataset("mnist", "train"), epochs=1,
                progress=False)
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a saved model of 28x28x1 pictures whose first Dense follows Flatten "
                                   "(default: the original network, trained one epoch here)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=300)
    args = p.parse_args()
    import fastcnn
    from fastcnn.data import load_dataset
    from fastcnn.kernels import dense
    from fastcnn.kernels.jit import set_threads
    from compare import machine
    set_threads(args.threads)
    m = machine()
    print(f"CPU: {m['cpu']}, {m['cores']} cores; {' '.join(m['avx'])}; {args.threads} threads; "
          f"load average {m['load_average_start']:.2f}")
    model = trained_model(args.model)
    model.eval()
    digits = np.ascontiguousarray(load_dataset("mnist", "test")[0][:200], np.float32)
    noise = np.random.default_rng(1).random(digits.shape, np.float32)

    first = next(i for i, layer in enumerate(model.layers) if isinstance(layer, fastcnn.Dense))
    h = digits
    for layer in model.layers[:first]:
        h = layer.forward(h)
    h = np.ascontiguousarray(h)
    filled = np.where(h == 0, np.float32(1e-30), h)
    w, b = model.layers[first].params["weight"], model.layers[first].params["bias"]
    y = np.empty((1, w.shape[1]), np.float32)
    print(f"Dense {w.shape[0]} -> {w.shape[1]} on 200 test digits: {np.mean(h != 0):.0%} of its inputs nonzero "
          f"(per digit {np.mean(h != 0, axis=1).min():.0%} to {np.mean(h != 0, axis=1).max():.0%})")
    for rows in (1, 8):
        def layer(inputs):
            return lambda i: dense.dense_forward_into(y[:rows] if rows == 1 else np.empty((rows, w.shape[1]), np.float32),
                                                      inputs[i % 192:i % 192 + rows], w, b, True)
        layer(h)(0), layer(filled)(0)
        t = in_turn({"zeros skipped": layer(h), "every row read": layer(filled)}, args.rounds)
        print(f"  {rows} row{'s' if rows > 1 else ''}: zeros skipped {t['zeros skipped']:.1f} us, every row read "
              f"{t['every row read']:.1f} us ({t['every row read'] / t['zeros skipped']:.2f}x)")
    model.predict(digits[:1]), model.predict(noise[:1])
    t = in_turn({"digit": lambda i: model.predict(digits[i % 200:i % 200 + 1]),
                 "noise": lambda i: model.predict(noise[i % 200:i % 200 + 1])}, args.rounds)
    print(f"predict, one image: a test digit {t['digit']:.1f} us, random noise {t['noise']:.1f} us")
    before_and_now(model, noise, args.rounds)


def before_and_now(model, noise, rounds):
    import fastcnn.kernels as K
    from fastcnn.kernels import dense
    small, within = dense._SMALL, K.values_within

    def numpy_min_max(x, limit):
        return -limit <= x.min() and x.max() <= limit

    def as_before(i):
        dense._SMALL, K.values_within = 0, numpy_min_max
        model.predict(noise[i % 200:i % 200 + 1])

    def now(i):
        dense._SMALL, K.values_within = small, within
        model.predict(noise[i % 200:i % 200 + 1])

    try:
        as_before(0), now(0)
        t = in_turn({"before": as_before, "now": now}, rounds)
    finally:
        dense._SMALL, K.values_within = small, within
    print(f"predict, one image of noise: as before (the last layer threaded, the values by NumPy's min and max) "
          f"{t['before']:.1f} us, now {t['now']:.1f} us ({t['before'] / t['now']:.2f}x)")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import script
    sys.exit(script(main))
