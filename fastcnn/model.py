"""Sequential: layers chained in order, with every parameter in one flat buffer.

One flat float32 buffer holds all parameters and another all gradients; each layer's
``params[name]`` and ``grads[name]`` are views into them. So the optimizer step, zeroing and
checkpointing are each one operation over one array. What runs is the model's execution plan
(``plan.py``), made once per example shape; the layers themselves are never changed by it.
Arguments are checked here, where data enters (``forward``, ``backward``, ``predict``), once.
"""

import weakref

import numpy as np

from . import backends, checkpoint, compiling, fileio, graph, validate
from .errors import ModelFileError, ShapeError, UsageError
from .kernels import checks
from .layers import (Add, AvgPool2D, BatchNorm1D, BatchNorm2D, Concatenate, Dropout, Flatten, Layer, MaxPool2D,
                     ReLU, walk)
from .plan import Plan
from .steps import EVALUATION, Run

# Layers a ReLU can sit behind and still "follow" a layer, for the choice of initialisation.
_TRANSPARENT = (MaxPool2D, AvgPool2D, Flatten, BatchNorm1D, BatchNorm2D, Dropout, Add, Concatenate)
# Images per kernel call in predict: 256 ran at 97% of the speed of 1000 with a quarter of the
# buffers, and 8% faster than 128 (64,600, 66,400 and 59,900 images/s, measured).
_PREDICT_BATCH = 256


class _InModel(dict):
    """A layer's ``params`` or ``grads`` in a model (views into the model's flat buffers, which the
    optimizer reads and writes), or its ``buffers`` (BatchNorm's statistics, which its kernels
    read). Assigning one (``params["bias"] = a``) copies ``a`` into the array there, of the same
    shape and finite: an array put in its place would never be trained, nor its gradient reach the
    optimizer, and a kernel would read one of another shape past its end."""

    def __init__(self, views, what):
        super().__init__(views)
        self.what = what

    def __setitem__(self, name, value):
        if name not in self:
            raise ShapeError(f"{self.what}[{name!r}]: no such parameter (it has {list(self)}); a model's parameters "
                             f"are fixed when it is made")
        view = self[name]
        if value is view:  # (params[name] += g: the view itself, written already)
            return
        a = np.asarray(value)
        if a.shape != view.shape:
            raise ShapeError(f"{self.what}[{name!r}]: given an array of shape {a.shape}; expected {view.shape} (it is "
                             f"copied into the model's buffer)")
        if not (a.dtype.kind in "fiub" and np.isfinite(a).all()):
            raise ShapeError(f"{self.what}[{name!r}]: given {a.dtype} values, not all finite numbers; expected finite "
                             f"numbers")
        view[...] = a

    def __missing__(self, name):
        raise KeyError(f"{name!r}: {self.what} has no parameter of that name (it has {list(self)})")

    def update(self, *args, **kwargs):
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def _fixed(self, *args):
        raise ShapeError(f"{self.what}: a model's parameters are fixed when it is made")

    __delitem__ = pop = popitem = clear = setdefault = _fixed


