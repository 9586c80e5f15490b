"""compare.py in its shortest mode, so that it never rots: fastcnn on one and on two threads, the
SGEMM ceiling, ONNX Runtime where the onnx extra is installed, and a peer that cannot import
(TensorFlow, blocked here), which must be reported missing rather than stop the run. Also the
FLOP counts every share of the ceiling rests on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import networks

COMPARE = Path(__file__).with_name("compare.py")


@pytest.mark.parametrize("name, train, forward", [
    # conv 28x28x32 from 3x3x1; dense 6272 -> 128; dense 128 -> 10. The first conv has no input gradient.
    ("original", 2 * 28 * 28 * 32 * 9 * 2 + 2 * 6272 * 128 * 3 + 2 * 128 * 10 * 3,
     2 * 28 * 28 * 32 * 9 + 2 * 6272 * 128 + 2 * 128 * 10),
    ("deep", 2 * 28 * 28 * 32 * 9 * 2 + 2 * 14 * 14 * 64 * 9 * 32 * 3 + 2 * 3136 * 128 * 3 + 2 * 128 * 10 * 3,
     2 * 28 * 28 * 32 * 9 + 2 * 14 * 14 * 64 * 9 * 32 + 2 * 3136 * 128 + 2 * 128 * 10),
    ("cifar", 2 * 32 * 32 * 32 * 27 * 2 + 2 * 16 * 16 * 64 * 9 * 32 * 3 + 2 * 8 * 8 * 128 * 9 * 64 * 3
     + 2 * 128 * 10 * 3, 2 * 32 * 32 * 32 * 27 + 2 * 16 * 16 * 64 * 9 * 32 + 2 * 8 * 8 * 128 * 9 * 64 + 2 * 128 * 10),
])
def test_flops_of_the_named_networks(name, train, forward):
    layers = networks.describe(networks.build(name), networks.INPUT_SHAPES[name])
    assert networks.flops(layers) == {"forward": forward, "train": train}


def test_flops_of_a_strided_convolution_after_a_learnable_layer():
    from fastcnn import BatchNorm2D, Conv2D, Sequential
    model = Sequential([BatchNorm2D(), Conv2D(4, 5, stride=2, padding=2)], input_shape=(9, 7, 3))
    layers = networks.describe(model, (9, 7, 3))
    assert layers[1]["out"] == [5, 4, 4] and layers[1]["pad"] == 2
    conv = 2 * 5 * 4 * 4 * 25 * 3
    assert networks.flops(layers) == {"forward": conv, "train": 3 * conv}  # BatchNorm first: dx is needed


def test_compare_shortest_run(tmp_path):
    blocked = tmp_path / "blocked" / "tensorflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    env = dict(os.environ, PYTHONPATH=str(blocked.parent))
    out = tmp_path / "results.json"
    threads = min(2, os.cpu_count())
    command = [sys.executable, str(COMPARE), "--networks", "original", "--engines",
               "fastcnn,fastcnn-1thread,keras,onnxruntime", "--threads", str(threads), "--seconds", "0.05",
               "--rounds", "2", "--pause", "0.05", "--loop-images", "256", "--json", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    engines = results["engines"]
    assert engines["fastcnn"]["status"] == "ok" and engines["sgemm"]["status"] == "ok"
    assert engines["keras"]["status"].startswith("missing") and "blocked by the test" in engines["keras"]["status"]
    table = results["networks"]["original"]["results"]
    assert set(table) == {"train", "infer", "one", "loop"}
    for workload, rows in table.items():
        fast = rows["fastcnn"]
        assert len(fast["rounds"]) == 2 and all(v > 0 for v in fast["rounds"]), workload
        assert fast["fastcnn_x"]["median"] == 1.0
        if workload != "one":
            assert 0 < fast["ceiling_share"]["median"] < 5, workload  # a broken FLOP count or ceiling shows here
    assert results["ceiling"][str(threads)]["median"] > 0
    if engines["onnxruntime"]["status"] == "ok":
        assert results["networks"]["original"]["onnx_difference"] < 1e-4
        assert set(table["infer"]) >= {"fastcnn", "onnxruntime"} and "onnxruntime" not in table["train"]
    text = done.stdout
    assert "CPU: " in text and "NUMBA_CPU_NAME" in text and "fastcnn kernel paths:" in text
    assert "forward 28x28x1->32 3x3 stride 1 pad 1: direct" in text  # kernels.paths(), as it ran
    assert "## original" in text and "| fastcnn " in text

    # The JSON file is never replaced unasked.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr
