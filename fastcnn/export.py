"""Export a model to ONNX, so ONNX Runtime (and any other ONNX runtime) can run it.

The graph takes what ``model.predict`` takes: a float32 batch in fastcnn's NHWC layout, input
``image`` of shape (batch, H, W, C) with a dynamic batch axis. A Transpose to NCHW comes first,
because ONNX's Conv and pools are NCHW; the weights are translated once, here: a Conv2D's
(KH, KW, C_in, C_out) becomes ONNX's (C_out, C_in, KH, KW), and a Dense's (in, out) is already
what Gemm wants. After a Flatten the features of an NCHW tensor come out channel-first, so the
rows of the Dense (and the values of a BatchNorm1D) that take them are permuted to that order,
rather than transposing back to NHWC at run time; the permutation is tracked through the layers
that keep one value per feature (activations, Dropout, BatchNorm1D) and undone by a Gather if
the model ends before a Dense.

Evaluation form throughout, as ``predict``: Dropout is left out (the identity), and a BatchNorm
right after a Conv2D or Dense is folded into its weight and bias (as the execution plan does);
any other BatchNorm becomes ONNX's BatchNormalization with the running statistics. The output is
``probabilities`` (softmax, (batch, classes)); ``logits=True`` adds the logits as a second
output, ``logits``. The metadata (``metadata_props``) holds the class names, the preprocessing
the model expects, the data set, fastcnn's version and the architecture.
"""

import json
from pathlib import Path

import numpy as np

from .version import __version__
from .data import CLASS_NAMES, IMAGE_SHAPES
from .errors import ExportError, FastCNNError, ShapeError
from .fileio import atomic_write, check_writable, taken
from .model import checked
from .checkpoint import architecture
from .layers import (Add, AvgPool2D, BatchNorm1D, BatchNorm2D, Concatenate, Conv2D, Dense, Dropout, Flatten,
                     GlobalAvgPool2D, MaxPool2D, walk)

# Opset 21 (ONNX 1.16, IR version 10): read by ONNX Runtime 1.20 and later; every operator used
# here has kept its meaning since well before it.
OPSET = 21
IR_VERSION = 10
INPUT = "image"

# What each data set's images are; the preprocessing a caller must repeat before running the graph.
PREPROCESSING = {
    "mnist": "float32 in [0, 1], 28x28 greyscale (C = 1), white digit on black, centred by centre of mass "
             "in a 20x20 box (MNIST)",
    "fashion-mnist": "float32 in [0, 1], 28x28 greyscale (C = 1), light garment on black (Fashion-MNIST)",
    "cifar10": "float32 in [0, 1], 32x32 RGB (C = 3, in that order), no mean subtraction (CIFAR-10)",
}

# The layers with a case of their own below; any other layer exports if it names its ONNX
# operator (``onnx``: the activations).
EXPORTABLE = (Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, Dropout, BatchNorm2D, BatchNorm1D, Flatten, Dense,
              Add, Concatenate)


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise FastCNNError(f"exporting to ONNX needs the onnx extra ({e.name} is missing): "
                           f"pip install 'fastcnn[onnx]'") from None
    return onnx


def export_onnx(model, path, input_shape=None, logits=False, dataset=None, overwrite=False, network=None,
                classes=None):
    """Write ``model`` (a ``Sequential`` or a graph ``Model``) to ``path`` as an ONNX file; returns the ``ModelProto``.

    ``input_shape`` (H, W, C) is needed only for a model that does not know its own (files saved
    by older versions); ``logits`` adds the logits as a second output. ``dataset`` (mnist,
    fashion-mnist, cifar10: the one it was trained on) gives the class names and preprocessing
    in the metadata; or ``classes``, the class names of a model trained on an image folder
    (whose pictures were resized to H x W). ``network`` is the named architecture, if it is one.
    An existing ``path`` is replaced only with ``overwrite=True``; the file is written atomically.
    """
    _onnx()
    path = Path(path)
    if not overwrite and taken(path):
        raise ExportError(f"{path}: already exists; export to another file, or replace it "
                          f"(overwrite=True, --overwrite)")
    try:
        check_writable(path)  # before the work, as every output of fastcnn's
    except OSError as e:
        raise ExportError(f"{path}: cannot write the ONNX file there ({e.strerror or e})") from None
    proto = to_onnx(model, input_shape, logits, dataset, network, classes)
    try:
        with atomic_write(path) as f:
            f.write(proto.SerializeToString())
    except OSError as e:
        raise ExportError(f"{path}: cannot write the ONNX file there ({e.strerror or e})") from None
    return proto


