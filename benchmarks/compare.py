"""fastcnn against PyTorch (eager, channels_last, torch.compile), Keras/TensorFlow and ONNX Runtime,
on the named networks, in one interleaved run. Prints one table per network and workload.

    python benchmarks/compare.py [--networks original,deep,cifar] [--engines ...] [--threads 2]
        [--seconds 2] [--rounds 5] [--python /path/to/peers/bin/python] [--json results.json]

Every network is written once, in ``fastcnn.architectures``; the peers build the same layers
with their own (``networks.describe``, ``engines.py``), on the same random data: 28x28x1 images,
32x32x3 for ``cifar``. Workloads: a training step at ``--batch`` (samples/s), inference at batch
1000 (images/s), one image (latency), and for ``original`` one epoch of each engine's real loop
(fastcnn's ``fit``, Keras's ``model.fit``, a PyTorch loop over a shuffled tensor).

The machine is noisy, so the engines are measured in one interleaved run: each has a worker
process for the whole run, and every round times each workload on each engine in turn (one at a
time, the others idle, after a ``--pause``; the order reversed every other round), with NumPy's
SGEMM as the machine's ceiling at the start of each round. The idle workers' CPU time is read
from /proc during every timing, and the most any used is reported: none should spin. Figures are medians over the rounds, with their
range; "fastcnn x" is fastcnn's speed over the engine's, taken round by round, and "% of
ceiling" is the engine's GFLOP/s over that round's SGEMM ceiling with the same threads. FLOPs
are those of a direct convolution from the layer shapes (``networks.flops``). Compiling and
tracing are not in any rate: each workload's first call is reported on its own.

PyTorch, TensorFlow and ONNX Runtime are optional: an engine that does not import in
``--python`` is reported missing. ``--json`` writes every figure of every round. Run it alone
on the machine; ``--seconds 0.5 --rounds 2 --loop-images 6400`` checks quickly that all runs.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import networks  # fastcnn is imported only where a network is built: in the coordinator, never in a peer's worker
from engines import ENGINES, SGEMM_SIZE
from workers import Worker, WorkerError, serve

WORKLOADS = ("train", "infer", "one", "loop")
LOOP_NETWORKS = ("original",)  # the real loop is measured on the original network only
ENGINE_NAMES = ("fastcnn", "fastcnn-1thread", "torch", "torch-channels-last", "torch-compile", "keras",
                "onnxruntime")
PEERS = ("torch", "torch-channels-last", "torch-compile", "keras", "onnxruntime")
LABELS = {"fastcnn": "fastcnn {v}", "fastcnn-1thread": "fastcnn {v}, 1 thread",
          "torch": "PyTorch {v} eager (NCHW)", "torch-channels-last": "PyTorch {v} eager, channels_last",
          "torch-compile": "torch.compile {v} (NCHW)", "keras": "Keras {v}", "onnxruntime": "ONNX Runtime {v}",
          "sgemm": "SGEMM ceiling", "sgemm-1thread": "SGEMM ceiling, 1 thread"}
# What each library compiles or dispatches for, forced (documented by Numba, OpenBLAS, PyTorch and
# oneDNN, which PyTorch and TensorFlow use): on an AVX-512 machine, NUMBA_CPU_NAME=haswell
# NUMBA_CPU_FEATURES=-avx512f OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
# run AVX2 code throughout (ONNX Runtime has no such switch). NUMBA_CPU_NAME alone is not enough:
# Numba then still takes the host's features, AVX-512 included, and LLVM emits AVX-512 code.
OVERRIDES = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY",
             "ONEDNN_MAX_CPU_ISA")
CEILING = "ceiling"  # the "network" of the SGEMM workers, and its one workload:
SGEMM = "sgemm"
CHECK_TOLERANCE = 1e-4  # largest difference between ONNX Runtime's and fastcnn's probabilities


def arguments(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    def choices(allowed):
        def parse(text):
            names = [n.strip() for n in text.split(",") if n.strip()]
            bad = [n for n in names if n not in allowed]
            if bad or not names:
                raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(allowed)}; "
                                                 f"got {text!r}")
            return list(dict.fromkeys(names))
        return parse

    def positive(kind, least=0, strictly=True):
        def parse(text):
            value = kind(text)
            if value < least or (strictly and value == least):
                raise argparse.ArgumentTypeError(f"expected a number {'>' if strictly else '>='} {least}, got {text}")
            return value
        return parse

    p.add_argument("--networks", type=choices(list(networks.INPUT_SHAPES)), default=list(networks.INPUT_SHAPES))
    p.add_argument("--engines", type=choices(ENGINE_NAMES), default=list(ENGINE_NAMES),
                   help="fastcnn-1thread is left out when --threads is 1")
    p.add_argument("--workloads", type=choices(WORKLOADS), default=list(WORKLOADS),
                   help="loop runs on the original network only")
    p.add_argument("--threads", type=positive(int), default=2)
    p.add_argument("--batch", type=positive(int), default=64, help="of the training step and the loop")
    p.add_argument("--seconds", type=positive(float), default=2.0, help="length of one timing")
    p.add_argument("--rounds", type=positive(int), default=5)
    p.add_argument("--pause", type=positive(float, strictly=False), default=0.3,
                   help="seconds before each timing, for the threads of the engine timed last to fall asleep")
    p.add_argument("--loop-images", type=positive(int), default=60_000, help="images in the real loop's epoch")
    p.add_argument("--python", default=sys.executable, help="the interpreter with PyTorch, TensorFlow, ONNX Runtime")
    p.add_argument("--json", help="also write the results to this file (machine-readable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None:
        if args.threads > (os.cpu_count() or 1):
            p.error(f"--threads: this machine has {os.cpu_count()} cores, got {args.threads}")
        if args.threads == 1 and "fastcnn-1thread" in args.engines:
            args.engines.remove("fastcnn-1thread")
        if args.json and os.path.lexists(args.json) and not args.overwrite:
            p.error(f"--json: {args.json} already exists; name another file, or add --overwrite")
        if args.json and not os.access(os.path.dirname(os.path.abspath(args.json)), os.W_OK):
            p.error(f"--json: cannot write into the folder of {args.json}")
    return args


def main(argv=None):
    args = arguments(argv)
    if args.worker is not None:
        serve(lambda: ENGINES[args.worker](args.threads))
        return
    results = run(args)
    print(report(results))
    if args.json:
        write_json(args.json, results)
        print(f"\nresults written to {args.json}")


def rows(args):
    """The engines to start: key -> (engine name, threads, interpreter). The SGEMM ceiling comes
    first, with fastcnn's interpreter (NumPy and threadpoolctl are fastcnn's dependencies)."""
    ones = ["sgemm-1thread"] if "fastcnn-1thread" in args.engines else []
    out = {}
    for key in ["sgemm", *ones, *args.engines]:
        name = key.removesuffix("-1thread")
        threads = 1 if key.endswith("-1thread") else args.threads
        out[key] = (name, threads, args.python if name in PEERS else sys.executable)
    return out


def worker_env(name, threads):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    if name in PEERS:  # their OpenMP and MKL pools, before they start; fastcnn's pool is Numba's
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run(args):
    results = {"machine": machine(), "settings": {k: getattr(args, k) for k in (
        "networks", "engines", "workloads", "threads", "batch", "seconds", "rounds", "pause", "loop_images", "python")},
               "engines": {}, "networks": {}, "samples": {}, "idle_cpu": {}}
    layers = {net: networks.describe(networks.build(net), networks.INPUT_SHAPES[net]) for net in args.networks}
    for net in args.networks:
        results["networks"][net] = {"input": list(networks.INPUT_SHAPES[net]), "flops": networks.flops(layers[net]),
                                    "layers": [layer["kind"] for layer in layers[net]], "first_call": {},
                                    "checks": {}}
    with tempfile.TemporaryDirectory(prefix="fastcnn-compare-") as folder:
        onnx = export(args, folder, results)
        workers = start(args, folder, results)
        try:
            built = build(args, workers, layers, onnx, results)
            measure(args, workers, built, results)
            for key, w in workers.items():
                try:
                    results["engines"][key]["info"] = w.ask("info", timeout=60)
                except WorkerError as e:
                    results["engines"][key]["info"] = {"error": str(e)}
        finally:
            for w in workers.values():
                w.close()
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    summarize(results)
    return results


def export(args, folder, results):
    """ONNX Runtime's files: each network as ``fastcnn.export_onnx`` writes it, from the same seed
    as fastcnn's worker builds. Without the onnx package ONNX Runtime is reported missing."""
    if "onnxruntime" not in args.engines:
        return {}
    from fastcnn import FastCNNError, export_onnx
    onnx = {}
    try:
        for net in args.networks:
            onnx[net] = os.path.join(folder, f"{net}.onnx")
            export_onnx(networks.build(net), onnx[net])
    except FastCNNError as e:
        args.engines.remove("onnxruntime")
        results["engines"]["onnxruntime"] = {"engine": "onnxruntime", "status": f"missing ({e})"}
        return {}
    return onnx


