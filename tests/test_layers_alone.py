"""Every built-in layer on its own: ``y = layer.forward(x)``, ``dx = layer.backward(dy)``, as code
written layer by layer (the original "CNN from scratch" project) calls them.

The layers run by the same steps as in a model, so the checks are: the original network written
layer by layer gives the loss and every gradient a ``Sequential``'s plan gives (which fuses conv ->
ReLU -> pool and dense -> ReLU: other kernels, so within 1e-4 of the largest gradient); each layer
alone on the compiled kernels agrees with it alone on the NumPy reference (forward 1e-5, backward
5e-5 of max(1, the largest value), the kernel tests' tolerances); and the mistakes a person makes
get a clear error.
"""

import copy
import pickle
import threading

import numpy as np
import pytest

import fastcnn
from fakes import Scale
from fastcnn import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                     Layer, LeakyReLU, MaxPool2D, ReLU, Sequential, ShapeError, Sigmoid, SoftmaxCrossEntropy, Tanh,
                     UsageError, register_layer)
from fastcnn.errors import ConfigError
from fastcnn.kernels import blas


def original_layers():
    return [Conv2D(1, 32, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(14 * 14 * 32, 128), ReLU(),
            Dense(128, 10)]


def test_the_original_network_layer_by_layer_matches_the_plan():
    rng = np.random.default_rng(0)
    x, labels = rng.random((16, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 16)
    model = Sequential(original_layers(), seed=3)
    loss, _ = model.train_step(x, labels)
    layers = original_layers()
    for mine, theirs in zip(layers, model.layers):
        for name, p in theirs.params.items():
            mine.params[name][...] = p
    out = x
    for layer in layers:
        out = layer.forward(out)
    layer_loss, d = SoftmaxCrossEntropy()(out, labels)
    for layer in reversed(layers):
        d = layer.backward(d)
    assert d.shape == x.shape
    assert layer_loss == pytest.approx(loss, rel=1e-5)
    scale = max(np.abs(theirs.grads[name]).max() for theirs in model.layers for name in theirs.grads)
    for mine, theirs in zip(layers, model.layers):
        for name in theirs.grads:
            assert np.abs(mine.grads[name] - theirs.grads[name]).max() <= 1e-4 * scale, (mine, name)


SHAPES = {4: (3, 7, 5, 4), 2: (3, 11)}  # images (N, H, W, C) of odd non-square size; feature rows
EACH = [
    (lambda: Conv2D(4, 6, 3, stride=2, padding=1), 4), (lambda: Conv2D(4, 5, 3, padding="same"), 4),
    (lambda: MaxPool2D(2), 4), (lambda: MaxPool2D(3, stride=1), 4), (lambda: AvgPool2D(2), 4),
    (lambda: GlobalAvgPool2D(), 4), (lambda: ReLU(), 4), (lambda: LeakyReLU(0.1), 2), (lambda: Tanh(), 4),
    (lambda: Sigmoid(), 2), (lambda: Dropout(0.3), 4), (lambda: BatchNorm2D(), 4), (lambda: BatchNorm1D(), 2),
    (lambda: Flatten(), 4), (lambda: Dense(7), 2),
]


@pytest.mark.parametrize("make,rank", EACH, ids=lambda v: "" if isinstance(v, int) else repr(v()))
def test_each_layer_alone_matches_the_reference(make, rank):
    rng = np.random.default_rng(rank)
    x = rng.standard_normal(SHAPES[rank]).astype(np.float32)
    fast, ref = make(), make()
    y = fast.forward(x)
    y_ref = ref.forward(x, backend="numpy")  # sizes inferred from x: params drawn the same (seed 0)
    assert y.shape == y_ref.shape and y.dtype == np.float32
    assert np.abs(y - y_ref).max() <= 1e-5 * max(1.0, np.abs(y_ref).max())
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dx_ref = fast.backward(dy), ref.backward(dy)
    assert dx.shape == x.shape
    for got, want in [(dx, dx_ref), *((fast.grads[n], ref.grads[n]) for n in ref.params)]:
        assert np.abs(got - want).max() <= 5e-5 * max(1.0, np.abs(want).max())
    if ref.params:
        assert any(np.abs(g).max() > 0 for g in fast.grads.values())


def test_evaluation_mode_and_dropout_on_their_own():
    x = np.ones((4, 50), np.float32)
    drop = Dropout(0.5)
    first, second = drop.forward(x).copy(), drop.forward(x)
    assert set(np.unique(first)) == {0.0, 2.0} and not np.array_equal(first, second)  # a new mask each call
    assert drop.eval() is drop and not drop.training  # as a model's: the layer, for chaining
    assert np.array_equal(drop.forward(x), x)
    assert drop.train() is drop and set(np.unique(drop.forward(x))) == {0.0, 2.0}
    bn = BatchNorm1D(50).eval()  # the running statistics (0 and 1): the identity, give or take eps
    np.testing.assert_allclose(bn.forward(x), x / np.sqrt(1 + 1e-5), rtol=1e-6)
    with pytest.raises(UsageError, match=r"in training mode \(layer.train\(\)"):
        bn.backward(x)
    assert np.allclose(bn.train().forward(x * np.arange(4)[:, None]).mean(axis=0), 0, atol=1e-6)  # the batch's


def test_a_layers_settings_changed_after_it_is_made_are_checked_and_used():
    leaky, drop, bn = LeakyReLU(0.1), Dropout(0.5), BatchNorm1D(3)
    leaky.alpha = 0.3  # used by the next pass, as its config() says (the slope it was made with, before)
    assert np.array_equal(leaky.forward(-np.ones((1, 2), np.float32)), np.float32([[-0.3, -0.3]]))
    assert leaky.config() == {"alpha": 0.3}
    drop.p = 0.75
    assert set(np.unique(drop.forward(np.ones((4, 50), np.float32)))) == {0.0, 4.0}
    for layer, name, value, expected in ((leaky, "alpha", 1.5, r"a slope in \[0, 1\)"), (drop, "p", 1.0, r"a drop probability"),
                                         (bn, "momentum", 5, r"a value in \[0, 1\]"), (bn, "eps", 0, r"a value > 0")):
        kept = getattr(layer, name)
        with pytest.raises(ShapeError, match=rf"{name}: expected {expected}"):
            setattr(layer, name, value)
        assert getattr(layer, name) == kept


def test_mistakes_get_clear_errors():
    relu = ReLU()
    with pytest.raises(UsageError, match=r"ReLU.backward: call forward\(x\) first"):
        relu.backward(np.ones((2, 3), np.float32))
    relu.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ShapeError, match=r"dy: .*\(2, 3\)"):
        relu.backward(np.ones((3, 3), np.float32))
    relu.eval().forward(np.ones((2, 3), np.float32))
    with pytest.raises(UsageError, match="in training mode"):
        relu.backward(np.ones((2, 3), np.float32))
    with pytest.raises(ShapeError, match=r"x: expected a batch \(N, \.\.\.\)"):
        Dense(3, 2).forward(np.ones(3, np.float32))
    with pytest.raises(ShapeError, match="layer 0 Dense.*expected 3 features"):
        Dense(3, 2).forward(np.ones((1, 4), np.float32))
    with pytest.raises(ShapeError, match="expected a NumPy array"):
        Dense(3, 2).forward([[1.0, 2.0, 3.0]])
    with pytest.raises(ConfigError, match="backend: expected one of"):
        ReLU().forward(np.ones((1, 3), np.float32), backend="cuda")
    with pytest.raises(ShapeError, match=r"alpha: expected a slope in \[0, 1\)"):
        LeakyReLU(-0.5)


def test_leaky_relu_trains_the_same_on_both_backends():
    def model(backend):
        return Sequential([Conv2D(4, 3), LeakyReLU(0.2), MaxPool2D(2), Flatten(), Dense(5)], seed=1,
                          input_shape=(9, 9, 2), backend=backend)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 9, 9, 2)).astype(np.float32), rng.integers(0, 5, 6)
    fast, ref = model("numba"), model("numpy")
    assert [type(s).__name__ for s in fast.plan((9, 9, 2)).steps] == ["Conv", "Elementwise", "Pool", "FlattenStep",
                                                                      "DenseStep"]
    assert fast.train_step(x, y)[0] == pytest.approx(ref.train_step(x, y)[0], rel=1e-5)
    assert np.abs(fast.gradients - ref.gradients).max() <= 5e-5 * np.abs(ref.gradients).max()


