"""Callbacks and validation: EarlyStopping stops within its patience, KeepBest keeps the best epoch
(and --keep-best the last one beside it, to resume), ReduceLROnPlateau lowers the rate, one's own
callback sees every batch and may stop, a resumed run keeps their state bit for bit, and the
held-out validation split is what it says."""

import numpy as np
import pytest

import fastcnn
from fastcnn import SGD, ShapeError, fit
from fastcnn.callbacks import RECORDED, Callback, EarlyStopping, KeepBest, ReduceLROnPlateau
from fastcnn.cli import main
from fastcnn.training import VALIDATION_SPLIT, holdout
from fastcnn.architectures import mnist_network

from fakes import bars, fake_mnist


class Scripted(Callback):
    """Writes a made-up number, ``score``, into each epoch's record, for the callbacks after it to
    watch: so which epoch is best is known in advance. It also keeps each epoch's weights."""

    def __init__(self, scores):
        self.scores, self.weights = scores, {}

    def on_epoch_end(self, epoch, logs):
        logs["score"] = self.scores[epoch - 1]
        self.weights[epoch] = self.run.model.parameters.copy()


def run(epochs, callbacks, out=None, training=None, model=None, optimizer=None, **kw):
    model = model or mnist_network(seed=1)
    optimizer = optimizer or SGD(model, lr=0.05)
    history = fit(model, optimizer, bars(128, 0), bars(32, 1), epochs=epochs, batch_size=64, seed=2,
                  callbacks=callbacks, out=out, training=training, progress=False, **kw)
    return model, optimizer, history


def test_early_stopping_stops_within_patience_of_the_best(tmp_path, capsys):
    scores = [0.5, 0.3, 0.4, 0.35, 0.31, 0.2, 0.1]  # best at epoch 2, then no improvement
    stopper = EarlyStopping("score", patience=3)
    _, _, history = run(7, [Scripted(scores), stopper], out=tmp_path / "m.npz")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5] and stopper.best_epoch == 2
    assert "Stopped after epoch 5: EarlyStopping: score has not improved for 3 epochs" in capsys.readouterr().out
    saved = fastcnn.load_checkpoint(tmp_path / "m.npz")
    assert saved.training["stopped"]["epoch"] == 5 and saved.training["epoch"] == 5
    # A stopped run is finished: fit given its state trains no further.
    again = fit(saved.model, saved.optimizer, bars(128, 0), bars(32, 1), epochs=7, batch_size=64, seed=2,
                callbacks=[Scripted(scores), EarlyStopping("score", patience=3)], training=saved.training,
                progress=False)
    assert len(again) == 5
    # patience 0: the first epoch without improvement stops; mode max for accuracies
    stopper = EarlyStopping("val_acc", patience=0, min_delta=2.0)  # no accuracy can improve by 2
    _, _, history = run(4, [stopper])
    assert len(history) == 2 and stopper.mode == "max"


def test_keep_best_keeps_the_better_weights_when_the_last_epoch_is_worse(tmp_path):
    script = Scripted([0.4, 0.2, 0.3, 0.5])  # epoch 2 is the best, the last the worst
    keeper = KeepBest(tmp_path / "best.npz", monitor="score")
    model, _, history = run(4, [script, keeper], out=tmp_path / "last.npz", test=bars(40, 2))
    best = fastcnn.load_checkpoint(tmp_path / "best.npz")
    last = fastcnn.load_checkpoint(tmp_path / "last.npz")
    assert np.array_equal(best.model.parameters, script.weights[2])
    assert np.array_equal(last.model.parameters, script.weights[4]) and last.optimizer is not None
    assert best.optimizer is None and best.training["best"] == {"epoch": 2, "monitor": "score", "value": 0.2}
    assert [h["epoch"] for h in best.training["history"]] == [1, 2, 3, 4]  # rewritten at the end
    assert np.array_equal(model.parameters, script.weights[2])  # restored: what fit leaves is the best
    assert best.training["test"]["epoch"] == 2 == last.training["test"]["epoch"]  # tested: the kept weights
    with pytest.raises(ShapeError, match="also fit's out"):
        run(1, [KeepBest(tmp_path / "same.npz")], out=tmp_path / "same.npz")
    model = mnist_network(seed=0)
    with pytest.raises(ShapeError, match="KeepBest monitors val_loss, but fit has no validation data"):
        fit(model, SGD(model, 0.05), bars(64, 0), validation_split=0, callbacks=[KeepBest(tmp_path / "b.npz")])
    before = model.parameters.copy()
    for keras, ours in (("val_accuracy", "val_acc"), ("accuracy", "train_acc")):  # before the first epoch's work
        with pytest.raises(ShapeError, match=rf"EarlyStopping: monitor '{keras}' is Keras's name; fastcnn's is "
                                             rf"'{ours}' \(the history has val_loss, val_acc, loss, train_acc, "):
            fit(model, SGD(model, 0.05), bars(64, 0), callbacks=[EarlyStopping(keras)], progress=False)
    assert np.array_equal(model.parameters, before)
    history = fit(model, SGD(model, 0.05), bars(64, 0), progress=False)
    assert set(history[0]) == {"epoch", *RECORDED}  # the numbers a callback may monitor, as they are named


