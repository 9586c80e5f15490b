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