def start(args, folder, results):
    """A worker per engine, all importing at once; one that does not import is recorded as missing."""
    workers = {}
    for key, (name, threads, python) in rows(args).items():
        command = [python, os.path.abspath(__file__), "--worker", name, "--threads", str(threads)]
        entry = results["engines"][key] = {"engine": name, "threads": threads, "python": python}
        print(f"starting {key} ({threads} thread{'s' * (threads > 1)})...", file=sys.stderr, flush=True)
        try:
            workers[key] = Worker(command, worker_env(name, threads), os.path.join(folder, f"{key}.log"))
        except OSError as e:
            entry["status"] = f"failed to start ({e})"
            print(f"  {key}: {entry['status']}", file=sys.stderr)
    for key, w in list(workers.items()):
        entry = results["engines"][key]
        try:
            w.ready()
        except WorkerError as e:
            entry["status"] = f"missing ({e})" if e.missing else f"failed to start ({e})"
            print(f"  {key}: {entry['status']}", file=sys.stderr)
            del workers[key]
            continue
        entry.update(status="ok", version=w.version)
    if "sgemm" not in workers:
        raise SystemExit(f"the SGEMM ceiling's worker did not start: {results['engines']['sgemm']['status']}")
    if not any(not key.startswith("sgemm") for key in workers):  # nothing to compare: say so, not empty tables
        raise SystemExit("compare.py: error: no engine could be started: " + "; ".join(
            f"{key} {entry['status']}" for key, entry in results["engines"].items() if not key.startswith("sgemm")))
    return workers


