"""The ``fastcnn`` command: ``train``, ``predict``, ``evaluate``, ``history``, ``serve``, ``export`` and
``compile``.

Errors fastcnn raises on purpose (bad files, bad arguments, a diverging run) and failures to
write a file end the command with one line on stderr and exit status 2, not a traceback. Output
files are checked before the work that makes them, and written before anything is printed about
them; a closed output (``| head``) ends the command quietly with status 141, as a Unix tool
killed by SIGPIPE ends. ``train`` holds a lock on ``--out``: a second run on it refuses, naming
the first. Ctrl-C (SIGINT) or SIGTERM during training saves a checkpoint and exits with 130 or
143, printing how to resume; Ctrl-C before the work starts exits 130 with one line.
"""

import argparse
import contextlib
import os
import shlex
import signal
import sys
from typing import NamedTuple, Optional

import numpy as np

from .errors import FastCNNError, ImageError, ModelFileError


def _train(args):
    from . import distributed, fileio
    from .settings import from_arguments
    from .train import check_writable, train
    lock = contextlib.nullcontext()
    if distributed.world().is_root:  # the one process that writes --out
        check_writable(args.out)  # (a folder that can't take it is said so, before the lock is looked for)
        lock = fileio.exclusive(args.out, shlex.join(["fastcnn", "train", "--out", str(args.out)]))
    with lock:
        train(args.out, data_dir=args.data_dir, threads=args.threads, resume=args.resume,
              progress=not args.no_progress, checkpoint_every=args.checkpoint_every, overwrite=args.overwrite,
              **from_arguments(args))


