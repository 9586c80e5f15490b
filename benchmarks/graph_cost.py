"""What generality costs: each named network as a ``Sequential`` and as a graph ``Model`` of the
same chain, timed in turn in one run (a training step at batch 64, inference at batch 1000).

    python benchmarks/graph_cost.py [original deep cifar] [--rounds 7] [--threads 2]

Both run the same plan (the graph of a chain fuses as the Sequential does); what differs is the
plan's bookkeeping of each step's sources. Prints, per network and workload, the median time of
each over the rounds (each round times both, the order reversed every other round) and the
graph's time over the Sequential's. Run it alone on the machine.
"""

import argparse
import statistics

import numpy as np

import networks
from fastcnn import SGD, Input, Model
from fastcnn.architectures import ARCHITECTURES
from fastcnn.kernels.jit import set_threads
from timing import throughput  # (benchmarks/, beside networks)


def as_graph(name, shape, seed):
    """The named network's layers as a graph model: each layer called on the one before."""
    x = h = Input(shape)
    for layer in ARCHITECTURES[name].layers(shape, networks.CLASSES):
        h = layer(h)
    return Model(x, h, seed=seed)


def timed(f, seconds=0.5):
    """Seconds per call of ``f`` (after one call outside the timing), over about ``seconds``."""
    f()
    return 1 / throughput(f, 1, seconds)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("networks", nargs="*", default=["original", "deep", "cifar"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    set_threads(args.threads)
    for name in args.networks:
        shape = networks.INPUT_SHAPES[name]
        models = {"Sequential": networks.build(name, seed=0), "graph": as_graph(name, shape, seed=0)}
        assert repr(models["graph"].plan(shape)) == repr(models["Sequential"].plan(shape))
        rng = np.random.default_rng(0)
        x, y = rng.random((64, *shape), np.float32), rng.integers(0, networks.CLASSES, 64)
        big = rng.random((1000, *shape), np.float32)
        work = {}
        for kind, model in models.items():
            opt = SGD(model, 0.01)
            work[kind] = {"train": (lambda m=model, o=opt: (m.train_step(x, y), o.step())),
                          "infer": (lambda m=model: m.predict(big))}
        times = {(kind, w): [] for kind in models for w in ("train", "infer")}
        for r in range(args.rounds):
            for kind in (list(models) if r % 2 == 0 else list(models)[::-1]):
                for w, f in work[kind].items():
                    times[kind, w].append(timed(f))
        for w in ("train", "infer"):
            seq, graph = (statistics.median(times[kind, w]) for kind in ("Sequential", "graph"))
            ratios = [g / s for g, s in zip(times["graph", w], times["Sequential", w])]
            print(f"{name:8s} {w:5s} Sequential {seq * 1e3:8.2f} ms, graph {graph * 1e3:8.2f} ms: graph/Sequential "
                  f"{statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})", flush=True)


if __name__ == "__main__":
    import sys
    from common import script
    sys.exit(script(main))
