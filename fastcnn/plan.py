"""The execution plan: what a ``Sequential`` actually runs.

The user's layers stay as written. ``Plan`` walks them and, at each position, takes the first entry
of ``PATTERNS`` whose layer types match there: Conv2D, ReLU, MaxPool2D become one fused step (the
full-size convolution output never goes to memory); Dense, ReLU another; ReLU, MaxPool2D pools
first (relu(max(x)) = max(relu(x)), with the same gradient, on 1/size^2 of the values); any other
layer is a plain step of its own. Adding a fusion is one entry in ``PATTERNS`` and one step class.

A plan is made for one example shape, and making it checks every layer against the shape that
reaches it, once: a wrong shape is reported with the layer's index before anything runs. Each
step's buffers (its output, the argmax it saves, its input gradient) live in a workspace made
once per batch size and reused; the steps call the kernels' unchecked ``*_into`` cores, on either
backend. The softmax cross-entropy that ends a training step is the plan's too (``train_step``).
The first step with parameters, and every step before it, skips its input gradient.
"""

import threading

import numpy as np

from .errors import ShapeError
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU

_KEEP = 4  # workspaces kept per plan and mode (the batch size, the last batch of an epoch, ...)


class Step:
    """One unit of execution over one or more layers: ``forward`` and ``backward`` side by side.

    ``shapes`` are the example shapes into each of the step's layers and out of the last one.
    ``forward(k, x, ws)`` returns the step's output; ``backward(k, dy, ws)`` fills the layers'
    ``grads`` and returns the input gradient (None where it is skipped). ``ws`` is the step's
    workspace: a dict of the buffers ``buffers(n, train)`` asked for, and what forward saved.
    """

    def __init__(self, layers, shapes):
        self.layers, self.in_shape, self.out_shape = layers, shapes[0], shapes[-1]
        self.needs_input_grad = True  # the plan clears it where nothing learnable comes before

    @property
    def has_params(self):
        return any(layer.params for layer in self.layers)

    def buffers(self, n, train):
        """The arrays this step writes for a batch of ``n``: name -> (shape, dtype)."""
        need = {"y": ((n, *self.out_shape), np.float32)}
        if train and self.needs_input_grad:
            need["dx"] = ((n, *self.in_shape), np.float32)
        return need

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(type(layer).__name__ for layer in self.layers)})"


class ConvReluPool(Step):
    """Conv2D -> ReLU -> MaxPool2D in one pass each way (``kernels/conv_pool.py``)."""

    def __init__(self, layers, shapes):
        super().__init__(layers, shapes)
        self.conv, _, self.pool = layers
        self.conv_shape = shapes[1]

    def buffers(self, n, train):
        need = super().buffers(n, train)
        if train:
            need["argmax"] = ((n, *self.out_shape), np.int32)
        return need

    def forward(self, k, x, ws):
        conv, pool = self.conv, self.pool
        ws["x"] = x
        k.conv_relu_pool_forward_into(ws["y"], ws.get("argmax"), x, conv.params["weight"], conv.params["bias"],
                                      conv.stride, conv.padding, pool.size, pool.stride, self.conv_shape[1])
        return ws["y"]

    def backward(self, k, dy, ws):
        conv, pool = self.conv, self.pool
        dx = ws.get("dx")
        k.conv_relu_pool_backward_into(dx, conv.grads["weight"], conv.grads["bias"], dy, ws["x"],
                                       conv.params["weight"], ws["y"], ws["argmax"], conv.stride, conv.padding,
                                       pool.size, pool.stride, (len(dy), *self.conv_shape))
        return dx


class Conv(Step):
    def forward(self, k, x, ws):
        conv = self.layers[0]
        ws["x"] = x
        k.conv2d_forward_into(ws["y"], x, conv.params["weight"], conv.params["bias"], conv.stride, conv.padding)
        return ws["y"]

    def backward(self, k, dy, ws):
        conv = self.layers[0]
        dx = ws.get("dx")
        k.conv2d_backward_into(dx, conv.grads["weight"], conv.grads["bias"], dy, ws["x"], conv.params["weight"],
                               conv.stride, conv.padding)
        return dx


class DenseStep(Step):
    """Dense, or Dense -> ReLU with the ReLU fused into the pass after the product."""

    relu = False

    def forward(self, k, x, ws):
        dense = self.layers[0]
        ws["x"] = x
        k.dense_forward_into(ws["y"], x, dense.params["weight"], dense.params["bias"], self.relu)
        return ws["y"]

    def backward(self, k, dy, ws):
        dense = self.layers[0]
        dx = ws.get("dx")
        k.dense_backward_into(dx, dense.grads["weight"], dense.grads["bias"], dy, ws["x"], dense.params["weight"],
                              ws["y"], self.relu)
        return dx


class DenseRelu(DenseStep):
    relu = True


