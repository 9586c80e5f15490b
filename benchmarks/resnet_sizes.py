"""What the size of the residual network costs: a training step (batch 128, the recipe's) of the
``resnet`` named network and of deeper or narrower ones of the same shape, timed in turn in one run.

    python benchmarks/resnet_sizes.py [--threads 2] [--rounds 5] [--seconds 1]

Prints, per network, the median step time over the rounds (each round times every network for
``seconds``, the order reversed every other round), the time of an epoch of 55,000 images at that
speed, and the parameters. Run it alone on the machine.
"""

import argparse
import statistics

import numpy as np

from fastcnn import SGD, Model
from fastcnn.architectures import resnet
from fastcnn.kernels.jit import set_threads
from timing import throughput

CANDIDATES = {  # name -> resnet()'s width and blocks per stage
    "resnet (ResNet-8, 32 to 128 channels)": dict(width=32, blocks=(1, 1, 1)),
    "ResNet-8, 16 to 64 channels": dict(width=16, blocks=(1, 1, 1)),
    "ResNet-14, 16 to 64 channels": dict(width=16, blocks=(2, 2, 2)),
    "ResNet-20, 16 to 64 channels": dict(width=16, blocks=(3, 3, 3)),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="length of one timing")
    args = p.parse_args()
    set_threads(args.threads)
    rng = np.random.default_rng(0)
    x, y = rng.random((128, 28, 28, 1), np.float32), rng.integers(0, 10, 128)
    models, steps = {}, {}
    for name, size in CANDIDATES.items():
        model = models[name] = Model(*resnet((28, 28, 1), 10, **size), seed=0)
        opt = SGD(model, 0.1, momentum=0.9)
        steps[name] = lambda m=model, o=opt: (m.train_step(x, y), o.step())
        steps[name]()  # compiles
    times = {name: [] for name in steps}
    for r in range(args.rounds):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            times[name].append(1 / throughput(steps[name], 1, args.seconds))
    for name, seconds in times.items():
        s = statistics.median(seconds)
        print(f"{name:40s} {s * 1e3:7.1f} ms a step, {55_000 / 128 * s:5.1f} s an epoch of 55,000, "
              f"{models[name].parameters.size:,} parameters")


if __name__ == "__main__":
    import sys
    from common import script
    sys.exit(script(main))
