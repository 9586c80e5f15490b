"""The steps of an execution plan: what runs one layer, or a fused run of layers, forward and back.

A ``Step`` holds its layers and the example shapes through them; ``forward(k, x, ws, run)`` and
``backward(k, dy, ws)`` sit side by side and call the kernels' unchecked ``*_into`` cores (``k``:
the compiled kernels or their NumPy twins), writing into the step's workspace ``ws``, the buffers
``buffers(n, train)`` asked for. Each built-in layer names the step that runs it on its own
(``Conv2D.step = Conv``); ``plan.py`` chooses the fused steps (``ConvReluPool``, ...) where the
layers line up for them. A layer of the user's own runs in ``Custom``. Steps know layers only by
what they hold (``params``, ``grads``, ``stride``, ...): this module imports no layer.
"""

from typing import NamedTuple

import numpy as np

from .errors import ShapeError
from .kernels import conv as conv_kernels
from .kernels.blas import numpy_blas_on_one_thread

class Run(NamedTuple):
    """What one pass is: training (batch statistics, dropout) or evaluation, and for dropout's
    masks the run's seed, the optimizer's step, and where this batch starts in the global batch
    (data-parallel processes each run a slice of it, and draw that slice's part of its masks);
    ``rehearsal``: see ``Plan.rehearse``."""
    training: bool
    seed: int = 0
    step: int = 0
    first_row: int = 0
    rehearsal: bool = False


EVALUATION = Run(training=False)


class Step:
    """One unit of execution over one or more layers: ``forward`` and ``backward`` side by side.

    ``shapes`` are the example shapes into each of the step's layers and out of the last one.
    ``forward(k, x, ws, run)`` returns the step's output; ``backward(k, dy, ws)`` fills the
    layers' ``grads`` and returns the input gradient (None where it is skipped). ``ws`` is the
    step's workspace: a dict of the buffers ``buffers(n, train)`` asked for, and what forward saved.
    ``index`` is the position of the step's first layer in the model. Where ``adds_input_grad(n)``,
    ``backward(k, dy, ws, onto)`` adds the input gradient of a batch of ``n`` onto ``onto`` (an
    input that another step reads too) at no cost, and returns it.
    """

    def __init__(self, layers, shapes, index):
        self.layers, self.in_shape, self.out_shape, self.index = layers, shapes[0], shapes[-1], index
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

    def weights(self, ws):
        """The weight and bias the step's kernel runs with: its first layer's."""
        params = self.layers[0].params
        return params["weight"], params["bias"]

    def adds_input_grad(self, n):
        return False

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(type(layer).__name__ for layer in self.layers)})"


class Folded:
    """Evaluation only: a BatchNorm2D (the step's second layer) folded into the weight and bias of
    the Conv2D before it, so that the fused kernels normalise at no cost; computed on every pass
    (KH * KW * C * K values, into a buffer of the workspace), so it always reflects the current
    parameters."""

    def buffers(self, n, train):
        need = super().buffers(n, train)
        need["weight"] = (self.layers[0].params["weight"].shape, np.float32)
        return need

    def weights(self, ws):
        params = self.layers[0].params
        scale, shift = self.layers[1].scale_shift(params["bias"])
        return np.multiply(params["weight"], scale, out=ws["weight"]), shift


