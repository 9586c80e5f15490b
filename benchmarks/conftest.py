"""The benchmark suite's shared parts: inputs for every kernel at two shapes, and a summary that
prints each kernel's speed-up over its NumPy reference, measured in the same run.

Run it alone on the machine (no other heavy work): ``pytest benchmarks --benchmark-enable``.
In the ordinary test run (``--benchmark-disable``, set in pyproject.toml) each benchmark runs
once, as a test that it still works.
"""

import time

import pytest

from common import IMPLS

MEDIANS = {}  # (group, impl) -> median seconds


@pytest.fixture(params=list(IMPLS))
def impl(request):
    return request.param


@pytest.fixture
def bench(benchmark, request):
    """``bench(group, impl, fn, *args)``: warm up once outside the timing (``warmup``, default
    ``fn`` itself: JIT compilation never lands inside a timing), then time ``fn(*args)``."""

    def run(group, impl, fn, *args, warmup=None):
        benchmark.group = group
        (warmup or fn)(*args)
        if not benchmark.disabled:
            # NumPy's OpenBLAS threads spin for about 0.1 s after a product (the reference's), and
            # would take the cores from the next timing: let them fall asleep first.
            time.sleep(0.3)
        result = benchmark(fn, *args)
        if benchmark.stats is not None:
            MEDIANS[(group, impl)] = benchmark.stats.stats.median
        return result

    return run


def pytest_terminal_summary(terminalreporter):
    groups = sorted({g for g, _ in MEDIANS})
    if not groups:
        return
    terminalreporter.section("median time per call; speed-up of the Numba kernel over the NumPy reference")
    for g in groups:
        fast, ref = MEDIANS.get((g, "numba")), MEDIANS.get((g, "numpy"))
        cells = [f"numba {fast * 1e3:9.3f} ms" if fast else " " * 18,
                 f"numpy {ref * 1e3:9.3f} ms" if ref else " " * 18,
                 f"x{ref / fast:7.1f}" if fast and ref else ""]
        terminalreporter.write_line(f"{g:42s} " + "  ".join(cells))
    for line in _ratios():
        terminalreporter.write_line(line)


def _ratios():
    """What a second core buys on a training step, and how close the real loop (``fit``, one
    epoch of 60,000 images) comes to the bare step: both measured in this run."""
    steps = {g: t for (g, impl), t in MEDIANS.items() if g.startswith("training step[batch 64, ")}
    if len(steps) == 2:
        (one, t1), (many, tn) = sorted(steps.items(), key=lambda kv: kv[0])
        yield f"{many} is x{t1 / tn:.2f} {one}"
    step, epoch = MEDIANS.get(("training step[batch 64]", "numba")), MEDIANS.get(("mnist epoch[60,000 images]", "numba"))
    if step and epoch:
        yield (f"real loop: {60_000 / epoch:,.0f} samples/s = {100 * (60_000 / epoch) / (64 / step):.0f}% of the "
               f"training step's {64 / step:,.0f} samples/s")
