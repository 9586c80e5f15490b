"""The layers: what the user builds, each defined here in one place.

A layer holds its configuration and parameters and declares what runs it: ``step``, the class
of ``steps.py`` that runs it in a model's execution plan (the plan may fuse it with its
neighbours instead: ``plan.FUSIONS``), and for the exporter its ONNX form (``onnx``, or a case of
its own in ``export.py`` for the layers with weights). An activation is just its kernels' name:
``LeakyReLU`` is ``kernel = "leaky_relu"`` and ``onnx = "LeakyRelu"``.

Every layer runs on its own too, as the "CNN from scratch" code it can replace does:
``y = layer.forward(x)``, then ``dx = layer.backward(dy)``, which fills ``layer.grads`` (see
``Layer.forward``).

Parameters live in ``layer.params[name]`` and their gradients in ``layer.grads[name]``; inside a
``Sequential`` both are views into one flat buffer each (see ``model.py``). ``output_shape``
gives the shape of one example out of the layer for one example in, and checks that it fits.
"""

import math

import numpy as np

from . import backends, graph, steps
from .errors import ConfigError, ShapeError, UsageError
from .kernels import checks


class Layer:
    """Base class: no parameters, no state.

    A layer of your own subclasses this and implements ``forward(x)`` and ``backward(dy)`` in
    NumPy: ``backward`` writes the parameters' gradients into ``self.grads[name]`` (made for you,
    zeros shaped as ``self.params[name]``) and returns the input gradient. It puts its parameters
    in ``self.params`` (float32 arrays) in ``__init__``, and implements ``output_shape`` if it
    changes the shape. To be saved and loaded, it returns its constructor's arguments from
    ``config()`` and is decorated with ``@fastcnn.register_layer``. See docs/own-layers.md.
    """

    step = steps.Custom  # what runs the layer in a plan: a layer of your own, its forward and backward
    arity = 1  # the tensors it takes: one, or None for two or more (Add, Concatenate)
    training = True  # on its own, a layer runs in training mode (batch statistics, dropout) unless False
    seed = 0  # on its own, Dropout's masks are drawn from this seed and the count of forward calls

    def __init__(self):
        self.params, self.grads, self.buffers = {}, _Gradients(self), {}

    def __call__(self, inputs):
        """The layer applied to a tensor of a graph being built (``fastcnn.Input(...)`` or a layer's
        output; a list of them for ``Add`` and ``Concatenate``): its output tensor (see ``fastcnn.Model``)."""
        return graph.apply(self, inputs)

    def forward(self, x, backend="numba"):
        """The layer's output for the batch ``x`` (N, ...), as a model runs it: by ``step``, on the
        compiled kernels (``backend="numpy"``: their NumPy twins), in training mode unless
        ``self.training`` is False. It keeps what ``backward`` needs."""
        if self.step is steps.Custom:
            raise NotImplementedError(f"{type(self).__name__}.forward: a layer of your own implements "
                                      f"forward(x) and backward(dy)")
        if self.arity is None:  # Add, Concatenate: a list of batches in, of one size
            if not isinstance(x, (list, tuple)) or len(x) < 2:
                raise ShapeError(f"x: expected a list of two or more batches for {type(self).__name__}, got "
                                 f"{type(x).__name__}")
            x = [_batch(a) for a in x]
            if any(len(a) != len(x[0]) for a in x):
                raise ShapeError(f"x: expected batches of one size, got {', '.join(str(len(a)) for a in x)}")
            ins = [a.shape[1:] for a in x]
            try:
                shapes = [ins, self.output_shape(ins)]
            except ShapeError as e:
                raise ShapeError(f"{self!r}: {e}") from None
        else:
            x = _batch(x)
            shapes = walk([self], x.shape[1:], infer=True)
        self.check_arrays(f"{self!r}: ")
        step = self.step([self], shapes, 0)
        n = len(x[0]) if self.arity is None else len(x)
        values, _ = fewest_batchnorm_values([self], shapes)
        problem = self.training and one_value_per_channel(n, values, self, None)
        if problem:
            raise ShapeError(f"x: {problem}; give it 2 or more, or evaluate (layer.eval())")
        ws = {name: np.empty(shape, dtype) for name, (shape, dtype) in step.buffers(n, self.training).items()}
        self._calls = getattr(self, "_calls", 0) + 1  # a new dropout mask each call
        k = backends.get(backend)
        backends.check_runs_here(k)
        y = step.forward(k, x, ws, steps.Run(self.training, self.seed, self._calls))
        self._pass = (step, ws, n, k) if self.training else None
        return y

    def train(self):
        """Training mode for this layer's own ``forward`` (batch statistics, dropout), the default.
        Returns the layer. In a model, the model's mode is what its passes run in (``model.eval()``)."""
        self.training = True
        return self

    def eval(self):
        """Evaluation mode for this layer's own ``forward``: BatchNorm's running statistics, no
        dropout, nothing kept for ``backward``. Returns the layer."""
        self.training = False
        return self

    def backward(self, dy):
        """The input gradient for ``dy``, the gradient of the output of the last ``forward``
        (in training mode); writes the parameters' gradients into ``self.grads``."""
        if self.step is steps.Custom:
            raise NotImplementedError(f"{type(self).__name__}.backward: a layer of your own implements "
                                      f"forward(x) and backward(dy)")
        if getattr(self, "_pass", None) is None:
            raise UsageError(f"{type(self).__name__}.backward: call forward(x) first, in training mode "
                             f"(layer.train(), the default)")
        step, ws, n, k = self._pass
        dy = checks.array("dy", dy, 1 + len(step.out_shape), np.float32)
        checks.same_shape("dy", dy, (n, *step.out_shape), "the last forward output's shape")
        return step.backward(k, dy, ws)

    def config(self):
        """The constructor's arguments, enough to rebuild this layer (saved in model files)."""
        return {}

    @staticmethod
    def param_shapes(config):
        """The shapes of the parameters a layer with this ``config()`` has, without building it
        (model files are checked against them before anything is allocated). A layer of your own
        that declares neither this nor ``buffer_shapes`` is built from ``config`` to see
        (``file_shapes``)."""
        return {}

    @staticmethod
    def buffer_shapes(config):
        """The shapes of its non-trainable state (BatchNorm's running statistics), as above."""
        return {}

    inferable = ()  # (attribute, argument) pairs of the sizes a layer may take from its input

    def build(self, shape):
        """Take the sizes left to inference (``in_channels``, ``in_features``) from ``shape``, the
        shape of one example coming in; returns the shape going out, as ``output_shape``. With
        ``shape`` None (a model given no input_shape) only checks that none was left."""
        if shape is None:
            for attribute, argument in self.inferable:
                if getattr(self, attribute) is None:
                    _inferred(self, argument)
            return None
        return self.output_shape(shape)

    def output_shape(self, shape):
        """The shape of one example out of this layer, for ``shape`` in (``ShapeError`` if it
        does not fit)."""
        return tuple(shape)

    def initialize(self, rng, feeds_relu):
        pass

    def check_arrays(self, where):
        """``ShapeError`` (prefixed by ``where``) unless each parameter and buffer its ``config()``
        declares is a C-contiguous float32 array of that shape: the compiled kernels trust them
        (one of another shape, set by hand, would be read past its end)."""
        config = self.config()
        for kind, declared in (("params", self.param_shapes(config)), ("buffers", self.buffer_shapes(config))):
            arrays = getattr(self, kind)
            for name, shape in declared.items():
                a = dict.get(arrays, name)
                if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == tuple(shape)
                        and a.flags.c_contiguous):
                    got = (f"{a.dtype}{a.shape}" + ("" if a.flags.c_contiguous else ", not contiguous")
                           if isinstance(a, np.ndarray) else type(a).__name__)
                    raise ShapeError(f"{where}{kind}[{name!r}] is {got}; expected float32{tuple(shape)}, as its "
                                     f"settings make it")

    def _allocate(self):
        config = self.config()
        self.params = {name: np.zeros(shape, np.float32) for name, shape in self.param_shapes(config).items()}
        self.grads = _Gradients(self)
        self.buffers = {name: np.zeros(shape, np.float32) for name, shape in self.buffer_shapes(config).items()}
        self.initialize(np.random.default_rng(0), feeds_relu=False)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if v is not None)
        return f"{type(self).__name__}({args})"

    def __reduce__(self):
        """Copied (``copy.deepcopy``) and pickled as a model file holds a layer: its class and
        ``config()``, copies of its parameters and buffers, and its mode and dropout's seed and
        count; a layer alone, outside the model it may belong to (``Model.__reduce__`` copies a
        whole model). Nothing kept for a ``backward``: a copy runs ``forward`` first."""
        from . import checkpoint  # (it imports this module)
        checkpoint.rebuildable(None, self)
        state = {name: getattr(self, name) for name in ("training", "seed", "_calls") if name in vars(self)}
        return _unpickled, (type(self), self.config(), {n: p.copy() for n, p in self.params.items()},
                            {n: b.copy() for n, b in self.buffers.items()}, state)


