"""``fastcnn compile``: every kernel the named networks need, compiled now into the cache (once
per fastcnn version and CPU), so that the first train, predict, evaluate or serve starts at once."""

from ..architectures import ARCHITECTURES
from ..augmentation import Augment
from ..compiling import compile_ahead
from ..data import CLASS_NAMES, IMAGE_SHAPES
from ..errors import FastCNNError
from ..kernels import checks, jit
from ..optim import SGD, Adam


def run(args):
    names = list(dict.fromkeys(args.model or ARCHITECTURES))
    processes = None if args.processes is None else checks.positive_int("--processes", args.processes)
    try:
        jit._prepared_cache_dir()
    except OSError as e:  # compiling would keep nothing: the command's one purpose
        raise FastCNNError(f"{jit.cache_dir()}: can't be written ({e.strerror or e}), so nothing it compiled would "
                           f"be kept; set {jit.CACHE_ENV} to a folder that can be written") from None
    passes, optimizers = [], []
    for name in names:  # each network at its data set's image shape, trained with SGD or Adam, and used
        dataset = ARCHITECTURES[name].recipe["dataset"]
        model = ARCHITECTURES[name].build(IMAGE_SHAPES[dataset], len(CLASS_NAMES[dataset]))
        plan = model.plan(IMAGE_SHAPES[dataset])
        passes += [(plan, True), (plan, False)]
        optimizers += [SGD(model, 0.01), Adam(model)]
        if ARCHITECTURES[name].recipe.get("augment", "none") != "none":
            optimizers.append(Augment(pad=1))  # its kernel, which every kind of augmentation runs
    calls, compiled = compile_ahead(passes, optimizers, processes)
    cpu = jit.cpu_key().split("-")[0]
    print(f"the {calls} kernels of {', '.join(names)} are compiled for this CPU ({cpu})"
          + (f"; {compiled} of them just now" if compiled else ", all of them already") + f": {jit.cache_dir()}")
