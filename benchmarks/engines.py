"""The engines ``compare.py`` measures, as its workers run them.

Each engine builds a network from the plain description ``networks.describe`` makes (the same
layers, written with the engine's own) and offers its workloads, each a function timed by the
worker: ``train`` (one SGD-with-momentum step of softmax cross-entropy on a batch), ``infer``
(class probabilities of 1000 images, in evaluation mode), ``one`` (the same for one image: its
latency) and ``loop`` (one epoch of the engine's real training loop, as its users write it).
The data are the same random images for every engine. Only this module's engines import their
framework, and only in their worker: the coordinator never loads PyTorch or TensorFlow.
"""

import os
import time
from typing import Callable, NamedTuple, Optional

import numpy as np

import networks

from timing import latency, throughput

INFER_BATCH = 1000
CHECK_IMAGES = 8  # fastcnn's predict and ONNX Runtime on the exported model compare these
SGEMM_SIZE = 2048  # the ceiling's matrices: large enough for OpenBLAS's best, 0.1 s a product


class Workload(NamedTuple):
    fn: Callable
    items: int  # images a call handles (FLOPs for the SGEMM ceiling)
    latency: bool = False  # measure the median seconds of a call rather than items/s
    prepare: Optional[Callable] = None  # before each timing (a mode switch: train() or eval())
    warm_up: Optional[Callable] = None  # the first call, at build, if not ``fn`` (an epoch is long)


class Data:
    """The random inputs every engine gets, the same for all (NHWC float32 in [0, 1))."""

    def __init__(self, input_shape, batch, loop_images):
        rng = np.random.default_rng(0)
        self.x = rng.random((batch, *input_shape), np.float32)
        self.y = rng.integers(0, 10, batch)
        self.big = np.random.default_rng(1).random((INFER_BATCH, *input_shape), np.float32)
        self.input_shape, self.batch, self.loop_images = tuple(input_shape), batch, loop_images

    def loop(self):
        rng = np.random.default_rng(2)
        return rng.random((self.loop_images, *self.input_shape), np.float32), rng.integers(0, 10, self.loop_images)


class Engine:
    """What a worker serves: ``op_build`` a network, ``op_run`` one of its workloads, ``op_info``.
    A subclass sets ``version`` and implements ``build``; ``probabilities`` if its output is
    checked against fastcnn's."""

    version = ""
    probabilities = None  # (network, images) -> class probabilities, where the output is checked

    def __init__(self, threads):
        self.threads = threads
        self.workloads = {}  # network -> {workload name: Workload}

    def op_build(self, network, layers, input_shape, batch, loop_images, wanted, onnx=None):
        """Build ``network``; time the first call of each workload (compiling, tracing). Returns
        the workloads it has of ``wanted``, those first calls' seconds, and the probabilities of
        the first images of the inference batch (before any training step moves BatchNorm's
        statistics), if this engine's output is checked."""
        data = Data(input_shape, batch, loop_images)
        workloads = {name: w for name, w in self.build(network, layers, data, wanted, onnx).items() if name in wanted}
        check = None
        if self.probabilities is not None:
            check = np.asarray(self.probabilities(network, data.big[:CHECK_IMAGES]), np.float64).tolist()
        first = {}
        for name, w in workloads.items():
            if w.prepare:
                w.prepare()
            t = time.perf_counter()
            (w.warm_up or w.fn)()
            first[name] = time.perf_counter() - t
        self.workloads[network] = workloads
        return {"workloads": list(workloads), "first_call": first, "check": check}

    def op_run(self, network, workload, seconds):
        """One timing: images/s (FLOP/s for the ceiling), or the median seconds of a call."""
        w = self.workloads[network][workload]
        if w.prepare:
            w.prepare()
        if w.latency:
            return latency(w.fn, seconds)
        if w.warm_up is None:
            w.fn()  # caches and thread pools warm; not for a whole epoch, which warmed up at build
        return throughput(w.fn, w.items, seconds)

    def op_info(self):
        return {}

    def build(self, network, layers, data, wanted, onnx):
        raise NotImplementedError


def unknown(engine, layer):
    return ValueError(f"{engine}: no equivalent written for fastcnn's {layer['kind']} layer")


class Fastcnn(Engine):
    """fastcnn itself: the named network from ``fastcnn.architectures``, its ``train_step`` and
    optimizer, ``predict`` as a user calls it, and ``fit`` with its progress bar."""

    def __init__(self, threads):
        super().__init__(threads)
        import fastcnn
        from fastcnn.kernels.jit import set_threads
        set_threads(threads)
        self.version = fastcnn.__version__
        self.models = {}

    def build(self, network, layers, data, wanted, onnx):
        import networks
        from fastcnn import SGD
        from fastcnn.training import fit
        model = self.models[network] = networks.build(network)
        if networks.describe(model, data.input_shape) != layers:
            raise ValueError(f"{network}: the network described to the peers is not the one fastcnn builds")
        opt = SGD(model, lr=0.01)

        def train():
            model.train_step(data.x, data.y)  # forward, loss and backward, as fit runs them
            opt.step()

        workloads = {"train": Workload(train, data.batch),
                     "infer": Workload(lambda: model.predict(data.big), INFER_BATCH),
                     "one": Workload(lambda: model.predict(data.big[:1]), 1, latency=True)}
        if "loop" in wanted:
            xs, ys = data.loop()
            loop_model = networks.build(network)
            loop_opt = SGD(loop_model, lr=0.01)

            def epoch(n=len(xs)):
                fit(loop_model, loop_opt, (xs[:n], ys[:n]), epochs=1, batch_size=data.batch, seed=0)

            workloads["loop"] = Workload(epoch, len(xs), warm_up=lambda: epoch(10 * data.batch))
        return workloads

    def probabilities(self, network, images):
        return self.models[network].predict(images)

    def op_info(self):
        import llvmlite.binding
        import numba
        import threadpoolctl
        from fastcnn import kernels
        paths = kernels.paths() if hasattr(kernels, "paths") else None
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            layer = None
        return {"paths": paths, "numba_cpu": numba.config.CPU_NAME or llvmlite.binding.get_host_cpu_name(),
                "threading_layer": layer,
                "blas": blas_info(threadpoolctl)}


def blas_info(threadpoolctl):
    """The BLAS libraries loaded in this process: file, core type (OpenBLAS's kernels), threads."""
    return [{"library": os.path.join(*os.path.normpath(lib.get("filepath", "?")).split(os.sep)[-2:]),  # scipy.libs/...
             "api": lib.get("internal_api"),
             "core": lib.get("architecture"), "threads": lib.get("num_threads")}
            for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"]


class Torch(Engine):
    """PyTorch: eager in its default NCHW layout, eager with ``channels_last`` (NHWC in memory,
    often much faster for convolutions on the CPU), or ``torch.compile`` in its default mode
    (static shapes: a graph for each batch size rather than one for all)."""

    def __init__(self, threads, channels_last=False, compiled=False):
        super().__init__(threads)
        import torch
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        self.torch, self.channels_last, self.compiled = torch, channels_last, compiled
        self.version = torch.__version__

    def build(self, network, layers, data, wanted, onnx):
        torch, nn = self.torch, self.torch.nn
        torch.manual_seed(0)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        model = self.module(layers).to(memory_format=fmt)
        net = torch.compile(model, dynamic=False) if self.compiled else model
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()

        def tensor(images):  # NHWC -> NCHW, in the chosen memory layout
            return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=fmt)

        x, y, big, one = tensor(data.x), torch.from_numpy(data.y), tensor(data.big), tensor(data.big[:1])

        def train():
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()

        def infer(images):
            with torch.inference_mode():
                return torch.softmax(net(images), dim=1)

        workloads = {"train": Workload(train, data.batch, prepare=model.train),
                     "infer": Workload(lambda: infer(big), INFER_BATCH, prepare=model.eval),
                     "one": Workload(lambda: infer(one), 1, latency=True, prepare=model.eval)}
        if "loop" in wanted and not self.compiled:  # the last batch's other size would recompile
            xs, ys = data.loop()
            xs, ys = tensor(xs), torch.from_numpy(ys)

            def epoch(n=len(xs)):
                for idx in torch.randperm(n).split(data.batch):
                    opt.zero_grad(set_to_none=True)
                    loss_fn(model(xs[idx]), ys[idx]).backward()
                    opt.step()

            workloads["loop"] = Workload(epoch, len(xs), prepare=model.train, warm_up=lambda: epoch(10 * data.batch))
        return workloads

    def module(self, layers):
        """The network as a module: a ``Sequential``, or for a graph one that runs each layer on
        its inputs (the sum of them for Add, side by side along the channels for Concatenate)."""
        torch, nn = self.torch, self.torch.nn
        if networks.is_chain(layers):
            return nn.Sequential(*self.layers(layers))
        parts = nn.ModuleList(nn.Identity() if layer["kind"] in networks.MERGES
                              else nn.Sequential(*self.layers([layer])) for layer in layers)

        class Graph(nn.Module):
            def __init__(self):
                super().__init__()
                self.parts = parts

            def forward(self, x):
                values = {-1: x}
                for i, layer in enumerate(layers):
                    ins = [values[j] for j in layer["inputs"]]
                    if layer["kind"] == "Add":
                        values[i] = sum(ins[1:], ins[0])
                    elif layer["kind"] == "Concatenate":
                        values[i] = torch.cat(ins, dim=1)  # NCHW: the channels' axis
                    else:
                        values[i] = self.parts[i](ins[0])
                return values[len(layers) - 1]

        return Graph()

    def layers(self, layers):
        nn = self.torch.nn
        for layer in layers:
            kind = layer["kind"]
            if kind == "Conv2D":
                yield nn.Conv2d(layer["in_channels"], layer["out_channels"], layer["kernel_size"], layer["stride"],
                                layer["pad"])
            elif kind in ("BatchNorm2D", "BatchNorm1D"):
                norm = nn.BatchNorm2d if kind == "BatchNorm2D" else nn.BatchNorm1d
                yield norm(layer["in"][-1], eps=layer["eps"], momentum=layer["momentum"])
            elif kind in ("MaxPool2D", "AvgPool2D"):
                pool = nn.MaxPool2d if kind == "MaxPool2D" else nn.AvgPool2d
                yield pool(layer["size"], layer["stride"])
            elif kind == "GlobalAvgPool2D":
                yield nn.AdaptiveAvgPool2d(1)
                yield nn.Flatten()
            elif kind == "Dense":
                yield nn.Linear(layer["in_features"], layer["out_features"])
            elif kind == "Dropout":
                yield nn.Dropout(layer["p"])
            elif kind == "Flatten":
                yield nn.Flatten()
            elif kind in ("ReLU", "Tanh", "Sigmoid"):
                yield getattr(nn, kind)()
            else:
                raise unknown("PyTorch", layer)

    def op_info(self):
        return {"cpu_capability": self.torch.backends.cpu.get_cpu_capability()}


