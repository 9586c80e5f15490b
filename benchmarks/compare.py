"""fastcnn against PyTorch and TensorFlow/Keras: the same network, batch and thread count, each
engine in its own process, on synthetic MNIST-shaped data. Prints one table.

Each engine is timed on a bare training step, on inference, and on its real training loop: one
epoch over 60,000 images as its users write it (fastcnn's ``fit`` with its progress bar, Keras's
``model.fit``, a PyTorch loop over a shuffled tensor), shuffling and batch gathering included.
fastcnn also runs on one thread, so the table shows what the second core buys.

    python benchmarks/compare.py [--threads 2] [--batch 64] [--seconds 3] [--rounds 5]

PyTorch and TensorFlow are optional: an engine that does not import is reported as missing
(install the CPU builds with ``pip install -e ".[peers]"``, see the README). Run it alone on the
machine: the three engines are measured one after the other, and a busy machine skews the ratios.

FLOP counts are those of the work a training step needs: the first convolution's input gradient
is not computed (no engine computes it, the input needs no gradient): 5.73 MFLOP per sample to
train (forward and backward), 2.06 MFLOP to infer.

A second table times a bare training step of the deeper network (fastcnn's ``deep``: two conv
blocks with BatchNorm, a BatchNorm'd Dense 128 and Dropout), written with each engine's own
layers: 25.0 MFLOP per sample to train.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from timing import latency, rate

TRAIN_FLOP = 2 * (28 * 28 * 32 * 9) * 2 + 2 * 6272 * 128 * 3 + 2 * 128 * 10 * 3
INFER_FLOP = 2 * (28 * 28 * 32 * 9) + 2 * 6272 * 128 + 2 * 128 * 10
DEEP_TRAIN_FLOP = (2 * (28 * 28 * 9 * 32) * 2 + 2 * (14 * 14 * 9 * 32 * 64) * 3 + 2 * 3136 * 128 * 3
                   + 2 * 128 * 10 * 3)


def data(batch):
    import numpy as np
    rng = np.random.default_rng(0)
    return rng.random((batch, 28, 28, 1), np.float32), rng.integers(0, 10, batch)


EPOCH = 60_000  # images in the real-loop epoch


def epoch_rate(run_epoch):
    """Samples/s of one epoch over EPOCH images, after a short warm-up epoch (``run_epoch(n)``)."""
    run_epoch(640)
    t = time.perf_counter()
    run_epoch(EPOCH)
    return EPOCH / (time.perf_counter() - t)


def run_fastcnn(args):
    import numpy as np
    import threadpoolctl

    from fastcnn import SGD
    from fastcnn.train import fit, mnist_network, set_threads
    set_threads(args.threads)
    model = mnist_network(seed=0)
    opt = SGD(model, lr=0.01)
    x, y = data(args.batch)
    big, _ = data(1000)
    xs, ys = data(EPOCH)

    def step():
        model.train_step(x, y)  # forward, loss and backward, as fit runs them
        opt.step()

    def epoch(n):
        m = mnist_network(seed=0)
        fit(m, SGD(m, lr=0.01), (xs[:n], ys[:n]), (xs[:1], ys[:1]), epochs=1, batch_size=args.batch, seed=0)

    from fastcnn.architectures import ARCHITECTURES
    deep = ARCHITECTURES["deep"].build((28, 28, 1), 10)
    deep_opt = SGD(deep, lr=0.01)

    def deep_step():
        deep.train_step(x, y)
        deep_opt.step()

    result = {"train": rate(step, args.batch, args.seconds, args.rounds), "epoch": epoch_rate(epoch),
              "infer": rate(lambda: model.predict(big), 1000, args.seconds, args.rounds),
              "one": latency(lambda: model.predict(big[:1]), args.seconds),
              "deep": rate(deep_step, args.batch, args.seconds, args.rounds)}
    # The machine's SGEMM ceiling with the same threads, through NumPy's BLAS; measured last,
    # since NumPy's OpenBLAS threads spin on after it and would take the cores from fastcnn's.
    a = np.random.default_rng(0).random((4096, 4096), np.float32)
    with threadpoolctl.threadpool_limits(args.threads, user_api="blas"):
        result["ceiling"] = 2 * 4096 ** 3 / latency(lambda: a @ a, 2.0)
    return result


def run_torch(args):
    import torch
    from torch import nn
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(6272, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x, y = data(args.batch)
    x, y = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
    big = torch.from_numpy(data(1000)[0]).permute(0, 3, 1, 2).contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    def infer(inputs):
        with torch.inference_mode():
            return torch.softmax(model(inputs), dim=1)

    xs, ys = data(EPOCH)
    xs, ys = torch.from_numpy(xs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(ys)

    def epoch(n):
        for idx in torch.randperm(n).split(args.batch):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xs[idx]), ys[idx]).backward()
            opt.step()

    deep = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(3136, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.4),
                         nn.Linear(128, 10))
    deep_opt = torch.optim.SGD(deep.parameters(), lr=0.01, momentum=0.9)

    def deep_step():
        deep_opt.zero_grad(set_to_none=True)
        loss_fn(deep(x), y).backward()
        deep_opt.step()

    return {"train": rate(step, args.batch, args.seconds, args.rounds), "epoch": epoch_rate(epoch),
            "infer": rate(lambda: infer(big), 1000, args.seconds, args.rounds),
            "one": latency(lambda: infer(big[:1]), args.seconds),
            "deep": rate(deep_step, args.batch, args.seconds, args.rounds), "version": torch.__version__}


def run_tensorflow(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(0)
    layers = tf.keras.layers
    model = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), layers.Conv2D(32, 3, padding="same"),
                                 layers.ReLU(), layers.MaxPool2D(2), layers.Flatten(),
                                 layers.Dense(128, activation="relu"), layers.Dense(10)])
    opt = tf.keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = (tf.constant(a) for a in data(args.batch))
    big = tf.constant(data(1000)[0])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    @tf.function(reduce_retracing=True)
    def infer(inputs):
        return tf.nn.softmax(model(inputs, training=False))

    one = big[:1]
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01, momentum=0.9), loss=loss_fn)
    xs, ys = data(EPOCH)

    def epoch(n):
        model.fit(xs[:n], ys[:n], batch_size=args.batch, epochs=1, shuffle=True, verbose=2)

    deep = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), layers.Conv2D(32, 3, padding="same"),
                                layers.BatchNormalization(), layers.ReLU(), layers.MaxPool2D(2),
                                layers.Conv2D(64, 3, padding="same"), layers.BatchNormalization(), layers.ReLU(),
                                layers.MaxPool2D(2), layers.Flatten(), layers.Dense(128), layers.BatchNormalization(),
                                layers.ReLU(), layers.Dropout(0.4), layers.Dense(10)])
    deep_opt = tf.keras.optimizers.SGD(0.01, momentum=0.9)

    @tf.function
    def deep_step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, deep(x, training=True))
        deep_opt.apply_gradients(zip(tape.gradient(loss, deep.trainable_variables), deep.trainable_variables))

    return {"train": rate(lambda: step(), args.batch, args.seconds, args.rounds), "epoch": epoch_rate(epoch),
            "infer": rate(lambda: infer(big).numpy(), 1000, args.seconds, args.rounds),
            "one": latency(lambda: infer(one).numpy(), args.seconds),
            "deep": rate(lambda: deep_step(), args.batch, args.seconds, args.rounds), "version": tf.__version__}


ENGINES = {"fastcnn": run_fastcnn, "PyTorch": run_torch, "TensorFlow/Keras": run_tensorflow}
ONE_THREAD = "fastcnn, 1 thread"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0, help="length of one measured round")
    p.add_argument("--rounds", type=int, default=5, help="rounds per measurement; the median is kept")
    p.add_argument("--python", default=sys.executable, help="interpreter for PyTorch and TensorFlow")
    p.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(ENGINES[args.worker](args)))
        return

    results = {}
    runs = [(name, name, args.threads) for name in ENGINES]
    if args.threads > 1:
        runs.insert(1, (ONE_THREAD, "fastcnn", 1))
    for name, engine, threads in runs:
        python = sys.executable if engine == "fastcnn" else args.python
        cmd = [python, __file__, "--worker", engine, "--threads", str(threads), "--batch", str(args.batch),
               "--seconds", str(args.seconds), "--rounds", str(args.rounds)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["failed"])[-1]
            print(f"{name}: not measured ({last})", file=sys.stderr)
            continue
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name}: measured", file=sys.stderr)

    ceiling = results["fastcnn"]["ceiling"]
    base = results["fastcnn"]
    print(f"\n{args.threads} threads, batch {args.batch}, synthetic data; medians of {args.rounds} rounds. "
          f"SGEMM ceiling (NumPy, 4096^3, same threads): {ceiling / 1e9:.0f} GFLOP/s")
    head = (f"{'engine':24s} {'train samples/s':>15s} {'ms/step':>8s} {'GFLOP/s':>8s} {'% ceil':>7s} "
            f"{'fastcnn x':>9s} | {'epoch samples/s':>15s} {'of step':>7s} {'fastcnn x':>9s} | "
            f"{'infer/s @1000':>13s} {'% ceil':>7s} {'1 image':>9s}")
    print(head + "\n" + "-" * len(head))
    for name, r in results.items():
        train_gf, infer_gf = r["train"] * TRAIN_FLOP, r["infer"] * INFER_FLOP
        label = f"{name} {r.get('version', '')}".strip()
        print(f"{label:24s} {r['train']:15,.0f} {args.batch / r['train'] * 1e3:8.2f} {train_gf / 1e9:8.1f} "
              f"{100 * train_gf / ceiling:6.1f}% {base['train'] / r['train']:9.2f} | {r['epoch']:15,.0f} "
              f"{100 * r['epoch'] / r['train']:6.0f}% {base['epoch'] / r['epoch']:9.2f} | {r['infer']:13,.0f} "
              f"{100 * infer_gf / ceiling:6.1f}% {r['one'] * 1e6:6.0f} µs")
    print(f"\nThe deeper network (two conv blocks with BatchNorm, Dense 128 with BatchNorm, Dropout), "
          f"a bare training step:")
    head = f"{'engine':24s} {'train samples/s':>15s} {'ms/step':>8s} {'GFLOP/s':>8s} {'% ceil':>7s} {'fastcnn x':>9s}"
    print(head + "\n" + "-" * len(head))
    for name, r in results.items():
        gf = r["deep"] * DEEP_TRAIN_FLOP
        label = f"{name} {r.get('version', '')}".strip()
        print(f"{label:24s} {r['deep']:15,.0f} {args.batch / r['deep'] * 1e3:8.2f} {gf / 1e9:8.1f} "
              f"{100 * gf / ceiling:6.1f}% {base['deep'] / r['deep']:9.2f}")
    if ONE_THREAD in results:
        one = results[ONE_THREAD]
        print(f"\nfastcnn, {args.threads} threads against 1: x{base['train'] / one['train']:.2f} on a training step, "
              f"x{base['epoch'] / one['epoch']:.2f} on the real loop")


if __name__ == "__main__":
    main()