class Model:
    """A model made of a graph of layers, from ``inputs`` to ``outputs`` (see ``fastcnn.graph``):

        x = fastcnn.Input((28, 28, 1))
        h = fastcnn.ReLU()(fastcnn.Conv2D(16, 3, padding="same")(x))
        model = fastcnn.Model(x, fastcnn.Dense(10)(fastcnn.Flatten()(fastcnn.Add()([h, x]))))

    ``model.layers`` are the graph's layers in an order that respects it (each after its inputs,
    the output's last) and ``model.sources[i]`` the positions of layer i's inputs among them (-1:
    the model's input). Everything else is ``Sequential``'s, which is the graph of a chain: see there.
    """

    def __init__(self, inputs, outputs, seed=0, backend="numba"):
        x, layers, sources = graph.order(inputs, outputs)
        self._setup(layers, sources, x.shape, seed, backend)

    @classmethod
    def from_layers(cls, layers, sources, input_shape, seed=0, backend="numba"):
        """The graph model of ``layers`` whose inputs are ``sources`` (as ``model.sources``): how a
        model file rebuilds one."""
        sources = [tuple(checks.non_negative_int("sources", s + 1) - 1 for s in srcs) for srcs in sources]
        if len(sources) != len(layers) or any(not srcs or max(srcs) >= i for i, srcs in enumerate(sources)):
            raise ShapeError(f"sources: expected, for each of the {len(layers)} layers, the positions of its "
                             f"inputs among the layers before it (-1: the input), got {sources!r}")
        model = cls.__new__(cls)
        model._setup(list(layers), sources, graph.example_shape(input_shape), seed, backend)
        return model

    def _setup(self, layers, sources, input_shape, seed, backend):
        self.layers, self.sources = list(layers), [tuple(s) for s in sources]
        if not self.layers or not all(isinstance(layer, Layer) for layer in self.layers):
            raise ShapeError(f"layers: expected a non-empty list of fastcnn layers, got {layers!r}")
        for i, layer in enumerate(self.layers):
            if not all(hasattr(layer, a) for a in ("params", "grads", "buffers")):
                raise ShapeError(f"layers: layer {i} {type(layer).__name__} has no params; a layer of your own calls "
                                 f"super().__init__() first in its __init__")
            owner = getattr(layer, "_owner", None)
            if (owner is not None and owner() is not None) or self.layers.index(layer) != i:
                raise ShapeError(f"layers: layer {i} {layer!r} already belongs to a model; a layer's parameters "
                                 f"live in one model's buffers: build a new layer for this one")
        self.backend = backend  # and the kernels it names
        self.seed = checks.non_negative_int("seed", seed)
        self.input_shape = None if input_shape is None else graph.example_shape(input_shape)
        self._build()
        rng = np.random.default_rng(seed)
        for i, layer in enumerate(self.layers):
            layer.initialize(rng, feeds_relu=self._feeds_relu(i))
            layer._owner = weakref.ref(self)
        self._flatten_parameters()
        self._plans = {}
        self._pending = None  # the plan and workspace of the last forward, for backward
        self.training = True
        self._forwards = 0  # forward() calls in training mode: they draw dropout's masks
        self._optimizer = None  # a weak reference to the last optimizer made for this model

    @property
    def backend(self):
        """``"numba"``, the compiled kernels, or ``"numpy"``, their NumPy twins; it can be changed."""
        return self._backend

    @backend.setter
    def backend(self, name):
        self.kernels = backends.get(name)
        self._backend = name
        self._plans, self._pending = {}, None  # plans run one backend's kernels

    @property
    def is_chain(self):
        """Whether each layer takes the one before it (a ``Sequential``'s shape)."""
        return all(srcs == (i - 1,) for i, srcs in enumerate(self.sources))

    def _build(self):
        """Infer what the layers leave to the input, and check each against the shape reaching it."""
        walk(self.layers, self.input_shape, infer=True, sources=self.sources)

    def _feeds_relu(self, i):
        """Whether layer i's output reaches a ReLU through layers that keep its sign's meaning (its
        first reader's, in a graph): He initialisation then, else Glorot."""
        while True:
            readers = [j for j in range(i + 1, len(self.layers)) if i in self.sources[j]]
            if not readers:
                return False
            i = readers[0]
            if not isinstance(self.layers[i], _TRANSPARENT):
                return isinstance(self.layers[i], ReLU)

    def train(self):
        """Training mode for ``forward``: batch statistics, dropout. Returns the model."""
        self.training = True
        return self

    def eval(self):
        """Evaluation mode for ``forward``: running statistics, no dropout. Returns the model."""
        self.training = False
        return self

    def _flatten_parameters(self):
        named = [(layer, name) for layer in self.layers for name in layer.params]
        for i, layer in enumerate(self.layers):
            layer.check_arrays(f"layer {i} {layer!r}: ")
            for name, p in layer.params.items():
                if not (isinstance(p, np.ndarray) and p.dtype == np.float32):
                    got = f"dtype {p.dtype}" if isinstance(p, np.ndarray) else type(p).__name__
                    raise ShapeError(f"layer {i} {layer!r}: params[{name!r}] is {got}; expected a float32 NumPy array")
        total = sum(layer.params[name].size for layer, name in named)
        self.parameters = np.empty(total, np.float32)
        self.gradients = np.zeros(total, np.float32)
        views = {id(layer): ({}, {}) for layer in self.layers}
        offset = 0
        for layer, name in named:
            p = layer.params[name]
            params, grads = views[id(layer)]
            params[name] = self.parameters[offset:offset + p.size].reshape(p.shape)
            params[name][...] = p
            grads[name] = self.gradients[offset:offset + p.size].reshape(p.shape)
            offset += p.size
        for i, layer in enumerate(self.layers):
            params, grads = views[id(layer)]
            layer.params, layer.grads = _InModel(params, f"layer {i} {layer!r}: params"), \
                _InModel(grads, f"layer {i} {layer!r}: grads")
            if layer.buffer_shapes(layer.config()):  # BatchNorm's statistics, which its kernels read
                layer.buffers = _InModel(layer.buffers, f"layer {i} {layer!r}: buffers")

    def named_parameters(self):
        """``("3.weight", array)`` pairs in layer order: the names model files use."""
        return [(f"{i}.{name}", p) for i, layer in enumerate(self.layers) for name, p in layer.params.items()]

    def named_buffers(self):
        """``("1.running_mean", array)`` pairs: the non-trainable state (BatchNorm's statistics)."""
        return [(f"{i}.{name}", b) for i, layer in enumerate(self.layers) for name, b in layer.buffers.items()]

    def _own_input_shape(self, what, how):
        """The model's ``input_shape``, for ``what`` (a method) called without one; ``how`` shows
        how to pass one."""
        if self.input_shape is None:
            raise ShapeError(f"{what}: the model has no input_shape; pass one, {how}")
        return self.input_shape

    def summary(self, input_shape=None, file=None):
        """Print each layer with its output shape and parameter count, and the totals (as Keras
        does); returns the text. ``input_shape`` defaults to the model's."""
        shape = (graph.example_shape(input_shape) if input_shape is not None
                 else self._own_input_shape("summary", "summary(input_shape=(H, W, C))"))
        chain, example = self.is_chain, shape
        rows = [("Layer (type)", "Output shape", "Param #", "" if chain else "Inputs"),
                ("input", str((None, *shape)), "", "")]
        shapes = walk(self.layers, shape, sources=self.sources)[1:]
        for i, (layer, shape) in enumerate(zip(self.layers, shapes)):
            rows.append((f"{i} {type(layer).__name__}", str((None, *shape)),
                         f"{sum(p.size for p in layer.params.values()):,}",
                         "" if chain else ", ".join("input" if s < 0 else str(s) for s in self.sources[i])))
        widths = [max(len(row[c]) for row in rows) for c in range(4)]
        rule = "-" * (sum(widths) + 6 - 2 * chain)
        lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" + ("" if chain else f"  {d}")
                 for a, b, c, d in rows]
        lines.insert(1, rule)
        frozen = sum(b.size for _, b in self.named_buffers())
        total = self.parameters.size + frozen
        lines += [rule, f"Total params: {total:,} ({4 * total / 2**20:.2f} MiB)",
                  f"Trainable params: {self.parameters.size:,}",
                  f"Non-trainable params: {frozen:,}" + (" (BatchNorm's running statistics)" if frozen else "")]
        memory = self.plan(example).memory(64)
        lines.append(f"Buffers for a batch of 64: {memory['training'] / 2**20:.1f} MiB to train, "
                     f"{memory['evaluation'] / 2**20:.1f} MiB to evaluate")
        text = "\n".join(lines)
        print(text, file=file)
        return text

    def plan(self, example_shape=None):
        """The execution plan for examples of ``example_shape`` (the model's ``input_shape`` unless
        given; made once, then kept)."""
        # (forward calls this every batch with x.shape[1:], already checked: no second check here)
        example_shape = (tuple(example_shape) if example_shape is not None
                         else self._own_input_shape("plan", "plan((H, W, C))"))
        plan = self._plans.get(example_shape)
        if plan is None:
            plan = self._plans[example_shape] = Plan(self.layers, example_shape, self.kernels, self.sources)
        return plan

    def forward(self, x):
        """Logits for a batch ``x``, in this model's mode (``train()``, ``eval()``); in training
        mode, remembers what ``backward`` needs."""
        validate.batch_layout(x)
        plan = plan_for(self, x.shape[1:], "x")
        if not self.training:
            plan.ready(False)
            x = validate.input_batch(x, plan.kernels)
            self._pending = None
            return plan.forward(x, plan.workspace(len(x), train=False), EVALUATION).copy()
        _check_training_batch(plan, len(x))
        self._prepare_training(plan)
        x = validate.input_batch(x, plan.kernels)
        ws = plan.workspace(len(x), train=True)
        logits = plan.forward(x, ws, Run(True, self.seed, self._forwards))
        self._forwards += 1
        self._pending = plan, ws
        return logits.copy()  # the workspace's buffer is overwritten by the next batch

    def backward(self, dlogits):
        """Fill every layer's ``grads`` from the gradient of the loss w.r.t. the logits: finite,
        of the logits' shape, once per ``forward`` in training mode (``UsageError`` otherwise)."""
        if self._pending is None:
            raise UsageError("backward() needs a forward() in training mode just before it (model.train(), then "
                             "forward), and takes one gradient per forward")
        plan, ws = self._pending
        dlogits = checks.array("dlogits", dlogits, 1 + len(plan.output_shape), np.float32)
        checks.same_shape("dlogits", dlogits, ws[-1]["dlogits"].shape, "the logits' shape")
        if not np.isfinite(dlogits).all():
            bad = np.argwhere(~np.isfinite(dlogits))[0]
            raise ShapeError(f"dlogits: holds {dlogits[tuple(bad)]} at {tuple(int(i) for i in bad)}; NaN or Inf "
                             f"would make every gradient NaN (did the loss overflow?)")
        self._pending = None
        plan.backward(dlogits, ws)

    def train_step(self, x, labels, step=None):
        """Forward (in training mode), softmax cross-entropy and backward in one go, without
        copies: fills every layer's ``grads`` and returns ``(mean loss, logits)``; the logits are
        the plan's buffer, overwritten by the next step. ``step`` (the optimizer's) draws
        dropout's masks, with the model's seed; by default, a count of this model's passes.
        (``fit`` checks all its data once and calls the plan's ``train_step`` itself.)"""
        validate.batch_layout(x)
        plan = plan_for(self, x.shape[1:], "x")
        labels = validate.labels("labels", labels, len(x), _scores(plan))
        _check_training_batch(plan, len(x))
        step = None if step is None else checks.non_negative_int("step", step)
        self._prepare_training(plan)
        x = validate.input_batch(x, plan.kernels)
        self._pending = None
        if step is None:
            step, self._forwards = self._forwards, self._forwards + 1
        return plan.train_step(x, labels, self.seed, step)

    def _prepare_training(self, plan):
        """Before the first training pass of ``plan``: compile its kernels together with those of
        the optimizer last made for this model, whose first step would otherwise compile alone,
        after them (0.3 s for SGD's)."""
        if True not in plan.prepared:
            compiling.prepare(plan, (True,), None if self._optimizer is None else self._optimizer())

    def predict(self, x, batch_size=_PREDICT_BATCH):
        """Class probabilities (N, classes), computed ``batch_size`` images at a time.

        Keeps no state, so several threads may call it on one model at once. Each batch is
        checked and converted to float32 on its own, so memory stays bounded whatever the input's
        dtype; uint8 images are pixels 0-255, scaled to [0, 1] batch by batch (a memory-mapped
        image folder is read a batch at a time).
        """
        batch_size = checks.positive_int("batch_size", batch_size)
        validate.batch_layout(x, pixels=True)
        plan = plan_for(self, x.shape[1:], "x")
        probs = np.empty((len(x), _scores(plan)), np.float32)
        plan.ready(False)  # before the batches' check, a kernel compiled with the plan's
        for i, batch in validate.batches(x, batch_size, plan.kernels):
            plan.probabilities_into(probs[i:i + len(batch)], batch)
        return probs

    def save(self, path, optimizer=None, overwrite=False):
        """Write this model (and ``optimizer``'s state) to one ``.npz``; ``fastcnn.load`` reads it.
        An existing file is replaced only with ``overwrite=True`` (it may be a checkpoint whose run
        could then no longer be resumed); else ``ModelFileError``."""
        fileio.check_path("path", path)
        if not checks.flag("overwrite", overwrite) and fileio.taken(path):
            raise ModelFileError(f"{path}: already exists; save to another file, or replace it (overwrite=True)")
        checkpoint.save(path, self, optimizer)

    def __call__(self, *args):
        # Keras nests a model in a graph as a layer; here a layer belongs to one model.
        raise UsageError(f"{type(self).__name__}: a model is not a layer to call on a tensor; write the block as a "
                         f"function of one (def block(x): ... return h, as fastcnn.architectures writes resnet's) "
                         f"and call it where it goes; to predict, call model.predict(x)")

    def __reduce__(self):
        """Pickled, and copied (``copy.deepcopy``), as a model file holds it: each layer's class and
        ``config()``, the graph, the parameters and buffers; and the mode, the backend and the count
        of training passes (dropout's masks). So a layer of the user's own needs what saving needs:
        a ``config()`` that rebuilds it, and a class that can be imported where it is unpickled."""
        for i, layer in enumerate(self.layers):
            checkpoint.rebuildable(i, layer)
        layers = [(type(layer), layer.config()) for layer in self.layers]
        arrays = {name: a.copy() for name, a in (*self.named_parameters(), *self.named_buffers())}
        return _unpickled, (type(self), layers, self.sources, self.input_shape, self.seed, arrays,
                            {"backend": self.backend, "training": self.training, "_forwards": self._forwards})

    def __repr__(self):
        inner = ",\n    ".join(f"{i}: {layer!r} <- {', '.join('input' if s < 0 else str(s) for s in srcs)}"
                              for i, (layer, srcs) in enumerate(zip(self.layers, self.sources)))
        return f"Model(input_shape={self.input_shape}, layers=[\n    {inner}\n], backend={self.backend!r})"


