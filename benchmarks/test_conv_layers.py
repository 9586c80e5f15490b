"""conv_layers.py in its shortest run, so that it never rots, and the convolutions it picks."""

import os
import subprocess
import sys
from pathlib import Path

import conv_layers

SCRIPT = Path(__file__).with_name("conv_layers.py")


def test_each_distinct_convolution_once_with_an_input_gradient_where_the_network_needs_one():
    convs = conv_layers.convolutions("resnet")
    described = [conv_layers.describe(c) for c in convs]
    assert described == [
        "28x28x1 -> 28x28x32, 3x3 stride 1, no input gradient",
        "28x28x32 -> 28x28x32, 3x3 stride 1 (x2)",  # the first block's two convolutions: one row
        "28x28x32 -> 14x14x64, 3x3 stride 2",
        "14x14x64 -> 14x14x64, 3x3 stride 1",
        "28x28x32 -> 14x14x64, 1x1 stride 2",
        "14x14x64 -> 7x7x128, 3x3 stride 2",
        "7x7x128 -> 7x7x128, 3x3 stride 1",
        "14x14x64 -> 7x7x128, 1x1 stride 2"]
    assert [c["pad"] for c in convs] == [1, 1, 1, 1, 0, 1, 1, 0]


def test_shortest_run_with_pytorch_missing(tmp_path):
    blocked = tmp_path / "blocked" / "torch"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    env = dict(os.environ, PYTHONPATH=str(blocked.parent))
    done = subprocess.run([sys.executable, str(SCRIPT), "deep", "--threads", "1", "--batch", "2", "--seconds", "0.01",
                           "--rounds", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    assert "## deep: each convolution alone, forward and backward, batch 2, 1 thread, ms (median of 2 rounds)" in text
    assert "| 14x14x32 -> 14x14x64, 3x3 stride 1 | winograd | " in text  # the path fastcnn takes, as it ran
    assert "PyTorch NCHW: missing" in text and "blocked by the test" in text
    header, rule = [line for line in text.splitlines() if line.startswith("|")][:2]
    assert header == "| convolution | fastcnn's path | fastcnn |" and rule.count("|") == header.count("|")
