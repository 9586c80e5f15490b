"""ONNX export: ONNX Runtime runs the exported graph and agrees with ``model.predict``.

Tolerances (float32 rounding; the two engines sum in different orders): probabilities within
1e-5, logits within 1e-5 of max(1, max |logit|). The largest differences seen are printed
(``pytest -s``). Runs where the onnx extra is installed (``pip install -e ".[onnx]"``).
"""

import json
import os
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import fastcnn  # noqa: E402
from fastcnn import (SGD, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, ExportError,  # noqa: E402
                     FastCNNError, Flatten, Layer, LeakyReLU, MaxPool2D, ReLU, Sequential, ShapeError, Sigmoid, Tanh,
                     export_onnx)
from fastcnn.architectures import ARCHITECTURES  # noqa: E402
from fastcnn.cli import main  # noqa: E402
from fastcnn.architectures import mnist_network  # noqa: E402

PROB_TOL, LOGIT_TOL = 1e-5, 1e-5


def images(shape, n=200, seed=0):
    """Real MNIST test images for 28x28x1 models where FASTCNN_DATA is set, else random ones in [0, 1]."""
    if tuple(shape) == (28, 28, 1) and os.environ.get("FASTCNN_DATA"):
        from fastcnn.data import load_dataset
        return np.array(load_dataset("mnist", "test", download=False)[0][:n])
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def trained(model, steps=3, seed=1):
    """A few SGD steps on random data, so weights and BatchNorm's running statistics are not the
    initial ones (running_mean 0 and running_var 1 would hide a wrong fold)."""
    rng = np.random.default_rng(seed)
    optimizer = SGD(model, lr=0.05)
    classes = model.layers[-1].out_features
    for _ in range(steps):
        model.train_step(rng.random((16, *model.input_shape), dtype=np.float32), rng.integers(0, classes, 16))
        optimizer.step()
    return model


def run(path, x):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})


def largest_differences(model, path, x):
    """(probabilities, logits) largest differences between ONNX Runtime and fastcnn on ``x``."""
    probs, logits = run(path, x)
    want_logits = model.eval().forward(x)
    scale = max(1.0, float(np.abs(want_logits).max()))
    return float(np.abs(probs - model.predict(x)).max()), float(np.abs(logits - want_logits).max()) / scale


def check_agrees(name, model, path, x):
    prob_err, logit_err = largest_differences(model, path, x)
    print(f"\nONNX Runtime vs fastcnn, {name}: probabilities {prob_err:.2e}, logits {logit_err:.2e} (relative)")
    assert prob_err <= PROB_TOL and logit_err <= LOGIT_TOL, (name, prob_err, logit_err)


NETWORKS = {
    "mnist_network": lambda: mnist_network(),
    **{name: (lambda a=a, s=s: a.build(s, 10)) for name, a in ARCHITECTURES.items()
       for s in [(32, 32, 3) if a.recipe["dataset"] == "cifar10" else (28, 28, 1)]},
    # Not square, several channels: a wrong row permutation of the Dense after Flatten cannot pass.
    "original 20x14x3": lambda: ARCHITECTURES["original"].build((20, 14, 3), 10),
}


@pytest.mark.parametrize("name", NETWORKS)
def test_onnx_runtime_agrees_with_predict(name, tmp_path):
    model = trained(NETWORKS[name]())
    path = tmp_path / "model.onnx"
    dataset = {(28, 28, 1): "mnist", (32, 32, 3): "cifar10"}.get(tuple(model.input_shape))  # (else none: 20x14x3)
    proto = export_onnx(model, path, logits=True, dataset=dataset)
    onnx.checker.check_model(str(path), full_check=True)
    assert [o.name for o in proto.graph.output] == ["probabilities", "logits"]
    x = images(model.input_shape)
    check_agrees(name, model, path, x)
    export_onnx(model, tmp_path / "probs.onnx")  # the default: probabilities only
    (probs,) = run(tmp_path / "probs.onnx", x[:1])  # the batch axis is dynamic
    np.testing.assert_allclose(probs, model.predict(x[:1]), atol=PROB_TOL)


def test_every_layer_type_exports(tmp_path):
    """Strided conv, 'same' padding, both pools (one overlapping), Tanh, Sigmoid and LeakyReLU, Dropout, and
    BatchNorms folded and standalone, one of them per feature after a Flatten of a non-square
    multi-channel image (its values permuted with the features)."""
    model = trained(Sequential([
        Conv2D(6, 3, padding="same"), BatchNorm2D(), Tanh(), AvgPool2D(2),
        Conv2D(5, 3, stride=2, padding=1), ReLU(), BatchNorm2D(), MaxPool2D(2, stride=1),
        Flatten(), BatchNorm1D(), Sigmoid(), Dropout(0.3), Dense(7), BatchNorm1D(), ReLU(), Dense(6),
        LeakyReLU(0.2), Dense(4)],
        seed=2, input_shape=(17, 11, 3)), steps=5)
    ops = [n.op_type for n in export_onnx(model, tmp_path / "zoo.onnx", logits=True).graph.node]
    assert ops.count("BatchNormalization") == 2 and "Dropout" not in ops  # two folded, two standalone
    check_agrees("every layer type", model, tmp_path / "zoo.onnx", images((17, 11, 3), 64))