def _unpickled(cls, config, params, buffers, state):
    """The layer ``Layer.__reduce__`` describes."""
    layer = cls(**config)
    layer.params, layer.buffers = params, buffers
    layer.grads = _Gradients(layer)
    vars(layer).update(state)
    return layer


class _Gradients(dict):
    """``layer.grads``: a parameter's gradient, zeros shaped as the parameter, is made the first
    time it is asked for (in a model, they are views into its flat buffer, made up front)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def __missing__(self, name):
        if name not in self.layer.params:
            raise KeyError(f"{name!r}: {self.layer!r} has no parameter of that name (it has {list(self.layer.params)})")
        self[name] = grad = np.zeros_like(self.layer.params[name])
        return grad


def _batch(x):
    """A batch for a layer on its own: a floating array (N, ...) as C-contiguous float32."""
    if isinstance(x, np.ndarray) and x.ndim < 2:
        raise ShapeError(f"x: expected a batch (N, ...) of examples, got shape {x.shape}")
    return checks.array("x", x, np.ndim(x), np.float32)


def file_shapes(cls, config):
    """``(param_shapes, buffer_shapes)`` of a ``cls`` layer with ``config``, as a model file must
    hold them: as the class declares them, or, for a layer of your own that declares neither,
    those of one built from ``config``."""
    if cls.param_shapes is Layer.param_shapes and cls.buffer_shapes is Layer.buffer_shapes:
        layer = cls(**config)
        return ({name: p.shape for name, p in layer.params.items()},
                {name: b.shape for name, b in layer.buffers.items()})
    return cls.param_shapes(config), cls.buffer_shapes(config)


def walk(layers, shape, infer=False, sources=None):
    """The example shapes through ``layers``: ``shape`` in, then out of each; a layer that does
    not fit the shape reaching it is a ``ShapeError`` naming its position. With ``infer``, each
    layer first takes the sizes left to inference from that shape (``build``). ``sources``: for a
    graph, each layer's inputs (positions among the layers, -1 for ``shape``); by default, a chain."""
    shapes = [None if shape is None else tuple(shape)]
    for i, layer in enumerate(layers):
        ins = [shapes[s + 1] for s in sources[i]] if sources is not None else [shapes[-1]]
        if (layer.arity == 1) != (len(ins) == 1):
            raise ShapeError(f"layer {i} {layer!r}: takes {'one input' if layer.arity == 1 else 'two or more inputs'}, "
                             f"given {len(ins)}")
        x = ins if layer.arity is None else ins[0]
        try:
            out = layer.build(x) if infer else layer.output_shape(x)
        except ShapeError as e:
            raise ShapeError(f"layer {i} {layer!r}: {e}") from None
        known = all(s is not None for s in ins)
        if known and not (isinstance(out, (tuple, list)) and out
                          and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in out)):
            raise ShapeError(f"layer {i} {layer!r}: output_shape({x}) returned {out!r}; expected the shape of one "
                             f"example out, a tuple of sizes (a layer of your own that changes the shape says it "
                             f"there)")
        shapes.append(tuple(int(d) for d in out) if known else out)
    return shapes