class ConvReluPool(Step):
    """Conv2D -> ReLU -> MaxPool2D in one pass each way (``kernels/conv_pool.py``)."""

    def __init__(self, layers, shapes, index):
        super().__init__(layers, shapes, index)
        self.conv, self.pool = layers[0], layers[-1]
        self.conv_shape = shapes[1]

    def buffers(self, n, train):
        # "conv" (and "dconv") is room for the convolution's output (and gradient) where the kernel
        # makes it whole (np.empty: no memory is touched where it runs fused).
        need = super().buffers(n, train)
        need["conv"] = ((n, *self.conv_shape), np.float32)
        if train:
            need["argmax"] = ((n, *self.out_shape), np.int32)
            need["dconv"] = ((n, *self.conv_shape), np.float32)
        return need

    def forward(self, k, x, ws, run):
        conv, pool = self.conv, self.pool
        w, b = self.weights(ws)
        ws["x"] = x
        k.conv_relu_pool_forward_into(ws["y"], ws.get("argmax"), ws["conv"], x, w, b, conv.stride, conv.pad,
                                      pool.size, pool.stride)
        return ws["y"]

    def backward(self, k, dy, ws):
        conv, pool = self.conv, self.pool
        dx = ws.get("dx")
        k.conv_relu_pool_backward_into(dx, conv.grads["weight"], conv.grads["bias"], dy, ws["x"],
                                       conv.params["weight"], ws["y"], ws["argmax"], ws["dconv"], conv.stride,
                                       conv.pad, pool.size, pool.stride)
        return dx


class FoldedConvReluPool(Folded, ConvReluPool):
    """Conv2D -> BatchNorm2D -> ReLU -> MaxPool2D in evaluation: the BatchNorm folded into the
    convolution, then one fused pass (direct, or Winograd's tiles pooled as they are made)."""


class Conv(Step):
    """Conv2D; with ``relu``, the ReLU after it applied in place (inference only)."""

    relu = False

    def adds_input_grad(self, n):
        conv = self.layers[0]
        return conv_kernels.adds_in_place(n, conv.params["weight"].shape, conv.stride, conv.pad)

    def forward(self, k, x, ws, run):
        conv = self.layers[0]
        w, b = self.weights(ws)
        ws["x"] = x
        (k.conv2d_relu_forward_into if self.relu else k.conv2d_forward_into)(ws["y"], x, w, b, conv.stride, conv.pad)
        return ws["y"]

    def backward(self, k, dy, ws, onto=None):
        conv = self.layers[0]
        dx = ws.get("dx") if onto is None else onto
        k.conv2d_backward_into(dx, conv.grads["weight"], conv.grads["bias"], dy, ws["x"], conv.params["weight"],
                               conv.stride, conv.pad, onto is not None)
        return dx


class FoldedConv(Folded, Conv):
    """Conv2D -> BatchNorm2D in evaluation."""


class FoldedConvRelu(FoldedConv):
    """Conv2D -> BatchNorm2D -> ReLU in evaluation."""
    relu = True


class DenseStep(Step):
    """Dense, or Dense -> ReLU with the ReLU fused into the pass after the product."""

    relu = False

    def forward(self, k, x, ws, run):
        w, b = self.weights(ws)
        ws["x"] = x
        k.dense_forward_into(ws["y"], x, w, b, self.relu)
        return ws["y"]

    def backward(self, k, dy, ws):
        dense = self.layers[0]
        dx = ws.get("dx")
        k.dense_backward_into(dx, dense.grads["weight"], dense.grads["bias"], dy, ws["x"], dense.params["weight"],
                              ws["y"], self.relu)
        return dx


class DenseRelu(DenseStep):
    relu = True


class FoldedDense(DenseStep):
    """Dense -> BatchNorm1D in evaluation: the BatchNorm is a per-feature scale and shift of the
    product, applied as its result is written (not folded into the I * O weights: that would be a
    pass over all of them on every call)."""

    def forward(self, k, x, ws, run):
        dense = self.layers[0]
        scale, shift = self.layers[1].scale_shift(dense.params["bias"])
        k.dense_forward_into(ws["y"], x, dense.params["weight"], shift, self.relu, scale)
        return ws["y"]


class FoldedDenseRelu(FoldedDense):
    """Dense -> BatchNorm1D -> ReLU in evaluation."""
    relu = True


