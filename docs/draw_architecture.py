"""Draw docs/architecture.svg: a model's layers -> its execution plan's steps -> the kernels each
step calls, from the code itself.

The network is ``deep`` (fastcnn.architectures): its training plan shows the fusions around
BatchNorm. The kernels are not listed by hand: a training step (forward, loss, backward) and an
optimizer step run on the NumPy reference with the plan's kernel module wrapped, and every kernel
call is noted under the step that made it. So the picture follows the code, and
tests/test_docs.py checks that the committed SVG is what this script draws now.

    python docs/draw_architecture.py docs/architecture.svg
"""

import sys
from html import escape

import numpy as np

import fastcnn.kernels
from fastcnn import SGD
from fastcnn.architectures import ARCHITECTURES
from fastcnn.kernels import reference


class Recorder:
    """The reference kernels, noting the name of every kernel called under ``self.current``."""

    def __init__(self):
        self.calls, self.current = {}, None

    def __getattr__(self, name):
        kernel = getattr(reference, name)
        if callable(kernel) and self.current is not None:
            names = self.calls.setdefault(self.current, [])
            if name not in names and name != "dropout_key":
                names.append(name)
        return kernel


def record(network="deep", shape=(28, 28, 1), classes=10):
    model = ARCHITECTURES[network].build(shape, classes, seed=0, backend="numpy")
    plan = model.plan(shape)
    recorder = Recorder()
    plan.kernels = recorder
    for i, step in enumerate(plan.steps):
        for pass_name in ("forward", "backward"):
            method = getattr(step, pass_name)

            def noted(*args, _method=method, _key=(i, pass_name)):
                before, recorder.current = recorder.current, _key
                try:
                    return _method(*args)
                finally:
                    recorder.current = before
            setattr(step, pass_name, noted)
    optimizer = SGD(model, lr=0.05)
    model.kernels = recorder  # the optimizer's step calls the model's kernels
    x = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
    recorder.current = "loss"
    plan.prepared.add(True)  # the reference compiles nothing: no rehearsal
    _, _ = plan.train_step(x, np.arange(4) % classes)
    recorder.current = "optimizer"
    optimizer.step()
    rows = [([type(layer).__name__ for layer in step.layers], type(step).__name__,
             where(recorder.calls.get((i, "forward"), [])), where(recorder.calls.get((i, "backward"), [])),
             step.needs_input_grad)
            for i, step in enumerate(plan.steps)]
    loss = [name for name in recorder.calls.get("loss", []) if name.startswith("softmax")]
    modules = {"layers": source(type(model.layers[0])), "steps": source(type(plan.steps[0]))}
    return network, rows, where(loss), where(recorder.calls.get("optimizer", [])), modules


def where(names):
    """Each kernel's name with the kernels/ module that defines its Numba version: conv.conv2d_backward_into."""
    out = []
    for name in names:
        kernel = getattr(fastcnn.kernels, name)
        module = getattr(kernel, "py_func", kernel).__module__
        out.append(f"{module.rsplit('.', 1)[-1]}.{name}")
    return out


def source(cls):
    """The file a class is defined in, from the repository's root: fastcnn/plan.py."""
    return cls.__module__.replace(".", "/") + ".py"


# Layout (pixels) and colours.
W, ROW, TOP, PAD = 1320, 58, 118, 10
COLUMNS = (20, 350, 610)  # layers, plan step, kernels
WIDTHS = (300, 220, W - 630)
LAYER, STEP, KERNEL, INK, MUTED = "#e3ecfa", "#fde9c9", "#dff3e4", "#1f2933", "#52606d"
FONT = "font-family='DejaVu Sans Mono, Menlo, Consolas, monospace'"


def text(x, y, s, size=13, weight="normal", fill=INK, anchor="start"):
    return (f"<text x='{x}' y='{y}' {FONT} font-size='{size}' font-weight='{weight}' fill='{fill}' "
            f"text-anchor='{anchor}'>{escape(s)}</text>")


def box(x, y, w, h, fill):
    return f"<rect x='{x}' y='{y}' width='{w}' height='{h}' rx='6' fill='{fill}' stroke='{MUTED}' stroke-width='1'/>"


def arrow(x1, y1, x2, y2):
    return (f"<line x1='{x1}' y1='{y1}' x2='{x2}' y2='{y2}' stroke='{MUTED}' stroke-width='1.5' "
            f"marker-end='url(#head)'/>")