def _resume_command(args):
    """The command that continues an interrupted ``train``: the checkpoint keeps the settings;
    the data, thread count (for identical weights), epochs and output options come from here."""
    from . import distributed
    size = distributed.world().size
    cmd = ["mpiexec", "-n", str(size)] * (size > 1) + ["fastcnn", "train", "--out", args.out, "--resume"]
    for flag in ("--data-dir", "--threads", "--epochs", "--checkpoint-every"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            cmd += [flag, str(value)]
    return shlex.join(cmd + (["--no-progress"] if args.no_progress else []))


def _check_writable(path):
    """An output picture's folder takes files, before the work that makes the picture."""
    from .fileio import check_writable
    try:
        check_writable(path)
    except OSError as e:
        raise ImageError(f"{path}: cannot write there ({e.strerror or e})") from None


def _recorded_settings(saved):
    """The training settings a loaded model file records ({} for files with none)."""
    return (saved.training or {}).get("settings") or {}


class _Model(NamedTuple):
    """A model file as the commands use it: the model, the data set it was trained on (None for a
    folder of pictures), its class names, whether they are its own (an image folder's: pictures
    are then read as the folder's were), and the settings it records."""
    model: object
    dataset: Optional[str]
    names: tuple
    own: bool
    settings: dict


def _own_classes(saved):
    """The class names a model file records of its own (an image folder's), or None."""
    names = (saved.training or {}).get("classes")
    if isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


def _model_and_classes(args):
    """The model, the data set it was trained on and its class names: the names recorded in the
    model file (an image folder's), else the data set's it records, unless ``--dataset`` says
    otherwise (then with a warning); with no record, CIFAR-10 for a model of colour images, else
    MNIST."""
    from .checkpoint import load_checkpoint
    from .data import CLASS_NAMES
    from .inference import input_channels
    saved = load_checkpoint(args.model)
    settings = _recorded_settings(saved)
    own = _own_classes(saved)
    asked = getattr(args, "dataset", None)
    if own is not None:
        if not asked:
            return _Model(saved.model, None, own, True, settings)
        print(f"fastcnn {args.command}: warning: {args.model} was trained on pictures of {', '.join(own)}, "
              f"but --dataset {asked} was given; using {asked}'s class names and preprocessing", file=sys.stderr)
    recorded = settings.get("dataset")
    recorded = recorded if recorded in CLASS_NAMES else None  # older or damaged files: no record
    dataset = asked or recorded or ("cifar10" if input_channels(saved.model) == 3 else "mnist")
    if asked and recorded and asked != recorded:
        print(f"fastcnn {args.command}: warning: {args.model} was trained on {recorded}, "
              f"but --dataset {asked} was given; using {asked}", file=sys.stderr)
    return _Model(saved.model, dataset, CLASS_NAMES[dataset], False, settings)


def _predict(args):
    import warnings

    from .image import ImageWarning, save_preprocessed
    from .inference import picture_loader
    model, dataset, names, own, _ = _model_and_classes(args)
    load = picture_loader(model, folder=own)
    shape = tuple(model.input_shape) if own else None  # the picture as the model sees it
    if args.save_preprocessed:
        for path in args.images:
            _check_writable(preprocessed_path(path, *_seen_size(model, load, own)))
    noun = "digit " if dataset == "mnist" else ""
    failed = 0
    for path in args.images:
        # A bad picture is reported and the rest are still read; the exit status says it at the end.
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", ImageWarning)
            try:
                image = load(path)
            except ImageError as e:
                print(f"fastcnn predict: error: {e}", file=sys.stderr)
                failed += 1
                continue
        p = model.predict(image[None])[0]
        if len(p) != len(names):
            raise ModelFileError(f"{args.model}: the model scores {len(p)} classes, {dataset} has {len(names)}")
        if args.save_preprocessed:  # written before anything is said about it
            save_preprocessed(image, preprocessed_path(path, *image.shape[:2]), shape)
        k = int(np.argmax(p))
        print(f"{path}: {noun}{names[k]} ({p[k]:.1%})")
        print("  " + "  ".join(f"{name}: {100 * q:5.1f}%" for name, q in zip(names, p)))
        for note in notes:
            print(f"  note: {note.message}")
        if args.save_preprocessed:
            print(f"  the {image.shape[0]}x{image.shape[1]} it saw: {preprocessed_path(path, *image.shape[:2])}")
    return 2 if failed else 0


def _seen_size(model, load, own):
    """The (height, width) of the image ``load`` makes for ``model``."""
    from .image import PHOTO_SIDE, SIZE, load_photo
    if own:
        return tuple(model.input_shape[:2])
    side = PHOTO_SIDE if load is load_photo else SIZE
    return side, side


def preprocessed_path(path, side=28, width=None):
    """Where ``--save-preprocessed`` writes the image the model saw of ``path``, ``side`` x
    ``side`` (or ``side`` x ``width``): beside it, the whole name kept (``a.png.28x28.png``,
    ``a.jpg.28x28.png``; ``a.jpg.32x32.png`` for a colour model), so two pictures never share one."""
    return f"{path}.{side}x{side if width is None else width}.png"


def _evaluate(args):
    from .inference import evaluate
    for path in (args.plot, args.confusion):
        if path:
            _check_writable(path)
    model, dataset, names, own, settings = _model_and_classes(args)
    if own:
        x, y, about = _folder_test_set(args, model, names, settings)
    else:
        from .data import load_dataset
        x, y = load_dataset(dataset, "test", args.data_dir)
        about = f"{dataset} images"
    result = evaluate(model, x, y, classes=len(names))
    if args.plot or args.confusion:  # the pictures are drawn before anything is printed
        from .plots import plot_confusion, plot_errors
        if args.plot:
            plot_errors(args.plot, x, y, result["predicted"], result["probabilities"], names)
        if args.confusion:
            plot_confusion(args.confusion, result["confusion"], names)
    print(f"test accuracy {result['accuracy']:.4f} on {len(y):,} {about}")
    width = max(12, *map(len, names))
    for name, acc in zip(names, result["per_class"]):
        print(f"  {name:>{width}s}  {acc:.4f}")
    print("confusion matrix (rows: true, columns: predicted):")
    for row in result["confusion"]:
        print("  " + " ".join(f"{v:5d}" for v in row))
    if args.plot:
        print(f"wrong guesses: {args.plot}")
    if args.confusion:
        print(f"confusion matrix: {args.confusion}")


def _folder_test_set(args, model, names, settings):
    """The test pictures of the folder a model was trained on (or ``--data``), read as in training."""
    from .folders import image_folder
    path = args.data or settings.get("data")
    if not path:
        raise ModelFileError(f"{args.model}: was trained on a folder of pictures it does not name; "
                             f"give the folder with --data")
    h, w, c = model.input_shape
    folder = image_folder(path, (h, w), "grey" if c == 1 else "rgb")
    if folder.test is None:
        raise ModelFileError(f"{path}: has no test/ folder of class folders to evaluate on")
    if folder.classes != names:
        raise ModelFileError(f"{path}: has the classes {', '.join(folder.classes)}, but {args.model} was trained "
                             f"on {', '.join(names)}")
    return folder.test.images, folder.test.labels, f"pictures of {folder.root}/test"


def _history(args):
    from .checkpoint import load_checkpoint
    if args.plot:
        _check_writable(args.plot)
    saved = load_checkpoint(args.model)
    training = saved.training or {}
    history = training.get("history") or []
    if not history:
        raise ModelFileError(f"{args.model}: holds no training history (was it written by fastcnn train or fit?)")
    settings = _recorded_settings(saved)
    if settings:
        from .settings import from_checkpoint
        try:
            settings = from_checkpoint(settings).relevant()
        except (FastCNNError, TypeError):
            pass  # damaged or foreign settings: print them as they are
        def shown(v):
            return f"{v:.4g}" if isinstance(v, float) else "x".join(map(str, v)) if isinstance(v, (list, tuple)) else v
        print(", ".join(f"{k.replace('_', ' ')} {shown(v)}" for k, v in settings.items() if v is not None))
    validated_on = _validated_on(training, settings)
    if validated_on:
        print(f"validation: {validated_on}")
    best = training.get("best") or {}
    print(f"{'epoch':>5}  {'loss':>8}  {'train acc':>9}  {'val loss':>8}  {'val acc':>8}  {'seconds':>8}")
    for h in history:
        val_loss, val_acc = h.get("val_loss"), h.get("val_acc")
        print(f"{h['epoch']:>5}  {h['loss']:>8.4f}  {h['train_acc']:>9.4f}  "
              f"{'' if val_loss is None else f'{val_loss:.4f}':>8}  {'' if val_acc is None else f'{val_acc:.4f}':>8}  "
              f"{h['seconds']:>8.1f}" + ("  <- kept (best)" if h["epoch"] == best.get("epoch") else ""))
    if "stopped" in training:
        print(f"stopped after epoch {training['stopped']['epoch']}: {training['stopped']['reason']}")
    test = training.get("test")
    if test:
        print(f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}) on {test['images']:,} images, with the "
              f"weights of epoch {test['epoch']}")
    if args.plot:
        from .plots import plot_history
        title = " on ".join(str(settings[k]) for k in ("model", "dataset", "data") if settings.get(k))
        plot_history(args.plot, history, title or None,
                     "test set (as validation)" if (training.get("validation") or {}).get("on") == "test"
                     or settings.get("validation") == "test" else "validation")
        print(f"history plot: {args.plot}")