class BatchNorm(Step):
    """BatchNorm2D or BatchNorm1D over the last axis, or either followed by a ReLU, fused. In
    training: the batch's statistics, which also move the running ones; in evaluation: the
    running statistics."""

    relu = False

    def buffers(self, n, train):
        need = super().buffers(n, train)
        if train:
            channels = self.in_shape[-1]
            need.update(mean=((channels,), np.float32), var=((channels,), np.float32))
        return need

    def forward(self, k, x, ws, run):
        bn = self.layers[0]
        rows = x.reshape(-1, x.shape[-1])
        y = ws["y"].reshape(rows.shape)
        if not run.training:
            k.batchnorm_eval_forward_into(y, rows, bn.params["weight"], bn.params["bias"], bn.buffers["running_mean"],
                                          bn.buffers["running_var"], bn.eps, self.relu)
            return ws["y"]
        mean, var = ws["mean"], ws["var"]
        k.batchnorm_forward_into(y, mean, var, rows, bn.params["weight"], bn.params["bias"], bn.eps, self.relu)
        update_running_statistics(bn, mean, var, len(rows))
        ws["x"] = rows
        return ws["y"]

    def backward(self, k, dy, ws):
        bn = self.layers[0]
        rows = ws["x"]
        dx = ws.get("dx")
        k.batchnorm_backward_into(None if dx is None else dx.reshape(rows.shape), bn.grads["weight"], bn.grads["bias"],
                                  dy.reshape(rows.shape), rows, bn.params["weight"], bn.params["bias"], ws["mean"],
                                  ws["var"], bn.eps, self.relu)
        return dx


class BatchNormRelu(BatchNorm):
    relu = True


def update_running_statistics(bn, mean, var, rows):
    """Move a BatchNorm's running statistics towards a batch's ``mean`` and biased ``var`` over
    ``rows`` values per channel (the unbiased variance is kept, as PyTorch does)."""
    m = np.float32(bn.momentum)
    bn.buffers["running_mean"] *= 1 - m
    bn.buffers["running_mean"] += m * mean
    bn.buffers["running_var"] *= 1 - m
    bn.buffers["running_var"] += (m * rows / max(rows - 1, 1)) * var


