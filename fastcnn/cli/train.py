"""``fastcnn train``: a named network (or one's own folder of pictures) trained with its recipe.

``train`` is the run behind the command: every setting checked before anything is loaded, the
data (a published data set, or an image folder decoded once into its cache), the model built or
resumed from ``--out``, the validation chosen (1/12 of each class held out by default; the test set
evaluated once, at the end), ``fit``, and what it says at the end. ``--out`` is never replaced
unasked, and is locked while a run writes it.
"""

import contextlib
import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import NamedTuple, Optional

from .. import distributed, fileio, loading
from .. import data as datasets
from ..architectures import ARCHITECTURES
from ..callbacks import EarlyStopping, KeepBest, ReduceLROnPlateau
from ..errors import ConfigError, ModelFileError, ShapeError
from ..training import fit, fresh_state, holdout
from ..folders import Split, image_folder
from ..kernels import checks
from ..kernels.jit import set_threads
from ..optim import make_optimizer
from ..schedules import make_schedule
from ..settings import Settings, fixed_on_resume, from_arguments, from_checkpoint, named_as_options


def run(args):
    """The command: ``train`` with the command line's settings, holding a lock on ``--out``."""
    lock = contextlib.nullcontext()
    if distributed.world().is_root:  # the one process that writes --out
        fileio.check_writable_output(args.out)  # (a folder that can't take it is said so before the lock)
        lock = fileio.exclusive(args.out, shlex.join(["fastcnn", "train", "--out", str(args.out)]))
    given = from_arguments(args)
    options = {"data_dir": args.data_dir, "threads": args.threads, "checkpoint_every": args.checkpoint_every}
    with lock, named_as_options({*given, *(k for k, v in options.items() if v is not None)}):
        train(args.out, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite, **options,
              **given)