def build(args, workers, layers, onnx, results):
    """Each engine builds each network: key -> network -> the workloads it has."""
    built = {}
    for key, w in list(workers.items()):
        built[key] = {}
        jobs = [(CEILING, [], [1], [SGEMM])] if key.startswith("sgemm") else [
            (net, layers[net], results["networks"][net]["input"],
             [wl for wl in args.workloads if wl != "loop" or net in LOOP_NETWORKS]) for net in args.networks]
        for net, net_layers, shape, wanted in jobs:
            print(f"building {net} on {key}...", file=sys.stderr, flush=True)
            try:
                answer = w.ask("build", timeout=3600, network=net, layers=net_layers, input_shape=shape,
                               batch=args.batch, loop_images=args.loop_images, wanted=wanted, onnx=onnx.get(net))
            except WorkerError as e:
                results["engines"][key].setdefault("failed", {})[net] = str(e)
                print(f"  {key} on {net}: {e}", file=sys.stderr)
                if e.died:
                    del workers[key]
                    break
                continue
            built[key][net] = answer["workloads"]
            if net != CEILING:
                results["networks"][net]["first_call"][key] = answer["first_call"]
                if answer["check"] is not None:
                    results["networks"][net]["checks"][key] = answer["check"]
    return built


def measure(args, workers, built, results):
    """The interleaved rounds: each (network, workload) on each engine in turn, one at a time.
    While one is timed, the others' CPU time is read from /proc: idle engines must not spin."""
    schedule = [(CEILING, SGEMM)] + [(net, wl) for net in args.networks for wl in args.workloads]
    samples = results["samples"]  # "network/workload/key" -> the value of each round (None: failed)
    for r in range(args.rounds):
        for net, wl in schedule:
            order = [key for key in workers if wl in built.get(key, {}).get(net, ())]
            for key in order if r % 2 == 0 else reversed(order):
                if key not in workers:
                    continue  # died earlier in this round
                print(f"round {r + 1}/{args.rounds}: {net} {wl} on {key}", file=sys.stderr, flush=True)
                time.sleep(args.pause)
                others = {k: w.cpu_seconds() for k, w in workers.items() if k != key}
                t = time.perf_counter()
                try:
                    value = workers[key].ask("run", timeout=600 + 30 * args.seconds, network=net, workload=wl,
                                             seconds=args.seconds)
                except WorkerError as e:
                    value = None
                    results["engines"][key].setdefault("failed", {})[f"{net} {wl}"] = str(e)
                    print(f"  {key}: {e}", file=sys.stderr)
                    if e.died:
                        del workers[key]
                wall = time.perf_counter() - t
                samples.setdefault(f"{net}/{wl}/{key}", []).append(value)
                for k, before in others.items():
                    after = workers[k].cpu_seconds() if k in workers else None
                    if before is not None and after is not None:
                        idle = results["idle_cpu"].setdefault(k, {"max": 0.0, "timing": None})
                        share = (after - before) / wall
                        if share > idle["max"]:
                            idle.update(max=share, timing=f"{net} {wl} on {key}")


