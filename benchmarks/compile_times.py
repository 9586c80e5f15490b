"""What the first call of each kernel costs: compiling it (cold, empty Numba cache) or loading it
from Numba's cache (warm). Each measurement runs in a fresh process so nothing is already loaded.

    python benchmarks/compile_times.py
"""

import json
import os
import subprocess
import sys
import tempfile

# Run in the child: import, then time the first call of every public kernel on tiny inputs.
CHILD = r"""
import json, time
import numpy as np
t0 = time.perf_counter()
from fastcnn import kernels as K
first = {"import fastcnn.kernels": time.perf_counter() - t0}

def timed(name, call, *args):
    t = time.perf_counter()
    out = call(*args)
    first[name] = time.perf_counter() - t
    return out

x = np.ones((2, 6, 6, 3), np.float32); w = np.ones((3, 3, 3, 4), np.float32); b = np.ones(4, np.float32)
d = np.ones((2, 5), np.float32); dw = np.ones((5, 3), np.float32); db = np.ones(3, np.float32)
y = timed("conv2d_forward", K.conv2d_forward, x, w, b, 1, 1)
timed("conv2d_backward", K.conv2d_backward, y, x, w, 1, 1)
pooled, argmax = timed("maxpool_forward", K.maxpool_forward, x, 2)
timed("maxpool_backward", K.maxpool_backward, pooled, argmax, x.shape)
r = timed("relu_forward", K.relu_forward, x)
timed("relu_backward", K.relu_backward, x, r)
h = timed("dense_relu_forward", K.dense_relu_forward, d, dw, db)
timed("dense_relu_backward", K.dense_relu_backward, h, d, dw, h)
timed("softmax_cross_entropy", K.softmax_cross_entropy, d, np.array([0, 4]))
p = np.ones(10, np.float32)
timed("sgd_momentum", K.sgd_momentum, p, np.zeros(10, np.float32), p.copy(), 0.1, 0.9)
print(json.dumps(first))
"""


def first_calls(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    with tempfile.TemporaryDirectory() as cache:
        cold = first_calls(cache)
        warm = first_calls(cache)
    print(f"{'first call of':28s} {'cold (compile)':>15s} {'warm (cache)':>13s}")
    for name in cold:
        print(f"{name:28s} {cold[name] * 1e3:12.0f} ms {warm[name] * 1e3:10.0f} ms")
    print(f"{'total':28s} {sum(cold.values()):13.2f} s {sum(warm.values()):11.2f} s")


if __name__ == "__main__":
    main()