def _image(shape, what):
    if len(shape) != 3:
        raise ShapeError(f"x: expected images (H, W, C) for {what}, got examples of shape {tuple(shape)}")
    return shape


def _inferred(layer, name):
    raise ShapeError(f"{layer!r}: {name} is left to inference from the input: give the model its input, "
                     f"Sequential([...], input_shape=(H, W, C)), or pass {name}")


class Conv2D(Layer):
    """2-D convolution over NHWC images; weight (KH, KW, C_in, C_out), bias (C_out,).

    ``Conv2D(in_channels, out_channels, kernel_size)``, or ``Conv2D(out_channels, kernel_size)``
    with ``in_channels`` taken from the input (see ``Sequential``'s ``input_shape``).
    ``padding`` is a number of pixels or ``"same"`` (odd kernels: the output keeps the input's
    size, divided by the stride and rounded up).
    """

    step = steps.Conv

    def __init__(self, in_channels, out_channels, kernel_size=None, stride=1, padding=0):
        super().__init__()
        if kernel_size is None:  # Conv2D(out_channels, kernel_size)
            in_channels, out_channels, kernel_size = None, in_channels, out_channels
        self.in_channels = None if in_channels is None else checks.positive_int("in_channels", in_channels)
        self.out_channels = checks.positive_int("out_channels", out_channels)
        self.kernel_size = checks.positive_int("kernel_size", kernel_size)
        self.stride = checks.positive_int("stride", stride)
        if padding == "same":
            if self.kernel_size % 2 == 0:
                raise ShapeError(f"padding: 'same' needs an odd kernel_size, got {self.kernel_size}")
            self.padding, self.pad = "same", self.kernel_size // 2
        else:
            if isinstance(padding, str):
                raise ShapeError(f"padding: expected a number of pixels or 'same', got {padding!r}")
            self.padding = self.pad = checks.non_negative_int("padding", padding)
        if self.in_channels is not None:
            self._allocate()

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    @staticmethod
    def param_shapes(config):
        k = config["kernel_size"]
        return {"weight": (k, k, config["in_channels"], config["out_channels"]), "bias": (config["out_channels"],)}

    inferable = (("in_channels", "in_channels"),)

    def build(self, shape):
        if shape is not None and self.in_channels is None:
            self.in_channels = checks.positive_int("in_channels", _image(shape, "a Conv2D")[2])
            self._allocate()
        return super().build(shape)

    def output_shape(self, shape):
        h, w, c = _image(shape, "a Conv2D")
        if self.in_channels is None:
            _inferred(self, "in_channels")
        if c != self.in_channels:  # (said here of one example, not of the probe's batch of one)
            raise ShapeError(f"x: expected {self.in_channels} input channels, got examples of shape {(h, w, c)}")
        oh, ow = checks.conv_output_size((1, h, w, c), self.params["weight"].shape, self.stride, self.pad)
        return oh, ow, self.out_channels

    def initialize(self, rng, feeds_relu):
        fan_in = self.kernel_size ** 2 * self.in_channels
        fan_out = self.kernel_size ** 2 * self.out_channels
        self.params["weight"][...] = init_weight(rng, self.params["weight"].shape, fan_in, fan_out, feeds_relu)
        self.params["bias"][...] = 0


