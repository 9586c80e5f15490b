"""The commands that use a trained model file: ``predict``, ``evaluate``, ``history``, ``serve``
and ``export``.

Each reads the model file once (``model_file``: the model, the data set it was trained on, its
class names, and whether they are an image folder's own), checks the files it will write before
the work that makes them, and writes them before it prints anything about them.
"""

import os
import sys
import warnings
from typing import NamedTuple, Optional

import numpy as np

from .. import compiling, data
from ..loading import load_checkpoint, load_training
from ..data import CLASS_NAMES
from ..errors import FastCNNError, ImageError, ModelFileError
from ..fileio import check_png_name, check_writable, taken
from ..folders import image_folder
from ..inference import evaluate, input_channels, picture_loader
from ..model import classes_scored
from ..settings import from_checkpoint, server_limits_from_arguments


def _check_writable(path, overwrite):
    """An output picture's name ends in .png and its folder takes files, before the work that
    makes the picture; with ``overwrite`` False, a file of that name is refused rather than replaced."""
    check_png_name(path)
    if not overwrite and taken(path):
        raise ImageError(f"{path}: already exists; name another file, or replace it with --overwrite")
    try:
        check_writable(path)
    except OSError as e:
        raise ImageError(f"{path}: cannot write there ({e.strerror or e})") from None


def _recorded_settings(training):
    """The training settings a model file's training state records ({} for files with none)."""
    return (training or {}).get("settings") or {}


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


# Up to this many pictures are read by the kernels' NumPy twins when the kernels are not compiled
# yet: the named networks take 1-3 ms a picture there, where compiling takes 4 to 25 s
# (``fastcnn compile`` does it ahead; ``evaluate``, ``serve`` and larger runs compile).
FEW_PICTURES = 64


def model_file(args):
    """The model, the data set it was trained on and its class names: the names recorded in the
    model file (an image folder's), else the data set's it records, unless ``--dataset`` says
    otherwise (then with a warning); with no record, CIFAR-10 for a model of colour images, else
    MNIST (with a warning: a model fitted in Python on Fashion-MNIST would be read as a digit one)."""
    saved = load_checkpoint(args.model)
    settings = _recorded_settings(saved.training)
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
    if not asked and not recorded:  # a file saved from Python (fit, save): its data set is the caller's
        print(f"fastcnn {args.command}: warning: {args.model} records no data set (fastcnn train records it; fit "
              f"and save in Python do not): taking it for {dataset}'s; --dataset names another", file=sys.stderr)
    if asked and recorded and asked != recorded:
        print(f"fastcnn {args.command}: warning: {args.model} was trained on {recorded}, "
              f"but --dataset {asked} was given; using {asked}", file=sys.stderr)
    return _Model(saved.model, dataset, CLASS_NAMES[dataset], False, settings)


def predict(args):
    from ..image import ImageWarning, save_preprocessed  # SciPy's ndimage: only commands that read pictures load it
    model, dataset, names, own, _ = model_file(args)
    choose_backend = len(args.images) <= FEW_PICTURES
    load = picture_loader(model, folder=own, dataset=dataset)
    shape = tuple(model.input_shape) if own else None  # the picture as the model sees it
    seen = _seen_size(model, load, own)  # (height, width) of the picture as read for the model
    if not own and model.input_shape is not None:
        from ..image import load_photo
        read = (*seen, 3 if load is load_photo else 1)
        if tuple(model.input_shape) != read:  # else every picture failed deep in the model, unnamed
            kind = "photo" if read[2] == 3 else "digit"
            raise ModelFileError(f"{args.model}: takes {'x'.join(map(str, model.input_shape))} images; predict reads "
                                 f"a picture as a {'x'.join(map(str, read))} {kind} (MNIST's and CIFAR-10's sizes)")
    if args.save_preprocessed:
        for path in args.images:
            _check_writable(preprocessed_path(path, *seen), args.overwrite)
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
        if choose_backend:  # at the first picture read (its shape is what the model takes): the twins, unless compiled
            choose_backend = False
            if not compiling.compiled(model.plan(image.shape)):
                model.backend = "numpy"
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
    from ..image import PHOTO_SIDE, SIZE, load_photo
    if own:
        return tuple(model.input_shape[:2])
    side = PHOTO_SIDE if load is load_photo else SIZE
    return side, side


def preprocessed_path(path, side=28, width=None):
    """Where ``--save-preprocessed`` writes the image the model saw of ``path``, ``side`` x
    ``side`` (or ``side`` x ``width``): beside it, the whole name kept (``a.png.28x28.png``,
    ``a.jpg.28x28.png``; ``a.jpg.32x32.png`` for a colour model), so two pictures never share one."""
    return f"{path}.{side}x{side if width is None else width}.png"


