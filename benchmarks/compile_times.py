"""What a first run costs: compiling the kernels (cold: an empty cache) or loading them (warm).

For each named network, in fresh processes with a cache folder of their own: import fastcnn,
build the network, its first training step (forward, loss, backward, SGD) and its first predict,
once with the cache empty and once with it filled; then ``fastcnn predict`` on a fresh install (a
saved model, one picture, an empty cache) and again. Beside wall time it gives the CPU time of
the processes (user + sys, helpers included): on a busy machine the wall time grows and the CPU
time much less. Per kernel: what compiling it cost (CPU seconds, from the cache's records).

    python benchmarks/compile_times.py                      # every named network, this CPU
    python benchmarks/compile_times.py --cpu haswell        # code for an AVX2 CPU (Haswell), on this one
    python benchmarks/compile_times.py --processes 1        # without helper processes
    python benchmarks/compile_times.py --fit                # also: the cost model against the records
    python benchmarks/compile_times.py --passes             # where each kernel's compile goes (one process)
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NETWORKS = {"original": (28, 28, 1), "deep": (28, 28, 1), "cifar": (32, 32, 3), "resnet": (32, 32, 3)}
# NUMBA_CPU_NAME alone keeps this CPU's features (AVX-512 included): the features must go too.
CPUS = {"host": {}, "haswell": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "OPENBLAS_CORETYPE": "Haswell"}}

# In the child: import, build, first training step, first predict; the times, and the kernels'
# compile times as the cache recorded them. With a third argument, where each kernel's compile went
# (PASSES, below).
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
if len(sys.argv) > 3:
    exec(sys.argv[3])
import numpy as np
import fastcnn
from fastcnn.architectures import ARCHITECTURES
times = {"import": time.perf_counter() - t0}
name, shape = sys.argv[1], tuple(json.loads(sys.argv[2]))
model = ARCHITECTURES[name].build(shape, 10, seed=0)
opt = fastcnn.SGD(model, 0.01)
x, y = np.zeros((64, *shape), np.float32), np.zeros(64, np.int64)
t = time.perf_counter()
model.train_step(x, y)
opt.step()
times["first training step"] = time.perf_counter() - t
t = time.perf_counter()
model.predict(x[:1])
times["first predict"] = time.perf_counter() - t
if len(sys.argv) > 3:
    times["passes"] = KERNELS
print(json.dumps(times))
"""

# Listens to Numba's compiler events (numba.core.event) in the child: for each kernel, the CPU
# seconds (the compiling thread's) of its compile and of its parts: LLVM (every call into llvmlite:
# optimising and generating code), Numba's type inference, its parfor passes (finding the prange
# loops, inlining the helpers, and lowering the loops to LLVM IR as functions of their own, LLVM's
# own work excluded), and the rest of Numba's Python.
PASSES = r"""
import time
from numba.core import event
KERNELS, _stack, _passes, _llvm = {}, [], [], [None]
def _kind(name):
    if "type_inference" in name:
        return "typing"
    if "parfor" in name or "inline" in name:
        return "parfor passes"
    return None
class _Compile(event.Listener):
    def on_start(self, ev):
        f = ev.data["dispatcher"].py_func
        _stack.append(dict(name=f"{f.__module__.rsplit('.', 1)[-1]}.{f.__qualname__}", t=time.thread_time(),
                           llvm=0.0, typing=0.0, parfor=0.0))
    def on_end(self, ev):
        k = _stack.pop()
        if not _stack and ev.data["dispatcher"].py_func.__module__.startswith("fastcnn.kernels."):
            cpu = time.thread_time() - k["t"]
            KERNELS[k["name"]] = {"cpu": cpu, "LLVM": k["llvm"], "typing": k["typing"], "parfor passes": k["parfor"],
                                  "other Numba": cpu - k["llvm"] - k["typing"] - k["parfor"]}
class _Pass(event.Listener):
    def on_start(self, ev):
        _passes.append([ev.data["name"].split(" ")[0], time.thread_time(), 0.0, 0.0])
    def on_end(self, ev):
        name, t, nested, llvm = _passes.pop()
        spent = time.thread_time() - t
        kind = _kind(name)
        if kind and _stack:
            _stack[0]["typing" if kind == "typing" else "parfor"] += spent - nested - llvm
        if _passes:
            _passes[-1][2] += spent  # (its LLVM time is in there: not the parent's own)
class _Llvm(event.Listener):
    def on_start(self, ev):
        _llvm[0] = time.thread_time()
    def on_end(self, ev):
        spent = time.thread_time() - _llvm[0]
        if _stack:
            _stack[0]["llvm"] += spent
        if _passes:
            _passes[-1][3] += spent
event.register("numba:compile", _Compile())
event.register("numba:run_pass", _Pass())
event.register("numba:llvm_lock", _Llvm())
"""

# Writes what `fastcnn predict` reads: an untrained original network and one picture of a digit.
PREDICT_FILES = r"""
import sys, numpy as np
from PIL import Image
from fastcnn.architectures import mnist_network
mnist_network(seed=0).save(sys.argv[1])
digit = np.zeros((28, 28), np.uint8)
digit[6:22, 12:16] = 255
Image.fromarray(digit).save(sys.argv[2])
"""


def measured(command, env):
    """(stdout, wall seconds, CPU seconds of the command and everything it started)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return out, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def records(cache):
    """{kernel: CPU seconds} that compiling cost, from the cache's compile-times.json."""
    found = {}
    for path in Path(cache).rglob("compile-times.json"):
        for kernel, sigs in json.loads(path.read_text())["kernels"].items():
            found[kernel] = found.get(kernel, 0.0) + sum(sigs.values())
    return found