def _validated_on(training, settings):
    """A sentence for what the history's val_loss and val_acc were measured on."""
    what = training.get("validation")
    if isinstance(what, dict) and what.get("on"):
        images = f"{what['images']:,} images" if isinstance(what.get("images"), int) else "images"
        return {"held-out": f"{images} held out of the training set ({what.get('fraction', 0):.4g} of each class)",
                "test": f"the test set ({images}), as the original project did: --validation test",
                "val": f"the data set's val/ folder ({images})",
                "held-out end": f"the last {images} of the training set, as fastcnn 0.2 held them out",
                }.get(what["on"], f"{images} given to fit ({what['on']})")
    return {"test": "the test set, as the original project (and fastcnn 0.2) did",
            "end": "the end of the training set, as fastcnn 0.2 held it out"}.get(settings.get("validation"))


def _serve(args):
    try:
        from .serve import serve
    except ImportError as e:
        raise FastCNNError(f"serving the page needs the web extra ({e.name} is missing): "
                           f"pip install 'fastcnn[web]'") from None
    from .settings import server_limits_from_arguments
    limits = server_limits_from_arguments(args)  # checked before the model is loaded
    model, _, names, own, _ = _model_and_classes(args)
    serve(model, host=args.host, port=args.port, classes=names, model_name=args.model, limits=limits,
          quiet=args.quiet, folder=own)


def _port(text):
    """A ``--port``: 1-65535, or 0 for any free one."""
    port = int(text) if text.strip().isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535 (0: any free one), got {text!r}")
    return port


