"""Training: the original network, the epoch loop, checkpoints, resume, and stopping safely.

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
import math
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
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .model import Sequential
from .optim import SGD

DEFAULTS = dict(epochs=5, batch_size=64, lr=0.07, momentum=0.9, decay=1e-3, seed=0, dataset="mnist")


class TrainingDiverged(FastCNNError, FloatingPointError):
    """The loss, or the weights, became NaN or Inf."""


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
    """The original project's network: Conv 3x3x32 pad 1, ReLU, MaxPool 2, Dense 128, ReLU, Dense 10."""
    return Sequential([Conv2D(1, 32, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(14 * 14 * 32, 128), ReLU(), Dense(128, 10)], seed=seed, backend=backend)


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
        print(f"compiling kernels for this machine (first run only, about {jit.COMPILE_SECONDS} s)...",
              file=sys.stderr, flush=True)
        started.append(time.perf_counter())
    started = []
    x = np.zeros((2, *example_shape), np.float32)
    with jit.when_compiling(say):
        model.train_step(x, np.zeros(2, np.int64))  # fills grads only: no optimizer step
        model.predict(x[:1])
    model.gradients[...] = 0
    if started:
        print(f"compiled in {time.perf_counter() - started[0]:.1f} s", file=sys.stderr, flush=True)


def check_writable(path, need=0):
    """Fail now, not after an epoch of training, if ``path`` can't be written (a read-only or full
    folder, a folder in the way), or its disk has less than ``need`` bytes free."""
    try:
        fileio.check_writable(path, need)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot write there ({e.strerror or e}); choose another --out") from None


def _number(name, value, ok, expected):
    """A finite real number for which ``ok`` holds, else ``ShapeError`` naming ``name``."""
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value) or not ok(value)):
        raise ShapeError(f"{name}: expected {expected}, got {value!r}")
    return float(value)


def check_settings(settings):
    """The hyper-parameters of a run, checked before anything is loaded; ``ShapeError`` if not."""
    from .data import DATASETS
    checks.positive_int("epochs", settings["epochs"])
    checks.positive_int("batch_size", settings["batch_size"])
    checks.non_negative_int("seed", settings["seed"])
    _number("lr", settings["lr"], lambda v: v > 0, "a learning rate > 0")
    _number("momentum", settings["momentum"], lambda v: 0 <= v < 1, "a value in [0, 1)")
    _number("decay", settings["decay"], lambda v: v >= 0, "a value >= 0")
    if settings["dataset"] not in DATASETS:
        raise ShapeError(f"dataset: expected one of {', '.join(DATASETS)}, got {settings['dataset']!r}")


def fresh_state():
    """Where a new run starts: epoch 0, batch 0, no running totals (loss sum, correct, seen,
    seconds) and no history."""
    return {"epoch": 0, "batch": 0, "totals": [0.0, 0, 0, 0.0], "history": []}


def accuracy(model, x, y, batch_size=128):
    return float((model.predict(x, batch_size).argmax(axis=1) == y).mean())


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


def _save(out, model, optimizer, state):
    """Write a checkpoint, unless the weights hold NaN or Inf: then the last good one stays."""
    if not (np.isfinite(model.parameters).all() and np.isfinite(optimizer.velocity).all()):
        raise TrainingDiverged(f"the weights became NaN or Inf by step {optimizer.steps}; "
                               f"{out} keeps the last good checkpoint")
    checkpoint.save(out, model, optimizer, state)


def _interrupted(signum, steps, epochs, batches, out, state):
    where = f"checkpoint saved in {out}" if out is not None else "no checkpoint (out=None)"
    return TrainingInterrupted(f"stopped by {signal.Signals(signum).name} after step {steps} (epoch "
                               f"{state['epoch'] + 1}/{epochs}, {state['batch']} of {batches} batches done); "
                               f"{where}", signum, out, state)


