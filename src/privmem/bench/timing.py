"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def rate(fn: Callable[[int], None], count: int, min_seconds: float = 0.05) -> float:
    """Operations per second of ``fn(count)`` (which performs ``count`` operations),
    repeated until ``min_seconds`` have passed so short runs are not all noise."""
    done, start = 0, time.perf_counter()
    while True:
        fn(count)
        done += count
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def best_seconds(fn: Callable[[], None], repeat: int = 5) -> float:
    """Fastest of ``repeat`` runs of ``fn`` (each timed alone)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def once(fn: Callable[[], None]) -> float:
    """Seconds taken by a single call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
