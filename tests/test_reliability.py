"""Reliability: bad input gets a clear error, and faults lose nothing.

- Bad arguments to every public entry point (fit, train, evaluate, predict_digits, the loaders,
  the CLI) raise a FastCNNError naming the argument, what was expected and what came, before any
  work is done.
- SIGINT / SIGTERM during training save a checkpoint at the current batch and exit 130 / 143;
  resuming ends with the weights of an uninterrupted run, bit for bit. A training process
  SIGKILLed at random moments always leaves a loadable checkpoint, and after 5 kills the resumed
  run again ends bit for bit on the uninterrupted weights. NaN or Inf is never saved.
- Unwritable outputs fail before the work; every writer is atomic.
- predict from 4 threads at once gives the single-threaded answers; predicting and evaluating
  10,000 images takes memory for one batch, not for all of them.

The subprocess tests run the real CLI (``fastcnn train``) on a small synthetic MNIST with one
thread; each process loads the compiled kernels from Numba's cache (compiling them if the cache
is stale), which the timeouts allow for.
"""

import contextlib
import errno
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from types import SimpleNamespace

import matplotlib.figure
import numpy as np
import pytest
from PIL import Image

import fastcnn
from fastcnn import SGD, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, data, fileio, image, plots, validate
from fastcnn.cli import main
from fastcnn.errors import ConfigError, DataError, ImageError, ModelFileError, ShapeError
from fastcnn.inference import evaluate, predict_digits
from fakes import bars, fake_mnist
from fastcnn.training import TrainingDiverged, TrainingInterrupted, fit
from fastcnn.fileio import check_writable_output as check_writable
from fastcnn.architectures import mnist_network
from fastcnn.cli.train import train


def count(tried, what, n=1):
    tried[what] = tried.get(what, 0) + n


def one_line(err):
    """stderr holds exactly one line and no traceback."""
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- bad input -----------------------------------------------------------------------------------

X, Y = bars(64, 0)
TEST = bars(32, 1)


def changed(a, index, value):
    a = a.copy()
    a[index] = value
    return a


# fit's arguments replaced one at a time; a callable value is called with the model first.
BAD_FIT = {
    "3-D images": (dict(train=(X[..., 0], Y)), r"train images: images of shape \(28, 28\) do not fit the model: "
                                               r".*add the channel axis: x\[\.\.\., None\]"),
    "1-D images": (dict(train=(X[:, 0, 0, 0], Y)), r"train images: expected a batch of images \(N, H, W, C\), or of "
                                                 r"a model's examples \(N, \.\.\.\), got shape \(64,\)"),
    # uint8 pixels are taken (scaled per batch: test_folders.py); other integers are ambiguous
    "int32 images": (dict(train=((X * 255).astype(np.int32), Y)), r"train images: .*got dtype int32.*x / 255"),
    "0-255 floats": (dict(train=(X * 255, Y)), r"train images: image 0 has values in \[0\.\d+, 2\d\d\.\d+\]; expected pixels scaled .*divide 0-255 by 255"),
    "no images": (dict(train=(X[:0], Y[:0])), r"train images: expected at least one"),
    "a list": (dict(train=([[0.5]], Y)), r"train images: expected a NumPy array .* got list"),
    "NaN image": (dict(train=(changed(X, (37, 3, 3, 0), np.nan), Y)), r"train images: image 37 holds NaN or Inf"),
    "Inf test image": (dict(validation=(changed(TEST[0], (5, 0, 0, 0), -np.inf), TEST[1])),
                       r"validation images: image 5 holds NaN or Inf"),
    "32x32 images": (dict(train=(np.zeros((4, 32, 32, 1), np.float32), Y[:4])),
                     r"train images: images of shape \(32, 32, 1\) do not fit the model: layer 4 Dense.*6272"),
    "RGB images": (dict(train=(np.zeros((4, 28, 28, 3), np.float32), Y[:4])),
                   r"train images: .*do not fit the model: layer 0 Conv2D.*expected 1 input channels"),
    "label 10": (dict(train=(X, changed(Y, 9, 10))), r"train labels: label 10 at index 9 is outside 0\.\.9"),
    "label -1": (dict(validation=(TEST[0], changed(TEST[1], 4, -1))), r"validation labels: label -1 at index 4 is outside 0\.\.9"),
    "float labels": (dict(train=(X, Y.astype(float))), r"train labels: expected integer .* float64; convert"),
    "too few labels": (dict(train=(X, Y[:-1])), r"train labels: expected shape \(64,\), one label per image, got \(63,\)"),
    "no pair": (dict(train=X), r"train: expected a pair \(images, labels\), got ndarray"),
    "batch size 0": (dict(batch_size=0), r"batch_size: expected a positive integer, got 0"),
    "epochs 0": (dict(epochs=0), r"epochs: expected a positive integer, got 0"),
    "epochs 2.5": (dict(epochs=2.5), r"epochs: expected a positive integer, got 2.5"),
    "seed -1": (dict(seed=-1), r"seed: expected a non-negative integer, got -1"),
    "checkpoint every 0": (dict(checkpoint_every=0), r"checkpoint_every: expected a positive integer, got 0"),
    "checkpoints without a file": (dict(checkpoint_every=5, out=None),  # (it was ignored)
                                   r"checkpoint_every: 5 was given, but no out= to write the checkpoints to"),
    "another model's optimizer": (dict(optimizer=lambda model: SGD(mnist_network(seed=2), 0.1)),
                                  r"optimizer: expected a fastcnn optimizer \(SGD, Adam\) made for this model"),
    "position past the data": (dict(training={"epoch": 0, "batch": 2, "totals": [0.0, 0, 0, 0.0], "history": []}),
                               r"training: batch 2 is outside this run's 0\.\.1"),
    "damaged position": (dict(training={"epoch": -1, "batch": 0, "totals": [0.0, 0, 0, 0.0], "history": []}),
                         r"training epoch: expected a non-negative integer"),
}


