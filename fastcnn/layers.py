"""The layers: thin wrappers that hold parameters and call a kernel pair.

A layer's ``forward(x, k)`` returns ``(y, saved)``: the output, and exactly what its backward
needs. ``backward(dy, saved, k)`` returns the input gradient and fills ``layer.grads``. ``k`` is
the kernel module (``fastcnn.kernels`` or its NumPy twin ``fastcnn.kernels.reference``), so one
model runs on either backend. Keeping ``saved`` out of the layer lets several threads run
inference on one model at once.

Parameters live in ``layer.params[name]`` and their gradients in ``layer.grads[name]``; inside a
``Sequential`` both are views into one flat buffer each (see ``model.py``).
"""

import numpy as np

from .errors import ShapeError
from .kernels import checks


class Layer:
    """Base class: no parameters, no state."""

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

    def initialize(self, rng, feeds_relu):
        pass

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class Conv2D(Layer):
    """2-D convolution over NHWC images; weight (KH, KW, C_in, C_out), bias (C_out,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.in_channels = checks.positive_int("in_channels", in_channels)
        self.out_channels = checks.positive_int("out_channels", out_channels)
        self.kernel_size = checks.positive_int("kernel_size", kernel_size)
        self.stride = checks.positive_int("stride", stride)
        self.padding = checks.non_negative_int("padding", padding)
        self.needs_input_grad = True  # Sequential turns this off for a first layer
        self.params = {name: np.zeros(shape, np.float32) for name, shape in self.param_shapes(self.config()).items()}
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.initialize(np.random.default_rng(0), feeds_relu=False)

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    @staticmethod
    def param_shapes(config):
        k = config["kernel_size"]
        return {"weight": (k, k, config["in_channels"], config["out_channels"]), "bias": (config["out_channels"],)}

    def initialize(self, rng, feeds_relu):
        fan_in = self.kernel_size ** 2 * self.in_channels
        fan_out = self.kernel_size ** 2 * self.out_channels
        self.params["weight"][...] = init_weight(rng, self.params["weight"].shape, fan_in, fan_out, feeds_relu)
        self.params["bias"][...] = 0

    def forward(self, x, k):
        return k.conv2d_forward(x, self.params["weight"], self.params["bias"], self.stride, self.padding), x

    def backward(self, dy, x, k):
        dx, dw, db = k.conv2d_backward(dy, x, self.params["weight"], self.stride, self.padding,
                                       need_dx=self.needs_input_grad)
        self.grads["weight"][...] = dw
        self.grads["bias"][...] = db
        return dx


class MaxPool2D(Layer):
    """Max-pooling over ``size`` x ``size`` windows every ``stride`` pixels (default: ``size``)."""

    def __init__(self, size, stride=None):
        super().__init__()
        self.size = checks.positive_int("size", size)
        self.stride = self.size if stride is None else checks.positive_int("stride", stride)
        # Set by Sequential when a ReLU comes just before: max(relu(x)) = relu(max(x)), with the
        # same gradient, so the ReLU runs here, on 1/size^2 of the values.
        self.relu = False

    def config(self):
        return {"size": self.size, "stride": self.stride}

    def forward(self, x, k):
        y, argmax = k.maxpool_forward(x, self.size, self.stride)
        if self.relu:
            y = k.relu_forward(y)
        return y, (argmax, x.shape, y)

    def backward(self, dy, saved, k):
        argmax, x_shape, y = saved
        if self.relu:
            dy = k.relu_backward(dy, y)
        return k.maxpool_backward(dy, argmax, x_shape)


class ReLU(Layer):
    """max(x, 0). After a Dense, or before a MaxPool2D, the neighbour applies it (in the Dense's
    fused kernel, or after the pooling) and this layer passes values through."""

    def __init__(self):
        super().__init__()
        self.fused = False  # set by Sequential when the layer before applies this ReLU itself

    def forward(self, x, k):
        if self.fused:
            return x, None
        y = k.relu_forward(x)
        return y, y

    def backward(self, dy, y, k):
        return dy if self.fused else k.relu_backward(dy, y)


class Flatten(Layer):
    """(N, ...) -> (N, features), in the order NHWC keeps them."""

    def forward(self, x, k):
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, dy, x_shape, k):
        return dy.reshape(x_shape)


class Dense(Layer):
    """Fully connected: y = x @ weight + bias; weight (in, out), bias (out,)."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features = checks.positive_int("in_features", in_features)
        self.out_features = checks.positive_int("out_features", out_features)
        self.relu = False  # set by Sequential when a ReLU follows: then the fused kernel runs
        self.needs_input_grad = True
        self.params = {name: np.zeros(shape, np.float32) for name, shape in self.param_shapes(self.config()).items()}
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.initialize(np.random.default_rng(0), feeds_relu=False)

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features}

    @staticmethod
    def param_shapes(config):
        return {"weight": (config["in_features"], config["out_features"]), "bias": (config["out_features"],)}

    def initialize(self, rng, feeds_relu):
        shape = self.params["weight"].shape
        self.params["weight"][...] = init_weight(rng, shape, shape[0], shape[1], feeds_relu)
        self.params["bias"][...] = 0

    def forward(self, x, k):
        w, b = self.params["weight"], self.params["bias"]
        if self.relu:
            y = k.dense_relu_forward(x, w, b)
            return y, (x, y)
        return k.dense_forward(x, w, b), (x, None)

    def backward(self, dy, saved, k):
        x, y = saved
        w = self.params["weight"]
        if self.relu:
            dx, dw, db = k.dense_relu_backward(dy, x, w, y, need_dx=self.needs_input_grad)
        else:
            dx, dw, db = k.dense_backward(dy, x, w, need_dx=self.needs_input_grad)
        self.grads["weight"][...] = dw
        self.grads["bias"][...] = db
        return dx


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
