"""The CLI never loses a user's work and says what it does: train won't replace a file, predict goes
on past a bad picture, names never collide, the model's own data set is used, and the rest."""

import argparse
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

import fastcnn
from fastcnn import SGD, data
from fastcnn.cli import main, parser
from fastcnn.architectures import mnist_network

from fakes import bars, fake_mnist


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    monkeypatch.setitem(data.CHECKSUMS, "mnist", fake_mnist(tmp_path / "data"))
    return ["--data-dir", str(tmp_path / "data"), "--no-progress", "--threads", "1"]


def test_train_never_replaces_an_existing_file(tmp_path, fake_data, capsys):
    out = tmp_path / "model.npz"
    out.write_bytes(b"a model that took an hour")
    assert main(["train", "--out", str(out), "--epochs", "1", *fake_data]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume" in err and "--out" in err and "--overwrite" in err
    assert err.count("\n") == 1 and out.read_bytes() == b"a model that took an hour"
    assert main(["train", "--out", str(out), "--epochs", "1", "--overwrite", *fake_data]) == 0
    assert fastcnn.load_checkpoint(out).training["epoch"] == 1


def test_resume_of_a_finished_run_says_how_to_train_further(tmp_path, fake_data, capsys):
    out = tmp_path / "m.npz"
    assert main(["train", "--out", str(out), "--epochs", "1", *fake_data]) == 0
    before = out.read_bytes()
    assert main(["train", "--out", str(out), "--resume", *fake_data]) == 0
    said = capsys.readouterr().out
    assert "finished its 1 epochs" in said and f"fastcnn train --out {out} --resume --epochs 6" in said
    assert out.read_bytes() == before
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", *fake_data]) == 0
    assert fastcnn.load_checkpoint(out).training["epoch"] == 2


def digit_picture(path, fmt=None):
    im = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(im).line([(60, 15), (60, 105)], fill=0, width=10)
    im.save(path, format=fmt)
    return str(path)


@pytest.fixture
def model_file(tmp_path):
    def make(dataset=None):
        model = mnist_network(seed=0)
        path = tmp_path / f"{dataset}.npz"
        training = None if dataset is None else {"epoch": 1, "batch": 0, "totals": [0.0, 0, 0, 0.0],
                                                  "history": [], "settings": {"dataset": dataset}}
        fastcnn.save(path, model, SGD(model, 0.1), training)
        return str(path)
    return make


def test_predict_reports_a_bad_picture_and_reads_the_rest(tmp_path, model_file, capsys):
    good = [digit_picture(tmp_path / "a.png"), digit_picture(tmp_path / "a.jpg")]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a picture")
    assert main(["predict", model_file("mnist"), good[0], str(bad), good[1], "--save-preprocessed"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "broken.png: not an image file" in captured.err
    for path in good:  # both read, and a.png and a.jpg keep their own 28x28 beside them
        assert f"{path}: digit " in captured.out and f"the 28x28 it saw: {path}.28x28.png" in captured.out
        assert Image.open(f"{path}.28x28.png").size == (28, 28)
    assert sorted(p.name for p in tmp_path.iterdir() if "28x28" in p.name) == ["a.jpg.28x28.png", "a.png.28x28.png"]


def test_a_tiny_picture_is_read_with_a_note(tmp_path, model_file, capsys):
    path = tmp_path / "tiny.png"
    Image.open(digit_picture(path)).resize((10, 10), Image.Resampling.BOX).save(path)
    assert main(["predict", model_file("mnist"), str(path)]) == 0
    assert "note: " in capsys.readouterr().out


def test_the_data_set_recorded_in_the_model_file_is_used(tmp_path, model_file, capsys):
    picture = digit_picture(tmp_path / "x.png")
    fashion = model_file("fashion-mnist")
    assert main(["predict", fashion, picture]) == 0
    captured = capsys.readouterr()
    assert "digit" not in captured.out and "Trouser: " in captured.out and captured.err == ""
    assert main(["predict", fashion, picture, "--dataset", "mnist"]) == 0
    captured = capsys.readouterr()
    assert "warning: " in captured.err and "trained on fashion-mnist" in captured.err and "digit " in captured.out
    assert main(["predict", model_file(None), picture]) == 0  # no record: MNIST's digits
    assert "digit " in capsys.readouterr().out


def test_evaluate_uses_the_recorded_data_set(model_file, monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(data, "load_dataset", lambda name, split, data_dir=None: (asked.append(name), bars(50, 0))[1])
    assert main(["evaluate", model_file("fashion-mnist")]) == 0
    out = capsys.readouterr().out
    assert asked == ["fashion-mnist"] and "on 50 fashion-mnist images" in out and "Ankle boot" in out


def test_version_and_help_for_every_argument(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fastcnn {fastcnn.__version__}"
    p = parser()
    subparsers = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, (name, action.dest)


def test_serve_without_flask_says_what_to_install(model_file, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "flask", None)  # as if the [web] extra were not installed
    monkeypatch.delitem(sys.modules, "fastcnn.serve", raising=False)
    assert main(["serve", model_file("mnist"), "--port", "0"]) == 2
    assert "pip install 'fastcnn[web]'" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    (np.nan, "holds NaN or Inf"), (np.inf, "holds NaN or Inf"), (255.0, "divide 0-255 by 255")])
def test_forward_and_predict_refuse_nan_inf_and_unscaled_images(bad, message):
    model = mnist_network(seed=0)
    x = np.zeros((3, 28, 28, 1), np.float32)
    x[2, 5, 5] = bad
    for run in (model.forward, model.predict):
        with pytest.raises(fastcnn.ShapeError, match=message):
            run(x)
        with warnings.catch_warnings():  # float64 values past float32's range: refused as they are,
            warnings.simplefilter("error")  # without a warning from the conversion
            with pytest.raises(fastcnn.ShapeError, match=message if bad != np.inf else "holds NaN or Inf"):
                run(x.astype(np.float64) * (1e300 if bad == 255.0 else 1.0))


def test_predict_names_a_bad_image_by_its_index_in_all_of_x():
    model = mnist_network(seed=0)
    x = np.zeros((600, 28, 28, 1), np.float32)
    x[517, 3, 3] = np.nan  # in the third batch of 256
    with pytest.raises(fastcnn.ShapeError, match="image 517 holds NaN or Inf"):
        model.predict(x)
    with pytest.raises(fastcnn.ShapeError, match="non-empty batch"):
        model.predict(x[:0])


# --- what a new user tried (2026-12-08): each once a silent wrong answer, a traceback or a replaced file ---

def test_a_model_file_that_records_no_data_set_is_taken_for_mnist_with_a_warning(tmp_path, model_file, monkeypatch,
                                                                                  capsys):
    # fit and save in Python record no data set: a model fitted on Fashion-MNIST was evaluated on
    # MNIST's digits without a word (7.9% accuracy)
    monkeypatch.setattr(data, "load_dataset", lambda name, split, data_dir=None: bars(50, 0))
    unrecorded = model_file(None)
    assert main(["evaluate", unrecorded]) == 0
    err = capsys.readouterr().err
    assert one_line(err) and "records no data set" in err and "taking it for mnist's; --dataset names another" in err
    assert main(["evaluate", unrecorded, "--dataset", "fashion-mnist"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["evaluate", model_file("mnist")]) == 0
    assert capsys.readouterr().err == ""


def test_evaluate_refuses_a_folder_for_a_model_trained_on_a_data_set(tmp_path, model_file, capsys):
    assert main(["evaluate", model_file("mnist"), "--data", str(tmp_path)]) == 2  # it was ignored
    err = capsys.readouterr().err
    assert one_line(err) and "--data: " in err and "was trained on mnist, not on a folder of pictures" in err


def test_train_refuses_to_resume_a_file_written_by_fit(tmp_path, fake_data, capsys):
    # It resumed with fastcnn train's defaults: the original network's recipe on MNIST, whatever
    # the file's model and data were.
    x, y = bars(64, 0)
    model = mnist_network(seed=0)
    out = tmp_path / "fitted.npz"
    fastcnn.fit(model, SGD(model, 0.05), (x, y), epochs=1, progress=False, out=out)
    before = out.read_bytes()
    assert main(["train", "--out", str(out), "--resume", *fake_data]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "was written by fit() in Python" in err and "training=ck.training" in err
    assert out.read_bytes() == before


def test_a_keep_best_run_resumes_by_its_own_out_not_its_last_epoch_file(tmp_path, fake_data, capsys):
    # Resumed by its .last file, it wrote the best epoch into that file and the last into a new
    # .last.last one, leaving the run's best-epoch file behind.
    out = tmp_path / "kb.npz"
    assert main(["train", "--out", str(out), "--epochs", "1", "--keep-best", *fake_data]) == 0
    last = tmp_path / "kb.last.npz"
    files = {p: p.read_bytes() for p in (out, last)}
    capsys.readouterr()
    assert main(["train", "--out", str(last), "--resume", "--epochs", "2", *fake_data]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and f"resumes by the run's own --out: fastcnn train --out {out} --resume" in err
    assert sorted(p.name for p in tmp_path.glob("kb*")) == ["kb.last.npz", "kb.npz"]
    assert all(p.read_bytes() == b for p, b in files.items())
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", *fake_data]) == 0
    assert fastcnn.load_checkpoint(last).training["epoch"] == 2


def test_a_last_epoch_file_left_by_an_earlier_keep_best_run_is_not_resumed(tmp_path, fake_data, capsys):
    # --resume took OUT.last.npz whenever it existed: after a --keep-best run, then a new run into
    # the same --out with --overwrite, it went on with the old run and replaced the new one.
    out, last = tmp_path / "r.npz", tmp_path / "r.last.npz"
    assert main(["train", "--out", str(out), "--epochs", "1", "--keep-best", "--seed", "5", *fake_data]) == 0
    assert main(["train", "--out", str(out), "--epochs", "1", "--overwrite", "--seed", "1", *fake_data]) == 0
    stale = last.read_bytes()
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", *fake_data]) == 0
    said = capsys.readouterr()
    assert f"{last} is left from an earlier --keep-best run into {out}; the run in {out} is resumed" in said.err
    resumed = fastcnn.load_checkpoint(out).training
    assert resumed["settings"]["seed"] == 1 and resumed["epoch"] == 2 and last.read_bytes() == stale


def test_save_preprocessed_never_replaces_a_file_unasked(tmp_path, model_file, capsys):
    picture = digit_picture(tmp_path / "a.png")
    seen = tmp_path / "a.png.28x28.png"
    seen.write_bytes(b"the user's own file")
    assert main(["predict", model_file("mnist"), picture, "--save-preprocessed"]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "a.png.28x28.png: already exists" in err and "--overwrite" in err
    assert seen.read_bytes() == b"the user's own file"
    assert main(["predict", model_file("mnist"), picture, "--save-preprocessed", "--overwrite"]) == 0
    assert Image.open(seen).size == (28, 28)


def test_a_picture_is_written_only_under_a_png_name(tmp_path, fake_data, capsys):
    out = tmp_path / "m.npz"
    assert main(["train", "--out", str(out), "--epochs", "1", *fake_data]) == 0
    for name in ("h.jpg", "h.txt", "h"):  # PNG data went under any name
        assert main(["history", str(out), "--plot", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert one_line(err) and "pictures are written as PNG; give a name ending in .png" in err
        assert not (tmp_path / name).exists()
    assert main(["history", str(out), "--plot", str(tmp_path / "h.PNG")]) == 0


def test_one_epochs_history_is_drawn_at_epoch_1(monkeypatch, tmp_path):
    from fastcnn import plots
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
    history = [{"epoch": 1, "loss": 0.5, "train_acc": 0.9, "val_loss": 0.4, "val_acc": 0.92}]
    plots.plot_history(tmp_path / "h.png", history)
    fig = drawn[0]
    fig.canvas.draw()
    for ax in fig.axes:  # the ticks were 0.96 ... 1.04
        lo, hi = ax.get_xlim()
        assert [t for t in ax.get_xticks() if lo <= t <= hi] == [1.0]


def test_a_model_for_other_pictures_or_classes_is_named_up_front(tmp_path, monkeypatch, capsys):
    # predict: "layer 4 Dense(...): expected 800 features per row"; evaluate: "label 7 is outside 0..4".
    from fastcnn import Conv2D, Dense, Flatten, ReLU, Sequential
    monkeypatch.setattr(data, "load_dataset", lambda name, split, data_dir=None: bars(50, 0))
    small = tmp_path / "small.npz"
    fastcnn.save(small, Sequential([Conv2D(2, 3), ReLU(), Flatten(), Dense(10)], input_shape=(20, 20, 1)))
    five = tmp_path / "five.npz"
    fastcnn.save(five, Sequential([Flatten(), Dense(5)], input_shape=(28, 28, 1)))
    picture = digit_picture(tmp_path / "x.png")
    assert main(["predict", str(small), picture, "--dataset", "mnist"]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "small.npz: takes 20x20x1 images; predict reads a picture as a 28x28x1 digit" in err
    assert main(["evaluate", str(five), "--dataset", "mnist"]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "five.npz: the model scores 5 classes, mnist has 10" in err


def test_history_reads_a_file_whose_layers_this_program_cannot_build(tmp_path, monkeypatch, capsys):
    # A layer of the user's own: the CLI can't import its module, and history needs no layer.
    from fastcnn import layers

    class Halve(layers.Layer):
        def forward(self, x, k=None):
            return x * 0.5

        def backward(self, dy):
            return dy * 0.5

    monkeypatch.setitem(layers.LAYERS, "Halve", Halve)
    model = fastcnn.Sequential([Halve(), fastcnn.Flatten(), fastcnn.Dense(10)], input_shape=(28, 28, 1))
    out = tmp_path / "own.npz"
    fastcnn.fit(model, SGD(model, 0.05), bars(64, 0), epochs=1, progress=False, out=out)
    monkeypatch.delitem(layers.LAYERS, "Halve")  # as in a program that never imported it
    assert main(["predict", str(out), digit_picture(tmp_path / "x.png")]) == 2
    assert "unknown layer type 'Halve'" in capsys.readouterr().err
    assert main(["history", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].split()[0] == "1" and "train acc" in lines[-2]


def one_line(err):
    return err.count("\n") == 1


def test_history_of_a_run_stopped_in_its_first_epoch(tmp_path, fake_data, capsys):
    # It said the file "holds no training history (was it written by fastcnn train or fit?)".
    x, y = bars(256, 0)
    model = mnist_network(seed=0)
    sgd = SGD(model, 0.05)
    step = sgd.step

    def crash_after_three():
        step()
        if sgd.steps == 3:
            raise RuntimeError("killed")

    sgd.step = crash_after_three
    out = tmp_path / "early.npz"
    with pytest.raises(RuntimeError):
        fastcnn.fit(model, sgd, (x, y), epochs=2, batch_size=32, progress=False, out=out, checkpoint_every=2)
    capsys.readouterr()
    assert main(["history", str(out)]) == 0
    assert "stopped in epoch 1, after 2 of its batches (to resume)" in capsys.readouterr().out
    assert main(["history", str(out), "--plot", str(tmp_path / "h.png")]) == 2
    assert "no epoch of its run has finished yet: nothing to plot" in capsys.readouterr().err


def test_a_class_with_no_test_images_has_no_accuracy_not_zero():
    # evaluate printed 0.0000 for it, which reads as "always wrong".
    from fastcnn.inference import evaluate
    model = mnist_network(seed=0)
    x, y = bars(40, 0)
    y = np.where(y == 0, 1, y)  # no 0s
    result = evaluate(model, x, y)
    assert np.isnan(result["per_class"][0]) and np.isfinite(result["per_class"][1:]).all()


def test_a_fashion_mnist_model_reads_a_picture_as_a_garment(tmp_path, model_file, capsys):
    # predict and serve put its pictures through the digit clean-up: a shirt came out a smudge.
    shirt = np.zeros((28, 28), np.uint8)
    shirt[:, 6:22] = 200
    shirt[2:10, 2:26] = 160
    Image.fromarray(shirt).save(tmp_path / "shirt.png")
    assert main(["predict", model_file("fashion-mnist"), str(tmp_path / "shirt.png"), "--save-preprocessed"]) == 0
    seen = np.asarray(Image.open(tmp_path / "shirt.png.28x28.png"))
    assert np.abs(seen.astype(int) - np.round(shirt / 200 * 255)).max() <= 1  # as it was, stretched to 0-255
    pytest.importorskip("flask")
    from fastcnn import serve
    model = fastcnn.load(model_file("fashion-mnist"))
    client = serve.create_app(model, data.CLASS_NAMES["fashion-mnist"], dataset="fashion-mnist").test_client()
    assert 'data-input="picture"' in client.get("/").get_data(as_text=True)
    answer = client.post("/predict", data=(tmp_path / "shirt.png").read_bytes()).json
    assert np.abs(np.array(answer["image"]) - seen).max() <= 1 and answer["classes"][0] == "T-shirt/top"
