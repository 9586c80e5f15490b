"""The settings of a training run, in one place.

``Settings`` is the one list of them: the ``fastcnn train`` options are made from its fields
(``add_arguments``), checkpoints store it (``asdict``), and ``--resume`` rebuilds it from there
and refuses a change to any setting but those marked ``resumable``. A field left None takes the
named network's recipe (``architectures.py``), so ``--model deep`` brings its own optimizer and
schedule unless told otherwise.
"""

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

from .architectures import ARCHITECTURES
from .augmentation import PRESETS
from .data import DATASETS
from .errors import ConfigError, ShapeError
from .folders import COLORS, DEFAULT_MAX_SIDE
from .kernels import checks
from .optim import OPTIMIZERS
from .schedules import SCHEDULES
from .validate import divergence_factor, learning_rate

AUTO_AUGMENT = {"mnist": "shift-rotate", "fashion-mnist": "crop-flip", "cifar10": "crop-flip"}  # --augment auto
DIVERGENCE = 10.0  # a run stops when its smoothed loss stays above this many times its start (train.Divergence)


VALIDATIONS = ("split", "test")  # and "end", the held-out end of the training set, for runs of fastcnn 0.2
MONITORS = ("val_loss", "val_acc")
DEFAULT_VALIDATION_SPLIT = 1 / 12  # held out of the training set (fit's too): 5,000 of MNIST's 60,000


def _setting(help, type=None, choices=None, resumable=False, default=None, nargs=None, metavar=None, flag=False):
    return field(default=default, metadata={"help": help, "type": type, "choices": choices, "resumable": resumable,
                                            "nargs": nargs, "metavar": metavar, "flag": flag})


