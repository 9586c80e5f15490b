"""one_image.py in its shortest run, so that it never rots: on test digits (needs MNIST)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("one_image.py")


def test_shortest_run_on_an_untrained_network(tmp_path):
    data = os.environ.get("FASTCNN_DATA")
    if not data or not (Path(data) / "mnist").is_dir():
        pytest.skip("FASTCNN_DATA is not set to a folder with mnist/ in it (CI sets it to ../shared/data)")
    from fastcnn.architectures import mnist_network
    mnist_network(seed=0).save(tmp_path / "m.npz")
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tmp_path / "m.npz"), "--threads", "1",
                           "--rounds", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    nonzero = re.search(r"Dense 6272 -> 128 on 200 test digits: (\d+)% of its inputs nonzero", text)
    assert nonzero and int(nonzero.group(1)) < 50, text  # digits through ReLU and max-pool: mostly zeros
    assert re.search(r"  1 row: zeros skipped [\d.]+ us, every row read [\d.]+ us \([\d.]+x\)", text), text
    assert re.search(r"  8 rows: zeros skipped [\d.]+ us, every row read [\d.]+ us \([\d.]+x\)", text), text
    assert re.search(r"predict, one image: a test digit [\d.]+ us, random noise [\d.]+ us", text), text
    assert re.search(r"predict, one image of noise: as before \(.*\) [\d.]+ us, now [\d.]+ us \([\d.]+x\)", text), text
