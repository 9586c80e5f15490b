"""Graph models (``fastcnn.Model``, the Keras functional form): residual connections, branches
joined by Concatenate, a tensor read three times. Forward and gradients against PyTorch in
float64 (ours in float32: tolerance 1e-4 relative to max(1, max|torch|)), the compiled kernels
against the reference, a chain as a graph against the Sequential, saving and loading, and the
refusals."""

import importlib.util

import numpy as np
import pytest

import fastcnn
from fastcnn import (SGD, Add, BatchNorm2D, Concatenate, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, Input,
                     MaxPool2D, Model, ReLU, Sequential, ShapeError, Tanh, UsageError)

TOL = 1e-4


def residual(backend="numba", seed=0):
    """Two residual blocks: one with a 1x1 projection, one that halves the size (stride 2 both ways)."""
    x = Input((8, 7, 3))
    h = ReLU()(BatchNorm2D()(Conv2D(6, 3, padding="same")(x)))
    h = BatchNorm2D()(Conv2D(6, 3, padding="same")(h))
    y = ReLU()(Add()([h, Conv2D(6, 1)(x)]))
    h = ReLU()(BatchNorm2D()(Conv2D(8, 3, stride=2, padding=1)(y)))
    h = BatchNorm2D()(Conv2D(8, 3, padding="same")(h))
    y = ReLU()(Add()([h, Conv2D(8, 1, stride=2)(y)]))
    return Model(x, Dense(5)(Flatten()(GlobalAvgPool2D()(y))), seed=seed, backend=backend)


def two_branches(backend="numba", seed=0):
    """A 3x3 and a 5x5 branch side by side, concatenated along the channels."""
    x = Input((9, 10, 2))
    c = Concatenate()([Conv2D(4, 3, padding="same")(x), Conv2D(3, 5, padding="same")(x)])
    return Model(x, Dense(5)(Flatten()(MaxPool2D(2)(ReLU()(c)))), seed=seed, backend=backend)


def used_three_times(backend="numba", seed=0):
    """A convolution's output read by a ReLU, a tanh and the Add of all three; the input itself
    joins an Add (no gradient is asked of it)."""
    x = Input((6, 6, 3))
    h = Conv2D(3, 3, padding="same")(x)
    s = Add()([h, ReLU()(h), Tanh()(h)])
    s = Add()([s, x])
    return Model(x, Dense(4)(Flatten()(s)), seed=seed, backend=backend)


GRAPHS = {"residual": residual, "two branches": two_branches, "used three times": used_three_times}


def batch(model, n=5, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *model.input_shape)).astype(np.float32)
    return x, rng.integers(0, model.plan(model.input_shape).output_shape[0], n)


def torch_loss(model, x, y):
    """The model's mean softmax cross-entropy computed by PyTorch in float64, layer by layer
    along ``model.sources``; returns (loss, logits, {name: parameter tensor})."""
    import torch
    import torch.nn.functional as F
    params = {name: torch.tensor(p.astype(np.float64), requires_grad=True) for name, p in model.named_parameters()}
    nchw, nhwc = (lambda t: t.permute(0, 3, 1, 2)), (lambda t: t.permute(0, 2, 3, 1))
    values = {-1: torch.tensor(x.astype(np.float64))}
    for i, (layer, sources) in enumerate(zip(model.layers, model.sources)):
        ins = [values[s] for s in sources]
        a, kind = ins[0], type(layer).__name__
        w, b = params.get(f"{i}.weight"), params.get(f"{i}.bias")
        if kind == "Conv2D":
            v = nhwc(F.conv2d(nchw(a), w.permute(3, 2, 0, 1), b, stride=layer.stride, padding=layer.pad))
        elif kind == "BatchNorm2D":
            v = nhwc(F.batch_norm(nchw(a), None, None, w, b, training=True, eps=layer.eps))
        elif kind == "MaxPool2D":
            v = nhwc(F.max_pool2d(nchw(a), layer.size, layer.stride))
        elif kind == "Dense":
            v = a @ w + b
        else:
            v = {"ReLU": torch.relu, "Tanh": torch.tanh, "GlobalAvgPool2D": lambda t: t.mean(dim=(1, 2)),
                 "Flatten": lambda t: t.reshape(len(t), -1), "Dropout": lambda t: t,
                 "Add": lambda _: sum(ins), "Concatenate": lambda _: torch.cat(ins, dim=-1)}[kind](a)
        values[i] = v
    logits = values[len(model.layers) - 1]
    return F.cross_entropy(logits, torch.tensor(y)), logits, params


