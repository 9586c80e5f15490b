"""Training: ``fit`` (the epoch loop, validation, checkpoints, resume, stopping safely) and
``train`` (the training script: a named network and its settings, the data, fit, save).

The shuffle of epoch ``e`` is ``default_rng([seed, e]).permutation(N)``: the seed and the epoch
are the whole RNG state, so a resumed run draws exactly the batches an uninterrupted one would.
The checkpoint (the output file itself, rewritten atomically) holds the model, the optimizer and
``training``: settings, position (epoch, batch), the running totals of the epoch and the history.
It is written after every epoch, every ``checkpoint_every`` batches if asked, and when SIGINT
(Ctrl-C) or SIGTERM arrives: then training stops at the next batch boundary, saves the position
and raises ``TrainingInterrupted``. Resuming from any of these ends with the weights of an
uninterrupted run, bit for bit (for the same thread count). A checkpoint is never written with
NaN or Inf weights, so the file always holds the last good state.
"""

import contextlib
import signal
import sys
import threading
import time

import numba
import numpy as np
from tqdm import tqdm

from . import checkpoint, distributed, fileio
from .errors import FastCNNError, ModelFileError, ShapeError
from .inference import check_batch
from .kernels import checks, jit
from .optim import Optimizer
from .settings import DIVERGENCE


class TrainingDiverged(FastCNNError, FloatingPointError):
    """The loss, or the weights, became NaN or Inf, or the loss ran away (see ``Divergence``)."""


class Divergence:
    """Stops a run whose loss has run away, before it wastes the rest of its time.

    NaN or Inf stops it at once. Otherwise the loss, smoothed over about ten steps, is compared
    with its value at the run's first step (at least 1: a loss that starts near 0, as a resumed
    run's may, is not held to a tenth of nothing): above ``factor`` times that for ``PATIENCE``
    steps in a row, the run stops with the step and the advice. ``factor`` 0 (or None) leaves only
    the NaN check. (A NaN gradient shows as a NaN loss the step after; no NaN is ever saved.)
    """

    PATIENCE = 20
    DEFAULT = DIVERGENCE

    def __init__(self, factor=DEFAULT):
        self.factor = checks.number("divergence", 0.0 if factor is None else factor,
                                    lambda v: v == 0 or v > 1, "a factor > 1, or 0 to turn the check off")
        self.start = self.smoothed = None
        self.above = 0

    def check(self, loss, optimizer, where):
        """Raise ``TrainingDiverged`` if ``loss`` (of the step about to be taken) says so."""
        advice = (f"the learning rate {optimizer.lr:g} is probably too high; try {optimizer.lr / 10:g}")
        if not np.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {optimizer.steps + 1} ({where}); {advice}")
        if not self.factor:
            return
        loss = float(loss)  # (Python's floats: a huge factor makes inf, not a NumPy overflow warning)
        if self.start is None:
            self.start = self.smoothed = loss
        self.smoothed = 0.9 * self.smoothed + 0.1 * loss
        self.above = self.above + 1 if self.smoothed > self.factor * max(self.start, 1.0) else 0
        if self.above >= self.PATIENCE:
            raise TrainingDiverged(
                f"the loss ran away: from {self.start:.4g} at the run's first step to {loss:.4g} at step "
                f"{optimizer.steps + 1} ({where}), above {self.factor:g} times the start for {self.PATIENCE} "
                f"steps; {advice} (--divergence 0 turns this check off)")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training at a batch boundary, after saving a checkpoint there.

    A KeyboardInterrupt, so ``except Exception`` doesn't swallow it. ``checkpoint`` is the file
    written (None if ``fit`` had no ``out``), ``state`` the position to resume from, and
    ``exit_status`` the shell's convention for the signal: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, message, signum, checkpoint, state):
        super().__init__(message)
        self.signum, self.checkpoint, self.state = signum, checkpoint, state
        self.exit_status = 128 + signum