def test_reduce_lr_on_plateau_lowers_the_rate(capsys):
    scores = [0.5, 0.4, 0.45, 0.41, 0.3, 0.5, 0.6]
    reducer = ReduceLROnPlateau("score", factor=0.5, patience=2, min_lr=0.02)
    _, optimizer, _ = run(7, [Scripted(scores), reducer])
    # epochs 3 and 4 don't improve: 0.05 -> 0.025 after epoch 4; 6 and 7 don't: 0.0125, held at min_lr 0.02
    assert optimizer.lr == pytest.approx(0.02)
    said = capsys.readouterr().out
    assert "learning rate 0.05 -> 0.025" in said and "learning rate 0.025 -> 0.02" in said


class Counting(Callback):
    """One's own callback: counts what it sees, and stops the run at a batch."""

    def __init__(self, stop_at=None):
        self.stop_at, self.calls, self.steps = stop_at, [], 0

    def on_train_begin(self):
        self.calls.append("begin")

    def on_epoch_begin(self, epoch):
        self.calls.append(f"epoch {epoch}")

    def on_batch_end(self, batch, logs):
        self.steps += 1
        assert logs["step"] == self.run.optimizer.steps and 0 <= logs["acc"] <= 1 and logs["loss"] > 0
        if self.run.optimizer.steps == self.stop_at:
            self.run.stop("enough")

    def on_epoch_end(self, epoch, logs):
        self.calls.append(f"end {epoch} {logs['epoch']}")

    def on_train_end(self):
        self.calls.append("train end")

    def on_test_end(self, logs):
        self.calls.append(f"test {logs['images']}")

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def test_a_callback_of_ones_own_sees_every_batch_and_can_stop():
    counter = Counting()
    run(2, [counter], test=bars(10, 3))
    assert counter.calls == ["begin", "epoch 1", "end 1 1", "epoch 2", "end 2 2", "train end", "test 10"]
    assert counter.steps == 4  # 128 images in batches of 64
    stopper = Counting(stop_at=3)
    _, optimizer, history = run(5, [stopper])
    assert optimizer.steps == 3 and len(history) == 2 and stopper.calls[-1] == "train end"
    with pytest.raises(ShapeError, match=r"callbacks\[0\]: expected a fastcnn.callbacks.Callback, got builtin"):
        run(1, [print])
    with pytest.raises(ShapeError, match=r"callbacks\[1\]: .*got the class EarlyStopping; make one: EarlyStopping\(...\)"):
        run(1, [stopper, EarlyStopping])


def test_a_resumed_run_keeps_the_callbacks_state_and_ends_bit_identical(tmp_path):
    scores = [0.5, 0.6, 0.7, 0.4, 0.3, 0.9]

    def callbacks(best):
        return [Scripted(scores), ReduceLROnPlateau("score", patience=1, factor=0.5),
                EarlyStopping("score", patience=4), KeepBest(tmp_path / best, "score"), Counting()]
    straight = callbacks("straight-best.npz")
    model, optimizer, history = run(6, straight, out=tmp_path / "straight.npz")
    run(3, callbacks("best.npz"), out=tmp_path / "part.npz", checkpoint_every=1)
    saved = fastcnn.load_checkpoint(tmp_path / "part.npz")
    assert saved.optimizer.lr == 0.0125  # halved after epochs 2 and 3
    resumed = callbacks("best.npz")  # the run's own files: replaced as it goes on
    again, again_optimizer, again_history = run(6, resumed, out=tmp_path / "part.npz", training=saved.training,
                                                model=saved.model, optimizer=saved.optimizer)
    assert np.array_equal(again.parameters, model.parameters) and again_optimizer.lr == optimizer.lr
    assert [h["val_loss"] for h in again_history] == [h["val_loss"] for h in history]
    assert resumed[2].state_dict() == straight[2].state_dict() and resumed[4].steps == straight[4].steps == 12
    assert resumed[3].best_epoch == straight[3].best_epoch == 5
    ck = fastcnn.load_checkpoint(tmp_path / "part.npz")
    with pytest.raises(ShapeError, match="the run being resumed had Scripted, ReduceLROnPlateau"):
        run(6, [EarlyStopping()], training=ck.training, model=ck.model, optimizer=ck.optimizer)


