"""Shared test helpers: a kernel-vs-reference comparison that records the largest error it saw,
and prints them all at the end of the run (so every test run also reports the kernels' accuracy)."""

import os
from pathlib import Path

import numpy as np
import pytest

LARGEST_ERROR = {}  # kernel output name -> (largest relative error seen, tolerance)


@pytest.fixture
def assert_close():
    def check(name, got, want, rtol):
        """|got - want| <= rtol * max(1, max|want|), elementwise; records the largest error."""
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        assert got.shape == want.shape, f"{name}: shape {got.shape} != reference {want.shape}"
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        err = float(np.abs(got - want).max(initial=0.0)) / scale
        worst = LARGEST_ERROR.get(name, (0.0, rtol))[0]
        LARGEST_ERROR[name] = (max(worst, err), rtol)
        assert err <= rtol, f"{name}: largest error {err:.3g} (relative to {scale:.3g}) exceeds {rtol:g}"
    return check


def pytest_terminal_summary(terminalreporter):
    if not LARGEST_ERROR:
        return
    terminalreporter.section("largest kernel error vs the NumPy reference (relative to max |ref|)")
    for name, (err, rtol) in sorted(LARGEST_ERROR.items()):
        terminalreporter.write_line(f"{name:32s} {err:9.2e}   (tolerance {rtol:.0e})")


@pytest.fixture(scope="session")
def data_dir():
    """The shared data folder (FASTCNN_DATA), or skip with the reason."""
    path = os.environ.get("FASTCNN_DATA")
    if not path or not (Path(path) / "mnist").is_dir():
        pytest.skip("FASTCNN_DATA is not set to a folder with mnist/ in it (CI sets it to ../shared/data)")
    return Path(path)
