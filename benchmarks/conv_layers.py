"""Each convolution of a named network alone, forward and backward, against PyTorch's ``Conv2d``:
where a network's speed against PyTorch is decided.

    python benchmarks/conv_layers.py [resnet deep ...] [--python PEERS/bin/python] [--threads 2]
        [--batch 64] [--seconds 0.5] [--rounds 5]

fastcnn runs its kernels' unchecked cores, ``conv2d_forward_into`` then ``conv2d_backward_into``,
by the path ``kernels.algorithms`` chooses (without the BatchNorm, ReLU or pool that a network
runs fused with them); PyTorch runs its ``Conv2d`` forward and ``backward``, in NCHW and in
channels_last, each in a worker of ``--python`` (workers.py). Every distinct convolution of the
network once (shape, kernel, stride, padding), with its input gradient only where the network
needs one (``networks.backward_factor``: not the first layer's). A round times each convolution
on fastcnn and on each PyTorch layout, one after the other (the order reversed every other round),
each timing the median of a call over ``--seconds``; printed are the medians over the rounds and
fastcnn's speed over PyTorch's faster layout of the same round (median and range over the
rounds). Run it alone on the machine: it is noisy, and so is the ratio of one round.
"""

import argparse
import os
import statistics
import sys
import tempfile

import numpy as np

import networks
from compare import worker_env
from engines import Torch
from timing import latency
from workers import Worker, WorkerError, serve