def test_models_ending_on_features_and_on_feature_rows(tmp_path):
    ends_flat = Sequential([Conv2D(3, 3), ReLU(), Flatten()], input_shape=(6, 5, 2))  # outputs NHWC features
    features = Sequential([Dense(9), Tanh(), BatchNorm1D(), Dense(3)], input_shape=(12,))
    for name, model in (("ends on a Flatten", ends_flat), ("feature rows", features)):
        path = tmp_path / f"{len(model.layers)}.onnx"
        export_onnx(model, path, logits=True)
        x = images(model.input_shape, 32)
        _, logits = run(path, x)
        np.testing.assert_allclose(logits, model.eval().forward(x), atol=LOGIT_TOL)


def test_metadata_names_classes_preprocessing_and_layout(tmp_path):
    model = mnist_network()
    proto = export_onnx(model, tmp_path / "fashion.onnx", dataset="fashion-mnist", network="original")
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["class_names"].startswith('["T-shirt/top", "Trouser"') and meta["dataset"] == "fashion-mnist"
    assert "28x28 greyscale" in meta["preprocessing"] and meta["input_layout"] == "NHWC"
    assert meta["fastcnn_version"] == fastcnn.__version__ and meta["network"] == "original"
    assert meta["architecture"].startswith('[["Conv2D", {"in_channels": 1, "out_channels": 32')
    assert "NHWC" in proto.graph.doc_string and proto.opset_import[0].version >= 21
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 28, 28, 1]
    unknown = {p.key: p.value for p in export_onnx(model, tmp_path / "plain.onnx").metadata_props}
    assert unknown["class_names"] == str([str(k) for k in range(10)]).replace("'", '"')
    assert "not recorded" in unknown["preprocessing"]
    with pytest.raises(ExportError, match="expected one of mnist, fashion-mnist, cifar10"):
        export_onnx(model, tmp_path / "bad.onnx", dataset="imagenet")
    four = Sequential([Flatten(), Dense(4)], input_shape=(28, 28, 1))
    with pytest.raises(ExportError, match="scores 4 classes, mnist has 10"):
        export_onnx(four, tmp_path / "four.onnx", dataset="mnist")
    with pytest.raises(ExportError, match=r"cifar10's images are 32x32x3, the model takes 28x28x1: it was not trained "
                                          r"on cifar10"):  # the metadata would describe other pictures
        export_onnx(model, tmp_path / "cifar.onnx", dataset="cifar10")
    assert not (tmp_path / "cifar.onnx").exists()


@fastcnn.register_layer
class ExportTestSquare(Layer):
    def forward(self, x, k=None):
        return x * x

    def backward(self, dy):
        raise NotImplementedError


def test_bad_inputs_get_clear_errors(tmp_path, monkeypatch):
    custom = Sequential([Conv2D(4, 3), ReLU(), ExportTestSquare(), Flatten(), Dense(10)], input_shape=(8, 8, 1))
    with pytest.raises(ExportError, match=r"layer 2 ExportTestSquare\(\): a ExportTestSquare cannot be exported "
                                          r"to ONNX; the exporter knows Conv2D, MaxPool2D"):
        export_onnx(custom, tmp_path / "custom.onnx")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file

    old = Sequential([Conv2D(1, 4, 3), ReLU(), Flatten(), Dense(144, 10)])  # sizes given, no input_shape
    with pytest.raises(ShapeError, match=r"does not record its input shape.*input_shape=\(H, W, C\).*--input-shape"):
        export_onnx(old, tmp_path / "old.onnx")
    with pytest.raises(ShapeError, match=r"layer 3 Dense.*expected 144 features per row"):
        export_onnx(old, tmp_path / "old.onnx", input_shape=(10, 10, 1))
    export_onnx(old, tmp_path / "old.onnx", input_shape=(8, 8, 1))
    (probs,) = run(tmp_path / "old.onnx", images((8, 8, 1), 8))
    np.testing.assert_allclose(probs, old.predict(images((8, 8, 1), 8)), atol=PROB_TOL)
    with pytest.raises(ShapeError, match=r"built for \(8, 8, 1\), got \(9, 9, 1\)"):
        export_onnx(custom, tmp_path / "x.onnx", input_shape=(9, 9, 1))

    with pytest.raises(ShapeError, match=r"expected a fastcnn model, a Sequential or a Model \(fastcnn.load reads a "
                                         r"model file\), "
                                         r"got str"):
        export_onnx("model.npz", tmp_path / "str.onnx")
    model = mnist_network()
    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"keep me")
    with pytest.raises(ExportError, match=r"existing.onnx: already exists.*overwrite=True, --overwrite"):
        export_onnx(model, existing)
    assert existing.read_bytes() == b"keep me"
    export_onnx(model, existing, overwrite=True)
    assert onnx.load(str(existing)).graph.output[0].name == "probabilities"

    for overwrite in (False, True):  # a folder is not "already there" to replace
        with pytest.raises(ExportError, match=r"cannot write the ONNX file there \(a folder of that name is in the way"):
            export_onnx(model, tmp_path, overwrite=overwrite)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ExportError, match=r"a_file/m.onnx: cannot write the ONNX file there"):
        export_onnx(model, blocker / "m.onnx")

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were not installed
    with pytest.raises(FastCNNError, match=r"needs the onnx extra \(onnx is missing\): pip install 'fastcnn\[onnx\]'"):
        export_onnx(model, tmp_path / "none.onnx")


