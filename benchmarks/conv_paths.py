"""Every convolution path on a grid of shapes: what ``kernels/algorithms.py``'s rules are measured from.

    python benchmarks/conv_paths.py [--batch 64] [--threads 2] [--cpu-time]
    python benchmarks/conv_paths.py --gemm-products [--threads 2]

For 3x3 convolutions at stride 1 ("same" padding) of the channel pairs CNNs use, at several image
sizes, it times the forward pass and the weight gradient on each path (direct, gemm, winograd),
prints the time of each and the fastest, and, per instruction set, the fewest input channels from
which each path won. ``--cpu-time`` times one thread's CPU time instead of the wall clock: a
machine shared with other work then still gives the paths' relative cost. Run it alone on the
machine, once as is and once with the AVX2 code (NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=-avx512f
OPENBLAS_CORETYPE=Haswell) where the CPU has AVX-512.

``--gemm-products`` times instead im2col's forward pass (the strided, 1x1 and 5x5 convolutions)
with its products by BLAS against products.py's register tiles, calls in turn, at batches of 1
to 64, beside the pixels of each product: ``algorithms.GEMM_REGISTER_PIXELS`` is measured from it.
"""

import argparse
import time

import numba
import numpy as np

from fastcnn.kernels import algorithms, conv, winograd

PAIRS = [(1, 32), (3, 16), (3, 32), (4, 32), (8, 16), (8, 32), (16, 32), (16, 64), (32, 32), (32, 64), (64, 64),
         (64, 128), (128, 128), (128, 256), (256, 256)]
SIZES = [4, 8, 14, 16, 28, 32]


def timer(cpu_time):
    return time.process_time if cpu_time else time.perf_counter


def best(fn, clock, budget=0.15, least=3):
    fn()
    times, spent = [], 0.0
    while len(times) < least or spent < budget:
        t = clock()
        fn()
        times.append(clock() - t)
        spent += times[-1]
    return min(times)


def forward_paths(x, w, b, y):
    return {"direct": lambda: conv.forward_direct_into(y, None, x, w, b, 1, 1),
            "gemm": lambda: conv.forward_gemm_into(y, None, x, w, b, 1, 1),
            "winograd": lambda: winograd.forward_into(y, x, w, b, 1)}  # the weights' transform included


def weight_paths(x, dy, dw, db):
    return {"direct": lambda: conv.weight_gradient_direct_into(dw, db, dy, x, 1, 1),
            "gemm": lambda: conv.weight_gradient_gemm_into(dw, db, dy, x, 1, 1),
            "winograd": lambda: winograd.weight_gradient_into(dw, db, dy, x, 1)}


# (H, W, C, K, kernel, stride, padding): resnet's strided and shortcut convolutions, a 5x5 and a 1x1.
GEMM_SHAPES = [(28, 28, 32, 64, 3, 2, 1), (14, 14, 64, 128, 3, 2, 1), (28, 28, 32, 64, 1, 2, 0),
               (14, 14, 64, 128, 1, 2, 0), (14, 14, 32, 64, 5, 1, 2), (8, 8, 64, 128, 1, 1, 0)]


def gemm_products(rng, clock, rounds=15):
    """im2col's forward pass with BLAS's products against the register tiles, calls in turn."""
    rule = algorithms.gemm_in_registers
    print(f"{'shape':34s} {'batch':>5s} {'pixels':>6s} {'BLAS':>9s} {'registers':>9s}")
    try:
        for batch in (1, 2, 4, 8, 16, 64):
            for h, w, c, k, size, stride, pad in GEMM_SHAPES:
                x = rng.standard_normal((batch, h, w, c), np.float32)
                wt = rng.standard_normal((size, size, c, k), np.float32)
                oh, ow = (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
                b, y = np.zeros(k, np.float32), np.empty((batch, oh, ow, k), np.float32)
                pixels = []
                algorithms.gemm_in_registers = lambda n: pixels.append(n) or False
                conv.forward_gemm_into(y, None, x, wt, b, stride, pad)
                times = {False: [], True: []}
                for r in range(rounds):
                    for registers in (False, True) if r % 2 == 0 else (True, False):
                        algorithms.gemm_in_registers = lambda n, registers=registers: registers
                        times[registers].append(best(lambda: conv.forward_gemm_into(y, None, x, wt, b, stride, pad),
                                                     clock, budget=0.02, least=1))
                blas, tiles = np.median(times[False]), np.median(times[True])
                print(f"{h}x{w}x{c}->{k} {size}x{size} stride {stride:<14d} {batch:5d} {pixels[0]:6d} "
                      f"{blas * 1e6:7.0f}us {tiles * 1e6:7.0f}us  {blas / tiles:.2f}x")
    finally:
        algorithms.gemm_in_registers = rule


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    p.add_argument("--cpu-time", action="store_true", help="one thread's CPU time, not the wall clock")
    p.add_argument("--max-work", type=float, default=2e9, help="skip shapes of more FLOPs than this")
    p.add_argument("--gemm-products", action="store_true", help="im2col's products: BLAS against registers")
    args = p.parse_args()
    numba.set_num_threads(1 if args.cpu_time else args.threads)
    clock = timer(args.cpu_time)
    rng = np.random.default_rng(0)
    print(f"instruction set: {algorithms.isa()}, threads {numba.get_num_threads()}, batch {args.batch}, "
          f"{'CPU time of one thread' if args.cpu_time else 'wall clock'}")
    if args.gemm_products:
        print(f"products in registers here: {algorithms.winograd_products() == 'registers'} (OpenBLAS core "
              f"{algorithms.blas.core()}); the rule takes them below {algorithms.GEMM_REGISTER_PIXELS} pixels")
        gemm_products(rng, clock)
        return
    print(f"{'shape':28s} {'pass':8s} {'direct':>9s} {'gemm':>9s} {'winograd':>9s}  fastest")
    wins = {}
    for c, k in PAIRS:
        for size in SIZES:
            flops = 2 * args.batch * size * size * 9 * c * k
            if flops > args.max_work:
                continue
            x = rng.standard_normal((args.batch, size, size, c), np.float32)
            w = rng.standard_normal((3, 3, c, k), np.float32)
            b, y = np.zeros(k, np.float32), np.empty((args.batch, size, size, k), np.float32)
            dy, dw, db = rng.standard_normal(y.shape, np.float32), np.empty_like(w), np.empty(k, np.float32)
            for name, calls in (("forward", forward_paths(x, w, b, y)), ("weights", weight_paths(x, dy, dw, db))):
                times = {path: best(fn, clock) for path, fn in calls.items()}
                fastest = min(times, key=times.get)
                wins.setdefault((name, fastest), []).append(c)
                cells = " ".join(f"{times[path] * 1e3:8.3f}" for path in ("direct", "gemm", "winograd"))
                print(f"{size:2d}x{size:<2d} {c:3d}->{k:<3d} ({flops / 1e6:6.0f} MFLOP) {name:8s} {cells} ms  {fastest}"
                      f"  ({times['gemm'] / times['winograd']:.2f}x gemm)")
    print("input channels at which each path was fastest:")
    for (name, path), channels in sorted(wins.items()):
        print(f"  {name:8s} {path:8s} {sorted(set(channels))}")


if __name__ == "__main__":
    import sys
    from common import script
    sys.exit(script(main))