class Sequential(Model):
    """A model made of ``layers`` in order.

    ``input_shape`` is the shape of one example, (H, W, C) for images: given it, the sizes a
    layer can take from its input (``Conv2D(32, 3)``'s input channels, ``Dense(128)``'s input
    features, a BatchNorm's channels) are inferred, every layer is checked against it now, and
    ``summary()`` needs no argument. ``seed`` draws the initial weights (He for layers feeding a
    ReLU, Glorot otherwise); ``backend`` is ``"numba"`` (compiled kernels) or ``"numpy"`` (the
    reference). A layer belongs to one model: its parameters become views into this model's
    buffers, so a second model is refused a layer that a live model holds (build a new one).

    A model is in training mode (``train()``) until ``eval()``: that decides what ``forward``
    does with BatchNorm and Dropout. ``predict`` always evaluates; ``fit`` always trains.
    """

    def __init__(self, layers, seed=0, backend="numba", input_shape=None):
        try:
            layers = list(layers)
        except TypeError:
            raise ShapeError(f"layers: expected a non-empty list of fastcnn layers, got {layers!r}") from None
        merges = [layer for layer in layers if isinstance(layer, Layer) and layer.arity != 1]
        if merges:
            raise ShapeError(f"layers: {merges[0]!r} joins branches, which a Sequential has none of: build a graph "
                             f"model, fastcnn.Model(inputs, outputs)")
        self._setup(layers, [(i - 1,) for i in range(len(layers))], input_shape, seed, backend)

    def __repr__(self):
        inner = ",\n    ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n    {inner}\n], backend={self.backend!r})"