def mnist_network(seed=0, backend="numba"):
    """The original project's network for MNIST: Conv 3x3x32 pad 1, ReLU, MaxPool 2, Dense 128,
    ReLU, Dense 10."""
    from .architectures import ARCHITECTURES
    return ARCHITECTURES["original"].build((28, 28, 1), 10, seed, backend)


def set_threads(threads):
    """Use ``threads`` cores for the kernels (None: all of them). That is all the threads a
    step uses: the matrix products run inside the kernels' threads (``kernels/blas.py``)."""
    n = numba.config.NUMBA_NUM_THREADS if threads is None else threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ShapeError(f"threads: expected 1..{numba.config.NUMBA_NUM_THREADS} on this machine, got {threads!r}")
    numba.set_num_threads(int(n))
    return int(n)


def warm_up(model, example_shape):
    """Compile (or load from Numba's cache) every kernel a training step and ``predict`` run, before
    training starts, saying so on stderr when it compiles: the first run on a machine."""
    def say():
        seconds = jit.COMPILE_SECONDS
        print(f"compiling kernels for this machine (first run only, about {seconds['original']} s for the "
              f"original network, up to {seconds['deeper']} s for deeper ones)...",
              file=sys.stderr, flush=True)
        started.append(time.perf_counter())
    started = []
    x = np.zeros((2, *example_shape), np.float32)
    kept = [(b, b.copy()) for _, b in model.named_buffers()]  # a training pass moves BatchNorm's statistics
    with jit.when_compiling(say):
        model.plan(example_shape).train_step(x, np.zeros(2, np.int64))  # fills grads only: no optimizer step
        model.predict(x[:1])
    model.gradients[...] = 0
    for b, saved in kept:
        b[...] = saved
    if started:
        print(f"compiled in {time.perf_counter() - started[0]:.1f} s", file=sys.stderr, flush=True)


def check_writable(path, need=0):
    """Fail now, not after an epoch of training, if ``path`` can't be written (a read-only or full
    folder, a folder in the way), or its disk has less than ``need`` bytes free."""
    try:
        fileio.check_writable(path, need)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot write there ({e.strerror or e}); choose another --out") from None


def fresh_state():
    """Where a new run starts: epoch 0, batch 0, no running totals (loss sum, correct, seen,
    seconds) and no history."""
    return {"epoch": 0, "batch": 0, "totals": [0.0, 0, 0, 0.0], "history": []}


def accuracy(model, x, y, batch_size=128):
    return float((model.predict(x, batch_size).argmax(axis=1) == y).mean())


def loss_and_accuracy(model, x, y, batch_size=256):
    """The mean cross-entropy and the accuracy of ``model`` (evaluation mode) on checked x, y."""
    probs = model.predict(x, batch_size)
    picked = probs[np.arange(len(y)), y].astype(np.float64)
    loss = -np.log(np.maximum(picked, np.finfo(np.float32).tiny)).mean()
    return float(loss), float((probs.argmax(axis=1) == y).mean())


@contextlib.contextmanager
def _stop_on_signals():
    """While training, SIGINT and SIGTERM only note their number in the list this yields, so the
    loop can stop between two steps, save, and exit cleanly; the previous handlers come back after.

    Only the main thread may set handlers: elsewhere this does nothing (signals act as before).
    """
    caught = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in signums}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


class _ProgressOutput:
    """stderr for the progress bar. If it is a closed pipe (``fastcnn train 2>&1 | head``), the
    bar goes quiet and the run stops at the next batch boundary, saved there, as for a signal
    (SIGPIPE, the one a Unix tool would die of), instead of losing the epoch to an exception."""

    def __init__(self, caught):
        self.caught = caught

    def write(self, text):
        try:
            return sys.stderr.write(text)
        except BrokenPipeError:
            self._closed()

    def flush(self):
        try:
            sys.stderr.flush()
        except BrokenPipeError:
            self._closed()

    def _closed(self):
        if signal.SIGPIPE not in self.caught:
            self.caught.append(signal.SIGPIPE)

    def __getattr__(self, name):  # isatty, fileno, encoding: stderr's
        return getattr(sys.stderr, name)