def test_a_layer_of_your_own_needs_only_what_it_uses(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    alone = Scale(4)
    alone.backward(alone.forward(x))  # on its own: its gradient is there to be written
    np.testing.assert_allclose(alone.grads["a"], (x * x * 1.5).sum(axis=0), rtol=1e-6)
    model = Sequential([Dense(4), Scale(4), ReLU(), Dense(3)], input_shape=(4,), seed=1)
    model.train_step(x, np.arange(5) % 3)
    assert np.abs(model.layers[1].grads["a"]).max() > 0 and np.shares_memory(model.layers[1].grads["a"],
                                                                              model.gradients)
    register_layer(Scale)
    try:
        model.save(tmp_path / "scale.npz")
        assert np.array_equal(fastcnn.load(tmp_path / "scale.npz").predict(x), model.predict(x))
    finally:
        del fastcnn.layers.LAYERS["Scale"]


def test_a_layer_of_your_own_runs_with_numpy_blas_on_one_thread():
    """NumPy's BLAS threads, spinning after a product, would slow the kernels after it down:
    inside a layer of the user's own it runs on one thread, and has the count it had before once
    the pass is over (nested passes: the outermost's end). OpenBLAS ignores a count set from
    another thread than the main one, so there the hold changes nothing."""
    numpy_blas = blas._numpy_blas()
    if not numpy_blas:
        pytest.skip("NumPy and SciPy share one BLAS here, held to one thread at import")
    lib, seen = numpy_blas[0], []

    class Watches(Layer):
        def forward(self, x):
            seen.append(lib.num_threads)
            return x

        def backward(self, dy):
            seen.append(lib.num_threads)
            return dy

    before = lib.num_threads
    lib.set_num_threads(3)
    try:
        model = Sequential([Dense(4), Watches(), Dense(3)], input_shape=(4,))
        model.train_step(np.ones((2, 4), np.float32), np.zeros(2, np.int64))
        assert seen == [1, 1] and lib.num_threads == 3
        with blas.numpy_blas_on_one_thread():
            with blas.numpy_blas_on_one_thread():
                assert lib.num_threads == 1
            assert lib.num_threads == 1
        assert lib.num_threads == 3
        other = threading.Thread(target=lambda: model.train_step(np.ones((2, 4), np.float32), np.zeros(2, np.int64)))
        other.start()
        other.join()
        assert seen[2:] == [3, 3] and lib.num_threads == 3
    finally:
        lib.set_num_threads(before)


def test_a_layer_alone_copies_and_pickles_with_its_weights_and_state():
    """copy.deepcopy and pickle of a layer (a model's included): its class and config(), its own
    copies of the parameters and buffers, its mode, and dropout's seed and count, so the copy's next
    mask is the original's next; a layer of one's own that config() can't rebuild is refused."""
    model = Sequential(original_layers(), input_shape=(28, 28, 1))
    x = np.random.default_rng(4).random((2, 28, 28, 1), np.float32)
    for again in (copy.deepcopy(model.layers[0]), pickle.loads(pickle.dumps(model.layers[0]))):
        assert repr(again) == repr(model.layers[0]) and not np.shares_memory(again.params["weight"], model.parameters)
        assert np.array_equal(again.params["weight"], model.layers[0].params["weight"])
        assert np.array_equal(again.forward(x), model.layers[0].forward(x))
    bn = BatchNorm2D(3)
    bn.buffers["running_mean"][...] = 2.0
    bn.training = False
    again = pickle.loads(pickle.dumps(bn))
    assert not again.training and np.array_equal(again.buffers["running_mean"], [2.0, 2.0, 2.0])
    drop, ones = Dropout(0.5), np.ones((4, 16), np.float32)
    drop.seed = 7
    drop.forward(ones)
    twin = copy.deepcopy(drop)
    assert np.array_equal(twin.forward(ones), drop.forward(ones))
    assert np.array_equal(copy.deepcopy(Scale(3)).params["a"], [1.5, 1.5, 1.5])

    class Unbuildable(Scale):
        def config(self):
            return {}

    with pytest.raises(UsageError, match=r"^Unbuildable\(\): a model file, a copy or a pickle could not rebuild"):
        copy.deepcopy(Unbuildable(3))


def test_the_usual_mistakes_of_a_layer_of_your_own():
    class NoBackward(Layer):
        def forward(self, x):
            return x

    class Doubles(Layer):
        def __init__(self):
            super().__init__()
            self.params["w"] = np.ones(3)  # float64

    class Widens(Layer):
        def forward(self, x):
            return np.concatenate([x, x], axis=1)

    class NoConfig(Scale):
        def config(self):
            return {}

    x = np.ones((2, 3), np.float32)
    with pytest.raises(NotImplementedError, match="NoBackward.backward: a layer of your own implements"):
        Sequential([Dense(3, 3), NoBackward(), Dense(3, 2)]).train_step(x, np.zeros(2, np.int64))
    with pytest.raises(NotImplementedError, match="forward"):
        Layer().forward(x)
    with pytest.raises(ShapeError, match=r"layer 0 Doubles.*params\['w'\] is dtype float64; expected a float32"):
        Sequential([Doubles(), Dense(3, 2)])
    with pytest.raises(ShapeError, match=r"layer 0 Widens.*forward returned \(2, 6\); expected .*\(2, 3\)"):
        Sequential([Widens(), Dense(3, 2)]).forward(x)
    with pytest.raises(UsageError, match=r"layer 0 NoConfig.*could not rebuild it from config\(\) = \{\}"):
        Sequential([NoConfig(3), Dense(3, 2)]).save("never-written.npz")
    with pytest.raises(KeyError, match="'b': .* has no parameter of that name"):
        Scale(3).grads["b"]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_add_and_concatenate_alone_take_lists_of_batches(backend):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 3, 4, 5), np.float32), rng.standard_normal((2, 3, 4, 5), np.float32)
    add = fastcnn.Add()
    np.testing.assert_allclose(add.forward([a, b], backend), a + b, rtol=1e-6)
    dy = rng.standard_normal(a.shape, np.float32)
    assert all(np.array_equal(d, dy) for d in add.backward(dy))
    cat = fastcnn.Concatenate()
    y = cat.forward([a, b[..., :2]], backend)
    assert np.array_equal(y, np.concatenate([a, b[..., :2]], axis=-1))
    da, db = cat.backward(y)
    assert np.array_equal(da, a) and np.array_equal(db, b[..., :2])
    with pytest.raises(fastcnn.ShapeError, match="x: expected a list of two or more batches for Add, got ndarray"):
        fastcnn.Add().forward(a)
    with pytest.raises(fastcnn.ShapeError, match="x: expected batches of one size, got 2, 1"):
        fastcnn.Add().forward([a, b[:1]])
    with pytest.raises(fastcnn.ShapeError, match=r"Add\(\): x: expected tensors of one shape to add"):
        fastcnn.Add().forward([a, b[:, :2]])