class MaxPool2D(Layer):
    """Max-pooling over ``size`` x ``size`` windows every ``stride`` pixels (default: ``size``)."""

    step = steps.Pool

    def __init__(self, size, stride=None):
        super().__init__()
        self.size = checks.positive_int("size", size)
        self.stride = self.size if stride is None else checks.positive_int("stride", stride)

    def config(self):
        return {"size": self.size, "stride": self.stride}

    def output_shape(self, shape):
        h, w, c = _image(shape, f"a {type(self).__name__}")
        return (*checks.pool_output_size((1, h, w, c), self.size, self.stride), c)


class AvgPool2D(MaxPool2D):
    """Average-pooling over ``size`` x ``size`` windows every ``stride`` pixels (default: ``size``)."""

    step = steps.AvgPool


class GlobalAvgPool2D(Layer):
    """(N, H, W, C) -> (N, C): the mean of each channel over the image."""

    step = steps.GlobalAvgPool

    def output_shape(self, shape):
        return (_image(shape, "a GlobalAvgPool2D")[2],)


class Activation(Layer):
    """An elementwise layer, defined by its kernels' name: ``kernel = "relu"`` runs
    ``relu_forward_into`` and ``relu_backward_into`` (the backward from the forward's output),
    given ``scalars`` after the arrays; ``onnx`` is the ONNX operator, with ``onnx_attributes()``."""

    step = steps.Elementwise
    kernel = onnx = None
    scalars = ()

    def onnx_attributes(self):
        return {}


