"""Timing helpers the benchmark scripts share (standard library only: ``compare.py`` runs them in
PyTorch's and TensorFlow's environments too, where fastcnn may not be installed)."""

import time


def rate(fn, items, seconds, rounds):
    """Median items/s over ``rounds`` rounds of about ``seconds`` each (after a warm-up that also
    finds how long a call takes)."""
    t, calls = time.perf_counter(), 0
    while time.perf_counter() - t < max(0.5, seconds / 4):
        fn()
        calls += 1
    per_round = max(1, int(seconds / ((time.perf_counter() - t) / calls)))
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(per_round):
            fn()
        rates.append(per_round * items / (time.perf_counter() - t))
    return sorted(rates)[len(rates) // 2]


def latency(fn, seconds, warm_up=20, calls=50):
    """Median seconds of one call, over at least ``seconds`` and ``calls`` calls, after ``warm_up``."""
    for _ in range(warm_up):
        fn()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < calls:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]