def fit(model, optimizer, train, test, *, epochs, batch_size, seed, out=None, training=None, progress=True,
        checkpoint_every=None):
    """Train ``model`` for ``epochs`` on ``train`` = (x, y), reporting accuracy on ``test`` = (x, y).

    Images are float32 (N, H, W, C) that fit the model, finite and scaled to about [0, 1]; labels
    integers in 0..classes-1. Everything is checked once, up front (``ShapeError`` naming the
    argument; for NaN or Inf, the index of the first bad image); other float images (float64) are
    converted to float32 once here, not per batch, which costs one float32 copy of the data.

    ``training`` is the state from a checkpoint to resume from (None for a fresh run). The model,
    optimizer and state are written to ``out`` after every epoch, and also every
    ``checkpoint_every`` batches if given. SIGINT or SIGTERM stops training at the next batch
    boundary, writes ``out`` there and raises ``TrainingInterrupted``. A NaN or Inf loss raises
    ``TrainingDiverged`` at that step. Returns the history.

    Started by mpiexec, the processes train one model data-parallel (``fastcnn.distributed``):
    ``batch_size`` is the global batch, and only rank 0 writes ``out``, shows progress and evaluates.
    """
    x_train, y_train, x_test, y_test = _check_fit(model, optimizer, train, test, epochs, batch_size, seed,
                                                  checkpoint_every)
    world = distributed.world()  # data parallel under mpiexec; one process: does nothing
    world.check_batches(len(x_train), batch_size)
    world.broadcast(model.parameters)  # every process starts from rank 0's weights and velocities
    world.broadcast(optimizer.velocity)
    out, progress = (out, progress) if world.is_root else (None, False)  # only rank 0 saves and shows
    if out is not None:
        check_writable(out, need=2 * model.parameters.nbytes + 2**16)  # weights and velocities
    n = len(x_train)
    batches = -(-n // batch_size)
    state = training or fresh_state()
    checkpoint.check_training(state)
    if not 0 <= state["batch"] < batches:
        raise ShapeError(f"training: batch {state['batch']} is outside this run's 0..{batches - 1}; "
                         f"was the checkpoint made with other data or another batch size?")
    x = np.empty((batch_size, *x_train.shape[1:]), np.float32)  # the batch, gathered in place
    plan = model.plan(x_train.shape[1:])  # the data were checked above: the plan runs them as they are
    with _stop_on_signals() as caught:
        while state["epoch"] < epochs:
            epoch = state["epoch"]
            order = np.random.default_rng([seed, epoch]).permutation(n)
            loss_sum, correct, seen, seconds = state["totals"]
            bar = tqdm(total=batches, initial=state["batch"], desc=f"Epoch {epoch + 1}/{epochs}",
                       disable=not progress, leave=False, unit="batch", dynamic_ncols=True)
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
                idx = world.slice(rows)  # this process's contiguous part of the batch
                batch = np.take(x_train, idx, axis=0, out=x[:len(idx)])
                y = y_train[idx]
                loss, logits = plan.train_step(batch, y)
                world.allreduce_gradients(model.gradients, len(y), len(rows))
                step_loss, step_correct = world.sum([loss * len(y), (logits.argmax(axis=1) == y).sum()])
                loss = step_loss / len(rows)
                if not np.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss became {loss} at step {optimizer.steps + 1} (epoch {epoch + 1}, batch {b + 1}); "
                        f"the learning rate {optimizer.lr:g} is probably too high")
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
            test_acc = accuracy(model, x_test, y_test) if world.is_root else float("nan")  # rank 0 evaluates
            record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen,
                      "test_acc": test_acc, "seconds": seconds, "samples_per_s": seen / seconds}
            state["history"].append(record)
            state.update(epoch=epoch + 1, batch=0, totals=fresh_state()["totals"])
            print(f"Epoch {epoch + 1}/{epochs}  loss {record['loss']:.4f}  train acc {record['train_acc']:.4f}  "
                  f"test acc {test_acc:.4f}  {seconds:.1f} s  {record['samples_per_s']:,.0f} samples/s", flush=True)
            if out is not None:
                _save(out, model, optimizer, state)
    return state["history"]