def test_a_parameter_assigned_in_a_model_is_copied_in_and_trains():
    # params["bias"] = a put a new array in the view's place: the optimizer went on updating the
    # view, which nothing read, and the assigned value never trained (nor did a layer's own, so set).
    model = Sequential([Flatten(), Dense(4, 3)], input_shape=(2, 2, 1), seed=0)
    x, y = np.random.default_rng(0).uniform(size=(8, 2, 2, 1)).astype(np.float32), np.arange(8) % 3
    model.layers[1].params["bias"] = [1.0, 2.0, 3.0]
    assert np.array_equal(model.parameters[-3:], [1, 2, 3])
    sgd = fastcnn.SGD(model, lr=1.0)
    model.train_step(x, y)
    sgd.step()
    bias = model.layers[1].params["bias"]
    assert np.shares_memory(bias, model.parameters) and not np.array_equal(bias, [1, 2, 3])
    with pytest.raises(ShapeError, match=r"layer 1 Dense.*params\['bias'\]: given an array of shape \(4,\); expected "
                                         r"\(3,\)"):
        model.layers[1].params["bias"] = np.zeros(4)
    with pytest.raises(ShapeError, match=r"params\['scale'\]: no such parameter \(it has \['weight', 'bias'\]\)"):
        model.layers[1].params["scale"] = np.zeros(3)
    with pytest.raises(ShapeError, match="a model's parameters are fixed when it is made"):
        del model.layers[1].params["bias"]


