"""The execution plan: what a ``Sequential`` actually runs.

The user's layers stay as written. ``Plan`` walks them and, at each position, takes the first entry
of ``FUSIONS`` whose layer types match there: Conv2D, ReLU, MaxPool2D become one fused step (the
full-size convolution output never goes to memory); Dense, ReLU another; ReLU, MaxPool2D pools
first (relu(max(x)) = max(relu(x)), with the same gradient, on 1/size^2 of the values); any other
layer runs in the step its class names (``layer.step``, from ``steps.py``), a layer of the user's
own in ``Custom``, which calls its NumPy ``forward`` and ``backward``. Adding a fusion is one entry
in ``FUSIONS`` and one step class.

Training and evaluation differ (BatchNorm's statistics, Dropout), so a plan holds two lists of
steps: ``steps`` for training, and ``inference_steps``, which first tries ``FOLDS``: a BatchNorm
after a Conv2D or Dense is folded into that layer's weight and bias (Conv2D, BatchNorm2D, ReLU,
MaxPool2D runs the convolution, pools, then applies the ReLU), and Dropout is the identity.
``Run`` says which a pass is.

A plan is made for one example shape, and making it checks every layer against the shape that
reaches it, once: a wrong shape is reported with the layer's index before anything runs. Each
step's buffers (its output, the argmax it saves, its input gradient) live in a workspace made
once per batch size and reused; the steps call the kernels' unchecked ``*_into`` cores, on either
backend. The softmax cross-entropy that ends a training step is the plan's too (``train_step``).
The first step with parameters, and every step before it, skips its input gradient.

Before its first pass of each mode a plan has the kernels it will call compiled, all at once and
saying so (``compiling.prepare``), found by a rehearsal of the pass (``rehearse``).
"""

import os
import threading

import numpy as np

from . import backends, compiling
from .errors import FastCNNError, ShapeError
from .layers import (Add, BatchNorm1D, BatchNorm2D, Conv2D, Dense, GlobalAvgPool2D, MaxPool2D, ReLU,
                     fewest_batchnorm_values, one_value_per_channel, walk)
from .steps import (EVALUATION, AddRelu, BatchNormRelu, ConvBatchNorm, ConvBatchNormRelu, ConvBatchNormReluAvgPool,
                    ConvBatchNormReluPool, ConvReluPool, DenseRelu, FoldedConv, FoldedConvRelu, FoldedConvReluPool,
                    FoldedDense, FoldedDenseRelu, ReluPool, Run)

_KEEP = 4  # workspaces kept per plan and mode (the batch size, the last batch of an epoch, ...)


# The fusions, tried in order at each position: the first whose layer types match there wins.
# Where none does, a layer runs in the step its class names (``Conv2D.step``, ``steps.Custom``
# for a layer of the user's own).
FUSIONS = [
    ((Conv2D, BatchNorm2D, ReLU, MaxPool2D), ConvBatchNormReluPool),
    ((Conv2D, BatchNorm2D, ReLU, GlobalAvgPool2D), ConvBatchNormReluAvgPool),
    ((Conv2D, BatchNorm2D, ReLU), ConvBatchNormRelu),
    ((Conv2D, BatchNorm2D), ConvBatchNorm),
    ((Conv2D, ReLU, MaxPool2D), ConvReluPool),
    ((Dense, ReLU), DenseRelu),
    ((ReLU, MaxPool2D), ReluPool),
    ((BatchNorm2D, ReLU), BatchNormRelu),
    ((BatchNorm1D, ReLU), BatchNormRelu),
    ((Add, ReLU), AddRelu),
]
# Evaluation runs these first: a BatchNorm after a Conv2D or Dense is folded into its weights.
FOLDS = [
    ((Conv2D, BatchNorm2D, ReLU, MaxPool2D), FoldedConvReluPool),
    ((Conv2D, BatchNorm2D, ReLU, GlobalAvgPool2D), ConvBatchNormReluAvgPool),  # (not folded: training's kernels)
    ((Conv2D, BatchNorm2D, ReLU), FoldedConvRelu),
    ((Conv2D, BatchNorm2D), FoldedConv),
    ((Dense, BatchNorm1D, ReLU), FoldedDenseRelu),
    ((Dense, BatchNorm1D), FoldedDense),
]