def close(ours, theirs, what):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    scale = max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(ours - theirs).max())
    assert err <= TOL * scale, f"{what}: {err:.3g} > {TOL * scale:.3g}"


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("graph", GRAPHS)
def test_forward_and_gradients_agree_with_pytorch(graph, backend):
    pytest.importorskip("torch")
    model = GRAPHS[graph](backend)
    x, y = batch(model)
    loss, logits = model.train_step(x, y)
    t_loss, t_logits, t_params = torch_loss(model, x, y)
    t_loss.backward()
    close(logits, t_logits, "logits")
    close(np.float32(loss), t_loss, "loss")
    grads = dict(zip((name for name, _ in model.named_parameters()), [layer.grads[n] for layer in model.layers
                                                                      for n in layer.params]))
    for name, p in t_params.items():
        close(grads[name], p.grad, f"gradient of {name}")


@pytest.mark.parametrize("graph", GRAPHS)
def test_the_compiled_kernels_and_the_reference_agree_on_a_graph(graph):
    models = [GRAPHS[graph](backend) for backend in ("numba", "numpy")]
    x, y = batch(models[0], n=3)
    steps = [m.train_step(x, y) for m in models]
    np.testing.assert_allclose(steps[0][1], steps[1][1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(models[0].gradients, models[1].gradients, rtol=1e-4, atol=1e-5)
    for m in models:
        m.eval()
    np.testing.assert_allclose(models[0].forward(x), models[1].forward(x), rtol=1e-5, atol=1e-5)



def read_by_four(backend="numba", seed=0):
    """A value read by four convolutions: three at stride 2 (3x3, 1x1, 3x3) joined by an Add, and
    one at stride 1 on a head of its own."""
    x = Input((9, 8, 3))
    h = Conv2D(4, 3, padding="same")(x)
    a = Add()([Conv2D(5, 3, stride=2, padding=1)(h), Conv2D(5, 1, stride=2)(h), Conv2D(5, 3, stride=2, padding=1)(h)])
    c = Conv2D(5, 3, padding="same")(h)
    head = Concatenate()([GlobalAvgPool2D()(a), GlobalAvgPool2D()(c)])
    return Model(x, Dense(4)(Flatten()(head)), seed=seed, backend=backend)


def test_a_value_read_by_several_convolutions_gets_their_gradients_added_in_place():
    """The first convolution to reach a value read by several (the stride-1 one, last in the
    model) writes its input gradient into its own buffer; each later one, at stride 2 (col2im),
    adds its own onto it as it scatters it (Step.adds_input_grad), so no two gradients are summed
    into another buffer. The gradients as the reference backend's and PyTorch's."""
    models = [read_by_four(backend) for backend in ("numba", "numpy")]
    x, y = batch(models[0], n=6)
    sums = []

    class Counting:  # the kernels, with the plan's own sums of two gradients counted
        def __init__(self, kernels):
            self.kernels = kernels

        def __getattr__(self, name):
            if name == "add_forward_into":
                return lambda out, a, b, relu: (sums.append(out.shape), self.kernels.add_forward_into(out, a, b, relu))
            return getattr(self.kernels, name)

    for m in models:
        plan = m.plan()
        plan.kernels = Counting(plan.kernels)
        m.result = m.train_step(x, y)
    assert (6, 9, 8, 4) not in sums, sums  # (the others: the Add's own, in its forward pass)
    np.testing.assert_allclose(models[0].result[1], models[1].result[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(models[0].gradients, models[1].gradients, rtol=1e-4, atol=1e-5)
    if importlib.util.find_spec("torch"):
        t_loss, _, t_params = torch_loss(models[0], x, y)
        t_loss.backward()
        grads = dict(zip((name for name, _ in models[0].named_parameters()),
                         [layer.grads[n] for layer in models[0].layers for n in layer.params]))
        for name, p in t_params.items():
            close(grads[name], p.grad, f"gradient of {name}")


def test_a_chain_built_as_a_graph_runs_as_the_sequential_does():
    def layers():
        return [Conv2D(8, 3, padding=1), BatchNorm2D(), ReLU(), MaxPool2D(2), Flatten(), Dense(16), ReLU(),
                Dropout(0.3), Dense(10)]
    chain = Sequential(layers(), input_shape=(12, 12, 1), seed=3)
    x = h = Input((12, 12, 1))
    for layer in layers():
        h = layer(h)
    graph = Model(x, h, seed=3)
    assert graph.is_chain and repr(graph.plan((12, 12, 1))) == repr(chain.plan((12, 12, 1)))
    np.testing.assert_array_equal(graph.parameters, chain.parameters)
    data, labels = batch(chain, n=6)
    for model in (chain, graph):
        model.result = model.train_step(data, labels, step=4)
    assert chain.result[0] == graph.result[0]
    np.testing.assert_array_equal(chain.gradients, graph.gradients)


def test_the_plan_fuses_along_chains_and_keeps_whole_what_several_steps_read():
    plan = residual().plan((8, 7, 3))
    text = repr(plan)
    assert "ConvBatchNormRelu(Conv2D, BatchNorm2D, ReLU)" in text and "AddRelu(Add, ReLU) <- [1, 2]" in text
    # used three times: the convolution's output is read by three steps, so no ReLU is fused into it
    assert repr(used_three_times().plan((6, 6, 3))).startswith("Plan([Conv(Conv2D), Elementwise(ReLU), "
                                                                  "Elementwise(Tanh) <- [0], AddStep(Add) <- [0, 1, 2]")


def test_a_graph_model_trains_saves_and_loads(tmp_path):
    model = residual(seed=2)
    opt = SGD(model, lr=0.05, momentum=0.9)
    x, y = batch(model, n=32, seed=5)
    first = None
    for _ in range(30):
        loss, _ = model.train_step(x, y)
        opt.step()
        first = loss if first is None else first
    assert loss < 0.5 * first
    model.save(tmp_path / "res.npz", opt)
    loaded = fastcnn.load_checkpoint(tmp_path / "res.npz")
    assert type(loaded.model) is Model and loaded.model.sources == model.sources
    np.testing.assert_array_equal(loaded.model.predict(x), model.predict(x))
    np.testing.assert_array_equal(loaded.optimizer.state["velocity"], opt.state["velocity"])


def test_fit_trains_a_graph_model():
    model = two_branches(seed=1)
    x, y = batch(model, n=96, seed=7)
    x = (x - x.min()) / (x.max() - x.min())  # images in [0, 1], as fit expects
    history = fastcnn.fit(model, SGD(model, lr=0.05, momentum=0.9), (x, y), epochs=4, batch_size=32, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]


def test_summary_says_each_layers_inputs():
    text = used_three_times().summary(file=open("/dev/null", "w"))
    lines = text.splitlines()
    assert lines[0].split() == ["Layer", "(type)", "Output", "shape", "Param", "#", "Inputs"]
    assert lines[6].split()[:2] == ["3", "Add"] and lines[6].endswith("0, 1, 2")
    assert lines[7].split()[:2] == ["4", "Add"] and lines[7].endswith("3, input")


def test_what_is_not_a_graph_is_refused_clearly():
    x = Input((8, 8, 1))
    conv = Conv2D(4, 3)
    h = conv(x)
    with pytest.raises(ShapeError, match=r"Conv2D\(.*\) is already used in a graph.*make a second layer"):
        conv(h)
    with pytest.raises(ShapeError, match=r"Add\(\): x: expected tensors of one shape to add, got examples of shapes "
                                         r"\(6, 6, 4\), \(8, 8, 1\)"):
        Add()([h, x])
    with pytest.raises(ShapeError, match=r"expected tensors equal but for their channels.*\(6, 6, 4\), \(8, 8, 1\)"):
        Concatenate()([h, x])
    with pytest.raises(ShapeError, match=r"Add\(\): expected a list of two or more tensors, got Tensor"):
        Add()(h)
    with pytest.raises(ShapeError, match=r"ReLU\(\): expected a tensor .*got a list of 2"):
        ReLU()([h, h])
    with pytest.raises(ShapeError, match=r"Dense\(.*\): expected a tensor .*got ndarray"):
        Dense(3)(np.zeros((2, 3)))
    with pytest.raises(ShapeError, match=r"expected 64 features per row, got examples of shape \(6, 6, 4\) "
                                         r"\(put a Flatten before it\)"):
        Dense(64, 3)(h)
    other = Input((8, 8, 1))
    with pytest.raises(ShapeError, match=r"depends on an Input of shape \(8, 8, 1\) other than the model's input"):
        Model(x, Add()([Conv2D(1, 1)(x), Conv2D(1, 1)(other)]))
    with pytest.raises(ShapeError, match=r"depends on an Input of shape \(8, 8, 1\) other than the model's input"):
        Model(other, ReLU()(x))
    with pytest.raises(ShapeError, match=r"a model has one input and one output"):
        Model([x, other], h)
    with pytest.raises(ShapeError, match=r"joins branches, which a Sequential has none of.*fastcnn.Model"):
        Sequential([Conv2D(1, 3), Add()], input_shape=(8, 8, 1))
    model = Model(x, Dense(2)(Flatten()(h)))
    with pytest.raises(ShapeError, match=r"already belongs to a model"):
        Model(x, Dense(2)(Flatten()(h)))
    assert model.predict(np.zeros((1, 8, 8, 1), np.float32)).shape == (1, 2)
    block = Sequential([Conv2D(1, 3, padding=1), ReLU()], input_shape=(8, 8, 1))
    for called in (lambda: block(other), lambda: model(np.zeros((1, 8, 8, 1), np.float32))):  # as Keras nests models
        with pytest.raises(UsageError, match=r"a model is not a layer to call on a tensor; write the block as a "
                                             r"function of one .*model.predict\(x\)"):
            called()