def to_onnx(model, input_shape=None, logits=False, dataset=None, network=None, classes=None):
    """The ONNX ``ModelProto`` of ``model``, checked by ``onnx.checker``; see :func:`export_onnx`."""
    onnx = _onnx()
    from onnx import TensorProto, helper

    checked(model)
    shape = _input_shape(model, input_shape)
    own = classes  # the class names of an image folder, if given; ``classes`` becomes their number below
    if own is not None and (isinstance(own, str) or not all(isinstance(n, str) for n in own)):
        raise ExportError(f"classes: expected a list of class names, got {own!r}")
    if dataset is not None and dataset not in PREPROCESSING:
        raise ExportError(f"dataset: expected one of {', '.join(PREPROCESSING)} or None, got {dataset!r}")
    if dataset is not None and tuple(shape) != IMAGE_SHAPES[dataset]:  # the metadata would describe other pictures
        raise ExportError(f"dataset: {dataset}'s images are {'x'.join(map(str, IMAGE_SHAPES[dataset]))}, the model "
                          f"takes {'x'.join(map(str, shape))}: it was not trained on {dataset}")
    graph = _Graph(onnx)
    out, out_shape = graph.layers(model.layers, shape, model.sources)
    if len(out_shape) != 1:
        raise ExportError(f"the model's output is {out_shape} per example; a classifier's is (classes,)")
    classes = out_shape[0]
    if dataset is not None and own is not None:
        raise ExportError("give the class names of a data set (dataset) or of a folder (classes), not both")
    names = CLASS_NAMES.get(dataset) if dataset else own
    if names is not None and len(names) != classes:
        raise ExportError(f"the model scores {classes} classes, {dataset or 'classes='} has {len(names)}")
    preprocessing = PREPROCESSING.get(dataset)
    if own is not None:
        preprocessing = (f"float32 in [0, 1], {shape[0]}x{shape[1]} {'greyscale (C = 1)' if shape[-1] == 1 else 'RGB'}"
                         f": the picture resized (stretched) to {shape[1]}x{shape[0]} with Lanczos filtering, "
                         f"transparency on white, as fastcnn reads an image folder")
    graph.nodes.append(helper.make_node("Softmax", [out], ["probabilities"], axis=-1, name="softmax"))

    batch = "batch"
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, classes])]
    if logits:
        graph.nodes.append(helper.make_node("Identity", [out], ["logits"], name="logits"))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes]))
    image = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, *shape])
    dims = ", ".join(map(str, shape))
    doc = (f"fastcnn {__version__} model. Input '{INPUT}': float32 (batch, {dims}), "
           + ("NHWC as fastcnn's predict takes it (the graph transposes to NCHW itself); " if len(shape) == 3 else "")
           + f"{preprocessing or 'scaled as the training data was'}. Output 'probabilities': "
           f"softmax over {classes} classes" + ("; 'logits': the scores before it." if logits else "."))
    g = helper.make_graph(graph.nodes, "fastcnn", [image], outputs, initializer=graph.weights, doc_string=doc)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="fastcnn", producer_version=__version__, doc_string=doc)
    arch = architecture(model)  # a chain's layers, or a graph's layers and their inputs
    metadata = {
        "class_names": json.dumps(list(names) if names else [str(k) for k in range(classes)]),
        "preprocessing": preprocessing or ("not recorded: the model file does not say what it was "
                                           "trained on; scale images as its training data was"),
        "input_layout": "NHWC",
        "dataset": dataset or "",
        "fastcnn_version": __version__,
        "architecture": json.dumps(arch["layers"] if model.is_chain else {k: arch[k] for k in ("layers", "sources")}),
        "network": network or "",
    }
    helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _input_shape(model, given):
    """The shape of one example, images (H, W, C) or feature rows (F,): the model's own, or
    ``given`` for a model that has none."""
    if given is None:
        if model.input_shape is None:
            raise ShapeError("the model does not record its input shape (a file saved by an older fastcnn): pass "
                             "input_shape=(H, W, C), or --input-shape H W C to fastcnn export")
        shape = tuple(model.input_shape)
    else:
        if isinstance(given, (str, bytes)) or not hasattr(given, "__len__") or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in given):
            raise ShapeError(f"input_shape: expected (H, W, C) of positive ints, got {given!r}")
        shape = tuple(int(d) for d in given)
        if model.input_shape is not None and shape != tuple(model.input_shape):
            raise ShapeError(f"input_shape: the model was built for {tuple(model.input_shape)}, got {shape}")
    if len(shape) not in (1, 3):
        raise ShapeError(f"input_shape: expected images (H, W, C) or feature rows (F,), got {shape}")
    return shape