@pytest.fixture(scope="module")
def net():
    return mnist_network(seed=1)


@pytest.mark.parametrize("case", BAD_FIT)
def test_fit_refuses_bad_arguments_before_training(case, net, tmp_path, tried):
    changes, message = BAD_FIT[case]
    args = dict(optimizer=SGD(net, 0.05), train=(X, Y), validation=TEST, epochs=1, batch_size=32, seed=0,
                out=tmp_path / "m.npz", progress=False)
    args.update({k: v(net) if callable(v) else v for k, v in changes.items()})
    before = net.parameters.copy()
    with pytest.raises(ConfigError if case.startswith("checkpoints") else ShapeError, match=message):
        fit(net, **args)
    assert np.array_equal(net.parameters, before) and not (tmp_path / "m.npz").exists()
    count(tried, "bad inputs refused with a clear error")


def test_an_optimizers_settings_are_checked_when_changed_between_steps_too(net, tried):
    # opt.lr = ... between steps (as ReduceLROnPlateau does): a negative one would climb the loss,
    # a string fail deep inside the step; refused where it is set, the old value kept.
    x, y = X[:8], Y[:8]
    sgd, adam = SGD(net, 0.05), fastcnn.Adam(net)
    changes = [(sgd, "lr", float("inf"), r"lr: expected a learning rate > 0 \(that float32 holds\), got inf"),
               (sgd, "lr", -0.1, r"lr: expected a learning rate > 0"), (sgd, "lr", "0.1", r"lr: expected a learning rate > 0 .*, got '0.1'"),
               (sgd, "momentum", 1.0, r"momentum: expected a value in \[0, 1\)"),
               (sgd, "weight_decay", -1e-4, r"weight_decay: expected a value >= 0"),
               (adam, "eps", 0.0, r"eps: expected a value > 0")]
    for optimizer, name, value, message in changes:
        kept = getattr(optimizer, name)
        with pytest.raises(ShapeError, match=message):
            setattr(optimizer, name, value)
        assert getattr(optimizer, name) == kept
        count(tried, "bad inputs refused with a clear error")
    sgd.lr, sgd.momentum = 0.01, 0.5
    net.train_step(x, y)
    sgd.step()
    assert (sgd.lr, sgd.momentum, sgd.config()["lr"]) == (0.01, 0.5, 0.01) and np.isfinite(net.parameters).all()


