"""Training: resume equals uninterrupted, divergence is caught, and real MNIST is learnt."""

import numpy as np
import pytest

import fastcnn
from fastcnn import SGD, ModelFileError
from fakes import bars, fake_mnist
from fastcnn.architectures import ARCHITECTURES
from fastcnn.training import TrainingDiverged, fit
from fastcnn.fileio import check_writable_output as check_writable
from fastcnn.architectures import mnist_network


def run(epochs, out, training=None, model=None, opt=None):
    model = model or mnist_network(seed=1)
    opt = opt or SGD(model, lr=0.05)
    history = fit(model, opt, bars(300, 0), bars(100, 1), epochs=epochs, batch_size=64, seed=7,
                  out=out, training=training, progress=False)
    return model, history


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight, history = run(3, tmp_path / "straight.npz")
    run(1, tmp_path / "resumed.npz")
    saved = fastcnn.load_checkpoint(tmp_path / "resumed.npz")
    assert saved.training["epoch"] == 1 and saved.optimizer.steps == 5  # 300 images = 5 batches
    resumed, resumed_history = run(3, tmp_path / "resumed.npz", saved.training, saved.model, saved.optimizer)
    assert np.array_equal(resumed.parameters, straight.parameters)
    assert [h["val_acc"] for h in resumed_history] == [h["val_acc"] for h in history]
    assert history[-1]["val_acc"] > 0.9  # the bars are easy: it really learnt
    final = fastcnn.load_checkpoint(tmp_path / "straight.npz")
    assert final.training["epoch"] == 3 and np.array_equal(final.model.parameters, straight.parameters)


def test_a_nan_loss_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "m.npz"
    model, _ = run(1, out)
    before = out.read_bytes()
    x, y = bars(300, 0)
    saved = fastcnn.load_checkpoint(out)
    # NaN data is refused up front (test_reliability.py), so the NaN arrives the way a too-high
    # learning rate brings it: in the weights. Step 6 poisons one, step 7's loss must catch it.
    step = saved.optimizer.step

    def poisoning_step():
        step()
        if saved.optimizer.steps == 6:
            saved.model.parameters[123] = np.nan

    saved.optimizer.step = poisoning_step
    with pytest.raises(TrainingDiverged, match=r"step 7 \(epoch 2, batch 2\).*learning rate"):
        fit(saved.model, saved.optimizer, (x, y), bars(100, 1), epochs=2, batch_size=64, seed=7,
            out=out, training=saved.training, progress=False)
    assert out.read_bytes() == before


def test_an_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelFileError, match="cannot write there"):
        check_writable(blocker / "model.npz")


def test_a_short_run_on_real_mnist_learns(trained_model, mnist):
    """One epoch on 12,000 images (the shared fixture), measured on all 10,000 test images."""
    model, _ = trained_model
    _, (x_test, y_test) = mnist
    accuracy = (model.predict(x_test).argmax(axis=1) == y_test).mean()
    assert accuracy >= 0.96, accuracy


def test_the_training_script_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    from fastcnn.cli.train import train
    from fastcnn import data
    monkeypatch.setitem(data.CHECKSUMS, "mnist", fake_mnist(tmp_path))
    root = tmp_path
    train(tmp_path / "straight.npz", epochs=2, data_dir=root, progress=False)
    train(tmp_path / "resumed.npz", epochs=1, data_dir=root, progress=False)
    train(tmp_path / "resumed.npz", epochs=2, data_dir=root, resume=True, progress=False)
    out = capsys.readouterr().out
    assert "(resumed)" in out and out.count("Epoch 2/2  loss") == 2
    a, b = (fastcnn.load_checkpoint(tmp_path / f"{name}.npz") for name in ("straight", "resumed"))
    assert np.array_equal(a.model.parameters, b.model.parameters)
    assert np.array_equal(a.optimizer.velocity, b.optimizer.velocity)
    assert a.training["history"][-1]["val_acc"] == b.training["history"][-1]["val_acc"]
    original_lr = ARCHITECTURES["original"].recipe["lr"]
    with pytest.raises(fastcnn.ShapeError, match=f"--lr 0.3 differs from the checkpoint's {original_lr}"):
        train(tmp_path / "resumed.npz", epochs=3, lr=0.3, data_dir=root, resume=True, progress=False)