def _export(args):
    from .checkpoint import load_checkpoint
    from .export import PREPROCESSING, export_onnx
    saved = load_checkpoint(args.model)
    settings = _recorded_settings(saved)
    recorded = settings.get("dataset") if settings.get("dataset") in PREPROCESSING else None  # older files: none
    own = None if args.dataset else _own_classes(saved)
    network = settings.get("model") if isinstance(settings.get("model"), str) else None
    proto = export_onnx(saved.model, args.out, input_shape=args.input_shape, logits=args.logits,
                        dataset=None if own else args.dataset or recorded, overwrite=args.overwrite, network=network,
                        classes=own)

    def shape(value):
        return "(" + ", ".join(str(d.dim_value or d.dim_param) for d in value.type.tensor_type.shape.dim) + ")"
    print(f"{args.out}: ONNX opset {proto.opset_import[0].version}, input {proto.graph.input[0].name} "
          f"{shape(proto.graph.input[0])} float32 NHWC; outputs "
          + ", ".join(f"{v.name} {shape(v)}" for v in proto.graph.output))


def _compile(args):
    from .architectures import ARCHITECTURES
    from .compiling import compile_networks
    from .kernels import checks, jit
    names = list(dict.fromkeys(args.model or ARCHITECTURES))
    processes = None if args.processes is None else checks.positive_int("--processes", args.processes)
    calls, compiled = compile_networks(names, processes)
    cpu = jit.cpu_key().split("-")[0]
    print(f"the {calls} kernels of {', '.join(names)} are compiled for this CPU ({cpu})"
          + (f"; {compiled} of them just now" if compiled else ", all of them already") + f": {jit.cache_dir()}")