BAD_TRAIN = {
    "epochs 0": (dict(epochs=0), r"epochs: expected a positive integer, got 0"),
    "batch size 0": (dict(batch_size=0), r"batch_size: expected a positive integer, got 0"),
    "lr 0": (dict(lr=0.0), r"lr: expected a learning rate > 0 \(that float32 holds\), got 0.0"),
    "lr NaN": (dict(lr=float("nan")), r"lr: expected a learning rate > 0 \(that float32 holds\), got nan"),
    "momentum 1": (dict(momentum=1.0), r"momentum: expected a value in \[0, 1\), got 1.0"),
    "momentum -0.1": (dict(momentum=-0.1), r"momentum: expected a value in \[0, 1\), got -0.1"),
    "decay -1": (dict(decay=-1.0), r"decay: expected a value >= 0, got -1.0"),
    "seed -3": (dict(seed=-3), r"seed: expected a non-negative integer, got -3"),
    "threads 0": (dict(threads=0), r"threads: expected 1\.\.\d+ on this machine, got 0"),
    "threads 10000": (dict(threads=10000), r"threads: expected 1\.\.\d+ on this machine, got 10000"),
    "threads 1.5": (dict(threads=1.5), r"threads: expected 1\.\.\d+ on this machine, got 1.5"),
    "dataset cifar": (dict(dataset="cifar"), r"dataset: expected one of mnist, fashion-mnist.*, got 'cifar'"),
    "checkpoint every -1": (dict(checkpoint_every=-1), r"checkpoint_every: expected a positive integer, got -1"),
}


@pytest.mark.parametrize("case", BAD_TRAIN)
def test_train_refuses_bad_settings_before_loading_anything(case, tmp_path, tried):
    changes, message = BAD_TRAIN[case]
    # No data there: reaching the loader would raise DataMissingError instead.
    error = ConfigError if case.startswith(("threads", "dataset")) else ShapeError  # a setting's name, not a number
    with pytest.raises(error, match=message):
        train(tmp_path / "m.npz", data_dir=tmp_path / "no-data", progress=False, **changes)
    assert not (tmp_path / "m.npz").exists()
    count(tried, "bad inputs refused with a clear error")


BAD_USE = {
    "evaluate 0-255 floats": (lambda m: evaluate(m, X * 255, Y), ShapeError, r"x: image 0 has values in \[0\.\d+, 2\d\d"),
    "evaluate too few labels": (lambda m: evaluate(m, X, Y[:3]), ShapeError, r"y: expected shape \(64,\)"),
    "evaluate 5 classes": (lambda m: evaluate(m, X, Y, classes=5), ShapeError, r"classes: the model scores 10 classes"),
    "evaluate batch size 0": (lambda m: evaluate(m, X, Y, batch_size=0), ShapeError, r"batch_size: expected a positive"),
    "evaluate a path": (lambda m: evaluate("model.npz", X, Y), ShapeError, r"model: expected a fastcnn model, a Sequential or a Model \(fastcnn.load reads a "
                                                                              r"model file\), got str"),
    "predict no pictures": (lambda m: predict_digits(m, []), ShapeError, r"paths: expected at least one picture"),
    "predict one path": (lambda m: predict_digits(m, "a.png"), ShapeError, r"paths: expected a list .* got one str; wrap it"),
    "load_digit a number": (lambda m: image.load_digit(3), ImageError, r"path_or_file: expected a path or a binary file"),
    "load_dataset cifar": (lambda m: data.load_dataset("cifar"), ConfigError, r"unknown data set 'cifar'"),
    "load_dataset FashionMNIST": (lambda m: data.load_dataset("FashionMNIST"), ConfigError,
                                  r"unknown data set 'FashionMNIST'; .* \(did you mean 'fashion-mnist'\?\)"),
    "load_dataset split val": (lambda m: data.load_dataset("mnist", "val"), ConfigError,
                               r"unknown split 'val'; .*fit holds out a validation split of train"),
    "load_dataset data_dir 5": (lambda m: data.load_dataset(data_dir=5), DataError, r"data_dir: expected a folder path, got int"),
    "read_idx None": (lambda m: data.read_idx(None), DataError, r"path: expected the path of an IDX file, got NoneType"),
    "load_checkpoint 3": (lambda m: fastcnn.load_checkpoint(3), ModelFileError, r"path: expected the path of a model file"),
    "load_checkpoint on a GPU": (lambda m: fastcnn.load_checkpoint("m.npz", backend="gpu"), ConfigError,
                                 r"backend: expected one of \['numba', 'numpy'\], got 'gpu'"),
}