def resume_command(args):
    """The command that continues an interrupted ``train``: the checkpoint keeps the settings;
    the data, thread count (for identical weights), epochs and output options come from here."""
    size = distributed.world().size
    cmd = ["mpiexec", "-n", str(size)] * (size > 1) + ["fastcnn", "train", "--out", args.out, "--resume"]
    for flag in ("--data-dir", "--threads", "--epochs", "--checkpoint-every"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            cmd += [flag, str(value)]
    return shlex.join(cmd + (["--no-progress"] if args.no_progress else []))


def _resumed_file(out, last, say):
    """The file ``--resume`` continues: ``out``, or its last-epoch file when ``out`` holds the best
    epoch of a ``--keep-best`` run (or none yet). A last-epoch file beside a run that doesn't keep
    the best one is an earlier run's, left behind: ignored, and said (``say``)."""
    if not os.path.isfile(last):
        return out
    if not fileio.taken(out):
        return last  # a --keep-best run stopped before its first epoch's end
    try:
        training = loading.load_training(out) or {}
    except ModelFileError:
        return out  # (whose loading then says what is wrong with it)
    if "best" in training or training.get("settings", {}).get("keep_best"):
        return last
    if say:
        print(f"fastcnn: {last} is left from an earlier --keep-best run into {out}; the run in {out} is resumed",
              file=sys.stderr)
    return out


def last_epoch_path(out):
    """Where a ``--keep-best`` run keeps its last epoch, to resume from: ``model.npz`` ->
    ``model.last.npz`` beside it (``out`` itself holds the best epoch)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.last{out.suffix}")


class _Data(NamedTuple):
    """A run's data: the splits (the training pair, and the test and val pairs or None), the class
    names to record (None for the published data sets), what it is called and how it was read."""
    train: tuple
    test: Optional[tuple]
    val: Optional[tuple]
    classes: Optional[tuple]
    name: str
    how: str


def _load_data(settings, data_dir, verbose, progress):
    """The data ``settings`` name: a folder of pictures (decoded once, then from its cache), or a
    published data set."""
    if settings.data is not None:
        folder = image_folder(settings.data, settings.image_size, settings.color, verbose=verbose,
                              progress=progress)
        how = f" ({'decoded' if folder.decoded else 'read from the cache'} in {folder.seconds:.1f} s)"
        return _Data(folder.train, folder.test, folder.val, folder.classes, f"{folder.root}", how), folder
    # uint8 pixels, scaled batch by batch as they are read: a quarter of the memory, the same numbers
    train_data = Split(*datasets.load_dataset(settings.dataset, "train", data_dir, pixels=True), name="train")
    test_data = Split(*datasets.load_dataset(settings.dataset, "test", data_dir, pixels=True), name="test")
    return _Data(train_data, test_data, None, None, settings.dataset, ""), None


class _Validation(NamedTuple):
    """How a run validates: fit's training pair, validation pair (or None), fraction to hold out
    and test pair (or None), the number of images it trains on, and a phrase saying so."""
    train: tuple
    validation: Optional[tuple]
    split: float
    test: Optional[tuple]
    trained_on: int
    about: str


def _validation_plan(settings, data):
    """How ``settings`` validate on ``data``: a :class:`_Validation`."""
    x, y = data.train
    if settings.validation == "test":
        if data.test is None:
            raise ShapeError(f"validation: --validation test needs a test set, and {data.name} has none (a test/ "
                             f"folder of class folders); hold out a split of the training pictures instead")
        return _Validation(data.train, data.test, 0.0, None, len(y),
                     "validating on the test set after each epoch (--validation test, as the original project did)")
    if settings.validation == "end":  # a run of fastcnn 0.2: the end of the training set, as it held out
        held = int(round(len(y) * settings.validation_split))
        if not 1 <= held < len(y):
            raise ShapeError(f"validation_split: {settings.validation_split} of {len(y)} images leaves {held} to "
                             f"validate on and {len(y) - held} to train on; both need at least one")
        return _Validation((x[:-held], y[:-held]), Split(x[-held:], y[-held:], name="held-out end"), 0.0, data.test,
                     len(y) - held, f"validating on the last {held:,} training images (as fastcnn 0.2 held out)")
    if data.val is not None:
        return _Validation(data.train, data.val, 0.0, data.test, len(y),
                           f"validating on its val/ folder ({len(data.val[1]):,})")
    split = settings.validation_split
    rows, held = holdout(y, split, settings.seed) if split else (y, ())
    if not len(held):
        if split:
            print(f"{data.name}: too few pictures of each class to hold out {split:.3g} of them: training without "
                  f"validation (a larger --validation-split holds some out)", file=sys.stderr)
        return _Validation(data.train, None, 0.0, data.test, len(y), "no validation")
    tested = f"; the test set, {len(data.test[1]):,}, is evaluated at the end" if data.test is not None else ""
    return _Validation(data.train, None, split, data.test, len(rows),
                       f"{len(held):,} held out to validate on ({split:.3g} of each class{tested})")


def make_callbacks(settings, out):
    """The callbacks ``settings`` ask for: KeepBest into ``out``, EarlyStopping, ReduceLROnPlateau."""
    callbacks = []
    if settings.keep_best:
        callbacks.append(KeepBest(out, settings.monitor, overwrite=True))  # (see train)
    if settings.early_stopping is not None:
        callbacks.append(EarlyStopping(settings.monitor, settings.early_stopping))
    if settings.reduce_lr_on_plateau is not None:
        callbacks.append(ReduceLROnPlateau(settings.monitor, patience=settings.reduce_lr_on_plateau))
    return callbacks


def train(out="model.npz", *, data_dir=None, threads=None, resume=False, progress=True, checkpoint_every=None,
          overwrite=False, **given):
    """The training script: load the data, build or resume the model, fit, save. Returns the history.

    ``given`` are settings (``fastcnn.settings.Settings``'s fields: ``model="deep"``,
    ``epochs=15``, ``optimizer="adam"``, ``data="pictures/"``, ...); the rest take the named
    network's recipe, or on ``resume`` the checkpoint's (which may only change ``epochs`` and
    ``data``, the folder's place). Every setting is checked before anything is loaded. By default
    1/12 of the training set is held out to validate on (``validation="test"``: the test set, as
    the original project did), and the test set is evaluated once, at the end. With
    ``keep_best``, ``out`` holds the best epoch and :func:`last_epoch_path` the last, to resume
    from. An existing ``out`` is only replaced with ``overwrite`` (else ``ModelFileError``): it
    may be a model that took an hour to train. Temporary files a killed earlier run left beside
    ``out`` are removed first. SIGINT or SIGTERM saves the checkpoint and raises
    ``TrainingInterrupted`` (see :func:`fit`).
    """
    fields = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a setting; the settings are {', '.join(sorted(fields))}")
    given = {k: v for k, v in given.items() if v is not None}
    requested = Settings(**given).resolved()
    if checkpoint_every is not None:
        checks.positive_int("checkpoint_every", checkpoint_every)
    world = distributed.world()
    threads = set_threads(world.default_threads() if threads is None else threads)
    last = last_epoch_path(out)
    if not resume and not overwrite:
        for path in (out, last) if requested.keep_best else (out,):
            if fileio.taken(path):
                raise ModelFileError(f"{path}: already exists; continue its run with --resume, train into another "
                                     f"file with --out, or replace it with --overwrite")
    if world.is_root:  # the one process that writes out (another's probe would race its clean-up)
        fileio.check_writable_output(out)
        fileio.remove_stale_temps(out)
        fileio.remove_stale_temps(last)
    if resume:
        resume_from = _resumed_file(out, last, world.is_root)
        saved = loading.load_checkpoint(resume_from)
        if saved.optimizer is None or saved.training is None:
            if (saved.training or {}).get("best"):
                raise ModelFileError(f"{out}: holds the best epoch of a --keep-best run; the last epoch, to resume "
                                     f"from, was kept in {last}, which is missing")
            raise ModelFileError(f"{out}: holds a model but no training state to resume from")
        if "settings" not in saved.training:  # fit's own file: its data and settings are the caller's
            raise ModelFileError(f"{resume_from}: was written by fit() in Python, which records no data set or "
                                 f"settings for fastcnn train to resume with; resume it there: ck = "
                                 f"fastcnn.load_checkpoint(path), then fit(ck.model, ck.optimizer, <the same data>, "
                                 f"training=ck.training)")
        try:
            settings = from_checkpoint(saved.training.get("settings", {}))
        except (ShapeError, ConfigError, TypeError) as e:
            raise ModelFileError(f"{resume_from}: damaged training settings: {e}") from None
        named = Path(out)
        if resume_from == out and settings.keep_best and named.stem.endswith(".last"):
            run_out = named.with_name(named.stem[:-len(".last")] + named.suffix)
            raise ModelFileError(f"{out}: holds the last epoch of a --keep-best run, which resumes by the run's own "
                                 f"--out: fastcnn train --out {shlex.quote(os.fspath(run_out))} --resume")
        resumed = Settings(**given).resolved(strict=False) if given else settings
        for key in fixed_on_resume():
            if key in given and getattr(resumed, key) != getattr(settings, key):
                raise ShapeError(f"--{key.replace('_', '-')} {given[key]} differs from the checkpoint's "
                                 f"{getattr(settings, key)}; a resumed run keeps its settings")
        stretched = "epochs" in given and given["epochs"] != settings.epochs
        settings = dataclasses.replace(settings, epochs=given.get("epochs", settings.epochs),
                                       data=os.path.abspath(given["data"]) if "data" in given else settings.data)
        model, optimizer, state = saved.model, saved.optimizer, saved.training
        if "stopped" in state:
            stop = state["stopped"]
            print(f"{out}: this run stopped after epoch {stop['epoch']} of {settings.epochs}: {stop['reason']}; "
                  f"there is nothing to resume")
            return []
        if state["epoch"] >= settings.epochs and state["batch"] == 0:
            done = state["history"][-1].get("val_acc") if state["history"] else None
            print(f"{out}: this run has finished its {settings.epochs} epochs"
                  + (f" (validation accuracy {done:.4f})" if done is not None else "")
                  + f"; to train further, ask for more: fastcnn train --out {shlex.quote(os.fspath(out))} "
                    f"--resume --epochs {settings.epochs + 5}")
            return []
    else:
        settings, stretched, state = requested, False, None
        if settings.data is not None:
            settings = dataclasses.replace(settings, data=os.path.abspath(settings.data))
    data, folder = _load_data(settings, data_dir, world.is_root, progress)
    if folder is not None:
        if resume and list(folder.classes) != state.get("classes"):
            raise ShapeError(f"data: {folder.root} has the classes {', '.join(folder.classes)}, the run being "
                             f"resumed had {', '.join(state.get('classes') or [])}")
        before = state.get("folder") or {} if resume else {"fingerprint": folder.fingerprint}
        if before.get("fingerprint") != folder.fingerprint and world.is_root:
            print(f"{folder.root}: its pictures changed since this run started (added, removed or modified): the "
                  f"resumed run trains on them as they are now", file=sys.stderr)
        settings = dataclasses.replace(settings, image_size=folder.image_size, color=folder.color)
    validating = _validation_plan(settings, data)
    classes = len(data.classes) if data.classes else int(max(data.train[1].max(), data.test[1].max())) + 1
    batches = -(-validating.trained_on // settings.batch_size)
    if resume:
        if stretched and settings.schedule == "cosine":  # the curve now spans the longer (or shorter) run
            optimizer.schedule = make_schedule(settings, batches)
    else:
        model = ARCHITECTURES[settings.model].build(data.train[0].shape[1:], classes, settings.seed)
        optimizer = make_optimizer(model, settings, batches)
    cores = f"{threads} thread{'s' * (threads > 1)}" + (f" in each of {world.size} processes" if world.size > 1 else "")
    shape = "x".join(map(str, data.train[0].shape[1:]))
    print(f"Training on {data.name}{data.how}: {len(data.train[1]):,} images of {shape}, {validating.about}; {cores}, "
          f"{settings.describe()}" + (" (resumed)" if resume else ""), flush=True)
    state = state or fresh_state()
    state["settings"] = dataclasses.asdict(settings)
    if folder is not None:
        state["folder"] = {"fingerprint": folder.fingerprint, "images": len(folder.train[1])}
    callbacks = make_callbacks(settings, out)
    # (out and KeepBest's file: refused above if they exist, unless --overwrite or --resume)
    history = fit(model, optimizer, validating.train, validating.validation, epochs=settings.epochs,
                  batch_size=settings.batch_size, seed=settings.seed, validation_split=validating.split,
                  test=validating.test,
                  callbacks=callbacks, classes=data.classes, out=last if settings.keep_best else out,
                  overwrite=True, training=state, progress=progress, checkpoint_every=checkpoint_every,
                  divergence=settings.divergence, augment=settings.augment)
    if history and world.is_root:
        print(_saved_message(out, last, settings, state, callbacks, data))
    elif not history:
        print(f"{out}: nothing to do")
    return history


def _saved_message(out, last, settings, state, callbacks, data):
    """What ``train`` says at the end: where the model is, and its test accuracy."""
    best = next((c for c in callbacks if isinstance(c, KeepBest)), None)
    kept = best.best_epoch if best is not None and best.best_epoch is not None else state["epoch"]
    which = (f" (the best epoch, {kept}: {best.monitor} {best.best:.4f}; the last, to resume from: {last})"
             if best is not None else "")
    if settings.validation == "test":
        record = next(h for h in state["history"] if h["epoch"] == kept)
        return (f"Saved {out}{which}: test accuracy {record['val_acc']:.4f} (the test set was also the validation "
                f"set: --validation test)")
    if "test" in state:
        return f"Saved {out}{which}: test accuracy {state['test']['accuracy']:.4f}"
    record = next(h for h in state["history"] if h["epoch"] == kept)
    return (f"Saved {out}{which}: validation accuracy {record['val_acc']:.4f} (no test set: {data.name} has no "
            f"test/ folder)" if record.get("val_acc") is not None else f"Saved {out}{which}")