def test_a_layer_of_your_own_may_assign_or_add_to_its_gradients():
    # Its gradients were never zeroed between steps, so "+=" added up every step's; and "=" was refused.
    class Adds(Scale):
        def backward(self, dy):
            self.grads["a"] += (dy * self.x).sum(axis=0)
            return dy * self.params["a"]

    class Assigns(Scale):
        def backward(self, dy):
            self.grads["a"] = (dy * self.x).sum(axis=0)
            return dy * self.params["a"]

    x, y = np.random.default_rng(1).uniform(size=(6, 3)).astype(np.float32), np.arange(6) % 2
    gradients = []
    for kind in (Scale, Adds, Assigns):
        model = Sequential([kind(3), Dense(3, 2)], seed=0)
        for _ in range(3):  # the same step three times: the same gradient each time
            model.train_step(x, y)
            gradients.append(model.gradients.copy())
    assert all(np.array_equal(g, gradients[0]) for g in gradients) and gradients[0][:3].any()


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_model_that_does_not_end_in_scores_is_named_by_predict_and_train_step(backend):
    # The compiled loss failed with a Numba typing error; the NumPy backend's predict returned the
    # feature maps as "probabilities".
    model = Sequential([Conv2D(4, 3)], input_shape=(8, 8, 1), backend=backend)
    x = np.zeros((2, 8, 8, 1), np.float32)
    assert model.forward(x).shape == (2, 6, 6, 4)  # what it ends in, as asked
    for call in (lambda: model.predict(x), lambda: model.train_step(x, np.zeros(2, np.int64))):
        with pytest.raises(ShapeError, match=r"model: expected it to end in \(N, classes\) scores, it gives shape "
                                             r"\(N, 6, 6, 4\)"):
            call()


