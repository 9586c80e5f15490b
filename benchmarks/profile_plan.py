"""Where a training step of a named network goes: each step of its plan, forward and backward.

    python benchmarks/profile_plan.py [original|deep|cifar] [--batch 64] [--rounds 30]

Random images, the plan's own buffers, the kernels' unchecked cores as ``fit`` runs them; the
mean over ``rounds`` steps after three warm-up steps. Run it alone on the machine.
"""

import argparse
import time

import numpy as np

from fastcnn.architectures import ARCHITECTURES
from fastcnn.plan import Run


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("network", nargs="?", default="deep", choices=ARCHITECTURES)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    shape = (32, 32, 3) if args.network == "cifar" else (28, 28, 1)
    plan = ARCHITECTURES[args.network].build(shape, 10).plan(shape)
    x = np.random.default_rng(0).random((args.batch, *shape), np.float32)
    y = np.arange(args.batch) % 10
    k, ws = plan.kernels, plan.workspace(args.batch, train=True)
    for _ in range(3):
        plan.train_step(x, y)
    forward, backward = np.zeros(len(plan.steps)), np.zeros(len(plan.steps))
    for r in range(args.rounds):
        h = x
        for i, (step, buffers) in enumerate(zip(plan.steps, ws)):
            t = time.perf_counter()
            h = step.forward(k, h, buffers, Run(True, 0, r))
            forward[i] += time.perf_counter() - t
        k.softmax_cross_entropy_into(ws[-1]["dlogits"], ws[-1]["row_loss"], h, y)
        d = ws[-1]["dlogits"]
        for i in reversed(range(len(plan.steps))):
            t = time.perf_counter()
            d = plan.steps[i].backward(k, d, ws[i])
            backward[i] += time.perf_counter() - t
            if not plan.steps[i].needs_input_grad:
                break
    for step, f, b in zip(plan.steps, forward, backward):
        print(f"{step!r:48s} forward {f / args.rounds * 1e3:7.3f} ms  backward {b / args.rounds * 1e3:7.3f} ms")
    print(f"{(forward.sum() + backward.sum()) / args.rounds * 1e3:.2f} ms a step of {args.batch}")


if __name__ == "__main__":
    main()
