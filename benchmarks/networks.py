"""The named networks as plain data, and the arithmetic a step of them takes.

``describe`` turns a fastcnn model into a list of layers, each a dict of plain values: its kind
(the fastcnn class name), the arguments that build it again, the shape of one example in and out
(NHWC), and whether it has parameters. ``compare.py`` sends that list to every engine's worker,
which builds the same network with its own layers (the peers' interpreters need not have
fastcnn). ``flops`` counts the work of a step from those shapes alone, one rule for every network.
"""

INPUT_SHAPES = {"original": (28, 28, 1), "deep": (28, 28, 1), "cifar": (32, 32, 3)}
CLASSES = 10


def build(name, seed=0):
    """The named network of ``fastcnn.architectures``, built for its benchmark input shape."""
    from fastcnn.architectures import ARCHITECTURES
    return ARCHITECTURES[name].build(INPUT_SHAPES[name], CLASSES, seed=seed)


def describe(model, input_shape):
    """The layers of a fastcnn ``Sequential`` as plain dicts (see the module's docstring)."""
    layers, shape = [], tuple(input_shape)
    for layer in model.layers:
        out = tuple(layer.output_shape(shape))
        d = {"kind": type(layer).__name__, "in": list(shape), "out": list(out), "params": bool(layer.params)}
        d.update(layer.config())
        if d["kind"] == "Conv2D":
            d["pad"] = layer.pad  # "same" resolved to pixels: every engine pads the same way
        layers.append(d)
        shape = out
    return layers


def layer_flops(layer):
    """FLOPs (2 per multiply-add) of one example's forward pass through a Conv2D or Dense layer,
    as a direct convolution or a plain product does them; 0 for the other layers, whose work is
    a few operations per value. A faster algorithm (Winograd, ...) counts as the work it replaces."""
    if layer["kind"] == "Conv2D":
        oh, ow, c_out = layer["out"]
        return 2 * oh * ow * c_out * layer["kernel_size"] ** 2 * layer["in"][2]
    if layer["kind"] == "Dense":
        return 2 * layer["in"][0] * layer["out"][0]
    return 0


def backward_factor(layers, i):
    """How many forward passes' worth of products layer ``i``'s backward pass makes: 2 (the
    weight gradient and the input gradient), or 1 where nothing learnable comes before it and
    no engine computes the input gradient (the first convolution's)."""
    return 2 if any(layer["params"] for layer in layers[:i]) else 1


def flops(layers):
    """FLOPs of one example: ``{"forward": inference, "train": forward and backward}``."""
    forward = sum(layer_flops(layer) for layer in layers)
    backward = sum(layer_flops(layer) * backward_factor(layers, i) for i, layer in enumerate(layers))
    return {"forward": forward, "train": forward + backward}
