"""The settings of a training run, in one place.

``Settings`` is the one list of them: the ``fastcnn train`` options are made from its fields
(``add_arguments``), checkpoints store it (``asdict``), and ``--resume`` rebuilds it from there
and refuses a change to any setting but those marked ``resumable``. A field left None takes the
named network's recipe (``architectures.py``), so ``--model deep`` brings its own optimizer and
schedule unless told otherwise.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .architectures import ARCHITECTURES
from .data import DATASETS
from .errors import ShapeError
from .kernels import checks
from .schedules import SCHEDULES

OPTIMIZERS = ("sgd", "adam")
DIVERGENCE = 10.0  # a run stops when its smoothed loss stays above this many times its start (train.Divergence)


def _setting(help, type=None, choices=None, resumable=False, default=None):
    return field(default=default, metadata={"help": help, "type": type, "choices": choices, "resumable": resumable})


@dataclass
class Settings:
    """One training run's settings; each field is a ``fastcnn train`` option (its metadata holds
    the help, the type, the choices and whether ``--resume`` may change it)."""

    model: str = _setting("the network (default original): " + "; ".join(
        f"{name}: {a.about}" for name, a in ARCHITECTURES.items()), str, tuple(ARCHITECTURES), default="original")
    dataset: Optional[str] = _setting("the data set (default: the network's; mnist for original and deep)", str,
                                      DATASETS)
    epochs: Optional[int] = _setting("passes over the training set (default: the network's; 5 for original)", int,
                                     resumable=True)
    batch_size: Optional[int] = _setting("the batch (default 64)", int)
    optimizer: Optional[str] = _setting("sgd or adam (default: the network's; sgd for original)", str, OPTIMIZERS)
    lr: Optional[float] = _setting("initial learning rate (default: the network's, 0.07 for original; "
                                   "adam: 0.001)", float)
    momentum: Optional[float] = _setting("SGD's momentum (default 0.9)", float)
    schedule: Optional[str] = _setting("learning-rate schedule: inverse-time (lr / (1 + decay * t)), cosine "
                                       "(down to 0 over the run) or constant (default: the network's)", str,
                                       tuple(SCHEDULES))
    decay: Optional[float] = _setting("the inverse-time schedule's decay (default 1e-3)", float)
    weight_decay: Optional[float] = _setting("L2 weight decay added to the gradients (default: the network's; 0 "
                                             "for original)", float)
    validation_split: Optional[float] = _setting("hold out this fraction of the training set (its end) to "
                                                 "validate on after each epoch, instead of the test set", float)
    seed: Optional[int] = _setting("initial weights, shuffling and dropout (default 0)", int)
    divergence: Optional[float] = _setting(f"stop when the loss, smoothed, stays above this many times its start "
                                           f"(at least 1) for 20 steps (default {DIVERGENCE:g}; 0: only a NaN or "
                                           f"Inf loss stops the run)", float, resumable=True)

    def resolved(self, strict=True):
        """These settings with every None filled in from the network's recipe and the defaults;
        checked (``ShapeError`` naming the setting). ``strict``: a setting given for a part the
        run doesn't use (SGD's momentum in an Adam run, ...) is an error, not silently ignored."""
        if self.model not in ARCHITECTURES:
            raise ShapeError(f"model: expected one of {', '.join(ARCHITECTURES)}, got {self.model!r}")
        recipe = dict(ARCHITECTURES[self.model].recipe, validation_split=0.0, seed=0, divergence=DIVERGENCE)
        if self.optimizer == "adam" and recipe["optimizer"] != "adam":
            recipe.update(lr=1e-3)  # Adam's own default, unless asked otherwise
        given = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        settings = Settings(**{**recipe, **given})
        settings.check()
        if strict:
            for name, value in given.items():
                if name not in settings.relevant():
                    used = (f"--optimizer {settings.optimizer}" if name == "momentum"
                            else f"the {settings.schedule} schedule")
                    raise ShapeError(f"{name}: {value} was given, but {used} doesn't use it")
        return settings

    def check(self):
        _choice("model", self.model, ARCHITECTURES)
        _choice("dataset", self.dataset, DATASETS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        checks.positive_int("epochs", self.epochs)
        checks.positive_int("batch_size", self.batch_size)
        checks.non_negative_int("seed", self.seed)
        checks.number("lr", self.lr, lambda v: v > 0, "a learning rate > 0")
        checks.number("momentum", self.momentum, lambda v: 0 <= v < 1, "a value in [0, 1)")
        checks.number("decay", self.decay, lambda v: v >= 0, "a value >= 0")
        checks.number("weight_decay", self.weight_decay, lambda v: v >= 0, "a value >= 0")
        checks.number("validation_split", self.validation_split, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
        checks.number("divergence", self.divergence, lambda v: v == 0 or v > 1, "a factor > 1, or 0 to turn the "
                                                                                 "check off")

    def relevant(self):
        """The settings that shaped this run (SGD's momentum is no part of an Adam run, ...)."""
        out = dataclasses.asdict(self)
        if self.optimizer != "sgd":
            del out["momentum"]
        if self.schedule != "inverse-time":
            del out["decay"]
        return out

    def describe(self):
        opt = (f"SGD lr {self.lr:g} momentum {self.momentum:g}" if self.optimizer == "sgd"
               else f"Adam lr {self.lr:g}")
        schedule = f"inverse-time decay {self.decay:g}" if self.schedule == "inverse-time" else self.schedule
        return (f"{self.model} network, batch {self.batch_size}, {opt}, {schedule} schedule, weight decay "
                f"{self.weight_decay:g}, seed {self.seed}")


def _choice(name, value, choices):
    if value not in choices:
        raise ShapeError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def add_arguments(parser):
    """One ``--option`` per setting, named after the field (``batch_size``: ``--batch-size``)."""
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        parser.add_argument("--" + f.name.replace("_", "-"), type=meta["type"], choices=meta["choices"],
                            default=None, help=meta["help"].replace("%", "%%"))


def from_arguments(args):
    """The settings an ``argparse`` namespace made by ``add_arguments`` holds (None: not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if getattr(args, f.name) is not None}


def fixed_on_resume():
    return [f.name for f in dataclasses.fields(Settings) if not f.metadata["resumable"]]


def from_checkpoint(saved):
    """The settings a checkpoint's training state holds; files from before ``Settings`` hold the
    original network's run and no model name."""
    known = {f.name for f in dataclasses.fields(Settings)}
    saved = {k: v for k, v in saved.items() if k in known}
    if "optimizer" not in saved:  # a version 1 checkpoint: the original's recipe, as it was
        saved.update(model="original", optimizer="sgd", schedule="inverse-time", weight_decay=0.0)
    return Settings(**saved).resolved(strict=False)


def _limit(help, default, type):
    return field(default=default, metadata={"help": help, "type": type})


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
        for name in ("request_timeout", "idle_timeout"):
            checks.number(name, getattr(self, name), lambda v: v > 0, "a number of seconds > 0")
        checks.number("batch_window", self.batch_window, lambda v: 0 <= v <= 1, "a number of seconds in [0, 1]")
        checks.positive_int("decode_memory", self.decode_memory)
        if self.decode_memory < MAX_DECODED_BYTES:
            raise ShapeError(f"decode_memory: expected at least {MAX_DECODED_BYTES:,} bytes (one picture's "
                             f"most), got {self.decode_memory:,}")


def add_server_arguments(parser):
    """One ``--option`` per field of ``ServerLimits`` (``max_upload``: ``--max-upload``)."""
    for f in dataclasses.fields(ServerLimits):
        parser.add_argument("--" + f.name.replace("_", "-"), type=f.metadata["type"], default=None,
                            help=f.metadata["help"])


def server_limits_from_arguments(args):
    """The ``ServerLimits`` an ``argparse`` namespace made by ``add_server_arguments`` holds."""
    return ServerLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServerLimits)
                           if getattr(args, f.name) is not None})