class ReLU(Activation):
    """max(x, 0)."""
    kernel, onnx = "relu", "Relu"


class LeakyReLU(Activation):
    """x for x > 0, ``alpha * x`` otherwise (``alpha`` in [0, 1): the sign of the output says
    which, so the backward needs only the output)."""
    kernel, onnx = "leaky_relu", "LeakyRelu"
    alpha = checks.Checked(checks.in_range(lambda v: 0 <= v < 1, "a slope in [0, 1)"))  # checked whenever set

    def __init__(self, alpha=0.01):
        super().__init__()
        self.alpha = alpha

    @property
    def scalars(self):
        return (np.float32(self.alpha),)

    def config(self):
        return {"alpha": self.alpha}

    def onnx_attributes(self):
        return {"alpha": self.alpha}


class Tanh(Activation):
    """tanh(x)."""
    kernel, onnx = "tanh", "Tanh"


class Sigmoid(Activation):
    """1 / (1 + exp(-x))."""
    kernel, onnx = "sigmoid", "Sigmoid"


class Dropout(Layer):
    """Inverted dropout: in training, each value is zeroed with probability ``p`` and the rest
    scaled by 1 / (1 - p); in evaluation, the identity. The masks are a function of the run's
    seed, the optimizer's step and the layer's position, so a resumed run draws the same ones."""

    step = steps.DropoutStep
    p = checks.Checked(checks.in_range(lambda v: 0 <= v < 1, "a drop probability in [0, 1)"))  # checked whenever set

    def __init__(self, p=0.5):
        super().__init__()
        self.p = p

    def config(self):
        return {"p": self.p}


class BatchNorm2D(Layer):
    """Batch normalization per channel of NHWC images, with PyTorch's semantics.

    In training, each channel is normalised with the batch's mean and (biased) variance, and the
    running statistics move towards the batch's: running = (1 - momentum) * running + momentum *
    batch (the unbiased variance for ``running_var``). In evaluation the running statistics are
    used. ``params``: ``weight`` (scale, 1) and ``bias`` (shift, 0), learnt; ``buffers``:
    ``running_mean`` (0) and ``running_var`` (1), saved in model files, never touched by an
    optimizer. ``channels`` may be left to inference. Under data-parallel training each process
    normalises with its own slice's statistics (see ``fastcnn.distributed``).
    """

    step = steps.BatchNorm
    momentum = checks.Checked(checks.in_range(lambda v: 0 <= v <= 1, "a value in [0, 1]"))  # checked whenever set
    eps = checks.Checked(checks.in_range(lambda v: v > 0, "a value > 0"))

    dims = 3  # the rank of one example

    def __init__(self, channels=None, momentum=0.1, eps=1e-5):
        super().__init__()
        self.channels = None if channels is None else checks.positive_int("channels", channels)
        self.momentum, self.eps = momentum, eps
        if self.channels is not None:
            self._allocate()

    def config(self):
        return {"channels": self.channels, "momentum": self.momentum, "eps": self.eps}

    @staticmethod
    def param_shapes(config):
        return {"weight": (config["channels"],), "bias": (config["channels"],)}

    @staticmethod
    def buffer_shapes(config):
        return {"running_mean": (config["channels"],), "running_var": (config["channels"],)}

    inferable = (("channels", "channels"),)

    def build(self, shape):
        if shape is not None and self.channels is None and len(shape) == self.dims:
            self.channels = checks.positive_int("channels", shape[-1])
            self._allocate()
        return super().build(shape)

    def output_shape(self, shape):
        what = "images (H, W, C)" if self.dims == 3 else "feature rows (F,)"
        if len(shape) != self.dims:
            raise ShapeError(f"x: expected {what} for a {type(self).__name__}, got examples of shape {tuple(shape)}")
        if self.channels is None:
            _inferred(self, "channels")
        if shape[-1] != self.channels:
            raise ShapeError(f"x: expected {self.channels} channels, got examples of shape {tuple(shape)}")
        return tuple(shape)

    def initialize(self, rng, feeds_relu):
        self.params["weight"][...] = 1
        self.params["bias"][...] = 0
        self.buffers["running_mean"][...] = 0
        self.buffers["running_var"][...] = 1

    def folded_into(self, weight, bias):
        """The weight and bias of the Conv2D or Dense just before this layer, with this layer's
        evaluation form folded in, in ``weight``'s dtype: per output channel (the weight's last
        axis), w * s and (b - running_mean) * s + bias, s = weight / sqrt(running_var + eps)."""
        s, shift = self.scale_shift(bias)
        return weight * s, shift

    def scale_shift(self, bias):
        """This layer's evaluation form after a layer with ``bias``, as a per-channel scale and
        shift of that layer's output before its bias: s and (bias - running_mean) * s + weight's
        bias, in ``bias``'s dtype (``folded_into``'s s and bias)."""
        eps = bias.dtype.type(self.eps)
        s = self.params["weight"] / np.sqrt(self.buffers["running_var"].astype(bias.dtype) + eps)
        return s, (bias - self.buffers["running_mean"]) * s + self.params["bias"]


