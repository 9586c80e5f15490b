"""The ``fastcnn`` command: ``train``, ``predict`` and ``evaluate``.

Errors fastcnn raises on purpose (bad files, bad arguments, a diverging run) and failures to
write a file end the command with one line on stderr and exit status 2, not a traceback. Output
files are checked before the work that makes them. Ctrl-C (SIGINT) or SIGTERM during training
saves a checkpoint and exits with 130 or 143, printing how to resume.
"""

import argparse
import shlex
import sys

from .errors import FastCNNError, ImageError


def _train(args):
    from .train import train
    train(args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
          decay=args.decay, seed=args.seed, dataset=args.dataset, data_dir=args.data_dir,
          threads=args.threads, resume=args.resume, progress=not args.no_progress,
          checkpoint_every=args.checkpoint_every)


def _resume_command(args):
    """The command that continues an interrupted ``train``: the checkpoint keeps the settings;
    the data, thread count (for identical weights), epochs and output options come from here."""
    cmd = ["fastcnn", "train", "--out", args.out, "--resume"]
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


def _predict(args):
    from .checkpoint import load
    from .image import save_preprocessed
    from .inference import predict_digits
    if args.save_preprocessed:
        for path in args.images:
            _check_writable(_preprocessed_path(path))
    model = load(args.model)
    probs, images = predict_digits(model, args.images)
    for path, p, image in zip(args.images, probs, images):
        print(f"{path}: digit {p.argmax()} ({p.max():.1%})")
        print("  " + "  ".join(f"{k}: {100 * q:5.1f}%" for k, q in enumerate(p)))
        if args.save_preprocessed:
            out = _preprocessed_path(path)
            save_preprocessed(image, out)
            print(f"  the 28x28 it saw: {out}")


def _preprocessed_path(path):
    return f"{path.rsplit('.', 1)[0]}.28x28.png"


def _evaluate(args):
    from .checkpoint import load
    from .data import CLASS_NAMES, load_dataset
    from .inference import evaluate
    for path in (args.plot, args.confusion):
        if path:
            _check_writable(path)
    model = load(args.model)
    x, y = load_dataset(args.dataset, "test", args.data_dir)
    names = CLASS_NAMES[args.dataset]
    result = evaluate(model, x, y, classes=len(names))
    print(f"test accuracy {result['accuracy']:.4f} on {len(y):,} {args.dataset} images")
    for name, acc in zip(names, result["per_class"]):
        print(f"  {name:>12s}  {acc:.4f}")
    print("confusion matrix (rows: true, columns: predicted):")
    for row in result["confusion"]:
        print("  " + " ".join(f"{v:5d}" for v in row))
    if args.plot or args.confusion:
        from .plots import plot_confusion, plot_errors
        if args.plot:
            plot_errors(args.plot, x, y, result["predicted"], result["probabilities"], names)
            print(f"wrong guesses: {args.plot}")
        if args.confusion:
            plot_confusion(args.confusion, result["confusion"], names)
            print(f"confusion matrix: {args.confusion}")


def parser():
    from .train import DEFAULTS
    p = argparse.ArgumentParser(prog="fastcnn", description="A small, fast CNN engine for the CPU.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the original MNIST network on every core",
                       description="Train the original network (Conv 3x3x32, ReLU, MaxPool 2, Dense 128, "
                                   "ReLU, Dense 10) with SGD; writes a checkpoint after every epoch.")
    t.add_argument("--epochs", type=int, help=f"default {DEFAULTS['epochs']}")
    t.add_argument("--batch-size", type=int, help=f"default {DEFAULTS['batch_size']}")
    t.add_argument("--lr", type=float, help=f"initial learning rate, default {DEFAULTS['lr']}")
    t.add_argument("--momentum", type=float, help=f"default {DEFAULTS['momentum']}")
    t.add_argument("--decay", type=float, help=f"lr_t = lr / (1 + decay * t), default {DEFAULTS['decay']}")
    t.add_argument("--seed", type=int, help=f"weights and shuffling, default {DEFAULTS['seed']}")
    t.add_argument("--threads", type=int, help="cores to use, default all")
    t.add_argument("--dataset", choices=["mnist", "fashion-mnist"], help="default mnist")
    t.add_argument("--data-dir", help="folder with mnist/ and fashion-mnist/ (default $FASTCNN_DATA, "
                                      "else ~/.cache/fastcnn)")
    t.add_argument("--out", default="model.npz", help="model and checkpoint file, default model.npz")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="also write the checkpoint every K batches (default: after each epoch only)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar, only the epoch lines")
    t.set_defaults(run=_train)

    pr = sub.add_parser("predict", help="the digit in your own pictures")
    pr.add_argument("model", help="a model file written by train")
    pr.add_argument("images", nargs="+", help="pictures of one digit each, any format Pillow reads")
    pr.add_argument("--save-preprocessed", action="store_true",
                    help="write the 28x28 image the model saw beside each picture (NAME.28x28.png)")
    pr.set_defaults(run=_predict)

    e = sub.add_parser("evaluate", help="test accuracy, per class, confusion matrix and plots")
    e.add_argument("model")
    e.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    e.add_argument("--data-dir")
    e.add_argument("--plot", metavar="PNG", help="draw a grid of wrong predictions")
    e.add_argument("--confusion", metavar="PNG", help="draw the confusion matrix")
    e.set_defaults(run=_evaluate)
    return p


def main(argv=None):
    from .train import TrainingInterrupted
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (FastCNNError, OSError) as e:  # OSError: a file not written after all (disk full, ...)
        print(f"fastcnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"fastcnn {args.command}: {e}; resume with: {_resume_command(args)}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print(f"fastcnn {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