def _save(out, model, optimizer, state):
    """Write a checkpoint, unless the weights hold NaN or Inf: then the last good one stays."""
    if not (np.isfinite(model.parameters).all() and all(np.isfinite(a).all() for a in optimizer.state.values())
            and all(np.isfinite(b).all() for _, b in model.named_buffers())):
        raise TrainingDiverged(f"the weights became NaN or Inf by step {optimizer.steps}; "
                               f"{out} keeps the last good checkpoint")
    checkpoint.save(out, model, optimizer, state)


def _interrupted(signum, steps, epochs, batches, out, state):
    where = f"checkpoint saved in {out}" if out is not None else "no checkpoint (out=None)"
    return TrainingInterrupted(f"stopped by {signal.Signals(signum).name} after step {steps} (epoch "
                               f"{state['epoch'] + 1}/{epochs}, {state['batch']} of {batches} batches done); "
                               f"{where}", signum, out, state)


def fit(model, optimizer, train, validation=None, *, epochs=1, batch_size=64, seed=0, validation_split=0.0,
        out=None, training=None, progress=True, checkpoint_every=None, divergence=Divergence.DEFAULT):
    """Train ``model`` with ``optimizer`` on ``train`` = (images, labels); returns the history.

    Images are float32 (N, H, W, C) that fit the model, finite and scaled to about [0, 1]; labels
    integers in 0..classes-1. Everything is checked once, up front (``ShapeError`` naming the
    argument; for NaN or Inf, the index of the first bad image); other float images (float64) are
    converted to float32 once here, not per batch, which costs one float32 copy of the data.

    Each epoch shuffles the training set with ``seed`` and the epoch (``default_rng([seed,
    epoch])``), and runs batches of ``batch_size`` (the last may be smaller); dropout's masks
    come from ``seed`` and the optimizer's step. After each epoch the model is evaluated on
    ``validation`` = (images, labels), or on the last ``validation_split`` of ``train`` (held out,
    as Keras does), if either is given. The history is one dict per epoch: ``epoch``, ``loss``
    and ``train_acc`` (the running means over the epoch's batches), ``val_loss`` and ``val_acc``
    (None without validation data), ``seconds`` and ``samples_per_s``.

    ``training`` is the state from a checkpoint to resume from (None for a fresh run). The model,
    optimizer and state are written to ``out`` after every epoch, and also every
    ``checkpoint_every`` batches if given. SIGINT or SIGTERM stops training at the next batch
    boundary, writes ``out`` there and raises ``TrainingInterrupted``. A NaN or Inf loss raises
    ``TrainingDiverged`` at that step, and so does a loss that stays above ``divergence`` times its
    start (see ``Divergence``; 0 turns that off). The checkpoint is written before the epoch's line
    is printed, so a closed output loses nothing.

    Started by mpiexec, the processes train one model data-parallel (``fastcnn.distributed``):
    ``batch_size`` is the global batch, each process takes its contiguous slice of every batch,
    the gradients are summed over the processes before every step, and only rank 0 writes
    ``out``, shows progress and validates.
    """
    x_train, y_train, val = _check_fit(model, optimizer, train, validation, epochs, batch_size, seed,
                                       validation_split, checkpoint_every)
    watch = Divergence(divergence)
    world = distributed.world()  # data parallel under mpiexec; one process: does nothing
    world.check_batches(len(x_train), batch_size)
    for a in (model.parameters, *optimizer.state.values(), *(b for _, b in model.named_buffers())):
        world.broadcast(a)  # every process starts from rank 0's weights, optimizer state and statistics
    out, progress = (out, progress) if world.is_root else (None, False)  # only rank 0 saves and shows
    if out is not None:
        state_bytes = sum(a.nbytes for a in optimizer.state.values())
        check_writable(out, need=model.parameters.nbytes + state_bytes + 2**16)
    n = len(x_train)
    batches = -(-n // batch_size)
    state = training or fresh_state()
    checkpoint.check_training(state)
    if not 0 <= state["batch"] < batches:
        raise ShapeError(f"training: batch {state['batch']} is outside this run's 0..{batches - 1}; "
                         f"was the checkpoint made with other data or another batch size?")
    x = np.empty((min(batch_size, n), *x_train.shape[1:]), np.float32)  # the batch, gathered in place
    plan = model.plan(x_train.shape[1:])  # the data were checked above: the plan runs them as they are
    with _stop_on_signals() as caught:
        while state["epoch"] < epochs:
            epoch = state["epoch"]
            order = np.random.default_rng([seed, epoch]).permutation(n)
            loss_sum, correct, seen, seconds = state["totals"]
            bar = tqdm(total=batches, initial=state["batch"], desc=f"Epoch {epoch + 1}/{epochs}",
                       disable=not progress, leave=False, unit="batch", dynamic_ncols=True,
                       file=_ProgressOutput(caught))
            start = time.perf_counter() - seconds
            first = state["batch"]
            for b in range(first, batches):
                signum = world.stop_requested(caught)  # a signal to any process stops them all here
                if signum or (checkpoint_every and b > first and b % checkpoint_every == 0):
                    # Batch b is next: that, and the totals so far, are all a resumed run needs.
                    state.update(batch=b, totals=[loss_sum, correct, seen, time.perf_counter() - start])
                    if out is not None:
                        _save(out, model, optimizer, state)
                    if signum:
                        bar.close()
                        world.barrier()  # the others leave once rank 0 has written the checkpoint
                        raise _interrupted(signum, optimizer.steps, epochs, batches, out, state)
                rows = order[b * batch_size:(b + 1) * batch_size]
                first_row, idx = world.slice(rows)  # this process's contiguous part of the batch
                batch = np.take(x_train, idx, axis=0, out=x[:len(idx)])
                y = y_train[idx]
                loss, logits = plan.train_step(batch, y, seed, optimizer.steps, first_row)
                world.allreduce_gradients(model.gradients, len(y), len(rows))
                step_loss, step_correct = world.sum([loss * len(y), (logits.argmax(axis=1) == y).sum()])
                loss = step_loss / len(rows)
                watch.check(loss, optimizer, f"epoch {epoch + 1}, batch {b + 1}")
                optimizer.step()
                loss_sum += step_loss
                correct += int(step_correct)
                seen += len(rows)
                bar.update()
                if b % 20 == 0 or b == batches - 1:
                    bar.set_postfix_str(f"loss {loss_sum / seen:.4f}  acc {correct / seen:.4f}  "
                                        f"{seen / (time.perf_counter() - start):,.0f} samples/s")
            bar.close()
            seconds = time.perf_counter() - start
            world.check_same("the weights", model.parameters)
            # rank 0 validates; the others' records are never saved or shown
            val_loss, val_acc = loss_and_accuracy(model, *val) if val is not None and world.is_root else (None, None)
            record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen,
                      "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds, "samples_per_s": seen / seconds}
            state["history"].append(record)
            state.update(epoch=epoch + 1, batch=0, totals=fresh_state()["totals"])
            if out is not None:  # saved before it is said: a closed output (| head) then loses nothing
                _save(out, model, optimizer, state)
            checked = f"  val loss {val_loss:.4f}  val acc {val_acc:.4f}" if val_acc is not None else ""
            print(f"Epoch {epoch + 1}/{epochs}  loss {record['loss']:.4f}  train acc {record['train_acc']:.4f}"
                  f"{checked}  {seconds:.1f} s  {record['samples_per_s']:,.0f} samples/s", flush=True)
    return state["history"]


def _check_fit(model, optimizer, train, validation, epochs, batch_size, seed, validation_split, checkpoint_every):
    """fit's arguments, checked once: returns the training images and labels (float32, int64)
    and the validation pair (or None)."""
    checks.positive_int("epochs", epochs)
    checks.positive_int("batch_size", batch_size)
    checks.non_negative_int("seed", seed)
    if checkpoint_every is not None:
        checks.positive_int("checkpoint_every", checkpoint_every)
    if not isinstance(optimizer, Optimizer) or optimizer.model is not model:
        raise ShapeError(f"optimizer: expected a fastcnn optimizer (SGD, Adam) made for this model, "
                         f"got {type(optimizer).__name__}")
    # optimizer.lr checked again: it may have been changed since the optimizer was made
    checks.number("optimizer.lr", optimizer.lr, lambda v: v > 0, "a learning rate > 0")
    checks.number("validation_split", validation_split, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
    if validation is not None and validation_split:
        raise ShapeError("validation: give validation data or a validation_split, not both")
    pairs = {}
    for name, pair in (("train", train), ("validation", validation)):
        if pair is None and name == "validation":
            continue
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ShapeError(f"{name}: expected a pair (images, labels), got {type(pair).__name__}")
        pairs[name] = check_batch(model, *pair, f"{name} images", f"{name} labels")[:2]
    x, y = pairs["train"]
    if validation_split:
        held = int(round(len(x) * validation_split))
        if not 1 <= held < len(x):
            raise ShapeError(f"validation_split: {validation_split} of {len(x)} images leaves "
                             f"{held} to validate on and {len(x) - held} to train on; both need at least one")
        pairs["validation"] = x[-held:], y[-held:]
        x, y = x[:-held], y[:-held]
    return x, y, pairs.get("validation")


def make_schedule(settings, steps_per_epoch):
    """The learning-rate schedule ``settings`` (resolved) ask for: a cosine spans the whole run."""
    from .schedules import Constant, Cosine, InverseTime
    if settings.schedule == "cosine":
        return Cosine(settings.epochs * steps_per_epoch)
    if settings.schedule == "inverse-time":
        return InverseTime(settings.decay)
    return Constant()


def make_optimizer(model, settings, steps_per_epoch):
    """The optimizer and schedule ``settings`` (resolved) ask for."""
    from .optim import SGD, Adam
    schedule = make_schedule(settings, steps_per_epoch)
    if settings.optimizer == "adam":
        return Adam(model, settings.lr, weight_decay=settings.weight_decay, schedule=schedule)
    return SGD(model, settings.lr, settings.momentum, weight_decay=settings.weight_decay, schedule=schedule)


def train(out="model.npz", *, data_dir=None, threads=None, resume=False, progress=True, checkpoint_every=None,
          overwrite=False, **given):
    """The training script: load the data, build or resume the model, fit, save. Returns the history.

    ``given`` are settings (``fastcnn.settings.Settings``'s fields: ``model="deep"``,
    ``epochs=15``, ``optimizer="adam"``, ...); the rest take the named network's recipe, or on
    ``resume`` the checkpoint's (which may only change ``epochs``). Every setting is checked
    before anything is loaded. The model is validated on the test set after each epoch, or on a
    ``validation_split`` of the training set. An existing ``out`` is only replaced with
    ``overwrite`` (else ``ModelFileError``): it may be a model that took an hour to train.
    Temporary files a killed earlier run left beside ``out`` are removed first. SIGINT or SIGTERM
    saves ``out`` and raises ``TrainingInterrupted`` (see :func:`fit`).
    """
    import dataclasses
    import os
    import shlex

    from .architectures import ARCHITECTURES
    from .data import load_dataset  # the data module is only needed here and by the CLI
    from .settings import Settings, fixed_on_resume, from_checkpoint

    fields = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ShapeError(f"{unknown[0]}: not a setting; the settings are {', '.join(sorted(fields))}")
    given = {k: v for k, v in given.items() if v is not None}
    requested = Settings(**given).resolved()
    if checkpoint_every is not None:
        checks.positive_int("checkpoint_every", checkpoint_every)
    world = distributed.world()
    threads = set_threads(world.default_threads() if threads is None else threads)
    if not resume and not overwrite and os.path.lexists(out) and not os.path.isdir(out):
        raise ModelFileError(f"{out}: already exists; continue its run with --resume, train into another "
                             f"file with --out, or replace it with --overwrite")
    check_writable(out)
    if world.is_root:  # the one process that writes out
        fileio.remove_stale_temps(out)
    if resume:
        saved = checkpoint.load_checkpoint(out)
        if saved.optimizer is None or saved.training is None:
            raise ModelFileError(f"{out}: holds a model but no training state to resume from")
        try:
            settings = from_checkpoint(saved.training.get("settings", {}))
        except (ShapeError, TypeError) as e:
            raise ModelFileError(f"{out}: damaged training settings: {e}") from None
        for key in fixed_on_resume():
            if key in given and given[key] != getattr(settings, key):
                raise ShapeError(f"--{key.replace('_', '-')} {given[key]} differs from the checkpoint's "
                                 f"{getattr(settings, key)}; a resumed run keeps its settings")
        stretched = "epochs" in given and given["epochs"] != settings.epochs
        settings = dataclasses.replace(settings, epochs=given.get("epochs", settings.epochs))
        model, optimizer, state = saved.model, saved.optimizer, saved.training
        if state["epoch"] >= settings.epochs and state["batch"] == 0:
            done = state["history"][-1].get("val_acc") if state["history"] else None
            print(f"{out}: this run has finished its {settings.epochs} epochs"
                  + (f" (validation accuracy {done:.4f})" if done is not None else "")
                  + f"; to train further, ask for more: fastcnn train --out {shlex.quote(os.fspath(out))} "
                    f"--resume --epochs {settings.epochs + 5}")
            return []
    else:
        settings, stretched, state = requested, False, None
    train_data = load_dataset(settings.dataset, "train", data_dir)
    test_data = load_dataset(settings.dataset, "test", data_dir)
    classes = int(max(train_data[1].max(), test_data[1].max())) + 1
    trained_on = len(train_data[0]) - int(round(len(train_data[0]) * settings.validation_split))  # as fit holds out
    batches = -(-trained_on // settings.batch_size)
    if resume:
        if stretched and settings.schedule == "cosine":  # the curve now spans the longer (or shorter) run
            optimizer.schedule = make_schedule(settings, batches)
    else:
        model = ARCHITECTURES[settings.model].build(train_data[0].shape[1:], classes, settings.seed)
        optimizer = make_optimizer(model, settings, batches)
    cores = f"{threads} threads" + (f" in each of {world.size} processes" if world.size > 1 else "")
    print(f"Training on {settings.dataset}: {len(train_data[0]):,} images, {cores}, "
          f"{settings.describe()}" + (" (resumed)" if resume else ""), flush=True)
    state = state or fresh_state()
    state["settings"] = dataclasses.asdict(settings)
    warm_up(model, train_data[0].shape[1:])
    validation = None if settings.validation_split else test_data
    history = fit(model, optimizer, train_data, validation, epochs=settings.epochs,
                  batch_size=settings.batch_size, seed=settings.seed, validation_split=settings.validation_split,
                  out=out, training=state, progress=progress, checkpoint_every=checkpoint_every,
                  divergence=settings.divergence)
    if history and world.is_root:
        _, test_acc = loss_and_accuracy(model, *check_batch(model, *test_data)[:2]) if settings.validation_split \
            else (None, history[-1]["val_acc"])
        print(f"Saved {out}: test accuracy {test_acc:.4f}")
    elif not history:
        print(f"{out}: nothing to do")
    return history
