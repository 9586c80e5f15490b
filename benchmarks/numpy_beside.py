"""NumPy's BLAS beside the kernels: what a user's own NumPy products and fastcnn's steps cost each
other. After a product, OpenBLAS's threads wait for the next one spinning, about 0.1 s, on the
cores the kernels' threads need, so each variant runs in a process of its own:

- ``loop``: a loop of the user's that does a NumPy product (64 x 1024 by 1024 x 512) before each
  training step of the original network: the step and the product alone, then in turn; as is,
  with NumPy's BLAS held to one thread (``threadpoolctl``), and with OPENBLAS_THREAD_TIMEOUT=4 set
  before NumPy is imported (its threads then sleep almost at once).
- ``layer``: the original network with its first Dense a layer of the user's own in NumPy
  (``x @ w``, 6272 -> 128): a training step and ``predict`` of 1000 images, with the hold a model
  puts on NumPy's BLAS while such a layer runs (``blas.numpy_blas_on_one_thread``) and without it.

    python benchmarks/numpy_beside.py [--repeats 2]
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

VARIANTS = {"loop": ("as is", "threadpool_limits(1)", "OPENBLAS_THREAD_TIMEOUT=4"),
            "layer": ("without the hold", "with the hold")}


def median_ms(fn, calls):
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3


def numpy_dense():
    import numpy as np
    import fastcnn

    class NumpyDense(fastcnn.Layer):
        """y = x @ w, in NumPy: a layer of the user's own."""

        def __init__(self, n_in, n_out):
            super().__init__()
            w = np.random.default_rng(1).standard_normal((n_in, n_out)) * np.sqrt(2 / n_in)
            self.params["w"] = w.astype(np.float32)

        def output_shape(self, shape):
            return (self.params["w"].shape[1],)

        def forward(self, x):
            self.x = x
            return x @ self.params["w"]

        def backward(self, dy):
            self.grads["w"][...] = self.x.T @ dy
            return dy @ self.params["w"].T

    return NumpyDense


def run(case, variant, calls):
    """One variant in this process: {what: ms}."""
    import numpy as np
    import fastcnn
    from fastcnn import steps
    from networks import build
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    x, labels = rng.random((64, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 64)
    if case == "loop":
        model = build("original")
        a, b = rng.random((64, 1024), dtype=np.float32), rng.random((1024, 512), dtype=np.float32)
        hold = threadpool_limits(1, user_api="blas") if variant == "threadpool_limits(1)" else contextlib.nullcontext()
        with hold:
            model.train_step(x, labels)
            step, product = median_ms(lambda: model.train_step(x, labels), calls), median_ms(lambda: a @ b, calls)
            in_turn = [], []
            for _ in range(calls):
                t0 = time.perf_counter()
                a @ b
                t1 = time.perf_counter()
                model.train_step(x, labels)
                in_turn[0].append(t1 - t0)
                in_turn[1].append(time.perf_counter() - t1)
        return {"step alone": step, "product alone": product,
                "product in turn": sorted(in_turn[0])[calls // 2] * 1e3, "step in turn": sorted(in_turn[1])[calls // 2] * 1e3}
    if variant == "without the hold":
        steps.numpy_blas_on_one_thread = contextlib.nullcontext
    layers = [fastcnn.Conv2D(32, 3, padding=1), fastcnn.ReLU(), fastcnn.MaxPool2D(2), fastcnn.Flatten(),
              numpy_dense()(6272, 128), fastcnn.ReLU(), fastcnn.Dense(10)]
    model = fastcnn.Sequential(layers, input_shape=(28, 28, 1))
    opt, images = fastcnn.SGD(model, lr=0.01), rng.random((1000, 28, 28, 1), dtype=np.float32)

    def train():
        model.train_step(x, labels)
        opt.step()

    train(), model.predict(images)
    return {"training step": median_ms(train, calls), "predict 1000": median_ms(lambda: model.predict(images), calls // 4)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="runs of each variant, in turn")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--case", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run(args.case, args.variant, args.calls)))
        return
    from compare import machine
    m = machine()
    print(f"CPU: {m['cpu']}, {m['cores']} cores; {' '.join(m['avx'])}; load average {m['load_average_start']:.2f}")
    for case, variants in VARIANTS.items():
        print(f"{case}: medians of {args.calls} calls, ms")
        for _ in range(args.repeats):
            for variant in variants:
                env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="4") if "TIMEOUT" in variant else None
                out = subprocess.run([sys.executable, __file__, "--case", case, "--variant", variant,
                                      "--calls", str(args.calls)], env=env, capture_output=True, text=True, check=True)
                figures = json.loads(out.stdout.splitlines()[-1])
                print(f"  {variant:28s} " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))


if __name__ == "__main__":
    from common import script
    sys.exit(script(main))
