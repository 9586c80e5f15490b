"""Model files: save -> load gives the same model; a bad file gives a clear ModelFileError."""

import copy
import pickle
import zipfile

import numpy as np
import pytest

import fastcnn
from fakes import Scale
from fastcnn import SGD, ModelFileError, UsageError
from fastcnn.architectures import mnist_network


def stepped_model():
    model = mnist_network(seed=4)
    opt = SGD(model, lr=0.05, momentum=0.9, decay=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x, y = rng.random((8, 28, 28, 1), np.float32), rng.integers(0, 10, 8)
        _, d = fastcnn.SoftmaxCrossEntropy()(model.forward(x), y)
        model.backward(d)
        opt.step()
    return model, opt


def test_save_load_gives_identical_predictions_and_optimizer(tmp_path):
    model, opt = stepped_model()
    path = tmp_path / "m.npz"
    model.save(path, opt)
    saved = fastcnn.load_checkpoint(path)
    assert [type(a) for a in saved.model.layers] == [type(b) for b in model.layers]
    assert repr(saved.model) == repr(model)
    assert np.array_equal(saved.model.parameters, model.parameters)
    x = np.random.default_rng(1).random((20, 28, 28, 1), np.float32)
    assert np.array_equal(saved.model.predict(x), model.predict(x))
    assert saved.optimizer.steps == 3 and np.array_equal(saved.optimizer.velocity, opt.velocity)
    assert (saved.optimizer.lr, saved.optimizer.momentum, saved.optimizer.schedule.decay) == (0.05, 0.9, 1e-3)
    assert np.array_equal(fastcnn.load(path).parameters, model.parameters)
    assert fastcnn.load(path, backend="numpy").backend == "numpy"
    with zipfile.ZipFile(path) as z:  # nothing pickled: every member is a plain .npy array
        assert all(name.endswith(".npy") for name in z.namelist())
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_a_model_pickles_and_deep_copies_as_its_file_would_hold_it():
    """pickle (how multiprocessing's "spawn" hands a model to its workers) and copy.deepcopy (a best
    model kept while training goes on) rebuild a model as its file would: the same layers, weights,
    BatchNorm statistics, predictions bit for bit, mode, backend and dropout's count; and a copy
    trains on its own. A layer of one's own travels by its class (no need to register it); one that
    its config() can't rebuild is refused up front, as by save."""
    rng = np.random.default_rng(2)
    images, labels = rng.random((8, 6, 6, 2), np.float32), rng.integers(0, 10, 8)
    for backend in ("numba", "numpy"):
        x = fastcnn.Input((6, 6, 2))
        h = fastcnn.BatchNorm2D()(fastcnn.Conv2D(4, 3, padding=1)(x))
        y = fastcnn.Add()([fastcnn.ReLU()(h), fastcnn.Conv2D(4, 1)(x)])
        z = Scale(10)(fastcnn.Dense(10)(fastcnn.Dropout(0.3)(fastcnn.Flatten()(y))))
        model = fastcnn.Model(x, z, seed=3, backend=backend)
        opt = SGD(model, lr=0.1)
        for _ in range(2):
            model.train_step(images, labels)
            opt.step()
        for again in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            assert type(again) is fastcnn.Model and repr(again) == repr(model)
            assert again.training and again.backend == backend and again._forwards == model._forwards
            assert np.array_equal(again.parameters, model.parameters)
            assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(again.named_buffers(), model.named_buffers()))
            assert np.array_equal(again.predict(images), model.predict(images))
        before = model.parameters.copy()
        SGD(again, lr=0.1)
        again.train_step(images, labels)
        assert np.array_equal(model.parameters, before) and not np.shares_memory(again.parameters, model.parameters)
    chain = fastcnn.Sequential([fastcnn.Dense(3)], input_shape=(4,)).eval()
    assert type(copy.deepcopy(chain)) is fastcnn.Sequential and not copy.deepcopy(chain).training

    class Unbuildable(Scale):
        def config(self):
            return {}

    with pytest.raises(UsageError, match=r"layer 1 Unbuildable.*could not rebuild it from config\(\) = \{\}"):
        pickle.dumps(fastcnn.Sequential([fastcnn.Dense(3), Unbuildable(3)], input_shape=(4,)))


def test_bad_files_give_clear_errors(tmp_path):
    model, opt = stepped_model()
    good = tmp_path / "good.npz"
    model.save(good, opt)
    raw = good.read_bytes()

    cases = {
        "missing.npz": None,
        "truncated.npz": raw[: len(raw) // 2],
        "random.npz": np.random.default_rng(0).bytes(5000),
        "empty.npz": b"",
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=name):
            fastcnn.load(tmp_path / name)

    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    with pytest.raises(ModelFileError, match="not a fastcnn model file"):
        fastcnn.load(tmp_path / "foreign.npz")

    np.savez(tmp_path / "pickled.npz", format=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ModelFileError, match="pickled.npz"):
        fastcnn.load(tmp_path / "pickled.npz")

    with np.load(good) as npz:
        arrays = dict(npz)
    arrays["param/4.weight"] = arrays["param/4.weight"][:10]
    np.savez(tmp_path / "wrong_shape.npz", **arrays)
    with pytest.raises(ModelFileError, match=r"param/4.weight.*needs float32\(6272, 128\)"):
        fastcnn.load(tmp_path / "wrong_shape.npz")

    del arrays["param/4.weight"]
    np.savez(tmp_path / "missing_key.npz", **arrays)
    with pytest.raises(ModelFileError, match="'param/4.weight' is missing"):
        fastcnn.load(tmp_path / "missing_key.npz")


def test_a_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    model, opt = stepped_model()
    path = tmp_path / "m.npz"
    model.save(path, opt)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(ModelFileError, match="No space left"):
        model.save(path, opt, overwrite=True)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_save_replaces_a_file_only_when_asked(tmp_path):
    # It replaced a checkpoint with the bare model: the run could no longer be resumed.
    model, opt = stepped_model()
    path = tmp_path / "m.npz"
    fastcnn.save(path, model, opt, {"epoch": 1, "batch": 0, "totals": [0.0, 0, 0, 0.0], "history": []})
    before = path.read_bytes()
    with pytest.raises(ModelFileError, match=r"m.npz: already exists; save to another file, or replace it "
                                             r"\(overwrite=True\)"):
        model.save(path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    model.save(path, overwrite=True)
    assert fastcnn.load_checkpoint(path).training is None
