"""The ``fastcnn`` command: ``train``, ``predict``, ``evaluate``, ``history``, ``serve``, ``export`` and
``compile``: the parser here, each command's run in its module (``train``: the training run;
``use``: the commands that use a model file; ``compile``).

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
import signal
import sys

from ..version import __version__
from ..architectures import ARCHITECTURES
from ..data import DATASETS
from ..distributed import abort_if_parallel, this_process, world
from ..errors import FastCNNError
from ..training import TrainingInterrupted
from ..settings import add_arguments as add_settings
from ..settings import add_server_arguments
from . import compile as compiling_command
from . import train as training_command
from . import use


def _port(text):
    """A ``--port``: 1-65535, or 0 for any free one."""
    port = int(text) if text.strip().isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535 (0: any free one), got {text!r}")
    return port


def parser():
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
                   help="replace --out if it exists, and with --keep-best its OUT.last.npz (without it, an existing "
                        "file is never replaced)")
    t.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="also write the checkpoint every K batches (default: after each epoch only)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar, only the epoch lines")
    t.set_defaults(run=training_command.run)

    model_help = "a model file written by train"
    dataset_help = "the class names to use (default: the data set the model was trained on)"
    pr = sub.add_parser("predict", help="what your own pictures show (a digit, or a CIFAR-10 class)")
    pr.add_argument("model", help=model_help)
    pr.add_argument("images", nargs="+", help="pictures of one digit each (of one garment for a Fashion-MNIST "
                                              "model, one object for a colour model, one of its classes for a "
                                              "folder's model), "
                                              "any format Pillow reads; a bad one is reported and the rest are still read")
    pr.add_argument("--dataset", choices=DATASETS, help=dataset_help)
    pr.add_argument("--save-preprocessed", action="store_true",
                    help="write the image the model saw beside each picture (PICTURE.28x28.png, or "
                         "PICTURE.32x32.png in colour for a colour model)")
    pr.add_argument("--overwrite", action="store_true",
                    help="replace --save-preprocessed pictures that exist (without it, they are never replaced)")
    pr.set_defaults(run=use.predict)

    e = sub.add_parser("evaluate", help="test accuracy, per class, confusion matrix and plots")
    e.add_argument("model", help=model_help)
    e.add_argument("--dataset", choices=DATASETS, help="the test set (default: the one the model was trained on)")
    e.add_argument("--data-dir", help="folder with mnist/, fashion-mnist/ and cifar10/ (default $FASTCNN_DATA, "
                                      "else ~/.cache/fastcnn)")
    e.add_argument("--data", metavar="FOLDER", help="for a model trained on a folder of pictures: the folder whose "
                                                    "test/ to evaluate on (default: the one it was trained on)")
    e.add_argument("--plot", metavar="PNG", help="draw a grid of wrong predictions")
    e.add_argument("--confusion", metavar="PNG", help="draw the confusion matrix")
    e.add_argument("--overwrite", action="store_true",
                   help="replace --plot and --confusion files that exist (without it, they are never replaced)")
    e.set_defaults(run=use.evaluate_file)

    h = sub.add_parser("history", help="a model's training history: loss and accuracy per epoch, and a plot")
    h.add_argument("model", help=model_help)
    h.add_argument("--plot", metavar="PNG", help="draw loss and accuracy per epoch")
    h.add_argument("--overwrite", action="store_true", help="replace --plot's file if it exists")
    h.set_defaults(run=use.history)

    s = sub.add_parser("serve", help="a web page to draw a digit or drop a photo, and a JSON endpoint",
                       description="Serve a page where you draw a digit or drop a photo and see what the "
                                   "model reads, and POST /predict (the picture's bytes as the body).")
    s.add_argument("model", help=model_help)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on, default 127.0.0.1 (this machine only)")
    s.add_argument("--port", type=_port, default=8000, help="1-65535, default 8000 (0: any free one)")
    s.add_argument("--dataset", choices=DATASETS, help=dataset_help)
    s.add_argument("--quiet", action="store_true", help="no line per request on stderr (warnings only)")
    add_server_arguments(s)
    s.set_defaults(run=use.serve)

    c = sub.add_parser("compile", help="compile the kernels of the named networks now, once for every later run",
                       description="Compile (into the cache, once per fastcnn version and CPU) every kernel that "
                                   "training and using the named networks needs, so that the first train, predict, "
                                   "evaluate or serve starts at once. Optional: they compile on first use otherwise.")
    c.add_argument("--model", action="append", choices=tuple(ARCHITECTURES),
                   help="a named network (repeat for several; default: all of them)")
    c.add_argument("--processes", type=int, help="processes to compile in, default: one per core")
    c.set_defaults(run=compiling_command.run)

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
    x.set_defaults(run=use.export)
    return p


def main(argv=None):
    # Under mpiexec a process that leaves on an error ends the others (abort_if_parallel): they
    # may be waiting for it. A TrainingInterrupted is agreed on by all; rank 0 alone says so.
    try:
        args = parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the parser is made
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
            _say(f"fastcnn {args.command}: {e}; resume with: {training_command.resume_command(args)}")
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
