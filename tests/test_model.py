"""The Python API: layers, Sequential, SGD, and the two backends stepping together."""

import numba
import numpy as np
import pytest

from fakes import check_plan_runs_the_layers
from fastcnn import (SGD, ConfigError, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, ShapeError,
                     SoftmaxCrossEntropy, softmax)


def seed_network(backend="numba", seed=0):
    """The original project's network."""
    return Sequential([Conv2D(1, 32, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(6272, 128), ReLU(), Dense(128, 10)], seed=seed, backend=backend)


def digit_like_batch(n=64, seed=0):
    """Sparse bright strokes on black with learnable labels: closer to MNIST than uniform noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = np.zeros((n, 28, 28, 1), np.float32)
    for i, label in enumerate(y):
        x[i, 4 + 2 * label:8 + 2 * label, 6:22, 0] = rng.uniform(0.5, 1.0)
    x += rng.uniform(0, 0.1, x.shape).astype(np.float32)
    return x, y


def train(model, steps, lr=0.05, seed=0):
    opt, loss_fn = SGD(model, lr=lr, momentum=0.9, decay=1e-3), SoftmaxCrossEntropy(model.backend)
    losses = []
    for step in range(steps):
        x, y = digit_like_batch(seed=seed + step)
        loss, dlogits = loss_fn(model.forward(x), y)
        model.backward(dlogits)
        opt.step()
        losses.append(loss)
    return losses


def test_both_backends_step_together():
    fast, ref = seed_network("numba"), seed_network("numpy")
    assert np.array_equal(fast.parameters, ref.parameters)  # same seed, same weights
    losses_fast, losses_ref = train(fast, 8), train(ref, 8)
    np.testing.assert_allclose(losses_fast, losses_ref, rtol=1e-4)
    assert losses_fast[-1] < losses_fast[0] / 2  # and it learns
    scale = np.abs(ref.parameters).max()
    assert np.abs(fast.parameters - ref.parameters).max() <= 1e-4 * scale


@pytest.mark.parametrize("threads", sorted({1, numba.config.NUMBA_NUM_THREADS}))
def test_same_seed_and_threads_give_identical_weights(threads):
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        a, b = seed_network(seed=3), seed_network(seed=3)
        train(a, 4)
        train(b, 4)
    finally:
        numba.set_num_threads(previous)
    assert np.array_equal(a.parameters, b.parameters)
    assert not np.array_equal(a.parameters, seed_network(seed=3).parameters)  # it did move


def test_parameters_and_gradients_by_name_are_views_of_flat_buffers():
    model = seed_network()
    conv, dense = model.layers[0], model.layers[4]
    assert conv.params["weight"].shape == (3, 3, 1, 32) and conv.params["bias"].shape == (32,)
    assert dense.params["weight"].shape == (6272, 128)
    assert model.parameters.size == 3 * 3 * 32 + 32 + 6272 * 128 + 128 + 128 * 10 + 10
    for layer in (conv, dense):
        for name in ("weight", "bias"):
            assert np.shares_memory(layer.params[name], model.parameters)
            assert np.shares_memory(layer.grads[name], model.gradients)
    x, y = digit_like_batch()
    _, d = SoftmaxCrossEntropy()(model.forward(x), y)
    model.backward(d)
    assert np.abs(conv.grads["weight"]).max() > 0 and np.abs(dense.grads["bias"]).max() > 0


def test_the_plan_fuses_by_pattern_and_leaves_the_layers_as_built():
    model = seed_network()
    plan = model.plan((28, 28, 1))
    assert [type(step).__name__ for step in plan.steps] == ["ConvReluPool", "FlattenStep", "DenseRelu", "DenseStep"]
    assert [step.needs_input_grad for step in plan.steps] == [False, True, True, True]
    assert model.plan((28, 28, 1)) is plan  # made once per example shape
    # The layers were not changed: each one's forward is what its name says, on its own.
    conv, relu1, dense1, relu2 = (model.layers[i] for i in (0, 1, 4, 5))
    x = np.random.default_rng(0).standard_normal((3, 6272)).astype(np.float32)
    w, b = dense1.params["weight"], dense1.params["bias"]
    np.testing.assert_allclose(dense1.forward(x), x @ w + b, rtol=1e-5, atol=1e-5)  # no ReLU in it
    assert (dense1.forward(x) < 0).any()
    assert (relu1.forward(conv.forward(np.ones((1, 5, 5, 1), np.float32) - 2)) >= 0).all()
    assert vars(relu2) == {"params": {}, "grads": {}, "buffers": {}, "_owner": relu2._owner}  # the plan kept out


@pytest.mark.parametrize("layers,steps", [
    (lambda: [Conv2D(2, 3, 3, padding=1), ReLU(), Conv2D(3, 4, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(64, 5)],
     ["Conv", "Elementwise", "ConvReluPool", "FlattenStep", "DenseStep"]),
    (lambda: [Conv2D(2, 3, 3), MaxPool2D(2, 1), ReLU(), Flatten(), Dense(147, 6), ReLU(), ReLU(), Dense(6, 3)],
     ["Conv", "Pool", "Elementwise", "FlattenStep", "DenseRelu", "Elementwise", "DenseStep"]),
    (lambda: [ReLU(), MaxPool2D(2), Conv2D(2, 3, 2), ReLU(), MaxPool2D(2), Flatten(), Dense(12, 4)],
     ["ReluPool", "ConvReluPool", "FlattenStep", "DenseStep"]),
    (lambda: [Conv2D(2, 3, 3), ReLU(), ReLU(), MaxPool2D(2), Flatten(), Dense(48, 4)],
     ["Conv", "Elementwise", "ReluPool", "FlattenStep", "DenseStep"]),
], ids=["conv-conv-block", "pool-relu", "relu-pool-first", "relu-pool-inside"])
def test_every_plan_runs_the_layers_as_written(layers, steps):
    """Whatever the plan fuses, its forward is the layers run one by one, and both backends
    give the same loss and gradients."""
    x = np.random.default_rng(0).standard_normal((5, 10, 10, 2)).astype(np.float32)
    check_plan_runs_the_layers(layers, x, steps, forward_tol=1e-6)


def test_a_layer_in_a_live_model_is_refused_by_another():
    dense = Dense(4, 2)
    first = Sequential([dense])
    with pytest.raises(ShapeError, match="layer 0 Dense.*already belongs to a model"):
        Sequential([dense])
    relu = ReLU()
    with pytest.raises(ShapeError, match="layer 2 ReLU.*already belongs"):
        Sequential([Dense(4, 4), relu, relu])
    del first
    import gc
    gc.collect()
    Sequential([dense])  # its model is gone: the layer is free again


def test_forward_results_are_the_callers_and_train_step_equals_forward_backward():
    a, b = seed_network(seed=4), seed_network(seed=4)
    x, y = digit_like_batch(n=9)
    first = a.forward(x)
    a.forward(x[::-1].copy())
    np.testing.assert_array_equal(first, b.forward(x))  # not overwritten by the next batch
    loss, d = SoftmaxCrossEntropy()(b.forward(x), y)
    b.backward(d)
    loss_step, logits = a.train_step(x, y)
    assert loss_step == pytest.approx(loss, rel=1e-6)
    np.testing.assert_array_equal(a.gradients, b.gradients)
    with pytest.raises(ShapeError, match="dlogits.*logits' shape"):
        b.forward(x)
        b.backward(d[:3])
    with pytest.raises(RuntimeError, match="forward"):
        seed_network().backward(d)
    # train_step checks what it is given, as forward does
    with pytest.raises(ShapeError, match="labels: label 1[0-9] at index 0 is outside 0..9, the model's classes"):
        a.train_step(x, y + 10)
    with pytest.raises(ShapeError, match=r"expected integer class labels, got dtype float64; convert them"):
        a.train_step(x, y.astype(float))
    with pytest.raises(ShapeError, match=r"counted from 1\? pass y - 1"):
        a.train_step(x, np.r_[1:9, 10])
    with pytest.raises(ShapeError, match="expected shape \\(9,\\)"):
        a.train_step(x, y[:3])
    with pytest.raises(ShapeError, match=r"layer 0 Conv2D.*expected 1 input channels, got examples of shape "
                                         r"\(28, 28, 2\)"):  # one example's shape, not the probe's (1, ...)
        a.train_step(np.zeros((9, 28, 28, 2), np.float32), y)


def test_pooling_before_relu_gives_the_same_values_and_gradients():
    """Conv, ReLU, MaxPool runs as Conv, MaxPool, ReLU: compare with the layers run one by one."""
    from fastcnn.kernels import reference as R
    model = Sequential([Conv2D(2, 4, 3, padding=1), ReLU(), MaxPool2D(2)], seed=0, backend="numpy")
    x = np.random.default_rng(0).standard_normal((3, 7, 6, 2), dtype=np.float32)
    w, b = model.layers[0].params["weight"], model.layers[0].params["bias"]
    conv = R.conv2d_forward(x, w, b, 1, 1)
    relu = R.relu_forward(conv)
    pooled, argmax = R.maxpool_forward(relu, 2)
    np.testing.assert_array_equal(model.forward(x), pooled)
    dy = np.random.default_rng(1).standard_normal(pooled.shape, dtype=np.float32)
    dconv = R.relu_backward(R.maxpool_backward(dy, argmax, relu.shape), relu)
    model.backward(dy)
    np.testing.assert_allclose(model.layers[0].grads["weight"], R.conv2d_backward(dconv, x, w, 1, 1)[1], rtol=1e-5)


def test_initialisation_is_he_before_relu_and_glorot_otherwise():
    model = seed_network(seed=1)
    conv_w, d1_w, d2_w = (model.layers[i].params["weight"] for i in (0, 4, 6))
    assert conv_w.std() == pytest.approx(np.sqrt(2 / 9), rel=0.15)
    assert d1_w.std() == pytest.approx(np.sqrt(2 / 6272), rel=0.02)
    limit = np.sqrt(6 / (128 + 10))
    assert np.abs(d2_w).max() <= limit and d2_w.std() == pytest.approx(limit / np.sqrt(3), rel=0.05)
    assert not np.array_equal(conv_w, seed_network(seed=2).layers[0].params["weight"])


def test_sgd_momentum_and_decay():
    model = Sequential([Dense(3, 2)], seed=0)
    opt = SGD(model, lr=0.1, momentum=0.5, decay=0.25)
    w0 = model.parameters.copy()
    model.gradients[...] = 1.0
    opt.step()   # lr 0.1: v = -0.1
    opt.step()   # lr 0.1 / 1.25 = 0.08: v = 0.5 * -0.1 - 0.08 = -0.13
    np.testing.assert_allclose(model.parameters - w0, -0.23, rtol=1e-6)
    assert opt.current_lr == pytest.approx(0.1 / 1.5)
    for bad in (dict(lr=0), dict(lr=-1), dict(lr=float("inf")), dict(lr=float("nan")), dict(lr=0.1, momentum=1.0), dict(lr=0.1, decay=-1)):
        with pytest.raises(ShapeError):
            SGD(model, **bad)


def test_predict_gives_probabilities_in_batches():
    model = seed_network()
    x, _ = digit_like_batch(n=37)
    p = model.predict(x, batch_size=10)
    assert p.shape == (37, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(p, softmax(model.forward(x)), rtol=1e-5, atol=1e-7)


def test_a_read_only_batch_runs_the_kernels_compiled_for_writable_ones():
    # load_dataset's arrays are read-only; Numba would type them apart and compile the first
    # kernel again (3-4 s): the batch is copied where it enters instead, and gives the same answer.
    from fastcnn.kernels import conv_pool
    model = seed_network()
    x, _ = digit_like_batch(n=3)
    want, want_one = model.predict(x), model.predict(x[:1])
    seen = len(conv_pool._conv_relu_pool_forward.signatures)
    x.flags.writeable = False
    np.testing.assert_array_equal(model.predict(x), want)
    np.testing.assert_array_equal(model.predict(x[:1]), want_one)
    assert len(conv_pool._conv_relu_pool_forward.signatures) == seen
    assert not x.flags.writeable  # the caller's array is left as it was


def test_a_wrong_shape_names_the_layer():
    model = seed_network()
    with pytest.raises(ShapeError, match=r"layer 0 Conv2D.*expected 1 input channels"):
        model.forward(np.zeros((2, 28, 28, 3), np.float32))
    with pytest.raises(ShapeError, match=r"layer 4 Dense.*expected 6272 features"):
        model.forward(np.zeros((2, 30, 30, 1), np.float32))
    with pytest.raises(ShapeError, match="uint8 / 255"):
        model.forward(np.zeros((2, 28, 28, 1), np.uint8))
    with pytest.raises(ConfigError, match="unknown|expected one of"):
        Sequential([Dense(2, 2)], backend="cuda")


def test_images_of_another_size_are_named_with_the_size_the_model_was_made_for():
    model = Sequential([Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(3)], input_shape=(9, 9, 1))
    with pytest.raises(ShapeError, match=r"x: images of shape \(10, 10, 1\) do not fit the model: layer 4 Dense.*"
                                         r"expected 64 features per row.* \(it was made for \(9, 9, 1\)\)$"):
        model.predict(np.zeros((2, 10, 10, 1), np.float32))
    with pytest.raises(ShapeError, match=r"x: images of shape \(9, 9, 2\) do not fit the model: layer 0 Conv2D"):
        model.train_step(np.zeros((2, 9, 9, 2), np.float32), np.zeros(2, np.int64))
    assert model.predict(np.zeros((2, 9, 9, 1), np.float32)).shape == (2, 3)


def test_a_batchnorm_given_one_value_per_channel_to_train_on_is_refused_up_front():
    # One value per channel (a batch of 1 into a BatchNorm1D, or onto 1x1 maps) normalises to the
    # shift alone and pulls the running variance toward 0: a silent harm PyTorch refuses too.
    from types import SimpleNamespace

    from fastcnn import BatchNorm1D, BatchNorm2D, GlobalAvgPool2D, fit
    from fastcnn.training import _check_batchnorm_batches
    rng = np.random.default_rng(0)
    x, y = rng.random((65, 4, 4, 1), np.float32), rng.integers(0, 3, 65)
    model = Sequential([Flatten(), Dense(16), BatchNorm1D(), ReLU(), Dense(3)], input_shape=(4, 4, 1))
    one = "layer 2 BatchNorm1D would normalise one value per channel in training"
    for call in (lambda: model.train_step(x[:1], y[:1]), lambda: model.forward(x[:1])):
        with pytest.raises(ShapeError, match=rf"x: {one} \(a batch of 1\).*model.eval\(\)"):
            call()
    model.train_step(x[:2], y[:2])
    assert model.eval().forward(x[:1]).shape == (1, 3) and model.predict(x[:1]).shape == (1, 3)
    before = model.parameters.copy(), model.layers[2].buffers["running_var"].copy()
    with pytest.raises(ShapeError, match=rf"batch_size: 65 images in batches of 64 leave .*{one}.*e\.g\. 63 or 65"):
        fit(model.train(), SGD(model, 0.01), (x, y), progress=False, validation_split=0)
    with pytest.raises(ShapeError, match=rf"train: 1 image to train on; {one}"):
        fit(model, SGD(model, 0.01), (x[:1], y[:1]), progress=False, validation_split=0)
    assert np.array_equal(model.parameters, before[0]) and np.array_equal(model.layers[2].buffers["running_var"], before[1])
    fit(model, SGD(model, 0.01), (x, y), batch_size=63, progress=False, validation_split=0)
    # Under MPI, every process checks the smallest part of any batch: the same answer in all of them.
    with pytest.raises(ShapeError, match=r"leave .* \(in 2 processes' parts of the last batch\)"):
        _check_batchnorm_batches(model.plan((4, 4, 1)), 67, 64, SimpleNamespace(size=2))
    _check_batchnorm_batches(model.plan((4, 4, 1)), 68, 64, SimpleNamespace(size=2))

    maps = lambda h: Sequential([Conv2D(4, 3, padding=1), BatchNorm2D(), ReLU(), GlobalAvgPool2D(), Dense(3)],
                                input_shape=(h, 1, 1))
    with pytest.raises(ShapeError, match=r"layer 1 BatchNorm2D .* \(a batch of 1 on 1x1 maps\)"):
        maps(1).train_step(x[:1, :1, :1], y[:1])
    maps(2).train_step(x[:1, :2, :1], y[:1])  # two values per channel: a batch of one image of 2x1
    bn = BatchNorm1D(3)
    with pytest.raises(ShapeError, match=r"x: BatchNorm1D would normalise one value .*layer.eval\(\)"):
        bn.forward(np.ones((1, 3), np.float32))
    assert np.allclose(bn.eval().forward(np.ones((1, 3), np.float32)), 1 / np.sqrt(1 + 1e-5))


def test_the_usual_layout_mistakes_say_what_to_do():
    from fastcnn import fit
    from fastcnn.architectures import mnist_network
    rng = np.random.default_rng(0)
    x, y = rng.random((10, 28, 28, 1), np.float32), np.arange(10)
    model = mnist_network()
    mistakes = [(lambda: model.train_step(x, np.eye(10, dtype=np.float32)[y]), r"got \(10, 10\); one-hot rows\? .*y.argmax\(axis=1\)"),
                (lambda: fit(model, SGD(model, 0.01), (x, np.eye(10)[y]), progress=False), r"one-hot rows\?"),
                (lambda: fit(model, SGD(model, 0.01), (x, y[:, None]), progress=False), r"got \(10, 1\); .*y.ravel\(\)"),
                (lambda: fit(model, SGD(model, 0.01), (x, y + 1), progress=False), r"outside 0..9.*counted from 1\? pass y - 1"),
                (lambda: model.predict(x.transpose(0, 3, 1, 2)), r"\(1, 28, 28\) do not fit.*channels first\?.*x.transpose\(0, 2, 3, 1\)"),
                (lambda: model.predict(x[0]), r"\(28, 1\) do not fit.*one image\? .*x\[None\]"),
                (lambda: model.predict(x[..., 0]), r"\(28, 28\) do not fit.*add the channel axis: x\[\.\.\., None\]")]
    for mistake, hint in mistakes:
        with pytest.raises(ShapeError, match=hint):
            mistake()
    with pytest.raises(ShapeError) as e:  # a real misfit gets no hint
        model.predict(rng.random((2, 32, 32, 3), np.float32))
    assert "?" not in str(e.value) and "made for (28, 28, 1))" in str(e.value)