@pytest.mark.parametrize("case", BAD_USE)
def test_inference_and_loaders_refuse_bad_arguments(case, net, tried):
    call, error, message = BAD_USE[case]
    with pytest.raises(error, match=message):
        call(net)
    count(tried, "bad inputs refused with a clear error")


def test_float64_images_are_converted_once_not_per_batch(tmp_path):
    """fit on float64 images: every batch the model sees is already float32 (converted up front),
    and the run equals one on the float32 images."""
    x, y = bars(96, 0)
    runs = []
    for images in (x, x.astype(np.float64)):
        model = mnist_network(seed=1)
        seen = []
        plan = model.plan(x.shape[1:])
        step = plan.train_step
        plan.train_step = lambda batch, *rest, step=step, seen=seen: seen.append(batch.dtype) or step(batch, *rest)
        fit(model, SGD(model, 0.05), (images, y), TEST, epochs=1, batch_size=32, seed=0, progress=False)
        runs.append((model.parameters, seen))
    assert runs[1][1] == [np.float32] * 3
    assert np.array_equal(runs[0][0], runs[1][0])
    assert validate.images("x", x) is x  # float32 is used as it is: no copy


def test_cli_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, tried):
    monkeypatch.setitem(data.CHECKSUMS, "mnist", fake_mnist(tmp_path))
    model = mnist_network(seed=0)
    damaged = tmp_path / "damaged.npz"  # a resumable checkpoint whose settings name no data set
    fastcnn.save(damaged, model, SGD(model, 0.1), {"epoch": 1, "batch": 0, "totals": [0.0, 0, 0, 0.0],
                                                   "history": [], "settings": {"dataset": "cifar"}})
    d = ["--data-dir", str(tmp_path)]
    new = ["--out", str(tmp_path / "new.npz"), *d]
    cases = [
        # the options as the command line names them (they said batch_size, as train() in Python does)
        (["train", "--epochs", "0", *new], "train: error: --epochs: expected a positive integer, got 0"),
        (["train", "--lr", "-1", *new], "train: error: --lr: expected a learning rate > 0"),
        (["train", "--checkpoint-every", "0", *new], "--checkpoint-every: expected a positive integer"),
        (["train", "--image-size", "0", "9", *new], "--image-size: expected H W, each 1 to 4096 pixels"),
        (["train", "--optimizer", "adam", "--momentum", "0.5", *new], "--momentum: 0.5 was given, but --optimizer "
                                                                      "adam doesn't use it"),
        (["serve", str(damaged), "--threads", "0"], "serve: error: --threads: expected a positive integer, got 0"),
        (["train", "--out", str(damaged), "--resume", *d], "damaged training settings: dataset: expected one of"),
        (["predict", str(damaged), str(tmp_path / "none.png"), "--dataset", "mnist"], "none.png: no such file"),
        (["evaluate", str(tmp_path / "none.npz"), *d], "no such model file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert one_line(err) and message in err, (argv, err)
        count(tried, "bad inputs refused with a clear error")


# --- faults during training ----------------------------------------------------------------------

def short_run(out, model=None, opt=None, training=None, **kwargs):
    """3 epochs of 5 batches on 300 bar digits (seed 7)."""
    model = model or mnist_network(seed=1)
    opt = opt or SGD(model, lr=0.05)
    history = fit(model, opt, bars(300, 0), bars(100, 1), epochs=3, batch_size=64, seed=7, out=out,
                  training=training, progress=False, **kwargs)
    return model, opt, history


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return short_run(tmp_path_factory.mktemp("straight") / "m.npz")


def signal_after(opt, step, signum):
    """Make ``opt`` send this process ``signum`` right after its step number ``step``."""
    original = opt.step

    def step_then_signal():
        original()
        if opt.steps == step:
            os.kill(os.getpid(), signum)

    opt.step = step_then_signal


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_current_batch_and_resume_is_bit_identical(signum, straight, tmp_path, tried):
    out = tmp_path / "m.npz"
    model = mnist_network(seed=1)
    opt = SGD(model, lr=0.05)
    signal_after(opt, 7, signum)  # epoch 2, after its second batch

    def outside_fit(signum, frame):  # reached only if fit installed no handler of its own
        raise AssertionError(f"{signal.Signals(signum).name} was not handled by fit")

    previous = signal.signal(signum, outside_fit)
    try:
        with pytest.raises(TrainingInterrupted, match=rf"stopped by {signum.name} after step 7 \(epoch 2/3, 2 of 5 "
                                                       rf"batches done\); checkpoint saved in .*m.npz") as e:
            short_run(out, model, opt)
        assert signal.getsignal(signum) is outside_fit  # fit put the previous handler back
    finally:
        signal.signal(signum, previous)
    assert e.value.exit_status == 128 + signum and e.value.checkpoint == out
    saved = fastcnn.load_checkpoint(out)
    assert (saved.training["epoch"], saved.training["batch"], saved.optimizer.steps) == (1, 2, 7)
    assert np.array_equal(saved.model.parameters, model.parameters)  # saved at that very step
    resumed, resumed_opt, history = short_run(out, saved.model, saved.optimizer, saved.training)
    model, opt, straight_history = straight
    assert np.array_equal(resumed.parameters, model.parameters)
    assert np.array_equal(resumed_opt.velocity, opt.velocity)
    assert [h["val_acc"] for h in history] == [h["val_acc"] for h in straight_history]
    assert [h["loss"] for h in history] == [h["loss"] for h in straight_history]  # the totals survived
    count(tried, "in-process signals: checkpoint at the batch, resumed bit-identical")


def test_a_signal_at_the_end_of_the_last_epoch_stops_too(tmp_path):
    # One that came during the last epoch's validation, callbacks or checkpoint was noted and never
    # acted on (there was no next batch to check it at): fit returned and went on to the test set.
    from fastcnn.callbacks import Callback

    class SignalsAtTheEnd(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        def on_test_end(self, result):
            raise AssertionError("the test set was evaluated after the signal")

    out = tmp_path / "m.npz"
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM after step 15 \(at the end of epoch 3/3\); "
                                                  r"checkpoint saved in .*m.npz"):
        short_run(out, callbacks=[SignalsAtTheEnd()], test=bars(50, 2))
    saved = fastcnn.load_checkpoint(out)
    assert (saved.training["epoch"], saved.training["batch"], saved.optimizer.steps) == (3, 0, 15)


def test_periodic_checkpoints_resume_bit_identical(straight, tmp_path):
    out = tmp_path / "m.npz"
    model = mnist_network(seed=1)
    opt = SGD(model, lr=0.05)
    original = opt.step

    def step_then_fail():  # a crash right after step 8, as a kill would be
        original()
        if opt.steps == 8:
            raise RuntimeError("crash")

    opt.step = step_then_fail
    with pytest.raises(RuntimeError):
        short_run(out, model, opt, checkpoint_every=2)
    saved = fastcnn.load_checkpoint(out)
    assert (saved.training["epoch"], saved.training["batch"], saved.optimizer.steps) == (1, 2, 7)
    resumed, _, _ = short_run(out, saved.model, saved.optimizer, saved.training, checkpoint_every=2)
    assert np.array_equal(resumed.parameters, straight[0].parameters)


def test_fit_in_a_worker_thread_leaves_signals_alone():
    """Only the main thread may set signal handlers: elsewhere fit trains without them."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = []
    model = mnist_network(seed=1)
    worker = threading.Thread(target=lambda: result.append(
        fit(model, SGD(model, 0.05), (X, Y), TEST, epochs=1, batch_size=32, seed=0, progress=False)))
    worker.start()
    worker.join(120)
    assert len(result) == 1 and len(result[0]) == 1
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_weights_turning_nan_are_never_saved(tmp_path):
    out = tmp_path / "m.npz"
    model = mnist_network(seed=1)
    opt = SGD(model, lr=0.05)
    original = opt.step

    def poisoning_step():
        original()
        if opt.steps == 3:
            model.parameters[-1] = np.inf

    opt.step = poisoning_step
    with pytest.raises(TrainingDiverged, match=r"weights became NaN or Inf by step 3; .*m.npz keeps the last good"):
        short_run(out, model, opt, checkpoint_every=1)
    saved = fastcnn.load_checkpoint(out)
    assert saved.optimizer.steps == 2 and np.isfinite(saved.model.parameters).all()


def test_a_diverging_cli_run_is_one_line_and_keeps_its_last_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(data.CHECKSUMS, "mnist", fake_mnist(tmp_path))
    out = tmp_path / "m.npz"
    status = main(["train", "--out", str(out), "--data-dir", str(tmp_path), "--lr", "1e20", "--batch-size", "32",
                   "--checkpoint-every", "1", "--epochs", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and one_line(err) and "the loss became nan at step" in err
    step = int(err.split("at step ")[1].split()[0])
    saved = fastcnn.load_checkpoint(out)  # the step before the NaN, intact
    assert saved.optimizer.steps == step - 1 and np.isfinite(saved.model.parameters).all()


# --- files ---------------------------------------------------------------------------------------

def test_unwritable_outputs_fail_before_the_work(tmp_path, monkeypatch, capsys, tried):
    monkeypatch.setitem(data.CHECKSUMS, "mnist", fake_mnist(tmp_path))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    picture = tmp_path / "digit.png"
    Image.fromarray((255 - bars(1, 0)[0][0, :, :, 0] * 255).astype(np.uint8)).save(picture)
    (tmp_path / "digit.png.28x28.png").mkdir()  # where --save-preprocessed would write
    model_path = tmp_path / "model.npz"
    mnist_network(seed=0).save(model_path)
    in_a_file = f"cannot write there ({blocker} is a file, not a folder)"
    cases = [
        (["train", "--out", str(blocker / "m.npz"), "--data-dir", str(tmp_path)], in_a_file),
        (["evaluate", str(model_path), "--data-dir", str(tmp_path), "--plot", str(blocker / "errors.png")], in_a_file),
        (["evaluate", str(model_path), "--data-dir", str(tmp_path), "--confusion", str(blocker / "c.png")], in_a_file),
        (["predict", str(model_path), str(picture), "--save-preprocessed", "--dataset", "mnist"],
         "digit.png.28x28.png: cannot write there (a folder of that name is in the way)"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert one_line(err) and message in err, (argv, err)
        assert out == "", argv  # refused before any result was printed
        count(tried, "bad inputs refused with a clear error")


def test_a_full_disk_is_refused_up_front(tmp_path):
    with pytest.raises(ModelFileError, match=r"bytes needed, .* free\); choose another file"):
        check_writable(tmp_path / "m.npz", need=10**18)  # an exabyte: no disk has that free


def failing_writer(cls, name):
    """Replace ``cls.name`` with one that writes some bytes, then fails like a full disk."""
    def write(self, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    return cls, name, write


WRITERS = {
    "plot_errors": (lambda p: plots.plot_errors(p, X, Y, (Y + 1) % 10, np.full((64, 10), 0.1), list("0123456789")),
                    failing_writer(matplotlib.figure.Figure, "savefig")),
    "plot_confusion": (lambda p: plots.plot_confusion(p, np.eye(10, dtype=int) * 5, list("0123456789")),
                       failing_writer(matplotlib.figure.Figure, "savefig")),
    "save_preprocessed": (lambda p: image.save_preprocessed(X[0], p), failing_writer(Image.Image, "save")),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_failed_write_leaves_the_old_file(writer, tmp_path, monkeypatch):
    write, (cls, name, broken) = WRITERS[writer]
    path = tmp_path / "out.png"
    write(path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    monkeypatch.setattr(cls, name, broken)
    with pytest.raises(OSError if writer.startswith("plot") else ImageError, match="No space left"):
        write(path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_written_files_get_the_usual_permissions(tmp_path):
    with fileio.atomic_write(tmp_path / "f") as f:
        f.write(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~umask


# --- concurrency and memory ----------------------------------------------------------------------

def test_predict_from_four_threads_matches_single_threaded(net):
    rng = np.random.default_rng(5)
    inputs = [rng.random((n, 28, 28, 1), np.float32) for n in (1, 3, 8, 17, 30, 64)]
    expected = [net.predict(x) for x in inputs]
    barrier = threading.Barrier(4)
    mismatches, calls = [], []

    def work(t):
        barrier.wait()  # all four start together
        for i in range(24):
            k = (i + t) % len(inputs)  # each thread walks the inputs in its own order
            if not np.array_equal(net.predict(inputs[k]), expected[k]):
                mismatches.append((t, i, k))
            calls.append(1)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(calls) == 4 * 24 and mismatches == []


# Worker processes made by fork(): before the kernels' threads started, and after (see the test).
FORKED_WORKERS = r"""
import multiprocessing as mp, sys
import numpy as np
import fastcnn

model = fastcnn.Sequential([fastcnn.Dense(4), fastcnn.ReLU(), fastcnn.Dense(3)], input_shape=(5,))
x = np.random.default_rng(0).random((8, 5), dtype=np.float32)


def predict(backend):
    model.backend = backend
    return model.predict(x)


if __name__ == "__main__":
    fork = mp.get_context("fork")
    with fork.Pool(1) as early:  # forked before any kernel ran
        expected = model.predict(x)  # the kernels' threads start here
        assert np.array_equal(early.apply(predict, ("numba",)), expected)
    with fork.Pool(1) as late:
        try:
            late.apply_async(predict, ("numba",)).get(timeout=60)  # (compiled by the parent: it would run at once)
        except fastcnn.UsageError as e:
            print(e)
        np.testing.assert_allclose(late.apply_async(predict, ("numpy",)).get(timeout=300), expected, atol=1e-6)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_process_forked_after_the_kernels_ran_says_so_and_what_to_do(tmp_path):
    """GNU OpenMP's threads don't survive fork(): Numba ends such a copy at its first parallel
    kernel, and a multiprocessing pool (fork is Linux's default) then waits forever. A copy made
    before the kernels ran works; one made after says why it can't, and the NumPy backend works there."""
    script = tmp_path / "workers.py"
    script.write_text(FORKED_WORKERS)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("fastcnn's compiled kernels can't run in this process: it is a copy (fork)")
    assert "multiprocessing.get_context('spawn')" in out.stdout and "Terminating" not in out.stderr


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_predicting_and_evaluating_10000_images_takes_one_batch_of_memory():
    """Going from 1,000 images (one batch) to 10,000 may add the (N, 10) results and the
    per-image bookkeeping, not the activations (this model: 12.5 MB per 1,000 images)."""
    model = Sequential([Conv2D(1, 4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(784, 10)], seed=0)
    x = np.random.default_rng(0).random((10_000, 28, 28, 1), np.float32)
    y = np.random.default_rng(1).integers(0, 10, 10_000)
    for name, run in (("predict", lambda n: model.predict(x[:n])), ("evaluate", lambda n: evaluate(model, x[:n], y[:n]))):
        run(1000)  # warm-up: first calls allocate once-only things (kernel loading)
        one_batch = peak_bytes(lambda: run(1000))
        ten_batches = peak_bytes(lambda: run(10_000))
        per_image = 10 * 4 * 4 + 8 * 4  # generous: four float32 copies of the 10 scores, four int64
        assert ten_batches - one_batch < 9000 * per_image, (name, one_batch, ten_batches)


# --- the CLI killed, interrupted, resumed (subprocesses) ------------------------------------------

RUNNER = """
import json, sys
from fastcnn import data
data.CHECKSUMS["mnist"] = json.loads(sys.argv[1])  # the test's small synthetic MNIST
from fastcnn.cli import main
sys.exit(main(sys.argv[2:]))
"""
# 20 epochs of 10 batches, a checkpoint every 2 batches: 200 steps, 100 checkpoints (about 3 s).
SETTINGS = ["--epochs", "20", "--batch-size", "32", "--checkpoint-every", "2", "--threads", "1", "--no-progress"]
TIMEOUT = 300  # a stale Numba cache means compiling every kernel first


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    runner = root / "run.py"
    runner.write_text(RUNNER)
    prefix = [sys.executable, str(runner), json.dumps(fake_mnist(root))]

    def start(argv):
        return subprocess.Popen(prefix + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def train_argv(out, resume=False):
        return ["train", "--out", str(out), "--data-dir", str(root), *SETTINGS] + (["--resume"] if resume else [])

    def finish(argv):
        proc = start(argv)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        return out

    return SimpleNamespace(root=root, start=start, train_argv=train_argv, finish=finish)


@pytest.fixture(scope="module")
def cli_straight(cli):
    """The uninterrupted run's checkpoint."""
    out = cli.root / "straight.npz"
    cli.finish(cli.train_argv(out))
    return fastcnn.load_checkpoint(out)


def identity(path):
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        return st.st_ino, st.st_mtime_ns
    return None


def wait_for_a_new_checkpoint(proc, path, before):
    """Block until ``proc`` has rewritten ``path`` (so it is inside the training loop)."""
    deadline = time.monotonic() + TIMEOUT
    while identity(path) == before:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.002)


def same_run(a, b):
    return (np.array_equal(a.model.parameters, b.model.parameters)
            and np.array_equal(a.optimizer.velocity, b.optimizer.velocity)
            and a.optimizer.steps == b.optimizer.steps
            and a.training["history"][-1]["val_acc"] == b.training["history"][-1]["val_acc"])


def test_sigkill_at_random_moments_leaves_a_loadable_checkpoint_and_loses_nothing(cli, cli_straight, tried):
    out = cli.root / "killed.npz"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    temps = 0
    for kill in range(5):
        before = identity(out)
        proc = cli.start(cli.train_argv(out, resume=before is not None))
        wait_for_a_new_checkpoint(proc, out, before)
        time.sleep(rng.uniform(0, 0.2))  # mid-step, mid-checkpoint, mid-evaluation: wherever it lands
        proc.kill()
        proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == -signal.SIGKILL, f"run {kill} ended before its kill (seed {seed})"
        saved = fastcnn.load_checkpoint(out)
        assert saved.optimizer.steps == saved.training["epoch"] * 10 + saved.training["batch"]
        # Nothing else beside the checkpoint but, if the kill hit a write, its temporary file, and
        # the lock's empty file (the lock itself went with the process).
        leftovers = fileio.stale_temps(out)
        assert {p for p in cli.root.glob(".*") if p.is_file()} <= set(leftovers) | {out, fileio.lock_path(out)}
        temps += len(leftovers)
        count(tried, "SIGKILLs during training survived with a loadable checkpoint")
    cli.finish(cli.train_argv(out, resume=True))
    assert fileio.stale_temps(out) == []  # the resumed run removed what the kills left
    assert same_run(fastcnn.load_checkpoint(out), cli_straight), f"kill times from seed {seed}"
    count(tried, "SIGKILL chains resumed to the uninterrupted weights, bit for bit")
    count(tried, "temporary files left by a killed write (removed by the next run)", temps)


def test_sigint_and_sigterm_save_exit_130_143_and_resume_to_the_same_weights(cli, cli_straight, tried):
    out = cli.root / "interrupted.npz"
    resume = None
    for signum in (signal.SIGINT, signal.SIGTERM):
        before = identity(out)
        proc = cli.start(resume or cli.train_argv(out))
        wait_for_a_new_checkpoint(proc, out, before)
        time.sleep(random.uniform(0, 0.1))
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 128 + signum and one_line(err), err
        assert f"stopped by {signum.name} after step" in err and "resume with: fastcnn train" in err
        saved = fastcnn.load_checkpoint(out)
        steps = saved.optimizer.steps
        assert f"after step {steps} " in err  # saved where it stopped
        assert steps == saved.training["epoch"] * 10 + saved.training["batch"]
        resume = shlex.split(err.split("resume with: ")[1])[1:]  # the printed command, minus "fastcnn"
        count(tried, "SIGINT/SIGTERM to the CLI: exit 130/143, one line, checkpoint at the batch")
    cli.finish(resume)
    assert same_run(fastcnn.load_checkpoint(out), cli_straight)