class _Graph:
    """The nodes and weights of the graph, built layer by layer.

    ``order`` is None, or, for a flat tensor whose features are not in fastcnn's order (an NCHW
    tensor flattened), the fastcnn feature index held at each ONNX position.
    """

    def __init__(self, onnx):
        self.helper, self.numpy_helper = onnx.helper, onnx.numpy_helper
        self.nodes, self.weights = [], []
        self.order = None

    def weight(self, name, array):
        self.weights.append(self.numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(self, op, inputs, name, **attributes):
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    def layers(self, layers, shape, sources=None):
        """Emit ``layers`` (a graph's: each takes ``sources``, by default the layer before) for
        examples of ``shape``; returns the output's name and example shape."""
        sources = [(i - 1,) for i in range(len(layers))] if sources is None else sources
        for i, layer in enumerate(layers):
            if type(layer) not in EXPORTABLE and getattr(layer, "onnx", None) is None:
                raise ExportError(f"layer {i} {layer!r}: a {type(layer).__name__} cannot be exported to ONNX; the "
                                  f"exporter knows {', '.join(cls.__name__ for cls in EXPORTABLE)} and the activations")
        shapes = walk(layers, shape, sources=sources)
        readers = [[j for j, srcs in enumerate(sources) if i in srcs] for i in range(len(layers))]
        x = INPUT if len(shape) != 3 else self.node("Transpose", [INPUT], "nchw", perm=[0, 3, 1, 2])
        names, orders = {-1: x}, {-1: None}  # each value's ONNX name, and its feature order (see order)
        for i, layer in enumerate(layers):
            if i in names:
                continue  # a BatchNorm folded into the layer before it
            ins = [names[s] for s in sources[i]]
            self.order = orders[sources[i][0]]
            if layer.arity is None:
                if any(orders[s] is not None for s in sources[i]):
                    raise ExportError(f"layer {i} {layer!r}: joins flattened images; put it before the Flatten")
                op, attributes = ("Sum", {}) if type(layer) is Add else ("Concat", {"axis": 1})  # NCHW's channels
                names[i] = self.node(op, ins, f"{i}_{type(layer).__name__.lower()}", **attributes)
                orders[i] = None
                continue
            after = readers[i][0] if len(readers[i]) == 1 and sources[readers[i][0]] == (i,) else None
            bn = layers[after] if after is not None and (type(layer), type(layers[after])) in (
                (Conv2D, BatchNorm2D), (Dense, BatchNorm1D)) else None
            names[i] = self.layer(layer, ins[0], i, shapes[sources[i][0] + 1], bn)
            orders[i] = self.order
            if bn is not None:
                names[after], orders[after] = names[i], orders[i]
        x, self.order = names[len(layers) - 1], orders[len(layers) - 1]
        if self.order is not None:  # ended on flattened NCHW features: put them back in NHWC order
            x = self.node("Gather", [x, self._indices("nhwc_order", np.argsort(self.order))], "nhwc", axis=1)
        return x, shapes[-1]

    def layer(self, layer, x, i, shape, bn):
        """The nodes of one layer (and of ``bn``, folded into it); returns the output's name."""
        name = f"{i}_{type(layer).__name__.lower()}"
        kind = type(layer)
        if kind is Conv2D:
            w, b = _folded(layer, bn)
            p = layer.pad
            return self.node("Conv", [x, self.weight(f"{i}.weight", w.transpose(3, 2, 0, 1)),
                                      self.weight(f"{i}.bias", b)], name,
                             kernel_shape=[layer.kernel_size] * 2, strides=[layer.stride] * 2, pads=[p] * 4)
        if kind is Dense:
            w, b = _folded(layer, bn)
            if self.order is not None:
                w, self.order = w[self.order], None
            return self.node("Gemm", [x, self.weight(f"{i}.weight", w), self.weight(f"{i}.bias", b)], name)
        if kind in (MaxPool2D, AvgPool2D):  # no padding, windows that don't fit are dropped: floor mode
            return self.node("MaxPool" if kind is MaxPool2D else "AveragePool", [x], name,
                             kernel_shape=[layer.size] * 2, strides=[layer.stride] * 2)
        if kind is GlobalAvgPool2D:
            return self.node("Flatten", [self.node("GlobalAveragePool", [x], name)], f"{name}_flat", axis=1)
        if kind not in EXPORTABLE:  # an activation: one ONNX operator, value by value
            return self.node(layer.onnx, [x], name, **layer.onnx_attributes())
        if kind is Dropout:
            return x  # the identity in evaluation
        if kind is Flatten:
            if len(shape) != 3:
                return x
            h, w, c = shape
            order = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).ravel()
            self.order = None if np.array_equal(order, np.arange(order.size)) else order
            return self.node("Flatten", [x], name, axis=1)
        # A BatchNorm with no Conv2D or Dense right before it.
        params = {"scale": layer.params["weight"], "b": layer.params["bias"],
                  "mean": layer.buffers["running_mean"], "var": layer.buffers["running_var"]}
        if kind is BatchNorm1D and self.order is not None:
            params = {k: v[self.order] for k, v in params.items()}
        return self.node("BatchNormalization", [x, *(self.weight(f"{i}.{k}", v) for k, v in params.items())],
                         name, epsilon=layer.eps)

    def _indices(self, name, array):
        self.weights.append(self.numpy_helper.from_array(np.asarray(array, np.int64), name))
        return name


def _folded(layer, bn):
    """The layer's weight and bias in float64, with ``bn`` (its evaluation form) folded in
    (``BatchNorm2D.folded_into``)."""
    w, b = layer.params["weight"].astype(np.float64), layer.params["bias"].astype(np.float64)
    return (w, b) if bn is None else bn.folded_into(w, b)
