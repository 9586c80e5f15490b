"""Where a training step of each named network goes: each step of its plan, forward and backward,
the loss and the optimizer's update; then the total per kind of step.

    python benchmarks/profile_plan.py [original deep cifar resnet] [--batch 64] [--threads 2] [--rounds 30]

Random images, the plan's own buffers, the kernels' unchecked cores as ``fit`` runs them; the
median of each part over ``rounds`` steps after three warm-up steps. GFLOP/s are given for the
steps with a convolution or a dense layer, from the FLOPs of a direct convolution
(``networks.flops``: the same count as ``compare.py``); "the plan between its steps" is what its
``forward`` and ``backward`` take besides their steps (in a graph, the sums of the gradients of a
value that several steps read). Below each table, a whole step (the plan's ``train_step`` and the
update), timed in turn with the parts, for comparison with their sum. Run it alone on the machine.
"""

import argparse
import time
from collections import defaultdict

import numpy as np

import networks
from fastcnn import SGD, FastCNNError
from fastcnn.plan import Run
from fastcnn.kernels.jit import set_threads


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("networks", nargs="*", metavar="NETWORK", help=f"any of {', '.join(networks.INPUT_SHAPES)} (default: all)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    unknown = [n for n in args.networks if n not in networks.INPUT_SHAPES]
    if unknown:
        p.error(f"unknown network {', '.join(unknown)}: expected any of {', '.join(networks.INPUT_SHAPES)}")
    if args.batch < 1 or args.rounds < 1:
        p.error("--batch and --rounds: expected numbers >= 1")
    try:
        set_threads(args.threads)
    except FastCNNError as e:
        p.error(str(e))
    for name in args.networks or networks.INPUT_SHAPES:
        print(profile(name, args.batch, args.threads, args.rounds) + "\n")


def profile(name, batch, threads, rounds):
    """The table of one network, as text."""
    shape = networks.INPUT_SHAPES[name]
    model = networks.build(name)
    layers = networks.describe(model, shape)
    plan, opt = model.plan(shape), SGD(model, lr=0.01)
    x = np.random.default_rng(0).random((batch, *shape), np.float32)
    y = np.arange(batch) % networks.CLASSES
    k, ws = plan.kernels, plan.workspace(batch, train=True)

    def whole_step():
        plan.train_step(x, y)
        opt.step()

    for _ in range(3):
        whole_step()
    n = len(plan.steps)
    whole, forward, backward = np.zeros(rounds), np.zeros((rounds, n)), np.full((rounds, n), np.nan)
    loss, update, between = np.zeros(rounds), np.zeros(rounds), np.zeros(rounds)
    times = stopwatches(plan)  # from here on, the plan's own forward and backward time each step
    for r in range(rounds):
        # A whole step, then its parts: in turn, as this machine's speed wanders from one minute
        # to the next (timed apart, the two differed by 10-20% on 2026-12-07 and took the same in turn).
        t = time.perf_counter()
        whole_step()
        whole[r] = time.perf_counter() - t
        times.clear()
        t = time.perf_counter()
        logits = plan.forward(x, ws, Run(True, 0, r))
        passes = time.perf_counter() - t
        t = time.perf_counter()
        k.softmax_cross_entropy_into(ws[-1]["dlogits"], ws[-1]["row_loss"], logits, y)
        loss[r] = time.perf_counter() - t
        t = time.perf_counter()
        plan.backward(ws[-1]["dlogits"], ws)
        passes += time.perf_counter() - t
        between[r] = passes - sum(times.values())  # the plan's own work: no step's stopwatch sees it
        t = time.perf_counter()
        opt.step()
        update[r] = time.perf_counter() - t
        for (phase, i), seconds in times.items():
            (forward if phase == "forward" else backward)[r, i] = seconds

    forward, backward = np.median(forward, axis=0), np.nan_to_num(np.median(backward, axis=0))
    total = forward.sum() + backward.sum() + np.median(loss) + np.median(update) + np.median(between)
    flops = networks.flops(layers)
    lines = [f"{name}: batch {batch}, {threads} thread{'s' * (threads > 1)}, median of {rounds} steps; "
             f"{flops['train'] / 1e6:.2f} MFLOP an image to train",
             f"{'step':58s} {'forward ms':>10s} {'GFLOP/s':>8s} {'backward ms':>11s} {'GFLOP/s':>8s} {'share':>6s}"]
    kinds = defaultdict(float)
    for i, step in enumerate(plan.steps):
        span = range(step.index, step.index + len(step.layers))
        f_flop = sum(networks.layer_flops(layers[j]) for j in span) * batch
        b_flop = sum(networks.layer_flops(layers[j]) * networks.backward_factor(layers, j) for j in span) * batch
        what = f"{step!r} {'x'.join(map(str, step.in_shape))} -> {'x'.join(map(str, step.out_shape))}"
        lines.append(f"{what:58s} {forward[i] * 1e3:10.3f} {gflops(f_flop, forward[i]):>8s} "
                     f"{backward[i] * 1e3:11.3f} {gflops(b_flop, backward[i]):>8s} "
                     f"{100 * (forward[i] + backward[i]) / total:5.1f}%")
        kinds[type(step).__name__] += forward[i] + backward[i]
    for what, seconds in (("softmax cross-entropy", np.median(loss)), ("SGD update", np.median(update)),
                          ("the plan between its steps (gradient sums, Python)", np.median(between))):
        lines.append(f"{what:58s} {seconds * 1e3:10.3f} {'':>8s} {'':>11s} {'':>8s} {100 * seconds / total:5.1f}%")
        kinds[what] += seconds
    lines.append(f"{'the sum of the parts':58s} {total * 1e3:10.3f} ms = {flops['train'] * batch / total / 1e9:.1f} "
                 f"GFLOP/s; a whole step, timed in turn with the parts: {np.median(whole) * 1e3:.3f} ms")
    lines.append(f"{'by kind of step':58s} {'ms':>10s} {'share':>6s}")
    for kind, seconds in sorted(kinds.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {kind:56s} {seconds * 1e3:10.3f} {100 * seconds / total:5.1f}%")
    return "\n".join(lines)


def stopwatches(plan):
    """Wrap each training step's forward and backward (on the step objects, so the plan runs them
    in its own order, a graph's too) in a stopwatch; returns the dict they fill: (phase, i) -> s."""
    times = {}
    for i, step in enumerate(plan.steps):
        for phase in ("forward", "backward"):
            def timed(*args, _run=getattr(step, phase), _key=(phase, i)):
                t = time.perf_counter()
                out = _run(*args)
                times[_key] = time.perf_counter() - t
                return out
            setattr(step, phase, timed)
    return times


def gflops(flop, seconds):
    return f"{flop / seconds / 1e9:.1f}" if flop and seconds > 0 else ""


if __name__ == "__main__":
    import sys
    from common import script
    sys.exit(script(main))
