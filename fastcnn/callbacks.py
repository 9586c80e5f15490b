"""Callbacks: what ``fit`` runs at the end of every batch and epoch, to stop early, keep the best
epoch, lower the learning rate on a plateau, or anything of one's own::

    fit(model, opt, train, callbacks=[KeepBest("best.npz"), EarlyStopping("val_loss", patience=3),
                                      ReduceLROnPlateau("val_loss", patience=2)])

A callback of one's own subclasses :class:`Callback` and overrides what it needs. ``fit`` gives
it ``self.run`` (a :class:`TrainingRun`: the model, the optimizer, the history, ``stop()``), then
calls ``on_train_begin()``, ``on_epoch_begin(epoch)``, ``on_batch_end(batch, logs)`` after each
optimizer step, ``on_epoch_end(epoch, logs)`` after each epoch's validation (``logs`` is that
epoch's history record: ``loss``, ``train_acc``, ``val_loss``, ``val_acc``, ...), and at the end
``on_train_end()`` and, if ``fit`` was given a test set, ``on_test_end(logs)``. Epochs count
from 1, as in the history; batches from 1 within their epoch.

A checkpoint keeps each callback's ``state_dict()`` (JSON-able), and a resumed run gives it back
with ``load_state_dict(state)`` before ``on_train_begin``, so patience counters, the best value
so far and the best weights survive ``--resume``. The learning rate a callback sets is the
optimizer's ``lr``, which the checkpoint keeps too.

Under MPI every process runs the callbacks on the same numbers (rank 0's validation results are
sent to all), so all of them decide alike; only rank 0 writes files and prints (``run.is_root``).
"""

import json
import os

import numpy as np

from .checkpoint import save
from .loading import load_checkpoint
from .errors import ConfigError, ModelFileError, ShapeError
from .fileio import check_writable_output, taken
from .kernels import checks

__all__ = ["Callback", "EarlyStopping", "KeepBest", "ReduceLROnPlateau", "TrainingRun"]


class TrainingRun:
    """What callbacks see of the run ``fit`` is doing.

    ``model`` and ``optimizer``; ``state``, the training state a checkpoint holds (``history``:
    one record per epoch, ``epoch``, ...); ``epochs``, the run's length; ``validates``, whether
    the records have ``val_loss`` and ``val_acc``; ``is_root``, whether this process writes files
    and prints; ``out``, the checkpoint ``fit`` writes (or None). ``stop(reason)`` ends training
    after the current batch; ``weights_epoch`` is the epoch whose weights the model holds at the end.
    """

    def __init__(self, model, optimizer, state, epochs, validates, is_root=True, out=None):
        self.model, self.optimizer, self.state, self.epochs = model, optimizer, state, epochs
        self.validates, self.is_root, self.out = validates, is_root, out
        self.stop_reason = None
        self.weights_epoch = None

    @property
    def history(self):
        return self.state["history"]

    def stop(self, reason):
        """Stop training after the current batch (the first reason given is kept)."""
        if self.stop_reason is None:
            self.stop_reason = str(reason)

    def say(self, text):
        if self.is_root:
            print(text, flush=True)


class Callback:
    """The base of every callback: each method does nothing until overridden (see the module)."""

    run = None  # the TrainingRun, set by fit before on_train_begin

    def on_train_begin(self):
        pass

    def on_epoch_begin(self, epoch):
        pass

    def on_batch_end(self, batch, logs):
        """After each optimizer step; ``logs``: ``loss`` and ``acc`` of the batch, ``step``."""

    def on_epoch_end(self, epoch, logs):
        """After each epoch's validation; ``logs`` is the epoch's history record."""

    def on_train_end(self):
        pass

    def on_test_end(self, logs):
        """After the test set was evaluated at the end: ``logs`` has ``loss``, ``accuracy``,
        ``images`` and ``epoch`` (whose weights were tested)."""

    def state_dict(self):
        """What a checkpoint keeps of this callback, so a resumed run continues it (JSON-able)."""
        return {}

    def load_state_dict(self, state):
        pass


# The numbers of an epoch's record that fit keeps (training.py), which a callback may monitor
# (besides any a callback of the user's adds to it); and the names Keras gives some of them.
RECORDED = ("val_loss", "val_acc", "loss", "train_acc", "seconds", "samples_per_s")
_KERAS_NAMES = {"val_accuracy": "val_acc", "accuracy": "train_acc", "acc": "train_acc"}


