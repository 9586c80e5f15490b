"""Graphs of layers, in the Keras functional form: a layer called on a tensor records an edge.

    x = fastcnn.Input((28, 28, 1))
    h = fastcnn.ReLU()(fastcnn.Conv2D(16, 3, padding="same")(x))
    y = fastcnn.Add()([h, fastcnn.Conv2D(16, 1)(x)])
    model = fastcnn.Model(x, fastcnn.Dense(10)(fastcnn.Flatten()(fastcnn.GlobalAvgPool2D()(y))))

A ``Tensor`` is a symbolic value: the shape of one example and where it comes from (the layer
and its input tensors; none for an ``Input``). Calling a layer builds it for the shapes coming in
(sizes left to inference are taken from them, and a layer that does not fit says so there, at the
line that made the edge). ``order`` turns the tensors between an input and an output into what a
model holds: its layers in an order that respects the graph, and for each the positions of its
inputs (-1: the model's input). A layer is applied once: its weights are one node of one graph.
"""

from .errors import ShapeError
from .kernels import checks


class Tensor:
    """The output of ``layer`` applied to ``inputs`` (an ``Input`` has neither): one example's ``shape``."""

    def __init__(self, shape, layer=None, inputs=()):
        self.shape, self.layer, self.inputs = tuple(shape), layer, tuple(inputs)

    def __repr__(self):
        return f"Tensor({self.shape}, from {'Input' if self.layer is None else repr(self.layer)})"


def Input(shape):
    """The input of a graph model: a tensor of examples of ``shape`` (H, W, C for images)."""
    return Tensor(example_shape(shape))


def example_shape(shape):
    """A tuple of positive ints: the shape of one example."""
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) == 0:
        raise ShapeError(f"input_shape: expected the shape of one example, e.g. (28, 28, 1), got {shape!r}")
    return tuple(checks.positive_int("input_shape", d) for d in shape)


def apply(layer, inputs):
    """``layer(inputs)``: build ``layer`` for the input tensors' shapes and return its output tensor."""
    merges = layer.arity is None
    if merges:
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ShapeError(f"{layer!r}: expected a list of two or more tensors, got {_kind(inputs)}")
        tensors = list(inputs)
    else:
        tensors = [inputs]
    for t in tensors:
        if not isinstance(t, Tensor):
            raise ShapeError(f"{layer!r}: expected {'tensors' if merges else 'a tensor'} (fastcnn.Input(...) or a "
                             f"layer's output), got {_kind(inputs)}")
    if getattr(layer, "_applied", False):
        raise ShapeError(f"{layer!r} is already used in a graph: a layer is one node, with weights of its own; "
                         f"for a second use, make a second layer")
    if getattr(layer, "_owner", None) is not None and layer._owner() is not None:
        raise ShapeError(f"{layer!r} already belongs to a model: make a new layer for this graph")
    shapes = [t.shape for t in tensors]
    try:
        shape = layer.build(shapes if merges else shapes[0])
    except ShapeError as e:  # said at the line that made the edge, naming the layer
        raise ShapeError(f"{layer!r}: {e}") from None
    layer._applied = True
    return Tensor(shape, layer, tensors)


def _kind(inputs):
    if isinstance(inputs, (list, tuple)):
        return f"a {type(inputs).__name__} of {len(inputs)}: [{', '.join(type(t).__name__ for t in inputs)}]"
    return type(inputs).__name__


def order(inputs, outputs):
    """``(input tensor, layers, sources)`` of the graph from ``inputs`` to ``outputs`` (a tensor or
    a list of one each): the layers in an order that respects the graph, the output's last, and for
    each the positions of its inputs in that order (-1: the input)."""
    x, y = _one(inputs, "inputs"), _one(outputs, "outputs")
    if x.layer is not None:
        raise ShapeError(f"inputs: expected the graph's fastcnn.Input(...), got the output of {x.layer!r}")
    if y.layer is None:
        raise ShapeError("outputs: expected a layer's output; got an Input: a model needs at least one layer")
    position, layers, sources = {id(x): -1}, [], []
    stack = [(y, False)]
    while stack:  # depth first, each tensor after all its inputs
        t, ready = stack.pop()
        if id(t) in position:
            continue
        if ready:
            sources.append(tuple(position[id(s)] for s in t.inputs))
            position[id(t)] = len(layers)
            layers.append(t.layer)
            continue
        if t.layer is None:
            raise ShapeError(f"outputs: depends on an Input of shape {t.shape} other than the model's input "
                             f"({x.shape}); a model has one input")
        stack.append((t, True))
        stack.extend((s, False) for s in reversed(t.inputs) if id(s) not in position)
    return x, layers, sources


def _one(tensors, name):
    if isinstance(tensors, (list, tuple)):
        if len(tensors) != 1:
            raise ShapeError(f"{name}: expected one tensor (a model has one input and one output), got {len(tensors)}")
        tensors = tensors[0]
    if not isinstance(tensors, Tensor):
        raise ShapeError(f"{name}: expected a tensor (fastcnn.Input(...) or a layer's output), got "
                         f"{type(tensors).__name__}")
    return tensors
