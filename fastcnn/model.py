"""Sequential: layers chained in order, with every parameter in one flat buffer.

One flat float32 buffer holds all parameters and another all gradients; each layer's
``params[name]`` and ``grads[name]`` are views into them. So the optimizer step, zeroing and
checkpointing are each one operation over one array. What runs is the model's execution plan
(``plan.py``), made once per example shape; the layers themselves are never changed by it.
Arguments are checked here, where data enters (``forward``, ``backward``, ``predict``), once.
"""

import weakref

import numpy as np

from . import backends
from .errors import ShapeError
from .kernels import checks
from .layers import Flatten, Layer, MaxPool2D, ReLU
from .plan import Plan

_SHAPE_ONLY = (MaxPool2D, Flatten)  # layers a ReLU can sit behind and still "follow" a layer
# Images per kernel call in predict: 256 ran at 97% of the speed of 1000 with a quarter of the
# buffers, and 8% faster than 128 (64,600, 66,400 and 59,900 images/s, measured).
_PREDICT_BATCH = 256


class Sequential:
    """A model made of ``layers`` in order.

    ``seed`` draws the initial weights (He for layers feeding a ReLU, Glorot otherwise);
    ``backend`` is ``"numba"`` (compiled kernels) or ``"numpy"`` (the reference). A layer belongs
    to one model: its parameters become views into this model's buffers, so a second model is
    refused a layer that a live model holds (build a new layer for it).
    """

    def __init__(self, layers, seed=0, backend="numba"):
        self.layers = list(layers)
        if not self.layers or not all(isinstance(layer, Layer) for layer in self.layers):
            raise ShapeError(f"layers: expected a non-empty list of fastcnn layers, got {layers!r}")
        for i, layer in enumerate(self.layers):
            owner = getattr(layer, "_owner", None)
            if (owner is not None and owner() is not None) or self.layers.index(layer) != i:
                raise ShapeError(f"layers: layer {i} {layer!r} already belongs to a model; a layer's parameters "
                                 f"live in one model's buffers: build a new layer for this one")
        self.backend = backend
        self.kernels = backends.get(backend)
        self.seed = seed
        rng = np.random.default_rng(seed)
        for i, layer in enumerate(self.layers):
            layer.initialize(rng, feeds_relu=self._feeds_relu(i))
            layer._owner = weakref.ref(self)
        self._flatten_parameters()
        self._plans = {}
        self._pending = None  # the plan and workspace of the last forward, for backward

    def _feeds_relu(self, i):
        for layer in self.layers[i + 1:]:
            if not isinstance(layer, _SHAPE_ONLY):
                return isinstance(layer, ReLU)
        return False

    def _flatten_parameters(self):
        named = [(layer, name) for layer in self.layers for name in layer.params]
        total = sum(layer.params[name].size for layer, name in named)
        self.parameters = np.empty(total, np.float32)
        self.gradients = np.zeros(total, np.float32)
        offset = 0
        for layer, name in named:
            p = layer.params[name]
            view = self.parameters[offset:offset + p.size].reshape(p.shape)
            view[...] = p
            layer.params[name] = view
            layer.grads[name] = self.gradients[offset:offset + p.size].reshape(p.shape)
            offset += p.size

    def named_parameters(self):
        """``("3.weight", array)`` pairs in layer order: the names model files use."""
        return [(f"{i}.{name}", p) for i, layer in enumerate(self.layers) for name, p in layer.params.items()]

    def plan(self, example_shape):
        """The execution plan for examples of ``example_shape`` (made once, then kept)."""
        example_shape = tuple(example_shape)
        plan = self._plans.get(example_shape)
        if plan is None:
            plan = self._plans[example_shape] = Plan(self.layers, example_shape, self.kernels)
        return plan

    def forward(self, x):
        """Logits for a batch ``x``; remembers what ``backward`` needs."""
        x = _as_input(x)
        plan = self.plan(x.shape[1:])
        ws = plan.workspace(len(x), train=True)
        logits = plan.forward(x, ws)
        self._pending = plan, ws
        return logits.copy()  # the workspace's buffer is overwritten by the next batch

    def backward(self, dlogits):
        """Fill every layer's ``grads`` from the gradient of the loss w.r.t. the logits."""
        if self._pending is None:
            raise RuntimeError("backward() needs a forward() first")
        plan, ws = self._pending
        dlogits = checks.array("dlogits", dlogits, 1 + len(plan.output_shape), np.float32)
        checks.same_shape("dlogits", dlogits, ws[-1]["dlogits"].shape, "the logits' shape")
        self._pending = None
        plan.backward(dlogits, ws)

    def train_step(self, x, labels):
        """Forward, softmax cross-entropy and backward in one go, without copies: fills every
        layer's ``grads`` and returns ``(mean loss, logits)``; the logits are the plan's buffer,
        overwritten by the next step. (``fit`` checks all its data once and calls the plan's
        ``train_step`` itself.)"""
        x = _as_input(x)
        plan = self.plan(x.shape[1:])
        labels = checks.labels("labels", labels, len(x), plan.output_shape[0])
        self._pending = None
        return plan.train_step(x, labels)

    def predict(self, x, batch_size=_PREDICT_BATCH):
        """Class probabilities (N, classes), computed ``batch_size`` images at a time.

        Keeps no state, so several threads may call it on one model at once. Each batch is
        checked and converted to float32 on its own, so memory stays bounded whatever the input's
        dtype.
        """
        batch_size = checks.positive_int("batch_size", batch_size)
        batches = _checked_batches(x, batch_size)
        _, first = next(batches)
        plan = self.plan(first.shape[1:])
        probs = np.empty((len(x), *plan.output_shape), np.float32)
        plan.probabilities_into(probs[:len(first)], first)
        for i, batch in batches:
            plan.probabilities_into(probs[i:i + len(batch)], batch)
        return probs

    def save(self, path, optimizer=None):
        """Write this model (and ``optimizer``'s state) to one ``.npz``; ``fastcnn.load`` reads it."""
        from .checkpoint import save  # checkpoint builds Sequentials: import late, no cycle
        save(path, self, optimizer)

    def __repr__(self):
        inner = ",\n    ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n    {inner}\n], backend={self.backend!r})"