def _check_fit(model, optimizer, train, test, epochs, batch_size, seed, checkpoint_every):
    """fit's arguments, checked once: returns the train and test arrays as float32 / int64."""
    checks.positive_int("epochs", epochs)
    checks.positive_int("batch_size", batch_size)
    checks.non_negative_int("seed", seed)
    if checkpoint_every is not None:
        checks.positive_int("checkpoint_every", checkpoint_every)
    if not isinstance(optimizer, SGD) or optimizer.model is not model:
        raise ShapeError(f"optimizer: expected an SGD made for this model, got {type(optimizer).__name__}")
    _number("optimizer.lr", optimizer.lr, lambda v: v > 0, "a learning rate > 0")
    arrays = []
    for name, pair in (("train", train), ("test", test)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ShapeError(f"{name}: expected a pair (images, labels), got {type(pair).__name__}")
        arrays += check_batch(model, *pair, f"{name} images", f"{name} labels")[:2]
    return arrays


def train(out="model.npz", *, epochs=None, batch_size=None, lr=None, momentum=None, decay=None,
          seed=None, dataset=None, data_dir=None, threads=None, resume=False, progress=True,
          checkpoint_every=None, overwrite=False):
    """The training script: load the data, build or resume the model, fit, save. Returns the history.

    Settings left as None take the defaults (``DEFAULTS``), or on ``resume`` the checkpoint's.
    Every setting is checked before anything is loaded. An existing ``out`` is only replaced with
    ``overwrite`` (else ``ModelFileError``): it may be a model that took an hour to train.
    Temporary files a killed earlier run left beside ``out`` are removed first. SIGINT or SIGTERM
    saves ``out`` and raises ``TrainingInterrupted`` (see :func:`fit`).
    """
    import os
    import shlex

    from .data import load_dataset  # the data module is only needed here and by the CLI

    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, decay=decay,
                 seed=seed, dataset=dataset)
    requested = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    check_settings(requested)
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
        settings = {**DEFAULTS, **saved.training.get("settings", {})}
        for key in ("lr", "momentum", "decay", "seed", "dataset", "batch_size"):
            if given[key] is not None and given[key] != settings[key]:
                raise ShapeError(f"--{key.replace('_', '-')} {given[key]} differs from the checkpoint's "
                                 f"{settings[key]}; a resumed run keeps its settings")
        if epochs is not None:
            settings["epochs"] = epochs
        try:
            check_settings(settings)
        except ShapeError as e:
            raise ModelFileError(f"{out}: damaged training settings: {e}") from None
        model, optimizer, state = saved.model, saved.optimizer, saved.training
        if state["epoch"] >= settings["epochs"] and state["batch"] == 0:
            done = state["history"][-1]["test_acc"] if state["history"] else None
            print(f"{out}: this run has finished its {settings['epochs']} epochs"
                  + (f" (test accuracy {done:.4f})" if done is not None else "")
                  + f"; to train further, ask for more: fastcnn train --out {shlex.quote(os.fspath(out))} "
                    f"--resume --epochs {settings['epochs'] + 5}")
            return []
    else:
        settings = requested
        model = mnist_network(settings["seed"])
        optimizer = SGD(model, settings["lr"], settings["momentum"], settings["decay"])
        state = None
    train_data = load_dataset(settings["dataset"], "train", data_dir)
    test_data = load_dataset(settings["dataset"], "test", data_dir)
    cores = f"{threads} threads" + (f" in each of {world.size} processes" if world.size > 1 else "")
    print(f"Training on {settings['dataset']}: {len(train_data[0]):,} images, {cores}, "
          f"batch {settings['batch_size']}, lr {settings['lr']:g}, momentum {settings['momentum']:g}, "
          f"decay {settings['decay']:g}, seed {settings['seed']}" + (" (resumed)" if resume else ""), flush=True)
    state = state or fresh_state()
    state["settings"] = settings
    warm_up(model, train_data[0].shape[1:])
    history = fit(model, optimizer, train_data, test_data, epochs=settings["epochs"],
                  batch_size=settings["batch_size"], seed=settings["seed"], out=out, training=state,
                  progress=progress, checkpoint_every=checkpoint_every)
    print(f"Saved {out}: test accuracy {history[-1]['test_acc']:.4f}" if history else f"{out}: nothing to do")
    return history