def _unpickled(cls, layers, sources, input_shape, seed, arrays, state):
    """The model ``Model.__reduce__`` describes."""
    model = cls.__new__(cls)
    model._setup([layer_cls(**config) for layer_cls, config in layers], sources, input_shape, seed, state["backend"])
    for name, a in (*model.named_parameters(), *model.named_buffers()):
        a[...] = arrays[name]
    model.training, model._forwards = state["training"], state["_forwards"]
    return model


def checked(model):
    """``model``, if it is a fastcnn model; else ``ShapeError`` saying what it is."""
    if not isinstance(model, Model):
        raise ShapeError(f"model: expected a fastcnn model, a Sequential or a Model (fastcnn.load reads a model "
                         f"file), got {type(model).__name__}")
    return model


def _check_training_batch(plan, n):
    problem = plan.training_batch_problem(n)
    if problem:
        raise ShapeError(f"x: {problem}; train on batches of 2 or more, or evaluate (model.eval())")


def plan_for(model, example_shape, name):
    """``model.plan(example_shape)``, or a ShapeError naming ``name``, the images' shape, the layer
    where they stop fitting and, if the model was made for another, that shape."""
    try:
        return model.plan(example_shape)
    except ShapeError as e:
        made_for = model.input_shape not in (None, tuple(example_shape))
        raise ShapeError(f"{name}: images of shape {tuple(example_shape)} do not fit the model: {e}"
                         + (f" (it was made for {model.input_shape}){_layout_hint(tuple(example_shape), model.input_shape)}"
                            if made_for else "")) from None