def parser():
    from . import __version__
    from .architectures import ARCHITECTURES
    from .data import DATASETS
    from .settings import add_arguments as add_settings
    from .settings import add_server_arguments
    p = argparse.ArgumentParser(prog="fastcnn", description="A small, fast CNN engine for the CPU.")
    p.add_argument("--version", action="version", version=f"fastcnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a network (the original MNIST one by default) on every core",
                       description="Train a named network (default: the original, Conv 3x3x32, ReLU, MaxPool 2, "
                                   "Dense 128, ReLU, Dense 10, with SGD); writes a checkpoint after every epoch. "
                                   "Settings left out take the network's recipe.")
    add_settings(t)
    t.add_argument("--threads", type=int, help="cores to use, default all")
    t.add_argument("--data-dir", help="folder with mnist/ and fashion-mnist/ (default $FASTCNN_DATA, "
                                      "else ~/.cache/fastcnn)")
    t.add_argument("--out", default="model.npz", help="model and checkpoint file, default model.npz")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists (without it, an existing file is never replaced)")
    t.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="also write the checkpoint every K batches (default: after each epoch only)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar, only the epoch lines")
    t.set_defaults(run=_train)

    model_help = "a model file written by train"
    dataset_help = "the class names to use (default: the data set the model was trained on)"
    pr = sub.add_parser("predict", help="what your own pictures show (a digit, or a CIFAR-10 class)")
    pr.add_argument("model", help=model_help)
    pr.add_argument("images", nargs="+", help="pictures of one digit (or, for a colour model, one object) each, "
                                              "any format Pillow reads; a bad one is reported and the rest are still read")
    pr.add_argument("--dataset", choices=DATASETS, help=dataset_help)
    pr.add_argument("--save-preprocessed", action="store_true",
                    help="write the image the model saw beside each picture (PICTURE.28x28.png, or "
                         "PICTURE.32x32.png in colour for a colour model)")
    pr.set_defaults(run=_predict)

    e = sub.add_parser("evaluate", help="test accuracy, per class, confusion matrix and plots")
    e.add_argument("model", help=model_help)
    e.add_argument("--dataset", choices=DATASETS, help="the test set (default: the one the model was trained on)")
    e.add_argument("--data-dir", help="folder with mnist/, fashion-mnist/ and cifar10/ (default $FASTCNN_DATA, "
                                      "else ~/.cache/fastcnn)")
    e.add_argument("--data", metavar="FOLDER", help="for a model trained on a folder of pictures: the folder whose "
                                                    "test/ to evaluate on (default: the one it was trained on)")
    e.add_argument("--plot", metavar="PNG", help="draw a grid of wrong predictions")
    e.add_argument("--confusion", metavar="PNG", help="draw the confusion matrix")
    e.set_defaults(run=_evaluate)

    h = sub.add_parser("history", help="a model's training history: loss and accuracy per epoch, and a plot")
    h.add_argument("model", help=model_help)
    h.add_argument("--plot", metavar="PNG", help="draw loss and accuracy per epoch")
    h.set_defaults(run=_history)

    s = sub.add_parser("serve", help="a web page to draw a digit or drop a photo, and a JSON endpoint",
                       description="Serve a page where you draw a digit or drop a photo and see what the "
                                   "model reads, and POST /predict (the picture's bytes as the body).")
    s.add_argument("model", help=model_help)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on, default 127.0.0.1 (this machine only)")
    s.add_argument("--port", type=_port, default=8000, help="1-65535, default 8000 (0: any free one)")
    s.add_argument("--quiet", action="store_true", help="no line per request on stderr (warnings only)")
    add_server_arguments(s)
    s.set_defaults(run=_serve)

    c = sub.add_parser("compile", help="compile the kernels of the named networks now, once for every later run",
                       description="Compile (into the cache, once per fastcnn version and CPU) every kernel that "
                                   "training and using the named networks needs, so that the first train, predict, "
                                   "evaluate or serve starts at once. Optional: they compile on first use otherwise.")
    c.add_argument("--model", action="append", choices=tuple(ARCHITECTURES),
                   help="a named network (repeat for several; default: all of them)")
    c.add_argument("--processes", type=int, help="processes to compile in, default: one per core")
    c.set_defaults(run=_compile)

    x = sub.add_parser("export", help="the model as an ONNX file, for ONNX Runtime and other runtimes",
                       description="Write the model as a standard ONNX graph: input 'image' (batch, H, W, C) "
                                   "float32 NHWC, output 'probabilities' (softmax); the class names and the "
                                   "preprocessing in its metadata. Needs the onnx extra: pip install 'fastcnn[onnx]'.")
    x.add_argument("model", help=model_help)
    x.add_argument("out", help="the .onnx file to write")
    x.add_argument("--logits", action="store_true", help="also output the logits (a second output, 'logits')")
    x.add_argument("--input-shape", type=int, nargs=3, metavar=("H", "W", "C"),
                   help="the image shape, for model files of older versions that do not record it")
    x.add_argument("--dataset", choices=DATASETS,
                   help="the class names and preprocessing to record (default: the data set it was trained on)")
    x.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    x.set_defaults(run=_export)
    return p


def main(argv=None):
    # Under mpiexec a process that leaves on an error ends the others (abort_if_parallel): they
    # may be waiting for it. A TrainingInterrupted is agreed on by all; rank 0 alone says so.
    try:
        from .distributed import abort_if_parallel, this_process, world
        from .train import TrainingInterrupted
        args = parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the modules load
        _say("fastcnn: interrupted")
        return 130
    try:
        status = args.run(args)
    except BrokenPipeError:  # before OSError: the reader of our output has gone (| head)
        return _closed_pipe()
    except (FastCNNError, OSError) as e:  # OSError: a file not written after all (disk full, ...)
        _say(f"fastcnn {args.command}{this_process()}: error: {e}")
        return abort_if_parallel(2)
    except TrainingInterrupted as e:
        if world().is_root:
            _say(f"fastcnn {args.command}: {e}; resume with: {_resume_command(args)}")
        return e.exit_status
    except KeyboardInterrupt:
        _say(f"fastcnn {args.command}{this_process()}: interrupted")
        return abort_if_parallel(130)
    return status or 0


def _say(line):
    """A line on stderr, unless stderr is a closed pipe too."""
    with contextlib.suppress(BrokenPipeError):
        print(line, file=sys.stderr, flush=True)


def _closed_pipe():
    """The end of a command whose output was closed (``fastcnn history m.npz | head -1``): quiet,
    with the status of a Unix tool killed by SIGPIPE. The closed stream is pointed at /dev/null
    first, or Python would complain when it flushes it on the way out."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        except (OSError, ValueError):
            pass
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
