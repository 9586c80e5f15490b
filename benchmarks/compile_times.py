"""What the first training step and the first prediction cost: compiling the kernels (cold, an
empty Numba cache) or loading them from Numba's cache (warm). Each measurement runs in a fresh
process so nothing is already loaded; the kernels timed are every one the default network's
execution plan calls, found by running it.

    python benchmarks/compile_times.py
"""

import json
import os
import subprocess
import sys
import tempfile

# Run in the child: import, build the default network, then time its first training step and
# its first prediction, and the first call of every kernel core the plan made on the way.
CHILD = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
import fastcnn
from fastcnn import kernels
from fastcnn.train import mnist_network
first = {"import fastcnn": time.perf_counter() - t0}
calls = {}
for name in kernels.CORES:
    def timed(*args, _f=getattr(kernels, name), _name=name):
        t = time.perf_counter()
        out = _f(*args)
        calls.setdefault(_name, time.perf_counter() - t)
        return out
    setattr(kernels, name, timed)
t = time.perf_counter()
model = mnist_network(seed=0)
opt = fastcnn.SGD(model, 0.01)
first["build the network"] = time.perf_counter() - t
x, y = np.zeros((64, 28, 28, 1), np.float32), np.zeros(64, np.int64)
t = time.perf_counter()
model.train_step(x, y)
opt.step()
first["first training step"] = time.perf_counter() - t
t = time.perf_counter()
model.predict(x[:1])
first["first predict"] = time.perf_counter() - t
print(json.dumps({"steps": first, "kernels": calls}))
"""


def first_calls(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    with tempfile.TemporaryDirectory() as cache:
        cold = first_calls(cache)
        warm = first_calls(cache)
    print(f"{'first call of':34s} {'cold (compile)':>15s} {'warm (cache)':>13s}")
    for name in cold["kernels"]:
        print(f"  {name:32s} {cold['kernels'][name] * 1e3:12.0f} ms {warm['kernels'][name] * 1e3:10.0f} ms")
    for name in cold["steps"]:
        print(f"{name:34s} {cold['steps'][name]:13.2f} s {warm['steps'][name]:11.2f} s")
    total = lambda r: sum(r["steps"].values())  # noqa: E731
    print(f"{'import, build, first step, predict':34s} {total(cold):13.2f} s {total(warm):11.2f} s")


if __name__ == "__main__":
    main()
