"""The named networks as plain data, and the arithmetic a step of them takes.

``describe`` turns a fastcnn model into a list of layers, each a dict of plain values: its kind
(the fastcnn class name), the arguments that build it again, the shape of one example in and out
(NHWC), and whether it has parameters. ``compare.py`` sends that list to every engine's worker,
which builds the same network with its own layers (the peers' interpreters need not have
fastcnn). ``flops`` counts the work of a step from those shapes alone, one rule for every network.
"""

INPUT_SHAPES = {"original": (28, 28, 1), "deep": (28, 28, 1), "cifar": (32, 32, 3), "resnet": (28, 28, 1)}
MERGES = ("Add", "Concatenate")  # the layers that join a graph's branches
CLASSES = 10


def build(name, seed=0):
    """The named network of ``fastcnn.architectures``, built for its benchmark input shape."""
    from fastcnn.architectures import ARCHITECTURES
    return ARCHITECTURES[name].build(INPUT_SHAPES[name], CLASSES, seed=seed)


def describe(model, input_shape):
    """The layers of a fastcnn model as plain dicts (see the module's docstring); ``inputs``: the
    positions of each layer's inputs among them (-1: the network's input), ``in`` the shape of
    its first input."""
    from fastcnn.layers import walk
    shapes = walk(model.layers, tuple(input_shape), sources=model.sources)
    layers = []
    for i, (layer, sources) in enumerate(zip(model.layers, model.sources)):
        d = {"kind": type(layer).__name__, "inputs": list(sources), "in": list(shapes[sources[0] + 1]),
             "out": list(shapes[i + 1]), "params": bool(layer.params)}
        d.update(layer.config())
        if d["kind"] == "Conv2D":
            d["pad"] = layer.pad  # "same" resolved to pixels: every engine pads the same way
        layers.append(d)
    return layers


def is_chain(layers):
    """Whether each layer takes the one before it (else a peer builds a graph)."""
    return all(layer["inputs"] == [i - 1] for i, layer in enumerate(layers))


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
    weight gradient and the input gradient), or 1 where nothing learnable leads to it and no
    engine computes the input gradient (the first convolution's, a shortcut's from the input)."""
    learnable = []
    for layer in layers[:i]:
        learnable.append(any(j >= 0 and (layers[j]["params"] or learnable[j]) for j in layer["inputs"]))
    return 2 if any(j >= 0 and (layers[j]["params"] or learnable[j]) for j in layers[i]["inputs"]) else 1


def flops(layers):
    """FLOPs of one example: ``{"forward": inference, "train": forward and backward}``."""
    forward = sum(layer_flops(layer) for layer in layers)
    backward = sum(layer_flops(layer) * backward_factor(layers, i) for i, layer in enumerate(layers))
    return {"forward": forward, "train": forward + backward}