def summarize(results):
    """Medians, ranges, GFLOP/s, shares of the ceiling and ratios to fastcnn, round by round."""
    samples, threads = results["samples"], results["settings"]["threads"]
    ceilings = {threads: samples.get(f"{CEILING}/{SGEMM}/sgemm", []),
                1: samples.get(f"{CEILING}/{SGEMM}/sgemm-1thread", [])}
    results["ceiling"] = {str(t): spread(v, scale=1e-9) for t, v in ceilings.items() if v}
    for net, info in results["networks"].items():
        table = info["results"] = {}
        for wl in results["settings"]["workloads"]:
            flop = info["flops"]["forward" if wl in ("infer", "one") else "train"]
            base = samples.get(f"{net}/{wl}/fastcnn")
            for key, entry in results["engines"].items():
                values = samples.get(f"{net}/{wl}/{key}")
                if values is None or key.startswith("sgemm"):
                    continue
                row = table.setdefault(wl, {})[key] = spread(values)
                row["unit"] = "s" if wl == "one" else "images/s"
                if base is not None:
                    ratios = [(v / b if wl == "one" else b / v) if v and b else None for b, v in zip(base, values)]
                    row["fastcnn_x"] = spread(ratios)
                if wl != "one":
                    row["gflops"] = row["median"] * flop / 1e9 if row["median"] else None
                    ceiling = ceilings[entry["threads"]] or ceilings[threads]
                    row["ceiling_share"] = spread([v * flop / c if v and c else None
                                                   for v, c in zip(values, ceiling)])
        if "fastcnn" in info["checks"] and "onnxruntime" in info["checks"]:
            a, b = info["checks"]["fastcnn"], info["checks"]["onnxruntime"]
            info["onnx_difference"] = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def spread(values, scale=1.0):
    """Median, min and max of the values that were measured (None where a round failed)."""
    got = [v * scale for v in values if v is not None]
    if not got:
        return {"median": None, "min": None, "max": None, "rounds": values}
    return {"median": statistics.median(got), "min": min(got), "max": max(got),
            "rounds": [None if v is None else v * scale for v in values]}