def _steps(layers, sources, shapes, patterns):
    """The steps for ``layers`` (with their ``sources``), each fused run taken along a chain: a
    layer joins the run when it is the only one that takes the previous layer's output and takes
    nothing else (a tensor that several layers read is kept whole). Each step gets ``sources``:
    the positions of the steps its inputs come from (-1: the plan's input)."""
    consumers = [[] for _ in layers]
    for i, srcs in enumerate(sources):
        for s in srcs:
            if s >= 0:
                consumers[s].append(i)

    def chain(i, length):
        run = [i]
        while len(run) < length:
            last = run[-1]
            if len(consumers[last]) != 1 or sources[consumers[last][0]] != (last,):
                break
            run.append(consumers[last][0])
        return run

    steps, step_of = [], {}  # step_of: a layer's position -> the position of the step that outputs it
    for i, layer in enumerate(layers):
        if i in step_of:
            continue  # in a fused run already
        for types, step in patterns:
            run = chain(i, len(types))
            if len(run) == len(types) and all(type(layers[r]) is t for r, t in zip(run, types)):
                break
        else:
            run, step = [i], layer.step
        ins = [shapes[s + 1] for s in sources[i]]
        made = step([layers[r] for r in run], [ins if layer.arity is None else ins[0],
                                               *(shapes[r + 1] for r in run)], i)
        made.sources = tuple(-1 if s < 0 else step_of[s] for s in sources[i])
        for r in run:
            step_of[r] = len(steps)
        steps.append(made)
    return steps


def _gradient_flow(steps):
    """Which steps compute an input gradient: those with something learnable before them. A
    merge step asks only for the inputs that lead back to parameters."""
    learnable = []
    for step in steps:
        before = [s >= 0 and learnable[s] for s in step.sources]
        if hasattr(step, "input_needs"):
            step.input_needs = before
        else:
            step.needs_input_grad = before[0]
        learnable.append(step.has_params or any(before))


def _nbytes(shape, dtype):
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def _rows(a, shape, m):
    """The first rows of ``a`` (a larger batch's buffer of ``m`` rows) as a buffer of ``shape``;
    a buffer whose size does not follow the batch (BatchNorm's statistics) is shared as it is."""
    if a.shape == tuple(shape):
        return a
    return a[:shape[0]] if a.shape[0] == m and a.shape[1:] == tuple(shape[1:]) else np.empty(shape, a.dtype)