def network(name, env, passes=False):
    """Cold and warm runs of ``name``: ({step: seconds}, wall, cpu) each, and the kernel records."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(env, FASTCNN_CACHE_DIR=cache)
        command = [sys.executable, "-c", CHILD, name, json.dumps(NETWORKS[name])] + [PASSES] * passes
        runs = []
        for _ in ("cold", "warm"):
            out, wall, cpu = measured(command, env)
            runs.append((json.loads(out.strip().splitlines()[-1]), wall, cpu))
        return runs, records(cache)


def predict_cli(env):
    """``fastcnn predict`` with an empty cache, then again: (wall, cpu) each."""
    with tempfile.TemporaryDirectory() as work:
        env = dict(env, FASTCNN_CACHE_DIR=os.path.join(work, "cache"))
        model, picture = os.path.join(work, "model.npz"), os.path.join(work, "digit.png")
        subprocess.run([sys.executable, "-c", PREDICT_FILES, model, picture], env=env, check=True)
        fastcnn = os.path.join(os.path.dirname(sys.executable), "fastcnn")
        return [measured([fastcnn, "predict", model, picture], env)[1:] for _ in ("cold", "warm")]


def fit(all_records):
    """The cost model (compiling._model_seconds: a * (instructions + k * loops) ** b + d * pranges)
    refitted to these records, for relative errors: its coefficients and, per kernel, measured
    against refitted, against the model as it is and against compiling.REFERENCE_SECONDS; then
    these records as a REFERENCE_SECONDS table (the estimates' relative costs)."""
    import numpy as np
    from scipy.optimize import least_squares

    from fastcnn import compiling
    from fastcnn.kernels import jit
    names = sorted(k for k in all_records if k in jit.KERNELS)
    instructions, loops, pranges = np.array([compiling._source_size(jit.KERNELS[k].py_func) for k in names], float).T
    seconds = np.array([all_records[k] for k in names])

    def model(p):
        return p[0] * (instructions + p[1] * loops) ** p[2] + p[3] * pranges

    p = least_squares(lambda p: model(p) / seconds - 1, [6e-5, 28, 1.5, 0.35],
                      bounds=([0, 0, 0.5, 0], [1, 200, 3, 3])).x
    print(f"\ncost model refitted: {p[0]:.2e} * (instructions + {p[1]:.1f} * loops) ** {p[2]:.2f} + "
          f"{p[3]:.2f} * pranges (CPU seconds)")
    print(f"  {'kernel':44s} {'measured':>9s} {'refitted':>9s} {'model now':>9s} {'reference':>9s}")
    for name, s, fitted in zip(names, seconds, model(p)):
        reference = compiling.REFERENCE_SECONDS.get(name)
        print(f"  {name:44s} {s:8.2f}s {fitted:8.2f}s {compiling._model_seconds(name):8.2f}s "
              + (f"{reference:8.2f}s" if reference is not None else f"{'-':>9s}"))
    print("\nthese records as compiling.REFERENCE_SECONDS:\n{" + ", ".join(
        f'"{name}": {s:.2f}' for name, s in zip(names, seconds)) + "}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", nargs="+", choices=tuple(NETWORKS), default=list(NETWORKS))
    p.add_argument("--cpu", choices=tuple(CPUS), default="host", help="compile for this CPU, or for an AVX2 one")
    p.add_argument("--processes", type=int, help="processes compiling at once (default: one per core)")
    p.add_argument("--fit", action="store_true", help="also refit the cost model to the kernels' compile times")
    p.add_argument("--passes", action="store_true",
                   help="where each kernel's compile goes: LLVM, Numba's typing, its parfor passes (in one process)")
    args = p.parse_args()
    if args.passes:
        args.processes = 1  # every compile in the process that listens
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTCNN_CACHE", "NUMBA_CPU"))}
    env.update(CPUS[args.cpu])
    if args.processes is not None:
        env["FASTCNN_COMPILE_PROCESSES"] = str(args.processes)
    cpu = subprocess.run([sys.executable, "-c", "from fastcnn.kernels import jit; print(jit.cpu_key())"], env=env,
                         check=True, capture_output=True, text=True).stdout.strip()
    print(f"code for {cpu} ({args.cpu}), {os.cpu_count()} cores, "
          f"{'one process per core' if args.processes is None else f'{args.processes} processes'} compiling; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'':18s} {'import':>7s} {'first step':>11s} {'first predict':>14s} {'total (wall)':>13s} {'CPU':>7s}")
    all_records = {}
    for name in args.networks:
        runs, kernels = network(name, env, args.passes)
        all_records.update(kernels)
        for label, (steps, wall, cpu_seconds) in zip(("cold", "warm"), runs):
            print(f"{name + ' ' + label:18s} {steps['import']:6.2f}s {steps['first training step']:10.2f}s "
                  f"{steps['first predict']:13.2f}s {wall:12.2f}s {cpu_seconds:6.1f}s")
        passes = runs[0][0].get("passes", {})
        for kernel, seconds in sorted(kernels.items(), key=lambda kv: -kv[1]):
            split = passes.get(kernel)
            where = "" if split is None else "; of it " + ", ".join(
                f"{part} {split[part]:.2f}s" for part in ("LLVM", "typing", "parfor passes", "other Numba"))
            print(f"    {kernel:46s} {seconds:6.2f}s CPU to compile{where}")
    (cold_wall, cold_cpu), (warm_wall, warm_cpu) = predict_cli(env)
    print(f"{'fastcnn predict':18s} cold {cold_wall:.2f}s wall, {cold_cpu:.1f}s CPU; warm {warm_wall:.2f}s wall, "
          f"{warm_cpu:.1f}s CPU (the original network, one picture)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.fit:
        fit(all_records)


if __name__ == "__main__":
    from common import script
    sys.exit(script(main))