def machine():
    """The CPU, its AVX flags, the overrides of what Numba and OpenBLAS compile for, the load."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags":
                    flags.update(flag for flag in value.split() if flag.startswith("avx"))
    except OSError:
        import platform
        name = platform.processor()
    return {"cpu": name, "cores": os.cpu_count(), "avx": sorted(flags),
            "overrides": {v: os.environ.get(v) for v in OVERRIDES},
            "load_average_start": os.getloadavg()[0]}


def label(results, key):
    entry = results["engines"][key]
    return LABELS[key].format(v=entry.get("version", "")).replace("  ", " ").strip()


def cell(summary, fmt, scale=1.0):
    """``median (min-max)`` of a spread, formatted."""
    if summary is None or summary["median"] is None:
        return "failed"
    m, lo, hi = (summary[k] * scale for k in ("median", "min", "max"))
    return f"{m:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"


def ratio(key, row):
    return "-" if key == "fastcnn" else cell(row.get("fastcnn_x"), ".2f")


HEADINGS = {"train": "training step at batch {batch}, samples/s", "infer": "inference at batch 1000, images/s",
            "one": "one image, latency", "loop": "real loop, one epoch of {loop_images:,} images, samples/s"}


def report(results):
    """The run as text: the machine and what ran, then a Markdown table per network and workload."""
    s, m = results["settings"], results["machine"]
    lines = [f"CPU: {m['cpu']}, {m['cores']} cores; {' '.join(m['avx']) or 'no AVX'}",
             "overrides: " + ", ".join(f"{k}={v}" if v else f"{k} not set" for k, v in m["overrides"].items())]
    forced = [k for k, v in m["overrides"].items() if v]
    if forced and len(forced) < len(OVERRIDES):
        lines.append(f"  only {', '.join(forced)} set: the engines behind the others pick their own kernels for this "
                     f"CPU (ONNX Runtime always does)")
    fast = results["engines"].get("fastcnn", {}).get("info", {})
    if "numba_cpu" in fast:
        lines.append(f"fastcnn: Numba compiles for {fast['numba_cpu']} (threading layer {fast['threading_layer']}); "
                     + blas_text(fast["blas"]))
    ceiling = results["engines"].get("sgemm", {}).get("info", {})
    if "blas" in ceiling:
        lines.append("SGEMM ceiling (NumPy): " + blas_text(ceiling["blas"]))
    torch = next((e["info"] for k, e in results["engines"].items() if k.startswith("torch") and "info" in e
                  and "cpu_capability" in e["info"]), None)
    if torch:
        lines.append(f"PyTorch's CPU capability: {torch['cpu_capability']}")
    for key in ("fastcnn", "fastcnn-1thread"):
        info = results["engines"].get(key, {}).get("info", {})
        if "paths" not in info or (key != "fastcnn" and info["paths"] == fast.get("paths")):
            continue  # the one-thread worker's paths are shown only where they differ
        title = f"{label(results, key)} kernel paths" if key != "fastcnn" else "fastcnn kernel paths"
        if info["paths"] is None:
            lines.append(f"{title}: not reported")
        else:
            lines += [f"{title}:"] + [f"    {what}: {path}" for what, path in info["paths"].items()]
    lines.append(f"{s['threads']} threads, batch {s['batch']}, synthetic data; {s['rounds']} interleaved rounds "
                 f"of {s['seconds']:g} s per timing, medians (ranges); load average {m['load_average_start']:.2f} "
                 f"at the start, {m['load_average_end']:.2f} at the end")
    for t, c in results["ceiling"].items():
        lines.append(f"SGEMM ceiling (NumPy, {SGEMM_SIZE}^3 float32, {t} thread{'s' * (t != '1')}): "
                     f"{cell(c, ',.1f')} GFLOP/s")
    for key, entry in results["engines"].items():
        if entry["status"] != "ok":
            lines.append(f"{label(results, key)}: {entry['status']}")
        for what, why in entry.get("failed", {}).items():
            lines.append(f"{label(results, key)}: {what} failed: {why}")

    for net, info in results["networks"].items():
        f = info["flops"]
        lines += ["", f"## {net}: {' '.join(info['layers'])}; {'x'.join(map(str, info['input']))} input, "
                      f"{f['train'] / 1e6:.2f} MFLOP to train an image, {f['forward'] / 1e6:.2f} to infer"]
        if "onnx_difference" in info:
            d = info["onnx_difference"]
            lines.append(f"ONNX Runtime against fastcnn's predict on the same model: largest probability difference "
                         f"{d:.1e}" + ("" if d <= CHECK_TOLERANCE else "  <- MISMATCH: the export or a kernel is wrong"))
        for wl, table in info["results"].items():
            lines += ["", f"{net}, {HEADINGS[wl].format(**s)}", ""]
            if wl == "one":
                lines += ["| engine | µs | fastcnn x |", "|---|---:|---:|"]
                for key, row in table.items():
                    lines.append(f"| {label(results, key)} | {cell(row, ',.0f', 1e6)} | {ratio(key, row)} |")
                continue
            lines += ["| engine | median (range) | GFLOP/s | % of SGEMM ceiling | fastcnn x |", "|---|---:|---:|---:|---:|"]
            for key, row in table.items():
                gf = f"{row['gflops']:.1f}" if row["gflops"] else "-"
                lines.append(f"| {label(results, key)} | {cell(row, ',.0f')} | {gf} | "
                             f"{cell(row['ceiling_share'], '.1f', 100)} | {ratio(key, row)} |")
    lines += ["", "First call of each workload, s: compiling and tracing, in none of the rates above (with the "
                  "caches as found: Numba's beside fastcnn's kernels, Inductor's for torch.compile)", "",
              "| engine | " + " | ".join(results["networks"]) + " |", "|---|" + "---|" * len(results["networks"])]
    for key in results["engines"]:
        calls = [results["networks"][net]["first_call"].get(key) for net in results["networks"]]
        if any(calls):
            lines.append(f"| {label(results, key)} | " + " | ".join(
                ", ".join(f"{wl} {t:.2f}" for wl, t in c.items()) if c else "-" for c in calls) + " |")
    worst = max(results["idle_cpu"].items(), key=lambda kv: kv[1]["max"], default=(None, {"max": 0}))
    if worst[1]["max"] > 0:
        lines.append(f"\nWhile one engine was timed, the idle ones used at most {100 * worst[1]['max']:.0f}% of a core "
                     f"({worst[0]}, during {worst[1]['timing']})"
                     + (": something spins between timings, so the ratios are skewed." if worst[1]["max"] > 0.05
                        else "."))
    else:
        lines.append("\nWhile one engine was timed, the idle ones used no CPU that /proc could see.")
    return "\n".join(lines)


def blas_text(blas):
    return ", ".join(f"{b['library']} ({b['api']}, {b['core']} kernels)" for b in blas) or "no BLAS loaded"


def write_json(path, results):
    """Written to a temporary file beside ``path``, then renamed: never half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


if __name__ == "__main__":
    from common import script
    sys.exit(script(main))