class Pool(Step):
    """MaxPool2D, or ReLU -> MaxPool2D run as pool then ReLU."""

    relu = False

    def buffers(self, n, train):
        need = super().buffers(n, train)
        need["argmax"] = ((n, *self.out_shape), np.int32)  # the kernel always writes it
        if self.relu and "dx" in need:
            need["dpool"] = ((n, *self.out_shape), np.float32)  # dy through the ReLU
        return need

    def forward(self, k, x, ws):
        pool = self.layers[-1]
        k.maxpool_forward_into(ws["y"], ws["argmax"], x, pool.size, pool.stride)
        if self.relu:
            k.relu_forward_into(ws["y"], ws["y"])
        return ws["y"]

    def backward(self, k, dy, ws):
        dx = ws.get("dx")
        if dx is not None:
            if self.relu:
                k.relu_backward_into(ws["dpool"], dy, ws["y"])
                dy = ws["dpool"]
            k.maxpool_backward_into(dx, dy, ws["argmax"])
        return dx


class ReluPool(Pool):
    relu = True


class Relu(Step):
    def forward(self, k, x, ws):
        k.relu_forward_into(ws["y"], x)
        return ws["y"]

    def backward(self, k, dy, ws):
        dx = ws.get("dx")
        if dx is not None:
            k.relu_backward_into(dx, dy, ws["y"])
        return dx


class FlattenStep(Step):
    """A reshape: no buffers, no work."""

    def buffers(self, n, train):
        return {}

    def forward(self, k, x, ws):
        return x.reshape(len(x), -1)

    def backward(self, k, dy, ws):
        return dy.reshape(len(dy), *self.in_shape) if self.needs_input_grad else None


# Tried in order at each position: the first whose layer types match there wins.
PATTERNS = [
    ((Conv2D, ReLU, MaxPool2D), ConvReluPool),
    ((Dense, ReLU), DenseRelu),
    ((ReLU, MaxPool2D), ReluPool),
    ((Conv2D,), Conv),
    ((Dense,), DenseStep),
    ((MaxPool2D,), Pool),
    ((ReLU,), Relu),
    ((Flatten,), FlattenStep),
]


class Plan:
    """The steps for ``layers`` on examples of ``example_shape``, run with ``kernels``."""

    def __init__(self, layers, example_shape, kernels):
        self.kernels = kernels
        shapes = [tuple(example_shape)]
        for i, layer in enumerate(layers):
            try:
                shapes.append(tuple(layer.output_shape(shapes[-1])))
            except ShapeError as e:
                raise ShapeError(f"layer {i} {layer!r}: {e}") from None
        self.steps = []
        i = 0
        while i < len(layers):
            for types, step in PATTERNS:
                run = layers[i:i + len(types)]
                if len(run) == len(types) and all(type(layer) is t for layer, t in zip(run, types)):
                    self.steps.append(step(run, shapes[i:i + len(types) + 1]))
                    i += len(types)
                    break
            else:
                raise ShapeError(f"layer {i} {layers[i]!r}: no step of the execution plan runs this layer type")
        learnable_before = False
        for step in self.steps:
            step.needs_input_grad = learnable_before
            learnable_before = learnable_before or step.has_params
        self.output_shape = shapes[-1]
        self._train = {}
        self._infer = threading.local()  # each thread predicts in workspaces of its own

    def workspace(self, n, train):
        """The buffers of every step for a batch of ``n``, made on first use and then reused."""
        cache = self._train if train else self._infer.__dict__.setdefault("cache", {})
        ws = cache.pop(n, None)
        if ws is None:
            ws = [{name: np.empty(shape, dtype) for name, (shape, dtype) in step.buffers(n, train).items()}
                  for step in self.steps]
            if train:
                ws.append({"dlogits": np.empty((n, *self.output_shape), np.float32),
                           "row_loss": np.empty(n, np.float32)})
            while len(cache) >= _KEEP:
                cache.pop(next(iter(cache)))
        cache[n] = ws  # most recently used last
        return ws

    def forward(self, x, ws):
        for step, buffers in zip(self.steps, ws):
            x = step.forward(self.kernels, x, buffers)
        return x

    def backward(self, dy, ws):
        for step, buffers in zip(reversed(self.steps), reversed(ws[:len(self.steps)])):
            dy = step.backward(self.kernels, dy, buffers)
            if not step.needs_input_grad:
                break

    def train_step(self, x, labels):
        """Forward, softmax cross-entropy and backward for a checked batch: fills every layer's
        ``grads``; returns the mean loss and the logits (the workspace's: read, don't keep)."""
        ws = self.workspace(len(x), train=True)
        logits = self.forward(x, ws)
        loss = ws[-1]
        self.kernels.softmax_cross_entropy_into(loss["dlogits"], loss["row_loss"], logits, labels)
        self.backward(loss["dlogits"], ws)
        return float(loss["row_loss"].sum(dtype=np.float64) / len(x)), logits

    def probabilities_into(self, probs, x):
        """probs (N, classes) = softmax of the logits of a checked batch x, keeping no state."""
        self.kernels.softmax_into(probs, self.forward(x, self.workspace(len(x), train=False)))

    def __repr__(self):
        return "Plan([" + ", ".join(map(repr, self.steps)) + "])"
