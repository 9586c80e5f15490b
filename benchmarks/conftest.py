"""The benchmark suite's shared parts: inputs for every kernel at two shapes, and a summary that
prints each kernel's speed-up over its NumPy reference, measured in the same run.

Run it alone on the machine (no other heavy work): ``pytest benchmarks --benchmark-enable``.
In the ordinary test run (``--benchmark-disable``, set in pyproject.toml) each benchmark runs
once, as a test that it still works.
"""

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