def evaluate_file(args):
    if args.plot and args.confusion and os.path.abspath(args.plot) == os.path.abspath(args.confusion):
        raise ImageError(f"{args.plot}: named by both --plot and --confusion; give each picture a file of its own")
    for path in (args.plot, args.confusion):
        if path:
            _check_writable(path, args.overwrite)
    model, dataset, names, own, settings = model_file(args)
    if args.data and not own:
        raise ModelFileError(f"--data: {args.model} was trained on {dataset}, not on a folder of pictures; --data "
                             f"names the folder of a model trained on one (--dataset chooses a test set)")
    if own:
        x, y, about = _folder_test_set(args, model, names, settings)
    else:
        x, y = data.load_dataset(dataset, "test", args.data_dir)
        about = f"{dataset} images"
    scored = classes_scored(model, x.shape[1:], "the test images")
    if scored != len(names):  # (else the labels were refused as out of the model's range)
        raise ModelFileError(f"{args.model}: the model scores {scored} classes, {dataset or 'its folder'} has "
                             f"{len(names)}")
    result = evaluate(model, x, y, classes=len(names))
    if args.plot or args.confusion:  # the pictures are drawn before anything is printed
        from ..plots import plot_confusion, plot_errors  # matplotlib: loaded only to draw
        if args.plot:
            plot_errors(args.plot, x, y, result["predicted"], result["probabilities"], names)
        if args.confusion:
            plot_confusion(args.confusion, result["confusion"], names)
    print(f"test accuracy {result['accuracy']:.4f} on {len(y):,} {about}")
    width = max(12, *map(len, names))
    for name, acc in zip(names, result["per_class"]):
        print(f"  {name:>{width}s}  {'no test images' if np.isnan(acc) else f'{acc:.4f}'}")
    print("confusion matrix (rows: true, columns: predicted):")
    for row in result["confusion"]:
        print("  " + " ".join(f"{v:5d}" for v in row))
    if args.plot:
        print(f"wrong guesses: {args.plot}")
    if args.confusion:
        print(f"confusion matrix: {args.confusion}")


def _folder_test_set(args, model, names, settings):
    """The test pictures of the folder a model was trained on (or ``--data``), read as in training."""
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


def history(args):
    if args.plot:
        _check_writable(args.plot, args.overwrite)
    training = load_training(args.model)  # (the model is not built: a layer of one's own needs no import)
    if training is None:
        raise ModelFileError(f"{args.model}: holds no training history (was it written by fastcnn train or fit?)")
    history = training["history"]
    if not history and args.plot:
        raise ModelFileError(f"{args.model}: no epoch of its run has finished yet: nothing to plot")
    settings = _recorded_settings(training)
    if settings:
        try:
            settings = from_checkpoint(settings).relevant()
        except (FastCNNError, TypeError):
            pass  # damaged or foreign settings: print them as they are
        def shown(v):
            return f"{v:.4g}" if isinstance(v, float) else "x".join(map(str, v)) if isinstance(v, (list, tuple)) else v
        print(", ".join(f"{k.replace('_', ' ')} {shown(v)}" for k, v in settings.items()
                        if v is not None and k not in ("validation", "validation_split")))  # (the next line's)
    validated_on = _validated_on(training, settings)
    if validated_on or settings:
        print(f"validation: {validated_on or 'none'}")
    best = training.get("best") or {}
    if history:
        print(f"{'epoch':>5}  {'loss':>8}  {'train acc':>9}  {'val loss':>8}  {'val acc':>8}  {'seconds':>8}")
    for h in history:
        val_loss, val_acc = h.get("val_loss"), h.get("val_acc")
        print(f"{h['epoch']:>5}  {h['loss']:>8.4f}  {h['train_acc']:>9.4f}  "
              f"{'' if val_loss is None else f'{val_loss:.4f}':>8}  {'' if val_acc is None else f'{val_acc:.4f}':>8}  "
              f"{h['seconds']:>8.1f}" + ("  <- kept (best)" if h["epoch"] == best.get("epoch") else ""))
    if training["batch"]:
        print(f"stopped in epoch {training['epoch'] + 1}, after {training['batch']} of its batches (to resume)")
    if "stopped" in training:
        stop = training["stopped"]
        within = f", after {stop['batches']} of its batches" if isinstance(stop.get("batches"), int) else ""
        print(f"stopped {'in' if within else 'after'} epoch {stop['epoch']}{within}: {stop['reason']}")
    test = training.get("test")
    if test:
        print(f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}) on {test['images']:,} images, with the "
              f"weights of epoch {test['epoch']}")
    if args.plot:
        from ..plots import plot_history  # matplotlib: loaded only to draw
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


def serve(args):
    try:
        from ..serve import serve as serve_model  # Flask and waitress: the [web] extra
    except ImportError as e:
        raise FastCNNError(f"serving the page needs the web extra ({e.name} is missing): "
                           f"pip install 'fastcnn[web]'") from None
    limits = server_limits_from_arguments(args)  # checked before the model is loaded
    model, dataset, names, own, _ = model_file(args)
    serve_model(model, host=args.host, port=args.port, classes=names, model_name=args.model, limits=limits,
                quiet=args.quiet, folder=own, dataset=dataset)


def export(args):
    from ..export import PREPROCESSING, export_onnx  # the onnx package: the [onnx] extra
    if os.path.exists(args.out) and os.path.exists(args.model) and os.path.samefile(args.out, args.model):
        raise ModelFileError(f"{args.out}: is the model file being exported; write the ONNX file to another "
                             f"(e.g. {os.path.splitext(args.out)[0]}.onnx)")
    saved = load_checkpoint(args.model)
    settings = _recorded_settings(saved.training)
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
