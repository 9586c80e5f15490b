"""The fastcnn command: predict a user's pictures, evaluate with plots, train, clear errors."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastcnn.cli import main


def as_user_photo(digit, path, canvas=(400, 300), at=(40, 150), scale=6):
    """An MNIST digit as a user would draw it: dark ink on white, large canvas, off-centre."""
    ink = Image.fromarray((255 - digit[:, :, 0] * 255).astype(np.uint8)).resize((28 * scale, 28 * scale))
    page = Image.new("L", canvas, 255)
    page.paste(ink, at)
    page.save(path)
    return path


def test_predict_reads_pictures_like_mnist(trained_model, mnist, tmp_path, capsys):
    model, model_path = trained_model
    _, (x_test, y_test) = mnist
    # Test digits the model gets right as MNIST images; it must get them right as photos too.
    right = np.flatnonzero(model.predict(x_test[:200]).argmax(axis=1) == y_test[:200])[:8]
    paths = [str(as_user_photo(x_test[i], tmp_path / f"digit{k}.png", at=(20 + 20 * k, 10 + 10 * k)))
             for k, i in enumerate(right)]
    assert main(["predict", str(model_path), *paths, "--save-preprocessed"]) == 0
    out = capsys.readouterr().out
    for path, i in zip(paths, right):
        assert f"{path}: digit {y_test[i]} (" in out
        seen = np.asarray(Image.open(path + ".28x28.png"))
        assert seen.shape == (28, 28) and seen.max() > 200 and seen[0].max() < 30  # white on black
    assert out.count("%") >= 11 * len(paths)  # every class's probability, and the winner's


def test_evaluate_prints_the_confusion_matrix_and_draws_plots(trained_model, data_dir, tmp_path, capsys):
    _, model_path = trained_model
    errors, confusion = tmp_path / "errors.png", tmp_path / "confusion.png"
    assert main(["evaluate", str(model_path), "--data-dir", str(data_dir),
                 "--plot", str(errors), "--confusion", str(confusion)]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert 0.96 <= accuracy < 1
    rows = [line.split() for line in out.splitlines() if line.startswith("  ") and len(line.split()) == 10]
    counts = np.array(rows[-10:], dtype=int)
    assert counts.sum() == 10000 and np.trace(counts) / 10000 == pytest.approx(accuracy, abs=1e-4)
    for png in (errors, confusion):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def test_errors_are_one_line_not_a_traceback(tmp_path):
    missing = tmp_path / "nope.npz"
    result = subprocess.run([sys.executable, "-m", "fastcnn.cli", "predict", str(missing), "x.png"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "no such model file" in result.stderr and "Traceback" not in result.stderr


def test_plots_never_replace_an_existing_file_unasked(tmp_path, monkeypatch, capsys):
    # evaluate --plot/--confusion and history --plot refuse a file that exists (before any work),
    # and replace it with --overwrite.
    from fakes import fake_mnist
    from fastcnn import data
    monkeypatch.setitem(data.CHECKSUMS, "mnist", fake_mnist(tmp_path / "data"))
    model = tmp_path / "m.npz"
    assert main(["train", "--epochs", "1", "--data-dir", str(tmp_path / "data"), "--out", str(model),
                 "--no-progress"]) == 0
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my own picture")
    for command in (["evaluate", str(model), "--data-dir", str(tmp_path / "data"), "--plot", str(mine)],
                    ["evaluate", str(model), "--data-dir", str(tmp_path / "data"), "--confusion", str(mine)],
                    ["history", str(model), "--plot", str(mine)]):
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
        assert mine.read_bytes() == b"my own picture"
        assert main(command + ["--overwrite"]) == 0
        with Image.open(mine) as im:
            assert im.format == "PNG"
        mine.write_bytes(b"my own picture")
    both = ["evaluate", str(model), "--data-dir", str(tmp_path / "data"), "--plot", str(tmp_path / "a.png"),
            "--confusion", str(tmp_path / "a.png")]
    assert main(both) == 2 and "both --plot and --confusion" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()
