"""``fit``: the training loop. Epochs of shuffled batches, validation, checkpoints, resuming,
stopping safely, and the callbacks.

The shuffle of epoch ``e`` is ``default_rng([seed, e]).permutation(N)``: the seed and the epoch
are the whole RNG state, so a resumed run draws exactly the batches an uninterrupted one would.
The checkpoint (``out``, rewritten atomically) holds the model, the optimizer and ``training``:
settings, position (epoch, batch), the running totals of the epoch and the history. It is written
after every epoch, every ``checkpoint_every`` batches if asked, and when SIGINT (Ctrl-C) or
SIGTERM arrives: then training stops at the next batch boundary, saves the position and raises
``TrainingInterrupted``. Resuming from any of these ends with the weights of an uninterrupted run,
bit for bit (for the same thread count). A checkpoint is never written with NaN or Inf weights,
so the file always holds the last good state.

Validation is held out of the training data (``holdout``: a fraction of each class, drawn from
the seed, never trained on); callbacks (``fastcnn.callbacks``) choose on it after each epoch,
and their states go into the checkpoint too. The test set is evaluated once, at the end.
"""

import contextlib
import signal
import sys
import threading
import time
from typing import NamedTuple, Optional

import numpy as np
from tqdm import tqdm

from . import checkpoint, compiling, distributed, fileio, loading
from .augmentation import augmentation
from .callbacks import TrainingRun, check_callbacks, restore_states, saved_states
from .errors import ConfigError, FastCNNError, ModelFileError, ShapeError
from .folders import row_reader
from .kernels import checks
from .validate import as_float_pixels, divergence_factor
from .model import labelled_batch
from .optim import not_made_for
from .settings import DEFAULT_VALIDATION_SPLIT, DIVERGENCE


VALIDATION_SPLIT = DEFAULT_VALIDATION_SPLIT  # held out of the training data by default: 1/12, MNIST's 5,000
_HOLDOUT_STREAM = 2**32 - 1  # the seed's random stream for the held-out rows (epochs use [seed, epoch])



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
        self.factor = divergence_factor("divergence", 0.0 if factor is None else factor)
        self.start = self.smoothed = None
        self.above = 0

    def check(self, loss, optimizer, where):
        """Raise ``TrainingDiverged`` if ``loss`` (of the step about to be taken) says so."""
        advice = (f"the learning rate {optimizer.lr:g} is probably too high; try {optimizer.lr / 10:g}")
        if not np.isfinite(loss) and optimizer.steps == 0:  # no update yet: the learning rate played no part
            raise TrainingDiverged(f"the loss is {loss} at the first step ({where}), before any update: the model "
                                   f"gives non-finite scores for this batch with the weights it started with (a layer "
                                   f"of your own, weights too large?); the learning rate played no part")
        if not np.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {optimizer.steps + 1} ({where}); "
                                   + (_own_layers_gone_bad(optimizer.model) or advice))
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
                f"steps; {advice} (divergence=0 in fit, --divergence 0 in fastcnn train, turns this check off)")


def _own_layers_gone_bad(model):
    """Which layers of the user's own hold NaN or Inf weights while the built-in ones don't (their
    gradients, more likely than the learning rate, made them so), said; else None."""
    from .steps import Custom
    bad = [(i, layer) for i, layer in enumerate(model.layers)
           if layer.params and not all(np.isfinite(p).all() for p in layer.params.values())]
    own = [f"layer {i} {layer!r}" for i, layer in bad if layer.step is Custom]
    if not own or len(own) < len(bad):
        return None
    return (f"the weights of {', '.join(own)}, a layer of your own, became NaN or Inf, and no others did: check the "
            f"gradients its backward gives")


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


def fresh_state():
    """Where a new run starts: epoch 0, batch 0, no running totals (loss sum, correct, seen,
    seconds) and no history."""
    return {"epoch": 0, "batch": 0, "totals": [0.0, 0, 0, 0.0], "history": []}


# Images per predict while evaluating (loss_and_accuracy).
EVALUATION_BATCH = 256