def _checked_batches(x, batch_size):
    """``(start, batch)`` for each ``batch_size`` images of ``x``, checked and as float32. A bad
    image is named by its index in all of ``x``: the batches before it passed, so the first bad
    one that ``check_images`` finds up to this batch's end is in this batch."""
    if not isinstance(x, np.ndarray) or x.ndim < 2 or len(x) == 0:
        _as_input(x)  # raises, saying what was expected
    for start in range(0, len(x), batch_size):
        try:
            yield start, _as_input(x[start:start + batch_size])
        except ShapeError:
            if start:
                from .data import check_images
                upto = x[:start + batch_size]
                check_images("x", upto.reshape(len(upto), -1, 1, 1))
            raise


def _as_input(x):
    """A float32 C-contiguous batch; integer images are refused (scale them to [0, 1] first)."""
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"x: expected a NumPy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(f"x: expected floating-point images (e.g. uint8 / 255), got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ShapeError(f"x: expected a non-empty batch (N, ...), got shape {x.shape}")
    # Two reductions, no temporary: NaN propagates through min and max, so one test catches
    # NaN, Inf and unscaled 0-255 pixels; only then is the slower check_images run, for its message.
    from .data import MAX_ABS_PIXEL, check_images
    if not (-MAX_ABS_PIXEL <= x.min() and x.max() <= MAX_ABS_PIXEL):
        check_images("x", x.reshape(len(x), -1, 1, 1))
    return np.ascontiguousarray(x, dtype=np.float32)