class _Monitored(Callback):
    """A callback that watches one number of the epoch records, ``monitor``, for improvement:
    ``mode`` "min" or "max" ("auto": max for accuracies, min otherwise), by more than ``min_delta``."""

    def __init__(self, monitor, mode, min_delta):
        if not isinstance(monitor, str) or not monitor:
            raise ShapeError(f"monitor: expected the name of a number in the history (val_loss, val_acc, loss, "
                             f"train_acc), got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ShapeError(f"mode: expected auto, min or max, got {mode!r}")
        self.monitor = monitor
        self.mode = ("max" if monitor.endswith("acc") else "min") if mode == "auto" else mode
        self.min_delta = checks.number("min_delta", min_delta, lambda v: v >= 0, "a value >= 0")
        self.best, self.best_epoch = None, None

    def on_train_begin(self):
        if self.monitor in _KERAS_NAMES:  # now, not after the first epoch's work (another callback
            # may record a number of its own, found in the record at the epoch's end)
            raise ShapeError(f"{type(self).__name__}: monitor {self.monitor!r} is Keras's name; fastcnn's is "
                             f"{_KERAS_NAMES[self.monitor]!r} (the history has {', '.join(RECORDED)})")
        if self.monitor.startswith("val_") and not self.run.validates:
            raise ShapeError(f"{type(self).__name__} monitors {self.monitor}, but fit has no validation data: "
                             f"give validation data or a validation_split (fastcnn train: --validation-split > 0)")

    def _value(self, logs):
        value = logs.get(self.monitor)
        if value is None:
            known = ", ".join(k for k, v in logs.items() if isinstance(v, float))
            raise ShapeError(f"{type(self).__name__}: monitor {self.monitor!r} is not in the epoch's record "
                             f"(it has {known})")
        return float(value)

    def _improved(self, value):
        """Whether ``value`` beats the best so far (the first value always does)."""
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def _describe_best(self):
        return f"best {self.monitor} {self.best:.4f} at epoch {self.best_epoch}"

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")


class EarlyStopping(_Monitored):
    """Stop when ``monitor`` has not improved for ``patience`` epochs: within ``patience`` epochs
    of the best one."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto"):
        super().__init__(monitor, mode, min_delta)
        self.patience = checks.non_negative_int("patience", patience)
        self.wait = 0

    def on_epoch_end(self, epoch, logs):
        value = self._value(logs)
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.run.stop(f"EarlyStopping: {self.monitor} has not improved for {self.wait} epoch"
                          f"{'s' * (self.wait != 1)} ({self._describe_best()})")

    def state_dict(self):
        return {**super().state_dict(), "wait": self.wait}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.wait = int(state.get("wait", 0))


class ReduceLROnPlateau(_Monitored):
    """Multiply the optimizer's learning rate by ``factor`` when ``monitor`` has not improved for
    ``patience`` epochs (not below ``min_lr``), then wait ``cooldown`` epochs before counting
    again. The rate is the optimizer's ``lr``: a schedule's curve is scaled by it."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_lr=0.0, cooldown=0, min_delta=0.0,
                 mode="auto"):
        super().__init__(monitor, mode, min_delta)
        self.factor = checks.number("factor", factor, lambda v: 0 < v < 1, "a factor in (0, 1)")
        self.patience = checks.non_negative_int("patience", patience)
        self.min_lr = checks.number("min_lr", min_lr, lambda v: v >= 0, "a learning rate >= 0")
        self.cooldown = checks.non_negative_int("cooldown", cooldown)
        self.wait, self.cooling = 0, 0

    def on_epoch_end(self, epoch, logs):
        value = self._value(logs)
        if self.cooling:
            self.cooling -= 1
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return
        if self.cooling:
            return
        self.wait += 1
        optimizer = self.run.optimizer
        if self.wait >= self.patience and optimizer.lr > self.min_lr:
            lr = max(optimizer.lr * self.factor, self.min_lr)
            self.run.say(f"ReduceLROnPlateau: {self.monitor} has not improved for {self.wait} epoch"
                         f"{'s' * (self.wait != 1)} ({self._describe_best()}): learning rate "
                         f"{optimizer.lr:g} -> {lr:g}")
            optimizer.lr = lr
            self.wait, self.cooling = 0, self.cooldown

    def state_dict(self):
        return {**super().state_dict(), "wait": self.wait, "cooling": self.cooling}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.wait, self.cooling = int(state.get("wait", 0)), int(state.get("cooling", 0))


