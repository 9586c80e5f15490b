"""Training: the original network, the epoch loop, checkpoints after every epoch, resume.

The shuffle of epoch ``e`` is ``default_rng([seed, e]).permutation(N)``: the seed and the epoch
are the whole RNG state, so a resumed run draws exactly the batches an uninterrupted one would.
The checkpoint (the output file itself, rewritten atomically) holds the model, the optimizer and
``training``: settings, position (epoch, batch), the running totals of the epoch and the history.
"""

import os
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import threadpoolctl
from tqdm import tqdm

from . import checkpoint
from .errors import FastCNNError, ModelFileError, ShapeError
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .loss import SoftmaxCrossEntropy
from .model import Sequential
from .optim import SGD

DEFAULTS = dict(epochs=5, batch_size=64, lr=0.05, momentum=0.9, decay=1e-3, seed=0, dataset="mnist")


class TrainingDiverged(FastCNNError, FloatingPointError):
    """The loss became NaN or Inf."""


def mnist_network(seed=0, backend="numba"):
    """The original project's network: Conv 3x3x32 pad 1, ReLU, MaxPool 2, Dense 128, ReLU, Dense 10."""
    return Sequential([Conv2D(1, 32, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(14 * 14 * 32, 128), ReLU(), Dense(128, 10)], seed=seed, backend=backend)


def set_threads(threads):
    """Use ``threads`` cores for Numba's kernels and for BLAS (None: all of them)."""
    n = numba.config.NUMBA_NUM_THREADS if threads is None else threads
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ShapeError(f"threads: expected 1..{numba.config.NUMBA_NUM_THREADS} on this machine, got {threads}")
    numba.set_num_threads(n)
    threadpoolctl.threadpool_limits(n, user_api="blas")
    return n


def check_writable(path):
    """Fail now, not after an epoch of training, if ``path``'s folder takes no files."""
    folder = Path(path).resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ModelFileError(f"{path}: cannot write there ({e.strerror or e}); choose another --out") from None


def fresh_state():
    """Where a new run starts: epoch 0, batch 0, no running totals (loss sum, correct, seen,
    seconds) and no history."""
    return {"epoch": 0, "batch": 0, "totals": [0.0, 0, 0, 0.0], "history": []}


def accuracy(model, x, y, batch_size=1000):
    return float((model.predict(x, batch_size).argmax(axis=1) == y).mean())


def fit(model, optimizer, train, test, *, epochs, batch_size, seed, out=None, training=None, progress=True):
    """Train ``model`` for ``epochs`` on ``train`` = (x, y), reporting accuracy on ``test``.

    ``training`` is the state from a checkpoint to resume from (None for a fresh run); after every
    epoch the model, optimizer and state are written to ``out``. Returns the history.
    """
    x_train, y_train = train
    n = len(x_train)
    if batch_size < 1:
        raise ShapeError(f"batch_size: expected a positive integer, got {batch_size}")
    state = training or fresh_state()
    loss_fn = SoftmaxCrossEntropy(model.backend)
    batches = -(-n // batch_size)
    while state["epoch"] < epochs:
        epoch = state["epoch"]
        order = np.random.default_rng([seed, epoch]).permutation(n)
        loss_sum, correct, seen, seconds = state["totals"]
        bar = tqdm(total=batches, initial=state["batch"], desc=f"Epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False, unit="batch", dynamic_ncols=True)
        start = time.perf_counter() - seconds
        for b in range(state["batch"], batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x, y = x_train[idx], y_train[idx]
            logits = model.forward(x)
            loss, dlogits = loss_fn(logits, y)
            if not np.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss} at step {optimizer.steps + 1} (epoch {epoch + 1}, batch {b + 1}); "
                    f"the learning rate {optimizer.lr:g} is probably too high")
            model.backward(dlogits)
            optimizer.step()
            loss_sum += loss * len(y)
            correct += int((logits.argmax(axis=1) == y).sum())
            seen += len(y)
            bar.update()
            if b % 20 == 0 or b == batches - 1:
                bar.set_postfix_str(f"loss {loss_sum / seen:.4f}  acc {correct / seen:.4f}  "
                                    f"{seen / (time.perf_counter() - start):,.0f} samples/s")
        bar.close()
        seconds = time.perf_counter() - start
        test_acc = accuracy(model, *test)
        record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen,
                  "test_acc": test_acc, "seconds": seconds, "samples_per_s": seen / seconds}
        state["history"].append(record)
        state.update(epoch=epoch + 1, batch=0, totals=fresh_state()["totals"])
        print(f"Epoch {epoch + 1}/{epochs}  loss {record['loss']:.4f}  train acc {record['train_acc']:.4f}  "
              f"test acc {test_acc:.4f}  {seconds:.1f} s  {record['samples_per_s']:,.0f} samples/s", flush=True)
        if out is not None:
            checkpoint.save(out, model, optimizer, state)
    return state["history"]


def train(out="model.npz", *, epochs=None, batch_size=None, lr=None, momentum=None, decay=None,
          seed=None, dataset=None, data_dir=None, threads=None, resume=False, progress=True):
    """The training script: load the data, build or resume the model, fit, save. Returns the history.

    Settings left as None take the defaults (``DEFAULTS``), or on ``resume`` the checkpoint's.
    """
    from .data import load_dataset  # the data module is only needed here and by the CLI

    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, decay=decay,
                 seed=seed, dataset=dataset)
    threads = set_threads(threads)
    check_writable(out)
    if resume:
        saved = checkpoint.load_checkpoint(out)
        if saved.optimizer is None or saved.training is None:
            raise ModelFileError(f"{out}: holds a model but no training state to resume from")
        settings = {**DEFAULTS, **saved.training["settings"]}
        for key in ("lr", "momentum", "decay", "seed", "dataset", "batch_size"):
            if given[key] is not None and given[key] != settings[key]:
                raise ShapeError(f"--{key.replace('_', '-')} {given[key]} differs from the checkpoint's "
                                 f"{settings[key]}; a resumed run keeps its settings")
        if epochs is not None:
            settings["epochs"] = epochs
        model, optimizer, state = saved.model, saved.optimizer, saved.training
    else:
        settings = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
        model = mnist_network(settings["seed"])
        optimizer = SGD(model, settings["lr"], settings["momentum"], settings["decay"])
        state = None
    train_data = load_dataset(settings["dataset"], "train", data_dir)
    test_data = load_dataset(settings["dataset"], "test", data_dir)
    print(f"Training on {settings['dataset']}: {len(train_data[0]):,} images, {threads} threads, "
          f"batch {settings['batch_size']}, lr {settings['lr']:g}, momentum {settings['momentum']:g}, "
          f"decay {settings['decay']:g}, seed {settings['seed']}" + (" (resumed)" if resume else ""), flush=True)
    state = state or fresh_state()
    state["settings"] = settings
    history = fit(model, optimizer, train_data, test_data, epochs=settings["epochs"],
                  batch_size=settings["batch_size"], seed=settings["seed"], out=out, training=state,
                  progress=progress)
    print(f"Saved {out}: test accuracy {history[-1]['test_acc']:.4f}" if history else f"{out}: nothing to do")
    return history