@dataclass
class Settings:
    """One training run's settings; each field is a ``fastcnn train`` option (its metadata holds
    the help, the type, the choices and whether ``--resume`` may change it)."""

    model: str = _setting("the network (default original): " + "; ".join(
        f"{name}: {a.about}" for name, a in ARCHITECTURES.items()), str, tuple(ARCHITECTURES), default="original")
    dataset: Optional[str] = _setting("the data set (default: the network's; mnist for original and deep)", str,
                                      DATASETS)
    data: Optional[str] = _setting("a folder of your own pictures to train on instead of --dataset: one subfolder "
                                   "of pictures per class (train/ and test/ folders of them, or a test/ beside the "
                                   "classes, are used as such); decoded once into a cache", str, resumable=True,
                                   metavar="FOLDER")
    image_size: Optional[Tuple[int, int]] = _setting(
        "resize the --data pictures to H x W pixels (default: their most common size, shrunk to at most "
        f"{DEFAULT_MAX_SIDE} on the longer side)", int, nargs=2, metavar=("H", "W"))
    color: Optional[str] = _setting("read the --data pictures as grey (1 channel) or rgb (3) (default: grey if "
                                    "every picture is)", str, COLORS)
    epochs: Optional[int] = _setting("passes over the training set (default: the network's; 5 for original)", int,
                                     resumable=True)
    batch_size: Optional[int] = _setting("the batch (default 64)", int)
    optimizer: Optional[str] = _setting("sgd or adam (default: the network's; sgd for original)", str, tuple(OPTIMIZERS))
    lr: Optional[float] = _setting("initial learning rate (default: the network's, 0.07 for original; "
                                   "adam: 0.001)", float)
    momentum: Optional[float] = _setting("SGD's momentum (default 0.9)", float)
    schedule: Optional[str] = _setting("learning-rate schedule: inverse-time (lr / (1 + decay * t)), cosine "
                                       "(down to 0 over the run) or constant (default: the network's)", str,
                                       tuple(SCHEDULES))
    decay: Optional[float] = _setting("the inverse-time schedule's decay (default 1e-3)", float)
    weight_decay: Optional[float] = _setting("L2 weight decay added to the gradients (default: the network's; 0 "
                                             "for original)", float)
    validation: Optional[str] = _setting("what each epoch is validated on: split (default) holds out "
                                         "--validation-split of the training set (of each class, drawn from the "
                                         "seed; a val/ folder beside train/ instead, if there is one) and tests on "
                                         "the test set once, at the end; test validates on the test set, as the "
                                         "original project did", str, VALIDATIONS)
    validation_split: Optional[float] = _setting("the fraction of the training set held out to validate on "
                                                 "(default 1/12)", float)
    keep_best: Optional[bool] = _setting("--out holds the epoch with the best --monitor, and OUT.last.npz (e.g. "
                                         "model.last.npz) the last epoch, to resume from", flag=True)
    early_stopping: Optional[int] = _setting("stop when --monitor has not improved for this many epochs", int,
                                             metavar="PATIENCE")
    reduce_lr_on_plateau: Optional[int] = _setting("multiply the learning rate by 0.1 when --monitor has not "
                                                   "improved for this many epochs", int, metavar="PATIENCE")
    monitor: Optional[str] = _setting("what --keep-best, --early-stopping and --reduce-lr-on-plateau watch "
                                      "(default val_loss)", str, MONITORS)
    augment: Optional[str] = _setting("move each training image at random: " + "; ".join(
        f"{name}: {about}" for name, (about, _) in PRESETS.items()) + "; auto: by the data set (shift-rotate for "
        "mnist, crop-flip for fashion-mnist and cifar10, crop for a folder) (default: the network's; none but "
        "for resnet)", str, ("auto", *PRESETS))
    seed: Optional[int] = _setting("initial weights, shuffling, the held-out split, dropout and augmentation "
                                   "(default 0)", int)
    divergence: Optional[float] = _setting(f"stop when the loss, smoothed, stays above this many times its start "
                                           f"(at least 1) for 20 steps (default {DIVERGENCE:g}; 0: only a NaN or "
                                           f"Inf loss stops the run)", float, resumable=True)

    def __post_init__(self):
        if isinstance(self.image_size, list):  # from JSON (a checkpoint) or argparse
            self.image_size = tuple(self.image_size)

    def resolved(self, strict=True):
        """These settings with every None filled in from the network's recipe and the defaults;
        checked (``ConfigError`` naming the setting). ``strict``: a setting given for a part the
        run doesn't use (SGD's momentum in an Adam run, ...) is an error, not silently ignored."""
        if self.model not in ARCHITECTURES:
            raise ConfigError(f"model: expected one of {', '.join(ARCHITECTURES)}, got {self.model!r}")
        if self.data is not None and self.dataset is not None:
            raise ConfigError(f"data: a folder of pictures ({self.data}) and a dataset ({self.dataset}) were both "
                             f"given; give one")
        recipe = dict(dict(augment="none"), **ARCHITECTURES[self.model].recipe, validation="split", keep_best=False,
                      monitor="val_loss", seed=0, divergence=DIVERGENCE)
        if self.data is not None:
            del recipe["dataset"]
        if self.optimizer == "adam" and recipe["optimizer"] != "adam":
            recipe.update(lr=1e-3)  # Adam's own default, unless asked otherwise
        given = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        settings = Settings(**{**recipe, **given})
        if settings.augment == "auto":
            settings.augment = AUTO_AUGMENT.get(settings.dataset, "crop") if settings.data is None else "crop"
        if settings.validation_split is None:
            settings.validation_split = DEFAULT_VALIDATION_SPLIT if settings.validation != "test" else 0.0
        settings.check()
        if strict:
            for name, value in given.items():
                if name not in settings.relevant():
                    raise ConfigError(f"{name}: {value} was given, but {_unused(settings, name)} doesn't use it")
        return settings

    def check(self):
        _choice("model", self.model, ARCHITECTURES)
        if self.data is None:
            _choice("dataset", self.dataset, DATASETS)
        elif not isinstance(self.data, str) or not self.data:
            raise ConfigError(f"data: expected the path of a folder of pictures, got {self.data!r}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("validation", self.validation, VALIDATIONS + ("end",))
        _choice("monitor", self.monitor, MONITORS)
        _choice("augment", self.augment, ("auto", *PRESETS))
        if self.color is not None:
            _choice("color", self.color, COLORS)
        if self.image_size is not None and (
                not isinstance(self.image_size, tuple) or len(self.image_size) != 2
                or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 4096 for d in self.image_size)):
            raise ConfigError(f"image_size: expected H W, each 1 to 4096 pixels, got {self.image_size!r}")
        if not isinstance(self.keep_best, bool):
            raise ConfigError(f"keep_best: expected True or False, got {self.keep_best!r}")
        for name in ("early_stopping", "reduce_lr_on_plateau"):
            if getattr(self, name) is not None:
                checks.non_negative_int(name, getattr(self, name))
        checks.positive_int("epochs", self.epochs)
        checks.positive_int("batch_size", self.batch_size)
        checks.non_negative_int("seed", self.seed)
        learning_rate("lr", self.lr)
        checks.number("momentum", self.momentum, lambda v: 0 <= v < 1, "a value in [0, 1)")
        checks.number("decay", self.decay, lambda v: v >= 0, "a value >= 0")
        checks.number("weight_decay", self.weight_decay, lambda v: v >= 0, "a value >= 0")
        checks.number("validation_split", self.validation_split, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
        divergence_factor("divergence", self.divergence)

    def relevant(self):
        """The settings that shaped this run (SGD's momentum is no part of an Adam run, ...)."""
        out = dataclasses.asdict(self)
        if self.optimizer != "sgd":
            del out["momentum"]
        if self.schedule != "inverse-time":
            del out["decay"]
        for name in ("dataset",) if self.data is not None else ("data", "image_size", "color"):
            del out[name]
        if self.validation == "test":
            del out["validation_split"]
        if not (self.keep_best or self.early_stopping is not None or self.reduce_lr_on_plateau is not None):
            del out["monitor"]
        return out

    def describe(self):
        opt = (f"SGD lr {self.lr:g} momentum {self.momentum:g}" if self.optimizer == "sgd"
               else f"Adam lr {self.lr:g}")
        schedule = f"inverse-time decay {self.decay:g}" if self.schedule == "inverse-time" else self.schedule
        return (f"{self.model} network, batch {self.batch_size}, {opt}, {schedule} schedule, weight decay "
                f"{self.weight_decay:g}" + (f", {self.augment} augmentation" if self.augment != "none" else "")
                + f", seed {self.seed}")


def _unused(settings, name):
    """What makes setting ``name`` idle in a run of ``settings``, for the message refusing it."""
    if name == "momentum":
        return f"--optimizer {settings.optimizer}"
    if name == "decay":
        return f"the {settings.schedule} schedule"
    if name in ("image_size", "color"):
        return "a --dataset run (only --data folders are resized)"
    if name == "validation_split":
        return "--validation test"
    return "a run without --keep-best, --early-stopping or --reduce-lr-on-plateau"


def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def add_arguments(parser):
    """One ``--option`` per setting, named after the field (``batch_size``: ``--batch-size``)."""
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        name, help = "--" + f.name.replace("_", "-"), meta["help"].replace("%", "%%")
        if meta["flag"]:
            parser.add_argument(name, action="store_const", const=True, default=None, help=help)
        else:
            parser.add_argument(name, type=meta["type"], choices=meta["choices"], nargs=meta["nargs"],
                                metavar=meta["metavar"], default=None, help=help)


def from_arguments(args):
    """The settings an ``argparse`` namespace made by ``add_arguments`` holds (None: not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if getattr(args, f.name) is not None}


@contextlib.contextmanager
def named_as_options(names):
    """An error about a setting of ``names`` (given on the command line) names its option
    (``--batch-size``), not the keyword (``batch_size``) that the checks, made for Python, name."""
    try:
        yield
    except (ConfigError, ShapeError) as e:
        name, colon, rest = str(e).partition(":")
        if not colon or name not in names:
            raise
        raise type(e)(f"--{name.replace('_', '-')}:{rest}") from None


def fixed_on_resume():
    return [f.name for f in dataclasses.fields(Settings) if not f.metadata["resumable"]]


def from_checkpoint(saved):
    """The settings a checkpoint's training state holds; files from before ``Settings`` hold the
    original network's run and no model name, and files from before held-out validation
    validated on the test set (or on the end of the training set, with a validation_split)."""
    known = {f.name for f in dataclasses.fields(Settings)}
    saved = {k: v for k, v in saved.items() if k in known}
    if "optimizer" not in saved:  # a version 1 checkpoint: the original's recipe, as it was
        saved.update(model="original", optimizer="sgd", schedule="inverse-time", weight_decay=0.0)
    if "validation" not in saved:  # fastcnn 0.2
        saved["validation"] = "end" if saved.get("validation_split") else "test"
    return Settings(**saved).resolved(strict=False)


def _limit(help, default, type):
    return field(default=default, metadata={"help": help, "type": type})


MAX_SERVER_THREADS = 256  # fastcnn serve's worker threads at most


@dataclass(frozen=True)
class ServerLimits:
    """What ``fastcnn serve`` takes on at most; each field is a ``fastcnn serve`` option. With the
    defaults a server on a 2-core machine stays under 500 MB whatever it is sent (README: Serving)."""

    max_upload: int = _limit("largest request body in bytes, chunked uploads included (default 25,000,000)",
                             25_000_000, int)
    max_connections: int = _limit("open connections at most; more wait to be accepted (default 100)", 100, int)
    threads: int = _limit("requests worked on at once (default 4)", 4, int)
    request_timeout: float = _limit("seconds to receive a whole request; a slower one is cut off (default 30)",
                                    30.0, float)
    idle_timeout: float = _limit("seconds a connection may stay silent between requests (default 15)", 15.0, float)
    decode_memory: int = _limit("bytes of decoded pictures in memory at once; a picture waits for its share "
                                "(default 128 MiB; one picture takes at most 64 MiB)", 128 * 2**20, int)
    batch_window: float = _limit("seconds a prediction waits for requests still being read, to predict them "
                                 "together (default 0.002)", 0.002, float)
    max_batch: int = _limit("pictures predicted together at most (default 64)", 64, int)

    def __post_init__(self):
        from .image import MAX_DECODED_BYTES
        for name in ("max_upload", "max_connections", "threads", "max_batch"):
            checks.positive_int(name, getattr(self, name))
        if self.threads > MAX_SERVER_THREADS:  # each is started up front (100,000 took 500 MB, then failed)
            raise ConfigError(f"threads: expected 1..{MAX_SERVER_THREADS} requests worked on at once, got "
                              f"{self.threads:,}; more requests wait for one (--max-connections)")
        for name in ("request_timeout", "idle_timeout"):
            checks.number(name, getattr(self, name), lambda v: v > 0, "a number of seconds > 0")
        checks.number("batch_window", self.batch_window, lambda v: 0 <= v <= 1, "a number of seconds in [0, 1]")
        checks.positive_int("decode_memory", self.decode_memory)
        if self.decode_memory < MAX_DECODED_BYTES:
            raise ConfigError(f"decode_memory: expected at least {MAX_DECODED_BYTES:,} bytes (one picture's "
                             f"most), got {self.decode_memory:,}")


def add_server_arguments(parser):
    """One ``--option`` per field of ``ServerLimits`` (``max_upload``: ``--max-upload``)."""
    for f in dataclasses.fields(ServerLimits):
        parser.add_argument("--" + f.name.replace("_", "-"), type=f.metadata["type"], default=None,
                            help=f.metadata["help"])


def server_limits_from_arguments(args):
    """The ``ServerLimits`` an ``argparse`` namespace made by ``add_server_arguments`` holds."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerLimits)
             if getattr(args, f.name) is not None}
    with named_as_options(given):
        return ServerLimits(**given)