LAYOUTS = {"torch": "NCHW", "torch-channels-last": "channels_last"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("networks", nargs="*", metavar="NETWORK", help=f"any of {', '.join(networks.INPUT_SHAPES)} "
                                                                  "(default: resnet)")
    p.add_argument("--python", default=sys.executable, help="the interpreter with PyTorch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=0.5, help="each timing's length")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--worker", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        serve(lambda: TorchConvolutions(args.threads, channels_last=args.worker == "torch-channels-last"))
        return
    unknown = [n for n in args.networks if n not in networks.INPUT_SHAPES]
    if unknown:
        p.error(f"unknown network {', '.join(unknown)}: expected any of {', '.join(networks.INPUT_SHAPES)}")
    if args.threads < 1 or args.batch < 1 or args.rounds < 1 or args.seconds <= 0:
        p.error("--threads, --batch and --rounds: expected numbers >= 1; --seconds: a number > 0")
    from fastcnn import FastCNNError
    from fastcnn.kernels.jit import set_threads
    try:
        set_threads(args.threads)
    except FastCNNError as e:
        p.error(str(e))
    for name in args.networks or ["resnet"]:
        print(report(name, measure(name, args), args) + "\n")


def convolutions(name):
    """The distinct convolutions of a named network, each a dict of the layer's fields plus
    ``needs_dx`` and ``count`` (how many layers of the network it stands for)."""
    layers = networks.describe(networks.build(name), networks.INPUT_SHAPES[name])
    found = {}
    for i, layer in enumerate(layers):
        if layer["kind"] != "Conv2D":
            continue
        conv = {k: layer[k] for k in ("in", "out", "kernel_size", "stride", "pad")}
        conv["needs_dx"] = networks.backward_factor(layers, i) == 2
        key = repr(sorted(conv.items()))
        found.setdefault(key, dict(conv, count=0))["count"] += 1
    return list(found.values())


def measure(name, args):
    """{"convolutions": [...], "seconds": {engine: [[per convolution] per round]}, "missing": {engine: why}}."""
    convs = convolutions(name)
    fastcnn = FastcnnConvolutions(args.batch)
    seconds, missing = {"fastcnn": []}, {}
    with tempfile.TemporaryDirectory(prefix="fastcnn-conv-layers-") as folder:
        workers = {}
        for engine in LAYOUTS:
            command = [args.python, os.path.abspath(__file__), "--worker", engine, "--threads", str(args.threads)]
            try:
                workers[engine] = Worker(command, worker_env(engine, args.threads),
                                         os.path.join(folder, f"{engine}.log"))
                workers[engine].ready()
                seconds[engine] = []
            except (OSError, WorkerError) as e:
                missing[engine] = str(e)
                workers.pop(engine, None)
        try:
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                for times in seconds.values():
                    times.append([])
                for conv in convs:  # each convolution on every engine in turn (the order reversed every other round)
                    for engine in (["fastcnn", *workers] if r % 2 == 0 else [*workers, "fastcnn"]):
                        if engine == "fastcnn":
                            seconds[engine][-1].append(fastcnn.time(conv, args.seconds))
                            continue
                        try:
                            seconds[engine][-1].append(workers[engine].ask("time", timeout=600, conv=conv,
                                                                           batch=args.batch, seconds=args.seconds))
                        except WorkerError as e:
                            missing[engine] = str(e)
                            seconds.pop(engine)
                            workers.pop(engine).close()
        finally:
            for worker in workers.values():
                worker.close()
    return {"convolutions": convs, "seconds": seconds, "missing": missing}


def report(name, measured, args):
    convs, seconds = measured["convolutions"], measured["seconds"]
    peers = [e for e in LAYOUTS if e in seconds]
    lines = [f"## {name}: each convolution alone, forward and backward, batch {args.batch}, {args.threads} "
             f"thread{'s' * (args.threads > 1)}, ms (median of {args.rounds} round{'s' * (args.rounds > 1)})", "",
             "| " + " | ".join(["convolution", "fastcnn's path", "fastcnn", *(f"PyTorch {LAYOUTS[e]}" for e in peers),
                                 *(["fastcnn x (PyTorch's faster layout)"] if peers else [])]) + " |",
             "|---|---|---:|" + "---:|" * len(peers) + ("---:|" if peers else "")]
    for j, conv in enumerate(convs):
        ms = {e: statistics.median(rounds[j] for rounds in seconds[e]) * 1e3 for e in seconds}
        row = [describe(conv), fastcnn_path(conv, args.batch), f"{ms['fastcnn']:.2f}"]
        row += [f"{ms[e]:.2f}" for e in peers]
        if peers:
            ratios = [min(seconds[e][r][j] for e in peers) / seconds["fastcnn"][r][j]
                      for r in range(len(seconds["fastcnn"]))]
            row.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
        lines.append("| " + " | ".join(row) + " |")
    for engine, why in measured["missing"].items():
        lines.append(f"\nPyTorch {LAYOUTS[engine]}: missing ({why})")
    return "\n".join(lines)


def describe(conv):
    (h, w, c), (oh, ow, k), size = conv["in"], conv["out"], conv["kernel_size"]
    text = f"{h}x{w}x{c} -> {oh}x{ow}x{k}, {size}x{size} stride {conv['stride']}"
    return text + ("" if conv["needs_dx"] else ", no input gradient") + (f" (x{conv['count']})" if conv["count"] > 1
                                                                         else "")


def fastcnn_path(conv, batch):
    from fastcnn.kernels import algorithms
    x_shape, w_shape = (batch, *conv["in"]), (conv["kernel_size"], conv["kernel_size"], conv["in"][2], conv["out"][2])
    forward = algorithms.conv_forward(x_shape, w_shape, conv["stride"], conv["pad"])
    weight = algorithms.conv_weight_gradient(x_shape, w_shape, conv["stride"], conv["pad"])
    return forward if forward == weight else f"{forward}, weight gradient {weight}"


class FastcnnConvolutions:
    """fastcnn's side, in this process: the kernels' unchecked cores on random data."""

    def __init__(self, batch):
        from fastcnn import kernels  # (not at the top: the workers run in the peers' interpreter)
        self.kernels, self.batch = kernels, batch

    def time(self, conv, seconds):
        k = self.kernels
        rng = np.random.default_rng(0)
        size, stride, pad = conv["kernel_size"], conv["stride"], conv["pad"]
        x = rng.random((self.batch, *conv["in"]), np.float32)
        w = (rng.standard_normal((size, size, conv["in"][2], conv["out"][2])) * 0.1).astype(np.float32)
        b = np.zeros(conv["out"][2], np.float32)
        y = np.empty((self.batch, *conv["out"]), np.float32)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = np.empty_like(x) if conv["needs_dx"] else None
        dw, db = np.empty_like(w), np.empty_like(b)

        def step():
            k.conv2d_forward_into(y, x, w, b, stride, pad)
            k.conv2d_backward_into(dx, dw, db, dy, x, w, stride, pad)

        step()  # compiles, or loads from the cache
        return latency(step, seconds)


class TorchConvolutions(Torch):
    """PyTorch's side, in a worker: ``Conv2d`` forward and ``backward`` in one memory layout
    (compare.py's PyTorch engine, its threads set up the same way)."""

    def op_time(self, conv, batch, seconds):
        torch = self.torch
        torch.manual_seed(0)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        (h, w, c), k = conv["in"], conv["out"][2]
        layer = torch.nn.Conv2d(c, k, conv["kernel_size"], conv["stride"], conv["pad"]).to(memory_format=fmt)
        x = torch.rand(batch, c, h, w).contiguous(memory_format=fmt).requires_grad_(conv["needs_dx"])
        dy = torch.randn_like(layer(x))

        def step():
            layer.weight.grad = layer.bias.grad = x.grad = None  # as zero_grad(set_to_none=True) does
            layer(x).backward(dy)

        step()
        return latency(step, seconds)


if __name__ == "__main__":
    from common import script
    sys.exit(script(main))