def draw(network, rows, loss, optimizer, modules):
    extra = 2  # the loss and the optimizer's rows
    height = TOP + ROW * (len(rows) + extra) + 96
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{height}' viewBox='0 0 {W} {height}'>",
           "<defs><marker id='head' markerWidth='8' markerHeight='8' refX='7' refY='4' orient='auto'>"
           f"<path d='M0,0 L8,4 L0,8 z' fill='{MUTED}'/></marker></defs>",
           f"<rect width='{W}' height='{height}' fill='white'/>",
           text(W // 2, 30, f"A training step of the '{network}' network: layers -> execution plan -> kernels",
                16, "bold", anchor="middle"),
           text(COLUMNS[0], 70, "Layers (as you wrote them)", 14, "bold"),
           text(COLUMNS[1], 70, "Plan steps (FUSIONS)", 14, "bold"),
           text(COLUMNS[2], 70, "Kernels called: forward / backward (module.name, in kernels/)", 14, "bold"),
           text(COLUMNS[0], 92, modules["layers"], 12, fill=MUTED),
           text(COLUMNS[1], 92, modules["steps"], 12, fill=MUTED),
           text(COLUMNS[2], 92, "the unchecked *_into cores, each with a NumPy twin of the same name in "
                "kernels/reference.py", 12, fill=MUTED)]
    for r, (layers, step, forward, backward, needs_input_grad) in enumerate(rows):
        y = TOP + r * ROW
        h = ROW - PAD
        label = ", ".join(layers)
        out += [box(COLUMNS[0], y, WIDTHS[0], h, LAYER), text(COLUMNS[0] + 8, y + h / 2 + 4, label, 12.5)]
        out += [arrow(COLUMNS[0] + WIDTHS[0] + 2, y + h / 2, COLUMNS[1] - 4, y + h / 2)]
        out += [box(COLUMNS[1], y, WIDTHS[1], h, STEP), text(COLUMNS[1] + 8, y + h / 2 + 4, step, 13, "bold")]
        out += [arrow(COLUMNS[1] + WIDTHS[1] + 2, y + h / 2, COLUMNS[2] - 4, y + h / 2)]
        out += [box(COLUMNS[2], y, WIDTHS[2], h, KERNEL),
                text(COLUMNS[2] + 8, y + 19, "fwd  " + (", ".join(forward) or "(a view: no kernel)"), 12),
                text(COLUMNS[2] + 8, y + 38, "bwd  " + (", ".join(backward) or (
                    "(a view: no kernel)" if needs_input_grad else "(skipped: nothing learnable before it)")),
                     12, fill=INK if backward else MUTED)]
    for r, (name, what, kernels) in enumerate((("loss", "softmax cross-entropy", loss),
                                               ("optimizer", "SGD step", optimizer)), start=len(rows)):
        y = TOP + r * ROW
        h = ROW - PAD
        out += [box(COLUMNS[1], y, WIDTHS[1], h, STEP), text(COLUMNS[1] + 8, y + h / 2 + 4, what, 13, "bold"),
                arrow(COLUMNS[1] + WIDTHS[1] + 2, y + h / 2, COLUMNS[2] - 4, y + h / 2),
                box(COLUMNS[2], y, WIDTHS[2], h, KERNEL),
                text(COLUMNS[2] + 8, y + h / 2 + 4, ", ".join(kernels) + ("  (one pass over every parameter)"
                                                                       if name == "optimizer" else ""), 12)]
    y = TOP + (len(rows) + extra) * ROW + 14
    out += [text(COLUMNS[0], y, "Numba kernels (kernels/*.py, compiled once per CPU into a cache): one thread pool for "
                 "the whole step; matrix products are", 12, fill=MUTED),
            text(COLUMNS[0], y + 20, "SciPy's single-threaded SGEMM called inside Numba's threads (kernels/blas.py); "
                 "a convolution runs direct, im2col GEMM or", 12, fill=MUTED),
            text(COLUMNS[0], y + 40, "Winograd F(4x4, 3x3) by its shape (kernels/algorithms.py). In evaluation the plan "
                 "first tries FOLDS: BatchNorm folded into the", 12, fill=MUTED),
            text(COLUMNS[0], y + 60, "convolution or dense layer before it, Dropout the identity.", 12, fill=MUTED)]
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/draw_architecture.py OUT.svg")
    with open(sys.argv[1], "w") as f:
        f.write(draw(*record()))