class Keras(Engine):
    """Keras on TensorFlow: a ``tf.function`` step with a ``GradientTape`` (the fastest plain
    way), a ``tf.function`` for inference, and ``model.fit`` for the real loop."""

    def __init__(self, threads):
        super().__init__(threads)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self.tf = tf
        self.version = f"{tf.keras.__version__} / TF {tf.__version__}"

    def build(self, network, layers, data, wanted, onnx):
        tf = self.tf
        keras = tf.keras
        tf.random.set_seed(0)
        model = self.model(layers, data.input_shape)
        opt = keras.optimizers.SGD(0.01, momentum=0.9)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        x, y, big, one = tf.constant(data.x), tf.constant(data.y), tf.constant(data.big), tf.constant(data.big[:1])

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

        @tf.function(reduce_retracing=True)
        def infer(images):
            return tf.nn.softmax(model(images, training=False))

        workloads = {"train": Workload(lambda: step(), data.batch),
                     "infer": Workload(lambda: infer(big).numpy(), INFER_BATCH),
                     "one": Workload(lambda: infer(one).numpy(), 1, latency=True)}
        if "loop" in wanted:
            xs, ys = data.loop()
            model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss_fn)

            def epoch(n=len(xs)):
                model.fit(xs[:n], ys[:n], batch_size=data.batch, epochs=1, shuffle=True, verbose=2)

            workloads["loop"] = Workload(epoch, len(xs), warm_up=lambda: epoch(10 * data.batch))
        return workloads

    def model(self, layers, input_shape):
        """A ``keras.Sequential``, or for a graph a functional model of the same edges."""
        keras, k = self.tf.keras, self.tf.keras.layers
        if networks.is_chain(layers):
            return keras.Sequential([keras.Input(input_shape), *self.layers(layers)])
        values = {-1: keras.Input(input_shape)}
        for i, layer in enumerate(layers):
            ins = [values[j] for j in layer["inputs"]]
            if layer["kind"] in networks.MERGES:
                values[i] = (k.Add() if layer["kind"] == "Add" else k.Concatenate(axis=-1))(ins)
                continue
            h = ins[0]
            for part in self.layers([layer]):
                h = part(h)
            values[i] = h
        return keras.Model(values[-1], values[len(layers) - 1])

    def layers(self, layers):
        k = self.tf.keras.layers
        for layer in layers:
            kind = layer["kind"]
            if kind == "Conv2D":
                size, stride, pad = layer["kernel_size"], layer["stride"], layer["pad"]
                if stride == 1 and size % 2 == 1 and pad == size // 2:
                    padding = "same"
                else:  # Keras's "same" pads asymmetrically at stride 2; fastcnn pads pad pixels each side
                    padding = "valid"
                    if pad:
                        yield k.ZeroPadding2D(pad)
                yield k.Conv2D(layer["out_channels"], size, stride, padding=padding)
            elif kind in ("BatchNorm2D", "BatchNorm1D"):
                yield k.BatchNormalization(momentum=1 - layer["momentum"], epsilon=layer["eps"])
            elif kind in ("MaxPool2D", "AvgPool2D"):
                pool = k.MaxPool2D if kind == "MaxPool2D" else k.AveragePooling2D
                yield pool(layer["size"], layer["stride"])
            elif kind == "GlobalAvgPool2D":
                yield k.GlobalAveragePooling2D()
            elif kind == "Dense":
                yield k.Dense(layer["out_features"])
            elif kind == "Dropout":
                yield k.Dropout(layer["p"])
            elif kind == "Flatten":
                yield k.Flatten()
            elif kind in ("ReLU", "Tanh", "Sigmoid"):
                yield k.Activation(kind.lower())
            else:
                raise unknown("Keras", layer)


class OnnxRuntime(Engine):
    """ONNX Runtime's CPU provider on the file ``fastcnn.export_onnx`` wrote of the same model
    (same seed, so its output is checked against fastcnn's); inference only."""

    def __init__(self, threads):
        super().__init__(threads)
        import onnxruntime
        self.ort, self.version, self.sessions = onnxruntime, onnxruntime.__version__, {}

    def build(self, network, layers, data, wanted, onnx):
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        session = self.ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        self.sessions[network] = session, name
        return {"infer": Workload(lambda: session.run(None, {name: data.big}), INFER_BATCH),
                "one": Workload(lambda: session.run(None, {name: data.big[:1]}), 1, latency=True)}

    def probabilities(self, network, images):
        session, name = self.sessions[network]
        return session.run(None, {name: images})[0]


class Sgemm(Engine):
    """The machine's SGEMM ceiling: NumPy's float32 product of two N x N matrices, with OpenBLAS
    held to this worker's threads; its one workload's rate is FLOP/s."""

    def __init__(self, threads):
        super().__init__(threads)
        import threadpoolctl
        self.threadpoolctl = threadpoolctl
        self.limits = threadpoolctl.threadpool_limits(threads, user_api="blas")  # for the worker's life
        self.version = np.__version__

    def build(self, network, layers, data, wanted, onnx):
        n = SGEMM_SIZE
        a = np.random.default_rng(0).random((n, n), np.float32)
        return {"sgemm": Workload(lambda: a @ a, 2 * n ** 3)}

    def op_info(self):
        return {"blas": blas_info(self.threadpoolctl)}


ENGINES = {  # name on the command line -> (the engine, how it is made for ``threads``)
    "fastcnn": Fastcnn,
    "torch": Torch,
    "torch-channels-last": lambda threads: Torch(threads, channels_last=True),
    "torch-compile": lambda threads: Torch(threads, compiled=True),
    "keras": Keras,
    "onnxruntime": OnnxRuntime,
    "sgemm": Sgemm,
}