def test_the_validation_split_is_held_out_of_each_class():
    y = np.repeat(np.arange(4), [120, 24, 1, 5])  # a class of one picture, and one of five
    rows, held = holdout(y, VALIDATION_SPLIT, seed=0)
    assert np.bincount(y[held], minlength=4).tolist() == [10, 2, 0, 0]
    assert sorted(np.concatenate([rows, held]).tolist()) == list(range(len(y)))
    assert np.array_equal(holdout(y, VALIDATION_SPLIT, seed=0)[1], held)  # drawn from the seed
    assert not np.array_equal(holdout(y, VALIDATION_SPLIT, seed=1)[1], held)
    model = mnist_network(seed=0)
    x, labels = bars(240, 0)
    record = {}

    class Seen(Callback):  # the rows each batch trained on
        def on_train_begin(self):
            record["validation"] = self.run.state["validation"]

    fit(model, SGD(model, 0.05), (x, labels), epochs=1, callbacks=[Seen()], progress=False)
    assert record["validation"] == {"on": "held-out", "fraction": 1 / 12, "images": int(round(
        sum(round(c / 12) for c in np.bincount(labels))))}
    tiny = fit(model, SGD(model, 0.05), bars(5, 0), epochs=1, progress=False)  # too few: none held out
    assert tiny[0]["val_acc"] is None


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    from fastcnn import data
    monkeypatch.setitem(data.CHECKSUMS, "mnist", fake_mnist(tmp_path / "data"))
    return ["--data-dir", str(tmp_path / "data"), "--no-progress", "--threads", "1"]


def test_keep_best_on_the_command_line(tmp_path, fake_data, capsys):
    """--keep-best: --out holds the epoch with the best val_loss, OUT.last.npz the last, to resume;
    the kept weights are those a run of just that many epochs ends with."""
    out = tmp_path / "m.npz"
    assert main(["train", "--out", str(out), "--epochs", "3", "--lr", "0.3", "--keep-best", *fake_data]) == 0
    said = capsys.readouterr().out
    best, last = fastcnn.load_checkpoint(out), fastcnn.load_checkpoint(tmp_path / "m.last.npz")
    losses = [h["val_loss"] for h in last.training["history"]]
    kept = best.training["best"]["epoch"]
    assert kept == 1 + int(np.argmin(losses)) and f"(the best epoch, {kept}: val_loss" in said
    assert best.optimizer is None and last.training["epoch"] == 3
    assert best.training["test"]["epoch"] == kept and "Test accuracy" in said
    short = tmp_path / "short.npz"
    assert main(["train", "--out", str(short), "--epochs", str(kept), "--lr", "0.3", *fake_data]) == 0
    assert np.array_equal(fastcnn.load_checkpoint(short).model.parameters, best.model.parameters)
    assert main(["history", str(out)]) == 0
    assert "<- kept (best)" in capsys.readouterr().out
    # Resuming: from the last epoch, not the best; and both files are refused without --overwrite.
    assert main(["train", "--out", str(out), "--epochs", "4", "--resume", *fake_data]) == 0
    assert fastcnn.load_checkpoint(tmp_path / "m.last.npz").training["epoch"] == 4
    (tmp_path / "m.last.npz").unlink()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "5", *fake_data]) == 2
    assert "m.last.npz, which is missing" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x.npz"), "--keep-best", "--epochs", "1", *fake_data]) == 0
    out.unlink()
    (tmp_path / "x.npz").rename(out)
    assert main(["train", "--out", str(tmp_path / "x.npz"), "--keep-best", *fake_data]) == 2
    assert "x.last.npz: already exists" in capsys.readouterr().err


def test_early_stopping_and_reduce_lr_on_the_command_line(tmp_path, fake_data, capsys):
    out = tmp_path / "m.npz"
    assert main(["train", "--out", str(out), "--epochs", "6", "--early-stopping", "0", "--monitor", "val_acc",
                 "--reduce-lr-on-plateau", "0", *fake_data]) == 0
    saved = fastcnn.load_checkpoint(out)
    accuracies = [h["val_acc"] for h in saved.training["history"]]
    # patience 0: the first epoch whose val_acc is no better than the best before it stops the run
    # and, in the same epoch, takes the learning rate down tenfold
    worse = [e for e in range(1, len(accuracies)) if accuracies[e] <= max(accuracies[:e])]
    assert len(accuracies) == (worse[0] + 1 if worse else 6)
    assert saved.optimizer.lr == pytest.approx(0.07 * (0.1 if worse else 1))
    if worse:
        assert saved.training["stopped"]["epoch"] == len(accuracies)
        assert main(["train", "--out", str(out), "--resume", *fake_data]) == 0
        assert "there is nothing to resume" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--monitor", "accuracy", *fake_data])
    assert main(["train", "--out", str(tmp_path / "y.npz"), "--monitor", "val_acc", *fake_data]) == 2
    assert "monitor: val_acc was given, but a run without --keep-best" in capsys.readouterr().err


