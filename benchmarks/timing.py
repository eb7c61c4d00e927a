"""The one timing rule every benchmark here uses: warm up once, then the median of `runs` calls."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, runs: int) -> float:
    """Median wall time of fn() over `runs` calls, after one untimed warm-up call (tracing, caches)."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
