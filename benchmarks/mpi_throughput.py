"""Training throughput of ``fit`` in however many processes this was started in, on real MNIST.

    python benchmarks/mpi_throughput.py --threads 2                      # 1 process x 2 threads
    mpiexec -n 2 python benchmarks/mpi_throughput.py --threads 1         # 2 processes x 1 thread

Runs ``fit`` for one epoch over the first ``--images`` training images (batch 64), after a
warm-up epoch, and prints (rank 0) the samples/s of the timed epoch as ``fit`` measures it (its
loop only: the evaluation after it is not counted), and, under MPI, the time of one all-reduce
of the gradient buffer alone. ``--out`` keeps the model (to compare weights between runs).
"""

import argparse
import os
import time

import numpy as np

from fastcnn import SGD, distributed
from fastcnn.data import load_dataset
from fastcnn.training import fit
from fastcnn.architectures import mnist_network
from fastcnn.kernels.jit import set_threads


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--images", type=int, default=6400)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs, after one warm-up epoch")
    p.add_argument("--no-warm-up", action="store_true", help="train the --images once, from the seed (for --out)")
    p.add_argument("--out")
    args = p.parse_args()
    world = distributed.world()
    set_threads(args.threads)
    data_dir = os.environ.get("FASTCNN_DATA")
    (x, y), (xt, yt) = load_dataset("mnist", "train", data_dir), load_dataset("mnist", "test", data_dir)
    train, test = (x[:args.images], y[:args.images]), (xt[:1000], yt[:1000])
    model = mnist_network(seed=0)
    opt = SGD(model, lr=0.07)
    if not args.no_warm_up:
        fit(model, opt, train, test, epochs=1, batch_size=64, seed=0, progress=False)
    history = fit(model, opt, train, test, epochs=args.epochs + (not args.no_warm_up), batch_size=64, seed=0,
                  progress=False, out=args.out, training=None if args.no_warm_up else
                  {"epoch": 1, "batch": 0, "totals": [0.0, 0, 0, 0.0], "history": []})
    rate = np.median([h["samples_per_s"] for h in history])
    line = f"{world.size} processes x {args.threads} threads: {rate:,.0f} samples/s"
    if world.size > 1:
        grads = model.gradients.copy()
        world.barrier()
        start = time.perf_counter()
        for _ in range(50):
            world.allreduce_gradients(grads, 1, world.size)
        ms = 1e3 * (time.perf_counter() - start) / 50
        line += f"; one all-reduce of the {grads.nbytes / 1e6:.2f} MB gradients {ms:.2f} ms"
    print(line, flush=True)


if __name__ == "__main__":
    import sys
    from common import script
    sys.exit(script(main))
