"""Timing helpers the benchmark scripts share (standard library only: ``compare.py``'s workers run
them in PyTorch's and TensorFlow's environments too, where fastcnn may not be installed).

Both measure for a given time rather than a given number of calls, so that the engines of an
interleaved run take turns of the same length whatever their speed.
"""

import time


def throughput(fn, items, seconds):
    """Items/s of ``fn`` (``items`` per call), calling it until ``seconds`` have passed: at least
    once, so a call longer than ``seconds`` (an epoch) is timed whole."""
    start, calls = time.perf_counter(), 0
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * items / elapsed


def latency(fn, seconds, min_calls=20):
    """Median seconds of one call of ``fn``, over ``seconds`` and at least ``min_calls`` calls."""
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_calls:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


def median(values):
    """The middle value (the mean of the two middle ones for an even count)."""
    s, n = sorted(values), len(values)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