def test_a_fastcnn_0_2_run_resumes_as_it_was_made(tmp_path, monkeypatch, capsys):
    """A checkpoint of fastcnn 0.2 that held out the end of the training set (its
    --validation-split) resumes holding out the same end, to the weights 0.2 would have reached."""
    import numba

    from fastcnn import data
    from fastcnn.architectures import ARCHITECTURES
    from fastcnn.schedules import InverseTime
    from fastcnn.training import fresh_state
    from fastcnn.cli.train import train
    monkeypatch.setitem(data.CHECKSUMS, "mnist", fake_mnist(tmp_path / "data"))
    x, y = data.load_dataset("mnist", "train", tmp_path / "data")
    held = 80  # 0.25 of 320: the end
    settings = dict(model="original", dataset="mnist", epochs=1, batch_size=64, optimizer="sgd", lr=0.07,
                    momentum=0.9, schedule="inverse-time", decay=1e-3, weight_decay=0.0, validation_split=0.25, seed=0)

    def as_0_2(epochs, out):  # what fastcnn 0.2's train did
        model = ARCHITECTURES["original"].build((28, 28, 1), 10, 0)
        state = dict(fresh_state(), settings=dict(settings, epochs=epochs))
        fit(model, SGD(model, 0.07, 0.9, schedule=InverseTime(1e-3)), (x[:-held], y[:-held]), (x[-held:], y[-held:]),
            epochs=epochs, batch_size=64, seed=0, out=out, training=state, progress=False)
        return model
    straight = as_0_2(2, tmp_path / "straight.npz")
    as_0_2(1, tmp_path / "old.npz")
    train(tmp_path / "old.npz", resume=True, epochs=2, data_dir=tmp_path / "data", progress=False,
          threads=numba.get_num_threads())
    resumed = fastcnn.load_checkpoint(tmp_path / "old.npz")
    assert np.array_equal(resumed.model.parameters, straight.parameters)
    assert "validating on the last 80 training images (as fastcnn 0.2 held out)" in capsys.readouterr().out
    assert main(["history", str(tmp_path / "old.npz")]) == 0
    assert "validation: the last 80 images of the training set, as fastcnn 0.2 held them out" in capsys.readouterr().out


def test_a_callback_state_a_checkpoint_cant_keep_is_named_before_training(tmp_path):
    # A state of NumPy numbers, or of objects, failed in json.dumps with a bare TypeError, after the first epoch.
    class Counting(Callback):
        def __init__(self, keep):
            self.keep, self.seen = keep, np.float32(0)

        def on_epoch_end(self, epoch, logs):
            self.seen += np.float32(logs["loss"])

        def state_dict(self):
            return {"seen": self.seen, "keep": self.keep}

    x, y = bars(128, 0)
    model = mnist_network(seed=0)
    out = tmp_path / "m.npz"
    sgd = SGD(model, 0.05)
    with pytest.raises(fastcnn.ConfigError, match=r"callbacks: Counting.state_dict\(\) gave .*which a checkpoint can't "
                                                  r"keep \(object .*\); expected a dict of numbers"):
        fit(model, sgd, (x, y), epochs=1, progress=False, out=out, callbacks=[Counting(object())])
    assert not out.exists() and sgd.steps == 0  # refused before the first step
    fit(model, SGD(model, 0.05), (x, y), epochs=2, progress=False, out=out, callbacks=[Counting([1, 2])])
    kept = fastcnn.load_checkpoint(out).training["callbacks"][0]["state"]
    assert kept["keep"] == [1, 2] and isinstance(kept["seen"], float) and kept["seen"] > 0  # NumPy's float32, as JSON


def test_a_run_stopped_within_an_epoch_says_so(tmp_path, capsys):
    # It said "Stopped after epoch 1" and recorded the part of the epoch as a whole one.
    class StopsAtBatch3(Callback):
        def on_batch_end(self, batch, logs):
            if batch == 3:
                self.run.stop("enough")

    x, y = bars(256, 0)
    model = mnist_network(seed=0)
    out = tmp_path / "m.npz"
    history = fit(model, SGD(model, 0.05), (x, y), epochs=2, batch_size=32, progress=False, out=out,
                  callbacks=[StopsAtBatch3()])
    assert "Stopped in epoch 1, after 3 of its 8 batches: enough" in capsys.readouterr().out
    assert len(history) == 1 and history[0]["batches"] == 3
    assert fastcnn.load_checkpoint(out).training["stopped"] == {"epoch": 1, "reason": "enough", "batches": 3}
    assert main(["history", str(out)]) == 0
    assert "stopped in epoch 1, after 3 of its batches: enough" in capsys.readouterr().out