def test_a_layer_of_your_own_that_forgets_its_init_or_its_output_shape_is_named():
    # An AttributeError ('params') from inside the model; an output_shape returning None blamed the next layer.
    class NoSuper(Layer):
        def __init__(self):
            self.k = 2

    class NoneShape(Layer):
        def output_shape(self, shape):
            pass

    with pytest.raises(ShapeError, match=r"layer 0 NoSuper has no params; a layer of your own calls "
                                         r"super\(\).__init__\(\) first"):
        Sequential([NoSuper(), Dense(3, 2)])
    with pytest.raises(ShapeError, match=r"layer 1 NoneShape\(\): output_shape\(\(4,\)\) returned None; expected the "
                                         r"shape of one example out"):
        Sequential([Dense(3, 4), NoneShape(), Dense(2)], input_shape=(3,))


def test_a_layers_arrays_of_another_shape_are_refused_before_a_kernel_reads_them():
    # A Dense alone given a transposed weight ran its kernel on it: wrong outputs, then a corrupted heap
    # (malloc: invalid size); in a model, a bias of 5 for 3 outputs trained and saved an unloadable file.
    dense = Dense(4, 3)
    dense.params["weight"] = np.ones((3, 4), np.float32)
    with pytest.raises(ShapeError, match=r"Dense\(in_features=4, out_features=3\): params\['weight'\] is "
                                         r"float32\(3, 4\); expected float32\(4, 3\)"):
        dense.forward(np.ones((2, 4), np.float32))
    dense.params["weight"] = np.ones((3, 4), np.float32).T  # the right shape, not contiguous
    with pytest.raises(ShapeError, match=r"is float32\(4, 3\), not contiguous"):
        dense.forward(np.ones((2, 4), np.float32))
    wide = Dense(4, 3)
    wide.params["bias"] = np.ones(5, np.float32)
    with pytest.raises(ShapeError, match=r"layer 1 Dense.*params\['bias'\] is float32\(5,\); expected float32\(3,\)"):
        Sequential([Flatten(), wide], input_shape=(2, 2, 1))
    model = Sequential([Flatten(), BatchNorm1D(4), Dense(4, 3)], input_shape=(2, 2, 1))
    with pytest.raises(ShapeError, match=r"buffers\['running_mean'\]: given an array of shape \(5,\); expected \(4,\)"):
        model.layers[1].buffers["running_mean"] = np.zeros(5, np.float32)
    with pytest.raises(ShapeError, match=r"params\['bias'\]: given float64 values, not all finite numbers"):
        model.layers[2].params["bias"] = np.full(3, np.nan)
    model.layers[1].buffers["running_var"] = np.full(4, 2.0)  # copied in, as float32
    assert model.layers[1].buffers["running_var"].dtype == np.float32 and model.layers[1].buffers["running_var"][0] == 2


def test_a_nan_gradient_of_a_layer_of_your_own_is_named_not_the_learning_rate():
    # It said "the learning rate 0.05 is probably too high".
    class BadGradient(Scale):
        def backward(self, dy):
            self.grads["a"][...] = np.nan
            return dy * self.params["a"]

    x, y = np.random.default_rng(0).uniform(size=(64, 3)).astype(np.float32), np.arange(64) % 2
    model = Sequential([BadGradient(3), Dense(3, 2)], seed=0)
    from fastcnn.training import TrainingDiverged
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at step 2 .*the weights of layer 0 "
                                               r"BadGradient\(features=3\), a layer of your own, became NaN or Inf, "
                                               r"and no others did"):
        fastcnn.fit(model, fastcnn.SGD(model, 0.05), (x.reshape(64, 3), y), epochs=1, batch_size=32, progress=False,
                    validation_split=0)
