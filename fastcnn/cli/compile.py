"""``fastcnn compile``: every kernel the named networks need, compiled now into the cache (once
per fastcnn version and CPU), so that the first train, predict, evaluate or serve starts at once."""

from ..architectures import ARCHITECTURES
from ..compiling import compile_networks
from ..kernels import checks, jit


def run(args):
    names = list(dict.fromkeys(args.model or ARCHITECTURES))
    processes = None if args.processes is None else checks.positive_int("--processes", args.processes)
    calls, compiled = compile_networks(names, processes)
    cpu = jit.cpu_key().split("-")[0]
    print(f"the {calls} kernels of {', '.join(names)} are compiled for this CPU ({cpu})"
          + (f"; {compiled} of them just now" if compiled else ", all of them already") + f": {jit.cache_dir()}")
