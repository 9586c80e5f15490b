"""General CNNs through the engine: shape inference, summary, modes, BatchNorm folding, dropout
masks, optimizers and schedules, layers of your own, and model files that keep all of it."""

import numpy as np
import pytest

import fastcnn
from fastcnn import (SGD, Adam, ConfigError, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Cosine, Dense, Dropout, Flatten,
                     GlobalAvgPool2D, InverseTime, Layer, MaxPool2D, ReLU, Sequential, ShapeError, Sigmoid, Tanh,
                     fit)
from fakes import Scale, bars


def deep(seed=0, backend="numba", p=0.3):
    """Every new layer type in one small network for 28x28x1 images."""
    return Sequential([Conv2D(8, 3, padding="same"), BatchNorm2D(), ReLU(), MaxPool2D(2),
                       Conv2D(12, 3, padding="same"), BatchNorm2D(), Tanh(), AvgPool2D(2),
                       Conv2D(16, 3, padding="same"), BatchNorm2D(), ReLU(), GlobalAvgPool2D(),
                       Dense(32), BatchNorm1D(), Sigmoid(), Dropout(p), Dense(10)],
                      seed=seed, backend=backend, input_shape=(28, 28, 1))


def test_shape_inference_gives_the_explicit_network():
    inferred = Sequential([Conv2D(32, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(128), ReLU(), Dense(10)],
                          seed=3, input_shape=(28, 28, 1))
    explicit = Sequential([Conv2D(1, 32, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(6272, 128), ReLU(),
                           Dense(128, 10)], seed=3)
    assert np.array_equal(inferred.parameters, explicit.parameters)
    assert inferred.layers[4].in_features == 6272 and inferred.input_shape == (28, 28, 1)


def test_sizes_left_to_inference_need_the_input_shape():
    with pytest.raises(ShapeError, match=r"layer 0 Conv2D\(out_channels=8.*in_channels is left to inference.*"
                                         r"input_shape=\(H, W, C\)"):
        Sequential([Conv2D(8, 3), ReLU()])
    with pytest.raises(ShapeError, match=r"layer 1 Dense.*put a Flatten before it"):
        Sequential([Conv2D(8, 3), Dense(10)], input_shape=(28, 28, 1))
    with pytest.raises(ShapeError, match=r"layer 1 BatchNorm1D.*feature rows"):
        Sequential([Conv2D(8, 3), BatchNorm1D()], input_shape=(28, 28, 1))
    with pytest.raises(ShapeError, match="input_shape: expected"):
        Sequential([Flatten(), Dense(2)], input_shape=(0, 3))


@pytest.mark.parametrize("size,stride,kernel", [(28, 1, 3), (28, 2, 3), (9, 2, 5), (7, 3, 1)])
def test_same_padding_keeps_the_size_divided_by_the_stride(size, stride, kernel):
    conv = Conv2D(2, 4, kernel, stride=stride, padding="same")
    assert conv.output_shape((size, size + 1, 2)) == (-(-size // stride), -(-(size + 1) // stride), 4)
    with pytest.raises(ShapeError, match="'same' needs an odd kernel_size"):
        Conv2D(2, 4, 2, padding="same")
    with pytest.raises(ShapeError, match="padding: expected a number of pixels or 'same'"):
        Conv2D(2, 4, 3, padding="valid")


def test_summary_lists_layers_shapes_and_parameter_counts():
    model = fastcnn.architectures.mnist_network()
    text = model.summary(file=open("/dev/null", "w"))
    assert "(None, 14, 14, 32)" in text and "(None, 6272)" in text and "802,944" in text
    assert "Total params: 804,554" in text and model.parameters.size == 804_554 and "0 Conv2D " in text
    bn = deep().summary(file=open("/dev/null", "w"))
    assert "Non-trainable params: 136 (BatchNorm's running statistics)" in bn  # 2 * (8 + 12 + 16 + 32)
    with pytest.raises(ShapeError, match="no input_shape"):
        Sequential([Dense(3, 2)]).summary()


def test_eval_uses_running_statistics_and_no_dropout():
    model = deep()
    x, _ = bars(16, 0)
    train_a = model.forward(x)
    train_b = model.forward(x)
    assert not np.array_equal(train_a, train_b)  # dropout draws new masks for each pass
    model.eval()
    eval_a, eval_b = model.forward(x), model.forward(x)
    assert np.array_equal(eval_a, eval_b)
    np.testing.assert_allclose(fastcnn.softmax(eval_a), model.predict(x), rtol=1e-5, atol=1e-7)
    with pytest.raises(RuntimeError, match="training mode"):
        model.backward(np.zeros_like(eval_a))
    assert model.train() is model and model.training


def test_running_statistics_follow_pytorch_semantics():
    model = Sequential([BatchNorm1D(momentum=0.25), Dense(2)], input_shape=(3,))
    x = np.random.default_rng(0).normal(2.0, 3.0, (50, 3)).astype(np.float32)
    model.forward(x)
    bn = model.layers[0]
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.25 * x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.buffers["running_var"], 0.75 + 0.25 * x.var(axis=0, ddof=1), rtol=1e-5)


def _layer_by_layer(model, x):
    """The model's evaluation output with the reference kernels, one layer at a time, unfused."""
    for layer in model.layers:
        layer.training = False
        x = layer.forward(x, backend="numpy")
        del layer.training  # back to the class's default
    return x


def test_evaluation_folds_batchnorm_and_agrees_with_the_layers_one_by_one():
    model = deep()
    x, y = bars(64, 0)
    fit(model, SGD(model, 0.05), (x, y), epochs=1, batch_size=16, progress=False)  # moves the statistics
    names = [type(step).__name__ for step in model.plan((28, 28, 1)).inference_steps]
    assert names[:2] == ["FoldedConvReluPool", "FoldedConv"] and "DropoutStep" in names and "FoldedDense" in names
    model.eval()
    np.testing.assert_allclose(model.forward(x), _layer_by_layer(model, x), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_dense_batchnorm_relu_in_evaluation_agrees_with_the_layers_one_by_one(backend):
    """Dense -> BatchNorm1D -> ReLU in evaluation: the BatchNorm as a scale and shift of the product."""
    model = Sequential([Flatten(), Dense(40), BatchNorm1D(), ReLU(), Dense(10)], input_shape=(28, 28, 1),
                       backend=backend)
    x, y = bars(64, 0)
    fit(model, SGD(model, 0.05), (x, y), epochs=1, batch_size=16, progress=False)
    model.layers[2].params["weight"][::2] *= -1  # scales of both signs
    assert "FoldedDenseRelu" in [type(step).__name__ for step in model.plan((28, 28, 1)).inference_steps]
    model.eval()
    for rows in (x, x[:1]):  # the GEMMs; the few-rows loop (784 x 40) and the small weight's (40 x 10)
        np.testing.assert_allclose(model.forward(rows), _layer_by_layer(model, rows), rtol=2e-4, atol=2e-5)
    if backend == "numba":  # the plain layer's scale of ones is typed as the BatchNorm's: one compile each
        from fastcnn.kernels import dense
        for kernel, scale in ((dense._dense_forward, 5), (dense._dense_forward_few, 5), (dense._dense_forward_small, 4)):
            assert {str(signature[scale]) for signature in kernel.signatures} == {"array(float32, 1d, C)"}


def test_both_backends_train_the_deep_network_alike():
    fast, ref = deep(backend="numba"), deep(backend="numpy")
    for model in (fast, ref):
        # SGD, not Adam: a conv bias before a BatchNorm gets a gradient of 0 up to rounding, which
        # Adam's normalised step would turn into +-lr either way (torch's tests avoid it too).
        opt = SGD(model, lr=0.05, weight_decay=1e-4)
        for step in range(5):
            x, y = bars(32, step)
            model.train_step(x, y)
            opt.step()
    np.testing.assert_allclose(fast.parameters, ref.parameters, rtol=1e-3, atol=1e-4)
    for (_, a), (_, b) in zip(fast.named_buffers(), ref.named_buffers()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_dropout_masks_depend_on_seed_and_step_only():
    model = Sequential([Flatten(), Dropout(0.5)], input_shape=(4, 4, 1), seed=5)
    plan = model.plan((4, 4, 1))
    x = np.ones((3, 4, 4, 1), np.float32)

    def out(step, seed=5):
        from fastcnn.plan import Run
        return plan.forward(x, plan.workspace(3, train=True), Run(True, seed, step)).copy()

    assert np.array_equal(out(7), out(7)) and not np.array_equal(out(7), out(8))
    assert not np.array_equal(out(7), out(7, seed=6))
    assert set(np.unique(out(7))) <= {0.0, 2.0}


def test_schedules():
    assert InverseTime(0.5)(2) == pytest.approx(0.5)
    cosine = Cosine(100, final=0.1)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.55) and cosine(100) == cosine(500) == pytest.approx(0.1)
    model = Sequential([Dense(3, 2)])
    opt = SGD(model, 0.2, schedule=Cosine(4))
    for _ in range(2):
        opt.step()
    assert opt.current_lr == pytest.approx(0.1)
    with pytest.raises(ShapeError, match="steps: expected"):
        Cosine(0)


def test_weight_decay_pulls_weights_towards_zero():
    model = Sequential([Dense(3, 2)])
    w0 = model.parameters.copy()
    SGD(model, 0.1, momentum=0.0, weight_decay=0.5).step()  # zero gradients: p -= lr * wd * p
    np.testing.assert_allclose(model.parameters, w0 * (1 - 0.05), rtol=1e-6)
    with pytest.raises(ShapeError, match="weight_decay: expected a value >= 0"):
        Adam(model, weight_decay=-1)
    with pytest.raises(ShapeError, match="betas"):
        Adam(model, betas=(0.9,))


def test_a_model_file_keeps_batchnorm_statistics_and_adam_state(tmp_path):
    model = deep()
    opt = Adam(model, lr=1e-3, weight_decay=1e-4, schedule=Cosine(50))
    for step in range(3):
        x, y = bars(16, step)
        model.train_step(x, y)
        opt.step()
    model.save(tmp_path / "m.npz", opt)
    saved = fastcnn.load_checkpoint(tmp_path / "m.npz")
    assert np.array_equal(saved.model.parameters, model.parameters)
    for (name, a), (_, b) in zip(saved.model.named_buffers(), model.named_buffers()):
        assert np.array_equal(a, b), name
    assert isinstance(saved.optimizer, Adam) and saved.optimizer.config() == opt.config()
    assert all(np.array_equal(saved.optimizer.state[k], opt.state[k]) for k in ("m", "v"))
    assert saved.model.input_shape == (28, 28, 1)
    x, _ = bars(20, 9)
    assert np.array_equal(saved.model.predict(x), model.predict(x))


class DeclaredScale(Scale):
    """Scale as a layer may also be written: its parameters declared by shape (``param_shapes``,
    so model files are checked without building it), made by ``_allocate`` and set by ``initialize``."""

    def __init__(self, features):
        Layer.__init__(self)
        self.features = features
        self._allocate()

    @staticmethod
    def param_shapes(config):
        return {"a": (config["features"],)}

    def initialize(self, rng, feeds_relu):
        self.params["a"][...] = 1.5


def test_a_layer_of_your_own_trains_saves_and_loads(tmp_path):
    def build():
        return Sequential([Flatten(), Dense(16), DeclaredScale(16), ReLU(), Dense(10)], input_shape=(28, 28, 1), seed=2)
    model = build()
    x, y = bars(32, 0)
    model.train_step(x, y)
    a_grad = model.layers[2].grads["a"].copy()
    # the gradient of the scale against a central difference of the loss
    eps, i = 1e-2, 3
    losses = []
    for sign in (1, -1):
        probe = build()
        probe.layers[2].params["a"][i] += sign * eps
        losses.append(probe.train_step(x, y)[0])
    assert a_grad[i] == pytest.approx((losses[0] - losses[1]) / (2 * eps), rel=2e-2, abs=1e-4)
    model.save(tmp_path / "own.npz")
    with pytest.raises(fastcnn.ModelFileError, match="unknown layer type 'DeclaredScale'.*register_layer"):
        fastcnn.load(tmp_path / "own.npz")
    fastcnn.register_layer(DeclaredScale)
    try:
        loaded = fastcnn.load(tmp_path / "own.npz")
        assert np.array_equal(loaded.predict(x), model.predict(x))
    finally:
        del fastcnn.layers.LAYERS["DeclaredScale"]
    with pytest.raises(ConfigError, match="built-in layer's name"):
        fastcnn.register_layer(type("Dense", (Layer,), {}))
    # another class of the same name replaced the first silently: its files then loaded as the second
    first = fastcnn.register_layer(type("Twice", (Layer,), {"__module__": "one"}))
    try:
        again = fastcnn.register_layer(type("Twice", (Layer,), {"__module__": "one"}))  # a notebook's cell rerun
        assert fastcnn.layers.LAYERS["Twice"] is again is not first
        with pytest.raises(ConfigError, match=r"a layer named Twice is registered already, from one.Twice; .* rename "
                                              r"one of them"):
            fastcnn.register_layer(type("Twice", (Layer,), {"__module__": "two"}))
        assert fastcnn.layers.LAYERS["Twice"] is again
    finally:
        del fastcnn.layers.LAYERS["Twice"]


def test_fit_with_a_validation_split_returns_the_history(tmp_path):
    model = deep(p=0.2)
    x, y = bars(200, 0)
    history = fit(model, SGD(model, 0.05), (x, y), epochs=2, batch_size=32, validation_split=0.25, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["val_loss"] > 0 and 0 <= h["val_acc"] <= 1 for h in history)
    assert history[-1]["samples_per_s"] > 0 and history[0]["train_acc"] <= 1
    with pytest.raises(ShapeError, match="not both"):
        fit(model, SGD(model, 0.05), (x, y), (x, y), validation_split=0.1)
    with pytest.raises(ShapeError, match=r"validation_split: expected a fraction in \[0, 1\)"):
        fit(model, SGD(model, 0.05), (x, y), validation_split=1.0)
    no_val = fit(model, SGD(model, 0.05), (x, y), validation_split=0, progress=False)
    assert no_val[0]["val_acc"] is None


def test_resume_with_dropout_and_batchnorm_is_bit_identical(tmp_path):
    def run(epochs, out, saved=None):
        model = saved.model if saved else deep(seed=1)
        opt = saved.optimizer if saved else Adam(model, lr=2e-3)
        fit(model, opt, bars(96, 0), bars(32, 1), epochs=epochs, batch_size=32, seed=4, out=out,
            training=saved.training if saved else None, progress=False, checkpoint_every=2)
        return model
    straight = run(2, tmp_path / "a.npz")
    run(1, tmp_path / "b.npz")
    resumed = run(2, tmp_path / "b.npz", fastcnn.load_checkpoint(tmp_path / "b.npz"))
    assert np.array_equal(straight.parameters, resumed.parameters)
    for (_, a), (_, b) in zip(straight.named_buffers(), resumed.named_buffers()):
        assert np.array_equal(a, b)


def test_the_training_script_resumes_the_deep_network_bit_for_bit(tmp_path, monkeypatch, capsys):
    """Settings come from the named network's recipe; a resume rebuilds them from the file, and
    warming up the kernels leaves BatchNorm's statistics as they were. (Not the recipe's cosine
    schedule: asking a 1-epoch run for a second epoch stretches the cosine over 2 epochs.)"""
    from fakes import fake_mnist
    from fastcnn import data
    from fastcnn.cli.train import train
    monkeypatch.setitem(data.CHECKSUMS, "mnist", fake_mnist(tmp_path))
    common = dict(model="deep", data_dir=tmp_path, progress=False, batch_size=80, schedule="inverse-time")
    train(tmp_path / "straight.npz", epochs=2, **common)
    train(tmp_path / "resumed.npz", epochs=1, **common)
    train(tmp_path / "resumed.npz", epochs=2, resume=True, data_dir=tmp_path, progress=False)
    assert "deep network, batch 80, SGD lr 0.05 momentum 0.9, inverse-time decay 0.001 schedule, weight decay 0.0005" \
        in capsys.readouterr().out
    a, b = (fastcnn.load_checkpoint(tmp_path / f"{name}.npz") for name in ("straight", "resumed"))
    assert np.array_equal(a.model.parameters, b.model.parameters)
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a.model.named_buffers(), b.model.named_buffers()))
    assert a.training["settings"] == b.training["settings"] and a.training["settings"]["model"] == "deep"
    with pytest.raises(ShapeError, match="--optimizer adam differs from the checkpoint's sgd"):
        train(tmp_path / "resumed.npz", epochs=3, optimizer="adam", resume=True, data_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="colour: not a setting"):
        train(tmp_path / "other.npz", colour=True, data_dir=tmp_path)


def test_every_setting_is_a_train_option():
    import dataclasses

    from fastcnn.cli import parser
    from fastcnn.settings import Settings
    args = parser().parse_args(["train", "--model", "deep", "--optimizer", "adam", "--weight-decay", "0.01",
                                "--schedule", "cosine", "--validation-split", "0.1"])
    for f in dataclasses.fields(Settings):
        assert hasattr(args, f.name), f.name
    from fastcnn.settings import from_arguments
    resolved = Settings(**from_arguments(args)).resolved()
    assert (resolved.optimizer, resolved.lr, resolved.weight_decay, resolved.epochs) == ("adam", 1e-3, 0.01, 15)
    with pytest.raises(ConfigError, match="model: expected one of original, deep, cifar, resnet, got 'resnet50'"):
        Settings(model="resnet50").resolved()
    with pytest.raises(ConfigError, match="momentum: 0.5 was given, but --optimizer adam doesn't use it"):
        Settings(optimizer="adam", momentum=0.5).resolved()
    with pytest.raises(ConfigError, match="decay: 0.1 was given, but the cosine schedule doesn't use it"):
        Settings(model="deep", decay=0.1).resolved()


def test_a_version_1_model_file_still_loads_and_resumes(tmp_path, monkeypatch):
    """Files written before Adam, BatchNorm and settings: SGD state without a type, no buffers,
    no input shape, the original's settings without a model name."""
    import json

    from fakes import fake_mnist
    from fastcnn import data
    from fastcnn.architectures import mnist_network
    from fastcnn.cli.train import train
    monkeypatch.setitem(data.CHECKSUMS, "mnist", fake_mnist(tmp_path))
    model = mnist_network(seed=0)
    velocity = np.random.default_rng(0).normal(0, 1e-3, model.parameters.size).astype(np.float32)
    settings = dict(epochs=1, batch_size=64, lr=0.07, momentum=0.9, decay=1e-3, seed=0, dataset="mnist")
    arrays = {"format": np.array("fastcnn-model"), "version": np.array(1),
              "architecture": np.array(json.dumps({"layers": [[type(layer).__name__, layer.config()] for layer in
                                                              model.layers], "seed": 0})),
              "optimizer/velocity": velocity,
              "optimizer/config": np.array(json.dumps({"lr": 0.07, "momentum": 0.9, "decay": 1e-3, "steps": 5})),
              "training": np.array(json.dumps({"epoch": 1, "batch": 0, "totals": [0.0, 0, 0, 0.0],
                                               "history": [{"epoch": 1, "loss": 1.0, "train_acc": 0.5,
                                                            "test_acc": 0.6, "seconds": 1.0,
                                                            "samples_per_s": 320.0}],
                                               "settings": settings}))}
    arrays.update({f"param/{name}": p for name, p in model.named_parameters()})
    np.savez(tmp_path / "v1.npz", **arrays)
    saved = fastcnn.load_checkpoint(tmp_path / "v1.npz")
    assert isinstance(saved.optimizer, SGD) and saved.optimizer.steps == 5
    assert saved.optimizer.schedule.decay == 1e-3 and np.array_equal(saved.optimizer.velocity, velocity)
    assert saved.model.input_shape is None and np.array_equal(saved.model.parameters, model.parameters)
    assert saved.training["history"][0]["val_acc"] == 0.6 and saved.training["history"][0]["val_loss"] is None
    history = train(tmp_path / "v1.npz", epochs=2, resume=True, data_dir=tmp_path, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    resumed = fastcnn.load_checkpoint(tmp_path / "v1.npz").training
    assert resumed["settings"]["model"] == "original"
    assert resumed["validation"]["on"] == "test" and resumed["settings"]["validation"] == "test"  # as it was made


def test_a_slice_of_a_batch_draws_its_rows_of_the_batchs_dropout_mask():
    """Data-parallel processes each run a slice of the global batch (first_row, see plan.Run): the
    masks they draw are the whole batch's, so K processes drop what one process would."""
    from fastcnn.plan import Run
    model = Sequential([Flatten(), Dropout(0.5)], input_shape=(3, 5, 2), seed=1)
    plan = model.plan((3, 5, 2))
    x = np.ones((10, 3, 5, 2), np.float32)
    whole = plan.forward(x, plan.workspace(10, train=True), Run(True, 1, 4)).copy()
    parts = [plan.forward(x[a:b], plan.workspace(b - a, train=True), Run(True, 1, 4, a)).copy()
             for a, b in ((0, 4), (4, 10))]
    assert np.array_equal(np.concatenate(parts), whole)


def test_asking_a_cosine_run_for_more_epochs_stretches_its_schedule(tmp_path, monkeypatch):
    from fakes import fake_mnist
    from fastcnn import data
    from fastcnn.cli.train import train
    monkeypatch.setitem(data.CHECKSUMS, "mnist", fake_mnist(tmp_path))
    out = tmp_path / "cosine.npz"
    train(out, model="deep", epochs=1, batch_size=80, data_dir=tmp_path, progress=False)  # 320 images: 4 batches
    assert fastcnn.load_checkpoint(out).optimizer.schedule.steps == 4
    train(out, epochs=3, resume=True, data_dir=tmp_path, progress=False)
    saved = fastcnn.load_checkpoint(out)
    assert saved.optimizer.schedule.steps == 12 and saved.optimizer.steps == 12


def test_fit_trains_a_model_of_examples_that_are_not_images(tmp_path):
    # predict and train_step took (N, 20) examples of a Dense model; fit refused them ("expected 4 dimensions").
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = fastcnn.Sequential([Dense(16), fastcnn.ReLU(), Dense(2)], input_shape=(20,), seed=0)
    history = fastcnn.fit(model, fastcnn.SGD(model, 0.1), (x, y), epochs=5, batch_size=32, progress=False,
                          out=tmp_path / "tabular.npz")
    assert history[-1]["val_acc"] > 0.85
    loaded = fastcnn.load(tmp_path / "tabular.npz")
    assert np.array_equal(loaded.predict(x[:5]), model.predict(x[:5]))
    with pytest.raises(fastcnn.ConfigError, match=r"augment: 'crop' moves images \(H, W, C\); the examples have shape "
                                                  r"\(20,\)"):
        fastcnn.fit(model, fastcnn.SGD(model, 0.1), (x, y), epochs=1, progress=False, augment="crop")