class ConvBatchNorm(Step):
    """Training: Conv2D -> BatchNorm2D (-> ReLU). The convolution adds up the batch statistics of
    its output as it writes it (``conv2d_moments_forward_into``), so BatchNorm needs no pass of its
    own for them; backward: BatchNorm's backward, then the convolution's."""

    relu = False
    adds_input_grad = Conv.adds_input_grad  # (its first layer is the convolution too)

    def __init__(self, layers, shapes, index):
        super().__init__(layers, shapes, index)
        self.conv, self.bn = layers[0], layers[1]
        self.conv_shape = shapes[1]

    def buffers(self, n, train):
        need = super().buffers(n, train)
        channels = self.conv_shape[-1]
        need.update(conv=((n, *self.conv_shape), np.float32), dconv=((n, *self.conv_shape), np.float32),
                    mean=((channels,), np.float32), var=((channels,), np.float32))
        return need

    def forward(self, k, x, ws, run):
        conv, bn = self.conv, self.bn
        ws["x"] = x
        k.conv2d_moments_forward_into(ws["conv"], ws["mean"], ws["var"], x, conv.params["weight"],
                                      conv.params["bias"], conv.stride, conv.pad)
        update_running_statistics(bn, ws["mean"], ws["var"], ws["conv"].size // ws["conv"].shape[-1])
        self.normalize(k, ws)
        return ws["y"]

    def normalize(self, k, ws):
        bn = self.bn
        k.batchnorm_eval_forward_into(ws["y"], ws["conv"], bn.params["weight"], bn.params["bias"], ws["mean"],
                                      ws["var"], bn.eps, self.relu)

    def backward(self, k, dy, ws, onto=None):
        bn = self.bn
        k.batchnorm_backward_into(ws["dconv"], bn.grads["weight"], bn.grads["bias"], dy, ws["conv"], bn.params["weight"],
                                  bn.params["bias"], ws["mean"], ws["var"], bn.eps, self.relu)
        return self.conv_backward(k, ws, onto)

    def conv_backward(self, k, ws, onto=None):
        conv = self.conv
        dx = ws.get("dx") if onto is None else onto
        k.conv2d_backward_into(dx, conv.grads["weight"], conv.grads["bias"], ws["dconv"], ws["x"],
                               conv.params["weight"], conv.stride, conv.pad, onto is not None)
        return dx


class ConvBatchNormRelu(ConvBatchNorm):
    relu = True


class ConvBatchNormReluPool(ConvBatchNorm):
    """Training: Conv2D -> BatchNorm2D -> ReLU -> MaxPool2D: the convolution with its batch
    statistics, then one pass that normalises, pools and applies the ReLU
    (``batchnorm_relu_pool_forward_into``); backward, BatchNorm's two passes through the pool's
    argmax, then the convolution's."""

    def __init__(self, layers, shapes, index):
        super().__init__(layers, shapes, index)
        self.pool = layers[-1]

    def buffers(self, n, train):
        need = super().buffers(n, train)
        need["argmax"] = ((n, *self.out_shape), np.int32)
        return need

    def normalize(self, k, ws):
        bn, pool = self.bn, self.pool
        k.batchnorm_relu_pool_forward_into(ws["y"], ws["argmax"], ws["conv"], ws["mean"], ws["var"],
                                           bn.params["weight"], bn.params["bias"], bn.eps, pool.size, pool.stride)

    def backward(self, k, dy, ws, onto=None):
        bn, pool = self.bn, self.pool
        k.batchnorm_relu_pool_backward_into(ws["dconv"], bn.grads["weight"], bn.grads["bias"], dy, ws["conv"],
                                            ws["y"], ws["argmax"], bn.params["weight"], ws["mean"], ws["var"], bn.eps,
                                            pool.size, pool.stride)
        return self.conv_backward(k, ws, onto)


class ConvBatchNormReluAvgPool(ConvBatchNorm):
    """Conv2D -> BatchNorm2D -> ReLU -> GlobalAvgPool2D, a network's end. Training: the convolution
    with its batch statistics, then one pass that normalises, applies the ReLU and averages each
    image (``batchnorm_relu_avgpool_forward_into``); backward, BatchNorm's two passes with the
    pool's gradient and the ReLU's mask made on the way, then the convolution's. Evaluation: the
    convolution, then the same pass with the running statistics (the kernels training compiled:
    no global pool of its own to compile for a first prediction)."""

    def buffers(self, n, train):
        if train:
            return super().buffers(n, train)
        return {"y": ((n, *self.out_shape), np.float32), "conv": ((n, *self.conv_shape), np.float32)}

    def forward(self, k, x, ws, run):
        if run.training:
            return super().forward(k, x, ws, run)
        conv, bn = self.conv, self.bn
        k.conv2d_forward_into(ws["conv"], x, conv.params["weight"], conv.params["bias"], conv.stride, conv.pad)
        k.batchnorm_relu_avgpool_forward_into(ws["y"], ws["conv"], bn.buffers["running_mean"],
                                              bn.buffers["running_var"], bn.params["weight"], bn.params["bias"], bn.eps)
        return ws["y"]

    def normalize(self, k, ws):
        bn = self.bn
        k.batchnorm_relu_avgpool_forward_into(ws["y"], ws["conv"], ws["mean"], ws["var"], bn.params["weight"],
                                              bn.params["bias"], bn.eps)

    def backward(self, k, dy, ws, onto=None):
        bn = self.bn
        k.batchnorm_relu_avgpool_backward_into(ws["dconv"], bn.grads["weight"], bn.grads["bias"], dy, ws["conv"],
                                               bn.params["weight"], bn.params["bias"], ws["mean"], ws["var"], bn.eps)
        return self.conv_backward(k, ws, onto)


class DropoutStep(Step):
    """Inverted dropout in training, the identity (no buffers, no work) in evaluation."""

    def buffers(self, n, train):
        return super().buffers(n, train) if train else {}

    def forward(self, k, x, ws, run):
        p = self.layers[0].p
        if not run.training or p == 0:
            return x
        ws["key"] = k.dropout_key(run.seed, run.step, self.index, run.first_row * x[0].size)
        k.dropout_forward_into(ws["y"], x, p, ws["key"])
        return ws["y"]

    def backward(self, k, dy, ws):
        dx = ws.get("dx")
        if dx is None:
            return None
        if "key" not in ws:  # p == 0
            return dy
        k.dropout_backward_into(dx, dy, self.layers[0].p, ws["key"])
        return dx


class Pool(Step):
    """MaxPool2D, or ReLU -> MaxPool2D run as pool then ReLU."""

    relu = False

    def buffers(self, n, train):
        need = super().buffers(n, train)
        need["argmax"] = ((n, *self.out_shape), np.int32)  # the kernel always writes it
        if self.relu and "dx" in need:
            need["dpool"] = ((n, *self.out_shape), np.float32)  # dy through the ReLU
        return need

    def forward(self, k, x, ws, run):
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


class AvgPool(Step):
    def forward(self, k, x, ws, run):
        pool = self.layers[0]
        k.avgpool_forward_into(ws["y"], x, pool.size, pool.stride)
        return ws["y"]

    def backward(self, k, dy, ws):
        pool, dx = self.layers[0], ws.get("dx")
        if dx is not None:
            k.avgpool_backward_into(dx, dy, pool.size, pool.stride)
        return dx


class GlobalAvgPool(Step):
    def forward(self, k, x, ws, run):
        k.global_avgpool_forward_into(ws["y"], x)
        return ws["y"]

    def backward(self, k, dy, ws):
        dx = ws.get("dx")
        if dx is not None:
            k.global_avgpool_backward_into(dx, dy)
        return dx


class Elementwise(Step):
    """An activation: ``y = f(x)`` forward, ``dx = dy * f'(x)`` computed from y backward, by the
    kernels its layer names: ``kernel = "relu"`` runs ``relu_forward_into(y, x, *scalars)`` and
    ``relu_backward_into(dx, dy, y, *scalars)``, ``scalars`` being the layer's (LeakyReLU's slope)."""

    def forward(self, k, x, ws, run):  # (the cores take arrays of any rank: one compiled kernel serves all)
        layer = self.layers[0]
        getattr(k, f"{layer.kernel}_forward_into")(ws["y"], x, *layer.scalars)
        return ws["y"]

    def backward(self, k, dy, ws):
        layer, dx = self.layers[0], ws.get("dx")
        if dx is not None:
            getattr(k, f"{layer.kernel}_backward_into")(dx, dy, ws["y"], *layer.scalars)
        return dx


class Merge(Step):
    """Where branches meet (``Add``, ``Concatenate``): ``forward(k, xs, ws, run)`` takes the list of
    the inputs' values; ``backward`` returns the list of their gradients, None for an input whose
    gradient no one needs (the plan sets ``input_needs``)."""

    def __init__(self, layers, shapes, index):
        super().__init__(layers, shapes, index)
        self.in_shapes = [tuple(shape) for shape in shapes[0]]
        self.input_needs = [True] * len(self.in_shapes)

    @property
    def needs_input_grad(self):
        return any(self.input_needs)

    @needs_input_grad.setter
    def needs_input_grad(self, value):  # Step.__init__'s default; the plan sets input_needs
        pass

    def buffers(self, n, train):
        return {"y": ((n, *self.out_shape), np.float32)}


class AddStep(Merge):
    """Add, or Add -> ReLU with the ReLU applied as the sum is written. Backward, the gradient
    of each input is dy itself (through the ReLU's mask first): no copy."""

    relu = False

    def buffers(self, n, train):
        need = super().buffers(n, train)
        if train and self.relu and self.needs_input_grad:
            need["dz"] = ((n, *self.out_shape), np.float32)
        return need

    def forward(self, k, xs, ws, run):
        y, last = ws["y"], len(xs) - 1
        k.add_forward_into(y, xs[0], xs[1], self.relu and last == 1)
        for i in range(2, len(xs)):
            k.add_forward_into(y, y, xs[i], self.relu and i == last)
        return y

    def backward(self, k, dy, ws):
        if "dz" in ws:
            k.relu_backward_into(ws["dz"], dy, ws["y"])
            dy = ws["dz"]
        return [dy if needed else None for needed in self.input_needs]


class AddRelu(AddStep):
    relu = True


class ConcatStep(Merge):
    """Concatenate: each input copied to its channels of the output; backward, each input's
    channels of dy copied to its gradient."""

    def buffers(self, n, train):
        need = super().buffers(n, train)
        if train:
            for i, (shape, needed) in enumerate(zip(self.in_shapes, self.input_needs)):
                if needed:
                    need[f"dx{i}"] = ((n, *shape), np.float32)
        return need

    def forward(self, k, xs, ws, run):
        offset = 0
        for x in xs:
            k.concat_forward_into(ws["y"], x, offset)
            offset += x.shape[-1]
        return ws["y"]

    def backward(self, k, dy, ws):
        grads, offset = [], 0
        for i, shape in enumerate(self.in_shapes):
            dx = ws.get(f"dx{i}")
            if dx is not None:
                k.concat_backward_into(dx, dy, offset)
            grads.append(dx)
            offset += shape[-1]
        return grads


class FlattenStep(Step):
    """A reshape: no buffers, no work."""

    def buffers(self, n, train):
        return {}

    def forward(self, k, x, ws, run):
        return x.reshape(len(x), -1)

    def backward(self, k, dy, ws):
        return dy.reshape(len(dy), *self.in_shape) if self.needs_input_grad else None


class Custom(Step):
    """A layer of the user's own (see ``Layer``): its ``forward`` and ``backward`` in NumPy, with
    NumPy's BLAS on one thread (its threads, spinning after a product, slowed the kernels after it
    down 2-3x). Its ``training`` attribute tells it the mode of each pass; its results are
    checked every call, since the plan can't know them in advance."""

    def buffers(self, n, train):
        return {}

    def forward(self, k, x, ws, run):
        ws["rehearsal"] = run.rehearsal
        if run.rehearsal:  # the user's code is not run for that: zeros stand in
            return np.zeros((len(x), *self.out_shape), np.float32)
        layer = self.layers[0]
        layer.training = run.training
        with numpy_blas_on_one_thread():  # the kernels' threads have the cores: see there why
            y = layer.forward(x)
        return self._checked(y, (len(x), *self.out_shape), "forward", "output")

    def backward(self, k, dy, ws):
        if ws.get("rehearsal"):
            return np.zeros((len(dy), *self.in_shape), np.float32) if self.needs_input_grad else None
        layer = self.layers[0]
        for g in layer.grads.values():  # zeros to start from, as a built-in layer's: a += adds this step's only
            g[...] = 0
        with numpy_blas_on_one_thread():
            dx = layer.backward(dy)
        return self._checked(dx, (len(dy), *self.in_shape), "backward", "input gradient") if self.needs_input_grad else None

    def _checked(self, a, shape, method, what):
        if not isinstance(a, np.ndarray) or a.shape != shape:
            got = a.shape if isinstance(a, np.ndarray) else type(a).__name__
            raise ShapeError(f"layer {self.index} {self.layers[0]!r}: {method} returned {got}; expected the {what} "
                             f"of shape {shape}")
        return np.ascontiguousarray(a, dtype=np.float32)
