"""Damaged model files that are still valid zip files: every field of every JSON member (the
architecture, the optimizer, the training state with its history and settings) replaced by a value
of another type, or removed. Each such file is loaded, and given to ``fastcnn history``,
``predict``, ``export`` and ``train --resume``: each either works or says in one line what is
wrong with the file (exit status 2). No traceback, whatever the field.

(tests/test_properties.py mutates the bytes; most such files fail their zip checksums. These
pass them, as a file edited by hand or written by a buggy tool would.)
"""

import json
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

import fastcnn
from fastcnn import SGD, Adam, ModelFileError, checkpoint, data
from fastcnn.cli import main
from fastcnn.architectures import mnist_network
from fakes import fake_mnist

VALUES = [None, "x", "", [], {}, [[]], {"a": 1}, -1, 0, 1.5, 1e308, 2**70, True, float("nan")]
SAMPLE = 150  # of the ~1,300 damaged files there are: about 10 s on a busy 2-core machine


def paths(tree, prefix=()):
    """Every place in a JSON tree: key and index paths."""
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from paths(v, prefix + (i,))


def replaced(tree, path, value, remove=False):
    tree = json.loads(json.dumps(tree))
    if not path:
        return value
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    if remove:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return tree


def good_file(folder, optimizer):
    model = mnist_network(seed=0)
    opt = SGD(model, 0.05) if optimizer == "sgd" else Adam(model, 1e-3)
    record = {"epoch": 1, "loss": 0.5, "train_acc": 0.9, "val_loss": 0.4, "val_acc": 0.95, "seconds": 1.0,
              "samples_per_s": 320.0}
    settings = {"model": "original", "dataset": "mnist", "epochs": 1, "batch_size": 32, "optimizer": optimizer,
                "lr": 0.05 if optimizer == "sgd" else 1e-3, "momentum": 0.9 if optimizer == "sgd" else None,
                "schedule": "inverse-time" if optimizer == "sgd" else "constant", "decay": 1e-3,
                "weight_decay": 0.0, "validation_split": 0.0, "seed": 0, "divergence": 10.0}
    path = folder / f"good-{optimizer}.npz"
    checkpoint.save(path, model, opt, {"epoch": 1, "batch": 0, "totals": [0.0, 0, 0, 0.0], "history": [record],
                                       "settings": settings})
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def damaged_files(folder):
    """``(what was damaged, arrays)`` for every field of every JSON member, each value, and removed."""
    for optimizer in ("sgd", "adam"):
        arrays = good_file(folder, optimizer)
        for member in ("architecture", "optimizer/config", "training"):
            tree = json.loads(str(arrays[member]))
            for path in paths(tree):
                for value in VALUES + ["remove"] * bool(path):
                    damaged = replaced(tree, path, value, remove=value == "remove")
                    yield (f"{optimizer} {member} {'/'.join(map(str, path))} = {value!r}",
                           {**arrays, member: np.array(json.dumps(damaged))})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("damaged")
    sums = fake_mnist(folder)
    im = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(im).line([(60, 15), (60, 105)], fill=0, width=9)
    im.save(folder / "one.png")
    return folder, sums


def one_line(err):
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_every_damaged_field_is_refused_in_one_line_or_works(setup, monkeypatch, capsys, tried):
    folder, sums = setup
    monkeypatch.setitem(data.CHECKSUMS, "mnist", sums)
    cases = list(damaged_files(folder))
    rng = random.Random(21)
    outcomes = {"refused": 0, "loaded": 0}
    for what, arrays in rng.sample(cases, SAMPLE):
        path = folder / "damaged.npz"
        np.savez(path, **arrays)
        try:
            saved = fastcnn.load_checkpoint(path)
            outcomes["loaded"] += 1
        except ModelFileError as e:
            assert "damaged.npz" in str(e), what
            outcomes["refused"] += 1
            saved = None
        commands = [["history", str(path)], ["predict", str(path), str(folder / "one.png")]]
        if saved is not None and saved.training is not None and " training " in what:  # (damage that resume meets)
            commands.append(["train", "--out", str(path), "--resume", "--epochs", "2", "--data-dir", str(folder),
                             "--threads", "1", "--no-progress"])  # (a damaged epoch count could be 2**70)
        for argv in commands:
            status = main(argv)
            out, err = capsys.readouterr()
            assert status in (0, 2), (what, argv, status, err)
            assert status == 0 or one_line(err), (what, argv, err)
            assert "Traceback" not in err and "Warning" not in err, (what, argv, err)
        count = "damaged model files (each JSON field of another type, or gone) through load, history, predict"
        tried[count] = tried.get(count, 0) + 1
    assert outcomes["refused"] > SAMPLE // 3 and outcomes["loaded"] > 10, outcomes  # both kinds were tried


def test_the_issues_damaged_histories_and_settings(setup, monkeypatch, capsys):
    """The cases found by hand: a loss of "x" or null, a list for an entry, a missing key, a
    number instead of an entry; a recorded data set of [] or {}."""
    folder, sums = setup
    arrays = good_file(folder, "sgd")
    training = json.loads(str(arrays["training"]))
    record = training["history"][0]
    cases = {"loss 'x'": {**record, "loss": "x"}, "loss null": {**record, "loss": None}, "a list": [1, 2],
             "no seconds": {k: v for k, v in record.items() if k != "seconds"}, "a number": 3}
    expected = {"loss 'x'": "'loss' is 'x', expected a number", "loss null": "'loss' is None, expected a number",
                "a list": "expected a record of the epoch's loss and accuracy, got list",
                "no seconds": "'seconds' is missing", "a number": "expected a record of the epoch's loss and accuracy, got int 3"}
    path = folder / "hand.npz"
    for case, entry in cases.items():
        np.savez(path, **{**arrays, "training": np.array(json.dumps({**training, "history": [entry]}))})
        assert main(["history", str(path)]) == 2
        err = capsys.readouterr().err
        assert one_line(err) and f"damaged model file: training history entry 1: {expected[case]}" in err, err
    for dataset in ([], {}):
        damaged = {**training, "settings": {**training["settings"], "dataset": dataset}}
        np.savez(path, **{**arrays, "training": np.array(json.dumps(damaged))})
        for argv in (["predict", str(path), str(folder / "one.png")], ["evaluate", str(path)],
                     ["export", str(path), str(folder / "out.onnx")], ["history", str(path)]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert one_line(err) and f"training settings: 'dataset' is {dataset!r}, expected a name" in err, err


def test_a_size_out_of_range_in_the_architecture_is_named(setup):
    # It was refused as "'param/0.weight' is float32(3, 3, 1, 32), the architecture needs float32(-3, -3, 1, 32)".
    folder, _ = setup
    arrays = good_file(folder, "sgd")
    tree = json.loads(str(arrays["architecture"]))
    tree["layers"][0][1]["kernel_size"] = -3
    path = folder / "negative.npz"
    np.savez(path, **{**arrays, "architecture": np.array(json.dumps(tree))})
    with pytest.raises(ModelFileError, match=r"damaged model file: layer 0 Conv2D has the config \{.*'kernel_size': "
                                             r"-3.*\}, which makes 'param/0.weight' of shape \(-3, -3, 1, 32\)"):
        fastcnn.load(path)
