"""Sequential: layers chained in order, with every parameter in one flat buffer.

One flat float32 buffer holds all parameters and another all gradients; each layer's
``params[name]`` and ``grads[name]`` are views into them. So the optimizer step, zeroing and
checkpointing are each one operation over one array.
"""

import numpy as np

from . import backends
from .errors import ShapeError
from .layers import Dense, Flatten, Layer, MaxPool2D, ReLU
from .loss import softmax

_SHAPE_ONLY = (MaxPool2D, Flatten)  # layers a ReLU can sit behind and still "follow" a layer


class Sequential:
    """A model made of ``layers`` in order.

    ``seed`` draws the initial weights (He for layers feeding a ReLU, Glorot otherwise);
    ``backend`` is ``"numba"`` (compiled kernels) or ``"numpy"`` (the reference).
    """

    def __init__(self, layers, seed=0, backend="numba"):
        self.layers = list(layers)
        if not self.layers or not all(isinstance(layer, Layer) for layer in self.layers):
            raise ShapeError(f"layers: expected a non-empty list of fastcnn layers, got {layers!r}")
        self.backend = backend
        self.kernels = backends.get(backend)
        self.seed = seed
        self._wire()
        rng = np.random.default_rng(seed)
        for i, layer in enumerate(self.layers):
            layer.initialize(rng, feeds_relu=self._feeds_relu(i))
        self._flatten_parameters()
        self._saved = None

    def _feeds_relu(self, i):
        for layer in self.layers[i + 1:]:
            if not isinstance(layer, _SHAPE_ONLY):
                return isinstance(layer, ReLU)
        return False

    def _wire(self):
        has_params_before = False
        for i, layer in enumerate(self.layers):
            prev = self.layers[i - 1] if i > 0 else None
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            if isinstance(layer, Dense):
                layer.relu = isinstance(nxt, ReLU)
            elif isinstance(layer, ReLU):
                # A Dense before applies it in its fused kernel; else a MaxPool2D after applies it
                # to the pooled values (relu(max(x)) = max(relu(x)), same gradient, 4x less work).
                by_pool = isinstance(nxt, MaxPool2D) and not isinstance(prev, Dense)
                layer.fused = isinstance(prev, Dense) or by_pool
                if by_pool:
                    nxt.relu = True
            if hasattr(layer, "needs_input_grad"):
                # Nothing learnable before this layer: its input gradient would go unused.
                layer.needs_input_grad = has_params_before
            has_params_before = has_params_before or bool(layer.params)

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

    def _run(self, x):
        x = _as_input(x)
        saved = []
        for i, layer in enumerate(self.layers):
            try:
                x, s = layer.forward(x, self.kernels)
            except ShapeError as e:
                raise ShapeError(f"layer {i} {layer!r}: {e}") from None
            saved.append(s)
        return x, saved

    def forward(self, x):
        """Logits for a batch ``x``; remembers what ``backward`` needs."""
        logits, self._saved = self._run(x)
        return logits

    def backward(self, dlogits):
        """Fill every layer's ``grads`` from the gradient of the loss w.r.t. the logits."""
        if self._saved is None:
            raise RuntimeError("backward() needs a forward() first")
        dy = dlogits
        for layer, saved in zip(reversed(self.layers), reversed(self._saved)):
            dy = layer.backward(dy, saved, self.kernels)
            if dy is None:  # the first learnable layer: nothing before it needs a gradient
                break
        self._saved = None

    def predict(self, x, batch_size=128):
        """Class probabilities (N, classes), computed ``batch_size`` images at a time.

        128 at a time keeps the activations in cache: at batch 1000 the same work took twice as
        long (measured). Keeps no state, so several threads may call it on one model at once. Each batch is
        converted to float32 on its own, so memory stays bounded whatever the input's dtype.
        """
        _as_input(x[:1] if isinstance(x, np.ndarray) else x)  # the checks, not a copy of all of x
        out = [softmax(self._run(x[i:i + batch_size])[0]) for i in range(0, len(x), batch_size)]
        return np.concatenate(out)

    def save(self, path, optimizer=None):
        """Write this model (and ``optimizer``'s state) to one ``.npz``; ``fastcnn.load`` reads it."""
        from .checkpoint import save  # checkpoint builds Sequentials: import late, no cycle
        save(path, self, optimizer)

    def __repr__(self):
        inner = ",\n    ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n    {inner}\n], backend={self.backend!r})"


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