def free_memory():
    """Bytes of memory free for new allocations now (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(n, nbytes):
    free = free_memory() if nbytes > 2**28 else None  # below 256 MB, not worth the look
    if free is not None and nbytes > free:
        raise ShapeError(f"batch_size: a batch of {n:,} needs {nbytes / 2**30:,.1f} GiB for the network's "
                         f"activations and gradients, and {free / 2**30:,.1f} GiB of memory is free; use a smaller batch")


class Plan:
    """The steps for ``layers`` on examples of ``example_shape``, run with ``kernels``."""

    def __init__(self, layers, example_shape, kernels, sources=None):
        self.kernels = kernels
        sources = [(i - 1,) for i in range(len(layers))] if sources is None else [tuple(s) for s in sources]
        shapes = walk(layers, example_shape, sources=sources)
        self.steps = _steps(layers, sources, shapes, FUSIONS)  # training
        self.inference_steps = _steps(layers, sources, shapes, FOLDS + FUSIONS)
        _gradient_flow(self.steps)
        # A value read by several steps gets its gradient summed from theirs, in a buffer of its own.
        readers = [0] * len(self.steps)
        for step in self.steps:
            for s in step.sources:
                if s >= 0:
                    readers[s] += 1
        self._summed = [n > 1 for n in readers]
        self.example_shape, self.output_shape = shapes[0], shapes[-1]
        self.layers = list(layers)
        self._fewest_batchnorm = fewest_batchnorm_values(layers, shapes)
        self._train = {}
        self._infer = threading.local()  # each thread predicts in workspaces of its own
        self.prepared = set()  # the modes (training: True) whose kernels compiling.prepare has seen to

    def training_batch_problem(self, n):
        """Why a training pass of ``n`` examples would go wrong (a BatchNorm given one value per
        channel), or None."""
        values, i = self._fewest_batchnorm
        return one_value_per_channel(n, values, self.layers[i] if i is not None else None, i)

    def workspace(self, n, train):
        """The buffers of every step for a batch of ``n``, made on first use and then reused; a
        batch whose buffers would not fit in the memory free now is refused (``ShapeError``)
        before anything is allocated."""
        cache = self._train if train else self._infer.__dict__.setdefault("cache", {})
        ws = cache.pop(n, None)
        if ws is None:
            larger = [m for m in cache if m > n]  # a smaller batch (an epoch's last): the first rows of those
            ws = self._new_workspace(n, train, (min(larger), cache[min(larger)]) if larger else None)
            while len(cache) >= _KEEP:
                cache.pop(next(iter(cache)))
        cache[n] = ws  # most recently used last
        return ws

    def _needs(self, n, train):
        """Each step's buffers for a batch of ``n``: name -> (shape, dtype); in training, a last
        entry for the loss."""
        need = [step.buffers(n, train) for step in (self.steps if train else self.inference_steps)]
        if train:
            for buffers, step, summed in zip(need, self.steps, self._summed):
                if summed:
                    buffers["dsum"] = ((n, *step.out_shape), np.float32)
            need.append({"dlogits": ((n, *self.output_shape), np.float32), "row_loss": ((n,), np.float32)})
        return need

    def _new_workspace(self, n, train, larger=None):
        """The buffers of a batch of ``n``: in training, each its own (each step's backward reads
        what its forward saved), or the first ``n`` rows of those of ``larger`` (m, its workspace);
        in evaluation, in one block where a buffer takes the place of those no later step reads."""
        need = self._needs(n, train)
        if not train:
            return self._arena(n, need)
        if larger is not None:
            m, bigger = larger
            return [{name: _rows(bigger[i][name], shape, m) if name in bigger[i] else np.empty(shape, dtype)
                     for name, (shape, dtype) in buffers.items()} for i, (buffers, _) in
                    enumerate(zip(need, self._needs(m, train)))]
        _check_memory(n, sum(_nbytes(shape, dtype) for buffers in need for shape, dtype in buffers.values()))
        return [{name: np.empty(shape, dtype) for name, (shape, dtype) in buffers.items()} for buffers in need]

    def _layout(self, need):
        """Where evaluation's buffers go in one block of memory, placed first-fit: a step's output
        lives until the last step that reads it (the logits: beyond the pass), its other buffers
        during the step; a step without an output of its own (Flatten, Dropout) passes its input's
        on. Returns each step's {name: (offset, shape, dtype)} and the block's size."""
        steps = self.inference_steps
        owner, last = list(range(len(steps))), {}
        for i, (step, buffers) in enumerate(zip(steps, need)):
            if "y" not in buffers:
                owner[i] = owner[step.sources[0]] if step.sources[0] >= 0 else -1
            for s in step.sources:
                if s >= 0:
                    last[owner[s]] = i
        last[owner[-1]] = len(steps)
        live, places, top = [], [], 0  # live: (start, end, last step) of the blocks in use
        for i, buffers in enumerate(need):
            live = [block for block in live if block[2] >= i]
            placed = {}
            for name, (shape, dtype) in buffers.items():
                size = -(-_nbytes(shape, dtype) // 64) * 64
                start = 0
                for s, e, _ in sorted(live):
                    if start + size <= s:
                        break
                    start = max(start, e)
                live.append((start, start + size, last.get(i, i) if name == "y" else i))
                placed[name] = (start, shape, dtype)
                top = max(top, start + size)
            places.append(placed)
        return places, top

    def _arena(self, n, need):
        places, top = self._layout(need)
        _check_memory(n, top)
        arena = np.empty(top, np.uint8)
        return [{name: arena[start:start + _nbytes(shape, dtype)].view(dtype).reshape(shape)
                 for name, (start, shape, dtype) in placed.items()} for placed in places]

    def memory(self, n):
        """Bytes of buffers a batch of ``n`` takes: ``{"training": ..., "evaluation": ...}``
        (evaluation's in one block, a buffer in the place of those no later step reads)."""
        train = sum(_nbytes(shape, dtype) for buffers in self._needs(n, True) for shape, dtype in buffers.values())
        return {"training": train, "evaluation": self._layout(self._needs(n, False))[1]}

    def rehearse(self, train, n=2):
        """A pass of ``train``'s mode (a training step: forward, loss, backward) on ``n`` zero images,
        in a workspace of its own, for ``compiling`` to see each kernel call a real pass makes and
        its argument types (it stops the calls that would compile). Some kernels depend on the
        batch's size (few rows of a dense layer stream its weight instead of a GEMM): ``compiling``
        rehearses the sizes passes run at. Layers of the user's own are not run (zeros stand in),
        and what a training pass changes in the layers (BatchNorm's running statistics, the
        gradients) is put back."""
        kept = [(a, a.copy()) for layer in self.layers for a in (*layer.buffers.values(), *layer.grads.values())]
        x, ws = np.zeros((n, *self.example_shape), np.float32), self._new_workspace(n, train)
        self.kernels.values_within(x, 1.0)  # the check of a batch as the model takes it in (validate.input_batch)
        try:
            with np.errstate(all="ignore"):  # the stopped kernels leave their outputs as they were
                logits = self.forward(x, ws, Run(train, rehearsal=True))
                if train:
                    self.kernels.softmax_cross_entropy_into(ws[-1]["dlogits"], ws[-1]["row_loss"], logits,
                                                            np.zeros(n, np.int64))
                    self.backward(ws[-1]["dlogits"], ws)
                else:
                    self.kernels.softmax_into(np.empty_like(logits), logits)
        except FastCNNError:
            # A kernel compiled already runs for real, on what the stopped ones left unset: the
            # max-pool's backward refuses an argmax that was never written. The calls seen so far
            # are the rehearsal's; the rest compile in the pass (a long one says so).
            pass
        finally:
            for a, saved in kept:
                a[...] = saved

    def ready(self, training):
        """Compile (or load) what passes of ``training``'s mode run, once (``compiling.prepare``): the
        kernels, and the check of the values of a batch as the model takes it in."""
        if training not in self.prepared:
            compiling.prepare(self, (training,))

    def forward(self, x, ws, run):
        """The logits of a checked batch, in the workspace ``ws`` made for ``run.training``."""
        backends.check_runs_here(self.kernels)
        if not run.rehearsal:
            self.ready(run.training)
        values = []  # each step's output, read by the steps whose sources name it
        for step, buffers in zip(self.steps if run.training else self.inference_steps, ws):
            src = step.sources
            inputs = [x if s < 0 else values[s] for s in src] if len(src) > 1 else x if src[0] < 0 else values[src[0]]
            values.append(step.forward(self.kernels, inputs, buffers, run))
        return values[-1]

    def backward(self, dy, ws):
        """Every step's backward, last to first, from the gradient ``dy`` of the logits; a value
        read by several steps gets the sum of their gradients: added onto the gradient so far by
        the step itself where that costs it nothing (``Step.adds_input_grad``) and that gradient
        is a buffer no other value's gradient shares (``own``: the step's own ``dx``, or the
        value's ``dsum``), else summed into the value's ``dsum``."""
        k, grads, own = self.kernels, [None] * len(self.steps), set()
        grads[-1] = dy
        for i in range(len(self.steps) - 1, -1, -1):
            step, dy = self.steps[i], grads[i]
            if dy is None:
                continue  # nothing learnable in or before it
            source = step.sources[0]
            if step.needs_input_grad and source in own and step.adds_input_grad(len(dy)):
                grads[source] = step.backward(k, dy, ws[i], grads[source])
                continue
            dx = step.backward(k, dy, ws[i])
            if not step.needs_input_grad:
                continue
            for s, g in zip(step.sources, dx if len(step.sources) > 1 else (dx,)):
                if s < 0 or g is None:
                    continue
                if grads[s] is None:
                    grads[s] = g
                    if g is ws[i].get("dx"):
                        own.add(s)
                else:  # (written only into the value's own buffer: g may be another's, dy itself)
                    k.add_forward_into(ws[s]["dsum"], grads[s], g, False)
                    grads[s] = ws[s]["dsum"]
                    own.add(s)

    def train_step(self, x, labels, seed=0, step=0, first_row=0):
        """Forward, softmax cross-entropy and backward for a checked batch: fills every layer's
        ``grads``; returns the mean loss and the logits (the workspace's: read, don't keep).
        ``seed``, ``step`` (the optimizer's) and ``first_row`` (see ``Run``) draw dropout's masks."""
        ws = self.workspace(len(x), train=True)
        logits = self.forward(x, ws, Run(True, seed, step, first_row))
        loss = ws[-1]
        self.kernels.softmax_cross_entropy_into(loss["dlogits"], loss["row_loss"], logits, labels)
        self.backward(loss["dlogits"], ws)
        return float(loss["row_loss"].sum(dtype=np.float64) / len(x)), logits

    def probabilities_into(self, probs, x):
        """probs (N, classes) = softmax of the logits of a checked batch x, keeping no state."""
        self.kernels.softmax_into(probs, self.forward(x, self.workspace(len(x), train=False), EVALUATION))

    def __repr__(self):
        return "Plan([" + ", ".join(repr(step) + ("" if step.sources == (i - 1,) else f" <- {list(step.sources)}")
                                    for i, step in enumerate(self.steps)) + "])"