def training_batches(n, batch_size, world):
    """The rows this process's training steps run at, an epoch of ``n`` images in batches of
    ``batch_size``: its part of a whole batch and of the last one (a last batch of 8 rows or fewer
    takes a dense layer's few-rows kernel, which would otherwise compile at the end of the first epoch)."""
    sizes = (min(batch_size, n), n % batch_size)
    return tuple(sorted({len(world.slice(np.arange(size))[1]) for size in sizes if size}))


def _smallest_part(n, batch_size, world):
    """The fewest rows any process trains on in an epoch of ``n`` images in batches of ``batch_size``."""
    return min(size // world.size for size in (min(batch_size, n), n % batch_size) if size)


def _check_batchnorm_batches(plan, n, batch_size, world):
    """Refuse, before the first step and in every process alike, a batch that would leave some
    process one value per channel for a BatchNorm, naming batch sizes near ``batch_size`` that don't."""
    problem = plan.training_batch_problem(_smallest_part(n, batch_size, world))
    if problem and n < 2 * world.size:
        among = f" among {world.size} processes" if world.size > 1 else ""
        raise ShapeError(f"train: {n} image{'s' if n > 1 else ''} to train on{among}; {problem}; train on more")
    if problem:
        near = [b for b in sorted(range(2, 2 * batch_size + 3), key=lambda b: (abs(b - batch_size), b))
                if b <= n and not plan.training_batch_problem(_smallest_part(n, b, world))][:2]
        part = f"{world.size} processes' parts of " if world.size > 1 else ""
        raise ShapeError(f"batch_size: {n:,} images in batches of {batch_size} leave a training pass of 1 image "
                         f"(in {part}the last batch); {problem}; choose a batch size that leaves none"
                         + (f", e.g. {' or '.join(map(str, near))}" if near else ""))


def evaluation_batches(sets):
    """The batch sizes ``loss_and_accuracy`` predicts ``sets`` ((x, y) or (x, y, rows) each) at:
    the kernels that fit prepares for its evaluation (one image of the deep network's dense
    layer takes a kernel of its own, which a run evaluated 256 images at a time never calls)."""
    sizes = set()
    for s in sets:
        m = len(s[1]) if len(s) < 3 or s[2] is None else len(s[2])
        sizes.update(size for size in (min(EVALUATION_BATCH, m), m % EVALUATION_BATCH) if size)
    return tuple(sorted(sizes))


def loss_and_accuracy(model, x, y, rows=None, batch_size=EVALUATION_BATCH):
    """The mean cross-entropy and the accuracy of ``model`` (evaluation mode) on checked x, y,
    or on their ``rows``; read ``batch_size`` images at a time (:func:`fastcnn.folders.row_reader`),
    so memory stays bounded."""
    rows = np.arange(len(y)) if rows is None else rows
    take = row_reader(x)
    images = np.empty((min(batch_size, len(rows)), *x.shape[1:]), x.dtype)
    loss, correct = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        probs = model.predict(take(chunk, images[:len(chunk)]), batch_size)
        picked = probs[np.arange(len(chunk)), y[chunk]].astype(np.float64)
        loss -= np.log(np.maximum(picked, np.finfo(np.float32).tiny)).sum()
        correct += int((probs.argmax(axis=1) == y[chunk]).sum())
    return float(loss / len(rows)), correct / len(rows)


def holdout(labels, fraction, seed):
    """The rows of ``labels`` to train on and the rows to validate on, both sorted: ``fraction``
    of each class, rounded (so the held-out rows keep the classes' proportions), but never a
    class's last row to train on; which ones is drawn from ``seed``."""
    rng = np.random.default_rng([seed, _HOLDOUT_STREAM])
    held = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = min(len(rows) - 1, int(round(len(rows) * fraction)))
        held.append(rng.permutation(rows)[:k])
    val = np.sort(np.concatenate(held))
    keep = np.ones(len(labels), bool)
    keep[val] = False
    return np.flatnonzero(keep), val


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


def _keep_existing(out, state):
    """ModelFileError if the file ``out`` exists and a run from ``state`` would replace it without
    continuing it: a fresh state (epoch 0, batch 0), or one that is not the training state ``out``
    holds (a checkpoint of another run, or no model file at all). Every MPI process asks, so all
    stop alike."""
    if not fileio.taken(out):
        return
    if state["epoch"] or state["batch"]:
        try:
            held = loading.load_training(out)
        except ModelFileError:
            held = None
        if held == state:  # the run this file holds, continued
            return
        raise ModelFileError(f"out: {out} already exists and does not hold the run being resumed (training= came from "
                             f"another file, or it was written since); fit would replace it after the first epoch: "
                             f"write to another file, or pass overwrite=True")
    resume = f"ck = fastcnn.load_checkpoint({str(out)!r}); fit(ck.model, ck.optimizer, ..., training=ck.training)"
    raise ModelFileError(f"out: {out} already exists (a model from an earlier run?), and fit would replace it after "
                         f"the first epoch; write to another file, continue its run ({resume}), or pass overwrite=True")


def _run_of(model, optimizer, seed, batch_size, augment):
    """What a resumed run must repeat of the run it continues (see ``_check_same_run``)."""
    return {"seed": seed, "batch_size": batch_size, "augment": repr(augment), "optimizer": type(optimizer).__name__,
            "parameters": int(model.parameters.size)}


def _check_same_run(state, now, optimizer, n):
    """Refuse to resume ``state`` with settings other than its run's (another seed, batch size,
    augmentation, optimizer or network would make another run, not this one continued), or with an
    optimizer that has not taken the run's steps (a new one, not the checkpoint's); say so when the
    number of images to train on changed (the data grew or shrank, or another validation split),
    which resumes on the data as they are now.
    A state written before fit recorded its run (0.2.0) is taken as it is."""
    before = state.get("run")
    if not (state["epoch"] or state["batch"]) or not isinstance(before, dict):
        return
    changed = [f"{k} {before[k]} -> {now[k]}" for k in now if k in before and before[k] != now[k]]
    if "steps" in state and state["steps"] != optimizer.steps:
        changed.append(f"the optimizer's steps {state['steps']} -> {optimizer.steps} (resume with the checkpoint's own "
                       f"optimizer, ck.optimizer)")
    if changed:
        raise ConfigError(f"training: the run being resumed had other settings ({'; '.join(changed)}); resume it with "
                          f"its own (and the same data), or start a new run on its weights: fit(ck.model, "
                          f"ck.optimizer, ...) without training=")
    if before.get("images", n) != n:
        print(f"fastcnn: the run being resumed trained on {before['images']:,} images, this one has {n:,}: it goes "
              f"on with the data as they are now (a different shuffle from here on)", file=sys.stderr)


def _save(out, model, optimizer, state, callbacks=()):
    """Write a checkpoint (with the callbacks' states), unless the weights hold NaN or Inf: then
    the last good one stays."""
    if not (np.isfinite(model.parameters).all() and all(np.isfinite(a).all() for a in optimizer.state.values())
            and all(np.isfinite(b).all() for _, b in model.named_buffers())):
        raise TrainingDiverged(f"the weights became NaN or Inf by step {optimizer.steps}; "
                               f"{out} keeps the last good checkpoint")
    if callbacks:
        state["callbacks"] = saved_states(callbacks)
    checkpoint.save(out, model, optimizer, state)


def _record(out, state):
    """Write ``state`` into the checkpoint ``out``, keeping its weights (the model may hold
    others by now: the best epoch's, put back by KeepBest)."""
    saved = loading.load_checkpoint(out)
    checkpoint.save(out, saved.model, saved.optimizer, state)


def _interrupted(signum, steps, epochs, batches, out, state):
    where = f"checkpoint saved in {out}" if out is not None else "no checkpoint (out=None)"
    when = (f"epoch {state['epoch'] + 1}/{epochs}, {state['batch']} of {batches} batches done"
            if state["batch"] or not state["epoch"] else f"at the end of epoch {state['epoch']}/{epochs}")
    return TrainingInterrupted(f"stopped by {signal.Signals(signum).name} after step {steps} ({when}); {where}",
                               signum, out, state)


def fit(model, optimizer, train, validation=None, *, epochs=1, batch_size=64, seed=0, validation_split=None,
        test=None, callbacks=None, classes=None, out=None, overwrite=False, training=None, progress=True,
        checkpoint_every=None, divergence=DIVERGENCE, augment=None):
    """Train ``model`` with ``optimizer`` on ``train`` = (images, labels); returns the history.

    Images are float32 (N, H, W, C) that fit the model (or its examples of another shape, (N, ...),
    for a model of Dense layers), finite and scaled to about [0, 1], or
    uint8 pixels 0-255 (each batch is scaled to [0, 1] as it is gathered, so the images may be a
    memory-mapped array larger than memory, as :func:`fastcnn.data.image_folder` gives); labels
    integers in 0..classes-1. Everything is checked once, up front (``ShapeError`` naming the
    argument; for NaN or Inf, the index of the first bad image); other float images (float64) are
    converted to float32 once here, not per batch, which costs one float32 copy of the data.

    Validation: on ``validation`` = (images, labels) if given; else a ``validation_split`` of
    ``train`` is held out (default ``VALIDATION_SPLIT``, 1/12: that fraction of each class, drawn
    from ``seed``; 0 holds out nothing and validates on nothing). The model is evaluated on it
    after each epoch, and callbacks choose on it. ``test`` = (images, labels) is evaluated once,
    at the end, and recorded in the training state as ``"test"``.

    Each epoch shuffles the training rows with ``seed`` and the epoch (``default_rng([seed,
    epoch])``), and runs batches of ``batch_size`` (the last may be smaller); dropout's masks
    come from ``seed`` and the optimizer's step. ``augment`` (an ``Augment``, a preset's name such
    as ``"crop-flip"``, or None) moves each training image by a random map drawn from ``seed``, the
    epoch and its place in the epoch (``fastcnn.augmentation``). The history is one dict per epoch: ``epoch``,
    ``loss`` and ``train_acc`` (the running means over the epoch's batches), ``val_loss`` and
    ``val_acc`` (None without validation data), ``seconds`` and ``samples_per_s``.

    ``callbacks``: :class:`fastcnn.callbacks.Callback` instances (``EarlyStopping``, ``KeepBest``,
    ``ReduceLROnPlateau``, one's own), called after every batch and epoch; one may stop training.
    ``classes``: the class names to record (default: ``train.classes`` if it has them, as an
    image folder's splits do), which ``predict`` and ``serve`` then show.

    ``training`` is the state from a checkpoint to resume from (None for a fresh run); it keeps
    the callbacks' states too, and the run's seed, batch size, augmentation, optimizer type and
    network size and the optimizer's steps, which a resumed run must repeat (else ``ConfigError``;
    the same data too, or it says it goes on with others). The model, optimizer and state are
    written to ``out`` after every epoch, and also every ``checkpoint_every`` batches if given.
    An existing ``out`` is replaced only by the run it holds, resumed (``training`` as read from
    it), or with ``overwrite=True``; else ``ModelFileError`` before any work, as it may hold a
    model that took an hour to train.
    SIGINT or SIGTERM stops training at the next batch boundary, writes ``out`` there and raises
    ``TrainingInterrupted``. A NaN or Inf loss raises ``TrainingDiverged`` at
    that step, and so does a loss that stays above ``divergence`` times its start (see
    ``Divergence``; 0 turns that off). The checkpoint is written
    before the epoch's line is printed, so a closed output loses nothing.

    Started by mpiexec, the processes train one model data-parallel (``fastcnn.distributed``):
    ``batch_size`` is the global batch, each process takes its contiguous slice of every batch,
    the gradients are summed over the processes before every step, and only rank 0 writes
    ``out``, shows progress, validates (and sends the results to the others, for the callbacks)
    and tests.
    """
    data = _check_fit(model, optimizer, train, validation, test, epochs, batch_size, seed, validation_split,
                      checkpoint_every, classes)
    callbacks = check_callbacks(callbacks)
    if out is not None:
        fileio.check_path("out", out)
    elif checkpoint_every is not None:
        raise ConfigError(f"checkpoint_every: {checkpoint_every} was given, but no out= to write the checkpoints to")
    state = training or fresh_state()
    loading.check_training(state)
    if out is not None and not checks.flag("overwrite", overwrite):
        _keep_existing(out, state)
    x_train, y_train, rows, val = data.x, data.y, data.rows, data.validation
    augment = augmentation(augment, x_train.shape[1:])
    n = len(x_train) if rows is None else len(rows)
    watch = Divergence(divergence)
    world = distributed.world()  # data parallel under mpiexec; one process: does nothing
    world.check_batches(n, batch_size)
    _check_batchnorm_batches(model.plan(x_train.shape[1:]), n, batch_size, world)
    for a in (model.parameters, *optimizer.state.values(), *(b for _, b in model.named_buffers())):
        world.broadcast(a)  # every process starts from rank 0's weights, optimizer state and statistics
    out, progress = (out, progress) if world.is_root else (None, False)  # only rank 0 saves and shows
    if out is not None:
        state_bytes = sum(a.nbytes for a in optimizer.state.values())
        fileio.check_writable_output(out, need=model.parameters.nbytes + state_bytes + 2**16)
    run_settings = _run_of(model, optimizer, seed, batch_size, augment)
    _check_same_run(state, run_settings, optimizer, n)
    batches = -(-n // batch_size)
    if not 0 <= state["batch"] < batches:
        raise ShapeError(f"training: batch {state['batch']} is outside this run's 0..{batches - 1}; "
                         f"was the checkpoint made with other data or another batch size?")
    state["validation"] = data.validated_on
    state["run"] = {**run_settings, "images": n}
    if data.classes is not None:
        state["classes"] = list(data.classes)
    run = TrainingRun(model, optimizer, state, epochs, val is not None, world.is_root, out)
    for c in callbacks:
        c.run = run
    restore_states(callbacks, state.get("callbacks"))
    for c in callbacks:
        c.on_train_begin()
    if out is not None:
        saved_states(callbacks)  # a state the checkpoint can't keep: refused now, not after the first epoch
    shape = x_train.shape[1:]
    x = np.empty((min(batch_size, n), *shape), np.float32)  # the batch, gathered in place
    raw = np.empty((min(batch_size, n), *shape), np.uint8) if x_train.dtype == np.uint8 else None  # before scaling
    moved = np.empty_like(x) if augment is not None else None  # the batch augmented
    plan = model.plan(shape)  # the data were checked above: the plan runs them as they are
    evaluated = [s for s in (val, data.test) if s is not None]  # then evaluation's kernels too, before the first step
    compiling.prepare(plan, (True, False) if evaluated else (True,), optimizer, say=world.is_root, augment=augment,
                      batches={True: training_batches(n, batch_size, world), False: evaluation_batches(evaluated)})
    take = row_reader(x_train)  # a memory-mapped image folder: rows read from its file
    trained = False
    with _stop_on_signals() as caught:
        while state["epoch"] < epochs and "stopped" not in state:
            epoch = state["epoch"]
            order = np.random.default_rng([seed, epoch]).permutation(n)
            if rows is not None:
                order = rows[order]
            loss_sum, correct, seen, seconds = state["totals"]
            bar = tqdm(total=batches, initial=state["batch"], desc=f"Epoch {epoch + 1}/{epochs}",
                       disable=not progress, leave=False, unit="batch", dynamic_ncols=True,
                       file=_ProgressOutput(caught))
            start = time.perf_counter() - seconds
            first = done = state["batch"]
            if first == 0:
                for c in callbacks:
                    c.on_epoch_begin(epoch + 1)
            for b in range(first, batches):
                signum = world.stop_requested(caught)  # a signal to any process stops them all here
                if signum or (checkpoint_every and b > first and b % checkpoint_every == 0):
                    # Batch b is next: that, and the totals so far, are all a resumed run needs.
                    state.update(batch=b, steps=optimizer.steps, totals=[loss_sum, correct, seen,
                                                                         time.perf_counter() - start])
                    if out is not None:
                        _save(out, model, optimizer, state, callbacks)
                    if signum:
                        bar.close()
                        world.barrier()  # the others leave once rank 0 has written the checkpoint
                        raise _interrupted(signum, optimizer.steps, epochs, batches, out, state)
                batch_rows = order[b * batch_size:(b + 1) * batch_size]
                first_row, idx = world.slice(batch_rows)  # this process's contiguous part of the batch
                batch = _gather(take, idx, x, raw)
                if augment is not None:  # each image's map from the seed, the epoch and its place in the epoch
                    params = augment.params(seed, epoch, b * batch_size + first_row, len(batch))
                    plan.kernels.augment_into(moved[:len(batch)], batch, params)
                    batch = moved[:len(batch)]
                y = y_train[idx]
                loss, logits = plan.train_step(batch, y, seed, optimizer.steps, first_row)
                world.allreduce_gradients(model.gradients, len(y), len(batch_rows))
                step_loss, step_correct = world.sum([loss * len(y), (logits.argmax(axis=1) == y).sum()])
                loss = step_loss / len(batch_rows)
                watch.check(loss, optimizer, f"epoch {epoch + 1}, batch {b + 1}")
                optimizer.step()
                loss_sum += step_loss
                correct += int(step_correct)
                seen += len(batch_rows)
                trained, done = True, b + 1
                bar.update()
                if b % 20 == 0 or b == batches - 1:
                    bar.set_postfix_str(f"loss {loss_sum / seen:.4f}  acc {correct / seen:.4f}  "
                                        f"{seen / (time.perf_counter() - start):,.0f} samples/s")
                if callbacks:
                    logs = {"loss": float(loss), "acc": float(step_correct) / len(batch_rows), "step": optimizer.steps}
                    for c in callbacks:
                        c.on_batch_end(b + 1, logs)
                    if run.stop_reason:
                        break
            bar.close()
            seconds = time.perf_counter() - start
            world.check_same("the weights", model.parameters)
            # rank 0 validates, and tells the others (their callbacks decide on the same numbers)
            val_loss, val_acc = None, None
            if val is not None:
                scores = np.array(loss_and_accuracy(model, *val) if world.is_root else (np.nan, np.nan))
                world.broadcast(scores)
                val_loss, val_acc = float(scores[0]), float(scores[1])
            record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen,
                      "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds, "samples_per_s": seen / seconds}
            if done < batches:  # a callback stopped the run within the epoch
                record["batches"] = done
            state["history"].append(record)
            state.update(epoch=epoch + 1, batch=0, steps=optimizer.steps, totals=fresh_state()["totals"])
            for c in callbacks:
                c.on_epoch_end(epoch + 1, record)
            if run.stop_reason:
                within = {"batches": done} if done < batches else {}
                state["stopped"] = {"epoch": epoch + 1, "reason": run.stop_reason, **within}
            if out is not None:  # saved before it is said: a closed output (| head) then loses nothing
                _save(out, model, optimizer, state, callbacks)
            checked = f"  val loss {val_loss:.4f}  val acc {val_acc:.4f}" if val_acc is not None else ""
            print(f"Epoch {epoch + 1}/{epochs}  loss {record['loss']:.4f}  train acc {record['train_acc']:.4f}"
                  f"{checked}  {seconds:.1f} s  {record['samples_per_s']:,.0f} samples/s", flush=True)
            if run.stop_reason:
                when = f"after epoch {epoch + 1}" if done == batches else \
                    f"in epoch {epoch + 1}, after {done} of its {batches} batches"
                print(f"Stopped {when}: {run.stop_reason}", flush=True)
            signum = world.stop_requested(caught)  # one that came during the epoch's end (the last has no next batch)
            if signum:
                world.barrier()
                raise _interrupted(signum, optimizer.steps, epochs, batches, out, state)
    if not trained:
        if world.is_root and "stopped" in state:
            print(f"fit: the run being resumed stopped in epoch {state['stopped']['epoch']}: "
                  f"{state['stopped']['reason']}; there is nothing to resume", flush=True)
        elif world.is_root and state["epoch"] >= epochs:
            print(f"fit: the run being resumed has finished {state['epoch']} epoch{'s' * (state['epoch'] > 1)}, as "
                  f"many as epochs={epochs}; to "
                  f"train it further, ask for more (epochs={state['epoch'] + 5}, say)", flush=True)
        return state["history"]
    run.weights_epoch = state["epoch"]
    for c in callbacks:
        c.on_train_end()  # KeepBest may put the best epoch's weights back
    if data.test is not None and world.is_root:
        test_loss, test_acc = loss_and_accuracy(model, *data.test)
        result = {"loss": test_loss, "accuracy": test_acc, "images": len(data.test[1]), "epoch": run.weights_epoch}
        state["test"] = result
        which = f" (the weights of epoch {run.weights_epoch})" if run.weights_epoch != state["epoch"] else ""
        print(f"Test accuracy {test_acc:.4f}  loss {test_loss:.4f}  on {len(data.test[1]):,} images{which}", flush=True)
        for c in callbacks:
            c.on_test_end(result)
        if out is not None:
            _record(out, state)
    return state["history"]


class _FitData(NamedTuple):
    """fit's data, checked: the training images and labels, the rows of them to train on (None:
    all), the validation triple (images, labels, rows or None) or None, the test pair or None,
    the class names or None, and what the validation is, for the history."""
    x: np.ndarray
    y: np.ndarray
    rows: Optional[np.ndarray]
    validation: Optional[tuple]
    test: Optional[tuple]
    classes: Optional[tuple]
    validated_on: Optional[dict]


def _check_fit(model, optimizer, train, validation, test, epochs, batch_size, seed, validation_split,
               checkpoint_every, classes):
    """fit's arguments, checked once (see :class:`_FitData`)."""
    checks.positive_int("epochs", epochs)
    checks.positive_int("batch_size", batch_size)
    checks.non_negative_int("seed", seed)
    if checkpoint_every is not None:
        checks.positive_int("checkpoint_every", checkpoint_every)
    wrong = not_made_for(model, optimizer)
    if wrong:
        raise ShapeError(wrong)
    default_split = validation_split is None
    if default_split:
        validation_split = 0.0 if validation is not None else VALIDATION_SPLIT
    checks.number("validation_split", validation_split, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
    if validation is not None and validation_split:
        raise ShapeError("validation: give validation data or a validation_split, not both")
    pairs = {}
    for name, pair in (("train", train), ("validation", validation), ("test", test)):
        if pair is None and name != "train":
            continue
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ShapeError(f"{name}: expected a pair (images, labels), got {type(pair).__name__}")
        pairs[name] = labelled_batch(model, *pair, f"{name} images", f"{name} labels")
    x, y, outputs = pairs["train"]
    if classes is None:
        classes = getattr(train, "classes", None)
    if classes is not None:
        if (isinstance(classes, str) or not hasattr(classes, "__len__") or len(classes) != outputs
                or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes)):
            raise ShapeError(f"classes: expected {outputs} class names (the model's outputs), each its own and "
                             f"not empty, got {classes!r}")
        classes = tuple(classes)
    rows, val, validated_on = None, None, None
    if validation is not None:
        val = (*pairs["validation"][:2], None)
        validated_on = {"on": getattr(validation, "name", None) or "given", "images": len(val[1])}
    elif validation_split:
        rows, held = holdout(y, validation_split, seed)
        if len(held) and len(rows):
            val = (x, y, held)
            validated_on = {"on": "held-out", "fraction": validation_split, "images": len(held)}
        elif default_split:  # too few images per class to hold any out: train on all of them
            rows = None
        else:
            raise ShapeError(f"validation_split: {validation_split} of {len(x)} images leaves "
                             f"{len(held)} to validate on and {len(rows)} to train on; both need at least one")
    test = pairs["test"][:2] if test is not None else None
    return _FitData(x, y, rows, val, test, classes, validated_on)


def _gather(take, idx, out, raw):
    """The batch of rows ``idx`` as float32, gathered by ``take`` (a :func:`~fastcnn.folders.row_reader`)
    into ``out`` (by way of ``raw`` for uint8 pixels, which are scaled to [0, 1] there)."""
    if raw is None:
        return take(idx, out[:len(idx)])
    return as_float_pixels(take(idx, raw[:len(idx)]), out[:len(idx)])