def test_cli_export_round_trip(tmp_path, capsys):
    model = trained(ARCHITECTURES["deep"].build((28, 28, 1), 10))
    saved = tmp_path / "deep.npz"
    fastcnn.save(saved, model, training={"epoch": 1, "batch": 0, "totals": [0, 0, 0, 0], "history": [],
                                         "settings": {"dataset": "fashion-mnist", "model": "deep"}})
    out = tmp_path / "deep.onnx"
    assert main(["export", str(saved), str(out), "--logits"]) == 0
    assert f"{out}: ONNX opset 21, input image (batch, 28, 28, 1) float32 NHWC; outputs probabilities " \
           f"(batch, 10), logits (batch, 10)" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["dataset"] == "fashion-mnist" and meta["network"] == "deep" and "Ankle boot" in meta["class_names"]
    check_agrees("deep through the CLI", model, out, images((28, 28, 1), 100))

    assert main(["export", str(saved), str(out)]) == 2  # exists
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastcnn export: error: ") and "--overwrite" in err
    assert main(["export", str(saved), str(out), "--overwrite"]) == 0
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["probabilities"]
    kept = saved.read_bytes()  # the model file as the output, replaced by the ONNX file with --overwrite
    assert main(["export", str(saved), str(saved), "--overwrite"]) == 2
    assert f"{saved}: is the model file being exported; write the ONNX file to another (e.g. {tmp_path / 'deep'}" \
        f".onnx)" in capsys.readouterr().err and saved.read_bytes() == kept

    old = tmp_path / "old.npz"
    fastcnn.save(old, Sequential([Conv2D(1, 4, 3), ReLU(), Flatten(), Dense(144, 10)]))
    capsys.readouterr()
    assert main(["export", str(old), str(tmp_path / "old.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--input-shape H W C" in err
    assert main(["export", str(old), str(tmp_path / "old.onnx"), "--input-shape", "8", "8", "1"]) == 0
    assert main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "m.onnx")]) == 2
    assert "no such model file" in capsys.readouterr().err


def graph_networks():
    """Graph models: a residual network (a projection shortcut, a strided block, BatchNorm folded
    in each branch), and two branches concatenated then flattened (NCHW order in the graph)."""
    from fastcnn import Add, Concatenate, GlobalAvgPool2D, Input, Model, ReLU
    x = Input((12, 10, 3))
    h = ReLU()(BatchNorm2D()(Conv2D(8, 3, padding="same")(x)))
    y = ReLU()(Add()([BatchNorm2D()(Conv2D(8, 3, padding="same")(h)), Conv2D(8, 1)(x)]))
    h = ReLU()(BatchNorm2D()(Conv2D(16, 3, stride=2, padding=1)(y)))
    y = ReLU()(Add()([BatchNorm2D()(Conv2D(16, 3, padding="same")(h)), Conv2D(16, 1, stride=2)(y)]))
    residual = Model(x, Dense(10)(GlobalAvgPool2D()(y)), seed=4)
    x = Input((9, 7, 2))
    c = Concatenate()([Conv2D(4, 3, padding="same")(x), BatchNorm2D()(Conv2D(3, 5, padding="same")(x))])
    branches = Model(x, Dense(10)(Flatten()(MaxPool2D(2)(ReLU()(c)))), seed=5)
    return {"residual": residual, "two branches": branches}


@pytest.mark.parametrize("name", ["residual", "two branches"])
def test_a_graph_model_exports_and_onnx_runtime_agrees(tmp_path, name):
    model = trained(graph_networks()[name])
    export_onnx(model, tmp_path / "g.onnx", logits=True)
    check_agrees(name, model, tmp_path / "g.onnx", images(model.input_shape, 64))
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "g.onnx")).metadata_props}
    assert json.loads(meta["architecture"])["sources"] == [list(s) for s in model.sources]
