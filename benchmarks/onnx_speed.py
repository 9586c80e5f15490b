"""ONNX Runtime on the exported original network beside fastcnn's own ``model.predict``, in one run.

Both with the same thread count: fastcnn's kernels through ``set_threads``, ONNX Runtime's
through ``intra_op_num_threads`` (one inter-op thread, its CPU provider). Two figures each:
images/s on a batch of 1000 (fastcnn's ``predict`` as a user calls it, which runs 256 images per
kernel call; one ``session.run`` for ONNX Runtime) and the median latency of one image. fastcnn
is measured first and ONNX Runtime after it, with a pause between, so neither's idle threads
take cores from the other. The weights are the untrained network's: the work does not depend
on their values. Needs the onnx extra; run it alone on the machine.

    python benchmarks/onnx_speed.py [--threads 2] [--seconds 3] [--rounds 5]
"""

import argparse
import os
import tempfile
import time

import numpy as np

from timing import latency, rate


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    import onnxruntime as ort

    import fastcnn
    from fastcnn.train import mnist_network, set_threads
    set_threads(args.threads)
    model = mnist_network()
    x = np.random.default_rng(0).random((1000, 28, 28, 1), np.float32)
    one = x[:1]

    results = {"fastcnn predict": (rate(lambda: model.predict(x), len(x), args.seconds, args.rounds),
                                   latency(lambda: model.predict(one), args.seconds, 50, 200))}
    time.sleep(1.0)

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "original.onnx")
        fastcnn.export_onnx(model, path, dataset="mnist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    difference = float(np.abs(session.run(None, {"image": x})[0] - model.predict(x)).max())
    results[f"ONNX Runtime {ort.__version__}"] = (
        rate(lambda: session.run(None, {"image": x}), len(x), args.seconds, args.rounds),
        latency(lambda: session.run(None, {"image": one}), args.seconds, 50, 200))

    print(f"original network (Conv 3x3x32, ReLU, MaxPool 2, Dense 128, ReLU, Dense 10), {args.threads} threads, "
          f"fastcnn {fastcnn.__version__}; largest probability difference {difference:.1e}")
    print(f"{'engine':<22} {'images/s, batch 1000':>21} {'one image':>11}")
    for name, (images_per_s, seconds) in results.items():
        print(f"{name:<22} {images_per_s:>21,.0f} {seconds * 1e6:>8.0f} us")


if __name__ == "__main__":
    main()
