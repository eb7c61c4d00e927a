"""The one timing rule every benchmark here uses: warm up once, then the median of `runs` calls
(for several functions side by side: in alternating rounds, so drifts in load reach each alike)."""

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


def side_by_side_ms(functions: dict, rounds: int, runs: int) -> dict:
    """{name: median ms of fn()} for {name: fn}: each warmed up once, then all timed in turn,
    `rounds` times `runs` calls each (so every function sees the same drift in machine load)."""
    for fn in functions.values():
        fn()
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            for _ in range(runs):
                start = time.perf_counter()
                fn()
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}