def fewest_batchnorm_values(layers, shapes):
    """(values, i): the fewest values per channel that a BatchNorm among ``layers`` normalises over,
    for one example (H * W of its images; 1 for a BatchNorm1D), and its position; (None, None) if none.
    ``shapes`` as ``walk`` gives them (a BatchNorm's output shape is its input's)."""
    found = [(math.prod(shapes[i + 1][:-1]), i) for i, layer in enumerate(layers) if isinstance(layer, BatchNorm2D)]
    return min(found, default=(None, None))


def one_value_per_channel(n, values, layer, i):
    """What is wrong with a training pass of ``n`` examples where ``layer`` (at position ``i``)
    normalises over ``values`` per example and channel, or None: with one value, the batch's mean
    is that value and its variance 0, so the output is the shift alone, no gradient flows back
    through it, and the running variance is pulled toward 0 (PyTorch refuses it too)."""
    if values is None or n * values > 1:
        return None
    where = f"layer {i} {type(layer).__name__}" if i is not None else type(layer).__name__
    return (f"{where} would normalise one value per channel in training (a batch of 1"
            f"{'' if layer.dims == 1 else ' on 1x1 maps'}): its output would be its shift alone and its "
            f"running variance pulled toward 0")


class BatchNorm1D(BatchNorm2D):
    """Batch normalization per feature of (N, features) rows, after a Dense; as ``BatchNorm2D``."""

    dims = 1
    inferable = (("channels", "features"),)

    def __init__(self, features=None, momentum=0.1, eps=1e-5):
        super().__init__(features, momentum, eps)

    def config(self):
        return {"features": self.channels, "momentum": self.momentum, "eps": self.eps}

    @staticmethod
    def param_shapes(config):
        return BatchNorm2D.param_shapes({"channels": config["features"]})

    @staticmethod
    def buffer_shapes(config):
        return BatchNorm2D.buffer_shapes({"channels": config["features"]})


class Flatten(Layer):
    """(N, ...) -> (N, features), in the order NHWC keeps them."""

    step = steps.FlattenStep

    def output_shape(self, shape):
        return (int(np.prod(shape)),)


class Add(Layer):
    """The sum of two or more tensors of one shape (a residual connection): ``Add()([a, b])``."""

    step = steps.AddStep
    arity = None

    def build(self, shapes):
        return None if any(s is None for s in shapes) else self.output_shape(shapes)

    def output_shape(self, shapes):
        if any(tuple(s) != tuple(shapes[0]) for s in shapes):
            raise ShapeError(f"x: expected tensors of one shape to add, got examples of shapes "
                             f"{', '.join(str(tuple(s)) for s in shapes)}")
        return tuple(shapes[0])