class KeepBest(_Monitored):
    """Keep the weights of the epoch with the best ``monitor`` in the model file ``path``.

    Whenever an epoch beats the best so far, ``path`` is rewritten (atomically) with the model as
    it is then, the history so far and ``"best"`` (epoch, monitor, value) in its training state,
    but no optimizer: it is a model to use, not a run to resume (``fit``'s ``out`` keeps the last
    epoch for that). At the end of training, with ``restore`` (the default), the model gets the
    best weights back, so what ``fit`` leaves in memory, tests and returns is what ``path`` holds;
    ``path`` is then rewritten once more with the whole history and the test result. An existing
    ``path`` is replaced only by the run that wrote it (resumed from its checkpoint) or with
    ``overwrite=True``: else ``ModelFileError`` when training begins.
    """

    def __init__(self, path, monitor="val_loss", mode="auto", min_delta=0.0, restore=True, overwrite=False):
        super().__init__(monitor, mode, min_delta)
        if not isinstance(path, (str, os.PathLike)):
            raise ShapeError(f"path: expected the model file to keep the best epoch in, got {type(path).__name__}")
        self.path, self.restore, self.overwrite = path, bool(restore), bool(overwrite)
        self._weights = None  # (parameters, buffers) of the best epoch

    def on_train_begin(self):
        super().on_train_begin()
        out = self.run.out
        if out is not None and os.path.abspath(out) == os.path.abspath(self.path):
            raise ShapeError(f"KeepBest: {self.path} is also fit's out, which keeps the last epoch to resume from; "
                             f"keep the best one in another file")
        resumed = self.best_epoch is not None  # (a resumed run's best so far is in this file)
        if not (self.overwrite or resumed) and taken(self.path):
            raise ModelFileError(f"KeepBest: {self.path} already exists (a model from an earlier run?) and would be "
                                 f"replaced by the first epoch; keep the best epoch in another file, or pass "
                                 f"KeepBest(..., overwrite=True)")
        if self.run.is_root:
            check_writable_output(self.path)

    def on_epoch_end(self, epoch, logs):
        value = self._value(logs)
        if not self._improved(value):
            return
        self.best, self.best_epoch = value, epoch
        model = self.run.model
        self._weights = (model.parameters.copy(), [b.copy() for _, b in model.named_buffers()])
        self._write()

    def on_train_end(self):
        if self.restore and self._weights is not None:
            parameters, buffers = self._weights
            self.run.model.parameters[...] = parameters
            for (_, b), saved in zip(self.run.model.named_buffers(), buffers):
                b[...] = saved
            if self.best_epoch != self.run.weights_epoch:
                self.run.say(f"KeepBest: the model holds the weights of epoch {self.best_epoch} again "
                             f"({self._describe_best()}), as {self.path} does")
            self.run.weights_epoch = self.best_epoch

    def on_test_end(self, logs):
        if self.restore and self._weights is not None:
            self._write()  # the whole history and the test result, beside the best weights

    def _write(self):
        """``path``: the model (holding the best weights) and the training state as it is now."""
        if not self.run.is_root:
            return
        state = {k: v for k, v in self.run.state.items() if k != "callbacks"}  # save writes it at once
        state["best"] = {"epoch": self.best_epoch, "monitor": self.monitor, "value": self.best}
        save(self.path, self.run.model, None, state)

    def load_state_dict(self, state):
        """The best value and epoch, and the best weights from ``path`` (where the run wrote them)."""
        super().load_state_dict(state)
        if self.best_epoch is None:
            return
        try:
            saved = load_checkpoint(self.path)
        except ModelFileError as e:
            raise ModelFileError(f"KeepBest: the best epoch ({self.best_epoch}) of the run being resumed was kept "
                                 f"in {self.path}, which cannot be read: {e}") from None
        model = self.run.model
        if saved.model.parameters.shape != model.parameters.shape:
            raise ModelFileError(f"KeepBest: {self.path} holds another network than the run being resumed")
        self._weights = (saved.model.parameters.copy(), [b.copy() for _, b in saved.model.named_buffers()])


def check_callbacks(callbacks):
    """``callbacks`` as a list of Callback instances, or ``ShapeError``."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or not hasattr(callbacks, "__iter__"):
        raise ShapeError(f"callbacks: expected a list of callbacks, got {type(callbacks).__name__}")
    callbacks = list(callbacks)
    for i, c in enumerate(callbacks):
        if not isinstance(c, Callback):
            made = f"; make one: {c.__name__}(...)" if isinstance(c, type) and issubclass(c, Callback) else ""
            raise ShapeError(f"callbacks[{i}]: expected a fastcnn.callbacks.Callback, got "
                             f"{'the class ' + c.__name__ if made else type(c).__name__}{made}")
    return callbacks


def saved_states(callbacks):
    """What a checkpoint keeps of ``callbacks``: each one's type and state, as JSON keeps it
    (NumPy's numbers become Python's); ``ConfigError`` naming the callback whose state JSON can't
    hold, so that fit stops at its start, not when it saves the first epoch."""
    return [{"type": type(c).__name__, "state": _as_json(c)} for c in callbacks]


def _as_json(callback):
    state = callback.state_dict()
    try:
        return json.loads(json.dumps(state, default=lambda v: v.item() if isinstance(v, np.generic) else _refuse(v)))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"callbacks: {type(callback).__name__}.state_dict() gave {state!r:.80}, which a checkpoint "
                          f"can't keep ({e}); expected a dict of numbers, strings, None, lists and dicts") from None


def _refuse(value):
    raise TypeError(f"{type(value).__name__} {value!r:.40}")


def restore_states(callbacks, saved):
    """Give each callback its state from a checkpoint's ``saved`` list (None: a run that kept none)."""
    if not saved:
        return
    names = [type(c).__name__ for c in callbacks]
    kept = [s.get("type") if isinstance(s, dict) else None for s in saved]
    if names != kept:
        raise ShapeError(f"callbacks: the run being resumed had {', '.join(map(str, kept)) or 'none'}, got "
                         f"{', '.join(names) or 'none'}; resume with the same callbacks")
    for c, s in zip(callbacks, saved):
        c.load_state_dict(s.get("state") or {})

