"""Training beside another program that keeps one core busy: the kernels' thread count and
OpenMP's wait policy.

Fresh processes, in turn, for each way of running (all threads with libgomp's default wait,
all threads with ``OMP_WAIT_POLICY=passive``, one thread fewer than the cores), alone and beside
a Python loop spinning on one core: the median time of the original network's and ``resnet``'s
training step (batch 64) and of ``predict`` of one image. A kernel's threads wait for each other
at its end; a thread whose core the other program holds keeps the rest waiting for its turn.

    python benchmarks/busy_core.py [--rounds 3] [--short]

Run it alone on the machine (the busy loop is the only other work it means to measure).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

CHILD = r"""
import json, os, subprocess, sys, time
import numpy as np
sys.path.insert(0, os.environ["BENCHMARKS"])
import networks
from fastcnn import SGD
from fastcnn.architectures import mnist_network
from fastcnn.kernels.jit import set_threads
set_threads(int(os.environ["THREADS"]))
steps = {}
for name in ("original", "resnet"):
    shape = networks.INPUT_SHAPES[name]
    model = networks.build(name)
    plan, opt = model.plan(shape), SGD(model, lr=0.01)
    x, y = np.random.default_rng(0).random((64, *shape), np.float32), np.arange(64) % networks.CLASSES
    def step(plan=plan, opt=opt, x=x, y=y):
        plan.train_step(x, y)
        opt.step()
    for _ in range(3):
        step()
    steps[name] = step
one = mnist_network(seed=0)
one.eval()
image = np.random.default_rng(1).random((1, 28, 28, 1), np.float32)
one.predict(image)
busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if sys.argv[1] == "busy" else None
time.sleep(0.2)
out = {}
short = os.environ["SHORT"] == "1"
for name, fn, n in (("original step, ms", steps["original"], 5 if short else 100),
                    ("resnet step, ms", steps["resnet"], 2 if short else 12),
                    ("one image, us", lambda: one.predict(image), 20 if short else 2000)):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    out[name] = float(np.median(times)) * (1e6 if "us" in name else 1e3)
if busy is not None:
    busy.kill()
print(json.dumps(out))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--short", action="store_true", help="a few calls each: the script's own test")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    fewer = max(1, cores - 1)
    ways = {f"{cores} threads": {"THREADS": str(cores)},
            f"{cores} threads, OMP_WAIT_POLICY=passive": {"THREADS": str(cores), "OMP_WAIT_POLICY": "passive"},
            f"{fewer} thread{'s' * (fewer > 1)}": {"THREADS": str(fewer)}}
    here = os.path.dirname(os.path.abspath(__file__))
    results = {(way, beside): [] for way in ways for beside in ("alone", "busy")}
    for r in range(args.rounds):
        for way, env in ways.items():
            for beside in ("alone", "busy"):
                run = subprocess.run([sys.executable, "-c", CHILD, beside], capture_output=True, text=True,
                                     env=dict(os.environ, BENCHMARKS=here, SHORT=str(int(args.short)), **env))
                if run.returncode:
                    sys.exit(run.stderr[-2000:])
                results[(way, beside)].append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(f"round {r + 1} of {args.rounds} done at {time.strftime('%H:%M:%S')}", file=sys.stderr)
    print(f"{'':52s} {'original step, ms':>22s} {'resnet step, ms':>22s} {'one image, us':>22s}")
    for (way, beside), runs in results.items():
        cells = [f"{np.median([r[k] for r in runs]):.1f} ({min(r[k] for r in runs):.1f}-{max(r[k] for r in runs):.1f})"
                 for k in runs[0]]
        print(f"{way + ', ' + ('alone' if beside == 'alone' else 'one core busy'):52s} "
              + " ".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    from common import script
    sys.exit(script(main))