class Concatenate(Layer):
    """Two or more tensors side by side along their channels (the last axis): images of one
    height and width, or feature rows. ``Concatenate()([a, b])``."""

    step = steps.ConcatStep
    arity = None

    def build(self, shapes):
        return None if any(s is None for s in shapes) else self.output_shape(shapes)

    def output_shape(self, shapes):
        if any(len(s) != len(shapes[0]) or tuple(s[:-1]) != tuple(shapes[0][:-1]) for s in shapes):
            raise ShapeError(f"x: expected tensors equal but for their channels (the last axis), got examples of "
                             f"shapes {', '.join(str(tuple(s)) for s in shapes)}")
        return (*shapes[0][:-1], sum(s[-1] for s in shapes))


class Dense(Layer):
    """Fully connected: y = x @ weight + bias; weight (in, out), bias (out,).

    ``Dense(in_features, out_features)``, or ``Dense(out_features)`` with ``in_features`` taken
    from the input (see ``Sequential``'s ``input_shape``).
    """

    step = steps.DenseStep

    def __init__(self, in_features, out_features=None):
        super().__init__()
        if out_features is None:  # Dense(out_features)
            in_features, out_features = None, in_features
        self.in_features = None if in_features is None else checks.positive_int("in_features", in_features)
        self.out_features = checks.positive_int("out_features", out_features)
        if self.in_features is not None:
            self._allocate()

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features}

    @staticmethod
    def param_shapes(config):
        return {"weight": (config["in_features"], config["out_features"]), "bias": (config["out_features"],)}

    inferable = (("in_features", "in_features"),)

    def build(self, shape):
        if shape is not None and self.in_features is None and len(shape) == 1:
            self.in_features = checks.positive_int("in_features", shape[0])
            self._allocate()
        return super().build(shape)

    def output_shape(self, shape):
        if self.in_features is None and len(shape) == 1:
            _inferred(self, "in_features")
        if tuple(shape) != (self.in_features,):
            expected = f"{self.in_features} features per row" if self.in_features else "feature rows (F,)"
            raise ShapeError(f"x: expected {expected}, got examples of shape {tuple(shape)}"
                             + (" (put a Flatten before it)" if len(shape) > 1 else ""))
        return (self.out_features,)

    def initialize(self, rng, feeds_relu):
        shape = self.params["weight"].shape
        self.params["weight"][...] = init_weight(rng, shape, shape[0], shape[1], feeds_relu)
        self.params["bias"][...] = 0


def init_weight(rng, shape, fan_in, fan_out, feeds_relu):
    """He normal for a layer feeding a ReLU, Glorot/Xavier uniform otherwise."""
    if feeds_relu:
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


LAYERS = {cls.__name__: cls for cls in (Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, ReLU, LeakyReLU, Tanh,
                                      Sigmoid, Dropout, BatchNorm2D, BatchNorm1D, Flatten, Dense, Add, Concatenate)}
__all__ = ["Layer", "Activation", *LAYERS, "register_layer", "layer_from_config", "walk"]


def register_layer(cls):
    """Make a layer class of your own loadable from model files, by its class name; use it as a
    decorator. The program that loads the file must have imported the class's module first."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ConfigError(f"register_layer: expected a subclass of fastcnn.Layer, got {cls!r}")
    known = LAYERS.get(cls.__name__)
    if known is not None and known is not cls and known.__module__ == __name__:
        raise ConfigError(f"register_layer: {cls.__name__} is a built-in layer's name; choose another")
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ConfigError(f"register_layer: a layer named {cls.__name__} is registered already, from "
                          f"{known.__module__}.{known.__qualname__}; model files name a layer by its class name "
                          f"alone, so two can't share one: rename one of them")
    LAYERS[cls.__name__] = cls  # (the same class defined again, as a notebook's cell run twice does: the new one)
    return cls


def layer_from_config(name, config):
    """Rebuild a layer from its class name and ``config()``; a foreign name is a clear error."""
    if name not in LAYERS:
        raise ShapeError(f"unknown layer type {name!r}; expected one of {sorted(LAYERS)}, or a layer of your own: "
                         f"import the module that defines it (decorated with @fastcnn.register_layer) before loading")
    return LAYERS[name](**config)
