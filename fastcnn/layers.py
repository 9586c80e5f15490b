"""The layers: plain holders of configuration and parameters.

A layer is what the user built and nothing more: ``Dense`` is a dense layer, ``ReLU`` a ReLU.
What actually runs inside a model, fused or not, is decided by the model's execution plan
(``plan.py``), which never changes the layers. A layer's own ``forward(x)`` computes what its
name says with the checked kernels, for use on its own.

Parameters live in ``layer.params[name]`` and their gradients in ``layer.grads[name]``; inside a
``Sequential`` both are views into one flat buffer each (see ``model.py``). ``output_shape``
gives the shape of one example out of the layer for one example in, and checks that it fits.
"""

import numpy as np

from . import kernels
from .errors import ConfigError, ShapeError
from .kernels import checks


class Layer:
    """Base class: no parameters, no state.

    A layer of your own subclasses this and implements ``forward(x)`` and ``backward(dy)`` in
    NumPy (``backward`` fills ``self.grads`` and returns the input gradient), ``output_shape``,
    and, if it has parameters, ``param_shapes`` and ``initialize``; ``register_layer`` lets model
    files that hold it load again.
    """

    def __init__(self):
        self.params, self.grads, self.buffers = {}, {}, {}

    def config(self):
        """The constructor's arguments, enough to rebuild this layer (saved in model files)."""
        return {}

    @staticmethod
    def param_shapes(config):
        """The shapes of the parameters a layer with this ``config()`` has, without building it
        (model files are checked against them before anything is allocated)."""
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

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__}.backward: a layer of your own needs forward and backward")

    def _allocate(self):
        config = self.config()
        self.params = {name: np.zeros(shape, np.float32) for name, shape in self.param_shapes(config).items()}
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.buffers = {name: np.zeros(shape, np.float32) for name, shape in self.buffer_shapes(config).items()}
        self.initialize(np.random.default_rng(0), feeds_relu=False)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if v is not None)
        return f"{type(self).__name__}({args})"


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
        oh, ow = checks.conv_output_size((1, h, w, c), self.params["weight"].shape, self.stride, self.pad)
        return oh, ow, self.out_channels

    def initialize(self, rng, feeds_relu):
        fan_in = self.kernel_size ** 2 * self.in_channels
        fan_out = self.kernel_size ** 2 * self.out_channels
        self.params["weight"][...] = init_weight(rng, self.params["weight"].shape, fan_in, fan_out, feeds_relu)
        self.params["bias"][...] = 0

    def forward(self, x, k=kernels):
        return k.conv2d_forward(x, self.params["weight"], self.params["bias"], self.stride, self.pad)


class MaxPool2D(Layer):
    """Max-pooling over ``size`` x ``size`` windows every ``stride`` pixels (default: ``size``)."""

    def __init__(self, size, stride=None):
        super().__init__()
        self.size = checks.positive_int("size", size)
        self.stride = self.size if stride is None else checks.positive_int("stride", stride)

    def config(self):
        return {"size": self.size, "stride": self.stride}

    def output_shape(self, shape):
        h, w, c = _image(shape, f"a {type(self).__name__}")
        return (*checks.pool_output_size((1, h, w, c), self.size, self.stride), c)

    def forward(self, x, k=kernels):
        return k.maxpool_forward(x, self.size, self.stride)[0]


class AvgPool2D(MaxPool2D):
    """Average-pooling over ``size`` x ``size`` windows every ``stride`` pixels (default: ``size``)."""

    def forward(self, x, k=kernels):
        return k.avgpool_forward(x, self.size, self.stride)


class GlobalAvgPool2D(Layer):
    """(N, H, W, C) -> (N, C): the mean of each channel over the image."""

    def output_shape(self, shape):
        return (_image(shape, "a GlobalAvgPool2D")[2],)

    def forward(self, x, k=kernels):
        return k.global_avgpool_forward(x)


class ReLU(Layer):
    """max(x, 0)."""

    def forward(self, x, k=kernels):
        return k.relu_forward(x)


class Tanh(Layer):
    """tanh(x)."""

    def forward(self, x, k=kernels):
        return k.tanh_forward(x)


class Sigmoid(Layer):
    """1 / (1 + exp(-x))."""

    def forward(self, x, k=kernels):
        return k.sigmoid_forward(x)


class Dropout(Layer):
    """Inverted dropout: in training, each value is zeroed with probability ``p`` and the rest
    scaled by 1 / (1 - p); in evaluation, the identity. The masks are a function of the run's
    seed, the optimizer's step and the layer's position, so a resumed run draws the same ones."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = checks.number("p", p, lambda v: 0 <= v < 1, "a drop probability in [0, 1)")

    def config(self):
        return {"p": self.p}

    def forward(self, x, k=kernels):
        return x.copy()  # on its own a layer is in evaluation mode; the model's plan drops in training


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

    dims = 3  # the rank of one example

    def __init__(self, channels=None, momentum=0.1, eps=1e-5):
        super().__init__()
        self.channels = None if channels is None else checks.positive_int("channels", channels)
        self.momentum = checks.number("momentum", momentum, lambda v: 0 <= v <= 1, "a value in [0, 1]")
        self.eps = checks.number("eps", eps, lambda v: v > 0, "a value > 0")
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
        eps = weight.dtype.type(self.eps)
        s = self.params["weight"] / np.sqrt(self.buffers["running_var"].astype(weight.dtype) + eps)
        return weight * s, (bias - self.buffers["running_mean"]) * s + self.params["bias"]

    def forward(self, x, k=kernels):
        """Evaluation mode (the running statistics); the model's plan runs the training mode."""
        return k.batchnorm_eval_forward(x, self.params["weight"], self.params["bias"], self.buffers["running_mean"],
                                        self.buffers["running_var"], self.eps)


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

    def output_shape(self, shape):
        return (int(np.prod(shape)),)

    def forward(self, x, k=kernels):
        return x.reshape(x.shape[0], -1)


class Dense(Layer):
    """Fully connected: y = x @ weight + bias; weight (in, out), bias (out,).

    ``Dense(in_features, out_features)``, or ``Dense(out_features)`` with ``in_features`` taken
    from the input (see ``Sequential``'s ``input_shape``).
    """

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

    def forward(self, x, k=kernels):
        return k.dense_forward(x, self.params["weight"], self.params["bias"])


def init_weight(rng, shape, fan_in, fan_out, feeds_relu):
    """He normal for a layer feeding a ReLU, Glorot/Xavier uniform otherwise."""
    if feeds_relu:
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


LAYERS = {cls.__name__: cls for cls in (Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, ReLU, Tanh, Sigmoid,
                                      Dropout, BatchNorm2D, BatchNorm1D, Flatten, Dense)}


def register_layer(cls):
    """Make a layer class of your own loadable from model files, by its class name; use it as a
    decorator. The program that loads the file must have imported the class's module first."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ConfigError(f"register_layer: expected a subclass of fastcnn.Layer, got {cls!r}")
    known = LAYERS.get(cls.__name__)
    if known is not None and known is not cls and known.__module__ == __name__:
        raise ConfigError(f"register_layer: {cls.__name__} is a built-in layer's name; choose another")
    LAYERS[cls.__name__] = cls
    return cls


def layer_from_config(name, config):
    """Rebuild a layer from its class name and ``config()``; a foreign name is a clear error."""
    if name not in LAYERS:
        raise ShapeError(f"unknown layer type {name!r}; expected one of {sorted(LAYERS)}, or a layer of your own: "
                         f"import the module that defines it (decorated with @fastcnn.register_layer) before loading")
    return LAYERS[name](**config)
