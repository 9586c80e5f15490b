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
from .errors import ShapeError
from .kernels import checks


class Layer:
    """Base class: no parameters."""

    def __init__(self):
        self.params, self.grads = {}, {}

    def config(self):
        """The constructor's arguments, enough to rebuild this layer (saved in model files)."""
        return {}

    @staticmethod
    def param_shapes(config):
        """The shapes of the parameters a layer with this ``config()`` has, without building it
        (model files are checked against them before anything is allocated)."""
        return {}

    def output_shape(self, shape):
        """The shape of one example out of this layer, for ``shape`` in (``ShapeError`` if it
        does not fit)."""
        return tuple(shape)

    def initialize(self, rng, feeds_relu):
        pass

    def _allocate(self):
        self.params = {name: np.zeros(shape, np.float32) for name, shape in self.param_shapes(self.config()).items()}
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.initialize(np.random.default_rng(0), feeds_relu=False)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _image(shape, what):
    if len(shape) != 3:
        raise ShapeError(f"x: expected images (H, W, C) for {what}, got examples of shape {tuple(shape)}")
    return shape


class Conv2D(Layer):
    """2-D convolution over NHWC images; weight (KH, KW, C_in, C_out), bias (C_out,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.in_channels = checks.positive_int("in_channels", in_channels)
        self.out_channels = checks.positive_int("out_channels", out_channels)
        self.kernel_size = checks.positive_int("kernel_size", kernel_size)
        self.stride = checks.positive_int("stride", stride)
        self.padding = checks.non_negative_int("padding", padding)
        self._allocate()

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    @staticmethod
    def param_shapes(config):
        k = config["kernel_size"]
        return {"weight": (k, k, config["in_channels"], config["out_channels"]), "bias": (config["out_channels"],)}

    def output_shape(self, shape):
        h, w, c = _image(shape, "a Conv2D")
        oh, ow = checks.conv_output_size((1, h, w, c), self.params["weight"].shape, self.stride, self.padding)
        return oh, ow, self.out_channels

    def initialize(self, rng, feeds_relu):
        fan_in = self.kernel_size ** 2 * self.in_channels
        fan_out = self.kernel_size ** 2 * self.out_channels
        self.params["weight"][...] = init_weight(rng, self.params["weight"].shape, fan_in, fan_out, feeds_relu)
        self.params["bias"][...] = 0

    def forward(self, x, k=kernels):
        return k.conv2d_forward(x, self.params["weight"], self.params["bias"], self.stride, self.padding)


class MaxPool2D(Layer):
    """Max-pooling over ``size`` x ``size`` windows every ``stride`` pixels (default: ``size``)."""

    def __init__(self, size, stride=None):
        super().__init__()
        self.size = checks.positive_int("size", size)
        self.stride = self.size if stride is None else checks.positive_int("stride", stride)

    def config(self):
        return {"size": self.size, "stride": self.stride}

    def output_shape(self, shape):
        h, w, c = _image(shape, "a MaxPool2D")
        return (*checks.pool_output_size((1, h, w, c), self.size, self.stride), c)

    def forward(self, x, k=kernels):
        return k.maxpool_forward(x, self.size, self.stride)[0]


class ReLU(Layer):
    """max(x, 0)."""

    def forward(self, x, k=kernels):
        return k.relu_forward(x)


class Flatten(Layer):
    """(N, ...) -> (N, features), in the order NHWC keeps them."""

    def output_shape(self, shape):
        return (int(np.prod(shape)),)

    def forward(self, x, k=kernels):
        return x.reshape(x.shape[0], -1)


class Dense(Layer):
    """Fully connected: y = x @ weight + bias; weight (in, out), bias (out,)."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features = checks.positive_int("in_features", in_features)
        self.out_features = checks.positive_int("out_features", out_features)
        self._allocate()

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features}

    @staticmethod
    def param_shapes(config):
        return {"weight": (config["in_features"], config["out_features"]), "bias": (config["out_features"],)}

    def output_shape(self, shape):
        if tuple(shape) != (self.in_features,):
            raise ShapeError(f"x: expected {self.in_features} features per row, got examples of shape {tuple(shape)}"
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


LAYERS = {cls.__name__: cls for cls in (Conv2D, MaxPool2D, ReLU, Flatten, Dense)}


def layer_from_config(name, config):
    """Rebuild a layer from its class name and ``config()``; a foreign name is a clear error."""
    if name not in LAYERS:
        raise ShapeError(f"unknown layer type {name!r}; expected one of {sorted(LAYERS)}")
    return LAYERS[name](**config)