def _layout_hint(got, made_for):
    """What to do with examples of shape ``got`` that are the model's ``made_for`` laid out another way."""
    if len(got) == len(made_for) == 3 and got == (made_for[2], *made_for[:2]):
        return "; channels first? fastcnn's images are (H, W, C): x.transpose(0, 2, 3, 1)"
    if got == made_for[1:]:
        return "; one image? predict a batch of one: x[None]"
    if got == made_for[:-1]:
        return "; add the channel axis: x[..., None]"
    return ""


def classes_scored(model, example_shape, name):
    """The number of classes ``model`` scores for examples of ``example_shape``, from the plan it
    makes for them: examples that don't fit fail here, naming ``name``, not deep inside a batch."""
    return _scores(plan_for(checked(model), example_shape, name))


def _scores(plan):
    """The number of classes ``plan`` scores, or ``ShapeError`` if it doesn't end in scores."""
    out = plan.output_shape
    if len(out) != 1:
        raise ShapeError(f"model: expected it to end in (N, classes) scores, it gives shape "
                         f"(N, {', '.join(map(str, out))}) (forward gives what it ends in; predict, train_step and "
                         f"fit need scores: end it in Flatten, or GlobalAvgPool2D, then Dense)")
    return out[0]


def labelled_batch(model, x, y, x_name="x", y_name="y"):
    """Images and labels checked against each other and against ``model``: returns ``(x as float32
    or uint8 pixels, y as int64, classes)``."""
    x = validate.images(x_name, x)
    classes = classes_scored(model, x.shape[1:], x_name)
    return x, validate.labels(y_name, y, len(x), classes), classes
